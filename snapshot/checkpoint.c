/*
 * checkpoint.c — one instant across every disk of a VM.
 *
 * Everything slow happens before the guest is held, and on a worker
 * thread, so that the reactor keeps serving the guest meanwhile: the
 * children are created (vhd_create: file, fsync, rename, directory fsync)
 * and opened over the running chains (vhd_live_child_open reads a few KiB
 * and grows the new file), the agent prepares its writers and freezes the
 * filesystems. The hold itself swaps each disk's top to its child (a
 * pointer), takes the CBT bitmaps (a pointer swap each) and, for backups of
 * raw disks, starts copy-before-write (a memset of chunk states). No file
 * is created, no metadata is read, nothing is synced or logged while the
 * guest waits: the flush that makes the old top's last writes durable is
 * the guest's own next flush, which the child passes on to its parent.
 *
 * A VHD-only cut does not wait for the requests in flight either. The
 * hold, the swaps and the release run in one go on the reactor thread, so
 * every request is either sent before the cut (to the old top, which the
 * checkpoint keeps) or after it (to the child). That is a crash-consistent
 * instant: a write W2 the guest issued after seeing W1 complete is in the
 * checkpoint only if it was sent before the cut, and then so was W1. The
 * bitmaps of changed-block tracking are marked at submission, above the
 * top, so they split at the same instant. What the checkpoint holds becomes
 * stable when the requests sent before the cut have completed: the cut
 * waits for that (snap_top_old_inflight) after the release, while the
 * guest's new requests flow to the children. A guest request thus waits
 * for the swap only, never for another request's disk latency.
 *
 * Copy-before-write cannot split that way (the raw disk under it is the
 * same before and after the cut), so a cut that starts it drains first:
 * the group's in-flight requests complete inside the hold.
 */
#include "snapshot_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "vhd.h"

struct wait_flag {
    bool is_done;
    int status;
};

static void on_drained(void *arg, int status)
{
    struct wait_flag *w = arg;
    w->status = status;
    w->is_done = true;
}

int snap_hold(struct snap_group *grp, struct hv_err *err)
{
    struct wait_flag w = {0};
    int ret = snap_gate_hold(grp->gate, on_drained, &w);
    if (ret < 0)
        return hv_err_set(err, ret, "quiesce gate: a hold is already running");
    ret = hv_reactor_run_until(grp->reactor, &w.is_done);
    if (ret < 0) {
        snap_gate_release(grp->gate);
        return hv_err_set(err, ret, "quiesce gate: reactor failed while draining");
    }
    return 0;
}

/* A name nobody uses yet: a child left behind by a killed run keeps its
 * name (it may be some chain's top) and the new one gets a suffix. */
void snap_child_path(const char *top, const char *name, char *out, size_t cap)
{
    size_t len = strlen(top);
    if (len > 4 && strcmp(top + len - 4, ".vhd") == 0)
        len -= 4;
    snprintf(out, cap, "%.*s.%s.vhd", (int)len, top, name);
    for (int n = 2; access(out, F_OK) == 0 && n < 1000; n++)
        snprintf(out, cap, "%.*s.%s-%d.vhd", (int)len, top, name, n);
}

void snap_checkpoint_result_free(struct snap_checkpoint_result *res)
{
    if (!res->disks)
        return;
    for (int i = 0; i < res->disk_count; i++)
        free(res->disks[i].cbt_bits);
    free(res->disks);
    res->disks = NULL;
}

static void set_crash(struct snap_checkpoint_result *res, const char *what, const char *msg)
{
    res->consistency = SNAP_CRASH;
    if (!res->why[0])
        snprintf(res->why, sizeof(res->why), "%s: %s", what, msg);
}

int snap_blocking(struct snap_group *grp, int (*fn)(void *arg), void *arg, struct hv_err *err)
{
    struct hv_workers *w;
    int ret = hv_workers_create(grp->reactor, 1, "snapshot", &w, err);
    if (ret < 0)
        return ret;
    ret = hv_workers_run(w, fn, arg);
    hv_workers_destroy(w);
    return ret;
}

