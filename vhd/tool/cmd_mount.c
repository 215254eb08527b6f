/*
 * vhd mount / vhd unmount: a VHD chain's virtual disk as one file, through
 * FUSE, so that `losetup -P` and `mount` work on it on the host.
 *
 * One thread does everything. The FUSE session's /dev/fuse descriptor is one
 * more fd in the engine's epoll reactor, next to the aio eventfd: a request
 * from the kernel is decoded by libfuse's low-level API inside the reactor
 * callback, turned into a bdev request, and answered (fuse_reply_*) from the
 * bdev's completion, later, on the same thread. Nothing waits for anything
 * else, so FUSE's loop and the engine cannot deadlock, and there are no locks.
 * The FUSE fd is non-blocking; when every request slot is busy it is taken
 * out of the reactor until one frees up (back-pressure instead of a queue).
 *
 * Each slot owns one aligned buffer of MOUNT_IO_BYTES + one sector either
 * side: reads land there and are replied from there; a write's data is
 * copied there at once (libfuse reuses its receive buffer for the next
 * request). Requests not aligned to 512 bytes are widened (reads) or done as
 * read-modify-write of their partial first and last sectors (writes); an
 * RMW runs alone among writes, so that two overlapping partial writes cannot
 * undo each other.
 *
 * Daemon: `vhd mount` forks before it opens anything (epoll and aio contexts
 * do not survive a fork); the child opens the image, mounts, and tells the
 * parent through a pipe whether that worked, so errors still reach the
 * user's terminal and the exit status. `vhd unmount` asks the daemon's pid
 * through an xattr of the mount's root, runs `fusermount3 -u`, and waits for
 * the daemon to exit: when it returns, the image is flushed and closed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tool.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define MOUNT_XATTR_PID "user.hvstor.pid"
#define MOUNT_XATTR_IMAGE "user.hvstor.image"

#ifdef HVSTOR_HAVE_FUSE3

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <sys/epoll.h>

#define MOUNT_IO_BYTES (1024u * 1024)     /* max_write and the largest read */
#define MOUNT_BUF_BYTES (MOUNT_IO_BYTES + 2 * 4096)
#define MOUNT_SLOTS 64
#define MOUNT_READAHEAD_KB 4096
#define INO_ROOT 1
#define INO_DISK 2
#define DISK_NAME "disk"

enum mount_op { OP_READ, OP_WRITE, OP_FLUSH };

struct mount;

struct slot {
    struct mount *m;
    struct slot *next;              /* free list or write wait queue */
    fuse_req_t req;
    enum mount_op op;
    uint64_t off;                   /* what the kernel asked */
    size_t size;
    uint64_t aligned_off;           /* what the engine does */
    uint64_t aligned_len;
    bool is_rmw;
    enum { RMW_HEAD, RMW_TAIL, RMW_WRITE } rmw_stage;
    uint8_t *buf;
    uint8_t *edge;                  /* one sector of an RMW's partial edge */
    struct iovec iov;
    struct bdev_io *io;
};

struct mount {
    struct hv_reactor *r;
    struct bdev *bd;
    struct fuse_session *se;
    struct hv_watch *fuse_watch;
    struct fuse_buf fbuf;
    int sig_fd;
    struct hv_watch *sig_watch;
    struct slot slots[MOUNT_SLOTS];
    struct slot *free_list;
    unsigned free_count;
    unsigned busy;                  /* slots handed to the engine */
    unsigned writes_inflight;
    bool is_rmw_active;
    struct slot *wait_head;         /* writes waiting for an RMW (or for one) */
    struct slot *wait_tail;
    bool is_read_only;
    bool is_direct_io;
    bool is_fuse_paused;
    bool is_stopping;
    bool is_mounted;
    bool is_initialized;            /* FUSE INIT answered */
    bool is_readahead_set;
    char mountpoint[PATH_MAX];      /* resolved: the daemon runs in / */
    int io_error;                   /* first engine error, for the log at exit */
    uint64_t size_bytes;
    struct timespec mtime;
    char image[PATH_MAX];
};

/* ------------------------------------------------------------------ slots */

static struct slot *slot_get(struct mount *m)
{
    struct slot *s = m->free_list;
    if (!s)
        return NULL;
    m->free_list = s->next;
    m->free_count--;
    s->next = NULL;
    return s;
}

static void resume_fuse(struct mount *m);

static void slot_put(struct slot *s)
{
    struct mount *m = s->m;
    s->next = m->free_list;
    m->free_list = s;
    m->free_count++;
    resume_fuse(m);
}

static void submit_io(struct slot *s, enum bdev_io_type type, uint64_t off, uint64_t len,
                      uint8_t *buf);

static void io_done(struct bdev_io *io, int status);

/* The next step of a write: read the partial first sector, the partial
 * last sector (unless it is the same one), then write the whole range. */
