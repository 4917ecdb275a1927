/* Small pure helpers: SHA-1 (for the WebSocket accept key), base64,
 * UTF-8 validation, URL decoding and header-token matching. None of them
 * allocate unless stated; all are safe on any input bytes. */
#ifndef HD_UTIL_H
#define HD_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* out receives the 20-byte SHA-1 digest of len bytes at p. */
void hd_sha1(const void *p, size_t len, uint8_t out[20]);

/* Writes the padded standard base64 of len bytes into out (which must hold
 * 4*((len+2)/3)+1 bytes) and NUL-terminates it. Returns the length. */
size_t hd_base64_encode(const uint8_t *in, size_t len, char *out);
/* Decodes standard or URL-safe base64, with or without padding, into out
 * (at least 3*len/4+3 bytes). Returns the decoded length, or -1 on a
 * character outside the alphabet or a malformed tail. */
long hd_base64_decode(const char *in, size_t len, uint8_t *out);

/* Returns 1 when len bytes at p are well-formed UTF-8 (no overlongs, no
 * surrogates, nothing above U+10FFFF), else 0. */
int hd_utf8_valid(const uint8_t *p, size_t len);
/* The JSON string form of the character at p (len > 0 bytes left): NULL
 * when it goes as it is (*step bytes: printable ASCII, or a well-formed
 * UTF-8 sequence), else its escape, *wl bytes (in esc, or static), for
 * *step bytes of input: \" \\ \b \f \n \r \t, \u00XX for the other
 * control characters and DEL, \ufffd for a byte that is not UTF-8. */
const char *hd_json_escape(const uint8_t *p, size_t len, char esc[8], size_t *wl, size_t *step);
/* The length (1-4) of the well-formed UTF-8 character at p (len > 0), or 0
 * when the bytes there are not one. */
size_t hd_utf8_seq(const uint8_t *p, size_t len);

/* Decodes %XX escapes and '+' (as space) in place; returns the new length.
 * A malformed escape is kept literally. */
size_t hd_url_decode(char *p, size_t len);

/* Returns 1 if the comma-separated header value contains token (ASCII
 * case-insensitive, surrounding blanks ignored), else 0. */
int hd_header_has_token(const char *value, size_t len, const char *token);

/* Case-insensitive equality of len bytes at a with NUL-terminated b. */
int hd_strieq(const char *a, size_t len, const char *b);
/* FNV-1a (32 bits) of n bytes: the hash of every table in the core. */
static inline uint32_t hd_fnv1a(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 16777619u;
    return h;
}

/* Returns 1 if the address string is IPv4 127.0.0.0/8, ::1 or
 * ::ffff:127.x.x.x. */
int hd_addr_is_loopback(const char *addr);



/* SHA-256 of len bytes at p into out. */
void hd_sha256(const void *p, size_t len, uint8_t out[32]);
/* HMAC-SHA256 (RFC 2104) of data under key into out. */
void hd_hmac_sha256(const void *key, size_t klen, const void *data, size_t dlen, uint8_t out[32]);
/* Constant-time equality of two byte strings (time depends only on the
 * lengths). */
int hd_ct_equal(const void *a, size_t al, const void *b, size_t bl);
/* Returns 1 when len bytes at s match the NUL-terminated glob pattern,
 * where '*' matches any run of bytes (also none) and every other byte
 * itself. */
int hd_glob_match(const char *pattern, const char *s, size_t len);

/* Returns 1 when the Origin header value (len bytes) matches the allowed
 * origin or pattern (lower-case, as the config keeps them):
 * "scheme://host[:port]" exactly (ASCII case-insensitive), or "*.domain":
 * a host that is a subdomain of domain, any scheme, any port. */
int hd_origin_match(const char *allowed, const char *origin, size_t len);

/* One key=value pair of a query string, both still URL-encoded. */
typedef struct hd_query_pair {
    const char *k, *v;
    size_t kl, vl; /* vl is 0 for a bare key */
} hd_query_pair;
/* Splits the next pair off the query string [*q, end) (q may be NULL: no
 * query) and advances *q. Returns 0 when no pair is left. */
int hd_query_next(const char **q, const char *end, hd_query_pair *p);

/* A Redis server address (cluster.redis). Strings are NUL-terminated. */
#define HD_REDIS_URL_MAX 255 /* longest host, user or password, in bytes */
typedef struct hd_redis_url {
    char host[HD_REDIS_URL_MAX + 1];     /* a name or an IP; IPv6 without its brackets */
    int port;                            /* 1-65535; 6379 when the URL has none */
    char password[HD_REDIS_URL_MAX + 1]; /* "" when none */
    char user[HD_REDIS_URL_MAX + 1];     /* "" when none (then AUTH password alone) */
    int db;                              /* 0-15; 0 when the URL has none */
} hd_redis_url;
/* The authority of a URL: host[:port] or [IPv6][:port]. */
typedef struct hd_authority {
    const char *host;            /* into the input, without brackets */
    size_t host_len;             /* at most 253 (a DNS name) */
    int v6;                      /* host is an IPv6 address (bracketed) */
    unsigned port;               /* 1..65535, or 0 when none was given */
} hd_authority;

/* Parses [p, p+n) as an authority (no user info: the caller refuses '@').
 * Host names are letters, digits, '-', '.', '_'. Returns NULL, or the
 * reason it is not one: "no host", "bad IPv6 address", "bad character in
 * the host", "host over 253 bytes", "bad host", "bad port". */
const char *hd_authority_parse(const char *p, size_t n, hd_authority *a);

/* Parses url, one of
 *   redis://host   redis://host:port   redis://[::1]:port
 *   redis://:password@host:port/db   redis://user:password@host:port/db
 * (the scheme in any case; port 1-65535; db 0-15; "redis://host/" is db 0).
 * User and password may hold any bytes but NUL: %XX escapes in them are
 * decoded, and the last '@' ends them (so a raw '@', ':', '/', '?' or '#'
 * in a password works too; a space must be %20). The host is letters,
 * digits, '.', '-' and '_', or an IPv6 address in brackets. Refused:
 * another scheme (rediss://: no TLS), a missing host, a user without a
 * password, an empty password, a query string or fragment, spaces and
 * control characters, and a host, user or password over HD_REDIS_URL_MAX
 * bytes (refused, never truncated).
 * Returns 0 and fills *out, or HD_ECONFIG with *out zeroed and a reason
 * that never repeats the URL (it may hold a password) written to err
 * (errlen bytes, may be 0). */
int hd_redis_url_parse(const char *url, hd_redis_url *out, char *err, size_t errlen);
#endif
