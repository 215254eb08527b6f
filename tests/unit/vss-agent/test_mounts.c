/* Unit tests for the agent's mount-table logic, on sample mountinfo text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>

#include "vss-agent.h"

/* A guest with nested mounts, a bind mount, pseudo, network and read-only
 * filesystems, a mount point with a space, and a mount hidden by a later one. */
static const char guest[] =
    "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro\n"
    "23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    "24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw\n"
    "25 22 0:5 / /dev rw,nosuid,relatime shared:8 - devtmpfs udev rw,size=4010000k\n"
    "26 22 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,mode=755\n"
    "27 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw\n"
    "30 22 253:1 / /var rw,relatime shared:20 - xfs /dev/vda2 rw,attr2,inode64\n"
    "31 30 253:2 / /var/lib/db rw,noatime shared:21 - ext4 /dev/vdb1 rw\n"
    "32 22 253:3 / /boot ro,relatime shared:22 - ext4 /dev/vda3 ro\n"
    "33 22 0:40 / /mnt/nfs rw,relatime shared:23 - nfs4 srv:/export rw,vers=4.2\n"
    "34 22 253:1 /www /srv/www rw,relatime shared:20 - xfs /dev/vda2 rw,attr2,inode64\n"
    "35 22 253:4 / /mnt/with\\040space rw,relatime shared:24 - ext4 /dev/vdc1 rw\n"
    "36 22 253:5 / /data rw,relatime shared:25 - btrfs /dev/vdd rw\n"
    "37 36 253:6 / /data/old rw,relatime shared:26 - ext4 /dev/vde rw\n"
    "38 22 0:50 / /data rw,relatime shared:27 - tmpfs tmpfs rw\n"
    "39 22 7:0 / /snap/core/1 ro,nodev,relatime shared:28 - squashfs /dev/loop0 ro\n"
    "40 22 0:51 / /home/u/.gvfs rw,relatime shared:29 - fuse.gvfsd-fuse gvfsd rw\n"
    "41 22 253:7 / /srv/ro-super rw,relatime shared:30 - ext4 /dev/vdf ro\n";

static void parse(const char *text, struct vss_mount_table *t)
{
    struct hv_err err = { 0 };
    if (vss_mounts_parse(text, strlen(text), "sample", t, &err) < 0)
        fail_msg("%s", err.msg);
}

static void select_text(const struct vss_mount_table *t, const char *const *only, size_t n,
                        char *out, size_t cap, int *ret)
{
    size_t *order = calloc(t->count + 1, sizeof(*order)), count = 0;
    struct hv_err err = { 0 };
    out[0] = '\0';
    *ret = vss_mounts_select(t, only, n, order, &count, &err);
    if (*ret < 0)
        snprintf(out, cap, "%s", err.msg);
    for (size_t i = 0; *ret == 0 && i < count; i++) {
        strncat(out, t->mounts[order[i]].mount_point, cap - strlen(out) - 2);
        strcat(out, ";");
    }
    free(order);
}

static void test_mountinfo_fields_are_decoded(void **state)
{
    struct vss_mount_table t;
    parse(guest, &t);
    assert_int_equal(t.count, 18);
    assert_int_equal(t.mounts[0].mount_id, 22);
    assert_int_equal(t.mounts[0].parent_id, 1);
    assert_int_equal(t.mounts[0].major, 253);
    assert_int_equal(t.mounts[0].minor, 0);
    assert_string_equal(t.mounts[0].mount_point, "/");
    assert_string_equal(t.mounts[0].type, "ext4");
    assert_string_equal(t.mounts[0].source, "/dev/vda1");
    assert_false(t.mounts[0].is_read_only);
    assert_string_equal(t.mounts[10].root, "/www");
    assert_string_equal(t.mounts[11].mount_point, "/mnt/with space");
    assert_true(t.mounts[8].is_read_only);                    /* per-mount ro */
    assert_true(t.mounts[17].is_read_only);                   /* superblock ro */
    /* /data (btrfs) is covered by a later tmpfs on /data, and so is /data/old */
    assert_true(t.mounts[12].is_hidden);
    assert_true(t.mounts[13].is_hidden);
    assert_false(t.mounts[14].is_hidden);
    assert_false(t.mounts[0].is_hidden);                      /* / is everyone's parent */
    assert_false(t.mounts[7].is_hidden);                      /* /var/lib/db on /var */
    vss_mounts_free(&t);
}

