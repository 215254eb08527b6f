/*
 * repair.c — put a damaged image back in order, in place, never touching
 * its parent.
 *
 * What can be repaired: a footer whose checksum alone is wrong; a lost or
 * damaged footer (rebuilt from the copy at offset 0 of a dynamic or
 * differencing image) or a lost copy (rebuilt from the footer); a copy that
 * differs from the footer (the footer at the end is what the engine,
 * libvhdi and Hyper-V read, so it wins); a dynamic header whose checksum
 * alone is wrong; BAT entries that point outside the file or overlap the
 * metadata or another block (dropped: those sectors then read zeroes or
 * the parent; their data was unreachable or would be read wrongly anyway);
 * leaked space (reclaimed as compact does); a fixed image with bytes
 * between its data and its footer (an interrupted resize: cut). What cannot:
 * a fixed image without a valid footer (nothing records its size), a
 * dynamic image without any valid footer, a header that is more than a bad
 * checksum.
 *
 * Order: header, then BAT, each made durable, then the footer at the end,
 * durable, then the copy: each step leaves an image no worse than before.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ops.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static void HV_PRINTF(3, 4)
    act(struct vhd_repair_report *rep, bool is_unrepaired, const char *fmt, ...)
{
    char(*a)[512] = realloc(rep->actions, (size_t)(rep->action_count + 1) * sizeof(*a));
    if (!a)
        return;
    rep->actions = a;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a[rep->action_count], sizeof(*a), fmt, ap);
    va_end(ap);
    rep->action_count++;
    rep->unrepaired_count += is_unrepaired;
}

void vhd_repair_report_free(struct vhd_repair_report *rep)
{
    if (!rep)
        return;
    free(rep->actions);
    rep->actions = NULL;
    rep->action_count = 0;
}

/* A footer that is valid, or valid but for its checksum (*is_sum_bad). */
static bool footer_usable(const uint8_t *buf, struct vhd_footer *f, const char *path,
                          const char *what, uint64_t file_bytes, bool *is_sum_bad)
{
    vhd_footer_parse(buf, f);
    *is_sum_bad = f->checksum != f->computed_checksum;
    struct vhd_footer t = *f;
    t.checksum = t.computed_checksum;
    return vhd_footer_validate(&t, path, what, file_bytes, NULL) == 0;
}

struct dropped {
    uint32_t *v;
    uint32_t n;
    uint32_t cap;
};

static void bat_problem(void *arg, uint32_t index, const char *msg)
{
    struct dropped *d = arg;
    (void)msg;
    if (d->n == d->cap) {
        uint32_t cap = d->cap ? d->cap * 2 : 16;
        uint32_t *v = realloc(d->v, cap * sizeof(*v));
        if (!v)
            return;
        d->v = v;
        d->cap = cap;
    }
    d->v[d->n++] = index;
}

static int repair_fixed(struct op_file *f, struct vhd_footer *ft, bool is_sum_bad,
                        uint64_t file_bytes, struct vhd_repair_report *rep, struct hv_err *err)
{
    int ret = 0;
    if (is_sum_bad) {
        act(rep, false, "footer: checksum 0x%08x replaced by 0x%08x", ft->checksum,
            ft->computed_checksum);
        ret = op_write_footer(f, ft, file_bytes - VHD_FOOTER_BYTES, err);
        if (ret == 0)
            ret = op_sync(f, err);
    }
    if (ret == 0 && file_bytes - VHD_FOOTER_BYTES > ft->current_size) {
        act(rep, false,
            "cut %" PRIu64 " unused bytes between the data and the footer "
            "(an interrupted resize)",
            file_bytes - VHD_FOOTER_BYTES - ft->current_size);
        ret = op_write_footer(f, ft, ft->current_size, err);
        if (ret == 0)
            ret = op_sync(f, err);
        if (ret == 0)
            ret = op_truncate(f, ft->current_size + VHD_FOOTER_BYTES, err);
        if (ret == 0)
            ret = op_sync(f, err);
    }
    return ret;
}

int vhd_repair(const char *path, const struct vhd_repair_options *opt,
               struct vhd_repair_report *rep, struct hv_err *err)
{
    static const struct vhd_repair_options defaults = {0};
    uint8_t ebuf[VHD_FOOTER_BYTES], cbuf[VHD_FOOTER_BYTES], hbuf[VHD_HEADER_BYTES];
    struct vhd_footer fe, fc;
    struct vhd_meta m = {0};
    struct op_bat bat = {0};
    struct dropped dropped = {0};
    struct stat st;
    bool is_e_sum = false, is_c_sum = false;
    int fd = -1;
    int ret;

