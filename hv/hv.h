/*
 * hv — the hypervisor's side of a guest's disks: VMs, their virtual SCSI
 * controllers served over iSCSI, and the daemon (hvstord) that owns them.
 *
 * Two layers. The VM *definition* (struct hv_vm_config) is plain data: name,
 * UUID, the initiator names allowed to act as the VM's guest, optional CHAP,
 * and what sits in each of the up to 4 controllers x 64 slots. It validates
 * itself, converts to and from JSON, and the registry persists one file per
 * VM in the state directory with atomic writes. No reactor is needed for it,
 * so the offline tools and the unit tests use it as is.
 *
 * The *daemon* (struct hv_daemon) brings definitions to life in one reactor:
 * each controller becomes a scsi_controller served as the iSCSI target
 * "iqn.2026-11.org.hvstor:<vm>.c<N>", each slot a logical unit on a bdev
 * (a VHD chain or a raw file). It answers the iSCSI server's directory
 * questions (who may log in where, with which CHAP), and executes control
 * requests — JSON objects {"op": "...", ...} arriving on the Unix socket
 * DIR/hvstord.sock — always answering {"ok": true, "result": ...} or
 * {"ok": false, "error": "<sentence>"}.
 *
 * Access rule: only the VM's initiators may log in to its targets, and
 * SendTargets shows an initiator only the targets it may use. A VM created
 * without --initiator allows what QEMU presents by default for that VM:
 * "iqn.2008-11.org.linux-kvm:<name>" (QEMU run with -name NAME) and
 * "iqn.2008-11.org.linux-kvm:<uuid>" (QEMU run with -uuid UUID).
 *
 * Room for later kinds: a slot holds a disk of a named kind ("vhd", "raw";
 * SAN pass-through LUNs add "lun"), and a definition keeps every JSON key it
 * does not know (agents, identities, checkpoints) when it is loaded and saved.
 */
#ifndef HVSTOR_HV_H
#define HVSTOR_HV_H

#include "common.h"

#define HV_MAX_CONTROLLERS 4
#define HV_SLOTS_PER_CONTROLLER 64
#define HV_MAX_INITIATORS 32
#define HV_NAME_MAX 63                  /* VM name length, without NUL */
#define HV_ISCSI_NAME_MAX 223           /* RFC 7143: iSCSI names up to 223 bytes */

/* The naming authority of every target we serve: iqn.2026-11.org.hvstor:<vm>.c<N> */
#define HV_TARGET_PREFIX "iqn.2026-11.org.hvstor"
/* What QEMU's libiscsi driver presents when no initiator name is configured. */
#define HV_QEMU_INITIATOR_PREFIX "iqn.2008-11.org.linux-kvm"

#define HV_DEFAULT_STATE_DIR "/var/lib/hvstor"
#define HV_DEFAULT_PORTAL "127.0.0.1:3260"
#define HV_SOCKET_NAME "hvstord.sock"
#define HV_PORTAL_FILE "portal"         /* DIR/portal: "ADDR:PORT\n" once listening */

/* ------------------------------------------------------------ definition */

enum hv_disk_kind {
    HV_DISK_VHD,                        /* a VHD image (chain), opened with vhd_open */
    HV_DISK_RAW,                        /* a raw file or block device */
    HV_DISK_LUN,                        /* a SAN LUN passed through (passthru_lu.c);
                                         * path is "/san/NAME/TARGET/LUN" */
    HV_DISK_DEV,                        /* a local block device passed through whole:
                                         * claimed O_EXCL, checked not in use */
    HV_DISK_FC,                         /* a Fibre Channel LUN through the VM's own
                                         * NPIV vport (passthru_fc.c); path is
                                         * "/fc/TARGET_WWPN/LUN", served like DEV */
};

const char *hv_disk_kind_name(enum hv_disk_kind kind);          /* "vhd", "raw" */
int hv_disk_kind_parse(const char *name, enum hv_disk_kind *kind);

