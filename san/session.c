/*
 * One iSCSI session to one target, driven from an hv_reactor, with
 * reconnects that keep the ISID and replay commands in order.
 *
 * Why we drive reconnects ourselves instead of libiscsi's automatic ones
 * (iscsi_set_noautoreconnect(ctx, 1) below):
 *   - libiscsi replays the queued tasks the moment the new login completes.
 *     We must first check that the LUN behind the address is still the same
 *     one (VPD 0x83) and re-establish our PR registration, and only then let
 *     the guest's writes through. A replay before that check could write a
 *     VM's data onto somebody else's LUN.
 *   - libiscsi has no notion of a replacement timeout: tasks wait forever
 *     (max retries -1) or fail at the first failed attempt. We need "wait up
 *     to 30 s, then fail fast while still trying to come back".
 *   - Its reconnect swaps the context's fd and sleeps between attempts by
 *     returning 0 from iscsi_which_events(); backoff on reactor timers is
 *     simpler to reason about and to test.
 * So every connection is a fresh iscsi_context with the same ISID, and the
 * session keeps the commands: those libiscsi holds when the connection dies
 * are taken back (iscsi_scsi_cancel_all_tasks) and queued again by their
 * submission sequence number.
 *
 * libiscsi callbacks run inside iscsi_service(); a context is never torn
 * down from inside one (that would free the PDU being processed): callbacks
 * only record that the connection is lost, and the fd handler acts after
 * iscsi_service() returns.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "san.h"
#include "san_internal.h"

_Static_assert(sizeof(((struct san_cmd *)0)->task) >= sizeof(struct scsi_task),
               "san_cmd.task too small for struct scsi_task");
_Static_assert(sizeof(struct iovec) == sizeof(struct scsi_iovec),
               "libiscsi's scsi_iovec must match struct iovec");

#define SAN_MAX_EXPECT 64
#define SAN_UA_RETRIES 8     /* a target may have queued several */
#define SAN_VERIFY_BUF 1024

struct cmdq {
    struct san_cmd *head;
    struct san_cmd *tail;
};

struct san_expect {
    uint64_t lun;
    char designator[SAN_DESIGNATOR_MAX];
};

struct san_prkey {
    uint64_t lun;
    uint64_t key;
};

struct san_session {
    struct hv_reactor *r;
    char portal[SAN_PORTAL_MAX];
    char target[SAN_NAME_MAX];
    char initiator[SAN_NAME_MAX];
    char chap_user[256], chap_secret[256], tchap_user[256], tchap_secret[256];
    struct san_session_options opt;
    uint8_t isid[6];

    struct iscsi_context *ctx;
    struct hv_watch *watch;
    int watch_fd;
    uint32_t watch_events;
    struct hv_timer poll_timer;         /* which_events() said 0: look again */
    struct hv_timer login_timer;
    struct hv_timer retry_timer;
    struct hv_timer replacement_timer;
    struct hv_timer nop_timer;          /* next NOP-Out ping */
    struct hv_timer nop_deadline;       /* the ping's answer is due */
    struct hv_deferred done_defer;
    struct hv_deferred connect_defer;
    struct hv_deferred close_defer;

    enum san_state state;
    bool is_logged_in;                  /* the current ctx finished login */
    bool in_service;
    bool in_teardown;
    bool is_lost;                       /* current ctx failed; act after service */
    bool is_closing;
    bool is_verifying;
    bool is_nop_outstanding;
    bool has_been_online;
    char lost_why[256];
    uint32_t backoff_ms;
    unsigned reconnects;
    uint64_t next_seq;
    unsigned outstanding;

    struct cmdq inflight;
    struct cmdq pending;
    struct cmdq done_q;

    san_status_cb connect_cb;
    void *connect_arg;
    int connect_status;
    char connect_msg[512];

    struct san_expect expect[SAN_MAX_EXPECT];
    size_t expect_count;
    struct san_prkey prkeys[SAN_MAX_EXPECT];
    size_t prkey_count;

    /* task management in flight (san_cmd_abort, san_session_tmf) */
    struct san_tmf_op *tmf_ops;
    unsigned tmfs;

    /* post-reconnect verification: one command at a time */
    int verify_phase;
    size_t verify_index;
    uint64_t tur_luns[SAN_MAX_EXPECT];
    size_t tur_count;
    struct san_cmd verify_cmd;
    struct iovec verify_iov;
    uint8_t verify_buf[SAN_VERIFY_BUF] __attribute__((aligned(16)));
    uint8_t verify_param[24];
};

static void on_fd(void *arg, uint32_t events);
static void finish_close(void *arg);
static void complete_aborted(struct san_session *s, struct san_cmd *c);
static void tmf_connection_gone(struct san_session *s);
static void tmf_free_all(struct san_session *s);
static void handle_lost(struct san_session *s);
static void start_attempt(struct san_session *s);
static void verify_next(struct san_session *s);

const char *san_state_name(enum san_state state)
{
    switch (state) {
    case SAN_STATE_IDLE: return "idle";
    case SAN_STATE_CONNECTING: return "connecting";
    case SAN_STATE_ONLINE: return "online";
    case SAN_STATE_RECOVERING: return "recovering";
    case SAN_STATE_FAILFAST: return "failfast";
    case SAN_STATE_OFFLINE: return "offline";
    }
    return "?";
}

/* ----------------------------------------------------------------- queues */

static void q_push(struct cmdq *q, struct san_cmd *c)
{
    c->q_next = NULL;
    c->q_prev = q->tail;
    if (q->tail) {
        q->tail->q_next = c;
    } else {
        q->head = c;
    }
    q->tail = c;
    c->flags |= SAN_CMD_QUEUED;
}

/* Insert keeping the queue sorted by submission sequence. */
static void q_insert_ordered(struct cmdq *q, struct san_cmd *c)
{
    struct san_cmd *after = q->tail;
    while (after && after->seq > c->seq) {
        after = after->q_prev;
    }
    c->q_prev = after;
    c->q_next = after ? after->q_next : q->head;
    if (c->q_next) {
        c->q_next->q_prev = c;
    } else {
        q->tail = c;
    }
    if (after) {
        after->q_next = c;
    } else {
        q->head = c;
    }
    c->flags |= SAN_CMD_QUEUED;
}

static void q_remove(struct cmdq *q, struct san_cmd *c)
{
    if (c->q_prev) {
        c->q_prev->q_next = c->q_next;
    } else {
        q->head = c->q_next;
    }
    if (c->q_next) {
        c->q_next->q_prev = c->q_prev;
    } else {
        q->tail = c->q_prev;
    }
    c->q_next = c->q_prev = NULL;
    c->flags &= ~SAN_CMD_QUEUED;
}

static struct san_cmd *q_pop(struct cmdq *q)
{
    struct san_cmd *c = q->head;
    if (c) {
        q_remove(q, c);
    }
    return c;
}

/* ------------------------------------------------------------- completion */

static void complete(struct san_session *s, struct san_cmd *c)
{
    s->outstanding--;
    c->flags = 0;
    c->done(c);
}

static void fail_cmd_result(struct san_cmd *c, enum san_transport why)
{
    c->transport = why;
    c->status = SAN_STATUS_CHECK_CONDITION;
    c->residual = c->xfer_bytes;
    c->is_overflow = false;
    /* NOT READY: a guest fails the I/O instead of retrying it forever. A
     * session that is offline for good asks for manual intervention. */
    san_sense_build(c->sense, &c->sense_len, 0x2,
                    why == SAN_TRANSPORT_FAILED ? SAN_ASC_NOT_READY_CAUSE_NOT_REPORTABLE
                                                : SAN_ASC_NOT_READY_MANUAL_INTERVENTION);
}

