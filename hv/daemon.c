/*
 * hvstord's core: the VMs of one state directory, the iSCSI server that
 * serves their controllers, the directory that tells it who may log in
 * where, and the control requests that change all of it.
 *
 * Every change a control request makes is applied to the live VM first and
 * persisted second; if persisting fails the live change is undone, so what
 * runs and what a restart would bring back never disagree for longer than
 * one request.
 */
#include "hv_internal.h"
#include "passthru_int.h"
#include "iscsi.h"
#include "vhd.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#define DRAIN_TIMEOUT_NS (30ull * 1000000000)

struct hv_daemon {
    struct hv_reactor *reactor;
    struct hv_registry registry;
    struct hv_runtime runtime;
    struct iscsi_server *server;
    struct hv_control *control;
    struct hv_vm *vms;                  /* sorted by name */
    char portal[128];                   /* "addr:port" as listening */
    char socket_path[4096 + 32];
    int lock_fd;
    int signal_fd;
    struct hv_watch *signal_watch;
    int exit_signal;
    bool is_abandoned;                  /* drain timed out: leave images to the kernel */
    /* The requests running now, innermost first. Checkpoints, backups,
     * resizes, agent calls run reactor turns while they wait, so other
     * requests arrive meanwhile and run nested (see hv_daemon_request);
     * a SIGTERM waits until every one is done. */
    struct busy *busy;
    int depth;                          /* requests running, reads included */
    bool is_stop_deferred;
};

/* A request in progress on its VM ("" for none). A change refuses other
 * changes of the VM until it is done; a read (vm show asking the agent runs
 * turns for up to 3 s, holding the VM's definition) makes them wait for its
 * end. Lives in hv_daemon_request's frame. */
struct busy {
    const char *op;
    char vm[HV_NAME_MAX + 1];
    uint64_t since_ns;
    bool is_read;
    struct busy *outer;
};

static struct hv_vm *find_vm(struct hv_daemon *d, const char *name)
{
    for (struct hv_vm *vm = d->vms; vm; vm = vm->next)
        if (!strcmp(vm->cfg.name, name))
            return vm;
    return NULL;
}

static void insert_vm(struct hv_daemon *d, struct hv_vm *vm)
{
    struct hv_vm **pp = &d->vms;
    while (*pp && strcmp((*pp)->cfg.name, vm->cfg.name) < 0)
        pp = &(*pp)->next;
    vm->next = *pp;
    *pp = vm;
}

static void unlink_vm(struct hv_daemon *d, struct hv_vm *vm)
{
    for (struct hv_vm **pp = &d->vms; *pp; pp = &(*pp)->next)
        if (*pp == vm) {
            *pp = vm->next;
            return;
        }
}

/* What passthru_lu.c needs of the daemon. */
struct hv_vm *hv_daemon_vms(struct hv_daemon *d) { return d->vms; }
struct hv_vm *hv_daemon_find_vm(struct hv_daemon *d, const char *name) { return find_vm(d, name); }
struct hv_registry *hv_daemon_registry(struct hv_daemon *d) { return &d->registry; }
struct hv_runtime *hv_daemon_runtime(struct hv_daemon *d) { return &d->runtime; }
const char *hv_daemon_portal(const struct hv_daemon *d) { return d->portal; }

/* ------------------------------------------------------- the directory */

static int dir_lookup(void *arg, const char *target, const char *initiator,
                      struct iscsi_auth *auth, struct scsi_controller **ctl)
{
    struct hv_daemon *d = arg;
    char name[HV_NAME_MAX + 1];
    int controller;
    struct hv_vm *vm;

    if (hv_target_parse(target, name, &controller) < 0)
        return -ENOENT;
    vm = find_vm(d, name);
    if (!vm || controller >= vm->cfg.controller_count || !vm->controllers[controller])
        return -ENOENT;
    if (!hv_vm_config_allows(&vm->cfg, initiator)) {
        hv_warn("login to %s refused: initiator %s is not one of VM '%s'", target, initiator,
                vm->cfg.name);
        return -EACCES;
    }
    memset(auth, 0, sizeof(*auth));
    if (vm->cfg.chap.user[0]) {
        auth->is_chap_required = true;
        snprintf(auth->chap_user, sizeof(auth->chap_user), "%s", vm->cfg.chap.user);
        snprintf(auth->chap_secret, sizeof(auth->chap_secret), "%s", vm->cfg.chap.secret);
    }
    if (vm->cfg.mutual_chap.user[0]) {
        auth->is_mutual = true;
        snprintf(auth->mutual_user, sizeof(auth->mutual_user), "%s", vm->cfg.mutual_chap.user);
        snprintf(auth->mutual_secret, sizeof(auth->mutual_secret), "%s",
                 vm->cfg.mutual_chap.secret);
    }
    *ctl = vm->controllers[controller];
    return 0;
}

static void dir_list(void *arg, const char *initiator,
                     void (*emit)(void *ctx, const char *target), void *ctx)
{
    struct hv_daemon *d = arg;

    for (struct hv_vm *vm = d->vms; vm; vm = vm->next) {
        if (!hv_vm_config_allows(&vm->cfg, initiator))
            continue;
        for (int c = 0; c < vm->cfg.controller_count; c++)
            if (vm->controllers[c])
                emit(ctx, vm->targets[c]);
    }
}

