/* Unit tests for vhd/format: round trips of every structure and every
 * validation failure, each with the message naming file, structure, field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>

#include "format.h"
#include "testlib.h"

static void assert_msg_has(const struct hv_err *err, const char *needle)
{
    if (!strstr(err->msg, needle))
        fail_msg("message \"%s\" lacks \"%s\"", err->msg, needle);
}

static void make_footer(struct vhd_footer *f, uint8_t buf[512], enum vhd_type type,
                        uint64_t size)
{
    vhd_footer_init(f, type, size);
    vhd_footer_encode(f, buf);
}

static void test_checksum_is_ones_complement_of_byte_sum_without_field(void **state)
{
    uint8_t b[16] = { 1, 2, 3, 4, 0xAA, 0xBB, 0xCC, 0xDD, 5 };
    /* 1+2+3+4+5 = 15; the four bytes at offset 4 do not count. */
    assert_int_equal(vhd_checksum(b, sizeof(b), 4), ~15u);
}

static void test_footer_round_trip_keeps_every_field(void **state)
{
    struct vhd_footer f;
    struct vhd_footer g;
    uint8_t buf[512];
    uint8_t again[512];
    struct hv_err err = { 0 };

    make_footer(&f, buf, VHD_TYPE_DYNAMIC, 5 * HV_GiB + 512);
    f.saved_state = 1;
    f.original_size = 4096;
    vhd_footer_encode(&f, buf);
    assert_int_equal(vhd_footer_decode(buf, &g, "d.vhd", "footer", 0, &err), 0);
    assert_memory_equal(g.cookie, "conectix", 8);
    assert_int_equal(g.features, VHD_FEATURE_RESERVED);
    assert_int_equal(g.format_version, 0x00010000);
    assert_int_equal(g.data_offset, 512);
    assert_int_equal(g.timestamp, f.timestamp);
    assert_memory_equal(g.creator_app, "win ", 4);
    assert_int_equal(g.creator_version, VHD_CREATOR_VERSION);
    assert_int_equal(g.creator_os, VHD_CREATOR_OS);
    assert_int_equal(g.original_size, 4096);
    assert_int_equal(g.current_size, 5 * HV_GiB + 512);
    assert_int_equal(g.geometry.cylinders, f.geometry.cylinders);
    assert_int_equal(g.geometry.heads, f.geometry.heads);
    assert_int_equal(g.geometry.sectors_per_track, f.geometry.sectors_per_track);
    assert_int_equal(g.disk_type, VHD_TYPE_DYNAMIC);
    assert_memory_equal(g.uuid, f.uuid, 16);
    assert_int_equal(g.saved_state, 1);
    vhd_footer_encode(&g, again);
    assert_memory_equal(buf, again, 512);
}

/* Corrupt one field, re-checksum (unless the test is about the checksum) and
 * expect validation to name that field. */
static void expect_footer_error(void (*mutate)(uint8_t *b), bool fix_checksum,
                                uint64_t file_bytes, enum vhd_type type, const char *needle)
{
    struct vhd_footer f;
    uint8_t buf[512];
    struct hv_err err = { 0 };
    make_footer(&f, buf, type, 10 * HV_MiB);
    mutate(buf);
    if (fix_checksum)
        hv_put_be32(buf + 64, vhd_checksum(buf, 512, 64));
    assert_int_equal(vhd_footer_decode(buf, &f, "disk.vhd", "footer", file_bytes, &err),
                     -EINVAL);
    assert_msg_has(&err, "disk.vhd: footer: ");
    assert_msg_has(&err, needle);
}

static void m_cookie(uint8_t *b) { b[0] = 'x'; }
static void m_flip(uint8_t *b) { b[100] ^= 1; }
static void m_features(uint8_t *b) { hv_put_be32(b + 8, 0x10); }
static void m_version(uint8_t *b) { hv_put_be32(b + 12, 0x00020000); }
static void m_type(uint8_t *b) { hv_put_be32(b + 60, 5); }
static void m_size_odd(uint8_t *b) { hv_put_be64(b + 48, 1000); }
static void m_size_huge(uint8_t *b) { hv_put_be64(b + 48, 3 * HV_TiB); }
static void m_saved(uint8_t *b) { b[84] = 7; }
static void m_offset_odd(uint8_t *b) { hv_put_be64(b + 16, 700); }
static void m_offset_far(uint8_t *b) { hv_put_be64(b + 16, 1 * HV_GiB); }
static void m_nothing(uint8_t *b) { (void)b; }

