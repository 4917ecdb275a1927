#include "topic.h"
#include "util.h"
#include "err.h"
#include "log.h"
#include "phx.h"
#include "ws.h"

#include <stdlib.h>
#include <string.h>

static uint32_t hash(const char *p, size_t len) { return hd_fnv1a(p, len); }

int hd_topics_init(hd_topics *t)
{
    memset(t, 0, sizeof *t);
    t->nslots = 1024;
    t->count = 0;
    t->slots = calloc(t->nslots, sizeof *t->slots);
    return t->slots ? 0 : HD_ENOMEM;
}

void hd_topics_free(hd_topics *t)
{
    free(t->slots);
    t->slots = NULL;
    t->nslots = t->count = 0;
}

static void grow(hd_topics *t)
{
    size_t n = t->nslots * 2;
    hd_topic **s = calloc(n, sizeof *s);
    if (!s) return; /* keep the longer chains; still correct */
    for (size_t i = 0; i < t->nslots; i++) {
        hd_topic *tp = t->slots[i];
        while (tp) {
            hd_topic *next = tp->hnext;
            tp->hnext = s[tp->hash & (n - 1)];
            s[tp->hash & (n - 1)] = tp;
            tp = next;
        }
    }
    free(t->slots);
    t->slots = s;
    t->nslots = n;
}

hd_topic *hd_topics_find(hd_topics *t, const char *name, size_t len)
{
    uint32_t h = hash(name, len);
    for (hd_topic *tp = t->slots[h & (t->nslots - 1)]; tp; tp = tp->hnext)
        if (tp->hash == h && tp->len == len && memcmp(tp->name, name, len) == 0) return tp;
    return NULL;
}

hd_sub *hd_topics_subscribe(hd_topics *t, const char *name, size_t len, hd_conn *conn,
                            const char *join_ref)
{
    size_t rl = join_ref ? strlen(join_ref) + 1 : 0;
    /* Sized to the ref, not to sizeof's tail padding: most refs are short. */
    hd_sub *s = calloc(1, offsetof(hd_sub, ref) + rl);
    if (!s) return NULL;
    if (join_ref) {
        memcpy(s->ref, join_ref, rl);
        s->has_ref = 1;
    }
    hd_topic *tp = hd_topics_find(t, name, len);
    if (!tp) {
        tp = malloc(sizeof *tp + len + 1);
        if (!tp) goto err;
        tp->hash = hash(name, len);
        tp->len = (uint32_t)len;
        tp->nsubs = 0;
        tp->subs = NULL;
        tp->policy_gen = 0; /* generations start at 1: the first use asks */
        tp->id = ++t->next_id;
        if (!tp->id) tp->id = ++t->next_id; /* (0: no topic, in a queue) */
        tp->diff = NULL;
        tp->pres_loading = 0;
        tp->pres = NULL;
        memcpy(tp->name, name, len);
        tp->name[len] = 0;
        if (t->count >= t->nslots) grow(t);
        size_t i = tp->hash & (t->nslots - 1);
        tp->hnext = t->slots[i];
        t->slots[i] = tp;
        t->count++;
        if (t->on_create) t->on_create(t->on_free_data, tp);
    }
    s->topic = tp;
    s->conn = conn;
    s->tnext = tp->subs;
    if (tp->subs) tp->subs->tprev = s;
    tp->subs = s;
    tp->nsubs++;
    if (conn) {
        s->cnext = conn->subs;
        conn->subs = s;
        conn->nsubs++;
    }
    return s;
err:
    free(s);
    return NULL;
}

