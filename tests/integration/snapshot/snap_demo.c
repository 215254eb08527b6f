/*
 * snap-demo — drives snapshot/ from a script, for the integration tests and
 * tests/bench/snapshot_bench.sh (hv/ will do the same from hvstord):
 *
 *   snap-demo agent SPEC [--thaw-timeout-ms N] [--sleep-ms N]
 *       hello, prepare, freeze, (sleep), thaw; one JSON line.
 *   snap-demo checkpoint DIR --disks N [--agent SPEC] [--runs K] [--merge]
 *       [--thaw-timeout-ms N] [--cut-delay-ms N]
 *       N fresh VHD disks with writers in flight; K checkpoints (each merged
 *       back live with --merge); one JSON line per checkpoint.
 *   snap-demo backup DIR BACKUP_DIR --disks N [--incrementals K]
 *       [--agent SPEC] [--size BYTES] [--span BYTES] [--kill-after-ms N]
 *       [--unpaced] [--trace FILE] [--baseline-ms N (300)]
 *       a full backup then K incrementals while writers run; per backup one
 *       JSON line with hold time, bytes read/changed, write latency p99
 *       during the backup and before it. --kill-after-ms: SIGKILL itself
 *       that long after the first backup started (crash tests).
 *   snap-demo verify BACKUP_DIR | restore BACKUP_DIR SEQ TO_DIR
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static int die(const char *what, struct hv_err *err, int ret)
{
    fprintf(stderr, "snap-demo: %s: %s\n", what, hv_err_msg(err, ret));
    return 1;
}

static const char *opt_str(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 0; i < argc - 1; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return def;
}

static uint64_t opt_u64(int argc, char **argv, const char *name, uint64_t def)
{
    const char *s = opt_str(argc, argv, name, NULL);
    uint64_t v;
    if (!s)
        return def;
    if (hv_parse_size(s, &v) < 0) {
        fprintf(stderr, "snap-demo: %s: bad value '%s'\n", name, s);
        exit(2);
    }
    return v;
}

static bool has_flag(int argc, char **argv, const char *name)
{
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return true;
    return false;
}

static int open_agent(const char *spec, struct snap_agent **out, struct hv_err *err)
{
    enum snap_agent_kind kind;
    char path[512];
    int ret = snap_agent_parse_spec(spec, &kind, path, sizeof(path), err);
    if (ret < 0)
        return ret;
    return snap_agent_open(kind, path, 5000, out, err);
}

static int cmd_agent(int argc, char **argv)
{
    struct hv_err err = {0};
    struct snap_agent *a;
    int ret = open_agent(argv[2], &a, &err);
    if (ret < 0)
        return die("agent", &err, ret);
    struct snap_agent_info info;
    ret = snap_agent_info(a, &info, &err);
    if (ret < 0)
        return die("status", &err, ret);
    json_t *out =
        json_pack("{s:s,s:i,s:i,s:b}", "name", info.name, "filesystems", (int)info.filesystems,
                  "thaw_timeout_ms", (int)info.thaw_timeout_ms, "was_frozen", info.is_frozen);
    if (!has_flag(argc, argv, "--info-only")) {
        ret = snap_agent_prepare(a, &err);
        if (ret == 0)
            ret =
                snap_agent_freeze(a, (uint32_t)opt_u64(argc, argv, "--thaw-timeout-ms", 0), &err);
        json_object_set_new(out, "freeze", json_string(ret == 0 ? "ok" : hv_err_msg(&err, ret)));
        if (ret == 0) {
            snap_agent_info(a, &info, &err);
            json_object_set_new(out, "frozen_after_freeze", json_boolean(info.is_frozen));
            usleep((useconds_t)opt_u64(argc, argv, "--sleep-ms", 0) * 1000);
            hv_err_clear(&err);
            ret = snap_agent_thaw(a, &err);
            json_object_set_new(out, "thaw", json_string(ret == 0 ? "ok" : hv_err_msg(&err, ret)));
            json_object_set_new(out, "thaw_errno", json_integer(-ret));
        }
    }
    hv_json_print(stdout, out);
    json_decref(out);
    snap_agent_close(a);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double p99_ms(struct h_vm *vm)
{
    if (vm->lat_count == 0)
        return 0;
    qsort(vm->lat_ns, vm->lat_count, sizeof(uint64_t), cmp_u64);
    return vm->lat_ns[(vm->lat_count * 99) / 100] / 1e6;
}

/* --cut-delay-ms: a slow on_cut handler, so that a test can make the
 * agent's own auto-thaw come before the host's thaw. */
static uint64_t g_cut_delay_ms;

static void slow_on_cut(void *arg)
{
    (void)arg;
    usleep((useconds_t)g_cut_delay_ms * 1000);
}

