/*
 * Reservations of the emulated disk: SPC-4 persistent reservations (the
 * ones Windows and Linux guest clusters use) and SPC-2 RESERVE/RELEASE.
 *
 * State lives in memory per LU. A registration belongs to an I_T nexus,
 * identified by the initiator port name (iSCSI name + ",i,0x" + ISID) so it
 * survives the nexus itself, as SPC-4 wants. There is one target port
 * (relative port 1), so ALL_TG_PT is honoured trivially. Persisting through
 * power loss (APTPL) is not offered: PTPL_C is 0 and APTPL=1 is refused.
 * SPC-2 reservations belong to one nexus and go with it.
 */
#include <errno.h>

#include "scsi_disk_int.h"

static bool is_all_registrants(uint8_t type)
{
    return type == PR_TYPE_WE_AR || type == PR_TYPE_EA_AR;
}

static bool is_registrants_only(uint8_t type)
{
    return type == PR_TYPE_WE_RO || type == PR_TYPE_EA_RO;
}

static bool is_write_exclusive(uint8_t type)
{
    return type == PR_TYPE_WE || type == PR_TYPE_WE_RO || type == PR_TYPE_WE_AR;
}

static bool is_valid_type(uint8_t type)
{
    return type == PR_TYPE_WE || type == PR_TYPE_EA || type == PR_TYPE_WE_RO ||
           type == PR_TYPE_EA_RO || type == PR_TYPE_WE_AR || type == PR_TYPE_EA_AR;
}

static int reg_find(const struct pr_state *pr, const char *initiator)
{
    for (int i = 0; i < DISK_PR_MAX_REGISTRANTS; i++)
        if (pr->reg[i].is_used && strcmp(pr->reg[i].initiator, initiator) == 0)
            return i;
    return -1;
}

static int reg_add(struct pr_state *pr, const char *initiator, uint64_t key)
{
    for (int i = 0; i < DISK_PR_MAX_REGISTRANTS; i++) {
        if (pr->reg[i].is_used)
            continue;
        pr->reg[i].is_used = true;
        pr->reg[i].key = key;
        snprintf(pr->reg[i].initiator, sizeof(pr->reg[i].initiator), "%s", initiator);
        return i;
    }
    return -1;
}

static unsigned reg_count(const struct pr_state *pr)
{
    unsigned n = 0;
    for (int i = 0; i < DISK_PR_MAX_REGISTRANTS; i++)
        n += pr->reg[i].is_used;
    return n;
}

/* A holder in the SPC-4 5.13.10 sense: the reserving nexus, or under an
 * all-registrants type every registrant. */
static bool is_holder(const struct pr_state *pr, int idx)
{
    if (!pr->is_reserved || idx < 0)
        return false;
    return is_all_registrants(pr->type) || pr->holder == idx;
}

/* Who may act as the holder for access: registrants-only types let every
 * registrant through too. */
static bool has_access(const struct pr_state *pr, int idx)
{
    return is_holder(pr, idx) ||
           (idx >= 0 && (is_registrants_only(pr->type) || is_all_registrants(pr->type)));
}

static void ua_for(struct scsi_disk *d, const char *initiator, uint64_t except_id, uint16_t code)
{
    if (d->lu.controller)
        scsi_controller_raise_ua_for(d->lu.controller, d->lu.lun, initiator, except_id,
                                     (uint8_t)(code >> 8), (uint8_t)code);
}

/* UA to every registrant except the nexus `t` came on. */
static void ua_registrants(struct scsi_disk *d, struct scsi_task *t, uint16_t code)
{
    for (int i = 0; i < DISK_PR_MAX_REGISTRANTS; i++)
        if (d->pr.reg[i].is_used)
            ua_for(d, d->pr.reg[i].initiator, nexus_id_of(t), code);
}

static void release_reservation(struct scsi_disk *d, struct scsi_task *t, bool notify)
{
    struct pr_state *pr = &d->pr;
    uint8_t type = pr->type;
    pr->is_reserved = false;
    pr->holder = -1;
    pr->type = 0;
    if (notify && (is_registrants_only(type) || is_all_registrants(type)))
        ua_registrants(d, t, SCSI_ASC_RESERVATIONS_RELEASED);
}

