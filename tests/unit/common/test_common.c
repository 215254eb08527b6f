/* Unit tests for common/: each test names the behaviour it proves. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "testlib.h"

static void test_size_parse_accepts_units_and_exact_bytes(void **state)
{
    uint64_t v;
    assert_int_equal(hv_parse_size("4096", &v), 0);
    assert_int_equal(v, 4096);
    assert_int_equal(hv_parse_size("10G", &v), 0);
    assert_int_equal(v, 10ull << 30);
    assert_int_equal(hv_parse_size("512M", &v), 0);
    assert_int_equal(v, 512ull << 20);
    assert_int_equal(hv_parse_size("64k", &v), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(hv_parse_size("2GiB", &v), 0);
    assert_int_equal(v, 2ull << 30);
    assert_int_equal(hv_parse_size("1.5T", &v), 0);
    assert_int_equal(v, 3ull << 39);
    assert_int_equal(hv_parse_size("100B", &v), 0);
    assert_int_equal(v, 100);
}

static void test_size_parse_refuses_garbage_inexact_and_overflow(void **state)
{
    uint64_t v = 7;
    assert_int_equal(hv_parse_size("", &v), -EINVAL);
    assert_int_equal(hv_parse_size("G", &v), -EINVAL);
    assert_int_equal(hv_parse_size("10X", &v), -EINVAL);
    assert_int_equal(hv_parse_size("10GG", &v), -EINVAL);
    assert_int_equal(hv_parse_size("-1", &v), -EINVAL);
    assert_int_equal(hv_parse_size("0.3K", &v), -EINVAL);   /* 307.2 bytes */
    assert_int_equal(hv_parse_size("1.", &v), -EINVAL);
    assert_int_equal(hv_parse_size("16E", &v), -ERANGE);
    assert_int_equal(hv_parse_size("99999999999999999999", &v), -ERANGE);
    assert_int_equal(v, 7);                                  /* untouched on error */
}

static void test_crc32c_matches_rfc3720_vectors(void **state)
{
    uint8_t zeros[32] = { 0 }, ones[32], inc[32];
    memset(ones, 0xFF, sizeof(ones));
    for (int i = 0; i < 32; i++)
        inc[i] = (uint8_t)i;
    assert_int_equal(hv_crc32c(zeros, 32), 0x8A9136AA);
    assert_int_equal(hv_crc32c(ones, 32), 0x62A8AB43);
    assert_int_equal(hv_crc32c(inc, 32), 0x46DD794E);
    assert_int_equal(hv_crc32c("123456789", 9), 0xE3069283);
    /* piecewise equals whole, at odd splits (the unaligned head path) */
    uint32_t c = hv_crc32c_init();
    c = hv_crc32c_update(c, inc, 3);
    c = hv_crc32c_update(c, inc + 3, 29);
    assert_int_equal(hv_crc32c_final(c), 0x46DD794E);
}

static void test_xxh3_is_stable_and_distinguishes(void **state)
{
    char a[33], b[33];
    hv_xxh3_128_hex("abc", 3, a);
    hv_xxh3_128_hex("abd", 3, b);
    assert_int_equal(strlen(a), 32);
    assert_string_not_equal(a, b);
    hv_xxh3_128_hex("abc", 3, b);
    assert_string_equal(a, b);
    /* XXH3-128 of the empty input, from xxHash's own test vectors */
    hv_xxh3_128_hex("", 0, a);
    assert_string_equal(a, "99aa06d3014798d86001c324468d497f");
}

static void test_iov_helpers_cross_element_boundaries(void **state)
{
    uint8_t a[5], b[7], flat[12], back[12];
    struct iovec iov[2] = { { a, sizeof(a) }, { b, sizeof(b) } }, out[4];
    for (int i = 0; i < 12; i++)
        flat[i] = (uint8_t)(i + 1);
    hv_iov_from_buf(iov, 2, 0, flat, 12);
    assert_int_equal(a[4], 5);
    assert_int_equal(b[0], 6);
    hv_iov_to_buf(iov, 2, 3, back, 6);
    assert_memory_equal(back, flat + 3, 6);
    assert_int_equal(hv_iov_slice(iov, 2, 3, 6, out, 4), 2);
    assert_int_equal(out[0].iov_len, 2);
    assert_int_equal(out[1].iov_len, 4);
    assert_int_equal(hv_iov_slice(iov, 2, 0, 12, out, 1), -ENOSPC);
    assert_false(hv_iov_is_zero(iov, 2, 0, 12));
    hv_iov_memset(iov, 2, 2, 0, 8);
    assert_true(hv_iov_is_zero(iov, 2, 2, 8));
    assert_int_equal(b[5], 11);         /* byte 10, just past the zeroed run */
    assert_int_equal(hv_iov_length(iov, 2), 12);
}

