/*
 * common — what every hvstor module stands on.
 *
 * The centre is the bdev: an asynchronous block device that a VHD chain, a raw
 * file and every snapshot filter implement, and that SCSI emulation is written
 * against once. Around it sit the pieces each bdev needs to run without
 * blocking: an epoll reactor (sockets, timers, deferred calls), a libaio
 * wrapper that completes through an eventfd in that reactor and batches
 * submissions into one io_submit per loop turn, and iovec helpers. The rest is
 * small and shared: errors that carry a sentence for the user (negative errno
 * plus a message naming the file and the problem), logging to stderr,
 * big-endian access, CRC32C, xxHash, size parsing, a progress bar and JSON
 * output.
 *
 * Threading: everything here is single-threaded per reactor. A bdev belongs to
 * the reactor it was opened with and is only touched from that reactor's thread.
 */
#ifndef HVSTOR_COMMON_H
#define HVSTOR_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <jansson.h>

/* ---------------------------------------------------------------- basics */

#define HV_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define HV_MIN(a, b) ((a) < (b) ? (a) : (b))
#define HV_MAX(a, b) ((a) > (b) ? (a) : (b))
#define HV_DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define HV_ALIGN_UP(n, a) (HV_DIV_ROUND_UP(n, a) * (a))
#define HV_ALIGN_DOWN(n, a) ((n) / (a) * (a))
#define hv_container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))
#define HV_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define HV_UNUSED __attribute__((unused))

#define HV_SECTOR_BYTES 512u
#define HV_KiB (1024ull)
#define HV_MiB (1024ull * 1024)
#define HV_GiB (1024ull * 1024 * 1024)
#define HV_TiB (1024ull * 1024 * 1024 * 1024)

/* Buffer alignment that O_DIRECT accepts on every device we use. */
#define HV_DIO_ALIGN 4096u

/* posix_memalign to HV_DIO_ALIGN; NULL on failure. Free with free(). */
void *hv_alloc_aligned(size_t bytes);

/* ---------------------------------------------------------------- errors */

/*
 * Functions return 0 or a negative errno. Those a user's action can fail in
 * also take a `struct hv_err *` (may be NULL) and fill it with one sentence
 * that names the object (file, target, VM), the structure and the problem.
 * Only the tool at the top prints it, once.
 */
struct hv_err {
    int code;            /* negative errno, 0 when nothing was set */
    char msg[1024];
};

/* Set the message (replacing any earlier one) and return `code`, so that
 * `return hv_err_set(err, -EINVAL, ...)` reads as one statement. */
int hv_err_set(struct hv_err *err, int code, const char *fmt, ...) HV_PRINTF(3, 4);
/* From errno after a failed system call: "<what>: <op>: <strerror>", returns -errno. */
int hv_err_errno(struct hv_err *err, const char *what, const char *op);
/* Put context in front of an existing message: "<prefix>: <old message>". */
void hv_err_prefix(struct hv_err *err, const char *fmt, ...) HV_PRINTF(2, 3);
/* The message, or strerror(-code) when no message was set. */
const char *hv_err_msg(const struct hv_err *err, int code);
void hv_err_clear(struct hv_err *err);

/* --------------------------------------------------------------- logging */

enum hv_log_level { HV_LOG_ERROR, HV_LOG_WARN, HV_LOG_INFO, HV_LOG_DEBUG };

/* Threshold; defaults to INFO, or HVSTOR_LOG=error|warn|info|debug. */
void hv_log_set_level(enum hv_log_level level);
enum hv_log_level hv_log_get_level(void);
/* Program name shown in front of each line ("hvstord: ..."). */
void hv_log_set_ident(const char *ident);
void hv_log(enum hv_log_level level, const char *fmt, ...) HV_PRINTF(2, 3);
#define hv_error(...) hv_log(HV_LOG_ERROR, __VA_ARGS__)
#define hv_warn(...) hv_log(HV_LOG_WARN, __VA_ARGS__)
#define hv_info(...) hv_log(HV_LOG_INFO, __VA_ARGS__)
#define hv_debug(...) hv_log(HV_LOG_DEBUG, __VA_ARGS__)

