/*
 * PDU headers decoded once into native fields, and the text keys of Login
 * and Text PDUs: parsing, building responses, and the operational key
 * negotiation of RFC 7143 section 13.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "iscsi_int.h"

uint64_t iscsi_lun_decode(const uint8_t raw[8])
{
    /* SAM-5 single level: peripheral (method 0, bus 0) or flat space
     * (method 1). Anything deeper is not addressable on our controllers. */
    for (int i = 2; i < 8; i++) {
        if (raw[i])
            return UINT64_MAX;
    }
    switch (raw[0] >> 6) {
    case 0:
        if (raw[0] & 0x3f)
            return UINT64_MAX;
        return raw[1];
    case 1:
        return ((uint64_t)(raw[0] & 0x3f) << 8) | raw[1];
    default:
        return UINT64_MAX;
    }
}

void iscsi_lun_encode(uint64_t lun, uint8_t raw[8])
{
    memset(raw, 0, 8);
    if (lun < 256) {
        raw[1] = (uint8_t)lun;
    } else if (lun < 16384) {
        raw[0] = (uint8_t)(0x40 | (lun >> 8));
        raw[1] = (uint8_t)lun;
    }
}

void iscsi_digest_put(uint8_t out[4], uint32_t crc)
{
    hv_put_le32(out, crc);
}

uint32_t iscsi_digest_get(const uint8_t in[4])
{
    return hv_le32(in);
}

void iscsi_bhs_set_lengths(uint8_t bhs[ISCSI_BHS_BYTES], uint8_t ahs_words, uint32_t data_bytes)
{
    bhs[4] = ahs_words;
    bhs[5] = (uint8_t)(data_bytes >> 16);
    bhs[6] = (uint8_t)(data_bytes >> 8);
    bhs[7] = (uint8_t)data_bytes;
}

int iscsi_pdu_decode(const uint8_t b[ISCSI_BHS_BYTES], struct iscsi_pdu *p)
{
    memset(p, 0, sizeof(*p));
    p->opcode = b[0] & 0x3f;
    p->is_immediate = (b[0] & 0x40) != 0;
    p->flags = b[1];
    p->is_final = (b[1] & 0x80) != 0;
    p->ahs_words = b[4];
    p->data_bytes = ((uint32_t)b[5] << 16) | ((uint32_t)b[6] << 8) | b[7];
    memcpy(p->lun_raw, b + 8, 8);
    p->itt = hv_be32(b + 16);

    switch (p->opcode) {
    case ISCSI_OP_NOP_OUT:
        p->lun = iscsi_lun_decode(p->lun_raw);
        p->ttt = hv_be32(b + 20);
        p->cmdsn = hv_be32(b + 24);
        p->expstatsn = hv_be32(b + 28);
        break;
    case ISCSI_OP_SCSI_CMD:
        p->lun = iscsi_lun_decode(p->lun_raw);
        p->is_read = (b[1] & 0x40) != 0;
        p->is_write = (b[1] & 0x20) != 0;
        p->task_attr = b[1] & 0x07;
        p->edtl = hv_be32(b + 20);
        p->cmdsn = hv_be32(b + 24);
        p->expstatsn = hv_be32(b + 28);
        memcpy(p->cdb, b + 32, 16);
        break;
    case ISCSI_OP_TMF_REQ:
        p->lun = iscsi_lun_decode(p->lun_raw);
        p->tmf_function = b[1] & 0x7f;
        p->ref_task_tag = hv_be32(b + 20);
        p->cmdsn = hv_be32(b + 24);
        p->expstatsn = hv_be32(b + 28);
        p->ref_cmdsn = hv_be32(b + 32);
        break;
    case ISCSI_OP_LOGIN_REQ:
        p->is_transit = (b[1] & 0x80) != 0;
        p->is_continue = (b[1] & 0x40) != 0;
        p->csg = (b[1] >> 2) & 3;
        p->nsg = b[1] & 3;
        p->version_max = b[2];
        p->version_min = b[3];
        memcpy(p->isid, b + 8, 6);
        p->tsih = hv_be16(b + 14);
        p->cid = hv_be16(b + 20);
        p->cmdsn = hv_be32(b + 24);
        p->expstatsn = hv_be32(b + 28);
        break;
    case ISCSI_OP_TEXT_REQ:
        p->is_continue = (b[1] & 0x40) != 0;
        p->ttt = hv_be32(b + 20);
        p->cmdsn = hv_be32(b + 24);
        p->expstatsn = hv_be32(b + 28);
        break;
    case ISCSI_OP_DATA_OUT:
        p->lun = iscsi_lun_decode(p->lun_raw);
        p->ttt = hv_be32(b + 20);
        p->expstatsn = hv_be32(b + 28);
        p->datasn = hv_be32(b + 36);
        p->buffer_offset = hv_be32(b + 40);
        break;
    case ISCSI_OP_LOGOUT_REQ:
        p->logout_reason = b[1] & 0x7f;
        p->cid = hv_be16(b + 20);
        p->cmdsn = hv_be32(b + 24);
        p->expstatsn = hv_be32(b + 28);
        break;
    case ISCSI_OP_SNACK:
        break;
    default:
        return -EPROTO;
    }
    return 0;
}

