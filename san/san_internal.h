/* Internal to san/: shared between its source files, never included outside. */
#ifndef HVSTOR_SAN_INTERNAL_H
#define HVSTOR_SAN_INTERNAL_H

#include "san.h"

/* san_cmd.flags */
#define SAN_CMD_QUEUED (1u << 0)    /* on one of the session's queues */
#define SAN_CMD_INFLIGHT (1u << 1)  /* handed to libiscsi */
#define SAN_CMD_REPLAYED (1u << 2)  /* resubmitted after a reconnect */
#define SAN_CMD_VERIFY (1u << 3)    /* the session's own post-reconnect check */
#define SAN_CMD_ABORTING (1u << 4)  /* a TMF for it is out: never replayed */

/* ASC/ASCQ used for commands the transport could not deliver */
#define SAN_ASC_NOT_READY_CAUSE_NOT_REPORTABLE 0x0400
#define SAN_ASC_NOT_READY_MANUAL_INTERVENTION 0x0403

void san_sense_build(uint8_t *sense, uint32_t *sense_len, uint8_t key, uint16_t asc_ascq);
void san_cdb_inquiry(uint8_t cdb[6], bool evpd, uint8_t page, uint16_t alloc_len);
void san_cdb_report_luns(uint8_t cdb[12], uint32_t alloc_len);
void san_cdb_read_capacity16(uint8_t cdb[16], uint32_t alloc_len);

/* session.c, for ops.c: remember a PR key registered through this session */
void san_session_note_pr_key(struct san_session *s, uint64_t lun, uint64_t key);
void san_session_forget_pr_key(struct san_session *s, uint64_t lun);
struct hv_reactor *san_session_reactor(const struct san_session *s);
/* ops.c: a UNIT ATTENTION that an operation of ours met and retried. */
void san_session_report_ua(struct san_session *s, const struct san_cmd *c);

/* Fill a command that reads `bytes` into `buf`. */
void san_cmd_prepare(struct san_cmd *cmd, uint64_t lun, const uint8_t *cdb, uint8_t cdb_len,
                     enum san_xfer dir, struct iovec *iov, void *buf, uint32_t bytes);

#endif
