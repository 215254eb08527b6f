/* snapshot_int.h — internal to snapshot/: shared by checkpoint.c and backup.c. */
#ifndef HVSTOR_SNAPSHOT_INT_H
#define HVSTOR_SNAPSHOT_INT_H

#include "snapshot.h"

/* Hold the group's gate and run the reactor until it is drained. */
int snap_hold(struct snap_group *grp, struct hv_err *err);
/* The cut itself; `start_cbw` also starts copy-before-write on raw disks
 * that have a cbw filter (a backup's point in time for them). */
int snap_cut(struct snap_group *grp, const char *name, bool want_app, bool start_cbw,
             struct snap_checkpoint_result *res, struct hv_err *err);
/* Switch while requests are still out on the current inner device: they
 * complete normally and count in snap_top_old_inflight() until they do.
 * For a cut: every request sent before the switch belongs to the old
 * device, everything after to the new one (see checkpoint.c). */
int snap_top_switch_live(struct snap_top *t, struct bdev *inner);
unsigned snap_top_old_inflight(const struct snap_top *t);
/* Run `fn(arg)` on a worker thread while the reactor keeps serving the
 * guest (a temporary thread: control path only). */
int snap_blocking(struct snap_group *grp, int (*fn)(void *arg), void *arg, struct hv_err *err);
/* "<top without .vhd>.<name>.vhd" */
void snap_child_path(const char *top, const char *name, char *out, size_t cap);

#endif
