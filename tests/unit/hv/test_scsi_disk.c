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
    struct fx_res bad = fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 512);
    expect_sense(bad, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_CDB);
    /* the sense-key specific field pointer names CDB byte 1, bit 7 */
    assert_int_equal(bad.sense[15], 0x80 | 0x40 | 0x08 | 7);
    assert_int_equal(hv_be16(bad.sense + 16), 1);
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
    /* no data-in buffer at all (EDTL 0): GOOD, nothing moved, all overflow */
    r = fx_cmd(f, &f->n1, cdb, 10, NULL, 0, NULL, 0);
    expect_good(r);
    assert_int_equal(r.in_bytes, 0);
    assert_int_equal(r.wanted_bytes, 2048);
    /* an EDTL that ends inside a block: the part that fits, GOOD */
    uint8_t part[1200];
    memset(part, 0xEE, sizeof(part));
    r = fx_cmd(f, &f->n1, cdb, 10, NULL, 0, part, 700);
    expect_good(r);
    assert_int_equal(r.in_bytes, 700);
    for (int i = 0; i < 700; i++)
        assert_int_equal(part[i], 'a');
    assert_int_equal(part[700], 0xEE);                  /* nothing past the EDTL */
    r = fx_cmd(f, &f->n1, cdb, 10, NULL, 0, part, 200);
    expect_good(r);
    assert_int_equal(r.in_bytes, 200);
    /* WRITE with less data than the CDB: the expected part is written */
    memset(buf, 'b', sizeof(buf));
    cdb_rw10(cdb, 0x2A, 0, 2);
    r = fx_cmd(f, &f->n1, cdb, 10, buf, 512, NULL, 0);
    expect_good(r);
    assert_int_equal(r.wanted_bytes, 1024);
    cdb_rw10(cdb, 0x28, 0, 2);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 1024));
    assert_int_equal(buf[0], 'b');
    assert_int_equal(buf[511], 'b');
    assert_int_equal(buf[512], 'a');                    /* second block untouched */
    /* a WRITE whose data ends inside a block: refused, nothing written */
    memset(buf, 'c', sizeof(buf));
    cdb_rw10(cdb, 0x2A, 0, 1);
    r = fx_cmd(f, &f->n1, cdb, 10, buf, 200, NULL, 0);
    expect_sense(r, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_IU);
    cdb_rw10(cdb, 0x28, 0, 1);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 512));
    assert_int_equal(buf[0], 'b');
    /* a WRITE with no data-out at all: nothing written, GOOD (all overflow) */
    cdb_rw10(cdb, 0x2A, 0, 1);
    r = fx_cmd(f, &f->n1, cdb, 10, NULL, 0, NULL, 0);
    expect_good(r);
    assert_int_equal(r.wanted_bytes, 512);
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


static bool is_hole(struct fx *f, uint64_t lba, uint64_t blocks)
{
    uint32_t status = 0;
    uint64_t len = 0;
    int depth = 0;
    assert_int_equal(bdev_block_status_sync(f->bd, lba * 512, blocks * 512, &status, &len,
                                            &depth), 0);
    return !(status & BDEV_STATUS_ALLOCATED) && len >= blocks * 512;
}

static void write_pattern(struct fx *f, uint64_t lba, uint32_t blocks, uint64_t seed)
{
    uint8_t *data = malloc((size_t)blocks * 512);
    uint8_t cdb[16];
    t_fill(data, (size_t)blocks * 512, seed);
    cdb_rw16(cdb, 0x8A, lba, blocks);
    expect_good(fx_cmd(f, &f->n1, cdb, 16, data, blocks * 512, NULL, 0));
    free(data);
}

static void test_write_same_with_unmap_punches_holes_that_read_zero(void **state)
{
    struct fx *f = open_disk("wsu.img");
    uint8_t zero[512] = { 0 };
    uint8_t cdb[16];
    write_pattern(f, 0, 2048, 5);
    assert_false(is_hole(f, 0, 2048));
    cdb_rw16(cdb, 0x93, 256, 1024);
    cdb[1] = 0x08;                                      /* UNMAP */
    expect_good(fx_cmd(f, &f->n1, cdb, 16, zero, 512, NULL, 0));
    assert_true(is_hole(f, 256, 1024));
    assert_false(is_hole(f, 0, 8));
    uint8_t *back = malloc(1024 * 512);
    cdb_rw16(cdb, 0x88, 256, 1024);
    expect_good(fx_cmd(f, &f->n1, cdb, 16, NULL, 0, back, 1024 * 512));
    assert_true(hv_buf_is_zero(back, 1024 * 512));
    /* WRITE SAME(10) with NDOB is not a thing; with zeroes and no UNMAP it
     * writes zeroes (allocating is allowed, reading zero is required) */
    write_pattern(f, 0, 64, 6);
    cdb_rw10(cdb, 0x41, 0, 64);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, zero, 512, NULL, 0));
    cdb_rw16(cdb, 0x88, 0, 64);
    expect_good(fx_cmd(f, &f->n1, cdb, 16, NULL, 0, back, 64 * 512));
    assert_true(hv_buf_is_zero(back, 64 * 512));
    /* WRITE SAME(16) NDOB: no data-out, zeroes */
    write_pattern(f, 0, 64, 7);
    cdb_rw16(cdb, 0x93, 0, 64);
    cdb[1] = 0x09;
    expect_good(fx_cmd(f, &f->n1, cdb, 16, NULL, 0, NULL, 0));
    assert_true(is_hole(f, 0, 64));
    free(back);
    fx_free(f);
}

