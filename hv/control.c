/*
 * The control channel: newline-delimited JSON over a Unix stream socket.
 *
 * One request per line, one reply per line, in order. The server lives in
 * the daemon's reactor with non-blocking sockets, so a slow or stuck hvctl
 * never holds up guest I/O; requests themselves run to completion in the
 * reactor thread (opening an image reads its metadata synchronously, which
 * is a control-path cost, not an I/O-path one). A long request (a backup)
 * runs reactor turns while it waits, so guest I/O and other connections go
 * on; its own connection is taken out of the reactor meanwhile, so that
 * nothing re-enters it (more input, the peer hanging up) until it is done.
 * A request that must not start inside those turns (daemon.c says which)
 * is parked: its connection stays out of the reactor, the line stays in
 * its buffer, and it is tried again when nothing runs or a hold ends.
 * The socket is 0600 in the private state directory: whoever can reach it
 * administers the VMs.
 */
#include "hv_internal.h"

#include <errno.h>
#include <poll.h>
#include <sys/epoll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CONTROL_MAX_REQUEST (1024 * 1024)

struct conn {
    struct hv_control *ctl;
    int fd;
    struct hv_watch *watch;
    char *in;
    size_t in_len;
    size_t in_cap;
    char *out;
    size_t out_len;
    size_t out_pos;
    bool is_closing;                    /* peer done: close once `out` is sent */
    enum hv_wait parked;                /* HV_WAIT_NO: not parked */
    bool is_tried;                      /* by this retry_parked() round */
    struct conn *next;
};

struct hv_control {
    struct hv_reactor *reactor;
    struct hv_daemon *daemon;
    int fd;
    struct hv_watch *watch;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct conn *conns;
    struct hv_timer retry_timer;        /* parked requests are tried again */
};

/* How often a request parked behind a hold of guest I/O looks again. */
#define PARK_RETRY_MS 5

