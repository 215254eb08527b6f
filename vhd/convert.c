/*
 * vhd_convert: copy what one image reads into a new image of either format.
 *
 * Speed comes from keeping the disks busy, not from clever copying: a fixed
 * number of slots, each carrying one chunk (a destination block, 2 MiB by
 * default) through BLOCK_STATUS -> READ -> WRITE, all in flight at once in
 * one private reactor, so the source reads, the engine's allocations and the
 * destination writes overlap. Zero data is never written: ranges the source
 * reports as holes or unallocated are skipped without reading, and chunks
 * that read back as zeroes are trimmed to their non-zero span (or skipped),
 * so a dynamic output allocates only blocks that hold data.
 */
#include "vhd.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define CV_DEFAULT_DEPTH 16
#define CV_DEFAULT_CHUNK (2u * 1024 * 1024)
/* Granularity of the zero trim inside a chunk: large enough that a mostly
 * full chunk stays one request. */
#define CV_TRIM_BYTES (64u * 1024)

struct cv;

struct cv_slot {
    struct cv *cv;
    struct bdev_io *src_io;
    struct bdev_io *dst_io;
    uint8_t *buf;
    struct iovec iov;
    uint64_t offset;
    uint64_t length;
    uint64_t probe;             /* block-status scan position inside the chunk */
};

struct cv {
    struct bdev *src;
    struct bdev *dst;
    const char *src_path;
    const char *dst_path;
    uint64_t size_bytes;
    uint64_t chunk_bytes;
    uint64_t next_offset;
    unsigned active;
    bool is_done;
    int error;
    struct hv_err *err;
    struct hv_progress progress;
    uint64_t bytes_done;
    int readahead_fd;           /* raw source: page-cache readahead hints, or -1 */
    uint64_t readahead_bytes;   /* how far ahead of a chunk to prefetch */
};

static void slot_next(struct cv_slot *s);

static void cv_fail(struct cv *cv, int code, const char *path, const char *op, uint64_t offset)
{
    if (cv->error)
        return;
    cv->error = code;
    hv_err_set(cv->err, code, "%s: %s at offset %" PRIu64 ": %s", path, op, offset,
               strerror(-code));
}

static void slot_finish_chunk(struct cv_slot *s)
{
    struct cv *cv = s->cv;
    cv->bytes_done += s->length;
    hv_progress_update(&cv->progress, cv->bytes_done);
    slot_next(s);
}

static void slot_write_done(struct bdev_io *io, int status)
{
    struct cv_slot *s = io->cb_arg;
    if (status < 0) {
        cv_fail(s->cv, status, s->cv->dst_path, "write", io->offset);
        slot_next(s);
        return;
    }
    slot_finish_chunk(s);
}

static void slot_read_done(struct bdev_io *io, int status)
{
    struct cv_slot *s = io->cb_arg;
    struct cv *cv = s->cv;
    if (status < 0) {
        cv_fail(cv, status, cv->src_path, "read", io->offset);
        slot_next(s);
        return;
    }
    /* Trim zeroes at both ends in CV_TRIM_BYTES steps (the destination reads
     * zero there already: a new sparse file, a preallocated fixed image, an
     * unallocated or fresh dynamic block). */
    uint64_t first = 0, end = s->length;
    while (first < end && hv_buf_is_zero(s->buf + first, HV_MIN(CV_TRIM_BYTES, end - first)))
        first += HV_MIN(CV_TRIM_BYTES, end - first);
    while (end > first) {
        uint64_t piece_start = end > CV_TRIM_BYTES ? HV_ALIGN_DOWN(end - 1, CV_TRIM_BYTES) : 0;
        if (piece_start < first)
            piece_start = first;
        if (!hv_buf_is_zero(s->buf + piece_start, end - piece_start))
            break;
        end = piece_start;
    }
    if (first >= end) {
        slot_finish_chunk(s);
        return;
    }
    struct bdev_io *w = s->dst_io;
    s->iov.iov_base = s->buf + first;
    s->iov.iov_len = end - first;
    w->type = BDEV_IO_WRITE;
    w->flags = 0;
    w->offset = s->offset + first;
    w->length = end - first;
    w->iov = &s->iov;
    w->iovcnt = 1;
    w->done = slot_write_done;
    w->cb_arg = s;
    int ret = bdev_submit(cv->dst, w);
    if (ret < 0) {
        cv_fail(cv, ret, cv->dst_path, "write", w->offset);
        slot_next(s);
    }
}

