/*
 * merge.c — fold a differencing child (or a run of them) into an ancestor.
 *
 * The children are read directly (their BATs and sector bitmaps in memory,
 * libaio reads), and only the sectors they hold are copied; the ancestor is
 * written through the engine (vhd_open read-write), so its block allocation
 * is the engine's crash-safe one. A fixed number of slots, each carrying one
 * chunk of the disk through READ (from whichever child holds each run) ->
 * WRITE (into the ancestor), are all in flight at once in one reactor.
 *
 * Crash ordering (why the chain always reads as before or as after):
 *  1. Copy. Every sector written into the ancestor is one that some child
 *     in the run holds, and the topmost such child overlays it, so the
 *     chain opened at CHILD reads exactly as before however much of the
 *     copy reached the disk. (The ancestor alone, and other images that use
 *     it, do change: hence the refusal below unless forced.)
 *  2. Flush and close the ancestor: its data and metadata are durable.
 *     From here the ancestor alone reads what CHILD's chain read.
 *  3. Delete the children, top first, each followed by an fsync of its
 *     directory. While CHILD exists it still reads the same (it overlays
 *     identical data); once it is gone the ancestor is the image. Deleting
 *     top first never leaves a child whose parent is missing.
 * (A child grown past its ancestor gets the ancestor grown first, by the
 * crash-safe vhd_resize: that changes nothing CHILD's chain reads.)
 * A crash anywhere leaves CHILD readable as before, or (after 3 began) the
 * ancestor holding the result; running the same `vhd merge` again finishes
 * the job (copying the same data again is harmless).
 *
 * So that `vhd check` can say which, a marker ANCESTOR.merging (text: the
 * merged children relative to the ancestor's directory, top first, and a
 * state) is written atomically (temporary file, fsync, rename, directory
 * fsync) before step 1 touches the ancestor (even before growing it) with
 * "state copying", rewritten the same way with "state durable" between 2
 * and 3, and deleted after the last child. A sidecar, not a header field:
 * other tools (qemu, libvhdi, Hyper-V) must keep opening the files. A
 * marker saying "copying" means CHILD still exists and reads as before; one
 * saying "durable" means the ancestor alone reads as after.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ops.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MG_DEFAULT_DEPTH 16
#define MG_CHUNK_BYTES (2u * 1024 * 1024)
#define MG_MAX_RUNS 64
#define MG_DIO_ALIGN 4096u

struct mchild {
    char path[PATH_MAX];
    int fd;  /* buffered, read-locked */
    int dfd; /* O_DIRECT, or -1 */
    struct vhd_meta meta;
    uint64_t size_bytes;
    uint32_t block_bytes;
    uint32_t bitmap_bytes;
    uint32_t entries;
    uint8_t *bitmaps; /* entries * bitmap_bytes, MAP_NORESERVE */
    size_t bitmaps_len;
};

struct mrun {
    uint64_t voff; /* virtual offset */
    uint64_t len;
    int layer;
    uint64_t foff; /* offset in that child's file */
};

struct merge;

struct mslot {
    struct merge *m;
    uint8_t *buf;
    uint64_t offset; /* virtual start of the chunk */
    int nruns;
    struct mrun runs[MG_MAX_RUNS];
    struct hv_aio_req reads[MG_MAX_RUNS];
    struct iovec riov[MG_MAX_RUNS];
    struct bdev_io *writes[MG_MAX_RUNS];
    struct iovec wiov[MG_MAX_RUNS];
    int pending;
};

struct merge {
    struct mchild *children;
    int count;
    struct bdev *dst;
    struct hv_aio *aio;
    uint64_t size_bytes;
    uint64_t next_offset;
    unsigned active;
    bool is_done;
    int error;
    struct hv_err *err;
    struct hv_progress progress;
    uint64_t bytes_copied;
};

static uint8_t *bitmap_of(struct mchild *c, uint32_t b)
{
    return c->bitmaps + (size_t)b * c->bitmap_bytes;
}

