/*
 * format.c — decode, validate and encode the structures of VHD 1.0.
 *
 * Validation is about meaning, not only checksums: a footer whose checksum
 * holds but whose data offset points past the end of the file is as unusable
 * as one with a flipped bit, and the message must say which field is wrong.
 * Leniency follows what real writers do (Windows writes locator data space in
 * bytes, vhd-util leaves spare BAT entries, old tools leave features at 0).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "format.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <time.h>

static const uint8_t footer_cookie[8] = { 'c', 'o', 'n', 'e', 'c', 't', 'i', 'x' };
static const uint8_t header_cookie[8] = { 'c', 'x', 's', 'p', 'a', 'r', 's', 'e' };

uint32_t vhd_checksum(const uint8_t *buf, size_t len, size_t checksum_at)
{
    uint32_t sum = 0;
    for (size_t i = 0; i < len; i++) {
        if (i >= checksum_at && i < checksum_at + 4)
            continue;
        sum += buf[i];
    }
    return ~sum;
}

uint32_t vhd_time_now(void)
{
    time_t now = time(NULL);
    if (now < (time_t)VHD_EPOCH_OFFSET)
        return 0;
    return (uint32_t)((uint64_t)now - VHD_EPOCH_OFFSET);
}

void vhd_fourcc_text(const uint8_t in[4], char out[5])
{
    for (int i = 0; i < 4; i++)
        out[i] = (in[i] >= 0x20 && in[i] < 0x7f) ? (char)in[i] : (in[i] ? '?' : '\0');
    out[4] = '\0';
    /* A NUL inside ("tap\0") ends the text there, as C strings do. */
}

static bool is_power_of_two(uint64_t v)
{
    return v && !(v & (v - 1));
}

/* ---------------------------------------------------------------- geometry */

void vhd_geometry_for_size(uint64_t size_bytes, struct vhd_geometry *g)
{
    uint64_t total = size_bytes / HV_SECTOR_BYTES;
    uint64_t spt, heads, cth;
    const uint64_t max = (uint64_t)VHD_CHS_MAX_CYLINDERS * VHD_CHS_MAX_HEADS * VHD_CHS_MAX_SECTORS;

    /* The algorithm of the VHD specification, appendix "CHS calculation". */
    if (total > max)
        total = max;
    if (total >= 65535ull * 16 * 63) {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        spt = 17;
        cth = total / spt;
        heads = (cth + 1023) / 1024;
        if (heads < 4)
            heads = 4;
        if (cth >= heads * 1024 || heads > 16) {
            spt = 31;
            heads = 16;
            cth = total / spt;
        }
        if (cth >= heads * 1024) {
            spt = 63;
            heads = 16;
            cth = total / spt;
        }
    }
    g->cylinders = (uint16_t)HV_MIN(cth / heads, VHD_CHS_MAX_CYLINDERS);
    g->heads = (uint8_t)heads;
    g->sectors_per_track = (uint8_t)spt;
}

/* ------------------------------------------------------------------ footer */

void vhd_footer_parse(const uint8_t b[VHD_FOOTER_BYTES], struct vhd_footer *f)
{
    memset(f, 0, sizeof(*f));
    memcpy(f->cookie, b, 8);
    f->features = hv_be32(b + 8);
    f->format_version = hv_be32(b + 12);
    f->data_offset = hv_be64(b + 16);
    f->timestamp = hv_be32(b + 24);
    memcpy(f->creator_app, b + 28, 4);
    f->creator_version = hv_be32(b + 32);
    f->creator_os = hv_be32(b + 36);
    f->original_size = hv_be64(b + 40);
    f->current_size = hv_be64(b + 48);
    f->geometry.cylinders = hv_be16(b + 56);
    f->geometry.heads = b[58];
    f->geometry.sectors_per_track = b[59];
    f->disk_type = hv_be32(b + 60);
    f->checksum = hv_be32(b + 64);
    f->computed_checksum = vhd_checksum(b, VHD_FOOTER_BYTES, 64);
    memcpy(f->uuid, b + 68, 16);
    f->saved_state = b[84];
}

