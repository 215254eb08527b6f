/*
 * requestor.c — the host side of the guest agent: hvstor-vss (its own
 * protocol, encoded and decoded by vss-agent's codec) or QEMU's qemu-ga
 * (QMP-like JSON, guest-fsfreeze-*), behind one interface.
 *
 * Calls are blocking with a deadline (poll on the socket): they run on the
 * control path of a checkpoint, before and after the hold, never while
 * guest I/O waits. Everything the guest sends is untrusted: lines are
 * bounded by vss_linebuf, replies are decoded by validating decoders, and an
 * answer to some other request (a stale id) is skipped, not believed.
 */
#include "snapshot.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "vss-agent.h"

#define QGA_MAX_LINE (64 * 1024)

struct snap_agent {
    enum snap_agent_kind kind;
    char path[108];
    int fd;
    uint32_t timeout_ms;
    uint64_t next_id;
    struct vss_linebuf lb;
    struct snap_agent_info info;
    struct hv_reactor *reactor; /* turned while waiting (snap_agent_open_in) */
};

int snap_agent_parse_spec(const char *spec, enum snap_agent_kind *kind, char *path, size_t cap,
                          struct hv_err *err)
{
    const char *rest;
    if (strncmp(spec, "hvstor-vss:", 11) == 0) {
        *kind = SNAP_AGENT_HVSTOR_VSS;
        rest = spec + 11;
    } else if (strncmp(spec, "qemu-ga:", 8) == 0) {
        *kind = SNAP_AGENT_QEMU_GA;
        rest = spec + 8;
    } else {
        return hv_err_set(err, -EINVAL, "agent '%s': expected hvstor-vss:PATH or qemu-ga:PATH",
                          spec);
    }
    if (!*rest || strlen(rest) >= HV_MIN(cap, sizeof(((struct sockaddr_un *)0)->sun_path)))
        return hv_err_set(err, -EINVAL, "agent '%s': the socket path is empty or too long", spec);
    snprintf(path, cap, "%s", rest);
    return 0;
}

static uint64_t deadline_after(uint32_t ms)
{
    return hv_now_ns() + (uint64_t)ms * 1000000ull;
}

/* Wait for the socket. With a reactor, its turns run meanwhile (a couple of
 * milliseconds each): the guest's I/O keeps being served, which a freeze
 * inside the guest needs when its disks are ours. */
static int wait_fd(struct snap_agent *a, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = hv_now_ns();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = a->fd, .events = events};
        int wait_ms = (int)HV_DIV_ROUND_UP(deadline - now, 1000000ull);
        int n = poll(&p, 1, a->reactor ? 0 : wait_ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n > 0)
            return 0;
        if (a->reactor)
            hv_reactor_run_once(a->reactor, HV_MIN(wait_ms, 2));
    }
}