/* A check of our own that dies with its connection: the next login starts
 * the checks over, nobody waits for this one. */
static void drop_verify(struct san_session *s, struct san_cmd *c)
{
    c->flags = 0;
    s->outstanding--;
}

static void flush_done(void *arg)
{
    struct san_session *s = arg;
    struct san_cmd *c;
    while ((c = q_pop(&s->done_q))) {
        complete(s, c);
    }
}

/* Complete on the next reactor turn (never inside submit). */
static void fail_later(struct san_session *s, struct san_cmd *c, enum san_transport why)
{
    fail_cmd_result(c, why);
    q_push(&s->done_q, c);
    hv_reactor_defer(s->r, &s->done_defer, flush_done, s);
}

static void fail_pending(struct san_session *s, enum san_transport why)
{
    struct san_cmd *c;
    while ((c = q_pop(&s->pending))) {
        fail_cmd_result(c, why);
        complete(s, c);
    }
}

static void set_state(struct san_session *s, enum san_state state, const char *why)
{
    if (s->state == state) {
        return;
    }
    s->state = state;
    if (state == SAN_STATE_OFFLINE) {
        hv_error("san: %s at %s (initiator %s): session offline: %s", s->target, s->portal,
                 s->initiator, why);
    } else {
        hv_info("san: %s at %s (initiator %s): %s: %s", s->target, s->portal, s->initiator,
                san_state_name(state), why);
    }
    if (s->opt.on_state) {
        s->opt.on_state(s, state, why, s->opt.cb_arg);
    }
}

/* ------------------------------------------------------- reactor plumbing */

static void update_events(struct san_session *s);

static void poll_again(void *arg)
{
    struct san_session *s = arg;
    if (s->ctx) {
        update_events(s);
    }
}

static void update_events(struct san_session *s)
{
    if (!s->ctx) {
        return;
    }
    int fd = iscsi_get_fd(s->ctx);
    if (fd != s->watch_fd && s->watch) {
        hv_reactor_del_fd(s->r, s->watch);
        s->watch = NULL;
    }
    if (fd < 0) {
        hv_timer_arm(s->r, &s->poll_timer, 100, poll_again, s);
        return;
    }
    uint32_t events = 0;
    int want = iscsi_which_events(s->ctx);
    if (want & POLLIN) {
        events |= EPOLLIN;
    }
    if (want & POLLOUT) {
        events |= EPOLLOUT;
    }
    if (!s->watch) {
        s->watch = hv_reactor_add_fd(s->r, fd, events, on_fd, s);
        if (!s->watch) {
            snprintf(s->lost_why, sizeof(s->lost_why), "cannot watch the socket: %s",
                     strerror(errno));
            s->is_lost = true;
            return;
        }
        s->watch_fd = fd;
        s->watch_events = events;
    } else if (events != s->watch_events) {
        hv_reactor_mod_fd(s->r, s->watch, events);
        s->watch_events = events;
    }
    if (want == 0) {
        /* libiscsi asks to be looked at again later (see iscsi.h) */
        hv_timer_arm(s->r, &s->poll_timer, 100, poll_again, s);
    }
}

static void mark_lost(struct san_session *s, const char *why)
{
    if (!s->is_lost) {
        s->is_lost = true;
        snprintf(s->lost_why, sizeof(s->lost_why), "%s", why);
    }
    if (!s->in_service) {
        handle_lost(s);
    }
}

static void on_fd(void *arg, uint32_t events)
{
    struct san_session *s = arg;
    int revents = 0;
    if (events & EPOLLIN) {
        revents |= POLLIN;
    }
    if (events & EPOLLOUT) {
        revents |= POLLOUT;
    }
    if (events & EPOLLERR) {
        revents |= POLLERR;
    }
    if (events & EPOLLHUP) {
        revents |= POLLHUP;
    }
    s->in_service = true;
    int rc = iscsi_service(s->ctx, revents);
    s->in_service = false;
    /* keep the first specific reason; a bare "connection lost" (commands
     * cancelled by libiscsi) gets the socket's story instead */
    if (rc < 0 && (!s->is_lost || strcmp(s->lost_why, "connection lost") == 0)) {
        s->is_lost = true;
        snprintf(s->lost_why, sizeof(s->lost_why), "connection lost: %s",
                 iscsi_get_error(s->ctx));
    } else if (s->is_lost && strcmp(s->lost_why, "connection lost") == 0) {
        snprintf(s->lost_why, sizeof(s->lost_why), "connection lost: %s",
                 (events & EPOLLHUP) ? "hang-up from the target"
                 : (events & EPOLLERR) ? "socket error" : "closed by the target");
    }
    if (s->is_lost) {
        handle_lost(s);
    } else {
        update_events(s);
    }
    if (s->is_closing) {
        /* san_session_close() was called from a completion: finish now */
        hv_reactor_defer(s->r, &s->close_defer, finish_close, s);
    }
}

/* ---------------------------------------------------------------- commands */

static void cmd_cb(struct iscsi_context *iscsi, int status, void *command_data, void *private);

static int start_cmd(struct san_session *s, struct san_cmd *c)
{
    struct scsi_task *t = (struct scsi_task *)c->task;
    memset(t, 0, sizeof(*t));
    memcpy(t->cdb, c->cdb, c->cdb_len);
    t->cdb_size = c->cdb_len;
    t->expxferlen = (int)c->xfer_bytes;
    switch (c->dir) {
    case SAN_XFER_NONE:
        t->xfer_dir = SCSI_XFER_NONE;
        break;
    case SAN_XFER_READ:
        t->xfer_dir = SCSI_XFER_READ;
        scsi_task_set_iov_in(t, (struct scsi_iovec *)c->iov, c->iovcnt);
        break;
    case SAN_XFER_WRITE:
        t->xfer_dir = SCSI_XFER_WRITE;
        scsi_task_set_iov_out(t, (struct scsi_iovec *)c->iov, c->iovcnt);
        break;
    }
    if (iscsi_scsi_command_async(s->ctx, (int)c->lun, t, cmd_cb, NULL, c) != 0) {
        return -EIO;
    }
    c->flags |= SAN_CMD_INFLIGHT;
    q_push(&s->inflight, c);
    return 0;
}

/* Send everything that waited, oldest first. */
static void replay_pending(struct san_session *s, bool is_replay)
{
    struct san_cmd *c;
    while (s->state == SAN_STATE_ONLINE && !s->is_lost && (c = q_pop(&s->pending))) {
        if (is_replay) {
            c->flags |= SAN_CMD_REPLAYED;
        }
        if (start_cmd(s, c) < 0) {
            q_insert_ordered(&s->pending, c);
            mark_lost(s, iscsi_get_error(s->ctx));
            return;
        }
    }
    update_events(s);
}

