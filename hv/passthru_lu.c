/*
 * SAN pass-through LUNs in hvstord: the scsi_lu that hands the guest's CDBs
 * to passthru/, the SANs the daemon knows, VM identities, and the control
 * requests (san.add, san.list, san.luns, disk.attach_lun, disk.takeover,
 * vm.zoning).
 *
 * The guest's command reaches the SAN as it came: same CDB, data-out from
 * the buffer the iSCSI target received, data-in into the buffer it sends;
 * status, sense and residual come back unchanged. The controller in front
 * answers REPORT LUNS and unit attentions itself, as for every LU kind.
 *
 * Every check of `disk attach --lun` runs before a single guest I/O: the
 * VM's own IQN logs in and finds the LUN (masking), the LUN is not held by
 * another VM here (by designator, so two SAN names for one array do not
 * fool it), not used by the host's open-iscsi, not carrying a signature.
 * They run on a worker thread (passthru_job.c: a private reactor there, login
 * timeout 5 s), so other VMs' I/O never waits for a SAN that is slow to
 * answer; the attach itself then runs on the daemon's reactor.
 */
#include "passthru_int.h"
#include "passthru.h"
#include "san.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define PT_POOL 128                     /* commands in flight per LUN */

/* ------------------------------------------------------------ the SANs */

struct san_entry {
    char name[64];
    char portal[SAN_PORTAL_MAX];
    char chap_user[256];
    char chap_secret[256];
    char initiator[SAN_NAME_MAX];       /* for `san luns` (the management name) */
    uint32_t replacement_timeout_ms;    /* 0: san/'s default, 30 s */
};

static int san_name_check(const char *name, struct hv_err *err)
{
    size_t len = strlen(name);
    if (len == 0 || len > 63)
        return hv_err_set(err, -EINVAL, "SAN name '%s': 1 to 63 characters", name);
    for (size_t i = 0; i < len; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
              name[i] == '-' || name[i] == '_'))
            return hv_err_set(err, -EINVAL, "SAN name '%s': only a-z, 0-9, '-' and '_'", name);
    return 0;
}

static int san_load(struct hv_passthru *p, const char *name, struct san_entry *out,
                    struct hv_err *err)
{
    char path[8192];
    json_t *obj;
    const char *portal = NULL;
    const char *user = NULL;
    const char *secret = NULL;
    const char *initiator = NULL;
    json_int_t replacement_ms = 0;
    int ret = san_name_check(name, err);

    if (ret < 0)
        return ret;
    snprintf(path, sizeof(path), "%s/%s.json", p->sans_dir, name);
    if (access(path, F_OK) < 0)
        return hv_err_set(err, -ENOENT, "no SAN named '%s' (hvctl san add)", name);
    ret = hv_json_read_file(path, &obj, err);
    if (ret < 0)
        return ret;
    if (json_unpack(obj, "{s:s, s?s, s?s, s?s, s?I}", "portal", &portal, "chap_user", &user,
                    "chap_secret", &secret, "initiator", &initiator, "replacement_timeout_ms",
                    &replacement_ms) != 0 || replacement_ms < 0 || replacement_ms > 3600000) {
        json_decref(obj);
        return hv_err_set(err, -EINVAL, "%s: needs a string 'portal'", path);
    }
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", name);
    snprintf(out->portal, sizeof(out->portal), "%s", portal);
    snprintf(out->chap_user, sizeof(out->chap_user), "%s", user ? user : "");
    snprintf(out->chap_secret, sizeof(out->chap_secret), "%s", secret ? secret : "");
    snprintf(out->initiator, sizeof(out->initiator), "%s", initiator ? initiator : "");
    out->replacement_timeout_ms = (uint32_t)replacement_ms;
    json_decref(obj);
    return 0;
}

static void san_options(const struct san_entry *san, const char *target, const char *initiator,
                        struct san_session_options *o)
{
    memset(o, 0, sizeof(*o));
    o->portal = san->portal;
    o->target = target;
    o->initiator = initiator;
    o->replacement_timeout_ms = san->replacement_timeout_ms;
    if (san->chap_user[0]) {
        o->chap.user = san->chap_user;
        o->chap.secret = san->chap_secret;
    }
}

/* ------------------------------------------------------------- context */

static int parse_oui(const char *text, uint32_t *oui)
{
    uint32_t value = 0;
    int digits = 0;
    for (const char *c = text; *c; c++) {
        if (*c == ':' || *c == '-')
            continue;
        int v = (*c >= '0' && *c <= '9') ? *c - '0'
                : (*c >= 'a' && *c <= 'f') ? *c - 'a' + 10
                : (*c >= 'A' && *c <= 'F') ? *c - 'A' + 10 : -1;
        if (v < 0 || ++digits > 6)
            return -EINVAL;
        value = value << 4 | (uint32_t)v;
    }
    if (digits != 6 || value == 0)
        return -EINVAL;
    *oui = value;
    return 0;
}

int hv_passthru_init(struct hv_runtime *rt, const struct hv_passthru_options *opt,
                     struct hv_err *err)
{
    struct hv_passthru *p = calloc(1, sizeof(*p));
    int ret;

    if (!p)
        return hv_err_set(err, -ENOMEM, "out of memory");
    snprintf(p->state_dir, sizeof(p->state_dir), "%s", opt->state_dir);
    snprintf(p->sans_dir, sizeof(p->sans_dir), "%s/sans", opt->state_dir);
    snprintf(p->sysfs_root, sizeof(p->sysfs_root), "%s",
             opt->sysfs_root ? opt->sysfs_root : NPIV_SYSFS_ROOT);
    snprintf(p->dev_root, sizeof(p->dev_root), "%s", opt->dev_root ? opt->dev_root : "/dev");
    p->reactor = rt->reactor;
    if (mkdir(p->sans_dir, 0700) < 0 && errno != EEXIST) {
        ret = hv_err_errno(err, p->sans_dir, "mkdir");
        goto fail;
    }
    ret = pt_host_key_load(opt->state_dir, &p->host_key, err);
    if (ret < 0)
        goto fail;
    if (opt->wwn_oui && opt->iqn_prefix) {
        struct npiv_config cfg;
        npiv_config_init(&cfg);
        if (parse_oui(opt->wwn_oui, &cfg.oui) < 0) {
            ret = hv_err_set(err, -EINVAL, "--wwn-oui '%s' is not a 24-bit OUI (00:11:22)",
                             opt->wwn_oui);
            goto fail;
        }
        cfg.host_id = opt->host_id;
        snprintf(cfg.iqn_prefix, sizeof(cfg.iqn_prefix), "%s", opt->iqn_prefix);
        ret = npiv_allocator_open(opt->state_dir, &cfg, &p->npiv, err);
        if (ret < 0)
            goto fail;
    } else {
        snprintf(p->npiv_off_reason, sizeof(p->npiv_off_reason),
                 "hvstord runs without --wwn-oui and --iqn-prefix: VMs get no initiator "
                 "identity of their own");
    }
    rt->passthru = p;
    return 0;
fail:
    free(p);
    return ret;
}

void hv_passthru_fini(struct hv_runtime *rt)
{
    if (!rt->passthru)
        return;
    hv_pt_jobs_fini(rt->passthru);
    hv_passthru_fc_fini(rt->passthru);
    if (rt->passthru->npiv)
        npiv_allocator_close(rt->passthru->npiv);
    free(rt->passthru);
    rt->passthru = NULL;
}

int hv_passthru_vm_created(struct hv_runtime *rt, struct hv_vm_config *cfg,
                           const char *iqn_override, struct hv_err *err)
{
    struct hv_passthru *p = rt->passthru;
    struct npiv_identity id;
    int ret;

    if (!p || !p->npiv) {
        if (iqn_override)
            return hv_err_set(err, -EINVAL, "--iqn: %s", p ? p->npiv_off_reason : "off");
        return 0;
    }
    ret = npiv_identity_allocate(p->npiv, cfg->name, iqn_override, &id, err);
    if (ret < 0)
        return ret;
    if (!cfg->extra)
        cfg->extra = json_object();
    json_object_set_new(cfg->extra, "identity", npiv_identity_to_json(&id));
    return 0;
}

