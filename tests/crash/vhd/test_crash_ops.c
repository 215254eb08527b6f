/*
 * Crash consistency of the life-of-an-image operations: merge, compact and
 * resize (offline, and online through the engine's resize op), proved on
 * real files.
 *
 * Each operation runs once on a small real image (or chain) with every file
 * effect recorded on one clock: the engine's writes and fdatasyncs to the
 * ancestor during a merge (vhd_io_observer, asynchronous: submission and
 * completion), and the operation's own writes, fdatasyncs, truncations and
 * deletions (vhd_ops_observer). A crash at instant P leaves, per file: the
 * initial file, then in order every effect before P that is durable (a
 * write that completed before the submission of an fdatasync of that file
 * which completed before P; a truncation followed by such an fdatasync) and
 * any subset of the others, writes possibly torn at sector granularity. A
 * deletion is in effect once reported (the operation fsyncs the directory
 * first). For at least 1,000 such states per operation, materialized as real
 * files side by side (the locators' relative paths find the state's own
 * parent):
 *   - vhd_check finds no corruption in any file (leaks and interrupted
 *     operations allowed). A resize stopped between the footer at the end
 *     and its copy at offset 0 must be reported as interrupted, read as
 *     after, and be made clean by vhd_repair;
 *   - merge: the marker ANCESTOR.merging is replayed like the images (an
 *     atomic replacement is in effect once reported); vhd_check's verdict
 *     on the ancestor (and on CHILD while it exists, which must agree) is
 *     what the state is: "reads as before" only while CHILD exists, "reads
 *     as after" only when the ancestor alone reads as after, no verdict
 *     only before the merge began or after it ended;
 *   - the image reads exactly as before the operation or exactly as after
 *     it, byte for byte (merge: CHILD's chain while CHILD exists, the
 *     ancestor once it is gone; resize: the size says which).
 * Any failure prints the seed and keeps the state.
 */
#include "crash_replay.h"

#define STATES_PER_OP 1000
#define MAX_FILES 6

/* ------------------------------------------------------------ recording */

struct file {
    char name[64]; /* base name: the same in the state directory */
    char path[PATH_MAX];
    uint8_t *initial;
    uint64_t initial_len;
    bool is_marker; /* not an image: absent at first, replaced atomically */
};

static struct file g_files[MAX_FILES];
static int g_file_count;
/* Every file effect; engine_file: the ancestor of a merge. */
static struct crash_log g_log = {.is_recording = true, .engine_file = -1};

static int file_of(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    for (int i = 0; i < g_file_count; i++)
        if (!strcmp(g_files[i].name, base))
            return i;
    die("an operation touched %s, which the test does not know", path);
}

static void op_write(void *arg, const char *path, uint64_t offset, const void *buf, size_t len)
{
    (void)arg;
    struct crash_ev *e = crash_log_add(&g_log, CRASH_WRITE, file_of(path));
    e->offset = offset;
    crash_ev_set_data(e, buf, len);
    e->complete_ev = g_log.clock++;
    e->res = (long)len;
}

static void op_sync(void *arg, const char *path)
{
    (void)arg;
    struct crash_ev *e = crash_log_add(&g_log, CRASH_SYNC, file_of(path));
    e->complete_ev = g_log.clock++;
}

static void op_truncate(void *arg, const char *path, uint64_t length)
{
    (void)arg;
    struct crash_ev *e = crash_log_add(&g_log, CRASH_TRUNCATE, file_of(path));
    e->offset = length;
    e->complete_ev = g_log.clock++;
}

static void op_unlink(void *arg, const char *path)
{
    (void)arg;
    struct crash_ev *e = crash_log_add(&g_log, CRASH_UNLINK, file_of(path));
    e->complete_ev = g_log.clock++;
}

static void op_replace(void *arg, const char *path, const void *buf, size_t len)
{
    (void)arg;
    struct crash_ev *e = crash_log_add(&g_log, CRASH_REPLACE, file_of(path));
    crash_ev_set_data(e, buf, len);
    e->complete_ev = g_log.clock++;
}

static const struct vhd_io_observer g_engine_obs = {crash_engine_submit, crash_engine_complete,
                                                     &g_log};
static const struct vhd_ops_observer g_ops_obs = {
    .on_write = op_write,
    .on_sync = op_sync,
    .on_truncate = op_truncate,
    .on_unlink = op_unlink,
    .on_replace = op_replace,
    .engine = &g_engine_obs,
};

/* ------------------------------------------------------------- the files */

