/*
 * A fake Fibre Channel world under a directory, shaped like the kernel's
 * sysfs for the FC transport, for the npiv tests only.
 *
 * Writing "WWPN:WWNN" to a plain file named vport_create does nothing by
 * itself, so an agent thread plays the kernel: every millisecond it reads each
 * HBA's vport_create and vport_delete, parses what was written the way
 * fc_parse_wwn does (exactly 16 hex, ':', 16 hex, optional newline), logs it,
 * empties the file and builds (or removes) the vport: class/fc_vports/
 * vport-H:0-N, the vport's own class/fc_host/hostK with port_type "NPIV VPORT"
 * and port_state "Linkdown", and the parent's npiv_vports_inuse. After
 * `online_delay_ms` (never when -1) the vport goes Online and the fabric
 * "logs in": each target zoned to the vport's WWPN appears as class/
 * fc_remote_ports/rport-K:0-i (roles "FCP Target"), and each LUN masked to the
 * WWPN as class/scsi_device/K:0:i:L (with device/block/NAME and device/vpd_pg83
 * when the mask names a disk, fake_mask_disk). The kernel's own refusals are mimicked
 * too: a malformed string or a full HBA is logged as refused and changes
 * nothing.
 */
#ifndef NPIV_FAKE_FC_H
#define NPIV_FAKE_FC_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FAKE_MAX 16

struct fake_hba {
    unsigned host_no;
    uint64_t wwpn, wwnn, fabric;
    char port_type[64];
    unsigned max_vports;
    unsigned in_use;
    bool has_vport_create;
    unsigned next_vport;
};

struct fake_target {
    uint64_t wwpn, wwnn;
    uint64_t zoned[FAKE_MAX];           /* initiator WWPNs in a zone with it */
    size_t n_zoned;
    struct {
        uint64_t initiator, lun;
        char block[32];                 /* "" or the block device it shows as */
        uint8_t naa[16];                /* its NAA-6 designator (VPD 0x83) */
        char vpd83_from[256];           /* or "": a real device's page, copied */
    } masks[FAKE_MAX];
    size_t n_masks;
};

struct fake_vport {
    bool is_used, is_online;
    size_t hba;
    unsigned number, host_no;
    uint64_t wwpn, wwnn;
    uint64_t created_ms;
};

struct fake_fc {
    char root[512];
    struct fake_hba hbas[4];
    size_t n_hbas;
    struct fake_target targets[4];
    size_t n_targets;
    int online_delay_ms;                /* -1: the vport never comes Online */
    const char *stuck_vport_state;      /* vport_state while not Online */
    struct fake_vport vports[FAKE_MAX];
    unsigned next_host_no;
    char log[64][96];                   /* "host5 vport_create <text>" */
    size_t n_log;
    pthread_mutex_t lock;
    pthread_t thread;
    atomic_bool stop;
};

static uint64_t fake_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void fake_mkdirs(const char *path)
{
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(tmp, 0755);
            *p = '/';
        }
    }
    mkdir(tmp, 0755);
}

__attribute__((format(printf, 3, 4)))
static void fake_write(const char *dir, const char *attr, const char *fmt, ...)
{
    char path[1024];
    va_list ap;
    snprintf(path, sizeof(path), "%s/%s", dir, attr);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "fake_fc: %s: %s\n", path, strerror(errno));
        abort();
    }
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

static int fake_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)flag; (void)ftw;
    return remove(path);
}

static void fake_rmtree(const char *path)
{
    nftw(path, fake_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void fake_hba_dir(const struct fake_fc *f, unsigned host_no, char *out, size_t cap)
{
    snprintf(out, cap, "%s/class/fc_host/host%u", f->root, host_no);
}

static void fake_init(struct fake_fc *f, const char *root)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->root, sizeof(f->root), "%s", root);
    f->online_delay_ms = 10;
    f->stuck_vport_state = "Initializing";
    f->next_host_no = 20;
    pthread_mutex_init(&f->lock, NULL);
}

static struct fake_hba *fake_add_hba(struct fake_fc *f, unsigned host_no, const char *port_type,
                                     unsigned max_vports, unsigned in_use)
{
    struct fake_hba *h = &f->hbas[f->n_hbas++];
    h->host_no = host_no;
    h->wwpn = 0x21000024ff000000ull | host_no;
    h->wwnn = 0x20000024ff000000ull | host_no;
    h->fabric = 0x100000051e000001ull;
    snprintf(h->port_type, sizeof(h->port_type), "%s", port_type);
    h->max_vports = max_vports;
    h->in_use = in_use;
    h->has_vport_create = true;
    return h;
}

static struct fake_target *fake_add_target(struct fake_fc *f, uint64_t wwpn)
{
    struct fake_target *t = &f->targets[f->n_targets++];
    t->wwpn = wwpn;
    t->wwnn = wwpn ^ 0x0100000000000000ull;
    return t;
}

