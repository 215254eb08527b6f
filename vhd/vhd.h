/*
 * vhd — Microsoft Virtual Hard Disk 1.0 images: fixed, dynamic and
 * differencing, alone or in chains.
 *
 * Three layers, lowest first. The format code (format.c, internal) decodes
 * every on-disk structure into native types and validates it, and encodes it
 * back; nothing above it touches raw bytes. The engine (engine.c, internal)
 * opens a chain (child first, parents found through their locators and checked
 * against the identity the child recorded) and serves it as a bdev: libaio
 * with O_DIRECT, the BAT in memory, crash-safe block allocation without an
 * fsync per block. The offline operations (create, inspect, check, convert,
 * compare, and later merge, compact, resize, repair, set-parent) are built on
 * those two and drive the engine from a private reactor, so the `vhd` tool and
 * hvstord share one I/O path.
 */
#ifndef HVSTOR_VHD_H
#define HVSTOR_VHD_H

#include "common.h"

enum vhd_type {
    VHD_TYPE_FIXED = 2,
    VHD_TYPE_DYNAMIC = 3,
    VHD_TYPE_DIFFERENCING = 4,
};

#define VHD_DEFAULT_BLOCK_BYTES (2u * 1024 * 1024)
#define VHD_MAX_CHAIN_DEPTH 64
/* The largest virtual size the format's CHS and BAT fields allow sensibly
 * (Hyper-V's limit for VHD). */
#define VHD_MAX_SIZE_BYTES (2040ull * 1024 * 1024 * 1024)

const char *vhd_type_name(enum vhd_type type);           /* "fixed", ... */
int vhd_type_parse(const char *name, enum vhd_type *type); /* -EINVAL if unknown */

/* ---------------------------------------------------------------- create */

struct vhd_create_options {
    enum vhd_type type;
    uint64_t size_bytes;            /* exact virtual size; differencing: 0 = parent's */
    uint32_t block_bytes;           /* dynamic/differencing; 0 = 2 MiB */
    const char *parent_path;        /* differencing only */
};

/* Create a new image; refuses to overwrite an existing file. Fixed images are
 * preallocated with fallocate. The file is durable when this returns 0. */
int vhd_create(const char *path, const struct vhd_create_options *opt, struct hv_err *err);

/* --------------------------------------------------------------- inspect */

struct vhd_geometry {
    uint16_t cylinders;
    uint8_t heads;
    uint8_t sectors_per_track;
};

/* What one image file says about itself (not its parents). */
struct vhd_info {
    enum vhd_type type;
    uint64_t size_bytes;            /* current size */
    uint64_t original_size_bytes;
    uint64_t file_bytes;            /* length of the file */
    uint64_t allocated_bytes;       /* data blocks allocated (dynamic/differencing) */
    uint32_t block_bytes;           /* 0 for fixed */
    uint32_t max_table_entries;
    uint8_t uuid[16];
    uint32_t timestamp;             /* seconds since 2000-01-01 UTC */
    char creator_app[5];            /* NUL-terminated, e.g. "hvst", "qemu", "win " */
    uint32_t creator_version;
    char creator_os[5];
    struct vhd_geometry geometry;
    bool is_footer_ok;              /* footer at the end: checksum and fields */
    bool is_footer_copy_ok;         /* copy at offset 0 (dynamic/differencing) */
    bool is_header_ok;              /* dynamic header */
    bool has_parent;
    uint8_t parent_uuid[16];
    uint32_t parent_timestamp;
    char parent_name[1024];         /* UTF-8, from the header's UTF-16BE name */
    char parent_relative[4096];     /* W2ru locator, as written ("" if none) */
    char parent_absolute[4096];     /* W2ku locator */
    char parent_macx[4096];         /* MacX locator (file:// URL) */
};

/* Read and validate one image's metadata. With a damaged image it fails with
 * a message naming the file, the structure and the field. */
int vhd_inspect(const char *path, struct vhd_info *info, struct hv_err *err);
/* The fields of `info` as `vhd info --json` prints them. */
json_t *vhd_info_to_json(const struct vhd_info *info);

/* ------------------------------------------------------------------ open */

/* Observer of the engine's own file I/O, for the crash-consistency harness:
 * called when a write or fdatasync to the top image file is submitted and
 * when it completes (`seq` pairs them; a fdatasync has no offset or iov). A
 * hole punched by a discard is reported as a write of zeroes that completes
 * at once. `is_fua`: the write goes out with RWF_DSYNC (the data writes of a
 * FUA request), so it is durable once it completes. Closing is reported too
 * except its final ftruncate. Production code passes NULL. */