/* One credential set per VM that allows `initiator` and has CHAP on, in VM
 * name order; a target's own lookup() then decides whether the one proved
 * opens it (iscsi_login.c). */
static int dir_discovery_auth(void *arg, const char *initiator, unsigned index,
                              struct iscsi_auth *auth)
{
    struct hv_daemon *d = arg;

    for (struct hv_vm *vm = d->vms; vm; vm = vm->next) {
        if (!vm->cfg.chap.user[0] || !hv_vm_config_allows(&vm->cfg, initiator))
            continue;
        if (index-- > 0)
            continue;
        memset(auth, 0, sizeof(*auth));
        auth->is_chap_required = true;
        snprintf(auth->chap_user, sizeof(auth->chap_user), "%s", vm->cfg.chap.user);
        snprintf(auth->chap_secret, sizeof(auth->chap_secret), "%s", vm->cfg.chap.secret);
        if (vm->cfg.mutual_chap.user[0]) {
            auth->is_mutual = true;
            snprintf(auth->mutual_user, sizeof(auth->mutual_user), "%s",
                     vm->cfg.mutual_chap.user);
            snprintf(auth->mutual_secret, sizeof(auth->mutual_secret), "%s",
                     vm->cfg.mutual_chap.secret);
        }
        return 0;
    }
    return -ENOENT;
}

static const struct iscsi_directory_ops directory_ops = {
    .lookup = dir_lookup,
    .list = dir_list,
    .discovery_auth = dir_discovery_auth,
};

/* ---------------------------------------------------------- requests */

static json_t *reply_ok(json_t *result)
{
    return json_pack("{s:b, s:o}", "ok", 1, "result", result ? result : json_null());
}

static json_t *reply_error(int code, const struct hv_err *err)
{
    return json_pack("{s:b, s:s, s:i}", "ok", 0, "error", hv_err_msg(err, code), "errno", -code);
}

static int arg_string(const json_t *req, const char *key, bool is_required, const char **out,
                      struct hv_err *err)
{
    const json_t *v = json_object_get(req, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (is_required)
            return hv_err_set(err, -EINVAL, "request needs '%s'", key);
        return 0;
    }
    if (!json_is_string(v))
        return hv_err_set(err, -EINVAL, "request: '%s' must be a string", key);
    *out = json_string_value(v);
    return 0;
}

static int arg_int(const json_t *req, const char *key, bool is_required, long long min,
                   long long max, long long *out, struct hv_err *err)
{
    const json_t *v = json_object_get(req, key);
    if (!v || json_is_null(v)) {
        if (is_required)
            return hv_err_set(err, -EINVAL, "request needs '%s'", key);
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return hv_err_set(err, -EINVAL, "'%s' must be an integer from %lld to %lld", key, min,
                          max);
    *out = json_integer_value(v);
    return 0;
}

static int get_vm(struct hv_daemon *d, const json_t *req, const char *key, struct hv_vm **out,
                  struct hv_err *err)
{
    const char *name;
    int ret = arg_string(req, key, true, &name, err);
    if (ret < 0)
        return ret;
    *out = find_vm(d, name);
    if (!*out)
        return hv_err_set(err, -ENOENT, "no VM named '%s'", name);
    return 0;
}

static int req_status(struct hv_daemon *d, const json_t *req, json_t **result, struct hv_err *err)
{
    int count = 0;
    for (struct hv_vm *vm = d->vms; vm; vm = vm->next)
        count++;
    *result = json_pack("{s:s, s:s, s:s, s:i, s:i}", "version", "0.1.0", "portal", d->portal,
                        "state_dir", d->registry.dir, "vms", count, "pid", (int)getpid());
    (void)req;
    (void)err;
    return 0;
}

static int req_vm_create(struct hv_daemon *d, const json_t *req, json_t **result,
                         struct hv_err *err)
{
    struct hv_vm_config cfg;
    struct hv_vm *vm = NULL;
    const char *name;
    const char *chap;
    const char *mutual;
    long long controllers = 1;
    const json_t *initiators = json_object_get(req, "initiators");
    int ret;

    if ((ret = arg_string(req, "name", true, &name, err)) < 0 ||
        (ret = arg_string(req, "chap", false, &chap, err)) < 0 ||
        (ret = arg_string(req, "mutual_chap", false, &mutual, err)) < 0 ||
        (ret = arg_int(req, "controllers", false, 1, HV_MAX_CONTROLLERS, &controllers, err)) < 0)
        return ret;
    ret = hv_vm_config_init(&cfg, name, err);
    if (ret < 0)
        return ret;
    if (find_vm(d, name)) {
        ret = hv_err_set(err, -EEXIST, "VM '%s' already exists", name);
        goto out;
    }
    if (initiators && json_is_array(initiators) && json_array_size(initiators) > 0) {
        const char *names[HV_MAX_INITIATORS + 1];
        size_t i;
        const json_t *v;
        if (json_array_size(initiators) > HV_MAX_INITIATORS) {
            ret = hv_err_set(err, -EINVAL, "at most %d initiator names", HV_MAX_INITIATORS);
            goto out;
        }
        json_array_foreach(initiators, i, v) {
            if (!json_is_string(v)) {
                ret = hv_err_set(err, -EINVAL, "initiators[%zu] is not a string", i);
                goto out;
            }
            names[i] = json_string_value(v);
        }
        ret = hv_vm_config_set_initiators(&cfg, names, (int)json_array_size(initiators), err);
        if (ret < 0)
            goto out;
    } else if (initiators && !json_is_array(initiators)) {
        ret = hv_err_set(err, -EINVAL, "'initiators' must be an array of iSCSI names");
        goto out;
    }
    if (chap && (ret = hv_chap_parse(chap, &cfg.chap, err)) < 0)
        goto out;
    if (mutual && (ret = hv_chap_parse(mutual, &cfg.mutual_chap, err)) < 0)
        goto out;
    {
        bool is_agent_set;
        if (!cfg.extra)
            cfg.extra = json_object();
        if ((ret = hv_snap_agent_arg(req, cfg.extra, &is_agent_set, err)) < 0)
            goto out;
    }
    cfg.controller_count = (int)controllers;
    ret = hv_vm_config_validate(&cfg, err);
    if (ret < 0)
        goto out;
    {
        const char *iqn = NULL;
        if ((ret = arg_string(req, "iqn", false, &iqn, err)) < 0 ||
            (ret = hv_passthru_vm_created(&d->runtime, &cfg, iqn, err)) < 0)
            goto out;
    }
    ret = hv_vm_start(&d->runtime, &cfg, &vm, err);
    if (ret < 0)
        goto out;
    ret = hv_registry_save(&d->registry, &vm->cfg, err);
    if (ret < 0) {
        hv_vm_stop(&d->runtime, vm);
        goto out;
    }
    insert_vm(d, vm);
    hv_info("VM '%s' created (%d initiators, CHAP %s)", name, cfg.initiator_count,
            cfg.mutual_chap.user[0] ? "mutual" : cfg.chap.user[0] ? "one-way" : "off");
    *result = hv_vm_show_json(vm, d->portal);
out:
    hv_vm_config_free(&cfg);
    return ret;
}

static int req_vm_list(struct hv_daemon *d, const json_t *req, json_t **result,
                       struct hv_err *err)
{
    json_t *list = json_array();
    for (struct hv_vm *vm = d->vms; vm; vm = vm->next) {
        char uuid_text[37];
        int disks = 0;
        int offline = 0;
        for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
            for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++)
                if (vm->disks[c][s]) {
                    disks++;
                    offline += vm->disks[c][s]->lu == NULL;
                }
        hv_uuid_format(vm->cfg.uuid, uuid_text);
        json_array_append_new(list, json_pack("{s:s, s:s, s:i, s:i, s:i}", "name",
                                              vm->cfg.name, "uuid", uuid_text, "controllers",
                                              vm->cfg.controller_count, "disks", disks,
                                              "offline_disks", offline));
    }
    *result = list;
    (void)req;
    (void)err;
    return 0;
}

