#include "presence.h"
#include "err.h"
#include "log.h"
#include "phx.h"
#include "util.h"

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

const char *hd_presence_key(const hd_presence *pr, const hd_conn *c, char *buf, size_t len)
{
    const char *id = hd_conn_identity(c);
    if (id) return id;
    if (pr->qualify_keys) snprintf(buf, len, "%llu@%s", (unsigned long long)c->id, pr->node);
    else snprintf(buf, len, "%llu", (unsigned long long)c->id);
    return buf;
}

static void on_batch(uv_timer_t *t) { hd_presence_flush(t->data); }

void hd_presence_init(hd_presence *pr, uv_loop_t *loop, const hd_config *cfg, hd_stats *st,
                      hd_topics *topics, const char *node)
{
    memset(pr, 0, sizeof *pr);
    pr->loop = loop;
    pr->cfg = cfg;
    pr->st = st;
    pr->topics = topics;
    pr->node = node;
    uv_timer_init(loop, &pr->timer);
    pr->timer.data = pr;
}

void hd_presence_close(hd_presence *pr, uv_close_cb cb, void *data)
{
    if (uv_is_closing((uv_handle_t *)&pr->timer)) return;
    pr->timer.data = data;
    uv_close((uv_handle_t *)&pr->timer, cb);
}

void hd_presence_free(hd_presence *pr)
{
    free(pr->idx);
    pr->idx = NULL;
    pr->idx_mask = pr->idx_n = 0;
}

/* A unique phx_ref: URL-safe base64 of a 64-bit timestamp and a counter. */
static void new_ref(hd_presence *pr, char out[24])
{
    uint8_t raw[12];
    uint64_t t = uv_hrtime();
    uint32_t n = (uint32_t)++pr->seq;
    for (int i = 0; i < 8; i++) raw[i] = (uint8_t)(t >> (56 - 8 * i));
    for (int i = 0; i < 4; i++) raw[8 + i] = (uint8_t)(n >> (24 - 8 * i));
    size_t l = hd_base64_encode(raw, sizeof raw, out);
    for (size_t i = 0; i < l; i++) out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
}

/* Builds {"online_at":ms,"phx_ref":ref,...extra} (plus phx_ref_prev:
 * prev, plen bytes); the new ref goes to ref. */
static char *make_meta(hd_presence *pr, const char *extra_json, const char *prev, size_t plen,
                       char ref[24])
{
    json_t *meta = extra_json ? json_loads(extra_json, 0, NULL) : NULL;
    if (!json_is_object(meta)) {
        json_decref(meta);
        meta = json_object();
    }
    if (!meta) return NULL;
    new_ref(pr, ref);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (!json_object_get(meta, "online_at"))
        json_object_set_new(meta, "online_at",
                            json_integer((json_int_t)tv.tv_sec * 1000 + tv.tv_usec / 1000));
    json_object_set_new(meta, "phx_ref", json_string(ref));
    if (prev) json_object_set_new(meta, "phx_ref_prev", json_stringn(prev, plen));
    else json_object_del(meta, "phx_ref_prev");
    char *s = json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    return s;
}

static const char *key_of(const hd_pres *e) { return e->text; }
static const char *meta_of(const hd_pres *e) { return e->text + e->meta_off; }
/* ref_off's top bit: the ref was copied after the meta (NUL-terminated);
 * else it is the bytes of the meta's "phx_ref" value, ended by a quote. */
#define REF_COPIED 0x80000000u

/* Another node's entry in the index: its chain, and its topic (the key is
 * topic, node, phx_ref). */
typedef struct pres_links {
    hd_pres *hnext;
    const hd_topic *topic;
    uint32_t mark;               /* hd_presence_mark's (a load seeing it) */
} pres_links;
_Static_assert(offsetof(hd_pres, text) % sizeof(void *) == 0, "an entry's text starts aligned");
static const char *ref_of(const hd_pres *e) { return e->text + (e->ref_off & ~REF_COPIED); }
static size_t ref_len(const hd_pres *e)
{
    return e->ref_off & REF_COPIED ? strlen(ref_of(e)) : strcspn(ref_of(e), "\"");
}

