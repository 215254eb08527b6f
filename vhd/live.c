/*
 * live.c — live operations: a differencing child served over an open chain.
 *
 * A checkpoint gives a running disk a new differencing child without
 * closing or reopening its chain. The child file is created (vhd_create)
 * and opened here (vhd_live_child_open) before the guest is held; it is
 * brand new, so opening it reads a few KiB. During the hold the caller only
 * flushes the old chain and points the disk at the child bdev returned here:
 * a pointer swap. The old chain stays open, as it was — its top keeps its
 * write lock and is simply no longer written by the guest — and it is this
 * bdev that serves as the child's parent, so nothing of the chain is read
 * again.
 *
 * Later, the same open chain is where a live merge writes: the child's
 * sectors are copied into it while the guest keeps writing to the child
 * (the chain child→parent reads the same whatever has been copied, since
 * the child's present sectors hide the parent's), passes repeat over the
 * blocks the guest touched meanwhile, and the last pass runs inside a hold.
 * From the first pass on, the child mirrors each guest write into the
 * parent as well (when no copy or other write is busy with that block), so
 * what the passes must copy stops growing and the hold has next to nothing
 * left to copy. The passes keep at most two copies in flight while the
 * guest has requests in flight: they must not crowd the guest out of the
 * device queue. Blocking work of open and close (reading metadata, growing
 * and cutting the file, fsync) runs on a worker thread, so that the reactor
 * keeps serving the guest's other disks meanwhile.
 *
 * The child engine is deliberately simple: one step in flight per request
 * (a run of sectors in one block, served by the child file or the parent),
 * blocks appended at the end of the file, never freed (discard writes
 * zeroes: a clear bit would expose the parent's old data). Its crash
 * safety follows the engine's rules:
 *   - the file grows in steps: the new footer is written and made durable
 *     before any block inside the new reserve is handed out, so the file
 *     always ends in a valid footer;
 *   - a flush first snapshots the dirty bitmaps (covering only completed
 *     writes), makes the data durable (fdatasync), then writes the bitmaps,
 *     makes them durable, then writes the BAT and makes it durable. The BAT
 *     never points at a block whose bitmap could be stale, and a bitmap
 *     never claims data that a crash could lose.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LIVE_IOV_MAX 64
#define LIVE_PREFIX 4096u
#define LIVE_EXTEND_BYTES (64ull << 20)
#define LIVE_ZERO_BYTES (1u << 20)
#define LIVE_BAT_CHUNK 4096u

struct live;

struct live_io {
    struct bdev_io *outer;
    struct live *v;
    struct live_io *next; /* wait lists (growth, flush) */
    uint64_t cursor;      /* bytes of the request done */
    uint64_t step_len;
    uint32_t step_block;
    uint32_t step_sector;
    int status;
    bool to_parent;
    bool is_mirror_step; /* this write step also goes to the parent */
    bool holds_busy;     /* this write step counts in busy[step_block] */
    bool may_clear;      /* no write from before the mirroring was out at its start */
    bool is_pre_mirror;  /* submitted before the mirroring began */
    int mirror_pending;  /* parts of a mirrored step still out */
    int mirror_status;
    struct hv_aio_req req;
    struct iovec iov[LIVE_IOV_MAX];
    int iovcnt;
    struct hv_deferred deferred;
    /* followed by a bdev_io for the parent */
};
#define LIVE_HEAD HV_ALIGN_UP(sizeof(struct live_io), 16)

struct live {
    struct bdev bd;
    struct bdev *parent;
    struct hv_aio *aio;
    char path[4096];
    int fd; /* O_DIRECT when possible */
    int fd_buffered;
    struct vhd_meta meta;
    uint32_t block_bytes;
    uint32_t bitmap_bytes;
    uint32_t entries;
    uint8_t *bitmaps; /* entries * bitmap_bytes, MAP_NORESERVE */
    size_t bitmaps_len;
    uint8_t *merge_dirty; /* per block: written since the last merge pass */
    uint8_t *merge_bits;  /* per sector, same layout as bitmaps: written since */
    uint8_t *is_dirty;    /* per block: bitmap must go to disk */
    uint32_t *dirty;
    uint32_t dirty_count;
    uint8_t *bat_chunk_dirty;
    uint32_t bat_chunks;
    uint64_t next_alloc; /* where the next block's prefix starts */
    uint64_t file_end;   /* where the durable footer is */
    uint8_t *footer_buf;
    uint8_t *zero_buf;

    /* growth */
    bool is_extending;
    uint64_t ext_end;
    int ext_phase;
    struct hv_aio_req ext_req;
    struct iovec ext_iov;
    struct live_io *ext_wait;

    /* flush rounds */
    int flush_phase;           /* 0 idle, 1 data sync, 2 bitmaps, 3 sync, 4 BAT, 5 sync */
    struct live_io *flush_now; /* flushes this round completes */
    struct live_io *flush_next;
    uint32_t *staged; /* blocks of the round */
    uint8_t *staging; /* their bitmaps */
    uint32_t staged_count;
    uint32_t staging_cap;
    uint8_t *bat_buf; /* BAT as it goes to disk */
    uint8_t *bat_flushing;
    struct hv_aio_req *meta_reqs;
    struct iovec *meta_iovs;
    uint32_t meta_cap;
    int meta_pending;
    int flush_status;
    struct hv_aio_req sync_req;
    struct bdev_io *parent_flush; /* a guest flush also covers what the parent got */

    unsigned inflight;
    uint64_t blocks_allocated;

    /* Merge: from the first pass on, guest writes go to the child and the
     * parent both (see vhd_live_merge_pass). Per block: guest write steps
     * and merge copies in flight, and whether another began while one was
     * (busy > 0). pre_mirror: requests sent before the mirroring began
     * that are still out. */
    bool is_mirroring;
    uint16_t *busy;
    uint8_t *tainted;
    unsigned pre_mirror;
};

static const struct bdev_ops live_ops;

static uint8_t *bitmap_of(struct live *v, uint32_t block)
{
    return v->bitmaps + (size_t)block * v->bitmap_bytes;
}

static uint64_t data_offset(struct live *v, uint32_t block)
{
    return (uint64_t)v->meta.bat[block] * HV_SECTOR_BYTES + v->bitmap_bytes;
}

