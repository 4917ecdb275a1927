/* tests/unit/byhand.h: a connection built by hand, with no socket behind
 * it: the transport's lists and counters as hd_net keeps them, the
 * protocol the test's own vtable. Needs only conn.c (test_shaper includes
 * shaper.c and so cannot link the server). */
#ifndef HD_TEST_BYHAND_H
#define HD_TEST_BYHAND_H

#pragma GCC diagnostic ignored "-Wunused-function"

#include "conn.h"

#include <stdlib.h>

/* A connection built by hand on net as hd_net_accept would make it, but
 * with a TCP handle that is never connected (so its peer is unknown: not
 * loopback): bytes go in through c->ops->on_read, answers stay queued
 * until a writer turn runs. hd_conn_close() and the loop free it. */
static hd_conn *conn_by_hand(hd_net *net, const hd_conn_ops *ops)
{
    hd_conn *c = calloc(1, sizeof *c);
    assert_non_null(c);
    assert_int_equal(uv_tcp_init(net->loop, &c->tcp), 0);
    c->tcp.data = c;
    c->net = net;
    c->ops = ops;
    c->kind = HD_CONN_HTTP;
    c->id = ++net->next_conn_id;
    c->next = net->conns;
    if (net->conns) net->conns->prev = c;
    net->conns = c;
    net->nconns++;
    return c;
}

/* The parts of a test's vtable that do nothing (or close at once). */
static void byhand_read(hd_conn *c, uint8_t *data, size_t len) { (void)c, (void)data, (void)len; }
static void byhand_shut(hd_conn *c, uint16_t code, const char *reason)
{
    (void)code, (void)reason;
    hd_conn_close(c);
}
static void byhand_free(hd_conn *c) { (void)c; }

/* The same as an open WebSocket connection. */
static hd_conn *ws_conn_by_hand(hd_net *net, const hd_conn_ops *ops)
{
    hd_conn *c = conn_by_hand(net, ops);
    c->kind = HD_CONN_WS;
    net->nws++;
    return c;
}

#endif
