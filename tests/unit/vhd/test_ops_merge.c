/* vhd_merge on real chains: the ancestor afterwards reads byte for byte what
 * the child's chain read before (compared with a raw `vhd convert` taken
 * before the merge), the children are gone, vhd check is clean, and other
 * readers (qemu-img, vhdiinfo) agree. */
#include "ops_helpers.h"

static void test_merge_child_into_dynamic_parent_reads_as_the_chain_did(void **state)
{
    (void)state;
    const char *base = t_path("m1-base.vhd");
    const char *child = t_path("m1-child.vhd");
    const char *raw = t_path("m1-before.raw");
    h_create(base, VHD_TYPE_DYNAMIC, 24 * MiB + 4096, 0, NULL);
    h_write(base, 0, 6 * MiB, 11);
    h_write(base, 20 * MiB, 4 * MiB + 4096, 12);
    h_create(child, VHD_TYPE_DIFFERENCING, 0, 0, base);
    h_write(child, 1 * MiB + 512, 3 * 4096 + 1024, 21); /* partial sectors in a group */
    h_write(child, 5 * MiB, 2 * MiB, 22);               /* straddles a block */
    h_write(child, 9 * MiB, 512 * 1024, 0);             /* zeroes over parent's nothing */
    h_write(child, 2 * MiB, 64 * 1024, 0);              /* zeroes masking parent data */
    h_write(child, 24 * MiB, 4096, 23);                 /* the last, partial block */
    h_convert_raw(child, raw);

    struct vhd_merge_result res;
    struct hv_err err = {0};
    int rc = vhd_merge(child, NULL, &res, &err);
    if (rc != 0)
        fail_msg("merge: %s", err.msg);
    assert_int_equal(res.merged_count, 1);
    assert_false(h_exists(child));
    h_same_as_raw(base, raw);
    h_check_clean(base);
    if (h_have("qemu-img")) {
        assert_int_equal(t_run(NULL, 0, "qemu-img compare -q -f vpc '%s' -F raw '%s'", base, raw),
                         0);
    }
    if (h_have("vhdiinfo"))
        assert_int_equal(t_run(NULL, 0, "vhdiinfo '%s' >/dev/null 2>&1", base), 0);
}

static void test_merge_run_of_children_into_base_deletes_them_top_first(void **state)
{
    (void)state;
    const char *base = t_path("m2-base.vhd");
    const char *c1 = t_path("m2-c1.vhd");
    const char *c2 = t_path("m2-c2.vhd");
    const char *c3 = t_path("m2-c3.vhd");
    const char *raw = t_path("m2-before.raw");
    h_create(base, VHD_TYPE_FIXED, 16 * MiB, 0, NULL);
    h_write(base, 0, 16 * MiB, 31);
    h_create(c1, VHD_TYPE_DIFFERENCING, 0, 512 * 1024, base);
    h_write(c1, 1 * MiB, 3 * MiB, 32);
    h_create(c2, VHD_TYPE_DIFFERENCING, 0, 0, c1); /* another block size */
    h_write(c2, 2 * MiB + 4096, 5 * MiB, 33);
    h_create(c3, VHD_TYPE_DIFFERENCING, 0, 0, c2);
    h_write(c3, 7 * MiB, 8192, 34);
    h_write(c3, 12 * MiB, 1 * MiB, 0);
    h_convert_raw(c3, raw);

    struct vhd_merge_options o = {.into = base};
    struct vhd_merge_result res;
    struct hv_err err = {0};
    if (vhd_merge(c3, &o, &res, &err) != 0)
        fail_msg("merge: %s", err.msg);
    assert_int_equal(res.merged_count, 3);
    assert_false(h_exists(c3));
    assert_false(h_exists(c2));
    assert_false(h_exists(c1));
    h_same_as_raw(base, raw);
    h_check_clean(base);
}

