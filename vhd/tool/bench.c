/*
 * vhd bench: the engine's own load generator, with qemu-img bench's flags,
 * meaning and summary, so that the same command line runs against hvstor
 * and against qemu and the two "Run completed in" lines compare directly.
 *
 * Like qemu-img bench: `count` requests of `bufsize` bytes, `depth` in
 * flight, the first at `offset`, each next one `step` further on, wrapping
 * so a request never passes the end (qemu master's rule: modulo
 * image size - bufsize). -t none is O_DIRECT, -t writeback buffered I/O.
 * All buffers and requests are allocated before the clock starts.
 */
#include "tool.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static const char bench_usage[] =
    "Usage: vhd bench [-w] [-t none|writeback] [-s SIZE] [-d DEPTH] [-c COUNT]\n"
    "                 [-S STEP] [-o OFFSET] [-f raw|vhd] [--pattern=BYTE]\n"
    "                 [--flush-interval=N] [--no-drain] [-q] FILE\n"
    "\n"
    "Run a simple I/O benchmark through the VHD engine (or the raw bdev for a\n"
    "raw FILE), with qemu-img bench's flags and output.\n"
    "\n"
    "  -c, --count COUNT      number of requests (75000)\n"
    "  -d, --depth DEPTH      requests in flight (64)\n"
    "  -s, --size SIZE        bytes per request (4096)\n"
    "  -S, --step SIZE        distance between request offsets (SIZE)\n"
    "  -o, --offset OFFSET    offset of the first request (0)\n"
    "  -w, --write            write instead of read\n"
    "  -t, --cache MODE       none (O_DIRECT) or writeback (default)\n"
    "  -f FMT                 image format: vhd or raw (detected by default)\n"
    "  --pattern=BYTE         fill written buffers with this byte (0)\n"
    "  --flush-interval=N     flush after every N requests\n"
    "  --no-drain             with --flush-interval: do not wait for in-flight\n"
    "                         requests before the flush\n"
    "  -q, --quiet            print nothing but errors\n"
    "  -n, -i AIO, -U         accepted for qemu-img compatibility (always libaio)\n"
    "  -h, --help             this text\n";

struct bench {
    struct bdev *bd;
    const char *path;
    uint64_t count;
    uint64_t submitted;
    unsigned in_flight;
    unsigned depth;
    uint64_t bufsize;
    uint64_t step;
    uint64_t offset;
    uint64_t image_size;
    bool is_write;
    uint64_t flush_interval;
    bool is_drain_on_flush;
    bool is_flush_owed;
    bool is_flushing;
    bool is_done;
    int error;
    struct bdev_io *flush_io;
    struct bdev_io **free_ios; /* stack of idle requests */
    unsigned free_count;
    struct iovec iov; /* one buffer shared by all, like qemu */
};

static void bench_pump(struct bench *b);

static void bench_fail(struct bench *b, int status, const char *op, uint64_t offset)
{
    if (!b->error) {
        b->error = status;
        tool_error("%s: %s at offset %" PRIu64 ": %s", b->path, op, offset, strerror(-status));
    }
}

static void bench_flush_done(struct bdev_io *io, int status)
{
    struct bench *b = io->cb_arg;
    b->is_flushing = false;
    if (status < 0)
        bench_fail(b, status, "flush", 0);
    bench_pump(b);
}

static void bench_req_done(struct bdev_io *io, int status)
{
    struct bench *b = io->cb_arg;
    b->in_flight--;
    b->free_ios[b->free_count++] = io;
    if (status < 0)
        bench_fail(b, status, b->is_write ? "write" : "read", io->offset);
    bench_pump(b);
}

static void bench_pump(struct bench *b)
{
    for (;;) {
        if (b->error || (b->submitted == b->count && !b->is_flush_owed)) {
            if (b->in_flight == 0 && !b->is_flushing)
                b->is_done = true;
            return;
        }
        if (b->is_flushing && b->is_drain_on_flush)
            return;
        if (b->is_flush_owed) {
            /* qemu-img bench waits for the requests in flight before the
             * flush unless --no-drain; one flush at a time either way. */
            if (b->is_flushing || (b->is_drain_on_flush && b->in_flight))
                return;
            struct bdev_io *f = b->flush_io;
            memset(f, 0, sizeof(*f));
            f->type = BDEV_IO_FLUSH;
            f->done = bench_flush_done;
            f->cb_arg = b;
            b->is_flush_owed = false;
            b->is_flushing = true;
            int ret = bdev_submit(b->bd, f);
            if (ret < 0) {
                b->is_flushing = false;
                bench_fail(b, ret, "flush", 0);
            }
            continue;
        }
        if (!b->free_count)
            return;
        struct bdev_io *io = b->free_ios[--b->free_count];
        uint64_t offset = b->offset;
        b->offset += b->step;
        if (b->image_size <= b->bufsize)
            b->offset = 0;
        else
            b->offset %= b->image_size - b->bufsize;
        io->type = b->is_write ? BDEV_IO_WRITE : BDEV_IO_READ;
        io->flags = 0;
        io->offset = offset;
        io->length = b->bufsize;
        io->iov = &b->iov;
        io->iovcnt = 1;
        io->done = bench_req_done;
        io->cb_arg = b;
        b->submitted++;
        b->in_flight++;
        int ret = bdev_submit(b->bd, io);
        if (ret < 0) {
            b->in_flight--;
            b->free_ios[b->free_count++] = io;
            bench_fail(b, ret, b->is_write ? "write" : "read", offset);
            continue;
        }
        if (b->flush_interval && b->submitted % b->flush_interval == 0)
            b->is_flush_owed = true;
    }
}

