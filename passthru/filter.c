/*
 * The default CDB filter: what a disk needs, nothing that changes the LUN's
 * firmware, format, target port groups, power state or diagnostics.
 *
 * Service-action opcodes are decided by their service action, not by the
 * opcode alone: 9Eh is READ CAPACITY(16) and GET LBA STATUS (allowed) but
 * also vendor and READ LONG(16)-class actions (refused); A3h MAINTENANCE IN
 * carries REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS
 * (read-only, allowed) next to REPORT TARGET PORT GROUPS and vendor
 * actions; A4h MAINTENANCE OUT (SET TARGET PORT GROUPS, SET TIMESTAMP...)
 * changes the array for every host and is refused entirely. Old SCSI-2
 * RESERVE/RELEASE would fight the host's persistent reservation: refused.
 */
#include <errno.h>
#include <stdio.h>

#include "passthru.h"

enum { SA_NONE = -1 };

struct allowed {
    uint8_t opcode;
    int service_action;             /* SA_NONE: any */
    const char *name;
};

static const struct allowed allowed[] = {
    {0x00, SA_NONE, "TEST UNIT READY"},
    {0x03, SA_NONE, "REQUEST SENSE"},
    {0x08, SA_NONE, "READ(6)"},
    {0x0A, SA_NONE, "WRITE(6)"},
    {0x12, SA_NONE, "INQUIRY"},
    {0x15, SA_NONE, "MODE SELECT(6)"},
    {0x1A, SA_NONE, "MODE SENSE(6)"},
    {0x25, SA_NONE, "READ CAPACITY(10)"},
    {0x28, SA_NONE, "READ(10)"},
    {0x2A, SA_NONE, "WRITE(10)"},
    {0x2E, SA_NONE, "WRITE AND VERIFY(10)"},
    {0x2F, SA_NONE, "VERIFY(10)"},
    {0x35, SA_NONE, "SYNCHRONIZE CACHE(10)"},
    {0x41, SA_NONE, "WRITE SAME(10)"},
    {0x42, SA_NONE, "UNMAP"},
    {0x55, SA_NONE, "MODE SELECT(10)"},
    {0x5A, SA_NONE, "MODE SENSE(10)"},
    {0x5E, SA_NONE, "PERSISTENT RESERVE IN"},
    {0x5F, SA_NONE, "PERSISTENT RESERVE OUT"},
    {0x88, SA_NONE, "READ(16)"},
    {0x89, SA_NONE, "COMPARE AND WRITE"},
    {0x8A, SA_NONE, "WRITE(16)"},
    {0x8E, SA_NONE, "WRITE AND VERIFY(16)"},
    {0x8F, SA_NONE, "VERIFY(16)"},
    {0x91, SA_NONE, "SYNCHRONIZE CACHE(16)"},
    {0x93, SA_NONE, "WRITE SAME(16)"},
    {0x9E, 0x10, "READ CAPACITY(16)"},
    {0x9E, 0x12, "GET LBA STATUS"},
    {0xA0, SA_NONE, "REPORT LUNS"},
    {0xA3, 0x0C, "REPORT SUPPORTED OPERATION CODES"},
    {0xA3, 0x0D, "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS"},
    {0xA8, SA_NONE, "READ(12)"},
    {0xAA, SA_NONE, "WRITE(12)"},
    {0xAE, SA_NONE, "WRITE AND VERIFY(12)"},
    {0xAF, SA_NONE, "VERIFY(12)"},
};

/* Opcodes whose byte 1 bits 4..0 are a service action (SPC-4 4.2.5.1). */
static bool has_service_action(uint8_t opcode)
{
    return opcode == 0x9E || opcode == 0x9F || opcode == 0xA3 || opcode == 0xA4;
}

static size_t cdb_length_for(uint8_t opcode)
{
    switch (opcode >> 5) {
    case 0: return 6;
    case 1: case 2: return 10;
    case 4: return 16;
    case 5: return 12;
    default: return 0;             /* reserved / vendor groups: no fixed length */
    }
}

static const struct allowed *find(const uint8_t *cdb, size_t cdb_len)
{
    int sa = (has_service_action(cdb[0]) && cdb_len > 1) ? (cdb[1] & 0x1F) : SA_NONE;

    for (size_t i = 0; i < HV_ARRAY_SIZE(allowed); i++) {
        if (allowed[i].opcode != cdb[0])
            continue;
        if (allowed[i].service_action == SA_NONE || allowed[i].service_action == sa)
            return &allowed[i];
    }
    return NULL;
}

bool pt_cdb_is_allowed(const uint8_t *cdb, size_t cdb_len, bool is_full_scsi)
{
    if (is_full_scsi)
        return true;
    if (cdb_len == 0)
        return false;
    /* A CDB shorter than its group's length would let a target read bytes
     * the guest never sent as the service action or transfer length. */
    if (cdb_length_for(cdb[0]) > cdb_len)
        return false;
    return find(cdb, cdb_len) != NULL;
}

