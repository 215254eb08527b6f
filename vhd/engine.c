/*
 * engine.c — a chain of VHD images served as one asynchronous bdev.
 *
 * Layer 0 is the image that was opened (the top); layer i+1 is the parent of
 * layer i. Only the top is ever written. Every layer's BAT is in memory, and
 * so are the sector bitmaps of differencing layers (loaded at open into
 * MAP_NORESERVE memory: only the pages of allocated blocks cost RAM). A read
 * walks the chain once per run of sectors that share a layer, never once per
 * sector. Dynamic layers without bitmaps semantics (a base) serve a whole
 * allocated block, as qemu and Hyper-V do.
 *
 * Per-request state lives in the caller's bdev_io (io_ctx_bytes): a cursor and
 * a few sub-requests that are reused as the request advances, so the I/O path
 * never allocates. Requests beyond the queue depth wait in a FIFO; requests
 * that need a block while the file is being grown wait for the growth.
 *
 * Blocks this engine allocates are placed so that their data starts on a
 * 4 KiB boundary: the block's bitmap sits in the last sector of a 4 KiB
 * "prefix" whose other sectors are unused padding. The bitmap can then be
 * written with one aligned O_DIRECT write of the whole prefix.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "engine.h"
#include "ops.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define SUBS_PER_IO 4
#define SUB_IOV_MAX 64
#define META_SLOTS 64
#define ZERO_BUF_BYTES (1u << 20)
#define PREFIX_ALIGN 4096u
/* The file grows by at least this much at a time (and at most 1 GiB), so
 * that the fdatasync that makes a new footer durable is paid once per many
 * blocks, never per block. */
#define EXTEND_MIN_BYTES (64ull << 20)
#define EXTEND_MAX_BYTES (1ull << 30)
/* A clean close moves at most this much data from the end of the file into
 * holes that discards left, so that closing stays quick; what remains is for
 * `vhd compact`. */
#define CLOSE_RELOCATE_MAX_BYTES (256ull << 20)

/* Per-block flags of the top image. */
#define BLK_DIRTY 0x1           /* bitmap must be written at the next flush */
#define BLK_PREFIX_OURS 0x2     /* the 4 KiB before the bitmap belong to this block */
#define BLK_MOVED 0x4           /* deallocated since the running flush round's snapshot */

struct layer {
    char path[PATH_MAX];
    int fd;                     /* O_DIRECT unless buffered was asked or unsupported */
    int fd_buffered;            /* unaligned I/O and metadata; may equal fd */
    bool is_direct;
    struct vhd_meta meta;
    enum vhd_type type;
    uint64_t size_bytes;
    uint32_t block_bytes;
    uint32_t bitmap_bytes;
    uint32_t entries;
    bool uses_bitmaps;          /* differencing: a clear bit means "ask the parent" */
    uint8_t *bitmaps;           /* entries * bitmap_bytes, MAP_NORESERVE */
    size_t bitmaps_len;
    uint32_t read_align;
    uint32_t write_align;
    uint32_t mem_align;
    dev_t dev;
    ino_t ino;
};

struct vhd_bdev;
struct eng_io;

struct sub {
    struct hv_aio_req req;
    struct eng_io *owner;
    struct iovec iov[SUB_IOV_MAX];
    int iovcnt;
    uint64_t length;
    int seq;                    /* observer sequence, -1 when not observed */
    bool is_busy;
    bool sets_bits;
    uint32_t write_block;       /* top block a write lands in, UINT32_MAX if none */
    uint32_t block;
    uint32_t first_sector;
    uint32_t sectors;
};

/* What a request does, in up to three consecutive parts (a write into a
 * differencing image whose edges need copying up from the parent becomes
 * head group, middle, tail group). */
enum part_kind { PART_READ, PART_WRITE, PART_ZEROES, PART_DISCARD };

struct part {
    enum part_kind kind;
    uint64_t off;               /* virtual byte offset */
    uint64_t len;
    const struct iovec *iov;    /* READ/WRITE */
    int iovcnt;
    uint64_t iov_off;           /* where this part starts in iov */
};

struct eng_io {
    struct bdev_io *io;
    struct vhd_bdev *v;
    struct part parts[3];
    int part_count;
    int part_idx;
    uint64_t cursor;            /* bytes done of the current part */
    int pending;
    int status;
    bool is_parked;             /* waiting for the file to grow */
    bool has_dirtied_metadata;  /* a FUA write must then wait for a flush round */
    bool is_in_submit;
    bool is_gated;              /* counted in writes_active (differencing top) */
    bool needs_copy_up;
    bool copies_head;
    bool copies_tail;
    bool is_internal;           /* a copy-up read: outside the queue depth */
    struct eng_io *next;
    struct hv_deferred deferred;
    struct sub subs[SUBS_PER_IO];
};

struct meta_slot {
    struct hv_aio_req req;
    struct vhd_bdev *v;
    struct iovec iov[2];
    uint64_t length;
    int seq;
    bool is_busy;
};

/* A block's place in the file that a deallocation gave back. It may hold a
 * new block only once a flush round that began after the deallocation has
 * completed: before that, the BAT on disk may still point at it. */
struct free_slot {
    uint64_t bitmap_at;
    uint32_t freed_in_round;    /* rounds started when it was freed */
    uint8_t blk_flags;          /* BLK_PREFIX_OURS of the block that lived there */
};

struct vhd_bdev {
    struct bdev bd;
    struct hv_aio *aio;
    int depth;
    struct layer *layers[VHD_MAX_CHAIN_DEPTH];
    const struct vhd_io_observer *observer;
    int seq;
    unsigned queue_depth;
    unsigned active;
    struct eng_io *waitq_head;
    struct eng_io *waitq_tail;

    /* Writable dynamic/differencing top only. */
    bool is_writable;
    uint8_t *bat_disk;          /* the BAT as it goes to disk, big-endian */
    uint64_t bat_bytes;
    uint64_t bat_write_bytes;   /* bat_bytes, or up to 4 KiB when the padding is ours */
    uint32_t bat_chunks;        /* 4 KiB pieces of the BAT, written back when dirty */
    uint8_t *bat_dirty;
    uint8_t *bat_flushing;
    uint8_t *blk;               /* BLK_* per block */
    uint16_t *writes_inflight;  /* per block: its place may not be reused meanwhile */
    uint32_t *dirty;            /* blocks whose bitmap is dirty */
    uint32_t dirty_count;
    uint32_t *flushing;         /* the snapshot a flush round writes */
    uint32_t flushing_count;
    uint8_t *staging;           /* bitmaps of `flushing`, copied when the round began */
    size_t staging_len;
    uint32_t allocated;
    struct free_slot *free_slots;
    uint32_t free_count;
    uint32_t free_cap;
    uint32_t rounds_started;
    uint32_t last_ok_round;     /* number of the last round that completed, 0: none */
    uint64_t prefix_bytes;
    uint64_t extent_bytes;
    uint64_t next_alloc;        /* where the next block goes */
    uint64_t file_end;          /* where the durable footer is */
    uint8_t *zero_buf;
    uint8_t *ones_buf;          /* a dynamic block's bitmap: every sector present */
    uint8_t *footer_buf;

    bool is_extending;
    uint64_t ext_new_end;
    struct meta_slot ext_slot;
    /* The helper thread that reserves the space of a growth (fallocate
     * blocks for tens of milliseconds); it reports through ext_efd, a
     * watch in the reactor. Only the ext_fa_* fields are shared with it,
     * under ext_lock. */
    bool has_ext_thread;
    pthread_t ext_thread;
    pthread_mutex_t ext_lock;
    pthread_cond_t ext_cond;
    bool ext_fa_pending;        /* work handed to the thread, not yet done */
    bool ext_fa_quit;
    int ext_fa_fd;
    uint64_t ext_fa_from;
    uint64_t ext_fa_len;
    int ext_fa_errno;
    int ext_efd;
    struct hv_watch *ext_watch;
    /* Requests waiting for the growth, oldest first: resumed in the order
     * they arrived, so writes submitted in offset order get their blocks
     * laid out in file order (sequential reads of the image stay
     * sequential on disk). */
    struct eng_io *ext_waiters;
    struct eng_io *ext_waiters_tail;

    /* Differencing top: a write whose edge 4 KiB groups must be copied up
     * runs alone (see start_write_gate). */
    unsigned writes_active;
    struct eng_io *excl_owner;
    struct eng_io *excl_head;
    struct eng_io *excl_tail;
    struct bdev_io *cow_io[2];
    uint8_t *cow_buf[2];
    struct iovec cow_iov[2];
    int cow_pending;
    int cow_status;

    int flush_phase;            /* 0 idle, 1 data sync, 2 metadata, 3 metadata sync */
    struct eng_io *flush_current;
    struct eng_io *flush_next;
    struct meta_slot sync_slot;
    struct meta_slot slots[META_SLOTS];
    uint32_t flush_bitmap_pos;
    uint32_t flush_chunk_pos;
    int meta_inflight;
    int flush_status;
};

static const struct bdev_ops vhd_ops;

static struct vhd_bdev *vhd_of(struct bdev *bd)
{
    return hv_container_of(bd, struct vhd_bdev, bd);
}

static struct layer *top(struct vhd_bdev *v)
{
    return v->layers[0];
}

static uint8_t *bitmap_of(struct layer *l, uint32_t block)
{
    return l->bitmaps + (size_t)block * l->bitmap_bytes;
}

static uint64_t bitmap_offset(struct layer *l, uint32_t block)
{
    return (uint64_t)l->meta.bat[block] * HV_SECTOR_BYTES;
}

static uint64_t data_offset(struct layer *l, uint32_t block)
{
    return bitmap_offset(l, block) + l->bitmap_bytes;
}

/* Direct I/O when offset, length and every buffer fit the device's rules;
 * the buffered descriptor otherwise (the page cache keeps both coherent). */
static int pick_fd(struct layer *l, bool is_write, uint64_t offset, uint64_t length,
                   const struct iovec *iov, int iovcnt)
{
    uint32_t align = is_write ? l->write_align : l->read_align;
    if (!l->is_direct)
        return l->fd;
    if (offset % align || length % align || !hv_iov_is_aligned(iov, iovcnt, l->mem_align))
        return l->fd_buffered;
    return l->fd;
}

/* ----------------------------------------------------------- observation */

static int observe_submit_flags(struct vhd_bdev *v, bool is_sync, bool is_fua, uint64_t offset,
                                const struct iovec *iov, int iovcnt)
{
    if (!v->observer)
        return -1;
    int seq = v->seq++;
    v->observer->on_submit(v->observer->arg, seq, is_sync, is_fua, offset, iov, iovcnt);
    return seq;
}

static int observe_submit(struct vhd_bdev *v, bool is_sync, uint64_t offset,
                          const struct iovec *iov, int iovcnt)
{
    return observe_submit_flags(v, is_sync, false, offset, iov, iovcnt);
}

static void observe_complete(struct vhd_bdev *v, int seq, long res)
{
    if (v->observer && seq >= 0)
        v->observer->on_complete(v->observer->arg, seq, res);
}

/* --------------------------------------------------------------- routing */

/*
 * Which layer holds the bytes at `offset`, for how long: the first `*run`
 * bytes (at most `limit`) all live in layer `*layer` at file offset
 * `*file_off`, or in no layer (-1: they read as zeroes). Starts at layer
 * `from`. The walk narrows `limit` as it goes down, so one call costs one
 * step per layer, whatever the run length.
 */
static void route(struct vhd_bdev *v, int from, uint64_t offset, uint64_t limit, int *layer,
                  uint64_t *file_off, uint64_t *run)
{
    for (int i = from; i < v->depth; i++) {
        struct layer *l = v->layers[i];
        uint64_t within;
        uint64_t in_block;
        uint32_t b;

        if (offset >= l->size_bytes)
            continue;               /* a smaller parent: nothing here */
        limit = HV_MIN(limit, l->size_bytes - offset);
        if (l->type == VHD_TYPE_FIXED) {
            *layer = i;
            *file_off = offset;
            *run = limit;
            return;
        }
        b = (uint32_t)(offset / l->block_bytes);
        within = offset % l->block_bytes;
        in_block = HV_MIN(limit, l->block_bytes - within);
        if (l->meta.bat[b] == VHD_BAT_UNALLOCATED) {
            limit = in_block;
            continue;
        }
        if (l->uses_bitmaps) {
            uint32_t s = (uint32_t)(within / HV_SECTOR_BYTES);
            uint32_t end = (uint32_t)((within + in_block) / HV_SECTOR_BYTES);
            uint32_t n = vhd_bitmap_run(bitmap_of(l, b), s, end);
            if (!vhd_bitmap_test(bitmap_of(l, b), s)) {
                limit = (uint64_t)n * HV_SECTOR_BYTES;
                continue;
            }
            in_block = (uint64_t)n * HV_SECTOR_BYTES;
        }
        *layer = i;
        *file_off = data_offset(l, b) + within;
        *run = in_block;
        return;
    }
    *layer = -1;
    *file_off = 0;
    *run = limit;
}

/* ------------------------------------------------------------ completion */

static void start_io(struct eng_io *e);
static void advance(struct eng_io *e);
static void flush_kick(struct vhd_bdev *v);

static void deferred_start(void *arg)
{
    start_io(arg);
}

static void gate_release(struct eng_io *e);

static void finish_now(struct eng_io *e)
{
    struct vhd_bdev *v = e->v;
    struct bdev_io *io = e->io;
    int status = e->status;

    if (e->is_gated)
        gate_release(e);
    if (e->is_internal) {
        io->done(io, status);
        return;
    }
    v->active--;
    if (v->waitq_head && v->active < v->queue_depth) {
        struct eng_io *next = v->waitq_head;
        v->waitq_head = next->next;
        if (!v->waitq_head)
            v->waitq_tail = NULL;
        v->active++;
        hv_reactor_defer(v->bd.reactor, &next->deferred, deferred_start, next);
    }
    io->done(io, status);
}

