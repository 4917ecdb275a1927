#include "ws.h"
#include "err.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

void hd_ws_parser_init(hd_ws_parser *p, size_t max_msg)
{
    memset(p, 0, sizeof *p);
    p->max_msg = max_msg > UINT32_MAX ? UINT32_MAX : (uint32_t)max_msg;
}

void hd_ws_parser_free(hd_ws_parser *p)
{
    free(p->msg);
    p->msg = NULL;
    p->msg_len = 0;
    free(p->ctl);
    p->ctl = NULL;
}

int hd_ws_parser_pending(const hd_ws_parser *p)
{
    return p->msg || p->msg_opcode || p->in_payload || p->hdr_len;
}

static int is_control(int op) { return op >= 0x8; }

static void unmask(uint8_t *d, size_t n, const uint8_t mask[4], uint64_t off)
{
    for (size_t i = 0; i < n; i++) d[i] ^= mask[(off + i) & 3];
}

/* Validates a close payload: empty, or a 2-byte code allowed on the wire
 * followed by UTF-8 text. */
static int check_close(const uint8_t *d, size_t n)
{
    if (n == 0) return 0;
    if (n == 1) return HD_EPROTO;
    unsigned code = (unsigned)d[0] << 8 | d[1];
    int ok = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
             (code >= 3000 && code <= 4999);
    if (!ok) return HD_EPROTO;
    return hd_utf8_valid(d + 2, n - 2) ? 0 : HD_EUTF8;
}

/* Checks a complete header in p->hdr; sets up the frame. */
static int start_frame(hd_ws_parser *p)
{
    uint8_t b0 = p->hdr[0], b1 = p->hdr[1];
    if (b0 & 0x70) return HD_EPROTO; /* RSV bits: no extension was negotiated */
    if (!(b1 & 0x80)) return HD_EPROTO; /* client frames must be masked */
    int op = b0 & 0x0F;
    p->fin = (b0 & 0x80) != 0;
    p->opcode = (uint8_t)op;
    uint64_t len = b1 & 0x7F;
    size_t pos = 2;
    if (len == 126) {
        len = (uint64_t)p->hdr[2] << 8 | p->hdr[3];
        pos = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++) len = len << 8 | p->hdr[2 + i];
        if (len >> 63) return HD_EPROTO;
        pos = 10;
    }
    memcpy(p->mask, p->hdr + pos, 4);
    switch (op) {
    case HD_WS_CONT:
        if (!p->msg_opcode) return HD_EPROTO;
        break;
    case HD_WS_TEXT:
    case HD_WS_BINARY:
        if (p->msg_opcode) return HD_EPROTO;
        break;
    case HD_WS_CLOSE:
    case HD_WS_PING:
    case HD_WS_PONG:
        if (!p->fin || len > 125) return HD_EPROTO;
        break;
    default:
        return HD_EPROTO;
    }
    if (!is_control(op) && len + p->msg_len > p->max_msg) return HD_ETOOBIG;
    p->frame_len = len;
    p->remaining = len;
    p->in_payload = 1;
    p->ctl_len = 0;
    return 0;
}

/* Delivers a finished data message held in (d, n). */
static int deliver_message(hd_ws_parser *p, int op, uint8_t *d, size_t n,
                           const hd_ws_callbacks *cb, void *ud)
{
    if (op == HD_WS_TEXT && !hd_utf8_valid(d, n)) return HD_EUTF8;
    return cb->on_message(ud, op, d, n);
}

static int deliver_control(int op, uint8_t *d, size_t n, const hd_ws_callbacks *cb, void *ud)
{
    if (op == HD_WS_CLOSE) {
        int rc = check_close(d, n);
        if (rc) return rc;
    }
    return cb->on_control(ud, op, d, n);
}

/* Bytes of the header needed, given what has arrived so far. */
static size_t header_need(const hd_ws_parser *p)
{
    if (p->hdr_len < 2) return 2;
    uint8_t l = p->hdr[1] & 0x7F;
    /* An unmasked frame is refused at once (start_frame): no mask to wait for. */
    return 2 + (l == 126 ? 2 : l == 127 ? 8 : 0) + ((p->hdr[1] & 0x80) ? 4 : 0);
}

