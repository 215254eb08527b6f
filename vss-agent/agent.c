/*
 * The agent's state machine: writers, FIFREEZE/FITHAW, auto-thaw.
 *
 * A command runs as a plan of phases (writers prepare, writers freeze,
 * filesystems freeze, filesystems thaw, writers thaw, writers abort). Writer
 * hooks are child processes watched through a pidfd in the reactor, each
 * with a time limit, so the loop keeps answering status requests, noticing a
 * dropped connection and firing the auto-thaw timer while a hook runs.
 * FIFREEZE and FITHAW are called inline: they return once the filesystem's
 * dirty data is synced, which is the very work a consistent snapshot needs.
 *
 * Any failure on the way in (a hook fails or overruns, FIFREEZE fails, the
 * host aborts or hangs up, the deadline passes) replaces the rest of the
 * plan with the way out: thaw what this cycle froze, newest first, then
 * "abort" to every writer that was called, in reverse name order.
 * Filesystems always thaw before writers run again, so a hook that writes
 * to disk never meets a frozen filesystem of ours.
 *
 * The state file lists the filesystems about to be frozen and is written
 * (and made durable) before the first FIFREEZE and removed after the last
 * FITHAW: never while anything is frozen, since the file may live on one of
 * them. A restarted agent thaws what it lists.
 */
#include "vss-agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef HVSTOR_VERSION
#define HVSTOR_VERSION "0.1.0"
#endif

#define DEFAULT_WRITERS_DIR "/etc/hvstor-vss/writers.d"
#define DEFAULT_STATE_PATH "/run/hvstor-vss/frozen"
#define DEFAULT_MOUNTINFO "/proc/self/mountinfo"
#define DEFAULT_THAW_TIMEOUT_MS 10000u
#define DEFAULT_WRITER_TIMEOUT_MS 30000u
/* After SIGKILL a hook normally dies at once; one stuck in the kernel is
 * left behind (and reaped later) rather than holding the guest frozen. */
#define KILL_GRACE_MS 2000u
#define MAX_ABANDONED 16

extern char **environ;

enum phase {
    PH_WRITERS_PREPARE,
    PH_WRITERS_FREEZE,
    PH_FS_FREEZE,
    PH_FS_THAW,
    PH_WRITERS_THAW,
    PH_WRITERS_ABORT,
};

static const char *const phase_arg[] = {
    [PH_WRITERS_PREPARE] = "prepare", [PH_WRITERS_FREEZE] = "freeze",
    [PH_WRITERS_THAW] = "thaw",       [PH_WRITERS_ABORT] = "abort",
};

struct frozen_fs {
    char *mount;
    dev_t dev;
    int fd;                             /* kept open: FITHAW hits the same superblock */
    bool is_frozen;
};

struct vss_agent {
    struct hv_reactor *reactor;
    char *writers_dir;
    char *state_path;
    char *mountinfo_path;
    char **only_fs;
    size_t only_fs_count;
    bool has_no_filesystems;
    uint32_t thaw_timeout_ms;
    uint32_t writer_timeout_ms;

    vss_send_fn send;                   /* NULL while no host is connected */
    void *send_arg;
    uint64_t conn_gen;                  /* replies go only to the connection that asked */

    enum vss_state state;
    enum vss_auto_thaw last_auto_thaw;
    bool was_auto_thawed;               /* since the last freeze: a late thaw must fail */

    /* the current cycle (prepare .. thaw/abort) */
    char **writers;
    size_t writer_count;
    size_t writers_called;              /* writers that got at least one call */
    struct frozen_fs *fs;
    size_t fs_count;
    uint64_t frozen_at_ns;
    uint32_t cycle_thaw_ms;
    struct hv_timer thaw_timer;
    bool is_state_file_written;

    /* the running command */
    bool is_running;
    enum phase plan[6];
    int plan_len;
    int plan_pos;
    size_t phase_step;
    enum vss_state final_state;
    bool has_request;
    uint64_t request_id;
    uint64_t request_gen;
    enum vss_cmd cmd;
    struct vss_reply reply;
    uint64_t start_ns;
    bool is_forward;                    /* still on the way in (can be cancelled) */
    enum vss_error cancel_code;         /* set when a cancel waits for a hook to die */
    char cancel_msg[256];
    bool has_abort_waiter;
    uint64_t abort_waiter_id;
    uint64_t abort_waiter_gen;

    /* the running hook */
    pid_t child;
    int child_pidfd;
    struct hv_watch *child_watch;
    struct hv_timer child_timer;
    uint64_t child_start_ns;
    bool is_child_timed_out;
    bool is_child_killed;
    pid_t abandoned[MAX_ABANDONED];

    hv_call_cb shutdown_done;
    void *shutdown_arg;
    struct hv_deferred shutdown_deferred;
    bool is_shutting_down;
};

static void run(struct vss_agent *a);
static void start_auto_thaw(struct vss_agent *a, enum vss_auto_thaw why);

/* ------------------------------------------------------------- helpers */

static uint64_t us_since(uint64_t ns) { return (hv_now_ns() - ns) / 1000; }

static void send_reply(struct vss_agent *a, struct vss_reply *rep, uint64_t gen)
{
    char *line;
    size_t len;
    if (!a->send || gen != a->conn_gen)
        return;
    int ret = vss_reply_encode(rep, &line, &len);
    if (ret == -E2BIG) {
        /* A reply too large to frame (thousands of mounts): say so briefly. */
        struct vss_reply small;
        vss_reply_init(&small);
        small.has_id = rep->has_id;
        small.id = rep->id;
        small.cmd = rep->cmd;
        small.state = a->state;
        vss_reply_fail(&small, VSS_ERR_INTERNAL, "reply over the %u-byte line limit",
                       (unsigned)VSS_MAX_LINE_BYTES);
        ret = vss_reply_encode(&small, &line, &len);
    }
    if (ret < 0) {
        hv_error("cannot encode a reply: %s", strerror(-ret));
        return;
    }
    a->send(a->send_arg, line, len);
    free(line);
}