static int pick_fd(struct live *v, uint64_t offset, uint64_t len, const struct iovec *iov,
                   int iovcnt)
{
    if (v->fd == v->fd_buffered || offset % 4096 || len % 4096 ||
        !hv_iov_is_aligned(iov, iovcnt, 4096))
        return v->fd_buffered;
    return v->fd;
}

static void step(struct live_io *e);
static void flush_kick(struct live *v);

/* Run fn(arg) on a worker thread while the reactor keeps serving every
 * other device: opening and closing a child read metadata, grow or cut the
 * file and fsync it, and the guest's other disks must not wait for that. */
static int off_reactor(struct hv_reactor *r, const char *path, int (*fn)(void *arg), void *arg,
                       struct hv_err *err)
{
    struct hv_workers *w;
    int ret = hv_workers_create(r, 1, path, &w, err);
    if (ret < 0)
        return ret;
    ret = hv_workers_run(w, fn, arg);
    hv_workers_destroy(w);
    return ret;
}


static void complete_call(void *arg)
{
    struct live_io *e = arg;
    if (e->is_pre_mirror && e->v->is_mirroring && e->v->pre_mirror)
        e->v->pre_mirror--;
    e->v->inflight--;
    e->outer->done(e->outer, e->status);
}

static void finish(struct live_io *e, int status)
{
    e->status = status;
    hv_reactor_defer(e->v->bd.reactor, &e->deferred, complete_call, e);
}

/* ----------------------------------------------------------- growth */

static void ext_done(struct hv_aio_req *req, long res)
{
    struct live *v = req->arg;
    if (res < 0 || (v->ext_phase == 1 && res != VHD_FOOTER_BYTES)) {
        v->is_extending = false;
        struct live_io *w = v->ext_wait;
        v->ext_wait = NULL;
        while (w) {
            struct live_io *n = w->next;
            finish(w, res < 0 ? (int)res : -EIO);
            w = n;
        }
        return;
    }
    if (v->ext_phase == 1) {
        /* The new footer is written; durable before any block uses the reserve. */
        v->ext_phase = 2;
        hv_aio_prep_fdsync(&v->ext_req, v->fd_buffered);
        hv_aio_submit(v->aio, &v->ext_req);
        return;
    }
    v->file_end = v->ext_end;
    v->is_extending = false;
    struct live_io *w = v->ext_wait;
    v->ext_wait = NULL;
    while (w) {
        struct live_io *n = w->next;
        step(w);
        w = n;
    }
}

static void extend(struct live *v, uint64_t need_end)
{
    v->is_extending = true;
    v->ext_end = HV_ALIGN_UP(HV_MAX(need_end, v->file_end + LIVE_EXTEND_BYTES), 4096);
    v->ext_phase = 1;
    v->ext_req.done = ext_done;
    v->ext_req.arg = v;
    v->ext_iov.iov_base = v->footer_buf;
    v->ext_iov.iov_len = VHD_FOOTER_BYTES;
    hv_aio_prep_writev(&v->ext_req, v->fd_buffered, &v->ext_iov, 1, v->ext_end);
    hv_aio_submit(v->aio, &v->ext_req);
}

/* Give `block` a place in the reserve; false when the file must grow first. */
static bool allocate(struct live *v, uint32_t block)
{
    uint64_t bitmap_at = v->next_alloc + LIVE_PREFIX - v->bitmap_bytes;
    uint64_t end = bitmap_at + v->bitmap_bytes + v->block_bytes;
    if (end > v->file_end)
        return false;
    v->meta.bat[block] = (uint32_t)(bitmap_at / HV_SECTOR_BYTES);
    hv_put_be32(v->bat_buf + (size_t)block * 4, v->meta.bat[block]);
    v->bat_chunk_dirty[(size_t)block * 4 / LIVE_BAT_CHUNK] = 1;
    v->next_alloc = end;
    v->blocks_allocated++;
    /* Grow before the reserve runs out, so that writes rarely wait for the
     * footer's sync. */
    if (!v->is_extending && v->file_end - v->next_alloc < LIVE_EXTEND_BYTES / 2)
        extend(v, v->next_alloc + LIVE_PREFIX + v->block_bytes);
    if (!v->is_dirty[block]) {
        v->is_dirty[block] = 1;
        v->dirty[v->dirty_count++] = block;
    }
    return true;
}

/* ------------------------------------------------------------- steps */

static void parent_done(struct bdev_io *pio, int status)
{
    struct live_io *e = pio->cb_arg;
    if (status < 0) {
        finish(e, status);
        return;
    }
    if (e->outer->type == BDEV_IO_BLOCK_STATUS) {
        e->outer->status = pio->status;
        e->outer->status_length = HV_MAX(pio->status_length, (uint64_t)HV_SECTOR_BYTES);
        e->outer->status_depth = pio->status_depth < 0 ? -1 : pio->status_depth + 1;
    }
    e->cursor += e->step_len;
    step(e);
}

static void busy_get(struct live *v, uint32_t block)
{
    if (v->busy[block]++)
        v->tainted[block] = 1;
}

static void busy_put(struct live *v, uint32_t block)
{
    if (--v->busy[block] == 0)
        v->tainted[block] = 0;
}

/* Both halves of a mirrored write step are done. The sectors now read the
 * same in child and parent, so the merge need not copy them again, unless
 * another write or a merge copy of the block overlapped this one: then the
 * order in which the child applied them is unknown, and the bits stay for
 * the next pass (which copies the child's data, the authority). */
static void mirror_part_done(struct live_io *e, int status)
{
    struct live *v = e->v;
    if (status < 0 && e->mirror_status == 0)
        e->mirror_status = status;
    if (--e->mirror_pending > 0)
        return;
    e->is_mirror_step = false;
    e->holds_busy = false;
    uint32_t block = e->step_block;
    if (e->mirror_status == 0 && e->may_clear && !v->tainted[block])
        vhd_bitmap_clear(v->merge_bits + (size_t)block * v->bitmap_bytes, e->step_sector,
                         (uint32_t)(e->step_len / HV_SECTOR_BYTES));
    busy_put(v, block);
    if (e->mirror_status < 0) {
        finish(e, e->mirror_status);
        return;
    }
    e->cursor += e->step_len;
    step(e);
}

static void mirror_parent_done(struct bdev_io *pio, int status)
{
    mirror_part_done(pio->cb_arg, status);
}

