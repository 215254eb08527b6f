/*
 * gate.c — the quiesce gate (one per VM) and the switchable top.
 *
 * The gate counts the group's requests below it. A hold flips one flag: from
 * then on every disk's submit() appends the request to that disk's FIFO (the
 * link lives in the request's own context, so queueing allocates nothing)
 * and the drained callback runs when the count reaches zero. Release hands
 * the queued requests down in arrival order. The hold time is measured from
 * the instant the flag was set to the instant it was cleared, with
 * CLOCK_MONOTONIC: that is exactly how long a guest request could have
 * waited at the gate.
 */
#include "filter.h"
#include "vhd.h"

#include <errno.h>
#include <stdlib.h>

void snap_filter_init(struct bdev *bd, const struct bdev *inner, const struct bdev_ops *ops,
                      const char *kind, size_t head_bytes)
{
    *bd = *inner;
    bd->ops = ops;
    bd->io_ctx_bytes = head_bytes + bdev_io_size(inner);
    snprintf(bd->name, sizeof(bd->name), "%s(%.200s)", kind, inner->name);
}

void snap_inner_prep(struct bdev_io *in, const struct bdev_io *out,
                     void (*done)(struct bdev_io *, int), void *arg)
{
    in->type = out->type;
    in->flags = out->flags;
    in->offset = out->offset;
    in->length = out->length;
    in->iov = out->iov;
    in->iovcnt = out->iovcnt;
    in->done = done;
    in->cb_arg = arg;
    in->status = 0;
    in->status_length = 0;
    in->status_depth = -1;
}

void snap_inner_results(struct bdev_io *out, const struct bdev_io *in)
{
    if (out->type == BDEV_IO_BLOCK_STATUS) {
        out->status = in->status;
        out->status_length = in->status_length;
        out->status_depth = in->status_depth;
    }
}

/* ------------------------------------------------------------------ gate */

struct gate_disk;

struct snap_gate {
    struct hv_reactor *reactor;
    bool is_held;
    bool has_drained;
    unsigned inflight;
    snap_done_fn drained;
    void *drained_arg;
    uint64_t hold_start_ns;
    uint64_t held_now;
    struct hv_deferred drain_call;
    struct snap_gate_stats stats;
    struct gate_disk *disks;
};

struct gate_io {
    struct bdev_io *outer;
    struct gate_disk *disk;
    struct gate_io *next;
    struct hv_deferred fail_call;
    int status;
};
#define GATE_HEAD SNAP_CTX_HEAD(struct gate_io)

struct gate_disk {
    struct bdev bd;
    struct bdev *inner;
    struct snap_gate *gate;
    struct gate_io *queue_head;
    struct gate_io *queue_tail;
    struct gate_disk *next;
};

static void gate_drain_call(void *arg)
{
    struct snap_gate *g = arg;
    if (!g->is_held || g->has_drained || g->inflight)
        return;
    g->has_drained = true;
    g->stats.last_drain_ns = hv_now_ns() - g->hold_start_ns;
    g->drained(g->drained_arg, 0);
}

static void gate_inner_done(struct bdev_io *in, int status)
{
    struct gate_io *gi = in->cb_arg;
    struct snap_gate *g = gi->disk->gate;
    snap_inner_results(gi->outer, in);
    g->inflight--;
    gi->outer->done(gi->outer, status);
    if (g->is_held && !g->has_drained && g->inflight == 0)
        gate_drain_call(g);
}

static void gate_fail_call(void *arg)
{
    struct gate_io *gi = arg;
    gi->outer->done(gi->outer, gi->status);
}

static int gate_pass(struct gate_io *gi)
{
    struct gate_disk *d = gi->disk;
    struct bdev_io *in = snap_inner_io(gi, GATE_HEAD);
    snap_inner_prep(in, gi->outer, gate_inner_done, gi);
    if (d->gate->is_held)
        d->gate->stats.passed_during_hold++;
    d->gate->inflight++;
    int ret = bdev_submit(d->inner, in);
    if (ret < 0)
        d->gate->inflight--;
    return ret;
}

static int gate_submit(struct bdev *bd, struct bdev_io *io)
{
    struct gate_disk *d = hv_container_of(bd, struct gate_disk, bd);
    struct gate_io *gi = bdev_io_ctx(io);
    gi->outer = io;
    gi->disk = d;
    gi->next = NULL;
    memset(&gi->fail_call, 0, sizeof(gi->fail_call));
    if (d->gate->is_held) {
        if (d->queue_tail)
            d->queue_tail->next = gi;
        else
            d->queue_head = gi;
        d->queue_tail = gi;
        d->gate->held_now++;
        return 0;
    }
    return gate_pass(gi);
}

