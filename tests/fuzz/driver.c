/*
 * Stand-in for libFuzzer when the suite is built without HVSTOR_FUZZ: feeds
 * every file of the seed corpus given on the command line to the target,
 * then a fixed number of deterministic mutations of each (bit flips, byte
 * overwrites with boundary values, truncations, splices), so every build
 * runs each parser over hostile input. The real fuzzing is the clang build.
 */
#include <dirent.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t state = 0x853c49e6748fea9bull;
static uint64_t next(void)
{
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1Dull;
}

static void mutate_and_run(const uint8_t *seed, size_t len, int rounds)
{
    static const uint8_t special[] = { 0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff };
    uint8_t *buf = malloc(len + 64);
    for (int r = 0; r < rounds; r++) {
        size_t n = len;
        memcpy(buf, seed, len);
        int edits = 1 + (int)(next() % 8);
        for (int e = 0; e < edits && n; e++) {
            size_t at = next() % n;
            switch (next() % 5) {
            case 0: buf[at] ^= (uint8_t)(1u << (next() % 8)); break;
            case 1: buf[at] = special[next() % sizeof(special)]; break;
            case 2: buf[at] = (uint8_t)next(); break;
            case 3: n = at + 1; break;                         /* truncate */
            case 4: {                                           /* copy a run */
                size_t from = next() % n, cnt = next() % 16;
                if (from + cnt <= n && at + cnt <= n)
                    memmove(buf + at, buf + from, cnt);
                break;
            }
            }
        }
        LLVMFuzzerTestOneInput(buf, n);
    }
    free(buf);
}

static int run_file(const char *path, int rounds)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    uint8_t *buf = malloc(1 << 22);
    size_t n = fread(buf, 1, 1 << 22, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    if (n)
        mutate_and_run(buf, n, rounds);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    /* Resolve the corpus paths first: a target may change directory. */
    for (int i = 1; i < argc; i++) {
        char *abs = realpath(argv[i], NULL);
        if (abs)
            argv[i] = abs;
    }
    int rounds = getenv("FUZZ_ROUNDS") ? atoi(getenv("FUZZ_ROUNDS")) : 2000, files = 0;
    /* Always some unstructured input, corpus or not. */
    uint8_t rnd[4096];
    for (int i = 0; i < rounds; i++) {
        size_t n = next() % sizeof(rnd);
        for (size_t j = 0; j < n; j++)
            rnd[j] = (uint8_t)next();
        LLVMFuzzerTestOneInput(rnd, n);
    }
    for (int i = 1; i < argc; i++) {
        DIR *d = opendir(argv[i]);
        if (!d) {
            if (run_file(argv[i], rounds) == 0)
                files++;
            continue;
        }
        struct dirent *e;
        while ((e = readdir(d))) {
            char p[4096];
            if (e->d_name[0] == '.')
                continue;
            snprintf(p, sizeof(p), "%s/%s", argv[i], e->d_name);
            if (run_file(p, rounds) == 0)
                files++;
        }
        closedir(d);
    }
    printf("fuzz driver: %d seed files, %d mutations each, no crash\n", files, rounds);
    return 0;
}
