/*
 * A Fibre Channel LUN for exactly one VM, through the VM's own NPIV vport.
 *
 * `disk attach VM --fc-lun TARGET_WWPN:LUN` proves, before a single I/O,
 * that the fabric's zoning and the array's masking let the VM's own
 * identity reach the LUN: the VM's vport comes up with address set A and
 * must see the target port and the LUN; set B is checked the same way (and
 * deleted again), so a move to another host can log in with it. The LUN is
 * recorded by its VPD 0x83 designator (the kernel's vpd_pg83 of the SCSI
 * device under the vport), refused when another VM holds that designator
 * (whether over FC or iSCSI, it is one LUN), and then served as a local
 * device is (`--device`): the block device under the LUN's SCSI device,
 * checked not in use, claimed O_EXCL, and — being an sd that answers SG_IO
 * with that designator — passed through with SG_IO in the pass-through LU
 * (filter, --full-scsi, backups), so the guest's CDBs reach the LUN itself.
 * A node that is no SCSI disk (a test's loop device) keeps the SBC
 * emulation, and the attach answer says why. The choice is made once, at
 * attach (dc->is_sg_io), never silently changed at a later open.
 *
 * The vport (set A) stays up while the VM has an FC disk: one vport per VM,
 * shared by its FC disks, deleted with the last of them (detach, VM delete,
 * daemon stop). At every open — a restart too — the LUN is looked up again
 * under the vport and its designator compared: a different LUN at the same
 * address leaves the slot offline instead of serving the wrong data.
 *
 * The checks run on a worker thread (passthru_job.c): bringing a vport up
 * waits for the fabric, seconds on real hardware.
 */
#include "passthru_int.h"
#include "passthru.h"
#include "san.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

struct fc_vport_ref {
    struct npiv_vport v;
    struct hv_passthru *p;
    char vm[HV_NAME_MAX + 1];
    unsigned refs;
    struct fc_vport_ref *next;
};

static const struct npiv_wait_options wait_opt = {
    .online_timeout_ms = 30000,
    .settle_ms = 5000,
    .poll_ms = 50,
};

static struct fc_vport_ref *vport_lookup(struct hv_passthru *p, uint64_t wwpn)
{
    for (struct fc_vport_ref *r = p->vports; r; r = r->next)
        if (r->v.names.wwpn == wwpn)
            return r;
    return NULL;
}

static struct fc_vport_ref *vport_add(struct hv_passthru *p, const struct npiv_vport *v,
                                      const char *vm)
{
    struct fc_vport_ref *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->v = *v;
    r->p = p;
    snprintf(r->vm, sizeof(r->vm), "%s", vm);
    r->next = p->vports;
    p->vports = r;
    return r;
}

