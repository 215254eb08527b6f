/* Unit tests for online growth of a VHD bdev (the bdev resize op): data
 * written before stays, the new space reads zeroes and takes writes, the
 * image checks clean and qemu-img and vhdiinfo report the exact new size,
 * also when the BAT has to move (no spare entries); shrinking and sizes past
 * 2040 GiB are refused with a clear message. */
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

/* `vhd check` exit status of `path` (its first problem printed). */
static int check_status(const char *path)
{
    struct vhd_check_report rep;
    struct hv_err err = { 0 };
    int rc = vhd_check(path, &rep, &err);
    if (rc < 0)
        fail_msg("vhd check %s: %s", path, err.msg);
    if (rep.problem_count)
        print_message("vhd check %s: %s\n", path, rep.problems[0].msg);
    vhd_check_report_free(&rep);
    return rc;
}

static void expect_clean_and_qemu_size(const char *path, uint64_t size)
{
    char out[256];
    char want[64];
    assert_int_equal(check_status(path), VHD_CHECK_CLEAN);
    snprintf(want, sizeof(want), "%" PRIu64 "\n", size);
    if (t_run(NULL, 0, "command -v qemu-img >/dev/null") == 0) {
        assert_int_equal(t_run(out, sizeof(out), "qemu-img info --output=json -f vpc '%s' | "
                               "sed -n 's/.*\"virtual-size\": *\\([0-9]*\\).*/\\1/p'", path), 0);
        assert_string_equal(out, want);
    }
    if (t_run(NULL, 0, "command -v vhdiinfo >/dev/null") == 0) {
        assert_int_equal(t_run(out, sizeof(out), "vhdiinfo '%s' | sed -n 's/.*Media size.*"
                               "(\\([0-9]*\\) bytes).*/\\1/p'", path), 0);
        assert_string_equal(out, want);
    }
}

/* Zeroes in [from, to): all of it when small, else its first and last MiB
 * and a MiB in the middle (a large disk is not read whole). */
static void expect_zero(struct bdev *bd, uint64_t from, uint64_t to)
{
    if (to - from <= 32 * HV_MiB) {
        expect(bd, from, NULL, to - from);
        return;
    }
    expect(bd, from, NULL, HV_MiB);
    expect(bd, HV_ALIGN_DOWN(from + (to - from) / 2, 4096), NULL, HV_MiB);
    expect(bd, to - HV_MiB, NULL, HV_MiB);
}

/* Grow the image at `path` (created with size `from` when `type` is given)
 * online while it holds data at both ends of the old size; the data stays,
 * the new space reads zeroes and takes writes, before and after reopening. */
static void grow_and_check(const char *path, int type, uint64_t from, uint64_t to)
{
    struct hv_err err = { 0 };
    uint8_t *a = hv_alloc_aligned(64 * 1024);
    uint8_t *b = hv_alloc_aligned(64 * 1024);
    struct vhd_open_options o = { .queue_depth = 16 };
    struct bdev *bd = NULL;

    if (type >= 0)
        bd = create_open(path, (enum vhd_type)type, from);
    else if (vhd_open(reactor, path, &o, &bd, &err) != 0)
        fail_msg("open %s: %s", path, err.msg);
    assert_int_equal(bd->size_bytes, from);
    t_fill(a, 64 * 1024, from);
    t_fill(b, 64 * 1024, to);
    assert_int_equal(bdev_write_sync(bd, 0, a, 64 * 1024, 0), 0);
    assert_int_equal(bdev_write_sync(bd, from - 64 * 1024, a, 64 * 1024, 0), 0);
    assert_int_not_equal(bdev_write_sync(bd, from, b, 4096, 0), 0);    /* past the end */
    if (bd->ops->resize(bd, to, &err) != 0)
        fail_msg("resize: %s", err.msg);
    assert_int_equal(bd->size_bytes, to);
    expect(bd, 0, a, 64 * 1024);
    expect(bd, from - 64 * 1024, a, 64 * 1024);
    expect_zero(bd, from, to);
    assert_int_equal(bdev_write_sync(bd, to - 64 * 1024, b, 64 * 1024, 0), 0);
    expect(bd, to - 64 * 1024, b, 64 * 1024);
    assert_int_equal(bdev_close(bd), 0);
    expect_clean_and_qemu_size(path, to);

    /* Reopened: the new size and all data are there. */
    assert_int_equal(vhd_open(reactor, path, &o, &bd, &err), 0);
    assert_int_equal(bd->size_bytes, to);
    expect(bd, 0, a, 64 * 1024);
    expect(bd, from - 64 * 1024, a, 64 * 1024);
    if (to - from > 64 * 1024)
        expect_zero(bd, from, to - 64 * 1024);
    expect(bd, to - 64 * 1024, b, 64 * 1024);
    assert_int_equal(bdev_close(bd), 0);
    free(a);
    free(b);
}

