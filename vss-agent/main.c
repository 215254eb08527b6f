/*
 * hvstor-vss: the guest agent program. The agent logic is in agent.c; this
 * file is the transport (a virtio-serial port or a Unix socket, one host at
 * a time), signals, and the shell-side modes: --thaw-now, --list and the
 * --send debugging client.
 *
 * Output to the host is buffered and written without blocking: a host that
 * stops reading can cost at most MAX_OUTPUT bytes before it is cut off, and
 * can never stall the loop that runs the auto-thaw timer.
 */
#include "vss-agent.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_OUTPUT (1024 * 1024)
#define DEVICE_RETRY_MS 1000
/* A virtio-serial port with no host on it opens fine and hangs up at once.
 * The host's hello waits until the port is open again, so the reopen comes
 * soon (a probe gives the agent a few seconds, a slow guest needs most of
 * one for the round trip); backing off to HUP_MAX_MS keeps an idle guest
 * from spinning. */
#define HUP_MIN_MS 25
#define HUP_MAX_MS 200
#define MAX_FS 64

struct conn {
    int fd;
    struct hv_watch *watch;
    struct vss_linebuf in;
    char *out;
    size_t out_len;
    bool is_open;
    bool has_data;                      /* the host sent something on this open */
};

struct ctx {
    struct hv_reactor *reactor;
    struct vss_agent *agent;
    const char *device_path;
    const char *socket_path;
    int listen_fd;
    struct hv_watch *listen_watch;
    struct conn conn;
    struct hv_timer device_timer;
    uint32_t hup_ms;                    /* reopen delay after a hang-up; 0: DEVICE_RETRY_MS */
    struct hv_deferred close_deferred;
    bool is_close_pending;
    int signal_fd;
    struct hv_watch *signal_watch;
    bool is_stopping;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hvstor-vss [--device PATH | --listen unix:PATH] [options]\n"
            "       hvstor-vss --thaw-now [--state PATH] [--fs MOUNTPOINT]...\n"
            "       hvstor-vss --list [--fs MOUNTPOINT]... [--writers DIR]\n"
            "       hvstor-vss --send unix:PATH [JSON-LINE...]\n"
            "\n"
            "The hvstor guest agent: freezes writers and filesystems for the host's\n"
            "snapshots (protocol: vss-agent/PROTOCOL.md), and never leaves them frozen.\n"
            "\n"
            "  --device PATH         virtio-serial port (default %s)\n"
            "  --listen unix:PATH    serve the same protocol on a Unix socket, one host at a time\n"
            "  --writers DIR         writer hooks (default /etc/hvstor-vss/writers.d)\n"
            "  --fs MOUNTPOINT       freeze only this mount point (repeatable); default: every\n"
            "                        local, writable filesystem, \"/\" included\n"
            "  --no-fs               freeze no filesystem, run the writers only\n"
            "  --all-fs              every eligible filesystem (the default with --device;\n"
            "                        --listen must be given --fs, --no-fs or --all-fs)\n"
            "  --state PATH          list of frozen filesystems (default /run/hvstor-vss/frozen)\n"
            "  --thaw-timeout SEC    thaw on my own this long after a freeze (default 10)\n"
            "  --writer-timeout SEC  time limit per writer call (default 30)\n"
            "  --thaw-now            thaw what the state file lists (and --fs, or every eligible\n"
            "                        filesystem), then exit\n"
            "  --list                print the hello reply (writers, filesystems in freeze order)\n"
            "  --send unix:PATH      debugging client: send each JSON-LINE and print each reply;\n"
            "                        without JSON-LINEs, copy stdin to the agent and its replies\n"
            "                        to stdout\n"
            "  --timeout SEC         --send: give up waiting for a reply (default 60)\n"
            "  -v, --verbose         debug logging    -q, --quiet  errors only\n",
            VSS_DEFAULT_DEVICE);
}

static int parse_seconds(const char *text, uint32_t *ms)
{
    char *end;
    errno = 0;
    double s = strtod(text, &end);
    if (errno || end == text || *end || !(s > 0) || s > 86400)
        return -EINVAL;
    *ms = (uint32_t)ceil(s * 1000);
    return 0;
}

static const char *unix_path(const char *spec)
{
    return strncmp(spec, "unix:", 5) == 0 && spec[5] ? spec + 5 : NULL;
}

