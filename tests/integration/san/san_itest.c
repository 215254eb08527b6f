/*
 * san-itest: drives san/ against a real target (tgtd started by the test
 * scripts beside this file). Each subcommand is one scenario and exits 0 only
 * when every check in it held; it prints what it saw so a failure is readable.
 *
 *   san-itest discover -p PORTAL -i IQN
 *   san-itest luns     -p PORTAL -t TARGET -i IQN [-u USER:SECRET] [-m USER:SECRET]
 *   san-itest rw       -p PORTAL -t TARGET -i IQN -l LUN
 *   san-itest pr       -p PORTAL -t TARGET -i IQN_A -j IQN_B -l LUN
 *   san-itest isid     -p PORTAL -t TARGET -i IQN_A -j IQN_B -l LUN
 *   san-itest offline  -p PORTAL -t TARGET -i IQN -l LUN -H HOOK
 *   san-itest fault    -p PORTAL -t TARGET -i IQN -l LUN -H HOOK -T MS -n WRITES -e ok|fail
 *   san-itest bench    -p PORTAL -t TARGET -i IQN -l LUN -c COUNT -d DEPTH -s BYTES [-w]
 *                      (requests as `qemu-img bench` issues them: offset i*BYTES,
 *                      wrapping at the LUN's end; prints requests per second)
 *
 * Exit: 0 pass, 1 a check failed, 2 usage, 3 login refused (for `luns`).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "san.h"

extern char **environ;

static const char *portal, *target, *iqn_a, *iqn_b, *hook, *chap, *mutual;
static uint64_t lun = 1;
static uint32_t replacement_ms;
static unsigned nwrites = 64;
static bool expect_ok = true;
static bool need_digest;
static uint32_t nop_ms;
static unsigned ua_seen;
/* -O: writes go to 2 slots in turn, so two writes to the same blocks are in
 * flight at once; after a replay the newest must be what the LUN holds */
static unsigned overlap_slots;
static const char *tgtd_pidfile;    /* -P: overlap mode stops tgtd itself */
static int failures;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (cond) {                                                         \
            printf("ok: ");                                                 \
        } else {                                                            \
            printf("FAIL: ");                                               \
            failures++;                                                     \
        }                                                                   \
        printf(__VA_ARGS__);                                                \
        printf("\n");                                                       \
        fflush(stdout);                                                     \
    } while (0)

static const char *emsg(struct hv_err *err, int ret)
{
    const char *m = ret ? hv_err_msg(err, ret) : "done";
    static char buf[1100];
    snprintf(buf, sizeof(buf), "%s", m);
    hv_err_clear(err);
    return buf;
}

static void split_chap(const char *text, char *user, char *secret, size_t cap)
{
    const char *colon = strchr(text, ':');
    size_t n = colon ? (size_t)(colon - text) : strlen(text);
    snprintf(user, cap, "%.*s", (int)n, text);
    snprintf(secret, cap, "%s", colon ? colon + 1 : "");
}

static char cu[256], cs[256], mu[256], ms[256];

static struct san_session_options options(const char *initiator)
{
    struct san_session_options o = {
        .portal = portal,
        .target = target,
        .initiator = initiator,
        .replacement_timeout_ms = replacement_ms,
        .reconnect_min_ms = 100,
        .reconnect_max_ms = 500,
        .login_timeout_ms = 5000,
        .header_digest = need_digest ? SAN_DIGEST_REQUIRE_CRC32C : SAN_DIGEST_PREFER_CRC32C,
        .nop_interval_ms = nop_ms,
        .nop_timeout_ms = nop_ms,
    };
    if (chap) {
        split_chap(chap, cu, cs, sizeof(cu));
        o.chap.user = cu;
        o.chap.secret = cs;
    }
    if (mutual) {
        split_chap(mutual, mu, ms, sizeof(mu));
        o.chap.target_user = mu;
        o.chap.target_secret = ms;
    }
    return o;
}

static struct san_sync *open_or_die(const char *initiator)
{
    struct san_session_options o = options(initiator);
    struct san_sync *ss;
    struct hv_err err = {0};
    int ret = san_sync_open(&o, &ss, &err);
    if (ret < 0) {
        printf("FAIL: login as %s: %s\n", initiator, emsg(&err, ret));
        exit(1);
    }
    return ss;
}

/* As a guest's SCSI layer does: a UNIT ATTENTION (first command on a new
 * nexus) is news, not a failure; issue the command again. */
static int command(struct san_sync *ss, struct san_cmd *cmd)
{
    int ret;
    for (int i = 0;; i++) {
        ret = san_sync_command(ss, cmd);
        if (ret != -EIO || san_sense_key(cmd->sense, cmd->sense_len) != 6 || i == 3) {
            return ret;
        }
    }
}

