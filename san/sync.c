/*
 * Synchronous wrappers for control-plane callers: every call runs a private
 * reactor until its answer arrives. The same asynchronous code runs
 * underneath, so there is one path to test.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "san.h"
#include "san_internal.h"

struct waiter {
    bool is_done;
    int status;
    char msg[512];
    struct san_pr_status pr;
    struct san_lun_info *luns;
    size_t count;
    struct san_target *targets;
};

static void status_done(void *arg, int status, const char *msg)
{
    struct waiter *w = arg;
    w->status = status;
    snprintf(w->msg, sizeof(w->msg), "%s", msg ? msg : "");
    w->is_done = true;
}

struct san_sync {
    struct hv_reactor *r;
    struct san_session *s;
};

int san_sync_open(const struct san_session_options *opt, struct san_sync **out,
                  struct hv_err *err)
{
    struct san_sync *ss = calloc(1, sizeof(*ss));
    struct waiter w = {0};
    int ret;
    if (!ss) {
        return -ENOMEM;
    }
    if ((ret = hv_reactor_create(&ss->r)) < 0) {
        free(ss);
        return hv_err_set(err, ret, "san: cannot create a reactor");
    }
    if ((ret = san_session_create(ss->r, opt, &ss->s, err)) < 0) {
        goto fail;
    }
    if ((ret = san_session_connect(ss->s, status_done, &w)) < 0) {
        hv_err_set(err, ret, "%s: connect", opt->target);
        goto fail;
    }
    hv_reactor_run_until(ss->r, &w.is_done);
    if (w.status < 0) {
        ret = hv_err_set(err, w.status, "%s", w.msg);
        goto fail;
    }
    *out = ss;
    return 0;
fail:
    san_sync_close(ss);
    return ret;
}

void san_sync_close(struct san_sync *ss)
{
    if (!ss) {
        return;
    }
    if (ss->s) {
        san_session_close(ss->s);
        /* let deferred calls of the session run out */
        for (int i = 0; i < 4; i++) {
            hv_reactor_run_once(ss->r, 0);
        }
    }
    hv_reactor_destroy(ss->r);
    free(ss);
}

struct san_session *san_sync_session(struct san_sync *ss) { return ss->s; }
struct hv_reactor *san_sync_reactor(struct san_sync *ss) { return ss->r; }

static void cmd_done(struct san_cmd *cmd)
{
    *(bool *)cmd->cb_arg = true;
}

int san_sync_command(struct san_sync *ss, struct san_cmd *cmd)
{
    bool is_done = false;
    cmd->done = cmd_done;
    cmd->cb_arg = &is_done;
    int ret = san_session_submit(ss->s, cmd);
    if (ret < 0) {
        return ret;
    }
    hv_reactor_run_until(ss->r, &is_done);
    return san_cmd_errno(cmd);
}

static void scan_done(void *arg, int status, const char *msg, const struct san_lun_info *luns,
                      size_t count)
{
    struct waiter *w = arg;
    w->status = status;
    snprintf(w->msg, sizeof(w->msg), "%s", msg ? msg : "");
    if (status == 0) {
        w->luns = malloc((count ? count : 1) * sizeof(*luns));
        if (w->luns) {
            memcpy(w->luns, luns, count * sizeof(*luns));
            w->count = count;
        } else {
            w->status = -ENOMEM;
        }
    }
    w->is_done = true;
}

int san_sync_scan(struct san_sync *ss, struct san_lun_info **luns, size_t *count,
                  struct hv_err *err)
{
    struct waiter w = {0};
    int ret = san_scan_luns(ss->s, scan_done, &w);
    if (ret < 0) {
        return hv_err_set(err, ret, "%s: LUN scan", san_session_target(ss->s));
    }
    hv_reactor_run_until(ss->r, &w.is_done);
    if (w.status < 0) {
        return hv_err_set(err, w.status, "%s", w.msg);
    }
    *luns = w.luns;
    *count = w.count;
    return 0;
}

static int wait_status(struct san_sync *ss, struct waiter *w, int ret, struct hv_err *err)
{
    if (ret < 0) {
        return hv_err_set(err, ret, "%s: persistent reservation request",
                          san_session_target(ss->s));
    }
    hv_reactor_run_until(ss->r, &w->is_done);
    if (w->status < 0) {
        return hv_err_set(err, w->status, "%s", w->msg);
    }
    return 0;
}

