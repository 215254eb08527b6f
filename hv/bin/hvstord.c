/*
 * hvstord — serves each VM's virtual SCSI controllers as iSCSI targets.
 *
 * Runs in the foreground (systemd style), logs to stderr, takes control
 * requests from hvctl on DIR/hvstord.sock, and keeps every VM definition in
 * the state directory. SIGTERM or SIGINT: drain, flush, close, exit 0.
 */
#include "hv.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: hvstord [--state-dir DIR] [--portal ADDR:PORT] [--no-direct-io]\n"
            "               [--log-level error|warn|info|debug]\n"
            "               [--wwn-oui XX:XX:XX --iqn-prefix iqn.YYYY-MM.domain [--host-id N]]\n"
            "               [--sysfs-root DIR] [--dev-root DIR]\n"
            "\n"
            "Serve the VMs defined in DIR (default " HV_DEFAULT_STATE_DIR ") over iSCSI.\n"
            "  --state-dir DIR     VM definitions, control socket DIR/" HV_SOCKET_NAME "\n"
            "  --portal ADDR:PORT  where guests connect (default " HV_DEFAULT_PORTAL ");\n"
            "                      port 0 picks a free port, written to DIR/" HV_PORTAL_FILE "\n"
            "  --no-direct-io      buffered image I/O (file systems without O_DIRECT)\n"
            "  --wwn-oui OUI       the site's IEEE OUI for the VMs' NAA-5 WWNs, and\n"
            "  --iqn-prefix IQN    the prefix of the VMs' own initiator names\n"
            "                      (<prefix>:vm.<name>). No defaults: IEEE reserves no OUI\n"
            "                      for examples, and a borrowed one could collide in a real\n"
            "                      fabric. Without both, VMs get no identity and cannot\n"
            "                      take SAN LUNs (hvctl disk attach --lun).\n"
            "  --host-id N         distinct per host sharing the OUI (default 0)\n"
            "  --sysfs-root DIR    the kernel's sysfs, for Fibre Channel vports and the\n"
            "                      LUNs under them (default /sys; tests use a fake tree)\n"
            "  --dev-root DIR      where the block device nodes of FC LUNs are (default /dev)\n"
            "Stops cleanly on SIGTERM or SIGINT: in-flight I/O drains, images are\n"
            "flushed and closed.\n");
}

static int parse_portal(const char *text, char *addr, size_t addr_len, uint16_t *port)
{
    const char *colon = strrchr(text, ':');
    uint64_t value;

    if (!colon || colon == text || (size_t)(colon - text) >= addr_len)
        return -EINVAL;
    if (hv_parse_u64(colon + 1, &value) < 0 || value > 65535)
        return -EINVAL;
    memcpy(addr, text, (size_t)(colon - text));
    addr[colon - text] = '\0';
    /* "[::1]:3260": the brackets only separate an IPv6 address from the port. */
    if (addr[0] == '[') {
        size_t len = strlen(addr);
        if (len < 3 || addr[len - 1] != ']')
            return -EINVAL;
        memmove(addr, addr + 1, len - 2);
        addr[len - 2] = '\0';
    }
    *port = (uint16_t)value;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        {"state-dir", required_argument, NULL, 'd'},
        {"portal", required_argument, NULL, 'p'},
        {"no-direct-io", no_argument, NULL, 'n'},
        {"log-level", required_argument, NULL, 'l'},
        {"wwn-oui", required_argument, NULL, 'O'},
        {"iqn-prefix", required_argument, NULL, 'I'},
        {"host-id", required_argument, NULL, 'H'},
        {"sysfs-root", required_argument, NULL, 'S'},
        {"dev-root", required_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct hv_daemon_options opt = {.state_dir = HV_DEFAULT_STATE_DIR};
    struct hv_daemon *d = NULL;
    struct hv_err err = {0};
    char addr[64];
    sigset_t mask;
    int c;
    int ret;

    hv_log_set_ident("hvstord");
    if (parse_portal(HV_DEFAULT_PORTAL, addr, sizeof(addr), &opt.portal_port) < 0)
        return 1;
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (c) {
        case 'd':
            opt.state_dir = optarg;
            break;
        case 'p':
            if (parse_portal(optarg, addr, sizeof(addr), &opt.portal_port) < 0) {
                fprintf(stderr, "hvstord: --portal '%s': expected ADDR:PORT, e.g. "
                        "127.0.0.1:3260\n", optarg);
                return 2;
            }
            break;
        case 'n':
            opt.no_direct_io = true;
            break;
        case 'O':
            opt.wwn_oui = optarg;
            break;
        case 'I':
            opt.iqn_prefix = optarg;
            break;
        case 'S':
        case 'D':
            if (optarg[0] != '/' || strlen(optarg) >= 200) {
                fprintf(stderr, "hvstord: --%s '%s': an absolute directory path\n",
                        c == 'S' ? "sysfs-root" : "dev-root", optarg);
                return 2;
            }
            *(c == 'S' ? &opt.sysfs_root : &opt.dev_root) = optarg;
            break;
        case 'H': {
            uint64_t id;
            if (hv_parse_u64(optarg, &id) < 0 || id > 0xFFFFF) {
                fprintf(stderr, "hvstord: --host-id '%s': a number below 2^20\n", optarg);
                return 2;
            }
            opt.host_id = (unsigned)id;
            break;
        }
        case 'l':
            if (!strcmp(optarg, "error"))
                hv_log_set_level(HV_LOG_ERROR);
            else if (!strcmp(optarg, "warn"))
                hv_log_set_level(HV_LOG_WARN);
            else if (!strcmp(optarg, "info"))
                hv_log_set_level(HV_LOG_INFO);
            else if (!strcmp(optarg, "debug"))
                hv_log_set_level(HV_LOG_DEBUG);
            else {
                fprintf(stderr, "hvstord: --log-level '%s': error, warn, info or debug\n",
                        optarg);
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "hvstord: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    opt.portal_addr = addr;

    /* The signals are read through a signalfd in the reactor; they must be
     * blocked before anything could start a thread. */
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    umask(077);     /* definitions carry CHAP secrets */

    ret = hv_daemon_create(&opt, &d, &err);
    if (ret < 0) {
        fprintf(stderr, "hvstord: %s\n", hv_err_msg(&err, ret));
        return 1;
    }
    printf(strchr(addr, ':') ? "hvstord: listening on [%s]:%u\n" : "hvstord: listening on %s:%u\n",
           addr, hv_daemon_port(d));
    fflush(stdout);
    ret = hv_daemon_run(d);
    hv_daemon_destroy(d);
    if (ret < 0) {
        fprintf(stderr, "hvstord: stopped with an error: %s\n", strerror(-ret));
        return 1;
    }
    return 0;
}
