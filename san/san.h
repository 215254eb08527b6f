/*
 * san — the iSCSI initiator side that reaches the SAN.
 *
 * A san_session is one iSCSI session (libiscsi) to one target, driven from an
 * hv_reactor: its socket is a watch in the same epoll loop as everything
 * else, there is no thread per session. It logs in with the initiator name it
 * is given (a VM's own IQN, never the host's, so that the SAN's ACLs do the
 * masking), with optional one-way or mutual CHAP, and with an ISID that is
 * fixed for the life of the session object, so that the I_T nexus (and the
 * persistent reservations tied to it) is the same after every reconnect.
 *
 * Commands are caller-owned san_cmd structures carrying a raw CDB and an
 * iovec; the same path serves pass-through (the guest's CDB as is) and the
 * helpers here (REPORT LUNS, INQUIRY, READ CAPACITY(16), PERSISTENT RESERVE).
 * When the connection drops, commands in flight are kept and replayed in
 * submission order once the session is logged in again; if that does not
 * happen within the replacement timeout (30 s by default, as open-iscsi's
 * replacement_timeout) they complete with a transport failure and a NOT READY
 * sense a guest can be given, and reconnect attempts go on in the background.
 * After each reconnect the LUNs registered with san_session_expect_lun() are
 * checked by their VPD 0x83 designator: a different LUN at the same address
 * puts the session offline instead of serving the wrong data.
 *
 * The module also reads the host's own open-iscsi configuration (initiator
 * name, node records, active kernel sessions and their LUNs) and offers a
 * synchronous layer on a private reactor for control-plane callers.
 *
 * Threading: a session belongs to the reactor it was created with.
 */
#ifndef HVSTOR_SAN_H
#define HVSTOR_SAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "common.h"

#define SAN_NAME_MAX 224            /* iSCSI names are at most 223 bytes (RFC 7143) */
#define SAN_PORTAL_MAX 128
#define SAN_DESIGNATOR_MAX 80       /* "naa." + 32 hex digits, "eui." + 16, "t10." + text */
#define SAN_SENSE_MAX 96
#define SAN_CDB_MAX 16

/* ------------------------------------------------------------- session */

struct san_session;

enum san_state {
    SAN_STATE_IDLE,         /* created, san_session_connect() not called yet */
    SAN_STATE_CONNECTING,   /* first login in progress */
    SAN_STATE_ONLINE,       /* logged in, commands flow */
    SAN_STATE_RECOVERING,   /* connection lost, commands wait for the reconnect */
    SAN_STATE_FAILFAST,     /* replacement timeout passed: commands fail at once,
                             * reconnect attempts go on */
    SAN_STATE_OFFLINE,      /* refused for good (the LUN's identity changed):
                             * commands fail at once, no more reconnects */
};
const char *san_state_name(enum san_state state);

enum san_digest {
    SAN_DIGEST_NONE,            /* offer None only */
    SAN_DIGEST_PREFER_CRC32C,   /* offer CRC32C,None */
    SAN_DIGEST_REQUIRE_CRC32C,  /* offer CRC32C only */
};

struct san_chap {
    const char *user;           /* NULL: no CHAP */
    const char *secret;
    const char *target_user;    /* mutual CHAP: the target proves itself to us */
    const char *target_secret;
};