int vhd_footer_validate(const struct vhd_footer *f, const char *path, const char *what,
                        uint64_t file_bytes, struct hv_err *err)
{
    if (memcmp(f->cookie, footer_cookie, 8) != 0)
        return hv_err_set(err, -EINVAL, "%s: %s: cookie is not \"conectix\"", path, what);
    if (f->checksum != f->computed_checksum)
        return hv_err_set(err, -EINVAL, "%s: %s: checksum 0x%08x does not match the "
                          "contents (0x%08x)", path, what, f->checksum, f->computed_checksum);
    if (f->features & ~(VHD_FEATURE_TEMPORARY | VHD_FEATURE_RESERVED))
        return hv_err_set(err, -EINVAL, "%s: %s: unknown feature bits 0x%08x", path, what,
                          f->features);
    if (f->format_version >> 16 != 1)
        return hv_err_set(err, -EINVAL, "%s: %s: file format version 0x%08x is not 1.x",
                          path, what, f->format_version);
    if (f->disk_type != VHD_TYPE_FIXED && f->disk_type != VHD_TYPE_DYNAMIC &&
        f->disk_type != VHD_TYPE_DIFFERENCING)
        return hv_err_set(err, -EINVAL, "%s: %s: disk type %u is not fixed (2), dynamic (3) "
                          "or differencing (4)", path, what, f->disk_type);
    if (f->current_size % HV_SECTOR_BYTES)
        return hv_err_set(err, -EINVAL, "%s: %s: current size %" PRIu64 " is not a multiple "
                          "of 512", path, what, f->current_size);
    if (f->current_size > VHD_MAX_READ_SIZE_BYTES)
        return hv_err_set(err, -EINVAL, "%s: %s: current size %" PRIu64 " exceeds the "
                          "format's 2 TiB", path, what, f->current_size);
    if (f->saved_state > 1)
        return hv_err_set(err, -EINVAL, "%s: %s: saved state %u is neither 0 nor 1", path,
                          what, f->saved_state);
    if (f->disk_type == VHD_TYPE_FIXED) {
        /* The spec says 0xFFFFFFFF; some writers put only the low 32 bits. */
        if (f->data_offset != VHD_NO_DATA_OFFSET && f->data_offset != 0xFFFFFFFFu)
            return hv_err_set(err, -EINVAL, "%s: %s: data offset %" PRIu64 " in a fixed "
                              "image (must be 0xFFFFFFFFFFFFFFFF)", path, what,
                              f->data_offset);
        if (file_bytes && file_bytes < f->current_size + VHD_FOOTER_BYTES)
            return hv_err_set(err, -EINVAL, "%s: %s: current size %" PRIu64 " does not fit "
                              "a %" PRIu64 "-byte fixed image", path, what, f->current_size,
                              file_bytes);
    } else {
        if (f->data_offset < VHD_FOOTER_BYTES || f->data_offset % HV_SECTOR_BYTES)
            return hv_err_set(err, -EINVAL, "%s: %s: data offset %" PRIu64 " is not a "
                              "sector after the footer copy", path, what, f->data_offset);
        if (file_bytes &&
            (file_bytes < 2 * VHD_FOOTER_BYTES + VHD_HEADER_BYTES ||
             f->data_offset > file_bytes - VHD_FOOTER_BYTES - VHD_HEADER_BYTES))
            return hv_err_set(err, -EINVAL, "%s: %s: data offset %" PRIu64 " puts the "
                              "dynamic header outside the %" PRIu64 "-byte file", path, what,
                              f->data_offset, file_bytes);
    }
    return 0;
}

int vhd_footer_decode(const uint8_t buf[VHD_FOOTER_BYTES], struct vhd_footer *f,
                      const char *path, const char *what, uint64_t file_bytes,
                      struct hv_err *err)
{
    vhd_footer_parse(buf, f);
    return vhd_footer_validate(f, path, what, file_bytes, err);
}

