/*
 * hvctl's SAN commands, client side: san add/list/luns, vm zoning,
 * disk attach --lun, disk takeover. Parse the command line, send one
 * request (takeover: start it and poll until done), print the answer.
 */
#include "hv.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

struct cli {
    const char *socket_path;
    bool is_json;
    int timeout_ms;
};

static const char san_usage[] =
    "usage: hvctl san add NAME --portal ADDR:PORT [--chap USER:SECRET] [--initiator IQN]\n"
    "                          [--replacement-timeout MS]\n"
    "       hvctl san list\n"
    "       hvctl san luns NAME [--vm VM]\n"
    "\n"
    "A SAN is an iSCSI portal hvstor may hand LUNs from. 'san luns' lists every\n"
    "target and LUN the SAN shows (to the SAN's --initiator, by default the host's\n"
    "own open-iscsi name, or to a VM's own name with --vm): size, VPD 0x83 id,\n"
    "vendor/product, whether the host itself uses it, which VM holds it.\n"
    "--replacement-timeout: how long guest commands wait for a lost SAN\n"
    "connection to come back before they fail (default 30000, as open-iscsi).\n";

static const char lun_usage[] =
    "usage: hvctl disk attach VM --controller N --slot M --lun SAN:TARGET:LUN\n"
    "                            [--full-scsi] [--force]\n"
    "       hvctl disk attach VM --controller N --slot M --fc-lun TARGET_WWPN:LUN\n"
    "                            [--full-scsi] [--force]\n"
    "       hvctl disk attach VM --controller N --slot M --device /dev/X [--force]\n"
    "                            [--full-scsi | --read-only]\n"
    "       hvctl disk takeover VM --controller N --slot M\n"
    "\n"
    "attach --lun hands a whole SAN LUN to the VM, after checking that the VM's\n"
    "own initiator name reaches it (masking), that no other VM holds it, that\n"
    "the host's own iSCSI does not use it and that it carries no filesystem,\n"
    "partition table, RAID or LVM signature (--force skips the last two). The\n"
    "LUN is pinned by its VPD 0x83 id and reserved for this host (SCSI-3 PR,\n"
    "Write Exclusive - Registrants Only). Only the commands a disk needs reach\n"
    "it unless --full-scsi.\n"
    "--fc-lun hands a whole Fibre Channel LUN to the VM through its own NPIV vport:\n"
    "the vport comes up with the VM's WWPN set A and must see the target port\n"
    "(else: not zoned) and the LUN (else: not masked); set B is checked the same\n"
    "way. TARGET_WWPN is 16 hex digits or 8 colon-separated pairs, LUN the number\n"
    "after the last ':' (50:0a:09:80:00:00:11:11:3). The LUN is pinned by its VPD\n"
    "0x83 id, refused when another VM holds it, and its block device is served\n"
    "as --device serves one (in-use checks, O_EXCL claim; a SCSI disk passed\n"
    "through with SG_IO, filtered unless --full-scsi). The vport stays up\n"
    "while the VM has an FC disk; detaching the last one deletes it.\n"
    "The checks of --lun and --fc-lun run beside the VMs' I/O, not in its way:\n"
    "hvctl waits for their answer (up to --timeout).\n"
    "--device hands a whole local block device to the VM: refused when mounted or\n"
    "held (LVM, MD, dm) on the host, when another VM holds it, or when it carries\n"
    "a signature (unless --force); claimed O_EXCL for as long as it is attached.\n"
    "A SCSI disk with a VPD 0x83 id is passed through with SG_IO: the guest's\n"
    "commands reach the disk itself (filtered unless --full-scsi), and the slot\n"
    "follows that id if the disk's name changes. Other devices (and --read-only)\n"
    "are served through hvstor's SBC emulation.\n"
    "takeover preempts another host's reservation (as fence_scsi does): only\n"
    "when that host is dead.\n";

static const char zoning_usage[] =
    "usage: hvctl vm zoning VM [--target IQN] [--tid N] [--fc-target WWPN]\n"
    "\n"
    "What a SAN administrator runs to let this VM in: its IQN and WWPN sets A and\n"
    "B, zone lines (Brocade, Cisco MDS), tgtadm and targetcli ACL commands.\n";