struct san_session_options {
    const char *portal;             /* "host[:port]", "[v6addr]:port"; port 3260 by default */
    const char *target;             /* target IQN */
    const char *initiator;          /* the initiator name to log in with (the VM's) */
    struct san_chap chap;
    /* ISID (RFC 7143 10.12.5) of "random" type: 0x80 RRRRRR QQQQ. Zero
     * isid_random picks one at random; either way it never changes for the
     * life of the session, across reconnects. Persist it with the VM to keep
     * the same I_T nexus across daemon restarts too. */
    uint32_t isid_random;           /* 24 bits */
    uint16_t isid_qualifier;
    enum san_digest header_digest;
    uint32_t replacement_timeout_ms;    /* 0: 30000 */
    uint32_t reconnect_min_ms;          /* first retry delay, doubled each time; 0: 200 */
    uint32_t reconnect_max_ms;          /* 0: 5000 */
    uint32_t login_timeout_ms;          /* one connect+login+checks attempt; 0: 15000 */
    /* NOP-Out ping while online (open-iscsi's noop_out_interval/timeout): no
     * answer within the timeout is a lost connection. UINT32_MAX interval
     * disables it. 0: 5000 each. */
    uint32_t nop_interval_ms;
    uint32_t nop_timeout_ms;
    /* Called on every state change, on the reactor thread; `why` is a sentence
     * for the log ("connection lost: ...", "LUN 1 designator changed ..."). */
    void (*on_state)(struct san_session *s, enum san_state state, const char *why, void *arg);
    /* Called for each UNIT ATTENTION met by the session's own checks after a
     * login (TEST UNIT READY to every LUN with queued commands, before they
     * are replayed), by a replayed command (then retried), or by one of the
     * PR operations below (retried too): the target restarted, reservations
     * were cleared... The UA was consumed on the caller's behalf; a
     * pass-through reports it to its guest. */
    void (*on_unit_attention)(struct san_session *s, uint64_t lun, const uint8_t *sense,
                              size_t sense_len, void *arg);
    void *cb_arg;
};

/* Copies every string. Does not connect. */
int san_session_create(struct hv_reactor *r, const struct san_session_options *opt,
                       struct san_session **out, struct hv_err *err);
/* First login, one attempt (no retries: a refusal is an answer). `done` runs
 * once on the reactor with 0, or -EACCES (login refused: ACL or CHAP),
 * -ESTALE (a LUN given to san_session_expect_lun() before connecting is not
 * the one at that address: the session is OFFLINE), -ECONNREFUSED/
 * -ETIMEDOUT/-EIO, and a message. After success the session reconnects by
 * itself whenever the connection is lost, and checks the expected LUNs on
 * every login. */
typedef void (*san_status_cb)(void *arg, int status, const char *msg);
int san_session_connect(struct san_session *s, san_status_cb done, void *arg);
/* Close the connection (no Logout PDU: the target ends the session when the
 * TCP connection goes), fail every command still queued with
 * SAN_TRANSPORT_CLOSED (their done() runs inside this call), free. From
 * inside a completion it finishes when that libiscsi callback returns. */
void san_session_close(struct san_session *s);

enum san_state san_session_state(const struct san_session *s);
/* The 6-byte ISID and its text form "0x80aabbccdd01" (15 chars). */
void san_session_isid(const struct san_session *s, uint8_t isid[6]);
void san_session_isid_text(const struct san_session *s, char out[16]);
const char *san_session_target(const struct san_session *s);
const char *san_session_initiator(const struct san_session *s);
const char *san_session_portal(const struct san_session *s);
/* Reconnects done so far (successful logins after the first). */
unsigned san_session_reconnects(const struct san_session *s);
/* Commands submitted and not yet completed. */
unsigned san_session_outstanding(const struct san_session *s);

/* Remember that `lun` must carry `designator` (as san_vpd83_designator gives
 * it): checked at every login (the first too, when called before connect)
 * before any queued command is sent; a
 * mismatch or a missing LUN puts the session OFFLINE with a log line naming
 * both. -ENOSPC beyond 64 LUNs. */
int san_session_expect_lun(struct san_session *s, uint64_t lun, const char *designator);

/* Drop the TCP connection as a network failure would (fault injection for
 * tests, and "reset the path" for operators): recovery starts as usual. */
int san_session_drop_connection(struct san_session *s);
/* In FAILFAST/RECOVERING: try to reconnect now instead of at the next backoff. */
void san_session_reconnect_now(struct san_session *s);

/* ------------------------------------------------------------- commands */

enum san_xfer { SAN_XFER_NONE, SAN_XFER_READ, SAN_XFER_WRITE };