const char *hd_pres_key(const hd_pres *e) { return key_of(e); }
const char *hd_pres_meta(const hd_pres *e) { return meta_of(e); }
const char *hd_pres_ref(const hd_pres *e, size_t *len)
{
    *len = ref_len(e);
    return ref_of(e);
}

/* Tells the cluster of a local entry on a topic with presence events. */
static void tell_local(hd_presence *pr, hd_topic *tp, const hd_pres *e, int joined)
{
    if (pr->on_local && hd_topic_policy_of(pr->topics, tp)->presence)
        pr->on_local(pr->on_local_ud, tp, e, joined);
}

static int ref_is(const hd_pres *e, const char *ref)
{
    size_t n = strlen(ref);
    return ref_len(e) == n && memcmp(ref_of(e), ref, n) == 0;
}

/* A new entry; node NULL: this node's (not copied). The meta's compact
 * JSON holds "phx_ref":"<ref>" literally unless ref needs escaping; only
 * then is the ref copied. */
static hd_pres *entry_new(hd_presence *pr, const char *key, const char *meta, const char *ref,
                          const char *node)
{
    size_t kl = strlen(key) + 1, ml = strlen(meta) + 1, rl = strlen(ref);
    size_t nl = node ? strlen(node) + 1 : 0;
    /* Literal only when JSON would not escape it. */
    int plain = 1;
    for (size_t i = 0; i < rl; i++)
        if (ref[i] == '"' || ref[i] == '\\' || (unsigned char)ref[i] < 0x20) plain = 0;
    const char *at = NULL;
    for (const char *p = meta; plain && !at && (p = strstr(p, "\"phx_ref\":\"")); p++) {
        const char *v = p + 11;
        if (strncmp(v, ref, rl) == 0 && v[rl] == '"') at = v;
    }
    size_t extra = at ? 0 : rl + 1, text = kl + ml + extra + nl;
    if (text >= REF_COPIED) return NULL;
    /* (another node's: its index links after the text, aligned) */
    size_t links = node ? (text + sizeof(void *) - 1) / sizeof(void *) * sizeof(void *) - text +
                              sizeof(pres_links)
                        : 0;
    hd_pres *e = malloc(sizeof *e + text + links);
    if (!e) return NULL;
    e->prev = e->next = NULL;
    e->sub = NULL;
    memcpy(e->text, key, kl);
    e->meta_off = (uint32_t)kl;
    memcpy(e->text + kl, meta, ml);
    if (at) {
        e->ref_off = (uint32_t)(kl + (size_t)(at - meta));
    } else {
        e->ref_off = (uint32_t)(kl + ml) | REF_COPIED;
        memcpy(e->text + kl + ml, ref, rl + 1);
    }
    if (node) {
        char *n = e->text + kl + ml + extra;
        memcpy(n, node, nl);
        e->node = n;
    } else {
        e->node = pr->node;
    }
    return e;
}

/* Another node's entry's links in the index, after its text. */
static pres_links *links_of(const hd_pres *e)
{
    uintptr_t end = (uintptr_t)(e->node + strlen(e->node) + 1);
    return (pres_links *)((end + sizeof(void *) - 1) & ~(uintptr_t)(sizeof(void *) - 1));
}

static void link_head(hd_topic *tp, hd_pres *e)
{
    e->prev = NULL;
    e->next = tp->pres;
    if (tp->pres) tp->pres->prev = e;
    tp->pres = e;
}

static void unlink_entry(hd_topic *tp, hd_pres *e)
{
    if (e->prev) e->prev->next = e->next;
    else tp->pres = e->next;
    if (e->next) e->next->prev = e->prev;
}

/* Puts n where o is in the topic's list. */
static void replace_entry(hd_topic *tp, hd_pres *o, hd_pres *n)
{
    n->prev = o->prev;
    n->next = o->next;
    if (o->prev) o->prev->next = n;
    else tp->pres = n;
    if (o->next) o->next->prev = n;
}