/* ------------------------------------------------------------ byte order */

static inline uint16_t hv_be16(const void *p)
{
    const uint8_t *b = p;
    return (uint16_t)((b[0] << 8) | b[1]);
}
static inline uint32_t hv_be32(const void *p)
{
    const uint8_t *b = p;
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}
static inline uint64_t hv_be64(const void *p)
{
    return ((uint64_t)hv_be32(p) << 32) | hv_be32((const uint8_t *)p + 4);
}
static inline void hv_put_be16(void *p, uint16_t v)
{
    uint8_t *b = p;
    b[0] = (uint8_t)(v >> 8);
    b[1] = (uint8_t)v;
}
static inline void hv_put_be32(void *p, uint32_t v)
{
    uint8_t *b = p;
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}
static inline void hv_put_be64(void *p, uint64_t v)
{
    hv_put_be32(p, (uint32_t)(v >> 32));
    hv_put_be32((uint8_t *)p + 4, (uint32_t)v);
}
static inline uint16_t hv_le16(const void *p)
{
    const uint8_t *b = p;
    return (uint16_t)(b[0] | (b[1] << 8));
}
static inline uint32_t hv_le32(const void *p)
{
    const uint8_t *b = p;
    return b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}
static inline void hv_put_le16(void *p, uint16_t v)
{
    uint8_t *b = p;
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
}
static inline void hv_put_le32(void *p, uint32_t v)
{
    hv_put_le16(p, (uint16_t)v);
    hv_put_le16((uint8_t *)p + 2, (uint16_t)(v >> 16));
}

/* ---------------------------------------------------------------- hashes */

/* CRC32C (Castagnoli) as iSCSI digests use it: start with hv_crc32c_init(),
 * feed with _update (any number of pieces), finish with _final. SSE4.2 when
 * the CPU has it. */
static inline uint32_t hv_crc32c_init(void) { return 0xFFFFFFFFu; }
uint32_t hv_crc32c_update(uint32_t crc, const void *buf, size_t len);
static inline uint32_t hv_crc32c_final(uint32_t crc) { return crc ^ 0xFFFFFFFFu; }
/* Whole buffer in one call. */
uint32_t hv_crc32c(const void *buf, size_t len);

/* xxh3-128 of a buffer in canonical (big-endian) byte order, and as 32 hex digits. */
void hv_xxh3_128(const void *buf, size_t len, uint8_t out[16]);
void hv_xxh3_128_hex(const void *buf, size_t len, char out[33]);
uint64_t hv_xxh3_64(const void *buf, size_t len);

/* ----------------------------------------------------------------- sizes */

/*
 * "10G", "512M", "1.5T", "4096", "64k", "2GiB", "3g": binary units (K, M, G,
 * T, P, E; an optional "iB" or "B"), plain numbers are bytes. Fractions must
 * come out to a whole number of bytes. -EINVAL for garbage, -ERANGE for
 * overflow.
 */
int hv_parse_size(const char *text, uint64_t *bytes);
/* "40 GiB", "1.5 MiB", "512 B": for people, not for parsing back exactly. */
const char *hv_format_size(uint64_t bytes, char buf[32]);
/* Decimal unsigned integer, whole string, no sign; -EINVAL/-ERANGE. */
int hv_parse_u64(const char *text, uint64_t *value);

/* ---------------------------------------------------------------- iovecs */

size_t hv_iov_length(const struct iovec *iov, int iovcnt);
/* Copy between a flat buffer and the bytes [offset, offset+len) of an iovec. */
void hv_iov_to_buf(const struct iovec *iov, int iovcnt, size_t offset, void *buf, size_t len);
void hv_iov_from_buf(const struct iovec *iov, int iovcnt, size_t offset, const void *buf,
                     size_t len);
