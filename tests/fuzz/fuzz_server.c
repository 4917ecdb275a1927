/* Fuzz target: a real server in this process, reached over loopback TCP.
 *
 * The first input byte picks how the rest reaches the server:
 *   0  raw bytes as HTTP (llhttp, routing, every API route)
 *   1  a valid WebSocket handshake, then the rest as raw client frames
 *   2  the handshake, then each '\n'-separated piece as one masked text
 *      frame (the Phoenix message parser and join/leave/push handling)
 *   3  POST /api/push with Content-Type: application/json, the rest as body
 *   4  POST /api/push as a form (application/x-www-form-urlencoded)
 *   5  GET <the rest, up to a blank> (paths: /api/topics/..., query strings)
 *   6, 7  as 2 over a handshake with no vsn: the V1 serializer's objects
 *   8  POST <a live long-poll session's token>, the rest as an ndjson body
 *      (JSON lines, base64 lines: the batch splitter, binary messages)
 *   9  the same with Content-Type: text/plain (the whole body one message)
 *   10 GET /socket/longpoll?vsn=2.0.0&token=<the rest, up to a blank>
 *      (forged tokens; an empty one opens a session)
 * (the mode is the first byte % 16; 11..15 are 3..7.)
 * The client half-closes and reads to EOF. A subscriber that stays
 * connected has joined a few topics (plain, presence, shaped, drop_oldest),
 * so pushes fan out and presence diffs are built.
 *
 * Oracles, checked after every input:
 *  - everything the server sent to either client is well-formed: HTTP/1.1
 *    responses with a correct Content-Length and, for JSON, a body jansson
 *    parses; after a 101, server frames only (FIN, unmasked, minimal
 *    length, text frames valid UTF-8 JSON arrays of 5 or V1 objects of
 *    exactly topic, event, payload and ref, binary frames V2 binary
 *    broadcasts, close frames with a valid code and UTF-8 reason, nothing
 *    after a close);
 *  - the server ends with no connection but the subscriber's (bounded
 *    wait): no leak, no connection left hanging;
 *  - a long-poll session the harness keeps (joined to a few topics) is
 *    polled when its queue fills (or now and then): the answer is 200 with
 *    a JSON body whose messages are Phoenix messages as text;
 *  - nothing was logged at warn or error: bad client input logs at info or
 *    below (core/log.h).
 * An input that drains the server (POST /admin/drain) restarts it. */
#define _GNU_SOURCE /* memmem, open_memstream */
#include "config.h"
#include "log.h"
#include "longpoll.h"
#include "script.h"
#include "server.h"
#include "util.h"

#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

static uv_loop_t loop;
static uv_timer_t ticker;
static hd_config cfg;
static hd_server srv;
static int srv_stopped;

static const char config_text[] =
    "listen = { host = '127.0.0.1', port = 0 }\n"
    "limits = { max_message_bytes = 8192, max_body_bytes = 16384, max_header_bytes = 4096,\n"
    "           max_url_bytes = 1024, max_topics_per_socket = 8, send_queue_bytes = 65536 }\n"
    "timeouts = { ws_idle_ms = 86400000, http_idle_ms = 2000, ws_close_ms = 200 }\n"
    "drain = { timeout_ms = 500, http_idle_ms = 10, http_ms = 50, flush_ms = 50,\n"
    "          disconnect_rate = 1000000 }\n"
    "presence = { batch_ms = 1 }\n"
    "longpoll = { poll_ms = 100, window_ms = 1000, max_batch = 20 }\n"
    "topics = { { match = 'p:*', presence = true },\n"
    "           { match = 'c:*', coalesce = 'latest', throttle_ms = 1 },\n"
    "           { match = 'd:*', on_overflow = 'drop_oldest', max_queue_bytes = 2048 },\n"
    "           { match = 'u:*', tracked = false } }\n"
    "log = { level = 'warn' }\n";

static const char handshake[] =
    "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n";

static const char handshake_v1[] =
    "GET /socket/websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n";

static FILE *real_stderr; /* stderr while an input's log goes to memory */

static void die(const char *what, const uint8_t *p, size_t n)
{
    fprintf(real_stderr, "fuzz_server: %s\n--- %zu bytes from the server:\n", what, n);
    fwrite(p, 1, n, real_stderr);
    fprintf(real_stderr, "\n---\n");
    abort();
}

