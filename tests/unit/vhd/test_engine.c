/* Unit tests for the VHD engine (vhd_open as a bdev over a chain): I/O of
 * every kind on dynamic, differencing and fixed images, chains, locking,
 * parent lookup, crash ordering as the observer sees it, and a random
 * workload checked against an in-memory model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "format.h"
#include "testlib.h"
#include "vhd.h"
#include "engine_fixture.h"

static void create(const char *path, enum vhd_type type, uint64_t size, const char *parent)
{
    struct vhd_create_options o = { .type = type, .size_bytes = size, .parent_path = parent };
    struct hv_err err = { 0 };
    unlink(path);
    if (vhd_create(path, &o, &err) != 0)
        fail_msg("create %s: %s", path, err.msg);
}

static struct bdev *open_rw(const char *path)
{
    struct bdev *bd = NULL;
    struct hv_err err = { 0 };
    struct vhd_open_options o = { .queue_depth = 32 };
    if (vhd_open(reactor, path, &o, &bd, &err) != 0)
        fail_msg("open %s: %s", path, err.msg);
    return bd;
}

static uint8_t *pattern(size_t len, uint64_t seed)
{
    uint8_t *b = hv_alloc_aligned(len);
    assert_non_null(b);
    t_fill(b, len, seed);
    return b;
}

static void write_at(struct bdev *bd, uint64_t off, const void *buf, uint64_t len)
{
    assert_int_equal(bdev_write_sync(bd, off, buf, len, 0), 0);
}

static void expect_at(struct bdev *bd, uint64_t off, const void *want, uint64_t len)
{
    uint8_t *got = hv_alloc_aligned(len);
    assert_non_null(got);
    assert_int_equal(bdev_read_sync(bd, off, got, len), 0);
    if (memcmp(got, want, len) != 0) {
        uint64_t i = 0;
        while (i < len && got[i] == ((const uint8_t *)want)[i])
            i++;
        fail_msg("data differs at %" PRIu64 " (+%" PRIu64 ")", off, i);
    }
    free(got);
}

static void expect_zero(struct bdev *bd, uint64_t off, uint64_t len)
{
    uint8_t *z = hv_alloc_aligned(len);
    memset(z, 0, len);
    expect_at(bd, off, z, len);
    free(z);
}

static void file_hash(const char *path, uint8_t out[16])
{
    struct stat st;
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    uint8_t *b = malloc((size_t)st.st_size);
    assert_int_equal(hv_pread_full(fd, b, (size_t)st.st_size, 0), 0);
    hv_xxh3_128(b, (size_t)st.st_size, out);
    free(b);
    close(fd);
}

static void test_dynamic_write_read_survives_reopen_and_qemu_reads_it(void **state)
{
    const char *path = t_path("dyn.vhd");
    const uint64_t size = 100 * HV_MiB + 512;
    uint8_t *a = pattern(192 * 1024, 1);
    uint8_t *b = pattern(512, 2);
    uint8_t *c = pattern(3 * HV_MiB, 3);
    struct bdev *bd;
    struct vhd_info info;
    struct hv_err err = { 0 };

    create(path, VHD_TYPE_DYNAMIC, size, NULL);
    bd = open_rw(path);
    assert_int_equal(bd->size_bytes, size);
    assert_int_equal(bd->granularity_bytes, VHD_DEFAULT_BLOCK_BYTES);
    assert_int_equal(bd->physical_block_bytes, 4096);
    assert_true(bd->has_volatile_cache && bd->can_discard && bd->discard_zeroes);
    assert_true(vhd_is_vhd_bdev(bd));
    assert_int_equal(vhd_chain_depth(bd), 1);
    assert_int_equal(vhd_inspect(path, &info, &err), 0);
    assert_memory_equal(bd->uuid, info.uuid, 16);

    expect_zero(bd, 0, 1 * HV_MiB);
    write_at(bd, 4096, a, 192 * 1024);
    write_at(bd, size - 512, b, 512);                    /* last sector, odd size */
    write_at(bd, 7 * HV_MiB - 4096, c, 3 * HV_MiB);      /* across block boundaries */
    /* An unaligned buffer and a sub-4K write take the buffered path. */
    write_at(bd, 50 * HV_MiB + 512, a + 1, 1024);
    expect_at(bd, 4096, a, 192 * 1024);
    expect_at(bd, size - 512, b, 512);
    expect_at(bd, 7 * HV_MiB - 4096, c, 3 * HV_MiB);
    expect_at(bd, 50 * HV_MiB + 512, a + 1, 1024);
    expect_zero(bd, 0, 4096);
    assert_int_equal(bdev_close(bd), 0);

    /* Clean close: metadata valid, reserve trimmed, data back after reopen. */
    assert_int_equal(vhd_inspect(path, &info, &err), 0);
    assert_int_equal(info.allocated_bytes, 5 * (uint64_t)VHD_DEFAULT_BLOCK_BYTES);
    assert_true(info.file_bytes <= 8192 + 5 * (2 * HV_MiB + 4096) + 512);
    bd = open_rw(path);
    expect_at(bd, 4096, a, 192 * 1024);
    expect_at(bd, size - 512, b, 512);
    expect_at(bd, 7 * HV_MiB - 4096, c, 3 * HV_MiB);
    assert_int_equal(bdev_close(bd), 0);

    /* qemu-img reads the same bytes. */
    if (t_run(NULL, 0, "command -v qemu-img >/dev/null") == 0) {
        char raw[512];
        snprintf(raw, sizeof(raw), "%s.raw", path);
        assert_int_equal(t_run(NULL, 0, "qemu-img convert -f vpc -O raw '%s' '%s'", path, raw),
                         0);
        int fd = open(raw, O_RDONLY);
        struct stat st;
        assert_int_equal(fstat(fd, &st), 0);
        assert_int_equal((uint64_t)st.st_size, size);
        uint8_t *got = malloc(3 * HV_MiB);
        assert_int_equal(hv_pread_full(fd, got, 3 * HV_MiB, 7 * HV_MiB - 4096), 0);
        assert_memory_equal(got, c, 3 * HV_MiB);
        assert_int_equal(hv_pread_full(fd, got, 512, size - 512), 0);
        assert_memory_equal(got, b, 512);
        free(got);
        close(fd);
        unlink(raw);
    }
    free(a);
    free(b);
    free(c);
}

