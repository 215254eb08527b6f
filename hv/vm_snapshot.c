/*
 * Checkpoints, backups and guest agents of live VMs: where hv/ meets
 * snapshot/.
 *
 * Every writable disk is served through the snapshot stack (the VM's
 * quiesce gate, changed-block tracking, then a switchable top over its VHD
 * chain or copy-before-write over a raw file or device). What survives a
 * restart lives in the VM definition's extra keys, written atomically with
 * the rest of it:
 *
 *   "agent":       "hvstor-vss:PATH" | "qemu-ga:PATH"
 *   "layers":      {"c0-s0": [base, child, ...]}: a disk whose chain has
 *                  checkpoint children. layers[0] is the attached path,
 *                  opened with vhd_open; each later one is opened as a live
 *                  child over the one before (so that the newest can be
 *                  merged live again after a restart); the last is the top.
 *   "checkpoints": [{name, created, consistency, why, hold_ms,
 *                    disks: [{controller, slot, path (its image), child}]}]
 *   "backup_children": [{controller, slot, path}]: the cut of a backup in
 *                  progress; one left behind by a killed hvstord is merged
 *                  by the next checkpoint or backup operation, which says so.
 *
 * The layers change at the cut (on_cut: the new children) and at each merge
 * (persist_top: the parent again); snapshot/ calls back for both, so a
 * definition never names a top that the guest is not writing to for longer
 * than the time of one atomic write.
 */
#include "hv_internal.h"
#include "passthru_int.h"
#include "vhd.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define TRACK_BYTES (64u * 1024) /* CBT and copy-before-write granularity */
#define CBW_SPARES 16
#define AGENT_PROBE_MS 3000 /* vm show: as long as a checkpoint gives it; a dead agent costs at most this */
#define AGENT_OPEN_MS 3000  /* before a checkpoint: hello */
#define AGENT_CALL_MS 10000 /* freeze, thaw */
#define QUIESCE_MS 5000

/* -------------------------------------------------------- definition keys */

static void slot_key(int c, int s, char key[24])
{
    snprintf(key, 24, "c%d-s%d", c, s);
}

static json_t *extra_obj(json_t *extra, const char *key)
{
    json_t *o = json_object_get(extra, key);
    if (!json_is_object(o)) {
        o = json_object();
        json_object_set_new(extra, key, o);
    }
    return o;
}

static json_t *extra_array(json_t *extra, const char *key)
{
    json_t *a = json_object_get(extra, key);
    if (!json_is_array(a)) {
        a = json_array();
        json_object_set_new(extra, key, a);
    }
    return a;
}

/* The disk's layers (borrowed), NULL when it is just its path. */
static json_t *layers_get(const json_t *extra, int c, int s)
{
    char key[24];
    slot_key(c, s, key);
    json_t *a = json_object_get(json_object_get(extra, "layers"), key);
    return json_is_array(a) && json_array_size(a) > 1 ? a : NULL;
}

static const char *top_of(const json_t *extra, int c, int s, const char *path)
{
    json_t *a = layers_get(extra, c, s);
    return a ? json_string_value(json_array_get(a, json_array_size(a) - 1)) : path;
}

/* Set the layers (stolen); one layer is no layer. */
static void layers_set(json_t *extra, int c, int s, json_t *arr)
{
    char key[24];
    slot_key(c, s, key);
    json_t *all = extra_obj(extra, "layers");
    if (json_array_size(arr) > 1)
        json_object_set_new(all, key, arr);
    else {
        json_decref(arr);
        json_object_del(all, key);
    }
    if (json_object_size(all) == 0)
        json_object_del(extra, "layers");
}

static json_t *layers_copy(const json_t *extra, int c, int s, const char *path)
{
    json_t *a = layers_get(extra, c, s);
    if (a)
        return json_deep_copy(a);
    return json_pack("[s]", path);
}

/* Checkpoint disk entries of slot (c, s) whose child is `child` (NULL: all
 * of the slot's) go, and checkpoints left with no disk with them. */
static void checkpoints_forget(json_t *extra, int c, int s, const char *child)
{
    json_t *cps = json_object_get(extra, "checkpoints");
    for (size_t i = 0; json_is_array(cps) && i < json_array_size(cps);) {
        json_t *disks = json_object_get(json_array_get(cps, i), "disks");
        for (size_t k = 0; json_is_array(disks) && k < json_array_size(disks);) {
            json_t *dk = json_array_get(disks, k);
            const char *dchild = json_string_value(json_object_get(dk, "child"));
            if (json_integer_value(json_object_get(dk, "controller")) == c &&
                json_integer_value(json_object_get(dk, "slot")) == s &&
                (!child || (dchild && !strcmp(dchild, child))))
                json_array_remove(disks, k);
            else
                k++;
        }
        if (json_array_size(disks) == 0)
            json_array_remove(cps, i);
        else
            i++;
    }
    if (json_is_array(cps) && json_array_size(cps) == 0)
        json_object_del(extra, "checkpoints");
}

/* A layer went away (merged, or removed by an apply): the checkpoint disk
 * entries and backup children naming it go too. */
static void layer_gone(json_t *extra, int c, int s, const char *path)
{
    checkpoints_forget(extra, c, s, path);
    json_t *bc = json_object_get(extra, "backup_children");
    for (size_t i = 0; json_is_array(bc) && i < json_array_size(bc);) {
        const char *p = json_string_value(json_object_get(json_array_get(bc, i), "path"));
        if (p && !strcmp(p, path))
            json_array_remove(bc, i);
        else
            i++;
    }
    if (json_is_array(bc) && json_array_size(bc) == 0)
        json_object_del(extra, "backup_children");
}

int hv_snap_may_detach(const struct hv_vm *vm, int controller, int slot, struct hv_err *err)
{
    json_t *layers = layers_get(vm->cfg.extra, controller, slot);
    if (!layers)
        return 0;
    return hv_err_set(err, -EBUSY,
                      "VM '%s': controller %d slot %d has checkpoints: its data "
                      "is now in %s over %s; delete them first (checkpoint delete, newest "
                      "first), so that the attached image holds everything again",
                      vm->cfg.name, controller, slot,
                      json_string_value(json_array_get(layers, json_array_size(layers) - 1)),
                      json_string_value(json_array_get(layers, 0)));
}

void hv_snap_slot_removed(json_t *extra, int controller, int slot)
{
    json_t *a = layers_get(extra, controller, slot);
    if (a) {
        json_t *copy = json_deep_copy(a);
        size_t i;
        json_t *v;
        json_array_foreach(copy, i, v) layer_gone(extra, controller, slot, json_string_value(v));
        json_decref(copy);
    }
    layers_set(extra, controller, slot, json_array());
    /* Checkpoint entries of the slot whose child is no layer (the base). */
    checkpoints_forget(extra, controller, slot, NULL);
}

/* ------------------------------------------------------- the disk stack */

static void cbt_path(const struct hv_runtime *rt, const char *vm, int c, int s, char *out,
                     size_t cap)
{
    snprintf(out, cap, "%s/cbt/%s/c%d-s%d.cbt", rt->state_dir, vm, c, s);
}

static int cbt_dir(const struct hv_runtime *rt, const char *vm, struct hv_err *err)
{
    char dir[4096 + 128];
    snprintf(dir, sizeof(dir), "%s/cbt", rt->state_dir);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return hv_err_errno(err, dir, "mkdir");
    snprintf(dir, sizeof(dir), "%s/cbt/%s", rt->state_dir, vm);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST)
        return hv_err_errno(err, dir, "mkdir");
    return 0;
}

