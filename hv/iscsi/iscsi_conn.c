/*
 * One iSCSI connection (and, since we negotiate MaxConnections=1, its
 * session): the byte-driven receive state machine, the send queue, and the
 * full feature phase — SCSI commands with immediate/unsolicited data and
 * R2T, Data-In with phase-collapsed status, the CmdSN window, NOP, task
 * management and logout.
 *
 * Data never takes a detour it can avoid: a command's buffer is allocated
 * (or reused from the slot) when its header arrives, Data-Out payload is
 * read straight into it, the controller reads into it, and Data-In PDUs are
 * sent from it with sendmsg over the header, payload and digest pieces.
 * Everything generated during one reactor turn goes out in as few sendmsg
 * calls as the socket allows (the server flushes dirty connections just
 * before the reactor sleeps).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "iscsi_int.h"

static void rx_reset(struct iscsi_conn *c);
static void cmd_release(struct iscsi_cmd *cmd);
static void conn_check_drain(struct iscsi_conn *c);

/* Serial number arithmetic (RFC 1982) on 32-bit sequence numbers. */
static bool sn_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static bool sn_le(uint32_t a, uint32_t b) { return (int32_t)(a - b) <= 0; }

/* ------------------------------------------------------------- send side */

static void tx_pool_grow(struct iscsi_conn *c)
{
    struct iscsi_tx_chunk *ch = calloc(1, sizeof(*ch));
    if (!ch)
        return;
    ch->next = c->tx_chunks;
    c->tx_chunks = ch;
    for (size_t i = 0; i < HV_ARRAY_SIZE(ch->tx); i++) {
        ch->tx[i].next = c->tx_free;
        c->tx_free = &ch->tx[i];
    }
}

struct iscsi_tx *iscsi_tx_get(struct iscsi_conn *c)
{
    if (!c->tx_free)
        tx_pool_grow(c);
    struct iscsi_tx *tx = c->tx_free;
    if (!tx)
        return NULL;
    c->tx_free = tx->next;
    memset(tx, 0, sizeof(*tx));
    return tx;
}

static void tx_put(struct iscsi_conn *c, struct iscsi_tx *tx)
{
    free(tx->owned);
    tx->owned = NULL;
    tx->next = c->tx_free;
    c->tx_free = tx;
}

void iscsi_conn_mark_dirty(struct iscsi_conn *c)
{
    if (c->is_dirty)
        return;
    c->is_dirty = true;
    c->dirty_next = c->server->dirty;
    c->server->dirty = c;
}

void iscsi_tx_queue(struct iscsi_conn *c, struct iscsi_tx *tx)
{
    uint32_t pad = (4 - (tx->data_bytes & 3)) & 3;

    iscsi_bhs_set_lengths(tx->hdr, 0, tx->data_bytes);
    tx->hdr_bytes = ISCSI_BHS_BYTES;
    if (c->use_header_digest) {
        iscsi_digest_put(tx->hdr + ISCSI_BHS_BYTES, hv_crc32c(tx->hdr, ISCSI_BHS_BYTES));
        tx->hdr_bytes += ISCSI_DIGEST_BYTES;
    }
    memset(tx->trailer, 0, sizeof(tx->trailer));
    tx->trailer_bytes = (uint8_t)pad;
    if (c->use_data_digest && tx->data_bytes) {
        uint32_t crc = hv_crc32c_update(hv_crc32c_init(), tx->data, tx->data_bytes);
        crc = hv_crc32c_update(crc, tx->trailer, pad);
        iscsi_digest_put(tx->trailer + pad, hv_crc32c_final(crc));
        tx->trailer_bytes += ISCSI_DIGEST_BYTES;
    }
    tx->next = NULL;
    if (c->tx_tail)
        c->tx_tail->next = tx;
    else
        c->tx_head = tx;
    c->tx_tail = tx;
    c->tx_queued++;
    iscsi_conn_mark_dirty(c);
}

static size_t tx_total(const struct iscsi_tx *tx)
{
    return (size_t)tx->hdr_bytes + tx->data_bytes + tx->trailer_bytes;
}

/* An entry is on the wire: release what waited for it. */
static bool tx_done(struct iscsi_conn *c, struct iscsi_tx *tx)
{
    bool close_after = tx->close_after;
    if (tx->release)
        cmd_release(tx->release);
    tx_put(c, tx);
    return close_after;
}

static void set_watch(struct iscsi_conn *c, uint32_t events)
{
    if (!c->watch || c->watch_events == events)
        return;
    if (hv_reactor_mod_fd(c->server->reactor, c->watch, events) == 0)
        c->watch_events = events;
}

static uint32_t wanted_events(const struct iscsi_conn *c)
{
    uint32_t ev = 0;
    if (!c->is_draining && !c->is_logged_out)
        ev |= EPOLLIN;
    if (c->tx_head)
        ev |= EPOLLOUT;
    return ev;
}

/* Consume `n` sent bytes from the head of the queue. True: close now. */
static bool tx_consume(struct iscsi_conn *c, size_t n)
{
    bool close_now = false;
    while (c->tx_head) {
        struct iscsi_tx *tx = c->tx_head;
        size_t left = tx_total(tx) - tx->sent;
        if (n < left) {
            tx->sent += n;
            break;
        }
        n -= left;
        c->tx_head = tx->next;
        if (!c->tx_head)
            c->tx_tail = NULL;
        c->tx_queued--;
        close_now |= tx_done(c, tx);
    }
    return close_now;
}

static int tx_add_piece(struct iovec *iov, int n, const void *base, size_t len, size_t *skip)
{
    if (*skip >= len) {
        *skip -= len;
        return n;
    }
    iov[n].iov_base = (uint8_t *)base + *skip;
    iov[n].iov_len = len - *skip;
    *skip = 0;
    return n + 1;
}

void iscsi_conn_flush(struct iscsi_conn *c)
{
    bool close_now = false;

    while (c->tx_head && !close_now) {
        if (c->fd < 0) {
            /* Detached (tests, fuzzing): the bytes go to the server's sink,
             * if any, else nowhere. */
            size_t all = 0;
            struct iscsi_server *s = c->server;
            for (struct iscsi_tx *tx = c->tx_head; tx; tx = tx->next) {
                all += tx_total(tx) - tx->sent;
                if (s->tx_sink && !c->is_closing) {
                    s->tx_sink(s->tx_sink_arg, tx->hdr, tx->hdr_bytes);
                    s->tx_sink(s->tx_sink_arg, tx->data, tx->data_bytes);
                    s->tx_sink(s->tx_sink_arg, tx->trailer, tx->trailer_bytes);
                }
            }
            close_now = tx_consume(c, all);
            break;
        }
        struct iovec iov[128];
        int n = 0;
        size_t skip = c->tx_head->sent;
        for (struct iscsi_tx *tx = c->tx_head; tx && n <= 125; tx = tx->next) {
            n = tx_add_piece(iov, n, tx->hdr, tx->hdr_bytes, &skip);
            if (tx->data_bytes)
                n = tx_add_piece(iov, n, tx->data, tx->data_bytes, &skip);
            if (tx->trailer_bytes)
                n = tx_add_piece(iov, n, tx->trailer, tx->trailer_bytes, &skip);
        }
        struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t w = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            iscsi_conn_close(c, "send failed");
            return;
        }
        close_now = tx_consume(c, (size_t)w);
    }
    if (close_now) {
        iscsi_conn_close(c, "logged out");
        return;
    }
    if (!c->is_closing)
        set_watch(c, wanted_events(c));
    conn_check_drain(c);
}

