/*
 * Shared by the SCSI unit tests and the CDB fuzzer: a private reactor, a
 * raw-file bdev in the test's scratch directory, a controller with the disk
 * at LUN 0, and a synchronous "run this CDB" helper that checks the task
 * completes exactly once and never from inside execute().
 */
#ifndef HVSTOR_TEST_SCSI_FIXTURE_H
#define HVSTOR_TEST_SCSI_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "scsi.h"
#include "testlib.h"

#ifndef FX_ASSERT
#define FX_ASSERT(cond)                                                              \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: fixture check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                          \
            abort();                                                                 \
        }                                                                            \
    } while (0)
#endif

struct fx {
    struct hv_reactor *r;
    struct bdev *bd;
    struct scsi_controller *c;
    struct scsi_lu *lu;
    struct scsi_nexus n1;
    struct scsi_nexus n2;
    char path[512];
};

struct fx_res {
    uint8_t status;
    uint8_t key;
    uint8_t asc;
    uint8_t ascq;
    uint32_t in_bytes;
    uint32_t wanted_bytes;
    uint8_t sense[SCSI_SENSE_MAX];
    uint8_t sense_len;
    bool was_aborted;
};

static inline void fx_parse_sense(const uint8_t *s, size_t len, uint8_t *key, uint8_t *asc,
                                  uint8_t *ascq)
{
    *key = *asc = *ascq = 0;
    if (len < 4)
        return;
    if ((s[0] & 0x7F) == 0x72 || (s[0] & 0x7F) == 0x73) {
        *key = s[1] & 0x0F;
        *asc = s[2];
        *ascq = s[3];
    } else if (len >= 14) {
        *key = s[2] & 0x0F;
        *asc = s[12];
        *ascq = s[13];
    }
}

static inline struct fx *fx_open(const char *name, uint64_t size_bytes, bool is_read_only,
                                 bool is_new)
{
    struct fx *f = calloc(1, sizeof(*f));
    struct hv_err err = { 0 };
    FX_ASSERT(f);
    FX_ASSERT(hv_reactor_create(&f->r) == 0);
    snprintf(f->path, sizeof(f->path), "%s", t_path(name));
    struct bdev_raw_options ro = { .is_read_only = false, .create = is_new,
                                   .size_bytes = size_bytes };
    if (!is_new) {
        ro.create = false;
    }
    FX_ASSERT(bdev_raw_open(f->r, f->path, &ro, &f->bd, &err) == 0);
    FX_ASSERT(scsi_controller_create(f->r, "test", &f->c) == 0);
    struct scsi_disk_options opt = { .is_read_only = is_read_only };
    FX_ASSERT(scsi_disk_create(f->bd, &opt, &f->lu, &err) == 0);
    FX_ASSERT(scsi_controller_attach(f->c, 0, f->lu) == 0);
    snprintf(f->n1.initiator, sizeof(f->n1.initiator), "iqn.2026-01.test:one,i,0x230000000001");
    f->n1.id = 1;
    snprintf(f->n2.initiator, sizeof(f->n2.initiator), "iqn.2026-01.test:two,i,0x230000000002");
    f->n2.id = 2;
    scsi_controller_nexus_add(f->c, &f->n1);
    scsi_controller_nexus_add(f->c, &f->n2);
    return f;
}

static inline struct fx *fx_new(const char *name, uint64_t size_bytes, bool is_read_only)
{
    return fx_open(name, size_bytes, is_read_only, true);
}

static inline void fx_free(struct fx *f)
{
    FX_ASSERT(scsi_controller_tasks_in_flight(f->c) == 0);
    scsi_controller_destroy(f->c);
    bdev_close(f->bd);
    /* let deferred calls of the bdev run out before the reactor goes */
    hv_reactor_destroy(f->r);
    free(f);
}

struct fx_wait {
    int calls;
    bool done;
};

static inline void fx_task_done(struct scsi_task *t)
{
    struct fx_wait *w = t->transport_arg;
    w->calls++;
    w->done = true;
}

static inline bool fx_status_is_legal(uint8_t s)
{
    return s == SCSI_STATUS_GOOD || s == SCSI_STATUS_CHECK_CONDITION ||
           s == SCSI_STATUS_CONDITION_MET || s == SCSI_STATUS_BUSY ||
           s == SCSI_STATUS_RESERVATION_CONFLICT || s == SCSI_STATUS_TASK_SET_FULL ||
           s == SCSI_STATUS_TASK_ABORTED;
}

