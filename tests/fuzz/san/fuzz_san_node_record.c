/* open-iscsi node records and initiatorname.iscsi are text from the host's
 * /etc: the parsers must bound every copy and never read past the input. */
#include <stdint.h>
#include <string.h>

#include "san.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct san_host_node node;
    struct hv_err err = {0};
    char name[SAN_NAME_MAX];
    if (san_parse_node_record((const char *)data, size, "fuzz", &node, &err) == 0 &&
        (strlen(node.target) >= SAN_NAME_MAX || !node.target[0])) {
        __builtin_trap();
    }
    if (san_parse_initiator_name((const char *)data, size, name) == 0 &&
        strlen(name) >= SAN_NAME_MAX) {
        __builtin_trap();
    }
    return 0;
}
