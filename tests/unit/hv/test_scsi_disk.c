/*
 * The emulated disk, driven through the controller with real CDBs against a
 * raw-file bdev: what each command answers, its error paths, and that
 * deallocation really punches holes in the file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define FX_ASSERT(cond) assert_true(cond)
#include "scsi_fixture.h"

#define DISK_BYTES (16 * HV_MiB)
#define BLOCKS (DISK_BYTES / 512)

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

static void expect_good(struct fx_res r)
{
    if (r.status != SCSI_STATUS_GOOD)
        fprintf(stderr, "status 0x%02x sense %x/%02x/%02x\n", r.status, r.key, r.asc, r.ascq);
    assert_int_equal(r.status, SCSI_STATUS_GOOD);
}

static struct fx_res inquiry(struct fx *f, bool evpd, uint8_t page, uint8_t *buf, uint16_t len)
{
    uint8_t cdb[6] = { 0x12, evpd ? 1 : 0, page, 0, 0, 0 };
    hv_put_be16(cdb + 3, len);
    return fx_cmd(f, &f->n1, cdb, 6, NULL, 0, buf, len);
}

static void test_inquiry_standard_data_describes_an_spc4_disk(void **state)
{
    struct fx *f = open_disk("inq.img");
    uint8_t buf[255];
    struct fx_res r = inquiry(f, false, 0, buf, sizeof(buf));
    expect_good(r);
    assert_int_equal(r.in_bytes, 96);
    assert_int_equal(buf[0], 0x00);
    assert_int_equal(buf[1] & 0x80, 0);         /* not removable */
    assert_int_equal(buf[2], 0x06);
    assert_int_equal(buf[3], 0x12);             /* HiSup, format 2 */
    assert_int_equal(buf[4], 91);
    assert_int_equal(buf[5] & 0x31, 0);         /* TPGS 0, PROTECT 0 */
    assert_int_equal(buf[7] & 0x02, 0x02);      /* CmdQue */
    assert_memory_equal(buf + 8, "HVSTOR  ", 8);
    assert_memory_equal(buf + 16, "Virtual Disk    ", 16);
    assert_int_equal(hv_be16(buf + 62), 0x0460);    /* SPC-4 */
    assert_int_equal(hv_be16(buf + 64), 0x04C0);    /* SBC-3 */

    /* allocation length truncates, the residual shows what was wanted */
    r = inquiry(f, false, 0, buf, 36);
    expect_good(r);
    assert_int_equal(r.in_bytes, 36);

    /* page code without EVPD, CMDDT, unknown page */
    expect_sense(inquiry(f, false, 0x80, buf, 255), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    expect_sense(inquiry(f, true, 0x42, buf, 255), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    uint8_t cmddt[6] = { 0x12, 0x02, 0, 0, 255, 0 };
    expect_sense(fx_cmd(f, &f->n1, cmddt, 6, NULL, 0, buf, 255), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    fx_free(f);
}

static size_t find_designator(const uint8_t *page, size_t len, uint8_t type, uint8_t assoc,
                              const uint8_t **out)
{
    size_t at = 4;
    while (at + 4 <= len) {
        uint8_t dlen = page[at + 3];
        if ((page[at + 1] & 0x0F) == type && ((page[at + 1] >> 4) & 0x03) == assoc) {
            *out = page + at + 4;
            return dlen;
        }
        at += 4 + dlen;
    }
    return 0;
}

static void test_vpd_pages_list_serial_naa_limits_and_provisioning(void **state)
{
    struct fx *f = open_disk("vpd.img");
    uint8_t buf[255];
    struct fx_res r = inquiry(f, true, 0x00, buf, sizeof(buf));
    expect_good(r);
    assert_int_equal(hv_be16(buf + 2), 6);
    static const uint8_t pages[] = { 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2 };
    assert_memory_equal(buf + 4, pages, 6);

    r = inquiry(f, true, 0x80, buf, sizeof(buf));
    expect_good(r);
    assert_int_equal(buf[1], 0x80);
    assert_int_equal(hv_be16(buf + 2), 32);     /* hex of the bdev's identity */

    uint8_t vpd83[255];
    r = inquiry(f, true, 0x83, vpd83, sizeof(vpd83));
    expect_good(r);
    const uint8_t *naa = NULL;
    assert_int_equal(find_designator(vpd83, r.in_bytes, 3, 0, &naa), 16);
    assert_int_equal(naa[0] >> 4, 6);
    const uint8_t *port = NULL;
    assert_int_equal(find_designator(vpd83, r.in_bytes, 4, 1, &port), 4);
    assert_int_equal(hv_be32(port), 1);

    /* The same file opened again (a restart) gives the same NAA id. */
    uint8_t naa1[16];
    memcpy(naa1, naa, 16);
    char path[512];
    snprintf(path, sizeof(path), "%s", f->path);
    fx_free(f);
    f = fx_open("vpd.img", DISK_BYTES, false, false);
    fx_clear_ua(f);
    r = inquiry(f, true, 0x83, vpd83, sizeof(vpd83));
    expect_good(r);
    assert_int_equal(find_designator(vpd83, r.in_bytes, 3, 0, &naa), 16);
    assert_memory_equal(naa, naa1, 16);

    r = inquiry(f, true, 0xB0, buf, sizeof(buf));
    expect_good(r);
    assert_int_equal(hv_be16(buf + 2), 0x3C);
    assert_int_equal(buf[4] & 1, 1);                    /* WSNZ */
    assert_true(buf[5] > 0);                            /* COMPARE AND WRITE length */
    assert_int_equal(hv_be16(buf + 6), 8);              /* 4 KiB physical */
    assert_true(hv_be32(buf + 8) >= 2048);              /* max transfer */
    assert_true(hv_be32(buf + 20) > 0);                 /* max unmap LBA count */
    assert_true(hv_be32(buf + 24) > 0);                 /* max unmap descriptors */
    assert_int_equal(hv_be32(buf + 28), 8);             /* raw: no granularity, use 4 KiB */
    assert_true(hv_be64(buf + 36) > 0);                 /* max write same */

    r = inquiry(f, true, 0xB1, buf, sizeof(buf));
    expect_good(r);
    assert_int_equal(hv_be16(buf + 4), 1);              /* non-rotating */

    r = inquiry(f, true, 0xB2, buf, sizeof(buf));
    expect_good(r);
    assert_int_equal(buf[5] & 0xE0, 0xE0);              /* LBPU LBPWS LBPWS10 */
    assert_int_equal(buf[5] & 0x04, 0x04);              /* LBPRZ: a hole reads zero */
    assert_int_equal(buf[6] & 0x07, 2);                 /* thin */
    fx_free(f);
}

static void test_read_capacity_10_and_16(void **state)
{
    struct fx *f = open_disk("cap.img");
    uint8_t buf[32];
    uint8_t rc10[10] = { 0x25 };
    struct fx_res r = fx_cmd(f, &f->n1, rc10, 10, NULL, 0, buf, 8);
    expect_good(r);
    assert_int_equal(hv_be32(buf), BLOCKS - 1);
    assert_int_equal(hv_be32(buf + 4), 512);
    rc10[5] = 1;                                        /* LBA without PMI */
    expect_sense(fx_cmd(f, &f->n1, rc10, 10, NULL, 0, buf, 8), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);

    uint8_t rc16[16] = { 0x9E, 0x10 };
    hv_put_be32(rc16 + 10, 32);
    r = fx_cmd(f, &f->n1, rc16, 16, NULL, 0, buf, 32);
    expect_good(r);
    assert_int_equal(r.in_bytes, 32);
    assert_int_equal(hv_be64(buf), BLOCKS - 1);
    assert_int_equal(hv_be32(buf + 8), 512);
    assert_int_equal(buf[13] & 0x0F, 3);                /* 8 logical per physical */
    assert_int_equal(buf[14] & 0xC0, 0xC0);             /* LBPME, LBPRZ */
    hv_put_be32(rc16 + 10, 12);
    r = fx_cmd(f, &f->n1, rc16, 16, NULL, 0, buf, 32);
    expect_good(r);
    assert_int_equal(r.in_bytes, 12);
    fx_free(f);
}

static void test_read_write_all_sizes_round_trip(void **state)
{
    struct fx *f = open_disk("rw.img");
    uint8_t *data = malloc(64 * 512), *back = malloc(64 * 512);
    uint8_t cdb[16];

    t_fill(data, 64 * 512, 1);
    cdb_rw10(cdb, 0x2A, 100, 64);
    cdb[1] = 0x08;                                      /* FUA */
    expect_good(fx_cmd(f, &f->n1, cdb, 10, data, 64 * 512, NULL, 0));
    cdb_rw16(cdb, 0x88, 100, 64);
    struct fx_res r = fx_cmd(f, &f->n1, cdb, 16, NULL, 0, back, 64 * 512);
    expect_good(r);
    assert_int_equal(r.in_bytes, 64 * 512);
    assert_memory_equal(data, back, 64 * 512);

    t_fill(data, 64 * 512, 2);
    cdb_rw16(cdb, 0x8A, BLOCKS - 64, 64);
    expect_good(fx_cmd(f, &f->n1, cdb, 16, data, 64 * 512, NULL, 0));
    cdb_rw12(cdb, 0xA8, BLOCKS - 64, 64);
    expect_good(fx_cmd(f, &f->n1, cdb, 12, NULL, 0, back, 64 * 512));
    assert_memory_equal(data, back, 64 * 512);

    /* READ(6)/WRITE(6): 21-bit LBA, a length of 0 means 256 blocks */
    uint8_t *big = malloc(256 * 512), *bigback = malloc(256 * 512);
    t_fill(big, 256 * 512, 3);
    uint8_t w6[6] = { 0x0A, 0x00, 0x10, 0x00, 0x00, 0 };
    expect_good(fx_cmd(f, &f->n1, w6, 6, big, 256 * 512, NULL, 0));
    cdb_rw12(cdb, 0xA8, 0x1000, 256);
    expect_good(fx_cmd(f, &f->n1, cdb, 12, NULL, 0, bigback, 256 * 512));
    assert_memory_equal(big, bigback, 256 * 512);
    uint8_t r6[6] = { 0x08, 0x00, 0x10, 0x00, 0x01, 0 };
    expect_good(fx_cmd(f, &f->n1, r6, 6, NULL, 0, back, 512));
    assert_memory_equal(big, back, 512);
    free(big);
    free(bigback);

    /* the data really is in the file at the right place */
    int fd = open(f->path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, back, 512, 100 * 512), 512);
    t_fill(data, 64 * 512, 1);
    assert_memory_equal(data, back, 512);
    close(fd);
    free(data);
    free(back);
    fx_free(f);
}

static void test_read_write_range_protect_and_zero_length(void **state)
{
    struct fx *f = open_disk("range.img");
    uint8_t buf[1024];
    uint8_t cdb[16];
    cdb_rw10(cdb, 0x28, BLOCKS - 1, 2);
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 1024), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LBA_OUT_OF_RANGE);
    cdb_rw16(cdb, 0x88, UINT64_MAX, 1);
    expect_sense(fx_cmd(f, &f->n1, cdb, 16, NULL, 0, buf, 512), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LBA_OUT_OF_RANGE);
    cdb_rw16(cdb, 0x8A, BLOCKS, 1);
    expect_sense(fx_cmd(f, &f->n1, cdb, 16, buf, 512, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LBA_OUT_OF_RANGE);
    cdb_rw10(cdb, 0x28, 0, 1);
    cdb[1] = 0x20;                                      /* RDPROTECT without protection */
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 512), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    cdb_rw10(cdb, 0x2A, 0, 1);
    cdb[1] = 0x40;
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, buf, 512, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    cdb_rw10(cdb, 0x28, 5, 0);                          /* zero blocks: nothing, GOOD */
    struct fx_res r = fx_cmd(f, &f->n1, cdb, 10, NULL, 0, NULL, 0);
    expect_good(r);
    assert_int_equal(r.in_bytes, 0);
    cdb_rw10(cdb, 0x28, BLOCKS, 0);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, NULL, 0));
    fx_free(f);
}

