/*
 * Backups of pass-through LUNs: the snapshot stack under a LUN that takes
 * CDBs, not block requests.
 *
 * A pass-through LUN cannot get a differencing child, so a backup reads it
 * through copy-before-write, as it reads a raw disk. The stack is the one
 * every raw disk has (the VM's gate, changed-block tracking, cbw), over a
 * bdev of our own at the bottom ("ptb") whose reads are READ(16) commands
 * sent through the LUN's own pt_lun, the guest's I_T nexus at the SAN:
 *  - a second session would be a second nexus, which a guest reservation of
 *    an exclusive-access type shuts out, and a second login the SAN's ACLs
 *    may not allow for one initiator name; through the same pt_lun the
 *    backup reads whatever the guest may read, over either transport
 *    (iSCSI, or SG_IO for a local disk) and across reconnects;
 *  - ordering needs nothing more: a guest write is not sent before the
 *    read of its chunks' old data has completed.
 *
 * The guest's command is never turned into block requests: a command that
 * changes blocks (scsi_cdb_data_effect) goes down the stack as one WRITE
 * request covering its blocks, whose iovec is a marker naming the command.
 * The gate holds it during a cut and counts it in flight, the tracker marks
 * its chunks, cbw saves their old data while a backup runs; when it reaches
 * ptb, ptb forwards the guest's CDB unchanged and completes the request
 * when the SAN answers, so that the gate counts the command until then.
 * Commands that change nothing (reads, inquiries, PR, cache syncs) bypass
 * the stack. A command whose effect is not in its CDB covers the whole LUN:
 * the default filter lets none through; with --full-scsi the backup is
 * refused before it starts (passthru_lu.c), since a command like FORMAT UNIT
 * or EXTENDED COPY could change blocks behind any filter's back.
 *
 * The LUN's size comes from READ CAPACITY(16), sent as soon as the LU opens
 * (it waits in pt_lun for the login). Until it answers, writes wait here:
 * none may reach the LUN untracked. If it fails, the writes go on without
 * the stack, the tracker's state file is removed (the next backup is a full
 * one) and the next write asks again.
 */
#include "passthru_int.h"
#include "passthru.h"
#include "san.h"
#include "snapshot.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

#define PTB_TRIES 8 /* a read that meets a unit attention or BUSY is retried */

enum ps_state { PS_SIZING, PS_READY, PS_NO_VIEW };

struct fwd {
    struct hv_pt_snap *ps;
    struct pt_cmd *pc;
    void (*orig_done)(struct pt_cmd *cmd);
    void *orig_arg;
    struct iovec marker; /* the stack request's iovec: iov_base is this fwd */
    struct bdev_io *outer;
    struct bdev_io *bottom;
    struct hv_deferred deferred;
    struct fwd *next;
    bool is_aborted;
};

/* ptb's context of a request it executes itself (reads). */
struct ptb_io {
    struct hv_pt_snap *ps;
    struct bdev_io *io;
    struct pt_cmd pc;
    int tries;
    struct hv_deferred deferred;
};

struct hv_pt_snap {
    struct bdev bd; /* ptb: owned by the cbw above it */
    struct hv_pt_snap_options opt;
    char name[4096];
    char state_path[4200];
    enum ps_state state;
    char why[512];
    struct bdev *top; /* the gate's bdev: what the guest's commands enter */
    struct snap_cbt *cbt;
    struct snap_cbw *cbw;
    struct fwd *pool;
    struct fwd *free_list;
    struct fwd *wait_head; /* commands waiting for the size */
    struct fwd *wait_tail;
    struct pt_cmd cap; /* READ CAPACITY(16) */
    uint8_t cap_buf[32];
    struct iovec cap_iov;
    int cap_tries;
    bool is_cap_running;
    bool is_closing;
    bool is_orphan; /* freed by the capacity answer still to come */
    uint64_t stacked;
    uint64_t untracked;
};

static void release_waiting(struct hv_pt_snap *ps);
static void start_sizing(struct hv_pt_snap *ps);

static bool is_retryable(const struct pt_cmd *pc)
{
    if (pc->status == SAN_STATUS_BUSY || pc->status == SAN_STATUS_TASK_SET_FULL)
        return true;
    if (pc->status != SAN_STATUS_CHECK_CONDITION)
        return false;
    int key = san_sense_key(pc->sense, pc->sense_len);
    return key == SCSI_SENSE_UNIT_ATTENTION || key == 0xB /* ABORTED COMMAND */;
}