/* ------------------------------------------------------------ text keys */

int iscsi_keys_parse(char *text, size_t len, struct iscsi_keys *out)
{
    size_t pos = 0;

    out->count = 0;
    while (pos < len) {
        char *pair = text + pos;
        size_t n = strnlen(pair, len - pos);
        if (n == len - pos)
            return -EINVAL;             /* not NUL-terminated */
        pos += n + 1;
        if (n == 0)
            continue;                   /* padding NULs between pairs */
        char *eq = memchr(pair, '=', n);
        if (!eq || eq == pair || eq - pair > ISCSI_KEY_NAME_MAX)
            return -EINVAL;
        if (out->count == ISCSI_MAX_KEYS)
            return -EINVAL;
        *eq = '\0';
        out->key[out->count].name = pair;
        out->key[out->count].value = eq + 1;
        out->count++;
    }
    return 0;
}

const char *iscsi_keys_get(const struct iscsi_keys *k, const char *name)
{
    for (int i = 0; i < k->count; i++) {
        if (strcmp(k->key[i].name, name) == 0)
            return k->key[i].value;
    }
    return NULL;
}

void iscsi_text_add(struct iscsi_text *t, const char *name, const char *fmt, ...)
{
    char value[1024];
    va_list ap;

    va_start(ap, fmt);
    int vn = vsnprintf(value, sizeof(value), fmt, ap);
    va_end(ap);
    if (vn < 0)
        vn = 0;
    if ((size_t)vn >= sizeof(value))
        vn = sizeof(value) - 1;
    size_t need = strlen(name) + 1 + (size_t)vn + 1;
    if (t->len + need > t->cap) {
        size_t cap = HV_MAX(t->cap * 2, t->len + need + 256);
        char *nb = realloc(t->buf, cap);
        if (!nb) {
            t->is_oom = true;
            return;
        }
        t->buf = nb;
        t->cap = cap;
    }
    t->len += (size_t)sprintf(t->buf + t->len, "%s=%s", name, value) + 1;
}

void iscsi_text_free(struct iscsi_text *t)
{
    free(t->buf);
    memset(t, 0, sizeof(*t));
}

