/* Unit tests for the vss-agent wire protocol: one codec for both ends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>

#include "vss-agent.h"

static int decode_req(const char *line, struct vss_request *req, bool *has_id,
                      enum vss_error *code)
{
    struct hv_err err = { 0 };
    return vss_request_decode(line, strlen(line), req, has_id, code, &err);
}

static void test_request_round_trips_for_every_command(void **state)
{
    for (int c = 0; c < VSS_CMD_COUNT; c++) {
        struct vss_request in = { .id = 1000 + (uint64_t)c, .cmd = (enum vss_cmd)c };
        struct vss_request out;
        enum vss_error code;
        bool has_id;
        char *line;
        size_t len;
        if (c == VSS_CMD_HELLO) {
            in.versions_mask = (1u << 1) | (1u << 3);
            snprintf(in.requestor, sizeof(in.requestor), "hvstord 0.1.0");
        }
        if (c == VSS_CMD_FREEZE)
            in.thaw_timeout_ms = 2500;
        assert_int_equal(vss_request_encode(&in, &line, &len), 0);
        assert_int_equal(line[len - 1], '\n');
        assert_null(memchr(line, '\n', len - 1));          /* exactly one line */
        assert_int_equal(vss_request_decode(line, len - 1, &out, &has_id, &code, NULL), 0);
        assert_true(has_id);
        assert_int_equal(out.id, in.id);
        assert_int_equal(out.cmd, in.cmd);
        assert_int_equal(out.versions_mask, in.versions_mask);
        assert_string_equal(out.requestor, in.requestor);
        assert_int_equal(out.thaw_timeout_ms, in.thaw_timeout_ms);
        free(line);
    }
}

static void test_request_encode_refuses_out_of_range_values(void **state)
{
    struct vss_request req = { .id = VSS_MAX_ID + 1, .cmd = VSS_CMD_STATUS };
    char *line;
    size_t len;
    assert_int_equal(vss_request_encode(&req, &line, &len), -EINVAL);
    req.id = 1;
    req.cmd = VSS_CMD_COUNT;
    assert_int_equal(vss_request_encode(&req, &line, &len), -EINVAL);
}

static void test_request_decode_names_each_kind_of_error(void **state)
{
    static const struct {
        const char *line;
        enum vss_error code;
        bool has_id;
    } cases[] = {
        { "", VSS_ERR_PARSE, false },
        { "hello", VSS_ERR_PARSE, false },
        { "[]", VSS_ERR_PARSE, false },
        { "\"str\"", VSS_ERR_PARSE, false },
        { "{\"id\":1,\"cmd\":\"status\"}x", VSS_ERR_PARSE, false },
        { "{\"id\":1,\"id\":2,\"cmd\":\"status\"}", VSS_ERR_PARSE, false },
        { "{\"cmd\":\"status\"}", VSS_ERR_BAD_REQUEST, false },
        { "{\"id\":-1,\"cmd\":\"status\"}", VSS_ERR_BAD_REQUEST, false },
        { "{\"id\":9007199254740992,\"cmd\":\"status\"}", VSS_ERR_BAD_REQUEST, false },
        { "{\"id\":2.0,\"cmd\":\"status\"}", VSS_ERR_BAD_REQUEST, false },
        { "{\"id\":null,\"cmd\":\"status\"}", VSS_ERR_BAD_REQUEST, false },
        { "{\"id\":3}", VSS_ERR_BAD_REQUEST, true },
        { "{\"id\":3,\"cmd\":null}", VSS_ERR_BAD_REQUEST, true },
        { "{\"id\":3,\"cmd\":\"FREEZE\"}", VSS_ERR_UNKNOWN_COMMAND, true },
        { "{\"id\":3,\"cmd\":\"freezeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\"}",
          VSS_ERR_UNKNOWN_COMMAND, true },
        { "{\"id\":4,\"cmd\":\"hello\"}", VSS_ERR_BAD_REQUEST, true },
        { "{\"id\":4,\"cmd\":\"hello\",\"versions\":1}", VSS_ERR_BAD_REQUEST, true },
        { "{\"id\":4,\"cmd\":\"hello\",\"versions\":[0]}", VSS_ERR_BAD_REQUEST, true },
        { "{\"id\":4,\"cmd\":\"hello\",\"versions\":[32]}", VSS_ERR_BAD_REQUEST, true },
        { "{\"id\":4,\"cmd\":\"hello\",\"versions\":[\"1\"]}", VSS_ERR_BAD_REQUEST, true },
        { "{\"id\":4,\"cmd\":\"hello\",\"versions\":[1],\"requestor\":5}",
          VSS_ERR_BAD_REQUEST, true },
        { "{\"id\":5,\"cmd\":\"freeze\",\"thaw_timeout_ms\":0}", VSS_ERR_BAD_REQUEST, true },
        { "{\"id\":5,\"cmd\":\"freeze\",\"thaw_timeout_ms\":3600001}", VSS_ERR_BAD_REQUEST,
          true },
        { "{\"id\":5,\"cmd\":\"freeze\",\"thaw_timeout_ms\":true}", VSS_ERR_BAD_REQUEST, true },
    };
    for (size_t i = 0; i < HV_ARRAY_SIZE(cases); i++) {
        struct vss_request req;
        struct hv_err err = { 0 };
        enum vss_error code;
        bool has_id;
        int ret = vss_request_decode(cases[i].line, strlen(cases[i].line), &req, &has_id, &code,
                                     &err);
        if (ret == 0 || code != cases[i].code || has_id != cases[i].has_id)
            fail_msg("case %zu (%s): ret %d code %s has_id %d", i, cases[i].line, ret,
                     vss_error_name(code), has_id);
        assert_true(err.msg[0] != '\0');                  /* a sentence for the person */
    }
}

