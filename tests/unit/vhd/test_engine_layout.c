/* Unit tests for where the VHD engine places blocks in the file and how it
 * writes its metadata back: concurrent allocating writes keep file order,
 * and close/flush rounds coalesce metadata writes. */
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

#include "engine.h"
#include "format.h"
#include "testlib.h"
#include "vhd.h"
#include "engine_fixture.h"

static void create(const char *path, enum vhd_type type, uint64_t size)
{
    struct vhd_create_options o = { .type = type, .size_bytes = size };
    struct hv_err err = { 0 };
    unlink(path);
    if (vhd_create(path, &o, &err) != 0)
        fail_msg("create %s: %s", path, err.msg);
}

static void load_bat(const char *path, struct vhd_meta *m)
{
    struct hv_err err = { 0 };
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    if (vhd_meta_load(fd, path, true, m, &err) != 0)
        fail_msg("%s", err.msg);
    close(fd);
}

struct counter {
    int outstanding;
};

static void io_done(struct bdev_io *io, int status)
{
    struct counter *c = io->cb_arg;
    if (status != 0)
        fail_msg("write at %" PRIu64 " failed: %d", io->offset, status);
    c->outstanding--;
}

/* Submit `count` writes of `len` bytes at `stride` apart, all at once. */
static void write_all_at_once(struct bdev *bd, int count, uint64_t stride, uint64_t len,
                              uint8_t *buf)
{
    struct counter c = { 0 };
    struct bdev_io **ios = calloc((size_t)count, sizeof(*ios));
    struct iovec *iov = calloc((size_t)count, sizeof(*iov));
    assert_non_null(ios);
    assert_non_null(iov);
    for (int i = 0; i < count; i++) {
        ios[i] = calloc(1, bdev_io_size(bd));
        assert_non_null(ios[i]);
        iov[i].iov_base = buf;
        iov[i].iov_len = len;
        ios[i]->type = BDEV_IO_WRITE;
        ios[i]->offset = (uint64_t)i * stride;
        ios[i]->length = len;
        ios[i]->iov = &iov[i];
        ios[i]->iovcnt = 1;
        ios[i]->done = io_done;
        ios[i]->cb_arg = &c;
        c.outstanding++;
        assert_int_equal(bdev_submit(bd, ios[i]), 0);
    }
    while (c.outstanding)
        assert_true(hv_reactor_run_once(reactor, 1000) >= 0);
    for (int i = 0; i < count; i++)
        free(ios[i]);
    free(ios);
    free(iov);
}

/* Writes parked while the file grows resume oldest first: writes submitted
 * in offset order at QD16 into a fresh image get blocks in file order. */
static void test_parked_allocating_writes_keep_file_order(void **state)
{
    (void)state;
    const char *path = t_path("layout.vhd");
    struct vhd_open_options o = { .queue_depth = 16 };
    struct bdev *bd = NULL;
    struct hv_err err = { 0 };
    struct vhd_meta m;
    uint8_t *buf = hv_alloc_aligned(64 * 1024);

    t_fill(buf, 64 * 1024, 7);
    create(path, VHD_TYPE_DYNAMIC, 256 * HV_MiB);
    if (vhd_open(reactor, path, &o, &bd, &err) != 0)
        fail_msg("%s", err.msg);
    write_all_at_once(bd, 16, VHD_DEFAULT_BLOCK_BYTES, 64 * 1024, buf);
    assert_int_equal(bdev_close(bd), 0);

    load_bat(path, &m);
    for (uint32_t b = 0; b < 16; b++) {
        assert_int_not_equal(m.bat[b], VHD_BAT_UNALLOCATED);
        if (b > 0 && m.bat[b] <= m.bat[b - 1])
            fail_msg("block %u at sector %u lies before block %u at sector %u", b, m.bat[b],
                     b - 1, m.bat[b - 1]);
    }
    vhd_meta_free(&m);
    free(buf);
}

struct meta_record {
    uint64_t table_offset;
    int bat_writes;
    uint64_t bat_bytes;
    int syncs;
};

static void meta_submit(void *arg, int seq, bool is_sync, bool is_fua, uint64_t offset,
                        const struct iovec *iov, int iovcnt)
{
    struct meta_record *r = arg;
    (void)seq;
    (void)is_fua;
    if (is_sync) {
        r->syncs++;
        return;
    }
    if (offset >= r->table_offset && offset < r->table_offset + 16 * 1024) {
        r->bat_writes++;
        r->bat_bytes += hv_iov_length(iov, iovcnt);
    }
}

static void meta_complete(void *arg, int seq, long res)
{
    (void)arg;
    (void)seq;
    if (res < 0)
        fail_msg("observed request failed: %ld", res);
}

/* A flush round writes a run of dirty BAT chunks as one write, and the new
 * BAT is what a reader finds afterwards. */
