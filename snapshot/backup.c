/*
 * backup.c — full and incremental backups of a running group, verify, restore.
 *
 * A backup is a cut (snap_cut: every VHD disk gets a live child, raw disks
 * start copy-before-write), then a read of each disk's frozen view while
 * the guest writes on, then a live merge of the children. What it writes is
 * an ordinary VHD chain: `<seq>-c<N>-s<M>.vhd`, dynamic for a full backup,
 * differencing over the previous backup's file for an incremental one, and
 * `<seq>.manifest.json` with an xxh3-128 hash per unit read.
 *
 * Failure safety. `backup.lock` is written (durably) before the first file
 * is created and lists the files this run creates; it is removed only after
 * the manifest is durable. A run that finds one removes the files it lists
 * and says so. Whatever fails after the cut, the guest's disks are brought
 * back (children merged, copy-before-write stopped) and the CBT bits the
 * cut took are given back, so the next incremental still sees the changes.
 * The manifest is written last: a backup without a manifest does not exist.
 */
#include "snapshot_int.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vhd.h"

#define LOCK_NAME "backup.lock"
#define DEFAULT_UNIT (1024u * 1024)
/* Big enough for sequential throughput, small enough that a guest request
 * queued behind one of ours on the device does not wait long. */
#define READ_BATCH (1u * 1024 * 1024)
/* While the guest has requests in flight the backup reads and writes in
 * smaller pieces, one at a time: a guest request that arrives behind one
 * of ours waits for at most this much of our I/O. */
#define READ_BATCH_BUSY (256u * 1024)

/* ------------------------------------------------ off the reactor thread */

/* File creation, fsync, rename and unlink block for milliseconds to
 * seconds; the reactor serves the guest's I/O meanwhile (snap_blocking). */
struct json_call {
    const char *path;
    json_t *obj;
    struct hv_err *err;
};

static int json_write_run(void *arg)
{
    struct json_call *c = arg;
    return hv_json_write_file(c->path, c->obj, c->err);
}

static int write_json(struct snap_group *grp, const char *path, json_t *obj, struct hv_err *err)
{
    struct json_call c = {.path = path, .obj = obj, .err = err};
    return snap_blocking(grp, json_write_run, &c, err);
}

static int unlink_run(void *arg)
{
    return unlink((const char *)arg) < 0 ? -errno : 0;
}

static void unlink_quietly(struct snap_group *grp, const char *path)
{
    if (snap_blocking(grp, unlink_run, (void *)path, NULL) == -ENOMEM)
        unlink(path);
}

struct create_call {
    const char *path;
    const struct vhd_create_options *co;
    struct hv_err *err;
};

static int create_run(void *arg)
{
    struct create_call *c = arg;
    return vhd_create(c->path, c->co, c->err);
}

static void join(char *out, size_t cap, const char *dir, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

/* ------------------------------------------------------------ journal */

/* Temporary files of an atomic write ("<name>.tmp.<pid>") whose writer is
 * gone: a run killed while writing its lock or manifest leaves one. */
static void remove_stale_temps(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *t = strstr(de->d_name, ".tmp.");
        if (!t || (strncmp(de->d_name, LOCK_NAME ".tmp.", strlen(LOCK_NAME) + 5) != 0 &&
                   !strstr(de->d_name, ".manifest.json.tmp.")))
            continue;
        long pid = strtol(t + 5, NULL, 10);
        if (pid > 0 && pid != getpid() && kill((pid_t)pid, 0) == 0)
            continue;
        char p[PATH_MAX];
        join(p, sizeof(p), dir, de->d_name);
        unlink(p);
    }
    closedir(d);
}