/* One command through the generic path, data in `buf`. */
static int run_cdb(struct san_sync *ss, uint64_t l, const uint8_t *cdb, uint8_t len,
                   enum san_xfer dir, void *buf, uint32_t bytes, struct san_cmd *out)
{
    struct iovec iov = {buf, bytes};
    memset(out, 0, sizeof(*out));
    out->lun = l;
    memcpy(out->cdb, cdb, len);
    out->cdb_len = len;
    out->dir = bytes ? dir : SAN_XFER_NONE;
    out->iov = bytes ? &iov : NULL;
    out->iovcnt = bytes ? 1 : 0;
    out->xfer_bytes = bytes;
    return command(ss, out);
}

static void rw16_cdb(uint8_t cdb[16], bool is_write, uint64_t lba, uint32_t blocks)
{
    memset(cdb, 0, 16);
    cdb[0] = is_write ? 0x8a : 0x88;
    hv_put_be64(cdb + 2, lba);
    hv_put_be32(cdb + 10, blocks);
}

static int write_blocks(struct san_sync *ss, uint64_t lba, const void *buf, uint32_t bytes,
                        struct san_cmd *cmd)
{
    uint8_t cdb[16];
    rw16_cdb(cdb, true, lba, bytes / 512);
    return run_cdb(ss, lun, cdb, 16, SAN_XFER_WRITE, (void *)buf, bytes, cmd);
}

static int read_blocks(struct san_sync *ss, uint64_t lba, void *buf, uint32_t bytes,
                       struct san_cmd *cmd)
{
    uint8_t cdb[16];
    rw16_cdb(cdb, false, lba, bytes / 512);
    return run_cdb(ss, lun, cdb, 16, SAN_XFER_READ, buf, bytes, cmd);
}

static void fill(uint8_t *buf, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < len; i += 8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        uint64_t v = x * 0x2545f4914f6cdd1dull;
        memcpy(buf + i, &v, HV_MIN(8, len - i));
    }
}

/* ---------------------------------------------------------------- cmds */

static int cmd_discover(void)
{
    struct san_target *t;
    size_t n;
    struct hv_err err = {0};
    int ret = san_discover_sync(portal, iqn_a, NULL, &t, &n, &err);
    if (ret < 0) {
        printf("FAIL: discovery: %s\n", emsg(&err, ret));
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        printf("TARGET %s %s\n", t[i].name, t[i].portal_count ? t[i].portals[0] : "-");
    }
    free(t);
    return 0;
}

static int cmd_luns(void)
{
    struct san_session_options o = options(iqn_a);
    struct san_lun_info *luns;
    size_t n;
    struct hv_err err = {0};
    int ret = san_list_luns_sync(&o, &luns, &n, &err);
    if (ret < 0) {
        printf("ERROR: %s\n", emsg(&err, ret));
        return ret == -EACCES ? 3 : 1;
    }
    for (size_t i = 0; i < n; i++) {
        printf("LUN %" PRIu64 " type %u vendor '%s' product '%s' size %" PRIu64
               " block %u designator %s\n", luns[i].lun, luns[i].inquiry.device_type,
               luns[i].inquiry.vendor, luns[i].inquiry.product, luns[i].size_bytes,
               luns[i].block_bytes, luns[i].designator[0] ? luns[i].designator : "-");
    }
    free(luns);
    return 0;
}

static int cmd_rw(void)
{
    struct san_sync *ss = open_or_die(iqn_a);
    struct san_cmd cmd;
    const uint32_t bytes = 1024 * 1024;
    uint8_t *out = hv_alloc_aligned(bytes), *in = hv_alloc_aligned(bytes);
    char desc[128];
    fill(out, bytes, 42);

    /* write from four separate pieces: the iovec goes to libiscsi as is */
    struct iovec iov[4];
    for (int i = 0; i < 4; i++) {
        iov[i].iov_base = out + (size_t)i * (bytes / 4);
        iov[i].iov_len = bytes / 4;
    }
    uint8_t cdb[16];
    rw16_cdb(cdb, true, 2048, bytes / 512);
    memset(&cmd, 0, sizeof(cmd));
    cmd.lun = lun;
    memcpy(cmd.cdb, cdb, 16);
    cmd.cdb_len = 16;
    cmd.dir = SAN_XFER_WRITE;
    cmd.iov = iov;
    cmd.iovcnt = 4;
    cmd.xfer_bytes = bytes;
    int ret = command(ss, &cmd);
    CHECK(ret == 0, "WRITE(16) 1 MiB from 4 iovecs: %s", san_cmd_describe(&cmd, desc, 128));
    ret = read_blocks(ss, 2048, in, bytes, &cmd);
    CHECK(ret == 0 && cmd.residual == 0, "READ(16) 1 MiB: %s, residual %u",
          san_cmd_describe(&cmd, desc, 128), cmd.residual);
    CHECK(memcmp(in, out, bytes) == 0, "data read back equals data written");

    /* an allocation length larger than what the target has: underflow */
    uint8_t inq[255];
    uint8_t icdb[6] = {0x12, 0, 0, 0, 255, 0};
    ret = run_cdb(ss, lun, icdb, 6, SAN_XFER_READ, inq, 255, &cmd);
    CHECK(ret == 0 && cmd.residual > 0 && !cmd.is_overflow,
          "INQUIRY with 255-byte allocation: %s, residual %u (underflow)",
          san_cmd_describe(&cmd, desc, 128), cmd.residual);

    /* beyond the end: the target's sense comes back unchanged */
    uint8_t ccdb[16] = {0x9e, 0x10};
    uint8_t cap[32];
    hv_put_be32(ccdb + 10, 32);
    run_cdb(ss, lun, ccdb, 16, SAN_XFER_READ, cap, 32, &cmd);
    uint64_t blocks = hv_be64(cap) + 1;
    ret = read_blocks(ss, blocks, in, 4096, &cmd);
    CHECK(ret == -EIO && san_sense_key(cmd.sense, cmd.sense_len) == 5 &&
          san_sense_asc_ascq(cmd.sense, cmd.sense_len) == 0x2100,
          "READ past the last LBA %" PRIu64 ": %s (sense %u bytes)", blocks - 1,
          san_cmd_describe(&cmd, desc, 128), cmd.sense_len);
    free(out);
    free(in);
    san_sync_close(ss);
    return failures ? 1 : 0;
}

