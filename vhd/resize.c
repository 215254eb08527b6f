/*
 * resize.c — change an image's virtual size, exactly.
 *
 * The footer (and, for dynamic and differencing images, its copy at offset
 * 0) carries the size; the engine and libvhdi read the footer at the end,
 * which is therefore the switch: before it lands the image reads as before,
 * after it as after. Everything a new size needs is prepared first, where
 * the old size cannot see it; what the old size no longer needs is given
 * back after.
 *
 * Fixed, growing from S to T:
 *   1. the old footer is written again at T (the file grows; the space
 *      between reads zeroes), fdatasync: the file still ends in a footer
 *      saying S, with unused bytes before it (vhd check: leaked);
 *   2. zeroes over the old footer at S, fdatasync (invisible at size S);
 *   3. the new footer at T (one sector), fdatasync: size T, and [S, T)
 *      reads zeroes.
 * Fixed, shrinking to T: the new footer replaces the old one at the end
 * (size T, the bytes after T unused), fdatasync; the new footer again at T,
 * fdatasync; ftruncate after it, fdatasync.
 *
 * Dynamic/differencing: a larger disk may need more BAT entries. When the
 * BAT can grow where it is (nothing lies after it), the new entries
 * (unallocated) are written first, then the header's entry count; when it
 * cannot, a new BAT is written after the last structure (the file first
 * grows with its footer written at the new end, as the engine grows), then
 * the header points at it. Both header changes touch only its first sector
 * (table offset, entry count, checksum), so a torn header write cannot mix
 * them. Then the footer at the end, fdatasync, then its copy, fdatasync: in
 * between the copy still says the old size; the image reads as after.
 * `vhd check` recognises exactly that state (both valid, differing only in
 * the fields vhd_footer_resized sets) as an interrupted resize, not
 * corruption (exit 3), and `vhd repair` copies the footer.
 * Why the end first: the footer at the end is the one the VHD spec calls
 * authoritative and the one the engine, libvhdi, vhd-util and repair read;
 * only qemu (block/vpc.c) takes the copy at 0 when its cookie is valid.
 * Copy first would leave every reader but qemu on the old size in the
 * window, and check would have to trust the copy over the footer. End
 * first, only qemu sees the old size, and that view is sound: growing, a
 * prefix of the new disk; shrinking, the old disk, whose blocks past the
 * new end are freed only after both footers are switched.
 * Shrinking switches the footers first, then frees the blocks past the end
 * (invisible by then) and reclaims their space.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ops.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE_BYTES 4096u

/* First offset in [from, to) of a fixed image that is not zero, or `to`. */
static int first_data(int fd, const char *path, uint64_t from, uint64_t to, uint64_t *at,
                      struct hv_err *err)
{
    uint8_t *buf = malloc(1u << 20);
    if (!buf)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", path);
    *at = to;
    for (uint64_t pos = from; pos < to;) {
        off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
        if (d < 0 || (uint64_t)d >= to)
            break;
        pos = HV_MAX(pos, (uint64_t)d);
        size_t n = (size_t)HV_MIN((uint64_t)(1u << 20), to - pos);
        int ret = hv_pread_full(fd, buf, n, pos);
        if (ret < 0) {
            free(buf);
            return hv_err_set(err, ret, "%s: read at %" PRIu64 ": %s", path, pos, strerror(-ret));
        }
        for (size_t i = 0; i < n; i += HV_SECTOR_BYTES) {
            if (!hv_buf_is_zero(buf + i, HV_MIN((size_t)HV_SECTOR_BYTES, n - i))) {
                *at = pos + i;
                free(buf);
                return 0;
            }
        }
        pos += n;
    }
    free(buf);
    return 0;
}

static int resize_fixed(struct op_file *f, struct vhd_meta *m, uint64_t size, bool is_forced,
                        struct hv_err *err)
{
    uint64_t old = m->footer.current_size;
    struct vhd_footer nf;
    int ret;