static void test_select_freezes_children_before_parents_and_skips_the_rest(void **state)
{
    struct vss_mount_table t;
    char out[1024];
    int ret;
    parse(guest, &t);
    select_text(&t, NULL, 0, out, sizeof(out), &ret);
    assert_int_equal(ret, 0);
    /* deepest first; /srv/www is a bind of /var's superblock and is skipped;
     * proc, sysfs, devtmpfs, tmpfs, cgroup2, nfs4, squashfs, fuse, read-only
     * and hidden mounts are skipped */
    assert_string_equal(out, "/var/lib/db;/mnt/with space;/var;/;");
    vss_mounts_free(&t);
}

static void test_select_keeps_one_mount_per_superblock_preferring_the_whole_fs(void **state)
{
    static const char text[] =
        "22 1 253:0 / / rw - ext4 /dev/vda1 rw\n"
        "30 22 253:1 /sub /a/b/c rw - xfs /dev/vda2 rw\n"
        "31 22 253:1 / /x rw - xfs /dev/vda2 rw\n"
        "32 22 253:1 / /y rw - xfs /dev/vda2 rw\n";
    struct vss_mount_table t;
    char out[512];
    int ret;
    parse(text, &t);
    select_text(&t, NULL, 0, out, sizeof(out), &ret);
    assert_int_equal(ret, 0);
    assert_string_equal(out, "/x;/;");
    vss_mounts_free(&t);
}

static void test_select_only_takes_exact_eligible_mount_points(void **state)
{
    struct vss_mount_table t;
    char out[1024];
    int ret;
    parse(guest, &t);

    const char *ok[] = { "/var", "/var/lib/db" };
    select_text(&t, ok, 2, out, sizeof(out), &ret);
    assert_int_equal(ret, 0);
    assert_string_equal(out, "/var/lib/db;/var;");

    /* a directory that is not a mount point must never select its parent */
    const char *inside[] = { "/var/lib" };
    select_text(&t, inside, 1, out, sizeof(out), &ret);
    assert_int_equal(ret, -ENOENT);
    assert_non_null(strstr(out, "/var/lib: not a mount point"));

    const char *pseudo[] = { "/run" };
    select_text(&t, pseudo, 1, out, sizeof(out), &ret);
    assert_int_equal(ret, -EINVAL);
    assert_non_null(strstr(out, "pseudo"));

    const char *ro[] = { "/boot" };
    select_text(&t, ro, 1, out, sizeof(out), &ret);
    assert_int_equal(ret, -EINVAL);
    assert_non_null(strstr(out, "read-only"));

    const char *net[] = { "/mnt/nfs" };
    select_text(&t, net, 1, out, sizeof(out), &ret);
    assert_int_equal(ret, -EINVAL);
    assert_non_null(strstr(out, "network"));

    /* the hidden btrfs on /data: the path leads to the tmpfs on top */
    const char *hidden[] = { "/data/old" };
    select_text(&t, hidden, 1, out, sizeof(out), &ret);
    assert_int_equal(ret, -ENOENT);

    /* the same superblock twice (a bind) is frozen once */
    const char *twice[] = { "/var", "/srv/www" };
    select_text(&t, twice, 2, out, sizeof(out), &ret);
    assert_int_equal(ret, 0);
    assert_string_equal(out, "/var;");
    vss_mounts_free(&t);
}

static void test_overmounted_mount_point_selects_the_top_mount(void **state)
{
    static const char text[] =
        "22 1 253:0 / / rw - ext4 /dev/vda1 rw\n"
        "30 22 253:1 / /m rw - ext4 /dev/vdb rw\n"
        "31 30 253:2 / /m rw - ext4 /dev/vdc rw\n";
    struct vss_mount_table t;
    char out[256];
    int ret;
    parse(text, &t);
    assert_true(t.mounts[1].is_hidden);
    assert_false(t.mounts[2].is_hidden);
    const char *m[] = { "/m" };
    select_text(&t, m, 1, out, sizeof(out), &ret);
    assert_int_equal(ret, 0);
    assert_string_equal(out, "/m;");
    size_t order[3], count;
    assert_int_equal(vss_mounts_select(&t, m, 1, order, &count, NULL), 0);
    assert_int_equal(t.mounts[order[0]].minor, 2);
    vss_mounts_free(&t);
}

