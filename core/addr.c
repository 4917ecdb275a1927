#include "addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static const uint8_t v4_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static void set_v4(hd_addr *a, const void *four)
{
    memcpy(a->b, v4_prefix, 12);
    memcpy(a->b + 12, four, 4);
}

int hd_addr_from_sockaddr(hd_addr *a, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        set_v4(a, &((const struct sockaddr_in *)(const void *)sa)->sin_addr);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(a->b, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        return 0;
    }
    return -1;
}

int hd_addr_parse(hd_addr *a, const char *s, size_t len)
{
    char buf[INET6_ADDRSTRLEN + 1];
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, s, len);
    buf[len] = 0;
    uint8_t four[4];
    if (inet_pton(AF_INET, buf, four) == 1) {
        set_v4(a, four);
        return 0;
    }
    return inet_pton(AF_INET6, buf, a->b) == 1 ? 0 : -1;
}

int hd_addr_is_v4(const hd_addr *a) { return memcmp(a->b, v4_prefix, 12) == 0; }

void hd_addr_format(const hd_addr *a, char *buf, size_t len)
{
    if (!inet_ntop(hd_addr_is_v4(a) ? AF_INET : AF_INET6, hd_addr_is_v4(a) ? a->b + 12 : a->b, buf,
                   (socklen_t)len))
        snprintf(buf, len, "?");
}

int hd_addr_loopback(const hd_addr *a)
{
    static const uint8_t one[16] = {[15] = 1};
    return hd_addr_is_v4(a) ? a->b[12] == 127 : memcmp(a->b, one, 16) == 0;
}

int hd_cidr_parse(hd_cidr *c, const char *s)
{
    const char *slash = strchr(s, '/');
    size_t alen = slash ? (size_t)(slash - s) : strlen(s);
    if (hd_addr_parse(&c->net, s, alen)) return -1;
    int v4 = hd_addr_is_v4(&c->net), max = v4 ? 32 : 128;
    int bits = max;
    if (slash) {
        const char *d = slash + 1;
        if (!*d || strlen(d) > 3) return -1;
        bits = 0;
        for (; *d; d++) {
            if (*d < '0' || *d > '9') return -1;
            bits = bits * 10 + (*d - '0');
        }
        if (bits > max) return -1;
    }
    c->bits = (uint8_t)(v4 ? bits + 96 : bits);
    /* The bits past the prefix are cleared, so "10.1.2.3/8" is 10.0.0.0/8. */
    for (int i = c->bits; i < 128; i++) c->net.b[i / 8] &= (uint8_t)~(0x80 >> (i % 8));
    return 0;
}

static int in_range(const hd_cidr *c, const hd_addr *a)
{
    int full = c->bits / 8, rest = c->bits % 8;
    if (memcmp(c->net.b, a->b, (size_t)full) != 0) return 0;
    if (!rest) return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (c->net.b[full] & mask) == (a->b[full] & mask);
}

int hd_cidr_match(const hd_cidr *c, size_t n, const hd_addr *a)
{
    for (size_t i = 0; i < n; i++)
        if (in_range(&c[i], a)) return 1;
    return 0;
}

/* One X-Forwarded-For entry, spaces trimmed: "a.b.c.d", "a.b.c.d:port",
 * "v6", "[v6]" or "[v6]:port". */
static int xff_entry(const char *s, size_t len, hd_addr *out)
{
    while (len && (*s == ' ' || *s == '\t')) s++, len--;
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t')) len--;
    if (len && *s == '[') {
        const char *close = memchr(s, ']', len);
        if (!close) return -1;
        return hd_addr_parse(out, s + 1, (size_t)(close - s - 1));
    }
    const char *colon = memchr(s, ':', len);
    if (colon && !memchr(colon + 1, ':', len - (size_t)(colon + 1 - s)))
        len = (size_t)(colon - s); /* one colon: IPv4 with a port */
    return hd_addr_parse(out, s, len);
}

