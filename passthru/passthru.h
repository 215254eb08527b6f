/*
 * passthru — a whole SAN LUN (or a local block device) handed to one VM.
 *
 * The SCSI layer above (hv/) turns a guest's command into a pt_cmd: the CDB
 * as the guest sent it, its data-out iovec or the data-in iovec the answer
 * lands in. pt_lun_submit() forwards it to the LUN through a san_session that
 * logged in with the VM's own initiator name, and hands back the SAN's status,
 * sense and residual unchanged. A local SCSI disk is the same pt_lun with a
 * second transport, SG_IO on its device node (pt_lun_open_local, below).
 * This module knows nothing of controllers or the iSCSI target; it decides
 * only what may reach the LUN:
 *
 *  - the filter: by default only what a disk needs (pt_cdb_is_allowed); the
 *    rest gets ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE without
 *    reaching the SAN. `is_full_scsi` passes everything (Hyper-V's
 *    AllowFullSCSICommandSet).
 *  - identity: the LUN is named by its VPD 0x83 designator, checked at every
 *    (re)login by san_session_expect_lun(); a different LUN at the address
 *    puts the LUN offline (NOT READY / LOGICAL UNIT NOT SUPPORTED, log line).
 *  - exclusivity across hosts: before the guest's first command the host
 *    registers its key (one per state dir, pt_host_key_load) and reserves the
 *    LUN Write Exclusive - Registrants Only. A LUN another host reserved is
 *    left unregistered ("fenced"): the SAN itself answers the guest's writes
 *    with RESERVATION CONFLICT until pt_lun_takeover() preempts that host.
 *  - the guest's own PERSISTENT RESERVE OUT shares the host's I_T nexus on
 *    the SAN (same initiator name and ISID). Default filter: PR IN passes;
 *    PR OUT passes unless it names the host's key or is REGISTER AND IGNORE
 *    EXISTING KEY (which would silently replace the host's key): those get
 *    RESERVATION CONFLICT here, as an unregistered nexus would from the SAN.
 *    With is_full_scsi everything passes and the guest may drop the host's
 *    fence: that is what "full SCSI" means.
 *  - in use on the host: pt_check_san_lun() / pt_check_local_device() refuse
 *    a LUN the host's open-iscsi is logged in to, or with a filesystem,
 *    partition table, RAID or LVM signature (libblkid over the first and last
 *    MiB), unless forced; the message says what libblkid found.
 *
 * Task management: the guest's aborts and resets reach the SAN, translated
 * where forwarding as is would be wrong. The SAN sees one I_T nexus (ours)
 * for all of the guest's, and its target holds other hosts' LUNs:
 *  - ABORT TASK: a command still waiting here completes TASK ABORTED at once;
 *    one at the SAN gets an ABORT TASK there (pt_lun_abort).
 *  - ABORT TASK SET / CLEAR TASK SET (one guest nexus, or all of them): one
 *    ABORT TASK per command of theirs at the SAN — an ABORT TASK SET there
 *    would also abort the other guest nexuses' commands, and ours.
 *  - LOGICAL UNIT RESET: forwarded as is (pt_lun_reset); the LUN is this
 *    VM's alone. TARGET WARM/COLD RESET: a LUN RESET of each pass-through
 *    LUN on the controller, never a target reset at the SAN, which would
 *    reset LUNs of other VMs and other hosts.
 * Until the SAN has answered those TMFs, new commands to the LUN wait here:
 * an aborted write still running at the SAN can never land after a write
 * the guest sent later. Aborted commands complete with TASK ABORTED.
 *
 * Unit attentions: the SAN holds them for our one nexus, so the first
 * command to meet one hands it to one guest nexus only, and those our own
 * commands meet (reconnect checks, reservation setup) reach none. Every UA
 * the SAN reports goes to on_unit_attention (the caller raises it for the
 * guest's other nexuses); those met by our own commands too. The reset UA
 * that our own forwarded LUN RESET causes is consumed here: the controller
 * has told the guest already.
 *
 * Threading: a pt_lun belongs to the reactor it was opened with. The check
 * functions are synchronous (private reactor, blocking up to the login
 * timeout): control plane only.
 */