static void cmd_cb(struct iscsi_context *iscsi, int status, void *command_data, void *private)
{
    struct san_cmd *c = private;
    struct san_session *s = c->session;
    struct scsi_task *t = (struct scsi_task *)c->task;
    (void)command_data;

    if (!(c->flags & SAN_CMD_INFLIGHT)) {
        return;     /* already taken back (a second cancel of the same task) */
    }
    q_remove(&s->inflight, c);
    c->flags &= ~SAN_CMD_INFLIGHT;

    if (status != SCSI_STATUS_GOOD && status != SCSI_STATUS_CHECK_CONDITION &&
        status != SCSI_STATUS_RESERVATION_CONFLICT && (c->flags & SAN_CMD_ABORTING)) {
        /* Taken back after its TMF was answered, or with its connection:
         * either way the target no longer runs it, and the guest gave up on
         * it, so it is never replayed. */
        free(t->datain.data);
        t->datain.data = NULL;
        complete_aborted(s, c);
        return;
    }
    if (status != SCSI_STATUS_GOOD && status != SCSI_STATUS_CHECK_CONDITION &&
        status != SCSI_STATUS_RESERVATION_CONFLICT) {
        /* Cancelled by our own teardown, or an error libiscsi could not map
         * (it turns BUSY/TASK SET FULL into SCSI_STATUS_ERROR and drops the
         * connection too): either way the command was not answered and goes
         * back in line for the next connection. */
        free(t->datain.data);
        t->datain.data = NULL;
        if (c->flags & SAN_CMD_VERIFY) {
            drop_verify(s, c);   /* verification restarts after the next login */
        } else {
            q_insert_ordered(&s->pending, c);
        }
        if (!s->in_teardown) {
            /* libiscsi cancels what it holds before it reports the socket
             * error; on_fd replaces this with that error */
            mark_lost(s, status == SCSI_STATUS_CANCELLED ? "connection lost"
                                                        : iscsi_get_error(iscsi));
        }
        return;
    }

    c->transport = SAN_TRANSPORT_OK;
    c->status = (uint8_t)status;
    c->sense_len = 0;
    c->residual = 0;
    c->is_overflow = false;
    if (status == SCSI_STATUS_CHECK_CONDITION && t->datain.data && t->datain.size >= 2) {
        /* libiscsi keeps the raw sense segment: 2-byte length, then sense */
        uint32_t n = hv_be16(t->datain.data);
        n = HV_MIN(n, (uint32_t)t->datain.size - 2);
        n = HV_MIN(n, (uint32_t)SAN_SENSE_MAX);
        memcpy(c->sense, t->datain.data + 2, n);
        c->sense_len = n;
    }
    if (t->residual_status == SCSI_RESIDUAL_UNDERFLOW) {
        c->residual = (uint32_t)t->residual;
    } else if (t->residual_status == SCSI_RESIDUAL_OVERFLOW) {
        c->residual = (uint32_t)t->residual;
        c->is_overflow = true;
    }
    free(t->datain.data);
    t->datain.data = NULL;

    /* A UNIT ATTENTION on a command we replayed (or on our own check) was
     * raised by the reconnect itself (power on/reset after a target
     * restart, I_T nexus loss): retry it, and tell the owner. */
    if (status == SCSI_STATUS_CHECK_CONDITION &&
        (c->flags & (SAN_CMD_REPLAYED | SAN_CMD_VERIFY)) &&
        san_sense_key(c->sense, c->sense_len) == 0x6 && c->ua_retries < SAN_UA_RETRIES) {
        c->ua_retries++;
        if (s->opt.on_unit_attention) {
            s->opt.on_unit_attention(s, c->lun, c->sense, c->sense_len, s->opt.cb_arg);
        }
        if (start_cmd(s, c) < 0) {
            if (c->flags & SAN_CMD_VERIFY) {
                drop_verify(s, c);
            } else {
                q_insert_ordered(&s->pending, c);
            }
            mark_lost(s, iscsi_get_error(iscsi));
        }
        return;
    }
    complete(s, c);
}

void san_cmd_prepare(struct san_cmd *cmd, uint64_t lun, const uint8_t *cdb, uint8_t cdb_len,
                     enum san_xfer dir, struct iovec *iov, void *buf, uint32_t bytes)
{
    cmd->lun = lun;
    memcpy(cmd->cdb, cdb, cdb_len);
    cmd->cdb_len = cdb_len;
    cmd->dir = bytes ? dir : SAN_XFER_NONE;
    iov->iov_base = buf;
    iov->iov_len = bytes;
    cmd->iov = bytes ? iov : NULL;
    cmd->iovcnt = bytes ? 1 : 0;
    cmd->xfer_bytes = bytes;
}

int san_session_submit(struct san_session *s, struct san_cmd *c)
{
    if (c->cdb_len < 6 || c->cdb_len > SAN_CDB_MAX || !c->done) {
        return -EINVAL;
    }
    if (c->dir != SAN_XFER_NONE && hv_iov_length(c->iov, c->iovcnt) < c->xfer_bytes) {
        return -EINVAL;
    }
    if (c->dir == SAN_XFER_NONE && c->xfer_bytes) {
        return -EINVAL;
    }
    if (c->xfer_bytes > INT32_MAX || c->lun > INT32_MAX) {
        return -EINVAL;     /* libiscsi takes both as int */
    }
    c->flags &= SAN_CMD_VERIFY;
    c->session = s;
    c->seq = s->next_seq++;
    c->ua_retries = 0;
    c->transport = SAN_TRANSPORT_OK;
    c->status = 0;
    c->sense_len = 0;
    c->residual = 0;
    c->is_overflow = false;
    s->outstanding++;

    if (s->is_closing) {
        fail_later(s, c, SAN_TRANSPORT_CLOSED);
        return 0;
    }
    if (c->flags & SAN_CMD_VERIFY) {
        /* our own checks go straight to the new connection, ahead of the
         * commands that wait for them */
        if (s->ctx && s->is_logged_in && !s->is_lost && start_cmd(s, c) == 0) {
            if (!s->in_service) {
                update_events(s);
            }
            return 0;
        }
        c->flags = 0;
        s->outstanding--;
        if (s->ctx) {
            mark_lost(s, iscsi_get_error(s->ctx));
        }
        return -EIO;
    }
    switch (s->state) {
    case SAN_STATE_ONLINE:
        if (!s->is_lost && start_cmd(s, c) == 0) {
            if (!s->in_service) {
                update_events(s);
            }
            return 0;
        }
        q_insert_ordered(&s->pending, c);
        mark_lost(s, s->ctx ? iscsi_get_error(s->ctx) : "no connection");
        return 0;
    case SAN_STATE_RECOVERING:
    case SAN_STATE_IDLE:
    case SAN_STATE_CONNECTING:
        q_insert_ordered(&s->pending, c);
        return 0;
    case SAN_STATE_FAILFAST:
        fail_later(s, c, SAN_TRANSPORT_FAILED);
        return 0;
    case SAN_STATE_OFFLINE:
        fail_later(s, c, SAN_TRANSPORT_OFFLINE);
        return 0;
    }
    return -EINVAL;
}

/* ---------------------------------------------------------- connections */

static void teardown_ctx(struct san_session *s)
{
    hv_timer_cancel(s->r, &s->poll_timer);
    hv_timer_cancel(s->r, &s->login_timer);
    hv_timer_cancel(s->r, &s->nop_timer);
    hv_timer_cancel(s->r, &s->nop_deadline);
    s->is_nop_outstanding = false;
    if (s->watch) {
        hv_reactor_del_fd(s->r, s->watch);
        s->watch = NULL;
    }
    s->watch_fd = -1;
    s->watch_events = 0;
    if (s->ctx) {
        struct iscsi_context *ctx = s->ctx;
        s->in_teardown = true;
        /* callbacks put every command libiscsi still holds back in line */
        iscsi_scsi_cancel_all_tasks(ctx);
        iscsi_destroy_context(ctx);
        s->in_teardown = false;
        s->ctx = NULL;
    }
    /* anything that slipped through (no callback from libiscsi) */
    struct san_cmd *c;
    while ((c = q_pop(&s->inflight))) {
        c->flags &= ~SAN_CMD_INFLIGHT;
        if (c->flags & SAN_CMD_VERIFY) {
            drop_verify(s, c);
        } else if (c->flags & SAN_CMD_ABORTING) {
            complete_aborted(s, c);
        } else {
            q_insert_ordered(&s->pending, c);
        }
    }
    s->is_logged_in = false;
    s->is_verifying = false;
    tmf_connection_gone(s);
}