static void test_flush_writes_a_run_of_dirty_bat_chunks_once(void **state)
{
    (void)state;
    const char *path = t_path("batrun.vhd");
    struct meta_record rec = { 0 };
    struct vhd_io_observer obs = { meta_submit, meta_complete, &rec };
    struct vhd_open_options o = { .observer = &obs };
    struct bdev *bd = NULL;
    struct hv_err err = { 0 };
    struct vhd_meta m;
    uint8_t *buf = hv_alloc_aligned(4096);

    t_fill(buf, 4096, 9);
    /* 4096 entries: a 16 KiB BAT, four 4 KiB chunks. */
    create(path, VHD_TYPE_DYNAMIC, 4096ull * VHD_DEFAULT_BLOCK_BYTES);
    load_bat(path, &m);
    rec.table_offset = m.header.table_offset;
    vhd_meta_free(&m);
    if (vhd_open(reactor, path, &o, &bd, &err) != 0)
        fail_msg("%s", err.msg);
    for (int c = 0; c < 4; c++)
        assert_int_equal(bdev_write_sync(bd, (uint64_t)c * 1024 * VHD_DEFAULT_BLOCK_BYTES, buf,
                                         4096, 0), 0);
    assert_int_equal(rec.bat_writes, 0);
    int syncs = rec.syncs;
    assert_int_equal(bdev_flush_sync(bd), 0);
    assert_int_equal(rec.bat_writes, 1);
    assert_int_equal(rec.bat_bytes, 16 * 1024);
    assert_int_equal(rec.syncs, syncs + 2);       /* data, then metadata */
    load_bat(path, &m);
    for (uint32_t b = 0; b < 4096; b++)
        assert_true((m.bat[b] != VHD_BAT_UNALLOCATED) == (b % 1024 == 0));
    vhd_meta_free(&m);
    assert_int_equal(bdev_close(bd), 0);
    free(buf);
}

struct growth_record {
    int events;
    int footer_seen_at;         /* event number of the first footer write, -1 */
    int read_done_at;
};

static void growth_submit(void *arg, int seq, bool is_sync, bool is_fua, uint64_t offset,
                          const struct iovec *iov, int iovcnt)
{
    struct growth_record *r = arg;
    (void)seq;
    (void)is_fua;
    (void)offset;
    if (!is_sync && iovcnt == 1 && iov[0].iov_len == VHD_FOOTER_BYTES &&
        memcmp(iov[0].iov_base, "conectix", 8) == 0 && r->footer_seen_at < 0)
        r->footer_seen_at = r->events++;
}

static void growth_read_done(struct bdev_io *io, int status)
{
    struct growth_record *r = io->cb_arg;
    assert_int_equal(status, 0);
    r->read_done_at = r->events++;
}

static void growth_write_done(struct bdev_io *io, int status)
{
    bool *done = io->cb_arg;
    assert_int_equal(status, 0);
    *done = true;
}

/* Growing the file (fallocate, tens of milliseconds) does not hold the
 * reactor: a write that needs new space parks, and a read submitted right
 * after it completes before the new footer is even written. */
static void test_file_growth_runs_off_the_reactor(void **state)
{
    (void)state;
    const char *path = t_path("growth.vhd");
    struct growth_record rec = { 0, -1, -1 };
    struct vhd_io_observer obs = { growth_submit, meta_complete, &rec };
    struct vhd_open_options o = { .observer = &obs };
    struct bdev *bd = NULL;
    struct hv_err err = { 0 };
    uint8_t *buf = hv_alloc_aligned(4096);
    struct iovec wiov = { buf, 4096 };
    uint8_t *rbuf = hv_alloc_aligned(4096);
    struct iovec riov = { rbuf, 4096 };
    bool is_written = false;

    t_fill(buf, 4096, 11);
    create(path, VHD_TYPE_DYNAMIC, 1 * HV_GiB);
    if (vhd_open(reactor, path, &o, &bd, &err) != 0)
        fail_msg("%s", err.msg);
    struct bdev_io *w = calloc(1, bdev_io_size(bd));
    struct bdev_io *r = calloc(1, bdev_io_size(bd));
    *w = (struct bdev_io){ .type = BDEV_IO_WRITE, .offset = 0, .length = 4096, .iov = &wiov,
                           .iovcnt = 1, .done = growth_write_done, .cb_arg = &is_written };
    *r = (struct bdev_io){ .type = BDEV_IO_READ, .offset = 64 * HV_MiB, .length = 4096,
                           .iov = &riov, .iovcnt = 1, .done = growth_read_done, .cb_arg = &rec };
    assert_int_equal(bdev_submit(bd, w), 0);
    assert_int_equal(rec.footer_seen_at, -1);     /* nothing written from inside submit */
    assert_int_equal(bdev_submit(bd, r), 0);
    assert_int_equal(hv_reactor_run_until(reactor, &is_written), 0);
    assert_true(rec.read_done_at >= 0);
    assert_true(rec.footer_seen_at > rec.read_done_at);
    assert_int_equal(bdev_close(bd), 0);
    free(w);
    free(r);
    free(buf);
    free(rbuf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parked_allocating_writes_keep_file_order),
        cmocka_unit_test(test_flush_writes_a_run_of_dirty_bat_chunks_once),
        cmocka_unit_test(test_file_growth_runs_off_the_reactor),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
