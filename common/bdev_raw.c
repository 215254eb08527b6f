/*
 * A raw file or block device as a bdev. Reads and writes go through libaio
 * (O_DIRECT when asked); FUA is RWF_DSYNC on the write itself, so it costs
 * no extra round trip. Discard, write-zeroes and block status are single
 * fallocate/lseek calls on the file's extent map: they do not wait on data
 * I/O, so they run inline and complete through a deferred call.
 *
 * Buffered writes (a file not opened O_DIRECT) are the exception to "libaio
 * does not block": io_submit runs the filesystem's buffered write path
 * synchronously, on the reactor thread. So they go with RWF_NOWAIT first
 * (served from the page cache when that needs no waiting); when the kernel
 * says -EAGAIN, or does not do NOWAIT buffered writes at all (ext4 answers
 * -EOPNOTSUPP, and then we stop asking), the rest of the write goes to two
 * worker threads (common's hv_workers) that pwritev2 it and complete back
 * on the reactor. The raw_io carries everything a worker needs and embeds
 * its hv_work: no allocation per I/O.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define RAW_WORKERS 2

struct raw_io;

struct raw_bdev {
    struct bdev bd;
    int fd;
    bool is_direct;
    bool is_blockdev;
    bool is_nowait_unsupported;         /* buffered writes: straight to the pool */
    struct hv_aio *aio;
    struct hv_workers *pool;            /* only without O_DIRECT, when writable */
};

struct raw_io {
    struct hv_aio_req req;
    struct hv_deferred deferred;
    struct bdev_io *io;
    struct raw_bdev *r;
    struct hv_work work;                /* on the write workers */
    struct iovec bounce_iov;
    void *bounce;
    uint64_t written;                   /* bytes the NOWAIT attempt managed */
    int status;
    bool is_nowait;                     /* submitted with RWF_NOWAIT */
    bool is_fua_pending;
};

static struct raw_bdev *raw_of(struct bdev *bd)
{
    return hv_container_of(bd, struct raw_bdev, bd);
}

static void finish(struct raw_io *rio, int status)
{
    struct bdev_io *io = rio->io;
    if (rio->bounce) {
        if (status == 0 && io->type == BDEV_IO_READ)
            hv_iov_from_buf(io->iov, io->iovcnt, 0, rio->bounce, io->length);
        free(rio->bounce);
        rio->bounce = NULL;
    }
    io->done(io, status);
}

/* ------------------------------------------------ buffered-write workers */