static void test_buf_is_zero_finds_a_single_set_byte(void **state)
{
    uint8_t buf[4096] = { 0 };
    assert_true(hv_buf_is_zero(buf, sizeof(buf)));
    for (size_t at = 0; at < sizeof(buf); at += 331) {
        buf[at] = 1;
        assert_false(hv_buf_is_zero(buf, sizeof(buf)));
        buf[at] = 0;
    }
}

static int order[8], norder;
static void record(void *arg) { order[norder++] = (int)(intptr_t)arg; }

static void test_reactor_runs_deferred_before_timers_and_timers_in_order(void **state)
{
    struct hv_reactor *r;
    struct hv_timer t1 = { 0 }, t2 = { 0 }, t3 = { 0 };
    struct hv_deferred d = { 0 };
    assert_int_equal(hv_reactor_create(&r), 0);
    norder = 0;
    hv_timer_arm(r, &t2, 20, record, (void *)2);
    hv_timer_arm(r, &t1, 5, record, (void *)1);
    hv_timer_arm(r, &t3, 30, record, (void *)3);
    hv_timer_cancel(r, &t3);
    hv_reactor_defer(r, &d, record, (void *)9);
    uint64_t start = hv_now_ns();
    while (norder < 3 && hv_now_ns() - start < 2000000000ull)
        hv_reactor_run_once(r, 100);
    assert_int_equal(norder, 3);
    assert_int_equal(order[0], 9);
    assert_int_equal(order[1], 1);
    assert_int_equal(order[2], 2);
    hv_reactor_destroy(r);
}

struct counter {
    int calls;
    bool done;
};
static void on_done_io(struct bdev_io *io, int status)
{
    struct counter *c = io->cb_arg;
    assert_int_equal(status, 0);
    if (++c->calls == 64)
        c->done = true;
}

static void test_raw_bdev_many_direct_writes_in_flight_read_back(void **state)
{
    struct hv_reactor *r;
    struct bdev *bd;
    struct hv_err err = { 0 };
    struct bdev_raw_options o = { .create = true, .size_bytes = 8 * HV_MiB,
                                  .use_direct_io = true, .queue_depth = 16 };
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(bdev_raw_open(r, t_path("raw.img"), &o, &bd, &err), 0);
    assert_int_equal(bd->size_bytes, 8 * HV_MiB);
    assert_false(hv_uuid_is_nil(bd->uuid));

    /* 64 writes of 64 KiB with a queue depth of 16: the extra wait in line. */
    uint8_t *data = hv_alloc_aligned(4 * HV_MiB);
    t_fill(data, 4 * HV_MiB, 42);
    struct bdev_io *ios = calloc(64, bdev_io_size(bd));
    struct iovec iov[64];
    struct counter c = { 0 };
    for (int i = 0; i < 64; i++) {
        struct bdev_io *io = (struct bdev_io *)((char *)ios + (size_t)i * bdev_io_size(bd));
        iov[i].iov_base = data + i * 65536;
        iov[i].iov_len = 65536;
        *io = (struct bdev_io){ .type = BDEV_IO_WRITE, .offset = (uint64_t)i * 65536,
                                .length = 65536, .iov = &iov[i], .iovcnt = 1,
                                .done = on_done_io, .cb_arg = &c };
        assert_int_equal(bdev_submit(bd, io), 0);
    }
    assert_int_equal(c.calls, 0);            /* nothing completes inside submit */
    assert_int_equal(hv_reactor_run_until(r, &c.done), 0);
    assert_int_equal(bdev_flush_sync(bd), 0);

    uint8_t *back = hv_alloc_aligned(4 * HV_MiB);
    assert_int_equal(bdev_read_sync(bd, 0, back, 4 * HV_MiB), 0);
    assert_memory_equal(back, data, 4 * HV_MiB);

    /* an unaligned buffer is bounced, not refused */
    char odd[1 + 4096];
    assert_int_equal(bdev_read_sync(bd, 4096, odd + 1, 4096), 0);
    assert_memory_equal(odd + 1, data + 4096, 4096);

    /* out of range and misaligned requests are refused without a callback */
    assert_int_equal(bdev_read_sync(bd, 8 * HV_MiB, back, 512), -ERANGE);
    assert_int_equal(bdev_read_sync(bd, 100, back, 512), -EINVAL);

    free(ios);
    free(data);
    free(back);
    assert_int_equal(bdev_close(bd), 0);
    hv_reactor_destroy(r);
}

/* Without O_DIRECT, writes go RWF_NOWAIT or to the worker threads (on ext4
 * always the workers: it does no NOWAIT buffered writes); either way they
 * complete through the reactor, never inside submit, and land where asked. */
