#include "api.h"
#include "err.h"
#include "hooks.h"
#include "log.h"
#include "phx.h"
#include "util.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define INVALID_PUSH "Invalid push arguments: channel, data, event are required."
#define INVALID_BINARY_PUSH                                                                        \
    "Invalid binary push: channel and event are required in the query string."

void hd_api_respond_json(hd_conn *c, hd_http_req *r, int status, const hd_str *body)
{
    if (body->oom) {
        hd_http_error(c, r, 500, "out of memory", NULL, 1);
        return;
    }
    hd_http_respond(c, r, status, "application/json", body->p, body->len, NULL, 0);
}

/* The rule without an api_auth hook's opinion: with a token configured,
 * Authorization: Bearer <token>; without one, loopback peers only. */
static int static_rule(hd_api *api, hd_conn *c, const hd_http_req *r)
{
    const char *tok = api->cfg->api_token;
    if (!tok) return hd_conn_is_loopback(c);
    size_t al = 0;
    const char *auth = hd_http_header(r, "authorization", &al);
    if (!auth || al < 7 || !hd_strieq(auth, 6, "bearer") || auth[6] != ' ') return 0;
    const char *t = auth + 7;
    size_t tl = al - 7;
    while (tl && *t == ' ') t++, tl--;
    return hd_ct_equal(t, tl, tok, strlen(tok));
}

/* A route needing authorization, once api_auth answered (verdict as its). */
static void authorized(hd_api *api, const hd_route *rt, hd_conn *c, hd_http_req *r, int verdict)
{
    if (verdict < 0) verdict = static_rule(api, c, r);
    if (!verdict) return hd_http_error(c, r, 403, "Access forbidden", NULL, 0);
    rt->fn(rt->ud, c, r);
}

/* A request whose api_auth hook may wait. */
typedef struct authorizing {
    hd_http_wait w;
    hd_api *api;
    const hd_route *rt;
    int verdict;
} authorizing;

static void authorized_later(void *ud, hd_conn *c, hd_http_req *r)
{
    authorizing *a = ud;
    authorized(a->api, a->rt, c, r, a->verdict);
}

static void api_auth_done(void *ud, hd_hook_result *res)
{
    authorizing *a = ud;
    a->verdict = res->verdict;
    if (hd_http_wait_end(&a->w, authorized_later, a)) a->api->sc->ss.discarded++;
    free(a);
}

static void authorize(hd_api *api, const hd_route *rt, hd_conn *c, hd_http_req *r)
{
    if (!hd_script_has(api->sc, HD_HOOK_API_AUTH)) return authorized(api, rt, c, r, -1);
    authorizing *a = malloc(sizeof *a);
    if (!a) return hd_http_error(c, r, 503, "out of memory", NULL, 1);
    hd_http_wait_init(&a->w, c, r);
    a->api = api;
    a->rt = rt;
    hd_hook_req view;
    hd_http_hook_req(r, &view);
    hd_hook_run *run = hd_hook_api_auth_start(api->sc, c, &view, api_auth_done, a);
    if (run) hd_http_wait_hook(&a->w, run);
}

