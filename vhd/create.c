/*
 * create.c — new fixed, dynamic and differencing images.
 *
 * Layout of a dynamic or differencing image as hvstor writes it:
 *   0      footer copy
 *   512    dynamic header
 *   4096   BAT, padded to 4 KiB so that the engine writes it back with
 *          aligned O_DIRECT writes
 *   ...    parent locators (differencing): W2ru, W2ku, MacX, 512-byte aligned
 *   ...    footer
 * Blocks are appended by the engine, each placed so that its data starts on a
 * 4 KiB boundary (the bitmap sits in the sector just before).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "engine.h"
#include "ops.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define BAT_OFFSET 4096u

static int sync_directory_of(const char *path)
{
    char copy[PATH_MAX];
    int fd;
    int ret = 0;
    snprintf(copy, sizeof(copy), "%s", path);
    fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fsync(fd) < 0)
        ret = -errno;
    close(fd);
    return ret;
}

static int validate_options(const char *path, const struct vhd_create_options *opt,
                            struct hv_err *err)
{
    if (opt->type != VHD_TYPE_FIXED && opt->type != VHD_TYPE_DYNAMIC &&
        opt->type != VHD_TYPE_DIFFERENCING)
        return hv_err_set(err, -EINVAL, "%s: unknown image type %d", path, (int)opt->type);
    if (opt->type == VHD_TYPE_DIFFERENCING) {
        if (!opt->parent_path || !opt->parent_path[0])
            return hv_err_set(err, -EINVAL, "%s: a differencing image needs a parent", path);
    } else {
        if (opt->parent_path)
            return hv_err_set(err, -EINVAL, "%s: only differencing images have a parent",
                              path);
        if (opt->size_bytes == 0)
            return hv_err_set(err, -EINVAL, "%s: size must be given and above 0", path);
    }
    if (opt->size_bytes % HV_SECTOR_BYTES)
        return hv_err_set(err, -EINVAL, "%s: size %" PRIu64 " is not a multiple of 512 "
                          "bytes (try %" PRIu64 ")", path, opt->size_bytes,
                          HV_ALIGN_UP(opt->size_bytes, HV_SECTOR_BYTES));
    if (opt->size_bytes > VHD_MAX_SIZE_BYTES)
        return hv_err_set(err, -EINVAL, "%s: size %" PRIu64 " exceeds VHD's 2040 GiB", path,
                          opt->size_bytes);
    if (opt->block_bytes && opt->type == VHD_TYPE_FIXED)
        return hv_err_set(err, -EINVAL, "%s: fixed images have no block size", path);
    if (opt->block_bytes && (opt->block_bytes & (opt->block_bytes - 1)))
        return hv_err_set(err, -EINVAL, "%s: block size %u is not a power of two", path,
                          opt->block_bytes);
    if (opt->block_bytes &&
        (opt->block_bytes < VHD_MIN_BLOCK_BYTES || opt->block_bytes > VHD_MAX_BLOCK_BYTES))
        return hv_err_set(err, -EINVAL, "%s: block size %u is outside 512 KiB..256 MiB", path,
                          opt->block_bytes);
    return 0;
}

struct parent_facts {
    char absolute[PATH_MAX];
    uint8_t uuid[16];
    uint32_t timestamp;
    uint64_t size_bytes;
    uint32_t block_bytes;            /* 0 for a fixed parent */
};

static int read_parent(const char *path, const char *parent_path, struct parent_facts *p,
                       struct hv_err *err)
{
    struct vhd_meta m;
    int fd;
    int ret;

