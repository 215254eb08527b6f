/* Unit tests for the swap-only cut (checkpoint.c) and the mirrored live
 * merge (vhd/live.c), with writes in flight on every disk throughout.
 *
 * Each writer owns a stripe of 64 KiB units (unit % WRITERS == its index)
 * and keeps one request in flight, so no two requests ever overlap and the
 * disk's content is known exactly: a shadow image updated when a write is
 * submitted. What was submitted before the cut must be exactly what the
 * checkpoint holds; after a merge the parent must read as the shadow. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "harness.h"
#include "testlib.h"

#define SIZE (32ull * 1024 * 1024)
#define UNIT (64u * 1024)
#define WRITERS 8
#define DISKS 3

struct sw {
    struct h_vm *vm;
    int disk, index;
    struct bdev_io *io;
    uint8_t *buf;
    struct iovec iov;
    uint64_t rng;
    bool is_busy;
};

static struct sw g_w[DISKS][WRITERS];
static uint8_t *g_shadow[DISKS];
static uint8_t *g_at_cut[DISKS];
static bool g_running;
static int g_status;
static uint64_t g_writes;

static void sw_go(struct sw *w);

static void sw_done(struct bdev_io *io, int status)
{
    struct sw *w = io->cb_arg;
    if (status < 0 && g_status == 0)
        g_status = status;
    w->is_busy = false;
    g_writes++;
    if (g_running)
        sw_go(w);
}

/* A run of sectors inside one of this writer's units: partial blocks,
 * partial sectors of the VHD bitmaps, whole units. */
static void sw_go(struct sw *w)
{
    struct bdev *bd = w->vm->bd[w->disk];
    uint64_t units = SIZE / UNIT;
    uint64_t u = (t_rand(&w->rng) % (units / WRITERS)) * WRITERS + (uint64_t)w->index;
    uint32_t first = (uint32_t)(t_rand(&w->rng) % (UNIT / 512));
    uint32_t count = 1 + (uint32_t)(t_rand(&w->rng) % (UNIT / 512 - first));
    uint64_t off = u * UNIT + (uint64_t)first * 512;
    uint64_t len = (uint64_t)count * 512;
    t_fill(w->buf, len, t_rand(&w->rng));
    memcpy(g_shadow[w->disk] + off, w->buf, len);
    w->iov = (struct iovec){.iov_base = w->buf, .iov_len = len};
    memset(w->io, 0, sizeof(*w->io));
    w->io->type = BDEV_IO_WRITE;
    w->io->offset = off;
    w->io->length = len;
    w->io->iov = &w->iov;
    w->io->iovcnt = 1;
    w->io->done = sw_done;
    w->io->cb_arg = w;
    w->is_busy = true;
    assert_int_equal(bdev_submit(bd, w->io), 0);
}

static void sw_start(void)
{
    g_running = true;
    for (int d = 0; d < DISKS; d++)
        for (int k = 0; k < WRITERS; k++)
            if (!g_w[d][k].is_busy)
                sw_go(&g_w[d][k]);
}

static void sw_pause(struct h_vm *vm)
{
    g_running = false;
    for (;;) {
        bool busy = false;
        for (int d = 0; d < DISKS; d++)
            for (int k = 0; k < WRITERS; k++)
                busy = busy || g_w[d][k].is_busy;
        if (!busy)
            return;
        hv_reactor_run_once(vm->r, 100);
    }
}

static void sw_run_ms(struct h_vm *vm, uint64_t ms)
{
    uint64_t end = hv_now_ns() + ms * 1000000ull;
    while (hv_now_ns() < end)
        hv_reactor_run_once(vm->r, 1);
}

static unsigned g_busy_at_cut;

/* Right after the release: everything submitted so far went to the old
 * tops, everything from now on goes to the children. */
static void on_cut(void *arg)
{
    (void)arg;
    g_busy_at_cut = 0;
    for (int d = 0; d < DISKS; d++) {
        memcpy(g_at_cut[d], g_shadow[d], SIZE);
        for (int k = 0; k < WRITERS; k++)
            g_busy_at_cut += g_w[d][k].is_busy;
    }
}

