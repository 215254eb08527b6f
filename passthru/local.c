/*
 * Local SCSI disks before they are passed through: is this block device a
 * SCSI disk (sysfs), which disk carries a designator (sysfs, so that a slot
 * follows its disk when sdb becomes sdc after a reboot), and what the device
 * says of itself (SG_IO: INQUIRY, VPD 0x83, READ CAPACITY). Synchronous:
 * control plane only.
 *
 * sysfs is read under a root passed in, so the unit tests build a tree of
 * their own; the files are the kernel's (class/block/NAME/device/type,
 * vendor, model, vpd_pg83, scsi_device/H:C:T:L, scsi_generic/sgN).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <scsi/sg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "passthru.h"

#define IDENTIFY_TIMEOUT_MS 10000

/* Read a small sysfs file; returns its length, or -errno. */
static ssize_t read_small(const char *path, void *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0)
        return -errno;
    n = read(fd, buf, cap);
    if (n < 0)
        n = -errno;
    close(fd);
    return n;
}

static void read_trimmed(const char *path, char *out, size_t len)
{
    char buf[64];
    ssize_t n = read_small(path, buf, sizeof(buf) - 1);

    out[0] = 0;
    if (n <= 0)
        return;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == 0))
        n--;
    buf[n] = 0;
    snprintf(out, len, "%s", buf);
}

/* The one entry of a sysfs directory like scsi_device/ or scsi_generic/. */
static bool first_entry(const char *dir_path, char *out, size_t len)
{
    DIR *dir = opendir(dir_path);
    struct dirent *e;
    bool is_found = false;

    if (!dir)
        return false;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(out, len, "%s", e->d_name);
        is_found = true;
        break;
    }
    closedir(dir);
    return is_found;
}