static void slot_read(struct cv_slot *s)
{
    struct cv *cv = s->cv;
    /* The source is read through the page cache (as qemu-img does), so a
     * read that misses would block the loop inside io_submit: ask the kernel
     * to start reading the data chunks ahead of us asynchronously. */
    if (cv->readahead_fd >= 0) {
        uint64_t ahead = s->offset + cv->readahead_bytes;
        if (ahead < cv->size_bytes)
            posix_fadvise(cv->readahead_fd, (off_t)ahead,
                          (off_t)HV_MIN(s->length, cv->size_bytes - ahead), POSIX_FADV_WILLNEED);
    }
    struct bdev_io *r = s->src_io;
    s->iov.iov_base = s->buf;
    s->iov.iov_len = s->length;
    r->type = BDEV_IO_READ;
    r->flags = 0;
    r->offset = s->offset;
    r->length = s->length;
    r->iov = &s->iov;
    r->iovcnt = 1;
    r->done = slot_read_done;
    r->cb_arg = s;
    int ret = bdev_submit(cv->src, r);
    if (ret < 0) {
        cv_fail(cv, ret, cv->src_path, "read", s->offset);
        slot_next(s);
    }
}

static void slot_status(struct cv_slot *s);

static void slot_status_done(struct bdev_io *io, int status)
{
    struct cv_slot *s = io->cb_arg;
    if (status < 0) {
        /* A source that cannot tell is simply read. */
        slot_read(s);
        return;
    }
    /* Unallocated anywhere in the chain or a hole reads as zeroes. */
    bool is_zero = (io->status & BDEV_STATUS_ZERO) || !(io->status & BDEV_STATUS_ALLOCATED);
    if (!is_zero || io->status_length == 0) {
        slot_read(s);
        return;
    }
    s->probe += io->status_length;
    if (s->probe >= s->offset + s->length)
        slot_finish_chunk(s);
    else
        slot_status(s);
}

static void slot_status(struct cv_slot *s)
{
    struct bdev_io *q = s->src_io;
    q->type = BDEV_IO_BLOCK_STATUS;
    q->flags = 0;
    q->offset = s->probe;
    q->length = s->offset + s->length - s->probe;
    q->iov = NULL;
    q->iovcnt = 0;
    q->status = 0;
    q->status_length = 0;
    q->status_depth = -1;
    q->done = slot_status_done;
    q->cb_arg = s;
    if (bdev_submit(s->cv->src, q) < 0)
        slot_read(s);
}

static void slot_next(struct cv_slot *s)
{
    struct cv *cv = s->cv;
    if (cv->error || cv->next_offset >= cv->size_bytes) {
        if (--cv->active == 0)
            cv->is_done = true;
        return;
    }
    s->offset = cv->next_offset;
    s->length = HV_MIN(cv->chunk_bytes, cv->size_bytes - s->offset);
    cv->next_offset += s->length;
    s->probe = s->offset;
    slot_status(s);
}

static uint64_t pick_chunk(const struct bdev *src, const struct bdev *dst)
{
    uint64_t chunk = CV_DEFAULT_CHUNK;
    /* One chunk per destination block when blocks are no larger than a few
     * MiB, so zero detection decides allocation block by block. */
    if (dst->granularity_bytes && dst->granularity_bytes <= 8 * HV_MiB)
        chunk = dst->granularity_bytes;
    if (src->max_io_bytes && chunk > src->max_io_bytes)
        chunk = HV_ALIGN_DOWN(src->max_io_bytes, HV_SECTOR_BYTES);
    if (dst->max_io_bytes && chunk > dst->max_io_bytes)
        chunk = HV_ALIGN_DOWN(dst->max_io_bytes, HV_SECTOR_BYTES);
    return chunk ? chunk : HV_SECTOR_BYTES;
}