static void write_step(struct slot *s)
{
    uint64_t end = s->off + s->size;
    uint64_t tail = HV_ALIGN_DOWN(end, HV_SECTOR_BYTES);
    if (s->rmw_stage == RMW_HEAD) {
        if (s->off != s->aligned_off) {
            submit_io(s, BDEV_IO_READ, s->aligned_off, HV_SECTOR_BYTES, s->edge);
            return;
        }
        s->rmw_stage = RMW_TAIL;
    }
    if (s->rmw_stage == RMW_TAIL) {
        if (end != tail && !(s->off != s->aligned_off && tail == s->aligned_off)) {
            submit_io(s, BDEV_IO_READ, tail, HV_SECTOR_BYTES, s->edge);
            return;
        }
        s->rmw_stage = RMW_WRITE;
    }
    submit_io(s, BDEV_IO_WRITE, s->aligned_off, s->aligned_len, s->buf);
}

/* An edge sector came in: keep its bytes the write does not cover. */
static void merge_edge(struct slot *s)
{
    uint64_t end = s->off + s->size;
    uint64_t tail = HV_ALIGN_DOWN(end, HV_SECTOR_BYTES);
    uint64_t sector = s->rmw_stage == RMW_HEAD ? s->aligned_off : tail;
    uint8_t *dst = s->buf + (sector - s->aligned_off);
    if (sector < s->off)
        memcpy(dst, s->edge, s->off - sector);
    if (end != tail && sector == tail)
        memcpy(dst + (end - tail), s->edge + (end - tail), HV_SECTOR_BYTES - (end - tail));
}

static void start_write(struct slot *s)
{
    struct mount *m = s->m;
    m->writes_inflight++;
    if (s->is_rmw)
        m->is_rmw_active = true;
    s->rmw_stage = s->is_rmw ? RMW_HEAD : RMW_WRITE;
    write_step(s);
}

/* Writes wait while an RMW runs; an RMW waits until no write runs. */
static bool write_may_start(struct mount *m, const struct slot *s)
{
    if (m->is_rmw_active)
        return false;
    return !s->is_rmw || m->writes_inflight == 0;
}

static void pump_writes(struct mount *m)
{
    while (m->wait_head && write_may_start(m, m->wait_head)) {
        struct slot *s = m->wait_head;
        m->wait_head = s->next;
        if (!m->wait_head)
            m->wait_tail = NULL;
        s->next = NULL;
        start_write(s);
    }
}

static void queue_write(struct slot *s)
{
    struct mount *m = s->m;
    if (!m->wait_head && write_may_start(m, s)) {
        start_write(s);
        return;
    }
    s->next = NULL;
    if (m->wait_tail)
        m->wait_tail->next = s;
    else
        m->wait_head = s;
    m->wait_tail = s;
}

static void submit_io(struct slot *s, enum bdev_io_type type, uint64_t off, uint64_t len,
                      uint8_t *buf)
{
    struct bdev_io *io = s->io;
    int ret;
    memset(io, 0, sizeof(*io));
    io->type = type;
    io->done = io_done;
    io->cb_arg = s;
    if (type == BDEV_IO_READ || type == BDEV_IO_WRITE) {
        s->iov.iov_base = buf;
        s->iov.iov_len = len;
        io->offset = off;
        io->length = len;
        io->iov = &s->iov;
        io->iovcnt = 1;
    }
    s->m->busy++;
    ret = bdev_submit(s->m->bd, io);
    if (ret < 0) {
        /* Refused outright (never completes): finish as if it failed. */
        io_done(io, ret);
    }
}

static void finish_write(struct slot *s, int status)
{
    struct mount *m = s->m;
    m->writes_inflight--;
    if (s->is_rmw)
        m->is_rmw_active = false;
    if (status < 0)
        fuse_reply_err(s->req, -status);
    else
        fuse_reply_write(s->req, s->size);
    slot_put(s);
    pump_writes(m);
}

static void io_done(struct bdev_io *io, int status)
{
    struct slot *s = io->cb_arg;
    struct mount *m = s->m;

    m->busy--;
    if (status < 0 && !m->io_error)
        m->io_error = status;
    switch (s->op) {
    case OP_READ:
        if (status < 0)
            fuse_reply_err(s->req, -status);
        else
            fuse_reply_buf(s->req, (const char *)s->buf + (s->off - s->aligned_off), s->size);
        slot_put(s);
        break;
    case OP_FLUSH:
        fuse_reply_err(s->req, status < 0 ? -status : 0);
        slot_put(s);
        break;
    case OP_WRITE:
        if (s->rmw_stage != RMW_WRITE && status == 0) {
            merge_edge(s);
            s->rmw_stage = s->rmw_stage == RMW_HEAD ? RMW_TAIL : RMW_WRITE;
            write_step(s);
            break;
        }
        finish_write(s, status);
        break;
    }
}

