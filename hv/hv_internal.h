/*
 * Internal to hv/: the live side of a VM (controllers, open disks) shared by
 * vm_runtime.c, daemon.c and control.c. Not for other modules.
 */
#ifndef HVSTOR_HV_INTERNAL_H
#define HVSTOR_HV_INTERNAL_H

#include "hv.h"
#include "scsi.h"
#include "snapshot.h"

struct hv_runtime;

/*
 * One slot's disk. The LU does not see the image bdev directly but `bd`, a
 * thin pass-through that counts requests in flight: that count is how a
 * detached disk knows when its image may be closed, and where per-disk
 * policies (QoS, the quiesce gate of a checkpoint) can later sit.
 */
struct hv_disk {
    struct bdev bd;                     /* what the LU uses */
    struct bdev *image;                 /* the opened VHD chain or raw file */
    int lock_fd;                        /* raw files: our OFD lock on it, or -1 */
    struct scsi_lu *lu;
    struct hv_disk_config cfg;
    uint64_t inflight;
    char error[512];                    /* why the slot is offline ("" = online) */
    struct hv_disk *next_retired;
    bool is_lu_idle;                    /* retired: the LU has no task left */
    /* Online resize: requests that arrive while it drains wait here. */
    bool is_held;
    struct bdev_io *held_head;
    struct bdev_io *held_tail;
    /* The snapshot stack under `image` (vm_snapshot.c): image is the VM
     * gate's filter over changed-block tracking over the switchable top
     * (VHD) or copy-before-write (raw, device). All NULL for read-only
     * disks and SAN LUNs, which checkpoints and backups leave alone. */
    struct snap_cbt *cbt;
    struct snap_top *top;
    struct snap_cbw *cbw;
};

/* A VM brought to life: its definition and what serves it. */
struct hv_vm {
    struct hv_vm_config cfg;            /* cfg.disks mirrors disks[][]->cfg */
    struct scsi_controller *controllers[HV_MAX_CONTROLLERS];
    struct hv_disk *disks[HV_MAX_CONTROLLERS][HV_SLOTS_PER_CONTROLLER];
    char targets[HV_MAX_CONTROLLERS][HV_ISCSI_NAME_MAX + 1];
    struct snap_gate *gate;             /* one quiesce gate for all its disks */
    bool needs_save;                    /* start-up recovery changed cfg.extra */
    struct hv_vm *next;
};

/* Shared state of every live VM of one daemon: the reactor, how images are
 * opened, and disks / controllers waiting to be released. */
struct hv_runtime {
    struct hv_reactor *reactor;
    bool no_direct_io;
    struct hv_disk *retired;            /* detached, closed once idle */
    struct scsi_controller **dead_controllers; /* of deleted VMs; freed at shutdown */
    int dead_count;
    struct hv_timer retire_timer;
    struct hv_passthru *passthru;       /* SAN LUNs (passthru_lu.c); NULL: off */
    char state_dir[4096];               /* CBT state files under cbt/<vm>/ ("" = none) */
    struct snap_gate **dead_gates;      /* of stopped VMs: destroyed after their disks */
    int dead_gate_count;
};

void hv_runtime_init(struct hv_runtime *rt, struct hv_reactor *r, bool no_direct_io);
/* Close what is retired (waiting at most until no request is in flight) and
 * free dead controllers. Only after the iSCSI server has closed every session. */
void hv_runtime_fini(struct hv_runtime *rt);

/* A detached disk on `path` is still draining (its image is not closed yet). */
bool hv_runtime_is_retiring(const struct hv_runtime *rt, const char *path);

/* Bring a definition to life (controllers, disks). A disk that fails to open
 * stays in the definition with its slot offline; the VM still starts. */
int hv_vm_start(struct hv_runtime *rt, const struct hv_vm_config *cfg, struct hv_vm **out,
                struct hv_err *err);
/* Shutdown: destroy controllers (no task may be in flight), flush and close
 * every image. Returns the first close error, but closes everything. */
int hv_vm_stop(struct hv_runtime *rt, struct hv_vm *vm);
/* VM deleted while the daemon runs: detach every disk (closed once idle) and
 * keep the controllers until shutdown, since sessions being dropped may still
 * reference them. */
void hv_vm_retire(struct hv_runtime *rt, struct hv_vm *vm);

/* Hot attach: open the image, put an LU in the slot (REPORTED LUNS DATA HAS
 * CHANGED for every nexus). `vm->cfg` is updated on success only. */
int hv_vm_attach(struct hv_runtime *rt, struct hv_vm *vm, int controller, int slot,
                 const struct hv_disk_config *dc, struct hv_err *err);
/* Hot detach: the slot empties at once; the image closes when idle. */
int hv_vm_detach(struct hv_runtime *rt, struct hv_vm *vm, int controller, int slot,
                 struct hv_err *err);
/* Online resize through the image bdev's resize op, then CAPACITY DATA HAS
 * CHANGED. -EOPNOTSUPP with a clear message when the back end cannot. */
int hv_vm_resize(struct hv_vm *vm, int controller, int slot, uint64_t size_bytes,
                 struct hv_err *err);
/* Add controllers up to `count` (targets appear in discovery). */
int hv_vm_grow_controllers(struct hv_runtime *rt, struct hv_vm *vm, int count,
                           struct hv_err *err);

