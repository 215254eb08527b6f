/*
 * CDB decoding shared by the emulated disk and pass-through backups
 * (hv/scsi_cdb.c): which blocks a command addresses, and what a command
 * forwarded to a SAN LUN may change — what copy-before-write must save
 * first and changed-block tracking must mark.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <string.h>

#include "common.h"
#include "scsi.h"

static enum scsi_data_effect effect(const uint8_t *cdb, size_t len, struct scsi_write_extent *ext)
{
    return scsi_cdb_data_effect(cdb, len, NULL, 0, 0, ext);
}

static void expect_range(const uint8_t *cdb, size_t len, uint64_t lba, uint64_t blocks)
{
    struct scsi_write_extent ext;
    assert_int_equal(effect(cdb, len, &ext), SCSI_EFFECT_RANGE);
    assert_int_equal(ext.lba, lba);
    assert_int_equal(ext.blocks, blocks);
    assert_false(ext.is_to_end);
}

static void test_writes_of_every_size_give_their_lba_range(void **state)
{
    (void)state;
    /* WRITE(6): 21-bit LBA, a length of 0 is 256 blocks */
    const uint8_t w6[6] = {0x0A, 0x1F, 0xFF, 0xFE, 0x08, 0};
    expect_range(w6, 6, 0x1FFFFE, 8);
    const uint8_t w6z[6] = {0x0A, 0x00, 0x00, 0x10, 0x00, 0};
    expect_range(w6z, 6, 0x10, 256);
    /* WRITE(10), WRITE AND VERIFY(10) */
    const uint8_t w10[10] = {0x2A, 0x08, 0x12, 0x34, 0x56, 0x78, 0, 0x01, 0x00, 0};
    expect_range(w10, 10, 0x12345678, 256);
    const uint8_t wv10[10] = {0x2E, 0x00, 0, 0, 0, 7, 0, 0, 3, 0};
    expect_range(wv10, 10, 7, 3);
    /* WRITE(12), WRITE AND VERIFY(12): 32-bit length */
    const uint8_t w12[12] = {0xAA, 0, 0, 0, 0x10, 0, 0x00, 0x01, 0x00, 0x00, 0, 0};
    expect_range(w12, 12, 0x1000, 0x10000);
    const uint8_t wv12[12] = {0xAE, 0, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0};
    expect_range(wv12, 12, 9, 2);
    /* WRITE(16), WRITE AND VERIFY(16), ORWRITE(16): 64-bit LBA */
    const uint8_t w16[16] = {0x8A, 0,    0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
                             0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0,    0};
    expect_range(w16, 16, 1ull << 32, 128);
    const uint8_t wv16[16] = {0x8E, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0};
    expect_range(wv16, 16, 5, 1);
    const uint8_t or16[16] = {0x8B, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 4, 0, 0};
    expect_range(or16, 16, 6, 4);
}

static void test_write_same_and_compare_and_write(void **state)
{
    struct scsi_write_extent ext;
    (void)state;
    /* WRITE SAME(10) with UNMAP: the range is what is overwritten */
    const uint8_t ws10[10] = {0x41, 0x08, 0, 0, 0x20, 0, 0, 0x00, 0x40, 0};
    expect_range(ws10, 10, 0x2000, 64);
    /* WRITE SAME(16), NDOB */
    const uint8_t ws16[16] = {0x93, 0x01, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0x10, 0, 0, 0};
    expect_range(ws16, 16, 0x100, 0x1000);
    /* 0 blocks: to the last block, which only the device knows */
    const uint8_t ws_all[16] = {0x93, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0};
    assert_int_equal(effect(ws_all, 16, &ext), SCSI_EFFECT_RANGE);
    assert_int_equal(ext.lba, 8);
    assert_true(ext.is_to_end);
    /* COMPARE AND WRITE: one-byte block count at byte 13 */
    const uint8_t caw[16] = {0x89, 0, 0, 0, 0, 0, 0, 0, 0x03, 0xE8, 0, 0, 0, 2, 0, 0};
    expect_range(caw, 16, 1000, 2);
}

