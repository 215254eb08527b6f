/*
 * Crash consistency of the VHD engine, proved on real files.
 *
 * A random guest workload (writes of random sizes and offsets, many of them
 * allocating blocks, flushes, discards, write-zeroes, several in flight at
 * once) runs through vhd_open on a dynamic image and on a differencing image
 * over a parent with data. The engine's vhd_io_observer records every write
 * (with its data) and every fdatasync the engine issues to the file, and
 * when each was submitted and completed, on one clock shared with the guest's
 * own requests.
 *
 * A crash at instant P leaves on disk: the initial file with, in submission
 * order, every durable write (completed before an fdatasync that was
 * submitted after it and completed before P, or a RWF_DSYNC write completed
 * before P) and any subset of the other writes submitted before P, each
 * possibly torn at sector granularity (a disk cache persists sectors in any
 * order). For each of
 * many such states, materialized as a real file next to the parent:
 *   - vhd_check finds no corruption (leaked space is allowed);
 *   - vhd_open succeeds, and every sector whose last guest write (or
 *     write-zeroes) was acknowledged before the last guest FLUSH that
 *     completed before P (or was a FUA write acknowledged before P), and
 *     not touched by anything later, reads back exactly that data;
 *   - after closing, vhd_check still finds no corruption.
 * A third image, dynamic, is grown online (the engine's resize op, its BAT
 * moved after the last block) halfway through its workload: its crash
 * states must also read at the old size before the resize began, at the new
 * one after it returned.
 * Any failure prints the seed and the crash state, which reproduce it.
 */
#include "testlib.h"
#include "vhd.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DISK_BYTES (8u * 1024 * 1024)
#define BLOCK_BYTES (512u * 1024)
#define SECTORS (DISK_BYTES / 512)
#define GUEST_OPS 360
#define MAX_BATCH 6
#define STATES_PER_IMAGE 600

/* ------------------------------------------------------------ recording */

struct ewrite { /* one engine file I/O */
    bool is_sync;
    bool is_dsync; /* write durable when it completes (RWF_DSYNC) */
    uint64_t offset;
    uint32_t length;
    uint8_t *data;
    int seq;
    long submit_ev;
    long complete_ev; /* -1: never completed */
    long res;
};

enum gop_type { G_WRITE, G_ZERO, G_DISCARD, G_FLUSH };

struct gop { /* one guest request */
    enum gop_type type;
    uint32_t sector;
    uint32_t count;
    uint8_t *data;
    bool is_fua; /* write: durable when acknowledged */
    long submit_ev;
    long complete_ev;
    int status;
};

static long g_clock;
static struct ewrite *g_ew;
static int g_ew_count, g_ew_cap;
static bool g_recording;

static void die(const char *fmt, ...) HV_PRINTF(1, 2);
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void obs_submit(void *arg, int seq, bool is_sync, bool is_fua, uint64_t offset,
                       const struct iovec *iov, int iovcnt)
{
    if (!g_recording)
        return;
    if (g_ew_count == g_ew_cap) {
        g_ew_cap = g_ew_cap ? g_ew_cap * 2 : 1024;
        g_ew = realloc(g_ew, (size_t)g_ew_cap * sizeof(*g_ew));
        if (!g_ew)
            die("out of memory");
    }
    struct ewrite *w = &g_ew[g_ew_count++];
    memset(w, 0, sizeof(*w));
    w->is_sync = is_sync;
    w->offset = offset;
    w->seq = seq;
    w->submit_ev = g_clock++;
    w->complete_ev = -1;
    if (!is_sync) {
        /* RWF_DSYNC (a FUA request's data): durable once it completes. */
        w->is_dsync = is_fua;
        size_t len = hv_iov_length(iov, iovcnt);
        w->length = (uint32_t)len;
        w->data = malloc(len ? len : 1);
        if (!w->data)
            die("out of memory");
        hv_iov_to_buf(iov, iovcnt, 0, w->data, len);
    }
}

