#include "util.h"
#include "err.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ---- SHA-1 (FIPS 180-1); used only for Sec-WebSocket-Accept ---------- */

#define ROL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = ROL(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) f = (b & c) | (~b & d), k = 0x5A827999;
        else if (i < 40) f = b ^ c ^ d, k = 0x6ED9EBA1;
        else if (i < 60) f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
        else f = b ^ c ^ d, k = 0xCA62C1D6;
        uint32_t t = ROL(a, 5) + f + e + k + w[i];
        e = d, d = c, c = ROL(b, 30), b = a, a = t;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
}

void hd_sha1(const void *data, size_t len, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    const uint8_t *p = data;
    size_t left = len;
    for (; left >= 64; left -= 64, p += 64) sha1_block(h, p);
    uint8_t tail[128] = {0};
    memcpy(tail, p, left);
    tail[left] = 0x80;
    size_t tl = left < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) tail[tl - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha1_block(h, tail);
    if (tl == 128) sha1_block(h, tail + 64);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

/* ---- base64 ----------------------------------------------------------- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t hd_base64_encode(const uint8_t *in, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len) v |= in[i + 2];
        out[o++] = b64[v >> 18];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = i + 1 < len ? b64[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? b64[v & 63] : '=';
    }
    out[o] = 0;
    return o;
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
}

long hd_base64_decode(const char *in, size_t len, uint8_t *out)
{
    while (len > 0 && in[len - 1] == '=') len--;
    if (len % 4 == 1) return -1;
    long o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64val((unsigned char)in[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    return o;
}

/* ---- UTF-8 -------------------------------------------------------------- */

size_t hd_utf8_seq(const uint8_t *p, size_t len)
{
    uint8_t c = p[0];
    if (c < 0x80) return 1;
    size_t n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) n = 1, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) n = 2, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) n = 3, cp = c & 0x07;
    else return 0;
    if (len <= n) return 0;
    for (size_t k = 1; k <= n; k++) {
        if ((p[k] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[k] & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n + 1;
}

int hd_utf8_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = hd_utf8_seq(p + i, len - i);
        if (!n) return 0;
        i += n;
    }
    return 1;
}

const char *hd_json_escape(const uint8_t *p, size_t len, char esc[8], size_t *wl, size_t *step)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t c = p[0];
    *step = 1;
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') return NULL;
    if (c >= 0x80) {
        size_t n = hd_utf8_seq(p, len);
        if (n) {
            *step = n;
            return NULL;
        }
        *wl = 6;
        return "\\ufffd";
    }
    esc[0] = '\\';
    *wl = 2;
    switch (c) {
    case '"': esc[1] = '"'; break;
    case '\\': esc[1] = '\\'; break;
    case '\b': esc[1] = 'b'; break;
    case '\f': esc[1] = 'f'; break;
    case '\n': esc[1] = 'n'; break;
    case '\r': esc[1] = 'r'; break;
    case '\t': esc[1] = 't'; break;
    default:
        memcpy(esc + 1, "u00", 3);
        esc[4] = hex[c >> 4];
        esc[5] = hex[c & 15];
        *wl = 6;
    }
    return esc;
}

/* ---- URL, headers --------------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

size_t hd_url_decode(char *p, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '+') {
            p[o++] = ' ';
        } else if (p[i] == '%' && i + 2 < len && hexval(p[i + 1]) >= 0 && hexval(p[i + 2]) >= 0) {
            p[o++] = (char)(hexval(p[i + 1]) * 16 + hexval(p[i + 2]));
            i += 2;
        } else {
            p[o++] = p[i];
        }
    }
    return o;
}

static char lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + 32) : c; }

int hd_strieq(const char *a, size_t len, const char *b)
{
    size_t n = strlen(b);
    if (n != len) return 0;
    for (size_t i = 0; i < len; i++)
        if (lower(a[i]) != lower(b[i])) return 0;
    return 1;
}

int hd_header_has_token(const char *v, size_t len, const char *token)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t start = i;
        while (i < len && v[i] != ',') i++;
        size_t end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t')) end--;
        if (end > start && hd_strieq(v + start, end - start, token)) return 1;
    }
    return 0;
}

int hd_addr_is_loopback(const char *a)
{
    if (strncmp(a, "::ffff:", 7) == 0) a += 7;
    return strncmp(a, "127.", 4) == 0 || strcmp(a, "::1") == 0;
}

/* ---- SHA-256 (FIPS 180-4) and HMAC ------------------------------------------ */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] +
                      w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

