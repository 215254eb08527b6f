/* vhd_compact and vhd_resize on real images: what the image reads is
 * compared byte for byte with a raw `vhd convert` taken before (compact
 * changes nothing; resize keeps every byte below the smaller size and reads
 * zeroes above), the file shrinks or grows as it should, vhd check is clean
 * and qemu-img / vhdiinfo read the result. */
#include "ops_helpers.h"

static void compact(const char *path, struct vhd_compact_result *res)
{
    struct hv_err err = {0};
    if (vhd_compact(path, NULL, res, &err) != 0)
        fail_msg("compact %s: %s", path, err.msg);
}

static void test_compact_dynamic_frees_zero_and_discarded_blocks_and_shrinks(void **state)
{
    (void)state;
    const char *img = t_path("c1.vhd");
    const char *raw = t_path("c1.raw");
    h_create(img, VHD_TYPE_DYNAMIC, 32 * MiB, 0, NULL);
    h_write(img, 0, 32 * MiB, 61);             /* 16 blocks */
    h_write(img, 2 * MiB, 4 * MiB, 0);         /* two blocks of zeroes */
    h_write(img, 10 * MiB, 2 * MiB - 4096, 0); /* almost: stays */
    h_discard(img, 20 * MiB, 4 * MiB);         /* holes in the middle */
    h_convert_raw(img, raw);
    uint64_t before = h_file_bytes(img);
    struct vhd_compact_result res;
    compact(img, &res);
    assert_int_equal(res.blocks_freed, 2);
    assert_true(res.blocks_moved >= 2);
    /* The engine's close already refilled the discarded holes; the two
     * zero blocks are what compact gives back. */
    assert_true(h_file_bytes(img) <= before - 2 * (2 * MiB));
    assert_int_equal(res.file_bytes_after, h_file_bytes(img));
    h_same_as_raw(img, raw);
    h_check_clean(img);
    /* Idempotent. */
    compact(img, &res);
    assert_int_equal(res.blocks_freed, 0);
    assert_int_equal(res.blocks_moved, 0);
    h_same_as_raw(img, raw);
    if (h_have("qemu-img"))
        assert_int_equal(t_run(NULL, 0, "qemu-img compare -q -f vpc '%s' -F raw '%s'", img, raw),
                         0);
}

static void test_compact_differencing_keeps_zeroes_that_mask_the_parent(void **state)
{
    (void)state;
    const char *base = t_path("c2-base.vhd");
    const char *child = t_path("c2-child.vhd");
    const char *raw = t_path("c2.raw");
    h_create(base, VHD_TYPE_DYNAMIC, 16 * MiB, 0, NULL);
    h_write(base, 0, 4 * MiB, 71); /* parent data in blocks 0, 1 */
    h_create(child, VHD_TYPE_DIFFERENCING, 0, 0, base);
    h_write(child, 0, 2 * MiB, 0);         /* zeroes masking parent data: data */
    h_write(child, 8 * MiB, 2 * MiB, 0);   /* zeroes over parent zeroes: free */
    h_write(child, 12 * MiB, 2 * MiB, 72); /* data */
    h_convert_raw(child, raw);
    struct vhd_compact_result res;
    compact(child, &res);
    assert_int_equal(res.blocks_freed, 1);
    h_same_as_raw(child, raw);
    h_check_clean(child);
}

static void test_compact_fixed_is_a_no_op(void **state)
{
    (void)state;
    const char *img = t_path("c3.vhd");
    h_create(img, VHD_TYPE_FIXED, 4 * MiB, 0, NULL);
    uint64_t before = h_file_bytes(img);
    struct vhd_compact_result res;
    compact(img, &res);
    assert_int_equal(h_file_bytes(img), before);
    h_check_clean(img);
}

static void resize(const char *path, uint64_t size, bool force, int want)
{
    struct vhd_resize_options o = {.is_forced = force};
    struct hv_err err = {0};
    int rc = vhd_resize(path, size, &o, &err);
    if (rc != want)
        fail_msg("resize %s to %" PRIu64 ": %d (%s), wanted %d", path, size, rc, err.msg, want);
}

/* The image is `size` bytes and reads the raw snapshot up to `keep` bytes
 * (at most the raw size), zeroes after. */
static void expect_prefix_n(const char *img, const char *raw, uint64_t size, uint64_t keep)
{
    uint64_t got_size;
    uint8_t *got = h_read_all(img, &got_size);
    assert_int_equal(got_size, size);
    int fd = open(raw, O_RDONLY);
    assert_true(fd >= 0);
    uint64_t raw_size = (uint64_t)lseek(fd, 0, SEEK_END);
    uint64_t n = HV_MIN(HV_MIN(size, keep), raw_size);
    uint8_t *want = malloc(n + 1);
    assert_int_equal(hv_pread_full(fd, want, n, 0), 0);
    close(fd);
    if (memcmp(got, want, n))
        fail_msg("%s: data below %" PRIu64 " changed", img, n);
    assert_true(hv_buf_is_zero(got + n, size - n));
    free(want);
    free(got);
}

static void expect_prefix(const char *img, const char *raw, uint64_t size)
{
    expect_prefix_n(img, raw, size, size);
}