/* ------------------------------------------------------------- fuse ops */

static void fill_stat(struct mount *m, fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = ino;
    st->st_uid = getuid();
    st->st_gid = getgid();
    st->st_atim = m->mtime;
    st->st_mtim = m->mtime;
    st->st_ctim = m->mtime;
    if (ino == INO_ROOT) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
    } else {
        st->st_mode = S_IFREG | (m->is_read_only ? 0444 : 0644);
        st->st_nlink = 1;
        st->st_size = (off_t)m->size_bytes;
        st->st_blksize = 4096;
        st->st_blocks = (blkcnt_t)(m->size_bytes / 512);
    }
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    struct mount *m = userdata;
    m->is_initialized = true;
    conn->max_write = MOUNT_IO_BYTES;
    conn->max_read = MOUNT_IO_BYTES;     /* as the max_read= mount option says */
    conn->max_readahead = MOUNT_IO_BYTES;
    conn->max_background = MOUNT_SLOTS / 2;
    conn->congestion_threshold = MOUNT_SLOTS / 2 * 3 / 4;
    /* Splicing would make libfuse allocate a buffer per write request. */
    conn->want &= ~(unsigned)(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
                              FUSE_CAP_SPLICE_MOVE);
    if (conn->capable & FUSE_CAP_ASYNC_READ)
        conn->want |= FUSE_CAP_ASYNC_READ;
    if (conn->capable & FUSE_CAP_ASYNC_DIO)
        conn->want |= FUSE_CAP_ASYNC_DIO;
    /*
     * No write-back cache: with it the kernel owns the file size and lets
     * a write past the end grow the disk file (a disk cannot grow), and it
     * was slower here anyway (512 MiB dd with fsync: 2.0 s, against 0.76 s
     * write-through in 1 MiB requests and 1.7 s with direct_io).
     */
    conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
}

static const double attr_timeout = 86400.0;   /* nobody else changes the disk */

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct mount *m = fuse_req_userdata(req);
    struct fuse_entry_param e;
    if (parent != INO_ROOT || strcmp(name, DISK_NAME) != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    memset(&e, 0, sizeof(e));
    e.ino = INO_DISK;
    e.attr_timeout = attr_timeout;
    e.entry_timeout = attr_timeout;
    fill_stat(m, INO_DISK, &e.attr);
    fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct mount *m = fuse_req_userdata(req);
    struct stat st;
    (void)fi;
    if (ino != INO_ROOT && ino != INO_DISK) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    fill_stat(m, ino, &st);
    fuse_reply_attr(req, &st, attr_timeout);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
    struct mount *m = fuse_req_userdata(req);
    struct stat st;
    (void)fi;
    /* The disk's size is the image's virtual size: `vhd resize` changes it,
     * truncate(2) does not. Times are accepted and kept. */
    if ((to_set & FUSE_SET_ATTR_SIZE) && (ino != INO_DISK ||
                                          (uint64_t)attr->st_size != m->size_bytes)) {
        fuse_reply_err(req, m->is_read_only ? EROFS : EPERM);
        return;
    }
    if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
        fuse_reply_err(req, EPERM);
        return;
    }
    if (to_set & FUSE_SET_ATTR_MTIME)
        m->mtime = attr->st_mtim;
    if (to_set & FUSE_SET_ATTR_MTIME_NOW)
        clock_gettime(CLOCK_REALTIME, &m->mtime);
    fill_stat(m, ino, &st);
    fuse_reply_attr(req, &st, attr_timeout);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct mount *m = fuse_req_userdata(req);
    if (ino != INO_DISK) {
        fuse_reply_err(req, ino == INO_ROOT ? EISDIR : ENOENT);
        return;
    }
    if (m->is_read_only && (fi->flags & O_ACCMODE) != O_RDONLY) {
        fuse_reply_err(req, EROFS);
        return;
    }
    fi->direct_io = m->is_direct_io;
    /* Only this process changes the disk, so the page cache stays valid
     * from one open to the next. */
    fi->keep_cache = !m->is_direct_io;
    fuse_reply_open(req, fi);
}

static bool slot_for(fuse_req_t req, struct mount *m, struct slot **out)
{
    struct slot *s = slot_get(m);
    if (!s) {
        /* Cannot happen: the fd is only read with a slot free. */
        fuse_reply_err(req, EAGAIN);
        return false;
    }
    s->req = req;
    s->is_rmw = false;
    *out = s;
    return true;
}

/* A slot for a read or write of `size` bytes at `off` (inside the disk): like
 * a block device, a request that runs past the end is cut short; the slot
 * covers it in whole sectors. False when the request is already answered. */
