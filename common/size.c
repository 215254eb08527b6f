#include "common.h"

#include <ctype.h>
#include <errno.h>
#include <strings.h>

int hv_parse_u64(const char *text, uint64_t *value)
{
    uint64_t v = 0;
    if (!text || !*text)
        return -EINVAL;
    for (const char *p = text; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return -EINVAL;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    *value = v;
    return 0;
}

/*
 * Fractions are kept as an exact numerator over a power of ten so that
 * "1.5G" is exactly 1610612736 bytes, and "0.3K" (307.2 bytes) is refused
 * rather than silently rounded: a disk size must be what the user meant.
 */
int hv_parse_size(const char *text, uint64_t *bytes)
{
    uint64_t whole = 0, frac = 0, frac_div = 1;
    const char *p = text;
    int shift = 0;

    if (!text || !isdigit((unsigned char)*p))
        return -EINVAL;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (whole > (UINT64_MAX - d) / 10)
            return -ERANGE;
        whole = whole * 10 + d;
    }
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return -EINVAL;
        for (; isdigit((unsigned char)*p); p++) {
            if (frac_div >= 1000000000000ull)
                return -EINVAL;     /* more precision than any size needs */
            frac = frac * 10 + (uint64_t)(*p - '0');
            frac_div *= 10;
        }
    }
    if (*p) {
        static const char units[] = "BKMGTPE";
        const char *u = strchr(units, toupper((unsigned char)*p));
        if (!u)
            return -EINVAL;
        shift = (int)(u - units) * 10;
        p++;
        if (shift && (!strcasecmp(p, "iB") || !strcasecmp(p, "B")))
            p += strlen(p);
        if (*p)
            return -EINVAL;
    }
    if (shift && whole > (UINT64_MAX >> shift))
        return -ERANGE;
    uint64_t v = whole << shift;
    if (frac) {
        /* frac / frac_div * 2^shift must be a whole number of bytes */
        unsigned __int128 f = (unsigned __int128)frac << shift;
        if (f % frac_div)
            return -EINVAL;
        uint64_t add = (uint64_t)(f / frac_div);
        if (v > UINT64_MAX - add)
            return -ERANGE;
        v += add;
    }
    *bytes = v;
    return 0;
}

const char *hv_format_size(uint64_t bytes, char buf[32])
{
    static const char *units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
    int u = 0;
    double v = (double)bytes;
    while (v >= 1024 && u < 6) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, 32, "%llu B", (unsigned long long)bytes);
    else if (v == (double)(uint64_t)v)
        snprintf(buf, 32, "%llu %s", (unsigned long long)v, units[u]);
    else
        snprintf(buf, 32, "%.3g %s", v, units[u]);
    return buf;
}
