/* Fuzz target: a real server in this process, reached over loopback TCP.
 * The first input byte picks the mode: even, the rest is sent as raw HTTP
 * (llhttp, routing, the push API's JSON and form parsers); odd, it follows
 * a valid WebSocket handshake as client frames (framing, Phoenix messages,
 * JSON). The client half-closes and reads to EOF; the run ends when the
 * server holds no connection, so a leak or a hang shows. */
#include "config.h"
#include "script.h"
#include "server.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

static uv_loop_t loop;
static hd_config cfg;
static hd_server srv;
static int ready;

typedef struct {
    uv_tcp_t tcp;
    uv_connect_t conn;
    uv_shutdown_t sh;
    uv_write_t wr;
    uv_buf_t out;
    char in[65536];
    int closed;
} client;

static void on_closed(uv_handle_t *h) { ((client *)h->data)->closed = 1; }

static void on_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    (void)s;
    client *c = h->data;
    *b = uv_buf_init(c->in, sizeof c->in);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    if (n < 0 && !uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)s, on_closed);
}

static void on_shutdown(uv_shutdown_t *r, int st) { (void)r, (void)st; }

static void on_written(uv_write_t *w, int st)
{
    client *c = w->data;
    if (st == 0) uv_shutdown(&c->sh, (uv_stream_t *)&c->tcp, on_shutdown);
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
    uv_write(&c->wr, (uv_stream_t *)&c->tcp, &c->out, 1, on_written);
}

static void setup(void)
{
    setenv("HERALD_PORT", "0", 1);
    char err[256];
    if (hd_config_load(&cfg, NULL, err, sizeof err)) abort();
    free(cfg.host);
    cfg.host = strdup("127.0.0.1");
    cfg.max_message_bytes = 8192;
    cfg.max_body_bytes = 16384;
    uv_loop_init(&loop);
    if (hd_server_init(&srv, &loop, &cfg) || hd_script_start(&srv, err, sizeof err) ||
        hd_server_start(&srv))
        abort();
    ready = 1;
}

static const char handshake[] =
    "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ready) setup();
    if (size == 0) return 0;
    int ws = data[0] & 1;
    size_t pre = ws ? sizeof handshake - 1 : 0;
    char *bytes = malloc(pre + size);
    memcpy(bytes, handshake, pre);
    memcpy(bytes + pre, data + 1, size - 1);
    client *c = calloc(1, sizeof *c);
    c->out = uv_buf_init(bytes, (unsigned)(pre + size - 1));
    uv_tcp_init(&loop, &c->tcp);
    c->tcp.data = c->conn.data = c;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", srv.port, &a);
    uv_tcp_connect(&c->conn, &c->tcp, (struct sockaddr *)&a, on_connect);
    while (!c->closed || srv.nconns > 0) uv_run(&loop, UV_RUN_ONCE);
    free(c);
    free(bytes);
    return 0;
}