static void conn_close(struct conn *c)
{
    struct hv_control *ctl = c->ctl;
    for (struct conn **pp = &ctl->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    hv_reactor_del_fd(ctl->reactor, c->watch);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

static int queue_reply(struct conn *c, const json_t *reply)
{
    char *text = json_dumps(reply, JSON_COMPACT);
    size_t len;
    char *grown;

    if (!text)
        return -ENOMEM;
    len = strlen(text);
    grown = realloc(c->out, c->out_len + len + 1);
    if (!grown) {
        free(text);
        return -ENOMEM;
    }
    c->out = grown;
    memcpy(c->out + c->out_len, text, len);
    c->out[c->out_len + len] = '\n';
    c->out_len += len + 1;
    free(text);
    return 0;
}

/* False: the request must wait (c->parked says for what); nothing done. */
static bool handle_line(struct conn *c, const char *line, size_t len)
{
    json_error_t jerr;
    json_t *req = json_loadb(line, len, 0, &jerr);
    json_t *reply;

    if (req && (c->parked = hv_daemon_must_wait(c->ctl->daemon, req)) != HV_WAIT_NO) {
        json_decref(req);
        return false;
    }
    if (!req) {
        struct hv_err err = {0};
        hv_err_set(&err, -EINVAL, "request is not JSON: %s (column %d)", jerr.text,
                   jerr.column);
        reply = json_pack("{s:b, s:s, s:i}", "ok", 0, "error", err.msg, "errno", EINVAL);
    } else {
        reply = hv_daemon_request(c->ctl->daemon, req);
        json_decref(req);
    }
    if (!reply || queue_reply(c, reply) < 0)
        c->is_closing = true;
    json_decref(reply);
    return true;
}

static void conn_flush(struct conn *c)
{
    while (c->out_pos < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_pos, c->out_len - c->out_pos, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            c->is_closing = true;
            c->out_pos = c->out_len;
            break;
        }
        c->out_pos += (size_t)n;
    }
    if (c->out_pos == c->out_len)
        c->out_pos = c->out_len = 0;
}

static void conn_run_lines(struct conn *c);
static void conn_after(struct conn *c);
static void retry_parked(void *arg);

/* Sooner wins: a kick is not put off by a slower tick. */
static void arm_retry(struct hv_control *ctl, uint64_t ms)
{
    if (ctl->retry_timer.is_armed && ctl->retry_timer.deadline_ns <= hv_now_ns() + ms * 1000000)
        return;
    hv_timer_arm(ctl->reactor, &ctl->retry_timer, ms, retry_parked, ctl);
}

/* Parked requests, oldest connection last in the list: each is tried once
 * per round; one that runs may take long (its turns run this timer's
 * reactor), so the list is walked again from the start after each. */
static void retry_parked(void *arg)
{
    struct hv_control *ctl = arg;
    enum hv_wait still = HV_WAIT_NO;

    for (;;) {
        struct conn *next = NULL;
        for (struct conn *c = ctl->conns; c; c = c->next)
            if (c->parked != HV_WAIT_NO && !c->is_tried)
                next = c;
        if (!next)
            break;
        next->is_tried = true;
        next->parked = HV_WAIT_NO;
        conn_run_lines(next);
    }
    for (struct conn *c = ctl->conns; c; c = c->next) {
        c->is_tried = false;
        if (c->parked == HV_WAIT_HOLD || (c->parked == HV_WAIT_IDLE && still == HV_WAIT_NO))
            still = c->parked;
    }
    /* Waiting for idleness is woken by hv_control_kick; the slow tick is a
     * safety net only. */
    if (still != HV_WAIT_NO)
        arm_retry(ctl, still == HV_WAIT_HOLD ? PARK_RETRY_MS : 1000);
}

void hv_control_kick(struct hv_control *ctl)
{
    for (struct conn *c = ctl->conns; c; c = c->next)
        if (c->parked != HV_WAIT_NO) {
            arm_retry(ctl, 0);
            return;
        }
}

static void on_conn(void *arg, uint32_t events)
{
    struct conn *c = arg;

    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        for (;;) {
            if (c->in_cap - c->in_len < 4096) {
                size_t cap = c->in_cap ? c->in_cap * 2 : 8192;
                char *grown = realloc(c->in, cap);
                if (!grown) {
                    c->is_closing = true;
                    break;
                }
                c->in = grown;
                c->in_cap = cap;
            }
            ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && errno == EAGAIN)
                break;
            if (n <= 0) {
                c->is_closing = true;
                break;
            }
            c->in_len += (size_t)n;
            if (c->in_len > CONTROL_MAX_REQUEST) {
                struct hv_err err = {0};
                json_t *reply;
                hv_err_set(&err, -E2BIG, "request longer than %d bytes", CONTROL_MAX_REQUEST);
                reply = json_pack("{s:b, s:s, s:i}", "ok", 0, "error", err.msg, "errno", E2BIG);
                queue_reply(c, reply);
                json_decref(reply);
                c->in_len = 0;
                c->is_closing = true;
                break;
            }
        }
        if (c->in_len && memchr(c->in, '\n', c->in_len)) {
            hv_reactor_del_fd(c->ctl->reactor, c->watch);
            c->watch = NULL;
            conn_run_lines(c);
            return;
        }
    }
    conn_after(c);
}

/* Each complete line is one request; the connection is out of the reactor
 * meanwhile, and back in it (or parked) after. */
static void conn_run_lines(struct conn *c)
{
    size_t start = 0;

    for (size_t i = 0; i < c->in_len; i++) {
        if (c->in[i] != '\n')
            continue;
        if (i > start && !handle_line(c, c->in + start, i - start))
            break;
        start = i + 1;
    }
    memmove(c->in, c->in + start, c->in_len - start);
    c->in_len -= start;
    if (c->parked != HV_WAIT_NO) {
        /* Replies to the lines before it go out now; the rest waits. */
        conn_flush(c);
        arm_retry(c->ctl, c->parked == HV_WAIT_HOLD ? PARK_RETRY_MS : 1000);
        return;
    }
    c->watch = hv_reactor_add_fd(c->ctl->reactor, c->fd, EPOLLIN, on_conn, c);
    if (!c->watch) {
        /* Not watched any more: nobody would ever close it. */
        conn_close(c);
        return;
    }
    conn_after(c);
}

