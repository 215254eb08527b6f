/*
 * Unit tests for the agent's state machine, without filesystems (no root
 * needed): real writer hooks as child processes, the real reactor, replies
 * captured from the send callback.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testlib.h"
#include "vss-agent.h"

#define MAX_REPLIES 64

struct fixture {
    struct hv_reactor *r;
    struct vss_agent *a;
    char *replies[MAX_REPLIES];
    int count;
    char dir[512];
    char calls[600];
    bool is_shut_down;
};

static void capture(void *arg, const char *line, size_t len)
{
    struct fixture *f = arg;
    assert_true(len > 0 && line[len - 1] == '\n');
    assert_true(f->count < MAX_REPLIES);
    f->replies[f->count++] = strndup(line, len - 1);
}

static void make_hook(struct fixture *f, const char *name)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/writers/%s", f->dir, name);
    FILE *h = fopen(path, "w");
    assert_non_null(h);
    fprintf(h, "#!/bin/sh\necho \"%s $1\" >>%s\n"
               "[ -e %s/hang.%s.$1 ] && exec sleep 5\n"
               "[ -e %s/fail.%s.$1 ] && exit 1\nexit 0\n",
            name, f->calls, f->dir, name, f->dir, name);
    fclose(h);
    chmod(path, 0755);
}

static void touch(struct fixture *f, const char *name)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    FILE *h = fopen(path, "w");
    assert_non_null(h);
    fclose(h);
}

static int setup_with(void **state, uint32_t thaw_ms, uint32_t writer_ms)
{
    static int n;
    struct fixture *f = calloc(1, sizeof(*f));
    char writers[600], state_path[600];
    struct hv_err err = { 0 };
    snprintf(f->dir, sizeof(f->dir), "%s/agent%d", t_tmpdir(), n++);
    mkdir(f->dir, 0700);
    snprintf(writers, sizeof(writers), "%s/writers", f->dir);
    mkdir(writers, 0700);
    snprintf(f->calls, sizeof(f->calls), "%s/calls", f->dir);
    snprintf(state_path, sizeof(state_path), "%s/state/frozen", f->dir);
    make_hook(f, "10-a");
    make_hook(f, "20-b");
    struct vss_agent_config cfg = {
        .writers_dir = writers,
        .state_path = state_path,
        .has_no_filesystems = true,
        .thaw_timeout_ms = thaw_ms,
        .writer_timeout_ms = writer_ms,
    };
    assert_int_equal(hv_reactor_create(&f->r), 0);
    if (vss_agent_create(f->r, &cfg, &f->a, &err) < 0)
        fail_msg("%s", err.msg);
    vss_agent_connected(f->a, capture, f);
    *state = f;
    return 0;
}

static int setup(void **state) { return setup_with(state, 10000, 5000); }
static int setup_short(void **state) { return setup_with(state, 300, 300); }

static int teardown(void **state)
{
    struct fixture *f = *state;
    vss_agent_destroy(f->a);
    hv_reactor_run_once(f->r, 0);
    hv_reactor_destroy(f->r);
    for (int i = 0; i < f->count; i++)
        free(f->replies[i]);
    free(f);
    return 0;
}

/* Send a line and run the loop until `want` replies in all, at most 5 s. */
static void send_wait(struct fixture *f, const char *line, int want)
{
    if (line)
        vss_agent_handle_line(f->a, line, strlen(line));
    uint64_t deadline = hv_now_ns() + 5000000000ull;
    while (f->count < want && hv_now_ns() < deadline)
        hv_reactor_run_once(f->r, 50);
    if (f->count < want)
        fail_msg("waited for reply %d to %s, have %d", want, line ? line : "(none)", f->count);
}

static const char *last(struct fixture *f) { return f->replies[f->count - 1]; }

static void expect_in(const char *reply, const char *what)
{
    if (!strstr(reply, what))
        fail_msg("expected %s in %s", what, reply);
}

static void run_for(struct fixture *f, uint64_t ms)
{
    uint64_t deadline = hv_now_ns() + ms * 1000000;
    while (hv_now_ns() < deadline)
        hv_reactor_run_once(f->r, 20);
}

static char *calls(struct fixture *f)
{
    static char buf[1024];
    FILE *h = fopen(f->calls, "r");
    size_t n = h ? fread(buf, 1, sizeof(buf) - 1, h) : 0;
    if (h)
        fclose(h);
    buf[n] = '\0';
    for (char *p = buf; *p; p++)
        if (*p == '\n')
            *p = ',';
    unlink(f->calls);
    return buf;
}

