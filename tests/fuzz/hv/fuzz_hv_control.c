/*
 * Fuzz hvstord's control requests: one JSON request per input, executed by
 * the daemon exactly as the control socket would (hv_daemon_request), against
 * a daemon with a scratch state directory. Every reply must be an object with
 * a boolean "ok" and, when false, an "error" string.
 *
 * The harness never lets a request reach the network or the host's files:
 * only the VM and emulated-disk requests run (SAN requests would dial the
 * portal they are given), and only when every string that looks like a path
 * lies inside the scratch directory (the harness works from there, so a
 * bare file name stays inside it too).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "hv.h"

static struct hv_daemon *daemon_once;
static char scratch[] = "/var/tmp/hvstor-fuzz-control-XXXXXX";

static void remove_scratch(void)
{
    if (daemon_once)
        hv_daemon_destroy(daemon_once);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", scratch);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_hv_control: could not remove %s\n", scratch);
}

static struct hv_daemon *daemon_get(void)
{
    if (daemon_once)
        return daemon_once;
    if (!mkdtemp(scratch) || chdir(scratch) < 0)
        abort();
    atexit(remove_scratch);
    hv_log_set_level(HV_LOG_ERROR);
    struct hv_daemon_options opt = {
        .state_dir = scratch, .portal_addr = "127.0.0.1", .portal_port = 0,
        .no_direct_io = true,
    };
    struct hv_err err = { 0 };
    if (hv_daemon_create(&opt, &daemon_once, &err) < 0) {
        fprintf(stderr, "fuzz_hv_control: %s\n", err.msg);
        abort();
    }
    return daemon_once;
}

static bool is_safe(const json_t *v)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strchr(s, '/') && (strncmp(s, scratch, strlen(scratch)) != 0 || strstr(s, "..")))
            return false;
        return true;
    }
    if (json_is_object(v)) {
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)v, key, val)
            if (!is_safe(val))
                return false;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *val;
        json_array_foreach(v, i, val)
            if (!is_safe(val))
                return false;
    }
    return true;
}

static bool is_allowed_op(const json_t *req)
{
    static const char *ops[] = { "status", "vm.create", "vm.list", "vm.show", "vm.delete",
                                 "vm.set", "disk.attach", "disk.detach", "disk.resize",
                                 "disk.stats" };
    const json_t *op = json_object_get(req, "op");
    if (!op)
        return true;                    /* exercises the "no op" refusal */
    if (!json_is_string(op))
        return true;
    for (size_t i = 0; i < HV_ARRAY_SIZE(ops); i++)
        if (!strcmp(json_string_value(op), ops[i]))
            return true;
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct hv_daemon *d = daemon_get();
    json_error_t jerr;
    /* The socket server splits at newlines and hands each line to jansson. */
    json_t *req = json_loadb((const char *)data, size, JSON_DISABLE_EOF_CHECK, &jerr);
    if (!req)
        return 0;
    if (is_allowed_op(req) && (!json_is_object(req) || is_safe(req))) {
        json_t *reply = hv_daemon_request(d, req);
        assert(json_is_object(reply));
        const json_t *ok = json_object_get(reply, "ok");
        assert(json_is_boolean(ok));
        if (json_is_false(ok))
            assert(json_is_string(json_object_get(reply, "error")));
        json_decref(reply);
    }
    json_decref(req);
    return 0;
}