static void test_fixed_grows_online(void **state)
{
    (void)state;
    grow_and_check(t_path("fixed.vhd"), VHD_TYPE_FIXED, 16 * HV_MiB, 24 * HV_MiB + 4096);
}

/* 101 MiB needs 51 2-MiB entries: the BAT covers 102 MiB. */
static void test_dynamic_grows_within_its_bat(void **state)
{
    (void)state;
    grow_and_check(t_path("dyn.vhd"), VHD_TYPE_DYNAMIC, 101 * HV_MiB, 102 * HV_MiB);
}

/* 64 MiB uses 32 of the 128 entries of its one BAT sector: growing to
 * 200 MiB takes 100 of them (the header's max_table_entries grows). */
static void test_dynamic_grows_into_unused_bat_entries(void **state)
{
    (void)state;
    grow_and_check(t_path("dyn2.vhd"), VHD_TYPE_DYNAMIC, 64 * HV_MiB, 200 * HV_MiB + 512);
}

/* 64 MiB of 512 KiB blocks fill the BAT's one sector (128 entries): 1 GiB
 * needs a new BAT, written after the last block. */
static void test_dynamic_grows_past_a_full_bat(void **state)
{
    (void)state;
    struct vhd_create_options c = { .type = VHD_TYPE_DYNAMIC, .size_bytes = 64 * HV_MiB,
                                    .block_bytes = 512 * 1024 };
    struct hv_err err = { 0 };
    const char *path = t_path("full.vhd");
    unlink(path);
    assert_int_equal(vhd_create(path, &c, &err), 0);
    grow_and_check(path, -1, 64 * HV_MiB, 1 * HV_GiB + 4096);
    struct vhd_info info;
    assert_int_equal(vhd_inspect(path, &info, &err), 0);
    assert_int_equal(info.max_table_entries, 2049);     /* 128 fit where it was */

    /* The old table's place is a hole: compact keeps the image clean and
     * what it reads; offline resize grows the moved BAT in place (nothing
     * lies after it once the file is trimmed), online moves it again. */
    uint8_t *a = hv_alloc_aligned(64 * 1024);
    uint8_t *got = hv_alloc_aligned(64 * 1024);
    struct vhd_compact_options co = { 0 };
    struct vhd_compact_result cr;
    struct vhd_open_options o = { .queue_depth = 16 };
    struct bdev *bd;
    assert_int_equal(vhd_compact(path, &co, &cr, &err), 0);
    assert_int_equal(check_status(path), VHD_CHECK_CLEAN);
    assert_int_equal(vhd_resize(path, 2 * HV_GiB, NULL, &err), 0);
    assert_int_equal(check_status(path), VHD_CHECK_CLEAN);
    assert_int_equal(vhd_open(reactor, path, &o, &bd, &err), 0);
    if (bd->ops->resize(bd, 64 * HV_GiB, &err) != 0)
        fail_msg("resize: %s", err.msg);
    t_fill(a, 64 * 1024, 64 * HV_MiB);
    expect(bd, 0, a, 64 * 1024);
    expect(bd, 64 * HV_MiB - 64 * 1024, a, 64 * 1024);
    assert_int_equal(bdev_write_sync(bd, 64 * HV_GiB - 4096, a, 4096, 0), 0);
    assert_int_equal(bdev_close(bd), 0);
    expect_clean_and_qemu_size(path, 64 * HV_GiB);
    assert_int_equal(vhd_open(reactor, path, &o, &bd, &err), 0);
    assert_int_equal(bdev_read_sync(bd, 64 * HV_GiB - 4096, got, 4096), 0);
    assert_memory_equal(got, a, 4096);
    expect(bd, 0, a, 64 * 1024);
    assert_int_equal(bdev_close(bd), 0);
    free(a);
    free(got);
}

/* 10 GiB with 2 MiB blocks: 5,120 entries fill 40 sectors exactly, so any
 * growth moves the BAT; then again from 40 GiB to 127 GiB + 4 KiB (the BAT
 * moves a second time, after blocks written at 40 GiB). */
