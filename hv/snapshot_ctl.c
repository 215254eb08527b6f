/*
 * hvctl's checkpoint and backup commands.
 *
 * checkpoint create|list|show|delete|apply and backup create are requests to
 * hvstord (the disks are its). backup verify and restore read a backup
 * directory and need no daemon: they run here, with snapshot/ directly.
 */
#include "hv.h"
#include "snapshot.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static const char checkpoint_usage[] =
    "usage: hvctl checkpoint create VM [--name NAME] [--consistency app|crash]\n"
    "       hvctl checkpoint list VM\n"
    "       hvctl checkpoint show VM NAME\n"
    "       hvctl checkpoint delete VM NAME\n"
    "       hvctl checkpoint apply VM NAME\n"
    "\n"
    "A checkpoint is one instant of all the VM's writable disks (VHD only): each\n"
    "disk's chain gets a differencing child, and the image below it keeps the\n"
    "disk as it was. --consistency app (the default when the VM has a guest\n"
    "agent) freezes the guest's filesystems for the instant and fails, changing\n"
    "nothing, when the agent does not answer; crash does without the agent.\n"
    "Default NAME: cp-YYYYmmdd-HHMMSS (UTC).\n"
    "delete merges the newest checkpoint's child back while the guest runs.\n"
    "apply reverts the disks to the checkpoint (what was written since is\n"
    "lost, newer checkpoints too); the disks pause meanwhile and the guest gets\n"
    "a unit attention (medium may have changed).\n";

static const char backup_usage[] =
    "usage: hvctl backup create VM --to DIR [--incremental] [--consistency app|crash]\n"
    "                             [--max-rate SIZE] [-p]\n"
    "       hvctl backup verify DIR\n"
    "       hvctl backup restore DIR --to DIR2 [--seq N]\n"
    "\n"
    "create: back up the running VM's writable disks into DIR (made if missing):\n"
    "  N-cC-sS.vhd per disk and N.manifest.json (xxh3-128 per 64 KiB block).\n"
    "  --incremental writes only the blocks changed since the newest backup in\n"
    "  DIR (a differencing VHD over it), or falls back to a full one and says\n"
    "  why. --max-rate SIZE: read at most SIZE bytes per second (e.g. 50M), so\n"
    "  that the guest keeps most of the device. -p shows how much has been\n"
    "  written so far.\n"
    "  A run that was interrupted (disk full, hvstord killed) is cleaned up by\n"
    "  the next one, which says what it removed.\n"
    "verify: rehash every block of every backup in DIR against its manifest and\n"
    "  check each file; exit 1 naming the file when anything differs.\n"
    "restore: write DIR2/cC-sS.vhd, one standalone dynamic VHD per disk, as the\n"
    "  disk read at backup N (default: the newest).\n";

struct cli {
    const char *socket_path;
    bool is_json;
    int timeout_ms;
};

/* Send `req` (consumed): 0 with the result (caller frees), 1 on failure
 * (the daemon's sentence printed). */
static int call(const struct cli *cli, json_t *req, int timeout_ms, json_t **result)
{
    return hv_control_request(cli->socket_path, req, timeout_ms, cli->is_json, result);
}

