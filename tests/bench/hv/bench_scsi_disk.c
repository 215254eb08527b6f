/*
 * What the SCSI emulation costs on the I/O path: random 4 KiB reads (and
 * writes) at a fixed queue depth, issued once straight to a raw-file bdev and
 * once as READ(10)/WRITE(10) CDBs through scsi_controller_execute() to a disk
 * on the same bdev, in the same run. Prints both rates and their ratio.
 *
 *   bench_scsi_disk FILE [seconds] [queue-depth] [block-bytes]
 */
#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "scsi.h"

struct slot {
    struct bdev_io *io;
    struct scsi_task task;
    struct iovec iov;
    void *buf;
};

static struct hv_reactor *reactor;
static struct bdev *bd;
static struct scsi_controller *ctl;
static struct scsi_nexus nexus = { .initiator = "iqn.bench,i,0x1", .id = 1 };
static uint64_t done_ops, deadline_ns, rng = 88172645463325252ull, blocks_total;
static uint32_t io_bytes;
static bool is_write, is_stopping;
static unsigned in_flight;

static uint64_t next_block(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % (blocks_total / (io_bytes / 512)) * (io_bytes / 512);
}

static void bdev_issue(struct slot *s);

static void bdev_done(struct bdev_io *io, int status)
{
    struct slot *s = io->cb_arg;
    if (status < 0) {
        fprintf(stderr, "bdev I/O failed: %s\n", strerror(-status));
        exit(1);
    }
    done_ops++;
    in_flight--;
    bdev_issue(s);
}

static void bdev_issue(struct slot *s)
{
    if (hv_now_ns() >= deadline_ns) {
        if (!in_flight)
            is_stopping = true;
        return;
    }
    memset(s->io, 0, sizeof(*s->io));
    s->io->type = is_write ? BDEV_IO_WRITE : BDEV_IO_READ;
    s->io->offset = next_block() * 512;
    s->io->length = io_bytes;
    s->io->iov = &s->iov;
    s->io->iovcnt = 1;
    s->io->done = bdev_done;
    s->io->cb_arg = s;
    in_flight++;
    if (bdev_submit(bd, s->io) < 0)
        exit(1);
}

static void scsi_issue(struct slot *s);

static void scsi_done(struct scsi_task *t)
{
    struct slot *s = t->transport_arg;
    /* the nexus' power-on unit attention comes back once: issue again */
    bool is_ua = t->status == SCSI_STATUS_CHECK_CONDITION && (t->sense[2] & 0x0F) == 0x6;
    if (t->status != SCSI_STATUS_GOOD && !is_ua) {
        fprintf(stderr, "SCSI command failed: status 0x%02x\n", t->status);
        exit(1);
    }
    done_ops += !is_ua;
    in_flight--;
    scsi_issue(s);
}

static void scsi_issue(struct slot *s)
{
    if (hv_now_ns() >= deadline_ns) {
        if (!in_flight)
            is_stopping = true;
        return;
    }
    struct scsi_task *t = &s->task;
    memset(t, 0, offsetof(struct scsi_task, lu_ctx));
    t->nexus = &nexus;
    t->cdb[0] = is_write ? 0x2A : 0x28;
    hv_put_be32(t->cdb + 2, (uint32_t)next_block());
    hv_put_be16(t->cdb + 7, (uint16_t)(io_bytes / 512));
    t->cdb_len = 10;
    t->task_attr = SCSI_TASK_ATTR_SIMPLE;
    t->expected_bytes = io_bytes;
    if (is_write) {
        t->dir = SCSI_DIR_OUT;
        t->out_iov = &s->iov;
        t->out_iovcnt = 1;
        t->out_bytes = io_bytes;
    } else {
        t->dir = SCSI_DIR_IN;
        t->in_iov = &s->iov;
        t->in_iovcnt = 1;
    }
    t->done = scsi_done;
    t->transport_arg = s;
    in_flight++;
    scsi_controller_execute(ctl, t);
}

static double run(bool through_scsi, struct slot *slots, unsigned depth, double seconds)
{
    done_ops = 0;
    is_stopping = false;
    uint64_t start = hv_now_ns();
    deadline_ns = start + (uint64_t)(seconds * 1e9);
    for (unsigned i = 0; i < depth; i++) {
        if (through_scsi)
            scsi_issue(&slots[i]);
        else
            bdev_issue(&slots[i]);
    }
    while (!is_stopping)
        hv_reactor_run_once(reactor, 100);
    return (double)done_ops / ((double)(hv_now_ns() - start) / 1e9);
}

int main(int argc, char **argv)
{
    struct hv_err err = { 0 };
    if (argc < 2) {
        fprintf(stderr, "usage: bench_scsi_disk FILE [seconds] [queue-depth] [block-bytes]\n");
        return 2;
    }
    double seconds = argc > 2 ? atof(argv[2]) : 3;
    unsigned depth = argc > 3 ? (unsigned)atoi(argv[3]) : 32;
    io_bytes = argc > 4 ? (uint32_t)atoi(argv[4]) : 4096;
    struct bdev_raw_options opt = { .use_direct_io = true, .queue_depth = 256 };
    if (hv_reactor_create(&reactor) < 0 || bdev_raw_open(reactor, argv[1], &opt, &bd, &err) < 0) {
        fprintf(stderr, "bench_scsi_disk: %s\n", hv_err_msg(&err, err.code));
        return 1;
    }
    blocks_total = bd->size_bytes / 512;
    struct scsi_lu *lu;
    if (scsi_controller_create(reactor, "bench", &ctl) < 0 ||
        scsi_disk_create(bd, NULL, &lu, &err) < 0 || scsi_controller_attach(ctl, 0, lu) < 0) {
        fprintf(stderr, "bench_scsi_disk: cannot set up the disk\n");
        return 1;
    }
    scsi_controller_nexus_add(ctl, &nexus);
    struct slot *slots = calloc(depth, sizeof(*slots));
    for (unsigned i = 0; i < depth; i++) {
        slots[i].io = calloc(1, bdev_io_size(bd));
        slots[i].buf = hv_alloc_aligned(io_bytes);
        memset(slots[i].buf, 0x5A, io_bytes);
        slots[i].iov.iov_base = slots[i].buf;
        slots[i].iov.iov_len = io_bytes;
    }
    printf("%u-byte %s, queue depth %u, %.1f s each, O_DIRECT where the file system has it, on %s\n", io_bytes,
           "random I/O", depth, seconds, argv[1]);
    for (int w = 0; w < 2; w++) {
        is_write = w == 1;
        double direct = run(false, slots, depth, seconds);
        double scsi;
        scsi = run(true, slots, depth, seconds);
        printf("%-6s bdev %9.0f IOPS   through SCSI %9.0f IOPS   ratio %.3f\n",
               is_write ? "write" : "read", direct, scsi, scsi / direct);
    }
    return 0;
}
