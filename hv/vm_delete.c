/*
 * What a VM leaves behind when it is deleted, beside its definition.
 *
 * Its change-tracking state (DIR/cbt/<vm>/) goes with it: a VM created
 * later under the same name must not take those bitmaps for its own disks'
 * history. Its images stay (hvstord never deletes a user's image), but a
 * disk with checkpoints, or with the cut of a backup a killed hvstord left,
 * has its newest data in a child file the attached image does not name:
 * deleting such a VM is refused unless forced, and forced, the answer says
 * which file holds each disk's newest data, so that nothing is lost
 * silently. The definition's keys are those vm_snapshot.c writes.
 */
#include "hv_internal.h"
#include "passthru_int.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

/* Per disk whose data is in layers over the attached image:
 * {controller, slot, attached, newest, chain}. NULL when there is none. */
static json_t *disks_in_layers(const struct hv_vm *vm)
{
    const json_t *layers = json_object_get(vm->cfg.extra, "layers");
    json_t *out = NULL;
    const char *key;
    json_t *chain;

    json_object_foreach((json_t *)layers, key, chain)
    {
        int c;
        int s;
        size_t n = json_array_size(chain);
        if (n < 2 || sscanf(key, "c%d-s%d", &c, &s) != 2)
            continue;
        if (!out)
            out = json_array();
        json_array_append_new(out, json_pack("{s:i, s:i, s:O, s:O, s:O}", "controller", c, "slot",
                                             s, "attached", json_array_get(chain, 0), "newest",
                                             json_array_get(chain, n - 1), "chain", chain));
    }
    return out;
}

/* "'cp-1', 'cp-2'" into `out`, "" when there is none. */
static void checkpoint_names(const struct hv_vm *vm, char *out, size_t cap)
{
    const json_t *cps = json_object_get(vm->cfg.extra, "checkpoints");
    size_t i;
    json_t *cp;
    size_t len = 0;

    out[0] = 0;
    json_array_foreach(cps, i, cp)
    {
        const char *name = json_string_value(json_object_get(cp, "name"));
        if (name && len < cap)
            len += (size_t)snprintf(out + len, cap - len, "%s'%s'", len ? ", " : "", name);
    }
}

int hv_snap_may_delete(const struct hv_vm *vm, bool is_forced, json_t **kept, struct hv_err *err)
{
    json_t *disks = disks_in_layers(vm);
    char names[1024];
    char files[3072];
    size_t len = 0;
    size_t i;
    json_t *dk;

    *kept = NULL;
    if (!disks)
        return 0;
    if (is_forced) {
        *kept = disks;
        return 0;
    }
    checkpoint_names(vm, names, sizeof(names));
    files[0] = 0;
    json_array_foreach(disks, i, dk)
    {
        if (len >= sizeof(files))
            break;
        len += (size_t)snprintf(files + len, sizeof(files) - len, "%sc%d-s%d in %s (over %s)",
                                len ? "; " : "",
                                (int)json_integer_value(json_object_get(dk, "controller")),
                                (int)json_integer_value(json_object_get(dk, "slot")),
                                json_string_value(json_object_get(dk, "newest")),
                                json_string_value(json_object_get(dk, "attached")));
    }
    json_decref(disks);
    return hv_err_set(err, -EBUSY,
                      "VM '%s' has %s%s%s: the newest data of its disks is not in the attached "
                      "images but in children: %s. Delete the checkpoints first (checkpoint "
                      "delete, newest first) so that the attached images hold everything, or "
                      "give --force to delete the VM and keep those files",
                      vm->cfg.name, names[0] ? "checkpoints " : "the cut of an unfinished backup",
                      names,
                      json_object_get(vm->cfg.extra, "backup_children") && names[0]
                          ? " and the cut of an unfinished backup"
                          : "",
                      files);
}

void hv_snap_vm_deleted(struct hv_runtime *rt, struct hv_vm *vm)
{
    char dir[4096 + 128];
    DIR *d;
    struct dirent *de;

    /* Retired disks close later; their trackers (an image's, or a SAN
     * LUN's inside its LU) must not write the state back into the
     * directory removed here. */
    for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
            struct hv_disk *disk = vm->disks[c][s];
            struct snap_cbt *cbt = disk ? disk->cbt : NULL;
            if (disk && !cbt && disk->lu && hv_lu_is_passthru(disk->lu)) {
                struct bdev *top;
                struct snap_cbw *cbw;
                struct hv_err ignored = {0};
                if (hv_passthru_backup_view(disk->lu, &top, &cbt, &cbw, &ignored) < 0)
                    cbt = NULL;
            }
            if (cbt)
                snap_cbt_forget_state(cbt);
        }
    if (!rt->state_dir[0])
        return;
    snprintf(dir, sizeof(dir), "%s/cbt/%s", rt->state_dir, vm->cfg.name);
    d = opendir(dir);
    if (!d)
        return;
    while ((de = readdir(d))) {
        char path[sizeof(dir) + 256 + 2];
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (unlink(path) < 0)
            hv_warn("VM '%s' deleted: %s: unlink: %s", vm->cfg.name, path, strerror(errno));
    }
    closedir(d);
    if (rmdir(dir) < 0)
        hv_warn("VM '%s' deleted: %s: rmdir: %s", vm->cfg.name, dir, strerror(errno));
}
