/*
 * vhd_check: is one image's metadata sound, and does every byte of the file
 * belong to something?
 *
 * The check reads the structures itself (footer, its copy, header, BAT,
 * locators) through format.c's decoders, collecting every problem rather
 * than stopping at the first, so a user sees the whole damage at once. It
 * never writes. Problems are of two kinds: corruption (something points
 * where it must not, a checksum or a size is wrong: data may be lost or read
 * wrongly) and leaks (space that no structure uses: harmless, what a crash
 * between growing the file and using the growth leaves behind, and what
 * `vhd repair` reclaims). A third, not corruption either: an interrupted
 * operation whose state is recognised exactly (a resize between the footer
 * and its copy; a merge by its ANCESTOR.merging marker), reported with what
 * the image reads as and how to finish; exit 3 like a leak.
 */
#include "vhd.h"
#include "format.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* Leaks are counted in whole aligned pages of this size. Smaller gaps between
 * structures are alignment padding (block data on a 4 KiB boundary for
 * O_DIRECT, a BAT written in whole pages), not lost space. */
#define CHECK_PAGE_BYTES 4096u
/* The check stops listing after this many problems (a BAT full of garbage
 * would otherwise produce one line per entry). */
#define CHECK_MAX_PROBLEMS 256

struct check {
    const char *path;
    struct vhd_check_report *rep;
    int problem_cap;
    int corrupt_count;
    int dropped;
    bool is_oom;
    bool is_final; /* the "... and N more" line may use the last slot */
};

static void HV_PRINTF(3, 4) add_problem(struct check *c, bool is_leak, const char *fmt, ...)
{
    struct vhd_check_report *rep = c->rep;
    if (!is_leak)
        c->corrupt_count++;
    if (rep->problem_count >= CHECK_MAX_PROBLEMS - (c->is_final ? 0 : 1)) {
        c->dropped++;
        return;
    }
    if (rep->problem_count == c->problem_cap) {
        int cap = c->problem_cap ? c->problem_cap * 2 : 16;
        struct vhd_check_problem *p = realloc(rep->problems, (size_t)cap * sizeof(*p));
        if (!p) {
            c->is_oom = true;
            return;
        }
        rep->problems = p;
        c->problem_cap = cap;
    }
    struct vhd_check_problem *p = &rep->problems[rep->problem_count++];
    p->is_leak = is_leak;
    p->is_interrupted = false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->msg, sizeof(p->msg), fmt, ap);
    va_end(ap);
}

/* Messages from format.c start with "<path>: "; the report lists problems
 * of one file, so drop the repetition. */
static const char *strip_path(const struct check *c, const char *msg)
{
    size_t n = strlen(c->path);
    if (!strncmp(msg, c->path, n) && msg[n] == ':' && msg[n + 1] == ' ')
        return msg + n + 2;
    return msg;
}

static void bat_problem(void *arg, uint32_t index, const char *msg)
{
    struct check *c = arg;
    (void)index; /* the sentence names the entry already */
    add_problem(c, false, "%s", msg);
}

/* A region of the file that some structure owns. */
struct region {
    uint64_t start;
    uint64_t end;
    const char *what;
    uint32_t index; /* BAT entry or locator number */
};

