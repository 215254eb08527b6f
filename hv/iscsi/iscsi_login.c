/*
 * Login (RFC 7143 6, 11.12-13): security negotiation with CHAP or none,
 * operational negotiation, the move to full feature phase with its nexus;
 * and Text requests (SendTargets) in discovery and normal sessions.
 *
 * Who may log in to what is the directory's answer, asked once on the
 * first Login PDU: an unknown target fails with 0x0203, an initiator the
 * target does not allow with 0x0202, a wrong CHAP answer with 0x0201.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "iscsi_int.h"

static void login_send(struct iscsi_conn *c, uint16_t status, bool transit, uint8_t nsg,
                       struct iscsi_text *rsp)
{
    const struct iscsi_pdu *p = &c->pdu;
    struct iscsi_tx *tx = iscsi_tx_get(c);
    if (!tx) {
        iscsi_text_free(rsp);
        iscsi_conn_close(c, "out of memory");
        return;
    }
    tx->hdr[0] = ISCSI_OP_LOGIN_RSP;
    tx->hdr[1] = (uint8_t)((transit ? 0x80 : 0) | (c->login_stage & 3) << 2 |
                           (transit ? (nsg & 3) : 0));
    tx->hdr[2] = 0;                     /* VersionMax */
    tx->hdr[3] = 0;                     /* VersionActive */
    memcpy(tx->hdr + 8, p->isid, 6);
    if (transit && nsg == ISCSI_STAGE_FULL_FEATURE)
        hv_put_be16(tx->hdr + 14, c->tsih);
    hv_put_be32(tx->hdr + 16, p->itt);
    iscsi_conn_fill_sn(c, tx->hdr, true);
    tx->hdr[36] = (uint8_t)(status >> 8);
    tx->hdr[37] = (uint8_t)status;
    if (rsp && rsp->len && !rsp->is_oom) {
        tx->owned = rsp->buf;
        tx->data = (const uint8_t *)rsp->buf;
        tx->data_bytes = (uint32_t)rsp->len;
        rsp->buf = NULL;
    }
    if (rsp)
        iscsi_text_free(rsp);
    if (status != ISCSI_LOGIN_OK) {
        /* The connection ends once the failure is on the wire. */
        tx->close_after = true;
        c->is_logged_out = true;
    }
    iscsi_tx_queue(c, tx);
}

static void login_fail(struct iscsi_conn *c, uint16_t status, const char *why)
{
    hv_info("iscsi %s: login of %s to %s refused (0x%04x): %s", c->peer,
            c->initiator[0] ? c->initiator : "?", c->target[0] ? c->target : "?", status, why);
    login_send(c, status, false, 0, NULL);
}

static void hex_encode(const uint8_t *b, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    out[0] = '0';
    out[1] = 'x';
    for (size_t i = 0; i < n; i++) {
        out[2 + 2 * i] = digits[b[i] >> 4];
        out[3 + 2 * i] = digits[b[i] & 15];
    }
    out[2 + 2 * n] = '\0';
}

/* Constant time, so a wrong response does not tell how wrong it was. */
static bool same_bytes(const uint8_t *a, const uint8_t *b, size_t n)
{
    uint8_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

/* Choose from the initiator's AuthMethod list. */
static int pick_auth_method(struct iscsi_conn *c, const char *list, struct iscsi_text *rsp)
{
    char buf[256];
    char *save = NULL;

    if (strlen(list) >= sizeof(buf))
        return -EINVAL;
    strcpy(buf, list);
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "CHAP") == 0 && c->auth.is_chap_required) {
            iscsi_text_add(rsp, "AuthMethod", "CHAP");
            c->auth_state = AUTH_WAIT_CHAP_A;
            return 0;
        }
        if (strcmp(tok, "None") == 0 && !c->auth.is_chap_required) {
            iscsi_text_add(rsp, "AuthMethod", "None");
            c->auth_state = AUTH_DONE;
            return 0;
        }
    }
    iscsi_text_add(rsp, "AuthMethod", "Reject");
    return -EACCES;
}

