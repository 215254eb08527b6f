/*
 * harness.h — a small "VM" for snapshot/'s tests and benchmark: VHD and raw
 * disks stacked the way hv/ stacks them (gate → cbt → top → chain, or
 * gate → cbt → cbw → raw file), a group over them, and asynchronous writers
 * that keep requests in flight on every disk. Header-only, test code.
 */
#ifndef SNAP_TEST_HARNESS_H
#define SNAP_TEST_HARNESS_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "snapshot.h"
#include "vhd.h"

#define H_MAX_DISKS 8
#define H_WRITERS 8
#define H_UNIT (64u * 1024)

struct h_vm;

struct h_writer {
    struct h_vm *vm;
    int disk;
    struct bdev_io *io;
    uint8_t *buf;
    struct iovec iov;
    uint64_t rng;
    bool is_busy;
    uint64_t submit_ns;
};

struct h_vm {
    struct hv_reactor *r;
    struct snap_gate *gate;
    int n;
    struct snap_disk disks[H_MAX_DISKS];
    struct bdev *bd[H_MAX_DISKS];    /* what the guest uses (gate level) */
    struct bdev *chain[H_MAX_DISKS]; /* the original chain (VHD disks) */
    char base[H_MAX_DISKS][4096];
    struct snap_group grp;
    struct h_writer w[H_MAX_DISKS][H_WRITERS];
    bool is_running;
    uint64_t writes;
    uint32_t write_bytes;
    uint64_t write_span_bytes;     /* writers stay below this offset (0: all) */
    uint8_t *changed[H_MAX_DISKS]; /* units written since reset */
    uint64_t *lat_ns;              /* write latencies, when recording */
    uint64_t lat_count, lat_cap;
    uint64_t *lat_at_ns; /* with lat_ns: when each write completed (traces) */
    int status;
};

static inline void h_writer_go(struct h_writer *w);

static inline void h_writer_done(struct bdev_io *io, int status)
{
    struct h_writer *w = io->cb_arg;
    struct h_vm *vm = w->vm;
    if (status < 0 && vm->status == 0)
        vm->status = status;
    if (vm->lat_ns && vm->lat_count < vm->lat_cap) {
        uint64_t now = hv_now_ns();
        if (vm->lat_at_ns)
            vm->lat_at_ns[vm->lat_count] = now;
        vm->lat_ns[vm->lat_count++] = now - w->submit_ns;
    }
    vm->writes++;
    w->is_busy = false;
    if (vm->is_running)
        h_writer_go(w);
}

static inline void h_writer_go(struct h_writer *w)
{
    struct h_vm *vm = w->vm;
    struct bdev *bd = vm->bd[w->disk];
    uint32_t len = vm->write_bytes;
    uint64_t span =
        vm->write_span_bytes ? HV_MIN(vm->write_span_bytes, bd->size_bytes) : bd->size_bytes;
    uint64_t slots = span / len;
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    uint64_t off = (w->rng % slots) * len;
    for (uint32_t i = 0; i < len; i += 8)
        memcpy(w->buf + i, &w->rng, 8);
    if (vm->changed[w->disk])
        for (uint64_t u = off / H_UNIT; u <= (off + len - 1) / H_UNIT; u++)
            vm->changed[w->disk][u >> 3] |= (uint8_t)(1u << (u & 7));
    w->iov.iov_base = w->buf;
    w->iov.iov_len = len;
    memset(w->io, 0, sizeof(*w->io));
    w->io->type = BDEV_IO_WRITE;
    w->io->offset = off;
    w->io->length = len;
    w->io->iov = &w->iov;
    w->io->iovcnt = 1;
    w->io->done = h_writer_done;
    w->io->cb_arg = w;
    w->is_busy = true;
    w->submit_ns = hv_now_ns();
    if (bdev_submit(bd, w->io) < 0) {
        w->is_busy = false;
        vm->status = -EIO;
    }
}

static inline void h_start(struct h_vm *vm)
{
    vm->is_running = true;
    for (int d = 0; d < vm->n; d++)
        for (int i = 0; i < H_WRITERS; i++)
            if (!vm->w[d][i].is_busy)
                h_writer_go(&vm->w[d][i]);
}

static inline void h_on_cut(void *arg)
{
    struct h_vm *vm = arg;
    for (int d = 0; d < vm->n; d++)
        if (vm->changed[d])
            memset(vm->changed[d], 0, HV_DIV_ROUND_UP(vm->bd[d]->size_bytes / H_UNIT + 1, 8));
    h_start(vm);
}

static inline void h_pause(struct h_vm *vm)
{
    vm->is_running = false;
    for (;;) {
        bool busy = false;
        for (int d = 0; d < vm->n; d++)
            for (int i = 0; i < H_WRITERS; i++)
                busy = busy || vm->w[d][i].is_busy;
        if (!busy)
            return;
        hv_reactor_run_once(vm->r, 100);
    }
}

static inline void h_run_ms(struct h_vm *vm, uint64_t ms)
{
    uint64_t end = hv_now_ns() + ms * 1000000ull;
    while (hv_now_ns() < end)
        hv_reactor_run_once(vm->r, 1);
}

