/*
 * The live side of a VM: controllers served as iSCSI targets, and the disks
 * in their slots.
 *
 * Disk kinds are a table (open an image bdev for a definition), so a new
 * kind — a SAN pass-through LUN — is a new row, not an `if` in the code that
 * attaches, detaches and reports.
 */
#include "hv_internal.h"
#include "passthru_int.h"
#include "vhd.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

/* ------------------------------------------------------- image back ends */

struct hv_disk_backend {
    enum hv_disk_kind kind;
    /* Open the image; a back end that locks through a descriptor of its own
     * returns it in *lock_fd (closed after the image), else leaves -1. */
    int (*open)(struct hv_runtime *rt, const struct hv_disk_config *dc, bool no_direct_io,
                struct bdev **out, int *lock_fd, struct hv_err *err);
};

static int open_vhd(struct hv_runtime *rt, const struct hv_disk_config *dc, bool no_direct_io,
                    struct bdev **out, int *lock_fd, struct hv_err *err)
{
    struct vhd_open_options opt = {
        .is_read_only = dc->is_read_only,
        .no_direct_io = no_direct_io,
    };
    return vhd_open(rt->reactor, dc->path, &opt, out, err);
}

/*
 * The VHD engine locks its images; a raw file gets the same protection here:
 * an OFD lock on the whole file, exclusive for a writable disk and shared for
 * a read-only one. Another hvstord (another state dir) or a QEMU that opened
 * the file itself (QEMU takes OFD locks on it too) is refused instead of
 * writing the same blocks.
 */
static int lock_raw(const struct hv_disk_config *dc, int *lock_fd, struct hv_err *err)
{
    struct flock fl = {.l_type = dc->is_read_only ? F_RDLCK : F_WRLCK, .l_whence = SEEK_SET};
    int fd = open(dc->path, (dc->is_read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);

    if (fd < 0)
        return hv_err_errno(err, dc->path, "open");
    if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
        int ret = -errno;
        close(fd);
        if (ret == -EAGAIN || ret == -EACCES)
            return hv_err_set(err, -EBUSY, "%s: in use by another process (it holds a lock "
                              "on the file)", dc->path);
        return hv_err_set(err, ret, "%s: lock: %s", dc->path, strerror(-ret));
    }
    *lock_fd = fd;
    return 0;
}

static int open_raw(struct hv_runtime *rt, const struct hv_disk_config *dc, bool no_direct_io,
                    struct bdev **out, int *lock_fd, struct hv_err *err)
{
    struct bdev_raw_options opt = {
        .is_read_only = dc->is_read_only,
        .use_direct_io = !no_direct_io,
    };
    int ret = *lock_fd >= 0 ? 0 : lock_raw(dc, lock_fd, err);

    if (ret < 0)
        return ret;
    return bdev_raw_open(rt->reactor, dc->path, &opt, out, err);
}

static const struct hv_disk_backend backends[] = {
    {HV_DISK_VHD, open_vhd},
    {HV_DISK_RAW, open_raw},
    {HV_DISK_DEV, hv_passthru_open_device},
};

int hv_open_image(struct hv_runtime *rt, const struct hv_disk_config *dc, struct bdev **out,
                  int *lock_fd, struct hv_err *err)
{
    for (size_t i = 0; i < HV_ARRAY_SIZE(backends); i++) {
        if (backends[i].kind != dc->kind)
            continue;
        int ret = backends[i].open(rt, dc, rt->no_direct_io, out, lock_fd, err);
        /* tmpfs and some FUSE file systems refuse O_DIRECT with EINVAL: serve
         * such a file through the page cache rather than not at all. */
        if (ret == -EINVAL && !rt->no_direct_io && access(dc->path, F_OK) == 0) {
            struct hv_err retry_err = {0};
            if (backends[i].open(rt, dc, true, out, lock_fd, &retry_err) == 0) {
                hv_warn("%s: O_DIRECT refused, serving it with buffered I/O", dc->path);
                return 0;
            }
        }
        if (ret < 0 && *lock_fd >= 0) {
            close(*lock_fd);
            *lock_fd = -1;
        }
        return ret;
    }
    return hv_err_set(err, -EINVAL, "%s: no back end for disk kind '%s'", dc->path,
                      hv_disk_kind_name(dc->kind));
}

