/*
 * The SG_IO transport: a local SCSI disk's node, the guest's CDB as it came.
 *
 * SG_IO is a blocking ioctl, and the reactor must never block, so a fixed
 * set of worker threads (the queue depth) each take a command, run SG_IO
 * with the guest's own buffers (data-in lands in the buffer the iSCSI target
 * sends, data-out leaves from the one it received: no copy), and put it on
 * the done list; one eventfd write per batch wakes the reactor, which calls
 * done() for the whole batch. The queues are intrusive lists through
 * pt_cmd.next under one mutex: no allocation per command.
 *
 * Why not common's hv_workers, which has the same shape: it cannot take
 * back queued work. An ABORT TASK or LUN RESET must complete the commands no
 * worker has started at once, while all workers may sit in a slow device
 * (the pt_cmd is then reused: it cannot stay on a queue until a worker gets
 * to it), and closing must complete every command, which hv_workers_destroy
 * does not. So the queue here can be searched and drained from the reactor.
 *
 * Why threads and not the asynchronous write()/read() interface of /dev/sgN:
 * that needs the sg driver loaded and a second node (with its own exclusive
 * open rules) beside the sd node we claim O_EXCL, and its write() may still
 * sleep for memory. SG_IO on the claimed sd node needs nothing else.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <scsi/sg.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/fs.h>

#include "sg_int.h"

/* host_status values (include/scsi/scsi_status.h, not exported to user space) */
enum {
    DID_OK = 0x00,
    DID_NO_CONNECT = 0x01,
    DID_BUS_BUSY = 0x02,
    DID_TIME_OUT = 0x03,
    DID_BAD_TARGET = 0x04,
    DID_ABORT = 0x05,
    DID_PARITY = 0x06,
    DID_ERROR = 0x07,
    DID_RESET = 0x08,
    DID_SOFT_ERROR = 0x0b,
    DID_IMM_RETRY = 0x0c,
    DID_REQUEUE = 0x0d,
    DID_TRANSPORT_DISRUPTED = 0x0e,
    DID_TRANSPORT_FAILFAST = 0x0f,
    DID_TARGET_FAILURE = 0x10,
    DID_NEXUS_FAILURE = 0x11,
    DID_ALLOC_FAILURE = 0x12,
    DID_MEDIUM_ERROR = 0x13,
};
/* driver_status, low nibble (older kernels; 6.x sets only DRIVER_SENSE) */
enum { DRIVER_BUSY = 0x1, DRIVER_TIMEOUT = 0x6, DRIVER_SENSE = 0x8 };

struct pt_sg {
    struct hv_reactor *r;
    int fd;
    char path[256];
    unsigned timeout_ms;
    uint32_t block_bytes;
    void (*on_gone)(void *arg, const char *why);
    void *arg;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct pt_cmd *todo_head, *todo_tail;   /* for the workers */
    struct pt_cmd *done_head, *done_tail;   /* for the reactor */
    bool is_stopping;
    unsigned busy;                          /* workers inside SG_IO now */
    unsigned max_busy;
    char gone_why[256];                     /* set by a worker, reported once */
    bool is_gone_reported;

    uint64_t inflight;                      /* reactor side: submitted, not done */
    int efd;
    struct hv_watch *watch;
    pthread_t threads[PT_SG_DEPTH_MAX];
    unsigned thread_count;
};

/* ------------------------------------------------------- result mapping */

static void set_check(struct pt_cmd *cmd, uint8_t key, uint8_t asc, uint8_t ascq)
{
    cmd->status = SAN_STATUS_CHECK_CONDITION;
    cmd->sense_len = (uint32_t)pt_sense_fixed(cmd->sense, key, asc, ascq);
}

static void set_status(struct pt_cmd *cmd, uint8_t status)
{
    cmd->status = status;
    cmd->sense_len = 0;
}