struct hv_disk_config {
    enum hv_disk_kind kind;
    char path[4096];                    /* absolute */
    bool is_read_only;
    char designator[80];                /* HV_DISK_LUN, _FC, and HV_DISK_DEV passed
                                         * through with SG_IO: VPD 0x83 id it must carry */
    bool is_full_scsi;                  /* with a designator: no CDB filter */
    bool is_sg_io;                      /* HV_DISK_FC: its block device is a SCSI disk
                                         * passed through with SG_IO (else emulated) */
};

struct hv_chap {
    char user[256];                     /* "" = not configured */
    char secret[256];
};

struct hv_vm_config {
    char name[HV_NAME_MAX + 1];
    uint8_t uuid[16];
    char initiators[HV_MAX_INITIATORS][HV_ISCSI_NAME_MAX + 1];
    int initiator_count;
    struct hv_chap chap;                /* the initiator proves itself (one-way) */
    struct hv_chap mutual_chap;         /* the target proves itself too */
    int controller_count;               /* 1..HV_MAX_CONTROLLERS */
    struct hv_disk_config *disks[HV_MAX_CONTROLLERS][HV_SLOTS_PER_CONTROLLER]; /* NULL: empty */
    json_t *extra;                      /* keys this version does not know; kept as is */
};

/* A fresh definition: name checked, new UUID, one controller, QEMU's default
 * initiator names for it, no CHAP, no disks. */
int hv_vm_config_init(struct hv_vm_config *vm, const char *name, struct hv_err *err);
void hv_vm_config_free(struct hv_vm_config *vm);
/* Deep copy (disks and extra included). */
int hv_vm_config_copy(struct hv_vm_config *dst, const struct hv_vm_config *src);

/* VM names: 1..63 of [a-z0-9-], starting with a letter or digit, because the
 * name is part of an iSCSI name and of a file name. */
int hv_vm_name_check(const char *name, struct hv_err *err);
/* An iSCSI name (iqn., eui. or naa. form, RFC 3720 3.2.6); lowercased in place. */
int hv_iscsi_name_check(char *name, struct hv_err *err);
/* "USER:SECRET" into a CHAP pair; the secret must be 12..255 bytes (RFC 7143 asks
 * for at least 96 bits) — shorter secrets are refused, not silently accepted. */
int hv_chap_parse(const char *text, struct hv_chap *chap, struct hv_err *err);

/* Replace the allowed initiators (1..HV_MAX_INITIATORS, each checked). */
int hv_vm_config_set_initiators(struct hv_vm_config *vm, const char *const *names, int count,
                                struct hv_err *err);
bool hv_vm_config_allows(const struct hv_vm_config *vm, const char *initiator);
/* "iqn.2026-11.org.hvstor:<vm>.c<N>" */
void hv_target_name(const char *vm_name, int controller, char out[HV_ISCSI_NAME_MAX + 1]);
/* The reverse: which VM and controller a target name means; -ENOENT if none of ours. */
int hv_target_parse(const char *target, char vm_name[HV_NAME_MAX + 1], int *controller);

/* Whole-definition consistency (names, counts, slots, CHAP, absolute paths). */
int hv_vm_config_validate(const struct hv_vm_config *vm, struct hv_err *err);
/* The persisted form (secrets included: the state dir is private). */
json_t *hv_vm_config_to_json(const struct hv_vm_config *vm);
/* Parse and validate; `what` names the source in messages (a file path). */
int hv_vm_config_from_json(const json_t *obj, const char *what, struct hv_vm_config *vm,
                           struct hv_err *err);

/* -------------------------------------------------------------- registry */

/*
 * The state directory: DIR/vms/<name>.json, one per VM, each written
 * atomically (temp file, fsync, rename, fsync dir), so a crash leaves either
 * the old or the new definition, never a torn one. Leftover temp files are
 * ignored on load.
 */
struct hv_registry {
    char dir[4096];
    char vms_dir[4096];
};

/* Create DIR (0700) and DIR/vms if missing. */
int hv_registry_open(struct hv_registry *reg, const char *dir, struct hv_err *err);
int hv_registry_save(struct hv_registry *reg, const struct hv_vm_config *vm, struct hv_err *err);
int hv_registry_remove(struct hv_registry *reg, const char *name, struct hv_err *err);
/* Load every definition, sorted by name. A file that cannot be parsed fails
 * the whole load with its name in the message: better than a VM silently
 * missing its ACL after a restart. *out is an array of *count configs; free
 * with hv_registry_free_list. */
