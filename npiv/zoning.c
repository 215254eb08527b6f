/*
 * What a SAN administrator runs to let a VM in (`hvctl vm zoning VM`).
 *
 * Zoning is single-initiator: one zone per address set, holding that set's
 * WWPN and the array port. Both sets are zoned and masked, because a live
 * migration logs set B in on the destination while set A is still in use.
 * The JSON is built first and the text is rendered from it, so the two forms
 * cannot disagree. Unknown values (no target given) are printed as
 * upper-case placeholders the administrator replaces.
 */
#include "npiv_internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>

HV_PRINTF(2, 3) static void add_line(json_t *arr, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    json_array_append_new(arr, json_string(buf));
}

/* Brocade and Cisco names: a letter first, then letters, digits, '_'. */
static void zone_base_name(const char *vm, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "hv_");
    for (const char *p = vm; *p && n + 1 < cap && n < 56; p++)
        out[n++] = isalnum((unsigned char)*p) ? *p : '_';
    out[n] = '\0';
}

json_t *npiv_zoning_json(const struct npiv_identity *id, const struct npiv_zoning_options *opt)
{
    struct npiv_zoning_options o = { 0 };
    char base[64], target[NPIV_WWN_COLON_LEN + 1], wwpn[2][NPIV_WWN_COLON_LEN + 1];
    char zone[2][80], alias[2][80], tid[16];
    static const char set_letter[2] = { 'A', 'B' };

    if (opt)
        o = *opt;
    unsigned vsan = o.vsan ? o.vsan : 1;
    const char *zoneset = o.zoneset ? o.zoneset : "ZONESET_NAME";
    const char *iscsi_target = o.iscsi_target ? o.iscsi_target : "TARGET_IQN";
    if (o.fc_target_wwpn)
        npiv_wwn_colon(o.fc_target_wwpn, target);
    else
        snprintf(target, sizeof(target), "TARGET_WWPN");
    if (o.tgt_tid)
        snprintf(tid, sizeof(tid), "%u", o.tgt_tid);
    else
        snprintf(tid, sizeof(tid), "TID");

    zone_base_name(id->vm_name, base, sizeof(base));
    for (int s = 0; s < 2; s++) {
        npiv_wwn_colon(id->fc[s].wwpn, wwpn[s]);
        snprintf(alias[s], sizeof(alias[s]), "%s_%c", base, set_letter[s]);
        snprintf(zone[s], sizeof(zone[s]), "z_%s_%c", base, set_letter[s]);
    }

    json_t *root = npiv_identity_to_json(id);
    json_t *zones = json_array(), *cmds = json_object();
    json_t *brocade = json_array(), *cisco = json_array(), *tgtadm = json_array();
    json_t *targetcli = json_array();
    if (!root || !zones || !cmds || !brocade || !cisco || !tgtadm || !targetcli) {
        json_decref(root);
        json_decref(zones);
        json_decref(cmds);
        json_decref(brocade);
        json_decref(cisco);
        json_decref(tgtadm);
        json_decref(targetcli);
        return NULL;
    }
    json_object_del(root, "serial");
    if (o.fc_target_wwpn)
        json_object_set_new(root, "fc_target", json_string(target));
    else
        json_object_set_new(root, "fc_target", json_null());

    for (int s = 0; s < 2; s++) {
        json_t *z = json_object(), *members = json_array();
        json_object_set_new(z, "name", json_string(zone[s]));
        json_object_set_new(z, "set", json_sprintf("%c", set_letter[s] + 'a' - 'A'));
        json_array_append_new(members, json_string(wwpn[s]));
        json_array_append_new(members, json_string(target));
        json_object_set_new(z, "members", members);
        json_array_append_new(zones, z);
    }

    /* Brocade FOS: aliases for the initiators, a zone per set, add to the cfg */
    for (int s = 0; s < 2; s++)
        add_line(brocade, "alicreate \"%s\", \"%s\"", alias[s], wwpn[s]);
    for (int s = 0; s < 2; s++)
        add_line(brocade, "zonecreate \"%s\", \"%s; %s\"", zone[s], alias[s], target);
    add_line(brocade, "cfgadd \"%s\", \"%s; %s\"", zoneset, zone[0], zone[1]);
    add_line(brocade, "cfgsave");
    add_line(brocade, "cfgenable \"%s\"", zoneset);

    /* Cisco MDS NX-OS, in configuration mode */
    add_line(cisco, "configure terminal");
    for (int s = 0; s < 2; s++) {
        add_line(cisco, "zone name %s vsan %u", zone[s], vsan);
        add_line(cisco, "  member pwwn %s", wwpn[s]);
        add_line(cisco, "  member pwwn %s", target);
    }
    add_line(cisco, "zoneset name %s vsan %u", zoneset, vsan);
    for (int s = 0; s < 2; s++)
        add_line(cisco, "  member %s", zone[s]);
    add_line(cisco, "zoneset activate name %s vsan %u", zoneset, vsan);

    /* iSCSI masking: the VM's own initiator name in the target's ACL */
    add_line(tgtadm, "tgtadm --lld iscsi --mode target --op bind --tid %s --initiator-name %s",
             tid, id->iqn);
    add_line(targetcli, "targetcli /iscsi/%s/tpg1/acls create %s", iscsi_target, id->iqn);
    /* FC masking on a Linux LIO array (qla2xxx target mode) */
    for (int s = 0; s < 2; s++)
        add_line(targetcli, "targetcli /qla2xxx/%s/acls create %s", target, wwpn[s]);

    json_object_set_new(root, "zones", zones);
    json_object_set_new(cmds, "brocade", brocade);
    json_object_set_new(cmds, "cisco_mds", cisco);
    json_object_set_new(cmds, "tgtadm", tgtadm);
    json_object_set_new(cmds, "targetcli", targetcli);
    json_object_set_new(root, "commands", cmds);
    return root;
}