enum san_transport {
    SAN_TRANSPORT_OK,       /* the target answered: see status/sense */
    SAN_TRANSPORT_FAILED,   /* not answered within the replacement timeout, or
                             * submitted in FAILFAST */
    SAN_TRANSPORT_OFFLINE,  /* the session is offline (LUN identity changed) */
    SAN_TRANSPORT_CLOSED,   /* the session was closed */
    SAN_TRANSPORT_ABORTED,  /* aborted by task management (san_cmd_abort,
                             * san_session_tmf): status TASK ABORTED, no sense */
};

/* SCSI status bytes (SAM-5) */
#define SAN_STATUS_GOOD 0x00
#define SAN_STATUS_CHECK_CONDITION 0x02
#define SAN_STATUS_BUSY 0x08
#define SAN_STATUS_RESERVATION_CONFLICT 0x18
#define SAN_STATUS_TASK_SET_FULL 0x28
#define SAN_STATUS_TASK_ABORTED 0x40

/*
 * One SCSI command. Caller-owned; fill the first block, submit, and do not
 * touch it until done() runs (exactly once, never inside submit). For
 * SAN_XFER_READ the data lands directly in `iov`; for WRITE it is sent from
 * it; `xfer_bytes` is the expected transfer length (at most the iov's
 * length). When transport != OK, status is CHECK CONDITION with a fixed-format
 * NOT READY sense a pass-through can hand to a guest as is: 2h/04h/00h
 * (FAILED: a guest fails the I/O, and may retry later) or 2h/04h/03h
 * (OFFLINE/CLOSED: manual intervention required). BUSY and TASK SET FULL
 * from the target are turned into errors by libiscsi, which drops the
 * connection: such a command is replayed like any other after the reconnect.
 */
struct san_cmd {
    uint64_t lun;
    uint8_t cdb[SAN_CDB_MAX];
    uint8_t cdb_len;                /* 6, 10, 12 or 16 */
    enum san_xfer dir;
    struct iovec *iov;
    int iovcnt;
    uint32_t xfer_bytes;
    void (*done)(struct san_cmd *cmd);
    void *cb_arg;

    /* results */
    enum san_transport transport;
    uint8_t status;                 /* SAN_STATUS_* */
    uint8_t sense[SAN_SENSE_MAX];
    uint32_t sense_len;
    uint32_t residual;              /* bytes not transferred (underflow) or in excess */
    bool is_overflow;               /* residual is an overflow */

    /* private to san */
    struct san_session *session;
    struct san_cmd *q_next;
    struct san_cmd *q_prev;
    uint64_t seq;
    uint32_t flags;
    uint8_t ua_retries;
    uint64_t task[48] __attribute__((aligned(16)));
};

/* Queue one command. 0, or -EINVAL (bad CDB length, transfer bigger than the
 * iov) without calling done(). In RECOVERING the command waits; in
 * FAILFAST/OFFLINE it fails on the next reactor turn. */
int san_session_submit(struct san_session *s, struct san_cmd *cmd);

/*
 * Task management toward the SAN, for a pass-through that forwards its
 * guest's aborts and resets. A command aborted completes through its done()
 * with transport SAN_TRANSPORT_ABORTED (status TASK ABORTED, no sense) once
 * the target has answered the TMF; one whose answer arrived first completes
 * with that answer (SAM allows it). A command not sent yet (waiting for a
 * reconnect) is aborted here at once. `done(arg, status, msg)` runs on the
 * reactor, never inside the call: 0 when the target answered FUNCTION
 * COMPLETE or TASK DOES NOT EXIST; -EIO when it refused (msg gives the
 * response; the commands then run on and answer normally); 0 as well when
 * the connection went first: ERL 0 session reinstatement ends the tasks at
 * the target, and aborted commands are not replayed. Not called after
 * san_session_close().
 */
/* ABORT TASK for one command. -ENOENT (done not called) when it is no
 * longer outstanding. */
int san_cmd_abort(struct san_session *s, struct san_cmd *cmd, san_status_cb done, void *arg);
enum san_tmf {
    SAN_TMF_ABORT_TASK_SET = 2,     /* every task of this session's nexus on `lun` */
    SAN_TMF_LUN_RESET = 5,          /* the LUN itself: every nexus's tasks, SPC-2
                                     * reservations; the target raises 29h/xxh */
};
int san_session_tmf(struct san_session *s, uint64_t lun, enum san_tmf fn, san_status_cb done,
                    void *arg);
