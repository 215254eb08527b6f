/*
 * vhd_compare: do two images read the same? Both are opened as bdevs (any
 * format, chains flattened) and read chunk by chunk with many chunks in
 * flight; ranges that both sides report as reading zero are not read at all.
 * Chunks complete out of order, so the first difference is the smallest
 * offset any chunk found, and chunks beyond it are no longer issued.
 */
#include "vhd.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>

#define CMP_DEPTH 8
#define CMP_CHUNK (2u * 1024 * 1024)

struct cmp;

struct cmp_slot;

struct cmp_side {
    struct cmp_slot *slot;
    struct bdev *bd;
    const char *path;
    struct bdev_io *io;
    uint8_t *buf;
    struct iovec iov;
    bool is_zero_known; /* block status said the chunk reads zero */
};

struct cmp_slot {
    struct cmp *cmp;
    struct cmp_side side[2];
    uint64_t offset;
    uint64_t length;
    int pending;
};

struct cmp {
    struct bdev *bd[2];
    const char *path[2];
    uint64_t common_bytes; /* both sides have this much */
    uint64_t total_bytes;  /* the longer side */
    uint64_t chunk_bytes;
    uint64_t next_offset;
    uint64_t first_difference; /* UINT64_MAX: none yet */
    unsigned active;
    bool is_done;
    int error;
    struct hv_err *err;
};

static void cmp_slot_next(struct cmp_slot *s);

static void cmp_fail(struct cmp *c, int code, const char *path, const char *op, uint64_t offset)
{
    if (c->error)
        return;
    c->error = code;
    hv_err_set(c->err, code, "%s: %s at offset %" PRIu64 ": %s", path, op, offset,
               strerror(-code));
}

static uint64_t first_nonequal(const uint8_t *a, const uint8_t *b, uint64_t len)
{
    /* Find the differing 4 KiB piece with memcmp, then the byte. */
    for (uint64_t at = 0; at < len; at += 4096) {
        uint64_t n = HV_MIN(4096, len - at);
        const uint8_t *pa = a ? a + at : NULL;
        const uint8_t *pb = b + at;
        if (pa ? memcmp(pa, pb, n) == 0 : hv_buf_is_zero(pb, n))
            continue;
        for (uint64_t i = 0; i < n; i++)
            if ((pa ? pa[i] : 0) != pb[i])
                return at + i;
    }
    return UINT64_MAX;
}

static void cmp_slot_compare(struct cmp_slot *s)
{
    struct cmp *c = s->cmp;
    const uint8_t *a = s->side[0].is_zero_known ? NULL : s->side[0].buf;
    const uint8_t *b = s->side[1].is_zero_known ? NULL : s->side[1].buf;
    uint64_t at = UINT64_MAX;
    if (a && b)
        at = first_nonequal(a, b, s->length);
    else if (a || b)
        at = first_nonequal(NULL, a ? a : b, s->length);
    if (at != UINT64_MAX && s->offset + at < c->first_difference)
        c->first_difference = s->offset + at;
    cmp_slot_next(s);
}

static void cmp_side_done(struct bdev_io *io, int status)
{
    struct cmp_side *side = io->cb_arg;
    struct cmp_slot *s = side->slot;
    struct cmp *c = s->cmp;
    if (io->type == BDEV_IO_BLOCK_STATUS) {
        if (status == 0 && io->status_length >= s->length &&
            ((io->status & BDEV_STATUS_ZERO) || !(io->status & BDEV_STATUS_ALLOCATED))) {
            side->is_zero_known = true;
        } else {
            /* Not all zero (or cannot tell): read it. */
            side->iov.iov_base = side->buf;
            side->iov.iov_len = s->length;
            io->type = BDEV_IO_READ;
            io->offset = s->offset;
            io->length = s->length;
            io->iov = &side->iov;
            io->iovcnt = 1;
            int ret = bdev_submit(side->bd, io);
            if (ret == 0)
                return;
            status = ret;
        }
    }
    if (status < 0)
        cmp_fail(c, status, side->path, "read", s->offset);
    if (--s->pending == 0) {
        if (c->error)
            cmp_slot_next(s);
        else
            cmp_slot_compare(s);
    }
}

static void cmp_slot_next(struct cmp_slot *s)
{
    struct cmp *c = s->cmp;
    if (c->error || c->next_offset >= c->total_bytes || c->next_offset >= c->first_difference) {
        if (--c->active == 0)
            c->is_done = true;
        return;
    }
    s->offset = c->next_offset;
    uint64_t limit = s->offset < c->common_bytes ? c->common_bytes : c->total_bytes;
    s->length = HV_MIN(c->chunk_bytes, limit - s->offset);
    c->next_offset += s->length;
    s->pending = 0;
    for (int i = 0; i < 2; i++) {
        struct cmp_side *side = &s->side[i];
        side->is_zero_known = false;
        if (s->offset >= side->bd->size_bytes) {
            side->is_zero_known = true; /* beyond its end: compared to zero */
            continue;
        }
        struct bdev_io *io = side->io;
        io->type = BDEV_IO_BLOCK_STATUS;
        io->flags = 0;
        io->offset = s->offset;
        io->length = s->length;
        io->iov = NULL;
        io->iovcnt = 0;
        io->status = 0;
        io->status_length = 0;
        io->done = cmp_side_done;
        io->cb_arg = side;
        s->pending++;
    }
    /* Count first, then submit: a completion must not see pending reach 0
     * while the other side is still to be submitted. (bdevs never complete
     * inside submit, but a failed submit is handled inline below.) */
    int to_submit = s->pending;
    for (int i = 0; i < 2 && to_submit; i++) {
        struct cmp_side *side = &s->side[i];
        if (side->is_zero_known)
            continue;
        to_submit--;
        int ret = bdev_submit(side->bd, side->io);
        if (ret < 0) {
            /* BLOCK_STATUS refused: read instead, through the done path. */
            side->io->status_length = 0;
            cmp_side_done(side->io, 0);
        }
    }
}