static void deferred_finish(void *arg)
{
    finish_now(arg);
}

static void finish(struct eng_io *e)
{
    if (e->is_in_submit)
        hv_reactor_defer(e->v->bd.reactor, &e->deferred, deferred_finish, e);
    else
        finish_now(e);
}

static void maybe_finish(struct eng_io *e)
{
    struct vhd_bdev *v = e->v;
    if (e->pending || e->is_parked)
        return;
    if (e->status == 0 && e->part_idx < e->part_count)
        return;
    /* A FUA write that allocated a block or set bitmap bits is durable only
     * once its metadata is: it completes with the next flush round. */
    if (e->status == 0 && e->has_dirtied_metadata && (e->io->flags & BDEV_IO_FUA)) {
        e->has_dirtied_metadata = false;
        e->next = v->flush_next;
        v->flush_next = e;
        flush_kick(v);
        return;
    }
    finish(e);
}

static void mark_bitmap_dirty(struct vhd_bdev *v, uint32_t block)
{
    if (!(v->blk[block] & BLK_DIRTY)) {
        v->blk[block] |= BLK_DIRTY;
        v->dirty[v->dirty_count++] = block;
    }
}

static void set_bat(struct vhd_bdev *v, uint32_t block, uint32_t entry)
{
    top(v)->meta.bat[block] = entry;
    hv_put_be32(v->bat_disk + 4 * (size_t)block, entry);
    v->bat_dirty[(4 * (size_t)block) / PREFIX_ALIGN] = 1;
}

static void sub_done(struct hv_aio_req *req, long res)
{
    struct sub *s = hv_container_of(req, struct sub, req);
    struct eng_io *e = s->owner;
    struct vhd_bdev *v = e->v;

    observe_complete(v, s->seq, res);
    s->is_busy = false;
    e->pending--;
    if (s->write_block != UINT32_MAX)
        v->writes_inflight[s->write_block]--;
    if (res < 0 || (uint64_t)res != s->length) {
        if (e->status == 0)
            e->status = res < 0 ? (int)res : -EIO;
    } else if (s->sets_bits) {
        /* Bits are set only once the data is in the file: a flush round
         * snapshots bitmaps after its first fdatasync began, so a bit on
         * disk never describes data that was not made durable before it. */
        struct layer *t = top(v);
        if (t->meta.bat[s->block] != VHD_BAT_UNALLOCATED) {
            vhd_bitmap_set(bitmap_of(t, s->block), s->first_sector, s->sectors);
            mark_bitmap_dirty(v, s->block);
        }
    }
    advance(e);
}

static struct sub *free_sub(struct eng_io *e)
{
    for (int i = 0; i < SUBS_PER_IO; i++)
        if (!e->subs[i].is_busy)
            return &e->subs[i];
    return NULL;
}

/* Describe `*len` bytes of the request's iov from `from` in the sub, shrinking
 * `*len` (to whole sectors) when the iov is too fragmented for one sub. */
static int slice_into(struct sub *s, const struct iovec *iov, int iovcnt, uint64_t from,
                      uint64_t *len)
{
    int n = hv_iov_slice(iov, iovcnt, from, *len, s->iov, SUB_IOV_MAX);
    if (n >= 0) {
        s->iovcnt = n;
        return 0;
    }
    /* Take what SUB_IOV_MAX entries cover, rounded down to sectors. */
    uint64_t skip = from;
    uint64_t got = 0;
    int i = 0;
    int used = 0;
    while (i < iovcnt && skip >= iov[i].iov_len)
        skip -= iov[i++].iov_len;
    for (; i < iovcnt && used < SUB_IOV_MAX; i++, used++) {
        got += iov[i].iov_len - skip;
        skip = 0;
    }
    got = HV_ALIGN_DOWN(HV_MIN(got, *len), HV_SECTOR_BYTES);
    if (got == 0)
        return -EINVAL;
    *len = got;
    n = hv_iov_slice(iov, iovcnt, from, got, s->iov, SUB_IOV_MAX);
    if (n < 0)
        return -EINVAL;
    s->iovcnt = n;
    return 0;
}

static void zero_iov(struct vhd_bdev *v, struct sub *s, uint64_t *len)
{
    uint64_t left = HV_MIN(*len, (uint64_t)ZERO_BUF_BYTES * SUB_IOV_MAX);
    int n = 0;
    *len = left;
    while (left) {
        uint64_t piece = HV_MIN(left, ZERO_BUF_BYTES);
        s->iov[n].iov_base = v->zero_buf;
        s->iov[n].iov_len = piece;
        n++;
        left -= piece;
    }
    s->iovcnt = n;
}

static void submit_sub(struct eng_io *e, struct sub *s, int layer, bool is_write,
                       uint64_t file_off)
{
    struct vhd_bdev *v = e->v;
    struct layer *l = v->layers[layer];
    int fd = pick_fd(l, is_write, file_off, s->length, s->iov, s->iovcnt);

    s->owner = e;
    s->is_busy = true;
    s->req.done = sub_done;
    s->seq = -1;
    e->pending++;
    if (is_write) {
        if (s->write_block != UINT32_MAX)
            v->writes_inflight[s->write_block]++;
        bool is_fua = e->io->flags & BDEV_IO_FUA;
        hv_aio_prep_writev(&s->req, fd, s->iov, s->iovcnt, file_off);
        if (is_fua)
            hv_aio_set_rw_flags(&s->req, RWF_DSYNC);
        s->seq = observe_submit_flags(v, false, is_fua, file_off, s->iov, s->iovcnt);
    } else {
        hv_aio_prep_readv(&s->req, fd, s->iov, s->iovcnt, file_off);
    }
    hv_aio_submit(v->aio, &s->req);
}

/* ------------------------------------------------------------ allocation */

static void extend_start(struct vhd_bdev *v);

/* How much the file grows at a time: an eighth of its size, at least
 * EXTEND_MIN_BYTES and at most EXTEND_MAX_BYTES, never (much) more than the
 * blocks still unallocated need. */
static uint64_t extension_step(struct vhd_bdev *v)
{
    struct layer *t = top(v);
    uint64_t remaining = (uint64_t)(t->entries - v->allocated) * v->extent_bytes;
    uint64_t step = HV_MIN(HV_MAX(EXTEND_MIN_BYTES, v->file_end / 8), EXTEND_MAX_BYTES);
    return HV_MAX(HV_MIN(step, remaining), v->extent_bytes);
}

/* Take the next block from the reserve (space between the last block and the
 * durable footer). False when the reserve is too small: the file must grow. */
static bool take_free_slot(struct vhd_bdev *v, uint64_t *bitmap_at, uint8_t *flags)
{
    uint32_t best = UINT32_MAX;
    for (uint32_t i = 0; i < v->free_count; i++) {
        if (v->free_slots[i].freed_in_round >= v->last_ok_round)
            continue;
        if (best == UINT32_MAX || v->free_slots[i].bitmap_at < v->free_slots[best].bitmap_at)
            best = i;
    }
    if (best == UINT32_MAX)
        return false;
    *bitmap_at = v->free_slots[best].bitmap_at;
    *flags = v->free_slots[best].blk_flags;
    v->free_slots[best] = v->free_slots[--v->free_count];
    return true;
}

static bool allocate(struct vhd_bdev *v, uint32_t block)
{
    struct layer *t = top(v);
    uint64_t x = v->next_alloc;
    uint64_t bitmap_at;
    uint8_t flags = BLK_PREFIX_OURS;

    /* Space a discard gave back comes first (lowest offset first, so the
     * file stays dense); it was punched, so it reads as zeroes like the
     * reserve, and no durable BAT entry points at it any more. */
    if (!take_free_slot(v, &bitmap_at, &flags)) {
        /* Data on a 4 KiB boundary, the bitmap right before it. Between two
         * blocks placed here the gap is under 4 KiB and belongs to the later
         * one (its bitmap is written as one aligned 4 KiB piece). */
        uint64_t data_at = HV_ALIGN_UP(x + t->bitmap_bytes, PREFIX_ALIGN);
        if (data_at + t->block_bytes > v->file_end)
            return false;
        bitmap_at = data_at - t->bitmap_bytes;
        flags = data_at - v->prefix_bytes >= x ? BLK_PREFIX_OURS : 0;
        v->next_alloc = data_at + t->block_bytes;
        /* Grow before the reserve runs out, so that writes rarely wait. */
        if (!v->is_extending && v->file_end - v->next_alloc < extension_step(v) / 2 &&
            v->allocated + 1 < t->entries)
            extend_start(v);
    }
    /*
     * Crash ordering of an allocation (no fsync of its own):
     *  - the block lies in the reserve, which only exists once a footer past
     *    it is durable (extend_start), so the file never ends in data;
     *  - the reserve reads as zeroes (fresh file space, or punched at open),
     *    so a BAT entry that reaches the disk before the block's data shows
     *    zeroes (dynamic: what an unwritten block reads) or clear bits
     *    (differencing: the parent), never stale bytes;
     *  - the BAT entry and the bitmap are written back by the next flush
     *    round, after that round's first fdatasync made the data of every
     *    completed write durable, and become durable with its second one.
     * A crash before that leaves the block unreferenced: leaked, not lost
     * (nothing acknowledged by a flush depended on it).
     */
    set_bat(v, block, (uint32_t)(bitmap_at / HV_SECTOR_BYTES));
    v->blk[block] = (uint8_t)((v->blk[block] & ~BLK_PREFIX_OURS) | flags);
    v->allocated++;
    if (t->uses_bitmaps)
        memset(bitmap_of(t, block), 0, t->bitmap_bytes);
    else
        mark_bitmap_dirty(v, block);      /* the all-ones bitmap of a dynamic block */
    return true;
}

static void park_for_extension(struct eng_io *e)
{
    struct vhd_bdev *v = e->v;
    e->is_parked = true;
    e->next = NULL;
    if (v->ext_waiters_tail)
        v->ext_waiters_tail->next = e;
    else
        v->ext_waiters = e;
    v->ext_waiters_tail = e;
    extend_start(v);
}

static int punch(struct layer *l, uint64_t offset, uint64_t length)
{
    if (fallocate(l->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset,
                  (off_t)length) < 0)
        return -errno;
    return 0;
}

/* The crash harness sees a punch as the zeroes it leaves behind. */
static void observe_punch(struct vhd_bdev *v, uint64_t at, uint64_t len)
{
    while (v->observer && len) {
        struct iovec iov[VHD_MAX_BLOCK_BYTES / ZERO_BUF_BYTES + 1];
        uint64_t done = 0;
        int n = 0;
        for (; len - done && n < (int)HV_ARRAY_SIZE(iov); n++) {
            uint64_t piece = HV_MIN(len - done, ZERO_BUF_BYTES);
            iov[n].iov_base = v->zero_buf;
            iov[n].iov_len = piece;
            done += piece;
        }
        int seq = observe_submit(v, false, at, iov, n);
        observe_complete(v, seq, (long)done);
        at += done;
        len -= done;
    }
}

/* Give a whole block back: the space becomes a hole, the BAT entry goes back
 * to unallocated (durable at the next flush). Punching first is safe: until
 * the BAT reaches the disk, the old entry points at zeroes and clear bits,
 * which read as zeroes (dynamic) or the parent (differencing): what a
 * discarded block may read. The place is reused only after a flush round
 * made the unallocated entry durable (take_free_slot). */
static void deallocate(struct vhd_bdev *v, uint32_t block)
{
    struct layer *t = top(v);
    uint64_t at = bitmap_offset(t, block);
    uint64_t len = (uint64_t)t->bitmap_bytes + t->block_bytes;

    bool is_punched = punch(t, at, len) == 0;
    /* A write still in flight to the old place could land after a new
     * block took it: such a place is left alone (leaked until close). */
    if (is_punched && v->free_count < v->free_cap && v->writes_inflight[block] == 0) {
        v->free_slots[v->free_count++] = (struct free_slot){
            .bitmap_at = at,
            .freed_in_round = v->rounds_started,
            .blk_flags = (uint8_t)(v->blk[block] & BLK_PREFIX_OURS),
        };
    }
    if (is_punched)
        observe_punch(v, at, len);
    set_bat(v, block, VHD_BAT_UNALLOCATED);
    v->blk[block] |= BLK_MOVED;
    v->allocated--;
    if (t->uses_bitmaps)
        memset(bitmap_of(t, block), 0, t->bitmap_bytes);
}

/* ----------------------------------------------------------------- steps */

/*
 * One step of a request: handle the next piece at the cursor. Returns 1 when
 * the cursor moved, 0 when the request must wait (no free sub, or parked).
 */
static int step_read(struct eng_io *e)
{
    struct vhd_bdev *v = e->v;
    const struct part *p = &e->parts[e->part_idx];
    uint64_t off = p->off + e->cursor;
    uint64_t file_off;
    uint64_t run;
    int layer;
    struct sub *s;

    route(v, 0, off, p->len - e->cursor, &layer, &file_off, &run);
    if (layer < 0) {
        hv_iov_memset(p->iov, p->iovcnt, p->iov_off + e->cursor, 0, run);
        e->cursor += run;
        return 1;
    }
    s = free_sub(e);
    if (!s)
        return 0;
    if (slice_into(s, p->iov, p->iovcnt, p->iov_off + e->cursor, &run) < 0) {
        e->status = -EINVAL;
        return 0;
    }
    s->length = run;
    s->sets_bits = false;
    s->write_block = UINT32_MAX;
    e->cursor += run;
    submit_sub(e, s, layer, false, file_off);
    return 1;
}