void vhd_footer_encode(struct vhd_footer *f, uint8_t b[VHD_FOOTER_BYTES])
{
    memset(b, 0, VHD_FOOTER_BYTES);
    memcpy(b, f->cookie, 8);
    hv_put_be32(b + 8, f->features);
    hv_put_be32(b + 12, f->format_version);
    hv_put_be64(b + 16, f->data_offset);
    hv_put_be32(b + 24, f->timestamp);
    memcpy(b + 28, f->creator_app, 4);
    hv_put_be32(b + 32, f->creator_version);
    hv_put_be32(b + 36, f->creator_os);
    hv_put_be64(b + 40, f->original_size);
    hv_put_be64(b + 48, f->current_size);
    hv_put_be16(b + 56, f->geometry.cylinders);
    b[58] = f->geometry.heads;
    b[59] = f->geometry.sectors_per_track;
    hv_put_be32(b + 60, f->disk_type);
    memcpy(b + 68, f->uuid, 16);
    b[84] = f->saved_state;
    f->checksum = vhd_checksum(b, VHD_FOOTER_BYTES, 64);
    f->computed_checksum = f->checksum;
    hv_put_be32(b + 64, f->checksum);
}

void vhd_footer_init(struct vhd_footer *f, enum vhd_type type, uint64_t size_bytes)
{
    memset(f, 0, sizeof(*f));
    memcpy(f->cookie, footer_cookie, 8);
    f->features = VHD_FEATURE_RESERVED;
    f->format_version = VHD_FORMAT_VERSION;
    f->data_offset = type == VHD_TYPE_FIXED ? VHD_NO_DATA_OFFSET : VHD_FOOTER_BYTES;
    f->timestamp = vhd_time_now();
    memcpy(f->creator_app, VHD_CREATOR_APP, 4);
    f->creator_version = VHD_CREATOR_VERSION;
    f->creator_os = VHD_CREATOR_OS;
    f->original_size = size_bytes;
    f->current_size = size_bytes;
    vhd_geometry_for_size(size_bytes, &f->geometry);
    f->disk_type = type;
    hv_uuid_generate(f->uuid);
}

void vhd_footer_resized(struct vhd_footer *nf, const struct vhd_footer *old, uint64_t size_bytes)
{
    *nf = *old;
    nf->current_size = size_bytes;
    nf->original_size = size_bytes;
    vhd_geometry_for_size(size_bytes, &nf->geometry);
    memcpy(nf->creator_app, VHD_CREATOR_APP, 4);
    nf->creator_version = VHD_CREATOR_VERSION;
    nf->creator_os = VHD_CREATOR_OS;
}

/* ------------------------------------------------------------------ header */

void vhd_header_parse(const uint8_t b[VHD_HEADER_BYTES], struct vhd_header *h)
{
    memset(h, 0, sizeof(*h));
    memcpy(h->cookie, b, 8);
    h->data_offset = hv_be64(b + 8);
    h->table_offset = hv_be64(b + 16);
    h->header_version = hv_be32(b + 24);
    h->max_table_entries = hv_be32(b + 28);
    h->block_bytes = hv_be32(b + 32);
    h->checksum = hv_be32(b + 36);
    h->computed_checksum = vhd_checksum(b, VHD_HEADER_BYTES, 36);
    memcpy(h->parent_uuid, b + 40, 16);
    h->parent_timestamp = hv_be32(b + 56);
    for (int i = 0; i < VHD_PARENT_NAME_UNITS; i++)
        h->parent_name[i] = hv_be16(b + 64 + 2 * i);
    for (int i = 0; i < VHD_LOCATOR_COUNT; i++) {
        const uint8_t *e = b + 576 + 24 * i;
        h->locators[i].code = hv_be32(e);
        h->locators[i].data_space = hv_be32(e + 4);
        h->locators[i].data_length = hv_be32(e + 8);
        h->locators[i].data_offset = hv_be64(e + 16);
    }
}

void vhd_header_encode(struct vhd_header *h, uint8_t b[VHD_HEADER_BYTES])
{
    memset(b, 0, VHD_HEADER_BYTES);
    memcpy(b, h->cookie, 8);
    hv_put_be64(b + 8, h->data_offset);
    hv_put_be64(b + 16, h->table_offset);
    hv_put_be32(b + 24, h->header_version);
    hv_put_be32(b + 28, h->max_table_entries);
    hv_put_be32(b + 32, h->block_bytes);
    memcpy(b + 40, h->parent_uuid, 16);
    hv_put_be32(b + 56, h->parent_timestamp);
    for (int i = 0; i < VHD_PARENT_NAME_UNITS; i++)
        hv_put_be16(b + 64 + 2 * i, h->parent_name[i]);
    for (int i = 0; i < VHD_LOCATOR_COUNT; i++) {
        uint8_t *e = b + 576 + 24 * i;
        hv_put_be32(e, h->locators[i].code);
        hv_put_be32(e + 4, h->locators[i].data_space);
        hv_put_be32(e + 8, h->locators[i].data_length);
        hv_put_be64(e + 16, h->locators[i].data_offset);
    }
    h->checksum = vhd_checksum(b, VHD_HEADER_BYTES, 36);
    h->computed_checksum = h->checksum;
    hv_put_be32(b + 36, h->checksum);
}

