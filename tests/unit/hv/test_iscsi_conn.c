/*
 * The connection state machine driven from buffers, without sockets: the
 * test plays the initiator byte for byte and reads back every PDU the
 * target sends (through the server's tx sink). Behind the target is the
 * real controller with an emulated disk on a RAM bdev.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "iscsi/iscsi_int.h"

/* ------------------------------------------------------------ RAM bdev */

#define DISK_BYTES (1024 * 1024)

struct ram_io {
    struct hv_deferred d;
};

static uint8_t *ram;

static void ram_complete(void *arg)
{
    struct bdev_io *io = arg;
    io->done(io, 0);
}

static int ram_submit(struct bdev *bd, struct bdev_io *io)
{
    struct ram_io *ctx = bdev_io_ctx(io);
    if (io->type == BDEV_IO_READ)
        hv_iov_from_buf(io->iov, io->iovcnt, 0, ram + io->offset, io->length);
    else if (io->type == BDEV_IO_WRITE)
        hv_iov_to_buf(io->iov, io->iovcnt, 0, ram + io->offset, io->length);
    memset(&ctx->d, 0, sizeof(ctx->d));
    hv_reactor_defer(bd->reactor, &ctx->d, ram_complete, io);
    return 0;
}

static int ram_close(struct bdev *bd) { return 0; }

static const struct bdev_ops ram_ops = { .name = "ram", .submit = ram_submit, .close = ram_close };

/* ------------------------------------------------------------- fixture */

struct fixture {
    struct hv_reactor *r;
    struct scsi_controller *ctl;
    struct iscsi_server *s;
    struct bdev bd;
    struct iscsi_conn *c;
    uint8_t *out;                       /* what the target sent */
    size_t out_len;
    size_t out_pos;
    uint32_t itt;
    uint32_t cmdsn;
    bool hd;                            /* digests in use after login */
    bool dd;
};

static struct fixture *fx;

static int dir_lookup(void *arg, const char *target, const char *initiator,
                      struct iscsi_auth *auth, struct scsi_controller **ctl)
{
    if (strcmp(target, "iqn.t:disk") != 0 && strcmp(target, "iqn.t:chap") != 0)
        return -ENOENT;
    if (strcmp(initiator, "iqn.i:good") != 0)
        return -EACCES;
    if (strcmp(target, "iqn.t:chap") == 0) {
        auth->is_chap_required = true;
        strcpy(auth->chap_user, "alice");
        strcpy(auth->chap_secret, "alice-secret");
    }
    *ctl = fx->ctl;
    return 0;
}

static void dir_list(void *arg, const char *initiator,
                     void (*emit)(void *ctx, const char *target), void *ctx)
{
    if (strcmp(initiator, "iqn.i:good") == 0) {
        emit(ctx, "iqn.t:disk");
        emit(ctx, "iqn.t:chap");
    }
}

/* Discovery of iqn.i:good needs alice's CHAP (the credentials of
 * iqn.t:chap); tests that want it set dir.discovery_auth. */
static int dir_discovery_auth(void *arg, const char *initiator, unsigned index,
                              struct iscsi_auth *auth)
{
    if (strcmp(initiator, "iqn.i:good") != 0 || index > 0)
        return -ENOENT;
    auth->is_chap_required = true;
    strcpy(auth->chap_user, "alice");
    strcpy(auth->chap_secret, "alice-secret");
    return 0;
}

static struct iscsi_directory_ops dir = { .lookup = dir_lookup, .list = dir_list };

static void sink(void *arg, const uint8_t *buf, size_t len)
{
    struct fixture *f = arg;
    if (!len)
        return;
    f->out = realloc(f->out, f->out_len + len);
    memcpy(f->out + f->out_len, buf, len);
    f->out_len += len;
}

static int setup(void **state)
{
    struct scsi_lu *lu;
    struct hv_err err;
    fx = calloc(1, sizeof(*fx));
    ram = calloc(1, DISK_BYTES);
    dir.discovery_auth = NULL;
    hv_log_set_level(HV_LOG_ERROR);
    assert_int_equal(hv_reactor_create(&fx->r), 0);
    fx->bd.ops = &ram_ops;
    fx->bd.reactor = fx->r;
    strcpy(fx->bd.name, "ram");
    fx->bd.size_bytes = DISK_BYTES;
    fx->bd.block_bytes = 512;
    fx->bd.physical_block_bytes = 4096;
    fx->bd.io_ctx_bytes = sizeof(struct ram_io);
    assert_int_equal(scsi_controller_create(fx->r, "t", &fx->ctl), 0);
    assert_int_equal(scsi_disk_create(&fx->bd, NULL, &lu, &err), 0);
    assert_int_equal(scsi_controller_attach(fx->ctl, 0, lu), 0);
    assert_int_equal(iscsi_server_create_detached(fx->r, &dir, NULL, &fx->s), 0);
    fx->s->tx_sink = sink;
    fx->s->tx_sink_arg = fx;
    fx->c = iscsi_conn_new(fx->s, -1);
    assert_non_null(fx->c);
    fx->itt = 0x100;
    fx->cmdsn = 10;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    iscsi_server_destroy(fx->s);
    for (int i = 0; i < 8; i++)
        hv_reactor_run_once(fx->r, 0);
    scsi_controller_destroy(fx->ctl);
    hv_reactor_destroy(fx->r);
    free(fx->out);
    free(fx);
    free(ram);
    return 0;
}

