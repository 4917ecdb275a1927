/* tests/unit/test_drain.c: the drain sequence (core/drain.c) on a real
 * server (tests/unit/harness.h). A Lua shutdown(phase) hook logs each
 * phase (captured from stderr) and publishes its name to drain:log, which
 * a WebSocket client may have joined: so the phases are seen in order,
 * those before the disconnect also as frames that precede the 1012 close.
 * Each drain ends with on_stopped called once and uv_loop_close() == 0
 * (the harness's teardown). */
#define _GNU_SOURCE /* open_memstream, mkstemps */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "api.h"
#include "buf.h"
#include "config.h"
#include "drain.h"
#include "http.h"
#include "log.h"
#include "server.h"
#include "ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "harness.h"

/* ---- set-up: a script with the shutdown hook, a drain table per test ------------------ */

static const char drain_script[] =
    "return { shutdown = function(phase)\n"
    "  herald.log('warn', 'shutdown(' .. phase .. ')')\n"
    "  herald.publish('drain:log', 'phase', phase)\n"
    "end }\n";

/* Starts a server with the script and the extra config lines. */
static int setup_drain(const char *extra)
{
    char conf[1024];
    snprintf(conf, sizeof conf,
             "listen = { host = '127.0.0.1', port = 0 }\n"
             "log = { level = 'warn' }\n"
             "topics = { { match = 'slow:*', throttle_ms = 60000 } }\n"
             "%s",
             extra);
    return setup_with_script(conf, drain_script);
}

static int setup_announce(void **st)
{
    (void)st;
    return setup_drain("drain = { announce_ms = 300, http_idle_ms = 20 }\n");
}

static int setup_default(void **st)
{
    (void)st;
    return setup_drain("");
}

static int setup_paced(void **st)
{
    (void)st;
    return setup_drain("drain = { disconnect_rate = 10 }\n");
}

static int setup_flush(void **st)
{
    (void)st;
    return setup_drain("drain = { flush_ms = 100 }\ntimeouts = { ws_close_ms = 200 }\n");
}

static int setup_budget(void **st)
{
    (void)st;
    return setup_drain("drain = { timeout_ms = 100 }\n");
}

/* ---- the log, captured ------------------------------------------------------------- */

static FILE *real_stderr, *logmem;
static char *logbuf;
static size_t loglen;

static void capture_start(void)
{
    logmem = open_memstream(&logbuf, &loglen);
    assert_non_null(logmem);
    real_stderr = stderr;
    stderr = logmem;
}

/* Ends the capture; returns what was logged (freed by the teardown). */
static const char *capture_stop(void)
{
    if (logmem) {
        stderr = real_stderr;
        fclose(logmem);
        logmem = NULL;
    }
    return logbuf ? logbuf : "";
}

/* A test that failed while capturing: show the log (with cmocka's message). */
static int teardown_drain(void **st)
{
    int failed = logmem != NULL;
    capture_stop();
    if (failed && logbuf) fputs(logbuf, stderr);
    free(logbuf);
    logbuf = NULL;
    return teardown(st);
}

/* The shutdown hook ran for exactly these phases, in this order. */
static void expect_phases(const char *log, const char *const *phases, size_t n)
{
    const char *p = log;
    for (size_t i = 0; i < n; i++) {
        char want[64];
        snprintf(want, sizeof want, "shutdown(%s)\n", phases[i]);
        const char *at = strstr(p, want);
        if (!at) fail_msg("phase %s not logged (in order); the log:\n%s", phases[i], log);
        p = at + strlen(want);
    }
    size_t calls = 0;
    for (p = strstr(log, "shutdown("); p; p = strstr(p + 1, "shutdown(")) calls++;
    assert_int_equal(calls, n);
}

/* ---- client helpers -------------------------------------------------------------------- */

static void expect_msg(cli *c, const char *event, const char *data)
{
    char want[256];
    snprintf(want, sizeof want, "[null,null,\"drain:log\",\"msg\",{\"data\":%s,\"event\":\"%s\"}]",
             data, event);
    expect_text(c, want);
}

static void expect_phase_frame(cli *c, const char *phase)
{
    char data[64];
    snprintf(data, sizeof data, "\"%s\"", phase);
    expect_msg(c, "phase", data);
}

static const char restart_close[] = "\x03\xf4server restart"; /* 1012 */

