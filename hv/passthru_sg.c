/*
 * Local SCSI disks in hvstord, passed through with SG_IO: the guest's CDBs
 * reach the device itself (its INQUIRY, its VPD pages, its sense), through
 * the same pass-through LU as a SAN LUN (passthru_lu.c) and the same filter
 * (`--full-scsi` lifts it).
 *
 * `disk attach --device` decides here: a whole SCSI disk that answers SG_IO
 * and carries a VPD 0x83 designator becomes a slot of kind "dev" with that
 * designator; anything else (loop, nvme, virtio-blk, dm, a partition, a
 * SCSI disk without a designator, a read-only attach) stays a raw bdev under
 * hvstor's SBC emulation, and the answer says why. The designator is what
 * the slot means: at every open (attach, daemon start) the disk is looked up
 * by it, so a disk that came back as sdc after a reboot is found again, and
 * a different disk at the old name is never handed to the guest.
 *
 * Exclusivity is the raw path's: refused when mounted or held (LVM, MD, dm),
 * when libblkid finds a signature (unless --force), when another VM holds
 * the path or the designator (named), and claimed O_EXCL while attached.
 */
#include "passthru_int.h"
#include "passthru.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define SYSFS "/sys"

/* The block device name ("sdb") of a device node, from /sys/dev/block. */
static int node_name(const char *path, char name[64], struct hv_err *err)
{
    struct stat st;
    char link[64];
    char target[512];
    ssize_t n;

    if (stat(path, &st) < 0)
        return hv_err_errno(err, path, "stat");
    if (!S_ISBLK(st.st_mode))
        return hv_err_set(err, -ENOTBLK, "%s: not a block device", path);
    snprintf(link, sizeof(link), SYSFS "/dev/block/%u:%u", major(st.st_rdev),
             minor(st.st_rdev));
    n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0)
        return hv_err_errno(err, link, "readlink");
    target[n] = 0;
    snprintf(name, 64, "%s", strrchr(target, '/') ? strrchr(target, '/') + 1 : target);
    return 0;
}

/* Which VM slot already has a disk with this designator, whatever its kind
 * (the same disk may be a SAN LUN to one VM and a local sd to the host). */
static bool designator_holder(struct hv_daemon *d, const char *designator, char *who,
                              size_t len)
{
    for (struct hv_vm *vm = hv_daemon_vms(d); vm; vm = vm->next)
        for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
            for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
                const struct hv_disk_config *dc = vm->cfg.disks[c][s];
                if (dc && dc->designator[0] && !strcmp(dc->designator, designator)) {
                    snprintf(who, len, "VM '%s' controller %d slot %d", vm->cfg.name, c, s);
                    return true;
                }
            }
    return false;
}

static json_t *emulated(const char *why)
{
    return json_pack("{s:s, s:s}", "transport", "emulated", "why", why);
}

int hv_passthru_sg_prepare(struct hv_daemon *d, const char *path,
                           const struct pt_local_facts *facts, bool is_full_scsi,
                           struct hv_disk_config *dc, json_t **info, struct hv_err *err)
{
    struct pt_sg_identity id;
    struct hv_err ierr = {0};
    char who[160];
    int fd;
    int ret;

