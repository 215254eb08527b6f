/*
 * Fuzz the agent's input side: bytes from the host are framed into lines
 * and fed to the request decoder and to a live agent (no filesystems, no
 * writer hooks, so nothing is frozen or spawned). Every reply the agent
 * sends must decode with the requestor's decoder: the agent never emits
 * something its peer cannot read.
 */
#include <stdio.h>
#include <stdlib.h>

#include "vss-agent.h"

static void check_reply(void *arg, const char *line, size_t len)
{
    struct vss_reply rep;
    struct hv_err err = { 0 };
    if (len == 0 || line[len - 1] != '\n' || vss_reply_decode(line, len - 1, &rep, &err) < 0) {
        fprintf(stderr, "agent sent an undecodable reply (%s): %.*s\n", err.msg, (int)len, line);
        abort();
    }
    vss_reply_clear(&rep);
}

static struct vss_agent *agent(void)
{
    static struct hv_reactor *r;
    static struct vss_agent *a;
    if (!a) {
        struct vss_agent_config cfg = {
            .writers_dir = "/nonexistent/hvstor-fuzz/writers.d",
            .state_path = "/nonexistent/hvstor-fuzz/state",
            .has_no_filesystems = true,
        };
        hv_log_set_level(HV_LOG_ERROR);
        if (hv_reactor_create(&r) < 0 || vss_agent_create(r, &cfg, &a, NULL) < 0)
            abort();
        vss_agent_connected(a, check_reply, NULL);
    }
    return a;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vss_linebuf lb;
    size_t pos = 0;
    if (vss_linebuf_init(&lb, VSS_MAX_LINE_BYTES) < 0)
        return 0;
    /* Whole input as one message first, then framed as a stream. */
    struct vss_request req;
    enum vss_error code;
    bool has_id;
    vss_request_decode((const char *)data, size, &req, &has_id, &code, NULL);
    while (pos < size) {
        size_t room;
        char *at = vss_linebuf_space(&lb, &room);
        size_t n = HV_MIN(room, size - pos);
        memcpy(at, data + pos, n);
        vss_linebuf_commit(&lb, n);
        pos += n;
        const char *line;
        size_t len;
        bool is_overlong;
        while (vss_linebuf_next(&lb, &line, &len, &is_overlong) == 1) {
            if (is_overlong) {
                vss_agent_handle_overlong(agent());
                continue;
            }
            if (vss_request_decode(line, len, &req, &has_id, &code, NULL) == 0 &&
                (req.cmd < 0 || req.cmd >= VSS_CMD_COUNT || req.id > VSS_MAX_ID))
                abort();
            vss_agent_handle_line(agent(), line, len);
        }
    }
    vss_linebuf_free(&lb);
    return 0;
}