int hv_passthru_vm_identity(const struct hv_vm_config *cfg, struct npiv_identity *id,
                            struct hv_err *err)
{
    const json_t *obj = cfg->extra ? json_object_get(cfg->extra, "identity") : NULL;
    if (!obj)
        return hv_err_set(err, -ENOENT, "VM '%s' has no initiator identity (it was created "
                          "while hvstord ran without --wwn-oui and --iqn-prefix)", cfg->name);
    return npiv_identity_from_json(obj, id, err);
}

/* ------------------------------------------------------------- the LU */

struct lu_cmd {
    struct pt_cmd pt;
    struct scsi_task *task;
    struct pt_lu *owner;
    struct lu_cmd *next_free;
};

struct pt_lu {
    struct scsi_lu lu;
    struct pt_lun *pl;
    char device[4096];                  /* a local SCSI disk: the node it is at now */
    char san[64];
    char target[SAN_NAME_MAX];
    uint64_t san_lun;
    char designator[SAN_DESIGNATOR_MAX];
    char initiator[SAN_NAME_MAX];
    bool is_full_scsi;
    struct hv_pt_snap *snap;            /* backups: the stack writes go through */
    char no_snap_why[512];              /* why there is none */
    struct lu_cmd *free_list;
    struct scsi_task *wait_head;        /* tasks waiting for a free lu_cmd */
    struct scsi_task *wait_tail;
    uint64_t commands;
    uint64_t errors;
    bool is_taking_over;
    bool is_leaving;                    /* detach / VM delete: release on destroy */
    /* an FC LUN's sd (passthru_fc.c): the vport it is reached through */
    char fc_vport[32];
    void (*on_destroy)(void *arg);
    void *destroy_arg;
    int takeover_status;
    char takeover_msg[512];
    struct lu_cmd pool[PT_POOL];
};

static void start_task(struct pt_lu *pu, struct scsi_task *task);
static void lu_reset_waiting(struct pt_lu *pu, struct scsi_task *only,
                             const struct scsi_nexus *nexus);

/*
 * The SAN keeps a unit attention for our one I_T nexus; the guest may have
 * several (its initiators, multipath). The nexus whose command met it has
 * it in that command's answer; the others get it from the controller, as
 * if the SAN had queued it for each of them.
 */
static void ua_to_other_nexuses(struct pt_lu *pu, const struct scsi_nexus *except,
                                const uint8_t *sense, size_t len)
{
    uint16_t aa = san_sense_asc_ascq(sense, len);
    if (!pu->lu.controller)
        return;
    scsi_controller_raise_ua_for(pu->lu.controller, pu->lu.lun, NULL, except ? except->id : 0,
                                 (uint8_t)(aa >> 8), (uint8_t)aa);
}

/* A UA no guest command carried back (met by our own checks): all of them. */
static void lun_unit_attention(struct pt_lun *pl, const uint8_t *sense, size_t len, void *arg)
{
    struct pt_lu *pu = arg;
    uint16_t aa = san_sense_asc_ascq(sense, len);
    (void)pl;
    hv_info("%s LUN %" PRIu64 ": the SAN reports a unit attention (%02xh/%02xh): passed to "
            "the guest", pu->target, pu->san_lun, aa >> 8, aa & 0xff);
    ua_to_other_nexuses(pu, NULL, sense, len);
}

static void cmd_done(struct pt_cmd *pc)
{
    struct lu_cmd *lc = hv_container_of(pc, struct lu_cmd, pt);
    struct pt_lu *pu = lc->owner;
    struct scsi_task *task = lc->task;
    uint32_t expected = task->dir == SCSI_DIR_OUT ? task->out_bytes : task->expected_bytes;

    task->status = pc->status;
    task->sense_len = (uint8_t)HV_MIN(pc->sense_len, (uint32_t)SCSI_SENSE_MAX);
    memcpy(task->sense, pc->sense, task->sense_len);
    if (pc->status != SAN_STATUS_GOOD)
        pu->errors++;
    if (pc->status == SAN_STATUS_CHECK_CONDITION && !pc->is_filtered &&
        san_sense_key(pc->sense, pc->sense_len) == SCSI_SENSE_UNIT_ATTENTION)
        ua_to_other_nexuses(pu, task->nexus, pc->sense, pc->sense_len);
    /* The SAN's residual, unchanged: an overflow stays an overflow. */
    if (task->dir == SCSI_DIR_IN) {
        task->in_bytes = pc->is_overflow ? expected
                         : expected - HV_MIN(pc->residual, expected);
        task->wanted_bytes = pc->is_overflow ? expected + pc->residual : task->in_bytes;
    } else if (task->dir == SCSI_DIR_OUT) {
        task->in_bytes = 0;
        task->wanted_bytes = pc->is_overflow ? expected + pc->residual
                             : expected - HV_MIN(pc->residual, expected);
    } else {
        task->in_bytes = 0;
        task->wanted_bytes = 0;
    }
    lc->task = NULL;
    lc->next_free = pu->free_list;
    pu->free_list = lc;
    task->done(task);
    /* A freed slot takes the oldest waiting task. */
    if (pu->wait_head && pu->free_list) {
        struct scsi_task *next = pu->wait_head;
        pu->wait_head = next->next;
        if (!pu->wait_head)
            pu->wait_tail = NULL;
        start_task(pu, next);
    }
}

static void start_task(struct pt_lu *pu, struct scsi_task *task)
{
    struct lu_cmd *lc = pu->free_list;
    struct pt_cmd *pc = &lc->pt;

    pu->free_list = lc->next_free;
    lc->task = task;
    memset(pc->cdb, 0, sizeof(pc->cdb));
    memcpy(pc->cdb, task->cdb, HV_MIN(task->cdb_len, (uint8_t)SAN_CDB_MAX));
    pc->cdb_len = task->cdb_len;
    switch (task->dir) {
    case SCSI_DIR_IN:
        pc->dir = SAN_XFER_READ;
        pc->iov = task->in_iov;
        pc->iovcnt = task->in_iovcnt;
        pc->xfer_bytes = task->expected_bytes;
        break;
    case SCSI_DIR_OUT:
        pc->dir = SAN_XFER_WRITE;
        pc->iov = task->out_iov;
        pc->iovcnt = task->out_iovcnt;
        pc->xfer_bytes = task->out_bytes;
        break;
    default:
        pc->dir = SAN_XFER_NONE;
        pc->iov = NULL;
        pc->iovcnt = 0;
        pc->xfer_bytes = 0;
        break;
    }
    pc->done = cmd_done;
    pc->cb_arg = lc;
    pu->commands++;
    if (pu->snap && hv_pt_snap_forward(pu->snap, pc))
        return;
    pt_lun_submit(pu->pl, pc);
}

static void lu_execute(struct scsi_lu *lu, struct scsi_task *task)
{
    struct pt_lu *pu = hv_container_of(lu, struct pt_lu, lu);

    if (!pu->free_list) {
        task->next = NULL;
        if (pu->wait_tail)
            pu->wait_tail->next = task;
        else
            pu->wait_head = task;
        pu->wait_tail = task;
        return;
    }
    start_task(pu, task);
}

static void abort_deferred(void *arg)
{
    struct scsi_task *task = arg;
    task->done(task);
}

/* ABORT TASK: passthru/ aborts it here or at the SAN (an ABORT TASK there). */
static void lu_abort_task(struct scsi_lu *lu, struct scsi_task *task)
{
    struct pt_lu *pu = hv_container_of(lu, struct pt_lu, lu);
    for (int i = 0; i < PT_POOL; i++)
        if (pu->pool[i].task == task) {
            if (pu->snap)
                hv_pt_snap_abort(pu->snap, &pu->pool[i].pt);
            pt_lun_abort(pu->pl, &pu->pool[i].pt);
            return;
        }
    lu_reset_waiting(pu, task, NULL);
}

/*
 * ABORT TASK SET, CLEAR TASK SET (nexus NULL), and the first step of a
 * reset: the tasks waiting for a command slot end here; those in passthru/
 * are aborted one by one (an ABORT TASK each at the SAN: an ABORT TASK SET
 * there would take the other guest nexuses' commands too, which share our
 * one nexus at the SAN).
 */