static int recover_lock(const char *dir, char *recovered, size_t cap, struct hv_err *err)
{
    char path[PATH_MAX];
    join(path, sizeof(path), dir, LOCK_NAME);
    if (recovered && cap)
        recovered[0] = 0;
    if (access(path, F_OK) < 0) {
        remove_stale_temps(dir);
        return 0;
    }
    json_t *lock = NULL;
    struct hv_err jerr = {0};
    if (hv_json_read_file(path, &lock, &jerr) < 0) {
        /* A lock torn by a crash while it was written: nothing was created yet. */
        unlink(path);
        if (recovered)
            snprintf(recovered, cap, "%s was unreadable (%s): removed", path,
                     hv_err_msg(&jerr, -EINVAL));
        return 0;
    }
    json_int_t pid = json_integer_value(json_object_get(lock, "pid"));
    json_int_t lseq = json_integer_value(json_object_get(lock, "sequence"));
    char man[PATH_MAX];
    snprintf(man, sizeof(man), "%s/%" JSON_INTEGER_FORMAT ".manifest.json", dir, lseq);
    if (access(man, F_OK) == 0) {
        /* The manifest is written durably before the lock goes: that run
         * finished its backup and died later (while merging back). */
        json_decref(lock);
        unlink(path);
        if (recovered)
            snprintf(recovered, cap,
                     "backup #%" JSON_INTEGER_FORMAT " completed but its "
                     "process died before it released %s: nothing to remove",
                     lseq, path);
        return 0;
    }
    if (pid > 0 && pid != getpid() && kill((pid_t)pid, 0) == 0) {
        json_decref(lock);
        return hv_err_set(err, -EBUSY,
                          "%s: another backup (process %" JSON_INTEGER_FORMAT
                          ") is running into this directory",
                          dir, pid);
    }
    size_t off = 0;
    if (recovered)
        off = (size_t)snprintf(recovered, cap,
                               "backup #%" JSON_INTEGER_FORMAT " started %s "
                               "did not finish (process %" JSON_INTEGER_FORMAT " is gone); "
                               "removed its partial files:",
                               json_integer_value(json_object_get(lock, "sequence")),
                               json_string_value(json_object_get(lock, "started"))
                                   ? json_string_value(json_object_get(lock, "started"))
                                   : "?",
                               pid);
    json_t *files = json_object_get(lock, "files");
    size_t i;
    json_t *f;
    json_array_foreach(files, i, f)
    {
        const char *name = json_string_value(f);
        if (!name || strchr(name, '/'))
            continue; /* only plain names inside dir, never elsewhere */
        char fp[PATH_MAX];
        join(fp, sizeof(fp), dir, name);
        if (unlink(fp) == 0 && recovered && off < cap)
            off += (size_t)snprintf(recovered + off, cap - off, " %s", name);
    }
    json_decref(lock);
    unlink(path);
    remove_stale_temps(dir);
    return 0;
}

struct recover_call {
    const char *dir;
    char *recovered;
    size_t cap;
    struct hv_err *err;
};

/* Removing a dead run's partial files (big ones) takes a while. */
static int recover_run(void *arg)
{
    struct recover_call *c = arg;
    return recover_lock(c->dir, c->recovered, c->cap, c->err);
}

/* ------------------------------------------------------------ manifests */

int snap_backup_newest(const char *dir, int *seq)
{
    *seq = -1;
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    struct dirent *de;
    while ((de = readdir(d))) {
        int n, len = 0;
        if (sscanf(de->d_name, "%d.manifest.json%n", &n, &len) == 1 &&
            (size_t)len == strlen(de->d_name) && n > *seq)
            *seq = n;
    }
    closedir(d);
    return 0;
}

static int load_manifest(const char *dir, int seq, json_t **out, struct hv_err *err)
{
    char path[PATH_MAX], name[64];
    snprintf(name, sizeof(name), "%d.manifest.json", seq);
    join(path, sizeof(path), dir, name);
    int ret = hv_json_read_file(path, out, err);
    if (ret < 0)
        return ret;
    if (!json_is_array(json_object_get(*out, "disks"))) {
        json_decref(*out);
        return hv_err_set(err, -EINVAL, "%s: no \"disks\" array", path);
    }
    return 0;
}