void hv_iov_memset(const struct iovec *iov, int iovcnt, size_t offset, int c, size_t len);
bool hv_iov_is_zero(const struct iovec *iov, int iovcnt, size_t offset, size_t len);
/* Describe bytes [offset, offset+len) of `iov` in `out` (at most `max` entries)
 * without copying data; returns the entry count, or -ENOSPC. */
int hv_iov_slice(const struct iovec *iov, int iovcnt, size_t offset, size_t len,
                 struct iovec *out, int max);
/* True when every base and length is a multiple of `align` (for O_DIRECT). */
bool hv_iov_is_aligned(const struct iovec *iov, int iovcnt, size_t align);
bool hv_buf_is_zero(const void *buf, size_t len);

/* --------------------------------------------------------------- reactor */

/*
 * One epoll loop per thread: file descriptors, timers and deferred calls.
 * Callbacks run on the loop's thread, never nested inside each other. Each
 * turn: run deferred calls, run pre-poll hooks (where the aio wrapper issues
 * its one io_submit), wait, dispatch fd events and expired timers.
 */
struct hv_reactor;
struct hv_watch;                                 /* one registered fd */
typedef void (*hv_fd_cb)(void *arg, uint32_t events);  /* EPOLLIN/OUT/ERR/HUP */
typedef void (*hv_call_cb)(void *arg);

struct hv_timer {                                /* caller-owned, intrusive */
    uint64_t deadline_ns;                        /* CLOCK_MONOTONIC */
    hv_call_cb cb;
    void *arg;
    struct hv_timer *next;
    bool is_armed;
};

struct hv_deferred {                             /* caller-owned, intrusive */
    hv_call_cb cb;
    void *arg;
    struct hv_deferred *next;
    bool is_queued;
};

int hv_reactor_create(struct hv_reactor **out);
/* Every watch must have been removed; timers and deferred calls are dropped. */
void hv_reactor_destroy(struct hv_reactor *r);
/* `events` is an EPOLLIN|EPOLLOUT mask (level-triggered). NULL on failure (errno set). */
struct hv_watch *hv_reactor_add_fd(struct hv_reactor *r, int fd, uint32_t events,
                                   hv_fd_cb cb, void *arg);
int hv_reactor_mod_fd(struct hv_reactor *r, struct hv_watch *w, uint32_t events);
/* Safe from inside the watch's own callback; the fd is not closed. */
void hv_reactor_del_fd(struct hv_reactor *r, struct hv_watch *w);
/* Arm (or re-arm) `t` to fire once after `ms` milliseconds. */
void hv_timer_arm(struct hv_reactor *r, struct hv_timer *t, uint64_t ms, hv_call_cb cb,
                  void *arg);
void hv_timer_cancel(struct hv_reactor *r, struct hv_timer *t);
/* Run `cb(arg)` at the start of the next loop turn; used to complete requests
 * without calling back into a caller that is still inside submit(). */
void hv_reactor_defer(struct hv_reactor *r, struct hv_deferred *d, hv_call_cb cb, void *arg);
/* Called every turn just before the loop sleeps. Returns a handle for removal. */
int hv_reactor_add_prepoll(struct hv_reactor *r, hv_call_cb cb, void *arg);
void hv_reactor_del_prepoll(struct hv_reactor *r, int handle);
/* One turn, sleeping at most `timeout_ms` (-1: until something happens). */
int hv_reactor_run_once(struct hv_reactor *r, int timeout_ms);
/* Turns until hv_reactor_stop(); returns 0 or a negative errno from epoll. */
int hv_reactor_run(struct hv_reactor *r);
void hv_reactor_stop(struct hv_reactor *r);
/* Run turns until *done becomes true (offline tools waiting for their I/O). */
int hv_reactor_run_until(struct hv_reactor *r, const bool *done);
uint64_t hv_now_ns(void);                        /* CLOCK_MONOTONIC */

/* --------------------------------------------------------------- workers */

/*
 * Threads for the blocking system calls a reactor must not make (fsync,
 * file creation, fallocate, unlink, rename, buffered writes): run(w) runs on
 * a worker thread, then done(w) on the reactor's thread. done() calls come
 * in the order the work finished: with one thread, the order it was queued.
 * The hv_work is caller-owned (embed it), so queueing allocates nothing.
 * Only the reactor's thread calls these functions.
 */