/* The part's data (or zeroes when `is_zero`) into the top image. */
static int step_write_top(struct eng_io *e, bool is_zero)
{
    struct vhd_bdev *v = e->v;
    struct bdev_io *io = e->io;
    const struct part *p = &e->parts[e->part_idx];
    struct layer *t = top(v);
    uint64_t off = p->off + e->cursor;
    uint64_t run = p->len - e->cursor;
    uint64_t file_off;
    uint32_t b = 0;
    struct sub *s = free_sub(e);

    if (!s)
        return 0;
    if (t->type == VHD_TYPE_FIXED) {
        file_off = off;
    } else {
        uint64_t within;
        b = (uint32_t)(off / t->block_bytes);
        within = off % t->block_bytes;
        run = HV_MIN(run, t->block_bytes - within);
        if (t->meta.bat[b] == VHD_BAT_UNALLOCATED) {
            if (!allocate(v, b)) {
                park_for_extension(e);
                return 0;
            }
            e->has_dirtied_metadata = true;
        }
        file_off = data_offset(t, b) + within;
    }
    if (!is_zero) {
        if (slice_into(s, p->iov, p->iovcnt, p->iov_off + e->cursor, &run) < 0) {
            e->status = -EINVAL;
            return 0;
        }
    } else {
        zero_iov(v, s, &run);
    }
    s->length = run;
    s->sets_bits = false;
    s->write_block = t->type == VHD_TYPE_FIXED ? UINT32_MAX : b;
    /* A FUA write is durable only with the metadata that makes it
     * reachable: if its block's BAT entry or bitmap is not durable yet (or
     * is being written by a round), it completes with the next round. */
    if ((io->flags & BDEV_IO_FUA) && t->type != VHD_TYPE_FIXED &&
        (v->flush_phase != 0 || (v->blk[b] & BLK_DIRTY) ||
         v->bat_dirty[(4 * (size_t)b) / PREFIX_ALIGN]))
        e->has_dirtied_metadata = true;
    if (t->uses_bitmaps) {
        uint32_t first = (uint32_t)((off % t->block_bytes) / HV_SECTOR_BYTES);
        uint32_t count = (uint32_t)(run / HV_SECTOR_BYTES);
        /* The disk's last group may be cut short by its size: its bits past
         * the end are set too, so bitmap bytes stay whole (no reader looks
         * beyond the end). */
        if (off + run == t->size_bytes)
            count = HV_MIN((uint32_t)HV_ALIGN_UP(first + count, 8),
                           t->block_bytes / HV_SECTOR_BYTES) - first;
        if (!vhd_bitmap_all_set(bitmap_of(t, b), first, count)) {
            s->sets_bits = true;
            s->block = b;
            s->first_sector = first;
            s->sectors = count;
            e->has_dirtied_metadata = true;
        }
    }
    e->cursor += run;
    submit_sub(e, s, 0, true, file_off);
    return 1;
}

/* True when no layer below the top holds data in [off, off+len). */
static bool reads_zero_below(struct vhd_bdev *v, uint64_t off, uint64_t len)
{
    while (len) {
        uint64_t file_off;
        uint64_t run;
        int layer;
        route(v, 1, off, len, &layer, &file_off, &run);
        if (layer >= 0)
            return false;
        off += run;
        len -= run;
    }
    return true;
}

static int step_zero_or_discard(struct eng_io *e, bool is_discard)
{
    struct vhd_bdev *v = e->v;
    struct bdev_io *io = e->io;
    const struct part *p = &e->parts[e->part_idx];
    struct layer *t = top(v);
    uint64_t off = p->off + e->cursor;
    uint64_t within;
    uint64_t run;
    uint64_t block_len;
    uint32_t b;

    if (t->type == VHD_TYPE_FIXED) {
        if (is_discard) {           /* a fixed disk stays preallocated */
            e->cursor = p->len;
            return 1;
        }
        return step_write_top(e, true);
    }
    b = (uint32_t)(off / t->block_bytes);
    within = off % t->block_bytes;
    run = HV_MIN(p->len - e->cursor, t->block_bytes - within);
    /* The last block of a disk whose size is not a whole number of blocks
     * is whole when the range reaches the end of the disk. */
    block_len = HV_MIN((uint64_t)t->block_bytes, t->size_bytes - (uint64_t)b * t->block_bytes);
    bool is_whole = within == 0 && run >= block_len;

    if (t->meta.bat[b] == VHD_BAT_UNALLOCATED) {
        /* Unallocated in a dynamic image reads zeroes already; in a
         * differencing one a discard may show the parent, but zeroes must
         * hide it unless the parent has nothing there either. */
        if (is_discard || v->depth == 1 || reads_zero_below(v, off, run)) {
            e->cursor += run;
            return 1;
        }
        return step_write_top(e, true);
    }
    if (is_whole && (is_discard || (v->depth == 1 && (io->flags & BDEV_IO_MAY_UNMAP)))) {
        deallocate(v, b);
        e->has_dirtied_metadata = true;
        e->cursor += run;
        return 1;
    }
    if (is_discard && v->depth > 1) {
        /* Part of a differencing block: contents may stay as they are;
         * nothing could be freed anyway. */
        e->cursor += run;
        return 1;
    }
    /* Part of a dynamic block (discard promises zeroes), or write-zeroes. */
    return step_write_top(e, true);
}

static void block_status(struct vhd_bdev *v, struct bdev_io *io)
{
    uint64_t done = 0;
    int first_layer = -2;
    while (done < io->length) {
        uint64_t file_off;
        uint64_t run;
        int layer;
        route(v, 0, io->offset + done, io->length - done, &layer, &file_off, &run);
        if (first_layer == -2)
            first_layer = layer;
        else if (layer != first_layer)
            break;
        done += run;
    }
    io->status = first_layer >= 0 ? BDEV_STATUS_ALLOCATED : BDEV_STATUS_ZERO;
    io->status_depth = first_layer;
    io->status_length = done;
}

static void advance(struct eng_io *e)
{
    while (e->status == 0 && !e->is_parked && e->part_idx < e->part_count) {
        const struct part *p = &e->parts[e->part_idx];
        int moved;
        if (e->cursor >= p->len) {
            e->part_idx++;
            e->cursor = 0;
            continue;
        }
        switch (p->kind) {
        case PART_READ:
            moved = step_read(e);
            break;
        case PART_WRITE:
            moved = step_write_top(e, false);
            break;
        case PART_ZEROES:
            moved = step_zero_or_discard(e, false);
            break;
        case PART_DISCARD:
        default:
            moved = step_zero_or_discard(e, true);
            break;
        }
        if (!moved)
            break;
    }
    maybe_finish(e);
}

/* ----------------------------------------------------------------- flush */

/*
 * A flush round makes every write completed before it began durable, with
 * the metadata that points at it. Crash ordering:
 *   1. fdatasync: the data (and new blocks' zeroed space) of every completed
 *      write is durable. The bitmaps and BAT pages to write were snapshot
 *      just before, so they describe only writes that this sync covers.
 *   2. write the snapshot bitmaps and dirty BAT pages.
 *   3. fdatasync: the metadata is durable; the round's requests complete.
 * A crash before 3 completes leaves either the old metadata (the new data is
 * unreferenced or hidden behind clear bits: it was never acknowledged by a
 * flush) or the new metadata pointing at data made durable in 1. A round
 * with no metadata to write is a single fdatasync.
 */
static void flush_complete_round(struct vhd_bdev *v, int status)
{
    struct eng_io *list = v->flush_current;
    if (status == 0)
        v->last_ok_round = v->rounds_started;
    v->flush_current = NULL;
    v->flush_phase = 0;
    while (list) {
        struct eng_io *e = list;
        list = e->next;
        if (e->status == 0)
            e->status = status;
        finish_now(e);
    }
    flush_kick(v);
}

static void flush_restore_dirty(struct vhd_bdev *v)
{
    for (uint32_t i = 0; i < v->flushing_count; i++)
        mark_bitmap_dirty(v, v->flushing[i]);
    for (uint32_t c = 0; c < v->bat_chunks; c++)
        v->bat_dirty[c] |= v->bat_flushing[c];
    v->flushing_count = 0;
}

static void sync_submit(struct vhd_bdev *v, struct meta_slot *slot,
                        void (*done)(struct hv_aio_req *, long))
{
    slot->v = v;
    slot->req.done = done;
    slot->is_busy = true;
    hv_aio_prep_fdsync(&slot->req, top(v)->fd);
    slot->seq = observe_submit(v, true, 0, NULL, 0);
    hv_aio_submit(v->aio, &slot->req);
}

static void flush_meta_issue(struct vhd_bdev *v);

static void flush_sync2_done(struct hv_aio_req *req, long res)
{
    struct meta_slot *slot = hv_container_of(req, struct meta_slot, req);
    struct vhd_bdev *v = slot->v;
    observe_complete(v, slot->seq, res);
    slot->is_busy = false;
    if (res < 0)
        flush_restore_dirty(v);
    v->flushing_count = 0;
    flush_complete_round(v, res < 0 ? (int)res : 0);
}

static void flush_meta_done(struct hv_aio_req *req, long res)
{
    struct meta_slot *slot = hv_container_of(req, struct meta_slot, req);
    struct vhd_bdev *v = slot->v;
    observe_complete(v, slot->seq, res);
    slot->is_busy = false;
    v->meta_inflight--;
    if ((res < 0 || (uint64_t)res != slot->length) && v->flush_status == 0)
        v->flush_status = res < 0 ? (int)res : -EIO;
    flush_meta_issue(v);
}

static struct meta_slot *free_slot(struct vhd_bdev *v)
{
    for (int i = 0; i < META_SLOTS; i++)
        if (!v->slots[i].is_busy)
            return &v->slots[i];
    return NULL;
}

/*
 * Metadata goes through the page cache, whether aligned or not. A direct
 * write of a 4 KiB bitmap prefix lands in space that fallocate reserved
 * (an unwritten extent), and ext4 converts it inside io_submit: 1-2 ms per
 * write, so 512 bitmaps after 1 GiB of new blocks held the reactor for
 * close to a second. Buffered, each write is a copy into a page, and the
 * round's second fdatasync writes them all out together, which is also
 * the point where they must be durable (crash ordering unchanged: data
 * sync, then these writes, then the metadata sync). Aligned metadata
 * pages (a bitmap prefix the block owns, BAT chunks) are never touched by
 * a direct data write, so the page cache cannot hold a stale copy of data.
 */
static void meta_write(struct vhd_bdev *v, struct meta_slot *slot, int iovcnt, uint64_t off)
{
    struct layer *t = top(v);
    int fd;
    slot->v = v;
    slot->is_busy = true;
    slot->length = hv_iov_length(slot->iov, iovcnt);
    slot->req.done = flush_meta_done;
    fd = t->fd_buffered;
    hv_aio_prep_writev(&slot->req, fd, slot->iov, iovcnt, off);
    slot->seq = observe_submit(v, false, off, slot->iov, iovcnt);
    v->meta_inflight++;
    hv_aio_submit(v->aio, &slot->req);
}

static void flush_meta_issue(struct vhd_bdev *v)
{
    struct layer *t = top(v);
    struct meta_slot *slot;

    while (v->flush_status == 0 && (slot = free_slot(v))) {
        if (v->flush_bitmap_pos < v->flushing_count) {
            uint32_t i = v->flush_bitmap_pos++;
            uint32_t b = v->flushing[i];
            uint8_t *bm = t->uses_bitmaps ? v->staging + (size_t)i * t->bitmap_bytes
                                          : v->ones_buf;
            uint64_t at;
            /* Discarded (and perhaps placed elsewhere) since the snapshot: the
             * staged bitmap describes a block that is gone. */
            if (t->meta.bat[b] == VHD_BAT_UNALLOCATED || (v->blk[b] & BLK_MOVED))
                continue;
            at = bitmap_offset(t, b);
            if (v->blk[b] & BLK_PREFIX_OURS) {
                slot->iov[0].iov_base = v->zero_buf;
                slot->iov[0].iov_len = v->prefix_bytes - t->bitmap_bytes;
                slot->iov[1].iov_base = bm;
                slot->iov[1].iov_len = t->bitmap_bytes;
                if (slot->iov[0].iov_len)
                    meta_write(v, slot, 2, at - slot->iov[0].iov_len);
                else {
                    slot->iov[0] = slot->iov[1];
                    meta_write(v, slot, 1, at);
                }
            } else {
                slot->iov[0].iov_base = bm;
                slot->iov[0].iov_len = t->bitmap_bytes;
                meta_write(v, slot, 1, at);
            }
            continue;
        }
        while (v->flush_chunk_pos < v->bat_chunks && !v->bat_flushing[v->flush_chunk_pos])
            v->flush_chunk_pos++;
        if (v->flush_chunk_pos < v->bat_chunks) {
            /* A run of dirty BAT chunks is one write. */
            uint32_t c = v->flush_chunk_pos++;
            uint64_t from = (uint64_t)c * PREFIX_ALIGN;
            while (v->flush_chunk_pos < v->bat_chunks && v->bat_flushing[v->flush_chunk_pos])
                v->flush_chunk_pos++;
            slot->iov[0].iov_base = v->bat_disk + from;
            slot->iov[0].iov_len = HV_MIN((uint64_t)v->flush_chunk_pos * PREFIX_ALIGN,
                                          v->bat_write_bytes) - from;
            meta_write(v, slot, 1, t->meta.header.table_offset + from);
            continue;
        }
        break;
    }
    if (v->meta_inflight)
        return;
    if (v->flush_status < 0) {
        int status = v->flush_status;
        flush_restore_dirty(v);
        flush_complete_round(v, status);
        return;
    }
    v->flush_phase = 3;
    sync_submit(v, &v->sync_slot, flush_sync2_done);
}

