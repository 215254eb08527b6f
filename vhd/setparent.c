/*
 * setparent.c — relink a differencing image to its (moved) parent.
 *
 * Crash ordering: the new locator payloads never overwrite anything the
 * current header points at. They go after the last structure of the file:
 * when that needs the file to grow, the footer is first written at the new
 * end and made durable (the old one, untouched, ends the file until then),
 * then the payloads are written where the old footer was, fdatasync. Only
 * then is the header rewritten, in one 1024-byte write at its place, and
 * made durable: before it, the old header and its old locators are intact;
 * after it, the new ones. The header lies in one 4 KiB page at offset 512,
 * which the page cache writes back as one unit; that single write is the
 * switch. (A device that tears a 4 KiB write at 512-byte sectors could mix
 * its two halves; the format keeps no second header to fall back on, and
 * `vhd check` would report the header's checksum.) Old locator
 * spaces are punched afterwards (unused whole pages only).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ops.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE_BYTES 4096u
#define LOCATOR_MAX_BYTES 8192u

int vhd_set_parent(const char *child, const char *parent_path,
                   const struct vhd_set_parent_options *opt, struct hv_err *err)
{
    static const struct vhd_set_parent_options defaults = {0};
    char absolute[PATH_MAX];
    char child_dir[PATH_MAX];
    char copy[PATH_MAX];
    char rel[PATH_MAX];
    struct vhd_info pinfo;
    struct vhd_meta m = {0};
    uint8_t *payload = NULL;
    struct stat cst, pst;
    int fd = -1;
    int ret;

    if (!opt)
        opt = &defaults;
    if (!realpath(parent_path, absolute))
        return hv_err_errno(err, parent_path, "parent");
    if (stat(child, &cst) < 0)
        return hv_err_errno(err, child, "stat");
    if (stat(absolute, &pst) < 0)
        return hv_err_errno(err, parent_path, "stat");
    if (cst.st_dev == pst.st_dev && cst.st_ino == pst.st_ino)
        return hv_err_set(err, -ELOOP, "%s: an image cannot be its own parent", child);
    ret = vhd_inspect(absolute, &pinfo, err);
    if (ret < 0) {
        hv_err_prefix(err, "new parent");
        return ret;
    }
    ret = op_open(child, false, &fd, err);
    if (ret < 0)
        return ret;
    struct op_file f = {fd, child, opt->observer, false};
    ret = vhd_meta_load(fd, child, true, &m, err);
    if (ret < 0)
        goto out;
    if (m.footer.disk_type != VHD_TYPE_DIFFERENCING) {
        ret = hv_err_set(err, -EINVAL, "%s: a %s image has no parent", child,
                         vhd_type_name((enum vhd_type)m.footer.disk_type));
        goto out;
    }
    if (memcmp(pinfo.uuid, m.header.parent_uuid, 16) && !opt->is_forced) {
        char want[37], got[37];
        hv_uuid_format(m.header.parent_uuid, want);
        hv_uuid_format(pinfo.uuid, got);
        ret = hv_err_set(err, -EINVAL,
                         "%s: %s has unique id %s, but the child records its "
                         "parent as %s: not the same disk (--force links it anyway; the "
                         "child then reads its sectors over a different parent)",
                         child, parent_path, got, want);
        goto out;
    }
    if (pinfo.size_bytes != m.footer.current_size && !opt->is_forced) {
        ret = hv_err_set(err, -EINVAL,
                         "%s: new parent %s is %" PRIu64 " bytes, the child "
                         "%" PRIu64 " (--force links it anyway)",
                         child, parent_path, pinfo.size_bytes, m.footer.current_size);
        goto out;
    }

    /* The new header and locators. */
    struct vhd_header h = m.header;
    const char *base = strrchr(absolute, '/');
    memcpy(h.parent_uuid, pinfo.uuid, 16);
    h.parent_timestamp = pinfo.timestamp;
    if (vhd_parent_name_set(&h, base ? base + 1 : absolute) < 0) {
        ret = hv_err_set(err, -ENAMETOOLONG,
                         "%s: parent file name is too long for the "
                         "header (256 UTF-16 units)",
                         child);
        goto out;
    }
    snprintf(copy, sizeof(copy), "%s", child);
    if (!realpath(dirname(copy), child_dir)) {
        ret = hv_err_errno(err, child, "directory");
        goto out;
    }
    ret = op_relative_path(child_dir, absolute, rel, sizeof(rel));
    if (ret < 0) {
        hv_err_set(err, ret, "%s: relative path to the parent is too long", child);
        goto out;
    }
    static const uint32_t codes[3] = {VHD_PLAT_W2RU, VHD_PLAT_W2KU, VHD_PLAT_MACX};
    payload = calloc(3, LOCATOR_MAX_BYTES);
    if (!payload) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory", child);
        goto out;
    }
    /* After every structure the current header knows (blocks, BAT, old
     * locators): none of it is touched. */
    uint64_t span = (uint64_t)vhd_bitmap_bytes(m.header.block_bytes) + m.header.block_bytes;
    uint64_t end = vhd_metadata_end(&m.footer, &m.header);
    for (uint32_t b = 0; b < m.header.max_table_entries; b++)
        if (m.bat[b] != VHD_BAT_UNALLOCATED)
            end = HV_MAX(end, (uint64_t)m.bat[b] * HV_SECTOR_BYTES + span);
    uint64_t at = HV_ALIGN_UP(end, HV_SECTOR_BYTES);
    uint64_t pos = 0;
    struct vhd_locator old_locs[VHD_LOCATOR_COUNT];
    memcpy(old_locs, h.locators, sizeof(old_locs));
    memset(h.locators, 0, sizeof(h.locators));
    for (int i = 0; i < 3; i++) {
        const char *text = codes[i] == VHD_PLAT_W2RU ? rel : absolute;
        int len = vhd_locator_encode_path(codes[i], text, payload + pos, LOCATOR_MAX_BYTES);
        if (len < 0) {
            ret = hv_err_set(err, len, "%s: parent path does not fit a locator", child);
            goto out;
        }
        uint32_t space = (uint32_t)HV_ALIGN_UP((uint64_t)HV_MAX(len, 1), HV_SECTOR_BYTES);
        h.locators[i] = (struct vhd_locator){codes[i], space, (uint32_t)len, at + pos};
        pos += space;
    }
    if (at + pos > m.footer_offset) {
        ret = op_write_footer(&f, &m.footer, at + pos, err);
        if (ret == 0)
            ret = op_sync(&f, err);
        if (ret < 0)
            goto out;
    }
    ret = op_write(&f, payload, pos, at, err);
    if (ret == 0)
        ret = op_sync(&f, err);
    if (ret == 0)
        ret = op_write_header(&f, &h, m.footer.data_offset, err);
    if (ret == 0)
        ret = op_sync(&f, err);
    if (ret < 0)
        goto out;
    for (int i = 0; i < VHD_LOCATOR_COUNT; i++) {
        const struct vhd_locator *l = &old_locs[i];
        uint64_t from = HV_ALIGN_UP(l->data_offset, PAGE_BYTES);
        uint64_t to = HV_ALIGN_DOWN(l->data_offset + vhd_locator_space_bytes(l), PAGE_BYTES);
        if (l->code != VHD_PLAT_NONE && to > from)
            op_punch(&f, from, to - from, err);
    }
    ret = op_sync(&f, err);
out:
    free(payload);
    vhd_meta_free(&m);
    close(fd);
    return ret;
}