int iscsi_parse_number(const char *s, uint64_t *out)
{
    uint64_t v = 0;

    if (!*s)
        return -EINVAL;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        if (!*s)
            return -EINVAL;
        for (; *s; s++) {
            if (!isxdigit((unsigned char)*s))
                return -EINVAL;
            if (v >> 60)
                return -ERANGE;
            int d = isdigit((unsigned char)*s) ? *s - '0' : (tolower((unsigned char)*s) - 'a' + 10);
            v = v * 16 + (uint64_t)d;
        }
    } else {
        for (; *s; s++) {
            if (!isdigit((unsigned char)*s))
                return -EINVAL;
            if (v > (UINT64_MAX - 9) / 10)
                return -ERANGE;
            v = v * 10 + (uint64_t)(*s - '0');
        }
    }
    *out = v;
    return 0;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int iscsi_parse_binary(const char *s, uint8_t *out, size_t cap)
{
    size_t n = 0;

    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        size_t digits = strlen(s);
        if (digits == 0)
            return -EINVAL;
        bool is_odd = digits % 2;
        while (*s) {
            int hi = 0;
            if (!is_odd) {
                if (!isxdigit((unsigned char)*s))
                    return -EINVAL;
                hi = isdigit((unsigned char)*s) ? *s - '0' : tolower((unsigned char)*s) - 'a' + 10;
                s++;
            }
            is_odd = false;
            if (!isxdigit((unsigned char)*s))
                return -EINVAL;
            int lo = isdigit((unsigned char)*s) ? *s - '0' : tolower((unsigned char)*s) - 'a' + 10;
            s++;
            if (n == cap)
                return -EINVAL;
            out[n++] = (uint8_t)(hi << 4 | lo);
        }
        return (int)n;
    }
    if (s[0] == '0' && (s[1] == 'b' || s[1] == 'B')) {
        uint32_t acc = 0;
        int bits = 0;
        s += 2;
        if (!*s)
            return -EINVAL;
        for (; *s && *s != '='; s++) {
            int v = b64_value(*s);
            if (v < 0)
                return -EINVAL;
            acc = (acc << 6) | (uint32_t)v;
            bits += 6;
            if (bits >= 8) {
                bits -= 8;
                if (n == cap)
                    return -EINVAL;
                out[n++] = (uint8_t)(acc >> bits);
            }
        }
        for (; *s; s++) {
            if (*s != '=')
                return -EINVAL;
        }
        return (int)n;
    }
    return -EINVAL;
}

/* --------------------------------------------------- operational keys */

void iscsi_params_default(struct iscsi_params *p)
{
    /* RFC 7143 13.x defaults: what holds when a key is never negotiated. */
    p->header_digest = false;
    p->data_digest = false;
    p->initial_r2t = true;
    p->immediate_data = true;
    p->initiator_mrdsl = 8192;
    p->max_burst = 262144;
    p->first_burst = 65536;
    p->max_outstanding_r2t = 1;
    p->time2wait = 2;
    p->time2retain = 20;
    p->data_pdu_in_order = true;
    p->data_sequence_in_order = true;
    p->max_connections = 1;
    p->erl = 0;
}

static int parse_bool(const char *v, bool *out)
{
    if (strcmp(v, "Yes") == 0) {
        *out = true;
        return 0;
    }
    if (strcmp(v, "No") == 0) {
        *out = false;
        return 0;
    }
    return -EINVAL;
}

/* Pick "CRC32C" or "None" from the initiator's list, first one wins. */
static int pick_digest(const char *v, bool *out)
{
    char list[256];
    char *save = NULL;

    if (strlen(v) >= sizeof(list))
        return -EINVAL;
    strcpy(list, v);
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "CRC32C") == 0) {
            *out = true;
            return 0;
        }
        if (strcmp(tok, "None") == 0) {
            *out = false;
            return 0;
        }
    }
    return -ENOENT;
}

static int number_in(const char *v, uint64_t lo, uint64_t hi, uint32_t *out)
{
    uint64_t n;
    if (iscsi_parse_number(v, &n) < 0 || n < lo || n > hi)
        return -EINVAL;
    *out = (uint32_t)n;
    return 0;
}

int iscsi_params_negotiate(struct iscsi_params *p, const char *name, const char *v,
                           struct iscsi_text *rsp)
{
    uint32_t n;
    bool b;