static bool has_key(const struct san_pr_status *pr, uint64_t key)
{
    for (size_t i = 0; i < pr->key_count; i++) {
        if (pr->keys[i] == key) {
            return true;
        }
    }
    return false;
}

#define KEY_A UINT64_C(0xaaaa0000000000a1)
#define KEY_B UINT64_C(0xbbbb0000000000b2)
#define WERO SAN_PR_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY

static void clear_all(struct san_sync *ss)
{
    /* start from a clean LUN: register (ignoring any key), then clear */
    struct hv_err err = {0};
    struct san_pr_status pr;
    if (san_sync_pr_read(ss, lun, &pr, &err) == 0 && pr.key_count) {
        uint8_t cdb[10], param[24];
        struct san_cmd cmd;
        san_pr_out_build(cdb, param, SAN_PR_REGISTER_AND_IGNORE, 0, 0, 0x5eed);
        run_cdb(ss, lun, cdb, 10, SAN_XFER_WRITE, param, 24, &cmd);
        san_sync_pr_clear(ss, lun, 0x5eed, &err);
    }
}

static int cmd_pr(void)
{
    struct san_sync *a = open_or_die(iqn_a);
    struct san_sync *b = open_or_die(iqn_b);
    struct hv_err err = {0};
    struct san_pr_status pr;
    struct san_cmd cmd;
    uint8_t buf[4096];
    char desc[128];
    int ret;

    clear_all(a);
    ret = san_sync_pr_register(a, lun, 0, KEY_A, &err);
    CHECK(ret == 0, "A registers key %" PRIx64 ": %s", KEY_A, emsg(&err, ret));
    ret = san_sync_pr_reserve(a, lun, KEY_A, WERO, &err);
    CHECK(ret == 0, "A reserves Write Exclusive - Registrants Only: %s", emsg(&err, ret));
    ret = san_sync_pr_read(b, lun, &pr, &err);
    CHECK(ret == 0 && pr.is_reserved && pr.holder_key == KEY_A && pr.type == WERO &&
          has_key(&pr, KEY_A), "B reads: reserved=%d holder=%" PRIx64 " type=%u keys=%zu",
          pr.is_reserved, pr.holder_key, pr.type, pr.key_count);

    fill(buf, sizeof(buf), 7);
    ret = write_blocks(a, 0, buf, sizeof(buf), &cmd);
    CHECK(ret == 0, "A (holder) writes: %s", san_cmd_describe(&cmd, desc, 128));
    ret = write_blocks(b, 0, buf, sizeof(buf), &cmd);
    CHECK(ret == -EACCES && cmd.status == SAN_STATUS_RESERVATION_CONFLICT,
          "B (not registered) writes: %s", san_cmd_describe(&cmd, desc, 128));
    ret = read_blocks(b, 0, buf, sizeof(buf), &cmd);
    CHECK(ret == 0, "B (not registered) reads: %s", san_cmd_describe(&cmd, desc, 128));
    ret = san_sync_pr_reserve(b, lun, KEY_B, WERO, &err);
    CHECK(ret == -EACCES, "B cannot reserve without registering: %s", emsg(&err, ret));

    ret = san_sync_pr_register(b, lun, 0, KEY_B, &err);
    CHECK(ret == 0, "B registers key %" PRIx64 ": %s", KEY_B, emsg(&err, ret));
    ret = write_blocks(b, 0, buf, sizeof(buf), &cmd);
    CHECK(ret == 0, "B (registered) writes under type 5: %s",
          san_cmd_describe(&cmd, desc, 128));
    ret = san_sync_pr_reserve(b, lun, KEY_B, WERO, &err);
    CHECK(ret == -EACCES, "B cannot take A's reservation by RESERVE: %s",
          emsg(&err, ret));

    /* A dies without releasing anything */
    san_sync_close(a);
    printf("A's session closed without release (host A died)\n");
    ret = san_sync_pr_preempt(b, lun, KEY_B, KEY_A, WERO, true, &err);
    if (ret == -EIO && strstr(err.msg, "5h/24h/00h")) {
        /* tgt 1.0.85 has no PREEMPT AND ABORT service action */
        printf("target refuses PREEMPT AND ABORT (%s): plain PREEMPT\n", err.msg);
        ret = san_sync_pr_preempt(b, lun, KEY_B, KEY_A, WERO, false, &err);
    }
    CHECK(ret == 0, "B preempts A's key: %s", emsg(&err, ret));
    ret = san_sync_pr_read(b, lun, &pr, &err);
    CHECK(ret == 0 && pr.is_reserved && pr.holder_key == KEY_B && !has_key(&pr, KEY_A) &&
          has_key(&pr, KEY_B), "after preempt: holder=%" PRIx64 " keys=%zu, A's key gone=%d",
          pr.holder_key, pr.key_count, !has_key(&pr, KEY_A));

    /* A comes back with the same name: fenced */
    a = open_or_die(iqn_a);
    ret = write_blocks(a, 0, buf, sizeof(buf), &cmd);
    CHECK(ret == -EACCES, "A back after the preempt writes: %s",
          san_cmd_describe(&cmd, desc, 128));
    ret = san_sync_pr_register(a, lun, KEY_A, KEY_A, &err);
    CHECK(ret == -EACCES, "A cannot register with its old key: %s", emsg(&err, ret));

    ret = san_sync_pr_release(b, lun, KEY_B, WERO, &err);
    CHECK(ret == 0, "B releases: %s", emsg(&err, ret));
    ret = san_sync_pr_clear(b, lun, KEY_B, &err);
    CHECK(ret == 0, "B clears: %s", emsg(&err, ret));
    ret = write_blocks(a, 0, buf, sizeof(buf), &cmd);
    CHECK(ret == 0, "A writes once the reservation is cleared: %s",
          san_cmd_describe(&cmd, desc, 128));
    san_sync_close(a);
    san_sync_close(b);
    return failures ? 1 : 0;
}

