/*
 * filter.h — internal to snapshot/: what every filter bdev shares.
 *
 * A filter's per-request context is its own state, padded to 16 bytes,
 * followed by a whole bdev_io for the inner device (bdev_io_size(inner)
 * bytes), so that forwarding a request allocates nothing.
 */
#ifndef HVSTOR_SNAPSHOT_FILTER_H
#define HVSTOR_SNAPSHOT_FILTER_H

#include "snapshot.h"

#define SNAP_CTX_HEAD(type) HV_ALIGN_UP(sizeof(type), 16)

static inline struct bdev_io *snap_inner_io(void *ctx, size_t head)
{
    return (struct bdev_io *)(void *)((char *)ctx + head);
}

/* Copy the device's properties from `inner` into `bd` (not ops, name, ctx). */
void snap_filter_init(struct bdev *bd, const struct bdev *inner, const struct bdev_ops *ops,
                      const char *kind, size_t head_bytes);

/* Fill `in` as a copy of request `out`, completing through done/arg. */
void snap_inner_prep(struct bdev_io *in, const struct bdev_io *out,
                     void (*done)(struct bdev_io *, int), void *arg);
/* Copy BLOCK_STATUS results back to the outer request. */
void snap_inner_results(struct bdev_io *out, const struct bdev_io *in);

#endif