static void test_write_same_replicates_a_block_beyond_the_scratch_buffer(void **state)
{
    struct fx *f = open_disk("wsp.img");
    uint8_t block[512];
    uint8_t cdb[16];
    uint32_t blocks = 5000;                             /* > 1 MiB of pattern */
    t_fill(block, sizeof(block), 9);
    cdb_rw16(cdb, 0x93, 100, blocks);
    cdb[1] = 0x08;                                      /* UNMAP with data: must write */
    expect_good(fx_cmd(f, &f->n1, cdb, 16, block, 512, NULL, 0));
    uint8_t *back = malloc((size_t)blocks * 512);
    cdb_rw16(cdb, 0x88, 100, blocks);
    expect_good(fx_cmd(f, &f->n1, cdb, 16, NULL, 0, back, blocks * 512));
    for (uint32_t i = 0; i < blocks; i++)
        assert_memory_equal(back + (size_t)i * 512, block, 512);
    free(back);

    /* errors: zero blocks (WSNZ), beyond the end, WRPROTECT, ANCHOR, no data */
    cdb_rw10(cdb, 0x41, 0, 0);
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, block, 512, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    cdb_rw10(cdb, 0x41, BLOCKS - 1, 2);
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, block, 512, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LBA_OUT_OF_RANGE);
    cdb_rw10(cdb, 0x41, 0, 1);
    cdb[1] = 0x20;
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, block, 512, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    cdb[1] = 0x10;
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, block, 512, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    cdb[1] = 0;
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, block, 100, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    uint8_t two[1024] = { 0 };
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, two, 1024, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    fx_free(f);
}

static struct fx_res unmap(struct fx *f, const uint64_t *lbas, const uint32_t *counts, int n)
{
    uint8_t param[8 + 16 * 8] = { 0 };
    uint8_t cdb[10] = { 0x42 };
    hv_put_be16(param, (uint16_t)(6 + 16 * n));
    hv_put_be16(param + 2, (uint16_t)(16 * n));
    for (int i = 0; i < n; i++) {
        hv_put_be64(param + 8 + 16 * i, lbas[i]);
        hv_put_be32(param + 8 + 16 * i + 8, counts[i]);
    }
    hv_put_be16(cdb + 7, (uint16_t)(8 + 16 * n));
    return fx_cmd(f, &f->n1, cdb, 10, param, (uint32_t)(8 + 16 * n), NULL, 0);
}

static struct fx_res get_lba_status(struct fx *f, uint64_t lba, uint8_t *buf, uint32_t len)
{
    uint8_t cdb[16] = { 0x9E, 0x12 };
    hv_put_be64(cdb + 2, lba);
    hv_put_be32(cdb + 10, len);
    return fx_cmd(f, &f->n1, cdb, 16, NULL, 0, buf, len);
}

static void test_unmap_deallocates_and_get_lba_status_reports_it(void **state)
{
    struct fx *f = open_disk("unmap.img");
    write_pattern(f, 0, 4096, 11);
    uint64_t lbas[2] = { 1024, 3072 };
    uint32_t counts[2] = { 512, 1024 };
    expect_good(unmap(f, lbas, counts, 2));
    assert_true(is_hole(f, 1024, 512));
    assert_true(is_hole(f, 3072, 1024));
    assert_false(is_hole(f, 0, 1024));
    assert_false(is_hole(f, 1536, 1536));

    uint8_t buf[8 + 16 * 8];
    struct fx_res r = get_lba_status(f, 0, buf, sizeof(buf));
    expect_good(r);
    uint32_t n = (hv_be32(buf) - 4) / 16;
    assert_true(n >= 4);
    /* mapped 0..1023, deallocated 1024..1535, mapped 1536..3071, deallocated 3072.. */
    assert_int_equal(hv_be64(buf + 8), 0);
    assert_int_equal(hv_be32(buf + 8 + 8), 1024);
    assert_int_equal(buf[8 + 12], 0);
    assert_int_equal(hv_be64(buf + 24), 1024);
    assert_int_equal(hv_be32(buf + 24 + 8), 512);
    assert_int_equal(buf[24 + 12], 1);
    assert_int_equal(hv_be64(buf + 40), 1536);
    assert_int_equal(buf[40 + 12], 0);
    assert_int_equal(hv_be64(buf + 56), 3072);
    assert_int_equal(buf[56 + 12], 1);
    /* starting inside a hole, room for one descriptor only */
    r = get_lba_status(f, 1100, buf, 24);
    expect_good(r);
    assert_int_equal(r.in_bytes, 24);
    assert_int_equal(hv_be64(buf + 8), 1100);
    assert_int_equal(hv_be32(buf + 16), 436);
    assert_int_equal(buf[20], 1);
    expect_sense(get_lba_status(f, BLOCKS, buf, sizeof(buf)), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LBA_OUT_OF_RANGE);

    /* a bad descriptor anywhere: nothing is unmapped */
    uint64_t bad_lbas[2] = { 0, BLOCKS - 1 };
    uint32_t bad_counts[2] = { 8, 2 };
    expect_sense(unmap(f, bad_lbas, bad_counts, 2), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LBA_OUT_OF_RANGE);
    assert_false(is_hole(f, 0, 8));
    /* zero-length parameter list is fine; a short one is not */
    uint8_t cdb[10] = { 0x42 };
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, NULL, 0));
    uint8_t param[4] = { 0 };
    hv_put_be16(cdb + 7, 4);
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, param, 4, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_PARAMETER_LIST_LENGTH_ERROR);
    cdb[1] = 1;                                         /* ANCHOR */
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, param, 4, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    fx_free(f);
}

/* MAXIMUM UNMAP LBA COUNT bounds a whole UNMAP, not each descriptor. */
static void test_unmap_limit_counts_all_descriptors(void **state)
{
    struct fx *f = fx_new("unmapbig.img", 2 * HV_GiB, false);   /* sparse */
    fx_clear_ua(f);
    uint8_t vpd[64];
    uint8_t inq[6] = { 0x12, 1, 0xB0, 0, 64, 0 };
    expect_good(fx_cmd(f, &f->n1, inq, 6, NULL, 0, vpd, 64));
    uint32_t max_unmap = hv_be32(vpd + 20);
    assert_true((uint64_t)max_unmap + 2 <= 2 * HV_GiB / 512);
    uint64_t lbas[2] = { 0, max_unmap / 2 + 1 };
    uint32_t counts[2] = { max_unmap / 2 + 1, max_unmap / 2 + 1 };
    expect_sense(unmap(f, lbas, counts, 2), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_PARAMETER_LIST);
    counts[1] = max_unmap - counts[0];
    expect_good(unmap(f, lbas, counts, 2));
    fx_free(f);
}