static void flush_sync1_done(struct hv_aio_req *req, long res)
{
    struct meta_slot *slot = hv_container_of(req, struct meta_slot, req);
    struct vhd_bdev *v = slot->v;
    bool has_bat = false;

    observe_complete(v, slot->seq, res);
    slot->is_busy = false;
    if (res < 0) {
        flush_restore_dirty(v);
        flush_complete_round(v, (int)res);
        return;
    }
    for (uint32_t c = 0; c < v->bat_chunks && !has_bat; c++)
        has_bat = v->bat_flushing[c];
    if (v->flushing_count == 0 && !has_bat) {
        flush_complete_round(v, 0);
        return;
    }
    v->flush_phase = 2;
    v->flush_status = 0;
    v->flush_bitmap_pos = 0;
    v->flush_chunk_pos = 0;
    flush_meta_issue(v);
}

static void flush_kick(struct vhd_bdev *v)
{
    struct layer *t = top(v);
    if (v->flush_phase != 0 || !v->flush_next)
        return;
    v->flush_current = v->flush_next;
    v->flush_next = NULL;
    v->flushing_count = 0;
    if (v->bat_disk) {
        for (uint32_t i = 0; i < v->dirty_count; i++) {
            uint32_t b = v->dirty[i];
            v->blk[b] &= (uint8_t)~(BLK_DIRTY | BLK_MOVED);
            if (t->meta.bat[b] == VHD_BAT_UNALLOCATED)
                continue;
            if (t->uses_bitmaps)
                memcpy(v->staging + (size_t)v->flushing_count * t->bitmap_bytes, bitmap_of(t, b),
                       t->bitmap_bytes);
            v->flushing[v->flushing_count++] = b;
        }
        v->dirty_count = 0;
        memcpy(v->bat_flushing, v->bat_dirty, v->bat_chunks);
        memset(v->bat_dirty, 0, v->bat_chunks);
    }
    v->rounds_started++;
    v->flush_phase = 1;
    sync_submit(v, &v->sync_slot, flush_sync1_done);
}

/* ------------------------------------------------------------- extension */

static void extend_finish(struct vhd_bdev *v, long res)
{
    struct eng_io *list = v->ext_waiters;

    v->is_extending = false;
    v->ext_waiters = NULL;
    v->ext_waiters_tail = NULL;
    if (res == 0)
        v->file_end = v->ext_new_end;
    while (list) {
        struct eng_io *e = list;
        list = e->next;
        e->is_parked = false;
        if (res < 0 && e->status == 0)
            e->status = (int)res;
        advance(e);
    }
}

static void extend_zero_done(struct hv_aio_req *req, long res)
{
    struct meta_slot *slot = hv_container_of(req, struct meta_slot, req);
    struct vhd_bdev *v = slot->v;
    observe_complete(v, slot->seq, res);
    slot->is_busy = false;
    extend_finish(v, res == VHD_FOOTER_BYTES ? 0 : res < 0 ? res : -EIO);
}

static void extend_sync_done(struct hv_aio_req *req, long res)
{
    struct meta_slot *slot = hv_container_of(req, struct meta_slot, req);
    struct vhd_bdev *v = slot->v;
    struct layer *t = top(v);

    observe_complete(v, slot->seq, res);
    if (res < 0) {
        slot->is_busy = false;
        extend_finish(v, res);
        return;
    }
    /* The old footer now lies inside the reserve, where a new block may
     * leave sectors unwritten: it must read as zeroes like the rest. Zeroing
     * it only now keeps the file ending in a durable footer throughout; the
     * zeroes become durable with the first flush round's data sync, before
     * any BAT entry that could expose them. */
    slot->req.done = extend_zero_done;
    slot->iov[0].iov_base = v->zero_buf;
    slot->iov[0].iov_len = VHD_FOOTER_BYTES;
    hv_aio_prep_writev(&slot->req,
                       pick_fd(t, true, v->file_end, VHD_FOOTER_BYTES, slot->iov, 1),
                       slot->iov, 1, v->file_end);
    slot->seq = observe_submit(v, false, v->file_end, slot->iov, 1);
    hv_aio_submit(v->aio, &slot->req);
}

static void extend_write_done(struct hv_aio_req *req, long res)
{
    struct meta_slot *slot = hv_container_of(req, struct meta_slot, req);
    struct vhd_bdev *v = slot->v;
    observe_complete(v, slot->seq, res);
    if (res != VHD_FOOTER_BYTES) {
        /* The new footer did not land: the old one still ends the file's
         * durable part; report the failure to the waiting writes. */
        slot->is_busy = false;
        extend_finish(v, res < 0 ? res : -EIO);
        return;
    }
    sync_submit(v, slot, extend_sync_done);
}

/* Second half of a growth, back on the reactor once the space is
 * reserved: the new footer at the new end, then its fdatasync. Both go
 * through aio and do not block. */
static void extend_write_footer(struct vhd_bdev *v)
{
    struct layer *t = top(v);
    uint64_t new_end = v->ext_new_end;
    struct vhd_footer f;

    f = t->meta.footer;
    vhd_footer_encode(&f, v->footer_buf);
    v->ext_slot.v = v;
    v->ext_slot.is_busy = true;
    v->ext_slot.req.done = extend_write_done;
    v->ext_slot.iov[0].iov_base = v->footer_buf;
    v->ext_slot.iov[0].iov_len = VHD_FOOTER_BYTES;
    hv_aio_prep_writev(&v->ext_slot.req,
                       pick_fd(t, true, new_end, VHD_FOOTER_BYTES, v->ext_slot.iov, 1),
                       v->ext_slot.iov, 1, new_end);
    v->ext_slot.seq = observe_submit(v, false, new_end, v->ext_slot.iov, 1);
    hv_aio_submit(v->aio, &v->ext_slot.req);
}

/* Reserve the space in one go: fewer, larger extents, and writes into it
 * allocate nothing. Best effort: without it the writes allocate. */
static int reserve_space(int fd, uint64_t from, uint64_t len)
{
    return fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)from, (off_t)len) < 0 ? errno : 0;
}

static void *ext_thread_main(void *arg)
{
    struct vhd_bdev *v = arg;
    pthread_mutex_lock(&v->ext_lock);
    for (;;) {
        while (!v->ext_fa_pending && !v->ext_fa_quit)
            pthread_cond_wait(&v->ext_cond, &v->ext_lock);
        if (!v->ext_fa_pending)
            break;
        int fd = v->ext_fa_fd;
        uint64_t from = v->ext_fa_from;
        uint64_t len = v->ext_fa_len;
        pthread_mutex_unlock(&v->ext_lock);
        int error = reserve_space(fd, from, len);
        uint64_t one = 1;
        pthread_mutex_lock(&v->ext_lock);
        v->ext_fa_errno = error;
        v->ext_fa_pending = false;
        if (write(v->ext_efd, &one, sizeof(one)) < 0)
            abort();                /* an eventfd write fails only on overflow */
    }
    pthread_mutex_unlock(&v->ext_lock);
    return NULL;
}

static void on_ext_reserved(void *arg, uint32_t events)
{
    struct vhd_bdev *v = arg;
    uint64_t count;
    int error;
    bool is_pending;

    (void)events;
    if (read(v->ext_efd, &count, sizeof(count)) < 0)
        return;
    pthread_mutex_lock(&v->ext_lock);
    error = v->ext_fa_errno;
    is_pending = v->ext_fa_pending;
    pthread_mutex_unlock(&v->ext_lock);
    if (is_pending || !v->is_extending)
        return;
    if (error)
        hv_debug("%s: fallocate: %s", top(v)->path, strerror(error));
    extend_write_footer(v);
}

/*
 * Grow the file: the new footer is written at the new end and made durable
 * before any block is placed in the space between (the reserve). Until then
 * the old footer, untouched, still ends the file, so the file ends in a
 * valid footer at every instant a crash could expose. Blocks then come from
 * the reserve with no fsync of their own.
 *
 * The space is reserved first (fallocate) by the engine's helper thread,
 * because fallocate blocks for 25-50 ms and the reactor serves every other
 * request meanwhile; writes that need the new space stay parked until the
 * footer is durable, as before. The footer write and its fdatasync follow
 * on the reactor through aio. Nothing is written before the reservation
 * completes, so the crash ordering is the same as when it ran inline.
 */
static void extend_start(struct vhd_bdev *v)
{
    struct layer *t = top(v);
    uint64_t step = extension_step(v);
    uint64_t new_end;
    uint64_t from;
    uint64_t len;
    int error;

    if (v->is_extending)
        return;
    new_end = HV_ALIGN_UP(HV_MAX(v->file_end, v->next_alloc) + step, PREFIX_ALIGN);
    if (new_end < v->next_alloc + v->extent_bytes)
        new_end = HV_ALIGN_UP(v->next_alloc + v->extent_bytes, PREFIX_ALIGN);
    v->is_extending = true;
    v->ext_new_end = new_end;
    from = v->file_end;
    len = new_end + VHD_FOOTER_BYTES - v->file_end;
    if (v->has_ext_thread) {
        pthread_mutex_lock(&v->ext_lock);
        v->ext_fa_fd = t->fd;
        v->ext_fa_from = from;
        v->ext_fa_len = len;
        v->ext_fa_errno = 0;
        v->ext_fa_pending = true;
        pthread_cond_signal(&v->ext_cond);
        pthread_mutex_unlock(&v->ext_lock);
        return;
    }
    error = reserve_space(t->fd, from, len);
    if (error)
        hv_debug("%s: fallocate: %s", t->path, strerror(error));
    extend_write_footer(v);
}

static int ext_thread_start(struct vhd_bdev *v, struct hv_err *err)
{
    int ret;
    v->ext_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (v->ext_efd < 0)
        return hv_err_errno(err, top(v)->path, "eventfd");
    v->ext_watch = hv_reactor_add_fd(v->bd.reactor, v->ext_efd, EPOLLIN, on_ext_reserved, v);
    if (!v->ext_watch)
        return hv_err_errno(err, top(v)->path, "reactor watch");
    pthread_mutex_init(&v->ext_lock, NULL);
    pthread_cond_init(&v->ext_cond, NULL);
    ret = pthread_create(&v->ext_thread, NULL, ext_thread_main, v);
    if (ret != 0) {
        pthread_cond_destroy(&v->ext_cond);
        pthread_mutex_destroy(&v->ext_lock);
        return hv_err_set(err, -ret, "%s: starting the file-growth thread: %s", top(v)->path,
                          strerror(ret));
    }
    v->has_ext_thread = true;
    return 0;
}

/* The thread finishes the reservation it may be running, then exits. */
static void ext_thread_stop(struct vhd_bdev *v)
{
    if (v->has_ext_thread) {
        pthread_mutex_lock(&v->ext_lock);
        v->ext_fa_quit = true;
        pthread_cond_signal(&v->ext_cond);
        pthread_mutex_unlock(&v->ext_lock);
        pthread_join(v->ext_thread, NULL);
        pthread_cond_destroy(&v->ext_cond);
        pthread_mutex_destroy(&v->ext_lock);
        v->has_ext_thread = false;
    }
    if (v->ext_watch)
        hv_reactor_del_fd(v->bd.reactor, v->ext_watch);
    v->ext_watch = NULL;
    if (v->ext_efd >= 0)
        close(v->ext_efd);
    v->ext_efd = -1;
}

/* ------------------------------------------------------------- copy-up */

/*
 * Differencing top: sector bitmaps are kept in whole bytes (4 KiB groups of
 * eight sectors). A write that covers only part of a group whose bits are
 * not all set first reads the whole group through the chain and writes it
 * back merged (copy-up). libvhdi 20210425 (vhdimount) misreads partial
 * bitmap bytes, and Hyper-V-sized 4 KiB sectors never produce them, so
 * this keeps every reader agreeing with hvstor.
 *
 * A copy-up must not race another write to the same group (its read could
 * pick up old data that it then writes back over the newer write), so such
 * a write runs alone: it waits for the writes in flight to drain, and
 * writes that arrive meanwhile wait for it. Unaligned writes are rare; the
 * aligned ones never pay for this.
 */
#define GROUP_BYTES 4096u

static bool group_needs_copy_up(struct vhd_bdev *v, uint64_t g, uint64_t glen, uint64_t off,
                                uint64_t len)
{
    struct layer *t = top(v);
    uint32_t b = (uint32_t)(g / t->block_bytes);
    if (off <= g && off + len >= g + glen)
        return false;
    if (t->meta.bat[b] == VHD_BAT_UNALLOCATED)
        return true;
    return !vhd_bitmap_all_set(bitmap_of(t, b), (uint32_t)((g % t->block_bytes) / HV_SECTOR_BYTES),
                               (uint32_t)(glen / HV_SECTOR_BYTES));
}

static uint64_t group_len(struct vhd_bdev *v, uint64_t g)
{
    return HV_MIN((uint64_t)GROUP_BYTES, v->bd.size_bytes - g);
}

static void plan_copy_up(struct eng_io *e)
{
    struct vhd_bdev *v = e->v;
    struct bdev_io *io = e->io;
    uint64_t g0 = HV_ALIGN_DOWN(io->offset, GROUP_BYTES);
    uint64_t g1 = HV_ALIGN_DOWN(io->offset + io->length - 1, GROUP_BYTES);

    e->copies_head = group_needs_copy_up(v, g0, group_len(v, g0), io->offset, io->length);
    e->copies_tail = g1 != g0 &&
                     group_needs_copy_up(v, g1, group_len(v, g1), io->offset, io->length);
    e->needs_copy_up = e->copies_head || e->copies_tail;
}