static void test_loop_dependency_reorders_without_breaking_nesting(void **state)
{
    /* /deep/er/a holds the image of the loop filesystem on /b, which holds
     * a nested mount /b/c: depth order alone would freeze /deep/er/a first
     * and hang /b's FIFREEZE on its own image. */
    static const char text[] =
        "22 1 253:0 / / rw - ext4 /dev/vda1 rw\n"
        "30 22 253:1 / /deep/er/a rw - ext4 /dev/vdb rw\n"
        "31 22 7:0 / /b rw - ext4 /dev/loop0 rw\n"
        "32 31 253:2 / /b/c rw - ext4 /dev/vdc rw\n";
    struct vss_mount_table t;
    char out[256];
    int ret;
    parse(text, &t);
    select_text(&t, NULL, 0, out, sizeof(out), &ret);
    assert_string_equal(out, "/deep/er/a;/b/c;/b;/;");
    size_t order[4], count;
    assert_int_equal(vss_mounts_select(&t, NULL, 0, order, &count, NULL), 0);
    struct vss_mount_dep dep = { .first = 2, .then = 1 };       /* /b before /deep/er/a */
    assert_int_equal(vss_mounts_order_deps(&t, order, count, &dep, 1), 0);
    out[0] = '\0';
    for (size_t i = 0; i < count; i++)
        strcat(out, t.mounts[order[i]].mount_point), strcat(out, ";");
    assert_string_equal(out, "/b/c;/b;/deep/er/a;/;");
    /* a contradiction (a parent before its child) is refused, order kept */
    struct vss_mount_dep bad = { .first = 0, .then = 1 };
    assert_int_equal(vss_mounts_order_deps(&t, order, count, &bad, 1), -ELOOP);
    assert_string_equal(t.mounts[order[0]].mount_point, "/b/c");
    vss_mounts_free(&t);
}

static void test_parse_names_the_bad_line(void **state)
{
    static const char *const bad[] = {
        "22 1 253:0 / / rw - ext4\n",                          /* no source */
        "22 1 253:0 / / rw shared:1 ext4 /dev/vda1 rw\n",      /* no separator */
        "x 1 253:0 / / rw - ext4 /dev/vda1 rw\n",
        "22 1 2530 / / rw - ext4 /dev/vda1 rw\n",
        "22 1 253:0 / relative rw - ext4 /dev/vda1 rw\n",
        "22\n",
    };
    for (size_t i = 0; i < HV_ARRAY_SIZE(bad); i++) {
        char text[256];
        struct vss_mount_table t;
        struct hv_err err = { 0 };
        snprintf(text, sizeof(text), "22 1 253:0 / / rw - ext4 /dev/vda1 rw\n%s", bad[i]);
        if (vss_mounts_parse(text, strlen(text), "sample", &t, &err) != -EINVAL)
            fail_msg("accepted: %s", bad[i]);
        assert_non_null(strstr(err.msg, "sample: line 2"));
        assert_null(t.mounts);
    }
}

static void test_fs_type_classes(void **state)
{
    assert_true(vss_fs_type_is_pseudo("tmpfs"));
    assert_true(vss_fs_type_is_pseudo("overlay"));
    assert_true(vss_fs_type_is_pseudo("fuse.sshfs"));
    assert_false(vss_fs_type_is_pseudo("ext4"));
    assert_false(vss_fs_type_is_pseudo("xfs"));
    assert_true(vss_fs_type_is_network("nfs"));
    assert_true(vss_fs_type_is_network("cifs"));
    assert_false(vss_fs_type_is_network("btrfs"));
}

static void test_reads_this_machines_mountinfo(void **state)
{
    struct vss_mount_table t;
    struct hv_err err = { 0 };
    if (vss_mounts_read("/proc/self/mountinfo", &t, &err) < 0)
        fail_msg("%s", err.msg);
    bool has_root = false;
    for (size_t i = 0; i < t.count; i++)
        if (strcmp(t.mounts[i].mount_point, "/") == 0)
            has_root = true;
    assert_true(has_root);
    vss_mounts_free(&t);
    assert_int_equal(vss_mounts_read("/nonexistent/mountinfo", &t, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "/nonexistent/mountinfo"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mountinfo_fields_are_decoded),
        cmocka_unit_test(test_select_freezes_children_before_parents_and_skips_the_rest),
        cmocka_unit_test(test_select_keeps_one_mount_per_superblock_preferring_the_whole_fs),
        cmocka_unit_test(test_select_only_takes_exact_eligible_mount_points),
        cmocka_unit_test(test_overmounted_mount_point_selects_the_top_mount),
        cmocka_unit_test(test_loop_dependency_reorders_without_breaking_nesting),
        cmocka_unit_test(test_parse_names_the_bad_line),
        cmocka_unit_test(test_fs_type_classes),
        cmocka_unit_test(test_reads_this_machines_mountinfo),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
