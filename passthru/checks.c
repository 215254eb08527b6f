/*
 * The checks made before a LUN is handed to a VM: masking (the VM's own
 * name reaches it), identity (a designator to pin it by), not used by the
 * host (its own open-iscsi, a signature libblkid recognizes), reservations.
 * Synchronous: control plane only.
 */
#include <blkid/blkid.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <linux/fs.h>
#include <unistd.h>

#include "passthru.h"

#define PROBE_BYTES HV_MiB

/* ------------------------------------------------------------- host key */

int pt_host_key_load(const char *state_dir, uint64_t *key, struct hv_err *err)
{
    char path[4096 + 16];
    char text[32];
    uint64_t value = 0;
    int fd;
    ssize_t got;

    snprintf(path, sizeof(path), "%s/pr_key", state_dir);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        got = read(fd, text, sizeof(text) - 1);
        close(fd);
        if (got < 16)
            return hv_err_set(err, -EINVAL, "%s: not 16 hex digits", path);
        text[got] = 0;
        if (sscanf(text, "%16" SCNx64, &value) != 1 || value == 0)
            return hv_err_set(err, -EINVAL, "%s: not a non-zero 16-digit hex key", path);
        *key = value;
        return 0;
    }
    if (errno != ENOENT)
        return hv_err_errno(err, path, "open");
    /* Random so that two hosts (state dirs) never share a key; a key is the
     * host's identity on every LUN it reserves, and fencing relies on it. */
    fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_errno(err, "/dev/urandom", "open");
    while (value == 0) {
        if (read(fd, &value, sizeof(value)) != (ssize_t)sizeof(value)) {
            close(fd);
            return hv_err_errno(err, "/dev/urandom", "read");
        }
    }
    close(fd);
    {
        char tmp[4096 + 32];
        int len = snprintf(text, sizeof(text), "%016" PRIx64 "\n", value);
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
            return hv_err_errno(err, tmp, "create");
        if (write(fd, text, (size_t)len) != len || fsync(fd) < 0) {
            int ret = hv_err_errno(err, tmp, "write");
            close(fd);
            unlink(tmp);
            return ret;
        }
        close(fd);
        if (link(tmp, path) < 0) {
            int saved = errno;
            unlink(tmp);
            if (saved == EEXIST)            /* another process won: use its key */
                return pt_host_key_load(state_dir, key, err);
            errno = saved;
            return hv_err_errno(err, path, "link");
        }
        unlink(tmp);
    }
    *key = value;
    return 0;
}

/* ------------------------------------------------------------ signatures */

static void append_found(char found[PT_FOUND_MAX], const char *name, const char *value)
{
    size_t used = strlen(found);
    snprintf(found + used, PT_FOUND_MAX - used, "%s%s=%s", used ? " " : "", name, value);
}

/* Probe an fd; "TYPE=ext4 UUID=..."-style summary of what was found. */
static int probe_fd(int fd, const char *what, char found[PT_FOUND_MAX], struct hv_err *err)
{
    static const char *const keys[] = {"TYPE", "PTTYPE", "LABEL", "UUID"};
    blkid_probe pr = blkid_new_probe();
    int ret;

    found[0] = 0;
    if (!pr)
        return hv_err_set(err, -ENOMEM, "%s: libblkid: cannot create a probe", what);
    if (blkid_probe_set_device(pr, fd, 0, 0) < 0) {
        blkid_free_probe(pr);
        return hv_err_set(err, -EIO, "%s: libblkid cannot probe it", what);
    }
    blkid_probe_enable_superblocks(pr, 1);
    blkid_probe_set_superblocks_flags(pr, BLKID_SUBLKS_TYPE | BLKID_SUBLKS_LABEL |
                                      BLKID_SUBLKS_UUID);
    blkid_probe_enable_partitions(pr, 1);
    blkid_probe_set_partitions_flags(pr, BLKID_PARTS_ENTRY_DETAILS);
    /* do_safeprobe reports ambivalent results (two signatures) as -2: that
     * is a finding too, not a clean disk. */
    ret = blkid_do_safeprobe(pr);
    if (ret == -2) {
        snprintf(found, PT_FOUND_MAX, "more than one signature (ambivalent probe)");
    } else if (ret == 0) {
        for (size_t i = 0; i < HV_ARRAY_SIZE(keys); i++) {
            const char *value;
            if (blkid_probe_lookup_value(pr, keys[i], &value, NULL) == 0 && value[0])
                append_found(found, keys[i], value);
        }
        if (!found[0])
            snprintf(found, PT_FOUND_MAX, "an unnamed signature");
    } else if (ret < 0) {
        blkid_free_probe(pr);
        return hv_err_set(err, -EIO, "%s: libblkid probe failed", what);
    }
    blkid_free_probe(pr);
    return 0;
}

