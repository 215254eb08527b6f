/*
 * Reservations: persistent reservations (every type, the conflict matrix,
 * register/reserve/release/clear/preempt/register-and-move, the PR IN
 * reports) and RESERVE/RELEASE, plus task management that touches them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>

#define FX_ASSERT(cond) assert_true(cond)
#include "scsi_fixture.h"

#define DISK_BYTES (4 * HV_MiB)

enum { WE = 1, EA = 3, WE_RO = 5, EA_RO = 6, WE_AR = 7, EA_AR = 8 };
enum { REGISTER = 0, RESERVE = 1, RELEASE = 2, CLEAR = 3, PREEMPT = 4, PREEMPT_ABORT = 5,
       REGISTER_IGNORE = 6, REGISTER_MOVE = 7 };

static struct fx *open_disk(const char *name)
{
    struct fx *f = fx_new(name, DISK_BYTES, false);
    fx_clear_ua(f);
    return f;
}

static void expect_sense(struct fx_res r, uint8_t key, uint16_t code)
{
    assert_int_equal(r.status, SCSI_STATUS_CHECK_CONDITION);
    assert_int_equal(r.key, key);
    assert_int_equal(r.asc, code >> 8);
    assert_int_equal(r.ascq, code & 0xFF);
}

static uint8_t prout(struct fx *f, const struct scsi_nexus *n, uint8_t sa, uint8_t type,
                     uint64_t key, uint64_t sa_key)
{
    uint8_t cdb[10] = { 0x5F, sa, type };
    uint8_t param[24] = { 0 };
    hv_put_be64(param, key);
    hv_put_be64(param + 8, sa_key);
    hv_put_be32(cdb + 5, sizeof(param));
    return fx_cmd(f, n, cdb, 10, param, sizeof(param), NULL, 0).status;
}

static struct fx_res prin(struct fx *f, const struct scsi_nexus *n, uint8_t sa, uint8_t *buf,
                          uint16_t len)
{
    uint8_t cdb[10] = { 0x5E, sa };
    hv_put_be16(cdb + 7, len);
    return fx_cmd(f, n, cdb, 10, NULL, 0, buf, len);
}

static uint8_t do_read(struct fx *f, const struct scsi_nexus *n)
{
    uint8_t cdb[10], buf[512];
    cdb_rw10(cdb, 0x28, 0, 1);
    return fx_cmd(f, n, cdb, 10, NULL, 0, buf, 512).status;
}

static uint8_t do_write(struct fx *f, const struct scsi_nexus *n)
{
    uint8_t cdb[10], buf[512] = { 0 };
    cdb_rw10(cdb, 0x2A, 0, 1);
    return fx_cmd(f, n, cdb, 10, buf, 512, NULL, 0).status;
}

static uint8_t do_inquiry(struct fx *f, const struct scsi_nexus *n)
{
    uint8_t cdb[6] = { 0x12, 0, 0, 0, 96, 0 }, buf[96];
    return fx_cmd(f, n, cdb, 6, NULL, 0, buf, 96).status;
}

static uint8_t do_read_capacity(struct fx *f, const struct scsi_nexus *n)
{
    uint8_t cdb[10] = { 0x25 }, buf[8];
    return fx_cmd(f, n, cdb, 10, NULL, 0, buf, 8).status;
}

#define GOOD SCSI_STATUS_GOOD
#define CONFLICT SCSI_STATUS_RESERVATION_CONFLICT

static void test_access_matrix_for_every_reservation_type(void **state)
{
    static const uint8_t types[] = { WE, EA, WE_RO, EA_RO, WE_AR, EA_AR };
    for (size_t i = 0; i < sizeof(types); i++) {
        uint8_t type = types[i];
        bool is_we = type == WE || type == WE_RO || type == WE_AR;
        bool lets_registrants = type >= WE_RO;
        struct fx *f = open_disk("matrix.img");
        assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0, 0xA1), GOOD);
        assert_int_equal(prout(f, &f->n1, RESERVE, type, 0xA1, 0), GOOD);
        /* the holder does everything */
        assert_int_equal(do_read(f, &f->n1), GOOD);
        assert_int_equal(do_write(f, &f->n1), GOOD);
        /* an unregistered nexus */
        assert_int_equal(do_read(f, &f->n2), is_we ? GOOD : CONFLICT);
        assert_int_equal(do_write(f, &f->n2), CONFLICT);
        assert_int_equal(do_inquiry(f, &f->n2), GOOD);
        assert_int_equal(do_read_capacity(f, &f->n2), GOOD);
        /* registered */
        assert_int_equal(prout(f, &f->n2, REGISTER, 0, 0, 0xB2), GOOD);
        assert_int_equal(do_read(f, &f->n2), (is_we || lets_registrants) ? GOOD : CONFLICT);
        assert_int_equal(do_write(f, &f->n2), lets_registrants ? GOOD : CONFLICT);
        /* a second RESERVE of the same type by the holder is fine, another type is not */
        assert_int_equal(prout(f, &f->n1, RESERVE, type, 0xA1, 0), GOOD);
        assert_int_equal(prout(f, &f->n1, RESERVE, type == WE ? EA : WE, 0xA1, 0), CONFLICT);
        /* READ RESERVATION shows it */
        uint8_t buf[64];
        struct fx_res r = prin(f, &f->n2, 0x01, buf, sizeof(buf));
        assert_int_equal(r.status, GOOD);
        assert_int_equal(hv_be32(buf + 4), 16);
        assert_int_equal(buf[8 + 13], type);
        assert_int_equal(hv_be64(buf + 8), type >= WE_AR ? 0 : 0xA1);
        fx_free(f);
    }
}

