/* Small system helpers: aligned buffers, full pread/pwrite, randomness, UUIDs. */
#include "common.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/random.h>
#include <unistd.h>

void *hv_alloc_aligned(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, HV_DIO_ALIGN, bytes ? bytes : HV_DIO_ALIGN) != 0)
        return NULL;
    return p;
}

int hv_pread_full(int fd, void *buf, size_t len, uint64_t offset)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -ENODATA;    /* past the end of the file */
        p += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

int hv_pwrite_full(int fd, const void *buf, size_t len, uint64_t offset)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)offset);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
        offset += (uint64_t)n;
    }
    return 0;
}

int hv_random_bytes(void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void hv_uuid_generate(uint8_t uuid[16])
{
    if (hv_random_bytes(uuid, 16) < 0)
        abort();            /* getrandom cannot fail on a booted Linux */
    uuid[6] = (uint8_t)((uuid[6] & 0x0F) | 0x40);
    uuid[8] = (uint8_t)((uuid[8] & 0x3F) | 0x80);
}

void hv_uuid_format(const uint8_t u[16], char out[37])
{
    snprintf(out, 37,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
             u[12], u[13], u[14], u[15]);
}

int hv_hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int hv_uuid_parse(const char *text, uint8_t uuid[16])
{
    int n = 0;
    for (const char *p = text; *p; p++) {
        if (*p == '-' && (p - text == 8 || p - text == 13 || p - text == 18 || p - text == 23))
            continue;
        int hi = hv_hex_value(p[0]), lo = p[1] ? hv_hex_value(p[1]) : -1;
        if (hi < 0 || lo < 0 || n >= 16)
            return -EINVAL;
        uuid[n++] = (uint8_t)(hi << 4 | lo);
        p++;
    }
    return n == 16 ? 0 : -EINVAL;
}

bool hv_uuid_is_nil(const uint8_t uuid[16])
{
    return hv_buf_is_zero(uuid, 16);
}
