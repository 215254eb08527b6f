/*
 * hvctl — control hvstord: VMs, their controllers and disks.
 *
 * Every command is one JSON request over the daemon's Unix socket; --json
 * prints the daemon's answer as is, otherwise a short text for people.
 * Errors: the daemon's sentence on stderr and exit status 1 (2 for usage).
 */
#include "hv.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

static const char *socket_path;
static char socket_buf[4096 + 32];
static bool is_json;
static int timeout_ms = 60000;
static bool is_timeout_given;

static const char main_usage[] =
    "usage: hvctl [--state-dir DIR | --socket PATH] [--json] COMMAND ...\n"
    "\n"
    "Commands:\n"
    "  status                                   the daemon's portal and counts\n"
    "  vm create NAME [--initiator IQN]... [--chap USER:SECRET]\n"
    "                 [--mutual-chap USER:SECRET] [--controllers N]\n"
    "  vm list\n"
    "  vm show NAME                             targets, LUNs and their iscsi:// URLs\n"
    "  vm set NAME [--initiator IQN]... [--chap USER:SECRET | --no-chap]\n"
    "              [--mutual-chap USER:SECRET]  change access; drops sessions\n"
    "  vm delete NAME [--force]                 drops the VM's sessions; --force:\n"
    "                                           even with checkpoints\n"
    "  disk attach VM --controller N --slot M (--vhd PATH | --raw PATH)\n"
    "                 [--read-only] [--create SIZE]\n"
    "  disk detach VM --controller N --slot M\n"
    "  disk resize VM --controller N --slot M SIZE\n"
    "  disk stats VM [--controller N --slot M]\n"
    "  san add NAME --portal ADDR:PORT [--chap USER:SECRET] [--initiator IQN]\n"
    "  san list | san luns NAME [--vm VM]       SANs and their LUNs\n"
    "  disk attach VM --controller N --slot M --lun SAN:TARGET:LUN\n"
    "                 [--full-scsi] [--force]   a whole SAN LUN, for this VM only\n"
    "  disk attach VM --controller N --slot M --device /dev/X\n"
    "                 [--full-scsi] [--force]   a whole local disk (SCSI: SG_IO)\n"
    "  disk takeover VM --controller N --slot M preempt a dead host's reservation\n"
    "  vm zoning VM [--target IQN] [--tid N]    what the SAN admin runs to let it in\n"
    "  vm create ... [--iqn IQN]                the VM's own SAN initiator name\n"
    "  vm create|set ... --agent hvstor-vss:PATH | --agent qemu-ga:PATH | --no-agent\n"
    "                                           the guest agent (app-consistent cuts)\n"
    "  checkpoint create VM [--name NAME] [--consistency app|crash]\n"
    "  checkpoint list VM | show|delete|apply VM NAME\n"
    "  backup create VM --to DIR [--incremental] [--consistency app|crash] [-p]\n"
    "  backup verify DIR | backup restore DIR --to DIR2 [--seq N]   (no daemon needed)\n"
    "\n"
    "Options (anywhere on the line):\n"
    "  --state-dir DIR   talk to the hvstord of DIR (default " HV_DEFAULT_STATE_DIR ")\n"
    "  --socket PATH     talk to this control socket instead\n"
    "  --json            print JSON (the daemon's reply) instead of text\n"
    "  --timeout MS      wait at most MS for an answer (default 60000; checkpoint\n"
    "                    create/delete/apply and backup create: no limit)\n"
    "'hvctl vm --help', 'hvctl disk attach --help' ... explain each command.\n";

