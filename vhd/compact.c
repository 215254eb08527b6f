/*
 * compact.c — give space back: blocks that read as zeroes, holes that
 * discards left, leaked space; the file shrinks.
 *
 * Three steps, each crash-safe on its own, none changing what the image
 * reads:
 *  1. Free zero blocks: their BAT entries become unallocated, written back
 *     as whole sectors, then fdatasync. An entry that reaches the disk reads
 *     zeroes (dynamic) or the parent (differencing, only freed when the
 *     parent reads zeroes there too, or when no sector was present), which
 *     is what the block read: any mix of old and new sectors reads the same.
 *  2. Relocate (op_reclaim): blocks from the end are copied into holes below
 *     them; fdatasync; only then do their BAT entries point at the copies;
 *     fdatasync. Before the BAT sector lands the original is in use and the
 *     copy is unreferenced space; after, the reverse. A hole is filled only
 *     when no durable BAT entry points into it, so a copy never overwrites
 *     live data; a block's old place becomes a hole only after the batch's
 *     BAT is durable.
 *  3. Cut the file: the footer is first written where the file will end
 *     (unused space, while the old footer still ends the file), fdatasync,
 *     then ftruncate, fdatasync. The file ends in a valid footer at every
 *     instant. What remains unused inside is punched (reads zeroes, belongs
 *     to nothing, so any subset of punches is harmless).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ops.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define MOVES_PER_BATCH 16
#define PAGE_BYTES 4096u

struct extent {
    uint64_t start;
    uint64_t end;
};

struct gaps {
    struct extent *v;
    size_t n;
    size_t cap;
};

static int gaps_add(struct gaps *g, uint64_t start, uint64_t end)
{
    if (end <= start)
        return 0;
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 64;
        struct extent *v = realloc(g->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        g->v = v;
        g->cap = cap;
    }
    /* Keep sorted and merged. */
    size_t i = 0;
    while (i < g->n && g->v[i].start < start)
        i++;
    memmove(g->v + i + 1, g->v + i, (g->n - i) * sizeof(*g->v));
    g->v[i] = (struct extent){start, end};
    g->n++;
    for (size_t k = i > 0 ? i - 1 : 0; k + 1 < g->n;) {
        if (g->v[k].end >= g->v[k + 1].start) {
            g->v[k].end = HV_MAX(g->v[k].end, g->v[k + 1].end);
            memmove(g->v + k + 1, g->v + k + 2, (g->n - k - 2) * sizeof(*g->v));
            g->n--;
        } else if (k > i) {
            break;
        } else {
            k++;
        }
    }
    return 0;
}

/* Take [start, end) out of gap `i`. */
static int gaps_take(struct gaps *g, size_t i, uint64_t start, uint64_t end)
{
    struct extent e = g->v[i];
    memmove(g->v + i, g->v + i + 1, (g->n - i - 1) * sizeof(*g->v));
    g->n--;
    int ret = gaps_add(g, e.start, start);
    if (ret == 0)
        ret = gaps_add(g, end, e.end);
    return ret;
}

struct placed {
    uint64_t start;
    uint32_t index;
};

static int placed_cmp(const void *a, const void *b)
{
    const struct placed *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Footer copy, header, BAT and locator spaces, sorted by start. */
static int metadata_extents(const struct vhd_meta *m, struct extent *out)
{
    const struct vhd_header *h = &m->header;
    int n = 0;
    out[n++] = (struct extent){0, VHD_FOOTER_BYTES};
    out[n++] = (struct extent){m->footer.data_offset, m->footer.data_offset + VHD_HEADER_BYTES};
    out[n++] =
        (struct extent){h->table_offset, h->table_offset + vhd_bat_bytes(h->max_table_entries)};
    if (m->footer.disk_type == VHD_TYPE_DIFFERENCING) {
        for (int i = 0; i < VHD_LOCATOR_COUNT; i++) {
            const struct vhd_locator *l = &h->locators[i];
            if (l->code != VHD_PLAT_NONE && vhd_locator_space_bytes(l))
                out[n++] =
                    (struct extent){l->data_offset, l->data_offset + vhd_locator_space_bytes(l)};
        }
    }
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && out[k].start < out[k - 1].start; k--) {
            struct extent t = out[k];
            out[k] = out[k - 1];
            out[k - 1] = t;
        }
    return n;
}

struct move {
    uint32_t index;
    uint64_t from;
    uint64_t to;
};

