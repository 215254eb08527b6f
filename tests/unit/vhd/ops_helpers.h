/* Helpers shared by the life-of-an-image operation tests (test_ops_*.c):
 * build chains with vhd_create and the engine, read an image (or chain)
 * whole, and compare it with a raw `vhd convert` of what it read before. */
#ifndef HVSTOR_TEST_OPS_HELPERS_H
#define HVSTOR_TEST_OPS_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testlib.h"
#include "vhd.h"

#define MiB (1024ull * 1024)

static HV_UNUSED void h_create(const char *path, enum vhd_type type, uint64_t size, uint32_t block,
                               const char *parent)
{
    struct vhd_create_options o = {
        .type = type, .size_bytes = size, .block_bytes = block, .parent_path = parent};
    struct hv_err err = {0};
    unlink(path);
    if (vhd_create(path, &o, &err) != 0)
        fail_msg("create %s: %s", path, err.msg);
}

/* One request through the engine, then close (flush): write `len` bytes of
 * pattern `seed` (seed 0: zeroes) at `off`, or discard them. */
static HV_UNUSED void h_request(const char *path, uint64_t off, uint64_t len, uint64_t seed,
                                bool is_discard)
{
    struct hv_reactor *r;
    struct bdev *bd;
    struct hv_err err = {0};
    assert_int_equal(hv_reactor_create(&r), 0);
    if (vhd_open(r, path, NULL, &bd, &err) != 0)
        fail_msg("open %s: %s", path, err.msg);
    if (is_discard) {
        assert_int_equal(bdev_request_sync(bd, BDEV_IO_DISCARD, off, len, 0), 0);
    } else {
        uint8_t *buf = hv_alloc_aligned(len);
        assert_non_null(buf);
        if (seed)
            t_fill(buf, len, seed);
        else
            memset(buf, 0, len);
        assert_int_equal(bdev_write_sync(bd, off, buf, len, 0), 0);
        free(buf);
    }
    assert_int_equal(bdev_close(bd), 0);
    hv_reactor_destroy(r);
}

static HV_UNUSED void h_write(const char *path, uint64_t off, uint64_t len, uint64_t seed)
{
    h_request(path, off, len, seed, false);
}

static HV_UNUSED void h_discard(const char *path, uint64_t off, uint64_t len)
{
    h_request(path, off, len, 0, true);
}

/* Everything the image (chain) reads; *size gets the virtual size. */
static HV_UNUSED uint8_t *h_read_all(const char *path, uint64_t *size)
{
    struct hv_reactor *r;
    struct bdev *bd;
    struct hv_err err = {0};
    struct vhd_open_options o = {.is_read_only = true};
    assert_int_equal(hv_reactor_create(&r), 0);
    if (vhd_open(r, path, &o, &bd, &err) != 0)
        fail_msg("open %s: %s", path, err.msg);
    *size = bd->size_bytes;
    uint8_t *buf = hv_alloc_aligned(bd->size_bytes);
    assert_non_null(buf);
    assert_int_equal(bdev_read_sync(bd, 0, buf, bd->size_bytes), 0);
    assert_int_equal(bdev_close(bd), 0);
    hv_reactor_destroy(r);
    return buf;
}

/* Raw snapshot of what `path` reads, by `vhd convert -O raw` (the library). */
static HV_UNUSED void h_convert_raw(const char *path, const char *raw)
{
    struct vhd_convert_options o = {.dst_format = VHD_FORMAT_RAW};
    struct hv_err err = {0};
    unlink(raw);
    if (vhd_convert(path, raw, &o, &err) != 0)
        fail_msg("convert %s: %s", path, err.msg);
}

/* `path` reads exactly what the raw file holds (vhd_compare, strict size). */
static HV_UNUSED void h_same_as_raw(const char *path, const char *raw)
{
    struct vhd_compare_result res;
    struct hv_err err = {0};
    if (vhd_compare(path, VHD_FORMAT_VHD, raw, VHD_FORMAT_RAW, true, &res, &err) != 0)
        fail_msg("compare %s %s: %s", path, raw, err.msg);
    if (!res.is_same)
        fail_msg("%s differs from %s at byte %" PRIu64 "%s", path, raw, res.first_difference,
                 res.has_size_mismatch ? " (sizes differ)" : "");
}

static HV_UNUSED void h_check_clean(const char *path)
{
    struct vhd_check_report rep;
    struct hv_err err = {0};
    int rc = vhd_check(path, &rep, &err);
    if (rc != VHD_CHECK_CLEAN)
        fail_msg("%s: check %d: %s", path, rc,
                 rc < 0              ? err.msg
                 : rep.problem_count ? rep.problems[0].msg
                                     : "?");
    vhd_check_report_free(&rep);
}

static HV_UNUSED uint64_t h_file_bytes(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return (uint64_t)st.st_size;
}

static HV_UNUSED bool h_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Is `tool` on PATH? */
static HV_UNUSED bool h_have(const char *tool)
{
    return t_run(NULL, 0, "command -v %s >/dev/null 2>&1", tool) == 0;
}

#endif
