/*
 * worker.c — threads for the system calls a reactor must not make.
 *
 * A reactor thread serves every request of its devices; one fsync, file
 * creation, fallocate or buffered write that blocks it for 20 ms delays
 * every guest request by as much. Such calls run here instead: the work is
 * queued (an intrusive list under one mutex, no allocation), a worker thread
 * runs it, appends it to the done list and, once per batch, wakes the
 * reactor through an eventfd; the reactor then calls each done() in the
 * order the work finished. With one thread that is the order it was queued.
 */
#include "common.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define WORKERS_MAX 16

struct hv_workers {
    struct hv_reactor *reactor;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct hv_work *todo_head, *todo_tail; /* for the threads */
    struct hv_work *done_head, *done_tail; /* for the reactor */
    unsigned pending;                      /* queued, not yet done() */
    bool is_stopping;
    int efd; /* threads -> reactor */
    struct hv_watch *watch;
    pthread_t threads[WORKERS_MAX];
    unsigned thread_count;
};

static void *worker_main(void *arg)
{
    struct hv_workers *p = arg;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->todo_head && !p->is_stopping)
            pthread_cond_wait(&p->cond, &p->lock);
        struct hv_work *w = p->todo_head;
        if (!w)
            break; /* stopping, nothing left */
        p->todo_head = w->next;
        if (!p->todo_head)
            p->todo_tail = NULL;
        pthread_mutex_unlock(&p->lock);

        w->run(w);

        pthread_mutex_lock(&p->lock);
        w->next = NULL;
        bool was_empty = !p->done_head;
        if (p->done_tail)
            p->done_tail->next = w;
        else
            p->done_head = w;
        p->done_tail = w;
        if (was_empty) {
            /* One wake-up per batch; the reactor takes the whole list. */
            uint64_t one = 1;
            if (write(p->efd, &one, sizeof(one)) < 0) {
                /* The counter cannot overflow at one per batch. */
            }
        }
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* Reactor side: run done() of what the threads finished, in their order. */
static void workers_ready(void *arg, uint32_t events)
{
    struct hv_workers *p = arg;
    uint64_t n;
    (void)events;
    if (read(p->efd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        hv_warn("workers: reading the eventfd: %s", strerror(errno));
    pthread_mutex_lock(&p->lock);
    struct hv_work *w = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->lock);
    while (w) {
        struct hv_work *next = w->next;
        p->pending--;
        if (w->done)
            w->done(w);
        w = next;
    }
}

int hv_workers_create(struct hv_reactor *r, unsigned threads, const char *what,
                      struct hv_workers **out, struct hv_err *err)
{
    if (threads == 0 || threads > WORKERS_MAX)
        return hv_err_set(err, -EINVAL, "%s: %u worker threads (1..%d)", what, threads,
                          WORKERS_MAX);
    struct hv_workers *p = calloc(1, sizeof(*p));
    int ret;
    if (!p)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", what);
    p->reactor = r;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0) {
        ret = hv_err_errno(err, what, "eventfd");
        goto fail;
    }
    p->watch = hv_reactor_add_fd(r, p->efd, EPOLLIN, workers_ready, p);
    if (!p->watch) {
        ret = hv_err_errno(err, what, "watching the workers' eventfd");
        goto fail;
    }
    for (; p->thread_count < threads; p->thread_count++) {
        ret = pthread_create(&p->threads[p->thread_count], NULL, worker_main, p);
        if (ret) {
            ret = hv_err_set(err, -ret, "%s: cannot start a worker thread: %s", what,
                             strerror(ret));
            goto fail;
        }
    }
    *out = p;
    return 0;
fail:
    hv_workers_destroy(p);
    return ret;
}

void hv_workers_destroy(struct hv_workers *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->is_stopping = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->thread_count; i++)
        pthread_join(p->threads[i], NULL);
    if (p->watch)
        hv_reactor_del_fd(p->reactor, p->watch);
    if (p->efd >= 0)
        close(p->efd);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

void hv_workers_queue(struct hv_workers *p, struct hv_work *w)
{
    w->next = NULL;
    p->pending++;
    pthread_mutex_lock(&p->lock);
    if (p->todo_tail)
        p->todo_tail->next = w;
    else
        p->todo_head = w;
    p->todo_tail = w;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

unsigned hv_workers_pending(const struct hv_workers *p)
{
    return p->pending;
}

struct run_call {
    struct hv_work work;
    int (*fn)(void *arg);
    void *arg;
    int ret;
    bool is_done;
};

static void run_call_run(struct hv_work *w)
{
    struct run_call *c = hv_container_of(w, struct run_call, work);
    c->ret = c->fn(c->arg);
}

static void run_call_done(struct hv_work *w)
{
    hv_container_of(w, struct run_call, work)->is_done = true;
}

int hv_workers_run(struct hv_workers *p, int (*fn)(void *arg), void *arg)
{
    struct run_call c = {.work = {.run = run_call_run, .done = run_call_done}, .fn = fn, .arg = arg};
    hv_workers_queue(p, &c.work);
    int ret = hv_reactor_run_until(p->reactor, &c.is_done);
    if (ret < 0) {
        /* The reactor failed: the call still owns `c` on our stack, so wait
         * for the thread without serving anything else. */
        while (!c.is_done) {
            pthread_mutex_lock(&p->lock);
            bool has_done = p->done_head != NULL;
            pthread_mutex_unlock(&p->lock);
            if (has_done)
                workers_ready(p, 0);
            else
                usleep(1000);
        }
        return ret;
    }
    return c.ret;
}