static void retry_fire(void *arg)
{
    struct san_session *s = arg;
    if (!s->ctx && s->state != SAN_STATE_OFFLINE && !s->is_closing) {
        start_attempt(s);
    }
}

static void schedule_retry(struct san_session *s)
{
    uint32_t delay = s->backoff_ms;
    s->backoff_ms = HV_MIN(s->backoff_ms * 2, s->opt.reconnect_max_ms);
    hv_timer_arm(s->r, &s->retry_timer, delay, retry_fire, s);
}

static void replacement_expired(void *arg)
{
    struct san_session *s = arg;
    if (s->state != SAN_STATE_RECOVERING) {
        return;
    }
    char why[160];
    snprintf(why, sizeof(why), "no session for %u ms (replacement timeout): failing %s",
             s->opt.replacement_timeout_ms,
             s->pending.head ? "queued commands" : "new commands");
    set_state(s, SAN_STATE_FAILFAST, why);
    fail_pending(s, SAN_TRANSPORT_FAILED);
}

static void connect_report(void *arg)
{
    struct san_session *s = arg;
    san_status_cb cb = s->connect_cb;
    s->connect_cb = NULL;
    if (cb) {
        cb(s->connect_arg, s->connect_status, s->connect_msg);
    }
}

static int errno_of_login_failure(const char *msg)
{
    /* libiscsi reports the login status only as text */
    if (strstr(msg, "Authentication") || strstr(msg, "Target not found") ||
        strstr(msg, "Authorization") || strstr(msg, "not allowed") ||
        strstr(msg, "Forbidden") || strstr(msg, "CHAP")) {
        return -EACCES;
    }
    if (strstr(msg, "refused")) {
        return -ECONNREFUSED;
    }
    if (strstr(msg, "timed out")) {
        return -ETIMEDOUT;
    }
    return -EIO;
}

/* The current connection (or attempt) is gone: decide what comes next. */
static void handle_lost(struct san_session *s)
{
    char why[300];
    snprintf(why, sizeof(why), "%s", s->lost_why);
    bool was_logged_in = s->is_logged_in;
    teardown_ctx(s);
    s->is_lost = false;

    if (s->is_closing) {
        return;
    }
    if (s->state == SAN_STATE_OFFLINE) {
        fail_pending(s, SAN_TRANSPORT_OFFLINE);
        return;
    }
    if (!s->has_been_online) {
        /* the first login failed: a refusal is an answer, not a reason to retry */
        s->state = SAN_STATE_IDLE;
        s->connect_status = errno_of_login_failure(why);
        snprintf(s->connect_msg, sizeof(s->connect_msg), "%s at %s: login as %s: %s",
                 s->target, s->portal, s->initiator, why);
        fail_pending(s, SAN_TRANSPORT_FAILED);
        hv_reactor_defer(s->r, &s->connect_defer, connect_report, s);
        return;
    }
    if (s->state == SAN_STATE_ONLINE) {
        set_state(s, SAN_STATE_RECOVERING, why);
        s->backoff_ms = s->opt.reconnect_min_ms;
        hv_timer_arm(s->r, &s->replacement_timer, s->opt.replacement_timeout_ms,
                     replacement_expired, s);
    } else {
        hv_debug("san: %s: reconnect attempt failed%s: %s", s->target,
                 was_logged_in ? " after login" : "", why);
    }
    schedule_retry(s);
}

static void go_offline(struct san_session *s, const char *why)
{
    hv_timer_cancel(s->r, &s->replacement_timer);
    hv_timer_cancel(s->r, &s->retry_timer);
    set_state(s, SAN_STATE_OFFLINE, why);
    if (!s->has_been_online && s->connect_cb) {
        s->connect_status = -ESTALE;
        snprintf(s->connect_msg, sizeof(s->connect_msg), "%s at %s: %s", s->target, s->portal,
                 why);
        hv_reactor_defer(s->r, &s->connect_defer, connect_report, s);
    }
    if (s->in_service) {
        /* the context goes after iscsi_service() returns */
        s->is_lost = true;
        snprintf(s->lost_why, sizeof(s->lost_why), "%s", why);
    } else {
        teardown_ctx(s);
    }
    fail_pending(s, SAN_TRANSPORT_OFFLINE);
}

/*
 * A target that hangs with its TCP connection up (process stopped, stuck
 * storage under it) answers nothing and TCP keeps acknowledging: without a
 * ping, commands would wait forever. As open-iscsi's noop_out_interval and
 * noop_out_timeout: a NOP-Out every interval, and no NOP-In within the
 * timeout counts as a lost connection (then the usual recovery applies).
 */
static void nop_expired(void *arg)
{
    struct san_session *s = arg;
    char why[96];
    snprintf(why, sizeof(why), "the target did not answer a NOP-Out within %u ms",
             s->opt.nop_timeout_ms);
    mark_lost(s, why);
}

static void nop_cb(struct iscsi_context *iscsi, int status, void *command_data, void *private)
{
    struct san_session *s = private;
    (void)command_data;
    if (s->in_teardown || iscsi != s->ctx || status != SCSI_STATUS_GOOD) {
        return;     /* a failed ping is noticed through the connection itself */
    }
    s->is_nop_outstanding = false;
    hv_timer_cancel(s->r, &s->nop_deadline);
}

static void nop_fire(void *arg)
{
    struct san_session *s = arg;
    if (s->state != SAN_STATE_ONLINE || !s->ctx || s->is_lost) {
        return;
    }
    if (!s->is_nop_outstanding) {
        if (iscsi_nop_out_async(s->ctx, nop_cb, NULL, 0, s) != 0) {
            mark_lost(s, iscsi_get_error(s->ctx));
            return;
        }
        s->is_nop_outstanding = true;
        hv_timer_arm(s->r, &s->nop_deadline, s->opt.nop_timeout_ms, nop_expired, s);
        update_events(s);
    }
    hv_timer_arm(s->r, &s->nop_timer, s->opt.nop_interval_ms, nop_fire, s);
}

static void become_online(struct san_session *s)
{
    bool is_reconnect = s->has_been_online;
    hv_timer_cancel(s->r, &s->replacement_timer);
    hv_timer_cancel(s->r, &s->retry_timer);
    hv_timer_cancel(s->r, &s->login_timer);
    s->backoff_ms = s->opt.reconnect_min_ms;
    s->is_verifying = false;
    if (s->opt.nop_interval_ms != UINT32_MAX) {
        hv_timer_arm(s->r, &s->nop_timer, s->opt.nop_interval_ms, nop_fire, s);
    }
    if (is_reconnect) {
        s->reconnects++;
        char why[96];
        snprintf(why, sizeof(why), "reconnected (ISID unchanged), %s",
                 s->pending.head ? "replaying queued commands in order" : "nothing queued");
        set_state(s, SAN_STATE_ONLINE, why);
    } else {
        s->has_been_online = true;
        set_state(s, SAN_STATE_ONLINE, "logged in");
        s->connect_status = 0;
        snprintf(s->connect_msg, sizeof(s->connect_msg), "logged in");
        hv_reactor_defer(s->r, &s->connect_defer, connect_report, s);
    }
    replay_pending(s, is_reconnect);
}

/* ------------------------------------------------ checks at every login */

