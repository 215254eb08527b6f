/*
 * The emulated disk: SBC-3 block commands over any bdev.
 *
 * Each task keeps its state in task->lu_ctx (struct disk_cmd). What a
 * command needs beyond that comes from pools sized when the disk is created:
 * bdev requests (DISK_IO_POOL of them, each with its own iovec array), and
 * one scratch buffer for the commands that need room of their own (the
 * WRITE SAME pattern, the read side of VERIFY with BYTCHK and of COMPARE AND
 * WRITE). A task that finds a pool empty waits in FIFO order; every release
 * schedules one deferred "kick" that resumes waiters. Reads go straight into
 * the transport's data-in iovec and writes come straight from its data-out
 * iovec: no copy.
 *
 * COMPARE AND WRITE must be atomic with respect to every other command on
 * the overlapping range. Tasks that touch media register their LBA range
 * while they run; a COMPARE AND WRITE waits until no overlapping task runs,
 * and while one is active or waiting, overlapping tasks wait behind it.
 * Without a COMPARE AND WRITE around, that check costs one counter test.
 */
#include <errno.h>
#include <stdlib.h>

#include "scsi_disk_int.h"

static void disk_kick(void *arg);

/* Company id in the NAA designator: a CID (first octet 0xA2 has the X bit
 * set), since hvstor has no registered OUI. */
#define DISK_NAA_CID 0xA24E56u

/* ------------------------------------------------------------ queues */

static void queue_push(struct scsi_task **head, struct scsi_task **tail, struct scsi_task *t)
{
    t->next = NULL;
    if (*tail)
        (*tail)->next = t;
    else
        *head = t;
    *tail = t;
}

static void schedule_kick(struct scsi_disk *d)
{
    if (d->io_wait_head || d->scratch_wait_head || d->range_wait_head)
        hv_reactor_defer(d->reactor, &d->kick, disk_kick, d);
}

static bool ranges_overlap(const struct disk_cmd *a, const struct disk_cmd *b)
{
    return a->lba < b->lba + b->blocks && b->lba < a->lba + a->blocks;
}

/* A task conflicts with a running or earlier waiting one when their ranges
 * overlap and either of them is a COMPARE AND WRITE. */
static bool range_conflicts(struct scsi_disk *d, struct scsi_task *t, struct scsi_task *stop)
{
    struct disk_cmd *c = disk_cmd(t);
    for (struct scsi_task *a = d->active_head; a; a = disk_cmd(a)->act_next) {
        struct disk_cmd *ac = disk_cmd(a);
        if ((c->is_exclusive || ac->is_exclusive) && ranges_overlap(c, ac))
            return true;
    }
    for (struct scsi_task *w = d->range_wait_head; w && w != stop; w = w->next) {
        struct disk_cmd *wc = disk_cmd(w);
        if ((c->is_exclusive || wc->is_exclusive) && ranges_overlap(c, wc))
            return true;
    }
    return false;
}

static void range_take(struct scsi_disk *d, struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    c->act_prev = NULL;
    c->act_next = d->active_head;
    if (d->active_head)
        disk_cmd(d->active_head)->act_prev = t;
    d->active_head = t;
    c->in_active = true;
    if (c->is_exclusive)
        d->active_exclusive++;
}

static void range_drop(struct scsi_disk *d, struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    if (!c->in_active)
        return;
    if (c->act_prev)
        disk_cmd(c->act_prev)->act_next = c->act_next;
    else
        d->active_head = c->act_next;
    if (c->act_next)
        disk_cmd(c->act_next)->act_prev = c->act_prev;
    c->in_active = false;
    if (c->is_exclusive)
        d->active_exclusive--;
}

/*
 * Take what the task needs, in a fixed order (range, bdev request, scratch)
 * so that two tasks never wait for each other. Returns false when the task
 * was queued; it is resumed through c->start by the kick.
 */
static bool acquire(struct scsi_disk *d, struct scsi_task *t, bool is_resuming)
{
    struct disk_cmd *c = disk_cmd(t);

    if (c->needs_range && !c->in_active) {
        bool may_conflict = c->is_exclusive || d->active_exclusive || d->range_wait_head;
        if (may_conflict && range_conflicts(d, t, is_resuming ? t : NULL)) {
            c->wait = WAIT_RANGE;
            queue_push(&d->range_wait_head, &d->range_wait_tail, t);
            return false;
        }
        range_take(d, t);
    }
    if (c->needs_io && !c->io) {
        if (!d->free_io || (!is_resuming && d->io_wait_head)) {
            c->wait = WAIT_IO;
            queue_push(&d->io_wait_head, &d->io_wait_tail, t);
            return false;
        }
        c->io = d->free_io;
        d->free_io = c->io->next_free;
        c->io->task = t;
    }
    if (c->needs_scratch && d->scratch_owner != t) {
        if (d->scratch_owner || (!is_resuming && d->scratch_wait_head)) {
            c->wait = WAIT_SCRATCH;
            queue_push(&d->scratch_wait_head, &d->scratch_wait_tail, t);
            return false;
        }
        d->scratch_owner = t;
    }
    c->wait = WAIT_NONE;
    return true;
}

static void run(struct scsi_disk *d, struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    if (t->task_attr == SCSI_TASK_ATTR_ORDERED) {
        /* An ORDERED task is exclusive over the whole LU: it waits for every
         * running media command and holds back the ones after it. */
        c->needs_range = true;
        c->is_exclusive = true;
        c->lba = 0;
        c->blocks = UINT64_MAX / 2;
    }
    if (acquire(d, t, false))
        disk_cmd(t)->start(t);
}

static void resume_queue(struct scsi_disk *d, struct scsi_task **head, struct scsi_task **tail)
{
    struct scsi_task *list = *head;
    *head = *tail = NULL;
    while (list) {
        struct scsi_task *t = list;
        list = t->next;
        t->next = NULL;
        disk_cmd(t)->wait = WAIT_NONE;
        if (t->is_aborted) {
            scsi_task_set_sense(t, SCSI_SENSE_ABORTED_COMMAND, 0x00, 0x00);
            t->status = SCSI_STATUS_TASK_ABORTED;
            disk_finish(t);
            continue;
        }
        if (acquire(d, t, true))
            disk_cmd(t)->start(t);
    }
}

static void disk_kick(void *arg)
{
    struct scsi_disk *d = arg;
    resume_queue(d, &d->range_wait_head, &d->range_wait_tail);
    resume_queue(d, &d->io_wait_head, &d->io_wait_tail);
    resume_queue(d, &d->scratch_wait_head, &d->scratch_wait_tail);
}

/* ----------------------------------------------------------- finishing */

static unsigned latency_bucket(uint64_t ns)
{
    uint64_t us = ns / 1000;
    unsigned b = 0;
    while (us > 1 && b < DISK_LATENCY_BUCKETS - 1) {
        us >>= 1;
        b++;
    }
    return b;
}

static void deliver(void *arg)
{
    struct scsi_task *t = arg;
    t->done(t);
}