static int chap_offer(struct iscsi_conn *c, const char *list, struct iscsi_text *rsp)
{
    char buf[256];
    char *save = NULL;
    char hex[2 + 2 * 32 + 1];

    if (strlen(list) >= sizeof(buf))
        return -EINVAL;
    strcpy(buf, list);
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        uint64_t a;
        if (iscsi_parse_number(tok, &a) < 0 || !iscsi_chap_digest_bytes((int)a) || a > 255)
            continue;
        c->chap_algorithm = (int)a;
        size_t clen = iscsi_chap_digest_bytes(c->chap_algorithm);
        if (hv_random_bytes(&c->chap_id, 1) < 0 ||
            hv_random_bytes(c->chap_challenge, clen) < 0)
            return -EIO;
        hex_encode(c->chap_challenge, clen, hex);
        iscsi_text_add(rsp, "CHAP_A", "%d", c->chap_algorithm);
        iscsi_text_add(rsp, "CHAP_I", "%u", c->chap_id);
        iscsi_text_add(rsp, "CHAP_C", "%s", hex);
        c->auth_state = AUTH_WAIT_CHAP_R;
        return 0;
    }
    iscsi_text_add(rsp, "CHAP_A", "Reject");
    return -EACCES;
}

/* Check the initiator's CHAP_N/CHAP_R; answer its challenge when mutual. */
static int chap_verify(struct iscsi_conn *c, const struct iscsi_keys *k, struct iscsi_text *rsp,
                       const char **why)
{
    const char *name = iscsi_keys_get(k, "CHAP_N");
    const char *resp = iscsi_keys_get(k, "CHAP_R");
    const char *ci = iscsi_keys_get(k, "CHAP_I");
    const char *cc = iscsi_keys_get(k, "CHAP_C");
    size_t dlen = iscsi_chap_digest_bytes(c->chap_algorithm);
    uint8_t got[64];
    uint8_t want[ISCSI_HASH_MAX];

    if (!name || !resp) {
        *why = "CHAP_N or CHAP_R missing";
        return -EACCES;
    }
    int n = iscsi_parse_binary(resp, got, sizeof(got));
    if (c->is_discovery) {
        /* Discovery: any of the credentials the directory names will do;
         * the one proved decides what SendTargets shows. */
        struct iscsi_server *s = c->server;
        struct iscsi_auth a;
        bool is_proved = false;
        for (unsigned i = 0; !is_proved && s->ops->discovery_auth; i++) {
            memset(&a, 0, sizeof(a));
            if (s->ops->discovery_auth(s->arg, c->initiator, i, &a) < 0)
                break;
            if (!a.is_chap_required || strcmp(name, a.chap_user) != 0)
                continue;
            iscsi_chap_response(c->chap_algorithm, c->chap_id, a.chap_secret,
                                c->chap_challenge, dlen, want);
            is_proved = n == (int)dlen && same_bytes(got, want, dlen);
        }
        explicit_bzero(want, sizeof(want));
        if (!is_proved) {
            explicit_bzero(&a, sizeof(a));
            *why = "unknown CHAP user or wrong CHAP response";
            return -EACCES;
        }
        c->auth = a;
        explicit_bzero(&a, sizeof(a));
    } else {
        if (strcmp(name, c->auth.chap_user) != 0) {
            *why = "unknown CHAP user";
            return -EACCES;
        }
        iscsi_chap_response(c->chap_algorithm, c->chap_id, c->auth.chap_secret,
                            c->chap_challenge, dlen, want);
        if (n != (int)dlen || !same_bytes(got, want, dlen)) {
            *why = "wrong CHAP response";
            return -EACCES;
        }
    }
    if (!ci && !cc) {
        c->auth_state = AUTH_DONE;
        return 0;
    }
    /* Mutual CHAP: the initiator challenges us. */
    uint64_t id;
    uint8_t challenge[1024];
    if (!ci || !cc || iscsi_parse_number(ci, &id) < 0 || id > 255) {
        *why = "malformed mutual CHAP challenge";
        return -EACCES;
    }
    int clen = iscsi_parse_binary(cc, challenge, sizeof(challenge));
    if (clen <= 0) {
        *why = "malformed mutual CHAP challenge";
        return -EACCES;
    }
    if (!c->auth.is_mutual) {
        *why = "mutual CHAP requested but the target has no secret for it";
        return -EACCES;
    }
    if ((size_t)clen == dlen && memcmp(challenge, c->chap_challenge, dlen) == 0) {
        *why = "initiator reflected our CHAP challenge";
        return -EACCES;
    }
    char hex[2 + 2 * ISCSI_HASH_MAX + 1];
    iscsi_chap_response(c->chap_algorithm, (uint8_t)id, c->auth.mutual_secret, challenge,
                        (size_t)clen, want);
    hex_encode(want, dlen, hex);
    iscsi_text_add(rsp, "CHAP_N", "%s", c->auth.mutual_user);
    iscsi_text_add(rsp, "CHAP_R", "%s", hex);
    c->auth_state = AUTH_DONE;
    return 0;
}

