/*
 * cbt.c — changed-block tracking.
 *
 * A bit is set when a write, discard or write-zeroes is *submitted*, before
 * it reaches the disk: a request that fails still marks its range, which
 * only costs an incremental backup a few extra blocks, while marking on
 * completion would leave a window in which a change is on disk but not in
 * the bitmap. Checkpoints take the bitmap inside a gate hold, when nothing
 * is in flight, so the cut between "before" and "after" is exact.
 *
 * The state file (little-endian):
 *     0  "HVCBT001"          8  u32 flags (bit 0: closed cleanly)
 *    12  u32 granularity    16  u64 disk size   24  u64 chunks
 *    32  u32 CRC32C of the bitmap               36  u32 CRC32C of bytes 0..35
 *    40  bitmap (ceil(chunks / 8) bytes)
 * At open the file is rewritten with the clean flag cleared, so a crash
 * leaves a file that says "not closed cleanly"; a clean close writes the
 * bitmap with the flag set. Both writes are atomic (temp file + rename).
 */
#include "filter.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define CBT_MAGIC "HVCBT001"
#define CBT_HEADER_BYTES 40u
#define CBT_FLAG_CLEAN 1u

struct snap_cbt {
    struct bdev bd;
    struct bdev *inner;
    uint32_t granularity;
    unsigned shift;
    uint64_t chunks;
    uint8_t *bits;
    bool is_reliable;
    char why[256];
    char *state_path;
};

struct cbt_io {
    struct bdev_io *outer;
};
#define CBT_HEAD SNAP_CTX_HEAD(struct cbt_io)

static size_t bitmap_bytes(uint64_t chunks)
{
    return (size_t)HV_DIV_ROUND_UP(chunks, 8);
}

static void mark(struct snap_cbt *c, uint64_t offset, uint64_t length)
{
    uint64_t first = offset >> c->shift;
    uint64_t last = (offset + length - 1) >> c->shift;
    for (uint64_t i = first; i <= last && i < c->chunks; i++)
        c->bits[i >> 3] |= (uint8_t)(1u << (i & 7));
}

static void cbt_inner_done(struct bdev_io *in, int status)
{
    struct cbt_io *ci = in->cb_arg;
    snap_inner_results(ci->outer, in);
    ci->outer->done(ci->outer, status);
}

static int cbt_submit(struct bdev *bd, struct bdev_io *io)
{
    struct snap_cbt *c = hv_container_of(bd, struct snap_cbt, bd);
    struct cbt_io *ci = bdev_io_ctx(io);
    struct bdev_io *in = snap_inner_io(ci, CBT_HEAD);
    if ((io->type == BDEV_IO_WRITE || io->type == BDEV_IO_DISCARD ||
         io->type == BDEV_IO_WRITE_ZEROES) &&
        io->length)
        mark(c, io->offset, io->length);
    ci->outer = io;
    snap_inner_prep(in, io, cbt_inner_done, ci);
    return bdev_submit(c->inner, in);
}

static int write_state(struct snap_cbt *c, bool is_clean, struct hv_err *err)
{
    size_t bytes = bitmap_bytes(c->chunks);
    uint8_t *buf = calloc(1, CBT_HEADER_BYTES + bytes);
    if (!buf)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", c->state_path);
    memcpy(buf, CBT_MAGIC, 8);
    hv_put_le32(buf + 8, is_clean ? CBT_FLAG_CLEAN : 0);
    hv_put_le32(buf + 12, c->granularity);
    hv_put_le32(buf + 16, (uint32_t)c->bd.size_bytes);
    hv_put_le32(buf + 20, (uint32_t)(c->bd.size_bytes >> 32));
    hv_put_le32(buf + 24, (uint32_t)c->chunks);
    hv_put_le32(buf + 28, (uint32_t)(c->chunks >> 32));
    /* A file that is "in use" carries no bitmap worth trusting: write zeroes
     * so that nobody is tempted. */
    if (is_clean && c->is_reliable)
        memcpy(buf + CBT_HEADER_BYTES, c->bits, bytes);
    else if (is_clean)
        hv_put_le32(buf + 8, 0);
    hv_put_le32(buf + 32, hv_crc32c(buf + CBT_HEADER_BYTES, bytes));
    hv_put_le32(buf + 36, hv_crc32c(buf, 36));
    int ret = hv_write_file_atomic(c->state_path, buf, CBT_HEADER_BYTES + bytes, err);
    free(buf);
    return ret;
}