static struct fx_res caw(struct fx *f, uint64_t lba, uint8_t blocks, const uint8_t *cmp,
                         const uint8_t *data)
{
    uint8_t cdb[16] = { 0x89 };
    uint8_t *out = malloc((size_t)blocks * 1024);
    memcpy(out, cmp, (size_t)blocks * 512);
    memcpy(out + (size_t)blocks * 512, data, (size_t)blocks * 512);
    hv_put_be64(cdb + 2, lba);
    cdb[13] = blocks;
    struct fx_res r = fx_cmd(f, &f->n1, cdb, 16, out, blocks * 1024u, NULL, 0);
    free(out);
    return r;
}

static void test_compare_and_write_writes_on_match_and_reports_miscompare(void **state)
{
    struct fx *f = open_disk("caw.img");
    uint8_t old[2048], new[2048], back[2048];
    uint8_t cdb[16];
    write_pattern(f, 40, 4, 21);
    t_fill(old, sizeof(old), 21);
    t_fill(new, sizeof(new), 22);
    expect_good(caw(f, 40, 4, old, new));
    cdb_rw10(cdb, 0x28, 40, 4);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, back, 2048));
    assert_memory_equal(back, new, 2048);

    /* now `old` no longer matches: MISCOMPARE, offset of the first difference */
    uint8_t cmp[2048];
    memcpy(cmp, new, sizeof(cmp));
    cmp[1500] ^= 0xFF;
    struct fx_res r = caw(f, 40, 4, cmp, old);
    expect_sense(r, SCSI_SENSE_MISCOMPARE, SCSI_ASC_MISCOMPARE_DURING_VERIFY);
    assert_int_equal(r.sense[0] & 0x80, 0x80);          /* VALID */
    assert_int_equal(hv_be32(r.sense + 3), 1500);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, back, 2048));
    assert_memory_equal(back, new, 2048);               /* untouched */

    expect_sense(caw(f, BLOCKS - 1, 2, old, new), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LBA_OUT_OF_RANGE);
    uint8_t short_cdb[16] = { 0x89 };
    short_cdb[13] = 2;
    expect_sense(fx_cmd(f, &f->n1, short_cdb, 16, old, 1024, NULL, 0),
                 SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_CDB);
    short_cdb[13] = 1;                                  /* too much data for one block */
    expect_sense(fx_cmd(f, &f->n1, short_cdb, 16, old, 2048, NULL, 0),
                 SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_CDB);
    fx_free(f);
}

/* Overlapping WRITEs and COMPARE AND WRITEs issued together: the compare
 * sees either all or none of a write, never a part. */
static void test_compare_and_write_is_atomic_against_overlapping_writes(void **state)
{
    struct fx *f = open_disk("cawatomic.img");
    enum { N = 16, BL = 8 };
    static uint8_t a[BL * 512], b[BL * 512], cawbuf[N][BL * 1024];
    struct scsi_task tasks[N];
    struct iovec iov[N];
    struct fx_wait w[N];
    memset(a, 0xAA, sizeof(a));
    memset(b, 0xBB, sizeof(b));
    uint8_t cdb[16];
    cdb_rw10(cdb, 0x2A, 0, BL);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, a, sizeof(a), NULL, 0));
    memset(tasks, 0, sizeof(tasks));
    memset(w, 0, sizeof(w));
    for (int i = 0; i < N; i++) {
        struct scsi_task *t = &tasks[i];
        t->nexus = &f->n1;
        t->dir = SCSI_DIR_OUT;
        t->out_iov = &iov[i];
        t->out_iovcnt = 1;
        t->done = fx_task_done;
        t->transport_arg = &w[i];
        t->tag = (uint32_t)i;
        if (i % 2 == 0) {                               /* CAW: a -> b */
            memcpy(cawbuf[i], a, sizeof(a));
            memcpy(cawbuf[i] + sizeof(a), b, sizeof(b));
            t->cdb[0] = 0x89;
            t->cdb[13] = BL;
            t->cdb_len = 16;
            iov[i].iov_base = cawbuf[i];
            iov[i].iov_len = sizeof(a) * 2;
        } else {                                        /* WRITE: a */
            cdb_rw10(t->cdb, 0x2A, 0, BL);
            t->cdb_len = 10;
            iov[i].iov_base = a;
            iov[i].iov_len = sizeof(a);
        }
        t->expected_bytes = t->out_bytes = (uint32_t)iov[i].iov_len;
        scsi_controller_execute(f->c, t);
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(hv_reactor_run_until(f->r, &w[i].done), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(w[i].calls, 1);
        if (tasks[i].status == SCSI_STATUS_CHECK_CONDITION) {
            uint8_t key, asc, ascq;
            fx_parse_sense(tasks[i].sense, tasks[i].sense_len, &key, &asc, &ascq);
            assert_int_equal(key, SCSI_SENSE_MISCOMPARE);
        } else {
            assert_int_equal(tasks[i].status, SCSI_STATUS_GOOD);
        }
    }
    uint8_t back[BL * 512];
    cdb_rw10(cdb, 0x28, 0, BL);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, back, sizeof(back)));
    assert_true(memcmp(back, a, sizeof(a)) == 0 || memcmp(back, b, sizeof(b)) == 0);
    fx_free(f);
}