/* Drops the metas with phx_ref ref from key's list on one side of a
 * pending diff (and the key, if none is left). */
static void drop_ref(json_t *side, const char *key, json_t *ref)
{
    json_t *metas = json_object_get(json_object_get(side, key), "metas");
    for (size_t i = json_array_size(metas); i-- > 0;)
        if (json_equal(json_object_get(json_array_get(metas, i), "phx_ref"), ref))
            json_array_remove(metas, i);
    if (metas && json_array_size(metas) == 0) json_object_del(side, key);
}

/* Adds meta under key to the topic's pending joins or leaves. Per key and
 * phx_ref the window's last event wins: phoenix.js applies a diff's joins
 * before its leaves, so a leave and a join of one phx_ref in one diff (an
 * entry replaced, or removed and added back) would remove an entry the
 * client should keep. */
static void record(hd_presence *pr, hd_topic *tp, const char *key, const char *meta, int join)
{
    hd_pres_diff *d = tp->diff;
    if (!d && (d = calloc(1, sizeof *d))) {
        d->topic = tp;
        d->next = pr->pending;
        pr->pending = d;
        tp->diff = d;
    }
    void **slot = d ? (join ? &d->joins : &d->leaves) : NULL;
    if (slot && !*slot) *slot = json_object();
    json_t *side = slot ? *slot : NULL;
    json_t *m = json_loads(meta, 0, NULL);
    if (!side || !m) {
        json_decref(m);
        hd_error("presence: out of memory recording a diff");
        return;
    }
    drop_ref(d->joins, key, json_object_get(m, "phx_ref"));
    drop_ref(d->leaves, key, json_object_get(m, "phx_ref"));
    json_t *entry = json_object_get(side, key);
    if (!entry) {
        entry = json_pack("{s:[]}", "metas");
        json_object_set_new(side, key, entry);
    }
    json_array_append_new(json_object_get(entry, "metas"), m);
    if (!uv_is_active((uv_handle_t *)&pr->timer))
        uv_timer_start(&pr->timer, on_batch, pr->cfg->presence_batch_ms, 0);
}

int hd_presence_track(hd_presence *pr, hd_sub *sub, const char *meta_json)
{
    const hd_topic_policy *p = hd_topic_policy_of(pr->topics, sub->topic);
    if (!p->tracked) return 0;
    char ref[24], kb[96];
    char *meta = make_meta(pr, meta_json, NULL, 0, ref);
    if (!meta) return HD_ENOMEM;
    const char *key = hd_presence_key(pr, sub->conn, kb, sizeof kb);
    hd_pres *e = entry_new(pr, key, meta, ref, NULL);
    free(meta);
    if (!e) return HD_ENOMEM;
    e->sub = sub;
    sub->pres = e;
    link_head(sub->topic, e);
    if (p->presence) record(pr, sub->topic, key, meta_of(e), 1);
    tell_local(pr, sub->topic, e, 1);
    return 0;
}

void hd_presence_untrack(hd_presence *pr, hd_sub *sub)
{
    hd_pres *e = sub->pres;
    if (!e) return;
    const hd_topic_policy *p = hd_topic_policy_of(pr->topics, sub->topic);
    /* The last subscriber leaving has nobody left to tell. */
    if (p->presence && sub->topic->nsubs > 1) record(pr, sub->topic, key_of(e), meta_of(e), 0);
    tell_local(pr, sub->topic, e, 0);
    unlink_entry(sub->topic, e);
    free(e);
    sub->pres = NULL;
}

int hd_presence_update(hd_presence *pr, hd_sub *sub, const char *meta_json)
{
    hd_pres *o = sub->pres;
    if (!o) return HD_ELIMIT;
    char ref[24];
    char *meta = make_meta(pr, meta_json, ref_of(o), ref_len(o), ref);
    if (!meta) return HD_ENOMEM;
    hd_pres *n = entry_new(pr, key_of(o), meta, ref, NULL);
    free(meta);
    if (!n) return HD_ENOMEM;
    n->sub = sub;
    if (hd_topic_policy_of(pr->topics, sub->topic)->presence) {
        record(pr, sub->topic, key_of(o), meta_of(o), 0);
        record(pr, sub->topic, key_of(n), meta_of(n), 1);
    }
    replace_entry(sub->topic, o, n);
    sub->pres = n;
    tell_local(pr, sub->topic, o, 0);
    tell_local(pr, sub->topic, n, 1);
    free(o);
    return 0;
}