static json_t *manifest_disk(json_t *man, int controller, int slot)
{
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(man, "disks"), i, d)
    {
        if (json_integer_value(json_object_get(d, "controller")) == controller &&
            json_integer_value(json_object_get(d, "slot")) == slot)
            return d;
    }
    return NULL;
}

/* --------------------------------------------------------- reading views */

struct cbw_wait {
    bool is_done;
    int status;
};

static void cbw_done(void *arg, int status)
{
    struct cbw_wait *w = arg;
    w->status = status;
    w->is_done = true;
}

/* Read unit `u` of disk d's frozen view into buf. */
static int read_unit(struct snap_group *grp, struct snap_disk *d, struct bdev *view, uint64_t u,
                     uint32_t unit, uint64_t size, uint8_t *buf, uint64_t *len)
{
    uint64_t off = u * unit;
    *len = HV_MIN((uint64_t)unit, size - off);
    if (view)
        return bdev_read_sync(view, off, buf, *len);
    struct cbw_wait w = {0};
    int ret = snap_cbw_read(d->cbw, u, buf, cbw_done, &w);
    if (ret < 0)
        return ret;
    ret = hv_reactor_run_until(grp->reactor, &w.is_done);
    return ret < 0 ? ret : w.status;
}

/* True when the frozen VHD view holds nothing in [off, off+len). */
static bool view_is_unallocated(struct bdev *view, uint64_t off, uint64_t len)
{
    uint64_t at = off;
    while (at < off + len) {
        uint32_t status = 0;
        uint64_t slen = 0;
        int depth = -1;
        if (bdev_block_status_sync(view, at, off + len - at, &status, &slen, &depth) < 0 ||
            slen == 0)
            return false;
        if (status & BDEV_STATUS_ALLOCATED)
            return false;
        at += slen;
    }
    return true;
}

/* ----------------------------------------------------------------- create */

struct disk_job {
    struct snap_disk *d;
    struct bdev *view; /* the VHD disk's frozen chain, NULL for cbw */
    uint32_t unit;
    uint64_t size;
    bool is_incremental;
    char why_full[256];
    char file[128]; /* name inside dir */
    char parent_file[128];
    json_t *blocks;
    uint64_t bytes_read;
    uint64_t bytes_written;
    uint64_t bytes_changed;
};