static void test_raw_bdev_buffered_writes_in_flight_read_back(void **state)
{
    struct hv_reactor *r;
    struct bdev *bd;
    struct hv_err err = { 0 };
    struct bdev_raw_options o = { .create = true, .size_bytes = 4 * HV_MiB, .queue_depth = 16 };
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(bdev_raw_open(r, t_path("buffered.img"), &o, &bd, &err), 0);

    /* 64 writes of 12 KiB, each in two pieces, every other one FUA, in an
     * order that is not the file's. */
    enum { N = 64, BYTES = 12288 };
    uint8_t *data = malloc(N * BYTES);
    t_fill(data, N * BYTES, 7);
    struct bdev_io *ios = calloc(N, bdev_io_size(bd));
    struct iovec iov[N][2];
    struct counter c = { 0 };
    for (int k = 0; k < N; k++) {
        int i = (k * 37) % N;
        struct bdev_io *io = (struct bdev_io *)((char *)ios + (size_t)k * bdev_io_size(bd));
        iov[k][0] = (struct iovec){ data + (size_t)i * BYTES, 4096 };
        iov[k][1] = (struct iovec){ data + (size_t)i * BYTES + 4096, BYTES - 4096 };
        *io = (struct bdev_io){ .type = BDEV_IO_WRITE, .offset = (uint64_t)i * BYTES,
                                .length = BYTES, .iov = iov[k], .iovcnt = 2,
                                .flags = (k & 1) ? BDEV_IO_FUA : 0,
                                .done = on_done_io, .cb_arg = &c };
        assert_int_equal(bdev_submit(bd, io), 0);
        assert_int_equal(c.calls, 0);        /* nothing completes inside submit */
    }
    assert_int_equal(hv_reactor_run_until(r, &c.done), 0);
    assert_int_equal(c.calls, N);

    uint8_t *back = malloc(N * BYTES);
    assert_int_equal(bdev_read_sync(bd, 0, back, N * BYTES), 0);
    assert_memory_equal(back, data, N * BYTES);
    /* A second round, now that the first settled which path writes take. */
    t_fill(data, N * BYTES, 8);
    c = (struct counter){ 0 };
    for (int k = 0; k < N; k++) {
        struct bdev_io *io = (struct bdev_io *)((char *)ios + (size_t)k * bdev_io_size(bd));
        io->done = on_done_io;
        assert_int_equal(bdev_submit(bd, io), 0);
        assert_int_equal(c.calls, 0);
    }
    assert_int_equal(hv_reactor_run_until(r, &c.done), 0);
    assert_int_equal(bdev_close(bd), 0);

    /* What the file holds, read past the bdev. */
    int fd = open(t_path("buffered.img"), O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, back, N * BYTES, 0), N * BYTES);
    close(fd);
    assert_memory_equal(back, data, N * BYTES);
    free(ios);
    free(data);
    free(back);
    hv_reactor_destroy(r);
}

static void test_raw_bdev_discard_and_block_status_see_holes(void **state)
{
    struct hv_reactor *r;
    struct bdev *bd;
    struct hv_err err = { 0 };
    struct bdev_raw_options o = { .create = true, .size_bytes = 4 * HV_MiB };
    uint8_t buf[65536];
    uint32_t st;
    uint64_t len;
    int depth;
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(bdev_raw_open(r, t_path("holes.img"), &o, &bd, &err), 0);
    assert_int_equal(bdev_block_status_sync(bd, 0, 4 * HV_MiB, &st, &len, &depth), 0);
    assert_int_equal(st, BDEV_STATUS_ZERO);
    assert_int_equal(len, 4 * HV_MiB);

    memset(buf, 0xAB, sizeof(buf));
    for (uint64_t off = 0; off < 2 * HV_MiB; off += sizeof(buf))
        assert_int_equal(bdev_write_sync(bd, off, buf, sizeof(buf), BDEV_IO_FUA), 0);
    assert_int_equal(bdev_block_status_sync(bd, 0, 4 * HV_MiB, &st, &len, &depth), 0);
    assert_int_equal(st, BDEV_STATUS_ALLOCATED);
    assert_int_equal(len, 2 * HV_MiB);

    assert_int_equal(bdev_request_sync(bd, BDEV_IO_DISCARD, HV_MiB, HV_MiB, 0), 0);
    assert_int_equal(bdev_block_status_sync(bd, HV_MiB, HV_MiB, &st, &len, &depth), 0);
    assert_int_equal(st, BDEV_STATUS_ZERO);
    assert_int_equal(bdev_read_sync(bd, HV_MiB, buf, sizeof(buf)), 0);
    assert_true(hv_buf_is_zero(buf, sizeof(buf)));

    assert_int_equal(bdev_request_sync(bd, BDEV_IO_WRITE_ZEROES, 0, 65536, 0), 0);
    assert_int_equal(bdev_read_sync(bd, 0, buf, sizeof(buf)), 0);
    assert_true(hv_buf_is_zero(buf, sizeof(buf)));
    assert_int_equal(bdev_close(bd), 0);

    struct bdev_raw_options ro = { .is_read_only = true };
    assert_int_equal(bdev_raw_open(r, t_path("holes.img"), &ro, &bd, &err), 0);
    assert_int_equal(bdev_write_sync(bd, 0, buf, 512, 0), -EROFS);
    assert_int_equal(bdev_close(bd), 0);
    hv_reactor_destroy(r);
}