static void test_register_reserve_release_and_the_reports(void **state)
{
    struct fx *f = open_disk("basic.img");
    uint8_t buf[512];
    /* REGISTER with a key when not registered: conflict */
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0x99, 0xA1), CONFLICT);
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0, 0xA1), GOOD);
    assert_int_equal(prout(f, &f->n2, REGISTER_IGNORE, 0, 0x1234, 0xB2), GOOD);
    /* change a key: wrong key conflicts, IGNORE does not care */
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0xFF, 0xA3), CONFLICT);
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0xA1, 0xA3), GOOD);
    assert_int_equal(prout(f, &f->n1, REGISTER_IGNORE, 0, 0, 0xA1), GOOD);

    struct fx_res r = prin(f, &f->n1, 0x00, buf, sizeof(buf));
    assert_int_equal(r.status, GOOD);
    assert_int_equal(hv_be32(buf), 4);                  /* generation: four changes */
    assert_int_equal(hv_be32(buf + 4), 16);
    assert_true((hv_be64(buf + 8) == 0xA1 && hv_be64(buf + 16) == 0xB2) ||
                (hv_be64(buf + 8) == 0xB2 && hv_be64(buf + 16) == 0xA1));
    /* truncated READ KEYS still reports the full length */
    r = prin(f, &f->n1, 0x00, buf, 12);
    assert_int_equal(r.in_bytes, 12);
    assert_int_equal(hv_be32(buf + 4), 16);

    r = prin(f, &f->n1, 0x02, buf, sizeof(buf));
    assert_int_equal(r.status, GOOD);
    assert_int_equal(hv_be16(buf), 8);
    assert_int_equal(buf[2] & 0x08, 0);                 /* SIP_C */
    assert_int_equal(buf[2] & 0x01, 0);                 /* PTPL_C */
    assert_int_equal(buf[3] & 0x80, 0x80);              /* TMV */
    assert_int_equal(buf[4], 0xEA);
    assert_int_equal(buf[5], 0x01);

    /* RESERVE needs the caller's own key */
    assert_int_equal(prout(f, &f->n1, RESERVE, WE, 0xB2, 0), CONFLICT);
    assert_int_equal(prout(f, &f->n1, RESERVE, WE, 0xA1, 0), GOOD);
    assert_int_equal(prout(f, &f->n2, RESERVE, WE, 0xB2, 0), CONFLICT);

    /* READ FULL STATUS: both registrants, the holder marked, iSCSI TransportIDs */
    r = prin(f, &f->n1, 0x03, buf, sizeof(buf));
    assert_int_equal(r.status, GOOD);
    uint32_t total = hv_be32(buf + 4);
    assert_int_equal(r.in_bytes, 8 + total);
    bool saw_holder = false;
    for (uint32_t at = 8; at < 8 + total;) {
        uint32_t add = hv_be32(buf + at + 20);
        const uint8_t *tid = buf + at + 24;
        assert_int_equal(tid[0], 0x45);                 /* iSCSI, port format */
        if (buf[at + 12] & 0x01) {
            saw_holder = true;
            assert_int_equal(hv_be64(buf + at), 0xA1);
            assert_int_equal(buf[at + 13], WE);
            assert_string_equal((const char *)tid + 4, f->n1.initiator);
        }
        at += 24 + add;
    }
    assert_true(saw_holder);

    /* RELEASE: by a non-holder does nothing; with the wrong type is refused */
    assert_int_equal(prout(f, &f->n2, RELEASE, WE, 0xB2, 0), GOOD);
    assert_int_equal(do_write(f, &f->n2), CONFLICT);
    struct fx_res rel;
    {
        uint8_t cdb[10] = { 0x5F, RELEASE, EA };
        uint8_t param[24] = { 0 };
        hv_put_be64(param, 0xA1);
        hv_put_be32(cdb + 5, 24);
        rel = fx_cmd(f, &f->n1, cdb, 10, param, 24, NULL, 0);
    }
    expect_sense(rel, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_RELEASE_OF_PR);
    assert_int_equal(prout(f, &f->n1, RELEASE, WE, 0xA1, 0), GOOD);
    assert_int_equal(do_write(f, &f->n2), GOOD);
    r = prin(f, &f->n1, 0x01, buf, sizeof(buf));
    assert_int_equal(hv_be32(buf + 4), 0);

    /* APTPL and SPEC_I_PT are not offered; the list must be 24 bytes */
    {
        uint8_t cdb[10] = { 0x5F, REGISTER, 0 };
        uint8_t param[28] = { 0 };
        hv_put_be64(param, 0xA1);
        param[20] = 0x01;
        hv_put_be32(cdb + 5, 24);
        expect_sense(fx_cmd(f, &f->n1, cdb, 10, param, 24, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                     SCSI_ASC_INVALID_FIELD_IN_PARAMETER_LIST);
        param[20] = 0x08;
        expect_sense(fx_cmd(f, &f->n1, cdb, 10, param, 24, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                     SCSI_ASC_INVALID_FIELD_IN_PARAMETER_LIST);
        param[20] = 0;
        hv_put_be32(cdb + 5, 28);
        expect_sense(fx_cmd(f, &f->n1, cdb, 10, param, 28, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                     SCSI_ASC_PARAMETER_LIST_LENGTH_ERROR);
        /* an unknown PR IN service action */
        expect_sense(prin(f, &f->n1, 0x07, buf, sizeof(buf)), SCSI_SENSE_ILLEGAL_REQUEST,
                     SCSI_ASC_INVALID_FIELD_IN_CDB);
        /* a reservation with a scope other than the LU */
        expect_sense(fx_cmd(f, &f->n1,
                            (const uint8_t[10]){ 0x5F, RESERVE, 0x10 | WE, 0, 0, 0, 0, 0, 24 },
                            10, param, 24, NULL, 0),
                     SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_CDB);
    }
    fx_free(f);
}

static void test_unregistering_the_holder_releases_and_all_registrants_outlive_it(void **state)
{
    struct fx *f = open_disk("unreg.img");
    uint8_t buf[64];
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0, 0xA1), GOOD);
    assert_int_equal(prout(f, &f->n2, REGISTER, 0, 0, 0xB2), GOOD);
    assert_int_equal(prout(f, &f->n1, RESERVE, WE_RO, 0xA1, 0), GOOD);
    fx_clear_ua(f);
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0xA1, 0), GOOD);      /* unregister */
    /* a registrants-only reservation going away tells the other registrants */
    uint8_t tur[6] = { 0 };
    expect_sense(fx_cmd(f, &f->n2, tur, 6, NULL, 0, NULL, 0), SCSI_SENSE_UNIT_ATTENTION,
                 SCSI_ASC_RESERVATIONS_RELEASED);
    assert_int_equal(prin(f, &f->n2, 0x01, buf, sizeof(buf)).status, GOOD);
    assert_int_equal(hv_be32(buf + 4), 0);

    /* all registrants: stays while anyone is registered */
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0, 0xA1), GOOD);
    assert_int_equal(prout(f, &f->n1, RESERVE, EA_AR, 0xA1, 0), GOOD);
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0xA1, 0), GOOD);
    assert_int_equal(prin(f, &f->n2, 0x01, buf, sizeof(buf)).status, GOOD);
    assert_int_equal(hv_be32(buf + 4), 16);
    assert_int_equal(do_write(f, &f->n1), CONFLICT);    /* no longer registered */
    assert_int_equal(do_write(f, &f->n2), GOOD);
    assert_int_equal(prout(f, &f->n2, REGISTER, 0, 0xB2, 0), GOOD);
    assert_int_equal(prin(f, &f->n2, 0x01, buf, sizeof(buf)).status, GOOD);
    assert_int_equal(hv_be32(buf + 4), 0);
    fx_free(f);
}