static void test_engine_reads_what_qemu_img_wrote(void **state)
{
    const char *path = t_path("q.vhd");
    struct bdev *bd;
    uint8_t *want = hv_alloc_aligned(1 * HV_MiB);
    if (t_run(NULL, 0, "command -v qemu-io >/dev/null") != 0)
        skip();
    unlink(path);
    assert_int_equal(t_run(NULL, 0, "qemu-img create -q -f vpc '%s' 64M && qemu-io -f vpc "
                           "-c 'write -P 0xa5 5M 1M' -c 'write -P 0x3c 33M 512' '%s' "
                           ">/dev/null", path, path), 0);
    bd = open_rw(path);
    memset(want, 0xa5, HV_MiB);
    expect_at(bd, 5 * HV_MiB, want, HV_MiB);
    memset(want, 0x3c, 512);
    expect_at(bd, 33 * HV_MiB, want, 512);
    expect_zero(bd, 0, HV_MiB);
    /* And writes into qemu's layout (blocks not 4 KiB aligned) read back,
     * in hvstor and in qemu. */
    uint8_t *p = pattern(HV_MiB, 9);
    write_at(bd, 5 * HV_MiB + 4096, p, 64 * 1024);
    write_at(bd, 40 * HV_MiB, p, HV_MiB);
    expect_at(bd, 40 * HV_MiB, p, HV_MiB);
    assert_int_equal(bdev_close(bd), 0);
    assert_int_equal(t_run(NULL, 0, "qemu-io -f vpc -r -c 'read -P 0xa5 5M 4k' "
                           "-c 'read -P 0x3c 33M 512' '%s' | grep -q 'read 512/512'", path), 0);
    char raw[512];
    snprintf(raw, sizeof(raw), "%s.raw", path);
    assert_int_equal(t_run(NULL, 0, "qemu-img convert -f vpc -O raw '%s' '%s'", path, raw), 0);
    int fd = open(raw, O_RDONLY);
    uint8_t *got = malloc(HV_MiB);
    assert_int_equal(hv_pread_full(fd, got, HV_MiB, 40 * HV_MiB), 0);
    assert_memory_equal(got, p, HV_MiB);
    close(fd);
    free(got);
    free(p);
    free(want);
}

static void test_fixed_image_reads_writes_and_keeps_its_footer(void **state)
{
    const char *path = t_path("fixed.vhd");
    struct bdev *bd;
    uint8_t *p = pattern(HV_MiB, 5);
    struct vhd_info info;
    struct hv_err err = { 0 };
    create(path, VHD_TYPE_FIXED, 10 * HV_MiB + 512, NULL);
    bd = open_rw(path);
    assert_false(bd->can_discard);
    write_at(bd, 10 * HV_MiB + 512 - HV_MiB, p, HV_MiB);
    assert_int_equal(bdev_write_sync(bd, 0, p, 4096, BDEV_IO_FUA), 0);
    expect_at(bd, 0, p, 4096);
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_WRITE_ZEROES, 0, 4096, 0), 0);
    expect_zero(bd, 0, 4096);
    uint32_t status;
    uint64_t len;
    int depth;
    assert_int_equal(bdev_block_status_sync(bd, 0, 10 * HV_MiB, &status, &len, &depth), 0);
    assert_int_equal(status, BDEV_STATUS_ALLOCATED);
    assert_int_equal(depth, 0);
    assert_int_equal(len, 10 * HV_MiB);
    assert_int_equal(bdev_close(bd), 0);
    assert_int_equal(vhd_inspect(path, &info, &err), 0);
    assert_int_equal(info.file_bytes, 10 * HV_MiB + 1024);
    free(p);
}

static void test_differencing_writes_leave_parent_unchanged(void **state)
{
    const char *base = t_path("pbase.vhd");
    const char *child = t_path("pchild.vhd");
    uint8_t before[16];
    uint8_t after[16];
    uint8_t *p = pattern(4 * HV_MiB, 11);
    uint8_t *q = pattern(HV_MiB, 12);
    uint8_t *mix = hv_alloc_aligned(4 * HV_MiB);
    struct bdev *bd;

    create(base, VHD_TYPE_DYNAMIC, 32 * HV_MiB, NULL);
    bd = open_rw(base);
    write_at(bd, 0, p, 4 * HV_MiB);
    assert_int_equal(bdev_close(bd), 0);
    create(child, VHD_TYPE_DIFFERENCING, 0, base);
    file_hash(base, before);

    bd = open_rw(child);
    assert_int_equal(vhd_chain_depth(bd), 2);
    assert_false(bd->discard_zeroes);
    expect_at(bd, 0, p, 4 * HV_MiB);                  /* all from the parent */
    /* Partial block: sectors 8..2055 of block 0 from the child, rest parent. */
    write_at(bd, 4096, q, HV_MiB);
    memcpy(mix, p, 4 * HV_MiB);
    memcpy(mix + 4096, q, HV_MiB);
    expect_at(bd, 0, mix, 4 * HV_MiB);
    /* A 512-byte write inside the parent's data. */
    write_at(bd, 3 * HV_MiB + 512, q, 512);
    memcpy(mix + 3 * HV_MiB + 512, q, 512);
    expect_at(bd, 0, mix, 4 * HV_MiB);

    uint32_t status;
    uint64_t len;
    int depth;
    assert_int_equal(bdev_block_status_sync(bd, 0, 32 * HV_MiB, &status, &len, &depth), 0);
    assert_int_equal(depth, 1);                       /* first 4 KiB: parent */
    assert_int_equal(len, 4096);
    assert_int_equal(bdev_block_status_sync(bd, 4096, 32 * HV_MiB - 4096, &status, &len, &depth),
                     0);
    assert_int_equal(depth, 0);
    assert_int_equal(len, HV_MiB);
    assert_int_equal(bdev_block_status_sync(bd, 8 * HV_MiB, HV_MiB, &status, &len, &depth), 0);
    assert_int_equal(depth, -1);
    assert_int_equal(status, BDEV_STATUS_ZERO);
    assert_int_equal(bdev_close(bd), 0);

    file_hash(base, after);
    assert_memory_equal(before, after, 16);
    bd = open_rw(child);
    expect_at(bd, 0, mix, 4 * HV_MiB);
    assert_int_equal(bdev_close(bd), 0);
    free(p);
    free(q);
    free(mix);
}