static int back_up_disk(struct snap_group *grp, const struct snap_backup_options *opt,
                        struct disk_job *j, const uint8_t *bits, struct hv_err *err)
{
    char path[PATH_MAX], parent[PATH_MAX];
    join(path, sizeof(path), opt->dir, j->file);
    struct vhd_create_options co = {.type = VHD_TYPE_DYNAMIC, .size_bytes = j->size};
    if (j->is_incremental) {
        join(parent, sizeof(parent), opt->dir, j->parent_file);
        co.type = VHD_TYPE_DIFFERENCING;
        co.size_bytes = 0;
        co.parent_path = parent;
    }
    struct create_call cc = {.path = path, .co = &co, .err = err};
    int ret = snap_blocking(grp, create_run, &cc, err);
    if (ret < 0)
        return ret;
    struct bdev *out = NULL;
    struct vhd_open_options oo = {0};
    ret = vhd_open(grp->reactor, path, &oo, &out, err);
    if (ret < 0)
        return ret;
    /* Units are read in runs of up to READ_BATCH bytes (one request each:
     * the engine and the disk like big sequential reads), then hashed and
     * written per run of non-zero units. Copy-before-write disks are read a
     * chunk at a time, the way their filter serves them. */
    uint32_t batch_units = j->view ? HV_MAX(1u, READ_BATCH / j->unit) : 1;
    uint32_t busy_units = j->view ? HV_MAX(1u, READ_BATCH_BUSY / j->unit) : 1;
    uint8_t *buf = hv_alloc_aligned((size_t)batch_units * j->unit);
    if (!buf) {
        bdev_close(out);
        return hv_err_set(err, -ENOMEM, "%s: out of memory", path);
    }
    uint64_t units = HV_DIV_ROUND_UP(j->size, j->unit);
    struct hv_progress prog;
    hv_progress_begin(&prog, j->file, j->size, opt->show_progress);
    uint64_t u = 0;
    uint64_t started = hv_now_ns();
    while (u < units && ret == 0) {
        hv_progress_update(&prog, u * j->unit);
        /* Rate limit: let the guest's I/O have the device meanwhile. */
        while (opt->max_bytes_per_second &&
               j->bytes_read * 1000000000.0 / opt->max_bytes_per_second >
                   (double)(hv_now_ns() - started))
            hv_reactor_run_once(grp->reactor, 1);
        if (j->is_incremental && !snap_bit_test(bits, u)) {
            u++;
            continue;
        }
        /* A full backup skips what the frozen chain does not hold at all. */
        if (!j->is_incremental && j->view &&
            view_is_unallocated(j->view, u * j->unit,
                                HV_MIN((uint64_t)j->unit, j->size - u * j->unit))) {
            u++;
            continue;
        }
        /* Pacing: smaller pieces while the guest is busy. */
        uint32_t max_units =
            !opt->is_unpaced && snap_gate_inflight(grp->gate) ? busy_units : batch_units;
        uint64_t first = u, n = 1;
        while (n < max_units && first + n < units &&
               (j->is_incremental ? snap_bit_test(bits, first + n) : true))
            n++;
        uint64_t off = first * j->unit;
        uint64_t len = HV_MIN(n * j->unit, j->size - off);
        if (j->view)
            ret = bdev_read_sync(j->view, off, buf, len);
        else
            ret = read_unit(grp, j->d, NULL, first, j->unit, j->size, buf, &len);
        if (ret < 0) {
            hv_err_set(err, ret,
                       "disk c%d-s%d: reading %" PRIu64 " bytes at %" PRIu64
                       " of the frozen view: %s",
                       j->d->controller, j->d->slot, len, off, strerror(-ret));
            break;
        }
        j->bytes_read += len;
        if (j->is_incremental)
            j->bytes_changed += len;
        /* A full backup needs no zero units (a dynamic VHD reads zero where
         * nothing is allocated); an incremental must write them, since its
         * parent may hold older data there. */
        uint64_t run_at = 0, run_len = 0;
        for (uint64_t k = 0; k < n && ret == 0; k++) {
            uint64_t uo = k * j->unit;
            uint64_t ul = HV_MIN((uint64_t)j->unit, len - uo);
            bool keep = j->is_incremental || !hv_buf_is_zero(buf + uo, ul);
            if (keep) {
                char hex[33];
                hv_xxh3_128_hex(buf + uo, ul, hex);
                json_array_append_new(j->blocks, json_pack("[I,s]", (json_int_t)(off + uo), hex));
                if (run_len == 0)
                    run_at = uo;
                run_len += ul;
            }
            if ((!keep || k + 1 == n) && run_len) {
                ret = bdev_write_sync(out, off + run_at, buf + run_at, run_len, 0);
                if (ret < 0)
                    hv_err_set(err, ret, "%s: writing %" PRIu64 " bytes at %" PRIu64 ": %s", path,
                               run_len, off + run_at, strerror(-ret));
                j->bytes_written += run_len;
                run_len = 0;
            }
        }
        u = first + n;
    }
    /* Raw disks: every chunk not read stays "pending" in copy-before-write
     * until stop; nothing more to do here. */
    hv_progress_end(&prog);
    free(buf);
    if (ret == 0) {
        ret = bdev_flush_sync(out);
        if (ret < 0)
            hv_err_set(err, ret, "%s: flush: %s", path, strerror(-ret));
    }
    int cl = bdev_close(out);
    if (ret == 0 && cl < 0)
        ret = hv_err_set(err, cl, "%s: close: %s", path, strerror(-cl));
    return ret;
}

