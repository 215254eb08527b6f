/* Unit tests for snapshot/'s filters over real raw-file bdevs in a private
 * reactor, with many writers in flight. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "snapshot.h"
#include "testlib.h"

#define DISK_BYTES (8ull * 1024 * 1024)
#define BLOCK 4096u
#define WRITERS 16

static struct bdev *open_raw(struct hv_reactor *r, const char *name, uint64_t size)
{
    struct bdev_raw_options o = {.create = true, .size_bytes = size};
    struct bdev *bd = NULL;
    struct hv_err err = {0};
    unlink(t_path(name));
    assert_int_equal(bdev_raw_open(r, t_path(name), &o, &bd, &err), 0);
    return bd;
}

/* A writer keeps one request in flight: block b gets the 8-byte stamp
 * (disk, generation) repeated; every completion records the newest
 * generation of its block and resubmits at the next block. */
struct writer {
    struct bdev *bd;
    struct bdev_io *io;
    uint8_t *buf;
    struct iovec iov;
    uint64_t next_gen;
    uint64_t *last_gen; /* per block, shared by the disk's writers */
    uint64_t completed;
    uint64_t submitted;
    int disk;
    int index;
    bool is_stopping;
    bool is_idle;
    const bool *gate_held; /* a completion while held is a gate leak */
    uint64_t completed_while_held_submit;
    int status;
};

static uint64_t g_held_submit_gen; /* completions that entered after hold began */
static bool g_is_held;
static uint64_t g_hold_started_count;

static void writer_go(struct writer *w);

static void writer_done(struct bdev_io *io, int status)
{
    struct writer *w = io->cb_arg;
    if (status < 0)
        w->status = status;
    uint64_t block = io->offset / BLOCK;
    uint64_t gen;
    memcpy(&gen, w->buf + 8, 8);
    if (gen > w->last_gen[block])
        w->last_gen[block] = gen;
    w->completed++;
    if (g_is_held && w->submitted > g_hold_started_count)
        g_held_submit_gen++;
    if (w->is_stopping) {
        w->is_idle = true;
        return;
    }
    writer_go(w);
}

static uint64_t g_gen = 1;

static void writer_go(struct writer *w)
{
    uint64_t blocks = w->bd->size_bytes / BLOCK;
    uint64_t block = (w->next_gen * 7919 + (uint64_t)w->index * 31) % blocks;
    /* Writers of one disk never share a block at the same time: writer i
     * owns the blocks congruent to i. */
    block = block - block % WRITERS + (uint64_t)w->index;
    if (block >= blocks)
        block = (uint64_t)w->index;
    uint64_t gen = g_gen++;
    w->next_gen++;
    for (unsigned i = 0; i < BLOCK; i += 16) {
        uint64_t d = (uint64_t)w->disk;
        memcpy(w->buf + i, &d, 8);
        memcpy(w->buf + i + 8, &gen, 8);
    }
    w->iov.iov_base = w->buf;
    w->iov.iov_len = BLOCK;
    memset(w->io, 0, sizeof(*w->io));
    w->io->type = BDEV_IO_WRITE;
    w->io->offset = block * BLOCK;
    w->io->length = BLOCK;
    w->io->iov = &w->iov;
    w->io->iovcnt = 1;
    w->io->done = writer_done;
    w->io->cb_arg = w;
    w->submitted++;
    w->is_idle = false;
    assert_int_equal(bdev_submit(w->bd, w->io), 0);
}

static void writers_init(struct writer *ws, int n, struct bdev *bd, int disk, uint64_t *last)
{
    for (int i = 0; i < n; i++) {
        ws[i] = (struct writer){.bd = bd, .disk = disk, .index = i, .last_gen = last};
        ws[i].io = calloc(1, bdev_io_size(bd));
        ws[i].buf = hv_alloc_aligned(BLOCK);
        assert_non_null(ws[i].io);
    }
}

static void writers_stop(struct hv_reactor *r, struct writer *ws, int n)
{
    for (int i = 0; i < n; i++)
        ws[i].is_stopping = true;
    for (;;) {
        bool all = true;
        for (int i = 0; i < n; i++)
            all = all && ws[i].is_idle;
        if (all)
            break;
        hv_reactor_run_once(r, 100);
    }
}

static void writers_free(struct writer *ws, int n)
{
    for (int i = 0; i < n; i++) {
        assert_int_equal(ws[i].status, 0);
        free(ws[i].io);
        free(ws[i].buf);
    }
}

struct drain_wait {
    bool is_drained;
    struct snap_gate *gate;
    unsigned inflight_at_drain;
};