static const char vm_usage[] =
    "usage: hvctl vm create NAME [--initiator IQN]... [--chap USER:SECRET]\n"
    "                             [--mutual-chap USER:SECRET] [--controllers N]\n"
    "       hvctl vm list\n"
    "       hvctl vm show NAME\n"
    "       hvctl vm set NAME [--initiator IQN]... [--chap USER:SECRET | --no-chap]\n"
    "                         [--mutual-chap USER:SECRET]\n"
    "                         [--agent hvstor-vss:PATH | --agent qemu-ga:PATH | --no-agent]\n"
    "       hvctl vm delete NAME [--force]\n"
    "\n"
    "vm delete keeps every image. It refuses a VM whose disks have checkpoints\n"
    "(their newest data is in child files the attached images do not name) and\n"
    "says which; --force deletes it anyway and prints the file that holds each\n"
    "disk's newest data. The VM's change-tracking state is removed with it.\n";

static const char vm_set_usage[] =
    "usage: hvctl vm set NAME [--initiator IQN]... [--chap USER:SECRET | --no-chap]\n"
    "                         [--mutual-chap USER:SECRET]\n"
    "\n"
    "Change who may act as the VM's guest. --initiator (repeatable) replaces the\n"
    "whole list; --no-chap turns CHAP off. Sessions logged in under the old rules\n"
    "are dropped (the guest logs in again, under the new ones).\n"
    "--agent SPEC / --no-agent: the guest agent checkpoints and backups ask to\n"
    "freeze the guest's filesystems (PATH: the host end of its Unix socket);\n"
    "changing only the agent keeps the sessions.\n";

static const char vm_create_usage[] =
    "usage: hvctl vm create NAME [--initiator IQN]... [--chap USER:SECRET]\n"
    "                             [--mutual-chap USER:SECRET] [--controllers N]\n"
    "\n"
    "Define a VM. NAME: 1-63 of a-z, 0-9, '-'. Each controller N (0-3) is served\n"
    "as iSCSI target " HV_TARGET_PREFIX ":NAME.cN; slot M is LUN M.\n"
    "  --initiator IQN    an initiator name allowed to log in as this VM's guest\n"
    "                     (repeat for more). Default: what QEMU presents for this\n"
    "                     VM, " HV_QEMU_INITIATOR_PREFIX ":NAME and ...:UUID.\n"
    "  --chap USER:SECRET the initiator must authenticate (secret >= 12 bytes)\n"
    "  --mutual-chap USER:SECRET  the target authenticates itself too\n"
    "  --controllers N    controllers to create now (1-4, default 1; attaching to\n"
    "                     a higher controller adds it)\n"
    "  --agent hvstor-vss:PATH | qemu-ga:PATH\n"
    "                     the guest agent's Unix socket (host side): checkpoints and\n"
    "                     backups are then application-consistent by default\n";

static const char disk_usage[] =
    "usage: hvctl disk attach VM --controller N --slot M (--vhd PATH | --raw PATH)\n"
    "                            [--read-only] [--create SIZE]\n"
    "       hvctl disk detach VM --controller N --slot M\n"
    "       hvctl disk resize VM --controller N --slot M SIZE\n"
    "       hvctl disk stats VM [--controller N --slot M]\n";

static const char disk_attach_usage[] =
    "usage: hvctl disk attach VM --controller N --slot M (--vhd PATH | --raw PATH)\n"
    "                            [--read-only] [--create SIZE]\n"
    "\n"
    "Attach an image to a slot while the guest runs (the guest gets REPORTED\n"
    "LUNS DATA HAS CHANGED). --create SIZE makes a new dynamic VHD at PATH first.\n"
    "--read-only: the guest sees a write-protected disk.\n"
    "Whole LUNs and devices: --lun SAN:TARGET:LUN, --fc-lun TARGET_WWPN:LUN,\n"
    "--device PATH (hvctl disk attach --fc-lun x --help tells more).\n";

static const char disk_detach_usage[] =
    "usage: hvctl disk detach VM --controller N --slot M\n"
    "\n"
    "Remove the disk from the slot while the guest runs; the image is closed once\n"
    "its last request completes.\n";

