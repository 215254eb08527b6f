/*
 * inspect.c — load one image's metadata (shared with the engine) and describe
 * it for `vhd info`.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *vhd_type_name(enum vhd_type type)
{
    switch (type) {
    case VHD_TYPE_FIXED:
        return "fixed";
    case VHD_TYPE_DYNAMIC:
        return "dynamic";
    case VHD_TYPE_DIFFERENCING:
        return "differencing";
    }
    return "unknown";
}

int vhd_type_parse(const char *name, enum vhd_type *type)
{
    static const enum vhd_type all[] = { VHD_TYPE_FIXED, VHD_TYPE_DYNAMIC,
                                         VHD_TYPE_DIFFERENCING };
    for (size_t i = 0; i < HV_ARRAY_SIZE(all); i++) {
        if (strcmp(name, vhd_type_name(all[i])) == 0) {
            *type = all[i];
            return 0;
        }
    }
    return -EINVAL;
}

void vhd_meta_free(struct vhd_meta *m)
{
    free(m->bat);
    m->bat = NULL;
}

struct first_problem {
    char msg[256];
    int count;
};

static void keep_first(void *arg, uint32_t index, const char *msg)
{
    struct first_problem *p = arg;
    (void)index;
    if (p->count++ == 0)
        snprintf(p->msg, sizeof(p->msg), "%s", msg);
}

int vhd_meta_load(int fd, const char *path, bool load_bat, struct vhd_meta *m,
                  struct hv_err *err)
{
    uint8_t buf[VHD_HEADER_BYTES];
    struct hv_err copy_err = { 0 };
    struct stat st;
    uint8_t *raw = NULL;
    int ret;

    memset(m, 0, sizeof(*m));
    if (fstat(fd, &st) < 0)
        return hv_err_errno(err, path, "stat");
    m->file_bytes = (uint64_t)st.st_size;
    if (S_ISBLK(st.st_mode)) {
        off_t end = lseek(fd, 0, SEEK_END);
        if (end < 0)
            return hv_err_errno(err, path, "lseek");
        m->file_bytes = (uint64_t)end;
    }
    if (m->file_bytes < VHD_FOOTER_BYTES)
        return hv_err_set(err, -EINVAL, "%s: %" PRIu64 " bytes is too short for a VHD "
                          "footer", path, m->file_bytes);
    m->footer_offset = m->file_bytes - VHD_FOOTER_BYTES;
    ret = hv_pread_full(fd, buf, VHD_FOOTER_BYTES, m->footer_offset);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: reading the footer: %s", path, strerror(-ret));
    ret = vhd_footer_decode(buf, &m->footer, path, "footer", m->file_bytes, err);
    if (m->file_bytes >= VHD_FOOTER_BYTES * 2 &&
        hv_pread_full(fd, buf, VHD_FOOTER_BYTES, 0) == 0) {
        vhd_footer_parse(buf, &m->footer_copy);
        if (vhd_footer_validate(&m->footer_copy, path, "footer copy", m->file_bytes,
                                &copy_err) == 0 && m->footer_copy.disk_type != VHD_TYPE_FIXED)
            m->is_footer_copy_ok = true;
    }
    if (ret < 0) {
        if (m->is_footer_copy_ok)
            hv_err_prefix(err, "%s: the footer copy at offset 0 is intact (vhd repair "
                          "restores the footer from it)", path);
        return ret;
    }
    if (m->footer.disk_type == VHD_TYPE_FIXED) {
        m->is_footer_copy_ok = false;
        return 0;
    }
    /* The copy must say what the footer says, or it is no copy. */
    if (m->is_footer_copy_ok) {
        uint8_t a[VHD_FOOTER_BYTES];
        uint8_t b[VHD_FOOTER_BYTES];
        struct vhd_footer x = m->footer;
        struct vhd_footer y = m->footer_copy;
        vhd_footer_encode(&x, a);
        vhd_footer_encode(&y, b);
        m->is_footer_copy_ok = memcmp(a, b, VHD_FOOTER_BYTES) == 0;
    }

    ret = hv_pread_full(fd, buf, VHD_HEADER_BYTES, m->footer.data_offset);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: reading the dynamic header: %s", path,
                          strerror(-ret));
    ret = vhd_header_decode(buf, &m->footer, &m->header, path, m->file_bytes, err);
    if (ret < 0)
        return ret;
    m->has_header = true;
    if (!load_bat)
        return 0;

    {
        uint64_t bat_bytes = vhd_bat_bytes(m->header.max_table_entries);
        struct first_problem p = { .count = 0 };
        raw = malloc(bat_bytes ? bat_bytes : 1);
        m->bat = malloc(sizeof(uint32_t) * (m->header.max_table_entries + 1u));
        if (!raw || !m->bat) {
            ret = hv_err_set(err, -ENOMEM, "%s: BAT of %u entries: out of memory", path,
                             m->header.max_table_entries);
            goto fail;
        }
        ret = hv_pread_full(fd, raw, bat_bytes, m->header.table_offset);
        if (ret < 0) {
            hv_err_set(err, ret, "%s: reading the BAT: %s", path, strerror(-ret));
            goto fail;
        }
        vhd_bat_parse(raw, m->header.max_table_entries, m->bat);
        free(raw);
        raw = NULL;
        ret = vhd_bat_validate(m->bat, &m->footer, &m->header, m->footer_offset, keep_first,
                               &p);
        if (ret < 0) {
            hv_err_set(err, ret, "%s: BAT: out of memory", path);
            goto fail;
        }
        if (ret > 0) {
            ret = hv_err_set(err, -EINVAL, "%s: %s%s", path, p.msg,
                             p.count > 1 ? " (and more BAT problems)" : "");
            goto fail;
        }
        for (uint32_t i = 0; i < m->header.max_table_entries; i++)
            if (m->bat[i] != VHD_BAT_UNALLOCATED)
                m->allocated_blocks++;
    }
    return 0;