uint64_t vhd_locator_space_bytes(const struct vhd_locator *loc)
{
    if (loc->data_space < HV_SECTOR_BYTES)
        return (uint64_t)loc->data_space * HV_SECTOR_BYTES;
    if (loc->data_space % HV_SECTOR_BYTES == 0)
        return loc->data_space;
    return 0;
}

static bool locator_code_known(uint32_t code)
{
    return code == VHD_PLAT_WI2R || code == VHD_PLAT_WI2K || code == VHD_PLAT_W2RU ||
           code == VHD_PLAT_W2KU || code == VHD_PLAT_MAC || code == VHD_PLAT_MACX;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

int vhd_header_validate(const struct vhd_header *h, const struct vhd_footer *f,
                        const char *path, uint64_t file_bytes, struct hv_err *err)
{
    uint64_t footer_offset = file_bytes ? file_bytes - VHD_FOOTER_BYTES : UINT64_MAX;
    uint64_t bat_bytes;
    uint64_t needed;
    char name[1024];

    if (memcmp(h->cookie, header_cookie, 8) != 0)
        return hv_err_set(err, -EINVAL, "%s: dynamic header: cookie is not \"cxsparse\"",
                          path);
    if (h->checksum != h->computed_checksum)
        return hv_err_set(err, -EINVAL, "%s: dynamic header: checksum 0x%08x does not match "
                          "the contents (0x%08x)", path, h->checksum, h->computed_checksum);
    if (h->header_version != VHD_HEADER_VERSION)
        return hv_err_set(err, -EINVAL, "%s: dynamic header: version 0x%08x is not 1.0",
                          path, h->header_version);
    if (!is_power_of_two(h->block_bytes))
        return hv_err_set(err, -EINVAL, "%s: dynamic header: block size %u is not a power "
                          "of two", path, h->block_bytes);
    if (h->block_bytes < VHD_MIN_BLOCK_BYTES || h->block_bytes > VHD_MAX_BLOCK_BYTES)
        return hv_err_set(err, -EINVAL, "%s: dynamic header: block size %u is outside "
                          "512 KiB..256 MiB", path, h->block_bytes);
    needed = vhd_blocks_for_size(f->current_size, h->block_bytes);
    if (h->max_table_entries < needed)
        return hv_err_set(err, -EINVAL, "%s: dynamic header: max table entries %u cover "
                          "%" PRIu64 " bytes, less than the disk's %" PRIu64, path,
                          h->max_table_entries, (uint64_t)h->max_table_entries * h->block_bytes,
                          f->current_size);
    if (h->max_table_entries > HV_DIV_ROUND_UP(VHD_MAX_READ_SIZE_BYTES, h->block_bytes))
        return hv_err_set(err, -EINVAL, "%s: dynamic header: max table entries %u describe "
                          "more than the format's 2 TiB", path, h->max_table_entries);
    bat_bytes = vhd_bat_bytes(h->max_table_entries);
    if (h->table_offset % HV_SECTOR_BYTES || h->table_offset < VHD_FOOTER_BYTES)
        return hv_err_set(err, -EINVAL, "%s: dynamic header: BAT offset %" PRIu64 " is not "
                          "a sector after the footer copy", path, h->table_offset);
    if (ranges_overlap(h->table_offset, bat_bytes, f->data_offset, VHD_HEADER_BYTES))
        return hv_err_set(err, -EINVAL, "%s: dynamic header: BAT at %" PRIu64 " overlaps "
                          "the header at %" PRIu64, path, h->table_offset, f->data_offset);
    if (h->table_offset > footer_offset || bat_bytes > footer_offset - h->table_offset)
        return hv_err_set(err, -EINVAL, "%s: dynamic header: BAT at %" PRIu64 " (%" PRIu64
                          " bytes) does not end before the footer at %" PRIu64, path,
                          h->table_offset, bat_bytes, footer_offset);

    if (f->disk_type == VHD_TYPE_DIFFERENCING) {
        if (hv_uuid_is_nil(h->parent_uuid))
            return hv_err_set(err, -EINVAL, "%s: dynamic header: parent unique id is nil in a "
                              "differencing image", path);
        if (vhd_parent_name_get(h, name, sizeof(name)) < 0)
            return hv_err_set(err, -EINVAL, "%s: dynamic header: parent name is not valid "
                              "UTF-16", path);
    }
    for (int i = 0; i < VHD_LOCATOR_COUNT; i++) {
        const struct vhd_locator *l = &h->locators[i];
        uint64_t space = vhd_locator_space_bytes(l);
        if (l->code == VHD_PLAT_NONE)
            continue;
        /* Dynamic images have no parent; what is in their locators is never read. */
        if (f->disk_type != VHD_TYPE_DIFFERENCING)
            continue;
        if (!locator_code_known(l->code))
            return hv_err_set(err, -EINVAL, "%s: dynamic header: parent locator %d: unknown "
                              "platform code 0x%08x", path, i, l->code);
        if (space == 0)
            return hv_err_set(err, -EINVAL, "%s: dynamic header: parent locator %d: data "
                              "space %u is neither sectors nor whole sectors of bytes", path,
                              i, l->data_space);
        if (l->data_length > space)
            return hv_err_set(err, -EINVAL, "%s: dynamic header: parent locator %d: data "
                              "length %u exceeds its space of %" PRIu64 " bytes", path, i,
                              l->data_length, space);
        if (l->data_offset % HV_SECTOR_BYTES || l->data_offset < VHD_FOOTER_BYTES)
            return hv_err_set(err, -EINVAL, "%s: dynamic header: parent locator %d: data "
                              "offset %" PRIu64 " is not a sector after the footer copy", path,
                              i, l->data_offset);
        if (ranges_overlap(l->data_offset, space, f->data_offset, VHD_HEADER_BYTES) ||
            ranges_overlap(l->data_offset, space, h->table_offset, bat_bytes))
            return hv_err_set(err, -EINVAL, "%s: dynamic header: parent locator %d at %" PRIu64
                              " overlaps the header or the BAT", path, i, l->data_offset);
        /* Only the bytes in use must lie before the footer: Windows reserves
         * space that the file may not have. */
        if (l->data_offset > footer_offset || l->data_length > footer_offset - l->data_offset)
            return hv_err_set(err, -EINVAL, "%s: dynamic header: parent locator %d at %" PRIu64
                              " (%u bytes) does not end before the footer", path, i,
                              l->data_offset, l->data_length);
    }
    return 0;
}

int vhd_header_decode(const uint8_t buf[VHD_HEADER_BYTES], const struct vhd_footer *f,
                      struct vhd_header *h, const char *path, uint64_t file_bytes,
                      struct hv_err *err)
{
    vhd_header_parse(buf, h);
    return vhd_header_validate(h, f, path, file_bytes, err);
}

uint64_t vhd_metadata_end(const struct vhd_footer *f, const struct vhd_header *h)
{
    uint64_t end = HV_MAX((uint64_t)VHD_FOOTER_BYTES, f->data_offset + VHD_HEADER_BYTES);
    end = HV_MAX(end, h->table_offset + vhd_bat_bytes(h->max_table_entries));
    if (f->disk_type == VHD_TYPE_DIFFERENCING) {
        for (int i = 0; i < VHD_LOCATOR_COUNT; i++) {
            const struct vhd_locator *l = &h->locators[i];
            if (l->code != VHD_PLAT_NONE)
                end = HV_MAX(end, l->data_offset + vhd_locator_space_bytes(l));
        }
    }
    return end;
}

/* ------------------------------------------------------------ UTF-8/UTF-16 */

/* Next code point of UTF-8 text; -1 on invalid input. */
static int32_t utf8_next(const unsigned char **p)
{
    const unsigned char *s = *p;
    int32_t cp;
    int n;
    if (s[0] < 0x80) {
        cp = s[0];
        n = 0;
    } else if ((s[0] & 0xE0) == 0xC0) {
        cp = s[0] & 0x1F;
        n = 1;
    } else if ((s[0] & 0xF0) == 0xE0) {
        cp = s[0] & 0x0F;
        n = 2;
    } else if ((s[0] & 0xF8) == 0xF0) {
        cp = s[0] & 0x07;
        n = 3;
    } else {
        return -1;
    }
    for (int i = 1; i <= n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return -1;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return -1;
    *p = s + n + 1;
    return cp;
}

/* UTF-8 to UTF-16 code units; returns the unit count, -EILSEQ, -ENAMETOOLONG. */
static int utf8_to_utf16(const char *in, uint16_t *out, size_t cap)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t n = 0;
    while (*p) {
        int32_t cp = utf8_next(&p);
        if (cp < 0)
            return -EILSEQ;
        if (cp >= 0x10000) {
            if (n + 2 > cap)
                return -ENAMETOOLONG;
            cp -= 0x10000;
            out[n++] = (uint16_t)(0xD800 | (cp >> 10));
            out[n++] = (uint16_t)(0xDC00 | (cp & 0x3FF));
        } else {
            if (n + 1 > cap)
                return -ENAMETOOLONG;
            out[n++] = (uint16_t)cp;
        }
    }
    return (int)n;
}

/* UTF-16 code units (stops at a NUL unit) to UTF-8. */
static int utf16_to_utf8(const uint16_t *in, size_t units, char *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < units && in[i]; i++) {
        uint32_t cp = in[i];
        char tmp[4];
        int len;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (i + 1 >= units || in[i + 1] < 0xDC00 || in[i + 1] > 0xDFFF)
                return -EILSEQ;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (in[i + 1] - 0xDC00);
            i++;
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return -EILSEQ;
        }
        if (cp < 0x80) {
            tmp[0] = (char)cp;
            len = 1;
        } else if (cp < 0x800) {
            tmp[0] = (char)(0xC0 | (cp >> 6));
            tmp[1] = (char)(0x80 | (cp & 0x3F));
            len = 2;
        } else if (cp < 0x10000) {
            tmp[0] = (char)(0xE0 | (cp >> 12));
            tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
            tmp[2] = (char)(0x80 | (cp & 0x3F));
            len = 3;
        } else {
            tmp[0] = (char)(0xF0 | (cp >> 18));
            tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
            tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
            tmp[3] = (char)(0x80 | (cp & 0x3F));
            len = 4;
        }
        if (n + (size_t)len + 1 > cap)
            return -ENAMETOOLONG;
        memcpy(out + n, tmp, (size_t)len);
        n += (size_t)len;
    }
    if (n + 1 > cap)
        return -ENAMETOOLONG;
    out[n] = '\0';
    return (int)n;
}

