#include "common.h"

#include <errno.h>

size_t hv_iov_length(const struct iovec *iov, int iovcnt)
{
    size_t n = 0;
    for (int i = 0; i < iovcnt; i++)
        n += iov[i].iov_len;
    return n;
}

/* Walk the bytes [offset, offset+len) of an iovec, piece by piece. */
#define IOV_WALK(iov, iovcnt, offset, len, piece_base, piece_len, body)        \
    do {                                                                      \
        size_t skip_ = (offset), left_ = (len);                               \
        for (int i_ = 0; i_ < (iovcnt) && left_; i_++) {                      \
            if (skip_ >= (iov)[i_].iov_len) {                                 \
                skip_ -= (iov)[i_].iov_len;                                   \
                continue;                                                     \
            }                                                                 \
            uint8_t *piece_base = (uint8_t *)(iov)[i_].iov_base + skip_;      \
            size_t piece_len = HV_MIN((iov)[i_].iov_len - skip_, left_);      \
            body;                                                             \
            left_ -= piece_len;                                               \
            skip_ = 0;                                                        \
        }                                                                     \
    } while (0)

void hv_iov_to_buf(const struct iovec *iov, int iovcnt, size_t offset, void *buf, size_t len)
{
    uint8_t *out = buf;
    IOV_WALK(iov, iovcnt, offset, len, base, n, {
        memcpy(out, base, n);
        out += n;
    });
}

void hv_iov_from_buf(const struct iovec *iov, int iovcnt, size_t offset, const void *buf,
                     size_t len)
{
    const uint8_t *in = buf;
    IOV_WALK(iov, iovcnt, offset, len, base, n, {
        memcpy(base, in, n);
        in += n;
    });
}

void hv_iov_memset(const struct iovec *iov, int iovcnt, size_t offset, int c, size_t len)
{
    IOV_WALK(iov, iovcnt, offset, len, base, n, memset(base, c, n));
}

bool hv_iov_is_zero(const struct iovec *iov, int iovcnt, size_t offset, size_t len)
{
    bool zero = true;
    IOV_WALK(iov, iovcnt, offset, len, base, n, {
        if (zero && !hv_buf_is_zero(base, n))
            zero = false;
    });
    return zero;
}

int hv_iov_slice(const struct iovec *iov, int iovcnt, size_t offset, size_t len,
                 struct iovec *out, int max)
{
    int cnt = 0;
    bool overflow = false;
    IOV_WALK(iov, iovcnt, offset, len, base, n, {
        if (cnt == max) {
            overflow = true;
            break;
        }
        out[cnt].iov_base = base;
        out[cnt].iov_len = n;
        cnt++;
    });
    return overflow ? -ENOSPC : cnt;
}

bool hv_iov_is_aligned(const struct iovec *iov, int iovcnt, size_t align)
{
    for (int i = 0; i < iovcnt; i++)
        if (((uintptr_t)iov[i].iov_base | iov[i].iov_len) & (align - 1))
            return false;
    return true;
}

bool hv_buf_is_zero(const void *buf, size_t len)
{
    const uint8_t *p = buf;
    /* Check the head by bytes, then compare the buffer with itself shifted
     * by 16 bytes: memcmp is vectorized, and a zero prefix plus equality
     * means all zero. */
    size_t head = HV_MIN(len, 16);
    for (size_t i = 0; i < head; i++)
        if (p[i])
            return false;
    return len <= 16 || memcmp(p, p + 16, len - 16) == 0;
}