static bool is_declarative_login_key(const char *name)
{
    return strcmp(name, "InitiatorName") == 0 || strcmp(name, "TargetName") == 0 ||
           strcmp(name, "SessionType") == 0 || strcmp(name, "InitiatorAlias") == 0 ||
           strncmp(name, "CHAP_", 5) == 0 || strcmp(name, "AuthMethod") == 0;
}

/* The first Login PDU names who logs in to what; ask the directory. */
static int login_identify(struct iscsi_conn *c, const struct iscsi_keys *k, uint16_t *status,
                          const char **why)
{
    struct iscsi_server *s = c->server;
    const char *initiator = iscsi_keys_get(k, "InitiatorName");
    const char *type = iscsi_keys_get(k, "SessionType");
    const char *target = iscsi_keys_get(k, "TargetName");

    if (!initiator || !*initiator || strlen(initiator) >= sizeof(c->initiator)) {
        *status = ISCSI_LOGIN_MISSING_PARAMETER;
        *why = "no usable InitiatorName";
        return -EINVAL;
    }
    snprintf(c->initiator, sizeof(c->initiator), "%s", initiator);
    if (type && strcmp(type, "Discovery") == 0) {
        /* Which credentials is decided when CHAP_N arrives (chap_verify);
         * here only whether the security stage is required. */
        struct iscsi_auth a = { 0 };
        c->is_discovery = true;
        memset(&c->auth, 0, sizeof(c->auth));
        if (s->ops->discovery_auth && s->ops->discovery_auth(s->arg, c->initiator, 0, &a) == 0)
            c->auth.is_chap_required = a.is_chap_required;
        explicit_bzero(&a, sizeof(a));
        return 0;
    }
    if (type && strcmp(type, "Normal") != 0) {
        *status = ISCSI_LOGIN_SESSION_TYPE;
        *why = "unknown SessionType";
        return -EINVAL;
    }
    if (!target || !*target || strlen(target) >= sizeof(c->target)) {
        *status = ISCSI_LOGIN_MISSING_PARAMETER;
        *why = "no usable TargetName";
        return -EINVAL;
    }
    snprintf(c->target, sizeof(c->target), "%s", target);
    memset(&c->auth, 0, sizeof(c->auth));
    int ret = s->ops->lookup(s->arg, c->target, c->initiator, &c->auth, &c->ctl);
    if (ret == -ENOENT) {
        *status = ISCSI_LOGIN_NOT_FOUND;
        *why = "no such target";
        return ret;
    }
    if (ret == -EACCES) {
        *status = ISCSI_LOGIN_FORBIDDEN;
        *why = "initiator not allowed";
        return ret;
    }
    if (ret < 0 || !c->ctl) {
        *status = ISCSI_LOGIN_TARGET_ERROR;
        *why = "target lookup failed";
        return ret < 0 ? ret : -EIO;
    }
    return 0;
}