/* A unit attention met by our own command is the guest's news. */
static void pass_ua(struct hv_pt_snap *ps, const struct pt_cmd *pc)
{
    if (pc->status == SAN_STATUS_CHECK_CONDITION && !pc->is_filtered &&
        san_sense_key(pc->sense, pc->sense_len) == SCSI_SENSE_UNIT_ATTENTION &&
        ps->opt.on_unit_attention)
        ps->opt.on_unit_attention(ps->opt.cb_arg, pc->sense, pc->sense_len);
}

static void describe_failure(const struct pt_cmd *pc, char *buf, size_t len)
{
    uint16_t aa = san_sense_asc_ascq(pc->sense, pc->sense_len);
    if (pc->status == SAN_STATUS_CHECK_CONDITION)
        snprintf(buf, len, "CHECK CONDITION, sense key %xh, %02xh/%02xh",
                 san_sense_key(pc->sense, pc->sense_len), aa >> 8, aa & 0xff);
    else
        snprintf(buf, len, "status %02xh", pc->status);
}

/* ------------------------------------------------------------- ptb bdev */

static void ptb_read_done(struct pt_cmd *pc)
{
    struct ptb_io *pi = pc->cb_arg;
    struct hv_pt_snap *ps = pi->ps;

    if (pc->status == SAN_STATUS_GOOD && pc->residual == 0) {
        pi->io->done(pi->io, 0);
        return;
    }
    pass_ua(ps, pc);
    if (is_retryable(pc) && ++pi->tries < PTB_TRIES && !ps->is_closing) {
        pt_lun_submit(ps->opt.pl, pc);
        return;
    }
    char what[96];
    describe_failure(pc, what, sizeof(what));
    if (pc->status == SAN_STATUS_GOOD)
        snprintf(what, sizeof(what), "%" PRIu32 " bytes short", pc->residual);
    hv_error("%s: backup read of %" PRIu64 " bytes at %" PRIu64 ": %s", ps->name, pi->io->length,
             pi->io->offset, what);
    pi->io->done(pi->io, -EIO);
}

static void ptb_read(struct hv_pt_snap *ps, struct bdev_io *io)
{
    struct ptb_io *pi = bdev_io_ctx(io);
    struct pt_cmd *pc = &pi->pc;
    uint64_t lba = io->offset / ps->bd.block_bytes;

    memset(pi, 0, sizeof(*pi));
    pi->ps = ps;
    pi->io = io;
    pc->cdb[0] = 0x88; /* READ(16) */
    hv_put_be64(pc->cdb + 2, lba);
    hv_put_be32(pc->cdb + 10, (uint32_t)(io->length / ps->bd.block_bytes));
    pc->cdb_len = 16;
    pc->dir = SAN_XFER_READ;
    pc->iov = io->iov;
    pc->iovcnt = io->iovcnt;
    pc->xfer_bytes = (uint32_t)io->length;
    pc->done = ptb_read_done;
    pc->cb_arg = pi;
    pt_lun_submit(ps->opt.pl, pc);
}

static void fwd_at_san_done(struct pt_cmd *pc)
{
    struct fwd *f = pc->cb_arg;
    f->bottom->done(f->bottom, 0);
}

static void fwd_aborted_call(void *arg)
{
    struct fwd *f = arg;
    f->bottom->done(f->bottom, 0);
}

/* The guest's command has passed the gate, the tracker and the cbw: its
 * chunks' old data is saved (or no backup runs). Send it as it came. */
static int ptb_forward(struct hv_pt_snap *ps, struct bdev_io *io)
{
    struct fwd *f = io->iov && io->iovcnt == 1 ? io->iov->iov_base : NULL;

    if (!f || f < ps->pool || f >= ps->pool + ps->opt.max_commands || io->iov != &f->marker)
        return -EOPNOTSUPP; /* only the LU's commands write through here */
    f->bottom = io;
    if (f->is_aborted) {
        /* An abort or reset came while it waited in the stack: the SAN
         * never sees it, so it cannot land after a later write. */
        f->pc->status = SAN_STATUS_TASK_ABORTED;
        f->pc->sense_len = 0;
        f->pc->residual = f->pc->xfer_bytes;
        hv_reactor_defer(ps->bd.reactor, &f->deferred, fwd_aborted_call, f);
        return 0;
    }
    f->pc->done = fwd_at_san_done;
    f->pc->cb_arg = f;
    pt_lun_submit(ps->opt.pl, f->pc);
    return 0;
}

