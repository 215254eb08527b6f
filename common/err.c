#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int hv_err_set(struct hv_err *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

int hv_err_errno(struct hv_err *err, const char *what, const char *op)
{
    int e = errno ? errno : EIO;
    hv_err_set(err, -e, "%s: %s: %s", what, op, strerror(e));
    return -e;
}

void hv_err_prefix(struct hv_err *err, const char *fmt, ...)
{
    char prefix[512], old[sizeof(err->msg)];
    va_list ap;
    if (!err)
        return;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old));
    snprintf(err->msg, sizeof(err->msg), "%s: %s", prefix, old);
}

const char *hv_err_msg(const struct hv_err *err, int code)
{
    if (err && err->msg[0])
        return err->msg;
    return strerror(code < 0 ? -code : code);
}

void hv_err_clear(struct hv_err *err)
{
    if (err) {
        err->code = 0;
        err->msg[0] = 0;
    }
}
