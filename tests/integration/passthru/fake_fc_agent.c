/*
 * fake-fc-agent: the fake Fibre Channel world of the npiv unit tests
 * (tests/unit/npiv/fake_fc.h), as a process a shell test can run beside
 * hvstord --sysfs-root. No FC hardware exists here; this plays the kernel's
 * FC transport (vport_create/vport_delete, Online, the fabric's zoning and
 * the array's masking) and nothing else.
 *
 *   fake-fc-agent ROOT CONFIG
 *
 * CONFIG, one statement a line (WWNs as 16 hex digits or 8 colon pairs):
 *   hba HOST_NO MAX_VPORTS VPORTS_IN_USE
 *   target WWPN
 *   zone TARGET_WWPN INITIATOR_WWPN
 *   mask TARGET_WWPN INITIATOR_WWPN LUN [BLOCK NAA_HEX32|/PATH/vpd_pg83]
 *        (a path: the LUN is that real disk, its VPD page 0x83 copied)
 *   online_delay_ms N
 * It prints "ready" once the tree is built, then every vport_create /
 * vport_delete the "kernel" saw, and removes ROOT on SIGTERM.
 */
#include "../../unit/npiv/fake_fc.h"

#include <signal.h>

static volatile sig_atomic_t is_stopping;

static void on_signal(int sig)
{
    (void)sig;
    is_stopping = 1;
}

static uint64_t parse_wwn(const char *text, int line)
{
    char hex[32];
    size_t n = 0;
    for (const char *c = text; *c && n < sizeof(hex) - 1; c++)
        if (*c != ':')
            hex[n++] = *c;
    hex[n] = '\0';
    char *end;
    uint64_t v = strtoull(hex, &end, 16);
    if (n != 16 || *end) {
        fprintf(stderr, "fake-fc-agent: line %d: '%s' is not a WWN\n", line, text);
        exit(2);
    }
    return v;
}

static struct fake_target *find_target(struct fake_fc *f, uint64_t wwpn, int line)
{
    for (size_t i = 0; i < f->n_targets; i++)
        if (f->targets[i].wwpn == wwpn)
            return &f->targets[i];
    fprintf(stderr, "fake-fc-agent: line %d: no target %016" PRIx64 " declared\n", line, wwpn);
    exit(2);
}

int main(int argc, char **argv)
{
    static struct fake_fc f;
    char buf[512], a[64], b[64], blk[32], naa[64];
    unsigned x, y, z;
    int line = 0;

    if (argc != 3) {
        fprintf(stderr, "usage: fake-fc-agent ROOT CONFIG\n");
        return 2;
    }
    fake_init(&f, argv[1]);
    FILE *cfg = fopen(argv[2], "r");
    if (!cfg) {
        fprintf(stderr, "fake-fc-agent: %s: %s\n", argv[2], strerror(errno));
        return 2;
    }
    while (fgets(buf, sizeof(buf), cfg)) {
        unsigned long long lun;
        int n;
        line++;
        if (buf[0] == '#' || buf[0] == '\n')
            continue;
        if (sscanf(buf, "hba %u %u %u", &x, &y, &z) == 3) {
            fake_add_hba(&f, x, "NPort (fabric via point-to-point)", y, z);
        } else if (sscanf(buf, "target %63s", a) == 1) {
            fake_add_target(&f, parse_wwn(a, line));
        } else if (sscanf(buf, "zone %63s %63s", a, b) == 2) {
            fake_zone(find_target(&f, parse_wwn(a, line), line), parse_wwn(b, line));
        } else if ((n = sscanf(buf, "mask %63s %63s %llu %31s %63s", a, b, &lun, blk, naa)) >= 3) {
            struct fake_target *t = find_target(&f, parse_wwn(a, line), line);
            if (n == 5 && naa[0] == '/')
                fake_mask_real_disk(t, parse_wwn(b, line), lun, blk, naa);
            else if (n == 5)
                fake_mask_disk(t, parse_wwn(b, line), lun, blk, naa);
            else
                fake_mask(t, parse_wwn(b, line), lun);
        } else if (sscanf(buf, "online_delay_ms %u", &x) == 1) {
            f.online_delay_ms = (int)x;
        } else {
            fprintf(stderr, "fake-fc-agent: %s line %d: not understood: %s", argv[2], line, buf);
            return 2;
        }
    }
    fclose(cfg);

    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    fake_start(&f);
    printf("ready\n");
    fflush(stdout);
    size_t shown = 0;
    while (!is_stopping) {
        for (size_t n = fake_log_count(&f); shown < n; shown++)
            printf("%s\n", fake_log_line(&f, shown));
        fflush(stdout);
        struct timespec ts = { 0, 20 * 1000000 };
        nanosleep(&ts, NULL);
    }
    for (size_t n = fake_log_count(&f); shown < n; shown++)
        printf("%s\n", fake_log_line(&f, shown));
    fake_stop(&f);
    return 0;
}
