/*
 * Internal to hv/: SAN pass-through LUNs in the daemon (passthru_lu.c).
 *
 * A slot of kind "lun" holds a scsi_lu that forwards the guest's CDBs to a
 * SAN LUN through passthru/ (pt_lun), logged in with the VM's own IQN. The
 * daemon keeps the SANs it knows (DIR/sans/NAME.json), the host's PR key
 * (DIR/pr_key) and the VM identity allocator (npiv/, DIR/npiv.json).
 */
#ifndef HVSTOR_HV_PASSTHRU_INT_H
#define HVSTOR_HV_PASSTHRU_INT_H

#include "hv_internal.h"
#include "npiv.h"

struct pt_local_facts;
struct pt_lun;

struct hv_passthru_options {
    const char *state_dir;
    const char *sysfs_root;             /* FC transport; NULL: "/sys" */
    const char *dev_root;               /* device nodes; NULL: "/dev" */
    /* VM identities: both required to allocate them (npiv/ refuses to
     * guess). Without them VMs get no identity and cannot take a SAN LUN. */
    const char *wwn_oui;                /* "00:11:22" / "001122" */
    const char *iqn_prefix;             /* "iqn.2026-11.org.example.host1" */
    unsigned host_id;
};

int hv_passthru_init(struct hv_runtime *rt, const struct hv_passthru_options *opt,
                     struct hv_err *err);
void hv_passthru_fini(struct hv_runtime *rt);

/* disk_open for kind "lun": builds the LU and starts its session. */
int hv_passthru_disk_open(struct hv_runtime *rt, const struct hv_vm_config *vm, int controller,
                          int slot, const struct hv_disk_config *dc, struct hv_disk *disk,
                          struct hv_err *err);
bool hv_lu_is_passthru(const struct scsi_lu *lu);
/* The slot is being detached or its VM deleted (not a daemon shutdown): the
 * LU releases the host's reservation when it is destroyed. */
void hv_passthru_leaving(struct scsi_lu *lu);
/* The disk back end of kind "dev" (vm_runtime.c's table): refuses a device
 * mounted or held on the host, claims it O_EXCL (the claim is *lock_fd) and
 * serves it as a raw bdev under the SBC emulation. */
int hv_passthru_open_device(struct hv_runtime *rt, const struct hv_disk_config *dc,
                            bool no_direct_io, struct bdev **out, int *lock_fd,
                            struct hv_err *err);
/* Local SCSI disks, SG_IO pass-through (passthru_sg.c). At `disk attach
 * --device`, after pt_check_local_device: a SCSI disk that answers SG_IO and
 * has a designator gets dc->designator (and is_full_scsi), anything else
 * stays the raw bdev; *info says which and why (merged into the answer).
 * -EBUSY when another VM holds the designator, -EINVAL for --full-scsi on a
 * disk that cannot have it. */
int hv_passthru_sg_prepare(struct hv_daemon *d, const char *path,
                           const struct pt_local_facts *facts, bool is_full_scsi,
                           struct hv_disk_config *dc, json_t **info, struct hv_err *err);
/* disk_open for kind "dev" with a designator: find the disk by it, refuse it
 * when mounted or held, claim it O_EXCL (disk->lock_fd), open its pt_lun. */
int hv_passthru_sg_disk_open(struct hv_runtime *rt, const struct hv_disk_config *dc,
                             struct hv_disk *disk, struct hv_err *err);
/* The pass-through LU (passthru_lu.c) around a local disk's pt_lun; closes
 * pl on failure. */
int hv_passthru_lu_local(struct hv_runtime *rt, const struct hv_disk_config *dc,
                         struct pt_lun *pl, const char *node, struct hv_disk *disk,
                         struct hv_err *err);
/* An FC LUN's local LU: `vport` named in its description, on_destroy(arg)
 * once the LU is gone (it drops the vport: the last FC disk deletes it). */
void hv_passthru_lu_via_fc(struct scsi_lu *lu, const char *vport, void (*on_destroy)(void *arg),
                           void *arg);
/* State, designator, SAN address, counters for `vm show` / `disk stats`. */
void hv_passthru_describe(struct scsi_lu *lu, json_t *obj);

/* disk_open for kind "fc" (passthru_fc.c): the VM's vport (set A) up, the
 * LUN found under it and checked against dc->designator, then its block
 * device served as kind "dev" is. The returned bdev drops the vport when
 * it is closed (the last FC disk of the VM deletes it). */