/* --------------------------------------------- the counting pass-through */

struct disk_io_ctx {
    struct hv_disk *disk;
    struct bdev_io *next_held;          /* while the disk is held for a resize */
    struct bdev_io inner __attribute__((aligned(16)));
};

static void disk_io_done(struct bdev_io *inner, int status)
{
    struct bdev_io *io = inner->cb_arg;
    struct disk_io_ctx *ctx = bdev_io_ctx(io);

    io->status = inner->status;
    io->status_length = inner->status_length;
    io->status_depth = inner->status_depth;
    ctx->disk->inflight--;
    io->done(io, status);
}

static int disk_submit(struct bdev *bd, struct bdev_io *io)
{
    struct hv_disk *disk = hv_container_of(bd, struct hv_disk, bd);
    struct disk_io_ctx *ctx = bdev_io_ctx(io);
    struct bdev_io *inner = &ctx->inner;
    int ret;

    ctx->disk = disk;
    inner->type = io->type;
    inner->flags = io->flags;
    inner->offset = io->offset;
    inner->length = io->length;
    inner->iov = io->iov;
    inner->iovcnt = io->iovcnt;
    inner->done = disk_io_done;
    inner->cb_arg = io;
    inner->status = 0;
    inner->status_length = 0;
    inner->status_depth = -1;
    if (disk->is_held) {
        ctx->next_held = NULL;
        if (disk->held_tail)
            ((struct disk_io_ctx *)bdev_io_ctx(disk->held_tail))->next_held = io;
        else
            disk->held_head = io;
        disk->held_tail = io;
        return 0;
    }
    if (!disk->image)
        return -ENODEV;  /* its image failed to reopen after a checkpoint apply */
    ret = disk->image->ops->submit(disk->image, inner);
    if (ret == 0)
        disk->inflight++;
    return ret;
}

static int disk_close(struct bdev *bd)
{
    struct hv_disk *disk = hv_container_of(bd, struct hv_disk, bd);
    return disk->image ? bdev_close(disk->image) : 0;
}

static int disk_resize(struct bdev *bd, uint64_t size_bytes, struct hv_err *err)
{
    struct hv_disk *disk = hv_container_of(bd, struct hv_disk, bd);
    int ret;

    if (!disk->image->ops->resize)
        return hv_err_set(err, -EOPNOTSUPP, "%s: the %s back end cannot resize a disk online "
                          "(detach it, resize it offline, attach it again)", disk->cfg.path,
                          disk->image->ops->name);
    ret = disk->image->ops->resize(disk->image, size_bytes, err);
    if (ret == 0)
        bd->size_bytes = disk->image->size_bytes;
    return ret;
}

static void disk_describe(struct bdev *bd, json_t *obj)
{
    struct hv_disk *disk = hv_container_of(bd, struct hv_disk, bd);
    if (disk->image->ops->describe)
        disk->image->ops->describe(disk->image, obj);
}

static const struct bdev_ops disk_ops = {
    .name = "hv-disk",
    .submit = disk_submit,
    .close = disk_close,
    .resize = disk_resize,
    .describe = disk_describe,
};

/* A raw file has no identity of its own, yet VPD 0x83 must not change across
 * restarts: derive one from the VM's UUID and the slot, stable as long as
 * the disk stays where it is. */
static void derive_uuid(const struct hv_vm_config *vm, int controller, int slot, uint8_t out[16])
{
    uint8_t seed[16 + 2];
    memcpy(seed, vm->uuid, 16);
    seed[16] = (uint8_t)controller;
    seed[17] = (uint8_t)slot;
    hv_xxh3_128(seed, sizeof(seed), out);
    out[6] = (uint8_t)((out[6] & 0x0F) | 0x40);
    out[8] = (uint8_t)((out[8] & 0x3F) | 0x80);
}

/* The image must be closed already: the lock goes last. */
static void disk_free(struct hv_disk *disk)
{
    if (disk->lock_fd >= 0)
        close(disk->lock_fd);
    free(disk);
}

/* Open the image and build the LU. On failure *out still gets a disk (with
 * `error` set and no LU) when `keep_offline`, so a restart keeps the slot. */