size_t hd_api_publish(hd_api *api, const char *topic, size_t tlen, const char *event,
                      size_t elen, const char *data_json, size_t dlen)
{
    if (!hd_script_has(api->sc, HD_HOOK_PUBLISH))
        return hd_publish(api->eng, topic, tlen, event, elen, data_json, dlen);
    char *ev = strndup(event, elen), *data = strndup(data_json, dlen);
    size_t n = 0;
    if (!ev || !data) {
        hd_error("out of memory before a publish hook");
    } else if (hd_hook_publish(api->sc, topic, tlen, &ev, &data)) {
        n = hd_publish(api->eng, topic, tlen, ev, strlen(ev), data, strlen(data));
    } else {
        api->st->publishes++;
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

/* A form being read into a JSON object as PushEx (Plug) reads one:
 * channel (a string; repeated, the last), channel[] (a list, after a
 * channel seen before it), event, data (strings); other fields ignored. */
typedef struct form {
    json_t *o;
    json_t *channels; /* once a channel[] was seen */
} form;

/* Adds the field k = v (decoded bytes) to f. */
static void form_field(form *f, const char *k, size_t kl, const char *v, size_t vl)
{
    int is_channel = kl == 7 && memcmp(k, "channel", 7) == 0;
    int is_list = kl == 9 && memcmp(k, "channel[]", 9) == 0;
    const char *field = kl == 5 && memcmp(k, "event", 5) == 0  ? "event"
                        : kl == 4 && memcmp(k, "data", 4) == 0 ? "data"
                                                               : NULL;
    if (!is_channel && !is_list && !field) return;
    json_t *s = json_stringn(v, vl);
    if (!s) return; /* not UTF-8: treated as absent */
    if (field) {
        json_object_set_new(f->o, field, s);
    } else if (is_channel && !f->channels) {
        json_object_set_new(f->o, "channel", s);
    } else {
        if (!f->channels) {
            f->channels = json_array();
            json_t *first = json_object_get(f->o, "channel");
            if (first) json_array_append(f->channels, first);
        }
        json_array_append_new(f->channels, s);
    }
}

/* The object of f, once every field is in (f is spent). */
static json_t *form_end(form *f)
{
    if (f->channels) json_object_set_new(f->o, "channel", f->channels);
    return f->o;
}

/* Parses an urlencoded form into a JSON object (form_field's fields). */
static json_t *form_to_object(const char *body, size_t len)
{
    form f = {json_object(), NULL};
    char *buf = malloc(len + 1); /* room for any one decoded key or value */
    if (!buf || !f.o) goto out;
    const char *q = body;
    hd_query_pair p;
    while (hd_query_next(&q, body + len, &p)) {
        memcpy(buf, p.k, p.kl);
        size_t kl = hd_url_decode(buf, p.kl);
        char key[10]; /* the longest field read, "channel[]" */
        if (kl > sizeof key) continue;
        memcpy(key, buf, kl);
        memcpy(buf, p.v, p.vl);
        form_field(&f, key, kl, buf, hd_url_decode(buf, p.vl));
    }
out:
    free(buf);
    return form_end(&f);
}

/* ---- multipart/form-data (RFC 7578 in RFC 2046's framing) ---------------- */

#define MP_MAX_BOUNDARY 70 /* RFC 2046 */

/* The first occurrence of n (nl > 0 bytes, no '\r' after its first) in h,
 * or NULL. Linear: a candidate fails before the next '\r' of h. */
static const char *find(const char *h, size_t hl, const char *n, size_t nl)
{
    for (const char *end = h + hl; (size_t)(end - h) >= nl;) {
        const char *c = memchr(h, n[0], (size_t)(end - h) - nl + 1);
        if (!c) return NULL;
        if (memcmp(c, n, nl) == 0) return c;
        h = c + 1;
    }
    return NULL;
}

/* The parameter name of a header value (after its first ';') decoded into
 * out (cap bytes; out NULL: only measured): a token or a quoted-string.
 * Returns its length, -1 when absent, -2 when malformed or (with out)
 * longer than cap. */
static long header_param(const char *v, size_t vl, const char *name, char *out, size_t cap)
{
    const char *p = memchr(v, ';', vl), *end = v + vl;
    size_t nl = strlen(name);
    while (p && p < end) {
        p++; /* past ';' */
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *k = p;
        while (p < end && *p != '=' && *p != ';') p++;
        size_t kl = (size_t)(p - k);
        while (kl && (k[kl - 1] == ' ' || k[kl - 1] == '\t')) kl--;
        if (p == end || *p == ';') continue; /* a parameter without a value */
        p++; /* past '=' */
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        int want = kl == nl && hd_strieq(k, kl, name);
        size_t ol = 0;
        if (p < end && *p == '"') {
            for (p++;; p++) {
                if (p == end) return -2; /* an unclosed quote */
                if (*p == '"') break;
                if (*p == '\\' && p + 1 < end) p++;
                if (want && out && ol == cap) return -2;
                if (want && out) out[ol] = *p;
                ol += want;
            }
            p++;
        } else {
            for (; p < end && *p != ';' && *p != ' ' && *p != '\t'; p++) {
                if (want && out && ol == cap) return -2;
                if (want && out) out[ol] = *p;
                ol += want;
            }
        }
        if (want) return (long)ol;
        p = memchr(p, ';', (size_t)(end - p));
    }
    return -1;
}

/* RFC 2046's bchars: what a boundary may hold (a space, but not last). */
static int boundary_ok(const char *b, size_t bl)
{
    static const char other[] = "'()+_,-./:=? ";
    if (!bl || bl > MP_MAX_BOUNDARY || b[bl - 1] == ' ') return 0;
    for (size_t i = 0; i < bl; i++) {
        char c = b[i];
        int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alnum && !memchr(other, c, sizeof other - 1)) return 0;
    }
    return 1;
}

/* One part's headers (h, hl bytes, lines ending in CRLF): the name of a
 * form-data part that is not a file into name (cap bytes). Returns the name's
 * length, -1 for a part to skip (no name, a file, a name too long to be a
 * field read here), -2 when malformed. */
static long part_name(const char *h, size_t hl, char *name, size_t cap)
{
    for (const char *end = h + hl; h < end;) {
        const char *eol = find(h, (size_t)(end - h), "\r\n", 2);
        size_t ll = eol ? (size_t)(eol - h) : (size_t)(end - h);
        const char *colon = memchr(h, ':', ll);
        if (!colon) return -2;
        if ((size_t)(colon - h) == 19 && hd_strieq(h, 19, "content-disposition")) {
            const char *v = colon + 1;
            size_t vl = ll - (size_t)(v - h);
            while (vl && (*v == ' ' || *v == '\t')) v++, vl--;
            if (vl < 9 || !hd_strieq(v, 9, "form-data")) return -1;
            long fl = header_param(v, vl, "filename", NULL, 0);
            long nl = header_param(v, vl, "name", NULL, 0);
            if (fl == -2 || nl == -2) return -2;
            if (fl >= 0 || nl < 0 || (size_t)nl > cap) return -1;
            return header_param(v, vl, "name", name, cap);
        }
        h += ll + 2;
    }
    return -1;
}

/* Parses a multipart/form-data body with the boundary in ct (the
 * Content-Type, ctl bytes) into a JSON object (form_field's fields), or
 * returns NULL with *err set when the type or the body is malformed. Reads
 * the body in place: memory is the object's. */
static json_t *multipart_to_object(const char *ct, size_t ctl, const char *body, size_t len,
                                   const char **err)
{
    char delim[4 + MP_MAX_BOUNDARY] = "\r\n--";
    long bl = header_param(ct, ctl, "boundary", delim + 4, MP_MAX_BOUNDARY);
    if (bl < 0 || !boundary_ok(delim + 4, (size_t)bl)) {
        *err = bl == -1 ? "multipart/form-data without a boundary parameter"
                        : "multipart/form-data with a malformed boundary parameter";
        return NULL;
    }
    size_t dl = 4 + (size_t)bl; /* CRLF "--" boundary */
    const char *end = body + len, *p;
    /* The first delimiter: at the start, or after a preamble. */
    if (len >= dl - 2 && memcmp(body, delim + 2, dl - 2) == 0) p = body + dl - 2;
    else if ((p = find(body, len, delim, dl))) p += dl;
    else {
        *err = "malformed multipart body: no boundary";
        return NULL;
    }
    form f = {json_object(), NULL};
    if (!f.o) return NULL;
    for (;;) {
        /* p: just past a delimiter. */
        if (end - p >= 2 && p[0] == '-' && p[1] == '-') return form_end(&f); /* the close */
        while (p < end && (*p == ' ' || *p == '\t')) p++; /* transport padding */
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n') {
            *err = "malformed multipart body: a boundary line does not end with CRLF";
            break;
        }
        p += 2;
        const char *h = p, *content;
        size_t hl = 0;
        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') {
            content = p + 2; /* no headers */
        } else {
            const char *he = find(p, (size_t)(end - p), "\r\n\r\n", 4);
            if (!he) {
                *err = "malformed multipart body: a part's headers do not end";
                break;
            }
            hl = (size_t)(he - h) + 2;
            content = he + 4;
        }
        const char *next = find(content, (size_t)(end - content), delim, dl);
        if (!next) {
            *err = "malformed multipart body: no closing boundary";
            break;
        }
        char name[10]; /* the longest field read, "channel[]" */
        long nl = part_name(h, hl, name, sizeof name);
        if (nl == -2) {
            *err = "malformed multipart body: a part's header line";
            break;
        }
        if (nl >= 0) form_field(&f, name, (size_t)nl, content, (size_t)(next - content));
        p = next + dl;
    }
    json_decref(form_end(&f));
    return NULL;
}

