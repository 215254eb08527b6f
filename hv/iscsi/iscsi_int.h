/*
 * iscsi_int — internal to hv/iscsi: PDU layout, the decoded header, the
 * connection (one per session: we negotiate MaxConnections=1), commands,
 * the send queue, login key handling and the CHAP hashes.
 *
 * The receive path is a byte-driven state machine (iscsi_conn_rx), so the
 * same code runs from a socket, from a staging buffer and from a fuzzer.
 */
#ifndef HVSTOR_HV_ISCSI_INT_H
#define HVSTOR_HV_ISCSI_INT_H

#include "iscsi.h"

/* ------------------------------------------------------------ PDU layout */

#define ISCSI_BHS_BYTES 48
#define ISCSI_DIGEST_BYTES 4
#define ISCSI_MAX_AHS_BYTES (255 * 4)

enum iscsi_opcode {
    /* initiator */
    ISCSI_OP_NOP_OUT = 0x00,
    ISCSI_OP_SCSI_CMD = 0x01,
    ISCSI_OP_TMF_REQ = 0x02,
    ISCSI_OP_LOGIN_REQ = 0x03,
    ISCSI_OP_TEXT_REQ = 0x04,
    ISCSI_OP_DATA_OUT = 0x05,
    ISCSI_OP_LOGOUT_REQ = 0x06,
    ISCSI_OP_SNACK = 0x10,
    /* target */
    ISCSI_OP_NOP_IN = 0x20,
    ISCSI_OP_SCSI_RSP = 0x21,
    ISCSI_OP_TMF_RSP = 0x22,
    ISCSI_OP_LOGIN_RSP = 0x23,
    ISCSI_OP_TEXT_RSP = 0x24,
    ISCSI_OP_DATA_IN = 0x25,
    ISCSI_OP_LOGOUT_RSP = 0x26,
    ISCSI_OP_R2T = 0x31,
    ISCSI_OP_ASYNC = 0x32,
    ISCSI_OP_REJECT = 0x3f,
};

#define ISCSI_RSVD_TAG 0xffffffffu

/* Reject reasons (RFC 7143 11.17.1) */
#define ISCSI_REJECT_DATA_DIGEST 0x02
#define ISCSI_REJECT_SNACK 0x03
#define ISCSI_REJECT_PROTOCOL 0x04
#define ISCSI_REJECT_NOT_SUPPORTED 0x05
#define ISCSI_REJECT_IMMEDIATE 0x06
#define ISCSI_REJECT_TASK_IN_PROGRESS 0x07
#define ISCSI_REJECT_INVALID_FIELD 0x09
#define ISCSI_REJECT_WAITING_LOGOUT 0x0c

/* Login status (class << 8 | detail) */
#define ISCSI_LOGIN_OK 0x0000
#define ISCSI_LOGIN_INITIATOR_ERROR 0x0200
#define ISCSI_LOGIN_AUTH_FAILED 0x0201
#define ISCSI_LOGIN_FORBIDDEN 0x0202
#define ISCSI_LOGIN_NOT_FOUND 0x0203
#define ISCSI_LOGIN_UNSUPPORTED_VERSION 0x0205
#define ISCSI_LOGIN_MISSING_PARAMETER 0x0207
#define ISCSI_LOGIN_SESSION_TYPE 0x0209
#define ISCSI_LOGIN_NO_SESSION 0x020a
#define ISCSI_LOGIN_INVALID_REQUEST 0x020b
#define ISCSI_LOGIN_TARGET_ERROR 0x0300
#define ISCSI_LOGIN_OUT_OF_RESOURCES 0x0302

/* Login stages */
#define ISCSI_STAGE_SECURITY 0
#define ISCSI_STAGE_OPERATIONAL 1
#define ISCSI_STAGE_FULL_FEATURE 3

/*
 * A basic header segment decoded once into native fields. Only the fields
 * of the PDU's opcode are meaningful; iscsi_pdu_decode fills exactly those.
 */