void disk_finish(struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    struct scsi_disk *d = c->disk;
    bool released = false;

    if (c->io) {
        c->io->task = NULL;
        c->io->next_free = d->free_io;
        d->free_io = c->io;
        c->io = NULL;
        released = true;
    }
    if (d->scratch_owner == t) {
        d->scratch_owner = NULL;
        released = true;
    }
    if (c->in_active) {
        range_drop(d, t);
        released = true;
    }
    if (released)
        schedule_kick(d);

    if (t->status != SCSI_STATUS_GOOD && t->status != SCSI_STATUS_CONDITION_MET)
        d->stats.errors++;
    else if (c->kind == 1)
        d->stats.bytes_read += c->len;
    else if (c->kind == 2)
        d->stats.bytes_written += c->len;
    if (c->kind == 1)
        d->stats.reads++;
    else if (c->kind == 2)
        d->stats.writes++;
    else
        d->stats.other++;
    d->stats.latency[latency_bucket(hv_now_ns() - t->start_ns)]++;

    /* Completing inside execute() would call the transport back while it
     * is still in its own call to us. */
    if (c->in_execute)
        hv_reactor_defer(d->reactor, &t->deferred, deliver, t);
    else
        t->done(t);
}

/* A bdev error as sense data (SBC-3 4.17, SPC-4 annex D). */
static void fail_errno(struct scsi_task *t, int status, bool is_write)
{
    switch (status) {
    case -EIO:
    case -EILSEQ:
        if (is_write)
            scsi_task_check(t, SCSI_SENSE_MEDIUM_ERROR, SCSI_ASC_WRITE_ERROR);
        else
            scsi_task_check(t, SCSI_SENSE_MEDIUM_ERROR, SCSI_ASC_UNRECOVERED_READ_ERROR);
        break;
    case -ENOSPC:
    case -EDQUOT:
        scsi_task_check(t, SCSI_SENSE_DATA_PROTECT, SCSI_ASC_SPACE_ALLOCATION_FAILED);
        break;
    case -EROFS:
    case -EPERM:
    case -EACCES:
        scsi_task_check(t, SCSI_SENSE_DATA_PROTECT, SCSI_ASC_WRITE_PROTECTED);
        break;
    case -ERANGE:
        scsi_task_check(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LBA_OUT_OF_RANGE);
        break;
    default:
        scsi_task_check(t, SCSI_SENSE_HARDWARE_ERROR, SCSI_ASC_INTERNAL_TARGET_FAILURE);
        break;
    }
    disk_finish(t);
}

/* --------------------------------------------------------- bdev plumbing */

static void bio_complete(struct bdev_io *bio, int status)
{
    struct disk_io *io = bio->cb_arg;
    struct scsi_task *t = io->task;
    disk_cmd(t)->bio_done(t, status);
}

/* Submit the task's bdev request; a refusal is returned, nothing else. */
static int submit_try(struct scsi_task *t, enum bdev_io_type type, uint64_t offset,
                      uint64_t length, int iovcnt, uint32_t flags,
                      void (*cb)(struct scsi_task *, int))
{
    struct disk_cmd *c = disk_cmd(t);
    struct bdev_io *bio = c->io->bio;
    memset(bio, 0, sizeof(*bio));
    bio->type = type;
    bio->flags = flags;
    bio->offset = offset;
    bio->length = length;
    bio->iov = iovcnt ? c->io->iov : NULL;
    bio->iovcnt = iovcnt;
    bio->done = bio_complete;
    bio->cb_arg = c->io;
    c->bio_done = cb;
    return bdev_submit(c->disk->bd, bio);
}

/* Submit the task's bdev request; a refusal completes the task. */
static void submit(struct scsi_task *t, enum bdev_io_type type, uint64_t offset, uint64_t length,
                   int iovcnt, uint32_t flags, void (*cb)(struct scsi_task *, int))
{
    int ret = submit_try(t, type, offset, length, iovcnt, flags, cb);
    if (ret < 0)
        fail_errno(t, ret, type != BDEV_IO_READ && type != BDEV_IO_BLOCK_STATUS);
}

/* How many bytes of [offset, offset+len) of iov fit in DISK_IO_IOVS entries,
 * whole blocks only; the entries are filled in `out`. */
static uint64_t slice_blocks(const struct iovec *iov, int iovcnt, uint64_t offset, uint64_t len,
                             uint32_t block_bytes, struct iovec *out, int *outcnt)
{
    uint64_t got = 0;
    int n = 0;
    for (int i = 0; i < iovcnt && got < len; i++) {
        if (offset >= iov[i].iov_len) {
            offset -= iov[i].iov_len;
            continue;
        }
        if (n == DISK_IO_IOVS)
            break;
        uint64_t take = HV_MIN(iov[i].iov_len - offset, len - got);
        out[n].iov_base = (uint8_t *)iov[i].iov_base + offset;
        out[n].iov_len = take;
        n++;
        got += take;
        offset = 0;
    }
    uint64_t whole = HV_ALIGN_DOWN(got, block_bytes);
    /* trim the tail back to a block boundary */
    uint64_t excess = got - whole;
    while (excess && n > 0) {
        if (out[n - 1].iov_len > excess) {
            out[n - 1].iov_len -= excess;
            excess = 0;
        } else {
            excess -= out[n - 1].iov_len;
            n--;
        }
    }
    *outcnt = n;
    return whole;
}

/* ---------------------------------------------------------- CDB fields */

struct rw_cdb {
    uint64_t lba;
    uint64_t blocks;
    uint8_t protect;                /* RDPROTECT / WRPROTECT / VRPROTECT */
    bool is_fua;
};

static bool parse_rw(const struct scsi_task *t, struct rw_cdb *rw)
{
    const uint8_t *cdb = t->cdb;
    memset(rw, 0, sizeof(*rw));
    switch (cdb[0]) {
    case 0x08: case 0x0A:
    case 0x28: case 0x2A: case 0x2F: case 0x2E: case 0x34:
    case 0xA8: case 0xAA: case 0xAF: case 0xAE:
    case 0x88: case 0x8A: case 0x8F: case 0x8E: case 0x90:
        break;
    default:
        return false;
    }
    /* The whole CDB array: a short CDB reads as zeroes past its end. */
    if (!scsi_cdb_blocks(cdb, SCSI_MAX_CDB, &rw->lba, &rw->blocks))
        return false;
    if (cdb[0] == 0x08 || cdb[0] == 0x0A)
        return true;
    rw->protect = cdb[1] >> 5;
    rw->is_fua = cdb[1] & 0x08;
    return true;
}

/* Byte of the TRANSFER LENGTH field, for the sense field pointer. */
static uint16_t transfer_length_field(uint8_t op)
{
    switch (op >> 5) {
    case 0: return 4;               /* 6-byte CDBs */
    case 5: return 6;               /* 12-byte */
    case 4: return 10;              /* 16-byte */
    default: return 7;              /* 10-byte */
    }
}

static bool is_range_valid(const struct scsi_disk *d, uint64_t lba, uint64_t blocks)
{
    return lba <= d->blocks && blocks <= d->blocks - lba;
}