static const char *str(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static long long num(const json_t *o, const char *key)
{
    return (long long)json_integer_value(json_object_get(o, key));
}

static void print_checkpoint(const json_t *cp)
{
    size_t i;
    json_t *dk;
    printf("checkpoint %s of VM %s, %s: %s-consistent", str(cp, "name"), str(cp, "vm"),
           str(cp, "created"), str(cp, "consistency"));
    if (str(cp, "why")[0] && strcmp(str(cp, "consistency"), "app") != 0)
        printf(" (%s)", str(cp, "why"));
    printf(", guest I/O held %.3f ms\n", json_number_value(json_object_get(cp, "hold_ms")));
    json_array_foreach(json_object_get(cp, "disks"), i, dk)
        printf("  c%lld-s%lld: %s\n    now writing to %s\n", num(dk, "controller"),
               num(dk, "slot"), str(dk, "path"), str(dk, "child"));
    if (str(cp, "recovered")[0])
        printf("  recovered: %s\n", str(cp, "recovered"));
}

/* ------------------------------------------------------- checkpoint */

static int cmd_checkpoint(const struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"name", required_argument, NULL, 'n'},
        {"consistency", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *name = NULL;
    const char *consistency = NULL;
    json_t *result = NULL;
    int c;

    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        fputs(checkpoint_usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    const char *verb = argv[0];
    if (strcmp(verb, "create") && strcmp(verb, "list") && strcmp(verb, "show") &&
        strcmp(verb, "delete") && strcmp(verb, "apply"))
        return hv_cli_usage_error(checkpoint_usage, "unknown command 'checkpoint %s'", verb);
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'n':
            name = optarg;
            break;
        case 'c':
            if (strcmp(optarg, "app") && strcmp(optarg, "crash"))
                return hv_cli_usage_error(checkpoint_usage, "--consistency '%s': app or crash",
                                          optarg);
            consistency = optarg;
            break;
        case 'h':
            fputs(checkpoint_usage, stdout);
            return 0;
        default:
            fputs(checkpoint_usage, stderr);
            return 2;
        }
    }
    int left = argc - optind;
    char **args = argv + optind;
    if (strcmp(verb, "create") != 0 && (name || consistency))
        return hv_cli_usage_error(checkpoint_usage, "--name/--consistency belong to 'checkpoint "
                                                    "create'");
    bool wants_name = !strcmp(verb, "show") || !strcmp(verb, "delete") || !strcmp(verb, "apply");
    if (left != (wants_name ? 2 : 1))
        return hv_cli_usage_error(checkpoint_usage, "checkpoint %s needs %s", verb,
                                  wants_name ? "VM and NAME" : "exactly one VM");
    char op[32];
    snprintf(op, sizeof(op), "checkpoint.%s", verb);
    json_t *req = json_pack("{s:s, s:s}", "op", op, "vm", args[0]);
    if (wants_name)
        json_object_set_new(req, "name", json_string(args[1]));
    if (name)
        json_object_set_new(req, "name", json_string(name));
    if (consistency)
        json_object_set_new(req, "consistency", json_string(consistency));
    /* A merge or an agent's freeze may take long: no limit unless asked. */
    bool is_quick = !strcmp(verb, "list") || !strcmp(verb, "show");
    int ret = call(cli, req,
                   cli->timeout_ms >= 0 ? cli->timeout_ms
                   : is_quick           ? 60000
                                        : 0,
                   &result);
    if (ret)
        return ret;
    if (cli->is_json) {
        hv_json_print(stdout, result);
    } else if (!strcmp(verb, "list")) {
        size_t i;
        json_t *cp;
        printf("%-28s %-21s %-6s %5s  %s\n", "NAME", "CREATED (UTC)", "KIND", "DISKS", "HOLD ms");
        json_array_foreach(result, i, cp)
            printf("%-28s %-21s %-6s %5zu  %.3f\n", str(cp, "name"), str(cp, "created"),
                   str(cp, "consistency"), json_array_size(json_object_get(cp, "disks")),
                   json_number_value(json_object_get(cp, "hold_ms")));
    } else if (!strcmp(verb, "delete")) {
        printf("checkpoint %s of VM %s merged and deleted (guest I/O held %.3f ms)\n",
               str(result, "name"), str(result, "vm"),
               json_number_value(json_object_get(result, "hold_ms")));
        if (str(result, "recovered")[0])
            printf("  recovered: %s\n", str(result, "recovered"));
    } else if (!strcmp(verb, "apply")) {
        printf("VM %s is back at checkpoint %s (%s)\n", str(result, "vm"), str(result, "name"),
               str(result, "created"));
    } else {
        print_checkpoint(result);
    }
    json_decref(result);
    return 0;
}

/* ----------------------------------------------------------- backup */

/* -p: what the backup has written so far, from the files its journal
 * (backup.lock) lists, once a second on stderr. */
struct progress {
    char dir[PATH_MAX];
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool is_done;
    uint64_t started_ns;
};