#ifndef HVSTOR_PASSTHRU_H
#define HVSTOR_PASSTHRU_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "common.h"
#include "san.h"

#define PT_SENSE_MAX SAN_SENSE_MAX
#define PT_FOUND_MAX 256

/* ---------------------------------------------------------------- filter */

/* May a guest send this CDB to the LUN? Always true with is_full_scsi. */
bool pt_cdb_is_allowed(const uint8_t *cdb, size_t cdb_len, bool is_full_scsi);
/* The data phase a block command's CDB itself defines (READ/WRITE 6-16, WRITE
 * AND VERIFY, VERIFY with BYTCHK, WRITE SAME, COMPARE AND WRITE), with the
 * device's block size: *bytes and the direction (SAN_XFER_NONE when the CDB
 * moves no data). False for any other command, or a CDB too short to say:
 * then the device alone decides. The guest's bytes: untrusted. */
bool pt_cdb_data_bytes(const uint8_t *cdb, size_t cdb_len, uint32_t block_bytes,
                       enum san_xfer *dir, uint64_t *bytes);
/* Name of the command for logs ("READ(10)", "MAINTENANCE IN/0x0c", "opcode 0x1d"). */
const char *pt_cdb_name(const uint8_t *cdb, size_t cdb_len, char *buf, size_t len);
/* Fixed-format sense: 70h, key, ASC, ASCQ; returns its length (18). */
size_t pt_sense_fixed(uint8_t *sense, uint8_t key, uint8_t asc, uint8_t ascq);
/* Would this guest PR OUT (CDB + parameter list) touch the host's fence? */
bool pt_pr_out_touches_host(const uint8_t *cdb, const uint8_t *param, size_t param_len,
                            uint64_t host_key);

/* ------------------------------------------------------------- host key */

/* The PR key of this host: "<state_dir>/pr_key", 16 hex digits, created
 * (random, non-zero, fsynced) on first use. Two hvstord with two state dirs
 * are two hosts to the SAN. */
int pt_host_key_load(const char *state_dir, uint64_t *key, struct hv_err *err);

/* --------------------------------------------------------------- checks */

struct pt_check_options {
    bool is_forced;                 /* skip the host-use and signature checks */
    const char *host_root;          /* where the host's /etc/iscsi and /sys are; NULL: "/" */
};

/* What the checks learned about a SAN LUN. */
struct pt_lun_facts {
    struct san_lun_info info;       /* designator, size, INQUIRY */
    bool is_used_by_host;           /* the host's own open-iscsi has it */
    char host_session[SAN_NAME_MAX + 32];
    char signature[PT_FOUND_MAX];   /* "TYPE=ext4 UUID=..." or "" */
    struct san_pr_status pr;        /* keys and reservation as seen now */
    bool has_pr;                    /* pr is valid (the LUN answered PR IN) */
};

/*
 * Before a single I/O flows: log in to opt->target with opt->initiator (the
 * VM's own name), find `lun` in REPORT LUNS, read its identity, ask whether
 * the host uses it, probe it with libblkid, read its reservations. Errors:
 *   -EACCES "not masked: target T did not let INITIATOR in (...)"
 *   -ENOENT "not masked: LUN 3 is not reported to INITIATOR by T (it reports 1, 2)"
 *   -EBUSY  "... the host's own iSCSI session N uses it" / "... carries TYPE=ext4 ..."
 *   -ENODATA the LUN has no VPD 0x83 designator to pin it by.
 * `facts` is filled as far as the checks went (also on -EBUSY).
 */
int pt_check_san_lun(const struct san_session_options *opt, uint64_t lun,
                     const struct pt_check_options *copt, struct pt_lun_facts *facts,
                     struct hv_err *err);

/* The refusal pt_check_san_lun makes without is_forced, from its facts (so a
 * caller can check other things, e.g. who holds the LUN, in between). */
int pt_facts_refusal(const struct pt_lun_facts *facts, const char *target, struct hv_err *err);

