/*
 * scsi — internal to hv/: the seam between a transport (the iSCSI target)
 * and what executes SCSI commands.
 *
 * A controller is a LUN table (64 slots, slot M = LUN M). Each slot holds a
 * logical unit: a table of operations with two implementations, an emulated
 * disk on a bdev (SBC/SPC written once, in scsi_disk.c) and, later, a
 * pass-through LUN that forwards CDBs. The transport builds a scsi_task per
 * command with the data-out already gathered and a data-in buffer of the
 * initiator's expected length (so reads land in the buffer that is sent),
 * hands it to scsi_controller_execute(), and sends what comes back through
 * task->done. The controller answers REPORT LUNS, commands to empty slots and
 * pending unit attentions itself, so every LU kind behaves the same there.
 */
#ifndef HVSTOR_HV_SCSI_H
#define HVSTOR_HV_SCSI_H

#include "common.h"

#define SCSI_MAX_CDB 16
#define SCSI_SENSE_MAX 252
#define SCSI_LUNS_PER_CONTROLLER 64

enum scsi_status {
    SCSI_STATUS_GOOD = 0x00,
    SCSI_STATUS_CHECK_CONDITION = 0x02,
    SCSI_STATUS_CONDITION_MET = 0x04,
    SCSI_STATUS_BUSY = 0x08,
    SCSI_STATUS_RESERVATION_CONFLICT = 0x18,
    SCSI_STATUS_TASK_SET_FULL = 0x28,
    SCSI_STATUS_ACA_ACTIVE = 0x30,
    SCSI_STATUS_TASK_ABORTED = 0x40,
};

enum scsi_data_dir { SCSI_DIR_NONE, SCSI_DIR_IN, SCSI_DIR_OUT };

/* scsi_task.task_attr: the values of iSCSI's ATTR field (RFC 7143 11.3.1).
 * ORDERED media commands wait for every earlier one and hold back every
 * later one; HEAD OF QUEUE and ACA run as SIMPLE (no NACA support). */
#define SCSI_TASK_ATTR_UNTAGGED 0
#define SCSI_TASK_ATTR_SIMPLE 1
#define SCSI_TASK_ATTR_ORDERED 2
#define SCSI_TASK_ATTR_HEAD_OF_QUEUE 3
#define SCSI_TASK_ATTR_ACA 4

struct scsi_lu;
struct scsi_controller;

/* The I_T nexus a command arrived on: for reservations and unit attentions. */
struct scsi_nexus {
    char initiator[224];            /* iSCSI initiator port name (name + ",i,0x" + ISID) */
    uint64_t id;                    /* unique per nexus for the controller's lifetime */
};

struct scsi_task {
    /* set by the transport */
    uint64_t lun;                   /* LUN number: scsi_lun_decode() of the 8-byte field */
    const struct scsi_nexus *nexus;
    uint8_t cdb[SCSI_MAX_CDB];
    uint8_t cdb_len;
    uint32_t tag;                   /* initiator task tag, for ABORT TASK */
    uint8_t task_attr;              /* SIMPLE, ORDERED, HEAD OF QUEUE, ACA */
    enum scsi_data_dir dir;
    uint32_t expected_bytes;        /* initiator's expected transfer length */
    struct iovec *out_iov;          /* data-out, all of it, before execute */
    int out_iovcnt;
    uint32_t out_bytes;
    struct iovec *in_iov;           /* data-in buffer of expected_bytes */
    int in_iovcnt;

    /* set by the executor before done() */
    uint32_t in_bytes;              /* data-in produced (<= expected_bytes) */
    /* Bytes the command asked to move by its CDB (transfer length, or the
     * allocation / parameter list length capped by what the device has).
     * Residuals for the response: wanted > expected is an overflow of
     * wanted - expected; otherwise data-in underflows by expected - in_bytes
     * and data-out by expected - wanted. */
    uint32_t wanted_bytes;
    uint8_t status;                 /* enum scsi_status */
    uint8_t sense[SCSI_SENSE_MAX];
    uint8_t sense_len;

