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

static uint32_t hash(const hd_addr *a) { return hd_fnv1a(a->b, sizeof a->b); }

static int grow(hd_peers *t)
{
    size_t cap = t->cap ? t->cap * 2 : 64;
    hd_peer **s = calloc(cap, sizeof *s);
    if (!s) return -1;
    for (size_t i = 0; i < t->cap; i++) {
        for (hd_peer *p = t->slots[i], *next; p; p = next) {
            next = p->next;
            size_t j = hash(&p->addr) & (cap - 1);
            p->next = s[j];
            s[j] = p;
        }
    }
    free(t->slots);
    t->slots = s;
    t->cap = cap;
    return 0;
}

hd_peer *hd_peer_get(hd_peers *t, const hd_addr *a, const hd_cidr *trusted, size_t ntrusted)
{
    if (t->cap) {
        for (hd_peer *p = t->slots[hash(a) & (t->cap - 1)]; p; p = p->next)
            if (hd_addr_eq(&p->addr, a)) return p;
    }
    if (t->count >= t->cap && grow(t)) return NULL;
    hd_peer *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->addr = *a;
    p->trusted = (uint8_t)hd_cidr_match(trusted, ntrusted, a);
    p->loopback = (uint8_t)hd_addr_loopback(a);
    size_t j = hash(a) & (t->cap - 1);
    p->next = t->slots[j];
    t->slots[j] = p;
    t->count++;
    return p;
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
    if (--p->conns || (rate && !hd_bucket_full(&p->bucket, rate, now))) return;
    for (hd_peer **pp = &t->slots[hash(&p->addr) & (t->cap - 1)]; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            unlink_free(t, pp);
            return;
        }
    }
}

void hd_peers_sweep(hd_peers *t, uint32_t rate, uint64_t now)
{
    for (size_t i = 0; i < t->cap; i++) {
        for (hd_peer **pp = &t->slots[i]; *pp;) {
            if (!(*pp)->conns && (!rate || hd_bucket_full(&(*pp)->bucket, rate, now))) unlink_free(t, pp);
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
