/*
 * Which blocks a CDB addresses, and whether it changes the medium: one
 * decoder for the emulated disk (scsi_disk.c executes the command) and for
 * pass-through LUNs (passthru_snap.c must know what a forwarded command is
 * about to overwrite before the SAN sees it).
 */
#include "scsi.h"

size_t scsi_cdb_group_length(uint8_t opcode)
{
    switch (opcode >> 5) {
    case 0:
        return 6;
    case 1:
    case 2:
        return 10;
    case 4:
        return 16;
    case 5:
        return 12;
    default:
        return 0;
    }
}

bool scsi_cdb_blocks(const uint8_t *cdb, size_t cdb_len, uint64_t *lba, uint64_t *blocks)
{
    size_t need = cdb_len ? scsi_cdb_group_length(cdb[0]) : 0;

    if (need == 0 || cdb_len < need)
        return false;
    switch (cdb[0]) {
    case 0x08: /* READ(6), WRITE(6): 21-bit LBA, 0 blocks means 256 */
    case 0x0A:
        *lba = ((uint64_t)(cdb[1] & 0x1F) << 16) | hv_be16(cdb + 2);
        *blocks = cdb[4] ? cdb[4] : 256;
        return true;
    case 0x28: /* READ, WRITE, VERIFY, WRITE AND VERIFY, PRE-FETCH (10) */
    case 0x2A:
    case 0x2F:
    case 0x2E:
    case 0x34:
    case 0x41: /* WRITE SAME(10) */
        *lba = hv_be32(cdb + 2);
        *blocks = hv_be16(cdb + 7);
        return true;
    case 0xA8: /* the same (12) */
    case 0xAA:
    case 0xAF:
    case 0xAE:
        *lba = hv_be32(cdb + 2);
        *blocks = hv_be32(cdb + 6);
        return true;
    case 0x88: /* the same (16), ORWRITE(16), WRITE SAME(16) */
    case 0x8A:
    case 0x8F:
    case 0x8E:
    case 0x90:
    case 0x8B:
    case 0x93:
        *lba = hv_be64(cdb + 2);
        *blocks = hv_be32(cdb + 10);
        return true;
    case 0x89: /* COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS is one byte */
        *lba = hv_be64(cdb + 2);
        *blocks = cdb[13];
        return true;
    default:
        return false;
    }
}

void scsi_unmap_descriptor(const struct iovec *iov, int iovcnt, uint32_t i, uint64_t *lba,
                           uint32_t *blocks)
{
    uint8_t desc[16];
    hv_iov_to_buf(iov, iovcnt, 8 + 16 * (size_t)i, desc, sizeof(desc));
    *lba = hv_be64(desc);
    *blocks = hv_be32(desc + 8);
}

/* UNMAP: the span from the lowest to the highest block its descriptors
 * name. Several distant ranges make a wide span; the copy-before-write then
 * saves blocks the command leaves alone, which costs time, never
 * correctness, and initiators send one range per UNMAP in practice. */
static enum scsi_data_effect unmap_extent(const struct iovec *out, int outcnt, size_t out_bytes,
                                          struct scsi_write_extent *ext)
{
    uint8_t hdr[8];
    uint64_t first = UINT64_MAX;
    uint64_t end = 0;

    if (out_bytes < 8)
        return SCSI_EFFECT_NONE; /* the target refuses it: nothing to unmap */
    hv_iov_to_buf(out, outcnt, 0, hdr, sizeof(hdr));
    size_t bd_len = HV_MIN((size_t)hv_be16(hdr + 2), out_bytes - 8);
    for (uint32_t i = 0; i < bd_len / 16; i++) {
        uint64_t lba;
        uint32_t blocks;
        scsi_unmap_descriptor(out, outcnt, i, &lba, &blocks);
        if (blocks == 0)
            continue;
        if (lba > UINT64_MAX - blocks)
            return SCSI_EFFECT_UNKNOWN; /* the target refuses it; be safe anyway */
        first = HV_MIN(first, lba);
        end = HV_MAX(end, lba + blocks);
    }
    if (first == UINT64_MAX)
        return SCSI_EFFECT_NONE;
    ext->lba = first;
    ext->blocks = end - first;
    return SCSI_EFFECT_RANGE;
}

