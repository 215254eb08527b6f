/*
 * The epoll loop. Timers are few (keepalives, auto-thaw, reconnects), so a
 * sorted list beats a heap in code and in speed. A watch deleted from inside
 * a callback may still have an event later in the same epoll batch, so it is
 * only marked and freed at the end of the turn. A callback may itself run
 * turns while it waits (a control request running a checkpoint keeps guest
 * I/O going that way): the outer turn still holds its epoll batch, so
 * deleted watches are freed only when the outermost turn ends.
 */
#include "common.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define MAX_PREPOLL 16
#define MAX_EVENTS 64

struct hv_watch {
    int fd;
    hv_fd_cb cb;
    void *arg;
    bool is_deleted;
    struct hv_watch *next_garbage;
};

struct prepoll {
    hv_call_cb cb;
    void *arg;
};

struct hv_reactor {
    int epfd;
    bool stop;
    struct hv_timer *timers;
    struct hv_deferred *deferred_head, *deferred_tail;
    struct prepoll prepoll[MAX_PREPOLL];
    struct hv_watch *garbage;
    int depth;                  /* turns running inside turns (a callback waiting) */
};

uint64_t hv_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int hv_reactor_create(struct hv_reactor **out)
{
    struct hv_reactor *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r->epfd < 0) {
        int e = -errno;
        free(r);
        return e;
    }
    *out = r;
    return 0;
}

static void free_garbage(struct hv_reactor *r)
{
    while (r->garbage) {
        struct hv_watch *w = r->garbage;
        r->garbage = w->next_garbage;
        free(w);
    }
}

void hv_reactor_destroy(struct hv_reactor *r)
{
    if (!r)
        return;
    free_garbage(r);
    close(r->epfd);
    free(r);
}

struct hv_watch *hv_reactor_add_fd(struct hv_reactor *r, int fd, uint32_t events, hv_fd_cb cb,
                                   void *arg)
{
    struct hv_watch *w = calloc(1, sizeof(*w));
    if (!w) {
        errno = ENOMEM;
        return NULL;
    }
    w->fd = fd;
    w->cb = cb;
    w->arg = arg;
    struct epoll_event ev = { .events = events, .data.ptr = w };
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        free(w);
        errno = e;
        return NULL;
    }
    return w;
}

int hv_reactor_mod_fd(struct hv_reactor *r, struct hv_watch *w, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = w };
    return epoll_ctl(r->epfd, EPOLL_CTL_MOD, w->fd, &ev) < 0 ? -errno : 0;
}

void hv_reactor_del_fd(struct hv_reactor *r, struct hv_watch *w)
{
    if (!w || w->is_deleted)
        return;
    epoll_ctl(r->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    w->is_deleted = true;
    w->next_garbage = r->garbage;
    r->garbage = w;
}

void hv_timer_cancel(struct hv_reactor *r, struct hv_timer *t)
{
    if (!t->is_armed)
        return;
    for (struct hv_timer **pp = &r->timers; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    }
    t->is_armed = false;
}

void hv_timer_arm(struct hv_reactor *r, struct hv_timer *t, uint64_t ms, hv_call_cb cb,
                  void *arg)
{
    hv_timer_cancel(r, t);
    t->deadline_ns = hv_now_ns() + ms * 1000000ull;
    t->cb = cb;
    t->arg = arg;
    struct hv_timer **pp = &r->timers;
    while (*pp && (*pp)->deadline_ns <= t->deadline_ns)
        pp = &(*pp)->next;
    t->next = *pp;
    *pp = t;
    t->is_armed = true;
}

void hv_reactor_defer(struct hv_reactor *r, struct hv_deferred *d, hv_call_cb cb, void *arg)
{
    if (d->is_queued)
        return;
    d->cb = cb;
    d->arg = arg;
    d->next = NULL;
    d->is_queued = true;
    if (r->deferred_tail)
        r->deferred_tail->next = d;
    else
        r->deferred_head = d;
    r->deferred_tail = d;
}

int hv_reactor_add_prepoll(struct hv_reactor *r, hv_call_cb cb, void *arg)
{
    for (int i = 0; i < MAX_PREPOLL; i++) {
        if (!r->prepoll[i].cb) {
            r->prepoll[i].cb = cb;
            r->prepoll[i].arg = arg;
            return i;
        }
    }
    return -ENOSPC;
}

void hv_reactor_del_prepoll(struct hv_reactor *r, int handle)
{
    if (handle >= 0 && handle < MAX_PREPOLL)
        r->prepoll[handle].cb = NULL;
}

/* Run the deferred calls queued so far; ones they queue wait for the next turn. */
static bool run_deferred(struct hv_reactor *r)
{
    struct hv_deferred *d = r->deferred_head;
    if (!d)
        return false;
    r->deferred_head = r->deferred_tail = NULL;
    while (d) {
        struct hv_deferred *next = d->next;
        d->is_queued = false;
        d->cb(d->arg);
        d = next;
    }
    return true;
}

static void run_timers(struct hv_reactor *r)
{
    uint64_t now = hv_now_ns();
    while (r->timers && r->timers->deadline_ns <= now) {
        struct hv_timer *t = r->timers;
        r->timers = t->next;
        t->is_armed = false;
        t->cb(t->arg);
    }
}

/* One turn. `done` lets a waiter stop sleeping when a deferred call or a
 * pre-poll hook has already finished its work. */
static int run_turn(struct hv_reactor *r, int timeout_ms, const bool *done)
{
    struct epoll_event ev[MAX_EVENTS];

    run_deferred(r);
    for (int i = 0; i < MAX_PREPOLL; i++)
        if (r->prepoll[i].cb)
            r->prepoll[i].cb(r->prepoll[i].arg);

    if (r->deferred_head || r->stop || (done && *done))
        timeout_ms = 0;
    if (r->timers && timeout_ms != 0) {
        uint64_t now = hv_now_ns(), dl = r->timers->deadline_ns;
        int until = dl <= now ? 0 : (int)HV_MIN((dl - now + 999999) / 1000000, 1u << 30);
        if (timeout_ms < 0 || until < timeout_ms)
            timeout_ms = until;
    }

    int n = epoll_wait(r->epfd, ev, MAX_EVENTS, timeout_ms);
    if (n < 0) {
        if (errno != EINTR)
            return -errno;
        n = 0;
    }
    r->depth++;
    for (int i = 0; i < n; i++) {
        struct hv_watch *w = ev[i].data.ptr;
        if (!w->is_deleted)
            w->cb(w->arg, ev[i].events);
    }
    run_timers(r);
    if (--r->depth == 0)
        free_garbage(r);
    return n;
}

int hv_reactor_run_once(struct hv_reactor *r, int timeout_ms)
{
    return run_turn(r, timeout_ms, NULL);
}

int hv_reactor_run(struct hv_reactor *r)
{
    r->stop = false;
    while (!r->stop) {
        int ret = hv_reactor_run_once(r, -1);
        if (ret < 0)
            return ret;
    }
    return 0;
}

void hv_reactor_stop(struct hv_reactor *r) { r->stop = true; }

int hv_reactor_run_until(struct hv_reactor *r, const bool *done)
{
    while (!*done) {
        int ret = run_turn(r, -1, done);
        if (ret < 0)
            return ret;
    }
    return 0;
}
