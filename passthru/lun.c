/*
 * The live pass-through LUN: a san_session logged in with the VM's name, the
 * designator pinned, the host's reservation taken before the guest's first
 * command, and the guest's CDBs forwarded with their answers unchanged.
 *
 * The reservation is (re)established after every login, not only the first:
 * a target that restarts (tgt keeps PR state in memory) comes back with no
 * registration at all, and san/ re-registers only keys still present. If
 * another host holds the reservation by then, we do not register: that host
 * fenced us, or took the LUN over, and our writes must get RESERVATION
 * CONFLICT from the SAN.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "passthru.h"
#include "sg_int.h"

#define PT_TYPE SAN_PR_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY
#define RETRY_FIRST_LOGIN_MS 2000

struct pt_lun {
    struct hv_reactor *r;
    struct san_session_options opt;
    char portal[SAN_PORTAL_MAX];
    char target[SAN_NAME_MAX];
    char initiator[SAN_NAME_MAX];
    char chap_user[256];
    char chap_secret[256];
    char designator[SAN_DESIGNATOR_MAX];
    uint64_t lun;
    uint64_t host_key;
    bool is_full_scsi;
    void (*on_state)(struct pt_lun *pl, enum pt_state state, const char *why, void *arg);
    void (*on_unit_attention)(struct pt_lun *pl, const uint8_t *sense, size_t sense_len,
                              void *arg);
    void *cb_arg;

    struct san_session *s;
    struct pt_sg *sg;               /* a local SCSI disk: SG_IO instead of s */
    enum pt_state state;
    char why[512];
    bool has_logged_in;             /* the session reconnects by itself from then on */
    bool is_setting_up;             /* PR setup running */
    bool is_closing;
    uint64_t foreign_key;
    struct pt_cmd *wait_head;       /* commands before the first READY/FENCED */
    struct pt_cmd *wait_tail;
    struct hv_timer retry_timer;
    uint64_t forwarded;
    uint64_t filtered;

    /* task management forwarded for the guest */
    unsigned holds;                 /* TMFs the SAN has not answered: commands wait */
    uint64_t aborts_forwarded;
    uint64_t resets_forwarded;
    uint64_t uas_reported;
    struct san_cmd reset_tur;       /* meets the UA of our own LUN RESET */
    uint8_t reset_tur_tries;

    /* takeover in progress */
    san_status_cb takeover_done;
    void *takeover_arg;
    uint64_t victim_key;
    bool is_abort_preempt;
    bool is_releasing;
    bool is_finishing;
};

const char *pt_state_name(enum pt_state state)
{
    switch (state) {
    case PT_STATE_CONNECTING: return "connecting";
    case PT_STATE_READY: return "ready";
    case PT_STATE_FENCED: return "fenced";
    case PT_STATE_FAILED: return "failed";
    case PT_STATE_OFFLINE: return "offline";
    }
    return "?";
}

static void set_state(struct pt_lun *pl, enum pt_state state, const char *fmt, ...)
    HV_PRINTF(3, 4);
static void set_state(struct pt_lun *pl, enum pt_state state, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pl->why, sizeof(pl->why), fmt, ap);
    va_end(ap);
    pl->state = state;
    if (pl->on_state)
        pl->on_state(pl, state, pl->why, pl->cb_arg);
}

/* ---------------------------------------------------------- completion */

static void complete_deferred(void *arg)
{
    struct pt_cmd *cmd = arg;
    cmd->done(cmd);
}

static void finish_local(struct pt_cmd *cmd, uint8_t status, uint8_t key, uint8_t asc,
                         uint8_t ascq)
{
    cmd->status = status;
    cmd->sense_len = status == SAN_STATUS_CHECK_CONDITION
                         ? (uint32_t)pt_sense_fixed(cmd->sense, key, asc, ascq) : 0;
    cmd->residual = cmd->xfer_bytes;
    cmd->is_overflow = false;
    hv_reactor_defer(cmd->pl->r, &cmd->deferred, complete_deferred, cmd);
}

static void san_done(struct san_cmd *sc)
{
    struct pt_cmd *cmd = sc->cb_arg;

    cmd->is_at_san = false;
    cmd->status = sc->status;
    cmd->sense_len = HV_MIN(sc->sense_len, (uint32_t)PT_SENSE_MAX);
    memcpy(cmd->sense, sc->sense, cmd->sense_len);
    cmd->residual = sc->residual;
    cmd->is_overflow = sc->is_overflow;
    cmd->done(cmd);
}

