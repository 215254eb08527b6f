/*
 * cbw.c — copy-before-write for disks without a differencing child.
 *
 * Each chunk of the disk is, while a backup runs:
 *   PENDING  the backup has not read it and the guest has not changed it;
 *   BUSY     its old data is being read (by the backup, or into a spare
 *            buffer because the guest is about to overwrite it);
 *   SAVED    its old data sits in a spare buffer, waiting for the backup;
 *   DONE     the backup has it: the guest may write freely.
 * A guest write walks its chunks in order; at a PENDING chunk it takes a
 * spare buffer and reads the old data, at a BUSY one (or when no spare is
 * free) it parks. Only then is the write itself sent down, so the old data
 * is always in the backup or in a spare before the new data can land. Parked
 * writes are re-walked whenever a chunk or a spare changes state; the link
 * lives in the request's own context, so parking allocates nothing.
 */
#include "filter.h"

#include <errno.h>
#include <stdlib.h>

enum { CH_DONE, CH_PENDING, CH_BUSY, CH_SAVED };
#define CBW_READERS 8

struct cbw_io;

struct spare {
    uint64_t chunk;
    uint8_t *buf;
    bool is_used;
};

struct cbw_reader {
    struct snap_cbw *cbw;
    uint64_t chunk;
    void *buf;
    snap_done_fn done;
    void *arg;
    bool is_used;
    bool is_waiting; /* the chunk was BUSY with a guest copy */
    int status;
    struct hv_deferred deferred;
    struct iovec iov;
    struct bdev_io *io;
};

struct snap_cbw {
    struct bdev bd;
    struct bdev *inner;
    uint32_t chunk_bytes;
    unsigned shift;
    uint64_t chunks;
    uint8_t *state;
    bool is_active;
    struct spare *spares;
    unsigned spare_count;
    struct cbw_io *parked;
    struct cbw_reader readers[CBW_READERS];
    uint64_t saved;
    bool is_waking;
    bool wake_again;
};

struct cbw_io {
    struct bdev_io *outer;
    struct snap_cbw *cbw;
    struct cbw_io *next;
    uint64_t cursor; /* next chunk to look at */
    int spare;       /* spare being filled, -1 none */
    bool is_copying;
    bool in_submit;
    int status;
    struct iovec iov;
    struct hv_deferred deferred;
};
#define CBW_HEAD SNAP_CTX_HEAD(struct cbw_io)

static void wake(struct snap_cbw *c);
static int walk(struct cbw_io *ci);

static uint64_t chunk_len(struct snap_cbw *c, uint64_t chunk)
{
    uint64_t off = chunk << c->shift;
    return HV_MIN((uint64_t)c->chunk_bytes, c->bd.size_bytes - off);
}

static void complete_deferred(void *arg)
{
    struct cbw_io *ci = arg;
    ci->outer->done(ci->outer, ci->status);
}

static void finish(struct cbw_io *ci, int status)
{
    ci->status = status;
    hv_reactor_defer(ci->cbw->bd.reactor, &ci->deferred, complete_deferred, ci);
}

static void pass_done(struct bdev_io *in, int status)
{
    struct cbw_io *ci = in->cb_arg;
    snap_inner_results(ci->outer, in);
    ci->outer->done(ci->outer, status);
}

static int pass(struct cbw_io *ci)
{
    struct bdev_io *in = snap_inner_io(ci, CBW_HEAD);
    snap_inner_prep(in, ci->outer, pass_done, ci);
    return bdev_submit(ci->cbw->inner, in);
}

static void serve_waiting_readers(struct snap_cbw *c, uint64_t chunk);

