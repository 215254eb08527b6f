/*
 * The virtual SCSI controller: 64 LUN slots, the I_T nexuses that talk to
 * them, unit attentions per I_T_L nexus, and the task set that task
 * management walks. The controller answers what must behave the same for
 * every kind of LU: REPORT LUNS, commands to empty slots, pending unit
 * attentions (SPC-4 5.14: INQUIRY, REPORT LUNS and REQUEST SENSE are neither
 * blocked by nor clear a unit attention, except that REQUEST SENSE reports
 * and clears it).
 */
#include <errno.h>
#include <stdlib.h>

#include "scsi.h"

#define UA_QUEUE_DEPTH 8

struct ua_entry {
    uint8_t asc;
    uint8_t ascq;
};

struct ua_queue {
    uint8_t count;
    struct ua_entry e[UA_QUEUE_DEPTH];
};

struct nexus_state {
    struct scsi_nexus nexus;
    struct ua_queue ua[SCSI_LUNS_PER_CONTROLLER];
};

struct scsi_controller {
    struct hv_reactor *reactor;
    char name[256];
    struct scsi_lu *slots[SCSI_LUNS_PER_CONTROLLER];
    struct nexus_state **nexuses;
    size_t nexus_count;
    size_t nexus_cap;
    struct scsi_task *set_head;     /* every task between execute and done */
    unsigned set_count;
};

/* ------------------------------------------------------------- sense */

size_t scsi_sense_build(uint8_t *buf, bool is_descriptor, uint8_t key, uint8_t asc,
                        uint8_t ascq, bool has_info, uint64_t information)
{
    if (is_descriptor) {
        memset(buf, 0, 8);
        buf[0] = 0x72;
        buf[1] = key & 0x0F;
        buf[2] = asc;
        buf[3] = ascq;
        if (!has_info)
            return 8;
        /* information descriptor (SPC-4 4.5.2.2) */
        buf[7] = 12;
        memset(buf + 8, 0, 12);
        buf[8] = 0x00;
        buf[9] = 0x0A;
        buf[10] = 0x80;
        hv_put_be64(buf + 12, information);
        return 20;
    }
    memset(buf, 0, 18);
    buf[0] = 0x70;
    buf[2] = key & 0x0F;
    if (has_info && information <= UINT32_MAX) {
        buf[0] |= 0x80;     /* VALID: the INFORMATION field means something */
        hv_put_be32(buf + 3, (uint32_t)information);
    }
    buf[7] = 10;
    buf[12] = asc;
    buf[13] = ascq;
    return 18;
}

void scsi_task_invalid_field(struct scsi_task *t, bool is_cdb, uint16_t field, int bit)
{
    uint8_t sks[3];
    sks[0] = (uint8_t)(0x80 | (is_cdb ? 0x40 : 0) | (bit >= 0 ? 0x08 | (bit & 0x07) : 0));
    hv_put_be16(sks + 1, field);
    scsi_task_set_sense(t, SCSI_SENSE_ILLEGAL_REQUEST, is_cdb ? 0x24 : 0x26, 0x00);
    if (t->is_descriptor_sense) {
        /* sense key specific descriptor (SPC-4 4.5.2.4) after the header */
        uint8_t *d = t->sense + t->sense_len;
        memset(d, 0, 8);
        d[0] = 0x02;
        d[1] = 0x06;
        memcpy(d + 4, sks, 3);
        t->sense[7] = (uint8_t)(t->sense[7] + 8);
        t->sense_len = (uint8_t)(t->sense_len + 8);
    } else {
        memcpy(t->sense + 15, sks, 3);
    }
}

void scsi_task_set_sense_info(struct scsi_task *t, uint8_t key, uint8_t asc, uint8_t ascq,
                              uint64_t information)
{
    t->status = SCSI_STATUS_CHECK_CONDITION;
    t->sense_len = (uint8_t)scsi_sense_build(t->sense, t->is_descriptor_sense, key, asc, ascq,
                                             true, information);
}

