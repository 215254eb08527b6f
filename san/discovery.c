/*
 * SendTargets discovery: a discovery session of its own (connect, login,
 * Text SendTargets=All, done), driven from the reactor like a session. It
 * never reconnects: the answer is the list or the reason there is none.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include <iscsi/iscsi.h>

#include "san.h"
#include "san_internal.h"

#define DISCOVERY_TIMEOUT_MS 15000
#define DISCOVERY_MAX_TARGETS 256

struct san_discovery {
    struct hv_reactor *r;
    struct iscsi_context *ctx;
    struct hv_watch *watch;
    int watch_fd;
    uint32_t watch_events;
    struct hv_timer timer;
    struct hv_timer poll_timer;
    struct hv_deferred finish_defer;
    char portal[SAN_PORTAL_MAX];
    san_discover_cb done;
    void *arg;
    bool is_finished;
    int status;
    char msg[512];
    struct san_target *targets;
    size_t count;
};

static void disc_on_fd(void *arg, uint32_t events);

static void disc_finish_now(void *arg)
{
    struct san_discovery *d = arg;
    hv_timer_cancel(d->r, &d->timer);
    hv_timer_cancel(d->r, &d->poll_timer);
    if (d->watch) {
        hv_reactor_del_fd(d->r, d->watch);
    }
    if (d->ctx) {
        iscsi_destroy_context(d->ctx);
    }
    d->done(d->arg, d->status, d->msg, d->targets, d->count);
    free(d->targets);
    free(d);
}

/* Record the outcome; the context goes on the next turn, outside libiscsi. */
static void disc_finish(struct san_discovery *d, int status, const char *what, const char *detail)
{
    if (d->is_finished) {
        return;
    }
    d->is_finished = true;
    d->status = status;
    snprintf(d->msg, sizeof(d->msg), "%s: %s: %s", d->portal, what, detail);
    hv_reactor_defer(d->r, &d->finish_defer, disc_finish_now, d);
}

static void disc_update(struct san_discovery *d);

static void disc_poll(void *arg)
{
    disc_update(arg);
}

static void disc_update(struct san_discovery *d)
{
    if (d->is_finished) {
        return;
    }
    int fd = iscsi_get_fd(d->ctx);
    int want = iscsi_which_events(d->ctx);
    uint32_t events = (want & POLLIN ? EPOLLIN : 0) | (want & POLLOUT ? EPOLLOUT : 0);
    if (d->watch && fd != d->watch_fd) {
        hv_reactor_del_fd(d->r, d->watch);
        d->watch = NULL;
    }
    if (fd < 0) {
        hv_timer_arm(d->r, &d->poll_timer, 100, disc_poll, d);
        return;
    }
    if (!d->watch) {
        d->watch = hv_reactor_add_fd(d->r, fd, events, disc_on_fd, d);
        d->watch_fd = fd;
        d->watch_events = events;
        if (!d->watch) {
            disc_finish(d, -errno, "discovery", "cannot watch the socket");
        }
    } else if (events != d->watch_events) {
        hv_reactor_mod_fd(d->r, d->watch, events);
        d->watch_events = events;
    }
    if (want == 0) {
        hv_timer_arm(d->r, &d->poll_timer, 100, disc_poll, d);
    }
}

static void disc_on_fd(void *arg, uint32_t events)
{
    struct san_discovery *d = arg;
    int revents = (events & EPOLLIN ? POLLIN : 0) | (events & EPOLLOUT ? POLLOUT : 0) |
                  (events & EPOLLERR ? POLLERR : 0) | (events & EPOLLHUP ? POLLHUP : 0);
    if (d->is_finished) {
        return;
    }
    if (iscsi_service(d->ctx, revents) < 0) {
        disc_finish(d, -ECONNRESET, "discovery", iscsi_get_error(d->ctx));
        return;
    }
    disc_update(d);
}