static void test_footer_validation_names_each_bad_field(void **state)
{
    expect_footer_error(m_cookie, true, 0, VHD_TYPE_DYNAMIC, "cookie");
    expect_footer_error(m_flip, false, 0, VHD_TYPE_DYNAMIC, "checksum");
    expect_footer_error(m_features, true, 0, VHD_TYPE_DYNAMIC, "feature");
    expect_footer_error(m_version, true, 0, VHD_TYPE_DYNAMIC, "version");
    expect_footer_error(m_type, true, 0, VHD_TYPE_DYNAMIC, "disk type 5");
    expect_footer_error(m_size_odd, true, 0, VHD_TYPE_DYNAMIC, "current size 1000");
    expect_footer_error(m_size_huge, true, 0, VHD_TYPE_DYNAMIC, "2 TiB");
    expect_footer_error(m_saved, true, 0, VHD_TYPE_DYNAMIC, "saved state");
    expect_footer_error(m_offset_odd, true, 0, VHD_TYPE_DYNAMIC, "data offset 700");
    expect_footer_error(m_offset_far, true, 1 * HV_MiB, VHD_TYPE_DYNAMIC, "outside");
    expect_footer_error(m_offset_odd, true, 0, VHD_TYPE_FIXED, "fixed");
    /* A fixed image's file must hold its data plus the footer. */
    expect_footer_error(m_nothing, true, 10 * HV_MiB, VHD_TYPE_FIXED, "does not fit");
}

static void test_footer_accepts_what_real_writers_write(void **state)
{
    struct vhd_footer f;
    uint8_t buf[512];
    struct hv_err err = { 0 };
    /* Old tools leave features at 0 and write a 32-bit "no data" offset. */
    make_footer(&f, buf, VHD_TYPE_FIXED, 10 * HV_MiB);
    hv_put_be32(buf + 8, 0);
    hv_put_be64(buf + 16, 0xFFFFFFFFu);
    memcpy(buf + 28, "tap\0", 4);
    hv_put_be32(buf + 64, vhd_checksum(buf, 512, 64));
    assert_int_equal(vhd_footer_decode(buf, &f, "x", "footer", 10 * HV_MiB + 512, &err), 0);
}

static void test_geometry_follows_the_spec_algorithm(void **state)
{
    struct vhd_geometry g;
    /* 1 GiB: what qemu-img and Hyper-V compute, 2080/16/63. */
    vhd_geometry_for_size(HV_GiB, &g);
    assert_int_equal(g.cylinders, 2080);
    assert_int_equal(g.heads, 16);
    assert_int_equal(g.sectors_per_track, 63);
    /* Small disk: 17 sectors per track, at least 4 heads. */
    vhd_geometry_for_size(10 * HV_MiB, &g);
    assert_int_equal(g.sectors_per_track, 17);
    assert_int_equal(g.heads, 4);
    assert_int_equal(g.cylinders, 20480 / 17 / 4);
    /* Beyond ~127 GiB the geometry saturates at the maximum. */
    vhd_geometry_for_size(200 * HV_GiB, &g);
    assert_int_equal(g.cylinders, 65535);
    assert_int_equal(g.heads, 16);
    assert_int_equal(g.sectors_per_track, 255);
    /* Geometry never claims more than the size. */
    for (uint64_t s = 512; s < 64 * HV_GiB; s = s * 3 + 512) {
        vhd_geometry_for_size(s, &g);
        assert_true(vhd_geometry_bytes(&g) <= s);
    }
}

static void make_header(struct vhd_header *h, uint8_t buf[1024], uint32_t entries)
{
    memset(h, 0, sizeof(*h));
    memcpy(h->cookie, "cxsparse", 8);
    h->data_offset = UINT64_MAX;
    h->table_offset = 4096;
    h->header_version = VHD_HEADER_VERSION;
    h->max_table_entries = entries;
    h->block_bytes = VHD_DEFAULT_BLOCK_BYTES;
    vhd_header_encode(h, buf);
}

