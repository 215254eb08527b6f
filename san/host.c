/*
 * What the host's own open-iscsi initiator uses: its initiator name, its node
 * records and the sessions the kernel has, with the LUNs below them. A LUN
 * the host itself is logged in to must never be handed to a VM.
 *
 * All paths hang off a root ("/" in production) so tests can build the tree.
 * Layouts handled: nodes/<target>/<portal,tpgt>/<iface> files (open-iscsi
 * 2.x) and nodes/<target>/<portal,tpgt> files (older releases). Secrets in
 * node records (node.session.auth.password...) are never read into memory
 * beyond the line being parsed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "san.h"
#include "san_internal.h"

#define HOST_FILE_MAX (256 * 1024)

/* Whole small file into a NUL-terminated buffer; -ENOENT when absent. */
static int read_small_file(const char *path, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= HOST_FILE_MAX) {
                free(buf);
                close(fd);
                return -EFBIG;
            }
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                close(fd);
                return -ENOMEM;
            }
            buf = nb;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            int e = -errno;
            free(buf);
            close(fd);
            return e;
        }
        if (r == 0) {
            break;
        }
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') {
        s++;
    }
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' ||
                     s[n - 1] == '\n')) {
        s[--n] = '\0';
    }
    return s;
}

/* Iterate lines of text[0..len) into a bounded scratch buffer. */
static bool next_line(const char *text, size_t len, size_t *pos, char *line, size_t cap,
                      size_t *lineno)
{
    if (*pos >= len) {
        return false;
    }
    size_t start = *pos, end = start;
    while (end < len && text[end] != '\n') {
        end++;
    }
    size_t n = HV_MIN(end - start, cap - 1);
    memcpy(line, text + start, n);
    line[n] = '\0';
    /* a NUL inside the line ends it: the file is text, anything else is cut */
    *pos = end < len ? end + 1 : end;
    (*lineno)++;
    return true;
}

int san_parse_initiator_name(const char *text, size_t len, char out[SAN_NAME_MAX])
{
    char line[1024];
    size_t pos = 0, lineno = 0;
    while (next_line(text, len, &pos, line, sizeof(line), &lineno)) {
        char *l = trim(line);
        if (*l == '#' || strncmp(l, "InitiatorName=", 14) != 0) {
            continue;
        }
        char *v = trim(l + 14);
        if (!*v || strlen(v) >= SAN_NAME_MAX) {
            return -EINVAL;
        }
        snprintf(out, SAN_NAME_MAX, "%s", v);
        return 0;
    }
    return -ENOENT;
}

int san_parse_node_record(const char *text, size_t len, const char *path,
                          struct san_host_node *out, struct hv_err *err)
{
    char line[2048];
    size_t pos = 0, lineno = 0;
    memset(out, 0, sizeof(*out));
    out->tpgt = -1;
    while (next_line(text, len, &pos, line, sizeof(line), &lineno)) {
        char *l = trim(line);
        if (!*l || *l == '#') {
            continue;
        }
        char *eq = strchr(l, '=');
        if (!eq) {
            return hv_err_set(err, -EINVAL, "%s: line %zu: expected \"key = value\"", path,
                              lineno);
        }
        *eq = '\0';
        char *key = trim(l);
        char *val = trim(eq + 1);
        if (!*key) {
            return hv_err_set(err, -EINVAL, "%s: line %zu: empty key", path, lineno);
        }
        if (strcmp(key, "node.name") == 0) {
            if (strlen(val) >= SAN_NAME_MAX) {
                return hv_err_set(err, -EINVAL, "%s: line %zu: node.name longer than %d bytes",
                                  path, lineno, SAN_NAME_MAX - 1);
            }
            snprintf(out->target, sizeof(out->target), "%s", val);
        } else if (strcmp(key, "node.conn[0].address") == 0) {
            if (strlen(val) >= SAN_PORTAL_MAX) {
                return hv_err_set(err, -EINVAL, "%s: line %zu: address too long", path,
                                  lineno);
            }
            snprintf(out->address, sizeof(out->address), "%s", val);
        } else if (strcmp(key, "node.conn[0].port") == 0) {
            uint64_t port;
            if (hv_parse_u64(val, &port) < 0 || port == 0 || port > 65535) {
                return hv_err_set(err, -EINVAL, "%s: line %zu: bad port \"%s\"", path, lineno,
                                  val);
            }
            out->port = (uint16_t)port;
        } else if (strcmp(key, "node.tpgt") == 0) {
            uint64_t tpgt;
            if (hv_parse_u64(val, &tpgt) < 0 || tpgt > 65535) {
                return hv_err_set(err, -EINVAL, "%s: line %zu: bad tpgt \"%s\"", path, lineno,
                                  val);
            }
            out->tpgt = (int)tpgt;
        } else if (strcmp(key, "node.startup") == 0) {
            snprintf(out->startup, sizeof(out->startup), "%s", val);
        }
    }
    if (!out->target[0]) {
        return hv_err_set(err, -EINVAL, "%s: node record without node.name", path);
    }
    return 0;
}

