/*
 * The identity counter survives being killed at any instant: a child process
 * allocates identities as fast as it can and reports each serial through a
 * pipe once npiv_identity_allocate has returned it; the parent SIGKILLs the
 * child at varying moments (inside the write, the fsync, the rename, or
 * between calls), then reopens the state dir like a restarted daemon. Every
 * time the state file must load, and the next serial must lie above every
 * serial that was ever handed out: never twice, even after a crash.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "npiv.h"
#include "testlib.h"

#define ROUNDS 25

static struct npiv_config config(void)
{
    struct npiv_config c;
    npiv_config_init(&c);
    c.oui = 0x001438;
    c.host_id = 9;
    snprintf(c.iqn_prefix, sizeof(c.iqn_prefix), "iqn.2026-11.com.example.h9");
    return c;
}

static void child(const char *dir, int fd)
{
    struct npiv_config c = config();
    struct npiv_allocator *a;
    struct hv_err err;
    char name[32];
    if (npiv_allocator_open(dir, &c, &a, &err) < 0) {
        fprintf(stderr, "child: %s\n", err.msg);
        _exit(2);
    }
    for (unsigned i = 0;; i++) {
        struct npiv_identity id;
        snprintf(name, sizeof(name), "vm-%d-%u", (int)getpid(), i);
        if (npiv_identity_allocate(a, name, NULL, &id, &err) < 0) {
            fprintf(stderr, "child: %s\n", err.msg);
            _exit(3);
        }
        if (write(fd, &id.serial, sizeof(id.serial)) != sizeof(id.serial))
            _exit(4);
    }
}

static int cmp(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

int main(void)
{
    const char *dir = t_path("state");
    uint64_t *seen = NULL;
    size_t n_seen = 0, cap = 0;
    uint64_t rng = 42;

    mkdir(dir, 0700);
    hv_log_set_level(HV_LOG_WARN);
    for (int round = 0; round < ROUNDS; round++) {
        int p[2];
        if (pipe(p) < 0)
            return 1;
        pid_t pid = fork();
        if (pid == 0) {
            close(p[0]);
            child(dir, p[1]);
        }
        close(p[1]);
        usleep((useconds_t)(500 + t_rand(&rng) % 20000));
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        if (!WIFSIGNALED(status)) {
            fprintf(stderr, "round %d: child exited with %d before the kill\n", round,
                    WEXITSTATUS(status));
            return 1;
        }
        uint64_t s;
        while (read(p[0], &s, sizeof(s)) == sizeof(s)) {
            if (n_seen == cap) {
                cap = cap ? cap * 2 : 256;
                seen = realloc(seen, cap * sizeof(*seen));
            }
            seen[n_seen++] = s;
        }
        close(p[0]);

        /* the restarted daemon */
        struct npiv_config c = config();
        struct npiv_allocator *a;
        struct npiv_identity id;
        struct hv_err err;
        if (npiv_allocator_open(dir, &c, &a, &err) < 0) {
            fprintf(stderr, "round %d: state dir unusable after the kill: %s\n", round, err.msg);
            return 1;
        }
        char name[32];
        snprintf(name, sizeof(name), "after-crash-%d", round);
        if (npiv_identity_allocate(a, name, NULL, &id, &err) < 0) {
            fprintf(stderr, "round %d: %s\n", round, err.msg);
            return 1;
        }
        for (size_t i = 0; i < n_seen; i++) {
            if (seen[i] >= id.serial) {
                fprintf(stderr, "round %d: serial %" PRIu64 " handed out after %" PRIu64
                        " was already given\n", round, id.serial, seen[i]);
                return 1;
            }
        }
        if (n_seen == cap) {
            cap = cap ? cap * 2 : 256;
            seen = realloc(seen, cap * sizeof(*seen));
        }
        seen[n_seen++] = id.serial;
        npiv_allocator_close(a);
    }

    qsort(seen, n_seen, sizeof(*seen), cmp);
    for (size_t i = 1; i < n_seen; i++) {
        if (seen[i] == seen[i - 1]) {
            fprintf(stderr, "serial %" PRIu64 " handed out twice\n", seen[i]);
            return 1;
        }
    }
    printf("%d kills, %zu identities handed out, all distinct, counter always ahead\n", ROUNDS,
           n_seen);
    free(seen);
    return n_seen > (size_t)ROUNDS ? 0 : 1;
}