static bool is_write_protected(struct scsi_task *t, struct scsi_disk *d)
{
    if (d->is_read_only) {
        scsi_task_check(t, SCSI_SENSE_DATA_PROTECT, SCSI_ASC_WRITE_PROTECTED);
        return true;
    }
    if (d->is_swp) {
        scsi_task_check(t, SCSI_SENSE_DATA_PROTECT, SCSI_ASC_SOFTWARE_WRITE_PROTECTED);
        return true;
    }
    return false;
}

static uint32_t write_flags(const struct scsi_disk *d, bool is_fua)
{
    /* With the write cache disabled through the caching mode page, every
     * write must be durable before it completes. */
    if (is_fua || (d->bd->has_volatile_cache && !d->is_wce))
        return BDEV_IO_FUA;
    return 0;
}

/* ------------------------------------------------------- READ and WRITE */

static void rw_step(struct scsi_task *t);
static void verify_step(struct scsi_task *t);

/* The last block of a READ whose expected length ends inside it went to
 * the scratch buffer; hand over the part the initiator has room for. */
static void rw_tail_done(struct scsi_task *t, int status)
{
    struct disk_cmd *c = disk_cmd(t);
    if (status < 0) {
        fail_errno(t, status, false);
        return;
    }
    hv_iov_from_buf(t->in_iov, t->in_iovcnt, c->pos, c->disk->scratch, c->alloc - c->pos);
    c->pos = c->len;
    t->in_bytes = c->alloc;
    disk_finish(t);
}

static void rw_done(struct scsi_task *t, int status)
{
    struct disk_cmd *c = disk_cmd(t);
    if (status < 0) {
        fail_errno(t, status, c->kind == 2);
        return;
    }
    c->pos += c->io->bio->length;
    if (c->kind == 1)
        t->in_bytes = (uint32_t)c->pos;
    rw_step(t);
}

static void rw_step(struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    struct scsi_disk *d = c->disk;
    if (c->pos >= c->len && c->then_verify && !t->is_aborted) {
        /* WRITE AND VERIFY: the data is on the medium (FUA); read it back,
         * comparing with data-out when BYTCHK asked for it. */
        c->then_verify = false;
        c->pos = 0;
        verify_step(t);
        return;
    }
    if (c->pos >= c->len || t->is_aborted) {
        if (t->is_aborted && c->pos < c->len)
            t->status = SCSI_STATUS_TASK_ABORTED;
        disk_finish(t);
        return;
    }
    bool is_read = c->kind == 1;
    const struct iovec *iov = is_read ? t->in_iov : t->out_iov;
    int iovcnt = is_read ? t->in_iovcnt : t->out_iovcnt;
    uint64_t want = c->len - c->pos;
    if (c->has_partial_tail) {
        if (want == d->block_bytes) {
            c->io->iov[0].iov_base = d->scratch;
            c->io->iov[0].iov_len = d->block_bytes;
            submit(t, BDEV_IO_READ, c->lba * d->block_bytes + c->pos, d->block_bytes, 1, 0,
                   rw_tail_done);
            return;
        }
        want -= d->block_bytes;     /* whole blocks first, the tail last */
    }
    if (d->bd->max_io_bytes)
        want = HV_MIN(want, HV_ALIGN_DOWN(d->bd->max_io_bytes, d->block_bytes));
    int n = 0;
    uint64_t bytes = slice_blocks(iov, iovcnt, c->pos, want, d->block_bytes, c->io->iov, &n);
    if (bytes == 0) {
        /* The transport's buffer is cut into pieces smaller than a block or
         * is shorter than it claims: nothing we can hand to the bdev. */
        scsi_task_check(t, SCSI_SENSE_HARDWARE_ERROR, SCSI_ASC_INTERNAL_TARGET_FAILURE);
        disk_finish(t);
        return;
    }
    uint64_t offset = (c->lba * d->block_bytes) + c->pos;
    submit(t, is_read ? BDEV_IO_READ : BDEV_IO_WRITE, offset, bytes, n,
           is_read ? 0 : c->bio_flags, rw_done);
}

/*
 * The data length of a READ or WRITE against the initiator's expected
 * transfer length (FCP-4 9.4.2, as libiscsi's residual tests hold targets
 * to it): when the CDB asks for more than the initiator expects, only the
 * expected part moves and the residual reports the rest. A READ may end
 * inside a block (its last block is read aside and cut); a WRITE that
 * would end inside a block is refused as INVALID FIELD IN INFORMATION UNIT.
 */
static bool clip_to_expected(struct scsi_task *t, struct disk_cmd *c, uint64_t bytes,
                             bool is_write)
{
    t->wanted_bytes = (uint32_t)HV_MIN(bytes, UINT32_MAX);
    /* Data moving the other way than the command says counts as none. */
    uint64_t have = 0;
    if (is_write && t->dir == SCSI_DIR_OUT)
        have = HV_MIN(t->expected_bytes, t->out_bytes);
    else if (!is_write && t->dir == SCSI_DIR_IN)
        have = HV_MIN(t->expected_bytes, hv_iov_length(t->in_iov, t->in_iovcnt));
    uint32_t bs = c->disk->block_bytes;
    if (bytes <= have) {
        c->len = bytes;
        return true;
    }
    if (have % bs == 0) {
        c->len = have;
        return true;
    }
    if (is_write) {
        /* Writing part of a block would mean a read-modify-write of data
         * the initiator never sent; FCP-4 lets us refuse instead. */
        scsi_task_check(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_IU);
        return false;
    }
    c->len = HV_ALIGN_UP(have, bs);
    c->alloc = (uint32_t)have;
    c->has_partial_tail = true;
    c->needs_scratch = true;
    return true;
}

static void cmd_read_write(struct scsi_disk *d, struct scsi_task *t, bool is_write)
{
    struct disk_cmd *c = disk_cmd(t);
    struct rw_cdb rw;
    uint8_t op = t->cdb[0];
    bool is_wav = op == 0x2E || op == 0xAE || op == 0x8E;
    uint8_t bytchk = is_wav ? (t->cdb[1] >> 1) & 0x03 : 0;
    parse_rw(t, &rw);
    c->kind = is_write ? 2 : 1;

    if (is_wav) {
        /* WRITE AND VERIFY has no FUA bit (bit 3 is reserved there), but
         * what it writes must be on the medium before it is read back. */
        rw.is_fua = true;
        if (bytchk > 1) {
            disk_fail_cdb(t, 1, 1);
            return;
        }
    }
    if (rw.protect) {
        disk_fail_cdb(t, 1, 7);
        return;
    }
    if (!is_range_valid(d, rw.lba, rw.blocks)) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LBA_OUT_OF_RANGE);
        return;
    }
    if (is_write && is_write_protected(t, d)) {
        disk_finish(t);
        return;
    }
    if (rw.blocks > d->max_transfer_blocks) {
        disk_fail_cdb(t, transfer_length_field(op), -1);
        return;
    }
    if (rw.blocks == 0) {           /* SBC-3: not an error, nothing moves */
        scsi_task_good(t);
        disk_finish(t);
        return;
    }
    if (!clip_to_expected(t, c, rw.blocks * d->block_bytes, is_write)) {
        disk_finish(t);
        return;
    }
    if (c->len == 0) {
        disk_finish(t);
        return;
    }
    c->lba = rw.lba;
    c->blocks = rw.blocks;
    c->bio_flags = is_write ? write_flags(d, rw.is_fua) : 0;
    c->needs_range = true;
    c->needs_io = true;
    if (is_wav) {
        c->then_verify = true;
        c->needs_scratch = true;
        c->index = bytchk;
    }
    c->start = rw_step;
    run(d, t);
}