static const char disk_resize_usage[] =
    "usage: hvctl disk resize VM --controller N --slot M SIZE\n"
    "\n"
    "Change the disk's virtual size online (e.g. 20G); the guest gets CAPACITY\n"
    "DATA HAS CHANGED. Fails clearly if the image's back end cannot resize online.\n";

static const char disk_stats_usage[] =
    "usage: hvctl disk stats VM [--controller N --slot M]\n"
    "\n"
    "Per-disk statistics: commands, bytes, latency histogram, requests in flight.\n";

/* The same message and exit code as the SAN and checkpoint commands give. */
#define usage_error hv_cli_usage_error

static bool wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return true;
    return false;
}

/* ------------------------------------------------------------- output */

static void print_size(uint64_t bytes)
{
    char buf[32];
    printf("%s", hv_format_size(bytes, buf));
}

static void print_vm(const json_t *vm)
{
    const json_t *v;
    size_t i;
    const json_t *chap = json_object_get(vm, "chap");

    printf("VM %s  (uuid %s)\n", json_string_value(json_object_get(vm, "name")),
           json_string_value(json_object_get(vm, "uuid")));
    printf("  initiators:");
    json_array_foreach(json_object_get(vm, "initiators"), i, v)
        printf("%s %s", i ? "," : "", json_string_value(v));
    printf("\n  CHAP: ");
    if (!json_is_true(json_object_get(chap, "enabled")))
        printf("off\n");
    else
        printf("%s, user %s\n", json_is_true(json_object_get(chap, "mutual")) ? "mutual" :
               "one-way", json_string_value(json_object_get(chap, "user")));
    if (json_object_get(vm, "identity")) {
        const json_t *id = json_object_get(vm, "identity");
        const json_t *fc = json_object_get(id, "fc");
        printf("  SAN identity: %s\n", json_string_value(json_object_get(id, "iqn")));
        for (const char *set = "a"; set; set = set[0] == 'a' ? "b" : NULL)
            printf("  FC set %c: WWPN %s  WWNN %s\n", set[0] - 32,
                   json_string_value(json_object_get(json_object_get(fc, set), "wwpn")),
                   json_string_value(json_object_get(json_object_get(fc, set), "wwnn")));
    }
    if (json_is_object(json_object_get(vm, "agent"))) {
        const json_t *a = json_object_get(vm, "agent");
        const char *version = json_string_value(json_object_get(a, "version"));
        const char *error = json_string_value(json_object_get(a, "error"));
        printf("  guest agent: %s  ", json_string_value(json_object_get(a, "spec")));
        if (json_is_true(json_object_get(a, "answers")))
            printf("answers (%s)\n", version ? version : "?");
        else if (json_is_null(json_object_get(a, "answers")))
            printf("%s\n", error ? error : "not asked");
        else
            printf("does not answer: %s\n", error ? error : "?");
    }
    if (json_array_size(json_object_get(vm, "checkpoints"))) {
        printf("  checkpoints:");
        json_array_foreach(json_object_get(vm, "checkpoints"), i, v)
            printf(" %s", json_string_value(v));
        printf("\n");
    }
    json_array_foreach(json_object_get(vm, "controllers"), i, v) {
        const json_t *lun;
        size_t j;
        printf("  controller %lld: %s\n",
               (long long)json_integer_value(json_object_get(v, "index")),
               json_string_value(json_object_get(v, "target")));
        if (json_array_size(json_object_get(v, "luns")) == 0)
            printf("    (no disks)\n");
        json_array_foreach(json_object_get(v, "luns"), j, lun) {
            printf("    LUN %-2lld %-3s %s%s  ",
                   (long long)json_integer_value(json_object_get(lun, "lun")),
                   json_string_value(json_object_get(lun, "kind")),
                   json_string_value(json_object_get(lun, "path")),
                   json_is_true(json_object_get(lun, "read_only")) ? " (read-only)" : "");
            if (json_object_get(lun, "passthru")) {
                const json_t *pt = json_object_get(lun, "passthru");
                const char *state = json_string_value(json_object_get(pt, "state"));
                const char *device = json_string_value(json_object_get(pt, "device"));
                printf("%s %s%s%s%s  %s\n",
                       json_string_value(json_object_get(pt, "designator")), state,
                       json_is_true(json_object_get(pt, "full_scsi")) ? " full-scsi" : "",
                       device ? " SG_IO " : "", device ? device : "",
                       json_string_value(json_object_get(lun, "url")));
                if (strcmp(state, "ready") != 0)
                    printf("      %s\n", json_string_value(json_object_get(pt, "why")));
            } else if (json_object_get(lun, "size_bytes")) {
                const char *top = json_string_value(json_object_get(lun, "top"));
                print_size((uint64_t)json_integer_value(json_object_get(lun, "size_bytes")));
                printf("  %s\n", json_string_value(json_object_get(lun, "url")));
                if (top && strcmp(top, json_string_value(json_object_get(lun, "path"))))
                    printf("      top: %s\n", top);
            } else {
                printf("OFFLINE: %s\n", json_string_value(json_object_get(lun, "error")));
            }
        }
    }
}