static void iso_time(time_t t, char out[32])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int snap_backup_create(struct snap_group *grp, const struct snap_backup_options *opt,
                       struct snap_backup_result *res, char *recovered, size_t recovered_cap,
                       struct hv_err *err)
{
    memset(res, 0, sizeof(*res));
    if (mkdir(opt->dir, 0700) < 0 && errno != EEXIST)
        return hv_err_errno(err, opt->dir, "backup directory");
    struct recover_call rc = {
        .dir = opt->dir, .recovered = recovered, .cap = recovered_cap, .err = err};
    int ret = snap_blocking(grp, recover_run, &rc, err);
    if (ret < 0)
        return ret;
    int prev_seq;
    ret = snap_backup_newest(opt->dir, &prev_seq);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: cannot list: %s", opt->dir, strerror(-ret));
    int seq = prev_seq + 1;
    res->sequence = seq;
    json_t *prev = NULL;
    bool want_incr = opt->is_incremental;
    if (want_incr && prev_seq < 0) {
        want_incr = false;
        snprintf(res->why_full, sizeof(res->why_full), "no earlier backup in %s", opt->dir);
    } else if (want_incr) {
        struct hv_err merr = {0};
        if (load_manifest(opt->dir, prev_seq, &prev, &merr) < 0) {
            want_incr = false;
            snprintf(res->why_full, sizeof(res->why_full),
                     "the previous manifest is "
                     "unreadable: %.200s",
                     hv_err_msg(&merr, -EINVAL));
        }
    }

    struct disk_job *jobs = calloc((size_t)grp->disk_count, sizeof(*jobs));
    json_t *lock = json_object();
    json_t *files = json_array();
    if (!jobs || !lock || !files) {
        free(jobs);
        json_decref(lock);
        json_decref(files);
        json_decref(prev);
        return hv_err_set(err, -ENOMEM, "backup: out of memory");
    }
    for (int i = 0; i < grp->disk_count; i++) {
        struct disk_job *j = &jobs[i];
        j->d = &grp->disks[i];
        j->size = j->d->top_bdev->size_bytes;
        j->unit = j->d->cbw && !j->d->top ? snap_cbw_chunk_bytes(j->d->cbw)
                  : j->d->cbt             ? snap_cbt_granularity(j->d->cbt)
                                          : DEFAULT_UNIT;
        j->blocks = json_array();
        snprintf(j->file, sizeof(j->file), "%d-c%d-s%d.vhd", seq, j->d->controller, j->d->slot);
        json_array_append_new(files, json_string(j->file));
        if (!j->d->top && !j->d->cbw) {
            ret = hv_err_set(err, -EINVAL,
                             "disk c%d-s%d: neither a VHD chain nor "
                             "copy-before-write: it cannot be backed up live",
                             j->d->controller, j->d->slot);
        }
    }
    char started[32];
    iso_time(time(NULL), started);
    json_object_set_new(lock, "pid", json_integer(getpid()));
    json_object_set_new(lock, "sequence", json_integer(seq));
    json_object_set_new(lock, "started", json_string(started));
    json_object_set_new(lock, "files", files);
    char lock_path[PATH_MAX];
    join(lock_path, sizeof(lock_path), opt->dir, LOCK_NAME);
    if (ret == 0)
        ret = write_json(grp, lock_path, lock, err);
    json_decref(lock);
    if (ret < 0) {
        for (int i = 0; i < grp->disk_count; i++)
            json_decref(jobs[i].blocks);
        free(jobs);
        json_decref(prev);
        return ret;
    }

    /* The cut. */
    struct snap_checkpoint_result cut;
    char cut_name[64];
    snprintf(cut_name, sizeof(cut_name), "backup%d", seq);
    ret = snap_cut(grp, cut_name, opt->want_app, true, &cut, err);
    if (ret < 0) {
        unlink_quietly(grp, lock_path);
        for (int i = 0; i < grp->disk_count; i++)
            json_decref(jobs[i].blocks);
        free(jobs);
        json_decref(prev);
        return ret;
    }
    res->consistency = cut.consistency;
    snprintf(res->why_crash, sizeof(res->why_crash), "%s", cut.why);
    res->hold_ns = cut.hold_ns;