/* Whether the connection under test still exists (closed ones are freed
 * at the next reactor turn). */
static bool conn_alive(void)
{
    for (struct iscsi_conn *c = fx->s->conns; c; c = c->next) {
        if (c == fx->c)
            return true;
    }
    return false;
}

static void turn(void)
{
    for (int i = 0; i < 6; i++)
        hv_reactor_run_once(fx->r, 0);
}

/* ------------------------------------------------------ the initiator */

static void send_pdu(uint8_t bhs[48], const void *data, uint32_t len, bool bad_data_digest)
{
    uint8_t buf[48 + 4 + 65536 + 8];
    size_t n = 0;
    iscsi_bhs_set_lengths(bhs, 0, len);
    memcpy(buf, bhs, 48);
    n = 48;
    if (fx->hd) {
        iscsi_digest_put(buf + n, hv_crc32c(bhs, 48));
        n += 4;
    }
    if (len)
        memcpy(buf + n, data, len);
    n += len;
    while (n % 4)
        buf[n++] = 0;
    if (fx->dd && len) {
        size_t padded = HV_ALIGN_UP(len, 4);
        uint32_t crc = hv_crc32c(buf + n - padded, padded);
        iscsi_digest_put(buf + n, bad_data_digest ? crc ^ 1 : crc);
        n += 4;
    }
    assert_int_equal(iscsi_conn_rx(fx->c, buf, n), n);
    turn();
}

struct rsp {
    uint8_t bhs[48];
    uint8_t *data;
    uint32_t len;
};

/* The next PDU the target sent, digests checked; false when none. */
static bool recv_pdu(struct rsp *r)
{
    if (fx->out_pos == fx->out_len)
        return false;
    assert_true(fx->out_len - fx->out_pos >= 48);
    memcpy(r->bhs, fx->out + fx->out_pos, 48);
    size_t pos = fx->out_pos + 48;
    bool hd = fx->hd && r->bhs[0] != ISCSI_OP_LOGIN_RSP;
    bool dd = fx->dd && r->bhs[0] != ISCSI_OP_LOGIN_RSP;
    if (hd) {
        assert_int_equal(iscsi_digest_get(fx->out + pos), hv_crc32c(r->bhs, 48));
        pos += 4;
    }
    r->len = ((uint32_t)r->bhs[5] << 16) | ((uint32_t)r->bhs[6] << 8) | r->bhs[7];
    r->data = fx->out + pos;
    pos += HV_ALIGN_UP(r->len, 4);
    if (dd && r->len) {
        size_t padded = HV_ALIGN_UP(r->len, 4);
        assert_int_equal(iscsi_digest_get(fx->out + pos), hv_crc32c(r->data, padded));
        pos += 4;
    }
    assert_true(pos <= fx->out_len);
    fx->out_pos = pos;
    return true;
}

static const char *key_of(const struct rsp *r, const char *name, char *copy)
{
    struct iscsi_keys k;
    memcpy(copy, r->data, r->len);
    if (iscsi_keys_parse(copy, r->len, &k) < 0)
        return NULL;
    return iscsi_keys_get(&k, name);
}

static void login_pdu(uint8_t csg, uint8_t nsg, bool transit, const char *text, size_t len)
{
    uint8_t b[48] = { 0 };
    b[0] = 0x40 | ISCSI_OP_LOGIN_REQ;
    b[1] = (uint8_t)((transit ? 0x80 : 0) | csg << 2 | nsg);
    memcpy(b + 8, "\x80\x00\x00\x00\x00\x01", 6);
    hv_put_be32(b + 16, fx->itt++);
    hv_put_be32(b + 24, fx->cmdsn);
    send_pdu(b, text, (uint32_t)len, false);
}

#define KEYS(...) (const char[]){ __VA_ARGS__ }, sizeof((const char[]){ __VA_ARGS__ })

static uint16_t login_status(const struct rsp *r) { return hv_be16(r->bhs + 36); }

static uint32_t scsi_cmd(const uint8_t *cdb, int cdb_len, uint32_t edtl, bool read, bool write,
                         const void *imm, uint32_t imm_len, uint32_t cmdsn);

