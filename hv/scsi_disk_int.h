/*
 * Internal to the emulated disk (scsi_disk.c, scsi_spc.c, scsi_pr.c): the
 * disk's state and the per-task context kept in scsi_task.lu_ctx.
 */
#ifndef HVSTOR_HV_SCSI_DISK_INT_H
#define HVSTOR_HV_SCSI_DISK_INT_H

#include "scsi.h"

#define DISK_IO_POOL 256                /* bdev requests per LU */
#define DISK_IO_IOVS 32                 /* iovec entries per bdev request */
#define DISK_SCRATCH_BYTES (1024u * 1024u)
#define DISK_MAX_TRANSFER_BYTES (8u * 1024u * 1024u)
#define DISK_MAX_CAW_BLOCKS 255u        /* fits in the scratch buffer at 4 KiB blocks */
#define DISK_MAX_UNMAP_DESCRIPTORS 256u
#define DISK_MAX_UNMAP_BLOCKS 0x100000u /* 512 MiB at 512-byte blocks; libiscsi wants <= 1M */
/* 32 MiB - 512 at 512-byte blocks: libiscsi writes 64 Ki blocks in one WRITE(16),
 * past MAXIMUM TRANSFER LENGTH, whenever MAX WRITE SAME LENGTH allows that many. */
#define DISK_MAX_WRITE_SAME_BLOCKS 0xFFFFu
#define DISK_PR_MAX_REGISTRANTS 128
#define DISK_LATENCY_BUCKETS 24         /* powers of two of microseconds */

/* Which commands a persistent reservation lets through (SPC-4 table 50,
 * SBC-3 table 13): ALWAYS = allowed for everyone, READ = allowed unless
 * an exclusive-access type excludes this nexus, WRITE = only holders. */
enum pr_class { PR_ALWAYS, PR_READ, PR_WRITE, PR_OWN };

struct disk_io {
    struct scsi_disk *disk;
    struct scsi_task *task;
    struct disk_io *next_free;
    struct bdev_io *bio;
    struct iovec iov[DISK_IO_IOVS];
};

struct pr_registrant {
    bool is_used;
    uint64_t key;
    char initiator[224];
};

struct pr_state {
    uint32_t generation;
    struct pr_registrant reg[DISK_PR_MAX_REGISTRANTS];
    bool is_reserved;
    uint8_t type;                   /* PR_TYPE_* */
    int holder;                     /* registrant index (not used for *_AR) */
    /* RESERVE(6)/(10), SPC-2 style: one nexus */
    bool is_spc2_reserved;
    uint64_t spc2_holder;
};

#define PR_TYPE_WE 1
#define PR_TYPE_EA 3
#define PR_TYPE_WE_RO 5
#define PR_TYPE_EA_RO 6
#define PR_TYPE_WE_AR 7
#define PR_TYPE_EA_AR 8

struct disk_stats {
    uint64_t commands;
    uint64_t reads;
    uint64_t writes;
    uint64_t other;
    uint64_t errors;
    uint64_t bytes_read;
    uint64_t bytes_written;
    uint64_t latency[DISK_LATENCY_BUCKETS];
};

struct scsi_disk {
    struct scsi_lu lu;              /* first: the LU is the disk */
    struct bdev *bd;
    struct hv_reactor *reactor;
    char vendor[9];
    char product[17];
    char serial[33];
    uint8_t naa[16];
    uint32_t block_bytes;
    uint64_t blocks;
    uint8_t physical_exponent;      /* log2(physical / logical) */
    uint32_t max_transfer_blocks;
    uint32_t granularity_blocks;
    bool is_read_only;
    /* mode parameters (current values; saving is not supported) */
    bool is_wce;
    bool is_swp;
    bool is_stopped;
    unsigned prevent_count;
    /* bdev request pool and its waiters */
    uint8_t *pool_mem;
    struct disk_io *free_io;
    struct scsi_task *io_wait_head, *io_wait_tail;
    /* scratch buffer: one owner at a time (WRITE SAME pattern, compares) */
    uint8_t *scratch;
    struct scsi_task *scratch_owner;
    struct scsi_task *scratch_wait_head, *scratch_wait_tail;
    /* range serialization for COMPARE AND WRITE */
    struct scsi_task *active_head;  /* tasks holding an LBA range */
    unsigned active_exclusive;
    struct scsi_task *range_wait_head, *range_wait_tail;
    struct hv_deferred kick;
    struct pr_state pr;
    struct disk_stats stats;
};