static void test_clear_and_preempt(void **state)
{
    struct fx *f = open_disk("preempt.img");
    uint8_t buf[64];
    uint8_t tur[6] = { 0 };
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0, 0xA1), GOOD);
    assert_int_equal(prout(f, &f->n2, REGISTER, 0, 0, 0xB2), GOOD);
    assert_int_equal(prout(f, &f->n1, RESERVE, EA, 0xA1, 0), GOOD);
    assert_int_equal(do_write(f, &f->n2), CONFLICT);

    /* n2 preempts the holder: it holds a WE reservation now and n1 is gone */
    assert_int_equal(prout(f, &f->n2, PREEMPT, WE, 0xB2, 0xA1), GOOD);
    expect_sense(fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0), SCSI_SENSE_UNIT_ATTENTION,
                 SCSI_ASC_REGISTRATIONS_PREEMPTED);
    assert_int_equal(do_write(f, &f->n1), CONFLICT);
    assert_int_equal(do_read(f, &f->n1), GOOD);
    assert_int_equal(prin(f, &f->n1, 0x01, buf, sizeof(buf)).status, GOOD);
    assert_int_equal(hv_be64(buf + 8), 0xB2);
    assert_int_equal(buf[8 + 13], WE);
    assert_int_equal(prin(f, &f->n1, 0x00, buf, sizeof(buf)).status, GOOD);
    assert_int_equal(hv_be32(buf + 4), 8);
    /* preempting a key nobody has: conflict; a zero key without AR: refused */
    assert_int_equal(prout(f, &f->n2, PREEMPT, WE, 0xB2, 0x77), CONFLICT);
    {
        uint8_t cdb[10] = { 0x5F, PREEMPT, WE };
        uint8_t param[24] = { 0 };
        hv_put_be64(param, 0xB2);
        hv_put_be32(cdb + 5, 24);
        expect_sense(fx_cmd(f, &f->n2, cdb, 10, param, 24, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                     SCSI_ASC_INVALID_FIELD_IN_PARAMETER_LIST);
    }
    /* not registered: conflict */
    assert_int_equal(prout(f, &f->n1, PREEMPT, WE, 0xA1, 0xB2), CONFLICT);

    /* without a reservation PREEMPT removes registrations only */
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0, 0xA1), GOOD);
    assert_int_equal(prout(f, &f->n2, RELEASE, WE, 0xB2, 0), GOOD);
    assert_int_equal(prout(f, &f->n2, PREEMPT_ABORT, WE, 0xB2, 0xA1), GOOD);
    assert_int_equal(prin(f, &f->n2, 0x00, buf, sizeof(buf)).status, GOOD);
    assert_int_equal(hv_be32(buf + 4), 8);
    assert_int_equal(prin(f, &f->n2, 0x01, buf, sizeof(buf)).status, GOOD);
    assert_int_equal(hv_be32(buf + 4), 0);

    /* CLEAR: everything goes, the others hear RESERVATIONS PREEMPTED */
    fx_clear_ua(f);
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0, 0xA1), GOOD);
    assert_int_equal(prout(f, &f->n1, RESERVE, EA, 0xA1, 0), GOOD);
    assert_int_equal(prout(f, &f->n2, CLEAR, 0, 0xB2, 0), GOOD);
    expect_sense(fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0), SCSI_SENSE_UNIT_ATTENTION,
                 SCSI_ASC_RESERVATIONS_PREEMPTED);
    assert_int_equal(prin(f, &f->n1, 0x00, buf, sizeof(buf)).status, GOOD);
    assert_int_equal(hv_be32(buf + 4), 0);
    assert_int_equal(do_write(f, &f->n1), GOOD);

    /* all registrants preempted with key 0: only the preempter stays */
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0, 0xA1), GOOD);
    assert_int_equal(prout(f, &f->n2, REGISTER, 0, 0, 0xB2), GOOD);
    assert_int_equal(prout(f, &f->n1, RESERVE, WE_AR, 0xA1, 0), GOOD);
    assert_int_equal(prout(f, &f->n2, PREEMPT, EA, 0xB2, 0), GOOD);
    expect_sense(fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0), SCSI_SENSE_UNIT_ATTENTION,
                 SCSI_ASC_REGISTRATIONS_PREEMPTED);
    assert_int_equal(prin(f, &f->n2, 0x01, buf, sizeof(buf)).status, GOOD);
    assert_int_equal(buf[8 + 13], EA);
    assert_int_equal(hv_be64(buf + 8), 0xB2);
    assert_int_equal(do_read(f, &f->n1), CONFLICT);
    fx_free(f);
}