static void ptb_flush_call(void *arg)
{
    struct ptb_io *pi = arg;
    pi->io->done(pi->io, 0);
}

static int ptb_submit(struct bdev *bd, struct bdev_io *io)
{
    struct hv_pt_snap *ps = hv_container_of(bd, struct hv_pt_snap, bd);

    switch (io->type) {
    case BDEV_IO_READ:
        ptb_read(ps, io);
        return 0;
    case BDEV_IO_WRITE:
        return ptb_forward(ps, io);
    case BDEV_IO_FLUSH: {
        /* The guest's SYNCHRONIZE CACHE goes to the LUN itself. */
        struct ptb_io *pi = bdev_io_ctx(io);
        pi->io = io;
        hv_reactor_defer(bd->reactor, &pi->deferred, ptb_flush_call, pi);
        return 0;
    }
    default:
        return -EOPNOTSUPP;
    }
}

static int ptb_close(struct bdev *bd)
{
    (void)bd; /* the hv_pt_snap around it is freed by hv_pt_snap_free */
    return 0;
}

static const struct bdev_ops ptb_ops = {
    .name = "passthru-view",
    .submit = ptb_submit,
    .close = ptb_close,
};

/* ------------------------------------------------------ guest commands */

/* The guest command gets its own completion back; f is free again. */
static struct pt_cmd *fwd_release(struct hv_pt_snap *ps, struct fwd *f)
{
    struct pt_cmd *pc = f->pc;
    pc->done = f->orig_done;
    pc->cb_arg = f->orig_arg;
    f->pc = NULL;
    f->next = ps->free_list;
    ps->free_list = f;
    return pc;
}

static void fwd_put(struct hv_pt_snap *ps, struct fwd *f)
{
    struct pt_cmd *pc = fwd_release(ps, f);
    pc->done(pc);
}

static void outer_done(struct bdev_io *outer, int status)
{
    struct fwd *f = outer->cb_arg;
    struct hv_pt_snap *ps = f->ps;

    if (status < 0) {
        /* Never sent: its old data could not be saved for the backup that
         * runs (cbw read failed). Failing the write keeps the backup true. */
        char name[64];
        hv_error("%s: %s refused: the running backup could not save the old data of its "
                 "blocks (%s)",
                 ps->name, pt_cdb_name(f->pc->cdb, f->pc->cdb_len, name, sizeof(name)),
                 strerror(-status));
        f->pc->status = SAN_STATUS_CHECK_CONDITION;
        f->pc->sense_len = (uint32_t)pt_sense_fixed(f->pc->sense, 0x4, 0x44, 0x00);
        f->pc->residual = f->pc->xfer_bytes;
        f->pc->is_filtered = true;
    }
    fwd_put(ps, f);
}

static void fwd_failed_call(void *arg)
{
    struct fwd *f = arg;
    outer_done(f->outer, -EIO);
}

/* Forward without the stack (no view of the LUN, or past its known end). */
static void send_untracked(struct hv_pt_snap *ps, struct fwd *f)
{
    struct pt_cmd *pc = fwd_release(ps, f);
    ps->untracked++;
    pt_lun_submit(ps->opt.pl, pc);
}

static void cbt_unreliable(struct hv_pt_snap *ps, const char *why)
{
    uint8_t *zero = calloc(1, HV_DIV_ROUND_UP(snap_cbt_chunks(ps->cbt), 8) + 1);
    if (zero)
        snap_cbt_merge_back(ps->cbt, zero, false, why);
    free(zero);
}