struct vhd_io_observer {
    void (*on_submit)(void *arg, int seq, bool is_sync, bool is_fua, uint64_t offset,
                      const struct iovec *iov, int iovcnt);
    void (*on_complete)(void *arg, int seq, long res);
    void *arg;
};

struct vhd_open_options {
    bool is_read_only;              /* top image read-only too (parents always are) */
    bool no_direct_io;              /* buffered I/O (e.g. tmpfs, which lacks O_DIRECT) */
    unsigned queue_depth;           /* engine requests in flight; 0 = 128 */
    const struct vhd_io_observer *observer;
};

/*
 * Open an image and its parents as one bdev in reactor `r`. The top image is
 * locked exclusively (OFD lock) unless read-only; parents (and a read-only
 * top) take a shared lock and are never written. Fails cleanly on damage, a
 * missing parent, a parent whose identity does not match, a loop, or a chain
 * deeper than VHD_MAX_CHAIN_DEPTH (-EBUSY when another open holds the lock).
 *
 * Parents are found through the relative locator (W2ru), the absolute one
 * (W2ku), MacX, then the header's parent name beside the child; a candidate
 * counts only if its unique id is the one the child recorded (a changed
 * timestamp alone is tolerated, as Hyper-V and vhd-util do).
 *
 * The bdev: size_bytes = current size, granularity_bytes = block size (0 for
 * fixed), physical_block_bytes 4096, uuid = the VHD unique id,
 * has_volatile_cache (FLUSH makes writes and their metadata durable; FUA
 * writes are durable with their metadata on completion). DISCARD frees whole
 * blocks (BAT entry unallocated, space punched and reused after the next
 * flush); can_discard for dynamic and differencing images, discard_zeroes
 * only for dynamic ones (a discarded differencing block shows the parent).
 * WRITE_ZEROES always reads back zeroes; with MAY_UNMAP it deallocates whole
 * blocks of a dynamic image. BLOCK_STATUS reports the layer that holds the
 * data (status_depth, -1 with BDEV_STATUS_ZERO where no layer does).
 * A clean close also moves up to 256 MiB of trailing blocks into holes left
 * by discards and cuts the file after its last block.
 */
int vhd_open(struct hv_reactor *r, const char *path, const struct vhd_open_options *opt,
             struct bdev **out, struct hv_err *err);

/* True when `bd` was opened by vhd_open. */
bool vhd_is_vhd_bdev(const struct bdev *bd);
/* Chain of an open vhd bdev: depth (1 = no parent) and each layer's path. */
int vhd_chain_depth(const struct bdev *bd);
const char *vhd_chain_path(const struct bdev *bd, int layer);

/* ----------------------------------------------------------------- check */

enum vhd_check_result {
    VHD_CHECK_CLEAN = 0,
    VHD_CHECK_CORRUPT = 2,          /* exit codes of `vhd check` */
    VHD_CHECK_LEAKED = 3,           /* no corruption: leaked space and/or an
                                     * interrupted operation to finish */
};

/* An interrupted operation check recognises (not corruption: the image reads
 * consistently; the message says as what and how to finish). */
enum vhd_check_interrupted {
    VHD_INTERRUPTED_NONE = 0,
    VHD_INTERRUPTED_RESIZE,         /* footer switched, copy at 0 not yet: reads as after */
    VHD_INTERRUPTED_MERGE_BEFORE,   /* merge copying: the chain reads as before */
    VHD_INTERRUPTED_MERGE_AFTER,    /* merge data durable: the ancestor reads as after */
};

struct vhd_check_problem {
    bool is_leak;                   /* not corruption (leaked space or is_interrupted) */
    bool is_interrupted;            /* an interrupted operation (see report.interrupted) */
    char msg[512];
};

struct vhd_check_report {
    struct vhd_check_problem *problems;   /* malloc'd; vhd_check_report_free */
    int problem_count;
    uint64_t leaked_bytes;
    enum vhd_check_interrupted interrupted;
};

/* The marker a merge keeps beside the ancestor while it runs: ANCESTOR plus
 * this suffix (see merge.c). */
#define VHD_MERGE_MARKER_SUFFIX ".merging"

/* Check one image (not its parents). Returns a vhd_check_result, or a
 * negative errno (with err set) when the file could not be checked at all. */
int vhd_check(const char *path, struct vhd_check_report *report, struct hv_err *err);
void vhd_check_report_free(struct vhd_check_report *report);


/* =====================================================================
 * Offline operations over any image: format detection, convert, compare.
 * (vhd-tool section: convert.c, compare.c)
 * ===================================================================== */