struct iscsi_pdu {
    uint8_t opcode;
    bool is_immediate;
    bool is_final;                  /* F (byte 1 bit 7) */
    uint8_t flags;                  /* byte 1 whole */
    uint8_t ahs_words;              /* TotalAHSLength in 4-byte words */
    uint32_t data_bytes;            /* DataSegmentLength */
    uint8_t lun_raw[8];
    uint64_t lun;                   /* decoded LUN; UINT64_MAX when not addressable */
    uint32_t itt;
    uint32_t ttt;                   /* Data-Out, NOP-Out, Text */
    uint32_t cmdsn;
    uint32_t expstatsn;
    /* SCSI Command */
    bool is_read;
    bool is_write;
    uint8_t task_attr;
    uint32_t edtl;
    uint8_t cdb[16];
    /* Data-Out */
    uint32_t datasn;
    uint32_t buffer_offset;
    /* TMF */
    uint8_t tmf_function;
    uint32_t ref_task_tag;
    uint32_t ref_cmdsn;
    /* Login / Text */
    bool is_transit;                /* T */
    bool is_continue;               /* C */
    uint8_t csg;
    uint8_t nsg;
    uint8_t version_max;
    uint8_t version_min;
    uint8_t isid[6];
    uint16_t tsih;
    uint16_t cid;
    /* Logout */
    uint8_t logout_reason;
};

/* Decode and validate a BHS; -EPROTO for an opcode an initiator may not send. */
int iscsi_pdu_decode(const uint8_t bhs[ISCSI_BHS_BYTES], struct iscsi_pdu *p);
uint64_t iscsi_lun_decode(const uint8_t raw[8]);
void iscsi_lun_encode(uint64_t lun, uint8_t raw[8]);
/* Set DataSegmentLength/TotalAHSLength of an outgoing header. */
void iscsi_bhs_set_lengths(uint8_t bhs[ISCSI_BHS_BYTES], uint8_t ahs_words, uint32_t data_bytes);
/* Digest as it goes on the wire (little-endian CRC32C, as libiscsi and Linux do). */
void iscsi_digest_put(uint8_t out[4], uint32_t crc);
uint32_t iscsi_digest_get(const uint8_t in[4]);

/* ------------------------------------------------------------ text keys */

#define ISCSI_MAX_KEYS 64
#define ISCSI_KEY_NAME_MAX 63
#define ISCSI_TEXT_MAX (64 * 1024)

struct iscsi_key {
    const char *name;
    const char *value;
};

struct iscsi_keys {
    struct iscsi_key key[ISCSI_MAX_KEYS];
    int count;
};

/*
 * Split "k=v\0k=v\0" in place (the buffer must be writable; a missing final
 * NUL is tolerated by the caller appending one). -EINVAL for a pair without
 * '=', an empty or too long name, or more than ISCSI_MAX_KEYS pairs.
 */
int iscsi_keys_parse(char *text, size_t len, struct iscsi_keys *out);
const char *iscsi_keys_get(const struct iscsi_keys *k, const char *name);

/* A growable "k=v\0" buffer for responses. */
struct iscsi_text {
    char *buf;
    size_t len;
    size_t cap;
    bool is_oom;
};
void iscsi_text_add(struct iscsi_text *t, const char *name, const char *fmt, ...)
    HV_PRINTF(3, 4);
void iscsi_text_free(struct iscsi_text *t);

/* Numbers as RFC 7143 5.1 allows: decimal, 0x hex. -EINVAL / -ERANGE. */
int iscsi_parse_number(const char *s, uint64_t *out);
/* Binary values: "0x" hex or "0b" base64. Returns the byte count or -EINVAL. */
int iscsi_parse_binary(const char *s, uint8_t *out, size_t cap);

/*
 * The negotiated session parameters (RFC 7143 13), starting from defaults.
 * `initiator_mrdsl` bounds what we send; our own receive limit is fixed.
 */
struct iscsi_params {
    bool header_digest;
    bool data_digest;
    bool initial_r2t;
    bool immediate_data;
    uint32_t initiator_mrdsl;
    uint32_t max_burst;
    uint32_t first_burst;
    uint32_t max_outstanding_r2t;
    uint32_t time2wait;
    uint32_t time2retain;
    bool data_pdu_in_order;
    bool data_sequence_in_order;
    uint32_t max_connections;
    uint32_t erl;
};

