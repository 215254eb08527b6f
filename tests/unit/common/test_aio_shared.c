/* Unit tests for the shared libaio context: one per reactor, counted, and
 * kernel contexts reused across short-lived reactors so that opening and
 * closing bdevs does not pay io_destroy's RCU grace period each time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "common.h"
#include "testlib.h"

static void test_one_shared_context_per_reactor(void **state)
{
    (void)state;
    struct hv_reactor *r1;
    struct hv_reactor *r2;
    struct hv_aio *a;
    struct hv_aio *b;
    struct hv_aio *c;

    assert_int_equal(hv_reactor_create(&r1), 0);
    assert_int_equal(hv_reactor_create(&r2), 0);
    assert_int_equal(hv_aio_get(r1, 64, &a), 0);
    assert_int_equal(hv_aio_get(r1, 4096, &b), 0);
    assert_int_equal(hv_aio_get(r2, 64, &c), 0);
    assert_ptr_equal(a, b);
    assert_ptr_not_equal(a, c);
    hv_aio_put(b);
    hv_aio_put(c);
    hv_aio_put(a);
    /* Every watch is gone: destroying the reactors is allowed. */
    hv_reactor_destroy(r1);
    hv_reactor_destroy(r2);
}

static void write_read(struct bdev *bd, uint64_t seed)
{
    uint8_t *w = hv_alloc_aligned(8192);
    uint8_t *r = hv_alloc_aligned(8192);
    t_fill(w, 8192, seed);
    assert_int_equal(bdev_write_sync(bd, 4096, w, 8192, 0), 0);
    assert_int_equal(bdev_read_sync(bd, 4096, r, 8192), 0);
    assert_memory_equal(w, r, 8192);
    free(w);
    free(r);
}

/* Two raw bdevs on one reactor share a context and both work; then many
 * open/close cycles, each on a fresh reactor, cost far less than one
 * io_destroy (30-40 ms) per cycle. */
static void test_raw_bdevs_share_and_reopen_cheaply(void **state)
{
    (void)state;
    struct bdev_raw_options o = { .create = true, .size_bytes = HV_MiB, .use_direct_io = true };
    struct hv_err err = { 0 };
    struct hv_reactor *r;
    struct bdev *x;
    struct bdev *y;

    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(bdev_raw_open(r, t_path("x.raw"), &o, &x, &err), 0);
    assert_int_equal(bdev_raw_open(r, t_path("y.raw"), &o, &y, &err), 0);
    write_read(x, 1);
    write_read(y, 2);
    assert_int_equal(bdev_close(x), 0);
    write_read(y, 3);
    assert_int_equal(bdev_close(y), 0);
    hv_reactor_destroy(r);

    o.create = false;
    uint64_t t0 = hv_now_ns();
    for (int i = 0; i < 40; i++) {
        assert_int_equal(hv_reactor_create(&r), 0);
        assert_int_equal(bdev_raw_open(r, t_path("x.raw"), &o, &x, &err), 0);
        write_read(x, (uint64_t)i);
        assert_int_equal(bdev_close(x), 0);
        hv_reactor_destroy(r);
    }
    uint64_t ms = (hv_now_ns() - t0) / 1000000;
    print_message("40 open/write/read/close cycles: %llu ms\n", (unsigned long long)ms);
    /* 40 io_destroy calls alone take 1.2-1.6 s here. */
    assert_true(ms < 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_shared_context_per_reactor),
        cmocka_unit_test(test_raw_bdevs_share_and_reopen_cheaply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