static void test_verify_reads_and_compares(void **state)
{
    struct fx *f = open_disk("verify.img");
    uint8_t data[4096];
    uint8_t cdb[16];
    write_pattern(f, 8, 8, 31);
    t_fill(data, sizeof(data), 31);
    cdb_rw10(cdb, 0x2F, 8, 8);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, NULL, 0));        /* BYTCHK 0 */
    cdb[1] = 0x02;                                                     /* BYTCHK 1 */
    expect_good(fx_cmd(f, &f->n1, cdb, 10, data, sizeof(data), NULL, 0));
    data[700] ^= 1;
    struct fx_res r = fx_cmd(f, &f->n1, cdb, 10, data, sizeof(data), NULL, 0);
    expect_sense(r, SCSI_SENSE_MISCOMPARE, SCSI_ASC_MISCOMPARE_DURING_VERIFY);
    assert_int_equal(hv_be32(r.sense + 3), 700);
    cdb_rw16(cdb, 0x8F, BLOCKS - 4, 8);
    expect_sense(fx_cmd(f, &f->n1, cdb, 16, NULL, 0, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LBA_OUT_OF_RANGE);
    cdb_rw12(cdb, 0xAF, 0, 1);
    cdb[1] = 0x20;                                                     /* VRPROTECT */
    expect_sense(fx_cmd(f, &f->n1, cdb, 12, NULL, 0, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    /* BYTCHK 11: every block against the one block sent */
    uint8_t zero[512] = { 0 };
    cdb_rw10(cdb, 0x2F, 20000, 16);
    cdb[1] = 0x06;
    expect_good(fx_cmd(f, &f->n1, cdb, 10, zero, 512, NULL, 0));
    fx_free(f);
}

static void test_synchronize_cache_and_start_stop_flush(void **state)
{
    struct fx *f = open_disk("sync.img");
    uint8_t cdb[16];
    cdb_rw10(cdb, 0x35, 0, 0);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, NULL, 0));
    cdb_rw16(cdb, 0x91, 0, 100);
    expect_good(fx_cmd(f, &f->n1, cdb, 16, NULL, 0, NULL, 0));
    cdb_rw16(cdb, 0x91, BLOCKS, 1);
    expect_sense(fx_cmd(f, &f->n1, cdb, 16, NULL, 0, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LBA_OUT_OF_RANGE);
    uint8_t ssu[6] = { 0x1B, 0, 0, 0, 0x00, 0 };      /* STOP: flush, keep answering */
    expect_good(fx_cmd(f, &f->n1, ssu, 6, NULL, 0, NULL, 0));
    uint8_t tur[6] = { 0 };
    expect_good(fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0));
    ssu[4] = 0x01;
    expect_good(fx_cmd(f, &f->n1, ssu, 6, NULL, 0, NULL, 0));
    uint8_t pa[6] = { 0x1E, 0, 0, 0, 1, 0 };
    expect_good(fx_cmd(f, &f->n1, pa, 6, NULL, 0, NULL, 0));
    pa[4] = 0;
    expect_good(fx_cmd(f, &f->n1, pa, 6, NULL, 0, NULL, 0));
    fx_free(f);
}

static struct fx_res mode_sense10(struct fx *f, const struct scsi_nexus *n, uint8_t b1,
                                  uint8_t pc_page, uint8_t sub, uint8_t *buf, uint16_t len)
{
    uint8_t cdb[10] = { 0x5A, b1, pc_page, sub };
    hv_put_be16(cdb + 7, len);
    return fx_cmd(f, n, cdb, 10, NULL, 0, buf, len);
}

static const uint8_t *find_page(const uint8_t *buf, size_t len, size_t hdr, uint8_t page)
{
    size_t at = hdr;
    while (at + 2 <= len) {
        if ((buf[at] & 0x3F) == page)
            return buf + at;
        at += 2 + buf[at + 1];
    }
    return NULL;
}

