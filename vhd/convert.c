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
#include <sys/mman.h>
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
    const uint8_t *data; /* the chunk's bytes: `buf`, or the source's mapping */
    struct iovec iov;
    uint64_t offset;
    uint64_t length;
    uint64_t probe;      /* block-status scan position inside the chunk */
    bool is_write_ready; /* read and trimmed, waiting for its turn */
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
    /* Writes go out in offset order (see gate_advance): the next chunk to
     * write, which chunks turned out to be zero, and the slots waiting. */
    uint64_t gate_next;
    uint8_t *is_chunk_skipped; /* one bit per chunk */
    struct cv_slot *slots;
    unsigned depth;
    /* A raw source is also mapped, to take the chunks the page cache holds
     * without reading them (see slot_read). */
    const uint8_t *src_map;
    uint64_t src_map_bytes;
    unsigned char *residency; /* mincore vector for one chunk */
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

static void slot_submit_write(struct cv_slot *s);

/*
 * Reads complete in any order, but writes are submitted in offset order, so
 * a dynamic output's blocks are allocated in the order of the disk (the
 * engine places a block when its first write arrives): the file's layout is
 * then sequential, as if it had been written by one stream, and reading it
 * back later is sequential too. Chunks that turned out to be zero only mark
 * themselves passed. A slot whose chunk is not next waits with its data.
 */
static void gate_advance(struct cv *cv)
{
    for (;;) {
        if (cv->error) {
            for (unsigned i = 0; i < cv->depth; i++) {
                if (cv->slots[i].is_write_ready) {
                    cv->slots[i].is_write_ready = false;
                    slot_next(&cv->slots[i]);
                }
            }
            return;
        }
        uint64_t idx = cv->gate_next;
        if (cv->is_chunk_skipped[idx / 8] & (1u << (idx % 8))) {
            cv->gate_next++;
            continue;
        }
        struct cv_slot *ready = NULL;
        for (unsigned i = 0; i < cv->depth && !ready; i++) {
            struct cv_slot *s = &cv->slots[i];
            if (s->is_write_ready && s->offset / cv->chunk_bytes == idx)
                ready = s;
        }
        if (!ready)
            return;
        ready->is_write_ready = false;
        cv->gate_next++;
        slot_submit_write(ready);
    }
}

static void slot_skip_chunk(struct cv_slot *s)
{
    struct cv *cv = s->cv;
    uint64_t idx = s->offset / cv->chunk_bytes;
    cv->is_chunk_skipped[idx / 8] |= (uint8_t)(1u << (idx % 8));
    slot_finish_chunk(s);
    gate_advance(cv);
}

static void slot_write_done(struct bdev_io *io, int status)
{
    struct cv_slot *s = io->cb_arg;
    if (status < 0) {
        cv_fail(s->cv, status, s->cv->dst_path, "write", io->offset);
        slot_next(s);
        gate_advance(s->cv);
        return;
    }
    slot_finish_chunk(s);
}

static void slot_have_data(struct cv_slot *s);

static void slot_read_done(struct bdev_io *io, int status)
{
    struct cv_slot *s = io->cb_arg;
    struct cv *cv = s->cv;
    if (status < 0) {
        cv_fail(cv, status, cv->src_path, "read", io->offset);
        slot_next(s);
        gate_advance(cv);
        return;
    }
    s->data = s->buf;
    slot_have_data(s);
}

