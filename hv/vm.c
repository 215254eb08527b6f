/*
 * The VM definition: names, access rules, slots, and its JSON form.
 *
 * Everything here is plain data and runs without a reactor: the registry, the
 * daemon and the unit tests share it. The runtime side (controllers, open
 * disks) is in vm_runtime.c.
 */
#include "hv.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <strings.h>

const char *hv_disk_kind_name(enum hv_disk_kind kind)
{
    switch (kind) {
    case HV_DISK_VHD:
        return "vhd";
    case HV_DISK_RAW:
        return "raw";
    case HV_DISK_LUN:
        return "lun";
    case HV_DISK_DEV:
        return "dev";
    case HV_DISK_FC:
        return "fc";
    }
    return "?";
}

int hv_disk_kind_parse(const char *name, enum hv_disk_kind *kind)
{
    if (!strcmp(name, "vhd")) {
        *kind = HV_DISK_VHD;
        return 0;
    }
    if (!strcmp(name, "raw")) {
        *kind = HV_DISK_RAW;
        return 0;
    }
    if (!strcmp(name, "lun")) {
        *kind = HV_DISK_LUN;
        return 0;
    }
    if (!strcmp(name, "dev")) {
        *kind = HV_DISK_DEV;
        return 0;
    }
    if (!strcmp(name, "fc")) {
        *kind = HV_DISK_FC;
        return 0;
    }
    return -EINVAL;
}

int hv_vm_name_check(const char *name, struct hv_err *err)
{
    size_t len = strlen(name);

    if (len == 0 || len > HV_NAME_MAX)
        return hv_err_set(err, -EINVAL, "VM name '%s': must be 1 to %d characters", name,
                          HV_NAME_MAX);
    if (!islower((unsigned char)name[0]) && !isdigit((unsigned char)name[0]))
        return hv_err_set(err, -EINVAL, "VM name '%s': must start with a lowercase letter "
                          "or a digit", name);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        /* Lowercase only: iSCSI names are compared after lowercasing, so two
         * VMs "Web" and "web" would share targets. */
        if (!islower(c) && !isdigit(c) && c != '-')
            return hv_err_set(err, -EINVAL, "VM name '%s': character '%c' is not allowed "
                              "(use a-z, 0-9 and '-': the name becomes part of an iSCSI "
                              "target name)", name, isprint(c) ? c : '?');
    }
    return 0;
}

static bool all_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return s[n] == '\0';
}

int hv_iscsi_name_check(char *name, struct hv_err *err)
{
    size_t len = strlen(name);

    if (len == 0 || len > HV_ISCSI_NAME_MAX)
        return hv_err_set(err, -EINVAL, "iSCSI name '%s': must be 1 to %d bytes", name,
                          HV_ISCSI_NAME_MAX);
    for (size_t i = 0; i < len; i++)
        name[i] = (char)tolower((unsigned char)name[i]);
    if (!strncmp(name, "eui.", 4)) {
        if (!all_hex(name + 4, 16))
            return hv_err_set(err, -EINVAL, "iSCSI name '%s': an eui. name is 16 hex digits",
                              name);
        return 0;
    }
    if (!strncmp(name, "naa.", 4)) {
        if (!all_hex(name + 4, 16) && !all_hex(name + 4, 32))
            return hv_err_set(err, -EINVAL, "iSCSI name '%s': a naa. name is 16 or 32 hex "
                              "digits", name);
        return 0;
    }
    /* iqn.yyyy-mm.reversed.domain[:anything] */
    if (strncmp(name, "iqn.", 4) != 0 || len < 12 || !isdigit((unsigned char)name[4]) ||
        !isdigit((unsigned char)name[5]) || !isdigit((unsigned char)name[6]) ||
        !isdigit((unsigned char)name[7]) || name[8] != '-' ||
        !isdigit((unsigned char)name[9]) || !isdigit((unsigned char)name[10]) ||
        name[11] != '.' || len == 12)
        return hv_err_set(err, -EINVAL, "iSCSI name '%s': expected iqn.YYYY-MM.domain[:id], "
                          "eui.<16 hex> or naa.<16|32 hex>", name);
    for (size_t i = 12; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!islower(c) && !isdigit(c) && c != '-' && c != '.' && c != ':')
            return hv_err_set(err, -EINVAL, "iSCSI name '%s': character '%c' is not allowed",
                              name, isprint(c) ? c : '?');
    }
    return 0;
}