static void lu_reset(struct scsi_lu *lu, const struct scsi_nexus *nexus)
{
    struct pt_lu *pu = hv_container_of(lu, struct pt_lu, lu);
    lu_reset_waiting(pu, NULL, nexus);
    for (int i = 0; i < PT_POOL; i++) {
        struct lu_cmd *lc = &pu->pool[i];
        if (lc->task && (!nexus || lc->task->nexus == nexus)) {
            if (pu->snap)
                hv_pt_snap_abort(pu->snap, &lc->pt);
            pt_lun_abort(pu->pl, &lc->pt);
        }
    }
}

/* LOGICAL UNIT RESET, or a target reset of the guest's controller (its LUNs
 * one by one): a LUN RESET of the SAN LUN, never a target reset there. */
static void lu_lu_reset(struct scsi_lu *lu)
{
    struct pt_lu *pu = hv_container_of(lu, struct pt_lu, lu);
    if (pu->snap)
        for (int i = 0; i < PT_POOL; i++)
            if (pu->pool[i].task)
                hv_pt_snap_abort(pu->snap, &pu->pool[i].pt);
    pt_lun_reset(pu->pl);
}

/* Waiting tasks of `nexus` (all when NULL), or just `only`, end TASK ABORTED. */
static void lu_reset_waiting(struct pt_lu *pu, struct scsi_task *only,
                             const struct scsi_nexus *nexus)
{
    struct scsi_lu *lu = &pu->lu;
    struct scsi_task **pp = &pu->wait_head;

    pu->wait_tail = NULL;
    while (*pp) {
        struct scsi_task *task = *pp;
        if (only ? task == only : (!nexus || task->nexus == nexus)) {
            *pp = task->next;
            task->status = SCSI_STATUS_TASK_ABORTED;
            task->sense_len = 0;
            task->in_bytes = 0;
            task->wanted_bytes = 0;
            hv_reactor_defer(lu->reactor, &task->deferred, abort_deferred, task);
            continue;
        }
        pu->wait_tail = task;
        pp = &task->next;
    }
}

static void lu_destroy(struct scsi_lu *lu)
{
    struct pt_lu *pu = hv_container_of(lu, struct pt_lu, lu);
    /* Detached or deleted: the LUN leaves this host, release it. Daemon
     * shutdown: keep the reservation, the restart takes it again. The
     * backup stack closes first (its tracker writes its state), and is
     * freed once pt_lun has answered its own last command. */
    if (pu->snap)
        hv_pt_snap_close(pu->snap);
    if (pu->is_leaving)
        pt_lun_close_and_release(pu->pl);
    else
        pt_lun_close(pu->pl);
    hv_pt_snap_free(pu->snap);
    if (pu->on_destroy)
        pu->on_destroy(pu->destroy_arg);
    free(pu);
}

void hv_passthru_lu_via_fc(struct scsi_lu *lu, const char *vport, void (*on_destroy)(void *arg),
                           void *arg)
{
    struct pt_lu *pu = hv_container_of(lu, struct pt_lu, lu);
    snprintf(pu->fc_vport, sizeof(pu->fc_vport), "%s", vport);
    pu->on_destroy = on_destroy;
    pu->destroy_arg = arg;
}

void hv_passthru_leaving(struct scsi_lu *lu)
{
    if (hv_lu_is_passthru(lu))
        hv_container_of(lu, struct pt_lu, lu)->is_leaving = true;
}

static const struct scsi_lu_ops pt_lu_ops = {
    .name = "passthru",
    .execute = lu_execute,
    .reset = lu_reset,
    .destroy = lu_destroy,
    .lu_reset = lu_lu_reset,
    .abort_task = lu_abort_task,
};

bool hv_lu_is_passthru(const struct scsi_lu *lu)
{
    return lu && lu->ops == &pt_lu_ops;
}

static void describe_local(struct pt_lu *pu, json_t *obj);

void hv_passthru_describe(struct scsi_lu *lu, json_t *obj)
{
    struct pt_lu *pu = hv_container_of(lu, struct pt_lu, lu);
    if (pu->device[0]) {
        describe_local(pu, obj);
        return;
    }
    json_object_set_new(obj, "passthru", json_pack(
        "{s:s, s:s, s:I, s:s, s:s, s:b, s:s, s:s, s:I, s:I, s:I, s:I}", "san", pu->san,
        "target", pu->target, "san_lun", (json_int_t)pu->san_lun, "designator",
        pu->designator, "initiator", pu->initiator, "full_scsi", pu->is_full_scsi,
        "state", pt_state_name(pt_lun_state(pu->pl)), "why", pt_lun_why(pu->pl),
        "commands", (json_int_t)pu->commands, "errors", (json_int_t)pu->errors,
        "forwarded", (json_int_t)pt_lun_forwarded(pu->pl), "filtered",
        (json_int_t)pt_lun_filtered(pu->pl)));
    json_object_set_new(json_object_get(obj, "passthru"), "task_management", json_pack(
        "{s:I, s:I, s:I}", "aborts_forwarded", (json_int_t)pt_lun_aborts_forwarded(pu->pl),
        "lun_resets_forwarded", (json_int_t)pt_lun_resets_forwarded(pu->pl),
        "san_unit_attentions", (json_int_t)pt_lun_uas_reported(pu->pl)));
    if (pu->snap)
        hv_pt_snap_describe(pu->snap, json_object_get(obj, "passthru"));
    else if (pu->no_snap_why[0])
        json_object_set_new(json_object_get(obj, "passthru"), "backup",
                            json_pack("{s:s, s:s}", "view", "none", "why", pu->no_snap_why));
    if (pt_lun_foreign_key(pu->pl)) {
        char key[24];
        snprintf(key, sizeof(key), "0x%016" PRIx64, pt_lun_foreign_key(pu->pl));
        json_object_set_new(json_object_get(obj, "passthru"), "reserved_by", json_string(key));
    }
}

static void describe_local(struct pt_lu *pu, json_t *obj)
{
    json_object_set_new(obj, "passthru", json_pack(
        "{s:s, s:s, s:s, s:b, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:i}", "transport", "sg_io",
        "device", pu->device, "designator", pu->designator, "full_scsi", pu->is_full_scsi,
        "state", pt_state_name(pt_lun_state(pu->pl)), "why", pt_lun_why(pu->pl), "commands",
        (json_int_t)pu->commands, "errors", (json_int_t)pu->errors, "forwarded",
        (json_int_t)pt_lun_forwarded(pu->pl), "filtered", (json_int_t)pt_lun_filtered(pu->pl),
        "inflight", (json_int_t)pt_lun_inflight(pu->pl), "max_in_device",
        (int)pt_lun_max_in_device(pu->pl)));
    if (pu->fc_vport[0])
        json_object_set_new(json_object_get(obj, "passthru"), "fc_vport",
                            json_string(pu->fc_vport));
}

static void lu_init(struct pt_lu *pu, struct hv_runtime *rt, const struct hv_disk_config *dc)
{
    snprintf(pu->designator, sizeof(pu->designator), "%s", dc->designator);
    pu->is_full_scsi = dc->is_full_scsi;
    pu->lu.ops = &pt_lu_ops;
    pu->lu.reactor = rt->reactor;
    for (int i = PT_POOL - 1; i >= 0; i--) {
        pu->pool[i].owner = pu;
        pu->pool[i].next_free = pu->free_list;
        pu->free_list = &pu->pool[i];
    }
}

/* A local SCSI disk (passthru_sg.c opened its pt_lun): the same LU as a SAN
 * LUN's, so the guest's CDBs take the same road up to the transport. */
int hv_passthru_lu_local(struct hv_runtime *rt, const struct hv_disk_config *dc,
                         struct pt_lun *pl, const char *node, struct hv_disk *disk,
                         struct hv_err *err)
{
    struct pt_lu *pu = calloc(1, sizeof(*pu));