    if (strcmp(name, "HeaderDigest") == 0 || strcmp(name, "DataDigest") == 0) {
        bool *field = name[0] == 'H' ? &p->header_digest : &p->data_digest;
        int ret = pick_digest(v, field);
        if (ret < 0) {
            iscsi_text_add(rsp, name, "Reject");
            return 1;
        }
        iscsi_text_add(rsp, name, "%s", *field ? "CRC32C" : "None");
        return 1;
    }
    if (strcmp(name, "MaxConnections") == 0) {
        if (number_in(v, 1, 65535, &n) < 0)
            return -EINVAL;
        p->max_connections = 1;
        iscsi_text_add(rsp, name, "1");
        return 1;
    }
    if (strcmp(name, "InitialR2T") == 0) {
        if (parse_bool(v, &b) < 0)
            return -EINVAL;
        p->initial_r2t = b;             /* OR with our No */
        iscsi_text_add(rsp, name, "%s", b ? "Yes" : "No");
        return 1;
    }
    if (strcmp(name, "ImmediateData") == 0) {
        if (parse_bool(v, &b) < 0)
            return -EINVAL;
        p->immediate_data = b;          /* AND with our Yes */
        iscsi_text_add(rsp, name, "%s", b ? "Yes" : "No");
        return 1;
    }
    if (strcmp(name, "MaxRecvDataSegmentLength") == 0) {
        if (number_in(v, 512, 16777215, &n) < 0)
            return -EINVAL;
        p->initiator_mrdsl = n;         /* declarative: bounds what we send */
        return 1;
    }
    if (strcmp(name, "MaxBurstLength") == 0) {
        if (number_in(v, 512, 16777215, &n) < 0)
            return -EINVAL;
        p->max_burst = HV_MIN(n, ISCSI_OUR_MAX_BURST);
        if (p->first_burst > p->max_burst)
            p->first_burst = p->max_burst;
        iscsi_text_add(rsp, name, "%u", p->max_burst);
        return 1;
    }
    if (strcmp(name, "FirstBurstLength") == 0) {
        if (number_in(v, 512, 16777215, &n) < 0)
            return -EINVAL;
        p->first_burst = HV_MIN(n, ISCSI_OUR_MAX_BURST);
        if (p->first_burst > p->max_burst)
            p->first_burst = p->max_burst;
        iscsi_text_add(rsp, name, "%u", p->first_burst);
        return 1;
    }
    if (strcmp(name, "DefaultTime2Wait") == 0) {
        if (number_in(v, 0, 3600, &n) < 0)
            return -EINVAL;
        p->time2wait = n;               /* max(initiator, our 0) */
        iscsi_text_add(rsp, name, "%u", n);
        return 1;
    }
    if (strcmp(name, "DefaultTime2Retain") == 0) {
        if (number_in(v, 0, 3600, &n) < 0)
            return -EINVAL;
        p->time2retain = 0;             /* ERL 0: nothing to retain */
        iscsi_text_add(rsp, name, "0");
        return 1;
    }
    if (strcmp(name, "MaxOutstandingR2T") == 0) {
        if (number_in(v, 1, 65535, &n) < 0)
            return -EINVAL;
        p->max_outstanding_r2t = HV_MIN(n, ISCSI_OUR_MAX_R2T);
        iscsi_text_add(rsp, name, "%u", p->max_outstanding_r2t);
        return 1;
    }
    if (strcmp(name, "DataPDUInOrder") == 0 || strcmp(name, "DataSequenceInOrder") == 0) {
        if (parse_bool(v, &b) < 0)
            return -EINVAL;
        /* OR with our Yes: the result is always Yes. */
        if (name[4] == 'P')
            p->data_pdu_in_order = true;
        else
            p->data_sequence_in_order = true;
        iscsi_text_add(rsp, name, "Yes");
        return 1;
    }
    if (strcmp(name, "ErrorRecoveryLevel") == 0) {
        if (number_in(v, 0, 2, &n) < 0)
            return -EINVAL;
        p->erl = 0;
        iscsi_text_add(rsp, name, "0");
        return 1;
    }
    if (strcmp(name, "IFMarker") == 0 || strcmp(name, "OFMarker") == 0) {
        iscsi_text_add(rsp, name, "No");
        return 1;
    }
    if (strcmp(name, "IFMarkInt") == 0 || strcmp(name, "OFMarkInt") == 0) {
        iscsi_text_add(rsp, name, "Irrelevant");
        return 1;
    }
    if (strcmp(name, "TaskReporting") == 0) {
        iscsi_text_add(rsp, name, "RFC3720");
        return 1;
    }
    if (strcmp(name, "iSCSIProtocolLevel") == 0) {
        if (number_in(v, 0, 31, &n) < 0)
            return -EINVAL;
        iscsi_text_add(rsp, name, "%u", HV_MIN(n, 1u));
        return 1;
    }
    return 0;
}
