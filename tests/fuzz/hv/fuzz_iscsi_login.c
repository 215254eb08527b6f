/*
 * Login key handling: the input is the text of Login PDUs (key=value
 * pairs). It goes through the key parser and the operational negotiation
 * directly, and then as the data of a sequence of Login PDUs on a
 * connection (security stage with CHAP or not, then operational), so the
 * stage machine, AuthMethod/CHAP parsing and negotiation see hostile text.
 * Input: byte 0 = flags (bit 0: start in the operational stage, bit 1:
 * transit), then texts separated by a 0xff byte, one per Login PDU.
 */
#include "iscsi_fuzz_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t put_login(uint8_t *out, uint8_t flags, const uint8_t *text, size_t len,
                        uint32_t itt)
{
    uint8_t *b = out;
    memset(b, 0, ISCSI_BHS_BYTES);
    b[0] = 0x40 | ISCSI_OP_LOGIN_REQ;
    uint8_t csg = (flags & 1) ? 1 : 0;
    b[1] = (uint8_t)(((flags & 2) ? 0x80 : 0) | csg << 2 | (csg ? 3 : 1));
    memcpy(b + 8, "\x80\x00\x00\x01\x02\x03", 6);
    hv_put_be32(b + 16, itt);
    iscsi_bhs_set_lengths(b, 0, (uint32_t)len);
    memcpy(b + ISCSI_BHS_BYTES, text, len);
    size_t total = ISCSI_BHS_BYTES + len;
    while (total % 4)
        out[total++] = 0;
    return total;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup();
    if (size < 1 || size > 65536)
        return 0;

    /* 1. Parser and negotiation alone. */
    char *text = malloc(size + 1);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    struct iscsi_keys keys;
    if (iscsi_keys_parse(text, size, &keys) == 0) {
        struct iscsi_params p;
        struct iscsi_text rsp = { 0 };
        uint8_t bin[64];
        uint64_t n;
        iscsi_params_default(&p);
        for (int i = 0; i < keys.count; i++) {
            iscsi_params_negotiate(&p, keys.key[i].name, keys.key[i].value, &rsp);
            iscsi_parse_binary(keys.key[i].value, bin, sizeof(bin));
            iscsi_parse_number(keys.key[i].value, &n);
        }
        if (p.first_burst > p.max_burst)
            abort();                    /* negotiation must keep FBL <= MBL */
        iscsi_text_free(&rsp);
    }
    free(text);

    /* 2. The same bytes as Login PDUs on a connection. */
    uint8_t *stream = malloc(size * 2 + 64 * ISCSI_BHS_BYTES);
    size_t len = 0;
    const uint8_t *p = data + 1;
    const uint8_t *end = data + size;
    uint32_t itt = 1;
    while (p <= end && itt < 64) {
        const uint8_t *sep = memchr(p, 0xff, (size_t)(end - p));
        const uint8_t *stop = sep ? sep : end;
        len += put_login(stream + len, data[0], p, (size_t)(stop - p), itt++);
        if (!sep)
            break;
        p = sep + 1;
    }
    fuzz_run_conn(stream, len, 0);
    free(stream);
    return 0;
}
