/*
 * ops.h — internal to vhd/: what the life-of-an-image operations (merge,
 * compact, resize, set-parent, repair) share.
 *
 * Every byte these operations write to an image outside the engine goes
 * through op_write (and op_sync, op_truncate, op_punch, op_unlink), so that
 * the crash harness sees each one through a vhd_ops_observer and can replay
 * any prefix of them, with the unsynced ones dropped or torn.
 */
#ifndef HVSTOR_VHD_OPS_H
#define HVSTOR_VHD_OPS_H

#include "engine.h"

struct op_file {
    int fd;
    const char *path;
    const struct vhd_ops_observer *obs;
    bool is_dry_run; /* count, write nothing */
};

/* Open `path` (read-write unless `is_read_only`) and take an OFD lock:
 * exclusive for writers, shared for readers, as the engine does, so an
 * operation never runs beside a writer. */
int op_open(const char *path, bool is_read_only, int *fd, struct hv_err *err);

int op_write(struct op_file *f, const void *buf, size_t len, uint64_t off, struct hv_err *err);
int op_sync(struct op_file *f, struct hv_err *err);
int op_truncate(struct op_file *f, uint64_t length, struct hv_err *err);
/* Deallocate [off, off+len) (reads zeroes afterwards; the observer sees
 * zeroes written). Best effort when the file system cannot punch. */
int op_punch(struct op_file *f, uint64_t off, uint64_t len, struct hv_err *err);
int op_unlink(const char *path, const struct vhd_ops_observer *obs, struct hv_err *err);
/* fsync the directory holding `path`. */
int op_sync_dir(const char *path);

/* Encode `footer` and write it at `off`. */
int op_write_footer(struct op_file *f, const struct vhd_footer *footer, uint64_t off,
                    struct hv_err *err);
/* Encode `h` and write the header at `off` (one 1024-byte write). */
int op_write_header(struct op_file *f, struct vhd_header *h, uint64_t off, struct hv_err *err);

/*
 * The BAT as it is on disk (raw big-endian bytes, padding included) plus a
 * dirty flag per sector, so that changes go back as whole sectors and the
 * padding stays as it was.
 */
struct op_bat {
    uint8_t *raw;
    uint64_t bytes; /* vhd_bat_bytes(entries) */
    uint32_t entries;
    uint64_t table_offset;
    uint8_t *dirty; /* per sector */
};
int op_bat_load(struct op_bat *b, int fd, const struct vhd_header *h, struct hv_err *err,
                const char *path);
void op_bat_set(struct op_bat *b, uint32_t index, uint32_t entry);
uint32_t op_bat_get(const struct op_bat *b, uint32_t index);
bool op_bat_is_dirty(const struct op_bat *b);
int op_bat_write(struct op_file *f, struct op_bat *b, struct hv_err *err);
/* op_bat_write, then fdatasync: the new entries are durable. Nothing at all
 * when no sector is dirty. */
int op_bat_commit(struct op_file *f, struct op_bat *b, struct hv_err *err);
void op_bat_free(struct op_bat *b);

/*
 * Reclaim space in a dynamic/differencing image whose BAT is `bat` (native
 * entries in m->bat are kept in step): move blocks from the end into holes
 * below them, cut the file after its last structure, and punch unused
 * whole pages that remain. Crash-safe (see the comment in compact.c).
 * `moved` counts relocated blocks. With f->is_dry_run nothing is written.
 */
int op_reclaim(struct op_file *f, struct vhd_meta *m, struct op_bat *bat,
               struct hv_progress *progress, uint32_t *moved, uint64_t *new_file_bytes,
               struct hv_err *err);

/* Path of `to` relative to directory `from_dir` (both absolute): "./p.vhd",
 * "../base/p.vhd". */
/* Tests only: when HVSTOR_TEST_KILL_AT names `point`, the process kills
 * itself with SIGKILL there (what an interrupted operation leaves is then
 * the real thing). */
void op_kill_point(const char *point);

int op_relative_path(const char *from_dir, const char *to, char *out, size_t cap);

#endif /* HVSTOR_VHD_OPS_H */