static int cmd_checkpoint(int argc, char **argv)
{
    struct hv_err err = {0};
    struct h_vm vm;
    const char *dir = argv[2];
    int disks = (int)opt_u64(argc, argv, "--disks", 4);
    int runs = (int)opt_u64(argc, argv, "--runs", 1);
    mkdir(dir, 0700);
    int ret = h_open(&vm, dir, disks, 0, opt_u64(argc, argv, "--size", 64 << 20), true, &err);
    if (ret < 0)
        return die("open", &err, ret);
    const char *spec = opt_str(argc, argv, "--agent", NULL);
    if (spec && (ret = open_agent(spec, &vm.grp.agent, &err)) < 0)
        return die("agent", &err, ret);
    vm.grp.thaw_timeout_ms = (uint32_t)opt_u64(argc, argv, "--thaw-timeout-ms", 0);
    vm.grp.on_cut = NULL;
    g_cut_delay_ms = opt_u64(argc, argv, "--cut-delay-ms", 0);
    if (g_cut_delay_ms)
        vm.grp.on_cut = slow_on_cut;
    h_start(&vm);
    h_run_ms(&vm, 50);
    for (int k = 0; k < runs; k++) {
        char name[32];
        snprintf(name, sizeof(name), "cp%d", k);
        struct snap_checkpoint_result res;
        uint64_t writes_before = vm.writes;
        ret = snap_checkpoint_create(&vm.grp, name, true, &res, &err);
        if (ret < 0)
            return die("checkpoint", &err, ret);
        struct snap_gate_stats st;
        snap_gate_get_stats(vm.gate, &st);
        h_run_ms(&vm, 20);
        uint64_t merge_hold = 0;
        if (has_flag(argc, argv, "--merge"))
            for (int i = 0; i < vm.n && ret == 0; i++)
                ret = snap_checkpoint_merge(&vm.grp, i, &merge_hold, &err);
        if (ret < 0)
            return die("merge", &err, ret);
        json_t *o = json_pack("{s:i,s:i,s:s,s:s,s:f,s:f,s:I,s:I,s:f}", "run", k, "disks", vm.n,
                              "consistency", res.consistency == SNAP_APP ? "app" : "crash", "why",
                              res.why, "hold_ms", res.hold_ns / 1e6, "drain_ms",
                              res.drain_ns / 1e6, "held_requests", (json_int_t)st.held_requests,
                              "writes_during", (json_int_t)(vm.writes - writes_before),
                              "last_merge_hold_ms", merge_hold / 1e6);
        char *line = json_dumps(o, JSON_COMPACT);
        printf("%s\n", line);
        fflush(stdout);
        free(line);
        json_decref(o);
        snap_checkpoint_result_free(&res);
    }
    if (vm.status)
        fprintf(stderr, "snap-demo: a guest write failed: %s\n", strerror(-vm.status));
    snap_agent_close(vm.grp.agent);
    ret = h_close(&vm);
    return ret < 0 || vm.status ? 1 : 0;
}

static void *killer(void *arg)
{
    usleep((useconds_t)(uintptr_t)arg * 1000);
    kill(getpid(), SIGKILL);
    return NULL;
}