int hv_chap_parse(const char *text, struct hv_chap *chap, struct hv_err *err)
{
    const char *colon = strchr(text, ':');
    size_t user_len;
    size_t secret_len;

    if (!colon)
        return hv_err_set(err, -EINVAL, "CHAP '%s': expected USER:SECRET", text);
    user_len = (size_t)(colon - text);
    secret_len = strlen(colon + 1);
    if (user_len == 0 || user_len >= sizeof(chap->user))
        return hv_err_set(err, -EINVAL, "CHAP user name must be 1 to %zu bytes",
                          sizeof(chap->user) - 1);
    /* RFC 7143 9.2.1: secrets must be at least 96 bits (12 bytes); shorter
     * ones are brute-forced from one captured exchange. */
    if (secret_len < 12 || secret_len >= sizeof(chap->secret))
        return hv_err_set(err, -EINVAL, "CHAP secret for user '%.*s' must be 12 to %zu bytes "
                          "(RFC 7143 asks for at least 96 bits), got %zu", (int)user_len, text,
                          sizeof(chap->secret) - 1, secret_len);
    memset(chap, 0, sizeof(*chap));
    memcpy(chap->user, text, user_len);
    memcpy(chap->secret, colon + 1, secret_len);
    return 0;
}

void hv_target_name(const char *vm_name, int controller, char out[HV_ISCSI_NAME_MAX + 1])
{
    snprintf(out, HV_ISCSI_NAME_MAX + 1, "%s:%s.c%d", HV_TARGET_PREFIX, vm_name, controller);
}

int hv_target_parse(const char *target, char vm_name[HV_NAME_MAX + 1], int *controller)
{
    static const char prefix[] = HV_TARGET_PREFIX ":";
    const char *rest;
    const char *dot;
    size_t len;

    if (strncasecmp(target, prefix, sizeof(prefix) - 1) != 0)
        return -ENOENT;
    rest = target + sizeof(prefix) - 1;
    dot = strrchr(rest, '.');
    if (!dot || (dot[1] != 'c' && dot[1] != 'C') || dot[2] < '0' ||
        dot[2] >= '0' + HV_MAX_CONTROLLERS || dot[3] != '\0')
        return -ENOENT;
    len = (size_t)(dot - rest);
    if (len == 0 || len > HV_NAME_MAX)
        return -ENOENT;
    for (size_t i = 0; i < len; i++)
        vm_name[i] = (char)tolower((unsigned char)rest[i]);
    vm_name[len] = '\0';
    *controller = dot[2] - '0';
    return 0;
}

int hv_vm_config_set_initiators(struct hv_vm_config *vm, const char *const *names, int count,
                                struct hv_err *err)
{
    char checked[HV_MAX_INITIATORS][HV_ISCSI_NAME_MAX + 1];
    int n = 0;

    if (count < 1)
        return hv_err_set(err, -EINVAL, "VM '%s': at least one initiator name is needed "
                          "(nobody could log in otherwise)", vm->name);
    if (count > HV_MAX_INITIATORS)
        return hv_err_set(err, -EINVAL, "VM '%s': %d initiator names, at most %d allowed",
                          vm->name, count, HV_MAX_INITIATORS);
    for (int i = 0; i < count; i++) {
        bool is_dup = false;
        if (strlen(names[i]) > HV_ISCSI_NAME_MAX)
            return hv_err_set(err, -EINVAL, "initiator name '%.40s...': longer than %d bytes",
                              names[i], HV_ISCSI_NAME_MAX);
        snprintf(checked[n], sizeof(checked[n]), "%s", names[i]);
        int ret = hv_iscsi_name_check(checked[n], err);
        if (ret < 0)
            return ret;
        for (int j = 0; j < n; j++)
            is_dup |= !strcmp(checked[j], checked[n]);
        if (!is_dup)
            n++;
    }
    memcpy(vm->initiators, checked, sizeof(checked[0]) * (size_t)n);
    vm->initiator_count = n;
    return 0;
}

