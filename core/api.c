#include "api.h"
#include "channel.h"
#include "conn.h"
#include "http.h"
#include "log.h"
#include "server.h"
#include "presence.h"
#include "script.h"
#include "shaper.h"
#include "util.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define INVALID_PUSH "Invalid push arguments: channel, data, event are required."

static int path_is(const hd_http_req *r, const char *p)
{
    return strlen(p) == r->path_len && memcmp(r->path, p, r->path_len) == 0;
}

static int path_has_prefix(const hd_http_req *r, const char *p)
{
    size_t n = strlen(p);
    return r->path_len > n && memcmp(r->path, p, n) == 0;
}

static void respond_json(hd_conn *c, hd_http_req *r, int status, const hd_str *body)
{
    if (body->oom) {
        hd_http_error(c, r, 500, "out of memory", NULL, 1);
        return;
    }
    hd_http_respond(c, r, status, "application/json", body->p, body->len, NULL, 0);
}

/* With a token configured: Authorization: Bearer <token>. Without one:
 * loopback peers only. */
static int api_allowed(hd_conn *c, const hd_http_req *r)
{
    int v = hd_script_api_auth(c->srv, c, r);
    if (v >= 0) return v;
    const char *tok = c->srv->cfg->api_token;
    if (!tok) return hd_conn_is_loopback(c);
    size_t al = 0;
    const char *auth = hd_http_header(r, "authorization", &al);
    if (!auth || al < 7 || !hd_strieq(auth, 6, "bearer") || auth[6] != ' ') return 0;
    const char *t = auth + 7;
    size_t tl = al - 7;
    while (tl && *t == ' ') t++, tl--;
    return hd_ct_equal(t, tl, tok, strlen(tok));
}

size_t hd_api_publish_raw(hd_server *srv, const char *topic, size_t tlen, const char *event,
                          size_t elen, const char *data_json, size_t dlen)
{
    srv->m.publishes++;
    hd_topic *tp = hd_topics_find(&srv->topics, topic, tlen);
    if (!tp) {
        srv->m.publishes_no_subs++;
        return 0;
    }
    hd_buf *frame = hd_channel_msg_frame(topic, tlen, event, elen, data_json, dlen);
    if (!frame) {
        hd_error("out of memory building a push frame");
        return 0;
    }
    const hd_topic_policy *p = hd_topic_policy_of(srv, tp);
    hd_server_count_topic(srv, p, HD_TC_RECEIVED, 1);
    size_t n;
    if (hd_shaper_applies(p)) {
        n = hd_shaper_submit(srv, tp, p, event, elen, frame);
    } else {
        /* A reload may have turned shaping off: what was held goes first. */
        n = tp->shaper ? hd_shaper_release(srv, tp) : 0;
        tp = hd_topics_find(&srv->topics, topic, tlen);
        n += tp ? hd_topics_publish(srv, tp, frame) : 0;
    }
    srv->m.deliveries += n;
    hd_buf_unref(frame);
    return n;
}

size_t hd_api_publish(hd_server *srv, const char *topic, size_t tlen, const char *event,
                      size_t elen, const char *data_json, size_t dlen)
{
    if (!hd_script_has(srv, HD_HOOK_PUBLISH))
        return hd_api_publish_raw(srv, topic, tlen, event, elen, data_json, dlen);
    char *ev = strndup(event, elen), *data = strndup(data_json, dlen);
    size_t n = 0;
    if (!ev || !data) {
        hd_error("out of memory before a publish hook");
    } else if (hd_script_publish(srv, topic, tlen, &ev, &data)) {
        n = hd_api_publish_raw(srv, topic, tlen, ev, strlen(ev), data, strlen(data));
    } else {
        srv->m.publishes++;
    }
    free(ev);
    free(data);
    return n;
}

/* ---- push request parsing -------------------------------------------------------- */

/* A validated push: channels (deduplicated), event, data. */
typedef struct push {
    json_t *channels; /* array of strings */
    json_t *event;    /* string */
    json_t *data;     /* any */
} push;

static void push_clear(push *p)
{
    json_decref(p->channels);
    json_decref(p->event);
    json_decref(p->data);
    memset(p, 0, sizeof *p);
}

static int has_string(json_t *arr, json_t *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) if (json_equal(v, s)) return 1;
    return 0;
}

