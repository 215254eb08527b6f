/*
 * ops.c — the one write path of the offline operations, and the helpers
 * they share (locking, footers, the BAT in sectors, relative paths).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ops.h"

#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int op_open(const char *path, bool is_read_only, int *out, struct hv_err *err)
{
    int fd = open(path, (is_read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
    if (fd < 0)
        return hv_err_errno(err, path, "open");
    struct flock fl = {.l_type = (short)(is_read_only ? F_RDLCK : F_WRLCK), .l_whence = SEEK_SET};
    if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
        int e = errno;
        close(fd);
        if (e == EAGAIN || e == EACCES)
            return hv_err_set(err, -EBUSY, "%s: in use: another program has it open%s", path,
                              is_read_only ? " for writing" : "");
        errno = e;
        return hv_err_errno(err, path, "lock");
    }
    *out = fd;
    return 0;
}

int op_write(struct op_file *f, const void *buf, size_t len, uint64_t off, struct hv_err *err)
{
    if (f->is_dry_run)
        return 0;
    int ret = hv_pwrite_full(f->fd, buf, len, off);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: write of %zu bytes at offset %" PRIu64 ": %s", f->path,
                          len, off, strerror(-ret));
    if (f->obs && f->obs->on_write)
        f->obs->on_write(f->obs->arg, f->path, off, buf, len);
    return 0;
}

int op_sync(struct op_file *f, struct hv_err *err)
{
    if (f->is_dry_run)
        return 0;
    if (fdatasync(f->fd) < 0)
        return hv_err_errno(err, f->path, "fdatasync");
    if (f->obs && f->obs->on_sync)
        f->obs->on_sync(f->obs->arg, f->path);
    return 0;
}

int op_truncate(struct op_file *f, uint64_t length, struct hv_err *err)
{
    if (f->is_dry_run)
        return 0;
    if (ftruncate(f->fd, (off_t)length) < 0)
        return hv_err_errno(err, f->path, "truncate");
    if (f->obs && f->obs->on_truncate)
        f->obs->on_truncate(f->obs->arg, f->path, length);
    return 0;
}

int op_punch(struct op_file *f, uint64_t off, uint64_t len, struct hv_err *err)
{
    (void)err;
    if (f->is_dry_run || len == 0)
        return 0;
    if (fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
        return 0; /* space stays used; nothing is wrong */
    if (f->obs && f->obs->on_write) {
        static const uint8_t zero[65536];
        for (uint64_t at = 0; at < len; at += sizeof(zero))
            f->obs->on_write(f->obs->arg, f->path, off + at, zero,
                             (size_t)HV_MIN((uint64_t)sizeof(zero), len - at));
    }
    return 0;
}

int op_sync_dir(const char *path)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof(copy), "%s", path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int ret = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return ret;
}

int op_unlink(const char *path, const struct vhd_ops_observer *obs, struct hv_err *err)
{
    if (unlink(path) < 0)
        return hv_err_errno(err, path, "delete");
    int ret = op_sync_dir(path);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: syncing its directory: %s", path, strerror(-ret));
    if (obs && obs->on_unlink)
        obs->on_unlink(obs->arg, path);
    return 0;
}

int op_write_footer(struct op_file *f, const struct vhd_footer *footer, uint64_t off,
                    struct hv_err *err)
{
    uint8_t buf[VHD_FOOTER_BYTES];
    struct vhd_footer copy = *footer;
    vhd_footer_encode(&copy, buf);
    return op_write(f, buf, sizeof(buf), off, err);
}

int op_write_header(struct op_file *f, struct vhd_header *h, uint64_t off, struct hv_err *err)
{
    uint8_t buf[VHD_HEADER_BYTES];
    vhd_header_encode(h, buf);
    return op_write(f, buf, sizeof(buf), off, err);
}

/* ------------------------------------------------------------------- BAT */