static int region_cmp(const void *a, const void *b)
{
    const struct region *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

static const char *footer_field_diff(const struct vhd_footer *a, const struct vhd_footer *b)
{
    if (memcmp(a->cookie, b->cookie, 8))
        return "cookie";
    if (a->features != b->features)
        return "features";
    if (a->format_version != b->format_version)
        return "format version";
    if (a->data_offset != b->data_offset)
        return "data offset";
    if (a->timestamp != b->timestamp)
        return "timestamp";
    if (memcmp(a->creator_app, b->creator_app, 4))
        return "creator application";
    if (a->creator_version != b->creator_version)
        return "creator version";
    if (a->creator_os != b->creator_os)
        return "creator host OS";
    if (a->original_size != b->original_size)
        return "original size";
    if (a->current_size != b->current_size)
        return "current size";
    if (memcmp(&a->geometry, &b->geometry, sizeof(a->geometry)))
        return "disk geometry";
    if (a->disk_type != b->disk_type)
        return "disk type";
    if (a->checksum != b->checksum)
        return "checksum";
    if (memcmp(a->uuid, b->uuid, 16))
        return "unique id";
    if (a->saved_state != b->saved_state)
        return "saved state";
    return NULL;
}

/*
 * The one state an interrupted `vhd resize` of a dynamic or differencing
 * image leaves that is not already sound: the footer at the end (the switch
 * the engine, libvhdi and vhd-util read) says the new size, the copy at
 * offset 0 still the old one. Both valid, equal but for what a resize
 * writes (sizes, geometry, creator fields, hence the checksum): the image
 * reads at the footer's size; `vhd repair` rewrites the copy. The footer
 * must be one resize writes (original size = current size, geometry for
 * that size, our creator), and the BAT must cover both sizes (a grow makes
 * it cover the new size first; a shrink never cuts it).
 */
static bool is_resize_window(const struct vhd_footer *footer, const struct vhd_footer *copy,
                             uint64_t bat_covers)
{
    struct vhd_geometry g;
    vhd_geometry_for_size(footer->current_size, &g);
    if (footer->original_size != footer->current_size ||
        memcmp(&g, &footer->geometry, sizeof(g)) || memcmp(footer->creator_app, VHD_CREATOR_APP, 4) ||
        bat_covers < HV_MAX(footer->current_size, copy->current_size))
        return false;
    struct vhd_footer a = *footer, b = *copy;
    b.current_size = a.current_size;
    b.original_size = a.original_size;
    b.geometry = a.geometry;
    memcpy(b.creator_app, a.creator_app, sizeof(a.creator_app));
    b.creator_version = a.creator_version;
    b.creator_os = a.creator_os;
    b.checksum = a.checksum;
    return footer->current_size != copy->current_size && footer_field_diff(&a, &b) == NULL;
}

/*
 * An interrupted merge into `ancestor` (its marker, see merge.c): when
 * `self` is NULL the image checked is the ancestor, else the marker must
 * list `self` (stat identity) among the merged children.
 */
static void check_merge_marker(struct check *c, const char *ancestor, const struct stat *self)
{
    char mpath[PATH_MAX], line[PATH_MAX + 16], names[1024] = "";
    int ret = snprintf(mpath, sizeof(mpath), "%s%s", ancestor, VHD_MERGE_MARKER_SUFFIX);
    if (ret < 0 || (size_t)ret >= sizeof(mpath))
        return;
    FILE *fp = fopen(mpath, "re");
    if (!fp)
        return;
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", ancestor);
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = '\0';
    else
        dir[0] = '\0';
    bool is_durable = false, is_valid = false, is_mine = self == NULL;
    char top[PATH_MAX] = "";
    bool top_exists = false;
    while (fgets(line, sizeof(line), fp)) {
        line[strcspn(line, "\n")] = '\0';
        if (!strcmp(line, "hvstor merge 1"))
            is_valid = true;
        else if (!strcmp(line, "state durable"))
            is_durable = true;
        else if (!strncmp(line, "child ", 6)) {
            char cp[PATH_MAX * 2];
            struct stat st;
            snprintf(cp, sizeof(cp), "%s%s", line[6] == '/' ? "" : dir, line + 6);
            bool exists = stat(cp, &st) == 0;
            if (!top[0]) {
                snprintf(top, sizeof(top), "%s", line + 6);
                top_exists = exists;
            }
            if (exists) {
                size_t n = strlen(names);
                snprintf(names + n, sizeof(names) - n, "%s%s", n ? ", " : "", cp);
            }
            if (self && exists && st.st_dev == self->st_dev && st.st_ino == self->st_ino)
                is_mine = true;
        }
    }
    fclose(fp);
    if (!is_valid || !is_mine || !top[0])
        return;
    char topp[PATH_MAX * 2];
    snprintf(topp, sizeof(topp), "%s%s", top[0] == '/' ? "" : dir, top);
    c->rep->interrupted = is_durable ? VHD_INTERRUPTED_MERGE_AFTER : VHD_INTERRUPTED_MERGE_BEFORE;
    size_t before = (size_t)c->rep->problem_count;
    if (!is_durable)
        add_problem(c, true,
                    "merge of %s into %s interrupted: the chain reads as before; run `vhd "
                    "merge %s` again to finish",
                    topp, ancestor, topp);
    else if (top_exists)
        add_problem(c, true,
                    "merge of %s into %s interrupted: the data is durable, %s reads as after; "
                    "run `vhd merge %s` again to finish",
                    topp, ancestor, ancestor, topp);
    else
        add_problem(c, true,
                    "merge of %s into %s interrupted: the data is durable, %s reads as after; "
                    "the merged children left (%s) are no longer needed: delete them, then %s",
                    topp, ancestor, ancestor, names[0] ? names : "none", mpath);
    if ((size_t)c->rep->problem_count > before)
        c->rep->problems[before].is_interrupted = true;
}

struct leak_sum {
    uint64_t bytes;
    uint64_t first;
};

/*
 * Space in [start, end) that no structure owns. Only whole aligned pages
 * count (less is padding), and only pages the file really stores: a hole
 * (space freed by a discard, or a reserve never written) costs nothing and
 * is not a leak.
 */
static void count_leak(int fd, uint64_t start, uint64_t end, struct leak_sum *sum)
{
    uint64_t at = HV_ALIGN_UP(start, CHECK_PAGE_BYTES);
    uint64_t stop = HV_ALIGN_DOWN(end, CHECK_PAGE_BYTES);
    while (at < stop) {
        off_t data = lseek(fd, (off_t)at, SEEK_DATA);
        if (data < 0)
            return; /* ENXIO: only a hole remains */
        if ((uint64_t)data >= stop)
            return;
        off_t hole = lseek(fd, data, SEEK_HOLE);
        uint64_t run_end = hole < 0 ? stop : HV_MIN((uint64_t)hole, stop);
        uint64_t run_start = HV_ALIGN_DOWN((uint64_t)data, CHECK_PAGE_BYTES);
        if (run_start < at)
            run_start = at;
        run_end = HV_ALIGN_UP(run_end, CHECK_PAGE_BYTES);
        if (run_end > stop)
            run_end = stop;
        if (run_end > run_start) {
            sum->bytes += run_end - run_start;
            if (sum->first == UINT64_MAX)
                sum->first = run_start;
        }
        at = run_end > at ? run_end : at + CHECK_PAGE_BYTES;
    }
}

static int check_fixed(struct check *c, const struct vhd_footer *f, uint64_t file_bytes)
{
    uint64_t data_end = file_bytes - VHD_FOOTER_BYTES;
    if (data_end < f->current_size) {
        add_problem(c, false,
                    "file is %" PRIu64 " bytes, too short for a fixed image of "
                    "%" PRIu64 " bytes plus its footer (truncated?)",
                    file_bytes, f->current_size);
    } else if (data_end > f->current_size) {
        add_problem(c, true,
                    "%" PRIu64 " bytes between the end of the data and the footer "
                    "belong to nothing",
                    data_end - f->current_size);
        c->rep->leaked_bytes += data_end - f->current_size;
    }
    return 0;
}

static int check_dynamic(struct check *c, int fd, const struct vhd_footer *f, bool has_copy_region,
                         uint64_t file_bytes, uint64_t *bat_covers, struct hv_err *err)
{
    uint8_t hbuf[VHD_HEADER_BYTES];
    struct vhd_header h;
    struct hv_err herr = {0};
    uint32_t *bat = NULL;
    uint8_t *raw = NULL;
    struct region *regions = NULL;
    int ret = 0;
    uint64_t footer_offset = file_bytes - VHD_FOOTER_BYTES;

    if (f->data_offset > footer_offset || footer_offset - f->data_offset < VHD_HEADER_BYTES) {
        add_problem(c, false,
                    "footer: dynamic header offset %" PRIu64 " is outside the "
                    "%" PRIu64 "-byte file",
                    f->data_offset, file_bytes);
        return 0;
    }
    ret = hv_pread_full(fd, hbuf, sizeof(hbuf), f->data_offset);
    if (ret < 0)
        return hv_err_set(err, ret, "%s: read dynamic header at offset %" PRIu64 ": %s", c->path,
                          f->data_offset, strerror(-ret));
    ret = vhd_header_decode(hbuf, f, &h, c->path, file_bytes, &herr);
    if (ret < 0) {
        add_problem(c, false, "%s", strip_path(c, hv_err_msg(&herr, ret)));
        return 0;
    }

    /* Sizes: the BAT must cover the disk and fit in the file. */
    *bat_covers = (uint64_t)h.max_table_entries * h.block_bytes;
    uint32_t needed = vhd_blocks_for_size(f->current_size, h.block_bytes);
    if (h.max_table_entries < needed) {
        add_problem(c, false,
                    "dynamic header: %" PRIu32 " BAT entries cannot map a %" PRIu64
                    "-byte disk of %" PRIu32 "-byte blocks (%" PRIu32 " needed)",
                    h.max_table_entries, f->current_size, h.block_bytes, needed);
        return 0;
    }
    uint64_t bat_bytes = vhd_bat_bytes(h.max_table_entries);
    if (h.table_offset > footer_offset || bat_bytes > footer_offset - h.table_offset) {
        add_problem(c, false,
                    "dynamic header: BAT of %" PRIu64 " bytes at offset %" PRIu64
                    " does not fit in the %" PRIu64 "-byte file",
                    bat_bytes, h.table_offset, file_bytes);
        return 0;
    }
    raw = malloc(bat_bytes);
    bat = malloc((size_t)h.max_table_entries * sizeof(*bat) + 1);
    if (!raw || !bat) {
        ret = hv_err_set(err, -ENOMEM, "%s: no memory for a BAT of %" PRIu32 " entries", c->path,
                         h.max_table_entries);
        goto out;
    }
    ret = hv_pread_full(fd, raw, bat_bytes, h.table_offset);
    if (ret < 0) {
        ret = hv_err_set(err, ret, "%s: read BAT at offset %" PRIu64 ": %s", c->path,
                         h.table_offset, strerror(-ret));
        goto out;
    }
    vhd_bat_parse(raw, h.max_table_entries, bat);

    /* Every owned region: metadata first, then blocks. Overlaps among
     * metadata are checked here; blocks against metadata and each other by
     * format.c's BAT validation (which names the entries). */
    size_t nreg = 0, cap = 4 + VHD_LOCATOR_COUNT + h.max_table_entries;
    regions = calloc(cap, sizeof(*regions));
    if (!regions) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory", c->path);
        goto out;
    }
    if (has_copy_region)
        regions[nreg++] = (struct region){0, VHD_FOOTER_BYTES, "footer copy", 0};
    regions[nreg++] =
        (struct region){f->data_offset, f->data_offset + VHD_HEADER_BYTES, "dynamic header", 0};
    regions[nreg++] = (struct region){h.table_offset, h.table_offset + bat_bytes, "BAT", 0};
    for (int i = 0; i < VHD_LOCATOR_COUNT; i++) {
        const struct vhd_locator *loc = &h.locators[i];
        uint64_t space = vhd_locator_space_bytes(loc);
        if (loc->code == VHD_PLAT_NONE || space == 0)
            continue;
        if (loc->data_offset > footer_offset || space > footer_offset - loc->data_offset) {
            add_problem(c, false,
                        "parent locator %d: %" PRIu64 " bytes at offset %" PRIu64
                        " are outside the file",
                        i, space, loc->data_offset);
            continue;
        }
        regions[nreg++] = (struct region){loc->data_offset, loc->data_offset + space,
                                          "parent locator", (uint32_t)i};
    }
    size_t nmeta = nreg;
    qsort(regions, nmeta, sizeof(*regions), region_cmp);
    for (size_t i = 1; i < nmeta; i++) {
        if (regions[i].start < regions[i - 1].end)
            add_problem(c, false, "%s at offset %" PRIu64 " overlaps %s at offset %" PRIu64,
                        regions[i].what, regions[i].start, regions[i - 1].what,
                        regions[i - 1].start);
    }

    int nbad = vhd_bat_validate(bat, f, &h, footer_offset, bat_problem, c);
    if (nbad < 0) {
        ret = hv_err_set(err, nbad, "%s: out of memory validating the BAT", c->path);
        goto out;
    }

    /* Allocated bytes and leaks: what of [0, footer) does nothing own? Only
     * meaningful once the BAT is sound (a garbage BAT "owns" random ranges). */
    uint64_t block_span = (uint64_t)vhd_bitmap_bytes(h.block_bytes) + h.block_bytes;
    for (uint32_t i = 0; i < h.max_table_entries; i++) {
        if (bat[i] == VHD_BAT_UNALLOCATED)
            continue;
        uint64_t start = (uint64_t)bat[i] * HV_SECTOR_BYTES;
        uint64_t end = start + block_span;
        /* The last block of a disk whose size is not a whole number of
         * blocks may be cut at the footer by writers that trim it. */
        if (end > footer_offset)
            end = footer_offset;
        if (start < end)
            regions[nreg++] = (struct region){start, end, "block", i};
    }
    if (nbad == 0 && c->corrupt_count == 0) {
        qsort(regions, nreg, sizeof(*regions), region_cmp);
        struct leak_sum sum = {.first = UINT64_MAX};
        uint64_t covered = 0;
        for (size_t i = 0; i < nreg; i++) {
            if (regions[i].start > covered)
                count_leak(fd, covered, regions[i].start, &sum);
            if (regions[i].end > covered)
                covered = regions[i].end;
        }
        if (footer_offset > covered)
            count_leak(fd, covered, footer_offset, &sum);
        if (sum.bytes) {
            c->rep->leaked_bytes = sum.bytes;
            add_problem(c, true,
                        "%" PRIu64 " bytes of the file belong to no structure "
                        "(first at offset %" PRIu64 ")",
                        sum.bytes, sum.first);
        }
    }
    ret = 0;
out:
    free(regions);
    free(bat);
    free(raw);
    return ret;
}