    /* Incremental only if every disk can be: one kind per backup. */
    for (int i = 0; i < grp->disk_count && want_incr; i++) {
        struct disk_job *j = &jobs[i];
        struct snap_checkpoint_disk *cd = &cut.disks[i];
        json_t *pd = manifest_disk(prev, j->d->controller, j->d->slot);
        const char *why = NULL;
        char buf[256];
        if (!pd)
            why = "the previous backup does not have this disk";
        else if ((uint64_t)json_integer_value(json_object_get(pd, "size_bytes")) != j->size)
            why = "the disk's size changed since the previous backup";
        else if ((uint32_t)json_integer_value(json_object_get(pd, "unit_bytes")) != j->unit)
            why = "the tracking granularity changed since the previous backup";
        else if (!cd->cbt_bits)
            why = "the disk has no changed-block tracking";
        else if (!cd->cbt_reliable) {
            snprintf(buf, sizeof(buf), "changed-block tracking is not reliable: %s", cd->cbt_why);
            why = buf;
        }
        if (why) {
            want_incr = false;
            snprintf(res->why_full, sizeof(res->why_full), "disk c%d-s%d: %s", j->d->controller,
                     j->d->slot, why);
        } else {
            snprintf(j->parent_file, sizeof(j->parent_file), "%s",
                     json_string_value(json_object_get(pd, "file")));
        }
    }
    res->is_incremental = want_incr;

    for (int i = 0; i < grp->disk_count && ret == 0; i++) {
        struct disk_job *j = &jobs[i];
        j->is_incremental = want_incr;
        if (j->d->top)
            j->view = vhd_live_child_parent(snap_top_current(j->d->top));
        ret = back_up_disk(grp, opt, j, cut.disks[i].cbt_bits, err);
        if (ret < 0)
            hv_err_prefix(err, "backup #%d: disk c%d-s%d", seq, j->d->controller, j->d->slot);
        res->bytes_read += j->bytes_read;
        res->bytes_written += j->bytes_written;
        res->bytes_changed += j->bytes_changed;
    }

    /* The manifest, last: it is what makes the backup exist. */
    char man_path[PATH_MAX];
    snprintf(man_path, sizeof(man_path), "%s/%d.manifest.json", opt->dir, seq);
    if (ret == 0) {
        char when[32];
        iso_time(cut.created, when);
        json_t *disks = json_array();
        for (int i = 0; i < grp->disk_count; i++) {
            struct disk_job *j = &jobs[i];
            json_t *d = json_pack("{s:i,s:i,s:s,s:I,s:I,s:I,s:I}", "controller", j->d->controller,
                                  "slot", j->d->slot, "file", j->file, "size_bytes",
                                  (json_int_t)j->size, "unit_bytes", (json_int_t)j->unit,
                                  "bytes_read", (json_int_t)j->bytes_read, "bytes_written",
                                  (json_int_t)j->bytes_written);
            json_object_set_new(d, "parent_file",
                                j->is_incremental ? json_string(j->parent_file) : json_null());
            json_object_set_new(d, "blocks", j->blocks);
            j->blocks = NULL;
            json_array_append_new(disks, d);
        }
        json_t *man = json_pack(
            "{s:s,s:i,s:s,s:s,s:s,s:s,s:s,s:I,s:o}", "vm", opt->vm_name ? opt->vm_name : "",
            "sequence", seq, "type", want_incr ? "incremental" : "full", "why_full", res->why_full,
            "checkpoint_time", when, "consistency", cut.consistency == SNAP_APP ? "app" : "crash",
            "consistency_why", cut.why, "hold_ns", (json_int_t)cut.hold_ns, "disks", disks);
        json_object_set_new(man, "hash", json_string("xxh3-128"));
        ret = write_json(grp, man_path, man, err);
        json_decref(man);
        snprintf(res->manifest, sizeof(res->manifest), "%s", man_path);
        /* The backup exists now; what follows only concerns the VM. */
        if (ret == 0)
            unlink_quietly(grp, lock_path);
    }