static int disk_open(struct hv_runtime *rt, struct hv_vm *live, int controller, int slot,
                     const struct hv_disk_config *dc, struct hv_disk **out, struct hv_err *err)
{
    const struct hv_vm_config *vm = &live->cfg;
    struct hv_disk *disk = calloc(1, sizeof(*disk));
    struct scsi_disk_options opt = {.is_read_only = dc->is_read_only};
    char serial[32];
    int ret;

    if (!disk)
        return hv_err_set(err, -ENOMEM, "out of memory");
    disk->cfg = *dc;
    disk->lock_fd = -1;
    *out = disk;
    if (dc->kind == HV_DISK_LUN) {
        /* not a bdev: the LU forwards CDBs (passthru_lu.c) */
        ret = hv_passthru_disk_open(rt, vm, controller, slot, dc, disk, err);
        if (ret < 0)
            goto offline;
        hv_snap_open_lun(rt, live, controller, slot, disk);
        return 0;
    }
    if (dc->kind == HV_DISK_DEV && dc->designator[0]) {
        /* a local SCSI disk: the same LU, CDBs by SG_IO (passthru_sg.c) */
        ret = hv_passthru_sg_disk_open(rt, dc, disk, err);
        if (ret < 0)
            goto offline;
        hv_snap_open_lun(rt, live, controller, slot, disk);   /* backups, as a SAN LUN's */
        return 0;
    }
    if (dc->kind == HV_DISK_FC && dc->is_sg_io) {
        /* the LUN's sd under the VM's vport: the same LU, by SG_IO */
        ret = hv_passthru_fc_sg_disk_open(rt, vm, dc, disk, err);
        if (ret < 0)
            goto offline;
        hv_snap_open_lun(rt, live, controller, slot, disk);
        return 0;
    }
    ret = hv_snap_open_disk(rt, live, controller, slot, dc, disk, err);
    if (ret < 0)
        goto offline;
    disk->bd = *disk->image;
    disk->bd.ops = &disk_ops;
    snprintf(disk->bd.name, sizeof(disk->bd.name), "%s", dc->path);
    disk->bd.io_ctx_bytes = sizeof(struct disk_io_ctx) + disk->image->io_ctx_bytes;
    disk->bd.is_read_only = dc->is_read_only || disk->image->is_read_only;
    if (hv_uuid_is_nil(disk->bd.uuid))
        derive_uuid(vm, controller, slot, disk->bd.uuid);
    /* Serial: short, stable, unique per disk identity (VPD 0x80). */
    snprintf(serial, sizeof(serial), "%02x%02x%02x%02x%02x%02x%02x%02x", disk->bd.uuid[0],
             disk->bd.uuid[1], disk->bd.uuid[2], disk->bd.uuid[3], disk->bd.uuid[4],
             disk->bd.uuid[5], disk->bd.uuid[6], disk->bd.uuid[7]);
    opt.serial = serial;
    ret = scsi_disk_create(&disk->bd, &opt, &disk->lu, err);
    if (ret < 0) {
        hv_snap_close_image(disk);
        goto offline;
    }
    return 0;

offline:
    snprintf(disk->error, sizeof(disk->error), "%s", hv_err_msg(err, ret));
    return ret;
}

/* ---------------------------------------------------------- retirement */

/*
 * A detached disk is closed in two steps: the controller tells us when the
 * LU has no task left (scsi_lu_when_idle), then the image is closed once the
 * pass-through also counts nothing in flight. Until then it sits on the
 * retired list, polled by a timer: closing earlier would free memory that a
 * completion is about to touch.
 */
#define RETIRE_TICK_MS 20

static void close_retired(struct hv_disk *disk)
{
    if (disk->lu)
        disk->lu->ops->destroy(disk->lu);
    if (disk->image) {
        int ret = hv_snap_close_image(disk);
        if (ret < 0)
            hv_error("%s: closing after detach: %s", disk->cfg.path, strerror(-ret));
        else
            hv_info("%s: closed after detach", disk->cfg.path);
    }
    disk_free(disk);
}