/* Open (or create) `nvhd` VHD disks and `nraw` raw disks of `size` bytes in
 * `dir`. With `cbt_dir` the CBT state files live there. */
static inline int h_open(struct h_vm *vm, const char *dir, int nvhd, int nraw, uint64_t size,
                         bool create, struct hv_err *err)
{
    memset(vm, 0, sizeof(*vm));
    vm->write_bytes = 4096;
    int ret = hv_reactor_create(&vm->r);
    if (ret < 0)
        return ret;
    snap_gate_create(vm->r, &vm->gate);
    vm->n = nvhd + nraw;
    for (int i = 0; i < vm->n; i++) {
        struct snap_disk *d = &vm->disks[i];
        bool is_vhd = i < nvhd;
        d->controller = i / 2;
        d->slot = i % 2;
        snprintf(vm->base[i], sizeof(vm->base[i]), "%s/disk%d.%s", dir, i, is_vhd ? "vhd" : "raw");
        char state[4200];
        snprintf(state, sizeof(state), "%s/disk%d.cbt", dir, i);
        struct bdev *low, *mid, *cbt_bd;
        if (is_vhd) {
            if (create) {
                struct vhd_create_options co = {
                    .type = VHD_TYPE_DYNAMIC, .size_bytes = size, .block_bytes = 512 * 1024};
                ret = vhd_create(vm->base[i], &co, err);
                if (ret < 0)
                    return ret;
            }
            struct vhd_open_options oo = {0};
            ret = vhd_open(vm->r, vm->base[i], &oo, &low, err);
            if (ret < 0)
                return ret;
            vm->chain[i] = low;
            ret = snap_top_wrap(low, &mid, &d->top, err);
            if (ret < 0)
                return ret;
            snprintf(d->vhd_path, sizeof(d->vhd_path), "%s", vm->base[i]);
        } else {
            struct bdev_raw_options ro = {.create = create, .size_bytes = size};
            ret = bdev_raw_open(vm->r, vm->base[i], &ro, &low, err);
            if (ret < 0)
                return ret;
            ret = snap_cbw_wrap(low, H_UNIT, 16, &mid, &d->cbw, err);
            if (ret < 0)
                return ret;
        }
        ret = snap_cbt_wrap(mid, H_UNIT, state, &cbt_bd, &d->cbt, err);
        if (ret < 0)
            return ret;
        ret = snap_gate_wrap(vm->gate, cbt_bd, &vm->bd[i], err);
        if (ret < 0)
            return ret;
        d->top_bdev = vm->bd[i];
        vm->changed[i] = calloc(1, HV_DIV_ROUND_UP(size / H_UNIT + 1, 8));
        for (int k = 0; k < H_WRITERS; k++) {
            struct h_writer *w = &vm->w[i][k];
            w->vm = vm;
            w->disk = i;
            w->rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i * H_WRITERS + k + 1);
            w->io = calloc(1, bdev_io_size(vm->bd[i]));
            w->buf = hv_alloc_aligned(1024 * 1024);
        }
    }
    vm->grp.reactor = vm->r;
    vm->grp.gate = vm->gate;
    vm->grp.disks = vm->disks;
    vm->grp.disk_count = vm->n;
    vm->grp.on_cut = h_on_cut;
    vm->grp.on_cut_arg = vm;
    return 0;
}

/* Whole disk `i` as the guest reads it now (workload paused). */
static inline uint8_t *h_read_disk(struct h_vm *vm, int i)
{
    uint64_t size = vm->bd[i]->size_bytes;
    uint8_t *buf = hv_alloc_aligned(size);
    if (buf && bdev_read_sync(vm->bd[i], 0, buf, size) < 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static inline uint64_t h_changed_bytes(struct h_vm *vm, int i)
{
    uint64_t units = HV_DIV_ROUND_UP(vm->bd[i]->size_bytes, H_UNIT), n = 0;
    for (uint64_t u = 0; u < units; u++)
        n += (vm->changed[i][u >> 3] >> (u & 7)) & 1;
    return n * H_UNIT;
}

/* Close everything; returns the first error. The chain the top points at
 * now is closed by the top; a chain switched away from (a live child's
 * parent) is closed after it. */
static inline int h_close(struct h_vm *vm)
{
    int ret = 0;
    h_pause(vm);
    for (int i = 0; i < vm->n; i++) {
        struct bdev *cur = vm->disks[i].top ? snap_top_current(vm->disks[i].top) : NULL;
        struct bdev *under[VHD_MAX_CHAIN_DEPTH];
        int nu = 0;
        while (cur && vhd_is_live_child(cur)) {
            under[nu++] = vhd_live_child_parent(cur);
            cur = under[nu - 1];
        }
        int r = bdev_close(vm->bd[i]);
        ret = ret ? ret : r;
        for (int k = 0; k < nu; k++) {
            r = bdev_close(under[k]);
            ret = ret ? ret : r;
        }
        for (int k = 0; k < H_WRITERS; k++) {
            free(vm->w[i][k].io);
            free(vm->w[i][k].buf);
        }
        free(vm->changed[i]);
    }
    snap_gate_destroy(vm->gate);
    hv_reactor_destroy(vm->r);
    return ret;
}

#endif