    if (!realpath(parent_path, p->absolute))
        return hv_err_errno(err, parent_path, "parent");
    fd = open(p->absolute, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_errno(err, parent_path, "open");
    ret = vhd_meta_load(fd, parent_path, false, &m, err);
    close(fd);
    if (ret < 0) {
        hv_err_prefix(err, "%s: parent", path);
        return ret;
    }
    memcpy(p->uuid, m.footer.uuid, 16);
    p->timestamp = m.footer.timestamp;
    p->size_bytes = m.footer.current_size;
    p->block_bytes = m.has_header ? m.header.block_bytes : 0;
    vhd_meta_free(&m);
    return 0;
}

static int create_fixed(int fd, const char *path, uint64_t size, struct hv_err *err)
{
    struct vhd_footer f;
    uint8_t buf[VHD_FOOTER_BYTES];
    int ret;

    /* Preallocated, not sparse: a fixed disk must not run out of space later.
     * Unwritten extents make this take milliseconds even for 40 GiB. */
    if (fallocate(fd, 0, 0, (off_t)(size + VHD_FOOTER_BYTES)) < 0) {
        if (errno != EOPNOTSUPP)
            return hv_err_errno(err, path, "fallocate");
        hv_warn("%s: the file system cannot preallocate; the fixed image is sparse", path);
    }
    vhd_footer_init(&f, VHD_TYPE_FIXED, size);
    vhd_footer_encode(&f, buf);
    ret = hv_pwrite_full(fd, buf, VHD_FOOTER_BYTES, size);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: writing the footer: %s", path, strerror(-ret));
    return 0;
}

static int create_sparse(int fd, const char *path, const struct vhd_create_options *opt,
                         const struct parent_facts *parent, struct hv_err *err)
{
    struct vhd_footer f;
    struct vhd_header h;
    uint64_t size = opt->size_bytes;
    uint32_t block = opt->block_bytes;
    uint32_t entries;
    uint64_t bat_area;
    uint64_t pos;
    uint64_t meta_bytes;
    uint8_t *image = NULL;
    int ret;

    if (parent) {
        if (size == 0)
            size = parent->size_bytes;
        if (block == 0)
            block = parent->block_bytes;
    }
    if (block == 0)
        block = VHD_DEFAULT_BLOCK_BYTES;
    entries = vhd_blocks_for_size(size, block);
    bat_area = HV_ALIGN_UP(vhd_bat_bytes(entries), 4096);

    vhd_footer_init(&f, opt->type, size);
    memset(&h, 0, sizeof(h));
    memcpy(h.cookie, "cxsparse", 8);
    h.data_offset = UINT64_MAX;
    h.table_offset = BAT_OFFSET;
    h.header_version = VHD_HEADER_VERSION;
    h.max_table_entries = entries;
    h.block_bytes = block;
    pos = BAT_OFFSET + bat_area;

    /* Locator payloads, staged here and placed after the BAT. */
    struct {
        uint32_t code;
        uint8_t data[8192];
        int len;
    } locs[3];
    int loc_count = 0;
    if (parent) {
        char child_dir[PATH_MAX];
        char copy[PATH_MAX];
        char rel[PATH_MAX];
        const char *base = strrchr(parent->absolute, '/');

        memcpy(h.parent_uuid, parent->uuid, 16);
        h.parent_timestamp = parent->timestamp;
        /* The file name alone, as vhd-util writes it: libvhdi (vhdimount)
         * looks for the parent under this name beside the child, and the
         * locators carry the paths. */
        if (vhd_parent_name_set(&h, base ? base + 1 : parent->absolute) < 0)
            return hv_err_set(err, -ENAMETOOLONG, "%s: parent file name is too long for "
                              "the header (256 UTF-16 units)", path);
        snprintf(copy, sizeof(copy), "%s", path);
        if (!realpath(dirname(copy), child_dir))
            return hv_err_errno(err, path, "directory");
        ret = op_relative_path(child_dir, parent->absolute, rel, sizeof(rel));
        if (ret < 0)
            return hv_err_set(err, ret, "%s: relative path to the parent is too long", path);
        locs[0].code = VHD_PLAT_W2RU;
        locs[0].len = vhd_locator_encode_path(VHD_PLAT_W2RU, rel, locs[0].data,
                                              sizeof(locs[0].data));
        locs[1].code = VHD_PLAT_W2KU;
        locs[1].len = vhd_locator_encode_path(VHD_PLAT_W2KU, parent->absolute, locs[1].data,
                                              sizeof(locs[1].data));
        locs[2].code = VHD_PLAT_MACX;
        locs[2].len = vhd_locator_encode_path(VHD_PLAT_MACX, parent->absolute, locs[2].data,
                                              sizeof(locs[2].data));
        for (int i = 0; i < 3; i++) {
            if (locs[i].len < 0)
                return hv_err_set(err, locs[i].len, "%s: parent path does not fit a locator",
                                  path);
            uint32_t space = (uint32_t)HV_ALIGN_UP((uint64_t)HV_MAX(locs[i].len, 1), 512);
            /* data_space in bytes, as Windows writes it (readers accept both). */
            h.locators[i] = (struct vhd_locator){ locs[i].code, space, (uint32_t)locs[i].len,
                                                  pos };
            pos += space;
            loc_count++;
        }
    }
    meta_bytes = pos;

    image = calloc(1, meta_bytes + VHD_FOOTER_BYTES);
    if (!image)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", path);
    vhd_footer_encode(&f, image);
    vhd_header_encode(&h, image + VHD_FOOTER_BYTES);
    memset(image + BAT_OFFSET, 0xFF, bat_area);
    for (int i = 0; i < loc_count; i++)
        memcpy(image + h.locators[i].data_offset, locs[i].data, (size_t)locs[i].len);
    memcpy(image + meta_bytes, image, VHD_FOOTER_BYTES);
    ret = hv_pwrite_full(fd, image, meta_bytes + VHD_FOOTER_BYTES, 0);
    free(image);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: write: %s", path, strerror(-ret));
    return 0;
}

int vhd_create(const char *path, const struct vhd_create_options *opt, struct hv_err *err)
{
    struct parent_facts parent;
    struct vhd_create_options o = *opt;
    bool created = false;
    int fd = -1;
    int ret;

    ret = validate_options(path, opt, err);
    if (ret < 0)
        return ret;
    if (o.type == VHD_TYPE_DIFFERENCING) {
        ret = read_parent(path, o.parent_path, &parent, err);
        if (ret < 0)
            return ret;
        if (o.size_bytes && o.size_bytes != parent.size_bytes)
            return hv_err_set(err, -EINVAL, "%s: size %" PRIu64 " differs from the parent's "
                              "%" PRIu64 " (%s)", path, o.size_bytes, parent.size_bytes,
                              o.parent_path);
    }
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return hv_err_errno(err, path, "create");
    created = true;
    if (o.type == VHD_TYPE_FIXED)
        ret = create_fixed(fd, path, o.size_bytes, err);
    else
        ret = create_sparse(fd, path, &o, o.type == VHD_TYPE_DIFFERENCING ? &parent : NULL,
                            err);
    if (ret < 0)
        goto fail;
    if (fsync(fd) < 0) {
        ret = hv_err_errno(err, path, "fsync");
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        ret = hv_err_errno(err, path, "close");
        goto fail;
    }
    fd = -1;
    ret = sync_directory_of(path);
    if (ret < 0) {
        hv_err_set(err, ret, "%s: syncing its directory: %s", path, strerror(-ret));
        goto fail;
    }
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    if (created)
        unlink(path);
    return ret;
}
