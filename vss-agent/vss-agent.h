/*
 * vss-agent — the guest half of application-consistent snapshots.
 *
 * `hvstor-vss` runs inside the guest. The host's requestor (snapshot/) talks
 * to it over a byte stream — a virtio-serial port, or a Unix socket in tests —
 * with line-delimited JSON, protocol version 1, described in PROTOCOL.md. On
 * `freeze` the agent calls the writer hooks (applications flush and hold),
 * then freezes every eligible filesystem with FIFREEZE, children before
 * parents; on `thaw` it undoes both in reverse. It never leaves a guest
 * frozen: it thaws on its own after a deadline, when the host connection
 * drops, and at start-up from the state file of a crashed predecessor.
 *
 * This header holds three things:
 *   1. the wire protocol, shared by the agent and the requestor: line
 *      framing (vss_linebuf), request and reply structures with one encoder
 *      and one validating decoder each, so both ends use one implementation;
 *   2. the mount table logic (which filesystems, in which order), exposed so
 *      that it can be tested on sample /proc/self/mountinfo text;
 *   3. the agent itself (vss_agent_*), transport-neutral: the caller feeds it
 *      lines and gives it a function to send replies with.
 *
 * Everything is single-threaded, driven by common's reactor.
 */
#ifndef HVSTOR_VSS_AGENT_H
#define HVSTOR_VSS_AGENT_H

#include "common.h"

/* ============================================================ protocol */

#define VSS_PROTOCOL_VERSION 1          /* the only version so far */
#define VSS_MAX_LINE_BYTES (64 * 1024)  /* a line, newline included, is at most this */
#define VSS_MAX_ID ((1ull << 53) - 1)   /* ids survive a trip through a double */
#define VSS_DEFAULT_DEVICE "/dev/virtio-ports/org.hvstor.vss.0"
#define VSS_AGENT_NAME "hvstor-vss"

enum vss_cmd {
    VSS_CMD_HELLO,
    VSS_CMD_PREPARE,
    VSS_CMD_FREEZE,
    VSS_CMD_THAW,
    VSS_CMD_ABORT,
    VSS_CMD_STATUS,
    VSS_CMD_COUNT,
    VSS_CMD_NONE = -1,                  /* reply to a request whose command was unreadable */
};

/* Error codes carried in a failed reply as strings ("bad-request", ...). */
enum vss_error {
    VSS_ERR_NONE,
    VSS_ERR_PARSE,                      /* not JSON, or not one JSON object */
    VSS_ERR_TOO_LONG,                   /* line longer than VSS_MAX_LINE_BYTES */
    VSS_ERR_BAD_REQUEST,                /* a field missing, of the wrong type or out of range */
    VSS_ERR_UNKNOWN_COMMAND,
    VSS_ERR_UNSUPPORTED_VERSION,        /* hello: no version in common */
    VSS_ERR_BUSY,                       /* another command is running / another host connected */
    VSS_ERR_BAD_STATE,                  /* command not valid in the current state */
    VSS_ERR_WRITER_FAILED,              /* a writer hook exited non-zero: freeze rolled back */
    VSS_ERR_WRITER_TIMEOUT,             /* a writer hook overran its time limit: rolled back */
    VSS_ERR_FREEZE_FAILED,              /* FIFREEZE failed (or no such mount): rolled back */
    VSS_ERR_THAW_FAILED,                /* FITHAW failed on some filesystem */
    VSS_ERR_AUTO_THAWED,                /* thaw came after the agent had thawed on its own */
    VSS_ERR_ABORTED,                    /* the command was cancelled by abort/deadline/hang-up */
    VSS_ERR_INTERNAL,
    VSS_ERR_COUNT,
};

enum vss_state {
    VSS_STATE_IDLE,                     /* nothing prepared, nothing frozen */
    VSS_STATE_PREPARING,
    VSS_STATE_PREPARED,                 /* writers prepared, nothing frozen */
    VSS_STATE_FREEZING,
    VSS_STATE_FROZEN,                   /* writers and filesystems frozen */
    VSS_STATE_THAWING,                  /* thaw, abort, rollback or auto-thaw running */
    VSS_STATE_COUNT,
};

