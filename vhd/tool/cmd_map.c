/*
 * vhd map and vhd info --chain: looking into a chain without changing it.
 */
#include "tool.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* -------------------------------------------------------------- info --chain */

static void print_identity(const struct vhd_chain_link *l, const struct vhd_chain_link *child)
{
    char got[37];
    char want[37];
    if (l->is_uuid_match && l->is_timestamp_match) {
        printf("identity ok");
        return;
    }
    if (l->is_uuid_match) {
        printf("identity ok, timestamp %" PRIu32 " differs from the recorded %" PRIu32
               " (accepted)", l->info.timestamp, child->info.parent_timestamp);
        return;
    }
    hv_uuid_format(l->info.uuid, got);
    hv_uuid_format(child->info.parent_uuid, want);
    printf("IDENTITY MISMATCH: uuid %s, the child records %s", got, want);
}

int cmd_info_chain(const char *path, bool is_json)
{
    struct vhd_chain_report rep;
    struct hv_err err = { 0 };
    int ret = vhd_chain_walk(path, &rep, &err);
    if (ret < 0)
        return tool_fail(&err, ret);
    if (is_json) {
        json_t *o = vhd_chain_to_json(&rep);
        if (!o) {
            tool_error("%s: cannot build JSON", path);
            vhd_chain_report_free(&rep);
            return 1;
        }
        hv_json_print(stdout, o);
        json_decref(o);
    } else {
        for (int i = 0; i < rep.count; i++) {
            const struct vhd_chain_link *l = &rep.links[i];
            char vs[32];
            char al[32];
            if (i > 0)
                printf("%*s└── ", (i - 1) * 4, "");
            printf("%s: %s, virtual %s, allocated %s", l->path, vhd_type_name(l->info.type),
                   hv_format_size(l->info.size_bytes, vs),
                   hv_format_size(l->info.allocated_bytes, al));
            if (i > 0) {
                printf(" (parent found by %s, ", vhd_parent_source_name(l->found_by));
                print_identity(l, &rep.links[i - 1]);
                putchar(')');
            }
            putchar('\n');
        }
    }
    fflush(stdout);                     /* the tree first, then why it ends */
    if (rep.problem)
        tool_error("%s", rep.problem_msg);
    ret = rep.problem ? 1 : 0;
    vhd_chain_report_free(&rep);
    return ret;
}

/* ------------------------------------------------------------------- map */

static const char map_usage[] =
    "Usage: vhd map [--json] FILE\n"
    "\n"
    "Show which ranges of the virtual disk hold data and where: the layer of\n"
    "the chain (depth 0 = FILE itself, 1 = its parent, ...) and the offset in\n"
    "that layer's file. Ranges no layer holds read as zeroes. Adjacent ranges\n"
    "alike are merged. --json prints what `qemu-img map --output=json` prints\n"
    "(start, length, depth, present, zero, data, offset) plus the layer's\n"
    "filename.\n"
    "\n"
    "  --json       machine-readable output\n"
    "  -h, --help   this text\n";

struct map_print {
    bool is_json;
    bool is_first;
};

static int print_extent(void *arg, const struct vhd_map_extent *e)
{
    struct map_print *p = arg;
    if (p->is_json) {
        /* qemu-img's own layout: one object per line, in one array. */
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d, "
               "\"present\": %s, \"zero\": %s, \"data\": %s",
               p->is_first ? "[" : ",\n", e->start, e->length, e->depth,
               e->is_present ? "true" : "false", e->is_zero ? "true" : "false",
               e->is_data ? "true" : "false");
        if (e->has_offset)
            printf(", \"offset\": %" PRIu64, e->offset);
        if (e->filename) {
            json_t *s = json_string(e->filename);
            char *text = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
            printf(", \"filename\": %s", text ? text : "null");
            free(text);
            json_decref(s);
        }
        printf("}");
    } else {
        if (p->is_first)
            printf("%-20s%-20s%-6s%-13s%-20s%s\n", "Start", "Length", "Depth", "Kind",
                   "Offset", "File");
        printf("0x%-18" PRIx64 "0x%-18" PRIx64 "%-6d%-13s", e->start, e->length, e->depth,
               !e->is_present ? "unallocated" : e->is_data ? "data" : "zero");
        if (e->has_offset)
            printf("0x%-18" PRIx64 "%s", e->offset, e->filename ? e->filename : "");
        putchar('\n');
    }
    p->is_first = false;
    return 0;
}

int cmd_map(int argc, char **argv)
{
    struct tool_cli cli = { .usage = map_usage, .operands = 1, .has_json = true };
    struct map_print p = { .is_first = true };
    struct hv_err err = { 0 };
    int ret;
    if (tool_getopt(&cli, argc, argv) == TOOL_OPT_EXIT)
        return cli.exit_status;
    p.is_json = cli.is_json;
    ret = vhd_map(argv[optind], print_extent, &p, &err);
    if (p.is_json)
        puts(p.is_first ? "[]" : "]");
    fflush(stdout);
    return ret < 0 ? tool_fail(&err, ret) : 0;
}