/*
 * One command at a time, before anything queued is sent:
 *   EXPECT    INQUIRY VPD 0x83 of each expected LUN, compared with the record;
 *   PR_READ   READ KEYS for each key we registered through this session, and
 *   PR_REG    if it is still there, REGISTER AND IGNORE EXISTING KEY with it;
 *   TUR       TEST UNIT READY to each LUN that has commands waiting, so the
 *             UNIT ATTENTIONs the reconnect raised (power on, nexus loss) are
 *             met here, not by a replayed command that would then have to be
 *             sent again behind the ones queued after it: replayed commands
 *             keep their order. The UAs are handed to on_unit_attention.
 * Then ONLINE, and the queue goes out oldest first.
 */
enum verify_phase { VERIFY_EXPECT, VERIFY_PR_READ, VERIFY_PR_REG, VERIFY_TUR, VERIFY_DONE };

static void verify_advance(struct san_session *s)
{
    s->verify_index++;
    for (;;) {
        size_t n = s->verify_phase == VERIFY_EXPECT ? s->expect_count
                 : s->verify_phase == VERIFY_TUR ? s->tur_count
                 : s->verify_phase == VERIFY_DONE ? SIZE_MAX
                 : s->prkey_count;
        if (s->verify_index < n) {
            return;
        }
        s->verify_index = 0;
        switch (s->verify_phase) {
        case VERIFY_EXPECT:
            s->verify_phase = VERIFY_PR_READ;
            break;
        case VERIFY_PR_READ:
        case VERIFY_PR_REG:
            s->verify_phase = VERIFY_TUR;
            break;
        default:
            s->verify_phase = VERIFY_DONE;
            return;
        }
    }
}

static void verify_done(struct san_cmd *c)
{
    struct san_session *s = c->cb_arg;
    char desc[128];
    char why[400];

    if (!s->is_verifying || c->transport != SAN_TRANSPORT_OK) {
        return;     /* connection went away again: the next login starts over */
    }
    uint32_t got = c->xfer_bytes - (c->is_overflow ? 0 : c->residual);
    switch (s->verify_phase) {
    case VERIFY_EXPECT: {
        const struct san_expect *e = &s->expect[s->verify_index];
        char found[SAN_DESIGNATOR_MAX] = "";
        if (c->status != SAN_STATUS_GOOD) {
            snprintf(why, sizeof(why), "LUN %" PRIu64 " no longer answers INQUIRY VPD 0x83 "
                     "(%s): expected %s", e->lun, san_cmd_describe(c, desc, sizeof(desc)),
                     e->designator);
            go_offline(s, why);
            return;
        }
        if (san_vpd83_designator(s->verify_buf, got, found) < 0 ||
            strcmp(found, e->designator) != 0) {
            snprintf(why, sizeof(why), "LUN %" PRIu64 " is now %s, expected %s: a different "
                     "LUN at the same address is refused", e->lun,
                     found[0] ? found : "(no designator)", e->designator);
            go_offline(s, why);
            return;
        }
        verify_advance(s);
        break;
    }
    case VERIFY_PR_READ: {
        const struct san_prkey *pk = &s->prkeys[s->verify_index];
        struct san_pr_status pr;
        bool is_present = false;
        memset(&pr, 0, sizeof(pr));
        if (c->status == SAN_STATUS_GOOD && san_parse_pr_keys(s->verify_buf, got, &pr) == 0) {
            for (size_t i = 0; i < pr.key_count; i++) {
                is_present |= pr.keys[i] == pk->key;
            }
        }
        if (is_present) {
            s->verify_phase = VERIFY_PR_REG;    /* same index */
        } else {
            hv_warn("san: %s LUN %" PRIu64 ": our key 0x%" PRIx64 " is no longer registered "
                    "(preempted?): not registering again", s->target, pk->lun, pk->key);
            verify_advance(s);
        }
        break;
    }
    case VERIFY_PR_REG: {
        const struct san_prkey *pk = &s->prkeys[s->verify_index];
        if (c->status != SAN_STATUS_GOOD) {
            hv_warn("san: %s LUN %" PRIu64 ": registering key 0x%" PRIx64 " again after the "
                    "reconnect: %s", s->target, pk->lun, pk->key,
                    san_cmd_describe(c, desc, sizeof(desc)));
        }
        s->verify_phase = VERIFY_PR_READ;
        verify_advance(s);
        break;
    }
    case VERIFY_TUR:
        /* NOT READY and the like are the replayed commands' business */
        verify_advance(s);
        break;
    case VERIFY_DONE:
        break;
    }
    verify_next(s);
}

static void verify_next(struct san_session *s)
{
    struct san_cmd *c = &s->verify_cmd;
    uint8_t cdb[16];
    size_t i = s->verify_index;

    if (s->verify_phase == VERIFY_DONE) {
        become_online(s);
        return;
    }
    memset(c, 0, sizeof(*c));
    c->flags = SAN_CMD_VERIFY;
    c->done = verify_done;
    c->cb_arg = s;
    switch (s->verify_phase) {
    case VERIFY_EXPECT:
        san_cdb_inquiry(cdb, true, 0x83, SAN_VERIFY_BUF);
        san_cmd_prepare(c, s->expect[i].lun, cdb, 6, SAN_XFER_READ, &s->verify_iov,
                        s->verify_buf, SAN_VERIFY_BUF);
        break;
    case VERIFY_PR_READ:
        san_pr_in_build(cdb, 0, SAN_VERIFY_BUF);
        san_cmd_prepare(c, s->prkeys[i].lun, cdb, 10, SAN_XFER_READ, &s->verify_iov,
                        s->verify_buf, SAN_VERIFY_BUF);
        break;
    case VERIFY_PR_REG:
        san_pr_out_build(cdb, s->verify_param, SAN_PR_REGISTER_AND_IGNORE, 0, 0,
                         s->prkeys[i].key);
        san_cmd_prepare(c, s->prkeys[i].lun, cdb, 10, SAN_XFER_WRITE, &s->verify_iov,
                        s->verify_param, 24);
        break;
    default:
        memset(cdb, 0, 6);  /* TEST UNIT READY */
        san_cmd_prepare(c, s->tur_luns[i], cdb, 6, SAN_XFER_NONE, &s->verify_iov, NULL, 0);
        break;
    }
    san_session_submit(s, c);
}

static void verify_start(struct san_session *s)
{
    s->is_verifying = true;
    s->tur_count = 0;
    for (struct san_cmd *c = s->pending.head; c && s->tur_count < SAN_MAX_EXPECT;
         c = c->q_next) {
        bool is_known = false;
        for (size_t i = 0; i < s->tur_count; i++) {
            is_known |= s->tur_luns[i] == c->lun;
        }
        if (!is_known) {
            s->tur_luns[s->tur_count++] = c->lun;
        }
    }
    s->verify_phase = VERIFY_EXPECT;
    s->verify_index = (size_t)-1;
    verify_advance(s);
    verify_next(s);
}

/* ------------------------------------------------------ connect / login */

static void login_cb(struct iscsi_context *iscsi, int status, void *command_data, void *private)
{
    struct san_session *s = private;
    (void)command_data;
    if (s->in_teardown || iscsi != s->ctx) {
        return;
    }
    if (status != SCSI_STATUS_GOOD) {
        mark_lost(s, iscsi_get_error(iscsi));
        return;
    }
    /* the login timer keeps running through the checks: a target that hangs
     * now is a failed attempt like any other */
    s->is_logged_in = true;
    verify_start(s);
}