void scsi_task_set_sense(struct scsi_task *t, uint8_t key, uint8_t asc, uint8_t ascq)
{
    t->status = SCSI_STATUS_CHECK_CONDITION;
    t->sense_len = (uint8_t)scsi_sense_build(t->sense, t->is_descriptor_sense, key, asc, ascq,
                                             false, 0);
}

void scsi_task_good(struct scsi_task *t)
{
    t->status = SCSI_STATUS_GOOD;
    t->sense_len = 0;
}

void scsi_task_data_in(struct scsi_task *t, const void *buf, size_t len, size_t alloc_len)
{
    size_t n = HV_MIN(len, alloc_len);
    t->wanted_bytes = (uint32_t)n;
    if (t->dir != SCSI_DIR_IN || !t->in_iov) {
        t->in_bytes = 0;
        return;
    }
    n = HV_MIN(n, t->expected_bytes);
    n = HV_MIN(n, hv_iov_length(t->in_iov, t->in_iovcnt));
    hv_iov_from_buf(t->in_iov, t->in_iovcnt, 0, buf, n);
    t->in_bytes = (uint32_t)n;
}

uint64_t scsi_lun_decode(const uint8_t lun[8])
{
    for (int i = 2; i < 8; i++)
        if (lun[i])
            return UINT64_MAX;
    switch (lun[0] >> 6) {
    case 0:                         /* peripheral device addressing, bus 0 */
        if (lun[0] & 0x3F)
            return UINT64_MAX;
        return lun[1];
    case 1:                         /* flat space addressing */
        return ((uint64_t)(lun[0] & 0x3F) << 8) | lun[1];
    default:
        return UINT64_MAX;
    }
}

void scsi_lun_encode(uint64_t lun, uint8_t out[8])
{
    memset(out, 0, 8);
    if (lun < 256) {
        out[1] = (uint8_t)lun;
    } else {
        out[0] = (uint8_t)(0x40 | ((lun >> 8) & 0x3F));
        out[1] = (uint8_t)lun;
    }
}

/* --------------------------------------------------------- nexuses, UA */

static struct nexus_state *nexus_find(struct scsi_controller *c, uint64_t id)
{
    for (size_t i = 0; i < c->nexus_count; i++)
        if (c->nexuses[i]->nexus.id == id)
            return c->nexuses[i];
    return NULL;
}

static void ua_push(struct ua_queue *q, uint8_t asc, uint8_t ascq)
{
    for (unsigned i = 0; i < q->count; i++)
        if (q->e[i].asc == asc && q->e[i].ascq == ascq)
            return;
    if (q->count == UA_QUEUE_DEPTH) {
        /* SPC-4 allows dropping conditions when the queue overflows; a reset
         * supersedes everything, so keep the oldest ones (often that). */
        return;
    }
    q->e[q->count].asc = asc;
    q->e[q->count].ascq = ascq;
    q->count++;
}

static bool ua_pop(struct ua_queue *q, struct ua_entry *out)
{
    if (!q->count)
        return false;
    *out = q->e[0];
    memmove(&q->e[0], &q->e[1], sizeof(q->e[0]) * (size_t)(q->count - 1));
    q->count--;
    return true;
}

static struct nexus_state *nexus_add(struct scsi_controller *c, const struct scsi_nexus *n)
{
    struct nexus_state *ns = nexus_find(c, n->id);
    if (ns)
        return ns;
    if (c->nexus_count == c->nexus_cap) {
        size_t cap = c->nexus_cap ? c->nexus_cap * 2 : 8;
        struct nexus_state **v = realloc(c->nexuses, cap * sizeof(*v));
        if (!v)
            return NULL;
        c->nexuses = v;
        c->nexus_cap = cap;
    }
    ns = calloc(1, sizeof(*ns));
    if (!ns)
        return NULL;
    ns->nexus = *n;
    ns->nexus.initiator[sizeof(ns->nexus.initiator) - 1] = '\0';
    for (unsigned lun = 0; lun < SCSI_LUNS_PER_CONTROLLER; lun++)
        ua_push(&ns->ua[lun], 0x29, 0x00);
    c->nexuses[c->nexus_count++] = ns;
    return ns;
}