void hd_topics_unsubscribe(hd_topics *t, hd_sub *s)
{
    if (s->conn) {
        for (hd_sub **pp = &s->conn->subs; *pp; pp = &(*pp)->cnext)
            if (*pp == s) {
                *pp = s->cnext;
                s->conn->nsubs--;
                break;
            }
    }
    hd_topic *tp = s->topic;
    if (s->tprev) s->tprev->tnext = s->tnext;
    else tp->subs = s->tnext;
    if (s->tnext) s->tnext->tprev = s->tprev;
    free(s);
    if (--tp->nsubs > 0) return;
    hd_topic **pp = &t->slots[tp->hash & (t->nslots - 1)];
    while (*pp != tp) pp = &(*pp)->hnext;
    *pp = tp->hnext;
    t->count--;
    if (t->on_free) t->on_free(t->on_free_data, tp);
    free(tp);
}

hd_sub *hd_topics_sub_of(const hd_conn *c, const char *name, size_t len)
{
    for (hd_sub *s = c->subs; s; s = s->cnext)
        if (s->topic->len == len && memcmp(s->topic->name, name, len) == 0) return s;
    return NULL;
}

const hd_topic_policy *hd_topic_policy_of(hd_topics *t, hd_topic *tp)
{
    uint64_t gen = t->pol ? t->pol->gen : 1;
    if (tp->policy_gen != (uint32_t)gen) {
        if (t->pol) hd_policy_for(t->pol, tp->name, tp->len, &tp->policy);
        else hd_topic_policy_default(&tp->policy);
        tp->policy_gen = (uint32_t)gen;
    }
    return &tp->policy;
}

size_t hd_topics_publish(hd_topics *t, hd_topic *tp, hd_buf *frame)
{
    return hd_topics_publish_at(t, tp, frame, 0);
}

int hd_topics_send(hd_conn *c, hd_buf *frame)
{
    if (!(c->flags & HD_CF_V1)) return hd_conn_send(c, frame);
    hd_buf *v1 = hd_phx_v1(frame);
    int rc = v1 ? hd_conn_send(c, v1) : HD_ENOMEM;
    hd_buf_unref(v1);
    return rc;
}

size_t hd_topics_publish_at(hd_topics *t, hd_topic *tp, hd_buf *frame, uint64_t offset)
{
    size_t n = 0;
    const hd_topic_policy *p = hd_topic_policy_of(t, tp);
    int drop_oldest = p->on_overflow == HD_OVERFLOW_DROP_OLDEST;
    /* One frame per serializer in use among the subscribers, each encoded
     * once: the V1 copy at the first V1 subscriber. */
    hd_buf *v1 = NULL;
    int v1_failed = 0;
    for (hd_sub *s = tp->subs; s; s = s->tnext) {
        if (s->joining || (offset && offset <= s->floor)) continue;
        hd_buf *f = frame;
        uint32_t fl = s->conn->flags;
        if ((fl & (HD_CF_V1 | HD_CF_TEXT)) && frame->data[0] == (0x80 | HD_WS_BINARY)) {
            /* (V1 and long polls carry text only) */
            if (t->st && (fl & HD_CF_V1)) t->st->dropped_binary_v1++;
            else if (t->st) t->st->dropped_binary_lp++;
            continue;
        }
        if (fl & HD_CF_V1) {
            if (!v1 && !v1_failed && !(v1 = hd_phx_v1(frame))) v1_failed = 1;
            if (!(f = v1)) {
                if (t->st) t->st->dropped_no_v1++;
                continue;
            }
        }
        if (hd_conn_send_topic(s->conn, f, tp->id, p->max_queue_bytes, drop_oldest) == 0) n++;
    }
    /* Counted per subscriber above; logged now and then only: a peer that
     * keeps sending such frames must not flood the log from the fan-out. */
    if (v1_failed && t->v1_failures++ % 1000 == 0)
        hd_warn("topic %s: no V1 frame (out of memory, or not a Phoenix V2 frame): its V1 "
                "subscribers miss a message (herald_dropped_total{reason=\"no_v1_frame\"}; "
                "%llu such publish(es) so far)",
                tp->name, (unsigned long long)t->v1_failures);
    hd_buf_unref(v1);
    if (t->pol) hd_policy_count(t->pol, p, HD_TC_DELIVERED, n);
    return n;
}