fail:
    free(raw);
    vhd_meta_free(m);
    return ret;
}

int vhd_meta_locator_path(int fd, const struct vhd_meta *m, uint32_t code, char *out,
                          size_t cap)
{
    out[0] = '\0';
    if (!m->has_header || m->footer.disk_type != VHD_TYPE_DIFFERENCING)
        return 0;
    for (int i = 0; i < VHD_LOCATOR_COUNT; i++) {
        const struct vhd_locator *l = &m->header.locators[i];
        uint8_t data[8192];
        int ret;
        if (l->code != code || l->data_length == 0)
            continue;
        if (l->data_length > sizeof(data))
            return -ENAMETOOLONG;
        ret = hv_pread_full(fd, data, l->data_length, l->data_offset);
        if (ret < 0)
            return ret;
        return vhd_locator_decode_path(code, data, l->data_length, out, cap);
    }
    return 0;
}

int vhd_inspect(const char *path, struct vhd_info *info, struct hv_err *err)
{
    struct vhd_meta m;
    int fd;
    int ret;

    memset(info, 0, sizeof(*info));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_errno(err, path, "open");
    ret = vhd_meta_load(fd, path, true, &m, err);
    if (ret < 0)
        goto out;

    info->type = (enum vhd_type)m.footer.disk_type;
    info->size_bytes = m.footer.current_size;
    info->original_size_bytes = m.footer.original_size;
    info->file_bytes = m.file_bytes;
    memcpy(info->uuid, m.footer.uuid, 16);
    info->timestamp = m.footer.timestamp;
    vhd_fourcc_text(m.footer.creator_app, info->creator_app);
    info->creator_version = m.footer.creator_version;
    {
        uint8_t os[4];
        hv_put_be32(os, m.footer.creator_os);
        vhd_fourcc_text(os, info->creator_os);
    }
    info->geometry = m.footer.geometry;
    info->is_footer_ok = true;
    info->is_footer_copy_ok = m.is_footer_copy_ok;
    if (m.has_header) {
        info->is_header_ok = true;
        info->block_bytes = m.header.block_bytes;
        info->max_table_entries = m.header.max_table_entries;
        info->allocated_bytes = (uint64_t)m.allocated_blocks * m.header.block_bytes;
    } else {
        info->allocated_bytes = m.footer.current_size;
    }
    if (info->type == VHD_TYPE_DIFFERENCING) {
        info->has_parent = true;
        memcpy(info->parent_uuid, m.header.parent_uuid, 16);
        info->parent_timestamp = m.header.parent_timestamp;
        vhd_parent_name_get(&m.header, info->parent_name, sizeof(info->parent_name));
        /* A locator that cannot be read or decoded is reported as absent; vhd
         * check says why. */
        if (vhd_meta_locator_path(fd, &m, VHD_PLAT_W2RU, info->parent_relative,
                                  sizeof(info->parent_relative)) < 0)
            info->parent_relative[0] = '\0';
        if (vhd_meta_locator_path(fd, &m, VHD_PLAT_W2KU, info->parent_absolute,
                                  sizeof(info->parent_absolute)) < 0)
            info->parent_absolute[0] = '\0';
        if (vhd_meta_locator_path(fd, &m, VHD_PLAT_MACX, info->parent_macx,
                                  sizeof(info->parent_macx)) < 0)
            info->parent_macx[0] = '\0';
    }
    vhd_meta_free(&m);
out:
    close(fd);
    return ret;
}