static void retire_tick(void *arg)
{
    struct hv_runtime *rt = arg;
    struct hv_disk **pp = &rt->retired;

    while (*pp) {
        struct hv_disk *disk = *pp;
        if (!disk->is_lu_idle || disk->inflight) {
            pp = &disk->next_retired;
            continue;
        }
        *pp = disk->next_retired;
        close_retired(disk);
    }
    if (rt->retired)
        hv_timer_arm(rt->reactor, &rt->retire_timer, RETIRE_TICK_MS, retire_tick, rt);
}

static void lu_idle(void *arg)
{
    struct hv_disk *disk = arg;
    disk->is_lu_idle = true;
}

static void retire_disk(struct hv_runtime *rt, struct hv_disk *disk)
{
    /* The usual case, an idle disk, closes at once: the user may attach the
     * file again (or elsewhere) right after the detach returns. */
    if ((!disk->lu || disk->lu->tasks_in_flight == 0) && disk->inflight == 0) {
        close_retired(disk);
        return;
    }
    disk->is_lu_idle = false;
    scsi_lu_when_idle(disk->lu, lu_idle, disk);
    disk->next_retired = rt->retired;
    rt->retired = disk;
    if (!rt->retire_timer.is_armed)
        hv_timer_arm(rt->reactor, &rt->retire_timer, RETIRE_TICK_MS, retire_tick, rt);
}

bool hv_runtime_is_retiring(const struct hv_runtime *rt, const char *path)
{
    for (const struct hv_disk *d = rt->retired; d; d = d->next_retired)
        if (!strcmp(d->cfg.path, path))
            return true;
    return false;
}

void hv_runtime_init(struct hv_runtime *rt, struct hv_reactor *r, bool no_direct_io)
{
    memset(rt, 0, sizeof(*rt));
    rt->reactor = r;
    rt->no_direct_io = no_direct_io;
}

void hv_runtime_fini(struct hv_runtime *rt)
{
    uint64_t deadline = hv_now_ns() + 10ull * 1000000000;

    /* Sessions are gone, so whatever is in flight only needs the reactor. */
    while (rt->retired && hv_now_ns() < deadline)
        hv_reactor_run_once(rt->reactor, RETIRE_TICK_MS);
    for (struct hv_disk *d = rt->retired; d; d = d->next_retired)
        hv_error("%s: still %" PRIu64 " requests in flight at exit; image left open",
                 d->cfg.path, d->inflight);
    hv_timer_cancel(rt->reactor, &rt->retire_timer);
    /* A gate still wrapping a disk left open must stay. */
    for (int i = 0; i < rt->dead_gate_count && !rt->retired; i++)
        snap_gate_destroy(rt->dead_gates[i]);
    free(rt->dead_gates);
    rt->dead_gates = NULL;
    rt->dead_gate_count = 0;
    for (int i = 0; i < rt->dead_count; i++)
        scsi_controller_destroy(rt->dead_controllers[i]);
    free(rt->dead_controllers);
    rt->dead_controllers = NULL;
    rt->dead_count = 0;
}

/* ------------------------------------------------------------- the VM */

static int create_controller(struct hv_runtime *rt, struct hv_vm *vm, int c, struct hv_err *err)
{
    int ret;

    hv_target_name(vm->cfg.name, c, vm->targets[c]);
    ret = scsi_controller_create(rt->reactor, vm->targets[c], &vm->controllers[c]);
    if (ret < 0)
        return hv_err_set(err, ret, "VM '%s': cannot create controller %d: %s", vm->cfg.name, c,
                          strerror(-ret));
    return 0;
}

int hv_vm_grow_controllers(struct hv_runtime *rt, struct hv_vm *vm, int count,
                           struct hv_err *err)
{
    if (count > HV_MAX_CONTROLLERS)
        return hv_err_set(err, -EINVAL, "VM '%s': at most %d controllers", vm->cfg.name,
                          HV_MAX_CONTROLLERS);
    for (int c = vm->cfg.controller_count; c < count; c++) {
        int ret = create_controller(rt, vm, c, err);
        if (ret < 0)
            return ret;
        vm->cfg.controller_count = c + 1;
    }
    return 0;
}

int hv_vm_start(struct hv_runtime *rt, const struct hv_vm_config *cfg, struct hv_vm **out,
                struct hv_err *err)
{
    struct hv_vm *vm = calloc(1, sizeof(*vm));
    int ret;