static void child_done(struct hv_aio_req *req, long res)
{
    struct live_io *e = req->arg;
    struct live *v = e->v;
    if (res < 0 || (uint64_t)res != e->step_len) {
        if (e->is_mirror_step) {
            mirror_part_done(e, res < 0 ? (int)res : -EIO);
            return;
        }
        if (e->holds_busy) {
            e->holds_busy = false;
            busy_put(v, e->step_block);
        }
        finish(e, res < 0 ? (int)res : -EIO);
        return;
    }
    enum bdev_io_type t = e->outer->type;
    if (t != BDEV_IO_READ) {
        /* The data is in the file (not yet durable): reads may now use it,
         * and the next flush records it. */
        vhd_bitmap_set(bitmap_of(v, e->step_block), e->step_sector,
                       (uint32_t)(e->step_len / HV_SECTOR_BYTES));
        vhd_bitmap_set(v->merge_bits + (size_t)e->step_block * v->bitmap_bytes, e->step_sector,
                       (uint32_t)(e->step_len / HV_SECTOR_BYTES));
        v->merge_dirty[e->step_block] = 1;
        if (!v->is_dirty[e->step_block]) {
            v->is_dirty[e->step_block] = 1;
            v->dirty[v->dirty_count++] = e->step_block;
        }
    }
    if (e->is_mirror_step) {
        mirror_part_done(e, 0);
        return;
    }
    if (e->holds_busy) {
        e->holds_busy = false;
        busy_put(v, e->step_block);
    }
    e->cursor += e->step_len;
    step(e);
}

static void step(struct live_io *e)
{
    struct live *v = e->v;
    struct bdev_io *io = e->outer;
    if (e->cursor >= io->length) {
        if (io->type == BDEV_IO_WRITE && (io->flags & BDEV_IO_FUA) && !e->to_parent) {
            /* FUA: the data is durable (RWF_DSYNC) but a new block's bitmap
             * and BAT entry are not: complete with the next flush round. */
            e->to_parent = true;
            e->next = v->flush_next;
            v->flush_next = e;
            flush_kick(v);
            return;
        }
        finish(e, 0);
        return;
    }
    uint64_t off = io->offset + e->cursor;
    uint32_t block = (uint32_t)(off / v->block_bytes);
    uint64_t in_block = off % v->block_bytes;
    uint64_t len = HV_MIN(io->length - e->cursor, v->block_bytes - in_block);
    uint32_t sector = (uint32_t)(in_block / HV_SECTOR_BYTES);
    bool is_allocated = v->meta.bat[block] != VHD_BAT_UNALLOCATED;
    e->step_block = block;
    e->step_sector = sector;
    e->is_mirror_step = false;
    e->holds_busy = false;

    if (io->type == BDEV_IO_BLOCK_STATUS) {
        uint32_t sectors = (uint32_t)(len / HV_SECTOR_BYTES);
        bool in_child = is_allocated && vhd_bitmap_test(bitmap_of(v, block), sector);
        uint32_t run =
            is_allocated ? vhd_bitmap_run(bitmap_of(v, block), sector, sector + sectors) : sectors;
        if (in_child) {
            io->status = BDEV_STATUS_ALLOCATED;
            io->status_length = (uint64_t)run * HV_SECTOR_BYTES;
            io->status_depth = 0;
            finish(e, 0);
            return;
        }
        /* Ask the parent about the part the child does not hold. */
        struct bdev_io *pio = (struct bdev_io *)(void *)((char *)e + LIVE_HEAD);
        memset(pio, 0, sizeof(*pio));
        pio->type = BDEV_IO_BLOCK_STATUS;
        pio->offset = off;
        pio->length = (uint64_t)run * HV_SECTOR_BYTES;
        pio->done = parent_done;
        pio->cb_arg = e;
        e->step_len = io->length; /* one step: the answer is the parent's */
        e->to_parent = true;
        int ret = bdev_submit(v->parent, pio);
        if (ret < 0) {
            finish(e, ret);
            return;
        }
        return;
    }

    if (io->type == BDEV_IO_READ) {
        bool in_child = false;
        if (is_allocated) {
            uint32_t sectors = (uint32_t)(len / HV_SECTOR_BYTES);
            uint8_t *bm = bitmap_of(v, block);
            in_child = vhd_bitmap_test(bm, sector);
            len = (uint64_t)vhd_bitmap_run(bm, sector, sector + sectors) * HV_SECTOR_BYTES;
        }
        int n = hv_iov_slice(io->iov, io->iovcnt, e->cursor, len, e->iov, LIVE_IOV_MAX);
        if (n < 0) {
            /* Too fragmented for one step: take what fits. */
            uint64_t fit = 0;
            n = 0;
            size_t skip = e->cursor;
            for (int i = 0; i < io->iovcnt && n < LIVE_IOV_MAX && fit < len; i++) {
                if (skip >= io->iov[i].iov_len) {
                    skip -= io->iov[i].iov_len;
                    continue;
                }
                fit += io->iov[i].iov_len - skip;
                skip = 0;
                n++;
            }
            len = HV_ALIGN_DOWN(HV_MIN(fit, len), HV_SECTOR_BYTES);
            if (len == 0) {
                finish(e, -EINVAL);
                return;
            }
            n = hv_iov_slice(io->iov, io->iovcnt, e->cursor, len, e->iov, LIVE_IOV_MAX);
        }
        e->iovcnt = n;
        e->step_len = len;
        if (!in_child) {
            struct bdev_io *pio = (struct bdev_io *)(void *)((char *)e + LIVE_HEAD);
            memset(pio, 0, sizeof(*pio));
            pio->type = BDEV_IO_READ;
            pio->offset = off;
            pio->length = len;
            pio->iov = e->iov;
            pio->iovcnt = n;
            pio->done = parent_done;
            pio->cb_arg = e;
            int ret = bdev_submit(v->parent, pio);
            if (ret < 0)
                finish(e, ret);
            return;
        }
        uint64_t at = data_offset(v, block) + in_block;
        hv_aio_prep_readv(&e->req, pick_fd(v, at, len, e->iov, n), e->iov, n, at);
        hv_aio_submit(v->aio, &e->req);
        return;
    }

    /* WRITE, WRITE_ZEROES, DISCARD: all land in the child. */
    if (!is_allocated) {
        if (v->is_extending || !allocate(v, block)) {
            if (!v->is_extending)
                extend(v, v->next_alloc + LIVE_PREFIX + v->block_bytes);
            e->next = v->ext_wait;
            v->ext_wait = e;
            return;
        }
    }
    int n;
    if (io->type == BDEV_IO_WRITE) {
        n = hv_iov_slice(io->iov, io->iovcnt, e->cursor, len, e->iov, LIVE_IOV_MAX);
        if (n < 0) {
            len = HV_SECTOR_BYTES; /* pathological iovec: a sector at a time */
            n = hv_iov_slice(io->iov, io->iovcnt, e->cursor, len, e->iov, LIVE_IOV_MAX);
        }
        if (n < 0) {
            finish(e, -EINVAL);
            return;
        }
    } else {
        len = HV_MIN(len, LIVE_ZERO_BYTES);
        e->iov[0].iov_base = v->zero_buf;
        e->iov[0].iov_len = len;
        n = 1;
    }
    e->iovcnt = n;
    e->step_len = len;
    e->step_sector = sector;
    v->merge_dirty[block] = 1;
    uint64_t at = data_offset(v, block) + in_block;
    hv_aio_prep_writev(&e->req, pick_fd(v, at, len, e->iov, n), e->iov, n, at);
    if (io->flags & BDEV_IO_FUA)
        hv_aio_set_rw_flags(&e->req, RWF_DSYNC);
    if (!v->is_mirroring) {
        hv_aio_submit(v->aio, &e->req);
        return;
    }
    /* Merging: the same bytes to the parent at once (a write the guest
     * has not seen complete may land in either first; a crash then shows
     * old or new data for it, as for any write in flight). Only when
     * nothing else (guest write, merge copy) is out on the block: the
     * parent then never has two writers on one block, and buffered and
     * direct writes never meet on a page. A write that finds the block
     * busy goes to the child alone and the next pass copies it. */
    e->holds_busy = true;
    if (v->busy[block] > 0) {
        busy_get(v, block);
        hv_aio_submit(v->aio, &e->req);
        return;
    }
    busy_get(v, block);
    e->is_mirror_step = true;
    e->may_clear = v->pre_mirror == 0;
    e->mirror_pending = 2;
    e->mirror_status = 0;
    hv_aio_submit(v->aio, &e->req);
    struct bdev_io *pio = (struct bdev_io *)(void *)((char *)e + LIVE_HEAD);
    memset(pio, 0, sizeof(*pio));
    pio->type = BDEV_IO_WRITE;
    pio->flags = io->flags & BDEV_IO_FUA;
    pio->offset = off;
    pio->length = len;
    pio->iov = e->iov;
    pio->iovcnt = n;
    pio->done = mirror_parent_done;
    pio->cb_arg = e;
    int ret = bdev_submit(v->parent, pio);
    if (ret < 0) {
        e->mirror_status = ret;
        e->mirror_pending--; /* the child half still completes */
    }
}