static void test_request_decode_ignores_unknown_fields_and_a_trailing_cr(void **state)
{
    struct vss_request req;
    enum vss_error code;
    bool has_id;
    assert_int_equal(decode_req("{\"id\":7,\"cmd\":\"thaw\",\"future\":{\"x\":[1]}}\r", &req,
                                &has_id, &code),
                     0);
    assert_int_equal(req.cmd, VSS_CMD_THAW);
    assert_int_equal(req.id, 7);
    /* fields of another command are not validated for this one */
    assert_int_equal(decode_req("{\"id\":8,\"cmd\":\"status\",\"versions\":\"x\"}", &req,
                                &has_id, &code),
                     0);
}

static void test_request_decode_refuses_lines_over_the_limit(void **state)
{
    size_t len = VSS_MAX_LINE_BYTES;
    char *line = malloc(len);
    struct vss_request req;
    enum vss_error code;
    bool has_id;
    memset(line, ' ', len);
    memcpy(line, "{\"id\":1,\"cmd\":\"status\"}", 23);
    assert_int_equal(vss_request_decode(line, len, &req, &has_id, &code, NULL), -E2BIG);
    assert_int_equal(code, VSS_ERR_TOO_LONG);
    /* one byte less fits (the newline makes it VSS_MAX_LINE_BYTES) */
    assert_int_equal(vss_request_decode(line, len - 1, &req, &has_id, &code, NULL), 0);
    free(line);
}

static void fill_reply(struct vss_reply *rep)
{
    vss_reply_init(rep);
    rep->has_id = true;
    rep->id = 42;
    rep->cmd = VSS_CMD_HELLO;
    rep->state = VSS_STATE_IDLE;
    rep->version = 1;
    rep->versions_mask = 1u << 1;
    snprintf(rep->agent, sizeof(rep->agent), "hvstor-vss 0.1.0");
    rep->thaw_timeout_ms = 10000;
    rep->writer_timeout_ms = 30000;
    assert_int_equal(vss_reply_add_writer(rep, "10-db"), 0);
    assert_int_equal(vss_reply_add_writer(rep, "20-queue"), 0);
    assert_int_equal(vss_reply_add_filesystem(rep, "/var/lib/db", "xfs", "253:2"), 0);
    assert_int_equal(vss_reply_add_filesystem(rep, "/", "ext4", "253:0"), 0);
    rep->total_us = 1234;
    rep->writers_us = 1000;
    assert_int_equal(vss_reply_add_warning(rep, "%s: %d", "careful", 3), 0);
}