int vhd_parent_name_get(const struct vhd_header *h, char *out, size_t cap)
{
    int ret = utf16_to_utf8(h->parent_name, VHD_PARENT_NAME_UNITS, out, cap);
    return ret < 0 ? ret : 0;
}

int vhd_parent_name_set(struct vhd_header *h, const char *utf8)
{
    uint16_t units[VHD_PARENT_NAME_UNITS];
    int n = utf8_to_utf16(utf8, units, VHD_PARENT_NAME_UNITS);
    if (n < 0)
        return n;
    memset(h->parent_name, 0, sizeof(h->parent_name));
    memcpy(h->parent_name, units, (size_t)n * 2);
    return 0;
}

int vhd_locator_decode_path(uint32_t code, const uint8_t *data, size_t len, char *out,
                            size_t cap)
{
    if (code == VHD_PLAT_W2KU || code == VHD_PLAT_W2RU) {
        uint16_t units[2048];
        size_t count = HV_MIN(len / 2, HV_ARRAY_SIZE(units));
        int ret;
        for (size_t i = 0; i < count; i++)
            units[i] = hv_le16(data + 2 * i);
        ret = utf16_to_utf8(units, count, out, cap);
        if (ret < 0)
            return ret;
        for (char *c = out; *c; c++)
            if (*c == '\\')
                *c = '/';
        return out[0] ? 0 : -ENOENT;
    }
    if (code == VHD_PLAT_MACX) {
        size_t i = 0;
        size_t n = 0;
        while (len && data[len - 1] == '\0')
            len--;
        if (len >= 7 && memcmp(data, "file://", 7) == 0)
            i = 7;
        for (; i < len; i++) {
            char c = (char)data[i];
            if (c == '\0')
                return -EILSEQ;
            if (c == '%' && i + 2 < len && hv_hex_value((char)data[i + 1]) >= 0 &&
                hv_hex_value((char)data[i + 2]) >= 0) {
                c = (char)(hv_hex_value((char)data[i + 1]) * 16 +
                           hv_hex_value((char)data[i + 2]));
                i += 2;
            }
            if (n + 2 > cap)
                return -ENAMETOOLONG;
            out[n++] = c;
        }
        out[n] = '\0';
        /* "file://./parent.vhd" is how some tools write a relative MacX. */
        return n ? 0 : -ENOENT;
    }
    return -ENOTSUP;
}