static void unregister(struct scsi_disk *d, struct scsi_task *t, int idx)
{
    struct pr_state *pr = &d->pr;
    bool was_holder = pr->is_reserved && !is_all_registrants(pr->type) && pr->holder == idx;
    pr->reg[idx].is_used = false;
    if (!pr->is_reserved)
        return;
    if (is_all_registrants(pr->type)) {
        if (reg_count(pr) == 0)
            release_reservation(d, t, false);
    } else if (was_holder) {
        release_reservation(d, t, true);
    }
}

bool pr_is_conflict(struct scsi_disk *d, struct scsi_task *t, enum pr_class cls)
{
    struct pr_state *pr = &d->pr;
    uint8_t op = t->cdb[0];

    if (pr->is_spc2_reserved && pr->spc2_holder != nexus_id_of(t)) {
        /* SPC-2 7.21: only these get through another nexus' reservation. */
        return !(op == 0x12 || op == 0x03 || op == 0xA0 || op == 0xA3 || op == 0x17 ||
                 op == 0x57);
    }
    if (cls == PR_ALWAYS || cls == PR_OWN || !pr->is_reserved)
        return false;
    int idx = reg_find(pr, initiator_of(t));
    if (has_access(pr, idx))
        return false;
    if (cls == PR_READ && is_write_exclusive(pr->type))
        return false;
    return true;
}

/* ------------------------------------------------------------- PR IN */

static void put_at(struct scsi_task *t, size_t cap, size_t off, const void *data, size_t len)
{
    if (off >= cap)
        return;
    hv_iov_from_buf(t->in_iov, t->in_iovcnt, off, data, HV_MIN(len, cap - off));
}

/* An iSCSI TransportID (SPC-4 7.6.4.6) for an initiator port name. */
static size_t transport_id(const char *initiator, uint8_t *out, size_t cap)
{
    size_t n = strlen(initiator) + 1;
    size_t padded = HV_ALIGN_UP(HV_MAX(n, 20u), 4);
    if (4 + padded > cap)
        padded = HV_ALIGN_DOWN(cap - 4, 4);
    memset(out, 0, 4 + padded);
    out[0] = (uint8_t)((strstr(initiator, ",i,0x") ? 0x40 : 0x00) | 0x05);
    hv_put_be16(out + 2, (uint16_t)padded);
    memcpy(out + 4, initiator, HV_MIN(n - 1, padded - 1));
    return 4 + padded;
}

