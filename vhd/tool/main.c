/*
 * vhd — the offline image tool: create, info, check, convert, compare,
 * bench. Each subcommand parses its own options (tool_getopt, here, handles
 * what they all share: --help, usage errors, --json, --progress), calls one
 * library operation, and prints the library's error message once (it
 * already names the file, the structure and the problem).
 */
#include "tool.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *prog = "vhd";

void tool_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int tool_parse_size(const char *opt_name, const char *text, uint64_t *bytes)
{
    int ret = hv_parse_size(text, bytes);
    if (ret == -ERANGE)
        tool_error("%s '%s': too large", opt_name, text);
    else if (ret < 0)
        tool_error("%s '%s': not a size (examples: 10G, 512M, 64k, 4096)", opt_name, text);
    return ret;
}

int tool_fail(const struct hv_err *err, int ret)
{
    tool_error("%s", hv_err_msg(err, ret));
    return 1;
}

/* Values of the shared long options that have no short form: above any
 * character and any value a command picks for its own. */
enum { OPT_JSON = 0x1000 };

static void cli_add(struct tool_cli *cli, size_t *n, const struct option *o)
{
    if (*n + 1 >= HV_ARRAY_SIZE(cli->all_long)) {
        tool_error("internal error: too many options");
        abort();
    }
    cli->all_long[(*n)++] = *o;
}

static void cli_build(struct tool_cli *cli)
{
    static const struct option help = {"help", no_argument, NULL, 'h'};
    static const struct option json = {"json", no_argument, NULL, OPT_JSON};
    static const struct option progress = {"progress", no_argument, NULL, 'p'};
    size_t n = 0;
    for (const struct option *o = cli->longopts; o && o->name; o++)
        cli_add(cli, &n, o);
    if (cli->has_json)
        cli_add(cli, &n, &json);
    if (cli->has_progress)
        cli_add(cli, &n, &progress);
    cli_add(cli, &n, &help);
    snprintf(cli->all_short, sizeof(cli->all_short), "%s%sh",
             cli->shortopts ? cli->shortopts : "", cli->has_progress ? "p" : "");
}

static int cli_exit(struct tool_cli *cli, bool is_help)
{
    fputs(cli->usage, is_help ? stdout : stderr);
    cli->exit_status = is_help ? 0 : cli->usage_exit ? cli->usage_exit : 1;
    return TOOL_OPT_EXIT;
}

int tool_getopt(struct tool_cli *cli, int argc, char **argv)
{
    if (!cli->all_long[0].name)
        cli_build(cli);
    for (;;) {
        int c = getopt_long(argc, argv, cli->all_short, cli->all_long, NULL);
        if (c == -1) {
            if (optind == argc - cli->operands)
                return TOOL_OPT_DONE;
            tool_error("%s",
                       cli->operand_error ? cli->operand_error : "missing or extra operands");
            return cli_exit(cli, false);
        }
        if (c == 'h')
            return cli_exit(cli, true);
        if (c == '?' || c == ':')
            return cli_exit(cli, false);
        if (c == OPT_JSON && cli->has_json)
            cli->is_json = true;
        else if (c == 'p' && cli->has_progress)
            cli->show_progress = true;
        else
            return c;
    }
}

/* --block-size of create and convert: what a VHD can hold (the field is 32
 * bits; the format wants a power of two of whole sectors). */
static int parse_block_size(const char *text, uint32_t *block_bytes)
{
    uint64_t v;
    if (tool_parse_size("--block-size", text, &v) < 0)
        return -1;
    if (v < HV_SECTOR_BYTES || v > UINT32_MAX || (v & (v - 1))) {
        tool_error("--block-size '%s': must be a power of two from 512 bytes to 2 GiB", text);
        return -1;
    }
    *block_bytes = (uint32_t)v;
    return 0;
}

/* ---------------------------------------------------------------- create */