/* Write what is left of the request (after `rio->written` bytes). */
static int pool_write(struct raw_io *rio)
{
    struct bdev_io *io = rio->io;
    int rwf = (io->flags & BDEV_IO_FUA) ? RWF_DSYNC : 0;
    uint64_t skip = rio->written;

    if (skip == 0) {
        ssize_t n;
        do
            n = pwritev2(rio->r->fd, io->iov, io->iovcnt, (off_t)io->offset, rwf);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            return -errno;
        skip = (uint64_t)n;
    }
    /* Short (rare): finish segment by segment rather than copy the iovec. */
    uint64_t pos = 0;
    for (int i = 0; i < io->iovcnt && skip < io->length; i++) {
        uint64_t len = io->iov[i].iov_len;
        if (pos + len <= skip) {
            pos += len;
            continue;
        }
        uint64_t in = skip - pos;
        while (in < len) {
            const char *base = (const char *)io->iov[i].iov_base + in;
            ssize_t n = pwritev2(rio->r->fd, &(struct iovec){ (void *)base, len - in }, 1,
                                 (off_t)(io->offset + pos + in), rwf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                return -errno;
            if (n == 0)
                return -EIO;
            in += (uint64_t)n;
        }
        pos += len;
        skip = pos;
    }
    return skip == io->length ? 0 : -EIO;
}

static void pool_run(struct hv_work *w)
{
    struct raw_io *rio = hv_container_of(w, struct raw_io, work);
    rio->status = pool_write(rio);
}

static void pool_done(struct hv_work *w)
{
    struct raw_io *rio = hv_container_of(w, struct raw_io, work);
    finish(rio, rio->status);
}

static void pool_queue(struct hv_workers *p, struct raw_io *rio)
{
    rio->work.run = pool_run;
    rio->work.done = pool_done;
    hv_workers_queue(p, &rio->work);
}

/* ---------------------------------------------------------------- I/O */

static void aio_done(struct hv_aio_req *req, long res)
{
    struct raw_io *rio = hv_container_of(req, struct raw_io, req);
    struct bdev_io *io = rio->io;
    int status = 0;

    if (rio->is_nowait && (res == -EAGAIN || res == -EOPNOTSUPP || res == -EINVAL ||
                           (res >= 0 && (uint64_t)res < io->length))) {
        /* NOWAIT could not (or could only partly) do it without blocking. */
        if (res == -EOPNOTSUPP || res == -EINVAL)
            rio->r->is_nowait_unsupported = true;
        rio->written = res > 0 ? (uint64_t)res : 0;
        pool_queue(rio->r->pool, rio);
        return;
    }
    if (res < 0)
        status = (int)res;
    else if ((io->type == BDEV_IO_READ || io->type == BDEV_IO_WRITE) &&
             (uint64_t)res != io->length)
        status = -EIO;              /* a short transfer inside the device */
    finish(rio, status);
}

static void deferred_done(void *arg)
{
    struct raw_io *rio = arg;
    finish(rio, rio->status);
}

static int punch(struct raw_bdev *r, int mode, uint64_t offset, uint64_t length)
{
    if (r->is_blockdev) {
        uint64_t range[2] = { offset, length };
        unsigned long op = (mode & FALLOC_FL_PUNCH_HOLE) ? BLKDISCARD : BLKZEROOUT;
        return ioctl(r->fd, op, range) < 0 ? -errno : 0;
    }
    if (fallocate(r->fd, mode, (off_t)offset, (off_t)length) == 0)
        return 0;
    if (errno == EOPNOTSUPP && !(mode & FALLOC_FL_PUNCH_HOLE)) {
        /* No ZERO_RANGE here: punching a hole also reads back as zeroes. */
        if (fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset,
                      (off_t)length) == 0)
            return 0;
    }
    return -errno;
}

static int block_status(struct raw_bdev *r, struct bdev_io *io)
{
    io->status_depth = 0;
    if (r->is_blockdev) {
        io->status = BDEV_STATUS_ALLOCATED;
        io->status_length = io->length;
        return 0;
    }
    off_t off = (off_t)io->offset, end = (off_t)(io->offset + io->length);
    off_t data = lseek(r->fd, off, SEEK_DATA);
    if (data < 0 && errno != ENXIO)
        return -errno;
    if (data < 0 || data > off) {
        /* A hole up to `data` (or to the end of the file). */
        off_t hole_end = data < 0 ? end : HV_MIN(data, end);
        io->status = BDEV_STATUS_ZERO;
        io->status_depth = -1;
        io->status_length = (uint64_t)(hole_end - off);
    } else {
        off_t hole = lseek(r->fd, off, SEEK_HOLE);
        if (hole < 0)
            return -errno;
        io->status = BDEV_STATUS_ALLOCATED;
        io->status_length = (uint64_t)(HV_MIN(hole, end) - off);
    }
    /* SEEK_* work in filesystem blocks; keep the answer in whole sectors. */
    io->status_length = HV_ALIGN_UP(io->status_length, r->bd.block_bytes);
    if (io->status_length > io->length)
        io->status_length = io->length;
    return 0;
}