typedef struct {
    uint32_t h[8];
    uint8_t buf[64];
    size_t n;
    uint64_t total;
} sha256_ctx;

static void sha256_init(sha256_ctx *c)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->n = 0;
    c->total = 0;
}

static void sha256_update(sha256_ctx *c, const uint8_t *p, size_t len)
{
    c->total += len;
    while (len > 0) {
        size_t take = 64 - c->n < len ? 64 - c->n : len;
        memcpy(c->buf + c->n, p, take);
        c->n += take, p += take, len -= take;
        if (c->n == 64) {
            sha256_block(c->h, c->buf);
            c->n = 0;
        }
    }
}

static void sha256_final(sha256_ctx *c, uint8_t out[32])
{
    uint64_t bits = c->total * 8;
    uint8_t pad = 0x80;
    sha256_update(c, &pad, 1);
    uint8_t zero = 0;
    while (c->n != 56) sha256_update(c, &zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha256_update(c, len, 8);
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(c->h[i] >> (24 - 8 * j));
}

void hd_sha256(const void *p, size_t len, uint8_t out[32])
{
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, p, len);
    sha256_final(&c, out);
}

void hd_hmac_sha256(const void *key, size_t klen, const void *data, size_t dlen, uint8_t out[32])
{
    uint8_t k[64] = {0}, pad[64], inner[32];
    if (klen > 64) hd_sha256(key, klen, k);
    else if (klen) memcpy(k, key, klen);
    sha256_ctx c;
    for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x36;
    sha256_init(&c);
    sha256_update(&c, pad, 64);
    sha256_update(&c, data, dlen);
    sha256_final(&c, inner);
    for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x5c;
    sha256_init(&c);
    sha256_update(&c, pad, 64);
    sha256_update(&c, inner, 32);
    sha256_final(&c, out);
}

int hd_ct_equal(const void *a, size_t al, const void *b, size_t bl)
{
    const uint8_t *x = a, *y = b;
    uint8_t d = (uint8_t)(al != bl);
    size_t n = al < bl ? al : bl;
    for (size_t i = 0; i < n; i++) d |= (uint8_t)(x[i] ^ y[i]);
    return d == 0;
}

int hd_glob_match(const char *p, const char *s, size_t len)
{
    /* Iterative '*' matching with one backtrack point. */
    size_t i = 0, star_s = 0;
    const char *star_p = NULL;
    while (i < len) {
        if (*p == '*') {
            star_p = ++p;
            star_s = i;
        } else if (*p && *p == s[i]) {
            p++;
            i++;
        } else if (star_p) {
            p = star_p;
            i = ++star_s;
        } else {
            return 0;
        }
    }
    while (*p == '*') p++;
    return *p == 0;
}

int hd_query_next(const char **q, const char *end, hd_query_pair *p)
{
    const char *s = *q;
    if (!s || s >= end) return 0;
    const char *amp = memchr(s, '&', (size_t)(end - s));
    const char *pe = amp ? amp : end;
    const char *eq = memchr(s, '=', (size_t)(pe - s));
    p->k = s;
    p->kl = (size_t)((eq ? eq : pe) - s);
    p->v = eq ? eq + 1 : pe;
    p->vl = eq ? (size_t)(pe - eq - 1) : 0;
    *q = amp ? amp + 1 : NULL;
    return 1;
}