/* A push whose publish hooks may wait: answered once every publish went
 * out (the answer is deferred meanwhile). Its publishes go out in the
 * push's order whichever hook answers first: a result waits for those
 * before it. */
typedef struct publishing publishing;

typedef struct pushing {
    hd_http_wait w;              /* (w.now: the request is still being handled) */
    hd_api *api;
    size_t pending;              /* publishes not yet out (or dropped) */
    publishing *head, *tail;     /* those, in the push's order */
    hd_str out;                  /* the answer */
} pushing;

struct publishing {
    publishing *next;
    pushing *w;
    int answered, verdict;       /* the hook's result, once answered */
    char *event, *data;          /* (taken from the result) */
    size_t tlen;
    char topic[];
};

static void push_answered(void *ud, hd_conn *c, hd_http_req *r)
{
    pushing *w = ud;
    hd_api_respond_json(c, r, 200, &w->out);
}

/* A publish hook answered (hd_hook_done): its message, and those after it
 * that were answered already, go out (or are dropped); the last one
 * answers the push. */
static void published(void *ud, hd_hook_result *res)
{
    publishing *q = ud;
    pushing *w = q->w;
    hd_api *api = w->api;
    q->answered = 1;
    q->verdict = res->verdict;
    q->event = res->event, q->data = res->data;
    res->event = res->data = NULL;
    while ((q = w->head) && q->answered) {
        if (!(w->head = q->next)) w->tail = NULL;
        if (q->verdict && q->event && q->data)
            hd_publish(api->eng, q->topic, q->tlen, q->event, strlen(q->event), q->data,
                       strlen(q->data));
        else
            api->st->publishes++;
        free(q->event);
        free(q->data);
        free(q);
        w->pending--;
    }
    if (w->pending || w->w.now) return;
    hd_http_wait_end(&w->w, push_answered, w); /* (a client gone meanwhile gets nothing) */
    hd_str_free(&w->out);
    free(w);
}

