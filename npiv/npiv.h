/*
 * npiv — a VM's own initiator identities, and proof that they reach a LUN.
 *
 * Every VM gets, when it is created, an iSCSI initiator name and two Fibre
 * Channel address sets (A and B: WWPN + WWNN each, so that a move to another
 * host can log in with one set before the other logs out). The daemon keeps
 * the identity with the VM (npiv_identity_to_json / _from_json); this module
 * hands identities out and guarantees that no two are ever the same, even
 * across a crash, a restart, the deletion of a VM, or another host that shares
 * the OUI and has its own host id.
 *
 * For Fibre Channel it drives the kernel's FC transport through sysfs: pick an
 * HBA that allows NPIV, create a virtual port with the VM's WWPN:WWNN, wait for
 * it to come Online, look at the remote ports and LUNs it sees, and delete it.
 * npiv_check_access() uses that to prove, before a LUN is assigned, that the
 * fabric's zoning and the array's masking let the VM's own identity reach it.
 * The sysfs root is a parameter ("/sys" in production) so tests use a fake tree.
 *
 * npiv_zoning_json() / npiv_zoning_text() produce what a SAN administrator
 * runs to grant access (`hvctl vm zoning VM`): Brocade FOS and Cisco MDS zone
 * lines, tgtadm and targetcli ACL commands.
 *
 * Threading and blocking: nothing here keeps global state. The sysfs calls are
 * blocking file operations (tiny ones); the waits (npiv_vport_wait_online,
 * npiv_vport_bring_up, npiv_check_access) sleep-poll up to their timeouts, so
 * the daemon runs them in a worker thread, or drives npiv_vport_poll() from a
 * reactor timer instead.
 */
#ifndef HVSTOR_NPIV_H
#define HVSTOR_NPIV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common.h"

/* ------------------------------------------------------------------ WWNs */

/*
 * A World Wide Name is 64 bits, kept as a native uint64_t (most significant
 * byte first on the wire and in text). Ours are NAA-5, "IEEE Registered":
 *
 *   63..60  NAA = 5
 *   59..36  OUI (24 bits, the IEEE MA-L the site holds)
 *   35..0   vendor specific, hvstor's layout:
 *             35 .. 36-H   host id (H = host_id_bits, 0..20): the "state
 *                          prefix" that keeps hosts sharing an OUI apart
 *             .. 2         serial: one per identity, from the counter in the
 *                          state dir; never handed out twice
 *             1..0         kind: 0 = WWNN of set A, 1 = WWPN of set A,
 *                                2 = WWNN of set B, 3 = WWPN of set B
 */
#define NPIV_WWN_HEX_LEN 16     /* "5001438000000401" */
#define NPIV_WWN_COLON_LEN 23   /* "50:01:43:80:00:00:04:01" */

void npiv_wwn_hex(uint64_t wwn, char out[NPIV_WWN_HEX_LEN + 1]);
void npiv_wwn_colon(uint64_t wwn, char out[NPIV_WWN_COLON_LEN + 1]);
/* Accepts 16 hex digits, the colon form (8 pairs), or sysfs's "0x..." form
 * (1..16 digits); surrounding whitespace and a trailing newline are ignored.
 * -EINVAL for anything else. */
int npiv_wwn_parse(const char *text, uint64_t *wwn);
static inline unsigned npiv_wwn_naa(uint64_t wwn) { return (unsigned)(wwn >> 60); }
static inline uint32_t npiv_wwn_oui(uint64_t wwn) { return (uint32_t)(wwn >> 36) & 0xFFFFFFu; }

/* ----------------------------------------------------------- iSCSI names */

#define NPIV_ISCSI_NAME_MAX 223 /* bytes, RFC 3720 3.2.6.1 / RFC 7143 4.2.7.1 */

/*
 * An iSCSI name in normalized form: "iqn.YYYY-MM.reversed.domain[:anything]"
 * (lowercase letters, digits, '-', '.', ':'), "eui." + 16 hex digits, or
 * "naa." + 16 or 32 hex digits; at most 223 bytes. The message says which
 * rule failed and where.
 */
int npiv_iscsi_name_validate(const char *name, struct hv_err *err);