/* PRE-FETCH: there is no cache of ours to load, so after the checks there
 * is nothing to do; GOOD (not CONDITION MET) says exactly that (SBC-3 5.8). */
static void cmd_prefetch(struct scsi_disk *d, struct scsi_task *t)
{
    struct rw_cdb rw;
    parse_rw(t, &rw);
    if (!is_range_valid(d, rw.lba, rw.blocks)) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LBA_OUT_OF_RANGE);
        return;
    }
    disk_finish(t);
}

/* -------------------------------------------- VERIFY, COMPARE AND WRITE */

/*
 * Both read the medium into the scratch buffer chunk by chunk and compare
 * it with data-out. VERIFY BYTCHK=00 only reads (the medium is readable);
 * 01 compares with as many bytes of data-out; 11 compares every block
 * with the one block sent. COMPARE AND WRITE compares, then writes the
 * second half of its data-out.
 */
static void verify_step(struct scsi_task *t);

static void caw_write_done(struct scsi_task *t, int status)
{
    if (status < 0) {
        fail_errno(t, status, true);
        return;
    }
    disk_finish(t);
}

static void verify_read_done(struct scsi_task *t, int status)
{
    struct disk_cmd *c = disk_cmd(t);
    struct scsi_disk *d = c->disk;
    if (status < 0) {
        fail_errno(t, status, false);
        return;
    }
    uint64_t got = c->io->bio->length;
    uint8_t bytchk = c->index;      /* 0, 1 or 3; 4 = COMPARE AND WRITE */
    if (bytchk) {
        uint8_t cmp[512];
        for (uint64_t off = 0; off < got; off += sizeof(cmp)) {
            uint64_t n = HV_MIN(sizeof(cmp), got - off);
            uint64_t at = c->pos + off;
            uint64_t src = bytchk == 3 ? at % d->block_bytes : at;
            hv_iov_to_buf(t->out_iov, t->out_iovcnt, src, cmp, n);
            if (memcmp(cmp, d->scratch + off, n) == 0)
                continue;
            uint64_t first = 0;
            while (cmp[first] == d->scratch[off + first])
                first++;
            scsi_task_set_sense_info(t, SCSI_SENSE_MISCOMPARE, 0x1D, 0x00, at + first);
            disk_finish(t);
            return;
        }
    }
    c->pos += got;
    if (c->pos < c->len) {
        verify_step(t);
        return;
    }
    if (bytchk != 4) {
        disk_finish(t);
        return;
    }
    /* COMPARE AND WRITE: the range matched, write the new data. */
    int n = 0;
    uint64_t bytes = slice_blocks(t->out_iov, t->out_iovcnt, c->len, c->len, d->block_bytes,
                                  c->io->iov, &n);
    if (bytes != c->len) {
        disk_fail(t, SCSI_SENSE_HARDWARE_ERROR, SCSI_ASC_INTERNAL_TARGET_FAILURE);
        return;
    }
    c->kind = 2;
    submit(t, BDEV_IO_WRITE, c->lba * d->block_bytes, bytes, n, c->bio_flags, caw_write_done);
}

static void verify_step(struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    struct scsi_disk *d = c->disk;
    if (t->is_aborted) {
        t->status = SCSI_STATUS_TASK_ABORTED;
        disk_finish(t);
        return;
    }
    uint64_t n = HV_MIN(c->len - c->pos, DISK_SCRATCH_BYTES);
    if (d->bd->max_io_bytes)
        n = HV_MIN(n, HV_ALIGN_DOWN(d->bd->max_io_bytes, d->block_bytes));
    c->io->iov[0].iov_base = d->scratch;
    c->io->iov[0].iov_len = n;
    submit(t, BDEV_IO_READ, c->lba * d->block_bytes + c->pos, n, 1, 0, verify_read_done);
}

static void cmd_verify(struct scsi_disk *d, struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    struct rw_cdb rw;
    parse_rw(t, &rw);
    uint8_t bytchk = (t->cdb[1] >> 1) & 0x03;

    if (rw.protect || bytchk == 2) {
        disk_fail_cdb(t, 1, rw.protect ? 7 : 2);
        return;
    }
    if (!is_range_valid(d, rw.lba, rw.blocks)) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LBA_OUT_OF_RANGE);
        return;
    }
    if (rw.blocks > d->max_transfer_blocks) {
        disk_fail_cdb(t, transfer_length_field(t->cdb[0]), -1);
        return;
    }
    if (rw.blocks == 0) {
        disk_finish(t);
        return;
    }
    uint64_t bytes = rw.blocks * d->block_bytes;
    if (bytchk) {
        uint64_t need = bytchk == 3 ? d->block_bytes : bytes;
        t->wanted_bytes = (uint32_t)need;
        if (HV_MIN(t->expected_bytes, t->out_bytes) < need) {
            disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_IU);
            return;
        }
    }
    c->lba = rw.lba;
    c->blocks = rw.blocks;
    c->len = bytes;
    c->index = bytchk;
    c->needs_range = true;
    c->needs_io = true;
    c->needs_scratch = true;
    c->start = verify_step;
    run(d, t);
}

static void cmd_compare_and_write(struct scsi_disk *d, struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    const uint8_t *cdb = t->cdb;
    uint64_t lba = 0;
    uint64_t blocks64 = 0;
    scsi_cdb_blocks(cdb, SCSI_MAX_CDB, &lba, &blocks64);
    uint32_t blocks = (uint32_t)blocks64;

    if (cdb[1] >> 5) {
        disk_fail_cdb(t, 1, 7);
        return;
    }
    if (blocks > DISK_MAX_CAW_BLOCKS ||
        (uint64_t)blocks * d->block_bytes > DISK_SCRATCH_BYTES) {
        disk_fail_cdb(t, 13, -1);
        return;
    }
    if (!is_range_valid(d, lba, blocks)) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LBA_OUT_OF_RANGE);
        return;
    }
    if (is_write_protected(t, d)) {
        disk_finish(t);
        return;
    }
    uint64_t bytes = (uint64_t)blocks * d->block_bytes;
    t->wanted_bytes = (uint32_t)(2 * bytes);
    /* The data-out must be exactly the compare and the write halves: a
     * different length means the initiator and the CDB disagree on what is
     * compared (libiscsi's CompareAndWrite.InvalidDataOutSize; a count of
     * 256 truncated to 0 in the CDB byte lands here too). */
    if (t->expected_bytes != 2 * bytes || t->out_bytes < 2 * bytes) {
        disk_fail_cdb(t, 13, -1);
        return;
    }
    if (blocks == 0) {
        disk_finish(t);
        return;
    }
    c->lba = lba;
    c->blocks = blocks;
    c->len = bytes;
    c->index = 4;
    c->bio_flags = write_flags(d, cdb[1] & 0x08);
    c->needs_range = true;
    c->is_exclusive = true;
    c->needs_io = true;
    c->needs_scratch = true;
    c->start = verify_step;
    run(d, t);
}

