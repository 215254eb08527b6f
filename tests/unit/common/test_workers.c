/* Unit tests for common/worker.c: blocking work off the reactor thread,
 * completions back on it, in order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "testlib.h"

#define N_WORK 200

struct job {
    struct hv_work work;
    int index;
    pthread_t ran_on;
    bool has_run;
    int *order; /* done() appends index here */
    int *norder;
    pthread_t reactor_thread;
};

static void job_run(struct hv_work *w)
{
    struct job *j = hv_container_of(w, struct job, work);
    j->ran_on = pthread_self();
    /* Some work takes longer than other work, as fsyncs do. */
    if (j->index % 7 == 0)
        usleep(200);
    j->has_run = true;
}

static void job_done(struct hv_work *w)
{
    struct job *j = hv_container_of(w, struct job, work);
    /* done() runs after run(), on the reactor's thread, exactly once. */
    assert_true(j->has_run);
    assert_true(pthread_equal(pthread_self(), j->reactor_thread));
    j->order[(*j->norder)++] = j->index;
}

/* N_WORK jobs whose done() appends their index to order[]. */
static void queue_jobs(struct hv_workers *p, struct job *jobs, int *order, int *norder)
{
    for (int i = 0; i < N_WORK; i++) {
        jobs[i] = (struct job){.work = {.run = job_run, .done = job_done},
                               .index = i,
                               .order = order,
                               .norder = norder,
                               .reactor_thread = pthread_self()};
        hv_workers_queue(p, &jobs[i].work);
    }
}

/* Turn the reactor until no work is left (10 s at most: a hang fails the
 * counts that follow instead of hanging the test). */
static void drain(struct hv_reactor *r, struct hv_workers *p)
{
    uint64_t start = hv_now_ns();
    while (hv_workers_pending(p) && hv_now_ns() - start < 10000000000ull)
        hv_reactor_run_once(r, 100);
}

static void test_one_thread_completes_in_queue_order_on_the_reactor(void **state)
{
    (void)state;
    struct hv_reactor *r;
    struct hv_workers *p;
    struct hv_err err = {0};
    static struct job jobs[N_WORK];
    static int order[N_WORK];
    int norder = 0;
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(hv_workers_create(r, 1, "test", &p, &err), 0);
    queue_jobs(p, jobs, order, &norder);
    assert_int_equal(hv_workers_pending(p), N_WORK);
    drain(r, p);
    assert_int_equal(norder, N_WORK);
    for (int i = 0; i < N_WORK; i++) {
        assert_int_equal(order[i], i);
        assert_false(pthread_equal(jobs[i].ran_on, pthread_self()));
    }
    hv_workers_destroy(p);
    hv_reactor_destroy(r);
}

static void test_many_threads_complete_every_work_once(void **state)
{
    (void)state;
    struct hv_reactor *r;
    struct hv_workers *p;
    struct hv_err err = {0};
    static struct job jobs[N_WORK];
    static int order[N_WORK];
    int norder = 0;
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(hv_workers_create(r, 4, "test", &p, &err), 0);
    queue_jobs(p, jobs, order, &norder);
    drain(r, p);
    assert_int_equal(norder, N_WORK);
    /* Each index exactly once, whatever order the threads finished in. */
    static bool seen[N_WORK];
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < N_WORK; i++) {
        assert_false(seen[order[i]]);
        seen[order[i]] = true;
    }
    hv_workers_destroy(p);
    hv_reactor_destroy(r);
}

/* A timer keeps firing while hv_workers_run waits for a slow call: the
 * reactor (the guest's I/O) is served meanwhile. */
struct ticker {
    struct hv_reactor *r;
    struct hv_timer t;
    int ticks;
};

static void tick(void *arg)
{
    struct ticker *k = arg;
    k->ticks++;
    hv_timer_arm(k->r, &k->t, 1, tick, k);
}

static int slow_fsync(void *arg)
{
    const char *path = arg;
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    char buf[4096] = {1};
    int ret = 0;
    if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf) || fsync(fd) < 0)
        ret = -EIO;
    close(fd);
    usleep(50000); /* longer than many ticks, whatever the disk does */
    return ret == 0 ? 42 : ret;
}

static void test_run_serves_the_reactor_while_the_call_blocks(void **state)
{
    (void)state;
    struct hv_reactor *r;
    struct hv_workers *p;
    struct hv_err err = {0};
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(hv_workers_create(r, 1, "test", &p, &err), 0);
    struct ticker k = {.r = r};
    hv_timer_arm(r, &k.t, 1, tick, &k);
    int ret = hv_workers_run(p, slow_fsync, (void *)t_path("synced"));
    assert_int_equal(ret, 42);
    assert_true(k.ticks >= 5);
    struct stat st;
    assert_int_equal(stat(t_path("synced"), &st), 0);
    assert_int_equal(st.st_size, 4096);
    hv_timer_cancel(r, &k.t);
    assert_int_equal(hv_workers_pending(p), 0);
    hv_workers_destroy(p);
    hv_reactor_destroy(r);
}

static void test_create_refuses_zero_threads_with_a_message(void **state)
{
    (void)state;
    struct hv_reactor *r;
    struct hv_workers *p = NULL;
    struct hv_err err = {0};
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(hv_workers_create(r, 0, "disk7", &p, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "disk7"));
    assert_null(p);
    hv_reactor_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_thread_completes_in_queue_order_on_the_reactor),
        cmocka_unit_test(test_many_threads_complete_every_work_once),
        cmocka_unit_test(test_run_serves_the_reactor_while_the_call_blocks),
        cmocka_unit_test(test_create_refuses_zero_threads_with_a_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