static int send_request(const struct cli *cli, json_t *req, json_t **result)
{
    return hv_control_request(cli->socket_path, req, cli->timeout_ms, cli->is_json, result);
}

static const char *str(const json_t *obj, const char *key)
{
    const char *v = json_string_value(json_object_get(obj, key));
    return v ? v : "";
}

static void print_luns(const json_t *r)
{
    const json_t *luns = json_object_get(r, "luns");
    const json_t *l;
    size_t i;
    char size[32];

    printf("SAN %s at %s, as %s\n", str(r, "san"), str(r, "portal"), str(r, "initiator"));
    printf("%-40s %4s %10s  %-36s %-8s %-16s %-5s %s\n", "TARGET", "LUN", "SIZE", "ID (VPD 83)",
           "VENDOR", "PRODUCT", "HOST", "HELD BY");
    json_array_foreach(luns, i, l) {
        if (json_object_get(l, "error")) {
            printf("%-40s  -   %s\n", str(l, "target"), str(l, "error"));
            continue;
        }
        printf("%-40s %4" JSON_INTEGER_FORMAT " %10s  %-36s %-8s %-16s %-5s %s\n",
               str(l, "target"), json_integer_value(json_object_get(l, "lun")),
               hv_format_size((uint64_t)json_integer_value(json_object_get(l, "size_bytes")),
                              size),
               str(l, "designator"), str(l, "vendor"), str(l, "product"),
               json_is_true(json_object_get(l, "used_by_host")) ? "yes" : "no",
               json_object_get(l, "held_by") ? str(l, "held_by") : "-");
    }
}

static void print_attached(const json_t *r)
{
    const json_t *a = json_object_get(r, "attached");
    const json_t *w;
    size_t i;
    char size[32];

    printf("VM '%s': %s LUN %" JSON_INTEGER_FORMAT " (%s, %s %s, %s) attached\n", str(r, "name"),
           str(a, "target"), json_integer_value(json_object_get(a, "lun")), str(a, "designator"),
           str(a, "vendor"), str(a, "product"),
           hv_format_size((uint64_t)json_integer_value(json_object_get(a, "size_bytes")), size));
    json_array_foreach(json_object_get(a, "warnings"), i, w)
        printf("warning: %s\n", json_string_value(w));
}

static void print_attached_fc(const json_t *r)
{
    const json_t *a = json_object_get(r, "attached");
    char size[32];

    printf("VM '%s': FC LUN %s:%" JSON_INTEGER_FORMAT " (%s, %s, %s) attached through vport "
           "%s%s%s\n", str(r, "name"), str(a, "target"),
           json_integer_value(json_object_get(a, "lun")), str(a, "designator"),
           str(a, "device"),
           hv_format_size((uint64_t)json_integer_value(json_object_get(a, "size_bytes")), size),
           str(a, "vport"), str(a, "forced_over")[0] ? "; forced over: " : "",
           str(a, "forced_over"));
    if (!strcmp(str(a, "transport"), "sg_io"))
        printf("SCSI pass-through (SG_IO): %s %s, %s%s\n", str(a, "vendor"), str(a, "product"),
               str(a, "designator"),
               json_is_true(json_object_get(a, "full_scsi")) ? ", full SCSI" : "");
    else if (str(a, "why")[0])
        printf("SBC emulation over the raw device: %s\n", str(a, "why"));
}

/* An attach, `san add` and `san luns` answer {"running": true, "job": N} at
 * once (they wait on the SAN beside the VMs' I/O); ask for the job's answer
 * until it is there. */