static void on_drained(void *arg, int status)
{
    struct drain_wait *dw = arg;
    assert_int_equal(status, 0);
    dw->inflight_at_drain = snap_gate_inflight(dw->gate);
    dw->is_drained = true;
}

static void run_for_ms(struct hv_reactor *r, uint64_t ms)
{
    uint64_t end = hv_now_ns() + ms * 1000000ull;
    while (hv_now_ns() < end)
        hv_reactor_run_once(r, 1);
}

/* Two disks behind one gate, 16 writers each: a hold drains both, nothing
 * completes or goes down while held, release resumes everything, and the
 * final contents are exactly the newest write of every block. */
static void test_gate_holds_every_disk_and_loses_nothing(void **state)
{
    (void)state;
    struct hv_reactor *r;
    struct snap_gate *g;
    struct hv_err err = {0};
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(snap_gate_create(r, &g), 0);
    struct bdev *disks[2];
    static uint64_t last[2][DISK_BYTES / BLOCK];
    struct writer ws[2][WRITERS];
    for (int d = 0; d < 2; d++) {
        struct bdev *raw = open_raw(r, d ? "gate1.raw" : "gate0.raw", DISK_BYTES);
        assert_int_equal(snap_gate_wrap(g, raw, &disks[d], &err), 0);
        writers_init(ws[d], WRITERS, disks[d], d, last[d]);
    }
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < WRITERS; i++)
            writer_go(&ws[d][i]);
    for (int round = 0; round < 5; round++) {
        run_for_ms(r, 20);
        struct drain_wait dw = {.gate = g};
        uint64_t before = 0;
        for (int d = 0; d < 2; d++)
            for (int i = 0; i < WRITERS; i++)
                before += ws[d][i].submitted;
        g_hold_started_count = 0;
        assert_int_equal(snap_gate_hold(g, on_drained, &dw), 0);
        assert_int_equal(snap_gate_hold(g, on_drained, &dw), -EBUSY);
        assert_int_equal(hv_reactor_run_until(r, &dw.is_drained), 0);
        assert_int_equal(dw.inflight_at_drain, 0);
        /* Held: for 10 ms nothing completes. */
        uint64_t done_at_drain = 0;
        for (int d = 0; d < 2; d++)
            for (int i = 0; i < WRITERS; i++)
                done_at_drain += ws[d][i].completed;
        g_is_held = true;
        run_for_ms(r, 10);
        g_is_held = false;
        uint64_t done_after = 0;
        for (int d = 0; d < 2; d++)
            for (int i = 0; i < WRITERS; i++)
                done_after += ws[d][i].completed;
        assert_int_equal(done_after, done_at_drain);
        snap_gate_release(g);
        struct snap_gate_stats st;
        snap_gate_get_stats(g, &st);
        assert_int_equal(st.passed_during_hold, 0);
        assert_true(st.held_requests > 0);
        assert_true(st.last_hold_ns >= 10000000ull);
        assert_true(st.last_drain_ns <= st.last_hold_ns);
        (void)before;
    }
    run_for_ms(r, 20);
    for (int d = 0; d < 2; d++)
        writers_stop(r, ws[d], WRITERS);
    /* Every block reads back as its newest write. */
    uint8_t *buf = hv_alloc_aligned(BLOCK);
    for (int d = 0; d < 2; d++) {
        for (uint64_t b = 0; b < DISK_BYTES / BLOCK; b++) {
            assert_int_equal(bdev_read_sync(disks[d], b * BLOCK, buf, BLOCK), 0);
            uint64_t gen, disk;
            memcpy(&disk, buf, 8);
            memcpy(&gen, buf + 8, 8);
            assert_int_equal(gen, last[d][b]);
            if (gen)
                assert_int_equal(disk, (uint64_t)d);
        }
        writers_free(ws[d], WRITERS);
        assert_int_equal(bdev_close(disks[d]), 0);
    }
    free(buf);
    snap_gate_destroy(g);
    hv_reactor_destroy(r);
}

/* The switchable top refuses a switch with requests in flight, and after a
 * switch during a hold new requests reach the new device. */