void hv_snap_slot_attached(struct hv_runtime *rt, struct hv_vm *vm, int controller, int slot)
{
    char path[4096 + 128];
    if (!rt->state_dir[0])
        return;
    cbt_path(rt, vm->cfg.name, controller, slot, path, sizeof(path));
    unlink(path);
    if (vm->cfg.extra)
        hv_snap_slot_removed(vm->cfg.extra, controller, slot);
}

/* Close `outer` (which owns the stack down to the current top), then the
 * live-child parents below that top, newest first. */
static int close_stack(struct bdev *outer, struct bdev *cur)
{
    struct bdev *under[VHD_MAX_CHAIN_DEPTH + 8];
    int n = 0;
    int first = 0;

    while (cur && vhd_is_live_child(cur) && n < (int)HV_ARRAY_SIZE(under)) {
        under[n++] = vhd_live_child_parent(cur);
        cur = under[n - 1];
    }
    if (outer)
        first = bdev_close(outer);
    for (int k = 0; k < n; k++) {
        int ret = bdev_close(under[k]);
        if (ret < 0 && !first)
            first = ret;
    }
    return first;
}

int hv_snap_close_image(struct hv_disk *disk)
{
    struct bdev *cur = disk->top ? snap_top_current(disk->top) : NULL;
    int ret = close_stack(disk->image, cur);
    disk->image = NULL;
    disk->top = NULL;
    disk->cbt = NULL;
    disk->cbw = NULL;
    return ret;
}

/* The chain: layers[0] as a back end, the others as live children. */
static int open_layers(struct hv_runtime *rt, const struct hv_disk_config *dc, json_t *layers,
                       struct bdev **out, int *lock_fd, struct hv_err *err)
{
    struct hv_disk_config base = *dc;
    struct bdev *bd;
    size_t n = layers ? json_array_size(layers) : 1;
    int ret;

    if (layers)
        snprintf(base.path, sizeof(base.path), "%s", json_string_value(json_array_get(layers, 0)));
    ret = hv_open_image(rt, &base, &bd, lock_fd, err);
    if (ret < 0)
        return ret;
    for (size_t k = 1; k < n; k++) {
        const char *p = json_string_value(json_array_get(layers, k));
        struct bdev *child;
        ret = vhd_live_child_open(rt->reactor, p ? p : "", bd, &child, err);
        if (ret < 0) {
            hv_err_prefix(err, "checkpoint layer %zu of %s", k, dc->path);
            close_stack(bd, bd);
            return ret;
        }
        bd = child;
    }
    *out = bd;
    return 0;
}

/* After a crash during a live merge the layers may name a child that is
 * merged already (`<child>.merged`): the top is its parent. */
static int recover_layers(struct hv_vm *vm, int c, int s, const struct hv_disk_config *dc,
                          struct hv_err *err)
{
    json_t *layers = layers_get(vm->cfg.extra, c, s);
    const char *top = top_of(vm->cfg.extra, c, s, dc->path);
    char real[4096];
    int ret = snap_checkpoint_recover(top, real, sizeof(real), err);

    if (ret < 0 || !strcmp(real, top))
        return ret;
    if (!layers ||
        strcmp(real, json_string_value(json_array_get(layers, json_array_size(layers) - 2))))
        return hv_err_set(err, -EINVAL,
                          "%s: a finished merge names %s as the top, which is "
                          "not the layer below it in the definition",
                          top, real);
    hv_warn("VM '%s' c%d-s%d: a live merge of %s had finished when hvstord stopped; the top "
            "is %s again",
            vm->cfg.name, c, s, top, real);
    char gone[4096];
    snprintf(gone, sizeof(gone), "%s", top);
    json_t *copy = json_deep_copy(layers);
    json_array_remove(copy, json_array_size(copy) - 1);
    layers_set(vm->cfg.extra, c, s, copy);
    layer_gone(vm->cfg.extra, c, s, gone);
    vm->needs_save = true;
    return 0;
}

/* What sits under the stack for a raw, device or FC disk: an FC LUN needs
 * the VM's vport up before its block device exists (passthru_fc.c). */
static int open_base(struct hv_runtime *rt, struct hv_vm *vm, const struct hv_disk_config *dc,
                     struct bdev **out, int *lock_fd, struct hv_err *err)
{
    if (dc->kind == HV_DISK_FC)
        return hv_passthru_open_fc(rt, &vm->cfg, dc, out, lock_fd, err);
    return hv_open_image(rt, dc, out, lock_fd, err);
}

int hv_snap_open_disk(struct hv_runtime *rt, struct hv_vm *vm, int controller, int slot,
                      const struct hv_disk_config *dc, struct hv_disk *disk, struct hv_err *err)
{
    struct bdev *chain = NULL;
    struct bdev *mid = NULL;
    struct bdev *tracked = NULL;
    int ret;

    disk->top = NULL;
    disk->cbt = NULL;
    disk->cbw = NULL;
    if (!vm->cfg.extra)
        vm->cfg.extra = json_object();
    if (dc->is_read_only) {
        /* Nothing changes it: no gate, no tracking, opened as is. */
        struct hv_disk_config ro = *dc;
        snprintf(ro.path, sizeof(ro.path), "%s",
                 top_of(vm->cfg.extra, controller, slot, dc->path));
        return open_base(rt, vm, &ro, &disk->image, &disk->lock_fd, err);
    }
    if (dc->kind == HV_DISK_VHD) {
        ret = recover_layers(vm, controller, slot, dc, err);
        if (ret < 0)
            return ret;
        ret = open_layers(rt, dc, layers_get(vm->cfg.extra, controller, slot), &chain,
                          &disk->lock_fd, err);
        if (ret < 0)
            return ret;
        ret = snap_top_wrap(chain, &mid, &disk->top, err);
    } else {
        ret = open_base(rt, vm, dc, &chain, &disk->lock_fd, err);
        if (ret < 0)
            return ret;
        ret = snap_cbw_wrap(chain, TRACK_BYTES, CBW_SPARES, &mid, &disk->cbw, err);
    }
    if (ret < 0) {
        close_stack(chain, chain);
        return ret;
    }
    if (rt->state_dir[0]) {
        char state[4096 + 128];
        ret = cbt_dir(rt, vm->cfg.name, err);
        cbt_path(rt, vm->cfg.name, controller, slot, state, sizeof(state));
        if (ret == 0)
            ret = snap_cbt_wrap(mid, TRACK_BYTES, state, &tracked, &disk->cbt, err);
    } else {
        ret = snap_cbt_wrap(mid, TRACK_BYTES, NULL, &tracked, &disk->cbt, err);
    }
    if (ret < 0) {
        close_stack(mid, chain);
        disk->top = NULL;
        disk->cbw = NULL;
        return ret;
    }
    ret = snap_gate_wrap(vm->gate, tracked, &disk->image, err);
    if (ret < 0) {
        close_stack(tracked, chain);
        disk->top = NULL;
        disk->cbw = NULL;
        disk->cbt = NULL;
        return ret;
    }
    return 0;
}

void hv_snap_open_lun(struct hv_runtime *rt, struct hv_vm *vm, int controller, int slot,
                      struct hv_disk *disk)
{
    char state[4096 + 128];
    struct hv_err err = {0};

