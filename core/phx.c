#include "phx.h"
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