/* StatSN/ExpCmdSN/MaxCmdSN at bytes 24/28/32 of every target PDU. */
void iscsi_conn_fill_sn(struct iscsi_conn *c, uint8_t *bhs, bool advance_statsn)
{
    /* The window is the queue depth minus the acknowledged commands still
     * running; it only ever grows as commands finish, so MaxCmdSN never
     * moves backwards (initiators ignore a smaller one anyway). */
    uint32_t window = ISCSI_QUEUE_DEPTH - HV_MIN(c->cmds_acked, ISCSI_QUEUE_DEPTH);
    uint32_t max = c->exp_cmdsn + window - 1;
    if (sn_lt(c->max_cmdsn, max))
        c->max_cmdsn = max;
    hv_put_be32(bhs + 24, c->stat_sn);
    if (advance_statsn)
        c->stat_sn++;
    hv_put_be32(bhs + 28, c->exp_cmdsn);
    hv_put_be32(bhs + 32, c->max_cmdsn);
}

void iscsi_conn_send_reject(struct iscsi_conn *c, uint8_t reason, const uint8_t *bhs)
{
    struct iscsi_tx *tx = iscsi_tx_get(c);
    uint8_t *copy = malloc(ISCSI_BHS_BYTES);
    if (!tx || !copy) {
        free(copy);
        if (tx)
            tx_put(c, tx);
        iscsi_conn_close(c, "out of memory");
        return;
    }
    memcpy(copy, bhs, ISCSI_BHS_BYTES);
    tx->hdr[0] = ISCSI_OP_REJECT;
    tx->hdr[1] = 0x80;
    tx->hdr[2] = reason;
    hv_put_be32(tx->hdr + 16, ISCSI_RSVD_TAG);
    iscsi_conn_fill_sn(c, tx->hdr, true);
    tx->owned = copy;
    tx->data = copy;
    tx->data_bytes = ISCSI_BHS_BYTES;
    iscsi_tx_queue(c, tx);
}

/* ------------------------------------------------------------- commands */

static unsigned itt_bucket(uint32_t itt) { return (itt ^ (itt >> 8) ^ (itt >> 16)) % ISCSI_ITT_BUCKETS; }

static void cmd_hash_add(struct iscsi_cmd *cmd)
{
    struct iscsi_conn *c = cmd->conn;
    unsigned b = itt_bucket(cmd->itt);
    cmd->hash_next = c->itt_hash[b];
    c->itt_hash[b] = cmd;
    cmd->is_hashed = true;
}

static void cmd_hash_del(struct iscsi_cmd *cmd)
{
    if (!cmd->is_hashed)
        return;
    struct iscsi_cmd **pp = &cmd->conn->itt_hash[itt_bucket(cmd->itt)];
    while (*pp && *pp != cmd)
        pp = &(*pp)->hash_next;
    if (*pp)
        *pp = cmd->hash_next;
    cmd->is_hashed = false;
}

static struct iscsi_cmd *cmd_find(struct iscsi_conn *c, uint32_t itt)
{
    for (struct iscsi_cmd *cmd = c->itt_hash[itt_bucket(itt)]; cmd; cmd = cmd->hash_next) {
        if (cmd->itt == itt && !cmd->is_aborted)
            return cmd;
    }
    return NULL;
}

static struct iscsi_cmd *cmd_alloc(struct iscsi_conn *c)
{
    struct iscsi_cmd *cmd = c->cmd_free;
    if (!cmd)
        return NULL;
    c->cmd_free = cmd->next;
    cmd->next = NULL;
    cmd->hash_next = NULL;
    cmd->is_immediate = false;
    cmd->is_aborted = false;
    cmd->is_hashed = false;
    cmd->is_acked = false;
    cmd->is_final_seen = false;
    cmd->has_early_sense = false;
    cmd->received = 0;
    cmd->unsolicited_end = 0;
    cmd->unsolicited_got = 0;
    cmd->unsolicited_datasn = 0;
    cmd->r2t_next = 0;
    cmd->r2tsn = 0;
    cmd->datasn = 0;
    memset(cmd->r2t, 0, sizeof(cmd->r2t));
    cmd->state = ISCSI_CMD_ORDER_WAIT;
    return cmd;
}

static void cmd_buffer_free(struct iscsi_cmd *cmd)
{
    if (cmd->buf_cap > ISCSI_KEEP_BUFFER_BYTES)
        cmd->conn->big_bytes -= cmd->buf_cap;
    free(cmd->buf);
    cmd->buf = NULL;
    cmd->buf_cap = 0;
}

/* Buffers up to ISCSI_KEEP_BUFFER_BYTES stay with their slot, so steady
 * traffic allocates nothing; larger ones are per command and budgeted. */
static int cmd_buffer(struct iscsi_cmd *cmd, uint32_t bytes)
{
    struct iscsi_conn *c = cmd->conn;
    if (bytes == 0 || cmd->buf_cap >= bytes)
        return 0;
    size_t cap = HV_ALIGN_UP(bytes, HV_DIO_ALIGN);
    if (cap > ISCSI_KEEP_BUFFER_BYTES && c->big_bytes + cap > ISCSI_CONN_BIG_BUDGET)
        return -EBUSY;
    cmd_buffer_free(cmd);
    cmd->buf = hv_alloc_aligned(cap);
    if (!cmd->buf)
        return -ENOMEM;
    cmd->buf_cap = cap;
    if (cap > ISCSI_KEEP_BUFFER_BYTES)
        c->big_bytes += cap;
    return 0;
}

/* The command no longer holds a place in the CmdSN window. */
static void cmd_finish_window(struct iscsi_cmd *cmd)
{
    if (cmd->is_acked) {
        cmd->is_acked = false;
        cmd->conn->cmds_acked--;
    }
}

static void cmd_release(struct iscsi_cmd *cmd)
{
    struct iscsi_conn *c = cmd->conn;
    cmd_hash_del(cmd);
    cmd_finish_window(cmd);
    if (cmd->buf_cap > ISCSI_KEEP_BUFFER_BYTES)
        cmd_buffer_free(cmd);
    cmd->state = ISCSI_CMD_FREE;
    cmd->next = c->cmd_free;
    c->cmd_free = cmd;
}

/* Forget a command that never reached the controller (abort, close). */
static void cmd_drop_local(struct iscsi_cmd *cmd)
{
    struct iscsi_conn *c = cmd->conn;
    if (cmd->state == ISCSI_CMD_ORDER_WAIT) {
        struct iscsi_cmd **pp = &c->order_head;
        while (*pp && *pp != cmd)
            pp = &(*pp)->next;
        if (*pp)
            *pp = cmd->next;
    }
    cmd_release(cmd);
}

static void cmd_set_sense(struct iscsi_cmd *cmd, uint8_t key, uint8_t asc, uint8_t ascq)
{
    struct scsi_task *t = &cmd->task;
    memset(t->sense, 0, 18);
    t->sense[0] = 0x70;
    t->sense[2] = key;
    t->sense[7] = 10;
    t->sense[12] = asc;
    t->sense[13] = ascq;
    t->sense_len = 18;
    t->status = SCSI_STATUS_CHECK_CONDITION;
    t->in_bytes = 0;
    cmd->has_early_sense = true;
}