static void test_chain_of_three_reads_each_layer_and_reports_depth(void **state)
{
    const char *a = t_path("c3a.vhd");
    const char *b = t_path("c3b.vhd");
    const char *c = t_path("c3c.vhd");
    uint8_t *pa = pattern(6 * HV_MiB, 21);
    uint8_t *pb = pattern(2 * HV_MiB, 22);
    uint8_t *pc = pattern(512 * 1024, 23);
    uint8_t *want = hv_alloc_aligned(8 * HV_MiB);
    struct bdev *bd;

    create(a, VHD_TYPE_DYNAMIC, 16 * HV_MiB, NULL);
    bd = open_rw(a);
    write_at(bd, 0, pa, 6 * HV_MiB);
    assert_int_equal(bdev_close(bd), 0);
    create(b, VHD_TYPE_DIFFERENCING, 0, a);
    bd = open_rw(b);
    write_at(bd, HV_MiB, pb, 2 * HV_MiB);
    assert_int_equal(bdev_close(bd), 0);
    create(c, VHD_TYPE_DIFFERENCING, 0, b);
    bd = open_rw(c);
    write_at(bd, 2 * HV_MiB - 4096, pc, 512 * 1024);
    assert_int_equal(vhd_chain_depth(bd), 3);
    assert_string_equal(vhd_chain_path(bd, 2), a);

    memset(want, 0, 8 * HV_MiB);
    memcpy(want, pa, 6 * HV_MiB);
    memcpy(want + HV_MiB, pb, 2 * HV_MiB);
    memcpy(want + 2 * HV_MiB - 4096, pc, 512 * 1024);
    expect_at(bd, 0, want, 8 * HV_MiB);
    /* Unaligned length reads across layers. */
    expect_at(bd, 2 * HV_MiB - 8192 + 512, want + 2 * HV_MiB - 8192 + 512, 512 * 1024 + 3584);

    uint32_t st;
    uint64_t len;
    int depth;
    assert_int_equal(bdev_block_status_sync(bd, 0, 8 * HV_MiB, &st, &len, &depth), 0);
    assert_int_equal(depth, 2);
    assert_int_equal(len, HV_MiB);
    assert_int_equal(bdev_block_status_sync(bd, HV_MiB, 8 * HV_MiB, &st, &len, &depth), 0);
    assert_int_equal(depth, 1);
    assert_int_equal(len, HV_MiB - 4096);
    assert_int_equal(bdev_block_status_sync(bd, 2 * HV_MiB - 4096, HV_MiB, &st, &len, &depth), 0);
    assert_int_equal(depth, 0);
    assert_int_equal(len, 512 * 1024);
    assert_int_equal(bdev_close(bd), 0);
    free(pa);
    free(pb);
    free(pc);
    free(want);
}

static void test_discard_and_write_zeroes_free_and_hide_correctly(void **state)
{
    const char *base = t_path("zbase.vhd");
    const char *child = t_path("zchild.vhd");
    uint8_t *p = pattern(8 * HV_MiB, 31);
    struct bdev *bd;
    struct stat st1;
    struct stat st2;
    uint32_t status;
    uint64_t len;
    int depth;

    create(base, VHD_TYPE_DYNAMIC, 16 * HV_MiB, NULL);
    bd = open_rw(base);
    write_at(bd, 0, p, 8 * HV_MiB);
    assert_int_equal(bdev_flush_sync(bd), 0);
    assert_int_equal(stat(base, &st1), 0);
    /* Whole block: deallocated, space given back, reads zero. */
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_DISCARD, 2 * HV_MiB, 2 * HV_MiB, 0), 0);
    assert_int_equal(stat(base, &st2), 0);
    assert_true(st2.st_blocks < st1.st_blocks);
    expect_zero(bd, 2 * HV_MiB, 2 * HV_MiB);
    assert_int_equal(bdev_block_status_sync(bd, 2 * HV_MiB, 2 * HV_MiB, &status, &len, &depth), 0);
    assert_int_equal(depth, -1);
    /* Partial block: reads zero (discard_zeroes is true for dynamic). */
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_DISCARD, 4096, 8192, 0), 0);
    expect_zero(bd, 4096, 8192);
    expect_at(bd, 0, p, 4096);
    expect_at(bd, 12288, p + 12288, 2 * HV_MiB - 12288);
    /* Write-zeroes with unmap on a whole block deallocates it. */
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_WRITE_ZEROES, 4 * HV_MiB, 2 * HV_MiB,
                                       BDEV_IO_MAY_UNMAP), 0);
    assert_int_equal(bdev_block_status_sync(bd, 4 * HV_MiB, 2 * HV_MiB, &status, &len, &depth), 0);
    assert_int_equal(depth, -1);
    expect_zero(bd, 4 * HV_MiB, 2 * HV_MiB);
    /* Write-zeroes without unmap keeps the block, zeroed. */
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_WRITE_ZEROES, 6 * HV_MiB, 2 * HV_MiB, 0), 0);
    assert_int_equal(bdev_block_status_sync(bd, 6 * HV_MiB, 2 * HV_MiB, &status, &len, &depth), 0);
    assert_int_equal(depth, 0);
    expect_zero(bd, 6 * HV_MiB, 2 * HV_MiB);
    /* A discarded block written again gets fresh space and no stale bytes. */
    write_at(bd, 2 * HV_MiB + 4096, p, 4096);
    expect_zero(bd, 2 * HV_MiB, 4096);
    expect_at(bd, 2 * HV_MiB + 4096, p, 4096);
    expect_zero(bd, 2 * HV_MiB + 8192, 2 * HV_MiB - 8192);
    assert_int_equal(bdev_close(bd), 0);
    {
        struct vhd_info info;
        struct hv_err err = { 0 };
        assert_int_equal(vhd_inspect(base, &info, &err), 0);
        assert_int_equal(info.allocated_bytes, 3 * 2 * HV_MiB);
    }

    /* Differencing: write-zeroes hides the parent even with MAY_UNMAP; a
     * whole-block discard shows the parent again. */
    bd = open_rw(base);
    write_at(bd, 8 * HV_MiB, p, 4 * HV_MiB);
    assert_int_equal(bdev_close(bd), 0);
    create(child, VHD_TYPE_DIFFERENCING, 0, base);
    bd = open_rw(child);
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_WRITE_ZEROES, 8 * HV_MiB, 2 * HV_MiB,
                                       BDEV_IO_MAY_UNMAP), 0);
    expect_zero(bd, 8 * HV_MiB, 2 * HV_MiB);
    assert_int_equal(bdev_block_status_sync(bd, 8 * HV_MiB, 2 * HV_MiB, &status, &len, &depth), 0);
    assert_int_equal(depth, 0);
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_WRITE_ZEROES, 10 * HV_MiB + 512, 512, 0), 0);
    expect_zero(bd, 10 * HV_MiB + 512, 512);
    expect_at(bd, 10 * HV_MiB, p + 2 * HV_MiB, 512);
    expect_at(bd, 10 * HV_MiB + 1024, p + 2 * HV_MiB + 1024, 4096);
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_DISCARD, 8 * HV_MiB, 2 * HV_MiB, 0), 0);
    expect_at(bd, 8 * HV_MiB, p, 2 * HV_MiB);
    /* Write-zeroes over a range the parent does not hold allocates nothing. */
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_WRITE_ZEROES, 14 * HV_MiB, 2 * HV_MiB, 0), 0);
    assert_int_equal(
        bdev_block_status_sync(bd, 14 * HV_MiB, 2 * HV_MiB, &status, &len, &depth), 0);
    assert_int_equal(depth, -1);
    assert_int_equal(bdev_close(bd), 0);
    free(p);
}