/* ---- checking what the server sends ------------------------------------------------ */

static int valid_close_code(unsigned c)
{
    return (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999);
}

/* Checks whole frames at p; returns the bytes consumed (a partial frame at
 * the end is left: the connection may have been cut). *closed: a close
 * frame was seen. */
static size_t check_frames(const uint8_t *p, size_t n, int *closed)
{
    size_t pos = 0;
    while (pos + 2 <= n) {
        const uint8_t *f = p + pos;
        if (*closed) die("a frame after the close frame", p, n);
        if ((f[0] & 0xF0) != 0x80) die("a server frame without FIN or with RSV bits", p, n);
        if (f[1] & 0x80) die("a masked server frame", p, n);
        int op = f[0] & 0x0F;
        uint64_t len = f[1] & 0x7F;
        size_t h = 2;
        if (len == 126) {
            if (pos + 4 > n) break;
            len = (uint64_t)f[2] << 8 | f[3];
            h = 4;
            if (len < 126) die("a non-minimal 16-bit length", p, n);
        } else if (len == 127) {
            if (pos + 10 > n) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = len << 8 | f[2 + i];
            h = 10;
            if (len <= 0xFFFF) die("a non-minimal 64-bit length", p, n);
        }
        if (pos + h + len > n) break;
        const uint8_t *d = f + h;
        switch (op) {
        case 1: {
            if (!hd_utf8_valid(d, (size_t)len)) die("a text frame that is not UTF-8", p, n);
            json_error_t e;
            json_t *j = json_loadb((const char *)d, (size_t)len, JSON_ALLOW_NUL, &e);
            int v1 = json_is_object(j) && json_object_size(j) == 4 &&
                     json_is_string(json_object_get(j, "topic")) &&
                     json_is_string(json_object_get(j, "event")) &&
                     json_object_get(j, "payload") && json_object_get(j, "ref");
            if (!j || (!v1 && (!json_is_array(j) || json_array_size(j) != 5)))
                die("a text frame that is not a Phoenix message", d, (size_t)len);
            json_decref(j);
            break;
        }
        case 8:
            if (len == 1) die("a close frame of one byte", p, n);
            if (len >= 2 && !valid_close_code((unsigned)d[0] << 8 | d[1]))
                die("a close frame with a code not allowed on the wire", p, n);
            if (len > 2 && !hd_utf8_valid(d + 2, (size_t)len - 2))
                die("a close reason that is not UTF-8", p, n);
            *closed = 1;
            break;
        case 2: /* a binary broadcast: 2, len(topic), len(event), topic, event, bytes */
            if (len < 3 || d[0] != 2 || 3 + (uint64_t)d[1] + d[2] > len || !d[1] || !d[2])
                die("a binary frame that is not a Phoenix broadcast", d, (size_t)len);
            break;
        case 10:
            if (len > 125) die("a pong over 125 bytes", p, n);
            break;
        default: die("a server frame with an unexpected opcode", p, n);
        }
        pos += h + (size_t)len;
    }
    return pos;
}

/* Checks HTTP responses, then frames after a 101. head_sent: the input has a
 * HEAD request, whose response has a Content-Length but no content. */
static void check_output(const uint8_t *p, size_t n, int head_sent)
{
    size_t pos = 0;
    while (pos < n) {
        const char *s = (const char *)p + pos;
        size_t left = n - pos;
        const char *end = memmem(s, left, "\r\n\r\n", 4);
        if (!end) {
            if (left >= 9 && memcmp(s, "HTTP/1.1 ", 9) != 0) die("output that is not HTTP/1.1", p, n);
            return; /* cut short */
        }
        size_t hl = (size_t)(end - s) + 4;
        if (left < 13 || memcmp(s, "HTTP/1.1 ", 9) != 0) die("a response without a status line", p, n);
        int status = atoi(s + 9);
        if (status < 100 || status > 599) die("a bad status", p, n);
        char *head = strndup(s, hl);
        if (strchr(head, '\0') != head + hl) die("a NUL in response headers", p, n);
        if (status == 101) {
            free(head);
            int closed = 0;
            check_frames(p + pos + hl, n - pos - hl, &closed);
            return;
        }
        const char *cl = strstr(head, "\r\nContent-Length: ");
        if (!cl) die("a response without Content-Length", p, n);
        size_t blen = strtoul(cl + 18, NULL, 10);
        int json = strstr(head, "\r\nContent-Type: application/json\r\n") != NULL;
        free(head);
        if (head_sent && blen && (left == hl || (left >= hl + 9 && memcmp(s + hl, "HTTP/1.1 ", 9) == 0))) {
            pos += hl; /* the answer to HEAD */
            continue;
        }
        if (left < hl + blen) return; /* cut short */
        if (json) {
            json_error_t e;
            json_t *j = json_loadb(s + hl, blen, JSON_ALLOW_NUL, &e);
            if (!j) die("a JSON response body jansson refuses", p, n);
            json_decref(j);
        }
        pos += hl + blen;
    }
}