/* ---- the index of other nodes' entries -------------------------------------------------- */

static size_t idx_hash(const hd_topic *tp, const char *node, const char *ref, size_t rl)
{
    uint64_t t = (uint64_t)(uintptr_t)tp;
    uint32_t h = hd_fnv1a(ref, rl) ^ (hd_fnv1a(node, strlen(node)) * 0x9e3779b1u);
    return (size_t)(h ^ (uint32_t)(t >> 4) ^ (uint32_t)(t >> 36));
}

static hd_pres **idx_head(hd_presence *pr, const hd_pres *e)
{
    return &pr->idx[idx_hash(links_of(e)->topic, e->node, ref_of(e), ref_len(e)) & pr->idx_mask];
}

/* Room for one more (doubling at a load of 1). Returns 0, or HD_ENOMEM
 * when there is no table at all (a table that cannot grow is kept). */
static int idx_room(hd_presence *pr)
{
    size_t cap = pr->idx ? pr->idx_mask + 1 : 0;
    if (pr->idx_n < cap) return 0;
    size_t ncap = cap ? cap * 2 : 64;
    hd_pres **old = pr->idx, **nt = calloc(ncap, sizeof *nt);
    if (!nt) return old ? 0 : HD_ENOMEM;
    pr->idx = nt;
    pr->idx_mask = ncap - 1;
    for (size_t i = 0; i < cap; i++)
        for (hd_pres *e = old[i], *next; e; e = next) {
            next = links_of(e)->hnext;
            hd_pres **h = idx_head(pr, e);
            links_of(e)->hnext = *h;
            *h = e;
        }
    free(old);
    return 0;
}

static void idx_del(hd_presence *pr, hd_pres *e)
{
    if (!pr->idx) return;
    for (hd_pres **pp = idx_head(pr, e); *pp; pp = &links_of(*pp)->hnext)
        if (*pp == e) {
            *pp = links_of(e)->hnext;
            pr->idx_n--;
            return;
        }
}

static hd_pres *find_remote(hd_presence *pr, hd_topic *tp, const char *node, const char *key,
                            const char *ref)
{
    if (!pr->idx) return NULL;
    for (hd_pres *e = pr->idx[idx_hash(tp, node, ref, strlen(ref)) & pr->idx_mask]; e;
         e = links_of(e)->hnext)
        if (links_of(e)->topic == tp && strcmp(e->node, node) == 0 && ref_is(e, ref) &&
            strcmp(key_of(e), key) == 0)
            return e;
    return NULL;
}

int hd_presence_add(hd_presence *pr, hd_topic *tp, const char *node, const char *key,
                    const char *meta_json, const char *want_ref)
{
    if (!tp || !hd_topic_policy_of(pr->topics, tp)->tracked) return HD_ELIMIT;
    json_t *m = json_loads(meta_json, 0, NULL);
    const char *ref = json_string_value(json_object_get(m, "phx_ref"));
    if (!json_is_object(m) || !ref || (want_ref && strcmp(ref, want_ref) != 0)) {
        json_decref(m);
        return HD_EJSON;
    }
    char *meta = json_dumps(m, JSON_COMPACT);
    hd_pres *n = meta ? entry_new(pr, key, meta, ref, node) : NULL;
    free(meta);
    hd_pres *o = n ? find_remote(pr, tp, node, key, ref) : NULL;
    json_decref(m); /* ref points into m */
    if (!n) return HD_ENOMEM;
    links_of(n)->topic = tp;
    int tell = hd_topic_policy_of(pr->topics, tp)->presence;
    if (o && strcmp(meta_of(o), meta_of(n)) == 0) { /* known already: no news */
        free(n);
        return 0;
    }
    if (!o && idx_room(pr)) {
        free(n);
        return HD_ENOMEM;
    }
    if (o) {
        if (tell) record(pr, tp, key_of(o), meta_of(o), 0);
        idx_del(pr, o);
        replace_entry(tp, o, n);
        free(o);
    } else {
        link_head(tp, n);
    }
    hd_pres **h = idx_head(pr, n);
    links_of(n)->hnext = *h;
    *h = n;
    pr->idx_n++;
    if (tell) record(pr, tp, key_of(n), meta_of(n), 1);
    return 0;
}