    if (disk->cfg.is_read_only || !disk->lu || !hv_lu_is_passthru(disk->lu))
        return;
    if (rt->state_dir[0]) {
        int ret = cbt_dir(rt, vm->cfg.name, &err);
        if (ret < 0) {
            /* Tracking without a state file: the next incremental after a
             * restart is a full one, which is safe. */
            hv_warn("VM '%s' c%d-s%d: %s", vm->cfg.name, controller, slot,
                    hv_err_msg(&err, ret));
            state[0] = 0;
        } else {
            cbt_path(rt, vm->cfg.name, controller, slot, state, sizeof(state));
        }
    } else {
        state[0] = 0;
    }
    hv_passthru_backup_enable(disk->lu, vm->gate, state[0] ? state : NULL, TRACK_BYTES,
                              CBW_SPARES);
}

void hv_snap_retire_gate(struct hv_runtime *rt, struct hv_vm *vm)
{
    struct snap_gate **grown;

    if (!vm->gate)
        return;
    grown = realloc(rt->dead_gates, sizeof(*grown) * (size_t)(rt->dead_gate_count + 1));
    if (!grown) {
        hv_error("VM '%s': out of memory; its quiesce gate leaks", vm->cfg.name);
        return;
    }
    rt->dead_gates = grown;
    rt->dead_gates[rt->dead_gate_count++] = vm->gate;
    vm->gate = NULL;
}

void hv_snap_describe_disk(const struct hv_vm *vm, int controller, int slot, json_t *obj,
                           bool is_stats)
{
    const struct hv_disk *disk = vm->disks[controller][slot];
    json_t *layers = layers_get(vm->cfg.extra, controller, slot);

    if (!disk || disk->cfg.kind == HV_DISK_LUN || (disk->lu && hv_lu_is_passthru(disk->lu)))
        return; /* its backup view is in "passthru" (hv_passthru_describe) */
    if (!is_stats) {
        json_object_set_new(obj, "top",
                            json_string(top_of(vm->cfg.extra, controller, slot, disk->cfg.path)));
        if (layers)
            json_object_set(obj, "layers", layers);
        return;
    }
    if (disk->cbt) {
        const char *why = NULL;
        bool is_reliable = snap_cbt_is_reliable(disk->cbt, &why);
        json_object_set_new(
            obj, "tracking",
            json_pack("{s:b, s:s}", "reliable", is_reliable, "why", is_reliable ? "" : why));
    }
}

/* ------------------------------------------------------------- agents */

int hv_snap_agent_arg(const json_t *req, json_t *extra, bool *is_changed, struct hv_err *err)
{
    const json_t *spec = json_object_get(req, "agent");
    bool is_none = json_is_true(json_object_get(req, "no_agent"));

    *is_changed = false;
    if (spec && !json_is_null(spec)) {
        enum snap_agent_kind kind;
        char path[4096];
        if (is_none)
            return hv_err_set(err, -EINVAL, "give --agent or --no-agent, not both");
        if (!json_is_string(spec))
            return hv_err_set(err, -EINVAL, "request: 'agent' must be a string");
        int ret = snap_agent_parse_spec(json_string_value(spec), &kind, path, sizeof(path), err);
        if (ret < 0)
            return ret;
        if (path[0] != '/')
            return hv_err_set(err, -EINVAL, "agent '%s': the socket path must be absolute",
                              json_string_value(spec));
        json_object_set(extra, "agent", (json_t *)spec);
        *is_changed = true;
    } else if (is_none) {
        json_object_del(extra, "agent");
        *is_changed = true;
    }
    return 0;
}

static const char *agent_spec(const struct hv_vm *vm)
{
    return json_string_value(json_object_get(vm->cfg.extra, "agent"));
}

static int agent_open(struct hv_runtime *rt, const char *spec, uint32_t timeout_ms,
                      struct snap_agent **out, struct hv_err *err)
{
    enum snap_agent_kind kind;
    char path[4096];
    int ret = snap_agent_parse_spec(spec, &kind, path, sizeof(path), err);
    if (ret < 0)
        return ret;
    return snap_agent_open_in(rt->reactor, kind, path, timeout_ms, out, err);
}

json_t *hv_snap_agent_json(struct hv_runtime *rt, const struct hv_vm *vm, bool may_probe)
{
    const char *spec = agent_spec(vm);
    struct snap_agent *a = NULL;
    struct snap_agent_info info;
    struct hv_err err = {0};
    int ret;

    if (!spec)
        return json_null();
    if (!may_probe)
        return json_pack("{s:s, s:n, s:s, s:s}", "spec", spec, "answers", "version", "", "error",
                         "not asked: another request is running");
    ret = agent_open(rt, spec, AGENT_PROBE_MS, &a, &err);
    if (ret == 0)
        ret = snap_agent_info(a, &info, &err);
    snap_agent_close(a);
    if (ret < 0)
        return json_pack("{s:s, s:b, s:s, s:s}", "spec", spec, "answers", 0, "version", "",
                         "error", hv_err_msg(&err, ret));
    json_t *o = json_pack("{s:s, s:b, s:s, s:s}", "spec", spec, "answers", 1, "version", info.name,
                          "error", "");
    if (info.version)
        json_object_set_new(o, "protocol", json_integer(info.version));
    if (info.filesystems)
        json_object_set_new(o, "filesystems", json_integer(info.filesystems));
    json_object_set_new(o, "frozen", json_boolean(info.is_frozen));
    return o;
}

/* --------------------------------------------------------- the group */

enum run_kind { RUN_CHECKPOINT, RUN_BACKUP, RUN_MERGE };

struct snap_run {
    struct hv_daemon *d;
    struct hv_vm *vm;
    enum run_kind kind;
    struct snap_group grp;
    struct snap_disk *disks;
    struct hv_disk **hd;
    int *ctl;
    int *slot;
    int count;
    int persist_errors;
};

static void run_free(struct snap_run *run)
{
    free(run->disks);
    free(run->hd);
    free(run->ctl);
    free(run->slot);
    if (run->grp.agent)
        snap_agent_close(run->grp.agent);
    run->grp.agent = NULL;
}

/* Write `extra` (a copy the caller built) with the rest of the definition;
 * on success it becomes the live one. */
static int persist_extra(struct hv_daemon *d, struct hv_vm *vm, json_t *extra, struct hv_err *err)
{
    struct hv_vm_config next;
    int ret = hv_vm_config_copy(&next, &vm->cfg);
    if (ret < 0) {
        json_decref(extra);
        return hv_err_set(err, ret, "out of memory");
    }
    json_decref(next.extra);
    next.extra = extra;
    ret = hv_registry_save(hv_daemon_registry(d), &next, err);
    if (ret == 0) {
        json_decref(vm->cfg.extra);
        vm->cfg.extra = json_incref(extra);
    }
    hv_vm_config_free(&next);
    return ret;
}

static int run_persist_top(void *arg, int i, const char *new_top)
{
    struct snap_run *run = arg;
    struct hv_err err = {0};
    json_t *extra = json_deep_copy(run->vm->cfg.extra);
    int c = run->ctl[i];
    int s = run->slot[i];
    json_t *layers = layers_copy(extra, c, s, run->hd[i]->cfg.path);
    size_t n = json_array_size(layers);
    char gone[4096];

    if (n < 2 || strcmp(json_string_value(json_array_get(layers, n - 2)), new_top) != 0) {
        hv_error("VM '%s' c%d-s%d: merged into %s, which is not the layer below the top",
                 run->vm->cfg.name, c, s, new_top);
        json_decref(layers);
        json_decref(extra);
        return -EINVAL;
    }
    snprintf(gone, sizeof(gone), "%s", json_string_value(json_array_get(layers, n - 1)));
    json_array_remove(layers, n - 1);
    layers_set(extra, c, s, layers);
    layer_gone(extra, c, s, gone);
    int ret = persist_extra(run->d, run->vm, extra, &err);
    if (ret < 0)
        hv_error("%s", hv_err_msg(&err, ret));
    return ret;
}