static void reply_error(struct vss_agent *a, bool has_id, uint64_t id, enum vss_cmd cmd,
                        enum vss_error code, const char *msg)
{
    struct vss_reply rep;
    vss_reply_init(&rep);
    rep.has_id = has_id;
    rep.id = id;
    rep.cmd = cmd;
    rep.state = a->state;
    vss_reply_fail(&rep, code, "%s", msg);
    send_reply(a, &rep, a->conn_gen);
    vss_reply_clear(&rep);
}

static int add_frozen_list(struct vss_agent *a, struct vss_reply *rep)
{
    for (size_t i = 0; i < a->fs_count; i++)
        if (a->fs[i].is_frozen && vss_reply_add_frozen(rep, a->fs[i].mount) < 0)
            return -ENOMEM;
    return 0;
}

static uint64_t thaw_in_ms(struct vss_agent *a)
{
    if (!a->thaw_timer.is_armed)
        return 0;
    uint64_t now = hv_now_ns();
    if (a->thaw_timer.deadline_ns <= now)
        return 1;
    return HV_DIV_ROUND_UP(a->thaw_timer.deadline_ns - now, 1000000);
}

/* ------------------------------------------------------------- writers */

static int by_name(const struct dirent **x, const struct dirent **y)
{
    return strcmp((*x)->d_name, (*y)->d_name);
}

/* Packaging leftovers and editor backups are never hooks. */
static int is_hook_name(const struct dirent *e)
{
    const char *n = e->d_name;
    size_t len = strlen(n);
    if (n[0] == '.' || (len && n[len - 1] == '~'))
        return 0;
    if (strstr(n, ".dpkg-") || strstr(n, ".rpmnew") || strstr(n, ".rpmsave") ||
        strstr(n, ".disabled"))
        return 0;
    return 1;
}

static void free_strings(char **list, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(list[i]);
    free(list);
}

/* Executable regular files in the writers directory, sorted by name (bytes).
 * A missing directory means no writers. */
static int scan_writers(const struct vss_agent *a, char ***out, size_t *count)
{
    struct dirent **ents = NULL;
    int n = scandir(a->writers_dir, &ents, is_hook_name, by_name);
    *out = NULL;
    *count = 0;
    if (n < 0)
        return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
    char **list = calloc((size_t)n + 1, sizeof(char *));
    int ret = list ? 0 : -ENOMEM;
    for (int i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        if (!ret && snprintf(path, sizeof(path), "%s/%s", a->writers_dir, ents[i]->d_name) <
                        (int)sizeof(path) &&
            stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0) {
            list[*count] = strdup(ents[i]->d_name);
            if (!list[*count])
                ret = -ENOMEM;
            else
                (*count)++;
        }
        free(ents[i]);
    }
    free(ents);
    if (ret < 0) {
        free_strings(list, *count);
        *count = 0;
        return ret;
    }
    *out = list;
    return 0;
}

static void reap_abandoned(struct vss_agent *a)
{
    for (int i = 0; i < MAX_ABANDONED; i++)
        if (a->abandoned[i] > 0 && waitpid(a->abandoned[i], NULL, WNOHANG) != 0)
            a->abandoned[i] = 0;
}

static void child_stop_watching(struct vss_agent *a)
{
    hv_timer_cancel(a->reactor, &a->child_timer);
    if (a->child_watch)
        hv_reactor_del_fd(a->reactor, a->child_watch);
    a->child_watch = NULL;
    if (a->child_pidfd >= 0)
        close(a->child_pidfd);
    a->child_pidfd = -1;
    a->child = 0;
}

static void fail_forward(struct vss_agent *a, enum vss_error code, const char *msg);

/* The hook `a->phase_step` of the current phase finished (status as from
 * waitpid, or -1 when it had to be abandoned). */
static void child_finished(struct vss_agent *a, int status)
{
    enum phase ph = a->plan[a->plan_pos];
    bool is_reverse = ph == PH_WRITERS_THAW || ph == PH_WRITERS_ABORT;
    size_t n = ph == PH_WRITERS_ABORT ? a->writers_called : a->writer_count;
    size_t idx = is_reverse ? n - 1 - a->phase_step : a->phase_step;
    const char *name = a->writers[idx];
    char why[192] = "";

    a->reply.writers_us += us_since(a->child_start_ns);
    if (a->is_child_timed_out)
        snprintf(why, sizeof(why), "did not finish within %u ms and was killed",
                 a->writer_timeout_ms);
    else if (status < 0)
        snprintf(why, sizeof(why), "could not be stopped and was abandoned");
    else if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
        snprintf(why, sizeof(why), "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status) && !a->is_child_killed)
        snprintf(why, sizeof(why), "was killed by signal %d", WTERMSIG(status));
    a->phase_step++;

    if (a->is_forward && a->cancel_code != VSS_ERR_NONE) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", a->cancel_msg);
        fail_forward(a, a->cancel_code, msg);
    } else if (why[0] && a->is_forward) {
        char msg[512];
        snprintf(msg, sizeof(msg), "writer %s %s: %s", name, phase_arg[ph], why);
        hv_warn("%s; rolling back", msg);
        fail_forward(a, a->is_child_timed_out ? VSS_ERR_WRITER_TIMEOUT : VSS_ERR_WRITER_FAILED,
                     msg);
    } else if (why[0]) {
        hv_warn("writer %s %s: %s", name, phase_arg[ph], why);
        vss_reply_add_warning(&a->reply, "writer %s %s: %s", name, phase_arg[ph], why);
    }
    run(a);
}

static void child_exited(void *arg, uint32_t events)
{
    struct vss_agent *a = arg;
    int status = 0;
    pid_t pid = a->child;
    pid_t got = waitpid(pid, &status, WNOHANG);
    if (got == 0)
        return;                         /* spurious: not dead yet */
    if (got < 0)
        status = -1;
    child_stop_watching(a);
    child_finished(a, status);
}

static void child_deadline(void *arg);

static void kill_child(struct vss_agent *a)
{
    /* The hook leads its own process group: its helpers die with it. */
    kill(-a->child, SIGKILL);
    kill(a->child, SIGKILL);
    a->is_child_killed = true;
    hv_timer_arm(a->reactor, &a->child_timer, KILL_GRACE_MS, child_deadline, a);
}

