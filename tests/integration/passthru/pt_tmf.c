/*
 * pt-tmf: one long-lived iSCSI session (libiscsi) driven line by line from
 * stdin, for the task management and unit attention tests: a guest nexus
 * that stays logged in while something else happens, or a direct client of
 * the SAN.
 *
 *   pt-tmf -p PORTAL -t TARGET -i IQN [-l LUN] [-I ISID24]
 *
 * It logs in (libiscsi clears the unit attentions a new nexus meets), says
 * "ready", then for each line:
 *   tur             TEST UNIT READY until GOOD: "ua 6/29h/00h" per unit
 *                   attention met, then "good" (or "status 0x.. sense ..")
 *   reset           LOGICAL UNIT RESET: "tmf lun-reset response N"
 *   target-reset    TARGET WARM RESET: "tmf target-reset response N"
 *   read-abort N    READ(10) of N blocks from LBA 0, and an ABORT TASK for it
 *                   once the command is on the wire: "tmf abort-task
 *                   response N, read answered|not answered"
 *   write BYTE      WRITE(10) 64 KiB of BYTE at LBA 0: "write ok" / "write failed ..."
 *   read BYTE       READ(10) 64 KiB at LBA 0: "read ok" / "read mismatch" / "read failed"
 * Exit 0 at the end of input; 1 when the session breaks.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define IO_BYTES (64 * 1024)

static struct iscsi_context *iscsi;
static int lun;

static void die(const char *what)
{
    printf("error: %s: %s\n", what, iscsi_get_error(iscsi));
    fflush(stdout);
    exit(1);
}

static void service_until(const bool *flag)
{
    while (!*flag) {
        struct pollfd pfd = {.fd = iscsi_get_fd(iscsi), .events = iscsi_which_events(iscsi)};
        int n = poll(&pfd, 1, 30000);
        if (n == 0) {
            printf("error: no answer in 30 s\n");
            exit(1);
        }
        if (n < 0 && errno != EINTR)
            die("poll");
        if (n > 0 && iscsi_service(iscsi, pfd.revents) < 0)
            die("service");
    }
}

static void print_status(const char *what, struct scsi_task *t)
{
    if (t->status == SCSI_STATUS_CHECK_CONDITION)
        printf("%s status 0x%02x sense %x/%02xh/%02xh\n", what, t->status, t->sense.key,
               (t->sense.ascq >> 8) & 0xff, t->sense.ascq & 0xff);
    else
        printf("%s status 0x%02x\n", what, t->status);
}

static void do_tur(void)
{
    for (int i = 0; i < 16; i++) {
        struct scsi_task *t = iscsi_testunitready_sync(iscsi, lun);
        if (!t)
            die("TEST UNIT READY");
        if (t->status == SCSI_STATUS_GOOD) {
            printf("good\n");
            scsi_free_scsi_task(t);
            return;
        }
        if (t->status == SCSI_STATUS_CHECK_CONDITION &&
            t->sense.key == SCSI_SENSE_UNIT_ATTENTION) {
            printf("ua %x/%02xh/%02xh\n", t->sense.key, (t->sense.ascq >> 8) & 0xff,
                   t->sense.ascq & 0xff);
            scsi_free_scsi_task(t);
            continue;
        }
        print_status("tur", t);
        scsi_free_scsi_task(t);
        return;
    }
    printf("tur: unit attentions without end\n");
}

struct tmf_wait {
    bool is_done;
    uint32_t response;
};

static void tmf_cb(struct iscsi_context *ctx, int status, void *data, void *arg)
{
    struct tmf_wait *w = arg;
    (void)ctx;
    w->response = status == SCSI_STATUS_GOOD && data ? *(uint32_t *)data : 0xff;
    w->is_done = true;
}

static void do_reset(bool is_target)
{
    struct tmf_wait w = {0};
    if (iscsi_task_mgmt_async(iscsi, is_target ? 0 : lun,
                              is_target ? ISCSI_TM_TARGET_WARM_RESET : ISCSI_TM_LUN_RESET,
                              0xffffffff, 0, tmf_cb, &w) < 0)
        die("reset");
    service_until(&w.is_done);
    printf("tmf %s response %u\n", is_target ? "target-reset" : "lun-reset", w.response);
}

struct read_wait {
    bool is_done;
    int status;
};

static void read_cb(struct iscsi_context *ctx, int status, void *data, void *arg)
{
    struct read_wait *w = arg;
    (void)ctx;
    (void)data;
    w->status = status;
    w->is_done = true;
}

static void do_read_abort(uint32_t blocks)
{
    struct read_wait rw = {0};
    struct tmf_wait w = {0};
    struct scsi_task *t = iscsi_read10_task(iscsi, lun, 0, blocks * 512, 512, 0, 0, 0, 0, 0,
                                            read_cb, &rw);
    if (!t)
        die("READ(10)");
    /* the command on the wire first, so the abort names a task the target has */
    while (iscsi_out_queue_length(iscsi) > 0 && !rw.is_done) {
        struct pollfd pfd = {.fd = iscsi_get_fd(iscsi), .events = POLLOUT};
        if (poll(&pfd, 1, 10000) <= 0 || iscsi_service(iscsi, pfd.revents) < 0)
            die("sending READ(10)");
    }
    if (iscsi_task_mgmt_async(iscsi, lun, ISCSI_TM_ABORT_TASK, t->itt, t->cmdsn, tmf_cb,
                              &w) < 0)
        die("ABORT TASK");
    service_until(&w.is_done);
    bool was_answered = rw.is_done && rw.status != SCSI_STATUS_CANCELLED;
    if (!rw.is_done)
        iscsi_scsi_cancel_task(iscsi, t);    /* the target will not answer it */
    printf("tmf abort-task response %u, read %s\n", w.response,
           was_answered ? "answered" : "not answered");
    scsi_free_scsi_task(t);
}