void scsi_controller_nexus_add(struct scsi_controller *c, const struct scsi_nexus *n)
{
    if (!nexus_add(c, n))
        hv_warn("%s: no memory for the nexus of %s", c->name, n->initiator);
}

void scsi_controller_nexus_remove(struct scsi_controller *c, const struct scsi_nexus *n)
{
    for (size_t i = 0; i < c->nexus_count; i++) {
        if (c->nexuses[i]->nexus.id != n->id)
            continue;
        for (unsigned lun = 0; lun < SCSI_LUNS_PER_CONTROLLER; lun++) {
            struct scsi_lu *lu = c->slots[lun];
            if (lu && lu->ops->nexus_gone)
                lu->ops->nexus_gone(lu, &c->nexuses[i]->nexus);
        }
        free(c->nexuses[i]);
        c->nexuses[i] = c->nexuses[--c->nexus_count];
        return;
    }
}

void scsi_controller_raise_ua_for(struct scsi_controller *c, uint64_t lun, const char *initiator,
                                  uint64_t except_id, uint8_t asc, uint8_t ascq)
{
    for (size_t i = 0; i < c->nexus_count; i++) {
        struct nexus_state *ns = c->nexuses[i];
        if (except_id && ns->nexus.id == except_id)
            continue;
        if (initiator && strcmp(ns->nexus.initiator, initiator) != 0)
            continue;
        if (lun == UINT64_MAX) {
            for (unsigned l = 0; l < SCSI_LUNS_PER_CONTROLLER; l++)
                if (c->slots[l])
                    ua_push(&ns->ua[l], asc, ascq);
        } else if (lun < SCSI_LUNS_PER_CONTROLLER) {
            ua_push(&ns->ua[lun], asc, ascq);
        }
    }
}

void scsi_controller_raise_ua(struct scsi_controller *c, uint64_t lun, uint8_t asc, uint8_t ascq)
{
    scsi_controller_raise_ua_for(c, lun, NULL, 0, asc, ascq);
}

/* ----------------------------------------------------------- lifecycle */

int scsi_controller_create(struct hv_reactor *r, const char *name, struct scsi_controller **out)
{
    struct scsi_controller *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->reactor = r;
    snprintf(c->name, sizeof(c->name), "%s", name ? name : "controller");
    *out = c;
    return 0;
}

void scsi_controller_destroy(struct scsi_controller *c)
{
    if (!c)
        return;
    for (unsigned lun = 0; lun < SCSI_LUNS_PER_CONTROLLER; lun++) {
        struct scsi_lu *lu = scsi_controller_detach(c, lun);
        if (lu)
            lu->ops->destroy(lu);
    }
    for (size_t i = 0; i < c->nexus_count; i++)
        free(c->nexuses[i]);
    free(c->nexuses);
    free(c);
}

int scsi_controller_attach(struct scsi_controller *c, uint64_t lun, struct scsi_lu *lu)
{
    if (lun >= SCSI_LUNS_PER_CONTROLLER)
        return -EINVAL;
    if (c->slots[lun])
        return -EBUSY;
    lu->controller = c;
    lu->lun = lun;
    lu->reactor = c->reactor;
    c->slots[lun] = lu;
    /* Existing nexuses learn of the new LU through any LU they use; the new
     * LU itself starts with a clean slate except this same notice. */
    for (size_t i = 0; i < c->nexus_count; i++)
        c->nexuses[i]->ua[lun].count = 0;
    scsi_controller_raise_ua(c, UINT64_MAX, 0x3F, 0x0E);
    return 0;
}

struct scsi_lu *scsi_controller_detach(struct scsi_controller *c, uint64_t lun)
{
    if (lun >= SCSI_LUNS_PER_CONTROLLER || !c->slots[lun])
        return NULL;
    struct scsi_lu *lu = c->slots[lun];
    c->slots[lun] = NULL;
    lu->controller = NULL;
    for (size_t i = 0; i < c->nexus_count; i++)
        c->nexuses[i]->ua[lun].count = 0;
    scsi_controller_raise_ua(c, UINT64_MAX, 0x3F, 0x0E);
    /* Tasks still in flight keep their controller pointer for completion:
     * the task set outlives the slot. */
    return lu;
}