int vhd_check(const char *path, struct vhd_check_report *report, struct hv_err *err)
{
    struct check c = {.path = path, .rep = report};
    uint8_t fbuf[VHD_FOOTER_BYTES], cbuf[VHD_FOOTER_BYTES];
    struct vhd_footer footer, copy;
    struct hv_err ferr = {0}, cerr = {0};
    struct stat st;
    bool is_diff = false;
    int ret;

    memset(report, 0, sizeof(*report));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return hv_err_errno(err, path, "open");
    if (fstat(fd, &st) < 0) {
        ret = hv_err_errno(err, path, "stat");
        goto out;
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        ret = hv_err_set(err, -EINVAL, "%s: not a regular file or block device", path);
        goto out;
    }
    uint64_t file_bytes =
        S_ISBLK(st.st_mode) ? (uint64_t)lseek(fd, 0, SEEK_END) : (uint64_t)st.st_size;
    if (file_bytes < VHD_FOOTER_BYTES) {
        add_problem(&c, false, "file is %" PRIu64 " bytes, too short to hold a footer",
                    file_bytes);
        goto done;
    }
    ret = hv_pread_full(fd, fbuf, sizeof(fbuf), file_bytes - VHD_FOOTER_BYTES);
    if (ret < 0) {
        ret = hv_err_set(err, ret, "%s: read footer: %s", path, strerror(-ret));
        goto out;
    }
    int fret = vhd_footer_decode(fbuf, &footer, path, "footer", file_bytes, &ferr);
    bool is_footer_ok = fret == 0;
    bool is_copy_ok = false;
    if (file_bytes >= 2 * VHD_FOOTER_BYTES) {
        ret = hv_pread_full(fd, cbuf, sizeof(cbuf), 0);
        if (ret < 0) {
            ret = hv_err_set(err, ret, "%s: read footer copy: %s", path, strerror(-ret));
            goto out;
        }
        is_copy_ok = vhd_footer_decode(cbuf, &copy, path, "footer copy", file_bytes, &cerr) == 0;
    }
    /* A fixed image has no copy: its offset 0 is disk data. */
    bool is_fixed = is_footer_ok ? footer.disk_type == VHD_TYPE_FIXED
                                 : !is_copy_ok || copy.disk_type == VHD_TYPE_FIXED;
    if (!is_footer_ok) {
        add_problem(&c, false, "%s%s", strip_path(&c, hv_err_msg(&ferr, fret)),
                    is_fixed ? "" : " (the footer copy at offset 0 is intact)");
        if (is_fixed)
            goto done;
    }
    const struct vhd_footer *f = is_footer_ok ? &footer : &copy;
    if (is_fixed) {
        ret = check_fixed(&c, f, file_bytes);
        goto done;
    }
    if (file_bytes < 2 * VHD_FOOTER_BYTES + VHD_HEADER_BYTES) {
        add_problem(&c, false, "file is %" PRIu64 " bytes, too short for a %s image", file_bytes,
                    vhd_type_name((enum vhd_type)f->disk_type));
        goto done;
    }
    is_diff = f->disk_type == VHD_TYPE_DIFFERENCING;
    uint64_t bat_covers = 0;
    ret = check_dynamic(&c, fd, f, true, file_bytes, &bat_covers, err);
    if (ret < 0)
        goto out;
    if (!is_copy_ok) {
        add_problem(&c, false, "%s", strip_path(&c, hv_err_msg(&cerr, -EINVAL)));
    } else if (is_footer_ok) {
        const char *field = footer_field_diff(&footer, &copy);
        if (field && is_resize_window(&footer, &copy, bat_covers)) {
            report->interrupted = VHD_INTERRUPTED_RESIZE;
            add_problem(&c, true,
                        "interrupted resize: reads at the new size %" PRIu64
                        " (the footer copy at offset 0 still says %" PRIu64
                        "); `vhd repair` rewrites the copy",
                        footer.current_size, copy.current_size);
            report->problems[report->problem_count - 1].is_interrupted = true;
        } else if (field)
            add_problem(&c, false,
                        "footer copy at offset 0 differs from the footer at "
                        "the end (%s)",
                        field);
    }
done:
    /* An interrupted merge into this image, or of this image (the markers
     * beside the ancestors in its chain). */
    check_merge_marker(&c, path, NULL);
    if (is_diff) {
        struct vhd_chain_report chain = {0};
        struct hv_err werr = {0};
        if (vhd_chain_walk(path, &chain, &werr) == 0) {
            for (int i = 1; i < chain.count; i++)
                check_merge_marker(&c, chain.links[i].path, &st);
        }
        vhd_chain_report_free(&chain);
    }
    if (c.dropped) {
        c.is_final = true;
        c.corrupt_count--; /* the summary line is not a problem of its own */
        add_problem(&c, false, "... and %d more problems", c.dropped);
    }
    if (c.is_oom) {
        ret = hv_err_set(err, -ENOMEM, "%s: out of memory listing problems", path);
        goto out;
    }
    ret = c.corrupt_count         ? VHD_CHECK_CORRUPT
          : report->problem_count ? VHD_CHECK_LEAKED
                                  : VHD_CHECK_CLEAN;
out:
    if (ret < 0)
        vhd_check_report_free(report);
    close(fd);
    return ret;
}

void vhd_check_report_free(struct vhd_check_report *report)
{
    if (!report)
        return;
    free(report->problems);
    report->problems = NULL;
    report->problem_count = 0;
}
