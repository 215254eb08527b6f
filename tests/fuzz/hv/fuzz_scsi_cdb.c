/*
 * CDB handling under hostile input: arbitrary CDBs with arbitrary data-out
 * and data-in lengths, from two nexuses, to the disk and to empty slots,
 * with task management thrown in, against a small raw-file disk. Every task
 * must complete exactly once, never from inside execute(), with a legal
 * status, no more data-in than expected and, for CHECK CONDITION, sense.
 *
 * Input: a sequence of records
 *   [flags][cdb_len][16 CDB bytes][len_hi][len_lo][data-out bytes ...]
 * flags: bits 0-1 direction (0 none, 1 in, 2 out), bit 2 second nexus,
 * bits 3-4 LUN (0 disk, 1 read-only disk, 2-3 empty), bit 5 abort the task
 * set right after submitting, bit 6 leave the task to complete with the
 * next one (two in flight), bit 7 resize the disk first.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../unit/hv/scsi_fixture.h"

#define FUZZ_DISK_BYTES (1 * HV_MiB)
#define FUZZ_MAX_IN (256 * 1024)

static struct fx *fx;
static unsigned long status_seen[256];

static void print_statuses(void)
{
    for (int i = 0; i < 256; i++)
        if (status_seen[i])
            fprintf(stderr, "status 0x%02x: %lu tasks\n", i, status_seen[i]);
}
static struct bdev *ro_bd;
static uint8_t *in_buf[2];

static void setup(void)
{
    struct hv_err err = { 0 };
    hv_log_set_level(HV_LOG_ERROR);
    if (getenv("FUZZ_VERBOSE"))
        atexit(print_statuses);
    fx = fx_new("fuzz.img", FUZZ_DISK_BYTES, false);
    struct bdev_raw_options ro = { .is_read_only = true };
    FX_ASSERT(bdev_raw_open(fx->r, fx->path, &ro, &ro_bd, &err) == 0);
    in_buf[0] = malloc(FUZZ_MAX_IN);
    in_buf[1] = malloc(FUZZ_MAX_IN);
    FX_ASSERT(in_buf[0] && in_buf[1]);
}

/* A fresh pair of LUs for every input, so a run does not depend on what
 * earlier inputs left in mode pages or reservations. */
static void fresh_lus(void)
{
    struct hv_err err = { 0 };
    for (uint64_t lun = 0; lun < 2; lun++) {
        struct scsi_lu *old = scsi_controller_detach(fx->c, lun);
        if (old)
            old->ops->destroy(old);
    }
    if (fx->bd->size_bytes != FUZZ_DISK_BYTES)
        FX_ASSERT(fx->bd->ops->resize(fx->bd, FUZZ_DISK_BYTES, &err) == 0);
    struct scsi_lu *lu, *ro_lu;
    FX_ASSERT(scsi_disk_create(fx->bd, NULL, &lu, &err) == 0);
    struct scsi_disk_options opt = { .is_read_only = true };
    FX_ASSERT(scsi_disk_create(ro_bd, &opt, &ro_lu, &err) == 0);
    FX_ASSERT(scsi_controller_attach(fx->c, 0, lu) == 0);
    FX_ASSERT(scsi_controller_attach(fx->c, 1, ro_lu) == 0);
    fx->lu = lu;
}

struct pending {
    struct scsi_task task;
    struct iovec iov;
    struct fx_wait wait;
    bool is_used;
};

static void check_done(struct pending *p)
{
    struct scsi_task *t = &p->task;
    FX_ASSERT(hv_reactor_run_until(fx->r, &p->wait.done) == 0);
    hv_reactor_run_once(fx->r, 0);
    FX_ASSERT(p->wait.calls == 1);
    FX_ASSERT(fx_status_is_legal(t->status));
    FX_ASSERT(t->in_bytes <= t->expected_bytes);
    if (t->status == SCSI_STATUS_CHECK_CONDITION)
        FX_ASSERT(t->sense_len >= 8 && t->sense_len <= SCSI_SENSE_MAX);
    status_seen[t->status]++;
    p->is_used = false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct pending slots[2];
    if (!fx)
        setup();
    fresh_lus();

    size_t at = 0;
    int slot = 0;
    while (at + 20 <= size) {
        uint8_t flags = data[at];
        uint8_t cdb_len = data[at + 1];
        const uint8_t *cdb = data + at + 2;
        uint32_t len = hv_be16(data + at + 18);
        at += 20;

        if (flags & 0x80) {
            struct hv_err err = { 0 };
            uint64_t size_bytes = FUZZ_DISK_BYTES + 512 * (uint64_t)(cdb[15] + 1);
            FX_ASSERT(fx->bd->ops->resize(fx->bd, size_bytes, &err) == 0);
            scsi_disk_capacity_changed(fx->lu);
        }

        struct pending *p = &slots[slot];
        if (p->is_used)
            check_done(p);
        memset(p, 0, sizeof(*p));
        p->is_used = true;
        struct scsi_task *t = &p->task;
        t->lun = (flags >> 3) & 0x03;
        t->nexus = (flags & 0x04) ? &fx->n2 : &fx->n1;
        memcpy(t->cdb, cdb, 16);
        t->cdb_len = cdb_len;
        t->tag = (uint32_t)at;
        t->done = fx_task_done;
        t->transport_arg = &p->wait;
        switch (flags & 0x03) {
        case 1:
            t->dir = SCSI_DIR_IN;
            len = HV_MIN(len * 8u, FUZZ_MAX_IN);
            p->iov.iov_base = in_buf[slot];
            p->iov.iov_len = len;
            t->in_iov = &p->iov;
            t->in_iovcnt = 1;
            t->expected_bytes = len;
            break;
        case 2: {
            uint32_t avail = (uint32_t)HV_MIN((size_t)len, size - at);
            t->dir = SCSI_DIR_OUT;
            p->iov.iov_base = (void *)(data + at);
            p->iov.iov_len = avail;
            t->out_iov = &p->iov;
            t->out_iovcnt = 1;
            t->out_bytes = avail;
            t->expected_bytes = len;
            at += avail;
            break;
        }
        default:
            t->dir = SCSI_DIR_NONE;
            break;
        }
        scsi_controller_execute(fx->c, t);
        FX_ASSERT(p->wait.calls == 0);
        if (flags & 0x20)
            scsi_controller_tmf(fx->c, t->nexus, SCSI_TMF_ABORT_TASK_SET, t->lun, 0);
        if (flags & 0x40)
            slot ^= 1;                  /* leave it in flight with the next one */
        else
            check_done(p);
    }
    for (int i = 0; i < 2; i++)
        if (slots[i].is_used)
            check_done(&slots[i]);
    FX_ASSERT(scsi_controller_tasks_in_flight(fx->c) == 0);
    return 0;
}
