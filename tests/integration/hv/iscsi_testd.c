/*
 * iscsi-testd — a small iSCSI target for tests and benchmarks: the hv/iscsi
 * server in front of controllers whose LUNs are raw files (or VHDs when the
 * vhd module is built), with initiator ACLs and CHAP from the command line.
 * It stands in for hvstord where a test wants the target alone.
 *
 *   iscsi-testd [--addr A] [--port N] [--port-file F] [--nop-ms N]
 *     --target IQN [--allow IQN]... [--chap USER:SECRET] [--mutual USER:SECRET]
 *         (--raw PATH | --vhd PATH)... [--read-only] [--direct]
 *     [--target IQN ...]...
 *
 * Options after --target apply to that target; each --raw/--vhd adds the
 * next LUN (0, 1, ...). No --allow: any initiator. Prints "port N" once
 * listening; SIGTERM/SIGINT drain and exit 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "common.h"
#include "iscsi/iscsi.h"
#ifdef HVSTOR_HAVE_VHD
#include "vhd.h"
#endif

#define MAX_TARGETS 16
#define MAX_ALLOW 16

struct lun {
    struct bdev *bd;
};

struct target {
    char name[224];
    char *allow[MAX_ALLOW];
    int allow_count;
    struct iscsi_auth auth;
    struct scsi_controller *ctl;
    struct lun luns[SCSI_LUNS_PER_CONTROLLER];
    int lun_count;
    bool is_read_only;
    bool use_direct_io;
};

static struct target targets[MAX_TARGETS];
static int target_count;
static int signal_pipe[2] = { -1, -1 };

static bool target_allows(const struct target *t, const char *initiator)
{
    if (t->allow_count == 0)
        return true;
    for (int i = 0; i < t->allow_count; i++) {
        if (strcmp(t->allow[i], initiator) == 0)
            return true;
    }
    return false;
}

static int dir_lookup(void *arg, const char *target, const char *initiator,
                      struct iscsi_auth *auth, struct scsi_controller **ctl)
{
    for (int i = 0; i < target_count; i++) {
        struct target *t = &targets[i];
        if (strcmp(t->name, target) != 0)
            continue;
        if (!target_allows(t, initiator))
            return -EACCES;
        *auth = t->auth;
        *ctl = t->ctl;
        return 0;
    }
    return -ENOENT;
}

static void dir_list(void *arg, const char *initiator, void (*emit)(void *ctx, const char *target),
                     void *ctx)
{
    for (int i = 0; i < target_count; i++) {
        if (target_allows(&targets[i], initiator))
            emit(ctx, targets[i].name);
    }
}

/* Discovery needs the CHAP of any one target the initiator may use. */
static int dir_discovery_auth(void *arg, const char *initiator, unsigned index,
                              struct iscsi_auth *auth)
{
    for (int i = 0; i < target_count; i++) {
        if (!targets[i].auth.is_chap_required || !target_allows(&targets[i], initiator))
            continue;
        if (index-- == 0) {
            *auth = targets[i].auth;
            return 0;
        }
    }
    return -ENOENT;
}

static const struct iscsi_directory_ops dir_ops = {
    .lookup = dir_lookup,
    .list = dir_list,
    .discovery_auth = dir_discovery_auth,
};

static void on_signal(int sig)
{
    char b = (char)sig;
    if (write(signal_pipe[1], &b, 1) < 0) {
        /* nothing to do: the pipe is full, a stop is already pending */
    }
}

static bool stop_requested;

static void on_signal_pipe(void *arg, uint32_t events)
{
    char buf[16];
    if (read(signal_pipe[0], buf, sizeof(buf)) > 0)
        stop_requested = true;
}