/* ------------------------------------------------------------ WRITE SAME */

static void ws_step(struct scsi_task *t);
static void ws_start(struct scsi_task *t);

/*
 * A bdev without WRITE_ZEROES (or DISCARD) support: write zeroes from the
 * scratch buffer instead. Taking the scratch buffer last keeps the order in
 * which resources are taken, so this wait cannot deadlock.
 */
static void ws_fall_back_to_writes(struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    c->is_zero_pattern = false;
    c->count = 0;
    c->index = 1;                   /* the pattern is zeroes, not data-out */
    c->needs_scratch = true;
    c->start = ws_start;
    if (acquire(c->disk, t, false))
        ws_start(t);
}

static void ws_done(struct scsi_task *t, int status)
{
    struct disk_cmd *c = disk_cmd(t);
    if (status == -EOPNOTSUPP && c->is_zero_pattern) {
        ws_fall_back_to_writes(t);
        return;
    }
    if (status < 0) {
        fail_errno(t, status, true);
        return;
    }
    c->pos += c->io->bio->length;
    ws_step(t);
}

static void ws_step(struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    struct scsi_disk *d = c->disk;
    if (c->pos >= c->len || t->is_aborted) {
        if (t->is_aborted && c->pos < c->len)
            t->status = SCSI_STATUS_TASK_ABORTED;
        disk_finish(t);
        return;
    }
    uint64_t offset = c->lba * d->block_bytes + c->pos;
    uint64_t left = c->len - c->pos;
    if (c->is_zero_pattern) {
        /* One request per GiB keeps each bdev request bounded. */
        uint64_t n = HV_MIN(left, HV_GiB);
        enum bdev_io_type type = BDEV_IO_WRITE_ZEROES;
        uint32_t flags = 0;
        if (c->count) {             /* UNMAP bit */
            if (d->bd->discard_zeroes)
                type = BDEV_IO_DISCARD;
            else
                flags = BDEV_IO_MAY_UNMAP;
        }
        int ret = submit_try(t, type, offset, n, 0, flags, ws_done);
        if (ret == -EOPNOTSUPP)
            ws_fall_back_to_writes(t);
        else if (ret < 0)
            fail_errno(t, ret, true);
        return;
    }
    uint64_t n = HV_MIN(left, DISK_SCRATCH_BYTES);
    if (d->bd->max_io_bytes)
        n = HV_MIN(n, HV_ALIGN_DOWN(d->bd->max_io_bytes, d->block_bytes));
    c->io->iov[0].iov_base = d->scratch;
    c->io->iov[0].iov_len = n;
    submit(t, BDEV_IO_WRITE, offset, n, 1, c->bio_flags, ws_done);
}

static void ws_start(struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    struct scsi_disk *d = c->disk;
    if (!c->is_zero_pattern) {
        /* Replicate the one block over the scratch buffer once; every chunk
         * is then written from it. */
        uint64_t fill = HV_MIN(c->len, DISK_SCRATCH_BYTES);
        if (c->index == 1)
            memset(d->scratch, 0, d->block_bytes);
        else
            hv_iov_to_buf(t->out_iov, t->out_iovcnt, 0, d->scratch, d->block_bytes);
        for (uint64_t off = d->block_bytes; off < fill; off += d->block_bytes)
            memcpy(d->scratch + off, d->scratch, d->block_bytes);
    }
    ws_step(t);
}

static void cmd_write_same(struct scsi_disk *d, struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    const uint8_t *cdb = t->cdb;
    bool is16 = cdb[0] == 0x93;
    uint64_t lba = 0;
    uint64_t blocks = 0;
    scsi_cdb_blocks(cdb, SCSI_MAX_CDB, &lba, &blocks);
    bool is_unmap = cdb[1] & 0x08;
    bool is_ndob = is16 && (cdb[1] & 0x01);

    c->kind = 2;
    /* WRPROTECT, ANCHOR (ANC_SUP=0), PBDATA/LBDATA (obsolete) */
    if ((cdb[1] >> 5) || (cdb[1] & 0x10) || (cdb[1] & 0x06) || (!is16 && (cdb[1] & 0x01))) {
        disk_fail_cdb(t, 1, -1);
        return;
    }
    /* WSNZ=1: zero blocks is not "to the end of the medium" here. */
    if (blocks == 0 || blocks > DISK_MAX_WRITE_SAME_BLOCKS) {
        disk_fail_cdb(t, is16 ? 10 : 7, -1);
        return;
    }
    if (!is_range_valid(d, lba, blocks)) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LBA_OUT_OF_RANGE);
        return;
    }
    if (is_write_protected(t, d)) {
        disk_finish(t);
        return;
    }
    if (!is_ndob) {
        /* Exactly one block of data-out, no more and no less. */
        t->wanted_bytes = d->block_bytes;
        if (t->expected_bytes != d->block_bytes || t->out_bytes < d->block_bytes) {
            disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_CDB);
            return;
        }
    }
    c->lba = lba;
    c->blocks = blocks;
    c->len = blocks * d->block_bytes;
    c->is_zero_pattern = is_ndob || hv_iov_is_zero(t->out_iov, t->out_iovcnt, 0, d->block_bytes);
    c->count = is_unmap && d->bd->can_discard;
    c->bio_flags = write_flags(d, false);
    c->needs_range = true;
    c->needs_io = true;
    c->needs_scratch = !c->is_zero_pattern;
    c->start = ws_start;
    run(d, t);
}

/* ----------------------------------------------------------------- UNMAP */

static void unmap_step(struct scsi_task *t);

static void unmap_done(struct scsi_task *t, int status)
{
    struct disk_cmd *c = disk_cmd(t);
    if (status < 0) {
        fail_errno(t, status, true);
        return;
    }
    c->pos += c->io->bio->length;
    unmap_step(t);
}

static void read_unmap_descriptor(struct scsi_task *t, uint32_t i, uint64_t *lba,
                                  uint32_t *blocks)
{
    scsi_unmap_descriptor(t->out_iov, t->out_iovcnt, i, lba, blocks);
}
static void unmap_step(struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    struct scsi_disk *d = c->disk;
    while (c->index < c->count) {
        uint64_t lba;
        uint32_t blocks;
        if (t->is_aborted) {
            t->status = SCSI_STATUS_TASK_ABORTED;
            break;
        }
        read_unmap_descriptor(t, c->index++, &lba, &blocks);
        if (blocks == 0)
            continue;
        submit(t, BDEV_IO_DISCARD, lba * d->block_bytes, (uint64_t)blocks * d->block_bytes, 0, 0,
               unmap_done);
        return;
    }
    disk_finish(t);
}