static void test_reply_round_trips_with_lists_and_timings(void **state)
{
    struct vss_reply in, out;
    struct hv_err err = { 0 };
    char *line;
    size_t len;
    fill_reply(&in);
    assert_int_equal(vss_reply_encode(&in, &line, &len), 0);
    assert_int_equal(vss_reply_decode(line, len - 1, &out, &err), 0);
    assert_true(out.has_id);
    assert_int_equal(out.id, 42);
    assert_int_equal(out.cmd, VSS_CMD_HELLO);
    assert_true(out.is_ok);
    assert_int_equal(out.version, 1);
    assert_int_equal(out.versions_mask, 1u << 1);
    assert_string_equal(out.agent, "hvstor-vss 0.1.0");
    assert_int_equal(out.thaw_timeout_ms, 10000);
    assert_int_equal(out.writer_timeout_ms, 30000);
    assert_int_equal(out.writer_count, 2);
    assert_string_equal(out.writers[1], "20-queue");
    assert_int_equal(out.filesystem_count, 2);
    assert_string_equal(out.filesystems[0].mount, "/var/lib/db");
    assert_string_equal(out.filesystems[0].type, "xfs");
    assert_string_equal(out.filesystems[1].device, "253:0");
    assert_int_equal(out.total_us, 1234);
    assert_int_equal(out.writers_us, 1000);
    assert_int_equal(out.warning_count, 1);
    assert_string_equal(out.warnings[0], "careful: 3");
    free(line);
    vss_reply_clear(&in);
    vss_reply_clear(&out);

    /* a failed freeze: error object, frozen list, no id */
    vss_reply_init(&in);
    in.cmd = VSS_CMD_FREEZE;
    in.state = VSS_STATE_FROZEN;
    in.thaw_in_ms = 9000;
    in.frozen_us = 77;
    assert_int_equal(vss_reply_add_frozen(&in, "/mnt/a b"), 0);
    vss_reply_fail(&in, VSS_ERR_WRITER_TIMEOUT, "writer %s: too slow", "10-db");
    assert_int_equal(vss_reply_encode(&in, &line, &len), 0);
    assert_int_equal(vss_reply_decode(line, len - 1, &out, &err), 0);
    assert_false(out.has_id);
    assert_false(out.is_ok);
    assert_int_equal(out.error, VSS_ERR_WRITER_TIMEOUT);
    assert_string_equal(out.message, "writer 10-db: too slow");
    assert_int_equal(out.state, VSS_STATE_FROZEN);
    assert_int_equal(out.frozen_count, 1);
    assert_string_equal(out.frozen[0], "/mnt/a b");
    assert_int_equal(out.thaw_in_ms, 9000);
    assert_int_equal(out.frozen_us, 77);
    free(line);
    vss_reply_clear(&in);
    vss_reply_clear(&out);
}

static void test_reply_encode_replaces_bytes_that_are_not_utf8(void **state)
{
    struct vss_reply in, out;
    char *line;
    size_t len;
    vss_reply_init(&in);
    in.cmd = VSS_CMD_STATUS;
    assert_int_equal(vss_reply_add_frozen(&in, "/mnt/\xff\xfe"), 0);
    assert_int_equal(vss_reply_encode(&in, &line, &len), 0);
    assert_int_equal(vss_reply_decode(line, len - 1, &out, NULL), 0);
    assert_string_equal(out.frozen[0], "/mnt/??");
    free(line);
    vss_reply_clear(&in);
    vss_reply_clear(&out);
}

static void test_reply_decode_distrusts_the_guest(void **state)
{
    static const char *const bad[] = {
        "{}",
        "{\"id\":1,\"ok\":true}",                                       /* no state */
        "{\"id\":1,\"ok\":\"yes\",\"state\":\"idle\"}",
        "{\"id\":1,\"ok\":true,\"state\":\"melting\"}",
        "{\"id\":-4,\"ok\":true,\"state\":\"idle\"}",
        "{\"id\":1,\"ok\":true,\"cmd\":\"dance\",\"state\":\"idle\"}",
        "{\"id\":1,\"ok\":false,\"state\":\"idle\"}",                  /* no error object */
        "{\"id\":1,\"ok\":false,\"state\":\"idle\",\"error\":{\"code\":5}}",
        "{\"id\":1,\"ok\":true,\"state\":\"idle\",\"frozen\":[1]}",
        "{\"id\":1,\"ok\":true,\"state\":\"idle\",\"writers\":\"a\"}",
        "{\"id\":1,\"ok\":true,\"state\":\"idle\",\"filesystems\":[{\"mount\":\"/\"}]}",
        "{\"id\":1,\"ok\":true,\"state\":\"idle\",\"timings\":{\"total_us\":-1}}",
        "{\"id\":1,\"ok\":true,\"state\":\"idle\",\"timings\":[]}",
        "{\"id\":1,\"ok\":true,\"state\":\"idle\",\"version\":0}",
        "{\"id\":1,\"ok\":true,\"state\":\"idle\",\"agent\":7}",
        "{\"id\":1,\"ok\":true,\"state\":\"idle\",\"last_auto_thaw\":\"sometimes\"}",
    };
    for (size_t i = 0; i < HV_ARRAY_SIZE(bad); i++) {
        struct vss_reply rep;
        struct hv_err err = { 0 };
        if (vss_reply_decode(bad[i], strlen(bad[i]), &rep, &err) != -EINVAL)
            fail_msg("accepted: %s", bad[i]);
        assert_true(strncmp(err.msg, "reply", 5) == 0);
        assert_null(rep.frozen);                  /* nothing leaks out of a failed decode */
    }
    /* a list longer than the cap */
    size_t cap = 4097 * 4 + 200;
    char *big = malloc(cap), *p = big;
    p += sprintf(p, "{\"id\":1,\"ok\":true,\"state\":\"idle\",\"frozen\":[");
    for (int i = 0; i < 4097; i++)
        p += sprintf(p, "%s\"\"", i ? "," : "");
    sprintf(p, "]}");
    struct vss_reply rep;
    assert_int_equal(vss_reply_decode(big, strlen(big), &rep, NULL), -EINVAL);
    free(big);
    /* an error code from a newer agent is still a failure, with its message */
    const char *newer = "{\"id\":1,\"ok\":false,\"state\":\"idle\",\"error\":{\"code\":"
                        "\"quantum-flux\",\"message\":\"m\"}}";
    assert_int_equal(vss_reply_decode(newer, strlen(newer), &rep, NULL), 0);
    assert_false(rep.is_ok);
    assert_int_equal(rep.error, VSS_ERR_INTERNAL);
    assert_string_equal(rep.message, "m");
    vss_reply_clear(&rep);
}