static void obs_complete(void *arg, int seq, long res)
{
    if (!g_recording)
        return;
    for (int i = g_ew_count - 1; i >= 0; i--) {
        if (g_ew[i].seq == seq && g_ew[i].complete_ev < 0) {
            g_ew[i].complete_ev = g_clock++;
            g_ew[i].res = res;
            return;
        }
    }
    die("observer: completion of unknown engine request %d", seq);
}

static const struct vhd_io_observer g_observer = {
    .on_submit = obs_submit,
    .on_complete = obs_complete,
};

/* --------------------------------------------------------------- workload */

struct run {
    struct gop *ops;
    int op_count;
    int pending;
    bool is_done;
    /* Online growth between two batches, once `grow_after` requests were
     * issued (0: none): the engine's resize op, as hvstord runs it with the
     * requests drained. Its own writes are recorded like any others. */
    uint64_t grow_to;
    int grow_after;
    long grow_start_ev;
    long grow_end_ev;
};

struct gio {
    struct run *run;
    struct gop *op;
    struct iovec iov;
};

static void gop_done(struct bdev_io *io, int status)
{
    struct gio *g = io->cb_arg;
    g->op->complete_ev = g_clock++;
    g->op->status = status;
    if (status < 0)
        die("guest %s at sector %u+%u failed: %s",
            g->op->type == G_WRITE   ? "write"
            : g->op->type == G_FLUSH ? "flush"
                                     : "zero/discard",
            g->op->sector, g->op->count, strerror(-status));
    if (--g->run->pending == 0)
        g->run->is_done = true;
}

static bool overlaps(const struct gop *a, const struct gop *b)
{
    if (a->type == G_FLUSH || b->type == G_FLUSH)
        return false;
    return a->sector < b->sector + b->count && b->sector < a->sector + a->count;
}

static void run_workload(struct bdev *bd, struct run *run, uint64_t *seed)
{
    struct bdev_io *ios[MAX_BATCH];
    struct gio gios[MAX_BATCH];
    size_t io_size = bdev_io_size(bd);
    for (int i = 0; i < MAX_BATCH; i++)
        ios[i] = calloc(1, io_size);
    run->ops = calloc(GUEST_OPS, sizeof(*run->ops));
    int n = 0;
    while (n < GUEST_OPS) {
        int batch = 1 + (int)(t_rand(seed) % MAX_BATCH);
        if (batch > GUEST_OPS - n)
            batch = GUEST_OPS - n;
        int first = n;
        for (int b = 0; b < batch; b++) {
            struct gop *op = &run->ops[n];
            uint64_t r = t_rand(seed) % 100;
            op->type = r < 70 ? G_WRITE : r < 80 ? G_ZERO : r < 88 ? G_DISCARD : G_FLUSH;
            uint32_t max_count = op->type == G_WRITE ? 256 : 2048;
            for (int tries = 0;; tries++) {
                op->count = 1 + (uint32_t)(t_rand(seed) % max_count);
                if (t_rand(seed) % 4 == 0) /* whole aligned blocks now and then */
                    op->count = BLOCK_BYTES / 512 * (1 + (uint32_t)(t_rand(seed) % 2));
                op->sector = (uint32_t)(t_rand(seed) % (SECTORS - op->count + 1));
                if (op->count == BLOCK_BYTES / 512 || op->count == 2 * BLOCK_BYTES / 512)
                    op->sector = op->sector / (BLOCK_BYTES / 512) * (BLOCK_BYTES / 512);
                if (op->sector + op->count > SECTORS)
                    op->sector = SECTORS - op->count;
                bool clash = false;
                for (int k = first; k < n; k++)
                    clash |= overlaps(op, &run->ops[k]);
                if (!clash)
                    break;
                if (tries > 20) {
                    op->type = G_FLUSH;
                    break;
                }
            }
            if (op->type == G_WRITE) {
                op->is_fua = t_rand(seed) % 10 == 0;
                op->data = hv_alloc_aligned((size_t)op->count * 512);
                t_fill(op->data, (size_t)op->count * 512, t_rand(seed));
            }
            n++;
        }
        run->pending = batch;
        run->is_done = false;
        for (int b = 0; b < batch; b++) {
            struct gop *op = &run->ops[first + b];
            struct bdev_io *io = ios[b];
            struct gio *g = &gios[b];
            memset(io, 0, io_size);
            g->run = run;
            g->op = op;
            io->type = op->type == G_WRITE     ? BDEV_IO_WRITE
                       : op->type == G_ZERO    ? BDEV_IO_WRITE_ZEROES
                       : op->type == G_DISCARD ? BDEV_IO_DISCARD
                                               : BDEV_IO_FLUSH;
            if (op->type == G_ZERO && t_rand(seed) % 2)
                io->flags = BDEV_IO_MAY_UNMAP;
            if (op->is_fua)
                io->flags = BDEV_IO_FUA;
            if (op->type != G_FLUSH) {
                io->offset = (uint64_t)op->sector * 512;
                io->length = (uint64_t)op->count * 512;
            }
            if (op->type == G_WRITE) {
                g->iov.iov_base = op->data;
                g->iov.iov_len = io->length;
                io->iov = &g->iov;
                io->iovcnt = 1;
            }
            io->done = gop_done;
            io->cb_arg = g;
            op->submit_ev = g_clock++;
            op->complete_ev = -1;
            int ret = bdev_submit(bd, io);
            if (ret < 0)
                die("guest request refused: %s", strerror(-ret));
        }
        if (hv_reactor_run_until(bd->reactor, &run->is_done) < 0)
            die("reactor failed");
        if (run->grow_to && run->grow_start_ev < 0 && n >= run->grow_after) {
            struct hv_err err = {0};
            run->grow_start_ev = g_clock++;
            if (bd->ops->resize(bd, run->grow_to, &err) < 0)
                die("online resize to %" PRIu64 ": %s", run->grow_to, err.msg);
            run->grow_end_ev = g_clock++;
        }
    }
    run->op_count = n;
    for (int i = 0; i < MAX_BATCH; i++)
        free(ios[i]);
}