static void test_header_round_trip_with_parent_name_and_locators(void **state)
{
    struct vhd_footer f;
    uint8_t fb[512];
    struct vhd_header h;
    struct vhd_header g;
    uint8_t buf[1024];
    uint8_t again[1024];
    char name[1024];
    struct hv_err err = { 0 };

    make_footer(&f, fb, VHD_TYPE_DIFFERENCING, 10 * HV_MiB);
    make_header(&h, buf, 5);
    hv_uuid_generate(h.parent_uuid);
    h.parent_timestamp = 12345;
    assert_int_equal(vhd_parent_name_set(&h, "/var/tmp/bäse-\xF0\x9F\x92\xBE.vhd"), 0);
    h.locators[0] = (struct vhd_locator){ VHD_PLAT_W2RU, 512, 40, 8192 };
    h.locators[1] = (struct vhd_locator){ VHD_PLAT_W2KU, 1, 80, 8704 };
    vhd_header_encode(&h, buf);
    assert_int_equal(vhd_header_decode(buf, &f, &g, "c.vhd", 1 * HV_MiB, &err), 0);
    assert_int_equal(g.table_offset, 4096);
    assert_int_equal(g.max_table_entries, 5);
    assert_int_equal(g.block_bytes, VHD_DEFAULT_BLOCK_BYTES);
    assert_memory_equal(g.parent_uuid, h.parent_uuid, 16);
    assert_int_equal(g.parent_timestamp, 12345);
    assert_int_equal(vhd_parent_name_get(&g, name, sizeof(name)), 0);
    assert_string_equal(name, "/var/tmp/bäse-\xF0\x9F\x92\xBE.vhd");
    assert_int_equal(g.locators[1].code, VHD_PLAT_W2KU);
    assert_int_equal(vhd_locator_space_bytes(&g.locators[0]), 512);   /* bytes */
    assert_int_equal(vhd_locator_space_bytes(&g.locators[1]), 512);   /* sectors */
    vhd_header_encode(&g, again);
    assert_memory_equal(buf, again, 1024);
}

struct header_case {
    void (*mutate)(struct vhd_header *h);
    enum vhd_type type;
    const char *needle;
};

static void h_cookie(struct vhd_header *h) { h->cookie[0] = 'X'; }
static void h_version(struct vhd_header *h) { h->header_version = 0x00020000; }
static void h_block_3000(struct vhd_header *h) { h->block_bytes = 3000; }
static void h_block_small(struct vhd_header *h) { h->block_bytes = 4096; }
static void h_entries_few(struct vhd_header *h) { h->max_table_entries = 4; }
static void h_entries_many(struct vhd_header *h) { h->max_table_entries = 0x7FFFFFFF; }
static void h_bat_odd(struct vhd_header *h) { h->table_offset = 4000; }
static void h_bat_on_header(struct vhd_header *h) { h->table_offset = 1024; }
static void h_bat_past_end(struct vhd_header *h) { h->table_offset = 1 * HV_MiB; }
static void h_parent_nil(struct vhd_header *h) { memset(h->parent_uuid, 0, 16); }
static void h_name_bad(struct vhd_header *h) { h->parent_name[0] = 0xDC00; }
static void h_loc_code(struct vhd_header *h)
{
    h->locators[0] = (struct vhd_locator){ 0x41424344, 1, 10, 8192 };
}
static void h_loc_space(struct vhd_header *h)
{
    h->locators[0] = (struct vhd_locator){ VHD_PLAT_W2RU, 700, 10, 8192 };
}
static void h_loc_len(struct vhd_header *h)
{
    h->locators[0] = (struct vhd_locator){ VHD_PLAT_W2RU, 1, 600, 8192 };
}
static void h_loc_on_bat(struct vhd_header *h)
{
    h->locators[0] = (struct vhd_locator){ VHD_PLAT_W2RU, 1, 10, 4096 };
}
static void h_loc_past_end(struct vhd_header *h)
{
    h->locators[0] = (struct vhd_locator){ VHD_PLAT_W2RU, 1, 10, 2 * HV_MiB };
}

