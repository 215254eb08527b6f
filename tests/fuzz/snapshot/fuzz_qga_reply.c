/*
 * Fuzz the requestor's qemu-ga side: the guest's output is untrusted. The
 * stream is cut into lines the way the requestor does (vss_linebuf, bounded),
 * each line is decoded; a decoded "return" must be a JSON value we can
 * release, an error must come with a message, and nothing may crash or leak.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "snapshot.h"
#include "vss-agent.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vss_linebuf lb;
    if (vss_linebuf_init(&lb, 4096) < 0)
        return 0;
    size_t at = 0;
    while (at < size) {
        size_t room;
        char *space = vss_linebuf_space(&lb, &room);
        size_t n = HV_MIN(room, size - at);
        n = HV_MIN(n, (size_t)97); /* odd pieces: lines split across reads */
        memcpy(space, data + at, n);
        vss_linebuf_commit(&lb, n);
        at += n;
        const char *line;
        size_t len;
        bool is_overlong;
        while (vss_linebuf_next(&lb, &line, &len, &is_overlong) == 1) {
            if (is_overlong)
                continue;
            struct hv_err err = {0};
            long long v = 0;
            json_t *ret = NULL;
            int rc = snap_qga_decode(line, len, &v, &ret, &err);
            if (rc == 0 && !ret)
                abort();
            if (rc < 0 && (ret || err.msg[0] == 0))
                abort();
            json_decref(ret);
        }
    }
    vss_linebuf_free(&lb);
    return 0;
}
