/* npiv's internals shared between its .c files (and its tests, fuzzers). */
#ifndef HVSTOR_NPIV_INTERNAL_H
#define HVSTOR_NPIV_INTERNAL_H

#include "npiv.h"

#define NPIV_STATE_FILE "npiv.json"
#define NPIV_LOCK_FILE "npiv.lock"
#define NPIV_HOST_ID_BITS_MAX 20

/* The allocator's state file, decoded and validated. `issued_iqns` is a
 * borrowed reference into the json_t it was decoded from. */
struct npiv_state {
    uint32_t oui;
    uint32_t host_id;
    unsigned host_id_bits;
    char iqn_prefix[NPIV_ISCSI_NAME_MAX + 1];
    uint64_t next_serial;
    json_t *issued_iqns;
};

int npiv_state_decode(json_t *obj, struct npiv_state *st, const char *path,
                      struct hv_err *err);
/* WWN of `kind` (0..3, see npiv.h) for a serial under a layout. */
uint64_t npiv_wwn_compose(uint32_t oui, uint32_t host_id, unsigned host_id_bits,
                          uint64_t serial, unsigned kind);
static inline uint64_t npiv_serial_max(unsigned host_id_bits)
{
    return (1ull << (34 - host_id_bits)) - 1;
}

/* sysfs attribute helpers: read at most cap-1 bytes, trailing whitespace cut. */
int npiv_sysfs_read(const char *path, char *buf, size_t cap);
int npiv_sysfs_read_wwn(const char *path, uint64_t *wwn);
int npiv_sysfs_read_uint(const char *path, unsigned *value);
/* One write(2) of the whole string, as sysfs store functions need. */
int npiv_sysfs_write(const char *path, const char *text);
/* "hostN" -> N; -1 if the name is not exactly that. */
int npiv_parse_host_name(const char *name);
/* "H:C:T:L" -> parts; -EINVAL otherwise. */
int npiv_parse_hctl(const char *name, unsigned *h, unsigned *c, unsigned *t, uint64_t *l);
void npiv_sleep_ms(unsigned ms);

#endif