    vhd_footer_resized(&nf, &m->footer, size);
    if (size < old) {
        uint64_t at = 0;
        ret = first_data(f->fd, f->path, size, old, &at, err);
        if (ret < 0)
            return ret;
        if (at < old && !is_forced)
            return hv_err_set(err, -ENOTEMPTY,
                              "%s: data at offset %" PRIu64 " lies beyond "
                              "the new size %" PRIu64 "; --force cuts it off",
                              f->path, at, size);
        ret = op_write_footer(f, &nf, m->footer_offset, err);
        if (ret == 0)
            ret = op_sync(f, err);
        if (ret == 0)
            ret = op_write_footer(f, &nf, size, err);
        if (ret == 0)
            ret = op_sync(f, err);
        if (ret == 0)
            ret = op_truncate(f, size + VHD_FOOTER_BYTES, err);
        if (ret == 0)
            ret = op_sync(f, err);
        return ret;
    }
    /* Preallocate like create (best effort; unwritten extents read zeroes). */
    if (fallocate(f->fd, FALLOC_FL_KEEP_SIZE, (off_t)m->file_bytes,
                  (off_t)(size + VHD_FOOTER_BYTES - m->file_bytes)) < 0)
        hv_debug("%s: fallocate: %s", f->path, strerror(errno));
    static const uint8_t zero[VHD_FOOTER_BYTES];
    ret = op_write_footer(f, &m->footer, size, err);
    if (ret == 0)
        ret = op_sync(f, err);
    if (ret == 0)
        ret = op_write(f, zero, sizeof(zero), m->footer_offset, err);
    if (ret == 0)
        ret = op_sync(f, err);
    if (ret == 0)
        ret = op_write_footer(f, &nf, size, err);
    if (ret == 0)
        ret = op_sync(f, err);
    return ret;
}

/* Footer at the end, then its copy (see the top comment). */
static int switch_footers(struct op_file *f, struct vhd_meta *m, const struct vhd_footer *nf,
                          struct hv_err *err)
{
    int ret = op_write_footer(f, nf, m->footer_offset, err);
    if (ret == 0)
        ret = op_sync(f, err);
    if (ret == 0)
        op_kill_point("resize-footer");
    if (ret == 0)
        ret = op_write_footer(f, nf, 0, err);
    if (ret == 0)
        ret = op_sync(f, err);
    if (ret == 0)
        m->footer = *nf;
    return ret;
}

/* Does block `b` hold anything at virtual [from, to)? Dynamic: non-zero
 * bytes; differencing: a present sector with non-zero bytes. */
static int block_has_data(struct op_file *f, struct vhd_meta *m, uint32_t b, uint64_t from,
                          uint64_t to, bool *has, struct hv_err *err)
{
    uint32_t bs = m->header.block_bytes;
    uint32_t bmb = vhd_bitmap_bytes(bs);
    uint64_t at = (uint64_t)m->bat[b] * HV_SECTOR_BYTES;
    uint64_t base = (uint64_t)b * bs;
    uint8_t *bm = malloc(bmb);
    uint8_t *data = malloc(bs);
    int ret = -ENOMEM;
    *has = false;
    if (!bm || !data)
        goto out;
    ret = hv_pread_full(f->fd, bm, bmb, at);
    if (ret == 0)
        ret = hv_pread_full(f->fd, data, bs, at + bmb);
    if (ret < 0)
        goto out;
    for (uint64_t s = (from - base) / HV_SECTOR_BYTES; s < (to - base) / HV_SECTOR_BYTES; s++) {
        if (m->footer.disk_type == VHD_TYPE_DIFFERENCING && !vhd_bitmap_test(bm, (uint32_t)s))
            continue;
        if (!hv_buf_is_zero(data + s * HV_SECTOR_BYTES, HV_SECTOR_BYTES)) {
            *has = true;
            break;
        }
    }
out:
    free(bm);
    free(data);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: reading block %u: %s", f->path, b, strerror(-ret));
    return 0;
}

/* Where the structure after the BAT starts (the BAT may grow up to it). */
static uint64_t room_after_bat(const struct vhd_meta *m)
{
    const struct vhd_header *h = &m->header;
    uint64_t limit = m->footer_offset;
    uint64_t span = (uint64_t)vhd_bitmap_bytes(h->block_bytes) + h->block_bytes;
    if (m->footer.data_offset > h->table_offset)
        limit = HV_MIN(limit, m->footer.data_offset);
    for (int i = 0; i < VHD_LOCATOR_COUNT; i++) {
        const struct vhd_locator *l = &h->locators[i];
        if (l->code != VHD_PLAT_NONE && l->data_offset > h->table_offset)
            limit = HV_MIN(limit, l->data_offset);
    }
    for (uint32_t b = 0; b < h->max_table_entries; b++) {
        uint64_t at = (uint64_t)m->bat[b] * HV_SECTOR_BYTES;
        if (m->bat[b] != VHD_BAT_UNALLOCATED && at > h->table_offset)
            limit = HV_MIN(limit, at);
        (void)span;
    }
    return limit;
}