    /* Give the guest its disks back as they were, whatever happened. */
    for (int i = 0; i < grp->disk_count; i++) {
        struct snap_disk *d = &grp->disks[i];
        if (d->cbw && !d->top)
            snap_cbw_stop(d->cbw);
        if (d->top && cut.disks[i].child_path[0]) {
            struct hv_err merr = {0};
            int m = snap_checkpoint_merge(grp, i, NULL, &merr);
            if (m < 0) {
                hv_warn("backup #%d: disk c%d-s%d: the backup child stays in the chain: %s", seq,
                        d->controller, d->slot, hv_err_msg(&merr, m));
                if (ret == 0)
                    ret = hv_err_set(err, m, "%s", hv_err_msg(&merr, m));
            }
        }
        if (ret < 0 && d->cbt && cut.disks[i].cbt_bits)
            snap_cbt_merge_back(d->cbt, cut.disks[i].cbt_bits, cut.disks[i].cbt_reliable,
                                cut.disks[i].cbt_why);
    }
    if (ret < 0) {
        for (int i = 0; i < grp->disk_count; i++) {
            char fp[PATH_MAX];
            join(fp, sizeof(fp), opt->dir, jobs[i].file);
            unlink_quietly(grp, fp);
        }
        unlink_quietly(grp, man_path);
    }
    unlink_quietly(grp, lock_path);
    for (int i = 0; i < grp->disk_count; i++)
        json_decref(jobs[i].blocks);
    free(jobs);
    json_decref(prev);
    snap_checkpoint_result_free(&cut);
    return ret;
}

/* ---------------------------------------------------------------- verify */

static int verify_disk(struct hv_reactor *r, const char *dir, json_t *d, json_t *rep,
                       struct hv_err *err)
{
    const char *file = json_string_value(json_object_get(d, "file"));
    uint32_t unit = (uint32_t)json_integer_value(json_object_get(d, "unit_bytes"));
    if (!file || strchr(file, '/') || unit == 0 || unit > 256u * 1024 * 1024)
        return hv_err_set(err, -EINVAL, "%s: manifest names a bad file or unit", dir);
    char path[PATH_MAX];
    join(path, sizeof(path), dir, file);
    json_object_set_new(rep, "file", json_string(file));
    struct vhd_check_report cr = {0};
    int c = vhd_check(path, &cr, err);
    if (c < 0)
        return c;
    json_object_set_new(rep, "check",
                        json_string(c == VHD_CHECK_CLEAN    ? "clean"
                                    : c == VHD_CHECK_LEAKED ? "leaked"
                                                            : "corrupt"));
    vhd_check_report_free(&cr);
    struct bdev *bd;
    struct vhd_open_options oo = {.is_read_only = true};
    int ret = vhd_open(r, path, &oo, &bd, err);
    if (ret < 0)
        return ret;
    uint8_t *buf = hv_alloc_aligned(unit);
    uint64_t good = 0, bad = 0;
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(d, "blocks"), i, b)
    {
        json_int_t off = json_integer_value(json_array_get(b, 0));
        const char *want = json_string_value(json_array_get(b, 1));
        if (off < 0 || (uint64_t)off >= bd->size_bytes || !want || !buf) {
            bad++;
            continue;
        }
        uint64_t len = HV_MIN((uint64_t)unit, bd->size_bytes - (uint64_t)off);
        char hex[33];
        if (bdev_read_sync(bd, (uint64_t)off, buf, len) < 0) {
            bad++;
            continue;
        }
        hv_xxh3_128_hex(buf, len, hex);
        if (strcmp(hex, want) == 0) {
            good++;
        } else {
            if (bad == 0)
                json_object_set_new(rep, "first_bad_offset", json_integer(off));
            bad++;
        }
    }
    free(buf);
    bdev_close(bd);
    json_object_set_new(rep, "blocks_ok", json_integer((json_int_t)good));
    json_object_set_new(rep, "blocks_bad", json_integer((json_int_t)bad));
    return (bad || c == VHD_CHECK_CORRUPT) ? 1 : 0;
}

