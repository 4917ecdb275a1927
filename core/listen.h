/* A listening socket, polled by the loop: it accepts in batches and hands
 * each socket to the transport (hd_net_take). When the process is out of
 * descriptors, a spare one is closed to accept the waiting connection,
 * answer it 503 and close it, so every refusal is counted and the loop
 * never spins on a failing accept. Herald keeps two: the public one and
 * the admin listener. */
#ifndef HD_LISTEN_H
#define HD_LISTEN_H

#include "conn.h"

#include <uv.h>

typedef struct hd_listener {
    uv_poll_t poll;
    hd_net *net;
    int fd;                      /* the listening socket, or -1 */
    int spare;                   /* a descriptor kept for accepting at EMFILE, or -1 */
    int admin;                   /* its connections are admin connections */
    int port;                    /* the bound port */
} hd_listener;

/* Binds host:port (a numeric IPv4 or IPv6 address; reuseport:
 * SO_REUSEPORT) and starts accepting onto net. Returns 0 or a negative
 * libuv error, logged. */
int hd_listener_open(hd_listener *l, hd_net *net, const char *host, int port, int reuseport, int admin);
/* 1 while open (and not closing). */
int hd_listener_is_open(const hd_listener *l);
/* Accepts every connection still waiting in the backlog (just before the
 * close, which would reset them). */
void hd_listener_take_backlog(hd_listener *l);
/* Stops accepting and closes the socket; cb runs with the poll handle
 * (its data then being data). Only for an open listener. */
void hd_listener_close(hd_listener *l, uv_close_cb cb, void *data);

#endif