/* Which child holds the bytes at `off`: the first `*run` bytes (at most
 * `limit`) live in child `*layer` at `*foff`, or in none (-1: the ancestor
 * keeps what it has). One step per child, as the engine's route(). */
static void mroute(struct merge *m, uint64_t off, uint64_t limit, int *layer, uint64_t *foff,
                   uint64_t *run)
{
    for (int i = 0; i < m->count; i++) {
        struct mchild *c = &m->children[i];
        if (off >= c->size_bytes)
            continue;
        limit = HV_MIN(limit, c->size_bytes - off);
        uint32_t b = (uint32_t)(off / c->block_bytes);
        uint64_t within = off % c->block_bytes;
        uint64_t in_block = HV_MIN(limit, c->block_bytes - within);
        if (c->meta.bat[b] == VHD_BAT_UNALLOCATED) {
            limit = in_block;
            continue;
        }
        uint32_t s = (uint32_t)(within / HV_SECTOR_BYTES);
        uint32_t e = (uint32_t)((within + in_block) / HV_SECTOR_BYTES);
        uint32_t n = vhd_bitmap_run(bitmap_of(c, b), s, e);
        if (!vhd_bitmap_test(bitmap_of(c, b), s)) {
            limit = (uint64_t)n * HV_SECTOR_BYTES;
            continue;
        }
        *layer = i;
        *foff = (uint64_t)c->meta.bat[b] * HV_SECTOR_BYTES + c->bitmap_bytes + within;
        *run = (uint64_t)n * HV_SECTOR_BYTES;
        return;
    }
    *layer = -1;
    *foff = 0;
    *run = limit;
}

static void mg_fail(struct merge *m, int code, const char *path, const char *op, uint64_t off)
{
    if (m->error)
        return;
    m->error = code;
    hv_err_set(m->err, code, "%s: %s at offset %" PRIu64 ": %s", path, op, off, strerror(-code));
}

static void slot_next(struct mslot *s);

static void slot_write_done(struct bdev_io *io, int status)
{
    struct mslot *s = io->cb_arg;
    if (status < 0)
        mg_fail(s->m, status, s->m->dst->name, "write", io->offset);
    if (--s->pending == 0)
        slot_next(s);
}

static void slot_write(struct mslot *s)
{
    struct merge *m = s->m;
    int n = 0;
    /* Runs that touch in virtual space become one write, whichever child
     * they came from. */
    for (int i = 0; i < s->nruns;) {
        uint64_t from = s->runs[i].voff;
        uint64_t to = from + s->runs[i].len;
        int j = i + 1;
        while (j < s->nruns && s->runs[j].voff == to)
            to += s->runs[j++].len;
        struct bdev_io *io = s->writes[n];
        memset(io, 0, sizeof(*io));
        s->wiov[n].iov_base = s->buf + (from - s->offset);
        s->wiov[n].iov_len = to - from;
        io->type = BDEV_IO_WRITE;
        io->offset = from;
        io->length = to - from;
        io->iov = &s->wiov[n];
        io->iovcnt = 1;
        io->done = slot_write_done;
        io->cb_arg = s;
        m->bytes_copied += to - from;
        n++;
        i = j;
    }
    s->pending = n;
    for (int i = 0; i < n; i++) {
        int ret = bdev_submit(m->dst, s->writes[i]);
        if (ret < 0) {
            mg_fail(m, ret, m->dst->name, "write", s->writes[i]->offset);
            s->pending -= n - i;
            if (s->pending == 0)
                slot_next(s);
            return;
        }
    }
}

static void slot_read_done(struct hv_aio_req *req, long res)
{
    struct mslot *s = req->arg;
    struct merge *m = s->m;
    int i = (int)(req - s->reads);
    if (res < 0 || (uint64_t)res != s->runs[i].len)
        mg_fail(m, res < 0 ? (int)res : -EIO, m->children[s->runs[i].layer].path, "read",
                s->runs[i].foff);
    if (--s->pending > 0)
        return;
    if (m->error) {
        slot_next(s);
        return;
    }
    slot_write(s);
}