int pt_probe_signature(const void *head, size_t head_bytes, const void *tail,
                       size_t tail_bytes, uint64_t size_bytes, char found[PT_FOUND_MAX],
                       struct hv_err *err)
{
    int fd = memfd_create("hvstor-probe", MFD_CLOEXEC);
    int ret = 0;

    if (fd < 0)
        return hv_err_errno(err, "memfd", "create");
    /* A sparse file as big as the LUN: probes that look at the end (GPT's
     * backup header, MD 0.90/1.0 superblocks, ZFS labels) find it there. */
    if (ftruncate(fd, (off_t)size_bytes) < 0 ||
        (head_bytes && pwrite(fd, head, head_bytes, 0) != (ssize_t)head_bytes) ||
        (tail_bytes && pwrite(fd, tail, tail_bytes, (off_t)(size_bytes - tail_bytes)) !=
                           (ssize_t)tail_bytes)) {
        ret = hv_err_errno(err, "memfd", "write");
        goto out;
    }
    ret = probe_fd(fd, "LUN", found, err);
out:
    close(fd);
    return ret;
}

/* -------------------------------------------------------------- SAN LUN */

int pt_facts_refusal(const struct pt_lun_facts *facts, const char *target, struct hv_err *err)
{
    if (facts->is_used_by_host)
        return hv_err_set(err, -EBUSY, "%s LUN %" PRIu64 " (%s) is in use on this host: its "
                          "own iSCSI %s has it (--force to hand it out anyway)", target,
                          facts->info.lun, facts->info.designator, facts->host_session);
    if (facts->signature[0])
        return hv_err_set(err, -EBUSY, "%s LUN %" PRIu64 " (%s) is not blank: libblkid found "
                          "%s (--force to hand it to the VM anyway)", target, facts->info.lun,
                          facts->info.designator, facts->signature);
    return 0;
}

static int read_range(struct san_sync *ss, uint64_t lun, uint64_t offset, void *buf,
                      uint32_t bytes, uint32_t block_bytes, struct hv_err *err)
{
    struct iovec iov = {.iov_base = buf, .iov_len = bytes};
    struct san_cmd cmd;
    char text[128];
    int ret;

    memset(&cmd, 0, sizeof(cmd));
    cmd.lun = lun;
    cmd.cdb[0] = 0x88;                  /* READ(16) */
    hv_put_be64(&cmd.cdb[2], offset / block_bytes);
    hv_put_be32(&cmd.cdb[10], bytes / block_bytes);
    cmd.cdb_len = 16;
    cmd.dir = SAN_XFER_READ;
    cmd.iov = &iov;
    cmd.iovcnt = 1;
    cmd.xfer_bytes = bytes;
    ret = san_sync_command(ss, &cmd);
    if (ret < 0)
        return hv_err_set(err, ret, "LUN %" PRIu64 ": reading %u bytes at %" PRIu64 " to "
                          "probe it: %s", lun, bytes, offset,
                          san_cmd_describe(&cmd, text, sizeof(text)));
    return 0;
}

static void list_luns(const struct san_lun_info *luns, size_t count, char *out, size_t len)
{
    size_t used = 0;
    out[0] = 0;
    for (size_t i = 0; i < count && used < len; i++)
        used += (size_t)snprintf(out + used, len - used, "%s%" PRIu64, i ? ", " : "",
                                 luns[i].lun);
    if (!count)
        snprintf(out, len, "none");
}

int pt_check_san_lun(const struct san_session_options *opt, uint64_t lun,
                     const struct pt_check_options *copt, struct pt_lun_facts *facts,
                     struct hv_err *err)
{
    struct san_session_options o = *opt;
    struct san_sync *ss = NULL;
    struct san_lun_info *luns = NULL;
    struct san_host_config *host = NULL;
    uint8_t *head = NULL;
    uint8_t *tail = NULL;
    size_t count = 0;
    bool is_found = false;
    int ret;