struct hv_workers;
struct hv_work {
    void (*run)(struct hv_work *w);  /* worker thread: the blocking part */
    void (*done)(struct hv_work *w); /* reactor thread, after run (may be NULL) */
    struct hv_work *next;            /* internal */
};
/* `what` names the owner in error messages. */
int hv_workers_create(struct hv_reactor *r, unsigned threads, const char *what,
                      struct hv_workers **out, struct hv_err *err);
/* Runs what is queued, joins the threads; done() of work not yet reported
 * is not called: destroy only with nothing pending. NULL is fine. */
void hv_workers_destroy(struct hv_workers *p);
void hv_workers_queue(struct hv_workers *p, struct hv_work *w);
/* Work queued whose done() has not run yet. */
unsigned hv_workers_pending(const struct hv_workers *p);
/* Control-path helper: run fn(arg) on a worker and run the reactor (serving
 * everyone else's I/O) until it returns; fn's return value. */
int hv_workers_run(struct hv_workers *p, int (*fn)(void *arg), void *arg);

/* ------------------------------------------------------------------- aio */

/*
 * libaio with completions through an eventfd in the reactor. Requests are
 * caller-owned (embed one in your per-I/O state: no allocation per I/O).
 * Submission is batched: hv_aio_submit only queues, and all queued requests
 * go to the kernel in one io_submit just before the reactor sleeps. More
 * requests than `depth` simply wait their turn; submit never fails for lack
 * of room. `res` is the byte count or a negative errno, as the kernel says.
 */
struct hv_aio;
struct hv_aio_req {
    struct hv_aio_req *next;                     /* internal */
    void (*done)(struct hv_aio_req *req, long res);
    void *arg;
    unsigned char iocb[64];                      /* struct iocb, opaque here */
};

int hv_aio_create(struct hv_reactor *r, unsigned depth, struct hv_aio **out);
/* No request may be in flight. */
void hv_aio_destroy(struct hv_aio *aio);
/*
 * The reactor's shared context, counted: the first get creates it (depth at
 * least HV_AIO_SHARED_DEPTH), the last put destroys it. io_destroy waits for
 * an RCU grace period (30-40 ms), so bdevs that open and close often share
 * one per reactor instead of paying it each. A put with none of the caller's
 * requests in flight is safe from inside a completion callback. Put a
 * context from hv_aio_create with hv_aio_destroy, not hv_aio_put.
 */
#define HV_AIO_SHARED_DEPTH 1024u
int hv_aio_get(struct hv_reactor *r, unsigned depth, struct hv_aio **out);
void hv_aio_put(struct hv_aio *aio);
void hv_aio_prep_readv(struct hv_aio_req *req, int fd, const struct iovec *iov, int iovcnt,
                       uint64_t offset);
void hv_aio_prep_writev(struct hv_aio_req *req, int fd, const struct iovec *iov, int iovcnt,
                        uint64_t offset);
/* fdatasync; the kernel runs it asynchronously (supported since Linux 4.18). */
void hv_aio_prep_fdsync(struct hv_aio_req *req, int fd);
/* After a readv/writev prep: RWF_* flags for this request (RWF_DSYNC makes a
 * write durable before it completes: the cheap way to honour FUA). */
void hv_aio_set_rw_flags(struct hv_aio_req *req, int rwf_flags);
void hv_aio_submit(struct hv_aio *aio, struct hv_aio_req *req);
/* Requests queued or in the kernel. */
unsigned hv_aio_inflight(const struct hv_aio *aio);

/* ------------------------------------------------------------------ bdev */