/* Checks a push object; fills p (new references). Returns NULL or an error. */
static const char *push_from_object(json_t *o, push *p)
{
    memset(p, 0, sizeof *p);
    json_t *ch = json_object_get(o, "channel"), *ev = json_object_get(o, "event");
    json_t *data = json_object_get(o, "data");
    if (!json_is_object(o) || !ch || !json_is_string(ev) || !data) return INVALID_PUSH;
    p->channels = json_array();
    if (json_is_string(ch)) {
        json_array_append(p->channels, ch);
    } else if (json_is_array(ch) && json_array_size(ch) > 0) {
        size_t i;
        json_t *v;
        json_array_foreach(ch, i, v)
        {
            if (!json_is_string(v)) {
                push_clear(p);
                return INVALID_PUSH;
            }
            if (!has_string(p->channels, v)) json_array_append(p->channels, v);
            if (json_array_size(p->channels) > HD_API_MAX_CHANNELS) {
                push_clear(p);
                return "too many channels in one push (at most 1000)";
            }
        }
    } else {
        push_clear(p);
        return INVALID_PUSH;
    }
    p->event = json_incref(ev);
    p->data = json_incref(data);
    return NULL;
}

/* Parses an urlencoded form into a JSON object: channel / channel[] (list),
 * event, data (strings). */
static json_t *form_to_object(const char *body, size_t len)
{
    json_t *o = json_object();
    json_t *channels = NULL;
    char *buf = malloc(len + 1); /* room for any one decoded key or value */
    if (!buf || !o) goto out;
    const char *q = body;
    hd_query_pair p;
    while (hd_query_next(&q, body + len, &p)) {
        memcpy(buf, p.k, p.kl);
        size_t kl = hd_url_decode(buf, p.kl);
        int is_channel = kl == 7 && memcmp(buf, "channel", 7) == 0;
        int is_list = kl == 9 && memcmp(buf, "channel[]", 9) == 0;
        const char *field = kl == 5 && memcmp(buf, "event", 5) == 0  ? "event"
                            : kl == 4 && memcmp(buf, "data", 4) == 0 ? "data"
                                                                     : NULL;
        if (!is_channel && !is_list && !field) continue;
        memcpy(buf, p.v, p.vl);
        json_t *v = json_stringn(buf, hd_url_decode(buf, p.vl));
        if (!v) continue; /* not UTF-8: treated as absent */
        if (field) {
            json_object_set_new(o, field, v);
        } else if (is_channel && !channels) {
            json_object_set_new(o, "channel", v);
        } else {
            if (!channels) {
                channels = json_array();
                json_t *first = json_object_get(o, "channel");
                if (first) json_array_append(channels, first);
            }
            json_array_append_new(channels, v);
        }
    }
    if (channels) json_object_set_new(o, "channel", channels);
out:
    free(buf);
    return o;
}

static void publish_push(hd_server *srv, const push *p, hd_str *out)
{
    char *data = json_dumps(p->data, JSON_COMPACT | JSON_ENCODE_ANY);
    const char *ev = json_string_value(p->event);
    size_t elen = json_string_length(p->event), dlen = data ? strlen(data) : 0;
    if (!data) {
        out->oom = 1;
        return;
    }
    hd_str_adds(out, "{\"channel\":[");
    size_t i;
    json_t *ch;
    json_array_foreach(p->channels, i, ch)
    {
        const char *t = json_string_value(ch);
        size_t tl = json_string_length(ch);
        hd_api_publish(srv, t, tl, ev, elen, data, dlen);
        if (i) hd_str_addc(out, ',');
        hd_str_add_json(out, t, tl);
    }
    hd_str_adds(out, "],\"data\":");
    hd_str_add(out, data, dlen);
    hd_str_adds(out, ",\"event\":");
    hd_str_add_json(out, ev, elen);
    hd_str_addc(out, '}');
    free(data);
}