static void fake_zone(struct fake_target *t, uint64_t initiator)
{
    t->zoned[t->n_zoned++] = initiator;
}

static void fake_mask(struct fake_target *t, uint64_t initiator, uint64_t lun)
{
    t->masks[t->n_masks].initiator = initiator;
    t->masks[t->n_masks++].lun = lun;
}

/* A masked LUN that the vport sees as block device `block`, with the NAA
 * designator given as 32 hex digits (the same LUN seen through two vports
 * shows the same designator under two names, as on a real host). */
static void fake_mask_disk(struct fake_target *t, uint64_t initiator, uint64_t lun,
                           const char *block, const char *naa_hex)
{
    size_t m = t->n_masks;
    fake_mask(t, initiator, lun);
    snprintf(t->masks[m].block, sizeof(t->masks[m].block), "%s", block);
    for (int i = 0; i < 16 && naa_hex[2 * i] && naa_hex[2 * i + 1]; i++) {
        unsigned v;
        sscanf(naa_hex + 2 * i, "%2x", &v);
        t->masks[m].naa[i] = (uint8_t)v;
    }
}

/* A masked LUN whose block device is a real disk of this host (a guest's
 * scsi_debug sd): its VPD page 0x83 is that disk's own, copied from
 * `vpd83_path` (its sysfs vpd_pg83), as the kernel would show it. */
static inline void fake_mask_real_disk(struct fake_target *t, uint64_t initiator, uint64_t lun,
                                       const char *block, const char *vpd83_path)
{
    size_t m = t->n_masks;
    fake_mask(t, initiator, lun);
    snprintf(t->masks[m].block, sizeof(t->masks[m].block), "%s", block);
    snprintf(t->masks[m].vpd83_from, sizeof(t->masks[m].vpd83_from), "%s", vpd83_path);
}

static void fake_copy_vpd83(const char *dir, const char *from)
{
    uint8_t page[4096];
    char path[1100];
    FILE *in = fopen(from, "rb");
    size_t n;

    if (!in) {
        fprintf(stderr, "fake_fc: %s: %s\n", from, strerror(errno));
        abort();
    }
    n = fread(page, 1, sizeof(page), in);
    fclose(in);
    snprintf(path, sizeof(path), "%s/vpd_pg83", dir);
    FILE *f = fopen(path, "w");
    if (!f || fwrite(page, 1, n, f) != n)
        abort();
    fclose(f);
}

static void fake_write_vpd83(const char *dir, const uint8_t naa[16])
{
    uint8_t page[4 + 4 + 16] = { 0x00, 0x83, 0x00, 20, 0x01, 0x03, 0x00, 16 };
    char path[1100];
    memcpy(page + 8, naa, 16);
    snprintf(path, sizeof(path), "%s/vpd_pg83", dir);
    FILE *f = fopen(path, "w");
    if (!f || fwrite(page, 1, sizeof(page), f) != sizeof(page))
        abort();
    fclose(f);
}

static void fake_write_counters(struct fake_fc *f, const struct fake_hba *h)
{
    char dir[1024];
    fake_hba_dir(f, h->host_no, dir, sizeof(dir));
    fake_write(dir, "npiv_vports_inuse", "%u\n", h->in_use);
}

static void fake_build_tree(struct fake_fc *f)
{
    char dir[1024];
    static const char *classes[] = { "fc_host", "fc_vports", "fc_remote_ports", "scsi_device",
                                     "scsi_host" };
    for (size_t i = 0; i < sizeof(classes) / sizeof(classes[0]); i++) {
        snprintf(dir, sizeof(dir), "%s/class/%s", f->root, classes[i]);
        fake_mkdirs(dir);
    }
    for (size_t i = 0; i < f->n_hbas; i++) {
        struct fake_hba *h = &f->hbas[i];
        fake_hba_dir(f, h->host_no, dir, sizeof(dir));
        fake_mkdirs(dir);
        fake_write(dir, "port_name", "0x%" PRIx64 "\n", h->wwpn);
        fake_write(dir, "node_name", "0x%" PRIx64 "\n", h->wwnn);
        fake_write(dir, "fabric_name", "0x%" PRIx64 "\n", h->fabric);
        fake_write(dir, "port_type", "%s\n", h->port_type);
        fake_write(dir, "port_state", "Online\n");
        if (h->has_vport_create) {
            fake_write(dir, "max_npiv_vports", "%u\n", h->max_vports);
            fake_write(dir, "vport_create", "%s", "");
            fake_write(dir, "vport_delete", "%s", "");
            fake_write_counters(f, h);
        }
    }
}