/* The client answers the server's close; the server ends TCP first. */
static void ws_bye(cli *c)
{
    ws_send(c, 8, restart_close, 2);
    RUN_UNTIL(c->eof);
    cli_free(c);
}

static void on_connect_status(uv_connect_t *r, int status) { *(int *)r->data = status; }
static void on_flag(uv_handle_t *h) { *(int *)h->data = 1; }

/* The status of a new connection attempt to the server's port. */
static int connect_status(void)
{
    uv_tcp_t t;
    uv_connect_t r;
    int status = 1, closed = 0;
    uv_tcp_init(&loop, &t);
    r.data = &status;
    t.data = &closed;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", srv.port, &a);
    assert_int_equal(uv_tcp_connect(&r, &t, (struct sockaddr *)&a, on_connect_status), 0);
    RUN_UNTIL(status != 1);
    uv_close((uv_handle_t *)&t, on_flag);
    RUN_UNTIL(closed);
    return status;
}

/* ---- tests ------------------------------------------------------------------------------- */

static const char *const all_phases[] = {"announce", "stop_accepting", "http",   "flush",
                                         "disconnect", "presence",      "stopped"};

/* The whole sequence: /readyz turns 503 at once (the listener still open
 * during announce), then the listener closes, the idle keep-alive client
 * is closed, the frame published just before the drain and the hook's
 * phase frames reach the WebSocket before its 1012 close, and the node
 * stops. */
static void test_drain_sequence(void **st)
{
    (void)st;
    static const char healthz[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    cli *ws = ws_client();
    join(ws, "1", "drain:log");
    cli *idle = cli_new();
    cli_sends(idle, healthz);
    expect_response(idle, 200, "OK", "keep-alive", "", "{\"status\":\"ok\"}");
    cli *api = cli_new();
    cli_sends(api, healthz);
    expect_response(api, 200, "OK", "keep-alive", "", "{\"status\":\"ok\"}");
    assert_int_equal(hd_api_publish(&srv.api, "drain:log", 9, "last", 4, "\"bye\"", 5), 1);

    capture_start();
    hd_server_drain(&srv, "test");
    assert_int_equal(srv.state, HD_DRAINING);
    assert_int_equal(srv.drain.phase, HD_PHASE_ANNOUNCE);
    hd_server_drain(&srv, "again"); /* only from READY: no second sequence */
    /* During announce: 503, and a keep-alive connection closes after it. */
    static const char readyz[] = "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
    cli_sends(api, readyz);
    expect_response(api, 503, "Service Unavailable", "close", "", "{\"status\":\"draining\"}");
    RUN_UNTIL(api->eof);
    assert_int_equal(api->in.len, 0);
    cli_free(api);
    /* The listener is still open (the balancer's grace): a new client is
     * told the same. */
    cli *late = cli_new();
    cli_sends(late, readyz);
    expect_response(late, 503, "Service Unavailable", "close", "", "{\"status\":\"draining\"}");
    RUN_UNTIL(late->eof);
    cli_free(late);
    /* The idle keep-alive connection is closed without a word, and the
     * listener is gone by then (stop_accepting precedes http). */
    RUN_UNTIL(idle->eof);
    assert_int_equal(idle->in.len, 0);
    cli_free(idle);
    assert_int_equal(connect_status(), UV_ECONNREFUSED);
    expect_msg(ws, "last", "\"bye\"");
    for (size_t i = 0; i < 5; i++) expect_phase_frame(ws, all_phases[i]); /* up to disconnect */
    expect_frame(ws, 8, restart_close, sizeof restart_close - 1);
    ws_bye(ws);
    RUN_UNTIL(stopped == 1);
    const char *log = capture_stop();

    expect_phases(log, all_phases, 7);
    assert_int_equal(srv.drain.phase, HD_PHASE_STOPPED);
    assert_int_equal(srv.drain.stats.http_closed, 1);
    assert_int_equal(srv.drain.stats.ws_closed, 1);
    assert_int_equal(srv.drain.stats.forced, 0);
    assert_int_equal(srv.drain.stats.overran, 0);
    assert_int_equal(srv.st.ws_closes_sent[12], 1);
}

/* Messages a throttled topic holds are released at the flush phase, ahead
 * of the 1012 close: early, not dropped. */
static void test_drain_releases_throttled(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "slow:x");
    assert_int_equal(hd_api_publish(&srv.api, "slow:x", 6, "e", 1, "1", 1), 1); /* opens the window */
    expect_text(ws, "[null,null,\"slow:x\",\"msg\",{\"data\":1,\"event\":\"e\"}]");
    hd_api_publish(&srv.api, "slow:x", 6, "e", 1, "2", 1);
    hd_api_publish(&srv.api, "slow:x", 6, "e", 1, "3", 1);
    assert_int_equal(srv.st.shaped_received, 3);
    assert_int_equal(srv.st.shaped_released, 1); /* the window lasts a minute */

    capture_start();
    hd_server_drain(&srv, "test");
    expect_text(ws, "[null,null,\"slow:x\",\"msg\",{\"data\":2,\"event\":\"e\"}]");
    expect_text(ws, "[null,null,\"slow:x\",\"msg\",{\"data\":3,\"event\":\"e\"}]");
    expect_frame(ws, 8, restart_close, sizeof restart_close - 1);
    ws_bye(ws);
    RUN_UNTIL(stopped == 1);
    expect_phases(capture_stop(), all_phases, 7);
    assert_int_equal(srv.st.shaped_released, 3);
    assert_int_equal(srv.drain.stats.forced, 0);
}

