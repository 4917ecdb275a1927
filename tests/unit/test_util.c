/* tests/unit/test_util.c: hashes, base64, UTF-8, URL and header helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "util.h"
#include "ws.h"

#include <stdio.h>
#include <string.h>

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", p[i]);
}

static void test_sha1(void **st)
{
    (void)st;
    uint8_t d[20];
    char h[41];
    hd_sha1("", 0, d);
    hex(d, 20, h);
    assert_string_equal(h, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    hd_sha1("abc", 3, d);
    hex(d, 20, h);
    assert_string_equal(h, "a9993e364706816aba3e25717850c26c9cd0d89d");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hd_sha1(m, strlen(m), d);
    hex(d, 20, h);
    assert_string_equal(h, "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    char acc[29];
    assert_int_equal(hd_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, acc), 0);
    assert_string_equal(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_int_equal(hd_ws_accept_key("short", 5, acc), -1);
    assert_int_equal(hd_ws_accept_key("!!!!!!!!!!!!!!!!!!!!!!!!", 24, acc), -1);
}

static void test_sha256_hmac(void **st)
{
    (void)st;
    uint8_t d[32];
    char h[65];
    hd_sha256("abc", 3, d);
    hex(d, 32, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* RFC 4231 test cases 1 and 2. */
    uint8_t key[20];
    memset(key, 0x0b, 20);
    hd_hmac_sha256(key, 20, "Hi There", 8, d);
    hex(d, 32, h);
    assert_string_equal(h, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    hd_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, d);
    hex(d, 32, h);
    assert_string_equal(h, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* A key longer than the block is hashed first (RFC 4231 case 6). */
    uint8_t big[131];
    memset(big, 0xaa, sizeof big);
    const char *msg = "Test Using Larger Than Block-Size Key - Hash Key First";
    hd_hmac_sha256(big, sizeof big, msg, strlen(msg), d);
    hex(d, 32, h);
    assert_string_equal(h, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    assert_true(hd_ct_equal("abc", 3, "abc", 3));
    assert_false(hd_ct_equal("abc", 3, "abd", 3));
    assert_false(hd_ct_equal("abc", 3, "ab", 2));
}

static void test_base64(void **st)
{
    (void)st;
    char out[64];
    uint8_t raw[64];
    assert_int_equal(hd_base64_encode((const uint8_t *)"foob", 4, out), 8);
    assert_string_equal(out, "Zm9vYg==");
    assert_int_equal(hd_base64_decode("Zm9vYg==", 8, raw), 4);
    assert_memory_equal(raw, "foob", 4);
    assert_int_equal(hd_base64_decode("Zm9vYg", 6, raw), 4); /* unpadded */
    assert_int_equal(hd_base64_decode("-_8", 3, raw), 2);    /* URL-safe */
    assert_int_equal(raw[0], 0xfb);
    assert_int_equal(raw[1], 0xff);
    assert_int_equal(hd_base64_decode("Zm9v!", 5, raw), -1);
    assert_int_equal(hd_base64_decode("Z", 1, raw), -1);
    assert_int_equal(hd_base64_decode("", 0, raw), 0);
}

static void test_utf8(void **st)
{
    (void)st;
#define V(s) hd_utf8_valid((const uint8_t *)(s), sizeof(s) - 1)
    assert_true(V("plain ascii"));
    assert_true(V("\xc3\xa9t\xc3\xa9"));           /* été */
    assert_true(V("\xe2\x82\xac"));                /* € */
    assert_true(V("\xf0\x9f\x98\x80"));            /* U+1F600 */
    assert_true(V("\xf4\x8f\xbf\xbf"));            /* U+10FFFF */
    assert_false(V("\xc0\xaf"));                   /* overlong */
    assert_false(V("\xe0\x80\xaf"));               /* overlong */
    assert_false(V("\xed\xa0\x80"));               /* surrogate */
    assert_false(V("\xf4\x90\x80\x80"));           /* > U+10FFFF */
    assert_false(V("\xe2\x82"));                   /* truncated */
    assert_false(V("\x80"));                       /* lone continuation */
    assert_false(V("\xff"));
#undef V
}

static void test_url_header(void **st)
{
    (void)st;
    char s[] = "a%20b+c%2x%41";
    size_t n = hd_url_decode(s, strlen(s));
    s[n] = 0;
    assert_string_equal(s, "a b c%2xA");
    const char *v = "keep-alive, Upgrade";
    assert_true(hd_header_has_token(v, strlen(v), "upgrade"));
    assert_false(hd_header_has_token(v, strlen(v), "upgrad"));
    assert_true(hd_strieq("WebSocket", 9, "websocket"));
    assert_true(hd_addr_is_loopback("127.1.2.3"));
    assert_true(hd_addr_is_loopback("::1"));
    assert_true(hd_addr_is_loopback("::ffff:127.0.0.1"));
    assert_false(hd_addr_is_loopback("10.0.0.1"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha1),   cmocka_unit_test(test_sha256_hmac),
        cmocka_unit_test(test_base64), cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_url_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
