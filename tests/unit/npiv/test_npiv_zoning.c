/*
 * `hvctl vm zoning` content: the switch and target commands for a VM's
 * identities, in text and JSON, and proof with a real tgtd that the tgtadm
 * line it prints grants exactly that VM's initiator name.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "npiv.h"
#include "testlib.h"

#define TARGET_WWPN 0x500a098000001111ull

static struct npiv_identity vm(const char *name, uint64_t serial)
{
    struct npiv_identity id;
    memset(&id, 0, sizeof(id));
    snprintf(id.vm_name, sizeof(id.vm_name), "%s", name);
    snprintf(id.iqn, sizeof(id.iqn), "iqn.2026-11.com.example.h1:vm.%s", name);
    id.serial = serial;
    for (unsigned k = 0; k < 4; k++) {
        uint64_t w = 0x5001438000000000ull | serial << 2 | k;
        if (k & 1)
            id.fc[k / 2].wwpn = w;
        else
            id.fc[k / 2].wwnn = w;
    }
    return id;
}

static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)); p++)
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
            return true;
    return false;
}

static void test_zoning_text_has_every_cli_line_for_both_sets(void **state)
{
    struct npiv_identity id = vm("web-1", 7);
    struct npiv_zoning_options opt = {
        .fc_target_wwpn = TARGET_WWPN, .vsan = 10, .zoneset = "prod",
        .iscsi_target = "iqn.2026-11.com.example:san.t1", .tgt_tid = 3,
    };
    char *text = npiv_zoning_text(&id, &opt);
    assert_non_null(text);

    assert_true(has_line(text, "iSCSI initiator name  iqn.2026-11.com.example.h1:vm.web-1"));
    assert_true(has_line(text, "FC address set A     WWPN 50:01:43:80:00:00:00:1d  "
                               "WWNN 50:01:43:80:00:00:00:1c"));
    assert_true(has_line(text, "FC address set B     WWPN 50:01:43:80:00:00:00:1f  "
                               "WWNN 50:01:43:80:00:00:00:1e"));
    /* Brocade FOS */
    assert_true(has_line(text, "alicreate \"hv_web_1_A\", \"50:01:43:80:00:00:00:1d\""));
    assert_true(has_line(text, "alicreate \"hv_web_1_B\", \"50:01:43:80:00:00:00:1f\""));
    assert_true(has_line(text, "zonecreate \"z_hv_web_1_A\", \"hv_web_1_A; "
                               "50:0a:09:80:00:00:11:11\""));
    assert_true(has_line(text, "zonecreate \"z_hv_web_1_B\", \"hv_web_1_B; "
                               "50:0a:09:80:00:00:11:11\""));
    assert_true(has_line(text, "cfgadd \"prod\", \"z_hv_web_1_A; z_hv_web_1_B\""));
    assert_true(has_line(text, "cfgenable \"prod\""));
    /* Cisco MDS */
    assert_true(has_line(text, "zone name z_hv_web_1_A vsan 10"));
    assert_true(has_line(text, "  member pwwn 50:01:43:80:00:00:00:1d"));
    assert_true(has_line(text, "zone name z_hv_web_1_B vsan 10"));
    assert_true(has_line(text, "  member pwwn 50:01:43:80:00:00:00:1f"));
    assert_true(has_line(text, "  member pwwn 50:0a:09:80:00:00:11:11"));
    assert_true(has_line(text, "zoneset activate name prod vsan 10"));
    /* target ACLs */
    assert_true(has_line(text, "tgtadm --lld iscsi --mode target --op bind --tid 3 "
                               "--initiator-name iqn.2026-11.com.example.h1:vm.web-1"));
    assert_true(has_line(text, "targetcli /iscsi/iqn.2026-11.com.example:san.t1/tpg1/acls "
                               "create iqn.2026-11.com.example.h1:vm.web-1"));
    assert_true(has_line(text, "targetcli /qla2xxx/50:0a:09:80:00:00:11:11/acls create "
                               "50:01:43:80:00:00:00:1f"));
    assert_null(strstr(text, "TARGET_WWPN"));           /* nothing left to fill in */
    assert_null(strstr(text, "placeholders"));
    free(text);
}

