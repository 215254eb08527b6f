/*
 * The wire protocol: names, request and reply codecs, line framing.
 *
 * Both ends treat the other as untrusted. The agent must survive anything a
 * broken or hostile host sends, and the requestor must survive anything a
 * compromised guest prints, so each decoder checks every type, every range
 * and every length before a value leaves this file. Unknown keys are ignored
 * (a newer peer may add optional fields within a version); unknown commands
 * and malformed known fields are errors.
 */
#include "vss-agent.h"

#include <errno.h>
#include <stdlib.h>

/* Caps on what a decoded reply may hold, so a guest cannot make the host
 * allocate without bound (the line limit already bounds the total). */
#define MAX_LIST_ENTRIES 4096
#define MAX_THAW_TIMEOUT_MS (3600u * 1000u)

static const char *const cmd_names[VSS_CMD_COUNT] = {
    [VSS_CMD_HELLO] = "hello",   [VSS_CMD_PREPARE] = "prepare", [VSS_CMD_FREEZE] = "freeze",
    [VSS_CMD_THAW] = "thaw",     [VSS_CMD_ABORT] = "abort",     [VSS_CMD_STATUS] = "status",
};

static const char *const error_names[VSS_ERR_COUNT] = {
    [VSS_ERR_NONE] = "none",
    [VSS_ERR_PARSE] = "parse",
    [VSS_ERR_TOO_LONG] = "too-long",
    [VSS_ERR_BAD_REQUEST] = "bad-request",
    [VSS_ERR_UNKNOWN_COMMAND] = "unknown-command",
    [VSS_ERR_UNSUPPORTED_VERSION] = "unsupported-version",
    [VSS_ERR_BUSY] = "busy",
    [VSS_ERR_BAD_STATE] = "bad-state",
    [VSS_ERR_WRITER_FAILED] = "writer-failed",
    [VSS_ERR_WRITER_TIMEOUT] = "writer-timeout",
    [VSS_ERR_FREEZE_FAILED] = "freeze-failed",
    [VSS_ERR_THAW_FAILED] = "thaw-failed",
    [VSS_ERR_AUTO_THAWED] = "auto-thawed",
    [VSS_ERR_ABORTED] = "aborted",
    [VSS_ERR_INTERNAL] = "internal",
};

static const char *const state_names[VSS_STATE_COUNT] = {
    [VSS_STATE_IDLE] = "idle",         [VSS_STATE_PREPARING] = "preparing",
    [VSS_STATE_PREPARED] = "prepared", [VSS_STATE_FREEZING] = "freezing",
    [VSS_STATE_FROZEN] = "frozen",     [VSS_STATE_THAWING] = "thawing",
};

static const char *const auto_thaw_names[VSS_AUTO_THAW_COUNT] = {
    [VSS_AUTO_THAW_NONE] = "none",       [VSS_AUTO_THAW_TIMEOUT] = "timeout",
    [VSS_AUTO_THAW_HANGUP] = "hangup",   [VSS_AUTO_THAW_STARTUP] = "startup",
    [VSS_AUTO_THAW_SHUTDOWN] = "shutdown",
};

static const char *name_of(const char *const *names, int count, int value)
{
    return value >= 0 && value < count && names[value] ? names[value] : "?";
}

static int lookup(const char *const *names, int count, const char *name)
{
    for (int i = 0; i < count; i++)
        if (names[i] && strcmp(names[i], name) == 0)
            return i;
    return -1;
}

const char *vss_cmd_name(enum vss_cmd c) { return name_of(cmd_names, VSS_CMD_COUNT, c); }
const char *vss_error_name(enum vss_error e) { return name_of(error_names, VSS_ERR_COUNT, e); }
const char *vss_state_name(enum vss_state s) { return name_of(state_names, VSS_STATE_COUNT, s); }
const char *vss_auto_thaw_name(enum vss_auto_thaw w)
{
    return name_of(auto_thaw_names, VSS_AUTO_THAW_COUNT, w);
}
int vss_cmd_from_name(const char *n) { return lookup(cmd_names, VSS_CMD_COUNT, n); }
int vss_error_from_name(const char *n) { return lookup(error_names, VSS_ERR_COUNT, n); }
int vss_state_from_name(const char *n) { return lookup(state_names, VSS_STATE_COUNT, n); }
int vss_auto_thaw_from_name(const char *n)
{
    return lookup(auto_thaw_names, VSS_AUTO_THAW_COUNT, n);
}

