/*
 * The SG_IO pass-through of local SCSI disks without a SCSI disk (this
 * machine has none; tests/integration/passthru/test_guest_sgio.sh runs a
 * real one in a guest): which block devices sysfs calls SCSI disks and by
 * which designator (a sysfs tree made here, shaped as the kernel's), how an
 * SG_IO outcome becomes the guest's status/sense/residual, and the worker
 * threads + eventfd round trip (over /dev/null, where SG_IO fails with
 * ENOTTY: every command must still complete exactly once, on the reactor,
 * never inside submit).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "passthru.h"
#include "sg_int.h"
#include "testlib.h"

/* ------------------------------------------------------------ sysfs tree */

static void put(const char *root, const char *rel, const void *data, size_t len)
{
    char path[4096];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", root, rel);
    assert_int_equal(t_run(NULL, 0, "mkdir -p \"$(dirname '%s')\"", path), 0);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void put_text(const char *root, const char *rel, const char *text)
{
    put(root, rel, text, strlen(text));
}

static void put_dir(const char *root, const char *rel)
{
    assert_int_equal(t_run(NULL, 0, "mkdir -p '%s/%s'", root, rel), 0);
}

/* VPD 0x83 with a T10 vendor id and an NAA-6 designator (association LU). */
static size_t vpd83(uint8_t *buf, uint8_t naa_last)
{
    static const uint8_t t10[] = {0x02, 0x01, 0x00, 0x0c, 'A', 'C', 'M', 'E', ' ', ' ', ' ',
                                  ' ', 'd', 'i', 's', 'k'};
    uint8_t naa[20] = {0x01, 0x03, 0x00, 0x10, 0x60, 0x01, 0x40, 0x5a, 0xbc, 0xde, 0xf0,
                       0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x00};
    size_t len = 4;

    naa[19] = naa_last;
    memcpy(buf + len, t10, sizeof(t10));
    len += sizeof(t10);
    memcpy(buf + len, naa, sizeof(naa));
    len += sizeof(naa);
    buf[0] = 0;
    buf[1] = 0x83;
    buf[2] = 0;
    buf[3] = (uint8_t)(len - 4);
    return len;
}

/* sdb, sdc: SCSI disks (sdb with an sg node); sdb1 a partition; loop0 and
 * nvme0n1 not SCSI. The kernel's layout, device/ as a plain directory. */
static const char *make_tree(void)
{
    static char root[4096];
    uint8_t vpd[64];
    size_t len;

    snprintf(root, sizeof(root), "%s", t_path("sys"));
    put_dir(root, "class/block/sdb/device/scsi_device/2:0:0:0");
    put_dir(root, "class/block/sdb/device/scsi_generic/sg1");
    put_text(root, "class/block/sdb/device/type", "0\n");
    put_text(root, "class/block/sdb/device/vendor", "ACME    \n");
    put_text(root, "class/block/sdb/device/model", "disk            \n");
    len = vpd83(vpd, 0x01);
    put(root, "class/block/sdb/device/vpd_pg83", vpd, len);
    put_text(root, "class/block/sdb1/partition", "1\n");
    put_dir(root, "class/block/sdc/device/scsi_device/3:0:0:5");
    put_text(root, "class/block/sdc/device/type", "0\n");
    len = vpd83(vpd, 0x02);
    put(root, "class/block/sdc/device/vpd_pg83", vpd, len);
    put_text(root, "class/block/loop0/size", "0\n");
    put_dir(root, "class/block/nvme0n1/device");
    return root;
}

static void test_sysfs_tells_scsi_disks_from_the_rest(void **state)
{
    const char *root = make_tree();
    struct pt_scsi_sysfs s;
    (void)state;

    assert_int_equal(pt_scsi_sysfs_read(root, "sdb", &s), 0);
    assert_true(s.is_scsi);
    assert_false(s.is_partition);
    assert_string_equal(s.hctl, "2:0:0:0");
    assert_string_equal(s.sg_name, "sg1");
    assert_int_equal(s.device_type, 0);
    assert_string_equal(s.vendor, "ACME");
    assert_string_equal(s.model, "disk");
    /* NAA beats the T10 vendor id */
    assert_string_equal(s.designator, "naa.6001405abcdef0123456789abcdef001");

    assert_int_equal(pt_scsi_sysfs_read(root, "sdc", &s), 0);
    assert_true(s.is_scsi);
    assert_string_equal(s.hctl, "3:0:0:5");
    assert_string_equal(s.sg_name, "");         /* sg driver not loaded */
    assert_string_equal(s.designator, "naa.6001405abcdef0123456789abcdef002");

    /* a partition is no SCSI disk of its own (SG_IO there reaches the disk) */
    assert_int_equal(pt_scsi_sysfs_read(root, "sdb1", &s), 0);
    assert_true(s.is_partition);
    assert_false(s.is_scsi);
    assert_int_equal(pt_scsi_sysfs_read(root, "loop0", &s), 0);
    assert_false(s.is_scsi);
    assert_int_equal(pt_scsi_sysfs_read(root, "nvme0n1", &s), 0);
    assert_false(s.is_scsi);
    assert_int_equal(s.device_type, -1);

    assert_int_equal(pt_scsi_sysfs_read(root, "sdz", &s), -ENOENT);
    assert_int_equal(pt_scsi_sysfs_read(root, "../sdb", &s), -EINVAL);
    assert_int_equal(pt_scsi_sysfs_read(root, "..", &s), -EINVAL);
    assert_int_equal(pt_scsi_sysfs_read(root, "", &s), -EINVAL);
}

static void test_a_disk_is_found_again_by_its_designator(void **state)
{
    const char *root = make_tree();
    char name[64];
    uint8_t junk[3] = {0x00, 0x83, 0xff};
    (void)state;

    assert_int_equal(pt_scsi_find_by_designator(root, "naa.6001405abcdef0123456789abcdef002",
                                                name), 0);
    assert_string_equal(name, "sdc");
    assert_int_equal(pt_scsi_find_by_designator(root, "naa.6001405abcdef0123456789abcdef001",
                                                name), 0);
    assert_string_equal(name, "sdb");
    assert_int_equal(pt_scsi_find_by_designator(root, "naa.600140500000000000000000000000ff",
                                                name), -ENOENT);
    assert_int_equal(pt_scsi_find_by_designator(root, "", name), -EINVAL);
    /* a disk whose VPD page is truncated garbage has no designator, and is
     * never taken for another */
    put(root, "class/block/sdc/device/vpd_pg83", junk, sizeof(junk));
    assert_int_equal(pt_scsi_find_by_designator(root, "naa.6001405abcdef0123456789abcdef002",
                                                name), -ENOENT);
    assert_int_equal(pt_scsi_find_by_designator(t_path("nowhere"), "naa.60", name), -ENOENT);
}

/* -------------------------------------------------------- result mapping */

static void cmd_init(struct pt_cmd *cmd, uint32_t xfer_bytes)
{
    memset(cmd, 0, sizeof(*cmd));
    cmd->xfer_bytes = xfer_bytes;
    cmd->dir = xfer_bytes ? SAN_XFER_READ : SAN_XFER_NONE;
}

static void assert_sense(const struct pt_cmd *cmd, int key, int asc, int ascq)
{
    assert_int_equal(cmd->status, SAN_STATUS_CHECK_CONDITION);
    assert_int_equal(san_sense_key(cmd->sense, cmd->sense_len), key);
    assert_int_equal(san_sense_asc_ascq(cmd->sense, cmd->sense_len), asc << 8 | ascq);
}

static void test_the_devices_answer_comes_back_unchanged(void **state)
{
    struct pt_cmd cmd;
    uint8_t sense[200];
    struct pt_sg_answer a = {.status = SAN_STATUS_GOOD, .resid = 512};
    (void)state;

    cmd_init(&cmd, 4096);
    assert_false(pt_sg_result(&a, &cmd));
    assert_int_equal(cmd.status, SAN_STATUS_GOOD);
    assert_int_equal(cmd.residual, 512);
    assert_int_equal(cmd.sense_len, 0);
    assert_false(cmd.is_overflow);

    /* CHECK CONDITION: the device's sense bytes as they are (descriptor
     * format here: not re-encoded), DRIVER_SENSE is no error */
    memset(sense, 0, sizeof(sense));
    sense[0] = 0x72;
    sense[1] = 0x05;
    sense[2] = 0x21;
    sense[3] = 0x00;
    sense[7] = 0;
    a = (struct pt_sg_answer){.status = SAN_STATUS_CHECK_CONDITION, .driver_status = 0x08,
                              .resid = 4096, .sense = sense, .sense_len = 8};
    cmd_init(&cmd, 4096);
    assert_false(pt_sg_result(&a, &cmd));
    assert_int_equal(cmd.status, SAN_STATUS_CHECK_CONDITION);
    assert_int_equal(cmd.sense_len, 8);
    assert_memory_equal(cmd.sense, sense, 8);
    assert_int_equal(cmd.residual, 4096);

    /* more sense than the command holds: cut at PT_SENSE_MAX */
    a.sense_len = sizeof(sense);
    assert_false(pt_sg_result(&a, &cmd));
    assert_int_equal(cmd.sense_len, PT_SENSE_MAX);

    /* RESERVATION CONFLICT, BUSY...: the status, no sense */
    a = (struct pt_sg_answer){.status = SAN_STATUS_RESERVATION_CONFLICT};
    cmd_init(&cmd, 0);
    assert_false(pt_sg_result(&a, &cmd));
    assert_int_equal(cmd.status, SAN_STATUS_RESERVATION_CONFLICT);
    assert_int_equal(cmd.sense_len, 0);

    /* a residual outside 0..xfer is clamped, never passed on */
    a = (struct pt_sg_answer){.status = SAN_STATUS_GOOD, .resid = 9999};
    cmd_init(&cmd, 1024);
    pt_sg_result(&a, &cmd);
    assert_int_equal(cmd.residual, 1024);
    a.resid = -5;
    pt_sg_result(&a, &cmd);
    assert_int_equal(cmd.residual, 0);
}

static void test_transport_failures_become_what_an_initiator_acts_on(void **state)
{
    struct pt_cmd cmd;
    struct pt_sg_answer a;
    (void)state;

    /* the device is gone: NOT READY / LOGICAL UNIT NOT SUPPORTED, for good */
    a = (struct pt_sg_answer){.error = -ENODEV};
    cmd_init(&cmd, 512);
    assert_true(pt_sg_result(&a, &cmd));
    assert_sense(&cmd, 0x2, 0x25, 0x00);
    assert_int_equal(cmd.residual, 512);
    a = (struct pt_sg_answer){.host_status = 0x01};     /* DID_NO_CONNECT */
    assert_true(pt_sg_result(&a, &cmd));
    assert_sense(&cmd, 0x2, 0x25, 0x00);

    /* the host kernel refuses the transfer or the opcode: ILLEGAL REQUEST */
    a = (struct pt_sg_answer){.error = -EIO};
    assert_false(pt_sg_result(&a, &cmd));
    assert_sense(&cmd, 0x5, 0x24, 0x00);
    a = (struct pt_sg_answer){.error = -EPERM};
    assert_false(pt_sg_result(&a, &cmd));
    assert_sense(&cmd, 0x5, 0x20, 0x00);

    /* try again: BUSY */
    a = (struct pt_sg_answer){.error = -ENOMEM};
    assert_false(pt_sg_result(&a, &cmd));
    assert_int_equal(cmd.status, SAN_STATUS_BUSY);
    assert_int_equal(cmd.sense_len, 0);
    a = (struct pt_sg_answer){.host_status = 0x02};     /* DID_BUS_BUSY */
    assert_false(pt_sg_result(&a, &cmd));
    assert_int_equal(cmd.status, SAN_STATUS_BUSY);

    /* timeouts, resets, transport errors: ABORTED COMMAND (retry) */
    a = (struct pt_sg_answer){.host_status = 0x03};     /* DID_TIME_OUT */
    assert_false(pt_sg_result(&a, &cmd));
    assert_sense(&cmd, 0xB, 0x3E, 0x02);
    a = (struct pt_sg_answer){.host_status = 0x08};     /* DID_RESET */
    assert_false(pt_sg_result(&a, &cmd));
    assert_sense(&cmd, 0xB, 0x00, 0x00);
    a = (struct pt_sg_answer){.status = SAN_STATUS_GOOD, .driver_status = 0x06};
    assert_false(pt_sg_result(&a, &cmd));
    assert_sense(&cmd, 0xB, 0x3E, 0x02);
    a = (struct pt_sg_answer){.error = -ENOTTY};
    assert_false(pt_sg_result(&a, &cmd));
    assert_sense(&cmd, 0xB, 0x44, 0x00);

    /* what the kernel knows of the device: medium, reservation */
    a = (struct pt_sg_answer){.host_status = 0x13};     /* DID_MEDIUM_ERROR */
    assert_false(pt_sg_result(&a, &cmd));
    assert_sense(&cmd, 0x3, 0x11, 0x00);
    a = (struct pt_sg_answer){.host_status = 0x11};     /* DID_NEXUS_FAILURE */
    assert_false(pt_sg_result(&a, &cmd));
    assert_int_equal(cmd.status, SAN_STATUS_RESERVATION_CONFLICT);

    /* a transport failure wins over whatever status byte came with it */
    a = (struct pt_sg_answer){.status = SAN_STATUS_GOOD, .host_status = 0x07};
    assert_false(pt_sg_result(&a, &cmd));
    assert_sense(&cmd, 0xB, 0x00, 0x00);
    assert_int_equal(cmd.residual, 512);
}

/* ------------------------------------------------- workers and eventfd */

#define N_CMDS 40

struct round {
    struct pt_cmd cmds[N_CMDS];
    int done_count[N_CMDS];
    int completed;
    bool is_submitting;
    bool was_inside_submit;
    bool is_all_done;
    uint8_t buf[N_CMDS][512];
    struct iovec iov[N_CMDS];
};

static struct round *the_round;

static void round_done(struct pt_cmd *cmd)
{
    struct round *rd = the_round;
    int i = (int)(cmd - rd->cmds);

    if (rd->is_submitting)
        rd->was_inside_submit = true;
    rd->done_count[i]++;
    if (++rd->completed == N_CMDS)
        rd->is_all_done = true;
}

/* A round of commands through a pt_sg of `depth` workers over /dev/null
 * (which answers SG_IO with ENOTTY), on a reactor of its own. */
static struct round *round_start(unsigned depth, uint32_t block_bytes, struct hv_reactor **r,
                                 struct pt_sg **sg)
{
    struct round *rd = calloc(1, sizeof(*rd));
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    struct pt_sg_options o = {
        .fd = fd, .path = "/dev/null", .depth = depth, .block_bytes = block_bytes};
    struct hv_err err = {0};

    assert_non_null(rd);
    assert_true(fd >= 0);
    the_round = rd;
    *r = NULL;
    *sg = NULL;
    assert_int_equal(hv_reactor_create(r), 0);
    assert_int_equal(pt_sg_create(*r, &o, sg, &err), 0);
    close(fd);                          /* the transport holds its own descriptor */
    return rd;
}

static void round_end(struct hv_reactor *r, struct pt_sg *sg, struct round *rd)
{
    pt_sg_destroy(sg);
    hv_reactor_destroy(r);
    free(rd);
}

static void prepare(struct round *rd, int i, uint32_t xfer_bytes, int iov_bytes)
{
    struct pt_cmd *cmd = &rd->cmds[i];

    memset(cmd, 0, sizeof(*cmd));
    cmd->cdb[0] = 0x28;
    cmd->cdb_len = 10;
    cmd->dir = SAN_XFER_READ;
    rd->iov[i] = (struct iovec){rd->buf[i], (size_t)iov_bytes};
    cmd->iov = &rd->iov[i];
    cmd->iovcnt = 1;
    cmd->xfer_bytes = xfer_bytes;
    cmd->done = round_done;
}

/* Every command of the round: a 512-byte READ(10). */
static void submit_all(struct round *rd, struct pt_sg *sg)
{
    for (int i = 0; i < N_CMDS; i++) {
        prepare(rd, i, 512, 512);
        pt_sg_submit(sg, &rd->cmds[i]);
    }
}

static void test_every_command_completes_once_on_the_reactor(void **state)
{
    struct hv_reactor *r;
    struct pt_sg *sg;
    struct round *rd = round_start(4, 0, &r, &sg);
    (void)state;

    rd->is_submitting = true;
    for (int i = 0; i < N_CMDS; i++) {
        /* every fifth one announces more than its buffer holds */
        prepare(rd, i, 512, i % 5 == 0 ? 256 : 512);
        pt_sg_submit(sg, &rd->cmds[i]);
    }
    rd->is_submitting = false;
    assert_int_equal(hv_reactor_run_until(r, &rd->is_all_done), 0);
    assert_false(rd->was_inside_submit);
    for (int i = 0; i < N_CMDS; i++) {
        assert_int_equal(rd->done_count[i], 1);
        if (i % 5 == 0)                 /* refused before any SG_IO */
            assert_sense(&rd->cmds[i], 0x5, 0x24, 0x00);
        else                            /* SG_IO on /dev/null: ENOTTY */
            assert_sense(&rd->cmds[i], 0xB, 0x44, 0x00);
        assert_int_equal(rd->cmds[i].residual, 512);
    }
    assert_int_equal(pt_sg_inflight(sg), 0);
    assert_true(pt_sg_max_busy(sg) >= 1 && pt_sg_max_busy(sg) <= 4);
    round_end(r, sg, rd);
}

static void test_destroy_completes_what_is_still_queued(void **state)
{
    struct hv_reactor *r;
    struct pt_sg *sg;
    struct round *rd = round_start(1, 0, &r, &sg);
    (void)state;

    submit_all(rd, sg);
    /* no reactor turn yet: the worker may have finished some, the rest
     * wait; the aborted ones complete on the next turn, not inside */
    rd->is_submitting = true;
    pt_sg_abort_queued(sg);
    rd->is_submitting = false;
    assert_false(rd->was_inside_submit);
    for (int i = 0; i < 4; i++)
        hv_reactor_run_once(r, 0);
    pt_sg_destroy(sg);
    assert_true(rd->is_all_done);
    for (int i = 0; i < N_CMDS; i++) {
        const struct pt_cmd *cmd = &rd->cmds[i];
        assert_int_equal(rd->done_count[i], 1);
        /* aborted before a worker took it, or the answer SG_IO gave */
        if (cmd->status == SAN_STATUS_TASK_ABORTED)
            assert_int_equal(cmd->sense_len, 0);
        else
            assert_sense(cmd, 0xB, 0x44, 0x00);
    }
    hv_reactor_destroy(r);
    free(rd);
}

/* --------------------------------------------------- CDB transfer length */

static bool data_of(const char *hex, uint32_t block_bytes, enum san_xfer *dir, uint64_t *bytes)
{
    uint8_t cdb[16] = {0};
    size_t len = t_unhex(hex, cdb, sizeof(cdb));
    return pt_cdb_data_bytes(cdb, len, block_bytes, dir, bytes);
}

static void test_block_commands_say_what_they_move(void **state)
{
    enum san_xfer dir;
    uint64_t bytes;
    (void)state;

    assert_true(data_of("28000000000000000800", 512, &dir, &bytes));        /* READ(10) 8 */
    assert_int_equal(dir, SAN_XFER_READ);
    assert_int_equal(bytes, 4096);
    assert_true(data_of("0a0000000000", 4096, &dir, &bytes));               /* WRITE(6) 0 = 256 */
    assert_int_equal(dir, SAN_XFER_WRITE);
    assert_int_equal(bytes, 256 * 4096);
    assert_true(data_of("8a000000000000000000000100000000", 512, &dir, &bytes)); /* WRITE(16) */
    assert_int_equal(bytes, 65536 * 512);
    assert_true(data_of("a80000000000000000020000", 512, &dir, &bytes));    /* READ(12) 2 */
    assert_int_equal(bytes, 1024);
    assert_true(data_of("2a000000000000000000", 512, &dir, &bytes));        /* 0 blocks */
    assert_int_equal(dir, SAN_XFER_NONE);
    assert_int_equal(bytes, 0);
    /* VERIFY: BYTCHK 0 no data, 1 the blocks, 3 one block, 2 reserved */
    assert_true(data_of("2f000000000000000800", 512, &dir, &bytes));
    assert_int_equal(dir, SAN_XFER_NONE);
    assert_true(data_of("2f020000000000000800", 512, &dir, &bytes));
    assert_int_equal(bytes, 4096);
    assert_int_equal(dir, SAN_XFER_WRITE);
    assert_true(data_of("2f060000000000000800", 512, &dir, &bytes));
    assert_int_equal(bytes, 512);
    assert_false(data_of("2f040000000000000800", 512, &dir, &bytes));
    /* WRITE SAME: one block, none with NDOB; COMPARE AND WRITE: twice NLB */
    assert_true(data_of("41000000000000000800", 512, &dir, &bytes));
    assert_int_equal(bytes, 512);
    assert_true(data_of("93010000000000000000000000080000", 512, &dir, &bytes));
    assert_int_equal(bytes, 0);
    assert_true(data_of("89000000000000000000000000040000", 512, &dir, &bytes));
    assert_int_equal(bytes, 4096);
    assert_int_equal(dir, SAN_XFER_WRITE);
    /* not a block command, too short, no block size: the device decides */
    assert_false(data_of("120000006000", 512, &dir, &bytes));               /* INQUIRY */
    assert_false(data_of("280000000000000008", 512, &dir, &bytes));         /* 9 bytes */
    assert_false(data_of("28000000000000000800", 0, &dir, &bytes));
    assert_false(data_of("", 512, &dir, &bytes));
}

static void test_data_the_initiator_did_not_send_never_reaches_the_device(void **state)
{
    struct hv_reactor *r;
    struct pt_sg *sg;
    struct round *rd = round_start(2, 512, &r, &sg);
    (void)state;

    for (int i = 0; i < N_CMDS; i++) {
        prepare(rd, i, 512, 512);
        switch (i % 4) {
        case 0:                         /* WRITE(10) of 2 blocks, 512 bytes sent */
            memcpy(rd->cmds[i].cdb, "\x2a\0\0\0\0\0\0\0\x02\0", 10);
            rd->cmds[i].dir = SAN_XFER_WRITE;
            break;
        case 1:                         /* READ(10) flagged as data-out */
            memcpy(rd->cmds[i].cdb, "\x28\0\0\0\0\0\0\0\x01\0", 10);
            rd->cmds[i].dir = SAN_XFER_WRITE;
            break;
        case 2:                         /* READ(16) of 4096 blocks into 512 bytes: */
            memcpy(rd->cmds[i].cdb,     /* 2 MiB, above a worker's buffer */
                   "\x88\0\0\0\0\0\0\0\0\0\0\0\x10\0\0\0", 16);
            rd->cmds[i].cdb_len = 16;
            break;
        default:                        /* READ(10) of 1 block: reaches SG_IO */
            memcpy(rd->cmds[i].cdb, "\x28\0\0\0\0\0\0\0\x01\0", 10);
            break;
        }
        pt_sg_submit(sg, &rd->cmds[i]);
    }
    assert_int_equal(hv_reactor_run_until(r, &rd->is_all_done), 0);
    for (int i = 0; i < N_CMDS; i++) {
        assert_int_equal(rd->done_count[i], 1);
        if (i % 4 == 3)
            assert_sense(&rd->cmds[i], 0xB, 0x44, 0x00);        /* ENOTTY from /dev/null */
        else
            assert_sense(&rd->cmds[i], 0x5, 0x24, 0x00);
    }
    round_end(r, sg, rd);
}

static void test_abort_task_takes_a_command_no_worker_has(void **state)
{
    struct hv_reactor *r;
    struct pt_sg *sg;
    struct round *rd = round_start(1, 0, &r, &sg);
    int aborted = 0;
    (void)state;

    submit_all(rd, sg);
    /* the last one cannot have been taken unless all before it were:
     * whichever it is, each completes once, never inside the abort */
    rd->is_submitting = true;
    for (int i = N_CMDS - 1; i >= N_CMDS / 2; i--)
        aborted += pt_sg_abort_one(sg, &rd->cmds[i]);
    /* never submitted: nothing to abort */
    {
        struct pt_cmd stranger;
        memset(&stranger, 0, sizeof(stranger));
        assert_false(pt_sg_abort_one(sg, &stranger));
    }
    rd->is_submitting = false;
    assert_false(rd->was_inside_submit);
    assert_int_equal(hv_reactor_run_until(r, &rd->is_all_done), 0);
    for (int i = 0; i < N_CMDS; i++) {
        assert_int_equal(rd->done_count[i], 1);
        if (rd->cmds[i].status == SAN_STATUS_TASK_ABORTED)
            aborted--;
        else
            assert_sense(&rd->cmds[i], 0xB, 0x44, 0x00);
    }
    assert_int_equal(aborted, 0);
    assert_int_equal(pt_sg_inflight(sg), 0);
    round_end(r, sg, rd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sysfs_tells_scsi_disks_from_the_rest),
        cmocka_unit_test(test_a_disk_is_found_again_by_its_designator),
        cmocka_unit_test(test_the_devices_answer_comes_back_unchanged),
        cmocka_unit_test(test_transport_failures_become_what_an_initiator_acts_on),
        cmocka_unit_test(test_every_command_completes_once_on_the_reactor),
        cmocka_unit_test(test_destroy_completes_what_is_still_queued),
        cmocka_unit_test(test_abort_task_takes_a_command_no_worker_has),
        cmocka_unit_test(test_block_commands_say_what_they_move),
        cmocka_unit_test(test_data_the_initiator_did_not_send_never_reaches_the_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