enum { NWS = 4 };

/* Runs the drain of NWS WebSocket clients to its end, each answering its
 * close frame (exact bytes) and closing after the server's FIN. Returns
 * the most closes the drain made between two consecutive loop turns. */
static uint64_t drain_clients(cli **ws)
{
    int answered[NWS] = {0};
    uint64_t prev = 0, most = 0, end = uv_now(&loop) + 10000;
    capture_start();
    hd_server_drain(&srv, "test");
    while (stopped == 0) {
        if (uv_now(&loop) > end) fail_msg("the drain did not end");
        uv_run(&loop, UV_RUN_ONCE);
        uint64_t n = srv.drain.stats.ws_closed;
        if (n - prev > most) most = n - prev;
        prev = n;
        for (int i = 0; i < NWS; i++) {
            if (!ws[i]) continue;
            int op;
            size_t pl, pn;
            if (!answered[i] && frame_len(ws[i], &op, &pl, &pn) > 0) {
                expect_frame(ws[i], 8, restart_close, sizeof restart_close - 1);
                ws_send(ws[i], 8, restart_close, 2);
                answered[i] = 1;
            }
            if (ws[i]->eof) { /* not cli_free: its wait would hide loop turns */
                for (size_t k = 0; k < sizeof clients / sizeof *clients; k++)
                    if (clients[k] == ws[i]) clients[k] = NULL;
                uv_close((uv_handle_t *)&ws[i]->tcp, cli_abandoned);
                ws[i] = NULL;
            }
        }
    }
    expect_phases(capture_stop(), all_phases, 7);
    for (int i = 0; i < NWS; i++) assert_true(answered[i]);
    assert_int_equal(srv.drain.stats.ws_closed, NWS);
    assert_int_equal(srv.st.ws_closes_sent[12], NWS);
    assert_int_equal(srv.drain.stats.forced, 0);
    return most;
}

/* drain.disconnect_rate = 10: one close per 100 ms, so never two in one
 * loop turn (a turn runs the drain's 10 ms timer at most twice). */
static void test_drain_paces_closes(void **st)
{
    (void)st;
    cli *ws[NWS];
    for (int i = 0; i < NWS; i++) ws[i] = ws_client();
    assert_int_equal(drain_clients(ws), 1);
}

/* The default rate (5000/s) closes all four in one step: the pacing above
 * is the setting's doing. */
static void test_drain_unpaced_closes(void **st)
{
    (void)st;
    cli *ws[NWS];
    for (int i = 0; i < NWS; i++) ws[i] = ws_client();
    assert_int_equal(drain_clients(ws), NWS);
}

/* A WebSocket client whose queue cannot empty: it does not read, the
 * server's socket buffer is small, and a big frame is half written. */