/* A group with no fixed length: all 16 bytes the basic header carries. */
static uint8_t cdb_length(uint8_t opcode)
{
    size_t len = scsi_cdb_group_length(opcode);
    return len ? (uint8_t)len : 16;
}

static void cmd_send_response(struct iscsi_cmd *cmd);

static void cmd_task_done(struct scsi_task *t)
{
    struct iscsi_cmd *cmd = t->transport_arg;
    struct iscsi_conn *c = cmd->conn;

    c->cmds_exec--;
    cmd_finish_window(cmd);
    if (c->is_closing || cmd->is_aborted || t->is_aborted) {
        cmd_release(cmd);
        conn_check_drain(c);
        return;
    }
    cmd_send_response(cmd);
}

static void cmd_execute(struct iscsi_cmd *cmd)
{
    struct iscsi_conn *c = cmd->conn;
    struct scsi_task *t = &cmd->task;

    if (cmd->has_early_sense) {
        cmd_finish_window(cmd);
        cmd_send_response(cmd);
        return;
    }
    t->lun = iscsi_lun_decode(cmd->lun_raw);
    t->nexus = &c->nexus;
    t->cdb_len = cdb_length(t->cdb[0]);
    t->tag = cmd->itt;
    t->in_bytes = 0;
    t->status = SCSI_STATUS_GOOD;
    t->sense_len = 0;
    t->done = cmd_task_done;
    t->transport_arg = cmd;
    t->next = NULL;
    t->is_aborted = false;
    cmd->iov.iov_base = cmd->buf;
    cmd->iov.iov_len = cmd->edtl;
    t->out_iov = NULL;
    t->out_iovcnt = 0;
    t->out_bytes = 0;
    t->in_iov = NULL;
    t->in_iovcnt = 0;
    if (t->dir == SCSI_DIR_OUT) {
        t->out_iov = &cmd->iov;
        t->out_iovcnt = cmd->edtl ? 1 : 0;
        t->out_bytes = cmd->edtl;
    } else if (t->dir == SCSI_DIR_IN) {
        t->in_iov = &cmd->iov;
        t->in_iovcnt = cmd->edtl ? 1 : 0;
    }
    cmd->state = ISCSI_CMD_EXEC;
    c->cmds_exec++;
    scsi_controller_execute(c->ctl, t);
}

static uint32_t cmd_make_ttt(struct iscsi_cmd *cmd)
{
    struct iscsi_conn *c = cmd->conn;
    c->ttt_gen++;
    if (c->ttt_gen == 0xffff)
        c->ttt_gen = 1;
    return ((uint32_t)c->ttt_gen << 16) | cmd->index;
}

static void cmd_send_r2ts(struct iscsi_cmd *cmd)
{
    struct iscsi_conn *c = cmd->conn;
    uint32_t max_r2t = HV_MIN(c->params.max_outstanding_r2t, (uint32_t)ISCSI_OUR_MAX_R2T);

    while (cmd->r2t_next < cmd->edtl) {
        struct iscsi_r2t *slot = NULL;
        for (uint32_t i = 0; i < max_r2t; i++) {
            if (!cmd->r2t[i].is_active) {
                slot = &cmd->r2t[i];
                break;
            }
        }
        if (!slot)
            return;
        struct iscsi_tx *tx = iscsi_tx_get(c);
        if (!tx) {
            iscsi_conn_close(c, "out of memory");
            return;
        }
        slot->is_active = true;
        slot->ttt = cmd_make_ttt(cmd);
        slot->offset = cmd->r2t_next;
        slot->length = HV_MIN(c->params.max_burst, cmd->edtl - cmd->r2t_next);
        slot->received = 0;
        slot->next_datasn = 0;
        cmd->r2t_next += slot->length;
        tx->hdr[0] = ISCSI_OP_R2T;
        tx->hdr[1] = 0x80;
        memcpy(tx->hdr + 8, cmd->lun_raw, 8);
        hv_put_be32(tx->hdr + 16, cmd->itt);
        hv_put_be32(tx->hdr + 20, slot->ttt);
        iscsi_conn_fill_sn(c, tx->hdr, false);
        hv_put_be32(tx->hdr + 36, cmd->r2tsn++);
        hv_put_be32(tx->hdr + 40, slot->offset);
        hv_put_be32(tx->hdr + 44, slot->length);
        iscsi_tx_queue(c, tx);
    }
}

/* The command's turn has come (CmdSN order): wait for data or run. */
static void cmd_deliver(struct iscsi_cmd *cmd)
{
    if (cmd->is_aborted) {
        cmd_release(cmd);               /* aborted while waiting for its turn */
        return;
    }
    if (!cmd->is_immediate) {
        cmd->is_acked = true;
        cmd->conn->cmds_acked++;
    }
    if (!cmd->has_early_sense && cmd->task.dir == SCSI_DIR_OUT && cmd->received < cmd->edtl) {
        cmd->state = ISCSI_CMD_DATA_WAIT;
        cmd_send_r2ts(cmd);
        return;
    }
    cmd_execute(cmd);
}

/* ExpCmdSN moved: run whatever waited for the hole to close. */
static void order_drain(struct iscsi_conn *c)
{
    while (c->order_head && c->order_head->cmdsn == c->exp_cmdsn) {
        struct iscsi_cmd *cmd = c->order_head;
        c->order_head = cmd->next;
        cmd->next = NULL;
        c->exp_cmdsn++;
        cmd_deliver(cmd);
        if (c->is_closing)
            return;
    }
}

/* Non-SCSI PDUs that carry a CmdSN (NOP-Out, Text, TMF, Logout without I). */
static void sn_consume(struct iscsi_conn *c, const struct iscsi_pdu *p)
{
    if (p->is_immediate)
        return;
    if (p->cmdsn == c->exp_cmdsn) {
        c->exp_cmdsn++;
        order_drain(c);
    }
}

static bool sn_in_window(const struct iscsi_conn *c, uint32_t cmdsn)
{
    return sn_le(c->exp_cmdsn, cmdsn) && sn_le(cmdsn, c->max_cmdsn);
}