static void login_plain(const char *header_digest, const char *data_digest)
{
    char text[1024];
    size_t n = 0;
    const char *keys[] = { "InitiatorName=iqn.i:good", "TargetName=iqn.t:disk",
                           "SessionType=Normal", "InitialR2T=Yes", "ImmediateData=Yes",
                           "FirstBurstLength=4096", "MaxBurstLength=4096",
                           "MaxRecvDataSegmentLength=4096", header_digest, data_digest };
    for (size_t i = 0; i < HV_ARRAY_SIZE(keys); i++) {
        strcpy(text + n, keys[i]);
        n += strlen(keys[i]) + 1;
    }
    login_pdu(1, 3, true, text, n);
    struct rsp r;
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_LOGIN_RSP);
    assert_int_equal(login_status(&r), 0);
    assert_int_equal(r.bhs[1], 0x80 | (1 << 2) | 3);
    assert_int_not_equal(hv_be16(r.bhs + 14), 0);           /* TSIH */
    char copy[4096];
    assert_string_equal(key_of(&r, "TargetPortalGroupTag", copy), "1");
    assert_string_equal(key_of(&r, "MaxRecvDataSegmentLength", copy), "262144");
    assert_string_equal(key_of(&r, "InitialR2T", copy), "Yes");
    assert_string_equal(key_of(&r, "FirstBurstLength", copy), "4096");
    assert_true(fx->c->is_full_feature);
    fx->hd = fx->c->use_header_digest;
    fx->dd = fx->c->use_data_digest;

    /* A new nexus starts with POWER ON/RESET unit attention: the response
     * carries the sense data behind its two-byte length. */
    const uint8_t tur[6] = { 0 };
    scsi_cmd(tur, 6, 0, false, false, NULL, 0, fx->cmdsn++);
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_SCSI_RSP);
    assert_int_equal(r.bhs[3], SCSI_STATUS_CHECK_CONDITION);
    assert_true(r.len >= 2 + 14);
    assert_int_equal(hv_be16(r.data), r.len - 2);
    assert_int_equal(r.data[2 + 2] & 0x0f, SCSI_SENSE_UNIT_ATTENTION);
    assert_int_equal(r.data[2 + 12], 0x29);
}

static uint32_t scsi_cmd(const uint8_t *cdb, int cdb_len, uint32_t edtl, bool read, bool write,
                         const void *imm, uint32_t imm_len, uint32_t cmdsn)
{
    uint8_t b[48] = { 0 };
    uint32_t itt = fx->itt++;
    b[0] = ISCSI_OP_SCSI_CMD;
    b[1] = 0x80 | (read ? 0x40 : 0) | (write ? 0x20 : 0) | 1;
    hv_put_be32(b + 16, itt);
    hv_put_be32(b + 20, edtl);
    hv_put_be32(b + 24, cmdsn);
    memcpy(b + 32, cdb, (size_t)cdb_len);
    send_pdu(b, imm, imm_len, false);
    return itt;
}

static uint32_t next_cmdsn(void) { return fx->cmdsn++; }

/* --------------------------------------------------------------- tests */

static void test_inquiry_returns_data_in_with_collapsed_status(void **state)
{
    login_plain("HeaderDigest=None", "DataDigest=None");
    const uint8_t inq[6] = { 0x12, 0, 0, 0, 96, 0 };
    uint32_t itt = scsi_cmd(inq, 6, 96, true, false, NULL, 0, next_cmdsn());
    struct rsp r;
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_DATA_IN);
    assert_int_equal(r.bhs[1] & 0x81, 0x81);                /* F and S */
    assert_int_equal(r.bhs[3], SCSI_STATUS_GOOD);
    assert_int_equal(hv_be32(r.bhs + 16), itt);
    assert_true(r.len >= 36 && r.len <= 96);
    assert_int_equal(r.data[0], 0x00);                      /* disk, connected */
    assert_memory_equal(r.data + 8, "HVSTOR", 6);
    if (r.len < 96) {
        assert_true(r.bhs[1] & 0x02);                       /* underflow */
        assert_int_equal(hv_be32(r.bhs + 44), 96 - r.len);
    }
    assert_int_equal(hv_be32(r.bhs + 28), fx->cmdsn);       /* ExpCmdSN */
    assert_false(recv_pdu(&r));
}

