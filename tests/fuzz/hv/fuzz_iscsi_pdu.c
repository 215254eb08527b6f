/*
 * The PDU receive path: whatever bytes an initiator sends, byte by byte or
 * in chunks — login, SCSI commands with immediate data, Data-Out, R2T
 * bookkeeping, TMF, NOP, Text, Logout, digests — the target neither crashes
 * nor leaks nor leaves a task behind. The first input byte picks the chunk
 * size; the rest is the byte stream.
 */
#include "iscsi_fuzz_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup();
    if (size < 1)
        return 0;
    fuzz_run_conn(data + 1, size - 1, data[0]);
    return 0;
}