static void forward(struct pt_lun *pl, struct pt_cmd *cmd)
{
    struct san_cmd *sc = &cmd->san;

    if (pl->sg) {
        pt_sg_submit(pl->sg, cmd);
        pl->forwarded++;
        return;
    }

    sc->lun = pl->lun;
    memcpy(sc->cdb, cmd->cdb, SAN_CDB_MAX);
    sc->cdb_len = cmd->cdb_len;
    sc->dir = cmd->dir;
    sc->iov = cmd->iov;
    sc->iovcnt = cmd->iovcnt;
    sc->xfer_bytes = cmd->xfer_bytes;
    sc->done = san_done;
    sc->cb_arg = cmd;
    if (san_session_submit(pl->s, sc) < 0) {
        /* san refuses only CDBs it cannot carry (length, transfer > iov) */
        finish_local(cmd, SAN_STATUS_CHECK_CONDITION, 0x5, 0x24, 0x00);
        return;
    }
    cmd->is_at_san = true;
    pl->forwarded++;
}

/* Commands that waited for the login go now, in arrival order. */
static void release_waiting(struct pt_lun *pl)
{
    /* Behind a TMF the SAN has not answered, commands that would be
     * forwarded keep waiting; those that fail here anyway may go. */
    if (pl->holds && pl->state != PT_STATE_OFFLINE &&
        !(pl->state == PT_STATE_FAILED && !pl->has_logged_in))
        return;
    struct pt_cmd *cmd = pl->wait_head;
    pl->wait_head = pl->wait_tail = NULL;
    while (cmd) {
        struct pt_cmd *next = cmd->next;
        if (pl->state == PT_STATE_OFFLINE)
            finish_local(cmd, SAN_STATUS_CHECK_CONDITION, 0x2, 0x25, 0x00);
        else if (pl->state == PT_STATE_FAILED && !pl->has_logged_in)
            finish_local(cmd, SAN_STATUS_CHECK_CONDITION, 0x2, 0x04, 0x00);
        else
            forward(pl, cmd);
        cmd = next;
    }
}

void pt_lun_abort_waiting(struct pt_lun *pl)
{
    struct pt_cmd *cmd = pl->wait_head;

    if (pl->sg)
        pt_sg_abort_queued(pl->sg);
    pl->wait_head = pl->wait_tail = NULL;
    while (cmd) {
        struct pt_cmd *next = cmd->next;
        finish_local(cmd, SAN_STATUS_TASK_ABORTED, 0, 0, 0);
        cmd = next;
    }
}

void pt_lun_submit(struct pt_lun *pl, struct pt_cmd *cmd)
{
    cmd->pl = pl;
    cmd->is_filtered = false;
    cmd->next = NULL;
    if (!pt_cdb_is_allowed(cmd->cdb, cmd->cdb_len, pl->is_full_scsi)) {
        pl->filtered++;
        cmd->is_filtered = true;
        finish_local(cmd, SAN_STATUS_CHECK_CONDITION, 0x5, 0x20, 0x00);
        return;
    }
    /* (a local disk has no host key: nothing of the host's to guard) */
    if (!pl->is_full_scsi && pl->host_key && cmd->cdb[0] == 0x5F &&
        cmd->dir == SAN_XFER_WRITE) {
        uint8_t param[24] = {0};
        size_t len = HV_MIN(hv_iov_length(cmd->iov, cmd->iovcnt), sizeof(param));
        hv_iov_to_buf(cmd->iov, cmd->iovcnt, 0, param, len);
        if (pt_pr_out_touches_host(cmd->cdb, param, len, pl->host_key)) {
            pl->filtered++;
            cmd->is_filtered = true;
            finish_local(cmd, SAN_STATUS_RESERVATION_CONFLICT, 0, 0, 0);
            return;
        }
    }
    switch (pl->state) {
    case PT_STATE_OFFLINE:
        finish_local(cmd, SAN_STATUS_CHECK_CONDITION, 0x2, 0x25, 0x00);
        return;
    case PT_STATE_FAILED:
        if (!pl->has_logged_in) {
            finish_local(cmd, SAN_STATUS_CHECK_CONDITION, 0x2, 0x04, 0x00);
            return;
        }
        break;                      /* san fails it with its own NOT READY */
    case PT_STATE_CONNECTING:
    wait:
        if (pl->wait_tail)
            pl->wait_tail->next = cmd;
        else
            pl->wait_head = cmd;
        pl->wait_tail = cmd;
        return;
    default:
        break;
    }
    if (pl->holds)
        goto wait;
    forward(pl, cmd);
}

