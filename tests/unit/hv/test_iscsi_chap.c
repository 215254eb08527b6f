/*
 * The CHAP hashes against published vectors (RFC 1321, FIPS 180-2) and
 * CHAP responses (RFC 1994: H(id || secret || challenge)) against values
 * computed independently with Python's hashlib.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "iscsi/iscsi_int.h"

static void hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
}

static void check(int alg, const void *data, size_t len, const char *want)
{
    uint8_t d[32];
    char h[65];
    size_t n = iscsi_chap_digest_bytes(alg);
    if (alg == ISCSI_CHAP_MD5)
        iscsi_md5(data, len, d);
    else if (alg == ISCSI_CHAP_SHA1)
        iscsi_sha1(data, len, d);
    else
        iscsi_sha256(data, len, d);
    hex(d, n, h);
    assert_string_equal(h, want);
}

static void test_hashes_match_published_vectors(void **state)
{
    const char *abc = "abc";
    const char *two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    const char *eighty =
        "12345678901234567890123456789012345678901234567890123456789012345678901234567890";
    check(ISCSI_CHAP_MD5, "", 0, "d41d8cd98f00b204e9800998ecf8427e");
    check(ISCSI_CHAP_MD5, abc, 3, "900150983cd24fb0d6963f7d28e17f72");
    check(ISCSI_CHAP_MD5, eighty, 80, "57edf4a22be3c955ac49da2e2107b67a");
    check(ISCSI_CHAP_SHA1, abc, 3, "a9993e364706816aba3e25717850c26c9cd0d89d");
    check(ISCSI_CHAP_SHA1, two_blocks, 56, "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    check(ISCSI_CHAP_SHA256, abc, 3,
          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    check(ISCSI_CHAP_SHA256, two_blocks, 56,
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_hashes_of_long_input_cross_many_blocks(void **state)
{
    char a[1000];
    memset(a, 'a', sizeof(a));
    check(ISCSI_CHAP_MD5, a, sizeof(a), "cabe45dcc9ae5b66ba86600cca6b8ba8");
    check(ISCSI_CHAP_SHA1, a, sizeof(a), "291e9a6c66994949b57ba5e650361e98fc36b1ba");
    check(ISCSI_CHAP_SHA256, a, sizeof(a),
          "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}

static void test_chap_response_is_hash_of_id_secret_challenge(void **state)
{
    uint8_t ch[16];
    uint8_t out[ISCSI_HASH_MAX];
    char h[65];
    for (int i = 0; i < 16; i++)
        ch[i] = (uint8_t)i;
    assert_int_equal(iscsi_chap_response(ISCSI_CHAP_MD5, 0x2a, "password123456", ch, 16, out), 16);
    hex(out, 16, h);
    assert_string_equal(h, "7b49071391da7e7f683a5f87c450e382");

    const uint8_t c2[] = { 0xde, 0xad, 0xbe, 0xef };
    assert_int_equal(iscsi_chap_response(ISCSI_CHAP_SHA1, 7, "secret", c2, 4, out), 20);
    hex(out, 20, h);
    assert_string_equal(h, "81b734d7640a2ac7140f7d12dbacddf94c89a629");

    const uint8_t c3[] = { 1, 2, 3 };
    assert_int_equal(iscsi_chap_response(ISCSI_CHAP_SHA256, 255, "mutualsecret", c3, 3, out), 32);
    hex(out, 32, h);
    assert_string_equal(h, "d98ad757f63677fac92c5bd88d6b6f33b75badc99a5d5dea31cebb52e3f6b392");
}

static void test_chap_rejects_unknown_algorithm(void **state)
{
    uint8_t out[ISCSI_HASH_MAX];
    assert_int_equal(iscsi_chap_digest_bytes(4), 0);
    assert_int_equal(iscsi_chap_digest_bytes(8), 0);
    assert_true(iscsi_chap_response(4, 1, "x", (const uint8_t *)"y", 1, out) < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hashes_match_published_vectors),
        cmocka_unit_test(test_hashes_of_long_input_cross_many_blocks),
        cmocka_unit_test(test_chap_response_is_hash_of_id_secret_challenge),
        cmocka_unit_test(test_chap_rejects_unknown_algorithm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