static void cmd_send_response(struct iscsi_cmd *cmd)
{
    struct iscsi_conn *c = cmd->conn;
    struct scsi_task *t = &cmd->task;
    uint32_t in = t->dir == SCSI_DIR_IN ? HV_MIN(t->in_bytes, cmd->edtl) : 0;
    uint32_t residual = 0;
    uint8_t rflags = 0;
    bool can_collapse = t->status == SCSI_STATUS_GOOD && t->sense_len == 0 && in > 0;
    struct iscsi_tx *last = NULL;

    /* Residuals as scsi.h defines them: the CDB wanted more than the
     * initiator expected (overflow), or less moved than expected. */
    if (cmd->has_early_sense)
        t->wanted_bytes = 0;
    if (t->wanted_bytes > cmd->edtl) {
        residual = t->wanted_bytes - cmd->edtl;
        rflags = 0x04;                  /* O: overflow */
    } else {
        uint32_t moved = t->dir == SCSI_DIR_IN ? in : t->wanted_bytes;
        if (moved < cmd->edtl) {
            residual = cmd->edtl - moved;
            rflags = 0x02;              /* U: underflow */
        }
    }
    cmd->state = ISCSI_CMD_SENDING;

    /* Data-In PDUs of at most the initiator's MaxRecvDataSegmentLength,
     * grouped in sequences of MaxBurstLength, each ending with F. */
    uint32_t seg = HV_MAX(c->params.initiator_mrdsl, 512u);
    uint32_t burst = HV_MAX(c->params.max_burst, 512u);
    for (uint32_t off = 0; off < in;) {
        uint32_t n = HV_MIN(seg, in - off);
        n = HV_MIN(n, burst - off % burst);
        bool is_last = off + n == in;
        struct iscsi_tx *tx = iscsi_tx_get(c);
        if (!tx)
            goto oom;
        tx->hdr[0] = ISCSI_OP_DATA_IN;
        tx->hdr[1] = (is_last || (off + n) % burst == 0) ? 0x80 : 0;
        memcpy(tx->hdr + 8, cmd->lun_raw, 8);
        hv_put_be32(tx->hdr + 16, cmd->itt);
        hv_put_be32(tx->hdr + 20, ISCSI_RSVD_TAG);
        if (is_last && can_collapse) {
            tx->hdr[1] |= 0x01 | rflags;            /* S + residual flags */
            tx->hdr[3] = t->status;
            iscsi_conn_fill_sn(c, tx->hdr, true);
            hv_put_be32(tx->hdr + 44, residual);
        } else {
            iscsi_conn_fill_sn(c, tx->hdr, false);
            hv_put_be32(tx->hdr + 24, 0);           /* StatSN only with S */
        }
        hv_put_be32(tx->hdr + 36, cmd->datasn++);
        hv_put_be32(tx->hdr + 40, off);
        tx->data = cmd->buf + off;
        tx->data_bytes = n;
        iscsi_tx_queue(c, tx);
        last = tx;
        off += n;
    }
    if (!can_collapse) {
        struct iscsi_tx *tx = iscsi_tx_get(c);
        if (!tx)
            goto oom;
        tx->hdr[0] = ISCSI_OP_SCSI_RSP;
        tx->hdr[1] = 0x80 | rflags;
        tx->hdr[2] = 0;                             /* command completed at target */
        tx->hdr[3] = t->status;
        hv_put_be32(tx->hdr + 16, cmd->itt);
        iscsi_conn_fill_sn(c, tx->hdr, true);
        hv_put_be32(tx->hdr + 36, cmd->datasn + cmd->r2tsn);
        hv_put_be32(tx->hdr + 44, residual);
        if (t->sense_len) {
            hv_put_be16(cmd->rsp_data, t->sense_len);
            memcpy(cmd->rsp_data + 2, t->sense, t->sense_len);
            tx->data = cmd->rsp_data;
            tx->data_bytes = 2u + t->sense_len;
        }
        iscsi_tx_queue(c, tx);
        last = tx;
    }
    last->release = cmd;
    return;
oom:
    iscsi_conn_close(c, "out of memory");
    if (last)
        last->release = NULL;
    cmd_release(cmd);
}

/* A command that cannot be given a slot: answer TASK SET FULL without one. */
static void send_task_set_full(struct iscsi_conn *c, uint32_t itt)
{
    struct iscsi_tx *tx = iscsi_tx_get(c);
    if (!tx) {
        iscsi_conn_close(c, "out of memory");
        return;
    }
    tx->hdr[0] = ISCSI_OP_SCSI_RSP;
    tx->hdr[1] = 0x80;
    tx->hdr[3] = SCSI_STATUS_TASK_SET_FULL;
    hv_put_be32(tx->hdr + 16, itt);
    iscsi_conn_fill_sn(c, tx->hdr, true);
    iscsi_tx_queue(c, tx);
}

/* ----------------------------------------------------- PDU: headers */

static int rx_buf_reserve(struct iscsi_conn *c, uint32_t bytes)
{
    if (c->rx_buf_cap >= bytes + 1)
        return 0;
    size_t cap = HV_MAX((size_t)bytes + 1, (size_t)8192 + 1);
    uint8_t *nb = realloc(c->rx_buf, cap);
    if (!nb)
        return -ENOMEM;
    c->rx_buf = nb;
    c->rx_buf_cap = cap;
    return 0;
}

static void scsi_cmd_header(struct iscsi_conn *c)
{
    const struct iscsi_pdu *p = &c->pdu;

    if (c->is_discovery) {
        c->rx_reject = ISCSI_REJECT_PROTOCOL;
        return;
    }
    if (!p->is_immediate && !sn_in_window(c, p->cmdsn)) {
        hv_debug("iscsi %s: CmdSN %u outside [%u, %u]: dropped", c->peer, p->cmdsn,
                 c->exp_cmdsn, c->max_cmdsn);
        c->rx_drop = true;
        return;
    }
    if (p->data_bytes && (!p->is_write || p->data_bytes > p->edtl ||
                          !c->params.immediate_data || p->data_bytes > c->params.first_burst)) {
        c->rx_reject = ISCSI_REJECT_PROTOCOL;
        return;
    }
    struct iscsi_cmd *cmd = cmd_alloc(c);
    if (!cmd) {
        c->rx_busy = true;
        return;
    }
    struct scsi_task *t = &cmd->task;
    cmd->itt = p->itt;
    cmd->cmdsn = p->cmdsn;
    cmd->is_immediate = p->is_immediate;
    cmd->is_final_seen = p->is_final;
    memcpy(cmd->lun_raw, p->lun_raw, 8);
    cmd->edtl = p->edtl;
    memcpy(t->cdb, p->cdb, 16);
    t->task_attr = p->task_attr;
    t->expected_bytes = p->edtl;
    t->dir = p->is_write ? SCSI_DIR_OUT : p->is_read ? SCSI_DIR_IN : SCSI_DIR_NONE;
    if (p->ahs_words) {
        /* Extended CDBs (> 16 bytes) and bidirectional commands: no LU of
         * ours has such a command. */
        cmd_set_sense(cmd, SCSI_SENSE_ILLEGAL_REQUEST, 0x20, 0x00);
    } else if (p->is_read && p->is_write) {
        cmd_set_sense(cmd, SCSI_SENSE_ILLEGAL_REQUEST, 0x24, 0x00);
    } else if (p->edtl > ISCSI_MAX_XFER_BYTES) {
        cmd_set_sense(cmd, SCSI_SENSE_ILLEGAL_REQUEST, 0x24, 0x00);
    }
    if (cmd->has_early_sense && p->is_write) {
        /* Keep the window's books: the data still has to be swallowed. */
        cmd->edtl = p->data_bytes;
    }
    if (cmd_buffer(cmd, cmd->edtl) < 0) {
        cmd_release(cmd);
        c->rx_busy = true;
        return;
    }
    if (p->data_bytes)
        c->rx_dst = cmd->buf;
    c->rx_cmd = cmd;
    cmd_hash_add(cmd);
}

static void scsi_cmd_complete(struct iscsi_conn *c)
{
    const struct iscsi_pdu *p = &c->pdu;
    struct iscsi_cmd *cmd = c->rx_cmd;

    cmd->received = p->data_bytes;
    cmd->unsolicited_got = p->data_bytes;
    if (cmd->task.dir == SCSI_DIR_OUT) {
        if (c->params.initial_r2t || cmd->is_final_seen || cmd->has_early_sense)
            cmd->unsolicited_end = cmd->received;
        else
            cmd->unsolicited_end = HV_MIN(c->params.first_burst, cmd->edtl);
        cmd->r2t_next = cmd->unsolicited_end;
    }
    if (cmd->is_immediate) {
        cmd_deliver(cmd);
        return;
    }
    if (cmd->cmdsn == c->exp_cmdsn) {
        c->exp_cmdsn++;
        cmd_deliver(cmd);
        order_drain(c);
        return;
    }
    /* A hole in CmdSN before it: hold it, sorted, until the hole closes. */
    struct iscsi_cmd **pp = &c->order_head;
    while (*pp && sn_lt((*pp)->cmdsn, cmd->cmdsn))
        pp = &(*pp)->next;
    if (*pp && (*pp)->cmdsn == cmd->cmdsn) {
        cmd_release(cmd);               /* duplicate CmdSN */
        return;
    }
    cmd->next = *pp;
    *pp = cmd;
    cmd->state = ISCSI_CMD_ORDER_WAIT;
}