static void session_start(struct iscsi_conn *c)
{
    struct iscsi_server *s = c->server;

    /* Session reinstatement (RFC 7143 6.3.5): same initiator port, new
     * leading login: the old session goes. */
    for (struct iscsi_conn *o = s->conns; o; o = o->next) {
        if (o != c && o->is_full_feature && !o->is_closing &&
            memcmp(o->isid, c->isid, 6) == 0 && strcmp(o->initiator, c->initiator) == 0 &&
            o->is_discovery == c->is_discovery && strcmp(o->target, c->target) == 0)
            iscsi_conn_close(o, "session reinstated by a new login");
    }
    if (++s->next_tsih == 0)
        s->next_tsih = 1;
    c->tsih = s->next_tsih;
    if (!c->is_discovery) {
        snprintf(c->nexus.initiator, sizeof(c->nexus.initiator),
                 "%s,i,0x%02x%02x%02x%02x%02x%02x", c->initiator, c->isid[0], c->isid[1],
                 c->isid[2], c->isid[3], c->isid[4], c->isid[5]);
        c->nexus.id = ++s->next_nexus_id;
        scsi_controller_nexus_add(c->ctl, &c->nexus);
        c->has_nexus = true;
    }
    hv_info("iscsi %s: %s logged in to %s%s%s", c->peer, c->initiator,
            c->is_discovery ? "discovery" : c->target,
            c->params.header_digest ? " +HeaderDigest" : "",
            c->params.data_digest ? " +DataDigest" : "");
}

