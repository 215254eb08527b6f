/*
 * The disk's SPC-4 commands that need no bdev I/O: INQUIRY and its VPD
 * pages, MODE SENSE/SELECT, REQUEST SENSE and REPORT SUPPORTED OPERATION
 * CODES, plus the command table that says what the disk implements and
 * how persistent reservations treat each command.
 */
#include <errno.h>

#include "scsi_disk_int.h"

/* ------------------------------------------------------- command table */

struct cmd_info {
    uint8_t opcode;
    bool has_sa;
    uint16_t sa;
    enum pr_class pr;
    uint8_t cdb_len;
    uint8_t usage[16];              /* CDB usage data (SPC-4 6.35.3) */
};

/*
 * Every command the disk implements in full, and nothing else: REPORT
 * SUPPORTED OPERATION CODES reports this table. The usage masks mark the
 * bits the device server looks at; the control byte is not evaluated
 * (NACA is not supported).
 */
static const struct cmd_info commands[] = {
    { 0x00, false, 0, PR_ALWAYS, 6, { 0x00, 0, 0, 0, 0, 0 } },
    { 0x03, false, 0, PR_ALWAYS, 6, { 0x03, 0x01, 0, 0, 0xFF, 0 } },
    { 0x08, false, 0, PR_READ, 6, { 0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0 } },
    { 0x0A, false, 0, PR_WRITE, 6, { 0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0 } },
    { 0x12, false, 0, PR_ALWAYS, 6, { 0x12, 0x03, 0xFF, 0xFF, 0xFF, 0 } },
    { 0x15, false, 0, PR_WRITE, 6, { 0x15, 0x11, 0, 0, 0xFF, 0 } },
    { 0x16, false, 0, PR_OWN, 6, { 0x16, 0, 0, 0, 0, 0 } },
    { 0x17, false, 0, PR_OWN, 6, { 0x17, 0, 0, 0, 0, 0 } },
    { 0x1A, false, 0, PR_READ, 6, { 0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0 } },
    { 0x1B, false, 0, PR_WRITE, 6, { 0x1B, 0x01, 0, 0x0F, 0xF7, 0 } },
    { 0x1E, false, 0, PR_READ, 6, { 0x1E, 0, 0, 0, 0x03, 0 } },
    { 0x25, false, 0, PR_ALWAYS, 10, { 0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0 } },
    { 0x28, false, 0, PR_READ, 10, { 0x28, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0 } },
    { 0x2A, false, 0, PR_WRITE, 10, { 0x2A, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0 } },
    { 0x2E, false, 0, PR_WRITE, 10, { 0x2E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0 } },
    { 0x2F, false, 0, PR_READ, 10, { 0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0 } },
    { 0x34, false, 0, PR_READ, 10, { 0x34, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0 } },
    { 0x35, false, 0, PR_WRITE, 10, { 0x35, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0 } },
    { 0x41, false, 0, PR_WRITE, 10, { 0x41, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0xFF, 0xFF, 0 } },
    { 0x42, false, 0, PR_WRITE, 10, { 0x42, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0 } },
    { 0x55, false, 0, PR_WRITE, 10, { 0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0 } },
    { 0x56, false, 0, PR_OWN, 10, { 0x56, 0x12, 0, 0, 0, 0, 0, 0, 0, 0 } },
    { 0x57, false, 0, PR_OWN, 10, { 0x57, 0x12, 0, 0, 0, 0, 0, 0, 0, 0 } },
    { 0x5A, false, 0, PR_READ, 10, { 0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0 } },
    { 0x5E, true, 0x00, PR_OWN, 10, { 0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0 } },
    { 0x5E, true, 0x01, PR_OWN, 10, { 0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0 } },
    { 0x5E, true, 0x02, PR_OWN, 10, { 0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0 } },
    { 0x5E, true, 0x03, PR_OWN, 10, { 0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0 } },
#define PROUT(sa) \
    { 0x5F, true, sa, PR_OWN, 10, { 0x5F, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0 } }
    PROUT(0x00), PROUT(0x01), PROUT(0x02), PROUT(0x03), PROUT(0x04), PROUT(0x05),
    PROUT(0x06), PROUT(0x07),
#undef PROUT
    { 0x88, false, 0, PR_READ, 16,
      { 0x88, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0x89, false, 0, PR_WRITE, 16,
      { 0x89, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0, 0 } },
    { 0x8A, false, 0, PR_WRITE, 16,
      { 0x8A, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0x8E, false, 0, PR_WRITE, 16,
      { 0x8E, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0x8F, false, 0, PR_READ, 16,
      { 0x8F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0x90, false, 0, PR_READ, 16,
      { 0x90, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0x91, false, 0, PR_WRITE, 16,
      { 0x91, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0x93, false, 0, PR_WRITE, 16,
      { 0x93, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0x9E, true, 0x10, PR_ALWAYS, 16,
      { 0x9E, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0x9E, true, 0x12, PR_READ, 16,
      { 0x9E, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0xA0, false, 0, PR_ALWAYS, 12,
      { 0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0xA3, true, 0x0C, PR_ALWAYS, 12,
      { 0xA3, 0x1F, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0xA8, false, 0, PR_READ, 12,
      { 0xA8, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0xAA, false, 0, PR_WRITE, 12,
      { 0xAA, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0xAE, false, 0, PR_WRITE, 12,
      { 0xAE, 0xF2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
    { 0xAF, false, 0, PR_READ, 12,
      { 0xAF, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0 } },
};

static bool is_sa_opcode(uint8_t op)
{
    return op == 0x5E || op == 0x5F || op == 0x9E || op == 0xA3;
}

/* First table entry of each opcode + 1 (0: not implemented), so the I/O
 * path finds its command without walking the table. */
static uint8_t first_entry[256];

__attribute__((constructor)) static void index_commands(void)
{
    _Static_assert(HV_ARRAY_SIZE(commands) < 255, "index fits in a byte");
    for (size_t i = HV_ARRAY_SIZE(commands); i-- > 0;)
        first_entry[commands[i].opcode] = (uint8_t)(i + 1);
}

static const struct cmd_info *find_command(uint8_t op, uint16_t sa)
{
    if (!first_entry[op])
        return NULL;
    for (size_t i = first_entry[op] - 1u; i < HV_ARRAY_SIZE(commands); i++) {
        if (commands[i].opcode != op)
            continue;
        if (!commands[i].has_sa || commands[i].sa == sa)
            return &commands[i];
    }
    return NULL;
}

bool spc_command_info(const uint8_t *cdb, enum pr_class *cls)
{
    const struct cmd_info *ci = find_command(cdb[0], cdb[1] & 0x1F);
    if (!ci)
        return false;
    *cls = ci->pr;
    /* Commands that change nothing are allowed to non-holders in more
     * cases (SPC-4 table 50 / SBC-3 table 13). */
    if (cdb[0] == 0x1B && (cdb[4] & 0x01) && !(cdb[4] & 0xF0))
        *cls = PR_ALWAYS;           /* START STOP UNIT with START=1 */
    if (cdb[0] == 0x1E && (cdb[4] & 0x03) == 0)
        *cls = PR_ALWAYS;           /* PREVENT ALLOW with PREVENT=0 */
    return true;
}

/* ------------------------------------------------------------ INQUIRY */

static size_t designator(uint8_t *p, uint8_t code_set, uint8_t piv_assoc_type, const void *id,
                         size_t len)
{
    p[0] = code_set;
    p[1] = piv_assoc_type;
    p[2] = 0;
    p[3] = (uint8_t)len;
    memcpy(p + 4, id, len);
    return 4 + len;
}

static size_t vpd_page(struct scsi_disk *d, uint8_t page, uint8_t *buf)
{
    struct bdev *bd = d->bd;
    size_t len = 4;
    memset(buf, 0, 256);
    buf[0] = 0x00;                  /* qualifier 0, direct access block device */
    buf[1] = page;
    switch (page) {
    case 0x00: {
        static const uint8_t pages[] = { 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2 };
        memcpy(buf + 4, pages, sizeof(pages));
        len += sizeof(pages);
        break;
    }
    case 0x80:
        len += strlen(d->serial);
        memcpy(buf + 4, d->serial, strlen(d->serial));
        break;
    case 0x83: {
        uint8_t vendor_id[8 + 32];
        size_t serial_len = strlen(d->serial);
        uint8_t port[4] = { 0, 0, 0, 1 };
        /* NAA (binary, LU association, type 3) */
        len += designator(buf + len, 0x01, 0x03, d->naa, sizeof(d->naa));
        /* T10 vendor id (ASCII, LU, type 1): vendor + serial */
        memcpy(vendor_id, d->vendor, 8);
        memcpy(vendor_id + 8, d->serial, serial_len);
        len += designator(buf + len, 0x02, 0x01, vendor_id, 8 + serial_len);
        /* Relative target port 1 (iSCSI, PIV, target port association) */
        len += designator(buf + len, 0x51, 0x94, port, sizeof(port));
        break;
    }
    case 0xB0: {
        uint32_t opt_gran = HV_MAX(1u, 1u << d->physical_exponent);
        buf[4] = 0x01;              /* WSNZ */
        buf[5] = DISK_MAX_CAW_BLOCKS;
        hv_put_be16(buf + 6, (uint16_t)opt_gran);
        hv_put_be32(buf + 8, d->max_transfer_blocks);
        hv_put_be32(buf + 12, HV_MIN(d->max_transfer_blocks, 2048u * 512u / d->block_bytes));
        if (bd->can_discard) {
            uint32_t gran = HV_MAX(d->granularity_blocks, opt_gran);
            hv_put_be32(buf + 20, DISK_MAX_UNMAP_BLOCKS);
            hv_put_be32(buf + 24, DISK_MAX_UNMAP_DESCRIPTORS);
            hv_put_be32(buf + 28, gran);
            hv_put_be32(buf + 32, 0x80000000u);     /* UGAVALID, alignment 0 */
        }
        hv_put_be64(buf + 36, DISK_MAX_WRITE_SAME_BLOCKS);
        len = 64;
        break;
    }
    case 0xB1:
        hv_put_be16(buf + 4, 0x0001);   /* non-rotating medium */
        len = 64;
        break;
    case 0xB2:
        buf[4] = 0;                     /* threshold exponent: no thresholds */
        if (bd->can_discard) {
            buf[5] = 0x80 | 0x40 | 0x20;    /* LBPU, LBPWS, LBPWS10 */
            if (bd->discard_zeroes)
                buf[5] |= 0x04;             /* LBPRZ */
            buf[6] = 0x02;                  /* thin provisioned */
        }
        len = 8;
        break;
    default:
        return 0;
    }
    hv_put_be16(buf + 2, (uint16_t)(len - 4));
    return len;
}

void spc_inquiry(struct scsi_disk *d, struct scsi_task *t)
{
    uint8_t buf[256];
    uint16_t alloc = hv_be16(t->cdb + 3);
    bool is_evpd = t->cdb[1] & 0x01;
    uint8_t page = t->cdb[2];

    if ((t->cdb[1] & 0x02) || (!is_evpd && page != 0)) {
        disk_fail_cdb(t, (t->cdb[1] & 0x02) ? 1 : 2, (t->cdb[1] & 0x02) ? 1 : -1);
        return;
    }
    if (is_evpd) {
        size_t len = vpd_page(d, page, buf);
        if (!len) {
            disk_fail_cdb(t, 2, -1);
            return;
        }
        scsi_task_data_in(t, buf, len, alloc);
        disk_finish(t);
        return;
    }
    memset(buf, 0, 96);
    buf[0] = 0x00;
    buf[1] = 0x00;                  /* not removable */
    buf[2] = 0x06;                  /* SPC-4 */
    buf[3] = 0x10 | 0x02;           /* HISUP, response data format 2 */
    buf[4] = 96 - 5;
    buf[5] = 0x00;                  /* no ACC, TPGS 0, no 3PC, PROTECT 0 */
    buf[6] = 0x00;
    buf[7] = 0x02;                  /* CMDQUE */
    memcpy(buf + 8, d->vendor, 8);
    memcpy(buf + 16, d->product, 16);
    memcpy(buf + 32, "0001", 4);
    /* version descriptors: SAM-5, iSCSI, SPC-4, SBC-3 */
    hv_put_be16(buf + 58, 0x00A0);
    hv_put_be16(buf + 60, 0x0960);
    hv_put_be16(buf + 62, 0x0460);
    hv_put_be16(buf + 64, 0x04C0);
    scsi_task_data_in(t, buf, 96, alloc);
    disk_finish(t);
}

/* ------------------------------------------------------- REQUEST SENSE */

void spc_request_sense(struct scsi_disk *d, struct scsi_task *t)
{
    /* Sense is always returned with the status (autosense), so nothing is
     * pending here; unit attentions were answered by the controller. */
    uint8_t sense[SCSI_SENSE_MAX];
    size_t len = scsi_sense_build(sense, t->cdb[1] & 0x01, SCSI_SENSE_NO_SENSE, 0, 0, false, 0);
    scsi_task_data_in(t, sense, len, t->cdb[4]);
    disk_finish(t);
}

/* --------------------------------------------------------- mode pages */

enum page_control { PC_CURRENT = 0, PC_CHANGEABLE = 1, PC_DEFAULT = 2, PC_SAVED = 3 };

static const uint8_t mode_pages[] = { 0x01, 0x08, 0x0A, 0x1C };

/* One mode page as `pc` asks; returns its length (0: no such page). */
static size_t mode_page(struct scsi_disk *d, uint8_t page, enum page_control pc, uint8_t *p)
{
    bool has_cache = d->bd->has_volatile_cache;
    switch (page) {
    case 0x01:                      /* read-write error recovery */
        memset(p, 0, 12);
        p[0] = 0x01;
        p[1] = 0x0A;
        return 12;
    case 0x08:                      /* caching */
        memset(p, 0, 20);
        p[0] = 0x08;
        p[1] = 0x12;
        if (pc == PC_CHANGEABLE)
            p[2] = has_cache ? 0x04 : 0x00;
        else if (pc == PC_DEFAULT)
            p[2] = has_cache ? 0x04 : 0x00;
        else
            p[2] = d->is_wce ? 0x04 : 0x00;
        return 20;
    case 0x0A:                      /* control */
        memset(p, 0, 12);
        p[0] = 0x0A;
        p[1] = 0x0A;
        if (pc == PC_CHANGEABLE) {
            p[2] = 0x04;            /* D_SENSE */
            p[4] = 0x08;            /* SWP */
        } else {
            p[2] = 0x02;            /* GLTSD: no log parameters to save */
            if (pc == PC_CURRENT && d->lu.is_descriptor_sense)
                p[2] |= 0x04;
            p[3] = 0x10;            /* queue algorithm modifier 1: unrestricted */
            if (pc == PC_CURRENT && d->is_swp)
                p[4] |= 0x08;
            hv_put_be16(p + 8, 0xFFFF);     /* busy timeout: unlimited */
        }
        return 12;
    case 0x1C:                      /* informational exceptions control */
        memset(p, 0, 12);
        p[0] = 0x1C;
        p[1] = 0x0A;
        if (pc != PC_CHANGEABLE)
            p[2] = 0x08;            /* DEXCPT: we report no failure predictions */
        return 12;
    }
    return 0;
}

void spc_mode_sense(struct scsi_disk *d, struct scsi_task *t)
{
    const uint8_t *cdb = t->cdb;
    bool is10 = cdb[0] == 0x5A;
    bool is_dbd = cdb[1] & 0x08;
    bool is_llba = is10 && (cdb[1] & 0x10);
    enum page_control pc = cdb[2] >> 6;
    uint8_t page = cdb[2] & 0x3F;
    uint8_t subpage = cdb[3];
    uint32_t alloc = is10 ? hv_be16(cdb + 7) : cdb[4];
    uint8_t buf[256];
    size_t hdr = is10 ? 8 : 4;
    size_t len = hdr;

    if (pc == PC_SAVED) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_SAVING_PARAMETERS_NOT_SUPPORTED);
        return;
    }
    if (subpage != 0 && !(page == 0x3F && subpage == 0xFF)) {
        disk_fail_cdb(t, 3, -1);
        return;
    }
    memset(buf, 0, sizeof(buf));
    if (!is_dbd) {
        uint64_t blocks = d->blocks;
        if (is_llba) {
            hv_put_be64(buf + len, blocks);
            hv_put_be32(buf + len + 12, d->block_bytes);
            len += 16;
        } else {
            hv_put_be32(buf + len, blocks > 0xFFFFFFFFull ? 0xFFFFFFFFu : (uint32_t)blocks);
            hv_put_be32(buf + len + 4, d->block_bytes);     /* density 0 + length */
            len += 8;
        }
    }
    size_t bd_len = len - hdr;
    if (page == 0x3F) {
        for (size_t i = 0; i < sizeof(mode_pages); i++)
            len += mode_page(d, mode_pages[i], pc, buf + len);
    } else {
        size_t n = mode_page(d, page, pc, buf + len);
        if (!n) {
            disk_fail_cdb(t, 2, 5);
            return;
        }
        len += n;
    }
    uint8_t dev_specific = 0x10;    /* DPOFUA */
    if (d->is_read_only || d->is_swp)
        dev_specific |= 0x80;       /* WP */
    if (is10) {
        hv_put_be16(buf, (uint16_t)(len - 2));
        buf[3] = dev_specific;
        buf[4] = is_llba && !is_dbd ? 0x01 : 0x00;
        hv_put_be16(buf + 6, (uint16_t)bd_len);
    } else {
        buf[0] = (uint8_t)(len - 1);
        buf[2] = dev_specific;
        buf[3] = (uint8_t)bd_len;
    }
    scsi_task_data_in(t, buf, len, alloc);
    disk_finish(t);
}

/*
 * MODE SELECT: every page sent must have our length, and may differ from
 * the current values only in changeable bits (SPC-4 6.11). Nothing is
 * applied unless the whole parameter list is valid.
 */
void spc_mode_select(struct scsi_disk *d, struct scsi_task *t)
{
    const uint8_t *cdb = t->cdb;
    bool is10 = cdb[0] == 0x55;
    uint32_t len = is10 ? hv_be16(cdb + 7) : cdb[4];
    size_t hdr = is10 ? 8 : 4;
    uint8_t buf[512];

    t->wanted_bytes = len;
    if (!(cdb[1] & 0x10) || (cdb[1] & 0x01)) {      /* PF must be 1; SP unsupported */
        disk_fail_cdb(t, 1, (cdb[1] & 0x10) ? 0 : 4);
        return;
    }
    if (len == 0) {
        disk_finish(t);
        return;
    }
    if (len < hdr || len > sizeof(buf) || HV_MIN(t->expected_bytes, t->out_bytes) < len) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_PARAMETER_LIST_LENGTH_ERROR);
        return;
    }
    hv_iov_to_buf(t->out_iov, t->out_iovcnt, 0, buf, len);
    size_t bd_len = is10 ? hv_be16(buf + 6) : buf[3];
    size_t at = hdr;
    if (bd_len) {
        bool is_long = is10 && (buf[4] & 0x01);
        size_t one = is_long ? 16 : 8;
        if (bd_len != one || at + bd_len > len) {
            disk_fail_param(t, is10 ? 6 : 3, -1);
            return;
        }
        uint32_t block_len = is_long ? hv_be32(buf + at + 12) : (hv_be32(buf + at + 4) & 0xFFFFFF);
        if (block_len != d->block_bytes) {
            disk_fail_param(t, (uint16_t)(at + (is_long ? 12 : 5)), -1);
            return;
        }
        at += bd_len;
    }
    bool wce = d->is_wce, d_sense = d->lu.is_descriptor_sense, swp = d->is_swp;
    while (at < len) {
        uint8_t cur[32], mask[32];
        if (at + 2 > len || (buf[at] & 0x40)) {      /* truncated, or a subpage */
            disk_fail_param(t, (uint16_t)at, -1);
            return;
        }
        uint8_t page = buf[at] & 0x3F;
        size_t plen = mode_page(d, page, PC_CURRENT, cur);
        mode_page(d, page, PC_CHANGEABLE, mask);
        if (!plen || buf[at + 1] + 2u != plen || at + plen > len) {
            disk_fail_param(t, (uint16_t)(at + 1), -1);
            return;
        }
        const uint8_t *p = buf + at;
        for (size_t i = 2; i < plen; i++) {
            if ((p[i] ^ cur[i]) & ~mask[i]) {
                disk_fail_param(t, (uint16_t)(at + i), -1);
                return;
            }
        }
        if (page == 0x08)
            wce = p[2] & 0x04;
        if (page == 0x0A) {
            d_sense = p[2] & 0x04;
            swp = p[4] & 0x08;
        }
        at += plen;
    }
    bool is_changed = wce != d->is_wce || d_sense != d->lu.is_descriptor_sense ||
                      swp != d->is_swp;
    d->is_wce = wce;
    d->lu.is_descriptor_sense = d_sense;
    d->is_swp = swp;
    if (is_changed && d->lu.controller)
        scsi_controller_raise_ua_for(d->lu.controller, d->lu.lun, NULL, nexus_id_of(t), 0x2A,
                                     0x01);
    disk_finish(t);
}

/* ------------------------------------ REPORT SUPPORTED OPERATION CODES */

static size_t timeouts_descriptor(uint8_t *p)
{
    memset(p, 0, 12);
    hv_put_be16(p, 0x0A);
    /* nominal and recommended timeouts unknown (0) */
    return 12;
}

void spc_report_supported_opcodes(struct scsi_disk *d, struct scsi_task *t)
{
    const uint8_t *cdb = t->cdb;
    bool is_rctd = cdb[2] & 0x80;
    uint8_t options = cdb[2] & 0x07;
    uint8_t req_op = cdb[3];
    uint16_t req_sa = hv_be16(cdb + 4);
    uint32_t alloc = hv_be32(cdb + 6);
    uint8_t buf[4 + HV_ARRAY_SIZE(commands) * 20];
    size_t len = 0;

    memset(buf, 0, sizeof(buf));
    if (options == 0) {
        len = 4;
        for (size_t i = 0; i < HV_ARRAY_SIZE(commands); i++) {
            const struct cmd_info *ci = &commands[i];
            uint8_t *p = buf + len;
            if (ci->opcode == 0x42 && !d->bd->can_discard)
                continue;
            p[0] = ci->opcode;
            hv_put_be16(p + 2, ci->sa);
            p[5] = (uint8_t)((is_rctd ? 0x02 : 0) | (ci->has_sa ? 0x01 : 0));
            hv_put_be16(p + 6, ci->cdb_len);
            len += 8;
            if (is_rctd)
                len += timeouts_descriptor(buf + len);
        }
        hv_put_be32(buf, (uint32_t)(len - 4));
    } else if (options <= 3) {
        const struct cmd_info *ci = NULL;
        if (options == 1) {
            if (is_sa_opcode(req_op)) {
                disk_fail_cdb(t, 2, 2);
                return;
            }
            ci = find_command(req_op, 0);
        } else if (options == 2) {
            if (!is_sa_opcode(req_op)) {
                disk_fail_cdb(t, 2, 2);
                return;
            }
            ci = find_command(req_op, req_sa);
        } else {
            /* 011b: with or without service action, as the opcode has */
            ci = is_sa_opcode(req_op) ? find_command(req_op, req_sa) : find_command(req_op, 0);
        }
        if (ci && ci->opcode == 0x42 && !d->bd->can_discard)
            ci = NULL;
        if (!ci) {
            buf[1] = 0x01;          /* not supported */
            len = 4;
        } else {
            buf[1] = (uint8_t)((is_rctd ? 0x80 : 0) | 0x03);  /* supported per standard */
            hv_put_be16(buf + 2, ci->cdb_len);
            memcpy(buf + 4, ci->usage, ci->cdb_len);
            len = 4 + ci->cdb_len;
            if (is_rctd)
                len += timeouts_descriptor(buf + len);
        }
    } else {
        disk_fail_cdb(t, 2, 2);
        return;
    }
    scsi_task_data_in(t, buf, len, alloc);
    disk_finish(t);
}
