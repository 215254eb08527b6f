/*
 * Fuzz target over the operations that write damaged images: the input is a
 * whole image file. vhd_repair runs on it (for real, in a scratch file);
 * when it says the image is sound, vhd_check must agree, and compact and a
 * small resize must then succeed and leave it sound. None of them may crash,
 * leak, hang or write out of bounds, whatever the bytes; sanitizers judge.
 */
#include "testlib.h"
#include "vhd.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* Repairs fsync; on a memory file system that costs nothing. */
static char shm_dir[64];
static void remove_shm(void)
{
    char p[128];
    snprintf(p, sizeof(p), "%s/fuzz-ops.vhd", shm_dir);
    unlink(p);
    rmdir(shm_dir);
}

static void expect_clean(const char *path, const char *after)
{
    struct vhd_check_report rep;
    int rc = vhd_check(path, &rep, NULL);
    if (rc != VHD_CHECK_CLEAN) {
        fprintf(stderr, "vhd_check after %s: %d (%s)\n", after, rc,
                rc > 0 && rep.problem_count ? rep.problems[0].msg : "");
        abort();
    }
    vhd_check_report_free(&rep);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[512];
    if (!path[0]) {
        snprintf(shm_dir, sizeof(shm_dir), "/dev/shm/hvstor-fuzz-ops-XXXXXX");
        if (mkdtemp(shm_dir)) {
            atexit(remove_shm);
            snprintf(path, sizeof(path), "%s/fuzz-ops.vhd", shm_dir);
        } else {
            snprintf(path, sizeof(path), "%s", t_path("fuzz-ops.vhd"));
        }
    }
    if (t_write_file(path, data, size) < 0)
        return 0;

    struct vhd_repair_options dry = {.is_dry_run = true};
    struct vhd_repair_report rep;
    if (vhd_repair(path, &dry, &rep, NULL) >= 0)
        vhd_repair_report_free(&rep);
    int rc = vhd_repair(path, NULL, &rep, NULL);
    if (rc >= 0)
        vhd_repair_report_free(&rep);
    if (rc != 0)
        return 0;
    /* Sound: only images whose data the operations can reach (a fixed or
     * dynamic image; differencing needs a parent the input cannot carry). */
    expect_clean(path, "repair");
    struct vhd_info info;
    if (vhd_inspect(path, &info, NULL) < 0 || info.type == VHD_TYPE_DIFFERENCING ||
        info.size_bytes > 64ull << 20)
        return 0;
    struct vhd_compact_result cres;
    if (vhd_compact(path, NULL, &cres, NULL) == 0)
        expect_clean(path, "compact");
    if (vhd_resize(path, info.size_bytes + 3 * 512 + (1u << 20), NULL, NULL) == 0)
        expect_clean(path, "resize");
    return 0;
}