/* Right after the cut: the guest writes to the children now. */
static void run_on_cut(void *arg)
{
    struct snap_run *run = arg;
    struct hv_err err = {0};
    json_t *extra = json_deep_copy(run->vm->cfg.extra);

    for (int i = 0; i < run->count; i++) {
        struct snap_disk *sd = &run->disks[i];
        int c = run->ctl[i];
        int s = run->slot[i];
        if (!sd->top)
            continue;
        json_t *layers = layers_copy(extra, c, s, run->hd[i]->cfg.path);
        const char *top = json_string_value(json_array_get(layers, json_array_size(layers) - 1));
        if (!strcmp(top, sd->vhd_path)) {
            json_decref(layers);
            continue;
        }
        json_array_append_new(layers, json_string(sd->vhd_path));
        layers_set(extra, c, s, layers);
        if (run->kind == RUN_BACKUP)
            json_array_append_new(
                extra_array(extra, "backup_children"),
                json_pack("{s:i, s:i, s:s}", "controller", c, "slot", s, "path", sd->vhd_path));
    }
    int ret = persist_extra(run->d, run->vm, extra, &err);
    if (ret < 0) {
        run->persist_errors++;
        hv_error("VM '%s': the cut happened but recording the new tops failed: %s",
                 run->vm->cfg.name, hv_err_msg(&err, ret));
    }
}

/* The VM's disks that checkpoints and backups cover: online, writable,
 * with the snapshot stack. */
static int run_build(struct hv_daemon *d, struct hv_vm *vm, enum run_kind kind,
                     struct snap_run *run, struct hv_err *err)
{
    int n = 0;

    memset(run, 0, sizeof(*run));
    run->d = d;
    run->vm = vm;
    run->kind = kind;
    run->disks = calloc(SNAP_MAX_DISKS, sizeof(*run->disks));
    run->hd = calloc(SNAP_MAX_DISKS, sizeof(*run->hd));
    run->ctl = calloc(SNAP_MAX_DISKS, sizeof(int));
    run->slot = calloc(SNAP_MAX_DISKS, sizeof(int));
    if (!run->disks || !run->hd || !run->ctl || !run->slot) {
        run_free(run);
        return hv_err_set(err, -ENOMEM, "out of memory");
    }
    for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
            struct hv_disk *disk = vm->disks[c][s];
            if (!disk || disk->cfg.is_read_only)
                continue;
            int ret = 0;
            struct bdev *lun_view = NULL;
            struct snap_cbt *lun_cbt = NULL;
            struct snap_cbw *lun_cbw = NULL;
            if (disk->cfg.kind == HV_DISK_LUN || (disk->lu && hv_lu_is_passthru(disk->lu))) {
                /* Read through copy-before-write, as a raw disk is. */
                if (!disk->lu)
                    ret = hv_err_set(err, -ENODEV,
                                     "VM '%s': controller %d slot %d is offline (%s): "
                                     "it would be missing",
                                     vm->cfg.name, c, s, disk->error);
                else if (kind == RUN_CHECKPOINT)
                    ret = hv_err_set(err, -EOPNOTSUPP,
                                     "VM '%s': controller %d slot %d is a pass-through "
                                     "LUN (%s): it cannot get a differencing child, so "
                                     "checkpoints need it detached; `backup create` covers "
                                     "it (copy-before-write)",
                                     vm->cfg.name, c, s, disk->cfg.path);
                else if ((ret = hv_passthru_backup_view(disk->lu, &lun_view, &lun_cbt,
                                                        &lun_cbw, err)) < 0)
                    hv_err_prefix(err, "VM '%s': controller %d slot %d", vm->cfg.name, c, s);
            } else if (!disk->lu || !disk->image)
                ret = hv_err_set(err, -ENODEV,
                                 "VM '%s': controller %d slot %d is offline (%s): "
                                 "it would be missing",
                                 vm->cfg.name, c, s, disk->error);
            else if (kind == RUN_CHECKPOINT && !disk->top)
                ret = hv_err_set(err, -EOPNOTSUPP,
                                 "VM '%s': controller %d slot %d is a %s "
                                 "disk (%s): checkpoints need VHD disks (a backup can read "
                                 "it; attach it read-only to leave it out)",
                                 vm->cfg.name, c, s, hv_disk_kind_name(disk->cfg.kind),
                                 disk->cfg.path);
            else if (disk->is_held)
                ret = hv_err_set(err, -EBUSY, "%s: being resized", disk->cfg.path);
            if (ret < 0) {
                run_free(run);
                return ret;
            }
            struct snap_disk *sd = &run->disks[n];
            sd->controller = c;
            sd->slot = s;
            sd->top_bdev = lun_view ? lun_view : disk->image;
            sd->top = disk->top;
            sd->cbt = lun_view ? lun_cbt : disk->cbt;
            sd->cbw = lun_view ? lun_cbw : disk->cbw;
            if (disk->top)
                snprintf(sd->vhd_path, sizeof(sd->vhd_path), "%s",
                         top_of(vm->cfg.extra, c, s, disk->cfg.path));
            run->hd[n] = disk;
            run->ctl[n] = c;
            run->slot[n] = s;
            n++;
        }
    if (n == 0) {
        run_free(run);
        return hv_err_set(err, -ENOENT, "VM '%s' has no writable disk online to %s", vm->cfg.name,
                          kind == RUN_BACKUP ? "back up" : "checkpoint");
    }
    run->count = n;
    run->grp.reactor = hv_daemon_runtime(d)->reactor;
    run->grp.persist_top = run_persist_top;
    run->grp.persist_arg = run;
    run->grp.on_cut = run_on_cut;
    run->grp.on_cut_arg = run;
    run->grp.gate = vm->gate;
    run->grp.disks = run->disks;
    run->grp.disk_count = n;
    run->grp.thaw_timeout_ms = AGENT_CALL_MS;
    return 0;
}

static int run_index(const struct snap_run *run, int c, int s)
{
    for (int i = 0; i < run->count; i++)
        if (run->ctl[i] == c && run->slot[i] == s)
            return i;
    return -1;
}

static bool is_checkpoint_child(const json_t *extra, int c, int s, const char *path)
{
    size_t i;
    size_t k;
    json_t *cp;
    json_t *dk;
    json_array_foreach(json_object_get(extra, "checkpoints"), i, cp)
        json_array_foreach(json_object_get(cp, "disks"), k, dk)
    {
        const char *child = json_string_value(json_object_get(dk, "child"));
        if (json_integer_value(json_object_get(dk, "controller")) == c &&
            json_integer_value(json_object_get(dk, "slot")) == s && child && !strcmp(child, path))
            return true;
    }
    return false;
}

static bool is_backup_child(const json_t *extra, const char *path)
{
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(extra, "backup_children"), i, v)
    {
        const char *p = json_string_value(json_object_get(v, "path"));
        if (p && !strcmp(p, path))
            return true;
    }
    return false;
}

/* Layers on top that no checkpoint owns: the cut of a backup, or of a
 * checkpoint, whose hvstord was killed before it finished. Merge them now
 * (newest first: only the top merges live) and say so. */