static int req_vm_show(struct hv_daemon *d, const json_t *req, json_t **result,
                       struct hv_err *err)
{
    struct hv_vm *vm;
    int ret = get_vm(d, req, "name", &vm, err);
    json_t *cps = json_array();
    size_t i;
    json_t *v;
    if (ret < 0) {
        json_decref(cps);
        return ret;
    }
    *result = hv_vm_show_json(vm, d->portal);
    /* The agent is asked only when nothing else runs (asking runs turns). */
    json_object_set_new(*result, "agent", hv_snap_agent_json(&d->runtime, vm,
                                                             d->depth == 1));
    json_array_foreach(json_object_get(vm->cfg.extra, "checkpoints"), i, v)
        json_array_append(cps, json_object_get(v, "name"));
    json_object_set_new(*result, "checkpoints", cps);
    return 0;
}

static int req_vm_delete(struct hv_daemon *d, const json_t *req, json_t **result,
                         struct hv_err *err)
{
    struct hv_vm *vm;
    json_t *kept = NULL;
    int ret = get_vm(d, req, "name", &vm, err);
    if (ret < 0 ||
        (ret = hv_snap_may_delete(vm, json_is_true(json_object_get(req, "force")), &kept,
                                  err)) < 0)
        return ret;
    /* Forget it durably first: if that fails, nothing changed. */
    ret = hv_registry_remove(&d->registry, vm->cfg.name, err);
    if (ret < 0) {
        json_decref(kept);
        return ret;
    }
    unlink_vm(d, vm);
    for (int c = 0; c < vm->cfg.controller_count; c++)
        if (vm->controllers[c])
            iscsi_server_drop_target(d->server, vm->targets[c]);
    *result = json_pack("{s:s}", "deleted", vm->cfg.name);
    if (kept) {
        hv_info("VM '%s' deleted with --force: its newest data stays in the files of "
                "\"newest_data\" (%zu disks)", vm->cfg.name, json_array_size(kept));
        json_object_set_new(*result, "newest_data", kept);
    }
    hv_info("VM '%s' deleted; its sessions dropped", vm->cfg.name);
    hv_snap_vm_deleted(&d->runtime, vm);
    hv_vm_retire(&d->runtime, vm);
    return 0;
}

/* Change who may act as the VM's guest. Sessions logged in under the old
 * rules are dropped: an initiator that lost access must not keep it through
 * a session that outlives the change. */