static void test_register_and_move_hands_the_reservation_over(void **state)
{
    struct fx *f = open_disk("move.img");
    uint8_t buf[64];
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0, 0xA1), GOOD);
    assert_int_equal(prout(f, &f->n1, RESERVE, EA, 0xA1, 0), GOOD);
    uint8_t param[24 + 64] = { 0 };
    hv_put_be64(param, 0xA1);
    hv_put_be64(param + 8, 0xC3);
    param[17] = 0x02;                                   /* UNREG */
    hv_put_be16(param + 18, 1);
    size_t name = strlen(f->n2.initiator) + 1;
    size_t padded = HV_ALIGN_UP(name, 4);
    hv_put_be32(param + 20, (uint32_t)(4 + padded));
    param[24] = 0x45;
    hv_put_be16(param + 26, (uint16_t)padded);
    memcpy(param + 28, f->n2.initiator, name - 1);
    uint32_t plen = (uint32_t)(24 + 4 + padded);
    uint8_t cdb[10] = { 0x5F, REGISTER_MOVE, EA };
    hv_put_be32(cdb + 5, plen);
    assert_int_equal(fx_cmd(f, &f->n1, cdb, 10, param, plen, NULL, 0).status, GOOD);
    assert_int_equal(do_write(f, &f->n2), GOOD);
    assert_int_equal(do_read(f, &f->n1), CONFLICT);
    assert_int_equal(prin(f, &f->n1, 0x01, buf, sizeof(buf)).status, GOOD);
    assert_int_equal(hv_be64(buf + 8), 0xC3);
    assert_int_equal(prin(f, &f->n1, 0x00, buf, sizeof(buf)).status, GOOD);
    assert_int_equal(hv_be32(buf + 4), 8);              /* n1 unregistered */
    /* n1 is no holder any more */
    hv_put_be64(param, 0xC3);
    assert_int_equal(fx_cmd(f, &f->n1, cdb, 10, param, plen, NULL, 0).status, CONFLICT);
    fx_free(f);
}

