/*
 * Fuzz the requestor's input side: a guest's output is untrusted. Whatever
 * decodes must re-encode, and the re-encoded line must decode to the same
 * values (one codec, both directions).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "vss-agent.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vss_reply a, b;
    char *line;
    size_t len;
    if (vss_reply_decode((const char *)data, size, &a, NULL) < 0)
        return 0;
    int ret = vss_reply_encode(&a, &line, &len);
    if (ret == -E2BIG) {                    /* escaping may grow a line past the limit */
        vss_reply_clear(&a);
        return 0;
    }
    if (ret < 0 || vss_reply_decode(line, len - 1, &b, NULL) < 0)
        abort();
    if (a.has_id != b.has_id || a.id != b.id || a.is_ok != b.is_ok || a.state != b.state ||
        a.frozen_count != b.frozen_count || a.warning_count != b.warning_count ||
        a.total_us != b.total_us || (!a.is_ok && strcmp(a.message, b.message) != 0))
        abort();
    free(line);
    vss_reply_clear(&a);
    vss_reply_clear(&b);
    return 0;
}
