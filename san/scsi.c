/*
 * Decoding what the target sends (INQUIRY, VPD 0x83, REPORT LUNS, READ
 * CAPACITY(16), PERSISTENT RESERVE IN, sense) and building the CDBs san uses.
 * Everything here is pure and treats its input as untrusted: lengths inside
 * the data are believed only as far as the buffer goes.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "san.h"
#include "san_internal.h"

static void copy_trimmed(char *out, size_t out_len, const uint8_t *in, size_t in_len)
{
    size_t n = HV_MIN(in_len, out_len - 1);
    for (size_t i = 0; i < n; i++) {
        out[i] = isprint(in[i]) ? (char)in[i] : '_';
    }
    while (n > 0 && (out[n - 1] == ' ' || out[n - 1] == '_')) {
        n--;
    }
    out[n] = '\0';
}

int san_parse_inquiry(const uint8_t *buf, size_t len, struct san_inquiry *out)
{
    memset(out, 0, sizeof(*out));
    if (len < 36) {
        return -EINVAL;
    }
    out->peripheral_qualifier = buf[0] >> 5;
    out->device_type = buf[0] & 0x1f;
    size_t avail = HV_MIN(len, (size_t)buf[4] + 5);
    if (avail < 36) {
        return -EINVAL;
    }
    copy_trimmed(out->vendor, sizeof(out->vendor), buf + 8, 8);
    copy_trimmed(out->product, sizeof(out->product), buf + 16, 16);
    copy_trimmed(out->revision, sizeof(out->revision), buf + 32, 4);
    return 0;
}

/*
 * Rank of a designator for identifying a LUN for good: registered NAA ids are
 * world-unique and stable, EUI-64 nearly so, a SCSI name string is unique by
 * construction, and the T10 vendor id is only as unique as the vendor makes
 * it (tgt's is "IET" + tid/lun: the same on every tgt box). 0 = unusable.
 */
static int designator_rank(unsigned type, const uint8_t *d, size_t len)
{
    switch (type) {
    case 3: /* NAA */
        if (len < 8) {
            return 0;
        }
        switch (d[0] >> 4) {
        case 6: return 100;
        case 5: return 90;
        default: return 80;
        }
    case 2: return len >= 8 ? 70 : 0;  /* EUI-64 */
    case 8: return len > 0 ? 65 : 0;   /* SCSI name string */
    case 1: return len > 0 ? 60 : 0;   /* T10 vendor id */
    default: return 0;
    }
}

static void hex_into(char *out, size_t out_len, const char *prefix, const uint8_t *d, size_t len)
{
    size_t pos = (size_t)snprintf(out, out_len, "%s", prefix);
    for (size_t i = 0; i < len && pos + 2 < out_len; i++) {
        pos += (size_t)snprintf(out + pos, out_len - pos, "%02x", d[i]);
    }
}

int san_vpd83_designator(const uint8_t *buf, size_t len, char out[SAN_DESIGNATOR_MAX])
{
    out[0] = '\0';
    if (len < 4 || buf[1] != 0x83) {
        return -EINVAL;
    }
    size_t end = HV_MIN(len, (size_t)hv_be16(buf + 2) + 4);
    int best_rank = 0;
    const uint8_t *best = NULL;
    size_t best_len = 0;
    unsigned best_type = 0;
    for (size_t pos = 4; pos + 4 <= end;) {
        const uint8_t *h = buf + pos;
        size_t dlen = h[3];
        if (pos + 4 + dlen > end) {
            break;      /* truncated descriptor: use what came before */
        }
        unsigned association = (h[1] >> 4) & 3;
        unsigned type = h[1] & 0xf;
        if (association == 0) {
            int rank = designator_rank(type, h + 4, dlen);
            if (rank > best_rank) {
                best_rank = rank;
                best = h + 4;
                best_len = dlen;
                best_type = type;
            }
        }
        pos += 4 + dlen;
    }
    if (!best) {
        return -ENOENT;
    }
    switch (best_type) {
    case 3:
        /* NAA 5 is 8 bytes, NAA 6 16; never more */
        hex_into(out, SAN_DESIGNATOR_MAX, "naa.", best, HV_MIN(best_len, 16));
        break;
    case 2:
        hex_into(out, SAN_DESIGNATOR_MAX, "eui.", best, HV_MIN(best_len, 16));
        break;
    case 8: {
        char text[SAN_DESIGNATOR_MAX];
        copy_trimmed(text, sizeof(text) - 5, best, strnlen((const char *)best, best_len));
        snprintf(out, SAN_DESIGNATOR_MAX, "name.%s", text);
        break;
    }
    default: {
        char text[SAN_DESIGNATOR_MAX];
        copy_trimmed(text, sizeof(text) - 4, best, best_len);
        snprintf(out, SAN_DESIGNATOR_MAX, "t10.%s", text);
        break;
    }
    }
    return 0;
}