    void (*done)(struct scsi_task *task);
    void *transport_arg;

    /* private to the controller and LU */
    struct scsi_task *next;         /* LU queues */
    uint64_t start_ns;
    bool is_aborted;
    bool is_descriptor_sense;       /* D_SENSE of the LU when the task started */
    struct scsi_task *set_prev;     /* controller's task set */
    struct scsi_task *set_next;
    struct scsi_controller *controller;
    struct scsi_lu *exec_lu;        /* NULL: answered by the controller */
    void (*transport_done)(struct scsi_task *task);
    struct hv_deferred deferred;    /* completion outside of execute() */
    uint64_t lu_ctx[32] __attribute__((aligned(16)));
};

/* Sense helpers (fixed format unless the LU was switched to descriptor). */
void scsi_task_set_sense(struct scsi_task *t, uint8_t key, uint8_t asc, uint8_t ascq);
void scsi_task_good(struct scsi_task *t);
/* CHECK CONDITION with the INFORMATION field set (e.g. the offset of a
 * miscompare). */
void scsi_task_set_sense_info(struct scsi_task *t, uint8_t key, uint8_t asc, uint8_t ascq,
                              uint64_t information);
/* Build sense data into buf (>= SCSI_SENSE_MAX); returns its length. */
size_t scsi_sense_build(uint8_t *buf, bool is_descriptor, uint8_t key, uint8_t asc,
                        uint8_t ascq, bool has_info, uint64_t information);
/* ILLEGAL REQUEST, INVALID FIELD IN CDB (is_cdb) or IN PARAMETER LIST, with
 * the sense-key specific field pointer at byte `field`, bit `bit` (-1: the
 * whole byte), so the initiator sees which field was refused. */
void scsi_task_invalid_field(struct scsi_task *t, bool is_cdb, uint16_t field, int bit);
/* Copy `len` bytes of data-in from `buf` (capped by the expected length and
 * `alloc_len`), set in_bytes and wanted_bytes. */
void scsi_task_data_in(struct scsi_task *t, const void *buf, size_t len, size_t alloc_len);

/* SAM-5 8-byte LUN structure <-> LUN number (peripheral addressing below 256,
 * flat space above). Decoding an address method we do not use gives
 * UINT64_MAX, which no slot matches (LOGICAL UNIT NOT SUPPORTED). */
uint64_t scsi_lun_decode(const uint8_t lun[8]);
void scsi_lun_encode(uint64_t lun, uint8_t out[8]);

/* ------------------------------------------------ CDB decoding (scsi_cdb.c) */

/* The blocks a media-access CDB addresses: READ, WRITE, VERIFY, WRITE AND
 * VERIFY, PRE-FETCH (6/10/12/16), ORWRITE(16), WRITE SAME(10/16), COMPARE
 * AND WRITE. `blocks` as the CDB has it (a 0 means what the command says
 * it means), except READ/WRITE(6), whose 0 is 256. False for any other
 * opcode, or a CDB shorter than its opcode's group. */
bool scsi_cdb_blocks(const uint8_t *cdb, size_t cdb_len, uint64_t *lba, uint64_t *blocks);
/* A CDB's length by its opcode's group: 6, 10, 16 or 12 bytes (SPC-4
 * 4.2.5.1); 0 for the groups with no fixed length. */
size_t scsi_cdb_group_length(uint8_t opcode);
/* Block descriptor `i` of an UNMAP parameter list. */
void scsi_unmap_descriptor(const struct iovec *iov, int iovcnt, uint32_t i, uint64_t *lba,
                           uint32_t *blocks);

