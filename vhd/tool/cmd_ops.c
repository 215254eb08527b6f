/*
 * The life-of-an-image subcommands: merge, compact, resize, set-parent,
 * repair. Each parses its options, calls one library operation and prints
 * what it did (or, with --json, an object for scripts).
 */
#include "tool.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* resize and set-parent: --force is their only option. */
static const struct option force_only[] = {
    {"force", no_argument, NULL, 'f'},
    {0},
};

/* ------------------------------------------------------------------ merge */

static const char merge_usage[] =
    "Usage: vhd merge [-p] [--into ANCESTOR] [--force] [--json] CHILD\n"
    "\n"
    "Fold the differencing image CHILD into its parent (or, with --into, every\n"
    "image from CHILD down to ANCESTOR into ANCESTOR). Only the sectors the\n"
    "children hold are copied. When the ancestor's data is durable the merged\n"
    "children are deleted; afterwards ANCESTOR reads what CHILD read.\n"
    "\n"
    "Crash-safe: interrupted at any point, CHILD still reads as before (or the\n"
    "merge had finished); run the same command again to complete it.\n"
    "\n"
    "A VHD does not know its children. Other images in the same directories\n"
    "that use the ancestor or one of the merged children would change or lose\n"
    "their parent: the merge refuses then, and --force overrides. Images in\n"
    "other directories cannot be seen: make sure nothing else uses ANCESTOR.\n"
    "\n"
    "  -i, --into ANCESTOR  merge into this ancestor (default: the parent)\n"
    "  -f, --force          merge even though other images use the ancestor\n"
    "  -p, --progress       show a progress bar\n"
    "      --json           print the result as JSON\n"
    "  -h, --help           this text\n";

int cmd_merge(int argc, char **argv)
{
    static const struct option opts[] = {
        {"into", required_argument, NULL, 'i'},
        {"force", no_argument, NULL, 'f'},
        {0},
    };
    struct tool_cli cli = {.usage = merge_usage, .shortopts = "i:f", .longopts = opts,
                           .operands = 1, .has_json = true, .has_progress = true};
    struct vhd_merge_options o = {0};
    int c;
    while ((c = tool_getopt(&cli, argc, argv)) >= 0) {
        if (c == 'i')
            o.into = optarg;
        o.is_forced |= c == 'f';
    }
    if (c == TOOL_OPT_EXIT)
        return cli.exit_status;
    o.show_progress = cli.show_progress;
    const char *child = argv[optind];
    struct vhd_merge_result res;
    struct hv_err err = {0};
    int ret = vhd_merge(child, &o, &res, &err);
    if (ret < 0)
        return tool_fail(&err, ret);
    if (cli.is_json) {
        json_t *j = json_object();
        json_object_set_new(j, "child", json_string(child));
        json_object_set_new(j, "ancestor", json_string(res.ancestor));
        json_object_set_new(j, "merged-images", json_integer(res.merged_count));
        json_object_set_new(j, "bytes-copied", json_integer((json_int_t)res.bytes_copied));
        json_object_set_new(j, "seconds", json_real(res.seconds));
        if (res.users[0])
            json_object_set_new(j, "other-users", json_string(res.users));
        hv_json_print(stdout, j);
        json_decref(j);
    } else {
        char sz[32];
        printf("merged %d image%s into %s: %s copied in %.2f s\n", res.merged_count,
               res.merged_count == 1 ? "" : "s", res.ancestor,
               hv_format_size(res.bytes_copied, sz), res.seconds);
        if (res.users[0])
            printf("warning: these images use the ancestor or a merged child and now read "
                   "changed data or lost their parent: %s\n",
                   res.users);
    }
    return 0;
}

/* ---------------------------------------------------------------- compact */

static const char compact_usage[] =
    "Usage: vhd compact [-p] [--dry-run] [--json] FILE\n"
    "\n"
    "Give space back without changing what FILE reads: blocks that read as\n"
    "zeroes are freed (in a differencing image only where the parent reads\n"
    "zeroes too, or where no sector is present), blocks from the end move into\n"
    "holes, the file is cut after its last block and unused space inside is\n"
    "punched. Crash-safe at every step. Fixed images have nothing to give back.\n"
    "\n"
    "  -n, --dry-run    say what would be given back, change nothing\n"
    "  -p, --progress   show a progress bar\n"
    "      --json       print the result as JSON\n"
    "  -h, --help       this text\n";