static int raw_submit(struct bdev *bd, struct bdev_io *io)
{
    struct raw_bdev *r = raw_of(bd);
    struct raw_io *rio = bdev_io_ctx(io);
    rio->io = io;
    rio->r = r;
    rio->bounce = NULL;
    rio->is_nowait = false;
    rio->written = 0;

    switch (io->type) {
    case BDEV_IO_READ:
    case BDEV_IO_WRITE: {
        const struct iovec *iov = io->iov;
        int iovcnt = io->iovcnt;
        if (r->is_direct && !hv_iov_is_aligned(iov, iovcnt, HV_SECTOR_BYTES)) {
            /* Unaligned caller buffer under O_DIRECT: bounce (rare; the
             * iSCSI target and the engine hand in aligned buffers). */
            rio->bounce = hv_alloc_aligned(io->length);
            if (!rio->bounce)
                return -ENOMEM;
            if (io->type == BDEV_IO_WRITE)
                hv_iov_to_buf(iov, iovcnt, 0, rio->bounce, io->length);
            rio->bounce_iov.iov_base = rio->bounce;
            rio->bounce_iov.iov_len = io->length;
            iov = &rio->bounce_iov;
            iovcnt = 1;
        }
        if (io->type == BDEV_IO_READ) {
            hv_aio_prep_readv(&rio->req, r->fd, iov, iovcnt, io->offset);
        } else {
            int rwf = (io->flags & BDEV_IO_FUA) ? RWF_DSYNC : 0;
            if (r->pool && r->is_nowait_unsupported) {
                /* Completes through the workers: never inside submit. */
                pool_queue(r->pool, rio);
                return 0;
            }
            hv_aio_prep_writev(&rio->req, r->fd, iov, iovcnt, io->offset);
            if (r->pool) {
                rwf |= RWF_NOWAIT;
                rio->is_nowait = true;
            }
            if (rwf)
                hv_aio_set_rw_flags(&rio->req, rwf);
        }
        break;
    }
    case BDEV_IO_FLUSH:
        hv_aio_prep_fdsync(&rio->req, r->fd);
        break;
    case BDEV_IO_DISCARD:
        rio->status = punch(r, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, io->offset,
                            io->length);
        hv_reactor_defer(bd->reactor, &rio->deferred, deferred_done, rio);
        return 0;
    case BDEV_IO_WRITE_ZEROES:
        rio->status = punch(r, (io->flags & BDEV_IO_MAY_UNMAP)
                                   ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                                   : FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                            io->offset, io->length);
        hv_reactor_defer(bd->reactor, &rio->deferred, deferred_done, rio);
        return 0;
    case BDEV_IO_BLOCK_STATUS:
        rio->status = block_status(r, io);
        hv_reactor_defer(bd->reactor, &rio->deferred, deferred_done, rio);
        return 0;
    default:
        return -EOPNOTSUPP;
    }
    rio->req.done = aio_done;
    hv_aio_submit(r->aio, &rio->req);
    return 0;
}

static int raw_close(struct bdev *bd)
{
    struct raw_bdev *r = raw_of(bd);
    int ret = 0;
    hv_workers_destroy(r->pool);
    if (!bd->is_read_only && fdatasync(r->fd) < 0)
        ret = -errno;
    hv_aio_put(r->aio);
    close(r->fd);
    free(r);
    return ret;
}

static int raw_resize(struct bdev *bd, uint64_t size_bytes, struct hv_err *err)
{
    struct raw_bdev *r = raw_of(bd);
    if (r->is_blockdev)
        return hv_err_set(err, -EOPNOTSUPP, "%s: a block device cannot be resized here",
                          bd->name);
    if (size_bytes % bd->block_bytes)
        return hv_err_set(err, -EINVAL, "%s: size %llu is not a multiple of %u", bd->name,
                          (unsigned long long)size_bytes, bd->block_bytes);
    if (ftruncate(r->fd, (off_t)size_bytes) < 0)
        return hv_err_errno(err, bd->name, "ftruncate");
    bd->size_bytes = size_bytes;
    return 0;
}

static void raw_describe(struct bdev *bd, json_t *obj)
{
    struct raw_bdev *r = raw_of(bd);
    json_object_set_new(obj, "format", json_string("raw"));
    json_object_set_new(obj, "direct-io", json_boolean(r->is_direct));
}