static int run_copy(struct cv *cv, unsigned depth, bool show_progress)
{
    struct cv_slot *slots = calloc(depth, sizeof(*slots));
    int ret = 0;
    if (!slots)
        return hv_err_set(cv->err, -ENOMEM, "convert: out of memory");
    unsigned made = 0;
    for (; made < depth; made++) {
        struct cv_slot *s = &slots[made];
        s->cv = cv;
        s->src_io = calloc(1, bdev_io_size(cv->src));
        s->dst_io = calloc(1, bdev_io_size(cv->dst));
        s->buf = hv_alloc_aligned(cv->chunk_bytes);
        if (!s->src_io || !s->dst_io || !s->buf) {
            ret = hv_err_set(cv->err, -ENOMEM, "convert: out of memory for %u buffers of "
                             "%" PRIu64 " bytes", depth, cv->chunk_bytes);
            made++;
            goto out;
        }
    }
    hv_progress_begin(&cv->progress, "Converting", cv->size_bytes, show_progress);
    cv->active = depth;
    for (unsigned i = 0; i < depth; i++)
        slot_next(&slots[i]);
    if (!cv->is_done) {
        ret = hv_reactor_run_until(cv->src->reactor, &cv->is_done);
        if (ret < 0 && !cv->error)
            hv_err_set(cv->err, ret, "convert: event loop failed: %s", strerror(-ret));
    }
    hv_progress_end(&cv->progress);
    if (cv->error)
        ret = cv->error;
out:
    for (unsigned i = 0; i < made; i++) {
        free(slots[i].src_io);
        free(slots[i].dst_io);
        free(slots[i].buf);
    }
    free(slots);
    return ret;
}

static int raw_tail_bytes(const char *path, uint64_t sectors_bytes, uint64_t *tail,
                          struct hv_err *err)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return hv_err_errno(err, path, "stat");
    *tail = S_ISREG(st.st_mode) && (uint64_t)st.st_size > sectors_bytes
                ? (uint64_t)st.st_size - sectors_bytes : 0;
    if (*tail >= HV_SECTOR_BYTES)
        *tail = 0;                      /* the bdev saw a different length: ignore */
    return 0;
}

static int copy_tail(const char *src_path, struct bdev *dst, uint64_t offset, uint64_t tail,
                     struct hv_err *err)
{
    uint8_t *buf = hv_alloc_aligned(HV_SECTOR_BYTES);
    int fd = -1, ret;
    if (!buf)
        return hv_err_set(err, -ENOMEM, "convert: out of memory");
    memset(buf, 0, HV_SECTOR_BYTES);
    fd = open(src_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ret = hv_err_errno(err, src_path, "open");
        goto out;
    }
    ret = hv_pread_full(fd, buf, tail, offset);
    if (ret < 0) {
        hv_err_set(err, ret, "%s: read of the last %" PRIu64 " bytes: %s", src_path, tail,
                   strerror(-ret));
        goto out;
    }
    if (!hv_buf_is_zero(buf, HV_SECTOR_BYTES)) {
        ret = bdev_write_sync(dst, offset, buf, HV_SECTOR_BYTES, 0);
        if (ret < 0)
            hv_err_set(err, ret, "%s: write at offset %" PRIu64 ": %s", dst->name, offset,
                       strerror(-ret));
    }
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return ret;
}

int vhd_convert(const char *src_path, const char *dst_path, const struct vhd_convert_options *opt,
                struct hv_err *err)
{
    struct vhd_convert_options o = *opt;
    struct hv_reactor *r = NULL;
    struct bdev *src = NULL, *dst = NULL;
    bool is_dst_created = false;
    int ret;

    if (o.dst_format == VHD_FORMAT_AUTO)
        o.dst_format = VHD_FORMAT_VHD;
    if (!o.dst_type)
        o.dst_type = VHD_TYPE_DYNAMIC;
    if (o.dst_format == VHD_FORMAT_VHD && o.dst_type == VHD_TYPE_DIFFERENCING)
        return hv_err_set(err, -EINVAL, "%s: convert writes fixed or dynamic images, "
                          "not differencing ones", dst_path);
    if (!o.depth)
        o.depth = CV_DEFAULT_DEPTH;
    if (access(dst_path, F_OK) == 0)
        return hv_err_set(err, -EEXIST, "%s: already exists; convert writes a new file",
                          dst_path);