void pr_in(struct scsi_disk *d, struct scsi_task *t)
{
    struct pr_state *pr = &d->pr;
    uint8_t sa = t->cdb[1] & 0x1F;
    uint16_t alloc = hv_be16(t->cdb + 7);
    size_t cap = HV_MIN(alloc, t->dir == SCSI_DIR_IN ? t->expected_bytes : 0);
    cap = HV_MIN(cap, hv_iov_length(t->in_iov, t->in_iovcnt));
    uint8_t hdr[8];
    size_t len = 8;

    hv_put_be32(hdr, pr->generation);
    switch (sa) {
    case 0x00:                      /* READ KEYS */
        for (int i = 0; i < DISK_PR_MAX_REGISTRANTS; i++) {
            if (!pr->reg[i].is_used)
                continue;
            uint8_t key[8];
            hv_put_be64(key, pr->reg[i].key);
            put_at(t, cap, len, key, 8);
            len += 8;
        }
        break;
    case 0x01: {                    /* READ RESERVATION */
        uint8_t r[16] = { 0 };
        if (pr->is_reserved) {
            if (!is_all_registrants(pr->type))
                hv_put_be64(r, pr->reg[pr->holder].key);
            r[13] = pr->type;       /* scope 0: logical unit */
            put_at(t, cap, len, r, sizeof(r));
            len += sizeof(r);
        }
        break;
    }
    case 0x02: {                    /* REPORT CAPABILITIES */
        uint8_t r[8] = { 0 };
        hv_put_be16(r, 8);
        r[2] = 0x10 | 0x04;         /* CRH, ATP_C (one target port) */
        r[3] = 0x80;                /* TMV */
        r[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
        r[5] = 0x01;
        put_at(t, cap, 0, r, sizeof(r));
        t->in_bytes = (uint32_t)HV_MIN(cap, sizeof(r));
        t->wanted_bytes = (uint32_t)HV_MIN(alloc, sizeof(r));
        disk_finish(t);
        return;
    }
    case 0x03:                      /* READ FULL STATUS */
        for (int i = 0; i < DISK_PR_MAX_REGISTRANTS; i++) {
            if (!pr->reg[i].is_used)
                continue;
            uint8_t desc[24 + 4 + 256];
            memset(desc, 0, 24);
            hv_put_be64(desc, pr->reg[i].key);
            desc[12] = 0x02;        /* ALL_TG_PT: the only port */
            if (is_holder(pr, i)) {
                desc[12] |= 0x01;
                desc[13] = pr->type;
            }
            hv_put_be16(desc + 18, 1);
            size_t tid = transport_id(pr->reg[i].initiator, desc + 24, sizeof(desc) - 24);
            hv_put_be32(desc + 20, (uint32_t)tid);
            put_at(t, cap, len, desc, 24 + tid);
            len += 24 + tid;
        }
        break;
    default:
        disk_fail_cdb(t, 1, 4);
        return;
    }
    hv_put_be32(hdr + 4, (uint32_t)(len - 8));
    put_at(t, cap, 0, hdr, sizeof(hdr));
    t->in_bytes = (uint32_t)HV_MIN(cap, len);
    t->wanted_bytes = (uint32_t)HV_MIN(alloc, len);
    disk_finish(t);
}

/* ------------------------------------------------------------ PR OUT */

#define PR_REGISTER 0x00
#define PR_RESERVE 0x01
#define PR_RELEASE 0x02
#define PR_CLEAR 0x03
#define PR_PREEMPT 0x04
#define PR_PREEMPT_AND_ABORT 0x05
#define PR_REGISTER_AND_IGNORE 0x06
#define PR_REGISTER_AND_MOVE 0x07

static void conflict(struct scsi_task *t)
{
    t->status = SCSI_STATUS_RESERVATION_CONFLICT;
    t->sense_len = 0;
    disk_finish(t);
}

static void do_register(struct scsi_disk *d, struct scsi_task *t, int idx, uint64_t key,
                        uint64_t sa_key, bool is_ignore)
{
    struct pr_state *pr = &d->pr;
    if (idx < 0) {
        if (!is_ignore && key != 0) {
            conflict(t);
            return;
        }
        if (sa_key != 0) {
            if (reg_add(pr, initiator_of(t), sa_key) < 0) {
                disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST,
                          SCSI_ASC_INSUFFICIENT_REGISTRATION_RESOURCES);
                return;
            }
            pr->generation++;
        }
        disk_finish(t);
        return;
    }
    if (!is_ignore && key != pr->reg[idx].key) {
        conflict(t);
        return;
    }
    if (sa_key == 0)
        unregister(d, t, idx);
    else
        pr->reg[idx].key = sa_key;
    pr->generation++;
    disk_finish(t);
}

/* Remove every registration with `key` except that of nexus `self`; UA
 * REGISTRATIONS PREEMPTED to each removed one; abort their tasks when asked. */
static unsigned preempt_key(struct scsi_disk *d, struct scsi_task *t, int self, uint64_t key,
                            bool is_all_others, bool is_abort)
{
    struct pr_state *pr = &d->pr;
    unsigned n = 0;
    for (int i = 0; i < DISK_PR_MAX_REGISTRANTS; i++) {
        if (!pr->reg[i].is_used || i == self)
            continue;
        if (!is_all_others && pr->reg[i].key != key)
            continue;
        pr->reg[i].is_used = false;
        ua_for(d, pr->reg[i].initiator, nexus_id_of(t), SCSI_ASC_REGISTRATIONS_PREEMPTED);
        if (is_abort && d->lu.controller)
            scsi_controller_abort_initiator(d->lu.controller, d->lu.lun, pr->reg[i].initiator,
                                            nexus_id_of(t));
        n++;
    }
    return n;
}

static void do_preempt(struct scsi_disk *d, struct scsi_task *t, int idx, uint64_t sa_key,
                       uint8_t type, bool is_abort)
{
    struct pr_state *pr = &d->pr;

    if (!pr->is_reserved) {
        if (sa_key == 0) {
            disk_fail_param(t, 8, -1);
            return;
        }
        if (!preempt_key(d, t, idx, sa_key, false, is_abort)) {
            conflict(t);
            return;
        }
        pr->generation++;
        disk_finish(t);
        return;
    }
    if (is_all_registrants(pr->type)) {
        if (sa_key == 0) {
            /* Everyone else goes; the preempting nexus now holds a
             * reservation of the type it asked for. */
            preempt_key(d, t, idx, 0, true, is_abort);
            pr->type = type;
            pr->holder = idx;
        } else if (!preempt_key(d, t, idx, sa_key, false, is_abort)) {
            conflict(t);
            return;
        }
        pr->generation++;
        disk_finish(t);
        return;
    }
    uint64_t holder_key = pr->reg[pr->holder].key;
    if (sa_key == holder_key) {
        uint8_t old_type = pr->type;
        preempt_key(d, t, idx, sa_key, false, is_abort);
        pr->holder = idx;
        pr->type = type;
        if (old_type != type)
            ua_registrants(d, t, SCSI_ASC_RESERVATIONS_RELEASED);
        pr->generation++;
        disk_finish(t);
        return;
    }
    if (sa_key == 0) {
        disk_fail_param(t, 8, -1);
        return;
    }
    if (!preempt_key(d, t, idx, sa_key, false, is_abort)) {
        conflict(t);
        return;
    }
    pr->generation++;
    disk_finish(t);
}