static int req_vm_set(struct hv_daemon *d, const json_t *req, json_t **result,
                      struct hv_err *err)
{
    struct hv_vm *vm;
    struct hv_vm_config next;
    const json_t *initiators = json_object_get(req, "initiators");
    const char *chap;
    const char *mutual;
    int ret;

    if ((ret = get_vm(d, req, "name", &vm, err)) < 0 ||
        (ret = arg_string(req, "chap", false, &chap, err)) < 0 ||
        (ret = arg_string(req, "mutual_chap", false, &mutual, err)) < 0)
        return ret;
    ret = hv_vm_config_copy(&next, &vm->cfg);
    if (ret < 0)
        return hv_err_set(err, ret, "out of memory");
    if (initiators) {
        const char *names[HV_MAX_INITIATORS];
        size_t i;
        const json_t *v;
        if (!json_is_array(initiators) || json_array_size(initiators) > HV_MAX_INITIATORS) {
            ret = hv_err_set(err, -EINVAL, "'initiators' must be an array of at most %d names",
                             HV_MAX_INITIATORS);
            goto out;
        }
        json_array_foreach(initiators, i, v) {
            if (!json_is_string(v)) {
                ret = hv_err_set(err, -EINVAL, "initiators[%zu] is not a string", i);
                goto out;
            }
            names[i] = json_string_value(v);
        }
        ret = hv_vm_config_set_initiators(&next, names, (int)json_array_size(initiators), err);
        if (ret < 0)
            goto out;
    }
    if (json_is_true(json_object_get(req, "no_chap"))) {
        memset(&next.chap, 0, sizeof(next.chap));
        memset(&next.mutual_chap, 0, sizeof(next.mutual_chap));
    }
    if (chap && (ret = hv_chap_parse(chap, &next.chap, err)) < 0)
        goto out;
    if (mutual && (ret = hv_chap_parse(mutual, &next.mutual_chap, err)) < 0)
        goto out;
    bool is_agent_set = false;
    if (!next.extra)
        next.extra = json_object();
    if ((ret = hv_snap_agent_arg(req, next.extra, &is_agent_set, err)) < 0)
        goto out;
    ret = hv_registry_save(&d->registry, &next, err);
    if (ret < 0)
        goto out;
    if (is_agent_set) {
        json_decref(vm->cfg.extra);
        vm->cfg.extra = json_incref(next.extra);
        hv_info("VM '%s': guest agent %s", vm->cfg.name,
                json_string_value(json_object_get(next.extra, "agent")) ?
                json_string_value(json_object_get(next.extra, "agent")) : "none");
        /* The guest's access did not change: its sessions stay. */
        if (!initiators && !chap && !mutual && !json_is_true(json_object_get(req, "no_chap"))) {
            *result = hv_vm_show_json(vm, d->portal);
            goto out;
        }
    }
    memcpy(vm->cfg.initiators, next.initiators, sizeof(vm->cfg.initiators));
    vm->cfg.initiator_count = next.initiator_count;
    vm->cfg.chap = next.chap;
    vm->cfg.mutual_chap = next.mutual_chap;
    for (int c = 0; c < vm->cfg.controller_count; c++)
        if (vm->controllers[c])
            iscsi_server_drop_target(d->server, vm->targets[c]);
    hv_info("VM '%s': access changed (%d initiators, CHAP %s); its sessions were dropped",
            vm->cfg.name, vm->cfg.initiator_count,
            vm->cfg.mutual_chap.user[0] ? "mutual" : vm->cfg.chap.user[0] ? "one-way" : "off");
    *result = hv_vm_show_json(vm, d->portal);
out:
    hv_vm_config_free(&next);
    return ret;
}

static int get_slot(const json_t *req, int *controller, int *slot, struct hv_err *err)
{
    long long c = -1;
    long long s = -1;
    int ret;

    if ((ret = arg_int(req, "controller", true, 0, HV_MAX_CONTROLLERS - 1, &c, err)) < 0 ||
        (ret = arg_int(req, "slot", true, 0, HV_SLOTS_PER_CONTROLLER - 1, &s, err)) < 0)
        return ret;
    *controller = (int)c;
    *slot = (int)s;
    return 0;
}

static int req_disk_attach(struct hv_daemon *d, const json_t *req, json_t **result,
                           struct hv_err *err)
{
    struct hv_disk_config dc;
    struct hv_vm *vm;
    const char *kind;
    const char *path;
    const char *create_size = NULL;
    char holder[128];
    int controller;
    int slot;
    bool is_created = false;
    int ret;