static int run_merge_leftovers(struct snap_run *run, char *said, size_t cap, struct hv_err *err)
{
    size_t off = strlen(said);
    int ret = 0;

    for (int k = 0; k < run->count && ret == 0; k++) {
        int c = run->ctl[k];
        int s = run->slot[k];
        while (run->disks[k].top) {
            json_t *layers = layers_get(run->vm->cfg.extra, c, s);
            if (!layers)
                break;
            char top[4096];
            snprintf(top, sizeof(top), "%s",
                     json_string_value(json_array_get(layers, json_array_size(layers) - 1)));
            if (is_checkpoint_child(run->vm->cfg.extra, c, s, top))
                break;
            bool was_backup = is_backup_child(run->vm->cfg.extra, top);
            ret = snap_checkpoint_merge(&run->grp, k, NULL, err);
            if (ret < 0) {
                hv_err_prefix(err, "merging %s, left by an interrupted %s", top,
                              was_backup ? "backup" : "checkpoint");
                break;
            }
            if (off < cap)
                off += (size_t)snprintf(said + off, cap - off,
                                        "%san interrupted %s had left "
                                        "its checkpoint child %s on disk c%d-s%d: merged it "
                                        "back",
                                        off ? "; " : "", was_backup ? "backup" : "checkpoint", top,
                                        c, s);
        }
    }
    /* Backup children that are no layer any more (an apply removed them). */
    json_t *bc = json_object_get(run->vm->cfg.extra, "backup_children");
    if (ret == 0 && json_array_size(bc)) {
        json_t *extra = json_deep_copy(run->vm->cfg.extra);
        json_t *copy = json_deep_copy(bc);
        size_t i;
        json_t *v;
        json_array_foreach(copy, i, v)
        {
            int c = (int)json_integer_value(json_object_get(v, "controller"));
            int s = (int)json_integer_value(json_object_get(v, "slot"));
            const char *p = json_string_value(json_object_get(v, "path"));
            if (p && strcmp(top_of(extra, c, s, ""), p) != 0)
                layer_gone(extra, c, s, p);
        }
        json_decref(copy);
        ret = persist_extra(run->d, run->vm, extra, err);
    }
    return ret;
}

/* ------------------------------------------------------------ helpers */

static void iso_time(time_t t, char out[32])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int get_vm_arg(struct hv_daemon *d, const json_t *req, struct hv_vm **vm,
                      struct hv_err *err)
{
    const char *name = json_string_value(json_object_get(req, "vm"));
    if (!name)
        return hv_err_set(err, -EINVAL, "request needs 'vm'");
    *vm = hv_daemon_find_vm(d, name);
    if (!*vm)
        return hv_err_set(err, -ENOENT, "no VM named '%s'", name);
    return 0;
}

static json_t *find_checkpoint(const struct hv_vm *vm, const char *name, size_t *index)
{
    json_t *cps = json_object_get(vm->cfg.extra, "checkpoints");
    size_t i;
    json_t *v;
    json_array_foreach(cps, i, v)
    {
        const char *n = json_string_value(json_object_get(v, "name"));
        if (n && !strcmp(n, name)) {
            if (index)
                *index = i;
            return v;
        }
    }
    return NULL;
}

/* The request's VM and its checkpoint 'name' (show, delete, apply). */
static int get_checkpoint_arg(struct hv_daemon *d, const json_t *req, struct hv_vm **vm,
                              const char **name, json_t **cp, size_t *index, struct hv_err *err)
{
    int ret = get_vm_arg(d, req, vm, err);

    if (ret < 0)
        return ret;
    *name = json_string_value(json_object_get(req, "name"));
    if (!*name)
        return hv_err_set(err, -EINVAL, "request needs 'name'");
    *cp = find_checkpoint(*vm, *name, index);
    if (!*cp)
        return hv_err_set(err, -ENOENT, "VM '%s' has no checkpoint named '%s'", (*vm)->cfg.name,
                          *name);
    return 0;
}

/* Names go into file names: <top>.<name>.vhd */
static int name_check(const char *name, struct hv_err *err)
{
    size_t len = strlen(name);
    if (len == 0 || len > 64 || name[0] == '.' || name[0] == '-')
        goto bad;
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.'))
            goto bad;
    }
    return 0;
bad:
    return hv_err_set(err, -EINVAL,
                      "checkpoint name '%s': 1 to 64 of A-Z a-z 0-9 . _ -, not "
                      "starting with '.' or '-'",
                      name);
}

/* app or crash, from the request and whether the VM has an agent; with app
 * the agent must answer now, or nothing is done. *want_app is what to ask
 * of snapshot/ (true without an agent: it then says "no guest agent");
 * *must_be_app whether a crash-consistent result is a failure. */
static int consistency_arg(struct hv_daemon *d, const json_t *req, struct snap_run *run,
                           bool *want_app, bool *must_be_app, struct hv_err *err)
{
    const char *asked = json_string_value(json_object_get(req, "consistency"));
    const char *spec = agent_spec(run->vm);

    if (asked && strcmp(asked, "app") != 0 && strcmp(asked, "crash") != 0)
        return hv_err_set(err, -EINVAL, "consistency '%s': app or crash", asked);
    *want_app = asked ? !strcmp(asked, "app") : true;
    *must_be_app = *want_app && spec;
    if (!asked && !spec)
        return 0; /* crash by default; snapshot/ says "the VM has no guest agent" */
    if (!*want_app)
        return 0;
    if (!spec)
        return hv_err_set(err, -EINVAL,
                          "VM '%s' has no guest agent: app consistency needs one "
                          "(hvctl vm set %s --agent ...), or ask for --consistency crash",
                          run->vm->cfg.name, run->vm->cfg.name);
    int ret = agent_open(hv_daemon_runtime(d), spec, AGENT_OPEN_MS, &run->grp.agent, err);
    if (ret < 0) {
        run->grp.agent = NULL;
        hv_err_prefix(err,
                      "VM '%s': the guest agent does not answer, nothing was done "
                      "(--consistency crash does without it)",
                      run->vm->cfg.name);
        return ret;
    }
    return 0;
}

/* ------------------------------------------------------- checkpoints */

static int req_checkpoint_create(struct hv_daemon *d, const json_t *req, json_t **result,
                                 struct hv_err *err)
{
    struct hv_vm *vm;
    struct snap_run run;
    struct snap_checkpoint_result res;
    const char *asked_name = json_string_value(json_object_get(req, "name"));
    char name[80];
    char recovered[2048] = "";
    bool want_app = false;
    bool must_be_app = false;
    int ret = get_vm_arg(d, req, &vm, err);