/* ------------------------------------------------------ reservation setup */

static void setup_done(struct pt_lun *pl, enum pt_state state, const char *why)
{
    pl->is_setting_up = false;
    set_state(pl, state, "%s", why);
    release_waiting(pl);
}

static void reserve_done(void *arg, int status, const char *msg);
static void restart_setup(struct pt_lun *pl);

/* Every step of the reservation set-up ends the same way when the LUN is
 * closing (nothing more to do) or a LUN RESET the guest sent caught the
 * step (-ECANCELED: the set-up starts over); true when the caller stops. */
static bool setup_step_is_over(struct pt_lun *pl, int status)
{
    if (pl->is_closing)
        return true;
    if (status == -ECANCELED) {
        restart_setup(pl);
        return true;
    }
    return false;
}

static void fenced_read_done(void *arg, int status, const char *msg,
                             const struct san_pr_status *pr)
{
    struct pt_lun *pl = arg;

    if (setup_step_is_over(pl, status))
        return;
    char why[512];

    if (status == 0 && pr->is_reserved && pr->holder_key == pl->host_key) {
        /* Held by our own key through an earlier I_T nexus (before a restart
         * of ours, on a target that does not carry the nexus over): under
         * Write Exclusive - Registrants Only every registrant writes, and the
         * fence against other hosts stands. */
        snprintf(why, sizeof(why), "%s LUN %" PRIu64 " (%s): registered; the reservation is "
                 "still this host's (key 0x%016" PRIx64 ", taken by an earlier session)",
                 pl->target, pl->lun, pl->designator, pl->host_key);
        hv_info("%s", why);
        pl->foreign_key = 0;
        setup_done(pl, PT_STATE_READY, why);
        return;
    }
    pl->foreign_key = (status == 0 && pr->is_reserved) ? pr->holder_key : 0;
    snprintf(why, sizeof(why), "%s LUN %" PRIu64 ": reserved by another host (key 0x%016"
             PRIx64 "): writes get RESERVATION CONFLICT until `hvctl disk takeover`",
             pl->target, pl->lun, pl->foreign_key);
    hv_warn("%s", why);
    setup_done(pl, PT_STATE_FENCED, why);
}

static void reserve_done(void *arg, int status, const char *msg)
{
    struct pt_lun *pl = arg;

    if (setup_step_is_over(pl, status))
        return;
    char why[512];

    if (status == -EACCES) {        /* someone reserved it between our read and now */
        if (san_pr_read(pl->s, pl->lun, fenced_read_done, pl) < 0)
            setup_done(pl, PT_STATE_FENCED, "reservation conflict");
        return;
    }
    if (status < 0) {
        /* A SAN without persistent reservations still serves the guest; the
         * cross-host fence is then the administrator's (said in the log). */
        snprintf(why, sizeof(why), "%s LUN %" PRIu64 ": no reservation (%s); serving without "
                 "the cross-host fence", pl->target, pl->lun, msg);
        hv_warn("%s", why);
        setup_done(pl, PT_STATE_READY, why);
        return;
    }
    pl->foreign_key = 0;
    snprintf(why, sizeof(why), "%s LUN %" PRIu64 " (%s): registered and reserved (Write "
             "Exclusive - Registrants Only, key 0x%016" PRIx64 ") as %s", pl->target, pl->lun,
             pl->designator, pl->host_key, pl->initiator);
    hv_info("%s", why);
    setup_done(pl, PT_STATE_READY, why);
}

static void register_again_done(void *arg, int status, const char *msg)
{
    struct pt_lun *pl = arg;

    if (setup_step_is_over(pl, status))
        return;
    if (status < 0) {
        reserve_done(pl, status == -EACCES ? -EIO : status, msg);
        return;
    }
    if (san_pr_reserve(pl->s, pl->lun, pl->host_key, PT_TYPE, reserve_done, pl) < 0)
        reserve_done(pl, -ENOMEM, "out of memory");
}

static void register_done(void *arg, int status, const char *msg)
{
    struct pt_lun *pl = arg;

    if (setup_step_is_over(pl, status))
        return;
    if (status == -EACCES) {
        /* This nexus is registered already (same name and ISID as before a
         * restart of ours, on a target that kept it): REGISTER with our own
         * key as the old key re-asserts it. */
        if (san_pr_register(pl->s, pl->lun, pl->host_key, pl->host_key, register_again_done,
                            pl) < 0)
            reserve_done(pl, -ENOMEM, "out of memory");
        return;
    }
    register_again_done(pl, status, msg);
}