static int send_all(struct snap_agent *a, const char *buf, size_t len, uint64_t deadline,
                    struct hv_err *err)
{
    while (len) {
        ssize_t n = send(a->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            int ret = wait_fd(a, POLLOUT, deadline);
            if (ret < 0)
                return hv_err_set(err, ret, "agent %s: send: %s", a->path, strerror(-ret));
            continue;
        }
        if (n < 0)
            return hv_err_errno(err, a->path, "agent: send");
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Next complete line from the agent, within the deadline. Over-long lines
 * are reported as -EMSGSIZE: a well-behaved agent never sends one. */
static int recv_line(struct snap_agent *a, const char **line, size_t *len, uint64_t deadline,
                     struct hv_err *err)
{
    for (;;) {
        bool is_overlong = false;
        if (vss_linebuf_next(&a->lb, line, len, &is_overlong) == 1) {
            if (is_overlong)
                return hv_err_set(err, -EMSGSIZE,
                                  "agent %s: sent a line longer than %d "
                                  "bytes",
                                  a->path, VSS_MAX_LINE_BYTES);
            return 0;
        }
        int ret = wait_fd(a, POLLIN, deadline);
        if (ret < 0)
            return hv_err_set(err, ret, "agent %s: no answer within %u ms", a->path,
                              a->timeout_ms);
        size_t room;
        char *space = vss_linebuf_space(&a->lb, &room);
        ssize_t n = recv(a->fd, space, room, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            return hv_err_errno(err, a->path, "agent: receive");
        if (n == 0)
            return hv_err_set(err, -ECONNRESET, "agent %s: the agent closed the connection",
                              a->path);
        vss_linebuf_commit(&a->lb, (size_t)n);
    }
}

/* ---------------------------------------------------------- hvstor-vss */

static int map_vss_error(enum vss_error code)
{
    switch (code) {
    case VSS_ERR_AUTO_THAWED:
        return -ETIMEDOUT;
    case VSS_ERR_BUSY:
        return -EBUSY;
    case VSS_ERR_UNSUPPORTED_VERSION:
        return -EPROTONOSUPPORT;
    case VSS_ERR_BAD_STATE:
        return -EINVAL;
    case VSS_ERR_ABORTED:
        return -ECANCELED;
    default:
        return -EIO;
    }
}

static int vss_call(struct snap_agent *a, struct vss_request *req, struct vss_reply *rep,
                    uint32_t timeout_ms, struct hv_err *err)
{
    char *line = NULL;
    size_t len;
    req->id = a->next_id++;
    int ret = vss_request_encode(req, &line, &len);
    if (ret < 0)
        return hv_err_set(err, ret, "agent %s: cannot encode %s", a->path, vss_cmd_name(req->cmd));
    uint64_t deadline = deadline_after(timeout_ms);
    ret = send_all(a, line, len, deadline, err);
    free(line);
    if (ret < 0)
        return ret;
    for (;;) {
        const char *l;
        size_t n;
        ret = recv_line(a, &l, &n, deadline, err);
        if (ret < 0)
            return ret;
        struct hv_err derr = {0};
        vss_reply_clear(rep);
        if (vss_reply_decode(l, n, rep, &derr) < 0)
            return hv_err_set(err, -EPROTO, "agent %s: malformed reply to %s: %s", a->path,
                              vss_cmd_name(req->cmd), hv_err_msg(&derr, -EPROTO));
        if (!rep->has_id || rep->id != req->id)
            continue; /* an answer to an earlier, timed-out request */
        if (!rep->is_ok)
            return hv_err_set(err, map_vss_error(rep->error), "agent %s: %s failed: %s: %s",
                              a->path, vss_cmd_name(req->cmd), vss_error_name(rep->error),
                              rep->message);
        return 0;
    }
}

static int vss_simple(struct snap_agent *a, enum vss_cmd cmd, uint32_t thaw_ms,
                      uint32_t timeout_ms, struct hv_err *err)
{
    struct vss_request req = {.cmd = cmd, .thaw_timeout_ms = thaw_ms};
    struct vss_reply rep;
    vss_reply_init(&rep);
    int ret = vss_call(a, &req, &rep, timeout_ms, err);
    if (ret == 0)
        a->info.is_frozen = rep.state == VSS_STATE_FROZEN;
    vss_reply_clear(&rep);
    return ret;
}

static int vss_hello(struct snap_agent *a, struct hv_err *err)
{
    struct vss_request req = {.cmd = VSS_CMD_HELLO, .versions_mask = 1u << 1};
    snprintf(req.requestor, sizeof(req.requestor), "hvstord snapshot");
    struct vss_reply rep;
    vss_reply_init(&rep);
    int ret = vss_call(a, &req, &rep, a->timeout_ms, err);
    if (ret == 0 && rep.version != VSS_PROTOCOL_VERSION)
        ret = hv_err_set(err, -EPROTONOSUPPORT,
                         "agent %s: speaks protocol version %u, we "
                         "speak %u",
                         a->path, rep.version, VSS_PROTOCOL_VERSION);
    if (ret == 0) {
        snprintf(a->info.name, sizeof(a->info.name), "%s", rep.agent);
        a->info.version = rep.version;
        a->info.thaw_timeout_ms = rep.thaw_timeout_ms;
        a->info.filesystems = (unsigned)rep.filesystem_count;
        a->info.is_frozen = rep.state == VSS_STATE_FROZEN;
    }
    vss_reply_clear(&rep);
    return ret;
}

/* ------------------------------------------------------------- qemu-ga */

int snap_qga_decode(const char *line, size_t len, long long *ret_int, json_t **ret,
                    struct hv_err *err)
{
    /* guest-sync-delimited puts 0xFF in front of its answer; skip it and
     * any whitespace. */
    while (len && ((unsigned char)*line == 0xFF || *line == ' ' || *line == '\r')) {
        line++;
        len--;
    }
    while (len && (line[len - 1] == '\r' || line[len - 1] == ' '))
        len--;
    json_error_t je;
    json_t *obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    if (!obj || !json_is_object(obj)) {
        json_decref(obj);
        return hv_err_set(err, -EINVAL, "qemu-ga reply is not a JSON object");
    }
    json_t *r = json_object_get(obj, "return");
    json_t *e = json_object_get(obj, "error");
    int rc;
    if (r && !e) {
        if (ret_int)
            *ret_int = json_is_integer(r) ? json_integer_value(r) : -1;
        if (ret)
            *ret = json_incref(r);
        rc = 0;
    } else if (e && !r && json_is_object(e)) {
        const char *desc = json_string_value(json_object_get(e, "desc"));
        const char *cls = json_string_value(json_object_get(e, "class"));
        rc = hv_err_set(err, -EPROTO, "qemu-ga: %s: %.300s", cls ? cls : "error",
                        desc ? desc : "(no description)");
    } else {
        rc = hv_err_set(err, -EINVAL,
                        "qemu-ga reply has neither a return value nor an "
                        "error object");
    }
    json_decref(obj);
    return rc;
}

static int qga_call(struct snap_agent *a, const char *cmd, json_t *args, uint32_t timeout_ms,
                    long long *ret_int, json_t **ret, struct hv_err *err)
{
    json_t *req = json_pack("{s:s}", "execute", cmd);
    if (args)
        json_object_set(req, "arguments", args);
    char *text = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!text)
        return hv_err_set(err, -ENOMEM, "agent %s: out of memory", a->path);
    size_t tl = strlen(text);
    char *line = realloc(text, tl + 2);
    if (!line) {
        free(text);
        return hv_err_set(err, -ENOMEM, "agent %s: out of memory", a->path);
    }
    line[tl] = '\n';
    line[tl + 1] = 0;
    uint64_t deadline = deadline_after(timeout_ms);
    int ret_code = send_all(a, line, tl + 1, deadline, err);
    free(line);
    if (ret_code < 0)
        return ret_code;
    const char *l;
    size_t n;
    ret_code = recv_line(a, &l, &n, deadline, err);
    if (ret_code < 0)
        return ret_code;
    struct hv_err derr = {0};
    ret_code = snap_qga_decode(l, n, ret_int, ret, &derr);
    if (ret_code < 0)
        return hv_err_set(err, ret_code, "agent %s: %s: %s", a->path, cmd,
                          hv_err_msg(&derr, ret_code));
    return 0;
}

/* guest-sync-delimited: qemu-ga answers with 0xFF then {"return": id}; any
 * stale output before it (answers to requests that timed out) is skipped. */
static int qga_sync(struct snap_agent *a, struct hv_err *err)
{
    long long id = (long long)(a->next_id++ & 0x7fffffff);
    char line[128];
    int len = snprintf(line, sizeof(line),
                       "\xff{\"execute\":\"guest-sync-delimited\","
                       "\"arguments\":{\"id\":%lld}}\n",
                       id);
    uint64_t deadline = deadline_after(a->timeout_ms);
    int ret = send_all(a, line, (size_t)len, deadline, err);
    if (ret < 0)
        return ret;
    for (;;) {
        const char *l;
        size_t n;
        ret = recv_line(a, &l, &n, deadline, err);
        if (ret < 0)
            return ret;
        long long got = -1;
        struct hv_err derr = {0};
        if (snap_qga_decode(l, n, &got, NULL, &derr) == 0 && got == id)
            return 0;
    }
}

static int qga_hello(struct snap_agent *a, struct hv_err *err)
{
    int ret = qga_sync(a, err);
    if (ret < 0)
        return ret;
    json_t *info = NULL;
    ret = qga_call(a, "guest-info", NULL, a->timeout_ms, NULL, &info, err);
    if (ret < 0)
        return ret;
    const char *ver = json_string_value(json_object_get(info, "version"));
    snprintf(a->info.name, sizeof(a->info.name), "qemu-ga %.40s", ver ? ver : "?");
    json_decref(info);
    json_t *st = NULL;
    ret = qga_call(a, "guest-fsfreeze-status", NULL, a->timeout_ms, NULL, &st, err);
    if (ret == 0)
        a->info.is_frozen = json_is_string(st) && !strcmp(json_string_value(st), "frozen");
    json_decref(st);
    return ret;
}

/* ------------------------------------------------------------- common */

int snap_agent_open(enum snap_agent_kind kind, const char *socket_path, uint32_t timeout_ms,
                    struct snap_agent **out, struct hv_err *err)
{
    return snap_agent_open_in(NULL, kind, socket_path, timeout_ms, out, err);
}

int snap_agent_open_in(struct hv_reactor *r, enum snap_agent_kind kind, const char *socket_path,
                       uint32_t timeout_ms, struct snap_agent **out, struct hv_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof(sa.sun_path))
        return hv_err_set(err, -ENAMETOOLONG, "agent %s: socket path too long", socket_path);
    struct snap_agent *a = calloc(1, sizeof(*a));
    if (!a)
        return hv_err_set(err, -ENOMEM, "agent %s: out of memory", socket_path);
    a->kind = kind;
    a->reactor = r;
    a->timeout_ms = timeout_ms ? timeout_ms : 5000;
    a->next_id = 1;
    snprintf(a->path, sizeof(a->path), "%s", socket_path);
    int ret =
        vss_linebuf_init(&a->lb, kind == SNAP_AGENT_QEMU_GA ? QGA_MAX_LINE : VSS_MAX_LINE_BYTES);
    if (ret < 0) {
        free(a);
        return hv_err_set(err, ret, "agent %s: out of memory", socket_path);
    }
    a->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (a->fd < 0) {
        ret = hv_err_errno(err, socket_path, "agent: socket");
        goto fail;
    }
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", socket_path);
    if (connect(a->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        ret = hv_err_errno(err, socket_path, "agent: connect");
        goto fail;
    }
    ret = kind == SNAP_AGENT_QEMU_GA ? qga_hello(a, err) : vss_hello(a, err);
    if (ret < 0)
        goto fail;
    *out = a;
    return 0;
fail:
    snap_agent_close(a);
    return ret;
}

void snap_agent_close(struct snap_agent *a)
{
    if (!a)
        return;
    if (a->fd >= 0)
        close(a->fd);
    vss_linebuf_free(&a->lb);
    free(a);
}

int snap_agent_info(struct snap_agent *a, struct snap_agent_info *info, struct hv_err *err)
{
    int ret;
    if (a->kind == SNAP_AGENT_QEMU_GA) {
        json_t *st = NULL;
        ret = qga_call(a, "guest-fsfreeze-status", NULL, a->timeout_ms, NULL, &st, err);
        if (ret == 0)
            a->info.is_frozen = json_is_string(st) && !strcmp(json_string_value(st), "frozen");
        json_decref(st);
    } else {
        ret = vss_simple(a, VSS_CMD_STATUS, 0, a->timeout_ms, err);
    }
    if (ret == 0)
        *info = a->info;
    return ret;
}

int snap_agent_prepare(struct snap_agent *a, struct hv_err *err)
{
    if (a->kind == SNAP_AGENT_QEMU_GA)
        return 0; /* qemu-ga has no writers to prepare */
    /* Writers may take their whole time limit: allow it. */
    return vss_simple(a, VSS_CMD_PREPARE, 0, a->timeout_ms + 30000, err);
}

int snap_agent_freeze(struct snap_agent *a, uint32_t thaw_timeout_ms, struct hv_err *err)
{
    if (a->kind == SNAP_AGENT_QEMU_GA) {
        long long n = -1;
        int ret = qga_call(a, "guest-fsfreeze-freeze", NULL, a->timeout_ms + 30000, &n, NULL, err);
        if (ret == 0)
            a->info.is_frozen = true;
        return ret;
    }
    return vss_simple(a, VSS_CMD_FREEZE, thaw_timeout_ms, a->timeout_ms + 30000, err);
}

int snap_agent_thaw(struct snap_agent *a, struct hv_err *err)
{
    if (a->kind == SNAP_AGENT_QEMU_GA) {
        long long n = -1;
        int ret = qga_call(a, "guest-fsfreeze-thaw", NULL, a->timeout_ms, &n, NULL, err);
        if (ret == 0)
            a->info.is_frozen = false;
        return ret;
    }
    return vss_simple(a, VSS_CMD_THAW, 0, a->timeout_ms, err);
}

int snap_agent_abort(struct snap_agent *a, struct hv_err *err)
{
    if (a->kind == SNAP_AGENT_QEMU_GA) {
        /* Nothing frozen is not an error for an abort. */
        json_t *st = NULL;
        int ret = qga_call(a, "guest-fsfreeze-status", NULL, a->timeout_ms, NULL, &st, err);
        bool is_frozen =
            ret == 0 && json_is_string(st) && !strcmp(json_string_value(st), "frozen");
        json_decref(st);
        if (ret < 0 || !is_frozen)
            return ret;
        return snap_agent_thaw(a, err);
    }
    return vss_simple(a, VSS_CMD_ABORT, 0, a->timeout_ms + 30000, err);
}