/*
 * A failure of the path to the device (not an answer of the device) becomes
 * what an initiator does the right thing with: NOT READY / LOGICAL UNIT NOT
 * SUPPORTED when the device is gone (as a SAN LUN that went offline), BUSY
 * when the kernel says "try again", ABORTED COMMAND when a retry may work
 * (timeout, reset, transport error), ILLEGAL REQUEST when the host kernel
 * refuses the command itself (transfer above max_hw_sectors, an opcode it
 * does not let through).
 */
bool pt_sg_result(const struct pt_sg_answer *a, struct pt_cmd *cmd)
{
    cmd->is_overflow = false;
    cmd->sense_len = 0;
    if (a->error) {
        cmd->residual = cmd->xfer_bytes;
        switch (-a->error) {
        case ENODEV:
        case ENXIO:
            set_check(cmd, 0x2, 0x25, 0x00);
            return true;
        case EIO:                   /* sg_io(): dxfer_len above max_hw_sectors */
        case EINVAL:                /* buffers the block layer cannot map */
        case EOVERFLOW:
        case EFAULT:
            set_check(cmd, 0x5, 0x24, 0x00);
            return false;
        case EPERM:
        case EACCES:
            set_check(cmd, 0x5, 0x20, 0x00);
            return false;
        case ENOMEM:
        case EAGAIN:
        case EBUSY:
        case EINTR:
            set_status(cmd, SAN_STATUS_BUSY);
            return false;
        default:
            set_check(cmd, 0xB, 0x44, 0x00);
            return false;
        }
    }
    if (a->host_status != DID_OK) {
        cmd->residual = cmd->xfer_bytes;
        switch (a->host_status) {
        case DID_NO_CONNECT:
        case DID_BAD_TARGET:
            set_check(cmd, 0x2, 0x25, 0x00);
            return true;
        case DID_BUS_BUSY:
        case DID_SOFT_ERROR:
        case DID_IMM_RETRY:
        case DID_REQUEUE:
        case DID_TRANSPORT_DISRUPTED:
        case DID_ALLOC_FAILURE:
            set_status(cmd, SAN_STATUS_BUSY);
            return false;
        case DID_TRANSPORT_FAILFAST:
            set_check(cmd, 0x2, 0x04, 0x00);
            return false;
        case DID_TIME_OUT:
            set_check(cmd, 0xB, 0x3E, 0x02);    /* TIMEOUT ON LOGICAL UNIT */
            return false;
        case DID_PARITY:
            set_check(cmd, 0xB, 0x47, 0x00);
            return false;
        case DID_NEXUS_FAILURE:
            set_status(cmd, SAN_STATUS_RESERVATION_CONFLICT);
            return false;
        case DID_MEDIUM_ERROR:
            set_check(cmd, 0x3, 0x11, 0x00);
            return false;
        case DID_TARGET_FAILURE:
            set_check(cmd, 0x4, 0x44, 0x00);
            return false;
        case DID_ABORT:
        case DID_RESET:
        case DID_ERROR:
        default:
            set_check(cmd, 0xB, 0x00, 0x00);
            return false;
        }
    }
    /* The device answered: its status, sense and residual, unchanged. */
    cmd->status = a->status;
    cmd->sense_len = HV_MIN(a->sense_len, (uint32_t)PT_SENSE_MAX);
    if (cmd->sense_len)
        memcpy(cmd->sense, a->sense, cmd->sense_len);
    cmd->residual = a->resid <= 0 ? 0 : HV_MIN((uint32_t)a->resid, cmd->xfer_bytes);
    if (a->status == SAN_STATUS_GOOD) {
        switch (a->driver_status & 0xF) {
        case 0:
        case DRIVER_SENSE:
            break;
        case DRIVER_BUSY:
            set_status(cmd, SAN_STATUS_BUSY);
            break;
        case DRIVER_TIMEOUT:
            set_check(cmd, 0xB, 0x3E, 0x02);
            break;
        default:
            set_check(cmd, 0xB, 0x00, 0x00);
            break;
        }
    }
    return false;
}

/* ------------------------------------------------------------- workers */

/*
 * What the CDB itself moves, when pt_cdb_data_bytes knows the command:
 * the device then gets exactly that, and the residual against the
 * initiator's expected length is computed here (the kernel reports only
 * what the device did not move of the buffer it was given, and cannot
 * report an overflow at all).
 */