int cmd_compact(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dry-run", no_argument, NULL, 'n'},
        {0},
    };
    struct tool_cli cli = {.usage = compact_usage, .shortopts = "n", .longopts = opts,
                           .operands = 1, .has_json = true, .has_progress = true};
    struct vhd_compact_options o = {0};
    int c;
    while ((c = tool_getopt(&cli, argc, argv)) >= 0)
        o.is_dry_run |= c == 'n';
    if (c == TOOL_OPT_EXIT)
        return cli.exit_status;
    o.show_progress = cli.show_progress;
    const char *path = argv[optind];
    struct vhd_compact_result res;
    struct hv_err err = {0};
    int ret = vhd_compact(path, &o, &res, &err);
    if (ret < 0)
        return tool_fail(&err, ret);
    if (cli.is_json) {
        json_t *j = json_object();
        json_object_set_new(j, "filename", json_string(path));
        json_object_set_new(j, "dry-run", json_boolean(o.is_dry_run));
        json_object_set_new(j, "blocks-freed", json_integer(res.blocks_freed));
        json_object_set_new(j, "blocks-moved", json_integer(res.blocks_moved));
        json_object_set_new(j, "file-bytes-before",
                            json_integer((json_int_t)res.file_bytes_before));
        json_object_set_new(j, "file-bytes-after", json_integer((json_int_t)res.file_bytes_after));
        json_object_set_new(j, "stored-bytes-before",
                            json_integer((json_int_t)res.stored_bytes_before));
        json_object_set_new(j, "stored-bytes-after",
                            json_integer((json_int_t)res.stored_bytes_after));
        hv_json_print(stdout, j);
        json_decref(j);
    } else {
        char a[32], b[32], s1[32], s2[32];
        printf("%s: %s%u zero block%s freed, %u block%s moved; file %s -> %s, on disk %s -> "
               "%s\n",
               path, o.is_dry_run ? "(dry run) " : "", res.blocks_freed,
               res.blocks_freed == 1 ? "" : "s", res.blocks_moved,
               res.blocks_moved == 1 ? "" : "s", hv_format_size(res.file_bytes_before, a),
               hv_format_size(res.file_bytes_after, b),
               hv_format_size(res.stored_bytes_before, s1),
               hv_format_size(res.stored_bytes_after, s2));
    }
    return 0;
}

/* ----------------------------------------------------------------- resize */

static const char resize_usage[] =
    "Usage: vhd resize [--force] FILE SIZE\n"
    "\n"
    "Set the virtual size of FILE to exactly SIZE bytes (K, M, G, T suffixes;\n"
    "a multiple of 512; \"+SIZE\" and \"-SIZE\" are relative). Any type grows;\n"
    "a dynamic or differencing image gets a larger BAT when it needs one.\n"
    "Shrinking refuses when data lies beyond the new end, unless --force.\n"
    "Crash-safe: interrupted, FILE reads at the old or the new size.\n"
    "\n"
    "  -f, --force   shrink even if that cuts off data\n"
    "  -h, --help    this text\n";

int cmd_resize(int argc, char **argv)
{
    /* "+": options end at FILE, so that "-2M" after it is a size. */
    struct tool_cli cli = {
        .usage = resize_usage, .shortopts = "+f", .longopts = force_only, .operands = 2};
    struct vhd_resize_options o = {0};
    int c;
    while ((c = tool_getopt(&cli, argc, argv)) >= 0)
        o.is_forced |= c == 'f';
    if (c == TOOL_OPT_EXIT)
        return cli.exit_status;
    const char *path = argv[optind];
    const char *text = argv[optind + 1];
    uint64_t size;
    int sign = text[0] == '+' ? 1 : text[0] == '-' ? -1 : 0;
    if (tool_parse_size("SIZE", text + (sign != 0), &size) < 0)
        return 1;
    struct hv_err err = {0};
    if (sign) {
        struct vhd_info info;
        int ret = vhd_inspect(path, &info, &err);
        if (ret < 0)
            return tool_fail(&err, ret);
        if (sign < 0 && size >= info.size_bytes) {
            tool_error("%s: cannot shrink a %" PRIu64 "-byte disk by %" PRIu64 " bytes", path,
                       info.size_bytes, size);
            return 1;
        }
        size = sign > 0 ? info.size_bytes + size : info.size_bytes - size;
    }
    int ret = vhd_resize(path, size, &o, &err);
    if (ret < 0)
        return tool_fail(&err, ret);
    char sz[32];
    printf("%s: virtual size is now %" PRIu64 " bytes (%s)\n", path, size,
           hv_format_size(size, sz));
    return 0;
}

