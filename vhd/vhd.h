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
 * at once. The data writes of a FUA request go out with RWF_DSYNC (durable on
 * completion) from the request's own buffers. Closing is reported too except
 * its final ftruncate. Production code passes NULL. */
struct vhd_io_observer {
    void (*on_submit)(void *arg, int seq, bool is_sync, uint64_t offset,
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
    VHD_CHECK_LEAKED = 3,
};

struct vhd_check_problem {
    bool is_leak;                   /* only leaked space, not corruption */
    char msg[512];
};

struct vhd_check_report {
    struct vhd_check_problem *problems;   /* malloc'd; vhd_check_report_free */
    int problem_count;
    uint64_t leaked_bytes;
};

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

#endif /* HVSTOR_VHD_H */