static struct iscsi_r2t *data_out_r2t(struct iscsi_cmd *cmd, uint32_t ttt)
{
    for (int i = 0; i < ISCSI_OUR_MAX_R2T; i++) {
        if (cmd->r2t[i].is_active && cmd->r2t[i].ttt == ttt)
            return &cmd->r2t[i];
    }
    return NULL;
}

static void data_out_header(struct iscsi_conn *c)
{
    const struct iscsi_pdu *p = &c->pdu;
    struct iscsi_cmd *cmd = NULL;

    if (p->ttt != ISCSI_RSVD_TAG) {
        uint32_t idx = p->ttt & 0xffff;
        if (idx < ISCSI_CMD_SLOTS) {
            cmd = &c->cmds[idx];
            if (cmd->state != ISCSI_CMD_DATA_WAIT || cmd->itt != p->itt || cmd->is_aborted ||
                !data_out_r2t(cmd, p->ttt))
                cmd = NULL;
        }
    } else {
        cmd = cmd_find(c, p->itt);
        if (cmd && (cmd->task.dir != SCSI_DIR_OUT ||
                    (cmd->state != ISCSI_CMD_ORDER_WAIT && cmd->state != ISCSI_CMD_DATA_WAIT) ||
                    (uint64_t)p->buffer_offset + p->data_bytes > cmd->unsolicited_end))
            cmd = NULL;
    }
    if (!cmd) {
        /* Data for a task we aborted, or a confused initiator: swallow it. */
        hv_debug("iscsi %s: Data-Out for unknown task 0x%x", c->peer, p->itt);
        c->rx_drop = true;
        return;
    }
    if ((uint64_t)p->buffer_offset + p->data_bytes > cmd->edtl) {
        c->rx_reject = ISCSI_REJECT_PROTOCOL;
        return;
    }
    /* We negotiate DataPDUInOrder=Yes and DataSequenceInOrder=Yes: within
     * a burst, DataSN counts from 0 and offsets follow each other. At ERL 0
     * there is no recovering the sequence: the command ends with CHECK
     * CONDITION (ABORTED COMMAND, DATA PHASE ERROR) and the session lives
     * on; later Data-Out for it finds no task and is dropped. */
    uint32_t want_datasn;
    uint32_t want_offset;
    if (p->ttt != ISCSI_RSVD_TAG) {
        struct iscsi_r2t *r2t = data_out_r2t(cmd, p->ttt);
        want_datasn = r2t->next_datasn++;
        want_offset = r2t->offset + r2t->received;
    } else {
        want_datasn = cmd->unsolicited_datasn++;
        want_offset = cmd->unsolicited_got;
        cmd->unsolicited_got += p->data_bytes;
    }
    if (p->datasn != want_datasn || p->buffer_offset != want_offset) {
        hv_warn("iscsi %s: Data-Out of task 0x%x: DataSN %u offset %u, expected %u at %u",
                c->peer, p->itt, p->datasn, p->buffer_offset, want_datasn, want_offset);
        c->rx_drop = true;
        if (!cmd->has_early_sense) {
            cmd_set_sense(cmd, SCSI_SENSE_ABORTED_COMMAND, 0x4B, 0x00);
            if (cmd->state == ISCSI_CMD_DATA_WAIT)
                cmd_execute(cmd);
        }
        return;
    }
    c->rx_cmd = cmd;
    c->rx_dst = cmd->buf + p->buffer_offset;
}

static void data_out_complete(struct iscsi_conn *c)
{
    const struct iscsi_pdu *p = &c->pdu;
    struct iscsi_cmd *cmd = c->rx_cmd;

    cmd->received += p->data_bytes;
    if (p->ttt != ISCSI_RSVD_TAG) {
        struct iscsi_r2t *r2t = data_out_r2t(cmd, p->ttt);
        if (r2t) {
            r2t->received += p->data_bytes;
            if (r2t->received >= r2t->length || p->is_final)
                r2t->is_active = false;
        }
    }
    if (cmd->state != ISCSI_CMD_DATA_WAIT)
        return;                         /* unsolicited data ahead of its CmdSN */
    if (cmd->received >= cmd->edtl) {
        cmd_execute(cmd);
        return;
    }
    cmd_send_r2ts(cmd);
}

/* ------------------------------------------------- PDU: small commands */

static void handle_nop_out(struct iscsi_conn *c, const uint8_t *data, uint32_t len)
{
    const struct iscsi_pdu *p = &c->pdu;

    sn_consume(c, p);
    if (p->ttt != ISCSI_RSVD_TAG) {
        if (p->ttt == c->nop_ttt && c->nop_outstanding) {
            hv_debug("iscsi %s: NOP-Out answers ping 0x%x", c->peer, p->ttt);
            c->nop_outstanding = false;
        }
        return;
    }
    if (p->itt == ISCSI_RSVD_TAG)
        return;
    struct iscsi_tx *tx = iscsi_tx_get(c);
    if (!tx)
        return;
    if (len) {
        tx->owned = malloc(len);
        if (!tx->owned) {
            tx_put(c, tx);
            return;
        }
        memcpy(tx->owned, data, len);
        tx->data = tx->owned;
        tx->data_bytes = len;
    }
    tx->hdr[0] = ISCSI_OP_NOP_IN;
    tx->hdr[1] = 0x80;
    memcpy(tx->hdr + 8, p->lun_raw, 8);
    hv_put_be32(tx->hdr + 16, p->itt);
    hv_put_be32(tx->hdr + 20, ISCSI_RSVD_TAG);
    iscsi_conn_fill_sn(c, tx->hdr, true);
    iscsi_tx_queue(c, tx);
}

/*
 * Abort one command of this connection. In the controller it finishes
 * there and its response is dropped; waiting for data it simply goes; but
 * waiting behind a CmdSN hole it stays in line, marked, so that its CmdSN
 * still counts when the hole closes (else ExpCmdSN would stop there).
 */
static void cmd_abort(struct iscsi_cmd *cmd)
{
    switch (cmd->state) {
    case ISCSI_CMD_EXEC:
    case ISCSI_CMD_ORDER_WAIT:
        cmd->is_aborted = true;
        cmd_hash_del(cmd);
        break;
    case ISCSI_CMD_DATA_WAIT:
        cmd_drop_local(cmd);
        break;
    default:
        break;
    }
}

static void abort_local_where(struct iscsi_conn *c, bool all_luns, const uint8_t lun_raw[8])
{
    for (int i = 0; i < ISCSI_CMD_SLOTS; i++) {
        struct iscsi_cmd *cmd = &c->cmds[i];
        if (cmd->state == ISCSI_CMD_FREE || cmd->state == ISCSI_CMD_SENDING)
            continue;
        if (!all_luns && memcmp(cmd->lun_raw, lun_raw, 8) != 0)
            continue;
        cmd_abort(cmd);
    }
}

