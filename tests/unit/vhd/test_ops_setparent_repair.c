/* vhd_set_parent and vhd_repair on real images: a moved parent is found
 * again after set-parent (the chain reads byte for byte as before, compared
 * with a raw convert), a foreign parent is refused; damaged images (footer
 * destroyed, copy destroyed, checksum wrong, BAT entry out of range or
 * overlapping, leaked blocks, interrupted fixed resize) check clean after
 * repair with their data preserved, and the parent is never written. */
#include "ops_helpers.h"

#include <limits.h>
#include <sys/stat.h>

static void test_set_parent_relinks_after_the_parent_moved(void **state)
{
    (void)state;
    char dir2[PATH_MAX];
    const char *base = t_path("s1-base.vhd");
    const char *child = t_path("s1-child.vhd");
    const char *raw = t_path("s1.raw");
    h_create(base, VHD_TYPE_DYNAMIC, 8 * MiB, 0, NULL);
    h_write(base, 0, 8 * MiB, 121);
    h_create(child, VHD_TYPE_DIFFERENCING, 0, 0, base);
    h_write(child, 3 * MiB, 1 * MiB, 122);
    h_convert_raw(child, raw);
    snprintf(dir2, sizeof(dir2), "%s/moved-away", t_tmpdir());
    assert_int_equal(mkdir(dir2, 0755), 0);
    char moved[PATH_MAX + 32];
    snprintf(moved, sizeof(moved), "%s/renamed-base.vhd", dir2);
    assert_int_equal(rename(base, moved), 0);

    struct vhd_info info;
    uint64_t size;
    assert_int_equal(vhd_inspect(child, &info, NULL), 0);
    struct hv_err err = {0};
    struct hv_reactor *r;
    struct bdev *bd;
    struct vhd_open_options ro = {.is_read_only = true};
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(vhd_open(r, child, &ro, &bd, &err), -ENOENT);
    hv_reactor_destroy(r);

    if (vhd_set_parent(child, moved, NULL, &err) != 0)
        fail_msg("set-parent: %s", err.msg);
    h_same_as_raw(child, raw);
    h_check_clean(child);
    struct vhd_info after;
    assert_int_equal(vhd_inspect(child, &after, NULL), 0);
    assert_non_null(strstr(after.parent_absolute, "moved-away/renamed-base.vhd"));
    assert_string_equal(after.parent_relative, "./moved-away/renamed-base.vhd");
    assert_non_null(strstr(after.parent_macx, "renamed-base.vhd"));
    assert_string_equal(after.parent_name, "renamed-base.vhd");
    free(h_read_all(child, &size));
    /* Writable again through the engine, and still clean. */
    h_write(child, 0, 4096, 123);
    h_check_clean(child);
    if (h_have("vhdiinfo"))
        assert_int_equal(t_run(NULL, 0, "vhdiinfo '%s' >/dev/null 2>&1", child), 0);
}

static void test_set_parent_refuses_a_different_disk_unless_forced(void **state)
{
    (void)state;
    const char *base = t_path("s2-base.vhd");
    const char *other = t_path("s2-other.vhd");
    const char *child = t_path("s2-child.vhd");
    h_create(base, VHD_TYPE_DYNAMIC, 4 * MiB, 0, NULL);
    h_create(other, VHD_TYPE_DYNAMIC, 4 * MiB, 0, NULL);
    h_write(other, 0, 4 * MiB, 131);
    h_create(child, VHD_TYPE_DIFFERENCING, 0, 0, base);
    struct hv_err err = {0};
    assert_int_equal(vhd_set_parent(child, other, NULL, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "unique id"));
    struct vhd_set_parent_options o = {.is_forced = true};
    if (vhd_set_parent(child, other, &o, &err) != 0)
        fail_msg("forced: %s", err.msg);
    h_convert_raw(other, t_path("s2-other.raw"));
    h_same_as_raw(child, t_path("s2-other.raw")); /* reads the new parent through */
    h_check_clean(child);
}