static void test_second_writer_is_refused_by_the_lock(void **state)
{
    const char *path = t_path("lock.vhd");
    const char *child = t_path("lockchild.vhd");
    struct bdev *bd;
    struct bdev *second = NULL;
    struct hv_err err = { 0 };
    struct vhd_open_options ro = { .is_read_only = true };

    create(path, VHD_TYPE_DYNAMIC, 16 * HV_MiB, NULL);
    bd = open_rw(path);
    assert_int_equal(vhd_open(reactor, path, NULL, &second, &err), -EBUSY);
    assert_non_null(strstr(err.msg, "lock.vhd: in use"));
    assert_int_equal(vhd_open(reactor, path, &ro, &second, &err), -EBUSY);
    assert_int_equal(bdev_close(bd), 0);

    /* Readers share; a parent in use by a chain cannot be opened for writing. */
    create(child, VHD_TYPE_DIFFERENCING, 0, path);
    bd = open_rw(child);
    assert_int_equal(vhd_open(reactor, path, NULL, &second, &err), -EBUSY);
    assert_int_equal(vhd_open(reactor, path, &ro, &second, &err), 0);
    assert_true(second->is_read_only);
    uint8_t buf[512] = { 0 };
    assert_int_equal(bdev_write_sync(second, 0, buf, 512, 0), -EROFS);
    assert_int_equal(bdev_close(second), 0);
    assert_int_equal(bdev_close(bd), 0);
}

static void patch_parent_uuid(const char *path, const uint8_t uuid[16])
{
    uint8_t h[1024];
    struct vhd_header hdr;
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(hv_pread_full(fd, h, 1024, 512), 0);
    vhd_header_parse(h, &hdr);
    memcpy(hdr.parent_uuid, uuid, 16);
    vhd_header_encode(&hdr, h);
    assert_int_equal(hv_pwrite_full(fd, h, 1024, 512), 0);
    close(fd);
}

static void test_parent_lookup_order_mismatch_missing_and_loops(void **state)
{
    char dir[512];
    char a[600];
    char b[600];
    char c[600];
    char moved[600];
    struct bdev *bd = NULL;
    struct hv_err err = { 0 };
    struct vhd_info ia;
    struct vhd_info ic;

    snprintf(dir, sizeof(dir), "%s/lookup", t_tmpdir());
    mkdir(dir, 0755);
    snprintf(a, sizeof(a), "%s/a.vhd", dir);
    snprintf(b, sizeof(b), "%s/b.vhd", dir);
    snprintf(c, sizeof(c), "%s/c.vhd", dir);
    create(a, VHD_TYPE_DYNAMIC, 8 * HV_MiB, NULL);
    create(b, VHD_TYPE_DIFFERENCING, 0, a);

    /* Moving the pair together: the relative locator still finds the parent. */
    snprintf(moved, sizeof(moved), "%s/lookup2", t_tmpdir());
    assert_int_equal(rename(dir, moved), 0);
    snprintf(c, sizeof(c), "%s/b.vhd", moved);
    bd = open_rw(c);
    snprintf(a, sizeof(a), "%s/a.vhd", moved);
    assert_string_equal(vhd_chain_path(bd, 1), a);
    assert_int_equal(bdev_close(bd), 0);
    assert_int_equal(rename(moved, dir), 0);
    snprintf(a, sizeof(a), "%s/a.vhd", dir);

    /* A different image in the parent's place: refused, naming both. */
    create(a, VHD_TYPE_DYNAMIC, 8 * HV_MiB, NULL);
    assert_int_equal(vhd_open(reactor, b, NULL, &bd, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "b.vhd"));
    assert_non_null(strstr(err.msg, "a.vhd"));
    assert_non_null(strstr(err.msg, "unique id"));

    /* Missing parent. */
    unlink(a);
    assert_int_equal(vhd_open(reactor, b, NULL, &bd, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "parent not found"));

    /* A loop: c is b's child; then c takes a's place and b's parent id is
     * patched to c's, so b -> "a.vhd" (= c) -> b. */
    create(a, VHD_TYPE_DYNAMIC, 8 * HV_MiB, NULL);
    assert_int_equal(vhd_inspect(a, &ia, &err), 0);
    patch_parent_uuid(b, ia.uuid);
    snprintf(c, sizeof(c), "%s/c.vhd", dir);
    create(c, VHD_TYPE_DIFFERENCING, 0, b);
    assert_int_equal(vhd_inspect(c, &ic, &err), 0);
    assert_int_equal(rename(c, a), 0);
    patch_parent_uuid(b, ic.uuid);
    assert_int_equal(vhd_open(reactor, b, NULL, &bd, &err), -ELOOP);
    assert_non_null(strstr(err.msg, "loop"));
}