static void test_top_switches_only_when_idle(void **state)
{
    (void)state;
    struct hv_reactor *r;
    struct snap_gate *g;
    struct hv_err err = {0};
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(snap_gate_create(r, &g), 0);
    struct bdev *a = open_raw(r, "topa.raw", DISK_BYTES);
    struct bdev *b = open_raw(r, "topb.raw", DISK_BYTES);
    struct bdev *tb, *gb;
    struct snap_top *top;
    assert_int_equal(snap_top_wrap(a, &tb, &top, &err), 0);
    assert_int_equal(snap_gate_wrap(g, tb, &gb, &err), 0);
    static uint64_t last[DISK_BYTES / BLOCK];
    struct writer ws[WRITERS];
    writers_init(ws, WRITERS, gb, 0, last);
    for (int i = 0; i < WRITERS; i++)
        writer_go(&ws[i]);
    run_for_ms(r, 10);
    assert_int_equal(snap_top_switch(top, b), -EBUSY);
    struct drain_wait dw = {.gate = g};
    assert_int_equal(snap_gate_hold(g, on_drained, &dw), 0);
    assert_int_equal(hv_reactor_run_until(r, &dw.is_drained), 0);
    assert_int_equal(snap_top_switch(top, b), 0);
    snap_gate_release(g);
    run_for_ms(r, 10);
    writers_stop(r, ws, WRITERS);
    writers_free(ws, WRITERS);
    /* Writes after the switch landed in b, none of them in a. */
    uint8_t *buf = hv_alloc_aligned(BLOCK);
    uint64_t in_b = 0;
    for (uint64_t blk = 0; blk < DISK_BYTES / BLOCK; blk++) {
        assert_int_equal(bdev_read_sync(b, blk * BLOCK, buf, BLOCK), 0);
        in_b += !hv_buf_is_zero(buf, BLOCK);
    }
    assert_true(in_b > 0);
    free(buf);
    assert_ptr_equal(snap_top_current(top), b);
    assert_int_equal(bdev_close(a), 0);
    assert_int_equal(bdev_close(gb), 0);
    snap_gate_destroy(g);
    hv_reactor_destroy(r);
}

/* CBT marks writes, discards and zeroes at its granularity; a clean close
 * keeps the bitmap; a run that never closed makes the next one unreliable. */