static void test_write_with_immediate_data_and_r2t_reads_back(void **state)
{
    login_plain("HeaderDigest=None", "DataDigest=None");
    uint8_t data[8192];
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7 + 3);
    const uint8_t wr[10] = { 0x2a, 0, 0, 0, 0, 8, 0, 0, 16, 0 };
    uint32_t itt = scsi_cmd(wr, 10, 8192, false, true, data, 4096, next_cmdsn());

    /* InitialR2T=Yes, FirstBurstLength=4096: the rest comes on request. */
    struct rsp r;
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_R2T);
    assert_int_equal(hv_be32(r.bhs + 16), itt);
    assert_int_equal(hv_be32(r.bhs + 36), 0);               /* R2TSN */
    assert_int_equal(hv_be32(r.bhs + 40), 4096);            /* offset */
    assert_int_equal(hv_be32(r.bhs + 44), 4096);            /* length */
    uint32_t ttt = hv_be32(r.bhs + 20);
    assert_false(recv_pdu(&r));

    uint8_t b[48] = { 0 };
    b[0] = ISCSI_OP_DATA_OUT;
    b[1] = 0x80;
    hv_put_be32(b + 16, itt);
    hv_put_be32(b + 20, ttt);
    hv_put_be32(b + 36, 0);
    hv_put_be32(b + 40, 4096);
    send_pdu(b, data + 4096, 4096, false);
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_SCSI_RSP);
    assert_int_equal(r.bhs[3], SCSI_STATUS_GOOD);
    assert_int_equal(hv_be32(r.bhs + 36), 1);               /* ExpDataSN: one R2T */
    assert_memory_equal(ram + 8 * 512, data, sizeof(data));

    const uint8_t rd[10] = { 0x28, 0, 0, 0, 0, 8, 0, 0, 16, 0 };
    itt = scsi_cmd(rd, 10, 8192, true, false, NULL, 0, next_cmdsn());
    /* MaxRecvDataSegmentLength=4096: two Data-In PDUs, status on the last;
     * MaxBurstLength=4096 makes each its own sequence, so both carry F. */
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_DATA_IN);
    assert_int_equal(r.bhs[1] & 0x81, 0x80);
    assert_int_equal(r.len, 4096);
    assert_int_equal(hv_be32(r.bhs + 36), 0);
    assert_memory_equal(r.data, data, 4096);
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[1] & 0x81, 0x81);
    assert_int_equal(hv_be32(r.bhs + 36), 1);
    assert_int_equal(hv_be32(r.bhs + 40), 4096);
    assert_memory_equal(r.data, data + 4096, 4096);
}

static void test_cmdsn_outside_window_is_dropped_and_holes_wait(void **state)
{
    login_plain("HeaderDigest=None", "DataDigest=None");
    const uint8_t tur[6] = { 0 };
    struct rsp r;
    uint32_t exp = fx->cmdsn;

    scsi_cmd(tur, 6, 0, false, false, NULL, 0, exp + 5000);     /* beyond MaxCmdSN */
    scsi_cmd(tur, 6, 0, false, false, NULL, 0, exp - 1);        /* already seen */
    assert_false(recv_pdu(&r));

    uint32_t later = scsi_cmd(tur, 6, 0, false, false, NULL, 0, exp + 1);
    assert_false(recv_pdu(&r));                     /* waits for the hole */
    uint32_t first = scsi_cmd(tur, 6, 0, false, false, NULL, 0, exp);
    /* Both answered, in CmdSN order. */
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_SCSI_RSP);
    assert_int_equal(hv_be32(r.bhs + 16), first);
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_SCSI_RSP);
    assert_int_equal(hv_be32(r.bhs + 16), later);
    assert_false(recv_pdu(&r));
    assert_int_equal(hv_be32(r.bhs + 28), exp + 2);         /* ExpCmdSN */
    assert_true(hv_be32(r.bhs + 32) - (exp + 2) >= ISCSI_QUEUE_DEPTH - 2);
}

static void test_nop_out_is_echoed_with_its_data(void **state)
{
    login_plain("HeaderDigest=None", "DataDigest=None");
    uint8_t b[48] = { 0 };
    b[0] = 0x40 | ISCSI_OP_NOP_OUT;
    b[1] = 0x80;
    hv_put_be32(b + 16, 0x4242);
    hv_put_be32(b + 20, ISCSI_RSVD_TAG);
    hv_put_be32(b + 24, fx->cmdsn);
    send_pdu(b, "hello", 5, false);
    struct rsp r;
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_NOP_IN);
    assert_int_equal(hv_be32(r.bhs + 16), 0x4242);
    assert_int_equal(hv_be32(r.bhs + 20), ISCSI_RSVD_TAG);
    assert_int_equal(r.len, 5);
    assert_memory_equal(r.data, "hello", 5);
}

static void test_digests_cover_every_pdu_and_bad_data_digest_is_rejected(void **state)
{
    login_plain("HeaderDigest=CRC32C", "DataDigest=CRC32C");
    assert_true(fx->hd);
    assert_true(fx->dd);
    const uint8_t inq[6] = { 0x12, 0, 0, 0, 64, 0 };
    scsi_cmd(inq, 6, 64, true, false, NULL, 0, next_cmdsn());
    struct rsp r;
    assert_true(recv_pdu(&r));                      /* digests verified inside */
    assert_int_equal(r.bhs[0], ISCSI_OP_DATA_IN);

    uint8_t data[512] = { 1 };
    uint8_t b[48] = { 0 };
    const uint8_t wr[10] = { 0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0 };
    b[0] = ISCSI_OP_SCSI_CMD;
    b[1] = 0x80 | 0x20 | 1;
    hv_put_be32(b + 16, fx->itt++);
    hv_put_be32(b + 20, 512);
    hv_put_be32(b + 24, next_cmdsn());
    memcpy(b + 32, wr, 10);
    send_pdu(b, data, 512, true);
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_REJECT);
    assert_int_equal(r.bhs[2], ISCSI_REJECT_DATA_DIGEST);
    assert_false(conn_alive());
    assert_int_equal(ram[0], 0);                    /* nothing was written */
}