    ret = hv_reactor_create(&r);
    if (ret < 0)
        return hv_err_set(err, ret, "convert: cannot create event loop: %s", strerror(-ret));
    /*
     * Source through the page cache, destination with O_DIRECT. A source
     * that is in the cache (just written, or read before) is then copied
     * without touching the disk, and the device's bandwidth goes to the
     * output; an uncached raw source is prefetched with readahead hints
     * (slot_read). The output bypasses the cache: it is made durable at the
     * end anyway, and a many-GiB copy should not evict everything else.
     */
    enum vhd_image_format src_fmt = o.src_format;
    if (src_fmt == VHD_FORMAT_AUTO) {
        ret = vhd_detect_format(src_path, &src_fmt, err);
        if (ret < 0)
            goto out;
    }
    ret = vhd_open_image(r, src_path, src_fmt, true, false, &src, err);
    if (ret < 0)
        goto out;
    /* A raw file whose length is not a whole number of sectors: the bdev
     * serves the whole sectors, the tail is copied below into a last sector
     * padded with zeroes (qemu-img does the same), so nothing is lost. */
    uint64_t size = src->size_bytes;
    uint64_t tail_bytes = 0;
    if (src_fmt == VHD_FORMAT_RAW) {
        ret = raw_tail_bytes(src_path, size, &tail_bytes, err);
        if (ret < 0)
            goto out;
    }
    uint64_t dst_size = size + (tail_bytes ? HV_SECTOR_BYTES : 0);

    if (o.dst_format == VHD_FORMAT_VHD) {
        struct vhd_create_options c = {
            .type = o.dst_type, .size_bytes = dst_size, .block_bytes = o.block_bytes,
        };
        ret = vhd_create(dst_path, &c, err);
        if (ret < 0)
            goto out;
        is_dst_created = true;
        struct vhd_open_options vo = { 0 };
        ret = vhd_open(r, dst_path, &vo, &dst, err);
        if (ret == -EINVAL) {
            vo.no_direct_io = true;
            ret = vhd_open(r, dst_path, &vo, &dst, err);
        }
    } else {
        struct bdev_raw_options ro = {
            .create = true, .size_bytes = dst_size, .use_direct_io = true,
        };
        is_dst_created = true;
        ret = bdev_raw_open(r, dst_path, &ro, &dst, err);
        if (ret == -EINVAL) {
            ro.use_direct_io = false;
            ret = bdev_raw_open(r, dst_path, &ro, &dst, err);
        }
    }
    if (ret < 0)
        goto out;

    struct cv cv = {
        .src = src, .dst = dst, .src_path = src_path, .dst_path = dst_path,
        .size_bytes = size, .chunk_bytes = pick_chunk(src, dst), .err = err,
        .readahead_fd = -1,
    };
    cv.readahead_bytes = cv.chunk_bytes * o.depth;
    if (src_fmt == VHD_FORMAT_RAW)
        cv.readahead_fd = open(src_path, O_RDONLY | O_CLOEXEC);
    ret = run_copy(&cv, o.depth, o.show_progress);
    if (cv.readahead_fd >= 0)
        close(cv.readahead_fd);
    if (ret < 0)
        goto out;
    if (tail_bytes) {
        ret = copy_tail(src_path, dst, size, tail_bytes, err);
        if (ret < 0)
            goto out;
    }
    ret = bdev_flush_sync(dst);
    if (ret < 0) {
        hv_err_set(err, ret, "%s: flush: %s", dst_path, strerror(-ret));
        goto out;
    }
    ret = bdev_close(dst);
    dst = NULL;
    if (ret < 0)
        hv_err_set(err, ret, "%s: close: %s", dst_path, strerror(-ret));
out:
    if (dst)
        bdev_close(dst);
    if (src)
        bdev_close(src);
    if (r)
        hv_reactor_destroy(r);
    if (ret < 0 && is_dst_created)
        unlink(dst_path);
    return ret;
}