static int grow_bat(struct op_file *f, struct vhd_meta *m, struct op_bat *bat, uint32_t entries,
                    struct hv_err *err)
{
    struct vhd_header *h = &m->header;
    uint64_t new_bytes = vhd_bat_bytes(entries);
    uint8_t *raw = malloc(HV_ALIGN_UP(new_bytes, PAGE_BYTES));
    int ret;
    if (!raw)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", f->path);
    memset(raw, 0xFF, HV_ALIGN_UP(new_bytes, PAGE_BYTES));
    memcpy(raw, bat->raw, (size_t)h->max_table_entries * 4);

    if (h->table_offset + new_bytes <= room_after_bat(m)) {
        /* In place: from the sector holding the first new entry (its live
         * entries rewritten unchanged) to the new end. */
        uint64_t from = HV_ALIGN_DOWN((uint64_t)h->max_table_entries * 4, HV_SECTOR_BYTES);
        ret = op_write(f, raw + from, new_bytes - from, h->table_offset + from, err);
        if (ret == 0)
            ret = op_sync(f, err);
        if (ret == 0) {
            h->max_table_entries = entries;
            ret = op_write_header(f, h, m->footer.data_offset, err);
        }
        if (ret == 0)
            ret = op_sync(f, err);
        free(raw);
        return ret;
    }
    /* After everything else. */
    uint64_t span = (uint64_t)vhd_bitmap_bytes(h->block_bytes) + h->block_bytes;
    uint64_t end = vhd_metadata_end(&m->footer, h);
    for (uint32_t b = 0; b < h->max_table_entries; b++)
        if (m->bat[b] != VHD_BAT_UNALLOCATED)
            end = HV_MAX(end, (uint64_t)m->bat[b] * HV_SECTOR_BYTES + span);
    uint64_t bat_at = HV_ALIGN_UP(end, PAGE_BYTES);
    uint64_t bat_area = HV_ALIGN_UP(new_bytes, PAGE_BYTES);
    uint64_t old_at = h->table_offset;
    /* Everything up to the next structure was the old table's (and its
     * padding); given back once nothing points at it. */
    uint64_t old_limit = HV_MIN(room_after_bat(m), bat_at);
    ret = 0;
    if (bat_at + bat_area > m->footer_offset) {
        uint64_t new_end = bat_at + bat_area;
        ret = op_write_footer(f, &m->footer, new_end, err);
        if (ret == 0)
            ret = op_sync(f, err);
        if (ret == 0) {
            m->footer_offset = new_end;
            m->file_bytes = new_end + VHD_FOOTER_BYTES;
        }
    }
    if (ret == 0)
        ret = op_write(f, raw, bat_area, bat_at, err);
    if (ret == 0)
        ret = op_sync(f, err);
    if (ret == 0) {
        h->table_offset = bat_at;
        h->max_table_entries = entries;
        ret = op_write_header(f, h, m->footer.data_offset, err);
    }
    if (ret == 0)
        ret = op_sync(f, err);
    /* The old table belongs to nothing now. */
    if (ret == 0) {
        uint64_t from = HV_ALIGN_UP(old_at, PAGE_BYTES);
        uint64_t to = HV_ALIGN_DOWN(old_limit, PAGE_BYTES);
        if (to > from)
            ret = op_punch(f, from, to - from, err);
    }
    free(raw);
    if (ret == 0) {
        op_bat_free(bat);
        ret = op_bat_load(bat, f->fd, h, err, f->path);
    }
    return ret;
}

static int resize_sparse(struct op_file *f, struct vhd_meta *m, uint64_t size, bool is_forced,
                         struct hv_err *err)
{
    struct vhd_header *h = &m->header;
    uint64_t old = m->footer.current_size;
    uint32_t bs = h->block_bytes;
    uint32_t needed = vhd_blocks_for_size(size, bs);
    struct vhd_footer nf;
    struct op_bat bat;
    int ret;