static void test_login_refusals_carry_rfc7143_status(void **state)
{
    struct rsp r;
    login_pdu(1, 3, true, KEYS("InitiatorName=iqn.i:good\0TargetName=iqn.t:none"));
    assert_true(recv_pdu(&r));
    assert_int_equal(login_status(&r), ISCSI_LOGIN_NOT_FOUND);
    assert_false(conn_alive());

    fx->c = iscsi_conn_new(fx->s, -1);
    login_pdu(1, 3, true, KEYS("InitiatorName=iqn.i:evil\0TargetName=iqn.t:disk"));
    assert_true(recv_pdu(&r));
    assert_int_equal(login_status(&r), ISCSI_LOGIN_FORBIDDEN);

    fx->c = iscsi_conn_new(fx->s, -1);
    login_pdu(1, 3, true, KEYS("TargetName=iqn.t:disk"));
    assert_true(recv_pdu(&r));
    assert_int_equal(login_status(&r), ISCSI_LOGIN_MISSING_PARAMETER);

    /* CHAP required: skipping the security stage is an auth failure. */
    fx->c = iscsi_conn_new(fx->s, -1);
    login_pdu(1, 3, true, KEYS("InitiatorName=iqn.i:good\0TargetName=iqn.t:chap"));
    assert_true(recv_pdu(&r));
    assert_int_equal(login_status(&r), ISCSI_LOGIN_AUTH_FAILED);
}

static void chap_login_keys(const char *first, size_t first_len, const char *secret,
                            uint16_t want_status)
{
    struct rsp r;
    char copy[4096];
    login_pdu(0, 1, true, first, first_len);
    assert_true(recv_pdu(&r));
    assert_int_equal(login_status(&r), 0);
    assert_int_equal(r.bhs[1] & 0x80, 0);           /* no transit before CHAP */
    assert_string_equal(key_of(&r, "AuthMethod", copy), "CHAP");
    login_pdu(0, 1, false, KEYS("CHAP_A=7,5"));
    assert_true(recv_pdu(&r));
    assert_string_equal(key_of(&r, "CHAP_A", copy), "7");      /* first we support */
    uint64_t id;
    assert_int_equal(iscsi_parse_number(key_of(&r, "CHAP_I", copy), &id), 0);
    uint8_t challenge[64];
    int clen = iscsi_parse_binary(key_of(&r, "CHAP_C", copy), challenge, sizeof(challenge));
    assert_true(clen >= 16);
    uint8_t resp[ISCSI_HASH_MAX];
    int rlen = iscsi_chap_response(7, (uint8_t)id, secret, challenge, (size_t)clen, resp);
    char text[256];
    int n = sprintf(text, "CHAP_N=alice") + 1;
    n += sprintf(text + n, "CHAP_R=0x");
    for (int i = 0; i < rlen; i++)
        n += sprintf(text + n, "%02x", resp[i]);
    n++;
    login_pdu(0, 1, true, text, (size_t)n);
    assert_true(recv_pdu(&r));
    assert_int_equal(login_status(&r), want_status);
    if (want_status == 0)
        assert_int_equal(r.bhs[1], 0x80 | 0 << 2 | 1);      /* T, CSG 0 -> NSG 1 */
}

static void chap_login(const char *secret, uint16_t want_status)
{
    chap_login_keys(KEYS("InitiatorName=iqn.i:good\0TargetName=iqn.t:chap\0"
                         "AuthMethod=None,CHAP"),
                    secret, want_status);
}

static void test_chap_sha256_accepts_right_secret(void **state)
{
    chap_login("alice-secret", 0);
}

static void test_chap_rejects_wrong_secret(void **state)
{
    chap_login("not-her-secret", ISCSI_LOGIN_AUTH_FAILED);
    assert_false(conn_alive());
}