static void track(const char *path)
{
    if (g_file_count == MAX_FILES)
        die("too many files");
    struct file *f = &g_files[g_file_count++];
    const char *base = strrchr(path, '/');
    snprintf(f->name, sizeof(f->name), "%s", base ? base + 1 : path);
    snprintf(f->path, sizeof(f->path), "%s", path);
    f->initial = crash_read_file(path, &f->initial_len);
}

/* A merge marker: absent until the operation writes it. */
static int track_marker(const char *image_path)
{
    if (g_file_count == MAX_FILES)
        die("too many files");
    struct file *f = &g_files[g_file_count++];
    const char *base = strrchr(image_path, '/');
    snprintf(f->name, sizeof(f->name), "%s%s", base ? base + 1 : image_path,
             VHD_MERGE_MARKER_SUFFIX);
    snprintf(f->path, sizeof(f->path), "%s%s", image_path, VHD_MERGE_MARKER_SUFFIX);
    f->initial = NULL;
    f->initial_len = 0;
    f->is_marker = true;
    return g_file_count - 1;
}

static void reset_recording(void)
{
    crash_log_reset(&g_log);
    for (int i = 0; i < g_file_count; i++)
        free(g_files[i].initial);
    memset(g_files, 0, sizeof(g_files));
    g_file_count = 0;
    g_log.engine_file = -1;
}

/* ------------------------------------------------------------- reading */

static uint8_t *read_disk(const char *path, uint64_t *size, struct hv_err *err, int *rc)
{
    struct hv_reactor *r;
    struct bdev *bd;
    struct vhd_open_options o = {.is_read_only = true, .no_direct_io = true};
    if (hv_reactor_create(&r) < 0)
        die("reactor");
    *rc = vhd_open(r, path, &o, &bd, err);
    if (*rc < 0) {
        hv_reactor_destroy(r);
        return NULL;
    }
    *size = bd->size_bytes;
    uint8_t *buf = hv_alloc_aligned(bd->size_bytes);
    if (!buf || bdev_read_sync(bd, 0, buf, bd->size_bytes) < 0)
        die("%s: read", path);
    bdev_close(bd);
    hv_reactor_destroy(r);
    return buf;
}

/* Offset just past the last non-zero byte of `buf`. */
static uint64_t data_end(const uint8_t *buf, uint64_t len)
{
    while (len >= 4096 && hv_buf_is_zero(buf + len - 4096, 4096))
        len -= 4096;
    while (len && !buf[len - 1])
        len--;
    return len;
}

/*
 * Does the image (chain) at `path` read exactly `want`? Ranges the engine
 * reports as unallocated everywhere are not read (they read zeroes), so a
 * large, mostly empty disk costs what its data costs. *size gets the size.
 */
static int disk_equals(const char *path, const uint8_t *const *wants, const uint64_t *sizes,
                       const uint64_t *ends, int count, uint64_t *size, struct hv_err *err)
{
    struct hv_reactor *r;
    struct bdev *bd;
    struct vhd_open_options o = {.is_read_only = true, .no_direct_io = true};
    if (hv_reactor_create(&r) < 0)
        die("reactor");
    int rc = vhd_open(r, path, &o, &bd, err);
    if (rc < 0) {
        hv_reactor_destroy(r);
        return rc;
    }
    *size = bd->size_bytes;
    int which = -1;
    for (int i = count - 1; i >= 0; i--)
        if (sizes[i] == bd->size_bytes)
            which = i;
    uint8_t *buf = hv_alloc_aligned(HV_MiB);
    for (uint64_t at = 0; which >= 0 && at < bd->size_bytes;) {
        uint32_t status;
        uint64_t len;
        int depth;
        if (bdev_block_status_sync(bd, at, HV_MIN(bd->size_bytes - at, 64 * HV_MiB), &status, &len,
                                   &depth) < 0)
            die("%s: block status", path);
        if (!(status & BDEV_STATUS_ALLOCATED)) {
            if (at < ends[which] &&
                !hv_buf_is_zero(wants[which] + at, HV_MIN(len, ends[which] - at)))
                which = -1;
            at += len;
            continue;
        }
        for (uint64_t done = 0; done < len && which >= 0;) {
            uint64_t n = HV_MIN(len - done, HV_MiB);
            if (bdev_read_sync(bd, at + done, buf, n) < 0)
                die("%s: read", path);
            if (memcmp(buf, wants[which] + at + done, n))
                which = -1;
            done += n;
        }
        at += len;
    }
    free(buf);
    bdev_close(bd);
    hv_reactor_destroy(r);
    return which; /* index of the expectation it equals, or -1 */
}

/* ------------------------------------------------------------ the states */

enum op_kind { OP_MERGE, OP_COMPACT, OP_RESIZE };