static const char create_usage[] =
    "Usage: vhd create --type fixed|dynamic|differencing [--size SIZE]\n"
    "                  [--parent PATH] [--block-size SIZE] FILE\n"
    "\n"
    "Create a new VHD image. The virtual size is exactly SIZE bytes (never\n"
    "rounded to the CHS geometry); SIZE takes suffixes K, M, G, T (binary).\n"
    "Fixed images are preallocated. A differencing image needs --parent and\n"
    "takes the parent's size unless --size is given. An existing FILE is never\n"
    "overwritten.\n"
    "\n"
    "  -t, --type TYPE         fixed, dynamic or differencing (default dynamic)\n"
    "  -s, --size SIZE         virtual size\n"
    "  -b, --parent PATH       parent image of a differencing image\n"
    "  -B, --block-size SIZE   block size of dynamic/differencing images (2M)\n"
    "  -h, --help              this text\n";

static int cmd_create(int argc, char **argv)
{
    static const struct option opts[] = {
        {"type", required_argument, NULL, 't'},   {"size", required_argument, NULL, 's'},
        {"parent", required_argument, NULL, 'b'}, {"block-size", required_argument, NULL, 'B'},
        {0},
    };
    struct tool_cli cli = {
        .usage = create_usage, .shortopts = "t:s:b:B:", .longopts = opts, .operands = 1};
    struct vhd_create_options o = {.type = VHD_TYPE_DYNAMIC};
    bool has_type = false, has_size = false;
    int c;
    while ((c = tool_getopt(&cli, argc, argv)) >= 0) {
        switch (c) {
        case 't':
            if (vhd_type_parse(optarg, &o.type) < 0) {
                tool_error("--type '%s': expected fixed, dynamic or differencing", optarg);
                return 1;
            }
            has_type = true;
            break;
        case 's':
            if (tool_parse_size("--size", optarg, &o.size_bytes) < 0)
                return 1;
            has_size = true;
            break;
        case 'b':
            o.parent_path = optarg;
            break;
        case 'B':
            if (parse_block_size(optarg, &o.block_bytes) < 0)
                return 1;
            break;
        }
    }
    if (c == TOOL_OPT_EXIT)
        return cli.exit_status;
    const char *path = argv[optind];
    if (!has_type && o.parent_path)
        o.type = VHD_TYPE_DIFFERENCING;
    if (o.type == VHD_TYPE_DIFFERENCING && !o.parent_path) {
        tool_error("%s: a differencing image needs --parent", path);
        return 1;
    }
    if (o.type != VHD_TYPE_DIFFERENCING && o.parent_path) {
        tool_error("%s: --parent is only for differencing images", path);
        return 1;
    }
    if (o.type != VHD_TYPE_DIFFERENCING && !has_size) {
        tool_error("%s: --size is required for a %s image", path, vhd_type_name(o.type));
        return 1;
    }
    if (o.type == VHD_TYPE_FIXED && o.block_bytes) {
        tool_error("%s: fixed images have no blocks; drop --block-size", path);
        return 1;
    }
    struct hv_err err = {0};
    int ret = vhd_create(path, &o, &err);
    if (ret < 0)
        return tool_fail(&err, ret);
    struct vhd_info info;
    char sz[32];
    if (vhd_inspect(path, &info, &err) == 0)
        printf("Created %s: %s, virtual size %s (%" PRIu64 " bytes)\n", path,
               vhd_type_name(info.type), hv_format_size(info.size_bytes, sz), info.size_bytes);
    return 0;
}

/* ------------------------------------------------------------------ info */

static const char info_usage[] =
    "Usage: vhd info [--json] [--chain] FILE\n"
    "\n"
    "Show what a VHD image says about itself: type, exact virtual size, unique\n"
    "id, block size, allocated bytes, creator, geometry, whether the footer,\n"
    "its copy and the dynamic header checksums hold, and the parent of a\n"
    "differencing image. Fails with a message naming the damaged structure.\n"
    "\n"
    "  --json       machine-readable output\n"
    "  --chain      the chain from FILE to its base as a tree: each image's size,\n"
    "               allocated bytes, how its parent was found and whether its\n"
    "               identity matches what the child recorded (exit 1 if broken)\n"
    "  -h, --help   this text\n";