/* ---- the per-input client ---------------------------------------------------------------- */

typedef struct {
    uv_tcp_t tcp;
    uv_connect_t conn;
    uv_shutdown_t sh;
    uv_write_t wr;
    uv_buf_t out;
    hd_str in;
    int closed;
} client;

static void on_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(s);
    b->len = s;
}

static void on_closed(uv_handle_t *h) { ((client *)h->data)->closed = 1; }

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    client *c = s->data;
    if (n > 0 && c->in.len < (1u << 22)) hd_str_add(&c->in, b->base, (size_t)n);
    free(b->base);
    if (n < 0 && !uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)s, on_closed);
}

static void on_shutdown(uv_shutdown_t *r, int st) { (void)r, (void)st; }

static void on_written(uv_write_t *w, int st)
{
    client *c = w->data;
    if (st == 0 && !uv_is_closing((uv_handle_t *)&c->tcp))
        uv_shutdown(&c->sh, (uv_stream_t *)&c->tcp, on_shutdown);
}

static void on_connect(uv_connect_t *r, int st)
{
    client *c = r->data;
    if (st < 0) {
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    c->wr.data = c;
    if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, &c->out, 1, on_written) < 0)
        uv_close((uv_handle_t *)&c->tcp, on_closed);
}

/* ---- the subscriber that stays ---------------------------------------------------------------- */

typedef struct {
    uv_tcp_t tcp;
    uv_connect_t conn;
    hd_str in;
    size_t checked;   /* bytes of in already checked */
    int upgraded;     /* the 101 arrived */
    int joined;       /* replies received */
    int closing, closed, ws_closed;
} subscriber;

static subscriber *sub;
static const char *const sub_topics[] = {"room:1", "p:1", "c:1", "d:1", "u:1", "a"};
enum { NSUB_TOPICS = 6 };

static void sub_closed(uv_handle_t *h)
{
    subscriber *s = h->data;
    hd_str_free(&s->in);
    free(s);
}

static void sub_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    subscriber *s = st->data;
    if (n > 0) hd_str_add(&s->in, b->base, (size_t)n);
    free(b->base);
    if (n < 0) {
        s->closed = 1;
        return;
    }
    if (!s->upgraded) {
        char *e = s->in.p ? strstr(s->in.p, "\r\n\r\n") : NULL;
        if (!e) return;
        if (strncmp(s->in.p, "HTTP/1.1 101 ", 13) != 0) die("the subscriber was refused", (uint8_t *)s->in.p, s->in.len);
        s->upgraded = 1;
        s->checked = (size_t)(e + 4 - s->in.p);
    }
    /* Check whole frames; count join replies; drop what was checked. */
    size_t from = s->checked;
    size_t used = check_frames((uint8_t *)s->in.p + from, s->in.len - from, &s->ws_closed);
    for (size_t i = from; i < from + used;) {
        const uint8_t *f = (uint8_t *)s->in.p + i;
        size_t len = f[1] & 0x7F, h = 2;
        if (len == 126) len = (size_t)f[2] << 8 | f[3], h = 4;
        else if (len == 127) {
            len = 0;
            for (int k = 0; k < 8; k++) len = len << 8 | f[2 + k];
            h = 10;
        }
        if ((f[0] & 0x0F) == 1 && memmem(f + h, len, "\"phx_reply\"", 11)) s->joined++;
        i += h + len;
    }
    s->checked = from + used;
    memmove(s->in.p, s->in.p + s->checked, s->in.len - s->checked);
    s->in.len -= s->checked;
    s->checked = 0;
}

