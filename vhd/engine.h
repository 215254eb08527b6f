/*
 * engine.h — internal to vhd/: one image's validated metadata, loaded the
 * same way by inspect, the engine and the offline operations.
 */
#ifndef HVSTOR_VHD_ENGINE_H
#define HVSTOR_VHD_ENGINE_H

#include "format.h"

struct vhd_meta {
    struct vhd_footer footer;        /* the footer at the end (validated) */
    struct vhd_footer footer_copy;   /* the copy at offset 0 (parsed only) */
    struct vhd_header header;        /* dynamic/differencing only */
    bool has_header;
    bool is_footer_copy_ok;          /* valid and equal to the footer */
    uint64_t file_bytes;
    uint64_t footer_offset;          /* file_bytes - 512 */
    uint32_t *bat;                   /* max_table_entries native entries, or NULL */
    uint32_t allocated_blocks;
};

/*
 * Read and validate footer, footer copy, dynamic header and (with `load_bat`)
 * the BAT of the open image `fd`. A BAT entry that points outside the file or
 * overlaps anything fails the load (the first such problem is the message).
 * Release with vhd_meta_free.
 */
int vhd_meta_load(int fd, const char *path, bool load_bat, struct vhd_meta *m,
                  struct hv_err *err);
void vhd_meta_free(struct vhd_meta *m);

/* Read a locator's path text (decoded, as written; "" when absent). */
int vhd_meta_locator_path(int fd, const struct vhd_meta *m, uint32_t code, char *out,
                          size_t cap);

/*
 * Where to look for the parent of the image at `child_path`, in the order
 * Windows and Xen try them: W2ru relative to the child, W2ku, MacX, then the
 * header's parent name beside the child. `relative`, `absolute`, `macx` and
 * `name` are the decoded locator texts ("" when absent). A Windows drive path
 * ("C:/...") names nothing on this host and is skipped. The engine's open and
 * `vhd info --chain` both walk this one list, so they always agree.
 */
#include <limits.h>
#include "vhd.h"

struct vhd_parent_candidate {
    char path[PATH_MAX];
    enum vhd_parent_source source;
};
int vhd_parent_candidates(const char *child_path, const char *relative, const char *absolute,
                          const char *macx, const char *name,
                          struct vhd_parent_candidate cands[4]);

#endif /* HVSTOR_VHD_ENGINE_H */