static void print_time(const char *label, uint32_t vhd_seconds)
{
    /* VHD timestamps count from 2000-01-01 00:00:00 UTC. */
    time_t t = (time_t)vhd_seconds + 946684800;
    struct tm tm;
    char buf[64];
    gmtime_r(&t, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
    printf("%-18s%s\n", label, buf);
}

static const char *ok_text(bool ok)
{
    return ok ? "ok" : "BAD";
}

static int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {
        {"chain", no_argument, NULL, 'c'},
        {0},
    };
    struct tool_cli cli = {
        .usage = info_usage, .longopts = opts, .operands = 1, .has_json = true};
    bool is_chain = false;
    int c;
    while ((c = tool_getopt(&cli, argc, argv)) >= 0)
        is_chain |= c == 'c';
    if (c == TOOL_OPT_EXIT)
        return cli.exit_status;
    const char *path = argv[optind];
    bool is_json = cli.is_json;
    if (is_chain)
        return cmd_info_chain(path, is_json);
    struct vhd_info *info = calloc(1, sizeof(*info));
    struct hv_err err = {0};
    if (!info) {
        tool_error("out of memory");
        return 1;
    }
    int ret = vhd_inspect(path, info, &err);
    if (ret < 0) {
        tool_error("%s", hv_err_msg(&err, ret));
        free(info);
        return 1;
    }
    if (is_json) {
        json_t *obj = vhd_info_to_json(info);
        if (!obj) {
            tool_error("%s: cannot build JSON", path);
            free(info);
            return 1;
        }
        json_t *with_name = json_object();
        json_object_set_new(with_name, "filename", json_string(path));
        json_object_update(with_name, obj);
        hv_json_print(stdout, with_name);
        json_decref(with_name);
        json_decref(obj);
        free(info);
        return 0;
    }
    char sz[32], uuid[37];
    printf("%-18s%s\n", "image:", path);
    printf("%-18s%s\n", "file format:", "vhd");
    printf("%-18s%s\n", "type:", vhd_type_name(info->type));
    printf("%-18s%s (%" PRIu64 " bytes)\n", "virtual size:", hv_format_size(info->size_bytes, sz),
           info->size_bytes);
    if (info->original_size_bytes != info->size_bytes)
        printf("%-18s%" PRIu64 " bytes\n", "original size:", info->original_size_bytes);
    printf("%-18s%s (%" PRIu64 " bytes)\n", "file length:", hv_format_size(info->file_bytes, sz),
           info->file_bytes);
    if (info->type != VHD_TYPE_FIXED) {
        printf("%-18s%s (%" PRIu64 " bytes)\n",
               "allocated:", hv_format_size(info->allocated_bytes, sz), info->allocated_bytes);
        printf("%-18s%" PRIu32 "\n", "block size:", info->block_bytes);
        printf("%-18s%" PRIu32 "\n", "BAT entries:", info->max_table_entries);
    }
    hv_uuid_format(info->uuid, uuid);
    printf("%-18s%s\n", "uuid:", uuid);
    print_time("created:", info->timestamp);
    printf("%-18s\"%s\" version %u.%u (0x%08x) on \"%s\"\n", "creator:", info->creator_app,
           info->creator_version >> 16, info->creator_version & 0xFFFF, info->creator_version,
           info->creator_os);
    printf("%-18s%u/%u/%u (cylinders/heads/sectors)\n", "geometry:", info->geometry.cylinders,
           info->geometry.heads, info->geometry.sectors_per_track);
    if (info->type == VHD_TYPE_FIXED)
        printf("%-18sfooter %s\n", "checksums:", ok_text(info->is_footer_ok));
    else
        printf("%-18sfooter %s, footer copy %s, dynamic header %s\n",
               "checksums:", ok_text(info->is_footer_ok), ok_text(info->is_footer_copy_ok),
               ok_text(info->is_header_ok));
    if (info->has_parent) {
        hv_uuid_format(info->parent_uuid, uuid);
        printf("%-18s%s\n", "parent:", info->parent_name);
        printf("%-18s%s\n", "parent uuid:", uuid);
        print_time("parent modified:", info->parent_timestamp);
        if (info->parent_relative[0])
            printf("%-18s%s\n", "locator W2ru:", info->parent_relative);
        if (info->parent_absolute[0])
            printf("%-18s%s\n", "locator W2ku:", info->parent_absolute);
        if (info->parent_macx[0])
            printf("%-18s%s\n", "locator MacX:", info->parent_macx);
    }
    free(info);
    return 0;
}

/* ----------------------------------------------------------------- check */

