/* The generic half of the bdev: checks every device gets for free, and the
 * synchronous helpers for offline tools. */
#include "common.h"

#include <errno.h>
#include <stdlib.h>

int bdev_submit(struct bdev *bd, struct bdev_io *io)
{
    uint64_t bs = bd->block_bytes ? bd->block_bytes : HV_SECTOR_BYTES;
    if (io->type != BDEV_IO_FLUSH) {
        if (io->offset % bs || io->length % bs)
            return -EINVAL;
        if (io->offset > bd->size_bytes || io->length > bd->size_bytes - io->offset)
            return -ERANGE;
        if (io->length == 0)
            return -EINVAL;
        if (bd->max_io_bytes && io->length > bd->max_io_bytes &&
            (io->type == BDEV_IO_READ || io->type == BDEV_IO_WRITE))
            return -E2BIG;
    }
    if (io->type == BDEV_IO_READ || io->type == BDEV_IO_WRITE) {
        if (hv_iov_length(io->iov, io->iovcnt) < io->length)
            return -EINVAL;
    }
    if (bd->is_read_only && (io->type == BDEV_IO_WRITE || io->type == BDEV_IO_DISCARD ||
                             io->type == BDEV_IO_WRITE_ZEROES))
        return -EROFS;
    if (io->type == BDEV_IO_BLOCK_STATUS) {
        io->status = 0;
        io->status_length = 0;
        io->status_depth = -1;
    }
    return bd->ops->submit(bd, io);
}

int bdev_close(struct bdev *bd)
{
    return bd ? bd->ops->close(bd) : 0;
}

struct sync_wait {
    bool done;
    int status;
};

static void sync_done(struct bdev_io *io, int status)
{
    struct sync_wait *w = io->cb_arg;
    w->status = status;
    w->done = true;
}

static int run_sync(struct bdev *bd, struct bdev_io *io)
{
    struct sync_wait w = { false, 0 };
    io->done = sync_done;
    io->cb_arg = &w;
    int ret = bdev_submit(bd, io);
    if (ret < 0)
        return ret;
    ret = hv_reactor_run_until(bd->reactor, &w.done);
    return ret < 0 ? ret : w.status;
}

static struct bdev_io *new_io(struct bdev *bd, enum bdev_io_type type, uint64_t offset,
                              uint64_t length, uint32_t flags)
{
    struct bdev_io *io = calloc(1, bdev_io_size(bd));
    if (io) {
        io->type = type;
        io->offset = offset;
        io->length = length;
        io->flags = flags;
    }
    return io;
}

static int rw_sync(struct bdev *bd, enum bdev_io_type type, uint64_t offset, void *buf,
                   uint64_t length, uint32_t flags)
{
    struct iovec iov = { .iov_base = buf, .iov_len = length };
    struct bdev_io *io = new_io(bd, type, offset, length, flags);
    if (!io)
        return -ENOMEM;
    io->iov = &iov;
    io->iovcnt = 1;
    int ret = run_sync(bd, io);
    free(io);
    return ret;
}

int bdev_read_sync(struct bdev *bd, uint64_t offset, void *buf, uint64_t length)
{
    return rw_sync(bd, BDEV_IO_READ, offset, buf, length, 0);
}

int bdev_write_sync(struct bdev *bd, uint64_t offset, const void *buf, uint64_t length,
                    uint32_t flags)
{
    return rw_sync(bd, BDEV_IO_WRITE, offset, (void *)buf, length, flags);
}

int bdev_request_sync(struct bdev *bd, enum bdev_io_type type, uint64_t offset,
                      uint64_t length, uint32_t flags)
{
    struct bdev_io *io = new_io(bd, type, offset, length, flags);
    if (!io)
        return -ENOMEM;
    int ret = run_sync(bd, io);
    free(io);
    return ret;
}

int bdev_flush_sync(struct bdev *bd)
{
    return bdev_request_sync(bd, BDEV_IO_FLUSH, 0, 0, 0);
}

int bdev_block_status_sync(struct bdev *bd, uint64_t offset, uint64_t length,
                           uint32_t *status, uint64_t *status_length, int *depth)
{
    struct bdev_io *io = new_io(bd, BDEV_IO_BLOCK_STATUS, offset, length, 0);
    if (!io)
        return -ENOMEM;
    int ret = run_sync(bd, io);
    if (ret == 0) {
        *status = io->status;
        *status_length = io->status_length;
        if (depth)
            *depth = io->status_depth;
    }
    free(io);
    return ret;
}