/* ------------------------------------------------------------ transport */

static void conn_close(struct ctx *c);

static void conn_flush(struct ctx *c)
{
    struct conn *k = &c->conn;
    while (k->is_open && k->out_len) {
        ssize_t n = write(k->fd, k->out, k->out_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        if (n <= 0) {
            hv_debug("write to host: %s", n < 0 ? strerror(errno) : "no progress");
            k->out_len = 0;
            break;
        }
        memmove(k->out, k->out + n, k->out_len - (size_t)n);
        k->out_len -= (size_t)n;
    }
    if (k->is_open)
        hv_reactor_mod_fd(c->reactor, k->watch, EPOLLIN | (k->out_len ? EPOLLOUT : 0));
}

static void deferred_close(void *arg)
{
    struct ctx *c = arg;
    c->is_close_pending = false;
    conn_close(c);
}

/* Called by the agent, possibly from deep inside it: never closes here. */
static void conn_send(void *arg, const char *line, size_t len)
{
    struct ctx *c = arg;
    struct conn *k = &c->conn;
    if (!k->is_open || c->is_close_pending)
        return;
    if (k->out_len + len > MAX_OUTPUT) {
        hv_warn("the host does not read its replies: dropping the connection");
        c->is_close_pending = true;
        hv_reactor_defer(c->reactor, &c->close_deferred, deferred_close, c);
        return;
    }
    memcpy(k->out + k->out_len, line, len);
    k->out_len += len;
    conn_flush(c);
}

static void device_retry(void *arg);

static void conn_close(struct ctx *c)
{
    struct conn *k = &c->conn;
    if (!k->is_open)
        return;
    k->is_open = false;
    hv_reactor_del_fd(c->reactor, k->watch);
    k->watch = NULL;
    close(k->fd);
    k->fd = -1;
    vss_linebuf_free(&k->in);
    free(k->out);
    k->out = NULL;
    k->out_len = 0;
    vss_agent_disconnected(c->agent);
    if (c->device_path && !c->is_stopping)
        hv_timer_arm(c->reactor, &c->device_timer, c->hup_ms ? c->hup_ms : DEVICE_RETRY_MS,
                     device_retry, c);
}

static void conn_event(void *arg, uint32_t events)
{
    struct ctx *c = arg;
    struct conn *k = &c->conn;

    if (events & EPOLLOUT)
        conn_flush(c);
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    for (int reads = 0; reads < 16 && k->is_open && !c->is_close_pending; reads++) {
        size_t room;
        char *at = vss_linebuf_space(&k->in, &room);
        ssize_t n = read(k->fd, at, room);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            /* EOF (a socket peer or virtio-serial host went away) or an
             * error: both mean the host is gone. Replies to lines already
             * handled are flushed first, best effort. */
            if (n < 0)
                hv_debug("read from host: %s", strerror(errno));
            if (c->device_path) {
                /* No host yet: back off a little; one that just left: soon. */
                uint32_t was = c->hup_ms;
                c->hup_ms = k->has_data || !c->hup_ms ? HUP_MIN_MS
                                                       : HV_MIN(c->hup_ms * 2, HUP_MAX_MS);
                if (c->hup_ms != was) /* not every 200 ms of an idle port */
                    hv_debug("%s hung up; reopening in %u ms", c->device_path, c->hup_ms);
            }
            conn_flush(c);
            conn_close(c);
            return;
        }
        k->has_data = true;
        vss_linebuf_commit(&k->in, (size_t)n);
        const char *line;
        size_t len;
        bool is_overlong;
        while (k->is_open && !c->is_close_pending &&
               vss_linebuf_next(&k->in, &line, &len, &is_overlong) == 1) {
            if (is_overlong)
                vss_agent_handle_overlong(c->agent);
            else
                vss_agent_handle_line(c->agent, line, len);
        }
    }
}

static int conn_open(struct ctx *c, int fd)
{
    struct conn *k = &c->conn;
    memset(k, 0, sizeof(*k));
    k->fd = fd;
    k->out = malloc(MAX_OUTPUT);
    if (!k->out || vss_linebuf_init(&k->in, VSS_MAX_LINE_BYTES) < 0) {
        free(k->out);
        return -ENOMEM;
    }
    k->watch = hv_reactor_add_fd(c->reactor, fd, EPOLLIN, conn_event, c);
    if (!k->watch) {
        int e = -errno;
        free(k->out);
        vss_linebuf_free(&k->in);
        return e;
    }
    k->is_open = true;
    vss_agent_connected(c->agent, conn_send, c);
    return 0;
}