static void test_reserve6_belongs_to_one_nexus_and_goes_with_it(void **state)
{
    struct fx *f = open_disk("res6.img");
    uint8_t reserve6[6] = { 0x16 }, release6[6] = { 0x17 };
    uint8_t reserve10[10] = { 0x56 };
    assert_int_equal(fx_cmd(f, &f->n1, reserve6, 6, NULL, 0, NULL, 0).status, GOOD);
    assert_int_equal(fx_cmd(f, &f->n2, reserve6, 6, NULL, 0, NULL, 0).status, CONFLICT);
    assert_int_equal(do_read(f, &f->n2), CONFLICT);
    assert_int_equal(do_inquiry(f, &f->n2), GOOD);
    /* RELEASE from another nexus does nothing */
    assert_int_equal(fx_cmd(f, &f->n2, release6, 6, NULL, 0, NULL, 0).status, GOOD);
    assert_int_equal(do_read(f, &f->n2), CONFLICT);
    assert_int_equal(fx_cmd(f, &f->n1, release6, 6, NULL, 0, NULL, 0).status, GOOD);
    assert_int_equal(do_read(f, &f->n2), GOOD);
    /* the nexus goes away: so does its reservation */
    assert_int_equal(fx_cmd(f, &f->n1, reserve10, 10, NULL, 0, NULL, 0).status, GOOD);
    scsi_controller_nexus_remove(f->c, &f->n1);
    assert_int_equal(do_write(f, &f->n2), GOOD);
    scsi_controller_nexus_add(f->c, &f->n1);
    fx_clear_ua(f);
    /* a LUN reset clears it too, and tells everyone */
    assert_int_equal(fx_cmd(f, &f->n1, reserve6, 6, NULL, 0, NULL, 0).status, GOOD);
    assert_int_equal(scsi_controller_tmf(f->c, &f->n2, SCSI_TMF_LOGICAL_UNIT_RESET, 0, 0),
                     SCSI_TMF_COMPLETE);
    uint8_t tur[6] = { 0 };
    expect_sense(fx_cmd(f, &f->n2, tur, 6, NULL, 0, NULL, 0), SCSI_SENSE_UNIT_ATTENTION,
                 SCSI_ASC_POWER_ON_RESET);
    assert_int_equal(do_write(f, &f->n2), GOOD);
    fx_clear_ua(f);
    /* third-party RESERVE(10) is not supported */
    reserve10[1] = 0x10;
    expect_sense(fx_cmd(f, &f->n1, reserve10, 10, NULL, 0, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    /* with a persistent reservation RESERVE conflicts for non-holders */
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0, 0xA1), GOOD);
    assert_int_equal(prout(f, &f->n1, RESERVE, WE, 0xA1, 0), GOOD);
    assert_int_equal(fx_cmd(f, &f->n2, reserve6, 6, NULL, 0, NULL, 0).status, CONFLICT);
    assert_int_equal(fx_cmd(f, &f->n1, reserve6, 6, NULL, 0, NULL, 0).status, GOOD);
    assert_int_equal(do_write(f, &f->n2), CONFLICT);    /* still the PR that rules */
    fx_free(f);
}