/* Send what is queued; close, or watch for what comes next. */
static void conn_after(struct conn *c)
{
    conn_flush(c);
    if (c->is_closing && c->out_len == 0) {
        conn_close(c);
        return;
    }
    hv_reactor_mod_fd(c->ctl->reactor, c->watch,
                      c->out_len ? EPOLLOUT : (c->is_closing ? 0 : EPOLLIN));
}

static void on_accept(void *arg, uint32_t events)
{
    struct hv_control *ctl = arg;

    for (;;) {
        int fd = accept4(ctl->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct conn *c;
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR)
                hv_warn("%s: accept: %s", ctl->path, strerror(errno));
            if (errno == EINTR)
                continue;
            return;
        }
        c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->ctl = ctl;
        c->fd = fd;
        c->watch = hv_reactor_add_fd(ctl->reactor, fd, EPOLLIN, on_conn, c);
        if (!c->watch) {
            close(fd);
            free(c);
            continue;
        }
        c->next = ctl->conns;
        ctl->conns = c;
    }
    (void)events;
}

/* A socket file left by a daemon that was killed: nobody answers it. */
static bool is_stale_socket(const struct sockaddr_un *addr)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool is_stale;

    if (fd < 0)
        return false;
    is_stale = connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) < 0 &&
               errno == ECONNREFUSED;
    close(fd);
    return is_stale;
}

int hv_control_listen(struct hv_reactor *r, const char *path, struct hv_daemon *d,
                      struct hv_control **out, struct hv_err *err)
{
    struct hv_control *ctl;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int ret;

    if (strlen(path) >= sizeof(addr.sun_path))
        return hv_err_set(err, -ENAMETOOLONG, "%s: control socket path longer than %zu bytes "
                          "(use a shorter --state-dir)", path, sizeof(addr.sun_path) - 1);
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path);
    ctl = calloc(1, sizeof(*ctl));
    if (!ctl)
        return hv_err_set(err, -ENOMEM, "out of memory");
    ctl->reactor = r;
    ctl->daemon = d;
    snprintf(ctl->path, sizeof(ctl->path), "%s", path);
    ctl->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ctl->fd < 0) {
        ret = hv_err_errno(err, path, "socket");
        goto fail;
    }
    if (access(path, F_OK) == 0 && is_stale_socket(&addr))
        unlink(path);
    if (bind(ctl->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        ret = hv_err_errno(err, path, "bind");
        goto fail;
    }
    chmod(path, 0600);
    if (listen(ctl->fd, 16) < 0) {
        ret = hv_err_errno(err, path, "listen");
        unlink(path);
        goto fail;
    }
    ctl->watch = hv_reactor_add_fd(r, ctl->fd, EPOLLIN, on_accept, ctl);
    if (!ctl->watch) {
        ret = hv_err_errno(err, path, "watch");
        unlink(path);
        goto fail;
    }
    *out = ctl;
    return 0;

fail:
    if (ctl->fd >= 0)
        close(ctl->fd);
    free(ctl);
    return ret;
}

void hv_control_close(struct hv_control *ctl)
{
    if (!ctl)
        return;
    hv_timer_cancel(ctl->reactor, &ctl->retry_timer);
    for (struct conn *c = ctl->conns; c; c = c->next) {
        if (c->parked == HV_WAIT_NO)
            continue;
        json_t *reply = json_pack("{s:b, s:s, s:i}", "ok", 0, "error",
                                  "hvstord stopped before this request's turn came; it was "
                                  "not started", "errno", ESHUTDOWN);
        if (reply && queue_reply(c, reply) == 0)
            conn_flush(c);
        json_decref(reply);
    }
    while (ctl->conns)
        conn_close(ctl->conns);
    hv_reactor_del_fd(ctl->reactor, ctl->watch);
    close(ctl->fd);
    unlink(ctl->path);
    free(ctl);
}