/* vhd_create under a temporary name, then rename: a process killed while
 * creating leaves "<child>.creating", never a torn file with a .vhd name
 * that could be mistaken for part of a chain. Runs on a worker thread. */
static int create_child(const char *path, const struct vhd_create_options *co, struct hv_err *err)
{
    char tmp[PATH_MAX + 16], dir[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s.creating", path);
    unlink(tmp);
    int ret = vhd_create(tmp, co, err);
    if (ret < 0)
        return ret;
    if (rename(tmp, path) < 0) {
        ret = hv_err_errno(err, path, "rename");
        unlink(tmp);
        return ret;
    }
    snprintf(dir, sizeof(dir), "%s", path);
    int fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return 0;
}

struct create_call {
    const char *path;
    const struct vhd_create_options *co;
    struct hv_err *err;
};

static int create_call_run(void *arg)
{
    struct create_call *c = arg;
    return create_child(c->path, c->co, c->err);
}

/* Run the reactor until no request sent before the last cut is out. */
static void settle(struct snap_group *grp)
{
    for (;;) {
        unsigned out = 0;
        for (int i = 0; i < grp->disk_count; i++)
            if (grp->disks[i].top)
                out += snap_top_old_inflight(grp->disks[i].top);
        if (out == 0)
            return;
        int ret = hv_reactor_run_once(grp->reactor, 100);
        if (ret < 0) {
            hv_warn("checkpoint: reactor failed while the cut settled: %s", strerror(-ret));
            return;
        }
    }
}

static void on_swap_hold(void *arg, int status)
{
    (void)arg;
    (void)status; /* a swap-only hold does not wait for the drain */
}

int snap_cut(struct snap_group *grp, const char *name, bool want_app, bool start_cbw,
             struct snap_checkpoint_result *res, struct hv_err *err)
{
    int ret = 0;
    struct bdev **children = NULL;
    memset(res, 0, sizeof(*res));
    if (grp->disk_count <= 0 || grp->disk_count > SNAP_MAX_DISKS)
        return hv_err_set(err, -EINVAL, "checkpoint: %d disks (1..%d)", grp->disk_count,
                          SNAP_MAX_DISKS);
    res->disk_count = grp->disk_count;
    res->disks = calloc((size_t)grp->disk_count, sizeof(*res->disks));
    children = calloc((size_t)grp->disk_count, sizeof(*children));
    if (!res->disks || !children) {
        ret = hv_err_set(err, -ENOMEM, "checkpoint: out of memory");
        goto fail;
    }

    /* 1. Children, before anything is frozen or held. */
    for (int i = 0; i < grp->disk_count; i++) {
        struct snap_disk *d = &grp->disks[i];
        struct snap_checkpoint_disk *cd = &res->disks[i];
        if (!d->top || !d->vhd_path[0])
            continue;
        snprintf(cd->parent_path, sizeof(cd->parent_path), "%s", d->vhd_path);
        snap_child_path(d->vhd_path, name, cd->child_path, sizeof(cd->child_path));
        struct vhd_create_options co = {.type = VHD_TYPE_DIFFERENCING, .parent_path = d->vhd_path};
        struct create_call cc = {.path = cd->child_path, .co = &co, .err = err};
        ret = snap_blocking(grp, create_call_run, &cc, err);
        if (ret < 0) {
            cd->child_path[0] = 0;
            hv_err_prefix(err, "checkpoint '%s': disk c%d-s%d", name, d->controller, d->slot);
            goto fail;
        }
        ret = vhd_live_child_open(grp->reactor, cd->child_path, snap_top_current(d->top),
                                  &children[i], err);
        if (ret < 0) {
            hv_err_prefix(err, "checkpoint '%s': disk c%d-s%d", name, d->controller, d->slot);
            goto fail;
        }
    }

/* 2. The guest: writers prepare, filesystems freeze. */
    res->consistency = SNAP_CRASH;
    bool is_frozen = false;
    uint64_t frozen_at = 0;
    if (!want_app) {
        snprintf(res->why, sizeof(res->why), "crash consistency was asked for");
    } else if (!grp->agent) {
        snprintf(res->why, sizeof(res->why), "the VM has no guest agent");
    } else {
        struct hv_err aerr = {0};
        int a = snap_agent_prepare(grp->agent, &aerr);
        if (a == 0)
            a = snap_agent_freeze(grp->agent, grp->thaw_timeout_ms ? grp->thaw_timeout_ms : 10000,
                                  &aerr);
        if (a == 0) {
            is_frozen = true;
            frozen_at = hv_now_ns();
            res->consistency = SNAP_APP;
        } else {
            set_crash(res, "the guest agent could not freeze", hv_err_msg(&aerr, a));
            struct hv_err ignore = {0};
            snap_agent_abort(grp->agent, &ignore);
        }
    }

    /* 3. The hold: (drain,) swap, take, release. */
    bool needs_drain = false;
    for (int i = 0; i < grp->disk_count; i++)
        needs_drain = needs_drain || (start_cbw && grp->disks[i].cbw && !grp->disks[i].top);
    uint64_t cut_ns = hv_now_ns();
    if (needs_drain) {
        ret = snap_hold(grp, err);
    } else {
        ret = snap_gate_hold(grp->gate, on_swap_hold, NULL);
        if (ret < 0)
            hv_err_set(err, ret, "quiesce gate: a hold is already running");
    }
    if (ret < 0)
        goto thaw;
    for (int i = 0; i < grp->disk_count; i++) {
        struct snap_disk *d = &grp->disks[i];
        if (children[i]) {
            int sw = needs_drain ? snap_top_switch(d->top, children[i])
                                 : snap_top_switch_live(d->top, children[i]);
            if (sw < 0) {
                /* Undo the disks already switched: the cut is all or nothing. */
                for (int k = 0; k < i; k++)
                    if (children[k])
                        snap_top_switch_live(grp->disks[k].top,
                                             vhd_live_child_parent(children[k]));
                snap_gate_release(grp->gate);
                ret = hv_err_set(err, sw,
                                 "checkpoint '%s': disk c%d-s%d: cannot switch to "
                                 "the new child",
                                 name, d->controller, d->slot);
                goto thaw;
            }
        }
    }
    for (int i = 0; i < grp->disk_count; i++) {
        struct snap_disk *d = &grp->disks[i];
        struct snap_checkpoint_disk *cd = &res->disks[i];
        if (d->cbt && snap_cbt_take(d->cbt, &cd->cbt_bits, &cd->cbt_reliable, cd->cbt_why,
                                    sizeof(cd->cbt_why)) < 0)
            cd->cbt_bits = NULL; /* no bits: the next incremental is a full */
        if (start_cbw && d->cbw && !d->top)
            snap_cbw_start(d->cbw);
    }
    res->created = time(NULL);
    snap_gate_release(grp->gate);
    struct snap_gate_stats st;
    snap_gate_get_stats(grp->gate, &st);
    res->hold_ns = st.last_hold_ns;
    res->drain_ns = needs_drain ? st.last_drain_ns : 0;
    for (int i = 0; i < grp->disk_count; i++) {
        if (children[i])
            snprintf(grp->disks[i].vhd_path, sizeof(grp->disks[i].vhd_path), "%s",
                     res->disks[i].child_path);
        children[i] = NULL;
    }
    if (grp->on_cut)
        grp->on_cut(grp->on_cut_arg);

thaw:
    /* 4. Thaw. A thaw refused as "auto-thawed" means the guest ran on
     * before the cut: the cut is only crash-consistent, and we say so. */
    if (is_frozen) {
        struct hv_err aerr = {0};
        int a = snap_agent_thaw(grp->agent, &aerr);
        res->frozen_ns = hv_now_ns() - frozen_at;
        if (a < 0)
            set_crash(res,
                      "the guest agent's thaw failed, the guest may have thawed before "
                      "the cut",
                      hv_err_msg(&aerr, a));
    }
    if (ret < 0)
        goto fail;
    /* The checkpoint is stable once what was sent before the cut is done;
     * neither the guest's I/O nor its agent waits for that (drain_ns: from
     * the hold until then). */
    if (!needs_drain) {
        settle(grp);
        res->drain_ns = hv_now_ns() - cut_ns;
    }
    free(children);
    return 0;
fail:
    for (int i = 0; children && i < grp->disk_count; i++) {
        if (children[i])
            vhd_live_child_close(children[i]);
        if (res->disks && res->disks[i].child_path[0] &&
            strcmp(grp->disks[i].vhd_path, res->disks[i].child_path) != 0)
            unlink(res->disks[i].child_path);
    }
    free(children);
    snap_checkpoint_result_free(res);
    return ret;
}

int snap_checkpoint_create(struct snap_group *grp, const char *name, bool want_app,
                           struct snap_checkpoint_result *res, struct hv_err *err)
{
    int ret = snap_cut(grp, name, want_app, false, res, err);
    if (ret < 0)
        return ret;
    /* Changed-block tracking counts from backup to backup: a checkpoint
     * looks at the bits (the result keeps a copy) but gives them back. */
    for (int i = 0; i < grp->disk_count; i++)
        if (grp->disks[i].cbt && res->disks[i].cbt_bits)
            snap_cbt_merge_back(grp->disks[i].cbt, res->disks[i].cbt_bits,
                                res->disks[i].cbt_reliable, res->disks[i].cbt_why);
    return 0;
}

/* ------------------------------------------------------------ merge */

/*
 * The marker `<child>.merged` names the parent: once it is durable, the
 * parent is the disk's top. Its content is written (durably, under the name
 * `<child>.merged.pending`, which nothing reads) while the guest runs; in
 * the hold only a rename and one directory fsync remain, on a worker thread.
 */
struct marker_call {
    const char *child;
    const char *parent;
    struct hv_err *err;
};

static int marker_prepare_run(void *arg)
{
    struct marker_call *m = arg;
    char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s.merged.pending", m->child);
    return hv_write_file_atomic(path, m->parent, strlen(m->parent), m->err);
}

static int marker_commit_run(void *arg)
{
    struct marker_call *m = arg;
    char from[PATH_MAX + 32], to[PATH_MAX + 16], dir[PATH_MAX];
    snprintf(from, sizeof(from), "%s.merged.pending", m->child);
    snprintf(to, sizeof(to), "%s.merged", m->child);
    if (rename(from, to) < 0)
        return hv_err_errno(m->err, to, "rename");
    snprintf(dir, sizeof(dir), "%s", m->child);
    int fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_errno(m->err, to, "open directory");
    int ret = fsync(fd) < 0 ? hv_err_errno(m->err, to, "fsync directory") : 0;
    close(fd);
    return ret;
}

struct cleanup_call {
    const char *child;
};

/* After the switch: the child file and its marker go. */
static int merge_cleanup_run(void *arg)
{
    struct cleanup_call *c = arg;
    char marker[PATH_MAX + 16];
    unlink(c->child);
    snprintf(marker, sizeof(marker), "%s.merged", c->child);
    unlink(marker);
    return 0;
}

/* Passes while the guest runs until what the final pass (inside the hold)
 * must copy is small, or stops shrinking. From the first pass on the child
 * mirrors the guest's writes into the parent (vhd/live.c), so what is left
 * after a pass is only what the guest wrote to blocks a copy or another
 * write was busy with: each pass leaves less. */
#define MERGE_MAX_PASSES 16
#define MERGE_FINAL_BYTES (64u * 1024)

int snap_checkpoint_merge(struct snap_group *grp, int i, uint64_t *hold_ns, struct hv_err *err)
{
    struct snap_disk *d = &grp->disks[i];
    if (!d->top || !vhd_is_live_child(snap_top_current(d->top)))
        return hv_err_set(err, -EINVAL, "disk c%d-s%d: no live checkpoint child to merge",
                          d->controller, d->slot);
    struct bdev *child = snap_top_current(d->top);
    struct bdev *parent = vhd_live_child_parent(child);
    char child_path[4096], parent_path[4096];
    snprintf(child_path, sizeof(child_path), "%s", d->vhd_path);
    snprintf(parent_path, sizeof(parent_path), "%s",
             vhd_is_live_child(parent) ? parent->name
             : vhd_is_vhd_bdev(parent) ? vhd_chain_path(parent, 0)
                                       : parent->name);

    int ret = vhd_live_merge_pass(child, true, NULL, err);
    uint64_t prev = UINT64_MAX;
    for (int pass = 1; ret == 0 && pass < MERGE_MAX_PASSES; pass++) {
        uint64_t dirty = vhd_live_merge_dirty_bytes(child);
        if (dirty <= MERGE_FINAL_BYTES || (pass > 3 && dirty >= prev))
            break;
        prev = dirty;
        ret = vhd_live_merge_pass(child, false, NULL, err);
    }
    /* Most of the parent's new data becomes durable now, while the guest
     * runs: the flush inside the hold then has little left to do. */
    if (ret == 0) {
        ret = bdev_flush_sync(parent);
        if (ret < 0)
            hv_err_set(err, ret, "%s: flush: %s", parent_path, strerror(-ret));
    }
    if (ret < 0)
        return ret; /* nothing changed for the guest: still child over parent */

    struct marker_call mc = {.child = child_path, .parent = parent_path, .err = err};
    if (ret == 0)
        ret = snap_blocking(grp, marker_prepare_run, &mc, err);
    if (ret < 0)
        return ret;

    uint32_t left = vhd_live_merge_dirty_blocks(child);
    uint64_t left_bytes = vhd_live_merge_dirty_bytes(child);
    uint64_t t0 = hv_now_ns();
    ret = snap_hold(grp, err);
    if (ret < 0)
        return ret;
    uint64_t t1 = hv_now_ns();
    ret = vhd_live_merge_pass(child, false, NULL, err);
    uint64_t t2 = hv_now_ns();
    if (ret == 0) {
        ret = bdev_flush_sync(parent);
        if (ret < 0)
            hv_err_set(err, ret, "%s: flush after merge: %s", parent_path, strerror(-ret));
    }
    /* Durable before the guest can write to the parent: after a crash the
     * marker says the parent is the top and the child is stale. */
    if (ret == 0)
        ret = snap_blocking(grp, marker_commit_run, &mc, err);
    uint64_t t3 = hv_now_ns();
    if (ret == 0)
        ret = snap_top_switch(d->top, parent);
    snap_gate_release(grp->gate);
    hv_debug("merge c%d-s%d: final hold: %u blocks (%" PRIu64
             " bytes) left, drain %.3f ms, copy %.3f ms, flush "
             "and marker %.3f ms",
             d->controller, d->slot, left, left_bytes, (t1 - t0) / 1e6, (t2 - t1) / 1e6,
             (t3 - t2) / 1e6);
    if (hold_ns) {
        struct snap_gate_stats st;
        snap_gate_get_stats(grp->gate, &st);
        *hold_ns = st.last_hold_ns;
    }
    if (ret < 0) {
        char pending[PATH_MAX + 32];
        snprintf(pending, sizeof(pending), "%s.merged.pending", child_path);
        unlink(pending); /* still child over parent: nothing was switched */
        return ret;
    }
    snprintf(d->vhd_path, sizeof(d->vhd_path), "%s", parent_path);
    int cl = vhd_live_child_close(child);
    if (cl < 0)
        hv_warn("%s: close after merge: %s", child_path, strerror(-cl));
    if (grp->persist_top) {
        ret = grp->persist_top(grp->persist_arg, i, parent_path);
        if (ret < 0)
            return hv_err_set(err, ret,
                              "disk c%d-s%d: merged into %s, but recording the new "
                              "top failed; %s.merged tells the next start",
                              d->controller, d->slot, parent_path, child_path);
    }
    struct cleanup_call cc = {.child = child_path};
    if (snap_blocking(grp, merge_cleanup_run, &cc, NULL) < 0)
        merge_cleanup_run(&cc);
    return 0;
}

int snap_checkpoint_recover(const char *top_path, char *real_top, size_t cap, struct hv_err *err)
{
    char marker[PATH_MAX + 16];
    snprintf(marker, sizeof(marker), "%s.merged.pending", top_path);
    unlink(marker); /* a merge that died before its switch: the child is the top */
    snprintf(marker, sizeof(marker), "%s.merged", top_path);
    FILE *f = fopen(marker, "r");
    if (!f) {
        if (access(top_path, F_OK) < 0)
            return hv_err_errno(err, top_path, "open");
        snprintf(real_top, cap, "%s", top_path);
        return 0;
    }
    char buf[4096];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    if (n == 0 || access(buf, F_OK) < 0)
        return hv_err_set(err, -EINVAL, "%s: names a parent that does not exist ('%s')", marker,
                          buf);
    snprintf(real_top, cap, "%s", buf);
    unlink(top_path);
    unlink(marker);
    return 0;
}

/* ------------------------------------------------------------ apply */

static int parent_of(const char *path, char *out, size_t cap, struct hv_err *err)
{
    struct vhd_info info;
    int ret = vhd_inspect(path, &info, err);
    if (ret < 0)
        return ret;
    if (!info.has_parent)
        return 0;
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    const char *base = dirname(dir);
    if (info.parent_relative[0]) {
        snprintf(out, cap, "%s/%s", base, info.parent_relative);
        if (access(out, F_OK) == 0)
            return 1;
    }
    if (info.parent_absolute[0] && access(info.parent_absolute, F_OK) == 0) {
        snprintf(out, cap, "%s", info.parent_absolute);
        return 1;
    }
    snprintf(out, cap, "%s/%s", base, info.parent_name);
    if (access(out, F_OK) == 0)
        return 1;
    return hv_err_set(err, -ENOENT, "%s: parent '%s' not found", path, info.parent_name);
}

int snap_checkpoint_apply(const char *top_path, const char *checkpoint_path, char *new_top,
                          size_t cap, struct hv_err *err)
{
    char chain[VHD_MAX_CHAIN_DEPTH][PATH_MAX];
    int depth = 0;
    char want[PATH_MAX];
    if (!realpath(checkpoint_path, want))
        return hv_err_errno(err, checkpoint_path, "checkpoint");
    snprintf(chain[0], sizeof(chain[0]), "%s", top_path);
    for (;;) {
        char real[PATH_MAX];
        if (!realpath(chain[depth], real))
            return hv_err_errno(err, chain[depth], "open");
        if (strcmp(real, want) == 0)
            break;
        if (depth + 1 >= VHD_MAX_CHAIN_DEPTH)
            return hv_err_set(err, -ELOOP, "%s: chain too deep", top_path);
        int ret = parent_of(chain[depth], chain[depth + 1], sizeof(chain[0]), err);
        if (ret < 0)
            return ret;
        if (ret == 0)
            return hv_err_set(err, -EINVAL, "%s: checkpoint %s is not in this disk's chain",
                              top_path, checkpoint_path);
        depth++;
    }
    if (depth == 0)
        return hv_err_set(err, -EINVAL,
                          "%s: is the top itself: it has no child to discard "
                          "(take a checkpoint first)",
                          checkpoint_path);
    /* The image right above the checkpoint keeps its name for the new child,
     * so whatever refers to the disk by that path finds the reverted disk. */
    char keep[PATH_MAX];
    snprintf(keep, sizeof(keep), "%s", chain[depth - 1]);
    for (int k = 0; k < depth; k++)
        if (unlink(chain[k]) < 0 && errno != ENOENT)
            return hv_err_errno(err, chain[k], "remove");
    struct vhd_create_options co = {.type = VHD_TYPE_DIFFERENCING, .parent_path = checkpoint_path};
    int ret = vhd_create(keep, &co, err);
    if (ret < 0)
        return ret;
    snprintf(new_top, cap, "%s", keep);
    return 0;
}