static void cmd_unmap(struct scsi_disk *d, struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    uint32_t len = hv_be16(t->cdb + 7);
    uint8_t hdr[8];

    c->kind = 2;
    if (!d->bd->can_discard) {      /* LBPU=0: UNMAP is not a command we have */
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_OPCODE);
        return;
    }
    if (t->cdb[1] & 0x01) {         /* ANCHOR: ANC_SUP = 0 */
        disk_fail_cdb(t, 1, 0);
        return;
    }
    if (is_write_protected(t, d)) {
        disk_finish(t);
        return;
    }
    t->wanted_bytes = len;
    if (len == 0) {
        disk_finish(t);
        return;
    }
    if (len < 8 || HV_MIN(t->expected_bytes, t->out_bytes) < len) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_PARAMETER_LIST_LENGTH_ERROR);
        return;
    }
    hv_iov_to_buf(t->out_iov, t->out_iovcnt, 0, hdr, sizeof(hdr));
    uint32_t bd_len = hv_be16(hdr + 2);
    if (bd_len > len - 8)
        bd_len = len - 8;
    uint32_t count = bd_len / 16;
    if (count > DISK_MAX_UNMAP_DESCRIPTORS) {
        disk_fail_param(t, 2, -1);
        return;
    }
    /* Check every descriptor before touching the medium: an error must
     * leave nothing half done. MAXIMUM UNMAP LBA COUNT bounds the whole
     * command, not each descriptor. */
    uint64_t total = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t lba;
        uint32_t blocks;
        read_unmap_descriptor(t, i, &lba, &blocks);
        if (!is_range_valid(d, lba, blocks)) {
            disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LBA_OUT_OF_RANGE);
            return;
        }
        total += blocks;
    }
    if (total > DISK_MAX_UNMAP_BLOCKS) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_PARAMETER_LIST);
        return;
    }
    if (count == 0) {
        disk_finish(t);
        return;
    }
    /* UNMAP data may describe several ranges; the whole disk stands for the
     * range in the serialization against COMPARE AND WRITE. */
    c->lba = 0;
    c->blocks = d->blocks;
    c->count = count;
    c->index = 0;
    c->needs_range = true;
    c->needs_io = true;
    c->start = unmap_step;
    run(d, t);
}

/* ------------------------------------------------- SYNCHRONIZE CACHE */

static void flush_done(struct scsi_task *t, int status)
{
    if (status < 0) {
        fail_errno(t, status, true);
        return;
    }
    disk_finish(t);
}

static void flush_start(struct scsi_task *t)
{
    submit(t, BDEV_IO_FLUSH, 0, 0, 0, 0, flush_done);
}

static void cmd_sync_cache(struct scsi_disk *d, struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    bool is16 = t->cdb[0] == 0x91;
    uint64_t lba = is16 ? hv_be64(t->cdb + 2) : hv_be32(t->cdb + 2);
    uint64_t blocks = is16 ? hv_be32(t->cdb + 10) : hv_be16(t->cdb + 7);
    if (!is_range_valid(d, lba, blocks)) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LBA_OUT_OF_RANGE);
        return;
    }
    /* IMMED is honoured by waiting: the flush is short next to a round
     * trip, and a GOOD that precedes durability would be a lie. */
    c->needs_io = true;
    c->start = flush_start;
    run(d, t);
}

/* ------------------------------------------------------ GET LBA STATUS */

static void gls_step(struct scsi_task *t);

static void gls_put(struct scsi_task *t, uint64_t lba, uint64_t blocks, uint8_t status)
{
    struct disk_cmd *c = disk_cmd(t);
    uint8_t desc[16];
    size_t at = 8 + 16 * (size_t)c->index;
    /* Merge with the previous descriptor when it has the same status. */
    if (c->index) {
        uint8_t prev[16];
        hv_iov_to_buf(t->in_iov, t->in_iovcnt, at - 16, prev, sizeof(prev));
        uint64_t plba = hv_be64(prev);
        uint64_t pblocks = hv_be32(prev + 8);
        if (prev[12] == status && plba + pblocks == lba && pblocks + blocks <= UINT32_MAX) {
            hv_put_be32(prev + 8, (uint32_t)(pblocks + blocks));
            hv_iov_from_buf(t->in_iov, t->in_iovcnt, at - 16, prev, sizeof(prev));
            return;
        }
    }
    memset(desc, 0, sizeof(desc));
    hv_put_be64(desc, lba);
    hv_put_be32(desc + 8, (uint32_t)blocks);
    desc[12] = status;
    hv_iov_from_buf(t->in_iov, t->in_iovcnt, at, desc, sizeof(desc));
    c->index++;
}

static void gls_finish(struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    uint8_t hdr[8] = { 0 };
    hv_put_be32(hdr, 4 + 16 * c->index);
    hv_iov_from_buf(t->in_iov, t->in_iovcnt, 0, hdr, sizeof(hdr));
    t->in_bytes = (uint32_t)HV_MIN(8 + 16 * (uint64_t)c->index, c->alloc);
    t->wanted_bytes = t->in_bytes;
    disk_finish(t);
}

static void gls_done(struct scsi_task *t, int status)
{
    struct disk_cmd *c = disk_cmd(t);
    struct scsi_disk *d = c->disk;
    struct bdev_io *bio = c->io->bio;
    uint64_t blocks;
    uint8_t prov;
    if (status == -EOPNOTSUPP) {
        /* A bdev that cannot tell: everything is mapped. */
        blocks = c->blocks - c->pos;
        prov = 0;
    } else if (status < 0) {
        fail_errno(t, status, false);
        return;
    } else {
        blocks = HV_MAX(bio->status_length / d->block_bytes, 1);
        blocks = HV_MIN(blocks, c->blocks - c->pos);
        prov = (bio->status & BDEV_STATUS_ALLOCATED) ? 0 : 1;
    }
    blocks = HV_MIN(blocks, UINT32_MAX);
    gls_put(t, c->lba + c->pos, blocks, prov);
    c->pos += blocks;
    gls_step(t);
}

static void gls_step(struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    struct scsi_disk *d = c->disk;
    /* Stop when the range is described or the next descriptor cannot fit;
     * a descriptor that might still merge needs its room too. */
    if (c->pos >= c->blocks || c->index >= c->count || t->is_aborted) {
        gls_finish(t);
        return;
    }
    uint64_t left = HV_MIN(c->blocks - c->pos, UINT32_MAX);
    int ret = submit_try(t, BDEV_IO_BLOCK_STATUS, (c->lba + c->pos) * d->block_bytes,
                         left * d->block_bytes, 0, 0, gls_done);
    if (ret == -EOPNOTSUPP)
        gls_done(t, ret);           /* answered at once: the rest is mapped */
    else if (ret < 0)
        fail_errno(t, ret, false);
}

static void cmd_get_lba_status(struct scsi_disk *d, struct scsi_task *t)
{
    struct disk_cmd *c = disk_cmd(t);
    uint64_t lba = hv_be64(t->cdb + 2);
    uint32_t alloc = hv_be32(t->cdb + 10);
    if (lba >= d->blocks) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LBA_OUT_OF_RANGE);
        return;
    }
    uint32_t room = HV_MIN(alloc, t->dir == SCSI_DIR_IN ? t->expected_bytes : 0);
    room = (uint32_t)HV_MIN(room, hv_iov_length(t->in_iov, t->in_iovcnt));
    c->alloc = room;
    if (room < 8 + 16) {
        /* Not even one descriptor fits: the header alone says how long the
         * shortest answer is. */
        uint8_t hdr[8] = { 0 };
        hv_put_be32(hdr, 4 + 16);
        scsi_task_data_in(t, hdr, sizeof(hdr), alloc);
        disk_finish(t);
        return;
    }
    c->lba = lba;
    c->blocks = d->blocks - lba;
    /* At most 64 descriptors: a bounded number of bdev queries per command. */
    c->count = HV_MIN((room - 8) / 16, 64);
    c->index = 0;
    c->needs_io = true;
    c->start = gls_step;
    run(d, t);
}

