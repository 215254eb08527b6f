/*
 * Control-path operations built on the session's command path: persistent
 * reservations and the LUN scan. They allocate (once per operation, not per
 * I/O) and wait out reconnects like any command.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "san.h"
#include "san_internal.h"

#define OP_BUF_BYTES 8192

enum op_kind { OP_PR_OUT, OP_PR_READ, OP_SCAN };

struct san_op {
    struct san_session *s;
    enum op_kind kind;
    struct san_cmd cmd;
    struct iovec iov;
    uint8_t buf[OP_BUF_BYTES] __attribute__((aligned(16)));
    uint8_t param[24];
    void *arg;
    san_status_cb status_cb;
    san_pr_status_cb pr_cb;
    san_scan_cb scan_cb;

    /* PR OUT bookkeeping */
    enum san_pr_action action;
    uint64_t lun;
    uint64_t new_key;

    /* PR READ */
    struct san_pr_status pr;
    int step;

    /* SCAN */
    struct san_lun_info *luns;
    size_t lun_count;
    size_t index;
    uint32_t report_alloc;
    unsigned ua_retries;
};

static uint32_t got_bytes(const struct san_cmd *c)
{
    if (c->is_overflow || c->residual > c->xfer_bytes) {
        return c->xfer_bytes;
    }
    return c->xfer_bytes - c->residual;
}

static void op_submit(struct san_op *op, uint64_t lun, const uint8_t *cdb, uint8_t cdb_len,
                      enum san_xfer dir, void *buf, uint32_t bytes, void (*done)(struct san_cmd *))
{
    memset(&op->cmd, 0, sizeof(op->cmd));
    san_cmd_prepare(&op->cmd, lun, cdb, cdb_len, dir, &op->iov, buf, bytes);
    op->cmd.done = done;
    op->cmd.cb_arg = op;
    /* cannot fail: the command is well formed by construction */
    san_session_submit(op->s, &op->cmd);
}

/*
 * The first command on a new I_T nexus meets the target's UNIT ATTENTION
 * (power on, reset, reservations changed); for these control operations it
 * carries no news, so ask again, a few times at most.
 */
static bool retry_unit_attention(struct san_op *op)
{
    struct san_cmd *c = &op->cmd;
    if (c->transport != SAN_TRANSPORT_OK || c->status != SAN_STATUS_CHECK_CONDITION ||
        san_sense_key(c->sense, c->sense_len) != 0x6 || op->ua_retries >= 4) {
        return false;
    }
    op->ua_retries++;
    san_session_report_ua(op->s, c);
    return san_session_submit(op->s, c) == 0;
}

static const char *op_msg(struct san_op *op, const char *what, char *buf, size_t len)
{
    char desc[128];
    snprintf(buf, len, "%s LUN %" PRIu64 ": %s: %s", san_session_target(op->s), op->cmd.lun,
             what, san_cmd_describe(&op->cmd, desc, sizeof(desc)));
    return buf;
}

/* --------------------------------------------------------------- PR OUT */

static const char *pr_action_name(enum san_pr_action a)
{
    switch (a) {
    case SAN_PR_REGISTER: return "PR REGISTER";
    case SAN_PR_RESERVE: return "PR RESERVE";
    case SAN_PR_RELEASE: return "PR RELEASE";
    case SAN_PR_CLEAR: return "PR CLEAR";
    case SAN_PR_PREEMPT: return "PR PREEMPT";
    case SAN_PR_PREEMPT_AND_ABORT: return "PR PREEMPT AND ABORT";
    case SAN_PR_REGISTER_AND_IGNORE: return "PR REGISTER AND IGNORE EXISTING KEY";
    }
    return "PR OUT";
}

static void pr_out_done(struct san_cmd *c)
{
    struct san_op *op = c->cb_arg;
    int status = san_cmd_errno(c);
    char msg[300];
    if (retry_unit_attention(op)) {
        return;
    }
    if (status == 0) {
        if (op->action == SAN_PR_REGISTER || op->action == SAN_PR_REGISTER_AND_IGNORE) {
            if (op->new_key) {
                san_session_note_pr_key(op->s, op->lun, op->new_key);
            } else {
                san_session_forget_pr_key(op->s, op->lun);
            }
        } else if (op->action == SAN_PR_CLEAR) {
            san_session_forget_pr_key(op->s, op->lun);
        }
        snprintf(msg, sizeof(msg), "%s done", pr_action_name(op->action));
    } else {
        op_msg(op, pr_action_name(op->action), msg, sizeof(msg));
    }
    op->status_cb(op->arg, status, msg);
    free(op);
}