static void test_names_round_trip(void **state)
{
    for (int i = 0; i < VSS_CMD_COUNT; i++)
        assert_int_equal(vss_cmd_from_name(vss_cmd_name((enum vss_cmd)i)), i);
    for (int i = 0; i < VSS_ERR_COUNT; i++)
        assert_int_equal(vss_error_from_name(vss_error_name((enum vss_error)i)), i);
    for (int i = 0; i < VSS_STATE_COUNT; i++)
        assert_int_equal(vss_state_from_name(vss_state_name((enum vss_state)i)), i);
    for (int i = 0; i < VSS_AUTO_THAW_COUNT; i++)
        assert_int_equal(vss_auto_thaw_from_name(vss_auto_thaw_name((enum vss_auto_thaw)i)), i);
    assert_string_equal(vss_cmd_name(VSS_CMD_NONE), "?");
    assert_int_equal(vss_cmd_from_name("nope"), -1);
}

/* Feed `text` in pieces of `chunk` bytes, collecting lines as "a|b|<long>|". */
static void frame(const char *text, size_t text_len, size_t cap, size_t chunk, char *out)
{
    struct vss_linebuf lb;
    size_t pos = 0;
    out[0] = '\0';
    assert_int_equal(vss_linebuf_init(&lb, cap), 0);
    while (pos < text_len) {
        size_t room;
        char *at = vss_linebuf_space(&lb, &room);
        assert_true(room > 0);
        size_t n = HV_MIN(HV_MIN(room, chunk), text_len - pos);
        memcpy(at, text + pos, n);
        vss_linebuf_commit(&lb, n);
        pos += n;
        const char *line;
        size_t len;
        bool is_overlong;
        while (vss_linebuf_next(&lb, &line, &len, &is_overlong) == 1) {
            if (is_overlong)
                strcat(out, "<long>|");
            else
                strncat(out, line, len), strcat(out, "|");
        }
    }
    vss_linebuf_free(&lb);
}

static void test_linebuf_splits_lines_across_reads(void **state)
{
    char out[256];
    const char *text = "one\ntwo\n\nthree\nfour";
    for (size_t chunk = 1; chunk < 20; chunk++) {
        frame(text, strlen(text), 16, chunk, out);
        assert_string_equal(out, "one|two||three|");      /* "four" has no newline yet */
    }
}

static void test_linebuf_reports_an_overlong_line_once_and_resyncs(void **state)
{
    char out[256];
    /* cap 8: a line of 7 bytes plus '\n' fits, 8 bytes without '\n' do not */
    const char *text = "1234567\n123456789abcdefghij\nok\n12345678\nend\n";
    for (size_t chunk = 1; chunk < 50; chunk++) {
        frame(text, strlen(text), 8, chunk, out);
        assert_string_equal(out, "1234567|<long>|ok|<long>|end|");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_round_trips_for_every_command),
        cmocka_unit_test(test_request_encode_refuses_out_of_range_values),
        cmocka_unit_test(test_request_decode_names_each_kind_of_error),
        cmocka_unit_test(test_request_decode_ignores_unknown_fields_and_a_trailing_cr),
        cmocka_unit_test(test_request_decode_refuses_lines_over_the_limit),
        cmocka_unit_test(test_reply_round_trips_with_lists_and_timings),
        cmocka_unit_test(test_reply_encode_replaces_bytes_that_are_not_utf8),
        cmocka_unit_test(test_reply_decode_distrusts_the_guest),
        cmocka_unit_test(test_names_round_trip),
        cmocka_unit_test(test_linebuf_splits_lines_across_reads),
        cmocka_unit_test(test_linebuf_reports_an_overlong_line_once_and_resyncs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