static bool slot_for_range(fuse_req_t req, struct mount *m, enum mount_op op, uint64_t off,
                           size_t size, struct slot **out)
{
    struct slot *s;
    size = (size_t)HV_MIN((uint64_t)size, m->size_bytes - off);
    if (size > MOUNT_IO_BYTES) {
        fuse_reply_err(req, EINVAL);
        return false;
    }
    if (!slot_for(req, m, &s))
        return false;
    s->op = op;
    s->off = off;
    s->size = size;
    s->aligned_off = HV_ALIGN_DOWN(off, HV_SECTOR_BYTES);
    s->aligned_len = HV_ALIGN_UP(off + size, HV_SECTOR_BYTES) - s->aligned_off;
    *out = s;
    return true;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    struct mount *m = fuse_req_userdata(req);
    struct slot *s;
    (void)fi;
    if (ino != INO_DISK) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if (off < 0 || (uint64_t)off >= m->size_bytes || size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (!slot_for_range(req, m, OP_READ, (uint64_t)off, size, &s))
        return;
    submit_io(s, BDEV_IO_READ, s->aligned_off, s->aligned_len, s->buf);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
    struct mount *m = fuse_req_userdata(req);
    struct slot *s;
    (void)fi;
    if (ino != INO_DISK) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if (m->is_read_only) {
        fuse_reply_err(req, EROFS);
        return;
    }
    if (off < 0 || (uint64_t)off >= m->size_bytes) {
        fuse_reply_err(req, size ? ENOSPC : 0);
        return;
    }
    if (!slot_for_range(req, m, OP_WRITE, (uint64_t)off, size, &s))
        return;
    s->is_rmw = s->aligned_off != s->off || s->aligned_len != s->size;
    memcpy(s->buf + (s->off - s->aligned_off), buf, s->size);
    queue_write(s);
}

static void op_flush_common(fuse_req_t req, struct mount *m)
{
    struct slot *s;
    if (m->is_read_only) {
        fuse_reply_err(req, 0);
        return;
    }
    if (!slot_for(req, m, &s))
        return;
    s->op = OP_FLUSH;
    submit_io(s, BDEV_IO_FLUSH, 0, 0, NULL);
}

/* close(2) of a writer: make what it wrote durable, as a disk's cache flush
 * at the end of a job would; fsync(2) the same. */
static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    if ((fi->flags & O_ACCMODE) == O_RDONLY) {
        fuse_reply_err(req, 0);
        return;
    }
    op_flush_common(req, fuse_req_userdata(req));
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    (void)ino;
    (void)datasync;
    (void)fi;
    op_flush_common(req, fuse_req_userdata(req));
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    (void)ino;
    (void)fi;
    fuse_reply_err(req, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (ino != INO_ROOT) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    static const struct {
        const char *name;
        fuse_ino_t ino;
        mode_t mode;
    } ents[] = { { ".", INO_ROOT, S_IFDIR }, { "..", INO_ROOT, S_IFDIR },
                 { DISK_NAME, INO_DISK, S_IFREG } };
    char buf[512];
    size_t used = 0;
    (void)fi;
    if (ino != INO_ROOT) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    for (size_t i = (size_t)(off < 0 ? 0 : off); i < HV_ARRAY_SIZE(ents); i++) {
        struct stat st = { .st_ino = ents[i].ino, .st_mode = ents[i].mode };
        size_t need = fuse_add_direntry(req, buf + used, HV_MIN(size, sizeof(buf)) - used,
                                        ents[i].name, &st, (off_t)(i + 1));
        if (used + need > HV_MIN(size, sizeof(buf)))
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
    struct mount *m = fuse_req_userdata(req);
    struct statvfs sv;
    (void)ino;
    memset(&sv, 0, sizeof(sv));
    sv.f_bsize = 4096;
    sv.f_frsize = 4096;
    sv.f_blocks = HV_DIV_ROUND_UP(m->size_bytes, 4096);
    sv.f_files = 2;
    sv.f_namemax = 255;
    fuse_reply_statfs(req, &sv);
}

static void reply_xattr_text(fuse_req_t req, size_t size, const char *text)
{
    size_t len = strlen(text);
    if (size == 0)
        fuse_reply_xattr(req, len);
    else if (size < len)
        fuse_reply_err(req, ERANGE);
    else
        fuse_reply_buf(req, text, len);
}

/* How `vhd unmount` finds the daemon to wait for, and what it serves. */
static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    struct mount *m = fuse_req_userdata(req);
    char pid[32];
    if (ino == INO_ROOT && !strcmp(name, MOUNT_XATTR_PID)) {
        snprintf(pid, sizeof(pid), "%ld", (long)getpid());
        reply_xattr_text(req, size, pid);
    } else if (ino == INO_ROOT && !strcmp(name, MOUNT_XATTR_IMAGE)) {
        reply_xattr_text(req, size, m->image);
    } else {
        fuse_reply_err(req, ENODATA);
    }
}

static const struct fuse_lowlevel_ops mount_ops = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .release = op_release,
    .fsync = op_fsync,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .statfs = op_statfs,
    .getxattr = op_getxattr,
};