int pt_scsi_sysfs_read(const char *sysfs_root, const char *name, struct pt_scsi_sysfs *out)
{
    char base[4096];
    char path[4096 + 64];
    char text[16];

    memset(out, 0, sizeof(*out));
    out->device_type = -1;
    if (!name[0] || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
        return -EINVAL;
    snprintf(base, sizeof(base), "%s/class/block/%s", sysfs_root, name);
    if (access(base, F_OK) < 0)
        return -ENOENT;
    snprintf(path, sizeof(path), "%s/partition", base);
    out->is_partition = access(path, F_OK) == 0;
    /* A partition has no device/ of its own: only whole disks are SCSI here
     * (SG_IO on a partition node would reach the whole disk). */
    snprintf(path, sizeof(path), "%s/device/scsi_device", base);
    out->is_scsi = !out->is_partition && first_entry(path, out->hctl, sizeof(out->hctl));
    if (!out->is_scsi)
        return 0;
    snprintf(path, sizeof(path), "%s/device/scsi_generic", base);
    first_entry(path, out->sg_name, sizeof(out->sg_name));
    snprintf(path, sizeof(path), "%s/device/type", base);
    read_trimmed(path, text, sizeof(text));
    if (text[0] >= '0' && text[0] <= '9')
        out->device_type = atoi(text);
    snprintf(path, sizeof(path), "%s/device/vendor", base);
    read_trimmed(path, out->vendor, sizeof(out->vendor));
    snprintf(path, sizeof(path), "%s/device/model", base);
    read_trimmed(path, out->model, sizeof(out->model));
    {
        uint8_t vpd[1024];
        ssize_t n;
        snprintf(path, sizeof(path), "%s/device/vpd_pg83", base);
        n = read_small(path, vpd, sizeof(vpd));
        if (n > 0)
            san_vpd83_designator(vpd, (size_t)n, out->designator);
    }
    return 0;
}

int pt_scsi_find_by_designator(const char *sysfs_root, const char *designator, char name[64])
{
    char path[4096];
    DIR *dir;
    struct dirent *e;
    int ret = -ENOENT;

    if (!designator[0])
        return -EINVAL;
    snprintf(path, sizeof(path), "%s/class/block", sysfs_root);
    dir = opendir(path);
    if (!dir)
        return -errno;
    while ((e = readdir(dir))) {
        struct pt_scsi_sysfs s;
        if (e->d_name[0] == '.' || strlen(e->d_name) >= 64)
            continue;
        if (pt_scsi_sysfs_read(sysfs_root, e->d_name, &s) < 0 || !s.is_scsi)
            continue;
        if (!strcmp(s.designator, designator)) {
            snprintf(name, 64, "%s", e->d_name);
            ret = 0;
            break;
        }
    }
    closedir(dir);
    return ret;
}

/* ------------------------------------------------------------ identify */

/* One command through SG_IO, waiting; a UNIT ATTENTION (the device's reset
 * or capacity change, left for whoever asks first) is taken and retried. */
static int sg_sync(int fd, const char *path, const uint8_t *cdb, uint8_t cdb_len, void *buf,
                   uint32_t len, uint32_t *got, struct hv_err *err)
{
    for (int attempt = 0; attempt < 4; attempt++) {
        struct sg_io_hdr h;
        uint8_t sense[PT_SENSE_MAX];

        memset(&h, 0, sizeof(h));
        h.interface_id = 'S';
        h.cmdp = (uint8_t *)cdb;
        h.cmd_len = cdb_len;
        h.sbp = sense;
        h.mx_sb_len = sizeof(sense);
        h.timeout = IDENTIFY_TIMEOUT_MS;
        h.dxfer_direction = len ? SG_DXFER_FROM_DEV : SG_DXFER_NONE;
        h.dxferp = buf;
        h.dxfer_len = len;
        if (ioctl(fd, SG_IO, &h) < 0) {
            if (errno == ENOTTY || errno == EINVAL)
                return hv_err_set(err, -ENOTTY, "%s: does not take SG_IO", path);
            return hv_err_errno(err, path, "SG_IO");
        }
        if (h.host_status)
            return hv_err_set(err, -EIO, "%s: SG_IO opcode 0x%02x: host status 0x%02x", path,
                              cdb[0], h.host_status);
        if (h.status == SAN_STATUS_GOOD) {
            *got = len - (uint32_t)HV_MIN((uint32_t)(h.resid > 0 ? h.resid : 0), len);
            return 0;
        }
        if (h.status == SAN_STATUS_CHECK_CONDITION &&
            san_sense_key(sense, h.sb_len_wr) == 0x6)
            continue;
        if (h.status == SAN_STATUS_CHECK_CONDITION)
            return hv_err_set(err, -EIO, "%s: opcode 0x%02x: CHECK CONDITION %x/%02xh/%02xh",
                              path, cdb[0], san_sense_key(sense, h.sb_len_wr),
                              san_sense_asc_ascq(sense, h.sb_len_wr) >> 8,
                              san_sense_asc_ascq(sense, h.sb_len_wr) & 0xFF);
        return hv_err_set(err, -EIO, "%s: opcode 0x%02x: status 0x%02x", path, cdb[0],
                          h.status);
    }
    return hv_err_set(err, -EIO, "%s: opcode 0x%02x: unit attention after unit attention",
                      path, cdb[0]);
}

int pt_sg_identify(int fd, const char *path, struct pt_sg_identity *out, struct hv_err *err)
{
    uint8_t buf[1024];
    uint32_t got = 0;
    int ret;

    memset(out, 0, sizeof(*out));
    if (ioctl(fd, SG_GET_VERSION_NUM, &out->sg_version) < 0)
        return hv_err_set(err, -ENOTTY, "%s: not a SCSI device (no SG_IO: %s)", path,
                          strerror(errno));
    {
        const uint8_t inq[6] = {0x12, 0, 0, 0, 96, 0};
        ret = sg_sync(fd, path, inq, sizeof(inq), buf, 96, &got, err);
        if (ret < 0)
            return ret;
        if (san_parse_inquiry(buf, got, &out->inquiry) < 0)
            return hv_err_set(err, -EIO, "%s: INQUIRY answered %u bytes", path, got);
    }
    {
        const uint8_t vpd[6] = {0x12, 0x01, 0x83, sizeof(buf) >> 8, sizeof(buf) & 0xFF, 0};
        struct hv_err verr = {0};
        /* A device without VPD 0x83 is not an error here: the caller
         * decides (it cannot be pinned, so it is not passed through). */
        if (sg_sync(fd, path, vpd, sizeof(vpd), buf, sizeof(buf), &got, &verr) == 0)
            san_vpd83_designator(buf, got, out->designator);
    }
    {
        const uint8_t rc16[16] = {0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0};
        const uint8_t rc10[10] = {0x25};
        struct san_capacity cap;
        struct hv_err cerr = {0};
        if (sg_sync(fd, path, rc16, sizeof(rc16), buf, 32, &got, &cerr) == 0 &&
            san_parse_read_capacity16(buf, got, &cap) == 0) {
            out->size_bytes = cap.blocks * cap.block_bytes;
            out->block_bytes = cap.block_bytes;
        } else if (sg_sync(fd, path, rc10, sizeof(rc10), buf, 8, &got, &cerr) == 0 &&
                   got >= 8) {
            out->block_bytes = hv_be32(buf + 4);
            out->size_bytes = ((uint64_t)hv_be32(buf) + 1) * out->block_bytes;
        }
    }
    return 0;
}
