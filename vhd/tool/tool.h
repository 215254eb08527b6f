/* Shared between the `vhd` tool's source files. */
#ifndef HVSTOR_VHD_TOOL_H
#define HVSTOR_VHD_TOOL_H

#include "vhd.h"

/* Print "vhd: <message>" on stderr. */
void tool_error(const char *fmt, ...) HV_PRINTF(1, 2);
/* Parse a size option, printing the problem on failure. */
int tool_parse_size(const char *opt_name, const char *text, uint64_t *bytes);

int cmd_bench(int argc, char **argv);

/* vhd-mount: cmd_map.c, cmd_mount.c */
int cmd_map(int argc, char **argv);
int cmd_info_chain(const char *path, bool is_json);
int cmd_mount(int argc, char **argv);
int cmd_unmount(int argc, char **argv);

#endif