/* ------------------------------------------------------------ the loop */

static void on_fuse(void *arg, uint32_t events);
static void raise_readahead(const char *mountpoint);

static void pause_fuse(struct mount *m)
{
    if (!m->is_fuse_paused && m->fuse_watch) {
        hv_reactor_mod_fd(m->r, m->fuse_watch, 0);
        m->is_fuse_paused = true;
    }
}

static void resume_fuse(struct mount *m)
{
    if (m->is_fuse_paused && m->fuse_watch && !m->is_stopping) {
        hv_reactor_mod_fd(m->r, m->fuse_watch, EPOLLIN);
        m->is_fuse_paused = false;
    }
}

static void begin_stop(struct mount *m)
{
    if (m->is_stopping)
        return;
    m->is_stopping = true;
    if (m->fuse_watch) {
        hv_reactor_del_fd(m->r, m->fuse_watch);
        m->fuse_watch = NULL;
    }
}

static void on_fuse(void *arg, uint32_t events)
{
    struct mount *m = arg;
    (void)events;
    /* A few requests per wake-up, so that completions get their turn. */
    for (int n = 0; n < 16 && !m->is_stopping; n++) {
        int res;
        if (m->free_count == 0) {
            pause_fuse(m);
            return;
        }
        res = fuse_session_receive_buf(m->se, &m->fbuf);
        if (res == -EAGAIN || res == -EINTR || res == -ENOENT)
            return;
        if (res <= 0 || fuse_session_exited(m->se)) {
            /* Unmounted (ENODEV) or the connection is gone. */
            begin_stop(m);
            return;
        }
        fuse_session_process_buf(m->se, &m->fbuf);
        /* After INIT's reply, which sets the bdi's readahead to what was
         * negotiated. */
        if (m->is_initialized && !m->is_readahead_set) {
            m->is_readahead_set = true;
            if (!m->is_direct_io)
                raise_readahead(m->mountpoint);
        }
    }
}

static void on_signal(void *arg, uint32_t events)
{
    struct mount *m = arg;
    struct signalfd_siginfo si;
    (void)events;
    if (read(m->sig_fd, &si, sizeof(si)) != (ssize_t)sizeof(si))
        return;
    /* Leave the mount point free; the kernel ends the connection once no
     * one has the disk open any more. */
    if (m->is_mounted) {
        fuse_session_unmount(m->se);
        m->is_mounted = false;
    }
    begin_stop(m);
}

/* --------------------------------------------------------- mount, daemon */

struct mount_args {
    const char *image;
    const char *mountpoint;
    bool is_read_only;
    bool is_foreground;
    bool is_direct_io;
    bool is_buffered;               /* engine without O_DIRECT */
    bool allow_other;
};

/* Report to the waiting parent: status 0 and nothing, or 1 and a message. */
static void tell_parent(int fd, int status, const char *msg)
{
    char out[1100];
    int len;
    if (fd < 0)
        return;
    len = snprintf(out, sizeof(out), "%d%s", status, msg ? msg : "");
    if (write(fd, out, (size_t)HV_MIN(len, (int)sizeof(out) - 1)) < 0)
        return;
}

static void mount_free(struct mount *m)
{
    if (m->sig_watch)
        hv_reactor_del_fd(m->r, m->sig_watch);
    if (m->sig_fd >= 0)
        close(m->sig_fd);
    if (m->fuse_watch)
        hv_reactor_del_fd(m->r, m->fuse_watch);
    if (m->se) {
        if (m->is_mounted)
            fuse_session_unmount(m->se);
        fuse_session_destroy(m->se);
    }
    free(m->fbuf.mem);
    for (int i = 0; i < MOUNT_SLOTS; i++) {
        free(m->slots[i].buf);
        free(m->slots[i].edge);
        free(m->slots[i].io);
    }
    if (m->bd)
        bdev_close(m->bd);
    if (m->r)
        hv_reactor_destroy(m->r);
    free(m);
}