static void test_abort_task_in_flight_completes_once_marked_aborted(void **state)
{
    struct fx *f = open_disk("abort.img");
    static uint8_t block[512];
    struct scsi_task *t = calloc(1, sizeof(*t));
    struct iovec iov = { block, sizeof(block) };
    struct fx_wait w = { 0 };
    memset(block, 0x5A, sizeof(block));
    t->nexus = &f->n1;
    t->tag = 42;
    cdb_rw16(t->cdb, 0x93, 0, 8000);                    /* several chunks */
    t->cdb_len = 16;
    t->dir = SCSI_DIR_OUT;
    t->expected_bytes = t->out_bytes = 512;
    t->out_iov = &iov;
    t->out_iovcnt = 1;
    t->done = fx_task_done;
    t->transport_arg = &w;
    scsi_controller_execute(f->c, t);
    assert_int_equal(scsi_controller_tmf(f->c, &f->n1, SCSI_TMF_ABORT_TASK, 0, 99),
                     SCSI_TMF_TASK_NOT_FOUND);
    assert_int_equal(scsi_controller_tmf(f->c, &f->n1, SCSI_TMF_ABORT_TASK, 0, 42),
                     SCSI_TMF_COMPLETE);
    assert_int_equal(hv_reactor_run_until(f->r, &w.done), 0);
    hv_reactor_run_once(f->r, 0);
    assert_int_equal(w.calls, 1);
    assert_true(t->is_aborted);
    assert_int_equal(t->status, SCSI_STATUS_TASK_ABORTED);
    free(t);
    assert_int_equal(scsi_controller_tmf(f->c, &f->n1, SCSI_TMF_ABORT_TASK_SET, 3, 0),
                     SCSI_TMF_LUN_NOT_FOUND);
    assert_int_equal(scsi_controller_tmf(f->c, &f->n1, SCSI_TMF_TARGET_WARM_RESET, 0, 0),
                     SCSI_TMF_COMPLETE);
    uint8_t tur[6] = { 0 };
    assert_int_equal(fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0).status,
                     SCSI_STATUS_CHECK_CONDITION);
    fx_free(f);
}

