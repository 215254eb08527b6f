/*
 * A guest's CDB is untrusted bytes: the filter, the name for the logs and
 * the transfer length the SG_IO path trusts (pt_cdb_data_bytes) must read
 * nothing past the CDB and never claim a data phase of a length the CDB
 * cannot express. First byte: block size selector; the rest: the CDB.
 */
#include <stdint.h>
#include <string.h>

#include "passthru.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t block_sizes[] = {0, 512, 520, 4096, 1u << 20};
    uint8_t cdb[SAN_CDB_MAX];
    enum san_xfer dir = SAN_XFER_NONE;
    uint64_t bytes = 0;
    char name[64];
    uint32_t block_bytes;
    size_t len;

    if (size < 1)
        return 0;
    block_bytes = block_sizes[data[0] % 5];
    len = size - 1 > SAN_CDB_MAX ? SAN_CDB_MAX : size - 1;
    memcpy(cdb, data + 1, len);                 /* exactly len bytes: ASan sees overreads */
    pt_cdb_is_allowed(cdb, len, false);
    pt_cdb_name(cdb, len, name, sizeof(name));
    if (strlen(name) >= sizeof(name))
        __builtin_trap();
    if (pt_cdb_data_bytes(cdb, len, block_bytes, &dir, &bytes)) {
        /* at most 2 x 2^32 blocks (COMPARE AND WRITE's factor), never a
         * direction with zero bytes or zero bytes with a direction */
        if (block_bytes == 0 || bytes > 2 * (UINT64_C(1) << 32) * block_bytes)
            __builtin_trap();
        if ((bytes == 0) != (dir == SAN_XFER_NONE))
            __builtin_trap();
    }
    return 0;
}