static int mount_setup(struct mount *m, const struct mount_args *a, struct hv_err *err)
{
    struct vhd_open_options opt = { .is_read_only = a->is_read_only,
                                    .no_direct_io = a->is_buffered };
    char fsname[PATH_MAX + 16];
    char mopts[PATH_MAX + 128];
    char *argv[4];
    struct fuse_args args;
    struct stat st;
    sigset_t sigs;
    int ret;

    if (stat(a->mountpoint, &st) < 0)
        return hv_err_errno(err, a->mountpoint, "mount point");
    if (!S_ISDIR(st.st_mode))
        return hv_err_set(err, -ENOTDIR, "%s: mount point is not a directory", a->mountpoint);
    if (!realpath(a->image, m->image))
        return hv_err_errno(err, a->image, "open");
    if (!realpath(a->mountpoint, m->mountpoint))
        return hv_err_errno(err, a->mountpoint, "mount point");
    ret = hv_reactor_create(&m->r);
    if (ret < 0)
        return hv_err_set(err, ret, "cannot create a reactor: %s", strerror(-ret));
    ret = vhd_open(m->r, a->image, &opt, &m->bd, err);
    if (ret == -EINVAL && !a->is_buffered && strstr(hv_err_msg(err, ret), "O_DIRECT")) {
        opt.no_direct_io = true;
        hv_err_clear(err);
        ret = vhd_open(m->r, a->image, &opt, &m->bd, err);
    }
    if (ret < 0)
        return ret;
    m->size_bytes = m->bd->size_bytes;
    m->is_read_only = a->is_read_only;
    m->is_direct_io = a->is_direct_io;
    clock_gettime(CLOCK_REALTIME, &m->mtime);
    for (int i = 0; i < MOUNT_SLOTS; i++) {
        struct slot *s = &m->slots[i];
        s->m = m;
        s->buf = hv_alloc_aligned(MOUNT_BUF_BYTES);
        s->io = calloc(1, bdev_io_size(m->bd));
        s->edge = hv_alloc_aligned(4096);
        if (!s->buf || !s->io || !s->edge)
            return hv_err_set(err, -ENOMEM, "out of memory");
        s->next = m->free_list;
        m->free_list = s;
        m->free_count++;
    }

    /* fsname shows in /proc/mounts; libfuse splits options at commas. */
    snprintf(fsname, sizeof(fsname), "%s", m->image);
    for (char *c = fsname; *c; c++)
        if (*c == ',' || *c == '\\')
            *c = '_';
    snprintf(mopts, sizeof(mopts), "fsname=%s,subtype=vhd,max_read=%u%s%s", fsname,
             MOUNT_IO_BYTES, a->is_read_only ? ",ro" : "",
             a->allow_other ? ",allow_other" : "");
    argv[0] = (char *)"vhd";
    argv[1] = (char *)"-o";
    argv[2] = mopts;
    argv[3] = NULL;
    args = (struct fuse_args)FUSE_ARGS_INIT(3, argv);
    m->se = fuse_session_new(&args, &mount_ops, sizeof(mount_ops), m);
    fuse_opt_free_args(&args);          /* the session keeps its own copy */
    if (!m->se)
        return hv_err_set(err, -EINVAL, "%s: cannot create a FUSE session", a->mountpoint);
    if (fuse_session_mount(m->se, m->mountpoint) != 0)
        return hv_err_set(err, -EIO, "%s: FUSE mount failed (is /dev/fuse there, and "
                          "fusermount3?)", a->mountpoint);
    m->is_mounted = true;
    if (fcntl(fuse_session_fd(m->se), F_SETFL,
              fcntl(fuse_session_fd(m->se), F_GETFL) | O_NONBLOCK) < 0)
        return hv_err_errno(err, a->mountpoint, "fcntl O_NONBLOCK on /dev/fuse");
    m->fuse_watch = hv_reactor_add_fd(m->r, fuse_session_fd(m->se), EPOLLIN, on_fuse, m);
    if (!m->fuse_watch)
        return hv_err_errno(err, a->mountpoint, "epoll");

    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    m->sig_fd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
    if (m->sig_fd < 0)
        return hv_err_errno(err, "signalfd", "create");
    m->sig_watch = hv_reactor_add_fd(m->r, m->sig_fd, EPOLLIN, on_signal, m);
    if (!m->sig_watch)
        return hv_err_errno(err, "signalfd", "epoll");
    return 0;
}

/*
 * The kernel offers FUSE only 128 KiB of readahead at INIT, and sequential
 * reads of the disk file then run at half the engine's speed (measured:
 * 512 MiB in 0.89 s at 128 KiB, 0.48 s at 4 MiB, the engine alone 0.43 s).
 * The mount's bdi takes more through sysfs. The device number comes from
 * /proc/self/mountinfo: a stat() of the mount point would be a FUSE request
 * to this very process, which is not serving yet. Best effort (needs root).
 */
static void raise_readahead(const char *mountpoint)
{
    char line[PATH_MAX * 2];
    char bdi[128] = "";
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        unsigned maj;
        unsigned min;
        char point[PATH_MAX];
        /* id parent major:minor root mount-point ... (octal escapes for
         * spaces: such a mount point simply does not match). */
        if (sscanf(line, "%*u %*u %u:%u %*s %4095s", &maj, &min, point) == 3 &&
            !strcmp(point, mountpoint))
            snprintf(bdi, sizeof(bdi), "/sys/class/bdi/%u:%u/read_ahead_kb", maj, min);
    }
    fclose(f);
    if (bdi[0]) {
        int fd = open(bdi, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            char kb[16];
            int len = snprintf(kb, sizeof(kb), "%u", MOUNT_READAHEAD_KB);
            if (write(fd, kb, (size_t)len) < 0)
                hv_debug("%s: %s", bdi, strerror(errno));
            close(fd);
        }
    }
}