/* ------------------------------------------------------------- flush */

static void flush_round_end(struct live *v, int status)
{
    struct live_io *w = v->flush_now;
    v->flush_now = NULL;
    v->flush_phase = 0;
    if (status < 0) {
        /* Put the round's blocks back on the dirty list for the next try. */
        for (uint32_t i = 0; i < v->staged_count; i++) {
            uint32_t b = v->staged[i];
            if (!v->is_dirty[b]) {
                v->is_dirty[b] = 1;
                v->dirty[v->dirty_count++] = b;
            }
        }
        for (uint32_t c = 0; c < v->bat_chunks; c++)
            v->bat_chunk_dirty[c] |= v->bat_flushing[c];
    }
    while (w) {
        struct live_io *n = w->next;
        finish(w, status);
        w = n;
    }
    if (v->flush_next)
        flush_kick(v);
}

static void flush_meta_done(struct hv_aio_req *req, long res);

static void parent_flush_done(struct bdev_io *pio, int status)
{
    struct live *v = pio->cb_arg;
    flush_round_end(v, status);
}

/* Writes acknowledged before the child took over went to the parent and
 * may not be durable yet; the guest's flush covers them too. */
static void flush_parent(struct live *v)
{
    v->flush_phase = 7;
    struct bdev_io *pio = v->parent_flush;
    memset(pio, 0, sizeof(*pio));
    pio->type = BDEV_IO_FLUSH;
    pio->done = parent_flush_done;
    pio->cb_arg = v;
    int ret = bdev_submit(v->parent, pio);
    if (ret < 0)
        flush_round_end(v, ret);
}

static void flush_issue_sync(struct live *v)
{
    v->sync_req.done = flush_meta_done;
    v->sync_req.arg = v;
    v->meta_pending = 1;
    hv_aio_prep_fdsync(&v->sync_req, v->fd_buffered);
    hv_aio_submit(v->aio, &v->sync_req);
}

static void flush_advance(struct live *v)
{
    if (v->flush_status < 0) {
        flush_round_end(v, v->flush_status);
        return;
    }
    switch (v->flush_phase) {
    case 1: /* data durable: write the bitmaps */
        v->flush_phase = 2;
        if (v->staged_count == 0) {
            v->flush_phase = 4;
            flush_advance(v);
            return;
        }
        v->meta_pending = (int)v->staged_count;
        for (uint32_t i = 0; i < v->staged_count; i++) {
            uint32_t b = v->staged[i];
            v->meta_iovs[i].iov_base = v->staging + (size_t)i * v->bitmap_bytes;
            v->meta_iovs[i].iov_len = v->bitmap_bytes;
            v->meta_reqs[i].done = flush_meta_done;
            v->meta_reqs[i].arg = v;
            hv_aio_prep_writev(&v->meta_reqs[i], v->fd_buffered, &v->meta_iovs[i], 1,
                               (uint64_t)v->meta.bat[b] * HV_SECTOR_BYTES);
            hv_aio_submit(v->aio, &v->meta_reqs[i]);
        }
        return;
    case 2:
        v->flush_phase = 3;
        flush_issue_sync(v);
        return;
    case 3:
    case 4: { /* bitmaps durable: the BAT */
        v->flush_phase = 5;
        uint32_t n = 0;
        for (uint32_t c = 0; c < v->bat_chunks; c++) {
            if (!v->bat_flushing[c])
                continue;
            uint64_t from = (uint64_t)c * LIVE_BAT_CHUNK;
            uint64_t bytes = HV_MIN((uint64_t)LIVE_BAT_CHUNK, vhd_bat_bytes(v->entries) - from);
            v->meta_iovs[n].iov_base = v->bat_buf + from;
            v->meta_iovs[n].iov_len = bytes;
            v->meta_reqs[n].done = flush_meta_done;
            v->meta_reqs[n].arg = v;
            hv_aio_prep_writev(&v->meta_reqs[n], v->fd_buffered, &v->meta_iovs[n], 1,
                               v->meta.header.table_offset + from);
            n++;
        }
        if (n == 0) {
            flush_parent(v);
            return;
        }
        v->meta_pending = (int)n;
        for (uint32_t i = 0; i < n; i++)
            hv_aio_submit(v->aio, &v->meta_reqs[i]);
        return;
    }
    case 5:
        v->flush_phase = 6;
        flush_issue_sync(v);
        return;
    case 6:
        flush_parent(v);
        return;
    default:
        flush_round_end(v, 0);
    }
}