/* ---------------------------------------------------------- materialize */

static uint8_t *read_whole(const char *path, uint64_t *len)
{
    struct stat st;
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fstat(fd, &st) < 0)
        die("%s: %s", path, strerror(errno));
    uint8_t *buf = malloc((size_t)st.st_size + 1);
    if (!buf || hv_pread_full(fd, buf, (size_t)st.st_size, 0) < 0)
        die("%s: read failed", path);
    close(fd);
    *len = (uint64_t)st.st_size;
    return buf;
}

/* A file's bytes in memory, grown by the writes applied to it. */
struct disk_image {
    uint8_t *bytes;
    uint64_t length;
    uint64_t cap;
};

static void image_apply(struct disk_image *img, uint64_t offset, const uint8_t *data, uint64_t len)
{
    if (offset + len > img->cap) {
        uint64_t cap = HV_MAX(img->cap * 2, offset + len);
        img->bytes = realloc(img->bytes, cap);
        if (!img->bytes)
            die("out of memory for a %" PRIu64 "-byte image", cap);
        memset(img->bytes + img->cap, 0, cap - img->cap);
        img->cap = cap;
    }
    memcpy(img->bytes + offset, data, len);
    if (offset + len > img->length)
        img->length = offset + len;
}

static void write_sparse(const char *path, const struct disk_image *img)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("%s: %s", path, strerror(errno));
    /* Only non-zero 64 KiB pieces are written: the engine's file growth
     * leaves large zero ranges that should stay holes. */
    const uint64_t piece = 65536;
    for (uint64_t at = 0; at < img->length; at += piece) {
        uint64_t n = HV_MIN(piece, img->length - at);
        if (!hv_buf_is_zero(img->bytes + at, n) && hv_pwrite_full(fd, img->bytes + at, n, at) < 0)
            die("%s: write: %s", path, strerror(errno));
    }
    if (ftruncate(fd, (off_t)img->length) < 0)
        die("%s: truncate: %s", path, strerror(errno));
    close(fd);
}

/* ---------------------------------------------------------------- verify */

enum { S_INITIAL = -1, S_AMBIGUOUS = -2, S_UNKNOWN = -3 };