static bool wait_online(struct san_sync *ss, unsigned reconnects, int max_ms)
{
    struct san_session *s = san_sync_session(ss);
    uint64_t end = hv_now_ns() + (uint64_t)max_ms * 1000000ull;
    while (hv_now_ns() < end) {
        if (san_session_state(s) == SAN_STATE_ONLINE && san_session_reconnects(s) >= reconnects) {
            return true;
        }
        hv_reactor_run_once(san_sync_reactor(ss), 50);
    }
    return false;
}

static int cmd_isid(void)
{
    struct san_sync *a = open_or_die(iqn_a);
    struct san_sync *b = open_or_die(iqn_b);
    struct san_session *sa = san_sync_session(a);
    struct hv_err err = {0};
    struct san_pr_status pr;
    struct san_cmd cmd;
    uint8_t buf[4096];
    char desc[128], isid0[16], isid1[16];
    int ret;

    clear_all(a);
    fill(buf, sizeof(buf), 9);
    ret = san_sync_pr_register(a, lun, 0, KEY_A, &err);
    CHECK(ret == 0, "A registers: %s", emsg(&err, ret));
    ret = san_sync_pr_reserve(a, lun, KEY_A, WERO, &err);
    CHECK(ret == 0, "A reserves type 5: %s", emsg(&err, ret));
    san_session_isid_text(sa, isid0);

    ret = san_session_drop_connection(sa);
    CHECK(ret == 0, "A's TCP connection dropped");
    /* a write issued while the connection is down waits, then goes through */
    ret = write_blocks(a, 8, buf, sizeof(buf), &cmd);
    CHECK(ret == 0, "A's write across the reconnect: %s", san_cmd_describe(&cmd, desc, 128));
    CHECK(wait_online(a, 1, 10000), "A is online again after %u reconnect(s)",
          san_session_reconnects(sa));
    san_session_isid_text(sa, isid1);
    CHECK(strcmp(isid0, isid1) == 0, "ISID before %s, after %s", isid0, isid1);
    ret = san_sync_pr_read(b, lun, &pr, &err);
    CHECK(ret == 0 && pr.is_reserved && pr.holder_key == KEY_A,
          "reservation still held after the reconnect: holder=%" PRIx64 " type=%u",
          pr.holder_key, pr.type);
    ret = write_blocks(a, 16, buf, sizeof(buf), &cmd);
    CHECK(ret == 0, "A writes after the reconnect: %s", san_cmd_describe(&cmd, desc, 128));
    ret = write_blocks(b, 16, buf, sizeof(buf), &cmd);
    CHECK(ret == -EACCES, "B still gets: %s", san_cmd_describe(&cmd, desc, 128));

    /* fencing survives reconnects: once preempted, a reconnect must not
     * register A again */
    ret = san_sync_pr_register(b, lun, 0, KEY_B, &err);
    CHECK(ret == 0, "B registers: %s", emsg(&err, ret));
    ret = san_sync_pr_preempt(b, lun, KEY_B, KEY_A, WERO, false, &err);
    CHECK(ret == 0, "B preempts A while A is alive: %s", emsg(&err, ret));
    san_session_drop_connection(sa);
    ret = write_blocks(a, 24, buf, sizeof(buf), &cmd);
    CHECK(ret == -EACCES, "A's write after the preempt and a reconnect: %s",
          san_cmd_describe(&cmd, desc, 128));
    CHECK(san_session_reconnects(sa) == 2, "A reconnected twice in all");
    CHECK(san_session_outstanding(sa) == 0, "nothing left outstanding on A (%u)",
          san_session_outstanding(sa));
    clear_all(b);
    san_sync_close(a);
    san_sync_close(b);
    return failures ? 1 : 0;
}