    if (ret < 0)
        return ret;
    if (asked_name) {
        if ((ret = name_check(asked_name, err)) < 0)
            return ret;
        if (find_checkpoint(vm, asked_name, NULL))
            return hv_err_set(err, -EEXIST, "VM '%s' already has a checkpoint named '%s'",
                              vm->cfg.name, asked_name);
        snprintf(name, sizeof(name), "%s", asked_name);
    } else {
        char stamp[32];
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
        snprintf(name, sizeof(name), "cp-%s", stamp);
        for (int n = 2; find_checkpoint(vm, name, NULL) && n < 1000; n++)
            snprintf(name, sizeof(name), "cp-%s-%d", stamp, n);
    }
    ret = run_build(d, vm, RUN_CHECKPOINT, &run, err);
    if (ret < 0)
        return ret;
    ret = consistency_arg(d, req, &run, &want_app, &must_be_app, err);
    if (ret == 0)
        ret = run_merge_leftovers(&run, recovered, sizeof(recovered), err);
    if (ret < 0)
        goto out;
    ret = snap_checkpoint_create(&run.grp, name, want_app, &res, err);
    if (ret < 0)
        goto out;
    if (must_be_app && res.consistency != SNAP_APP) {
        /* Asked for app and got crash: the checkpoint goes, as promised. */
        char why[600];
        snprintf(why, sizeof(why), "%s", res.why);
        for (int i = 0; i < run.count; i++)
            if (res.disks[i].child_path[0]) {
                struct hv_err merr = {0};
                int m = snap_checkpoint_merge(&run.grp, i, NULL, &merr);
                if (m < 0)
                    hv_error("VM '%s': removing the checkpoint that is not app-consistent: %s",
                             vm->cfg.name, hv_err_msg(&merr, m));
            }
        snap_checkpoint_result_free(&res);
        ret = hv_err_set(err, -EAGAIN,
                         "VM '%s': checkpoint '%s' would only be "
                         "crash-consistent (%s); it was removed again (--consistency crash "
                         "keeps such a checkpoint)",
                         vm->cfg.name, name, why);
        goto out;
    }
    {
        char when[32];
        json_t *disks = json_array();
        iso_time(res.created, when);
        for (int i = 0; i < run.count; i++)
            json_array_append_new(disks,
                                  json_pack("{s:i, s:i, s:s, s:s}", "controller", run.ctl[i],
                                            "slot", run.slot[i], "path", res.disks[i].parent_path,
                                            "child", res.disks[i].child_path));
        json_t *rec = json_pack("{s:s, s:s, s:s, s:s, s:f, s:o}", "name", name, "created", when,
                                "consistency", res.consistency == SNAP_APP ? "app" : "crash",
                                "why", res.why, "hold_ms", res.hold_ns / 1e6, "disks", disks);
        json_t *extra = json_deep_copy(vm->cfg.extra);
        json_array_append(extra_array(extra, "checkpoints"), rec);
        ret = persist_extra(d, vm, extra, err);
        snap_checkpoint_result_free(&res);
        if (ret < 0) {
            json_decref(rec);
            hv_err_prefix(err, "checkpoint '%s' taken, but not recorded", name);
            goto out;
        }
        *result = json_deep_copy(rec);
        json_object_set_new(*result, "vm", json_string(vm->cfg.name));
        json_object_set_new(*result, "recovered", json_string(recovered));
        json_decref(rec);
        hv_info("VM '%s': checkpoint '%s' (%s%s%s)", vm->cfg.name, name,
                json_string_value(json_object_get(*result, "consistency")), res.why[0] ? ": " : "",
                res.why);
    }
out:
    run_free(&run);
    return ret;
}

static json_t *checkpoint_out(const struct hv_vm *vm, const json_t *cp)
{
    json_t *o = json_deep_copy(cp);
    json_object_set_new(o, "vm", json_string(vm->cfg.name));
    return o;
}

static int req_checkpoint_list(struct hv_daemon *d, const json_t *req, json_t **result,
                               struct hv_err *err)
{
    struct hv_vm *vm;
    int ret = get_vm_arg(d, req, &vm, err);
    json_t *list;
    size_t i;
    json_t *v;

    if (ret < 0)
        return ret;
    list = json_array();
    json_array_foreach(json_object_get(vm->cfg.extra, "checkpoints"), i, v)
        json_array_append_new(list, checkpoint_out(vm, v));
    *result = list;
    return 0;
}

static int req_checkpoint_show(struct hv_daemon *d, const json_t *req, json_t **result,
                               struct hv_err *err)
{
    struct hv_vm *vm;
    const char *name;
    json_t *cp;
    int ret = get_checkpoint_arg(d, req, &vm, &name, &cp, NULL, err);

    if (ret < 0)
        return ret;
    *result = checkpoint_out(vm, cp);
    return 0;
}

static int req_checkpoint_delete(struct hv_daemon *d, const json_t *req, json_t **result,
                                 struct hv_err *err)
{
    struct hv_vm *vm;
    struct snap_run run;
    const char *name;
    char recovered[2048] = "";
    size_t index;
    uint64_t hold_max = 0;
    json_t *cp;
    int ret = get_checkpoint_arg(d, req, &vm, &name, &cp, &index, err);

    if (ret < 0)
        return ret;
    json_t *cps = json_object_get(vm->cfg.extra, "checkpoints");
    if (index + 1 != json_array_size(cps))
        return hv_err_set(err, -EOPNOTSUPP,
                          "VM '%s': checkpoint '%s' is not the newest "
                          "('%s' is): only the newest merges live; delete the newer ones "
                          "first",
                          vm->cfg.name, name,
                          json_string_value(json_object_get(
                              json_array_get(cps, json_array_size(cps) - 1), "name")));
    cp = json_deep_copy(cp);
    ret = run_build(d, vm, RUN_MERGE, &run, err);
    if (ret < 0) {
        json_decref(cp);
        return ret;
    }
    ret = run_merge_leftovers(&run, recovered, sizeof(recovered), err);
    size_t i;
    json_t *dk;
    json_array_foreach(json_object_get(cp, "disks"), i, dk)
    {
        if (ret < 0)
            break;
        int c = (int)json_integer_value(json_object_get(dk, "controller"));
        int s = (int)json_integer_value(json_object_get(dk, "slot"));
        const char *child = json_string_value(json_object_get(dk, "child"));
        int k = run_index(&run, c, s);
        if (k < 0) {
            ret = hv_err_set(err, -ENODEV,
                             "VM '%s': checkpoint '%s' covers controller %d "
                             "slot %d, which is not online and writable now",
                             vm->cfg.name, name, c, s);
            break;
        }
        if (!child || strcmp(run.disks[k].vhd_path, child) != 0) {
            ret = hv_err_set(err, -EINVAL,
                             "VM '%s' c%d-s%d: the top is %s, not the child %s "
                             "of checkpoint '%s'",
                             vm->cfg.name, c, s, run.disks[k].vhd_path, child ? child : "?", name);
            break;
        }
        uint64_t hold = 0;
        ret = snap_checkpoint_merge(&run.grp, k, &hold, err);
        hold_max = HV_MAX(hold_max, hold);
    }
    if (ret == 0 && find_checkpoint(vm, name, &index)) {
        /* Every disk merged: layer_gone dropped the record already, unless a
         * disk had nothing to merge. */
        json_t *extra = json_deep_copy(vm->cfg.extra);
        json_array_remove(json_object_get(extra, "checkpoints"), index);
        if (json_array_size(json_object_get(extra, "checkpoints")) == 0)
            json_object_del(extra, "checkpoints");
        ret = persist_extra(d, vm, extra, err);
    }
    if (ret == 0) {
        *result = json_pack("{s:s, s:s, s:b, s:f, s:s}", "vm", vm->cfg.name, "name", name,
                            "deleted", 1, "hold_ms", hold_max / 1e6, "recovered", recovered);
        hv_info("VM '%s': checkpoint '%s' merged and deleted", vm->cfg.name, name);
    }
    json_decref(cp);
    run_free(&run);
    return ret;
}

/* Revert: the VM's disks go offline (requests wait at the disk), each
 * chain loses what is above the checkpoint and gets a fresh child, the
 * stack reopens, the requests go on, the guest gets MEDIUM MAY HAVE
 * CHANGED. The definition is written first: killed halfway, the chain it
 * names is still whole (the checkpoint's child keeps its name). */
