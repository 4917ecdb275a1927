/* Client addresses as the transport counts them: one entry per address
 * with the connections attributed to it and its connect-rate bucket, in a
 * hash table that holds only addresses with a connection or a bucket not
 * yet refilled. And the token bucket itself, also used for the node's own
 * connect rate. */
#ifndef HD_PEER_H
#define HD_PEER_H

#include "addr.h"

#include <stddef.h>
#include <stdint.h>

/* A token bucket: rate tokens a second, up to rate (a second's worth);
 * refilled lazily. */
typedef struct hd_bucket {
    double tokens;
    uint64_t stamp;              /* loop time (ms) of the last refill; 0: never used (full) */
} hd_bucket;

/* Takes a token at loop time now. Returns 1, or 0 with *retry_s the
 * seconds until one is there (at least 1). */
int hd_bucket_take(hd_bucket *b, uint32_t rate, uint64_t now, unsigned *retry_s);
/* 1 when b would be full at now (nothing to remember). */
int hd_bucket_full(const hd_bucket *b, uint32_t rate, uint64_t now);

typedef struct hd_peer {
    struct hd_peer *next;        /* the table's chain */
    hd_addr addr;
    uint32_t conns;              /* connections attributed to it */
    uint8_t trusted;             /* in listen.trusted_proxies */
    uint8_t loopback;
    uint8_t is_net;              /* the entry of an IPv6 network (limits.ipv6_prefix) */
    hd_bucket bucket;            /* limits.connect_rate_per_ip */
    struct hd_peer *net;         /* an IPv6 address's network, which the limits count; or NULL */
} hd_peer;

typedef struct hd_peers {
    hd_peer **slots;             /* chained; a power of two (0 before the first) */
    size_t cap, count;
} hd_peers;

/* The entry of a, created (with conns 0) when missing; NULL without
 * memory. trusted is set from the ranges when created. An IPv6 address
 * (not IPv4-mapped) is counted with its network too, its first prefix
 * bits (limits.ipv6_prefix; 128: the address alone): one client may hold
 * a whole /64. */
hd_peer *hd_peer_get(hd_peers *t, const hd_addr *a, const hd_cidr *trusted, size_t ntrusted,
                     unsigned prefix);
/* What the per-address limits count for p: its network, or p. */
static inline hd_peer *hd_peer_limited(hd_peer *p) { return p->net ? p->net : p; }
/* Counts one more connection of p (and of its network). */
void hd_peer_hold(hd_peer *p);
/* Drops one connection of p; frees p once it has none and its bucket
 * (of rate) is full, else leaves it for hd_peers_sweep (its network
 * likewise). */
void hd_peer_release(hd_peers *t, hd_peer *p, uint32_t rate, uint64_t now);
/* Frees entries with no connection whose bucket has refilled. */
void hd_peers_sweep(hd_peers *t, uint32_t rate, uint64_t now);
void hd_peers_free(hd_peers *t);

#endif