static int cmd_backup(int argc, char **argv)
{
    struct hv_err err = {0};
    struct h_vm vm;
    const char *dir = argv[2];
    const char *bdir = argv[3];
    int disks = (int)opt_u64(argc, argv, "--disks", 2);
    int incrementals = (int)opt_u64(argc, argv, "--incrementals", 0);
    uint64_t size = opt_u64(argc, argv, "--size", 64 << 20);
    bool create = access(dir, F_OK) < 0 || has_flag(argc, argv, "--create");
    mkdir(dir, 0700);
    int ret = h_open(&vm, dir, disks, (int)opt_u64(argc, argv, "--raw", 0), size, create, &err);
    if (ret < 0)
        return die("open", &err, ret);
    const char *spec = opt_str(argc, argv, "--agent", NULL);
    if (spec && (ret = open_agent(spec, &vm.grp.agent, &err)) < 0)
        return die("agent", &err, ret);
    vm.lat_cap = 1u << 22;
    vm.lat_ns = malloc(vm.lat_cap * sizeof(uint64_t));
    /* --trace FILE: every write during each backup as "seq completed_ns
     * latency_ns" (CLOCK_MONOTONIC), to line up latency spikes with the
     * backup's phases (HVSTOR_LOG=debug prints them with the same clock). */
    const char *trace_path = opt_str(argc, argv, "--trace", NULL);
    FILE *trace = trace_path ? fopen(trace_path, "w") : NULL;
    if (trace_path && !trace) {
        fprintf(stderr, "snap-demo: %s: %s\n", trace_path, strerror(errno));
        return 1;
    }
    if (trace)
        vm.lat_at_ns = malloc(vm.lat_cap * sizeof(uint64_t));
    if (create) {
        /* Fill the disks (a disk with data to back up), then the workload. */
        vm.write_bytes = 1024 * 1024;
        h_start(&vm);
        h_run_ms(&vm, opt_u64(argc, argv, "--fill-ms", 300));
        h_pause(&vm);
    }
    vm.write_bytes = (uint32_t)opt_u64(argc, argv, "--write-bytes", 4096);
    vm.write_span_bytes = opt_u64(argc, argv, "--span", 0);
    bool is_idle = has_flag(argc, argv, "--idle");
    if (is_idle)
        vm.grp.on_cut = NULL; /* no workload during the backup */
    uint64_t kill_ms = opt_u64(argc, argv, "--kill-after-ms", 0);
    for (int k = 0; k <= incrementals; k++) {
        /* Baseline latency: the same workload without a backup. */
        h_start(&vm);
        vm.lat_count = 0;
        uint64_t base_ms = opt_u64(argc, argv, "--baseline-ms", 300);
        uint64_t base_t0 = hv_now_ns();
        h_run_ms(&vm, base_ms);
        double base_s = (hv_now_ns() - base_t0) / 1e9;
        if (is_idle)
            h_pause(&vm);
        double base_p99 = p99_ms(&vm);
        uint64_t base_writes = vm.lat_count;
        vm.lat_count = 0;
        uint64_t changed = 0;
        for (int i = 0; i < vm.n; i++)
            changed += h_changed_bytes(&vm, i);
        if (kill_ms) {
            pthread_t t;
            pthread_create(&t, NULL, killer, (void *)(uintptr_t)kill_ms);
        }
        /* The workload continues through the cut (on_cut resets the record
         * of changed units, so `changed` is what this backup must read). */
        struct snap_backup_options bo = {.dir = bdir,
                                         .vm_name = "demo",
                                         .is_incremental =
                                             k > 0 || has_flag(argc, argv, "--incremental"),
                                         .want_app = true,
                                         .max_bytes_per_second = opt_u64(argc, argv, "--rate", 0),
                                         .is_unpaced = has_flag(argc, argv, "--unpaced")};
        struct snap_backup_result res;
        char recovered[2048] = "";
        uint64_t t0 = hv_now_ns();
        ret = snap_backup_create(&vm.grp, &bo, &res, recovered, sizeof(recovered), &err);
        uint64_t t1 = hv_now_ns();
        if (ret < 0)
            return die("backup", &err, ret);
        for (uint64_t w = 0; trace && w < vm.lat_count; w++)
            fprintf(trace, "%d %llu %llu\n", res.sequence, (unsigned long long)vm.lat_at_ns[w],
                    (unsigned long long)vm.lat_ns[w]);
        double dur_p99 = p99_ms(&vm);
        json_t *o = json_pack(
            "{s:i,s:s,s:s,s:s,s:s,s:s,s:f,s:I,s:I,s:I,s:I,s:f,s:f,s:f,"
            "s:I,s:I,s:f}",
            "sequence", res.sequence, "type", res.is_incremental ? "incremental" : "full",
            "why_full", res.why_full, "consistency", res.consistency == SNAP_APP ? "app" : "crash",
            "why", res.why_crash, "recovered", recovered, "hold_ms", res.hold_ns / 1e6,
            "bytes_read", (json_int_t)res.bytes_read, "bytes_changed",
            (json_int_t)res.bytes_changed, "guest_changed_before_cut", (json_int_t)changed,
            "bytes_written", (json_int_t)res.bytes_written, "seconds", (t1 - t0) / 1e9,
            "p99_ms_during", dur_p99, "p99_ms_before", base_p99, "writes_during",
            (json_int_t)vm.lat_count, "writes_before", (json_int_t)base_writes, "seconds_before", base_s);
        char *line = json_dumps(o, JSON_COMPACT);
        printf("%s\n", line);
        fflush(stdout);
        free(line);
        json_decref(o);
        h_pause(&vm);
    }
    snap_agent_close(vm.grp.agent);
    free(vm.lat_ns);
    free(vm.lat_at_ns);
    vm.lat_ns = vm.lat_at_ns = NULL;
    if (trace)
        fclose(trace);
    ret = h_close(&vm);
    if (ret < 0 || vm.status) {
        fprintf(stderr, "snap-demo: close: %s\n", strerror(-(ret ? ret : vm.status)));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct hv_err err = {0};
    if (argc < 3) {
        fprintf(stderr, "usage: snap-demo agent|checkpoint|backup|verify|restore ...\n");
        return 2;
    }
    if (!strcmp(argv[1], "agent"))
        return cmd_agent(argc, argv);
    if (!strcmp(argv[1], "checkpoint"))
        return cmd_checkpoint(argc, argv);
    if (!strcmp(argv[1], "backup") && argc >= 4)
        return cmd_backup(argc, argv);
    if (!strcmp(argv[1], "verify")) {
        json_t *rep = NULL;
        int ret = snap_backup_verify(argv[2], &rep, &err);
        if (rep)
            hv_json_print(stdout, rep);
        json_decref(rep);
        return ret < 0 ? die("verify", &err, ret) : 0;
    }
    if (!strcmp(argv[1], "restore") && argc >= 5) {
        int ret = snap_backup_restore(argv[2], atoi(argv[3]), argv[4], &err);
        return ret < 0 ? die("restore", &err, ret) : 0;
    }
    fprintf(stderr, "snap-demo: unknown command %s\n", argv[1]);
    return 2;
}