    if (!vm)
        return hv_err_set(err, -ENOMEM, "out of memory");
    ret = hv_vm_config_copy(&vm->cfg, cfg);
    if (ret < 0) {
        free(vm);
        return hv_err_set(err, ret, "out of memory");
    }
    ret = snap_gate_create(rt->reactor, &vm->gate);
    if (ret < 0) {
        hv_err_set(err, ret, "VM '%s': cannot create its quiesce gate", vm->cfg.name);
        goto fail;
    }
    for (int c = 0; c < vm->cfg.controller_count; c++) {
        ret = create_controller(rt, vm, c, err);
        if (ret < 0)
            goto fail;
    }
    for (int c = 0; c < vm->cfg.controller_count; c++)
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
            struct hv_err disk_err = {0};
            struct hv_disk *disk = NULL;
            if (!vm->cfg.disks[c][s])
                continue;
            ret = disk_open(rt, vm, c, s, vm->cfg.disks[c][s], &disk, &disk_err);
            vm->disks[c][s] = disk;
            if (!disk) {
                ret = hv_err_set(err, ret, "%s", hv_err_msg(&disk_err, ret));
                goto fail;
            }
            if (ret < 0) {
                hv_error("VM '%s' controller %d slot %d offline: %s", vm->cfg.name, c, s,
                         disk->error);
                continue;
            }
            ret = scsi_controller_attach(vm->controllers[c], (uint64_t)s, disk->lu);
            if (ret < 0) {
                snprintf(disk->error, sizeof(disk->error), "controller refused the LU: %s",
                         strerror(-ret));
                disk->lu->ops->destroy(disk->lu);
                disk->lu = NULL;
                if (disk->image)
                    hv_snap_close_image(disk);
            }
        }
    *out = vm;
    return 0;

fail:
    hv_vm_stop(rt, vm);
    return ret;
}

int hv_vm_stop(struct hv_runtime *rt, struct hv_vm *vm)
{
    int first = 0;

    for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
        if (vm->controllers[c])
            scsi_controller_destroy(vm->controllers[c]);  /* destroys the attached LUs */
    for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
            struct hv_disk *disk = vm->disks[c][s];
            if (!disk)
                continue;
            if (disk->lu && !vm->controllers[c])
                disk->lu->ops->destroy(disk->lu);
            if (disk->image) {
                int ret = hv_snap_close_image(disk);
                if (ret < 0) {
                    hv_error("%s: close: %s", disk->cfg.path, strerror(-ret));
                    if (!first)
                        first = ret;
                }
            }
            disk_free(disk);
        }
    hv_snap_retire_gate(rt, vm);
    hv_vm_config_free(&vm->cfg);
    free(vm);
    return first;
}

void hv_vm_retire(struct hv_runtime *rt, struct hv_vm *vm)
{
    for (int c = 0; c < HV_MAX_CONTROLLERS; c++) {
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
            struct hv_disk *disk = vm->disks[c][s];
            if (!disk)
                continue;
            if (disk->lu && vm->controllers[c])
                scsi_controller_detach(vm->controllers[c], (uint64_t)s);
            if (disk->lu)
                hv_passthru_leaving(disk->lu);
            retire_disk(rt, disk);
        }
        if (vm->controllers[c]) {
            struct scsi_controller **grown = realloc(
                rt->dead_controllers, sizeof(*grown) * (size_t)(rt->dead_count + 1));
            if (grown) {
                rt->dead_controllers = grown;
                rt->dead_controllers[rt->dead_count++] = vm->controllers[c];
            } else {
                hv_error("VM '%s': out of memory; controller %d leaked", vm->cfg.name, c);
            }
        }
    }
    hv_snap_retire_gate(rt, vm);
    hv_vm_config_free(&vm->cfg);
    free(vm);
}

static int check_slot(const struct hv_vm *vm, int controller, int slot, struct hv_err *err)
{
    if (controller < 0 || controller >= HV_MAX_CONTROLLERS)
        return hv_err_set(err, -EINVAL, "VM '%s': controller %d does not exist (0 to %d)",
                          vm->cfg.name, controller, HV_MAX_CONTROLLERS - 1);
    if (slot < 0 || slot >= HV_SLOTS_PER_CONTROLLER)
        return hv_err_set(err, -EINVAL, "VM '%s': slot %d does not exist (0 to %d)",
                          vm->cfg.name, slot, HV_SLOTS_PER_CONTROLLER - 1);
    return 0;
}