struct cdb_data {
    bool is_known;
    enum san_xfer dir;
    uint64_t bytes;
};

static struct cdb_data cdb_data(const struct pt_sg *sg, const struct pt_cmd *cmd)
{
    struct cdb_data d = {0};
    d.is_known = pt_cdb_data_bytes(cmd->cdb, cmd->cdb_len, sg->block_bytes, &d.dir, &d.bytes);
    return d;
}

/* Refused before SG_IO (the caller answers ILLEGAL REQUEST / INVALID FIELD
 * IN CDB): data-out the initiator did not send (the device would write
 * what is not there), a data phase the other way round, a read overflow
 * larger than a worker's buffer. */
static bool is_unsafe(const struct cdb_data *d, const struct pt_cmd *cmd)
{
    uint32_t xfer = cmd->dir == SAN_XFER_NONE ? 0 : cmd->xfer_bytes;

    if (!d->is_known || d->dir == SAN_XFER_NONE)
        return false;
    if (cmd->dir != SAN_XFER_NONE && cmd->xfer_bytes && cmd->dir != d->dir)
        return true;
    if (d->dir == SAN_XFER_WRITE)
        return d->bytes > xfer;
    return d->bytes > xfer && d->bytes > PT_SG_BOUNCE_BYTES;
}

static bool run_sg_io(struct pt_sg *sg, struct pt_cmd *cmd, uint8_t **bounce, char *gone_why,
                      size_t why_len)
{
    struct sg_io_hdr h;
    uint8_t sense[PT_SENSE_MAX];
    struct pt_sg_answer a = {0};
    struct cdb_data d = cdb_data(sg, cmd);
    uint32_t xfer = cmd->dir == SAN_XFER_NONE ? 0 : cmd->xfer_bytes;
    bool is_bounced = false;
    int ret;

    memset(&h, 0, sizeof(h));
    h.interface_id = 'S';
    h.cmdp = cmd->cdb;
    h.cmd_len = cmd->cdb_len;
    h.sbp = sense;
    h.mx_sb_len = sizeof(sense);
    h.timeout = sg->timeout_ms;
    h.dxfer_direction = SG_DXFER_NONE;
    if (d.is_known && d.dir == SAN_XFER_READ && d.bytes > xfer) {
        /* overflow: the device reads all its CDB asks into our buffer */
        if (!*bounce)
            *bounce = malloc(PT_SG_BOUNCE_BYTES);
        if (!*bounce) {
            pt_sg_result(&(struct pt_sg_answer){.error = -ENOMEM}, cmd);
            return false;
        }
        h.dxfer_direction = SG_DXFER_FROM_DEV;
        h.dxferp = *bounce;
        h.dxfer_len = (unsigned)d.bytes;
        is_bounced = true;
    } else if (d.is_known) {
        /* exactly what the CDB moves, from or into the initiator's buffer */
        if (d.dir != SAN_XFER_NONE) {
            h.dxfer_direction = d.dir == SAN_XFER_READ ? SG_DXFER_FROM_DEV : SG_DXFER_TO_DEV;
            h.dxfer_len = (unsigned)d.bytes;
            if (cmd->iovcnt == 1) {
                h.dxferp = cmd->iov[0].iov_base;
            } else {
                h.iovec_count = (unsigned short)cmd->iovcnt;
                h.dxferp = cmd->iov;
            }
        }
    } else if (cmd->xfer_bytes && cmd->dir != SAN_XFER_NONE) {
        h.dxfer_direction = cmd->dir == SAN_XFER_READ ? SG_DXFER_FROM_DEV : SG_DXFER_TO_DEV;
        h.dxfer_len = cmd->xfer_bytes;
        if (cmd->iovcnt == 1) {
            h.dxferp = cmd->iov[0].iov_base;
        } else {
            /* sg_iovec_t is struct iovec's layout; the kernel stops at dxfer_len */
            h.iovec_count = (unsigned short)cmd->iovcnt;
            h.dxferp = cmd->iov;
        }
    }
    do
        ret = ioctl(sg->fd, SG_IO, &h);
    while (ret < 0 && errno == EINTR);
    a.error = ret < 0 ? -errno : 0;
    a.status = h.status;
    a.host_status = h.host_status;
    a.driver_status = h.driver_status;
    a.resid = h.resid;
    a.sense = sense;
    a.sense_len = h.sb_len_wr;
    if (pt_sg_result(&a, cmd)) {
        if (a.error)
            snprintf(gone_why, why_len, "%s: SG_IO: %s: the device is gone", sg->path,
                     strerror(-a.error));
        else
            snprintf(gone_why, why_len, "%s: SG_IO: host status 0x%02x: the device is gone",
                     sg->path, a.host_status);
        return true;
    }
    if (d.is_known && !a.error && a.host_status == 0) {
        uint64_t moved = d.bytes - HV_MIN((uint64_t)(a.resid > 0 ? a.resid : 0), d.bytes);
        if (is_bounced) {
            hv_iov_from_buf(cmd->iov, cmd->iovcnt, 0, *bounce, (size_t)HV_MIN(moved, xfer));
            cmd->is_overflow = cmd->status == SAN_STATUS_GOOD;
            cmd->residual = cmd->is_overflow ? (uint32_t)(d.bytes - xfer) : xfer;
        } else {
            /* underflow: what the initiator expected beyond what moved */
            cmd->residual = xfer - (uint32_t)HV_MIN(moved, xfer);
        }
    }
    return false;
}