static void test_resize_dynamic_grows_in_place_and_past_its_bat(void **state)
{
    (void)state;
    const char *img = t_path("r1.vhd");
    const char *raw = t_path("r1.raw");
    h_create(img, VHD_TYPE_DYNAMIC, 10 * MiB + 512, 0, NULL);
    h_write(img, 0, 10 * MiB + 512, 81);
    h_convert_raw(img, raw);
    resize(img, 20 * MiB, false, 0); /* fits the 4 KiB BAT area */
    expect_prefix(img, raw, 20 * MiB);
    h_check_clean(img);
    resize(img, 4 * 1024 * MiB + 3 * 512, false, 0); /* BAT must move */
    expect_prefix(img, raw, 4 * 1024 * MiB + 3 * 512);
    h_check_clean(img);
    h_write(img, 4 * 1024 * MiB - 2 * MiB, 2 * MiB + 1024, 82); /* the engine uses it */
    h_check_clean(img);
    struct vhd_info info;
    assert_int_equal(vhd_inspect(img, &info, NULL), 0);
    assert_int_equal(info.size_bytes, 4 * 1024 * MiB + 3 * 512);
    if (h_have("qemu-img")) {
        char out[256];
        assert_int_equal(t_run(out, sizeof(out),
                               "qemu-img info --output=json -f vpc '%s' | "
                               "grep -o '\"virtual-size\": [0-9]*'",
                               img),
                         0);
        assert_non_null(strstr(out, "4294968832"));
    }
    if (h_have("vhdiinfo"))
        assert_int_equal(
            t_run(NULL, 0, "vhdiinfo '%s' | grep -q 'Media size.*(4294968832 bytes)'", img), 0);
}

static void test_resize_shrink_refuses_data_unless_forced(void **state)
{
    (void)state;
    const char *img = t_path("r2.vhd");
    const char *raw = t_path("r2.raw");
    h_create(img, VHD_TYPE_DYNAMIC, 16 * MiB, 0, NULL);
    h_write(img, 0, 5 * MiB, 91);
    h_write(img, 12 * MiB, 4096, 92);
    h_convert_raw(img, raw);
    resize(img, 8 * MiB, false, -ENOTEMPTY);
    expect_prefix(img, raw, 16 * MiB);
    resize(img, 8 * MiB, true, 0);
    expect_prefix(img, raw, 8 * MiB);
    h_check_clean(img);
    resize(img, 5 * MiB - 512, true, 0); /* inside a block */
    resize(img, 16 * MiB, false, 0);     /* grown again: zeroes, not old data */
    expect_prefix_n(img, raw, 16 * MiB, 5 * MiB - 512);
    h_check_clean(img);
}

static void test_resize_fixed_grows_and_shrinks_exactly(void **state)
{
    (void)state;
    const char *img = t_path("r3.vhd");
    const char *raw = t_path("r3.raw");
    h_create(img, VHD_TYPE_FIXED, 6 * MiB, 0, NULL);
    h_write(img, 0, 6 * MiB, 101);
    h_convert_raw(img, raw);
    resize(img, 9 * MiB + 1536, false, 0);
    assert_int_equal(h_file_bytes(img), 9 * MiB + 1536 + 512);
    expect_prefix(img, raw, 9 * MiB + 1536);
    h_check_clean(img);
    resize(img, 3 * MiB, false, -ENOTEMPTY);
    resize(img, 3 * MiB, true, 0);
    assert_int_equal(h_file_bytes(img), 3 * MiB + 512);
    expect_prefix(img, raw, 3 * MiB);
    h_check_clean(img);
    if (h_have("qemu-img"))
        assert_int_equal(t_run(NULL, 0, "qemu-img info -f vpc '%s' | grep -q '3 MiB'", img), 0);
}

static void test_resize_differencing_child_grows_over_smaller_parent(void **state)
{
    (void)state;
    const char *base = t_path("r4-base.vhd");
    const char *child = t_path("r4-child.vhd");
    const char *raw = t_path("r4.raw");
    h_create(base, VHD_TYPE_DYNAMIC, 4 * MiB, 0, NULL);
    h_write(base, 0, 4 * MiB, 111);
    h_create(child, VHD_TYPE_DIFFERENCING, 0, 0, base);
    h_write(child, 1 * MiB, 4096, 112);
    h_convert_raw(child, raw);
    resize(child, 64 * MiB, false, 0);
    expect_prefix(child, raw, 64 * MiB);
    h_write(child, 40 * MiB, 1 * MiB, 113);
    h_check_clean(child);
    h_check_clean(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compact_dynamic_frees_zero_and_discarded_blocks_and_shrinks),
        cmocka_unit_test(test_compact_differencing_keeps_zeroes_that_mask_the_parent),
        cmocka_unit_test(test_compact_fixed_is_a_no_op),
        cmocka_unit_test(test_resize_dynamic_grows_in_place_and_past_its_bat),
        cmocka_unit_test(test_resize_shrink_refuses_data_unless_forced),
        cmocka_unit_test(test_resize_fixed_grows_and_shrinks_exactly),
        cmocka_unit_test(test_resize_differencing_child_grows_over_smaller_parent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
