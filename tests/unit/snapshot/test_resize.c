/* Unit tests for online resize through snapshot/'s filters, as hvstord
 * stacks them: gate → cbt → cbw → raw file, and gate → cbt → top → VHD
 * (and a live child on top: refused, saying why). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "snapshot.h"
#include "testlib.h"
#include "vhd.h"

#define MIB (1024ull * 1024)
#define UNIT (64u * 1024)

static void test_raw_stack_grows_and_tracking_says_it_was_resized(void **state)
{
    struct hv_reactor *r;
    struct snap_gate *g;
    struct bdev *raw, *mid, *tracked, *bd;
    struct snap_cbw *cbw;
    struct snap_cbt *cbt;
    struct bdev_raw_options ro = {.create = true, .size_bytes = 8 * MIB};
    struct hv_err err = {0};
    const char *why = NULL;
    (void)state;

    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(snap_gate_create(r, &g), 0);
    unlink(t_path("resize.raw"));
    assert_int_equal(bdev_raw_open(r, t_path("resize.raw"), &ro, &raw, &err), 0);
    assert_int_equal(snap_cbw_wrap(raw, UNIT, 4, &mid, &cbw, &err), 0);
    assert_int_equal(snap_cbt_wrap(mid, UNIT, NULL, &tracked, &cbt, &err), 0);
    assert_int_equal(snap_gate_wrap(g, tracked, &bd, &err), 0);
    /* A fresh tracker, made reliable by a take (what a backup does). */
    uint8_t *bits = NULL;
    bool was_reliable;
    char reason[256];
    assert_int_equal(snap_cbt_take(cbt, &bits, &was_reliable, reason, sizeof(reason)), 0);
    free(bits);
    assert_true(snap_cbt_is_reliable(cbt, NULL));

    /* copy-before-write running: the resize waits for the backup. */
    assert_int_equal(snap_cbw_start(cbw), 0);
    assert_int_equal(bd->ops->resize(bd, 16 * MIB, &err), -EBUSY);
    assert_non_null(strstr(err.msg, "backup"));
    snap_cbw_stop(cbw);

    assert_int_equal(bd->ops->resize(bd, 16 * MIB, &err), 0);
    assert_int_equal(bd->size_bytes, 16 * MIB);
    assert_int_equal(snap_cbt_chunks(cbt), 16 * MIB / UNIT);
    assert_int_equal(snap_cbw_chunks(cbw), 16 * MIB / UNIT);
    assert_false(snap_cbt_is_reliable(cbt, &why));
    assert_non_null(strstr(why, "resized"));

    /* The new end is usable and tracked. */
    uint8_t *buf = hv_alloc_aligned(UNIT);
    memset(buf, 0x5a, UNIT);
    assert_int_equal(bdev_write_sync(bd, 16 * MIB - UNIT, buf, UNIT, 0), 0);
    assert_int_equal(snap_cbt_take(cbt, &bits, &was_reliable, reason, sizeof(reason)), 0);
    assert_true(snap_bit_test(bits, 16 * MIB / UNIT - 1));
    assert_false(was_reliable);
    free(bits);
    free(buf);
    assert_int_equal(bdev_close(bd), 0);
    snap_gate_destroy(g);
    hv_reactor_destroy(r);
    unlink(t_path("resize.raw"));
}

static void test_vhd_top_resizes_but_not_under_a_live_child(void **state)
{
    struct hv_reactor *r;
    struct bdev *chain, *bd, *child;
    struct snap_top *top;
    struct hv_err err = {0};
    struct vhd_create_options co = {.type = VHD_TYPE_DYNAMIC, .size_bytes = 8 * MIB};
    struct vhd_open_options oo = {0};
    char child_path[4096];
    (void)state;

    unlink(t_path("resize.vhd"));
    snprintf(child_path, sizeof(child_path), "%s", t_path("resize.cp.vhd"));
    unlink(child_path);
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(vhd_create(t_path("resize.vhd"), &co, &err), 0);
    assert_int_equal(vhd_open(r, t_path("resize.vhd"), &oo, &chain, &err), 0);
    assert_int_equal(snap_top_wrap(chain, &bd, &top, &err), 0);
    if (!chain->ops->resize) {
        /* This engine cannot resize online: the top says so plainly. */
        assert_int_equal(bd->ops->resize(bd, 16 * MIB, &err), -EOPNOTSUPP);
    } else {
        assert_int_equal(bd->ops->resize(bd, 16 * MIB, &err), 0);
        assert_int_equal(bd->size_bytes, 16 * MIB);
    }
    uint64_t size = bd->size_bytes;
    struct vhd_create_options cc = {.type = VHD_TYPE_DIFFERENCING,
                                    .parent_path = t_path("resize.vhd")};
    assert_int_equal(vhd_create(child_path, &cc, &err), 0);
    assert_int_equal(vhd_live_child_open(r, child_path, chain, &child, &err), 0);
    assert_int_equal(snap_top_switch(top, child), 0);
    int ret = bd->ops->resize(bd, size * 2, &err);
    assert_true(ret < 0);
    if (!child->ops->resize)
        assert_non_null(strstr(err.msg, "checkpoints"));
    assert_int_equal(bd->size_bytes, size);
    assert_int_equal(bdev_close(bd), 0); /* closes the child */
    assert_int_equal(bdev_close(chain), 0);
    hv_reactor_destroy(r);
    unlink(child_path);
    unlink(t_path("resize.vhd"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_stack_grows_and_tracking_says_it_was_resized),
        cmocka_unit_test(test_vhd_top_resizes_but_not_under_a_live_child),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