/* TMFs sent so far, for statistics. */
unsigned san_session_tmfs(const struct san_session *s);

/* Sense helpers (fixed and descriptor format). */
int san_sense_key(const uint8_t *sense, size_t len);              /* -1 if none */
uint16_t san_sense_asc_ascq(const uint8_t *sense, size_t len);    /* ASC<<8|ASCQ */
/* "CHECK CONDITION, sense 5/24h/00h" or "RESERVATION CONFLICT" or
 * "transport failed"; for messages. */
const char *san_cmd_describe(const struct san_cmd *cmd, char *buf, size_t len);
/* 0 for GOOD, -EBUSY for BUSY/TASK SET FULL, -EACCES for RESERVATION
 * CONFLICT, -EIO for CHECK CONDITION, -ENOTCONN/-ESHUTDOWN for transport. */
int san_cmd_errno(const struct san_cmd *cmd);

/* --------------------------------------------------- SCSI data decoding */

/*
 * Pure functions over bytes the target sent (untrusted: every length is
 * checked against the buffer).
 */
struct san_inquiry {
    uint8_t peripheral_qualifier;
    uint8_t device_type;            /* 0 = disk */
    char vendor[9];                 /* trailing spaces trimmed */
    char product[17];
    char revision[5];
};
int san_parse_inquiry(const uint8_t *buf, size_t len, struct san_inquiry *out);
/* The best LU designator from VPD page 0x83: NAA (registered extended 6,
 * then 5, then others) > EUI-64 > T10 vendor id, association "logical unit"
 * only, as text: "naa.6001405...", "eui.0123456789abcdef", "t10.IET
 * 00010001". -ENOENT when the page has none. */
int san_vpd83_designator(const uint8_t *buf, size_t len, char out[SAN_DESIGNATOR_MAX]);
/* REPORT LUNS data into LUN numbers (flat or peripheral addressing decoded
 * to the plain number). Returns the count stored (at most max), or -EINVAL. */
int san_parse_report_luns(const uint8_t *buf, size_t len, uint64_t *luns, size_t max,
                          size_t *total);
struct san_capacity {
    uint64_t blocks;
    uint32_t block_bytes;
    uint32_t physical_block_bytes;
    bool is_thin;                   /* LBPME */
};
int san_parse_read_capacity16(const uint8_t *buf, size_t len, struct san_capacity *out);
/* SAM LUN encoding for a number (peripheral < 256, flat < 16384). */
void san_lun_encode(uint64_t lun, uint8_t out[8]);

/* ----------------------------------------------- persistent reservations */

/* PERSISTENT RESERVE OUT service actions and types (SPC-4 6.16) */
enum san_pr_action {
    SAN_PR_REGISTER = 0x00,
    SAN_PR_RESERVE = 0x01,
    SAN_PR_RELEASE = 0x02,
    SAN_PR_CLEAR = 0x03,
    SAN_PR_PREEMPT = 0x04,
    SAN_PR_PREEMPT_AND_ABORT = 0x05,
    SAN_PR_REGISTER_AND_IGNORE = 0x06,
};
#define SAN_PR_TYPE_WRITE_EXCLUSIVE 0x1
#define SAN_PR_TYPE_EXCLUSIVE_ACCESS 0x3
#define SAN_PR_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY 0x5
#define SAN_PR_TYPE_EXCLUSIVE_ACCESS_REGISTRANTS_ONLY 0x6

#define SAN_PR_MAX_KEYS 64
struct san_pr_status {
    uint32_t generation;
    size_t key_count;               /* keys stored (at most SAN_PR_MAX_KEYS) */
    uint64_t keys[SAN_PR_MAX_KEYS];
    bool is_reserved;
    uint64_t holder_key;            /* valid when is_reserved */
    uint8_t type;
};

/* Build the 10-byte PR OUT CDB and its 24-byte parameter list. */
void san_pr_out_build(uint8_t cdb[10], uint8_t param[24], enum san_pr_action action,
                      uint8_t type, uint64_t key, uint64_t sa_key);