static pid_t spawn_hook(void)
{
    pid_t pid;
    char *argv[] = {"bash", (char *)hook, NULL};
    if (posix_spawnp(&pid, "bash", NULL, NULL, argv, environ) != 0) {
        printf("FAIL: cannot start %s\n", hook);
        exit(1);
    }
    return pid;
}

static int wait_hook(pid_t pid)
{
    int st;
    if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        printf("FAIL: hook %s failed\n", hook);
        return -1;
    }
    return 0;
}

static const char *state_seen;
static void note_state(struct san_session *s, enum san_state st, const char *why, void *arg)
{
    (void)s;
    (void)arg;
    state_seen = san_state_name(st);
    printf("state: %s (%s)\n", state_seen, why);
    fflush(stdout);
}

struct conn_result {
    bool is_done;
    int status;
    char msg[512];
};

static void connect_done(void *arg, int status, const char *msg)
{
    struct conn_result *res = arg;
    res->status = status;
    snprintf(res->msg, sizeof(res->msg), "%s", msg);
    res->is_done = true;
}

static int cmd_offline(void)
{
    struct san_session_options o = options(iqn_a);
    o.on_state = note_state;
    struct san_sync *ss;
    struct hv_err err = {0};
    int ret = san_sync_open(&o, &ss, &err);
    if (ret < 0) {
        printf("FAIL: %s\n", emsg(&err, ret));
        return 1;
    }
    struct san_lun_info *luns;
    size_t n;
    const char *before = NULL;
    ret = san_sync_scan(ss, &luns, &n, &err);
    for (size_t i = 0; ret == 0 && i < n; i++) {
        if (luns[i].lun == lun) {
            before = luns[i].designator;
        }
    }
    CHECK(before && before[0], "LUN %" PRIu64 " designator %s", lun, before ? before : "-");
    if (!before) {
        return 1;
    }
    san_session_expect_lun(san_sync_session(ss), lun, before);
    /* the hook puts another LUN at the same address on the target */
    pid_t pid = spawn_hook();
    CHECK(wait_hook(pid) == 0, "target now has a different LUN %" PRIu64, lun);
    san_session_drop_connection(san_sync_session(ss));
    struct san_cmd cmd;
    uint8_t buf[4096];
    char desc[128];
    ret = read_blocks(ss, 0, buf, sizeof(buf), &cmd);
    CHECK(ret == -ESHUTDOWN && cmd.transport == SAN_TRANSPORT_OFFLINE &&
          san_sense_key(cmd.sense, cmd.sense_len) == 2,
          "a read after the reconnect is refused: %s", san_cmd_describe(&cmd, desc, 128));
    CHECK(san_session_state(san_sync_session(ss)) == SAN_STATE_OFFLINE, "session is %s",
          san_state_name(san_session_state(san_sync_session(ss))));

    /* a new session that knows the LUN by its old designator refuses it at
     * the first login already */
    struct hv_reactor *r;
    hv_reactor_create(&r);
    struct san_session *s2;
    struct san_session_options o2 = options(iqn_a);
    san_session_create(r, &o2, &s2, &err);
    san_session_expect_lun(s2, lun, before);
    struct conn_result res = {0};
    san_session_connect(s2, connect_done, &res);
    hv_reactor_run_until(r, &res.is_done);
    CHECK(res.status == -ESTALE && san_session_state(s2) == SAN_STATE_OFFLINE,
          "first login with the old designator: %s", res.msg);
    san_session_close(s2);
    hv_reactor_run_once(r, 0);
    hv_reactor_destroy(r);
    free(luns);
    san_sync_close(ss);
    return failures ? 1 : 0;
}

/* ------------------------------------------------------------- fault */

#define FAULT_IO_BYTES (64 * 1024)
#define FAULT_DEPTH 4

struct fault_io {
    struct san_cmd cmd;
    struct iovec iov;
    uint8_t *buf;
    unsigned index;
    uint64_t start_ns;
};

struct fault_run {
    struct fault_io io[FAULT_DEPTH];
    unsigned next, completed, good, failed;
    bool *is_good;
    uint64_t max_latency_ns;
    bool hook_started;
    pid_t hook;
    bool is_done;
};

static void fault_issue(struct fault_run *fr, struct fault_io *io, struct san_session *s);
static struct san_session *fault_session;