static void test_mode_sense_pages_and_page_controls(void **state)
{
    struct fx *f = open_disk("ms.img");
    uint8_t buf[512];
    /* MODE SENSE(6), all pages, with a block descriptor */
    uint8_t ms6[6] = { 0x1A, 0, 0x3F, 0, 255, 0 };
    struct fx_res r = fx_cmd(f, &f->n1, ms6, 6, NULL, 0, buf, 255);
    expect_good(r);
    assert_int_equal(buf[0] + 1u, r.in_bytes);
    assert_int_equal(buf[2] & 0x80, 0);                 /* not write protected */
    assert_int_equal(buf[2] & 0x10, 0x10);              /* DPOFUA */
    assert_int_equal(buf[3], 8);
    assert_int_equal(hv_be32(buf + 4), BLOCKS);
    assert_int_equal(hv_be32(buf + 8) & 0xFFFFFF, 512);
    const uint8_t *caching = find_page(buf, r.in_bytes, 4 + 8, 0x08);
    assert_non_null(caching);
    assert_int_equal(caching[1], 0x12);
    assert_int_equal(caching[2] & 0x04, 0x04);          /* WCE: the raw file has a cache */
    const uint8_t *control = find_page(buf, r.in_bytes, 4 + 8, 0x0A);
    assert_non_null(control);
    assert_int_equal(control[2] & 0x04, 0);             /* fixed sense */
    assert_non_null(find_page(buf, r.in_bytes, 4 + 8, 0x1C));

    /* DBD, single page; truncated by the allocation length */
    ms6[1] = 0x08;
    ms6[2] = 0x08;
    r = fx_cmd(f, &f->n1, ms6, 6, NULL, 0, buf, 255);
    expect_good(r);
    assert_int_equal(buf[3], 0);
    assert_int_equal(r.in_bytes, 4 + 20);
    ms6[4] = 4;
    r = fx_cmd(f, &f->n1, ms6, 6, NULL, 0, buf, 255);
    assert_int_equal(r.in_bytes, 4);
    assert_int_equal(buf[0], 4 + 20 - 1);

    /* MODE SENSE(10) with a long LBA descriptor */
    r = mode_sense10(f, &f->n1, 0x10, 0x0A, 0, buf, 255);
    expect_good(r);
    assert_int_equal(buf[4] & 1, 1);
    assert_int_equal(hv_be16(buf + 6), 16);
    assert_int_equal(hv_be64(buf + 8), BLOCKS);
    /* changeable values: D_SENSE, SWP, WCE */
    r = mode_sense10(f, &f->n1, 0x08, 0x40 | 0x3F, 0, buf, 255);
    expect_good(r);
    control = find_page(buf, r.in_bytes, 8, 0x0A);
    assert_int_equal(control[2], 0x04);
    assert_int_equal(control[4], 0x08);
    caching = find_page(buf, r.in_bytes, 8, 0x08);
    assert_int_equal(caching[2], 0x04);
    /* all pages and subpages */
    expect_good(mode_sense10(f, &f->n1, 0x08, 0x3F, 0xFF, buf, 255));
    /* saved values are not kept; unknown page or subpage */
    expect_sense(mode_sense10(f, &f->n1, 0x08, 0xC0 | 0x08, 0, buf, 255),
                 SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_SAVING_PARAMETERS_NOT_SUPPORTED);
    expect_sense(mode_sense10(f, &f->n1, 0x08, 0x19, 0, buf, 255), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    expect_sense(mode_sense10(f, &f->n1, 0x08, 0x08, 0x01, buf, 255),
                 SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_CDB);
    fx_free(f);
}

static struct fx_res mode_select_control(struct fx *f, uint8_t byte2, uint8_t byte4,
                                         uint8_t byte3)
{
    uint8_t param[4 + 12] = { 0 };
    param[4] = 0x0A;
    param[5] = 0x0A;
    param[6] = byte2;
    param[7] = byte3;
    param[8] = byte4;
    hv_put_be16(param + 12, 0xFFFF);
    uint8_t cdb[6] = { 0x15, 0x10, 0, 0, sizeof(param), 0 };
    return fx_cmd(f, &f->n1, cdb, 6, param, sizeof(param), NULL, 0);
}

static void test_mode_select_switches_descriptor_sense_and_software_write_protect(void **state)
{
    struct fx *f = open_disk("msel.img");
    uint8_t buf[512];
    uint8_t cdb[16];
    /* D_SENSE on: errors come as descriptor sense */
    expect_good(mode_select_control(f, 0x02 | 0x04, 0, 0x10));
    uint8_t bad[10] = { 0xC7 };
    struct fx_res r = fx_cmd(f, &f->n1, bad, 10, NULL, 0, NULL, 0);
    assert_int_equal(r.sense[0], 0x72);
    assert_int_equal(r.key, SCSI_SENSE_ILLEGAL_REQUEST);
    /* a field pointer travels as a sense key specific descriptor */
    cdb_rw10(cdb, 0x28, 0, 1);
    cdb[1] = 0x40;
    r = fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 512);
    expect_sense(r, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_CDB);
    assert_int_equal(r.sense_len, 16);
    assert_int_equal(r.sense[7], 8);
    assert_int_equal(r.sense[8], 0x02);
    assert_int_equal(r.sense[12], 0x80 | 0x40 | 0x08 | 7);
    assert_int_equal(hv_be16(r.sense + 13), 1);
    /* the other nexus learns that the parameters changed */
    uint8_t tur[6] = { 0 };
    r = fx_cmd(f, &f->n2, tur, 6, NULL, 0, NULL, 0);
    expect_sense(r, SCSI_SENSE_UNIT_ATTENTION, SCSI_ASC_MODE_PARAMETERS_CHANGED);
    expect_good(mode_select_control(f, 0x02, 0, 0x10));
    r = fx_cmd(f, &f->n1, bad, 10, NULL, 0, NULL, 0);
    assert_int_equal(r.sense[0], 0x70);

    /* SWP: writes refused, WP bit shown */
    expect_good(mode_select_control(f, 0x02, 0x08, 0x10));
    cdb_rw10(cdb, 0x2A, 0, 1);
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, buf, 512, NULL, 0), SCSI_SENSE_DATA_PROTECT,
                 SCSI_ASC_SOFTWARE_WRITE_PROTECTED);
    uint8_t ms6[6] = { 0x1A, 0x08, 0x0A, 0, 255, 0 };
    fx_cmd(f, &f->n1, ms6, 6, NULL, 0, buf, 255);
    assert_int_equal(buf[2] & 0x80, 0x80);
    expect_good(mode_select_control(f, 0x02, 0, 0x10));
    expect_good(fx_cmd(f, &f->n1, cdb, 10, buf, 512, NULL, 0));

    /* a bit that is not changeable; PF=0; SP=1; wrong page length */
    expect_sense(mode_select_control(f, 0x02, 0, 0x00), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_PARAMETER_LIST);
    uint8_t param[4 + 12] = { 0 };
    uint8_t sel[6] = { 0x15, 0x00, 0, 0, sizeof(param), 0 };
    expect_sense(fx_cmd(f, &f->n1, sel, 6, param, sizeof(param), NULL, 0),
                 SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_CDB);
    sel[1] = 0x11;
    expect_sense(fx_cmd(f, &f->n1, sel, 6, param, sizeof(param), NULL, 0),
                 SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_CDB);
    sel[1] = 0x10;
    param[4] = 0x0A;
    param[5] = 0x08;
    expect_sense(fx_cmd(f, &f->n1, sel, 6, param, sizeof(param), NULL, 0),
                 SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_FIELD_IN_PARAMETER_LIST);

    /* caching page: write cache off makes every write durable (FUA) */
    uint8_t cache[4 + 20] = { 0 };
    cache[4] = 0x08;
    cache[5] = 0x12;
    uint8_t csel[6] = { 0x15, 0x10, 0, 0, sizeof(cache), 0 };
    expect_good(fx_cmd(f, &f->n1, csel, 6, cache, sizeof(cache), NULL, 0));
    uint8_t ms[6] = { 0x1A, 0x08, 0x08, 0, 255, 0 };
    fx_cmd(f, &f->n1, ms, 6, NULL, 0, buf, 255);
    assert_int_equal(buf[4 + 2] & 0x04, 0);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, buf, 512, NULL, 0));
    fx_free(f);
}

static void test_read_only_disk_refuses_writes_and_shows_wp(void **state)
{
    struct fx *f = fx_new("ro.img", DISK_BYTES, true);
    fx_clear_ua(f);
    uint8_t buf[1024] = { 0 };
    uint8_t cdb[16];
    cdb_rw10(cdb, 0x2A, 0, 1);
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, buf, 512, NULL, 0), SCSI_SENSE_DATA_PROTECT,
                 SCSI_ASC_WRITE_PROTECTED);
    cdb_rw16(cdb, 0x93, 0, 8);
    expect_sense(fx_cmd(f, &f->n1, cdb, 16, buf, 512, NULL, 0), SCSI_SENSE_DATA_PROTECT,
                 SCSI_ASC_WRITE_PROTECTED);
    uint64_t lba = 0;
    uint32_t count = 8;
    expect_sense(unmap(f, &lba, &count, 1), SCSI_SENSE_DATA_PROTECT, SCSI_ASC_WRITE_PROTECTED);
    cdb_rw10(cdb, 0x28, 0, 1);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 512));
    uint8_t ms6[6] = { 0x1A, 0x08, 0x3F, 0, 255, 0 };
    expect_good(fx_cmd(f, &f->n1, ms6, 6, NULL, 0, buf, 255));
    assert_int_equal(buf[2] & 0x80, 0x80);
    fx_free(f);
}

