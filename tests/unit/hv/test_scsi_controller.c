/*
 * The controller: LUN slots, REPORT LUNS, empty slots, unit attentions per
 * nexus, task management, hot attach/detach and resize notices.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define FX_ASSERT(cond) assert_true(cond)
#include "scsi_fixture.h"

#define DISK_BYTES (8 * HV_MiB)

static const uint8_t tur[6] = { 0 };

static void set_flag(void *arg)
{
    *(bool *)arg = true;
}

static void expect_sense(struct fx_res r, uint8_t key, uint16_t code)
{
    assert_int_equal(r.status, SCSI_STATUS_CHECK_CONDITION);
    assert_int_equal(r.key, key);
    assert_int_equal(r.asc, code >> 8);
    assert_int_equal(r.ascq, code & 0xFF);
}

static struct fx_res report_luns(struct fx *f, uint8_t select, uint8_t *buf, uint32_t len)
{
    uint8_t cdb[12] = { 0xA0, 0, select };
    hv_put_be32(cdb + 6, len);
    return fx_cmd_lun(f, &f->n1, 0, cdb, 12, NULL, 0, buf, len);
}

static void test_new_nexus_sees_power_on_then_inquiry_is_not_blocked(void **state)
{
    struct fx *f = fx_new("ua.img", DISK_BYTES, false);
    uint8_t buf[96];
    uint8_t inq[6] = { 0x12, 0, 0, 0, 96, 0 };
    /* INQUIRY neither reports nor clears the unit attention */
    assert_int_equal(fx_cmd(f, &f->n1, inq, 6, NULL, 0, buf, 96).status, SCSI_STATUS_GOOD);
    expect_sense(fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0), SCSI_SENSE_UNIT_ATTENTION,
                 SCSI_ASC_POWER_ON_RESET);
    assert_int_equal(fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0).status, SCSI_STATUS_GOOD);
    /* the other nexus has its own, and REQUEST SENSE reports and clears it */
    uint8_t rs[6] = { 0x03, 0, 0, 0, 252, 0 };
    uint8_t sense[252];
    struct fx_res r = fx_cmd(f, &f->n2, rs, 6, NULL, 0, sense, 252);
    assert_int_equal(r.status, SCSI_STATUS_GOOD);
    assert_int_equal(sense[2] & 0x0F, SCSI_SENSE_UNIT_ATTENTION);
    assert_int_equal(sense[12], 0x29);
    assert_int_equal(fx_cmd(f, &f->n2, tur, 6, NULL, 0, NULL, 0).status, SCSI_STATUS_GOOD);
    fx_free(f);
}

static void test_report_luns_lists_attached_slots_and_attach_raises_ua(void **state)
{
    struct fx *f = fx_new("luns.img", DISK_BYTES, false);
    struct hv_err err = { 0 };
    fx_clear_ua(f);
    uint8_t buf[1024];
    struct fx_res r = report_luns(f, 0, buf, sizeof(buf));
    assert_int_equal(r.status, SCSI_STATUS_GOOD);
    assert_int_equal(hv_be32(buf), 8);
    assert_int_equal(r.in_bytes, 16);

    /* hot attach a second disk on the same bdev in slot 5 */
    struct scsi_lu *lu5;
    assert_int_equal(scsi_disk_create(f->bd, NULL, &lu5, &err), 0);
    assert_int_equal(scsi_controller_attach(f->c, 5, lu5), 0);
    assert_int_equal(scsi_controller_attach(f->c, 5, lu5), -EBUSY);
    expect_sense(fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0), SCSI_SENSE_UNIT_ATTENTION,
                 SCSI_ASC_REPORTED_LUNS_CHANGED);
    r = report_luns(f, 2, buf, sizeof(buf));
    assert_int_equal(hv_be32(buf), 16);
    assert_int_equal(buf[8 + 1], 0);
    assert_int_equal(buf[16 + 1], 5);
    /* well-known only: none */
    r = report_luns(f, 1, buf, sizeof(buf));
    assert_int_equal(hv_be32(buf), 0);
    expect_sense(report_luns(f, 0x07, buf, sizeof(buf)), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);

    /* detach: the slot answers LOGICAL UNIT NOT SUPPORTED, the LU is handed back */
    struct scsi_lu *gone = scsi_controller_detach(f->c, 5);
    assert_ptr_equal(gone, lu5);
    assert_null(scsi_controller_detach(f->c, 5));
    bool idle = false;
    scsi_lu_when_idle(gone, set_flag, &idle);
    assert_false(idle);                 /* never called back from inside */
    assert_int_equal(hv_reactor_run_until(f->r, &idle), 0);
    gone->ops->destroy(gone);
    expect_sense(fx_cmd_lun(f, &f->n1, 5, tur, 6, NULL, 0, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LU_NOT_SUPPORTED);
    expect_sense(fx_cmd(f, &f->n2, tur, 6, NULL, 0, NULL, 0), SCSI_SENSE_UNIT_ATTENTION,
                 SCSI_ASC_REPORTED_LUNS_CHANGED);
    fx_free(f);
}