void iscsi_login_pdu(struct iscsi_conn *c, const uint8_t *data, uint32_t len)
{
    const struct iscsi_pdu *p = &c->pdu;
    struct iscsi_text rsp = { 0 };
    struct iscsi_keys keys;
    uint16_t status = ISCSI_LOGIN_OK;
    const char *why = "";

    /* Keys may span PDUs (C bit); gather them before acting. */
    if (c->login_text_len + len > ISCSI_TEXT_MAX) {
        login_fail(c, ISCSI_LOGIN_OUT_OF_RESOURCES, "login text too long");
        return;
    }
    char *nb = realloc(c->login_text, c->login_text_len + len + 1);
    if (!nb) {
        login_fail(c, ISCSI_LOGIN_OUT_OF_RESOURCES, "out of memory");
        return;
    }
    c->login_text = nb;
    memcpy(c->login_text + c->login_text_len, data, len);
    c->login_text_len += len;
    bool is_first = !c->login_started;
    if (is_first) {
        c->login_started = true;
        memcpy(c->isid, p->isid, 6);
        c->cid = p->cid;
        c->exp_cmdsn = p->cmdsn;
        c->max_cmdsn = p->cmdsn + ISCSI_QUEUE_DEPTH - 1;
        c->stat_sn = p->expstatsn;
        c->login_stage = p->csg;
        if (p->version_min > 0) {
            login_fail(c, ISCSI_LOGIN_UNSUPPORTED_VERSION, "iSCSI version not supported");
            return;
        }
        if (p->tsih != 0) {
            /* MaxConnections=1: no connection joins an existing session. */
            login_fail(c, ISCSI_LOGIN_NO_SESSION, "adding a connection to a session");
            return;
        }
    }
    if (p->is_continue) {
        login_send(c, ISCSI_LOGIN_OK, false, 0, NULL);
        return;
    }
    /* Make sure the last pair is NUL-terminated, then split. */
    if (c->login_text_len && c->login_text[c->login_text_len - 1] != '\0')
        c->login_text[c->login_text_len++] = '\0';
    int ret = iscsi_keys_parse(c->login_text, c->login_text_len, &keys);
    if (ret < 0) {
        login_fail(c, ISCSI_LOGIN_INITIATOR_ERROR, "malformed login keys");
        return;
    }
    if (p->csg != c->login_stage || p->csg == 2 || p->csg == ISCSI_STAGE_FULL_FEATURE) {
        login_fail(c, ISCSI_LOGIN_INITIATOR_ERROR, "login stage out of sequence");
        goto done;
    }
    if (is_first) {
        ret = login_identify(c, &keys, &status, &why);
        if (ret < 0) {
            login_fail(c, status, why);
            goto done;
        }
        if (!c->is_discovery) {
            /* RFC 7143 13.9: the first response of a leading login names
             * the portal group. */
            iscsi_text_add(&rsp, "TargetPortalGroupTag", "1");
        }
    }

    /* Operational keys and the rest. */
    for (int i = 0; i < keys.count; i++) {
        const char *name = keys.key[i].name;
        const char *value = keys.key[i].value;
        hv_debug("iscsi %s: login stage %u: %s=%s", c->peer, c->login_stage, name,
                 strncmp(name, "CHAP_", 5) == 0 ? "..." : value);
        if (is_declarative_login_key(name))
            continue;
        ret = iscsi_params_negotiate(&c->params, name, value, &rsp);
        if (ret < 0) {
            login_fail(c, ISCSI_LOGIN_INITIATOR_ERROR, "invalid value of an operational key");
            goto done;
        }
        if (ret == 0)
            iscsi_text_add(&rsp, name, "NotUnderstood");
    }

    /* Security stage. */
    const char *method = iscsi_keys_get(&keys, "AuthMethod");
    if (method) {
        if (c->login_stage != ISCSI_STAGE_SECURITY || c->auth_state != AUTH_START) {
            login_fail(c, ISCSI_LOGIN_INITIATOR_ERROR, "AuthMethod out of sequence");
            goto done;
        }
        if (pick_auth_method(c, method, &rsp) < 0) {
            login_fail(c, ISCSI_LOGIN_AUTH_FAILED, "no acceptable AuthMethod");
            goto done;
        }
    }
    const char *chap_a = iscsi_keys_get(&keys, "CHAP_A");
    if (chap_a) {
        if (c->auth_state != AUTH_WAIT_CHAP_A) {
            login_fail(c, ISCSI_LOGIN_INITIATOR_ERROR, "CHAP_A out of sequence");
            goto done;
        }
        if (chap_offer(c, chap_a, &rsp) < 0) {
            login_fail(c, ISCSI_LOGIN_AUTH_FAILED, "no acceptable CHAP algorithm");
            goto done;
        }
    } else if (iscsi_keys_get(&keys, "CHAP_R") || iscsi_keys_get(&keys, "CHAP_N")) {
        if (c->auth_state != AUTH_WAIT_CHAP_R) {
            login_fail(c, ISCSI_LOGIN_INITIATOR_ERROR, "CHAP response out of sequence");
            goto done;
        }
        if (chap_verify(c, &keys, &rsp, &why) < 0) {
            login_fail(c, ISCSI_LOGIN_AUTH_FAILED, why);
            goto done;
        }
    }

    /* Stage transition. An initiator that starts in (or moves to) the
     * operational stage without authenticating gets in only when the
     * target asks for no CHAP. */
    bool transit = false;
    uint8_t nsg = 0;
    if (c->login_stage == ISCSI_STAGE_OPERATIONAL && c->auth_state != AUTH_DONE) {
        if (c->auth.is_chap_required) {
            login_fail(c, ISCSI_LOGIN_AUTH_FAILED, "CHAP required");
            goto done;
        }
        c->auth_state = AUTH_DONE;
    }
    if (p->is_transit) {
        if (c->login_stage == ISCSI_STAGE_SECURITY && c->auth_state == AUTH_START) {
            /* The initiator skipped AuthMethod altogether. */
            if (c->auth.is_chap_required) {
                login_fail(c, ISCSI_LOGIN_AUTH_FAILED, "CHAP required");
                goto done;
            }
            c->auth_state = AUTH_DONE;
        }
        bool valid = (p->nsg == ISCSI_STAGE_OPERATIONAL && c->login_stage == 0) ||
                     p->nsg == ISCSI_STAGE_FULL_FEATURE;
        if (!valid) {
            login_fail(c, ISCSI_LOGIN_INITIATOR_ERROR, "invalid next stage");
            goto done;
        }
        /* Mid-way through CHAP we answer without transit: the initiator
         * must finish the exchange first. */
        transit = c->auth_state == AUTH_DONE;
        nsg = p->nsg;
    }
    if (!c->login_declared_mrdsl &&
        (c->login_stage == ISCSI_STAGE_OPERATIONAL ||
         (transit && nsg == ISCSI_STAGE_OPERATIONAL) ||
         iscsi_keys_get(&keys, "MaxRecvDataSegmentLength"))) {
        /* Declarative: tells the initiator how large its Data-Out PDUs may be. */
        iscsi_text_add(&rsp, "MaxRecvDataSegmentLength", "%u", (unsigned)ISCSI_OUR_MRDSL);
        c->login_declared_mrdsl = true;
    }
    if (rsp.is_oom) {
        login_fail(c, ISCSI_LOGIN_OUT_OF_RESOURCES, "out of memory");
        goto done;
    }
    if (transit && nsg == ISCSI_STAGE_FULL_FEATURE)
        session_start(c);
    login_send(c, ISCSI_LOGIN_OK, transit, nsg, &rsp);
    if (transit) {
        c->login_stage = nsg;
        if (nsg == ISCSI_STAGE_FULL_FEATURE) {
            c->is_full_feature = true;
            c->use_header_digest = c->params.header_digest;
            c->use_data_digest = c->params.data_digest;
            c->last_rx_ns = hv_now_ns();
        }
    }
done:
    iscsi_text_free(&rsp);
    c->login_text_len = 0;
}

