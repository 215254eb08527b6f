/* Shared between the `vhd` tool's source files. */
#ifndef HVSTOR_VHD_TOOL_H
#define HVSTOR_VHD_TOOL_H

#include <getopt.h>

#include "vhd.h"

/* Print "vhd: <message>" on stderr. */
void tool_error(const char *fmt, ...) HV_PRINTF(1, 2);
/* Parse a size option, printing the problem on failure. */
int tool_parse_size(const char *opt_name, const char *text, uint64_t *bytes);

/*
 * One subcommand's command line. The command names only its own options;
 * tool_getopt adds what every command shares, so that all of them behave
 * alike: -h/--help prints `usage` on stdout and exits 0; an unknown option,
 * a missing argument or the wrong number of operands prints the usage on
 * stderr and exits `usage_exit`; --json and -p/--progress where the command
 * takes them.
 */
struct tool_cli {
    const char *usage;
    const char *shortopts;         /* the command's own; a leading "+" stops at the first operand */
    const struct option *longopts; /* the command's own, {0}-terminated; NULL: none */
    int operands;                  /* exactly this many after the options */
    int usage_exit;                /* status of a usage error; 0 means 1 */
    const char *operand_error;     /* NULL: "missing or extra operands" */
    bool has_json;
    bool has_progress;
    /* results */
    bool is_json;
    bool show_progress;
    int exit_status; /* what to exit with after TOOL_OPT_EXIT */
    /* tool_getopt's own */
    char all_short[64];
    struct option all_long[24];
};

enum {
    TOOL_OPT_DONE = -1, /* the options are parsed; operands start at argv[optind] */
    TOOL_OPT_EXIT = -2, /* --help or a usage error: return cli->exit_status */
};

/* The next of the command's own options (its getopt value, optarg set), or
 * TOOL_OPT_DONE / TOOL_OPT_EXIT. */
int tool_getopt(struct tool_cli *cli, int argc, char **argv);

/* Print the library's message for a failed call (it names the file and the
 * problem); returns 1, the exit status of a failed command. */
int tool_fail(const struct hv_err *err, int ret);

int cmd_bench(int argc, char **argv);
/* life-of-an-image operations (cmd_ops.c) */
int cmd_merge(int argc, char **argv);
int cmd_compact(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_set_parent(int argc, char **argv);
int cmd_repair(int argc, char **argv);

/* vhd-mount: cmd_map.c, cmd_mount.c */
int cmd_map(int argc, char **argv);
int cmd_info_chain(const char *path, bool is_json);
int cmd_mount(int argc, char **argv);
int cmd_unmount(int argc, char **argv);

#endif
