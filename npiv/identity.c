/*
 * Identity allocation: a counter in the state dir, reserved before use.
 *
 * Every allocation is one read-modify-write of npiv.json under an exclusive
 * flock: read the counter, write counter+1 (and the new IQN into the ledger)
 * with hv_json_write_file (temp file, fsync, rename, fsync dir), and only then
 * give the serial to the caller. A crash before the rename leaves the old
 * file: nothing was handed out. A crash after it leaves the serial burnt: it
 * is never handed out, which wastes one serial and is harmless. The flock
 * keeps two processes (or threads) on one state dir from reading the same
 * counter.
 */
#include "npiv_internal.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_VERSION 1

struct npiv_allocator {
    char state_path[4096];
    char lock_path[4096];
    struct npiv_config cfg;
    uint64_t next_serial;               /* as of our last look at the file */
};

void npiv_config_init(struct npiv_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->host_id_bits = 10;
}

uint64_t npiv_wwn_compose(uint32_t oui, uint32_t host_id, unsigned host_id_bits,
                          uint64_t serial, unsigned kind)
{
    uint64_t vendor = ((uint64_t)host_id << (36 - host_id_bits)) | (serial << 2) | (kind & 3);
    if (host_id_bits == 0)
        vendor = (serial << 2) | (kind & 3);
    return (5ull << 60) | ((uint64_t)(oui & 0xFFFFFF) << 36) | (vendor & 0xFFFFFFFFFull);
}

static int check_config(const struct npiv_config *cfg, struct hv_err *err)
{
    if (cfg->oui == 0 || cfg->oui > 0xFFFFFF)
        return hv_err_set(err, -EINVAL, "npiv: OUI 0x%06" PRIx32 " is not a 24-bit IEEE OUI "
                          "(configure the one your organisation holds)", cfg->oui);
    if (cfg->host_id_bits > NPIV_HOST_ID_BITS_MAX)
        return hv_err_set(err, -EINVAL, "npiv: host_id_bits %u: at most %d", cfg->host_id_bits,
                          NPIV_HOST_ID_BITS_MAX);
    if ((uint64_t)cfg->host_id >> cfg->host_id_bits)
        return hv_err_set(err, -EINVAL, "npiv: host id %" PRIu32 " does not fit in %u bits",
                          cfg->host_id, cfg->host_id_bits);
    if (!cfg->iqn_prefix[0])
        return hv_err_set(err, -EINVAL, "npiv: no IQN prefix configured "
                          "(e.g. iqn.2026-11.com.example.host1)");
    if (strncmp(cfg->iqn_prefix, "iqn.", 4) != 0 || strchr(cfg->iqn_prefix, ':'))
        return hv_err_set(err, -EINVAL, "npiv: IQN prefix '%s' must be \"iqn.yyyy-mm.domain\" "
                          "without a ':' part", cfg->iqn_prefix);
    int ret = npiv_iscsi_name_validate(cfg->iqn_prefix, err);
    if (ret < 0)
        hv_err_prefix(err, "npiv: IQN prefix");
    return ret;
}

static int get_uint(json_t *obj, const char *key, uint64_t max, uint64_t *out, const char *path,
                    struct hv_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        (uint64_t)json_integer_value(v) > max)
        return hv_err_set(err, -EINVAL, "%s: \"%s\" must be an integer 0..%" PRIu64, path, key,
                          max);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