static int send_and_wait(const struct cli *cli, json_t *req, json_t **result)
{
    uint64_t deadline = hv_now_ns() + (uint64_t)cli->timeout_ms * 1000000;
    json_int_t job;
    int ret = send_request(cli, req, result);

    if (ret || !json_is_true(json_object_get(*result, "running")))
        return ret;
    job = json_integer_value(json_object_get(*result, "job"));
    while (json_is_true(json_object_get(*result, "running"))) {
        json_decref(*result);
        *result = NULL;
        if (cli->timeout_ms > 0 && hv_now_ns() > deadline) {
            fprintf(stderr, "hvctl: still waiting on the SAN after %d ms (job %"
                    JSON_INTEGER_FORMAT "); it goes on: an attach that passes its checks "
                    "shows in `hvctl vm show`\n", cli->timeout_ms, job);
            return 1;
        }
        usleep(50 * 1000);
        ret = send_request(cli, json_pack("{s:s, s:I}", "op", "job.status", "job", job),
                           result);
        if (ret)
            return ret;
    }
    return 0;
}

static int parse_slot(const char *opt, const char *text, int max, int *out)
{
    uint64_t v;
    if (hv_parse_u64(text, &v) < 0 || v > (uint64_t)max) {
        fprintf(stderr, "hvctl: %s '%s': expected a number from 0 to %d\n", opt, text, max);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int send_and_wait(const struct cli *cli, json_t *req, json_t **result);

static int cmd_san(const struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"portal", required_argument, NULL, 'p'},
        {"chap", required_argument, NULL, 'c'},
        {"initiator", required_argument, NULL, 'i'},
        {"vm", required_argument, NULL, 'v'},
        {"replacement-timeout", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    json_t *req;
    json_t *result = NULL;
    int c;
    int ret;

    if (argc < 2 && !(argc == 1 && !strcmp(argv[0], "list"))) {
        fputs(san_usage, argc >= 1 && !strcmp(argv[0], "--help") ? stdout : stderr);
        return argc >= 1 && !strcmp(argv[0], "--help") ? 0 : 2;
    }
    req = json_object();
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        const char *key = c == 'p' ? "portal" : c == 'c' ? "chap" : c == 'i' ? "initiator"
                        : c == 'v' ? "vm" : NULL;
        if (c == 'R') {
            uint64_t ms;
            if (hv_parse_u64(optarg, &ms) < 0 || ms > 3600000) {
                fprintf(stderr, "hvctl: --replacement-timeout '%s': milliseconds\n", optarg);
                json_decref(req);
                return 2;
            }
            json_object_set_new(req, "replacement_timeout_ms", json_integer((json_int_t)ms));
            continue;
        }
        if (c == 'h') {
            fputs(san_usage, stdout);
            json_decref(req);
            return 0;
        }
        if (!key) {
            fputs(san_usage, stderr);
            json_decref(req);
            return 2;
        }
        json_object_set_new(req, key, json_string(optarg));
    }
    if (!strcmp(argv[0], "list")) {
        json_object_set_new(req, "op", json_string("san.list"));
    } else {
        if (optind != argc - 1) {
            fprintf(stderr, "hvctl: san %s needs exactly one NAME\n%s", argv[0], san_usage);
            json_decref(req);
            return 2;
        }
        json_object_set_new(req, "name", json_string(argv[optind]));
        if (!strcmp(argv[0], "add")) {
            if (!json_object_get(req, "portal")) {
                fprintf(stderr, "hvctl: san add needs --portal ADDR:PORT\n%s", san_usage);
                json_decref(req);
                return 2;
            }
            json_object_set_new(req, "op", json_string("san.add"));
        } else if (!strcmp(argv[0], "luns")) {
            json_object_set_new(req, "op", json_string("san.luns"));
        } else {
            fprintf(stderr, "hvctl: unknown command 'san %s'\n%s", argv[0], san_usage);
            json_decref(req);
            return 2;
        }
    }
    ret = strcmp(argv[0], "list") ? send_and_wait(cli, req, &result)
                                   : send_request(cli, req, &result);
    if (ret)
        return ret;
    if (cli->is_json) {
        hv_json_print(stdout, result);
    } else if (!strcmp(argv[0], "luns")) {
        print_luns(result);
    } else if (!strcmp(argv[0], "add")) {
        printf("SAN '%s' at %s added; %zu targets visible to %s\n", str(result, "name"),
               str(result, "portal"), json_array_size(json_object_get(result, "targets")),
               str(result, "initiator"));
    } else {
        const json_t *s;
        size_t i;
        json_array_foreach(result, i, s)
            printf("%-20s %-24s %s%s\n", str(s, "name"), str(s, "portal"), str(s, "initiator"),
                   json_is_true(json_object_get(s, "chap")) ? " (CHAP)" : "");
    }
    json_decref(result);
    return 0;
}

static int cmd_zoning(const struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"target", required_argument, NULL, 't'},
        {"tid", required_argument, NULL, 'T'},
        {"fc-target", required_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    json_t *req = json_pack("{s:s}", "op", "vm.zoning");
    json_t *result = NULL;
    int tid;
    int c;
    int ret;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            json_object_set_new(req, "target", json_string(optarg));
            break;
        case 'f':
            json_object_set_new(req, "fc_target", json_string(optarg));
            break;
        case 'T':
            if (parse_slot("--tid", optarg, 65535, &tid) < 0) {
                json_decref(req);
                return 2;
            }
            json_object_set_new(req, "tid", json_integer(tid));
            break;
        case 'h':
            fputs(zoning_usage, stdout);
            json_decref(req);
            return 0;
        default:
            fputs(zoning_usage, stderr);
            json_decref(req);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "hvctl: vm zoning needs exactly one VM\n%s", zoning_usage);
        json_decref(req);
        return 2;
    }
    json_object_set_new(req, "vm", json_string(argv[optind]));
    ret = send_request(cli, req, &result);
    if (ret)
        return ret;
    if (cli->is_json) {
        json_object_del(result, "text");
        hv_json_print(stdout, result);
    } else {
        fputs(str(result, "text"), stdout);
    }
    json_decref(result);
    return 0;
}