/* ------------------------------------------------------------ encoding */

/*
 * jansson refuses strings that are not UTF-8, but mount points and file
 * names are arbitrary bytes. Such bytes become '?': the names are for
 * people and logs, the protocol never needs to map them back.
 */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s ? s : "");
    if (j)
        return j;
    char *copy = strdup(s);
    if (!copy)
        return NULL;
    for (unsigned char *p = (unsigned char *)copy; *p; p++)
        if (*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

static int set_new(json_t *obj, const char *key, json_t *value)
{
    if (!value)
        return -ENOMEM;
    return json_object_set_new(obj, key, value) == 0 ? 0 : -ENOMEM;
}

static int dump_line(json_t *obj, char **line, size_t *len)
{
    char *text = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text)
        return -ENOMEM;
    size_t n = strlen(text);
    if (n + 1 > VSS_MAX_LINE_BYTES) {
        free(text);
        return -E2BIG;
    }
    char *out = realloc(text, n + 2);
    if (!out) {
        free(text);
        return -ENOMEM;
    }
    out[n] = '\n';
    out[n + 1] = '\0';
    *line = out;
    *len = n + 1;
    return 0;
}

int vss_request_encode(const struct vss_request *req, char **line, size_t *len)
{
    int ret = -EINVAL;
    if (req->cmd < 0 || req->cmd >= VSS_CMD_COUNT || req->id > VSS_MAX_ID)
        return -EINVAL;
    json_t *obj = json_object();
    if (!obj)
        return -ENOMEM;
    ret = set_new(obj, "id", json_integer((json_int_t)req->id));
    if (!ret)
        ret = set_new(obj, "cmd", json_string(vss_cmd_name(req->cmd)));
    if (!ret && req->cmd == VSS_CMD_HELLO) {
        json_t *versions = json_array();
        ret = set_new(obj, "versions", versions);
        for (int v = 1; !ret && v < 32; v++)
            if (req->versions_mask & (1u << v))
                ret = json_array_append_new(versions, json_integer(v)) ? -ENOMEM : 0;
        if (!ret && req->requestor[0])
            ret = set_new(obj, "requestor", jstr(req->requestor));
    }
    if (!ret && req->cmd == VSS_CMD_FREEZE && req->thaw_timeout_ms)
        ret = set_new(obj, "thaw_timeout_ms", json_integer(req->thaw_timeout_ms));
    if (!ret)
        ret = dump_line(obj, line, len);
    json_decref(obj);
    return ret;
}

