/* Unit tests for vhd_map: over a 3-deep chain the map names the layer that
 * holds every byte, its file offset really holds those bytes, the ranges
 * cover the disk exactly, and none could be merged with its neighbour.
 * And for vhd_chain_walk: the links, how each parent was found, and what a
 * broken chain reports. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "testlib.h"
#include "vhd.h"

#define DISK_BYTES (16ull << 20)
#define BLOCK (512u * 1024)

struct extents {
    struct vhd_map_extent e[256];
    char names[256][256];
    int n;
};

static int collect(void *arg, const struct vhd_map_extent *ext)
{
    struct extents *x = arg;
    assert_true(x->n < 256);
    x->e[x->n] = *ext;
    snprintf(x->names[x->n], sizeof(x->names[0]), "%s", ext->filename ? ext->filename : "");
    x->e[x->n].filename = ext->filename ? x->names[x->n] : NULL;
    x->n++;
    return 0;
}

static void create(const char *path, enum vhd_type type, uint64_t size, const char *parent)
{
    struct vhd_create_options o = { .type = type, .size_bytes = size,
                                    .block_bytes = type == VHD_TYPE_FIXED ? 0 : BLOCK,
                                    .parent_path = parent };
    struct hv_err err = { 0 };
    unlink(path);
    if (vhd_create(path, &o, &err) != 0)
        fail_msg("create %s: %s", path, err.msg);
}

/* Write `len` bytes of pattern `seed` at `off` into the top of `path`. */
static void put(const char *path, uint64_t off, uint64_t len, uint64_t seed)
{
    struct hv_reactor *r;
    struct bdev *bd = NULL;
    struct hv_err err = { 0 };
    uint8_t *buf = hv_alloc_aligned(len);
    assert_non_null(buf);
    t_fill(buf, len, seed);
    assert_int_equal(hv_reactor_create(&r), 0);
    if (vhd_open(r, path, NULL, &bd, &err) != 0)
        fail_msg("open %s: %s", path, err.msg);
    assert_int_equal(bdev_write_sync(bd, off, buf, len, 0), 0);
    assert_int_equal(bdev_close(bd), 0);
    hv_reactor_destroy(r);
    free(buf);
}

static void map(const char *path, struct extents *x)
{
    struct hv_err err = { 0 };
    x->n = 0;
    if (vhd_map(path, collect, x, &err) != 0)
        fail_msg("map %s: %s", path, err.msg);
}

static const struct vhd_map_extent *at(const struct extents *x, uint64_t off)
{
    for (int i = 0; i < x->n; i++)
        if (off >= x->e[i].start && off < x->e[i].start + x->e[i].length)
            return &x->e[i];
    fail_msg("offset %llu not in the map", (unsigned long long)off);
    return NULL;
}

/* Ranges cover [0, size) in order, none empty, no neighbours alike, and
 * every byte the map places in a file is what the chain reads there. */
static void check_map_against_reads(const char *path, const struct extents *x, uint64_t size)
{
    struct hv_reactor *r;
    struct bdev *bd = NULL;
    struct hv_err err = { 0 };
    struct vhd_open_options ro = { .is_read_only = true };
    uint64_t pos = 0;

    assert_int_equal(hv_reactor_create(&r), 0);
    if (vhd_open(r, path, &ro, &bd, &err) != 0)
        fail_msg("open %s: %s", path, err.msg);
    for (int i = 0; i < x->n; i++) {
        const struct vhd_map_extent *e = &x->e[i];
        uint8_t *chain = hv_alloc_aligned(e->length);
        assert_non_null(chain);
        assert_int_equal(e->start, pos);
        assert_true(e->length > 0);
        assert_int_equal(e->length % 512, 0);
        if (i > 0) {
            const struct vhd_map_extent *p = &x->e[i - 1];
            bool alike = p->depth == e->depth && p->is_present == e->is_present &&
                         p->is_data == e->is_data && p->is_zero == e->is_zero &&
                         (!p->has_offset || p->offset + p->length == e->offset);
            assert_false(alike);
        }
        assert_int_equal(bdev_read_sync(bd, e->start, chain, e->length), 0);
        if (e->is_present) {
            uint8_t *file = malloc(e->length);
            int fd = open(e->filename, O_RDONLY);
            assert_non_null(file);
            assert_true(fd >= 0);
            assert_true(e->has_offset && e->is_data);
            assert_int_equal(pread(fd, file, e->length, (off_t)e->offset), (ssize_t)e->length);
            assert_memory_equal(file, chain, e->length);
            close(fd);
            free(file);
        } else {
            assert_true(e->is_zero && !e->is_data && !e->has_offset);
            assert_true(hv_buf_is_zero(chain, e->length));
        }
        free(chain);
        pos += e->length;
    }
    assert_int_equal(pos, size);
    assert_int_equal(bdev_close(bd), 0);
    hv_reactor_destroy(r);
}