/* Why the agent thawed without being asked (status, and the auto-thawed error). */
enum vss_auto_thaw {
    VSS_AUTO_THAW_NONE,
    VSS_AUTO_THAW_TIMEOUT,              /* no thaw within the deadline */
    VSS_AUTO_THAW_HANGUP,               /* the host connection dropped */
    VSS_AUTO_THAW_STARTUP,              /* a crashed predecessor's freeze, undone at start */
    VSS_AUTO_THAW_SHUTDOWN,             /* the agent was told to stop (SIGTERM) */
    VSS_AUTO_THAW_COUNT,
};

const char *vss_cmd_name(enum vss_cmd cmd);             /* "freeze"; "?" if out of range */
const char *vss_error_name(enum vss_error code);        /* "writer-failed" */
const char *vss_state_name(enum vss_state state);       /* "frozen" */
const char *vss_auto_thaw_name(enum vss_auto_thaw why); /* "timeout"; "none" */
/* Reverse lookups: the value, or -1 when `name` is not one of ours. */
int vss_cmd_from_name(const char *name);
int vss_error_from_name(const char *name);
int vss_state_from_name(const char *name);
int vss_auto_thaw_from_name(const char *name);

/*
 * A request, host to guest: {"id":N,"cmd":"freeze",...}. `id` is chosen by
 * the requestor (0..VSS_MAX_ID) and echoed in the reply. Fields that a
 * command does not use are ignored by the encoder and must be absent or
 * well-formed for the decoder.
 */
struct vss_request {
    uint64_t id;
    enum vss_cmd cmd;
    /* hello: versions the requestor speaks, bit v for version v (1..31). */
    uint32_t versions_mask;
    /* hello: who is asking ("hvstord 0.1.0"), for the guest's log; may be "". */
    char requestor[128];
    /* freeze: thaw on your own after this long (1..agent's limit); 0 = agent's limit. */
    uint32_t thaw_timeout_ms;
};

/* One filesystem as the agent reports it. */
struct vss_fs {
    char *mount;                        /* mount point */
    char *type;                         /* "ext4" */
    char *device;                       /* "major:minor" */
};

/*
 * A reply, guest to host: {"id":N,"ok":true,"cmd":"freeze","state":"frozen",...}.
 * Every reply carries id (null when the request's id could not be read), ok,
 * cmd (null likewise), state (after the command) and timings. Lists are
 * heap-owned by the reply: vss_reply_clear() frees them.
 */
struct vss_reply {
    bool has_id;
    uint64_t id;
    enum vss_cmd cmd;                   /* VSS_CMD_NONE when unknown */
    bool is_ok;
    enum vss_error error;               /* when !is_ok */
    char message[1024];                 /* when !is_ok: one sentence for a person */
    enum vss_state state;

    /* hello */
    uint32_t version;                   /* chosen version */
    uint32_t versions_mask;             /* versions the agent speaks */
    char agent[64];                     /* "hvstor-vss 0.1.0" */
    uint32_t thaw_timeout_ms;           /* the agent's auto-thaw limit */
    uint32_t writer_timeout_ms;         /* limit per writer call */

    /* hello: writers and the filesystems a freeze would cover, in freeze order */
    char **writers;
    size_t writer_count;
    struct vss_fs *filesystems;
    size_t filesystem_count;

    /* freeze, thaw, abort, status: filesystems frozen now (freeze order) */
    char **frozen;
    size_t frozen_count;

    /* timings in microseconds; 0 where a phase did not run */
    uint64_t total_us;                  /* the whole command */
    uint64_t writers_us;                /* writer hooks */
    uint64_t filesystems_us;            /* FIFREEZE / FITHAW calls */
    uint64_t frozen_us;                 /* thaw/abort/status: how long filesystems were frozen */
    uint64_t thaw_in_ms;                /* freeze/status: time left before the auto-thaw */
    enum vss_auto_thaw last_auto_thaw;  /* status: the last unrequested thaw */

    /* problems that did not fail the command (a thaw hook that failed, ...) */
    char **warnings;
    size_t warning_count;
};