enum vhd_image_format {
    VHD_FORMAT_AUTO = 0,            /* detect from content */
    VHD_FORMAT_RAW,
    VHD_FORMAT_VHD,
};

const char *vhd_image_format_name(enum vhd_image_format fmt);      /* "raw", "vhd" */
int vhd_image_format_parse(const char *name, enum vhd_image_format *fmt); /* "vpc" too */

/* VHD when the file starts with a footer copy or ends in a footer cookie
 * ("conectix"), raw otherwise. Reads only; fails when the file cannot be read. */
int vhd_detect_format(const char *path, enum vhd_image_format *fmt, struct hv_err *err);

/* Open an image of either format as a bdev in `r`: a VHD (and its chain)
 * through vhd_open, anything else through bdev_raw_open. O_DIRECT when
 * `use_direct_io`, falling back to buffered I/O where the file system refuses
 * it. `fmt` VHD_FORMAT_AUTO detects. */
int vhd_open_image(struct hv_reactor *r, const char *path, enum vhd_image_format fmt,
                   bool is_read_only, bool use_direct_io, struct bdev **out,
                   struct hv_err *err);

struct vhd_convert_options {
    enum vhd_image_format src_format;   /* AUTO: detect */
    enum vhd_image_format dst_format;   /* AUTO: vhd */
    enum vhd_type dst_type;             /* vhd output: FIXED or DYNAMIC (0 = dynamic) */
    uint32_t block_bytes;               /* dynamic output; 0 = 2 MiB */
    unsigned depth;                     /* chunks in flight; 0 = 16 */
    bool show_progress;                 /* force the progress bar (-p) */
};

/*
 * Copy what `src` reads (a raw file, a VHD, or a whole differencing chain,
 * flattened) into a new image `dst`, which must not exist yet. Zero ranges of
 * the source (holes, unallocated blocks, blocks of zeroes) are not written,
 * so a dynamic output allocates only blocks with data. On failure the
 * partial `dst` is removed.
 */
int vhd_convert(const char *src, const char *dst, const struct vhd_convert_options *opt,
                struct hv_err *err);

struct vhd_compare_result {
    bool is_same;
    uint64_t first_difference;          /* byte offset, when !is_same */
    bool has_size_mismatch;             /* sizes differ (the rest is compared to zero) */
    uint64_t size_a, size_b;
};

/* Compare what two images read (either format, chains flattened). Like
 * qemu-img compare, images of different sizes are the same when the longer
 * one reads zero beyond the shorter, unless `is_strict`. */
int vhd_compare(const char *path_a, enum vhd_image_format fmt_a, const char *path_b,
                enum vhd_image_format fmt_b, bool is_strict, struct vhd_compare_result *res,
                struct hv_err *err);

/* =====================================================================
 * Live operations (snapshot/ section: live.c)
 *
 * A running disk gets a differencing child without closing its chain: the
 * child file (made with vhd_create beforehand) is served over the chain's
 * open bdev, which becomes its read-only parent as far as the guest is
 * concerned. A live merge later copies the child's sectors back into that
 * same open chain while the guest keeps writing to the child.
 * ===================================================================== */

/* Serve the differencing image `path` over `parent` (an open, writable
 * chain whose top is the image's parent: same size, same unique id). The
 * child does not own the parent: close it yourself after the child. Reads
 * only the child's metadata (a few KiB for a new child). */
int vhd_live_child_open(struct hv_reactor *r, const char *path, struct bdev *parent,
                        struct bdev **out, struct hv_err *err);
bool vhd_is_live_child(const struct bdev *bd);
struct bdev *vhd_live_child_parent(struct bdev *bd);
/* Flush and close the child only (the file stays, valid and durable). */
int vhd_live_child_close(struct bdev *bd);
/* Copy the child's present sectors of every block written since the last
 * pass (every block with `is_first`) into the parent. The guest may keep
 * writing meanwhile; a block it touches is copied again by the next pass.
 * Runs the reactor until the pass is done. */
int vhd_live_merge_pass(struct bdev *bd, bool is_first, uint64_t *copied_bytes,
                        struct hv_err *err);
/* Allocated blocks, and bytes, written since the last pass began. */
uint32_t vhd_live_merge_dirty_blocks(struct bdev *bd);
uint64_t vhd_live_merge_dirty_bytes(struct bdev *bd);

/* =====================================================================
 * Looking into a chain: its tree, its map (vhd-mount section:
 * chain_info.c, map.c). `vhd mount` lives in the tool (it needs fuse3,
 * which this library does not).
 * ===================================================================== */