static void connect_cb(struct iscsi_context *iscsi, int status, void *command_data, void *private)
{
    struct san_session *s = private;
    (void)command_data;
    if (s->in_teardown || iscsi != s->ctx || s->is_logged_in) {
        return;     /* the second call libiscsi makes when the socket closes */
    }
    if (status != SCSI_STATUS_GOOD) {
        mark_lost(s, iscsi_get_error(iscsi));
        return;
    }
    if (iscsi_login_async(iscsi, login_cb, s) != 0) {
        mark_lost(s, iscsi_get_error(iscsi));
    }
}

static void login_timeout(void *arg)
{
    struct san_session *s = arg;
    char why[96];
    snprintf(why, sizeof(why), "connect, login and checks took over %u ms",
             s->opt.login_timeout_ms);
    mark_lost(s, why);
}

static int configure_ctx(struct san_session *s, struct iscsi_context *ctx)
{
    enum iscsi_header_digest hd = ISCSI_HEADER_DIGEST_NONE;
    if (s->opt.header_digest == SAN_DIGEST_PREFER_CRC32C) {
        hd = ISCSI_HEADER_DIGEST_CRC32C_NONE;
    } else if (s->opt.header_digest == SAN_DIGEST_REQUIRE_CRC32C) {
        hd = ISCSI_HEADER_DIGEST_CRC32C;
    }
    if (iscsi_set_targetname(ctx, s->target) ||
        iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL) ||
        iscsi_set_header_digest(ctx, hd) ||
        iscsi_set_isid_random(ctx, (uint32_t)(s->isid[1] << 16 | s->isid[2] << 8 | s->isid[3]),
                              (uint32_t)(s->isid[4] << 8 | s->isid[5]))) {
        return -1;
    }
    if (s->chap_user[0] && iscsi_set_initiator_username_pwd(ctx, s->chap_user, s->chap_secret)) {
        return -1;
    }
    if (s->tchap_user[0] && iscsi_set_target_username_pwd(ctx, s->tchap_user, s->tchap_secret)) {
        return -1;
    }
    iscsi_set_noautoreconnect(ctx, 1);
    /* PDUs from a small free list instead of malloc per command */
    iscsi_set_cache_allocations(ctx, 1);
    /* a target that vanishes without a FIN/RST is noticed by TCP itself */
    iscsi_set_tcp_keepidle(ctx, 5);
    iscsi_set_tcp_keepintvl(ctx, 2);
    iscsi_set_tcp_keepcnt(ctx, 3);
    iscsi_set_tcp_user_timeout(ctx, 15000);
    return 0;
}

static void start_attempt(struct san_session *s)
{
    struct iscsi_context *ctx = iscsi_create_context(s->initiator);
    if (!ctx) {
        s->is_lost = true;
        snprintf(s->lost_why, sizeof(s->lost_why), "cannot create an iSCSI context");
        handle_lost(s);
        return;
    }
    s->ctx = ctx;
    s->is_logged_in = false;
    s->is_lost = false;
    if (configure_ctx(s, ctx) < 0 || iscsi_connect_async(ctx, s->portal, connect_cb, s) != 0) {
        s->is_lost = true;
        snprintf(s->lost_why, sizeof(s->lost_why), "connect: %s", iscsi_get_error(ctx));
        handle_lost(s);
        return;
    }
    hv_timer_arm(s->r, &s->login_timer, s->opt.login_timeout_ms, login_timeout, s);
    update_events(s);
    if (s->is_lost) {
        handle_lost(s);
    }
}

/* ------------------------------------------------------------- public */

static int copy_str(char *dst, size_t cap, const char *src, const char *what,
                    struct hv_err *err)
{
    if (!src) {
        dst[0] = '\0';
        return 0;
    }
    if (strlen(src) >= cap) {
        return hv_err_set(err, -EINVAL, "san: %s is too long (%zu bytes, at most %zu)", what,
                          strlen(src), cap - 1);
    }
    memcpy(dst, src, strlen(src) + 1);
    return 0;
}

int san_session_create(struct hv_reactor *r, const struct san_session_options *opt,
                       struct san_session **out, struct hv_err *err)
{
    int ret;
    if (!opt->portal || !opt->target || !opt->initiator || !opt->portal[0] ||
        !opt->target[0] || !opt->initiator[0]) {
        return hv_err_set(err, -EINVAL, "san: a session needs a portal, a target name and an "
                          "initiator name");
    }
    if ((opt->chap.user && !opt->chap.secret) ||
        (opt->chap.target_user && (!opt->chap.target_secret || !opt->chap.user))) {
        return hv_err_set(err, -EINVAL, "san: %s: CHAP needs a user and a secret (and mutual "
                          "CHAP needs one-way CHAP too)", opt->target);
    }
    struct san_session *s = calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    if ((ret = copy_str(s->portal, sizeof(s->portal), opt->portal, "portal", err)) < 0 ||
        (ret = copy_str(s->target, sizeof(s->target), opt->target, "target name", err)) < 0 ||
        (ret = copy_str(s->initiator, sizeof(s->initiator), opt->initiator, "initiator name",
                        err)) < 0 ||
        (ret = copy_str(s->chap_user, sizeof(s->chap_user), opt->chap.user, "CHAP user",
                        err)) < 0 ||
        (ret = copy_str(s->chap_secret, sizeof(s->chap_secret), opt->chap.secret,
                        "CHAP secret", err)) < 0 ||
        (ret = copy_str(s->tchap_user, sizeof(s->tchap_user), opt->chap.target_user,
                        "target CHAP user", err)) < 0 ||
        (ret = copy_str(s->tchap_secret, sizeof(s->tchap_secret), opt->chap.target_secret,
                        "target CHAP secret", err)) < 0) {
        free(s);
        return ret;
    }
    s->r = r;
    s->opt = *opt;
    s->opt.portal = s->portal;
    s->opt.target = s->target;
    s->opt.initiator = s->initiator;
    s->opt.chap.user = s->chap_user[0] ? s->chap_user : NULL;
    s->opt.chap.secret = s->chap_secret;
    s->opt.chap.target_user = s->tchap_user[0] ? s->tchap_user : NULL;
    s->opt.chap.target_secret = s->tchap_secret;
    if (!s->opt.replacement_timeout_ms) {
        s->opt.replacement_timeout_ms = 30000;
    }
    if (!s->opt.reconnect_min_ms) {
        s->opt.reconnect_min_ms = 200;
    }
    if (!s->opt.reconnect_max_ms) {
        s->opt.reconnect_max_ms = 5000;
    }
    s->opt.reconnect_max_ms = HV_MAX(s->opt.reconnect_max_ms, s->opt.reconnect_min_ms);
    if (!s->opt.login_timeout_ms) {
        s->opt.login_timeout_ms = 15000;
    }
    if (!s->opt.nop_interval_ms) {
        s->opt.nop_interval_ms = 5000;
    }
    if (!s->opt.nop_timeout_ms) {
        s->opt.nop_timeout_ms = 5000;
    }
    uint32_t rnd = opt->isid_random & 0xffffff;
    uint16_t qual = opt->isid_qualifier;
    if (rnd == 0) {
        uint8_t b[3] = {0, 0, 0};
        hv_random_bytes(b, sizeof(b));
        rnd = (uint32_t)(b[0] << 16 | b[1] << 8 | b[2]);
        rnd = rnd ? rnd : 1;
    }
    /* RFC 7143 10.12.5: T = 10b (random), A = 0, B/C = random, D = qualifier */
    s->isid[0] = 0x80;
    s->isid[1] = (uint8_t)(rnd >> 16);
    s->isid[2] = (uint8_t)(rnd >> 8);
    s->isid[3] = (uint8_t)rnd;
    s->isid[4] = (uint8_t)(qual >> 8);
    s->isid[5] = (uint8_t)qual;
    s->watch_fd = -1;
    s->state = SAN_STATE_IDLE;
    *out = s;
    return 0;
}

