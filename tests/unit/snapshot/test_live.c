/* Unit tests for vhd/live.c: a differencing child served over an open chain,
 * and the live merge back into it, checked against an in-memory reference,
 * the real engine and qemu-img. */
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

#define DISK (24ull * 1024 * 1024)
#define BLK (512u * 1024)

static uint64_t g_seed = 7;

static void rnd_write(struct bdev *bd, uint8_t *ref, uint8_t *buf)
{
    uint64_t off = (t_rand(&g_seed) % (DISK / 512)) * 512;
    uint64_t len = (1 + t_rand(&g_seed) % 512) * 512;
    if (off + len > DISK)
        len = DISK - off;
    int kind = (int)(t_rand(&g_seed) % 8);
    if (kind == 0) {
        assert_int_equal(bdev_request_sync(bd, BDEV_IO_WRITE_ZEROES, off, len, 0), 0);
        memset(ref + off, 0, len);
    } else {
        t_fill(buf, len, t_rand(&g_seed));
        assert_int_equal(bdev_write_sync(bd, off, buf, len, kind == 1 ? BDEV_IO_FUA : 0), 0);
        memcpy(ref + off, buf, len);
    }
}

static void check_reads(struct bdev *bd, const uint8_t *ref)
{
    uint8_t *buf = hv_alloc_aligned(DISK);
    assert_int_equal(bdev_read_sync(bd, 0, buf, DISK), 0);
    assert_memory_equal(buf, ref, DISK);
    /* Unaligned pieces across block edges too. */
    for (int i = 0; i < 50; i++) {
        uint64_t off = (t_rand(&g_seed) % (DISK / 512 - 4096)) * 512;
        uint64_t len = (1 + t_rand(&g_seed) % 4000) * 512;
        assert_int_equal(bdev_read_sync(bd, off, buf + 512, len), 0);
        assert_memory_equal(buf + 512, ref + off, len);
    }
    free(buf);
}