static json_t *string_list(char **items, size_t count)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < count; i++) {
        if (json_array_append_new(arr, jstr(items[i])) < 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

int vss_reply_encode(const struct vss_reply *rep, char **line, size_t *len)
{
    int ret;
    json_t *obj = json_object();
    if (!obj)
        return -ENOMEM;
    ret = set_new(obj, "id", rep->has_id ? json_integer((json_int_t)rep->id) : json_null());
    if (!ret)
        ret = set_new(obj, "ok", json_boolean(rep->is_ok));
    if (!ret)
        ret = set_new(obj, "cmd", rep->cmd >= 0 && rep->cmd < VSS_CMD_COUNT
                                      ? json_string(vss_cmd_name(rep->cmd))
                                      : json_null());
    if (!ret)
        ret = set_new(obj, "state", json_string(vss_state_name(rep->state)));
    if (!ret && !rep->is_ok) {
        json_t *e = json_object();
        ret = set_new(obj, "error", e);
        if (!ret)
            ret = set_new(e, "code", json_string(vss_error_name(rep->error)));
        if (!ret)
            ret = set_new(e, "message", jstr(rep->message));
    }
    if (!ret && rep->cmd == VSS_CMD_HELLO && rep->is_ok) {
        if (rep->version)
            ret = set_new(obj, "version", json_integer(rep->version));
        if (!ret && (rep->versions_mask & ~1u)) {
            json_t *versions = json_array();
            ret = set_new(obj, "versions", versions);
            for (int v = 1; !ret && v < 32; v++)
                if (rep->versions_mask & (1u << v))
                    ret = json_array_append_new(versions, json_integer(v)) ? -ENOMEM : 0;
        }
        if (!ret)
            ret = set_new(obj, "agent", jstr(rep->agent));
        if (!ret)
            ret = set_new(obj, "thaw_timeout_ms", json_integer(rep->thaw_timeout_ms));
        if (!ret)
            ret = set_new(obj, "writer_timeout_ms", json_integer(rep->writer_timeout_ms));
        if (!ret)
            ret = set_new(obj, "writers", string_list(rep->writers, rep->writer_count));
        json_t *fss = json_array();
        if (!ret)
            ret = set_new(obj, "filesystems", fss);
        for (size_t i = 0; !ret && i < rep->filesystem_count; i++) {
            json_t *fs = json_object();
            ret = json_array_append_new(fss, fs) ? -ENOMEM : 0;
            if (!ret)
                ret = set_new(fs, "mount", jstr(rep->filesystems[i].mount));
            if (!ret)
                ret = set_new(fs, "type", jstr(rep->filesystems[i].type));
            if (!ret)
                ret = set_new(fs, "device", jstr(rep->filesystems[i].device));
        }
    }
    if (!ret && (rep->cmd != VSS_CMD_HELLO || rep->frozen_count))
        ret = set_new(obj, "frozen", string_list(rep->frozen, rep->frozen_count));
    if (!ret) {
        json_t *t = json_object();
        ret = set_new(obj, "timings", t);
        if (!ret)
            ret = set_new(t, "total_us", json_integer((json_int_t)rep->total_us));
        if (!ret)
            ret = set_new(t, "writers_us", json_integer((json_int_t)rep->writers_us));
        if (!ret)
            ret = set_new(t, "filesystems_us", json_integer((json_int_t)rep->filesystems_us));
        if (!ret && rep->frozen_us)
            ret = set_new(t, "frozen_us", json_integer((json_int_t)rep->frozen_us));
    }
    if (!ret && rep->thaw_in_ms)
        ret = set_new(obj, "thaw_in_ms", json_integer((json_int_t)rep->thaw_in_ms));
    if (!ret && rep->cmd == VSS_CMD_STATUS)
        ret = set_new(obj, "last_auto_thaw", json_string(vss_auto_thaw_name(rep->last_auto_thaw)));
    if (!ret && rep->warning_count)
        ret = set_new(obj, "warnings", string_list(rep->warnings, rep->warning_count));
    if (!ret)
        ret = dump_line(obj, line, len);
    json_decref(obj);
    return ret;
}

/* ------------------------------------------------------------ decoding */

/* Parse a line into one JSON object; on failure the error says where. */
static int load_object(const char *line, size_t len, json_t **out, enum vss_error *code,
                       struct hv_err *err)
{
    json_error_t je;
    if (len >= VSS_MAX_LINE_BYTES) {
        *code = VSS_ERR_TOO_LONG;
        return hv_err_set(err, -E2BIG, "line of %zu bytes is over the %u-byte limit", len,
                          (unsigned)VSS_MAX_LINE_BYTES - 1);
    }
    if (len && line[len - 1] == '\r')
        len--;
    /* JSON_DISABLE_EOF_CHECK is not set: trailing garbage after the object
     * is an error, so one line is exactly one message. */
    json_t *obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    if (!obj) {
        *code = VSS_ERR_PARSE;
        return hv_err_set(err, -EINVAL, "not JSON at column %d: %s", je.column, je.text);
    }
    if (!json_is_object(obj)) {
        json_decref(obj);
        *code = VSS_ERR_PARSE;
        return hv_err_set(err, -EINVAL, "message is not a JSON object");
    }
    *out = obj;
    return 0;
}

/* An integer field in [min, max]; absent is -ENOENT (not an error here). */
static int get_uint(json_t *obj, const char *key, uint64_t min, uint64_t max, uint64_t *out,
                    struct hv_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return -ENOENT;
    if (!json_is_integer(v))
        return hv_err_set(err, -EINVAL, "\"%s\" must be an integer", key);
    json_int_t n = json_integer_value(v);
    if (n < 0 || (uint64_t)n < min || (uint64_t)n > max)
        return hv_err_set(err, -EINVAL, "\"%s\" = %lld is outside %llu..%llu", key,
                          (long long)n, (unsigned long long)min, (unsigned long long)max);
    *out = (uint64_t)n;
    return 0;
}

/* A string field that fits `cap` bytes with its NUL; absent is -ENOENT. */
static int get_string(json_t *obj, const char *key, char *out, size_t cap, struct hv_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return -ENOENT;
    if (!json_is_string(v))
        return hv_err_set(err, -EINVAL, "\"%s\" must be a string", key);
    size_t n = json_string_length(v);
    if (n >= cap)
        return hv_err_set(err, -EINVAL, "\"%s\" is %zu bytes long, the limit is %zu", key, n,
                          cap - 1);
    memcpy(out, json_string_value(v), n + 1);
    return 0;
}

static int get_versions(json_t *obj, const char *key, uint32_t *mask, struct hv_err *err)
{
    json_t *arr = json_object_get(obj, key), *v;
    size_t i;
    if (!arr)
        return hv_err_set(err, -EINVAL, "\"%s\" is missing", key);
    if (!json_is_array(arr) || json_array_size(arr) == 0 || json_array_size(arr) > 31)
        return hv_err_set(err, -EINVAL, "\"%s\" must be an array of 1 to 31 integers", key);
    *mask = 0;
    json_array_foreach(arr, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 31)
            return hv_err_set(err, -EINVAL, "\"%s\"[%zu] must be an integer in 1..31", key, i);
        *mask |= 1u << json_integer_value(v);
    }
    return 0;
}

int vss_request_decode(const char *line, size_t len, struct vss_request *req, bool *has_id,
                       enum vss_error *code, struct hv_err *err)
{
    json_t *obj = NULL;
    uint64_t n;
    char cmd[32];
    int ret;

    memset(req, 0, sizeof(*req));
    req->cmd = VSS_CMD_NONE;
    *has_id = false;
    *code = VSS_ERR_NONE;
    ret = load_object(line, len, &obj, code, err);
    if (ret < 0)
        return ret;

    *code = VSS_ERR_BAD_REQUEST;
    ret = get_uint(obj, "id", 0, VSS_MAX_ID, &n, err);
    if (ret == -ENOENT)
        ret = hv_err_set(err, -EINVAL, "\"id\" is missing");
    if (ret < 0)
        goto out;
    req->id = n;
    *has_id = true;

    ret = get_string(obj, "cmd", cmd, sizeof(cmd), err);
    if (ret == -ENOENT)
        ret = hv_err_set(err, -EINVAL, "\"cmd\" is missing");
    if (ret < 0) {
        if (json_is_string(json_object_get(obj, "cmd"))) {
            *code = VSS_ERR_UNKNOWN_COMMAND;
            ret = hv_err_set(err, -EINVAL, "unknown command (name too long)");
        }
        goto out;
    }
    int c = vss_cmd_from_name(cmd);
    if (c < 0) {
        *code = VSS_ERR_UNKNOWN_COMMAND;
        ret = hv_err_set(err, -EINVAL, "unknown command \"%s\"", cmd);
        goto out;
    }
    req->cmd = (enum vss_cmd)c;

    switch (req->cmd) {
    case VSS_CMD_HELLO:
        ret = get_versions(obj, "versions", &req->versions_mask, err);
        if (ret < 0)
            goto out;
        ret = get_string(obj, "requestor", req->requestor, sizeof(req->requestor), err);
        if (ret < 0 && ret != -ENOENT)
            goto out;
        break;
    case VSS_CMD_FREEZE:
        ret = get_uint(obj, "thaw_timeout_ms", 1, MAX_THAW_TIMEOUT_MS, &n, err);
        if (ret < 0 && ret != -ENOENT)
            goto out;
        if (ret == 0)
            req->thaw_timeout_ms = (uint32_t)n;
        break;
    default:
        break;
    }
    ret = 0;
    *code = VSS_ERR_NONE;
out:
    json_decref(obj);
    return ret;
}

static int get_string_list(json_t *obj, const char *key, char ***items, size_t *count,
                           struct hv_err *err)
{
    json_t *arr = json_object_get(obj, key), *v;
    size_t i;
    if (!arr)
        return 0;
    if (!json_is_array(arr) || json_array_size(arr) > MAX_LIST_ENTRIES)
        return hv_err_set(err, -EINVAL, "\"%s\" must be an array of at most %d strings", key,
                          MAX_LIST_ENTRIES);
    *items = calloc(json_array_size(arr) + 1, sizeof(char *));
    if (!*items)
        return -ENOMEM;
    json_array_foreach(arr, i, v) {
        if (!json_is_string(v))
            return hv_err_set(err, -EINVAL, "\"%s\"[%zu] must be a string", key, i);
        (*items)[i] = strdup(json_string_value(v));
        if (!(*items)[i])
            return -ENOMEM;
        (*count)++;
    }
    return 0;
}

static int get_fs_list(json_t *obj, struct vss_reply *rep, struct hv_err *err)
{
    json_t *arr = json_object_get(obj, "filesystems"), *v;
    size_t i;
    if (!arr)
        return 0;
    if (!json_is_array(arr) || json_array_size(arr) > MAX_LIST_ENTRIES)
        return hv_err_set(err, -EINVAL, "\"filesystems\" must be an array of at most %d",
                          MAX_LIST_ENTRIES);
    json_array_foreach(arr, i, v) {
        const char *m = json_string_value(json_object_get(v, "mount"));
        const char *t = json_string_value(json_object_get(v, "type"));
        const char *d = json_string_value(json_object_get(v, "device"));
        if (!json_is_object(v) || !m || !t || !d)
            return hv_err_set(err, -EINVAL, "\"filesystems\"[%zu] must be an object with "
                              "string mount, type and device", i);
        int ret = vss_reply_add_filesystem(rep, m, t, d);
        if (ret < 0)
            return ret;
    }
    return 0;
}

static int get_enum(json_t *obj, const char *key, int (*from_name)(const char *), bool required,
                    int *out, struct hv_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v && !required)
        return 0;
    if (!json_is_string(v))
        return hv_err_set(err, -EINVAL, "\"%s\" must be a string", key);
    int value = from_name(json_string_value(v));
    if (value < 0)
        return hv_err_set(err, -EINVAL, "\"%s\": unknown value \"%.64s\"", key,
                          json_string_value(v));
    *out = value;
    return 0;
}