    if (!pu) {
        pt_lun_close(pl);
        return hv_err_set(err, -ENOMEM, "out of memory");
    }
    lu_init(pu, rt, dc);
    pu->pl = pl;
    snprintf(pu->device, sizeof(pu->device), "%s", node);
    disk->lu = &pu->lu;
    disk->image = NULL;
    snprintf(disk->bd.name, sizeof(disk->bd.name), "%s", dc->path);
    return 0;
}

/* "/san/NAME/TARGET/LUN": the slot's path, readable in `vm show`. */
static int lun_path_parse(const char *path, char san[64], char target[SAN_NAME_MAX],
                          uint64_t *lun)
{
    const char *p = path;
    const char *slash;
    const char *last;
    size_t len;

    if (strncmp(p, "/san/", 5) != 0)
        return -EINVAL;
    p += 5;
    slash = strchr(p, '/');
    last = strrchr(p, '/');
    if (!slash || slash == last || (size_t)(slash - p) >= 64)
        return -EINVAL;
    memcpy(san, p, (size_t)(slash - p));
    san[slash - p] = 0;
    len = (size_t)(last - slash - 1);
    if (len == 0 || len >= SAN_NAME_MAX)
        return -EINVAL;
    memcpy(target, slash + 1, len);
    target[len] = 0;
    return hv_parse_u64(last + 1, lun);
}

/* The same I_T nexus (initiator name + ISID) after every restart of ours:
 * derived from the VM's UUID and the slot, not random. */
static void derive_isid(const struct hv_vm_config *vm, int controller, int slot,
                        uint32_t *random, uint16_t *qualifier)
{
    uint8_t seed[16 + 2];
    uint64_t h;
    memcpy(seed, vm->uuid, 16);
    seed[16] = (uint8_t)controller;
    seed[17] = (uint8_t)slot;
    h = hv_xxh3_64(seed, sizeof(seed));
    *random = (uint32_t)(h & 0xFFFFFF);
    *qualifier = (uint16_t)(h >> 24);
}

static void lun_state_changed(struct pt_lun *pl, enum pt_state state, const char *why,
                              void *arg)
{
    struct pt_lu *pu = arg;
    (void)pl;
    hv_debug("%s LUN %" PRIu64 " -> %s: %s", pu->target, pu->san_lun, pt_state_name(state),
             why);
}

int hv_passthru_disk_open(struct hv_runtime *rt, const struct hv_vm_config *vm, int controller,
                          int slot, const struct hv_disk_config *dc, struct hv_disk *disk,
                          struct hv_err *err)
{
    struct hv_passthru *p = rt->passthru;
    struct san_entry san;
    struct npiv_identity id;
    struct pt_lun_options opt;
    struct pt_lu *pu;
    int ret;

    if (!p)
        return hv_err_set(err, -EOPNOTSUPP, "pass-through LUNs are not enabled");
    pu = calloc(1, sizeof(*pu));
    if (!pu)
        return hv_err_set(err, -ENOMEM, "out of memory");
    if (lun_path_parse(dc->path, pu->san, pu->target, &pu->san_lun) < 0) {
        ret = hv_err_set(err, -EINVAL, "'%s' is not /san/NAME/TARGET/LUN", dc->path);
        goto fail;
    }
    if ((ret = san_load(p, pu->san, &san, err)) < 0 || (ret = hv_passthru_vm_identity(vm, &id, err)) < 0)
        goto fail;
    snprintf(pu->initiator, sizeof(pu->initiator), "%s", id.iqn);
    lu_init(pu, rt, dc);
    memset(&opt, 0, sizeof(opt));
    san_options(&san, pu->target, pu->initiator, &opt.san);
    derive_isid(vm, controller, slot, &opt.san.isid_random, &opt.san.isid_qualifier);
    opt.lun = pu->san_lun;
    opt.designator = pu->designator;
    opt.is_full_scsi = pu->is_full_scsi;
    opt.host_key = p->host_key;
    opt.on_state = lun_state_changed;
    opt.on_unit_attention = lun_unit_attention;
    opt.cb_arg = pu;
    ret = pt_lun_open(rt->reactor, &opt, &pu->pl, err);
    if (ret < 0)
        goto fail;
    disk->lu = &pu->lu;
    disk->image = NULL;
    snprintf(disk->bd.name, sizeof(disk->bd.name), "%s", dc->path);
    return 0;
fail:
    free(pu);
    return ret;
}

/* ------------------------------------------------------- local devices */


/*
 * A whole local block device for one VM. The host-wide claim is the kernel's
 * own: an O_EXCL open, which fails while the device is mounted, part of an
 * LVM/MD/dm stack, or claimed by another VM (of this or another hvstord),
 * and makes a later mount on the host fail in turn. A SCSI disk with a
 * designator does not come here: it is passed through with SG_IO
 * (passthru_sg.c); this is the raw bdev under the SBC emulation for the rest.
 */
int hv_passthru_open_device(struct hv_runtime *rt, const struct hv_disk_config *dc,
                            bool no_direct_io, struct bdev **out, int *lock_fd,
                            struct hv_err *err)
{
    struct pt_check_options copt = {.is_forced = true};   /* signatures: checked at attach */
    struct pt_local_facts facts;
    struct bdev_raw_options opt = {
        .is_read_only = dc->is_read_only,
        .use_direct_io = !no_direct_io,
    };
    int ret;

    if (*lock_fd < 0) {
        ret = pt_check_local_device(dc->path, &copt, &facts, err);
        if (ret < 0)
            return ret;
        ret = pt_claim_local_device(dc->path, dc->is_read_only, lock_fd, err);
        if (ret < 0)
            return ret;
    }
    return bdev_raw_open(rt->reactor, dc->path, &opt, out, err);
}

static int req_attach_dev(struct hv_daemon *d, const json_t *req, json_t **result,
                          struct hv_err *err)
{
    struct hv_runtime *rt = hv_daemon_runtime(d);
    struct hv_disk_config dc;
    struct pt_check_options copt = {0};
    struct pt_local_facts facts;
    struct hv_vm *vm;
    const char *vm_name;
    const char *path;
    char who[160];
    json_int_t controller = -1;
    json_int_t slot = -1;
    json_t *sg_info = NULL;
    int ret;

    if ((ret = hv_passthru_arg_str(req, "vm", true, &vm_name, err)) < 0 ||
        (ret = hv_passthru_arg_str(req, "path", true, &path, err)) < 0)
        return ret;
    if (json_unpack((json_t *)req, "{s:I, s:I}", "controller", &controller, "slot", &slot) ||
        controller < 0 || controller >= HV_MAX_CONTROLLERS || slot < 0 ||
        slot >= HV_SLOTS_PER_CONTROLLER)
        return hv_err_set(err, -EINVAL, "request needs 'controller' and 'slot'");
    vm = hv_daemon_find_vm(d, vm_name);
    if (!vm)
        return hv_err_set(err, -ENOENT, "no VM named '%s'", vm_name);
    if (path[0] != '/' || strlen(path) >= sizeof(dc.path))
        return hv_err_set(err, -EINVAL, "device path '%s' must be absolute", path);
    if (hv_vm_path_in_use(hv_daemon_vms(d), path, who, sizeof(who)))
        return hv_err_set(err, -EBUSY, "%s is held by %s", path, who);
    copt.is_forced = json_is_true(json_object_get(req, "force"));
    ret = pt_check_local_device(path, &copt, &facts, err);
    if (ret < 0)
        return ret;
    memset(&dc, 0, sizeof(dc));
    dc.kind = HV_DISK_DEV;
    snprintf(dc.path, sizeof(dc.path), "%s", path);
    dc.is_read_only = json_is_true(json_object_get(req, "read_only"));
    /* a SCSI disk: SG_IO pass-through when it can be (passthru_sg.c) */
    ret = hv_passthru_sg_prepare(d, path, &facts, json_is_true(json_object_get(req, "full_scsi")),
                                 &dc, &sg_info, err);
    if (ret < 0)
        return ret;
    ret = hv_vm_attach(rt, vm, (int)controller, (int)slot, &dc, err);
    if (ret < 0) {
        json_decref(sg_info);
        return ret;
    }
    ret = hv_registry_save(hv_daemon_registry(d), &vm->cfg, err);
    if (ret < 0) {
        struct hv_err ignored = {0};
        hv_vm_detach(rt, vm, (int)controller, (int)slot, &ignored);
        json_decref(sg_info);
        return ret;
    }
    hv_info("VM '%s': device %s (%s, %" PRIu64 " bytes%s) attached at controller %d LUN %d",
            vm_name, path, facts.sysfs_name, facts.size_bytes,
            facts.in_use[0] ? ", forced" : "", (int)controller, (int)slot);
    *result = hv_vm_show_json(vm, hv_daemon_portal(d));
    json_object_set_new(*result, "attached", json_pack(
        "{s:s, s:s, s:I, s:b, s:s}", "device", path, "sysfs_name", facts.sysfs_name,
        "size_bytes", (json_int_t)facts.size_bytes, "is_scsi", facts.is_scsi, "forced_over",
        facts.in_use));
    if (sg_info)
        json_object_update_new(json_object_get(*result, "attached"), sg_info);
    return 0;
}