static void listen_event(void *arg, uint32_t events)
{
    struct ctx *c = arg;
    int fd = accept4(c->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    if (c->conn.is_open || c->is_stopping) {
        static const char busy[] = "{\"id\":null,\"ok\":false,\"cmd\":null,\"state\":\"idle\","
                                   "\"error\":{\"code\":\"busy\",\"message\":\"another host "
                                   "is connected\"}}\n";
        ssize_t HV_UNUSED n = write(fd, busy, sizeof(busy) - 1);
        close(fd);
        hv_warn("refused a second host connection");
        return;
    }
    if (conn_open(c, fd) < 0) {
        close(fd);
        return;
    }
    hv_info("host connected");
}

static void device_retry(void *arg)
{
    struct ctx *c = arg;
    int fd = open(c->device_path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        c->hup_ms = 0; /* the port is gone, not idle: the slow retry */
        hv_debug("%s: %s; retrying", c->device_path, strerror(errno));
        hv_timer_arm(c->reactor, &c->device_timer, DEVICE_RETRY_MS, device_retry, c);
        return;
    }
    /* A virtio-serial port reports POLLHUP while no host has it open; then
     * the first read returns 0, the port is closed again, and retried. */
    if (conn_open(c, fd) < 0) {
        close(fd);
        hv_timer_arm(c->reactor, &c->device_timer, DEVICE_RETRY_MS, device_retry, c);
    }
}

static int listen_unix(const char *path, struct hv_err *err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    struct stat st;
    if (strlen(path) >= sizeof(sa.sun_path))
        return hv_err_set(err, -ENAMETOOLONG, "%s: socket path too long", path);
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return hv_err_errno(err, path, "socket");
    /* A stale socket of an earlier run is replaced; anything else is not ours. */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    mode_t old = umask(0077);
    int ret = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (ret < 0 || listen(fd, 4) < 0) {
        ret = hv_err_errno(err, path, "bind/listen");
        close(fd);
        return ret;
    }
    return fd;
}

static void shutdown_done(void *arg)
{
    struct ctx *c = arg;
    hv_reactor_stop(c->reactor);
}

static void signal_event(void *arg, uint32_t events)
{
    struct ctx *c = arg;
    struct signalfd_siginfo si;
    while (read(c->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP)
            continue;
        hv_info("signal %u: thawing anything frozen, then exiting", si.ssi_signo);
        c->is_stopping = true;
        hv_timer_cancel(c->reactor, &c->device_timer);
        vss_agent_shutdown(c->agent, shutdown_done, c);
    }
}

static int serve(struct vss_agent_config *cfg, const char *device, const char *socket_path)
{
    struct ctx c = { .listen_fd = -1, .signal_fd = -1, .device_path = device,
                     .socket_path = socket_path };
    struct hv_err err = { 0 };
    sigset_t set;
    int ret;

    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);

    ret = hv_reactor_create(&c.reactor);
    if (ret < 0) {
        hv_error("cannot create the event loop: %s", strerror(-ret));
        return 1;
    }
    ret = vss_agent_create(c.reactor, cfg, &c.agent, &err);
    if (ret < 0) {
        hv_error("%s", hv_err_msg(&err, ret));
        goto out;
    }
    c.signal_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (c.signal_fd < 0 ||
        !(c.signal_watch = hv_reactor_add_fd(c.reactor, c.signal_fd, EPOLLIN, signal_event, &c))) {
        ret = -errno;
        hv_error("signalfd: %s", strerror(errno));
        goto out;
    }
    if (socket_path) {
        c.listen_fd = listen_unix(socket_path, &err);
        if (c.listen_fd < 0) {
            ret = c.listen_fd;
            hv_error("%s", hv_err_msg(&err, ret));
            goto out;
        }
        c.listen_watch = hv_reactor_add_fd(c.reactor, c.listen_fd, EPOLLIN, listen_event, &c);
        if (!c.listen_watch) {
            ret = -errno;
            goto out;
        }
        hv_info("listening on unix:%s", socket_path);
    } else {
        hv_info("using %s", device);
        device_retry(&c);
    }
    ret = hv_reactor_run(c.reactor);
out:
    c.is_stopping = true;
    hv_timer_cancel(c.reactor, &c.device_timer);
    if (c.conn.is_open)
        conn_close(&c);
    if (c.listen_watch)
        hv_reactor_del_fd(c.reactor, c.listen_watch);
    if (c.listen_fd >= 0) {
        close(c.listen_fd);
        unlink(socket_path);
    }
    if (c.signal_watch)
        hv_reactor_del_fd(c.reactor, c.signal_watch);
    if (c.signal_fd >= 0)
        close(c.signal_fd);
    vss_agent_destroy(c.agent);
    /* Let the loop free watches deleted above. */
    hv_reactor_run_once(c.reactor, 0);
    hv_reactor_destroy(c.reactor);
    return ret < 0 ? 1 : 0;
}