__attribute__((format(printf, 2, 3)))
static void fake_log(struct fake_fc *f, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&f->lock);
    if (f->n_log < sizeof(f->log) / sizeof(f->log[0])) {
        va_start(ap, fmt);
        vsnprintf(f->log[f->n_log++], sizeof(f->log[0]), fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&f->lock);
}

/* The kernel's fc_parse_wwn pair: "<16 hex>:<16 hex>" plus an optional LF. */
static bool fake_parse(const char *buf, size_t len, uint64_t *wwpn, uint64_t *wwnn)
{
    if (len && buf[len - 1] == '\n')
        len--;
    if (len != 33 || buf[16] != ':')
        return false;
    uint64_t v[2] = { 0, 0 };
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 16; i++) {
            char c = buf[k * 17 + i];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0)
                return false;
            v[k] = v[k] << 4 | (uint64_t)d;
        }
    }
    *wwpn = v[0];
    *wwnn = v[1];
    return true;
}

/* Take what was written to an attribute file, leaving it empty again. */
static size_t fake_take(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, cap - 1);
    if (n > 0 && (n >= 33 || buf[n - 1] == '\n')) {
        if (ftruncate(fd, 0) < 0)
            n = 0;
    } else {
        n = 0;                          /* nothing, or a write still in progress */
    }
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    return n > 0 ? (size_t)n : 0;
}

static void fake_vport_dirs(const struct fake_fc *f, const struct fake_vport *v, char *vport_dir,
                            char *host_dir, size_t cap)
{
    snprintf(vport_dir, cap, "%s/class/fc_vports/vport-%u:0-%u", f->root,
             f->hbas[v->hba].host_no, v->number);
    snprintf(host_dir, cap, "%s/class/fc_host/host%u", f->root, v->host_no);
}

static void fake_create(struct fake_fc *f, size_t hba, uint64_t wwpn, uint64_t wwnn)
{
    struct fake_hba *h = &f->hbas[hba];
    char vdir[1024], hdir[1024];
    if (h->in_use >= h->max_vports) {
        fake_log(f, "host%u vport_create REFUSED (ENOSPC)", h->host_no);
        return;
    }
    for (size_t i = 0; i < FAKE_MAX; i++) {
        struct fake_vport *v = &f->vports[i];
        if (v->is_used)
            continue;
        memset(v, 0, sizeof(*v));
        v->is_used = true;
        v->hba = hba;
        v->number = h->next_vport++;
        v->host_no = f->next_host_no++;
        v->wwpn = wwpn;
        v->wwnn = wwnn;
        v->created_ms = fake_now_ms();
        fake_vport_dirs(f, v, vdir, hdir, sizeof(vdir));
        fake_mkdirs(vdir);
        fake_write(vdir, "port_name", "0x%" PRIx64 "\n", wwpn);
        fake_write(vdir, "node_name", "0x%" PRIx64 "\n", wwnn);
        fake_write(vdir, "roles", "FCP Initiator\n");
        fake_write(vdir, "vport_type", "NPIV VPORT\n");
        fake_write(vdir, "vport_state", "%s\n", f->stuck_vport_state);
        fake_mkdirs(hdir);
        fake_write(hdir, "port_name", "0x%" PRIx64 "\n", wwpn);
        fake_write(hdir, "node_name", "0x%" PRIx64 "\n", wwnn);
        fake_write(hdir, "port_type", "NPIV VPORT\n");
        fake_write(hdir, "port_state", "Linkdown\n");
        h->in_use++;
        fake_write_counters(f, h);
        return;
    }
}

static void fake_go_online(struct fake_fc *f, struct fake_vport *v)
{
    char vdir[1024], hdir[1024], dir[1024];
    unsigned next_rport = 0;
    fake_vport_dirs(f, v, vdir, hdir, sizeof(vdir));
    for (size_t t = 0; t < f->n_targets; t++) {
        struct fake_target *tg = &f->targets[t];
        bool zoned = false;
        for (size_t z = 0; z < tg->n_zoned; z++)
            zoned |= tg->zoned[z] == v->wwpn;
        if (!zoned)
            continue;
        unsigned id = next_rport++;
        snprintf(dir, sizeof(dir), "%s/class/fc_remote_ports/rport-%u:0-%u", f->root,
                 v->host_no, id);
        fake_mkdirs(dir);
        fake_write(dir, "port_name", "0x%" PRIx64 "\n", tg->wwpn);
        fake_write(dir, "node_name", "0x%" PRIx64 "\n", tg->wwnn);
        fake_write(dir, "roles", "FCP Target\n");
        fake_write(dir, "port_state", "Online\n");
        fake_write(dir, "scsi_target_id", "%u\n", id);
        for (size_t m = 0; m < tg->n_masks; m++) {
            if (tg->masks[m].initiator != v->wwpn)
                continue;
            snprintf(dir, sizeof(dir), "%s/class/scsi_device/%u:0:%u:%" PRIu64, f->root,
                     v->host_no, id, tg->masks[m].lun);
            fake_mkdirs(dir);
            if (tg->masks[m].block[0]) {
                char dev[1100], blk[1200];
                snprintf(dev, sizeof(dev), "%s/device", dir);
                snprintf(blk, sizeof(blk), "%s/block/%s", dev, tg->masks[m].block);
                fake_mkdirs(blk);
                if (tg->masks[m].vpd83_from[0])
                    fake_copy_vpd83(dev, tg->masks[m].vpd83_from);
                else
                    fake_write_vpd83(dev, tg->masks[m].naa);
            }
        }
    }
    fake_write(vdir, "vport_state", "Active\n");
    fake_write(hdir, "port_state", "Online\n");
    v->is_online = true;
}