static void fault_done(struct san_cmd *cmd)
{
    struct fault_io *io = hv_container_of(cmd, struct fault_io, cmd);
    struct fault_run *fr = cmd->cb_arg;
    uint64_t lat = hv_now_ns() - io->start_ns;
    fr->max_latency_ns = HV_MAX(fr->max_latency_ns, lat);
    fr->completed++;
    if (san_cmd_errno(cmd) == 0) {
        fr->good++;
        fr->is_good[io->index] = true;
    } else {
        fr->failed++;
        if (fr->failed == 1) {
            char desc[128];
            printf("first failed write #%u after %.1f s: %s\n", io->index, lat / 1e9,
                   san_cmd_describe(cmd, desc, 128));
        }
    }
    if (!fr->hook_started && fr->completed >= nwrites / 4) {
        if (overlap_slots && tgtd_pidfile) {
            /* freeze tgtd first so the writes issued now are surely in
             * flight when the hook kills it; they are the last ones */
            FILE *f = fopen(tgtd_pidfile, "r");
            int pid = 0;
            if (!f || fscanf(f, "%d", &pid) != 1 || pid <= 0 || kill(pid, SIGSTOP) != 0) {
                printf("FAIL: cannot stop tgtd from %s\n", tgtd_pidfile);
                exit(1);
            }
            fclose(f);
            nwrites = fr->next + 1;
            printf("tgtd stopped: the last %d writes (2 per slot) are in flight\n",
                   FAULT_DEPTH);
        }
        fr->hook = spawn_hook();
        fr->hook_started = true;
        printf("hook started after %u writes\n", fr->completed);
        fflush(stdout);
    }
    if (fr->next < nwrites) {
        fault_issue(fr, io, fault_session);
    } else if (fr->completed == nwrites) {
        fr->is_done = true;
    }
}

static void fault_issue(struct fault_run *fr, struct fault_io *io, struct san_session *s)
{
    io->index = fr->next++;
    fill(io->buf, FAULT_IO_BYTES, 1000 + io->index);
    memset(&io->cmd, 0, sizeof(io->cmd));
    unsigned slot = overlap_slots ? io->index % overlap_slots : io->index;
    rw16_cdb(io->cmd.cdb, true, (uint64_t)slot * (FAULT_IO_BYTES / 512),
             FAULT_IO_BYTES / 512);
    io->cmd.cdb_len = 16;
    io->cmd.lun = lun;
    io->cmd.dir = SAN_XFER_WRITE;
    io->iov.iov_base = io->buf;
    io->iov.iov_len = FAULT_IO_BYTES;
    io->cmd.iov = &io->iov;
    io->cmd.iovcnt = 1;
    io->cmd.xfer_bytes = FAULT_IO_BYTES;
    io->cmd.done = fault_done;
    io->cmd.cb_arg = fr;
    io->start_ns = hv_now_ns();
    if (san_session_submit(s, &io->cmd) < 0) {
        printf("FAIL: submit refused\n");
        exit(1);
    }
}

static void note_ua(struct san_session *s, uint64_t l, const uint8_t *sense, size_t len,
                    void *arg)
{
    (void)s;
    (void)arg;
    ua_seen++;
    printf("unit attention after the reconnect, LUN %" PRIu64 ": %xh/%04xh (consumed)\n", l,
           san_sense_key(sense, len), san_sense_asc_ascq(sense, len));
    fflush(stdout);
}

