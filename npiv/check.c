/*
 * Zoning and masking, asked of the fabric and the array rather than kept in a
 * table of ours that could drift from them: the VM's own vport logs in, and
 * what the kernel then discovers through it is what the VM would see.
 */
#include "npiv_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

enum reach { REACH_NONE, REACH_PORT, REACH_LUN };

struct look {
    enum reach reach;
    int target_id;
    char seen[384];                     /* what was visible instead, for the message */
};

static int look_once(const char *root, unsigned host_no, uint64_t target_wwpn, uint64_t lun,
                     struct look *lk, struct hv_err *err)
{
    struct npiv_rport *rports;
    uint64_t *luns = NULL;
    size_t n_rports, n_luns = 0, used = 0;
    int ret;

    lk->reach = REACH_NONE;
    lk->seen[0] = '\0';
    ret = npiv_rport_list(root, host_no, &rports, &n_rports, err);
    if (ret < 0)
        return ret;
    const struct npiv_rport *hit = NULL;
    for (size_t i = 0; i < n_rports; i++) {
        if (rports[i].wwpn == target_wwpn && rports[i].is_target &&
            strcmp(rports[i].port_state, "Online") == 0)
            hit = &rports[i];
        else if (rports[i].is_target && used < sizeof(lk->seen)) {
            char w[NPIV_WWN_COLON_LEN + 1];
            npiv_wwn_colon(rports[i].wwpn, w);
            used += (size_t)snprintf(lk->seen + used, sizeof(lk->seen) - used, "%s%s%s%s",
                                     used ? ", " : "", w,
                                     strcmp(rports[i].port_state, "Online") ? " " : "",
                                     strcmp(rports[i].port_state, "Online")
                                         ? rports[i].port_state : "");
        }
    }
    if (!hit) {
        free(rports);
        return 0;
    }
    lk->reach = REACH_PORT;
    lk->target_id = hit->scsi_target_id;
    used = 0;
    if (hit->scsi_target_id >= 0) {
        ret = npiv_lun_list(root, host_no, (unsigned)hit->scsi_target_id, &luns, &n_luns, err);
        if (ret < 0) {
            free(rports);
            return ret;
        }
    }
    for (size_t i = 0; i < n_luns; i++) {
        if (luns[i] == lun)
            lk->reach = REACH_LUN;
        if (used < sizeof(lk->seen))
            used += (size_t)snprintf(lk->seen + used, sizeof(lk->seen) - used, "%s%" PRIu64,
                                     used ? ", " : "", luns[i]);
    }
    free(luns);
    free(rports);
    return 0;
}

int npiv_vport_find_lun(const struct npiv_vport *v, uint64_t target_wwpn, uint64_t lun,
                        const struct npiv_wait_options *opt, const char *who,
                        struct npiv_lun_addr *out, struct hv_err *err)
{
    char wwpn[NPIV_WWN_COLON_LEN + 1], target[NPIV_WWN_COLON_LEN + 1];
    unsigned settle = opt && opt->settle_ms ? opt->settle_ms : 5000;
    unsigned poll = opt && opt->poll_ms ? opt->poll_ms : 100;
    struct look lk = { 0 };
    int ret;

    if (!v->has_host)
        return hv_err_set(err, -ENODEV, "vport has no SCSI host (not Online)");
    npiv_wwn_colon(v->names.wwpn, wwpn);
    npiv_wwn_colon(target_wwpn, target);
    /*
     * Online is the fabric login; the kernel then logs in to each target it
     * may see and scans its LUNs, asynchronously. Give that `settle` ms; a
     * positive answer ends the wait at once, only a refusal waits it out.
     */
    uint64_t deadline = hv_now_ns() + (uint64_t)settle * 1000000ull;
    for (;;) {
        ret = look_once(v->sysfs_root, v->host_no, target_wwpn, lun, &lk, err);
        if (ret < 0 || lk.reach == REACH_LUN || hv_now_ns() >= deadline)
            break;
        npiv_sleep_ms(poll);
    }
    if (ret < 0)
        return ret;
    if (lk.reach == REACH_NONE)
        return hv_err_set(err, -EHOSTUNREACH, "not zoned: target port %s is not visible to "
                          "vport %s (%s, via %s; target ports it sees: %s)", target, wwpn, who,
                          v->parent, lk.seen[0] ? lk.seen : "none");
    if (lk.reach == REACH_PORT)
        return hv_err_set(err, -ENOENT, "not masked: LUN %" PRIu64 " of target %s is not "
                          "reported to vport %s (%s; LUNs it reports: %s)", lun, target, wwpn,
                          who, lk.seen[0] ? lk.seen : "none");
    if (out) {
        out->host_no = v->host_no;
        out->channel = 0;
        out->target_id = (unsigned)lk.target_id;
        out->lun = lun;
    }
    return 0;
}

int npiv_check_access_set(const char *root, const struct npiv_identity *id, enum npiv_set set,
                          uint64_t target_wwpn, uint64_t lun,
                          const struct npiv_wait_options *opt, struct hv_err *err)
{
    const char set_name = set == NPIV_SET_A ? 'A' : 'B';
    char who[NPIV_VM_NAME_MAX + 32];
    struct npiv_vport v;
    int ret;

    snprintf(who, sizeof(who), "VM '%s', address set %c", id->vm_name, set_name);
    ret = npiv_vport_bring_up(root, &id->fc[set], opt, &v, err);
    if (ret < 0) {
        hv_err_prefix(err, "VM '%s' address set %c", id->vm_name, set_name);
        return ret;
    }
    ret = npiv_vport_find_lun(&v, target_wwpn, lun, opt, who, NULL, err);

    struct hv_err del_err;
    hv_err_clear(&del_err);
    int dret = npiv_vport_delete(&v, &del_err);
    if (dret < 0 && ret == 0) {
        if (err)
            *err = del_err;
        ret = dret;
    } else if (dret < 0) {
        hv_warn("%s", hv_err_msg(&del_err, dret));
    }
    return ret;
}

int npiv_check_access(const char *root, const struct npiv_identity *id, uint64_t target_wwpn,
                      uint64_t lun, bool only_set_a, const struct npiv_wait_options *opt,
                      struct hv_err *err)
{
    int ret = npiv_check_access_set(root, id, NPIV_SET_A, target_wwpn, lun, opt, err);
    if (ret < 0 || only_set_a)
        return ret;
    return npiv_check_access_set(root, id, NPIV_SET_B, target_wwpn, lun, opt, err);
}