struct op_case {
    const char *name;
    enum op_kind kind;
    int read_file;   /* the image whose chain is read (merge: the top child) */
    int result_file; /* merge: the ancestor */
    uint8_t *before;
    uint64_t before_size;
    uint8_t *after;
    uint64_t after_size;
    uint64_t before_end; /* past the last non-zero byte */
    uint64_t after_end;
};

static int g_states;
static int g_copy_window_states;
static int g_merge_verdicts[4]; /* by enum vhd_check_interrupted */
static int g_as_before, g_as_after;

static void state_path(int file, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", crash_state_dir(), g_files[file].name);
}

/* Returns what the state read as: 0 before, 1 after, 2 after in the window
 * between the footer and its copy. */
static int verify(struct op_case *oc, long point, int state_no, const bool *is_gone)
{
    char path[PATH_MAX];
    bool is_copy_window = false;
    enum vhd_check_interrupted verdict[MAX_FILES] = {0};
    for (int i = 0; i < g_file_count; i++) {
        if (is_gone[i] || g_files[i].is_marker)
            continue;
        state_path(i, path, sizeof(path));
        struct vhd_check_report rep;
        struct hv_err err = {0};
        int rc = vhd_check(path, &rep, &err);
        if (rc >= 0)
            verdict[i] = rep.interrupted;
        if (rc >= 0 && rep.interrupted == VHD_INTERRUPTED_RESIZE) {
            if (oc->kind != OP_RESIZE || rc != VHD_CHECK_LEAKED)
                die("%s state %d: an interrupted resize reported (exit %d)", oc->name, state_no,
                    rc);
            is_copy_window = true;
        }
        if (rc < 0 || rc == VHD_CHECK_CORRUPT) {
            fprintf(stderr, "%s state %d (crash point %ld): %s\n", oc->name, state_no, point,
                    rc < 0 ? hv_err_msg(&err, rc) : "corrupt");
            for (int k = 0; rc >= 0 && k < rep.problem_count; k++)
                fprintf(stderr, "  %s: %s\n", rep.problems[k].is_leak ? "leak" : "ERROR",
                        rep.problems[k].msg);
            die("%s: crash state %d is corrupt (kept in %s)", oc->name, state_no, crash_state_dir());
        }
        vhd_check_report_free(&rep);
    }
    int which = oc->kind == OP_MERGE && is_gone[oc->read_file] ? oc->result_file : oc->read_file;
    state_path(which, path, sizeof(path));
    struct hv_err err = {0};
    uint64_t size = 0;
    const uint8_t *wants[2] = {oc->before, oc->after};
    uint64_t sizes[2] = {oc->before_size, oc->after_size};
    uint64_t ends[2] = {oc->before_end, oc->after_end};
    int rc = disk_equals(path, wants, sizes, ends, 2, &size, &err);
    if (rc < -1)
        die("%s state %d (crash point %ld): open %s: %s (kept in %s)", oc->name, state_no, point,
            path, hv_err_msg(&err, rc), crash_state_dir());
    bool is_before = rc == 0;
    bool is_after = rc == 1 || (rc == 0 && oc->after_size == oc->before_size);
    if (rc < 0)
        die("%s state %d (crash point %ld): %s reads neither as before (%" PRIu64
            " bytes) nor as after (%" PRIu64 "): %" PRIu64 " bytes (kept in %s)",
            oc->name, state_no, point, path, oc->before_size, oc->after_size, size, crash_state_dir());
    if (is_copy_window) {
        if (!is_after)
            die("%s state %d: footer and copy differ, but it does not read as after", oc->name,
                state_no);
        struct vhd_repair_report rep;
        if (vhd_repair(path, NULL, &rep, &err) != 0)
            die("%s state %d: repair of the footer copy window failed: %s", oc->name, state_no,
                rep.action_count ? rep.actions[rep.action_count - 1] : hv_err_msg(&err, -EIO));
        vhd_repair_report_free(&rep);
        return 2;
    }
    /* A merge reads the same before and after; what check says about the
     * ancestor decides which it is, and must be true. */
    if (oc->kind == OP_MERGE) {
        enum vhd_check_interrupted v = verdict[oc->result_file];
        bool child_exists = !is_gone[oc->read_file];
        if (child_exists && verdict[oc->read_file] != v)
            die("%s state %d (crash point %ld): check says %d of CHILD but %d of the ancestor "
                "(kept in %s)",
                oc->name, state_no, point, verdict[oc->read_file], v, crash_state_dir());
        if (v == VHD_INTERRUPTED_MERGE_BEFORE && !child_exists)
            die("%s state %d (crash point %ld): check says \"reads as before\" but CHILD is "
                "gone (kept in %s)",
                oc->name, state_no, point, crash_state_dir());
        if (v == VHD_INTERRUPTED_MERGE_AFTER || (v == VHD_INTERRUPTED_NONE && !child_exists)) {
            state_path(oc->result_file, path, sizeof(path));
            if (disk_equals(path, wants + 1, sizes + 1, ends + 1, 1, &size, &err) != 0)
                die("%s state %d (crash point %ld): check says \"reads as after\" but the "
                    "ancestor alone does not (kept in %s)",
                    oc->name, state_no, point, crash_state_dir());
        }
        if (v == VHD_INTERRUPTED_NONE && child_exists) {
            /* Not begun: the ancestor is untouched by the copy. */
            for (int i = 0; i < g_log.count; i++)
                if (g_log.ev[i].file == oc->result_file && g_log.ev[i].kind == CRASH_WRITE &&
                    g_log.ev[i].submit_ev < point && g_log.ev[i].seq >= 0)
                    die("%s state %d (crash point %ld): no verdict, yet the copy had begun "
                        "(kept in %s)",
                        oc->name, state_no, point, crash_state_dir());
        }
        g_merge_verdicts[v]++;
        return v == VHD_INTERRUPTED_MERGE_AFTER || !child_exists ? 1 : 0;
    }
    return is_before ? 0 : 1;
}