static struct fx_res rsoc(struct fx *f, uint8_t b2, uint8_t op, uint16_t sa, uint8_t *buf,
                          uint32_t len)
{
    uint8_t cdb[12] = { 0xA3, 0x0C, b2, op };
    hv_put_be16(cdb + 4, sa);
    hv_put_be32(cdb + 6, len);
    return fx_cmd(f, &f->n1, cdb, 12, NULL, 0, buf, len);
}

static void test_report_supported_operation_codes(void **state)
{
    struct fx *f = open_disk("rsoc.img");
    uint8_t buf[4096];
    struct fx_res r = rsoc(f, 0, 0, 0, buf, sizeof(buf));
    expect_good(r);
    uint32_t len = hv_be32(buf);
    assert_int_equal(r.in_bytes, len + 4);
    assert_int_equal(len % 8, 0);
    bool has_read16 = false, has_rc16 = false;
    for (uint32_t at = 4; at < len + 4; at += 8) {
        if (buf[at] == 0x88)
            has_read16 = true;
        if (buf[at] == 0x9E && hv_be16(buf + at + 2) == 0x10) {
            has_rc16 = true;
            assert_int_equal(buf[at + 5] & 1, 1);       /* SERVACTV */
        }
    }
    assert_true(has_read16 && has_rc16);
    /* with timeouts descriptors: 20 bytes each */
    r = rsoc(f, 0x80, 0, 0, buf, sizeof(buf));
    expect_good(r);
    assert_int_equal(hv_be32(buf) % 20, 0);

    /* one command: READ(10) and its usage data */
    r = rsoc(f, 0x01, 0x28, 0, buf, sizeof(buf));
    expect_good(r);
    assert_int_equal(buf[1] & 0x07, 3);
    assert_int_equal(hv_be16(buf + 2), 10);
    assert_int_equal(buf[4], 0x28);
    assert_int_equal(r.in_bytes, 14);
    r = rsoc(f, 0x02, 0x9E, 0x10, buf, sizeof(buf));
    expect_good(r);
    assert_int_equal(hv_be16(buf + 2), 16);
    /* not implemented: support 001b */
    r = rsoc(f, 0x01, 0xC7, 0, buf, sizeof(buf));
    expect_good(r);
    assert_int_equal(buf[1] & 0x07, 1);
    /* option 1 for an opcode with service actions, option 2 for one without */
    expect_sense(rsoc(f, 0x01, 0x9E, 0, buf, sizeof(buf)), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    expect_sense(rsoc(f, 0x02, 0x28, 0, buf, sizeof(buf)), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    fx_free(f);
}

static void test_stats_count_commands_bytes_and_latency(void **state)
{
    struct fx *f = open_disk("stats.img");
    write_pattern(f, 0, 8, 1);
    uint8_t buf[4096];
    uint8_t cdb[16];
    cdb_rw10(cdb, 0x28, 0, 8);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 4096));
    cdb_rw10(cdb, 0x28, BLOCKS, 8);
    fx_cmd(f, &f->n1, cdb, 10, NULL, 0, buf, 4096);
    json_t *obj = json_object();
    scsi_disk_stats(f->lu, obj);
    assert_true(json_integer_value(json_object_get(obj, "reads")) == 2);
    assert_true(json_integer_value(json_object_get(obj, "writes")) == 1);
    assert_true(json_integer_value(json_object_get(obj, "bytes_read")) == 4096);
    assert_true(json_integer_value(json_object_get(obj, "bytes_written")) == 4096);
    assert_true(json_integer_value(json_object_get(obj, "errors")) == 1);
    json_t *hist = json_object_get(obj, "latency_histogram_us");
    json_int_t total = 0;
    for (size_t i = 0; i < json_array_size(hist); i++)
        total += json_integer_value(json_object_get(json_array_get(hist, i), "count"));
    assert_true(total == json_integer_value(json_object_get(obj, "commands")));
    json_decref(obj);
    fx_free(f);
}

static void test_resize_reports_new_capacity_after_unit_attention(void **state)
{
    struct fx *f = open_disk("resize.img");
    struct hv_err err = { 0 };
    assert_int_equal(f->bd->ops->resize(f->bd, DISK_BYTES * 2, &err), 0);
    scsi_disk_capacity_changed(f->lu);
    uint8_t buf[32];
    uint8_t rc16[16] = { 0x9E, 0x10 };
    hv_put_be32(rc16 + 10, 32);
    expect_sense(fx_cmd(f, &f->n1, rc16, 16, NULL, 0, buf, 32), SCSI_SENSE_UNIT_ATTENTION,
                 SCSI_ASC_CAPACITY_DATA_CHANGED);
    expect_good(fx_cmd(f, &f->n1, rc16, 16, NULL, 0, buf, 32));
    assert_int_equal(hv_be64(buf), 2 * BLOCKS - 1);
    uint8_t cdb[16];
    cdb_rw16(cdb, 0x8A, 2 * BLOCKS - 1, 1);
    expect_good(fx_cmd(f, &f->n1, cdb, 16, buf, 512, NULL, 0));
    fx_free(f);
}