/*
 * An asynchronous block device. Offsets and lengths are bytes, multiples of
 * `block_bytes` (512). A request is accepted by submit() (returns 0) and then
 * completes exactly once through io->done(io, status) with status 0 or a
 * negative errno — never from inside submit() itself. submit() returns a
 * negative errno without calling done() only for a request that can never
 * succeed (misaligned, out of range, write to a read-only device).
 *
 * Requests are caller-owned. A bdev that needs per-request state says how
 * much in `io_ctx_bytes`; callers allocate bdev_io_size(bd) bytes per request
 * (once, in a pool) and the bdev uses bdev_io_ctx(io). A filter sets its
 * io_ctx_bytes to its own state plus a whole bdev_io for the bdev it wraps.
 */
struct bdev;
struct bdev_io;

enum bdev_io_type {
    BDEV_IO_READ,
    BDEV_IO_WRITE,
    BDEV_IO_FLUSH,          /* everything completed before is durable */
    BDEV_IO_DISCARD,        /* contents become unspecified; may free space */
    BDEV_IO_WRITE_ZEROES,   /* reads return zero afterwards */
    BDEV_IO_BLOCK_STATUS,   /* what backs the range: see bdev_status */
};

#define BDEV_IO_FUA (1u << 0)           /* write: durable when done() runs */
#define BDEV_IO_MAY_UNMAP (1u << 1)     /* write-zeroes: may deallocate */

/* BLOCK_STATUS result bits */
#define BDEV_STATUS_ALLOCATED (1u << 0) /* backed by storage in this device or chain */
#define BDEV_STATUS_ZERO (1u << 1)      /* known to read as zeroes */

struct bdev_io {
    enum bdev_io_type type;
    uint32_t flags;                     /* BDEV_IO_* */
    uint64_t offset;
    uint64_t length;
    struct iovec *iov;                  /* READ and WRITE only */
    int iovcnt;
    void (*done)(struct bdev_io *io, int status);
    void *cb_arg;
    /* BLOCK_STATUS output: the first `status_length` bytes from `offset` (at
     * least one block, at most `length`) all share `status`; `status_depth`
     * is the layer that holds them (0 = top of a chain, -1 = none). */
    uint32_t status;
    uint64_t status_length;
    int status_depth;
    /* followed by io_ctx_bytes of the executing bdev's private state */
    uint64_t ctx[] __attribute__((aligned(16)));
};

struct bdev_ops {
    const char *name;                   /* "vhd", "raw", "quiesce", ... */
    int (*submit)(struct bdev *bd, struct bdev_io *io);
    /* Make metadata durable and release everything. No request may be in
     * flight. May block (runs at shutdown, not on the I/O path). */
    int (*close)(struct bdev *bd);
    /* Optional: change the virtual size (online resize). No request may be
     * in flight (the caller drains and holds I/O around it; -EBUSY
     * otherwise); bd->size_bytes is the new size on success. May block
     * briefly to make metadata durable. A back end may refuse to shrink. */
    int (*resize)(struct bdev *bd, uint64_t size_bytes, struct hv_err *err);
    /* Optional: add kind-specific facts to an info object (vhd info, hvctl). */
    void (*describe)(struct bdev *bd, json_t *obj);
};

struct bdev {
    const struct bdev_ops *ops;
    struct hv_reactor *reactor;
    char name[256];                     /* path or label, for messages */
    uint64_t size_bytes;                /* virtual size, exact */
    uint32_t block_bytes;               /* logical block, 512 */
    uint32_t physical_block_bytes;      /* reported to guests, 4096 */
    uint32_t granularity_bytes;         /* allocation unit (VHD block), 0 if none */
    uint32_t max_io_bytes;              /* largest request accepted, 0 = no limit */
    size_t io_ctx_bytes;
    bool is_read_only;
    bool has_volatile_cache;            /* writes need FLUSH to be durable */
    bool can_discard;                   /* DISCARD really frees space */
    bool discard_zeroes;                /* after DISCARD reads return zeroes */
    uint8_t uuid[16];                   /* stable identity (VHD unique id), 0 if none */
};

/* Rounded to the struct's alignment, so that requests laid out in an array
 * (a pool) keep their ctx[] 16-byte aligned whatever io_ctx_bytes is. */