/* libblkid over a buffer holding the device's first `head_bytes` and last
 * `tail_bytes` of a `size_bytes` device (sparse memfd in between). Fills
 * `found` ("TYPE=ext4", "PTTYPE=gpt", "TYPE=LVM2_member"...), "" when clean. */
int pt_probe_signature(const void *head, size_t head_bytes, const void *tail,
                       size_t tail_bytes, uint64_t size_bytes, char found[PT_FOUND_MAX],
                       struct hv_err *err);

/* A local block device: mounted (it or a partition, per mountinfo), held
 * (holders/ in sysfs: LVM, dm, md), a signature (libblkid), and whether it is
 * SCSI (an sd/sr with a scsi_device). */
struct pt_local_facts {
    uint64_t size_bytes;
    bool is_scsi;
    char sysfs_name[64];            /* "loop3", "sdb" */
    char in_use[PT_FOUND_MAX];      /* why it is in use, "" when free */
};
/* -EBUSY naming the use unless forced; mounted and held are refused even
 * then (forcing cannot make a mounted filesystem safe to hand out). */
int pt_check_local_device(const char *path, const struct pt_check_options *copt,
                          struct pt_local_facts *facts, struct hv_err *err);
/* Open it O_EXCL (the kernel refuses a second exclusive opener: another VM,
 * a mount, LVM): the returned fd is the host-wide claim; close it to release. */
int pt_claim_local_device(const char *path, bool is_read_only, int *fd, struct hv_err *err);

/*
 * What sysfs says of a local block device `name` ("sdb") under `sysfs_root`
 * ("/sys"; a test passes a tree of its own). SCSI means class/block/NAME/
 * device is a SCSI device (it has scsi_device/H:C:T:L): those are passed
 * through with SG_IO, everything else (loop, nvme, virtio-blk, dm) through
 * the SBC emulation over a raw bdev. Not SCSI is no error: -ENOENT only when
 * class/block/NAME itself is missing.
 */
struct pt_scsi_sysfs {
    bool is_scsi;
    bool is_partition;
    char hctl[32];                  /* "2:0:0:0" */
    char sg_name[32];               /* "sg1"; "" when the sg driver is not loaded */
    int device_type;                /* device/type (0 = disk), -1 when unreadable */
    char vendor[9];                 /* trailing spaces trimmed */
    char model[17];
    char designator[SAN_DESIGNATOR_MAX];    /* from device/vpd_pg83, "" when absent */
};
int pt_scsi_sysfs_read(const char *sysfs_root, const char *name, struct pt_scsi_sysfs *out);
/* The whole SCSI disk whose VPD 0x83 (as the kernel cached it in sysfs)
 * carries `designator`: its block device name into `name`. -ENOENT when no
 * disk does (a device name like sdb may change across boots; the designator
 * does not). */
int pt_scsi_find_by_designator(const char *sysfs_root, const char *designator,
                               char name[64]);

/* ---------------------------------------------------------- the live LUN */

struct pt_lun;

enum pt_state {
    PT_STATE_CONNECTING,            /* login and reservation not done: commands wait */
    PT_STATE_READY,                 /* registered and reserved: commands flow */
    PT_STATE_FENCED,                /* another host holds the reservation: commands
                                     * flow unregistered, writes get RESERVATION
                                     * CONFLICT from the SAN */
    PT_STATE_FAILED,                /* SAN unreachable past the replacement timeout */
    PT_STATE_OFFLINE,               /* refused for good (identity changed): NOT READY */
};
const char *pt_state_name(enum pt_state state);

struct pt_lun_options {
    struct san_session_options san; /* the VM's initiator, the SAN's portal and target */
    uint64_t lun;
    const char *designator;         /* required: what the LUN must be */
    bool is_full_scsi;
    uint64_t host_key;              /* pt_host_key_load */
    /* every state change, with a sentence for the log */
    void (*on_state)(struct pt_lun *pl, enum pt_state state, const char *why, void *arg);
    /* A UNIT ATTENTION the SAN reported that no guest command carried back
     * (met by a check or a retried command of ours). Optional. */
    void (*on_unit_attention)(struct pt_lun *pl, const uint8_t *sense, size_t sense_len,
                              void *arg);
    void *cb_arg;
};

