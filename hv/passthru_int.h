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
/* State, designator, SAN address, counters for `vm show` / `disk stats`. */
void hv_passthru_describe(struct scsi_lu *lu, json_t *obj);

/* At `vm create`: allocate the VM's identity into cfg->extra["identity"]. */
int hv_passthru_vm_created(struct hv_runtime *rt, struct hv_vm_config *cfg,
                           const char *iqn_override, struct hv_err *err);

/* Requests san.add, san.list, san.luns, disk.attach_lun, disk.takeover,
 * vm.zoning. -ENOSYS for an op that is not one of them. */
int hv_passthru_request(struct hv_daemon *d, const char *op, const json_t *req,
                        json_t **result, struct hv_err *err);

/* What passthru_lu.c needs of the daemon (daemon.c). */
struct hv_vm *hv_daemon_vms(struct hv_daemon *d);
struct hv_vm *hv_daemon_find_vm(struct hv_daemon *d, const char *name);
struct hv_registry *hv_daemon_registry(struct hv_daemon *d);
struct hv_runtime *hv_daemon_runtime(struct hv_daemon *d);
const char *hv_daemon_portal(const struct hv_daemon *d);

#endif /* HVSTOR_HV_PASSTHRU_INT_H */
