/*
 * libaio through the reactor. Submission is deferred to the reactor's
 * pre-poll hook so that every request queued during one loop turn goes to
 * the kernel in a single io_submit; completions arrive on an eventfd that
 * sits in the same epoll set as the sockets.
 */
#include "common.h"

#include <errno.h>
#include <libaio.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

_Static_assert(sizeof(struct iocb) <= sizeof(((struct hv_aio_req *)0)->iocb),
               "hv_aio_req.iocb too small for struct iocb");

struct hv_aio {
    struct hv_reactor *reactor;
    io_context_t ctx;
    int efd;
    struct hv_watch *watch;
    int prepoll;
    unsigned depth;
    unsigned in_kernel;
    unsigned queued;
    struct hv_aio_req *head, *tail;
    struct iocb **batch;
    struct io_event *events;
    /* Shared contexts (hv_aio_get): one per reactor, counted. */
    bool is_shared;
    unsigned refs;
    struct hv_aio *next_shared;
    bool is_dispatching;        /* inside complete(): callbacks may put */
    bool is_doomed;             /* last put came during dispatch */
};

/* The shared contexts of all reactors. Each reactor's thread touches only
 * its own entry, but the list spans threads. */
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static struct hv_aio *shared_list;

/*
 * Shared contexts whose last user went away keep their kernel context here
 * (unbound from any reactor) for the next hv_aio_get, on any reactor.
 * io_destroy waits for an RCU grace period, 30-40 ms, and tools and tests
 * that open one image per short-lived reactor (the crash harness: hundreds
 * of times) would otherwise pay it every time. The kernel tears the idle
 * contexts down at exit.
 */
#define IDLE_MAX 4
static struct hv_aio *idle_pool[IDLE_MAX];
static unsigned idle_count;

static void aio_free(struct hv_aio *aio);

static struct iocb *iocb_of(struct hv_aio_req *req)
{
    return (struct iocb *)(void *)req->iocb;
}

static void complete(struct hv_aio *aio)
{
    aio->is_dispatching = true;
    for (;;) {
        struct timespec zero = { 0, 0 };
        int n = io_getevents(aio->ctx, 0, (long)aio->depth, aio->events, &zero);
        if (n <= 0)
            break;
        aio->in_kernel -= (unsigned)n;
        for (int i = 0; i < n; i++) {
            struct hv_aio_req *req = aio->events[i].data;
            req->done(req, (long)aio->events[i].res);
        }
        if ((unsigned)n < aio->depth)
            break;
    }
    aio->is_dispatching = false;
    if (aio->is_doomed)
        aio_free(aio);
}

static void on_eventfd(void *arg, uint32_t events)
{
    struct hv_aio *aio = arg;
    uint64_t count;
    if (read(aio->efd, &count, sizeof(count)) < 0 && errno != EAGAIN)
        hv_warn("aio: eventfd read: %s", strerror(errno));
    complete(aio);
}

static void submit_queued(void *arg)
{
    struct hv_aio *aio = arg;
    while (aio->head && aio->in_kernel < aio->depth) {
        unsigned n = 0, room = aio->depth - aio->in_kernel;
        for (struct hv_aio_req *r = aio->head; r && n < room; r = r->next)
            aio->batch[n++] = iocb_of(r);
        int got = io_submit(aio->ctx, (long)n, aio->batch);
        if (got == -EAGAIN || got == -EINTR || got == 0)
            return;                     /* try again next turn */
        if (got < 0) {
            /* The first request was refused outright: fail it alone. */
            struct hv_aio_req *bad = aio->head;
            aio->head = bad->next;
            if (!aio->head)
                aio->tail = NULL;
            aio->queued--;
            bad->done(bad, got);
            continue;
        }
        for (int i = 0; i < got; i++) {
            aio->head = aio->head->next;
            aio->queued--;
        }
        if (!aio->head)
            aio->tail = NULL;
        aio->in_kernel += (unsigned)got;
    }
}

/* Completions and submissions of `aio` through reactor `r`. */
static int aio_bind(struct hv_aio *aio, struct hv_reactor *r)
{
    aio->reactor = r;
    aio->watch = hv_reactor_add_fd(r, aio->efd, EPOLLIN, on_eventfd, aio);
    if (!aio->watch)
        return -errno;
    aio->prepoll = hv_reactor_add_prepoll(r, submit_queued, aio);
    if (aio->prepoll < 0)
        return aio->prepoll;
    return 0;
}

static void aio_unbind(struct hv_aio *aio)
{
    if (aio->prepoll >= 0)
        hv_reactor_del_prepoll(aio->reactor, aio->prepoll);
    aio->prepoll = -1;
    if (aio->watch)
        hv_reactor_del_fd(aio->reactor, aio->watch);
    aio->watch = NULL;
    aio->reactor = NULL;
}