struct image_case {
    const char *name;
    const char *path;         /* the image the workload ran on */
    const char *parent_path;  /* differencing: its parent */
    uint64_t size_bytes;      /* the disk's size before the workload (it uses the first
                               * DISK_BYTES) */
    uint8_t *initial_content; /* what the disk read before the workload */
    struct disk_image initial_file;
    struct run run;
};

static int states_checked;
static int states_with_expectations;
static uint64_t sectors_verified;
static uint64_t fua_sectors_verified; /* promised by FUA alone, no flush */
static int states_grown, states_not_grown;

static void verify_state(struct image_case *ic, const char *crash_path, long crash_point,
                         int state_no, int32_t *sector_state, uint8_t *readbuf)
{
    /* Expected content at this crash point. */
    long flush_submit = -1;
    for (int i = 0; i < ic->run.op_count; i++) {
        const struct gop *op = &ic->run.ops[i];
        if (op->type == G_FLUSH && op->complete_ev >= 0 && op->complete_ev < crash_point &&
            op->submit_ev > flush_submit)
            flush_submit = op->submit_ev;
    }
    for (uint32_t s = 0; s < SECTORS; s++)
        sector_state[s] = S_INITIAL;
    bool has_guarantee = flush_submit >= 0;
    for (int i = 0; i < ic->run.op_count; i++) {
        const struct gop *op = &ic->run.ops[i];
        if (op->type == G_FLUSH || op->submit_ev >= crash_point)
            continue;
        /* Durable: acknowledged before a flush that completed, or a FUA
         * write acknowledged before the crash. */
        bool is_guaranteed =
            op->complete_ev >= 0 &&
            (op->complete_ev < flush_submit || (op->is_fua && op->complete_ev < crash_point));
        int32_t st = !is_guaranteed ? S_AMBIGUOUS : op->type == G_DISCARD ? S_UNKNOWN : i;
        for (uint32_t s = op->sector; s < op->sector + op->count; s++)
            sector_state[s] = st;
    }
    /* Before any guest flush completed nothing is promised, not even the
     * initial content of sectors the workload later touched; sectors nobody
     * wrote keep their initial content regardless. */

    struct vhd_check_report rep;
    struct hv_err err = {0};
    int rc = vhd_check(crash_path, &rep, &err);
    if (rc < 0 || rc == VHD_CHECK_CORRUPT) {
        fprintf(stderr, "%s state %d (crash point %ld): vhd_check: %s\n", ic->name, state_no,
                crash_point, rc < 0 ? hv_err_msg(&err, rc) : "corruption");
        for (int i = 0; i < rep.problem_count && rc >= 0; i++)
            fprintf(stderr, "  %s: %s\n", rep.problems[i].is_leak ? "leak" : "ERROR",
                    rep.problems[i].msg);
        die("crash state %d of %s is corrupt (kept as %s)", state_no, ic->name, crash_path);
    }
    vhd_check_report_free(&rep);

    struct hv_reactor *r;
    struct bdev *bd;
    if (hv_reactor_create(&r) < 0)
        die("reactor");
    struct vhd_open_options o = {.no_direct_io = true};
    rc = vhd_open(r, crash_path, &o, &bd, &err);
    if (rc < 0)
        die("%s state %d (crash point %ld): vhd_open: %s (kept as %s)", ic->name, state_no,
            crash_point, hv_err_msg(&err, rc), crash_path);
    /* A resize reads at the old size until it began, at the new one once it
     * returned; in between, at either. */
    const struct run *rn = &ic->run;
    bool may_old = !rn->grow_to || crash_point <= rn->grow_end_ev;
    bool may_new = rn->grow_to && crash_point > rn->grow_start_ev;
    if (!(may_old && bd->size_bytes == ic->size_bytes) &&
        !(may_new && bd->size_bytes == rn->grow_to))
        die("%s state %d (crash point %ld): size %" PRIu64 " after the crash (kept as %s)",
            ic->name, state_no, crash_point, bd->size_bytes, crash_path);
    if (rn->grow_to)
        *(bd->size_bytes == rn->grow_to ? &states_grown : &states_not_grown) += 1;
    for (uint64_t at = 0; at < DISK_BYTES; at += HV_MiB) {
        rc = bdev_read_sync(bd, at, readbuf + at, HV_MiB);
        if (rc < 0)
            die("%s state %d: read at %" PRIu64 ": %s", ic->name, state_no, at, strerror(-rc));
    }
    for (uint32_t s = 0; s < SECTORS; s++) {
        const uint8_t *want;
        int32_t st = sector_state[s];
        static const uint8_t zero[512];
        if (st == S_AMBIGUOUS || st == S_UNKNOWN)
            continue;
        if (st >= 0 && ic->run.ops[st].is_fua && ic->run.ops[st].complete_ev >= flush_submit)
            fua_sectors_verified++;
        if (st == S_INITIAL) {
            want = ic->initial_content + (size_t)s * 512;
        } else {
            const struct gop *op = &ic->run.ops[st];
            want = op->type == G_ZERO ? zero : op->data + (size_t)(s - op->sector) * 512;
        }
        if (memcmp(readbuf + (size_t)s * 512, want, 512)) {
            if (getenv("HVSTOR_CRASH_DEBUG") && st >= 0) {
                const struct gop *op = &ic->run.ops[st];
                fprintf(stderr,
                        "op %d: sectors %u+%u fua %d submit %ld complete %ld; last "
                        "flush submitted at %ld\n",
                        st, op->sector, op->count, op->is_fua, op->submit_ev, op->complete_ev,
                        flush_submit);
                for (int i = 0; i < g_ew_count; i++) {
                    const struct ewrite *w = &g_ew[i];
                    if (w->complete_ev >= op->submit_ev - 120 && w->submit_ev < crash_point)
                        fprintf(stderr,
                                "  engine %s at %" PRIu64 "+%u dsync %d: %ld..%ld "
                                "res %ld\n",
                                w->is_sync ? "SYNC " : "write", w->offset, w->length, w->is_dsync,
                                w->submit_ev, w->complete_ev, w->res);
                }
            }
            die("%s state %d (crash point %ld): sector %u reads wrong data; expected %s "
                "(kept as %s)",
                ic->name, state_no, crash_point, s,
                st == S_INITIAL                  ? "the initial content"
                : ic->run.ops[st].type == G_ZERO ? "zeroes from an acknowledged write-zeroes"
                : ic->run.ops[st].is_fua         ? "an acknowledged FUA write"
                                                 : "an acknowledged, flushed write",
                crash_path);
        }
        sectors_verified++;
        has_guarantee = true;
    }
    rc = bdev_close(bd);
    if (rc < 0)
        die("%s state %d: close: %s", ic->name, state_no, strerror(-rc));
    hv_reactor_destroy(r);
    rc = vhd_check(crash_path, &rep, &err);
    if (rc < 0 || rc == VHD_CHECK_CORRUPT)
        die("%s state %d: corrupt after reopening and closing: %s", ic->name, state_no,
            rc < 0              ? hv_err_msg(&err, rc)
            : rep.problem_count ? rep.problems[0].msg
                                : "?");
    vhd_check_report_free(&rep);
    states_checked++;
    states_with_expectations += has_guarantee;
}