/* Create the session, pin the designator, log in, register and reserve (all
 * asynchronous; commands submitted meanwhile wait). Fails at once only for
 * bad options. */
int pt_lun_open(struct hv_reactor *r, const struct pt_lun_options *opt, struct pt_lun **out,
                struct hv_err *err);
/* Fail what is still queued (CLOSED sense), close the session, free. The
 * reservation is left on the SAN: a restart takes it again with the same key. */
void pt_lun_close(struct pt_lun *pl);
/* The LUN leaves this host (detach): unregister the host's key, which also
 * releases its reservation, then close and free — asynchronously, within
 * 5 s even if the SAN does not answer. No command may be in flight. */
void pt_lun_close_and_release(struct pt_lun *pl);
enum pt_state pt_lun_state(const struct pt_lun *pl);
const char *pt_lun_why(const struct pt_lun *pl);     /* last state sentence */
/* Holder of a foreign reservation (valid in FENCED). */
uint64_t pt_lun_foreign_key(const struct pt_lun *pl);
struct san_session *pt_lun_session(struct pt_lun *pl);
/* Commands that reached the SAN / were refused by the filter. */
uint64_t pt_lun_forwarded(const struct pt_lun *pl);
uint64_t pt_lun_filtered(const struct pt_lun *pl);

/*
 * One guest command. Caller-owned (a pool in the caller: no allocation per
 * I/O); done() runs exactly once, never inside submit. Results are the SAN's
 * (or the filter's) unchanged: status, sense, residual.
 */
struct pt_cmd {
    uint8_t cdb[SAN_CDB_MAX];
    uint8_t cdb_len;
    enum san_xfer dir;
    struct iovec *iov;              /* data-out, or where data-in lands */
    int iovcnt;
    uint32_t xfer_bytes;            /* the initiator's expected length */
    void (*done)(struct pt_cmd *cmd);
    void *cb_arg;

    uint8_t status;
    uint8_t sense[PT_SENSE_MAX];
    uint32_t sense_len;
    uint32_t residual;
    bool is_overflow;
    bool is_filtered;               /* answered here, never reached the SAN */

    /* private */
    struct pt_lun *pl;
    struct pt_cmd *next;
    bool is_at_san;
    struct hv_deferred deferred;
    struct san_cmd san;
};

/* Never fails: refusals complete through done(). */
void pt_lun_submit(struct pt_lun *pl, struct pt_cmd *cmd);
/* Complete every command still waiting here (for the login, or behind a
 * TMF) with TASK ABORTED; commands at the SAN are not touched. */
void pt_lun_abort_waiting(struct pt_lun *pl);
/* ABORT TASK: `cmd` (submitted, not completed) completes TASK ABORTED —
 * at once when it waits here, after the SAN's answer to an ABORT TASK when
 * it is there (or with the SAN's own answer if that came first). */
void pt_lun_abort(struct pt_lun *pl, struct pt_cmd *cmd);
/* LOGICAL UNIT RESET: the commands waiting here are aborted, the SAN gets a
 * LUN RESET (which aborts what it runs), the reset's unit attention is
 * consumed; new commands wait until that is done. */
void pt_lun_reset(struct pt_lun *pl);
/* TMFs sent to the SAN for the guest, and SAN unit attentions handed up. */
uint64_t pt_lun_aborts_forwarded(const struct pt_lun *pl);
uint64_t pt_lun_resets_forwarded(const struct pt_lun *pl);
uint64_t pt_lun_uas_reported(const struct pt_lun *pl);

/* Preempt `victim_key` (0: whoever holds the reservation now) and take the
 * reservation, as fence_scsi does; the victim's tasks are aborted. Only on
 * an explicit request: the victim must be a dead host. done(arg, 0|-errno, msg). */
int pt_lun_takeover(struct pt_lun *pl, uint64_t victim_key, san_status_cb done, void *arg);

/* ------------------------------------------- local SCSI devices (SG_IO) */