static void copy_done(struct bdev_io *in, int status)
{
    struct cbw_io *ci = in->cb_arg;
    struct snap_cbw *c = ci->cbw;
    struct spare *s = &c->spares[ci->spare];
    ci->is_copying = false;
    if (status < 0) {
        /* The old data is unreadable: the backup cannot have it either.
         * Fail the guest's write rather than lose the point in time. */
        c->state[s->chunk] = CH_PENDING;
        s->is_used = false;
        ci->spare = -1;
        ci->outer->done(ci->outer, status);
        wake(c);
        return;
    }
    c->state[s->chunk] = CH_SAVED;
    c->saved++;
    ci->spare = -1;
    ci->cursor = s->chunk + 1;
    serve_waiting_readers(c, s->chunk);
    int ret = walk(ci);
    if (ret < 0)
        ci->outer->done(ci->outer, ret);
    wake(c);
}

/* Returns 0 when the request is parked, copying or sent down; <0 when it
 * cannot be sent. */
static int walk(struct cbw_io *ci)
{
    struct snap_cbw *c = ci->cbw;
    struct bdev_io *io = ci->outer;
    uint64_t last = (io->offset + io->length - 1) >> c->shift;
    if (c->is_active) {
        for (; ci->cursor <= last; ci->cursor++) {
            uint8_t st = c->state[ci->cursor];
            if (st == CH_DONE || st == CH_SAVED)
                continue;
            if (st == CH_BUSY)
                goto park;
            int s;
            for (s = 0; s < (int)c->spare_count && c->spares[s].is_used; s++)
                ;
            if (s == (int)c->spare_count)
                goto park;
            c->spares[s].is_used = true;
            c->spares[s].chunk = ci->cursor;
            c->state[ci->cursor] = CH_BUSY;
            ci->spare = s;
            ci->is_copying = true;
            struct bdev_io *in = snap_inner_io(ci, CBW_HEAD);
            ci->iov.iov_base = c->spares[s].buf;
            ci->iov.iov_len = chunk_len(c, ci->cursor);
            in->type = BDEV_IO_READ;
            in->flags = 0;
            in->offset = ci->cursor << c->shift;
            in->length = ci->iov.iov_len;
            in->iov = &ci->iov;
            in->iovcnt = 1;
            in->done = copy_done;
            in->cb_arg = ci;
            int ret = bdev_submit(c->inner, in);
            if (ret < 0) {
                c->state[ci->cursor] = CH_PENDING;
                c->spares[s].is_used = false;
                ci->is_copying = false;
                ci->spare = -1;
                return ret;
            }
            return 0;
        }
    }
    return pass(ci);
park:
    ci->next = c->parked;
    c->parked = ci;
    return 0;
}

/* Re-walk every parked write. A walk can park again or finish at once, and
 * a completion inside it can call wake() again: loop instead of nesting. */
static void wake(struct snap_cbw *c)
{
    if (c->is_waking) {
        c->wake_again = true;
        return;
    }
    c->is_waking = true;
    do {
        c->wake_again = false;
        struct cbw_io *list = c->parked;
        c->parked = NULL;
        /* The list is newest first: reverse it to keep arrival order. */
        struct cbw_io *rev = NULL;
        while (list) {
            struct cbw_io *n = list->next;
            list->next = rev;
            rev = list;
            list = n;
        }
        while (rev) {
            struct cbw_io *n = rev->next;
            int ret = walk(rev);
            if (ret < 0)
                finish(rev, ret);
            rev = n;
        }
    } while (c->wake_again);
    c->is_waking = false;
}

static int cbw_submit(struct bdev *bd, struct bdev_io *io)
{
    struct snap_cbw *c = hv_container_of(bd, struct snap_cbw, bd);
    struct cbw_io *ci = bdev_io_ctx(io);
    ci->outer = io;
    ci->cbw = c;
    ci->next = NULL;
    ci->spare = -1;
    ci->is_copying = false;
    memset(&ci->deferred, 0, sizeof(ci->deferred));
    bool modifies = io->type == BDEV_IO_WRITE || io->type == BDEV_IO_DISCARD ||
                    io->type == BDEV_IO_WRITE_ZEROES;
    if (!modifies || !c->is_active)
        return pass(ci);
    ci->cursor = io->offset >> c->shift;
    return walk(ci);
}