/*
 * Where crash states are materialized. Verifying a state opens and closes it,
 * and close makes metadata durable with fdatasync; on a memory file system
 * that costs nothing, which keeps 1,200 states within a minute. The parent of
 * a differencing state is found through its absolute locator. Without
 * /dev/shm the states go next to the image.
 */
static char shm_dir[256];

static void remove_shm_dir(void)
{
    if (shm_dir[0])
        rmdir(shm_dir);
}

static void crash_state_path(const struct image_case *ic, char *out, size_t cap)
{
    if (!shm_dir[0] && !getenv("HVSTOR_CRASH_ON_DISK")) {
        snprintf(shm_dir, sizeof(shm_dir), "/dev/shm/hvstor-crash-XXXXXX");
        if (mkdtemp(shm_dir))
            atexit(remove_shm_dir);
        else
            shm_dir[0] = 0;
    }
    if (shm_dir[0])
        snprintf(out, cap, "%s/%s.crash.vhd", shm_dir, ic->name);
    else
        snprintf(out, cap, "%s.crash.vhd", ic->path);
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static void crash_states(struct image_case *ic, uint64_t *seed)
{
    long last_ev = 0;
    for (int i = 0; i < g_ew_count; i++)
        last_ev = HV_MAX(last_ev, HV_MAX(g_ew[i].submit_ev, g_ew[i].complete_ev) + 1);
    long *points = calloc(STATES_PER_IMAGE, sizeof(*points));
    /* Every crash point is an instant between two events; the last ones are
     * "after everything", where only unflushed writes may be lost. */
    for (int i = 0; i < STATES_PER_IMAGE; i++)
        points[i] = (long)(t_rand(seed) % (uint64_t)(last_ev + 1));
    qsort(points, STATES_PER_IMAGE, sizeof(*points), cmp_long);

    int32_t *sector_state = calloc(SECTORS, sizeof(*sector_state));
    uint8_t *readbuf = hv_alloc_aligned(DISK_BYTES);
    struct disk_image crash = {0};
    char crash_path[512];
    crash_state_path(ic, crash_path, sizeof(crash_path));

    for (int k = 0; k < STATES_PER_IMAGE; k++) {
        long p = points[k];
        /* Durable: completed before the submission of an fdatasync that
         * completed before p, or a RWF_DSYNC write completed before p. */
        long sync_submit = -1;
        for (int i = 0; i < g_ew_count; i++) {
            const struct ewrite *w = &g_ew[i];
            if (w->is_sync && w->res == 0 && w->complete_ev >= 0 && w->complete_ev < p)
                sync_submit = HV_MAX(sync_submit, w->submit_ev);
        }
        /*
         * The file: the initial one, then, in submission order, every
         * durable write and a random choice of the others (each possibly
         * torn). Submission order matters: a write that completed before a
         * later one was submitted cannot land on top of it, even when only
         * the later one is durable (a RWF_DSYNC write over an unflushed one).
         * Modes: 0 takes none of the optional writes, 1 all, else random.
         */
        if (crash.length > ic->initial_file.length)
            memset(crash.bytes + ic->initial_file.length, 0,
                   crash.length - ic->initial_file.length);
        crash.length = 0;
        image_apply(&crash, 0, ic->initial_file.bytes, ic->initial_file.length);
        int mode = (int)(t_rand(seed) % 8);
        for (int i = 0; i < g_ew_count; i++) {
            const struct ewrite *w = &g_ew[i];
            if (w->is_sync || w->submit_ev >= p)
                continue;
            bool is_durable =
                w->complete_ev >= 0 && w->res == (long)w->length &&
                (w->complete_ev < sync_submit || (w->is_dsync && w->complete_ev < p));
            if (!is_durable) {
                bool take = mode == 1 || (mode > 1 && t_rand(seed) % 2);
                if (!take)
                    continue;
                if (mode > 1 && w->length > 512 && t_rand(seed) % 4 == 0) {
                    for (uint32_t o = 0; o < w->length; o += 512)
                        if (t_rand(seed) % 2)
                            image_apply(&crash, w->offset + o, w->data + o,
                                        HV_MIN(512, w->length - o));
                    continue;
                }
            }
            image_apply(&crash, w->offset, w->data, w->length);
        }
        write_sparse(crash_path, &crash);
        verify_state(ic, crash_path, p, k, sector_state, readbuf);
    }
    unlink(crash_path);
    free(points);
    free(sector_state);
    free(readbuf);
    free(crash.bytes);
}

/* ------------------------------------------------------------------ main */

static void read_disk(const char *path, uint8_t *out)
{
    struct hv_reactor *r;
    struct bdev *bd;
    struct hv_err err = {0};
    struct vhd_open_options o = {.is_read_only = true, .no_direct_io = true};
    if (hv_reactor_create(&r) < 0 || vhd_open(r, path, &o, &bd, &err) < 0)
        die("%s: open: %s", path, hv_err_msg(&err, -EIO));
    for (uint64_t at = 0; at < DISK_BYTES; at += HV_MiB)
        if (bdev_read_sync(bd, at, out + at, HV_MiB) < 0)
            die("%s: read", path);
    bdev_close(bd);
    hv_reactor_destroy(r);
}

static void run_case(struct image_case *ic, uint64_t seed)
{
    uint64_t s = seed;
    ic->initial_content = hv_alloc_aligned(DISK_BYTES);
    read_disk(ic->path, ic->initial_content);
    ic->initial_file.bytes = read_whole(ic->path, &ic->initial_file.length);

    for (int i = 0; i < g_ew_count; i++)
        free(g_ew[i].data);
    g_ew_count = 0;
    g_clock = 0;

    struct hv_reactor *r;
    struct bdev *bd;
    struct hv_err err = {0};
    if (hv_reactor_create(&r) < 0)
        die("reactor");
    struct vhd_open_options o = {.observer = &g_observer};
    g_recording = true;
    int rc = vhd_open(r, ic->path, &o, &bd, &err);
    if (rc < 0)
        die("%s: vhd_open: %s", ic->path, hv_err_msg(&err, rc));
    run_workload(bd, &ic->run, &s);
    /* Crash points stop here: what close writes is checked by the clean
     * final state below, not by crash states (closing may shrink the file,
     * which the write log cannot express). */
    g_recording = false;
    rc = bdev_close(bd);
    if (rc < 0)
        die("%s: close: %s", ic->path, strerror(-rc));
    hv_reactor_destroy(r);

    int writes = 0, syncs = 0;
    for (int i = 0; i < g_ew_count; i++)
        g_ew[i].is_sync ? syncs++ : writes++;
    int flushes = 0;
    for (int i = 0; i < ic->run.op_count; i++)
        flushes += ic->run.ops[i].type == G_FLUSH;
    printf("# %s: %d guest requests (%d flushes) became %d engine writes and %d fdatasyncs\n",
           ic->name, ic->run.op_count, flushes, writes, syncs);
    if (!writes || !syncs)
        die("%s: the observer saw %d writes and %d syncs", ic->name, writes, syncs);

    /* A normal close leaves no corruption; leaked space is possible where
     * discards freed blocks (the file does not shrink in the middle). */
    struct vhd_check_report rep;
    rc = vhd_check(ic->path, &rep, &err);
    if (rc != VHD_CHECK_CLEAN && rc != VHD_CHECK_LEAKED)
        die("%s: corrupt after a normal close (vhd_check %d: %s)", ic->name, rc,
            rc < 0              ? hv_err_msg(&err, rc)
            : rep.problem_count ? rep.problems[0].msg
                                : "");
    printf("# %s: after a normal close vhd_check says %s (%" PRIu64 " bytes leaked)\n", ic->name,
           rc == VHD_CHECK_CLEAN ? "clean" : "leaked", rep.leaked_bytes);
    vhd_check_report_free(&rep);

    int before = states_checked;
    crash_states(ic, &s);
    printf("# %s: %d crash states open, check clean of corruption, read back\n", ic->name,
           states_checked - before);

    for (int i = 0; i < ic->run.op_count; i++)
        free(ic->run.ops[i].data);
    free(ic->run.ops);
    free(ic->initial_content);
    free(ic->initial_file.bytes);
}

int main(void)
{
    uint64_t seed = 0x5eed0001;
    const char *env = getenv("HVSTOR_CRASH_SEED");
    if (env)
        seed = strtoull(env, NULL, 0);
    printf("# seed %#" PRIx64 " (HVSTOR_CRASH_SEED reproduces)\n", seed);
    struct hv_err err = {0};
    uint64_t t0 = hv_now_ns();

    /* Dynamic: starts empty, every early write allocates. */
    struct image_case dyn = {
        .name = "dynamic", .path = t_path("dynamic.vhd"), .size_bytes = DISK_BYTES};
    struct vhd_create_options c = {
        .type = VHD_TYPE_DYNAMIC,
        .size_bytes = DISK_BYTES,
        .block_bytes = BLOCK_BYTES,
    };
    if (vhd_create(dyn.path, &c, &err) < 0)
        die("create: %s", hv_err_msg(&err, -EIO));
    run_case(&dyn, seed);

    /* Differencing: over a parent with data in half of its blocks, so
     * partial writes to new child blocks must keep the parent's sectors. */
    const char *parent = t_path("parent.vhd");
    if (vhd_create(parent, &c, &err) < 0)
        die("create parent: %s", hv_err_msg(&err, -EIO));
    {
        struct hv_reactor *r;
        struct bdev *bd;
        struct vhd_open_options o = {0};
        if (hv_reactor_create(&r) < 0 || vhd_open(r, parent, &o, &bd, &err) < 0)
            die("open parent: %s", hv_err_msg(&err, -EIO));
        uint8_t *buf = hv_alloc_aligned(BLOCK_BYTES);
        for (uint64_t at = 0; at < DISK_BYTES; at += 2 * BLOCK_BYTES) {
            t_fill(buf, BLOCK_BYTES, at + 77);
            if (bdev_write_sync(bd, at, buf, BLOCK_BYTES, 0) < 0)
                die("fill parent");
        }
        free(buf);
        if (bdev_close(bd) < 0)
            die("close parent");
        hv_reactor_destroy(r);
    }
    uint64_t parent_len;
    uint8_t *parent_before = read_whole(parent, &parent_len);
    struct image_case diff = {
        .name = "differencing",
        .path = t_path("child.vhd"),
        .parent_path = parent,
        .size_bytes = DISK_BYTES,
    };
    struct vhd_create_options dc = {
        .type = VHD_TYPE_DIFFERENCING,
        .parent_path = parent,
        .block_bytes = BLOCK_BYTES,
    };
    if (vhd_create(diff.path, &dc, &err) < 0)
        die("create child: %s", hv_err_msg(&err, -EIO));
    run_case(&diff, seed ^ 0xd1ff);
    uint64_t parent_len_after;
    uint8_t *parent_after = read_whole(parent, &parent_len_after);
    if (parent_len != parent_len_after || memcmp(parent_before, parent_after, parent_len))
        die("the parent of the differencing image was modified");

    /* Grown online in the middle of the workload: 64 MiB of 512 KiB blocks
     * fill the BAT's sector, so the resize writes a new BAT after the last
     * block and switches the header to it, with metadata of the requests
     * before it still to flush; the requests after it allocate past the
     * moved BAT and write its entries back there. */
    struct image_case grown = {
        .name = "dynamic-grown-online",
        .path = t_path("grown.vhd"),
        .size_bytes = 64 * HV_MiB,
        .run = {.grow_to = 96 * HV_MiB + 4096, .grow_after = GUEST_OPS / 2,
                .grow_start_ev = -1, .grow_end_ev = -1},
    };
    c.size_bytes = grown.size_bytes;
    if (vhd_create(grown.path, &c, &err) < 0)
        die("create: %s", hv_err_msg(&err, -EIO));
    run_case(&grown, seed ^ 0x9e0);
    if (grown.run.grow_start_ev < 0)
        die("the workload never resized the image");
    printf("# dynamic-grown-online: %d crash states read at the old size, %d at the new\n",
           states_not_grown, states_grown);
    if (!states_grown || !states_not_grown)
        die("the crash states do not cover both sides of the resize");

    free(parent_before);
    free(parent_after);
    for (int i = 0; i < g_ew_count; i++)
        free(g_ew[i].data);
    free(g_ew);
    printf("# %" PRIu64 " sector checks (%" PRIu64 " promised by FUA writes alone); %d of %d "
           "states had acknowledged durable data\n",
           sectors_verified, fua_sectors_verified, states_with_expectations, states_checked);
    if (states_checked < 1000)
        die("only %d crash states", states_checked);
    printf("PASS: %d crash states in %.1f s\n", states_checked, (double)(hv_now_ns() - t0) / 1e9);
    return 0;
}
