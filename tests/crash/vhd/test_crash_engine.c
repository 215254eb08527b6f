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
#include "crash_replay.h"

#define DISK_BYTES (8u * 1024 * 1024)
#define BLOCK_BYTES (512u * 1024)
#define SECTORS (DISK_BYTES / 512)
#define GUEST_OPS 360
#define MAX_BATCH 6
#define STATES_PER_IMAGE 600

/* ------------------------------------------------------------ recording */

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

/* The engine's writes and fdatasyncs to the image (file 0), on the clock
 * the guest's requests are stamped with too. */
static struct crash_log g_log;

static const struct vhd_io_observer g_observer = {
    .on_submit = crash_engine_submit,
    .on_complete = crash_engine_complete,
    .arg = &g_log,
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
    g->op->complete_ev = g_log.clock++;
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
            op->submit_ev = g_log.clock++;
            op->complete_ev = -1;
            int ret = bdev_submit(bd, io);
            if (ret < 0)
                die("guest request refused: %s", strerror(-ret));
        }
        if (hv_reactor_run_until(bd->reactor, &run->is_done) < 0)
            die("reactor failed");
        if (run->grow_to && run->grow_start_ev < 0 && n >= run->grow_after) {
            struct hv_err err = {0};
            run->grow_start_ev = g_log.clock++;
            if (bd->ops->resize(bd, run->grow_to, &err) < 0)
                die("online resize to %" PRIu64 ": %s", run->grow_to, err.msg);
            run->grow_end_ev = g_log.clock++;
        }
    }
    run->op_count = n;
    for (int i = 0; i < MAX_BATCH; i++)
        free(ios[i]);
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
    struct crash_image initial_file;
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
                for (int i = 0; i < g_log.count; i++) {
                    const struct crash_ev *w = &g_log.ev[i];
                    if (w->complete_ev >= op->submit_ev - 120 && w->submit_ev < crash_point)
                        fprintf(stderr,
                                "  engine %s at %" PRIu64 "+%u dsync %d: %ld..%ld "
                                "res %ld\n",
                                w->kind == CRASH_SYNC ? "SYNC " : "write", w->offset, w->length,
                                w->is_dsync, w->submit_ev, w->complete_ev, w->res);
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

static void crash_states(struct image_case *ic, uint64_t *seed)
{
    long last_ev = 0;
    for (int i = 0; i < g_log.count; i++)
        last_ev = HV_MAX(last_ev, HV_MAX(g_log.ev[i].submit_ev, g_log.ev[i].complete_ev) + 1);
    long *points = crash_points(STATES_PER_IMAGE, last_ev, seed);
    int32_t *sector_state = calloc(SECTORS, sizeof(*sector_state));
    uint8_t *readbuf = hv_alloc_aligned(DISK_BYTES);
    struct crash_image crash = {0};
    char crash_path[PATH_MAX];
    snprintf(crash_path, sizeof(crash_path), "%s/%s.crash.vhd", crash_state_dir(), ic->name);

    for (int k = 0; k < STATES_PER_IMAGE; k++) {
        /* Modes: 0 takes none of the optional writes, 1 all, else random. */
        int mode = (int)(t_rand(seed) % 8);
        crash_replay_file(&g_log, 0, ic->initial_file.bytes, ic->initial_file.length, true,
                          points[k], mode, seed, &crash);
        crash_image_write_sparse(crash_path, &crash);
        verify_state(ic, crash_path, points[k], k, sector_state, readbuf);
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
    ic->initial_file.bytes = crash_read_file(ic->path, &ic->initial_file.length);
    crash_log_reset(&g_log);

    struct hv_reactor *r;
    struct bdev *bd;
    struct hv_err err = {0};
    if (hv_reactor_create(&r) < 0)
        die("reactor");
    struct vhd_open_options o = {.observer = &g_observer};
    g_log.is_recording = true;
    int rc = vhd_open(r, ic->path, &o, &bd, &err);
    if (rc < 0)
        die("%s: vhd_open: %s", ic->path, hv_err_msg(&err, rc));
    run_workload(bd, &ic->run, &s);
    /* Crash points stop here: what close writes is checked by the clean
     * final state below, not by crash states (closing may shrink the file,
     * which the write log cannot express). */
    g_log.is_recording = false;
    rc = bdev_close(bd);
    if (rc < 0)
        die("%s: close: %s", ic->path, strerror(-rc));
    hv_reactor_destroy(r);

    int writes = 0, syncs = 0;
    for (int i = 0; i < g_log.count; i++)
        g_log.ev[i].kind == CRASH_SYNC ? syncs++ : writes++;
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
    uint64_t seed = crash_seed(0x5eed0001);
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
    uint8_t *parent_before = crash_read_file(parent, &parent_len);
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
    uint8_t *parent_after = crash_read_file(parent, &parent_len_after);
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
    crash_log_free(&g_log);
    printf("# %" PRIu64 " sector checks (%" PRIu64 " promised by FUA writes alone); %d of %d "
           "states had acknowledged durable data\n",
           sectors_verified, fua_sectors_verified, states_with_expectations, states_checked);
    if (states_checked < 1000)
        die("only %d crash states", states_checked);
    printf("PASS: %d crash states in %.1f s\n", states_checked, (double)(hv_now_ns() - t0) / 1e9);
    return 0;
}