static void setup_read_done(void *arg, int status, const char *msg,
                            const struct san_pr_status *pr)
{
    struct pt_lun *pl = arg;

    if (setup_step_is_over(pl, status))
        return;

    if (status == 0 && pr->is_reserved && pr->holder_key != pl->host_key) {
        fenced_read_done(pl, status, msg, pr);
        return;
    }
    if (san_pr_register(pl->s, pl->lun, 0, pl->host_key, register_done, pl) < 0)
        reserve_done(pl, -ENOMEM, "out of memory");
}

static void start_setup(struct pt_lun *pl)
{
    if (pl->is_setting_up)
        return;
    pl->is_setting_up = true;
    if (san_pr_read(pl->s, pl->lun, setup_read_done, pl) < 0)
        setup_done(pl, PT_STATE_READY, "out of memory reading reservations");
}

static void restart_setup(struct pt_lun *pl)
{
    pl->is_setting_up = false;
    start_setup(pl);
}

/* ------------------------------------------------------------- session */

static void session_state(struct san_session *s, enum san_state state, const char *why,
                          void *arg)
{
    struct pt_lun *pl = arg;

    if (pl->is_closing)
        return;
    switch (state) {
    case SAN_STATE_OFFLINE:
        hv_error("%s LUN %" PRIu64 " offline: %s", pl->target, pl->lun, why);
        set_state(pl, PT_STATE_OFFLINE, "%s", why);
        release_waiting(pl);
        break;
    case SAN_STATE_FAILFAST:
        hv_warn("%s LUN %" PRIu64 ": SAN unreachable past the replacement timeout (%s); "
                "commands fail until it is back", pl->target, pl->lun, why);
        set_state(pl, PT_STATE_FAILED, "%s", why);
        break;
    case SAN_STATE_ONLINE:
        if (pl->has_logged_in) {
            hv_info("%s LUN %" PRIu64 ": reconnected; checking the reservation", pl->target,
                    pl->lun);
            start_setup(pl);
        }
        break;
    default:
        break;
    }
}

static void report_ua(struct pt_lun *pl, const uint8_t *sense, size_t len)
{
    pl->uas_reported++;
    if (pl->on_unit_attention)
        pl->on_unit_attention(pl, sense, len, pl->cb_arg);
}

static void session_ua(struct san_session *s, uint64_t lun, const uint8_t *sense,
                       size_t sense_len, void *arg)
{
    struct pt_lun *pl = arg;
    (void)s;
    if (pl->is_closing || lun != pl->lun)
        return;
    report_ua(pl, sense, sense_len);
}

static void connect_done(void *arg, int status, const char *msg);

static int start_session(struct pt_lun *pl, struct hv_err *err)
{
    int ret = san_session_create(pl->r, &pl->opt, &pl->s, err);
    if (ret < 0)
        return ret;
    ret = san_session_expect_lun(pl->s, pl->lun, pl->designator);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: cannot pin LUN %" PRIu64, pl->target, pl->lun);
    ret = san_session_connect(pl->s, connect_done, pl);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: connect", pl->target);
    return 0;
}

static void retry_login(void *arg)
{
    struct pt_lun *pl = arg;
    struct hv_err err = {0};

    if (pl->s)
        san_session_close(pl->s);
    pl->s = NULL;
    if (start_session(pl, &err) < 0)
        hv_timer_arm(pl->r, &pl->retry_timer, RETRY_FIRST_LOGIN_MS, retry_login, pl);
}

static void connect_done(void *arg, int status, const char *msg)
{
    struct pt_lun *pl = arg;

    if (status == -ESTALE) {
        hv_error("%s LUN %" PRIu64 " refused: %s", pl->target, pl->lun, msg);
        set_state(pl, PT_STATE_OFFLINE, "%s", msg);
        release_waiting(pl);
        return;
    }
    if (status < 0) {
        /* The first login has no automatic retry in san/: keep trying here
         * (the SAN may come up after us), failing guest commands meanwhile. */
        if (pl->state != PT_STATE_FAILED)
            hv_warn("%s LUN %" PRIu64 ": login as %s failed (%s); retrying every %u ms",
                    pl->target, pl->lun, pl->initiator, msg, RETRY_FIRST_LOGIN_MS);
        set_state(pl, PT_STATE_FAILED, "login failed: %s", msg);
        release_waiting(pl);
        hv_timer_arm(pl->r, &pl->retry_timer, RETRY_FIRST_LOGIN_MS, retry_login, pl);
        return;
    }
    pl->has_logged_in = true;
    start_setup(pl);
}