struct text {
    char *buf;
    size_t len, cap;
    bool failed;
};

HV_PRINTF(2, 3) static void put(struct text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || t->failed)
        return;
    if (t->len + (size_t)n + 1 > t->cap) {
        size_t cap = HV_MAX(t->cap * 2, t->len + (size_t)n + 256);
        char *nb = realloc(t->buf, cap);
        if (!nb) {
            t->failed = true;
            return;
        }
        t->buf = nb;
        t->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

static void put_lines(struct text *t, const char *title, json_t *lines)
{
    size_t i;
    json_t *it;
    put(t, "\n# %s\n", title);
    json_array_foreach(lines, i, it) put(t, "%s\n", json_string_value(it));
}

char *npiv_zoning_text(const struct npiv_identity *id, const struct npiv_zoning_options *opt)
{
    struct text t = { 0 };
    json_t *j = npiv_zoning_json(id, opt);
    if (!j)
        return NULL;
    json_t *fc = json_object_get(j, "fc"), *cmds = json_object_get(j, "commands");
    static const char *sets[2] = { "a", "b" };

    put(&t, "# VM %s: initiator identities\n", id->vm_name);
    put(&t, "iSCSI initiator name  %s\n", id->iqn);
    for (int s = 0; s < 2; s++) {
        json_t *set = json_object_get(fc, sets[s]);
        put(&t, "FC address set %c     WWPN %s  WWNN %s\n", 'A' + s,
            json_string_value(json_object_get(set, "wwpn")),
            json_string_value(json_object_get(set, "wwnn")));
    }
    put(&t, "# Zone and mask both sets: set B logs in on the destination host during a "
            "live migration.\n");
    if (!opt || !opt->fc_target_wwpn || !opt->zoneset || !opt->iscsi_target || !opt->tgt_tid)
        put(&t, "# Replace the UPPER-CASE placeholders (TARGET_WWPN, ZONESET_NAME, TID, "
                "TARGET_IQN) with your values.\n");
    put_lines(&t, "Brocade FOS", json_object_get(cmds, "brocade"));
    put_lines(&t, "Cisco MDS NX-OS", json_object_get(cmds, "cisco_mds"));
    put_lines(&t, "iSCSI ACL on tgt (tgtadm)", json_object_get(cmds, "tgtadm"));
    put_lines(&t, "ACLs on Linux LIO (targetcli): iSCSI, then FC for sets A and B",
              json_object_get(cmds, "targetcli"));
    json_decref(j);
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}