/* ------------------------------------------------------------ identities */

#define NPIV_VM_NAME_MAX 128

enum npiv_set { NPIV_SET_A = 0, NPIV_SET_B = 1 };

struct npiv_port_names {
    uint64_t wwpn;
    uint64_t wwnn;
};

struct npiv_identity {
    char vm_name[NPIV_VM_NAME_MAX + 1];
    char iqn[NPIV_ISCSI_NAME_MAX + 1];
    uint64_t serial;                    /* the counter value the WWNs came from */
    struct npiv_port_names fc[2];       /* [NPIV_SET_A], [NPIV_SET_B] */
};

struct npiv_config {
    uint32_t oui;                       /* required: 24-bit IEEE OUI, != 0 */
    uint32_t host_id;                   /* distinct per host sharing the OUI */
    unsigned host_id_bits;              /* 0..20; npiv_config_init: 10 */
    /* "iqn.YYYY-MM.reversed.domain" without ':'; VMs get "<prefix>:vm.<name>".
     * Hosts that share a SAN should use distinct prefixes (e.g. end it in the
     * host's name): this module only sees the IQNs its own host issued. */
    char iqn_prefix[NPIV_ISCSI_NAME_MAX + 1];
};

/* Defaults: host_id 0, host_id_bits 10; oui and iqn_prefix left empty (a
 * site must choose them; npiv_allocator_open refuses without them). */
void npiv_config_init(struct npiv_config *cfg);

/*
 * The allocator owns "<state_dir>/npiv.json": the next serial, the layout it
 * was created with, and every IQN ever issued. Opening refuses a state file
 * made with another OUI, host id or host_id_bits (reusing it could alias
 * WWNs already in the fabric): use a new state dir for a new layout.
 */
struct npiv_allocator;
int npiv_allocator_open(const char *state_dir, const struct npiv_config *cfg,
                        struct npiv_allocator **out, struct hv_err *err);
void npiv_allocator_close(struct npiv_allocator *a);
/* The serial the next allocation would use (for status and tests). */
uint64_t npiv_allocator_next_serial(const struct npiv_allocator *a);

/*
 * A fresh identity for VM `vm_name`. The serial is reserved durably (state
 * file written and fsynced under a lock) before it is returned, so a crash
 * can waste a serial but never hand one out twice. The IQN is `iqn_override`
 * when given (validated, refused with -EEXIST if this host ever issued it),
 * else "<iqn_prefix>:vm.<name>" with the name lowercased and characters an
 * IQN cannot hold turned into '-'; if that IQN was issued before (a deleted
 * VM of the same name) ".<serial>" is appended, so a new VM never inherits an
 * old VM's SAN ACLs. Deleting a VM needs no call: nothing is ever reused.
 * -ENOSPC when the serial space of this host id is exhausted.
 */
int npiv_identity_allocate(struct npiv_allocator *a, const char *vm_name,
                           const char *iqn_override, struct npiv_identity *out,
                           struct hv_err *err);

/* {"vm": .., "iqn": .., "serial": N, "fc": {"a": {"wwpn": "50:..", "wwnn":
 * ".."}, "b": {..}}}. NULL only when out of memory. */
json_t *npiv_identity_to_json(const struct npiv_identity *id);
/* Parses and validates (NAA-5 WWNs, four distinct names, valid IQN). */
int npiv_identity_from_json(const json_t *obj, struct npiv_identity *out, struct hv_err *err);

/* ----------------------------------------------------- FC HBAs and vports */

#define NPIV_SYSFS_ROOT "/sys"

struct npiv_hba {
    char name[32];                      /* "host5" */
    unsigned host_no;
    uint64_t wwpn;
    uint64_t wwnn;
    uint64_t fabric_name;               /* 0 when unknown */
    char port_type[64];                 /* as sysfs says */
    char port_state[32];
    unsigned max_vports;
    unsigned vports_in_use;
    bool can_create_vport;              /* NPIV possible right now */
    char why_not[192];                  /* when !can_create_vport */
};

/* Every fc_host that is a physical port (vports' own hosts are skipped),
 * sorted by host number. *out is malloc'ed (free it); 0 HBAs is not an error. */