static uint8_t tmf_abort_task(struct iscsi_conn *c)
{
    const struct iscsi_pdu *p = &c->pdu;
    struct iscsi_cmd *cmd = cmd_find(c, p->ref_task_tag);

    if (!cmd || cmd->state == ISCSI_CMD_SENDING) {
        /* RFC 7143 11.5.1: a task never seen whose RefCmdSN is in the
         * window counts as aborted; otherwise it does not exist. */
        if (!cmd && sn_le(c->exp_cmdsn, p->ref_cmdsn) && sn_lt(p->ref_cmdsn, p->cmdsn))
            return SCSI_TMF_COMPLETE;
        return SCSI_TMF_TASK_NOT_FOUND;
    }
    if (cmd->state == ISCSI_CMD_EXEC)
        scsi_controller_tmf(c->ctl, &c->nexus, SCSI_TMF_ABORT_TASK, cmd->task.lun, cmd->itt);
    cmd_abort(cmd);
    return SCSI_TMF_COMPLETE;
}

static void handle_tmf(struct iscsi_conn *c)
{
    const struct iscsi_pdu *p = &c->pdu;
    uint8_t response;
    bool is_cold = false;

    sn_consume(c, p);
    if (c->is_discovery) {
        iscsi_conn_send_reject(c, ISCSI_REJECT_PROTOCOL, c->rx_hdr);
        return;
    }
    switch (p->tmf_function) {
    case 1:
        response = tmf_abort_task(c);
        break;
    case 2:                             /* ABORT TASK SET */
    case 4:                             /* CLEAR TASK SET */
    case 5:                             /* LOGICAL UNIT RESET */
        if (p->lun == UINT64_MAX || !scsi_controller_lu(c->ctl, p->lun)) {
            response = SCSI_TMF_LUN_NOT_FOUND;
            break;
        }
        abort_local_where(c, false, p->lun_raw);
        response = (uint8_t)scsi_controller_tmf(
            c->ctl, &c->nexus,
            p->tmf_function == 2   ? SCSI_TMF_ABORT_TASK_SET
            : p->tmf_function == 4 ? SCSI_TMF_CLEAR_TASK_SET
                                   : SCSI_TMF_LOGICAL_UNIT_RESET,
            p->lun, 0);
        break;
    case 6:                             /* TARGET WARM RESET */
    case 7:                             /* TARGET COLD RESET */
        abort_local_where(c, true, NULL);
        response = (uint8_t)scsi_controller_tmf(
            c->ctl, &c->nexus,
            p->tmf_function == 6 ? SCSI_TMF_TARGET_WARM_RESET : SCSI_TMF_TARGET_COLD_RESET, 0,
            0);
        is_cold = p->tmf_function == 7;
        break;
    case 8:                             /* TASK REASSIGN: needs ERL 2 */
        response = 4;
        break;
    default:                            /* CLEAR ACA and unknown */
        response = SCSI_TMF_NOT_SUPPORTED;
        break;
    }
    struct iscsi_tx *tx = iscsi_tx_get(c);
    if (!tx) {
        iscsi_conn_close(c, "out of memory");
        return;
    }
    tx->hdr[0] = ISCSI_OP_TMF_RSP;
    tx->hdr[1] = 0x80;
    tx->hdr[2] = response;
    hv_put_be32(tx->hdr + 16, p->itt);
    iscsi_conn_fill_sn(c, tx->hdr, true);
    /* A cold reset ends every connection (RFC 7143 11.5.1). */
    tx->close_after = is_cold;
    iscsi_tx_queue(c, tx);
}

static void handle_logout(struct iscsi_conn *c)
{
    const struct iscsi_pdu *p = &c->pdu;
    uint8_t response = 0;

    sn_consume(c, p);
    if (p->logout_reason == 1 && p->cid != c->cid)
        response = 1;                   /* CID not found */
    else if (p->logout_reason == 2)
        response = 2;                   /* recovery needs ERL 2 */
    else if (p->logout_reason > 2)
        response = 3;                   /* cleanup failed: unknown reason */
    struct iscsi_tx *tx = iscsi_tx_get(c);
    if (!tx) {
        iscsi_conn_close(c, "out of memory");
        return;
    }
    tx->hdr[0] = ISCSI_OP_LOGOUT_RSP;
    tx->hdr[1] = 0x80;
    tx->hdr[2] = response;
    hv_put_be32(tx->hdr + 16, p->itt);
    iscsi_conn_fill_sn(c, tx->hdr, true);
    if (response == 0) {
        /* Pending commands end with the session (RFC 7143 11.14). */
        abort_local_where(c, true, NULL);
        tx->close_after = true;
        c->is_logged_out = true;
    }
    iscsi_tx_queue(c, tx);
}

/* ------------------------------------------------------ receive machine */

static void rx_reset(struct iscsi_conn *c)
{
    c->rx_state = RX_BHS;
    c->rx_have = 0;
    c->rx_need = ISCSI_BHS_BYTES;
    c->rx_dst = NULL;
    c->rx_cmd = NULL;
    c->rx_reject = 0;
    c->rx_drop = false;
    c->rx_busy = false;
    c->rx_fatal = false;
    c->rx_data_len = 0;
}

static void pdu_header(struct iscsi_conn *c)
{
    const struct iscsi_pdu *p = &c->pdu;

    if (!c->is_full_feature) {
        if (p->opcode != ISCSI_OP_LOGIN_REQ) {
            iscsi_conn_close(c, "PDU other than Login before login completed");
            return;
        }
    } else if (p->opcode == ISCSI_OP_LOGIN_REQ) {
        c->rx_reject = ISCSI_REJECT_PROTOCOL;
        return;
    }
    switch (p->opcode) {
    case ISCSI_OP_SCSI_CMD:
        scsi_cmd_header(c);
        return;
    case ISCSI_OP_DATA_OUT:
        data_out_header(c);
        return;
    case ISCSI_OP_LOGIN_REQ:
    case ISCSI_OP_TEXT_REQ:
    case ISCSI_OP_NOP_OUT:
        if (rx_buf_reserve(c, p->data_bytes) < 0) {
            iscsi_conn_close(c, "out of memory");
            return;
        }
        c->rx_dst = c->rx_buf;
        return;
    case ISCSI_OP_SNACK:
        c->rx_reject = ISCSI_REJECT_PROTOCOL;   /* ERL 0 */
        return;
    default:
        return;                         /* TMF, logout: no data expected */
    }
}

static void pdu_dispatch(struct iscsi_conn *c)
{
    const struct iscsi_pdu *p = &c->pdu;

    if (c->rx_reject) {
        iscsi_conn_send_reject(c, (uint8_t)c->rx_reject, c->rx_hdr);
        if (c->rx_cmd && p->opcode == ISCSI_OP_SCSI_CMD)
            cmd_release(c->rx_cmd);
        if (c->rx_fatal) {
            iscsi_conn_flush(c);
            iscsi_conn_close(c, "protocol error");
        }
        return;
    }
    if (c->rx_drop)
        return;
    if (c->rx_busy) {
        send_task_set_full(c, p->itt);
        return;
    }
    switch (p->opcode) {
    case ISCSI_OP_SCSI_CMD:
        scsi_cmd_complete(c);
        break;
    case ISCSI_OP_DATA_OUT:
        data_out_complete(c);
        break;
    case ISCSI_OP_NOP_OUT:
        handle_nop_out(c, c->rx_buf, p->data_bytes);
        break;
    case ISCSI_OP_TMF_REQ:
        handle_tmf(c);
        break;
    case ISCSI_OP_LOGIN_REQ:
        iscsi_login_pdu(c, c->rx_buf, p->data_bytes);
        break;
    case ISCSI_OP_TEXT_REQ:
        iscsi_text_pdu(c, c->rx_buf, p->data_bytes);
        break;
    case ISCSI_OP_LOGOUT_REQ:
        handle_logout(c);
        break;
    default:
        break;
    }
}