    vhd_footer_resized(&nf, &m->footer, size);
    if (needed > HV_DIV_ROUND_UP(VHD_MAX_READ_SIZE_BYTES, bs))
        return hv_err_set(err, -EINVAL,
                          "%s: %" PRIu64 " bytes need more BAT entries than "
                          "the format allows",
                          f->path, size);
    ret = op_bat_load(&bat, f->fd, h, err, f->path);
    if (ret < 0)
        return ret;
    if (size < old) {
        /* Data beyond the new end? */
        for (uint32_t b = (uint32_t)(size / bs); b < h->max_table_entries && !is_forced; b++) {
            bool has;
            if (m->bat[b] == VHD_BAT_UNALLOCATED)
                continue;
            uint64_t from = HV_MAX(size, (uint64_t)b * bs);
            uint64_t to = HV_MIN(old, (uint64_t)(b + 1) * bs);
            if (from >= to)
                continue;
            ret = block_has_data(f, m, b, from, to, &has, err);
            if (ret < 0)
                goto out;
            if (has) {
                ret = hv_err_set(err, -ENOTEMPTY,
                                 "%s: block %u holds data beyond the new "
                                 "size %" PRIu64 "; --force cuts it off",
                                 f->path, b, size);
                goto out;
            }
        }
        ret = switch_footers(f, m, &nf, err);
        if (ret < 0)
            goto out;
        for (uint32_t b = needed; b < h->max_table_entries; b++) {
            if (m->bat[b] != VHD_BAT_UNALLOCATED) {
                op_bat_set(&bat, b, VHD_BAT_UNALLOCATED);
                m->bat[b] = VHD_BAT_UNALLOCATED;
            }
        }
        /* The part of the last block past the end keeps its bytes: zero them
         * now, so that growing again later shows zeroes there. */
        if (size % bs && m->bat[needed - 1] != VHD_BAT_UNALLOCATED) {
            uint64_t at =
                (uint64_t)m->bat[needed - 1] * HV_SECTOR_BYTES + vhd_bitmap_bytes(bs) + size % bs;
            uint64_t len = bs - size % bs;
            uint8_t *z = calloc(1, len);
            if (!z) {
                ret = hv_err_set(err, -ENOMEM, "%s: out of memory", f->path);
                goto out;
            }
            ret = op_write(f, z, len, at, err);
            free(z);
            if (ret < 0)
                goto out;
        }
        if (op_bat_is_dirty(&bat) && (ret = op_bat_write(f, &bat, err)) < 0)
            goto out;
        ret = op_sync(f, err);
        if (ret < 0)
            goto out;
        uint32_t moved;
        uint64_t bytes;
        ret = op_reclaim(f, m, &bat, NULL, &moved, &bytes, err);
        goto out;
    }
    if (needed > h->max_table_entries) {
        ret = grow_bat(f, m, &bat, needed, err);
        if (ret < 0)
            goto out;
    }
    ret = switch_footers(f, m, &nf, err);
out:
    op_bat_free(&bat);
    return ret;
}

int vhd_resize(const char *path, uint64_t size, const struct vhd_resize_options *opt,
               struct hv_err *err)
{
    static const struct vhd_resize_options defaults = {0};
    struct vhd_meta m = {0};
    int fd = -1;
    int ret;

    if (!opt)
        opt = &defaults;
    if (size == 0 || size % HV_SECTOR_BYTES)
        return hv_err_set(err, -EINVAL,
                          "%s: size %" PRIu64 " is not a positive multiple of "
                          "512 bytes",
                          path, size);
    if (size > VHD_MAX_SIZE_BYTES)
        return hv_err_set(err, -EINVAL, "%s: size %" PRIu64 " exceeds VHD's 2040 GiB", path, size);
    ret = op_open(path, false, &fd, err);
    if (ret < 0)
        return ret;
    struct op_file f = {fd, path, opt->observer, false};
    ret = vhd_meta_load(fd, path, true, &m, err);
    if (ret < 0)
        goto out;
    if (!m.is_footer_copy_ok && m.footer.disk_type != VHD_TYPE_FIXED) {
        ret = hv_err_set(err, -EINVAL,
                         "%s: the footer copy at offset 0 is damaged or "
                         "differs from the footer; run vhd repair first",
                         path);
        goto out;
    }
    if (size == m.footer.current_size)
        goto out;
    if (m.footer.disk_type == VHD_TYPE_FIXED)
        ret = resize_fixed(&f, &m, size, opt->is_forced, err);
    else
        ret = resize_sparse(&f, &m, size, opt->is_forced, err);
out:
    vhd_meta_free(&m);
    close(fd);
    return ret;
}
