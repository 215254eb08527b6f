/*
 * The mount table: which filesystems a freeze covers and in which order.
 *
 * Order matters because freezing is not free of dependencies: a filesystem
 * mounted inside another (say /var/lib/db on /) may have to write to its
 * parent while it syncs on FIFREEZE (its image file, or simply the path
 * lookups of the sync), so children freeze before parents and parents thaw
 * before children. A mount point's path depth is a sufficient order: a mount
 * nested in another always has a longer mount point.
 *
 * What is never frozen: read-only mounts (nothing to flush, and FIFREEZE
 * fails), pseudo filesystems (no block device behind them), network
 * filesystems (their consistency is the server's business, and a frozen
 * NFS client can hang the guest), mounts hidden under a later mount (their
 * path leads to the other filesystem) and second mounts of a superblock
 * (bind mounts): FIFREEZE freezes a superblock, and a second call on the
 * same one fails with EBUSY.
 */
#include "vss-agent.h"

#include <errno.h>
#include <stdlib.h>

static const char *const pseudo_types[] = {
    "autofs",   "binfmt_misc", "bpf",       "cgroup",   "cgroup2",  "configfs", "debugfs",
    "devpts",   "devtmpfs",    "efivarfs",  "fusectl",  "hugetlbfs", "mqueue",  "nsfs",
    "overlay",  "proc",        "pstore",    "ramfs",    "rootfs",   "rpc_pipefs", "securityfs",
    "selinuxfs", "squashfs",   "sysfs",     "tmpfs",    "tracefs",  "iso9660",  "nfsd",
    "aufs",     "fuse",        "fuseblk",   "zram",     "binder",   "erofs",    "ecryptfs",
    "virtiofs", "9p",
};

static const char *const network_types[] = {
    "nfs",  "nfs4",    "cifs",   "smb3", "smbfs", "ceph",   "glusterfs", "afs",
    "ncpfs", "lustre", "gfs2",   "ocfs2", "gpfs", "beegfs", "orangefs",
};

static bool in_list(const char *const *list, size_t n, const char *type)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], type) == 0)
            return true;
    return false;
}

bool vss_fs_type_is_pseudo(const char *type)
{
    /* Every FUSE filesystem ("fuse.sshfs", "fuse.gvfsd-fuse") lacks freeze support. */
    return in_list(pseudo_types, HV_ARRAY_SIZE(pseudo_types), type) ||
           strncmp(type, "fuse.", 5) == 0;
}

bool vss_fs_type_is_network(const char *type)
{
    return in_list(network_types, HV_ARRAY_SIZE(network_types), type) ||
           strncmp(type, "nfs", 3) == 0;
}

