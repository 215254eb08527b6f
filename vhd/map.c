/*
 * map.c — `vhd map`: which ranges of a chain's virtual disk hold data, and
 * where (which layer, which file offset), like `qemu-img map`.
 *
 * The engine answers BLOCK_STATUS with runs that share one layer; file
 * offsets are not part of the bdev interface, so this file loads each
 * layer's BAT itself (read-only, the same validated loader the engine uses)
 * and splits a run wherever the layer's blocks are not contiguous in the
 * file. Everything the map says about allocation comes from the engine, so
 * the map shows exactly what a read would do.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "engine.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

struct map_layer {
    const char *path;
    struct vhd_meta meta;
    bool is_loaded;
};

struct map_walk {
    vhd_map_fn fn;
    void *arg;
    struct vhd_map_extent cur;
    bool has_cur;
};

static bool can_merge(const struct vhd_map_extent *a, const struct vhd_map_extent *b)
{
    if (a->depth != b->depth || a->is_present != b->is_present || a->is_zero != b->is_zero ||
        a->is_data != b->is_data || a->has_offset != b->has_offset)
        return false;
    if (a->start + a->length != b->start)
        return false;
    return !a->has_offset || a->offset + a->length == b->offset;
}

static int emit(struct map_walk *w, const struct vhd_map_extent *ext)
{
    int ret = 0;
    if (w->has_cur && can_merge(&w->cur, ext)) {
        w->cur.length += ext->length;
        return 0;
    }
    if (w->has_cur)
        ret = w->fn(w->arg, &w->cur);
    w->cur = *ext;
    w->has_cur = true;
    return ret;
}

/* A run that layer `l` holds: one extent per stretch that is contiguous in
 * the layer's file. */
static int emit_held(struct map_walk *w, struct map_layer *l, int depth, uint32_t status,
                     uint64_t start, uint64_t length)
{
    struct vhd_map_extent ext = {
        .depth = depth,
        .is_present = true,
        .is_zero = (status & BDEV_STATUS_ZERO) != 0,
        .is_data = (status & BDEV_STATUS_ZERO) == 0,
        .has_offset = true,
        .filename = l->path,
    };
    const struct vhd_footer *f = &l->meta.footer;

    if (f->disk_type == VHD_TYPE_FIXED) {
        ext.start = start;
        ext.length = length;
        ext.offset = start;
        return emit(w, &ext);
    }
    while (length > 0) {
        uint32_t block_bytes = l->meta.header.block_bytes;
        uint32_t b = (uint32_t)(start / block_bytes);
        uint64_t within = start % block_bytes;
        uint64_t piece = HV_MIN(length, block_bytes - within);
        int ret;
        if (b >= l->meta.header.max_table_entries || l->meta.bat[b] == VHD_BAT_UNALLOCATED)
            return -EIO;            /* the engine and the BAT disagree: never guess */
        ext.start = start;
        ext.length = piece;
        ext.offset = (uint64_t)l->meta.bat[b] * HV_SECTOR_BYTES +
                     vhd_bitmap_bytes(block_bytes) + within;
        ret = emit(w, &ext);
        if (ret)
            return ret;
        start += piece;
        length -= piece;
    }
    return 0;
}

static int load_layer(struct map_layer *l, struct hv_err *err)
{
    int fd = open(l->path, O_RDONLY | O_CLOEXEC);
    int ret;
    if (fd < 0)
        return hv_err_errno(err, l->path, "open");
    ret = vhd_meta_load(fd, l->path, true, &l->meta, err);
    close(fd);
    if (ret == 0)
        l->is_loaded = true;
    return ret;
}

int vhd_map(const char *path, vhd_map_fn fn, void *arg, struct hv_err *err)
{
    struct vhd_open_options opt = { .is_read_only = true, .no_direct_io = true };
    struct hv_reactor *r = NULL;
    struct bdev *bd = NULL;
    struct map_layer *layers = NULL;
    struct map_walk w = { .fn = fn, .arg = arg };
    uint64_t pos = 0;
    int depth = 0;
    int ret;

    ret = hv_reactor_create(&r);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: cannot create a reactor: %s", path, strerror(-ret));
    ret = vhd_open(r, path, &opt, &bd, err);
    if (ret < 0)
        goto out;
    depth = vhd_chain_depth(bd);
    layers = calloc((size_t)depth, sizeof(*layers));
    if (!layers) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory", path);
        goto out;
    }
    for (int i = 0; i < depth; i++)
        layers[i].path = vhd_chain_path(bd, i);

    while (pos < bd->size_bytes) {
        uint32_t status = 0;
        uint64_t len = 0;
        int at = -1;
        ret = bdev_block_status_sync(bd, pos, bd->size_bytes - pos, &status, &len, &at);
        if (ret < 0) {
            hv_err_set(err, ret, "%s: block status at offset %" PRIu64 ": %s", path, pos,
                       strerror(-ret));
            goto out;
        }
        if (len == 0 || len > bd->size_bytes - pos) {
            ret = hv_err_set(err, -EIO, "%s: block status at offset %" PRIu64 " returned "
                             "length %" PRIu64, path, pos, len);
            goto out;
        }
        if (at < 0) {
            struct vhd_map_extent ext = {
                .start = pos,
                .length = len,
                .depth = depth - 1,
                .is_zero = true,
            };
            ret = emit(&w, &ext);
        } else {
            if (at >= depth) {
                ret = hv_err_set(err, -EIO, "%s: block status names layer %d of %d", path,
                                 at, depth);
                goto out;
            }
            if (!layers[at].is_loaded) {
                ret = load_layer(&layers[at], err);
                if (ret < 0)
                    goto out;
            }
            ret = emit_held(&w, &layers[at], at, status, pos, len);
            if (ret == -EIO) {
                hv_err_set(err, ret, "%s: the engine reports offset %" PRIu64 " held by %s, "
                           "whose BAT has no block there", path, pos, layers[at].path);
                goto out;
            }
        }
        if (ret)
            goto out;
        pos += len;
    }
    if (w.has_cur)
        ret = fn(arg, &w.cur);
out:
    if (layers) {
        for (int i = 0; i < depth; i++)
            if (layers[i].is_loaded)
                vhd_meta_free(&layers[i].meta);
        free(layers);
    }
    if (bd)
        bdev_close(bd);
    hv_reactor_destroy(r);
    return ret;
}