static int cbw_close(struct bdev *bd)
{
    struct snap_cbw *c = hv_container_of(bd, struct snap_cbw, bd);
    int ret = bdev_close(c->inner);
    for (unsigned i = 0; i < c->spare_count; i++)
        free(c->spares[i].buf);
    for (int i = 0; i < CBW_READERS; i++)
        free(c->readers[i].io);
    free(c->spares);
    free(c->state);
    free(c);
    return ret;
}

static void cbw_describe(struct bdev *bd, json_t *obj)
{
    struct snap_cbw *c = hv_container_of(bd, struct snap_cbw, bd);
    if (c->inner->ops->describe)
        c->inner->ops->describe(c->inner, obj);
}

static int cbw_resize(struct bdev *bd, uint64_t size_bytes, struct hv_err *err)
{
    struct snap_cbw *c = hv_container_of(bd, struct snap_cbw, bd);
    if (c->is_active)
        return hv_err_set(err, -EBUSY, "%s: a backup is reading it; resize afterwards",
                          bd->name);
    if (!c->inner->ops->resize)
        return hv_err_set(err, -EOPNOTSUPP, "%s: cannot be resized online", bd->name);
    uint8_t *state = calloc(1, HV_DIV_ROUND_UP(size_bytes, c->chunk_bytes) + 1);
    if (!state)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", bd->name);
    int ret = c->inner->ops->resize(c->inner, size_bytes, err);
    if (ret < 0) {
        free(state);
        return ret;
    }
    free(c->state);
    c->state = state;
    c->chunks = HV_DIV_ROUND_UP(c->inner->size_bytes, c->chunk_bytes);
    bd->size_bytes = c->inner->size_bytes;
    return 0;
}

static const struct bdev_ops cbw_ops = {
    .name = "cbw",
    .submit = cbw_submit,
    .close = cbw_close,
    .resize = cbw_resize,
    .describe = cbw_describe,
};

int snap_cbw_wrap(struct bdev *inner, uint32_t chunk_bytes, unsigned spare_chunks,
                  struct bdev **out, struct snap_cbw **cbw, struct hv_err *err)
{
    if (chunk_bytes < 4096 || (chunk_bytes & (chunk_bytes - 1)) || spare_chunks == 0)
        return hv_err_set(err, -EINVAL,
                          "%s: copy-before-write chunk %u is not a power of two "
                          "of at least 4096 (or no spare chunks)",
                          inner->name, chunk_bytes);
    struct snap_cbw *c = calloc(1, sizeof(*c));
    if (!c)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", inner->name);
    snap_filter_init(&c->bd, inner, &cbw_ops, "cbw", CBW_HEAD);
    c->inner = inner;
    c->chunk_bytes = chunk_bytes;
    c->shift = (unsigned)__builtin_ctz(chunk_bytes);
    c->chunks = HV_DIV_ROUND_UP(inner->size_bytes, chunk_bytes);
    c->state = calloc(1, c->chunks + 1);
    c->spares = calloc(spare_chunks, sizeof(*c->spares));
    c->spare_count = spare_chunks;
    bool ok = c->state && c->spares;
    for (unsigned i = 0; ok && i < spare_chunks; i++)
        ok = (c->spares[i].buf = hv_alloc_aligned(chunk_bytes)) != NULL;
    for (int i = 0; ok && i < CBW_READERS; i++) {
        c->readers[i].cbw = c;
        ok = (c->readers[i].io = calloc(1, bdev_io_size(inner))) != NULL;
    }
    if (!ok) {
        c->inner = NULL;
        for (unsigned i = 0; c->spares && i < spare_chunks; i++)
            free(c->spares[i].buf);
        for (int i = 0; i < CBW_READERS; i++)
            free(c->readers[i].io);
        free(c->spares);
        free(c->state);
        free(c);
        return hv_err_set(err, -ENOMEM, "%s: copy-before-write: out of memory", inner->name);
    }
    *out = &c->bd;
    *cbw = c;
    return 0;
}