/* How a parent was found from its child, in the order they are tried. */
enum vhd_parent_source {
    VHD_PARENT_NONE = 0,            /* the top image: nobody looked for it */
    VHD_PARENT_W2RU,                /* relative locator, beside the child */
    VHD_PARENT_W2KU,                /* absolute locator */
    VHD_PARENT_MACX,                /* file:// URL locator */
    VHD_PARENT_NAME,                /* the header's parent name, beside the child */
};
const char *vhd_parent_source_name(enum vhd_parent_source source); /* "W2ru", ... "name" */

struct vhd_chain_link {
    char path[4096];                /* as found (relative to the cwd or absolute) */
    struct vhd_info info;
    enum vhd_parent_source found_by;
    bool is_uuid_match;             /* uuid is what the child recorded (top: true) */
    bool is_timestamp_match;        /* timestamp too (a difference alone is accepted,
                                     * as Hyper-V and vhd-util accept it) */
};

struct vhd_chain_report {
    struct vhd_chain_link *links;   /* [0] = the image asked about, then its parents */
    int count;
    int problem;                    /* 0, or why the walk stopped before a base:
                                     * -ENOENT parent missing, -EINVAL identity
                                     * mismatch, -ELOOP loop or chain too deep,
                                     * other: a parent could not be read */
    char problem_msg[1024];         /* names the child and the candidate(s) */
};

/*
 * Walk the chain from `path` to its base the way vhd_open finds parents
 * (W2ru, W2ku, MacX, then the name beside the child; a candidate counts only
 * when its uuid is the one the child recorded), but keep going far enough to
 * show a broken chain: a parent with the wrong uuid ends the report as a last
 * link with is_uuid_match false, and `problem` says why the walk stopped.
 * Returns 0 (report filled, maybe with a problem) or a negative errno when
 * `path` itself cannot be inspected. Free with vhd_chain_report_free.
 */
int vhd_chain_walk(const char *path, struct vhd_chain_report *rep, struct hv_err *err);
void vhd_chain_report_free(struct vhd_chain_report *rep);
/* The chain as `vhd info --chain --json` prints it: nested objects, each
 * image's "parent" inside it. */
json_t *vhd_chain_to_json(const struct vhd_chain_report *rep);

/* One range of a chain's map, as `qemu-img map --output=json` reports them. */
struct vhd_map_extent {
    uint64_t start;                 /* virtual byte offset */
    uint64_t length;
    int depth;                      /* layer that holds it (0 = top); for a range no
                                     * layer holds: the base's depth (qemu's rule) */
    bool is_present;                /* some layer holds it */
    bool is_zero;                   /* reads as zeroes */
    bool is_data;                   /* reads from a file */
    bool has_offset;
    uint64_t offset;                /* where the data starts in that layer's file */
    const char *filename;           /* that layer's path; NULL when !is_present */
};

typedef int (*vhd_map_fn)(void *arg, const struct vhd_map_extent *ext);

/*
 * Walk the virtual disk of the image (and chain) at `path` from start to end
 * with BLOCK_STATUS through the engine, opened read-only, and call `fn` once
 * per maximal range: adjacent ranges with the same depth and flags and
 * contiguous file offsets are merged. A non-zero return from `fn` stops the
 * walk and is returned.
 */
int vhd_map(const char *path, vhd_map_fn fn, void *arg, struct hv_err *err);

/* =====================================================================
 * life-of-an-image operations: merge, compact, resize, set-parent, repair.
 * (vhd-ops section: merge.c, compact.c, resize.c, setparent.c, repair.c,
 * ops.c)
 *
 * Each is crash-safe: killed at any instant, the image (or chain) reads
 * exactly as before the operation or exactly as after it. The write order
 * that makes this true is described where the writes are issued. None of
 * them ever writes a parent that is not the operation's target.
 * ===================================================================== */

/*
 * Everything an offline operation does to files, for the crash harness:
 * writes, fdatasyncs, truncations and unlinks of metadata and relocated
 * data, each reported when it is done (synchronously), in order. Writes the
 * engine issues for the operation (merge writes the ancestor through
 * vhd_open) go to `engine`, which is handed to vhd_open. Production code
 * passes NULL.
 */
struct vhd_ops_observer {
    void (*on_write)(void *arg, const char *path, uint64_t offset, const void *buf,
                     size_t len);
    void (*on_sync)(void *arg, const char *path);
    void (*on_truncate)(void *arg, const char *path, uint64_t length);
    void (*on_unlink)(void *arg, const char *path);
    /* `path` atomically replaced by `buf` (written, synced, renamed, directory
     * synced: durable once reported). NULL: not observed. */
    void (*on_replace)(void *arg, const char *path, const void *buf, size_t len);
    const struct vhd_io_observer *engine;
    void *arg;
};