void iscsi_params_default(struct iscsi_params *p);
/*
 * Answer one operational key the initiator sent: adds the response pair to
 * `rsp` and updates `p`. Returns 1 when the key was operational (handled),
 * 0 when it is not an operational key, -EINVAL for a value that breaks the
 * protocol (the login must fail as an initiator error).
 */
int iscsi_params_negotiate(struct iscsi_params *p, const char *name, const char *value,
                           struct iscsi_text *rsp);

/* ------------------------------------------------------------ CHAP math */

#define ISCSI_CHAP_MD5 5
#define ISCSI_CHAP_SHA1 6
#define ISCSI_CHAP_SHA256 7
#define ISCSI_HASH_MAX 32

/* Digest length of a CHAP algorithm, 0 if unsupported. */
size_t iscsi_chap_digest_bytes(int algorithm);
/* H(id || secret || challenge), the CHAP response (RFC 1994 4.1). */
int iscsi_chap_response(int algorithm, uint8_t id, const char *secret, const uint8_t *challenge,
                        size_t challenge_bytes, uint8_t out[ISCSI_HASH_MAX]);
void iscsi_md5(const void *data, size_t len, uint8_t out[16]);
void iscsi_sha1(const void *data, size_t len, uint8_t out[20]);
void iscsi_sha256(const void *data, size_t len, uint8_t out[32]);
/* Multi-part hash for CHAP: pieces concatenated. */
void iscsi_hash_parts(int algorithm, const void *const *parts, const size_t *lens, int n,
                      uint8_t *out);

/* ----------------------------------------------------- connections/cmds */

#define ISCSI_QUEUE_DEPTH 128
#define ISCSI_CMD_SLOTS (ISCSI_QUEUE_DEPTH + 32)    /* + immediate and finishing */
#define ISCSI_OUR_MRDSL (256 * 1024)                /* what we accept per PDU */
#define ISCSI_OUR_MAX_BURST (1024 * 1024)
#define ISCSI_OUR_MAX_R2T 8
#define ISCSI_MAX_XFER_BYTES (64u * 1024 * 1024)
/* Buffers above ISCSI_KEEP_BUFFER_BYTES held by one connection at once; a
 * command that would exceed it gets TASK SET FULL and is retried. */
#define ISCSI_CONN_BIG_BUDGET (256u * 1024 * 1024)
#define ISCSI_KEEP_BUFFER_BYTES (256u * 1024)       /* cmd buffers above are not kept */
#define ISCSI_STAGING_BYTES (64 * 1024)
#define ISCSI_ITT_BUCKETS 256

enum iscsi_cmd_state {
    ISCSI_CMD_FREE,
    ISCSI_CMD_ORDER_WAIT,           /* CmdSN hole before it */
    ISCSI_CMD_DATA_WAIT,            /* waiting for Data-Out */
    ISCSI_CMD_EXEC,                 /* in the controller */
    ISCSI_CMD_SENDING,              /* response queued */
};

struct iscsi_r2t {
    uint32_t ttt;
    uint32_t offset;
    uint32_t length;
    uint32_t received;
    uint32_t next_datasn;           /* Data-Out PDUs of this burst count from 0 */
    bool is_active;
};

struct iscsi_conn;