static int cmd_fault(void)
{
    struct san_session_options o = options(iqn_a);
    o.on_state = note_state;
    o.on_unit_attention = note_ua;
    struct san_sync *ss;
    struct hv_err err = {0};
    int ret = san_sync_open(&o, &ss, &err);
    if (ret < 0) {
        printf("FAIL: %s\n", emsg(&err, ret));
        return 1;
    }
    struct san_session *s = san_sync_session(ss);
    fault_session = s;
    /* a new nexus starts with a power-on UNIT ATTENTION: take it first, as a
     * guest's SCSI scan does, so only the fault is left to show */
    struct san_cmd tur;
    uint8_t tur_cdb[6] = {0};
    run_cdb(ss, lun, tur_cdb, 6, SAN_XFER_NONE, NULL, 0, &tur);
    struct fault_run fr;
    memset(&fr, 0, sizeof(fr));
    fr.is_good = calloc(nwrites, sizeof(bool));
    for (int i = 0; i < FAULT_DEPTH; i++) {
        fr.io[i].buf = hv_alloc_aligned(FAULT_IO_BYTES);
    }
    uint64_t t0 = hv_now_ns();
    for (int i = 0; i < FAULT_DEPTH && fr.next < nwrites; i++) {
        fault_issue(&fr, &fr.io[i], s);
    }
    /* bounded: a hang is a failure, not a stuck test */
    uint64_t limit = t0 + (uint64_t)(replacement_ms + 30000) * 1000000ull;
    while (!fr.is_done && hv_now_ns() < limit) {
        hv_reactor_run_once(san_sync_reactor(ss), 100);
    }
    double secs = (hv_now_ns() - t0) / 1e9;
    CHECK(fr.is_done, "all %u writes completed in %.1f s (good %u, failed %u, slowest %.1f s)",
          nwrites, secs, fr.good, fr.failed, fr.max_latency_ns / 1e9);
    if (!fr.is_done) {
        return 1;
    }
    if (expect_ok) {
        CHECK(fr.good == nwrites, "every write succeeded across the target restart");
        CHECK(san_session_reconnects(s) >= 1, "session reconnected %u time(s)",
              san_session_reconnects(s));
        printf("unit attentions consumed after the reconnect: %u\n", ua_seen);
    } else {
        CHECK(fr.failed > 0, "writes past the replacement timeout failed (%u)", fr.failed);
        /* detection (at once for a reset connection, a NOP interval plus
         * timeout for a hung target), then the replacement timeout */
        uint64_t bound_ms = replacement_ms + 2ull * (nop_ms ? nop_ms : 5000) + 2000;
        CHECK(fr.max_latency_ns < bound_ms * 1000000ull,
              "no write waited longer than %" PRIu64 " ms (timeout %u ms)", bound_ms,
              replacement_ms);
        CHECK(wait_online(ss, 1, 30000), "a later reconnect brought the session back");
    }
    CHECK(wait_hook(fr.hook) == 0, "hook finished");
    /* every write acknowledged GOOD is on the LUN */
    unsigned checked = 0, bad = 0;
    uint8_t *want = hv_alloc_aligned(FAULT_IO_BYTES), *got = hv_alloc_aligned(FAULT_IO_BYTES);
    struct san_cmd cmd;
    for (unsigned i = 0; i < nwrites && !overlap_slots; i++) {
        if (!fr.is_good[i]) {
            continue;
        }
        fill(want, FAULT_IO_BYTES, 1000 + i);
        if (read_blocks(ss, (uint64_t)i * (FAULT_IO_BYTES / 512), got, FAULT_IO_BYTES,
                        &cmd) != 0 || memcmp(want, got, FAULT_IO_BYTES) != 0) {
            bad++;
        }
        checked++;
    }
    if (!overlap_slots) {
        CHECK(bad == 0 && checked == fr.good, "%u acknowledged writes read back intact "
              "(%u bad)", checked, bad);
    }
    for (unsigned slot = 0; slot < overlap_slots; slot++) {
        /* the last write to this slot in submission order */
        unsigned last = nwrites - 1;
        while (last % overlap_slots != slot) {
            last--;
        }
        fill(want, FAULT_IO_BYTES, 1000 + last);
        bool is_same = read_blocks(ss, (uint64_t)slot * (FAULT_IO_BYTES / 512), got,
                                   FAULT_IO_BYTES, &cmd) == 0 &&
                       memcmp(want, got, FAULT_IO_BYTES) == 0;
        unsigned holder = 0;
        for (unsigned i = slot; !is_same && i < nwrites; i += overlap_slots) {
            fill(want, FAULT_IO_BYTES, 1000 + i);
            if (memcmp(want, got, FAULT_IO_BYTES) == 0) {
                holder = i;
            }
        }
        if (is_same) {
            CHECK(true, "slot %u holds the newest of its %u overlapping writes (#%u)", slot,
                  nwrites / overlap_slots, last);
        } else {
            CHECK(false, "slot %u holds write #%u, not the newest #%u", slot, holder, last);
        }
    }
    CHECK(san_session_outstanding(s) == 0, "nothing left outstanding (%u)",
          san_session_outstanding(s));
    if (!expect_ok) {
        fill(want, FAULT_IO_BYTES, 77);
        ret = write_blocks(ss, 0, want, FAULT_IO_BYTES, &cmd);
        CHECK(ret == 0, "new writes work again after the reconnect");
    }
    free(want);
    free(got);
    for (int i = 0; i < FAULT_DEPTH; i++) {
        free(fr.io[i].buf);
    }
    free(fr.is_good);
    san_sync_close(ss);
    return failures ? 1 : 0;
}

/* -------------------------------------------------------------- bench */

struct bench_io {
    struct san_cmd cmd;
    struct iovec iov;
    struct bench_run *run;
};

struct bench_run {
    struct san_session *s;
    uint64_t issued, done, failed;
    uint64_t count, size, blocks;
    bool is_write;
    bool is_done;
};

static void bench_issue(struct bench_run *b, struct bench_io *io)
{
    uint64_t per = b->size / 512;
    uint64_t lba = (b->issued * per) % (b->blocks - b->blocks % per);
    b->issued++;
    /* the CDB is rebuilt per request; the command and buffer are reused */
    rw16_cdb(io->cmd.cdb, b->is_write, lba, (uint32_t)per);
    if (san_session_submit(b->s, &io->cmd) < 0) {
        printf("FAIL: submit refused\n");
        exit(1);
    }
}

static void bench_done(struct san_cmd *cmd)
{
    struct bench_io *io = hv_container_of(cmd, struct bench_io, cmd);
    struct bench_run *b = io->run;
    b->done++;
    if (san_cmd_errno(cmd) != 0) {
        b->failed++;
    }
    if (b->issued < b->count) {
        bench_issue(b, io);
    } else if (b->done == b->count) {
        b->is_done = true;
    }
}

