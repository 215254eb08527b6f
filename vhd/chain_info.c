/*
 * chain_info.c — walk a differencing chain from child to base for `vhd info
 * --chain`, telling how each parent was found and whether it is the image
 * the child recorded.
 *
 * The engine finds parents when it opens a chain and refuses anything wrong;
 * this walk finds them by the same rules (same candidates, same order, the
 * uuid decides) but is meant for a person looking at a chain that may be
 * broken, so it reports how far it got and what stopped it instead of only
 * failing. tests/integration/vhd/test_chain_locators.sh checks that both
 * walks pick the same files.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "engine.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>

const char *vhd_parent_source_name(enum vhd_parent_source source)
{
    switch (source) {
    case VHD_PARENT_W2RU: return "W2ru";
    case VHD_PARENT_W2KU: return "W2ku";
    case VHD_PARENT_MACX: return "MacX";
    case VHD_PARENT_NAME: return "name";
    case VHD_PARENT_NONE:
    default: return "none";
    }
}

/* "dir/./p.vhd" -> "dir/p.vhd", "a//b" -> "a/b": paths as a person writes them. */
static void tidy_path(char *path)
{
    char *out = path;
    const char *in = path;
    while (*in) {
        if (in[0] == '.' && (in[1] == '/' || in[1] == '\0') && (in == path || in[-1] == '/')) {
            in += in[1] ? 2 : 1;
            continue;
        }
        if (in[0] == '/' && out > path && out[-1] == '/') {
            in++;
            continue;
        }
        *out++ = *in++;
    }
    if (out > path + 1 && out[-1] == '/')
        out--;
    *out = '\0';
}

int vhd_parent_candidates(const char *child_path, const char *relative, const char *absolute,
                          const char *macx, const char *name,
                          struct vhd_parent_candidate cands[4])
{
    const struct {
        const char *text;
        enum vhd_parent_source source;
    } locs[3] = {
        { relative, VHD_PARENT_W2RU },
        { absolute, VHD_PARENT_W2KU },
        { macx, VHD_PARENT_MACX },
    };
    char dir_copy[PATH_MAX];
    const char *dir;
    int n = 0;

    snprintf(dir_copy, sizeof(dir_copy), "%s", child_path);
    dir = dirname(dir_copy);
    for (int i = 0; i < 3; i++) {
        const char *t = locs[i].text;
        if (!t || !t[0] || t[1] == ':')
            continue;
        if (t[0] == '/')
            snprintf(cands[n].path, PATH_MAX, "%s", t);
        else
            snprintf(cands[n].path, PATH_MAX, "%s/%s", dir, t);
        cands[n++].source = locs[i].source;
    }
    if (name && name[0]) {
        char copy[PATH_MAX];
        const char *base;
        snprintf(copy, sizeof(copy), "%s", name);
        for (char *c = copy; *c; c++)
            if (*c == '\\')
                *c = '/';
        base = strrchr(copy, '/');
        base = base ? base + 1 : copy;
        if (*base) {
            snprintf(cands[n].path, PATH_MAX, "%s/%s", dir, base);
            cands[n++].source = VHD_PARENT_NAME;
        }
    }
    for (int i = 0; i < n; i++)
        tidy_path(cands[i].path);
    return n;
}

static struct vhd_chain_link *append(struct vhd_chain_report *rep, int *cap)
{
    if (rep->count == *cap) {
        int ncap = *cap ? *cap * 2 : 4;
        struct vhd_chain_link *n = realloc(rep->links, (size_t)ncap * sizeof(*n));
        if (!n)
            return NULL;
        rep->links = n;
        *cap = ncap;
    }
    memset(&rep->links[rep->count], 0, sizeof(rep->links[0]));
    return &rep->links[rep->count++];
}

static void stop(struct vhd_chain_report *rep, int code, const char *fmt, ...) HV_PRINTF(3, 4);
static void stop(struct vhd_chain_report *rep, int code, const char *fmt, ...)
{
    va_list ap;
    rep->problem = code;
    va_start(ap, fmt);
    vsnprintf(rep->problem_msg, sizeof(rep->problem_msg), fmt, ap);
    va_end(ap);
}

