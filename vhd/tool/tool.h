/* Shared between the `vhd` tool's source files. */
#ifndef HVSTOR_VHD_TOOL_H
#define HVSTOR_VHD_TOOL_H

#include "vhd.h"

/* Exit codes shared by the subcommands (check and compare have their own). */
#define TOOL_EXIT_OK 0
#define TOOL_EXIT_FAIL 1
#define TOOL_EXIT_USAGE 1

/* Print "vhd: <message>" on stderr. */
void tool_error(const char *fmt, ...) HV_PRINTF(1, 2);
/* Parse a size option, printing the problem on failure. */
int tool_parse_size(const char *opt_name, const char *text, uint64_t *bytes);

int cmd_bench(int argc, char **argv);

#endif