/* ---- Redis URLs (cluster.redis) ------------------------------------------- */

static int url_fail(hd_redis_url *out, char *err, size_t errlen, const char *fmt, ...)
{
    /* Nothing half-parsed (a password) is left behind. */
    memset(out, 0, sizeof *out);
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return HD_ECONFIG;
}

/* Decodes the %XX escapes of [p, p+n) into dst (HD_REDIS_URL_MAX + 1
 * bytes). Returns the decoded length, -1 on a malformed escape or a NUL,
 * -2 when it would not fit. */
static long url_userinfo(const char *p, size_t n, char *dst)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '%') {
            if (i + 2 >= n) return -1;
            int hi = hexval(p[i + 1]), lo = hexval(p[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            c = (char)(hi * 16 + lo);
            if (!c) return -1;
            i += 2;
        }
        if (o == HD_REDIS_URL_MAX) return -2;
        dst[o++] = c;
    }
    dst[o] = 0;
    return (long)o;
}

/* Reads the decimal number [p, p+n) into *v (capped, so that a long run of
 * digits is out of range rather than wrapped). Returns -1 when empty or not
 * all digits. */
static int url_number(const char *p, size_t n, long *v)
{
    if (!n) return -1;
    *v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        if (*v < 1000000) *v = *v * 10 + (p[i] - '0');
    }
    return 0;
}

static int host_char(char c, int bracketed)
{
    if (bracketed) return hexval(c) >= 0 || c == ':' || c == '.';
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '-' || c == '_';
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '-' || c == '_';
}

const char *hd_authority_parse(const char *p, size_t n, hd_authority *a)
{
    const char *end = p + n;
    memset(a, 0, sizeof *a);
    if (p < end && *p == '[') {
        const char *rb = memchr(p, ']', n);
        char tmp[64];
        unsigned char a6[16];
        size_t len = rb ? (size_t)(rb - p - 1) : 0;
        if (!rb || !len || len >= sizeof tmp) return "bad IPv6 address";
        memcpy(tmp, p + 1, len);
        tmp[len] = 0;
        if (inet_pton(AF_INET6, tmp, a6) != 1) return "bad IPv6 address";
        a->host = p + 1;
        a->host_len = len;
        a->v6 = 1;
        p = rb + 1;
    } else {
        a->host = p;
        while (p < end && *p != ':') {
            if (!name_char(*p)) return "bad character in the host";
            p++;
        }
        a->host_len = (size_t)(p - a->host);
        if (!a->host_len) return "no host";
        if (a->host_len > 253) return "host over 253 bytes";
    }
    if (p == end) return NULL;
    if (*p != ':') return "bad host";
    unsigned long port = 0;
    const char *d = ++p;
    while (p < end && *p >= '0' && *p <= '9' && p - d < 6) port = port * 10 + (unsigned long)(*p++ - '0');
    if (p == d || p != end || port < 1 || port > 65535) return "bad port";
    a->port = (unsigned)port;
    return NULL;
}