static void test_discovery_lists_only_permitted_targets(void **state)
{
    struct rsp r;
    char copy[4096];
    login_pdu(1, 3, true, KEYS("InitiatorName=iqn.i:good\0SessionType=Discovery"));
    assert_true(recv_pdu(&r));
    assert_int_equal(login_status(&r), 0);
    uint8_t b[48] = { 0 };
    b[0] = 0x40 | ISCSI_OP_TEXT_REQ;
    b[1] = 0x80;
    hv_put_be32(b + 16, 0x77);
    hv_put_be32(b + 20, ISCSI_RSVD_TAG);
    send_pdu(b, "SendTargets=All", 16, false);
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_TEXT_RSP);
    assert_int_equal(r.bhs[1] & 0xc0, 0x80);        /* F, not C */
    memcpy(copy, r.data, r.len);
    assert_non_null(memmem(copy, r.len, "TargetName=iqn.t:disk", 21));
    /* Allowed, but its CHAP is not proved by this session. */
    assert_null(memmem(copy, r.len, "TargetName=iqn.t:chap", 21));

    /* A SCSI command in a discovery session is a protocol error. */
    const uint8_t tur[6] = { 0 };
    scsi_cmd(tur, 6, 0, false, false, NULL, 0, fx->cmdsn);
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_REJECT);
}

static void send_targets_all(struct rsp *r, char *copy)
{
    uint8_t b[48] = { 0 };
    b[0] = 0x40 | ISCSI_OP_TEXT_REQ;
    b[1] = 0x80;
    hv_put_be32(b + 16, 0x78);
    hv_put_be32(b + 20, ISCSI_RSVD_TAG);
    send_pdu(b, "SendTargets=All", 16, false);
    assert_true(recv_pdu(r));
    assert_int_equal(r->bhs[0], ISCSI_OP_TEXT_RSP);
    memcpy(copy, r->data, r->len);
}

static void test_discovery_requires_the_chap_of_its_targets(void **state)
{
    struct rsp r;
    char copy[4096];
    dir.discovery_auth = dir_discovery_auth;

    /* No security stage, a wrong secret, another user: refused. */
    login_pdu(1, 3, true, KEYS("InitiatorName=iqn.i:good\0SessionType=Discovery"));
    assert_true(recv_pdu(&r));
    assert_int_equal(login_status(&r), ISCSI_LOGIN_AUTH_FAILED);
    fx->c = iscsi_conn_new(fx->s, -1);
    chap_login_keys(KEYS("InitiatorName=iqn.i:good\0SessionType=Discovery\0"
                         "AuthMethod=CHAP,None"),
                    "not-her-secret", ISCSI_LOGIN_AUTH_FAILED);
    assert_false(conn_alive());

    /* The right secret: both targets, the CHAP one included. */
    fx->c = iscsi_conn_new(fx->s, -1);
    chap_login_keys(KEYS("InitiatorName=iqn.i:good\0SessionType=Discovery\0"
                         "AuthMethod=CHAP,None"),
                    "alice-secret", 0);
    login_pdu(1, 3, true, KEYS("HeaderDigest=None"));
    assert_true(recv_pdu(&r));
    assert_int_equal(login_status(&r), 0);
    send_targets_all(&r, copy);
    assert_non_null(memmem(copy, r.len, "TargetName=iqn.t:disk", 21));
    assert_non_null(memmem(copy, r.len, "TargetName=iqn.t:chap", 21));
}

static void test_abort_task_of_a_write_waiting_for_data(void **state)
{
    login_plain("HeaderDigest=None", "DataDigest=None");
    uint8_t data[8192] = { 9 };
    const uint8_t wr[10] = { 0x2a, 0, 0, 0, 0, 0, 0, 0, 16, 0 };
    uint32_t itt = scsi_cmd(wr, 10, 8192, false, true, data, 4096, next_cmdsn());
    struct rsp r;
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_R2T);
    uint32_t ttt = hv_be32(r.bhs + 20);

    uint8_t b[48] = { 0 };
    b[0] = 0x40 | ISCSI_OP_TMF_REQ;
    b[1] = 0x80 | 1;                                /* ABORT TASK */
    hv_put_be32(b + 16, 0x9999);
    hv_put_be32(b + 20, itt);
    hv_put_be32(b + 24, fx->cmdsn);
    hv_put_be32(b + 32, fx->cmdsn - 1);
    send_pdu(b, NULL, 0, false);
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_TMF_RSP);
    assert_int_equal(r.bhs[2], SCSI_TMF_COMPLETE);
    assert_int_equal(hv_be32(r.bhs + 16), 0x9999);

    /* The initiator's late Data-Out is swallowed; no response for the task. */
    memset(b, 0, sizeof(b));
    b[0] = ISCSI_OP_DATA_OUT;
    b[1] = 0x80;
    hv_put_be32(b + 16, itt);
    hv_put_be32(b + 20, ttt);
    hv_put_be32(b + 40, 4096);
    send_pdu(b, data + 4096, 4096, false);
    assert_false(recv_pdu(&r));
    assert_int_equal(ram[0], 0);

    /* Abort of a task that is long gone: "task does not exist". */
    memset(b, 0, sizeof(b));
    b[0] = 0x40 | ISCSI_OP_TMF_REQ;
    b[1] = 0x80 | 1;
    hv_put_be32(b + 16, 0x999a);
    hv_put_be32(b + 20, itt);
    hv_put_be32(b + 24, fx->cmdsn);
    hv_put_be32(b + 32, fx->cmdsn - 1);
    send_pdu(b, NULL, 0, false);
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[2], SCSI_TMF_TASK_NOT_FOUND);
}

