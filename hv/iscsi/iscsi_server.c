/*
 * The portal: a listening socket in the reactor, the list of connections,
 * the flush of every connection that has something to send just before
 * the reactor sleeps (so one turn's responses share system calls), and
 * shutdown that lets in-flight commands finish first.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "iscsi_int.h"

static void server_flush_dirty(void *arg)
{
    struct iscsi_server *s = arg;
    while (s->dirty) {
        struct iscsi_conn *c = s->dirty;
        s->dirty = c->dirty_next;
        c->dirty_next = NULL;
        c->is_dirty = false;
        if (!c->is_closing)
            iscsi_conn_flush(c);
    }
    /* Closed connections whose last command has finished. */
    while (s->zombies)
        iscsi_conn_free_now(s->zombies);
}

static void format_addr(const struct sockaddr_storage *ss, char *out, size_t cap, uint16_t *port)
{
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, out, (socklen_t)cap);
        *port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const void *)ss;
        inet_ntop(AF_INET, &a->sin_addr, out, (socklen_t)cap);
        *port = ntohs(a->sin_port);
    }
}

static void server_accept(void *arg, uint32_t events)
{
    struct iscsi_server *s = arg;

    for (int i = 0; i < 16; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);
        int fd = accept4(s->listen_fd, (struct sockaddr *)&peer, &plen,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                hv_warn("iscsi %s:%u: accept: %s", s->addr, s->port, strerror(errno));
            return;
        }
        if (s->is_shutting_down) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct iscsi_conn *c = iscsi_conn_new(s, fd);
        if (!c) {
            hv_warn("iscsi %s:%u: no memory for a new connection", s->addr, s->port);
            close(fd);
            continue;
        }
        char host[INET6_ADDRSTRLEN];
        uint16_t pport;
        format_addr(&peer, host, sizeof(host), &pport);
        snprintf(c->peer, sizeof(c->peer), "%s:%u", host, pport);
        struct sockaddr_storage local;
        socklen_t llen = sizeof(local);
        if (getsockname(fd, (struct sockaddr *)&local, &llen) == 0)
            format_addr(&local, c->local_addr, sizeof(c->local_addr), &c->local_port);
        hv_debug("iscsi: connection from %s", c->peer);
    }
}

static int server_alloc(struct hv_reactor *r, const struct iscsi_directory_ops *ops, void *arg,
                        struct iscsi_server **out)
{
    struct iscsi_server *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->reactor = r;
    s->listen_fd = -1;
    s->ops = ops;
    s->arg = arg;
    s->nop_interval_ms = 10000;
    s->nop_timeout_ms = 30000;
    s->login_timeout_ms = 30000;
    s->prepoll = hv_reactor_add_prepoll(r, server_flush_dirty, s);
    if (s->prepoll < 0) {
        int ret = s->prepoll;
        free(s);
        return ret;
    }
    *out = s;
    return 0;
}

int iscsi_server_create(struct hv_reactor *r, const char *addr, uint16_t port,
                        const struct iscsi_directory_ops *ops, void *arg,
                        struct iscsi_server **out, struct hv_err *err)
{
    struct iscsi_server *s = NULL;
    struct sockaddr_storage ss;
    socklen_t slen;
    int ret;

    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *a4 = (void *)&ss;
    struct sockaddr_in6 *a6 = (void *)&ss;
    if (inet_pton(AF_INET, addr, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        slen = sizeof(*a4);
    } else if (inet_pton(AF_INET6, addr, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        slen = sizeof(*a6);
    } else {
        return hv_err_set(err, -EINVAL, "iSCSI portal %s: not an IPv4 or IPv6 address", addr);
    }
    ret = server_alloc(r, ops, arg, &s);
    if (ret < 0)
        return hv_err_set(err, ret, "iSCSI portal %s:%u: %s", addr, port, strerror(-ret));
    snprintf(s->addr, sizeof(s->addr), "%s", addr);
    s->listen_fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->listen_fd < 0) {
        ret = hv_err_errno(err, "iSCSI portal", "socket");
        goto fail;
    }
    int one = 1;
    setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(s->listen_fd, (struct sockaddr *)&ss, slen) < 0) {
        ret = -errno;
        hv_err_set(err, ret, "iSCSI portal %s:%u: bind: %s", addr, port, strerror(errno));
        goto fail;
    }
    if (listen(s->listen_fd, 128) < 0) {
        ret = -errno;
        hv_err_set(err, ret, "iSCSI portal %s:%u: listen: %s", addr, port, strerror(errno));
        goto fail;
    }
    slen = sizeof(ss);
    getsockname(s->listen_fd, (struct sockaddr *)&ss, &slen);
    char host[INET6_ADDRSTRLEN];
    format_addr(&ss, host, sizeof(host), &s->port);
    s->watch = hv_reactor_add_fd(r, s->listen_fd, EPOLLIN, server_accept, s);
    if (!s->watch) {
        ret = hv_err_errno(err, "iSCSI portal", "epoll_ctl");
        goto fail;
    }
    *out = s;
    return 0;
fail:
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    hv_reactor_del_prepoll(r, s->prepoll);
    free(s);
    return ret;
}

int iscsi_server_create_detached(struct hv_reactor *r, const struct iscsi_directory_ops *ops,
                                 void *arg, struct iscsi_server **out)
{
    return server_alloc(r, ops, arg, out);
}

uint16_t iscsi_server_port(const struct iscsi_server *s)
{
    return s->port;
}

void iscsi_server_set_keepalive(struct iscsi_server *s, unsigned interval_ms,
                                unsigned timeout_ms)
{
    s->nop_interval_ms = interval_ms;
    s->nop_timeout_ms = timeout_ms ? timeout_ms : 30000;
}

static void stop_listening(struct iscsi_server *s)
{
    if (s->watch) {
        hv_reactor_del_fd(s->reactor, s->watch);
        s->watch = NULL;
    }
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        s->listen_fd = -1;
    }
}

void iscsi_server_shutdown(struct iscsi_server *s, bool *done)
{
    s->is_shutting_down = true;
    s->shutdown_done = done;
    stop_listening(s);
    if (!s->conns) {
        if (done)
            *done = true;
        return;
    }
    for (struct iscsi_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        iscsi_conn_drain(c);
    }
}

void iscsi_server_destroy(struct iscsi_server *s)
{
    if (!s)
        return;
    stop_listening(s);
    s->shutdown_done = NULL;
    while (s->conns) {
        struct iscsi_conn *c = s->conns;
        iscsi_conn_close(c, "server destroyed");
        iscsi_conn_free_now(c);
    }
    hv_reactor_del_prepoll(s->reactor, s->prepoll);
    free(s);
}

void iscsi_server_drop_target(struct iscsi_server *s, const char *target)
{
    for (struct iscsi_conn *c = s->conns; c; c = c->next) {
        if (!c->is_discovery && c->login_started && strcmp(c->target, target) == 0)
            iscsi_conn_close(c, "target dropped");
    }
}

bool iscsi_server_target_busy(const struct iscsi_server *s, const char *target)
{
    for (const struct iscsi_conn *c = s->conns; c; c = c->next) {
        if (!c->is_discovery && c->login_started && strcmp(c->target, target) == 0)
            return true;
    }
    return false;
}

unsigned iscsi_server_sessions(const struct iscsi_server *s)
{
    unsigned n = 0;
    for (const struct iscsi_conn *c = s->conns; c; c = c->next) {
        if (c->is_full_feature && !c->is_closing)
            n++;
    }
    return n;
}