/* ------------------------------------------------------------ requests */

/* Send `req` (consumed); on success print with `print` or as JSON. */
static int call(json_t *req, void (*print)(const json_t *result))
{
    json_t *result;

    if (hv_control_request(socket_path, req, timeout_ms, is_json, &result))
        return 1;
    if (is_json)
        hv_json_print(stdout, result);
    else if (print)
        print(result);
    json_decref(result);
    return 0;
}

static void print_status(const json_t *r)
{
    printf("hvstord %s (pid %lld): portal %s, state dir %s, %lld VMs\n",
           json_string_value(json_object_get(r, "version")),
           (long long)json_integer_value(json_object_get(r, "pid")),
           json_string_value(json_object_get(r, "portal")),
           json_string_value(json_object_get(r, "state_dir")),
           (long long)json_integer_value(json_object_get(r, "vms")));
}

static void print_list(const json_t *r)
{
    const json_t *v;
    size_t i;

    printf("%-24s %-36s %11s %5s %7s\n", "NAME", "UUID", "CONTROLLERS", "DISKS", "OFFLINE");
    json_array_foreach(r, i, v)
        printf("%-24s %-36s %11lld %5lld %7lld\n", json_string_value(json_object_get(v, "name")),
               json_string_value(json_object_get(v, "uuid")),
               (long long)json_integer_value(json_object_get(v, "controllers")),
               (long long)json_integer_value(json_object_get(v, "disks")),
               (long long)json_integer_value(json_object_get(v, "offline_disks")));
}

static void print_deleted(const json_t *r)
{
    size_t i;
    json_t *dk;
    printf("VM %s deleted\n", json_string_value(json_object_get(r, "deleted")));
    json_array_foreach(json_object_get(r, "newest_data"), i, dk)
        printf("  c%lld-s%lld: its newest data is in %s (a differencing VHD over %s)\n",
               (long long)json_integer_value(json_object_get(dk, "controller")),
               (long long)json_integer_value(json_object_get(dk, "slot")),
               json_string_value(json_object_get(dk, "newest")),
               json_string_value(json_object_get(dk, "attached")));
}

static long long get_int(const json_t *obj, const char *key)
{
    return (long long)json_integer_value(json_object_get(obj, key));
}