enum scsi_data_effect scsi_cdb_data_effect(const uint8_t *cdb, size_t cdb_len,
                                           const struct iovec *out, int outcnt, size_t out_bytes,
                                           struct scsi_write_extent *ext)
{
    uint64_t lba;
    uint64_t blocks;

    memset(ext, 0, sizeof(*ext));
    if (cdb_len == 0)
        return SCSI_EFFECT_NONE;
    switch (cdb[0]) {
    /* Commands that leave every block as it is. */
    case 0x00: /* TEST UNIT READY */
    case 0x03: /* REQUEST SENSE */
    case 0x08: /* READ(6) */
    case 0x12: /* INQUIRY */
    case 0x15: /* MODE SELECT(6): parameters, not data */
    case 0x16: /* RESERVE(6) */
    case 0x17: /* RELEASE(6) */
    case 0x1A: /* MODE SENSE(6) */
    case 0x1B: /* START STOP UNIT */
    case 0x1E: /* PREVENT ALLOW MEDIUM REMOVAL */
    case 0x25: /* READ CAPACITY(10) */
    case 0x28: /* READ(10) */
    case 0x2F: /* VERIFY(10) */
    case 0x34: /* PRE-FETCH(10) */
    case 0x35: /* SYNCHRONIZE CACHE(10) */
    case 0x37: /* READ DEFECT DATA(10) */
    case 0x3C: /* READ BUFFER */
    case 0x4D: /* LOG SENSE */
    case 0x55: /* MODE SELECT(10) */
    case 0x56: /* RESERVE(10) */
    case 0x57: /* RELEASE(10) */
    case 0x5A: /* MODE SENSE(10) */
    case 0x5E: /* PERSISTENT RESERVE IN */
    case 0x5F: /* PERSISTENT RESERVE OUT */
    case 0x88: /* READ(16) */
    case 0x8F: /* VERIFY(16) */
    case 0x90: /* PRE-FETCH(16) */
    case 0x91: /* SYNCHRONIZE CACHE(16) */
    case 0x9E: /* SERVICE ACTION IN(16): READ CAPACITY, GET LBA STATUS, READ LONG */
    case 0xA0: /* REPORT LUNS */
    case 0xA3: /* MAINTENANCE IN: reports */
    case 0xA8: /* READ(12) */
    case 0xAF: /* VERIFY(12) */
    case 0xB7: /* READ DEFECT DATA(12) */
        return SCSI_EFFECT_NONE;
    /* Writes of a range the CDB names. */
    case 0x0A: /* WRITE(6) */
    case 0x2A: /* WRITE(10) */
    case 0x2E: /* WRITE AND VERIFY(10) */
    case 0xAA: /* WRITE(12) */
    case 0xAE: /* WRITE AND VERIFY(12) */
    case 0x8A: /* WRITE(16) */
    case 0x8B: /* ORWRITE(16) */
    case 0x8E: /* WRITE AND VERIFY(16) */
    case 0x89: /* COMPARE AND WRITE: may write, so assume it does */
        if (!scsi_cdb_blocks(cdb, cdb_len, &lba, &blocks))
            return SCSI_EFFECT_UNKNOWN;
        if (blocks == 0)
            return SCSI_EFFECT_NONE; /* no transfer, nothing written */
        ext->lba = lba;
        ext->blocks = blocks;
        return SCSI_EFFECT_RANGE;
    case 0x41: /* WRITE SAME(10), WRITE SAME(16), with or without UNMAP */
    case 0x93:
        if (!scsi_cdb_blocks(cdb, cdb_len, &lba, &blocks))
            return SCSI_EFFECT_UNKNOWN;
        ext->lba = lba;
        ext->blocks = blocks;
        /* 0 blocks: to the last block, on a target whose WSNZ is 0. */
        ext->is_to_end = blocks == 0;
        return SCSI_EFFECT_RANGE;
    case 0x42: /* UNMAP */
        if (cdb_len < 10)
            return SCSI_EFFECT_UNKNOWN;
        return unmap_extent(out, outcnt, HV_MIN(out_bytes, (size_t)hv_be16(cdb + 7)), ext);
    default:
        /* FORMAT UNIT, WRITE BUFFER, EXTENDED COPY, WRITE LONG, WRITE
         * ATOMIC, SANITIZE, SEND DIAGNOSTIC, vendor-specific...: what they
         * do to the blocks is not in the CDB. */
        return SCSI_EFFECT_UNKNOWN;
    }
}