/* Verified states by content: a crash state byte-for-byte identical to one
 * already verified (a few writes give many identical subsets) reads the
 * same; opening it again would only cost the engine's io_destroy, ~30 ms. */
struct seen {
    uint64_t hash;
    int outcome;
};
static struct seen *g_seen;
static int g_seen_count, g_seen_cap;
static int g_unique;

static void count_outcome(int outcome)
{
    g_states++;
    g_as_before += outcome == 0;
    g_as_after += outcome != 0;
    g_copy_window_states += outcome == 2;
}

static void crash_states(struct op_case *oc, uint64_t *seed)
{
    long *points = crash_points(STATES_PER_OP, g_log.clock + 1, seed);
    struct crash_image img = {0};
    g_seen_count = 0;
    for (int k = 0; k < STATES_PER_OP; k++) {
        uint64_t hash = 0x9e3779b97f4a7c15ull;
        long p = points[k];
        int mode = (int)(t_rand(seed) % 8); /* 0: none optional, 1: all, else random */
        bool is_gone[MAX_FILES] = {false};
        for (int f = 0; f < g_file_count; f++) {
            is_gone[f] = !crash_replay_file(&g_log, f, g_files[f].initial, g_files[f].initial_len,
                                            !g_files[f].is_marker, p, mode, seed, &img);
            char path[PATH_MAX];
            state_path(f, path, sizeof(path));
            if (is_gone[f]) {
                unlink(path);
                hash = hash * 31 + 7;
            } else {
                crash_image_write_sparse(path, &img);
                hash = (hash ^ hv_xxh3_64(img.bytes, img.length)) * 0x100000001b3ull + img.length;
            }
        }
        int outcome = -1;
        for (int i = 0; i < g_seen_count && outcome < 0; i++)
            if (g_seen[i].hash == hash)
                outcome = g_seen[i].outcome;
        if (outcome < 0) {
            outcome = verify(oc, p, k, is_gone);
            if (g_seen_count == g_seen_cap) {
                g_seen_cap = g_seen_cap ? g_seen_cap * 2 : 256;
                g_seen = realloc(g_seen, (size_t)g_seen_cap * sizeof(*g_seen));
                if (!g_seen)
                    die("out of memory");
            }
            g_seen[g_seen_count++] = (struct seen){hash, outcome};
            g_unique++;
        }
        count_outcome(outcome);
    }
    free(img.bytes);
    free(points);
}

/* ------------------------------------------------------------ the cases */

static void create(const char *path, enum vhd_type type, uint64_t size, uint32_t block,
                   const char *parent)
{
    struct vhd_create_options o = {
        .type = type, .size_bytes = size, .block_bytes = block, .parent_path = parent};
    struct hv_err err = {0};
    unlink(path);
    if (vhd_create(path, &o, &err) < 0)
        die("create %s: %s", path, err.msg);
}

static void fill(const char *path, uint64_t off, uint64_t len, uint64_t seed, bool is_discard)
{
    struct hv_reactor *r;
    struct bdev *bd;
    struct hv_err err = {0};
    struct vhd_open_options o = {.no_direct_io = true};
    if (hv_reactor_create(&r) < 0 || vhd_open(r, path, &o, &bd, &err) < 0)
        die("open %s: %s", path, err.msg);
    if (is_discard) {
        if (bdev_request_sync(bd, BDEV_IO_DISCARD, off, len, 0) < 0)
            die("discard");
    } else {
        uint8_t *buf = hv_alloc_aligned(len);
        if (seed)
            t_fill(buf, len, seed);
        else
            memset(buf, 0, len);
        if (bdev_write_sync(bd, off, buf, len, 0) < 0)
            die("write %s", path);
        free(buf);
    }
    if (bdev_close(bd) < 0)
        die("close %s", path);
    hv_reactor_destroy(r);
}