static void test_logout_answers_and_ends_the_connection(void **state)
{
    login_plain("HeaderDigest=None", "DataDigest=None");
    uint8_t b[48] = { 0 };
    b[0] = 0x40 | ISCSI_OP_LOGOUT_REQ;
    b[1] = 0x80;
    hv_put_be32(b + 16, 0x55);
    hv_put_be32(b + 24, fx->cmdsn);
    send_pdu(b, NULL, 0, false);
    struct rsp r;
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_LOGOUT_RSP);
    assert_int_equal(r.bhs[2], 0);
    turn();
    assert_false(conn_alive());                     /* closed and freed */
    assert_null(fx->s->conns);
}


static void test_idle_connection_is_pinged_and_dropped_when_silent(void **state)
{
    login_plain("HeaderDigest=None", "DataDigest=None");
    iscsi_server_set_keepalive(fx->s, 1, 1);
    struct rsp r;

    fx->c->last_rx_ns = hv_now_ns() - 5000000;
    iscsi_conn_timer(fx->c);
    turn();
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_NOP_IN);
    assert_int_equal(hv_be32(r.bhs + 16), ISCSI_RSVD_TAG);
    uint32_t ttt = hv_be32(r.bhs + 20);
    assert_int_not_equal(ttt, ISCSI_RSVD_TAG);

    /* The initiator answers: no reply to the answer, the ping is settled. */
    uint8_t b[48] = { 0 };
    b[0] = 0x40 | ISCSI_OP_NOP_OUT;
    b[1] = 0x80;
    hv_put_be32(b + 16, ISCSI_RSVD_TAG);
    hv_put_be32(b + 20, ttt);
    hv_put_be32(b + 24, fx->cmdsn);
    send_pdu(b, NULL, 0, false);
    assert_false(recv_pdu(&r));
    assert_false(fx->c->nop_outstanding);

    /* Next time it stays silent past the timeout: the connection goes. */
    fx->c->last_rx_ns = hv_now_ns() - 5000000;
    iscsi_conn_timer(fx->c);
    turn();
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_NOP_IN);
    fx->c->nop_sent_ns = hv_now_ns() - 5000000;
    iscsi_conn_timer(fx->c);
    assert_true(fx->c->is_closing);
}

static void test_shutdown_finishes_commands_in_flight_first(void **state)
{
    login_plain("HeaderDigest=None", "DataDigest=None");
    memset(ram, 0x6b, 4096);
    uint8_t b[48] = { 0 };
    const uint8_t rd[10] = { 0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0 };
    b[0] = ISCSI_OP_SCSI_CMD;
    b[1] = 0x80 | 0x40 | 1;
    hv_put_be32(b + 16, 0x31);
    hv_put_be32(b + 20, 4096);
    hv_put_be32(b + 24, fx->cmdsn++);
    memcpy(b + 32, rd, 10);
    assert_int_equal(iscsi_conn_rx(fx->c, b, 48), 48);   /* no turn: still reading */
    assert_int_equal(fx->c->cmds_exec, 1);

    bool done = false;
    iscsi_server_shutdown(fx->s, &done);
    assert_false(done);
    turn();
    assert_true(done);
    struct rsp r;
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_DATA_IN);
    assert_int_equal(r.bhs[1] & 0x81, 0x81);
    assert_int_equal(r.len, 4096);
    assert_int_equal(r.data[4095], 0x6b);
    assert_null(fx->s->conns);
}

static void test_abort_of_a_command_behind_a_cmdsn_hole_keeps_the_window_moving(void **state)
{
    login_plain("HeaderDigest=None", "DataDigest=None");
    const uint8_t tur[6] = { 0 };
    struct rsp r;
    uint32_t exp = fx->cmdsn;

    uint32_t waiting = scsi_cmd(tur, 6, 0, false, false, NULL, 0, exp + 1);
    assert_false(recv_pdu(&r));
    uint8_t b[48] = { 0 };
    b[0] = 0x40 | ISCSI_OP_TMF_REQ;
    b[1] = 0x80 | 1;
    hv_put_be32(b + 16, 0x7001);
    hv_put_be32(b + 20, waiting);
    hv_put_be32(b + 24, exp);
    hv_put_be32(b + 32, exp + 1);
    send_pdu(b, NULL, 0, false);
    assert_true(recv_pdu(&r));
    assert_int_equal(r.bhs[0], ISCSI_OP_TMF_RSP);
    assert_int_equal(r.bhs[2], SCSI_TMF_COMPLETE);

    /* The hole closes: the aborted command's CmdSN still counts, it gets
     * no response, and the next command runs. */
    uint32_t first = scsi_cmd(tur, 6, 0, false, false, NULL, 0, exp);
    assert_true(recv_pdu(&r));
    assert_int_equal(hv_be32(r.bhs + 16), first);
    assert_int_equal(hv_be32(r.bhs + 28), exp + 2);
    assert_false(recv_pdu(&r));
    uint32_t next = scsi_cmd(tur, 6, 0, false, false, NULL, 0, exp + 2);
    assert_true(recv_pdu(&r));
    assert_int_equal(hv_be32(r.bhs + 16), next);
    assert_int_equal(r.bhs[3], SCSI_STATUS_GOOD);
}