static int pr_out(struct san_session *s, uint64_t lun, enum san_pr_action action, uint8_t type,
                  uint64_t key, uint64_t sa_key, san_status_cb done, void *arg)
{
    struct san_op *op = calloc(1, sizeof(*op));
    uint8_t cdb[10];
    if (!op) {
        return -ENOMEM;
    }
    op->s = s;
    op->kind = OP_PR_OUT;
    op->status_cb = done;
    op->arg = arg;
    op->action = action;
    op->lun = lun;
    op->new_key = sa_key;
    san_pr_out_build(cdb, op->param, action, type, key, sa_key);
    op_submit(op, lun, cdb, 10, SAN_XFER_WRITE, op->param, 24, pr_out_done);
    return 0;
}

int san_pr_register(struct san_session *s, uint64_t lun, uint64_t old_key, uint64_t new_key,
                    san_status_cb done, void *arg)
{
    return pr_out(s, lun, SAN_PR_REGISTER, 0, old_key, new_key, done, arg);
}

int san_pr_reserve(struct san_session *s, uint64_t lun, uint64_t key, uint8_t type,
                   san_status_cb done, void *arg)
{
    return pr_out(s, lun, SAN_PR_RESERVE, type, key, 0, done, arg);
}

int san_pr_release(struct san_session *s, uint64_t lun, uint64_t key, uint8_t type,
                   san_status_cb done, void *arg)
{
    return pr_out(s, lun, SAN_PR_RELEASE, type, key, 0, done, arg);
}

int san_pr_clear(struct san_session *s, uint64_t lun, uint64_t key, san_status_cb done,
                 void *arg)
{
    return pr_out(s, lun, SAN_PR_CLEAR, 0, key, 0, done, arg);
}

int san_pr_preempt(struct san_session *s, uint64_t lun, uint64_t key, uint64_t victim_key,
                   uint8_t type, bool abort, san_status_cb done, void *arg)
{
    if (!victim_key) {
        return -EINVAL;     /* a zero service action key would preempt nobody (or all) */
    }
    return pr_out(s, lun, abort ? SAN_PR_PREEMPT_AND_ABORT : SAN_PR_PREEMPT, type, key,
                  victim_key, done, arg);
}

/* ---------------------------------------------------------------- PR IN */

static void pr_read_done(struct san_cmd *c)
{
    struct san_op *op = c->cb_arg;
    int status = san_cmd_errno(c);
    char msg[300];
    if (retry_unit_attention(op)) {
        return;
    }
    if (status == 0) {
        int ret = op->step == 0 ? san_parse_pr_keys(op->buf, got_bytes(c), &op->pr)
                                : san_parse_pr_reservation(op->buf, got_bytes(c), &op->pr);
        if (ret < 0) {
            snprintf(msg, sizeof(msg), "%s LUN %" PRIu64 ": malformed PERSISTENT RESERVE IN "
                     "%s data", san_session_target(op->s), c->lun,
                     op->step == 0 ? "READ KEYS" : "READ RESERVATION");
            op->pr_cb(op->arg, -EPROTO, msg, NULL);
            free(op);
            return;
        }
        if (op->step == 0) {
            uint8_t cdb[10];
            op->step = 1;
            san_pr_in_build(cdb, 1, 256);
            op_submit(op, op->lun, cdb, 10, SAN_XFER_READ, op->buf, 256, pr_read_done);
            return;
        }
        snprintf(msg, sizeof(msg), "%zu keys, %s", op->pr.key_count,
                 op->pr.is_reserved ? "reserved" : "not reserved");
        op->pr_cb(op->arg, 0, msg, &op->pr);
    } else {
        op->pr_cb(op->arg, status, op_msg(op, "PERSISTENT RESERVE IN", msg, sizeof(msg)),
                  NULL);
    }
    free(op);
}

int san_pr_read(struct san_session *s, uint64_t lun, san_pr_status_cb done, void *arg)
{
    struct san_op *op = calloc(1, sizeof(*op));
    uint8_t cdb[10];
    if (!op) {
        return -ENOMEM;
    }
    op->s = s;
    op->kind = OP_PR_READ;
    op->pr_cb = done;
    op->arg = arg;
    op->lun = lun;
    san_pr_in_build(cdb, 0, OP_BUF_BYTES);
    op_submit(op, lun, cdb, 10, SAN_XFER_READ, op->buf, OP_BUF_BYTES, pr_read_done);
    return 0;
}

/* ----------------------------------------------------------------- scan */

enum scan_step { SCAN_REPORT, SCAN_INQUIRY, SCAN_VPD83, SCAN_CAPACITY };

static void scan_next(struct san_op *op);

static void scan_finish(struct san_op *op, int status, const char *msg)
{
    op->scan_cb(op->arg, status, msg, status == 0 ? op->luns : NULL,
                status == 0 ? op->lun_count : 0);
    free(op->luns);
    free(op);
}