static int push(void **array, size_t *count, size_t elem)
{
    void *n = realloc(*array, (*count + 1) * elem);
    if (!n) {
        return -ENOMEM;
    }
    memset((char *)n + *count * elem, 0, elem);
    *array = n;
    (*count)++;
    return 0;
}

static int read_node_file(struct san_host_config *cfg, const char *path, struct hv_err *err)
{
    char *text;
    size_t len;
    int ret = read_small_file(path, &text, &len);
    if (ret < 0) {
        return hv_err_set(err, ret, "%s: %s", path, strerror(-ret));
    }
    struct san_host_node node;
    ret = san_parse_node_record(text, len, path, &node, err);
    free(text);
    if (ret < 0) {
        return ret;
    }
    if ((ret = push((void **)&cfg->nodes, &cfg->node_count, sizeof(node))) < 0) {
        return ret;
    }
    cfg->nodes[cfg->node_count - 1] = node;
    return 0;
}

static int read_nodes(struct san_host_config *cfg, const char *root, struct hv_err *err)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/etc/iscsi/nodes", root);
    DIR *targets = opendir(dir);
    if (!targets) {
        return errno == ENOENT ? 0 : hv_err_errno(err, dir, "opendir");
    }
    int ret = 0;
    struct dirent *t;
    while (ret == 0 && (t = readdir(targets))) {
        if (t->d_name[0] == '.') {
            continue;
        }
        char tdir[4096];
        snprintf(tdir, sizeof(tdir), "%s/%s", dir, t->d_name);
        DIR *portals = opendir(tdir);
        if (!portals) {
            continue;
        }
        struct dirent *p;
        while (ret == 0 && (p = readdir(portals))) {
            if (p->d_name[0] == '.') {
                continue;
            }
            char ppath[4096];
            struct stat st;
            snprintf(ppath, sizeof(ppath), "%s/%s", tdir, p->d_name);
            if (stat(ppath, &st) < 0) {
                continue;
            }
            if (S_ISREG(st.st_mode)) {
                ret = read_node_file(cfg, ppath, err);
                continue;
            }
            if (!S_ISDIR(st.st_mode)) {
                continue;
            }
            DIR *ifaces = opendir(ppath);
            if (!ifaces) {
                continue;
            }
            struct dirent *f;
            while (ret == 0 && (f = readdir(ifaces))) {
                char fpath[4096];
                if (f->d_name[0] == '.') {
                    continue;
                }
                snprintf(fpath, sizeof(fpath), "%s/%s", ppath, f->d_name);
                if (stat(fpath, &st) == 0 && S_ISREG(st.st_mode)) {
                    ret = read_node_file(cfg, fpath, err);
                }
            }
            closedir(ifaces);
        }
        closedir(portals);
    }
    closedir(targets);
    return ret;
}

/* First line of a sysfs attribute, trimmed; "" when absent. */
static void read_attr(const char *path, char *out, size_t cap)
{
    char *text;
    size_t len;
    out[0] = '\0';
    if (read_small_file(path, &text, &len) < 0) {
        return;
    }
    char *nl = strchr(text, '\n');
    if (nl) {
        *nl = '\0';
    }
    snprintf(out, cap, "%s", trim(text));
    free(text);
}

/* "H:C:T:L" directory name → LUN; false for anything else. */
static bool parse_hctl(const char *name, uint64_t *lun)
{
    unsigned h, c, t;
    uint64_t l;
    char tail;
    if (sscanf(name, "%u:%u:%u:%" SCNu64 "%c", &h, &c, &t, &l, &tail) != 4) {
        return false;
    }
    *lun = l;
    return true;
}

static int read_session_luns(struct san_host_session *hs, const char *devdir)
{
    DIR *d = opendir(devdir);
    if (!d) {
        return 0;
    }
    struct dirent *e;
    int ret = 0;
    while (ret == 0 && (e = readdir(d))) {
        if (strncmp(e->d_name, "target", 6) != 0) {
            continue;
        }
        char tdir[4096];
        snprintf(tdir, sizeof(tdir), "%s/%s", devdir, e->d_name);
        DIR *td = opendir(tdir);
        if (!td) {
            continue;
        }
        struct dirent *l;
        while (ret == 0 && (l = readdir(td))) {
            uint64_t lun;
            if (!parse_hctl(l->d_name, &lun)) {
                continue;
            }
            if ((ret = push((void **)&hs->luns, &hs->lun_count, sizeof(*hs->luns))) < 0) {
                break;
            }
            struct san_host_lun *hl = &hs->luns[hs->lun_count - 1];
            hl->lun = lun;
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s/block", tdir, l->d_name);
            DIR *bd = opendir(path);
            if (bd) {
                struct dirent *b;
                while ((b = readdir(bd))) {
                    if (b->d_name[0] != '.') {
                        snprintf(hl->device, sizeof(hl->device), "%s", b->d_name);
                        break;
                    }
                }
                closedir(bd);
            }
            snprintf(path, sizeof(path), "%s/%s/vpd_pg83", tdir, l->d_name);
            char *vpd;
            size_t vlen;
            if (read_small_file(path, &vpd, &vlen) == 0) {
                san_vpd83_designator((const uint8_t *)vpd, vlen, hl->designator);
                free(vpd);
            }
        }
        closedir(td);
    }
    closedir(d);
    return ret;
}