/* ------------------------------------------------------ READ CAPACITY */

static void cmd_read_capacity10(struct scsi_disk *d, struct scsi_task *t)
{
    uint8_t buf[8];
    /* PMI=0 needs LBA=0 (SBC-3 5.15). */
    if (!(t->cdb[8] & 0x01) && hv_be32(t->cdb + 2) != 0) {
        disk_fail_cdb(t, 2, -1);
        return;
    }
    uint64_t last = d->blocks ? d->blocks - 1 : 0;
    hv_put_be32(buf, last > 0xFFFFFFFEull ? 0xFFFFFFFFu : (uint32_t)last);
    hv_put_be32(buf + 4, d->block_bytes);
    scsi_task_data_in(t, buf, sizeof(buf), sizeof(buf));
    disk_finish(t);
}

static void cmd_read_capacity16(struct scsi_disk *d, struct scsi_task *t)
{
    uint8_t buf[32];
    memset(buf, 0, sizeof(buf));
    hv_put_be64(buf, d->blocks ? d->blocks - 1 : 0);
    hv_put_be32(buf + 8, d->block_bytes);
    buf[13] = d->physical_exponent & 0x0F;
    if (d->bd->can_discard) {
        buf[14] |= 0x80;            /* LBPME */
        if (d->bd->discard_zeroes)
            buf[14] |= 0x40;        /* LBPRZ */
    }
    scsi_task_data_in(t, buf, sizeof(buf), hv_be32(t->cdb + 10));
    disk_finish(t);
}

/* ---------------------------------------- START STOP, PREVENT, TUR */

static void cmd_start_stop(struct scsi_disk *d, struct scsi_task *t)
{
    uint8_t b4 = t->cdb[4];
    struct disk_cmd *c = disk_cmd(t);
    /* A fixed virtual disk never spins down and has no medium to eject:
     * START=0 only makes the cache durable first (unless NO_FLUSH), and
     * the unit keeps answering, as libiscsi expects of fixed media. */
    if ((b4 & 0x01) == 0 && (b4 & 0x04) == 0 && (b4 >> 4) == 0) {
        c->needs_io = true;
        c->start = flush_start;
        run(d, t);
        return;
    }
    disk_finish(t);
}

static void cmd_prevent_allow(struct scsi_disk *d, struct scsi_task *t)
{
    uint8_t prevent = t->cdb[4] & 0x03;
    /* The medium is not removable; remember the state only to report it
     * consistently and clear it on reset. */
    d->prevent_count = prevent ? 1 : 0;
    disk_finish(t);
}

/* ---------------------------------------------------------- dispatch */

static void dispatch(struct scsi_disk *d, struct scsi_task *t)
{
    enum pr_class cls;
    uint8_t op = t->cdb[0];

    if (!spc_command_info(t->cdb, &cls)) {
        if (op == 0x9E || op == 0xA3 || op == 0x5E || op == 0x5F)
            disk_fail_cdb(t, 1, 4);
        else
            disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_OPCODE);
        return;
    }
    if (pr_is_conflict(d, t, cls)) {
        t->status = SCSI_STATUS_RESERVATION_CONFLICT;
        t->sense_len = 0;
        disk_finish(t);
        return;
    }

    switch (op) {
    case 0x00:                      /* TEST UNIT READY */
        disk_finish(t);
        return;
    case 0x03:
        spc_request_sense(d, t);
        return;
    case 0x12:
        spc_inquiry(d, t);
        return;
    case 0x1A: case 0x5A:
        spc_mode_sense(d, t);
        return;
    case 0x15: case 0x55:
        spc_mode_select(d, t);
        return;
    case 0x16: case 0x56:
        pr_reserve_spc2(d, t);
        return;
    case 0x17: case 0x57:
        pr_release_spc2(d, t);
        return;
    case 0x1B:
        cmd_start_stop(d, t);
        return;
    case 0x1E:
        cmd_prevent_allow(d, t);
        return;
    case 0x25:
        cmd_read_capacity10(d, t);
        return;
    case 0x9E:
        if ((t->cdb[1] & 0x1F) == 0x10)
            cmd_read_capacity16(d, t);
        else
            cmd_get_lba_status(d, t);
        return;
    case 0x08: case 0x28: case 0xA8: case 0x88:
        cmd_read_write(d, t, false);
        return;
    case 0x0A: case 0x2A: case 0xAA: case 0x8A:
    case 0x2E: case 0xAE: case 0x8E:
        cmd_read_write(d, t, true);
        return;
    case 0x34: case 0x90:
        cmd_prefetch(d, t);
        return;
    case 0x2F: case 0xAF: case 0x8F:
        cmd_verify(d, t);
        return;
    case 0x89:
        cmd_compare_and_write(d, t);
        return;
    case 0x41: case 0x93:
        cmd_write_same(d, t);
        return;
    case 0x42:
        cmd_unmap(d, t);
        return;
    case 0x35: case 0x91:
        cmd_sync_cache(d, t);
        return;
    case 0x5E:
        pr_in(d, t);
        return;
    case 0x5F:
        pr_out(d, t);
        return;
    case 0xA3:
        spc_report_supported_opcodes(d, t);
        return;
    }
    disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_OPCODE);
}

static void disk_execute(struct scsi_lu *lu, struct scsi_task *t)
{
    struct scsi_disk *d = (struct scsi_disk *)lu;
    struct disk_cmd *c = disk_cmd(t);
    memset(c, 0, sizeof(*c));
    c->disk = d;
    c->in_execute = true;
    d->stats.commands++;
    dispatch(d, t);
    /* Still ours: a completion inside dispatch() was deferred. */
    c->in_execute = false;
}

/* Waiting tasks were marked aborted by the controller; the kick completes
 * them without running them. In-flight bdev requests finish normally. */
static void disk_reset(struct scsi_lu *lu, const struct scsi_nexus *nexus)
{
    struct scsi_disk *d = (struct scsi_disk *)lu;
    hv_reactor_defer(d->reactor, &d->kick, disk_kick, d);
}

static void disk_lu_reset(struct scsi_lu *lu)
{
    struct scsi_disk *d = (struct scsi_disk *)lu;
    d->prevent_count = 0;
    pr_lu_reset(d);
}

static void disk_nexus_gone(struct scsi_lu *lu, const struct scsi_nexus *nexus)
{
    pr_nexus_gone((struct scsi_disk *)lu, nexus);
}

static void disk_destroy(struct scsi_lu *lu)
{
    struct scsi_disk *d = (struct scsi_disk *)lu;
    if (!d)
        return;
    free(d->pool_mem);
    free(d->scratch);
    free(d);
}

