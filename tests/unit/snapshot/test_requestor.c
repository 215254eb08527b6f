/* The requestor against hostile or broken agents (a scripted fake on a Unix
 * socket, in a thread): stale answers are skipped, garbage and over-long
 * lines are errors with a message, silence is a timeout, a version mismatch
 * is refused, and "auto-thawed" comes back as ETIMEDOUT. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "snapshot.h"
#include "testlib.h"

/* The fake: for each request line it reads, sends the next scripted reply
 * with "%ID%" replaced by the request's id (found textually). */
struct fake {
    int listen_fd;
    const char *const *script;
    int count;
};

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    int fd = accept(f->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    char buf[200000];
    size_t have = 0;
    for (int i = 0; i < f->count; i++) {
        char *nl;
        while (!(nl = memchr(buf, '\n', have))) {
            ssize_t n = read(fd, buf + have, sizeof(buf) - have);
            if (n <= 0)
                goto out;
            have += (size_t)n;
        }
        long id = -1;
        char *p = strstr(buf, "\"id\":");
        if (p && p < nl)
            id = strtol(p + 5, NULL, 10);
        size_t line = (size_t)(nl - buf) + 1;
        memmove(buf, buf + line, have - line);
        have -= line;
        const char *r = f->script[i];
        if (!r)
            continue; /* say nothing: the requestor times out */
        char out[150000];
        size_t o = 0;
        for (const char *s = r; *s && o < sizeof(out) - 32; s++) {
            if (!strncmp(s, "%ID%", 4)) {
                o += (size_t)snprintf(out + o, sizeof(out) - o, "%ld", id);
                s += 3;
            } else if (!strncmp(s, "%PREV%", 6)) {
                o += (size_t)snprintf(out + o, sizeof(out) - o, "%ld", id - 1);
                s += 5;
            } else {
                out[o++] = *s;
            }
        }
        if (write(fd, out, o) < 0)
            break;
    }
    usleep(800000); /* outlive the requestor's 500 ms timeout */
out:
    close(fd);
    return NULL;
}

static int run(const char *const *script, int count, enum snap_agent_kind kind,
               int (*op)(struct snap_agent *, struct hv_err *), struct hv_err *err)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/fake%d.sock", t_tmpdir(), rand());
    struct fake f = {.script = script, .count = count};
    f.listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    assert_int_equal(bind(f.listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(f.listen_fd, 1), 0);
    pthread_t t;
    pthread_create(&t, NULL, fake_main, &f);
    struct snap_agent *a = NULL;
    int ret = snap_agent_open(kind, path, 500, &a, err);
    if (ret == 0 && op)
        ret = op(a, err);
    snap_agent_close(a);
    pthread_join(t, NULL);
    close(f.listen_fd);
    unlink(path);
    return ret;
}

#define HELLO_OK                                                                                  \
    "{\"id\":%ID%,\"ok\":true,\"cmd\":\"hello\",\"state\":\"idle\",\"version\":1,"                \
    "\"versions\":[1],\"agent\":\"fake 1\",\"thaw_timeout_ms\":10000,"                            \
    "\"writer_timeout_ms\":30000,\"writers\":[],\"filesystems\":[],"                              \
    "\"timings\":{\"total_us\":1}}\n"

static int do_thaw(struct snap_agent *a, struct hv_err *err)
{
    return snap_agent_thaw(a, err);
}

static int do_freeze(struct snap_agent *a, struct hv_err *err)
{
    return snap_agent_freeze(a, 0, err);
}

static void test_vss_stale_answers_are_skipped_and_auto_thaw_is_etimedout(void **state)
{
    (void)state;
    struct hv_err err = {0};
    const char *script[] = {
        HELLO_OK,
        /* an answer to an older request first, then ours: auto-thawed */
        "{\"id\":%PREV%,\"ok\":true,\"cmd\":\"status\",\"state\":\"idle\","
        "\"timings\":{\"total_us\":1}}\n"
        "{\"id\":%ID%,\"ok\":false,\"cmd\":\"thaw\",\"state\":\"idle\",\"error\":{\"code\":"
        "\"auto-thawed\",\"message\":\"thawed on my own after 10000 ms\"},"
        "\"timings\":{\"total_us\":1}}\n",
    };
    int ret = run(script, 2, SNAP_AGENT_HVSTOR_VSS, do_thaw, &err);
    assert_int_equal(ret, -ETIMEDOUT);
    assert_non_null(strstr(err.msg, "auto-thawed"));
}