static void finish_case(struct op_case *oc, uint64_t *seed)
{
    int writes = 0, syncs = 0, other = 0;
    for (int i = 0; i < g_log.count; i++) {
        writes += g_log.ev[i].kind == CRASH_WRITE;
        syncs += g_log.ev[i].kind == CRASH_SYNC;
        other += g_log.ev[i].kind == CRASH_TRUNCATE || g_log.ev[i].kind == CRASH_UNLINK ||
                 g_log.ev[i].kind == CRASH_REPLACE;
    }
    if (!writes || !syncs)
        die("%s: recorded %d writes and %d syncs", oc->name, writes, syncs);
    oc->before_end = data_end(oc->before, oc->before_size);
    oc->after_end = data_end(oc->after, oc->after_size);
    int before = g_states, copy = g_copy_window_states, b = g_as_before, a = g_as_after;
    int unique = g_unique;
    uint64_t t0 = hv_now_ns();
    crash_states(oc, seed);
    printf("# %s (%.1f s): %d writes, %d fdatasyncs, %d truncations/deletions/replacements recorded; %d crash "
           "states (%d distinct): %d read as before, %d as after%s, none corrupt%s\n",
           oc->name, (double)(hv_now_ns() - t0) / 1e9, writes, syncs, other, g_states - before,
           g_unique - unique, g_as_before - b, g_as_after - a,
           oc->kind == OP_COMPACT ? " (compact reads the same before and after)" : "",
           g_copy_window_states - copy
               ? " (some between the footer and its copy: read as after, repaired clean)"
               : "");
    if (g_copy_window_states > copy)
        printf("#   %d of them between the footer and its copy: check says \"interrupted "
               "resize\" (exit 3), all repaired clean\n",
               g_copy_window_states - copy);
    if (oc->kind == OP_MERGE)
        printf("#   check's verdict: %d \"reads as before\", %d \"reads as after\", %d none "
               "(not begun or finished) among the distinct states, each confirmed\n",
               g_merge_verdicts[VHD_INTERRUPTED_MERGE_BEFORE],
               g_merge_verdicts[VHD_INTERRUPTED_MERGE_AFTER],
               g_merge_verdicts[VHD_INTERRUPTED_NONE]);
    memset(g_merge_verdicts, 0, sizeof(g_merge_verdicts));
    free(oc->before);
    free(oc->after);
    reset_recording();
}

/* Case `oc` works on the image paths[0], whose chain is paths[0..n-1]:
 * what it reads before, and every file tracked. */
static void case_begin(struct op_case *oc, const char *const *paths, int n)
{
    struct hv_err err = {0};
    int rc;
    oc->before = read_disk(paths[0], &oc->before_size, &err, &rc);
    if (!oc->before)
        die("%s: read %s: %s", oc->name, paths[0], hv_err_msg(&err, rc));
    for (int i = 0; i < n; i++)
        track(paths[i]);
    oc->read_file = 0;
}

/* What `path` reads after the operation. */
static void case_after(struct op_case *oc, const char *path)
{
    struct hv_err err = {0};
    int rc;
    oc->after = read_disk(path, &oc->after_size, &err, &rc);
    if (!oc->after)
        die("%s: read %s: %s", oc->name, path, hv_err_msg(&err, rc));
}

/* Merge chain[0] into chain[n-1] (`into` as vhd merge --into gives it, NULL
 * for the parent); the ancestor must then read what the child did. */
static void run_merge(struct op_case *oc, const char *const *chain, int n, const char *into,
                      uint64_t *seed)
{
    struct hv_err err = {0};
    case_begin(oc, chain, n);
    track_marker(chain[n - 1]);
    oc->result_file = n - 1;
    g_log.engine_file = n - 1;
    struct vhd_merge_options o = {
        .into = into, .observer = &g_ops_obs, .no_direct_io = true, .depth = 4};
    struct vhd_merge_result res;
    if (vhd_merge(chain[0], &o, &res, &err) < 0)
        die("%s: %s", oc->name, err.msg);
    case_after(oc, chain[n - 1]);
    if (oc->after_size != oc->before_size || memcmp(oc->after, oc->before, oc->before_size))
        die("%s: the ancestor does not read what the child did", oc->name);
    finish_case(oc, seed);
}