int pt_lun_open(struct hv_reactor *r, const struct pt_lun_options *opt, struct pt_lun **out,
                struct hv_err *err)
{
    struct pt_lun *pl;
    int ret;

    if (!opt->designator || !opt->designator[0])
        return hv_err_set(err, -EINVAL, "a pass-through LUN needs its designator");
    if (!opt->host_key)
        return hv_err_set(err, -EINVAL, "a pass-through LUN needs the host's PR key");
    pl = calloc(1, sizeof(*pl));
    if (!pl)
        return hv_err_set(err, -ENOMEM, "out of memory");
    pl->r = r;
    pl->opt = opt->san;
    snprintf(pl->portal, sizeof(pl->portal), "%s", opt->san.portal);
    snprintf(pl->target, sizeof(pl->target), "%s", opt->san.target);
    snprintf(pl->initiator, sizeof(pl->initiator), "%s", opt->san.initiator);
    pl->opt.portal = pl->portal;
    pl->opt.target = pl->target;
    pl->opt.initiator = pl->initiator;
    if (opt->san.chap.user) {
        snprintf(pl->chap_user, sizeof(pl->chap_user), "%s", opt->san.chap.user);
        snprintf(pl->chap_secret, sizeof(pl->chap_secret), "%s", opt->san.chap.secret);
        pl->opt.chap.user = pl->chap_user;
        pl->opt.chap.secret = pl->chap_secret;
        pl->opt.chap.target_user = NULL;
        pl->opt.chap.target_secret = NULL;
    }
    pl->opt.on_state = session_state;
    pl->opt.on_unit_attention = session_ua;
    pl->opt.cb_arg = pl;
    snprintf(pl->designator, sizeof(pl->designator), "%s", opt->designator);
    pl->lun = opt->lun;
    pl->host_key = opt->host_key;
    pl->is_full_scsi = opt->is_full_scsi;
    pl->on_state = opt->on_state;
    pl->on_unit_attention = opt->on_unit_attention;
    pl->cb_arg = opt->cb_arg;
    pl->state = PT_STATE_CONNECTING;
    snprintf(pl->why, sizeof(pl->why), "logging in");
    ret = start_session(pl, err);
    if (ret < 0) {
        if (pl->s)
            san_session_close(pl->s);
        free(pl);
        return ret;
    }
    *out = pl;
    return 0;
}

void pt_lun_close(struct pt_lun *pl)
{
    if (!pl)
        return;
    pl->is_closing = true;
    hv_timer_cancel(pl->r, &pl->retry_timer);
    {
        struct pt_cmd *cmd = pl->wait_head;
        pl->wait_head = pl->wait_tail = NULL;
        while (cmd) {
            struct pt_cmd *next = cmd->next;
            cmd->status = SAN_STATUS_CHECK_CONDITION;
            cmd->sense_len = (uint32_t)pt_sense_fixed(cmd->sense, 0x2, 0x04, 0x03);
            cmd->residual = cmd->xfer_bytes;
            cmd->done(cmd);
            cmd = next;
        }
    }
    if (pl->s)
        san_session_close(pl->s);
    pt_sg_destroy(pl->sg);
    free(pl);
}

static void release_finish(void *arg)
{
    struct pt_lun *pl = arg;
    pl->is_finishing = true;
    hv_timer_cancel(pl->r, &pl->retry_timer);
    san_session_close(pl->s);
    free(pl);
}

static void release_done(void *arg, int status, const char *msg)
{
    struct pt_lun *pl = arg;
    if (pl->is_finishing)           /* failed by the close in release_finish itself */
        return;
    if (status == 0)
        hv_info("%s LUN %" PRIu64 ": released (key 0x%016" PRIx64 " unregistered)", pl->target,
                pl->lun, pl->host_key);
    else
        hv_warn("%s LUN %" PRIu64 ": release on detach failed (%s); the reservation stays "
                "until another host takes it over", pl->target, pl->lun, msg);
    /* not from inside san's completion: the session is closed next turn */
    hv_timer_arm(pl->r, &pl->retry_timer, 0, release_finish, pl);
}