int vhd_locator_encode_path(uint32_t code, const char *path, uint8_t *out, size_t cap)
{
    if (code == VHD_PLAT_W2KU || code == VHD_PLAT_W2RU) {
        uint16_t units[2048];
        char text[4096];
        size_t pos = 0;
        int n;
        /* Windows wants a relative locator to start with ".\". */
        if (code == VHD_PLAT_W2RU && strncmp(path, "./", 2) != 0 &&
            strncmp(path, "../", 3) != 0) {
            memcpy(text, "./", 2);
            pos = 2;
        }
        if (strlen(path) + pos + 1 > sizeof(text))
            return -ENAMETOOLONG;
        strcpy(text + pos, path);
        for (char *c = text; *c; c++)
            if (*c == '/')
                *c = '\\';
        n = utf8_to_utf16(text, units, HV_ARRAY_SIZE(units));
        if (n < 0)
            return n;
        if ((size_t)n * 2 > cap)
            return -ENAMETOOLONG;
        for (int i = 0; i < n; i++)
            hv_put_le16(out + 2 * i, units[i]);
        return n * 2;
    }
    if (code == VHD_PLAT_MACX) {
        static const char keep[] = "/._-~+,:@=";
        size_t n = 0;
        if (cap < 7)
            return -ENAMETOOLONG;
        memcpy(out, "file://", 7);
        n = 7;
        for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
            bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                         (*p >= '0' && *p <= '9') || (*p >= 0x80) || strchr(keep, *p);
            if (plain) {
                if (n + 1 > cap)
                    return -ENAMETOOLONG;
                out[n++] = *p;
            } else {
                if (n + 3 > cap)
                    return -ENAMETOOLONG;
                out[n++] = '%';
                out[n++] = "0123456789ABCDEF"[*p >> 4];
                out[n++] = "0123456789ABCDEF"[*p & 15];
            }
        }
        return (int)n;
    }
    return -ENOTSUP;
}