static uint64_t le64(const uint8_t *p)
{
    return hv_le32(p) | ((uint64_t)hv_le32(p + 4) << 32);
}

/* Load the previous run's bitmap. Never fails the open: anything wrong
 * only makes the tracker unreliable, with the reason. */
static void load_state(struct snap_cbt *c)
{
    FILE *f = fopen(c->state_path, "rb");
    if (!f) {
        snprintf(c->why, sizeof(c->why),
                 "%s: no tracking history (first use of this disk's "
                 "changed-block tracking)",
                 c->state_path);
        return;
    }
    size_t bytes = bitmap_bytes(c->chunks);
    uint8_t *buf = malloc(CBT_HEADER_BYTES + bytes + 1);
    size_t got = buf ? fread(buf, 1, CBT_HEADER_BYTES + bytes + 1, f) : 0;
    fclose(f);
    if (!buf) {
        snprintf(c->why, sizeof(c->why), "%s: out of memory", c->state_path);
        return;
    }
    if (got < CBT_HEADER_BYTES || memcmp(buf, CBT_MAGIC, 8) ||
        hv_le32(buf + 36) != hv_crc32c(buf, 36)) {
        snprintf(c->why, sizeof(c->why),
                 "%s: not a changed-block tracking file, or its "
                 "header is damaged",
                 c->state_path);
    } else if (!(hv_le32(buf + 8) & CBT_FLAG_CLEAN)) {
        snprintf(c->why, sizeof(c->why),
                 "%s: the previous run did not close the disk cleanly "
                 "(hvstord stopped uncleanly): changes made then are unknown",
                 c->state_path);
    } else if (hv_le32(buf + 12) != c->granularity || le64(buf + 16) != c->bd.size_bytes ||
               le64(buf + 24) != c->chunks) {
        snprintf(c->why, sizeof(c->why),
                 "%s: tracked at %u bytes per chunk for a %" PRIu64
                 "-byte disk, now %u for %" PRIu64 " (the disk was resized or reconfigured)",
                 c->state_path, hv_le32(buf + 12), le64(buf + 16), c->granularity,
                 c->bd.size_bytes);
    } else if (got != CBT_HEADER_BYTES + bytes ||
               hv_le32(buf + 32) != hv_crc32c(buf + CBT_HEADER_BYTES, bytes)) {
        snprintf(c->why, sizeof(c->why), "%s: bitmap is truncated or damaged (checksum)",
                 c->state_path);
    } else {
        memcpy(c->bits, buf + CBT_HEADER_BYTES, bytes);
        c->is_reliable = true;
        c->why[0] = 0;
    }
    free(buf);
}

static int cbt_close(struct bdev *bd)
{
    struct snap_cbt *c = hv_container_of(bd, struct snap_cbt, bd);
    int ret = bdev_close(c->inner);
    if (c->state_path) {
        struct hv_err err = {0};
        /* Only a disk whose inner close succeeded is "clean". */
        int wr = ret == 0 ? write_state(c, true, &err) : 0;
        if (wr < 0) {
            hv_warn("%s", hv_err_msg(&err, wr));
            ret = ret ? ret : wr;
        }
    }
    free(c->bits);
    free(c->state_path);
    free(c);
    return ret;
}

void snap_cbt_forget_state(struct snap_cbt *c)
{
    free(c->state_path);
    c->state_path = NULL;
}

static void cbt_describe(struct bdev *bd, json_t *obj)
{
    struct snap_cbt *c = hv_container_of(bd, struct snap_cbt, bd);
    if (c->inner->ops->describe)
        c->inner->ops->describe(c->inner, obj);
    json_object_set_new(obj, "cbt_reliable", json_boolean(c->is_reliable));
}

/* An online resize: the bitmap follows the new size, and the history is
 * no longer comparable with the previous backup (whose size differs). */
