#include "phx.h"
#include "util.h"
#include "ws.h"

#include <string.h>

/* Frames the text in s and frees s. */
static hd_buf *frame(hd_str *s)
{
    hd_buf *f = s->oom ? NULL : hd_ws_frame(HD_WS_TEXT, s->p, s->len);
    hd_str_free(s);
    return f;
}

/* [<a>,<b>,<topic>, with a and b JSON strings or null. */
static void head(hd_str *s, const char *a, const char *b, const char *topic, size_t tlen)
{
    hd_str_addc(s, '[');
    hd_str_add_json_or_null(s, a);
    hd_str_addc(s, ',');
    hd_str_add_json_or_null(s, b);
    hd_str_addc(s, ',');
    if (topic) hd_str_add_json(s, topic, tlen);
    else hd_str_adds(s, "null");
}

hd_buf *hd_phx_msg(const char *topic, size_t tlen, const char *event, size_t elen,
                   const char *data_json, size_t dlen)
{
    hd_str s = HD_STR_INIT;
    head(&s, NULL, NULL, topic, tlen);
    hd_str_adds(&s, ",\"msg\",{\"data\":");
    hd_str_add(&s, data_json, dlen);
    hd_str_adds(&s, ",\"event\":");
    hd_str_add_json(&s, event, elen);
    hd_str_adds(&s, "}]");
    return frame(&s);
}

hd_buf *hd_phx_msg_at(const hd_buf *msg, uint64_t offset)
{
    /* The text behind a server frame's header (2, 4 or 10 bytes: unmasked). */
    uint8_t l7 = msg->len >= 2 ? msg->data[1] & 0x7f : 0;
    size_t hl = l7 == 127 ? 10 : l7 == 126 ? 4 : 2;
    if (msg->len < hl + 2 || msg->data[msg->len - 2] != '}' || msg->data[msg->len - 1] != ']') return NULL;
    hd_str s = HD_STR_INIT;
    hd_str_add(&s, msg->data + hl, msg->len - hl - 2);
    hd_str_printf(&s, ",\"offset\":%llu}]", (unsigned long long)offset);
    return frame(&s);
}

/* The end of the JSON value starting at p (text we encoded, so valid):
 * a string, an array or object (strings inside may hold brackets), or a
 * scalar up to the next ',' ']' or '}'. */
static const uint8_t *skip_value(const uint8_t *p, const uint8_t *end)
{
    int depth = 0, in_str = 0;
    for (; p < end; p++) {
        uint8_t ch = *p;
        if (in_str) {
            if (ch == '\\') p++;
            else if (ch == '"') {
                in_str = 0;
                if (depth == 0) return p + 1;
            }
        } else if (ch == '"') {
            in_str = 1;
        } else if (ch == '[' || ch == '{') {
            depth++;
        } else if (ch == ']' || ch == '}') {
            if (depth == 0) return p;
            if (--depth == 0) return p + 1;
        } else if (ch == ',' && depth == 0) {
            return p;
        }
    }
    return NULL;
}

hd_buf *hd_phx_v1(const hd_buf *v2)
{
    uint8_t l7 = v2->len >= 2 ? v2->data[1] & 0x7f : 0;
    size_t hl = l7 == 127 ? 10 : l7 == 126 ? 4 : 2;
    if (v2->len < hl + 2 || v2->data[hl] != '[') return NULL;
    const uint8_t *p = v2->data + hl + 1, *end = v2->data + v2->len;
    const uint8_t *el[5], *el_end[5];
    for (int i = 0; i < 5; i++) {
        const uint8_t *e = skip_value(p, end);
        if (!e || e == p || e >= end || *e != (i < 4 ? ',' : ']')) return NULL;
        el[i] = p;
        el_end[i] = e;
        p = e + 1;
    }
    static const char *const keys[] = {"{\"topic\":", ",\"event\":", ",\"payload\":", ",\"ref\":"};
    static const int order[] = {2, 3, 4, 1};
    hd_str s = HD_STR_INIT;
    for (int i = 0; i < 4; i++) {
        hd_str_adds(&s, keys[i]);
        hd_str_add(&s, (const char *)el[order[i]], (size_t)(el_end[order[i]] - el[order[i]]));
    }
    hd_str_addc(&s, '}');
    return frame(&s);
}

