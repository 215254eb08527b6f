/* Unit tests for online growth of a VHD bdev (the bdev resize op): data
 * written before stays, the new space reads zeroes and takes writes, the
 * image checks clean and qemu-img reports the exact new size; shrinking and
 * growth past the BAT are refused with a clear message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

#include "testlib.h"
#include "vhd.h"
#include "engine_fixture.h"

static struct bdev *create_open(const char *path, enum vhd_type type, uint64_t size)
{
    struct vhd_create_options c = { .type = type, .size_bytes = size };
    struct vhd_open_options o = { .queue_depth = 16 };
    struct hv_err err = { 0 };
    struct bdev *bd = NULL;
    unlink(path);
    if (vhd_create(path, &c, &err) != 0)
        fail_msg("create %s: %s", path, err.msg);
    if (vhd_open(reactor, path, &o, &bd, &err) != 0)
        fail_msg("open %s: %s", path, err.msg);
    return bd;
}

static void expect(struct bdev *bd, uint64_t off, const uint8_t *want, uint64_t len)
{
    uint8_t *got = hv_alloc_aligned(len);
    assert_int_equal(bdev_read_sync(bd, off, got, len), 0);
    if (want)
        assert_memory_equal(got, want, len);
    else
        assert_true(hv_buf_is_zero(got, len));
    free(got);
}

static void expect_clean_and_qemu_size(const char *path, uint64_t size)
{
    struct vhd_check_report rep;
    struct hv_err err = { 0 };
    char out[256];
    char want[64];
    int rc = vhd_check(path, &rep, &err);
    if (rc != VHD_CHECK_CLEAN && rc != VHD_CHECK_LEAKED)
        fail_msg("vhd check %s: %d %s", path, rc,
                 rep.problem_count ? rep.problems[0].msg : err.msg);
    vhd_check_report_free(&rep);
    if (t_run(NULL, 0, "command -v qemu-img >/dev/null") != 0)
        return;
    assert_int_equal(t_run(out, sizeof(out), "qemu-img info --output=json -f vpc '%s' | "
                           "sed -n 's/.*\"virtual-size\": *\\([0-9]*\\).*/\\1/p'", path), 0);
    snprintf(want, sizeof(want), "%" PRIu64 "\n", size);
    assert_string_equal(out, want);
}

static void grow_and_check(enum vhd_type type, const char *name, uint64_t from, uint64_t to)
{
    const char *path = t_path(name);
    struct hv_err err = { 0 };
    uint8_t *a = hv_alloc_aligned(64 * 1024);
    uint8_t *b = hv_alloc_aligned(64 * 1024);
    struct bdev *bd = create_open(path, type, from);

    t_fill(a, 64 * 1024, 1);
    t_fill(b, 64 * 1024, 2);
    assert_int_equal(bdev_write_sync(bd, 0, a, 64 * 1024, 0), 0);
    assert_int_equal(bdev_write_sync(bd, from - 64 * 1024, a, 64 * 1024, 0), 0);
    assert_int_not_equal(bdev_write_sync(bd, from, b, 4096, 0), 0);    /* past the end */
    if (bd->ops->resize(bd, to, &err) != 0)
        fail_msg("resize: %s", err.msg);
    assert_int_equal(bd->size_bytes, to);
    expect(bd, 0, a, 64 * 1024);
    expect(bd, from - 64 * 1024, a, 64 * 1024);
    expect(bd, from, NULL, to - from);
    assert_int_equal(bdev_write_sync(bd, to - 64 * 1024, b, 64 * 1024, 0), 0);
    expect(bd, to - 64 * 1024, b, 64 * 1024);
    assert_int_equal(bdev_close(bd), 0);
    expect_clean_and_qemu_size(path, to);

    /* Reopened: the new size and all data are there. */
    struct vhd_open_options o = { 0 };
    assert_int_equal(vhd_open(reactor, path, &o, &bd, &err), 0);
    assert_int_equal(bd->size_bytes, to);
    expect(bd, 0, a, 64 * 1024);
    expect(bd, from - 64 * 1024, a, 64 * 1024);
    if (to - from > 64 * 1024)
        expect(bd, from, NULL, to - from - 64 * 1024);
    expect(bd, to - 64 * 1024, b, 64 * 1024);
    assert_int_equal(bdev_close(bd), 0);
    free(a);
    free(b);
}

static void test_fixed_grows_online(void **state)
{
    (void)state;
    grow_and_check(VHD_TYPE_FIXED, "fixed.vhd", 16 * HV_MiB, 24 * HV_MiB + 4096);
}

/* 101 MiB needs 51 2-MiB entries: the BAT covers 102 MiB. */
static void test_dynamic_grows_within_its_bat(void **state)
{
    (void)state;
    grow_and_check(VHD_TYPE_DYNAMIC, "dyn.vhd", 101 * HV_MiB, 102 * HV_MiB);
}

/* 64 MiB uses 32 of the 128 entries of its one BAT sector: growing to
 * 200 MiB takes 100 of them (the header's max_table_entries grows). */
static void test_dynamic_grows_into_unused_bat_entries(void **state)
{
    (void)state;
    grow_and_check(VHD_TYPE_DYNAMIC, "dyn2.vhd", 64 * HV_MiB, 200 * HV_MiB + 512);
}

static void test_shrink_and_growth_past_the_bat_are_refused(void **state)
{
    (void)state;
    const char *path = t_path("refuse.vhd");
    struct hv_err err = { 0 };
    struct bdev *bd = create_open(path, VHD_TYPE_DYNAMIC, 64 * HV_MiB);

    assert_int_equal(bd->ops->resize(bd, 32 * HV_MiB, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "shrinking"));
    assert_int_equal(bd->ops->resize(bd, 1 * HV_GiB, &err), -ENOSPC);
    assert_non_null(strstr(err.msg, "vhd resize"));
    assert_int_equal(bd->size_bytes, 64 * HV_MiB);
    assert_int_equal(bdev_close(bd), 0);
    expect_clean_and_qemu_size(path, 64 * HV_MiB);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixed_grows_online),
        cmocka_unit_test(test_dynamic_grows_within_its_bat),
        cmocka_unit_test(test_dynamic_grows_into_unused_bat_entries),
        cmocka_unit_test(test_shrink_and_growth_past_the_bat_are_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