static void test_cbt_tracks_persists_and_detects_unclean_stop(void **state)
{
    (void)state;
    struct hv_reactor *r;
    struct hv_err err = {0};
    assert_int_equal(hv_reactor_create(&r), 0);
    char st_path[4096];
    snprintf(st_path, sizeof(st_path), "%s", t_path("cbt.state"));
    unlink(st_path);
    struct bdev *raw = open_raw(r, "cbt.raw", DISK_BYTES);
    struct bdev *bd;
    struct snap_cbt *cbt;
    const char *why;
    assert_int_equal(snap_cbt_wrap(raw, 64 * 1024, st_path, &bd, &cbt, &err), 0);
    assert_false(snap_cbt_is_reliable(cbt, &why));
    assert_non_null(strstr(why, "no tracking history"));
    uint8_t *bits;
    bool was;
    char whybuf[256];
    assert_int_equal(snap_cbt_take(cbt, &bits, &was, whybuf, sizeof(whybuf)), 0);
    assert_false(was);
    free(bits);
    assert_true(snap_cbt_is_reliable(cbt, NULL));
    uint8_t *buf = hv_alloc_aligned(8192);
    memset(buf, 0xab, 8192);
    assert_int_equal(bdev_write_sync(bd, 64 * 1024 - 4096, buf, 8192, 0), 0); /* chunks 0,1 */
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_DISCARD, 5 * 64 * 1024, 4096, 0), 0);
    assert_int_equal(bdev_request_sync(bd, BDEV_IO_WRITE_ZEROES, 9 * 64 * 1024, 128 * 1024, 0),
                     0);                                                /* chunks 9,10 */
    assert_int_equal(bdev_read_sync(bd, 20 * 64 * 1024, buf, 4096), 0); /* no mark */
    assert_int_equal(bdev_close(bd), 0);

    /* Clean restart: same bits, reliable. */
    raw = open_raw(r, "cbt.raw", DISK_BYTES);
    assert_int_equal(snap_cbt_wrap(raw, 64 * 1024, st_path, &bd, &cbt, &err), 0);
    assert_true(snap_cbt_is_reliable(cbt, &why));
    assert_int_equal(snap_cbt_take(cbt, &bits, &was, NULL, 0), 0);
    assert_true(was);
    uint64_t marked = 0;
    for (uint64_t i = 0; i < snap_cbt_chunks(cbt); i++)
        marked += snap_bit_test(bits, i);
    assert_int_equal(marked, 5);
    assert_true(snap_bit_test(bits, 0) && snap_bit_test(bits, 1) && snap_bit_test(bits, 5) &&
                snap_bit_test(bits, 9) && snap_bit_test(bits, 10));
    /* A failed backup gives its bits back. */
    snap_cbt_merge_back(cbt, bits, true, NULL);
    free(bits);
    assert_int_equal(bdev_write_sync(bd, 30 * 64 * 1024, buf, 4096, 0), 0);
    /* Simulate a crash: keep the "in use" state file as it is on disk now. */
    assert_int_equal(t_run(NULL, 0, "cp '%s' '%s.crash'", st_path, st_path), 0);
    assert_int_equal(bdev_close(bd), 0);
    assert_int_equal(t_run(NULL, 0, "mv '%s.crash' '%s'", st_path, st_path), 0);
    raw = open_raw(r, "cbt.raw", DISK_BYTES);
    assert_int_equal(snap_cbt_wrap(raw, 64 * 1024, st_path, &bd, &cbt, &err), 0);
    assert_false(snap_cbt_is_reliable(cbt, &why));
    assert_non_null(strstr(why, "uncleanly"));
    assert_int_equal(bdev_close(bd), 0);

    /* A damaged file is not trusted either; a granularity change neither. */
    assert_int_equal(t_run(NULL, 0,
                           "printf 'garbage' | dd of='%s' bs=1 seek=50 conv=notrunc "
                           "status=none",
                           st_path),
                     0);
    raw = open_raw(r, "cbt.raw", DISK_BYTES);
    assert_int_equal(snap_cbt_wrap(raw, 64 * 1024, st_path, &bd, &cbt, &err), 0);
    assert_false(snap_cbt_is_reliable(cbt, &why));
    assert_int_equal(bdev_close(bd), 0);
    /* Closed cleanly but never reset: still no trustworthy history. */
    raw = open_raw(r, "cbt.raw", DISK_BYTES);
    assert_int_equal(snap_cbt_wrap(raw, 64 * 1024, st_path, &bd, &cbt, &err), 0);
    assert_false(snap_cbt_is_reliable(cbt, &why));
    assert_int_equal(snap_cbt_take(cbt, &bits, &was, NULL, 0), 0);
    free(bits);
    assert_int_equal(bdev_close(bd), 0); /* clean and reliable now */
    raw = open_raw(r, "cbt.raw", DISK_BYTES);
    assert_int_equal(snap_cbt_wrap(raw, 128 * 1024, st_path, &bd, &cbt, &err), 0);
    assert_false(snap_cbt_is_reliable(cbt, &why));
    assert_non_null(strstr(why, "resized or reconfigured"));
    assert_int_equal(bdev_close(bd), 0);
    raw = open_raw(r, "cbt.raw", DISK_BYTES);
    assert_int_equal(snap_cbt_wrap(raw, 3000, st_path, &bd, &cbt, &err), -EINVAL);
    assert_int_equal(bdev_close(raw), 0);
    free(buf);
    hv_reactor_destroy(r);
}

/* A disk whose VM is deleted: once its state is forgotten, its close (which
 * comes later, when the retired disk is idle) writes no file back. */
static void test_cbt_forget_state_writes_nothing_back(void **state)
{
    (void)state;
    struct hv_reactor *r;
    struct hv_err err = {0};
    struct bdev *bd;
    struct snap_cbt *cbt;
    struct stat st;
    char st_path[4096];
    assert_int_equal(hv_reactor_create(&r), 0);
    snprintf(st_path, sizeof(st_path), "%s", t_path("forget.state"));
    unlink(st_path);
    struct bdev *raw = open_raw(r, "forget.raw", DISK_BYTES);
    assert_int_equal(snap_cbt_wrap(raw, 64 * 1024, st_path, &bd, &cbt, &err), 0);
    assert_int_equal(stat(st_path, &st), 0); /* "in use" written at open */
    uint8_t *buf = hv_alloc_aligned(4096);
    memset(buf, 0x5a, 4096);
    assert_int_equal(bdev_write_sync(bd, 0, buf, 4096, 0), 0);
    snap_cbt_forget_state(cbt);
    assert_int_equal(unlink(st_path), 0); /* what hv does with the file */
    assert_int_equal(bdev_close(bd), 0);
    assert_int_equal(stat(st_path, &st), -1);
    assert_int_equal(errno, ENOENT);
    free(buf);
    hv_reactor_destroy(r);
}

/* The backup reader, racing 16 writers that overwrite chunks it has not
 * read yet, still reads exactly the disk as it was at start. */
struct cbw_backup {
    struct snap_cbw *cbw;
    uint8_t *image; /* what the backup got */
    uint64_t next;
    int inflight;
    int status;
    bool is_done;
    uint8_t *bufs[4];
    uint64_t chunk_of[4];
};