/* Publishes on topic t: through the hooks that may wait when w is set. */
static void publish_one(hd_api *api, pushing *w, const char *t, size_t tl, const char *ev,
                        size_t elen, const char *data, size_t dlen)
{
    publishing *q = w ? calloc(1, sizeof *q + tl + 1) : NULL;
    if (!q) { /* (without w, or memory: the hooks that cannot wait) */
        hd_api_publish(api, t, tl, ev, elen, data, dlen);
        return;
    }
    q->w = w;
    q->tlen = tl;
    memcpy(q->topic, t, tl);
    if (w->tail) w->tail->next = q;
    else w->head = q;
    w->tail = q;
    w->pending++;
    hd_hook_publish_start(api->sc, t, tl, ev, data, published, q);
}

static void publish_push(hd_api *api, const push *p, hd_str *out, pushing *w)
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
        publish_one(api, w, t, tl, ev, elen, data, dlen);
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

/* The context of a push's publishes when publish hooks may wait, else NULL. */
static pushing *pushing_new(hd_api *api, hd_conn *c, hd_http_req *r)
{
    pushing *w = hd_script_has(api->sc, HD_HOOK_PUBLISH) ? calloc(1, sizeof *w) : NULL;
    if (w) {
        hd_http_wait_init(&w->w, c, r);
        w->api = api;
    }
    return w;
}

/* Answers a push whose publishes all started (out: its answer, taken when
 * one waits: the last to be answered answers then). */
static void answer_push(hd_conn *c, hd_http_req *r, pushing *w, hd_str *out)
{
    if (w && w->pending) {
        w->out = *out;
        *out = (hd_str)HD_STR_INIT;
        hd_http_wait_later(&w->w);
        return;
    }
    hd_api_respond_json(c, r, 200, out);
    free(w);
}

/* A binary push (Content-Type: application/octet-stream): channel (or
 * channel[]) and event in the query, the body the bytes, published as a
 * V2 binary broadcast on every node (hd_publish_binary: no publish hook,
 * no shaping, no history). */