/*
 * SG_IO cannot tell an initiator's expected length from the device's: the
 * kernel maps the buffer it is given and the device moves what its CDB says.
 * Knowing what the CDB says lets the SG_IO path hand the device exactly that
 * (no more data-out than the command takes, a read landing in a buffer big
 * enough) and compute the iSCSI residual itself (SBC-3 lengths; a zero
 * transfer length of READ(6)/WRITE(6) means 256 blocks).
 */
bool pt_cdb_data_bytes(const uint8_t *cdb, size_t cdb_len, uint32_t block_bytes,
                       enum san_xfer *dir, uint64_t *bytes)
{
    uint64_t blocks;
    unsigned bytchk;

    if (cdb_len == 0 || block_bytes == 0)
        return false;
    if (cdb_length_for(cdb[0]) == 0 || cdb_len < cdb_length_for(cdb[0]))
        return false;
    switch (cdb[0]) {
    case 0x08:                          /* READ(6) */
    case 0x0A:                          /* WRITE(6) */
        blocks = cdb[4] ? cdb[4] : 256;
        *dir = cdb[0] == 0x08 ? SAN_XFER_READ : SAN_XFER_WRITE;
        break;
    case 0x28:                          /* READ(10) */
    case 0xA8:                          /* READ(12) */
    case 0x88:                          /* READ(16) */
        blocks = cdb[0] == 0x28 ? hv_be16(cdb + 7) : cdb[0] == 0xA8 ? hv_be32(cdb + 6)
                 : hv_be32(cdb + 10);
        *dir = SAN_XFER_READ;
        break;
    case 0x2A: case 0x2E:               /* WRITE(10), WRITE AND VERIFY(10) */
    case 0xAA: case 0xAE:               /* (12) */
    case 0x8A: case 0x8E:               /* (16) */
        blocks = cdb[0] <= 0x2E ? hv_be16(cdb + 7) : cdb[0] >= 0xAA ? hv_be32(cdb + 6)
                 : hv_be32(cdb + 10);
        *dir = SAN_XFER_WRITE;
        break;
    case 0x2F: case 0xAF: case 0x8F:    /* VERIFY(10/12/16): data per BYTCHK */
        blocks = cdb[0] == 0x2F ? hv_be16(cdb + 7) : cdb[0] == 0xAF ? hv_be32(cdb + 6)
                 : hv_be32(cdb + 10);
        bytchk = (cdb[1] >> 1) & 3;
        if (bytchk == 2)
            return false;               /* reserved: the device says what it is */
        if (bytchk == 0)
            blocks = 0;
        else if (bytchk == 3)
            blocks = blocks ? 1 : 0;    /* one block, compared against each */
        *dir = SAN_XFER_WRITE;
        break;
    case 0x41:                          /* WRITE SAME(10) */
        blocks = 1;
        *dir = SAN_XFER_WRITE;
        break;
    case 0x93:                          /* WRITE SAME(16): NDOB = no data-out */
        blocks = (cdb[1] & 1) ? 0 : 1;
        *dir = SAN_XFER_WRITE;
        break;
    case 0x89:                          /* COMPARE AND WRITE: verify + write data */
        blocks = 2 * (uint64_t)cdb[13];
        *dir = SAN_XFER_WRITE;
        break;
    default:
        return false;
    }
    *bytes = blocks * block_bytes;
    if (*bytes == 0)
        *dir = SAN_XFER_NONE;
    return true;
}

const char *pt_cdb_name(const uint8_t *cdb, size_t cdb_len, char *buf, size_t len)
{
    const struct allowed *a = cdb_len ? find(cdb, cdb_len) : NULL;

    if (a)
        snprintf(buf, len, "%s", a->name);
    else if (cdb_len > 1 && has_service_action(cdb[0]))
        snprintf(buf, len, "opcode 0x%02x/service action 0x%02x", cdb[0], cdb[1] & 0x1F);
    else
        snprintf(buf, len, "opcode 0x%02x", cdb_len ? cdb[0] : 0);
    return buf;
}

size_t pt_sense_fixed(uint8_t *sense, uint8_t key, uint8_t asc, uint8_t ascq)
{
    memset(sense, 0, 18);
    sense[0] = 0x70;
    sense[2] = key & 0x0F;
    sense[7] = 10;
    sense[12] = asc;
    sense[13] = ascq;
    return 18;
}

/*
 * The host's registration and the guest's share the I_T nexus at the SAN.
 * A guest PR OUT that names the host's key as its reservation key or service
 * action key would act as the host (release or clear its reservation, move
 * its key); REGISTER AND IGNORE EXISTING KEY would replace the host's key
 * without naming it. Everything else is judged by the SAN as usual (a guest
 * key that is not registered gets RESERVATION CONFLICT there).
 */
bool pt_pr_out_touches_host(const uint8_t *cdb, const uint8_t *param, size_t param_len,
                            uint64_t host_key)
{
    uint8_t action = cdb[1] & 0x1F;

    if (action == 0x06)             /* REGISTER AND IGNORE EXISTING KEY */
        return true;
    if (action == 0x07)             /* REGISTER AND MOVE: moves the nexus' reservation */
        return true;
    if (param_len < 16)
        return false;
    return hv_be64(param) == host_key || hv_be64(param + 8) == host_key;
}