struct scsi_lu *scsi_controller_lu(struct scsi_controller *c, uint64_t lun)
{
    return lun < SCSI_LUNS_PER_CONTROLLER ? c->slots[lun] : NULL;
}

unsigned scsi_controller_tasks_in_flight(const struct scsi_controller *c)
{
    return c->set_count;
}

static void lu_idle_fire(void *arg)
{
    struct scsi_lu *lu = arg;
    hv_call_cb cb = lu->idle_cb;
    lu->idle_cb = NULL;
    if (cb)
        cb(lu->idle_arg);
}

void scsi_lu_when_idle(struct scsi_lu *lu, hv_call_cb cb, void *arg)
{
    lu->idle_cb = cb;
    lu->idle_arg = arg;
    if (lu->tasks_in_flight == 0)
        hv_reactor_defer(lu->reactor, &lu->idle_deferred, lu_idle_fire, lu);
}

/* ------------------------------------------------------------ task set */

static void task_set_unlink(struct scsi_controller *c, struct scsi_task *t)
{
    if (t->set_prev)
        t->set_prev->set_next = t->set_next;
    else
        c->set_head = t->set_next;
    if (t->set_next)
        t->set_next->set_prev = t->set_prev;
    t->set_prev = t->set_next = NULL;
    c->set_count--;
}

static void controller_task_done(struct scsi_task *t)
{
    struct scsi_controller *c = t->controller;
    struct scsi_lu *lu = t->exec_lu;
    task_set_unlink(c, t);
    if (lu) {
        lu->tasks_in_flight--;
        if (lu->tasks_in_flight == 0 && lu->idle_cb)
            hv_reactor_defer(lu->reactor, &lu->idle_deferred, lu_idle_fire, lu);
    }
    if (t->is_aborted && t->status == SCSI_STATUS_GOOD)
        t->status = SCSI_STATUS_TASK_ABORTED;
    t->done = t->transport_done;
    t->done(t);
}

static void controller_deferred_done(void *arg)
{
    controller_task_done(arg);
}

static void complete_later(struct scsi_controller *c, struct scsi_task *t)
{
    hv_reactor_defer(c->reactor, &t->deferred, controller_deferred_done, t);
}

/* REPORT LUNS (SPC-4 6.33): select report 0 (all logical units), 1 (well
 * known only: we have none), 2 (all), 0x10/0x11/0x12 (administrative /
 * subsidiary: every LU here is a plain one). */
static void report_luns(struct scsi_controller *c, struct scsi_task *t)
{
    uint8_t buf[8 + 8 * SCSI_LUNS_PER_CONTROLLER];
    uint32_t alloc = hv_be32(t->cdb + 6);
    uint8_t select = t->cdb[2];
    size_t n = 0;

    if (select != 0x00 && select != 0x01 && select != 0x02 && select != 0x10 &&
        select != 0x11 && select != 0x12) {
        scsi_task_invalid_field(t, true, 2, -1);
        return;
    }
    if (alloc < 16) {
        scsi_task_invalid_field(t, true, 6, -1);
        return;
    }
    memset(buf, 0, sizeof(buf));
    if (select != 0x01 && select != 0x11) {
        for (unsigned lun = 0; lun < SCSI_LUNS_PER_CONTROLLER; lun++) {
            if (!c->slots[lun])
                continue;
            scsi_lun_encode(lun, buf + 8 + 8 * n);
            n++;
        }
    }
    hv_put_be32(buf, (uint32_t)(8 * n));
    scsi_task_good(t);
    scsi_task_data_in(t, buf, 8 + 8 * n, alloc);
}