static void child_deadline(void *arg)
{
    struct vss_agent *a = arg;
    if (!a->is_child_killed) {
        a->is_child_timed_out = true;
        kill_child(a);
        return;
    }
    for (int i = 0; i < MAX_ABANDONED; i++)
        if (a->abandoned[i] == 0) {
            a->abandoned[i] = a->child;
            break;
        }
    hv_error("writer process %d ignores SIGKILL; leaving it behind", (int)a->child);
    child_stop_watching(a);
    child_finished(a, -1);
}

static int spawn_writer(struct vss_agent *a, const char *name, const char *what)
{
    char path[4096];
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, defaults;
    pid_t pid;
    int ret;

    if (snprintf(path, sizeof(path), "%s/%s", a->writers_dir, name) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    char *argv[] = { path, (char *)what, NULL };

    reap_abandoned(a);
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    /* stdin from /dev/null, stdout into our stderr (the log), never the
     * protocol channel; default signal handling and an empty mask, since
     * the agent blocks the signals it reads through a signalfd. */
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, 2, 1);
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGHUP);
    sigaddset(&defaults, SIGCHLD);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                        POSIX_SPAWN_SETPGROUP);
    ret = -posix_spawn(&pid, path, &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (ret < 0)
        return ret;

    a->child = pid;
    a->child_start_ns = hv_now_ns();
    a->is_child_timed_out = false;
    a->is_child_killed = false;
    a->child_pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (a->child_pidfd >= 0)
        a->child_watch = hv_reactor_add_fd(a->reactor, a->child_pidfd, EPOLLIN, child_exited, a);
    if (!a->child_watch) {
        ret = -errno;
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        if (a->child_pidfd >= 0)
            close(a->child_pidfd);
        a->child_pidfd = -1;
        a->child = 0;
        return ret ? ret : -EIO;
    }
    hv_timer_arm(a->reactor, &a->child_timer, a->writer_timeout_ms, child_deadline, a);
    hv_debug("writer %s %s: started as pid %d", name, what, (int)pid);
    return 0;
}

/* --------------------------------------------------------- filesystems */

static void free_fs(struct vss_agent *a)
{
    for (size_t i = 0; i < a->fs_count; i++) {
        if (a->fs[i].fd >= 0)
            close(a->fs[i].fd);
        free(a->fs[i].mount);
    }
    free(a->fs);
    a->fs = NULL;
    a->fs_count = 0;
}

static bool is_valid_utf8(const char *s)
{
    json_t *j = json_string(s);
    json_decref(j);
    return j != NULL;
}

static int write_state_file(struct vss_agent *a, struct hv_err *err)
{
    char dir[4096];
    int ret;
    snprintf(dir, sizeof(dir), "%s", a->state_path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        for (char *p = dir + 1; *p; p++)
            if (*p == '/') {
                *p = '\0';
                mkdir(dir, 0700);
                *p = '/';
            }
        mkdir(dir, 0700);
    }
    json_t *root = json_pack("{s:i, s:i, s:[]}", "version", 1, "pid", (int)getpid(), "frozen");
    if (!root)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", a->state_path);
    json_t *list = json_object_get(root, "frozen");
    for (size_t i = 0; i < a->fs_count; i++) {
        char dev[32], hex[8192];
        snprintf(dev, sizeof(dev), "%u:%u", major(a->fs[i].dev), minor(a->fs[i].dev));
        json_t *e;
        if (is_valid_utf8(a->fs[i].mount)) {
            e = json_pack("{s:s, s:s}", "mount", a->fs[i].mount, "device", dev);
        } else {
            size_t k = 0;
            for (const unsigned char *p = (const unsigned char *)a->fs[i].mount;
                 *p && k + 3 < sizeof(hex); p++, k += 2)
                snprintf(hex + k, 3, "%02x", *p);
            hex[k] = '\0';
            e = json_pack("{s:s, s:s}", "mount_hex", hex, "device", dev);
        }
        if (!e || json_array_append_new(list, e) < 0) {
            json_decref(root);
            return hv_err_set(err, -ENOMEM, "%s: out of memory", a->state_path);
        }
    }
    ret = hv_json_write_file(a->state_path, root, err);
    json_decref(root);
    if (ret == 0)
        a->is_state_file_written = true;
    return ret;
}

static void remove_state_file(struct vss_agent *a)
{
    if (!a->is_state_file_written)
        return;
    if (unlink(a->state_path) < 0 && errno != ENOENT)
        hv_warn("%s: cannot remove: %s", a->state_path, strerror(errno));
    a->is_state_file_written = false;
}

/* The device holding the image file behind a loop device (or a partition
 * of one); 0 when `maj:min` is not a loop device. */
static dev_t loop_backing_dev(unsigned maj, unsigned min)
{
    static const char *const forms[] = { "", "/.." };
    for (size_t i = 0; i < HV_ARRAY_SIZE(forms); i++) {
        char sys[128], file[4096];
        struct stat st;
        snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u%s/loop/backing_file", maj, min,
                 forms[i]);
        FILE *h = fopen(sys, "re");
        if (!h)
            continue;
        bool has_line = fgets(file, sizeof(file), h) != NULL;
        fclose(h);
        if (!has_line)
            continue;
        file[strcspn(file, "\n")] = '\0';
        if (stat(file, &st) == 0)
            return st.st_dev;
    }
    return 0;
}

/* Loop filesystems freeze before the filesystem that holds their image. */
static int order_loop_devices(const struct vss_mount_table *t, size_t *order, size_t count,
                              struct hv_err *err)
{
    struct vss_mount_dep *deps = calloc(count + 1, sizeof(*deps));
    size_t dep_count = 0;
    int ret;
    if (!deps)
        return hv_err_set(err, -ENOMEM, "out of memory");
    for (size_t k = 0; k < count; k++) {
        const struct vss_mount *m = &t->mounts[order[k]];
        dev_t backing = loop_backing_dev(m->major, m->minor);
        for (size_t j = 0; backing && j < count; j++) {
            const struct vss_mount *h = &t->mounts[order[j]];
            if (j != k && makedev(h->major, h->minor) == backing) {
                hv_debug("%s is a loop device on %s: freezing it first", m->mount_point,
                         h->mount_point);
                deps[dep_count++] = (struct vss_mount_dep){ order[k], order[j] };
            }
        }
    }
    ret = vss_mounts_order_deps(t, order, count, deps, dep_count);
    free(deps);
    if (ret == -ELOOP)
        return hv_err_set(err, ret, "loop devices and mount points need contradictory "
                          "freeze orders; not freezing");
    return ret < 0 ? hv_err_set(err, ret, "out of memory") : 0;
}