static void do_register_and_move(struct scsi_disk *d, struct scsi_task *t, int idx,
                                 uint32_t plen)
{
    struct pr_state *pr = &d->pr;
    uint8_t p[24];
    hv_iov_to_buf(t->out_iov, t->out_iovcnt, 0, p, sizeof(p));
    uint64_t key = hv_be64(p);
    uint64_t sa_key = hv_be64(p + 8);
    bool is_unreg = p[17] & 0x02;
    uint16_t rel_port = hv_be16(p + 18);
    uint32_t tid_len = hv_be32(p + 20);

    if (idx < 0 || key != pr->reg[idx].key) {
        conflict(t);
        return;
    }
    if (!pr->is_reserved || is_all_registrants(pr->type) || pr->holder != idx) {
        conflict(t);
        return;
    }
    if (p[17] & 0x01) {             /* APTPL: not offered */
        disk_fail_param(t, 17, 0);
        return;
    }
    if (tid_len < 8 || tid_len > 4 + 224 || 24 + (uint64_t)tid_len > plen) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_PARAMETER_LIST_LENGTH_ERROR);
        return;
    }
    uint8_t tid[4 + 224 + 1];
    hv_iov_to_buf(t->out_iov, t->out_iovcnt, 24, tid, tid_len);
    tid[tid_len] = '\0';
    uint16_t name_len = hv_be16(tid + 2);
    /* iSCSI, initiator port format (name + ",i,0x" + ISID): a port, not a
     * device, is what a registration belongs to. */
    if ((tid[0] & 0x0F) != 0x05 || (tid[0] >> 6) != 1 || name_len + 4u > tid_len ||
        sa_key == 0 || rel_port != 1) {
        disk_fail_param(t, 24, -1);
        return;
    }
    char name[225];
    size_t n = strnlen((const char *)tid + 4, name_len);
    memcpy(name, tid + 4, n);
    name[n] = '\0';
    if (strcmp(name, initiator_of(t)) == 0 || !strstr(name, ",i,0x")) {
        disk_fail_param(t, 24, -1);
        return;
    }
    int dest = reg_find(pr, name);
    if (dest < 0)
        dest = reg_add(pr, name, sa_key);
    if (dest < 0) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INSUFFICIENT_REGISTRATION_RESOURCES);
        return;
    }
    pr->holder = dest;
    if (is_unreg)
        pr->reg[idx].is_used = false;
    pr->generation++;
    disk_finish(t);
}