int vss_reply_decode(const char *line, size_t len, struct vss_reply *rep, struct hv_err *err)
{
    json_t *obj = NULL, *v;
    enum vss_error code;
    uint64_t n;
    int ret, value;

    vss_reply_init(rep);
    ret = load_object(line, len, &obj, &code, err);
    if (ret < 0)
        return ret;
    ret = -EINVAL;

    v = json_object_get(obj, "id");
    if (!v) {
        hv_err_set(err, -EINVAL, "reply has no \"id\"");
        goto out;
    }
    if (!json_is_null(v)) {
        if (get_uint(obj, "id", 0, VSS_MAX_ID, &rep->id, err) < 0)
            goto out;
        rep->has_id = true;
    }
    v = json_object_get(obj, "ok");
    if (!json_is_boolean(v)) {
        hv_err_set(err, -EINVAL, "reply: \"ok\" must be true or false");
        goto out;
    }
    rep->is_ok = json_is_true(v);
    v = json_object_get(obj, "cmd");
    if (v && !json_is_null(v)) {
        if (get_enum(obj, "cmd", vss_cmd_from_name, true, &value, err) < 0)
            goto out;
        rep->cmd = (enum vss_cmd)value;
    }
    if (get_enum(obj, "state", vss_state_from_name, true, &value, err) < 0)
        goto out;
    rep->state = (enum vss_state)value;

    if (!rep->is_ok) {
        json_t *e = json_object_get(obj, "error");
        const char *c = json_string_value(json_object_get(e, "code"));
        const char *m = json_string_value(json_object_get(e, "message"));
        if (!json_is_object(e) || !c || !m) {
            hv_err_set(err, -EINVAL, "failed reply without an error object of code and message");
            goto out;
        }
        /* A code from a newer agent is still a failure: keep its text. */
        value = vss_error_from_name(c);
        rep->error = value > 0 ? (enum vss_error)value : VSS_ERR_INTERNAL;
        snprintf(rep->message, sizeof(rep->message), "%s", m);
    }

    if (get_uint(obj, "version", 1, 31, &n, err) == 0)
        rep->version = (uint32_t)n;
    else if (json_object_get(obj, "version"))
        goto out;
    if (json_object_get(obj, "versions") &&
        get_versions(obj, "versions", &rep->versions_mask, err) < 0)
        goto out;
    ret = get_string(obj, "agent", rep->agent, sizeof(rep->agent), err);
    if (ret < 0 && ret != -ENOENT)
        goto out;
    ret = -EINVAL;
    if (get_uint(obj, "thaw_timeout_ms", 0, UINT32_MAX, &n, err) == 0)
        rep->thaw_timeout_ms = (uint32_t)n;
    else if (json_object_get(obj, "thaw_timeout_ms"))
        goto out;
    if (get_uint(obj, "writer_timeout_ms", 0, UINT32_MAX, &n, err) == 0)
        rep->writer_timeout_ms = (uint32_t)n;
    else if (json_object_get(obj, "writer_timeout_ms"))
        goto out;
    if (get_uint(obj, "thaw_in_ms", 0, UINT32_MAX, &n, err) == 0)
        rep->thaw_in_ms = n;
    else if (json_object_get(obj, "thaw_in_ms"))
        goto out;
    if (get_enum(obj, "last_auto_thaw", vss_auto_thaw_from_name, false, &value, err) < 0)
        goto out;
    rep->last_auto_thaw = (enum vss_auto_thaw)value;

    ret = get_string_list(obj, "writers", &rep->writers, &rep->writer_count, err);
    if (!ret)
        ret = get_string_list(obj, "frozen", &rep->frozen, &rep->frozen_count, err);
    if (!ret)
        ret = get_string_list(obj, "warnings", &rep->warnings, &rep->warning_count, err);
    if (!ret)
        ret = get_fs_list(obj, rep, err);
    if (ret < 0) {
        if (ret == -ENOMEM)
            hv_err_set(err, -ENOMEM, "reply: out of memory");
        goto out;
    }
    ret = -EINVAL;

    v = json_object_get(obj, "timings");
    if (v) {
        static const char *const keys[] = { "total_us", "writers_us", "filesystems_us",
                                            "frozen_us" };
        uint64_t *fields[] = { &rep->total_us, &rep->writers_us, &rep->filesystems_us,
                               &rep->frozen_us };
        if (!json_is_object(v)) {
            hv_err_set(err, -EINVAL, "reply: \"timings\" must be an object");
            goto out;
        }
        for (size_t i = 0; i < HV_ARRAY_SIZE(keys); i++) {
            int r = get_uint(v, keys[i], 0, VSS_MAX_ID, fields[i], err);
            if (r < 0 && r != -ENOENT)
                goto out;
        }
    }
    ret = 0;
out:
    json_decref(obj);
    if (ret < 0) {
        hv_err_prefix(err, "reply");
        vss_reply_clear(rep);
    }
    return ret;
}