/* What a CDB does to the medium's blocks. */
enum scsi_data_effect {
    SCSI_EFFECT_NONE,    /* changes no block */
    SCSI_EFFECT_RANGE,   /* may change the blocks of *ext, and no other */
    SCSI_EFFECT_UNKNOWN, /* may change blocks the CDB does not name (FORMAT UNIT,
                          * WRITE BUFFER, EXTENDED COPY, vendor-specific...) */
};
struct scsi_write_extent {
    uint64_t lba;
    uint64_t blocks;
    bool is_to_end; /* WRITE SAME with 0 blocks: from lba to the last block */
};
/* `out` is the command's data-out (UNMAP's descriptors), `out_bytes` long.
 * UNMAP gives the span of all its descriptors. */
enum scsi_data_effect scsi_cdb_data_effect(const uint8_t *cdb, size_t cdb_len,
                                           const struct iovec *out, int outcnt, size_t out_bytes,
                                           struct scsi_write_extent *ext);

#define SCSI_SENSE_NO_SENSE 0x0
#define SCSI_SENSE_NOT_READY 0x2
#define SCSI_SENSE_MEDIUM_ERROR 0x3
#define SCSI_SENSE_HARDWARE_ERROR 0x4
#define SCSI_SENSE_ILLEGAL_REQUEST 0x5
#define SCSI_SENSE_UNIT_ATTENTION 0x6
#define SCSI_SENSE_DATA_PROTECT 0x7
#define SCSI_SENSE_ABORTED_COMMAND 0xB
#define SCSI_SENSE_MISCOMPARE 0xE

/* Additional sense codes (asc << 8 | ascq) used across hv/. */
#define SCSI_ASC_NONE 0x0000
#define SCSI_ASC_WRITE_ERROR 0x0C00
#define SCSI_ASC_INVALID_FIELD_IN_IU 0x0E03
#define SCSI_ASC_UNRECOVERED_READ_ERROR 0x1100
#define SCSI_ASC_PARAMETER_LIST_LENGTH_ERROR 0x1A00
#define SCSI_ASC_MISCOMPARE_DURING_VERIFY 0x1D00
#define SCSI_ASC_INVALID_OPCODE 0x2000
#define SCSI_ASC_LBA_OUT_OF_RANGE 0x2100
#define SCSI_ASC_INVALID_FIELD_IN_CDB 0x2400
#define SCSI_ASC_LU_NOT_SUPPORTED 0x2500
#define SCSI_ASC_INVALID_FIELD_IN_PARAMETER_LIST 0x2600
#define SCSI_ASC_INVALID_RELEASE_OF_PR 0x2604
#define SCSI_ASC_WRITE_PROTECTED 0x2700
#define SCSI_ASC_SOFTWARE_WRITE_PROTECTED 0x2702
#define SCSI_ASC_SPACE_ALLOCATION_FAILED 0x2707
#define SCSI_ASC_POWER_ON_RESET 0x2900
#define SCSI_ASC_BUS_DEVICE_RESET 0x2903
#define SCSI_ASC_MODE_PARAMETERS_CHANGED 0x2A01
#define SCSI_ASC_RESERVATIONS_PREEMPTED 0x2A03
#define SCSI_ASC_RESERVATIONS_RELEASED 0x2A04
#define SCSI_ASC_REGISTRATIONS_PREEMPTED 0x2A05
#define SCSI_ASC_CAPACITY_DATA_CHANGED 0x2A09
#define SCSI_ASC_SAVING_PARAMETERS_NOT_SUPPORTED 0x3900
#define SCSI_ASC_REPORTED_LUNS_CHANGED 0x3F0E
#define SCSI_ASC_INTERNAL_TARGET_FAILURE 0x4400
#define SCSI_ASC_INSUFFICIENT_REGISTRATION_RESOURCES 0x5504
#define SCSI_ASC_MEDIUM_REMOVAL_PREVENTED 0x5302
/* Sense from a packed (asc << 8 | ascq) code. */
#define scsi_task_check(t, key, code) \
    scsi_task_set_sense((t), (key), (uint8_t)((code) >> 8), (uint8_t)(code))