/* Drop one user; the last one deletes the vport (the VM leaves the fabric). */
static void vport_put(struct hv_passthru *p, struct fc_vport_ref *r)
{
    struct hv_err err = {0};
    int ret;

    if (--r->refs > 0)
        return;
    for (struct fc_vport_ref **pp = &p->vports; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    ret = npiv_vport_delete(&r->v, &err);
    if (ret < 0)
        hv_error("VM '%s': %s", r->vm, hv_err_msg(&err, ret));
    free(r);
}

void hv_passthru_fc_fini(struct hv_passthru *p)
{
    while (p->vports) {
        struct fc_vport_ref *r = p->vports;
        r->refs = 1;
        vport_put(p, r);
    }
}

/* "/fc/50:0a:..:11/3" -> target WWPN and LUN. */
static int fc_path_parse(const char *path, uint64_t *wwpn, uint64_t *lun)
{
    char text[64];
    const char *slash;

    if (strncmp(path, "/fc/", 4) != 0)
        return -EINVAL;
    path += 4;
    slash = strchr(path, '/');
    if (!slash || (size_t)(slash - path) >= sizeof(text))
        return -EINVAL;
    memcpy(text, path, (size_t)(slash - path));
    text[slash - path] = '\0';
    if (npiv_wwn_parse(text, wwpn) < 0 || hv_parse_u64(slash + 1, lun) < 0)
        return -EINVAL;
    return 0;
}

/* The LUN's block device and designator, under an Online vport. */
static int resolve_lun(const char *sysfs_root, const char *dev_root, const struct npiv_vport *v,
                       uint64_t target, uint64_t lun, const char *who,
                       const struct npiv_wait_options *opt, char *designator, char *dev_path,
                       size_t dev_cap, struct hv_err *err)
{
    struct npiv_lun_addr addr;
    char block[64];
    uint8_t page[1024];
    size_t len;
    int ret;

    if ((ret = npiv_vport_find_lun(v, target, lun, opt, who, &addr, err)) < 0 ||
        (ret = npiv_lun_block_name(sysfs_root, &addr, block, sizeof(block), err)) < 0 ||
        (ret = npiv_lun_vpd83(sysfs_root, &addr, page, sizeof(page), &len, err)) < 0)
        return ret;
    if (san_vpd83_designator(page, len, designator) < 0)
        return hv_err_set(err, -ENODATA, "SCSI device %u:%u:%u:%" PRIu64 " (%s): its VPD page "
                          "0x83 has no designator to pin the LUN by", addr.host_no,
                          addr.channel, addr.target_id, addr.lun, block);
    if ((size_t)snprintf(dev_path, dev_cap, "%s/%s", dev_root, block) >= dev_cap)
        return hv_err_set(err, -ENAMETOOLONG, "%s/%s: path too long", dev_root, block);
    return 0;
}

/* --------------------------------------------------------- the bdev */

/* The local device's bdev, plus the vport it is reached through. */
struct fc_bdev {
    struct bdev bd;
    struct bdev *inner;
    struct hv_passthru *p;
    struct fc_vport_ref *ref;
    char device[256];
    char designator[SAN_DESIGNATOR_MAX];
};

static int fc_submit(struct bdev *bd, struct bdev_io *io)
{
    struct fc_bdev *f = hv_container_of(bd, struct fc_bdev, bd);
    return f->inner->ops->submit(f->inner, io);
}

static int fc_close(struct bdev *bd)
{
    struct fc_bdev *f = hv_container_of(bd, struct fc_bdev, bd);
    int ret = bdev_close(f->inner);
    vport_put(f->p, f->ref);
    free(f);
    return ret;
}

static void fc_describe(struct bdev *bd, json_t *obj)
{
    struct fc_bdev *f = hv_container_of(bd, struct fc_bdev, bd);
    char wwpn[NPIV_WWN_COLON_LEN + 1];

    npiv_wwn_colon(f->ref->v.names.wwpn, wwpn);
    json_object_set_new(obj, "fc", json_pack("{s:s, s:s, s:s, s:i}", "vport", wwpn,
                                             "device", f->device, "designator",
                                             f->designator, "vport_host",
                                             (int)f->ref->v.host_no));
}

static const struct bdev_ops fc_ops = {
    .name = "fc",
    .submit = fc_submit,
    .close = fc_close,
    .describe = fc_describe,
};

/* At open: a reference on the VM's vport (set A), brought up if it is not,
 * and the LUN's block device under it, checked against the designator the
 * slot recorded. On failure no reference is left. */
static int fc_open_lun(struct hv_runtime *rt, const struct hv_vm_config *vm,
                       const struct hv_disk_config *dc, struct fc_vport_ref **out,
                       char *dev_path, size_t dev_cap, struct hv_err *err)
{
    struct hv_passthru *p = rt->passthru;
    struct npiv_identity id;
    struct fc_vport_ref *ref;
    char designator[SAN_DESIGNATOR_MAX];
    char who[HV_NAME_MAX + 32];
    uint64_t target, lun;
    int ret;

    if (!p)
        return hv_err_set(err, -EOPNOTSUPP, "pass-through LUNs are not enabled");
    if (fc_path_parse(dc->path, &target, &lun) < 0)
        return hv_err_set(err, -EINVAL, "'%s' is not /fc/TARGET_WWPN/LUN", dc->path);
    if ((ret = hv_passthru_vm_identity(vm, &id, err)) < 0)
        return ret;
    snprintf(who, sizeof(who), "VM '%s', address set A", vm->name);
    ref = vport_lookup(p, id.fc[NPIV_SET_A].wwpn);
    if (!ref) {
        /* A restart (the attach's worker brings it up otherwise): this waits
         * for the fabric on the daemon's thread, as opening images does. */
        struct npiv_vport v;
        ret = npiv_vport_bring_up(p->sysfs_root, &id.fc[NPIV_SET_A], &wait_opt, &v, err);
        if (ret == -EBUSY)          /* left up by a daemon that died: ours */
            ret = npiv_vport_find(p->sysfs_root, &id.fc[NPIV_SET_A], &v, err);
        if (ret < 0) {
            hv_err_prefix(err, "VM '%s' address set A", vm->name);
            return ret;
        }
        ref = vport_add(p, &v, vm->name);
        if (!ref) {
            struct hv_err ignored = {0};
            npiv_vport_delete(&v, &ignored);
            return hv_err_set(err, -ENOMEM, "out of memory");
        }
    }
    ref->refs++;
    ret = resolve_lun(p->sysfs_root, p->dev_root, &ref->v, target, lun, who, &wait_opt,
                      designator, dev_path, dev_cap, err);
    if (ret == 0 && strcmp(designator, dc->designator) != 0) {
        ret = hv_err_set(err, -ESTALE, "%s: the LUN there is now %s, expected %s: a different "
                         "LUN at the same address is refused", dc->path, designator,
                         dc->designator);
        hv_error("VM '%s': %s", vm->name, err ? err->msg : "");
    }
    if (ret < 0) {
        vport_put(p, ref);
        return ret;
    }
    *out = ref;
    return 0;
}

int hv_passthru_open_fc(struct hv_runtime *rt, const struct hv_vm_config *vm,
                        const struct hv_disk_config *dc, struct bdev **out, int *lock_fd,
                        struct hv_err *err)
{
    struct hv_passthru *p = rt->passthru;
    struct fc_vport_ref *ref;
    struct hv_disk_config local;
    struct bdev *inner = NULL;
    struct fc_bdev *f;
    int ret;

    local = *dc;
    local.kind = HV_DISK_DEV;
    ret = fc_open_lun(rt, vm, dc, &ref, local.path, sizeof(local.path), err);
    if (ret < 0)
        return ret;
    ret = hv_passthru_open_device(rt, &local, rt->no_direct_io, &inner, lock_fd, err);
    if (ret == -EINVAL && !rt->no_direct_io) {
        struct hv_err retry_err = {0};
        if (hv_passthru_open_device(rt, &local, true, &inner, lock_fd, &retry_err) == 0) {
            hv_warn("%s: O_DIRECT refused, serving it with buffered I/O", local.path);
            ret = 0;
        }
    }
    if (ret < 0)
        goto fail;
    f = calloc(1, sizeof(*f));
    if (!f) {
        bdev_close(inner);
        ret = hv_err_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    f->bd = *inner;
    f->bd.ops = &fc_ops;
    snprintf(f->bd.name, sizeof(f->bd.name), "%s", dc->path);
    f->inner = inner;
    f->p = p;
    f->ref = ref;
    snprintf(f->device, sizeof(f->device), "%s", local.path);
    snprintf(f->designator, sizeof(f->designator), "%s", dc->designator);
    *out = &f->bd;
    return 0;
fail:
    vport_put(p, ref);
    return ret;
}

/* ------------------------------------------------- the sd, by SG_IO */

static void fc_sg_state_changed(struct pt_lun *pl, enum pt_state state, const char *why,
                                void *arg)
{
    (void)pl;
    hv_debug("FC LUN %s -> %s: %s", (const char *)arg, pt_state_name(state), why);
}

static void fc_lu_gone(void *arg)
{
    struct fc_vport_ref *ref = arg;
    vport_put(ref->p, ref);
}

int hv_passthru_fc_sg_disk_open(struct hv_runtime *rt, const struct hv_vm_config *vm,
                                const struct hv_disk_config *dc, struct hv_disk *disk,
                                struct hv_err *err)
{
    struct pt_check_options copt = {.is_forced = true};   /* signatures: checked at attach */
    struct pt_local_facts facts;
    struct pt_local_options opt = {0};
    struct pt_lun *pl = NULL;
    struct fc_vport_ref *ref;
    char node[4096];
    char wwpn[NPIV_WWN_COLON_LEN + 1];
    int ret;

    ret = fc_open_lun(rt, vm, dc, &ref, node, sizeof(node), err);
    if (ret < 0)
        return ret;
    if (disk->lock_fd < 0) {
        ret = pt_check_local_device(node, &copt, &facts, err);
        if (ret == 0)
            ret = pt_claim_local_device(node, false, &disk->lock_fd, err);
        if (ret < 0)
            goto fail;
    }
    opt.fd = disk->lock_fd;
    opt.path = node;
    opt.designator = dc->designator;   /* the device's own VPD 0x83 must say it too */
    opt.is_full_scsi = dc->is_full_scsi;
    opt.on_state = fc_sg_state_changed;
    opt.cb_arg = disk->cfg.path;
    ret = pt_lun_open_local(rt->reactor, &opt, &pl, err);
    if (ret == 0)
        ret = hv_passthru_lu_local(rt, dc, pl, node, disk, err);
    if (ret < 0)
        goto fail;
    npiv_wwn_colon(ref->v.names.wwpn, wwpn);
    hv_passthru_lu_via_fc(disk->lu, wwpn, fc_lu_gone, ref);
    hv_info("VM '%s': FC LUN %s: SCSI pass-through (SG_IO) of %s (%s) through vport %s%s",
            vm->name, dc->path, node, dc->designator, wwpn,
            dc->is_full_scsi ? ", full SCSI command set" : "");
    return 0;
fail:
    if (disk->lock_fd >= 0) {
        close(disk->lock_fd);
        disk->lock_fd = -1;
    }
    vport_put(rt->passthru, ref);
    return ret;
}

/* ------------------------------------------------------- the attach */

struct held {
    char designator[SAN_DESIGNATOR_MAX];
    char who[160];
};

struct fc_job {
    struct hv_passthru *p;
    struct npiv_identity id;
    char sysfs_root[256];
    char dev_root[256];
    uint64_t target;
    uint64_t lun;
    bool is_forced;
    struct hv_disk_config dc;
    struct held *held;                  /* designators other VMs hold, at the start */
    size_t held_count;
    /* the vport (set A) */
    struct fc_vport_ref *ref;           /* the VM's vport was up already (a ref held) */
    struct npiv_vport v;
    bool is_created;                    /* brought up by this job */
    bool is_handed_over;                /* the table owns it now */
    /* found */
    char dev_path[4096];
    struct pt_local_facts facts;
    struct pt_sg_identity sg;           /* when fj->dc.is_sg_io */
    char emulated_why[512];             /* when not */
};

static void fc_job_undo_vport(struct fc_job *fj)
{
    if (fj->is_created && !fj->is_handed_over) {
        struct hv_err err = {0};
        int ret = npiv_vport_delete(&fj->v, &err);
        if (ret < 0)
            hv_warn("%s", hv_err_msg(&err, ret));
        fj->is_created = false;
    }
}

/* Let go of the vport: delete it if this job brought it up and nobody took
 * it, drop the reference to the VM's shared one. */
static void fc_job_release(struct fc_job *fj)
{
    fc_job_undo_vport(fj);
    if (fj->ref) {
        vport_put(fj->p, fj->ref);
        fj->ref = NULL;
    }
}

/* How the LUN is served: its sd by SG_IO, as a `--device` SCSI disk is,
 * when it answers SG_IO with the designator sysfs showed; else (a node that
 * is no SCSI disk: a test's loop device) hvstor's SBC emulation, and why. */
static int fc_job_transport(struct fc_job *fj, struct hv_err *err)
{
    struct hv_err ierr = {0};
    int fd;
    int ret;

    if (!fj->facts.is_scsi) {
        snprintf(fj->emulated_why, sizeof(fj->emulated_why), "%s (%s) is not a SCSI disk",
                 fj->dev_path, fj->facts.sysfs_name);
    } else if ((fd = open(fj->dev_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)) < 0) {
        return hv_err_errno(err, fj->dev_path, "open");
    } else {
        ret = pt_sg_identify(fd, fj->dev_path, &fj->sg, &ierr);
        close(fd);
        if (ret < 0)
            snprintf(fj->emulated_why, sizeof(fj->emulated_why), "%s", hv_err_msg(&ierr, ret));
        else if (strcmp(fj->sg.designator, fj->dc.designator) != 0)
            return hv_err_set(err, -ESTALE, "FC LUN %s: %s answers SG_IO as %s, its SCSI "
                              "device's VPD page 0x83 says %s: not the LUN", fj->dc.path,
                              fj->dev_path, fj->sg.designator[0] ? fj->sg.designator
                              : "no designator", fj->dc.designator);
        else
            fj->dc.is_sg_io = true;
    }
    if (!fj->dc.is_sg_io && fj->dc.is_full_scsi)
        return hv_err_set(err, -EINVAL, "--full-scsi: FC LUN %s: %s; hvstor would serve it "
                          "through its own SBC emulation", fj->dc.path, fj->emulated_why);
    if (!fj->dc.is_sg_io)
        hv_warn("FC LUN %s: %s: served through the SBC emulation", fj->dc.path,
                fj->emulated_why);
    return 0;
}

static void fc_job_work(struct hv_pt_job *job)
{
    struct fc_job *fj = job->priv;
    struct pt_check_options copt = {.is_forced = fj->is_forced};
    char who[HV_NAME_MAX + 32];
    int ret;

    snprintf(who, sizeof(who), "VM '%s', address set A", job->vm);
    if (!fj->ref) {
        ret = npiv_vport_bring_up(fj->sysfs_root, &fj->id.fc[NPIV_SET_A], &wait_opt, &fj->v,
                                  &job->err);
        if (ret < 0) {
            hv_err_prefix(&job->err, "VM '%s' address set A", job->vm);
            job->status = ret;
            return;
        }
        fj->is_created = true;
    }
    /* Set A is the one that serves; set B must reach the LUN as well, or a
     * move to another host would find it unreachable only then. */
    ret = resolve_lun(fj->sysfs_root, fj->dev_root, &fj->v, fj->target, fj->lun, who,
                      &wait_opt, fj->dc.designator, fj->dev_path, sizeof(fj->dev_path),
                      &job->err);
    if (ret == 0)
        ret = npiv_check_access_set(fj->sysfs_root, &fj->id, NPIV_SET_B, fj->target, fj->lun,
                                    &wait_opt, &job->err);
    for (size_t i = 0; ret == 0 && i < fj->held_count; i++)
        if (!strcmp(fj->held[i].designator, fj->dc.designator))
            ret = hv_err_set(&job->err, -EBUSY, "FC LUN %s (%s) is held by %s", fj->dc.path,
                             fj->dc.designator, fj->held[i].who);
    if (ret == 0)
        ret = pt_check_local_device(fj->dev_path, &copt, &fj->facts, &job->err);
    if (ret == 0)
        ret = fc_job_transport(fj, &job->err);
    if (ret < 0)
        fc_job_undo_vport(fj);
    job->status = ret;
}

static int fc_job_finish(struct hv_pt_job *job, json_t **result, struct hv_err *err)
{
    struct fc_job *fj = job->priv;
    struct hv_daemon *d = job->d;
    struct hv_runtime *rt = hv_daemon_runtime(d);
    struct hv_vm *vm;
    char who[160];
    char wwpn[NPIV_WWN_COLON_LEN + 1];
    int ret;

    if (job->status < 0) {
        fc_job_release(fj);
        *err = job->err;
        return job->status;
    }
    vm = hv_daemon_find_vm(d, job->vm);
    if (!vm) {
        fc_job_release(fj);
        return hv_err_set(err, -ENOENT, "VM '%s' was deleted while its LUN was checked",
                          job->vm);
    }
    if (hv_passthru_lun_holder(d, fj->dc.designator, fj->dc.path, who, sizeof(who))) {
        fc_job_release(fj);
        return hv_err_set(err, -EBUSY, "FC LUN %s (%s) is held by %s", fj->dc.path,
                          fj->dc.designator, who);
    }
    if (!fj->ref) {
        /* The job's own reference, dropped below like a borrowed one. */
        fj->ref = vport_add(fj->p, &fj->v, job->vm);
        if (!fj->ref) {
            fc_job_undo_vport(fj);
            return hv_err_set(err, -ENOMEM, "out of memory");
        }
        fj->ref->refs = 1;
        fj->is_handed_over = true;
    }
    ret = hv_vm_attach(rt, vm, job->controller, job->slot, &fj->dc, err);
    if (ret == 0) {
        ret = hv_registry_save(hv_daemon_registry(d), &vm->cfg, err);
        if (ret < 0) {
            struct hv_err ignored = {0};
            hv_vm_detach(rt, vm, job->controller, job->slot, &ignored);
        }
    }
    vport_put(fj->p, fj->ref);          /* the disk holds it now, or nobody */
    fj->ref = NULL;
    if (ret < 0)
        return ret;
    npiv_wwn_colon(fj->id.fc[NPIV_SET_A].wwpn, wwpn);
    hv_info("VM '%s': FC LUN %s (%s, %s, %" PRIu64 " bytes%s) attached at controller %d LUN "
            "%d through vport %s", job->vm, fj->dc.path, fj->dc.designator, fj->dev_path,
            fj->facts.size_bytes, fj->facts.in_use[0] ? ", forced" : "", job->controller,
            job->slot, wwpn);
    *result = hv_vm_show_json(vm, hv_daemon_portal(d));
    {
        char target[NPIV_WWN_COLON_LEN + 1];
        npiv_wwn_colon(fj->target, target);
        json_object_set_new(*result, "attached", json_pack(
            "{s:s, s:I, s:s, s:s, s:s, s:I, s:s}", "target", target, "lun",
            (json_int_t)fj->lun, "designator", fj->dc.designator, "device", fj->dev_path,
            "vport", wwpn, "size_bytes", (json_int_t)fj->facts.size_bytes, "forced_over",
            fj->facts.in_use));
        if (fj->dc.is_sg_io)
            json_object_update_new(json_object_get(*result, "attached"), json_pack(
                "{s:s, s:s, s:s, s:i, s:b}", "transport", "sg_io", "vendor",
                fj->sg.inquiry.vendor, "product", fj->sg.inquiry.product, "device_type",
                (int)fj->sg.inquiry.device_type, "full_scsi", fj->dc.is_full_scsi));
        else
            json_object_update_new(json_object_get(*result, "attached"), json_pack(
                "{s:s, s:s}", "transport", "emulated", "why", fj->emulated_why));
    }
    return 0;
}

static void fc_job_cleanup(struct hv_pt_job *job)
{
    struct fc_job *fj = job->priv;
    if (!fj)
        return;
    fc_job_release(fj);                 /* never finished (refused, daemon stopping) */
    free(fj->held);
    free(fj);
}

/* "50:0a:09:80:00:00:11:11:3" or "500a098000001111:3": the WWPN, then the LUN
 * after the last ':'. */
static int parse_fc_lun(const char *text, uint64_t *wwpn, uint64_t *lun, struct hv_err *err)
{
    const char *last = strrchr(text, ':');
    char w[64];

    if (!last || (size_t)(last - text) >= sizeof(w))
        return hv_err_set(err, -EINVAL, "--fc-lun '%s' is not TARGET_WWPN:LUN", text);
    memcpy(w, text, (size_t)(last - text));
    w[last - text] = '\0';
    if (npiv_wwn_parse(w, wwpn) < 0)
        return hv_err_set(err, -EINVAL, "--fc-lun '%s': '%s' is not a WWPN (16 hex digits or "
                          "8 colon-separated pairs)", text, w);
    if (hv_parse_u64(last + 1, lun) < 0 || *lun >= 16384)
        return hv_err_set(err, -EINVAL, "--fc-lun '%s': '%s' is not a LUN number", text,
                          last + 1);
    return 0;
}

int hv_passthru_req_attach_fc(struct hv_daemon *d, const json_t *req, json_t **result,
                              struct hv_err *err)
{
    struct hv_passthru *p = hv_daemon_runtime(d)->passthru;
    struct hv_pt_job *job;
    struct fc_job *fj;
    struct hv_vm *vm;
    const char *ref;
    char target[NPIV_WWN_COLON_LEN + 1];
    size_t cap = 0;
    int ret;

    if ((ret = hv_pt_attach_job_new(d, req, "fc_lun", sizeof(*fj), &vm, &ref, &job, err)) < 0)
        return ret;
    fj = job->priv;
    fj->p = p;
    if ((ret = parse_fc_lun(ref, &fj->target, &fj->lun, err)) < 0 ||
        (ret = hv_passthru_vm_identity(&vm->cfg, &fj->id, err)) < 0)
        goto fail;
    npiv_wwn_colon(fj->target, target);
    fj->dc.kind = HV_DISK_FC;
    snprintf(fj->dc.path, sizeof(fj->dc.path), "/fc/%s/%" PRIu64, target, fj->lun);
    fj->dc.is_full_scsi = json_is_true(json_object_get(req, "full_scsi"));
    fj->is_forced = json_is_true(json_object_get(req, "force"));
    snprintf(fj->sysfs_root, sizeof(fj->sysfs_root), "%s", p->sysfs_root);
    snprintf(fj->dev_root, sizeof(fj->dev_root), "%s", p->dev_root);
    /* Zoning and masking are refused first, then who holds it (by
     * designator, so another LUN number or another path to the same LUN does
     * not fool it), then the host's own use: the order an administrator
     * fixes them in. What the others hold, for the worker to refuse by designator as soon
     * as it knows it (before it looks at a device node of its own). */
    for (struct hv_vm *o = hv_daemon_vms(d); o; o = o->next)
        for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
            for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
                const struct hv_disk_config *h = o->cfg.disks[c][s];
                if (!h || !h->designator[0])    /* SAN, FC, or a local sd by SG_IO */
                    continue;
                if (fj->held_count == cap) {
                    size_t n = cap ? cap * 2 : 8;
                    struct held *grown = realloc(fj->held, n * sizeof(*grown));
                    if (!grown) {
                        ret = hv_err_set(err, -ENOMEM, "out of memory");
                        goto fail;
                    }
                    fj->held = grown;
                    cap = n;
                }
                struct held *e = &fj->held[fj->held_count++];
                snprintf(e->designator, sizeof(e->designator), "%s", h->designator);
                snprintf(e->who, sizeof(e->who), "VM '%s' (controller %d slot %d)",
                         o->cfg.name, c, s);
            }
    /* The VM's vport may be up already (another FC disk of it): the job
     * looks through it, holding a reference so it stays up meanwhile. */
    fj->ref = vport_lookup(p, fj->id.fc[NPIV_SET_A].wwpn);
    if (fj->ref) {
        fj->ref->refs++;
        fj->v = fj->ref->v;
    }
    snprintf(job->key, sizeof(job->key), "%s", fj->dc.path);
    job->is_fc = true;
    job->work = fc_job_work;
    job->finish = fc_job_finish;
    job->cleanup = fc_job_cleanup;
    return hv_pt_job_start(d, job, result, err);
fail:
    free(fj->held);
    free(fj);
    free(job);
    return ret;
}