/* ------------------------------------------------------------- set-parent */

static const char set_parent_usage[] =
    "Usage: vhd set-parent [--force] CHILD NEWPARENT\n"
    "\n"
    "Point the differencing image CHILD at NEWPARENT (after files were moved\n"
    "or copied): the parent's unique id and timestamp, its name and all three\n"
    "locators (W2ru relative, W2ku absolute, MacX) are rewritten. NEWPARENT\n"
    "must be the same disk, i.e. have the unique id CHILD recorded, unless\n"
    "--force (which is only right when NEWPARENT holds the same data, e.g.\n"
    "after `vhd merge --into` left CHILD's old parent chain merged into it).\n"
    "\n"
    "  -f, --force   link a parent whose unique id or size differs\n"
    "  -h, --help    this text\n";

int cmd_set_parent(int argc, char **argv)
{
    struct tool_cli cli = {
        .usage = set_parent_usage, .shortopts = "f", .longopts = force_only, .operands = 2};
    struct vhd_set_parent_options o = {0};
    int c;
    while ((c = tool_getopt(&cli, argc, argv)) >= 0)
        o.is_forced |= c == 'f';
    if (c == TOOL_OPT_EXIT)
        return cli.exit_status;
    struct hv_err err = {0};
    int ret = vhd_set_parent(argv[optind], argv[optind + 1], &o, &err);
    if (ret < 0)
        return tool_fail(&err, ret);
    printf("%s: parent is now %s\n", argv[optind], argv[optind + 1]);
    return 0;
}

/* ----------------------------------------------------------------- repair */

static const char repair_usage[] =
    "Usage: vhd repair [--dry-run] [--json] FILE\n"
    "\n"
    "Repair FILE in place (its parent is never touched): rebuild a lost footer\n"
    "from the copy at offset 0 or the copy from the footer, fix checksums, drop\n"
    "BAT entries that point outside the file or overlap metadata or other\n"
    "blocks, reclaim leaked space, cut the leftover of an interrupted resize.\n"
    "Prints each thing it does; with --dry-run only what it would do.\n"
    "\n"
    "Exit status: 0 the image is sound (again), 1 problems remain (listed).\n"
    "\n"
    "  -n, --dry-run   change nothing\n"
    "      --json      print the actions as JSON\n"
    "  -h, --help      this text\n";

int cmd_repair(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dry-run", no_argument, NULL, 'n'},
        {0},
    };
    struct tool_cli cli = {.usage = repair_usage, .shortopts = "n", .longopts = opts,
                           .operands = 1, .has_json = true};
    struct vhd_repair_options o = {0};
    int c;
    while ((c = tool_getopt(&cli, argc, argv)) >= 0)
        o.is_dry_run |= c == 'n';
    if (c == TOOL_OPT_EXIT)
        return cli.exit_status;
    const char *path = argv[optind];
    struct vhd_repair_report rep;
    struct hv_err err = {0};
    int ret = vhd_repair(path, &o, &rep, &err);
    if (ret < 0)
        return tool_fail(&err, ret);
    if (cli.is_json) {
        json_t *j = json_object();
        json_t *list = json_array();
        json_object_set_new(j, "filename", json_string(path));
        json_object_set_new(j, "dry-run", json_boolean(o.is_dry_run));
        json_object_set_new(j, "result", json_string(ret == 0 ? "sound" : "problems-remain"));
        for (int i = 0; i < rep.action_count; i++)
            json_array_append_new(list, json_string(rep.actions[i]));
        json_object_set_new(j, "actions", list);
        hv_json_print(stdout, j);
        json_decref(j);
    } else {
        for (int i = 0; i < rep.action_count; i++)
            printf("%s: %s%s\n", path, o.is_dry_run ? "would: " : "", rep.actions[i]);
        if (rep.action_count == 0)
            printf("%s: nothing to repair\n", path);
        else if (ret == 0 && !o.is_dry_run)
            printf("%s: repaired; vhd check finds no problem\n", path);
    }
    vhd_repair_report_free(&rep);
    return ret;
}
