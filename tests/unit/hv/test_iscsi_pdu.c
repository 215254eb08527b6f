/*
 * PDU header decoding, LUN encoding, text key parsing and the operational
 * key negotiation rules of RFC 7143 section 13 (OR, AND, min, declarative).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "iscsi/iscsi_int.h"

static void test_scsi_command_header_decodes_every_field(void **state)
{
    uint8_t b[48] = { 0 };
    struct iscsi_pdu p;
    b[0] = 0x40 | ISCSI_OP_SCSI_CMD;
    b[1] = 0x80 | 0x40 | 0x01;          /* F, R, SIMPLE */
    b[4] = 0;
    b[5] = 0x01;
    b[6] = 0x02;
    b[7] = 0x03;                        /* 0x010203 bytes of data */
    b[9] = 5;                           /* LUN 5, peripheral */
    hv_put_be32(b + 16, 0xabcdef01);
    hv_put_be32(b + 20, 4096);
    hv_put_be32(b + 24, 77);
    hv_put_be32(b + 28, 99);
    b[32] = 0x28;
    assert_int_equal(iscsi_pdu_decode(b, &p), 0);
    assert_int_equal(p.opcode, ISCSI_OP_SCSI_CMD);
    assert_true(p.is_immediate);
    assert_true(p.is_final);
    assert_true(p.is_read);
    assert_false(p.is_write);
    assert_int_equal(p.task_attr, 1);
    assert_int_equal(p.data_bytes, 0x010203);
    assert_int_equal(p.lun, 5);
    assert_int_equal(p.itt, 0xabcdef01);
    assert_int_equal(p.edtl, 4096);
    assert_int_equal(p.cmdsn, 77);
    assert_int_equal(p.expstatsn, 99);
    assert_int_equal(p.cdb[0], 0x28);
}

static void test_login_header_decodes_stages_and_isid(void **state)
{
    uint8_t b[48] = { 0 };
    struct iscsi_pdu p;
    b[0] = 0x40 | ISCSI_OP_LOGIN_REQ;
    b[1] = 0x80 | (1 << 2) | 3;         /* T, CSG 1, NSG 3 */
    memcpy(b + 8, "\x80\x12\x34\x56\x78\x9a", 6);
    hv_put_be16(b + 14, 0);
    hv_put_be16(b + 20, 7);
    assert_int_equal(iscsi_pdu_decode(b, &p), 0);
    assert_true(p.is_transit);
    assert_false(p.is_continue);
    assert_int_equal(p.csg, 1);
    assert_int_equal(p.nsg, 3);
    assert_memory_equal(p.isid, "\x80\x12\x34\x56\x78\x9a", 6);
    assert_int_equal(p.cid, 7);
}

static void test_target_opcodes_are_refused_from_initiators(void **state)
{
    uint8_t b[48] = { 0 };
    struct iscsi_pdu p;
    b[0] = ISCSI_OP_SCSI_RSP;
    assert_int_equal(iscsi_pdu_decode(b, &p), -EPROTO);
    b[0] = 0x1c;
    assert_int_equal(iscsi_pdu_decode(b, &p), -EPROTO);
}

static void test_lun_round_trips_peripheral_and_flat(void **state)
{
    uint8_t raw[8];
    for (uint64_t lun = 0; lun < 16384; lun += 37) {
        iscsi_lun_encode(lun, raw);
        assert_int_equal(iscsi_lun_decode(raw), lun);
    }
    memset(raw, 0, 8);
    raw[0] = 0x80;                      /* logical unit addressing: not ours */
    assert_int_equal(iscsi_lun_decode(raw), UINT64_MAX);
    memset(raw, 0, 8);
    raw[3] = 1;                         /* second level */
    assert_int_equal(iscsi_lun_decode(raw), UINT64_MAX);
}

static void test_keys_parse_pairs_and_reject_garbage(void **state)
{
    struct iscsi_keys k;
    char ok[] = "InitiatorName=iqn.x\0SessionType=Normal\0Empty=\0";
    assert_int_equal(iscsi_keys_parse(ok, sizeof(ok) - 1, &k), 0);
    assert_int_equal(k.count, 3);
    assert_string_equal(iscsi_keys_get(&k, "SessionType"), "Normal");
    assert_string_equal(iscsi_keys_get(&k, "Empty"), "");
    assert_null(iscsi_keys_get(&k, "TargetName"));

    char no_eq[] = "JustAName\0";
    assert_int_equal(iscsi_keys_parse(no_eq, sizeof(no_eq) - 1, &k), -EINVAL);
    char no_name[] = "=value\0";
    assert_int_equal(iscsi_keys_parse(no_name, sizeof(no_name) - 1, &k), -EINVAL);
    char unterminated[] = "A=b";
    assert_int_equal(iscsi_keys_parse(unterminated, 3, &k), -EINVAL);

    size_t n = (ISCSI_MAX_KEYS + 1) * 4;
    char *many = malloc(n);
    for (int i = 0; i <= ISCSI_MAX_KEYS; i++)
        memcpy(many + 4 * i, "A=b", 4);
    assert_int_equal(iscsi_keys_parse(many, n, &k), -EINVAL);
    free(many);
}