/* PREEMPT AND ABORT: the preempted initiator's tasks in flight are aborted. */
static void test_preempt_and_abort_aborts_the_preempted_tasks(void **state)
{
    struct fx *f = open_disk("pabort.img");
    static uint8_t block[512];
    struct scsi_task *t = calloc(1, sizeof(*t));
    struct iovec iov = { block, sizeof(block) };
    struct fx_wait w = { 0 };
    assert_int_equal(prout(f, &f->n1, REGISTER, 0, 0, 0xA1), GOOD);
    assert_int_equal(prout(f, &f->n2, REGISTER, 0, 0, 0xB2), GOOD);
    assert_int_equal(prout(f, &f->n1, RESERVE, WE, 0xA1, 0), GOOD);
    memset(block, 0x11, sizeof(block));
    t->nexus = &f->n1;
    cdb_rw16(t->cdb, 0x93, 0, 8000);
    t->cdb_len = 16;
    t->dir = SCSI_DIR_OUT;
    t->expected_bytes = t->out_bytes = 512;
    t->out_iov = &iov;
    t->out_iovcnt = 1;
    t->done = fx_task_done;
    t->transport_arg = &w;
    scsi_controller_execute(f->c, t);
    assert_int_equal(prout(f, &f->n2, PREEMPT_ABORT, EA, 0xB2, 0xA1), GOOD);
    assert_int_equal(hv_reactor_run_until(f->r, &w.done), 0);
    assert_int_equal(w.calls, 1);
    assert_true(t->is_aborted);
    free(t);
    uint8_t tur[6] = { 0 };
    expect_sense(fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0), SCSI_SENSE_UNIT_ATTENTION,
                 SCSI_ASC_REGISTRATIONS_PREEMPTED);
    assert_int_equal(do_read(f, &f->n1), CONFLICT);
    fx_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_access_matrix_for_every_reservation_type),
        cmocka_unit_test(test_register_reserve_release_and_the_reports),
        cmocka_unit_test(test_unregistering_the_holder_releases_and_all_registrants_outlive_it),
        cmocka_unit_test(test_clear_and_preempt),
        cmocka_unit_test(test_register_and_move_hands_the_reservation_over),
        cmocka_unit_test(test_reserve6_belongs_to_one_nexus_and_goes_with_it),
        cmocka_unit_test(test_abort_task_in_flight_completes_once_marked_aborted),
        cmocka_unit_test(test_preempt_and_abort_aborts_the_preempted_tasks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