static int cmd_bench(uint64_t count, unsigned depth, uint64_t size, bool is_write)
{
    struct san_session_options o = options(iqn_a);
    struct san_sync *ss;
    struct hv_err err = {0};
    if (size % 512 || size == 0 || depth == 0) {
        return 2;
    }
    int ret = san_sync_open(&o, &ss, &err);
    if (ret < 0) {
        printf("FAIL: %s\n", emsg(&err, ret));
        return 1;
    }
    struct san_cmd cmd;
    uint8_t tur_cdb[6] = {0};
    uint8_t ccdb[16] = {0x9e, 0x10};
    uint8_t cap[32];
    hv_put_be32(ccdb + 10, 32);
    run_cdb(ss, lun, tur_cdb, 6, SAN_XFER_NONE, NULL, 0, &cmd);
    if (run_cdb(ss, lun, ccdb, 16, SAN_XFER_READ, cap, 32, &cmd) != 0) {
        printf("FAIL: READ CAPACITY(16)\n");
        return 1;
    }
    struct bench_run b = {
        .s = san_sync_session(ss), .count = count, .size = size,
        .blocks = hv_be64(cap) + 1, .is_write = is_write,
    };
    struct bench_io *io = calloc(depth, sizeof(*io));
    for (unsigned i = 0; i < depth; i++) {
        io[i].run = &b;
        io[i].iov.iov_base = hv_alloc_aligned(size);
        io[i].iov.iov_len = size;
        memset(io[i].iov.iov_base, 0xa5, size);
        io[i].cmd.lun = lun;
        io[i].cmd.cdb_len = 16;
        io[i].cmd.dir = is_write ? SAN_XFER_WRITE : SAN_XFER_READ;
        io[i].cmd.iov = &io[i].iov;
        io[i].cmd.iovcnt = 1;
        io[i].cmd.xfer_bytes = (uint32_t)size;
        io[i].cmd.done = bench_done;
    }
    uint64_t t0 = hv_now_ns();
    for (unsigned i = 0; i < depth && b.issued < count; i++) {
        bench_issue(&b, &io[i]);
    }
    hv_reactor_run_until(san_sync_reactor(ss), &b.is_done);
    double secs = (hv_now_ns() - t0) / 1e9;
    printf("san: %" PRIu64 " %s of %" PRIu64 " bytes at depth %u in %.3f s: %.0f requests/s, "
           "%.1f MiB/s, %" PRIu64 " failed\n", count, is_write ? "writes" : "reads", size, depth,
           secs, count / secs, count * size / secs / 1048576.0, b.failed);
    for (unsigned i = 0; i < depth; i++) {
        free(io[i].iov.iov_base);
    }
    free(io);
    san_sync_close(ss);
    return b.failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: san-itest discover|luns|rw|pr|isid|offline|fault [options]\n");
        return 2;
    }
    const char *what = argv[1];
    int opt;
    optind = 2;
    uint64_t count = 10000, size = 4096;
    unsigned depth = 32;
    bool is_write = false;
    while ((opt = getopt(argc, argv, "p:t:i:j:l:H:T:n:e:u:m:DN:c:d:s:wOP:")) != -1) {
        switch (opt) {
        case 'p': portal = optarg; break;
        case 't': target = optarg; break;
        case 'i': iqn_a = optarg; break;
        case 'j': iqn_b = optarg; break;
        case 'l': lun = strtoull(optarg, NULL, 0); break;
        case 'H': hook = optarg; break;
        case 'T': replacement_ms = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'n': nwrites = (unsigned)strtoul(optarg, NULL, 0); break;
        case 'e': expect_ok = strcmp(optarg, "ok") == 0; break;
        case 'u': chap = optarg; break;
        case 'm': mutual = optarg; break;
        case 'D': need_digest = true; break;
        case 'N': nop_ms = (uint32_t)strtoul(optarg, NULL, 0); break;
        case 'c': count = strtoull(optarg, NULL, 0); break;
        case 'd': depth = (unsigned)strtoul(optarg, NULL, 0); break;
        case 's': size = strtoull(optarg, NULL, 0); break;
        case 'w': is_write = true; break;
        case 'O': overlap_slots = 2; break;
        case 'P': tgtd_pidfile = optarg; break;
        default: return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    hv_log_set_ident("san-itest");
    if (!strcmp(what, "discover")) {
        return cmd_discover();
    }
    if (!strcmp(what, "luns")) {
        return cmd_luns();
    }
    if (!strcmp(what, "rw")) {
        return cmd_rw();
    }
    if (!strcmp(what, "pr") && iqn_b) {
        return cmd_pr();
    }
    if (!strcmp(what, "isid") && iqn_b) {
        return cmd_isid();
    }
    if (!strcmp(what, "offline") && hook) {
        return cmd_offline();
    }
    if (!strcmp(what, "fault") && hook) {
        return cmd_fault();
    }
    if (!strcmp(what, "bench")) {
        return cmd_bench(count, depth, size, is_write);
    }
    fprintf(stderr, "san-itest: unknown command or missing options\n");
    return 2;
}