/* PR IN READ KEYS (0) / READ RESERVATION (1) CDB with an allocation length. */
void san_pr_in_build(uint8_t cdb[10], uint8_t action, uint16_t alloc_len);
/* Decode READ KEYS / READ RESERVATION data into `out` (the other half untouched). */
int san_parse_pr_keys(const uint8_t *buf, size_t len, struct san_pr_status *out);
int san_parse_pr_reservation(const uint8_t *buf, size_t len, struct san_pr_status *out);

/*
 * Asynchronous PR operations through the session's command path (they wait
 * out a reconnect like any command). `done(arg, status, msg)`: 0, -EACCES
 * for RESERVATION CONFLICT, -EIO for other CHECK CONDITIONs (msg names the
 * sense), -ENOTCONN/-ESHUTDOWN for transport failures. A key registered
 * through san_pr_register on this session is remembered: after a reconnect,
 * if the key is still registered on the LUN (nobody preempted it), the new
 * nexus is registered again with REGISTER AND IGNORE EXISTING KEY before any
 * command is replayed — a no-op on targets that keep the I_T nexus across
 * session reinstatement, and what keeps writes flowing on those that do not
 * (tgt). A preempted key is never re-registered: fencing holds.
 */
int san_pr_register(struct san_session *s, uint64_t lun, uint64_t old_key, uint64_t new_key,
                    san_status_cb done, void *arg);
int san_pr_reserve(struct san_session *s, uint64_t lun, uint64_t key, uint8_t type,
                   san_status_cb done, void *arg);
int san_pr_release(struct san_session *s, uint64_t lun, uint64_t key, uint8_t type,
                   san_status_cb done, void *arg);
int san_pr_clear(struct san_session *s, uint64_t lun, uint64_t key, san_status_cb done,
                 void *arg);
/* Remove `victim_key`'s registrations (and take its reservation with `type`
 * if it held it), as fence_scsi does; `abort` also aborts the victim's tasks. */
int san_pr_preempt(struct san_session *s, uint64_t lun, uint64_t key, uint64_t victim_key,
                   uint8_t type, bool abort, san_status_cb done, void *arg);
/* READ KEYS then READ RESERVATION. */
typedef void (*san_pr_status_cb)(void *arg, int status, const char *msg,
                                 const struct san_pr_status *pr);
int san_pr_read(struct san_session *s, uint64_t lun, san_pr_status_cb done, void *arg);

/* ---------------------------------------------------------- LUN scan */

struct san_lun_info {
    uint64_t lun;
    struct san_inquiry inquiry;
    char designator[SAN_DESIGNATOR_MAX];    /* "" when the LUN has none */
    uint64_t size_bytes;                    /* 0 for non-disks */
    uint32_t block_bytes;
};

/* REPORT LUNS, then INQUIRY, VPD 0x83 and READ CAPACITY(16) for each LUN. */
typedef void (*san_scan_cb)(void *arg, int status, const char *msg,
                            const struct san_lun_info *luns, size_t count);
int san_scan_luns(struct san_session *s, san_scan_cb done, void *arg);

/* ---------------------------------------------------------- discovery */

struct san_target {
    char name[SAN_NAME_MAX];
    size_t portal_count;
    char portals[8][SAN_PORTAL_MAX];        /* "127.0.0.1:3260,1" as the target sends them */
};
typedef void (*san_discover_cb)(void *arg, int status, const char *msg,
                                const struct san_target *targets, size_t count);
/* SendTargets=All over a discovery session (own connection, closed after). */
int san_discover(struct hv_reactor *r, const char *portal, const char *initiator,
                 const struct san_chap *chap, san_discover_cb done, void *arg);

/* ------------------------------------------- the host's own open-iscsi */