static void test_zoning_json_and_text_say_the_same(void **state)
{
    struct npiv_identity id = vm("db", 9);
    json_t *j = npiv_zoning_json(&id, NULL);
    char *text = npiv_zoning_text(&id, NULL);
    char wwpn_a[24];

    assert_non_null(j);
    assert_non_null(text);
    npiv_wwn_colon(id.fc[0].wwpn, wwpn_a);
    assert_string_equal(json_string_value(json_object_get(j, "iqn")), id.iqn);
    assert_true(json_is_null(json_object_get(j, "fc_target")));
    json_t *zones = json_object_get(j, "zones");
    assert_int_equal(json_array_size(zones), 2);
    json_t *za = json_array_get(zones, 0);
    assert_string_equal(json_string_value(json_object_get(za, "name")), "z_hv_db_A");
    assert_string_equal(json_string_value(json_array_get(json_object_get(za, "members"), 0)),
                        wwpn_a);
    assert_string_equal(json_string_value(json_array_get(json_object_get(za, "members"), 1)),
                        "TARGET_WWPN");

    /* every command of the JSON is a line of the text, and placeholders are explained */
    const char *kinds[] = { "brocade", "cisco_mds", "tgtadm", "targetcli" };
    size_t lines = 0;
    for (size_t k = 0; k < 4; k++) {
        json_t *arr = json_object_get(json_object_get(j, "commands"), kinds[k]), *it;
        size_t i;
        assert_true(json_array_size(arr) > 0);
        json_array_foreach(arr, i, it) {
            assert_true(has_line(text, json_string_value(it)));
            lines++;
        }
    }
    assert_true(lines >= 20);
    assert_true(has_line(text, "tgtadm --lld iscsi --mode target --op bind --tid TID "
                               "--initiator-name iqn.2026-11.com.example.h1:vm.db"));
    assert_non_null(strstr(text, "Replace the UPPER-CASE placeholders"));
    free(text);
    json_decref(j);
}

/* ------------------------------------------------------------ real tgtd */

/* tgtd is started and stopped by the shell library every tgtd-using test
 * shares: a free port, a control socket no other tgtd on the machine uses. */
#define TGTD_SH "bash -c '. \"$HVSTOR_SRC/tests/testlib/tgtd.sh\" && WORK=%s && "

static int control_port = -1;

static void stop_tgtd(void)
{
    if (control_port >= 0) {
        t_run(NULL, 0, TGTD_SH "CTL=%d && tgt_cleanup'", t_tmpdir(), control_port);
        control_port = -1;
    }
}

static void test_printed_tgtadm_line_lets_exactly_that_vm_in(void **state)
{
    struct npiv_identity id = vm("web1", 11), other = vm("web2", 12);
    const char *target = "iqn.2026-11.com.example:san.npiv-test";
    char out[8192], cmd[1024];
    int port = -1;

    if (t_run(NULL, 0, "command -v tgtd && command -v tgtadm && command -v iscsi-inq") != 0 ||
        geteuid() != 0 || !getenv("HVSTOR_SRC")) {
        skip();
    }
    atexit(stop_tgtd);
    int rc = t_run(out, sizeof(out), TGTD_SH "tgt_pick_ports && tgt_start && echo $PORT $CTL'",
                   t_tmpdir());
    if (rc != 0 || sscanf(out, "%d %d", &port, &control_port) != 2)
        fail_msg("tgtd did not start (exit %d): %s", rc, out);
    assert_int_equal(t_run(NULL, 0, "truncate -s 8M %s", t_path("lun1.img")), 0);
    assert_int_equal(t_run(NULL, 0, "tgtadm -C %d --lld iscsi --op new --mode target --tid 1 "
                           "-T %s", control_port, target), 0);
    assert_int_equal(t_run(NULL, 0, "tgtadm -C %d --lld iscsi --op new --mode logicalunit "
                           "--tid 1 --lun 1 -b %s", control_port, t_path("lun1.img")), 0);

    /* Nobody is in the ACL yet: the VM's login is refused. */
    snprintf(cmd, sizeof(cmd), "timeout 20 iscsi-inq -i %s iscsi://127.0.0.1:%d/%s/1 "
             ">/dev/null 2>&1", id.iqn, port, target);
    assert_int_not_equal(t_run(NULL, 0, "%s", cmd), 0);

    /* Run the tgtadm line exactly as printed (pointed at this tgtd's control port). */
    struct npiv_zoning_options opt = { .iscsi_target = target, .tgt_tid = 1 };
    json_t *j = npiv_zoning_json(&id, &opt);
    const char *line = json_string_value(json_array_get(
        json_object_get(json_object_get(j, "commands"), "tgtadm"), 0));
    assert_non_null(line);
    assert_true(strncmp(line, "tgtadm ", 7) == 0);
    assert_int_equal(t_run(NULL, 0, "tgtadm -C %d %s", control_port, line + 7), 0);
    json_decref(j);

    assert_int_equal(t_run(out, sizeof(out), "tgtadm -C %d --lld iscsi --op show --mode target",
                           control_port), 0);
    assert_non_null(strstr(out, id.iqn));
    /* The VM gets in with its own name, and the LUN answers INQUIRY ... */
    assert_int_equal(t_run(out, sizeof(out), "%s", cmd), 0);
    /* ... while another VM's name is still refused. */
    assert_int_not_equal(t_run(NULL, 0, "timeout 20 iscsi-inq -i %s iscsi://127.0.0.1:%d/%s/1 "
                               ">/dev/null 2>&1", other.iqn, port, target), 0);
    stop_tgtd();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zoning_text_has_every_cli_line_for_both_sets),
        cmocka_unit_test(test_zoning_json_and_text_say_the_same),
        cmocka_unit_test(test_printed_tgtadm_line_lets_exactly_that_vm_in),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