static void cbw_backup_kick(struct cbw_backup *b);

struct cbw_slot_arg {
    struct cbw_backup *b;
    int slot;
};
static struct cbw_slot_arg g_slot_args[4];

static void cbw_backup_done(void *arg, int status)
{
    struct cbw_slot_arg *sa = arg;
    struct cbw_backup *b = sa->b;
    uint32_t cb = snap_cbw_chunk_bytes(b->cbw);
    if (status < 0)
        b->status = status;
    memcpy(b->image + b->chunk_of[sa->slot] * cb, b->bufs[sa->slot], cb);
    b->chunk_of[sa->slot] = UINT64_MAX;
    b->inflight--;
    cbw_backup_kick(b);
}

static void cbw_backup_kick(struct cbw_backup *b)
{
    for (int s = 0; s < 4; s++) {
        if (b->chunk_of[s] != UINT64_MAX || b->next >= snap_cbw_chunks(b->cbw))
            continue;
        b->chunk_of[s] = b->next;
        g_slot_args[s] = (struct cbw_slot_arg){b, s};
        assert_int_equal(
            snap_cbw_read(b->cbw, b->next, b->bufs[s], cbw_backup_done, &g_slot_args[s]), 0);
        b->next++;
        b->inflight++;
    }
    if (b->inflight == 0 && b->next >= snap_cbw_chunks(b->cbw))
        b->is_done = true;
}

static void test_cbw_backup_sees_the_disk_as_it_was(void **state)
{
    (void)state;
    struct hv_reactor *r;
    struct hv_err err = {0};
    assert_int_equal(hv_reactor_create(&r), 0);
    struct bdev *raw = open_raw(r, "cbw.raw", DISK_BYTES);
    uint8_t *orig = malloc(DISK_BYTES);
    t_fill(orig, DISK_BYTES, 42);
    assert_int_equal(bdev_write_sync(raw, 0, orig, DISK_BYTES, 0), 0);
    struct bdev *bd;
    struct snap_cbw *cbw;
    assert_int_equal(snap_cbw_wrap(raw, 64 * 1024, 4, &bd, &cbw, &err), 0);
    static uint64_t last[DISK_BYTES / BLOCK];
    struct writer ws[WRITERS];
    writers_init(ws, WRITERS, bd, 1, last);
    assert_int_equal(snap_cbw_start(cbw), 0);
    for (int i = 0; i < WRITERS; i++)
        writer_go(&ws[i]);
    run_for_ms(r, 5);
    struct cbw_backup b = {.cbw = cbw, .image = malloc(DISK_BYTES)};
    for (int s = 0; s < 4; s++) {
        b.bufs[s] = hv_alloc_aligned(64 * 1024);
        b.chunk_of[s] = UINT64_MAX;
    }
    cbw_backup_kick(&b);
    assert_int_equal(hv_reactor_run_until(r, &b.is_done), 0);
    assert_int_equal(b.status, 0);
    assert_true(snap_cbw_saved(cbw) > 0); /* the race really happened */
    assert_memory_equal(b.image, orig, DISK_BYTES);
    snap_cbw_stop(cbw);
    run_for_ms(r, 5);
    writers_stop(r, ws, WRITERS);
    writers_free(ws, WRITERS);
    /* And the guest's writes all landed. */
    uint8_t *buf = hv_alloc_aligned(BLOCK);
    for (uint64_t blk = 0; blk < DISK_BYTES / BLOCK; blk++) {
        if (!last[blk])
            continue;
        assert_int_equal(bdev_read_sync(bd, blk * BLOCK, buf, BLOCK), 0);
        uint64_t gen;
        memcpy(&gen, buf + 8, 8);
        assert_int_equal(gen, last[blk]);
    }
    print_message("cbw: %llu chunks saved before the guest overwrote them\n",
                  (unsigned long long)snap_cbw_saved(cbw));
    for (int s = 0; s < 4; s++)
        free(b.bufs[s]);
    free(buf);
    free(b.image);
    free(orig);
    assert_int_equal(bdev_close(bd), 0);
    hv_reactor_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gate_holds_every_disk_and_loses_nothing),
        cmocka_unit_test(test_top_switches_only_when_idle),
        cmocka_unit_test(test_cbt_tracks_persists_and_detects_unclean_stop),
        cmocka_unit_test(test_cbt_forget_state_writes_nothing_back),
        cmocka_unit_test(test_cbw_backup_sees_the_disk_as_it_was),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