int op_reclaim(struct op_file *f, struct vhd_meta *m, struct op_bat *bat,
               struct hv_progress *progress, uint32_t *moved, uint64_t *new_file_bytes,
               struct hv_err *err)
{
    const struct vhd_header *h = &m->header;
    uint32_t bitmap_bytes = vhd_bitmap_bytes(h->block_bytes);
    uint64_t span = (uint64_t)bitmap_bytes + h->block_bytes;
    struct placed *blocks = NULL;
    struct gaps gaps = {0};
    uint8_t *buf = NULL;
    uint32_t n = 0;
    int ret = 0;

    *moved = 0;
    *new_file_bytes = m->file_bytes;
    blocks = calloc((size_t)h->max_table_entries + 1, sizeof(*blocks));
    buf = hv_alloc_aligned(span);
    if (!blocks || !buf) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory", f->path);
        goto out;
    }
    for (uint32_t b = 0; b < h->max_table_entries; b++)
        if (m->bat[b] != VHD_BAT_UNALLOCATED)
            blocks[n++] = (struct placed){(uint64_t)m->bat[b] * HV_SECTOR_BYTES, b};
    qsort(blocks, n, sizeof(*blocks), placed_cmp);
    {
        /* Holes: what of [0, footer) neither metadata nor a block owns.
         * Metadata may lie anywhere (set-parent and resize put locators and
         * BATs after the blocks). */
        struct extent meta[3 + VHD_LOCATOR_COUNT];
        int nm = metadata_extents(m, meta);
        uint64_t at = 0;
        uint32_t k = 0;
        int i = 0;
        while (k < n || i < nm) {
            uint64_t start;
            uint64_t end;
            if (i < nm && (k >= n || meta[i].start <= blocks[k].start)) {
                start = meta[i].start;
                end = meta[i].end;
                i++;
            } else {
                start = blocks[k].start;
                end = start + span;
                k++;
            }
            if (start > at && (ret = gaps_add(&gaps, at, start)) < 0)
                goto oom;
            at = HV_MAX(at, end);
        }
        if (m->footer_offset > at && (ret = gaps_add(&gaps, at, m->footer_offset)) < 0)
            goto oom;
    }

    /* Step 2: relocation in batches (see the comment at the top). */
    while (n > 0) {
        struct move moves[MOVES_PER_BATCH];
        int count = 0;
        while (count < MOVES_PER_BATCH && n > 0) {
            struct placed hi = blocks[n - 1];
            size_t gi;
            uint64_t to = 0;
            bool is_found = false;
            for (gi = 0; gi < gaps.n && gaps.v[gi].start < hi.start; gi++) {
                const struct extent *g = &gaps.v[gi];
                /* Data on a 4 KiB boundary where it fits (the engine's
                 * layout, for O_DIRECT); packed otherwise. */
                uint64_t aligned = HV_ALIGN_UP(g->start + bitmap_bytes, PAGE_BYTES) - bitmap_bytes;
                if (aligned + span <= g->end && aligned + span <= hi.start) {
                    to = aligned;
                    is_found = true;
                    break;
                }
                if (g->start + span <= g->end && g->start + span <= hi.start) {
                    to = g->start;
                    is_found = true;
                    break;
                }
            }
            if (!is_found)
                break;
            ret = hv_pread_full(f->fd, buf, span, hi.start);
            if (ret < 0) {
                hv_err_set(err, ret, "%s: reading block %u at offset %" PRIu64 ": %s", f->path,
                           hi.index, hi.start, strerror(-ret));
                goto out;
            }
            ret = op_write(f, buf, span, to, err);
            if (ret < 0)
                goto out;
            if ((ret = gaps_take(&gaps, gi, to, to + span)) < 0)
                goto oom;
            moves[count++] = (struct move){hi.index, hi.start, to};
            n--; /* out of the search; re-inserted below */
        }
        if (count == 0)
            break;
        ret = op_sync(f, err);
        if (ret < 0)
            goto out;
        for (int i = 0; i < count; i++) {
            op_bat_set(bat, moves[i].index, (uint32_t)(moves[i].to / HV_SECTOR_BYTES));
            m->bat[moves[i].index] = (uint32_t)(moves[i].to / HV_SECTOR_BYTES);
        }
        ret = op_bat_commit(f, bat, err);
        if (ret < 0)
            goto out;
        for (int i = 0; i < count; i++) {
            if ((ret = gaps_add(&gaps, moves[i].from, moves[i].from + span)) < 0)
                goto oom;
            /* Back into the sorted list at its new place. */
            uint32_t k = n;
            while (k > 0 && blocks[k - 1].start > moves[i].to) {
                blocks[k] = blocks[k - 1];
                k--;
            }
            blocks[k] = (struct placed){moves[i].to, moves[i].index};
            n++;
        }
        *moved += (uint32_t)count;
        if (progress)
            hv_progress_update(progress, progress->done + (uint64_t)count * span);
    }

    /* Step 3: cut after the last structure, then punch what is unused. The
     * cut is on a 4 KiB boundary: hvstor's layout pads the BAT to 4 KiB (the
     * engine writes it back in whole pages) and less than a page is no
     * space worth a rewrite. */
    uint64_t end = 0;
    {
        struct extent meta[3 + VHD_LOCATOR_COUNT];
        int nm = metadata_extents(m, meta);
        for (int i = 0; i < nm; i++)
            end = HV_MAX(end, meta[i].end);
    }
    for (uint32_t b = 0; b < h->max_table_entries; b++)
        if (m->bat[b] != VHD_BAT_UNALLOCATED)
            end = HV_MAX(end, (uint64_t)m->bat[b] * HV_SECTOR_BYTES + span);
    end = HV_ALIGN_UP(end, PAGE_BYTES);
    if (end < m->footer_offset) {
        ret = op_write_footer(f, &m->footer, end, err);
        if (ret == 0)
            ret = op_sync(f, err);
        if (ret == 0)
            ret = op_truncate(f, end + VHD_FOOTER_BYTES, err);
        if (ret == 0)
            ret = op_sync(f, err);
        if (ret < 0)
            goto out;
        m->footer_offset = end;
        m->file_bytes = end + VHD_FOOTER_BYTES;
    }
    for (size_t i = 0; i < gaps.n; i++) {
        uint64_t from = HV_ALIGN_UP(gaps.v[i].start, PAGE_BYTES);
        uint64_t to = HV_ALIGN_DOWN(HV_MIN(gaps.v[i].end, end), PAGE_BYTES);
        if (to > from && (ret = op_punch(f, from, to - from, err)) < 0)
            goto out;
    }
    ret = op_sync(f, err);
    *new_file_bytes = m->file_bytes;
    goto out;