/* Resize chain[0] to `to` bytes: the data up to the smaller size stays,
 * the rest reads zeroes. */
static void run_resize(struct op_case *oc, const char *const *chain, int n, uint64_t to,
                       uint64_t *seed)
{
    struct hv_err err = {0};
    case_begin(oc, chain, n);
    struct vhd_resize_options o = {.is_forced = true, .observer = &g_ops_obs};
    if (vhd_resize(chain[0], to, &o, &err) < 0)
        die("%s: %s", oc->name, err.msg);
    case_after(oc, chain[0]);
    uint64_t kept = HV_MIN(oc->before_size, to);
    if (oc->after_size != to || memcmp(oc->after, oc->before, kept) ||
        !hv_buf_is_zero(oc->after + kept, to - kept))
        die("%s: the result does not read as expected", oc->name);
    finish_case(oc, seed);
}

static void case_merge(const char *dir, uint64_t *seed)
{
    char base[PATH_MAX], c1[PATH_MAX], c2[PATH_MAX];
    snprintf(base, sizeof(base), "%s/mbase.vhd", dir);
    snprintf(c1, sizeof(c1), "%s/mc1.vhd", dir);
    snprintf(c2, sizeof(c2), "%s/mc2.vhd", dir);
    create(base, VHD_TYPE_DYNAMIC, 6 * HV_MiB, 512 * 1024, NULL);
    fill(base, 0, 2 * HV_MiB, 1, false);
    fill(base, 4 * HV_MiB, 1 * HV_MiB, 2, false);
    create(c1, VHD_TYPE_DIFFERENCING, 0, 512 * 1024, base);
    fill(c1, 1 * HV_MiB + 4096, 2 * HV_MiB, 3, false);
    create(c2, VHD_TYPE_DIFFERENCING, 0, 512 * 1024, c1);
    fill(c2, 512 * 1024 - 8192, 16384, 4, false);
    fill(c2, 3 * HV_MiB, 1 * HV_MiB + 512 * 1024, 5, false);
    fill(c2, 5 * HV_MiB, 64 * 1024, 0, false);

    struct op_case oc = {.name = "merge", .kind = OP_MERGE};
    run_merge(&oc, (const char *[]){c2, c1, base}, 3, base, seed);
}

/* A child into a fixed parent: the engine writes in place, no allocation. */
static void case_merge_fixed(const char *dir, uint64_t *seed)
{
    char base[PATH_MAX], child[PATH_MAX];
    snprintf(base, sizeof(base), "%s/fbase.vhd", dir);
    snprintf(child, sizeof(child), "%s/fchild.vhd", dir);
    create(base, VHD_TYPE_FIXED, 4 * HV_MiB, 0, NULL);
    fill(base, 0, 4 * HV_MiB, 41, false);
    create(child, VHD_TYPE_DIFFERENCING, 0, 512 * 1024, base);
    fill(child, 4096, 1 * HV_MiB, 42, false);
    fill(child, 3 * HV_MiB, 8192, 0, false);
    struct op_case oc = {.name = "merge-into-fixed", .kind = OP_MERGE};
    run_merge(&oc, (const char *[]){child, base}, 2, NULL, seed);
}

/* A differencing child grows past its BAT: locators lie right after the
 * BAT, so the BAT moves after the last block. */
static void case_resize_differencing(const char *dir, uint64_t *seed)
{
    char parent[PATH_MAX], img[PATH_MAX];
    snprintf(parent, sizeof(parent), "%s/rpar.vhd", dir);
    snprintf(img, sizeof(img), "%s/resize-diff.vhd", dir);
    create(parent, VHD_TYPE_DYNAMIC, 4 * HV_MiB, 512 * 1024, NULL);
    fill(parent, 0, 4 * HV_MiB, 51, false);
    create(img, VHD_TYPE_DIFFERENCING, 0, 512 * 1024, parent);
    fill(img, 1 * HV_MiB, 1 * HV_MiB + 4096, 52, false);
    struct op_case oc = {.name = "resize-differencing", .kind = OP_RESIZE};
    run_resize(&oc, (const char *[]){img, parent}, 2, 600 * HV_MiB + 1536, seed);
}