static void do_write(int byte)
{
    static unsigned char buf[IO_BYTES];
    memset(buf, byte, sizeof(buf));
    struct scsi_task *t = iscsi_write10_sync(iscsi, lun, 0, buf, sizeof(buf), 512, 0, 0, 0, 0,
                                             0);
    if (!t)
        die("WRITE(10)");
    if (t->status == SCSI_STATUS_GOOD)
        printf("write ok\n");
    else
        print_status("write failed", t);
    scsi_free_scsi_task(t);
}

static void do_read(int byte)
{
    struct scsi_task *t = iscsi_read10_sync(iscsi, lun, 0, IO_BYTES, 512, 0, 0, 0, 0, 0);
    if (!t)
        die("READ(10)");
    if (t->status != SCSI_STATUS_GOOD || t->datain.size != IO_BYTES) {
        print_status("read failed", t);
    } else {
        bool is_same = true;
        for (int i = 0; i < IO_BYTES; i++)
            is_same &= t->datain.data[i] == (unsigned char)byte;
        printf("read %s\n", is_same ? "ok" : "mismatch");
    }
    scsi_free_scsi_task(t);
}

int main(int argc, char **argv)
{
    const char *portal = NULL, *target = NULL, *initiator = NULL;
    uint32_t isid = 0;
    char line[256];
    int c;

    while ((c = getopt(argc, argv, "p:t:i:l:I:")) != -1) {
        switch (c) {
        case 'p': portal = optarg; break;
        case 't': target = optarg; break;
        case 'i': initiator = optarg; break;
        case 'l': lun = atoi(optarg); break;
        case 'I': isid = (uint32_t)strtoul(optarg, NULL, 0); break;
        default: return 2;
        }
    }
    if (!portal || !target || !initiator) {
        fprintf(stderr, "usage: pt-tmf -p PORTAL -t TARGET -i IQN [-l LUN] [-I ISID24]\n");
        return 2;
    }
    iscsi = iscsi_create_context(initiator);
    if (!iscsi || iscsi_set_targetname(iscsi, target) < 0 ||
        iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL) < 0 ||
        iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE) < 0)
        die("context");
    if (isid)
        iscsi_set_isid_random(iscsi, isid & 0xffffff, 0);
    if (iscsi_full_connect_sync(iscsi, portal, lun) < 0)
        die("login");
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof(line), stdin)) {
        unsigned v = 0;
        if (!strncmp(line, "tur", 3))
            do_tur();
        else if (!strncmp(line, "reset", 5))
            do_reset(false);
        else if (!strncmp(line, "target-reset", 12))
            do_reset(true);
        else if (sscanf(line, "read-abort %u", &v) == 1)
            do_read_abort(v);
        else if (sscanf(line, "write %x", &v) == 1)
            do_write((int)v);
        else if (sscanf(line, "read %x", &v) == 1)
            do_read((int)v);
        else
            printf("unknown command: %s", line);
        fflush(stdout);
    }
    iscsi_logout_sync(iscsi);
    iscsi_destroy_context(iscsi);
    return 0;
}