static int cmd_lun_disk(const struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"controller", required_argument, NULL, 'c'},
        {"slot", required_argument, NULL, 's'},
        {"lun", required_argument, NULL, 'l'},
        {"fc-lun", required_argument, NULL, 'C'},
        {"device", required_argument, NULL, 'D'},
        {"read-only", no_argument, NULL, 'o'},
        {"full-scsi", no_argument, NULL, 'F'},
        {"force", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool is_takeover = !strcmp(argv[0], "takeover");
    json_t *req = json_object();
    json_t *result = NULL;
    const char *lun = NULL;
    const char *fc_lun = NULL;
    const char *device = NULL;
    int controller = -1;
    int slot = -1;
    int c;
    int ret;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            if (parse_slot("--controller", optarg, HV_MAX_CONTROLLERS - 1, &controller) < 0)
                goto usage;
            break;
        case 's':
            if (parse_slot("--slot", optarg, HV_SLOTS_PER_CONTROLLER - 1, &slot) < 0)
                goto usage;
            break;
        case 'l':
            lun = optarg;
            break;
        case 'C':
            fc_lun = optarg;
            break;
        case 'D':
            device = optarg;
            break;
        case 'o':
            json_object_set_new(req, "read_only", json_true());
            break;
        case 'F':
            json_object_set_new(req, "full_scsi", json_true());
            break;
        case 'f':
            json_object_set_new(req, "force", json_true());
            break;
        case 'h':
            fputs(lun_usage, stdout);
            json_decref(req);
            return 0;
        default:
            goto usage;
        }
    }
    if (optind != argc - 1 || controller < 0 || slot < 0 ||
        (!is_takeover && (!!lun + !!fc_lun + !!device) != 1) ||
        (is_takeover && (lun || fc_lun || device))) {
        fprintf(stderr, "hvctl: disk %s needs VM, --controller N, --slot M%s\n", argv[0],
                is_takeover ? "" : " and one of --lun SAN:TARGET:LUN, --fc-lun "
                "TARGET_WWPN:LUN or --device PATH");
        goto usage;
    }
    json_object_set_new(req, "vm", json_string(argv[optind]));
    json_object_set_new(req, "controller", json_integer(controller));
    json_object_set_new(req, "slot", json_integer(slot));
    if (device) {
        json_object_set_new(req, "op", json_string("disk.attach_dev"));
        json_object_set_new(req, "path", json_string(device));
        ret = send_request(cli, req, &result);
        if (ret)
            return ret;
        if (cli->is_json) {
            hv_json_print(stdout, result);
        } else {
            const json_t *a = json_object_get(result, "attached");
            printf("VM '%s': device %s (%s) attached%s%s\n", str(result, "name"),
                   str(a, "device"), str(a, "sysfs_name"), str(a, "forced_over")[0]
                   ? "; forced over: " : "", str(a, "forced_over"));
            if (!strcmp(str(a, "transport"), "sg_io"))
                printf("SCSI pass-through (SG_IO): %s %s, %s%s\n", str(a, "vendor"),
                       str(a, "product"), str(a, "designator"),
                       json_is_true(json_object_get(a, "full_scsi")) ? ", full SCSI" : "");
            else if (str(a, "why")[0])
                printf("SBC emulation over the raw device: %s\n", str(a, "why"));
        }
        json_decref(result);
        return 0;
    }
    if (!is_takeover) {
        if (fc_lun) {
            json_object_set_new(req, "op", json_string("disk.attach_fc"));
            json_object_set_new(req, "fc_lun", json_string(fc_lun));
        } else {
            json_object_set_new(req, "op", json_string("disk.attach_lun"));
            json_object_set_new(req, "lun", json_string(lun));
        }
        ret = send_and_wait(cli, req, &result);
        if (ret)
            return ret;
        if (cli->is_json)
            hv_json_print(stdout, result);
        else if (fc_lun)
            print_attached_fc(result);
        else
            print_attached(result);
        json_decref(result);
        return 0;
    }
    json_object_set_new(req, "op", json_string("disk.takeover"));
    {
        json_t *poll = json_deep_copy(req);
        uint64_t deadline = hv_now_ns() + (uint64_t)cli->timeout_ms * 1000000;
        ret = send_request(cli, req, &result);
        if (ret) {
            json_decref(poll);
            return ret;
        }
        json_object_set_new(poll, "op", json_string("disk.takeover_status"));
        while (json_is_true(json_object_get(result, "running"))) {
            json_decref(result);
            result = NULL;
            if (hv_now_ns() > deadline) {
                fprintf(stderr, "hvctl: takeover still running after %d ms\n",
                        cli->timeout_ms);
                json_decref(poll);
                return 1;
            }
            usleep(100 * 1000);
            ret = send_request(cli, json_incref(poll), &result);
            if (ret) {
                json_decref(poll);
                return ret;
            }
        }
        json_decref(poll);
    }
    if (cli->is_json)
        hv_json_print(stdout, result);
    else
        printf("%s\n", str(result, "takeover"));
    json_decref(result);
    return 0;
