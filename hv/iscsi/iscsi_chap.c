/*
 * The hashes CHAP needs (MD5, SHA-1, SHA-256), small and self-contained so
 * the target carries no crypto library for a login-time computation. They
 * are checked against the FIPS/RFC vectors in tests/unit/hv/test_iscsi_chap.c.
 * CHAP_A numbers follow the IANA PPP registry as libiscsi uses them:
 * 5 = MD5, 6 = SHA-1, 7 = SHA-256.
 */
#include <errno.h>

#include "iscsi_int.h"

struct hash_ctx {
    int algorithm;
    uint32_t h[8];
    uint64_t total;
    uint8_t block[64];
    size_t used;
};

static uint32_t rol32(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }
static uint32_t ror32(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

/* ------------------------------------------------------------------ MD5 */

static const uint32_t md5_k[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
    0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
    0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
    0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
    0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
    0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
    0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
    0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
    0xeb86d391,
};
static const uint8_t md5_r[64] = {
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9,  14, 20, 5, 9,
    14, 20, 5, 9,  14, 20, 5, 9,  14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
    4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
};

static void md5_block(uint32_t h[4], const uint8_t *p)
{
    uint32_t m[16];
    for (int i = 0; i < 16; i++)
        m[i] = hv_le32(p + 4 * i);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    for (int i = 0; i < 64; i++) {
        uint32_t f;
        int g;
        if (i < 16) {
            f = (b & c) | (~b & d);
            g = i;
        } else if (i < 32) {
            f = (d & b) | (~d & c);
            g = (5 * i + 1) % 16;
        } else if (i < 48) {
            f = b ^ c ^ d;
            g = (3 * i + 5) % 16;
        } else {
            f = c ^ (b | ~d);
            g = (7 * i) % 16;
        }
        uint32_t tmp = d;
        d = c;
        c = b;
        b = b + rol32(a + f + md5_k[i] + m[g], md5_r[i]);
        a = tmp;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
}

/* ---------------------------------------------------------------- SHA-1 */

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = hv_be32(p + 4 * i);
    for (int i = 16; i < 80; i++)
        w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5a827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ed9eba1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8f1bbcdc;
        } else {
            f = b ^ c ^ d;
            k = 0xca62c1d6;
        }
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol32(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

/* -------------------------------------------------------------- SHA-256 */

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

static void sha256_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = hv_be32(p + 4 * i);
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror32(w[i - 15], 7) ^ ror32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror32(w[i - 2], 17) ^ ror32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t s1 = ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = hh + s1 + ch + sha256_k[i] + w[i];
        uint32_t s0 = ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22);
        uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = s0 + maj;
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

/* ------------------------------------------------------------ framework */

static void hash_init(struct hash_ctx *c, int algorithm)
{
    static const uint32_t md5_iv[4] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476 };
    static const uint32_t sha1_iv[5] = { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476,
                                         0xc3d2e1f0 };
    static const uint32_t sha256_iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                           0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
    memset(c, 0, sizeof(*c));
    c->algorithm = algorithm;
    if (algorithm == ISCSI_CHAP_MD5)
        memcpy(c->h, md5_iv, sizeof(md5_iv));
    else if (algorithm == ISCSI_CHAP_SHA1)
        memcpy(c->h, sha1_iv, sizeof(sha1_iv));
    else
        memcpy(c->h, sha256_iv, sizeof(sha256_iv));
}

static void hash_block(struct hash_ctx *c, const uint8_t *p)
{
    if (c->algorithm == ISCSI_CHAP_MD5)
        md5_block(c->h, p);
    else if (c->algorithm == ISCSI_CHAP_SHA1)
        sha1_block(c->h, p);
    else
        sha256_block(c->h, p);
}

static void hash_update(struct hash_ctx *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    c->total += len;
    while (len) {
        size_t n = HV_MIN(len, 64 - c->used);
        memcpy(c->block + c->used, p, n);
        c->used += n;
        p += n;
        len -= n;
        if (c->used == 64) {
            hash_block(c, c->block);
            c->used = 0;
        }
    }
}

static void hash_final(struct hash_ctx *c, uint8_t *out)
{
    uint64_t bits = c->total * 8;
    uint8_t pad = 0x80;
    uint8_t zero = 0;
    uint8_t len_bytes[8];

    hash_update(c, &pad, 1);
    while (c->used != 56)
        hash_update(c, &zero, 1);
    if (c->algorithm == ISCSI_CHAP_MD5) {
        for (int i = 0; i < 8; i++)
            len_bytes[i] = (uint8_t)(bits >> (8 * i));
    } else {
        hv_put_be64(len_bytes, bits);
    }
    hash_update(c, len_bytes, 8);
    if (c->algorithm == ISCSI_CHAP_MD5) {
        for (int i = 0; i < 4; i++)
            hv_put_le32(out + 4 * i, c->h[i]);
    } else {
        int words = c->algorithm == ISCSI_CHAP_SHA1 ? 5 : 8;
        for (int i = 0; i < words; i++)
            hv_put_be32(out + 4 * i, c->h[i]);
    }
}

void iscsi_hash_parts(int algorithm, const void *const *parts, const size_t *lens, int n,
                      uint8_t *out)
{
    struct hash_ctx c;
    hash_init(&c, algorithm);
    for (int i = 0; i < n; i++)
        hash_update(&c, parts[i], lens[i]);
    hash_final(&c, out);
}

void iscsi_md5(const void *data, size_t len, uint8_t out[16])
{
    iscsi_hash_parts(ISCSI_CHAP_MD5, &data, &len, 1, out);
}

void iscsi_sha1(const void *data, size_t len, uint8_t out[20])
{
    iscsi_hash_parts(ISCSI_CHAP_SHA1, &data, &len, 1, out);
}

void iscsi_sha256(const void *data, size_t len, uint8_t out[32])
{
    iscsi_hash_parts(ISCSI_CHAP_SHA256, &data, &len, 1, out);
}

size_t iscsi_chap_digest_bytes(int algorithm)
{
    switch (algorithm) {
    case ISCSI_CHAP_MD5:
        return 16;
    case ISCSI_CHAP_SHA1:
        return 20;
    case ISCSI_CHAP_SHA256:
        return 32;
    default:
        return 0;
    }
}

int iscsi_chap_response(int algorithm, uint8_t id, const char *secret, const uint8_t *challenge,
                        size_t challenge_bytes, uint8_t out[ISCSI_HASH_MAX])
{
    if (!iscsi_chap_digest_bytes(algorithm))
        return -EINVAL;
    const void *parts[3] = { &id, secret, challenge };
    size_t lens[3] = { 1, strlen(secret), challenge_bytes };
    iscsi_hash_parts(algorithm, parts, lens, 3, out);
    return (int)iscsi_chap_digest_bytes(algorithm);
}