int san_sync_pr_register(struct san_sync *ss, uint64_t lun, uint64_t old_key, uint64_t new_key,
                         struct hv_err *err)
{
    struct waiter w = {0};
    return wait_status(ss, &w, san_pr_register(ss->s, lun, old_key, new_key, status_done, &w),
                       err);
}

int san_sync_pr_reserve(struct san_sync *ss, uint64_t lun, uint64_t key, uint8_t type,
                        struct hv_err *err)
{
    struct waiter w = {0};
    return wait_status(ss, &w, san_pr_reserve(ss->s, lun, key, type, status_done, &w), err);
}

int san_sync_pr_release(struct san_sync *ss, uint64_t lun, uint64_t key, uint8_t type,
                        struct hv_err *err)
{
    struct waiter w = {0};
    return wait_status(ss, &w, san_pr_release(ss->s, lun, key, type, status_done, &w), err);
}

int san_sync_pr_clear(struct san_sync *ss, uint64_t lun, uint64_t key, struct hv_err *err)
{
    struct waiter w = {0};
    return wait_status(ss, &w, san_pr_clear(ss->s, lun, key, status_done, &w), err);
}

int san_sync_pr_preempt(struct san_sync *ss, uint64_t lun, uint64_t key, uint64_t victim_key,
                        uint8_t type, bool abort, struct hv_err *err)
{
    struct waiter w = {0};
    return wait_status(ss, &w, san_pr_preempt(ss->s, lun, key, victim_key, type, abort,
                                              status_done, &w), err);
}

static void pr_done(void *arg, int status, const char *msg, const struct san_pr_status *pr)
{
    struct waiter *w = arg;
    w->status = status;
    snprintf(w->msg, sizeof(w->msg), "%s", msg ? msg : "");
    if (pr) {
        w->pr = *pr;
    }
    w->is_done = true;
}

int san_sync_pr_read(struct san_sync *ss, uint64_t lun, struct san_pr_status *pr,
                     struct hv_err *err)
{
    struct waiter w = {0};
    int ret = san_pr_read(ss->s, lun, pr_done, &w);
    if (ret < 0) {
        return hv_err_set(err, ret, "%s: PERSISTENT RESERVE IN", san_session_target(ss->s));
    }
    hv_reactor_run_until(ss->r, &w.is_done);
    if (w.status < 0) {
        return hv_err_set(err, w.status, "%s", w.msg);
    }
    *pr = w.pr;
    return 0;
}

int san_list_luns_sync(const struct san_session_options *opt, struct san_lun_info **luns,
                       size_t *count, struct hv_err *err)
{
    struct san_sync *ss;
    int ret = san_sync_open(opt, &ss, err);
    if (ret < 0) {
        return ret;
    }
    ret = san_sync_scan(ss, luns, count, err);
    san_sync_close(ss);
    return ret;
}

static void discover_done(void *arg, int status, const char *msg,
                          const struct san_target *targets, size_t count)
{
    struct waiter *w = arg;
    w->status = status;
    snprintf(w->msg, sizeof(w->msg), "%s", msg ? msg : "");
    if (status == 0) {
        w->targets = malloc((count ? count : 1) * sizeof(*targets));
        if (w->targets) {
            memcpy(w->targets, targets, count * sizeof(*targets));
            w->count = count;
        } else {
            w->status = -ENOMEM;
        }
    }
    w->is_done = true;
}

int san_discover_sync(const char *portal, const char *initiator, const struct san_chap *chap,
                      struct san_target **targets, size_t *count, struct hv_err *err)
{
    struct hv_reactor *r;
    struct waiter w = {0};
    int ret = hv_reactor_create(&r);
    if (ret < 0) {
        return hv_err_set(err, ret, "san: cannot create a reactor");
    }
    ret = san_discover(r, portal, initiator, chap, discover_done, &w);
    if (ret < 0) {
        hv_reactor_destroy(r);
        return hv_err_set(err, ret, "%s: discovery", portal ? portal : "(no portal)");
    }
    hv_reactor_run_until(r, &w.is_done);
    for (int i = 0; i < 2; i++) {
        hv_reactor_run_once(r, 0);
    }
    hv_reactor_destroy(r);
    if (w.status < 0) {
        free(w.targets);
        return hv_err_set(err, w.status, "%s", w.msg);
    }
    *targets = w.targets;
    *count = w.count;
    return 0;
}
