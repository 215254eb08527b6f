/*
 * recwriter — the benchmark guest's application (tests/guest/init-backup):
 * the same records as the shell loop of the test guest ("record N\n",
 * odd N appended to the first file, even N to the second, each fsync'ed
 * before the next one starts), but timed: every record's write+fsync latency
 * goes to the console as "HVSTOR-GUEST-LAT N MICROSECONDS", so the host can
 * tell the latencies seen during a backup from those before it.
 *
 *   recwriter FILE1 FILE2 [PAUSE_US]
 *
 * Built by tests/bench/bench_guest_backup.sh with the host's cc and run in the
 * guest with the host's libc (the initramfs builder copies it).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static unsigned long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: recwriter FILE1 FILE2 [PAUSE_US]\n");
        return 2;
    }
    unsigned pause_us = argc > 3 ? (unsigned)strtoul(argv[3], NULL, 10) : 5000;
    int fd[2];
    for (int i = 0; i < 2; i++) {
        fd[i] = open(argv[1 + i], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd[i] < 0) {
            printf("HVSTOR-GUEST-FAIL recwriter: open %s: %m\n", argv[1 + i]);
            return 1;
        }
    }
    /* Line-buffered: one console line per record, as soon as it is done. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned long long n = 1;; n++) {
        char line[32];
        int len = snprintf(line, sizeof(line), "record %llu\n", n);
        int f = fd[(n + 1) % 2];
        unsigned long long t0 = now_us();
        if (write(f, line, (size_t)len) != len || fsync(f) != 0) {
            printf("HVSTOR-GUEST-FAIL recwriter: record %llu: %m\n", n);
            return 1;
        }
        printf("HVSTOR-GUEST-LAT %llu %llu\n", n, now_us() - t0);
        if (n % 10 == 0)
            printf("HVSTOR-GUEST-RECORD %llu\n", n);
        if (pause_us)
            usleep(pause_us);
    }
}