/* Resolve what to freeze into open, verified directory fds, in freeze order. */
static int open_filesystems(struct vss_agent *a, struct hv_err *err)
{
    struct vss_mount_table table;
    size_t *order = NULL, count = 0;
    struct stat root_st;
    bool may_freeze_root = a->only_fs_count == 0;
    int ret;

    if (a->has_no_filesystems)
        return 0;
    ret = vss_mounts_read(a->mountinfo_path, &table, err);
    if (ret < 0)
        return ret;
    order = calloc(table.count + 1, sizeof(*order));
    a->fs = calloc(table.count + 1, sizeof(*a->fs));
    if (!order || !a->fs) {
        ret = hv_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    ret = vss_mounts_select(&table, (const char *const *)a->only_fs, a->only_fs_count, order,
                            &count, err);
    if (ret == 0)
        ret = order_loop_devices(&table, order, count, err);
    if (ret < 0)
        goto out;
    for (size_t k = 0; k < a->only_fs_count; k++)
        if (strcmp(a->only_fs[k], "/") == 0)
            may_freeze_root = true;
    if (stat("/", &root_st) < 0) {
        ret = hv_err_errno(err, "/", "stat");
        goto out;
    }
    for (size_t k = 0; k < count; k++) {
        const struct vss_mount *m = &table.mounts[order[k]];
        struct frozen_fs *f = &a->fs[a->fs_count];
        struct stat st;
        f->fd = open(m->mount_point, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (f->fd < 0) {
            ret = hv_err_errno(err, m->mount_point, "open");
            goto out;
        }
        f->mount = strdup(m->mount_point);
        a->fs_count++;
        if (!f->mount) {
            ret = hv_err_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        if (fstat(f->fd, &st) < 0) {
            ret = hv_err_errno(err, m->mount_point, "fstat");
            goto out;
        }
        /*
         * The path must still lead to the filesystem that mountinfo named:
         * a mount that went away in the meantime would otherwise make us
         * freeze whatever contains its directory, the root filesystem first
         * of all. With an explicit list, the root filesystem is frozen only
         * when "/" itself is on it.
         */
        if (st.st_dev != makedev(m->major, m->minor)) {
            ret = hv_err_set(err, -ESTALE, "%s: now on device %u:%u, mountinfo said %u:%u; "
                             "not freezing", m->mount_point, major(st.st_dev),
                             minor(st.st_dev), m->major, m->minor);
            goto out;
        }
        if (st.st_dev == root_st.st_dev && !may_freeze_root) {
            ret = hv_err_set(err, -EPERM, "%s: is on the root filesystem, which is not in "
                             "the --fs list; not freezing", m->mount_point);
            goto out;
        }
        f->dev = st.st_dev;
    }
    ret = 0;
out:
    free(order);
    vss_mounts_free(&table);
    return ret;
}

static int freeze_filesystems(struct vss_agent *a, struct hv_err *err)
{
    uint64_t t0 = hv_now_ns();
    int ret = open_filesystems(a, err);
    if (ret == 0 && a->fs_count)
        ret = write_state_file(a, err);
    for (size_t i = 0; ret == 0 && i < a->fs_count; i++) {
        if (ioctl(a->fs[i].fd, FIFREEZE, 0) < 0) {
            if (errno == EBUSY)
                ret = hv_err_set(err, -EBUSY, "%s: already frozen by someone else (FIFREEZE: "
                                 "busy)", a->fs[i].mount);
            else
                ret = hv_err_errno(err, a->fs[i].mount, "FIFREEZE");
            break;
        }
        if (i == 0)
            a->frozen_at_ns = hv_now_ns();
        a->fs[i].is_frozen = true;
        hv_info("froze %s", a->fs[i].mount);
    }
    a->reply.filesystems_us += us_since(t0);
    return ret;
}

/* Thaw newest first. Problems become warnings (and the thaw reply's error):
 * there is nothing better to do than to carry on with the others. */
static void thaw_filesystems(struct vss_agent *a, bool is_requested_thaw)
{
    uint64_t t0 = hv_now_ns();
    bool has_frozen = false;
    for (size_t i = a->fs_count; i-- > 0;) {
        if (!a->fs[i].is_frozen)
            continue;
        has_frozen = true;
        if (ioctl(a->fs[i].fd, FITHAW, 0) < 0) {
            int e = errno;
            const char *what = e == EINVAL ? "was not frozen any more (thawed by someone else)"
                                           : strerror(e);
            hv_warn("%s: FITHAW: %s", a->fs[i].mount, what);
            vss_reply_add_warning(&a->reply, "%s: FITHAW: %s", a->fs[i].mount, what);
            if (is_requested_thaw && a->reply.is_ok)
                vss_reply_fail(&a->reply, VSS_ERR_THAW_FAILED, "%s: FITHAW: %s",
                               a->fs[i].mount, what);
        } else {
            hv_info("thawed %s", a->fs[i].mount);
        }
        a->fs[i].is_frozen = false;
    }
    if (has_frozen)
        a->reply.frozen_us = (hv_now_ns() - a->frozen_at_ns) / 1000;
    a->reply.filesystems_us += us_since(t0);
    free_fs(a);
    remove_state_file(a);
}

/* -------------------------------------------------------- the stepping */

static void set_plan(struct vss_agent *a, const enum phase *plan, int len, enum vss_state final)
{
    memcpy(a->plan, plan, (size_t)len * sizeof(*plan));
    a->plan_len = len;
    a->plan_pos = 0;
    a->phase_step = 0;
    a->final_state = final;
}

static void fail_forward(struct vss_agent *a, enum vss_error code, const char *msg)
{
    static const enum phase back[] = { PH_FS_THAW, PH_WRITERS_ABORT };
    if (a->reply.is_ok)
        vss_reply_fail(&a->reply, code, "%s", msg);
    a->is_forward = false;
    a->cancel_code = VSS_ERR_NONE;
    a->state = VSS_STATE_THAWING;
    hv_timer_cancel(a->reactor, &a->thaw_timer);
    set_plan(a, back, 2, VSS_STATE_IDLE);
}

static void finish(struct vss_agent *a)
{
    a->is_running = false;
    a->state = a->final_state;
    if (a->state == VSS_STATE_IDLE) {
        hv_timer_cancel(a->reactor, &a->thaw_timer);
        free_strings(a->writers, a->writer_count);
        a->writers = NULL;
        a->writer_count = 0;
        a->writers_called = 0;
    }
    a->reply.state = a->state;
    a->reply.total_us = us_since(a->start_ns);
    add_frozen_list(a, &a->reply);
    if (a->state == VSS_STATE_FROZEN)
        a->reply.thaw_in_ms = thaw_in_ms(a);
    if (a->has_request)
        send_reply(a, &a->reply, a->request_gen);
    if (a->reply.is_ok)
        hv_info("%s done in %llu us", vss_cmd_name(a->cmd),
                (unsigned long long)a->reply.total_us);
    else
        hv_warn("%s failed: %s", vss_cmd_name(a->cmd), a->reply.message);
    vss_reply_clear(&a->reply);

    if (a->has_abort_waiter && a->state == VSS_STATE_IDLE) {
        struct vss_reply rep;
        vss_reply_init(&rep);
        rep.has_id = true;
        rep.id = a->abort_waiter_id;
        rep.cmd = VSS_CMD_ABORT;
        rep.state = a->state;
        send_reply(a, &rep, a->abort_waiter_gen);
        vss_reply_clear(&rep);
        a->has_abort_waiter = false;
    }
    if (a->is_shutting_down && a->state == VSS_STATE_IDLE && a->shutdown_done)
        hv_reactor_defer(a->reactor, &a->shutdown_deferred, a->shutdown_done, a->shutdown_arg);
}

static void thaw_deadline(void *arg)
{
    struct vss_agent *a = arg;
    if (a->is_running && a->is_forward) {
        char msg[160];
        snprintf(msg, sizeof(msg), "the freeze did not complete within the %u ms thaw "
                 "deadline", a->cycle_thaw_ms);
        a->last_auto_thaw = VSS_AUTO_THAW_TIMEOUT;
        a->was_auto_thawed = true;
        if (a->child) {
            a->cancel_code = VSS_ERR_ABORTED;
            snprintf(a->cancel_msg, sizeof(a->cancel_msg), "%s", msg);
            kill_child(a);
        } else {
            fail_forward(a, VSS_ERR_ABORTED, msg);
            run(a);
        }
        return;
    }
    if (!a->is_running && a->state == VSS_STATE_FROZEN) {
        hv_warn("no thaw within %u ms: thawing on my own", a->cycle_thaw_ms);
        start_auto_thaw(a, VSS_AUTO_THAW_TIMEOUT);
    }
}

static void run(struct vss_agent *a)
{
    struct hv_err err = { 0 };
    while (a->plan_pos < a->plan_len) {
        enum phase ph = a->plan[a->plan_pos];
        size_t n = 0;
        bool is_reverse = false;
        switch (ph) {
        case PH_WRITERS_FREEZE:
            a->state = VSS_STATE_FREEZING;
            if (a->phase_step == 0 && !a->thaw_timer.is_armed)
                hv_timer_arm(a->reactor, &a->thaw_timer, a->cycle_thaw_ms, thaw_deadline, a);
            /* fall through */
        case PH_WRITERS_PREPARE:
            n = a->writer_count;
            break;
        case PH_WRITERS_THAW:
            n = a->writer_count;
            is_reverse = true;
            break;
        case PH_WRITERS_ABORT:
            n = a->writers_called;
            is_reverse = true;
            break;
        case PH_FS_FREEZE:
            hv_err_clear(&err);
            if (freeze_filesystems(a, &err) < 0) {
                hv_warn("%s; rolling back", hv_err_msg(&err, err.code));
                fail_forward(a, VSS_ERR_FREEZE_FAILED, hv_err_msg(&err, err.code));
                continue;
            }
            break;
        case PH_FS_THAW:
            thaw_filesystems(a, a->cmd == VSS_CMD_THAW && a->has_request);
            break;
        }
        if (a->phase_step < n) {
            size_t idx = is_reverse ? n - 1 - a->phase_step : a->phase_step;
            if (!is_reverse && idx + 1 > a->writers_called)
                a->writers_called = idx + 1;
            int ret = spawn_writer(a, a->writers[idx], phase_arg[ph]);
            if (ret == 0)
                return;                 /* child_exited() continues */
            char msg[512];
            snprintf(msg, sizeof(msg), "writer %s %s: cannot start: %s", a->writers[idx],
                     phase_arg[ph], strerror(-ret));
            a->phase_step++;
            if (a->is_forward) {
                fail_forward(a, VSS_ERR_WRITER_FAILED, msg);
            } else {
                hv_warn("%s", msg);
                vss_reply_add_warning(&a->reply, "%s", msg);
            }
            continue;
        }
        a->plan_pos++;
        a->phase_step = 0;
    }
    finish(a);
}

static void start(struct vss_agent *a, enum vss_cmd cmd, bool has_request, uint64_t id,
                  const enum phase *plan, int len, enum vss_state during,
                  enum vss_state final, bool is_forward)
{
    a->is_running = true;
    a->cmd = cmd;
    a->has_request = has_request;
    a->request_id = id;
    a->request_gen = a->conn_gen;
    vss_reply_init(&a->reply);
    a->reply.has_id = has_request;
    a->reply.id = id;
    a->reply.cmd = cmd;
    a->start_ns = hv_now_ns();
    a->is_forward = is_forward;
    a->cancel_code = VSS_ERR_NONE;
    a->state = during;
    set_plan(a, plan, len, final);
    run(a);
}

static void start_auto_thaw(struct vss_agent *a, enum vss_auto_thaw why)
{
    static const enum phase back[] = { PH_FS_THAW, PH_WRITERS_ABORT };
    if (a->state == VSS_STATE_FROZEN || a->state == VSS_STATE_FREEZING) {
        a->last_auto_thaw = why;
        a->was_auto_thawed = true;
    }
    start(a, VSS_CMD_ABORT, false, 0, back, 2, VSS_STATE_THAWING, VSS_STATE_IDLE, false);
}

/*
 * Stop whatever is going on and head for idle: abort requests, hang-ups,
 * shutdown. A running hook is killed first; the rollback starts when it
 * has gone.
 */
static void cancel(struct vss_agent *a, enum vss_error code, const char *msg,
                   enum vss_auto_thaw why)
{
    if (!a->is_running) {
        if (a->state != VSS_STATE_IDLE)
            start_auto_thaw(a, why);
        return;
    }
    if (!a->is_forward)
        return;                         /* already on the way out */
    if (why != VSS_AUTO_THAW_NONE) {
        a->last_auto_thaw = why;
        a->was_auto_thawed = true;
    }
    if (a->child) {
        a->cancel_code = code;
        snprintf(a->cancel_msg, sizeof(a->cancel_msg), "%s", msg);
        kill_child(a);
        return;
    }
    fail_forward(a, code, msg);
    run(a);
}

/* ------------------------------------------------------------ commands */

static void do_hello(struct vss_agent *a, const struct vss_request *req)
{
    struct vss_reply rep;
    uint32_t ours = 1u << VSS_PROTOCOL_VERSION, common = ours & req->versions_mask;
    char **writers = NULL;
    size_t writer_count = 0;

    if (!common) {
        reply_error(a, true, req->id, VSS_CMD_HELLO, VSS_ERR_UNSUPPORTED_VERSION,
                    "no protocol version in common: this agent speaks version 1");
        return;
    }
    vss_reply_init(&rep);
    rep.has_id = true;
    rep.id = req->id;
    rep.cmd = VSS_CMD_HELLO;
    rep.state = a->state;
    for (int v = 31; v > 0; v--)
        if (common & (1u << v)) {
            rep.version = (uint32_t)v;
            break;
        }
    rep.versions_mask = ours;
    snprintf(rep.agent, sizeof(rep.agent), "%s %s", VSS_AGENT_NAME, HVSTOR_VERSION);
    rep.thaw_timeout_ms = a->thaw_timeout_ms;
    rep.writer_timeout_ms = a->writer_timeout_ms;
    int ret = scan_writers(a, &writers, &writer_count);
    if (ret < 0)
        vss_reply_add_warning(&rep, "%s: cannot list writers: %s", a->writers_dir,
                              strerror(-ret));
    for (size_t i = 0; i < writer_count; i++)
        vss_reply_add_writer(&rep, writers[i]);
    free_strings(writers, writer_count);

    if (!a->has_no_filesystems) {
        struct vss_mount_table table;
        struct hv_err err = { 0 };
        size_t *order = NULL, count = 0;
        ret = vss_mounts_read(a->mountinfo_path, &table, &err);
        if (ret == 0) {
            order = calloc(table.count + 1, sizeof(*order));
            ret = order ? vss_mounts_select(&table, (const char *const *)a->only_fs,
                                            a->only_fs_count, order, &count, &err)
                        : hv_err_set(&err, -ENOMEM, "out of memory");
            if (ret == 0)
                ret = order_loop_devices(&table, order, count, &err);
            for (size_t k = 0; ret == 0 && k < count; k++) {
                const struct vss_mount *m = &table.mounts[order[k]];
                char dev[32];
                snprintf(dev, sizeof(dev), "%u:%u", m->major, m->minor);
                vss_reply_add_filesystem(&rep, m->mount_point, m->type, dev);
            }
            free(order);
            vss_mounts_free(&table);
        }
        if (ret < 0)
            vss_reply_add_warning(&rep, "a freeze would fail: %s", hv_err_msg(&err, ret));
    }
    hv_info("hello from %s", req->requestor[0] ? req->requestor : "an unnamed requestor");
    send_reply(a, &rep, a->conn_gen);
    vss_reply_clear(&rep);
}

static void do_status(struct vss_agent *a, const struct vss_request *req)
{
    struct vss_reply rep;
    vss_reply_init(&rep);
    rep.has_id = true;
    rep.id = req->id;
    rep.cmd = VSS_CMD_STATUS;
    rep.state = a->state;
    add_frozen_list(a, &rep);
    if (a->state == VSS_STATE_FROZEN && a->fs_count)
        rep.frozen_us = us_since(a->frozen_at_ns);
    rep.thaw_in_ms = thaw_in_ms(a);
    rep.last_auto_thaw = a->last_auto_thaw;
    send_reply(a, &rep, a->conn_gen);
    vss_reply_clear(&rep);
}

static int begin_cycle(struct vss_agent *a, const struct vss_request *req)
{
    int ret = scan_writers(a, &a->writers, &a->writer_count);
    if (ret < 0) {
        char msg[512];
        snprintf(msg, sizeof(msg), "%s: cannot list writers: %s", a->writers_dir,
                 strerror(-ret));
        reply_error(a, true, req->id, req->cmd, VSS_ERR_WRITER_FAILED, msg);
        return ret;
    }
    a->writers_called = 0;
    a->was_auto_thawed = false;
    a->cycle_thaw_ms = a->thaw_timeout_ms;
    return 0;
}

void vss_agent_handle_line(struct vss_agent *a, const char *line, size_t len)
{
    static const enum phase prepare[] = { PH_WRITERS_PREPARE };
    static const enum phase prepare_freeze[] = { PH_WRITERS_PREPARE, PH_WRITERS_FREEZE,
                                                 PH_FS_FREEZE };
    static const enum phase freeze[] = { PH_WRITERS_FREEZE, PH_FS_FREEZE };
    static const enum phase thaw[] = { PH_FS_THAW, PH_WRITERS_THAW };
    static const enum phase abort_plan[] = { PH_FS_THAW, PH_WRITERS_ABORT };
    struct vss_request req;
    struct hv_err err = { 0 };
    enum vss_error code;
    bool has_id;

    if (vss_request_decode(line, len, &req, &has_id, &code, &err) < 0) {
        hv_debug("bad request: %s", hv_err_msg(&err, err.code));
        reply_error(a, has_id, req.id, req.cmd, code, hv_err_msg(&err, err.code));
        return;
    }
    hv_debug("request %llu: %s", (unsigned long long)req.id, vss_cmd_name(req.cmd));

    switch (req.cmd) {
    case VSS_CMD_HELLO:
        do_hello(a, &req);
        return;
    case VSS_CMD_STATUS:
        do_status(a, &req);
        return;
    case VSS_CMD_ABORT:
        if (a->is_running) {
            if (a->has_abort_waiter) {
                reply_error(a, true, req.id, req.cmd, VSS_ERR_BUSY, "an abort is already "
                            "under way");
                return;
            }
            a->has_abort_waiter = true;
            a->abort_waiter_id = req.id;
            a->abort_waiter_gen = a->conn_gen;
            cancel(a, VSS_ERR_ABORTED, "cancelled by an abort request", VSS_AUTO_THAW_NONE);
            return;
        }
        start(a, VSS_CMD_ABORT, true, req.id, abort_plan, 2, VSS_STATE_THAWING,
              VSS_STATE_IDLE, false);
        return;
    default:
        break;
    }
    if (a->is_running) {
        char msg[128];
        snprintf(msg, sizeof(msg), "\"%s\" is still running", vss_cmd_name(a->cmd));
        reply_error(a, true, req.id, req.cmd, VSS_ERR_BUSY, msg);
        return;
    }
    if (a->is_shutting_down) {
        reply_error(a, true, req.id, req.cmd, VSS_ERR_BAD_STATE, "the agent is shutting down");
        return;
    }
    switch (req.cmd) {
    case VSS_CMD_PREPARE:
        if (a->state != VSS_STATE_IDLE) {
            reply_error(a, true, req.id, req.cmd, VSS_ERR_BAD_STATE,
                        a->state == VSS_STATE_FROZEN ? "already frozen" : "already prepared");
            return;
        }
        if (begin_cycle(a, &req) < 0)
            return;
        start(a, req.cmd, true, req.id, prepare, 1, VSS_STATE_PREPARING, VSS_STATE_PREPARED,
              true);
        return;
    case VSS_CMD_FREEZE:
        if (a->state == VSS_STATE_FROZEN) {
            reply_error(a, true, req.id, req.cmd, VSS_ERR_BAD_STATE, "already frozen");
            return;
        }
        if (a->state == VSS_STATE_IDLE) {
            if (begin_cycle(a, &req) < 0)
                return;
        }
        a->was_auto_thawed = false;
        a->cycle_thaw_ms = req.thaw_timeout_ms && req.thaw_timeout_ms < a->thaw_timeout_ms
                               ? req.thaw_timeout_ms
                               : a->thaw_timeout_ms;
        if (a->state == VSS_STATE_IDLE)
            start(a, req.cmd, true, req.id, prepare_freeze, 3, VSS_STATE_PREPARING,
                  VSS_STATE_FROZEN, true);
        else
            start(a, req.cmd, true, req.id, freeze, 2, VSS_STATE_FREEZING, VSS_STATE_FROZEN,
                  true);
        return;
    case VSS_CMD_THAW:
        if (a->state == VSS_STATE_FROZEN) {
            hv_timer_cancel(a->reactor, &a->thaw_timer);
            start(a, req.cmd, true, req.id, thaw, 2, VSS_STATE_THAWING, VSS_STATE_IDLE, false);
        } else if (a->state == VSS_STATE_IDLE && a->was_auto_thawed) {
            char msg[160];
            snprintf(msg, sizeof(msg), "too late: the agent had already thawed on its own "
                     "(%s); the snapshot is not consistent",
                     vss_auto_thaw_name(a->last_auto_thaw));
            reply_error(a, true, req.id, req.cmd, VSS_ERR_AUTO_THAWED, msg);
        } else {
            reply_error(a, true, req.id, req.cmd, VSS_ERR_BAD_STATE,
                        a->state == VSS_STATE_PREPARED
                            ? "not frozen (prepared only: use abort to release the writers)"
                            : "nothing is frozen");
        }
        return;
    default:
        reply_error(a, true, req.id, req.cmd, VSS_ERR_INTERNAL, "unhandled command");
        return;
    }
}

void vss_agent_handle_overlong(struct vss_agent *a)
{
    char msg[96];
    snprintf(msg, sizeof(msg), "line longer than %u bytes; discarded up to its end",
             (unsigned)VSS_MAX_LINE_BYTES - 1);
    reply_error(a, false, 0, VSS_CMD_NONE, VSS_ERR_TOO_LONG, msg);
}

/* ------------------------------------------------------------ lifetime */

void vss_agent_connected(struct vss_agent *a, vss_send_fn send, void *arg)
{
    a->conn_gen++;
    a->send = send;
    a->send_arg = arg;
}

void vss_agent_disconnected(struct vss_agent *a)
{
    a->send = NULL;
    a->send_arg = NULL;
    a->conn_gen++;
    if (a->has_abort_waiter)
        a->has_abort_waiter = false;
    if (a->state != VSS_STATE_IDLE || a->is_running) {
        hv_warn("host connection dropped while %s: thawing", vss_state_name(a->state));
        cancel(a, VSS_ERR_ABORTED, "the host connection dropped", VSS_AUTO_THAW_HANGUP);
    }
}

void vss_agent_shutdown(struct vss_agent *a, hv_call_cb done, void *arg)
{
    a->is_shutting_down = true;
    a->shutdown_done = done;
    a->shutdown_arg = arg;
    if (a->state == VSS_STATE_IDLE && !a->is_running) {
        if (done)
            hv_reactor_defer(a->reactor, &a->shutdown_deferred, done, arg);
        return;
    }
    cancel(a, VSS_ERR_ABORTED, "the agent is shutting down", VSS_AUTO_THAW_SHUTDOWN);
}

bool vss_agent_is_idle(const struct vss_agent *a)
{
    return a->state == VSS_STATE_IDLE && !a->is_running;
}

static char *dup_or(const char *s, const char *fallback)
{
    return strdup(s ? s : fallback);
}

int vss_agent_create(struct hv_reactor *r, const struct vss_agent_config *cfg,
                     struct vss_agent **out, struct hv_err *err)
{
    struct vss_agent *a = calloc(1, sizeof(*a));
    int ret;
    if (!a)
        return hv_err_set(err, -ENOMEM, "out of memory");
    a->reactor = r;
    a->child_pidfd = -1;
    a->writers_dir = dup_or(cfg->writers_dir, DEFAULT_WRITERS_DIR);
    a->state_path = dup_or(cfg->state_path, DEFAULT_STATE_PATH);
    a->mountinfo_path = dup_or(cfg->mountinfo_path, DEFAULT_MOUNTINFO);
    a->has_no_filesystems = cfg->has_no_filesystems;
    a->thaw_timeout_ms = cfg->thaw_timeout_ms ? cfg->thaw_timeout_ms : DEFAULT_THAW_TIMEOUT_MS;
    a->writer_timeout_ms = cfg->writer_timeout_ms ? cfg->writer_timeout_ms
                                                  : DEFAULT_WRITER_TIMEOUT_MS;
    a->only_fs = calloc(cfg->only_fs_count + 1, sizeof(char *));
    if (!a->writers_dir || !a->state_path || !a->mountinfo_path || !a->only_fs) {
        ret = hv_err_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < cfg->only_fs_count; i++) {
        a->only_fs[i] = strdup(cfg->only_fs[i]);
        if (!a->only_fs[i]) {
            ret = hv_err_set(err, -ENOMEM, "out of memory");
            goto fail;
        }
        a->only_fs_count++;
    }

    /* A predecessor that died while frozen left its list behind. */
    ret = cfg->skip_startup_thaw ? 0 : vss_thaw_from_state(a->state_path, NULL, 0, err);
    if (ret > 0) {
        hv_warn("thawed %d filesystem(s) that a previous agent left frozen", ret);
        a->last_auto_thaw = VSS_AUTO_THAW_STARTUP;
    } else if (ret < 0) {
        hv_error("%s", hv_err_msg(err, ret));
        hv_err_clear(err);
    }
    *out = a;
    return 0;
fail:
    vss_agent_destroy(a);
    return ret;
}

void vss_agent_destroy(struct vss_agent *a)
{
    if (!a)
        return;
    if (a->child) {
        kill_child(a);
        waitpid(a->child, NULL, 0);
        child_stop_watching(a);
    }
    hv_timer_cancel(a->reactor, &a->thaw_timer);
    /* Never leave anything frozen behind, even on a path that skipped shutdown. */
    for (size_t i = a->fs_count; i-- > 0;)
        if (a->fs[i].is_frozen)
            ioctl(a->fs[i].fd, FITHAW, 0);
    free_fs(a);
    remove_state_file(a);
    free_strings(a->writers, a->writer_count);
    free_strings(a->only_fs, a->only_fs_count);
    vss_reply_clear(&a->reply);
    free(a->writers_dir);
    free(a->state_path);
    free(a->mountinfo_path);
    free(a);
}

/* ------------------------------------------------------ thaw from disk */

static int hex_decode(const char *hex, char *out, size_t cap)
{
    size_t n = strlen(hex);
    if (n % 2 || n / 2 >= cap)
        return -EINVAL;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -EINVAL;
        out[i] = (char)v;
    }
    out[n / 2] = '\0';
    return 0;
}

/* FITHAW on `path` when it is (still) on `expect` (0: any device).
 * 1 thawed, 0 was not frozen, negative errno. */
static int thaw_path(const char *path, dev_t expect)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC), ret;
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || (expect && st.st_dev != expect)) {
        close(fd);
        return -ESTALE;
    }
    ret = ioctl(fd, FITHAW, 0) == 0 ? 1 : errno == EINVAL ? 0 : -errno;
    close(fd);
    return ret;
}