int hd_xff_client(const char *v, size_t len, const hd_cidr *trusted, size_t ntrusted, hd_addr *out)
{
    size_t end = len;
    for (int n = 0; n < 64 && end > 0; n++) {
        size_t start = end;
        while (start > 0 && v[start - 1] != ',') start--;
        hd_addr a;
        if (xff_entry(v + start, end - start, &a)) return 0;
        if (!hd_cidr_match(trusted, ntrusted, &a)) {
            *out = a;
            return 1;
        }
        end = start ? start - 1 : 0;
    }
    return 0;
}

/* ---- the PROXY protocol ---------------------------------------------------------- */

static const uint8_t v2_sig[12] = {'\r', '\n', '\r', '\n', 0, '\r', '\n', 'Q', 'U', 'I', 'T', '\n'};

/* "PROXY TCP4 src dst sport dport\r\n" (or TCP6, or UNKNOWN ...). */
static int parse_v1(const uint8_t *p, size_t len, hd_addr *client, int *has_client, size_t *used)
{
    size_t max = len < 107 ? len : 107;
    const uint8_t *nl = memchr(p, '\n', max);
    if (!nl) return len >= 107 ? HD_PROXY_BAD : HD_PROXY_MORE;
    size_t n = (size_t)(nl - p);
    if (n < 7 || p[n - 1] != '\r') return HD_PROXY_BAD;
    char line[108];
    memcpy(line, p, n - 1);
    line[n - 1] = 0;
    *used = n + 1;
    *has_client = 0;
    if (strncmp(line, "PROXY UNKNOWN", 13) == 0) return HD_PROXY_OK;
    char fam[8], src[48], dst[48];
    unsigned sport, dport;
    char extra;
    if (sscanf(line, "PROXY %7s %47s %47s %u %u%c", fam, src, dst, &sport, &dport, &extra) != 5 ||
        sport > 65535 || dport > 65535)
        return HD_PROXY_BAD;
    int v4 = strcmp(fam, "TCP4") == 0;
    if (!v4 && strcmp(fam, "TCP6") != 0) return HD_PROXY_BAD;
    hd_addr d;
    if (hd_addr_parse(client, src, strlen(src)) || hd_addr_parse(&d, dst, strlen(dst)) ||
        hd_addr_is_v4(client) != v4 || hd_addr_is_v4(&d) != v4)
        return HD_PROXY_BAD;
    *has_client = 1;
    return HD_PROXY_OK;
}

static int parse_v2(const uint8_t *p, size_t len, hd_addr *client, int *has_client, size_t *used)
{
    if (len < 16) return HD_PROXY_MORE;
    uint8_t ver = p[12] >> 4, cmd = p[12] & 0xf, fam = p[13];
    size_t body = (size_t)p[14] << 8 | p[15];
    if (ver != 2 || cmd > 1 || 16 + body > HD_PROXY_MAX) return HD_PROXY_BAD;
    if (len < 16 + body) return HD_PROXY_MORE;
    *used = 16 + body;
    *has_client = 0;
    if (cmd == 0) return HD_PROXY_OK; /* LOCAL: the proxy's own connection */
    if (fam == 0x11 || fam == 0x12) {
        if (body < 12) return HD_PROXY_BAD;
        set_v4(client, p + 16);
        *has_client = 1;
    } else if (fam == 0x21 || fam == 0x22) {
        if (body < 36) return HD_PROXY_BAD;
        memcpy(client->b, p + 16, 16);
        *has_client = 1;
    } else if (fam != 0x00 && fam != 0x31 && fam != 0x32) {
        return HD_PROXY_BAD;
    }
    return HD_PROXY_OK; /* UNSPEC or a Unix socket: no client address */
}

int hd_proxy_parse(const uint8_t *p, size_t len, hd_addr *client, int *has_client, size_t *used)
{
    static const char v1_sig[] = "PROXY ";
    size_t k = len < 12 ? len : 12;
    if (memcmp(p, v2_sig, k) == 0) return len < 12 ? HD_PROXY_MORE : parse_v2(p, len, client, has_client, used);
    k = len < 6 ? len : 6;
    if (k && memcmp(p, v1_sig, k) == 0) return len < 6 ? HD_PROXY_MORE : parse_v1(p, len, client, has_client, used);
    return HD_PROXY_NONE;
}
