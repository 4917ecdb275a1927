#include "peer.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

static double level(const hd_bucket *b, uint32_t rate, uint64_t now)
{
    if (!b->stamp) return rate;
    double t = b->tokens + (double)(now - b->stamp) * rate / 1000.0;
    return t > rate ? rate : t;
}

int hd_bucket_take(hd_bucket *b, uint32_t rate, uint64_t now, unsigned *retry_s)
{
    double t = level(b, rate, now);
    b->stamp = now ? now : 1;
    if (t >= 1) {
        b->tokens = t - 1;
        return 1;
    }
    b->tokens = t;
    unsigned s = (unsigned)((1 - t) / rate + 0.999);
    *retry_s = s ? s : 1;
    return 0;
}

int hd_bucket_full(const hd_bucket *b, uint32_t rate, uint64_t now) { return level(b, rate, now) >= rate; }

static uint32_t hash(const hd_addr *a, int is_net) { return hd_fnv1a(a->b, sizeof a->b) ^ (uint32_t)is_net; }

static int grow(hd_peers *t)
{
    size_t cap = t->cap ? t->cap * 2 : 64;
    hd_peer **s = calloc(cap, sizeof *s);
    if (!s) return -1;
    for (size_t i = 0; i < t->cap; i++) {
        for (hd_peer *p = t->slots[i], *next; p; p = next) {
            next = p->next;
            size_t j = hash(&p->addr, p->is_net) & (cap - 1);
            p->next = s[j];
            s[j] = p;
        }
    }
    free(t->slots);
    t->slots = s;
    t->cap = cap;
    return 0;
}

/* The entry of a (an address, or a network when is_net), made when
 * missing (*made set then). */
static hd_peer *entry(hd_peers *t, const hd_addr *a, int is_net, int *made)
{
    *made = 0;
    if (t->cap) {
        for (hd_peer *p = t->slots[hash(a, is_net) & (t->cap - 1)]; p; p = p->next)
            if (p->is_net == is_net && hd_addr_eq(&p->addr, a)) return p;
    }
    if (t->count >= t->cap && grow(t)) return NULL;
    hd_peer *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->addr = *a;
    p->is_net = (uint8_t)is_net;
    size_t j = hash(a, is_net) & (t->cap - 1);
    p->next = t->slots[j];
    t->slots[j] = p;
    t->count++;
    *made = 1;
    return p;
}

static void unlink_free(hd_peers *t, hd_peer **pp);

/* Frees p if nothing counts on it: no connection, a full bucket (of rate). */
static void drop_if_idle(hd_peers *t, hd_peer *p, uint32_t rate, uint64_t now)
{
    if (p->conns || (rate && !hd_bucket_full(&p->bucket, rate, now))) return;
    for (hd_peer **pp = &t->slots[hash(&p->addr, p->is_net) & (t->cap - 1)]; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            unlink_free(t, pp);
            return;
        }
    }
}

hd_peer *hd_peer_get(hd_peers *t, const hd_addr *a, const hd_cidr *trusted, size_t ntrusted,
                     unsigned prefix)
{
    int made;
    hd_peer *p = entry(t, a, 0, &made);
    if (!p || !made) return p;
    p->trusted = (uint8_t)hd_cidr_match(trusted, ntrusted, a);
    p->loopback = (uint8_t)hd_addr_loopback(a);
    if (prefix >= 128 || hd_addr_is_v4(a) || p->trusted || p->loopback) return p;
    hd_addr n = *a;
    for (unsigned bit = prefix; bit < 128; bit++) n.b[bit / 8] &= (uint8_t)~(0x80u >> (bit % 8));
    if (!(p->net = entry(t, &n, 1, &made))) {
        drop_if_idle(t, p, 0, 0);
        return NULL;
    }
    return p;
}

void hd_peer_hold(hd_peer *p)
{
    p->conns++;
    if (p->net) p->net->conns++;
}

static void unlink_free(hd_peers *t, hd_peer **pp)
{
    hd_peer *p = *pp;
    *pp = p->next;
    free(p);
    t->count--;
}

void hd_peer_release(hd_peers *t, hd_peer *p, uint32_t rate, uint64_t now)
{
    hd_peer *net = p->net;
    p->conns--;
    drop_if_idle(t, p, net ? 0 : rate, now); /* (an address in a network: the network's bucket counts) */
    if (net) {
        net->conns--;
        drop_if_idle(t, net, rate, now);
    }
}

void hd_peers_sweep(hd_peers *t, uint32_t rate, uint64_t now)
{
    /* (a network's addresses all hold connections, or are gone: an address
     * in a network has no bucket of its own; a network is kept while its
     * bucket refills) */
    for (size_t i = 0; i < t->cap; i++) {
        for (hd_peer **pp = &t->slots[i]; *pp;) {
            hd_peer *p = *pp;
            if (!p->conns && (p->net || !rate || hd_bucket_full(&p->bucket, rate, now))) unlink_free(t, pp);
            else pp = &(*pp)->next;
        }
    }
}

void hd_peers_free(hd_peers *t)
{
    for (size_t i = 0; i < t->cap; i++) {
        while (t->slots[i]) unlink_free(t, &t->slots[i]);
    }
    free(t->slots);
    memset(t, 0, sizeof *t);
}