static void release_timeout(void *arg)
{
    struct pt_lun *pl = arg;
    hv_warn("%s LUN %" PRIu64 ": no answer to the release in 5 s; closing", pl->target,
            pl->lun);
    release_finish(pl);             /* the PR command fails with CLOSED inside */
}

void pt_lun_close_and_release(struct pt_lun *pl)
{
    if (!pl)
        return;
    if (pl->state != PT_STATE_READY || !pl->has_logged_in || pl->is_setting_up) {
        pt_lun_close(pl);
        return;
    }
    pl->is_closing = true;          /* setup callbacks and state changes stop here */
    pl->on_state = NULL;
    hv_timer_cancel(pl->r, &pl->retry_timer);
    /* REGISTER with service action key 0 unregisters this nexus; for the
     * holder of a Write Exclusive - Registrants Only reservation that also
     * releases it (SPC-4 5.12.11.2.3). */
    if (san_pr_register(pl->s, pl->lun, pl->host_key, 0, release_done, pl) < 0) {
        pt_lun_close(pl);
        return;
    }
    pl->is_releasing = true;
    hv_timer_arm(pl->r, &pl->retry_timer, 5000, release_timeout, pl);
}

enum pt_state pt_lun_state(const struct pt_lun *pl) { return pl->state; }
const char *pt_lun_why(const struct pt_lun *pl) { return pl->why; }
uint64_t pt_lun_foreign_key(const struct pt_lun *pl) { return pl->foreign_key; }
struct san_session *pt_lun_session(struct pt_lun *pl) { return pl->s; }
uint64_t pt_lun_forwarded(const struct pt_lun *pl) { return pl->forwarded; }
uint64_t pt_lun_filtered(const struct pt_lun *pl) { return pl->filtered; }

/* ------------------------------------------------------------ takeover */

static void takeover_finish(struct pt_lun *pl, int status, const char *msg)
{
    san_status_cb done = pl->takeover_done;
    pl->takeover_done = NULL;
    if (status == 0) {
        char why[512];
        snprintf(why, sizeof(why), "%s LUN %" PRIu64 ": taken over from key 0x%016" PRIx64
                 " (%s); reserved with key 0x%016" PRIx64, pl->target, pl->lun,
                 pl->victim_key, pl->is_abort_preempt ? "PREEMPT AND ABORT" : "PREEMPT",
                 pl->host_key);
        hv_warn("%s", why);
        pl->foreign_key = 0;
        set_state(pl, PT_STATE_READY, "%s", why);
        done(pl->takeover_arg, 0, why);
        return;
    }
    done(pl->takeover_arg, status, msg);
}

static void takeover_do_preempt(struct pt_lun *pl, bool abort);

static void takeover_preempt_done(void *arg, int status, const char *msg)
{
    struct pt_lun *pl = arg;
    /* tgt (1.0.85) has no PREEMPT AND ABORT: INVALID FIELD IN CDB. A plain
     * PREEMPT fences as well; the dead host's queued tasks are its own. */
    if (status == -EIO && pl->is_abort_preempt && msg && strstr(msg, "5h/24h/00h")) {
        hv_info("%s LUN %" PRIu64 ": the target has no PREEMPT AND ABORT; plain PREEMPT",
                pl->target, pl->lun);
        takeover_do_preempt(pl, false);
        return;
    }
    takeover_finish(pl, status, msg);
}

static void takeover_do_preempt(struct pt_lun *pl, bool abort)
{
    pl->is_abort_preempt = abort;
    if (san_pr_preempt(pl->s, pl->lun, pl->host_key, pl->victim_key, PT_TYPE, abort,
                       takeover_preempt_done, pl) < 0)
        takeover_finish(pl, -ENOMEM, "out of memory");
}

static void takeover_register_again(void *arg, int status, const char *msg)
{
    struct pt_lun *pl = arg;
    if (status < 0) {
        takeover_finish(pl, status, msg);
        return;
    }
    takeover_do_preempt(pl, true);
}

static void takeover_register_done(void *arg, int status, const char *msg)
{
    struct pt_lun *pl = arg;
    if (status == -EACCES) {
        if (san_pr_register(pl->s, pl->lun, pl->host_key, pl->host_key,
                            takeover_register_again, pl) < 0)
            takeover_finish(pl, -ENOMEM, "out of memory");
        return;
    }
    takeover_register_again(pl, status, msg);
}