/* Plan the runs of the next chunk that has any; false at the end. */
static bool slot_plan(struct mslot *s)
{
    struct merge *m = s->m;
    while (m->next_offset < m->size_bytes) {
        uint64_t start = m->next_offset;
        uint64_t end =
            HV_MIN(HV_ALIGN_DOWN(start, MG_CHUNK_BYTES) + MG_CHUNK_BYTES, m->size_bytes);
        uint64_t at = start;
        s->nruns = 0;
        s->offset = start;
        while (at < end) {
            int layer;
            uint64_t foff;
            uint64_t run;
            mroute(m, at, end - at, &layer, &foff, &run);
            if (layer >= 0) {
                if (s->nruns == MG_MAX_RUNS)
                    break; /* the rest goes in the next chunk */
                s->runs[s->nruns++] = (struct mrun){at, run, layer, foff};
            }
            at += run;
        }
        m->next_offset = at;
        hv_progress_update(&m->progress, at);
        if (s->nruns)
            return true;
    }
    return false;
}

static void slot_next(struct mslot *s)
{
    struct merge *m = s->m;
    if (m->error || !slot_plan(s)) {
        if (--m->active == 0)
            m->is_done = true;
        return;
    }
    s->pending = s->nruns;
    for (int i = 0; i < s->nruns; i++) {
        const struct mrun *r = &s->runs[i];
        struct mchild *c = &m->children[r->layer];
        uint8_t *dst = s->buf + (r->voff - s->offset);
        int fd = c->dfd >= 0 && r->foff % MG_DIO_ALIGN == 0 && r->len % MG_DIO_ALIGN == 0 &&
                         (uintptr_t)dst % MG_DIO_ALIGN == 0
                     ? c->dfd
                     : c->fd;
        s->riov[i].iov_base = dst;
        s->riov[i].iov_len = r->len;
        s->reads[i].done = slot_read_done;
        s->reads[i].arg = s;
        hv_aio_prep_readv(&s->reads[i], fd, &s->riov[i], 1, r->foff);
        hv_aio_submit(m->aio, &s->reads[i]);
    }
}

/* ------------------------------------------------------------- children */

static void child_close(struct mchild *c)
{
    if (c->bitmaps)
        munmap(c->bitmaps, c->bitmaps_len);
    if (c->dfd >= 0)
        close(c->dfd);
    if (c->fd >= 0)
        close(c->fd);
    vhd_meta_free(&c->meta);
    c->bitmaps = NULL;
    c->fd = c->dfd = -1;
}

/* Open a child for reading, locked against writers, with its BAT and every
 * allocated block's bitmap in memory. */