int npiv_hba_list(const char *sysfs_root, struct npiv_hba **out, size_t *count,
                  struct hv_err *err);
/* The first HBA that can take a vport (on fabric `fabric_name` unless 0).
 * -ENODEV when there is none; the message gives each HBA's reason. */
int npiv_hba_pick(const char *sysfs_root, uint64_t fabric_name, struct npiv_hba *out,
                  struct hv_err *err);

struct npiv_vport {
    char sysfs_root[256];
    char parent[32];                    /* "host5" */
    unsigned parent_host_no;
    struct npiv_port_names names;
    bool has_host;                      /* the vport's own fc_host was found */
    unsigned host_no;                   /* valid when has_host */
    char port_state[32];                /* last seen, for messages */
};

/*
 * Write "WWPN:WWNN" (16 lowercase hex digits each, the form the FC transport
 * parses) to <parent>/vport_create. Re-reads the parent's counters first and
 * refuses (-ENOSPC) when no NPIV vport is left or (-EOPNOTSUPP) when its
 * port_type cannot do NPIV; -EBUSY when a port with that WWPN already exists.
 * Returns as soon as the kernel accepted the write.
 */
int npiv_vport_create(const char *sysfs_root, const struct npiv_hba *hba,
                      const struct npiv_port_names *names, struct npiv_vport *out,
                      struct hv_err *err);
/* One non-blocking look: finds the vport's fc_host and sets *is_online when
 * its port_state is "Online". -EIO when the fabric refused the vport
 * (vport_state "Fabric Rejected WWN", "No Fabric Support", "VPort Failed"...). */
int npiv_vport_poll(struct npiv_vport *v, bool *is_online, struct hv_err *err);
/* Poll every `poll_ms` until Online; -ETIMEDOUT after `timeout_ms` with the
 * last state in the message. Does not delete the vport. */
int npiv_vport_wait_online(struct npiv_vport *v, unsigned timeout_ms, unsigned poll_ms,
                           struct hv_err *err);
/* Write "WWPN:WWNN" to <parent>/vport_delete. */
int npiv_vport_delete(struct npiv_vport *v, struct hv_err *err);

struct npiv_wait_options {
    unsigned online_timeout_ms;         /* 0: 30000 */
    unsigned settle_ms;                 /* after Online, wait up to this for the
                                           target and LUN to be scanned; 0: 5000 */
    unsigned poll_ms;                   /* 0: 100 */
    uint64_t fabric_name;               /* pick an HBA on this fabric; 0: any */
};

/* Pick an HBA, create, wait Online. On any failure the vport it created is
 * deleted again before returning. */
int npiv_vport_bring_up(const char *sysfs_root, const struct npiv_port_names *names,
                        const struct npiv_wait_options *opt, struct npiv_vport *out,
                        struct hv_err *err);

/* ------------------------------------------------- remote ports and LUNs */

struct npiv_rport {
    char name[48];                      /* "rport-7:0-2" */
    uint64_t wwpn;
    uint64_t wwnn;
    bool is_target;                     /* roles include "FCP Target" */
    char port_state[32];
    int scsi_target_id;                 /* -1 when none */
};

/* Remote ports seen through SCSI host `host_no`; *out malloc'ed. */
int npiv_rport_list(const char *sysfs_root, unsigned host_no, struct npiv_rport **out,
                    size_t *count, struct hv_err *err);
/* LUNs of H:0:T:* under class/scsi_device (or bus/scsi/devices), sorted. */
int npiv_lun_list(const char *sysfs_root, unsigned host_no, unsigned target_id,
                  uint64_t **out, size_t *count, struct hv_err *err);

/*
 * Zoning and masking, asked of the fabric and the array: for set A and then
 * set B (or only A when `only_set_a`), bring the VM's vport up, find
 * `target_wwpn` among its remote ports as an FCP target, find `lun` under it,
 * and delete the vport again (always, also on failure). `lun` is the LUN
 * number as Linux shows it in H:C:T:L (the same as the SAN's LUN for the
 * usual peripheral addressing below 256). Errors:
 *   -EHOSTUNREACH "not zoned: target port 50:.. is not visible to vport 50:.."
 *   -ENOENT       "not masked: LUN 3 of target 50:.. is not reported to ..."
 *   -ETIMEDOUT, -ENOSPC, -ENODEV, -EOPNOTSUPP, -EIO from bringing it up;
 *   -EBUSY when the set is already logged in on this host (a running VM).
 */