/*
 * A local SCSI disk is the same pt_lun with a second transport: the guest's
 * CDB goes to the device node with SG_IO (same filter, same --full-scsi),
 * and the device's status, sense and residual come back unchanged. SG_IO
 * blocks, so worker threads (one per command in the device at once) run it
 * and complete back to the reactor through an eventfd: other disks' I/O
 * never waits on this device. There is no host fence (no PR key): the
 * O_EXCL claim is the exclusivity on this host.
 *
 * Lengths: for the block commands (pt_cdb_data_bytes) the device gets
 * exactly what the CDB moves and the iSCSI residual is computed against the
 * initiator's expected length (the kernel reports neither overflow nor a
 * write's underflow): a read overflow lands in a worker's buffer first
 * (up to PT_SG_BOUNCE_BYTES), a data-out the initiator did not send, or a
 * data phase the wrong way round, gets ILLEGAL REQUEST / INVALID FIELD IN CDB
 * without reaching the device. Other commands move the initiator's buffer and
 * report the kernel's residual. The kernel caps one command at the queue's
 * max_hw_sectors (the device's VPD 0xB0 tells the guest its own limit).
 * Task management: SG_IO has none. ABORT TASK, ABORT TASK SET and LUN RESET
 * complete the commands no worker has taken yet with TASK ABORTED; those in
 * the device run to completion and give the device's answer (SAM allows a
 * task to complete despite an abort).
 */

/* The device's own answers, through SG_IO on `fd` (synchronous: control
 * plane). -ENOTTY: the node does not take SG_IO (not SCSI). */
struct pt_sg_identity {
    int sg_version;                 /* SG_GET_VERSION_NUM: 30527 for the block layer */
    struct san_inquiry inquiry;
    char designator[SAN_DESIGNATOR_MAX];    /* "" when VPD 0x83 has none usable */
    uint64_t size_bytes;
    uint32_t block_bytes;
};
int pt_sg_identify(int fd, const char *path, struct pt_sg_identity *out, struct hv_err *err);

/* One SG_IO outcome, as the kernel reported it (struct sg_io_hdr's fields). */
struct pt_sg_answer {
    int error;                      /* the ioctl's -errno; 0 when the command ran */
    uint8_t status;                 /* SCSI status byte */
    uint16_t host_status;           /* DID_* */
    uint16_t driver_status;         /* DRIVER_* */
    int32_t resid;
    const uint8_t *sense;
    uint32_t sense_len;             /* sb_len_wr */
};
/* Into the command's status, sense and residual: the device's own answer
 * unchanged; a transport failure (no such device, timeout, bus reset, the
 * kernel refusing the transfer) as the status and sense an initiator acts
 * on (NOT READY, ABORTED COMMAND to retry, BUSY, ILLEGAL REQUEST). Returns
 * true when the device is gone for good. */
bool pt_sg_result(const struct pt_sg_answer *a, struct pt_cmd *cmd);

struct pt_local_options {
    int fd;                         /* the claim (pt_claim_local_device): dup'ed,
                                     * the caller closes its own */
    const char *path;               /* for messages */
    const char *designator;         /* required: the device must carry it */
    bool is_full_scsi;
    unsigned queue_depth;           /* commands in the device at once; 0: 16 */
    unsigned timeout_ms;            /* per command; 0: 60 s */
    void (*on_state)(struct pt_lun *pl, enum pt_state state, const char *why, void *arg);
    void *cb_arg;
};
/* Identify the device (its designator must be opt->designator, else
 * -ESTALE naming both), start the workers; READY at once. */
int pt_lun_open_local(struct hv_reactor *r, const struct pt_local_options *opt,
                      struct pt_lun **out, struct hv_err *err);
bool pt_lun_is_local(const struct pt_lun *pl);
/* Commands queued for or inside the device right now; the most that were
 * inside the device at the same instant (0 for a SAN LUN). */
uint64_t pt_lun_inflight(const struct pt_lun *pl);
unsigned pt_lun_max_in_device(const struct pt_lun *pl);

#endif /* HVSTOR_PASSTHRU_H */