/*
 * Find the parent of the last link. Returns 1 when a link was appended and
 * the walk may go on, 0 when the walk stopped (problem set, maybe after
 * appending a mismatched parent for display), -ENOMEM.
 */
static int next_parent(struct vhd_chain_report *rep, int *cap, struct stat *seen)
{
    const struct vhd_chain_link *child = &rep->links[rep->count - 1];
    struct vhd_parent_candidate cands[4];
    struct vhd_info *mismatch = NULL;
    int mismatch_at = -1;
    char unreadable[1024] = "";
    int unreadable_code = 0;
    char tried[2048] = "";
    int n = vhd_parent_candidates(child->path, child->info.parent_relative,
                                  child->info.parent_absolute, child->info.parent_macx,
                                  child->info.parent_name, cands);
    int ret = 0;

    for (int i = 0; i < n; i++) {
        struct vhd_info *info;
        struct hv_err perr = { 0 };
        struct stat st;
        size_t used = strlen(tried);

        snprintf(tried + used, sizeof(tried) - used, "%s%s", used ? ", " : "", cands[i].path);
        if (stat(cands[i].path, &st) < 0)
            continue;
        for (int k = 0; k < rep->count; k++) {
            if (seen[k].st_dev == st.st_dev && seen[k].st_ino == st.st_ino) {
                stop(rep, -ELOOP, "%s: parent %s (found by %s) is already in the chain "
                     "(a loop)", child->path, cands[i].path,
                     vhd_parent_source_name(cands[i].source));
                goto out;
            }
        }
        info = malloc(sizeof(*info));
        if (!info) {
            ret = -ENOMEM;
            goto out;
        }
        ret = vhd_inspect(cands[i].path, info, &perr);
        if (ret < 0) {
            free(info);
            ret = 0;
            /* Not a usable VHD here: a later locator may still name the
             * real parent, as it does for the engine. */
            if (perr.code != -ENOENT && !unreadable[0]) {
                snprintf(unreadable, sizeof(unreadable), "%s: parent candidate %s (found by "
                         "%s): %s", child->path, cands[i].path,
                         vhd_parent_source_name(cands[i].source), hv_err_msg(&perr, perr.code));
                unreadable_code = perr.code ? perr.code : -EIO;
            }
            continue;
        }
        if (memcmp(info->uuid, child->info.parent_uuid, 16) != 0) {
            if (!mismatch) {
                mismatch = info;
                mismatch_at = i;
            } else {
                free(info);
            }
            continue;
        }
        {
            struct vhd_chain_link *l = append(rep, cap);
            if (!l) {
                free(info);
                ret = -ENOMEM;
                goto out;
            }
            child = &rep->links[rep->count - 2];
            snprintf(l->path, sizeof(l->path), "%s", cands[i].path);
            l->info = *info;
            l->found_by = cands[i].source;
            l->is_uuid_match = true;
            l->is_timestamp_match = info->timestamp == child->info.parent_timestamp;
            seen[rep->count - 1] = st;
            free(info);
            ret = 1;
            goto out;
        }
    }
    if (mismatch) {
        char want[37];
        char got[37];
        struct vhd_chain_link *l;
        hv_uuid_format(child->info.parent_uuid, want);
        hv_uuid_format(mismatch->uuid, got);
        stop(rep, -EINVAL, "%s: parent %s (found by %s) has unique id %s, but the child "
             "records %s", child->path, cands[mismatch_at].path,
             vhd_parent_source_name(cands[mismatch_at].source), got, want);
        l = append(rep, cap);
        if (!l) {
            ret = -ENOMEM;
            goto out;
        }
        child = &rep->links[rep->count - 2];
        snprintf(l->path, sizeof(l->path), "%s", cands[mismatch_at].path);
        l->info = *mismatch;
        l->found_by = cands[mismatch_at].source;
        l->is_uuid_match = false;
        l->is_timestamp_match = mismatch->timestamp == child->info.parent_timestamp;
        goto out;
    }
    if (unreadable[0]) {
        stop(rep, unreadable_code, "%s", unreadable);
        goto out;
    }
    stop(rep, -ENOENT, "%s: parent not found (tried %s)", child->path,
         tried[0] ? tried : "no locator or name");
out:
    free(mismatch);
    return ret;
}