/* Run one CDB on `lun` from nexus `n`. Data-out from `out` (out_len bytes)
 * or data-in into `in` (in_len bytes expected). */
static inline struct fx_res fx_cmd_lun(struct fx *f, const struct scsi_nexus *n, uint64_t lun,
                                       const uint8_t *cdb, size_t cdb_len, const void *out,
                                       uint32_t out_len, void *in, uint32_t in_len)
{
    struct scsi_task *t = calloc(1, sizeof(*t));
    struct iovec iov_out = { (void *)out, out_len };
    struct iovec iov_in = { in, in_len };
    struct fx_wait w = { 0 };
    struct fx_res res;
    FX_ASSERT(t);
    t->lun = lun;
    t->nexus = n;
    memcpy(t->cdb, cdb, cdb_len);
    t->cdb_len = (uint8_t)cdb_len;
    t->tag = 7;
    if (out) {
        t->dir = SCSI_DIR_OUT;
        t->expected_bytes = out_len;
        t->out_iov = &iov_out;
        t->out_iovcnt = 1;
        t->out_bytes = out_len;
    } else if (in) {
        t->dir = SCSI_DIR_IN;
        t->expected_bytes = in_len;
        t->in_iov = &iov_in;
        t->in_iovcnt = 1;
    }
    t->done = fx_task_done;
    t->transport_arg = &w;
    scsi_controller_execute(f->c, t);
    FX_ASSERT(w.calls == 0);        /* never completes inside execute() */
    FX_ASSERT(hv_reactor_run_until(f->r, &w.done) == 0);
    /* one more turn: a second completion would show up here */
    hv_reactor_run_once(f->r, 0);
    FX_ASSERT(w.calls == 1);
    FX_ASSERT(fx_status_is_legal(t->status));
    FX_ASSERT(t->in_bytes <= t->expected_bytes);
    FX_ASSERT(t->done == fx_task_done);
    memset(&res, 0, sizeof(res));
    res.status = t->status;
    res.in_bytes = t->in_bytes;
    res.wanted_bytes = t->wanted_bytes;
    res.sense_len = t->sense_len;
    res.was_aborted = t->is_aborted;
    memcpy(res.sense, t->sense, t->sense_len);
    fx_parse_sense(t->sense, t->sense_len, &res.key, &res.asc, &res.ascq);
    if (t->status == SCSI_STATUS_CHECK_CONDITION)
        FX_ASSERT(t->sense_len >= 8);
    free(t);
    return res;
}

static inline struct fx_res fx_cmd(struct fx *f, const struct scsi_nexus *n, const uint8_t *cdb,
                                   size_t cdb_len, const void *out, uint32_t out_len, void *in,
                                   uint32_t in_len)
{
    return fx_cmd_lun(f, n, 0, cdb, cdb_len, out, out_len, in, in_len);
}

/* Clear the power-on unit attention on LUN 0 for both nexuses. */
static inline void fx_clear_ua(struct fx *f)
{
    uint8_t tur[6] = { 0 };
    for (int i = 0; i < 8; i++) {
        struct fx_res a = fx_cmd(f, &f->n1, tur, 6, NULL, 0, NULL, 0);
        struct fx_res b = fx_cmd(f, &f->n2, tur, 6, NULL, 0, NULL, 0);
        if (a.status == SCSI_STATUS_GOOD && b.status == SCSI_STATUS_GOOD)
            return;
    }
    FX_ASSERT(!"unit attentions did not clear");
}

/* CDB builders */
static inline void cdb_rw10(uint8_t *c, uint8_t op, uint32_t lba, uint16_t blocks)
{
    memset(c, 0, 10);
    c[0] = op;
    hv_put_be32(c + 2, lba);
    hv_put_be16(c + 7, blocks);
}

static inline void cdb_rw16(uint8_t *c, uint8_t op, uint64_t lba, uint32_t blocks)
{
    memset(c, 0, 16);
    c[0] = op;
    hv_put_be64(c + 2, lba);
    hv_put_be32(c + 10, blocks);
}

static inline void cdb_rw12(uint8_t *c, uint8_t op, uint32_t lba, uint32_t blocks)
{
    memset(c, 0, 12);
    c[0] = op;
    hv_put_be32(c + 2, lba);
    hv_put_be32(c + 6, blocks);
}

#endif