static void test_empty_slot_inquiry_has_qualifier_3(void **state)
{
    struct fx *f = fx_new("empty.img", DISK_BYTES, false);
    uint8_t buf[96];
    uint8_t inq[6] = { 0x12, 0, 0, 0, 96, 0 };
    struct fx_res r = fx_cmd_lun(f, &f->n1, 9, inq, 6, NULL, 0, buf, 96);
    assert_int_equal(r.status, SCSI_STATUS_GOOD);
    assert_int_equal(buf[0], 0x7F);
    r = fx_cmd_lun(f, &f->n1, 200, inq, 6, NULL, 0, buf, 96);
    assert_int_equal(buf[0], 0x7F);
    uint8_t rs[6] = { 0x03, 0, 0, 0, 252, 0 };
    uint8_t sense[252];
    r = fx_cmd_lun(f, &f->n1, 9, rs, 6, NULL, 0, sense, 252);
    assert_int_equal(r.status, SCSI_STATUS_GOOD);
    assert_int_equal(sense[12], 0x25);
    fx_free(f);
}

static void test_lun_encoding_round_trips(void **state)
{
    uint8_t raw[8];
    scsi_lun_encode(5, raw);
    assert_int_equal(raw[0], 0);
    assert_int_equal(raw[1], 5);
    assert_int_equal(scsi_lun_decode(raw), 5);
    scsi_lun_encode(300, raw);
    assert_int_equal(raw[0] >> 6, 1);
    assert_int_equal(scsi_lun_decode(raw), 300);
    uint8_t odd[8] = { 0x80, 1, 0, 0, 0, 0, 0, 0 };   /* logical unit addressing */
    assert_int_equal(scsi_lun_decode(odd), UINT64_MAX);
}

struct idle_probe {
    struct fx_wait *wait;
    bool was_task_done_first;
    bool fired;
};

static void idle_after_task(void *arg)
{
    struct idle_probe *p = arg;
    p->was_task_done_first = p->wait->done;
    p->fired = true;
}

/* Hot detach with a command in flight: the command still completes, and
 * scsi_lu_when_idle calls back only after it, so the LU can go safely. */
static void test_detach_with_task_in_flight_waits_for_idle(void **state)
{
    struct fx *f = fx_new("detach.img", DISK_BYTES, false);
    fx_clear_ua(f);
    static uint8_t block[512];
    struct iovec iov = { block, sizeof(block) };
    struct fx_wait w = { 0 };
    struct scsi_task *t = calloc(1, sizeof(*t));
    t->nexus = &f->n1;
    cdb_rw16(t->cdb, 0x93, 0, 8000);
    t->cdb[1] = 0;
    memset(block, 0x77, sizeof(block));
    t->cdb_len = 16;
    t->dir = SCSI_DIR_OUT;
    t->expected_bytes = t->out_bytes = 512;
    t->out_iov = &iov;
    t->out_iovcnt = 1;
    t->done = fx_task_done;
    t->transport_arg = &w;
    scsi_controller_execute(f->c, t);
    struct scsi_lu *lu = scsi_controller_detach(f->c, 0);
    assert_non_null(lu);
    assert_int_equal(lu->tasks_in_flight, 1);
    struct idle_probe probe = { .wait = &w };
    scsi_lu_when_idle(lu, idle_after_task, &probe);
    assert_false(probe.fired);
    assert_int_equal(hv_reactor_run_until(f->r, &probe.fired), 0);
    assert_true(probe.was_task_done_first);
    assert_int_equal(w.calls, 1);
    assert_int_equal(t->status, SCSI_STATUS_GOOD);
    free(t);
    lu->ops->destroy(lu);
    /* the slot is empty now */
    expect_sense(fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LU_NOT_SUPPORTED);
    fx_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_nexus_sees_power_on_then_inquiry_is_not_blocked),
        cmocka_unit_test(test_report_luns_lists_attached_slots_and_attach_raises_ua),
        cmocka_unit_test(test_empty_slot_inquiry_has_qualifier_3),
        cmocka_unit_test(test_lun_encoding_round_trips),
        cmocka_unit_test(test_detach_with_task_in_flight_waits_for_idle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
