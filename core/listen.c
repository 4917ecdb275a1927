#define _GNU_SOURCE /* accept4 */
#include "listen.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Connections accepted per poll event: then the loop serves others. */
#define ACCEPT_BATCH 256

static int open_spare(void) { return open("/dev/null", O_RDONLY | O_CLOEXEC); }

/* Out of descriptors: the spare one makes room for one accept, whose
 * connection is answered 503 and closed. Returns 1 when one was taken. */
static int refuse_with_spare(hd_listener *l)
{
    if (l->spare < 0 && (l->spare = open_spare()) < 0) return 0;
    close(l->spare);
    l->spare = -1;
    int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) hd_net_refuse_fd(l->net, fd, HD_REFUSE_DESCRIPTORS, 0);
    l->spare = open_spare();
    return fd >= 0;
}

static void take_some(hd_listener *l, int max)
{
    for (int n = 0; n < max; n++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            hd_net_take(l->net, fd, l->admin);
        } else if (errno == EINTR || errno == ECONNABORTED) {
            continue;
        } else if (errno == EMFILE || errno == ENFILE) {
            if (!refuse_with_spare(l)) return;
        } else {
            if (errno != EAGAIN && errno != EWOULDBLOCK) hd_debug("accept: %s", strerror(errno));
            return;
        }
    }
}

static void on_ready(uv_poll_t *h, int status, int events)
{
    (void)events;
    hd_listener *l = h->data;
    if (status < 0) {
        hd_warn("listener: %s", uv_strerror(status));
        return;
    }
    take_some(l, ACCEPT_BATCH);
}

int hd_listener_open(hd_listener *l, hd_net *net, const char *host, int port, int reuseport, int admin)
{
    memset(l, 0, sizeof *l);
    l->net = net;
    l->fd = l->spare = -1;
    l->admin = admin;
    const char *what = admin ? "admin." : "listen.";
    struct sockaddr_storage addr;
    int rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
    if (rc) rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr);
    if (rc) {
        hd_error("%shost %s is not an IP address", what, host);
        return rc;
    }
    socklen_t alen = addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    rc = fd < 0 ? uv_translate_sys_error(errno) : 0;
    /* TCP_NODELAY is inherited by accepted sockets (Linux copies it). */
    if (!rc && (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
                (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one)) ||
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) ||
                bind(fd, (struct sockaddr *)&addr, alen) || listen(fd, 4096)))
        rc = uv_translate_sys_error(errno);
    if (!rc) rc = uv_poll_init_socket(net->loop, &l->poll, fd);
    if (!rc) {
        l->poll.data = l;
        rc = uv_poll_start(&l->poll, UV_READABLE, on_ready);
        if (rc) uv_close((uv_handle_t *)&l->poll, NULL);
    }
    if (rc) {
        if (fd >= 0) close(fd);
        hd_error("cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
        return rc;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    getsockname(fd, (struct sockaddr *)&bound, &blen);
    l->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    l->fd = fd;
    l->spare = open_spare();
    return 0;
}

int hd_listener_is_open(const hd_listener *l)
{
    return l->fd >= 0 && !uv_is_closing((const uv_handle_t *)&l->poll);
}

void hd_listener_take_backlog(hd_listener *l)
{
    if (hd_listener_is_open(l)) take_some(l, 65536);
}

void hd_listener_close(hd_listener *l, uv_close_cb cb, void *data)
{
    if (!hd_listener_is_open(l)) return;
    l->poll.data = data;
    uv_close((uv_handle_t *)&l->poll, cb);
    /* The poll is stopped by uv_close: the socket may go now. */
    close(l->fd);
    l->fd = -1;
    if (l->spare >= 0) close(l->spare);
    l->spare = -1;
}
