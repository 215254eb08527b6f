/*
 * The kernel's FC transport through sysfs (Documentation/scsi/
 * scsi_fc_transport.rst, drivers/scsi/scsi_transport_fc.c):
 *
 *   class/fc_host/hostN/{port_name,node_name,port_type,port_state,
 *                        fabric_name,max_npiv_vports,npiv_vports_inuse,
 *                        vport_create,vport_delete}
 *   class/fc_vports/vport-N:0-M/{port_name,node_name,vport_state,...}
 *   class/fc_remote_ports/rport-K:0-R/{port_name,node_name,roles,
 *                                      port_state,scsi_target_id}
 *   class/scsi_device/K:0:T:L
 *
 * A vport gets its own SCSI host K (an fc_host whose port_type is "NPIV
 * VPORT" and whose port_name is the vport's WWPN); we find it by that WWPN
 * rather than through the device links, because the WWPN is the one thing
 * that is ours and stable. WWNs in sysfs read "0x%llx"; vport_create and
 * vport_delete take exactly "<16 hex>:<16 hex>" (an optional newline), parsed
 * by fc_parse_wwn.
 */
#include "npiv_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define PATH_CAP 512

int npiv_sysfs_read(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;
    if (fd < 0)
        return -errno;
    do {
        n = read(fd, buf, cap - 1);
    } while (n < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (n < 0)
        return -saved;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        n--;
    buf[n] = '\0';
    return (int)n;
}

int npiv_sysfs_read_wwn(const char *path, uint64_t *wwn)
{
    char buf[64];
    int ret = npiv_sysfs_read(path, buf, sizeof(buf));
    if (ret < 0)
        return ret;
    return npiv_wwn_parse(buf, wwn);
}

int npiv_sysfs_read_uint(const char *path, unsigned *value)
{
    char buf[32];
    uint64_t v;
    int ret = npiv_sysfs_read(path, buf, sizeof(buf));
    if (ret < 0)
        return ret;
    ret = hv_parse_u64(buf, &v);
    if (ret < 0)
        return ret;
    if (v > UINT_MAX)
        return -ERANGE;
    *value = (unsigned)v;
    return 0;
}

int npiv_sysfs_write(const char *path, const char *text)
{
    size_t len = strlen(text);
    ssize_t n;
    /* no O_CREAT: a missing attribute means the driver lacks the feature */
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    do {
        n = write(fd, text, len);
    } while (n < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (n < 0)
        return -saved;
    return (size_t)n == len ? 0 : -EIO;
}

int npiv_parse_host_name(const char *name)
{
    uint64_t v;
    if (strncmp(name, "host", 4) != 0 || hv_parse_u64(name + 4, &v) < 0 || v > INT_MAX)
        return -1;
    return (int)v;
}

static int parse_uint_part(const char **p, char stop, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    const char *s = *p;
    if (*s < '0' || *s > '9')
        return -EINVAL;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (uint64_t)(*s - '0');
        if (v > max)
            return -EINVAL;
        s++;
    }
    if (*s != stop)
        return -EINVAL;
    *p = stop ? s + 1 : s;
    *out = v;
    return 0;
}

int npiv_parse_hctl(const char *name, unsigned *h, unsigned *c, unsigned *t, uint64_t *l)
{
    uint64_t hv, cv, tv, lv;
    const char *p = name;
    if (parse_uint_part(&p, ':', UINT_MAX, &hv) < 0 ||
        parse_uint_part(&p, ':', UINT_MAX, &cv) < 0 ||
        parse_uint_part(&p, ':', UINT_MAX, &tv) < 0 ||
        parse_uint_part(&p, '\0', UINT64_MAX / 10 - 10, &lv) < 0)
        return -EINVAL;
    *h = (unsigned)hv;
    *c = (unsigned)cv;
    *t = (unsigned)tv;
    *l = lv;
    return 0;
}

/* "rport-H:C-N" -> H */
static int parse_rport_name(const char *name, unsigned *host_no)
{
    uint64_t h, c, n;
    const char *p = name;
    if (strncmp(p, "rport-", 6) != 0)
        return -EINVAL;
    p += 6;
    if (parse_uint_part(&p, ':', UINT_MAX, &h) < 0 || parse_uint_part(&p, '-', UINT_MAX, &c) < 0 ||
        parse_uint_part(&p, '\0', UINT_MAX, &n) < 0)
        return -EINVAL;
    *host_no = (unsigned)h;
    return 0;
}

void npiv_sleep_ms(unsigned ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static void attr_path(char *out, const char *root, const char *cls, const char *dev,
                      const char *attr)
{
    snprintf(out, PATH_CAP, "%s/class/%s/%s/%s", root, cls, dev, attr);
}

/* ------------------------------------------------------------------ HBAs */

/*
 * Why this HBA cannot take a vport now, as an errno and a sentence. The FC
 * transport itself refuses a vport on a full HBA (-ENOSPC from vport_create);
 * we ask first so the message names the numbers, and because the order of
 * checks is the order an administrator fixes things in.
 */
static int hba_assess(const char *root, struct npiv_hba *h)
{
    char path[PATH_CAP];

    attr_path(path, root, "fc_host", h->name, "vport_create");
    if (access(path, F_OK) < 0) {
        snprintf(h->why_not, sizeof(h->why_not), "%s: its driver offers no NPIV "
                 "(no vport_create)", h->name);
        return -EOPNOTSUPP;
    }
    if (strncmp(h->port_type, "NPort", 5) != 0) {
        snprintf(h->why_not, sizeof(h->why_not), "%s: port_type is '%s'; NPIV needs an "
                 "N_Port logged in to a fabric", h->name, h->port_type);
        return -EOPNOTSUPP;
    }
    if (strcmp(h->port_state, "Online") != 0) {
        snprintf(h->why_not, sizeof(h->why_not), "%s: port_state is '%s', not Online",
                 h->name, h->port_state);
        return -ENOLINK;
    }
    if (h->vports_in_use >= h->max_vports) {
        snprintf(h->why_not, sizeof(h->why_not), "%s: no NPIV vports left "
                 "(npiv_vports_inuse %u of max_npiv_vports %u)", h->name, h->vports_in_use,
                 h->max_vports);
        return -ENOSPC;
    }
    return 0;
}

/* Read one fc_host. Returns 1 for a vport's own host (skip it), 0, or -errno. */
static int hba_read(const char *root, const char *name, struct npiv_hba *h, int *assess)
{
    char path[PATH_CAP];
    int ret, host_no = npiv_parse_host_name(name);

    if (host_no < 0)
        return -EINVAL;
    memset(h, 0, sizeof(*h));
    snprintf(h->name, sizeof(h->name), "%s", name);
    h->host_no = (unsigned)host_no;

    attr_path(path, root, "fc_host", name, "port_type");
    if ((ret = npiv_sysfs_read(path, h->port_type, sizeof(h->port_type))) < 0)
        return ret;
    if (strcmp(h->port_type, "NPIV VPORT") == 0)
        return 1;
    attr_path(path, root, "fc_host", name, "port_name");
    if ((ret = npiv_sysfs_read_wwn(path, &h->wwpn)) < 0)
        return ret;
    attr_path(path, root, "fc_host", name, "node_name");
    if ((ret = npiv_sysfs_read_wwn(path, &h->wwnn)) < 0)
        return ret;
    attr_path(path, root, "fc_host", name, "port_state");
    if ((ret = npiv_sysfs_read(path, h->port_state, sizeof(h->port_state))) < 0)
        return ret;
    attr_path(path, root, "fc_host", name, "fabric_name");
    if (npiv_sysfs_read_wwn(path, &h->fabric_name) < 0)
        h->fabric_name = 0;
    /* absent when the driver has no vport_create: no NPIV, zero vports */
    attr_path(path, root, "fc_host", name, "max_npiv_vports");
    if (npiv_sysfs_read_uint(path, &h->max_vports) < 0)
        h->max_vports = 0;
    attr_path(path, root, "fc_host", name, "npiv_vports_inuse");
    if (npiv_sysfs_read_uint(path, &h->vports_in_use) < 0)
        h->vports_in_use = 0;
    *assess = hba_assess(root, h);
    h->can_create_vport = *assess == 0;
    return 0;
}

/* Room for one more element in a growing array (`*listp` points to the
 * array, `elem` is one element's size): the directory scans below collect
 * entries this way. -ENOMEM leaves the array as it was. */
static int array_make_room(void *listp, size_t *cap, size_t n, size_t elem)
{
    void **list = listp;
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 8;
    void *grown = realloc(*list, ncap * elem);
    if (!grown)
        return -ENOMEM;
    *list = grown;
    *cap = ncap;
    return 0;
}

static int hba_cmp(const void *a, const void *b)
{
    const struct npiv_hba *x = a, *y = b;
    return x->host_no < y->host_no ? -1 : x->host_no > y->host_no;
}

int npiv_hba_list(const char *root, struct npiv_hba **out, size_t *count, struct hv_err *err)
{
    char dir_path[PATH_CAP];
    struct npiv_hba *list = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    DIR *dir;

    *out = NULL;
    *count = 0;
    snprintf(dir_path, sizeof(dir_path), "%s/class/fc_host", root);
    dir = opendir(dir_path);
    if (!dir) {
        if (errno == ENOENT)
            return 0;                   /* no FC transport loaded: no HBAs */
        return hv_err_errno(err, dir_path, "opendir");
    }
    while ((de = readdir(dir))) {
        struct npiv_hba h;
        int assess;
        if (npiv_parse_host_name(de->d_name) < 0)
            continue;
        int ret = hba_read(root, de->d_name, &h, &assess);
        if (ret == 1)
            continue;
        if (ret < 0) {
            /* a host going away while we look, or a driver without some
             * attribute: not an HBA we can use, not a reason to fail */
            hv_debug("%s/%s: unreadable (%s), skipped", dir_path, de->d_name, strerror(-ret));
            continue;
        }
        if (array_make_room(&list, &cap, n, sizeof(*list)) < 0) {
            closedir(dir);
            free(list);
            return hv_err_set(err, -ENOMEM, "npiv: out of memory");
        }
        list[n++] = h;
    }
    closedir(dir);
    if (n)
        qsort(list, n, sizeof(*list), hba_cmp);
    *out = list;
    *count = n;
    return 0;
}

int npiv_hba_pick(const char *root, uint64_t fabric_name, struct npiv_hba *out,
                  struct hv_err *err)
{
    struct npiv_hba *list;
    size_t n;
    char reasons[768] = "";
    size_t used = 0;
    int ret = npiv_hba_list(root, &list, &n, err);

    if (ret < 0)
        return ret;
    for (size_t i = 0; i < n; i++) {
        const char *why = list[i].why_not;
        char fabric_why[192];
        if (list[i].can_create_vport && fabric_name && list[i].fabric_name != fabric_name) {
            char want[NPIV_WWN_COLON_LEN + 1], have[NPIV_WWN_COLON_LEN + 1];
            npiv_wwn_colon(fabric_name, want);
            npiv_wwn_colon(list[i].fabric_name, have);
            snprintf(fabric_why, sizeof(fabric_why), "%s: on fabric %s, not %s", list[i].name,
                     have, want);
            why = fabric_why;
        } else if (list[i].can_create_vport) {
            *out = list[i];
            free(list);
            return 0;
        }
        if (used < sizeof(reasons))
            used += (size_t)snprintf(reasons + used, sizeof(reasons) - used, "%s%s",
                                     used ? "; " : "", why);
    }
    free(list);
    if (n == 0)
        return hv_err_set(err, -ENODEV, "no Fibre Channel HBA under %s/class/fc_host", root);
    return hv_err_set(err, -ENODEV, "no HBA can take an NPIV vport: %s", reasons);
}

/* ---------------------------------------------------------------- vports */

/* The fc_host whose port_name is `wwpn`: -ENOENT when none. */
static int find_host_by_wwpn(const char *root, uint64_t wwpn, char *name, size_t cap)
{
    char dir_path[PATH_CAP], path[PATH_CAP];
    struct dirent *de;
    DIR *dir;
    int ret = -ENOENT;

    snprintf(dir_path, sizeof(dir_path), "%s/class/fc_host", root);
    dir = opendir(dir_path);
    if (!dir)
        return -errno;
    while ((de = readdir(dir))) {
        uint64_t w;
        if (npiv_parse_host_name(de->d_name) < 0)
            continue;
        attr_path(path, root, "fc_host", de->d_name, "port_name");
        if (npiv_sysfs_read_wwn(path, &w) == 0 && w == wwpn) {
            snprintf(name, cap, "%s", de->d_name);
            ret = 0;
            break;
        }
    }
    closedir(dir);
    return ret;
}

/* vport_state of the fc_vports entry with port_name `wwpn`, "" when none. */
static void find_vport_state(const char *root, uint64_t wwpn, char *state, size_t cap)
{
    char dir_path[PATH_CAP], path[PATH_CAP];
    struct dirent *de;
    DIR *dir;

    state[0] = '\0';
    snprintf(dir_path, sizeof(dir_path), "%s/class/fc_vports", root);
    dir = opendir(dir_path);
    if (!dir)
        return;
    while ((de = readdir(dir))) {
        uint64_t w;
        if (strncmp(de->d_name, "vport-", 6) != 0)
            continue;
        attr_path(path, root, "fc_vports", de->d_name, "port_name");
        if (npiv_sysfs_read_wwn(path, &w) == 0 && w == wwpn) {
            attr_path(path, root, "fc_vports", de->d_name, "vport_state");
            if (npiv_sysfs_read(path, state, cap) < 0)
                state[0] = '\0';
            break;
        }
    }
    closedir(dir);
}

static void vport_string(const struct npiv_port_names *names, char out[40])
{
    char p[NPIV_WWN_HEX_LEN + 1], n[NPIV_WWN_HEX_LEN + 1];
    npiv_wwn_hex(names->wwpn, p);
    npiv_wwn_hex(names->wwnn, n);
    snprintf(out, 40, "%s:%s", p, n);
}

int npiv_vport_create(const char *root, const struct npiv_hba *hba,
                      const struct npiv_port_names *names, struct npiv_vport *out,
                      struct hv_err *err)
{
    char path[PATH_CAP], text[40], wwpn[NPIV_WWN_COLON_LEN + 1], existing[32];
    struct npiv_hba fresh;
    int ret, assess = 0;

    npiv_wwn_colon(names->wwpn, wwpn);
    /* The counters move as other vports come and go: look again now. */
    ret = hba_read(root, hba->name, &fresh, &assess);
    if (ret == 1)
        return hv_err_set(err, -EINVAL, "%s is itself an NPIV vport", hba->name);
    if (ret < 0)
        return hv_err_set(err, ret, "%s/class/fc_host/%s: %s", root, hba->name, strerror(-ret));
    if (assess < 0)
        return hv_err_set(err, assess, "cannot create vport %s: %s", wwpn, fresh.why_not);
    if (find_host_by_wwpn(root, names->wwpn, existing, sizeof(existing)) == 0)
        return hv_err_set(err, -EBUSY, "a port with WWPN %s already exists (%s): the VM's "
                          "address set is in use on this host", wwpn, existing);

    vport_string(names, text);
    attr_path(path, root, "fc_host", hba->name, "vport_create");
    ret = npiv_sysfs_write(path, text);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: writing \"%s\": %s", path, text, strerror(-ret));

    memset(out, 0, sizeof(*out));
    snprintf(out->sysfs_root, sizeof(out->sysfs_root), "%s", root);
    snprintf(out->parent, sizeof(out->parent), "%s", hba->name);
    out->parent_host_no = hba->host_no;
    out->names = *names;
    hv_info("vport %s created on %s", wwpn, hba->name);
    return 0;
}

static bool vport_state_is_failure(const char *s)
{
    static const char *bad[] = { "No Fabric Support", "No Fabric Resources", "Fabric Logout",
                                 "Fabric Rejected WWN", "VPort Failed", "Disabled" };
    for (size_t i = 0; i < HV_ARRAY_SIZE(bad); i++)
        if (strcmp(s, bad[i]) == 0)
            return true;
    return false;
}

int npiv_vport_poll(struct npiv_vport *v, bool *is_online, struct hv_err *err)
{
    char name[32], path[PATH_CAP], vstate[32], wwpn[NPIV_WWN_COLON_LEN + 1];

    *is_online = false;
    if (find_host_by_wwpn(v->sysfs_root, v->names.wwpn, name, sizeof(name)) == 0) {
        int no = npiv_parse_host_name(name);
        v->has_host = true;
        v->host_no = (unsigned)no;
        attr_path(path, v->sysfs_root, "fc_host", name, "port_state");
        if (npiv_sysfs_read(path, v->port_state, sizeof(v->port_state)) < 0)
            snprintf(v->port_state, sizeof(v->port_state), "unreadable");
        *is_online = strcmp(v->port_state, "Online") == 0;
    } else {
        v->has_host = false;
        v->port_state[0] = '\0';
    }
    if (*is_online)
        return 0;
    find_vport_state(v->sysfs_root, v->names.wwpn, vstate, sizeof(vstate));
    if (vport_state_is_failure(vstate)) {
        npiv_wwn_colon(v->names.wwpn, wwpn);
        return hv_err_set(err, -EIO, "vport %s on %s: the fabric did not take it "
                          "(vport_state '%s')", wwpn, v->parent, vstate);
    }
    return 0;
}

int npiv_vport_wait_online(struct npiv_vport *v, unsigned timeout_ms, unsigned poll_ms,
                           struct hv_err *err)
{
    uint64_t deadline = hv_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    char wwpn[NPIV_WWN_COLON_LEN + 1];
    bool online;

    if (!poll_ms)
        poll_ms = 100;
    for (;;) {
        int ret = npiv_vport_poll(v, &online, err);
        if (ret < 0)
            return ret;
        if (online)
            return 0;
        if (hv_now_ns() >= deadline)
            break;
        npiv_sleep_ms(poll_ms);
    }
    npiv_wwn_colon(v->names.wwpn, wwpn);
    if (v->has_host)
        return hv_err_set(err, -ETIMEDOUT, "vport %s on %s did not come Online within %u ms "
                          "(its fc_host host%u reports port_state '%s')", wwpn, v->parent,
                          timeout_ms, v->host_no, v->port_state);
    return hv_err_set(err, -ETIMEDOUT, "vport %s on %s did not come Online within %u ms "
                      "(no fc_host appeared for it)", wwpn, v->parent, timeout_ms);
}

int npiv_vport_delete(struct npiv_vport *v, struct hv_err *err)
{
    char path[PATH_CAP], text[40], name[32], wwpn[NPIV_WWN_COLON_LEN + 1];
    int ret;

    vport_string(&v->names, text);
    attr_path(path, v->sysfs_root, "fc_host", v->parent, "vport_delete");
    ret = npiv_sysfs_write(path, text);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: writing \"%s\": %s", path, text, strerror(-ret));
    /*
     * The kernel tears the vport down inside the write; still confirm it is
     * gone, so that the next vport_create on a full HBA does not race a
     * teardown that some driver finishes later.
     */
    for (int i = 0; i < 500; i++) {
        if (find_host_by_wwpn(v->sysfs_root, v->names.wwpn, name, sizeof(name)) < 0) {
            npiv_wwn_colon(v->names.wwpn, wwpn);
            hv_info("vport %s deleted from %s", wwpn, v->parent);
            v->has_host = false;
            return 0;
        }
        npiv_sleep_ms(10);
    }
    npiv_wwn_colon(v->names.wwpn, wwpn);
    return hv_err_set(err, -ETIMEDOUT, "vport %s: still present as %s 5 s after vport_delete "
                      "on %s", wwpn, name, v->parent);
}