/* Serve until unmounted or signalled, then drain, flush and close. */
static int mount_serve(struct mount *m)
{
    int ret = 0;
    int close_ret;
    while (!m->is_stopping || m->busy > 0) {
        ret = hv_reactor_run_once(m->r, -1);
        if (ret < 0 && ret != -EINTR)
            break;
        ret = 0;
    }
    if (!m->is_read_only) {
        int fr = bdev_flush_sync(m->bd);
        if (fr < 0 && !ret)
            ret = fr;
    }
    close_ret = bdev_close(m->bd);
    m->bd = NULL;
    if (close_ret < 0 && !ret)
        ret = close_ret;
    if (m->io_error)
        hv_log(HV_LOG_WARN, "%s: an I/O request failed while mounted: %s", m->image,
               strerror(-m->io_error));
    return ret;
}

static void daemon_log(const char *image, int ret, int io_error)
{
    openlog("vhd-mount", LOG_PID, LOG_DAEMON);
    if (io_error < 0)
        syslog(LOG_WARNING, "%s: an I/O request failed while mounted: %s", image,
               strerror(-io_error));
    if (ret < 0)
        syslog(LOG_ERR, "%s: closing after unmount failed: %s", image, strerror(-ret));
    else
        syslog(LOG_INFO, "%s: unmounted, flushed and closed", image);
    closelog();
}

static int run_mount(const struct mount_args *a)
{
    int pipefd[2] = { -1, -1 };
    int report_fd = -1;
    struct mount *m;
    struct hv_err err = { 0 };
    int ret;

    if (!a->is_foreground) {
        pid_t pid;
        if (pipe2(pipefd, O_CLOEXEC) < 0) {
            tool_error("pipe: %s", strerror(errno));
            return 1;
        }
        fflush(NULL);
        pid = fork();
        if (pid < 0) {
            tool_error("fork: %s", strerror(errno));
            return 1;
        }
        if (pid > 0) {
            /* The parent: wait for the daemon to say whether it mounted. */
            char msg[1100];
            ssize_t n;
            close(pipefd[1]);
            do
                n = read(pipefd[0], msg, sizeof(msg) - 1);
            while (n < 0 && errno == EINTR);
            close(pipefd[0]);
            if (n <= 0) {
                int status = 0;
                waitpid(pid, &status, 0);
                tool_error("%s: the mount daemon died before mounting", a->mountpoint);
                return 1;
            }
            msg[n] = '\0';
            if (msg[0] != '0') {
                waitpid(pid, NULL, 0);
                tool_error("%s", msg + 1);
                return 1;
            }
            return 0;
        }
        close(pipefd[0]);
        report_fd = pipefd[1];
        setsid();
    }

    m = calloc(1, sizeof(*m));
    if (!m) {
        tell_parent(report_fd, 1, "out of memory");
        return 1;
    }
    m->sig_fd = -1;
    ret = mount_setup(m, a, &err);
    if (ret < 0) {
        if (report_fd >= 0)
            tell_parent(report_fd, 1, hv_err_msg(&err, ret));
        else
            tool_error("%s", hv_err_msg(&err, ret));
        mount_free(m);
        return 1;
    }
    if (report_fd >= 0) {
        int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        /* Paths were resolved and files opened: the daemon needs no cwd. */
        if (chdir("/") < 0)
            hv_debug("chdir /: %s", strerror(errno));
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            dup2(devnull, STDOUT_FILENO);
            dup2(devnull, STDERR_FILENO);
            close(devnull);
        }
        tell_parent(report_fd, 0, NULL);
        close(report_fd);
    }
    ret = mount_serve(m);
    if (report_fd >= 0)
        daemon_log(m->image, ret, m->io_error);
    else if (ret < 0)
        tool_error("%s: closing after unmount: %s", m->image, strerror(-ret));
    mount_free(m);
    return ret < 0 ? 1 : 0;
}

#endif /* HVSTOR_HAVE_FUSE3 */

/* ----------------------------------------------------------------- mount */

static const char mount_usage[] =
    "Usage: vhd mount [--read-only] [-f] [-o OPTIONS] FILE MOUNTPOINT\n"
    "\n"
    "Serve the virtual disk of FILE (and its chain) as MOUNTPOINT/disk through\n"
    "FUSE, so that `losetup -P` and `mount` work on it. Writes go to FILE only;\n"
    "parents are never written. fsync and close of a writer flush the image.\n"
    "Runs as a daemon until `vhd unmount MOUNTPOINT` (or fusermount3 -u), which\n"
    "flushes and closes the image cleanly.\n"
    "\n"
    "  -r, --read-only     refuse writes (the image is opened read-only)\n"
    "  -f, --foreground    stay in the foreground\n"
    "  -o OPTIONS          comma-separated: direct_io (no page cache for the\n"
    "                      disk file), buffered (engine without O_DIRECT),\n"
    "                      allow_other\n"
    "  -h, --help          this text\n";