int hd_ws_parse(hd_ws_parser *p, uint8_t *data, size_t len, const hd_ws_callbacks *cb, void *ud,
                size_t *used)
{
    size_t i = 0;
    int rc = 0;
    while (i < len || (p->in_payload && p->remaining == 0)) {
        if (!p->in_payload) {
            size_t need = header_need(p);
            while (p->hdr_len < need && i < len) {
                p->hdr[p->hdr_len++] = data[i++];
                need = header_need(p);
            }
            if (p->hdr_len < need) break;
            p->hdr_len = 0;
            if ((rc = start_frame(p)) != 0) goto out;
            continue;
        }
        /* In a payload. */
        size_t avail = len - i;
        size_t take = p->remaining < avail ? (size_t)p->remaining : avail;
        uint64_t off = p->frame_len - p->remaining;
        uint8_t *d = data + i;
        unmask(d, take, p->mask, off);
        i += take;
        p->remaining -= take;
        int done = p->remaining == 0;

        if (is_control(p->opcode)) {
            if (done && p->ctl_len == 0) {
                p->in_payload = 0;
                if ((rc = deliver_control(p->opcode, d, take, cb, ud)) != 0) goto out;
            } else {
                if (!p->ctl && !(p->ctl = malloc(125))) {
                    rc = HD_ENOMEM;
                    goto out;
                }
                memcpy(p->ctl + p->ctl_len, d, take);
                p->ctl_len = (uint8_t)(p->ctl_len + take);
                if (done) {
                    /* The buffer goes with the frame: taken off p first, as
                     * the callback may free the parser. */
                    uint8_t *buf = p->ctl;
                    p->ctl = NULL;
                    p->in_payload = 0;
                    rc = deliver_control(p->opcode, buf, p->ctl_len, cb, ud);
                    free(buf);
                    if (rc != 0) goto out;
                }
            }
            continue;
        }

        int op = p->opcode == HD_WS_CONT ? p->msg_opcode : p->opcode;
        if (done && p->fin && !p->msg && off == 0) {
            /* The whole message is in this read: no copy. */
            p->in_payload = 0;
            p->msg_opcode = 0;
            if ((rc = deliver_message(p, op, d, take, cb, ud)) != 0) goto out;
            continue;
        }
        if (take) {
            uint8_t *m = realloc(p->msg, p->msg_len + take + (p->msg ? 0 : 1));
            if (!m) {
                rc = HD_ENOMEM;
                goto out;
            }
            p->msg = m;
            memcpy(p->msg + p->msg_len, d, take);
            p->msg_len += take;
        } else if (!p->msg) {
            p->msg = malloc(1);
            if (!p->msg) {
                rc = HD_ENOMEM;
                goto out;
            }
        }
        if (!done) continue;
        p->in_payload = 0;
        if (!p->fin) {
            p->msg_opcode = (uint8_t)op;
            continue;
        }
        uint8_t *m = p->msg;
        size_t n = p->msg_len;
        p->msg = NULL;
        p->msg_len = 0;
        p->msg_opcode = 0;
        rc = deliver_message(p, op, m, n, cb, ud);
        free(m);
        if (rc) goto out;
    }
out:
    if (used) *used = i;
    return rc;
}

uint16_t hd_ws_close_code(int err)
{
    switch (err) {
    case HD_ETOOBIG: return 1009;
    case HD_EUTF8: return 1007;
    case HD_EBINARY: return 1003;
    case HD_ENOMEM: return 1011;
    default: return 1002;
    }
}

size_t hd_ws_header(uint8_t out[10], int opcode, uint64_t len)
{
    out[0] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++) out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

hd_buf *hd_ws_frame(int opcode, const void *payload, size_t len)
{
    uint8_t h[10];
    size_t hl = hd_ws_header(h, opcode, len);
    hd_buf *b = hd_buf_new(hl + len);
    if (!b) return NULL;
    memcpy(b->data, h, hl);
    if (len) memcpy(b->data + hl, payload, len);
    return b;
}

const uint8_t *hd_ws_frame_payload(const hd_buf *f, int *opcode, size_t *len)
{
    size_t n = f->data[1] & 0x7F, h = n == 126 ? 4 : n == 127 ? 10 : 2;
    *opcode = f->data[0] & 0x0F;
    *len = f->len - h;
    return f->data + h;
}

hd_buf *hd_ws_close_frame(uint16_t code, const char *reason)
{
    uint8_t pl[125];
    size_t n = 0;
    if (code) {
        pl[0] = (uint8_t)(code >> 8);
        pl[1] = (uint8_t)code;
        n = 2;
        size_t rl = reason ? strlen(reason) : 0;
        if (rl > 123) {
            rl = 123; /* cut on a character boundary: back over continuation bytes */
            while (rl > 0 && ((uint8_t)reason[rl] & 0xC0) == 0x80) rl--;
        }
        if (rl) memcpy(pl + 2, reason, rl);
        n += rl;
    }
    return hd_ws_frame(HD_WS_CLOSE, pl, n);
}

int hd_ws_accept_key(const char *key, size_t len, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    uint8_t raw[32];
    if (len != 24 || hd_base64_decode(key, len, raw) != 16) return -1;
    char cat[24 + sizeof guid];
    memcpy(cat, key, 24);
    memcpy(cat + 24, guid, sizeof guid - 1);
    uint8_t dig[20];
    hd_sha1(cat, 24 + sizeof guid - 1, dig);
    hd_base64_encode(dig, 20, out);
    return 0;
}