static void test_transfer_length_against_expected_length(void **state)
{
    struct fx *f = open_disk("resid.img");
    uint8_t buf[4096];
    uint8_t cdb[16];
    memset(buf, 'a', sizeof(buf));
    cdb_rw10(cdb, 0x2A, 0, 4);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, buf, 2048, NULL, 0));

    /* EDTL shorter than the READ: the whole blocks that fit are sent */
    cdb_rw10(cdb, 0x28, 0, 4);
    struct fx_res r = fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 1024);
    expect_good(r);
    assert_int_equal(r.in_bytes, 1024);
    assert_int_equal(r.wanted_bytes, 2048);
    /* EDTL longer: underflow */
    r = fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 4096);
    expect_good(r);
    assert_int_equal(r.in_bytes, 2048);
    /* a partial block: refused */
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 200), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_IU);
    /* WRITE with less data than the CDB: refused, nothing written */
    memset(buf, 'b', sizeof(buf));
    cdb_rw10(cdb, 0x2A, 0, 2);
    r = fx_cmd(f, &f->n1, cdb, 10, buf, 512, NULL, 0);
    expect_sense(r, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_IU);
    assert_int_equal(r.wanted_bytes, 1024);
    cdb_rw10(cdb, 0x28, 0, 1);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 512));
    assert_int_equal(buf[0], 'a');
    fx_free(f);
}