static uint64_t written_so_far(const char *dir)
{
    char path[PATH_MAX + 32];
    json_t *lock = NULL;
    struct hv_err err = {0};
    uint64_t total = 0;
    size_t i;
    json_t *f;

    snprintf(path, sizeof(path), "%s/backup.lock", dir);
    if (hv_json_read_file(path, &lock, &err) < 0)
        return 0;
    json_array_foreach(json_object_get(lock, "files"), i, f)
    {
        struct stat st;
        const char *name = json_string_value(f);
        snprintf(path, sizeof(path), "%s/%s", dir, name ? name : "");
        if (name && !strchr(name, '/') && stat(path, &st) == 0)
            total += (uint64_t)st.st_size;
    }
    json_decref(lock);
    return total;
}

static void *progress_main(void *arg)
{
    struct progress *p = arg;
    pthread_mutex_lock(&p->lock);
    while (!p->is_done) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&p->cond, &p->lock, &ts);
        if (p->is_done)
            break;
        char size[32];
        fprintf(stderr, "\rbackup: %s written, %.0f s ",
                hv_format_size(written_so_far(p->dir), size), (hv_now_ns() - p->started_ns) / 1e9);
        fflush(stderr);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static int absolute_dir(const char *path, char out[PATH_MAX])
{
    char parent[PATH_MAX];
    char base[PATH_MAX];
    if (realpath(path, out))
        return 0;
    if (errno != ENOENT)
        return -errno;
    /* Not made yet: its parent must exist. */
    snprintf(parent, sizeof(parent), "%s", path);
    char *slash = strrchr(parent, '/');
    if (slash && slash[1] == 0) {
        *slash = 0;
        slash = strrchr(parent, '/');
    }
    snprintf(base, sizeof(base), "%s", slash ? slash + 1 : parent);
    if (slash == parent)
        snprintf(parent, sizeof(parent), "/");
    else if (slash)
        *slash = 0;
    else
        snprintf(parent, sizeof(parent), ".");
    char real[PATH_MAX];
    if (!realpath(parent, real))
        return -errno;
    if ((size_t)snprintf(out, PATH_MAX, "%s/%s", real, base) >= PATH_MAX)
        return -ENAMETOOLONG;
    return 0;
}

static void print_backup(const json_t *r)
{
    char rd[32], wr[32];
    size_t i;
    json_t *dk;
    const json_t *cp = json_object_get(r, "checkpoint");
    printf("backup #%lld of VM %s into %s: %s, %s-consistent, %.1f s\n", num(r, "seq"),
           str(r, "vm"), str(r, "dir"),
           json_is_true(json_object_get(r, "incremental")) ? "incremental" : "full",
           str(cp, "consistency"), json_number_value(json_object_get(r, "seconds")));
    if (str(r, "why_full")[0])
        printf("  full because: %s\n", str(r, "why_full"));
    if (str(cp, "why")[0] && strcmp(str(cp, "consistency"), "app") != 0)
        printf("  crash-consistent because: %s\n", str(cp, "why"));
    if (str(r, "recovered")[0])
        printf("  recovered: %s\n", str(r, "recovered"));
    json_array_foreach(json_object_get(r, "disks"), i, dk)
        printf("  c%lld-s%lld: %s  read %s, written %s\n", num(dk, "controller"), num(dk, "slot"),
               str(dk, "file"), hv_format_size((uint64_t)num(dk, "bytes_read"), rd),
               hv_format_size((uint64_t)num(dk, "bytes_written"), wr));
}