static int gate_close(struct bdev *bd)
{
    struct gate_disk *d = hv_container_of(bd, struct gate_disk, bd);
    struct gate_disk **pp = &d->gate->disks;
    while (*pp && *pp != d)
        pp = &(*pp)->next;
    if (*pp)
        *pp = d->next;
    int ret = bdev_close(d->inner);
    free(d);
    return ret;
}

static int gate_resize(struct bdev *bd, uint64_t size_bytes, struct hv_err *err)
{
    struct gate_disk *d = hv_container_of(bd, struct gate_disk, bd);
    if (!d->inner->ops->resize)
        return hv_err_set(err, -EOPNOTSUPP, "%s: cannot be resized online", bd->name);
    int ret = d->inner->ops->resize(d->inner, size_bytes, err);
    if (ret == 0)
        bd->size_bytes = d->inner->size_bytes;
    return ret;
}

static void gate_describe(struct bdev *bd, json_t *obj)
{
    struct gate_disk *d = hv_container_of(bd, struct gate_disk, bd);
    if (d->inner->ops->describe)
        d->inner->ops->describe(d->inner, obj);
}

static const struct bdev_ops gate_ops = {
    .name = "quiesce",
    .submit = gate_submit,
    .close = gate_close,
    .resize = gate_resize,
    .describe = gate_describe,
};

int snap_gate_create(struct hv_reactor *r, struct snap_gate **out)
{
    struct snap_gate *g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->reactor = r;
    *out = g;
    return 0;
}

void snap_gate_destroy(struct snap_gate *g)
{
    free(g);
}

int snap_gate_wrap(struct snap_gate *g, struct bdev *inner, struct bdev **out, struct hv_err *err)
{
    struct gate_disk *d = calloc(1, sizeof(*d));
    if (!d)
        return hv_err_set(err, -ENOMEM, "%s: quiesce gate: out of memory", inner->name);
    snap_filter_init(&d->bd, inner, &gate_ops, "quiesce", GATE_HEAD);
    d->inner = inner;
    d->gate = g;
    d->next = g->disks;
    g->disks = d;
    *out = &d->bd;
    return 0;
}

int snap_gate_hold(struct snap_gate *g, snap_done_fn drained, void *arg)
{
    if (g->is_held)
        return -EBUSY;
    g->is_held = true;
    g->has_drained = false;
    g->held_now = 0;
    g->drained = drained;
    g->drained_arg = arg;
    g->stats.passed_during_hold = 0;
    g->hold_start_ns = hv_now_ns();
    if (g->inflight == 0)
        hv_reactor_defer(g->reactor, &g->drain_call, gate_drain_call, g);
    return 0;
}

void snap_gate_release(struct snap_gate *g)
{
    if (!g->is_held)
        return;
    g->is_held = false;
    g->stats.last_hold_ns = hv_now_ns() - g->hold_start_ns;
    g->stats.held_requests = g->held_now;
    g->stats.holds++;
    for (struct gate_disk *d = g->disks; d; d = d->next) {
        struct gate_io *gi = d->queue_head;
        d->queue_head = d->queue_tail = NULL;
        while (gi) {
            struct gate_io *next = gi->next;
            int ret = gate_pass(gi);
            if (ret < 0) {
                gi->status = ret;
                hv_reactor_defer(g->reactor, &gi->fail_call, gate_fail_call, gi);
            }
            gi = next;
        }
    }
}

bool snap_gate_is_held(const struct snap_gate *g)
{
    return g->is_held;
}

void snap_gate_get_stats(const struct snap_gate *g, struct snap_gate_stats *st)
{
    *st = g->stats;
}

unsigned snap_gate_inflight(const struct snap_gate *g)
{
    return g->inflight;
}

/* ------------------------------------------------------------------- top */

struct snap_top {
    struct bdev bd;
    struct bdev *inner;
    unsigned inflight;     /* requests sent to the current inner device */
    unsigned old_inflight; /* requests still out on devices switched away from */
    uint64_t epoch;        /* switches so far */
};

struct top_io {
    struct bdev_io *outer;
    struct snap_top *top;
    uint64_t epoch; /* of the inner device the request went to */
};
#define TOP_HEAD SNAP_CTX_HEAD(struct top_io)