/* A kind of logical unit. */
struct scsi_lu_ops {
    const char *name;               /* "disk", "passthru" */
    /* Execute; complete through task->done exactly once, never from inside. */
    void (*execute)(struct scsi_lu *lu, struct scsi_task *task);
    /* Abort what is queued for this nexus (or all when nexus is NULL); tasks
     * in flight complete normally or with TASK ABORTED. */
    void (*reset)(struct scsi_lu *lu, const struct scsi_nexus *nexus);
    void (*destroy)(struct scsi_lu *lu);
    /* Optional. A LOGICAL UNIT RESET or target reset happened: drop state
     * that a reset clears (RESERVE/RELEASE reservations, PREVENT). */
    void (*lu_reset)(struct scsi_lu *lu);
    /* Optional. `nexus` went away: drop what belongs to it alone. */
    void (*nexus_gone)(struct scsi_lu *lu, const struct scsi_nexus *nexus);
    /* Optional. ABORT TASK for `task` (is_aborted is set already): an LU
     * whose tasks run elsewhere (a SAN) stops them there too. The task
     * still completes through its done(). */
    void (*abort_task)(struct scsi_lu *lu, struct scsi_task *task);
};

struct scsi_lu {
    const struct scsi_lu_ops *ops;
    struct scsi_controller *controller;   /* NULL while detached */
    uint64_t lun;
    bool is_descriptor_sense;       /* D_SENSE in the control mode page */
    unsigned tasks_in_flight;       /* kept by the controller */
    hv_call_cb idle_cb;             /* see scsi_lu_when_idle */
    void *idle_arg;
    struct hv_deferred idle_deferred;
    struct hv_reactor *reactor;
};

/* After scsi_controller_detach: call cb(arg) (from the reactor, never inside
 * this call) once no task of `lu` is in flight; then destroy it. */
void scsi_lu_when_idle(struct scsi_lu *lu, hv_call_cb cb, void *arg);

/* ------------------------------------------------------- the controller */

enum scsi_tmf {
    SCSI_TMF_ABORT_TASK = 1,
    SCSI_TMF_ABORT_TASK_SET = 2,
    SCSI_TMF_CLEAR_TASK_SET = 3,
    SCSI_TMF_LOGICAL_UNIT_RESET = 5,
    SCSI_TMF_TARGET_WARM_RESET = 6,
    SCSI_TMF_TARGET_COLD_RESET = 7,
};

enum scsi_tmf_response {            /* RFC 7143 11.6.1 response codes */
    SCSI_TMF_COMPLETE = 0,
    SCSI_TMF_TASK_NOT_FOUND = 1,
    SCSI_TMF_LUN_NOT_FOUND = 2,
    SCSI_TMF_NOT_SUPPORTED = 5,
    SCSI_TMF_REJECTED = 255,
};

int scsi_controller_create(struct hv_reactor *r, const char *name,
                           struct scsi_controller **out);
/* Detaches (destroys) every LU; no task may be in flight. */
void scsi_controller_destroy(struct scsi_controller *c);
/* Put `lu` in slot `lun` (< 64); -EBUSY if taken. Raises REPORTED LUNS DATA
 * HAS CHANGED on every nexus. The controller owns `lu` from here on. */
int scsi_controller_attach(struct scsi_controller *c, uint64_t lun, struct scsi_lu *lu);
/* Remove and return the LU (caller destroys it once its tasks are done), or NULL. */
struct scsi_lu *scsi_controller_detach(struct scsi_controller *c, uint64_t lun);
struct scsi_lu *scsi_controller_lu(struct scsi_controller *c, uint64_t lun);
/* A nexus appears (login) or goes (logout, connection lost): a new nexus gets
 * POWER ON/RESET unit attention; a gone one loses its reservations'
 * non-persistent state (RESERVE/RELEASE) and its pending unit attentions. */
void scsi_controller_nexus_add(struct scsi_controller *c, const struct scsi_nexus *n);
void scsi_controller_nexus_remove(struct scsi_controller *c, const struct scsi_nexus *n);
/* Queue a unit attention for every nexus (CAPACITY DATA HAS CHANGED after a
 * resize: asc 0x2A ascq 0x09; REPORTED LUNS CHANGED: 0x3F 0x0E). lun = UINT64_MAX: all. */