    memset(facts, 0, sizeof(*facts));
    /* A private ISID: this check must not reinstate (and so end) the VM's
     * own session should it be logged in already. */
    o.isid_random = 0;
    o.isid_qualifier = 0;
    if (!o.login_timeout_ms)
        o.login_timeout_ms = 5000;
    ret = san_sync_open(&o, &ss, err);
    if (ret == -EACCES) {
        char why[sizeof(err->msg)];
        snprintf(why, sizeof(why), "%s", hv_err_msg(err, ret));
        return hv_err_set(err, -EACCES, "not masked: target %s at %s did not let %s in (%s)",
                          o.target, o.portal, o.initiator, why);
    }
    if (ret < 0) {
        hv_err_prefix(err, "SAN %s target %s as %s", o.portal, o.target, o.initiator);
        return ret;
    }
    ret = san_sync_scan(ss, &luns, &count, err);
    if (ret < 0)
        goto out;
    for (size_t i = 0; i < count; i++) {
        if (luns[i].lun == lun) {
            facts->info = luns[i];
            is_found = true;
        }
    }
    if (!is_found) {
        char list[256];
        list_luns(luns, count, list, sizeof(list));
        ret = hv_err_set(err, -ENOENT, "not masked: LUN %" PRIu64 " is not reported to %s by "
                         "%s (it reports: %s)", lun, o.initiator, o.target, list);
        goto out;
    }
    if (facts->info.inquiry.device_type != 0) {
        ret = hv_err_set(err, -EMEDIUMTYPE, "%s LUN %" PRIu64 " is a device of type %u, not a "
                         "disk", o.target, lun, facts->info.inquiry.device_type);
        goto out;
    }
    if (!facts->info.designator[0]) {
        ret = hv_err_set(err, -ENODATA, "%s LUN %" PRIu64 " has no VPD 0x83 designator: "
                         "hvstor cannot make sure it is always the same LUN", o.target, lun);
        goto out;
    }

    {
        struct hv_err perr = {0};
        if (san_sync_pr_read(ss, lun, &facts->pr, &perr) == 0)
            facts->has_pr = true;
    }

    ret = san_host_config_read(copt && copt->host_root ? copt->host_root : "/", &host, err);
    if (ret < 0)
        goto out;
    {
        const struct san_host_session *who = NULL;
        facts->is_used_by_host = san_host_uses_lun(host, o.target, lun,
                                                   facts->info.designator, &who);
        if (who)
            snprintf(facts->host_session, sizeof(facts->host_session), "session%u to %s",
                     who->sid, who->target);
    }

    /* The signature probe reads the LUN; the size decides where its end is. */
    if (facts->info.size_bytes >= HV_SECTOR_BYTES && facts->info.block_bytes) {
        uint32_t bytes = (uint32_t)HV_MIN((uint64_t)PROBE_BYTES, facts->info.size_bytes);
        bytes = bytes / facts->info.block_bytes * facts->info.block_bytes;
        head = malloc(bytes);
        tail = malloc(bytes);
        if (!head || !tail) {
            ret = hv_err_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        if ((ret = read_range(ss, lun, 0, head, bytes, facts->info.block_bytes, err)) < 0 ||
            (ret = read_range(ss, lun, facts->info.size_bytes - bytes, tail, bytes,
                              facts->info.block_bytes, err)) < 0)
            goto out;
        ret = pt_probe_signature(head, bytes, tail, bytes, facts->info.size_bytes,
                                 facts->signature, err);
        if (ret < 0)
            goto out;
    }

    ret = (copt && copt->is_forced) ? 0 : pt_facts_refusal(facts, o.target, err);
out:
    free(head);
    free(tail);
    free(luns);
    san_host_config_free(host);
    san_sync_close(ss);
    return ret;
}

/* ------------------------------------------------------- local devices */

/* Is device `dev` (or a partition of it, `name`N / `name`pN) mounted? */
static bool is_mounted(dev_t dev, const char *name, char *where, size_t len)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    char line[4096];
    bool is_found = false;

