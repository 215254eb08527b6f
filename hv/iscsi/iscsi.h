/*
 * iscsi — internal to hv/: the iSCSI target (RFC 7143) that serves each VM
 * controller to its guest.
 *
 * A server listens on one portal and owns its connections and sessions, all
 * in the daemon's reactor. It knows nothing of VMs: who may log in to which
 * target, with which CHAP secrets, and which controller serves a target are
 * asked of a directory the daemon supplies. Commands become scsi_tasks for
 * that controller (scsi.h); data-in is read into the buffer that is sent.
 *
 * What the target negotiates: ErrorRecoveryLevel=0, MaxConnections=1 (a
 * session is one connection), CRC32C header and data digests on request,
 * ImmediateData and InitialR2T as the initiator asks, our
 * MaxRecvDataSegmentLength 256 KiB, MaxBurstLength up to 1 MiB, up to 8
 * outstanding R2Ts, queue depth 128 per session (the CmdSN window), CHAP
 * with MD5, SHA-1 or SHA-256 (CHAP_A 5, 6, 7), one-way or mutual. A new
 * session's I_T nexus is "InitiatorName,i,0x<ISID>"; it is added to the
 * controller at login and removed when the connection is gone and its
 * commands have completed.
 */
#ifndef HVSTOR_HV_ISCSI_H
#define HVSTOR_HV_ISCSI_H

#include "common.h"
#include "../scsi.h"

struct iscsi_server;

struct iscsi_auth {
    bool is_chap_required;
    char chap_user[256];            /* what the initiator must present */
    char chap_secret[256];
    bool is_mutual;                 /* the target proves itself too */
    char mutual_user[256];
    char mutual_secret[256];
};

struct iscsi_directory_ops {
    /* The controller serving `target` if `initiator` may use it, with the
     * CHAP the login must pass. -ENOENT: no such target; -EACCES: this
     * initiator is not allowed (login fails with authorization failure). */
    int (*lookup)(void *arg, const char *target, const char *initiator,
                  struct iscsi_auth *auth, struct scsi_controller **ctl);
    /* SendTargets: emit each target `initiator` may use, and no other. */
    void (*list)(void *arg, const char *initiator,
                 void (*emit)(void *ctx, const char *target), void *ctx);
    /* The CHAP a discovery session of `initiator` must pass: the index-th
     * set of credentials (0, 1, ...) among the VMs that allow `initiator`
     * and require CHAP; -ENOENT past the last. Discovery requires CHAP when
     * there is at least one; the initiator proves any one of them, and
     * SendTargets then lists the targets that need no CHAP or exactly the
     * credentials it proved (lookup() is asked per target). NULL: discovery
     * needs no CHAP, and lists only the targets that need none. */
    int (*discovery_auth)(void *arg, const char *initiator, unsigned index,
                          struct iscsi_auth *auth);
};

/* Listen on addr:port (port 0 = any; see iscsi_server_port). */
int iscsi_server_create(struct hv_reactor *r, const char *addr, uint16_t port,
                        const struct iscsi_directory_ops *ops, void *arg,
                        struct iscsi_server **out, struct hv_err *err);
uint16_t iscsi_server_port(const struct iscsi_server *s);
/* Stop accepting; close every session after its in-flight commands finish
 * (done=true set when all are closed; the caller runs the reactor until
 * then). Destroy only after that: a command still in a controller would
 * complete into freed memory. */
void iscsi_server_shutdown(struct iscsi_server *s, bool *done);
void iscsi_server_destroy(struct iscsi_server *s);
/* Drop every session logged in to `target` (VM deleted, ACL changed). The
 * sockets close at once; each connection is freed, and its nexus removed
 * from the controller, once its commands in the controller have completed
 * (a later reactor turn): keep the controller alive until
 * iscsi_server_target_busy() says false. */
void iscsi_server_drop_target(struct iscsi_server *s, const char *target);
/* True while any connection (open or closing) of `target` exists. */
bool iscsi_server_target_busy(const struct iscsi_server *s, const char *target);
/* Target-initiated NOP-In after `interval_ms` without traffic (0 = never);
 * the connection is dropped when no answer comes within `timeout_ms`.
 * Defaults: 10000 and 30000. */
void iscsi_server_set_keepalive(struct iscsi_server *s, unsigned interval_ms,
                                unsigned timeout_ms);
/* Sessions in full feature phase (for hvctl and tests). */
unsigned iscsi_server_sessions(const struct iscsi_server *s);

#endif