static void *worker_main(void *arg)
{
    struct pt_sg *sg = arg;
    uint8_t *bounce = NULL;             /* this worker's, allocated on first overflow */
    char why[256];

    pthread_mutex_lock(&sg->lock);
    for (;;) {
        while (!sg->todo_head && !sg->is_stopping)
            pthread_cond_wait(&sg->cond, &sg->lock);
        struct pt_cmd *cmd = sg->todo_head;
        if (!cmd)
            break;                          /* stopping, nothing left */
        sg->todo_head = cmd->next;
        if (!sg->todo_head)
            sg->todo_tail = NULL;
        if (++sg->busy > sg->max_busy)
            sg->max_busy = sg->busy;
        pthread_mutex_unlock(&sg->lock);

        bool is_gone = run_sg_io(sg, cmd, &bounce, why, sizeof(why));

        pthread_mutex_lock(&sg->lock);
        sg->busy--;
        if (is_gone && !sg->gone_why[0])
            snprintf(sg->gone_why, sizeof(sg->gone_why), "%s", why);
        cmd->next = NULL;
        bool was_empty = !sg->done_head;
        if (sg->done_tail)
            sg->done_tail->next = cmd;
        else
            sg->done_head = cmd;
        sg->done_tail = cmd;
        if (was_empty) {
            /* one wake-up per batch: the reactor takes the whole list */
            uint64_t one = 1;
            if (write(sg->efd, &one, sizeof(one)) < 0) {
                /* cannot overflow at one per batch */
            }
        }
    }
    pthread_mutex_unlock(&sg->lock);
    free(bounce);
    return NULL;
}

/* ------------------------------------------------------- reactor side */

static void complete_list(struct pt_sg *sg, struct pt_cmd *cmd)
{
    while (cmd) {
        struct pt_cmd *next = cmd->next;
        sg->inflight--;
        cmd->done(cmd);
        cmd = next;
    }
}

static void take_done(struct pt_sg *sg)
{
    char why[256] = "";

    pthread_mutex_lock(&sg->lock);
    struct pt_cmd *cmd = sg->done_head;
    sg->done_head = sg->done_tail = NULL;
    if (sg->gone_why[0] && !sg->is_gone_reported) {
        sg->is_gone_reported = true;
        snprintf(why, sizeof(why), "%s", sg->gone_why);
    }
    pthread_mutex_unlock(&sg->lock);
    if (why[0] && sg->on_gone)
        sg->on_gone(sg->arg, why);
    complete_list(sg, cmd);
}