static void flush_meta_done(struct hv_aio_req *req, long res)
{
    struct live *v = req->arg;
    if (res < 0)
        v->flush_status = (int)res;
    if (--v->meta_pending > 0)
        return;
    flush_advance(v);
}

static int grow_meta(struct live *v, uint32_t need)
{
    if (need <= v->meta_cap)
        return 0;
    uint32_t cap = HV_MAX(need, v->meta_cap * 2);
    uint8_t *staging = realloc(v->staging, (size_t)cap * v->bitmap_bytes);
    if (staging)
        v->staging = staging;
    uint32_t *staged = realloc(v->staged, (size_t)cap * sizeof(*staged));
    if (staged)
        v->staged = staged;
    struct hv_aio_req *reqs = realloc(v->meta_reqs, (size_t)cap * sizeof(*reqs));
    if (reqs)
        v->meta_reqs = reqs;
    struct iovec *iovs = realloc(v->meta_iovs, (size_t)cap * sizeof(*iovs));
    if (iovs)
        v->meta_iovs = iovs;
    if (!staging || !staged || !reqs || !iovs)
        return -ENOMEM;
    v->meta_cap = cap;
    return 0;
}

/* Start a round for every flush waiting in flush_next. The dirty bitmaps
 * are copied now: they describe completed writes only, which the data sync
 * that follows makes durable. */
static void flush_kick(struct live *v)
{
    if (v->flush_phase || !v->flush_next)
        return;
    v->flush_now = v->flush_next;
    v->flush_next = NULL;
    v->flush_status = 0;
    uint32_t need = HV_MAX(v->dirty_count, v->bat_chunks);
    if (grow_meta(v, need) < 0) {
        v->flush_phase = 1;
        flush_round_end(v, -ENOMEM);
        return;
    }
    for (uint32_t i = 0; i < v->dirty_count; i++) {
        uint32_t b = v->dirty[i];
        v->staged[i] = b;
        memcpy(v->staging + (size_t)i * v->bitmap_bytes, bitmap_of(v, b), v->bitmap_bytes);
        v->is_dirty[b] = 0;
    }
    v->staged_count = v->dirty_count;
    v->dirty_count = 0;
    memcpy(v->bat_flushing, v->bat_chunk_dirty, v->bat_chunks);
    memset(v->bat_chunk_dirty, 0, v->bat_chunks);
    v->flush_phase = 1;
    v->sync_req.done = flush_meta_done;
    v->sync_req.arg = v;
    v->meta_pending = 1;
    hv_aio_prep_fdsync(&v->sync_req, v->fd_buffered);
    hv_aio_submit(v->aio, &v->sync_req);
}

/* ------------------------------------------------------------ submit */

static int live_submit(struct bdev *bd, struct bdev_io *io)
{
    struct live *v = hv_container_of(bd, struct live, bd);
    struct live_io *e = bdev_io_ctx(io);
    e->outer = io;
    e->v = v;
    e->next = NULL;
    e->cursor = 0;
    e->status = 0;
    e->to_parent = false;
    e->is_mirror_step = false;
    e->holds_busy = false;
    e->is_pre_mirror = !v->is_mirroring;
    /* The context may last have held another device's state (the top this
     * child replaced used the same request memory): nothing in it is ours. */
    memset(&e->deferred, 0, sizeof(e->deferred));
    e->req.done = child_done;
    e->req.arg = e;
    v->inflight++;
    if (io->type == BDEV_IO_FLUSH) {
        e->next = v->flush_next;
        v->flush_next = e;
        flush_kick(v);
        return 0;
    }
    step(e);
    return 0;
}

static void drain(struct live *v)
{
    while (v->inflight || v->flush_phase || v->is_extending)
        hv_reactor_run_once(v->bd.reactor, 100);
}

static int live_flush_sync(struct live *v)
{
    return bdev_flush_sync(&v->bd);
}

static void live_free(struct live *v)
{
    if (v->aio)
        hv_aio_put(v->aio);
    if (v->fd_buffered >= 0 && v->fd_buffered != v->fd)
        close(v->fd_buffered);
    if (v->fd >= 0)
        close(v->fd);
    if (v->bitmaps)
        munmap(v->bitmaps, v->bitmaps_len);
    if (v->merge_bits)
        munmap(v->merge_bits, v->bitmaps_len);
    vhd_meta_free(&v->meta);
    free(v->merge_dirty);
    free(v->busy);
    free(v->tainted);
    free(v->is_dirty);
    free(v->dirty);
    free(v->bat_chunk_dirty);
    free(v->bat_flushing);
    free(v->bat_buf);
    free(v->staging);
    free(v->staged);
    free(v->meta_reqs);
    free(v->meta_iovs);
    free(v->footer_buf);
    free(v->zero_buf);
    free(v->parent_flush);
    free(v);
}

/* Make everything durable, then give back the unused reserve: the footer is
 * written again right after the last block (durable) before the file is
 * cut, so a crash in between leaves a valid footer at either place. */
static int live_trim(void *arg)
{
    struct live *v = arg;
    uint64_t end = HV_ALIGN_UP(v->next_alloc, HV_SECTOR_BYTES);
    int ret = hv_pwrite_full(v->fd_buffered, v->footer_buf, VHD_FOOTER_BYTES, end);
    if (ret == 0 && fdatasync(v->fd_buffered) < 0)
        ret = -errno;
    if (ret == 0 && ftruncate(v->fd_buffered, (off_t)(end + VHD_FOOTER_BYTES)) < 0)
        ret = -errno;
    if (ret == 0 && fsync(v->fd_buffered) < 0)
        ret = -errno;
    return ret;
}

