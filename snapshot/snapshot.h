/*
 * snapshot — live checkpoints and backups of running VMs, host side.
 *
 * snapshot/ is handed the disks of one consistency group (a VM): for each a
 * bdev stack the caller builds with the filters below, and for VHD disks the
 * path of the chain's top image. It never knows about VMs, controllers or
 * SCSI; hv/ builds the stacks, persists what these functions return and calls
 * them from its reactor.
 *
 * Per disk, from the guest down:
 *
 *     guest I/O ─► gate (one snap_gate shared by every disk of the VM)
 *                  ─► cbt (changed-block tracking)
 *                  ─► top (switchable: the chain, or a live child over it)
 *                  ─► cbw (raw/pass-through disks only: copy-before-write)
 *                  ─► vhd engine or raw file
 *
 * Every filter is a bdev that owns the bdev it wraps (closing the filter
 * closes the inner one), allocates nothing per I/O (its per-request state and
 * a whole bdev_io for the inner device live in its io_ctx_bytes) and runs in
 * the inner bdev's reactor.
 *
 * On top of the filters: the requestor (the guest agent, hvstor-vss or
 * qemu-ga, behind one interface), checkpoints (an instant across all disks:
 * freeze, hold, switch every VHD to a new differencing child, release, thaw),
 * live merge (a checkpoint deleted while the guest runs), and backups (full
 * and incremental, as ordinary VHD chains plus a manifest of xxh3 hashes).
 */
#ifndef HVSTOR_SNAPSHOT_H
#define HVSTOR_SNAPSHOT_H

#include "common.h"

/* ========================================================= quiesce gate */

/*
 * One gate per VM. snap_gate_hold() stops every disk wrapped with this gate
 * from passing new requests down (they wait in order, without failing and
 * without allocation), and calls `drained` once nothing of the group is in
 * flight below the gate. snap_gate_release() lets the waiting requests go, in
 * arrival order per disk. Hold and release nest in neither direction: one
 * hold at a time.
 */
struct snap_gate;
typedef void (*snap_done_fn)(void *arg, int status);

int snap_gate_create(struct hv_reactor *r, struct snap_gate **out);
/* Every wrapped disk must be closed. */
void snap_gate_destroy(struct snap_gate *g);
/* A filter bdev over `inner` (which it owns) that obeys the gate. */
int snap_gate_wrap(struct snap_gate *g, struct bdev *inner, struct bdev **out, struct hv_err *err);
/* -EBUSY when a hold is already running. `drained` runs from the reactor. */
int snap_gate_hold(struct snap_gate *g, snap_done_fn drained, void *arg);
void snap_gate_release(struct snap_gate *g);
bool snap_gate_is_held(const struct snap_gate *g);

struct snap_gate_stats {
    uint64_t last_drain_ns;      /* hold() until nothing in flight */
    uint64_t last_hold_ns;       /* hold() until release(): what the guest waited */
    uint64_t held_requests;      /* requests queued during the last hold */
    uint64_t passed_during_hold; /* requests that went down while held: always 0 */
    uint64_t holds;
};
void snap_gate_get_stats(const struct snap_gate *g, struct snap_gate_stats *st);
/* Requests of the group below the gate right now. */
unsigned snap_gate_inflight(const struct snap_gate *g);

/* ============================================== changed-block tracking */

/*
 * A bitmap per disk, one bit per `granularity_bytes` (a power of two from
 * 4 KiB; the VHD block size is a good choice), set for every range written,
 * discarded or zeroed since the last snap_cbt_take(). With a `state_path` the
 * bitmap survives a clean stop: opening marks the file "in use", a clean
 * close writes the bitmap with a "clean" marker. After an unclean stop, or
 * without history, the tracker says it is not reliable and why, so that the
 * next incremental backup falls back to a full one.
 */
struct snap_cbt;

int snap_cbt_wrap(struct bdev *inner, uint32_t granularity_bytes, const char *state_path,
                  struct bdev **out, struct snap_cbt **cbt, struct hv_err *err);
/* The tracker of a filter returned by snap_cbt_wrap (valid until its close). */
bool snap_cbt_is_reliable(const struct snap_cbt *cbt, const char **why);
uint32_t snap_cbt_granularity(const struct snap_cbt *cbt);
uint64_t snap_cbt_chunks(const struct snap_cbt *cbt);
/* Hand over the current bitmap (malloc'ed, chunks bits, LSB first) and start
 * a fresh one: called inside a gate hold, so that the cut is exact. After a
 * take the tracker is reliable from here on. -ENOMEM leaves it unchanged. */