    *info = NULL;
    if (!facts->is_scsi) {
        if (is_full_scsi)
            return hv_err_set(err, -EINVAL, "--full-scsi: %s (%s) is not a SCSI disk; hvstor "
                              "serves it through its own SBC emulation", path,
                              facts->sysfs_name);
        *info = emulated("not a SCSI disk");
        return 0;
    }
    if (dc->is_read_only) {
        /* SG_IO would let the guest's writes through: the emulation refuses them. */
        if (is_full_scsi)
            return hv_err_set(err, -EINVAL, "--full-scsi and --read-only do not go together: "
                              "a read-only disk is served through hvstor's SBC emulation");
        *info = emulated("read-only: hvstor's SBC emulation enforces it");
        return 0;
    }
    fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return hv_err_errno(err, path, "open");
    ret = pt_sg_identify(fd, path, &id, &ierr);
    close(fd);
    if (ret < 0) {
        if (is_full_scsi)
            return hv_err_set(err, ret, "--full-scsi: %s", hv_err_msg(&ierr, ret));
        hv_warn("%s: %s; serving it through the SBC emulation", path, hv_err_msg(&ierr, ret));
        *info = emulated(hv_err_msg(&ierr, ret));
        return 0;
    }
    if (!id.designator[0]) {
        if (is_full_scsi)
            return hv_err_set(err, -ENODATA, "--full-scsi: %s (%s %s) has no VPD 0x83 "
                              "designator to pin it by", path, id.inquiry.vendor,
                              id.inquiry.product);
        hv_warn("%s (%s %s) has no VPD 0x83 designator: served through the SBC emulation",
                path, id.inquiry.vendor, id.inquiry.product);
        *info = emulated("no VPD 0x83 designator to pin it by");
        return 0;
    }
    if (designator_holder(d, id.designator, who, sizeof(who)))
        return hv_err_set(err, -EBUSY, "%s (%s) is held by %s", path, id.designator, who);
    snprintf(dc->designator, sizeof(dc->designator), "%s", id.designator);
    dc->is_full_scsi = is_full_scsi;
    *info = json_pack("{s:s, s:s, s:s, s:s, s:i, s:I, s:b}", "transport", "sg_io",
                      "designator", id.designator, "vendor", id.inquiry.vendor, "product",
                      id.inquiry.product, "device_type", (int)id.inquiry.device_type,
                      "device_size_bytes", (json_int_t)id.size_bytes, "full_scsi",
                      is_full_scsi);
    {
        struct pt_scsi_sysfs sys;
        if (pt_scsi_sysfs_read(SYSFS, facts->sysfs_name, &sys) == 0 && sys.is_scsi) {
            json_object_set_new(*info, "hctl", json_string(sys.hctl));
            if (sys.sg_name[0])
                json_object_set_new(*info, "sg", json_string(sys.sg_name));
        }
    }
    return 0;
}

static void local_state_changed(struct pt_lun *pl, enum pt_state state, const char *why,
                                void *arg)
{
    (void)pl;
    (void)arg;
    hv_debug("local SCSI disk -> %s: %s", pt_state_name(state), why);
}

/* Where the slot's disk is now: its recorded path if that still carries the
 * designator (or sysfs cannot tell), else whichever disk carries it. */
static int resolve_node(const struct hv_disk_config *dc, char *node, size_t len,
                        struct hv_err *err)
{
    struct pt_scsi_sysfs s;
    char name[64];
    struct hv_err nerr = {0};

    if (node_name(dc->path, name, &nerr) == 0 && pt_scsi_sysfs_read(SYSFS, name, &s) == 0 &&
        s.is_scsi && (!s.designator[0] || !strcmp(s.designator, dc->designator))) {
        snprintf(node, len, "%s", dc->path);
        return 0;
    }
    if (pt_scsi_find_by_designator(SYSFS, dc->designator, name) == 0) {
        snprintf(node, len, "/dev/%s", name);
        hv_info("%s: the disk %s is now %s", dc->path, dc->designator, node);
        return 0;
    }
    if (access(dc->path, F_OK) == 0) {
        /* let the device's own answer decide, and name what it carries */
        snprintf(node, len, "%s", dc->path);
        return 0;
    }
    return hv_err_set(err, -ENODEV, "no SCSI disk on this host carries %s (it was %s)",
                      dc->designator, dc->path);
}

int hv_passthru_sg_disk_open(struct hv_runtime *rt, const struct hv_disk_config *dc,
                             struct hv_disk *disk, struct hv_err *err)
{
    struct pt_check_options copt = {.is_forced = true};   /* signatures: checked at attach */
    struct pt_local_facts facts;
    struct pt_local_options opt = {0};
    struct pt_lun *pl = NULL;
    char node[4096];
    int ret;

    ret = resolve_node(dc, node, sizeof(node), err);
    if (ret < 0)
        return ret;
    if (disk->lock_fd < 0) {
        ret = pt_check_local_device(node, &copt, &facts, err);
        if (ret < 0)
            return ret;
        ret = pt_claim_local_device(node, false, &disk->lock_fd, err);
        if (ret < 0)
            return ret;
    }
    opt.fd = disk->lock_fd;
    opt.path = node;
    opt.designator = dc->designator;
    opt.is_full_scsi = dc->is_full_scsi;
    opt.on_state = local_state_changed;
    ret = pt_lun_open_local(rt->reactor, &opt, &pl, err);
    if (ret == 0)
        ret = hv_passthru_lu_local(rt, dc, pl, node, disk, err);
    if (ret < 0) {
        close(disk->lock_fd);
        disk->lock_fd = -1;
        return ret;
    }
    hv_info("%s: SCSI pass-through (SG_IO) of %s%s", dc->path, dc->designator,
            dc->is_full_scsi ? ", full SCSI command set" : "");
    return 0;
}