/* --------------------------------------------------------------------- BAT */

void vhd_bat_parse(const uint8_t *buf, uint32_t count, uint32_t *bat)
{
    for (uint32_t i = 0; i < count; i++)
        bat[i] = hv_be32(buf + 4 * (size_t)i);
}

void vhd_bat_encode(const uint32_t *bat, uint32_t count, uint8_t *buf)
{
    for (uint32_t i = 0; i < count; i++)
        hv_put_be32(buf + 4 * (size_t)i, bat[i]);
}

struct bat_slot {
    uint64_t start;
    uint32_t index;
};

static int slot_cmp(const void *a, const void *b)
{
    const struct bat_slot *x = a;
    const struct bat_slot *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

int vhd_bat_validate(const uint32_t *bat, const struct vhd_footer *f, const struct vhd_header *h,
                     uint64_t footer_offset, vhd_bat_problem_fn report, void *arg)
{
    uint32_t count = h->max_table_entries;
    uint64_t extent = (uint64_t)vhd_bitmap_bytes(h->block_bytes) + h->block_bytes;
    uint64_t bat_bytes = vhd_bat_bytes(count);
    struct bat_slot *slots;
    uint32_t used = 0;
    int problems = 0;
    char msg[256];

    slots = malloc(sizeof(*slots) * (count ? count : 1));
    if (!slots)
        return -ENOMEM;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t start;
        const char *clash = NULL;
        if (bat[i] == VHD_BAT_UNALLOCATED)
            continue;
        start = (uint64_t)bat[i] * HV_SECTOR_BYTES;
        if (start > footer_offset || extent > footer_offset - start) {
            snprintf(msg, sizeof(msg), "BAT entry %u: block at %" PRIu64 " (%" PRIu64
                     " bytes) does not end before the footer at %" PRIu64, i, start, extent,
                     footer_offset);
            clash = msg;
        } else if (ranges_overlap(start, extent, 0, VHD_FOOTER_BYTES)) {
            clash = "footer copy";
        } else if (ranges_overlap(start, extent, f->data_offset, VHD_HEADER_BYTES)) {
            clash = "dynamic header";
        } else if (ranges_overlap(start, extent, h->table_offset, bat_bytes)) {
            clash = "BAT";
        } else if (f->disk_type == VHD_TYPE_DIFFERENCING) {
            for (int l = 0; l < VHD_LOCATOR_COUNT; l++) {
                const struct vhd_locator *loc = &h->locators[l];
                if (loc->code != VHD_PLAT_NONE &&
                    ranges_overlap(start, extent, loc->data_offset, loc->data_length)) {
                    clash = "a parent locator";
                    break;
                }
            }
        }
        if (clash) {
            if (clash != msg)
                snprintf(msg, sizeof(msg), "BAT entry %u: block at %" PRIu64 " overlaps the %s",
                         i, start, clash);
            if (report)
                report(arg, i, msg);
            problems++;
            continue;
        }
        slots[used].start = start;
        slots[used].index = i;
        used++;
    }
    qsort(slots, used, sizeof(*slots), slot_cmp);
    for (uint32_t k = 1; k < used; k++) {
        /* Compare with the furthest-reaching earlier block, so that one
         * misplaced entry is one problem, not a cascade. */
        const struct bat_slot *prev = &slots[k - 1];
        if (slots[k].start < prev->start + extent) {
            snprintf(msg, sizeof(msg), "BAT entry %u: block at %" PRIu64 " overlaps the block "
                     "of entry %u at %" PRIu64, slots[k].index, slots[k].start, prev->index,
                     prev->start);
            if (report)
                report(arg, slots[k].index, msg);
            problems++;
            slots[k] = *prev;    /* keep the earlier block as the reference */
        }
    }
    free(slots);
    return problems;
}