int hv_vm_attach(struct hv_runtime *rt, struct hv_vm *vm, int controller, int slot,
                 const struct hv_disk_config *dc, struct hv_err *err)
{
    struct hv_disk *disk = NULL;
    struct hv_disk_config *saved;
    int ret = check_slot(vm, controller, slot, err);

    if (ret < 0)
        return ret;
    if (vm->disks[controller][slot])
        return hv_err_set(err, -EBUSY, "VM '%s': controller %d slot %d already holds %s",
                          vm->cfg.name, controller, slot,
                          vm->disks[controller][slot]->cfg.path);
    saved = malloc(sizeof(*saved));
    if (!saved)
        return hv_err_set(err, -ENOMEM, "out of memory");
    *saved = *dc;
    ret = hv_vm_grow_controllers(rt, vm, controller + 1, err);
    if (ret < 0)
        goto fail;
    hv_snap_slot_attached(rt, vm, controller, slot);
    ret = disk_open(rt, vm, controller, slot, dc, &disk, err);
    if (ret < 0)
        goto fail;
    ret = scsi_controller_attach(vm->controllers[controller], (uint64_t)slot, disk->lu);
    if (ret < 0) {
        hv_err_set(err, ret, "VM '%s': controller %d refused slot %d: %s", vm->cfg.name,
                   controller, slot, strerror(-ret));
        disk->lu->ops->destroy(disk->lu);
        if (disk->image)
            hv_snap_close_image(disk);
        goto fail;
    }
    vm->disks[controller][slot] = disk;
    vm->cfg.disks[controller][slot] = saved;
    return 0;

fail:
    if (disk)
        disk_free(disk);
    free(saved);
    return ret;
}

int hv_vm_detach(struct hv_runtime *rt, struct hv_vm *vm, int controller, int slot,
                 struct hv_err *err)
{
    struct hv_disk *disk;
    int ret = check_slot(vm, controller, slot, err);

    if (ret < 0)
        return ret;
    disk = vm->disks[controller][slot];
    if (!disk)
        return hv_err_set(err, -ENOENT, "VM '%s': controller %d slot %d is empty", vm->cfg.name,
                          controller, slot);
    if (disk->is_held)
        return hv_err_set(err, -EBUSY, "%s: being resized; detach it afterwards",
                          disk->cfg.path);
    if (disk->lu) {
        scsi_controller_detach(vm->controllers[controller], (uint64_t)slot);
        hv_passthru_leaving(disk->lu);
    }
    vm->disks[controller][slot] = NULL;
    free(vm->cfg.disks[controller][slot]);
    vm->cfg.disks[controller][slot] = NULL;
    if (vm->cfg.extra)
        hv_snap_slot_removed(vm->cfg.extra, controller, slot);
    retire_disk(rt, disk);
    return 0;
}

/* Hand the requests held during a resize to the image, oldest first. One
 * the image refuses outright (it can only be one that became invalid)
 * completes with that error. */
static void disk_release(struct hv_disk *disk)
{
    struct bdev_io *io = disk->held_head;
    disk->is_held = false;
    disk->held_head = disk->held_tail = NULL;
    while (io) {
        struct disk_io_ctx *ctx = bdev_io_ctx(io);
        struct bdev_io *next = ctx->next_held;
        int ret = disk->image->ops->submit(disk->image, &ctx->inner);
        if (ret == 0)
            disk->inflight++;
        else
            io->done(io, ret);
        io = next;
    }
}

/* How long a resize waits for the requests in flight to finish. */
#define RESIZE_DRAIN_MS 5000

int hv_vm_resize(struct hv_vm *vm, int controller, int slot, uint64_t size_bytes,
                 struct hv_err *err)
{
    struct hv_disk *disk;
    int ret = check_slot(vm, controller, slot, err);