bool hv_vm_config_allows(const struct hv_vm_config *vm, const char *initiator)
{
    for (int i = 0; i < vm->initiator_count; i++)
        if (!strcasecmp(vm->initiators[i], initiator))
            return true;
    return false;
}

int hv_vm_config_init(struct hv_vm_config *vm, const char *name, struct hv_err *err)
{
    char by_name[HV_ISCSI_NAME_MAX + 1];
    char by_uuid[HV_ISCSI_NAME_MAX + 1];
    char uuid_text[37];
    const char *defaults[2] = {by_name, by_uuid};
    int ret;

    memset(vm, 0, sizeof(*vm));
    ret = hv_vm_name_check(name, err);
    if (ret < 0)
        return ret;
    snprintf(vm->name, sizeof(vm->name), "%s", name);
    hv_uuid_generate(vm->uuid);
    hv_uuid_format(vm->uuid, uuid_text);
    /* What QEMU's iSCSI driver sends without an explicit initiator-name:
     * ":<uuid>" when started with -uuid, else ":<name>" from -name. */
    snprintf(by_name, sizeof(by_name), "%s:%s", HV_QEMU_INITIATOR_PREFIX, name);
    snprintf(by_uuid, sizeof(by_uuid), "%s:%s", HV_QEMU_INITIATOR_PREFIX, uuid_text);
    vm->controller_count = 1;
    return hv_vm_config_set_initiators(vm, defaults, 2, err);
}

void hv_vm_config_free(struct hv_vm_config *vm)
{
    for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
            free(vm->disks[c][s]);
            vm->disks[c][s] = NULL;
        }
    if (vm->extra)
        json_decref(vm->extra);
    vm->extra = NULL;
}

int hv_vm_config_copy(struct hv_vm_config *dst, const struct hv_vm_config *src)
{
    *dst = *src;
    memset(dst->disks, 0, sizeof(dst->disks));
    dst->extra = NULL;
    for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
            if (!src->disks[c][s])
                continue;
            dst->disks[c][s] = malloc(sizeof(struct hv_disk_config));
            if (!dst->disks[c][s]) {
                hv_vm_config_free(dst);
                return -ENOMEM;
            }
            *dst->disks[c][s] = *src->disks[c][s];
        }
    if (src->extra)
        dst->extra = json_deep_copy(src->extra);
    return 0;
}

int hv_vm_config_validate(const struct hv_vm_config *vm, struct hv_err *err)
{
    int ret = hv_vm_name_check(vm->name, err);
    if (ret < 0)
        return ret;
    if (vm->initiator_count < 1 || vm->initiator_count > HV_MAX_INITIATORS)
        return hv_err_set(err, -EINVAL, "VM '%s': %d initiator names (1 to %d allowed)",
                          vm->name, vm->initiator_count, HV_MAX_INITIATORS);
    if (vm->controller_count < 1 || vm->controller_count > HV_MAX_CONTROLLERS)
        return hv_err_set(err, -EINVAL, "VM '%s': %d controllers (1 to %d allowed)", vm->name,
                          vm->controller_count, HV_MAX_CONTROLLERS);
    if (vm->mutual_chap.user[0] && !vm->chap.user[0])
        return hv_err_set(err, -EINVAL, "VM '%s': mutual CHAP needs one-way CHAP too (the "
                          "initiator proves itself first)", vm->name);
    if (vm->mutual_chap.user[0] && !strcmp(vm->mutual_chap.secret, vm->chap.secret))
        return hv_err_set(err, -EINVAL, "VM '%s': the mutual CHAP secret must differ from "
                          "the initiator's (RFC 7143 9.2.1)", vm->name);
    for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
            const struct hv_disk_config *d = vm->disks[c][s];
            if (!d)
                continue;
            if (c >= vm->controller_count)
                return hv_err_set(err, -EINVAL, "VM '%s': disk in controller %d but the VM "
                                  "has %d controllers", vm->name, c, vm->controller_count);
            if (d->path[0] != '/')
                return hv_err_set(err, -EINVAL, "VM '%s': controller %d slot %d: path '%s' "
                                  "is not absolute", vm->name, c, s, d->path);
        }
    return 0;
}