static void test_unknown_opcode_and_test_unit_ready_and_request_sense(void **state)
{
    struct fx *f = open_disk("misc.img");
    uint8_t buf[64];
    uint8_t cdb[16] = { 0xC7 };
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_OPCODE);
    uint8_t tur[6] = { 0 };
    expect_good(fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0));
    uint8_t rs[6] = { 0x03, 0, 0, 0, 252, 0 };
    struct fx_res r = fx_cmd(f, &f->n1, rs, 6, NULL, 0, buf, 252);
    expect_good(r);
    assert_int_equal(r.in_bytes, 18);
    assert_int_equal(buf[0], 0x70);
    assert_int_equal(buf[2] & 0x0F, SCSI_SENSE_NO_SENSE);
    rs[1] = 1;                                          /* DESC */
    r = fx_cmd(f, &f->n1, rs, 6, NULL, 0, buf, 252);
    expect_good(r);
    assert_int_equal(buf[0], 0x72);
    /* a service action we do not have */
    uint8_t sai[16] = { 0x9E, 0x1F };
    expect_sense(fx_cmd(f, &f->n1, sai, 16, NULL, 0, buf, 32), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    fx_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inquiry_standard_data_describes_an_spc4_disk),
        cmocka_unit_test(test_vpd_pages_list_serial_naa_limits_and_provisioning),
        cmocka_unit_test(test_read_capacity_10_and_16),
        cmocka_unit_test(test_read_write_all_sizes_round_trip),
        cmocka_unit_test(test_read_write_range_protect_and_zero_length),
        cmocka_unit_test(test_transfer_length_against_expected_length),
        cmocka_unit_test(test_unknown_opcode_and_test_unit_ready_and_request_sense),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