static void test_dynamic_10g_to_40g_to_127g(void **state)
{
    (void)state;
    const char *path = t_path("dyn10g.vhd");
    grow_and_check(path, VHD_TYPE_DYNAMIC, 10 * HV_GiB, 40 * HV_GiB);
    grow_and_check(path, -1, 40 * HV_GiB, 127 * HV_GiB + 4096);
}

/* A differencing child (locators right after its BAT) grows past its BAT
 * and past its parent: the new space reads zeroes, the parent's data
 * shows through below. */
static void test_differencing_grows_past_its_bat(void **state)
{
    (void)state;
    const char *parent = t_path("parent.vhd");
    const char *child = t_path("child.vhd");
    struct hv_err err = { 0 };
    uint8_t *p = hv_alloc_aligned(HV_MiB);
    uint8_t *w = hv_alloc_aligned(HV_MiB);
    struct bdev *bd = create_open(parent, VHD_TYPE_DYNAMIC, 64 * HV_MiB);
    t_fill(p, HV_MiB, 7);
    assert_int_equal(bdev_write_sync(bd, 32 * HV_MiB, p, HV_MiB, 0), 0);
    assert_int_equal(bdev_close(bd), 0);
    struct vhd_create_options c = { .type = VHD_TYPE_DIFFERENCING, .parent_path = parent,
                                    .block_bytes = 512 * 1024 };
    struct vhd_open_options o = { .queue_depth = 16 };
    unlink(child);
    assert_int_equal(vhd_create(child, &c, &err), 0);
    assert_int_equal(vhd_open(reactor, child, &o, &bd, &err), 0);
    t_fill(w, HV_MiB, 8);
    assert_int_equal(bdev_write_sync(bd, 63 * HV_MiB, w, HV_MiB, 0), 0);
    assert_int_equal(bdev_write_sync(bd, 32 * HV_MiB + 512, w, 4096, 0), 0);
    if (bd->ops->resize(bd, 300 * HV_MiB + 512, &err) != 0)
        fail_msg("resize: %s", err.msg);
    expect(bd, 63 * HV_MiB, w, HV_MiB);
    expect(bd, 32 * HV_MiB, p, 512);
    expect(bd, 32 * HV_MiB + 512, w, 4096);
    expect(bd, 32 * HV_MiB + 4608, p + 4608, HV_MiB - 4608);
    expect(bd, 64 * HV_MiB, NULL, 236 * HV_MiB + 512);
    assert_int_equal(bdev_write_sync(bd, 300 * HV_MiB - HV_MiB, w, HV_MiB, 0), 0);
    assert_int_equal(bdev_close(bd), 0);
    expect_clean_and_qemu_size(child, 300 * HV_MiB + 512);
    assert_int_equal(vhd_open(reactor, child, &o, &bd, &err), 0);
    assert_int_equal(bd->size_bytes, 300 * HV_MiB + 512);
    expect(bd, 63 * HV_MiB, w, HV_MiB);
    expect(bd, 32 * HV_MiB, p, 512);
    expect(bd, 299 * HV_MiB, w, HV_MiB);
    assert_int_equal(bdev_close(bd), 0);
    free(p);
    free(w);
}

/* The largest VHD: 1,044,480 entries (4 MiB of BAT), written once. */
static void test_dynamic_grows_to_2040g(void **state)
{
    (void)state;
    grow_and_check(t_path("max.vhd"), VHD_TYPE_DYNAMIC, 40 * HV_GiB, VHD_MAX_SIZE_BYTES);
}

static void test_shrink_and_too_large_are_refused(void **state)
{
    (void)state;
    const char *path = t_path("refuse.vhd");
    struct hv_err err = { 0 };
    struct bdev *bd = create_open(path, VHD_TYPE_DYNAMIC, 64 * HV_MiB);

    assert_int_equal(bd->ops->resize(bd, 32 * HV_MiB, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "shrinking"));
    assert_non_null(strstr(err.msg, "vhd resize"));
    assert_int_equal(bd->ops->resize(bd, VHD_MAX_SIZE_BYTES + 512, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "2040 GiB"));
    assert_int_equal(bd->ops->resize(bd, 64 * HV_MiB + 100, &err), -EINVAL);
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
        cmocka_unit_test(test_dynamic_grows_past_a_full_bat),
        cmocka_unit_test(test_dynamic_10g_to_40g_to_127g),
        cmocka_unit_test(test_differencing_grows_past_its_bat),
        cmocka_unit_test(test_dynamic_grows_to_2040g),
        cmocka_unit_test(test_shrink_and_too_large_are_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