static int cbt_resize(struct bdev *bd, uint64_t size_bytes, struct hv_err *err)
{
    struct snap_cbt *c = hv_container_of(bd, struct snap_cbt, bd);
    if (!c->inner->ops->resize)
        return hv_err_set(err, -EOPNOTSUPP, "%s: cannot be resized online", bd->name);
    uint64_t chunks = HV_DIV_ROUND_UP(size_bytes, c->granularity);
    uint8_t *bits = calloc(1, bitmap_bytes(chunks) + 1);
    if (!bits)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", bd->name);
    int ret = c->inner->ops->resize(c->inner, size_bytes, err);
    if (ret < 0) {
        free(bits);
        return ret;
    }
    memcpy(bits, c->bits, HV_MIN(bitmap_bytes(chunks), bitmap_bytes(c->chunks)));
    free(c->bits);
    c->bits = bits;
    c->chunks = HV_DIV_ROUND_UP(c->inner->size_bytes, c->granularity);
    bd->size_bytes = c->inner->size_bytes;
    c->is_reliable = false;
    snprintf(c->why, sizeof(c->why), "the disk was resized to %" PRIu64 " bytes", bd->size_bytes);
    return 0;
}

static const struct bdev_ops cbt_ops = {
    .name = "cbt",
    .submit = cbt_submit,
    .close = cbt_close,
    .resize = cbt_resize,
    .describe = cbt_describe,
};

int snap_cbt_wrap(struct bdev *inner, uint32_t granularity_bytes, const char *state_path,
                  struct bdev **out, struct snap_cbt **cbt, struct hv_err *err)
{
    if (granularity_bytes < 4096 || (granularity_bytes & (granularity_bytes - 1)))
        return hv_err_set(err, -EINVAL,
                          "%s: changed-block tracking granularity %u is not a "
                          "power of two of at least 4096",
                          inner->name, granularity_bytes);
    struct snap_cbt *c = calloc(1, sizeof(*c));
    if (!c)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", inner->name);
    snap_filter_init(&c->bd, inner, &cbt_ops, "cbt", CBT_HEAD);
    c->inner = inner;
    c->granularity = granularity_bytes;
    c->shift = (unsigned)__builtin_ctz(granularity_bytes);
    c->chunks = HV_DIV_ROUND_UP(inner->size_bytes, granularity_bytes);
    c->bits = calloc(1, bitmap_bytes(c->chunks) + 1);
    if (!c->bits) {
        free(c);
        return hv_err_set(err, -ENOMEM, "%s: out of memory", inner->name);
    }
    snprintf(c->why, sizeof(c->why), "no tracking history (no state file)");
    if (state_path) {
        c->state_path = strdup(state_path);
        if (!c->state_path) {
            free(c->bits);
            free(c);
            return hv_err_set(err, -ENOMEM, "%s: out of memory", inner->name);
        }
        load_state(c);
        int ret = write_state(c, false, err);
        if (ret < 0) {
            hv_err_prefix(err, "changed-block tracking");
            free(c->state_path);
            free(c->bits);
            free(c);
            return ret;
        }
    }
    *out = &c->bd;
    *cbt = c;
    return 0;
}

bool snap_cbt_is_reliable(const struct snap_cbt *cbt, const char **why)
{
    if (why)
        *why = cbt->why;
    return cbt->is_reliable;
}

uint32_t snap_cbt_granularity(const struct snap_cbt *cbt)
{
    return cbt->granularity;
}

uint64_t snap_cbt_chunks(const struct snap_cbt *cbt)
{
    return cbt->chunks;
}

int snap_cbt_take(struct snap_cbt *c, uint8_t **bits, bool *was_reliable, char *why,
                  size_t why_cap)
{
    uint8_t *fresh = calloc(1, bitmap_bytes(c->chunks) + 1);
    if (!fresh)
        return -ENOMEM;
    *bits = c->bits;
    *was_reliable = c->is_reliable;
    if (why && why_cap)
        snprintf(why, why_cap, "%s", c->is_reliable ? "" : c->why);
    c->bits = fresh;
    c->is_reliable = true;
    c->why[0] = 0;
    return 0;
}

void snap_cbt_merge_back(struct snap_cbt *c, const uint8_t *bits, bool was_reliable,
                         const char *why)
{
    size_t n = bitmap_bytes(c->chunks);
    for (size_t i = 0; i < n; i++)
        c->bits[i] |= bits[i];
    if (!was_reliable && c->is_reliable) {
        c->is_reliable = false;
        snprintf(c->why, sizeof(c->why), "%s", why && *why ? why : "history lost");
    }
}
