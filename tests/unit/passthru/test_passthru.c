/*
 * passthru/ without a SAN: the default CDB filter (service actions decided by
 * their service action), the guard on the guest's PR OUT, the host key that
 * survives a restart, and libblkid over the first and last MiB of a device
 * (a real ext4 from mkfs.ext4).
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "passthru.h"
#include "testlib.h"

static bool allowed(const char *hex)
{
    uint8_t cdb[16] = {0};
    size_t len = t_unhex(hex, cdb, sizeof(cdb));
    return pt_cdb_is_allowed(cdb, len, false);
}

static void test_filter_lets_disk_commands_through(void **state)
{
    (void)state;
    assert_true(allowed("000000000000"));                       /* TEST UNIT READY */
    assert_true(allowed("120000006000"));                       /* INQUIRY */
    assert_true(allowed("28000000000000000800"));               /* READ(10) */
    assert_true(allowed("2a000000000000000800"));               /* WRITE(10) */
    assert_true(allowed("88000000000000000000000000080000"));   /* READ(16) */
    assert_true(allowed("35000000000000000000"));               /* SYNCHRONIZE CACHE(10) */
    assert_true(allowed("42000000000000001800"));               /* UNMAP */
    assert_true(allowed("93080000000000000000000000080000"));   /* WRITE SAME(16) */
    assert_true(allowed("89000000000000000000000000010000"));   /* COMPARE AND WRITE */
    assert_true(allowed("9e100000000000000000000000200000"));   /* READ CAPACITY(16) */
    assert_true(allowed("9e120000000000000000000000200000"));   /* GET LBA STATUS */
    assert_true(allowed("a30c00000000000002000000"));           /* REPORT SUPPORTED OPCODES */
    assert_true(allowed("5e000000000000002000"));               /* PR IN */
    assert_true(allowed("5f010000000000001800"));               /* PR OUT */
    assert_true(allowed("1a003f00ff00"));                       /* MODE SENSE(6) */
}

static void test_filter_refuses_everything_else(void **state)
{
    (void)state;
    assert_false(allowed("040000000000"));                      /* FORMAT UNIT */
    assert_false(allowed("1d0400000000"));                      /* SEND DIAGNOSTIC */
    assert_false(allowed("1b0000000100"));                      /* START STOP UNIT */
    assert_false(allowed("160000000000"));                      /* RESERVE(6) */
    assert_false(allowed("3b0000000000000000000000"));          /* WRITE BUFFER (firmware) */
    assert_false(allowed("9e110000000000000000000000200000"));  /* 9Eh, not RC16/LBA status */
    assert_false(allowed("9f110000000000000000000000000000"));  /* SERVICE ACTION OUT(16) */
    assert_false(allowed("a30a00000000000002000000"));          /* REPORT TARGET PORT GROUPS */
    assert_false(allowed("a40a00000000000000000000"));          /* SET TARGET PORT GROUPS */
    assert_false(allowed("a40f00000000000000000000"));          /* SET TIMESTAMP */
    assert_false(allowed("c00000000000"));                      /* vendor specific */
    /* a CDB shorter than its opcode's group */
    assert_false(allowed("2800000000"));
    /* --full-scsi passes them all */
    uint8_t format[6] = {0x04};
    assert_true(pt_cdb_is_allowed(format, 6, true));
}

static void test_guest_pr_out_cannot_touch_the_host_key(void **state)
{
    uint64_t host = 0x1122334455667788ull;
    uint8_t cdb[10] = {0x5F};
    uint8_t param[24] = {0};
    (void)state;

    cdb[1] = 0x00;                  /* REGISTER a guest key of its own: the SAN judges */
    hv_put_be64(param + 8, 0xAAAA);
    assert_false(pt_pr_out_touches_host(cdb, param, 24, host));
    hv_put_be64(param, host);       /* ... naming the host's key as its own */
    assert_true(pt_pr_out_touches_host(cdb, param, 24, host));
    memset(param, 0, sizeof(param));
    cdb[1] = 0x04;                  /* PREEMPT the host */
    hv_put_be64(param, 0xAAAA);
    hv_put_be64(param + 8, host);
    assert_true(pt_pr_out_touches_host(cdb, param, 24, host));
    cdb[1] = 0x06;                  /* REGISTER AND IGNORE EXISTING KEY */
    memset(param, 0, sizeof(param));
    assert_true(pt_pr_out_touches_host(cdb, param, 24, host));
    cdb[1] = 0x07;                  /* REGISTER AND MOVE */
    assert_true(pt_pr_out_touches_host(cdb, param, 24, host));
}

static void test_host_key_is_created_once_and_kept(void **state)
{
    uint64_t a = 0;
    uint64_t b = 0;
    struct hv_err err = {0};
    const char *dir = t_path("keydir");
    (void)state;

    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(pt_host_key_load(dir, &a, &err), 0);
    assert_true(a != 0);
    assert_int_equal(pt_host_key_load(dir, &b, &err), 0);
    assert_true(a == b);
    /* a damaged key file is an error naming it, never a silent new key */
    assert_int_equal(t_run(NULL, 0, "echo nothex > %s/pr_key", dir), 0);
    assert_int_equal(pt_host_key_load(dir, &b, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "pr_key"));
}

static int probe_file(const char *path, uint64_t size, char found[PT_FOUND_MAX])
{
    uint8_t *head = malloc(HV_MiB);
    uint8_t *tail = malloc(HV_MiB);
    struct hv_err err = {0};
    int fd = open(path, O_RDONLY);
    int ret;

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, head, HV_MiB, 0), (ssize_t)HV_MiB);
    assert_int_equal(pread(fd, tail, HV_MiB, (off_t)(size - HV_MiB)), (ssize_t)HV_MiB);
    close(fd);
    ret = pt_probe_signature(head, HV_MiB, tail, HV_MiB, size, found, &err);
    free(head);
    free(tail);
    return ret;
}

static void test_blkid_finds_ext4_and_nothing_on_a_blank_lun(void **state)
{
    char found[PT_FOUND_MAX];
    const char *img = t_path("ext4.img");
    (void)state;

    assert_int_equal(t_run(NULL, 0, "truncate -s 64M %s", img), 0);
    assert_int_equal(probe_file(img, 64 * HV_MiB, found), 0);
    assert_string_equal(found, "");
    if (t_run(NULL, 0, "command -v mkfs.ext4 >/dev/null") != 0)
        skip();
    assert_int_equal(t_run(NULL, 0, "mkfs.ext4 -q -F -L guestdata %s", img), 0);
    assert_int_equal(probe_file(img, 64 * HV_MiB, found), 0);
    assert_non_null(strstr(found, "TYPE=ext4"));
    assert_non_null(strstr(found, "LABEL=guestdata"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_filter_lets_disk_commands_through),
        cmocka_unit_test(test_filter_refuses_everything_else),
        cmocka_unit_test(test_guest_pr_out_cannot_touch_the_host_key),
        cmocka_unit_test(test_host_key_is_created_once_and_kept),
        cmocka_unit_test(test_blkid_finds_ext4_and_nothing_on_a_blank_lun),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