int cmd_bench(int argc, char **argv)
{
    enum { OPT_PATTERN = 256, OPT_FLUSH, OPT_NO_DRAIN };
    static const struct option opts[] = {
        {"count", required_argument, NULL, 'c'},
        {"depth", required_argument, NULL, 'd'},
        {"size", required_argument, NULL, 's'},
        {"step", required_argument, NULL, 'S'},
        {"offset", required_argument, NULL, 'o'},
        {"write", no_argument, NULL, 'w'},
        {"cache", required_argument, NULL, 't'},
        {"quiet", no_argument, NULL, 'q'},
        {"pattern", required_argument, NULL, OPT_PATTERN},
        {"flush-interval", required_argument, NULL, OPT_FLUSH},
        {"no-drain", no_argument, NULL, OPT_NO_DRAIN},
        {0},
    };
    struct tool_cli cli = {.usage = bench_usage, .shortopts = "c:d:s:S:o:wt:f:qni:U",
                           .longopts = opts, .operands = 1,
                           .operand_error = "expected one FILE operand"};
    struct bench b = {
        .count = 75000,
        .depth = 64,
        .bufsize = 4096,
        .is_drain_on_flush = true,
    };
    enum vhd_image_format fmt = VHD_FORMAT_AUTO;
    bool is_direct = false, is_quiet = false, has_step = false;
    uint64_t pattern = 0, v;
    int c;
    while ((c = tool_getopt(&cli, argc, argv)) >= 0) {
        switch (c) {
        case 'c':
            if (hv_parse_u64(optarg, &b.count) < 0 || b.count == 0 || b.count > INT32_MAX) {
                tool_error("-c '%s': expected a request count from 1", optarg);
                return 1;
            }
            break;
        case 'd':
            if (hv_parse_u64(optarg, &v) < 0 || v == 0 || v > 4096) {
                tool_error("-d '%s': expected a depth from 1 to 4096", optarg);
                return 1;
            }
            b.depth = (unsigned)v;
            break;
        case 's':
            if (tool_parse_size("-s", optarg, &b.bufsize) < 0)
                return 1;
            if (!b.bufsize || b.bufsize % HV_SECTOR_BYTES || b.bufsize > INT32_MAX) {
                tool_error("-s '%s': expected a multiple of 512 bytes up to 2 GiB", optarg);
                return 1;
            }
            break;
        case 'S':
            if (tool_parse_size("-S", optarg, &b.step) < 0)
                return 1;
            if (b.step % HV_SECTOR_BYTES) {
                tool_error("-S '%s': expected a multiple of 512 bytes", optarg);
                return 1;
            }
            has_step = true;
            break;
        case 'o':
            if (tool_parse_size("-o", optarg, &b.offset) < 0)
                return 1;
            if (b.offset % HV_SECTOR_BYTES) {
                tool_error("-o '%s': expected a multiple of 512 bytes", optarg);
                return 1;
            }
            break;
        case 'w':
            b.is_write = true;
            break;
        case 't':
            if (!strcmp(optarg, "none") || !strcmp(optarg, "directsync")) {
                is_direct = true;
            } else if (!strcmp(optarg, "writeback") || !strcmp(optarg, "writethrough")) {
                is_direct = false;
            } else {
                tool_error("-t '%s': expected none or writeback", optarg);
                return 1;
            }
            break;
        case 'f':
            if (vhd_image_format_parse(optarg, &fmt) < 0) {
                tool_error("-f '%s': expected raw or vhd", optarg);
                return 1;
            }
            break;
        case 'q':
            is_quiet = true;
            break;
        case 'n':
        case 'i':
        case 'U':
            break;
        case OPT_PATTERN:
            if (hv_parse_u64(optarg, &pattern) < 0 || pattern > 255) {
                tool_error("--pattern '%s': expected a byte value 0-255", optarg);
                return 1;
            }
            break;
        case OPT_FLUSH:
            if (hv_parse_u64(optarg, &b.flush_interval) < 0 || b.flush_interval > INT32_MAX) {
                tool_error("--flush-interval '%s': expected a request count", optarg);
                return 1;
            }
            break;
        case OPT_NO_DRAIN:
            b.is_drain_on_flush = false;
            break;
        }
    }
    if (c == TOOL_OPT_EXIT)
        return cli.exit_status;
    b.path = argv[optind];
    if (!has_step)
        b.step = b.bufsize;
    if (b.flush_interval && b.is_drain_on_flush && b.flush_interval < b.depth) {
        tool_error("flush interval can't be smaller than depth");
        return 1;
    }
    if (!b.flush_interval && !b.is_drain_on_flush) {
        tool_error("--no-drain requires --flush-interval");
        return 1;
    }

    struct hv_reactor *r = NULL;
    struct hv_err err = {0};
    int ret = hv_reactor_create(&r), status = 1;
    void *buf = NULL;
    if (ret < 0) {
        tool_error("cannot create event loop: %s", strerror(-ret));
        return 1;
    }
    ret = vhd_open_image(r, b.path, fmt, !b.is_write, is_direct, &b.bd, &err);
    if (ret < 0) {
        tool_error("%s", hv_err_msg(&err, ret));
        goto out;
    }
    b.image_size = b.bd->size_bytes;
    if (b.bufsize > b.image_size || b.offset > b.image_size - b.bufsize) {
        tool_error("%s: requests of %" PRIu64 " bytes from offset %" PRIu64 " do not fit "
                   "the %" PRIu64 "-byte image",
                   b.path, b.bufsize, b.offset, b.image_size);
        goto out;
    }
    buf = hv_alloc_aligned(b.bufsize);
    b.free_ios = calloc(b.depth, sizeof(*b.free_ios));
    b.flush_io = calloc(1, bdev_io_size(b.bd));
    if (!buf || !b.free_ios || !b.flush_io) {
        tool_error("out of memory");
        goto out;
    }
    memset(buf, (int)pattern, b.bufsize);
    b.iov.iov_base = buf;
    b.iov.iov_len = b.bufsize;
    for (unsigned i = 0; i < b.depth; i++) {
        b.free_ios[i] = calloc(1, bdev_io_size(b.bd));
        if (!b.free_ios[i]) {
            tool_error("out of memory");
            goto out;
        }
        b.free_count++;
    }
    if (!is_quiet) {
        printf("Sending %" PRIu64 " %s requests, %" PRIu64 " bytes each, %u in parallel "
               "(starting at offset %" PRIu64 ", step size %" PRIu64 ")\n",
               b.count, b.is_write ? "write" : "read", b.bufsize, b.depth, b.offset, b.step);
        if (b.flush_interval)
            printf("Sending flush every %" PRIu64 " requests\n", b.flush_interval);
        fflush(stdout);
    }
    uint64_t t0 = hv_now_ns();
    bench_pump(&b);
    while (!b.is_done) {
        ret = hv_reactor_run_once(r, -1);
        if (ret < 0) {
            tool_error("event loop: %s", strerror(-ret));
            goto out;
        }
    }
    uint64_t t1 = hv_now_ns();
    if (b.error)
        goto out;
    /* Closing writes back what the engine keeps in memory (BAT, footer);
     * qemu-img bench does not time its close either, but we show it. */
    struct bdev *bd = b.bd;
    b.bd = NULL;
    ret = bdev_close(bd);
    uint64_t t2 = hv_now_ns();
    if (ret < 0) {
        tool_error("%s: close: %s", b.path, strerror(-ret));
        goto out;
    }
    if (!is_quiet) {
        double secs = (double)(t1 - t0) / 1e9;
        printf("Run completed in %3.3f seconds.\n", secs);
        printf("(%.1f MiB/s, %.0f requests/s; close took %.3f seconds)\n",
               secs > 0 ? (double)(b.count * b.bufsize) / secs / (1024.0 * 1024) : 0.0,
               secs > 0 ? (double)b.count / secs : 0.0, (double)(t2 - t1) / 1e9);
    }
    status = 0;
out:
    if (b.bd) {
        /* Requests may still be in flight after an error: let them finish. */
        while (b.in_flight || b.is_flushing)
            if (hv_reactor_run_once(r, -1) < 0)
                break;
        bdev_close(b.bd);
    }
    if (b.free_ios) {
        for (unsigned i = 0; i < b.depth; i++)
            free(b.free_ios[i]);
    }
    free(b.free_ios);
    free(b.flush_io);
    free(buf);
    hv_reactor_destroy(r);
    return status;
}