/* ------------------------------------------------------- reply helpers */

void vss_reply_init(struct vss_reply *rep)
{
    memset(rep, 0, sizeof(*rep));
    rep->cmd = VSS_CMD_NONE;
    rep->is_ok = true;
}

static void free_list(char **items, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(items[i]);
    free(items);
}

void vss_reply_clear(struct vss_reply *rep)
{
    free_list(rep->writers, rep->writer_count);
    free_list(rep->frozen, rep->frozen_count);
    free_list(rep->warnings, rep->warning_count);
    for (size_t i = 0; i < rep->filesystem_count; i++) {
        free(rep->filesystems[i].mount);
        free(rep->filesystems[i].type);
        free(rep->filesystems[i].device);
    }
    free(rep->filesystems);
    vss_reply_init(rep);
}

static int push(char ***items, size_t *count, char *s)
{
    if (!s)
        return -ENOMEM;
    char **grown = realloc(*items, (*count + 1) * sizeof(char *));
    if (!grown) {
        free(s);
        return -ENOMEM;
    }
    grown[(*count)++] = s;
    *items = grown;
    return 0;
}

int vss_reply_add_writer(struct vss_reply *rep, const char *name)
{
    return push(&rep->writers, &rep->writer_count, strdup(name));
}

int vss_reply_add_frozen(struct vss_reply *rep, const char *mount)
{
    return push(&rep->frozen, &rep->frozen_count, strdup(mount));
}