static void test_header_validation_names_each_bad_field(void **state)
{
    static const struct header_case cases[] = {
        { h_cookie, VHD_TYPE_DYNAMIC, "cookie" },
        { h_version, VHD_TYPE_DYNAMIC, "version" },
        { h_block_3000, VHD_TYPE_DYNAMIC, "block size 3000 is not a power of two" },
        { h_block_small, VHD_TYPE_DYNAMIC, "block size 4096" },
        { h_entries_few, VHD_TYPE_DYNAMIC, "max table entries 4" },
        { h_entries_many, VHD_TYPE_DYNAMIC, "2 TiB" },
        { h_bat_odd, VHD_TYPE_DYNAMIC, "BAT offset 4000" },
        { h_bat_on_header, VHD_TYPE_DYNAMIC, "overlaps the header" },
        { h_bat_past_end, VHD_TYPE_DYNAMIC, "before the footer" },
        { h_parent_nil, VHD_TYPE_DIFFERENCING, "parent unique id is nil" },
        { h_name_bad, VHD_TYPE_DIFFERENCING, "parent name" },
        { h_loc_code, VHD_TYPE_DIFFERENCING, "platform code" },
        { h_loc_space, VHD_TYPE_DIFFERENCING, "data space 700" },
        { h_loc_len, VHD_TYPE_DIFFERENCING, "data length 600" },
        { h_loc_on_bat, VHD_TYPE_DIFFERENCING, "overlaps the header or the BAT" },
        { h_loc_past_end, VHD_TYPE_DIFFERENCING, "does not end before the footer" },
    };
    for (size_t i = 0; i < HV_ARRAY_SIZE(cases); i++) {
        struct vhd_footer f;
        uint8_t fb[512];
        struct vhd_header h;
        uint8_t buf[1024];
        struct hv_err err = { 0 };
        make_footer(&f, fb, cases[i].type, 10 * HV_MiB);
        make_header(&h, buf, 5);
        hv_uuid_generate(h.parent_uuid);
        cases[i].mutate(&h);
        vhd_header_encode(&h, buf);
        assert_int_equal(vhd_header_decode(buf, &f, &h, "disk.vhd", 1 * HV_MiB, &err),
                         -EINVAL);
        assert_msg_has(&err, "disk.vhd: dynamic header: ");
        assert_msg_has(&err, cases[i].needle);
    }
    /* And the checksum. */
    {
        struct vhd_footer f;
        uint8_t fb[512];
        struct vhd_header h;
        uint8_t buf[1024];
        struct hv_err err = { 0 };
        make_footer(&f, fb, VHD_TYPE_DYNAMIC, 10 * HV_MiB);
        make_header(&h, buf, 5);
        buf[300] ^= 4;
        assert_int_equal(vhd_header_decode(buf, &f, &h, "disk.vhd", 0, &err), -EINVAL);
        assert_msg_has(&err, "dynamic header: checksum");
    }
}

static void test_header_accepts_spare_bat_entries_and_dynamic_junk_locators(void **state)
{
    struct vhd_footer f;
    uint8_t fb[512];
    struct vhd_header h;
    uint8_t buf[1024];
    struct hv_err err = { 0 };
    make_footer(&f, fb, VHD_TYPE_DYNAMIC, 10 * HV_MiB);
    make_header(&h, buf, 512);                      /* room to grow, like vhd-util -S */
    h.locators[3] = (struct vhd_locator){ 0x41424344, 0, 0, 0 };   /* never read */
    h.block_bytes = 512 * 1024;                     /* Virtual PC's block size */
    vhd_header_encode(&h, buf);
    assert_int_equal(vhd_header_decode(buf, &f, &h, "d.vhd", 1 * HV_MiB, &err), 0);
}