static void test_long_text_response_comes_in_pieces_on_request(void **state)
{
    struct rsp r;
    login_pdu(1, 3, true, KEYS("InitiatorName=iqn.i:good\0SessionType=Discovery"));
    assert_true(recv_pdu(&r));
    assert_int_equal(login_status(&r), 0);
    fx->c->params.initiator_mrdsl = 20;             /* force several pieces */

    char all[1024];
    size_t len = 0;
    uint32_t ttt = ISCSI_RSVD_TAG;
    int pieces = 0;
    for (;;) {
        uint8_t b[48] = { 0 };
        b[0] = 0x40 | ISCSI_OP_TEXT_REQ;
        b[1] = 0x80;
        hv_put_be32(b + 16, 0x88);
        hv_put_be32(b + 20, ttt);
        if (ttt == ISCSI_RSVD_TAG)
            send_pdu(b, "SendTargets=All", 16, false);
        else
            send_pdu(b, NULL, 0, false);
        assert_true(recv_pdu(&r));
        assert_int_equal(r.bhs[0], ISCSI_OP_TEXT_RSP);
        assert_true(r.len <= 20);
        memcpy(all + len, r.data, r.len);
        len += r.len;
        pieces++;
        if (r.bhs[1] & 0x80) {
            assert_int_equal(hv_be32(r.bhs + 20), ISCSI_RSVD_TAG);
            break;
        }
        assert_int_equal(r.bhs[1] & 0x40, 0x40);    /* C: more to come */
        ttt = hv_be32(r.bhs + 20);
        assert_int_not_equal(ttt, ISCSI_RSVD_TAG);
        assert_true(pieces < 20);
    }
    assert_true(pieces >= 3);
    struct iscsi_keys k;
    assert_int_equal(iscsi_keys_parse(all, len, &k), 0);
    /* iqn.t:chap needs CHAP this discovery did not prove: not listed. */
    assert_int_equal(k.count, 2);                   /* one target, its address */
    assert_string_equal(k.key[0].value, "iqn.t:disk");
    assert_string_equal(k.key[1].name, "TargetAddress");
}

static void test_new_login_with_the_same_isid_reinstates_the_session(void **state)
{
    login_plain("HeaderDigest=None", "DataDigest=None");
    struct iscsi_conn *old = fx->c;
    assert_int_equal(iscsi_server_sessions(fx->s), 1);
    fx->c = iscsi_conn_new(fx->s, -1);
    login_plain("HeaderDigest=None", "DataDigest=None");    /* same initiator, same ISID */
    turn();
    for (struct iscsi_conn *c = fx->s->conns; c; c = c->next)
        assert_ptr_not_equal(c, old);                       /* the old one is gone */
    assert_int_equal(iscsi_server_sessions(fx->s), 1);
    assert_true(iscsi_server_target_busy(fx->s, "iqn.t:disk"));
    iscsi_server_drop_target(fx->s, "iqn.t:disk");
    turn();
    assert_false(iscsi_server_target_busy(fx->s, "iqn.t:disk"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_inquiry_returns_data_in_with_collapsed_status, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_write_with_immediate_data_and_r2t_reads_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cmdsn_outside_window_is_dropped_and_holes_wait,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_nop_out_is_echoed_with_its_data, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_digests_cover_every_pdu_and_bad_data_digest_is_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_login_refusals_carry_rfc7143_status, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_chap_sha256_accepts_right_secret, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chap_rejects_wrong_secret, setup, teardown),
        cmocka_unit_test_setup_teardown(test_discovery_requires_the_chap_of_its_targets, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_discovery_lists_only_permitted_targets, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_abort_task_of_a_write_waiting_for_data, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_logout_answers_and_ends_the_connection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_idle_connection_is_pinged_and_dropped_when_silent,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_shutdown_finishes_commands_in_flight_first, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(
            test_abort_of_a_command_behind_a_cmdsn_hole_keeps_the_window_moving, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_text_response_comes_in_pieces_on_request,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_login_with_the_same_isid_reinstates_the_session,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