/* ----------------------------------------------------- crash ordering */

struct record {
    int writes;
    int syncs;
    int completed;
    int max_seq;
    int fua_writes;
    uint64_t last_footer_write;
};

static void rec_submit(void *arg, int seq, bool is_sync, bool is_fua, uint64_t offset,
                       const struct iovec *iov, int iovcnt)
{
    struct record *r = arg;
    if (is_sync)
        r->syncs++;
    else
        r->writes++;
    if (is_fua)
        r->fua_writes++;
    r->max_seq = seq;
    if (!is_sync && iovcnt == 1 && iov[0].iov_len == 512 &&
        memcmp(iov[0].iov_base, "conectix", 8) == 0)
        r->last_footer_write = offset;
}

static void rec_complete(void *arg, int seq, long res)
{
    struct record *r = arg;
    r->completed++;
}

static void test_allocation_costs_no_fsync_and_bat_waits_for_flush(void **state)
{
    const char *path = t_path("order.vhd");
    struct record rec = { 0 };
    struct vhd_io_observer obs = { rec_submit, rec_complete, &rec };
    struct vhd_open_options o = { .observer = &obs };
    struct bdev *bd = NULL;
    struct hv_err err = { 0 };
    struct vhd_info info;
    uint8_t *p = pattern(64 * 1024, 41);

    create(path, VHD_TYPE_DYNAMIC, 256 * HV_MiB, NULL);
    assert_int_equal(vhd_open(reactor, path, &o, &bd, &err), 0);
    for (int i = 0; i < 64; i++)
        write_at(bd, (uint64_t)i * 2 * HV_MiB, p, 64 * 1024);      /* 64 new blocks */
    /* Growth happened in large steps, each one new footer and one sync. */
    assert_true(rec.syncs <= 3);
    assert_true(rec.last_footer_write >= 64 * 2 * HV_MiB);
    /* Nothing on disk points at the new blocks before a flush. */
    assert_int_equal(vhd_inspect(path, &info, &err), 0);
    assert_int_equal(info.allocated_bytes, 0);
    int syncs_before = rec.syncs;
    assert_int_equal(bdev_flush_sync(bd), 0);
    assert_int_equal(rec.syncs, syncs_before + 2);    /* data, then metadata */
    assert_int_equal(vhd_inspect(path, &info, &err), 0);
    assert_int_equal(info.allocated_bytes, 64ull * 2 * HV_MiB);
    /* A flush with nothing new is one fdatasync. */
    assert_int_equal(bdev_flush_sync(bd), 0);
    assert_int_equal(rec.syncs, syncs_before + 3);
    /* A FUA write that allocates is durable with its metadata on completion. */
    assert_int_equal(rec.fua_writes, 0);
    assert_int_equal(bdev_write_sync(bd, 200 * HV_MiB, p, 4096, BDEV_IO_FUA), 0);
    assert_int_equal(rec.fua_writes, 1);      /* its data write, RWF_DSYNC */
    assert_int_equal(vhd_inspect(path, &info, &err), 0);
    assert_int_equal(info.allocated_bytes, 65ull * 2 * HV_MiB);
    /* While open, the file still ends in a valid footer (the reserve's). */
    assert_true(info.is_footer_ok);
    assert_int_equal(bdev_close(bd), 0);
    assert_int_equal(rec.writes + rec.syncs, rec.completed);
    free(p);
}

static void test_discarded_space_is_reused_and_close_fills_holes(void **state)
{
    const char *path = t_path("reuse.vhd");
    const uint64_t block = VHD_DEFAULT_BLOCK_BYTES;
    uint8_t *p = pattern(16 * block, 51);
    struct bdev *bd;
    struct stat st_full;
    struct stat st_after;
    struct vhd_info info;
    struct hv_err err = { 0 };

    create(path, VHD_TYPE_DYNAMIC, 64 * HV_MiB, NULL);
    bd = open_rw(path);
    write_at(bd, 0, p, 16 * block);
    assert_int_equal(bdev_flush_sync(bd), 0);
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_DISCARD, 2 * block, 4 * block, 0), 0);
    assert_int_equal(bdev_flush_sync(bd), 0);
    /* Two new blocks after the flush that freed four: they take holes. */
    write_at(bd, 20 * block, p, 2 * block);
    assert_int_equal(bdev_close(bd), 0);
    assert_int_equal(vhd_inspect(path, &info, &err), 0);
    assert_int_equal(info.allocated_bytes, 14 * block);
    /* The file holds 14 blocks and nothing more: the two remaining holes
     * were filled from the end at close. */
    assert_int_equal(stat(path, &st_after), 0);
    assert_true((uint64_t)st_after.st_size <= 8192 + 14 * (block + 4096) + 512);

    bd = open_rw(path);
    expect_at(bd, 0, p, 2 * block);
    expect_zero(bd, 2 * block, 4 * block);
    expect_at(bd, 6 * block, p + 6 * block, 10 * block);
    expect_at(bd, 20 * block, p, 2 * block);
    /* Discard and rewrite forever does not grow the file forever. */
    assert_int_equal(stat(path, &st_full), 0);
    write_at(bd, 30 * block, p, block);         /* the file grows once here */
    assert_int_equal(bdev_flush_sync(bd), 0);
    assert_int_equal(stat(path, &st_full), 0);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(bdev_request_sync(bd, BDEV_IO_DISCARD, 8 * block, 4 * block, 0), 0);
        assert_int_equal(bdev_flush_sync(bd), 0);
        write_at(bd, 8 * block, p, 4 * block);
    }
    /* Still open: without reuse 160 MiB would have gone to new space. */
    assert_int_equal(stat(path, &st_after), 0);
    assert_int_equal(st_after.st_size, st_full.st_size);
    assert_int_equal(bdev_close(bd), 0);
    assert_int_equal(stat(path, &st_after), 0);
    assert_true(st_after.st_size <= st_full.st_size);
    assert_int_equal(vhd_inspect(path, &info, &err), 0);
    bd = open_rw(path);
    expect_at(bd, 8 * block, p, 4 * block);
    expect_at(bd, 6 * block, p + 6 * block, 2 * block);
    assert_int_equal(bdev_close(bd), 0);
    free(p);
}