static void sub_connected(uv_connect_t *r, int st)
{
    subscriber *s = r->data;
    if (st < 0) abort();
    uv_read_start((uv_stream_t *)&s->tcp, on_alloc, sub_read);
    hd_str out = HD_STR_INIT;
    hd_str_adds(&out, handshake);
    for (int i = 0; i < NSUB_TOPICS; i++) {
        char m[128];
        int n = snprintf(m, sizeof m, "[\"%d\",\"%d\",\"%s\",\"phx_join\",{}]", i, i, sub_topics[i]);
        uint8_t h[6] = {0x81, (uint8_t)(0x80 | n), 0, 0, 0, 0}; /* zero mask */
        hd_str_add(&out, h, 6);
        hd_str_add(&out, m, (size_t)n);
    }
    uv_buf_t b = uv_buf_init(out.p, (unsigned)out.len);
    if (uv_try_write((uv_stream_t *)&s->tcp, &b, 1) != (int)out.len) abort();
    hd_str_free(&out);
}

static void run_until_or_die(int (*done)(void), const char *what)
{
    uint64_t end = uv_now(&loop) + 10000;
    while (!done()) {
        if (uv_now(&loop) > end) {
            fprintf(real_stderr, "fuzz_server: timed out waiting until %s (connections: %zu)\n", what,
                    srv.net.nconns);
            abort();
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
}

static int sub_ready(void) { return sub->joined >= NSUB_TOPICS; }

static void sub_start(void)
{
    sub = calloc(1, sizeof *sub);
    uv_tcp_init(&loop, &sub->tcp);
    sub->tcp.data = sub->conn.data = sub;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", srv.port, &a);
    uv_tcp_connect(&sub->conn, &sub->tcp, (struct sockaddr *)&a, sub_connected);
    run_until_or_die(sub_ready, "the subscriber has joined");
}

static void sub_drop(void)
{
    if (!sub) return;
    if (!uv_is_closing((uv_handle_t *)&sub->tcp)) uv_close((uv_handle_t *)&sub->tcp, sub_closed);
    sub = NULL;
}

/* ---- the long-poll session the harness keeps ---------------------------------------------------- */

static client *cur;
static int client_done(void) { return cur->closed && srv.net.nconns == (sub ? 1u : 0u); }

/* Connects a client that sends bytes (borrowed until it is done). */
static client *client_start(const char *bytes, size_t len)
{
    client *c = calloc(1, sizeof *c);
    hd_str_add(&c->in, "", 0);
    c->out = uv_buf_init((char *)bytes, (unsigned)len);
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c->conn.data = c;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", srv.port, &a);
    uv_tcp_connect(&c->conn, &c->tcp, (struct sockaddr *)&a, on_connect);
    return cur = c;
}

static uint64_t lp_id;
static char lp_tok[HD_LP_TOKEN_LEN + 1];

/* One request of the harness's: the answer's body as JSON (the status
 * line must say 200), or NULL with the server's output in *out. */
static json_t *exchange(const char *req, hd_str *out)
{
    client *c = client_start(req, strlen(req));
    run_until_or_die(client_done, "a long-poll exchange is answered");
    *out = c->in;
    free(c);
    const char *body = out->p ? memmem(out->p, out->len, "\r\n\r\n", 4) : NULL;
    if (!body || strncmp(out->p, "HTTP/1.1 200 ", 13) != 0) return NULL;
    json_error_t e;
    return json_loadb(body + 4, out->len - (size_t)(body + 4 - out->p), JSON_ALLOW_NUL, &e);
}

/* A text of a poll's messages: one Phoenix message, V2 or V1. */
static int phoenix_text(json_t *m)
{
    json_error_t e;
    json_t *j = json_is_string(m) ? json_loadb(json_string_value(m), json_string_length(m), JSON_ALLOW_NUL, &e) : NULL;
    int ok = json_is_array(j) ? json_array_size(j) == 5 : json_is_object(j) && json_object_get(j, "topic");
    json_decref(j);
    return ok;
}

/* The session is polled once it has a quarter of its send queue's limit
 * queued (it would be closed as a slow consumer otherwise), or every 64th
 * input with anything (a poll per input halves the fuzzer's speed);
 * opened (and joined) when gone. */
static void lp_keep(void)
{
    static unsigned inputs;
    hd_conn *lc = lp_id ? hd_net_find(&srv.net, lp_id) : NULL;
    hd_str out = HD_STR_INIT;
    json_t *j = NULL;
    inputs++;
    if (lc && lc->wq_bytes && (lc->wq_bytes >= cfg.send_queue_bytes / 4 || inputs % 64 == 0)) {
        char req[256];
        snprintf(req, sizeof req, "GET /socket/longpoll?vsn=2.0.0&token=%s HTTP/1.1\r\nHost: f\r\n\r\n", lp_tok);
        j = exchange(req, &out);
        json_t *st = json_object_get(j, "status"), *ms = json_object_get(j, "messages");
        if (!j || (json_integer_value(st) == 200 && !json_is_array(ms)))
            die("a poll's answer that is not JSON", (uint8_t *)out.p, out.len);
        for (size_t i = 0; i < json_array_size(ms); i++)
            if (!phoenix_text(json_array_get(ms, i)))
                die("a poll's message that is not a Phoenix message", (uint8_t *)out.p, out.len);
    } else if (!lc) {
        j = exchange("GET /socket/longpoll?vsn=2.0.0&token=null HTTP/1.1\r\nHost: f\r\n\r\n", &out);
        json_t *t = json_object_get(j, "token");
        if (json_integer_value(json_object_get(j, "status")) != 410 || !json_is_string(t) ||
            !hd_lp_token_verify(srv.ch.lp.secret, json_string_value(t), json_string_length(t), &lp_id))
            die("a long-poll session that did not open", (uint8_t *)out.p, out.len);
        memcpy(lp_tok, json_string_value(t), HD_LP_TOKEN_LEN + 1);
        hd_str_free(&out);
        json_decref(j);
        char req[512];
        static const char joins[] = "[\"1\",\"1\",\"room:1\",\"phx_join\",{}]\n"
                                    "[\"2\",\"2\",\"p:1\",\"phx_join\",{}]";
        snprintf(req, sizeof req,
                 "POST /socket/longpoll?token=%s HTTP/1.1\r\nHost: f\r\nContent-Type: "
                 "application/x-ndjson\r\nContent-Length: %zu\r\n\r\n%s",
                 lp_tok, sizeof joins - 1, joins);
        j = exchange(req, &out);
        if (json_integer_value(json_object_get(j, "status")) != 200)
            die("the harness's joins over a long poll were refused", (uint8_t *)out.p, out.len);
    }
    json_decref(j);
    hd_str_free(&out);
}

/* ---- the server's life ------------------------------------------------------------------------ */

static void on_stopped(hd_server *s)
{
    (void)s;
    srv_stopped = 1;
}

static void on_tick(uv_timer_t *t) { (void)t; }

static void server_start(void)
{
    char err[256];
    srv_stopped = 0;
    if (hd_server_init(&srv, &loop, &cfg) || hd_script_start(&srv.sc, err, sizeof err) ||
        hd_server_start(&srv))
        abort();
    srv.on_stopped = on_stopped;
    sub_start();
}

static int is_stopped(void) { return srv_stopped; }

static void server_restart(void)
{
    sub_drop();
    lp_id = 0;
    hd_server_stop(&srv);
    run_until_or_die(is_stopped, "the server has stopped");
    hd_server_free(&srv);
    server_start();
}

static void setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    real_stderr = stderr;
    char path[] = "/tmp/herald-fuzz-server-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, config_text, sizeof config_text - 1) != (ssize_t)sizeof config_text - 1)
        abort();
    close(fd);
    char err[512];
    unsetenv("HERALD_PORT");
    if (hd_config_load(&cfg, path, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        abort();
    }
    unlink(path);
    hd_log_set_level((hd_log_level)cfg.log_level);
    uv_loop_init(&loop);
    uv_timer_init(&loop, &ticker); /* bounds each loop turn: waits can time out */
    uv_timer_start(&ticker, on_tick, 10, 10);
    uv_unref((uv_handle_t *)&ticker);
    server_start();
}

/* ---- one input --------------------------------------------------------------------------------- */

static void build(const uint8_t *d, size_t n, hd_str *out)
{
    int mode = d[0] % 16; /* (the seeds' mode bytes are '0'..':') */
    if (mode > 10) mode -= 8;
    d++, n--;
    char head[256];
    switch (mode) {
    case 0: hd_str_add(out, d, n); break;
    case 1:
        hd_str_adds(out, handshake);
        hd_str_add(out, d, n);
        break;
    case 2:
    case 6:
    case 7: {
        hd_str_adds(out, mode == 2 ? handshake : handshake_v1);
        static const uint8_t key[4] = {0x37, 0xFA, 0x21, 0x3D};
        size_t at = 0;
        while (at <= n) {
            const uint8_t *nl = memchr(d + at, '\n', n - at);
            size_t len = nl ? (size_t)(nl - (d + at)) : n - at;
            uint8_t h[14];
            size_t hl = 2;
            h[0] = 0x81;
            if (len < 126) {
                h[1] = (uint8_t)(0x80 | len);
            } else {
                h[1] = 0x80 | 126;
                h[2] = (uint8_t)(len >> 8), h[3] = (uint8_t)len;
                hl = 4;
            }
            memcpy(h + hl, key, 4);
            hd_str_add(out, h, hl + 4);
            for (size_t i = 0; i < len; i++) hd_str_addc(out, (char)(d[at + i] ^ key[i & 3]));
            at += len + 1;
        }
        break;
    }
    case 3:
    case 4:
        snprintf(head, sizeof head,
                 "POST /api/push HTTP/1.1\r\nHost: f\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                 mode == 3 ? "application/json" : "application/x-www-form-urlencoded", n);
        hd_str_adds(out, head);
        hd_str_add(out, d, n);
        break;
    case 8:
    case 9:
        snprintf(head, sizeof head,
                 "POST /socket/longpoll?token=%s HTTP/1.1\r\nHost: f\r\nContent-Type: %s\r\n"
                 "Content-Length: %zu\r\n\r\n",
                 lp_tok, mode == 8 ? "application/x-ndjson" : "text/plain", n);
        hd_str_adds(out, head);
        hd_str_add(out, d, n);
        break;
    case 10:
        hd_str_adds(out, "GET /socket/longpoll?vsn=2.0.0&token=");
        for (size_t i = 0; i < n && d[i] > ' ' && d[i] != 0x7F; i++) hd_str_addc(out, (char)d[i]);
        hd_str_adds(out, " HTTP/1.1\r\nHost: f\r\n\r\n");
        break;
    default: {
        hd_str_adds(out, "GET ");
        for (size_t i = 0; i < n && d[i] > ' ' && d[i] != 0x7F; i++) hd_str_addc(out, (char)d[i]);
        hd_str_adds(out, " HTTP/1.1\r\nHost: f\r\n\r\n");
        break;
    }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size == 0) return 0;

    /* Log lines of this input go to memory. */
    char *logbuf = NULL;
    size_t loglen = 0;
    FILE *mem = open_memstream(&logbuf, &loglen);
    if (mem) stderr = mem;

    lp_keep();
    hd_str bytes = HD_STR_INIT;
    build(data, size, &bytes);
    client *c = client_start(bytes.p, bytes.len);
    uint64_t end = uv_now(&loop) + 10000;
    while (!client_done()) {
        if (sub && sub->closed) sub_drop(); /* a drain closed it */
        if (uv_now(&loop) > end) {
            fflush(stderr);
            fprintf(real_stderr, "fuzz_server: the server still holds %zu connection(s) 10 s after the input\n%s",
                    srv.net.nconns, logbuf ? logbuf : "");
            abort();
        }
        uv_run(&loop, UV_RUN_ONCE);
    }
    check_output((uint8_t *)c->in.p, c->in.len, memmem(bytes.p, bytes.len, "HEAD ", 5) != NULL);
    hd_str_free(&c->in);
    free(c);
    hd_str_free(&bytes);

    stderr = real_stderr;
    if (mem) fclose(mem);
    if (logbuf && (strstr(logbuf, "[error]") || strstr(logbuf, "[warn]"))) {
        fprintf(stderr, "fuzz_server: client input made the server log at warn or error:\n%s", logbuf);
        abort();
    }
    if (srv.state != HD_READY) {
        server_restart(); /* drained: start again */
    } else if (!sub || sub->closed || sub->ws_closed) {
        /* One client's input must not end another client's connection. */
        fprintf(stderr, "fuzz_server: the subscriber was disconnected\n%s", logbuf ? logbuf : "");
        abort();
    }
    free(logbuf);
    return 0;
}