static void handle_binary_push(hd_api *api, hd_conn *c, hd_http_req *r)
{
    json_t *q = form_to_object(r->query, r->query_len);
    if (!q) {
        hd_http_error(c, r, 500, "out of memory", NULL, 1);
        return;
    }
    json_object_set_new(q, "data", json_true()); /* (the body) */
    push p;
    const char *err = push_from_object(q, &p);
    json_decref(q);
    if (err) {
        hd_http_error(c, r, 422, strcmp(err, INVALID_PUSH) == 0 ? INVALID_BINARY_PUSH : err, NULL, 0);
        return;
    }
    size_t i, elen = json_string_length(p.event);
    json_t *ch;
    int fits = elen <= HD_PHX_BIN_MAX;
    json_array_foreach(p.channels, i, ch) fits = fits && json_string_length(ch) <= HD_PHX_BIN_MAX;
    if (!fits) {
        push_clear(&p);
        hd_http_error(c, r, 422, "a binary push's channel and event are at most 255 bytes each",
                      NULL, 0);
        return;
    }
    hd_str out = HD_STR_INIT;
    hd_str_adds(&out, "{\"channel\":[");
    json_array_foreach(p.channels, i, ch)
    {
        const char *t = json_string_value(ch);
        size_t tl = json_string_length(ch);
        hd_publish_binary(api->eng, t, tl, json_string_value(p.event), elen, r->body.p, r->body.len);
        if (i) hd_str_addc(&out, ',');
        hd_str_add_json(&out, t, tl);
    }
    hd_str_printf(&out, "],\"bytes\":%zu,\"event\":", r->body.len);
    hd_str_add_json(&out, json_string_value(p.event), elen);
    hd_str_addc(&out, '}');
    hd_api_respond_json(c, r, 200, &out);
    hd_str_free(&out);
    push_clear(&p);
}