static void test_fua_write_to_a_block_allocated_unflushed_is_durable(void **state)
{
    const char *path = t_path("fua.vhd");
    uint8_t *p = pattern(8192, 61);
    struct vhd_info info;
    struct hv_err err = { 0 };
    struct bdev *bd;

    create(path, VHD_TYPE_DYNAMIC, 16 * HV_MiB, NULL);
    bd = open_rw(path);
    write_at(bd, 0, p, 4096);                           /* allocates, not durable */
    assert_int_equal(vhd_inspect(path, &info, &err), 0);
    assert_int_equal(info.allocated_bytes, 0);
    assert_int_equal(bdev_write_sync(bd, 4096, p + 4096, 4096, BDEV_IO_FUA), 0);
    /* The FUA write is reachable on disk without any flush. */
    assert_int_equal(vhd_inspect(path, &info, &err), 0);
    assert_int_equal(info.allocated_bytes, VHD_DEFAULT_BLOCK_BYTES);
    assert_int_equal(bdev_close(bd), 0);
    free(p);
}

/* ------------------------------------------------------ random workload */

#define RW_SLOTS 16

struct rw_slot {
    struct bdev_io *io;
    struct iovec iov;
    uint8_t *buf;
    bool is_busy;
    int *outstanding;
};

static void rw_done(struct bdev_io *io, int status)
{
    struct rw_slot *s = io->cb_arg;
    if (status != 0)
        fail_msg("I/O type %d at %" PRIu64 " failed: %d", io->type, io->offset, status);
    s->is_busy = false;
    (*s->outstanding)--;
}

static void run_workload(const char *path, uint64_t size, uint8_t *model, uint64_t seed,
                         int rounds, bool can_discard, uint64_t max_len)
{
    struct bdev *bd = open_rw(path);
    struct rw_slot slots[RW_SLOTS];
    int outstanding = 0;
    uint64_t rs = seed;

    for (int i = 0; i < RW_SLOTS; i++) {
        slots[i].io = calloc(1, bdev_io_size(bd));
        slots[i].buf = hv_alloc_aligned(max_len);
        slots[i].outstanding = &outstanding;
        slots[i].is_busy = false;
    }
    for (int round = 0; round < rounds; round++) {
        /* A batch of non-overlapping operations in flight together. */
        uint64_t used_lo[RW_SLOTS];
        uint64_t used_hi[RW_SLOTS];
        int n = 0;
        for (int i = 0; i < RW_SLOTS; i++) {
            uint64_t len = (1 + t_rand(&rs) % (max_len / 512)) * 512;
            uint64_t off = (t_rand(&rs) % ((size - len) / 512 + 1)) * 512;
            bool clash = false;
            for (int k = 0; k < n; k++)
                if (off < used_hi[k] && used_lo[k] < off + len)
                    clash = true;
            if (clash)
                continue;
            used_lo[n] = off;
            used_hi[n] = off + len;
            n++;
            struct rw_slot *s = &slots[i];
            struct bdev_io *io = s->io;
            unsigned kind = (unsigned)(t_rand(&rs) % 100);
            memset(io, 0, bdev_io_size(bd));
            io->offset = off;
            io->length = len;
            io->done = rw_done;
            io->cb_arg = s;
            if (kind < 45) {
                io->type = BDEV_IO_WRITE;
                t_fill(s->buf, len, t_rand(&rs));
                memcpy(model + off, s->buf, len);
                s->iov.iov_base = s->buf;
                s->iov.iov_len = len;
                io->iov = &s->iov;
                io->iovcnt = 1;
                if (kind < 5)
                    io->flags = BDEV_IO_FUA;
            } else if (kind < 50) {
                io->type = BDEV_IO_WRITE_ZEROES;
                io->flags = kind & 1 ? BDEV_IO_MAY_UNMAP : 0;
                memset(model + off, 0, len);
            } else if (kind < 55 && can_discard) {
                io->type = BDEV_IO_DISCARD;
                /* Dynamic: discarded ranges read zero. */
                memset(model + off, 0, len);
            } else {
                io->type = BDEV_IO_READ;
                s->iov.iov_base = s->buf;
                s->iov.iov_len = len;
                io->iov = &s->iov;
                io->iovcnt = 1;
            }
            s->is_busy = true;
            outstanding++;
            assert_int_equal(bdev_submit(bd, io), 0);
        }
        while (outstanding)
            hv_reactor_run_once(reactor, 1000);
        /* Reads of the batch are checked after it (ranges did not overlap). */
        for (int i = 0; i < RW_SLOTS; i++) {
            struct bdev_io *io = slots[i].io;
            if (io->type == BDEV_IO_READ && io->length &&
                memcmp(slots[i].buf, model + io->offset, io->length) != 0)
                fail_msg("round %d: read at %" PRIu64 " differs from the model", round,
                         io->offset);
            io->length = 0;
        }
        if (round % 16 == 15)
            assert_int_equal(bdev_flush_sync(bd), 0);
    }
    /* Everything, in one pass. */
    uint8_t *all = hv_alloc_aligned(size);
    assert_int_equal(bdev_read_sync(bd, 0, all, size), 0);
    for (uint64_t o = 0; o < size; o += 512)
        if (memcmp(all + o, model + o, 512) != 0)
            fail_msg("sector at %" PRIu64 " differs from the model", o);
    free(all);
    for (int i = 0; i < RW_SLOTS; i++) {
        free(slots[i].io);
        free(slots[i].buf);
    }
    assert_int_equal(bdev_close(bd), 0);
}