enum disk_wait { WAIT_NONE, WAIT_RANGE, WAIT_IO, WAIT_SCRATCH };

/* Per task, in task->lu_ctx. */
struct disk_cmd {
    struct scsi_disk *disk;
    struct disk_io *io;
    void (*start)(struct scsi_task *t);             /* once resources are held */
    void (*bio_done)(struct scsi_task *t, int status);
    uint64_t lba;
    uint64_t blocks;
    uint64_t pos;                   /* bytes done (chunked operations) */
    uint64_t len;                   /* bytes in all */
    uint32_t bio_flags;
    uint32_t index;                 /* UNMAP descriptor / GET LBA STATUS entry */
    uint32_t count;
    uint32_t alloc;
    uint8_t kind;                   /* stats: 0 other, 1 read, 2 write */
    uint8_t wait;                   /* enum disk_wait */
    bool needs_range;
    bool is_exclusive;
    bool needs_io;
    bool needs_scratch;
    bool in_active;
    bool in_execute;
    bool is_zero_pattern;
    bool then_verify;               /* WRITE AND VERIFY: read back after writing */
    bool has_partial_tail;          /* READ into an EDTL that ends inside a block */
    struct scsi_task *act_prev, *act_next;
};

_Static_assert(sizeof(struct disk_cmd) <= sizeof(((struct scsi_task *)0)->lu_ctx),
               "disk_cmd must fit in lu_ctx");

static inline struct disk_cmd *disk_cmd(struct scsi_task *t)
{
    return (struct disk_cmd *)(void *)t->lu_ctx;
}

static inline uint64_t nexus_id_of(const struct scsi_task *t)
{
    return t->nexus ? t->nexus->id : 0;
}

static inline const char *initiator_of(const struct scsi_task *t)
{
    return t->nexus ? t->nexus->initiator : "";
}

/* scsi_disk.c */
void disk_finish(struct scsi_task *t);
#define disk_fail(t, key, code) \
    do { scsi_task_check((t), (key), (code)); disk_finish(t); } while (0)
/* INVALID FIELD IN CDB pointing at byte `field`, bit `bit` (-1: whole byte). */
#define disk_fail_cdb(t, field, bit) \
    do { scsi_task_invalid_field((t), true, (field), (bit)); disk_finish(t); } while (0)
#define disk_fail_param(t, field, bit) \
    do { scsi_task_invalid_field((t), false, (field), (bit)); disk_finish(t); } while (0)

/* scsi_spc.c: the SPC commands that need no bdev I/O */
void spc_inquiry(struct scsi_disk *d, struct scsi_task *t);
void spc_mode_sense(struct scsi_disk *d, struct scsi_task *t);
void spc_mode_select(struct scsi_disk *d, struct scsi_task *t);
void spc_report_supported_opcodes(struct scsi_disk *d, struct scsi_task *t);
void spc_request_sense(struct scsi_disk *d, struct scsi_task *t);
/* The command table: PR class of an opcode/service action; false when the
 * disk does not implement it. */
bool spc_command_info(const uint8_t *cdb, enum pr_class *cls);

/* scsi_pr.c */
bool pr_is_conflict(struct scsi_disk *d, struct scsi_task *t, enum pr_class cls);
void pr_in(struct scsi_disk *d, struct scsi_task *t);
void pr_out(struct scsi_disk *d, struct scsi_task *t);
void pr_reserve_spc2(struct scsi_disk *d, struct scsi_task *t);
void pr_release_spc2(struct scsi_disk *d, struct scsi_task *t);
void pr_nexus_gone(struct scsi_disk *d, const struct scsi_nexus *n);
void pr_lu_reset(struct scsi_disk *d);

#endif