int snap_cbw_start(struct snap_cbw *c)
{
    if (c->is_active)
        return -EBUSY;
    memset(c->state, CH_PENDING, c->chunks);
    for (unsigned i = 0; i < c->spare_count; i++)
        c->spares[i].is_used = false;
    c->saved = 0;
    c->is_active = true;
    return 0;
}

void snap_cbw_stop(struct snap_cbw *c)
{
    c->is_active = false;
    /* Copies still reading keep their spare until they complete; parked
     * writes no longer need to wait for anything. */
    wake(c);
}

static void reader_finish_call(void *arg)
{
    struct cbw_reader *rd = arg;
    rd->is_used = false;
    rd->done(rd->arg, rd->status);
}

static void reader_read_done(struct bdev_io *io, int status)
{
    struct cbw_reader *rd = io->cb_arg;
    struct snap_cbw *c = rd->cbw;
    c->state[rd->chunk] = status < 0 ? CH_PENDING : CH_DONE;
    rd->is_used = false;
    rd->done(rd->arg, status);
    wake(c);
}

/* Serve a reader from the spare holding `chunk`, freeing the spare. */
static void take_saved(struct cbw_reader *rd)
{
    struct snap_cbw *c = rd->cbw;
    for (unsigned i = 0; i < c->spare_count; i++) {
        struct spare *s = &c->spares[i];
        if (s->is_used && s->chunk == rd->chunk) {
            memcpy(rd->buf, s->buf, chunk_len(c, rd->chunk));
            s->is_used = false;
            break;
        }
    }
    c->state[rd->chunk] = CH_DONE;
    rd->status = 0;
    rd->is_waiting = false;
    hv_reactor_defer(c->bd.reactor, &rd->deferred, reader_finish_call, rd);
}

static void serve_waiting_readers(struct snap_cbw *c, uint64_t chunk)
{
    for (int i = 0; i < CBW_READERS; i++) {
        struct cbw_reader *rd = &c->readers[i];
        if (rd->is_used && rd->is_waiting && rd->chunk == chunk)
            take_saved(rd);
    }
}

int snap_cbw_read(struct snap_cbw *c, uint64_t index, void *buf, snap_done_fn done, void *arg)
{
    if (!c->is_active || index >= c->chunks || c->state[index] == CH_DONE)
        return -EINVAL;
    struct cbw_reader *rd = NULL;
    for (int i = 0; i < CBW_READERS && !rd; i++)
        if (!c->readers[i].is_used)
            rd = &c->readers[i];
    if (!rd)
        return -EBUSY;
    rd->is_used = true;
    rd->chunk = index;
    rd->buf = buf;
    rd->done = done;
    rd->arg = arg;
    rd->is_waiting = false;
    switch (c->state[index]) {
    case CH_SAVED:
        take_saved(rd);
        wake(c);
        return 0;
    case CH_BUSY:
        rd->is_waiting = true;
        return 0;
    default:
        break;
    }
    c->state[index] = CH_BUSY;
    rd->iov.iov_base = buf;
    rd->iov.iov_len = chunk_len(c, index);
    struct bdev_io *io = rd->io;
    io->type = BDEV_IO_READ;
    io->flags = 0;
    io->offset = index << c->shift;
    io->length = rd->iov.iov_len;
    io->iov = &rd->iov;
    io->iovcnt = 1;
    io->done = reader_read_done;
    io->cb_arg = rd;
    int ret = bdev_submit(c->inner, io);
    if (ret < 0) {
        c->state[index] = CH_PENDING;
        rd->is_used = false;
    }
    return ret;
}

uint64_t snap_cbw_chunks(const struct snap_cbw *c)
{
    return c->chunks;
}

uint32_t snap_cbw_chunk_bytes(const struct snap_cbw *c)
{
    return c->chunk_bytes;
}

uint64_t snap_cbw_saved(const struct snap_cbw *c)
{
    return c->saved;
}