static inline size_t bdev_io_size(const struct bdev *bd)
{
    return HV_ALIGN_UP(sizeof(struct bdev_io) + bd->io_ctx_bytes,
                       _Alignof(struct bdev_io));
}
static inline void *bdev_io_ctx(struct bdev_io *io) { return io->ctx; }

/* Validate alignment and range, then hand to the bdev. */
int bdev_submit(struct bdev *bd, struct bdev_io *io);
int bdev_close(struct bdev *bd);

/*
 * Synchronous helpers for offline tools and tests: submit one request and run
 * the bdev's reactor until it completes. Not for the I/O path of the daemon.
 */
int bdev_read_sync(struct bdev *bd, uint64_t offset, void *buf, uint64_t length);
int bdev_write_sync(struct bdev *bd, uint64_t offset, const void *buf, uint64_t length,
                    uint32_t flags);
int bdev_flush_sync(struct bdev *bd);
int bdev_request_sync(struct bdev *bd, enum bdev_io_type type, uint64_t offset,
                      uint64_t length, uint32_t flags);
/* BLOCK_STATUS of [offset, offset+length): fills status, status_length, depth. */
int bdev_block_status_sync(struct bdev *bd, uint64_t offset, uint64_t length,
                           uint32_t *status, uint64_t *status_length, int *depth);

/*
 * A raw image file (or block device) as a bdev, through libaio. With
 * `use_direct_io` the file is opened O_DIRECT and unaligned buffers are
 * bounced. Discard punches holes; block status reports holes (SEEK_DATA).
 */
struct bdev_raw_options {
    bool is_read_only;
    bool use_direct_io;
    bool create;                        /* create/truncate to `size_bytes` */
    uint64_t size_bytes;
    unsigned queue_depth;               /* 0: 128 */
};
int bdev_raw_open(struct hv_reactor *r, const char *path, const struct bdev_raw_options *opt,
                  struct bdev **out, struct hv_err *err);

/* -------------------------------------------------------------- progress */

/*
 * A one-line progress bar on stderr for long work: shown when stderr is a
 * terminal or when forced (-p), updated at most ten times a second.
 */
struct hv_progress {
    const char *label;
    uint64_t total;
    uint64_t done;
    uint64_t last_draw_ns;
    uint64_t start_ns;
    bool is_shown;
};
void hv_progress_begin(struct hv_progress *p, const char *label, uint64_t total, bool force);
void hv_progress_update(struct hv_progress *p, uint64_t done);
void hv_progress_end(struct hv_progress *p);

/* ------------------------------------------------------------------ json */

/* Print `obj` to `f`, two-space indent, keys in insertion order, newline. */
int hv_json_print(FILE *f, const json_t *obj);
/* Write atomically: temp file in the same directory, fsync, rename, fsync dir. */
int hv_json_write_file(const char *path, const json_t *obj, struct hv_err *err);
int hv_json_read_file(const char *path, json_t **out, struct hv_err *err);
/* Write a whole buffer to `path` atomically the same way. */
int hv_write_file_atomic(const char *path, const void *buf, size_t len, struct hv_err *err);

/* ------------------------------------------------------------------ misc */

/* Full read/write at an offset, retrying short transfers and EINTR (blocking:
 * for metadata at open/close and offline tools, never the I/O path). */
int hv_pread_full(int fd, void *buf, size_t len, uint64_t offset);
int hv_pwrite_full(int fd, const void *buf, size_t len, uint64_t offset);
/* Random bytes from getrandom(2). */
int hv_random_bytes(void *buf, size_t len);
/* RFC 4122 version-4 UUID, and its text form (36 chars + NUL). */
void hv_uuid_generate(uint8_t uuid[16]);
void hv_uuid_format(const uint8_t uuid[16], char out[37]);
int hv_uuid_parse(const char *text, uint8_t uuid[16]);
bool hv_uuid_is_nil(const uint8_t uuid[16]);
/* The value of hex digit `c` (either case), -1 if it is not one. */
int hv_hex_value(char c);

#endif /* HVSTOR_COMMON_H */