int npiv_state_decode(json_t *obj, struct npiv_state *st, const char *path, struct hv_err *err)
{
    uint64_t v;
    int ret;

    memset(st, 0, sizeof(*st));
    if (!json_is_object(obj))
        return hv_err_set(err, -EINVAL, "%s: not a JSON object", path);
    if ((ret = get_uint(obj, "version", 1000, &v, path, err)) < 0)
        return ret;
    if (v != STATE_VERSION)
        return hv_err_set(err, -EINVAL, "%s: version %" PRIu64 " is not %d", path, v,
                          STATE_VERSION);
    if ((ret = get_uint(obj, "oui", 0xFFFFFF, &v, path, err)) < 0)
        return ret;
    st->oui = (uint32_t)v;
    if ((ret = get_uint(obj, "host_id_bits", NPIV_HOST_ID_BITS_MAX, &v, path, err)) < 0)
        return ret;
    st->host_id_bits = (unsigned)v;
    if ((ret = get_uint(obj, "host_id", (1ull << st->host_id_bits) - 1, &v, path, err)) < 0)
        return ret;
    st->host_id = (uint32_t)v;
    /* one past the largest serial: the state of a host whose space is used up */
    if ((ret = get_uint(obj, "next_serial", npiv_serial_max(st->host_id_bits) + 1, &v, path,
                        err)) < 0)
        return ret;
    st->next_serial = v;

    json_t *prefix = json_object_get(obj, "iqn_prefix");
    if (!json_is_string(prefix) || json_string_length(prefix) >= sizeof(st->iqn_prefix))
        return hv_err_set(err, -EINVAL, "%s: \"iqn_prefix\" must be a string", path);
    snprintf(st->iqn_prefix, sizeof(st->iqn_prefix), "%s", json_string_value(prefix));

    json_t *issued = json_object_get(obj, "issued_iqns");
    if (!json_is_array(issued))
        return hv_err_set(err, -EINVAL, "%s: \"issued_iqns\" must be an array", path);
    size_t i;
    json_t *it;
    json_array_foreach(issued, i, it) {
        if (!json_is_string(it) || strlen(json_string_value(it)) != json_string_length(it))
            return hv_err_set(err, -EINVAL, "%s: issued_iqns[%zu] is not a string", path, i);
        ret = npiv_iscsi_name_validate(json_string_value(it), err);
        if (ret < 0) {
            hv_err_prefix(err, "%s: issued_iqns[%zu]", path, i);
            return ret;
        }
    }
    st->issued_iqns = issued;
    return 0;
}

static json_t *state_encode(const struct npiv_config *cfg, uint64_t next_serial, json_t *issued)
{
    json_t *o = json_object();
    json_object_set_new(o, "version", json_integer(STATE_VERSION));
    json_object_set_new(o, "oui", json_integer(cfg->oui));
    json_object_set_new(o, "host_id", json_integer(cfg->host_id));
    json_object_set_new(o, "host_id_bits", json_integer(cfg->host_id_bits));
    json_object_set_new(o, "iqn_prefix", json_string(cfg->iqn_prefix));
    json_object_set_new(o, "next_serial", json_integer((json_int_t)next_serial));
    json_object_set(o, "issued_iqns", issued);
    return o;
}