static cli *stuck_client(void)
{
    cli *c = ws_client();
    hd_conn *sc = srv.net.conns;
    assert_int_equal(sc->kind, HD_CONN_WS);
    uv_read_stop((uv_stream_t *)&c->tcp);
    int sz = 4096;
    assert_int_equal(uv_send_buffer_size((uv_handle_t *)&sc->tcp, &sz), 0);
    size_t big = 16 << 20;
    char *p = malloc(big);
    memset(p, 'B', big);
    hd_buf *f = hd_ws_frame(HD_WS_TEXT, p, big);
    free(p);
    assert_int_equal(hd_conn_send_topic(sc, f, 0, f->len, 0), 0);
    hd_buf_unref(f);
    RUN_UNTIL((sc->flags & HD_CF_WRITING) || !sc->wq_head);
    if (!(sc->flags & HD_CF_WRITING)) fail_msg("the kernel took the whole frame: nothing stuck");
    return c;
}

/* drain.flush_ms bounds the wait for queues to empty: with one that
 * cannot, the flush phase waits for it, says so, and the sequence goes on
 * (the stuck client's close handshake then ends at timeouts.ws_close_ms). */
static void test_drain_flush_budget(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "drain:log");
    cli *stuck = stuck_client();
    capture_start();
    hd_server_drain(&srv, "test");
    for (size_t i = 0; i < 5; i++) expect_phase_frame(ws, all_phases[i]);
    expect_frame(ws, 8, restart_close, sizeof restart_close - 1);
    ws_bye(ws);
    RUN_UNTIL(stopped == 1);
    const char *log = capture_stop();
    expect_phases(log, all_phases, 7);
    if (!strstr(log, "drain: phase flush overran its 100 ms budget"))
        fail_msg("the flush phase did not wait for the stuck queue:\n%s", log);
    /* It waited its budget out (by the loop clock the phase is timed with). */
    assert_true(srv.drain.stats.duration_ms[HD_PHASE_FLUSH] >= 100);
    assert_int_equal(srv.drain.stats.ws_closed, 2);
    assert_int_equal(srv.drain.stats.forced, 0);
    assert_int_equal(srv.drain.stats.overran, 0);
    cli_free(stuck);
}

/* drain.timeout_ms = 100 runs out in the http phase (a request never
 * finishes): what is left is closed at once and counted, frames still
 * queued are counted as lost, the log names the phase, and the node
 * stops. */
static void test_drain_budget_forces(void **st)
{
    (void)st;
    cli *ws = ws_client();
    join(ws, "1", "drain:log");
    cli *stuck = stuck_client();
    /* A request that never ends keeps the http phase waiting. */
    cli *h = cli_new();
    cli_sends(h, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
    RUN_UNTIL(srv.net.conns->kind == HD_CONN_HTTP && hd_http_busy(srv.net.conns));

    capture_start();
    hd_server_drain(&srv, "test");
    RUN_UNTIL(stopped == 1 && ws->eof && h->eof);
    const char *log = capture_stop();
    static const char *const phases[] = {"announce", "stop_accepting", "http", "presence", "stopped"};
    expect_phases(log, phases, 5);
    if (!strstr(log, "drain: phase http overran the 100 ms budget"))
        fail_msg("the overrun is not logged with its phase:\n%s", log);
    /* The healthy client got the phase frames up to http, then EOF: no
     * close frame. */
    for (size_t i = 0; i < 3; i++) expect_phase_frame(ws, all_phases[i]);
    assert_int_equal(ws->in.len, 0);
    assert_int_equal(h->in.len, 0);
    assert_int_equal(srv.drain.stats.overran, 1);
    assert_int_equal(srv.drain.stats.forced, 3);
    assert_int_equal(srv.drain.stats.lost_frames, 1);
    assert_int_equal(srv.drain.stats.ws_closed, 0);
    assert_int_equal(srv.drain.stats.http_closed, 0);
    cli_free(ws);
    cli_free(h);
    cli_free(stuck);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_drain_sequence, setup_announce, teardown_drain),
        cmocka_unit_test_setup_teardown(test_drain_releases_throttled, setup_default, teardown_drain),
        cmocka_unit_test_setup_teardown(test_drain_paces_closes, setup_paced, teardown_drain),
        cmocka_unit_test_setup_teardown(test_drain_unpaced_closes, setup_default, teardown_drain),
        cmocka_unit_test_setup_teardown(test_drain_flush_budget, setup_flush, teardown_drain),
        cmocka_unit_test_setup_teardown(test_drain_budget_forces, setup_budget, teardown_drain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