static json_t *chap_to_json(const struct hv_chap *chap)
{
    return json_pack("{s:s, s:s}", "user", chap->user, "secret", chap->secret);
}

json_t *hv_vm_config_to_json(const struct hv_vm_config *vm)
{
    char uuid_text[37];
    json_t *obj = vm->extra ? json_deep_copy(vm->extra) : json_object();
    json_t *initiators = json_array();
    json_t *controllers = json_array();

    hv_uuid_format(vm->uuid, uuid_text);
    for (int i = 0; i < vm->initiator_count; i++)
        json_array_append_new(initiators, json_string(vm->initiators[i]));
    for (int c = 0; c < vm->controller_count; c++) {
        json_t *disks = json_array();
        for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
            const struct hv_disk_config *d = vm->disks[c][s];
            if (!d)
                continue;
            json_t *disk = json_pack("{s:i, s:s, s:s, s:b}", "slot", s, "kind",
                                     hv_disk_kind_name(d->kind), "path", d->path, "read_only",
                                     d->is_read_only);
            if (d->kind == HV_DISK_LUN || (d->kind == HV_DISK_DEV && d->designator[0])) {
                json_object_set_new(disk, "designator", json_string(d->designator));
                json_object_set_new(disk, "full_scsi", json_boolean(d->is_full_scsi));
            } else if (d->kind == HV_DISK_FC) {
                json_object_set_new(disk, "designator", json_string(d->designator));
                json_object_set_new(disk, "full_scsi", json_boolean(d->is_full_scsi));
                json_object_set_new(disk, "transport",
                                    json_string(d->is_sg_io ? "sg_io" : "emulated"));
            }
            json_array_append_new(disks, disk);
        }
        json_array_append_new(controllers, json_pack("{s:i, s:o}", "index", c, "disks", disks));
    }
    json_object_set_new(obj, "version", json_integer(1));
    json_object_set_new(obj, "name", json_string(vm->name));
    json_object_set_new(obj, "uuid", json_string(uuid_text));
    json_object_set_new(obj, "initiators", initiators);
    if (vm->chap.user[0])
        json_object_set_new(obj, "chap", chap_to_json(&vm->chap));
    else
        json_object_del(obj, "chap");
    if (vm->mutual_chap.user[0])
        json_object_set_new(obj, "mutual_chap", chap_to_json(&vm->mutual_chap));
    else
        json_object_del(obj, "mutual_chap");
    json_object_set_new(obj, "controllers", controllers);
    return obj;
}

static int chap_from_json(const json_t *obj, const char *what, const char *key,
                          struct hv_chap *chap, struct hv_err *err)
{
    const json_t *v = json_object_get(obj, key);
    const char *user;
    const char *secret;

    memset(chap, 0, sizeof(*chap));
    if (!v)
        return 0;
    if (json_unpack((json_t *)v, "{s:s, s:s}", "user", &user, "secret", &secret) != 0 ||
        !user[0] || strlen(user) >= sizeof(chap->user) || strlen(secret) >= sizeof(chap->secret))
        return hv_err_set(err, -EINVAL, "%s: '%s' must be {\"user\": ..., \"secret\": ...} "
                          "with non-empty strings under 256 bytes", what, key);
    snprintf(chap->user, sizeof(chap->user), "%s", user);
    snprintf(chap->secret, sizeof(chap->secret), "%s", secret);
    return 0;
}