static void test_map_of_three_deep_chain_names_each_layer(void **state)
{
    const char *base = t_path("base.vhd");
    const char *mid = t_path("mid.vhd");
    const char *top = t_path("top.vhd");
    struct extents *x = calloc(1, sizeof(*x));
    (void)state;
    assert_non_null(x);
    create(base, VHD_TYPE_DYNAMIC, DISK_BYTES, NULL);
    put(base, 0, 3 << 20, 1);
    put(base, 12 << 20, 512 << 10, 2);
    create(mid, VHD_TYPE_DIFFERENCING, 0, base);
    put(mid, 1 << 20, 64 << 10, 3);
    put(mid, 6 << 20, 512 << 10, 4);
    create(top, VHD_TYPE_DIFFERENCING, 0, mid);
    put(top, (1 << 20) + (32 << 10), 4096, 5);
    put(top, 10 << 20, 8192, 6);
    put(top, 6 << 20, 4096, 7);

    map(top, x);
    check_map_against_reads(top, x, DISK_BYTES);
    assert_int_equal(at(x, 0)->depth, 2);
    assert_int_equal(at(x, 1 << 20)->depth, 1);
    assert_int_equal(at(x, (1 << 20) + (32 << 10))->depth, 0);
    assert_int_equal(at(x, (1 << 20) + (36 << 10))->depth, 1);
    assert_int_equal(at(x, (1 << 20) + (64 << 10))->depth, 2);
    assert_int_equal(at(x, 6 << 20)->depth, 0);
    assert_int_equal(at(x, (6 << 20) + 4096)->depth, 1);
    assert_int_equal(at(x, 10 << 20)->depth, 0);
    assert_int_equal(at(x, 12 << 20)->depth, 2);
    assert_false(at(x, 8 << 20)->is_present);
    assert_int_equal(at(x, 8 << 20)->depth, 2);     /* qemu: the base's depth */
    assert_string_equal(at(x, 0)->filename, base);
    assert_string_equal(at(x, 1 << 20)->filename, mid);
    assert_string_equal(at(x, 10 << 20)->filename, top);

    /* The middle image alone: its own data at depth 0, the base at 1. */
    map(mid, x);
    check_map_against_reads(mid, x, DISK_BYTES);
    assert_int_equal(at(x, 1 << 20)->depth, 0);
    assert_int_equal(at(x, 0)->depth, 1);
    free(x);
}

