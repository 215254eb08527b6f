#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <unistd.h>

int hv_json_print(FILE *f, const json_t *obj)
{
    if (json_dumpf(obj, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0)
        return -EIO;
    fputc('\n', f);
    return 0;
}

/*
 * The classic atomic replace: a reader (or a crash) sees the old file or the
 * new one, never a mix. The directory fsync makes the rename itself durable.
 */
int hv_write_file_atomic(const char *path, const void *buf, size_t len, struct hv_err *err)
{
    char tmp[4096], dir[4096];
    int fd, ret;

    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp))
        return hv_err_set(err, -ENAMETOOLONG, "%s: path too long", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return hv_err_errno(err, tmp, "open");
    ret = hv_pwrite_full(fd, buf, len, 0);
    if (ret == 0 && fsync(fd) < 0)
        ret = -errno;
    close(fd);
    if (ret < 0) {
        unlink(tmp);
        return hv_err_set(err, ret, "%s: write: %s", tmp, strerror(-ret));
    }
    if (rename(tmp, path) < 0) {
        ret = hv_err_errno(err, path, "rename");
        unlink(tmp);
        return ret;
    }
    snprintf(dir, sizeof(dir), "%s", path);
    fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    return 0;
}

int hv_json_write_file(const char *path, const json_t *obj, struct hv_err *err)
{
    char *text = json_dumps(obj, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text)
        return hv_err_set(err, -ENOMEM, "%s: cannot encode JSON", path);
    size_t len = strlen(text);
    text[len] = '\n';               /* json_dumps leaves room: replace the NUL */
    int ret = hv_write_file_atomic(path, text, len + 1, err);
    free(text);
    return ret;
}

int hv_json_read_file(const char *path, json_t **out, struct hv_err *err)
{
    json_error_t je;
    json_t *obj = json_load_file(path, 0, &je);
    if (!obj) {
        if (access(path, F_OK) < 0)
            return hv_err_errno(err, path, "open");
        return hv_err_set(err, -EINVAL, "%s:%d:%d: invalid JSON: %s", path, je.line,
                          je.column, je.text);
    }
    *out = obj;
    return 0;
}