    memset(&dc, 0, sizeof(dc));
    if ((ret = get_vm(d, req, "vm", &vm, err)) < 0 || (ret = get_slot(req, &controller, &slot,
                                                                         err)) < 0 ||
        (ret = arg_string(req, "kind", true, &kind, err)) < 0 ||
        (ret = arg_string(req, "path", true, &path, err)) < 0 ||
        (ret = arg_string(req, "create_size", false, &create_size, err)) < 0)
        return ret;
    if (hv_disk_kind_parse(kind, &dc.kind) < 0)
        return hv_err_set(err, -EINVAL, "unknown disk kind '%s' (vhd or raw)", kind);
    if (path[0] != '/' || strlen(path) >= sizeof(dc.path))
        return hv_err_set(err, -EINVAL, "disk path '%s' must be absolute (hvctl makes it so)",
                          path);
    snprintf(dc.path, sizeof(dc.path), "%s", path);
    dc.is_read_only = json_is_true(json_object_get(req, "read_only"));
    if (hv_vm_path_in_use(d->vms, dc.path, holder, sizeof(holder)))
        return hv_err_set(err, -EBUSY, "%s: already attached to %s", dc.path, holder);
    if (hv_runtime_is_retiring(&d->runtime, dc.path))
        return hv_err_set(err, -EBUSY, "%s: detached a moment ago and still finishing its "
                          "last commands; try again", dc.path);
    if (create_size) {
        struct vhd_create_options opt = {.type = VHD_TYPE_DYNAMIC};
        if (dc.kind != HV_DISK_VHD)
            return hv_err_set(err, -EINVAL, "--create makes dynamic VHDs only");
        if (hv_parse_size(create_size, &opt.size_bytes) < 0 || opt.size_bytes == 0)
            return hv_err_set(err, -EINVAL, "size '%s' is not a size (e.g. 10G)", create_size);
        ret = vhd_create(dc.path, &opt, err);
        if (ret < 0)
            return ret;
        is_created = true;
    }
    ret = hv_vm_attach(&d->runtime, vm, controller, slot, &dc, err);
    if (ret < 0)
        goto fail;
    ret = hv_registry_save(&d->registry, &vm->cfg, err);
    if (ret < 0) {
        struct hv_err ignored = {0};
        hv_vm_detach(&d->runtime, vm, controller, slot, &ignored);
        goto fail;
    }
    hv_info("VM '%s': %s %s attached at controller %d LUN %d%s", vm->cfg.name, kind, dc.path,
            controller, slot, dc.is_read_only ? " (read-only)" : "");
    *result = hv_vm_show_json(vm, d->portal);
    return 0;

fail:
    if (is_created)
        unlink(dc.path);
    return ret;
}

static int req_disk_detach(struct hv_daemon *d, const json_t *req, json_t **result,
                           struct hv_err *err)
{
    struct hv_vm *vm;
    int controller;
    int slot;
    int ret;

    if ((ret = get_vm(d, req, "vm", &vm, err)) < 0 ||
        (ret = get_slot(req, &controller, &slot, err)) < 0)
        return ret;
    if (!vm->disks[controller][slot])
        return hv_err_set(err, -ENOENT, "VM '%s': controller %d slot %d is empty",
                          vm->cfg.name, controller, slot);
    if ((ret = hv_snap_may_detach(vm, controller, slot, err)) < 0)
        return ret;
    /* Persist the definition without the disk first: a detach the user was
     * told about must not come back after a crash. */
    {
        struct hv_vm_config next;
        ret = hv_vm_config_copy(&next, &vm->cfg);
        if (ret < 0)
            return hv_err_set(err, ret, "out of memory");
        free(next.disks[controller][slot]);
        next.disks[controller][slot] = NULL;
        if (next.extra)
            hv_snap_slot_removed(next.extra, controller, slot);
        ret = hv_registry_save(&d->registry, &next, err);
        hv_vm_config_free(&next);
        if (ret < 0)
            return ret;
    }
    ret = hv_vm_detach(&d->runtime, vm, controller, slot, err);
    if (ret < 0)
        return ret;
    hv_info("VM '%s': controller %d LUN %d detached", vm->cfg.name, controller, slot);
    *result = hv_vm_show_json(vm, d->portal);
    return 0;
}

static int req_disk_resize(struct hv_daemon *d, const json_t *req, json_t **result,
                           struct hv_err *err)
{
    struct hv_vm *vm;
    const char *size_text;
    uint64_t size_bytes;
    int controller;
    int slot;
    int ret;

    if ((ret = get_vm(d, req, "vm", &vm, err)) < 0 ||
        (ret = get_slot(req, &controller, &slot, err)) < 0 ||
        (ret = arg_string(req, "size", true, &size_text, err)) < 0)
        return ret;
    if (hv_parse_size(size_text, &size_bytes) < 0)
        return hv_err_set(err, -EINVAL, "size '%s' is not a size (e.g. 20G)", size_text);
    ret = hv_vm_resize(vm, controller, slot, size_bytes, err);
    if (ret < 0)
        return ret;
    hv_info("VM '%s': controller %d LUN %d resized to %" PRIu64 " bytes", vm->cfg.name,
            controller, slot, size_bytes);
    *result = hv_vm_show_json(vm, d->portal);
    return 0;
}

static int req_disk_stats(struct hv_daemon *d, const json_t *req, json_t **result,
                          struct hv_err *err)
{
    struct hv_vm *vm;
    long long controller = -1;
    long long slot = -1;
    int ret;

    if ((ret = get_vm(d, req, "vm", &vm, err)) < 0 ||
        (ret = arg_int(req, "controller", false, 0, HV_MAX_CONTROLLERS - 1, &controller,
                       err)) < 0 ||
        (ret = arg_int(req, "slot", false, 0, HV_SLOTS_PER_CONTROLLER - 1, &slot, err)) < 0)
        return ret;
    if ((controller < 0) != (slot < 0))
        return hv_err_set(err, -EINVAL, "give both --controller and --slot, or neither");
    if (controller >= 0 && !vm->disks[controller][slot])
        return hv_err_set(err, -ENOENT, "VM '%s': controller %lld slot %lld is empty",
                          vm->cfg.name, controller, slot);
    *result = hv_vm_stats_json(vm, (int)controller, (int)slot);
    return 0;
}

