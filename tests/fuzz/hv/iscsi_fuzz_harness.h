/*
 * Shared by the iSCSI fuzz targets: one reactor, a controller with a
 * RAM-backed emulated disk at LUN 0, a directory with an open target and a
 * CHAP-protected one, and a socket-less server. Each input gets a fresh
 * connection that is fed bytes through iscsi_conn_rx (the same receive
 * path the socket uses), then closed and drained, so leaks and stale
 * pointers show up under ASan at once.
 */
#ifndef HVSTOR_ISCSI_FUZZ_HARNESS_H
#define HVSTOR_ISCSI_FUZZ_HARNESS_H

#include <errno.h>
#include <stdlib.h>

#include "iscsi/iscsi_int.h"

#define FUZZ_DISK_BYTES (1024 * 1024)

struct ram_io {
    struct hv_deferred d;
};

static uint8_t *fuzz_ram;

static void ram_complete(void *arg)
{
    struct bdev_io *io = arg;
    io->done(io, 0);
}

static int ram_submit(struct bdev *bd, struct bdev_io *io)
{
    struct ram_io *ctx = bdev_io_ctx(io);
    switch (io->type) {
    case BDEV_IO_READ:
        hv_iov_from_buf(io->iov, io->iovcnt, 0, fuzz_ram + io->offset, io->length);
        break;
    case BDEV_IO_WRITE:
        hv_iov_to_buf(io->iov, io->iovcnt, 0, fuzz_ram + io->offset, io->length);
        break;
    case BDEV_IO_DISCARD:
    case BDEV_IO_WRITE_ZEROES:
        memset(fuzz_ram + io->offset, 0, io->length);
        break;
    case BDEV_IO_BLOCK_STATUS:
        io->status = BDEV_STATUS_ALLOCATED;
        io->status_length = io->length;
        io->status_depth = 0;
        break;
    default:
        break;
    }
    memset(&ctx->d, 0, sizeof(ctx->d));
    hv_reactor_defer(bd->reactor, &ctx->d, ram_complete, io);
    return 0;
}

static int ram_close(struct bdev *bd)
{
    return 0;
}

static const struct bdev_ops ram_ops = { .name = "ram", .submit = ram_submit, .close = ram_close };

static struct hv_reactor *fuzz_reactor;
static struct scsi_controller *fuzz_ctl;
static struct iscsi_server *fuzz_server;
static struct bdev fuzz_bdev;

static int fuzz_lookup(void *arg, const char *target, const char *initiator,
                       struct iscsi_auth *auth, struct scsi_controller **ctl)
{
    if (strcmp(initiator, "iqn.fuzz:denied") == 0)
        return -EACCES;
    if (strcmp(target, "iqn.fuzz:open") == 0) {
        *ctl = fuzz_ctl;
        return 0;
    }
    if (strcmp(target, "iqn.fuzz:chap") == 0) {
        auth->is_chap_required = true;
        strcpy(auth->chap_user, "user");
        strcpy(auth->chap_secret, "secret");
        auth->is_mutual = true;
        strcpy(auth->mutual_user, "target");
        strcpy(auth->mutual_secret, "target-secret");
        *ctl = fuzz_ctl;
        return 0;
    }
    return -ENOENT;
}

static void fuzz_list(void *arg, const char *initiator,
                      void (*emit)(void *ctx, const char *target), void *ctx)
{
    emit(ctx, "iqn.fuzz:open");
    emit(ctx, "iqn.fuzz:chap");
}

static const struct iscsi_directory_ops fuzz_dir = { .lookup = fuzz_lookup, .list = fuzz_list };

static void fuzz_setup(void)
{
    struct scsi_lu *lu;
    struct hv_err err;

    if (fuzz_reactor)
        return;
    hv_log_set_level(HV_LOG_ERROR);
    fuzz_ram = calloc(1, FUZZ_DISK_BYTES);
    if (hv_reactor_create(&fuzz_reactor) < 0 || !fuzz_ram)
        abort();
    fuzz_bdev.ops = &ram_ops;
    fuzz_bdev.reactor = fuzz_reactor;
    strcpy(fuzz_bdev.name, "fuzz-ram");
    fuzz_bdev.size_bytes = FUZZ_DISK_BYTES;
    fuzz_bdev.block_bytes = 512;
    fuzz_bdev.physical_block_bytes = 4096;
    fuzz_bdev.io_ctx_bytes = sizeof(struct ram_io);
    fuzz_bdev.can_discard = true;
    fuzz_bdev.discard_zeroes = true;
    if (scsi_controller_create(fuzz_reactor, "fuzz", &fuzz_ctl) < 0 ||
        scsi_disk_create(&fuzz_bdev, NULL, &lu, &err) < 0 ||
        scsi_controller_attach(fuzz_ctl, 0, lu) < 0 ||
        iscsi_server_create_detached(fuzz_reactor, &fuzz_dir, NULL, &fuzz_server) < 0)
        abort();
}

static bool fuzz_conn_alive(const struct iscsi_conn *c)
{
    for (const struct iscsi_conn *o = fuzz_server->conns; o; o = o->next) {
        if (o == c)
            return true;
    }
    return false;
}

/* Feed `data` in pieces whose sizes come from `split` (to exercise partial
 * headers, digests and data), let the tasks finish, then tear down. */
static void fuzz_run_conn(const uint8_t *data, size_t size, uint8_t split)
{
    struct iscsi_conn *c = iscsi_conn_new(fuzz_server, -1);
    if (!c)
        abort();
    size_t step = split ? split : size;
    /* A connection that closes is freed at a later turn: look it up in the
     * server's list before touching it again. */
    for (size_t off = 0; off < size && fuzz_conn_alive(c) && !c->is_closing; off += step) {
        iscsi_conn_rx(c, data + off, HV_MIN(step, size - off));
        hv_reactor_run_once(fuzz_reactor, 0);
    }
    for (int i = 0; i < 8; i++)
        hv_reactor_run_once(fuzz_reactor, 0);
    if (fuzz_conn_alive(c))
        iscsi_conn_close(c, "fuzz input done");
    for (int i = 0; i < 64 && fuzz_server->conns; i++)
        hv_reactor_run_once(fuzz_reactor, 0);
    if (fuzz_server->conns)
        abort();                        /* a task never completed */
}

#endif