int npiv_check_access(const char *sysfs_root, const struct npiv_identity *id,
                      uint64_t target_wwpn, uint64_t lun, bool only_set_a,
                      const struct npiv_wait_options *opt, struct hv_err *err);

/*
 * The same check, one address set at a time: bring the set's vport up, look,
 * delete it again. What npiv_check_access does per set.
 */
int npiv_check_access_set(const char *sysfs_root, const struct npiv_identity *id,
                          enum npiv_set set, uint64_t target_wwpn, uint64_t lun,
                          const struct npiv_wait_options *opt, struct hv_err *err);

/* A SCSI device as the kernel numbers it, H:C:T:L. */
struct npiv_lun_addr {
    unsigned host_no;
    unsigned channel;
    unsigned target_id;
    uint64_t lun;
};

/*
 * Find `target_wwpn`'s LUN `lun` under a vport that is Online (one brought up
 * and kept, to serve the LUN), waiting up to opt->settle_ms for the scan.
 * Refuses as npiv_check_access does (-EHOSTUNREACH not zoned, -ENOENT not
 * masked); `who` ("VM 'a', address set A") goes into the message.
 */
int npiv_vport_find_lun(const struct npiv_vport *v, uint64_t target_wwpn, uint64_t lun,
                        const struct npiv_wait_options *opt, const char *who,
                        struct npiv_lun_addr *out, struct hv_err *err);
/* The vport with these names that already exists on this host (left by a
 * daemon that died without deleting it): filled like npiv_vport_create's
 * result. -ENOENT when there is none. */
int npiv_vport_find(const char *sysfs_root, const struct npiv_port_names *names,
                    struct npiv_vport *out, struct hv_err *err);
/* The block device of a SCSI device ("sdb", from device/block/), -ENOENT
 * when it has none (not a disk, or not scanned yet). */
int npiv_lun_block_name(const char *sysfs_root, const struct npiv_lun_addr *a, char *name,
                        size_t cap, struct hv_err *err);
/* The kernel's copy of the device's VPD page 0x83 (device/vpd_pg83, the page
 * as the device sent it, header included); *len is its length. -ENOENT when
 * the kernel has none. */
int npiv_lun_vpd83(const char *sysfs_root, const struct npiv_lun_addr *a, uint8_t *buf,
                   size_t cap, size_t *len, struct hv_err *err);

/* ---------------------------------------------------------------- zoning */

struct npiv_zoning_options {
    uint64_t fc_target_wwpn;            /* the array port to zone with; 0: none */
    unsigned vsan;                      /* Cisco MDS VSAN; 0: 1 */
    const char *zoneset;                /* Brocade cfg / Cisco zoneset; NULL: not shown */
    const char *iscsi_target;           /* target IQN for the ACL lines; NULL: "TARGET" */
    unsigned tgt_tid;                   /* tgtadm target id; 0: "TID" */
};

/*
 * What `hvctl vm zoning VM` prints. The JSON holds the identities, one zone
 * per address set (single-initiator zoning: the set's WWPN plus the target),
 * and the command lines per CLI:
 *   {"vm", "iqn", "fc": {"a": {wwpn, wwnn}, "b": ..}, "zones": [{"name",
 *    "members": [..]}], "commands": {"brocade": [..], "cisco_mds": [..],
 *    "tgtadm": [..], "targetcli": [..]}}
 * The text is the same content, sectioned, one command per line, ready to
 * paste. `opt` may be NULL. Returned text is malloc'ed; both NULL on ENOMEM.
 */
json_t *npiv_zoning_json(const struct npiv_identity *id, const struct npiv_zoning_options *opt);
char *npiv_zoning_text(const struct npiv_identity *id, const struct npiv_zoning_options *opt);

#endif /* HVSTOR_NPIV_H */