static void submit_stacked(struct hv_pt_snap *ps, struct fwd *f)
{
    struct pt_cmd *pc = f->pc;
    struct scsi_write_extent ext;
    uint64_t size = ps->bd.size_bytes;
    uint64_t block = ps->bd.block_bytes;
    uint64_t offset;
    uint64_t length;
    enum scsi_data_effect eff =
        scsi_cdb_data_effect(pc->cdb, pc->cdb_len, pc->iov, pc->iovcnt,
                             pc->dir == SAN_XFER_WRITE ? pc->xfer_bytes : 0, &ext);

    if (eff == SCSI_EFFECT_UNKNOWN) {
        offset = 0;
        length = size;
    } else {
        offset = ext.lba * block;
        length = ext.is_to_end ? (offset < size ? size - offset : 0) : ext.blocks * block;
    }
    if (ext.lba > size / block || (!ext.is_to_end && ext.blocks > size / block) ||
        offset >= size || length == 0 || length > size - offset) {
        /* Past the size the LUN had when it was opened: the SAN refuses
         * it, unless the LUN grew there; then the tracker cannot cover it. */
        char why[160];
        snprintf(why, sizeof(why),
                 "the guest wrote past the %" PRIu64 " bytes the LUN had when hvstord opened it "
                 "(grown on the SAN?)",
                 size);
        cbt_unreliable(ps, why);
        send_untracked(ps, f);
        return;
    }
    struct bdev_io *o = f->outer;
    f->marker.iov_base = f;
    f->marker.iov_len = length;
    o->type = BDEV_IO_WRITE;
    o->flags = 0;
    o->offset = offset;
    o->length = length;
    o->iov = &f->marker;
    o->iovcnt = 1;
    o->done = outer_done;
    o->cb_arg = f;
    ps->stacked++;
    int ret = bdev_submit(ps->top, o);
    if (ret < 0) {
        hv_error("%s: the snapshot stack refused a write of %" PRIu64 " bytes at %" PRIu64 ": %s",
                 ps->name, length, offset, strerror(-ret));
        hv_reactor_defer(ps->bd.reactor, &f->deferred, fwd_failed_call, f);
    }
}

bool hv_pt_snap_forward(struct hv_pt_snap *ps, struct pt_cmd *pc)
{
    struct scsi_write_extent ext;
    enum scsi_data_effect eff =
        scsi_cdb_data_effect(pc->cdb, pc->cdb_len, pc->iov, pc->iovcnt,
                             pc->dir == SAN_XFER_WRITE ? pc->xfer_bytes : 0, &ext);
    struct fwd *f = ps->free_list;

    if (eff == SCSI_EFFECT_NONE || ps->is_closing)
        return false;
    if (!f) {
        /* The LU has no more commands than the pool: cannot happen. */
        hv_error("%s: no room to track a write (pool of %u)", ps->name, ps->opt.max_commands);
        if (ps->cbt)
            cbt_unreliable(ps, "a write went to the LUN untracked (out of contexts)");
        return false;
    }
    ps->free_list = f->next;
    f->pc = pc;
    f->orig_done = pc->done;
    f->orig_arg = pc->cb_arg;
    f->is_aborted = false;
    f->next = NULL;
    if (ps->state == PS_READY) {
        submit_stacked(ps, f);
        return true;
    }
    if (ps->wait_tail)
        ps->wait_tail->next = f;
    else
        ps->wait_head = f;
    ps->wait_tail = f;
    if (ps->state == PS_NO_VIEW)
        start_sizing(ps);
    return true;
}

void hv_pt_snap_abort(struct hv_pt_snap *ps, struct pt_cmd *pc)
{
    for (unsigned i = 0; i < ps->opt.max_commands; i++)
        if (ps->pool[i].pc == pc)
            ps->pool[i].is_aborted = true;
}

/* --------------------------------------------------------------- sizing */

