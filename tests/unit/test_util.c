/* tests/unit/test_util.c: hashes, base64, UTF-8, URL and header helpers,
 * Redis URLs.
 * UTF-8 validation is compared with a reference written from Unicode's
 * table of well-formed byte sequences (Table 3-7), exhaustively up to three
 * bytes and on boundary and random inputs beyond. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "util.h"
#include "ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hex(const uint8_t *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", p[i]);
}

static uint64_t rng = 0x243F6A8885A308D3ULL;
static uint32_t rnd(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* ---- SHA-1, SHA-256, HMAC ------------------------------------------------ */

static void sha1_hex(const void *p, size_t n, char h[41])
{
    uint8_t d[20];
    hd_sha1(p, n, d);
    hex(d, 20, h);
}

static void test_sha1(void **st)
{
    (void)st;
    char h[41];
    sha1_hex("", 0, h);
    assert_string_equal(h, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    sha1_hex("abc", 3, h);
    assert_string_equal(h, "a9993e364706816aba3e25717850c26c9cd0d89d");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"; /* 56: two tails */
    sha1_hex(m, strlen(m), h);
    assert_string_equal(h, "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    const char *fox = "The quick brown fox jumps over the lazy dog";
    sha1_hex(fox, strlen(fox), h);
    assert_string_equal(h, "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12");
    /* A million 'a' (FIPS 180 appendix A.3): many blocks. */
    char *a = malloc(1000000);
    memset(a, 'a', 1000000);
    sha1_hex(a, 1000000, h);
    assert_string_equal(h, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    free(a);
}

static void test_accept_key(void **st)
{
    (void)st;
    char acc[29];
    /* RFC 6455 section 1.3. */
    assert_int_equal(hd_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, acc), 0);
    assert_string_equal(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_int_equal(strlen(acc), 28);
    /* RFC 6455 section 4.2.2 example key is the same; another known pair. */
    assert_int_equal(hd_ws_accept_key("x3JJHMbDL1EzLkh9GBhXDw==", 24, acc), 0);
    assert_string_equal(acc, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
    assert_int_equal(hd_ws_accept_key("short", 5, acc), -1);
    assert_int_equal(hd_ws_accept_key("!!!!!!!!!!!!!!!!!!!!!!!!", 24, acc), -1);
    assert_int_equal(hd_ws_accept_key("AAAAAAAAAAAAAAAAAAAAAAAA", 24, acc), -1); /* 18 bytes */
    assert_int_equal(hd_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==x", 25, acc), -1);
    assert_int_equal(hd_ws_accept_key("", 0, acc), -1);
}

static void test_sha256_hmac(void **st)
{
    (void)st;
    uint8_t d[32];
    char h[65];
    hd_sha256("abc", 3, d);
    hex(d, 32, h);
    assert_string_equal(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    hd_sha256("", 0, d);
    hex(d, 32, h);
    assert_string_equal(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hd_sha256(m, strlen(m), d);
    hex(d, 32, h);
    assert_string_equal(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
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
    assert_true(hd_ct_equal("", 0, "", 0));
    assert_false(hd_ct_equal("abc", 3, "abd", 3));
    assert_false(hd_ct_equal("abc", 3, "ab", 2));
    assert_false(hd_ct_equal("ab", 2, "abc", 3));
}

/* ---- base64 ---------------------------------------------------------------- */

static void test_base64_vectors(void **st)
{
    (void)st;
    /* RFC 4648 section 10. */
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=",
                                      "Zm9vYmFy"};
    char out[64];
    uint8_t raw[64];
    for (int i = 0; i < 7; i++) {
        size_t n = strlen(plain[i]);
        assert_int_equal(hd_base64_encode((const uint8_t *)plain[i], n, out), strlen(enc[i]));
        assert_string_equal(out, enc[i]);
        assert_int_equal(hd_base64_decode(enc[i], strlen(enc[i]), raw), (long)n);
        assert_memory_equal(raw, plain[i], n);
        /* Unpadded. */
        size_t el = strlen(enc[i]);
        while (el && enc[i][el - 1] == '=') el--;
        assert_int_equal(hd_base64_decode(enc[i], el, raw), (long)n);
        assert_memory_equal(raw, plain[i], n);
    }
    /* URL-safe alphabet, with and without padding. */
    assert_int_equal(hd_base64_decode("-_8", 3, raw), 2);
    assert_int_equal(raw[0], 0xfb);
    assert_int_equal(raw[1], 0xff);
    assert_int_equal(hd_base64_decode("-_8=", 4, raw), 2);
    assert_int_equal(hd_base64_decode("+/8=", 4, raw), 2);
    assert_int_equal(raw[0], 0xfb);
    assert_int_equal(raw[1], 0xff);
}

static void test_base64_invalid(void **st)
{
    (void)st;
    uint8_t raw[64];
    static const char *const bad[] = {
        "Zm9v!",   /* outside the alphabet */
        "Z",       /* one char: no whole byte */
        "Zm9vY",   /* 4k+1 chars */
        "Zm9vY===", /* 4k+1 data chars once the padding goes */
        "Zm=9",    /* '=' inside */
        " Zm9v",   /* blank */
        "Zm9v\n",  /* newline */
        "Zm9v\x80", /* high byte */
        "Zg==Zg==", /* padding in the middle */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(hd_base64_decode(bad[i], strlen(bad[i]), raw), -1);
    assert_int_equal(hd_base64_decode("", 0, raw), 0);
    assert_int_equal(hd_base64_decode("==", 2, raw), 0);
    /* A NUL inside the given length is not base64. */
    assert_int_equal(hd_base64_decode("Zm\0v", 4, raw), -1);
}

static void test_base64_roundtrip(void **st)
{
    (void)st;
    uint8_t in[200], back[200];
    char out[300], url[300];
    for (size_t len = 0; len < 200; len++) {
        for (size_t i = 0; i < len; i++) in[i] = (uint8_t)rnd();
        size_t n = hd_base64_encode(in, len, out);
        assert_int_equal(n, 4 * ((len + 2) / 3));
        assert_int_equal(strlen(out), n);
        assert_int_equal(hd_base64_decode(out, n, back), (long)len);
        assert_memory_equal(back, in, len);
        /* The same bytes in the URL-safe alphabet, unpadded. */
        size_t u = 0;
        for (size_t i = 0; i < n && out[i] != '='; i++)
            url[u++] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
        memset(back, 0, sizeof back);
        assert_int_equal(hd_base64_decode(url, u, back), (long)len);
        assert_memory_equal(back, in, len);
    }
}

/* ---- UTF-8 -------------------------------------------------------------------- */

/* Reference: Unicode 15, Table 3-7, byte ranges of well-formed sequences. */
static int ref_utf8(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t b = p[i];
        uint8_t lo = 0x80, hi = 0xBF;
        size_t k;
        if (b <= 0x7F) k = 0;
        else if (b >= 0xC2 && b <= 0xDF) k = 1;
        else if (b == 0xE0) k = 2, lo = 0xA0;
        else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) k = 2;
        else if (b == 0xED) k = 2, hi = 0x9F;
        else if (b == 0xF0) k = 3, lo = 0x90;
        else if (b >= 0xF1 && b <= 0xF3) k = 3;
        else if (b == 0xF4) k = 3, hi = 0x8F;
        else return 0;
        if (n - i < k + 1) return 0;
        if (k && (p[i + 1] < lo || p[i + 1] > hi)) return 0;
        for (size_t j = 2; j <= k; j++)
            if (p[i + j] < 0x80 || p[i + j] > 0xBF) return 0;
        i += k + 1;
    }
    return 1;
}

static void test_utf8_cases(void **st)
{
    (void)st;
#define V(s) hd_utf8_valid((const uint8_t *)(s), sizeof(s) - 1)
    assert_true(V(""));
    assert_true(V("plain ascii"));
    assert_true(V("nul\0inside"));
    assert_true(V("\x7f"));
    assert_true(V("\xc2\x80"));                    /* U+0080 */
    assert_true(V("\xc3\xa9t\xc3\xa9"));           /* été */
    assert_true(V("\xdf\xbf"));                    /* U+07FF */
    assert_true(V("\xe0\xa0\x80"));                /* U+0800 */
    assert_true(V("\xe2\x82\xac"));                /* € */
    assert_true(V("\xed\x9f\xbf"));                /* U+D7FF */
    assert_true(V("\xee\x80\x80"));                /* U+E000 */
    assert_true(V("\xef\xbf\xbf"));                /* U+FFFF */
    assert_true(V("\xf0\x90\x80\x80"));            /* U+10000 */
    assert_true(V("\xf0\x9f\x98\x80"));            /* U+1F600 */
    assert_true(V("\xf4\x8f\xbf\xbf"));            /* U+10FFFF */
    assert_false(V("\xc0\xaf"));                   /* overlong '/' */
    assert_false(V("\xc1\xbf"));                   /* overlong */
    assert_false(V("\xe0\x80\xaf"));               /* overlong */
    assert_false(V("\xe0\x9f\xbf"));               /* overlong U+07FF */
    assert_false(V("\xf0\x8f\xbf\xbf"));           /* overlong U+FFFF */
    assert_false(V("\xf0\x80\x80\xaf"));           /* overlong */
    assert_false(V("\xed\xa0\x80"));               /* U+D800 */
    assert_false(V("\xed\xbf\xbf"));               /* U+DFFF */
    assert_false(V("\xed\xa0\xbd\xed\xb8\x80"));   /* a CESU-8 surrogate pair */
    assert_false(V("\xf4\x90\x80\x80"));           /* U+110000 */
    assert_false(V("\xf5\x80\x80\x80"));
    assert_false(V("\xf8\x88\x80\x80\x80"));       /* 5-byte form */
    assert_false(V("\xfe"));
    assert_false(V("\xff"));
    assert_false(V("\xe2\x82"));                   /* truncated */
    assert_false(V("\xf0\x9f\x98"));               /* truncated */
    assert_false(V("\xf0\x9f"));
    assert_false(V("\xc3"));
    assert_false(V("ok\xc3"));                     /* truncated at the end */
    assert_false(V("\xc3" "a"));                   /* not a continuation */
    assert_false(V("\xe2\x28\xa1"));
    assert_false(V("\x80"));                       /* lone continuation */
    assert_false(V("a\xbf" "b"));
#undef V
    /* Truncated by the length, not the bytes. */
    const uint8_t euro[] = {0xe2, 0x82, 0xac};
    assert_true(hd_utf8_valid(euro, 3));
    assert_false(hd_utf8_valid(euro, 2));
    assert_false(hd_utf8_valid(euro, 1));
    assert_true(hd_utf8_valid(euro, 0));
}

static void test_utf8_exhaustive(void **st)
{
    (void)st;
    uint8_t b[8];
    for (unsigned x = 0; x < 256; x++) {
        b[0] = (uint8_t)x;
        assert_int_equal(hd_utf8_valid(b, 1), ref_utf8(b, 1));
    }
    for (unsigned x = 0; x < 65536; x++) {
        b[0] = (uint8_t)(x >> 8), b[1] = (uint8_t)x;
        assert_int_equal(hd_utf8_valid(b, 2), ref_utf8(b, 2));
    }
    for (unsigned x = 0; x < (1u << 24); x++) {
        b[0] = (uint8_t)(x >> 16), b[1] = (uint8_t)(x >> 8), b[2] = (uint8_t)x;
        if (hd_utf8_valid(b, 3) != ref_utf8(b, 3))
            fail_msg("3 bytes %02x %02x %02x: got %d", b[0], b[1], b[2], hd_utf8_valid(b, 3));
    }
    /* Four bytes: every lead and second byte, the edges of the rest. */
    static const uint8_t edge[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xff};
    for (unsigned x = 0; x < 65536; x++)
        for (size_t i = 0; i < sizeof edge; i++)
            for (size_t j = 0; j < sizeof edge; j++) {
                b[0] = (uint8_t)(x >> 8), b[1] = (uint8_t)x, b[2] = edge[i], b[3] = edge[j];
                if (hd_utf8_valid(b, 4) != ref_utf8(b, 4))
                    fail_msg("4 bytes %02x %02x %02x %02x", b[0], b[1], b[2], b[3]);
            }
    /* Random mixes of likely bytes, up to 8 long. */
    static const uint8_t pool[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf,
                                   0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee,
                                   0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff};
    for (int k = 0; k < 2000000; k++) {
        size_t n = rnd() % 9;
        for (size_t i = 0; i < n; i++) b[i] = pool[rnd() % sizeof pool];
        if (hd_utf8_valid(b, n) != ref_utf8(b, n)) fail_msg("random input of %zu bytes", n);
    }
}

/* ---- URL, headers, addresses ------------------------------------------------- */

static void url_n(const char *in, const char *want, size_t wl)
{
    char s[128];
    strcpy(s, in);
    size_t n = hd_url_decode(s, strlen(s));
    assert_int_equal(n, wl);
    assert_memory_equal(s, want, n);
}
#define url(in, want) url_n(in, want, sizeof(want) - 1)

static void test_url_decode(void **st)
{
    (void)st;
    url("", "");
    url("plain", "plain");
    url("a%20b+c%2x%41", "a b c%2xA");
    url("%41%42%43", "ABC");
    url("%4a%4A", "JJ");
    url("%", "%");
    url("%4", "%4");
    url("x%", "x%");
    url("x%4", "x%4");
    url("%%41", "%A");
    url("%g1%1g", "%g1%1g");
    url("++", "  ");
    url("%2B", "+");
    url("%00", "\0");
    url("room%3A1", "room:1");
    url("%e2%82%ac", "\xe2\x82\xac");
}

static void test_header_token(void **st)
{
    (void)st;
#define T(v, tok) hd_header_has_token(v, strlen(v), tok)
    assert_true(T("keep-alive, Upgrade", "upgrade"));
    assert_true(T("Upgrade", "upgrade"));
    assert_true(T("UPGRADE", "upgrade"));
    assert_true(T("  upgrade  ", "upgrade"));
    assert_true(T("\tupgrade\t,x", "upgrade"));
    assert_true(T(",,upgrade,,", "upgrade"));
    assert_true(T("a,b ,  upgrade", "upgrade"));
    assert_false(T("keep-alive, Upgrade", "upgrad"));
    assert_false(T("upgrades", "upgrade"));
    assert_false(T("x-upgrade", "upgrade"));
    assert_false(T("up grade", "upgrade"));
    assert_false(T("", "upgrade"));
    assert_false(T(",", "upgrade"));
#undef T
    /* The length bounds the value: a token past it does not count. */
    assert_false(hd_header_has_token("close, upgrade", 6, "upgrade"));
    assert_true(hd_header_has_token("upgradeXYZ", 7, "upgrade"));
    assert_true(hd_strieq("WebSocket", 9, "websocket"));
    assert_true(hd_strieq("", 0, ""));
    assert_false(hd_strieq("WebSocke", 8, "websocket"));
    assert_false(hd_strieq("WebSocketX", 10, "websocket"));
    assert_false(hd_strieq("WebSocket", 9, "websockez"));
    /* Only ASCII letters fold. */
    assert_false(hd_strieq("\xc3\xa9", 2, "\xc3\x89"));
    assert_false(hd_strieq("[", 1, "{"));
}

static void test_loopback(void **st)
{
    (void)st;
    assert_true(hd_addr_is_loopback("127.0.0.1"));
    assert_true(hd_addr_is_loopback("127.1.2.3"));
    assert_true(hd_addr_is_loopback("127.255.255.255"));
    assert_true(hd_addr_is_loopback("::1"));
    assert_true(hd_addr_is_loopback("::ffff:127.0.0.1"));
    assert_false(hd_addr_is_loopback("10.0.0.1"));
    assert_false(hd_addr_is_loopback("128.0.0.1"));
    assert_false(hd_addr_is_loopback("1.127.0.0"));
    assert_false(hd_addr_is_loopback("::ffff:10.0.0.1"));
    assert_false(hd_addr_is_loopback("::2"));
    assert_false(hd_addr_is_loopback("::10"));
    assert_false(hd_addr_is_loopback("fe80::1"));
    assert_false(hd_addr_is_loopback(""));
    assert_false(hd_addr_is_loopback("?"));
}

/* ---- Redis URLs --------------------------------------------------------- */

static void url_ok(const char *url, const char *host, int port, const char *user,
                   const char *password, int db)
{
    hd_redis_url u;
    char err[128] = "";
    if (hd_redis_url_parse(url, &u, err, sizeof err)) fail_msg("%s: refused: %s", url, err);
    assert_string_equal(u.host, host);
    assert_int_equal(u.port, port);
    assert_string_equal(u.user, user);
    assert_string_equal(u.password, password);
    assert_int_equal(u.db, db);
}

/* Expects url refused with a reason containing want, *out zeroed, and the
 * reason not repeating the URL's secret (when given). */
static void url_bad(const char *url, const char *want)
{
    hd_redis_url u, zero;
    memset(&u, 'x', sizeof u);
    memset(&zero, 0, sizeof zero);
    char err[128] = "";
    if (hd_redis_url_parse(url, &u, err, sizeof err) != HD_ECONFIG)
        fail_msg("%s: accepted (host %s port %d), expected \"%s\"", url, u.host, u.port, want);
    if (!strstr(err, want)) fail_msg("%s: reason \"%s\" lacks \"%s\"", url, err, want);
    assert_memory_equal(&u, &zero, sizeof u);
    assert_null(strstr(err, "s3cret"));
}

static void test_redis_url_forms(void **st)
{
    (void)st;
    url_ok("redis://127.0.0.1:6379", "127.0.0.1", 6379, "", "", 0);
    url_ok("redis://localhost", "localhost", 6379, "", "", 0);
    url_ok("redis://redis-1.internal_net.example:7000", "redis-1.internal_net.example", 7000, "", "", 0);
    url_ok("redis://:s3cret@10.0.0.2:6380/3", "10.0.0.2", 6380, "", "s3cret", 3);
    url_ok("redis://app:s3cret@h:1/2", "h", 1, "app", "s3cret", 2);
    url_ok("redis://h:65535/15", "h", 65535, "", "", 15);
    url_ok("redis://h/0", "h", 6379, "", "", 0);
    url_ok("redis://h/", "h", 6379, "", "", 0);      /* an empty path is db 0 */
    url_ok("redis://h:00080", "h", 80, "", "", 0);  /* leading zeros */
    url_ok("REDIS://H", "H", 6379, "", "", 0);      /* the scheme in any case */
    url_ok("Redis://h", "h", 6379, "", "", 0);
    url_ok("redis://[::1]:7000/1", "::1", 7000, "", "", 1);
    url_ok("redis://[::1]", "::1", 6379, "", "", 0);
    url_ok("redis://:pw@[fe80::1:2]", "fe80::1:2", 6379, "", "pw", 0);
    /* The last '@' ends the password: raw '@', ':', '/', '?', '#' in it. */
    url_ok("redis://:a@b:c/d?e#f@h:1", "h", 1, "", "a@b:c/d?e#f", 0);
    url_ok("redis://u:p:q@h", "h", 6379, "u", "p:q", 0);
    /* %XX escapes in user and password are decoded (either case). */
    url_ok("redis://us%65r:p%40ss%2fw%3A%20d@h", "h", 6379, "user", "p@ss/w: d", 0);
    url_ok("redis://:%C3%A9@h", "h", 6379, "", "\xC3\xA9", 0);
}

static void test_redis_url_errors(void **st)
{
    (void)st;
    url_bad("rediss://h", "rediss:// (TLS) is not supported");
    url_bad("http://h", "only the redis:// scheme");
    url_bad("://h", "only the redis:// scheme");
    url_bad("h:6379", "expected redis://host");
    url_bad("redis:/h", "expected redis://host");
    url_bad("", "expected redis://host");
    url_bad(NULL, "no URL");
    url_bad("redis://", "host is required");
    url_bad("redis://:6379", "host is required");
    url_bad("redis:///1", "host is required");
    url_bad("redis://:s3cret@", "host is required");
    url_bad("redis://:s3cret@:1", "host is required");
    url_bad("redis://[]:1", "host is required");
    url_bad("redis://[::1", "without its closing ']'");
    url_bad("redis://[::1]x", "unexpected 'x' after the host");
    url_bad("redis://[zz::1]", "bad character 'z' in the host");
    url_bad("redis://ho%73t", "bad character '%' in the host");
    url_bad("redis://h\xC3\xA9", "bad character (byte 0xC3) in the host");
    url_bad("redis://[::1]\xC3", "unexpected byte 0xC3 after the host");
    url_bad("redis://[fe80::1%eth0]", "bad character '%' in the host"); /* no zones */
    url_bad("redis://h:", "empty port");
    url_bad("redis://h:/1", "empty port");
    url_bad("redis://h:0", "port out of range");
    url_bad("redis://h:65536", "port out of range");
    url_bad("redis://h:99999999999999999999999", "port out of range"); /* never wraps */
    url_bad("redis://h:-1", "port is not a number");
    url_bad("redis://h:6379x", "port is not a number");
    url_bad("redis://h:1:2", "port is not a number");
    url_bad("redis://h/16", "db out of range (0-15)");
    url_bad("redis://h/99999999999999999999", "db out of range");
    url_bad("redis://h/x", "db is not a number");
    url_bad("redis://h/1/2", "db is not a number");
    url_bad("redis://h/-1", "db is not a number");
    url_bad("redis://h?db=1", "query strings are not supported");
    url_bad("redis://:s3cret@h:1/2?x", "query strings are not supported");
    url_bad("redis://h#x", "fragments are not supported");
    url_bad("redis://s3cret@h", "a user without a password");
    url_bad("redis://@h", "'@' without user:password");
    url_bad("redis://:@h", "empty password");
    url_bad("redis://u:@h", "empty password");
    url_bad("redis://:s3cret%zz@h", "bad %-escape in the password");
    url_bad("redis://:s3cret%4@h", "bad %-escape in the password");
    url_bad("redis://:s3cret%@h", "bad %-escape in the password");
    url_bad("redis://:s3cret%00x@h", "bad %-escape in the password"); /* no NUL inside */
    url_bad("redis://u%g1:s3cret@h", "bad %-escape in the user");
    url_bad("redis:// h", "spaces and control characters");
    url_bad("redis://h\t", "spaces and control characters");
    url_bad("redis://:s3 cret@h", "spaces and control characters");
    url_bad("redis://h\x7f", "spaces and control characters");
    url_bad("redis://h\n", "spaces and control characters");
    /* No room for the reason, or none given: still refused, nothing written. */
    hd_redis_url u;
    char tiny[6];
    memset(tiny, 'Z', sizeof tiny);
    assert_int_equal(hd_redis_url_parse("redis://h:0", &u, tiny, 4), HD_ECONFIG);
    assert_string_equal(tiny, "por");
    assert_int_equal(tiny[4], 'Z');
    assert_int_equal(hd_redis_url_parse("redis://h:0", &u, NULL, 0), HD_ECONFIG);
    assert_int_equal(hd_redis_url_parse("redis://h:0", &u, tiny, 0), HD_ECONFIG);
    assert_int_equal(tiny[0], 'p');
}

/* Host, user and password hold up to HD_REDIS_URL_MAX (255) bytes: one
 * more is refused, never truncated (a truncated password would fail AUTH
 * far from the config). The password's limit is on its decoded bytes. */
static void test_redis_url_lengths(void **st)
{
    (void)st;
    char url[1200], longs[800], esc[800];
    assert_int_equal(HD_REDIS_URL_MAX, 255);
    memset(longs, 'a', 256);
    longs[256] = 0;
    for (int i = 0; i < 256; i++) memcpy(esc + 3 * i, "%61", 3);
    esc[3 * 256] = 0;

    snprintf(url, sizeof url, "redis://%.255s:1", longs);
    hd_redis_url u;
    char err[128];
    assert_int_equal(hd_redis_url_parse(url, &u, err, sizeof err), 0);
    assert_int_equal(strlen(u.host), 255);
    assert_int_equal(u.port, 1);
    snprintf(url, sizeof url, "redis://%s:1", longs);
    url_bad(url, "host is longer than 255 bytes");

    snprintf(url, sizeof url, "redis://%.255s:%.255s@h", longs, longs);
    assert_int_equal(hd_redis_url_parse(url, &u, err, sizeof err), 0);
    assert_int_equal(strlen(u.user), 255);
    assert_int_equal(strlen(u.password), 255);
    assert_string_equal(u.host, "h");
    snprintf(url, sizeof url, "redis://%s:pw@h", longs);
    url_bad(url, "user is longer than 255 bytes");
    snprintf(url, sizeof url, "redis://:%s@h", longs);
    url_bad(url, "password is longer than 255 bytes");
    /* 255 escapes decode to 255 bytes (765 in the URL): fine; 256: refused. */
    snprintf(url, sizeof url, "redis://:%.765s@h", esc);
    assert_int_equal(hd_redis_url_parse(url, &u, err, sizeof err), 0);
    assert_int_equal(strlen(u.password), 255);
    assert_int_equal(u.password[254], 'a');
    snprintf(url, sizeof url, "redis://:%s@h", esc);
    url_bad(url, "password is longer than 255 bytes");
}

/* ws.allowed_origins: exact origins (case-insensitive) and "*.domain"
 * patterns (a subdomain, any scheme, any port; not the domain itself, not
 * a look-alike). */
static void test_origin_match(void **st)
{
    (void)st;
    static const struct {
        const char *allowed, *origin;
        int ok;
    } cases[] = {
        {"https://app.example.com", "https://app.example.com", 1},
        {"https://app.example.com", "HTTPS://App.Example.COM", 1},
        {"https://app.example.com", "http://app.example.com", 0},
        {"https://app.example.com", "https://app.example.com:8443", 0},
        {"https://app.example.com:8443", "https://app.example.com:8443", 1},
        {"https://app.example.com", "https://app.example.com.evil.net", 0},
        {"*.example.org", "https://a.example.org", 1},
        {"*.example.org", "http://a.b.example.org:8080", 1},
        {"*.example.org", "https://example.org", 0},
        {"*.example.org", "https://badexample.org", 0},
        {"*.example.org", "https://.example.org", 0},
        {"*.example.org", "https://a.example.org.evil.net", 0},
        {"*.example.org", "a.example.org", 0},
        {"*.example.org", "null", 0},
        {"*.example.org", "", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (hd_origin_match(cases[i].allowed, cases[i].origin, strlen(cases[i].origin)) != cases[i].ok)
            fail_msg("%s against %s: expected %d", cases[i].origin, cases[i].allowed, cases[i].ok);
}

/* The authority of a URL: names, IPv6 literals, ports, and every refusal. */
static void test_authority(void **st)
{
    (void)st;
    hd_authority a;
    assert_null(hd_authority_parse("example.com", 11, &a));
    assert_int_equal(a.host_len, 11);
    assert_int_equal(a.port, 0);
    assert_int_equal(a.v6, 0);
    assert_null(hd_authority_parse("h_1-x.y:65535", 13, &a));
    assert_memory_equal(a.host, "h_1-x.y", 7);
    assert_int_equal(a.port, 65535);
    assert_null(hd_authority_parse("[::1]:80", 8, &a));
    assert_int_equal(a.v6, 1);
    assert_int_equal(a.host_len, 3);
    assert_memory_equal(a.host, "::1", 3);
    assert_int_equal(a.port, 80);
    static const struct {
        const char *in, *why;
    } bad[] = {
        {"", "no host"}, {":80", "no host"}, {"h:", "bad port"}, {"h:0", "bad port"},
        {"h:65536", "bad port"}, {"h:8o", "bad port"}, {"h:1234567", "bad port"},
        {"[::1", "bad IPv6 address"}, {"[zz]", "bad IPv6 address"}, {"[]", "bad IPv6 address"},
        {"[::1]x", "bad host"}, {"ex%41mple", "bad character in the host"},
        {"a b", "bad character in the host"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *why = hd_authority_parse(bad[i].in, strlen(bad[i].in), &a);
        assert_non_null(why);
        assert_string_equal(why, bad[i].why);
    }
    char big[300];
    memset(big, 'a', sizeof big);
    assert_string_equal(hd_authority_parse(big, 254, &a), "host over 253 bytes");
    assert_null(hd_authority_parse(big, 253, &a));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_origin_match),
        cmocka_unit_test(test_authority),
        cmocka_unit_test(test_sha1),
        cmocka_unit_test(test_accept_key),
        cmocka_unit_test(test_sha256_hmac),
        cmocka_unit_test(test_base64_vectors),
        cmocka_unit_test(test_base64_invalid),
        cmocka_unit_test(test_base64_roundtrip),
        cmocka_unit_test(test_utf8_cases),
        cmocka_unit_test(test_utf8_exhaustive),
        cmocka_unit_test(test_url_decode),
        cmocka_unit_test(test_header_token),
        cmocka_unit_test(test_loopback),
        cmocka_unit_test(test_redis_url_forms),
        cmocka_unit_test(test_redis_url_errors),
        cmocka_unit_test(test_redis_url_lengths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