int hv_passthru_open_fc(struct hv_runtime *rt, const struct hv_vm_config *vm,
                        const struct hv_disk_config *dc, struct bdev **out, int *lock_fd,
                        struct hv_err *err);
/* disk_open for kind "fc" with is_sg_io: the same vport and designator
 * checks, then the LUN's sd passed through with SG_IO as a `--device` SCSI
 * disk is (the pass-through LU, its filter, its backup stack). */
int hv_passthru_fc_sg_disk_open(struct hv_runtime *rt, const struct hv_vm_config *vm,
                                const struct hv_disk_config *dc, struct hv_disk *disk,
                                struct hv_err *err);

/* At `vm create`: allocate the VM's identity into cfg->extra["identity"]. */
int hv_passthru_vm_created(struct hv_runtime *rt, struct hv_vm_config *cfg,
                           const char *iqn_override, struct hv_err *err);

/* Requests san.add, san.list, san.luns, disk.attach_lun, disk.takeover,
 * vm.zoning. -ENOSYS for an op that is not one of them. */
int hv_passthru_request(struct hv_daemon *d, const char *op, const json_t *req,
                        json_t **result, struct hv_err *err);

/* Backups of a pass-through LUN (passthru_lu.c): at disk open, for a
 * writable slot, the LU puts the guest's writes under the snapshot stack
 * (`gate`, changed-block tracking with `cbt_state`, copy-before-write). A
 * --full-scsi LUN gets none (the backup view says why). */
void hv_passthru_backup_enable(struct scsi_lu *lu, struct snap_gate *gate, const char *cbt_state,
                               uint32_t chunk_bytes, unsigned spare_chunks);
/* What a backup reads and the filters it drives, or -errno with a message
 * saying why this LUN cannot be backed up (now). */
int hv_passthru_backup_view(struct scsi_lu *lu, struct bdev **top, struct snap_cbt **cbt,
                            struct snap_cbw **cbw, struct hv_err *err);

/* passthru_snap.c: the stack itself, over a bdev that reads the LUN with
 * READ(16) through its pt_lun and forwards the guest's writing CDBs
 * unchanged once the filters let them go. */
struct hv_pt_snap;
struct pt_cmd;
struct hv_pt_snap_options {
    struct pt_lun *pl;
    struct hv_reactor *reactor;
    const char *name;           /* the slot's path, for messages */
    struct snap_gate *gate;     /* the VM's */
    const char *cbt_state_path; /* NULL: tracking without a state file */
    uint32_t chunk_bytes;       /* tracking and copy-before-write granularity */
    unsigned spare_chunks;
    unsigned max_commands;      /* guest commands in flight at most (the LU's pool) */
    /* a unit attention our own command met: the guest's news */
    void (*on_unit_attention)(void *arg, const uint8_t *sense, size_t len);
    void *cb_arg;
};
/* Starts READ CAPACITY(16) at once (the stack is built when it answers). */
int hv_pt_snap_create(const struct hv_pt_snap_options *opt, struct hv_pt_snap **out,
                      struct hv_err *err);
/* Takes a guest command that changes blocks (true): it goes through the
 * stack, then to pt_lun unchanged, and completes through its own done.
 * False: the command changes nothing; the caller submits it itself. */
bool hv_pt_snap_forward(struct hv_pt_snap *ps, struct pt_cmd *pc);
/* An abort or reset: a command still in the stack never reaches the SAN. */
void hv_pt_snap_abort(struct hv_pt_snap *ps, struct pt_cmd *pc);
int hv_pt_snap_view(struct hv_pt_snap *ps, struct bdev **top, struct snap_cbt **cbt,
                    struct snap_cbw **cbw, struct hv_err *err);
void hv_pt_snap_describe(struct hv_pt_snap *ps, json_t *obj);
/* Close the stack (no guest command in it) before pt_lun_close; free after. */
void hv_pt_snap_close(struct hv_pt_snap *ps);
void hv_pt_snap_free(struct hv_pt_snap *ps);

/* ------------------------------------------------ shared in hv/passthru_* */

struct hv_pt_job;
struct fc_vport_ref;