static int lock_state(struct npiv_allocator *a, struct hv_err *err)
{
    int fd = open(a->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return hv_err_errno(err, a->lock_path, "open");
    while (flock(fd, LOCK_EX) < 0) {
        if (errno != EINTR) {
            int ret = hv_err_errno(err, a->lock_path, "flock");
            close(fd);
            return ret;
        }
    }
    return fd;
}

static void unlock_state(int fd)
{
    flock(fd, LOCK_UN);
    close(fd);
}

/* Load the state file under the lock; a missing file is a fresh state. */
static int load_state(struct npiv_allocator *a, json_t **root, struct npiv_state *st,
                      struct hv_err *err)
{
    int ret;

    if (access(a->state_path, F_OK) < 0 && errno == ENOENT) {
        json_t *empty = json_array();
        *root = state_encode(&a->cfg, 1, empty);
        json_decref(empty);
    } else {
        ret = hv_json_read_file(a->state_path, root, err);
        if (ret < 0)
            return ret;
    }
    ret = npiv_state_decode(*root, st, a->state_path, err);
    if (ret < 0)
        goto fail;
    if (st->oui != a->cfg.oui || st->host_id != a->cfg.host_id ||
        st->host_id_bits != a->cfg.host_id_bits) {
        ret = hv_err_set(err, -EINVAL, "%s: made for OUI %06" PRIx32 " host id %" PRIu32
                         "/%u bits, configured OUI %06" PRIx32 " host id %" PRIu32 "/%u bits: "
                         "changing the layout could repeat WWNs already in the fabric; "
                         "use a new state dir", a->state_path, st->oui, st->host_id,
                         st->host_id_bits, a->cfg.oui, a->cfg.host_id, a->cfg.host_id_bits);
        goto fail;
    }
    return 0;
fail:
    json_decref(*root);
    *root = NULL;
    return ret;
}

int npiv_allocator_open(const char *state_dir, const struct npiv_config *cfg,
                        struct npiv_allocator **out, struct hv_err *err)
{
    struct npiv_allocator *a;
    struct npiv_state st;
    json_t *root = NULL;
    int ret, lock_fd;

    ret = check_config(cfg, err);
    if (ret < 0)
        return ret;
    a = calloc(1, sizeof(*a));
    if (!a)
        return hv_err_set(err, -ENOMEM, "npiv: out of memory");
    a->cfg = *cfg;
    if (snprintf(a->state_path, sizeof(a->state_path), "%s/%s", state_dir, NPIV_STATE_FILE) >=
            (int)sizeof(a->state_path) ||
        snprintf(a->lock_path, sizeof(a->lock_path), "%s/%s", state_dir, NPIV_LOCK_FILE) >=
            (int)sizeof(a->lock_path)) {
        ret = hv_err_set(err, -ENAMETOOLONG, "%s: path too long", state_dir);
        goto fail;
    }
    lock_fd = lock_state(a, err);
    if (lock_fd < 0) {
        ret = lock_fd;
        goto fail;
    }
    ret = load_state(a, &root, &st, err);
    if (ret == 0 && access(a->state_path, F_OK) < 0)
        ret = hv_json_write_file(a->state_path, root, err);    /* record the layout now */
    unlock_state(lock_fd);
    if (ret < 0)
        goto fail;
    a->next_serial = st.next_serial;
    json_decref(root);
    *out = a;
    return 0;
fail:
    json_decref(root);
    free(a);
    return ret;
}

void npiv_allocator_close(struct npiv_allocator *a)
{
    free(a);
}

uint64_t npiv_allocator_next_serial(const struct npiv_allocator *a)
{
    return a->next_serial;
}

static bool iqn_was_issued(json_t *issued, const char *iqn)
{
    size_t i;
    json_t *it;
    json_array_foreach(issued, i, it) {
        if (strcmp(json_string_value(it), iqn) == 0)
            return true;
    }
    return false;
}

static int make_default_iqn(const struct npiv_config *cfg, const char *vm_name, uint64_t serial,
                            bool with_serial, char *out, size_t cap, struct hv_err *err)
{
    char name[NPIV_VM_NAME_MAX + 1];
    size_t n = 0;
    for (const char *p = vm_name; *p && n < sizeof(name) - 1; p++) {
        unsigned char c = (unsigned char)*p;
        c = (unsigned char)tolower(c);
        name[n++] = (char)((islower(c) || isdigit(c) || c == '-' || c == '.') ? c : '-');
    }
    name[n] = '\0';
    int len = with_serial
                  ? snprintf(out, cap, "%s:vm.%s.%" PRIu64, cfg->iqn_prefix, name, serial)
                  : snprintf(out, cap, "%s:vm.%s", cfg->iqn_prefix, name);
    if (len < 0 || (size_t)len >= cap || len > NPIV_ISCSI_NAME_MAX)
        return hv_err_set(err, -ENAMETOOLONG, "VM '%s': name too long for an iSCSI name "
                          "(\"%s:vm.<name>\" must stay within %d bytes)", vm_name,
                          cfg->iqn_prefix, NPIV_ISCSI_NAME_MAX);
    return npiv_iscsi_name_validate(out, err);
}

int npiv_identity_allocate(struct npiv_allocator *a, const char *vm_name,
                           const char *iqn_override, struct npiv_identity *out,
                           struct hv_err *err)
{
    struct npiv_identity id;
    struct npiv_state st;
    json_t *root = NULL, *issued = NULL, *next = NULL;
    int ret, lock_fd;

    memset(&id, 0, sizeof(id));
    if (!vm_name || !*vm_name || strlen(vm_name) > NPIV_VM_NAME_MAX)
        return hv_err_set(err, -EINVAL, "VM name '%s' must be 1..%d bytes",
                          vm_name ? vm_name : "", NPIV_VM_NAME_MAX);
    if (iqn_override) {
        ret = npiv_iscsi_name_validate(iqn_override, err);
        if (ret < 0) {
            hv_err_prefix(err, "VM '%s'", vm_name);
            return ret;
        }
    }
    snprintf(id.vm_name, sizeof(id.vm_name), "%s", vm_name);

    lock_fd = lock_state(a, err);
    if (lock_fd < 0)
        return lock_fd;
    ret = load_state(a, &root, &st, err);
    if (ret < 0)
        goto out;
    if (st.next_serial > npiv_serial_max(st.host_id_bits)) {
        ret = hv_err_set(err, -ENOSPC, "%s: all %" PRIu64 " identities of host id %" PRIu32
                         " are used; give this host another host id and a new state dir",
                         a->state_path, npiv_serial_max(st.host_id_bits), st.host_id);
        goto out;
    }
    id.serial = st.next_serial;

    if (iqn_override) {
        if (iqn_was_issued(st.issued_iqns, iqn_override)) {
            ret = hv_err_set(err, -EEXIST, "VM '%s': iSCSI name %s was already issued on this "
                             "host (to this or an earlier VM) and is never reused", vm_name,
                             iqn_override);
            goto out;
        }
        snprintf(id.iqn, sizeof(id.iqn), "%s", iqn_override);
    } else {
        ret = make_default_iqn(&a->cfg, vm_name, id.serial, false, id.iqn, sizeof(id.iqn), err);
        if (ret == 0 && iqn_was_issued(st.issued_iqns, id.iqn))
            ret = make_default_iqn(&a->cfg, vm_name, id.serial, true, id.iqn, sizeof(id.iqn),
                                   err);
        if (ret < 0)
            goto out;
        if (iqn_was_issued(st.issued_iqns, id.iqn)) {
            ret = hv_err_set(err, -EEXIST, "VM '%s': iSCSI name %s was already issued",
                             vm_name, id.iqn);
            goto out;
        }
    }
    for (unsigned set = 0; set < 2; set++) {
        id.fc[set].wwnn = npiv_wwn_compose(a->cfg.oui, a->cfg.host_id, a->cfg.host_id_bits,
                                           id.serial, set * 2);
        id.fc[set].wwpn = npiv_wwn_compose(a->cfg.oui, a->cfg.host_id, a->cfg.host_id_bits,
                                           id.serial, set * 2 + 1);
    }

    /* Reserve: the serial and the IQN are durable before anyone sees them. */
    issued = json_copy(st.issued_iqns);
    if (!issued || json_array_append_new(issued, json_string(id.iqn)) < 0) {
        ret = hv_err_set(err, -ENOMEM, "npiv: out of memory");
        goto out;
    }
    next = state_encode(&a->cfg, id.serial + 1, issued);
    ret = hv_json_write_file(a->state_path, next, err);
    if (ret < 0)
        goto out;
    a->next_serial = id.serial + 1;
    *out = id;
out:
    json_decref(next);
    json_decref(issued);
    json_decref(root);
    unlock_state(lock_fd);
    return ret;
}

json_t *npiv_identity_to_json(const struct npiv_identity *id)
{
    char buf[NPIV_WWN_COLON_LEN + 1];
    json_t *o = json_object(), *fc = json_object();
    static const char *set_names[2] = { "a", "b" };

    if (!o || !fc) {
        json_decref(o);
        json_decref(fc);
        return NULL;
    }
    json_object_set_new(o, "vm", json_string(id->vm_name));
    json_object_set_new(o, "iqn", json_string(id->iqn));
    json_object_set_new(o, "serial", json_integer((json_int_t)id->serial));
    for (int s = 0; s < 2; s++) {
        json_t *set = json_object();
        npiv_wwn_colon(id->fc[s].wwpn, buf);
        json_object_set_new(set, "wwpn", json_string(buf));
        npiv_wwn_colon(id->fc[s].wwnn, buf);
        json_object_set_new(set, "wwnn", json_string(buf));
        json_object_set_new(fc, set_names[s], set);
    }
    json_object_set_new(o, "fc", fc);
    return o;
}

static int get_wwn(const json_t *set, const char *key, const char *where, uint64_t *out,
                   struct hv_err *err)
{
    const char *text = json_string_value(json_object_get(set, key));
    if (!text || npiv_wwn_parse(text, out) < 0)
        return hv_err_set(err, -EINVAL, "identity: %s.%s must be a WWN string like "
                          "\"50:01:43:80:00:00:04:01\"", where, key);
    if (npiv_wwn_naa(*out) != 5)
        return hv_err_set(err, -EINVAL, "identity: %s.%s %s is NAA %u, not NAA-5", where, key,
                          text, npiv_wwn_naa(*out));
    return 0;
}

int npiv_identity_from_json(const json_t *obj, struct npiv_identity *out, struct hv_err *err)
{
    struct npiv_identity id;
    static const char *set_names[2] = { "a", "b" };
    int ret;

    memset(&id, 0, sizeof(id));
    if (!json_is_object(obj))
        return hv_err_set(err, -EINVAL, "identity: not a JSON object");
    json_t *vm = json_object_get(obj, "vm"), *iqn = json_object_get(obj, "iqn");
    json_t *serial = json_object_get(obj, "serial"), *fc = json_object_get(obj, "fc");
    if (!json_is_string(vm) || json_string_length(vm) == 0 ||
        json_string_length(vm) > NPIV_VM_NAME_MAX ||
        strlen(json_string_value(vm)) != json_string_length(vm))
        return hv_err_set(err, -EINVAL, "identity: \"vm\" must be a name of 1..%d bytes",
                          NPIV_VM_NAME_MAX);
    snprintf(id.vm_name, sizeof(id.vm_name), "%s", json_string_value(vm));
    if (!json_is_string(iqn) || strlen(json_string_value(iqn)) != json_string_length(iqn))
        return hv_err_set(err, -EINVAL, "identity of VM '%s': \"iqn\" must be a string",
                          id.vm_name);
    ret = npiv_iscsi_name_validate(json_string_value(iqn), err);
    if (ret < 0) {
        hv_err_prefix(err, "identity of VM '%s'", id.vm_name);
        return ret;
    }
    snprintf(id.iqn, sizeof(id.iqn), "%s", json_string_value(iqn));
    if (!json_is_integer(serial) || json_integer_value(serial) < 0)
        return hv_err_set(err, -EINVAL, "identity of VM '%s': \"serial\" must be an integer "
                          ">= 0", id.vm_name);
    id.serial = (uint64_t)json_integer_value(serial);
    if (!json_is_object(fc))
        return hv_err_set(err, -EINVAL, "identity of VM '%s': \"fc\" must be an object",
                          id.vm_name);
    for (int s = 0; s < 2; s++) {
        json_t *set = json_object_get(fc, set_names[s]);
        char where[16];
        snprintf(where, sizeof(where), "fc.%s", set_names[s]);
        if (!json_is_object(set))
            return hv_err_set(err, -EINVAL, "identity of VM '%s': \"%s\" missing", id.vm_name,
                              where);
        if ((ret = get_wwn(set, "wwpn", where, &id.fc[s].wwpn, err)) < 0 ||
            (ret = get_wwn(set, "wwnn", where, &id.fc[s].wwnn, err)) < 0) {
            hv_err_prefix(err, "VM '%s'", id.vm_name);
            return ret;
        }
    }
    uint64_t all[4] = { id.fc[0].wwpn, id.fc[0].wwnn, id.fc[1].wwpn, id.fc[1].wwnn };
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            if (all[i] == all[j])
                return hv_err_set(err, -EINVAL, "identity of VM '%s': the same WWN appears "
                                  "twice in its address sets", id.vm_name);
    *out = id;
    return 0;
}