int vss_thaw_from_state(const char *state_path, const char *const *extra, size_t extra_count,
                        struct hv_err *err)
{
    const char *path = state_path ? state_path : DEFAULT_STATE_PATH;
    json_t *root = NULL;
    size_t i;
    int thawed = 0, ret;

    ret = access(path, F_OK) == 0 ? hv_json_read_file(path, &root, err) : 0;
    if (ret < 0)
        hv_error("%s: %s; thawing only what was named", path, hv_err_msg(err, ret));
    json_t *list = json_object_get(root, "frozen");
    /* The state file lists freeze order: thaw in reverse. */
    for (i = json_array_size(list); i-- > 0;) {
        json_t *entry = json_array_get(list, i);
        const char *mount = json_string_value(json_object_get(entry, "mount"));
        const char *hex = json_string_value(json_object_get(entry, "mount_hex"));
        const char *devs = json_string_value(json_object_get(entry, "device"));
        char decoded[4096];
        unsigned maj, min;
        if (!mount && hex && hex_decode(hex, decoded, sizeof(decoded)) == 0)
            mount = decoded;
        if (!mount || !devs || sscanf(devs, "%u:%u", &maj, &min) != 2) {
            hv_error("%s: entry %zu is malformed; skipped", path, i);
            continue;
        }
        int r = thaw_path(mount, makedev(maj, min));
        if (r > 0) {
            hv_info("thawed %s", mount);
            thawed++;
        } else if (r < 0) {
            hv_warn("%s: cannot thaw: %s", mount,
                    r == -ESTALE ? "a different filesystem is mounted there now" : strerror(-r));
        }
    }
    json_decref(root);
    for (i = 0; i < extra_count; i++) {
        int r = thaw_path(extra[i], 0);
        if (r > 0) {
            hv_info("thawed %s", extra[i]);
            thawed++;
        } else if (r < 0) {
            hv_warn("%s: cannot thaw: %s", extra[i], strerror(-r));
        }
    }
    if (unlink(path) < 0 && errno != ENOENT)
        return hv_err_errno(err, path, "unlink");
    return thawed;
}
