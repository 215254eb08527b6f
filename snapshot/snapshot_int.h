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
/* "<top without .vhd>.<name>.vhd" */
void snap_child_path(const char *top, const char *name, char *out, size_t cap);

#endif