int san_parse_report_luns(const uint8_t *buf, size_t len, uint64_t *luns, size_t max,
                          size_t *total)
{
    if (len < 8) {
        return -EINVAL;
    }
    uint32_t list_bytes = hv_be32(buf);
    if (list_bytes % 8) {
        return -EINVAL;
    }
    if (total) {
        *total = list_bytes / 8;
    }
    size_t avail = HV_MIN((size_t)list_bytes, len - 8) / 8;
    size_t n = 0;
    for (size_t i = 0; i < avail && n < max; i++) {
        const uint8_t *e = buf + 8 + i * 8;
        switch (e[0] >> 6) {
        case 0:     /* peripheral device addressing, bus 0 */
            luns[n++] = (e[0] & 0x3f) ? hv_be64(e) : e[1];
            break;
        case 1:     /* flat space addressing */
            luns[n++] = ((uint64_t)(e[0] & 0x3f) << 8) | e[1];
            break;
        default:    /* extended/logical unit addressing: keep the raw value */
            luns[n++] = hv_be64(e);
            break;
        }
    }
    return (int)n;
}

void san_lun_encode(uint64_t lun, uint8_t out[8])
{
    memset(out, 0, 8);
    if (lun < 256) {
        out[1] = (uint8_t)lun;
    } else if (lun < 16384) {
        out[0] = (uint8_t)(0x40 | (lun >> 8));
        out[1] = (uint8_t)lun;
    } else {
        hv_put_be64(out, lun);
    }
}

int san_parse_read_capacity16(const uint8_t *buf, size_t len, struct san_capacity *out)
{
    memset(out, 0, sizeof(*out));
    if (len < 12) {
        return -EINVAL;
    }
    uint64_t last = hv_be64(buf);
    out->block_bytes = hv_be32(buf + 8);
    if (out->block_bytes == 0 || last == UINT64_MAX) {
        return -EINVAL;
    }
    out->blocks = last + 1;
    out->physical_block_bytes = out->block_bytes;
    if (len >= 15) {
        unsigned exp = buf[13] & 0xf;
        out->physical_block_bytes = out->block_bytes << exp;
        out->is_thin = (buf[14] & 0x80) != 0;
    }
    return 0;
}

void san_pr_out_build(uint8_t cdb[10], uint8_t param[24], enum san_pr_action action,
                      uint8_t type, uint64_t key, uint64_t sa_key)
{
    memset(cdb, 0, 10);
    memset(param, 0, 24);
    cdb[0] = 0x5f;
    cdb[1] = (uint8_t)action & 0x1f;
    cdb[2] = type & 0xf;            /* scope 0: logical unit */
    hv_put_be32(cdb + 5, 24);
    hv_put_be64(param, key);
    hv_put_be64(param + 8, sa_key);
}

void san_pr_in_build(uint8_t cdb[10], uint8_t action, uint16_t alloc_len)
{
    memset(cdb, 0, 10);
    cdb[0] = 0x5e;
    cdb[1] = action & 0x1f;
    hv_put_be16(cdb + 7, alloc_len);
}

int san_parse_pr_keys(const uint8_t *buf, size_t len, struct san_pr_status *out)
{
    if (len < 8) {
        return -EINVAL;
    }
    out->generation = hv_be32(buf);
    uint32_t bytes = hv_be32(buf + 4);
    if (bytes % 8) {
        return -EINVAL;
    }
    size_t avail = HV_MIN((size_t)bytes, len - 8) / 8;
    out->key_count = 0;
    for (size_t i = 0; i < avail && out->key_count < SAN_PR_MAX_KEYS; i++) {
        out->keys[out->key_count++] = hv_be64(buf + 8 + i * 8);
    }
    return 0;
}

int san_parse_pr_reservation(const uint8_t *buf, size_t len, struct san_pr_status *out)
{
    if (len < 8) {
        return -EINVAL;
    }
    out->generation = hv_be32(buf);
    uint32_t bytes = hv_be32(buf + 4);
    out->is_reserved = false;
    out->holder_key = 0;
    out->type = 0;
    if (bytes == 0) {
        return 0;
    }
    if (bytes < 16 || len < 24) {
        return -EINVAL;
    }
    out->is_reserved = true;
    out->holder_key = hv_be64(buf + 8);
    out->type = buf[21] & 0xf;
    return 0;
}