/* --------------------------------------------------------------- Text */

struct send_targets_ctx {
    struct iscsi_conn *conn;
    struct iscsi_text *rsp;
    const char *filter;                 /* "All", a name, or "" (this session's) */
};

/* A target is shown to a session that is allowed to log in to it AND has
 * proved the CHAP it requires: the same user and secret (a discovery
 * session proved the ones it chose, a normal session its own target's). */
static bool may_show_target(struct iscsi_conn *c, const char *target)
{
    struct iscsi_server *s = c->server;
    struct iscsi_auth a = { 0 };
    struct scsi_controller *ctl = NULL;
    bool ok;

    if (s->ops->lookup(s->arg, target, c->initiator, &a, &ctl) < 0)
        return false;
    ok = !a.is_chap_required ||
         (c->auth.is_chap_required && strcmp(a.chap_user, c->auth.chap_user) == 0 &&
          strcmp(a.chap_secret, c->auth.chap_secret) == 0);
    explicit_bzero(&a, sizeof(a));
    return ok;
}

static void send_targets_emit(void *arg, const char *target)
{
    struct send_targets_ctx *ctx = arg;
    struct iscsi_conn *c = ctx->conn;

    if (strcmp(ctx->filter, "All") != 0) {
        const char *want = ctx->filter[0] ? ctx->filter : c->target;
        if (strcmp(want, target) != 0)
            return;
    }
    if (!may_show_target(c, target))
        return;
    iscsi_text_add(ctx->rsp, "TargetName", "%s", target);
    if (strchr(c->local_addr, ':'))
        iscsi_text_add(ctx->rsp, "TargetAddress", "[%s]:%u,1", c->local_addr, c->local_port);
    else
        iscsi_text_add(ctx->rsp, "TargetAddress", "%s:%u,1", c->local_addr, c->local_port);
}