static void case_compact(const char *dir, uint64_t *seed)
{
    char img[PATH_MAX];
    snprintf(img, sizeof(img), "%s/compact.vhd", dir);
    create(img, VHD_TYPE_DYNAMIC, 8 * HV_MiB, 512 * 1024, NULL);
    fill(img, 0, 8 * HV_MiB, 11, false);
    fill(img, 512 * 1024, 1 * HV_MiB, 0, false); /* two zero blocks */
    fill(img, 3 * HV_MiB, 512 * 1024, 0, false);
    fill(img, 5 * HV_MiB, 1 * HV_MiB, 0, true); /* holes */
    struct op_case oc = {.name = "compact", .kind = OP_COMPACT};
    struct hv_err err = {0};
    case_begin(&oc, (const char *[]){img}, 1);
    struct vhd_compact_options o = {.observer = &g_ops_obs};
    struct vhd_compact_result res;
    if (vhd_compact(img, &o, &res, &err) < 0)
        die("compact: %s", err.msg);
    if (res.blocks_freed < 3 || res.blocks_moved == 0)
        die("compact: freed %u, moved %u: the case does not exercise relocation", res.blocks_freed,
            res.blocks_moved);
    case_after(&oc, img);
    finish_case(&oc, seed);
}

static void case_compact_differencing(const char *dir, uint64_t *seed)
{
    char parent[PATH_MAX], img[PATH_MAX];
    snprintf(parent, sizeof(parent), "%s/cpar.vhd", dir);
    snprintf(img, sizeof(img), "%s/cchild.vhd", dir);
    create(parent, VHD_TYPE_DYNAMIC, 6 * HV_MiB, 512 * 1024, NULL);
    fill(parent, 0, 1 * HV_MiB, 31, false);
    create(img, VHD_TYPE_DIFFERENCING, 0, 512 * 1024, parent);
    fill(img, 0, 6 * HV_MiB, 32, false);
    fill(img, 512 * 1024, 512 * 1024, 0, false); /* zeroes masking parent data: kept */
    fill(img, 2 * HV_MiB, 1 * HV_MiB, 0, false); /* zeroes over zeroes: freed */
    fill(img, 4 * HV_MiB, 512 * 1024, 0, true);  /* discarded: a hole */
    struct op_case oc = {.name = "compact-differencing", .kind = OP_COMPACT};
    struct hv_err err = {0};
    case_begin(&oc, (const char *[]){img, parent}, 2);
    struct vhd_compact_options o = {.observer = &g_ops_obs};
    struct vhd_compact_result res;
    if (vhd_compact(img, &o, &res, &err) < 0)
        die("compact: %s", err.msg);
    if (res.blocks_freed != 2)
        die("compact differencing: freed %u blocks, expected 2", res.blocks_freed);
    case_after(&oc, img);
    if (memcmp(oc.after, oc.before, oc.before_size))
        die("compact differencing changed what the image reads");
    finish_case(&oc, seed);
}

static void case_resize(const char *dir, const char *name, enum vhd_type type, uint64_t from,
                        uint64_t to, uint64_t *seed)
{
    char img[PATH_MAX];
    snprintf(img, sizeof(img), "%s/%s.vhd", dir, name);
    create(img, type, from, type == VHD_TYPE_FIXED ? 0 : 512 * 1024, NULL);
    fill(img, 0, HV_MIN(from, to) / 2, 21, false);
    fill(img, from - 4096, 4096, 22, false);
    struct op_case oc = {.name = name, .kind = OP_RESIZE};
    run_resize(&oc, (const char *[]){img}, 1, to, seed);
}

/* Leave `bytes` of unused space before the footer of a dynamic image, as a
 * session that grew the file and then stopped leaves it (a hole: no leak). */
static void add_reserve(const char *path, uint64_t bytes)
{
    uint8_t footer[512];
    struct stat st;
    int fd = open(path, O_RDWR);
    if (fd < 0 || fstat(fd, &st) < 0 ||
        hv_pread_full(fd, footer, sizeof(footer), (uint64_t)st.st_size - 512) < 0 ||
        hv_pwrite_full(fd, footer, sizeof(footer), (uint64_t)st.st_size - 512 + bytes) < 0 ||
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, st.st_size - 512,
                  (off_t)bytes) < 0 || fsync(fd) < 0)
        die("%s: adding a reserve: %s", path, strerror(errno));
    close(fd);
}

/*
 * Online growth: the engine's resize op on an open image, as hvstord runs it
 * with the disk's requests held, recorded through the engine observer from
 * open to the end of the resize (what close writes is not part of it). With
 * `reserve`, the file has that much unused space before its footer (what a
 * session that grew the file leaves) and a moved BAT lands in it; without,
 * the file grows for the BAT.
 */