int snap_backup_verify(const char *dir, json_t **report, struct hv_err *err)
{
    int newest;
    int ret = snap_backup_newest(dir, &newest);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: cannot list: %s", dir, strerror(-ret));
    if (newest < 0)
        return hv_err_set(err, -ENOENT, "%s: no backup manifest here", dir);
    struct hv_reactor *r;
    ret = hv_reactor_create(&r);
    if (ret < 0)
        return hv_err_set(err, ret, "reactor: %s", strerror(-ret));
    json_t *rep = json_object();
    json_t *list = json_array();
    bool ok = true;
    for (int s = 0; s <= newest && ret >= 0; s++) {
        char name[64], path[PATH_MAX];
        snprintf(name, sizeof(name), "%d.manifest.json", s);
        join(path, sizeof(path), dir, name);
        if (access(path, F_OK) < 0)
            continue;
        json_t *man;
        ret = load_manifest(dir, s, &man, err);
        if (ret < 0)
            break;
        size_t i;
        json_t *d;
        json_array_foreach(json_object_get(man, "disks"), i, d)
        {
            json_t *dr = json_object();
            json_object_set_new(dr, "sequence", json_integer(s));
            int v = verify_disk(r, dir, d, dr, err);
            json_array_append_new(list, dr);
            if (v < 0) {
                ret = v;
                break;
            }
            if (v > 0)
                ok = false;
        }
        json_decref(man);
    }
    hv_reactor_destroy(r);
    json_object_set_new(rep, "ok", json_boolean(ok && ret >= 0));
    json_object_set_new(rep, "disks", list);
    *report = rep;
    if (ret < 0)
        return ret;
    return ok ? 0
              : hv_err_set(err, -EBADMSG,
                           "%s: some blocks do not match their hashes, "
                           "or a file is corrupt",
                           dir);
}

/* --------------------------------------------------------------- restore */

int snap_backup_restore(const char *dir, int sequence, const char *to_dir, struct hv_err *err)
{
    if (sequence < 0) {
        int ret = snap_backup_newest(dir, &sequence);
        if (ret < 0)
            return hv_err_set(err, ret, "%s: cannot list: %s", dir, strerror(-ret));
        if (sequence < 0)
            return hv_err_set(err, -ENOENT, "%s: no backup manifest here", dir);
    }
    json_t *man;
    int ret = load_manifest(dir, sequence, &man, err);
    if (ret < 0)
        return ret;
    if (mkdir(to_dir, 0700) < 0 && errno != EEXIST) {
        json_decref(man);
        return hv_err_errno(err, to_dir, "restore directory");
    }
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(man, "disks"), i, d)
    {
        const char *file = json_string_value(json_object_get(d, "file"));
        if (!file || strchr(file, '/')) {
            ret = hv_err_set(err, -EINVAL, "%s: manifest %d names a bad file", dir, sequence);
            break;
        }
        char src[PATH_MAX], dst[PATH_MAX], name[64];
        join(src, sizeof(src), dir, file);
        snprintf(name, sizeof(name), "c%d-s%d.vhd",
                 (int)json_integer_value(json_object_get(d, "controller")),
                 (int)json_integer_value(json_object_get(d, "slot")));
        join(dst, sizeof(dst), to_dir, name);
        struct vhd_convert_options co = {.dst_format = VHD_FORMAT_VHD,
                                         .dst_type = VHD_TYPE_DYNAMIC};
        ret = vhd_convert(src, dst, &co, err);
        if (ret < 0)
            break;
    }
    json_decref(man);
    return ret;
}
