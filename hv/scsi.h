/*
 * scsi — internal to hv/: the seam between a transport (the iSCSI target)
 * and what executes SCSI commands.
 *
 * A controller is a LUN table (64 slots, slot M = LUN M). Each slot holds a
 * logical unit: a table of operations with two implementations, an emulated
 * disk on a bdev (SBC/SPC written once, in scsi_disk.c) and, later, a
 * pass-through LUN that forwards CDBs. The transport builds a scsi_task per
 * command with the data-out already gathered and a data-in buffer of the
 * initiator's expected length (so reads land in the buffer that is sent),
 * hands it to scsi_controller_execute(), and sends what comes back through
 * task->done. The controller answers REPORT LUNS, commands to empty slots and
 * pending unit attentions itself, so every LU kind behaves the same there.
 */
#ifndef HVSTOR_HV_SCSI_H
#define HVSTOR_HV_SCSI_H

#include "common.h"

#define SCSI_MAX_CDB 16
#define SCSI_SENSE_MAX 252
#define SCSI_LUNS_PER_CONTROLLER 64

enum scsi_status {
    SCSI_STATUS_GOOD = 0x00,
    SCSI_STATUS_CHECK_CONDITION = 0x02,
    SCSI_STATUS_CONDITION_MET = 0x04,
    SCSI_STATUS_BUSY = 0x08,
    SCSI_STATUS_RESERVATION_CONFLICT = 0x18,
    SCSI_STATUS_TASK_SET_FULL = 0x28,
    SCSI_STATUS_ACA_ACTIVE = 0x30,
    SCSI_STATUS_TASK_ABORTED = 0x40,
};

enum scsi_data_dir { SCSI_DIR_NONE, SCSI_DIR_IN, SCSI_DIR_OUT };

struct scsi_lu;
struct scsi_controller;

/* The I_T nexus a command arrived on: for reservations and unit attentions. */
struct scsi_nexus {
    char initiator[224];            /* iSCSI initiator port name (name + ",i,0x" + ISID) */
    uint64_t id;                    /* unique per nexus for the controller's lifetime */
};

struct scsi_task {
    /* set by the transport */
    uint64_t lun;
    const struct scsi_nexus *nexus;
    uint8_t cdb[SCSI_MAX_CDB];
    uint8_t cdb_len;
    uint32_t tag;                   /* initiator task tag, for ABORT TASK */
    uint8_t task_attr;              /* SIMPLE, ORDERED, HEAD OF QUEUE, ACA */
    enum scsi_data_dir dir;
    uint32_t expected_bytes;        /* initiator's expected transfer length */
    struct iovec *out_iov;          /* data-out, all of it, before execute */
    int out_iovcnt;
    uint32_t out_bytes;
    struct iovec *in_iov;           /* data-in buffer of expected_bytes */
    int in_iovcnt;

    /* set by the executor before done() */
    uint32_t in_bytes;              /* data-in produced (<= expected_bytes) */
    uint8_t status;                 /* enum scsi_status */
    uint8_t sense[SCSI_SENSE_MAX];
    uint8_t sense_len;

    void (*done)(struct scsi_task *task);
    void *transport_arg;

    /* private to the controller and LU */
    struct scsi_task *next;
    uint64_t start_ns;
    bool is_aborted;
    uint64_t lu_ctx[32] __attribute__((aligned(16)));
};

/* Sense helpers (fixed format unless the LU was switched to descriptor). */
void scsi_task_set_sense(struct scsi_task *t, uint8_t key, uint8_t asc, uint8_t ascq);
void scsi_task_good(struct scsi_task *t);

#define SCSI_SENSE_NO_SENSE 0x0
#define SCSI_SENSE_NOT_READY 0x2
#define SCSI_SENSE_MEDIUM_ERROR 0x3
#define SCSI_SENSE_HARDWARE_ERROR 0x4
#define SCSI_SENSE_ILLEGAL_REQUEST 0x5
#define SCSI_SENSE_UNIT_ATTENTION 0x6
#define SCSI_SENSE_DATA_PROTECT 0x7
#define SCSI_SENSE_ABORTED_COMMAND 0xB
#define SCSI_SENSE_MISCOMPARE 0xE