/* Send the next piece of a Text response that exceeds the initiator's MRDSL. */
static void text_send_piece(struct iscsi_conn *c, uint32_t itt)
{
    size_t left = c->text_pending_len - c->text_pending_off;
    size_t n = HV_MIN(left, (size_t)c->params.initiator_mrdsl);
    bool is_last = n == left;
    struct iscsi_tx *tx = iscsi_tx_get(c);
    uint8_t *piece = n ? malloc(n) : NULL;

    if (!tx || (n && !piece)) {
        free(piece);
        iscsi_conn_close(c, "out of memory");
        return;
    }
    if (n)
        memcpy(piece, c->text_pending + c->text_pending_off, n);
    c->text_pending_off += n;
    tx->hdr[0] = ISCSI_OP_TEXT_RSP;
    tx->hdr[1] = is_last ? 0x80 : 0x40;     /* F, or C: more to come */
    hv_put_be32(tx->hdr + 16, itt);
    if (is_last) {
        hv_put_be32(tx->hdr + 20, ISCSI_RSVD_TAG);
    } else {
        c->text_ttt = (c->text_ttt + 1) & 0x7fffffff;
        hv_put_be32(tx->hdr + 20, c->text_ttt);
    }
    iscsi_conn_fill_sn(c, tx->hdr, true);
    tx->owned = piece;
    tx->data = piece;
    tx->data_bytes = (uint32_t)n;
    iscsi_tx_queue(c, tx);
    if (is_last) {
        free(c->text_pending);
        c->text_pending = NULL;
        c->text_pending_len = c->text_pending_off = 0;
    }
}

void iscsi_text_pdu(struct iscsi_conn *c, const uint8_t *data, uint32_t len)
{
    const struct iscsi_pdu *p = &c->pdu;
    struct iscsi_server *s = c->server;
    struct iscsi_text rsp = { 0 };
    struct iscsi_keys keys;

    if (!p->is_immediate && p->cmdsn == c->exp_cmdsn)
        c->exp_cmdsn++;
    if (p->ttt != ISCSI_RSVD_TAG) {
        if (c->text_pending && p->ttt == c->text_ttt) {
            text_send_piece(c, p->itt);
            return;
        }
        iscsi_conn_send_reject(c, ISCSI_REJECT_INVALID_FIELD, c->rx_hdr);
        return;
    }
    free(c->text_pending);
    c->text_pending = NULL;
    if (p->is_continue) {
        /* Requests spread over PDUs are not something initiators do for
         * SendTargets; refuse rather than buffer unbounded text. */
        iscsi_conn_send_reject(c, ISCSI_REJECT_NOT_SUPPORTED, c->rx_hdr);
        return;
    }
    char *text = malloc((size_t)len + 1);
    if (!text) {
        iscsi_conn_close(c, "out of memory");
        return;
    }
    memcpy(text, data, len);
    size_t tlen = len;
    if (tlen && text[tlen - 1] != '\0')
        text[tlen++] = '\0';
    if (iscsi_keys_parse(text, tlen, &keys) < 0) {
        free(text);
        iscsi_conn_send_reject(c, ISCSI_REJECT_PROTOCOL, c->rx_hdr);
        return;
    }
    for (int i = 0; i < keys.count; i++) {
        const char *name = keys.key[i].name;
        const char *value = keys.key[i].value;
        if (strcmp(name, "SendTargets") == 0) {
            struct send_targets_ctx ctx = { c, &rsp, value };
            if (c->is_discovery || strcmp(value, "All") == 0 || value[0])
                s->ops->list(s->arg, c->initiator, send_targets_emit, &ctx);
            else
                send_targets_emit(&ctx, c->target);
        } else if (strcmp(name, "MaxRecvDataSegmentLength") == 0) {
            uint64_t n;
            if (iscsi_parse_number(value, &n) == 0 && n >= 512 && n <= 16777215)
                c->params.initiator_mrdsl = (uint32_t)n;
        } else {
            iscsi_text_add(&rsp, name, "NotUnderstood");
        }
    }
    free(text);
    if (rsp.is_oom) {
        iscsi_text_free(&rsp);
        iscsi_conn_close(c, "out of memory");
        return;
    }
    c->text_pending = rsp.buf;
    c->text_pending_len = rsp.len;
    c->text_pending_off = 0;
    rsp.buf = NULL;
    text_send_piece(c, p->itt);
}