static void test_merge_into_middle_of_chain_keeps_lower_layers(void **state)
{
    (void)state;
    const char *base = t_path("m3-base.vhd");
    const char *mid = t_path("m3-mid.vhd");
    const char *top = t_path("m3-top.vhd");
    const char *raw = t_path("m3-before.raw");
    h_create(base, VHD_TYPE_DYNAMIC, 8 * MiB, 0, NULL);
    h_write(base, 0, 8 * MiB, 41);
    h_create(mid, VHD_TYPE_DIFFERENCING, 0, 0, base);
    h_write(mid, 3 * MiB, 1 * MiB, 42);
    h_create(top, VHD_TYPE_DIFFERENCING, 0, 0, mid);
    h_write(top, 3 * MiB + 512 * 1024, 2 * MiB, 43);
    h_write(top, 100 * 512, 3 * 512, 44); /* partial group: copy-up below */
    h_convert_raw(top, raw);
    struct vhd_merge_result res;
    struct hv_err err = {0};
    if (vhd_merge(top, NULL, &res, &err) != 0)
        fail_msg("merge: %s", err.msg);
    h_same_as_raw(mid, raw);
    h_check_clean(mid);
    h_check_clean(base);
}

static void test_merge_refuses_when_a_sibling_uses_the_parent_unless_forced(void **state)
{
    (void)state;
    const char *base = t_path("m4-base.vhd");
    const char *a = t_path("m4-a.vhd");
    const char *b = t_path("m4-b.vhd");
    const char *raw = t_path("m4-a.raw");
    h_create(base, VHD_TYPE_DYNAMIC, 4 * MiB, 0, NULL);
    h_create(a, VHD_TYPE_DIFFERENCING, 0, 0, base);
    h_create(b, VHD_TYPE_DIFFERENCING, 0, 0, base);
    h_write(a, 0, 1 * MiB, 51);
    h_convert_raw(a, raw);
    struct vhd_merge_result res;
    struct hv_err err = {0};
    assert_int_equal(vhd_merge(a, NULL, &res, &err), -EBUSY);
    assert_non_null(strstr(err.msg, "m4-b.vhd"));
    assert_true(h_exists(a));
    struct vhd_merge_options o = {.is_forced = true};
    if (vhd_merge(a, &o, &res, &err) != 0)
        fail_msg("forced merge: %s", err.msg);
    h_same_as_raw(base, raw);
}

static void test_merge_refuses_images_without_parent_and_foreign_ancestors(void **state)
{
    (void)state;
    const char *base = t_path("m5-base.vhd");
    const char *other = t_path("m5-other.vhd");
    const char *child = t_path("m5-child.vhd");
    h_create(base, VHD_TYPE_DYNAMIC, 4 * MiB, 0, NULL);
    h_create(other, VHD_TYPE_DYNAMIC, 4 * MiB, 0, NULL);
    h_create(child, VHD_TYPE_DIFFERENCING, 0, 0, base);
    struct vhd_merge_result res;
    struct hv_err err = {0};
    assert_int_equal(vhd_merge(base, NULL, &res, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "not a differencing image"));
    struct vhd_merge_options o = {.into = other};
    assert_int_equal(vhd_merge(child, &o, &res, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "not an ancestor"));
    assert_true(h_exists(child));
}

static void test_merge_grows_the_ancestor_for_a_grown_child(void **state)
{
    (void)state;
    const char *base = t_path("m6-base.vhd");
    const char *child = t_path("m6-child.vhd");
    const char *raw = t_path("m6.raw");
    h_create(base, VHD_TYPE_DYNAMIC, 4 * MiB, 0, NULL);
    h_write(base, 0, 4 * MiB, 61);
    h_create(child, VHD_TYPE_DIFFERENCING, 0, 0, base);
    struct hv_err err = {0};
    if (vhd_resize(child, 10 * MiB + 512, NULL, &err) != 0)
        fail_msg("resize: %s", err.msg);
    h_write(child, 3 * MiB, 3 * MiB, 62);
    h_convert_raw(child, raw);
    struct vhd_merge_result res;
    if (vhd_merge(child, NULL, &res, &err) != 0)
        fail_msg("merge: %s", err.msg);
    h_same_as_raw(base, raw);
    h_check_clean(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge_child_into_dynamic_parent_reads_as_the_chain_did),
        cmocka_unit_test(test_merge_run_of_children_into_base_deletes_them_top_first),
        cmocka_unit_test(test_merge_into_middle_of_chain_keeps_lower_layers),
        cmocka_unit_test(test_merge_refuses_when_a_sibling_uses_the_parent_unless_forced),
        cmocka_unit_test(test_merge_refuses_images_without_parent_and_foreign_ancestors),
        cmocka_unit_test(test_merge_grows_the_ancestor_for_a_grown_child),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