static void takeover_read_done(void *arg, int status, const char *msg,
                               const struct san_pr_status *pr)
{
    struct pt_lun *pl = arg;
    char text[256];

    if (status < 0) {
        takeover_finish(pl, status, msg);
        return;
    }
    if (!pl->victim_key) {
        if (!pr->is_reserved) {
            snprintf(text, sizeof(text), "%s LUN %" PRIu64 " is not reserved by anyone: "
                     "nothing to take over", pl->target, pl->lun);
            takeover_finish(pl, -ENOENT, text);
            return;
        }
        if (pr->holder_key == pl->host_key) {
            snprintf(text, sizeof(text), "%s LUN %" PRIu64 " is already reserved by this "
                     "host (key 0x%016" PRIx64 ")", pl->target, pl->lun, pl->host_key);
            takeover_finish(pl, -EALREADY, text);
            return;
        }
        pl->victim_key = pr->holder_key;
    }
    if (san_pr_register(pl->s, pl->lun, 0, pl->host_key, takeover_register_done, pl) < 0)
        takeover_finish(pl, -ENOMEM, "out of memory");
}

int pt_lun_takeover(struct pt_lun *pl, uint64_t victim_key, san_status_cb done, void *arg)
{
    if (pl->takeover_done)
        return -EBUSY;
    if (pl->state == PT_STATE_OFFLINE || !pl->has_logged_in)
        return -ENOTCONN;
    pl->takeover_done = done;
    pl->takeover_arg = arg;
    pl->victim_key = victim_key;
    if (san_pr_read(pl->s, pl->lun, takeover_read_done, pl) < 0) {
        pl->takeover_done = NULL;
        return -ENOMEM;
    }
    return 0;
}

/* -------------------------------------------------- task management */

static void hold_end(struct pt_lun *pl)
{
    /* Still logging in: the setup releases them, after the reservation. */
    if (pl->holds && --pl->holds == 0 && !pl->is_closing && pl->state != PT_STATE_CONNECTING)
        release_waiting(pl);
}

static void abort_done(void *arg, int status, const char *msg)
{
    struct pt_lun *pl = arg;
    if (status < 0)
        hv_warn("%s LUN %" PRIu64 ": the guest's abort: %s", pl->target, pl->lun, msg);
    hold_end(pl);
}

void pt_lun_abort(struct pt_lun *pl, struct pt_cmd *cmd)
{
    for (struct pt_cmd **pp = &pl->wait_head; *pp; pp = &(*pp)->next) {
        if (*pp != cmd)
            continue;
        *pp = cmd->next;
        if (pl->wait_tail == cmd) {
            pl->wait_tail = NULL;
            for (struct pt_cmd *c = pl->wait_head; c; c = c->next)
                pl->wait_tail = c;
        }
        finish_local(cmd, SAN_STATUS_TASK_ABORTED, 0, 0, 0);
        return;
    }
    if (pl->sg) {
        /* not taken by a worker yet: aborted; inside SG_IO: it completes
         * (SG_IO has no abort; SAM lets a task finish despite ABORT TASK) */
        pt_sg_abort_one(pl->sg, cmd);
        return;
    }
    if (!cmd->is_at_san || !pl->s)
        return;                     /* answered already, or about to be */
    pl->holds++;
    if (san_cmd_abort(pl->s, &cmd->san, abort_done, pl) < 0) {
        pl->holds--;
        return;
    }
    pl->aborts_forwarded++;
}

/* The reset UA (29h/xxh) is ours to consume: the controller already gave
 * the guest its own. Any other UA behind it is the guest's news. */
static void reset_tur_done(struct san_cmd *sc)
{
    struct pt_lun *pl = sc->cb_arg;

    if (sc->transport == SAN_TRANSPORT_OK && sc->status == SAN_STATUS_CHECK_CONDITION &&
        san_sense_key(sc->sense, sc->sense_len) == 0x6 && pl->reset_tur_tries++ < 8) {
        if ((san_sense_asc_ascq(sc->sense, sc->sense_len) >> 8) != 0x29)
            report_ua(pl, sc->sense, sc->sense_len);
        if (!pl->is_closing && san_session_submit(pl->s, sc) == 0)
            return;
    }
    hold_end(pl);
}