static void test_random_workload_matches_in_memory_model(void **state)
{
    const char *path = t_path("random.vhd");
    const uint64_t size = 48 * HV_MiB + 512;
    uint8_t *model = calloc(1, size);
    uint8_t *all = hv_alloc_aligned(size);
    struct bdev *bd;

    create(path, VHD_TYPE_DYNAMIC, size, NULL);
    run_workload(path, size, model, 77, 160, true, 256 * 1024);
    /* Reopened (metadata from disk), it still matches; then more work. */
    run_workload(path, size, model, 78, 80, true, 256 * 1024);
    bd = open_rw(path);
    assert_int_equal(bdev_read_sync(bd, 0, all, size), 0);
    assert_memory_equal(all, model, size);
    assert_int_equal(bdev_close(bd), 0);
    {
        struct vhd_info info;
        struct hv_err err = { 0 };
        assert_int_equal(vhd_inspect(path, &info, &err), 0);
    }
    free(model);
    free(all);
}

static void test_random_workload_on_differencing_child(void **state)
{
    const char *base = t_path("rbase.vhd");
    const char *child = t_path("rchild.vhd");
    const uint64_t size = 24 * HV_MiB;
    uint8_t *model = calloc(1, size);
    uint8_t *all = hv_alloc_aligned(size);
    uint8_t before[16];
    uint8_t after[16];
    struct bdev *bd;

    create(base, VHD_TYPE_DYNAMIC, size, NULL);
    bd = open_rw(base);
    t_fill(model, size / 2, 99);
    write_at(bd, 0, model, size / 2);
    assert_int_equal(bdev_close(bd), 0);
    create(child, VHD_TYPE_DIFFERENCING, 0, base);
    file_hash(base, before);

    /* Differencing: a discard may show the parent; keep the model exact by
     * discarding nothing here (write-zeroes stays exact). */
    bd = open_rw(child);
    uint64_t rs = 5;
    uint8_t *buf = hv_alloc_aligned(256 * 1024);
    for (int i = 0; i < 300; i++) {
        uint64_t len = (1 + t_rand(&rs) % 512) * 512;
        uint64_t off = (t_rand(&rs) % ((size - len) / 512 + 1)) * 512;
        unsigned kind = (unsigned)(t_rand(&rs) % 10);
        if (kind < 6) {
            t_fill(buf, len, t_rand(&rs));
            memcpy(model + off, buf, len);
            write_at(bd, off, buf, len);
        } else if (kind < 8) {
            memset(model + off, 0, len);
            assert_int_equal(bdev_request_sync(bd, BDEV_IO_WRITE_ZEROES, off, len,
                                               BDEV_IO_MAY_UNMAP), 0);
        } else {
            expect_at(bd, off, model + off, len);
        }
        if (i % 50 == 49)
            assert_int_equal(bdev_flush_sync(bd), 0);
    }
    assert_int_equal(bdev_close(bd), 0);
    bd = open_rw(child);
    assert_int_equal(bdev_read_sync(bd, 0, all, size), 0);
    assert_memory_equal(all, model, size);
    assert_int_equal(bdev_close(bd), 0);
    file_hash(base, after);
    assert_memory_equal(before, after, 16);
    free(buf);
    free(model);
    free(all);
}

static void test_chain_deeper_than_the_limit_is_refused(void **state)
{
    char prev[600];
    char cur[600];
    struct bdev *bd = NULL;
    struct hv_err err = { 0 };
    uint8_t *p = pattern(4096, 91);

    snprintf(prev, sizeof(prev), "%s/deep0.vhd", t_tmpdir());
    create(prev, VHD_TYPE_DYNAMIC, 8 * HV_MiB, NULL);
    bd = open_rw(prev);
    write_at(bd, 0, p, 4096);
    assert_int_equal(bdev_close(bd), 0);
    for (int i = 1; i < VHD_MAX_CHAIN_DEPTH; i++) {
        snprintf(cur, sizeof(cur), "%s/deep%d.vhd", t_tmpdir(), i);
        create(cur, VHD_TYPE_DIFFERENCING, 0, prev);
        snprintf(prev, sizeof(prev), "%s", cur);
    }
    /* Exactly the limit opens, and reads through all of it. */
    bd = open_rw(prev);
    assert_int_equal(vhd_chain_depth(bd), VHD_MAX_CHAIN_DEPTH);
    expect_at(bd, 0, p, 4096);
    assert_int_equal(bdev_close(bd), 0);
    snprintf(cur, sizeof(cur), "%s/deep%d.vhd", t_tmpdir(), VHD_MAX_CHAIN_DEPTH);
    create(cur, VHD_TYPE_DIFFERENCING, 0, prev);
    assert_int_equal(vhd_open(reactor, cur, NULL, &bd, &err), -ELOOP);
    assert_non_null(strstr(err.msg, "deeper than"));
    free(p);
}

static bool bitmaps_are_whole_bytes(const char *path)
{
    struct vhd_footer f;
    struct vhd_header h;
    uint8_t fb[512];
    uint8_t hb[1024];
    struct hv_err err = { 0 };
    struct stat st;
    int fd = open(path, O_RDONLY);
    bool ok = true;
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    assert_int_equal(hv_pread_full(fd, fb, 512, (uint64_t)st.st_size - 512), 0);
    assert_int_equal(vhd_footer_decode(fb, &f, path, "footer", (uint64_t)st.st_size, &err), 0);
    assert_int_equal(hv_pread_full(fd, hb, 1024, f.data_offset), 0);
    assert_int_equal(vhd_header_decode(hb, &f, &h, path, (uint64_t)st.st_size, &err), 0);
    uint8_t *raw = malloc(vhd_bat_bytes(h.max_table_entries));
    uint32_t *bat = malloc(4 * (size_t)h.max_table_entries);
    assert_int_equal(
        hv_pread_full(fd, raw, vhd_bat_bytes(h.max_table_entries), h.table_offset), 0);
    vhd_bat_parse(raw, h.max_table_entries, bat);
    for (uint32_t b = 0; b < h.max_table_entries && ok; b++) {
        uint8_t bm[512];
        if (bat[b] == VHD_BAT_UNALLOCATED)
            continue;
        assert_int_equal(hv_pread_full(fd, bm, 512, (uint64_t)bat[b] * 512), 0);
        for (int i = 0; i < 512; i++)
            if (bm[i] != 0 && bm[i] != 0xFF)
                ok = false;
    }
    free(raw);
    free(bat);
    close(fd);
    return ok;
}