static void scan_done(struct san_cmd *c)
{
    struct san_op *op = c->cb_arg;
    char msg[300];
    struct san_lun_info *li = op->index < op->lun_count ? &op->luns[op->index] : NULL;

    if (retry_unit_attention(op)) {
        return;
    }

    if (c->transport != SAN_TRANSPORT_OK) {
        scan_finish(op, san_cmd_errno(c), op_msg(op, "LUN scan", msg, sizeof(msg)));
        return;
    }
    switch (op->step) {
    case SCAN_REPORT: {
        if (c->status != SAN_STATUS_GOOD) {
            scan_finish(op, san_cmd_errno(c), op_msg(op, "REPORT LUNS", msg, sizeof(msg)));
            return;
        }
        size_t total = 0;
        uint64_t luns[OP_BUF_BYTES / 8];
        int n = san_parse_report_luns(op->buf, got_bytes(c), luns, HV_ARRAY_SIZE(luns), &total);
        if (n < 0) {
            snprintf(msg, sizeof(msg), "%s: malformed REPORT LUNS data",
                     san_session_target(op->s));
            scan_finish(op, -EPROTO, msg);
            return;
        }
        op->luns = calloc((size_t)n + 1, sizeof(*op->luns));
        if (!op->luns) {
            scan_finish(op, -ENOMEM, "out of memory");
            return;
        }
        for (int i = 0; i < n; i++) {
            op->luns[i].lun = luns[i];
        }
        op->lun_count = (size_t)n;
        op->index = 0;
        op->step = SCAN_INQUIRY;
        scan_next(op);
        return;
    }
    case SCAN_INQUIRY:
        if (c->status != SAN_STATUS_GOOD ||
            san_parse_inquiry(op->buf, got_bytes(c), &li->inquiry) < 0) {
            scan_finish(op, c->status ? san_cmd_errno(c) : -EPROTO,
                        op_msg(op, "INQUIRY", msg, sizeof(msg)));
            return;
        }
        op->step = SCAN_VPD83;
        break;
    case SCAN_VPD83:
        /* a LUN without the page simply has no designator */
        if (c->status == SAN_STATUS_GOOD) {
            san_vpd83_designator(op->buf, got_bytes(c), li->designator);
        }
        op->step = li->inquiry.device_type == 0 ? SCAN_CAPACITY : SCAN_INQUIRY;
        if (op->step == SCAN_INQUIRY) {
            op->index++;
        }
        break;
    case SCAN_CAPACITY: {
        struct san_capacity cap;
        if (c->status == SAN_STATUS_GOOD && san_parse_read_capacity16(op->buf, got_bytes(c),
                                                                      &cap) == 0) {
            li->size_bytes = cap.blocks * cap.block_bytes;
            li->block_bytes = cap.block_bytes;
        } else if (c->status != SAN_STATUS_CHECK_CONDITION) {
            scan_finish(op, san_cmd_errno(c) ? san_cmd_errno(c) : -EPROTO,
                        op_msg(op, "READ CAPACITY(16)", msg, sizeof(msg)));
            return;
        }
        op->step = SCAN_INQUIRY;
        op->index++;
        break;
    }
    }
    scan_next(op);
}

static void scan_next(struct san_op *op)
{
    uint8_t cdb[16];
    if (op->step == SCAN_REPORT) {
        san_cdb_report_luns(cdb, OP_BUF_BYTES);
        op_submit(op, 0, cdb, 12, SAN_XFER_READ, op->buf, OP_BUF_BYTES, scan_done);
        return;
    }
    if (op->index >= op->lun_count) {
        char msg[64];
        snprintf(msg, sizeof(msg), "%zu LUNs", op->lun_count);
        scan_finish(op, 0, msg);
        return;
    }
    uint64_t lun = op->luns[op->index].lun;
    switch (op->step) {
    case SCAN_INQUIRY:
        san_cdb_inquiry(cdb, false, 0, 96);
        op_submit(op, lun, cdb, 6, SAN_XFER_READ, op->buf, 96, scan_done);
        break;
    case SCAN_VPD83:
        san_cdb_inquiry(cdb, true, 0x83, 1024);
        op_submit(op, lun, cdb, 6, SAN_XFER_READ, op->buf, 1024, scan_done);
        break;
    case SCAN_CAPACITY:
        san_cdb_read_capacity16(cdb, 32);
        op_submit(op, lun, cdb, 16, SAN_XFER_READ, op->buf, 32, scan_done);
        break;
    default:
        break;
    }
}

int san_scan_luns(struct san_session *s, san_scan_cb done, void *arg)
{
    struct san_op *op = calloc(1, sizeof(*op));
    if (!op) {
        return -ENOMEM;
    }
    op->s = s;
    op->kind = OP_SCAN;
    op->scan_cb = done;
    op->arg = arg;
    op->step = SCAN_REPORT;
    scan_next(op);
    return 0;
}
