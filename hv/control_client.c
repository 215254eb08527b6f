/*
 * The client side of the control channel (hvctl, tests): one request line
 * out, one reply line back, blocking with a timeout. Kept apart from the
 * server so that hvctl links nothing of the daemon.
 */
#include "hv.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int wait_fd(int fd, short events, int timeout_ms, const char *path, struct hv_err *err)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n;

    if (timeout_ms <= 0)
        timeout_ms = -1;
    do
        n = poll(&p, 1, timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return hv_err_errno(err, path, "poll");
    if (n == 0)
        return hv_err_set(err, -ETIMEDOUT, "%s: hvstord did not answer in %d ms", path,
                          timeout_ms);
    return 0;
}

int hv_control_call(const char *socket_path, const json_t *request, json_t **reply,
                    int timeout_ms, struct hv_err *err)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char *text = NULL;
    char *in = NULL;
    size_t in_len = 0;
    size_t in_cap = 0;
    size_t len;
    size_t sent = 0;
    json_error_t jerr;
    int fd;
    int ret;

    *reply = NULL;
    if (strlen(socket_path) >= sizeof(addr.sun_path))
        return hv_err_set(err, -ENAMETOOLONG, "%s: socket path too long", socket_path);
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", socket_path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return hv_err_errno(err, socket_path, "socket");
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        ret = -errno;
        hv_err_set(err, ret, "%s: cannot reach hvstord: %s%s", socket_path, strerror(errno),
                   (errno == ENOENT || errno == ECONNREFUSED) ? " (is hvstord running with "
                   "this --state-dir?)" : "");
        goto out;
    }
    text = json_dumps(request, JSON_COMPACT);
    if (!text) {
        ret = hv_err_set(err, -ENOMEM, "cannot encode the request");
        goto out;
    }
    len = strlen(text);
    text[len++] = '\n';   /* json_dumps left room: replace the NUL */
    while (sent < len) {
        ssize_t n = send(fd, text + sent, len - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            ret = hv_err_errno(err, socket_path, "send");
            goto out;
        }
        sent += (size_t)n;
    }
    for (;;) {
        ssize_t n;
        char *nl;
        ret = wait_fd(fd, POLLIN, timeout_ms, socket_path, err);
        if (ret < 0)
            goto out;
        if (in_cap - in_len < 4096) {
            size_t cap = in_cap ? in_cap * 2 : 16384;
            char *grown = realloc(in, cap);
            if (!grown) {
                ret = hv_err_set(err, -ENOMEM, "out of memory");
                goto out;
            }
            in = grown;
            in_cap = cap;
        }
        n = recv(fd, in + in_len, in_cap - in_len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            ret = hv_err_errno(err, socket_path, "recv");
            goto out;
        }
        if (n == 0) {
            ret = hv_err_set(err, -ECONNRESET, "%s: hvstord closed the connection without "
                             "answering", socket_path);
            goto out;
        }
        in_len += (size_t)n;
        nl = memchr(in, '\n', in_len);
        if (nl) {
            *reply = json_loadb(in, (size_t)(nl - in), 0, &jerr);
            if (!*reply || !json_is_object(*reply)) {
                json_decref(*reply);
                *reply = NULL;
                ret = hv_err_set(err, -EPROTO, "%s: hvstord answered something that is not "
                                 "a JSON object: %s", socket_path, jerr.text);
                goto out;
            }
            ret = 0;
            goto out;
        }
    }
out:
    free(in);
    free(text);
    close(fd);
    return ret;
}

int hv_control_request(const char *socket_path, json_t *req, int timeout_ms, bool is_json,
                       json_t **result)
{
    struct hv_err err = {0};
    json_t *reply = NULL;
    int ret = hv_control_call(socket_path, req, &reply, timeout_ms, &err);

    json_decref(req);
    if (ret < 0) {
        fprintf(stderr, "hvctl: %s\n", hv_err_msg(&err, ret));
        return 1;
    }
    if (!json_is_true(json_object_get(reply, "ok"))) {
        const char *msg = json_string_value(json_object_get(reply, "error"));
        if (is_json)
            hv_json_print(stdout, reply);
        fprintf(stderr, "hvctl: %s\n", msg ? msg : "request failed (no message)");
        json_decref(reply);
        return 1;
    }
    *result = json_incref(json_object_get(reply, "result"));
    json_decref(reply);
    return 0;
}

int hv_cli_usage_error(const char *usage, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "hvctl: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n%s", usage);
    return 2;
}