    if (!opt)
        opt = &defaults;
    memset(rep, 0, sizeof(*rep));
    ret = op_open(path, opt->is_dry_run, &fd, err);
    if (ret < 0)
        return ret;
    struct op_file f = {fd, path, opt->observer, opt->is_dry_run};
    if (fstat(fd, &st) < 0) {
        ret = hv_err_errno(err, path, "stat");
        goto out;
    }
    uint64_t file_bytes = (uint64_t)st.st_size;
    if (file_bytes < 2 * VHD_FOOTER_BYTES) {
        act(rep, true, "file is %" PRIu64 " bytes: not an image that can be repaired", file_bytes);
        goto done;
    }
    if ((ret = hv_pread_full(fd, ebuf, sizeof(ebuf), file_bytes - VHD_FOOTER_BYTES)) < 0 ||
        (ret = hv_pread_full(fd, cbuf, sizeof(cbuf), 0)) < 0) {
        hv_err_set(err, ret, "%s: read: %s", path, strerror(-ret));
        goto out;
    }
    bool is_e_ok = footer_usable(ebuf, &fe, path, "footer", file_bytes, &is_e_sum);
    bool is_c_ok = footer_usable(cbuf, &fc, path, "footer copy", 0, &is_c_sum) &&
                   fc.disk_type != VHD_TYPE_FIXED;
    if (is_e_ok && fe.disk_type == VHD_TYPE_FIXED) {
        ret = repair_fixed(&f, &fe, is_e_sum, file_bytes, rep, err);
        goto done;
    }
    if (!is_e_ok && !is_c_ok) {
        act(rep, true,
            "no valid footer at the end and no valid copy at offset 0: the "
            "image's type and size are lost (a fixed image keeps no copy)");
        goto done;
    }
    /* The footer at the end wins when it is usable. */
    m.footer = is_e_ok ? fe : fc;
    m.footer.checksum = m.footer.computed_checksum;
    if (m.footer.data_offset + VHD_HEADER_BYTES > file_bytes) {
        act(rep, true, "dynamic header at offset %" PRIu64 " lies outside the file",
            m.footer.data_offset);
        goto done;
    }
    if ((ret = hv_pread_full(fd, hbuf, sizeof(hbuf), m.footer.data_offset)) < 0) {
        hv_err_set(err, ret, "%s: read header: %s", path, strerror(-ret));
        goto out;
    }
    vhd_header_parse(hbuf, &m.header);
    bool is_h_sum = m.header.checksum != m.header.computed_checksum;
    m.header.checksum = m.header.computed_checksum;
    {
        struct hv_err herr = {0};
        /* The file length is checked below, once the footer's place is known. */
        if (vhd_header_validate(&m.header, &m.footer, path, 0, &herr) < 0) {
            act(rep, true, "%s", hv_err_msg(&herr, -EINVAL));
            goto done;
        }
    }
    m.has_header = true;
    if (m.header.table_offset + vhd_bat_bytes(m.header.max_table_entries) > file_bytes) {
        act(rep, true, "BAT at offset %" PRIu64 " lies outside the file", m.header.table_offset);
        goto done;
    }
    if (is_h_sum) {
        act(rep, false, "dynamic header: checksum fixed");
        ret = op_write_header(&f, &m.header, m.footer.data_offset, err);
        if (ret == 0)
            ret = op_sync(&f, err);
        if (ret < 0)
            goto out;
    }