static int repair(const char *path, bool is_dry_run)
{
    struct vhd_repair_options o = {.is_dry_run = is_dry_run};
    struct vhd_repair_report rep;
    struct hv_err err = {0};
    int rc = vhd_repair(path, &o, &rep, &err);
    if (rc < 0)
        fail_msg("repair %s: %s", path, err.msg);
    for (int i = 0; i < rep.action_count; i++)
        print_message("  repair: %s\n", rep.actions[i]);
    int n = rep.action_count;
    vhd_repair_report_free(&rep);
    assert_true(n > 0);
    return rc;
}

static void poke(const char *path, uint64_t off, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(hv_pwrite_full(fd, buf, len, off), 0);
    close(fd);
}

static void damaged_case(const char *name, void (*damage)(const char *path))
{
    char img[PATH_MAX], raw[PATH_MAX];
    snprintf(img, sizeof(img), "%s", t_path(name));
    snprintf(raw, sizeof(raw), "%s.raw", img);
    h_create(img, VHD_TYPE_DYNAMIC, 12 * MiB, 0, NULL);
    h_write(img, 0, 5 * MiB, 141);
    h_write(img, 9 * MiB, 1 * MiB, 142);
    h_convert_raw(img, raw);
    damage(img);
    struct vhd_check_report rep;
    assert_true(vhd_check(img, &rep, NULL) != VHD_CHECK_CLEAN);
    vhd_check_report_free(&rep);
    uint64_t len = h_file_bytes(img);
    repair(img, true); /* dry run changes nothing */
    assert_int_equal(h_file_bytes(img), len);
    assert_true(vhd_check(img, &rep, NULL) != VHD_CHECK_CLEAN);
    vhd_check_report_free(&rep);
    assert_int_equal(repair(img, false), 0);
    h_check_clean(img);
    h_same_as_raw(img, raw);
}

static void destroy_footer(const char *p)
{
    uint8_t junk[512];
    memset(junk, 0xA5, sizeof(junk));
    poke(p, h_file_bytes(p) - 512, junk, sizeof(junk));
}

static void destroy_copy(const char *p)
{
    uint8_t junk[512] = {0};
    poke(p, 0, junk, sizeof(junk));
}

static void break_checksum(const char *p)
{
    uint8_t b = 0x5A;
    poke(p, h_file_bytes(p) - 512 + 64, &b, 1); /* checksum field */
}

static void break_header_checksum(const char *p)
{
    uint8_t b = 0x5A;
    poke(p, 512 + 36, &b, 1);
}

static void bat_out_of_range(const char *p)
{
    uint8_t e[4];
    hv_put_be32(e, 0x00FFFFF0u); /* entry 3: far past the end */
    poke(p, 4096 + 3 * 4, e, 4);
}

static void bat_overlaps(const char *p)
{
    uint8_t e[4];
    int fd = open(p, O_RDONLY);
    assert_int_equal(hv_pread_full(fd, e, 4, 4096), 0); /* entry 0's place */
    close(fd);
    poke(p, 4096 + 5 * 4, e, 4); /* entry 5: same place */
}

static void leak_blocks(const char *p)
{
    /* Data appended after the last block, the footer moved after it: space
     * no BAT entry owns, as a crash between growing and using leaves. */
    uint64_t end = h_file_bytes(p) - 512;
    uint8_t footer[512];
    int fd = open(p, O_RDWR);
    assert_int_equal(hv_pread_full(fd, footer, 512, end), 0);
    uint8_t *junk = malloc(3 * MiB);
    t_fill(junk, 3 * MiB, 7);
    assert_int_equal(hv_pwrite_full(fd, junk, 3 * MiB, end), 0);
    assert_int_equal(hv_pwrite_full(fd, footer, 512, end + 3 * MiB), 0);
    close(fd);
    free(junk);
}

static void test_repair_footer_destroyed(void **s)
{
    (void)s;
    damaged_case("d1.vhd", destroy_footer);
}
static void test_repair_copy_destroyed(void **s)
{
    (void)s;
    damaged_case("d2.vhd", destroy_copy);
}
static void test_repair_footer_checksum_wrong(void **s)
{
    (void)s;
    damaged_case("d3.vhd", break_checksum);
}
static void test_repair_header_checksum_wrong(void **s)
{
    (void)s;
    damaged_case("d4.vhd", break_header_checksum);
}
static void test_repair_bat_entry_out_of_range(void **s)
{
    (void)s;
    damaged_case("d5.vhd", bat_out_of_range);
}
static void test_repair_leaked_blocks(void **s)
{
    (void)s;
    damaged_case("d6.vhd", leak_blocks);
}