static void print_stats(const json_t *r)
{
    static const char *const shown[] = {"controller", "lun", "path", "state", "commands",
                                        "reads", "writes", "other", "errors", "bytes_read",
                                        "bytes_written", "inflight", "latency_histogram_us"};
    const json_t *v;
    size_t i;

    printf("VM %s\n", json_string_value(json_object_get(r, "vm")));
    json_array_foreach(json_object_get(r, "disks"), i, v) {
        char rd[32];
        char wr[32];
        const json_t *bucket;
        const char *key;
        const json_t *value;
        size_t j;

        printf("  controller %lld LUN %lld: %s (%s)\n", get_int(v, "controller"),
               get_int(v, "lun"), json_string_value(json_object_get(v, "path")),
               json_string_value(json_object_get(v, "state")));
        if (!json_object_get(v, "commands"))
            continue;
        printf("    commands %lld: reads %lld, writes %lld, other %lld, errors %lld\n",
               get_int(v, "commands"), get_int(v, "reads"), get_int(v, "writes"),
               get_int(v, "other"), get_int(v, "errors"));
        printf("    bytes read %s, written %s; in flight %lld\n",
               hv_format_size((uint64_t)get_int(v, "bytes_read"), rd),
               hv_format_size((uint64_t)get_int(v, "bytes_written"), wr), get_int(v, "inflight"));
        if (json_array_size(json_object_get(v, "latency_histogram_us"))) {
            printf("    latency:");
            json_array_foreach(json_object_get(v, "latency_histogram_us"), j, bucket) {
                const json_t *le = json_object_get(bucket, "le");
                if (json_is_integer(le))
                    printf(" <=%lldus:%lld", (long long)json_integer_value(le),
                           get_int(bucket, "count"));
                else
                    printf(" more:%lld", get_int(bucket, "count"));
            }
            printf("\n");
        }
        /* Whatever else the disk reports, as is. */
        json_object_foreach((json_t *)v, key, value) {
            bool is_shown = false;
            for (size_t k = 0; k < HV_ARRAY_SIZE(shown); k++)
                is_shown |= !strcmp(key, shown[k]);
            if (is_shown)
                continue;
            char *text = json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT);
            printf("    %s: %s\n", key, text ? text : "?");
            free(text);
        }
    }
}