static int split_user_secret(const char *arg, char *user, char *secret)
{
    const char *colon = strchr(arg, ':');
    if (!colon || colon == arg || strlen(colon + 1) == 0 || colon - arg >= 256 ||
        strlen(colon + 1) >= 256)
        return -EINVAL;
    memcpy(user, arg, (size_t)(colon - arg));
    user[colon - arg] = '\0';
    strcpy(secret, colon + 1);
    return 0;
}

static int open_lun(struct hv_reactor *r, struct target *t, const char *kind, const char *path,
                    struct hv_err *err)
{
    struct bdev *bd = NULL;
    struct scsi_lu *lu = NULL;
    int ret;

    if (t->lun_count == SCSI_LUNS_PER_CONTROLLER)
        return hv_err_set(err, -ENOSPC, "%s: target %s has no free LUN slot", path, t->name);
    if (strcmp(kind, "raw") == 0) {
        struct bdev_raw_options opt = { .is_read_only = t->is_read_only,
                                        .use_direct_io = t->use_direct_io };
        ret = bdev_raw_open(r, path, &opt, &bd, err);
    } else {
#ifdef HVSTOR_HAVE_VHD
        struct vhd_open_options opt = { .is_read_only = t->is_read_only,
                                        .no_direct_io = !t->use_direct_io };
        ret = vhd_open(r, path, &opt, &bd, err);
#else
        ret = hv_err_set(err, -ENOTSUP, "%s: this build has no VHD engine", path);
#endif
    }
    if (ret < 0)
        return ret;
    struct scsi_disk_options dopt = { .is_read_only = t->is_read_only };
    ret = scsi_disk_create(bd, &dopt, &lu, err);
    if (ret < 0) {
        bdev_close(bd);
        return ret;
    }
    ret = scsi_controller_attach(t->ctl, (uint64_t)t->lun_count, lu);
    if (ret < 0) {
        lu->ops->destroy(lu);
        bdev_close(bd);
        return hv_err_set(err, ret, "%s: attach to %s failed", path, t->name);
    }
    t->luns[t->lun_count++].bd = bd;
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: iscsi-testd [--addr A] [--port N] [--port-file F] [--nop-ms N]\n"
            "         --target IQN [--allow IQN]... [--chap USER:SECRET] [--mutual USER:SECRET]\n"
            "         [--read-only] [--direct] (--raw PATH | --vhd PATH)... [--target ...]\n");
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1";
    const char *port_file = NULL;
    uint64_t port = 0;
    uint64_t nop_ms = 0;
    struct hv_reactor *r = NULL;
    struct iscsi_server *server = NULL;
    struct hv_err err = { 0 };
    struct target *cur = NULL;
    int ret;

    hv_log_set_ident("iscsi-testd");
    if (hv_reactor_create(&r) < 0) {
        fprintf(stderr, "iscsi-testd: cannot create the reactor\n");
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes_value = strcmp(a, "--read-only") != 0 && strcmp(a, "--direct") != 0;
        if (takes_value && !v) {
            usage();
            return 2;
        }
        if (strcmp(a, "--addr") == 0) {
            addr = v;
        } else if (strcmp(a, "--port") == 0) {
            if (hv_parse_u64(v, &port) < 0 || port > 65535) {
                fprintf(stderr, "iscsi-testd: --port %s: not a port number\n", v);
                return 2;
            }
        } else if (strcmp(a, "--port-file") == 0) {
            port_file = v;
        } else if (strcmp(a, "--nop-ms") == 0) {
            if (hv_parse_u64(v, &nop_ms) < 0) {
                fprintf(stderr, "iscsi-testd: --nop-ms %s: not a number\n", v);
                return 2;
            }
        } else if (strcmp(a, "--target") == 0) {
            if (target_count == MAX_TARGETS) {
                fprintf(stderr, "iscsi-testd: too many targets\n");
                return 2;
            }
            cur = &targets[target_count++];
            snprintf(cur->name, sizeof(cur->name), "%s", v);
            if (scsi_controller_create(r, v, &cur->ctl) < 0) {
                fprintf(stderr, "iscsi-testd: %s: cannot create the controller\n", v);
                return 1;
            }
        } else if (!cur) {
            fprintf(stderr, "iscsi-testd: %s before any --target\n", a);
            usage();
            return 2;
        } else if (strcmp(a, "--allow") == 0) {
            if (cur->allow_count == MAX_ALLOW) {
                fprintf(stderr, "iscsi-testd: too many --allow\n");
                return 2;
            }
            cur->allow[cur->allow_count++] = argv[i + 1];
        } else if (strcmp(a, "--chap") == 0) {
            if (split_user_secret(v, cur->auth.chap_user, cur->auth.chap_secret) < 0) {
                fprintf(stderr, "iscsi-testd: --chap %s: expected USER:SECRET\n", v);
                return 2;
            }
            cur->auth.is_chap_required = true;
        } else if (strcmp(a, "--mutual") == 0) {
            if (split_user_secret(v, cur->auth.mutual_user, cur->auth.mutual_secret) < 0) {
                fprintf(stderr, "iscsi-testd: --mutual %s: expected USER:SECRET\n", v);
                return 2;
            }
            cur->auth.is_mutual = true;
        } else if (strcmp(a, "--read-only") == 0) {
            cur->is_read_only = true;
            continue;
        } else if (strcmp(a, "--direct") == 0) {
            cur->use_direct_io = true;
            continue;
        } else if (strcmp(a, "--raw") == 0 || strcmp(a, "--vhd") == 0) {
            if (open_lun(r, cur, a + 2, v, &err) < 0) {
                fprintf(stderr, "iscsi-testd: %s\n", hv_err_msg(&err, err.code));
                return 1;
            }
        } else {
            fprintf(stderr, "iscsi-testd: unknown option %s\n", a);
            usage();
            return 2;
        }
        i++;
    }
    if (target_count == 0) {
        usage();
        return 2;
    }
    ret = iscsi_server_create(r, addr, (uint16_t)port, &dir_ops, NULL, &server, &err);
    if (ret < 0) {
        fprintf(stderr, "iscsi-testd: %s\n", hv_err_msg(&err, ret));
        return 1;
    }
    iscsi_server_set_keepalive(server, (unsigned)nop_ms, 0);
    if (pipe2(signal_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        perror("iscsi-testd: pipe");
        return 1;
    }
    struct hv_watch *sigw = hv_reactor_add_fd(r, signal_pipe[0], EPOLLIN, on_signal_pipe, NULL);
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    printf("port %u\n", iscsi_server_port(server));
    fflush(stdout);
    if (port_file) {
        char buf[16];
        int n = snprintf(buf, sizeof(buf), "%u\n", iscsi_server_port(server));
        if (hv_write_file_atomic(port_file, buf, (size_t)n, &err) < 0) {
            fprintf(stderr, "iscsi-testd: %s\n", hv_err_msg(&err, err.code));
            return 1;
        }
    }
    while (!stop_requested) {
        ret = hv_reactor_run_once(r, 1000);
        if (ret < 0 && ret != -EINTR) {
            fprintf(stderr, "iscsi-testd: reactor: %s\n", strerror(-ret));
            break;
        }
    }
    bool done = false;
    iscsi_server_shutdown(server, &done);
    uint64_t give_up = hv_now_ns() + 10ull * 1000000000ull;
    while (!done && hv_now_ns() < give_up)
        hv_reactor_run_once(r, 100);
    iscsi_server_destroy(server);
    hv_reactor_del_fd(r, sigw);
    for (int i = 0; i < target_count; i++) {
        scsi_controller_destroy(targets[i].ctl);
        for (int l = 0; l < targets[i].lun_count; l++)
            bdev_close(targets[i].luns[l].bd);
    }
    hv_reactor_destroy(r);
    close(signal_pipe[0]);
    close(signal_pipe[1]);
    return done ? 0 : 1;
}