static void efd_ready(void *arg, uint32_t events)
{
    struct pt_sg *sg = arg;
    uint64_t n;
    (void)events;

    if (read(sg->efd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        hv_warn("%s: reading the SG_IO workers' eventfd: %s", sg->path, strerror(errno));
    take_done(sg);
}

static void complete_deferred(void *arg)
{
    struct pt_cmd *cmd = arg;
    cmd->done(cmd);
}

void pt_sg_submit(struct pt_sg *sg, struct pt_cmd *cmd)
{
    struct cdb_data d = cdb_data(sg, cmd);

    if ((cmd->dir != SAN_XFER_NONE &&
         (hv_iov_length(cmd->iov, cmd->iovcnt) < cmd->xfer_bytes ||
          cmd->iovcnt > UINT16_MAX)) || is_unsafe(&d, cmd)) {
        /* the buffers cannot hold what the initiator announced, or the CDB
         * would move data the initiator did not give or expect */
        set_check(cmd, 0x5, 0x24, 0x00);
        cmd->residual = cmd->xfer_bytes;
        cmd->is_overflow = false;
        hv_reactor_defer(sg->r, &cmd->deferred, complete_deferred, cmd);
        return;
    }
    sg->inflight++;
    cmd->next = NULL;
    pthread_mutex_lock(&sg->lock);
    if (sg->todo_tail)
        sg->todo_tail->next = cmd;
    else
        sg->todo_head = cmd;
    sg->todo_tail = cmd;
    pthread_cond_signal(&sg->cond);
    pthread_mutex_unlock(&sg->lock);
}

/* Take the commands no worker started, completing each with `status` (and
 * sense for CHECK CONDITION): at once when closing, else on the next reactor
 * turn (a task-management call must not see its tasks complete inside it). */
static void drain_todo(struct pt_sg *sg, uint8_t status, uint8_t key, uint8_t asc,
                       uint8_t ascq, bool is_deferred)
{
    pthread_mutex_lock(&sg->lock);
    struct pt_cmd *cmd = sg->todo_head;
    sg->todo_head = sg->todo_tail = NULL;
    pthread_mutex_unlock(&sg->lock);
    for (struct pt_cmd *c = cmd; c; c = c->next) {
        c->is_overflow = false;
        c->residual = c->xfer_bytes;
        if (status == SAN_STATUS_CHECK_CONDITION)
            set_check(c, key, asc, ascq);
        else
            set_status(c, status);
    }
    if (!is_deferred) {
        complete_list(sg, cmd);
        return;
    }
    while (cmd) {
        struct pt_cmd *next = cmd->next;
        sg->inflight--;
        hv_reactor_defer(sg->r, &cmd->deferred, complete_deferred, cmd);
        cmd = next;
    }
}

bool pt_sg_abort_one(struct pt_sg *sg, struct pt_cmd *cmd)
{
    struct pt_cmd *prev = NULL;
    bool is_found = false;

    pthread_mutex_lock(&sg->lock);
    for (struct pt_cmd *c = sg->todo_head; c; prev = c, c = c->next) {
        if (c != cmd)
            continue;
        if (prev)
            prev->next = c->next;
        else
            sg->todo_head = c->next;
        if (sg->todo_tail == c)
            sg->todo_tail = prev;
        is_found = true;
        break;
    }
    pthread_mutex_unlock(&sg->lock);
    if (!is_found)
        return false;
    cmd->next = NULL;
    cmd->is_overflow = false;
    cmd->residual = cmd->xfer_bytes;
    set_status(cmd, SAN_STATUS_TASK_ABORTED);
    sg->inflight--;
    hv_reactor_defer(sg->r, &cmd->deferred, complete_deferred, cmd);
    return true;
}

void pt_sg_abort_queued(struct pt_sg *sg)
{
    drain_todo(sg, SAN_STATUS_TASK_ABORTED, 0, 0, 0, true);
}

uint64_t pt_sg_inflight(const struct pt_sg *sg)
{
    return sg->inflight;
}

unsigned pt_sg_max_busy(const struct pt_sg *sg)
{
    pthread_mutex_lock((pthread_mutex_t *)&sg->lock);
    unsigned n = sg->max_busy;
    pthread_mutex_unlock((pthread_mutex_t *)&sg->lock);
    return n;
}

void pt_sg_destroy(struct pt_sg *sg)
{
    if (!sg)
        return;
    drain_todo(sg, SAN_STATUS_CHECK_CONDITION, 0x2, 0x04, 0x03, false);
    pthread_mutex_lock(&sg->lock);
    sg->is_stopping = true;
    pthread_cond_broadcast(&sg->cond);
    pthread_mutex_unlock(&sg->lock);
    for (unsigned i = 0; i < sg->thread_count; i++)
        pthread_join(sg->threads[i], NULL);
    /* what the workers finished since the last wake-up */
    sg->on_gone = NULL;
    take_done(sg);
    if (sg->watch)
        hv_reactor_del_fd(sg->r, sg->watch);
    if (sg->efd >= 0)
        close(sg->efd);
    if (sg->fd >= 0) {
        /* The guest wrote around the host's page cache of this device: drop
         * it, so that the host reads what the guest left. */
        if (ioctl(sg->fd, BLKFLSBUF, 0) < 0)
            hv_debug("%s: BLKFLSBUF: %s", sg->path, strerror(errno));
        close(sg->fd);
    }
    pthread_cond_destroy(&sg->cond);
    pthread_mutex_destroy(&sg->lock);
    free(sg);
}

int pt_sg_create(struct hv_reactor *r, const struct pt_sg_options *opt, struct pt_sg **out,
                 struct hv_err *err)
{
    struct pt_sg *sg = calloc(1, sizeof(*sg));
    unsigned depth = opt->depth ? opt->depth : PT_SG_DEPTH_DEFAULT;
    pthread_attr_t attr;
    int ret;

    if (!sg)
        return hv_err_set(err, -ENOMEM, "out of memory");
    if (depth > PT_SG_DEPTH_MAX)
        depth = PT_SG_DEPTH_MAX;
    sg->r = r;
    sg->efd = -1;
    snprintf(sg->path, sizeof(sg->path), "%s", opt->path);
    sg->timeout_ms = opt->timeout_ms ? opt->timeout_ms : PT_SG_TIMEOUT_MS_DEFAULT;
    sg->block_bytes = opt->block_bytes;
    sg->on_gone = opt->on_gone;
    sg->arg = opt->arg;
    pthread_mutex_init(&sg->lock, NULL);
    pthread_cond_init(&sg->cond, NULL);
    sg->fd = fcntl(opt->fd, F_DUPFD_CLOEXEC, 0);
    if (sg->fd < 0) {
        ret = hv_err_errno(err, opt->path, "dup");
        goto fail;
    }
    /* Whatever the host left dirty in its cache of the device goes down
     * now, not later on top of the guest's writes; then the cache is dropped. */
    if (fsync(sg->fd) < 0 || ioctl(sg->fd, BLKFLSBUF, 0) < 0)
        hv_debug("%s: flushing the host's cache: %s", opt->path, strerror(errno));
    sg->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (sg->efd < 0) {
        ret = hv_err_errno(err, opt->path, "eventfd");
        goto fail;
    }
    sg->watch = hv_reactor_add_fd(r, sg->efd, EPOLLIN, efd_ready, sg);
    if (!sg->watch) {
        ret = hv_err_errno(err, opt->path, "watching the SG_IO workers' eventfd");
        goto fail;
    }
    /* A worker holds a sg_io_hdr and a sense buffer: a small stack will do,
     * and sixteen of them per disk should not cost 8 MiB of address space each. */
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    for (; sg->thread_count < depth; sg->thread_count++) {
        ret = pthread_create(&sg->threads[sg->thread_count], &attr, worker_main, sg);
        if (ret) {
            pthread_attr_destroy(&attr);
            ret = hv_err_set(err, -ret, "%s: cannot start an SG_IO worker: %s", opt->path,
                             strerror(ret));
            goto fail;
        }
    }
    pthread_attr_destroy(&attr);
    *out = sg;
    return 0;
fail:
    pt_sg_destroy(sg);
    return ret;
}