static void copy_up_read_done(struct bdev_io *cio, int status)
{
    struct vhd_bdev *v = cio->cb_arg;
    struct eng_io *e = v->excl_owner;
    struct bdev_io *io;
    uint64_t g0;
    uint64_t g1;
    uint64_t mid_from;
    uint64_t mid_to;
    int n = 0;

    if (status < 0 && v->cow_status == 0)
        v->cow_status = status;
    if (--v->cow_pending > 0)
        return;
    io = e->io;
    if (v->cow_status < 0) {
        e->status = v->cow_status;
        e->part_count = 0;
        maybe_finish(e);
        return;
    }
    g0 = HV_ALIGN_DOWN(io->offset, GROUP_BYTES);
    g1 = HV_ALIGN_DOWN(io->offset + io->length - 1, GROUP_BYTES);
    /* Merge what the request writes into the groups read back. */
    for (int k = 0; k < 2; k++) {
        uint64_t g = k ? g1 : g0;
        uint64_t from;
        uint64_t to;
        if (!(k ? e->copies_tail : e->copies_head))
            continue;
        from = HV_MAX(io->offset, g);
        to = HV_MIN(io->offset + io->length, g + group_len(v, g));
        if (io->type == BDEV_IO_WRITE)
            hv_iov_to_buf(io->iov, io->iovcnt, from - io->offset, v->cow_buf[k] + (from - g),
                          to - from);
        else
            memset(v->cow_buf[k] + (from - g), 0, to - from);
    }
    if (e->copies_head)
        e->parts[n++] = (struct part){ PART_WRITE, g0, group_len(v, g0), &v->cow_iov[0], 1, 0 };
    mid_from = e->copies_head ? g0 + group_len(v, g0) : io->offset;
    mid_to = e->copies_tail ? g1 : io->offset + io->length;
    if (mid_to > mid_from)
        e->parts[n++] = (struct part){ io->type == BDEV_IO_WRITE ? PART_WRITE : PART_ZEROES,
                                       mid_from, mid_to - mid_from, io->iov, io->iovcnt,
                                       mid_from - io->offset };
    if (e->copies_tail)
        e->parts[n++] = (struct part){ PART_WRITE, g1, group_len(v, g1), &v->cow_iov[1], 1, 0 };
    e->part_count = n;
    e->part_idx = 0;
    e->cursor = 0;
    advance(e);
}

static void init_io(struct vhd_bdev *v, struct eng_io *e, struct bdev_io *io);

static void start_copy_up(struct eng_io *e)
{
    struct vhd_bdev *v = e->v;
    struct bdev_io *io = e->io;
    uint64_t groups[2] = { HV_ALIGN_DOWN(io->offset, GROUP_BYTES),
                           HV_ALIGN_DOWN(io->offset + io->length - 1, GROUP_BYTES) };
    bool wanted[2] = { e->copies_head, e->copies_tail };

    v->cow_status = 0;
    v->cow_pending = (int)wanted[0] + (int)wanted[1];
    for (int k = 0; k < 2; k++) {
        struct bdev_io *cio = v->cow_io[k];
        struct eng_io *ce = bdev_io_ctx(cio);
        if (!wanted[k])
            continue;
        memset(cio, 0, sizeof(*cio));
        cio->type = BDEV_IO_READ;
        cio->offset = groups[k];
        cio->length = group_len(v, groups[k]);
        v->cow_iov[k].iov_base = v->cow_buf[k];
        v->cow_iov[k].iov_len = cio->length;
        cio->iov = &v->cow_iov[k];
        cio->iovcnt = 1;
        cio->done = copy_up_read_done;
        cio->cb_arg = v;
        init_io(v, ce, cio);
        ce->is_internal = true;
        advance(ce);
    }
}

/* Accounting of a write admitted through the gate. */
static void gate_admit(struct eng_io *e)
{
    struct vhd_bdev *v = e->v;
    e->is_gated = true;
    v->writes_active++;
    if (e->needs_copy_up)
        v->excl_owner = e;
}

static void gate_start(struct eng_io *e)
{
    if (e->needs_copy_up)
        start_copy_up(e);
    else
        advance(e);
}

static void deferred_gate_start(void *arg)
{
    gate_start(arg);
}

static void gate_pump(struct vhd_bdev *v)
{
    while (v->excl_head && !v->excl_owner) {
        struct eng_io *e = v->excl_head;
        if (e->needs_copy_up && v->writes_active > 0)
            break;
        v->excl_head = e->next;
        if (!v->excl_head)
            v->excl_tail = NULL;
        gate_admit(e);
        hv_reactor_defer(v->bd.reactor, &e->deferred, deferred_gate_start, e);
    }
}

static void gate_release(struct eng_io *e)
{
    struct vhd_bdev *v = e->v;
    e->is_gated = false;
    v->writes_active--;
    if (v->excl_owner == e)
        v->excl_owner = NULL;
    gate_pump(v);
}

static void start_write_gate(struct eng_io *e)
{
    struct vhd_bdev *v = e->v;
    if (e->io->type != BDEV_IO_DISCARD)
        plan_copy_up(e);
    if (v->excl_owner || v->excl_head || (e->needs_copy_up && v->writes_active > 0)) {
        e->next = NULL;
        if (v->excl_tail)
            v->excl_tail->next = e;
        else
            v->excl_head = e;
        v->excl_tail = e;
        return;
    }
    gate_admit(e);
    gate_start(e);
}

/* ---------------------------------------------------------------- submit */

static void start_io(struct eng_io *e)
{
    struct vhd_bdev *v = e->v;
    struct bdev_io *io = e->io;

    switch (io->type) {
    case BDEV_IO_FLUSH:
        if (!v->is_writable) {
            finish(e);
            return;
        }
        e->next = v->flush_next;
        v->flush_next = e;
        flush_kick(v);
        return;
    case BDEV_IO_BLOCK_STATUS:
        block_status(v, io);
        finish(e);
        return;
    case BDEV_IO_WRITE:
    case BDEV_IO_WRITE_ZEROES:
    case BDEV_IO_DISCARD:
        if (top(v)->uses_bitmaps) {
            start_write_gate(e);
            return;
        }
        advance(e);
        return;
    default:
        advance(e);
        return;
    }
}

static void init_io(struct vhd_bdev *v, struct eng_io *e, struct bdev_io *io)
{
    static const enum part_kind kinds[] = {
        [BDEV_IO_READ] = PART_READ,
        [BDEV_IO_WRITE] = PART_WRITE,
        [BDEV_IO_FLUSH] = PART_READ,
        [BDEV_IO_DISCARD] = PART_DISCARD,
        [BDEV_IO_WRITE_ZEROES] = PART_ZEROES,
        [BDEV_IO_BLOCK_STATUS] = PART_READ,
    };
    e->io = io;
    e->v = v;
    e->parts[0] = (struct part){ kinds[io->type], io->offset, io->length, io->iov, io->iovcnt, 0 };
    e->part_count = io->type == BDEV_IO_FLUSH || io->type == BDEV_IO_BLOCK_STATUS ? 0 : 1;
    e->part_idx = 0;
    e->cursor = 0;
    e->pending = 0;
    e->status = 0;
    e->is_parked = false;
    e->has_dirtied_metadata = false;
    e->is_in_submit = false;
    e->is_gated = false;
    e->needs_copy_up = false;
    e->copies_head = false;
    e->copies_tail = false;
    e->is_internal = false;
    e->next = NULL;
    for (int i = 0; i < SUBS_PER_IO; i++)
        e->subs[i].is_busy = false;
}

static int vhd_submit(struct bdev *bd, struct bdev_io *io)
{
    struct vhd_bdev *v = vhd_of(bd);
    struct eng_io *e = bdev_io_ctx(io);

    switch (io->type) {
    case BDEV_IO_READ:
    case BDEV_IO_BLOCK_STATUS:
    case BDEV_IO_FLUSH:
        break;
    case BDEV_IO_WRITE:
    case BDEV_IO_WRITE_ZEROES:
    case BDEV_IO_DISCARD:
        if (!v->is_writable)
            return -EROFS;
        break;
    default:
        return -EOPNOTSUPP;
    }
    init_io(v, e, io);
    if (v->active >= v->queue_depth) {
        if (v->waitq_tail)
            v->waitq_tail->next = e;
        else
            v->waitq_head = e;
        v->waitq_tail = e;
        return 0;
    }
    v->active++;
    e->is_in_submit = true;
    start_io(e);
    e->is_in_submit = false;
    return 0;
}

/* ------------------------------------------------------------ open/close */

static void layer_free(struct layer *l)
{
    if (!l)
        return;
    if (l->bitmaps)
        munmap(l->bitmaps, l->bitmaps_len);
    if (l->fd_buffered >= 0 && l->fd_buffered != l->fd)
        close(l->fd_buffered);
    if (l->fd >= 0)
        close(l->fd);
    vhd_meta_free(&l->meta);
    free(l);
}

static void vhd_free(struct vhd_bdev *v)
{
    ext_thread_stop(v);
    if (v->aio)
        hv_aio_put(v->aio);
    for (int i = 0; i < v->depth; i++)
        layer_free(v->layers[i]);
    if (v->staging)
        munmap(v->staging, v->staging_len);
    free(v->bat_disk);
    free(v->bat_dirty);
    free(v->bat_flushing);
    free(v->blk);
    free(v->writes_inflight);
    free(v->dirty);
    free(v->flushing);
    free(v->free_slots);
    for (int k = 0; k < 2; k++) {
        free(v->cow_io[k]);
        free(v->cow_buf[k]);
    }
    free(v->zero_buf);
    free(v->ones_buf);
    free(v->footer_buf);
    free(v);
}

static int run_flush_sync(struct vhd_bdev *v)
{
    return bdev_request_sync(&v->bd, BDEV_IO_FLUSH, 0, 0, 0);
}

static int close_sync(struct vhd_bdev *v)
{
    int seq = observe_submit(v, true, 0, NULL, 0);
    int ret = fdatasync(top(v)->fd) < 0 ? -errno : 0;
    observe_complete(v, seq, ret);
    return ret;
}

static int close_write(struct vhd_bdev *v, const void *buf, size_t len, uint64_t off)
{
    struct iovec iov = { (void *)buf, len };
    int seq = observe_submit(v, false, off, &iov, 1);
    int ret = hv_pwrite_full(top(v)->fd_buffered, buf, len, off);
    observe_complete(v, seq, ret < 0 ? ret : (long)len);
    return ret;
}

static int close_write_bat(struct vhd_bdev *v)
{
    struct layer *t = top(v);
    for (uint32_t c = 0; c < v->bat_chunks; c++) {
        uint64_t from = (uint64_t)c * PREFIX_ALIGN;
        uint32_t end = c + 1;
        int ret;
        if (!v->bat_dirty[c])
            continue;
        while (end < v->bat_chunks && v->bat_dirty[end])
            end++;          /* a run of dirty chunks is one write */
        ret = close_write(v, v->bat_disk + from,
                          HV_MIN((uint64_t)end * PREFIX_ALIGN, v->bat_write_bytes) - from,
                          t->meta.header.table_offset + from);
        if (ret < 0)
            return ret;
        memset(v->bat_dirty + c, 0, end - c);
        c = end - 1;
    }
    return 0;
}

struct move {
    uint32_t block;
    uint64_t from;
    struct free_slot to;
};

/*
 * Fill holes that discards left with blocks from the end of the file, so
 * that the trim below can give the space back. Per batch: copy each block
 * into its hole, fdatasync, point the BAT at the copies, fdatasync. A crash
 * before the BAT is durable leaves the originals in use and the copies
 * unreferenced; after, the originals are unreferenced. Either way nothing
 * is lost, only space leaked until the next close or `vhd compact`.
 */
static int close_relocate(struct vhd_bdev *v)
{
    struct layer *t = top(v);
    uint64_t span = (uint64_t)t->bitmap_bytes + t->block_bytes;
    uint64_t moved = 0;
    uint8_t *buf = NULL;
    struct move moves[16];
    int ret = 0;

    while (v->free_count && moved < CLOSE_RELOCATE_MAX_BYTES) {
        int n = 0;
        while (n < (int)HV_ARRAY_SIZE(moves) && v->free_count) {
            uint32_t lowest = 0;
            uint32_t highest = UINT32_MAX;
            for (uint32_t i = 1; i < v->free_count; i++)
                if (v->free_slots[i].bitmap_at < v->free_slots[lowest].bitmap_at)
                    lowest = i;
            for (uint32_t b = 0; b < t->entries; b++)
                if (t->meta.bat[b] != VHD_BAT_UNALLOCATED &&
                    (highest == UINT32_MAX || t->meta.bat[b] > t->meta.bat[highest]))
                    highest = b;
            if (highest == UINT32_MAX ||
                bitmap_offset(t, highest) <= v->free_slots[lowest].bitmap_at)
                break;
            if (!buf && !(buf = malloc(span))) {
                ret = -ENOMEM;
                break;
            }
            moves[n].block = highest;
            moves[n].from = bitmap_offset(t, highest);
            moves[n].to = v->free_slots[lowest];
            v->free_slots[lowest] = v->free_slots[--v->free_count];
            ret = hv_pread_full(t->fd_buffered, buf, span, moves[n].from);
            if (ret == 0)
                ret = close_write(v, buf, span, moves[n].to.bitmap_at);
            if (ret < 0)
                break;
            /* Hide it from the search for the next highest block. */
            t->meta.bat[highest] = (uint32_t)(moves[n].to.bitmap_at / HV_SECTOR_BYTES);
            n++;
        }
        if (ret == 0 && n)
            ret = close_sync(v);
        if (ret < 0) {
            for (int i = 0; i < n; i++)
                t->meta.bat[moves[i].block] = (uint32_t)(moves[i].from / HV_SECTOR_BYTES);
            break;
        }
        if (n == 0)
            break;
        for (int i = 0; i < n; i++) {
            set_bat(v, moves[i].block, (uint32_t)(moves[i].to.bitmap_at / HV_SECTOR_BYTES));
            v->blk[moves[i].block] = moves[i].to.blk_flags;
            moved += span;
        }
        ret = close_write_bat(v);
        if (ret == 0)
            ret = close_sync(v);
        if (ret < 0)
            break;
    }
    free(buf);
    return ret;
}