struct san_host_node {                      /* one node record */
    char target[SAN_NAME_MAX];
    char address[SAN_PORTAL_MAX];
    uint16_t port;
    int tpgt;
    char startup[16];                       /* "automatic", "manual", "" */
};
struct san_host_lun {
    uint64_t lun;
    char device[32];                        /* "sdb", "" if no block device */
    char designator[SAN_DESIGNATOR_MAX];    /* from the kernel's vpd_pg83, "" if absent */
};
struct san_host_session {                   /* one session the kernel has */
    unsigned sid;                           /* N of sessionN */
    char target[SAN_NAME_MAX];
    char address[SAN_PORTAL_MAX];
    uint16_t port;
    size_t lun_count;
    struct san_host_lun *luns;
};
struct san_host_config {
    char initiator_name[SAN_NAME_MAX];      /* "" when the file is missing */
    size_t node_count;
    struct san_host_node *nodes;
    size_t session_count;
    struct san_host_session *sessions;
};
/*
 * Read <root>/etc/iscsi/initiatorname.iscsi, the node records under
 * <root>/etc/iscsi/nodes/<target>/<portal,tpgt>[/<iface>] and the kernel's
 * sessions under <root>/sys/class/iscsi_session (with their connections'
 * persistent address/port and the SCSI devices below them). `root` is "/" in
 * production; missing parts are empty, not errors; a malformed record is an
 * error naming the file and line.
 */
int san_host_config_read(const char *root, struct san_host_config **out, struct hv_err *err);
void san_host_config_free(struct san_host_config *cfg);
/* Does the host's own initiator use this LUN? Matched by designator when
 * both are known, else by target name and LUN number. The session found (if
 * any) goes to *who. */
bool san_host_uses_lun(const struct san_host_config *cfg, const char *target, uint64_t lun,
                       const char *designator, const struct san_host_session **who);
/* Parse one node record's text ("key = value" lines). -EINVAL with the line. */
int san_parse_node_record(const char *text, size_t len, const char *path,
                          struct san_host_node *out, struct hv_err *err);
/* Parse initiatorname.iscsi text; -ENOENT when no InitiatorName= line. */
int san_parse_initiator_name(const char *text, size_t len, char out[SAN_NAME_MAX]);

/* ------------------------------------------------- synchronous layer */

/*
 * For control-plane callers (hvctl requests, tools, tests): each call runs a
 * private reactor until done. Not for hvstord's reactor thread when it serves
 * I/O (it blocks for up to the login timeout).
 */
int san_discover_sync(const char *portal, const char *initiator, const struct san_chap *chap,
                      struct san_target **targets, size_t *count, struct hv_err *err);
/* Log in with `opt`, scan the LUNs, log out. *luns is malloc'd. */
int san_list_luns_sync(const struct san_session_options *opt, struct san_lun_info **luns,
                       size_t *count, struct hv_err *err);

/* A session on its own private reactor, for step-by-step synchronous use. */
struct san_sync;
int san_sync_open(const struct san_session_options *opt, struct san_sync **out,
                  struct hv_err *err);
void san_sync_close(struct san_sync *ss);
struct san_session *san_sync_session(struct san_sync *ss);
struct hv_reactor *san_sync_reactor(struct san_sync *ss);
/* Submit and wait; returns san_cmd_errno(cmd). */
int san_sync_command(struct san_sync *ss, struct san_cmd *cmd);
int san_sync_scan(struct san_sync *ss, struct san_lun_info **luns, size_t *count,
                  struct hv_err *err);
int san_sync_pr_register(struct san_sync *ss, uint64_t lun, uint64_t old_key, uint64_t new_key,
                         struct hv_err *err);
int san_sync_pr_reserve(struct san_sync *ss, uint64_t lun, uint64_t key, uint8_t type,
                        struct hv_err *err);
int san_sync_pr_release(struct san_sync *ss, uint64_t lun, uint64_t key, uint8_t type,
                        struct hv_err *err);
int san_sync_pr_clear(struct san_sync *ss, uint64_t lun, uint64_t key, struct hv_err *err);
int san_sync_pr_preempt(struct san_sync *ss, uint64_t lun, uint64_t key, uint64_t victim_key,
                        uint8_t type, bool abort, struct hv_err *err);
int san_sync_pr_read(struct san_sync *ss, uint64_t lun, struct san_pr_status *pr,
                     struct hv_err *err);

#endif /* HVSTOR_SAN_H */