static void test_freeze_then_thaw_calls_writers_in_order(void **state)
{
    struct fixture *f = *state;
    send_wait(f, "{\"id\":1,\"cmd\":\"freeze\"}", 1);
    expect_in(last(f), "\"id\":1,\"ok\":true,\"cmd\":\"freeze\",\"state\":\"frozen\"");
    expect_in(last(f), "\"thaw_in_ms\":");
    send_wait(f, "{\"id\":2,\"cmd\":\"thaw\"}", 2);
    expect_in(last(f), "\"id\":2,\"ok\":true,\"cmd\":\"thaw\",\"state\":\"idle\"");
    assert_string_equal(calls(f), "10-a prepare,20-b prepare,10-a freeze,20-b freeze,"
                                  "20-b thaw,10-a thaw,");
    assert_true(vss_agent_is_idle(f->a));
}

static void test_failing_writer_rolls_back_the_ones_called(void **state)
{
    struct fixture *f = *state;
    touch(f, "fail.20-b.freeze");
    send_wait(f, "{\"id\":1,\"cmd\":\"freeze\"}", 1);
    expect_in(last(f), "\"ok\":false");
    expect_in(last(f), "\"code\":\"writer-failed\"");
    expect_in(last(f), "writer 20-b freeze: exited with status 1");
    assert_string_equal(calls(f), "10-a prepare,20-b prepare,10-a freeze,20-b freeze,"
                                  "20-b abort,10-a abort,");
    assert_true(vss_agent_is_idle(f->a));
}

static void test_requests_while_a_hook_runs(void **state)
{
    struct fixture *f = *state;
    touch(f, "hang.10-a.prepare");
    vss_agent_handle_line(f->a, "{\"id\":1,\"cmd\":\"prepare\"}", 24);
    run_for(f, 100);
    assert_int_equal(f->count, 0);
    send_wait(f, "{\"id\":2,\"cmd\":\"status\"}", 1);
    expect_in(last(f), "\"id\":2,\"ok\":true,\"cmd\":\"status\",\"state\":\"preparing\"");
    send_wait(f, "{\"id\":3,\"cmd\":\"freeze\"}", 2);
    expect_in(last(f), "\"code\":\"busy\"");
    send_wait(f, "{\"id\":4,\"cmd\":\"hello\",\"versions\":[1]}", 3);
    expect_in(last(f), "\"writers\":[\"10-a\",\"20-b\"]");
    send_wait(f, "{\"id\":5,\"cmd\":\"abort\"}", 5);
    expect_in(f->replies[3], "\"id\":1,\"ok\":false");
    expect_in(f->replies[3], "\"code\":\"aborted\"");
    expect_in(f->replies[4], "\"id\":5,\"ok\":true,\"cmd\":\"abort\",\"state\":\"idle\"");
    assert_string_equal(calls(f), "10-a prepare,10-a abort,");
}

static void test_hook_over_its_time_limit_is_killed(void **state)
{
    struct fixture *f = *state;             /* writer limit 300 ms */
    touch(f, "hang.20-b.prepare");
    uint64_t t0 = hv_now_ns();
    send_wait(f, "{\"id\":1,\"cmd\":\"prepare\"}", 1);
    assert_true(hv_now_ns() - t0 < 3000000000ull);
    expect_in(last(f), "\"code\":\"writer-timeout\"");
    expect_in(last(f), "did not finish within 300 ms");
    assert_string_equal(calls(f), "10-a prepare,20-b prepare,20-b abort,10-a abort,");
}

static void test_no_thaw_in_time_thaws_on_its_own(void **state)
{
    struct fixture *f = *state;             /* thaw limit 300 ms */
    send_wait(f, "{\"id\":1,\"cmd\":\"freeze\"}", 1);
    expect_in(last(f), "\"state\":\"frozen\"");
    run_for(f, 600);
    assert_int_equal(f->count, 1);          /* an auto-thaw sends nothing by itself */
    send_wait(f, "{\"id\":2,\"cmd\":\"status\"}", 2);
    expect_in(last(f), "\"state\":\"idle\"");
    expect_in(last(f), "\"last_auto_thaw\":\"timeout\"");
    send_wait(f, "{\"id\":3,\"cmd\":\"thaw\"}", 3);
    expect_in(last(f), "\"code\":\"auto-thawed\"");
    assert_string_equal(calls(f), "10-a prepare,20-b prepare,10-a freeze,20-b freeze,"
                                  "20-b abort,10-a abort,");
    /* the next cycle starts clean: a timely thaw succeeds */
    send_wait(f, "{\"id\":4,\"cmd\":\"freeze\"}", 4);
    send_wait(f, "{\"id\":5,\"cmd\":\"thaw\"}", 5);
    expect_in(last(f), "\"id\":5,\"ok\":true");
}

