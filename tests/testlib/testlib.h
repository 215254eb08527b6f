/*
 * testlib — small helpers shared by hvstor's C tests: a scratch directory
 * that is removed at exit, reproducible pseudo-random data, a free loopback
 * port, and running a command with its output captured.
 */
#ifndef HVSTOR_TESTLIB_H
#define HVSTOR_TESTLIB_H

#include <stddef.h>
#include <stdint.h>

/* A fresh directory under $TMPDIR (or /var/tmp, which supports O_DIRECT),
 * removed recursively at exit. Returns its path (static storage). */
const char *t_tmpdir(void);
/* Path of `name` inside t_tmpdir(), in a rotating static buffer. */
const char *t_path(const char *name);
/* xorshift64* stream: same seed, same bytes. */
uint64_t t_rand(uint64_t *state);
void t_fill(void *buf, size_t len, uint64_t seed);
/* A TCP port on 127.0.0.1 that was free a moment ago. */
int t_free_port(void);
/* Run a shell command; returns its exit status (or -1), stdout into out
 * (NUL-terminated, truncated to cap) when out is not NULL. */
int t_run(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Make `path` hold exactly `len` bytes of `buf` (created or truncated).
 * 0, or -errno. */
int t_write_file(const char *path, const void *buf, size_t len);
/* Directory of the built binaries ($HVSTOR_BIN). */
const char *t_bindir(void);
/* The bytes a hex string spells ("2a000000..."), at most cap into out;
 * returns how many (a CDB written as the standards print it). */
size_t t_unhex(const char *hex, uint8_t *out, size_t cap);

#endif