static void rx_header_done(struct iscsi_conn *c)
{
    if (c->use_header_digest) {
        size_t hlen = ISCSI_BHS_BYTES + (size_t)c->rx_hdr[4] * 4;
        uint32_t want = iscsi_digest_get(c->rx_hdr + hlen);
        if (hv_crc32c(c->rx_hdr, hlen) != want) {
            /* A header we cannot trust gives no length to resync on. */
            iscsi_conn_close(c, "header digest error");
            return;
        }
    }
    if (iscsi_pdu_decode(c->rx_hdr, &c->pdu) < 0) {
        if (!c->is_full_feature) {
            iscsi_conn_close(c, "unknown opcode during login");
            return;
        }
        c->rx_reject = ISCSI_REJECT_NOT_SUPPORTED;
    } else if (c->pdu.data_bytes > ISCSI_OUR_MRDSL) {
        c->rx_reject = ISCSI_REJECT_PROTOCOL;
    } else {
        pdu_header(c);
        if (c->is_closing)
            return;
    }
    if (c->rx_reject || c->rx_drop || c->rx_busy) {
        c->rx_dst = NULL;               /* swallow the data segment */
        if (c->rx_cmd && !c->rx_reject && c->pdu.opcode == ISCSI_OP_SCSI_CMD) {
            cmd_release(c->rx_cmd);
            c->rx_cmd = NULL;
        }
    }
    c->rx_data_len = c->pdu.data_bytes;
    c->rx_have = 0;
    if (c->rx_data_len) {
        c->rx_state = RX_DATA;
        return;
    }
    pdu_dispatch(c);
    if (!c->is_closing)
        rx_reset(c);
}

static void rx_data_done(struct iscsi_conn *c)
{
    uint32_t pad = (4 - (c->rx_data_len & 3)) & 3;
    c->rx_trailer_need = pad + (c->use_data_digest ? ISCSI_DIGEST_BYTES : 0);
    c->rx_have = 0;
    if (c->rx_trailer_need) {
        c->rx_state = RX_TRAILER;
        return;
    }
    pdu_dispatch(c);
    if (!c->is_closing)
        rx_reset(c);
}

static void rx_trailer_done(struct iscsi_conn *c)
{
    uint32_t pad = (4 - (c->rx_data_len & 3)) & 3;
    if (c->use_data_digest && c->rx_dst) {
        uint32_t crc = hv_crc32c_update(hv_crc32c_init(), c->rx_dst, c->rx_data_len);
        crc = hv_crc32c_update(crc, c->rx_trailer, pad);
        if (hv_crc32c_final(crc) != iscsi_digest_get(c->rx_trailer + pad)) {
            /* ERL 0: reject the PDU; the task it belonged to cannot finish,
             * so the session ends and the initiator recovers. */
            iscsi_conn_send_reject(c, ISCSI_REJECT_DATA_DIGEST, c->rx_hdr);
            iscsi_conn_flush(c);
            iscsi_conn_close(c, "data digest error");
            return;
        }
    }
    pdu_dispatch(c);
    if (!c->is_closing)
        rx_reset(c);
}

/* Where the next received bytes belong, and how many fit there. */
static uint8_t *rx_window(struct iscsi_conn *c, size_t *len)
{
    switch (c->rx_state) {
    case RX_BHS:
    case RX_AHS:
        *len = c->rx_need - c->rx_have;
        return c->rx_hdr + c->rx_have;
    case RX_DATA:
        *len = c->rx_data_len - c->rx_have;
        if (!c->rx_dst) {
            *len = HV_MIN(*len, sizeof(c->discard));
            return c->discard;
        }
        return c->rx_dst + c->rx_have;
    case RX_TRAILER:
    default:
        *len = c->rx_trailer_need - c->rx_have;
        return c->rx_trailer + c->rx_have;
    }
}

/* `n` bytes landed in the window. */
static void rx_advance(struct iscsi_conn *c, size_t n)
{
    c->rx_have += n;
    switch (c->rx_state) {
    case RX_BHS: {
        if (c->rx_have < ISCSI_BHS_BYTES)
            return;
        size_t extra = (size_t)c->rx_hdr[4] * 4 + (c->use_header_digest ? ISCSI_DIGEST_BYTES : 0);
        if (extra) {
            c->rx_state = RX_AHS;
            c->rx_need = ISCSI_BHS_BYTES + extra;
            return;
        }
        rx_header_done(c);
        return;
    }
    case RX_AHS:
        if (c->rx_have < c->rx_need)
            return;
        rx_header_done(c);
        return;
    case RX_DATA:
        if (c->rx_have < c->rx_data_len)
            return;
        rx_data_done(c);
        return;
    case RX_TRAILER:
        if (c->rx_have < c->rx_trailer_need)
            return;
        rx_trailer_done(c);
        return;
    }
}

static bool rx_is_stopped(const struct iscsi_conn *c)
{
    return c->is_closing || c->is_logged_out;
}

size_t iscsi_conn_rx(struct iscsi_conn *c, const uint8_t *buf, size_t len)
{
    size_t done = 0;
    while (done < len && !rx_is_stopped(c)) {
        size_t wlen;
        uint8_t *w = rx_window(c, &wlen);
        size_t n = HV_MIN(wlen, len - done);
        memcpy(w, buf + done, n);
        done += n;
        rx_advance(c, n);
    }
    c->last_rx_ns = hv_now_ns();
    return done;
}

/*
 * One readv into [where the current PDU's bytes go, staging]: large
 * Data-Out payloads land in the command's buffer directly, and the next
 * headers (and small payloads) come along in the same system call.
 */
static void conn_read(struct iscsi_conn *c)
{
    for (int round = 0; round < 8 && !rx_is_stopped(c) && !c->is_draining; round++) {
        size_t wlen;
        uint8_t *w = rx_window(c, &wlen);
        struct iovec iov[2] = {
            { .iov_base = w, .iov_len = wlen },
            { .iov_base = c->staging, .iov_len = ISCSI_STAGING_BYTES },
        };
        ssize_t n = readv(c->fd, iov, 2);
        if (n == 0) {
            iscsi_conn_close(c, "connection closed by initiator");
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                iscsi_conn_close(c, "receive failed");
            return;
        }
        c->last_rx_ns = hv_now_ns();
        size_t first = HV_MIN((size_t)n, wlen);
        rx_advance(c, first);
        if ((size_t)n > wlen)
            iscsi_conn_rx(c, c->staging, (size_t)n - wlen);
        if ((size_t)n < wlen + ISCSI_STAGING_BYTES)
            return;                     /* the socket is empty for now */
    }
}

static void conn_event(void *arg, uint32_t events)
{
    struct iscsi_conn *c = arg;

    if (events & EPOLLOUT)
        iscsi_conn_flush(c);
    if (!c->is_closing && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
        if (c->is_draining || c->is_logged_out) {
            if (events & (EPOLLERR | EPOLLHUP))
                iscsi_conn_close(c, "connection lost");
            return;
        }
        conn_read(c);
    }
}