struct iscsi_cmd {
    struct scsi_task task;
    struct iscsi_conn *conn;
    struct iscsi_cmd *next;         /* free list or CmdSN order list */
    struct iscsi_cmd *hash_next;    /* ITT hash */
    enum iscsi_cmd_state state;
    uint16_t index;
    bool is_immediate;
    bool is_aborted;
    bool is_hashed;
    bool is_final_seen;             /* F on the command: no unsolicited data follows */
    bool has_early_sense;           /* answered here with CHECK CONDITION */
    bool is_acked;                  /* counted in the CmdSN window */
    uint32_t itt;
    uint32_t cmdsn;
    uint8_t lun_raw[8];
    uint32_t edtl;
    uint8_t *buf;
    size_t buf_cap;
    struct iovec iov;
    uint32_t received;              /* Data-Out bytes so far (incl. immediate) */
    uint32_t unsolicited_end;
    uint32_t unsolicited_got;       /* next in-order offset of unsolicited data */
    uint32_t unsolicited_datasn;
    uint32_t r2t_next;              /* next offset to ask for */
    uint32_t r2tsn;
    uint32_t datasn;                /* Data-In PDUs + R2Ts sent */
    uint16_t ttt_gen;
    struct iscsi_r2t r2t[ISCSI_OUR_MAX_R2T];
    uint8_t rsp_data[2 + SCSI_SENSE_MAX];
};

/* One queued outgoing PDU: header (+digest), data by reference, pad+digest. */
struct iscsi_tx {
    struct iscsi_tx *next;
    uint8_t hdr[ISCSI_BHS_BYTES + ISCSI_DIGEST_BYTES];
    uint8_t hdr_bytes;
    uint8_t trailer_bytes;
    uint8_t trailer[8];
    const uint8_t *data;
    uint32_t data_bytes;
    size_t sent;
    struct iscsi_cmd *release;      /* released once this entry is on the wire */
    void *owned;                    /* freed once sent */
    bool close_after;               /* logout response, login failure */
};

struct iscsi_tx_chunk {
    struct iscsi_tx_chunk *next;
    struct iscsi_tx tx[64];
};

enum iscsi_rx_state { RX_BHS, RX_AHS, RX_DATA, RX_TRAILER };

enum iscsi_auth_state { AUTH_START, AUTH_WAIT_CHAP_A, AUTH_WAIT_CHAP_R, AUTH_DONE };

struct iscsi_server;

struct iscsi_conn {
    struct iscsi_server *server;
    struct iscsi_conn *next;        /* server's list */
    struct iscsi_conn *dirty_next;
    bool is_dirty;
    int fd;
    struct hv_watch *watch;
    uint32_t watch_events;
    char peer[64];
    char local_addr[64];
    uint16_t local_port;

    bool is_full_feature;
    bool is_closing;                /* socket gone or going; no more I/O */
    bool is_draining;               /* server shutdown: no new commands */
    bool is_logged_out;             /* logout response queued */
    bool is_zombie;                 /* closed, nothing in flight: free at prepoll */
    struct iscsi_conn *zombie_next;

    /* receive */
    enum iscsi_rx_state rx_state;
    uint8_t rx_hdr[ISCSI_BHS_BYTES + ISCSI_MAX_AHS_BYTES + ISCSI_DIGEST_BYTES];
    size_t rx_have;
    size_t rx_need;
    struct iscsi_pdu pdu;
    uint8_t *rx_dst;                /* data destination, NULL = discard */
    uint32_t rx_data_len;
    uint8_t rx_trailer[8];
    uint32_t rx_trailer_need;
    struct iscsi_cmd *rx_cmd;
    int rx_reject;                  /* reject reason to send after the data, 0 none */
    bool rx_drop;                   /* PDU silently dropped once its data is in */
    bool rx_busy;                   /* no command slot: TASK SET FULL */
    bool rx_fatal;                  /* close after the reject */
    uint8_t *rx_buf;                /* data of non-SCSI PDUs */
    size_t rx_buf_cap;
    uint8_t discard[4096];
    uint8_t *staging;
    size_t staging_len;
    size_t staging_off;
    uint64_t last_rx_ns;

    /* send */
    struct iscsi_tx *tx_head;
    struct iscsi_tx *tx_tail;
    struct iscsi_tx *tx_free;
    struct iscsi_tx_chunk *tx_chunks;
    unsigned tx_queued;