struct hv_passthru {
    struct hv_reactor *reactor;
    char state_dir[4096];
    char sans_dir[4096 + 8];
    char sysfs_root[256];
    char dev_root[256];
    uint64_t host_key;
    struct npiv_allocator *npiv;        /* NULL: identities off (no OUI / prefix) */
    char npiv_off_reason[256];
    /* attach checks on worker threads (passthru_job.c) */
    struct hv_workers *workers;         /* created at the first attach */
    struct hv_pt_job *jobs;
    uint64_t next_job_id;
    /* the VMs' FC vports that are up, shared by their FC disks */
    struct fc_vport_ref *vports;
};

/*
 * An attach whose checks may block (SAN login, libblkid, an FC vport coming
 * Online): work() runs on a thread of its own and may touch nothing of the
 * daemon; finish() runs on the reactor afterwards and attaches. The request
 * answers {"running": true, "job": N} at once; "disk.attach_status" with
 * that job gives the result (or the error) once finish() ran.
 */
struct hv_pt_job {
    uint64_t id;
    struct hv_daemon *d;
    char vm[HV_NAME_MAX + 1];
    int controller;
    int slot;
    char key[4200];                     /* the LUN's path: no two jobs for one LUN */
    char what[160];                     /* for the log: "attach ...", "san luns X" */
    bool is_fc;
    void (*work)(struct hv_pt_job *job);
    int (*finish)(struct hv_pt_job *job, json_t **result, struct hv_err *err);
    void (*cleanup)(struct hv_pt_job *job);     /* free priv (also when never finished) */
    void *priv;
    /* the worker's answer, read by finish */
    int status;
    struct hv_err err;
    /* private to passthru_job.c */
    struct hv_work worker_item;
    struct hv_timer finish_timer;       /* finish() waits while its VM is busy */
    bool has_waited;                    /* (said so in the log once) */
    bool is_finished;
    json_t *result;
    struct hv_pt_job *next;
};
/* Refuses (-EBUSY, named) a job for a slot or LUN that one running already
 * has (controller < 0 / key "": no slot / no LUN, as for `san luns`). The job (calloc'ed) belongs to the runner either way: on a refusal it
 * is cleaned up and freed here. */
int hv_pt_job_start(struct hv_daemon *d, struct hv_pt_job *job, json_t **result,
                    struct hv_err *err);
/* What disk.attach_lun and disk.attach_fc both start with: the request's
 * 'vm' and LUN reference (ref_key), 'controller' and 'slot' in range, the VM
 * found and that slot free. Then a job for that slot (vm, controller, slot
 * set) with priv_size zeroed bytes at job->priv; the caller frees both until
 * hv_pt_job_start takes the job. */
int hv_pt_attach_job_new(struct hv_daemon *d, const json_t *req, const char *ref_key,
                         size_t priv_size, struct hv_vm **vm, const char **ref,
                         struct hv_pt_job **job, struct hv_err *err);
int hv_pt_job_status(struct hv_daemon *d, const json_t *req, json_t **result,
                     struct hv_err *err);
void hv_pt_jobs_fini(struct hv_passthru *p);

/* passthru_lu.c helpers shared with passthru_fc.c */
int hv_passthru_vm_identity(const struct hv_vm_config *cfg, struct npiv_identity *id,
                            struct hv_err *err);
int hv_passthru_arg_str(const json_t *req, const char *key, bool is_required, const char **out,
                        struct hv_err *err);
/* Which VM slot holds this LUN (by designator, or by path), SAN or FC. */
bool hv_passthru_lun_holder(struct hv_daemon *d, const char *designator, const char *path,
                            char *who, size_t len);
/* disk.attach_fc (passthru_fc.c). */
int hv_passthru_req_attach_fc(struct hv_daemon *d, const json_t *req, json_t **result,
                              struct hv_err *err);
void hv_passthru_fc_fini(struct hv_passthru *p);

/* What passthru_lu.c needs of the daemon (daemon.c). */
struct hv_vm *hv_daemon_vms(struct hv_daemon *d);
struct hv_vm *hv_daemon_find_vm(struct hv_daemon *d, const char *name);
struct hv_registry *hv_daemon_registry(struct hv_daemon *d);
struct hv_runtime *hv_daemon_runtime(struct hv_daemon *d);
const char *hv_daemon_portal(const struct hv_daemon *d);
/* No request is changing `vm` and no VM's guest I/O is held: a finished
 * attach check may attach now. */
bool hv_daemon_vm_may_change(struct hv_daemon *d, const char *vm);

#endif /* HVSTOR_HV_PASSTHRU_INT_H */