static void reset_done(void *arg, int status, const char *msg)
{
    struct pt_lun *pl = arg;
    struct san_cmd *sc = &pl->reset_tur;

    if (status < 0) {
        hv_warn("%s LUN %" PRIu64 ": the guest's LOGICAL UNIT RESET: %s", pl->target, pl->lun,
                msg);
        hold_end(pl);
        return;
    }
    hv_info("%s LUN %" PRIu64 ": LOGICAL UNIT RESET from the guest done on the SAN (%s)",
            pl->target, pl->lun, msg);
    memset(sc, 0, sizeof(*sc));
    sc->lun = pl->lun;
    sc->cdb_len = 6;                /* TEST UNIT READY */
    sc->dir = SAN_XFER_NONE;
    sc->done = reset_tur_done;
    sc->cb_arg = pl;
    pl->reset_tur_tries = 0;
    if (pl->is_closing || san_session_submit(pl->s, sc) < 0)
        hold_end(pl);
}

void pt_lun_reset(struct pt_lun *pl)
{
    pt_lun_abort_waiting(pl);
    if (!pl->s || !pl->has_logged_in || pl->state == PT_STATE_OFFLINE)
        return;
    pl->holds++;
    if (san_session_tmf(pl->s, pl->lun, SAN_TMF_LUN_RESET, reset_done, pl) < 0) {
        pl->holds--;
        return;
    }
    pl->resets_forwarded++;
}

uint64_t pt_lun_aborts_forwarded(const struct pt_lun *pl) { return pl->aborts_forwarded; }
uint64_t pt_lun_resets_forwarded(const struct pt_lun *pl) { return pl->resets_forwarded; }
uint64_t pt_lun_uas_reported(const struct pt_lun *pl) { return pl->uas_reported; }

/* ------------------------------------------------------ local SCSI disk */

static void local_gone(void *arg, const char *why)
{
    struct pt_lun *pl = arg;

    if (pl->is_closing || pl->state == PT_STATE_OFFLINE)
        return;
    hv_error("%s", why);
    set_state(pl, PT_STATE_OFFLINE, "%s", why);
}

int pt_lun_open_local(struct hv_reactor *r, const struct pt_local_options *opt,
                      struct pt_lun **out, struct hv_err *err)
{
    struct pt_sg_options so = {
        .fd = opt->fd,
        .path = opt->path,
        .depth = opt->queue_depth,
        .timeout_ms = opt->timeout_ms,
        .on_gone = local_gone,
    };
    struct pt_sg_identity id;
    struct pt_lun *pl;
    int ret;

    if (!opt->designator || !opt->designator[0])
        return hv_err_set(err, -EINVAL, "%s: a pass-through disk needs its designator",
                          opt->path);
    /* The device must still be the disk this slot was given: device names
     * move between boots, the designator does not. */
    ret = pt_sg_identify(opt->fd, opt->path, &id, err);
    if (ret < 0)
        return ret;
    if (strcmp(id.designator, opt->designator) != 0)
        return hv_err_set(err, -ESTALE, "%s is %s (%s %s), not %s: refusing to hand another "
                          "disk to the guest", opt->path, id.designator[0] ? id.designator
                          : "a disk without a VPD 0x83 designator", id.inquiry.vendor,
                          id.inquiry.product, opt->designator);
    pl = calloc(1, sizeof(*pl));
    if (!pl)
        return hv_err_set(err, -ENOMEM, "out of memory");
    pl->r = r;
    snprintf(pl->target, sizeof(pl->target), "%s", opt->path);
    snprintf(pl->designator, sizeof(pl->designator), "%s", opt->designator);
    pl->is_full_scsi = opt->is_full_scsi;
    pl->on_state = opt->on_state;
    pl->cb_arg = opt->cb_arg;
    pl->state = PT_STATE_READY;
    snprintf(pl->why, sizeof(pl->why), "SG_IO to %s (%s %s, %s)", opt->path, id.inquiry.vendor,
             id.inquiry.product, id.designator);
    so.arg = pl;
    so.block_bytes = id.block_bytes;
    ret = pt_sg_create(r, &so, &pl->sg, err);
    if (ret < 0) {
        free(pl);
        return ret;
    }
    *out = pl;
    return 0;
}

bool pt_lun_is_local(const struct pt_lun *pl) { return pl->sg != NULL; }

uint64_t pt_lun_inflight(const struct pt_lun *pl)
{
    return pl->sg ? pt_sg_inflight(pl->sg) : 0;
}

unsigned pt_lun_max_in_device(const struct pt_lun *pl)
{
    return pl->sg ? pt_sg_max_busy(pl->sg) : 0;
}