static void handle_push(hd_conn *c, hd_http_req *r)
{
    size_t ctl = 0;
    const char *ct = hd_http_header(r, "content-type", &ctl);
    const char *b = r->body.p;
    size_t bl = r->body.len;
    size_t skip = 0;
    while (skip < bl && (b[skip] == ' ' || b[skip] == '\n' || b[skip] == '\r' || b[skip] == '\t'))
        skip++;
    int is_json;
    if (ct && ctl >= 16 && hd_strieq(ct, 16, "application/json")) is_json = 1;
    else if (ct && ctl >= 33 && hd_strieq(ct, 33, "application/x-www-form-urlencoded")) is_json = 0;
    else if (!ct) is_json = skip < bl && (b[skip] == '{' || b[skip] == '[');
    else {
        hd_http_error(c, r, 415, "unsupported content type: use application/json or "
                                 "application/x-www-form-urlencoded", NULL, 0);
        return;
    }

    json_t *doc;
    if (is_json) {
        json_error_t e;
        doc = json_loadb(b, bl, JSON_DECODE_ANY, &e); /* a scalar parses, then gets 422 */
        if (!doc) {
            char msg[256];
            snprintf(msg, sizeof msg, "invalid JSON: %s at line %d, column %d", e.text, e.line,
                     e.column);
            hd_http_error(c, r, 400, msg, NULL, 0);
            return;
        }
    } else {
        doc = form_to_object(b, bl);
    }
    if (json_is_object(doc) && r->query_len > 0) {
        /* As PushEx (Plug) does: query parameters fill what the body lacks. */
        json_t *q = form_to_object(r->query, r->query_len);
        if (q) json_object_update_missing(doc, q);
        json_decref(q);
    }

    hd_str out = HD_STR_INIT;
    if (json_is_array(doc)) {
        /* Batch: every item is checked before any is published. */
        size_t n = json_array_size(doc);
        push *items = calloc(n ? n : 1, sizeof *items);
        const char *err = n == 0 || n > HD_API_MAX_CHANNELS ? INVALID_PUSH : NULL;
        size_t bad = 0;
        for (size_t i = 0; items && !err && i < n; i++)
            if ((err = push_from_object(json_array_get(doc, i), &items[i]))) bad = i;
        if (!items) {
            hd_http_error(c, r, 500, "out of memory", NULL, 1);
        } else if (err) {
            hd_str_adds(&out, "{\"error\":");
            hd_str_add_json(&out, err, strlen(err));
            hd_str_printf(&out, ",\"index\":%zu}", bad);
            respond_json(c, r, 422, &out);
        } else {
            hd_str_addc(&out, '[');
            for (size_t i = 0; i < n; i++) {
                if (i) hd_str_addc(&out, ',');
                publish_push(c->srv, &items[i], &out);
            }
            hd_str_addc(&out, ']');
            respond_json(c, r, 200, &out);
        }
        for (size_t i = 0; items && i < n; i++) push_clear(&items[i]);
        free(items);
    } else {
        push p;
        const char *err = push_from_object(doc, &p);
        if (err) {
            hd_http_error(c, r, 422, err, NULL, 0);
        } else {
            publish_push(c->srv, &p, &out);
            respond_json(c, r, 200, &out);
            push_clear(&p);
        }
    }
    hd_str_free(&out);
    json_decref(doc);
}

/* The URL-decoded rest of the path after prefix (malloc'd, *len set), or
 * NULL after answering 500. */
static char *path_suffix(hd_conn *c, hd_http_req *r, const char *prefix, size_t *len)
{
    size_t pre = strlen(prefix);
    size_t tl = r->path_len - pre;
    char *t = malloc(tl + 1);
    if (!t) {
        hd_http_error(c, r, 500, "out of memory", NULL, 1);
        return NULL;
    }
    memcpy(t, r->path + pre, tl);
    *len = hd_url_decode(t, tl);
    t[*len] = 0;
    return t;
}

static void handle_topic(hd_conn *c, hd_http_req *r)
{
    size_t tl;
    char *t = path_suffix(c, r, "/api/topics/", &tl);
    if (!t) return;
    hd_topic *tp = hd_topics_find(&c->srv->topics, t, tl);
    size_t n = tp ? tp->nsubs : 0;
    hd_topic_policy fresh;
    const hd_topic_policy *p = tp ? hd_topic_policy_of(c->srv, tp) : &fresh;
    if (!tp) hd_topic_policy_for(c->srv, t, tl, &fresh);
    hd_str out = HD_STR_INIT;
    hd_str_adds(&out, "{\"topic\":");
    hd_str_add_json(&out, t, tl);
    /* An untracked topic always answers "listening" (PushEx's rule). */
    hd_str_printf(&out, ",\"subscribers\":%zu,\"listening\":%s", n,
                  n || !p->tracked ? "true" : "false");
    {
        hd_str_printf(&out,
                      ",\"policy\":{\"tracked\":%s,\"presence\":%s,\"throttle_ms\":%u,"
                      "\"debounce_ms\":%u,\"max_wait_ms\":%u,\"coalesce\":\"%s\","
                      "\"max_queue_bytes\":%u,\"on_overflow\":\"%s\"}",
                      p->tracked ? "true" : "false", p->presence ? "true" : "false",
                      p->throttle_ms, p->debounce_ms, p->max_wait_ms,
                      p->coalesce == HD_COALESCE_LATEST ? "latest" : "none", p->max_queue_bytes,
                      p->on_overflow == HD_OVERFLOW_DROP_OLDEST ? "drop_oldest" : "close");
    }
    hd_str_addc(&out, '}');
    respond_json(c, r, 200, &out);
    hd_str_free(&out);
    free(t);
}

static void handle_presence(hd_conn *c, hd_http_req *r)
{
    size_t tl;
    char *t = path_suffix(c, r, "/api/presence/", &tl);
    if (!t) return;
    hd_str out = HD_STR_INIT;
    hd_presence_state(c->srv, hd_topics_find(&c->srv->topics, t, tl), &out);
    respond_json(c, r, 200, &out);
    hd_str_free(&out);
    free(t);
}