int cmd_mount(int argc, char **argv)
{
    static const struct option opts[] = {
        { "read-only", no_argument, NULL, 'r' },
        { "foreground", no_argument, NULL, 'f' },
        { 0 },
    };
    struct tool_cli cli = { .usage = mount_usage, .shortopts = "rfo:", .longopts = opts,
                            .operands = 2 };
#ifdef HVSTOR_HAVE_FUSE3
    struct mount_args a = { 0 };
#endif
    const char *options = NULL;
    bool is_read_only = false;
    bool is_foreground = false;
    int c;
    while ((c = tool_getopt(&cli, argc, argv)) >= 0) {
        switch (c) {
        case 'r': is_read_only = true; break;
        case 'f': is_foreground = true; break;
        case 'o': options = optarg; break;
        }
    }
    if (c == TOOL_OPT_EXIT)
        return cli.exit_status;
#ifdef HVSTOR_HAVE_FUSE3
    a.image = argv[optind];
    a.mountpoint = argv[optind + 1];
    a.is_read_only = is_read_only;
    a.is_foreground = is_foreground;
    if (options) {
        char *copy = strdup(options);
        char *save = NULL;
        if (!copy) {
            tool_error("out of memory");
            return 1;
        }
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (!strcmp(t, "direct_io")) {
                a.is_direct_io = true;
            } else if (!strcmp(t, "buffered")) {
                a.is_buffered = true;
            } else if (!strcmp(t, "allow_other")) {
                a.allow_other = true;
            } else {
                tool_error("unknown mount option '%s'", t);
                free(copy);
                return 1;
            }
        }
        free(copy);
    }
    return run_mount(&a);
#else
    (void)is_read_only;
    (void)is_foreground;
    (void)options;
    tool_error("this vhd was built without fuse3 (install libfuse3-dev and rebuild)");
    return 1;
#endif
}

/* --------------------------------------------------------------- unmount */

static const char unmount_usage[] =
    "Usage: vhd unmount MOUNTPOINT\n"
    "\n"
    "Unmount a `vhd mount` (with fusermount3 -u) and wait until its daemon has\n"
    "flushed and closed the image. Fails while the disk is in use (a loop\n"
    "device or an open file on it).\n"
    "\n"
    "  -h, --help   this text\n";

static int run_fusermount(const char *mountpoint)
{
    int status = 0;
    pid_t pid = fork();
    if (pid < 0) {
        tool_error("fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        execlp("fusermount3", "fusermount3", "-u", "--", mountpoint, (char *)NULL);
        fprintf(stderr, "vhd unmount: fusermount3: %s\n", strerror(errno));
        _exit(127);
    }
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* Wait for process `pid` (not our child) to end: pidfd where the kernel has
 * it, else poll for its existence. */
static void wait_for_exit(int pidfd, pid_t pid)
{
    if (pidfd >= 0) {
        struct pollfd p = { .fd = pidfd, .events = POLLIN };
        while (poll(&p, 1, -1) < 0 && errno == EINTR)
            ;
        return;
    }
    while (kill(pid, 0) == 0 || errno != ESRCH) {
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
}

int cmd_unmount(int argc, char **argv)
{
    struct tool_cli cli = { .usage = unmount_usage, .operands = 1 };
    const char *mnt;
    char text[64];
    ssize_t n;
    pid_t pid = 0;
    int pidfd = -1;
    if (tool_getopt(&cli, argc, argv) == TOOL_OPT_EXIT)
        return cli.exit_status;
    mnt = argv[optind];
    n = getxattr(mnt, MOUNT_XATTR_PID, text, sizeof(text) - 1);
    if (n > 0) {
        uint64_t v;
        text[n] = '\0';
        if (hv_parse_u64(text, &v) == 0 && v > 0 && v < INT32_MAX) {
            pid = (pid_t)v;
            pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        }
    } else if (errno != ENOTCONN) {
        /* ENOTCONN: the daemon is gone; fusermount3 clears what it left. */
        tool_error("%s: not a vhd mount (%s)", mnt,
                   errno == ENODATA || errno == ENOTSUP ? "no daemon id on it"
                                                        : strerror(errno));
        return 1;
    }
    if (run_fusermount(mnt) < 0) {
        tool_error("%s: unmount failed (in use? detach loop devices and close files "
                   "on it first)", mnt);
        if (pidfd >= 0)
            close(pidfd);
        return 1;
    }
    if (pid > 0)
        wait_for_exit(pidfd, pid);
    if (pidfd >= 0)
        close(pidfd);
    return 0;
}