static int req_checkpoint_apply(struct hv_daemon *d, const json_t *req, json_t **result,
                                struct hv_err *err)
{
    struct hv_runtime *rt = hv_daemon_runtime(d);
    struct hv_vm *vm;
    const char *name;
    struct hv_disk *held[SNAP_MAX_DISKS];
    int held_c[SNAP_MAX_DISKS];
    int held_s[SNAP_MAX_DISKS];
    int nheld = 0;
    size_t index;
    json_t *cp;
    json_t *extra;
    int ret = get_checkpoint_arg(d, req, &vm, &name, &cp, &index, err);

    if (ret < 0)
        return ret;
    cp = json_deep_copy(cp);
    extra = json_deep_copy(vm->cfg.extra);
    /* The newer checkpoints lose their images. */
    {
        json_t *cps = json_object_get(extra, "checkpoints");
        while (json_array_size(cps) > index + 1)
            json_array_remove(cps, index + 1);
    }
    size_t i;
    json_t *dk;
    json_array_foreach(json_object_get(cp, "disks"), i, dk)
    {
        int c = (int)json_integer_value(json_object_get(dk, "controller"));
        int s = (int)json_integer_value(json_object_get(dk, "slot"));
        const char *image = json_string_value(json_object_get(dk, "path"));
        const char *child = json_string_value(json_object_get(dk, "child"));
        struct hv_disk *disk =
            c >= 0 && c < HV_MAX_CONTROLLERS && s >= 0 && s < HV_SLOTS_PER_CONTROLLER
                ? vm->disks[c][s]
                : NULL;
        if (!disk || !disk->top || !image || !child) {
            ret = hv_err_set(err, -ENODEV,
                             "VM '%s': checkpoint '%s' covers controller %d slot "
                             "%d, which has no online VHD disk now",
                             vm->cfg.name, name, c, s);
            goto out;
        }
        json_t *layers = layers_copy(extra, c, s, disk->cfg.path);
        size_t at = json_array_size(layers);
        for (size_t k = 0; k < json_array_size(layers); k++)
            if (!strcmp(json_string_value(json_array_get(layers, k)), image))
                at = k;
        if (at + 1 >= json_array_size(layers)) {
            json_decref(layers);
            ret = hv_err_set(err, -EINVAL,
                             "VM '%s' c%d-s%d: %s (checkpoint '%s') is not "
                             "below the top in the disk's layers",
                             vm->cfg.name, c, s, image, name);
            goto out;
        }
        /* Everything above the checkpoint's child goes; the child itself is
         * made again, empty, under the same name. */
        while (json_array_size(layers) > at + 2) {
            const char *p = json_string_value(json_array_get(layers, json_array_size(layers) - 1));
            layer_gone(extra, c, s, p);
            json_array_remove(layers, json_array_size(layers) - 1);
        }
        layers_set(extra, c, s, layers);
        held[nheld] = disk;
        held_c[nheld] = c;
        held_s[nheld] = s;
        nheld++;
    }
    for (int k = 0; k < nheld; k++) {
        ret = hv_disk_quiesce(held[k], QUIESCE_MS, err);
        if (ret < 0) {
            nheld = k;
            goto release;
        }
    }
    {
        json_t *old_extra = json_deep_copy(vm->cfg.extra);
        ret = persist_extra(d, vm, extra, err);
        extra = NULL;
        if (ret < 0) {
            json_decref(old_extra);
            goto release;
        }
        for (int k = 0; k < nheld; k++) {
            struct hv_disk *disk = held[k];
            int c = held_c[k];
            int s = held_s[k];
            const char *old_top = top_of(old_extra, c, s, disk->cfg.path);
            json_t *layers = layers_get(vm->cfg.extra, c, s);
            const char *image =
                json_string_value(json_array_get(layers, json_array_size(layers) - 2));
            char new_top[4096];
            size_t io_ctx = disk->image->io_ctx_bytes;
            hv_snap_close_image(disk);
            ret = snap_checkpoint_apply(old_top, image, new_top, sizeof(new_top), err);
            int op = hv_snap_open_disk(rt, vm, c, s, &disk->cfg, disk, err);
            if (op == 0 && disk->image->io_ctx_bytes > io_ctx) {
                hv_snap_close_image(disk);
                op = hv_err_set(err, -E2BIG, "%s: reopened with a bigger request context",
                                disk->cfg.path);
            }
            if (op < 0) {
                snprintf(disk->error, sizeof(disk->error), "%s", hv_err_msg(err, op));
                hv_error("VM '%s' c%d-s%d: does not reopen after the apply: %s", vm->cfg.name, c,
                         s, disk->error);
                ret = ret < 0 ? ret : op;
                continue;
            }
            if (disk->cbt) {
                /* The disk went back in time: changes since the last backup
                 * are no longer what the bitmap says. */
                uint8_t *zero = calloc(1, HV_DIV_ROUND_UP(snap_cbt_chunks(disk->cbt), 8) + 1);
                char why[200];
                snprintf(why, sizeof(why),
                         "checkpoint '%s' was applied: the disk went back "
                         "in time",
                         name);
                if (zero)
                    snap_cbt_merge_back(disk->cbt, zero, false, why);
                free(zero);
            }
            if (ret < 0)
                hv_error("VM '%s' c%d-s%d: apply: %s", vm->cfg.name, c, s, hv_err_msg(err, ret));
        }
        json_decref(old_extra);
    }
release:
    for (int k = 0; k < nheld; k++) {
        hv_disk_resume(held[k]);
        if (held[k]->lu && held[k]->lu->controller)
            scsi_controller_raise_ua(held[k]->lu->controller, held[k]->lu->lun, 0x28, 0x00);
    }
    if (ret == 0) {
        *result = checkpoint_out(
            vm, find_checkpoint(vm, name, NULL) ? find_checkpoint(vm, name, NULL) : cp);
        json_object_set_new(*result, "applied", json_true());
        hv_info("VM '%s': checkpoint '%s' applied to %d disks", vm->cfg.name, name, nheld);
    }
out:
    json_decref(extra);
    json_decref(cp);
    return ret;
}

/* ------------------------------------------------------------ backups */

/* Changed-block tracking counts since the VM's last backup, wherever it
 * went. An incremental on top of another directory's newest backup (or of
 * one that is not the last) would miss what went elsewhere: make the
 * trackers unreliable, with the reason, so that snapshot/ makes it full. */
static void check_incremental_base(struct snap_run *run, const char *dir)
{
    const json_t *last = json_object_get(run->vm->cfg.extra, "last_backup");
    const char *last_dir = json_string_value(json_object_get(last, "dir"));
    int last_seq = (int)json_integer_value(json_object_get(last, "seq"));
    int newest;
    char why[600];

    snap_backup_newest(dir, &newest); /* unreadable: -1, as none */
    if (newest < 0)
        return; /* nothing to build on: snapshot/ says so */
    if (!last_dir)
        snprintf(why, sizeof(why),
                 "hvstord has no record of backup #%d of %s being this VM's "
                 "last backup",
                 newest, dir);
    else if (strcmp(last_dir, dir) != 0)
        snprintf(why, sizeof(why), "the VM's last backup went to %.250s (#%d), not to %.250s",
                 last_dir, last_seq, dir);
    else if (last_seq != newest)
        snprintf(why, sizeof(why),
                 "the newest backup in %.250s is #%d, the VM's last one "
                 "was #%d",
                 dir, newest, last_seq);
    else
        return;
    for (int i = 0; i < run->count; i++) {
        struct snap_cbt *cbt = run->disks[i].cbt;
        if (!cbt)
            continue;
        uint8_t *zero = calloc(1, HV_DIV_ROUND_UP(snap_cbt_chunks(cbt), 8) + 1);
        if (zero)
            snap_cbt_merge_back(cbt, zero, false, why);
        free(zero);
    }
}