int op_bat_load(struct op_bat *b, int fd, const struct vhd_header *h, struct hv_err *err,
                const char *path)
{
    memset(b, 0, sizeof(*b));
    b->entries = h->max_table_entries;
    b->bytes = vhd_bat_bytes(h->max_table_entries);
    b->table_offset = h->table_offset;
    b->raw = malloc(b->bytes ? b->bytes : 1);
    b->dirty = calloc(b->bytes / HV_SECTOR_BYTES + 1, 1);
    if (!b->raw || !b->dirty) {
        op_bat_free(b);
        return hv_err_set(err, -ENOMEM, "%s: no memory for the BAT", path);
    }
    int ret = hv_pread_full(fd, b->raw, b->bytes, h->table_offset);
    if (ret < 0) {
        op_bat_free(b);
        return hv_err_set(err, ret, "%s: reading the BAT: %s", path, strerror(-ret));
    }
    return 0;
}

uint32_t op_bat_get(const struct op_bat *b, uint32_t index)
{
    return hv_be32(b->raw + 4 * (size_t)index);
}

void op_bat_set(struct op_bat *b, uint32_t index, uint32_t entry)
{
    hv_put_be32(b->raw + 4 * (size_t)index, entry);
    b->dirty[(4 * (size_t)index) / HV_SECTOR_BYTES] = 1;
}

bool op_bat_is_dirty(const struct op_bat *b)
{
    for (uint64_t s = 0; s < b->bytes / HV_SECTOR_BYTES; s++)
        if (b->dirty[s])
            return true;
    return false;
}

/* Dirty sectors only, each a whole sector: a crash tears the BAT at sector
 * boundaries at worst, and every sector is either old or new. */
int op_bat_write(struct op_file *f, struct op_bat *b, struct hv_err *err)
{
    uint64_t sectors = b->bytes / HV_SECTOR_BYTES;
    for (uint64_t s = 0; s < sectors;) {
        if (!b->dirty[s]) {
            s++;
            continue;
        }
        uint64_t e = s;
        while (e < sectors && b->dirty[e])
            e++;
        int ret = op_write(f, b->raw + s * HV_SECTOR_BYTES, (size_t)(e - s) * HV_SECTOR_BYTES,
                           b->table_offset + s * HV_SECTOR_BYTES, err);
        if (ret < 0)
            return ret;
        memset(b->dirty + s, 0, (size_t)(e - s));
        s = e;
    }
    return 0;
}

int op_bat_commit(struct op_file *f, struct op_bat *b, struct hv_err *err)
{
    if (!op_bat_is_dirty(b))
        return 0;
    int ret = op_bat_write(f, b, err);
    return ret < 0 ? ret : op_sync(f, err);
}

void op_bat_free(struct op_bat *b)
{
    free(b->raw);
    free(b->dirty);
    b->raw = NULL;
    b->dirty = NULL;
}

/* ------------------------------------------------------------------ paths */

int op_relative_path(const char *from_dir, const char *to, char *out, size_t cap)
{
    char dir[PATH_MAX];
    size_t len;
    size_t n = 0;
    int ups = 0;

    if (strlen(from_dir) + 2 > sizeof(dir))
        return -ENAMETOOLONG;
    strcpy(dir, from_dir);
    len = strlen(dir);
    if (len == 0 || dir[len - 1] != '/') {
        dir[len++] = '/';
        dir[len] = '\0';
    }
    while (strncmp(to, dir, len) != 0) {
        len--;
        while (len > 0 && dir[len - 1] != '/')
            len--;
        dir[len] = '\0';
        ups++;
    }
    if (ups == 0) {
        if (cap < 3)
            return -ENAMETOOLONG;
        memcpy(out, "./", 2);
        n = 2;
    }
    for (int i = 0; i < ups; i++) {
        if (n + 4 > cap)
            return -ENAMETOOLONG;
        memcpy(out + n, "../", 3);
        n += 3;
    }
    if (n + strlen(to + len) + 1 > cap)
        return -ENAMETOOLONG;
    strcpy(out + n, to + len);
    return 0;
}

void op_kill_point(const char *point)
{
    const char *want = getenv("HVSTOR_TEST_KILL_AT");
    if (want && !strcmp(want, point))
        raise(SIGKILL);
}