static int child_open(struct mchild *c, const char *path, bool no_direct, struct hv_err *err)
{
    int ret;
    snprintf(c->path, sizeof(c->path), "%s", path);
    c->fd = c->dfd = -1;
    ret = op_open(path, true, &c->fd, err);
    if (ret < 0)
        return ret;
    if (!no_direct)
        c->dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    ret = vhd_meta_load(c->fd, path, true, &c->meta, err);
    if (ret < 0)
        return ret;
    if (c->meta.footer.disk_type != VHD_TYPE_DIFFERENCING)
        return hv_err_set(err, -EINVAL, "%s: not a differencing image", path);
    c->size_bytes = c->meta.footer.current_size;
    c->block_bytes = c->meta.header.block_bytes;
    c->bitmap_bytes = vhd_bitmap_bytes(c->block_bytes);
    c->entries = c->meta.header.max_table_entries;
    c->bitmaps_len = HV_MAX((size_t)c->entries * c->bitmap_bytes, (size_t)4096);
    c->bitmaps = mmap(NULL, c->bitmaps_len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (c->bitmaps == MAP_FAILED) {
        c->bitmaps = NULL;
        return hv_err_set(err, -ENOMEM, "%s: no memory for the sector bitmaps", path);
    }
    for (uint32_t b = 0; b < c->entries; b++) {
        if (c->meta.bat[b] == VHD_BAT_UNALLOCATED)
            continue;
        ret = hv_pread_full(c->fd, bitmap_of(c, b), c->bitmap_bytes,
                            (uint64_t)c->meta.bat[b] * HV_SECTOR_BYTES);
        if (ret < 0)
            return hv_err_set(err, ret, "%s: reading the bitmap of block %u: %s", path, b,
                              strerror(-ret));
    }
    return 0;
}

/* ---------------------------------------------------------------- users */

static bool has_vhd_suffix(const char *name)
{
    size_t n = strlen(name);
    return (n > 4 && !strcasecmp(name + n - 4, ".vhd")) ||
           (n > 5 && !strcasecmp(name + n - 5, ".avhd"));
}

/*
 * Other images in the directories of the chain that name one of `uuids` as
 * their parent: they would read changed data (their parent is the ancestor)
 * or lose their parent (an intermediate child that is deleted). A VHD does
 * not record its children, so images elsewhere cannot be found.
 */
static void find_users(char paths[][PATH_MAX], int count, const uint8_t (*uuids)[16],
                       int uuid_count, char *out, size_t cap)
{
    char dirs[VHD_MAX_CHAIN_DEPTH][PATH_MAX];
    int ndirs = 0;
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < count; i++) {
        char copy[PATH_MAX];
        char real[PATH_MAX];
        snprintf(copy, sizeof(copy), "%s", paths[i]);
        if (!realpath(dirname(copy), real))
            continue;
        bool seen = false;
        for (int k = 0; k < ndirs; k++)
            seen |= !strcmp(dirs[k], real);
        if (!seen && ndirs < VHD_MAX_CHAIN_DEPTH)
            snprintf(dirs[ndirs++], PATH_MAX, "%s", real);
    }
    for (int d = 0; d < ndirs; d++) {
        DIR *dir = opendir(dirs[d]);
        struct dirent *de;
        if (!dir)
            continue;
        while ((de = readdir(dir))) {
            char p[PATH_MAX];
            struct stat st;
            struct vhd_info info;
            bool is_chain = false;
            if (!has_vhd_suffix(de->d_name))
                continue;
            if ((size_t)snprintf(p, sizeof(p), "%s/%s", dirs[d], de->d_name) >= sizeof(p))
                continue;
            if (stat(p, &st) < 0 || !S_ISREG(st.st_mode))
                continue;
            for (int i = 0; i < count; i++) {
                struct stat cs;
                if (stat(paths[i], &cs) == 0 && cs.st_dev == st.st_dev && cs.st_ino == st.st_ino)
                    is_chain = true;
            }
            if (is_chain || vhd_inspect(p, &info, NULL) < 0 || !info.has_parent)
                continue;
            for (int u = 0; u < uuid_count; u++) {
                if (memcmp(info.parent_uuid, uuids[u], 16))
                    continue;
                int n = snprintf(out + used, cap - used, "%s%s", used ? ", " : "", p);
                if (n > 0 && (size_t)n < cap - used)
                    used += (size_t)n;
                break;
            }
        }
        closedir(dir);
    }
}

/* ---------------------------------------------------------------- merge */