static void setup_vm(struct h_vm *vm, const char *name)
{
    struct hv_err err = {0};
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/%s", t_tmpdir(), name);
    assert_int_equal(t_run(NULL, 0, "mkdir -p '%s'", dir), 0);
    assert_int_equal(h_open(vm, dir, DISKS, 0, SIZE, true, &err), 0);
    vm->grp.on_cut = on_cut;
    vm->grp.on_cut_arg = vm;
    g_status = 0;
    g_writes = 0;
    for (int d = 0; d < DISKS; d++) {
        g_shadow[d] = calloc(1, SIZE);
        g_at_cut[d] = calloc(1, SIZE);
        assert_non_null(g_shadow[d]);
        assert_non_null(g_at_cut[d]);
        for (int k = 0; k < WRITERS; k++) {
            struct sw *w = &g_w[d][k];
            *w = (struct sw){.vm = vm, .disk = d, .index = k, .rng = 1000u * (unsigned)d + (unsigned)k + 1};
            w->io = calloc(1, bdev_io_size(vm->bd[d]));
            w->buf = hv_alloc_aligned(UNIT);
        }
    }
}

static void teardown_vm(struct h_vm *vm)
{
    sw_pause(vm);
    assert_int_equal(h_close(vm), 0);
    for (int d = 0; d < DISKS; d++) {
        free(g_shadow[d]);
        free(g_at_cut[d]);
        for (int k = 0; k < WRITERS; k++) {
            free(g_w[d][k].io);
            free(g_w[d][k].buf);
        }
    }
}

static void assert_reads(struct bdev *bd, const uint8_t *want)
{
    uint8_t *buf = hv_alloc_aligned(SIZE);
    assert_int_equal(bdev_read_sync(bd, 0, buf, SIZE), 0);
    for (uint64_t off = 0; off < SIZE; off += 512)
        if (memcmp(buf + off, want + off, 512) != 0)
            fail_msg("%s: sector at %llu differs", bd->name, (unsigned long long)off);
    free(buf);
}

/* The cut splits the stream of requests at the swap, with requests in
 * flight on every disk, and no guest request waits at the gate. */
static void test_cut_with_writes_in_flight_splits_them_at_the_swap(void **state)
{
    (void)state;
    struct h_vm vm;
    struct hv_err err = {0};
    setup_vm(&vm, "cut");
    sw_start();
    sw_run_ms(&vm, 30);
    for (int round = 0; round < 3; round++) {
        char name[16];
        snprintf(name, sizeof(name), "cp%d", round);
        struct snap_checkpoint_result res;
        assert_int_equal(snap_checkpoint_create(&vm.grp, name, false, &res, &err), 0);
        struct snap_gate_stats st;
        snap_gate_get_stats(vm.gate, &st);
        print_message("cut %d: %u writes in flight at the cut, hold %.3f ms, settled after "
                      "%.3f ms, %llu requests held\n",
                      round, g_busy_at_cut, res.hold_ns / 1e6, res.drain_ns / 1e6,
                      (unsigned long long)st.held_requests);
        /* Nothing is submitted while the hold lasts: it is one synchronous
         * step of the reactor thread. */
        assert_int_equal(st.held_requests, 0);
        assert_int_equal(st.passed_during_hold, 0);
        /* What the checkpoint holds: every write sent before the cut, none
         * after, while the writers keep going on the children. */
        for (int d = 0; d < DISKS; d++) {
            struct bdev *parent = vhd_live_child_parent(snap_top_current(vm.disks[d].top));
            assert_reads(parent, g_at_cut[d]);
        }
        sw_run_ms(&vm, 20);
        sw_pause(&vm);
        for (int d = 0; d < DISKS; d++)
            assert_reads(vm.bd[d], g_shadow[d]);
        sw_start();
        snap_checkpoint_result_free(&res);
    }
    assert_true(g_writes > 0);
    assert_int_equal(g_status, 0);
    teardown_vm(&vm);
}