/* ------------------------------------------------------------------ bitmap */

void vhd_bitmap_set(uint8_t *bm, uint32_t first, uint32_t count)
{
    uint32_t s = first;
    uint32_t end = first + count;
    while (s < end && (s & 7)) {
        bm[s >> 3] |= (uint8_t)(0x80 >> (s & 7));
        s++;
    }
    if (end - s >= 8) {
        memset(bm + (s >> 3), 0xFF, (end - s) >> 3);
        s += (end - s) & ~7u;
    }
    while (s < end) {
        bm[s >> 3] |= (uint8_t)(0x80 >> (s & 7));
        s++;
    }
}

void vhd_bitmap_clear(uint8_t *bm, uint32_t first, uint32_t count)
{
    uint32_t s = first;
    uint32_t end = first + count;
    while (s < end && (s & 7)) {
        bm[s >> 3] &= (uint8_t)~(0x80 >> (s & 7));
        s++;
    }
    if (end - s >= 8) {
        memset(bm + (s >> 3), 0, (end - s) >> 3);
        s += (end - s) & ~7u;
    }
    while (s < end) {
        bm[s >> 3] &= (uint8_t)~(0x80 >> (s & 7));
        s++;
    }
}

uint32_t vhd_bitmap_run(const uint8_t *bm, uint32_t first, uint32_t limit)
{
    bool value = vhd_bitmap_test(bm, first);
    uint8_t whole = value ? 0xFF : 0x00;
    uint32_t s = first + 1;
    while (s < limit) {
        if ((s & 7) == 0 && limit - s >= 8) {
            if (bm[s >> 3] == whole) {
                s += 8;
                continue;
            }
        }
        if (vhd_bitmap_test(bm, s) != value)
            break;
        s++;
    }
    return s - first;
}

bool vhd_bitmap_all_set(const uint8_t *bm, uint32_t first, uint32_t count)
{
    return count == 0 ||
           (vhd_bitmap_test(bm, first) && vhd_bitmap_run(bm, first, first + count) == count);
}