static void test_raw_open_names_the_file_in_errors(void **state)
{
    struct hv_reactor *r;
    struct bdev *bd;
    struct hv_err err = { 0 };
    assert_int_equal(hv_reactor_create(&r), 0);
    assert_int_equal(bdev_raw_open(r, "/nonexistent/x.img", NULL, &bd, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "/nonexistent/x.img"));
    assert_non_null(strstr(err.msg, "No such file"));
    hv_reactor_destroy(r);
}

static void test_json_write_is_atomic_and_reads_back(void **state)
{
    struct hv_err err = { 0 };
    json_t *o = json_pack("{s:s, s:i}", "name", "vm1", "slots", 64), *back;
    const char *p = t_path("state.json");
    assert_int_equal(hv_json_write_file(p, o, &err), 0);
    assert_int_equal(hv_json_read_file(p, &back, &err), 0);
    assert_true(json_equal(o, back));
    char tmpname[600];
    snprintf(tmpname, sizeof(tmpname), "%s.tmp.%d", p, (int)getpid());
    assert_int_equal(access(tmpname, F_OK), -1);     /* no temp file left behind */
    json_decref(back);
    FILE *f = fopen(t_path("bad.json"), "w");
    fputs("{\"a\": ", f);
    fclose(f);
    assert_int_equal(hv_json_read_file(t_path("bad.json"), &back, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "bad.json"));
    json_decref(o);
}

static void test_uuid_round_trips_and_is_version_4(void **state)
{
    uint8_t u[16], v[16];
    char text[37];
    hv_uuid_generate(u);
    assert_int_equal(u[6] >> 4, 4);
    assert_int_equal(u[8] >> 6, 2);
    hv_uuid_format(u, text);
    assert_int_equal(strlen(text), 36);
    assert_int_equal(hv_uuid_parse(text, v), 0);
    assert_memory_equal(u, v, 16);
    assert_int_equal(hv_uuid_parse("not-a-uuid", v), -EINVAL);
    memset(v, 0, 16);
    assert_true(hv_uuid_is_nil(v));
}

static void test_err_prefix_and_errno_messages(void **state)
{
    struct hv_err err = { 0 };
    errno = EACCES;
    assert_int_equal(hv_err_errno(&err, "disk.vhd", "open"), -EACCES);
    assert_string_equal(err.msg, "disk.vhd: open: Permission denied");
    hv_err_prefix(&err, "vm %s", "web1");
    assert_string_equal(err.msg, "vm web1: disk.vhd: open: Permission denied");
    assert_int_equal(hv_err_set(NULL, -EIO, "ignored"), -EIO);
    hv_err_clear(&err);
    assert_string_equal(hv_err_msg(&err, -ENOENT), "No such file or directory");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_size_parse_accepts_units_and_exact_bytes),
        cmocka_unit_test(test_size_parse_refuses_garbage_inexact_and_overflow),
        cmocka_unit_test(test_crc32c_matches_rfc3720_vectors),
        cmocka_unit_test(test_xxh3_is_stable_and_distinguishes),
        cmocka_unit_test(test_iov_helpers_cross_element_boundaries),
        cmocka_unit_test(test_buf_is_zero_finds_a_single_set_byte),
        cmocka_unit_test(test_reactor_runs_deferred_before_timers_and_timers_in_order),
        cmocka_unit_test(test_raw_bdev_many_direct_writes_in_flight_read_back),
        cmocka_unit_test(test_raw_bdev_buffered_writes_in_flight_read_back),
        cmocka_unit_test(test_raw_bdev_discard_and_block_status_see_holes),
        cmocka_unit_test(test_raw_open_names_the_file_in_errors),
        cmocka_unit_test(test_json_write_is_atomic_and_reads_back),
        cmocka_unit_test(test_uuid_round_trips_and_is_version_4),
        cmocka_unit_test(test_err_prefix_and_errno_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