int snap_cbt_take(struct snap_cbt *cbt, uint8_t **bits, bool *was_reliable, char *why,
                  size_t why_cap);
/* Put taken bits back (OR) and, when they were not reliable, the reason
 * too: a backup that failed, or a mere checkpoint, must not lose them. */
void snap_cbt_merge_back(struct snap_cbt *cbt, const uint8_t *bits, bool was_reliable,
                         const char *why);
/* The disk leaves for good (its VM is deleted): the close writes no state,
 * and the caller removes the file. */
void snap_cbt_forget_state(struct snap_cbt *cbt);
static inline bool snap_bit_test(const uint8_t *bits, uint64_t i)
{
    return bits[i >> 3] & (1u << (i & 7));
}

/* ================================================= copy-before-write */

/*
 * For disks that cannot get a differencing child (raw files, pass-through
 * LUNs). Between snap_cbw_start() and snap_cbw_stop(), a guest write to a
 * chunk that the backup has not read yet first reads the chunk's old data
 * into one of `spare_chunks` preallocated buffers (waiting for one when all
 * are in use); snap_cbw_read() then serves that saved copy. The backup thus
 * reads the disk as it was at start().
 */
struct snap_cbw;

int snap_cbw_wrap(struct bdev *inner, uint32_t chunk_bytes, unsigned spare_chunks,
                  struct bdev **out, struct snap_cbw **cbw, struct hv_err *err);
/* Start a point-in-time view (inside a gate hold for a group cut). */
int snap_cbw_start(struct snap_cbw *cbw);
void snap_cbw_stop(struct snap_cbw *cbw);
/* Read chunk `index` as it was at start() into `buf` (chunk_bytes, aligned;
 * the last chunk may be shorter). Completes through `done` from the reactor.
 * Each chunk is read at most once per start(). */
int snap_cbw_read(struct snap_cbw *cbw, uint64_t index, void *buf, snap_done_fn done, void *arg);
uint64_t snap_cbw_chunks(const struct snap_cbw *cbw);
uint32_t snap_cbw_chunk_bytes(const struct snap_cbw *cbw);
/* Chunks saved because the guest wrote them first (statistics). */
uint64_t snap_cbw_saved(const struct snap_cbw *cbw);

/* ======================================================= switchable top */

/*
 * A filter whose inner device can be replaced while nothing is in flight
 * (during a gate hold). Closing it closes the current inner device only; the
 * caller owns devices it switched away from.
 */
struct snap_top;
int snap_top_wrap(struct bdev *inner, struct bdev **out, struct snap_top **top,
                  struct hv_err *err);
struct bdev *snap_top_current(const struct snap_top *top);
/* -EBUSY with requests in flight; -EINVAL when sizes differ. */
int snap_top_switch(struct snap_top *top, struct bdev *inner);

/* ============================================================ requestor */

/*
 * The host side of a guest agent, either hvstor-vss (vss-agent/PROTOCOL.md)
 * or QEMU's qemu-ga (guest-fsfreeze-*), over a Unix socket. Calls block for at
 * most their timeout (they run on the control path, never the I/O path).
 */
enum snap_agent_kind { SNAP_AGENT_HVSTOR_VSS, SNAP_AGENT_QEMU_GA };

struct snap_agent;
struct snap_agent_info {
    char name[64];            /* "hvstor-vss 0.1.0", "qemu-ga 7.2.0" */
    uint32_t version;         /* protocol version (hvstor-vss) */
    uint32_t thaw_timeout_ms; /* agent's auto-thaw limit, 0 if unknown */
    unsigned filesystems;     /* what a freeze would cover, if known */
    bool is_frozen;
};

/* "hvstor-vss:PATH" or "qemu-ga:PATH" (as hvctl takes it). */
int snap_agent_parse_spec(const char *spec, enum snap_agent_kind *kind, char *path, size_t cap,
                          struct hv_err *err);
/* Connect and say hello (version check) / guest-sync. */
int snap_agent_open(enum snap_agent_kind kind, const char *socket_path, uint32_t timeout_ms,
                    struct snap_agent **out, struct hv_err *err);