static void test_write_and_verify_and_prefetch(void **state)
{
    struct fx *f = open_disk("wav.img");
    uint8_t data[4096], back[4096];
    uint8_t cdb[16];
    t_fill(data, sizeof(data), 41);
    cdb_rw10(cdb, 0x2E, 16, 8);
    cdb[1] = 0x02;                                      /* BYTCHK: compare after writing */
    expect_good(fx_cmd(f, &f->n1, cdb, 10, data, sizeof(data), NULL, 0));
    cdb_rw10(cdb, 0x28, 16, 8);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, back, sizeof(back)));
    assert_memory_equal(data, back, sizeof(data));
    cdb_rw16(cdb, 0x8E, 24, 8);                         /* BYTCHK 0: just read it back */
    expect_good(fx_cmd(f, &f->n1, cdb, 16, data, sizeof(data), NULL, 0));
    cdb_rw12(cdb, 0xAE, BLOCKS - 1, 8);
    expect_sense(fx_cmd(f, &f->n1, cdb, 12, data, sizeof(data), NULL, 0),
                 SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LBA_OUT_OF_RANGE);
    cdb_rw10(cdb, 0x2E, 0, 1);
    cdb[1] = 0x04;                                      /* BYTCHK 10b: reserved */
    expect_sense(fx_cmd(f, &f->n1, cdb, 10, data, 512, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_INVALID_FIELD_IN_CDB);
    cdb_rw10(cdb, 0x34, 0, 100);
    expect_good(fx_cmd(f, &f->n1, cdb, 10, NULL, 0, NULL, 0));
    cdb_rw16(cdb, 0x90, BLOCKS - 1, 2);
    expect_sense(fx_cmd(f, &f->n1, cdb, 16, NULL, 0, NULL, 0), SCSI_SENSE_ILLEGAL_REQUEST,
                 SCSI_ASC_LBA_OUT_OF_RANGE);
    fx_free(f);
}

static int completion_seq;

static void ordered_done(struct scsi_task *t)
{
    int *slot = t->transport_arg;
    *slot = ++completion_seq;
}

/* An ORDERED task completes after every task before it and before every
 * task after it; SIMPLE ones around it may run in any order. */
static void test_ordered_task_waits_for_earlier_and_holds_later(void **state)
{
    struct fx *f = open_disk("ordered.img");
    enum { N = 9 };
    static uint8_t data[N][64 * 512];
    struct scsi_task tasks[N];
    struct iovec iov[N];
    int seq[N];
    memset(tasks, 0, sizeof(tasks));
    memset(seq, 0, sizeof(seq));
    completion_seq = 0;
    for (int i = 0; i < N; i++) {
        struct scsi_task *t = &tasks[i];
        t->nexus = &f->n1;
        t->done = ordered_done;
        t->transport_arg = &seq[i];
        t->task_attr = SCSI_TASK_ATTR_SIMPLE;
        if (i == 4) {
            cdb_rw10(t->cdb, 0x35, 0, 0);              /* SYNCHRONIZE CACHE, ORDERED */
            t->cdb_len = 10;
            t->task_attr = SCSI_TASK_ATTR_ORDERED;
        } else {
            cdb_rw10(t->cdb, 0x2A, (uint32_t)(i * 64), 64);
            t->cdb_len = 10;
            t->dir = SCSI_DIR_OUT;
            iov[i].iov_base = data[i];
            iov[i].iov_len = sizeof(data[i]);
            t->out_iov = &iov[i];
            t->out_iovcnt = 1;
            t->expected_bytes = t->out_bytes = sizeof(data[i]);
        }
        scsi_controller_execute(f->c, t);
    }
    while (completion_seq < N)
        assert_true(hv_reactor_run_once(f->r, 100) >= 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(tasks[i].status, SCSI_STATUS_GOOD);
        if (i < 4)
            assert_true(seq[i] < seq[4]);
        if (i > 4)
            assert_true(seq[i] > seq[4]);
    }
    fx_free(f);
}

/*
 * A filter bdev in front of the raw file that can neither discard nor write
 * zeroes nor tell block status, with a 64 KiB request limit and no volatile
 * cache: the disk must work on it through plain reads and writes.
 */
struct plain_bdev {
    struct bdev bd;
    struct bdev *inner;
    int fail_status;                /* complete every READ/WRITE with this when set */
};

static struct plain_bdev *plain_of_io;

static void plain_inner_done(struct bdev_io *inner, int status)
{
    struct bdev_io *outer = inner->cb_arg;
    if (plain_of_io && plain_of_io->fail_status &&
        (outer->type == BDEV_IO_READ || outer->type == BDEV_IO_WRITE))
        status = plain_of_io->fail_status;
    outer->done(outer, status);
}

static int plain_submit(struct bdev *bd, struct bdev_io *io)
{
    struct plain_bdev *p = (struct plain_bdev *)bd;
    if (io->type == BDEV_IO_DISCARD || io->type == BDEV_IO_WRITE_ZEROES ||
        io->type == BDEV_IO_BLOCK_STATUS)
        return -EOPNOTSUPP;
    struct bdev_io *inner = bdev_io_ctx(io);
    memset(inner, 0, sizeof(*inner));
    inner->type = io->type;
    inner->flags = io->flags;
    inner->offset = io->offset;
    inner->length = io->length;
    inner->iov = io->iov;
    inner->iovcnt = io->iovcnt;
    inner->done = plain_inner_done;
    inner->cb_arg = io;
    return bdev_submit(p->inner, inner);
}

static int plain_close(struct bdev *bd)
{
    free(bd);
    return 0;
}

static const struct bdev_ops plain_ops = { .name = "plain", .submit = plain_submit,
                                           .close = plain_close };