void scsi_controller_raise_ua(struct scsi_controller *c, uint64_t lun, uint8_t asc, uint8_t ascq);
/* For LU implementations: a unit attention for the nexuses of one initiator
 * port (NULL: every nexus), except the nexus with id `except_id` (0: none). */
void scsi_controller_raise_ua_for(struct scsi_controller *c, uint64_t lun, const char *initiator,
                                  uint64_t except_id, uint8_t asc, uint8_t ascq);
/* For LU implementations (PREEMPT AND ABORT): abort the tasks of `lun` that
 * came from `initiator`'s nexuses, except those of nexus `except_id`. */
void scsi_controller_abort_initiator(struct scsi_controller *c, uint64_t lun,
                                     const char *initiator, uint64_t except_id);
/* Tasks in the task set (all LUs); for draining before destroy. */
unsigned scsi_controller_tasks_in_flight(const struct scsi_controller *c);
/* Run one command; completes through task->done. */
void scsi_controller_execute(struct scsi_controller *c, struct scsi_task *task);
/* Task management; synchronous answer (aborted tasks still complete through
 * their done(), with is_aborted set, and the transport drops their response). */
enum scsi_tmf_response scsi_controller_tmf(struct scsi_controller *c, const struct scsi_nexus *n,
                                           enum scsi_tmf fn, uint64_t lun, uint32_t ref_tag);

/* ---------------------------------------------------- the emulated disk */

/*
 * SBC-3/SPC-4 over any bdev: INQUIRY (VPD 00, 80, 83, B0, B1, B2), READ
 * CAPACITY 10/16, READ/WRITE 6/10/12/16, WRITE AND VERIFY 10/12/16, VERIFY
 * 10/12/16, PRE-FETCH 10/16, COMPARE AND WRITE, WRITE SAME 10/16 (UNMAP,
 * NDOB), UNMAP, GET LBA STATUS, SYNCHRONIZE CACHE 10/16, MODE SENSE/SELECT
 * 6/10 (read-write error recovery, caching, control, informational
 * exceptions), REPORT LUNS, REPORT SUPPORTED OPERATION CODES, TEST UNIT
 * READY, REQUEST SENSE, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL,
 * RESERVE/RELEASE 6/10 and PERSISTENT RESERVE IN/OUT (every service action
 * and type). Limits, each reported as the standard says: persistent
 * reservations live in memory (PTPL_C=0, APTPL refused); mode pages have no
 * saved values (PC=3 and SP=1 are refused); SYNCHRONIZE CACHE with IMMED
 * still answers after the flush; START STOP UNIT never stops the unit.
 * No allocation per command: each disk has a pool of bdev requests and a
 * scratch buffer, and commands wait in FIFO order when they run out.
 */

struct scsi_disk_options {
    bool is_read_only;              /* WRITE PROTECT */
    const char *vendor;             /* INQUIRY, 8 chars; NULL = "HVSTOR" */
    const char *product;            /* 16 chars; NULL = "Virtual Disk" */
    const char *serial;             /* VPD 0x80; NULL = derived from bdev uuid */
};

/* An SBC disk on `bd`. The LU does not own `bd`: the caller closes it after
 * destroying the LU. */
int scsi_disk_create(struct bdev *bd, const struct scsi_disk_options *opt,
                     struct scsi_lu **out, struct hv_err *err);
/* Per-disk statistics for `hvctl disk stats`: adds "commands", "reads",
 * "writes", "other", "errors", "bytes_read", "bytes_written",
 * "latency_histogram_us" (array of {"le": bound, "count": n}) to obj. */
void scsi_disk_stats(struct scsi_lu *lu, json_t *obj);
/* After the bdev was resized: report the new capacity, raise the UA. */
void scsi_disk_capacity_changed(struct scsi_lu *lu);

#endif /* HVSTOR_HV_SCSI_H */