int vhd_compare(const char *path_a, enum vhd_image_format fmt_a, const char *path_b,
                enum vhd_image_format fmt_b, bool is_strict, struct vhd_compare_result *res,
                struct hv_err *err)
{
    struct hv_reactor *r = NULL;
    struct cmp c = {.path = {path_a, path_b}, .err = err, .first_difference = UINT64_MAX};
    struct cmp_slot slots[CMP_DEPTH];
    unsigned made = 0;
    int ret;

    memset(res, 0, sizeof(*res));
    memset(slots, 0, sizeof(slots));
    ret = hv_reactor_create(&r);
    if (ret < 0)
        return hv_err_set(err, ret, "compare: cannot create event loop: %s", strerror(-ret));
    ret = vhd_open_image(r, path_a, fmt_a, true, true, &c.bd[0], err);
    if (ret < 0)
        goto out;
    ret = vhd_open_image(r, path_b, fmt_b, true, true, &c.bd[1], err);
    if (ret < 0)
        goto out;
    /* The raw bdev serves whole sectors; a raw file with a partial last
     * sector would be compared short. Say so instead of ignoring bytes. */
    for (int i = 0; i < 2; i++) {
        struct stat st;
        const char *p = i ? path_b : path_a;
        if (!vhd_is_vhd_bdev(c.bd[i]) && stat(p, &st) == 0 && S_ISREG(st.st_mode) &&
            (uint64_t)st.st_size != c.bd[i]->size_bytes) {
            ret = hv_err_set(err, -EINVAL,
                             "%s: %" PRIu64 " bytes is not a whole number of "
                             "512-byte sectors; compare a copy padded with zeroes "
                             "(truncate -s %%512)",
                             p, (uint64_t)st.st_size);
            goto out;
        }
    }
    res->size_a = c.bd[0]->size_bytes;
    res->size_b = c.bd[1]->size_bytes;
    res->has_size_mismatch = res->size_a != res->size_b;
    c.common_bytes = HV_MIN(res->size_a, res->size_b);
    c.total_bytes = is_strict ? c.common_bytes : HV_MAX(res->size_a, res->size_b);
    c.chunk_bytes = CMP_CHUNK;
    for (int i = 0; i < 2; i++)
        if (c.bd[i]->max_io_bytes && c.chunk_bytes > c.bd[i]->max_io_bytes)
            c.chunk_bytes = HV_ALIGN_DOWN(c.bd[i]->max_io_bytes, HV_SECTOR_BYTES);

    for (; made < CMP_DEPTH; made++) {
        struct cmp_slot *s = &slots[made];
        s->cmp = &c;
        for (int i = 0; i < 2; i++) {
            s->side[i].slot = s;
            s->side[i].bd = c.bd[i];
            s->side[i].path = c.path[i];
            s->side[i].io = calloc(1, bdev_io_size(c.bd[i]));
            s->side[i].buf = hv_alloc_aligned(c.chunk_bytes);
            if (!s->side[i].io || !s->side[i].buf) {
                made++;
                ret = hv_err_set(err, -ENOMEM, "compare: out of memory");
                goto out;
            }
        }
    }
    c.active = CMP_DEPTH;
    for (unsigned i = 0; i < CMP_DEPTH; i++)
        cmp_slot_next(&slots[i]);
    if (!c.is_done) {
        ret = hv_reactor_run_until(r, &c.is_done);
        if (ret < 0 && !c.error)
            hv_err_set(err, ret, "compare: event loop failed: %s", strerror(-ret));
    }
    if (c.error)
        ret = c.error;
    if (ret < 0)
        goto out;
    res->is_same = c.first_difference == UINT64_MAX && !(is_strict && res->has_size_mismatch);
    res->first_difference = c.first_difference == UINT64_MAX ? c.common_bytes : c.first_difference;
out:
    for (unsigned i = 0; i < made; i++) {
        for (int j = 0; j < 2; j++) {
            free(slots[i].side[j].io);
            free(slots[i].side[j].buf);
        }
    }
    for (int i = 0; i < 2; i++)
        if (c.bd[i])
            bdev_close(c.bd[i]);
    if (r)
        hv_reactor_destroy(r);
    return ret;
}