static void case_online_resize(const char *dir, const char *name, enum vhd_type type,
                               uint64_t from, uint64_t to, uint64_t reserve,
                               bool is_differencing, uint64_t *seed)
{
    char img[PATH_MAX], parent[PATH_MAX];
    snprintf(img, sizeof(img), "%s/%s.vhd", dir, name);
    snprintf(parent, sizeof(parent), "%s/%s-parent.vhd", dir, name);
    if (is_differencing) {
        create(parent, VHD_TYPE_DYNAMIC, from, 512 * 1024, NULL);
        fill(parent, 0, 1 * HV_MiB, 61, false);
        fill(parent, from - 1 * HV_MiB, 1 * HV_MiB, 62, false);
        create(img, VHD_TYPE_DIFFERENCING, 0, 512 * 1024, parent);
        fill(img, 512 * 1024 + 4096, 1 * HV_MiB, 63, false);
    } else {
        create(img, type, from, type == VHD_TYPE_FIXED ? 0 : 512 * 1024, NULL);
        fill(img, 0, HV_MIN(from / 2, 1 * HV_MiB), 64, false);
    }
    fill(img, from - 4096, 4096, 65, false);
    if (reserve)
        add_reserve(img, reserve);

    struct op_case oc = {.name = name, .kind = OP_RESIZE};
    struct hv_err err = {0};
    int rc;
    oc.before = read_disk(img, &oc.before_size, &err, &rc);
    if (!oc.before)
        die("read %s: %s", img, err.msg);
    track(img);
    if (is_differencing)
        track(parent);
    g_log.engine_file = 0;
    struct hv_reactor *r;
    struct bdev *bd;
    struct vhd_open_options o = {.no_direct_io = true, .observer = &g_engine_obs};
    if (hv_reactor_create(&r) < 0 || vhd_open(r, img, &o, &bd, &err) < 0)
        die("open %s: %s", img, err.msg);
    if (bd->ops->resize(bd, to, &err) < 0)
        die("online resize %s: %s", name, err.msg);
    g_log.is_recording = false; /* what close writes is not part of it */
    if (bdev_close(bd) < 0)
        die("close %s", img);
    hv_reactor_destroy(r);
    g_log.is_recording = true;
    oc.after = read_disk(img, &oc.after_size, &err, &rc);
    if (oc.after_size != to || memcmp(oc.after, oc.before, from) ||
        !hv_buf_is_zero(oc.after + from, to - from))
        die("online resize %s: the result does not read as expected", name);
    finish_case(&oc, seed);
}

int main(void)
{
    uint64_t seed = crash_seed(0x0b5eed01);
    uint64_t t0 = hv_now_ns();
    /* States live on a memory file system where there is one (opening and
     * checking 5,000 of them costs nothing there); the images themselves on
     * a real one. */
    const char *dir = t_tmpdir();
    crash_state_dir();

    uint64_t s = seed;
    case_merge(dir, &s);
    case_merge_fixed(dir, &s);
    case_compact(dir, &s);
    case_compact_differencing(dir, &s);
    case_resize(dir, "resize-dyn", VHD_TYPE_DYNAMIC, 4 * HV_MiB, 600 * HV_MiB + 512, &s);
    case_resize(dir, "resize-fixed-grow", VHD_TYPE_FIXED, 3 * HV_MiB, 5 * HV_MiB + 1024, &s);
    case_resize(dir, "resize-fixed-shrink", VHD_TYPE_FIXED, 5 * HV_MiB, 2 * HV_MiB, &s);
    case_resize_differencing(dir, &s);
    case_resize(dir, "resize-dyn-shrink", VHD_TYPE_DYNAMIC, 6 * HV_MiB, 2 * HV_MiB + 4096, &s);
    /* Online: 64 MiB of 512 KiB blocks fill the BAT's sector, so the BAT
     * moves (the file grows for it, or it lands in the reserve); 4 MiB
     * grows within its spare entries; a fixed image grows in place. */
    case_online_resize(dir, "online-dyn-grow-file", VHD_TYPE_DYNAMIC, 64 * HV_MiB,
                       200 * HV_MiB + 512, 0, false, &s);
    case_online_resize(dir, "online-dyn-reserve", VHD_TYPE_DYNAMIC, 64 * HV_MiB,
                       300 * HV_MiB + 4096, 1 * HV_MiB, false, &s);
    case_online_resize(dir, "online-diff", VHD_TYPE_DIFFERENCING, 64 * HV_MiB, 100 * HV_MiB, 0,
                       true, &s);
    case_online_resize(dir, "online-dyn-spare", VHD_TYPE_DYNAMIC, 4 * HV_MiB,
                       40 * HV_MiB + 1024, 0, false, &s);
    case_online_resize(dir, "online-fixed", VHD_TYPE_FIXED, 3 * HV_MiB, 5 * HV_MiB + 1024, 0,
                       false, &s);
    printf("# %d crash states in %.1f s, none corrupt, none with data lost\n", g_states,
           (double)(hv_now_ns() - t0) / 1e9);
    return 0;
}