static json_t *timestamp_json(uint32_t stamp)
{
    char text[64];
    time_t t = (time_t)((uint64_t)stamp + VHD_EPOCH_OFFSET);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(text);
}

json_t *vhd_info_to_json(const struct vhd_info *info)
{
    json_t *o = json_object();
    json_t *geo;
    json_t *sums;
    char uuid[37];
    char version[16];

    if (!o)
        return NULL;
    json_object_set_new(o, "type", json_string(vhd_type_name(info->type)));
    json_object_set_new(o, "virtual-size", json_integer((json_int_t)info->size_bytes));
    json_object_set_new(o, "original-size", json_integer((json_int_t)info->original_size_bytes));
    json_object_set_new(o, "file-size", json_integer((json_int_t)info->file_bytes));
    json_object_set_new(o, "allocated-bytes", json_integer((json_int_t)info->allocated_bytes));
    if (info->type != VHD_TYPE_FIXED) {
        json_object_set_new(o, "block-size", json_integer(info->block_bytes));
        json_object_set_new(o, "max-table-entries", json_integer(info->max_table_entries));
    }
    hv_uuid_format(info->uuid, uuid);
    json_object_set_new(o, "uuid", json_string(uuid));
    json_object_set_new(o, "timestamp", json_integer(info->timestamp));
    json_object_set_new(o, "created", timestamp_json(info->timestamp));
    json_object_set_new(o, "creator-app", json_string(info->creator_app));
    snprintf(version, sizeof(version), "%u.%u", info->creator_version >> 16,
             info->creator_version & 0xFFFF);
    json_object_set_new(o, "creator-version", json_string(version));
    json_object_set_new(o, "creator-os", json_string(info->creator_os));
    geo = json_object();
    json_object_set_new(geo, "cylinders", json_integer(info->geometry.cylinders));
    json_object_set_new(geo, "heads", json_integer(info->geometry.heads));
    json_object_set_new(geo, "sectors-per-track", json_integer(info->geometry.sectors_per_track));
    json_object_set_new(o, "geometry", geo);
    sums = json_object();
    json_object_set_new(sums, "footer", json_boolean(info->is_footer_ok));
    if (info->type != VHD_TYPE_FIXED) {
        json_object_set_new(sums, "footer-copy", json_boolean(info->is_footer_copy_ok));
        json_object_set_new(sums, "header", json_boolean(info->is_header_ok));
    }
    json_object_set_new(o, "checksums-ok", sums);
    if (info->has_parent) {
        json_t *p = json_object();
        hv_uuid_format(info->parent_uuid, uuid);
        json_object_set_new(p, "uuid", json_string(uuid));
        json_object_set_new(p, "timestamp", json_integer(info->parent_timestamp));
        json_object_set_new(p, "name", json_string(info->parent_name));
        json_object_set_new(p, "relative", json_string(info->parent_relative));
        json_object_set_new(p, "absolute", json_string(info->parent_absolute));
        json_object_set_new(p, "macx", json_string(info->parent_macx));
        json_object_set_new(o, "parent", p);
    }
    return o;
}