    /* login */
    uint8_t login_stage;
    enum iscsi_auth_state auth_state;
    bool login_started;
    bool login_sent_tpgt;
    bool login_declared_mrdsl;
    char *login_text;               /* continued login/text request */
    size_t login_text_len;
    struct iscsi_auth auth;
    int chap_algorithm;
    uint8_t chap_id;
    uint8_t chap_challenge[32];
    char *text_pending;             /* long Text response, sent in pieces */
    size_t text_pending_len;
    size_t text_pending_off;
    uint32_t text_ttt;

    /* session */
    bool is_discovery;
    char initiator[224];
    char target[224];
    uint8_t isid[6];
    uint16_t tsih;
    uint16_t cid;
    struct iscsi_params params;
    bool use_header_digest;         /* on from the first full feature PDU */
    bool use_data_digest;
    struct scsi_controller *ctl;
    struct scsi_nexus nexus;
    bool has_nexus;
    uint32_t stat_sn;
    uint32_t exp_cmdsn;
    uint32_t max_cmdsn;

    /* commands */
    struct iscsi_cmd *cmds;         /* ISCSI_CMD_SLOTS */
    struct iscsi_cmd *cmd_free;
    struct iscsi_cmd *order_head;   /* waiting for CmdSN holes, sorted */
    struct iscsi_cmd *itt_hash[ISCSI_ITT_BUCKETS];
    unsigned cmds_exec;             /* in the controller */
    unsigned cmds_acked;            /* acknowledged, not yet finished */
    uint64_t big_bytes;             /* sum of large command buffers held */
    uint16_t ttt_gen;

    /* keepalive */
    struct hv_timer timer;
    bool nop_outstanding;
    uint32_t nop_ttt;
    uint64_t nop_sent_ns;
    uint64_t created_ns;
};

struct iscsi_server {
    struct hv_reactor *reactor;
    int listen_fd;
    struct hv_watch *watch;
    uint16_t port;
    char addr[64];
    const struct iscsi_directory_ops *ops;
    void *arg;
    struct iscsi_conn *conns;
    struct iscsi_conn *dirty;
    struct iscsi_conn *zombies;
    int prepoll;
    uint16_t next_tsih;
    uint64_t next_nexus_id;
    bool is_shutting_down;
    bool *shutdown_done;
    uint64_t nop_interval_ms;
    uint64_t nop_timeout_ms;
    uint64_t login_timeout_ms;
    /* Detached connections (fd < 0) hand what they send here (unit tests). */
    void (*tx_sink)(void *arg, const uint8_t *buf, size_t len);
    void *tx_sink_arg;
};

/* iscsi_conn.c */
struct iscsi_conn *iscsi_conn_new(struct iscsi_server *s, int fd);
/* Feed received bytes (socket staging, tests, fuzzers). Returns bytes consumed;
 * stops early when the connection closes. */
size_t iscsi_conn_rx(struct iscsi_conn *c, const uint8_t *buf, size_t len);
void iscsi_conn_close(struct iscsi_conn *c, const char *why);
void iscsi_conn_flush(struct iscsi_conn *c);
void iscsi_conn_free_now(struct iscsi_conn *c);
struct iscsi_tx *iscsi_tx_get(struct iscsi_conn *c);
/* Queue a PDU; the header's lengths, digests and padding are filled here. */
void iscsi_tx_queue(struct iscsi_conn *c, struct iscsi_tx *tx);
void iscsi_conn_mark_dirty(struct iscsi_conn *c);
void iscsi_conn_send_reject(struct iscsi_conn *c, uint8_t reason, const uint8_t *bhs);
void iscsi_conn_fill_sn(struct iscsi_conn *c, uint8_t *bhs, bool advance_statsn);
void iscsi_conn_timer(void *arg);
void iscsi_conn_drain(struct iscsi_conn *c);

/* iscsi_server.c: a server without a socket, for tests and fuzzers. */
int iscsi_server_create_detached(struct hv_reactor *r, const struct iscsi_directory_ops *ops,
                                 void *arg, struct iscsi_server **out);

/* iscsi_login.c */
void iscsi_login_pdu(struct iscsi_conn *c, const uint8_t *data, uint32_t len);
void iscsi_text_pdu(struct iscsi_conn *c, const uint8_t *data, uint32_t len);

#endif