/* A kind of logical unit. */
struct scsi_lu_ops {
    const char *name;               /* "disk", "passthru" */
    /* Execute; complete through task->done exactly once, never from inside. */
    void (*execute)(struct scsi_lu *lu, struct scsi_task *task);
    /* Abort what is queued for this nexus (or all when nexus is NULL); tasks
     * in flight complete normally or with TASK ABORTED. */
    void (*reset)(struct scsi_lu *lu, const struct scsi_nexus *nexus);
    void (*destroy)(struct scsi_lu *lu);
};

struct scsi_lu {
    const struct scsi_lu_ops *ops;
    struct scsi_controller *controller;
    uint64_t lun;
};

/* ------------------------------------------------------- the controller */

enum scsi_tmf {
    SCSI_TMF_ABORT_TASK = 1,
    SCSI_TMF_ABORT_TASK_SET = 2,
    SCSI_TMF_CLEAR_TASK_SET = 3,
    SCSI_TMF_LOGICAL_UNIT_RESET = 5,
    SCSI_TMF_TARGET_WARM_RESET = 6,
    SCSI_TMF_TARGET_COLD_RESET = 7,
};

enum scsi_tmf_response {            /* RFC 7143 11.6.1 response codes */
    SCSI_TMF_COMPLETE = 0,
    SCSI_TMF_TASK_NOT_FOUND = 1,
    SCSI_TMF_LUN_NOT_FOUND = 2,
    SCSI_TMF_NOT_SUPPORTED = 5,
    SCSI_TMF_REJECTED = 255,
};

int scsi_controller_create(struct hv_reactor *r, const char *name,
                           struct scsi_controller **out);
/* Detaches (destroys) every LU; no task may be in flight. */
void scsi_controller_destroy(struct scsi_controller *c);
/* Put `lu` in slot `lun` (< 64); -EBUSY if taken. Raises REPORTED LUNS DATA
 * HAS CHANGED on every nexus. The controller owns `lu` from here on. */
int scsi_controller_attach(struct scsi_controller *c, uint64_t lun, struct scsi_lu *lu);
/* Remove and return the LU (caller destroys it once its tasks are done), or NULL. */
struct scsi_lu *scsi_controller_detach(struct scsi_controller *c, uint64_t lun);
struct scsi_lu *scsi_controller_lu(struct scsi_controller *c, uint64_t lun);
/* A nexus appears (login) or goes (logout, connection lost): a new nexus gets
 * POWER ON/RESET unit attention; a gone one loses its reservations'
 * non-persistent state (RESERVE/RELEASE) and its pending unit attentions. */
void scsi_controller_nexus_add(struct scsi_controller *c, const struct scsi_nexus *n);
void scsi_controller_nexus_remove(struct scsi_controller *c, const struct scsi_nexus *n);
/* Queue a unit attention for every nexus (CAPACITY DATA HAS CHANGED after a
 * resize: asc 0x2A ascq 0x09; REPORTED LUNS CHANGED: 0x3F 0x0E). lun = UINT64_MAX: all. */
void scsi_controller_raise_ua(struct scsi_controller *c, uint64_t lun, uint8_t asc, uint8_t ascq);
/* Run one command; completes through task->done. */
void scsi_controller_execute(struct scsi_controller *c, struct scsi_task *task);
/* Task management; synchronous answer (aborted tasks still complete through
 * their done(), with is_aborted set, and the transport drops their response). */
enum scsi_tmf_response scsi_controller_tmf(struct scsi_controller *c, const struct scsi_nexus *n,
                                           enum scsi_tmf fn, uint64_t lun, uint32_t ref_tag);

/* ---------------------------------------------------- the emulated disk */

struct scsi_disk_options {
    bool is_read_only;              /* WRITE PROTECT */
    const char *vendor;             /* INQUIRY, 8 chars; NULL = "HVSTOR" */
    const char *product;            /* 16 chars; NULL = "Virtual Disk" */
    const char *serial;             /* VPD 0x80; NULL = derived from bdev uuid */
};

/* An SBC disk on `bd`. The LU does not own `bd`: the caller closes it after
 * destroying the LU. */
int scsi_disk_create(struct bdev *bd, const struct scsi_disk_options *opt,
                     struct scsi_lu **out, struct hv_err *err);
/* Per-disk statistics for `hvctl disk stats`. */
void scsi_disk_stats(struct scsi_lu *lu, json_t *obj);
/* After the bdev was resized: report the new capacity, raise the UA. */
void scsi_disk_capacity_changed(struct scsi_lu *lu);

#endif /* HVSTOR_HV_SCSI_H */
