#include "presence.h"
#include "channel.h"
#include "conn.h"
#include "err.h"
#include "log.h"
#include "server.h"
#include "util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

const char *hd_presence_key(hd_conn *c, char *buf, size_t len)
{
    const char *id = hd_channel_identity(c);
    if (id) return id;
    snprintf(buf, len, "%llu", (unsigned long long)c->id);
    return buf;
}

/* A unique phx_ref: URL-safe base64 of a 64-bit timestamp and a counter. */
static void new_ref(hd_server *srv, char out[24])
{
    uint8_t raw[12];
    uint64_t t = uv_hrtime();
    uint32_t n = (uint32_t)++srv->pres_seq;
    for (int i = 0; i < 8; i++) raw[i] = (uint8_t)(t >> (56 - 8 * i));
    for (int i = 0; i < 4; i++) raw[8 + i] = (uint8_t)(n >> (24 - 8 * i));
    size_t l = hd_base64_encode(raw, sizeof raw, out);
    for (size_t i = 0; i < l; i++) out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
}

/* Builds {"online_at":ms,"phx_ref":ref,...extra} (plus phx_ref_prev). */
static char *make_meta(hd_server *srv, const char *extra_json, const char *prev_ref)
{
    json_t *meta = extra_json ? json_loads(extra_json, 0, NULL) : NULL;
    if (!json_is_object(meta)) {
        json_decref(meta);
        meta = json_object();
    }
    if (!meta) return NULL;
    char ref[24];
    new_ref(srv, ref);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (!json_object_get(meta, "online_at"))
        json_object_set_new(meta, "online_at",
                            json_integer((json_int_t)tv.tv_sec * 1000 + tv.tv_usec / 1000));
    json_object_set_new(meta, "phx_ref", json_string(ref));
    if (prev_ref) json_object_set_new(meta, "phx_ref_prev", json_string(prev_ref));
    else json_object_del(meta, "phx_ref_prev");
    char *s = json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    return s;
}

static void on_batch(uv_timer_t *t) { hd_presence_flush(t->data); }

/* Adds meta under key to the topic's pending joins or leaves. */
static void record(hd_server *srv, hd_topic *tp, const char *key, const char *meta, int join)
{
    void **slot = join ? &tp->pjoins : &tp->pleaves;
    if (!*slot) *slot = json_object();
    json_t *side = *slot;
    json_t *m = json_loads(meta, 0, NULL);
    if (!side || !m) {
        json_decref(m);
        hd_error("presence: out of memory recording a diff");
        return;
    }
    json_t *entry = json_object_get(side, key);
    if (!entry) {
        entry = json_pack("{s:[]}", "metas");
        json_object_set_new(side, key, entry);
    }
    json_array_append_new(json_object_get(entry, "metas"), m);
    if (!tp->pres_pending) {
        tp->pres_pending = 1;
        tp->pres_next = srv->pres_pending;
        srv->pres_pending = tp;
    }
    if (!uv_is_active((uv_handle_t *)&srv->presence_timer))
        uv_timer_start(&srv->presence_timer, on_batch, srv->cfg->presence_batch_ms, 0);
}

int hd_presence_track(hd_server *srv, hd_sub *sub, const char *meta_json)
{
    const hd_topic_policy *p = hd_topic_policy_of(srv, sub->topic);
    if (!p->tracked) return 0;
    sub->meta = make_meta(srv, meta_json, NULL);
    if (!sub->meta) return HD_ENOMEM;
    if (p->presence) {
        char kb[32];
        record(srv, sub->topic, hd_presence_key(sub->conn, kb, sizeof kb), sub->meta, 1);
    }
    return 0;
}

void hd_presence_untrack(hd_server *srv, hd_sub *sub)
{
    if (!sub->meta) return;
    const hd_topic_policy *p = hd_topic_policy_of(srv, sub->topic);
    /* The last subscriber leaving has nobody left to tell. */
    if (p->presence && sub->topic->nsubs > 1) {
        char kb[32];
        record(srv, sub->topic, hd_presence_key(sub->conn, kb, sizeof kb), sub->meta, 0);
    }
    free(sub->meta);
    sub->meta = NULL;
}

int hd_presence_update(hd_server *srv, hd_sub *sub, const char *meta_json)
{
    if (!sub->meta) return HD_ELIMIT;
    json_t *old = json_loads(sub->meta, 0, NULL);
    const char *prev = old ? json_string_value(json_object_get(old, "phx_ref")) : NULL;
    char *meta = make_meta(srv, meta_json, prev);
    json_decref(old);
    if (!meta) return HD_ENOMEM;
    if (hd_topic_policy_of(srv, sub->topic)->presence) {
        char kb[32];
        const char *key = hd_presence_key(sub->conn, kb, sizeof kb);
        record(srv, sub->topic, key, sub->meta, 0);
        record(srv, sub->topic, key, meta, 1);
    }
    free(sub->meta);
    sub->meta = meta;
    return 0;
}

