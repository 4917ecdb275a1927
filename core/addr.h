/* Client addresses: one 16-byte form for IPv4 and IPv6, address ranges
 * (listen.trusted_proxies), and the two ways a trusted proxy names the
 * client it forwards: X-Forwarded-For and the PROXY protocol (v1 text,
 * v2 binary). Pure functions of their input, fuzzed. */
#ifndef HD_ADDR_H
#define HD_ADDR_H

#include <stddef.h>
#include <stdint.h>

struct sockaddr;

/* An IPv6 address; IPv4 as IPv4-mapped (::ffff:a.b.c.d). */
typedef struct hd_addr {
    uint8_t b[16];
} hd_addr;

/* A range: the first bits of net (IPv4 ranges count from bit 96). */
typedef struct hd_cidr {
    hd_addr net;
    uint8_t bits;                /* 0..128 */
} hd_cidr;

/* Fills a from an AF_INET or AF_INET6 socket address; 0, or -1 (other). */
int hd_addr_from_sockaddr(hd_addr *a, const struct sockaddr *sa);
/* Parses a numeric address ("192.0.2.1", "2001:db8::1", "::ffff:1.2.3.4")
 * of len bytes. Returns 0 or -1. */
int hd_addr_parse(hd_addr *a, const char *s, size_t len);
/* Writes a as text (IPv4-mapped as a dotted quad); buf of at least 46. */
void hd_addr_format(const hd_addr *a, char *buf, size_t len);
int hd_addr_is_v4(const hd_addr *a);
int hd_addr_loopback(const hd_addr *a);
static inline int hd_addr_eq(const hd_addr *a, const hd_addr *b)
{
    const uint64_t *x = (const uint64_t *)(const void *)a->b, *y = (const uint64_t *)(const void *)b->b;
    return x[0] == y[0] && x[1] == y[1];
}

/* Parses "addr" or "addr/bits" (IPv4 bits 0..32, IPv6 0..128). Returns 0
 * or -1. */
int hd_cidr_parse(hd_cidr *c, const char *s);
/* 1 when a is in one of the n ranges. */
int hd_cidr_match(const hd_cidr *c, size_t n, const hd_addr *a);

/* The client an X-Forwarded-For value names, as seen through trusted
 * proxies: the entries are read from the right (the one the nearest proxy
 * added) and trusted ones skipped; the first untrusted entry is the
 * client. An entry may carry a port ("192.0.2.1:80", "[2001:db8::1]:80").
 * Returns 1 with *out set, or 0 when the value names no usable client
 * (empty, malformed, or only trusted addresses): the peer is then the
 * proxy itself. */
int hd_xff_client(const char *v, size_t len, const hd_cidr *trusted, size_t ntrusted, hd_addr *out);

/* The PROXY protocol preface at the start of a connection. */
enum {
    HD_PROXY_NONE = 0,           /* the bytes do not start a PROXY header */
    HD_PROXY_MORE = 1,           /* a header so far: more bytes needed */
    HD_PROXY_OK = 2,             /* complete: *used bytes; *has_client tells whether it names one */
    HD_PROXY_BAD = -1,           /* a malformed header */
};
/* The longest header accepted (v1 is at most 107 bytes; v2's TLVs are
 * skipped up to this). */
#define HD_PROXY_MAX 536
/* Reads a v1 ("PROXY TCP4 ...\r\n") or v2 header from p[0..len). A LOCAL
 * (v2) or UNKNOWN (v1) header, or one of another family, names no
 * client. */
int hd_proxy_parse(const uint8_t *p, size_t len, hd_addr *client, int *has_client, size_t *used);

#endif
