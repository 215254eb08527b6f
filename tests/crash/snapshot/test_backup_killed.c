/*
 * A backup process killed with SIGKILL at different moments (before the
 * cut, while reading, while merging back): the VM's disk images stay
 * consistent (vhd check finds no corruption, every chain opens and reads),
 * and the next backup into the same directory cleans up after the dead one,
 * says what it removed, and produces a backup that verifies.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "snapshot.h"
#include "testlib.h"
#include "vhd.h"

static int failures;
#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                  \
            fprintf(stderr, __VA_ARGS__);                                                         \
            fprintf(stderr, "\n");                                                                \
            failures++;                                                                           \
        }                                                                                         \
    } while (0)

/* Every .vhd in dir: not corrupt, and it opens (with its chain) and reads. */
static void check_images(const char *dir)
{
    char list[8192];
    t_run(list, sizeof(list), "ls '%s'/*.vhd 2>/dev/null", dir);
    struct hv_reactor *r;
    hv_reactor_create(&r);
    for (char *p = strtok(list, "\n"); p; p = strtok(NULL, "\n")) {
        struct hv_err err = {0};
        struct vhd_check_report rep = {0};
        int rc = vhd_check(p, &rep, &err);
        CHECK(rc == VHD_CHECK_CLEAN || rc == VHD_CHECK_LEAKED, "%s: vhd check %d: %s", p, rc,
              rep.problem_count ? rep.problems[0].msg : hv_err_msg(&err, rc));
        vhd_check_report_free(&rep);
        struct bdev *bd;
        struct vhd_open_options oo = {.is_read_only = true};
        rc = vhd_open(r, p, &oo, &bd, &err);
        CHECK(rc == 0, "%s: open: %s", p, hv_err_msg(&err, rc));
        if (rc == 0) {
            uint8_t *buf = hv_alloc_aligned(bd->size_bytes);
            CHECK(bdev_read_sync(bd, 0, buf, bd->size_bytes) == 0, "%s: read", p);
            free(buf);
            bdev_close(bd);
        }
    }
    hv_reactor_destroy(r);
}

int main(void)
{
    const char *build = getenv("HVSTOR_BUILD");
    if (!build) {
        fprintf(stderr, "HVSTOR_BUILD is not set\n");
        return 1;
    }
    char demo[4096];
    snprintf(demo, sizeof(demo), "%s/tests/integration/snap-demo", build);
    if (access(demo, X_OK) < 0) {
        fprintf(stderr, "SKIP: %s is not built\n", demo);
        return 77;
    }
    const unsigned kill_ms[] = {5, 60, 250, 700, 1500};
    for (size_t k = 0; k < HV_ARRAY_SIZE(kill_ms); k++) {
        char vm[4096], bdir[4096], out[8192];
        snprintf(vm, sizeof(vm), "%s/vm%zu", t_tmpdir(), k);
        snprintf(bdir, sizeof(bdir), "%s/b%zu", t_tmpdir(), k);
        /* A good full backup first, then an incremental that gets killed. */
        int rc = t_run(out, sizeof(out),
                       "'%s' backup '%s' '%s' --disks 2 --raw 1 --size 32M "
                       "--span 8M --fill-ms 200 2>&1",
                       demo, vm, bdir);
        CHECK(rc == 0, "first backup: %s", out);
        rc = t_run(out, sizeof(out),
                   "'%s' backup '%s' '%s' --disks 2 --raw 1 --size 32M "
                   "--span 8M --incremental --kill-after-ms %u 2>&1",
                   demo, vm, bdir, kill_ms[k]);
        if (rc == 0)
            printf("killed after %u ms: the backup had already finished\n", kill_ms[k]);
        check_images(vm);
        /* The next run cleans up and works. */
        rc = t_run(out, sizeof(out),
                   "'%s' backup '%s' '%s' --disks 2 --raw 1 --size 32M "
                   "--span 8M --incremental 2>&1",
                   demo, vm, bdir);
        CHECK(rc == 0, "backup after the kill: %s", out);
        bool had_lock = strstr(out, "did not finish") != NULL;
        printf("killed after %u ms: next run %s\n", kill_ms[k],
               had_lock ? "found the dead run's lock and cleaned up" : "found nothing to clean");
        if (had_lock)
            CHECK(strstr(out, "removed its partial files") != NULL, "%s", out);
        char left[1024];
        t_run(left, sizeof(left),
              "ls '%s' | grep -v -E '^[0-9]+(-c[0-9]+-s[0-9]+\\.vhd|"
              "\\.manifest\\.json)$' || true",
              bdir);
        CHECK(left[0] == 0, "leftovers in the backup directory: %s", left);
        rc = t_run(out, sizeof(out), "'%s' verify '%s' 2>&1", demo, bdir);
        CHECK(rc == 0, "verify after recovery: %s", out);
        check_images(vm);
    }
    if (failures)
        fprintf(stderr, "%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
