#include "topic.h"
#include "util.h"
#include "conn.h"
#include "err.h"
#include "script.h"
#include "server.h"

#include <stdlib.h>
#include <string.h>

static uint32_t hash(const char *p, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

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

hd_sub *hd_topics_subscribe(hd_topics *t, const char *name, size_t len, struct hd_conn *conn,
                            const char *join_ref)
{
    hd_sub *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (join_ref && !(s->join_ref = strdup(join_ref))) goto err;
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
        tp->pres_next = NULL;
        tp->pjoins = tp->pleaves = NULL;
        tp->pres_pending = 0;
        tp->shaper = NULL;
        memcpy(tp->name, name, len);
        tp->name[len] = 0;
        if (t->count >= t->nslots) grow(t);
        size_t i = tp->hash & (t->nslots - 1);
        tp->hnext = t->slots[i];
        t->slots[i] = tp;
        t->count++;
    }
    s->topic = tp;
    s->conn = conn;
    s->tnext = tp->subs;
    if (tp->subs) tp->subs->tprev = s;
    tp->subs = s;
    tp->nsubs++;
    return s;
err:
    free(s->join_ref);
    free(s);
    return NULL;
}

void hd_topics_unsubscribe(hd_topics *t, hd_sub *s)
{
    free(s->meta);
    hd_topic *tp = s->topic;
    if (s->tprev) s->tprev->tnext = s->tnext;
    else tp->subs = s->tnext;
    if (s->tnext) s->tnext->tprev = s->tprev;
    free(s->join_ref);
    free(s);
    if (--tp->nsubs > 0) return;
    hd_topic **pp = &t->slots[tp->hash & (t->nslots - 1)];
    while (*pp != tp) pp = &(*pp)->hnext;
    *pp = tp->hnext;
    t->count--;
    if (t->on_free) t->on_free(t->on_free_data, tp);
    free(tp);
}

void hd_topic_policy_default(hd_topic_policy *p)
{
    memset(p, 0, sizeof *p);
    p->tracked = 1;
    p->rule = -1;
}

/* The first config rule (topics = {...}) matching the topic sets its fields;
 * the topic hook then merges over them. */
static void apply_rules(const hd_config *cfg, const char *name, size_t len, hd_topic_policy *p)
{
    for (size_t i = 0; i < cfg->ntopic_rules; i++) {
        const hd_topic_rule *r = &cfg->topic_rules[i];
        if (!hd_glob_match(r->match, name, len)) continue;
        p->rule = (int32_t)i;
        if (r->set & HD_TP_TRACKED) p->tracked = r->policy.tracked;
        if (r->set & HD_TP_PRESENCE) p->presence = r->policy.presence;
        if (r->set & HD_TP_THROTTLE) p->throttle_ms = r->policy.throttle_ms;
        if (r->set & HD_TP_DEBOUNCE) p->debounce_ms = r->policy.debounce_ms;
        if (r->set & HD_TP_MAX_WAIT) p->max_wait_ms = r->policy.max_wait_ms;
        if (r->set & HD_TP_MAX_QUEUE) p->max_queue_bytes = r->policy.max_queue_bytes;
        if (r->set & HD_TP_COALESCE) p->coalesce = r->policy.coalesce;
        if (r->set & HD_TP_OVERFLOW) p->on_overflow = r->policy.on_overflow;
        return;
    }
}

const hd_topic_policy *hd_topic_policy_of(struct hd_server *srv, hd_topic *tp)
{
    if (tp->policy_gen != srv->ss.generation) {
        hd_topic_policy_for(srv, tp->name, tp->len, &tp->policy);
        tp->policy_gen = srv->ss.generation;
    }
    return &tp->policy;
}

void hd_topic_policy_for(struct hd_server *srv, const char *name, size_t len, hd_topic_policy *p)
{
    hd_topic_policy_default(p);
    apply_rules(srv->cfg, name, len, p);
    hd_script_topic(srv, name, len, p);
}

size_t hd_topics_publish(struct hd_server *srv, hd_topic *tp, hd_buf *frame)
{
    size_t n = 0;
    const hd_topic_policy *p = hd_topic_policy_of(srv, tp);
    /* hd_conn_send_topic never unlinks a subscription: a connection that
     * overflows is only marked and reaped after this loop (hd_server_reap). */
    for (hd_sub *s = tp->subs; s; s = s->tnext)
        if (hd_conn_send_topic(s->conn, frame, tp, p) == 0) n++;
    hd_server_count_topic(srv, p, HD_TC_DELIVERED, n);
    hd_server_reap(srv);
    return n;
}