static const struct {
    const char *op;
    int (*fn)(struct hv_daemon *d, const json_t *req, json_t **result, struct hv_err *err);
} requests[] = {
    {"status", req_status},
    {"vm.create", req_vm_create},
    {"vm.list", req_vm_list},
    {"vm.show", req_vm_show},
    {"vm.delete", req_vm_delete},
    {"vm.set", req_vm_set},
    {"disk.attach", req_disk_attach},
    {"disk.detach", req_disk_detach},
    {"disk.resize", req_disk_resize},
    {"disk.stats", req_disk_stats},
};

static json_t *dispatch(struct hv_daemon *d, const char *op, const json_t *request);

/*
 * How a request may overlap others. Reads run at any time (they run no
 * turn). Short changes (no turn, or a few short ones: opening an image, a
 * resize's drain) run at once, nested in the turns of a long request of
 * another VM, but never inside a hold of a VM's guest I/O, which they would
 * lengthen: they wait for its release. Long ones (checkpoints, backups,
 * merges) wait until nothing else runs, so that two of them never nest
 * (the inner one would hold up the outer one's holds and its answer).
 * A request is refused only when its own VM is busy with another change.
 */
enum op_class { OP_READ, OP_SHORT, OP_LONG };

static enum op_class op_class(const char *op)
{
    static const char *const reads[] = {"status", "vm.list", "vm.show", "disk.stats",
                                        "checkpoint.list", "checkpoint.show", "san.list",
                                        "job.status", "disk.attach_status",
                                        "disk.takeover_status"};
    static const char *const shorts[] = {"vm.create", "vm.set", "vm.delete", "disk.attach",
                                         "disk.detach", "disk.resize", "disk.attach_lun",
                                         "disk.attach_dev", "disk.attach_fc", "disk.takeover",
                                         "vm.zoning", "san.add", "san.luns"};
    for (size_t i = 0; i < HV_ARRAY_SIZE(reads); i++)
        if (!strcmp(op, reads[i]))
            return OP_READ;
    for (size_t i = 0; i < HV_ARRAY_SIZE(shorts); i++)
        if (!strcmp(op, shorts[i]))
            return OP_SHORT;
    return OP_LONG;
}

static const char *request_vm(const json_t *request)
{
    const char *vm = json_string_value(json_object_get(request, "vm"));
    if (!vm)
        vm = json_string_value(json_object_get(request, "name"));
    return vm && strlen(vm) <= HV_NAME_MAX ? vm : "";
}

/* Some VM's guest I/O is held right now (a checkpoint's cut, a merge's
 * last pass, a resize's drain). */
static bool is_any_hold(const struct hv_daemon *d)
{
    for (const struct hv_vm *vm = d->vms; vm; vm = vm->next) {
        if (vm->gate && snap_gate_is_held(vm->gate))
            return true;
        for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
            for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++)
                if (vm->disks[c][s] && vm->disks[c][s]->is_held)
                    return true;
    }
    return false;
}

/* The request running on `vm` (a change, or a read when `is_read_too`). */
static const struct busy *busy_with(const struct hv_daemon *d, const char *vm, bool is_read_too)
{
    for (const struct busy *b = d->busy; b; b = b->outer)
        if (vm[0] && !strcmp(b->vm, vm) && (is_read_too || !b->is_read))
            return b;
    return NULL;
}

bool hv_daemon_vm_may_change(struct hv_daemon *d, const char *vm)
{
    return !busy_with(d, vm, true) && !is_any_hold(d);
}

enum hv_wait hv_daemon_must_wait(struct hv_daemon *d, const json_t *request)
{
    const char *op = json_string_value(json_object_get(request, "op"));
    enum op_class cls = op ? op_class(op) : OP_READ;

    /* Bad requests and ones to refuse are answered at once. */
    if (cls == OP_READ || d->depth == 0 || d->exit_signal ||
        busy_with(d, request_vm(request), false))
        return HV_WAIT_NO;
    if (cls == OP_LONG)
        return HV_WAIT_IDLE;
    /* A read of the VM ends within seconds; a hold within milliseconds. */
    return busy_with(d, request_vm(request), true) || is_any_hold(d) ? HV_WAIT_HOLD : HV_WAIT_NO;
}

/* The last running request ended: a deferred stop, or the waiting ones. */
static void request_done(struct hv_daemon *d)
{
    if (d->depth > 0)
        return;
    if (d->is_stop_deferred) {
        hv_info("the request is done; stopping now");
        hv_reactor_stop(d->reactor);
    } else if (d->control) {
        hv_control_kick(d->control);
    }
}