int vhd_chain_walk(const char *path, struct vhd_chain_report *rep, struct hv_err *err)
{
    struct stat seen[VHD_MAX_CHAIN_DEPTH + 1];
    struct vhd_chain_link *top;
    int cap = 0;
    int ret;

    memset(rep, 0, sizeof(*rep));
    top = append(rep, &cap);
    if (!top)
        return hv_err_set(err, -ENOMEM, "%s: out of memory", path);
    snprintf(top->path, sizeof(top->path), "%s", path);
    top->is_uuid_match = true;
    top->is_timestamp_match = true;
    ret = vhd_inspect(path, &top->info, err);
    if (ret < 0)
        goto fail;
    if (stat(path, &seen[0]) < 0) {
        ret = hv_err_errno(err, path, "stat");
        goto fail;
    }
    while (rep->links[rep->count - 1].info.has_parent) {
        if (rep->count >= VHD_MAX_CHAIN_DEPTH) {
            stop(rep, -ELOOP, "%s: chain deeper than %d images (stopped at %s)", path,
                 VHD_MAX_CHAIN_DEPTH, rep->links[rep->count - 1].path);
            break;
        }
        ret = next_parent(rep, &cap, seen);
        if (ret < 0) {
            hv_err_set(err, ret, "%s: out of memory", path);
            goto fail;
        }
        if (ret == 0)
            break;
    }
    return 0;
fail:
    vhd_chain_report_free(rep);
    return ret;
}

void vhd_chain_report_free(struct vhd_chain_report *rep)
{
    free(rep->links);
    rep->links = NULL;
    rep->count = 0;
}

static json_t *link_json(const struct vhd_chain_link *l, int depth)
{
    json_t *o = json_object();
    char uuid[37];
    json_object_set_new(o, "filename", json_string(l->path));
    json_object_set_new(o, "depth", json_integer(depth));
    json_object_set_new(o, "type", json_string(vhd_type_name(l->info.type)));
    json_object_set_new(o, "virtual-size", json_integer((json_int_t)l->info.size_bytes));
    json_object_set_new(o, "allocated-bytes", json_integer((json_int_t)l->info.allocated_bytes));
    json_object_set_new(o, "file-length", json_integer((json_int_t)l->info.file_bytes));
    hv_uuid_format(l->info.uuid, uuid);
    json_object_set_new(o, "uuid", json_string(uuid));
    json_object_set_new(o, "timestamp", json_integer(l->info.timestamp));
    if (depth > 0) {
        json_object_set_new(o, "found-by", json_string(vhd_parent_source_name(l->found_by)));
        json_object_set_new(o, "uuid-matches", json_boolean(l->is_uuid_match));
        json_object_set_new(o, "timestamp-matches", json_boolean(l->is_timestamp_match));
    }
    return o;
}

json_t *vhd_chain_to_json(const struct vhd_chain_report *rep)
{
    json_t *root = NULL;
    json_t *parent_of = NULL;
    for (int i = 0; i < rep->count; i++) {
        json_t *o = link_json(&rep->links[i], i);
        if (!o) {
            json_decref(root);
            return NULL;
        }
        if (!root)
            root = o;
        else
            json_object_set_new(parent_of, "parent", o);
        parent_of = o;
    }
    if (root && rep->problem) {
        json_t *p = json_object();
        json_object_set_new(p, "errno", json_integer(-rep->problem));
        json_object_set_new(p, "message", json_string(rep->problem_msg));
        json_object_set_new(root, "problem", p);
    }
    return root;
}