/* What `vm show` prints; `portal` is "addr:port" for the iscsi:// URLs. */
json_t *hv_vm_show_json(const struct hv_vm *vm, const char *portal);
json_t *hv_vm_stats_json(const struct hv_vm *vm, int controller, int slot);
/* A path held by any slot of any VM in `list` (the image layer locks VHDs,
 * but raw files have no lock): the holder in `who`, or false. */
bool hv_vm_path_in_use(const struct hv_vm *list, const char *path, char *who, size_t who_len);

/* Open a disk's image as a back end of its kind (vhd, raw, dev), with the
 * O_DIRECT fallback; `dc->path` is what is opened. */
int hv_open_image(struct hv_runtime *rt, const struct hv_disk_config *dc, struct bdev **out,
                  int *lock_fd, struct hv_err *err);
/* Hold new requests at the disk and wait (running the reactor) until none
 * is in flight below it; -EBUSY (and nothing held) after `timeout_ms`. */
int hv_disk_quiesce(struct hv_disk *disk, unsigned timeout_ms, struct hv_err *err);
/* Let the held requests go to disk->image (failed with -ENODEV if none). */
void hv_disk_resume(struct hv_disk *disk);

/* ------------------------------------------ snapshots (vm_snapshot.c) */

/* Build the disk's image stack into disk->image (and cbt/top/cbw): run the
 * crash recovery of a live merge, open the chain of live layers the
 * definition lists, wrap it. May fix vm->cfg.extra (vm->needs_save). */
int hv_snap_open_disk(struct hv_runtime *rt, struct hv_vm *vm, int controller, int slot,
                      const struct hv_disk_config *dc, struct hv_disk *disk, struct hv_err *err);
/* A writable pass-through LUN (its LU open): its writes go under the
 * VM's gate, changed-block tracking and copy-before-write, so that backups
 * cover it (passthru_snap.c). Never fails: the LU keeps why it has none. */
void hv_snap_open_lun(struct hv_runtime *rt, struct hv_vm *vm, int controller, int slot,
                      struct hv_disk *disk);
/* Close disk->image and the live layers below it. */
int hv_snap_close_image(struct hv_disk *disk);
/* A new disk goes into the slot: forget the old one's tracking history. */
void hv_snap_slot_attached(struct hv_runtime *rt, struct hv_vm *vm, int controller, int slot);
/* A disk whose data lives in checkpoint children is not detached (its
 * attached image alone would be the old data): -EBUSY saying so. */
int hv_snap_may_detach(const struct hv_vm *vm, int controller, int slot, struct hv_err *err);
/* The slot's disk leaves the definition: drop its layers, checkpoints. */
void hv_snap_slot_removed(json_t *extra, int controller, int slot);
/* Per LUN: `vm show` (top, layers) or `disk stats` (changed-block tracking). */
void hv_snap_describe_disk(const struct hv_vm *vm, int controller, int slot, json_t *obj,
                           bool is_stats);
/* vm.delete (vm_delete.c): -EBUSY naming the checkpoints and the files
 * that hold the disks' newest data when it is not in the attached images,
 * unless forced; forced, `kept` lists those files (caller frees; NULL when
 * there is none). */
int hv_snap_may_delete(const struct hv_vm *vm, bool is_forced, json_t **kept, struct hv_err *err);
/* The VM is deleted: its change-tracking state goes (DIR/cbt/<vm>/). */
void hv_snap_vm_deleted(struct hv_runtime *rt, struct hv_vm *vm);
/* The gate outlives the VM's retired disks: destroyed by hv_runtime_fini. */
void hv_snap_retire_gate(struct hv_runtime *rt, struct hv_vm *vm);
/* vm.create / vm.set: "agent" (SPEC) or "no_agent" into extra["agent"]. */
int hv_snap_agent_arg(const json_t *req, json_t *extra, bool *is_changed, struct hv_err *err);
/* "agent" of `vm show`: the spec, whether it answers, its version. */
json_t *hv_snap_agent_json(struct hv_runtime *rt, const struct hv_vm *vm, bool may_probe);
struct hv_daemon;
/* checkpoint.*, backup.create. -ENOSYS for an op that is not one of them. */
int hv_snap_request(struct hv_daemon *d, const char *op, const json_t *req, json_t **result,
                    struct hv_err *err);

/* Control socket server (control.c). */
struct hv_control;
struct hv_daemon;
int hv_control_listen(struct hv_reactor *r, const char *path, struct hv_daemon *d,
                      struct hv_control **out, struct hv_err *err);
/* Requests still waiting for their turn are answered that hvstord stops;
 * then every connection is closed. */
void hv_control_close(struct hv_control *ctl);
/* Nothing runs any more: give the waiting requests their turn. */
void hv_control_kick(struct hv_control *ctl);

/* Whether a request that arrives while others run starts now (it is then
 * run or refused at once), waits until no request runs at all, or waits
 * for the end of a hold of some VM's guest I/O (daemon.c). */
enum hv_wait { HV_WAIT_NO, HV_WAIT_IDLE, HV_WAIT_HOLD };
enum hv_wait hv_daemon_must_wait(struct hv_daemon *d, const json_t *request);

#endif /* HVSTOR_HV_INTERNAL_H */