static void slot_have_data(struct cv_slot *s)
{
    struct cv *cv = s->cv;
    /* Trim zeroes at both ends in CV_TRIM_BYTES steps (the destination reads
     * zero there already: a new sparse file, a preallocated fixed image, an
     * unallocated or fresh dynamic block). */
    uint64_t first = 0, end = s->length;
    while (first < end && hv_buf_is_zero(s->data + first, HV_MIN(CV_TRIM_BYTES, end - first)))
        first += HV_MIN(CV_TRIM_BYTES, end - first);
    while (end > first) {
        uint64_t piece_start = end > CV_TRIM_BYTES ? HV_ALIGN_DOWN(end - 1, CV_TRIM_BYTES) : 0;
        if (piece_start < first)
            piece_start = first;
        if (!hv_buf_is_zero(s->data + piece_start, end - piece_start))
            break;
        end = piece_start;
    }
    if (first >= end) {
        slot_skip_chunk(s);
        return;
    }
    s->iov.iov_base = (void *)(uintptr_t)(s->data + first);
    s->iov.iov_len = end - first;
    s->dst_io->offset = s->offset + first;
    s->dst_io->length = end - first;
    s->is_write_ready = true;
    gate_advance(cv);
}

static void slot_submit_write(struct cv_slot *s)
{
    struct cv *cv = s->cv;
    struct bdev_io *w = s->dst_io;
    w->type = BDEV_IO_WRITE;
    w->flags = 0;
    w->iov = &s->iov;
    w->iovcnt = 1;
    w->done = slot_write_done;
    w->cb_arg = s;
    int ret = bdev_submit(cv->dst, w);
    if (ret < 0) {
        cv_fail(cv, ret, cv->dst_path, "write", w->offset);
        slot_next(s);
        gate_advance(cv);
    }
}

/* True when every page of [offset, offset+length) of the raw source is in
 * the page cache. */
static bool is_chunk_cached(const struct cv *cv, uint64_t offset, uint64_t length)
{
    if (!cv->src_map || offset + length > cv->src_map_bytes)
        return false;
    long page = sysconf(_SC_PAGESIZE);
    uint64_t start = HV_ALIGN_DOWN(offset, (uint64_t)page);
    uint64_t end = HV_ALIGN_UP(offset + length, (uint64_t)page);
    if (mincore((void *)(uintptr_t)(cv->src_map + start), end - start, cv->residency) < 0)
        return false;
    for (uint64_t i = 0; i < (end - start) / (uint64_t)page; i++)
        if (!(cv->residency[i] & 1))
            return false;
    return true;
}