struct extent {
    uint64_t start;
    uint64_t end;
};

static int extent_cmp(const void *a, const void *b)
{
    const struct extent *x = a;
    const struct extent *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/*
 * Metadata may lie after blocks (a BAT that an online resize moved), and
 * the file is never cut before it: what lies between the last block below
 * it and it stays in the file. Pages there, or anywhere, that nothing owns
 * (the old places of blocks close_relocate moved, the page before the
 * bitmap of a discarded block, which a punch of the block only zeroes) are
 * punched, so that they cost nothing and `vhd check` does not count them
 * as leaked. Runs once the BAT is durable (the final flush round, then
 * close_relocate's syncs): no durable entry points into them.
 */
static int close_punch_gaps(struct vhd_bdev *v)
{
    struct layer *t = top(v);
    const struct vhd_header *h = &t->meta.header;
    size_t cap = (size_t)t->entries + 3 + VHD_LOCATOR_COUNT;
    struct extent *r = malloc(cap * sizeof(*r));
    uint64_t covered = 0;
    size_t n = 0;

    if (!r)
        return -ENOMEM;
    r[n++] = (struct extent){ 0, VHD_FOOTER_BYTES };
    r[n++] = (struct extent){ t->meta.footer.data_offset,
                              t->meta.footer.data_offset + VHD_HEADER_BYTES };
    r[n++] = (struct extent){ h->table_offset, h->table_offset + v->bat_write_bytes };
    for (int i = 0; i < VHD_LOCATOR_COUNT && t->type == VHD_TYPE_DIFFERENCING; i++) {
        const struct vhd_locator *l = &h->locators[i];
        if (l->code != VHD_PLAT_NONE)
            r[n++] = (struct extent){ l->data_offset,
                                      l->data_offset + vhd_locator_space_bytes(l) };
    }
    for (uint32_t b = 0; b < t->entries; b++)
        if (t->meta.bat[b] != VHD_BAT_UNALLOCATED)
            r[n++] = (struct extent){ bitmap_offset(t, b),
                                      bitmap_offset(t, b) + t->bitmap_bytes + t->block_bytes };
    qsort(r, n, sizeof(*r), extent_cmp);
    for (size_t i = 0; i < n; i++) {
        uint64_t from = HV_ALIGN_UP(covered, PREFIX_ALIGN);
        uint64_t to = HV_ALIGN_DOWN(r[i].start, PREFIX_ALIGN);
        if (to > from) {
            if (punch(t, from, to - from) < 0) {
                int ret = -errno;
                free(r);
                return ret;
            }
            observe_punch(v, from, to - from);
        }
        covered = HV_MAX(covered, r[i].end);
    }
    free(r);
    return 0;
}

/*
 * Clean close: metadata durable (a flush round), holes refilled, then the
 * file is cut after its last block with a valid footer at every instant: the
 * footer is first written where the file will end (inside unused space,
 * while the old footer still ends the file) and made durable, then the file
 * is cut right after it.
 */
static int close_trim(struct vhd_bdev *v)
{
    struct layer *t = top(v);
    uint64_t end = vhd_metadata_end(&t->meta.footer, &t->meta.header);
    struct vhd_footer f = t->meta.footer;
    int ret;

    for (uint32_t b = 0; b < t->entries; b++)
        if (t->meta.bat[b] != VHD_BAT_UNALLOCATED)
            end = HV_MAX(end, bitmap_offset(t, b) + t->bitmap_bytes + t->block_bytes);
    if (end >= v->file_end)
        return 0;
    vhd_footer_encode(&f, v->footer_buf);
    ret = close_write(v, v->footer_buf, VHD_FOOTER_BYTES, end);
    if (ret == 0)
        ret = close_sync(v);
    if (ret == 0 && ftruncate(t->fd, (off_t)(end + VHD_FOOTER_BYTES)) < 0)
        ret = -errno;
    if (ret == 0 && fdatasync(t->fd) < 0)
        ret = -errno;
    return ret;
}

static int vhd_close(struct bdev *bd)
{
    struct vhd_bdev *v = vhd_of(bd);
    struct layer *t = top(v);
    int ret = 0;

    if (v->is_writable) {
        /* A growth may run with no request waiting for it (started early,
         * before the reserve ran out): let it finish first. */
        while (v->is_extending)
            hv_reactor_run_once(v->bd.reactor, 100);
        ret = run_flush_sync(v);
        if (ret < 0) {
            hv_error("%s: final flush failed: %s", t->path, strerror(-ret));
        } else if (v->bat_disk) {
            /* Best effort: the image is complete and consistent already. */
            int r = close_relocate(v);
            if (r == 0)
                r = close_punch_gaps(v);
            if (r == 0)
                r = close_trim(v);
            if (r < 0)
                hv_warn("%s: giving back unused space at close: %s (the image is intact; "
                        "vhd repair reclaims the space)", t->path, strerror(-r));
        }
    }
    vhd_free(v);
    return ret;
}

/* Footer `f` (encoded into footer_buf) at `off`, through the page cache. */
static int resize_write_footer(struct vhd_bdev *v, struct vhd_footer *f, uint64_t off)
{
    vhd_footer_encode(f, v->footer_buf);
    return close_write(v, v->footer_buf, VHD_FOOTER_BYTES, off);
}

static void *grow_array(void *p, size_t old_bytes, size_t new_bytes)
{
    uint8_t *q = realloc(p, new_bytes);
    if (q && new_bytes > old_bytes)
        memset(q + old_bytes, 0, new_bytes - old_bytes);
    return q;
}

static int grow_map(uint8_t **p, size_t *len, size_t want)
{
    void *q;
    if (want <= *len)
        return 0;
    q = mremap(*p, *len, want, MREMAP_MAYMOVE);
    if (q == MAP_FAILED)
        return -ENOMEM;
    *p = q;
    *len = want;
    return 0;
}

/* Room for `entries` blocks in the per-block state of the top. Only
 * capacity: the engine goes on using t->entries until the caller commits,
 * so a failure here leaves everything as it was. */
static int grow_block_state(struct vhd_bdev *v, uint32_t entries)
{
    struct layer *t = top(v);
    size_t old = t->entries;
    size_t n = (size_t)entries + 1;
    void *p;

    if (!(p = realloc(t->meta.bat, (size_t)entries * 4)))
        return -ENOMEM;
    t->meta.bat = p;
    for (size_t b = old; b < entries; b++)
        t->meta.bat[b] = VHD_BAT_UNALLOCATED;
    if (!(p = grow_array(v->blk, old + 1, n)))
        return -ENOMEM;
    v->blk = p;
    if (!(p = grow_array(v->writes_inflight, (old + 1) * sizeof(uint16_t), n * sizeof(uint16_t))))
        return -ENOMEM;
    v->writes_inflight = p;
    if (!(p = grow_array(v->dirty, (old + 1) * sizeof(uint32_t), n * sizeof(uint32_t))))
        return -ENOMEM;
    v->dirty = p;
    if (!(p = grow_array(v->flushing, (old + 1) * sizeof(uint32_t), n * sizeof(uint32_t))))
        return -ENOMEM;
    v->flushing = p;
    if (t->uses_bitmaps &&
        (grow_map(&t->bitmaps, &t->bitmaps_len, (size_t)entries * t->bitmap_bytes) < 0 ||
         grow_map(&v->staging, &v->staging_len, (size_t)entries * t->bitmap_bytes) < 0))
        return -ENOMEM;
    return 0;
}

/* The dynamic header with the BAT at `table_offset` of `entries` entries:
 * both fields, and the checksum, lie in its first sector, so a torn write
 * cannot mix the old table with the new count. */
static int write_header(struct vhd_bdev *v, uint64_t table_offset, uint32_t entries)
{
    struct layer *t = top(v);
    struct vhd_header h = t->meta.header;
    uint8_t hdr[VHD_HEADER_BYTES];

    h.table_offset = table_offset;
    h.max_table_entries = entries;
    vhd_header_encode(&h, hdr);
    return close_write(v, hdr, sizeof(hdr), t->meta.footer.data_offset);
}

/* Use `entries` of the BAT's sectors (the unused ones read 0xFFFFFFFF on
 * disk already): grow the per-block state, then write the dynamic header
 * with the new max_table_entries (made durable by the caller). */
static int grow_entries(struct vhd_bdev *v, uint32_t entries)
{
    struct layer *t = top(v);
    int ret = grow_block_state(v, entries);

    if (ret == 0)
        ret = write_header(v, t->meta.header.table_offset, entries);
    if (ret == 0) {
        t->entries = entries;
        t->meta.header.max_table_entries = entries;
    }
    return ret;
}

/*
 * A BAT of `entries` entries where the old one has no room: written whole
 * after everything the file holds, at a 4 KiB boundary and padded to 4 KiB
 * (the engine's own layout: the padding is the BAT's, written back in whole
 * pages), then the header switched to it. The order, with the image sound
 * at the old size at every instant:
 *  1. if the new BAT reaches past the durable footer, the file grows as
 *     extend_start grows it: the old footer again at the new end, durable
 *     (the space before it belongs to nothing: a hole, or leaked space
 *     once part of the new BAT is there, if a crash stops the resize);
 *  2. the new BAT (every entry as the old one says, the new ones
 *     unallocated), durable: still unreferenced;
 *  3. the header's table offset and entry count (one sector), durable: the
 *     switch. Both tables say the same, so a crash on either side of it
 *     reads the same blocks;
 *  4. the old table's whole pages are punched: nothing points at them, and
 *     a hole is not a leak (`vhd check` counts stored pages only), which is
 *     what offline `vhd resize` leaves too. Less than a page at either edge
 *     keeps stale entries that nothing reads.
 * Blocks stay where they are: no data moves, only the table. The caller
 * made every bitmap and BAT entry durable first and holds all requests.
 */
static int relocate_bat(struct vhd_bdev *v, uint32_t entries, struct hv_err *err)
{
    struct layer *t = top(v);
    uint64_t new_bytes = vhd_bat_bytes(entries);
    uint64_t area = HV_ALIGN_UP(new_bytes, PREFIX_ALIGN);
    uint64_t bat_at = HV_ALIGN_UP(v->next_alloc, PREFIX_ALIGN);
    uint64_t old_at = t->meta.header.table_offset;
    uint64_t old_area = v->bat_write_bytes;
    uint32_t chunks = (uint32_t)(area / PREFIX_ALIGN);
    uint8_t *raw = hv_alloc_aligned(area);
    uint8_t *dirty = calloc(chunks + 1, 1);
    uint8_t *flushing = calloc(chunks + 1, 1);
    int ret = 0;

    if (!raw || !dirty || !flushing || grow_block_state(v, entries) < 0) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory for a BAT of %" PRIu32 " entries",
                         t->path, entries);
        goto out;
    }
    memset(raw, 0xFF, area);
    memcpy(raw, v->bat_disk, (size_t)t->entries * 4);

    if (bat_at + area > v->file_end) {
        uint64_t new_end = bat_at + area;
        struct vhd_footer f = t->meta.footer;
        if (fallocate(t->fd, FALLOC_FL_KEEP_SIZE, (off_t)v->file_end,
                      (off_t)(new_end + VHD_FOOTER_BYTES - v->file_end)) < 0)
            hv_debug("%s: fallocate: %s", t->path, strerror(errno));
        ret = resize_write_footer(v, &f, new_end);
        if (ret == 0)
            ret = close_sync(v);
        if (ret < 0) {
            hv_err_set(err, ret, "%s: growing the file for the new BAT: %s", t->path,
                       strerror(-ret));
            goto out;
        }
        /* The old footer now lies in unused space; outside the new table
         * it is zeroed with it (no stray footer inside the file). */
        if (v->file_end < bat_at)
            ret = close_write(v, v->zero_buf, VHD_FOOTER_BYTES, v->file_end);
        v->file_end = new_end;
        t->meta.footer_offset = new_end;
        t->meta.file_bytes = new_end + VHD_FOOTER_BYTES;
    }
    if (ret == 0)
        ret = close_write(v, raw, area, bat_at);
    if (ret == 0)
        ret = close_sync(v);
    if (ret == 0)
        op_kill_point("online-resize-bat");
    if (ret == 0)
        ret = write_header(v, bat_at, entries);
    if (ret < 0) {
        hv_err_set(err, ret, "%s: writing the new BAT: %s", t->path, strerror(-ret));
        goto out;
    }
    /* The header is written: from now on the BAT is written back to its new
     * place, even if the sync below fails (the header then reaches the disk
     * with a later flush round's sync, before any round completes). */
    free(v->bat_disk);
    free(v->bat_dirty);
    free(v->bat_flushing);
    v->bat_disk = raw;
    v->bat_dirty = dirty;
    v->bat_flushing = flushing;
    raw = dirty = flushing = NULL;
    v->bat_bytes = new_bytes;
    v->bat_write_bytes = area;
    v->bat_chunks = chunks;
    v->next_alloc = HV_MAX(v->next_alloc, bat_at + area);
    t->meta.header.table_offset = bat_at;
    t->meta.header.max_table_entries = entries;
    t->entries = entries;
    ret = close_sync(v);
    if (ret < 0) {
        hv_err_set(err, ret, "%s: making the new BAT's header durable: %s", t->path,
                   strerror(-ret));
        goto out;
    }
    {
        uint64_t from = HV_ALIGN_UP(old_at, PREFIX_ALIGN);
        uint64_t to = HV_ALIGN_DOWN(old_at + old_area, PREFIX_ALIGN);
        if (to > from) {
            if (punch(t, from, to - from) == 0)
                observe_punch(v, from, to - from);
            else
                hv_debug("%s: punching the old BAT: %s", t->path, strerror(errno));
        }
    }