static void method_not_allowed(hd_conn *c, hd_http_req *r, const char *allow)
{
    char h[64];
    snprintf(h, sizeof h, "Allow: %s\r\n", allow);
    hd_http_error(c, r, 405, "method not allowed", h, 0);
}

void hd_api_handle(hd_conn *c, hd_http_req *r)
{
    hd_server *srv = c->srv;
    int get = r->method == HTTP_GET || r->method == HTTP_HEAD;
    if (path_is(r, "/healthz")) {
        if (!get) return method_not_allowed(c, r, "GET, HEAD");
        static const char ok[] = "{\"status\":\"ok\"}";
        hd_http_respond(c, r, 200, "application/json", ok, sizeof ok - 1, NULL, 0);
    } else if (path_is(r, "/readyz")) {
        if (!get) return method_not_allowed(c, r, "GET, HEAD");
        const char *s = srv->state == HD_READY      ? "{\"status\":\"ready\"}"
                        : srv->state == HD_STARTING ? "{\"status\":\"starting\"}"
                                                    : "{\"status\":\"draining\"}";
        hd_http_respond(c, r, srv->state == HD_READY ? 200 : 503, "application/json", s,
                        strlen(s), NULL, 0);
    } else if (path_is(r, "/metrics")) {
        if (!get) return method_not_allowed(c, r, "GET, HEAD");
        hd_str out = HD_STR_INIT;
        hd_metrics_render(srv, &out);
        hd_http_respond(c, r, 200, "text/plain; version=0.0.4", out.p ? out.p : "", out.len,
                        NULL, 0);
        hd_str_free(&out);
    } else if (path_is(r, "/api/push")) {
        if (r->method != HTTP_POST) return method_not_allowed(c, r, "POST");
        if (!api_allowed(c, r)) return hd_http_error(c, r, 403, "Access forbidden", NULL, 0);
        handle_push(c, r);
    } else if (path_has_prefix(r, "/api/topics/")) {
        if (!get) return method_not_allowed(c, r, "GET, HEAD");
        if (!api_allowed(c, r)) return hd_http_error(c, r, 403, "Access forbidden", NULL, 0);
        handle_topic(c, r);
    } else if (path_has_prefix(r, "/api/presence/")) {
        if (!get) return method_not_allowed(c, r, "GET, HEAD");
        if (!api_allowed(c, r)) return hd_http_error(c, r, 403, "Access forbidden", NULL, 0);
        handle_presence(c, r);
    } else if (path_is(r, "/admin/reload")) {
        if (r->method != HTTP_POST) return method_not_allowed(c, r, "POST");
        if (!api_allowed(c, r)) return hd_http_error(c, r, 403, "Access forbidden", NULL, 0);
        char err[1024];
        if (hd_script_reload(srv, err, sizeof err)) return hd_http_error(c, r, 422, err, NULL, 0);
        hd_str out = HD_STR_INIT;
        hd_str_printf(&out, "{\"status\":\"ok\",\"generation\":%llu}",
                      (unsigned long long)srv->ss.generation);
        respond_json(c, r, 200, &out);
        hd_str_free(&out);
    } else if (path_is(r, "/admin/drain")) {
        if (r->method != HTTP_POST) return method_not_allowed(c, r, "POST");
        if (!api_allowed(c, r)) return hd_http_error(c, r, 403, "Access forbidden", NULL, 0);
        static const char body[] = "{\"status\":\"draining\"}";
        /* Answer first: the drain turns this response's connection to close. */
        hd_http_respond(c, r, 202, "application/json", body, sizeof body - 1, NULL, 1);
        hd_drain_start(srv, "POST /admin/drain");
    } else if (path_is(r, "/admin/status")) {
        if (!get) return method_not_allowed(c, r, "GET, HEAD");
        if (!api_allowed(c, r)) return hd_http_error(c, r, 403, "Access forbidden", NULL, 0);
        static const char *const states[] = {"starting", "ready", "draining", "stopped"};
        hd_str out = HD_STR_INIT;
        hd_str_printf(&out, "{\"state\":\"%s\",\"phase\":\"%s\",\"node\":",
                      states[srv->state], hd_phase_name(srv->phase));
        hd_str_add_json(&out, srv->node_id, strlen(srv->node_id));
        hd_str_printf(&out, ",\"connections\":%zu,\"topics\":%zu,\"scripts\":", srv->nws,
                      srv->topics.count);
        hd_script_status_json(srv, &out);
        hd_str_addc(&out, '}');
        respond_json(c, r, 200, &out);
        hd_str_free(&out);
    } else {
        hd_http_error(c, r, 404, "not found", NULL, 0);
    }
}