/* The same, but while a call waits for the agent it runs `r`'s turns, so
 * that the guest's I/O keeps being served (a freeze in a guest whose disks
 * this reactor serves flushes to them). Call from outside any I/O path. */
int snap_agent_open_in(struct hv_reactor *r, enum snap_agent_kind kind, const char *socket_path,
                       uint32_t timeout_ms, struct snap_agent **out, struct hv_err *err);
void snap_agent_close(struct snap_agent *a);
int snap_agent_info(struct snap_agent *a, struct snap_agent_info *info, struct hv_err *err);
/* prepare (hvstor-vss writers; no-op for qemu-ga), freeze, thaw, abort. A thaw
 * that comes after the agent's own auto-thaw fails with -ETIMEDOUT and a
 * message saying "auto-thawed": the cut was not application-consistent. */
int snap_agent_prepare(struct snap_agent *a, struct hv_err *err);
int snap_agent_freeze(struct snap_agent *a, uint32_t thaw_timeout_ms, struct hv_err *err);
int snap_agent_thaw(struct snap_agent *a, struct hv_err *err);
int snap_agent_abort(struct snap_agent *a, struct hv_err *err);

/* Untrusted input, exposed for fuzzing: decode one qemu-ga reply line. Returns
 * 0 for {"return":...} (the value's integer in *ret_int when it is one, and
 * its type), -EPROTO for {"error":...} with the description in err, -EINVAL
 * for anything else. */
int snap_qga_decode(const char *line, size_t len, long long *ret_int, json_t **ret,
                    struct hv_err *err);

/* ========================================================== checkpoints */

#define SNAP_MAX_DISKS 256

/* One disk of a consistency group, as hv/ sets it up. */
struct snap_disk {
    int controller; /* for names and the manifest: c<N>-s<M> */
    int slot;
    struct bdev *top_bdev; /* the snap_top filter's bdev */
    struct snap_top *top;  /* NULL for a raw/pass-through disk */
    struct snap_cbt *cbt;  /* may be NULL (no incremental backups) */
    struct snap_cbw *cbw;  /* raw disks that can be backed up */
    char vhd_path[4096];   /* top image of the chain now ("" for raw) */
};

enum snap_consistency { SNAP_CRASH, SNAP_APP };

struct snap_group {
    struct hv_reactor *reactor;
    /* Called after a live merge switched disk `i` back to its parent and
     * before the child file is removed: record `new_top` as the disk's
     * image (the VM definition). May be NULL. */
    int (*persist_top)(void *arg, int i, const char *new_top);
    void *persist_arg;
    /* Called right after the gate is released at a cut (guest I/O resumed,
     * agent not yet thawed). May be NULL. */
    void (*on_cut)(void *arg);
    void *on_cut_arg;
    struct snap_gate *gate;
    struct snap_disk *disks;
    int disk_count;
    struct snap_agent *agent; /* NULL: crash-consistent */
    uint32_t thaw_timeout_ms; /* asked of the agent; 0: 10000 */
};

struct snap_checkpoint_disk {
    char child_path[4096];  /* the new top ("" for raw disks) */
    char parent_path[4096]; /* the checkpoint image (the old top) */
    uint8_t *cbt_bits;      /* taken at the cut (NULL without cbt) */
    bool cbt_reliable;
    char cbt_why[256];
};

struct snap_checkpoint_result {
    enum snap_consistency consistency;
    char why[512];    /* why not app-consistent, or "" */
    uint64_t hold_ns; /* guest I/O held (gate hold .. release) */
    uint64_t drain_ns;
    uint64_t frozen_ns; /* agent freeze until thaw returned */
    time_t created;     /* wall clock at the cut */
    int disk_count;
    struct snap_checkpoint_disk *disks; /* one per group disk, same order */
};

/*
 * Take a checkpoint. `name` is used in the children's file names
 * (<top dir>/<top stem>.<name>.vhd). Order: create and open the children
 * (slow work, on a worker thread, before any freeze) → agent prepare +
 * freeze → gate hold → switch every top to its child → take CBT bitmaps →
 * release → wait, guest running, for the requests sent before the cut →
 * agent thaw. The hold does not wait for requests in flight (each belongs
 * to the side of the cut it was sent on), except when raw disks start
 * copy-before-write (a backup): then it drains first. Without an agent, or
 * when `want_app` is false, or when the agent fails, the cut is
 * crash-consistent and `res->why` says why. `res->hold_ns` is what a guest
 * request could have waited; `res->drain_ns` the time until nothing sent
 * before the cut was in flight. On success every VHD disk's vhd_path is the
 * child's. Runs the reactor. Free with snap_checkpoint_result_free.
 */