/* Deleting checkpoints live while every disk is written: the merge mirrors
 * the guest's writes into the parent, and afterwards each disk, and each
 * file reopened offline, reads exactly what was written. */
static void test_mirrored_merge_under_writes_reads_back_exactly(void **state)
{
    (void)state;
    struct h_vm vm;
    struct hv_err err = {0};
    setup_vm(&vm, "merge");
    sw_start();
    sw_run_ms(&vm, 20);
    struct snap_checkpoint_result res;
    assert_int_equal(snap_checkpoint_create(&vm.grp, "a", false, &res, &err), 0);
    snap_checkpoint_result_free(&res);
    sw_run_ms(&vm, 40);
    assert_int_equal(snap_checkpoint_create(&vm.grp, "b", false, &res, &err), 0);
    snap_checkpoint_result_free(&res);
    sw_run_ms(&vm, 40);
    /* Newest first, on every disk, writers running throughout. */
    for (int d = 0; d < DISKS; d++) {
        for (int level = 0; level < 2; level++) {
            uint64_t hold = 0;
            int rc = snap_checkpoint_merge(&vm.grp, d, &hold, &err);
            if (rc < 0)
                fail_msg("merge disk %d: %s", d, hv_err_msg(&err, rc));
            print_message("disk %d: merge hold %.3f ms\n", d, hold / 1e6);
        }
        assert_string_equal(vm.disks[d].vhd_path, vm.base[d]);
        assert_false(vhd_is_live_child(snap_top_current(vm.disks[d].top)));
    }
    sw_run_ms(&vm, 20);
    sw_pause(&vm);
    for (int d = 0; d < DISKS; d++)
        assert_reads(vm.bd[d], g_shadow[d]);
    assert_int_equal(g_status, 0);
    /* Offline, the base files alone hold everything. */
    uint8_t *want[DISKS];
    char base[DISKS][4096];
    for (int d = 0; d < DISKS; d++) {
        want[d] = g_shadow[d];
        g_shadow[d] = NULL;
        snprintf(base[d], sizeof(base[d]), "%s", vm.base[d]);
    }
    teardown_vm(&vm);
    struct hv_reactor *r;
    assert_int_equal(hv_reactor_create(&r), 0);
    for (int d = 0; d < DISKS; d++) {
        struct bdev *bd;
        struct vhd_open_options oo = {.is_read_only = true};
        assert_int_equal(vhd_open(r, base[d], &oo, &bd, &err), 0);
        assert_reads(bd, want[d]);
        bdev_close(bd);
        struct vhd_check_report rep = {0};
        int c = vhd_check(base[d], &rep, &err);
        assert_true(c == VHD_CHECK_CLEAN || c == VHD_CHECK_LEAKED);
        vhd_check_report_free(&rep);
        free(want[d]);
    }
    hv_reactor_destroy(r);
}

/* A merge that died before its switch leaves `<child>.merged.pending`:
 * the child is still the top, and recovery says so and removes it. */
static void test_recover_ignores_a_pending_marker(void **state)
{
    (void)state;
    struct hv_err err = {0};
    char top[4096], pending[4200], real[4096];
    snprintf(top, sizeof(top), "%s/pend.vhd", t_tmpdir());
    snprintf(pending, sizeof(pending), "%s.merged.pending", top);
    struct vhd_create_options co = {.type = VHD_TYPE_DYNAMIC, .size_bytes = 4 << 20};
    assert_int_equal(vhd_create(top, &co, &err), 0);
    assert_int_equal(hv_write_file_atomic(pending, "/nonexistent/parent.vhd", 23, &err), 0);
    assert_int_equal(snap_checkpoint_recover(top, real, sizeof(real), &err), 0);
    assert_string_equal(real, top);
    assert_int_equal(access(top, F_OK), 0);
    assert_int_equal(access(pending, F_OK), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cut_with_writes_in_flight_splits_them_at_the_swap),
        cmocka_unit_test(test_mirrored_merge_under_writes_reads_back_exactly),
        cmocka_unit_test(test_recover_ignores_a_pending_marker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