static void handle_push(void *ud, hd_conn *c, hd_http_req *r)
{
    hd_api *api = ud;
    size_t ctl = 0;
    const char *ct = hd_http_header(r, "content-type", &ctl);
    const char *b = r->body.p;
    size_t bl = r->body.len;
    size_t skip = 0;
    while (skip < bl && (b[skip] == ' ' || b[skip] == '\n' || b[skip] == '\r' || b[skip] == '\t'))
        skip++;
    enum { FORM, JSON, MULTIPART } kind;
    if (ct && ctl >= 24 && hd_strieq(ct, 24, "application/octet-stream") &&
        (ctl == 24 || ct[24] == ';' || ct[24] == ' ' || ct[24] == '\t')) {
        handle_binary_push(api, c, r);
        return;
    }
    if (ct && ctl >= 16 && hd_strieq(ct, 16, "application/json")) kind = JSON;
    else if (ct && ctl >= 33 && hd_strieq(ct, 33, "application/x-www-form-urlencoded")) kind = FORM;
    else if (ct && ctl >= 19 && hd_strieq(ct, 19, "multipart/form-data") &&
             (ctl == 19 || ct[19] == ';' || ct[19] == ' ' || ct[19] == '\t'))
        kind = MULTIPART;
    else if (!ct) kind = skip < bl && (b[skip] == '{' || b[skip] == '[') ? JSON : FORM;
    else {
        hd_http_error(c, r, 415, "unsupported content type: use application/json, "
                                 "application/x-www-form-urlencoded, multipart/form-data "
                                 "or application/octet-stream",
                      NULL, 0);
        return;
    }

    json_t *doc;
    if (kind == MULTIPART) {
        static const char oom[] = "out of memory";
        const char *err = oom;
        doc = multipart_to_object(ct, ctl, b, bl, &err);
        if (!doc) {
            hd_http_error(c, r, err == oom ? 500 : 400, err, NULL, err == oom);
            return;
        }
    } else if (kind == JSON) {
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
            hd_api_respond_json(c, r, 422, &out);
        } else {
            pushing *w = pushing_new(api, c, r);
            hd_str_addc(&out, '[');
            for (size_t i = 0; i < n; i++) {
                if (i) hd_str_addc(&out, ',');
                publish_push(api, &items[i], &out, w);
            }
            hd_str_addc(&out, ']');
            answer_push(c, r, w, &out);
        }
        for (size_t i = 0; items && i < n; i++) push_clear(&items[i]);
        free(items);
    } else {
        push p;
        const char *err = push_from_object(doc, &p);
        if (err) {
            hd_http_error(c, r, 422, err, NULL, 0);
        } else {
            pushing *w = pushing_new(api, c, r);
            publish_push(api, &p, &out, w);
            answer_push(c, r, w, &out);
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

/* The answer of GET /api/topics/<t>. An untracked topic always answers
 * "listening" (PushEx's rule). */
static void topic_answer(hd_conn *c, hd_http_req *r, const char *t, size_t tl, size_t n,
                         const hd_topic_policy *p, int listening)
{
    hd_str out = HD_STR_INIT;
    hd_str_adds(&out, "{\"topic\":");
    hd_str_add_json(&out, t, tl);
    hd_str_printf(&out, ",\"subscribers\":%zu,\"listening\":%s", n,
                  listening || n || !p->tracked ? "true" : "false");
    hd_str_printf(&out,
                  ",\"policy\":{\"tracked\":%s,\"presence\":%s,\"throttle_ms\":%u,"
                  "\"debounce_ms\":%u,\"max_wait_ms\":%u,\"coalesce\":\"%s\","
                  "\"max_queue_bytes\":%u,\"on_overflow\":\"%s\",\"history_size\":%u,"
                  "\"history_ttl_ms\":%u,\"recover_max\":%u}",
                  p->tracked ? "true" : "false", p->presence ? "true" : "false", p->throttle_ms,
                  p->debounce_ms, p->max_wait_ms,
                  p->coalesce == HD_COALESCE_LATEST ? "latest" : "none", p->max_queue_bytes,
                  p->on_overflow == HD_OVERFLOW_DROP_OLDEST ? "drop_oldest" : "close",
                  p->history_size, p->history_ttl_ms, p->recover_max);
    hd_str_addc(&out, '}');
    hd_api_respond_json(c, r, 200, &out);
    hd_str_free(&out);
}

/* A topic question waiting for Redis: the connection is found again by id
 * (it may have gone meanwhile). */
typedef struct topic_ask {
    hd_http_wait w;
    long long nodes;             /* Redis's answer */
    hd_topic_policy policy;
    size_t len;
    char topic[];
} topic_ask;

static void numsub_answered(void *ud, hd_conn *c, hd_http_req *r)
{
    topic_ask *q = ud;
    topic_answer(c, r, q->topic, q->len, 0, &q->policy, q->nodes > 0);
}

static void on_numsub(void *ud, long long nodes)
{
    topic_ask *q = ud;
    q->nodes = nodes;
    hd_http_wait_end(&q->w, numsub_answered, q); /* (a client gone meanwhile gets nothing) */
    free(q);
}

static void handle_topic(void *ud, hd_conn *c, hd_http_req *r)
{
    hd_api *api = ud;
    size_t tl;
    char *t = path_suffix(c, r, "/api/topics/", &tl);
    if (!t) return;
    hd_topic *tp = hd_topics_find(&api->eng->topics, t, tl);
    size_t n = tp ? tp->nsubs : 0;
    hd_topic_policy fresh;
    const hd_topic_policy *p = tp ? hd_topic_policy_of(&api->eng->topics, tp) : &fresh;
    if (!tp) hd_policy_for(&api->eng->pol, t, tl, &fresh);
    /* Nobody here: in a cluster, ask Redis whether another node listens
     * (answered later; with the link down, this node's view). */
    topic_ask *q = !n && p->tracked && api->cluster ? malloc(sizeof *q + tl) : NULL;
    if (q) {
        hd_http_wait_init(&q->w, c, r);
        q->policy = *p;
        q->len = tl;
        memcpy(q->topic, t, tl);
        if (hd_cluster_numsub(api->cluster, t, tl, on_numsub, q) == 0) {
            hd_http_wait_later(&q->w);
            free(t);
            return;
        }
        free(q);
    }
    topic_answer(c, r, t, tl, n, p, 0);
    free(t);
}

static void handle_presence(void *ud, hd_conn *c, hd_http_req *r)
{
    hd_api *api = ud;
    size_t tl;
    char *t = path_suffix(c, r, "/api/presence/", &tl);
    if (!t) return;
    hd_str out = HD_STR_INIT;
    hd_presence_state(&api->eng->pres, hd_topics_find(&api->eng->topics, t, tl), &out);
    hd_api_respond_json(c, r, 200, &out);
    hd_str_free(&out);
    free(t);
}

static void method_not_allowed(hd_conn *c, hd_http_req *r, const char *allow)
{
    char h[64];
    snprintf(h, sizeof h, "Allow: %s\r\n", allow);
    hd_http_error(c, r, 405, "method not allowed", h, 0);
}

void hd_api_init(hd_api *api, const hd_config *cfg, hd_stats *st, hd_engine *eng,
                 hd_scripts *sc, hd_channel_ctx *ch)
{
    memset(api, 0, sizeof *api);
    api->cfg = cfg;
    api->st = st;
    api->eng = eng;
    api->sc = sc;
    api->ch = ch;
    hd_api_route(api, "/api/push", HD_ROUTE_POST | HD_ROUTE_AUTH, handle_push, api);
    /* (the two questions are also the admin listener's: its status page asks them) */
    hd_api_route(api, "/api/topics/", HD_ROUTE_GET | HD_ROUTE_PREFIX | HD_ROUTE_AUTH | HD_ROUTE_NODE,
                 handle_topic, api);
    hd_api_route(api, "/api/presence/", HD_ROUTE_GET | HD_ROUTE_PREFIX | HD_ROUTE_AUTH | HD_ROUTE_NODE,
                 handle_presence, api);
}

int hd_api_route(hd_api *api, const char *path, unsigned flags, hd_route_fn fn, void *ud)
{
    if (api->nroutes >= HD_API_MAX_ROUTES) return HD_ELIMIT;
    api->routes[api->nroutes++] = (hd_route){path, flags, fn, ud};
    return 0;
}

static int matches(const hd_route *rt, const hd_http_req *r)
{
    size_t n = strlen(rt->path);
    if (rt->flags & HD_ROUTE_PREFIX) return r->path_len > n && memcmp(r->path, rt->path, n) == 0;
    return r->path_len == n && memcmp(r->path, rt->path, n) == 0;
}

static int is_path_of(char *const *paths, size_t n, const hd_http_req *r)
{
    for (size_t i = 0; i < n; i++) {
        const char *m = paths[i];
        if (strlen(m) == r->path_len && memcmp(m, r->path, r->path_len) == 0) return 1;
    }
    return 0;
}

void hd_api_dispatch(void *ud, hd_conn *c, hd_http_req *r, int upgrade)
{
    hd_api *api = ud;
    /* The admin listener serves the node's routes only; with one, the
     * public port no longer serves the private ones. */
    unsigned skip = c->flags & HD_CF_ADMIN ? 0 : api->cfg->admin_host ? HD_ROUTE_PRIVATE : 0;
    unsigned need = c->flags & HD_CF_ADMIN ? HD_ROUTE_NODE : 0;
    if (!need && is_path_of(api->cfg->ws_paths, api->cfg->nmounts, r)) {
        hd_channel_handshake(api->ch, c, r, upgrade);
        return;
    }
    if (!need && is_path_of(api->cfg->lp_paths, api->cfg->nlp_paths, r)) {
        hd_channel_longpoll(api->ch, c, r);
        return;
    }
    for (size_t i = 0; i < api->nroutes; i++) {
        const hd_route *rt = &api->routes[i];
        if ((rt->flags & skip) || (rt->flags & need) != need || !matches(rt, r)) continue;
        int get = r->method == HTTP_GET || r->method == HTTP_HEAD;
        if ((rt->flags & HD_ROUTE_GET) && !get) return method_not_allowed(c, r, "GET, HEAD");
        if ((rt->flags & HD_ROUTE_POST) && r->method != HTTP_POST)
            return method_not_allowed(c, r, "POST");
        if (rt->flags & HD_ROUTE_AUTH) return authorize(api, rt, c, r);
        rt->fn(rt->ud, c, r);
        return;
    }
    hd_http_error(c, r, 404, "not found", NULL, 0);
}