void hd_presence_state(hd_server *srv, hd_topic *tp, hd_str *out)
{
    (void)srv;
    /* Group the subscriptions' metas by key without parsing them: a map of
     * key -> list of subscriptions (by index), then the text written once.
     * A join storm sends this to every joiner, so it must stay O(n). */
    size_t n = 0;
    for (hd_sub *s = tp ? tp->subs : NULL; s; s = s->tnext) n += s->meta != NULL;
    if (n == 0) {
        hd_str_adds(out, "{}");
        return;
    }
    hd_sub **subs = malloc(n * sizeof *subs);
    long *next = malloc(n * sizeof *next);
    json_t *first = json_object(); /* key -> index of its first subscription */
    if (!subs || !next || !first) {
        free(subs);
        free(next);
        json_decref(first);
        out->oom = 1;
        return;
    }
    size_t i = 0;
    long *last = malloc(n * sizeof *last); /* per first index: its list's tail */
    for (hd_sub *s = tp->subs; s && last; s = s->tnext) {
        if (!s->meta) continue;
        char kb[32];
        const char *key = hd_presence_key(s->conn, kb, sizeof kb);
        subs[i] = s;
        next[i] = -1;
        json_t *f = json_object_get(first, key);
        if (f) {
            long head = (long)json_integer_value(f);
            next[last[head]] = (long)i;
            last[head] = (long)i;
        } else {
            json_object_set_new(first, key, json_integer((json_int_t)i));
            last[i] = (long)i;
        }
        i++;
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
            hd_str_adds(out, subs[j]->meta);
        }
        hd_str_adds(out, "]}");
    }
    hd_str_addc(out, '}');
    if (!last) out->oom = 1;
    free(last);
    free(subs);
    free(next);
    json_decref(first);
}

void hd_presence_send_state(hd_server *srv, hd_sub *sub)
{
    hd_str s = HD_STR_INIT;
    hd_str_addc(&s, '[');
    hd_str_add_json_or_null(&s, sub->join_ref);
    hd_str_adds(&s, ",null,");
    hd_str_add_json(&s, sub->topic->name, sub->topic->len);
    hd_str_adds(&s, ",\"presence_state\",");
    hd_presence_state(srv, sub->topic, &s);
    hd_str_addc(&s, ']');
    hd_buf *f = s.oom ? NULL : hd_ws_frame(HD_WS_TEXT, s.p, s.len);
    if (f) {
        hd_conn_send(sub->conn, f);
        hd_buf_unref(f);
    }
    hd_str_free(&s);
}

static void clear(hd_topic *tp)
{
    json_decref(tp->pjoins);
    json_decref(tp->pleaves);
    tp->pjoins = tp->pleaves = NULL;
    tp->pres_pending = 0;
}

void hd_presence_flush(hd_server *srv)
{
    /* Work from srv->pres_flushing: a fan-out below may close connections,
     * free topics (hd_presence_forget unlinks them from this list too) and
     * record new diffs (onto a fresh srv->pres_pending). */
    srv->pres_flushing = srv->pres_pending;
    srv->pres_pending = NULL;
    while (srv->pres_flushing) {
        hd_topic *tp = srv->pres_flushing;
        srv->pres_flushing = tp->pres_next;
        tp->pres_next = NULL;
        json_t *diff = json_pack("{s:O?,s:O?}", "joins", tp->pjoins, "leaves", tp->pleaves);
        if (diff && json_is_null(json_object_get(diff, "joins")))
            json_object_set_new(diff, "joins", json_object());
        if (diff && json_is_null(json_object_get(diff, "leaves")))
            json_object_set_new(diff, "leaves", json_object());
        char *text = diff ? json_dumps(diff, JSON_COMPACT) : NULL;
        json_decref(diff);
        clear(tp);
        if (text) {
            hd_str s = HD_STR_INIT;
            hd_str_adds(&s, "[null,null,");
            hd_str_add_json(&s, tp->name, tp->len);
            hd_str_adds(&s, ",\"presence_diff\",");
            hd_str_adds(&s, text);
            hd_str_addc(&s, ']');
            free(text);
            hd_buf *f = s.oom ? NULL : hd_ws_frame(HD_WS_TEXT, s.p, s.len);
            hd_str_free(&s);
            if (f) {
                srv->m.presence_diffs++;
                hd_topics_publish(srv, tp, f);
                hd_buf_unref(f);
            }
        }
    }
}

static int unlink_from(hd_topic **head, hd_topic *tp)
{
    for (hd_topic **pp = head; *pp; pp = &(*pp)->pres_next)
        if (*pp == tp) {
            *pp = tp->pres_next;
            return 1;
        }
    return 0;
}

void hd_presence_forget(hd_server *srv, hd_topic *tp)
{
    if (!tp->pres_pending) return;
    if (!unlink_from(&srv->pres_pending, tp)) unlink_from(&srv->pres_flushing, tp);
    clear(tp);
}