int san_session_connect(struct san_session *s, san_status_cb done, void *arg)
{
    if (s->state != SAN_STATE_IDLE || s->ctx || s->is_closing) {
        return -EALREADY;
    }
    s->connect_cb = done;
    s->connect_arg = arg;
    s->state = SAN_STATE_CONNECTING;
    start_attempt(s);
    return 0;
}

/* Release everything; commands still queued fail with CLOSED. Runs again on
 * the next turn while a deferred call of ours is still queued. */
static void finish_close(void *arg)
{
    struct san_session *s = arg;
    tmf_free_all(s);
    hv_timer_cancel(s->r, &s->retry_timer);
    hv_timer_cancel(s->r, &s->replacement_timer);
    teardown_ctx(s);
    fail_pending(s, SAN_TRANSPORT_CLOSED);
    struct san_cmd *c;
    while ((c = q_pop(&s->done_q))) {
        complete(s, c);
    }
    if (s->connect_cb && !s->connect_defer.is_queued) {
        s->connect_status = -ESHUTDOWN;
        snprintf(s->connect_msg, sizeof(s->connect_msg), "%s: session closed", s->target);
        connect_report(s);
    }
    if (s->done_defer.is_queued || s->connect_defer.is_queued) {
        hv_reactor_defer(s->r, &s->close_defer, finish_close, s);
        return;
    }
    free(s);
}

void san_session_close(struct san_session *s)
{
    if (!s || s->is_closing) {
        return;
    }
    s->is_closing = true;
    if (s->in_service) {
        return;     /* on_fd finishes it after iscsi_service() returns */
    }
    finish_close(s);
}

enum san_state san_session_state(const struct san_session *s) { return s->state; }
const char *san_session_target(const struct san_session *s) { return s->target; }
const char *san_session_initiator(const struct san_session *s) { return s->initiator; }
const char *san_session_portal(const struct san_session *s) { return s->portal; }
unsigned san_session_reconnects(const struct san_session *s) { return s->reconnects; }
unsigned san_session_outstanding(const struct san_session *s) { return s->outstanding; }
struct hv_reactor *san_session_reactor(const struct san_session *s) { return s->r; }

void san_session_isid(const struct san_session *s, uint8_t isid[6])
{
    memcpy(isid, s->isid, 6);
}

void san_session_isid_text(const struct san_session *s, char out[16])
{
    snprintf(out, 16, "0x%02x%02x%02x%02x%02x%02x", s->isid[0], s->isid[1], s->isid[2],
             s->isid[3], s->isid[4], s->isid[5]);
}

int san_session_expect_lun(struct san_session *s, uint64_t lun, const char *designator)
{
    if (!designator || !designator[0] || strlen(designator) >= SAN_DESIGNATOR_MAX) {
        return -EINVAL;
    }
    size_t i;
    for (i = 0; i < s->expect_count; i++) {
        if (s->expect[i].lun == lun) {
            break;
        }
    }
    if (i == s->expect_count) {
        if (s->expect_count == SAN_MAX_EXPECT) {
            return -ENOSPC;
        }
        s->expect_count++;
    }
    s->expect[i].lun = lun;
    snprintf(s->expect[i].designator, sizeof(s->expect[i].designator), "%s", designator);
    return 0;
}

void san_session_note_pr_key(struct san_session *s, uint64_t lun, uint64_t key)
{
    for (size_t i = 0; i < s->prkey_count; i++) {
        if (s->prkeys[i].lun == lun) {
            s->prkeys[i].key = key;
            return;
        }
    }
    if (s->prkey_count < SAN_MAX_EXPECT) {
        s->prkeys[s->prkey_count].lun = lun;
        s->prkeys[s->prkey_count].key = key;
        s->prkey_count++;
    }
}

void san_session_forget_pr_key(struct san_session *s, uint64_t lun)
{
    for (size_t i = 0; i < s->prkey_count; i++) {
        if (s->prkeys[i].lun == lun) {
            s->prkeys[i] = s->prkeys[--s->prkey_count];
            return;
        }
    }
}

int san_session_drop_connection(struct san_session *s)
{
    if (!s->ctx || s->watch_fd < 0) {
        return -ENOTCONN;
    }
    /* The peer sees a reset connection, we see a read error: the same path
     * as a network failure. */
    if (shutdown(s->watch_fd, SHUT_RDWR) < 0) {
        return -errno;
    }
    return 0;
}

void san_session_reconnect_now(struct san_session *s)
{
    if (s->ctx || s->state == SAN_STATE_OFFLINE || s->state == SAN_STATE_IDLE ||
        s->is_closing) {
        return;
    }
    s->backoff_ms = s->opt.reconnect_min_ms;
    hv_timer_arm(s->r, &s->retry_timer, 0, retry_fire, s);
}

/* -------------------------------------------------------- task management */

/*
 * One TMF on its way to the target. libiscsi gives no callback for a TMF
 * whose context is destroyed, so the session keeps them in a list and
 * finishes them itself when the connection goes. The answer is acted on
 * from a timer, outside iscsi_service(): cancelling the aborted tasks in
 * libiscsi from inside its own PDU processing would change the lists it is
 * walking.
 */
struct san_tmf_op {
    struct san_session *s;
    enum iscsi_task_mgmt_funcs fn;
    uint64_t lun;
    struct san_cmd *cmd;                /* ABORT TASK: the one command */
    san_status_cb done;
    void *arg;
    bool is_answered;
    bool is_lost;                       /* the connection went first */
    uint32_t response;
    struct hv_timer timer;
    struct san_tmf_op *next;
};

static void complete_aborted(struct san_session *s, struct san_cmd *c)
{
    c->transport = SAN_TRANSPORT_ABORTED;
    c->status = SAN_STATUS_TASK_ABORTED;
    c->sense_len = 0;
    c->residual = c->xfer_bytes;
    c->is_overflow = false;
    complete(s, c);
}

static const char *tmf_name(enum iscsi_task_mgmt_funcs fn)
{
    switch (fn) {
    case ISCSI_TM_ABORT_TASK: return "ABORT TASK";
    case ISCSI_TM_ABORT_TASK_SET: return "ABORT TASK SET";
    case ISCSI_TM_LUN_RESET: return "LOGICAL UNIT RESET";
    default: return "task management";
    }
}

static bool is_op_target(const struct san_tmf_op *op, const struct san_cmd *c)
{
    return op->fn == ISCSI_TM_ABORT_TASK ? c == op->cmd : c->lun == op->lun;
}

static void tmf_unlink(struct san_session *s, struct san_tmf_op *op)
{
    for (struct san_tmf_op **pp = &s->tmf_ops; *pp; pp = &(*pp)->next)
        if (*pp == op) {
            *pp = op->next;
            return;
        }
}

