#include "common.h"

#include <xxhash.h>

void hv_xxh3_128(const void *buf, size_t len, uint8_t out[16])
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(buf, len));
    memcpy(out, c.digest, 16);
}

void hv_xxh3_128_hex(const void *buf, size_t len, char out[33])
{
    uint8_t d[16];
    hv_xxh3_128(buf, len, d);
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

uint64_t hv_xxh3_64(const void *buf, size_t len)
{
    return XXH3_64bits(buf, len);
}
