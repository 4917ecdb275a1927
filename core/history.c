#include "history.h"
#include "util.h"
#include "log.h"
#include "phx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t hash_of(const char *s, size_t n) { return hd_fnv1a(s, n); }

int hd_history_init(hd_history *h)
{
    memset(h, 0, sizeof *h);
    h->nslots = 64;
    h->slots = calloc(h->nslots, sizeof *h->slots);
    return h->slots ? 0 : -1;
}

static hd_hist_item *item(const hd_stream *s, uint32_t i) { return &s->ring[(s->head + i) % s->cap]; }

static void drop_oldest(hd_history *h, hd_stream *s)
{
    hd_hist_item *it = item(s, 0);
    h->messages--;
    h->bytes -= it->frame->len;
    hd_buf_unref(it->frame);
    s->head = (s->head + 1) % s->cap;
    s->count--;
}

static void stream_free(hd_history *h, hd_stream *s)
{
    while (s->count) drop_oldest(h, s);
    free(s->ring);
    free(s);
    h->count--;
}

void hd_history_free(hd_history *h)
{
    for (size_t i = 0; i < h->nslots; i++) {
        while (h->slots[i]) {
            hd_stream *s = h->slots[i];
            h->slots[i] = s->hnext;
            stream_free(h, s);
        }
    }
    free(h->slots);
    memset(h, 0, sizeof *h);
}

hd_stream *hd_history_find(hd_history *h, const char *topic, size_t tlen)
{
    uint32_t hv = hash_of(topic, tlen);
    for (hd_stream *s = h->slots[hv & (h->nslots - 1)]; s; s = s->hnext)
        if (s->hash == hv && s->len == tlen && memcmp(s->name, topic, tlen) == 0) return s;
    return NULL;
}

static void grow_table(hd_history *h)
{
    size_t n = h->nslots * 2;
    hd_stream **slots = calloc(n, sizeof *slots);
    if (!slots) return; /* longer chains, still correct */
    for (size_t i = 0; i < h->nslots; i++) {
        for (hd_stream *s = h->slots[i], *next; s; s = next) {
            next = s->hnext;
            s->hnext = slots[s->hash & (n - 1)];
            slots[s->hash & (n - 1)] = s;
        }
    }
    free(h->slots);
    h->slots = slots;
    h->nslots = n;
}

hd_stream *hd_history_open(hd_history *h, const char *topic, size_t tlen, const hd_topic_policy *p,
                           uint64_t now)
{
    if (h->off || !p->history_size) return NULL;
    hd_stream *s = hd_history_find(h, topic, tlen);
    if (!s) {
        s = calloc(1, sizeof *s + tlen + 1);
        if (!s) return NULL;
        memcpy(s->name, topic, tlen);
        s->len = (uint32_t)tlen;
        s->hash = hash_of(topic, tlen);
        uint8_t r[8];
        if (uv_random(NULL, NULL, r, sizeof r, 0, NULL) != 0)
            for (int i = 0; i < 8; i++) r[i] = (uint8_t)(rand() >> 3);
        for (int i = 0; i < 8; i++) snprintf(s->epoch + 2 * i, 3, "%02x", r[i]);
        if (h->count >= h->nslots) grow_table(h);
        size_t j = s->hash & (h->nslots - 1);
        s->hnext = h->slots[j];
        h->slots[j] = s;
        h->count++;
    }
    s->used_at = now;
    s->ttl_ms = p->history_ttl_ms;
    return s;
}

/* Makes room for one more item within p's history_size. */
static int make_room(hd_history *h, hd_stream *s, uint32_t size)
{
    while (s->count && s->count >= size) drop_oldest(h, s);
    if (s->count < s->cap) return 0;
    uint32_t cap = s->cap ? s->cap * 2 : 16;
    if (cap > size) cap = size;
    hd_hist_item *ring = malloc(sizeof *ring * cap);
    if (!ring) return -1;
    for (uint32_t i = 0; i < s->count; i++) ring[i] = *item(s, i);
    free(s->ring);
    s->ring = ring;
    s->cap = cap;
    s->head = 0;
    return 0;
}

static void expire(hd_history *h, hd_stream *s, uint64_t now)
{
    while (s->count && now - item(s, 0)->at >= s->ttl_ms) drop_oldest(h, s);
}

hd_buf *hd_history_append(hd_history *h, const char *topic, size_t tlen, const hd_topic_policy *p,
                          hd_buf *frame, uint64_t now)
{
    hd_stream *s = h->off || !p->history_size ? NULL : hd_history_find(h, topic, tlen);
    if (!s) return NULL;
    uint32_t size = p->history_size > HD_HISTORY_MAX ? HD_HISTORY_MAX : p->history_size;
    s->ttl_ms = p->history_ttl_ms;
    s->used_at = now;
    expire(h, s, now);
    hd_buf *f = hd_phx_msg_at(frame, s->top + 1);
    if (!f || make_room(h, s, size)) {
        if (f) hd_buf_unref(f);
        hd_error("out of memory keeping a message in the history of a topic");
        return NULL; /* (delivered without its offset: a recovery past it fails) */
    }
    s->top++;
    hd_hist_item *it = &s->ring[(s->head + s->count) % s->cap];
    it->offset = s->top;
    it->at = now;
    it->frame = hd_buf_ref(f);
    s->count++;
    h->messages++;
    h->bytes += f->len;
    return f;
}

int hd_history_can_recover(const hd_stream *s, const hd_topic_policy *p, const char *epoch,
                           size_t elen, uint64_t since, uint64_t now)
{
    if (elen != strlen(s->epoch) || memcmp(epoch, s->epoch, elen) != 0 || since > s->top) return 0;
    uint64_t missing = s->top - since;
    if (missing == 0) return 1;
    if (missing > p->recover_max) return 0;
    /* The oldest message not expired must be since + 1 or older. */
    for (uint32_t i = 0; i < s->count; i++) {
        const hd_hist_item *it = item(s, i);
        if (now - it->at >= s->ttl_ms) continue;
        return it->offset <= since + 1;
    }
    return 0;
}

size_t hd_history_replay(const hd_stream *s, uint64_t since, hd_conn *c)
{
    size_t n = 0;
    for (uint32_t i = 0; i < s->count; i++) {
        const hd_hist_item *it = item(s, i);
        if (it->offset > since && hd_topics_send(c, it->frame) == 0) n++;
    }
    return n;
}

size_t hd_history_replay_bytes(const hd_stream *s, uint64_t since)
{
    size_t n = 0;
    for (uint32_t i = s->count; i > 0 && item(s, i - 1)->offset > since; i--)
        n += item(s, i - 1)->frame->len;
    return n;
}

void hd_history_sweep(hd_history *h, hd_topics *t, uint64_t now)
{
    for (size_t i = 0; i < h->nslots; i++) {
        for (hd_stream **pp = &h->slots[i]; *pp;) {
            hd_stream *s = *pp;
            expire(h, s, now);
            if (!s->count && now - s->used_at >= s->ttl_ms && !hd_topics_find(t, s->name, s->len)) {
                *pp = s->hnext;
                stream_free(h, s);
            } else {
                pp = &s->hnext;
            }
        }
    }
}