static void test_unmap_covers_the_span_of_its_descriptors(void **state)
{
    struct scsi_write_extent ext;
    uint8_t param[8 + 3 * 16] = {0};
    struct iovec iov[2];
    const uint8_t cdb[10] = {0x42, 0, 0, 0, 0, 0, 0, 0, sizeof(param), 0};
    (void)state;

    hv_put_be16(param, sizeof(param) - 2);
    hv_put_be16(param + 2, 3 * 16);
    hv_put_be64(param + 8, 500); /* 500..509 */
    hv_put_be32(param + 16, 10);
    hv_put_be64(param + 24, 100); /* 100..103 */
    hv_put_be32(param + 32, 4);
    hv_put_be64(param + 40, 7000); /* 0 blocks: nothing */
    hv_put_be32(param + 48, 0);
    /* data-out split across two buffers, as the iSCSI target gathers it */
    iov[0].iov_base = param;
    iov[0].iov_len = 13;
    iov[1].iov_base = param + 13;
    iov[1].iov_len = sizeof(param) - 13;
    assert_int_equal(scsi_cdb_data_effect(cdb, 10, iov, 2, sizeof(param), &ext),
                     SCSI_EFFECT_RANGE);
    assert_int_equal(ext.lba, 100);
    assert_int_equal(ext.blocks, 410);
    /* one descriptor by itself */
    uint64_t lba;
    uint32_t blocks;
    scsi_unmap_descriptor(iov, 2, 1, &lba, &blocks);
    assert_int_equal(lba, 100);
    assert_int_equal(blocks, 4);
    /* The parameter list length in the CDB bounds what is read: only the
     * first descriptor counts. */
    const uint8_t short_cdb[10] = {0x42, 0, 0, 0, 0, 0, 0, 0, 8 + 16, 0};
    assert_int_equal(scsi_cdb_data_effect(short_cdb, 10, iov, 2, sizeof(param), &ext),
                     SCSI_EFFECT_RANGE);
    assert_int_equal(ext.lba, 500);
    assert_int_equal(ext.blocks, 10);
    /* no descriptors, or no data-out: changes nothing */
    const uint8_t empty[10] = {0x42, 0, 0, 0, 0, 0, 0, 0, 8, 0};
    assert_int_equal(scsi_cdb_data_effect(empty, 10, iov, 2, sizeof(param), &ext),
                     SCSI_EFFECT_NONE);
    assert_int_equal(scsi_cdb_data_effect(cdb, 10, NULL, 0, 0, &ext), SCSI_EFFECT_NONE);
}

static void test_reads_and_control_commands_change_nothing(void **state)
{
    struct scsi_write_extent ext;
    (void)state;
    static const uint8_t ops[] = {0x00, 0x03, 0x08, 0x12, 0x15, 0x1A, 0x25, 0x28,
                                  0x2F, 0x35, 0x55, 0x5A, 0x5E, 0x5F, 0x88, 0x8F,
                                  0x91, 0x9E, 0xA0, 0xA3, 0xA8, 0xAF};
    for (size_t i = 0; i < sizeof(ops); i++) {
        uint8_t cdb[16] = {ops[i], 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0};
        assert_int_equal(effect(cdb, 16, &ext), SCSI_EFFECT_NONE);
    }
    /* a write of no blocks transfers nothing */
    const uint8_t w10z[10] = {0x2A, 0, 0, 0, 0, 1, 0, 0, 0, 0};
    assert_int_equal(effect(w10z, 10, &ext), SCSI_EFFECT_NONE);
}

static void test_commands_whose_effect_is_not_in_the_cdb_are_unknown(void **state)
{
    struct scsi_write_extent ext;
    (void)state;
    /* FORMAT UNIT, WRITE BUFFER, EXTENDED COPY, WRITE LONG(10), SANITIZE,
     * SEND DIAGNOSTIC, WRITE ATOMIC(16), vendor-specific */
    static const uint8_t ops[] = {0x04, 0x3B, 0x83, 0x3F, 0x48, 0x1D, 0x9C, 0xC0, 0xFF};
    for (size_t i = 0; i < sizeof(ops); i++) {
        uint8_t cdb[16] = {ops[i]};
        assert_int_equal(effect(cdb, 16, &ext), SCSI_EFFECT_UNKNOWN);
    }
    /* a write whose CDB is shorter than its opcode's group cannot be read */
    const uint8_t w16[10] = {0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(effect(w16, 10, &ext), SCSI_EFFECT_UNKNOWN);
}

static void test_blocks_decoder_is_the_emulated_disks(void **state)
{
    uint64_t lba;
    uint64_t blocks;
    (void)state;
    /* READ(16) and PRE-FETCH(10): addressed ranges that write nothing */
    const uint8_t r16[16] = {0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0x08, 0, 0};
    assert_true(scsi_cdb_blocks(r16, 16, &lba, &blocks));
    assert_int_equal(lba, 0x40);
    assert_int_equal(blocks, 8);
    const uint8_t pf10[10] = {0x34, 0, 0, 0, 1, 0, 0, 0, 2, 0};
    assert_true(scsi_cdb_blocks(pf10, 10, &lba, &blocks));
    assert_int_equal(lba, 0x100);
    assert_int_equal(blocks, 2);
    /* not a media-access command */
    const uint8_t inq[6] = {0x12, 0, 0, 0, 36, 0};
    assert_false(scsi_cdb_blocks(inq, 6, &lba, &blocks));
    assert_false(scsi_cdb_blocks(r16, 0, &lba, &blocks));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_writes_of_every_size_give_their_lba_range),
        cmocka_unit_test(test_write_same_and_compare_and_write),
        cmocka_unit_test(test_unmap_covers_the_span_of_its_descriptors),
        cmocka_unit_test(test_reads_and_control_commands_change_nothing),
        cmocka_unit_test(test_commands_whose_effect_is_not_in_the_cdb_are_unknown),
        cmocka_unit_test(test_blocks_decoder_is_the_emulated_disks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