/* A command to a slot without LU (SPC-4 4.6.4 / SAM-5 5.9.5). */
static void no_lu(struct scsi_task *t)
{
    uint8_t op = t->cdb[0];
    if (op == 0x12) {
        if (t->cdb[1] & 0x03) {     /* EVPD / CMDDT of a LU that is not there */
            scsi_task_check(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LU_NOT_SUPPORTED);
            return;
        }
        uint8_t inq[36];
        memset(inq, 0, sizeof(inq));
        inq[0] = 0x7F;              /* peripheral qualifier 3, type 0x1F */
        inq[2] = 0x06;
        inq[3] = 0x12;
        inq[4] = sizeof(inq) - 5;
        memcpy(inq + 8, "HVSTOR  ", 8);
        memcpy(inq + 16, "No LUN          ", 16);
        memcpy(inq + 32, "0001", 4);
        scsi_task_good(t);
        scsi_task_data_in(t, inq, sizeof(inq), hv_be16(t->cdb + 3));
        return;
    }
    if (op == 0x03) {               /* REQUEST SENSE reports it as data */
        uint8_t sense[SCSI_SENSE_MAX];
        size_t len = scsi_sense_build(sense, t->cdb[1] & 1, SCSI_SENSE_ILLEGAL_REQUEST, 0x25,
                                      0x00, false, 0);
        scsi_task_good(t);
        scsi_task_data_in(t, sense, len, t->cdb[4]);
        return;
    }
    scsi_task_check(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_LU_NOT_SUPPORTED);
}

static bool is_cdb_len_valid(const struct scsi_task *t)
{
    static const uint8_t group_len[8] = { 6, 10, 10, 0, 16, 12, 0, 0 };
    uint8_t need = group_len[t->cdb[0] >> 5];
    return t->cdb_len <= SCSI_MAX_CDB && (need == 0 || t->cdb_len >= need);
}

void scsi_controller_execute(struct scsi_controller *c, struct scsi_task *t)
{
    uint8_t op = t->cdb[0];
    struct scsi_lu *lu = t->lun < SCSI_LUNS_PER_CONTROLLER ? c->slots[t->lun] : NULL;

    t->in_bytes = 0;
    t->wanted_bytes = 0;
    t->status = SCSI_STATUS_GOOD;
    t->sense_len = 0;
    t->is_aborted = false;
    t->next = NULL;
    t->start_ns = hv_now_ns();
    t->controller = c;
    t->exec_lu = NULL;
    t->is_descriptor_sense = lu ? lu->is_descriptor_sense : false;
    t->transport_done = t->done;
    t->done = controller_task_done;
    t->set_prev = NULL;
    t->set_next = c->set_head;
    if (c->set_head)
        c->set_head->set_prev = t;
    c->set_head = t;
    c->set_count++;

    if (!is_cdb_len_valid(t)) {
        scsi_task_check(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_OPCODE);
        complete_later(c, t);
        return;
    }
    if (op == 0xA0) {               /* REPORT LUNS: the controller's own */
        report_luns(c, t);
        complete_later(c, t);
        return;
    }
    if (!lu) {
        no_lu(t);
        complete_later(c, t);
        return;
    }

    struct nexus_state *ns = t->nexus ? nexus_find(c, t->nexus->id) : NULL;
    if (!ns && t->nexus)
        ns = nexus_add(c, t->nexus);    /* the transport skipped nexus_add */
    if (ns && ns->ua[t->lun].count && op != 0x12) {
        struct ua_entry ua;
        ua_pop(&ns->ua[t->lun], &ua);
        if (op == 0x03) {
            uint8_t sense[SCSI_SENSE_MAX];
            size_t len = scsi_sense_build(sense, t->cdb[1] & 1, SCSI_SENSE_UNIT_ATTENTION,
                                          ua.asc, ua.ascq, false, 0);
            scsi_task_good(t);
            scsi_task_data_in(t, sense, len, t->cdb[4]);
        } else {
            scsi_task_set_sense(t, SCSI_SENSE_UNIT_ATTENTION, ua.asc, ua.ascq);
        }
        complete_later(c, t);
        return;
    }

    t->exec_lu = lu;
    lu->tasks_in_flight++;
    lu->ops->execute(lu, t);
}

/* ---------------------------------------------------- task management */

