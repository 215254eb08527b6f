/*
 * Everything npiv reads back that someone else wrote: its state file and a
 * VM's identity JSON (both from the state dir, possibly damaged), and sysfs
 * attribute text (WWNs, H:C:T:L names, iSCSI names). The input's first byte
 * picks the parser; the rest is its text. Parsers must refuse garbage with an
 * error, never crash, and whatever they accept must survive a re-encode.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "npiv_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct hv_err err;
    char *text;

    if (size < 1 || size > 65536)
        return 0;
    text = malloc(size);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';

    switch (data[0] % 5) {
    case 0: {                                   /* the allocator's state file */
        json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
        struct npiv_state st;
        if (j && npiv_state_decode(j, &st, "fuzz/npiv.json", &err) == 0) {
            if (st.host_id_bits > NPIV_HOST_ID_BITS_MAX ||
                st.next_serial > npiv_serial_max(st.host_id_bits) + 1)
                abort();
        }
        json_decref(j);
        break;
    }
    case 1: {                                   /* a VM's identity */
        json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
        struct npiv_identity id, back;
        if (j && npiv_identity_from_json(j, &id, &err) == 0) {
            json_t *again = npiv_identity_to_json(&id);
            if (npiv_identity_from_json(again, &back, &err) != 0 ||
                memcmp(&id, &back, sizeof(id)) != 0)
                abort();
            char *zoning = npiv_zoning_text(&id, NULL);
            if (!zoning)
                abort();
            free(zoning);
            json_decref(again);
        }
        json_decref(j);
        break;
    }
    case 2: {                                   /* a WWN from sysfs or a user */
        uint64_t w, back;
        char colon[NPIV_WWN_COLON_LEN + 1], hex[NPIV_WWN_HEX_LEN + 1];
        if (npiv_wwn_parse(text, &w) == 0) {
            npiv_wwn_colon(w, colon);
            npiv_wwn_hex(w, hex);
            if (npiv_wwn_parse(colon, &back) || back != w || npiv_wwn_parse(hex, &back) ||
                back != w)
                abort();
        }
        break;
    }
    case 3: {                                   /* scsi_device / fc_host names */
        unsigned h, c, t;
        uint64_t l;
        (void)npiv_parse_hctl(text, &h, &c, &t, &l);
        (void)npiv_parse_host_name(text);
        break;
    }
    case 4:                                     /* iSCSI names */
        if (npiv_iscsi_name_validate(text, &err) == 0 && strlen(text) > NPIV_ISCSI_NAME_MAX)
            abort();
        break;
    }
    free(text);
    return 0;
}