int hv_registry_load(struct hv_registry *reg, struct hv_vm_config **out, int *count,
                     struct hv_err *err);
void hv_registry_free_list(struct hv_vm_config *list, int count);
/* Path of the file holding VM `name`. */
void hv_registry_path(const struct hv_registry *reg, const char *name, char out[4096 + 80]);

/* ---------------------------------------------------------------- daemon */

struct hv_daemon;

struct hv_daemon_options {
    const char *state_dir;
    const char *portal_addr;            /* "127.0.0.1" */
    uint16_t portal_port;               /* 0: any free port (written to DIR/portal) */
    bool no_direct_io;                  /* buffered image I/O (tmpfs) */
    /* VM identities for SAN LUNs (npiv/): an IEEE OUI for NAA-5 WWNs and an
     * IQN prefix; both or neither. NULL: VMs get no identity. */
    const char *wwn_oui;
    const char *iqn_prefix;
    unsigned host_id;
    /* Fibre Channel: where the kernel's sysfs and the device nodes are.
     * NULL: "/sys" and "/dev"; only tests point them elsewhere. */
    const char *sysfs_root;
    const char *dev_root;
};

/* Open the state dir, bring back every VM and disk, listen on the portal and
 * the control socket. A disk that cannot be opened at start leaves its VM up
 * with that slot offline (and says why in `vm show`), never the daemon down. */
int hv_daemon_create(const struct hv_daemon_options *opt, struct hv_daemon **out,
                     struct hv_err *err);
/* Serve until SIGTERM or SIGINT (read through a signalfd in the reactor), then
 * drain in-flight I/O, close every session, flush and close every image.
 * The signals must have been blocked by the caller before any thread exists. */
int hv_daemon_run(struct hv_daemon *d);
void hv_daemon_destroy(struct hv_daemon *d);
uint16_t hv_daemon_port(const struct hv_daemon *d);

/* Execute one control request (what the socket server does per line). The
 * reply is always an object, {"ok": true, "result": ...} or {"ok": false,
 * "error": "..."}; the caller owns it. */
json_t *hv_daemon_request(struct hv_daemon *d, const json_t *request);

/* ------------------------------------------------------ control channel */

/* Client side, for hvctl and tests: connect to `socket_path`, send one
 * request, wait for its reply (blocking; timeout in ms, 0 = none). */
int hv_control_call(const char *socket_path, const json_t *request, json_t **reply,
                    int timeout_ms, struct hv_err *err);

/* hvctl's one request (hvctl.c, passthru_ctl.c, snapshot_ctl.c), consumed:
 * 0 with the reply's result (caller frees); 1 when it could not be sent or
 * hvstord refused it, the reason on stderr (and, with is_json, the whole
 * reply on stdout for scripts). */
int hv_control_request(const char *socket_path, json_t *req, int timeout_ms, bool is_json,
                       json_t **result);
/* "hvctl: <what>" and the command's usage on stderr; returns 2, the exit
 * code of a usage error. */
int hv_cli_usage_error(const char *usage, const char *fmt, ...) HV_PRINTF(2, 3);

/* hvctl's SAN commands (passthru_ctl.c): san add/list/luns, vm zoning,
 * disk attach --lun, disk takeover. _wants says whether argv (after the
 * global options) is one of them; _cli runs it and returns the exit code. */
bool hv_passthru_cli_wants(int argc, char **argv);
int hv_passthru_cli(const char *socket_path, bool is_json, int timeout_ms, int argc,
                    char **argv);
/* hvctl's checkpoint and backup commands (snapshot_ctl.c). timeout_ms < 0:
 * none given (long operations then wait as long as they take). */
bool hv_snapshot_cli_wants(int argc, char **argv);
int hv_snapshot_cli(const char *socket_path, bool is_json, int timeout_ms, int argc,
                    char **argv);

#endif /* HVSTOR_HV_H */