int npiv_vport_bring_up(const char *root, const struct npiv_port_names *names,
                        const struct npiv_wait_options *opt, struct npiv_vport *out,
                        struct hv_err *err)
{
    struct npiv_hba hba;
    struct hv_err del_err;
    unsigned timeout = opt && opt->online_timeout_ms ? opt->online_timeout_ms : 30000;
    unsigned poll = opt && opt->poll_ms ? opt->poll_ms : 100;
    int ret;

    ret = npiv_hba_pick(root, opt ? opt->fabric_name : 0, &hba, err);
    if (ret < 0)
        return ret;
    ret = npiv_vport_create(root, &hba, names, out, err);
    if (ret < 0)
        return ret;
    ret = npiv_vport_wait_online(out, timeout, poll, err);
    if (ret < 0) {
        hv_err_clear(&del_err);
        int dret = npiv_vport_delete(out, &del_err);
        if (dret < 0 && err) {
            char first[sizeof(err->msg)];
            snprintf(first, sizeof(first), "%s", err->msg);
            hv_err_set(err, ret, "%s; and deleting it failed: %s", first,
                       hv_err_msg(&del_err, dret));
        } else if (err) {
            char first[sizeof(err->msg)];
            snprintf(first, sizeof(first), "%s", err->msg);
            hv_err_set(err, ret, "%s; the vport was deleted again", first);
        }
        return ret;
    }
    return 0;
}

