/*
 * Shared by the VHD crash harnesses (test_crash_engine.c, test_crash_ops.c):
 * the log of file effects an image's writer causes (writes with their data,
 * fdatasyncs, truncations, deletions, atomic replacements), each submitted
 * and completed on one clock; the engine's vhd_io_observer that fills it;
 * and the replay that turns the log into the file a crash at one instant
 * leaves on disk, materialized as a real sparse file in a state directory.
 *
 * Both harnesses must agree on what a crash may leave, or one of them proves
 * less than it says: that rule is crash_replay_file, and only there.
 */
#ifndef HVSTOR_TEST_CRASH_REPLAY_H
#define HVSTOR_TEST_CRASH_REPLAY_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testlib.h"
#include "vhd.h"

/* A failed harness keeps its crash states for a look (die names them). */
static bool crash_is_failed;

static HV_UNUSED void die(const char *fmt, ...) HV_PRINTF(1, 2) __attribute__((noreturn));
static HV_UNUSED void die(const char *fmt, ...)
{
    va_list ap;
    crash_is_failed = true;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* The harness's seed: `fallback`, or HVSTOR_CRASH_SEED, printed so that a
 * failure can be reproduced. */
static HV_UNUSED uint64_t crash_seed(uint64_t fallback)
{
    const char *env = getenv("HVSTOR_CRASH_SEED");
    uint64_t seed = env ? strtoull(env, NULL, 0) : fallback;
    printf("# seed %#" PRIx64 " (HVSTOR_CRASH_SEED reproduces)\n", seed);
    return seed;
}

/* ------------------------------------------------------------ recording */

enum crash_ev_kind { CRASH_WRITE, CRASH_SYNC, CRASH_TRUNCATE, CRASH_UNLINK, CRASH_REPLACE };

struct crash_ev {
    enum crash_ev_kind kind;
    int file;        /* the harness's number for the file */
    bool is_dsync;   /* write: durable once it completes (RWF_DSYNC, a FUA request's data) */
    uint64_t offset; /* write: where; truncate: the new length */
    uint32_t length; /* write, replace: bytes of data */
    uint8_t *data;
    int seq; /* engine request; -1 for an operation's own effect */
    long submit_ev;
    long complete_ev; /* -1: never completed */
    long res;         /* write: bytes written; sync: 0 on success */
};

struct crash_log {
    struct crash_ev *ev;
    int count, cap;
    long clock;        /* the harness may stamp its own events with clock++ too */
    bool is_recording; /* the engine observer records only while set */
    int engine_file;   /* the file the engine's effects go to */
};

/* A new event of `kind` on `file`, submitted now and not yet completed. */
static HV_UNUSED struct crash_ev *crash_log_add(struct crash_log *log, enum crash_ev_kind kind,
                                                int file)
{
    if (log->count == log->cap) {
        log->cap = log->cap ? log->cap * 2 : 1024;
        log->ev = realloc(log->ev, (size_t)log->cap * sizeof(*log->ev));
        if (!log->ev)
            die("out of memory");
    }
    struct crash_ev *e = &log->ev[log->count++];
    memset(e, 0, sizeof(*e));
    e->kind = kind;
    e->file = file;
    e->seq = -1;
    e->submit_ev = log->clock++;
    e->complete_ev = -1;
    return e;
}

/* A copy of `len` bytes as the event's data. */
static HV_UNUSED void crash_ev_set_data(struct crash_ev *e, const void *buf, size_t len)
{
    e->length = (uint32_t)len;
    e->data = malloc(len ? len : 1);
    if (!e->data)
        die("out of memory");
    memcpy(e->data, buf, len);
}

/* Forget every event (the clock starts again). */
static HV_UNUSED void crash_log_reset(struct crash_log *log)
{
    for (int i = 0; i < log->count; i++)
        free(log->ev[i].data);
    log->count = 0;
    log->clock = 0;
}

static HV_UNUSED void crash_log_free(struct crash_log *log)
{
    crash_log_reset(log);
    free(log->ev);
    log->ev = NULL;
    log->cap = 0;
}

/* vhd_io_observer callbacks; arg is the struct crash_log. */
static HV_UNUSED void crash_engine_submit(void *arg, int seq, bool is_sync, bool is_fua,
                                          uint64_t offset, const struct iovec *iov, int iovcnt)
{
    struct crash_log *log = arg;
    if (!log->is_recording)
        return;
    struct crash_ev *e = crash_log_add(log, is_sync ? CRASH_SYNC : CRASH_WRITE, log->engine_file);
    e->seq = seq;
    e->offset = offset;
    if (!is_sync) {
        size_t len = hv_iov_length(iov, iovcnt);
        e->is_dsync = is_fua;
        e->length = (uint32_t)len;
        e->data = malloc(len ? len : 1);
        if (!e->data)
            die("out of memory");
        hv_iov_to_buf(iov, iovcnt, 0, e->data, len);
    }
}

static HV_UNUSED void crash_engine_complete(void *arg, int seq, long res)
{
    struct crash_log *log = arg;
    if (!log->is_recording)
        return;
    for (int i = log->count - 1; i >= 0; i--) {
        if (log->ev[i].seq == seq && log->ev[i].complete_ev < 0) {
            log->ev[i].complete_ev = log->clock++;
            log->ev[i].res = res;
            return;
        }
    }
    die("observer: completion of unknown engine request %d", seq);
}

/* ---------------------------------------------------------- materialize */

static HV_UNUSED uint8_t *crash_read_file(const char *path, uint64_t *len)
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

/* A file's bytes in memory. Everything from `length` to `cap` is zero, so
 * that growing the file (by a write past its end or a truncation) shows
 * zeroes in between, as a real file does, whatever an earlier state left. */
struct crash_image {
    uint8_t *bytes;
    uint64_t length;
    uint64_t cap;
};

static HV_UNUSED void crash_image_apply(struct crash_image *img, uint64_t offset,
                                        const uint8_t *data, uint64_t len)
{
    if (offset + len > img->cap) {
        uint64_t cap = HV_MAX(img->cap * 2, offset + len);
        img->bytes = realloc(img->bytes, cap);
        if (!img->bytes)
            die("out of memory for a %" PRIu64 "-byte image", cap);
        memset(img->bytes + img->cap, 0, cap - img->cap);
        img->cap = cap;
    }
    if (len)
        memcpy(img->bytes + offset, data, len);
    if (offset + len > img->length)
        img->length = offset + len;
}

static HV_UNUSED void crash_image_truncate(struct crash_image *img, uint64_t len)
{
    if (len < img->length)
        memset(img->bytes + len, 0, img->length - len);
    else if (len > img->cap)
        crash_image_apply(img, len, NULL, 0);
    img->length = len;
}

/* The whole file becomes `len` bytes of `data`. */
static HV_UNUSED void crash_image_set(struct crash_image *img, const uint8_t *data, uint64_t len)
{
    if (img->length > len)
        memset(img->bytes + len, 0, img->length - len);
    img->length = 0;
    crash_image_apply(img, 0, data, len);
}

static HV_UNUSED void crash_image_write_sparse(const char *path, const struct crash_image *img)
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

/* -------------------------------------------------------------- replay */

static int crash_cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* `count` crash instants drawn from 0..last, in order (free() them).
 * Each is an instant between two events; the latest are "after
 * everything", where only what was never made durable may be lost. */
static HV_UNUSED long *crash_points(int count, long last, uint64_t *seed)
{
    long *points = calloc((size_t)count, sizeof(*points));
    if (!points)
        die("out of memory");
    for (int i = 0; i < count; i++)
        points[i] = (long)(t_rand(seed) % (uint64_t)(last + 1));
    qsort(points, (size_t)count, sizeof(*points), crash_cmp_long);
    return points;
}

/*
 * `img` becomes file `file` as a crash at instant `p` leaves it: `initial`
 * (`exists`: whether there was a file at all), then, in submission order,
 * every effect submitted before p that is durable, and of the others none
 * (mode 0), all (mode 1) or a random choice (mode > 1, writes then possibly
 * torn at sector granularity: a disk cache persists sectors in any order).
 *
 * Durable: a write or truncation that completed (a write in full) before
 * the submission of an fdatasync of the file that succeeded before p, or a
 * RWF_DSYNC write completed before p. A deletion, and an atomic replacement
 * (written, synced, renamed, directory synced), is in effect once reported.
 * Submission order matters: a write that completed before a later one was
 * submitted cannot land on top of it, even when only the later one is
 * durable (a RWF_DSYNC write over an unflushed one).
 *
 * Returns whether the file exists after the replay.
 */
static HV_UNUSED bool crash_replay_file(const struct crash_log *log, int file,
                                        const uint8_t *initial, uint64_t initial_len, bool exists,
                                        long p, int mode, uint64_t *seed, struct crash_image *img)
{
    long sync_submit = -1;
    for (int i = 0; i < log->count; i++) {
        const struct crash_ev *e = &log->ev[i];
        if (e->file == file && e->kind == CRASH_SYNC && e->complete_ev >= 0 &&
            e->complete_ev < p && e->res == 0)
            sync_submit = HV_MAX(sync_submit, e->submit_ev);
    }
    crash_image_set(img, initial, initial_len);
    for (int i = 0; i < log->count; i++) {
        const struct crash_ev *e = &log->ev[i];
        if (e->file != file || e->kind == CRASH_SYNC || e->submit_ev >= p)
            continue;
        if (e->kind == CRASH_UNLINK) {
            exists = false;
            continue;
        }
        if (e->kind == CRASH_REPLACE) {
            exists = true;
            crash_image_set(img, e->data, e->length);
            continue;
        }
        bool is_durable = e->complete_ev >= 0 && e->res == (long)e->length &&
                          (e->complete_ev < sync_submit || (e->is_dsync && e->complete_ev < p));
        bool take = is_durable || mode == 1 || (mode > 1 && t_rand(seed) % 2);
        if (!take)
            continue;
        if (e->kind == CRASH_TRUNCATE) {
            crash_image_truncate(img, e->offset);
        } else if (!is_durable && mode > 1 && e->length > 512 && t_rand(seed) % 4 == 0) {
            for (uint32_t s = 0; s < e->length; s += 512)
                if (t_rand(seed) % 2)
                    crash_image_apply(img, e->offset + s, e->data + s, HV_MIN(512, e->length - s));
        } else {
            crash_image_apply(img, e->offset, e->data, e->length);
        }
    }
    return exists;
}

/* ------------------------------------------------------- state directory */

/*
 * Where crash states are materialized: verifying a state opens and closes
 * it, and close makes metadata durable with fdatasync; on a memory file
 * system that costs nothing, which keeps thousands of states within a
 * minute. Without /dev/shm (or with HVSTOR_CRASH_ON_DISK) it is a directory
 * in the test's scratch dir. Removed at exit, unless the harness failed or
 * HVSTOR_KEEP_TMP is set.
 */
static char crash_dir[PATH_MAX];

static void crash_remove_state_dir(void)
{
    DIR *d;
    if (!crash_dir[0] || crash_is_failed || getenv("HVSTOR_KEEP_TMP") || !(d = opendir(crash_dir)))
        return;
    for (struct dirent *de; (de = readdir(d));) {
        char path[PATH_MAX + 256];
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            snprintf(path, sizeof(path), "%s/%s", crash_dir, de->d_name);
            unlink(path);
        }
    }
    closedir(d);
    rmdir(crash_dir);
}

static HV_UNUSED const char *crash_state_dir(void)
{
    if (!crash_dir[0]) {
        snprintf(crash_dir, sizeof(crash_dir), "/dev/shm/hvstor-crash-XXXXXX");
        if (getenv("HVSTOR_CRASH_ON_DISK") || !mkdtemp(crash_dir)) {
            snprintf(crash_dir, sizeof(crash_dir), "%s", t_path("states"));
            if (mkdir(crash_dir, 0755) < 0 && errno != EEXIST)
                die("%s: %s", crash_dir, strerror(errno));
        }
        atexit(crash_remove_state_dir);
    }
    return crash_dir;
}

#endif