static void disc_result_cb(struct iscsi_context *iscsi, int status, void *command_data,
                           void *private)
{
    struct san_discovery *d = private;
    if (d->is_finished) {
        return;
    }
    if (status != SCSI_STATUS_GOOD) {
        disc_finish(d, -EIO, "SendTargets", iscsi_get_error(iscsi));
        return;
    }
    size_t n = 0;
    for (struct iscsi_discovery_address *a = command_data; a && n < DISCOVERY_MAX_TARGETS;
         a = a->next) {
        n++;
    }
    d->targets = calloc(n ? n : 1, sizeof(*d->targets));
    if (!d->targets) {
        disc_finish(d, -ENOMEM, "discovery", "out of memory");
        return;
    }
    size_t i = 0;
    for (struct iscsi_discovery_address *a = command_data; a && i < n; a = a->next, i++) {
        struct san_target *t = &d->targets[i];
        snprintf(t->name, sizeof(t->name), "%s", a->target_name ? a->target_name : "");
        for (struct iscsi_target_portal *p = a->portals; p && t->portal_count < 8; p = p->next) {
            snprintf(t->portals[t->portal_count++], SAN_PORTAL_MAX, "%s", p->portal);
        }
    }
    d->count = n;
    /* libiscsi frees the list after this callback returns */
    disc_finish(d, 0, "discovery", "ok");
}

static void disc_login_cb(struct iscsi_context *iscsi, int status, void *command_data,
                          void *private)
{
    struct san_discovery *d = private;
    (void)command_data;
    if (d->is_finished) {
        return;
    }
    if (status != SCSI_STATUS_GOOD) {
        bool is_auth = strstr(iscsi_get_error(iscsi), "uthoriz") ||
                       strstr(iscsi_get_error(iscsi), "uthentic");
        disc_finish(d, is_auth ? -EACCES : -EIO, "discovery login",
                    iscsi_get_error(iscsi));
        return;
    }
    if (iscsi_discovery_async(iscsi, disc_result_cb, d) != 0) {
        disc_finish(d, -EIO, "SendTargets", iscsi_get_error(iscsi));
    }
}

static void disc_connect_cb(struct iscsi_context *iscsi, int status, void *command_data,
                            void *private)
{
    struct san_discovery *d = private;
    (void)command_data;
    if (d->is_finished || iscsi_is_logged_in(iscsi)) {
        return;
    }
    if (status != SCSI_STATUS_GOOD) {
        disc_finish(d, -ECONNREFUSED, "discovery: connect", iscsi_get_error(iscsi));
        return;
    }
    if (iscsi_login_async(iscsi, disc_login_cb, d) != 0) {
        disc_finish(d, -EIO, "discovery login", iscsi_get_error(iscsi));
    }
}

static void disc_timeout(void *arg)
{
    disc_finish(arg, -ETIMEDOUT, "discovery", "no answer within 15 s");
}

int san_discover(struct hv_reactor *r, const char *portal, const char *initiator,
                 const struct san_chap *chap, san_discover_cb done, void *arg)
{
    if (!portal || !initiator || strlen(portal) >= SAN_PORTAL_MAX) {
        return -EINVAL;
    }
    struct san_discovery *d = calloc(1, sizeof(*d));
    if (!d) {
        return -ENOMEM;
    }
    d->r = r;
    d->done = done;
    d->arg = arg;
    d->watch_fd = -1;
    snprintf(d->portal, sizeof(d->portal), "%s", portal);
    d->ctx = iscsi_create_context(initiator);
    if (!d->ctx) {
        free(d);
        return -ENOMEM;
    }
    iscsi_set_session_type(d->ctx, ISCSI_SESSION_DISCOVERY);
    iscsi_set_noautoreconnect(d->ctx, 1);
    if (chap && chap->user) {
        iscsi_set_initiator_username_pwd(d->ctx, chap->user, chap->secret);
        if (chap->target_user) {
            iscsi_set_target_username_pwd(d->ctx, chap->target_user, chap->target_secret);
        }
    }
    hv_timer_arm(r, &d->timer, DISCOVERY_TIMEOUT_MS, disc_timeout, d);
    if (iscsi_connect_async(d->ctx, portal, disc_connect_cb, d) != 0) {
        disc_finish(d, -EINVAL, "discovery: connect", iscsi_get_error(d->ctx));
        return 0;
    }
    disc_update(d);
    return 0;
}