static void test_numbers_and_binary_values(void **state)
{
    uint64_t v;
    uint8_t b[8];
    assert_int_equal(iscsi_parse_number("262144", &v), 0);
    assert_int_equal(v, 262144);
    assert_int_equal(iscsi_parse_number("0x40000", &v), 0);
    assert_int_equal(v, 262144);
    assert_int_equal(iscsi_parse_number("12a", &v), -EINVAL);
    assert_int_equal(iscsi_parse_number("", &v), -EINVAL);
    assert_int_equal(iscsi_parse_number("99999999999999999999999", &v), -ERANGE);

    assert_int_equal(iscsi_parse_binary("0x0aFf", b, sizeof(b)), 2);
    assert_int_equal(b[0], 0x0a);
    assert_int_equal(b[1], 0xff);
    assert_int_equal(iscsi_parse_binary("0xabc", b, sizeof(b)), 2);    /* odd: leading 0 */
    assert_int_equal(b[0], 0x0a);
    assert_int_equal(b[1], 0xbc);
    assert_int_equal(iscsi_parse_binary("0bAAEC", b, sizeof(b)), 3);   /* base64 */
    assert_int_equal(b[0], 0x00);
    assert_int_equal(b[1], 0x01);
    assert_int_equal(b[2], 0x02);
    assert_int_equal(iscsi_parse_binary("0x", b, sizeof(b)), -EINVAL);
    assert_int_equal(iscsi_parse_binary("1234", b, sizeof(b)), -EINVAL);
    assert_int_equal(iscsi_parse_binary("0x00112233445566778899", b, sizeof(b)), -EINVAL);
}

static const char *response_of(struct iscsi_text *t, const char *name)
{
    struct iscsi_keys k;
    static char copy[4096];
    memcpy(copy, t->buf, t->len);
    if (iscsi_keys_parse(copy, t->len, &k) < 0)
        return NULL;
    return iscsi_keys_get(&k, name);
}

static void test_negotiation_follows_rfc7143_functions(void **state)
{
    struct iscsi_params p;
    struct iscsi_text t = { 0 };
    iscsi_params_default(&p);
    assert_true(p.initial_r2t);
    assert_true(p.immediate_data);
    assert_int_equal(p.initiator_mrdsl, 8192);
    assert_int_equal(p.first_burst, 65536);

    /* InitialR2T is OR: our No leaves the initiator's choice. */
    assert_int_equal(iscsi_params_negotiate(&p, "InitialR2T", "No", &t), 1);
    assert_false(p.initial_r2t);
    assert_string_equal(response_of(&t, "InitialR2T"), "No");
    /* ImmediateData is AND. */
    assert_int_equal(iscsi_params_negotiate(&p, "ImmediateData", "No", &t), 1);
    assert_false(p.immediate_data);
    /* min() against our limit. */
    assert_int_equal(iscsi_params_negotiate(&p, "MaxBurstLength", "16776192", &t), 1);
    assert_int_equal(p.max_burst, ISCSI_OUR_MAX_BURST);
    assert_int_equal(iscsi_params_negotiate(&p, "FirstBurstLength", "16776192", &t), 1);
    assert_int_equal(p.first_burst, ISCSI_OUR_MAX_BURST);
    assert_int_equal(iscsi_params_negotiate(&p, "MaxBurstLength", "65536", &t), 1);
    assert_true(p.first_burst <= p.max_burst);
    /* Declarative: no response pair. */
    size_t before = t.len;
    assert_int_equal(iscsi_params_negotiate(&p, "MaxRecvDataSegmentLength", "131072", &t), 1);
    assert_int_equal(t.len, before);
    assert_int_equal(p.initiator_mrdsl, 131072);
    /* Digests: first supported value of the initiator's list. */
    assert_int_equal(iscsi_params_negotiate(&p, "HeaderDigest", "CRC32C,None", &t), 1);
    assert_true(p.header_digest);
    assert_int_equal(iscsi_params_negotiate(&p, "DataDigest", "None,CRC32C", &t), 1);
    assert_false(p.data_digest);
    assert_int_equal(iscsi_params_negotiate(&p, "HeaderDigest", "MD5", &t), 1);
    assert_string_equal(response_of(&t, "HeaderDigest"), "CRC32C");   /* first answer */
    /* We run ERL 0 and one connection whatever is offered. */
    assert_int_equal(iscsi_params_negotiate(&p, "ErrorRecoveryLevel", "2", &t), 1);
    assert_int_equal(p.erl, 0);
    assert_int_equal(iscsi_params_negotiate(&p, "MaxConnections", "8", &t), 1);
    assert_int_equal(p.max_connections, 1);
    /* Out of range or malformed: protocol error. */
    assert_int_equal(iscsi_params_negotiate(&p, "MaxBurstLength", "100", &t), -EINVAL);
    assert_int_equal(iscsi_params_negotiate(&p, "InitialR2T", "maybe", &t), -EINVAL);
    assert_int_equal(iscsi_params_negotiate(&p, "MaxRecvDataSegmentLength", "0x1000000", &t),
                     -EINVAL);
    /* Not an operational key. */
    assert_int_equal(iscsi_params_negotiate(&p, "X-com.example.Foo", "1", &t), 0);
    iscsi_text_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scsi_command_header_decodes_every_field),
        cmocka_unit_test(test_login_header_decodes_stages_and_isid),
        cmocka_unit_test(test_target_opcodes_are_refused_from_initiators),
        cmocka_unit_test(test_lun_round_trips_peripheral_and_flat),
        cmocka_unit_test(test_keys_parse_pairs_and_reject_garbage),
        cmocka_unit_test(test_numbers_and_binary_values),
        cmocka_unit_test(test_negotiation_follows_rfc7143_functions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