out:
    free(raw);
    free(dirty);
    free(flushing);
    return ret;
}

/*
 * Online growth. The caller (hv_vm_resize) holds new requests and drains
 * those in flight; a growth of the file that runs with no request waiting
 * for it is let finish first. Nothing moves but metadata:
 *  - fixed (the order of vhd/resize.c): the space up to the new end is
 *    reserved; the old footer is written again at the new end, durable (the
 *    file still says the old size, with unused bytes before its footer);
 *    the old footer at the old end is zeroed, durable (invisible at the old
 *    size); then the new footer at the new end, durable: the switch. At no
 *    instant does the file end in anything but a valid footer, and the new
 *    space reads zeroes from the moment the new size is visible.
 *  - dynamic/differencing: every bitmap and BAT entry is made durable (a
 *    flush round), then the BAT is made to cover the new size: unused
 *    entries in its last sector are taken (the header's max_table_entries
 *    grows, durable), or, when they are not enough, a larger BAT is written
 *    after the last block and the header switched to it (relocate_bat). A
 *    BAT with more entries than the size needs is valid, so either is sound
 *    at the old size. Then the footer's size and geometry change: the
 *    footer that ends the file (the switch: the engine and libvhdi read
 *    that one), then the copy at offset 0, each made durable. A crash in
 *    between leaves the copy saying the old size: `vhd check` reports an
 *    interrupted resize, `vhd repair` copies the footer. This is the order
 *    of offline `vhd resize`, so both leave the same images.
 * Shrinking is refused: blocks past the new end would have to be freed
 * under a running guest; offline `vhd resize` does it.
 */
static int vhd_bdev_resize(struct bdev *bd, uint64_t size_bytes, struct hv_err *err)
{
    struct vhd_bdev *v = vhd_of(bd);
    struct layer *t = top(v);
    struct vhd_footer f;
    int ret;

    if (!v->is_writable)
        return hv_err_set(err, -EROFS, "%s: opened read-only, cannot resize", t->path);
    if (size_bytes % HV_SECTOR_BYTES || size_bytes == 0)
        return hv_err_set(err, -EINVAL, "%s: new size %" PRIu64 " is not a positive multiple "
                          "of 512 bytes", t->path, size_bytes);
    if (size_bytes > VHD_MAX_SIZE_BYTES)
        return hv_err_set(err, -EINVAL, "%s: new size %" PRIu64 " exceeds VHD's 2040 GiB",
                          t->path, size_bytes);
    if (size_bytes < t->size_bytes)
        return hv_err_set(err, -EINVAL, "%s: shrinking from %" PRIu64 " to %" PRIu64 " bytes "
                          "is refused online (data past the new end would be lost); detach "
                          "the disk and run `vhd resize` offline", t->path, t->size_bytes,
                          size_bytes);
    /* A growth started before the reserve ran out may still run with no
     * request waiting for it. */
    while (v->is_extending && !v->active && !v->waitq_head)
        hv_reactor_run_once(v->bd.reactor, 100);
    if (v->active || v->waitq_head || v->flush_phase || v->flush_next || v->is_extending)
        return hv_err_set(err, -EBUSY, "%s: requests in flight; resize needs the disk idle",
                          t->path);
    if (size_bytes == t->size_bytes) {
        /* A resize interrupted between the footer and its copy (the copy
         * still says the old size; `vhd check` reports it) is finished by
         * asking for the size again: the copy becomes the footer's, as
         * `vhd repair` would make it. */
        if (t->type == VHD_TYPE_FIXED || t->meta.is_footer_copy_ok)
            return 0;
        f = t->meta.footer;
        ret = resize_write_footer(v, &f, 0);
        if (ret == 0)
            ret = close_sync(v);
        if (ret < 0)
            return hv_err_set(err, ret, "%s: rewriting the footer copy: %s", t->path,
                              strerror(-ret));
        t->meta.footer_copy = f;
        t->meta.is_footer_copy_ok = true;
        return 0;
    }
    vhd_footer_resized(&f, &t->meta.footer, size_bytes);

    if (t->type == VHD_TYPE_FIXED) {
        uint64_t old_end = t->size_bytes;
        /* KEEP_SIZE: a larger file size must not reach the disk before a
         * footer ends it (the journal may commit it any time). */
        if (fallocate(t->fd, FALLOC_FL_KEEP_SIZE, (off_t)old_end + VHD_FOOTER_BYTES,
                      (off_t)(size_bytes - old_end)) < 0)
            hv_debug("%s: fallocate: %s", t->path, strerror(errno));
        struct vhd_footer old_footer = t->meta.footer;
        ret = resize_write_footer(v, &old_footer, size_bytes);
        if (ret == 0)
            ret = close_sync(v);
        if (ret == 0)
            ret = close_write(v, v->zero_buf, VHD_FOOTER_BYTES, old_end);
        if (ret == 0)
            ret = close_sync(v);
        if (ret == 0)
            ret = resize_write_footer(v, &f, size_bytes);
        if (ret == 0)
            ret = close_sync(v);
        if (ret < 0)
            return hv_err_set(err, ret, "%s: growing to %" PRIu64 " bytes: %s", t->path,
                              size_bytes, strerror(-ret));
        t->meta.footer_offset = size_bytes;
        t->meta.file_bytes = size_bytes + VHD_FOOTER_BYTES;
    } else {
        uint32_t entries = (uint32_t)HV_DIV_ROUND_UP(size_bytes, t->block_bytes);
        ret = run_flush_sync(v);
        if (ret < 0)
            return hv_err_set(err, ret, "%s: flushing before the resize: %s", t->path,
                              strerror(-ret));
        if (entries > v->bat_bytes / 4) {
            ret = relocate_bat(v, entries, err);
            if (ret < 0)
                return ret;
            op_kill_point("online-resize-header");
        } else if (entries > t->entries) {
            ret = grow_entries(v, entries);
            if (ret == 0)
                ret = close_sync(v);
        }
        if (ret == 0)
            ret = resize_write_footer(v, &f, v->file_end);
        if (ret == 0)
            ret = close_sync(v);
        if (ret == 0)
            op_kill_point("online-resize-footer");
        if (ret == 0)
            ret = resize_write_footer(v, &f, 0);
        if (ret == 0)
            ret = close_sync(v);
        if (ret < 0)
            return hv_err_set(err, ret, "%s: growing to %" PRIu64 " bytes: %s", t->path,
                              size_bytes, strerror(-ret));
        t->meta.footer_copy = f;
        t->meta.is_footer_copy_ok = true;
    }
    t->meta.footer = f;
    t->size_bytes = size_bytes;
    bd->size_bytes = size_bytes;
    return 0;
}

static void vhd_describe(struct bdev *bd, json_t *obj)
{
    struct vhd_bdev *v = vhd_of(bd);
    json_t *chain = json_array();
    json_object_set_new(obj, "format", json_string("vhd"));
    json_object_set_new(obj, "type", json_string(vhd_type_name(top(v)->type)));
    if (top(v)->type != VHD_TYPE_FIXED)
        json_object_set_new(obj, "block-size", json_integer(top(v)->block_bytes));
    for (int i = 0; i < v->depth; i++)
        json_array_append_new(chain, json_string(v->layers[i]->path));
    json_object_set_new(obj, "chain", chain);
}

static const struct bdev_ops vhd_ops = {
    .name = "vhd",
    .submit = vhd_submit,
    .close = vhd_close,
    .resize = vhd_bdev_resize,
    .describe = vhd_describe,
};

bool vhd_is_vhd_bdev(const struct bdev *bd)
{
    return bd && bd->ops == &vhd_ops;
}

int vhd_chain_depth(const struct bdev *bd)
{
    if (!vhd_is_vhd_bdev(bd))
        return -EINVAL;
    return hv_container_of(bd, struct vhd_bdev, bd)->depth;
}

const char *vhd_chain_path(const struct bdev *bd, int layer)
{
    const struct vhd_bdev *v;
    if (!vhd_is_vhd_bdev(bd))
        return NULL;
    v = hv_container_of(bd, struct vhd_bdev, bd);
    if (layer < 0 || layer >= v->depth)
        return NULL;
    return v->layers[layer]->path;
}

static int lock_file(int fd, const char *path, bool is_exclusive, struct hv_err *err)
{
    struct flock fl = { .l_type = (short)(is_exclusive ? F_WRLCK : F_RDLCK),
                        .l_whence = SEEK_SET };
    if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
        return 0;
    if (errno == EAGAIN || errno == EACCES)
        return hv_err_set(err, -EBUSY, "%s: in use: another open of this image %s", path,
                          is_exclusive ? "holds a lock on it (open read-only, or close the "
                                         "other user)"
                                       : "has it open for writing");
    return hv_err_errno(err, path, "lock");
}