static const char check_usage[] =
    "Usage: vhd check [--json] FILE\n"
    "\n"
    "Check one image's metadata (not its parents): footer and its copy,\n"
    "dynamic header, BAT entries inside the file, not overlapping each other\n"
    "or the metadata, sizes that make sense, and space no structure uses.\n"
    "Every problem is listed.\n"
    "\n"
    "An interrupted operation is recognised and named with what the image\n"
    "reads as: a resize stopped between the footer and its copy at offset 0\n"
    "(reads at the new size; `vhd repair` rewrites the copy), a merge stopped\n"
    "while copying (FILE or ANCESTOR.merging present: the chain reads as\n"
    "before; run the merge again) or after its data was durable (the\n"
    "ancestor reads as after; run it again or delete the children left).\n"
    "\n"
    "Exit status: 0 clean, 2 corruption, 3 no corruption but leaked space or\n"
    "an interrupted operation (safe; `vhd repair` or the named command\n"
    "finishes it), 1 the file could not be checked.\n"
    "\n"
    "  --json       machine-readable output\n"
    "  -h, --help   this text\n";

static int cmd_check(int argc, char **argv)
{
    struct tool_cli cli = {.usage = check_usage, .operands = 1, .has_json = true};
    if (tool_getopt(&cli, argc, argv) == TOOL_OPT_EXIT)
        return cli.exit_status;
    const char *path = argv[optind];
    bool is_json = cli.is_json;
    struct vhd_check_report rep = {0};
    struct hv_err err = {0};
    int ret = vhd_check(path, &rep, &err);
    if (ret < 0) {
        tool_error("%s", hv_err_msg(&err, ret));
        if (is_json) {
            json_t *o = json_object();
            json_object_set_new(o, "filename", json_string(path));
            json_object_set_new(o, "result", json_string("error"));
            json_object_set_new(o, "error", json_string(hv_err_msg(&err, ret)));
            hv_json_print(stdout, o);
            json_decref(o);
        }
        vhd_check_report_free(&rep);
        return 1;
    }
    const char *result = ret == VHD_CHECK_CLEAN ? "clean"
                         : ret == VHD_CHECK_CORRUPT ? "corrupt"
                         : rep.interrupted          ? "interrupted"
                                                    : "leaked";
    if (is_json) {
        json_t *o = json_object();
        json_t *list = json_array();
        json_object_set_new(o, "filename", json_string(path));
        json_object_set_new(o, "result", json_string(result));
        json_object_set_new(o, "leaked-bytes", json_integer((json_int_t)rep.leaked_bytes));
        for (int i = 0; i < rep.problem_count; i++) {
            json_t *p = json_object();
            json_object_set_new(p, "kind",
                                json_string(rep.problems[i].is_interrupted ? "interrupted"
                                            : rep.problems[i].is_leak      ? "leak"
                                                                           : "corruption"));
            json_object_set_new(p, "message", json_string(rep.problems[i].msg));
            json_array_append_new(list, p);
        }
        json_object_set_new(o, "problems", list);
        hv_json_print(stdout, o);
        json_decref(o);
    } else {
        int corrupt = 0;
        for (int i = 0; i < rep.problem_count; i++)
            corrupt += !rep.problems[i].is_leak;
        for (int i = 0; i < rep.problem_count; i++)
            printf("%s: %s: %s\n", path,
                   rep.problems[i].is_interrupted ? "interrupted"
                   : rep.problems[i].is_leak      ? "leak"
                                                  : "ERROR",
                   rep.problems[i].msg);
        if (ret == VHD_CHECK_CLEAN) {
            printf("%s: no errors found\n", path);
        } else if (ret == VHD_CHECK_LEAKED && !rep.leaked_bytes) {
            printf("%s: no corruption; an interrupted operation to finish\n", path);
        } else if (ret == VHD_CHECK_LEAKED) {
            char sz[32];
            printf("%s: no corruption; %s (%" PRIu64 " bytes) leaked\n", path,
                   hv_format_size(rep.leaked_bytes, sz), rep.leaked_bytes);
        } else {
            printf("%s: %d corruption problem%s found\n", path, corrupt, corrupt == 1 ? "" : "s");
        }
    }
    vhd_check_report_free(&rep);
    return ret;
}

/* --------------------------------------------------------------- convert */