json_t *hv_daemon_request(struct hv_daemon *d, const json_t *request)
{
    struct hv_err err = {0};
    struct busy me = {0};
    const char *op;
    const struct busy *other;
    json_t *reply;

    if (!json_is_object(request) || !json_is_string(json_object_get(request, "op"))) {
        hv_err_set(&err, -EINVAL, "a request is a JSON object with a string 'op'");
        return reply_error(-EINVAL, &err);
    }
    op = json_string_value(json_object_get(request, "op"));
    snprintf(me.vm, sizeof(me.vm), "%s", request_vm(request));
    me.is_read = op_class(op) == OP_READ;
    if (!me.is_read && d->exit_signal) {
        hv_err_set(&err, -ESHUTDOWN, "hvstord is stopping (%s); %s was not started",
                   strsignal(d->exit_signal), op);
        return reply_error(-ESHUTDOWN, &err);
    }
    other = me.is_read ? NULL : busy_with(d, me.vm, false);
    if (other) {
        hv_err_set(&err, -EBUSY, "hvstord is busy with %s of VM '%s' (for %.0f s); try again "
                   "when it is done", other->op, other->vm,
                   (hv_now_ns() - other->since_ns) / 1e9);
        return reply_error(-EBUSY, &err);
    }
    me.op = op;
    me.since_ns = hv_now_ns();
    me.outer = d->busy;
    d->busy = &me;
    d->depth++;
    reply = dispatch(d, op, request);
    d->depth--;
    /* Nested requests end before the ones they ran inside of. */
    d->busy = me.outer;
    request_done(d);
    return reply;
}

static json_t *dispatch(struct hv_daemon *d, const char *op, const json_t *request)
{
    struct hv_err err = {0};
    json_t *result = NULL;

    for (size_t i = 0; i < HV_ARRAY_SIZE(requests); i++) {
        if (strcmp(requests[i].op, op) != 0)
            continue;
        int ret = requests[i].fn(d, request, &result, &err);
        if (ret < 0) {
            hv_debug("request %s failed: %s", op, hv_err_msg(&err, ret));
            return reply_error(ret, &err);
        }
        return reply_ok(result);
    }
    {
        int ret = hv_passthru_request(d, op, request, &result, &err);
        if (ret != -ENOSYS)
            return ret < 0 ? reply_error(ret, &err) : reply_ok(result);
        ret = hv_snap_request(d, op, request, &result, &err);
        if (ret != -ENOSYS) {
            if (ret < 0)
                hv_debug("request %s failed: %s", op, hv_err_msg(&err, ret));
            return ret < 0 ? reply_error(ret, &err) : reply_ok(result);
        }
    }
    hv_err_set(&err, -EOPNOTSUPP, "unknown request '%s'", op);
    return reply_error(-EOPNOTSUPP, &err);
}

/* ------------------------------------------------------------ lifecycle */

static void on_signal(void *arg, uint32_t events)
{
    struct hv_daemon *d = arg;
    struct signalfd_siginfo si;

    while (read(d->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            d->exit_signal = (int)si.ssi_signo;
            if (d->depth > 0) {
                /* Stopping the reactor now would make the running request's
                 * turns spin; it ends first, with the VM's disks whole. */
                hv_info("%s: stopping once %s is done", strsignal(d->exit_signal),
                        d->busy ? d->busy->op : "the running request");
                d->is_stop_deferred = true;
            } else {
                hv_reactor_stop(d->reactor);
            }
        }
    }
    (void)events;
}

static int take_lock(struct hv_daemon *d, struct hv_err *err)
{
    char path[4096 + 32];

    snprintf(path, sizeof(path), "%s/hvstord.lock", d->registry.dir);
    d->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (d->lock_fd < 0)
        return hv_err_errno(err, path, "open");
    if (flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            return hv_err_set(err, -EBUSY, "%s: another hvstord already serves this state "
                              "directory", d->registry.dir);
        return hv_err_errno(err, path, "flock");
    }
    return 0;
}

static int write_portal_file(struct hv_daemon *d, struct hv_err *err)
{
    char path[4096 + 32];
    char line[160];
    int len = snprintf(line, sizeof(line), "%s\n", d->portal);

    snprintf(path, sizeof(path), "%s/%s", d->registry.dir, HV_PORTAL_FILE);
    return hv_write_file_atomic(path, line, (size_t)len, err);
}

int hv_daemon_create(const struct hv_daemon_options *opt, struct hv_daemon **out,
                     struct hv_err *err)
{
    struct hv_daemon *d = calloc(1, sizeof(*d));
    struct hv_vm_config *list = NULL;
    int count = 0;
    sigset_t mask;
    int ret;

    if (!d)
        return hv_err_set(err, -ENOMEM, "out of memory");
    d->lock_fd = -1;
    d->signal_fd = -1;
    ret = hv_registry_open(&d->registry, opt->state_dir, err);
    if (ret < 0)
        goto fail;
    ret = take_lock(d, err);
    if (ret < 0)
        goto fail;
    ret = hv_reactor_create(&d->reactor);
    if (ret < 0) {
        hv_err_set(err, ret, "cannot create the reactor: %s", strerror(-ret));
        goto fail;
    }
    hv_runtime_init(&d->runtime, d->reactor, opt->no_direct_io);
    snprintf(d->runtime.state_dir, sizeof(d->runtime.state_dir), "%s", d->registry.dir);
    if ((opt->wwn_oui == NULL) != (opt->iqn_prefix == NULL)) {
        ret = hv_err_set(err, -EINVAL, "--wwn-oui and --iqn-prefix go together");
        goto fail;
    }
    {
        struct hv_passthru_options po = {
            .state_dir = d->registry.dir,
            .wwn_oui = opt->wwn_oui,
            .iqn_prefix = opt->iqn_prefix,
            .host_id = opt->host_id,
            .sysfs_root = opt->sysfs_root,
            .dev_root = opt->dev_root,
        };
        ret = hv_passthru_init(&d->runtime, &po, err);
        if (ret < 0)
            goto fail;
    }

    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    d->signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (d->signal_fd < 0) {
        ret = hv_err_errno(err, "signalfd", "create");
        goto fail;
    }
    d->signal_watch = hv_reactor_add_fd(d->reactor, d->signal_fd, EPOLLIN, on_signal, d);
    if (!d->signal_watch) {
        ret = hv_err_errno(err, "signalfd", "watch");
        goto fail;
    }