static void dio_alignment(struct layer *l)
{
    struct statx sx;
    l->read_align = 4096;
    l->mem_align = 4096;
    if (statx(l->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
        (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align) {
        l->read_align = sx.stx_dio_offset_align;
        l->mem_align = HV_MAX(sx.stx_dio_mem_align, 512u);
    }
    /* ext4 and xfs serialise direct writes that are not whole file-system
     * blocks; route those through the page cache instead. */
    l->write_align = HV_MAX(l->read_align, 4096u);
}

static int layer_open(const char *path, bool is_writable, bool is_top, bool no_direct,
                      struct layer **out, struct hv_err *err)
{
    struct layer *l = calloc(1, sizeof(*l));
    int flags = (is_writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;
    struct stat st;
    int ret;

    if (!l)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", path);
    l->fd = -1;
    l->fd_buffered = -1;
    snprintf(l->path, sizeof(l->path), "%s", path);
    l->fd_buffered = open(path, flags);
    if (l->fd_buffered < 0) {
        ret = hv_err_errno(err, path, "open");
        goto fail;
    }
    if (!no_direct) {
        l->fd = open(path, flags | O_DIRECT);
        if (l->fd < 0 && errno != EINVAL) {
            ret = hv_err_errno(err, path, "open");
            goto fail;
        }
    }
    if (l->fd >= 0) {
        l->is_direct = true;
    } else {
        l->fd = l->fd_buffered;
        if (!no_direct)
            hv_debug("%s: O_DIRECT not supported here, using buffered I/O", path);
    }
    ret = lock_file(l->fd, path, is_top && is_writable, err);
    if (ret < 0)
        goto fail;
    if (fstat(l->fd, &st) < 0) {
        ret = hv_err_errno(err, path, "stat");
        goto fail;
    }
    l->dev = st.st_dev;
    l->ino = st.st_ino;
    dio_alignment(l);
    ret = vhd_meta_load(l->fd_buffered, path, true, &l->meta, err);
    if (ret < 0)
        goto fail;
    l->type = (enum vhd_type)l->meta.footer.disk_type;
    l->size_bytes = l->meta.footer.current_size;
    if (l->meta.has_header) {
        l->block_bytes = l->meta.header.block_bytes;
        l->bitmap_bytes = vhd_bitmap_bytes(l->block_bytes);
        l->entries = l->meta.header.max_table_entries;
    }
    l->uses_bitmaps = l->type == VHD_TYPE_DIFFERENCING;
    *out = l;
    return 0;
fail:
    layer_free(l);
    return ret;
}

/* Differencing layers: every allocated block's bitmap, into memory that
 * costs RAM only where a block is allocated. */
static int load_bitmaps(struct layer *l, bool is_top, struct hv_err *err)
{
    if (!l->uses_bitmaps)
        return 0;
    l->bitmaps_len = HV_MAX((size_t)l->entries * l->bitmap_bytes, (size_t)4096);
    l->bitmaps = mmap(NULL, l->bitmaps_len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (l->bitmaps == MAP_FAILED) {
        l->bitmaps = NULL;
        return hv_err_set(err, -ENOMEM, "%s: no memory for the sector bitmaps", l->path);
    }
    (void)is_top;
    for (uint32_t b = 0; b < l->entries; b++) {
        int ret;
        if (l->meta.bat[b] == VHD_BAT_UNALLOCATED)
            continue;
        ret = hv_pread_full(l->fd_buffered, bitmap_of(l, b), l->bitmap_bytes,
                            bitmap_offset(l, b));
        if (ret < 0)
            return hv_err_set(err, ret, "%s: reading the bitmap of block %u: %s", l->path, b,
                              strerror(-ret));
    }
    return 0;
}

/* The parent candidates of layer `l` (see vhd_parent_candidates). */
static int parent_candidates(struct layer *l, struct vhd_parent_candidate cands[4])
{
    static const uint32_t codes[3] = { VHD_PLAT_W2RU, VHD_PLAT_W2KU, VHD_PLAT_MACX };
    char text[3][PATH_MAX];
    char name[PATH_MAX];

    for (int i = 0; i < 3; i++)
        if (vhd_meta_locator_path(l->fd_buffered, &l->meta, codes[i], text[i], PATH_MAX) < 0)
            text[i][0] = '\0';
    if (vhd_parent_name_get(&l->meta.header, name, sizeof(name)) < 0)
        name[0] = '\0';
    return vhd_parent_candidates(l->path, text[0], text[1], text[2], name, cands);
}

static int open_parent(struct vhd_bdev *v, struct layer *child, bool no_direct,
                       struct layer **out, struct hv_err *err)
{
    struct vhd_parent_candidate cands[4];
    char mismatch[1024] = "";
    struct hv_err unreadable = { 0 };
    char tried[2048] = "";
    int count = parent_candidates(child, cands);

    for (int i = 0; i < count; i++) {
        struct layer *p = NULL;
        struct hv_err perr = { 0 };
        struct stat st;
        size_t used = strlen(tried);
        int ret;

        snprintf(tried + used, sizeof(tried) - used, "%s%s", used ? ", " : "", cands[i].path);
        if (stat(cands[i].path, &st) < 0)
            continue;
        for (int k = 0; k < v->depth; k++) {
            if (v->layers[k]->dev == st.st_dev && v->layers[k]->ino == st.st_ino)
                return hv_err_set(err, -ELOOP, "%s: parent %s is already in the chain "
                                  "(a loop)", child->path, cands[i].path);
        }
        ret = layer_open(cands[i].path, false, false, no_direct, &p, &perr);
        if (ret < 0) {
            /* A file that is not a usable VHD must not hide a later
             * locator that names the real parent; say what was wrong with
             * it only if no candidate fits. */
            if (ret != -ENOENT && !unreadable.code) {
                unreadable = perr;
                unreadable.code = ret;
                hv_err_prefix(&unreadable, "%s: parent candidate", child->path);
            }
            continue;
        }
        if (memcmp(p->meta.footer.uuid, child->meta.header.parent_uuid, 16) != 0) {
            char want[37];
            char got[37];
            hv_uuid_format(child->meta.header.parent_uuid, want);
            hv_uuid_format(p->meta.footer.uuid, got);
            if (!mismatch[0])
                snprintf(mismatch, sizeof(mismatch), "%s: parent %s has unique id %s, but "
                         "the child records %s", child->path, cands[i].path, got, want);
            layer_free(p);
            continue;
        }
        /* Hyper-V and vhd-util tolerate a changed timestamp (a parent that
         * was only touched, copied or re-footered); the unique id decides. */
        if (p->meta.footer.timestamp != child->meta.header.parent_timestamp)
            hv_debug("%s: parent %s timestamp %u differs from the recorded %u", child->path,
                     cands[i].path, p->meta.footer.timestamp, child->meta.header.parent_timestamp);
        *out = p;
        return 0;
    }
    if (mismatch[0])
        return hv_err_set(err, -EINVAL, "%s", mismatch);
    if (unreadable.code) {
        if (err)
            *err = unreadable;
        return unreadable.code;
    }
    return hv_err_set(err, -ENOENT, "%s: parent not found (tried %s)", child->path,
                      tried[0] ? tried : "no locator or name");
}

struct block_start {
    uint64_t start;
    uint32_t index;
};

static int start_cmp(const void *a, const void *b)
{
    const struct block_start *x = a;
    const struct block_start *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Does [from, to) touch a structure of the top other than its blocks? The
 * BAT counts up to its next 4 KiB boundary (padding the engine may own).
 * Metadata may lie after blocks (a BAT that a resize moved, locators that
 * set-parent moved), so "before the end of the metadata" is not the test. */
static bool overlaps_metadata(const struct layer *t, uint64_t from, uint64_t to)
{
    const struct vhd_header *h = &t->meta.header;
    uint64_t bat_end = HV_ALIGN_UP(h->table_offset + vhd_bat_bytes(h->max_table_entries),
                                   PREFIX_ALIGN);
    if (from < VHD_FOOTER_BYTES)
        return true;
    if (from < t->meta.footer.data_offset + VHD_HEADER_BYTES && t->meta.footer.data_offset < to)
        return true;
    if (from < bat_end && h->table_offset < to)
        return true;
    for (int i = 0; i < VHD_LOCATOR_COUNT && t->type == VHD_TYPE_DIFFERENCING; i++) {
        const struct vhd_locator *l = &h->locators[i];
        if (l->code != VHD_PLAT_NONE && from < l->data_offset + vhd_locator_space_bytes(l) &&
            l->data_offset < to)
            return true;
    }
    return false;
}

/* Writable dynamic/differencing top: BAT write-back state, the reserve, and
 * which blocks own the 4 KiB before their bitmap. */
static int setup_writable(struct vhd_bdev *v, struct hv_err *err)
{
    struct layer *t = top(v);
    uint64_t meta_end = vhd_metadata_end(&t->meta.footer, &t->meta.header);
    uint64_t end = meta_end;
    struct block_start *starts = NULL;
    uint32_t n = 0;

    v->bat_bytes = vhd_bat_bytes(t->entries);
    v->bat_chunks = (uint32_t)HV_DIV_ROUND_UP(v->bat_bytes, PREFIX_ALIGN);
    v->bat_disk = hv_alloc_aligned(HV_ALIGN_UP(v->bat_bytes, PREFIX_ALIGN));
    v->bat_dirty = calloc(v->bat_chunks + 1, 1);
    v->bat_flushing = calloc(v->bat_chunks + 1, 1);
    v->blk = calloc(t->entries + 1, 1);
    v->writes_inflight = calloc(t->entries + 1, sizeof(uint16_t));
    v->dirty = calloc(t->entries + 1, sizeof(uint32_t));
    v->flushing = calloc(t->entries + 1, sizeof(uint32_t));
    starts = calloc(t->entries + 1, sizeof(*starts));
    v->free_cap = t->entries + 64;
    v->free_slots = calloc(v->free_cap, sizeof(*v->free_slots));
    if (!v->bat_disk || !v->bat_dirty || !v->bat_flushing || !v->blk || !v->dirty ||
        !v->flushing || !starts || !v->free_slots || !v->writes_inflight) {
        free(starts);
        return hv_err_set(err, -ENOMEM, "%s: out of memory", t->path);
    }
    memset(v->bat_disk, 0xFF, HV_ALIGN_UP(v->bat_bytes, PREFIX_ALIGN));
    vhd_bat_encode(t->meta.bat, t->entries, v->bat_disk);
    if (t->uses_bitmaps) {
        v->staging_len = HV_MAX((size_t)t->entries * t->bitmap_bytes, (size_t)4096);
        v->staging = mmap(NULL, v->staging_len, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (v->staging == MAP_FAILED) {
            v->staging = NULL;
            free(starts);
            return hv_err_set(err, -ENOMEM, "%s: out of memory", t->path);
        }
    }
    v->prefix_bytes = HV_ALIGN_UP((uint64_t)t->bitmap_bytes, PREFIX_ALIGN);
    v->extent_bytes = v->prefix_bytes + t->block_bytes;

    for (uint32_t b = 0; b < t->entries; b++) {
        if (t->meta.bat[b] == VHD_BAT_UNALLOCATED)
            continue;
        starts[n].start = bitmap_offset(t, b);
        starts[n].index = b;
        n++;
    }
    v->allocated = n;
    qsort(starts, n, sizeof(*starts), start_cmp);
    for (uint32_t k = 0; k < n; k++) {
        uint64_t bm = starts[k].start;
        uint64_t pad = v->prefix_bytes - t->bitmap_bytes;
        uint64_t prev_end = k ? starts[k - 1].start + t->bitmap_bytes + t->block_bytes : 0;
        if ((bm + t->bitmap_bytes) % PREFIX_ALIGN == 0 && bm >= pad &&
            !overlaps_metadata(t, bm - pad, bm) && bm - pad >= prev_end)
            v->blk[starts[k].index] |= BLK_PREFIX_OURS;
        end = HV_MAX(end, bm + t->bitmap_bytes + t->block_bytes);
    }
    /* The BAT can be written back in whole aligned 4 KiB pieces when the
     * padding after it (hvstor's own layout) belongs to nothing else. */
    v->bat_write_bytes = v->bat_bytes;
    {
        uint64_t pad_from = t->meta.header.table_offset + v->bat_bytes;
        uint64_t pad_to = t->meta.header.table_offset + HV_ALIGN_UP(v->bat_bytes, PREFIX_ALIGN);
        bool is_free = t->meta.header.table_offset % PREFIX_ALIGN == 0 &&
                       pad_to <= t->meta.footer_offset;
        for (int i = 0; i < VHD_LOCATOR_COUNT && is_free; i++) {
            const struct vhd_locator *l = &t->meta.header.locators[i];
            if (t->type == VHD_TYPE_DIFFERENCING && l->code != VHD_PLAT_NONE &&
                l->data_offset < pad_to && pad_from < l->data_offset + vhd_locator_space_bytes(l))
                is_free = false;
        }
        for (uint32_t k = 0; k < n && is_free; k++)
            if (starts[k].start < pad_to &&
                pad_from < starts[k].start + t->bitmap_bytes + t->block_bytes)
                is_free = false;
        if (is_free)
            v->bat_write_bytes = pad_to - t->meta.header.table_offset;
    }
    /* That padding is then the BAT's: no block may be placed in it. */
    if (v->bat_write_bytes > v->bat_bytes)
        end = HV_MAX(end, t->meta.header.table_offset + v->bat_write_bytes);
    free(starts);
    v->allocated = n;
    v->next_alloc = end;
    v->file_end = t->meta.footer_offset;
    if (v->file_end > v->next_alloc) {
        /* Space between the last block and the footer is a reserve left by
         * an earlier session that did not close cleanly: it may hold data no
         * BAT entry points at. Zero it before handing it out, so that a new
         * block never shows stale bytes. */
        if (punch(t, v->next_alloc, v->file_end - v->next_alloc) < 0 || fsync(t->fd) < 0)
            v->next_alloc = v->file_end + VHD_FOOTER_BYTES;
    }
    return 0;
}

int vhd_open(struct hv_reactor *r, const char *path, const struct vhd_open_options *opt,
             struct bdev **out, struct hv_err *err)
{
    static const struct vhd_open_options defaults = { 0 };
    struct vhd_bdev *v;
    struct layer *t = NULL;
    int ret;

    if (!opt)
        opt = &defaults;
    v = calloc(1, sizeof(*v));
    if (!v)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", path);
    v->ext_efd = -1;
    ret = layer_open(path, !opt->is_read_only, true, opt->no_direct_io, &t, err);
    if (ret < 0)
        goto fail;
    v->layers[v->depth++] = t;
    while (v->layers[v->depth - 1]->type == VHD_TYPE_DIFFERENCING) {
        struct layer *p = NULL;
        if (v->depth >= VHD_MAX_CHAIN_DEPTH) {
            ret = hv_err_set(err, -ELOOP, "%s: chain deeper than %d images", path,
                             VHD_MAX_CHAIN_DEPTH);
            goto fail;
        }
        ret = open_parent(v, v->layers[v->depth - 1], opt->no_direct_io, &p, err);
        if (ret < 0)
            goto fail;
        v->layers[v->depth++] = p;
    }
    for (int i = 0; i < v->depth; i++) {
        ret = load_bitmaps(v->layers[i], i == 0, err);
        if (ret < 0)
            goto fail;
    }

    v->observer = opt->observer;
    v->queue_depth = opt->queue_depth ? opt->queue_depth : 128;
    v->is_writable = !opt->is_read_only;
    v->zero_buf = hv_alloc_aligned(ZERO_BUF_BYTES);
    v->footer_buf = hv_alloc_aligned(PREFIX_ALIGN);
    if (!v->zero_buf || !v->footer_buf) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    memset(v->zero_buf, 0, ZERO_BUF_BYTES);
    memset(v->footer_buf, 0, PREFIX_ALIGN);
    if (v->is_writable && t->type != VHD_TYPE_FIXED) {
        v->ones_buf = hv_alloc_aligned(HV_ALIGN_UP(t->bitmap_bytes, PREFIX_ALIGN));
        if (!v->ones_buf) {
            ret = hv_err_set(err, -ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        memset(v->ones_buf, 0xFF, t->bitmap_bytes);
        ret = setup_writable(v, err);
        if (ret < 0)
            goto fail;
    }
    ret = hv_aio_get(r, v->queue_depth * 2 + META_SLOTS + 4, &v->aio);
    if (ret < 0) {
        hv_err_set(err, ret, "%s: io_setup: %s", path, strerror(-ret));
        goto fail;
    }

    v->bd.ops = &vhd_ops;
    v->bd.reactor = r;
    snprintf(v->bd.name, sizeof(v->bd.name), "%s", path);
    v->bd.size_bytes = t->size_bytes;
    v->bd.block_bytes = HV_SECTOR_BYTES;
    v->bd.physical_block_bytes = 4096;
    v->bd.granularity_bytes = t->type == VHD_TYPE_FIXED ? 0 : t->block_bytes;
    v->bd.max_io_bytes = 0;
    v->bd.io_ctx_bytes = sizeof(struct eng_io);
    v->bd.is_read_only = opt->is_read_only;
    v->bd.has_volatile_cache = true;
    /* Whole blocks are really given back (holes, BAT entries freed). After a
     * discard a dynamic image reads zeroes; a differencing one may show the
     * parent again; a fixed one keeps its preallocated space. */
    v->bd.can_discard = t->type != VHD_TYPE_FIXED;
    v->bd.discard_zeroes = t->type == VHD_TYPE_DYNAMIC;
    memcpy(v->bd.uuid, t->meta.footer.uuid, 16);
    if (v->bat_disk) {
        ret = ext_thread_start(v, err);
        if (ret < 0)
            goto fail;
    }
    if (v->is_writable && t->uses_bitmaps) {
        for (int k = 0; k < 2; k++) {
            v->cow_io[k] = calloc(1, bdev_io_size(&v->bd));
            v->cow_buf[k] = hv_alloc_aligned(GROUP_BYTES);
            if (!v->cow_io[k] || !v->cow_buf[k]) {
                ret = hv_err_set(err, -ENOMEM, "%s: out of memory", path);
                goto fail;
            }
        }
    }
    *out = &v->bd;
    return 0;
fail:
    vhd_free(v);
    return ret;
}