static void fake_delete(struct fake_fc *f, size_t hba, uint64_t wwpn, uint64_t wwnn)
{
    char vdir[1024], hdir[1024], dir[1024], prefix[64];
    for (size_t i = 0; i < FAKE_MAX; i++) {
        struct fake_vport *v = &f->vports[i];
        if (!v->is_used || v->hba != hba || v->wwpn != wwpn || v->wwnn != wwnn)
            continue;
        struct fake_hba *h = &f->hbas[hba];
        h->in_use--;
        fake_write_counters(f, h);
        fake_vport_dirs(f, v, vdir, hdir, sizeof(vdir));
        /* the rports and LUNs of the vport's host go with it */
        for (unsigned id = 0; id < FAKE_MAX; id++) {
            snprintf(dir, sizeof(dir), "%s/class/fc_remote_ports/rport-%u:0-%u", f->root,
                     v->host_no, id);
            fake_rmtree(dir);
        }
        snprintf(prefix, sizeof(prefix), "%u:", v->host_no);
        snprintf(dir, sizeof(dir), "%s/class/scsi_device", f->root);
        char cmd[1200];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'/%s*", dir, prefix);
        if (system(cmd) != 0)
            fprintf(stderr, "fake_fc: %s failed\n", cmd);
        fake_rmtree(vdir);
        fake_rmtree(hdir);
        v->is_used = false;
        return;
    }
    fake_log(f, "host%u vport_delete REFUSED (ENODEV)", f->hbas[hba].host_no);
}

static void *fake_agent(void *arg)
{
    struct fake_fc *f = arg;
    char path[1024], buf[256];
    while (!atomic_load(&f->stop)) {
        for (size_t i = 0; i < f->n_hbas; i++) {
            struct fake_hba *h = &f->hbas[i];
            uint64_t p, n;
            size_t len;
            if (!h->has_vport_create)
                continue;
            fake_hba_dir(f, h->host_no, path, sizeof(path));
            strcat(path, "/vport_create");
            if ((len = fake_take(path, buf, sizeof(buf)))) {
                fake_log(f, "host%u vport_create %s", h->host_no, buf);
                if (fake_parse(buf, len, &p, &n))
                    fake_create(f, i, p, n);
                else
                    fake_log(f, "host%u vport_create REFUSED (EINVAL)", h->host_no);
            }
            fake_hba_dir(f, h->host_no, path, sizeof(path));
            strcat(path, "/vport_delete");
            if ((len = fake_take(path, buf, sizeof(buf)))) {
                fake_log(f, "host%u vport_delete %s", h->host_no, buf);
                if (fake_parse(buf, len, &p, &n))
                    fake_delete(f, i, p, n);
                else
                    fake_log(f, "host%u vport_delete REFUSED (EINVAL)", h->host_no);
            }
        }
        for (size_t i = 0; i < FAKE_MAX; i++) {
            struct fake_vport *v = &f->vports[i];
            if (v->is_used && !v->is_online && f->online_delay_ms >= 0 &&
                fake_now_ms() >= v->created_ms + (uint64_t)f->online_delay_ms)
                fake_go_online(f, v);
        }
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void fake_start(struct fake_fc *f)
{
    fake_build_tree(f);
    atomic_store(&f->stop, false);
    if (pthread_create(&f->thread, NULL, fake_agent, f) != 0)
        abort();
}

static void fake_stop(struct fake_fc *f)
{
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    fake_rmtree(f->root);
}

/* Copy of log line i ("" past the end), safe against the agent thread. */
static const char *fake_log_line(struct fake_fc *f, size_t i)
{
    static char copy[96];
    pthread_mutex_lock(&f->lock);
    snprintf(copy, sizeof(copy), "%s", i < f->n_log ? f->log[i] : "");
    pthread_mutex_unlock(&f->lock);
    return copy;
}

static size_t fake_log_count(struct fake_fc *f)
{
    pthread_mutex_lock(&f->lock);
    size_t n = f->n_log;
    pthread_mutex_unlock(&f->lock);
    return n;
}

#endif