void pr_out(struct scsi_disk *d, struct scsi_task *t)
{
    struct pr_state *pr = &d->pr;
    uint8_t sa = t->cdb[1] & 0x1F;
    uint8_t scope = t->cdb[2] >> 4;
    uint8_t type = t->cdb[2] & 0x0F;
    uint32_t plen = hv_be32(t->cdb + 5);
    int idx = reg_find(pr, initiator_of(t));
    uint8_t p[24];

    t->wanted_bytes = plen;
    if (HV_MIN(t->expected_bytes, t->out_bytes) < plen || plen < 24 ||
        (sa != PR_REGISTER_AND_MOVE && plen != 24)) {
        disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_PARAMETER_LIST_LENGTH_ERROR);
        return;
    }
    if (sa == PR_RESERVE || sa == PR_RELEASE || sa == PR_PREEMPT ||
        sa == PR_PREEMPT_AND_ABORT || sa == PR_REGISTER_AND_MOVE) {
        if (scope != 0 || !is_valid_type(type)) {
            disk_fail_cdb(t, 2, scope ? 7 : 3);
            return;
        }
    }
    if (sa == PR_REGISTER_AND_MOVE) {
        do_register_and_move(d, t, idx, plen);
        return;
    }
    hv_iov_to_buf(t->out_iov, t->out_iovcnt, 0, p, sizeof(p));
    uint64_t key = hv_be64(p);
    uint64_t sa_key = hv_be64(p + 8);
    if ((p[20] & 0x08) || (p[20] & 0x01)) {     /* SPEC_I_PT, APTPL: not offered */
        disk_fail_param(t, 20, (p[20] & 0x08) ? 3 : 0);
        return;
    }
    if (sa == PR_REGISTER || sa == PR_REGISTER_AND_IGNORE) {
        do_register(d, t, idx, key, sa_key, sa == PR_REGISTER_AND_IGNORE);
        return;
    }
    /* Everything else needs a registered nexus presenting its own key. */
    if (idx < 0 || key != pr->reg[idx].key) {
        conflict(t);
        return;
    }
    switch (sa) {
    case PR_RESERVE:
        if (pr->is_reserved) {
            if (!is_holder(pr, idx) || pr->type != type) {
                conflict(t);
                return;
            }
        } else {
            pr->is_reserved = true;
            pr->type = type;
            pr->holder = idx;
        }
        disk_finish(t);
        return;
    case PR_RELEASE:
        if (!pr->is_reserved || !is_holder(pr, idx)) {
            disk_finish(t);
            return;
        }
        if (pr->type != type) {
            disk_fail(t, SCSI_SENSE_ILLEGAL_REQUEST, SCSI_ASC_INVALID_RELEASE_OF_PR);
            return;
        }
        release_reservation(d, t, true);
        disk_finish(t);
        return;
    case PR_CLEAR:
        for (int i = 0; i < DISK_PR_MAX_REGISTRANTS; i++) {
            if (pr->reg[i].is_used && i != idx)
                ua_for(d, pr->reg[i].initiator, nexus_id_of(t), SCSI_ASC_RESERVATIONS_PREEMPTED);
            pr->reg[i].is_used = false;
        }
        pr->is_reserved = false;
        pr->holder = -1;
        pr->type = 0;
        pr->generation++;
        disk_finish(t);
        return;
    case PR_PREEMPT:
    case PR_PREEMPT_AND_ABORT:
        do_preempt(d, t, idx, sa_key, type, sa == PR_PREEMPT_AND_ABORT);
        return;
    }
    disk_fail_cdb(t, 1, 4);
}

/* ------------------------------------------------- RESERVE / RELEASE */

/*
 * SPC-4 5.13.3 (CRH=1): with a persistent reservation in place, RESERVE and
 * RELEASE from a nexus that may act as its holder succeed without effect,
 * and from anyone else conflict.
 */
static bool spc2_blocked_by_pr(struct scsi_disk *d, struct scsi_task *t)
{
    struct pr_state *pr = &d->pr;
    if (!pr->is_reserved)
        return false;
    if (has_access(pr, reg_find(pr, initiator_of(t))))
        disk_finish(t);
    else
        conflict(t);
    return true;
}

void pr_reserve_spc2(struct scsi_disk *d, struct scsi_task *t)
{
    struct pr_state *pr = &d->pr;
    /* third-party and extent reservations are not supported */
    if ((t->cdb[0] == 0x56 && (t->cdb[1] & 0x12)) || (t->cdb[0] == 0x16 && (t->cdb[1] & 0x01))) {
        disk_fail_cdb(t, 1, -1);
        return;
    }
    if (spc2_blocked_by_pr(d, t))
        return;
    pr->is_spc2_reserved = true;
    pr->spc2_holder = nexus_id_of(t);
    disk_finish(t);
}

void pr_release_spc2(struct scsi_disk *d, struct scsi_task *t)
{
    struct pr_state *pr = &d->pr;
    if ((t->cdb[0] == 0x57 && (t->cdb[1] & 0x12)) || (t->cdb[0] == 0x17 && (t->cdb[1] & 0x01))) {
        disk_fail_cdb(t, 1, -1);
        return;
    }
    if (spc2_blocked_by_pr(d, t))
        return;
    if (pr->is_spc2_reserved && pr->spc2_holder == nexus_id_of(t))
        pr->is_spc2_reserved = false;
    disk_finish(t);
}

void pr_nexus_gone(struct scsi_disk *d, const struct scsi_nexus *n)
{
    if (d->pr.is_spc2_reserved && d->pr.spc2_holder == n->id)
        d->pr.is_spc2_reserved = false;
}

void pr_lu_reset(struct scsi_disk *d)
{
    d->pr.is_spc2_reserved = false;
}