struct vhd_merge_options {
    const char *into;               /* ancestor to merge into; NULL = the parent */
    bool is_forced;                 /* merge even when other images use the ancestor */
    bool show_progress;             /* force the progress bar (-p) */
    bool keep_children;             /* do not delete the merged children (tests) */
    bool no_direct_io;
    unsigned depth;                 /* chunks in flight; 0 = 16 */
    const struct vhd_ops_observer *observer;
};

struct vhd_merge_result {
    int merged_count;               /* children folded into the ancestor */
    char ancestor[4096];            /* the image that holds the data now */
    uint64_t bytes_copied;
    double seconds;
    char users[1024];               /* other images found that use the ancestor */
};

/*
 * Fold CHILD (and every image between it and the ancestor) into the
 * ancestor (by default CHILD's parent). The data is copied through the
 * engine (crash-safe allocation), only sectors the children hold; the
 * ancestor is flushed and closed, and only then are the children deleted,
 * top first. An ancestor smaller than CHILD is grown first (vhd_resize);
 * a larger one is refused. Refuses (-EBUSY, with the list in `err`) when other images in
 * the ancestor's or the children's directories use the ancestor or an
 * intermediate child, unless `is_forced`: a VHD does not know its children,
 * so images elsewhere cannot be found.
 */
int vhd_merge(const char *child, const struct vhd_merge_options *opt,
              struct vhd_merge_result *res, struct hv_err *err);

struct vhd_compact_options {
    bool show_progress;
    bool is_dry_run;
    const struct vhd_ops_observer *observer;
};

struct vhd_compact_result {
    uint64_t file_bytes_before;
    uint64_t file_bytes_after;
    uint64_t stored_bytes_before;   /* st_blocks * 512 */
    uint64_t stored_bytes_after;
    uint32_t blocks_freed;          /* zero (or, differencing, empty) blocks given back */
    uint32_t blocks_moved;          /* relocated from the end into holes */
};

/*
 * Give back blocks that read entirely as zeroes (differencing: whose
 * present sectors are zero and the parent reads zero there too, or with no
 * sector present), fill holes with blocks from the end of the file, cut the
 * file after its last block and punch what remains unused. What the image
 * reads does not change. Fixed images have nothing to give back.
 */
int vhd_compact(const char *path, const struct vhd_compact_options *opt,
                struct vhd_compact_result *res, struct hv_err *err);

struct vhd_resize_options {
    bool is_forced;                 /* shrink even when data lies beyond the new end */
    const struct vhd_ops_observer *observer;
};

/*
 * Change the virtual size to exactly `size_bytes` (a multiple of 512). A
 * dynamic or differencing image whose BAT is too small gets a larger BAT
 * (moved after the last block when it cannot grow in place). Shrinking
 * refuses (-ENOTEMPTY) when the range cut off holds data, unless forced.
 * Geometry is recomputed per the spec; the creator fields become hvstor's.
 */
int vhd_resize(const char *path, uint64_t size_bytes, const struct vhd_resize_options *opt,
               struct hv_err *err);

struct vhd_set_parent_options {
    bool is_forced;                 /* accept a parent whose unique id differs */
    const struct vhd_ops_observer *observer;
};

/* Point a differencing image at `parent_path`: parent unique id, timestamp,
 * name and all three locators (W2ru, W2ku, MacX) are rewritten. Refuses a
 * parent whose unique id differs from the recorded one unless forced, and
 * always one of a different size. */
int vhd_set_parent(const char *child, const char *parent_path,
                   const struct vhd_set_parent_options *opt, struct hv_err *err);

struct vhd_repair_options {
    bool is_dry_run;                /* report what would be done, write nothing */
    const struct vhd_ops_observer *observer;
};

struct vhd_repair_report {
    char (*actions)[512];           /* what was (or would be) done; malloc'd */
    int action_count;
    int unrepaired_count;           /* problems repair cannot fix (listed in actions) */
};

/* Repair one image in place (never its parent): rebuild a lost footer from
 * its copy or the copy from the footer, fix checksums, drop BAT entries that
 * point outside the file or overlap metadata or other blocks, reclaim leaked
 * space. Returns 0 when the image is sound afterwards, 1 when problems
 * remain (listed), or a negative errno (with err set, report empty). */
int vhd_repair(const char *path, const struct vhd_repair_options *opt,
               struct vhd_repair_report *report, struct hv_err *err);
void vhd_repair_report_free(struct vhd_repair_report *report);

#endif /* HVSTOR_VHD_H */
