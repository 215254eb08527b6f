/*
 * Internal to passthru/: the SG_IO transport of a local SCSI pt_lun (sg.c).
 *
 * lun.c keeps the filter, the states and the statistics for both transports;
 * this one only moves a pt_cmd to the device node and back. Worker threads
 * run the blocking SG_IO; the reactor gets the finished commands through an
 * eventfd and calls their done() in the order the device finished them.
 */
#ifndef HVSTOR_PASSTHRU_SG_INT_H
#define HVSTOR_PASSTHRU_SG_INT_H

#include "passthru.h"

#define PT_SG_DEPTH_DEFAULT 16
#define PT_SG_DEPTH_MAX 64
#define PT_SG_TIMEOUT_MS_DEFAULT 60000
/* A read whose CDB asks for more than the initiator's buffer (an iSCSI
 * overflow) lands in a worker's own buffer first: at most this much. */
#define PT_SG_BOUNCE_BYTES (1024 * 1024)

struct pt_sg;

struct pt_sg_options {
    int fd;                         /* dup'ed: the caller keeps its own */
    const char *path;
    unsigned depth;                 /* worker threads */
    unsigned timeout_ms;
    uint32_t block_bytes;           /* the device's, for CDB transfer lengths; 0: unknown */
    /* The device is gone (removed, offline): called once, on the reactor. */
    void (*on_gone)(void *arg, const char *why);
    void *arg;
};

int pt_sg_create(struct hv_reactor *r, const struct pt_sg_options *opt, struct pt_sg **out,
                 struct hv_err *err);
/* Queue the command for a worker; done() runs later on the reactor, never
 * inside this call. */
void pt_sg_submit(struct pt_sg *sg, struct pt_cmd *cmd);
/* TASK ABORTED for every command no worker has taken yet. */
void pt_sg_abort_queued(struct pt_sg *sg);
/* ABORT TASK: TASK ABORTED (next reactor turn) if no worker has taken `cmd`
 * yet; true then. One inside SG_IO completes with the device's answer. */
bool pt_sg_abort_one(struct pt_sg *sg, struct pt_cmd *cmd);
uint64_t pt_sg_inflight(const struct pt_sg *sg);
/* Most commands ever inside SG_IO at the same instant (queue depth reached). */
unsigned pt_sg_max_busy(const struct pt_sg *sg);
/* Commands not taken yet complete with NOT READY; those inside SG_IO are
 * waited for and complete with the device's answer; then the workers stop
 * and the host's cached pages of the device are dropped (the guest wrote
 * past them). */
void pt_sg_destroy(struct pt_sg *sg);

#endif /* HVSTOR_PASSTHRU_SG_INT_H */