static const char *const known_keys[] = {"version", "name", "uuid", "initiators", "chap",
                                         "mutual_chap", "controllers"};

int hv_vm_config_from_json(const json_t *obj, const char *what, struct hv_vm_config *vm,
                           struct hv_err *err)
{
    const char *name;
    const char *uuid_text;
    const json_t *initiators;
    const json_t *controllers;
    const char *names[HV_MAX_INITIATORS];
    json_int_t version = 1;
    size_t i;
    const json_t *v;
    int ret;

    memset(vm, 0, sizeof(*vm));
    if (!json_is_object(obj))
        return hv_err_set(err, -EINVAL, "%s: a VM definition must be a JSON object", what);
    v = json_object_get(obj, "version");
    if (v && (!json_is_integer(v) || (version = json_integer_value(v)) != 1))
        return hv_err_set(err, -EINVAL, "%s: definition version %lld is not supported (this "
                          "hvstord knows version 1)", what, (long long)version);
    if (json_unpack((json_t *)obj, "{s:s, s:s, s:o, s:o}", "name", &name, "uuid", &uuid_text,
                    "initiators", &initiators, "controllers", &controllers) != 0)
        return hv_err_set(err, -EINVAL, "%s: needs string 'name' and 'uuid', arrays "
                          "'initiators' and 'controllers'", what);
    ret = hv_vm_name_check(name, err);
    if (ret < 0)
        goto prefix;
    snprintf(vm->name, sizeof(vm->name), "%s", name);
    if (hv_uuid_parse(uuid_text, vm->uuid) < 0)
        return hv_err_set(err, -EINVAL, "%s: uuid '%s' is not a UUID", what, uuid_text);
    if (!json_is_array(initiators) || json_array_size(initiators) > HV_MAX_INITIATORS)
        return hv_err_set(err, -EINVAL, "%s: 'initiators' must be an array of at most %d names",
                          what, HV_MAX_INITIATORS);
    json_array_foreach(initiators, i, v) {
        if (!json_is_string(v))
            return hv_err_set(err, -EINVAL, "%s: initiators[%zu] is not a string", what, i);
        names[i] = json_string_value(v);
    }
    ret = hv_vm_config_set_initiators(vm, names, (int)json_array_size(initiators), err);
    if (ret < 0)
        goto prefix;
    ret = chap_from_json(obj, what, "chap", &vm->chap, err);
    if (ret < 0)
        return ret;
    ret = chap_from_json(obj, what, "mutual_chap", &vm->mutual_chap, err);
    if (ret < 0)
        return ret;
    if (!json_is_array(controllers) || json_array_size(controllers) < 1 ||
        json_array_size(controllers) > HV_MAX_CONTROLLERS)
        return hv_err_set(err, -EINVAL, "%s: 'controllers' must list 1 to %d controllers", what,
                          HV_MAX_CONTROLLERS);
    vm->controller_count = (int)json_array_size(controllers);
    json_array_foreach(controllers, i, v) {
        const json_t *disks;
        const json_t *d;
        size_t j;
        json_int_t index;
        if (json_unpack((json_t *)v, "{s:I, s:o}", "index", &index, "disks", &disks) != 0 ||
            index != (json_int_t)i || !json_is_array(disks)) {
            ret = hv_err_set(err, -EINVAL, "%s: controllers[%zu] needs 'index' %zu and an "
                             "array 'disks'", what, i, i);
            goto fail;
        }
        json_array_foreach(disks, j, d) {
            json_int_t slot;
            const char *kind;
            const char *path;
            int is_read_only = 0;
            struct hv_disk_config *dc;
            if (json_unpack((json_t *)d, "{s:I, s:s, s:s, s?b}", "slot", &slot, "kind", &kind,
                            "path", &path, "read_only", &is_read_only) != 0 ||
                slot < 0 || slot >= HV_SLOTS_PER_CONTROLLER) {
                ret = hv_err_set(err, -EINVAL, "%s: controller %zu disk %zu needs 'slot' "
                                 "0..%d, 'kind', 'path'", what, i, j,
                                 HV_SLOTS_PER_CONTROLLER - 1);
                goto fail;
            }
            if (vm->disks[i][slot]) {
                ret = hv_err_set(err, -EINVAL, "%s: controller %zu slot %lld appears twice",
                                 what, i, (long long)slot);
                goto fail;
            }
            dc = calloc(1, sizeof(*dc));
            if (!dc) {
                ret = -ENOMEM;
                goto fail;
            }
            vm->disks[i][slot] = dc;
            if (hv_disk_kind_parse(kind, &dc->kind) < 0) {
                ret = hv_err_set(err, -EINVAL, "%s: controller %zu slot %lld: unknown disk "
                                 "kind '%s'", what, i, (long long)slot, kind);
                goto fail;
            }
            if (strlen(path) >= sizeof(dc->path)) {
                ret = hv_err_set(err, -ENAMETOOLONG, "%s: controller %zu slot %lld: path too "
                                 "long", what, i, (long long)slot);
                goto fail;
            }
            snprintf(dc->path, sizeof(dc->path), "%s", path);
            dc->is_read_only = is_read_only;
            if (dc->kind == HV_DISK_LUN || dc->kind == HV_DISK_FC) {
                const char *designator = NULL;
                int is_full_scsi = 0;
                if (json_unpack((json_t *)d, "{s:s, s?b}", "designator", &designator,
                                "full_scsi", &is_full_scsi) != 0 || !designator[0] ||
                    strlen(designator) >= sizeof(dc->designator)) {
                    ret = hv_err_set(err, -EINVAL, "%s: controller %zu slot %lld: a LUN disk "
                                     "needs its 'designator'", what, i, (long long)slot);
                    goto fail;
                }
                snprintf(dc->designator, sizeof(dc->designator), "%s", designator);
                dc->is_full_scsi = is_full_scsi;
                if (dc->kind == HV_DISK_FC) {
                    /* absent: a definition from before SG_IO, emulated then */
                    const char *transport = json_string_value(json_object_get(d, "transport"));
                    dc->is_sg_io = transport && !strcmp(transport, "sg_io");
                }
            } else if (dc->kind == HV_DISK_DEV) {
                /* with a designator: a local SCSI disk passed through (SG_IO) */
                const char *designator = NULL;
                int is_full_scsi = 0;
                if (json_unpack((json_t *)d, "{s?s, s?b}", "designator", &designator,
                                "full_scsi", &is_full_scsi) != 0 ||
                    (designator && strlen(designator) >= sizeof(dc->designator))) {
                    ret = hv_err_set(err, -EINVAL, "%s: controller %zu slot %lld: bad "
                                     "'designator'", what, i, (long long)slot);
                    goto fail;
                }
                snprintf(dc->designator, sizeof(dc->designator), "%s",
                         designator ? designator : "");
                dc->is_full_scsi = is_full_scsi && designator && designator[0];
            }
        }
    }
    /* Keep what a newer version (or a later module: agents, SAN identities)
     * stored, so that loading and saving here never loses it. */
    vm->extra = json_object();
    {
        const char *key;
        json_t *value;
        json_object_foreach((json_t *)obj, key, value) {
            bool is_known = false;
            for (size_t k = 0; k < HV_ARRAY_SIZE(known_keys); k++)
                is_known |= !strcmp(key, known_keys[k]);
            if (!is_known)
                json_object_set(vm->extra, key, value);
        }
    }
    ret = hv_vm_config_validate(vm, err);
    if (ret < 0)
        goto prefix;
    return 0;

prefix:
    hv_err_prefix(err, "%s", what);
fail:
    hv_vm_config_free(vm);
    return ret;
}