    if (ret < 0)
        return ret;
    disk = vm->disks[controller][slot];
    if (!disk)
        return hv_err_set(err, -ENOENT, "VM '%s': controller %d slot %d is empty", vm->cfg.name,
                          controller, slot);
    if (!disk->lu)
        return hv_err_set(err, -ENODEV, "VM '%s': controller %d slot %d is offline: %s",
                          vm->cfg.name, controller, slot, disk->error);
    if (hv_lu_is_passthru(disk->lu))
        return hv_err_set(err, -EOPNOTSUPP, "%s: a pass-through LUN is resized on the SAN "
                          "or the device; the guest sees its own CAPACITY DATA HAS CHANGED",
                          disk->cfg.path);
    if (disk->bd.is_read_only)
        return hv_err_set(err, -EROFS, "%s: attached read-only, not resizing", disk->cfg.path);
    if (size_bytes == 0 || size_bytes % HV_SECTOR_BYTES)
        return hv_err_set(err, -EINVAL, "%s: new size %" PRIu64 " is not a positive multiple "
                          "of 512 bytes", disk->cfg.path, size_bytes);
    if (disk->is_held)
        return hv_err_set(err, -EBUSY, "%s: a resize is already running", disk->cfg.path);
    /* The image's resize op wants no request in flight: new requests are
     * held at this disk, those already with the image finish (the reactor
     * keeps turning for them, as a detach's close does), then the image
     * resizes and the held requests go on. Guests see a pause of a few
     * milliseconds, then CAPACITY DATA HAS CHANGED. */
    disk->is_held = true;
    uint64_t deadline = hv_now_ns() + RESIZE_DRAIN_MS * 1000000ull;
    while (disk->inflight && hv_now_ns() < deadline)
        hv_reactor_run_once(disk->bd.reactor, 10);
    if (disk->inflight) {
        uint64_t left = disk->inflight;
        disk_release(disk);
        return hv_err_set(err, -EBUSY, "%s: %" PRIu64 " requests still in flight after %d ms; "
                          "not resized", disk->cfg.path, left, RESIZE_DRAIN_MS);
    }
    ret = disk->bd.ops->resize(&disk->bd, size_bytes, err);
    disk_release(disk);
    if (ret < 0)
        return ret;
    scsi_disk_capacity_changed(disk->lu);
    return 0;
}

/* ----------------------------------------------------------- reporting */

static void portal_host(const char *portal, char *out, size_t len)
{
    /* A wildcard listener is reached on loopback from this host. */
    if (!strncmp(portal, "0.0.0.0:", 8))
        snprintf(out, len, "127.0.0.1:%s", portal + 8);
    else if (!strncmp(portal, "[::]:", 5))
        snprintf(out, len, "[::1]:%s", portal + 5);
    else
        snprintf(out, len, "%s", portal);
}

json_t *hv_vm_show_json(const struct hv_vm *vm, const char *portal)
{
    char uuid_text[37];
    char host[128];
    json_t *obj = json_object();
    json_t *initiators = json_array();
    json_t *controllers = json_array();

    portal_host(portal, host, sizeof(host));
    hv_uuid_format(vm->cfg.uuid, uuid_text);
    for (int i = 0; i < vm->cfg.initiator_count; i++)
        json_array_append_new(initiators, json_string(vm->cfg.initiators[i]));
    for (int c = 0; c < vm->cfg.controller_count; c++) {
        json_t *luns = json_array();
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
            const struct hv_disk *disk = vm->disks[c][s];
            char url[512];
            json_t *d;
            if (!disk)
                continue;
            snprintf(url, sizeof(url), "iscsi://%s/%s/%d", host, vm->targets[c], s);
            d = json_pack("{s:i, s:s, s:s, s:b, s:s, s:s}", "lun", s, "kind",
                          hv_disk_kind_name(disk->cfg.kind), "path", disk->cfg.path,
                          "read_only", disk->cfg.is_read_only, "url", url, "state",
                          disk->lu ? "online" : "offline");
            if (disk->lu && hv_lu_is_passthru(disk->lu)) {
                hv_passthru_describe(disk->lu, d);
            } else if (disk->lu) {
                char uuid_disk[37];
                hv_uuid_format(disk->bd.uuid, uuid_disk);
                json_object_set_new(d, "size_bytes", json_integer((json_int_t)disk->bd.size_bytes));
                json_object_set_new(d, "disk_uuid", json_string(uuid_disk));
                if (disk->image->ops->describe) {
                    json_t *image = json_object();
                    disk->image->ops->describe(disk->image, image);
                    json_object_set_new(d, "image", image);
                }
                hv_snap_describe_disk(vm, c, s, d, false);
            } else {
                json_object_set_new(d, "error", json_string(disk->error));
            }
            json_array_append_new(luns, d);
        }
        json_array_append_new(controllers, json_pack("{s:i, s:s, s:o}", "index", c, "target",
                                                     vm->targets[c], "luns", luns));
    }
    json_object_set_new(obj, "name", json_string(vm->cfg.name));
    json_object_set_new(obj, "uuid", json_string(uuid_text));
    json_object_set_new(obj, "initiators", initiators);
    json_object_set_new(obj, "chap", json_pack("{s:b, s:s?, s:b}", "enabled",
                                               vm->cfg.chap.user[0] != '\0', "user",
                                               vm->cfg.chap.user[0] ? vm->cfg.chap.user : NULL,
                                               "mutual", vm->cfg.mutual_chap.user[0] != '\0'));
    json_object_set_new(obj, "portal", json_string(host));
    json_object_set_new(obj, "controllers", controllers);
    if (vm->cfg.extra && json_object_get(vm->cfg.extra, "identity"))
        json_object_set(obj, "identity", json_object_get(vm->cfg.extra, "identity"));
    return obj;
}