/* ------------------------------------------------------- shell helpers */

static void print_line(void *arg, const char *line, size_t len)
{
    fwrite(line, 1, len, stdout);
}

static int list_mode(struct vss_agent_config *cfg)
{
    struct hv_reactor *r;
    struct vss_agent *a;
    struct hv_err err = { 0 };
    static const char hello[] = "{\"id\":0,\"cmd\":\"hello\",\"versions\":[1],"
                                "\"requestor\":\"hvstor-vss --list\"}";
    cfg->skip_startup_thaw = true;
    if (hv_log_get_level() == HV_LOG_INFO)
        hv_log_set_level(HV_LOG_WARN);          /* the reply is the output */
    if (hv_reactor_create(&r) < 0)
        return 1;
    int ret = vss_agent_create(r, cfg, &a, &err);
    if (ret < 0) {
        hv_error("%s", hv_err_msg(&err, ret));
        hv_reactor_destroy(r);
        return 1;
    }
    vss_agent_connected(a, print_line, NULL);
    vss_agent_handle_line(a, hello, sizeof(hello) - 1);
    vss_agent_destroy(a);
    hv_reactor_destroy(r);
    return 0;
}

static int thaw_now(struct vss_agent_config *cfg)
{
    struct hv_err err = { 0 };
    const char *all[MAX_FS];
    size_t count = 0, *order = NULL;
    struct vss_mount_table table = { 0 };

    /* With no --fs, thaw every eligible filesystem too: FITHAW of a
     * filesystem that is not frozen is harmless (EINVAL), and the state
     * file may be gone or damaged. */
    if (!cfg->only_fs_count && vss_mounts_read("/proc/self/mountinfo", &table, &err) == 0) {
        order = calloc(table.count + 1, sizeof(*order));
        if (order && vss_mounts_select(&table, NULL, 0, order, &count, &err) == 0) {
            count = HV_MIN(count, HV_ARRAY_SIZE(all));
            for (size_t i = 0; i < count; i++)
                all[count - 1 - i] = table.mounts[order[i]].mount_point;
        } else {
            count = 0;
        }
    }
    int ret = vss_thaw_from_state(cfg->state_path, cfg->only_fs_count ? cfg->only_fs : all,
                                  cfg->only_fs_count ? cfg->only_fs_count : count, &err);
    free(order);
    vss_mounts_free(&table);
    if (ret < 0) {
        hv_error("%s", hv_err_msg(&err, ret));
        return 1;
    }
    printf("thawed %d filesystem(s)\n", ret);
    return 0;
}