static int parse_int_arg(const char *opt, const char *text, int max, int *out)
{
    uint64_t v;
    if (hv_parse_u64(text, &v) < 0 || v > (uint64_t)max) {
        fprintf(stderr, "hvctl: %s '%s': expected a number from 0 to %d\n", opt, text, max);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int cmd_vm(int argc, char **argv)
{
    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        fputs(vm_usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    const char *verb = argv[0];
    if (!strcmp(verb, "create") || !strcmp(verb, "set")) {
        bool is_set = !strcmp(verb, "set");
        const char *help = is_set ? vm_set_usage : vm_create_usage;
        static const struct option opts[] = {
            {"initiator", required_argument, NULL, 'i'},
            {"chap", required_argument, NULL, 'c'},
            {"mutual-chap", required_argument, NULL, 'm'},
            {"controllers", required_argument, NULL, 'n'},
            {"no-chap", no_argument, NULL, 'N'},
            {"iqn", required_argument, NULL, 'Q'},
            {"agent", required_argument, NULL, 'A'},
            {"no-agent", no_argument, NULL, 'X'},
            {"help", no_argument, NULL, 'h'},
            {NULL, 0, NULL, 0},
        };
        json_t *initiators = json_array();
        json_t *req = json_pack("{s:s}", "op", is_set ? "vm.set" : "vm.create");
        int c;
        int controllers;
        int ret = -1;
        optind = 1;
        while (ret < 0 && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
            switch (c) {
            case 'i':
                json_array_append_new(initiators, json_string(optarg));
                break;
            case 'c':
                json_object_set_new(req, "chap", json_string(optarg));
                break;
            case 'Q':
                if (is_set)
                    ret = usage_error(help, "%s", "--iqn belongs to 'vm create'");
                else
                    json_object_set_new(req, "iqn", json_string(optarg));
                break;
            case 'm':
                json_object_set_new(req, "mutual_chap", json_string(optarg));
                break;
            case 'A': {
                /* The daemon's working directory is not ours. */
                const char *colon = strchr(optarg, ':');
                char abs[PATH_MAX + 32];
                if (!colon || (strncmp(optarg, "hvstor-vss:", 11) &&
                               strncmp(optarg, "qemu-ga:", 8)) || !colon[1]) {
                    ret = usage_error(help, "--agent '%s': hvstor-vss:PATH or qemu-ga:PATH",
                                      optarg);
                    break;
                }
                char path[PATH_MAX];
                if (colon[1] != '/' && realpath(".", path))
                    snprintf(abs, sizeof(abs), "%.*s%s/%s", (int)(colon - optarg + 1), optarg,
                             path, colon + 1);
                else
                    snprintf(abs, sizeof(abs), "%s", optarg);
                json_object_set_new(req, "agent", json_string(abs));
                break;
            }
            case 'X':
                if (!is_set)
                    ret = usage_error(help, "%s", "--no-agent belongs to 'vm set'");
                else
                    json_object_set_new(req, "no_agent", json_true());
                break;
            case 'N':
                if (!is_set)
                    ret = usage_error(help, "%s", "--no-chap belongs to 'vm set'");
                else
                    json_object_set_new(req, "no_chap", json_true());
                break;
            case 'n':
                if (is_set)
                    ret = usage_error(help, "%s", "--controllers belongs to 'vm create'");
                else if (parse_int_arg("--controllers", optarg, HV_MAX_CONTROLLERS,
                                       &controllers) < 0)
                    ret = 2;
                else
                    json_object_set_new(req, "controllers", json_integer(controllers));
                break;
            case 'h':
                fputs(help, stdout);
                ret = 0;
                break;
            default:
                fputs(help, stderr);
                ret = 2;
                break;
            }
        }
        if (ret < 0 && optind != argc - 1)
            ret = usage_error(help, "vm %s needs exactly one NAME", verb);
        if (ret >= 0) {
            json_decref(initiators);
            json_decref(req);
            return ret;
        }
        json_object_set_new(req, "name", json_string(argv[optind]));
        if (json_array_size(initiators))
            json_object_set_new(req, "initiators", initiators);
        else
            json_decref(initiators);
        return call(req, print_vm);
    }
    if (wants_help(argc, argv)) {
        fputs(vm_usage, stdout);
        return 0;
    }
    if (!strcmp(verb, "list")) {
        if (argc != 1)
            return usage_error(vm_usage, "vm list takes no argument, got '%s'", argv[1]);
        return call(json_pack("{s:s}", "op", "vm.list"), print_list);
    }
    if (!strcmp(verb, "delete")) {
        const char *name = NULL;
        bool is_forced = false;
        for (int i = 1; i < argc; i++) {
            if (!strcmp(argv[i], "--force"))
                is_forced = true;
            else if (argv[i][0] == '-')
                return usage_error(vm_usage, "vm delete: unknown option '%s'", argv[i]);
            else if (name)
                return usage_error(vm_usage, "vm delete needs exactly one NAME");
            else
                name = argv[i];
        }
        if (!name)
            return usage_error(vm_usage, "vm delete needs exactly one NAME");
        return call(json_pack("{s:s, s:s, s:b}", "op", "vm.delete", "name", name, "force",
                              is_forced),
                    print_deleted);
    }
    if (!strcmp(verb, "show")) {
        if (argc != 2)
            return usage_error(vm_usage, "vm %s needs exactly one NAME", verb);
        return call(json_pack("{s:s, s:s}", "op", "vm.show", "name", argv[1]), print_vm);
    }
    return usage_error(vm_usage, "unknown command 'vm %s'", verb);
}

/* Absolute path for the daemon, whose working directory is not ours; the
 * file may not exist yet (--create). */
static int absolute_path(const char *path, char out[PATH_MAX])
{
    char dir_copy[PATH_MAX];
    char base_copy[PATH_MAX];
    char dir_real[PATH_MAX];

    if (realpath(path, out))
        return 0;
    if (errno != ENOENT || strlen(path) >= PATH_MAX)
        return -errno;
    snprintf(dir_copy, sizeof(dir_copy), "%s", path);
    snprintf(base_copy, sizeof(base_copy), "%s", path);
    if (!realpath(dirname(dir_copy), dir_real))
        return -errno;
    if ((size_t)snprintf(out, PATH_MAX, "%s/%s", dir_real, basename(base_copy)) >= PATH_MAX)
        return -ENAMETOOLONG;
    return 0;
}

static int cmd_disk(int argc, char **argv)
{
    static const struct option opts[] = {
        {"controller", required_argument, NULL, 'c'},
        {"slot", required_argument, NULL, 's'},
        {"vhd", required_argument, NULL, 'v'},
        {"raw", required_argument, NULL, 'r'},
        {"read-only", no_argument, NULL, 'o'},
        {"create", required_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *verb;
    const char *help;
    const char *kind = NULL;
    const char *path = NULL;
    const char *create_size = NULL;
    char abs_path[PATH_MAX];
    int controller = -1;
    int slot = -1;
    bool is_read_only = false;
    json_t *req;
    int c;

    if (argc < 1 || !strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        fputs(disk_usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    verb = argv[0];
    if (!strcmp(verb, "attach"))
        help = disk_attach_usage;
    else if (!strcmp(verb, "detach"))
        help = disk_detach_usage;
    else if (!strcmp(verb, "resize"))
        help = disk_resize_usage;
    else if (!strcmp(verb, "stats"))
        help = disk_stats_usage;
    else
        return usage_error(disk_usage, "unknown command 'disk %s'", verb);
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (parse_int_arg("--controller", optarg, HV_MAX_CONTROLLERS - 1, &controller) < 0)
                return 2;
            break;
        case 's':
            if (parse_int_arg("--slot", optarg, HV_SLOTS_PER_CONTROLLER - 1, &slot) < 0)
                return 2;
            break;
        case 'v':
        case 'r':
            if (kind)
                return usage_error(help, "%s", "give one of --vhd or --raw");
            kind = c == 'v' ? "vhd" : "raw";
            path = optarg;
            break;
        case 'o':
            is_read_only = true;
            break;
        case 'C':
            create_size = optarg;
            break;
        case 'h':
            fputs(help, stdout);
            return 0;
        default:
            fputs(help, stderr);
            return 2;
        }
    }
    if (optind >= argc)
        return usage_error(help, "disk %s needs the VM name", verb);
    const char *vm = argv[optind++];
    if (strcmp(verb, "attach") != 0 && (kind || is_read_only || create_size))
        return usage_error(help, "--vhd/--raw/--read-only/--create belong to 'disk attach', "
                           "not 'disk %s'", verb);
    if (strcmp(verb, "stats") != 0 && (controller < 0 || slot < 0))
        return usage_error(help, "disk %s needs --controller N and --slot M", verb);
    req = json_pack("{s:s}", "vm", vm);
    if (controller >= 0)
        json_object_set_new(req, "controller", json_integer(controller));
    if (slot >= 0)
        json_object_set_new(req, "slot", json_integer(slot));

    if (!strcmp(verb, "attach")) {
        if (!kind) {
            json_decref(req);
            return usage_error(help, "%s", "disk attach needs --vhd PATH or --raw PATH");
        }
        if (optind != argc) {
            json_decref(req);
            return usage_error(help, "unexpected argument '%s'", argv[optind]);
        }
        int ret = absolute_path(path, abs_path);
        if (ret < 0) {
            json_decref(req);
            fprintf(stderr, "hvctl: %s: %s\n", path, strerror(-ret));
            return 1;
        }
        json_object_set_new(req, "op", json_string("disk.attach"));
        json_object_set_new(req, "kind", json_string(kind));
        json_object_set_new(req, "path", json_string(abs_path));
        json_object_set_new(req, "read_only", json_boolean(is_read_only));
        if (create_size)
            json_object_set_new(req, "create_size", json_string(create_size));
        return call(req, print_vm);
    }
    if (!strcmp(verb, "resize")) {
        if (optind != argc - 1) {
            json_decref(req);
            return usage_error(help, "%s", "disk resize needs exactly one SIZE");
        }
        json_object_set_new(req, "op", json_string("disk.resize"));
        json_object_set_new(req, "size", json_string(argv[optind]));
        return call(req, print_vm);
    }
    if (optind != argc) {
        json_decref(req);
        return usage_error(help, "unexpected argument '%s'", argv[optind]);
    }
    json_object_set_new(req, "op", json_string(!strcmp(verb, "detach") ? "disk.detach" :
                                               "disk.stats"));
    return call(req, !strcmp(verb, "detach") ? print_vm : print_stats);
}

int main(int argc, char **argv)
{
    const char *state_dir = HV_DEFAULT_STATE_DIR;
    char **args = calloc((size_t)argc + 1, sizeof(*args));
    int n = 0;

    if (!args)
        return 1;
    hv_log_set_ident("hvctl");
    /* Global options may appear anywhere, so they are taken out first and
     * each command sees only its own. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *value = NULL;
        const char *names[] = {"--state-dir", "--socket", "--timeout"};
        int which = -1;
        if (!strcmp(a, "--json")) {
            is_json = true;
            continue;
        }
        for (int k = 0; k < 3; k++) {
            size_t len = strlen(names[k]);
            if (!strncmp(a, names[k], len) && (a[len] == '\0' || a[len] == '=')) {
                which = k;
                if (a[len] == '=')
                    value = a + len + 1;
                else if (i + 1 < argc)
                    value = argv[++i];
                else {
                    free(args);
                    return usage_error(main_usage, "%s needs a value", names[k]);
                }
            }
        }
        if (which == 0) {
            state_dir = value;
        } else if (which == 1) {
            socket_path = value;
        } else if (which == 2) {
            uint64_t v;
            if (hv_parse_u64(value, &v) < 0 || v > 3600000) {
                free(args);
                return usage_error(main_usage, "--timeout '%s': milliseconds", value);
            }
            timeout_ms = (int)v;
            is_timeout_given = true;
        } else {
            args[n++] = argv[i];
        }
    }
    if (!socket_path) {
        snprintf(socket_buf, sizeof(socket_buf), "%s/%s", state_dir, HV_SOCKET_NAME);
        socket_path = socket_buf;
    }
    if (n == 0 || !strcmp(args[0], "--help") || !strcmp(args[0], "-h") ||
        !strcmp(args[0], "help")) {
        fputs(main_usage, n == 0 ? stderr : stdout);
        free(args);
        return n == 0 ? 2 : 0;
    }
    int ret;
    if (hv_snapshot_cli_wants(n, args))
        ret = hv_snapshot_cli(socket_path, is_json, is_timeout_given ? timeout_ms : -1, n, args);
    else if (hv_passthru_cli_wants(n, args))
        ret = hv_passthru_cli(socket_path, is_json, timeout_ms, n, args);
    else if (!strcmp(args[0], "vm"))
        ret = cmd_vm(n - 1, args + 1);
    else if (!strcmp(args[0], "disk"))
        ret = cmd_disk(n - 1, args + 1);
    else if (!strcmp(args[0], "status")) {
        if (wants_help(n, args)) {
            printf("usage: hvctl status\n\nThe daemon's version, portal, state dir and VM "
                   "count.\n");
            ret = 0;
        } else {
            ret = call(json_pack("{s:s}", "op", "status"), print_status);
        }
    } else
        ret = usage_error(main_usage, "unknown command '%s'", args[0]);
    free(args);
    return ret;
}