static const struct bdev_ops raw_ops = {
    .name = "raw",
    .submit = raw_submit,
    .close = raw_close,
    .resize = raw_resize,
    .describe = raw_describe,
};

int bdev_raw_open(struct hv_reactor *reactor, const char *path,
                  const struct bdev_raw_options *opt, struct bdev **out, struct hv_err *err)
{
    static const struct bdev_raw_options defaults = { 0 };
    struct raw_bdev *r;
    struct stat st;
    int flags, ret;

    if (!opt)
        opt = &defaults;
    r = calloc(1, sizeof(*r));
    if (!r)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", path);
    r->fd = -1;
    flags = (opt->is_read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    if (opt->create)
        flags |= O_CREAT | O_TRUNC;
    if (opt->use_direct_io) {
        r->fd = open(path, flags | O_DIRECT, 0644);
        if (r->fd < 0 && errno == EINVAL)
            hv_debug("%s: O_DIRECT not supported here, using buffered I/O", path);
        else
            r->is_direct = r->fd >= 0;
    }
    if (r->fd < 0)
        r->fd = open(path, flags, 0644);
    if (r->fd < 0) {
        ret = hv_err_errno(err, path, "open");
        goto fail;
    }
    if (opt->create && ftruncate(r->fd, (off_t)opt->size_bytes) < 0) {
        ret = hv_err_errno(err, path, "ftruncate");
        goto fail;
    }
    if (fstat(r->fd, &st) < 0) {
        ret = hv_err_errno(err, path, "fstat");
        goto fail;
    }
    r->is_blockdev = S_ISBLK(st.st_mode);
    if (r->is_blockdev) {
        uint64_t bytes;
        if (ioctl(r->fd, BLKGETSIZE64, &bytes) < 0) {
            ret = hv_err_errno(err, path, "BLKGETSIZE64");
            goto fail;
        }
        r->bd.size_bytes = bytes;
    } else if (S_ISREG(st.st_mode)) {
        r->bd.size_bytes = (uint64_t)st.st_size;
    } else {
        ret = hv_err_set(err, -EINVAL, "%s: not a regular file or block device", path);
        goto fail;
    }
    /* A file that is not a whole number of sectors serves the whole ones. */
    r->bd.size_bytes = HV_ALIGN_DOWN(r->bd.size_bytes, HV_SECTOR_BYTES);
    ret = hv_aio_get(reactor, opt->queue_depth ? opt->queue_depth : 128, &r->aio);
    if (ret < 0) {
        hv_err_set(err, ret, "%s: cannot set up libaio: %s", path, strerror(-ret));
        goto fail;
    }
    if (!r->is_direct && !opt->is_read_only) {
        ret = hv_workers_create(reactor, RAW_WORKERS, path, &r->pool, err);
        if (ret < 0)
            goto fail;
    }
    r->bd.ops = &raw_ops;
    r->bd.reactor = reactor;
    snprintf(r->bd.name, sizeof(r->bd.name), "%s", path);
    r->bd.block_bytes = HV_SECTOR_BYTES;
    r->bd.physical_block_bytes = 4096;
    /* Whole 16-byte units: callers lay bdev_ios (16-aligned) out in arrays
     * of bdev_io_size() strides. */
    r->bd.io_ctx_bytes = sizeof(struct raw_io);
    r->bd.is_read_only = opt->is_read_only;
    r->bd.has_volatile_cache = true;
    r->bd.can_discard = true;
    r->bd.discard_zeroes = !r->is_blockdev;
    /* A raw file has no identity of its own; its inode is stable across
     * restarts, which is what the guest's disk id needs. */
    uint64_t id[2] = { (uint64_t)st.st_dev, (uint64_t)st.st_ino };
    hv_xxh3_128(id, sizeof(id), r->bd.uuid);
    *out = &r->bd;
    return 0;
fail:
    hv_workers_destroy(r->pool);
    if (r->aio)
        hv_aio_put(r->aio);
    if (r->fd >= 0)
        close(r->fd);
    free(r);
    return ret;
}