static int build_stack(struct hv_pt_snap *ps, const struct san_capacity *cap, struct hv_err *err)
{
    struct bdev *mid = NULL;
    struct bdev *tracked = NULL;
    int ret;

    ps->bd.ops = &ptb_ops;
    ps->bd.reactor = ps->opt.reactor;
    snprintf(ps->bd.name, sizeof(ps->bd.name), "%s", ps->name);
    ps->bd.size_bytes = cap->blocks * cap->block_bytes;
    ps->bd.block_bytes = cap->block_bytes;
    ps->bd.physical_block_bytes = cap->physical_block_bytes;
    ps->bd.io_ctx_bytes = sizeof(struct ptb_io);
    if (cap->block_bytes < 512 || ps->opt.chunk_bytes % cap->block_bytes)
        return hv_err_set(err, -EINVAL,
                          "%s: %u-byte blocks do not divide the %u-byte backup "
                          "chunks",
                          ps->name, cap->block_bytes, ps->opt.chunk_bytes);
    ret = snap_cbw_wrap(&ps->bd, ps->opt.chunk_bytes, ps->opt.spare_chunks, &mid, &ps->cbw, err);
    if (ret < 0)
        goto fail;
    ret = snap_cbt_wrap(mid, ps->opt.chunk_bytes, ps->state_path[0] ? ps->state_path : NULL,
                        &tracked, &ps->cbt, err);
    if (ret < 0)
        goto fail;
    mid = NULL;
    ret = snap_gate_wrap(ps->opt.gate, tracked, &ps->top, err);
    if (ret < 0)
        goto fail;
    tracked = NULL;
    for (unsigned i = 0; i < ps->opt.max_commands; i++) {
        ps->pool[i].outer = calloc(1, bdev_io_size(ps->top));
        if (!ps->pool[i].outer) {
            ret = hv_err_set(err, -ENOMEM, "%s: out of memory", ps->name);
            goto fail;
        }
    }
    return 0;
fail:
    /* Each filter owns what it wraps: close the outermost one built. */
    if (ps->top)
        bdev_close(ps->top);
    else if (tracked)
        bdev_close(tracked);
    else if (mid)
        bdev_close(mid);
    for (unsigned i = 0; i < ps->opt.max_commands; i++) {
        free(ps->pool[i].outer);
        ps->pool[i].outer = NULL;
    }
    ps->top = NULL;
    ps->cbt = NULL;
    ps->cbw = NULL;
    return ret;
}

static void no_view(struct hv_pt_snap *ps, const char *why)
{
    ps->state = PS_NO_VIEW;
    snprintf(ps->why, sizeof(ps->why), "%s", why);
    /* Writes go on untracked: the tracker's history must not be trusted
     * by a later open. */
    if (ps->state_path[0])
        unlink(ps->state_path);
    hv_warn("%s: no backup view: %s", ps->name, why);
    release_waiting(ps);
}

static void release_waiting(struct hv_pt_snap *ps)
{
    while (ps->wait_head) {
        struct fwd *f = ps->wait_head;
        ps->wait_head = f->next;
        if (!ps->wait_head)
            ps->wait_tail = NULL;
        if (ps->state == PS_READY)
            submit_stacked(ps, f);
        else
            send_untracked(ps, f);
    }
}

static void cap_done(struct pt_cmd *pc)
{
    struct hv_pt_snap *ps = pc->cb_arg;
    struct san_capacity cap;
    struct hv_err err = {0};
    char why[300];

    ps->is_cap_running = false;
    if (ps->is_orphan) {
        free(ps->pool);
        free(ps);
        return;
    }
    if (ps->is_closing)
        return;
    if (pc->status != SAN_STATUS_GOOD) {
        pass_ua(ps, pc);
        if (is_retryable(pc) && ++ps->cap_tries < PTB_TRIES) {
            ps->is_cap_running = true;
            pt_lun_submit(ps->opt.pl, pc);
            return;
        }
        char what[96];
        describe_failure(pc, what, sizeof(what));
        snprintf(why, sizeof(why), "READ CAPACITY(16) failed (%s; LUN %s: %s)", what,
                 pt_state_name(pt_lun_state(ps->opt.pl)), pt_lun_why(ps->opt.pl));
        no_view(ps, why);
        return;
    }
    size_t got = sizeof(ps->cap_buf) - HV_MIN(pc->residual, (uint32_t)sizeof(ps->cap_buf));
    if (san_parse_read_capacity16(ps->cap_buf, got, &cap) < 0) {
        no_view(ps, "READ CAPACITY(16) answered with data that does not parse");
        return;
    }
    int ret = build_stack(ps, &cap, &err);
    if (ret < 0) {
        no_view(ps, hv_err_msg(&err, ret));
        return;
    }
    ps->state = PS_READY;
    ps->why[0] = 0;
    hv_debug("%s: backup view ready, %" PRIu64 " bytes", ps->name, ps->bd.size_bytes);
    release_waiting(ps);
}