/* Encode as one line ending in '\n' (malloc'ed, *len without the NUL). 0 or -ENOMEM/-EINVAL. */
int vss_request_encode(const struct vss_request *req, char **line, size_t *len);
int vss_reply_encode(const struct vss_reply *rep, char **line, size_t *len);

/*
 * Decode and validate one line (without its '\n'; a trailing '\r' is
 * tolerated). On failure returns -EINVAL (or -E2BIG for an over-long line)
 * and sets *code and `err`; for a request, *has_id/req->id tell whether the
 * id could still be read, so the error reply can carry it.
 */
int vss_request_decode(const char *line, size_t len, struct vss_request *req, bool *has_id,
                       enum vss_error *code, struct hv_err *err);
/* A reply: the requestor's view of the guest's (untrusted) output. */
int vss_reply_decode(const char *line, size_t len, struct vss_reply *rep, struct hv_err *err);

void vss_reply_init(struct vss_reply *rep);
void vss_reply_clear(struct vss_reply *rep);      /* free the lists, then init */
/* Append to a reply's lists (copies the strings). 0 or -ENOMEM. */
int vss_reply_add_writer(struct vss_reply *rep, const char *name);
int vss_reply_add_filesystem(struct vss_reply *rep, const char *mount, const char *type,
                             const char *device);
int vss_reply_add_frozen(struct vss_reply *rep, const char *mount);
int vss_reply_add_warning(struct vss_reply *rep, const char *fmt, ...) HV_PRINTF(2, 3);
/* Fill the failure fields: is_ok = false, error, message. */
void vss_reply_fail(struct vss_reply *rep, enum vss_error code, const char *fmt, ...)
    HV_PRINTF(3, 4);

/*
 * Line framing for either end: read(2) straight into the buffer, then take
 * complete lines out. A line longer than the buffer is reported once as
 * over-long and discarded up to its newline, so a hostile peer can neither
 * grow memory nor desynchronise the stream.
 */
struct vss_linebuf {
    char *buf;
    size_t cap;
    size_t start;                       /* first unconsumed byte */
    size_t end;                         /* one past the last byte read */
    size_t scanned;                     /* bytes from start known to hold no '\n' */
    bool is_discarding;                 /* inside an over-long line */
};
int vss_linebuf_init(struct vss_linebuf *lb, size_t cap);   /* cap: VSS_MAX_LINE_BYTES */
void vss_linebuf_free(struct vss_linebuf *lb);
/* Room for the next read: a pointer and how many bytes fit (never 0). */
char *vss_linebuf_space(struct vss_linebuf *lb, size_t *room);
void vss_linebuf_commit(struct vss_linebuf *lb, size_t bytes);
/*
 * Next complete line: 1 with the line and its length (no '\n'; valid until the next
 * vss_linebuf_space), or 1 with *is_overlong set (and *len 0) once per
 * over-long line; 0 when no complete line is buffered.
 */
int vss_linebuf_next(struct vss_linebuf *lb, const char **line, size_t *len, bool *is_overlong);

/* ========================================================= filesystems */

/* One line of /proc/self/mountinfo, decoded (octal escapes undone). */
struct vss_mount {
    int mount_id;
    int parent_id;
    unsigned major, minor;
    char *root;                         /* path inside the filesystem that is mounted */
    char *mount_point;
    char *type;
    char *source;
    bool is_read_only;                  /* per-mount "ro" or superblock "ro" */
    bool is_hidden;                     /* a later mount sits on the same mount point */
};

struct vss_mount_table {
    struct vss_mount *mounts;
    size_t count;
};

/* Parse mountinfo text. -EINVAL with err naming `what` and the line for bad input. */
int vss_mounts_parse(const char *text, size_t len, const char *what,
                     struct vss_mount_table *table, struct hv_err *err);
/* Read and parse a file (normally /proc/self/mountinfo). */
int vss_mounts_read(const char *path, struct vss_mount_table *table, struct hv_err *err);
void vss_mounts_free(struct vss_mount_table *table);