    if (!f)
        return false;
    while (!is_found && fgets(line, sizeof(line), f)) {
        unsigned maj;
        unsigned mnr;
        char mnt[2048];
        if (sscanf(line, "%*u %*u %u:%u %*s %2047s", &maj, &mnr, mnt) != 3)
            continue;
        if (maj == major(dev) && mnr == minor(dev)) {
            snprintf(where, len, "mounted on %s", mnt);
            is_found = true;
        } else {
            /* a partition: /sys/dev/block/MAJ:MIN/.. is our device */
            char link[128];
            char target[512];
            ssize_t n;
            snprintf(link, sizeof(link), "/sys/dev/block/%u:%u", maj, mnr);
            n = readlink(link, target, sizeof(target) - 1);
            if (n > 0) {
                target[n] = 0;
                char *slash = strrchr(target, '/');
                if (slash) {
                    *slash = 0;
                    const char *parent = strrchr(target, '/');
                    if (parent && !strcmp(parent + 1, name)) {
                        snprintf(where, len, "its partition %s is mounted on %s", slash + 1,
                                 mnt);
                        is_found = true;
                    }
                }
            }
        }
    }
    fclose(f);
    return is_found;
}

static bool has_holders(const char *name, char *who, size_t len)
{
    char path[256];
    DIR *dir;
    struct dirent *e;
    bool is_held = false;

    snprintf(path, sizeof(path), "/sys/class/block/%s/holders", name);
    dir = opendir(path);
    if (!dir)
        return false;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(who, len, "held by %s (device-mapper, LVM or MD)", e->d_name);
        is_held = true;
        break;
    }
    closedir(dir);
    return is_held;
}

int pt_check_local_device(const char *path, const struct pt_check_options *copt,
                          struct pt_local_facts *facts, struct hv_err *err)
{
    struct stat st;
    char link[64];
    char target[512];
    char sig[PT_FOUND_MAX];
    ssize_t n;
    int fd;
    int ret;

    memset(facts, 0, sizeof(*facts));
    if (stat(path, &st) < 0)
        return hv_err_errno(err, path, "stat");
    if (!S_ISBLK(st.st_mode))
        return hv_err_set(err, -ENOTBLK, "%s: not a block device", path);
    snprintf(link, sizeof(link), "/sys/dev/block/%u:%u", major(st.st_rdev), minor(st.st_rdev));
    n = readlink(link, target, sizeof(target) - 1);
    if (n <= 0)
        return hv_err_errno(err, link, "readlink");
    target[n] = 0;
    snprintf(facts->sysfs_name, sizeof(facts->sysfs_name), "%s", strrchr(target, '/') + 1);
    {
        char sd[256];
        snprintf(sd, sizeof(sd), "/sys/class/block/%s/device/scsi_device", facts->sysfs_name);
        facts->is_scsi = access(sd, F_OK) == 0;
    }
    if (is_mounted(st.st_rdev, facts->sysfs_name, facts->in_use, sizeof(facts->in_use)) ||
        has_holders(facts->sysfs_name, facts->in_use, sizeof(facts->in_use)))
        return hv_err_set(err, -EBUSY, "%s is in use on this host: %s", path, facts->in_use);

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_errno(err, path, "open");
    if (ioctl(fd, BLKGETSIZE64, &facts->size_bytes) < 0) {
        ret = hv_err_errno(err, path, "BLKGETSIZE64");
        close(fd);
        return ret;
    }
    ret = probe_fd(fd, path, sig, err);
    close(fd);
    if (ret < 0)
        return ret;
    if (sig[0]) {
        snprintf(facts->in_use, sizeof(facts->in_use), "libblkid found %s", sig);
        if (!(copt && copt->is_forced))
            return hv_err_set(err, -EBUSY, "%s is not blank: libblkid found %s (--force to "
                              "hand it to the VM anyway)", path, sig);
    }
    return 0;
}

int pt_claim_local_device(const char *path, bool is_read_only, int *fd, struct hv_err *err)
{
    *fd = open(path, (is_read_only ? O_RDONLY : O_RDWR) | O_EXCL | O_CLOEXEC);
    if (*fd < 0) {
        if (errno == EBUSY)
            return hv_err_set(err, -EBUSY, "%s is opened exclusively by someone else on this "
                              "host (a mount, LVM, MD, or another VM)", path);
        return hv_err_errno(err, path, "open");
    }
    return 0;
}