/* Unlinks and frees a remote entry, recording its leave. */
static void drop_remote(hd_presence *pr, hd_topic *tp, hd_pres *e)
{
    if (hd_topic_policy_of(pr->topics, tp)->presence) record(pr, tp, key_of(e), meta_of(e), 0);
    idx_del(pr, e);
    unlink_entry(tp, e);
    free(e);
}

void hd_presence_mark(hd_presence *pr, hd_topic *tp, const char *node, const char *key,
                      const char *phx_ref, uint32_t mark)
{
    hd_pres *e = tp ? find_remote(pr, tp, node, key, phx_ref) : NULL;
    if (e) links_of(e)->mark = mark;
}

uint32_t hd_pres_mark(const hd_pres *e) { return e->sub ? 0 : links_of(e)->mark; }

int hd_presence_remove(hd_presence *pr, hd_topic *tp, const char *node, const char *key,
                       const char *phx_ref)
{
    hd_pres *e = tp ? find_remote(pr, tp, node, key, phx_ref) : NULL;
    if (!e) return 0;
    drop_remote(pr, tp, e);
    return 1;
}

size_t hd_presence_withdraw(hd_presence *pr, hd_topic *tp, const char *node)
{
    size_t n = 0;
    for (hd_pres *e = tp->pres, *next; e; e = next) {
        next = e->next;
        if (e->sub || strcmp(e->node, node) != 0) continue;
        drop_remote(pr, tp, e);
        n++;
    }
    return n;
}

size_t hd_presence_withdraw_node(hd_presence *pr, const char *node)
{
    size_t n = 0;
    hd_topics *t = pr->topics;
    for (size_t i = 0; i < t->nslots; i++)
        for (hd_topic *tp = t->slots[i]; tp; tp = tp->hnext) n += hd_presence_withdraw(pr, tp, node);
    return n;
}

void hd_presence_state(hd_presence *pr, hd_topic *tp, hd_str *out)
{
    (void)pr;
    /* Group the entries' metas by key without parsing them: a map of key
     * -> list of entries (by index), then the text written once. A join
     * storm sends this to every joiner, so it must stay O(n). */
    size_t n = 0;
    for (hd_pres *e = tp ? tp->pres : NULL; e; e = e->next) n++;
    if (n == 0) {
        hd_str_adds(out, "{}");
        return;
    }
    hd_pres **ents = malloc(n * sizeof *ents);
    long *next = malloc(n * sizeof *next);
    long *last = malloc(n * sizeof *last); /* per first index: its list's tail */
    json_t *first = json_object();          /* key -> index of its first entry */
    if (!ents || !next || !last || !first) {
        free(ents);
        free(next);
        free(last);
        json_decref(first);
        out->oom = 1;
        return;
    }
    size_t i = 0;
    for (hd_pres *e = tp->pres; e; e = e->next, i++) {
        ents[i] = e;
        next[i] = -1;
        json_t *f = json_object_get(first, key_of(e));
        if (f) {
            long head = (long)json_integer_value(f);
            next[last[head]] = (long)i;
            last[head] = (long)i;
        } else {
            json_object_set_new(first, key_of(e), json_integer((json_int_t)i));
            last[i] = (long)i;
        }
    }
    hd_str_addc(out, '{');
    const char *key;
    json_t *v;
    int comma = 0;
    json_object_foreach(first, key, v)
    {
        if (comma) hd_str_addc(out, ',');
        comma = 1;
        hd_str_add_json(out, key, strlen(key));
        hd_str_adds(out, ":{\"metas\":[");
        for (long j = (long)json_integer_value(v), k = 0; j >= 0; j = next[j], k++) {
            if (k) hd_str_addc(out, ',');
            hd_str_adds(out, meta_of(ents[j]));
        }
        hd_str_adds(out, "]}");
    }
    hd_str_addc(out, '}');
    free(last);
    free(ents);
    free(next);
    json_decref(first);
}