static void test_live_child_reads_writes_and_is_a_real_vhd(void **state)
{
    (void)state;
    struct hv_reactor *r;
    struct hv_err err = {0};
    char base[4096], child[4096], raw[4096];
    snprintf(base, sizeof(base), "%s", t_path("live-base.vhd"));
    snprintf(child, sizeof(child), "%s", t_path("live-child.vhd"));
    snprintf(raw, sizeof(raw), "%s", t_path("live-ref.raw"));
    assert_int_equal(hv_reactor_create(&r), 0);
    struct vhd_create_options co = {
        .type = VHD_TYPE_DYNAMIC, .size_bytes = DISK, .block_bytes = BLK};
    assert_int_equal(vhd_create(base, &co, &err), 0);
    struct bdev *pb;
    struct vhd_open_options oo = {0};
    assert_int_equal(vhd_open(r, base, &oo, &pb, &err), 0);
    uint8_t *ref = calloc(1, DISK);
    uint8_t *buf = hv_alloc_aligned(512 * 512);
    for (int i = 0; i < 40; i++)
        rnd_write(pb, ref, buf);
    uint8_t *at_checkpoint = malloc(DISK);
    memcpy(at_checkpoint, ref, DISK);
    assert_int_equal(bdev_flush_sync(pb), 0);

    struct vhd_create_options cc = {.type = VHD_TYPE_DIFFERENCING, .parent_path = base};
    assert_int_equal(vhd_create(child, &cc, &err), 0);
    struct bdev *cb;
    assert_int_equal(vhd_live_child_open(r, child, pb, &cb, &err), 0);
    assert_true(vhd_is_live_child(cb));
    check_reads(cb, ref);
    for (int i = 0; i < 200; i++) {
        rnd_write(cb, ref, buf);
        if (i % 50 == 0)
            assert_int_equal(bdev_flush_sync(cb), 0);
    }
    check_reads(cb, ref);
    /* The parent, as the guest no longer writes it, is the checkpoint. */
    check_reads(pb, at_checkpoint);
    assert_int_equal(vhd_live_child_close(cb), 0);
    assert_int_equal(bdev_close(pb), 0);

    /* The child is an ordinary VHD: vhd check, the engine and qemu-img agree. */
    struct vhd_check_report rep = {0};
    int rc = vhd_check(child, &rep, &err);
    for (int i = 0; i < rep.problem_count; i++)
        print_message("check: %s\n", rep.problems[i].msg);
    assert_int_equal(rc, VHD_CHECK_CLEAN);
    vhd_check_report_free(&rep);
    assert_int_equal(vhd_open(r, child, &oo, &cb, &err), 0);
    check_reads(cb, ref);
    assert_int_equal(bdev_close(cb), 0);
    FILE *f = fopen(raw, "wb");
    assert_int_equal(fwrite(ref, 1, DISK, f), DISK);
    fclose(f);
    /* qemu cannot open differencing images: flatten the chain with vhd
     * convert and let qemu-img compare the result. */
    char flat[4096];
    snprintf(flat, sizeof(flat), "%s", t_path("live-flat.vhd"));
    struct vhd_convert_options cvo = {0};
    assert_int_equal(vhd_convert(child, flat, &cvo, &err), 0);
    if (t_run(NULL, 0, "command -v qemu-img >/dev/null") == 0)
        assert_int_equal(t_run(NULL, 0, "qemu-img compare -q -f vpc -F raw '%s' '%s'", flat, raw),
                         0);
    if (t_run(NULL, 0, "command -v vhdiinfo >/dev/null") == 0)
        assert_int_equal(t_run(NULL, 0, "vhdiinfo '%s' | grep -qi 'Differential'", child), 0);

    /* Live merge: the guest keeps writing to the child during the first
     * pass; the final pass (no writers: a hold) leaves the parent equal to
     * what the guest sees. */
    assert_int_equal(vhd_open(r, base, &oo, &pb, &err), 0);
    assert_int_equal(vhd_live_child_open(r, child, pb, &cb, &err), 0);
    check_reads(cb, ref);
    uint64_t copied = 0;
    assert_int_equal(vhd_live_merge_pass(cb, true, &copied, &err), 0);
    assert_true(copied > 0);
    for (int i = 0; i < 30; i++)
        rnd_write(cb, ref, buf);
    assert_true(vhd_live_merge_dirty_blocks(cb) > 0);
    uint64_t copied2 = 0;
    assert_int_equal(vhd_live_merge_pass(cb, false, &copied2, &err), 0);
    assert_true(copied2 < copied);
    assert_int_equal(vhd_live_merge_dirty_blocks(cb), 0);
    assert_int_equal(bdev_flush_sync(pb), 0);
    check_reads(pb, ref);
    assert_int_equal(vhd_live_child_close(cb), 0);
    assert_int_equal(bdev_close(pb), 0);
    assert_int_equal(vhd_check(base, &rep, &err), VHD_CHECK_CLEAN);
    vhd_check_report_free(&rep);
    free(ref);
    free(buf);
    free(at_checkpoint);
    hv_reactor_destroy(r);
}

/* A child whose parent is not the open chain is refused. */
static void test_live_child_refuses_a_foreign_parent(void **state)
{
    (void)state;
    struct hv_reactor *r;
    struct hv_err err = {0};
    char a[4096], b[4096], child[4096];
    snprintf(a, sizeof(a), "%s", t_path("foreign-a.vhd"));
    snprintf(b, sizeof(b), "%s", t_path("foreign-b.vhd"));
    snprintf(child, sizeof(child), "%s", t_path("foreign-child.vhd"));
    assert_int_equal(hv_reactor_create(&r), 0);
    struct vhd_create_options co = {.type = VHD_TYPE_DYNAMIC, .size_bytes = DISK};
    assert_int_equal(vhd_create(a, &co, &err), 0);
    assert_int_equal(vhd_create(b, &co, &err), 0);
    struct vhd_create_options cc = {.type = VHD_TYPE_DIFFERENCING, .parent_path = a};
    assert_int_equal(vhd_create(child, &cc, &err), 0);
    struct bdev *pb, *cb;
    struct vhd_open_options oo = {0};
    assert_int_equal(vhd_open(r, b, &oo, &pb, &err), 0);
    assert_int_equal(vhd_live_child_open(r, child, pb, &cb, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "parent unique id"));
    assert_int_equal(bdev_close(pb), 0);
    hv_reactor_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live_child_reads_writes_and_is_a_real_vhd),
        cmocka_unit_test(test_live_child_refuses_a_foreign_parent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