static void test_repair_bat_overlap_drops_the_later_entry(void **state)
{
    (void)state;
    const char *img = t_path("d7.vhd");
    h_create(img, VHD_TYPE_DYNAMIC, 12 * MiB, 0, NULL);
    h_write(img, 0, 2 * MiB, 151);
    bat_overlaps(img);
    assert_int_equal(repair(img, false), 0);
    h_check_clean(img);
    uint64_t size;
    uint8_t *got = h_read_all(img, &size);
    uint8_t *want = malloc(2 * MiB);
    t_fill(want, 2 * MiB, 151);
    assert_memory_equal(got, want, 2 * MiB);              /* entry 0 kept */
    assert_true(hv_buf_is_zero(got + 10 * MiB, 2 * MiB)); /* entry 5 dropped */
    free(got);
    free(want);
}

static void test_repair_differencing_never_writes_the_parent(void **state)
{
    (void)state;
    const char *base = t_path("d8-base.vhd");
    const char *child = t_path("d8-child.vhd");
    const char *raw = t_path("d8.raw");
    h_create(base, VHD_TYPE_DYNAMIC, 8 * MiB, 0, NULL);
    h_write(base, 0, 8 * MiB, 161);
    h_create(child, VHD_TYPE_DIFFERENCING, 0, 0, base);
    h_write(child, 2 * MiB, 4096, 162);
    h_convert_raw(child, raw);
    destroy_footer(base); /* a damaged parent stays as it is */
    struct stat before, after;
    assert_int_equal(stat(base, &before), 0);
    destroy_footer(child);
    struct vhd_repair_report rep;
    struct hv_err err = {0};
    assert_true(vhd_repair(child, NULL, &rep, &err) >= 0);
    vhd_repair_report_free(&rep);
    assert_int_equal(stat(base, &after), 0);
    assert_int_equal(before.st_mtime, after.st_mtime);
    assert_int_equal(before.st_size, after.st_size);
    h_check_clean(child);
}

static void test_repair_cuts_leftover_of_interrupted_fixed_resize(void **state)
{
    (void)state;
    const char *img = t_path("d9.vhd");
    const char *raw = t_path("d9.raw");
    h_create(img, VHD_TYPE_FIXED, 4 * MiB, 0, NULL);
    h_write(img, 0, 4 * MiB, 171);
    h_convert_raw(img, raw);
    /* As a crash after step 1 of a grow leaves it: the old footer repeated
     * further on. */
    uint8_t footer[512];
    int fd = open(img, O_RDWR);
    assert_int_equal(hv_pread_full(fd, footer, 512, 4 * MiB), 0);
    assert_int_equal(hv_pwrite_full(fd, footer, 512, 6 * MiB), 0);
    close(fd);
    struct vhd_check_report rep;
    assert_int_equal(vhd_check(img, &rep, NULL), VHD_CHECK_LEAKED);
    vhd_check_report_free(&rep);
    h_same_as_raw(img, raw);
    assert_int_equal(repair(img, false), 0);
    assert_int_equal(h_file_bytes(img), 4 * MiB + 512);
    h_check_clean(img);
    h_same_as_raw(img, raw);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_parent_relinks_after_the_parent_moved),
        cmocka_unit_test(test_set_parent_refuses_a_different_disk_unless_forced),
        cmocka_unit_test(test_repair_footer_destroyed),
        cmocka_unit_test(test_repair_copy_destroyed),
        cmocka_unit_test(test_repair_footer_checksum_wrong),
        cmocka_unit_test(test_repair_header_checksum_wrong),
        cmocka_unit_test(test_repair_bat_entry_out_of_range),
        cmocka_unit_test(test_repair_leaked_blocks),
        cmocka_unit_test(test_repair_bat_overlap_drops_the_later_entry),
        cmocka_unit_test(test_repair_differencing_never_writes_the_parent),
        cmocka_unit_test(test_repair_cuts_leftover_of_interrupted_fixed_resize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