static json_t *disk_stats(const struct hv_disk *disk, int c, int s)
{
    json_t *obj = json_pack("{s:i, s:i, s:s, s:s}", "controller", c, "lun", s, "path",
                            disk->cfg.path, "state", disk->lu ? "online" : "offline");
    if (disk->lu && hv_lu_is_passthru(disk->lu)) {
        hv_passthru_describe(disk->lu, obj);
    } else if (disk->lu) {
        scsi_disk_stats(disk->lu, obj);
        json_object_set_new(obj, "inflight", json_integer((json_int_t)disk->inflight));
    }
    return obj;
}

json_t *hv_vm_stats_json(const struct hv_vm *vm, int controller, int slot)
{
    json_t *disks = json_array();

    for (int c = 0; c < vm->cfg.controller_count; c++)
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
            if (!vm->disks[c][s])
                continue;
            if (controller >= 0 && (c != controller || s != slot))
                continue;
            json_t *st = disk_stats(vm->disks[c][s], c, s);
            hv_snap_describe_disk(vm, c, s, st, true);
            json_array_append_new(disks, st);
        }
    return json_pack("{s:s, s:o}", "vm", vm->cfg.name, "disks", disks);
}

bool hv_vm_path_in_use(const struct hv_vm *list, const char *path, char *who, size_t who_len)
{
    for (const struct hv_vm *vm = list; vm; vm = vm->next)
        for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
            for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
                const struct hv_disk *disk = vm->disks[c][s];
                if (disk && !strcmp(disk->cfg.path, path)) {
                    snprintf(who, who_len, "VM '%s' controller %d slot %d", vm->cfg.name, c, s);
                    return true;
                }
            }
    return false;
}

/* ------------------------------------------- holding a disk (snapshots) */

int hv_disk_quiesce(struct hv_disk *disk, unsigned timeout_ms, struct hv_err *err)
{
    if (disk->is_held)
        return hv_err_set(err, -EBUSY, "%s: already held (a resize is running)", disk->cfg.path);
    disk->is_held = true;
    uint64_t deadline = hv_now_ns() + timeout_ms * 1000000ull;
    while (disk->inflight && hv_now_ns() < deadline)
        hv_reactor_run_once(disk->bd.reactor, 10);
    if (disk->inflight) {
        uint64_t left = disk->inflight;
        disk_release(disk);
        return hv_err_set(err, -EBUSY, "%s: %" PRIu64 " requests still in flight after %u ms",
                          disk->cfg.path, left, timeout_ms);
    }
    return 0;
}

void hv_disk_resume(struct hv_disk *disk)
{
    if (disk->image) {
        disk_release(disk);
        return;
    }
    struct bdev_io *io = disk->held_head;
    disk->is_held = false;
    disk->held_head = disk->held_tail = NULL;
    while (io) {
        struct bdev_io *next = ((struct disk_io_ctx *)bdev_io_ctx(io))->next_held;
        io->done(io, -ENODEV);
        io = next;
    }
}