int san_sense_key(const uint8_t *sense, size_t len)
{
    if (len < 3) {
        return -1;
    }
    switch (sense[0] & 0x7f) {
    case 0x70:
    case 0x71:
        return sense[2] & 0xf;
    case 0x72:
    case 0x73:
        return sense[1] & 0xf;
    default:
        return -1;
    }
}

uint16_t san_sense_asc_ascq(const uint8_t *sense, size_t len)
{
    switch (len ? sense[0] & 0x7f : 0) {
    case 0x70:
    case 0x71:
        return len >= 14 ? (uint16_t)((sense[12] << 8) | sense[13]) : 0;
    case 0x72:
    case 0x73:
        return len >= 4 ? (uint16_t)((sense[2] << 8) | sense[3]) : 0;
    default:
        return 0;
    }
}

void san_sense_build(uint8_t *sense, uint32_t *sense_len, uint8_t key, uint16_t asc_ascq)
{
    memset(sense, 0, 18);
    sense[0] = 0x70;
    sense[2] = key;
    sense[7] = 10;
    sense[12] = (uint8_t)(asc_ascq >> 8);
    sense[13] = (uint8_t)asc_ascq;
    *sense_len = 18;
}

const char *san_cmd_describe(const struct san_cmd *cmd, char *buf, size_t len)
{
    switch (cmd->transport) {
    case SAN_TRANSPORT_FAILED:
        snprintf(buf, len, "transport failed (no session within the replacement timeout)");
        return buf;
    case SAN_TRANSPORT_OFFLINE:
        snprintf(buf, len, "session offline");
        return buf;
    case SAN_TRANSPORT_CLOSED:
        snprintf(buf, len, "session closed");
        return buf;
    case SAN_TRANSPORT_ABORTED:
        snprintf(buf, len, "aborted by task management");
        return buf;
    case SAN_TRANSPORT_OK:
        break;
    }
    switch (cmd->status) {
    case SAN_STATUS_GOOD:
        snprintf(buf, len, "GOOD");
        break;
    case SAN_STATUS_CHECK_CONDITION: {
        uint16_t aa = san_sense_asc_ascq(cmd->sense, cmd->sense_len);
        snprintf(buf, len, "CHECK CONDITION, sense %xh/%02xh/%02xh",
                 san_sense_key(cmd->sense, cmd->sense_len), aa >> 8, aa & 0xff);
        break;
    }
    case SAN_STATUS_RESERVATION_CONFLICT:
        snprintf(buf, len, "RESERVATION CONFLICT");
        break;
    case SAN_STATUS_BUSY:
        snprintf(buf, len, "BUSY");
        break;
    default:
        snprintf(buf, len, "SCSI status 0x%02x", cmd->status);
        break;
    }
    return buf;
}

int san_cmd_errno(const struct san_cmd *cmd)
{
    switch (cmd->transport) {
    case SAN_TRANSPORT_OK:
        break;
    case SAN_TRANSPORT_FAILED:
        return -ENOTCONN;
    case SAN_TRANSPORT_OFFLINE:
    case SAN_TRANSPORT_CLOSED:
        return -ESHUTDOWN;
    case SAN_TRANSPORT_ABORTED:
        return -ECANCELED;
    }
    switch (cmd->status) {
    case SAN_STATUS_GOOD:
        return 0;
    case SAN_STATUS_RESERVATION_CONFLICT:
        return -EACCES;
    case SAN_STATUS_BUSY:
    case SAN_STATUS_TASK_SET_FULL:
        return -EBUSY;
    default:
        return -EIO;
    }
}

void san_cdb_inquiry(uint8_t cdb[6], bool evpd, uint8_t page, uint16_t alloc_len)
{
    memset(cdb, 0, 6);
    cdb[0] = 0x12;
    cdb[1] = evpd ? 1 : 0;
    cdb[2] = page;
    hv_put_be16(cdb + 3, alloc_len);
}

void san_cdb_report_luns(uint8_t cdb[12], uint32_t alloc_len)
{
    memset(cdb, 0, 12);
    cdb[0] = 0xa0;
    hv_put_be32(cdb + 6, alloc_len);
}

void san_cdb_read_capacity16(uint8_t cdb[16], uint32_t alloc_len)
{
    memset(cdb, 0, 16);
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    hv_put_be32(cdb + 10, alloc_len);
}