hd_buf *hd_phx_reply(const char *join_ref, const char *ref, const char *topic,
                     const char *status, const char *response_json)
{
    hd_str s = HD_STR_INIT;
    head(&s, join_ref, ref, topic, topic ? strlen(topic) : 0);
    hd_str_adds(&s, ",\"phx_reply\",{\"status\":\"");
    hd_str_adds(&s, status);
    hd_str_adds(&s, "\",\"response\":");
    hd_str_adds(&s, response_json);
    hd_str_adds(&s, "}]");
    return frame(&s);
}

hd_buf *hd_phx_reply_error(const char *join_ref, const char *ref, const char *topic,
                           const char *reason)
{
    hd_str r = HD_STR_INIT;
    hd_str_adds(&r, "{\"reason\":");
    hd_str_add_json(&r, reason, strlen(reason));
    hd_str_addc(&r, '}');
    hd_buf *f = r.oom ? NULL : hd_phx_reply(join_ref, ref, topic, "error", r.p);
    hd_str_free(&r);
    return f;
}

hd_buf *hd_phx_close(const char *join_ref, const char *topic)
{
    hd_str s = HD_STR_INIT;
    head(&s, join_ref, join_ref, topic, topic ? strlen(topic) : 0);
    hd_str_adds(&s, ",\"phx_close\",{}]");
    return frame(&s);
}

hd_buf *hd_phx_presence_state(const char *join_ref, const char *topic, size_t tlen,
                              const char *state_json, size_t slen)
{
    hd_str s = HD_STR_INIT;
    head(&s, join_ref, NULL, topic, tlen);
    hd_str_adds(&s, ",\"presence_state\",");
    hd_str_add(&s, state_json, slen);
    hd_str_addc(&s, ']');
    return frame(&s);
}

hd_buf *hd_phx_presence_diff(const char *topic, size_t tlen, const char *diff_json, size_t dlen)
{
    hd_str s = HD_STR_INIT;
    head(&s, NULL, NULL, topic, tlen);
    hd_str_adds(&s, ",\"presence_diff\",");
    hd_str_add(&s, diff_json, dlen);
    hd_str_addc(&s, ']');
    return frame(&s);
}

hd_buf *hd_phx_broadcast_binary(const char *topic, size_t tlen, const char *event, size_t elen,
                                const void *data, size_t dlen)
{
    if (tlen > HD_PHX_BIN_MAX || elen > HD_PHX_BIN_MAX) return NULL;
    hd_str s = HD_STR_INIT;
    uint8_t head[3] = {2, (uint8_t)tlen, (uint8_t)elen};
    hd_str_add(&s, head, sizeof head);
    hd_str_add(&s, topic, tlen);
    hd_str_add(&s, event, elen);
    hd_str_add(&s, data, dlen);
    hd_buf *f = s.oom ? NULL : hd_ws_frame(HD_WS_BINARY, s.p, s.len);
    hd_str_free(&s);
    return f;
}

/* A string of the header: UTF-8 without NUL. */
static int bin_string(const uint8_t *p, size_t n)
{
    return !memchr(p, 0, n) && hd_utf8_valid(p, n);
}

const char *hd_phx_parse_binary(const uint8_t *p, size_t len, hd_phx_bin *m)
{
    if (len < 5) return "truncated header";
    if (p[0] != 0) return "unknown kind (a client sends pushes, kind 0)";
    m->jrlen = p[1];
    m->reflen = p[2];
    m->tlen = p[3];
    m->elen = p[4];
    size_t head = 5 + m->jrlen + m->reflen + m->tlen + m->elen;
    if (head > len) return "truncated header";
    m->join_ref = p + 5;
    m->ref = m->join_ref + m->jrlen;
    m->topic = m->ref + m->reflen;
    m->event = m->topic + m->tlen;
    m->payload = p + head;
    m->plen = len - head;
    if (!m->tlen || !m->elen) return "topic or event empty";
    if (!bin_string(m->join_ref, m->jrlen) || !bin_string(m->ref, m->reflen) ||
        !bin_string(m->topic, m->tlen) || !bin_string(m->event, m->elen))
        return "a header string that is not UTF-8 without NUL";
    return NULL;
}

const char *hd_phx_parse_broadcast(const uint8_t *p, size_t len, hd_phx_bin *m)
{
    if (len < 3) return "truncated header";
    if (p[0] != 2) return "not a broadcast (kind 2)";
    memset(m, 0, sizeof *m);
    m->tlen = p[1];
    m->elen = p[2];
    size_t head = 3 + m->tlen + m->elen;
    if (head > len) return "truncated header";
    m->topic = p + 3;
    m->event = m->topic + m->tlen;
    m->payload = p + head;
    m->plen = len - head;
    return NULL;
}