oom:
    ret = hv_err_set(err, -ENOMEM, "%s: out of memory", f->path);
out:
    free(blocks);
    free(gaps.v);
    free(buf);
    return ret;
}

/* -------------------------------------------------------------- compact */

static uint64_t stored_bytes(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

/* Parent of a differencing image, as the engine finds it. */
static int parent_path_of(const char *path, char *out, size_t cap, struct hv_err *err)
{
    struct hv_reactor *r;
    struct bdev *bd = NULL;
    struct vhd_open_options o = {.is_read_only = true, .no_direct_io = true};
    int ret = hv_reactor_create(&r);
    if (ret < 0)
        return hv_err_set(err, ret, "reactor: %s", strerror(-ret));
    ret = vhd_open(r, path, &o, &bd, err);
    if (ret == 0) {
        snprintf(out, cap, "%s", vhd_chain_path(bd, 1));
        bdev_close(bd);
    }
    hv_reactor_destroy(r);
    return ret;
}

/* True when every sector present in `bm` (below `sectors`) is zero in `data`. */
static bool present_is_zero(const uint8_t *bm, const uint8_t *data, uint32_t sectors)
{
    for (uint32_t s = 0; s < sectors;) {
        uint32_t run = vhd_bitmap_run(bm, s, sectors);
        if (vhd_bitmap_test(bm, s) &&
            !hv_buf_is_zero(data + (size_t)s * HV_SECTOR_BYTES, (size_t)run * HV_SECTOR_BYTES))
            return false;
        s += run;
    }
    return true;
}

int vhd_compact(const char *path, const struct vhd_compact_options *opt,
                struct vhd_compact_result *res, struct hv_err *err)
{
    static const struct vhd_compact_options defaults = {0};
    char parent[PATH_MAX] = "";
    struct vhd_meta m = {0};
    struct op_bat bat = {0};
    struct hv_reactor *r = NULL;
    struct bdev *pbd = NULL;
    uint8_t *data = NULL;
    uint8_t *pdata = NULL;
    uint8_t *bm = NULL;
    struct hv_progress progress = {0};
    bool is_progress = false;
    int fd = -1;
    int ret;

    if (!opt)
        opt = &defaults;
    memset(res, 0, sizeof(*res));
    struct vhd_info info;
    ret = vhd_inspect(path, &info, err);
    if (ret < 0)
        return ret;
    if (info.type == VHD_TYPE_DIFFERENCING) {
        ret = parent_path_of(path, parent, sizeof(parent), err);
        if (ret < 0)
            return ret;
    }
    ret = op_open(path, opt->is_dry_run, &fd, err);
    if (ret < 0)
        return ret;
    struct op_file f = {fd, path, opt->observer, opt->is_dry_run};
    res->stored_bytes_before = stored_bytes(fd);
    ret = vhd_meta_load(fd, path, true, &m, err);
    if (ret < 0)
        goto out;
    res->file_bytes_before = res->file_bytes_after = m.file_bytes;
    res->stored_bytes_after = res->stored_bytes_before;
    if (m.footer.disk_type == VHD_TYPE_FIXED)
        goto out; /* preallocated by definition: nothing to give back */
    ret = op_bat_load(&bat, fd, &m.header, err, path);
    if (ret < 0)
        goto out;

    uint32_t block_bytes = m.header.block_bytes;
    uint32_t bitmap_bytes = vhd_bitmap_bytes(block_bytes);
    bool is_diff = m.footer.disk_type == VHD_TYPE_DIFFERENCING;
    data = hv_alloc_aligned(block_bytes);
    pdata = hv_alloc_aligned(block_bytes);
    bm = hv_alloc_aligned(bitmap_bytes);
    if (!data || !pdata || !bm) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory", path);
        goto out;
    }
    if (is_diff) {
        struct vhd_open_options o = {.is_read_only = true, .no_direct_io = true};
        ret = hv_reactor_create(&r);
        if (ret < 0) {
            hv_err_set(err, ret, "reactor: %s", strerror(-ret));
            goto out;
        }
        ret = vhd_open(r, parent, &o, &pbd, err);
        if (ret < 0)
            goto out;
    }

    hv_progress_begin(&progress, "compacting", (uint64_t)m.allocated_blocks * 2 * block_bytes,
                      opt->show_progress);
    is_progress = true;
    /* Step 1: zero blocks (see the comment at the top). */
    for (uint32_t b = 0; b < m.header.max_table_entries; b++) {
        if (m.bat[b] == VHD_BAT_UNALLOCATED)
            continue;
        uint64_t at = (uint64_t)m.bat[b] * HV_SECTOR_BYTES;
        uint64_t vstart = (uint64_t)b * block_bytes;
        uint64_t vlen = vstart < m.footer.current_size
                            ? HV_MIN((uint64_t)block_bytes, m.footer.current_size - vstart)
                            : 0;
        uint32_t sectors = (uint32_t)(vlen / HV_SECTOR_BYTES);
        bool is_free;
        ret = hv_pread_full(fd, bm, bitmap_bytes, at);
        if (ret == 0)
            ret = hv_pread_full(fd, data, block_bytes, at + bitmap_bytes);
        if (ret < 0) {
            hv_err_set(err, ret, "%s: reading block %u: %s", path, b, strerror(-ret));
            goto out;
        }
        if (!is_diff) {
            is_free = hv_buf_is_zero(data, vlen);
        } else if (!present_is_zero(bm, data, sectors)) {
            is_free = false;
        } else if (vhd_bitmap_run(bm, 0, sectors) == sectors && !vhd_bitmap_test(bm, 0)) {
            is_free = true; /* nothing present: the parent shows anyway */
        } else {
            /* Zeroes that mask the parent are data, unless the parent
             * reads zeroes there too. */
            ret = bdev_read_sync(pbd, vstart, pdata, vlen);
            if (ret < 0) {
                hv_err_set(err, ret, "%s: reading the parent at %" PRIu64 ": %s", parent, vstart,
                           strerror(-ret));
                goto out;
            }
            is_free = present_is_zero(bm, pdata, sectors);
        }
        if (is_free) {
            op_bat_set(&bat, b, VHD_BAT_UNALLOCATED);
            m.bat[b] = VHD_BAT_UNALLOCATED;
            res->blocks_freed++;
        }
        hv_progress_update(&progress, progress.done + block_bytes);
    }
    ret = op_bat_commit(&f, &bat, err);
    if (ret < 0)
        goto out;
    uint64_t new_bytes;
    ret = op_reclaim(&f, &m, &bat, &progress, &res->blocks_moved, &new_bytes, err);
    if (ret < 0)
        goto out;
    res->file_bytes_after = new_bytes;
    res->stored_bytes_after = opt->is_dry_run ? res->stored_bytes_before : stored_bytes(fd);
out:
    if (is_progress)
        hv_progress_end(&progress);
    if (pbd)
        bdev_close(pbd);
    if (r)
        hv_reactor_destroy(r);
    free(data);
    free(pdata);
    free(bm);
    op_bat_free(&bat);
    vhd_meta_free(&m);
    if (fd >= 0)
        close(fd);
    return ret;
}