int hd_redis_url_parse(const char *url, hd_redis_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url) return url_fail(out, err, errlen, "no URL");
    for (const char *q = url; *q; q++)
        if ((unsigned char)*q <= ' ' || *q == 0x7f)
            return url_fail(out, err, errlen, "spaces and control characters are not allowed");
    const char *sep = strstr(url, "://");
    if (!sep) return url_fail(out, err, errlen, "expected redis://host[:port][/db]");
    if (!hd_strieq(url, (size_t)(sep - url), "redis")) {
        if (hd_strieq(url, (size_t)(sep - url), "rediss"))
            return url_fail(out, err, errlen, "rediss:// (TLS) is not supported, only redis://");
        return url_fail(out, err, errlen, "only the redis:// scheme is supported");
    }
    const char *p = sep + 3;

    /* user:password@ ends at the last '@': the rest has none. */
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (at == p) return url_fail(out, err, errlen, "'@' without user:password before it");
        if (!colon)
            return url_fail(out, err, errlen,
                            "a user without a password (expected user:password@ or :password@)");
        long n = url_userinfo(p, (size_t)(colon - p), out->user);
        if (n == -2)
            return url_fail(out, err, errlen, "user is longer than %d bytes", HD_REDIS_URL_MAX);
        if (n < 0) return url_fail(out, err, errlen, "bad %%-escape in the user");
        n = url_userinfo(colon + 1, (size_t)(at - colon - 1), out->password);
        if (n == -2)
            return url_fail(out, err, errlen, "password is longer than %d bytes", HD_REDIS_URL_MAX);
        if (n < 0) return url_fail(out, err, errlen, "bad %%-escape in the password");
        if (n == 0) return url_fail(out, err, errlen, "empty password");
        p = at + 1;
    }

    if (strchr(p, '?')) return url_fail(out, err, errlen, "query strings are not supported");
    if (strchr(p, '#')) return url_fail(out, err, errlen, "fragments are not supported");

    /* host, or [IPv6] */
    const char *h = p, *he;
    int bracketed = *p == '[';
    if (bracketed) {
        h = p + 1;
        he = strchr(h, ']');
        if (!he) return url_fail(out, err, errlen, "IPv6 host without its closing ']'");
        p = he + 1;
    } else {
        he = h + strcspn(h, ":/");
        p = he;
    }
    if (he == h) return url_fail(out, err, errlen, "host is required");
    for (const char *q = h; q < he; q++) {
        if (host_char(*q, bracketed)) continue;
        if ((unsigned char)*q >= 0x80) /* keep the reason ASCII: it goes to logs */
            return url_fail(out, err, errlen, "bad character (byte 0x%02X) in the host",
                            (unsigned char)*q);
        return url_fail(out, err, errlen, "bad character '%c' in the host", *q);
    }
    if (he - h > HD_REDIS_URL_MAX)
        return url_fail(out, err, errlen, "host is longer than %d bytes", HD_REDIS_URL_MAX);
    memcpy(out->host, h, (size_t)(he - h));
    out->host[he - h] = 0;

    long v;
    if (*p == ':') {
        const char *pe = p + 1 + strcspn(p + 1, "/");
        if (pe == p + 1) return url_fail(out, err, errlen, "empty port");
        if (url_number(p + 1, (size_t)(pe - p - 1), &v))
            return url_fail(out, err, errlen, "port is not a number");
        if (v < 1 || v > 65535) return url_fail(out, err, errlen, "port out of range (1-65535)");
        out->port = (int)v;
        p = pe;
    }
    if (*p == '/') {
        p++;
        size_t n = strlen(p);
        if (n) {
            if (url_number(p, n, &v)) return url_fail(out, err, errlen, "db is not a number");
            if (v > 15) return url_fail(out, err, errlen, "db out of range (0-15)");
            out->db = (int)v;
        }
        p += n;
    }
    if ((unsigned char)*p >= 0x80)
        return url_fail(out, err, errlen, "unexpected byte 0x%02X after the host", (unsigned char)*p);
    if (*p) return url_fail(out, err, errlen, "unexpected '%c' after the host", *p);
    return 0;
}

int hd_origin_match(const char *allowed, const char *origin, size_t len)
{
    if (allowed[0] != '*') return hd_strieq(origin, len, allowed);
    /* "*.domain": the host part is "<label>...<.domain>". */
    const char *sep = memchr(origin, ':', len);
    if (!sep || (size_t)(origin + len - sep) < 4 || sep[1] != '/' || sep[2] != '/') return 0;
    const char *host = sep + 3, *end = origin + len;
    const char *colon = memchr(host, ':', (size_t)(end - host));
    if (colon) end = colon;
    size_t hl = (size_t)(end - host), dl = strlen(allowed) - 1; /* ".domain" */
    return hl > dl && hd_strieq(host + hl - dl, dl, allowed + 1) && host[hl - dl - 1] != '.';
}