static int resolve_chain(const char *child, const char *into, char paths[][PATH_MAX], int *count,
                         struct hv_err *err)
{
    struct hv_reactor *r = NULL;
    struct bdev *bd = NULL;
    struct vhd_open_options o = {.is_read_only = true, .no_direct_io = true};
    int ret = hv_reactor_create(&r);
    if (ret < 0)
        return hv_err_set(err, ret, "reactor: %s", strerror(-ret));
    ret = vhd_open(r, child, &o, &bd, err);
    if (ret < 0)
        goto out;
    int depth = vhd_chain_depth(bd);
    if (depth < 2) {
        ret =
            hv_err_set(err, -EINVAL, "%s: not a differencing image: nothing to merge into", child);
        goto out;
    }
    int target = 1;
    if (into) {
        struct stat want;
        target = -1;
        if (stat(into, &want) < 0) {
            ret = hv_err_errno(err, into, "ancestor");
            goto out;
        }
        for (int i = 0; i < depth; i++) {
            struct stat st;
            if (stat(vhd_chain_path(bd, i), &st) == 0 && st.st_dev == want.st_dev &&
                st.st_ino == want.st_ino)
                target = i;
        }
        if (target < 0) {
            ret = hv_err_set(err, -EINVAL,
                             "%s: %s is not an ancestor of it (the chain is "
                             "%d images deep)",
                             child, into, depth);
            goto out;
        }
        if (target == 0) {
            ret = hv_err_set(err, -EINVAL, "%s: cannot merge an image into itself", child);
            goto out;
        }
    }
    for (int i = 0; i <= target; i++)
        snprintf(paths[i], PATH_MAX, "%s", vhd_chain_path(bd, i));
    *count = target + 1;
out:
    if (bd)
        bdev_close(bd);
    hv_reactor_destroy(r);
    return ret;
}

/* Write (or rewrite) ANCESTOR.merging atomically; see the top comment. */
static int marker_write(const char *ancestor, char paths[][PATH_MAX], int children,
                        bool is_durable, const struct vhd_ops_observer *obs, struct hv_err *err)
{
    char mpath[PATH_MAX], copy[PATH_MAX], dir[PATH_MAX], abs_child[PATH_MAX], rel[PATH_MAX];
    size_t cap = 64 + (size_t)children * (PATH_MAX + 8);
    char *text = malloc(cap);
    int ret;
    if (!text)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", ancestor);
    snprintf(mpath, sizeof(mpath), "%s%s", ancestor, VHD_MERGE_MARKER_SUFFIX);
    snprintf(copy, sizeof(copy), "%s", ancestor);
    if (!realpath(dirname(copy), dir)) {
        ret = hv_err_errno(err, ancestor, "directory");
        goto out;
    }
    size_t n = (size_t)snprintf(text, cap, "hvstor merge 1\nstate %s\n",
                                is_durable ? "durable" : "copying");
    for (int i = 0; i < children; i++) {
        if (!realpath(paths[i], abs_child)) {
            ret = hv_err_errno(err, paths[i], "resolve");
            goto out;
        }
        ret = op_relative_path(dir, abs_child, rel, sizeof(rel));
        if (ret < 0) {
            hv_err_set(err, ret, "%s: path relative to %s is too long", paths[i], ancestor);
            goto out;
        }
        n += (size_t)snprintf(text + n, cap - n, "child %s\n", rel);
    }
    ret = hv_write_file_atomic(mpath, text, n, err);
    if (ret == 0 && obs && obs->on_replace)
        obs->on_replace(obs->arg, mpath, text, n);
out:
    free(text);
    return ret;
}

int vhd_merge(const char *child, const struct vhd_merge_options *opt, struct vhd_merge_result *res,
              struct hv_err *err)
{
    static const struct vhd_merge_options defaults = {0};
    char(*paths)[PATH_MAX] = NULL;
    uint8_t(*uuids)[16] = NULL;
    struct merge m = {.err = err};
    struct mslot *slots = NULL;
    struct hv_reactor *r = NULL;
    unsigned depth;
    int count = 0;
    int ret;
    uint64_t t0 = hv_now_ns();