static int read_sessions(struct san_host_config *cfg, const char *root, struct hv_err *err)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/sys/class/iscsi_session", root);
    DIR *d = opendir(dir);
    if (!d) {
        return errno == ENOENT ? 0 : hv_err_errno(err, dir, "opendir");
    }
    int ret = 0;
    struct dirent *e;
    while (ret == 0 && (e = readdir(d))) {
        unsigned sid;
        char tail;
        if (sscanf(e->d_name, "session%u%c", &sid, &tail) != 1) {
            continue;
        }
        if ((ret = push((void **)&cfg->sessions, &cfg->session_count,
                        sizeof(*cfg->sessions))) < 0) {
            break;
        }
        struct san_host_session *hs = &cfg->sessions[cfg->session_count - 1];
        hs->sid = sid;
        char path[4096], port[16];
        snprintf(path, sizeof(path), "%s/%s/targetname", dir, e->d_name);
        read_attr(path, hs->target, sizeof(hs->target));
        /* the connection of session N is connectionN:0 */
        snprintf(path, sizeof(path), "%s/sys/class/iscsi_connection/connection%u:0/"
                 "persistent_address", root, sid);
        read_attr(path, hs->address, sizeof(hs->address));
        if (!hs->address[0]) {
            snprintf(path, sizeof(path), "%s/sys/class/iscsi_connection/connection%u:0/"
                     "address", root, sid);
            read_attr(path, hs->address, sizeof(hs->address));
        }
        snprintf(path, sizeof(path), "%s/sys/class/iscsi_connection/connection%u:0/"
                 "persistent_port", root, sid);
        read_attr(path, port, sizeof(port));
        if (!port[0]) {
            snprintf(path, sizeof(path), "%s/sys/class/iscsi_connection/connection%u:0/port",
                     root, sid);
            read_attr(path, port, sizeof(port));
        }
        uint64_t p;
        if (port[0] && hv_parse_u64(port, &p) == 0 && p <= 65535) {
            hs->port = (uint16_t)p;
        }
        snprintf(path, sizeof(path), "%s/%s/device", dir, e->d_name);
        ret = read_session_luns(hs, path);
    }
    closedir(d);
    return ret;
}

void san_host_config_free(struct san_host_config *cfg)
{
    if (!cfg) {
        return;
    }
    for (size_t i = 0; i < cfg->session_count; i++) {
        free(cfg->sessions[i].luns);
    }
    free(cfg->sessions);
    free(cfg->nodes);
    free(cfg);
}

int san_host_config_read(const char *root, struct san_host_config **out, struct hv_err *err)
{
    struct san_host_config *cfg = calloc(1, sizeof(*cfg));
    if (!cfg) {
        return -ENOMEM;
    }
    if (!root || !root[0]) {
        root = "/";
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/etc/iscsi/initiatorname.iscsi", root);
    char *text;
    size_t len;
    int ret = read_small_file(path, &text, &len);
    if (ret == 0) {
        ret = san_parse_initiator_name(text, len, cfg->initiator_name);
        free(text);
        if (ret == -EINVAL) {
            hv_err_set(err, ret, "%s: InitiatorName is empty or longer than %d bytes", path,
                       SAN_NAME_MAX - 1);
            goto fail;
        }
    } else if (ret != -ENOENT) {
        hv_err_set(err, ret, "%s: %s", path, strerror(-ret));
        goto fail;
    }
    if ((ret = read_nodes(cfg, root, err)) < 0 || (ret = read_sessions(cfg, root, err)) < 0) {
        goto fail;
    }
    *out = cfg;
    return 0;
fail:
    san_host_config_free(cfg);
    return ret;
}

bool san_host_uses_lun(const struct san_host_config *cfg, const char *target, uint64_t lun,
                       const char *designator, const struct san_host_session **who)
{
    for (size_t i = 0; i < cfg->session_count; i++) {
        const struct san_host_session *hs = &cfg->sessions[i];
        for (size_t j = 0; j < hs->lun_count; j++) {
            const struct san_host_lun *hl = &hs->luns[j];
            bool is_same;
            if (designator && designator[0] && hl->designator[0]) {
                is_same = strcmp(designator, hl->designator) == 0;
            } else {
                is_same = target && strcmp(hs->target, target) == 0 && hl->lun == lun;
            }
            if (is_same) {
                if (who) {
                    *who = hs;
                }
                return true;
            }
        }
    }
    return false;
}