/* ------------------------------------------------- remote ports and LUNs */

static int rport_cmp(const void *a, const void *b)
{
    const struct npiv_rport *x = a, *y = b;
    return strcmp(x->name, y->name);
}

int npiv_rport_list(const char *root, unsigned host_no, struct npiv_rport **out, size_t *count,
                    struct hv_err *err)
{
    char dir_path[PATH_CAP], path[PATH_CAP], roles[128], id_text[32];
    struct npiv_rport *list = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    DIR *dir;

    *out = NULL;
    *count = 0;
    snprintf(dir_path, sizeof(dir_path), "%s/class/fc_remote_ports", root);
    dir = opendir(dir_path);
    if (!dir) {
        if (errno == ENOENT)
            return 0;
        return hv_err_errno(err, dir_path, "opendir");
    }
    while ((de = readdir(dir))) {
        struct npiv_rport r;
        unsigned h;
        if (parse_rport_name(de->d_name, &h) < 0 || h != host_no)
            continue;
        memset(&r, 0, sizeof(r));
        snprintf(r.name, sizeof(r.name), "%s", de->d_name);
        attr_path(path, root, "fc_remote_ports", de->d_name, "port_name");
        if (npiv_sysfs_read_wwn(path, &r.wwpn) < 0)
            continue;                   /* going away, or not an FC port we know */
        attr_path(path, root, "fc_remote_ports", de->d_name, "node_name");
        if (npiv_sysfs_read_wwn(path, &r.wwnn) < 0)
            r.wwnn = 0;
        attr_path(path, root, "fc_remote_ports", de->d_name, "roles");
        if (npiv_sysfs_read(path, roles, sizeof(roles)) < 0)
            roles[0] = '\0';
        r.is_target = strstr(roles, "FCP Target") != NULL;
        attr_path(path, root, "fc_remote_ports", de->d_name, "port_state");
        if (npiv_sysfs_read(path, r.port_state, sizeof(r.port_state)) < 0)
            snprintf(r.port_state, sizeof(r.port_state), "unknown");
        r.scsi_target_id = -1;
        attr_path(path, root, "fc_remote_ports", de->d_name, "scsi_target_id");
        uint64_t id;
        if (npiv_sysfs_read(path, id_text, sizeof(id_text)) >= 0 &&
            hv_parse_u64(id_text, &id) == 0 && id <= INT_MAX)
            r.scsi_target_id = (int)id;
        if (array_make_room(&list, &cap, n, sizeof(*list)) < 0) {
            closedir(dir);
            free(list);
            return hv_err_set(err, -ENOMEM, "npiv: out of memory");
        }
        list[n++] = r;
    }
    closedir(dir);
    if (n)
        qsort(list, n, sizeof(*list), rport_cmp);
    *out = list;
    *count = n;
    return 0;
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int npiv_lun_list(const char *root, unsigned host_no, unsigned target_id, uint64_t **out,
                  size_t *count, struct hv_err *err)
{
    char dir_path[PATH_CAP];
    uint64_t *list = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    DIR *dir;

    *out = NULL;
    *count = 0;
    snprintf(dir_path, sizeof(dir_path), "%s/class/scsi_device", root);
    dir = opendir(dir_path);
    if (!dir && errno == ENOENT) {
        snprintf(dir_path, sizeof(dir_path), "%s/bus/scsi/devices", root);
        dir = opendir(dir_path);
    }
    if (!dir) {
        if (errno == ENOENT)
            return 0;
        return hv_err_errno(err, dir_path, "opendir");
    }
    while ((de = readdir(dir))) {
        unsigned h, c, t;
        uint64_t l;
        if (npiv_parse_hctl(de->d_name, &h, &c, &t, &l) < 0 || h != host_no || c != 0 ||
            t != target_id)
            continue;
        if (array_make_room(&list, &cap, n, sizeof(*list)) < 0) {
            closedir(dir);
            free(list);
            return hv_err_set(err, -ENOMEM, "npiv: out of memory");
        }
        list[n++] = l;
    }
    closedir(dir);
    if (n)
        qsort(list, n, sizeof(*list), u64_cmp);
    *out = list;
    *count = n;
    return 0;
}

/* ------------------------------------------- what serves a LUN on the host */

int npiv_vport_find(const char *root, const struct npiv_port_names *names,
                    struct npiv_vport *out, struct hv_err *err)
{
    char dir_path[PATH_CAP], path[PATH_CAP], wwpn[NPIV_WWN_COLON_LEN + 1];
    struct dirent *de;
    DIR *dir;
    int ret = -ENOENT;