static void test_vss_garbage_overlong_silence_and_versions(void **state)
{
    (void)state;
    struct hv_err err = {0};
    const char *garbage[] = {HELLO_OK, "this is not json\n"};
    assert_int_equal(run(garbage, 2, SNAP_AGENT_HVSTOR_VSS, do_freeze, &err), -EPROTO);
    assert_non_null(strstr(err.msg, "malformed reply to freeze"));

    static char longline[100000];
    memset(longline, 'x', sizeof(longline) - 2);
    longline[sizeof(longline) - 2] = '\n';
    const char *overlong[] = {HELLO_OK, longline};
    assert_int_equal(run(overlong, 2, SNAP_AGENT_HVSTOR_VSS, do_freeze, &err), -EMSGSIZE);

    const char *silent[] = {HELLO_OK, NULL};
    assert_int_equal(run(silent, 2, SNAP_AGENT_HVSTOR_VSS, do_thaw, &err), -ETIMEDOUT);
    assert_non_null(strstr(err.msg, "no answer"));

    const char *v2[] = {"{\"id\":%ID%,\"ok\":false,\"cmd\":\"hello\",\"state\":\"idle\","
                        "\"error\":{\"code\":\"unsupported-version\",\"message\":\"I speak "
                        "2\"},\"timings\":{\"total_us\":1}}\n"};
    assert_int_equal(run(v2, 1, SNAP_AGENT_HVSTOR_VSS, NULL, &err), -EPROTONOSUPPORT);
}

static int do_info(struct snap_agent *a, struct hv_err *err)
{
    struct snap_agent_info info;
    int ret = snap_agent_info(a, &info, err);
    if (ret == 0 && (!info.is_frozen || strcmp(info.name, "qemu-ga 9.9")))
        return -EINVAL;
    return ret;
}

static void test_qga_sync_skips_stale_output_and_errors_carry_desc(void **state)
{
    (void)state;
    struct hv_err err = {0};
    const char *ok[] = {
        /* stale output from before, then the delimiter and our sync id */
        "{\"return\": 77}\n\xff{\"return\": %ID%}\n",
        "{\"return\": {\"version\": \"9.9\", \"supported_commands\": []}}\n",
        "{\"return\": \"thawed\"}\n",
        "{\"return\": \"frozen\"}\n",
    };
    assert_int_equal(run(ok, 4, SNAP_AGENT_QEMU_GA, do_info, &err), 0);
    const char *refused[] = {
        "\xff{\"return\": %ID%}\n",
        "{\"return\": {\"version\": \"9.9\"}}\n",
        "{\"return\": \"thawed\"}\n",
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"freeze is disabled\"}}\n",
    };
    assert_int_equal(run(refused, 4, SNAP_AGENT_QEMU_GA, do_freeze, &err), -EPROTO);
    assert_non_null(strstr(err.msg, "freeze is disabled"));
}

static void test_agent_spec_parsing(void **state)
{
    (void)state;
    struct hv_err err = {0};
    enum snap_agent_kind k;
    char p[256];
    assert_int_equal(snap_agent_parse_spec("hvstor-vss:/run/vm1.sock", &k, p, sizeof(p), &err), 0);
    assert_int_equal(k, SNAP_AGENT_HVSTOR_VSS);
    assert_string_equal(p, "/run/vm1.sock");
    assert_int_equal(snap_agent_parse_spec("qemu-ga:/x", &k, p, sizeof(p), &err), 0);
    assert_int_equal(k, SNAP_AGENT_QEMU_GA);
    assert_int_equal(snap_agent_parse_spec("vmware:/x", &k, p, sizeof(p), &err), -EINVAL);
    assert_non_null(strstr(err.msg, "expected hvstor-vss:PATH or qemu-ga:PATH"));
    assert_int_equal(snap_agent_parse_spec("qemu-ga:", &k, p, sizeof(p), &err), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vss_stale_answers_are_skipped_and_auto_thaw_is_etimedout),
        cmocka_unit_test(test_vss_garbage_overlong_silence_and_versions),
        cmocka_unit_test(test_qga_sync_skips_stale_output_and_errors_carry_desc),
        cmocka_unit_test(test_agent_spec_parsing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