static int req_backup_create(struct hv_daemon *d, const json_t *req, json_t **result,
                             struct hv_err *err)
{
    struct hv_vm *vm;
    struct snap_run run;
    struct snap_backup_result res;
    const char *dir = json_string_value(json_object_get(req, "dir"));
    char recovered[4096] = "";
    char lib_recovered[2048] = "";
    bool want_app = false;
    bool must_be_app = false;
    uint64_t t0 = hv_now_ns();
    int ret = get_vm_arg(d, req, &vm, err);

    if (ret < 0)
        return ret;
    if (!dir || dir[0] != '/')
        return hv_err_set(err, -EINVAL, "request needs 'dir', an absolute path");
    ret = run_build(d, vm, RUN_BACKUP, &run, err);
    if (ret < 0)
        return ret;
    ret = consistency_arg(d, req, &run, &want_app, &must_be_app, err);
    if (ret == 0)
        ret = run_merge_leftovers(&run, recovered, sizeof(recovered), err);
    if (ret < 0)
        goto out;
    struct snap_backup_options opt = {
        .dir = dir,
        .vm_name = vm->cfg.name,
        .is_incremental = json_is_true(json_object_get(req, "incremental")),
        .want_app = want_app,
        /* hvctl -p shows progress from the files themselves; the daemon's
         * log gets no progress lines. */
        .show_progress = false,
        .max_bytes_per_second =
            json_is_integer(json_object_get(req, "max_rate")) &&
                    json_integer_value(json_object_get(req, "max_rate")) > 0
                ? (uint64_t)json_integer_value(json_object_get(req, "max_rate"))
                : 0,
    };
    if (opt.is_incremental)
        check_incremental_base(&run, dir);
    ret = snap_backup_create(&run.grp, &opt, &res, lib_recovered, sizeof(lib_recovered), err);
    if (ret == 0) {
        /* What the trackers count from now on. */
        struct hv_err lerr = {0};
        json_t *extra = json_deep_copy(vm->cfg.extra);
        json_object_set_new(extra, "last_backup",
                            json_pack("{s:s, s:i}", "dir", dir, "seq", res.sequence));
        int lr = persist_extra(d, vm, extra, &lerr);
        if (lr < 0)
            hv_warn("VM '%s': %s (the next incremental backup will be a full one)", vm->cfg.name,
                    hv_err_msg(&lerr, lr));
    }
    if (lib_recovered[0]) {
        size_t off = strlen(recovered);
        snprintf(recovered + off, sizeof(recovered) - off, "%s%s", off ? "; " : "", lib_recovered);
    }
    if (recovered[0])
        hv_warn("VM '%s': backup into %s: %s", vm->cfg.name, dir, recovered);
    if (ret < 0) {
        /* The engine reports a failed write as an I/O error: say when the
         * destination is the likely reason. */
        struct statvfs sv;
        if (statvfs(dir, &sv) == 0 && (uint64_t)sv.f_bavail * sv.f_frsize < 64ull << 20) {
            char left[32];
            char msg[sizeof(err->msg)];
            snprintf(msg, sizeof(msg), "%s", hv_err_msg(err, ret));
            hv_err_set(err, ret,
                       "%s (%s has only %s of space left; its partial files were "
                       "removed)",
                       msg, dir, hv_format_size((uint64_t)sv.f_bavail * sv.f_frsize, left));
        }
        if (recovered[0])
            hv_err_prefix(err, "(%s)", recovered);
        goto out;
    }
    {
        json_t *man = NULL;
        struct hv_err merr = {0};
        json_t *disks = json_array();
        json_t *cpdisks = json_array();
        if (hv_json_read_file(res.manifest, &man, &merr) < 0)
            hv_warn("%s", hv_err_msg(&merr, -EIO));
        size_t i;
        json_t *dk;
        json_array_foreach(json_object_get(man, "disks"), i, dk)
        {
            json_array_append_new(
                disks, json_pack("{s:O, s:O, s:O, s:O, s:O}", "controller",
                                 json_object_get(dk, "controller"), "slot",
                                 json_object_get(dk, "slot"), "file", json_object_get(dk, "file"),
                                 "bytes_read", json_object_get(dk, "bytes_read"), "bytes_written",
                                 json_object_get(dk, "bytes_written")));
            json_array_append_new(cpdisks, json_pack("{s:O, s:O, s:s}", "controller",
                                                     json_object_get(dk, "controller"), "slot",
                                                     json_object_get(dk, "slot"), "path", ""));
        }
        for (size_t k = 0; k < json_array_size(cpdisks); k++) {
            json_t *o = json_array_get(cpdisks, k);
            int idx = run_index(&run, (int)json_integer_value(json_object_get(o, "controller")),
                                (int)json_integer_value(json_object_get(o, "slot")));
            if (idx >= 0)
                json_object_set_new(o, "path",
                                    json_string(run.disks[idx].vhd_path[0]
                                                    ? run.disks[idx].vhd_path
                                                    : run.hd[idx]->cfg.path));
        }
        const char *when = json_string_value(json_object_get(man, "checkpoint_time"));
        char cut_name[32];
        snprintf(cut_name, sizeof(cut_name), "backup%d", res.sequence);
        json_t *cpo = json_pack("{s:s, s:s, s:s, s:s, s:s, s:f, s:o}", "vm", vm->cfg.name, "name",
                                cut_name, "created", when ? when : "", "consistency",
                                res.consistency == SNAP_APP ? "app" : "crash", "why",
                                res.why_crash, "hold_ms", res.hold_ns / 1e6, "disks", cpdisks);
        *result =
            json_pack("{s:s, s:s, s:i, s:o, s:b, s:s, s:s, s:o, s:f, s:I, s:I, s:I, "
                      "s:s}",
                      "vm", vm->cfg.name, "dir", dir, "seq", res.sequence, "checkpoint", cpo,
                      "incremental", res.is_incremental, "why_full", res.why_full, "recovered",
                      recovered, "disks", disks, "seconds", (hv_now_ns() - t0) / 1e9, "bytes_read",
                      (json_int_t)res.bytes_read, "bytes_written", (json_int_t)res.bytes_written,
                      "bytes_changed", (json_int_t)res.bytes_changed, "manifest", res.manifest);
        json_decref(man);
        hv_info("VM '%s': backup #%d into %s (%s%s%s), %" PRIu64 " bytes read, %" PRIu64
                " written",
                vm->cfg.name, res.sequence, dir, res.is_incremental ? "incremental" : "full",
                res.why_full[0] ? ": " : "", res.why_full, res.bytes_read, res.bytes_written);
    }
out:
    run_free(&run);
    return ret;
}

int hv_snap_request(struct hv_daemon *d, const char *op, const json_t *req, json_t **result,
                    struct hv_err *err)
{
    static const struct {
        const char *op;
        int (*fn)(struct hv_daemon *d, const json_t *req, json_t **result, struct hv_err *err);
    } ops[] = {
        {"checkpoint.create", req_checkpoint_create}, {"checkpoint.list", req_checkpoint_list},
        {"checkpoint.show", req_checkpoint_show},     {"checkpoint.delete", req_checkpoint_delete},
        {"checkpoint.apply", req_checkpoint_apply},   {"backup.create", req_backup_create},
    };
    for (size_t i = 0; i < HV_ARRAY_SIZE(ops); i++)
        if (!strcmp(ops[i].op, op))
            return ops[i].fn(d, req, result, err);
    return -ENOSYS;
}