static void abort_matching(struct scsi_controller *c, uint64_t lun, const char *initiator,
                           uint64_t nexus_id, uint64_t except_id)
{
    for (struct scsi_task *t = c->set_head; t; t = t->set_next) {
        if (t->lun != lun || !t->exec_lu)
            continue;
        uint64_t id = t->nexus ? t->nexus->id : 0;
        if (nexus_id && id != nexus_id)
            continue;
        if (except_id && id == except_id)
            continue;
        if (initiator && (!t->nexus || strcmp(t->nexus->initiator, initiator) != 0))
            continue;
        t->is_aborted = true;
    }
}

void scsi_controller_abort_initiator(struct scsi_controller *c, uint64_t lun,
                                     const char *initiator, uint64_t except_id)
{
    abort_matching(c, lun, initiator, 0, except_id);
    struct scsi_lu *lu = scsi_controller_lu(c, lun);
    if (!lu)
        return;
    for (size_t i = 0; i < c->nexus_count; i++) {
        struct nexus_state *ns = c->nexuses[i];
        if (ns->nexus.id != except_id && strcmp(ns->nexus.initiator, initiator) == 0)
            lu->ops->reset(lu, &ns->nexus);
    }
}

static void lu_reset(struct scsi_controller *c, uint64_t lun, uint8_t asc, uint8_t ascq)
{
    struct scsi_lu *lu = c->slots[lun];
    abort_matching(c, lun, NULL, 0, 0);
    lu->ops->reset(lu, NULL);
    if (lu->ops->lu_reset)
        lu->ops->lu_reset(lu);
    for (size_t i = 0; i < c->nexus_count; i++) {
        /* A reset supersedes what was pending (SAM-5 6.3.3). */
        c->nexuses[i]->ua[lun].count = 0;
        ua_push(&c->nexuses[i]->ua[lun], asc, ascq);
    }
}

enum scsi_tmf_response scsi_controller_tmf(struct scsi_controller *c, const struct scsi_nexus *n,
                                           enum scsi_tmf fn, uint64_t lun, uint32_t ref_tag)
{
    struct scsi_lu *lu = scsi_controller_lu(c, lun);
    uint64_t nexus_id = n ? n->id : 0;

    switch (fn) {
    case SCSI_TMF_ABORT_TASK:
        if (!lu)
            return SCSI_TMF_LUN_NOT_FOUND;
        for (struct scsi_task *t = c->set_head; t; t = t->set_next) {
            if (t->lun == lun && t->tag == ref_tag &&
                (!n || (t->nexus && t->nexus->id == nexus_id))) {
                t->is_aborted = true;
                if (t->exec_lu && t->exec_lu->ops->abort_task)
                    t->exec_lu->ops->abort_task(t->exec_lu, t);
                return SCSI_TMF_COMPLETE;
            }
        }
        return SCSI_TMF_TASK_NOT_FOUND;
    case SCSI_TMF_ABORT_TASK_SET:
        if (!lu)
            return SCSI_TMF_LUN_NOT_FOUND;
        abort_matching(c, lun, NULL, nexus_id, 0);
        lu->ops->reset(lu, n);
        return SCSI_TMF_COMPLETE;
    case SCSI_TMF_CLEAR_TASK_SET:
        if (!lu)
            return SCSI_TMF_LUN_NOT_FOUND;
        abort_matching(c, lun, NULL, 0, 0);
        lu->ops->reset(lu, NULL);
        return SCSI_TMF_COMPLETE;
    /* Every reset reports the generic POWER ON, RESET, OR BUS DEVICE RESET
     * OCCURRED (29/00), which SAM-5 allows for all of them: initiators
     * (libiscsi among them) retry exactly that one, not the finer 29/01..03. */
    case SCSI_TMF_LOGICAL_UNIT_RESET:
        if (!lu)
            return SCSI_TMF_LUN_NOT_FOUND;
        lu_reset(c, lun, 0x29, 0x00);
        return SCSI_TMF_COMPLETE;
    case SCSI_TMF_TARGET_WARM_RESET:
    case SCSI_TMF_TARGET_COLD_RESET:
        for (unsigned l = 0; l < SCSI_LUNS_PER_CONTROLLER; l++)
            if (c->slots[l])
                lu_reset(c, l, 0x29, 0x00);
        return SCSI_TMF_COMPLETE;
    }
    return SCSI_TMF_NOT_SUPPORTED;
}