    npiv_wwn_colon(names->wwpn, wwpn);
    snprintf(dir_path, sizeof(dir_path), "%s/class/fc_vports", root);
    dir = opendir(dir_path);
    if (!dir)
        return hv_err_set(err, -ENOENT, "no vport %s on this host", wwpn);
    while ((de = readdir(dir))) {
        unsigned parent, number;
        uint64_t w;
        if (sscanf(de->d_name, "vport-%u:0-%u", &parent, &number) != 2)
            continue;
        attr_path(path, root, "fc_vports", de->d_name, "port_name");
        if (npiv_sysfs_read_wwn(path, &w) < 0 || w != names->wwpn)
            continue;
        memset(out, 0, sizeof(*out));
        snprintf(out->sysfs_root, sizeof(out->sysfs_root), "%s", root);
        snprintf(out->parent, sizeof(out->parent), "host%u", parent);
        out->parent_host_no = parent;
        out->names = *names;
        ret = 0;
        break;
    }
    closedir(dir);
    if (ret < 0)
        return hv_err_set(err, ret, "no vport %s on this host", wwpn);
    bool is_online;
    return npiv_vport_poll(out, &is_online, err);
}

/* class/scsi_device/H:C:T:L/device, or bus/scsi/devices/H:C:T:L (the same
 * directory reached the other way). */
static int scsi_device_dir(const char *root, const struct npiv_lun_addr *a, char *out)
{
    snprintf(out, PATH_CAP, "%s/class/scsi_device/%u:%u:%u:%" PRIu64 "/device", root,
             a->host_no, a->channel, a->target_id, a->lun);
    if (access(out, F_OK) == 0)
        return 0;
    snprintf(out, PATH_CAP, "%s/bus/scsi/devices/%u:%u:%u:%" PRIu64, root, a->host_no,
             a->channel, a->target_id, a->lun);
    return access(out, F_OK) == 0 ? 0 : -ENOENT;
}

int npiv_lun_block_name(const char *root, const struct npiv_lun_addr *a, char *name,
                        size_t cap, struct hv_err *err)
{
    char dev[PATH_CAP], path[PATH_CAP + 8];
    struct dirent *de;
    DIR *dir;
    int ret = -ENOENT;

    if (scsi_device_dir(root, a, dev) < 0)
        return hv_err_set(err, -ENOENT, "SCSI device %u:%u:%u:%" PRIu64 " is not in %s",
                          a->host_no, a->channel, a->target_id, a->lun, root);
    snprintf(path, sizeof(path), "%s/block", dev);
    dir = opendir(path);
    if (!dir)
        return hv_err_set(err, -ENOENT, "SCSI device %u:%u:%u:%" PRIu64 " has no block device "
                          "(%s: %s)", a->host_no, a->channel, a->target_id, a->lun, path,
                          strerror(errno));
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.')
            continue;
        if (strlen(de->d_name) >= cap)
            continue;
        snprintf(name, cap, "%s", de->d_name);
        ret = 0;
        break;
    }
    closedir(dir);
    if (ret < 0)
        return hv_err_set(err, ret, "SCSI device %u:%u:%u:%" PRIu64 " has no block device yet",
                          a->host_no, a->channel, a->target_id, a->lun);
    return 0;
}

int npiv_lun_vpd83(const char *root, const struct npiv_lun_addr *a, uint8_t *buf, size_t cap,
                   size_t *len, struct hv_err *err)
{
    char dev[PATH_CAP], path[PATH_CAP + 16];
    ssize_t n;
    int fd;

    if (scsi_device_dir(root, a, dev) < 0)
        return hv_err_set(err, -ENOENT, "SCSI device %u:%u:%u:%" PRIu64 " is not in %s",
                          a->host_no, a->channel, a->target_id, a->lun, root);
    snprintf(path, sizeof(path), "%s/vpd_pg83", dev);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_set(err, -ENOENT, "%s: %s (the kernel has no VPD page 0x83 of this LUN)",
                          path, strerror(errno));
    n = read(fd, buf, cap);
    close(fd);
    if (n < 4)
        return hv_err_set(err, -ENOENT, "%s: %s", path, n < 0 ? strerror(errno) : "too short");
    *len = (size_t)n;
    return 0;
}