static void test_locator_paths_round_trip_for_each_platform(void **state)
{
    uint8_t data[4096];
    char out[4096];
    int n;

    n = vhd_locator_encode_path(VHD_PLAT_W2RU, "base dir/p\xC3\xA4rent.vhd", data, sizeof(data));
    assert_true(n > 0);
    /* UTF-16LE ".\base dir\pärent.vhd" */
    assert_int_equal(data[0], '.');
    assert_int_equal(data[1], 0);
    assert_int_equal(data[2], '\\');
    assert_int_equal(vhd_locator_decode_path(VHD_PLAT_W2RU, data, (size_t)n, out, sizeof(out)), 0);
    assert_string_equal(out, "./base dir/p\xC3\xA4rent.vhd");

    n = vhd_locator_encode_path(VHD_PLAT_W2RU, "../up/p.vhd", data, sizeof(data));
    assert_int_equal(vhd_locator_decode_path(VHD_PLAT_W2RU, data, (size_t)n, out, sizeof(out)), 0);
    assert_string_equal(out, "../up/p.vhd");

    n = vhd_locator_encode_path(VHD_PLAT_W2KU, "/var/tmp/p.vhd", data, sizeof(data));
    assert_int_equal(n, 2 * 14);
    assert_int_equal(vhd_locator_decode_path(VHD_PLAT_W2KU, data, (size_t)n, out, sizeof(out)), 0);
    assert_string_equal(out, "/var/tmp/p.vhd");

    n = vhd_locator_encode_path(VHD_PLAT_MACX, "/var/tmp/a b%.vhd", data, sizeof(data));
    assert_int_equal(n, (int)strlen("file:///var/tmp/a%20b%25.vhd"));
    assert_memory_equal(data, "file:///var/tmp/a%20b%25.vhd", (size_t)n);
    assert_int_equal(vhd_locator_decode_path(VHD_PLAT_MACX, data, (size_t)n, out, sizeof(out)), 0);
    assert_string_equal(out, "/var/tmp/a b%.vhd");

    /* A Windows locator padded with NULs, as Hyper-V writes it. */
    memset(data, 0, sizeof(data));
    n = vhd_locator_encode_path(VHD_PLAT_W2KU, "/x.vhd", data, sizeof(data));
    assert_int_equal(vhd_locator_decode_path(VHD_PLAT_W2KU, data, 512, out, sizeof(out)), 0);
    assert_string_equal(out, "/x.vhd");

    assert_int_equal(vhd_locator_decode_path(VHD_PLAT_MAC, data, 10, out, sizeof(out)), -ENOTSUP);
    /* An unpaired surrogate is refused. */
    hv_put_le16(data, 0xD800);
    hv_put_le16(data + 2, 'a');
    assert_int_equal(vhd_locator_decode_path(VHD_PLAT_W2KU, data, 4, out, sizeof(out)), -EILSEQ);
    /* Names longer than the header's 256 units are refused, not cut. */
    {
        struct vhd_header h;
        char longname[400];
        memset(longname, 'a', sizeof(longname) - 1);
        longname[sizeof(longname) - 1] = '\0';
        assert_int_equal(vhd_parent_name_set(&h, longname), -ENAMETOOLONG);
        assert_int_equal(vhd_parent_name_set(&h, "\xFF"), -EILSEQ);
    }
}

struct problems {
    int count;
    uint32_t last_index;
    char last[256];
};

static void collect(void *arg, uint32_t index, const char *msg)
{
    struct problems *p = arg;
    p->count++;
    p->last_index = index;
    snprintf(p->last, sizeof(p->last), "%s", msg);
}