static void test_hangup_while_frozen_aborts_and_replies_nowhere(void **state)
{
    struct fixture *f = *state;
    send_wait(f, "{\"id\":1,\"cmd\":\"freeze\"}", 1);
    vss_agent_disconnected(f->a);
    run_for(f, 300);
    assert_true(vss_agent_is_idle(f->a));
    assert_int_equal(f->count, 1);
    vss_agent_connected(f->a, capture, f);
    send_wait(f, "{\"id\":2,\"cmd\":\"status\"}", 2);
    expect_in(last(f), "\"last_auto_thaw\":\"hangup\"");
    assert_string_equal(calls(f), "10-a prepare,20-b prepare,10-a freeze,20-b freeze,"
                                  "20-b abort,10-a abort,");
}

static void test_hangup_during_a_hook_reaches_idle_without_replies(void **state)
{
    struct fixture *f = *state;
    touch(f, "hang.20-b.freeze");
    vss_agent_handle_line(f->a, "{\"id\":1,\"cmd\":\"freeze\"}", 23);
    run_for(f, 150);
    vss_agent_disconnected(f->a);
    vss_agent_connected(f->a, capture, f);      /* a new host arrives at once */
    run_for(f, 500);
    assert_true(vss_agent_is_idle(f->a));
    assert_int_equal(f->count, 0);              /* the old request's reply is not sent */
}

static void test_every_bad_line_gets_exactly_one_reply(void **state)
{
    struct fixture *f = *state;
    static const char *const lines[] = {
        "", "x", "{", "{}", "null", "{\"id\":1}", "{\"id\":1,\"cmd\":\"thaw\"}",
        "{\"id\":1,\"cmd\":\"prepare\",\"extra\":1}", "{\"id\":2,\"cmd\":\"prepare\"}",
        "{\"id\":3,\"cmd\":\"thaw\"}", "{\"id\":4,\"cmd\":\"abort\"}",
        "{\"id\":5,\"cmd\":\"abort\"}",
    };
    for (size_t i = 0; i < HV_ARRAY_SIZE(lines); i++)
        send_wait(f, lines[i], (int)i + 1);
    vss_agent_handle_overlong(f->a);
    assert_int_equal(f->count, (int)HV_ARRAY_SIZE(lines) + 1);
    expect_in(f->replies[7], "\"ok\":true,\"cmd\":\"prepare\",\"state\":\"prepared\"");
    expect_in(f->replies[8], "\"code\":\"bad-state\"");
    expect_in(f->replies[9], "use abort");
    expect_in(f->replies[10], "\"state\":\"idle\"");
    expect_in(last(f), "\"code\":\"too-long\"");
    calls(f);
}

static void done_cb(void *arg) { ((struct fixture *)arg)->is_shut_down = true; }

static void test_shutdown_while_frozen_thaws_first(void **state)
{
    struct fixture *f = *state;
    send_wait(f, "{\"id\":1,\"cmd\":\"freeze\"}", 1);
    vss_agent_shutdown(f->a, done_cb, f);
    uint64_t deadline = hv_now_ns() + 3000000000ull;
    while (!f->is_shut_down && hv_now_ns() < deadline)
        hv_reactor_run_once(f->r, 20);
    assert_true(f->is_shut_down);
    assert_true(vss_agent_is_idle(f->a));
    assert_string_equal(calls(f), "10-a prepare,20-b prepare,10-a freeze,20-b freeze,"
                                  "20-b abort,10-a abort,");
    send_wait(f, "{\"id\":2,\"cmd\":\"freeze\"}", 2);
    expect_in(last(f), "shutting down");
}

static void test_startup_survives_a_damaged_state_file(void **state)
{
    const char *path = t_path("damaged-state");
    FILE *h = fopen(path, "w");
    fputs("{\"frozen\":[{\"mount\":\"/nonexistent/x\",\"device\":\"7:99\"},7,{}]", h);
    fclose(h);
    struct hv_err err = { 0 };
    assert_true(vss_thaw_from_state(path, NULL, 0, &err) >= 0);
    assert_int_equal(access(path, F_OK), -1);           /* removed */
    h = fopen(path, "w");
    fputs("{\"frozen\":[{\"mount\":\"/nonexistent/x\",\"device\":\"7:99\"},7,{}]}", h);
    fclose(h);
    assert_int_equal(vss_thaw_from_state(path, NULL, 0, &err), 0);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(vss_thaw_from_state(path, NULL, 0, &err), 0);   /* none: fine */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_freeze_then_thaw_calls_writers_in_order, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failing_writer_rolls_back_the_ones_called, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_requests_while_a_hook_runs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hook_over_its_time_limit_is_killed, setup_short,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_thaw_in_time_thaws_on_its_own, setup_short,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_hangup_while_frozen_aborts_and_replies_nowhere,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_hangup_during_a_hook_reaches_idle_without_replies,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_bad_line_gets_exactly_one_reply, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_while_frozen_thaws_first, setup,
                                        teardown),
        cmocka_unit_test(test_startup_survives_a_damaged_state_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