static void top_inner_done(struct bdev_io *in, int status)
{
    struct top_io *ti = in->cb_arg;
    snap_inner_results(ti->outer, in);
    if (ti->epoch == ti->top->epoch)
        ti->top->inflight--;
    else
        ti->top->old_inflight--;
    ti->outer->done(ti->outer, status);
}

static int top_submit(struct bdev *bd, struct bdev_io *io)
{
    struct snap_top *t = hv_container_of(bd, struct snap_top, bd);
    struct top_io *ti = bdev_io_ctx(io);
    struct bdev_io *in = snap_inner_io(ti, TOP_HEAD);
    ti->outer = io;
    ti->top = t;
    ti->epoch = t->epoch;
    snap_inner_prep(in, io, top_inner_done, ti);
    t->inflight++;
    int ret = bdev_submit(t->inner, in);
    if (ret < 0)
        t->inflight--;
    return ret;
}

static int top_close(struct bdev *bd)
{
    struct snap_top *t = hv_container_of(bd, struct snap_top, bd);
    int ret = bdev_close(t->inner);
    free(t);
    return ret;
}

static void top_describe(struct bdev *bd, json_t *obj)
{
    struct snap_top *t = hv_container_of(bd, struct snap_top, bd);
    if (t->inner->ops->describe)
        t->inner->ops->describe(t->inner, obj);
}

/* Only the chain itself resizes: a live child over it would no longer have
 * its parent's size. */
static int top_resize(struct bdev *bd, uint64_t size_bytes, struct hv_err *err)
{
    struct snap_top *t = hv_container_of(bd, struct snap_top, bd);
    if (!t->inner->ops->resize)
        return hv_err_set(err, -EOPNOTSUPP, "%s: cannot be resized online%s", bd->name,
                          vhd_is_live_child(t->inner)
                              ? " while it has checkpoints (delete them first)"
                              : "");
    int ret = t->inner->ops->resize(t->inner, size_bytes, err);
    if (ret == 0)
        bd->size_bytes = t->inner->size_bytes;
    return ret;
}

static const struct bdev_ops top_ops = {
    .name = "top",
    .submit = top_submit,
    .close = top_close,
    .resize = top_resize,
    .describe = top_describe,
};

/* Room for the largest inner context any top may switch to: the contexts of
 * the vhd engine and of a live child are bounded; a switch to a device that
 * needs more is refused. */
#define TOP_CTX_RESERVE (16u * 1024)

int snap_top_wrap(struct bdev *inner, struct bdev **out, struct snap_top **top, struct hv_err *err)
{
    struct snap_top *t = calloc(1, sizeof(*t));
    if (!t)
        return hv_err_set(err, -ENOMEM, "%s: top: out of memory", inner->name);
    snap_filter_init(&t->bd, inner, &top_ops, "top", TOP_HEAD);
    if (bdev_io_size(inner) < TOP_CTX_RESERVE)
        t->bd.io_ctx_bytes = TOP_HEAD + TOP_CTX_RESERVE;
    t->inner = inner;
    *out = &t->bd;
    *top = t;
    return 0;
}

struct bdev *snap_top_current(const struct snap_top *top)
{
    return top->inner;
}

static int top_check(struct snap_top *t, struct bdev *inner)
{
    if (inner->size_bytes != t->bd.size_bytes || inner->reactor != t->bd.reactor)
        return -EINVAL;
    if (TOP_HEAD + bdev_io_size(inner) > t->bd.io_ctx_bytes)
        return -E2BIG;
    return 0;
}

static void top_set(struct snap_top *t, struct bdev *inner)
{
    t->inner = inner;
    t->bd.is_read_only = inner->is_read_only;
    t->bd.granularity_bytes = inner->granularity_bytes;
}

int snap_top_switch(struct snap_top *t, struct bdev *inner)
{
    if (t->inflight)
        return -EBUSY;
    int ret = top_check(t, inner);
    if (ret == 0)
        top_set(t, inner);
    return ret;
}

int snap_top_switch_live(struct snap_top *t, struct bdev *inner)
{
    int ret = top_check(t, inner);
    if (ret < 0)
        return ret;
    t->old_inflight += t->inflight;
    t->inflight = 0;
    t->epoch++;
    top_set(t, inner);
    return 0;
}

unsigned snap_top_old_inflight(const struct snap_top *t)
{
    return t->old_inflight;
}