int vss_reply_add_warning(struct vss_reply *rep, const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        s = NULL;
    va_end(ap);
    return push(&rep->warnings, &rep->warning_count, s);
}

int vss_reply_add_filesystem(struct vss_reply *rep, const char *mount, const char *type,
                             const char *device)
{
    struct vss_fs *grown = realloc(rep->filesystems,
                                   (rep->filesystem_count + 1) * sizeof(*grown));
    if (!grown)
        return -ENOMEM;
    rep->filesystems = grown;
    struct vss_fs *fs = &grown[rep->filesystem_count];
    fs->mount = strdup(mount);
    fs->type = strdup(type);
    fs->device = strdup(device);
    if (!fs->mount || !fs->type || !fs->device) {
        free(fs->mount);
        free(fs->type);
        free(fs->device);
        return -ENOMEM;
    }
    rep->filesystem_count++;
    return 0;
}

void vss_reply_fail(struct vss_reply *rep, enum vss_error code, const char *fmt, ...)
{
    va_list ap;
    rep->is_ok = false;
    rep->error = code;
    va_start(ap, fmt);
    vsnprintf(rep->message, sizeof(rep->message), fmt, ap);
    va_end(ap);
}

/* -------------------------------------------------------- line framing */

int vss_linebuf_init(struct vss_linebuf *lb, size_t cap)
{
    memset(lb, 0, sizeof(*lb));
    lb->buf = malloc(cap);
    if (!lb->buf)
        return -ENOMEM;
    lb->cap = cap;
    return 0;
}