/* ------------------------------------------------------------ requests */

int hv_passthru_arg_str(const json_t *req, const char *key, bool is_required,
                        const char **out, struct hv_err *err)
{
    const json_t *v = json_object_get(req, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return is_required ? hv_err_set(err, -EINVAL, "request needs '%s'", key) : 0;
    if (!json_is_string(v))
        return hv_err_set(err, -EINVAL, "request: '%s' must be a string", key);
    *out = json_string_value(v);
    return 0;
}

/* Which VM slot holds this LUN (by designator, or by address when a
 * designator is not known yet). A LUN reached both over iSCSI and over FC
 * carries one designator: either way it is one LUN. */
bool hv_passthru_lun_holder(struct hv_daemon *d, const char *designator, const char *path,
                            char *who, size_t len)
{
    for (struct hv_vm *vm = hv_daemon_vms(d); vm; vm = vm->next)
        for (int c = 0; c < HV_MAX_CONTROLLERS; c++)
            for (int s = 0; s < HV_SLOTS_PER_CONTROLLER; s++) {
                const struct hv_disk_config *dc = vm->cfg.disks[c][s];
                if (!dc || (dc->kind != HV_DISK_LUN && dc->kind != HV_DISK_FC))
                    continue;
                if ((designator && designator[0] && !strcmp(dc->designator, designator)) ||
                    (path && !strcmp(dc->path, path))) {
                    snprintf(who, len, "VM '%s' (controller %d slot %d)", vm->cfg.name, c, s);
                    return true;
                }
            }
    return false;
}

/* `san add`: the discovery that proves the portal is reached runs on a
 * worker; the SAN's file is written when it answered. */
struct san_add_job {
    struct san_entry san;
    json_int_t replacement_ms;
    struct san_target *targets;
    size_t count;
};

static void san_add_work(struct hv_pt_job *job)
{
    struct san_add_job *a = job->priv;
    struct san_chap sc = {0};

    if (a->san.chap_user[0]) {
        sc.user = a->san.chap_user;
        sc.secret = a->san.chap_secret;
    }
    job->status = san_discover_sync(a->san.portal, a->san.initiator,
                                    a->san.chap_user[0] ? &sc : NULL, &a->targets, &a->count,
                                    &job->err);
    if (job->status < 0)
        hv_err_prefix(&job->err, "SAN '%s' at %s", a->san.name, a->san.portal);
}

static int san_add_finish(struct hv_pt_job *job, json_t **result, struct hv_err *err)
{
    struct san_add_job *a = job->priv;
    struct hv_passthru *p = hv_daemon_runtime(job->d)->passthru;
    char path[8192];
    json_t *obj;
    json_t *list;
    int ret;

    if (job->status < 0) {
        *err = job->err;
        return job->status;
    }
    snprintf(path, sizeof(path), "%s/%s.json", p->sans_dir, a->san.name);
    if (access(path, F_OK) == 0)
        return hv_err_set(err, -EEXIST, "SAN '%s' exists already", a->san.name);
    obj = json_pack("{s:s, s:s, s:s}", "name", a->san.name, "portal", a->san.portal,
                    "initiator", a->san.initiator);
    if (a->replacement_ms)
        json_object_set_new(obj, "replacement_timeout_ms", json_integer(a->replacement_ms));
    if (a->san.chap_user[0]) {
        json_object_set_new(obj, "chap_user", json_string(a->san.chap_user));
        json_object_set_new(obj, "chap_secret", json_string(a->san.chap_secret));
    }
    ret = hv_json_write_file(path, obj, err);
    json_decref(obj);
    if (ret < 0)
        return ret;
    list = json_array();
    for (size_t i = 0; i < a->count; i++)
        json_array_append_new(list, json_string(a->targets[i].name));
    hv_info("SAN '%s' added: %s, %zu targets visible to %s", a->san.name, a->san.portal,
            a->count, a->san.initiator);
    *result = json_pack("{s:s, s:s, s:s, s:b, s:o}", "name", a->san.name, "portal",
                        a->san.portal, "initiator", a->san.initiator, "chap",
                        a->san.chap_user[0] != 0, "targets", list);
    return 0;
}

static void san_add_cleanup(struct hv_pt_job *job)
{
    struct san_add_job *a = job->priv;
    if (a)
        free(a->targets);
    free(a);
}

static int req_san_add(struct hv_daemon *d, const json_t *req, json_t **result,
                       struct hv_err *err)
{
    struct hv_passthru *p = hv_daemon_runtime(d)->passthru;
    const char *name;
    const char *portal;
    const char *chap;
    const char *initiator;
    json_int_t replacement_ms = 0;
    char path[8192];
    char host_name[SAN_NAME_MAX] = "";
    struct hv_chap pair = {{0}, {0}};
    struct san_add_job *a;
    struct hv_pt_job *job;
    int ret;

    if ((ret = hv_passthru_arg_str(req, "name", true, &name, err)) < 0 ||
        (ret = hv_passthru_arg_str(req, "portal", true, &portal, err)) < 0 ||
        (ret = hv_passthru_arg_str(req, "chap", false, &chap, err)) < 0 ||
        (ret = hv_passthru_arg_str(req, "initiator", false, &initiator, err)) < 0 ||
        (ret = san_name_check(name, err)) < 0)
        return ret;
    if (json_unpack((json_t *)req, "{s?I}", "replacement_timeout_ms", &replacement_ms) != 0 ||
        replacement_ms < 0 || replacement_ms > 3600000)
        return hv_err_set(err, -EINVAL, "--replacement-timeout: 0 to 3600000 ms");
    if (strlen(portal) >= SAN_PORTAL_MAX || !strchr(portal, ':'))
        return hv_err_set(err, -EINVAL, "portal '%s' is not ADDR:PORT", portal);
    if (chap && (ret = hv_chap_parse(chap, &pair, err)) < 0)
        return ret;
    snprintf(path, sizeof(path), "%s/%s.json", p->sans_dir, name);
    if (access(path, F_OK) == 0)
        return hv_err_set(err, -EEXIST, "SAN '%s' exists already", name);
    if (!initiator) {
        /* The name the host's own open-iscsi uses, for listing LUNs. */
        struct san_host_config *host = NULL;
        if (san_host_config_read("/", &host, NULL) == 0 && host->initiator_name[0])
            snprintf(host_name, sizeof(host_name), "%s", host->initiator_name);
        san_host_config_free(host);
        if (!host_name[0])
            snprintf(host_name, sizeof(host_name), "%s:san-admin", HV_TARGET_PREFIX);
        initiator = host_name;
    } else {
        char checked[SAN_NAME_MAX];
        snprintf(checked, sizeof(checked), "%s", initiator);
        if ((ret = hv_iscsi_name_check(checked, err)) < 0)
            return ret;
    }
    a = calloc(1, sizeof(*a));
    job = calloc(1, sizeof(*job));
    if (!a || !job) {
        free(a);
        free(job);
        return hv_err_set(err, -ENOMEM, "out of memory");
    }
    snprintf(a->san.name, sizeof(a->san.name), "%s", name);
    snprintf(a->san.portal, sizeof(a->san.portal), "%s", portal);
    snprintf(a->san.initiator, sizeof(a->san.initiator), "%s", initiator);
    snprintf(a->san.chap_user, sizeof(a->san.chap_user), "%s", pair.user);
    snprintf(a->san.chap_secret, sizeof(a->san.chap_secret), "%s", pair.secret);
    a->replacement_ms = replacement_ms;
    /* Reach it now (on a worker): a typo in the portal is better found here
     * than at the first attach. Zero targets is fine (the ACLs may hide
     * them all). Two adds of one name at once: the second is refused. */
    job->controller = job->slot = -1;
    snprintf(job->key, sizeof(job->key), "san add %s", name);
    snprintf(job->what, sizeof(job->what), "san add %s", name);
    job->work = san_add_work;
    job->finish = san_add_finish;
    job->cleanup = san_add_cleanup;
    job->priv = a;
    return hv_pt_job_start(d, job, result, err);
}

static int req_san_list(struct hv_daemon *d, const json_t *req, json_t **result,
                        struct hv_err *err)
{
    struct hv_passthru *p = hv_daemon_runtime(d)->passthru;
    json_t *list = json_array();
    char cmd[8192];
    (void)req;
    (void)err;
    /* the directory is ours and small: list it through the loader */
    snprintf(cmd, sizeof(cmd), "%s", p->sans_dir);
    {
        DIR *dir = opendir(cmd);
        struct dirent *e;
        while (dir && (e = readdir(dir))) {
            size_t len = strlen(e->d_name);
            struct san_entry san;
            char name[64];
            if (len < 6 || len > 63 + 5 || strcmp(e->d_name + len - 5, ".json"))
                continue;
            memcpy(name, e->d_name, len - 5);
            name[len - 5] = 0;
            if (san_load(p, name, &san, NULL) == 0)
                json_array_append_new(list, json_pack("{s:s, s:s, s:s, s:b}", "name", san.name,
                                                      "portal", san.portal, "initiator",
                                                      san.initiator, "chap",
                                                      san.chap_user[0] != 0));
        }
        if (dir)
            closedir(dir);
    }
    *result = list;
    return 0;
}

/* `san luns`: discovery and one login per target on a worker; who holds
 * each LUN is looked up on the reactor when they are done. */
struct target_luns {
    struct san_lun_info *luns;
    size_t n;
    int status;
    char error[512];
};

struct san_luns_job {
    struct san_entry san;
    char initiator[SAN_NAME_MAX];
    struct san_target *targets;
    size_t count;
    struct target_luns *per;
    struct san_host_config *host;
};

static void san_luns_work(struct hv_pt_job *job)
{
    struct san_luns_job *l = job->priv;
    struct san_chap sc = {0};

    if (l->san.chap_user[0]) {
        sc.user = l->san.chap_user;
        sc.secret = l->san.chap_secret;
    }
    job->status = san_discover_sync(l->san.portal, l->initiator,
                                    l->san.chap_user[0] ? &sc : NULL, &l->targets, &l->count,
                                    &job->err);
    if (job->status < 0) {
        hv_err_prefix(&job->err, "SAN '%s'", l->san.name);
        return;
    }
    if (san_host_config_read("/", &l->host, NULL) < 0)
        l->host = NULL;
    l->per = calloc(l->count ? l->count : 1, sizeof(*l->per));
    if (!l->per) {
        job->status = hv_err_set(&job->err, -ENOMEM, "out of memory");
        return;
    }
    for (size_t t = 0; t < l->count; t++) {
        struct san_session_options o;
        struct hv_err lerr = {0};
        san_options(&l->san, l->targets[t].name, l->initiator, &o);
        o.login_timeout_ms = 5000;
        l->per[t].status = san_list_luns_sync(&o, &l->per[t].luns, &l->per[t].n, &lerr);
        if (l->per[t].status < 0)
            snprintf(l->per[t].error, sizeof(l->per[t].error), "%s",
                     hv_err_msg(&lerr, l->per[t].status));
    }
}

static int san_luns_finish(struct hv_pt_job *job, json_t **result, struct hv_err *err)
{
    struct san_luns_job *l = job->priv;
    json_t *list;

    if (job->status < 0) {
        *err = job->err;
        return job->status;
    }
    list = json_array();
    for (size_t t = 0; t < l->count; t++) {
        const char *target = l->targets[t].name;
        if (l->per[t].status < 0) {
            json_array_append_new(list, json_pack("{s:s, s:s}", "target", target, "error",
                                                  l->per[t].error));
            continue;
        }
        for (size_t i = 0; i < l->per[t].n; i++) {
            const struct san_lun_info *li = &l->per[t].luns[i];
            char who[160] = "";
            char path[SAN_NAME_MAX + 128];
            const struct san_host_session *hs = NULL;
            bool is_host = l->host && san_host_uses_lun(l->host, target, li->lun,
                                                        li->designator, &hs);
            snprintf(path, sizeof(path), "/san/%s/%s/%" PRIu64, l->san.name, target, li->lun);
            hv_passthru_lun_holder(job->d, li->designator, path, who, sizeof(who));
            json_array_append_new(list, json_pack(
                "{s:s, s:I, s:I, s:i, s:s, s:s, s:s, s:i, s:b, s:s?}", "target", target, "lun",
                (json_int_t)li->lun, "size_bytes", (json_int_t)li->size_bytes, "block_bytes",
                (int)li->block_bytes, "designator", li->designator, "vendor",
                li->inquiry.vendor, "product", li->inquiry.product, "device_type",
                li->inquiry.device_type, "used_by_host", is_host, "held_by",
                who[0] ? who : NULL));
        }
    }
    *result = json_pack("{s:s, s:s, s:s, s:o}", "san", l->san.name, "portal", l->san.portal,
                        "initiator", l->initiator, "luns", list);
    return 0;
}

static void san_luns_cleanup(struct hv_pt_job *job)
{
    struct san_luns_job *l = job->priv;
    if (!l)
        return;
    for (size_t t = 0; l->per && t < l->count; t++)
        free(l->per[t].luns);
    free(l->per);
    free(l->targets);
    san_host_config_free(l->host);
    free(l);
}

static int req_san_luns(struct hv_daemon *d, const json_t *req, json_t **result,
                        struct hv_err *err)
{
    struct hv_passthru *p = hv_daemon_runtime(d)->passthru;
    struct san_luns_job *l;
    struct hv_pt_job *job;
    const char *name;
    const char *vm_name;
    struct npiv_identity id;
    int ret;

    if ((ret = hv_passthru_arg_str(req, "name", true, &name, err)) < 0 ||
        (ret = hv_passthru_arg_str(req, "vm", false, &vm_name, err)) < 0)
        return ret;
    l = calloc(1, sizeof(*l));
    job = calloc(1, sizeof(*job));
    if (!l || !job) {
        free(l);
        free(job);
        return hv_err_set(err, -ENOMEM, "out of memory");
    }
    if ((ret = san_load(p, name, &l->san, err)) < 0)
        goto fail;
    snprintf(l->initiator, sizeof(l->initiator), "%s", l->san.initiator);
    if (vm_name) {
        struct hv_vm *vm = hv_daemon_find_vm(d, vm_name);
        if (!vm) {
            ret = hv_err_set(err, -ENOENT, "no VM named '%s'", vm_name);
            goto fail;
        }
        if ((ret = hv_passthru_vm_identity(&vm->cfg, &id, err)) < 0)
            goto fail;
        snprintf(l->initiator, sizeof(l->initiator), "%s", id.iqn);
    }
    job->controller = job->slot = -1;
    snprintf(job->what, sizeof(job->what), "san luns %s", name);
    job->work = san_luns_work;
    job->finish = san_luns_finish;
    job->cleanup = san_luns_cleanup;
    job->priv = l;
    return hv_pt_job_start(d, job, result, err);
fail:
    free(l);
    free(job);
    return ret;
}

static int parse_lun_ref(const char *text, char san[64], char target[SAN_NAME_MAX],
                         uint64_t *lun, struct hv_err *err)
{
    const char *first = strchr(text, ':');
    const char *last = strrchr(text, ':');
    size_t len;

    if (!first || first == last || (size_t)(first - text) >= 64)
        return hv_err_set(err, -EINVAL, "--lun '%s' is not SAN:TARGET:LUN", text);
    memcpy(san, text, (size_t)(first - text));
    san[first - text] = 0;
    len = (size_t)(last - first - 1);
    if (len == 0 || len >= SAN_NAME_MAX)
        return hv_err_set(err, -EINVAL, "--lun '%s': no target name", text);
    memcpy(target, first + 1, len);
    target[len] = 0;
    if (hv_parse_u64(last + 1, lun) < 0 || *lun >= 16384)
        return hv_err_set(err, -EINVAL, "--lun '%s': '%s' is not a LUN number", text, last + 1);
    return 0;
}

/* What the SAN attach's worker needs, copied: it may touch nothing else. */
struct san_job {
    struct san_entry san;
    char san_name[64];
    char target[SAN_NAME_MAX];
    uint64_t lun;
    struct npiv_identity id;
    struct hv_disk_config dc;
    bool is_forced;
    struct pt_lun_facts facts;
};

static void san_job_work(struct hv_pt_job *job)
{
    struct san_job *sj = job->priv;
    struct san_session_options o;
    struct pt_check_options copt = {.is_forced = true};    /* refusal decided in finish */

    san_options(&sj->san, sj->target, sj->id.iqn, &o);
    job->status = pt_check_san_lun(&o, sj->lun, &copt, &sj->facts, &job->err);
    if (job->status < 0)
        hv_err_prefix(&job->err, "VM '%s'", job->vm);
}

static int san_job_finish(struct hv_pt_job *job, json_t **result, struct hv_err *err)
{
    struct san_job *sj = job->priv;
    struct hv_daemon *d = job->d;
    struct hv_runtime *rt = hv_daemon_runtime(d);
    struct hv_passthru *p = rt->passthru;
    struct pt_lun_facts *facts = &sj->facts;
    struct hv_disk_config *dc = &sj->dc;
    struct hv_vm *vm;
    char who[160];
    json_t *warnings;
    int ret;

    if (job->status < 0) {
        *err = job->err;
        return job->status;
    }
    vm = hv_daemon_find_vm(d, job->vm);
    if (!vm)
        return hv_err_set(err, -ENOENT, "VM '%s' was deleted while its LUN was checked",
                          job->vm);
    /* Masking first (the VM's own name must reach the LUN), then who holds
     * it here, then the host's own use: the refusal names the first problem
     * in the order an administrator fixes them. */
    if (hv_passthru_lun_holder(d, facts->info.designator, dc->path, who, sizeof(who)))
        return hv_err_set(err, -EBUSY, "%s LUN %" PRIu64 " (%s) is held by %s", sj->target,
                          sj->lun, facts->info.designator, who);
    if (!sj->is_forced && (ret = pt_facts_refusal(facts, sj->target, err)) < 0)
        return ret;
    snprintf(dc->designator, sizeof(dc->designator), "%s", facts->info.designator);

    ret = hv_vm_attach(rt, vm, job->controller, job->slot, dc, err);
    if (ret < 0)
        return ret;
    ret = hv_registry_save(hv_daemon_registry(d), &vm->cfg, err);
    if (ret < 0) {
        struct hv_err ignored = {0};
        hv_vm_detach(rt, vm, job->controller, job->slot, &ignored);
        return ret;
    }
    warnings = json_array();
    if (facts->signature[0])
        json_array_append_new(warnings, json_sprintf("forced: libblkid found %s",
                                                     facts->signature));
    if (facts->is_used_by_host)
        json_array_append_new(warnings, json_sprintf("forced: the host's %s uses it",
                                                     facts->host_session));
    if (facts->has_pr && facts->pr.is_reserved && facts->pr.holder_key != p->host_key)
        json_array_append_new(warnings, json_sprintf(
            "reserved by another host (key 0x%016" PRIx64 "): the guest's writes get "
            "RESERVATION CONFLICT until `hvctl disk takeover` (only if that host is dead)",
            facts->pr.holder_key));
    hv_info("VM '%s': %s LUN %" PRIu64 " (%s, %s %s, %" PRIu64 " bytes) attached at "
            "controller %d LUN %d as %s%s", job->vm, sj->target, sj->lun,
            facts->info.designator, facts->info.inquiry.vendor, facts->info.inquiry.product,
            facts->info.size_bytes, job->controller, job->slot, sj->id.iqn,
            dc->is_full_scsi ? " (full SCSI)" : "");
    *result = hv_vm_show_json(vm, hv_daemon_portal(d));
    json_object_set_new(*result, "attached", json_pack(
        "{s:s, s:s, s:I, s:s, s:I, s:s, s:s, s:o}", "san", sj->san_name, "target", sj->target,
        "lun", (json_int_t)sj->lun, "designator", facts->info.designator, "size_bytes",
        (json_int_t)facts->info.size_bytes, "vendor", facts->info.inquiry.vendor, "product",
        facts->info.inquiry.product, "warnings", warnings));
    return 0;
}

static void san_job_cleanup(struct hv_pt_job *job)
{
    free(job->priv);
}

static int req_attach_lun(struct hv_daemon *d, const json_t *req, json_t **result,
                          struct hv_err *err)
{
    struct hv_passthru *p = hv_daemon_runtime(d)->passthru;
    struct hv_pt_job *job;
    struct san_job *sj;
    struct hv_vm *vm;
    const char *ref;
    int ret;

    if ((ret = hv_pt_attach_job_new(d, req, "lun", sizeof(*sj), &vm, &ref, &job, err)) < 0)
        return ret;
    sj = job->priv;
    if ((ret = parse_lun_ref(ref, sj->san_name, sj->target, &sj->lun, err)) < 0 ||
        (ret = san_load(p, sj->san_name, &sj->san, err)) < 0 ||
        (ret = hv_passthru_vm_identity(&vm->cfg, &sj->id, err)) < 0)
        goto fail;
    sj->dc.kind = HV_DISK_LUN;
    snprintf(sj->dc.path, sizeof(sj->dc.path), "/san/%s/%s/%" PRIu64, sj->san_name, sj->target,
             sj->lun);
    sj->dc.is_full_scsi = json_is_true(json_object_get(req, "full_scsi"));
    sj->is_forced = json_is_true(json_object_get(req, "force"));
    snprintf(job->key, sizeof(job->key), "%s", sj->dc.path);
    job->work = san_job_work;
    job->finish = san_job_finish;
    job->cleanup = san_job_cleanup;
    return hv_pt_job_start(d, job, result, err);
fail:
    free(sj);
    free(job);
    return ret;
}

/*
 * Takeover is asynchronous (PR IN, REGISTER, PREEMPT AND ABORT through the
 * LUN's own session, on the daemon's reactor) while a control request must
 * answer at once: "disk.takeover" starts it, "disk.takeover_status" tells
 * how it went; hvctl polls the second.
 */
static void takeover_done(void *arg, int status, const char *msg)
{
    struct pt_lu *pu = arg;
    pu->takeover_status = status;
    snprintf(pu->takeover_msg, sizeof(pu->takeover_msg), "%s", msg ? msg : "");
    pu->is_taking_over = false;
}

static int get_pt_lu(struct hv_daemon *d, const json_t *req, struct hv_vm **vm_out,
                     struct pt_lu **out, struct hv_err *err)
{
    struct hv_vm *vm;
    struct hv_disk *disk;
    const char *vm_name;
    json_int_t controller = -1;
    json_int_t slot = -1;
    int ret;

    if ((ret = hv_passthru_arg_str(req, "vm", true, &vm_name, err)) < 0)
        return ret;
    if (json_unpack((json_t *)req, "{s:I, s:I}", "controller", &controller, "slot", &slot) ||
        controller < 0 || controller >= HV_MAX_CONTROLLERS || slot < 0 ||
        slot >= HV_SLOTS_PER_CONTROLLER)
        return hv_err_set(err, -EINVAL, "request needs 'controller' and 'slot'");
    vm = hv_daemon_find_vm(d, vm_name);
    if (!vm)
        return hv_err_set(err, -ENOENT, "no VM named '%s'", vm_name);
    disk = vm->disks[controller][slot];
    if (!disk || disk->cfg.kind != HV_DISK_LUN || !hv_lu_is_passthru(disk->lu))
        return hv_err_set(err, -EINVAL, "VM '%s' controller %d slot %d is not a pass-through "
                          "LUN", vm_name, (int)controller, (int)slot);
    *vm_out = vm;
    *out = hv_container_of(disk->lu, struct pt_lu, lu);
    return 0;
}

static int req_takeover(struct hv_daemon *d, const json_t *req, json_t **result,
                        struct hv_err *err)
{
    struct hv_vm *vm;
    struct pt_lu *pu;
    int ret = get_pt_lu(d, req, &vm, &pu, err);

    if (ret < 0)
        return ret;
    if (pu->is_taking_over)
        return hv_err_set(err, -EINPROGRESS, "%s LUN %" PRIu64 ": a takeover is running",
                          pu->target, pu->san_lun);
    pu->is_taking_over = true;
    pu->takeover_status = 0;
    snprintf(pu->takeover_msg, sizeof(pu->takeover_msg), "running");
    ret = pt_lun_takeover(pu->pl, 0, takeover_done, pu);
    if (ret < 0) {
        pu->is_taking_over = false;
        return hv_err_set(err, ret, "%s LUN %" PRIu64 ": cannot take over now (%s: %s)",
                          pu->target, pu->san_lun, pt_state_name(pt_lun_state(pu->pl)),
                          pt_lun_why(pu->pl));
    }
    hv_warn("VM '%s': takeover of %s LUN %" PRIu64 " requested", vm->cfg.name, pu->target,
            pu->san_lun);
    *result = json_pack("{s:b}", "running", 1);
    return 0;
}

static int req_takeover_status(struct hv_daemon *d, const json_t *req, json_t **result,
                               struct hv_err *err)
{
    struct hv_vm *vm;
    struct pt_lu *pu;
    int ret = get_pt_lu(d, req, &vm, &pu, err);

    if (ret < 0)
        return ret;
    if (pu->is_taking_over) {
        *result = json_pack("{s:b}", "running", 1);
        return 0;
    }
    if (pu->takeover_status < 0)
        return hv_err_set(err, pu->takeover_status, "%s", pu->takeover_msg);
    *result = hv_vm_show_json(vm, hv_daemon_portal(d));
    json_object_set_new(*result, "running", json_false());
    json_object_set_new(*result, "takeover", json_string(pu->takeover_msg));
    return 0;
}

static int req_zoning(struct hv_daemon *d, const json_t *req, json_t **result,
                      struct hv_err *err)
{
    struct npiv_zoning_options zo = {0};
    struct npiv_identity id;
    struct hv_vm *vm;
    const char *vm_name;
    const char *target;
    const char *fc_target;
    json_int_t tid = 0;
    int ret;

    if ((ret = hv_passthru_arg_str(req, "vm", true, &vm_name, err)) < 0 ||
        (ret = hv_passthru_arg_str(req, "target", false, &target, err)) < 0 ||
        (ret = hv_passthru_arg_str(req, "fc_target", false, &fc_target, err)) < 0)
        return ret;
    json_unpack((json_t *)req, "{s?I}", "tid", &tid);
    vm = hv_daemon_find_vm(d, vm_name);
    if (!vm)
        return hv_err_set(err, -ENOENT, "no VM named '%s'", vm_name);
    if ((ret = hv_passthru_vm_identity(&vm->cfg, &id, err)) < 0)
        return ret;
    zo.iscsi_target = target;
    zo.tgt_tid = tid > 0 ? (unsigned)tid : 0;
    if (fc_target && npiv_wwn_parse(fc_target, &zo.fc_target_wwpn) < 0)
        return hv_err_set(err, -EINVAL, "--fc-target '%s' is not a WWPN", fc_target);
    *result = npiv_zoning_json(&id, &zo);
    if (!*result)
        return hv_err_set(err, -ENOMEM, "out of memory");
    {
        char *text = npiv_zoning_text(&id, &zo);
        if (text) {
            json_object_set_new(*result, "text", json_string(text));
            free(text);
        }
    }
    return 0;
}

int hv_passthru_request(struct hv_daemon *d, const char *op, const json_t *req,
                        json_t **result, struct hv_err *err)
{
    static const struct {
        const char *op;
        int (*fn)(struct hv_daemon *d, const json_t *req, json_t **result,
                  struct hv_err *err);
    } ops[] = {
        {"san.add", req_san_add},
        {"san.list", req_san_list},
        {"san.luns", req_san_luns},
        {"disk.attach_lun", req_attach_lun},
        {"disk.attach_dev", req_attach_dev},
        {"disk.attach_fc", hv_passthru_req_attach_fc},
        {"disk.attach_status", hv_pt_job_status},
        {"job.status", hv_pt_job_status},
        {"disk.takeover", req_takeover},
        {"disk.takeover_status", req_takeover_status},
        {"vm.zoning", req_zoning},
    };

    for (size_t i = 0; i < HV_ARRAY_SIZE(ops); i++) {
        if (strcmp(ops[i].op, op) != 0)
            continue;
        if (!hv_daemon_runtime(d)->passthru)
            return hv_err_set(err, -EOPNOTSUPP, "pass-through LUNs are not enabled");
        return ops[i].fn(d, req, result, err);
    }
    return -ENOSYS;
}

/* ------------------------------------------------------------ backups */

static void snap_unit_attention(void *arg, const uint8_t *sense, size_t len)
{
    struct pt_lu *pu = arg;
    ua_to_other_nexuses(pu, NULL, sense, len);
}

void hv_passthru_backup_enable(struct scsi_lu *lu, struct snap_gate *gate, const char *cbt_state,
                               uint32_t chunk_bytes, unsigned spare_chunks)
{
    struct pt_lu *pu = hv_container_of(lu, struct pt_lu, lu);
    struct hv_err err = {0};
    char name[SAN_NAME_MAX + 96];

    if (!hv_lu_is_passthru(lu) || pu->snap)
        return;
    if (pu->device[0])
        snprintf(name, sizeof(name), "%.*s", (int)sizeof(name) - 1, pu->device);
    else
        snprintf(name, sizeof(name), "%s LUN %" PRIu64, pu->target, pu->san_lun);
    if (pu->is_full_scsi) {
        snprintf(pu->no_snap_why, sizeof(pu->no_snap_why),
                 "%s is passed through with --full-scsi: commands whose effect on its blocks "
                 "hvstord cannot know (FORMAT UNIT, WRITE BUFFER, EXTENDED COPY, "
                 "vendor-specific...) may reach it, so a copy-before-write backup could be "
                 "silently wrong; let the array back it up, or attach it without --full-scsi",
                 name);
        return;
    }
    struct hv_pt_snap_options opt = {
        .pl = pu->pl,
        .reactor = pu->lu.reactor,
        .name = name,
        .gate = gate,
        .cbt_state_path = cbt_state,
        .chunk_bytes = chunk_bytes,
        .spare_chunks = spare_chunks,
        .max_commands = PT_POOL,
        .on_unit_attention = snap_unit_attention,
        .cb_arg = pu,
    };
    int ret = hv_pt_snap_create(&opt, &pu->snap, &err);
    if (ret < 0) {
        snprintf(pu->no_snap_why, sizeof(pu->no_snap_why), "%s", hv_err_msg(&err, ret));
        hv_warn("%s: no backups: %s", name, pu->no_snap_why);
    }
}

int hv_passthru_backup_view(struct scsi_lu *lu, struct bdev **top, struct snap_cbt **cbt,
                            struct snap_cbw **cbw, struct hv_err *err)
{
    struct pt_lu *pu = hv_container_of(lu, struct pt_lu, lu);

    if (!hv_lu_is_passthru(lu))
        return hv_err_set(err, -EINVAL, "not a pass-through LUN");
    if (pu->snap)
        return hv_pt_snap_view(pu->snap, top, cbt, cbw, err);
    return hv_err_set(err, -EOPNOTSUPP, "%s",
                      pu->no_snap_why[0] ? pu->no_snap_why : "no backup view");
}