static int connect_unix(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        hv_error("%s: socket path too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        hv_error("%s: connect: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Copy stdin to the socket and the socket to stdout, byte for byte. */
static int pump(int fd)
{
    char buf[65536];
    bool is_stdin_open = true;
    for (;;) {
        struct pollfd p[2] = { { .fd = fd, .events = POLLIN },
                               { .fd = is_stdin_open ? 0 : -1, .events = POLLIN } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (p[0].revents) {
            ssize_t n = read(fd, buf, sizeof(buf));
            if (n <= 0)
                return 0;
            if (write_all(1, buf, (size_t)n) < 0)
                return 1;
        }
        if (p[1].revents) {
            ssize_t n = read(0, buf, sizeof(buf));
            if (n <= 0) {
                is_stdin_open = false;
                shutdown(fd, SHUT_WR);
            } else if (write_all(fd, buf, (size_t)n) < 0) {
                return 1;
            }
        }
    }
}

static int send_mode(const char *path, char **lines, int count, uint32_t timeout_ms)
{
    struct vss_linebuf lb;
    int fd, status = 0;

    signal(SIGPIPE, SIG_IGN);
    fd = connect_unix(path);
    if (fd < 0)
        return 1;
    if (count == 0) {
        int ret = pump(fd);
        close(fd);
        return ret;
    }
    if (vss_linebuf_init(&lb, VSS_MAX_LINE_BYTES) < 0) {
        close(fd);
        return 1;
    }
    for (int i = 0; i < count && status != 1; i++) {
        /* A write can fail when the agent already turned us away (busy):
         * its reply is still there to read and print. */
        bool is_sent = write_all(fd, lines[i], strlen(lines[i])) == 0 &&
                       write_all(fd, "\n", 1) == 0;
        if (!is_sent)
            hv_error("%s: write: %s", path, strerror(errno));
        for (;;) {
            const char *line;
            size_t len;
            bool is_overlong;
            if (vss_linebuf_next(&lb, &line, &len, &is_overlong) == 1) {
                if (is_overlong)
                    continue;
                struct vss_reply rep;
                struct hv_err err = { 0 };
                printf("%.*s\n", (int)len, line);
                fflush(stdout);
                if (vss_reply_decode(line, len, &rep, &err) < 0 || !rep.is_ok)
                    status = 2;
                vss_reply_clear(&rep);
                if (!is_sent)
                    status = 1;
                break;
            }
            struct pollfd p = { .fd = fd, .events = POLLIN };
            size_t room;
            char *at = vss_linebuf_space(&lb, &room);
            int pr = poll(&p, 1, (int)timeout_ms);
            ssize_t n = pr > 0 ? read(fd, at, room) : -1;
            if (n <= 0) {
                hv_error("%s: %s", path, pr == 0 ? "no reply in time"
                                      : n == 0 ? "the agent closed the connection"
                                               : strerror(errno));
                status = 1;
                break;
            }
            vss_linebuf_commit(&lb, (size_t)n);
        }
    }
    vss_linebuf_free(&lb);
    close(fd);
    return status;
}

/* --------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    enum { OPT_DEVICE = 256, OPT_LISTEN, OPT_WRITERS, OPT_FS, OPT_NO_FS, OPT_STATE,
           OPT_THAW_TIMEOUT, OPT_WRITER_TIMEOUT, OPT_THAW_NOW, OPT_LIST, OPT_SEND, OPT_TIMEOUT,
           OPT_MOUNTINFO, OPT_VERSION, OPT_ALL_FS };
    static const struct option opts[] = {
        { "device", required_argument, NULL, OPT_DEVICE },
        { "listen", required_argument, NULL, OPT_LISTEN },
        { "writers", required_argument, NULL, OPT_WRITERS },
        { "fs", required_argument, NULL, OPT_FS },
        { "no-fs", no_argument, NULL, OPT_NO_FS },
        { "all-fs", no_argument, NULL, OPT_ALL_FS },
        { "state", required_argument, NULL, OPT_STATE },
        { "thaw-timeout", required_argument, NULL, OPT_THAW_TIMEOUT },
        { "writer-timeout", required_argument, NULL, OPT_WRITER_TIMEOUT },
        { "thaw-now", no_argument, NULL, OPT_THAW_NOW },
        { "list", no_argument, NULL, OPT_LIST },
        { "send", required_argument, NULL, OPT_SEND },
        { "timeout", required_argument, NULL, OPT_TIMEOUT },
        { "mountinfo", required_argument, NULL, OPT_MOUNTINFO },
        { "verbose", no_argument, NULL, 'v' },
        { "quiet", no_argument, NULL, 'q' },
        { "version", no_argument, NULL, OPT_VERSION },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct vss_agent_config cfg = { 0 };
    const char *fs[MAX_FS];
    const char *device = NULL, *listen_spec = NULL, *send_spec = NULL;
    bool is_thaw_now = false, is_list = false, is_all_fs = false;
    uint32_t send_timeout_ms = 60000;
    int opt, ret = 0;

    hv_log_set_ident("hvstor-vss");
    while ((opt = getopt_long(argc, argv, "vqh", opts, NULL)) != -1) {
        switch (opt) {
        case OPT_DEVICE: device = optarg; break;
        case OPT_LISTEN: listen_spec = optarg; break;
        case OPT_WRITERS: cfg.writers_dir = optarg; break;
        case OPT_NO_FS: cfg.has_no_filesystems = true; break;
        case OPT_ALL_FS: is_all_fs = true; break;
        case OPT_STATE: cfg.state_path = optarg; break;
        case OPT_MOUNTINFO: cfg.mountinfo_path = optarg; break;
        case OPT_THAW_NOW: is_thaw_now = true; break;
        case OPT_LIST: is_list = true; break;
        case OPT_SEND: send_spec = optarg; break;
        case 'v': hv_log_set_level(HV_LOG_DEBUG); break;
        case 'q': hv_log_set_level(HV_LOG_ERROR); break;
        case OPT_VERSION: printf("hvstor-vss %s (protocol %d)\n", HVSTOR_VERSION,
                                 VSS_PROTOCOL_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        case OPT_FS: {
            /* Compared with mountinfo's canonical paths, so resolve now: a
             * typo must fail, not silently select something else. */
            char *real = realpath(optarg, NULL);
            if (!real) {
                fprintf(stderr, "hvstor-vss: --fs %s: %s\n", optarg, strerror(errno));
                return 1;
            }
            if (cfg.only_fs_count == MAX_FS) {
                fprintf(stderr, "hvstor-vss: at most %d --fs options\n", MAX_FS);
                return 2;
            }
            fs[cfg.only_fs_count++] = real;
            cfg.only_fs = fs;
            break;
        }
        case OPT_THAW_TIMEOUT:
        case OPT_WRITER_TIMEOUT:
        case OPT_TIMEOUT: {
            uint32_t ms;
            if (parse_seconds(optarg, &ms) < 0) {
                fprintf(stderr, "hvstor-vss: %s: not a number of seconds in (0, 86400]\n",
                        optarg);
                return 2;
            }
            if (opt == OPT_THAW_TIMEOUT)
                cfg.thaw_timeout_ms = ms;
            else if (opt == OPT_WRITER_TIMEOUT)
                cfg.writer_timeout_ms = ms;
            else
                send_timeout_ms = ms;
            break;
        }
        default: usage(stderr); return 2;
        }
    }
    if (cfg.has_no_filesystems + (cfg.only_fs_count > 0) + is_all_fs > 1) {
        fprintf(stderr, "hvstor-vss: --fs, --no-fs and --all-fs exclude each other\n");
        return 2;
    }
    if (send_spec) {
        if (!unix_path(send_spec)) {
            fprintf(stderr, "hvstor-vss: --send wants unix:PATH, not \"%s\"\n", send_spec);
            return 2;
        }
        ret = send_mode(unix_path(send_spec), argv + optind, argc - optind, send_timeout_ms);
        goto out;
    }
    if (optind < argc) {
        fprintf(stderr, "hvstor-vss: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if (is_thaw_now) {
        ret = thaw_now(&cfg);
        goto out;
    }
    if (is_list) {
        ret = list_mode(&cfg);
        goto out;
    }
    if (device && listen_spec) {
        fprintf(stderr, "hvstor-vss: --device and --listen exclude each other\n");
        return 2;
    }
    /*
     * The Unix-socket mode is for tests and containers, which share their
     * machine's root filesystem: freezing it would hang that machine, so
     * there the filesystems must be chosen explicitly. A guest on its
     * virtio-serial port freezes every eligible filesystem by default.
     */
    if (listen_spec && !cfg.only_fs_count && !cfg.has_no_filesystems && !is_all_fs) {
        fprintf(stderr, "hvstor-vss: --listen needs --fs MOUNTPOINT, --no-fs or --all-fs "
                        "(refusing to freeze this machine's filesystems by default)\n");
        return 2;
    }
    if (listen_spec && !unix_path(listen_spec)) {
        fprintf(stderr, "hvstor-vss: --listen wants unix:PATH, not \"%s\"\n", listen_spec);
        return 2;
    }
    if (listen_spec)
        ret = serve(&cfg, NULL, unix_path(listen_spec));
    else
        ret = serve(&cfg, device ? device : VSS_DEFAULT_DEVICE, NULL);
out:
    for (size_t i = 0; i < cfg.only_fs_count; i++)
        free((char *)fs[i]);
    return ret;
}