static const char convert_usage[] =
    "Usage: vhd convert [-f raw|vhd] [-O raw|vhd] [--type fixed|dynamic]\n"
    "                   [--block-size SIZE] [-p] SRC DST\n"
    "\n"
    "Copy what SRC reads into a new image DST (which must not exist). Formats\n"
    "are detected from content unless given; a differencing chain becomes one\n"
    "flat image. Zero ranges are not written: a dynamic DST allocates only the\n"
    "blocks that hold data, a raw DST stays sparse.\n"
    "\n"
    "  -f FMT              format of SRC: raw or vhd (\"vpc\" is accepted)\n"
    "  -O FMT              format of DST: vhd (default) or raw\n"
    "  -t, --type TYPE     VHD output type: dynamic (default) or fixed\n"
    "  -B, --block-size SIZE  block size of a dynamic DST (2M)\n"
    "  -d, --depth N       chunks in flight (16)\n"
    "  -p, --progress      show a progress bar (default when stderr is a terminal)\n"
    "  -h, --help          this text\n";

static int parse_format(const char *opt, const char *text, enum vhd_image_format *fmt)
{
    if (vhd_image_format_parse(text, fmt) < 0) {
        tool_error("%s '%s': expected raw or vhd", opt, text);
        return -1;
    }
    return 0;
}

static int cmd_convert(int argc, char **argv)
{
    static const struct option opts[] = {
        {"type", required_argument, NULL, 't'},
        {"block-size", required_argument, NULL, 'B'},
        {"depth", required_argument, NULL, 'd'},
        {0},
    };
    struct tool_cli cli = {.usage = convert_usage, .shortopts = "f:O:t:B:d:", .longopts = opts,
                           .operands = 2, .has_progress = true};
    struct vhd_convert_options o = {0};
    uint64_t v;
    int c;
    while ((c = tool_getopt(&cli, argc, argv)) >= 0) {
        switch (c) {
        case 'f':
            if (parse_format("-f", optarg, &o.src_format) < 0)
                return 1;
            break;
        case 'O':
            if (parse_format("-O", optarg, &o.dst_format) < 0)
                return 1;
            break;
        case 't':
            if (vhd_type_parse(optarg, &o.dst_type) < 0 || o.dst_type == VHD_TYPE_DIFFERENCING) {
                tool_error("--type '%s': expected fixed or dynamic", optarg);
                return 1;
            }
            break;
        case 'B':
            if (parse_block_size(optarg, &o.block_bytes) < 0)
                return 1;
            break;
        case 'd':
            if (hv_parse_u64(optarg, &v) < 0 || v == 0 || v > 1024) {
                tool_error("--depth '%s': expected 1 to 1024", optarg);
                return 1;
            }
            o.depth = (unsigned)v;
            break;
        }
    }
    if (c == TOOL_OPT_EXIT)
        return cli.exit_status;
    o.show_progress = cli.show_progress;
    if (o.dst_format == VHD_FORMAT_RAW && (o.dst_type || o.block_bytes)) {
        tool_error("%s: --type and --block-size apply to VHD output only", argv[optind + 1]);
        return 1;
    }
    struct hv_err err = {0};
    int ret = vhd_convert(argv[optind], argv[optind + 1], &o, &err);
    return ret < 0 ? tool_fail(&err, ret) : 0;
}

/* --------------------------------------------------------------- compare */

static const char compare_usage[] =
    "Usage: vhd compare [-f FMT] [-F FMT] [-s] A B\n"
    "\n"
    "Compare what two images read (raw or VHD, chains flattened). Images of\n"
    "different sizes are the same when the longer reads zero beyond the end\n"
    "of the shorter (as with qemu-img compare), unless -s.\n"
    "\n"
    "Exit status: 0 same content, 1 different (the first differing byte\n"
    "offset is printed), 2 an image could not be read.\n"
    "\n"
    "  -f FMT       format of A (raw or vhd; detected by default)\n"
    "  -F FMT       format of B\n"
    "  -s, --strict different sizes are a difference\n"
    "  -h, --help   this text\n";