/* Undo mountinfo's octal escapes (\040 space, \011 tab, \012 newline, \134 backslash). */
static char *unescape(const char *s, size_t len)
{
    char *out = malloc(len + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\\' && i + 3 < len && s[i + 1] >= '0' && s[i + 1] <= '3' &&
            s[i + 2] >= '0' && s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
            *o++ = (char)((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
            i += 3;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

/* Split a line at spaces; returns the number of fields (at most `max`). */
static size_t split(const char *line, size_t len, const char **starts, size_t *lens, size_t max)
{
    size_t n = 0, i = 0;
    while (i < len && n < max) {
        while (i < len && line[i] == ' ')
            i++;
        if (i >= len)
            break;
        size_t b = i;
        while (i < len && line[i] != ' ')
            i++;
        starts[n] = line + b;
        lens[n++] = i - b;
    }
    return n;
}

static bool has_option(const char *opts, size_t len, const char *want)
{
    size_t wl = strlen(want), i = 0;
    while (i < len) {
        size_t b = i;
        while (i < len && opts[i] != ',')
            i++;
        if (i - b == wl && memcmp(opts + b, want, wl) == 0)
            return true;
        i++;
    }
    return false;
}

static int parse_int(const char *s, size_t len, long long max, long long *out)
{
    long long v = 0;
    if (len == 0 || len > 18)
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static void mount_free(struct vss_mount *m)
{
    free(m->root);
    free(m->mount_point);
    free(m->type);
    free(m->source);
}

void vss_mounts_free(struct vss_mount_table *t)
{
    for (size_t i = 0; i < t->count; i++)
        mount_free(&t->mounts[i]);
    free(t->mounts);
    t->mounts = NULL;
    t->count = 0;
}

static int parse_line(const char *line, size_t len, struct vss_mount *m)
{
    const char *f[64];
    size_t fl[64], n = split(line, len, f, fl, HV_ARRAY_SIZE(f)), sep;
    long long v, major, minor;

    memset(m, 0, sizeof(*m));
    /* 6 fixed fields, optional fields, "-", type, source, super options */
    for (sep = 6; sep < n; sep++)
        if (fl[sep] == 1 && f[sep][0] == '-')
            break;
    if (sep + 2 >= n)
        return -EINVAL;
    if (parse_int(f[0], fl[0], INT32_MAX, &v) < 0)
        return -EINVAL;
    m->mount_id = (int)v;
    if (parse_int(f[1], fl[1], INT32_MAX, &v) < 0)
        return -EINVAL;
    m->parent_id = (int)v;
    const char *colon = memchr(f[2], ':', fl[2]);
    if (!colon || parse_int(f[2], (size_t)(colon - f[2]), 0xFFFFFFF, &major) < 0 ||
        parse_int(colon + 1, fl[2] - (size_t)(colon - f[2]) - 1, 0xFFFFFFF, &minor) < 0)
        return -EINVAL;
    m->major = (unsigned)major;
    m->minor = (unsigned)minor;
    if (f[4][0] != '/')
        return -EINVAL;
    m->root = unescape(f[3], fl[3]);
    m->mount_point = unescape(f[4], fl[4]);
    m->type = unescape(f[sep + 1], fl[sep + 1]);
    m->source = unescape(f[sep + 2], fl[sep + 2]);
    if (!m->root || !m->mount_point || !m->type || !m->source) {
        mount_free(m);
        return -ENOMEM;
    }
    m->is_read_only = has_option(f[5], fl[5], "ro") ||
                      (sep + 3 < n && has_option(f[sep + 3], fl[sep + 3], "ro"));
    return 0;
}

/* `path` equals `dir` or lies beneath it. */
static bool path_is_within(const char *path, const char *dir)
{
    size_t dl = strlen(dir);
    if (strcmp(dir, "/") == 0)
        return true;
    return strncmp(path, dir, dl) == 0 && (path[dl] == '\0' || path[dl] == '/');
}

static bool is_ancestor(const struct vss_mount_table *t, size_t child, size_t maybe_parent)
{
    int id = t->mounts[child].parent_id;
    for (size_t hops = 0; hops < t->count; hops++) {
        size_t j;
        for (j = 0; j < t->count; j++)
            if (t->mounts[j].mount_id == id)
                break;
        if (j == t->count || j == child)
            return false;
        if (j == maybe_parent)
            return true;
        if (t->mounts[j].parent_id == id)
            return false;                       /* the namespace root points at itself */
        id = t->mounts[j].parent_id;
    }
    return false;
}

/*
 * A mount is hidden when a later mount covers its mount point or a
 * directory above it without being one of its own parents: a path lookup
 * then lands in the later filesystem.
 */
static void mark_hidden(struct vss_mount_table *t)
{
    for (size_t i = 0; i < t->count; i++)
        for (size_t j = i + 1; j < t->count; j++)
            if (path_is_within(t->mounts[i].mount_point, t->mounts[j].mount_point) &&
                !is_ancestor(t, i, j)) {
                t->mounts[i].is_hidden = true;
                break;
            }
}

int vss_mounts_parse(const char *text, size_t len, const char *what,
                     struct vss_mount_table *table, struct hv_err *err)
{
    size_t pos = 0, line_no = 0;
    memset(table, 0, sizeof(*table));
    while (pos < len) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - line) : len - pos;
        pos += ll + (nl ? 1 : 0);
        line_no++;
        if (ll == 0)
            continue;
        struct vss_mount *grown = realloc(table->mounts, (table->count + 1) * sizeof(*grown));
        if (!grown) {
            vss_mounts_free(table);
            return hv_err_set(err, -ENOMEM, "%s: out of memory", what);
        }
        table->mounts = grown;
        int ret = parse_line(line, ll, &grown[table->count]);
        if (ret < 0) {
            vss_mounts_free(table);
            if (ret == -ENOMEM)
                return hv_err_set(err, ret, "%s: out of memory", what);
            return hv_err_set(err, -EINVAL, "%s: line %zu is not a mountinfo entry: %.80s",
                              what, line_no, line);
        }
        table->count++;
    }
    mark_hidden(table);
    return 0;
}

int vss_mounts_read(const char *path, struct vss_mount_table *table, struct hv_err *err)
{
    /* /proc files report size 0: read until EOF into a growing buffer. */
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int ret;
    if (!f)
        return hv_err_errno(err, path, "open");
    for (;;) {
        if (len == cap) {
            char *grown = cap < 64 * HV_MiB ? realloc(buf, cap ? cap * 2 : 16384) : NULL;
            if (!grown) {
                free(buf);
                fclose(f);
                return hv_err_set(err, -ENOMEM, "%s: too large or out of memory", path);
            }
            buf = grown;
            cap = cap ? cap * 2 : 16384;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        free(buf);
        fclose(f);
        return hv_err_set(err, -EIO, "%s: read error", path);
    }
    fclose(f);
    ret = vss_mounts_parse(buf, len, path, table, err);
    free(buf);
    return ret;
}

static int depth(const char *path)
{
    int d = 0;
    if (strcmp(path, "/") == 0)
        return 0;
    for (const char *p = path; *p; p++)
        if (*p == '/')
            d++;
    return d;
}

static const char *why_ineligible(const struct vss_mount *m)
{
    if (vss_fs_type_is_pseudo(m->type))
        return "a pseudo filesystem";
    if (vss_fs_type_is_network(m->type))
        return "a network filesystem";
    if (m->is_read_only)
        return "mounted read-only";
    if (m->is_hidden)
        return "hidden under a later mount";
    return NULL;
}

static const struct vss_mount_table *sort_table;
static int by_freeze_order(const void *a, const void *b)
{
    size_t ia = *(const size_t *)a, ib = *(const size_t *)b;
    int da = depth(sort_table->mounts[ia].mount_point);
    int db = depth(sort_table->mounts[ib].mount_point);
    if (da != db)
        return db - da;                         /* deeper (children) first */
    return ia < ib ? 1 : ia > ib ? -1 : 0;      /* then the later mount first */
}

int vss_mounts_select(const struct vss_mount_table *t, const char *const *only,
                      size_t only_count, size_t *order, size_t *order_count,
                      struct hv_err *err)
{
    size_t n = 0;
    *order_count = 0;
    if (only_count) {
        for (size_t k = 0; k < only_count; k++) {
            size_t found = t->count;
            for (size_t i = 0; i < t->count; i++)
                if (strcmp(t->mounts[i].mount_point, only[k]) == 0 && !t->mounts[i].is_hidden)
                    found = i;
            if (found == t->count)
                return hv_err_set(err, -ENOENT, "%s: not a mount point (refusing to freeze "
                                  "the filesystem that contains it)", only[k]);
            const char *why = why_ineligible(&t->mounts[found]);
            if (why)
                return hv_err_set(err, -EINVAL, "%s: %s filesystem %s cannot be frozen",
                                  only[k], t->mounts[found].type, why);
            bool is_duplicate = false;
            for (size_t j = 0; j < n; j++)
                if (t->mounts[order[j]].major == t->mounts[found].major &&
                    t->mounts[order[j]].minor == t->mounts[found].minor)
                    is_duplicate = true;
            if (!is_duplicate)
                order[n++] = found;
        }
    } else {
        for (size_t i = 0; i < t->count; i++) {
            const struct vss_mount *m = &t->mounts[i];
            if (why_ineligible(m))
                continue;
            /* One mount per superblock; prefer one that shows the whole
             * filesystem (root "/") over a bind of a subdirectory. */
            size_t dup = n;
            for (size_t j = 0; j < n; j++)
                if (t->mounts[order[j]].major == m->major && t->mounts[order[j]].minor == m->minor)
                    dup = j;
            if (dup == n)
                order[n++] = i;
            else if (strcmp(t->mounts[order[dup]].root, "/") != 0 && strcmp(m->root, "/") == 0)
                order[dup] = i;
        }
    }
    sort_table = t;
    qsort(order, n, sizeof(*order), by_freeze_order);
    sort_table = NULL;
    *order_count = n;
    return 0;
}

/* `child` lies strictly beneath `parent` (path-wise). */
static bool is_nested(const char *child, const char *parent)
{
    return strcmp(child, parent) != 0 && path_is_within(child, parent);
}

/*
 * Kahn's algorithm over "must freeze before" edges (nesting and the given
 * dependencies), always taking the earliest ready entry of the incoming
 * order so that the depth order survives where nothing forbids it. Counts
 * are small (the filesystems of one guest), so O(n^2) edges are fine.
 */
int vss_mounts_order_deps(const struct vss_mount_table *t, size_t *order, size_t count,
                          const struct vss_mount_dep *deps, size_t dep_count)
{
    bool *done = calloc(count + 1, sizeof(bool));
    size_t *out = calloc(count + 1, sizeof(size_t)), n = 0;
    int ret = 0;
    if (!done || !out) {
        ret = -ENOMEM;
        goto out;
    }
    while (n < count) {
        size_t pick = count;
        for (size_t p = 0; p < count && pick == count; p++) {
            if (done[p])
                continue;
            bool is_ready = true;
            /* everything that must precede order[p] is already placed */
            for (size_t q = 0; q < count && is_ready; q++) {
                if (q == p || done[q])
                    continue;
                const char *mp = t->mounts[order[p]].mount_point;
                const char *mq = t->mounts[order[q]].mount_point;
                if (is_nested(mq, mp))
                    is_ready = false;
                for (size_t d = 0; d < dep_count && is_ready; d++)
                    if (deps[d].first == order[q] && deps[d].then == order[p])
                        is_ready = false;
            }
            if (is_ready)
                pick = p;
        }
        if (pick == count) {
            ret = -ELOOP;
            goto out;
        }
        done[pick] = true;
        out[n++] = order[pick];
    }
    memcpy(order, out, count * sizeof(*order));
out:
    free(done);
    free(out);
    return ret;
}