static int live_close(struct bdev *bd)
{
    struct live *v = hv_container_of(bd, struct live, bd);
    drain(v);
    int ret = live_flush_sync(v);
    drain(v);
    if (ret == 0 && v->next_alloc < v->file_end) {
        /* The syncs on a worker: the reactor serves other disks meanwhile. */
        ret = off_reactor(v->bd.reactor, v->path, live_trim, v, NULL);
        if (ret == -ENOMEM || ret == -EAGAIN)
            ret = live_trim(v);
    }
    live_free(v);
    return ret;
}

static void live_describe(struct bdev *bd, json_t *obj)
{
    struct live *v = hv_container_of(bd, struct live, bd);
    json_object_set_new(obj, "live_child", json_string(v->path));
    json_object_set_new(obj, "live_child_blocks", json_integer((json_int_t)v->blocks_allocated));
}

static const struct bdev_ops live_ops = {
    .name = "vhd-live-child",
    .submit = live_submit,
    .close = live_close,
    .describe = live_describe,
};

struct open_call {
    struct live *v;
    const char *path;
    struct bdev *parent;
    struct hv_err *err;
};

/* The blocking part of an open (worker thread): nothing of the reactor. */
static int live_load(void *arg)
{
    struct open_call *c = arg;
    struct live *v = c->v;
    const char *path = c->path;
    struct bdev *parent = c->parent;
    struct hv_err *err = c->err;
    int ret;
    v->fd_buffered = open(path, O_RDWR | O_CLOEXEC);
    if (v->fd_buffered < 0) {
        ret = hv_err_errno(err, path, "open");
        goto fail;
    }
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(v->fd_buffered, F_OFD_SETLK, &fl) < 0) {
        ret = hv_err_set(err, -EBUSY,
                         "%s: in use: another open of this image holds a lock "
                         "on it",
                         path);
        goto fail;
    }
    v->fd = open(path, O_RDWR | O_CLOEXEC | O_DIRECT);
    if (v->fd < 0)
        v->fd = v->fd_buffered;
    ret = vhd_meta_load(v->fd_buffered, path, true, &v->meta, err);
    if (ret < 0)
        goto fail;
    if (v->meta.footer.disk_type != VHD_TYPE_DIFFERENCING) {
        ret = hv_err_set(err, -EINVAL,
                         "%s: footer: a live child must be a differencing "
                         "image",
                         path);
        goto fail;
    }
    if (v->meta.footer.current_size != parent->size_bytes) {
        ret = hv_err_set(err, -EINVAL,
                         "%s: footer: size %" PRIu64 " differs from the open "
                         "parent %s (%" PRIu64 " bytes)",
                         path, v->meta.footer.current_size, parent->name, parent->size_bytes);
        goto fail;
    }
    if (!hv_uuid_is_nil(parent->uuid) &&
        memcmp(v->meta.header.parent_uuid, parent->uuid, 16) != 0) {
        ret = hv_err_set(err, -EINVAL,
                         "%s: dynamic header: parent unique id does not match "
                         "the open chain %s",
                         path, parent->name);
        goto fail;
    }
    v->block_bytes = v->meta.header.block_bytes;
    v->bitmap_bytes = vhd_bitmap_bytes(v->block_bytes);
    v->entries = v->meta.header.max_table_entries;
    if (v->bitmap_bytes > LIVE_PREFIX) {
        ret = hv_err_set(err, -EINVAL,
                         "%s: dynamic header: block size %u is too large for "
                         "a live child",
                         path, v->block_bytes);
        goto fail;
    }
    v->bitmaps_len = HV_ALIGN_UP((size_t)v->entries * v->bitmap_bytes, 4096);
    v->bitmaps = mmap(NULL, v->bitmaps_len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (v->bitmaps == MAP_FAILED) {
        v->bitmaps = NULL;
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory for bitmaps", path);
        goto fail;
    }
    v->merge_bits = mmap(NULL, v->bitmaps_len, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (v->merge_bits == MAP_FAILED) {
        v->merge_bits = NULL;
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory for bitmaps", path);
        goto fail;
    }
    v->bat_chunks = (uint32_t)HV_DIV_ROUND_UP(vhd_bat_bytes(v->entries), LIVE_BAT_CHUNK);
    v->merge_dirty = calloc(v->entries, 1);
    v->is_dirty = calloc(v->entries, 1);
    v->dirty = calloc(v->entries, sizeof(*v->dirty));
    v->bat_chunk_dirty = calloc(v->bat_chunks, 1);
    v->bat_flushing = calloc(v->bat_chunks, 1);
    v->bat_buf = hv_alloc_aligned(HV_ALIGN_UP(vhd_bat_bytes(v->entries), 4096));
    v->footer_buf = hv_alloc_aligned(VHD_FOOTER_BYTES);
    v->zero_buf = hv_alloc_aligned(LIVE_ZERO_BYTES);
    v->parent_flush = calloc(1, bdev_io_size(parent));
    if (!v->parent_flush || !v->merge_dirty || !v->is_dirty || !v->dirty || !v->bat_chunk_dirty ||
        !v->bat_flushing || !v->bat_buf || !v->footer_buf || !v->zero_buf) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    memset(v->zero_buf, 0, LIVE_ZERO_BYTES);
    memset(v->bat_buf, 0xFF, HV_ALIGN_UP(vhd_bat_bytes(v->entries), 4096));
    vhd_bat_encode(v->meta.bat, v->entries, v->bat_buf);
    vhd_footer_encode(&v->meta.footer, v->footer_buf);
    /* Existing blocks (a child that was written before): load their bitmaps,
     * and allocate after the last byte anything uses. */
    uint64_t used_end = vhd_metadata_end(&v->meta.footer, &v->meta.header);
    for (uint32_t b = 0; b < v->entries; b++) {
        if (v->meta.bat[b] == VHD_BAT_UNALLOCATED)
            continue;
        uint64_t at = (uint64_t)v->meta.bat[b] * HV_SECTOR_BYTES;
        ret = hv_pread_full(v->fd_buffered, bitmap_of(v, b), v->bitmap_bytes, at);
        if (ret < 0) {
            ret = hv_err_set(err, ret, "%s: block %u bitmap: read: %s", path, b, strerror(-ret));
            goto fail;
        }
        /* Written before this open: a merge must copy all of it. */
        memcpy(v->merge_bits + (size_t)b * v->bitmap_bytes, bitmap_of(v, b), v->bitmap_bytes);
        used_end = HV_MAX(used_end, at + v->bitmap_bytes + v->block_bytes);
        v->blocks_allocated++;
    }
    v->next_alloc = HV_ALIGN_UP(used_end, LIVE_PREFIX);
    v->file_end = v->meta.footer_offset;
    /* Grow the file now, while the guest is not held yet: the first writes
     * after the switch then find room without waiting for a footer sync. */
    uint64_t reserve_end = HV_ALIGN_UP(v->next_alloc + LIVE_EXTEND_BYTES, 4096);
    if (reserve_end > v->file_end) {
        ret = hv_pwrite_full(v->fd_buffered, v->footer_buf, VHD_FOOTER_BYTES, reserve_end);
        if (ret == 0 && fdatasync(v->fd_buffered) < 0)
            ret = -errno;
        if (ret < 0) {
            ret = hv_err_set(err, ret, "%s: growing the file: %s", path, strerror(-ret));
            goto fail;
        }
        v->file_end = reserve_end;
    }
    return 0;
fail:
    return ret;
}

int vhd_live_child_open(struct hv_reactor *r, const char *path, struct bdev *parent,
                        struct bdev **out, struct hv_err *err)
{
    int ret;
    struct live *v = calloc(1, sizeof(*v));
    if (!v)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", path);
    v->fd = v->fd_buffered = -1;
    snprintf(v->path, sizeof(v->path), "%s", path);
    struct open_call oc = {.v = v, .path = path, .parent = parent, .err = err};
    ret = off_reactor(r, path, live_load, &oc, err);
    if (ret < 0)
        goto fail;
    ret = hv_aio_get(r, 128, &v->aio);
    if (ret < 0) {
        ret = hv_err_set(err, ret, "%s: aio: %s", path, strerror(-ret));
        goto fail;
    }
    v->parent = parent;
    v->bd = *parent;
    v->bd.ops = &live_ops;
    v->bd.reactor = r;
    snprintf(v->bd.name, sizeof(v->bd.name), "%s", path);
    v->bd.io_ctx_bytes = LIVE_HEAD + bdev_io_size(parent);
    v->bd.is_read_only = false;
    v->bd.granularity_bytes = v->block_bytes;
    v->bd.max_io_bytes = 0;
    v->bd.has_volatile_cache = true;
    v->bd.can_discard = false;
    v->bd.discard_zeroes = true;
    memcpy(v->bd.uuid, v->meta.footer.uuid, 16);
    *out = &v->bd;
    return 0;
fail:
    live_free(v);
    return ret;
}

bool vhd_is_live_child(const struct bdev *bd)
{
    return bd->ops == &live_ops;
}

struct bdev *vhd_live_child_parent(struct bdev *bd)
{
    return hv_container_of(bd, struct live, bd)->parent;
}

/* ------------------------------------------------------------- merge */

#define MERGE_WORKERS 16
/* Copies in flight while the guest has requests in flight on the child: a
 * merge must not crowd the guest's I/O out of the device queue. With the
 * guest idle (or held, in the final pass) all workers copy. */
#define MERGE_WORKERS_BUSY 2
#define MERGE_BUSY_SECTORS (256u * 1024 / HV_SECTOR_BYTES)

struct merge_pass {
    struct live *v;
    bool is_first;
    uint32_t next_block; /* shared cursor: the next block to take */
    int active;          /* workers still running */
    int copying;         /* workers with a copy in flight */
    struct merge_job *parked; /* workers waiting for a copy slot */
    int status;
    bool is_done;
    uint64_t copied_bytes;
};

/* One of MERGE_WORKERS copiers: takes a block from the shared cursor,
 * copies its runs (read from the child file, write into the parent bdev),
 * takes the next. Several in flight hide the latency of each copy. */
struct merge_job {
    struct merge_pass *pass;
    struct merge_job *next_parked;
    bool is_copying;
    uint32_t block;
    uint32_t sector;
    uint32_t run;
    bool has_block;
    uint8_t *buf;
    struct iovec iov;
    struct hv_aio_req req;
    struct bdev_io *pio;
    uint8_t todo[LIVE_PREFIX]; /* sectors of the current block to copy */
};

static void merge_next(struct merge_job *j);

static int merge_cap(struct live *v)
{
    return v->inflight ? MERGE_WORKERS_BUSY : MERGE_WORKERS;
}

/* A copy finished: let parked workers have the slot, as far as the cap
 * allows now. */
static void copy_slot_free(struct merge_job *j)
{
    struct merge_pass *p = j->pass;
    if (!j->is_copying)
        return;
    j->is_copying = false;
    p->copying--;
}

static void wake_parked(struct merge_pass *p)
{
    while (p->parked && p->copying < merge_cap(p->v)) {
        struct merge_job *w = p->parked;
        p->parked = w->next_parked;
        merge_next(w);
    }
}

static void merge_stop(struct merge_job *j, int status)
{
    struct merge_pass *p = j->pass;
    copy_slot_free(j);
    if (j->has_block) {
        j->has_block = false;
        if (p->v->is_mirroring)
            busy_put(p->v, j->block);
    }
    if (status < 0 && p->status == 0)
        p->status = status;
    if (--p->active == 0)
        p->is_done = true;
    else
        wake_parked(p);
}

static void merge_wrote(struct bdev_io *pio, int status)
{
    struct merge_job *j = pio->cb_arg;
    if (status < 0) {
        merge_stop(j, status);
        return;
    }
    j->pass->copied_bytes += (uint64_t)j->run * HV_SECTOR_BYTES;
    j->sector += j->run;
    copy_slot_free(j);
    merge_next(j);
    wake_parked(j->pass);
}

static void merge_read(struct hv_aio_req *req, long res)
{
    struct merge_job *j = req->arg;
    if (res < 0 || (uint64_t)res != (uint64_t)j->run * HV_SECTOR_BYTES) {
        merge_stop(j, res < 0 ? (int)res : -EIO);
        return;
    }
    struct live *v = j->pass->v;
    struct bdev_io *pio = j->pio;
    memset(pio, 0, sizeof(*pio));
    pio->type = BDEV_IO_WRITE;
    pio->offset = (uint64_t)j->block * v->block_bytes + (uint64_t)j->sector * HV_SECTOR_BYTES;
    pio->length = (uint64_t)j->run * HV_SECTOR_BYTES;
    pio->iov = &j->iov;
    pio->iovcnt = 1;
    pio->done = merge_wrote;
    pio->cb_arg = j;
    int ret = bdev_submit(v->parent, pio);
    if (ret < 0)
        merge_stop(j, ret);
}

/* Copy the next run of sectors to copy; take a new block when done. */
static void merge_next(struct merge_job *j)
{
    struct merge_pass *p = j->pass;
    struct live *v = p->v;
    uint32_t spb = v->block_bytes / HV_SECTOR_BYTES;
    if (p->status < 0) {
        merge_stop(j, 0);
        return;
    }
    for (;;) {
        if (!j->has_block) {
            /* A block with a guest write out stays dirty for the next
             * pass: one writer per parent block at a time. */
            while (p->next_block < v->entries &&
                   (v->meta.bat[p->next_block] == VHD_BAT_UNALLOCATED ||
                    !v->merge_dirty[p->next_block] ||
                    (v->is_mirroring && v->busy[p->next_block])))
                p->next_block++;
            if (p->next_block >= v->entries) {
                merge_stop(j, 0);
                return;
            }
            j->block = p->next_block++;
            j->sector = 0;
            j->has_block = true;
            if (v->is_mirroring)
                busy_get(v, j->block);
            /* Take the sectors to copy and clear them first: a write landing
             * during the copy marks them again and the next pass copies
             * them once more. merge_bits hold every sector the parent may
             * lack (all present sectors until the first pass, less what
             * mirrored writes already put in the parent). */
            v->merge_dirty[j->block] = 0;
            uint8_t *mb = v->merge_bits + (size_t)j->block * v->bitmap_bytes;
            memcpy(j->todo, mb, v->bitmap_bytes);
            memset(mb, 0, v->bitmap_bytes);
        }
        uint32_t limit = spb;
        uint64_t block_start = (uint64_t)j->block * v->block_bytes;
        if (block_start + v->block_bytes > v->bd.size_bytes)
            limit = (uint32_t)((v->bd.size_bytes - block_start) / HV_SECTOR_BYTES);
        if (j->sector >= limit) {
            j->has_block = false;
            if (v->is_mirroring)
                busy_put(v, j->block);
            continue;
        }
        uint32_t run = vhd_bitmap_run(j->todo, j->sector, limit);
        if (!vhd_bitmap_test(j->todo, j->sector)) {
            j->sector += run;
            continue;
        }
        if (p->copying >= merge_cap(v)) {
            j->next_parked = p->parked;
            p->parked = j;
            return;
        }
        /* While the guest is busy, copies go in pieces that do not keep
         * its requests waiting long behind ours on the device. */
        if (v->inflight && run > MERGE_BUSY_SECTORS)
            run = MERGE_BUSY_SECTORS;
        j->is_copying = true;
        p->copying++;
        j->run = run;
        j->iov.iov_base = j->buf;
        j->iov.iov_len = (size_t)run * HV_SECTOR_BYTES;
        j->req.done = merge_read;
        j->req.arg = j;
        hv_aio_prep_readv(&j->req, v->fd_buffered, &j->iov, 1,
                          data_offset(v, j->block) + (uint64_t)j->sector * HV_SECTOR_BYTES);
        hv_aio_submit(v->aio, &j->req);
        return;
    }
}

int vhd_live_merge_pass(struct bdev *bd, bool is_first, uint64_t *copied_bytes, struct hv_err *err)
{
    struct live *v = hv_container_of(bd, struct live, bd);
    if (is_first && !v->is_mirroring) {
        /* From now on the guest's writes go to the parent too: what the
         * passes must copy stops growing, and the final pass (in a hold)
         * has next to nothing left. */
        v->busy = calloc(v->entries, sizeof(*v->busy));
        v->tainted = calloc(v->entries, 1);
        if (!v->busy || !v->tainted) {
            free(v->busy);
            free(v->tainted);
            v->busy = NULL;
            v->tainted = NULL;
        } else {
            v->is_mirroring = true;
            v->pre_mirror = v->inflight;
        }
    }
    if (is_first)
        memset(v->merge_dirty, 1, v->entries);
    struct merge_pass p = {.v = v, .is_first = is_first, .active = MERGE_WORKERS};
    struct merge_job *jobs = calloc(MERGE_WORKERS, sizeof(*jobs));
    int ret = jobs ? 0 : -ENOMEM;
    for (int i = 0; ret == 0 && i < MERGE_WORKERS; i++) {
        jobs[i].pass = &p;
        jobs[i].buf = hv_alloc_aligned(v->block_bytes);
        jobs[i].pio = calloc(1, bdev_io_size(v->parent));
        if (!jobs[i].buf || !jobs[i].pio)
            ret = -ENOMEM;
    }
    if (ret == 0) {
        for (int i = 0; i < MERGE_WORKERS; i++)
            merge_next(&jobs[i]);
        ret = hv_reactor_run_until(bd->reactor, &p.is_done);
        if (ret == 0)
            ret = p.status;
    }
    for (int i = 0; jobs && i < MERGE_WORKERS; i++) {
        free(jobs[i].buf);
        free(jobs[i].pio);
    }
    free(jobs);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: merge into %s: %s", v->path, v->parent->name,
                          strerror(-ret));
    if (copied_bytes)
        *copied_bytes = p.copied_bytes;
    return 0;
}

uint32_t vhd_live_merge_dirty_blocks(struct bdev *bd)
{
    struct live *v = hv_container_of(bd, struct live, bd);
    uint32_t n = 0;
    for (uint32_t b = 0; b < v->entries; b++)
        n += v->merge_dirty[b] && v->meta.bat[b] != VHD_BAT_UNALLOCATED;
    return n;
}

uint64_t vhd_live_merge_dirty_bytes(struct bdev *bd)
{
    struct live *v = hv_container_of(bd, struct live, bd);
    uint64_t sectors = 0;
    for (uint32_t b = 0; b < v->entries; b++) {
        if (!v->merge_dirty[b] || v->meta.bat[b] == VHD_BAT_UNALLOCATED)
            continue;
        const uint8_t *mb = v->merge_bits + (size_t)b * v->bitmap_bytes;
        for (uint32_t i = 0; i < v->bitmap_bytes; i++)
            sectors += (unsigned)__builtin_popcount(mb[i]);
    }
    return sectors * HV_SECTOR_BYTES;
}

/* Close the child without touching its parent; the child file is left as
 * it is (durable), the parent bdev stays open and owned by the caller. */
int vhd_live_child_close(struct bdev *bd)
{
    return live_close(bd);
}