    if (!opt)
        opt = &defaults;
    memset(res, 0, sizeof(*res));
    depth = opt->depth ? opt->depth : MG_DEFAULT_DEPTH;
    paths = calloc(VHD_MAX_CHAIN_DEPTH, PATH_MAX);
    uuids = calloc(VHD_MAX_CHAIN_DEPTH, 16);
    if (!paths || !uuids) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory", child);
        goto out;
    }
    ret = resolve_chain(child, opt->into, paths, &count, err);
    if (ret < 0)
        goto out;
    const char *ancestor = paths[count - 1];
    snprintf(res->ancestor, sizeof(res->ancestor), "%s", ancestor);

    /* Sizes: the ancestor must read what the child reads, no more, no less. */
    struct vhd_info top_info, anc_info;
    ret = vhd_inspect(paths[0], &top_info, err);
    if (ret == 0)
        ret = vhd_inspect(ancestor, &anc_info, err);
    if (ret < 0)
        goto out;
    /* A child grown past its ancestor (vhd resize) needs the ancestor grown
     * first; a smaller child cannot be merged without cutting the ancestor. */
    if (top_info.size_bytes < anc_info.size_bytes) {
        ret = hv_err_set(err, -EINVAL,
                         "%s: virtual size %" PRIu64 " is smaller than the "
                         "ancestor %s (%" PRIu64 "): merging would leave the ancestor "
                         "reading more than the child does",
                         child, top_info.size_bytes, ancestor, anc_info.size_bytes);
        goto out;
    }
    for (int i = 0; i < count; i++) {
        struct vhd_info info;
        ret = vhd_inspect(paths[i], &info, err);
        if (ret < 0)
            goto out;
        memcpy(uuids[i], info.uuid, 16);
    }
    /* Every image of the run is either deleted or changed: images that
     * name any of them as parent are affected. */
    find_users(paths, count, (const uint8_t(*)[16])uuids, count, res->users, sizeof(res->users));
    if (res->users[0] && !opt->is_forced) {
        ret = hv_err_set(err, -EBUSY,
                         "%s: merging into %s would change images that use it "
                         "or one of the children: %s. A VHD does not know its children, so "
                         "images in other directories cannot be found; merge with --force "
                         "only when nothing else uses %s",
                         child, ancestor, res->users, ancestor);
        goto out;
    }

    ret = marker_write(ancestor, paths, count - 1, false, opt->observer, err);
    if (ret < 0)
        goto out;
    if (top_info.size_bytes > anc_info.size_bytes) {
        /* Growing the ancestor does not change what CHILD's chain reads: the
         * engine reads zeroes past a smaller parent, and the grown range
         * reads zeroes. vhd_resize is crash-safe on its own. */
        struct vhd_resize_options ro = {.observer = opt->observer};
        ret = vhd_resize(ancestor, top_info.size_bytes, &ro, err);
        if (ret < 0) {
            hv_err_prefix(err, "%s: growing the ancestor to the child's size", child);
            goto out;
        }
    }

    m.count = count - 1;
    m.children = calloc((size_t)HV_MAX(m.count, 1), sizeof(*m.children));
    if (!m.children) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory", child);
        goto out;
    }
    for (int i = 0; i < m.count; i++)
        m.children[i].fd = m.children[i].dfd = -1;
    for (int i = 0; i < m.count; i++) {
        ret = child_open(&m.children[i], paths[i], opt->no_direct_io, err);
        if (ret < 0)
            goto out;
    }
    m.size_bytes = m.children[0].size_bytes;

    ret = hv_reactor_create(&r);
    if (ret < 0) {
        hv_err_set(err, ret, "reactor: %s", strerror(-ret));
        goto out;
    }
    struct vhd_open_options o = {.no_direct_io = opt->no_direct_io,
                                 .observer = opt->observer ? opt->observer->engine : NULL};
    ret = vhd_open(r, ancestor, &o, &m.dst, err);
    if (ret < 0)
        goto out;
    ret = hv_aio_create(r, depth * 8, &m.aio);
    if (ret < 0) {
        hv_err_set(err, ret, "io_setup: %s", strerror(-ret));
        goto out;
    }
    slots = calloc(depth, sizeof(*slots));
    if (!slots) {
        ret = hv_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (unsigned i = 0; i < depth; i++) {
        slots[i].m = &m;
        slots[i].buf = hv_alloc_aligned(MG_CHUNK_BYTES);
        if (!slots[i].buf) {
            ret = hv_err_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        for (int k = 0; k < MG_MAX_RUNS; k++) {
            slots[i].writes[k] = calloc(1, bdev_io_size(m.dst));
            if (!slots[i].writes[k]) {
                ret = hv_err_set(err, -ENOMEM, "out of memory");
                goto out;
            }
        }
    }

    hv_progress_begin(&m.progress, "merging", m.size_bytes, opt->show_progress);
    m.active = depth;
    for (unsigned i = 0; i < depth; i++)
        slot_next(&slots[i]);
    if (!m.is_done)
        hv_reactor_run_until(r, &m.is_done);
    hv_progress_end(&m.progress);
    if (m.error) {
        ret = m.error;
        goto out;
    }
    op_kill_point("merge-copied");
    /* Step 2: the ancestor's data and metadata durable before any child goes. */
    ret = bdev_flush_sync(m.dst);
    if (ret < 0) {
        hv_err_set(err, ret, "%s: flush: %s", ancestor, strerror(-ret));
        goto out;
    }
    hv_aio_destroy(m.aio);
    m.aio = NULL;
    ret = bdev_close(m.dst);
    m.dst = NULL;
    if (ret < 0) {
        hv_err_set(err, ret, "%s: close: %s", ancestor, strerror(-ret));
        goto out;
    }
    for (int i = 0; i < m.count; i++)
        child_close(&m.children[i]);
    if (opt->keep_children) {
        /* Nothing is left to finish: the children still read as before. */
        char mpath[PATH_MAX];
        snprintf(mpath, sizeof(mpath), "%s%s", ancestor, VHD_MERGE_MARKER_SUFFIX);
        ret = op_unlink(mpath, opt->observer, err);
        if (ret < 0)
            goto out;
    } else {
        ret = marker_write(ancestor, paths, m.count, true, opt->observer, err);
        if (ret < 0)
            goto out;
    }
    op_kill_point("merge-durable");
    /* Step 3: top first. */
    if (!opt->keep_children) {
        for (int i = 0; i < m.count; i++) {
            if (i == 1)
                op_kill_point("merge-deleting");
            ret = op_unlink(paths[i], opt->observer, err);
            if (ret < 0) {
                hv_err_prefix(err,
                              "the data is merged into %s, but deleting the merged "
                              "child failed",
                              ancestor);
                goto out;
            }
        }
        char mpath[PATH_MAX];
        snprintf(mpath, sizeof(mpath), "%s%s", ancestor, VHD_MERGE_MARKER_SUFFIX);
        ret = op_unlink(mpath, opt->observer, err);
        if (ret < 0) {
            hv_err_prefix(err, "the merge into %s is complete, but removing its marker failed",
                          ancestor);
            goto out;
        }
    }
    res->merged_count = m.count;
    res->bytes_copied = m.bytes_copied;
    res->seconds = (double)(hv_now_ns() - t0) / 1e9;
    ret = 0;
out:
    if (m.aio)
        hv_aio_destroy(m.aio);
    if (m.dst)
        bdev_close(m.dst);
    if (slots) {
        for (unsigned i = 0; i < depth; i++) {
            free(slots[i].buf);
            for (int k = 0; k < MG_MAX_RUNS; k++)
                free(slots[i].writes[k]);
        }
        free(slots);
    }
    if (m.children) {
        for (int i = 0; i < m.count; i++)
            child_close(&m.children[i]);
        free(m.children);
    }
    if (r)
        hv_reactor_destroy(r);
    free(paths);
    free(uuids);
    return ret;
}