usage:
    fputs(lun_usage, stderr);
    json_decref(req);
    return 2;
}

bool hv_passthru_cli_wants(int argc, char **argv)
{
    if (argc < 1)
        return false;
    if (!strcmp(argv[0], "san"))
        return true;
    if (argc >= 2 && !strcmp(argv[0], "vm") && !strcmp(argv[1], "zoning"))
        return true;
    if (argc >= 2 && !strcmp(argv[0], "disk") && !strcmp(argv[1], "takeover"))
        return true;
    if (argc >= 2 && !strcmp(argv[0], "disk") && !strcmp(argv[1], "attach"))
        for (int i = 2; i < argc; i++)
            if (!strncmp(argv[i], "--lun", 5) || !strncmp(argv[i], "--device", 8) ||
                !strncmp(argv[i], "--fc-lun", 8))
                return true;
    return false;
}

int hv_passthru_cli(const char *socket_path, bool is_json, int timeout_ms, int argc,
                    char **argv)
{
    struct cli cli = {socket_path, is_json, timeout_ms};

    if (!strcmp(argv[0], "san"))
        return cmd_san(&cli, argc - 1, argv + 1);
    if (!strcmp(argv[0], "vm"))
        return cmd_zoning(&cli, argc - 1, argv + 1);
    return cmd_lun_disk(&cli, argc - 1, argv + 1);
}
