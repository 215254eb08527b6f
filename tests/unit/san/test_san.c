/* Unit tests for san/: decoding of target data, the open-iscsi reader, and
 * session behaviour that needs no target. Each test names what it proves. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "san.h"
#include "testlib.h"

/* VPD 0x83 as tgt 1.0.85 sends it: NAA-6, NAA-3, then a T10 vendor id */
static const uint8_t tgt_vpd83[] = {
    0x00, 0x83, 0x00, 0x38,
    0x01, 0x03, 0x00, 0x10, 0x60, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x0e, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01,
    0x01, 0x03, 0x00, 0x08, 0x30, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01,
    0x02, 0x01, 0x00, 0x10, 'I', 'E', 'T', ' ', ' ', ' ', ' ', ' ',
    '0', '0', '0', '1', '0', '0', '0', '1',
};

static void test_vpd83_prefers_naa6_over_naa3_and_t10(void **state)
{
    char d[SAN_DESIGNATOR_MAX];
    assert_int_equal(san_vpd83_designator(tgt_vpd83, sizeof(tgt_vpd83), d), 0);
    assert_string_equal(d, "naa.60000000000000000e00000000010001");
}

static void test_vpd83_eui64_beats_t10_and_t10_is_trimmed_text(void **state)
{
    uint8_t page[64] = {0x00, 0x83, 0x00, 0x00};
    size_t n = 4;
    const uint8_t t10[] = {0x02, 0x01, 0x00, 0x0c, 'V', 'E', 'N', 'D', 'O', 'R', ' ', ' ',
                           'x', '1', ' ', ' '};
    memcpy(page + n, t10, sizeof(t10));
    n += sizeof(t10);
    hv_put_be16(page + 2, (uint16_t)(n - 4));
    char d[SAN_DESIGNATOR_MAX];
    assert_int_equal(san_vpd83_designator(page, n, d), 0);
    assert_string_equal(d, "t10.VENDOR  x1");

    const uint8_t eui[] = {0x01, 0x02, 0x00, 0x08, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
    memcpy(page + n, eui, sizeof(eui));
    n += sizeof(eui);
    hv_put_be16(page + 2, (uint16_t)(n - 4));
    assert_int_equal(san_vpd83_designator(page, n, d), 0);
    assert_string_equal(d, "eui.0123456789abcdef");
}

static void test_vpd83_ignores_target_port_designators(void **state)
{
    /* an NAA with association 1 (target port) does not identify the LUN */
    const uint8_t page[] = {0x00, 0x83, 0x00, 0x0c, 0x01, 0x13, 0x00, 0x08,
                            0x50, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07};
    char d[SAN_DESIGNATOR_MAX];
    assert_int_equal(san_vpd83_designator(page, sizeof(page), d), -ENOENT);
    assert_string_equal(d, "");
}

static void test_vpd83_truncated_descriptor_is_not_read_past_the_buffer(void **state)
{
    uint8_t page[sizeof(tgt_vpd83)];
    memcpy(page, tgt_vpd83, sizeof(page));
    page[7] = 0xff;     /* first descriptor claims 255 bytes */
    char d[SAN_DESIGNATOR_MAX];
    assert_int_equal(san_vpd83_designator(page, sizeof(page), d), -ENOENT);
    assert_int_equal(san_vpd83_designator(page, 3, d), -EINVAL);
}

static void test_report_luns_decodes_peripheral_and_flat_addressing(void **state)
{
    uint8_t buf[8 + 3 * 8] = {0};
    hv_put_be32(buf, 3 * 8);
    buf[8 + 1] = 1;                         /* peripheral LUN 1 */
    buf[16] = 0x40 | 0x01;                  /* flat LUN 0x123 */
    buf[17] = 0x23;
    buf[24 + 1] = 255;
    uint64_t luns[8];
    size_t total;
    assert_int_equal(san_parse_report_luns(buf, sizeof(buf), luns, 8, &total), 3);
    assert_int_equal(total, 3);
    assert_int_equal(luns[0], 1);
    assert_int_equal(luns[1], 0x123);
    assert_int_equal(luns[2], 255);
    /* the list says 3 but only 1 arrived: decode what is there */
    assert_int_equal(san_parse_report_luns(buf, 16, luns, 8, &total), 1);
    assert_int_equal(total, 3);
    hv_put_be32(buf, 7);                    /* not a multiple of 8 */
    assert_int_equal(san_parse_report_luns(buf, sizeof(buf), luns, 8, NULL), -EINVAL);
}

static void test_read_capacity16_gives_size_and_physical_block(void **state)
{
    uint8_t buf[32] = {0};
    hv_put_be64(buf, 131071);
    hv_put_be32(buf + 8, 512);
    buf[13] = 3;
    buf[14] = 0x80;
    struct san_capacity cap;
    assert_int_equal(san_parse_read_capacity16(buf, sizeof(buf), &cap), 0);
    assert_int_equal(cap.blocks * cap.block_bytes, 64ull << 20);
    assert_int_equal(cap.physical_block_bytes, 4096);
    assert_true(cap.is_thin);
    hv_put_be32(buf + 8, 0);
    assert_int_equal(san_parse_read_capacity16(buf, sizeof(buf), &cap), -EINVAL);
    assert_int_equal(san_parse_read_capacity16(buf, 8, &cap), -EINVAL);
}

static void test_inquiry_trims_vendor_product_revision(void **state)
{
    uint8_t buf[36];
    memset(buf, ' ', sizeof(buf));
    buf[0] = 0x00;
    buf[4] = 31;
    memcpy(buf + 8, "IET", 3);
    memcpy(buf + 16, "VIRTUAL-DISK", 12);
    memcpy(buf + 32, "0001", 4);
    struct san_inquiry inq;
    assert_int_equal(san_parse_inquiry(buf, sizeof(buf), &inq), 0);
    assert_string_equal(inq.vendor, "IET");
    assert_string_equal(inq.product, "VIRTUAL-DISK");
    assert_string_equal(inq.revision, "0001");
    assert_int_equal(inq.device_type, 0);
    assert_int_equal(san_parse_inquiry(buf, 20, &inq), -EINVAL);
}

static void test_pr_out_cdb_and_parameters_follow_spc(void **state)
{
    uint8_t cdb[10], param[24];
    san_pr_out_build(cdb, param, SAN_PR_PREEMPT_AND_ABORT,
                     SAN_PR_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY, 0x1122334455667788ull, 0xa1);
    assert_int_equal(cdb[0], 0x5f);
    assert_int_equal(cdb[1], 0x05);
    assert_int_equal(cdb[2], 0x05);
    assert_int_equal(hv_be32(cdb + 5), 24);
    assert_int_equal(hv_be64(param), 0x1122334455667788ull);
    assert_int_equal(hv_be64(param + 8), 0xa1);
    san_pr_in_build(cdb, 1, 256);
    assert_int_equal(cdb[0], 0x5e);
    assert_int_equal(cdb[1], 1);
    assert_int_equal(hv_be16(cdb + 7), 256);
}

static void test_pr_in_keys_and_reservation_decode(void **state)
{
    uint8_t keys[8 + 16] = {0};
    hv_put_be32(keys, 9);
    hv_put_be32(keys + 4, 16);
    hv_put_be64(keys + 8, 0xaa);
    hv_put_be64(keys + 16, 0xbb);
    struct san_pr_status pr;
    memset(&pr, 0, sizeof(pr));
    assert_int_equal(san_parse_pr_keys(keys, sizeof(keys), &pr), 0);
    assert_int_equal(pr.generation, 9);
    assert_int_equal(pr.key_count, 2);
    assert_int_equal(pr.keys[1], 0xbb);

    uint8_t res[24] = {0};
    hv_put_be32(res + 4, 16);
    hv_put_be64(res + 8, 0xaa);
    res[21] = 0x05;
    assert_int_equal(san_parse_pr_reservation(res, sizeof(res), &pr), 0);
    assert_true(pr.is_reserved);
    assert_int_equal(pr.holder_key, 0xaa);
    assert_int_equal(pr.type, 5);
    hv_put_be32(res + 4, 0);
    assert_int_equal(san_parse_pr_reservation(res, 8, &pr), 0);
    assert_false(pr.is_reserved);
}

static void test_sense_helpers_read_fixed_and_descriptor_formats(void **state)
{
    const uint8_t fixed[18] = {0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00};
    const uint8_t desc[8] = {0x72, 0x06, 0x29, 0x00};
    assert_int_equal(san_sense_key(fixed, sizeof(fixed)), 5);
    assert_int_equal(san_sense_asc_ascq(fixed, sizeof(fixed)), 0x2100);
    assert_int_equal(san_sense_key(desc, sizeof(desc)), 6);
    assert_int_equal(san_sense_asc_ascq(desc, sizeof(desc)), 0x2900);
    assert_int_equal(san_sense_key(fixed, 2), -1);
}

/* -------------------------------------------------------- open-iscsi */

static void write_text(const char *path, const char *text)
{
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "mkdir -p \"$(dirname '%s')\"", path);
    assert_int_equal(system(cmd), 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_node_record_parse_names_file_and_line_on_error(void **state)
{
    const char *good = "# BEGIN RECORD 2.1.8\nnode.name = iqn.2001-04.com.example:disk1\n"
                       "node.tpgt = 1\nnode.startup = automatic\n"
                       "node.session.auth.password = do-not-keep\n"
                       "node.conn[0].address = 192.0.2.10\nnode.conn[0].port = 3260\n";
    struct san_host_node n;
    struct hv_err err = {0};
    assert_int_equal(san_parse_node_record(good, strlen(good), "rec", &n, &err), 0);
    assert_string_equal(n.target, "iqn.2001-04.com.example:disk1");
    assert_string_equal(n.address, "192.0.2.10");
    assert_int_equal(n.port, 3260);
    assert_int_equal(n.tpgt, 1);
    assert_string_equal(n.startup, "automatic");

    const char *bad = "node.name = iqn.x\nnode.conn[0].port = 99999\n";
    assert_int_equal(san_parse_node_record(bad, strlen(bad), "/etc/iscsi/nodes/x", &n, &err),
                     -EINVAL);
    assert_non_null(strstr(err.msg, "/etc/iscsi/nodes/x: line 2"));
    const char *noeq = "node.name iqn.x\n";
    assert_int_equal(san_parse_node_record(noeq, strlen(noeq), "f", &n, &err), -EINVAL);
    assert_int_equal(san_parse_node_record("", 0, "f", &n, &err), -EINVAL);
}

static void test_initiator_name_file_parse(void **state)
{
    char name[SAN_NAME_MAX];
    const char *t = "## DO NOT EDIT\n#InitiatorName=iqn.commented\n"
                    "InitiatorName=iqn.1993-08.org.debian:01:abc  \n";
    assert_int_equal(san_parse_initiator_name(t, strlen(t), name), 0);
    assert_string_equal(name, "iqn.1993-08.org.debian:01:abc");
    assert_int_equal(san_parse_initiator_name("# nothing\n", 10, name), -ENOENT);
}

static void test_host_config_finds_what_the_host_uses(void **state)
{
    const char *root = t_path("root");
    char p[4096];
    snprintf(p, sizeof(p), "%s/etc/iscsi/initiatorname.iscsi", root);
    write_text(p, "InitiatorName=iqn.1993-08.org.debian:01:host\n");
    snprintf(p, sizeof(p), "%s/etc/iscsi/nodes/iqn.2001-04.com.example:a/"
             "192.0.2.10,3260,1/default", root);
    write_text(p, "node.name = iqn.2001-04.com.example:a\nnode.tpgt = 1\n"
                  "node.conn[0].address = 192.0.2.10\nnode.conn[0].port = 3260\n");
    /* old layout: the portal entry is the record itself */
    snprintf(p, sizeof(p), "%s/etc/iscsi/nodes/iqn.2001-04.com.example:b/192.0.2.11,3261", root);
    write_text(p, "node.name = iqn.2001-04.com.example:b\nnode.conn[0].port = 3261\n");
    snprintf(p, sizeof(p), "%s/sys/class/iscsi_session/session3/targetname", root);
    write_text(p, "iqn.2001-04.com.example:a\n");
    snprintf(p, sizeof(p), "%s/sys/class/iscsi_connection/connection3:0/persistent_address",
             root);
    write_text(p, "192.0.2.10\n");
    snprintf(p, sizeof(p), "%s/sys/class/iscsi_connection/connection3:0/persistent_port", root);
    write_text(p, "3260\n");
    snprintf(p, sizeof(p), "%s/sys/class/iscsi_session/session3/device/target2:0:0/2:0:0:1/"
             "block/sdb/size", root);
    write_text(p, "131072\n");
    snprintf(p, sizeof(p), "%s/sys/class/iscsi_session/session3/device/target2:0:0/2:0:0:1/"
             "vpd_pg83", root);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fwrite(tgt_vpd83, 1, sizeof(tgt_vpd83), f);
    fclose(f);

    struct san_host_config *cfg;
    struct hv_err err = {0};
    assert_int_equal(san_host_config_read(root, &cfg, &err), 0);
    assert_string_equal(cfg->initiator_name, "iqn.1993-08.org.debian:01:host");
    assert_int_equal(cfg->node_count, 2);
    assert_int_equal(cfg->session_count, 1);
    assert_int_equal(cfg->sessions[0].sid, 3);
    assert_string_equal(cfg->sessions[0].address, "192.0.2.10");
    assert_int_equal(cfg->sessions[0].port, 3260);
    assert_int_equal(cfg->sessions[0].lun_count, 1);
    assert_string_equal(cfg->sessions[0].luns[0].device, "sdb");
    assert_string_equal(cfg->sessions[0].luns[0].designator,
                        "naa.60000000000000000e00000000010001");
    const struct san_host_session *who = NULL;
    /* by designator, whatever the address the VM would use */
    assert_true(san_host_uses_lun(cfg, "iqn.other", 9, "naa.60000000000000000e00000000010001",
                                  &who));
    assert_int_equal(who->sid, 3);
    assert_false(san_host_uses_lun(cfg, "iqn.2001-04.com.example:a", 1, "naa.6999", NULL));
    /* without a designator: by target and LUN */
    assert_true(san_host_uses_lun(cfg, "iqn.2001-04.com.example:a", 1, NULL, NULL));
    assert_false(san_host_uses_lun(cfg, "iqn.2001-04.com.example:a", 2, NULL, NULL));
    san_host_config_free(cfg);

    /* a malformed record is an error naming it */
    snprintf(p, sizeof(p), "%s/etc/iscsi/nodes/iqn.2001-04.com.example:a/"
             "192.0.2.10,3260,1/default", root);
    write_text(p, "node.name = iqn.2001-04.com.example:a\ngarbage line\n");
    assert_int_equal(san_host_config_read(root, &cfg, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "192.0.2.10,3260,1/default: line 2"));

    /* an empty root is a host without open-iscsi, not an error */
    assert_int_equal(san_host_config_read(t_path("empty"), &cfg, &err), 0);
    assert_int_equal(cfg->node_count + cfg->session_count, 0);
    assert_string_equal(cfg->initiator_name, "");
    san_host_config_free(cfg);
}

/* ------------------------------------------------------------ session */

struct result {
    bool is_done;
    int status;
    char msg[512];
};

static void on_connect(void *arg, int status, const char *msg)
{
    struct result *r = arg;
    r->status = status;
    snprintf(r->msg, sizeof(r->msg), "%s", msg);
    r->is_done = true;
}

static void on_cmd(struct san_cmd *cmd)
{
    *(int *)cmd->cb_arg += 1;
}

static void test_first_login_failure_is_reported_and_queued_commands_fail(void **state)
{
    struct hv_reactor *r;
    assert_int_equal(hv_reactor_create(&r), 0);
    char portal[64];
    snprintf(portal, sizeof(portal), "127.0.0.1:%d", t_free_port());
    struct san_session_options o = {
        .portal = portal, .target = "iqn.2026-11.test:none", .initiator = "iqn.2026-11.test:vm",
    };
    struct san_session *s;
    struct hv_err err = {0};
    assert_int_equal(san_session_create(r, &o, &s, &err), 0);
    uint8_t isid[6];
    san_session_isid(s, isid);
    assert_int_equal(isid[0], 0x80);

    int completions = 0;
    struct san_cmd cmd;
    memset(&cmd, 0, sizeof(cmd));
    cmd.cdb_len = 6;    /* TEST UNIT READY */
    cmd.done = on_cmd;
    cmd.cb_arg = &completions;
    struct result res = {0};
    assert_int_equal(san_session_connect(s, on_connect, &res), 0);
    assert_int_equal(san_session_submit(s, &cmd), 0);
    assert_int_equal(completions, 0);   /* never from inside submit */
    hv_reactor_run_until(r, &res.is_done);
    assert_int_equal(res.status, -ECONNREFUSED);
    assert_non_null(strstr(res.msg, portal));
    assert_int_equal(completions, 1);
    assert_int_equal(cmd.transport, SAN_TRANSPORT_FAILED);
    assert_int_equal(cmd.status, SAN_STATUS_CHECK_CONDITION);
    assert_int_equal(san_sense_key(cmd.sense, cmd.sense_len), 2);  /* NOT READY */
    assert_int_equal(san_session_state(s), SAN_STATE_IDLE);
    assert_int_equal(san_session_outstanding(s), 0);

    /* malformed commands are refused up front, without a completion */
    cmd.cdb_len = 3;
    assert_int_equal(san_session_submit(s, &cmd), -EINVAL);
    cmd.cdb_len = 10;
    cmd.dir = SAN_XFER_READ;
    cmd.xfer_bytes = 512;
    assert_int_equal(san_session_submit(s, &cmd), -EINVAL);     /* no iov */
    assert_int_equal(completions, 1);
    san_session_close(s);
    hv_reactor_destroy(r);
}

static void test_close_fails_queued_commands_with_closed(void **state)
{
    struct hv_reactor *r;
    assert_int_equal(hv_reactor_create(&r), 0);
    struct san_session_options o = {
        .portal = "127.0.0.1:9", .target = "iqn.2026-11.test:none",
        .initiator = "iqn.2026-11.test:vm", .isid_random = 0x123456, .isid_qualifier = 7,
    };
    struct san_session *s;
    assert_int_equal(san_session_create(r, &o, &s, NULL), 0);
    char text[16];
    san_session_isid_text(s, text);
    assert_string_equal(text, "0x801234560007");
    int completions = 0;
    struct san_cmd cmd[3];
    memset(cmd, 0, sizeof(cmd));
    for (int i = 0; i < 3; i++) {
        cmd[i].cdb_len = 6;
        cmd[i].done = on_cmd;
        cmd[i].cb_arg = &completions;
        assert_int_equal(san_session_submit(s, &cmd[i]), 0);
    }
    assert_int_equal(san_session_outstanding(s), 3);
    san_session_close(s);
    assert_int_equal(completions, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(cmd[i].transport, SAN_TRANSPORT_CLOSED);
    }
    hv_reactor_destroy(r);
}

/* Commands still waiting for a connection: an abort takes them out of line
 * (TASK ABORTED, never sent), a LUN RESET takes every one of its LUN, the
 * TMF's own answer comes on a later turn, and a finished command cannot be
 * aborted. */
static void test_waiting_commands_are_aborted_without_the_target(void **state)
{
    struct hv_reactor *r;
    assert_int_equal(hv_reactor_create(&r), 0);
    struct san_session_options o = {
        .portal = "127.0.0.1:9", .target = "iqn.2026-11.test:none",
        .initiator = "iqn.2026-11.test:vm",
    };
    struct san_session *s;
    assert_int_equal(san_session_create(r, &o, &s, NULL), 0);
    int completions = 0;
    struct san_cmd cmd[4];
    memset(cmd, 0, sizeof(cmd));
    for (int i = 0; i < 4; i++) {
        cmd[i].cdb_len = 6;
        cmd[i].lun = i == 3 ? 2 : 1;
        cmd[i].done = on_cmd;
        cmd[i].cb_arg = &completions;
        assert_int_equal(san_session_submit(s, &cmd[i]), 0);
    }
    struct result abort_res = {0}, reset_res = {0};
    assert_int_equal(san_cmd_abort(s, &cmd[0], on_connect, &abort_res), 0);
    assert_false(abort_res.is_done);                    /* never inside the call */
    hv_reactor_run_until(r, &abort_res.is_done);
    assert_int_equal(abort_res.status, 0);
    assert_int_equal(cmd[0].transport, SAN_TRANSPORT_ABORTED);
    assert_int_equal(cmd[0].status, SAN_STATUS_TASK_ABORTED);
    assert_int_equal(completions, 1);
    assert_int_equal(san_cmd_abort(s, &cmd[0], on_connect, &abort_res), -ENOENT);

    assert_int_equal(san_session_tmf(s, 1, SAN_TMF_LUN_RESET, on_connect, &reset_res), 0);
    hv_reactor_run_until(r, &reset_res.is_done);
    assert_int_equal(reset_res.status, 0);
    assert_int_equal(completions, 3);
    assert_int_equal(cmd[1].transport, SAN_TRANSPORT_ABORTED);
    assert_int_equal(cmd[2].transport, SAN_TRANSPORT_ABORTED);
    assert_int_equal(san_session_outstanding(s), 1);    /* LUN 2's is still in line */

    /* a TMF outstanding at close gets no callback: its owner is going too */
    struct result late = {0};
    assert_int_equal(san_session_tmf(s, 2, SAN_TMF_ABORT_TASK_SET, on_connect, &late), 0);
    san_session_close(s);
    assert_int_equal(completions, 4);
    assert_int_equal(cmd[3].transport, SAN_TRANSPORT_ABORTED);
    hv_reactor_run_once(r, 0);
    assert_false(late.is_done);
    hv_reactor_destroy(r);
}

static void test_session_options_are_validated(void **state)
{
    struct hv_reactor *r;
    assert_int_equal(hv_reactor_create(&r), 0);
    struct san_session *s;
    struct hv_err err = {0};
    struct san_session_options o = {.portal = "127.0.0.1:3260", .target = "iqn.x"};
    assert_int_equal(san_session_create(r, &o, &s, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "initiator name"));
    o.initiator = "iqn.vm";
    o.chap.target_user = "t";
    o.chap.target_secret = "s";
    assert_int_equal(san_session_create(r, &o, &s, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "CHAP"));
    hv_reactor_destroy(r);
}

static void test_discovery_of_a_dead_portal_fails_with_its_address(void **state)
{
    char portal[64];
    snprintf(portal, sizeof(portal), "127.0.0.1:%d", t_free_port());
    struct san_target *t = NULL;
    size_t n = 0;
    struct hv_err err = {0};
    int ret = san_discover_sync(portal, "iqn.2026-11.test:vm", NULL, &t, &n, &err);
    assert_true(ret < 0);
    assert_non_null(strstr(err.msg, portal));
    assert_null(t);
}

static void test_host_config_of_this_machine_reads_without_error(void **state)
{
    /* whatever open-iscsi state this machine has, reading it is not an error */
    struct san_host_config *cfg;
    struct hv_err err = {0};
    assert_int_equal(san_host_config_read("/", &cfg, &err), 0);
    san_host_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vpd83_prefers_naa6_over_naa3_and_t10),
        cmocka_unit_test(test_vpd83_eui64_beats_t10_and_t10_is_trimmed_text),
        cmocka_unit_test(test_vpd83_ignores_target_port_designators),
        cmocka_unit_test(test_vpd83_truncated_descriptor_is_not_read_past_the_buffer),
        cmocka_unit_test(test_report_luns_decodes_peripheral_and_flat_addressing),
        cmocka_unit_test(test_read_capacity16_gives_size_and_physical_block),
        cmocka_unit_test(test_inquiry_trims_vendor_product_revision),
        cmocka_unit_test(test_pr_out_cdb_and_parameters_follow_spc),
        cmocka_unit_test(test_pr_in_keys_and_reservation_decode),
        cmocka_unit_test(test_sense_helpers_read_fixed_and_descriptor_formats),
        cmocka_unit_test(test_node_record_parse_names_file_and_line_on_error),
        cmocka_unit_test(test_initiator_name_file_parse),
        cmocka_unit_test(test_host_config_finds_what_the_host_uses),
        cmocka_unit_test(test_first_login_failure_is_reported_and_queued_commands_fail),
        cmocka_unit_test(test_close_fails_queued_commands_with_closed),
        cmocka_unit_test(test_waiting_commands_are_aborted_without_the_target),
        cmocka_unit_test(test_session_options_are_validated),
        cmocka_unit_test(test_discovery_of_a_dead_portal_fails_with_its_address),
        cmocka_unit_test(test_host_config_of_this_machine_reads_without_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