/* Pseudo (proc, tmpfs, overlay, ...) and network (nfs, cifs, ...) filesystem types
 * that are never frozen. */
bool vss_fs_type_is_pseudo(const char *type);
bool vss_fs_type_is_network(const char *type);

/*
 * Which mounts to freeze, in freeze order (children before parents; thaw in
 * reverse). Skips read-only, pseudo and network filesystems, hidden mounts
 * and duplicates of one superblock (bind mounts: FIFREEZE is per
 * superblock). With `only` (count > 0) just those mount points, each of which
 * must be an eligible mount point exactly: a path inside some other
 * filesystem is an error, never a reason to freeze its parent. Fills `order`
 * with indexes into table->mounts (caller allocates table->count entries).
 */
int vss_mounts_select(const struct vss_mount_table *table, const char *const *only,
                      size_t only_count, size_t *order, size_t *order_count,
                      struct hv_err *err);

/*
 * A constraint the mount table cannot show: mount `first` must freeze
 * before mount `then` (indexes into the table). The agent adds one for each
 * loop-mounted filesystem whose image file lives on another selected
 * filesystem: freezing the image's filesystem first would make the loop
 * filesystem's FIFREEZE wait forever on its own sync.
 */
struct vss_mount_dep {
    size_t first;
    size_t then;
};

/*
 * Re-order `order` (from vss_mounts_select) so that every nested mount still
 * comes before its parents and every dependency holds, keeping the given
 * order wherever the constraints leave a choice. -ELOOP (order unchanged)
 * when the constraints contradict each other.
 */
int vss_mounts_order_deps(const struct vss_mount_table *table, size_t *order, size_t count,
                          const struct vss_mount_dep *deps, size_t dep_count);

/* =============================================================== agent */

struct vss_agent_config {
    const char *writers_dir;            /* NULL: /etc/hvstor-vss/writers.d */
    const char *state_path;             /* NULL: /run/hvstor-vss/frozen */
    const char *mountinfo_path;         /* NULL: /proc/self/mountinfo */
    const char *const *only_fs;         /* restrict to these mount points (tests!) */
    size_t only_fs_count;
    bool has_no_filesystems;            /* freeze writers only (fuzzing, containers) */
    bool skip_startup_thaw;             /* inspection only (--list): leave the state file */
    uint32_t thaw_timeout_ms;           /* 0: 10000 */
    uint32_t writer_timeout_ms;         /* 0: 30000 */
};

struct vss_agent;
/* Sends one encoded line (with '\n') to the connected host. */
typedef void (*vss_send_fn)(void *arg, const char *line, size_t len);

/* Create the agent; first thaws whatever the state file says a predecessor froze. */
int vss_agent_create(struct hv_reactor *r, const struct vss_agent_config *cfg,
                     struct vss_agent **out, struct hv_err *err);
/* Everything must be idle (see vss_agent_shutdown). */
void vss_agent_destroy(struct vss_agent *a);
/* A host connected: replies go to send(arg, ...) from now on. */
void vss_agent_connected(struct vss_agent *a, vss_send_fn send, void *arg);
/* The host connection dropped: nothing more is sent; anything frozen is thawed. */
void vss_agent_disconnected(struct vss_agent *a);
/* One line from the host (without '\n'), or an over-long one. Never fails. */
void vss_agent_handle_line(struct vss_agent *a, const char *line, size_t len);
void vss_agent_handle_overlong(struct vss_agent *a);
/* Thaw and abort whatever is in progress; `done` runs once the agent is idle. */
void vss_agent_shutdown(struct vss_agent *a, hv_call_cb done, void *arg);
bool vss_agent_is_idle(const struct vss_agent *a);

/*
 * Thaw what the state file lists (checking each is still the same
 * filesystem), plus every mount point in `extra`; remove the state file.
 * Used at start-up and by `hvstor-vss --thaw-now`. Returns the number of
 * filesystems thawed, or a negative errno.
 */
int vss_thaw_from_state(const char *state_path, const char *const *extra, size_t extra_count,
                        struct hv_err *err);

#endif /* HVSTOR_VSS_AGENT_H */