static int backup_create(const struct cli *cli, const char *vm, const char *to,
                         bool is_incremental, const char *consistency, bool is_progress_shown,
                         uint64_t max_rate)
{
    char dir[PATH_MAX];
    json_t *result = NULL;
    int ret = absolute_dir(to, dir);

    if (ret < 0) {
        fprintf(stderr, "hvctl: %s: %s\n", to, strerror(-ret));
        return 1;
    }
    json_t *req = json_pack("{s:s, s:s, s:s, s:b, s:b}", "op", "backup.create", "vm", vm, "dir",
                            dir, "incremental", is_incremental, "progress", is_progress_shown);
    if (consistency)
        json_object_set_new(req, "consistency", json_string(consistency));
    if (max_rate)
        json_object_set_new(req, "max_rate", json_integer((json_int_t)max_rate));
    struct progress prog = {.is_done = false, .started_ns = hv_now_ns()};
    pthread_t thread;
    bool has_thread = false;
    if (is_progress_shown) {
        snprintf(prog.dir, sizeof(prog.dir), "%s", dir);
        pthread_mutex_init(&prog.lock, NULL);
        pthread_cond_init(&prog.cond, NULL);
        has_thread = pthread_create(&thread, NULL, progress_main, &prog) == 0;
    }
    ret = call(cli, req, cli->timeout_ms >= 0 ? cli->timeout_ms : 0, &result);
    if (has_thread) {
        pthread_mutex_lock(&prog.lock);
        prog.is_done = true;
        pthread_cond_signal(&prog.cond);
        pthread_mutex_unlock(&prog.lock);
        pthread_join(thread, NULL);
        fprintf(stderr, "\n");
    }
    if (ret)
        return ret;
    if (cli->is_json)
        hv_json_print(stdout, result);
    else
        print_backup(result);
    json_decref(result);
    return 0;
}

static int backup_verify(const struct cli *cli, const char *dir)
{
    json_t *report = NULL;
    struct hv_err err = {0};
    int ret = snap_backup_verify(dir, &report, &err);
    size_t i;
    json_t *dk;

    if (cli->is_json && report)
        hv_json_print(stdout, report);
    else if (report)
        json_array_foreach(json_object_get(report, "disks"), i, dk)
        {
            bool is_ok = num(dk, "blocks_bad") == 0 && !strcmp(str(dk, "check"), "clean");
            printf("%s/%s: %s (%lld blocks match, %lld do not; vhd check: %s)\n", dir,
                   str(dk, "file"), is_ok ? "ok" : "BAD", num(dk, "blocks_ok"),
                   num(dk, "blocks_bad"), str(dk, "check"));
        }
    if (ret < 0) {
        /* Name the files that failed, not only the directory. */
        json_array_foreach(json_object_get(report, "disks"), i,
                           dk) if (num(dk, "blocks_bad") || strcmp(str(dk, "check"), "clean") != 0)
        {
            if (json_object_get(dk, "first_bad_offset"))
                fprintf(stderr,
                        "hvctl: %s/%s: %lld blocks do not match the manifest "
                        "(first at offset %lld)\n",
                        dir, str(dk, "file"), num(dk, "blocks_bad"), num(dk, "first_bad_offset"));
            else
                fprintf(stderr, "hvctl: %s/%s: vhd check says %s\n", dir, str(dk, "file"),
                        str(dk, "check"));
        }
        fprintf(stderr, "hvctl: %s\n", hv_err_msg(&err, ret));
    }
    json_decref(report);
    return ret < 0 ? 1 : 0;
}

static int backup_restore(const struct cli *cli, const char *dir, const char *to, int seq)
{
    struct hv_err err = {0};
    int used = seq;
    int ret;

    if (used < 0)
        snap_backup_newest(dir, &used); /* none or unreadable: the restore says so */
    ret = snap_backup_restore(dir, seq, to, &err);

    if (ret < 0) {
        fprintf(stderr, "hvctl: %s\n", hv_err_msg(&err, ret));
        return 1;
    }
    char path[PATH_MAX + 64];
    json_t *man = NULL;
    json_t *files = json_array();
    snprintf(path, sizeof(path), "%s/%d.manifest.json", dir, used);
    if (hv_json_read_file(path, &man, &err) == 0) {
        size_t i;
        json_t *dk;
        json_array_foreach(json_object_get(man, "disks"), i, dk)
        {
            char name[64];
            snprintf(name, sizeof(name), "c%lld-s%lld.vhd", num(dk, "controller"),
                     num(dk, "slot"));
            json_array_append_new(files, json_string(name));
        }
    }
    json_t *out = json_pack("{s:s, s:s, s:i, s:s, s:o}", "dir", dir, "to", to, "seq", used,
                            "checkpoint_time", str(man, "checkpoint_time"), "files", files);
    if (cli->is_json) {
        hv_json_print(stdout, out);
    } else {
        size_t i;
        json_t *f;
        printf("backup #%d of %s (checkpoint %s) restored into %s:\n", used, dir,
               str(man, "checkpoint_time"), to);
        json_array_foreach(files, i, f) printf("  %s/%s\n", to, json_string_value(f));
    }
    json_decref(out);
    json_decref(man);
    return 0;
}

