/* WWN text forms and iSCSI name syntax. */
#include "npiv.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>

void npiv_wwn_hex(uint64_t wwn, char out[NPIV_WWN_HEX_LEN + 1])
{
    snprintf(out, NPIV_WWN_HEX_LEN + 1, "%016" PRIx64, wwn);
}

void npiv_wwn_colon(uint64_t wwn, char out[NPIV_WWN_COLON_LEN + 1])
{
    char *p = out;
    for (int i = 7; i >= 0; i--) {
        static const char digits[] = "0123456789abcdef";
        uint8_t b = (uint8_t)(wwn >> (i * 8));
        *p++ = digits[b >> 4];
        *p++ = digits[b & 15];
        if (i)
            *p++ = ':';
    }
    *p = '\0';
}

/*
 * Three spellings reach us: our own two (plain and colon, in state files and
 * from users) and sysfs's "0x%llx", which drops leading zeros. Each is parsed
 * strictly by its own rule; a mix ("50:0143...") is refused.
 */
int npiv_wwn_parse(const char *text, uint64_t *wwn)
{
    size_t len;
    uint64_t v = 0;

    if (!text)
        return -EINVAL;
    while (*text == ' ' || *text == '\t')
        text++;
    len = strlen(text);
    while (len && (text[len - 1] == '\n' || text[len - 1] == ' ' || text[len - 1] == '\t'))
        len--;

    if (len > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
        if (len - 2 > 16)
            return -EINVAL;
        for (size_t i = 2; i < len; i++) {
            int d = hv_hex_value(text[i]);
            if (d < 0)
                return -EINVAL;
            v = (v << 4) | (uint64_t)d;
        }
    } else if (len == 16) {
        for (size_t i = 0; i < 16; i++) {
            int d = hv_hex_value(text[i]);
            if (d < 0)
                return -EINVAL;
            v = (v << 4) | (uint64_t)d;
        }
    } else if (len == NPIV_WWN_COLON_LEN) {
        for (size_t i = 0; i < 8; i++) {
            int hi = hv_hex_value(text[i * 3]), lo = hv_hex_value(text[i * 3 + 1]);
            if (hi < 0 || lo < 0 || (i < 7 && text[i * 3 + 2] != ':'))
                return -EINVAL;
            v = (v << 8) | (uint64_t)(hi << 4 | lo);
        }
    } else {
        return -EINVAL;
    }
    *wwn = v;
    return 0;
}

static int check_hex_digits(const char *name, const char *digits, size_t want1, size_t want2,
                            struct hv_err *err)
{
    size_t n = strlen(digits);
    if (n != want1 && n != want2)
        return hv_err_set(err, -EINVAL, "iSCSI name '%s': needs %zu%s hex digits after the "
                          "type, has %zu", name, want1, want2 != want1 ? " or 32" : "", n);
    for (size_t i = 0; i < n; i++)
        if (hv_hex_value(digits[i]) < 0)
            return hv_err_set(err, -EINVAL, "iSCSI name '%s': '%c' at offset %zu is not a "
                              "hex digit", name, digits[i], (size_t)(digits - name) + i);
    return 0;
}

/*
 * RFC 3720 3.2.6.3.1 (kept by RFC 7143): "iqn." date "." naming-authority
 * [":" unique-name]. The date is yyyy-mm; the naming authority is a reversed
 * domain name. Names are compared after stringprep, which folds case, so the
 * only normalized spelling is lowercase: an uppercase letter here would make
 * two spellings of one name, and targets' ACLs compare bytes.
 */
int npiv_iscsi_name_validate(const char *name, struct hv_err *err)
{
    size_t len;

    if (!name || !*name)
        return hv_err_set(err, -EINVAL, "iSCSI name is empty");
    len = strlen(name);
    if (len > NPIV_ISCSI_NAME_MAX)
        return hv_err_set(err, -EINVAL, "iSCSI name '%.40s...': %zu bytes, at most %d allowed",
                          name, len, NPIV_ISCSI_NAME_MAX);
    if (strncmp(name, "eui.", 4) == 0)
        return check_hex_digits(name, name + 4, 16, 16, err);
    if (strncmp(name, "naa.", 4) == 0)
        return check_hex_digits(name, name + 4, 16, 32, err);
    if (strncmp(name, "iqn.", 4) != 0)
        return hv_err_set(err, -EINVAL, "iSCSI name '%s': must start with \"iqn.\", "
                          "\"eui.\" or \"naa.\"", name);

    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (isupper(c))
            return hv_err_set(err, -EINVAL, "iSCSI name '%s': uppercase '%c' at offset %zu "
                              "(iSCSI names are lowercase)", name, c, i);
        if (!(islower(c) || isdigit(c) || c == '-' || c == '.' || c == ':'))
            return hv_err_set(err, -EINVAL, "iSCSI name '%s': character 0x%02x at offset %zu "
                              "is not allowed (a-z, 0-9, '-', '.', ':')", name, c, i);
    }

    const char *d = name + 4;
    if (!(isdigit((unsigned char)d[0]) && isdigit((unsigned char)d[1]) &&
          isdigit((unsigned char)d[2]) && isdigit((unsigned char)d[3]) && d[4] == '-' &&
          isdigit((unsigned char)d[5]) && isdigit((unsigned char)d[6])))
        return hv_err_set(err, -EINVAL, "iSCSI name '%s': needs a yyyy-mm date after "
                          "\"iqn.\"", name);
    int month = (d[5] - '0') * 10 + (d[6] - '0');
    if (month < 1 || month > 12)
        return hv_err_set(err, -EINVAL, "iSCSI name '%s': month %02d in the date is not "
                          "01..12", name, month);
    if (d[7] != '.')
        return hv_err_set(err, -EINVAL, "iSCSI name '%s': needs '.' and a reversed domain "
                          "name after the date", name);

    /* naming authority: labels of [a-z0-9-], separated by single dots */
    const char *auth = d + 8, *end = strchr(auth, ':');
    if (!end)
        end = name + len;
    if (auth == end)
        return hv_err_set(err, -EINVAL, "iSCSI name '%s': empty naming authority after the "
                          "date", name);
    size_t label = 0;
    for (const char *p = auth; p < end; p++) {
        if (*p == '.') {
            if (label == 0)
                return hv_err_set(err, -EINVAL, "iSCSI name '%s': empty label in the naming "
                                  "authority at offset %zu", name, (size_t)(p - name));
            label = 0;
        } else {
            label++;
        }
    }
    if (label == 0)
        return hv_err_set(err, -EINVAL, "iSCSI name '%s': naming authority ends in '.'", name);
    if (*end == ':' && end[1] == '\0')
        return hv_err_set(err, -EINVAL, "iSCSI name '%s': nothing after ':'", name);
    return 0;
}