void vss_linebuf_free(struct vss_linebuf *lb)
{
    free(lb->buf);
    memset(lb, 0, sizeof(*lb));
}

char *vss_linebuf_space(struct vss_linebuf *lb, size_t *room)
{
    if (lb->start > 0) {            /* lines handed out earlier are done with */
        memmove(lb->buf, lb->buf + lb->start, lb->end - lb->start);
        lb->end -= lb->start;
        lb->start = 0;
    }
    /* A full buffer without a newline has been reported and dropped by
     * vss_linebuf_next, so there is always room here. */
    *room = lb->cap - lb->end;
    return lb->buf + lb->end;
}

void vss_linebuf_commit(struct vss_linebuf *lb, size_t bytes)
{
    lb->end += bytes;
}

int vss_linebuf_next(struct vss_linebuf *lb, const char **line, size_t *len, bool *is_overlong)
{
    *is_overlong = false;
    for (;;) {
        char *from = lb->buf + lb->start + lb->scanned;
        char *nl = memchr(from, '\n', lb->end - lb->start - lb->scanned);
        if (!nl) {
            lb->scanned = lb->end - lb->start;
            if (lb->is_discarding) {
                lb->start = lb->end = lb->scanned = 0;
                return 0;
            }
            if (lb->end - lb->start < lb->cap)
                return 0;
            /* The buffer is full and holds no newline: the line is too long.
             * Say so once, then drop bytes up to its end. */
            lb->start = lb->end = lb->scanned = 0;
            lb->is_discarding = true;
            *line = lb->buf;
            *len = 0;
            *is_overlong = true;
            return 1;
        }
        size_t n = (size_t)(nl - (lb->buf + lb->start));
        const char *begin = lb->buf + lb->start;
        lb->start += n + 1;
        lb->scanned = 0;
        if (lb->is_discarding) {
            lb->is_discarding = false;
            continue;
        }
        *line = begin;
        *len = n;
        return 1;
    }
}