int snap_checkpoint_create(struct snap_group *grp, const char *name, bool want_app,
                           struct snap_checkpoint_result *res, struct hv_err *err);
void snap_checkpoint_result_free(struct snap_checkpoint_result *res);

/*
 * Delete the newest checkpoint of disk `i` live: fold the child's blocks
 * into the parent while the guest keeps writing (the guest's writes are
 * mirrored into the parent meanwhile), then in a short gate hold copy the
 * last changes and switch the top back to the parent. The child file is
 * removed. Crash-safe: until the switch the chain child→parent reads the
 * same whatever was copied; the switch is recorded in `<child>.merged`
 * before I/O resumes (its content is written beforehand as
 * `<child>.merged.pending`; the hold only renames it). Runs the reactor.
 */
int snap_checkpoint_merge(struct snap_group *grp, int i, uint64_t *hold_ns, struct hv_err *err);

/*
 * After a crash during snap_checkpoint_merge: given the chain top the
 * caller had persisted, say which image is the top now (the parent when
 * `<top>.merged` exists: the child is then removed). Offline.
 */
int snap_checkpoint_recover(const char *top_path, char *real_top, size_t cap, struct hv_err *err);

/* Revert a disk (offline): discard everything written since the checkpoint
 * whose image is `checkpoint_path` by removing the images above it in the
 * chain whose top is `top_path`, then give the checkpoint a fresh empty
 * child (so it stays intact for another revert) whose path goes to
 * `new_top`: the image the disk opens from now on. */
int snap_checkpoint_apply(const char *top_path, const char *checkpoint_path, char *new_top,
                          size_t cap, struct hv_err *err);

/* ============================================================== backups */

struct snap_backup_options {
    const char *dir; /* destination */
    const char *vm_name;
    bool is_incremental; /* parent = the newest backup in dir */
    bool want_app;
    bool show_progress;
    uint64_t max_bytes_per_second; /* read rate limit, 0 = none (guest latency vs speed) */
    /* By default the backup reads and writes in 256 KiB pieces while the
     * guest has requests in flight (1 MiB otherwise), so that the guest's
     * latency stays close to what it is without a backup; true: always
     * 1 MiB (faster, for an idle VM or a deadline). */
    bool is_unpaced;
};

struct snap_backup_result {
    bool is_incremental; /* false when an incremental fell back to full */
    char why_full[256];
    enum snap_consistency consistency;
    char why_crash[512];
    uint64_t hold_ns;
    uint64_t bytes_read;    /* from the point-in-time chain */
    uint64_t bytes_written; /* data into the backup files */
    uint64_t bytes_changed; /* CBT chunks marked, in bytes */
    char manifest[4096];
    int sequence; /* 0 = full, 1.. = incrementals */
};

/*
 * Back up a running group into opt->dir: checkpoint, read every disk's
 * frozen view while the guest writes on, write `<seq>-c<N>-s<M>.vhd` per disk
 * (dynamic for full, differencing over the previous backup's file for
 * incremental) and `<seq>.manifest.json`, then merge the checkpoint children
 * back live. A journal (`backup.lock`) marks a run in progress: a later run
 * that finds one removes the partial files and says so in `*recovered`.
 */
int snap_backup_create(struct snap_group *grp, const struct snap_backup_options *opt,
                       struct snap_backup_result *res, char *recovered, size_t recovered_cap,
                       struct hv_err *err);

/* The number of the newest backup in `dir` (its `<seq>.manifest.json`), -1
 * when there is none; -errno (and -1) when dir cannot be listed. */
int snap_backup_newest(const char *dir, int *seq);

/* Rehash every block of every backup file against its manifest and run the
 * checks of `vhd check` on each file. 0 when everything matches. */
int snap_backup_verify(const char *dir, json_t **report, struct hv_err *err);

/* Write one flattened VHD per disk (`c<N>-s<M>.vhd`) of backup `sequence`
 * (-1: the newest) into `to_dir`. */
int snap_backup_restore(const char *dir, int sequence, const char *to_dir, struct hv_err *err);

#endif /* HVSTOR_SNAPSHOT_H */