static void tmf_finish(void *arg)
{
    struct san_tmf_op *op = arg;
    struct san_session *s = op->s;
    char msg[200];
    int status = 0;

    tmf_unlink(s, op);
    if (op->is_lost) {
        snprintf(msg, sizeof(msg), "%s LUN %" PRIu64 ": connection lost before the answer; "
                 "the tasks ended with the session", tmf_name(op->fn), op->lun);
    } else if (op->response == ISCSI_TMR_FUNC_COMPLETE ||
               op->response == ISCSI_TMR_TASK_DOES_NOT_EXIST) {
        snprintf(msg, sizeof(msg), "%s LUN %" PRIu64 ": %s", tmf_name(op->fn), op->lun,
                 op->response == ISCSI_TMR_FUNC_COMPLETE ? "function complete"
                                                         : "task does not exist");
    } else {
        status = -EIO;
        snprintf(msg, sizeof(msg), "%s LUN %" PRIu64 ": the target answered %u%s",
                 tmf_name(op->fn), op->lun, op->response,
                 op->response == ISCSI_TMR_TMF_NOT_SUPPORTED ? " (not supported)"
                 : op->response == ISCSI_TMR_FUNC_REJECTED ? " (rejected)" : "");
    }
    /* The target no longer runs what it aborted, and will not answer it:
     * take those commands back from libiscsi (their callback completes them
     * as aborted). After a refusal they run on: drop the mark. */
    struct san_cmd *c = s->inflight.head;
    while (c) {
        struct san_cmd *next = c->q_next;
        if ((c->flags & SAN_CMD_ABORTING) && is_op_target(op, c)) {
            bool is_other_op = false;
            for (struct san_tmf_op *o = s->tmf_ops; o; o = o->next)
                is_other_op |= is_op_target(o, c);
            if (status < 0) {
                if (!is_other_op)
                    c->flags &= ~SAN_CMD_ABORTING;
            } else if (s->ctx && !op->is_lost) {
                iscsi_scsi_cancel_task(s->ctx, (struct scsi_task *)c->task);
            }
        }
        c = next;
    }
    if (status < 0)
        hv_warn("san: %s: %s", s->target, msg);
    else
        hv_debug("san: %s: %s", s->target, msg);
    op->done(op->arg, status, msg);
    free(op);
    if (s->ctx && !s->in_service)
        update_events(s);
}

static void tmf_cb(struct iscsi_context *iscsi, int status, void *command_data, void *private)
{
    struct san_tmf_op *op = private;
    (void)iscsi;
    if (op->is_answered || op->is_lost)
        return;
    op->is_answered = true;
    op->response = status == SCSI_STATUS_GOOD && command_data ? *(uint32_t *)command_data
                                                              : ISCSI_TMR_FUNC_REJECTED;
    hv_timer_arm(op->s->r, &op->timer, 0, tmf_finish, op);
}

static void tmf_connection_gone(struct san_session *s)
{
    for (struct san_tmf_op *op = s->tmf_ops; op; op = op->next) {
        if (op->is_answered)
            continue;
        op->is_lost = true;
        op->is_answered = true;
        hv_timer_arm(s->r, &op->timer, 0, tmf_finish, op);
    }
}

static void tmf_free_all(struct san_session *s)
{
    while (s->tmf_ops) {
        struct san_tmf_op *op = s->tmf_ops;
        s->tmf_ops = op->next;
        hv_timer_cancel(s->r, &op->timer);
        free(op);
    }
}

/* Queue the TMF, or — no connection to send it on — let the teardown of
 * that connection (or the one already done) finish it. */
static int tmf_send(struct san_session *s, struct san_tmf_op *op, uint32_t ritt,
                    uint32_t rcmdsn)
{
    op->next = s->tmf_ops;
    s->tmf_ops = op;
    if (s->ctx && s->is_logged_in && !s->is_lost &&
        iscsi_task_mgmt_async(s->ctx, (int)op->lun, op->fn, ritt, rcmdsn, tmf_cb, op) == 0) {
        s->tmfs++;
        if (!s->in_service)
            update_events(s);
        return 0;
    }
    if (s->ctx && s->is_logged_in && !s->is_lost)
        mark_lost(s, iscsi_get_error(s->ctx));
    if (!s->ctx) {
        op->is_lost = true;
        op->is_answered = true;
        hv_timer_arm(s->r, &op->timer, 0, tmf_finish, op);
    }
    return 0;
}

/* A command still waiting to be sent is simply taken out of line. */
static bool abort_pending(struct san_session *s, struct san_cmd *c)
{
    for (struct san_cmd *p = s->pending.head; p; p = p->q_next)
        if (p == c) {
            q_remove(&s->pending, c);
            c->transport = SAN_TRANSPORT_ABORTED;
            c->status = SAN_STATUS_TASK_ABORTED;
            c->sense_len = 0;
            c->residual = c->xfer_bytes;
            c->is_overflow = false;
            q_push(&s->done_q, c);
            hv_reactor_defer(s->r, &s->done_defer, flush_done, s);
            return true;
        }
    return false;
}

static struct san_tmf_op *tmf_op_new(struct san_session *s, enum iscsi_task_mgmt_funcs fn,
                                     uint64_t lun, san_status_cb done, void *arg)
{
    struct san_tmf_op *op = calloc(1, sizeof(*op));
    if (!op)
        return NULL;
    op->s = s;
    op->fn = fn;
    op->lun = lun;
    op->done = done;
    op->arg = arg;
    return op;
}

int san_cmd_abort(struct san_session *s, struct san_cmd *c, san_status_cb done, void *arg)
{
    struct san_tmf_op *op;

    if (s->is_closing || c->session != s)
        return -ENOENT;
    if (!(c->flags & SAN_CMD_INFLIGHT)) {
        if (!(c->flags & SAN_CMD_QUEUED) || !abort_pending(s, c))
            return -ENOENT;
        /* nothing to ask the target: answer on the next turn */
        op = tmf_op_new(s, ISCSI_TM_ABORT_TASK, c->lun, done, arg);
        if (!op)
            return -ENOMEM;
        op->is_answered = true;
        op->response = ISCSI_TMR_FUNC_COMPLETE;
        op->next = s->tmf_ops;
        s->tmf_ops = op;
        hv_timer_arm(s->r, &op->timer, 0, tmf_finish, op);
        return 0;
    }
    op = tmf_op_new(s, ISCSI_TM_ABORT_TASK, c->lun, done, arg);
    if (!op)
        return -ENOMEM;
    op->cmd = c;
    c->flags |= SAN_CMD_ABORTING;
    struct scsi_task *t = (struct scsi_task *)c->task;
    return tmf_send(s, op, t->itt, t->cmdsn);
}

int san_session_tmf(struct san_session *s, uint64_t lun, enum san_tmf fn, san_status_cb done,
                    void *arg)
{
    struct san_tmf_op *op;
    struct san_cmd *c;

    if (s->is_closing)
        return -ESHUTDOWN;
    if (fn != SAN_TMF_ABORT_TASK_SET && fn != SAN_TMF_LUN_RESET)
        return -EINVAL;
    op = tmf_op_new(s, fn == SAN_TMF_LUN_RESET ? ISCSI_TM_LUN_RESET : ISCSI_TM_ABORT_TASK_SET,
                    lun, done, arg);
    if (!op)
        return -ENOMEM;
    c = s->pending.head;
    while (c) {
        struct san_cmd *next = c->q_next;
        if (c->lun == lun && !(c->flags & SAN_CMD_VERIFY))
            abort_pending(s, c);
        c = next;
    }
    for (c = s->inflight.head; c; c = c->q_next)
        if (c->lun == lun && !(c->flags & SAN_CMD_VERIFY))
            c->flags |= SAN_CMD_ABORTING;
    return tmf_send(s, op, 0xffffffff, 0);
}

unsigned san_session_tmfs(const struct san_session *s) { return s->tmfs; }

void san_session_report_ua(struct san_session *s, const struct san_cmd *c)
{
    if (s->opt.on_unit_attention)
        s->opt.on_unit_attention(s, c->lun, c->sense, c->sense_len, s->opt.cb_arg);
}