    ret = hv_registry_load(&d->registry, &list, &count, err);
    if (ret < 0)
        goto fail;
    for (int i = 0; i < count; i++) {
        struct hv_vm *vm;
        ret = hv_vm_start(&d->runtime, &list[i], &vm, err);
        if (ret < 0) {
            hv_err_prefix(err, "VM '%s'", list[i].name);
            goto fail;
        }
        insert_vm(d, vm);
        if (vm->needs_save) {
            /* Start-up recovery fixed the definition (a finished merge). */
            struct hv_err save_err = {0};
            int sr = hv_registry_save(&d->registry, &vm->cfg, &save_err);
            if (sr < 0)
                hv_error("VM '%s': %s", vm->cfg.name, hv_err_msg(&save_err, sr));
            vm->needs_save = false;
        }
        hv_info("VM '%s' restored", vm->cfg.name);
    }
    hv_registry_free_list(list, count);
    list = NULL;

    ret = iscsi_server_create(d->reactor, opt->portal_addr, opt->portal_port, &directory_ops, d,
                              &d->server, err);
    if (ret < 0)
        goto fail;
    /* IPv6 addresses in brackets, as iscsi:// URLs and libiscsi portals want. */
    snprintf(d->portal, sizeof(d->portal), strchr(opt->portal_addr, ':') ? "[%s]:%u" : "%s:%u",
             opt->portal_addr, iscsi_server_port(d->server));
    ret = write_portal_file(d, err);
    if (ret < 0)
        goto fail;

    snprintf(d->socket_path, sizeof(d->socket_path), "%s/%s", d->registry.dir, HV_SOCKET_NAME);
    ret = hv_control_listen(d->reactor, d->socket_path, d, &d->control, err);
    if (ret < 0)
        goto fail;
    hv_info("serving iSCSI on %s, control socket %s, %d VMs", d->portal, d->socket_path, count);
    *out = d;
    return 0;

fail:
    if (list)
        hv_registry_free_list(list, count);
    hv_daemon_destroy(d);
    return ret;
}

uint16_t hv_daemon_port(const struct hv_daemon *d)
{
    return d->server ? iscsi_server_port(d->server) : 0;
}

int hv_daemon_run(struct hv_daemon *d)
{
    bool is_drained = false;
    uint64_t deadline;
    int ret = hv_reactor_run(d->reactor);
    int status = 0;

    if (ret < 0) {
        hv_error("reactor failed: %s", strerror(-ret));
        status = ret;
    }
    hv_info("%s: draining in-flight I/O and closing sessions",
            d->exit_signal ? strsignal(d->exit_signal) : "stopping");
    if (d->control) {
        hv_control_close(d->control);
        d->control = NULL;
    }
    iscsi_server_shutdown(d->server, &is_drained);
    deadline = hv_now_ns() + DRAIN_TIMEOUT_NS;
    while (!is_drained && hv_now_ns() < deadline)
        hv_reactor_run_once(d->reactor, 100);
    if (!is_drained) {
        /* Closing images under requests still in flight would corrupt
         * memory; leave them to the kernel (VHD metadata is crash-safe). */
        hv_error("sessions did not drain in %llu s; exiting without closing images",
                 DRAIN_TIMEOUT_NS / 1000000000);
        d->is_abandoned = true;
        return -ETIMEDOUT;
    }
    while (d->vms) {
        struct hv_vm *vm = d->vms;
        d->vms = vm->next;
        ret = hv_vm_stop(&d->runtime, vm);
        if (ret < 0 && status == 0)
            status = ret;
    }
    hv_runtime_fini(&d->runtime);
    hv_passthru_fini(&d->runtime);
    hv_info("every image flushed and closed%s", status ? " (with errors)" : "");
    return status;
}

void hv_daemon_destroy(struct hv_daemon *d)
{
    if (!d)
        return;
    if (d->is_abandoned) {
        /* Requests are still in flight: freeing what they point at would be
         * worse than the leak of a process about to exit. */
        if (d->lock_fd >= 0)
            close(d->lock_fd);
        return;
    }
    if (d->control)
        hv_control_close(d->control);
    while (d->vms) {
        struct hv_vm *vm = d->vms;
        d->vms = vm->next;
        hv_vm_stop(&d->runtime, vm);
    }
    if (d->reactor) {
        hv_runtime_fini(&d->runtime);
        hv_passthru_fini(&d->runtime);
    }
    if (d->server)
        iscsi_server_destroy(d->server);
    if (d->signal_watch)
        hv_reactor_del_fd(d->reactor, d->signal_watch);
    if (d->signal_fd >= 0)
        close(d->signal_fd);
    if (d->reactor)
        hv_reactor_destroy(d->reactor);
    if (d->lock_fd >= 0)
        close(d->lock_fd);
    free(d);
}