static void test_map_of_single_images(void **state)
{
    const char *dyn = t_path("single.vhd");
    const char *fixed = t_path("fixed.vhd");
    struct extents *x = calloc(1, sizeof(*x));
    (void)state;
    assert_non_null(x);
    create(dyn, VHD_TYPE_DYNAMIC, DISK_BYTES, NULL);
    map(dyn, x);
    assert_int_equal(x->n, 1);
    assert_false(x->e[0].is_present);
    assert_int_equal(x->e[0].depth, 0);
    assert_int_equal(x->e[0].length, DISK_BYTES);

    /* Blocks written out of order land out of order in the file: the map
     * splits where the file offsets stop being contiguous. */
    put(dyn, 2 * BLOCK, BLOCK, 8);
    put(dyn, BLOCK, BLOCK, 9);
    map(dyn, x);
    check_map_against_reads(dyn, x, DISK_BYTES);
    assert_int_equal(at(x, BLOCK)->length, BLOCK);
    assert_true(at(x, BLOCK)->offset > at(x, 2 * BLOCK)->offset);

    create(fixed, VHD_TYPE_FIXED, 4 << 20, NULL);
    put(fixed, 4096, 4096, 10);
    map(fixed, x);
    check_map_against_reads(fixed, x, 4 << 20);
    assert_int_equal(x->n, 1);
    assert_true(x->e[0].is_data);
    assert_int_equal(x->e[0].offset, 0);
    free(x);
}

static int stop_early(void *arg, const struct vhd_map_extent *ext)
{
    int *calls = arg;
    (void)ext;
    return ++*calls == 2 ? 42 : 0;
}

static void test_map_callback_stops_the_walk(void **state)
{
    const char *dyn = t_path("stop.vhd");
    struct hv_err err = { 0 };
    int calls = 0;
    (void)state;
    create(dyn, VHD_TYPE_DYNAMIC, DISK_BYTES, NULL);
    put(dyn, BLOCK, 4096, 11);
    assert_int_equal(vhd_map(dyn, stop_early, &calls, &err), 42);
    assert_int_equal(calls, 2);
}

static void test_chain_walk_reports_links_and_breaks(void **state)
{
    const char *base = t_path("w-base.vhd");
    const char *mid = t_path("w-mid.vhd");
    const char *top = t_path("w-top.vhd");
    const char *moved = t_path("w-moved.vhd");
    struct vhd_chain_report rep;
    struct hv_err err = { 0 };
    json_t *j;
    (void)state;
    create(base, VHD_TYPE_DYNAMIC, DISK_BYTES, NULL);
    create(mid, VHD_TYPE_DIFFERENCING, 0, base);
    create(top, VHD_TYPE_DIFFERENCING, 0, mid);

    assert_int_equal(vhd_chain_walk(top, &rep, &err), 0);
    assert_int_equal(rep.count, 3);
    assert_int_equal(rep.problem, 0);
    assert_int_equal(rep.links[0].found_by, VHD_PARENT_NONE);
    assert_int_equal(rep.links[1].found_by, VHD_PARENT_W2RU);
    assert_string_equal(rep.links[1].path, mid);
    assert_string_equal(rep.links[2].path, base);
    assert_true(rep.links[2].is_uuid_match && rep.links[2].is_timestamp_match);
    assert_int_equal(rep.links[2].info.type, VHD_TYPE_DYNAMIC);
    j = vhd_chain_to_json(&rep);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(j, "parent"), "parent"), "found-by")),
                        "W2ru");
    assert_null(json_object_get(j, "problem"));
    json_decref(j);
    vhd_chain_report_free(&rep);

    /* The base gone: the walk stops after the middle image and says why. */
    assert_int_equal(rename(base, moved), 0);
    assert_int_equal(vhd_chain_walk(top, &rep, &err), 0);
    assert_int_equal(rep.count, 2);
    assert_int_equal(rep.problem, -ENOENT);
    assert_non_null(strstr(rep.problem_msg, "parent not found"));
    assert_non_null(strstr(rep.problem_msg, base));
    vhd_chain_report_free(&rep);
    assert_int_equal(rename(moved, base), 0);

    /* A file that is no image at all cannot be walked. */
    assert_int_equal(vhd_chain_walk(t_path("absent.vhd"), &rep, &err), -ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_of_three_deep_chain_names_each_layer),
        cmocka_unit_test(test_map_of_single_images),
        cmocka_unit_test(test_map_callback_stops_the_walk),
        cmocka_unit_test(test_chain_walk_reports_links_and_breaks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