/* ------------------------------------------------------- life and death */

static void conn_check_drain(struct iscsi_conn *c)
{
    if (c->is_closing) {
        if (c->cmds_exec == 0 && !c->is_zombie) {
            c->is_zombie = true;
            c->zombie_next = c->server->zombies;
            c->server->zombies = c;
        }
        return;
    }
    if (c->is_draining && c->cmds_exec == 0 && !c->tx_head)
        iscsi_conn_close(c, "server shutting down");
}

void iscsi_conn_close(struct iscsi_conn *c, const char *why)
{
    if (c->is_closing)
        return;
    c->is_closing = true;
    if (c->is_full_feature)
        hv_info("iscsi %s: %s %s: %s", c->peer, c->initiator,
                c->is_discovery ? "(discovery)" : c->target, why);
    else
        hv_debug("iscsi %s: %s", c->peer, why);
    if (c->watch) {
        hv_reactor_del_fd(c->server->reactor, c->watch);
        c->watch = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    hv_timer_cancel(c->server->reactor, &c->timer);
    while (c->tx_head) {
        struct iscsi_tx *tx = c->tx_head;
        c->tx_head = tx->next;
        tx_done(c, tx);
    }
    c->tx_tail = NULL;
    c->tx_queued = 0;
    for (int i = 0; i < ISCSI_CMD_SLOTS; i++) {
        struct iscsi_cmd *cmd = &c->cmds[i];
        if (cmd->state == ISCSI_CMD_ORDER_WAIT || cmd->state == ISCSI_CMD_DATA_WAIT)
            cmd_drop_local(cmd);
        else if (cmd->state == ISCSI_CMD_EXEC)
            cmd->is_aborted = true;
    }
    conn_check_drain(c);
}

void iscsi_conn_free_now(struct iscsi_conn *c)
{
    struct iscsi_server *s = c->server;

    for (struct iscsi_conn **pp = &s->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    for (struct iscsi_conn **pp = &s->dirty; *pp; pp = &(*pp)->dirty_next) {
        if (*pp == c) {
            *pp = c->dirty_next;
            break;
        }
    }
    for (struct iscsi_conn **pp = &s->zombies; *pp; pp = &(*pp)->zombie_next) {
        if (*pp == c) {
            *pp = c->zombie_next;
            break;
        }
    }
    if (c->watch)
        hv_reactor_del_fd(s->reactor, c->watch);
    if (c->fd >= 0)
        close(c->fd);
    hv_timer_cancel(s->reactor, &c->timer);
    if (c->has_nexus)
        scsi_controller_nexus_remove(c->ctl, &c->nexus);
    while (c->tx_head) {
        struct iscsi_tx *tx = c->tx_head;
        c->tx_head = tx->next;
        free(tx->owned);
    }
    while (c->tx_chunks) {
        struct iscsi_tx_chunk *ch = c->tx_chunks;
        c->tx_chunks = ch->next;
        free(ch);
    }
    if (c->cmds) {
        for (int i = 0; i < ISCSI_CMD_SLOTS; i++)
            free(c->cmds[i].buf);
    }
    free(c->cmds);
    free(c->rx_buf);
    free(c->staging);
    free(c->login_text);
    free(c->text_pending);
    free(c);
    if (s->is_shutting_down && !s->conns && s->shutdown_done)
        *s->shutdown_done = true;
}

/* The connection timer ticks at most once a second, faster when the
 * keepalive interval is shorter (tests). */
static uint64_t conn_tick_ms(const struct iscsi_server *s)
{
    if (s->nop_interval_ms && s->nop_interval_ms < 2000)
        return HV_MAX(s->nop_interval_ms / 2, (uint64_t)10);
    return 1000;
}

void iscsi_conn_timer(void *arg)
{
    struct iscsi_conn *c = arg;
    struct iscsi_server *s = c->server;
    uint64_t now = hv_now_ns();

    if (c->is_closing)
        return;
    if (!c->is_full_feature) {
        if (now - c->created_ns > s->login_timeout_ms * 1000000ull) {
            iscsi_conn_close(c, "login timed out");
            return;
        }
    } else if (s->nop_interval_ms) {
        if (c->nop_outstanding) {
            if (now - c->nop_sent_ns > s->nop_timeout_ms * 1000000ull) {
                iscsi_conn_close(c, "no answer to NOP-In");
                return;
            }
        } else if (now - c->last_rx_ns >= s->nop_interval_ms * 1000000ull) {
            /* An idle initiator may be gone without a FIN: ping it. */
            struct iscsi_tx *tx = iscsi_tx_get(c);
            if (tx) {
                c->nop_ttt = (c->nop_ttt + 1) & 0x7fffffff;
                c->nop_outstanding = true;
                c->nop_sent_ns = now;
                hv_debug("iscsi %s: idle, NOP-In ping 0x%x", c->peer, c->nop_ttt);
                tx->hdr[0] = ISCSI_OP_NOP_IN;
                tx->hdr[1] = 0x80;
                hv_put_be32(tx->hdr + 16, ISCSI_RSVD_TAG);
                hv_put_be32(tx->hdr + 20, c->nop_ttt);
                iscsi_conn_fill_sn(c, tx->hdr, false);
                iscsi_tx_queue(c, tx);
            }
        }
    }
    hv_timer_arm(s->reactor, &c->timer, conn_tick_ms(s), iscsi_conn_timer, c);
}

struct iscsi_conn *iscsi_conn_new(struct iscsi_server *s, int fd)
{
    struct iscsi_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->server = s;
    c->fd = fd;
    c->cmds = calloc(ISCSI_CMD_SLOTS, sizeof(*c->cmds));
    c->staging = malloc(ISCSI_STAGING_BYTES);
    if (!c->cmds || !c->staging) {
        free(c->cmds);
        free(c->staging);
        free(c);
        return NULL;
    }
    for (int i = ISCSI_CMD_SLOTS - 1; i >= 0; i--) {
        struct iscsi_cmd *cmd = &c->cmds[i];
        cmd->conn = c;
        cmd->index = (uint16_t)i;
        cmd->state = ISCSI_CMD_FREE;
        cmd->next = c->cmd_free;
        c->cmd_free = cmd;
    }
    iscsi_params_default(&c->params);
    snprintf(c->peer, sizeof(c->peer), "detached");
    c->created_ns = hv_now_ns();
    c->last_rx_ns = c->created_ns;
    c->nop_ttt = 0x100;
    rx_reset(c);
    if (fd >= 0) {
        c->watch = hv_reactor_add_fd(s->reactor, fd, EPOLLIN, conn_event, c);
        if (!c->watch) {
            free(c->cmds);
            free(c->staging);
            free(c);
            return NULL;
        }
        c->watch_events = EPOLLIN;
    }
    c->next = s->conns;
    s->conns = c;
    hv_timer_arm(s->reactor, &c->timer, conn_tick_ms(s), iscsi_conn_timer, c);
    return c;
}

/* Called by the server when it starts draining. */
void iscsi_conn_drain(struct iscsi_conn *c)
{
    if (c->is_closing)
        return;
    if (!c->is_full_feature) {
        iscsi_conn_close(c, "server shutting down");
        return;
    }
    c->is_draining = true;
    set_watch(c, wanted_events(c));
    conn_check_drain(c);
}