static int cmd_backup(const struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"to", required_argument, NULL, 't'},
        {"incremental", no_argument, NULL, 'i'},
        {"consistency", required_argument, NULL, 'c'},
        {"progress", no_argument, NULL, 'p'},
        {"seq", required_argument, NULL, 's'},
        {"max-rate", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *to = NULL;
    const char *consistency = NULL;
    bool is_incremental = false;
    bool is_progress_shown = false;
    int seq = -1;
    uint64_t max_rate = 0;
    int c;

    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        fputs(backup_usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    const char *verb = argv[0];
    if (strcmp(verb, "create") && strcmp(verb, "verify") && strcmp(verb, "restore"))
        return hv_cli_usage_error(backup_usage, "unknown command 'backup %s'", verb);
    optind = 1;
    while ((c = getopt_long(argc, argv, "hp", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            to = optarg;
            break;
        case 'i':
            is_incremental = true;
            break;
        case 'c':
            if (strcmp(optarg, "app") && strcmp(optarg, "crash"))
                return hv_cli_usage_error(backup_usage, "--consistency '%s': app or crash",
                                          optarg);
            consistency = optarg;
            break;
        case 'p':
            is_progress_shown = true;
            break;
        case 'r':
            if (hv_parse_size(optarg, &max_rate) < 0 || max_rate == 0)
                return hv_cli_usage_error(backup_usage,
                                          "--max-rate '%s': bytes per second (e.g. 50M)", optarg);
            break;
        case 's': {
            uint64_t v;
            if (hv_parse_u64(optarg, &v) < 0 || v > 1000000)
                return hv_cli_usage_error(backup_usage, "--seq '%s': a backup number", optarg);
            seq = (int)v;
            break;
        }
        case 'h':
            fputs(backup_usage, stdout);
            return 0;
        default:
            fputs(backup_usage, stderr);
            return 2;
        }
    }
    int left = argc - optind;
    char **args = argv + optind;
    if (left != 1)
        return hv_cli_usage_error(backup_usage, "backup %s needs exactly one %s", verb,
                                  !strcmp(verb, "create") ? "VM" : "DIR");
    if (!strcmp(verb, "create")) {
        if (!to)
            return hv_cli_usage_error(backup_usage, "backup create needs --to DIR");
        if (seq >= 0)
            return hv_cli_usage_error(backup_usage, "--seq belongs to 'backup restore'");
        return backup_create(cli, args[0], to, is_incremental, consistency, is_progress_shown,
                             max_rate);
    }
    if (is_incremental || consistency || is_progress_shown || max_rate)
        return hv_cli_usage_error(backup_usage, "--incremental/--consistency/-p belong to 'backup "
                                                "create'");
    if (!strcmp(verb, "verify")) {
        if (to || seq >= 0)
            return hv_cli_usage_error(backup_usage, "backup verify takes only DIR");
        return backup_verify(cli, args[0]);
    }
    if (!to)
        return hv_cli_usage_error(backup_usage, "backup restore needs --to DIR2");
    return backup_restore(cli, args[0], to, seq);
}

bool hv_snapshot_cli_wants(int argc, char **argv)
{
    return argc >= 1 && (!strcmp(argv[0], "checkpoint") || !strcmp(argv[0], "backup"));
}

int hv_snapshot_cli(const char *socket_path, bool is_json, int timeout_ms, int argc, char **argv)
{
    struct cli cli = {.socket_path = socket_path, .is_json = is_json, .timeout_ms = timeout_ms};
    if (!strcmp(argv[0], "checkpoint"))
        return cmd_checkpoint(&cli, argc - 1, argv + 1);
    return cmd_backup(&cli, argc - 1, argv + 1);
}