void hd_presence_loaded(hd_presence *pr, hd_topic *tp)
{
    if (!tp->pres_loading) return;
    tp->pres_loading = 0;
    for (hd_sub *s = tp->subs; s; s = s->tnext)
        if (s->state_due) {
            s->state_due = 0;
            hd_presence_send_state(pr, s);
        }
    /* A diff held back during the load goes out after the states. */
    if (tp->diff && !uv_is_active((uv_handle_t *)&pr->timer))
        uv_timer_start(&pr->timer, on_batch, pr->cfg->presence_batch_ms, 0);
}

void hd_presence_send_state(hd_presence *pr, hd_sub *sub)
{
    if (sub->topic->pres_loading) {
        sub->state_due = 1;
        return;
    }
    hd_str s = HD_STR_INIT;
    hd_presence_state(pr, sub->topic, &s);
    hd_buf *f = s.oom ? NULL
                      : hd_phx_presence_state(hd_sub_join_ref(sub), sub->topic->name, sub->topic->len,
                                              s.p, s.len);
    if (f) {
        hd_topics_send(sub->conn, f);
        hd_buf_unref(f);
    }
    hd_str_free(&s);
}

static void diff_free(hd_pres_diff *d)
{
    json_decref(d->joins);
    json_decref(d->leaves);
    free(d);
}

void hd_presence_flush(hd_presence *pr)
{
    /* Work from pr->flushing: a fan-out below may free topics
     * (hd_presence_forget unlinks their diffs from this list too) and record
     * new diffs (onto a fresh pr->pending). */
    pr->flushing = pr->pending;
    pr->pending = NULL;
    while (pr->flushing) {
        hd_pres_diff *d = pr->flushing;
        pr->flushing = d->next;
        hd_topic *tp = d->topic;
        if (tp->pres_loading) {
            /* Its subscribers are all waiting for their presence_state,
             * which must come first: the diff waits for the load too. */
            d->next = pr->pending;
            pr->pending = d;
            continue;
        }
        tp->diff = NULL;
        json_t *diff = json_pack("{s:O?,s:O?}", "joins", d->joins, "leaves", d->leaves);
        if (diff && json_is_null(json_object_get(diff, "joins")))
            json_object_set_new(diff, "joins", json_object());
        if (diff && json_is_null(json_object_get(diff, "leaves")))
            json_object_set_new(diff, "leaves", json_object());
        char *text = diff ? json_dumps(diff, JSON_COMPACT) : NULL;
        json_decref(diff);
        diff_free(d);
        if (!text) continue;
        hd_buf *f = hd_phx_presence_diff(tp->name, tp->len, text, strlen(text));
        free(text);
        if (f) {
            pr->st->presence_diffs++;
            hd_topics_publish(pr->topics, tp, f);
            hd_buf_unref(f);
        }
    }
}

static int unlink_from(hd_pres_diff **head, hd_pres_diff *d)
{
    for (hd_pres_diff **pp = head; *pp; pp = &(*pp)->next)
        if (*pp == d) {
            *pp = d->next;
            return 1;
        }
    return 0;
}

void hd_presence_forget(hd_presence *pr, hd_topic *tp)
{
    for (hd_pres *e = tp->pres, *next; e; e = next) {
        next = e->next;
        if (e->sub) e->sub->pres = NULL;
        else idx_del(pr, e);
        free(e);
    }
    tp->pres = NULL;
    hd_pres_diff *d = tp->diff;
    if (!d) return;
    if (!unlink_from(&pr->pending, d)) unlink_from(&pr->flushing, d);
    tp->diff = NULL;
    diff_free(d);
}