    /* Where the footer belongs: at the end when the last sector holds
     * nothing else; after the last structure when the file was cut short. */
    ret = op_bat_load(&bat, fd, &m.header, err, path);
    if (ret < 0)
        goto out;
    m.bat = malloc(((size_t)m.header.max_table_entries + 1) * sizeof(uint32_t));
    if (!m.bat) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory", path);
        goto out;
    }
    vhd_bat_parse(bat.raw, m.header.max_table_entries, m.bat);
    uint64_t footer_at = file_bytes - VHD_FOOTER_BYTES;
    if (!is_e_ok) {
        uint64_t span = (uint64_t)vhd_bitmap_bytes(m.header.block_bytes) + m.header.block_bytes;
        uint64_t end = vhd_metadata_end(&m.footer, &m.header);
        for (uint32_t b = 0; b < m.header.max_table_entries; b++) {
            uint64_t at = (uint64_t)m.bat[b] * HV_SECTOR_BYTES;
            /* Blocks wholly past the end are dropped below, not kept. */
            if (m.bat[b] != VHD_BAT_UNALLOCATED && at < file_bytes)
                end = HV_MAX(end, at + span);
        }
        end = HV_ALIGN_UP(end, HV_SECTOR_BYTES);
        if (end > footer_at) {
            act(rep, false,
                "file ends at %" PRIu64 ", inside its data: the footer goes "
                "after the last block, at %" PRIu64 " (bytes that were cut off read as "
                "zeroes)",
                file_bytes, end);
            footer_at = end;
        }
    }
    m.footer_offset = footer_at;
    m.file_bytes = footer_at + VHD_FOOTER_BYTES;

    /* BAT entries that point outside the file or overlap something. */
    for (int round = 0; round < 8; round++) {
        dropped.n = 0;
        int nbad =
            vhd_bat_validate(m.bat, &m.footer, &m.header, m.footer_offset, bat_problem, &dropped);
        if (nbad < 0) {
            ret = hv_err_set(err, nbad, "%s: out of memory", path);
            goto out;
        }
        if (nbad == 0)
            break;
        for (uint32_t i = 0; i < dropped.n; i++) {
            uint32_t b = dropped.v[i];
            if (m.bat[b] == VHD_BAT_UNALLOCATED)
                continue;
            act(rep, false,
                "BAT entry %u (sector %u) dropped: it points outside the file or "
                "overlaps other structures",
                b, m.bat[b]);
            m.bat[b] = VHD_BAT_UNALLOCATED;
            op_bat_set(&bat, b, VHD_BAT_UNALLOCATED);
        }
    }
    ret = op_bat_commit(&f, &bat, err);
    if (ret < 0)
        goto out;

    /* Footer at the end, then the copy. */
    if (!is_e_ok || is_e_sum || footer_at != file_bytes - VHD_FOOTER_BYTES) {
        if (!is_e_ok)
            act(rep, false, "footer at offset %" PRIu64 " rebuilt from the copy at offset 0",
                footer_at);
        else
            act(rep, false, "footer: checksum fixed");
        ret = op_write_footer(&f, &m.footer, footer_at, err);
        if (ret == 0)
            ret = op_sync(&f, err);
        if (ret == 0 && footer_at + VHD_FOOTER_BYTES < file_bytes)
            ret = op_truncate(&f, footer_at + VHD_FOOTER_BYTES, err);
        if (ret < 0)
            goto out;
    }
    {
        uint8_t want[VHD_FOOTER_BYTES];
        struct vhd_footer t = m.footer;
        vhd_footer_encode(&t, want);
        if (memcmp(want, cbuf, VHD_FOOTER_BYTES)) {
            act(rep, false, "footer copy at offset 0 %s from the footer",
                !is_c_ok ? "rebuilt" : "rewritten");
            ret = op_write(&f, want, sizeof(want), 0, err);
            if (ret == 0)
                ret = op_sync(&f, err);
            if (ret < 0)
                goto out;
        }
    }

    /* Leaked space. */
    {
        uint32_t moved = 0;
        uint64_t before = m.file_bytes;
        uint64_t stored = (uint64_t)st.st_blocks * 512;
        uint64_t after;
        ret = op_reclaim(&f, &m, &bat, NULL, &moved, &after, err);
        if (ret < 0)
            goto out;
        struct stat st2;
        uint64_t stored2 = fstat(fd, &st2) == 0 ? (uint64_t)st2.st_blocks * 512 : stored;
        if (moved || after < before || (!opt->is_dry_run && stored2 + 4096 <= stored))
            act(rep, false,
                "space reclaimed: %u block%s moved into holes, file %" PRIu64 " -> %" PRIu64
                " bytes",
                moved, moved == 1 ? "" : "s", before, after);
    }
done:
    ret = rep->unrepaired_count ? 1 : 0;
    if (!opt->is_dry_run && ret == 0) {
        struct vhd_check_report crep;
        struct hv_err cerr = {0};
        close(fd); /* check opens it itself */
        fd = -1;
        int rc = vhd_check(path, &crep, &cerr);
        if (rc < 0) {
            act(rep, true, "after repair the check failed: %s", hv_err_msg(&cerr, rc));
        } else {
            for (int i = 0; i < crep.problem_count; i++)
                act(rep, true, "still %s: %s",
                    crep.problems[i].is_interrupted ? "unfinished"
                    : crep.problems[i].is_leak      ? "leaked"
                                                    : "wrong",
                    crep.problems[i].msg);
            vhd_check_report_free(&crep);
        }
        ret = rep->unrepaired_count ? 1 : 0;
    }
out:
    if (ret < 0)
        vhd_repair_report_free(rep); /* the caller gets the error alone */
    free(dropped.v);
    op_bat_free(&bat);
    vhd_meta_free(&m);
    if (fd >= 0)
        close(fd);
    return ret;
}