static void start_sizing(struct hv_pt_snap *ps)
{
    struct pt_cmd *pc = &ps->cap;

    if (ps->is_cap_running)
        return;
    ps->state = PS_SIZING;
    memset(pc, 0, sizeof(*pc));
    pc->cdb[0] = 0x9E;
    pc->cdb[1] = 0x10;
    hv_put_be32(pc->cdb + 10, sizeof(ps->cap_buf));
    pc->cdb_len = 16;
    pc->dir = SAN_XFER_READ;
    ps->cap_iov.iov_base = ps->cap_buf;
    ps->cap_iov.iov_len = sizeof(ps->cap_buf);
    pc->iov = &ps->cap_iov;
    pc->iovcnt = 1;
    pc->xfer_bytes = sizeof(ps->cap_buf);
    pc->done = cap_done;
    pc->cb_arg = ps;
    ps->cap_tries = 0;
    ps->is_cap_running = true;
    pt_lun_submit(ps->opt.pl, pc);
}

/* ------------------------------------------------------------ lifetime */

int hv_pt_snap_create(const struct hv_pt_snap_options *opt, struct hv_pt_snap **out,
                      struct hv_err *err)
{
    struct hv_pt_snap *ps = calloc(1, sizeof(*ps));

    if (!ps || !(ps->pool = calloc(opt->max_commands, sizeof(*ps->pool)))) {
        free(ps);
        return hv_err_set(err, -ENOMEM, "out of memory");
    }
    ps->opt = *opt;
    snprintf(ps->name, sizeof(ps->name), "%s", opt->name);
    snprintf(ps->state_path, sizeof(ps->state_path), "%s",
             opt->cbt_state_path ? opt->cbt_state_path : "");
    ps->opt.name = ps->name;
    ps->opt.cbt_state_path = NULL;
    for (unsigned i = opt->max_commands; i-- > 0;) {
        ps->pool[i].ps = ps;
        ps->pool[i].next = ps->free_list;
        ps->free_list = &ps->pool[i];
    }
    start_sizing(ps);
    *out = ps;
    return 0;
}

int hv_pt_snap_view(struct hv_pt_snap *ps, struct bdev **top, struct snap_cbt **cbt,
                    struct snap_cbw **cbw, struct hv_err *err)
{
    if (ps->state == PS_SIZING)
        return hv_err_set(err, -EAGAIN,
                          "%s: its size is not known yet (READ CAPACITY waits for the SAN: "
                          "LUN %s, %s); try again",
                          ps->name, pt_state_name(pt_lun_state(ps->opt.pl)),
                          pt_lun_why(ps->opt.pl));
    if (ps->state == PS_NO_VIEW)
        return hv_err_set(err, -EIO, "%s: cannot be read for a backup: %s", ps->name, ps->why);
    *top = ps->top;
    *cbt = ps->cbt;
    *cbw = ps->cbw;
    return 0;
}

void hv_pt_snap_describe(struct hv_pt_snap *ps, json_t *obj)
{
    static const char *names[] = {"sizing", "ready", "none"};
    json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I}", "view", names[ps->state], "why", ps->why,
                          "size_bytes", (json_int_t)ps->bd.size_bytes, "writes_tracked",
                          (json_int_t)ps->stacked, "writes_untracked", (json_int_t)ps->untracked);
    if (ps->cbt) {
        const char *why = NULL;
        bool is_reliable = snap_cbt_is_reliable(ps->cbt, &why);
        json_object_set_new(
            o, "tracking",
            json_pack("{s:b, s:s}", "reliable", is_reliable, "why", is_reliable ? "" : why));
    }
    if (ps->cbw)
        json_object_set_new(o, "chunks_saved_before_write",
                            json_integer((json_int_t)snap_cbw_saved(ps->cbw)));
    json_object_set_new(obj, "backup", o);
}

void hv_pt_snap_close(struct hv_pt_snap *ps)
{
    ps->is_closing = true;
    if (ps->top) {
        int ret = bdev_close(ps->top);
        if (ret < 0)
            hv_error("%s: closing the backup view: %s", ps->name, strerror(-ret));
    }
    ps->top = NULL;
    ps->cbt = NULL;
    ps->cbw = NULL;
}

void hv_pt_snap_free(struct hv_pt_snap *ps)
{
    if (!ps)
        return;
    for (unsigned i = 0; i < ps->opt.max_commands; i++)
        free(ps->pool[i].outer);
    if (ps->is_cap_running) {
        /* pt_lun still has our READ CAPACITY: its answer frees us. */
        ps->is_orphan = true;
        return;
    }
    free(ps->pool);
    free(ps);
}