static void test_disk_on_a_bdev_without_discard_zeroes_status_and_with_errors(void **state)
{
    struct fx *f = open_disk("plain.img");
    struct hv_err err = { 0 };
    struct plain_bdev *p = calloc(1, sizeof(*p));
    p->bd = *f->bd;
    p->bd.ops = &plain_ops;
    p->bd.io_ctx_bytes = bdev_io_size(f->bd);
    p->bd.can_discard = false;
    p->bd.discard_zeroes = false;
    p->bd.has_volatile_cache = false;
    p->bd.max_io_bytes = 64 * 1024;
    p->inner = f->bd;
    struct scsi_lu *lu;
    assert_int_equal(scsi_disk_create(&p->bd, NULL, &lu, &err), 0);
    assert_int_equal(scsi_controller_attach(f->c, 1, lu), 0);
    uint8_t tur[6] = { 0 };
    fx_cmd_lun(f, &f->n1, 1, tur, 6, NULL, 0, NULL, 0);

    uint8_t buf[4096];
    uint8_t cdb[16];
    /* no thin provisioning advertised, UNMAP is not a command here */
    uint8_t inq[6] = { 0x12, 1, 0xB2, 0, 255, 0 };
    expect_good(fx_cmd_lun(f, &f->n1, 1, inq, 6, NULL, 0, buf, 255));
    assert_int_equal(buf[5], 0);
    inq[2] = 0xB0;
    expect_good(fx_cmd_lun(f, &f->n1, 1, inq, 6, NULL, 0, buf, 255));
    assert_int_equal(hv_be32(buf + 20), 0);
    assert_int_equal(hv_be32(buf + 24), 0);
    uint8_t rc16[16] = { 0x9E, 0x10 };
    hv_put_be32(rc16 + 10, 32);
    expect_good(fx_cmd_lun(f, &f->n1, 1, rc16, 16, NULL, 0, buf, 32));
    assert_int_equal(buf[14] & 0xC0, 0);
    uint8_t unmap_cdb[10] = { 0x42 };
    expect_sense(fx_cmd_lun(f, &f->n1, 1, unmap_cdb, 10, NULL, 0, NULL, 0),
                 SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_OPCODE);
    /* the caching page says there is no write cache to switch */
    uint8_t ms[6] = { 0x1A, 0x08, 0x08, 0, 255, 0 };
    expect_good(fx_cmd_lun(f, &f->n1, 1, ms, 6, NULL, 0, buf, 255));
    assert_int_equal(buf[4 + 2] & 0x04, 0);

    /* a READ larger than the bdev's request limit is split */
    static uint8_t big[1024 * 512], back[1024 * 512];
    t_fill(big, sizeof(big), 77);
    cdb_rw16(cdb, 0x8A, 0, 1024);
    expect_good(fx_cmd_lun(f, &f->n1, 1, cdb, 16, big, sizeof(big), NULL, 0));
    cdb_rw16(cdb, 0x88, 0, 1024);
    expect_good(fx_cmd_lun(f, &f->n1, 1, cdb, 16, NULL, 0, back, sizeof(back)));
    assert_memory_equal(big, back, sizeof(big));

    /* WRITE SAME of zeroes with UNMAP falls back to writing zeroes */
    uint8_t zero[512] = { 0 };
    cdb_rw16(cdb, 0x93, 0, 1024);
    cdb[1] = 0x08;
    expect_good(fx_cmd_lun(f, &f->n1, 1, cdb, 16, zero, 512, NULL, 0));
    cdb_rw16(cdb, 0x88, 0, 1024);
    expect_good(fx_cmd_lun(f, &f->n1, 1, cdb, 16, NULL, 0, back, sizeof(back)));
    assert_true(hv_buf_is_zero(back, sizeof(back)));
    /* GET LBA STATUS without block status: everything mapped */
    uint8_t gls[16] = { 0x9E, 0x12 };
    hv_put_be32(gls + 10, 64);
    expect_good(fx_cmd_lun(f, &f->n1, 1, gls, 16, NULL, 0, buf, 64));
    assert_int_equal(hv_be32(buf), 20);
    assert_int_equal(hv_be32(buf + 16), BLOCKS);
    assert_int_equal(buf[20], 0);

    /* device errors become sense data: -EIO on a read or a write is a
     * MEDIUM ERROR, a full file system is SPACE ALLOCATION FAILED */
    plain_of_io = p;
    p->fail_status = -EIO;
    cdb_rw10(cdb, 0x28, 0, 8);
    expect_sense(fx_cmd_lun(f, &f->n1, 1, cdb, 10, NULL, 0, buf, 4096), SCSI_SENSE_MEDIUM_ERROR,
                 SCSI_ASC_UNRECOVERED_READ_ERROR);
    cdb_rw10(cdb, 0x2A, 0, 8);
    expect_sense(fx_cmd_lun(f, &f->n1, 1, cdb, 10, buf, 4096, NULL, 0), SCSI_SENSE_MEDIUM_ERROR,
                 SCSI_ASC_WRITE_ERROR);
    p->fail_status = -ENOSPC;
    expect_sense(fx_cmd_lun(f, &f->n1, 1, cdb, 10, buf, 4096, NULL, 0), SCSI_SENSE_DATA_PROTECT,
                 SCSI_ASC_SPACE_ALLOCATION_FAILED);
    p->fail_status = -ENOMEM;
    expect_sense(fx_cmd_lun(f, &f->n1, 1, cdb, 10, buf, 4096, NULL, 0),
                 SCSI_SENSE_HARDWARE_ERROR, SCSI_ASC_INTERNAL_TARGET_FAILURE);
    p->fail_status = 0;
    plain_of_io = NULL;
    expect_good(fx_cmd_lun(f, &f->n1, 1, cdb, 10, buf, 4096, NULL, 0));

    struct scsi_lu *gone = scsi_controller_detach(f->c, 1);
    gone->ops->destroy(gone);
    bdev_close(&p->bd);
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
        cmocka_unit_test(test_write_same_with_unmap_punches_holes_that_read_zero),
        cmocka_unit_test(test_write_same_replicates_a_block_beyond_the_scratch_buffer),
        cmocka_unit_test(test_unmap_deallocates_and_get_lba_status_reports_it),
        cmocka_unit_test(test_unmap_limit_counts_all_descriptors),
        cmocka_unit_test(test_compare_and_write_writes_on_match_and_reports_miscompare),
        cmocka_unit_test(test_compare_and_write_is_atomic_against_overlapping_writes),
        cmocka_unit_test(test_verify_reads_and_compares),
        cmocka_unit_test(test_synchronize_cache_and_start_stop_flush),
        cmocka_unit_test(test_mode_sense_pages_and_page_controls),
        cmocka_unit_test(test_mode_select_switches_descriptor_sense_and_software_write_protect),
        cmocka_unit_test(test_read_only_disk_refuses_writes_and_shows_wp),
        cmocka_unit_test(test_report_supported_operation_codes),
        cmocka_unit_test(test_stats_count_commands_bytes_and_latency),
        cmocka_unit_test(test_resize_reports_new_capacity_after_unit_attention),
        cmocka_unit_test(test_write_and_verify_and_prefetch),
        cmocka_unit_test(test_ordered_task_waits_for_earlier_and_holds_later),
        cmocka_unit_test(test_disk_on_a_bdev_without_discard_zeroes_status_and_with_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