static int cmd_compare(int argc, char **argv)
{
    static const struct option opts[] = {
        {"strict", no_argument, NULL, 's'},
        {0},
    };
    /* Usage errors exit 2 like unreadable images: 1 means "different". */
    struct tool_cli cli = {.usage = compare_usage, .shortopts = "f:F:s", .longopts = opts,
                           .operands = 2, .usage_exit = 2};
    enum vhd_image_format fa = VHD_FORMAT_AUTO, fb = VHD_FORMAT_AUTO;
    bool is_strict = false;
    int c;
    while ((c = tool_getopt(&cli, argc, argv)) >= 0) {
        switch (c) {
        case 'f':
            if (parse_format("-f", optarg, &fa) < 0)
                return 2;
            break;
        case 'F':
            if (parse_format("-F", optarg, &fb) < 0)
                return 2;
            break;
        case 's':
            is_strict = true;
            break;
        }
    }
    if (c == TOOL_OPT_EXIT)
        return cli.exit_status;
    const char *a = argv[optind], *b = argv[optind + 1];
    struct vhd_compare_result res;
    struct hv_err err = {0};
    int ret = vhd_compare(a, fa, b, fb, is_strict, &res, &err);
    if (ret < 0) {
        tool_error("%s", hv_err_msg(&err, ret));
        return 2;
    }
    if (res.has_size_mismatch)
        printf("Warning: image sizes differ: %s is %" PRIu64 " bytes, %s is %" PRIu64 " bytes\n",
               a, res.size_a, b, res.size_b);
    if (res.is_same) {
        printf("Images are identical.\n");
        return 0;
    }
    uint64_t common_bytes = HV_MIN(res.size_a, res.size_b);
    if (is_strict && res.has_size_mismatch && res.first_difference >= common_bytes)
        printf("Strict mode: image size mismatch.\n");
    else
        printf("Content mismatch at offset %" PRIu64 "!\n", res.first_difference);
    return 1;
}

/* ------------------------------------------------------------------ main */

static const char main_usage[] =
    "Usage: vhd COMMAND [OPTIONS] ARGS...\n"
    "\n"
    "Offline tool for Microsoft VHD 1.0 images (fixed, dynamic, differencing).\n"
    "\n"
    "Commands:\n"
    "  create    create a new image with an exact virtual size\n"
    "  info      show an image's metadata\n"
    "  check     check an image's metadata for corruption and leaked space\n"
    "  convert   copy any image (raw, VHD, chain) into a new raw or VHD image\n"
    "  compare   check whether two images read the same\n"
    "  bench     load generator over the VHD engine (flags as qemu-img bench)\n"
    "  merge     fold a differencing image into its parent or an ancestor\n"
    "  compact   give back zero blocks and unused space; the file shrinks\n"
    "  resize    change the virtual size (exact), growing the BAT as needed\n"
    "  set-parent  relink a differencing image to its moved parent\n"
    "  repair    fix a damaged footer, copy, checksums or BAT; reclaim leaks\n"
    "  map       which ranges hold data, in which image of the chain\n"
    "  mount     the virtual disk as a file through FUSE (and unmount)\n"
    "\n"
    "`vhd COMMAND --help` describes each command. Sizes take K, M, G, T suffixes\n"
    "(binary units). Errors name the file and the problem; the exit status is\n"
    "non-zero on failure.\n";

int main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"create", cmd_create},   {"info", cmd_info},       {"check", cmd_check},
        {"convert", cmd_convert}, {"compare", cmd_compare}, {"bench", cmd_bench},
        {"map", cmd_map},         {"mount", cmd_mount},     {"unmount", cmd_unmount},
        /* life-of-an-image operations (cmd_ops.c) */
        {"merge", cmd_merge},     {"compact", cmd_compact}, {"resize", cmd_resize},
        {"set-parent", cmd_set_parent}, {"repair", cmd_repair},
    };
    hv_log_set_ident("vhd");
    if (argc < 2) {
        fputs(main_usage, stderr);
        return 1;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(main_usage, stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("vhd (hvstor) 0.1.0\n");
        return 0;
    }
    for (size_t i = 0; i < HV_ARRAY_SIZE(cmds); i++) {
        if (!strcmp(argv[1], cmds[i].name)) {
            static char name[64];
            snprintf(name, sizeof(name), "vhd %s", cmds[i].name);
            prog = name;
            return cmds[i].fn(argc - 1, argv + 1);
        }
    }
    tool_error("unknown command '%s' (try 'vhd --help')", argv[1]);
    return 1;
}