static void slot_read(struct cv_slot *s)
{
    struct cv *cv = s->cv;
    /*
     * A raw source's chunk that the page cache holds (an image just written
     * or read) is not read at all: the write goes out straight from the
     * file's mapping, and the kernel's O_DIRECT path takes the cached pages
     * as they are. No copy, no disk read, and the disk's bandwidth all goes
     * to the output. Anything else is read with O_DIRECT, which stays
     * asynchronous (a buffered read that missed the cache would block the
     * whole loop inside io_submit).
     */
    if (cv->src_map && is_chunk_cached(cv, s->offset, s->length)) {
        s->data = cv->src_map + s->offset;
        slot_have_data(s);
        return;
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
        gate_advance(cv);
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
        slot_skip_chunk(s);
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
    uint64_t chunks = HV_DIV_ROUND_UP(cv->size_bytes, cv->chunk_bytes);
    cv->is_chunk_skipped = calloc(chunks / 8 + 1, 1);
    cv->slots = slots;
    cv->depth = depth;
    int ret = 0;
    if (!slots || !cv->is_chunk_skipped) {
        free(slots);
        free(cv->is_chunk_skipped);
        return hv_err_set(cv->err, -ENOMEM, "convert: out of memory");
    }
    unsigned made = 0;
    for (; made < depth; made++) {
        struct cv_slot *s = &slots[made];
        s->cv = cv;
        s->src_io = calloc(1, bdev_io_size(cv->src));
        s->dst_io = calloc(1, bdev_io_size(cv->dst));
        s->buf = hv_alloc_aligned(cv->chunk_bytes);
        if (!s->src_io || !s->dst_io || !s->buf) {
            ret = hv_err_set(cv->err, -ENOMEM,
                             "convert: out of memory for %u buffers of "
                             "%" PRIu64 " bytes",
                             depth, cv->chunk_bytes);
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
    free(cv->is_chunk_skipped);
    return ret;
}

static int raw_tail_bytes(const char *path, uint64_t sectors_bytes, uint64_t *tail,
                          struct hv_err *err)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return hv_err_errno(err, path, "stat");
    *tail = S_ISREG(st.st_mode) && (uint64_t)st.st_size > sectors_bytes
                ? (uint64_t)st.st_size - sectors_bytes
                : 0;
    if (*tail >= HV_SECTOR_BYTES)
        *tail = 0; /* the bdev saw a different length: ignore */
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
    const uint8_t *src_map = NULL;
    uint64_t src_map_bytes = 0;
    bool is_dst_created = false;
    int ret;

    if (o.dst_format == VHD_FORMAT_AUTO)
        o.dst_format = VHD_FORMAT_VHD;
    if (!o.dst_type)
        o.dst_type = VHD_TYPE_DYNAMIC;
    if (o.dst_format == VHD_FORMAT_VHD && o.dst_type == VHD_TYPE_DIFFERENCING)
        return hv_err_set(err, -EINVAL,
                          "%s: convert writes fixed or dynamic images, "
                          "not differencing ones",
                          dst_path);
    if (!o.depth)
        o.depth = CV_DEFAULT_DEPTH;
    if (access(dst_path, F_OK) == 0)
        return hv_err_set(err, -EEXIST, "%s: already exists; convert writes a new file", dst_path);

    ret = hv_reactor_create(&r);
    if (ret < 0)
        return hv_err_set(err, ret, "convert: cannot create event loop: %s", strerror(-ret));
    /*
     * Source with O_DIRECT, and a raw source also mapped for the chunks the
     * page cache holds (slot_read). The output bypasses the cache: it is
     * made durable at the end anyway, and a many-GiB copy should not evict
     * everything else.
     */
    enum vhd_image_format src_fmt = o.src_format;
    if (src_fmt == VHD_FORMAT_AUTO) {
        ret = vhd_detect_format(src_path, &src_fmt, err);
        if (ret < 0)
            goto out;
    }
    ret = vhd_open_image(r, src_path, src_fmt, true, true, &src, err);
    if (ret < 0)
        goto out;
    if (src_fmt == VHD_FORMAT_RAW) {
        int fd = open(src_path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        /* An optimisation: without the mapping every chunk reads direct. */
        if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
            void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
            if (map != MAP_FAILED) {
                src_map = map;
                src_map_bytes = (uint64_t)st.st_size;
            }
        }
        if (fd >= 0)
            close(fd);
    }
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
            .type = o.dst_type,
            .size_bytes = dst_size,
            .block_bytes = o.block_bytes,
        };
        ret = vhd_create(dst_path, &c, err);
        if (ret < 0)
            goto out;
        is_dst_created = true;
        struct vhd_open_options vo = {0};
        ret = vhd_open(r, dst_path, &vo, &dst, err);
        if (ret == -EINVAL) {
            vo.no_direct_io = true;
            ret = vhd_open(r, dst_path, &vo, &dst, err);
        }
    } else {
        struct bdev_raw_options ro = {
            .create = true,
            .size_bytes = dst_size,
            .use_direct_io = true,
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
        .src = src,
        .dst = dst,
        .src_path = src_path,
        .dst_path = dst_path,
        .size_bytes = size,
        .chunk_bytes = pick_chunk(src, dst),
        .err = err,
        .src_map = src_map,
        .src_map_bytes = src_map_bytes,
    };
    if (cv.src_map) {
        cv.residency = malloc(cv.chunk_bytes / 4096 + 2);
        if (!cv.residency)
            cv.src_map = NULL;
    }
    ret = run_copy(&cv, o.depth, o.show_progress);
    free(cv.residency);
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
    if (src_map)
        munmap((void *)(uintptr_t)src_map, src_map_bytes);
    if (src)
        bdev_close(src);
    if (r)
        hv_reactor_destroy(r);
    if (ret < 0 && is_dst_created)
        unlink(dst_path);
    return ret;
}