static void test_unaligned_child_writes_copy_up_whole_groups_libvhdi_agrees(void **state)
{
    const char *base = t_path("cubase.vhd");
    const char *child = t_path("cuchild.vhd");
    const uint64_t size = 16 * HV_MiB + 512;
    uint8_t *model = hv_alloc_aligned(size);
    uint8_t *all = hv_alloc_aligned(size);
    uint8_t *q = pattern(8192, 71);
    struct bdev *bd;

    create(base, VHD_TYPE_DYNAMIC, size, NULL);
    bd = open_rw(base);
    t_fill(model, size, 70);
    write_at(bd, 0, model, size);
    assert_int_equal(bdev_close(bd), 0);
    create(child, VHD_TYPE_DIFFERENCING, 0, base);
    bd = open_rw(child);
    /* A partition table, a sector inside a group, a range with both edges
     * inside groups, zeroes with unaligned edges, and the odd last sector. */
    static const struct { uint64_t off; uint64_t len; bool zero; } w[] = {
        { 0, 512, false },
        { 2 * HV_MiB + 1536, 512, false },
        { 5 * HV_MiB - 1024, 6144, false },
        { 9 * HV_MiB + 512, 7168, true },
        { 16 * HV_MiB, 512, false },
    };
    for (size_t i = 0; i < HV_ARRAY_SIZE(w); i++) {
        if (w[i].zero) {
            assert_int_equal(
                bdev_request_sync(bd, BDEV_IO_WRITE_ZEROES, w[i].off, w[i].len, 0), 0);
            memset(model + w[i].off, 0, w[i].len);
        } else {
            write_at(bd, w[i].off, q, w[i].len);
            memcpy(model + w[i].off, q, w[i].len);
        }
    }
    assert_int_equal(bdev_read_sync(bd, 0, all, size), 0);
    assert_memory_equal(all, model, size);
    assert_int_equal(bdev_close(bd), 0);
    assert_true(bitmaps_are_whole_bytes(child));

    /* libvhdi reads the chain the same (when FUSE works here). */
    char mnt[512];
    snprintf(mnt, sizeof(mnt), "%s/mnt", t_tmpdir());
    mkdir(mnt, 0755);
    if (t_run(NULL, 0, "command -v vhdimount >/dev/null && vhdimount '%s' '%s' >/dev/null 2>&1",
              child, mnt) == 0) {
        char img[600];
        snprintf(img, sizeof(img), "%s/vhdi2", mnt);
        int fd = open(img, O_RDONLY);
        if (fd >= 0) {
            uint8_t *got = malloc(size);
            assert_int_equal(hv_pread_full(fd, got, size, 0), 0);
            close(fd);
            t_run(NULL, 0, "fusermount -u '%s' 2>/dev/null || umount '%s'", mnt, mnt);
            if (memcmp(got, model, size) != 0) {
                uint64_t i = 0;
                while (got[i] == model[i])
                    i++;
                fail_msg("vhdimount reads the child differently at %" PRIu64, i);
            }
            free(got);
        } else {
            t_run(NULL, 0, "fusermount -u '%s' 2>/dev/null || umount '%s'", mnt, mnt);
        }
    }
    free(model);
    free(all);
    free(q);
}

static void test_concurrent_unaligned_writes_in_one_group_all_survive(void **state)
{
    const char *base = t_path("ccbase.vhd");
    const char *child = t_path("ccchild.vhd");
    const uint64_t size = 4 * HV_MiB;
    uint8_t *model = calloc(1, size);
    uint8_t *all = hv_alloc_aligned(size);
    struct bdev *bd;

    create(base, VHD_TYPE_DYNAMIC, size, NULL);
    bd = open_rw(base);
    t_fill(model, size, 80);
    write_at(bd, 0, model, size);
    assert_int_equal(bdev_close(bd), 0);
    create(child, VHD_TYPE_DIFFERENCING, 0, base);
    /* Small random writes at QD16: many land in the same 4 KiB group at
     * once, and every one must survive the others' copy-up. */
    run_workload(child, size, model, 81, 120, false, 8 * 512);
    run_workload(child, size, model, 82, 60, false, 64 * 1024);
    bd = open_rw(child);
    assert_int_equal(bdev_read_sync(bd, 0, all, size), 0);
    assert_memory_equal(all, model, size);
    assert_int_equal(bdev_close(bd), 0);
    assert_true(bitmaps_are_whole_bytes(child));
    free(model);
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dynamic_write_read_survives_reopen_and_qemu_reads_it),
        cmocka_unit_test(test_engine_reads_what_qemu_img_wrote),
        cmocka_unit_test(test_fixed_image_reads_writes_and_keeps_its_footer),
        cmocka_unit_test(test_differencing_writes_leave_parent_unchanged),
        cmocka_unit_test(test_chain_of_three_reads_each_layer_and_reports_depth),
        cmocka_unit_test(test_discard_and_write_zeroes_free_and_hide_correctly),
        cmocka_unit_test(test_second_writer_is_refused_by_the_lock),
        cmocka_unit_test(test_parent_lookup_order_mismatch_missing_and_loops),
        cmocka_unit_test(test_chain_deeper_than_the_limit_is_refused),
        cmocka_unit_test(test_allocation_costs_no_fsync_and_bat_waits_for_flush),
        cmocka_unit_test(test_discarded_space_is_reused_and_close_fills_holes),
        cmocka_unit_test(test_fua_write_to_a_block_allocated_unflushed_is_durable),
        cmocka_unit_test(test_random_workload_matches_in_memory_model),
        cmocka_unit_test(test_random_workload_on_differencing_child),
        cmocka_unit_test(test_unaligned_child_writes_copy_up_whole_groups_libvhdi_agrees),
        cmocka_unit_test(test_concurrent_unaligned_writes_in_one_group_all_survive),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