static const struct scsi_lu_ops disk_ops = {
    .name = "disk",
    .execute = disk_execute,
    .reset = disk_reset,
    .destroy = disk_destroy,
    .lu_reset = disk_lu_reset,
    .nexus_gone = disk_nexus_gone,
};

/* ------------------------------------------------------------ creation */

static void copy_padded(char *dst, size_t width, const char *src)
{
    size_t n = strlen(src);
    memset(dst, ' ', width);
    memcpy(dst, src, HV_MIN(n, width));
    dst[width] = '\0';
}

static bool is_printable_ascii(const char *s)
{
    for (; *s; s++)
        if (*s < 0x20 || *s > 0x7E)
            return false;
    return true;
}

int scsi_disk_create(struct bdev *bd, const struct scsi_disk_options *opt,
                     struct scsi_lu **out, struct hv_err *err)
{
    struct scsi_disk_options none = { 0 };
    if (!opt)
        opt = &none;
    if (bd->block_bytes == 0 || bd->block_bytes > 4096 || (bd->block_bytes & 511)) {
        return hv_err_set(err, -EINVAL, "%s: logical block size %u is not one a SCSI disk "
                          "can have", bd->name, bd->block_bytes);
    }
    const char *vendor = opt->vendor ? opt->vendor : "HVSTOR";
    const char *product = opt->product ? opt->product : "Virtual Disk";
    if (!is_printable_ascii(vendor) || !is_printable_ascii(product) ||
        (opt->serial && (!is_printable_ascii(opt->serial) || strlen(opt->serial) > 32))) {
        return hv_err_set(err, -EINVAL, "%s: vendor, product and serial must be printable "
                          "ASCII (serial at most 32 characters)", bd->name);
    }

    struct scsi_disk *d = calloc(1, sizeof(*d));
    if (!d)
        return hv_err_set(err, -ENOMEM, "%s: no memory for the SCSI disk", bd->name);
    d->lu.ops = &disk_ops;
    d->lu.reactor = bd->reactor;
    d->bd = bd;
    d->reactor = bd->reactor;
    d->block_bytes = bd->block_bytes;
    d->blocks = bd->size_bytes / bd->block_bytes;
    d->is_read_only = opt->is_read_only || bd->is_read_only;
    d->is_wce = bd->has_volatile_cache;
    uint32_t per_physical = bd->physical_block_bytes > bd->block_bytes
                                ? bd->physical_block_bytes / bd->block_bytes : 1;
    while ((1u << d->physical_exponent) < per_physical && d->physical_exponent < 15)
        d->physical_exponent++;
    uint64_t max_bytes = DISK_MAX_TRANSFER_BYTES;
    d->max_transfer_blocks = (uint32_t)(max_bytes / d->block_bytes);
    d->granularity_blocks = bd->granularity_bytes / bd->block_bytes;
    copy_padded(d->vendor, 8, vendor);
    copy_padded(d->product, 16, product);

    /* Identity: the bdev's UUID (a VHD's unique id) so that the guest sees
     * the same disk on every host and after every restart; a bdev without
     * one falls back to a hash of its name, stable on this host. */
    uint8_t id[16];
    if (!hv_uuid_is_nil(bd->uuid)) {
        memcpy(id, bd->uuid, 16);
    } else {
        uint64_t h1 = hv_xxh3_64(bd->name, strlen(bd->name));
        uint64_t h2 = hv_xxh3_64(&h1, sizeof(h1));
        hv_put_be64(id, h1);
        hv_put_be64(id + 8, h2);
    }
    if (opt->serial && opt->serial[0]) {
        snprintf(d->serial, sizeof(d->serial), "%s", opt->serial);
    } else {
        for (int i = 0; i < 16; i++)
            snprintf(d->serial + 2 * i, 3, "%02x", id[i]);
    }
    /* NAA 6 (IEEE Registered Extended): 24-bit company id, then 100 bits
     * from the identity. hvstor has no OUI of its own, so the company id is
     * a locally administered CID (its X bit, 0x20 of the first octet, set). */
    d->naa[0] = (uint8_t)(0x60 | (DISK_NAA_CID >> 20));
    d->naa[1] = (uint8_t)(DISK_NAA_CID >> 12);
    d->naa[2] = (uint8_t)(DISK_NAA_CID >> 4);
    d->naa[3] = (uint8_t)(((DISK_NAA_CID & 0x0F) << 4) | (id[0] & 0x0F));
    memcpy(d->naa + 4, id + 1, 12);

    size_t entry = HV_ALIGN_UP(sizeof(struct disk_io), 16);
    size_t stride = HV_ALIGN_UP(entry + bdev_io_size(bd), 16);
    d->pool_mem = hv_alloc_aligned(stride * DISK_IO_POOL);
    d->scratch = hv_alloc_aligned(DISK_SCRATCH_BYTES);
    if (!d->pool_mem || !d->scratch) {
        disk_destroy(&d->lu);
        return hv_err_set(err, -ENOMEM, "%s: no memory for the SCSI disk's request pool",
                          bd->name);
    }
    memset(d->pool_mem, 0, stride * DISK_IO_POOL);
    for (unsigned i = 0; i < DISK_IO_POOL; i++) {
        struct disk_io *io = (struct disk_io *)(void *)(d->pool_mem + stride * i);
        io->disk = d;
        io->bio = (struct bdev_io *)(void *)((uint8_t *)io + entry);
        io->next_free = d->free_io;
        d->free_io = io;
    }
    d->pr.holder = -1;
    *out = &d->lu;
    return 0;
}

void scsi_disk_capacity_changed(struct scsi_lu *lu)
{
    struct scsi_disk *d = (struct scsi_disk *)lu;
    d->blocks = d->bd->size_bytes / d->block_bytes;
    if (lu->controller)
        scsi_controller_raise_ua(lu->controller, lu->lun, 0x2A, 0x09);
}

void scsi_disk_stats(struct scsi_lu *lu, json_t *obj)
{
    struct scsi_disk *d = (struct scsi_disk *)lu;
    const struct disk_stats *s = &d->stats;
    json_object_set_new(obj, "commands", json_integer((json_int_t)s->commands));
    json_object_set_new(obj, "reads", json_integer((json_int_t)s->reads));
    json_object_set_new(obj, "writes", json_integer((json_int_t)s->writes));
    json_object_set_new(obj, "other", json_integer((json_int_t)s->other));
    json_object_set_new(obj, "errors", json_integer((json_int_t)s->errors));
    json_object_set_new(obj, "bytes_read", json_integer((json_int_t)s->bytes_read));
    json_object_set_new(obj, "bytes_written", json_integer((json_int_t)s->bytes_written));
    json_t *hist = json_array();
    for (unsigned i = 0; i < DISK_LATENCY_BUCKETS; i++) {
        if (!s->latency[i])
            continue;
        json_t *b = json_object();
        json_object_set_new(b, "le", json_integer((json_int_t)(2ull << i)));
        json_object_set_new(b, "count", json_integer((json_int_t)s->latency[i]));
        json_array_append_new(hist, b);
    }
    json_object_set_new(obj, "latency_histogram_us", hist);
}
