/*
 * Everything a target (or the kernel's vpd_pg83) hands san/ goes through
 * these decoders: the first byte picks which, the rest is the data.
 */
#include <stdint.h>
#include <string.h>

#include "san.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    const uint8_t *buf = data + 1;
    size_t len = size - 1;
    char d[SAN_DESIGNATOR_MAX];
    uint64_t luns[64];
    size_t total;
    struct san_inquiry inq;
    struct san_capacity cap;
    struct san_pr_status pr;
    switch (data[0] % 7) {
    case 0:
        if (san_vpd83_designator(buf, len, d) == 0 && strlen(d) >= SAN_DESIGNATOR_MAX) {
            __builtin_trap();
        }
        break;
    case 1:
        if (san_parse_report_luns(buf, len, luns, 64, &total) > 64) {
            __builtin_trap();
        }
        break;
    case 2:
        san_parse_inquiry(buf, len, &inq);
        break;
    case 3:
        san_parse_read_capacity16(buf, len, &cap);
        break;
    case 4:
        memset(&pr, 0, sizeof(pr));
        if (san_parse_pr_keys(buf, len, &pr) == 0 && pr.key_count > SAN_PR_MAX_KEYS) {
            __builtin_trap();
        }
        break;
    case 5:
        san_parse_pr_reservation(buf, len, &pr);
        break;
    default:
        san_sense_key(buf, len);
        san_sense_asc_ascq(buf, len);
        break;
    }
    return 0;
}