static void test_bat_validation_finds_out_of_range_and_overlaps(void **state)
{
    struct vhd_footer f;
    uint8_t fb[512];
    struct vhd_header h;
    uint8_t hb[1024];
    uint32_t bat[8];
    uint8_t raw[32];
    uint32_t back[8];
    const uint64_t extent = 512 + VHD_DEFAULT_BLOCK_BYTES;
    const uint64_t first = 8192;
    uint64_t footer_offset = first + 3 * extent;
    struct problems p = { 0 };

    make_footer(&f, fb, VHD_TYPE_DYNAMIC, 16 * HV_MiB);
    make_header(&h, hb, 8);
    for (int i = 0; i < 8; i++)
        bat[i] = VHD_BAT_UNALLOCATED;
    bat[0] = (uint32_t)(first / 512);
    bat[5] = (uint32_t)((first + extent) / 512);
    bat[7] = (uint32_t)((first + 2 * extent) / 512);
    vhd_bat_encode(bat, 8, raw);
    vhd_bat_parse(raw, 8, back);
    assert_memory_equal(bat, back, sizeof(bat));
    assert_int_equal(vhd_bat_validate(bat, &f, &h, footer_offset, collect, &p), 0);

    bat[2] = (uint32_t)(footer_offset / 512);                      /* past the end */
    assert_int_equal(vhd_bat_validate(bat, &f, &h, footer_offset, collect, &p), 1);
    assert_int_equal(p.last_index, 2);
    assert_non_null(strstr(p.last, "does not end before the footer"));
    bat[2] = VHD_BAT_UNALLOCATED;

    bat[3] = (uint32_t)((first + extent + 4096) / 512);            /* inside entry 5 */
    p.count = 0;
    assert_int_equal(vhd_bat_validate(bat, &f, &h, footer_offset, collect, &p), 1);
    assert_int_equal(p.last_index, 3);
    assert_non_null(strstr(p.last, "overlaps the block of entry 5"));
    bat[3] = VHD_BAT_UNALLOCATED;

    bat[4] = 4096 / 512;                                            /* on the BAT */
    p.count = 0;
    assert_int_equal(vhd_bat_validate(bat, &f, &h, footer_offset, collect, &p), 1);
    assert_non_null(strstr(p.last, "overlaps the BAT"));
    bat[4] = 1;                                                     /* on the header */
    assert_int_equal(vhd_bat_validate(bat, &f, &h, footer_offset, NULL, NULL), 1);
}

static void test_bitmap_ops_are_msb_first_and_runs_are_exact(void **state)
{
    uint8_t bm[512] = { 0 };
    vhd_bitmap_set(bm, 0, 1);
    assert_int_equal(bm[0], 0x80);
    vhd_bitmap_set(bm, 3, 20);
    assert_true(vhd_bitmap_test(bm, 3));
    assert_true(vhd_bitmap_test(bm, 22));
    assert_false(vhd_bitmap_test(bm, 23));
    assert_false(vhd_bitmap_test(bm, 2));
    assert_int_equal(vhd_bitmap_run(bm, 3, 4096), 20);
    assert_int_equal(vhd_bitmap_run(bm, 23, 4096), 4096 - 23);
    assert_int_equal(vhd_bitmap_run(bm, 1, 4096), 2);
    assert_int_equal(vhd_bitmap_run(bm, 23, 30), 7);
    assert_true(vhd_bitmap_all_set(bm, 5, 10));
    assert_false(vhd_bitmap_all_set(bm, 5, 20));
    vhd_bitmap_clear(bm, 4, 17);
    assert_true(vhd_bitmap_test(bm, 3));
    assert_false(vhd_bitmap_test(bm, 4));
    assert_false(vhd_bitmap_test(bm, 20));
    assert_true(vhd_bitmap_test(bm, 21));
    vhd_bitmap_set(bm, 0, 4096);
    assert_int_equal(vhd_bitmap_run(bm, 0, 4096), 4096);
    vhd_bitmap_clear(bm, 4095, 1);
    assert_int_equal(vhd_bitmap_run(bm, 0, 4096), 4095);
    assert_int_equal(vhd_bitmap_bytes(VHD_DEFAULT_BLOCK_BYTES), 512);
    assert_int_equal(vhd_bitmap_bytes(512 * 1024), 512);
    assert_int_equal(vhd_bitmap_bytes(64 * 1024 * 1024), 16384);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checksum_is_ones_complement_of_byte_sum_without_field),
        cmocka_unit_test(test_footer_round_trip_keeps_every_field),
        cmocka_unit_test(test_footer_validation_names_each_bad_field),
        cmocka_unit_test(test_footer_accepts_what_real_writers_write),
        cmocka_unit_test(test_geometry_follows_the_spec_algorithm),
        cmocka_unit_test(test_header_round_trip_with_parent_name_and_locators),
        cmocka_unit_test(test_header_validation_names_each_bad_field),
        cmocka_unit_test(test_header_accepts_spare_bat_entries_and_dynamic_junk_locators),
        cmocka_unit_test(test_locator_paths_round_trip_for_each_platform),
        cmocka_unit_test(test_bat_validation_finds_out_of_range_and_overlaps),
        cmocka_unit_test(test_bitmap_ops_are_msb_first_and_runs_are_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