int hv_aio_create(struct hv_reactor *r, unsigned depth, struct hv_aio **out)
{
    int ret;
    struct hv_aio *aio = calloc(1, sizeof(*aio));
    if (!aio)
        return -ENOMEM;
    aio->reactor = r;
    aio->depth = depth ? depth : 128;
    aio->efd = -1;
    aio->prepoll = -1;
    aio->batch = calloc(aio->depth, sizeof(*aio->batch));
    aio->events = calloc(aio->depth, sizeof(*aio->events));
    if (!aio->batch || !aio->events) {
        ret = -ENOMEM;
        goto fail;
    }
    ret = io_setup((int)aio->depth, &aio->ctx);
    if (ret < 0)
        goto fail;
    aio->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (aio->efd < 0) {
        ret = -errno;
        goto fail;
    }
    ret = aio_bind(aio, r);
    if (ret < 0)
        goto fail;
    *out = aio;
    return 0;
fail:
    hv_aio_destroy(aio);
    return ret;
}

static void aio_free(struct hv_aio *aio)
{
    aio_unbind(aio);
    if (aio->efd >= 0)
        close(aio->efd);
    if (aio->ctx)
        io_destroy(aio->ctx);
    free(aio->batch);
    free(aio->events);
    free(aio);
}

void hv_aio_destroy(struct hv_aio *aio)
{
    if (!aio)
        return;
    if (aio->is_dispatching)
        aio->is_doomed = true;
    else
        aio_free(aio);
}

int hv_aio_get(struct hv_reactor *r, unsigned depth, struct hv_aio **out)
{
    struct hv_aio *aio;
    int ret;

    pthread_mutex_lock(&shared_lock);
    for (aio = shared_list; aio; aio = aio->next_shared) {
        if (aio->reactor == r && !aio->is_doomed) {
            aio->refs++;
            pthread_mutex_unlock(&shared_lock);
            *out = aio;
            return 0;
        }
    }
    aio = NULL;
    depth = HV_MAX(depth, HV_AIO_SHARED_DEPTH);
    for (unsigned i = 0; i < idle_count; i++) {
        if (idle_pool[i]->depth >= depth) {
            aio = idle_pool[i];
            idle_pool[i] = idle_pool[--idle_count];
            break;
        }
    }
    pthread_mutex_unlock(&shared_lock);
    if (aio) {
        ret = aio_bind(aio, r);
        if (ret < 0) {
            aio_free(aio);
            return ret;
        }
    } else {
        /* Only this reactor's thread creates its context: no race on `r`. */
        ret = hv_aio_create(r, depth, &aio);
        if (ret < 0)
            return ret;
    }
    aio->is_shared = true;
    aio->refs = 1;
    pthread_mutex_lock(&shared_lock);
    aio->next_shared = shared_list;
    shared_list = aio;
    pthread_mutex_unlock(&shared_lock);
    *out = aio;
    return 0;
}

void hv_aio_put(struct hv_aio *aio)
{
    if (!aio)
        return;
    if (!aio->is_shared) {
        hv_aio_destroy(aio);
        return;
    }
    pthread_mutex_lock(&shared_lock);
    if (--aio->refs > 0) {
        pthread_mutex_unlock(&shared_lock);
        return;
    }
    for (struct hv_aio **pp = &shared_list; *pp; pp = &(*pp)->next_shared) {
        if (*pp == aio) {
            *pp = aio->next_shared;
            break;
        }
    }
    if (!aio->is_dispatching && idle_count < IDLE_MAX && aio->in_kernel == 0 &&
        aio->queued == 0) {
        aio_unbind(aio);
        aio->is_shared = false;
        idle_pool[idle_count++] = aio;
        pthread_mutex_unlock(&shared_lock);
        return;
    }
    pthread_mutex_unlock(&shared_lock);
    hv_aio_destroy(aio);
}

static void prep_common(struct hv_aio_req *req)
{
    iocb_of(req)->data = req;
}

void hv_aio_prep_readv(struct hv_aio_req *req, int fd, const struct iovec *iov, int iovcnt,
                       uint64_t offset)
{
    io_prep_preadv(iocb_of(req), fd, iov, iovcnt, (long long)offset);
    prep_common(req);
}

void hv_aio_prep_writev(struct hv_aio_req *req, int fd, const struct iovec *iov, int iovcnt,
                        uint64_t offset)
{
    io_prep_pwritev(iocb_of(req), fd, iov, iovcnt, (long long)offset);
    prep_common(req);
}

void hv_aio_prep_fdsync(struct hv_aio_req *req, int fd)
{
    io_prep_fdsync(iocb_of(req), fd);
    prep_common(req);
}

void hv_aio_set_rw_flags(struct hv_aio_req *req, int rwf_flags)
{
    iocb_of(req)->aio_rw_flags = (unsigned)rwf_flags;
}

void hv_aio_submit(struct hv_aio *aio, struct hv_aio_req *req)
{
    io_set_eventfd(iocb_of(req), aio->efd);
    req->next = NULL;
    if (aio->tail)
        aio->tail->next = req;
    else
        aio->head = req;
    aio->tail = req;
    aio->queued++;
}

unsigned hv_aio_inflight(const struct hv_aio *aio)
{
    return aio->in_kernel + aio->queued;
}
