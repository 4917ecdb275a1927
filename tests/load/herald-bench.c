/*
 * herald-bench: a load generator for Herald (and, for comparison, nchan and a
 * Node.js `ws` broadcast server).
 *
 * One coordinator process forks W worker processes.  Each worker runs a libuv
 * loop holding a share of the N WebSocket clients; every client binds one of
 * the source addresses 127.0.0.1..127.0.0.K before connecting (so that N can
 * exceed one address's ephemeral ports), does the RFC 6455 handshake with its
 * own framing code (masked client frames, unmasked server frames, ping/pong,
 * close, fragmentation), then either joins its topics with the Phoenix v2
 * protocol (herald) or just counts every data frame as a delivery (nchan, the
 * Node server).  The coordinator publishes over keep-alive HTTP connections;
 * each payload carries its send time {"t":<CLOCK_MONOTONIC ns>,"pad":"..."}
 * (that clock is system wide, so workers can compute delivery latency).
 * Workers keep their counters and a latency histogram in a shared anonymous
 * mapping; the coordinator reads them and prints ONE JSON line.
 *
 * Only loopback addresses are ever used; every phase is bounded in time.
 * See README.md beside this file for the flags and the scenarios.
 */
#define _GNU_SOURCE
#include <uv.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAXW 64           /* worker processes */
#define MAXPUB 64         /* publisher connections */
#define MAXPID 8          /* server pids to sample */
#define MAXPORT 8         /* --sub-ports: servers the subscribers are spread over */
#define MAXSEQ 64         /* --await: messages tracked one by one */
#define STORM_BEFORE 5    /* recovery-storm: messages received before the drop */
#define STORM_LIVE 1      /* recovery-storm: live checks after the storm */
#define STORM_MAXMSG 10000 /* recovery-storm: most --messages (missed while away) */
#define HB_N 4608         /* latency histogram buckets (see hbucket) */
#define RBUF_MAX (16u << 20)
#define LP_TOKEN_MAX 128 /* --longpoll: a session's token (48 hex digits, then in a cluster the node's id) */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" /* the RFC 6455 example answer */

#define LD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define ST(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#define INC(x) ST(x, LD(x) + 1) /* each counter has a single writer */

enum { SRV_HERALD, SRV_NCHAN, SRV_NODE };
static const char *const server_names[] = {"herald", "nchan", "node"};
enum { TM_ONE, TM_OWN, TM_OWN_SHARED };
static const char *const topic_mode_names[] = {"one", "own", "own+shared"};

/* ------------------------------------------------------------------ options */

typedef struct {
    const char *scenario;
    int server;
    const char *host;
    int port;
    int pids[MAXPID];
    int npids;
    int sub_ports[MAXPORT]; /* --sub-ports; none: every client on port */
    int nsub_ports;
    const char *mark_cmd;   /* --mark: run with "start" before publishing, "end" after */
    int clients, workers, addrs, concurrency;
    int messages, publishers, size;
    double rate;
    int hold_ms, timeout_s, quiet_ms, heartbeat_ms, connect_timeout_s, settle_ms;
    int topic_mode, shared_every;
    int api; /* two publish rounds: to a topic nobody joined, then to one subscriber */
    int await_; /* --await: each publish waits until the previous reached every client */
    int storm;  /* recovery-storm: join, drop all, publish, rejoin all with since */
    int rejoin_other; /* recovery-storm with --sub-ports: rejoin on the next server (default) */
    const char *ws_path, *pub_path;
    int v1_pct;             /* -V: percent of the herald clients on the V1 serializer */
    const char *ws_path_v1; /* their WebSocket path (vsn=1.0.0; --v1-path) */
    int longpoll;           /* --longpoll: the clients are Phoenix LongPoll sessions */
    const char *lp_path, *lp_path_v1; /* their endpoint (--lp-path), and the V1 clients' */
    int verbose;
} opts_t;

static opts_t O;

/* -------------------------------------------------------------- shared area */

/* recovery-storm: one worker's counters, and (storm_totals) all workers'.
 * Only 64-bit words, in three runs: summed, the earliest, the largest. */
typedef struct {
    uint64_t dropped, drop_done; /* clients dropped; 1 once all their sockets are closed */
    uint64_t started, failed, lost; /* reconnects begun; failed before the rejoin reply;
                                     * closed by the server after it, before live */
    uint64_t rejoined, recovered, not_recovered, live, replayed;
    uint64_t missing, dups, ooo, unexpected, live_ok; /* missing, live_ok: at the end */
    uint64_t first_start_ns;                          /* the earliest */
    uint64_t last_rejoin_ns, last_live_ns, max_live_us; /* the largest */
} sstat_t;
#define SS_SUMMED (offsetof(sstat_t, first_start_ns) / sizeof(uint64_t))
#define SS_WORDS (sizeof(sstat_t) / sizeof(uint64_t))
_Static_assert(sizeof(sstat_t) == 19 * sizeof(uint64_t), "sstat_t is 64-bit words only");

typedef struct {
    uint64_t started, ready, failed, closed, deliveries, bad_frames, other_frames;
    uint64_t first_start_ns, last_ready_ns, first_deliv_ns, last_deliv_ns;
    uint64_t cpu_us, max_lat_us, max_conn_us;
    uint64_t v1_ready, v1_deliveries, v1_max_lat_us, v1_last_deliv_ns; /* -V: the V1 clients' */
    uint64_t wrong_vsn; /* frames of the other serializer than the client's */
    uint64_t lp_polls, lp_empty, lp_msgs; /* --longpoll: polls sent; answered 204; 200 once ready */
    int32_t close_code, http_status, done, pad_;
    char err[192];
    uint64_t hist[HB_N];  /* delivery latency, us */
    uint64_t chist[HB_N]; /* connect + upgrade + join time per client, us */
    sstat_t storm;        /* recovery-storm (all zero otherwise) */
    uint64_t lhist[HB_N]; /* recovery-storm: reconnect start to live, us */
    uint64_t hist_v1[HB_N]; /* -V: the V1 clients' share of hist */
} wstat_t;

enum { SC_NONE, SC_DROP, SC_RECONNECT }; /* recovery-storm: the coordinator's command */

typedef struct {
    int32_t phase; /* 0 run, 1 finish */
    int32_t cmd;   /* recovery-storm: SC_* */
    uint64_t due_before, due_live; /* recovery-storm: publishes answered 2xx before the drop,
                                    * and after the storm (set before phase 1) */
    wstat_t w[MAXW];
    /* followed by uint8_t joined[clients], then (--await) seqstat_t [workers][NSEQ] */
} shared_t;

/* --await: one message's deliveries at one worker (the payload's "i" says which). */
typedef struct {
    uint64_t n, last_ns, max_us;
    uint64_t hist[HB_N];
} seqstat_t;

static shared_t *SH;
static uint8_t *JOINED;
static seqstat_t *SEQS; /* SEQS[worker * NSEQ + i] */
static int NSEQ;        /* messages tracked one by one (0 without --await) */

/* ------------------------------------------------------------------ helpers */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t self_cpu_us(int who)
{
    struct rusage ru;
    if (getrusage(who, &ru)) return 0;
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000ull +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* HDR-style histogram of microseconds: exact below 256 us, then 128
 * sub-buckets per power of two (< 0.8 % error). */
static int hbucket(uint64_t v)
{
    if (v < 256) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 7;
    int i = 256 + (shift - 1) * 128 + (int)((v >> shift) - 128);
    return i < HB_N ? i : HB_N - 1;
}

static double hvalue(int i) /* the middle of bucket i, in us */
{
    if (i < 256) return i;
    int k = i - 256, shift = k / 128 + 1;
    double lo = (double)((uint64_t)(128 + k % 128) << shift);
    return lo + (double)(1ull << shift) / 2;
}

static double hpercentile(const uint64_t *h, uint64_t total, double p)
{
    if (!total) return 0;
    uint64_t want = (uint64_t)(p * (double)total + 0.999999);
    if (want < 1) want = 1;
    uint64_t acc = 0;
    for (int i = 0; i < HB_N; i++) {
        acc += h[i];
        if (acc >= want) return hvalue(i);
    }
    return hvalue(HB_N - 1);
}

static void set_err(char *dst, size_t cap, const char *fmt, ...)
{
    if (dst[0]) return; /* keep the first */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, cap, fmt, ap);
    va_end(ap);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static long nofile_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return 1024;
    return rl.rlim_max == RLIM_INFINITY ? 1 << 20 : (long)rl.rlim_max;
}

/* A search for the timestamp in {"t":<digits>,...}. */
static int find_t(const char *p, size_t n, uint64_t *t)
{
    const char *q = memmem(p, n, "\"t\":", 4);
    if (!q) return 0;
    q += 4;
    const char *e = p + n;
    while (q < e && *q == ' ') q++;
    uint64_t v = 0;
    int digits = 0;
    while (q < e && *q >= '0' && *q <= '9' && digits < 20) {
        v = v * 10 + (uint64_t)(*q - '0');
        q++;
        digits++;
    }
    if (!digits) return 0;
    *t = v;
    return 1;
}

/* --await: the message number in {"t":...,"i":<digits>,...}; -1 if none. */
static int find_seq(const char *p, size_t n)
{
    const char *q = memmem(p, n, ",\"i\":", 5);
    if (!q) return -1;
    q += 5;
    const char *e = p + n;
    int v = 0, digits = 0;
    while (q < e && *q >= '0' && *q <= '9' && digits < 9) {
        v = v * 10 + (*q - '0');
        q++;
        digits++;
    }
    return digits ? v : -1;
}

static void topic_name(char *out, size_t cap, uint32_t idx) { snprintf(out, cap, "t%u", idx); }

/* -V PCT: whether client idx speaks V1. Spread evenly (client idx is V1 when
 * floor((idx + 1) * PCT / 100) steps up: at 50 every other one), so every
 * worker, every source address and any stretch of the server's subscriber
 * lists hold the same share; of N clients floor(N * PCT / 100) are V1. */
static int is_v1(uint32_t idx)
{
    uint64_t p = (uint64_t)O.v1_pct;
    return O.server == SRV_HERALD && ((uint64_t)idx + 1) * p / 100 > (uint64_t)idx * p / 100;
}

/* ------------------------------------------------------------------- worker */

enum { CS_IDLE, CS_CONNECTING, CS_HANDSHAKE, CS_JOINING, CS_READY, CS_CLOSING, CS_CLOSED };

typedef struct client {
    uv_tcp_t tcp; /* first: the handle pointer is the client pointer */
    uint32_t idx;
    uint8_t state, joins_pending, in_frag, frag_has_t;
    uint8_t gen; /* recovery-storm: 0 the first connection, 1 the reconnect */
    uint8_t v1;  /* -V: this client speaks Phoenix's V1 serializer (JSON objects) */
    uint8_t lp_step; /* --longpoll: LP_OPEN, LP_POST, LP_JOIN (polls for the join replies), LP_HELD */
    int32_t frag_seq;
    uint64_t frag_t;
    uint64_t t_start;
    char *rbuf;
    uint32_t rlen, rcap;
} client_t;

/* recovery-storm: what one client knows of the topic's stream. Offsets
 * base+1 .. base+nbits are tracked in a bitmap (seen), so that each
 * message is counted once as received, duplicated or out of order. */
typedef struct {
    uint64_t base;    /* offset in the first join reply */
    uint64_t last;    /* every offset up to here received */
    uint64_t maxseen; /* the highest offset received */
    uint64_t at_drop; /* last when dropped: the rejoin's since */
    uint64_t top;     /* offset in the rejoin reply */
    uint64_t t_reconn;
    uint8_t got_epoch, away, rejoined, live;
    uint8_t recovered; /* 0 not asked yet, 1 true, 2 false */
    char epoch[17];
} sclient_t;

typedef struct {
    uv_loop_t loop;
    uv_timer_t poll, hb;
    int id;
    uint32_t first, count, next, inflight;
    int in_start;
    client_t *clients;
    sclient_t *storm;   /* recovery-storm: per client; NULL otherwise */
    uint8_t *seen;      /* recovery-storm: count * nbytes bits of offsets received */
    uint32_t nbits, nbytes;
    int cmd_seen;       /* the last SH->cmd acted on */
    wstat_t *st;
    uint64_t tick;
    uint64_t rng;
    int port; /* the server this worker's clients connect to */
    struct sockaddr_in dst;
    int rport; /* recovery-storm: the server they reconnect to (--rejoin) */
    struct sockaddr_in rdst;
    char (*tokens)[LP_TOKEN_MAX + 1]; /* --longpoll: per client, its session's token */
    char *lpbuf;                      /* --longpoll: one message unescaped (lp_messages) */
    size_t lpcap;
    char buf[65536];
} worker_t;

static worker_t *WK;

static void start_more(void);

static uint32_t rnd32(void)
{
    uint64_t x = WK->rng; /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    WK->rng = x;
    return (uint32_t)x;
}

static void on_client_closed(uv_handle_t *h)
{
    client_t *c = (client_t *)h;
    free(c->rbuf);
    c->rbuf = NULL;
    c->rlen = c->rcap = 0;
    c->state = CS_CLOSED;
}

/* The client is gone: before it was ready it counts as a failed handshake,
 * after it as a connection the server closed. */
static void client_end(client_t *c, const char *fmt, ...)
{
    if (c->state >= CS_CLOSING) return;
    wstat_t *st = WK->st;
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int was = c->state;
    c->state = CS_CLOSING;
    if (was == CS_READY) {
        INC(st->closed);
        JOINED[c->idx] = 0;
        if (c->gen && !WK->storm[c->idx - WK->first].live) INC(st->storm.lost);
        set_err(st->err, sizeof st->err, "client %u closed: %s", c->idx, msg);
    } else {
        if (c->gen) INC(st->storm.failed); /* a reconnect of the storm */
        else INC(st->failed);
        set_err(st->err, sizeof st->err, "client %u %s: %s", c->idx,
                c->gen ? "failed to rejoin" : "failed", msg);
        WK->inflight--;
    }
    uv_close((uv_handle_t *)&c->tcp, on_client_closed);
    if (was != CS_READY) start_more();
}

static void client_ready(client_t *c)
{
    wstat_t *st = WK->st;
    uint64_t now = now_ns();
    uint64_t us = (now - c->t_start) / 1000;
    c->state = CS_READY;
    JOINED[c->idx] = 1;
    INC(st->ready);
    if (c->v1) INC(st->v1_ready);
    ST(st->last_ready_ns, now);
    st->chist[hbucket(us)]++;
    if (us > LD(st->max_conn_us)) ST(st->max_conn_us, us);
    WK->inflight--;
    start_more();
}

typedef struct {
    uv_write_t req;
    char data[];
} wbuf_t;

static void on_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up on the read side */
    free(req);
}

static int write_raw(uv_stream_t *s, const char *p, size_t n)
{
    wbuf_t *w = malloc(sizeof *w + n);
    if (!w) return UV_ENOMEM;
    memcpy(w->data, p, n);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    int rc = uv_write(&w->req, s, &b, 1, on_written);
    if (rc) free(w);
    return rc;
}

/* A masked client frame. */
static void send_frame(client_t *c, int opcode, const char *p, size_t n)
{
    if (c->state < CS_HANDSHAKE || c->state >= CS_CLOSING) return;
    size_t hl = n < 126 ? 2 : n < 65536 ? 4 : 10;
    wbuf_t *w = malloc(sizeof *w + hl + 4 + n);
    if (!w) return;
    uint8_t *f = (uint8_t *)w->data;
    f[0] = (uint8_t)(0x80 | opcode);
    if (hl == 2) {
        f[1] = (uint8_t)(0x80 | n);
    } else if (hl == 4) {
        f[1] = 0x80 | 126;
        f[2] = (uint8_t)(n >> 8);
        f[3] = (uint8_t)n;
    } else {
        f[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++) f[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
    }
    uint32_t m = rnd32();
    uint8_t *mask = f + hl;
    memcpy(mask, &m, 4);
    uint8_t *d = mask + 4;
    for (size_t i = 0; i < n; i++) d[i] = (uint8_t)p[i] ^ mask[i & 3];
    uv_buf_t b = uv_buf_init(w->data, (unsigned)(hl + 4 + n));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written)) free(w);
}

static void send_text(client_t *c, const char *s) { send_frame(c, 1, s, strlen(s)); }

static void record_delivery(const client_t *c, int have_t, uint64_t t, int seq)
{
    wstat_t *st = WK->st;
    uint64_t now = now_ns();
    if (!LD(st->first_deliv_ns)) ST(st->first_deliv_ns, now);
    ST(st->last_deliv_ns, now);
    INC(st->deliveries);
    if (c->v1) {
        INC(st->v1_deliveries);
        ST(st->v1_last_deliv_ns, now);
    }
    if (have_t) {
        uint64_t us = now > t ? (now - t) / 1000 : 0;
        st->hist[hbucket(us)]++;
        if (us > LD(st->max_lat_us)) ST(st->max_lat_us, us);
        if (c->v1) {
            st->hist_v1[hbucket(us)]++;
            if (us > LD(st->v1_max_lat_us)) ST(st->v1_max_lat_us, us);
        }
        if (seq >= 0 && seq < NSEQ) {
            seqstat_t *q = &SEQS[(size_t)WK->id * (size_t)NSEQ + (size_t)seq];
            q->hist[hbucket(us)]++;
            if (us > LD(q->max_us)) ST(q->max_us, us);
            ST(q->last_ns, now);
            INC(q->n);
        }
    }
}

/* ---- recovery-storm: the client's side */

/* The number after key in p[0..n) (its first occurrence). */
static int find_u64(const char *p, size_t n, const char *key, uint64_t *v)
{
    size_t kl = strlen(key);
    const char *q = memmem(p, n, key, kl);
    if (!q) return 0;
    const char *e = p + n;
    q += kl;
    uint64_t x = 0;
    int digits = 0;
    while (q < e && *q >= '0' && *q <= '9' && digits < 20) {
        x = x * 10 + (uint64_t)(*q++ - '0');
        digits++;
    }
    *v = x;
    return digits > 0;
}

/* A message frame of a topic with history ends ,"offset":N}] */
static int find_offset(const char *p, size_t n, uint64_t *v)
{
    static const char key[] = "\"offset\":";
    size_t kl = sizeof key - 1, from = n > 48 ? n - 48 : 0;
    for (size_t i = n >= kl ? n - kl + 1 : 0; i-- > from;)
        if (memcmp(p + i, key, kl) == 0) return find_u64(p + i, n - i, key, v);
    return 0;
}

static sclient_t *sclient(const client_t *c) { return &WK->storm[c->idx - WK->first]; }
static uint8_t *seen_of(const client_t *c)
{
    return WK->seen + (size_t)(c->idx - WK->first) * WK->nbytes;
}
/* Whether offset o (base < o <= base + nbits) was received. */
static int seen_has(const uint8_t *b, const sclient_t *s, uint64_t o)
{
    uint64_t k = o - s->base - 1;
    return b[k >> 3] >> (k & 7) & 1;
}

/* Live again: rejoined with recovered:true and every missed message in. */
static void storm_check_live(client_t *c, sclient_t *s)
{
    if (!c->gen || c->state != CS_READY || s->recovered != 1 || s->live || s->last < s->top)
        return;
    wstat_t *st = WK->st;
    uint64_t now = now_ns(), us = (now - s->t_reconn) / 1000;
    s->live = 1;
    st->lhist[hbucket(us)]++;
    if (us > LD(st->storm.max_live_us)) ST(st->storm.max_live_us, us);
    ST(st->storm.last_live_ns, now);
    INC(st->storm.live);
}

/* A message of the storm's topic: counted once, as a duplicate, or out of
 * order by its offset. Replays stay out of the latency histogram (their
 * latency is the time the client was away). */
static void storm_message(client_t *c, const char *p, size_t n, int have_t, uint64_t t, int seq)
{
    wstat_t *st = WK->st;
    sclient_t *s = sclient(c);
    uint64_t o;
    if (!find_offset(p, n, &o)) {
        record_delivery(c, have_t, t, seq);
        INC(st->storm.unexpected);
        return;
    }
    int replay = c->gen && (c->state != CS_READY || o <= s->top);
    record_delivery(c, have_t && !replay, t, seq);
    if (o <= s->base || o - s->base > WK->nbits) {
        INC(st->storm.unexpected);
        return;
    }
    uint8_t *b = seen_of(c);
    if (seen_has(b, s, o)) {
        INC(st->storm.dups);
        return;
    }
    uint64_t k = o - s->base - 1;
    b[k >> 3] |= (uint8_t)(1u << (k & 7));
    if (o < s->maxseen) INC(st->storm.ooo);
    else s->maxseen = o;
    if (replay && c->state == CS_READY && o > s->at_drop) INC(st->storm.replayed);
    while (s->last - s->base < WK->nbits && seen_has(b, s, s->last + 1)) s->last++;
    storm_check_live(c, s);
}

/* The join reply of the storm's topic (status ok): the first one gives the
 * epoch and the offset to count from; the rejoin's says whether the stream
 * was recovered and its top. */
static void storm_join_reply(client_t *c, const char *p, size_t n)
{
    wstat_t *st = WK->st;
    sclient_t *s = sclient(c);
    uint64_t off = 0;
    int have_off = find_u64(p, n, "\"offset\":", &off);
    if (!c->gen) {
        const char *e = memmem(p, n, "\"epoch\":\"", 9);
        if (!e || (size_t)(p + n - e) < 9 + 17 || e[9 + 16] != '"' || !have_off) {
            client_end(c, "join reply without epoch and offset (does the topic keep a history?)"
                          ": %.*s", (int)(n > 100 ? 100 : n), p);
            return;
        }
        memcpy(s->epoch, e + 9, 16);
        s->epoch[16] = 0;
        s->got_epoch = 1;
        s->base = s->last = s->maxseen = off;
        client_ready(c);
        return;
    }
    s->recovered = memmem(p, n, "\"recovered\":true", 16) ? 1 : 2;
    s->top = have_off ? off : 0;
    s->rejoined = 1;
    c->state = CS_READY;
    JOINED[c->idx] = 1;
    WK->inflight--;
    INC(st->storm.rejoined);
    if (s->recovered == 1) INC(st->storm.recovered);
    else INC(st->storm.not_recovered);
    ST(st->storm.last_rejoin_ns, now_ns());
    storm_check_live(c, s);
}

/* SC_DROP: every joined client closes its TCP connection at once. */
static void storm_drop(void)
{
    for (uint32_t i = 0; i < WK->count; i++) {
        client_t *c = &WK->clients[i];
        sclient_t *s = &WK->storm[i];
        if (c->state == CS_READY) {
            s->away = 1;
            s->at_drop = s->last;
            c->state = CS_CLOSING;
            JOINED[c->idx] = 0;
            INC(WK->st->storm.dropped);
            uv_close((uv_handle_t *)&c->tcp, on_client_closed);
        } else if (c->state > CS_IDLE && c->state < CS_CLOSING) {
            client_end(c, "not joined when the others dropped");
        }
    }
}

static void start_client(client_t *c, uint32_t idx);

/* SC_RECONNECT: every dropped client reconnects at once (no --concurrency). */
static void storm_reconnect(void)
{
    for (uint32_t i = 0; i < WK->count; i++) {
        client_t *c = &WK->clients[i];
        if (!WK->storm[i].away || c->state != CS_CLOSED) continue;
        c->gen = 1;
        start_client(c, c->idx);
    }
}

/* At the end: what each client was due and did not get. Due to all: the
 * messages before the drop; to a recovered client everything after, to one
 * refused recovery (told so) the live checks only. */
static void storm_final(void)
{
    wstat_t *st = WK->st;
    uint64_t missing = 0, live_ok = 0;
    for (uint32_t i = 0; i < WK->count; i++) {
        client_t *c = &WK->clients[i];
        sclient_t *s = &WK->storm[i];
        if (!s->got_epoch) continue;
        const uint8_t *b = seen_of(c);
        uint64_t lo[2] = {s->base, 0}, hi[2] = {s->base + SH->due_before, 0};
        if (s->rejoined && s->recovered == 1) hi[0] = s->top + SH->due_live;
        else if (s->rejoined) lo[1] = s->top, hi[1] = s->top + SH->due_live;
        for (int r = 0; r < 2; r++)
            for (uint64_t o = lo[r] + 1; o <= hi[r]; o++) {
                if (o <= s->base || o - s->base > WK->nbits) { /* not tracked: not received */
                    missing += hi[r] - o + 1;
                    break;
                }
                if (!seen_has(b, s, o)) missing++;
            }
        if (s->rejoined && SH->due_live) {
            uint64_t o = s->top + 1;
            while (o <= s->top + SH->due_live && o - s->base <= WK->nbits && seen_has(b, s, o)) o++;
            if (o > s->top + SH->due_live) live_ok++;
        }
    }
    ST(st->storm.missing, missing);
    ST(st->storm.live_ok, live_ok);
}

/* A broadcast in V2, [null,null,<topic>,...] (no join_ref, no ref), or in V1
 * {"topic":<topic>,"event":..,"payload":..,"ref":null} (herald writes the
 * keys in this order: core/phx.c hd_phx_v1). 1 V2, 2 V1, 0 neither. */
static int broadcast_kind(const char *p, size_t n)
{
    static const char v1_head[] = "{\"topic\":", v1_tail[] = ",\"ref\":null}";
    if (n >= 11 && memcmp(p, "[null,null,", 11) == 0) return 1;
    if (n >= sizeof v1_head - 1 + sizeof v1_tail - 1 && memcmp(p, v1_head, sizeof v1_head - 1) == 0 &&
        memcmp(p + n - (sizeof v1_tail - 1), v1_tail, sizeof v1_tail - 1) == 0)
        return 2;
    return 0;
}

/* A complete text or binary message (or the first fragment's timestamp). */
static void on_message(client_t *c, const char *p, size_t n, int have_t, uint64_t t)
{
    wstat_t *st = WK->st;
    int seq = NSEQ && have_t ? find_seq(p, n) : -1;
    if (O.server != SRV_HERALD) {
        record_delivery(c, have_t, t, seq);
        return;
    }
    int kind = broadcast_kind(p, n);
    if (kind == (c->v1 ? 2 : 1)) {
        if (WK->storm) storm_message(c, p, n, have_t, t, seq);
        else record_delivery(c, have_t, t, seq);
        return;
    }
    if (kind || (n > 0 && p[0] != (c->v1 ? '{' : '['))) { /* the other serializer's frame */
        INC(st->wrong_vsn);
        return;
    }
    if (c->state == CS_JOINING && n > 2 &&
        (c->v1 ? memmem(p, n, "\"event\":\"phx_reply\"", 19) != NULL
               : p[1] == '"' && memmem(p, n, "\"phx_reply\"", 11) != NULL)) {
        if (memmem(p, n, "\"status\":\"ok\"", 13)) {
            if (WK->storm) storm_join_reply(c, p, n);
            else if (c->joins_pending && --c->joins_pending == 0) client_ready(c);
        } else {
            client_end(c, "join refused: %.*s", (int)(n > 120 ? 120 : n), p);
        }
        return;
    }
    INC(st->other_frames);
}

static void on_frame(client_t *c, int fin, int opcode, const char *p, size_t n)
{
    uint64_t t = 0;
    switch (opcode) {
    case 0x1:
    case 0x2:
        if (c->in_frag) {
            INC(WK->st->bad_frames);
            client_end(c, "new data frame inside a fragmented message");
            return;
        }
        if (fin) {
            int have = find_t(p, n, &t);
            on_message(c, p, n, have, t);
        } else {
            c->in_frag = 1;
            c->frag_has_t = (uint8_t)find_t(p, n, &c->frag_t);
            c->frag_seq = NSEQ ? find_seq(p, n) : -1;
            /* Phoenix replies are never fragmented by herald; a fragmented
             * data message counts as one delivery when it completes. */
        }
        return;
    case 0x0:
        if (!c->in_frag) {
            INC(WK->st->bad_frames);
            client_end(c, "continuation frame with no message");
            return;
        }
        if (!c->frag_has_t) c->frag_has_t = (uint8_t)find_t(p, n, &c->frag_t);
        if (c->frag_seq < 0 && NSEQ) c->frag_seq = find_seq(p, n);
        if (fin) {
            c->in_frag = 0;
            record_delivery(c, c->frag_has_t, c->frag_t, c->frag_seq);
            if (WK->storm) INC(WK->st->storm.unexpected); /* herald does not fragment these */
        }
        return;
    case 0x8: {
        int code = n >= 2 ? ((uint8_t)p[0] << 8 | (uint8_t)p[1]) : 1005;
        ST(WK->st->close_code, code);
        char echo[2] = {(char)(code >> 8), (char)code};
        if (code != 1005) send_frame(c, 0x8, echo, 2);
        client_end(c, "close frame %d%s%.*s", code, n > 2 ? " " : "", (int)(n > 2 ? n - 2 : 0),
                   p + 2);
        return;
    }
    case 0x9:
        send_frame(c, 0xA, p, n);
        return;
    case 0xA:
        return;
    default:
        INC(WK->st->bad_frames);
        client_end(c, "unknown opcode %d", opcode);
    }
}

/* A Phoenix message of the client's serializer: V2 [ref,ref,topic,event,payload]
 * (the join's ref as join_ref), V1 {"topic","event","payload","ref"}. */
static int phx_text(const client_t *c, char *out, size_t cap, const char *ref, const char *topic,
                    const char *event, const char *payload)
{
    if (c->v1)
        return snprintf(out, cap, "{\"topic\":\"%s\",\"event\":\"%s\",\"payload\":%s,\"ref\":\"%s\"}",
                        topic, event, payload, ref);
    return snprintf(out, cap, "[\"%s\",\"%s\",\"%s\",\"%s\",%s]", ref, ref, topic, event, payload);
}

static void send_phx(client_t *c, const char *ref, const char *topic, const char *event,
                     const char *payload)
{
    char msg[400];
    phx_text(c, msg, sizeof msg, ref, topic, event, payload);
    send_text(c, msg);
}

static void handshake_done(client_t *c)
{
    if (O.server != SRV_HERALD) {
        client_ready(c);
        return;
    }
    char since[160], topic[32];
    c->state = CS_JOINING;
    if (WK->storm && c->gen) { /* the rejoin asks for what was missed */
        const sclient_t *s = sclient(c);
        c->joins_pending = 1;
        snprintf(since, sizeof since, "{\"since\":{\"epoch\":\"%s\",\"offset\":%" PRIu64 "}}",
                 s->epoch, s->at_drop);
        send_phx(c, "1", "fan", "phx_join", since);
        return;
    }
    if (O.topic_mode == TM_ONE) {
        c->joins_pending = 1;
        send_phx(c, "1", "fan", "phx_join", "{}");
        return;
    }
    topic_name(topic, sizeof topic, c->idx);
    c->joins_pending = 1;
    send_phx(c, "1", topic, "phx_join", "{}");
    if (O.topic_mode == TM_OWN_SHARED) {
        c->joins_pending = 2;
        send_phx(c, "2", "all", "phx_join", "{}");
    }
}

/* ---- --longpoll: a Phoenix LongPoll session over one keep-alive connection.
 * GET <lp-path> opens it ({"status":410,"token":T}), one POST of ndjson
 * carries its joins, polls (GET ?token=T) fetch the join replies; once every
 * join is answered ok the client is ready and holds a poll, sent again
 * whenever one is answered (204 after longpoll.poll_ms). */

enum { LP_OPEN, LP_POST, LP_JOIN, LP_HELD };

static const char *lp_path_of(const client_t *c) { return c->v1 ? O.lp_path_v1 : O.lp_path; }

/* Sends GET (body NULL: the open, or a poll once the token is known) or a POST of body. */
static void lp_request(client_t *c, const char *body)
{
    char req[2048];
    const char *path = lp_path_of(c), *tok = WK->tokens[c->idx - WK->first];
    const char *sep = !tok[0] ? "" : strchr(path, '?') ? "&token=" : "?token=";
    int n;
    if (body)
        n = snprintf(req, sizeof req,
                     "POST %s%s%s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/x-ndjson\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     path, sep, tok, O.host, WK->port, strlen(body), body);
    else
        n = snprintf(req, sizeof req, "GET %s%s%s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", path, sep, tok,
                     O.host, WK->port);
    if (n <= 0 || (size_t)n >= sizeof req) {
        client_end(c, "long-poll request too long");
        return;
    }
    if (!body && tok[0]) INC(WK->st->lp_polls);
    int rc = write_raw((uv_stream_t *)&c->tcp, req, (size_t)n);
    if (rc) client_end(c, "long-poll write: %s", uv_strerror(rc));
}

/* The POST of the client's joins: one ndjson line each, as handshake_done sends them. */
static void lp_post_joins(client_t *c)
{
    char body[1024], topic[32];
    size_t n = 0;
    c->joins_pending = 1;
    if (O.topic_mode == TM_ONE) {
        n += (size_t)phx_text(c, body, sizeof body, "1", "fan", "phx_join", "{}");
    } else {
        topic_name(topic, sizeof topic, c->idx);
        n += (size_t)phx_text(c, body, sizeof body, "1", topic, "phx_join", "{}");
        if (O.topic_mode == TM_OWN_SHARED) {
            c->joins_pending = 2;
            body[n++] = '\n';
            phx_text(c, body + n, sizeof body - n, "2", "all", "phx_join", "{}");
        }
    }
    c->lp_step = LP_POST;
    c->state = CS_JOINING; /* (on_message takes the join replies) */
    lp_request(c, body);
}

/* One complete HTTP answer at p[0..len): its length, with its status and
 * body; 0 while incomplete, -1 if it is not one (herald always sends a
 * Content-Length). */
static long http_answer(const char *p, size_t len, int *status, const char **body, size_t *blen)
{
    const char *e = memmem(p, len, "\r\n\r\n", 4);
    if (!e) return len > 16384 ? -1 : 0;
    size_t hl = (size_t)(e - p) + 4;
    if (hl < 12 || memcmp(p, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(p + 9);
    long clen = -1;
    for (const char *l = memchr(p, '\n', hl); l && l < e; l = memchr(l, '\n', (size_t)(e - l))) {
        l++;
        if (!strncasecmp(l, "content-length:", 15)) clen = strtol(l + 15, NULL, 10);
    }
    if (clen < 0 || clen > (long)RBUF_MAX) return -1;
    if (len < hl + (size_t)clen) return 0;
    *body = p + hl;
    *blen = (size_t)clen;
    return (long)(hl + (size_t)clen);
}

/* ---- a long-poll answer's JSON: {"status":S,"token":"T","messages":[M,...]},
 * each M a JSON string holding one Phoenix frame's text (V2), or the frame's
 * JSON object itself (V1). Every scan stops at the body's end. */

#define LP_DEPTH 64 /* nesting held to this in a message */

static const char *json_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    return p;
}

static int hex4(const char *p, const char *e, unsigned *v)
{
    if (e - p < 4) return 0;
    unsigned x = 0;
    for (int i = 0; i < 4; i++) {
        int ch = p[i], d = ch >= '0' && ch <= '9'   ? ch - '0'
                           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                                    : -1;
        if (d < 0) return 0;
        x = x << 4 | (unsigned)d;
    }
    *v = x;
    return 1;
}

/* The JSON string whose opening quote is at p: unescaped into out (when
 * not NULL; it takes at most the string's length in bytes, as no escape
 * is shorter than what it stands for: \uXXXX is 6 for at most 3, a
 * surrogate pair 12 for 4), its length in *outlen. Returns the byte after
 * the closing quote, or NULL if the string is malformed or unterminated. */
static const char *json_string(const char *p, const char *e, char *out, size_t *outlen)
{
    size_t k = 0;
    for (p++; p < e; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"') {
            if (outlen) *outlen = k;
            return p + 1;
        }
        if (ch < 0x20) return NULL;
        if (ch != '\\') {
            if (out) out[k] = (char)ch;
            k++;
            continue;
        }
        if (++p >= e) return NULL;
        char r;
        switch (*p) {
        case '"': r = '"'; break;
        case '\\': r = '\\'; break;
        case '/': r = '/'; break;
        case 'b': r = '\b'; break;
        case 'f': r = '\f'; break;
        case 'n': r = '\n'; break;
        case 'r': r = '\r'; break;
        case 't': r = '\t'; break;
        case 'u': {
            unsigned u, lo;
            if (!hex4(p + 1, e, &u)) return NULL;
            p += 4;
            if (u >= 0xD800 && u < 0xDC00 && e - p >= 7 && p[1] == '\\' && p[2] == 'u' &&
                hex4(p + 3, e, &lo) && lo >= 0xDC00 && lo < 0xE000) {
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            } else if (u >= 0xD800 && u < 0xE000) {
                u = 0xFFFD; /* a lone surrogate */
            }
            char b[4];
            int nb;
            if (u < 0x80) b[0] = (char)u, nb = 1;
            else if (u < 0x800) b[0] = (char)(0xC0 | u >> 6), b[1] = (char)(0x80 | (u & 63)), nb = 2;
            else if (u < 0x10000)
                b[0] = (char)(0xE0 | u >> 12), b[1] = (char)(0x80 | (u >> 6 & 63)),
                b[2] = (char)(0x80 | (u & 63)), nb = 3;
            else
                b[0] = (char)(0xF0 | u >> 18), b[1] = (char)(0x80 | (u >> 12 & 63)),
                b[2] = (char)(0x80 | (u >> 6 & 63)), b[3] = (char)(0x80 | (u & 63)), nb = 4;
            if (out) memcpy(out + k, b, (size_t)nb);
            k += (size_t)nb;
            continue;
        }
        default: return NULL;
        }
        if (out) out[k] = r;
        k++;
    }
    return NULL;
}

/* The byte after the JSON value at p (strings checked, nesting counted to
 * LP_DEPTH; the rest taken as it comes), or NULL. */
static const char *json_skip(const char *p, const char *e)
{
    int depth = 0;
    p = json_ws(p, e);
    do {
        if (p >= e) return NULL;
        if (*p == '"') {
            if (!(p = json_string(p, e, NULL, NULL))) return NULL;
        } else if (*p == '{' || *p == '[') {
            if (++depth > LP_DEPTH) return NULL;
            p++;
        } else if (*p == '}' || *p == ']') {
            if (--depth < 0) return NULL;
            p++;
        } else if (*p == ',' || *p == ':' || *p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
            if (!depth) return NULL;
            p++;
        } else { /* a number, true, false, null */
            const char *q = p;
            while (p < e && (isalnum((unsigned char)*p) || *p == '-' || *p == '+' || *p == '.')) p++;
            if (p == q) return NULL;
        }
    } while (depth);
    return p;
}

typedef struct {
    int status;
    const char *tok, *msgs; /* the token's text; the messages array's '[' (or NULL) */
    size_t toklen;
} lp_ans_t;

/* Reads the top-level object of answer b[0..n): NULL, or why it is not one. */
static const char *lp_parse(const char *b, size_t n, lp_ans_t *a)
{
    const char *p = json_ws(b, b + n), *e = b + n;
    memset(a, 0, sizeof *a);
    if (p >= e || *p != '{') return "not a JSON object";
    p = json_ws(p + 1, e);
    if (p < e && *p == '}') return NULL;
    for (;;) {
        if (p >= e || *p != '"') return "a key is not a string";
        const char *k = p + 1, *v;
        if (!(p = json_string(p, e, NULL, NULL))) return "a malformed key";
        size_t kl = (size_t)(p - 1 - k);
        p = json_ws(p, e);
        if (p >= e || *p != ':') return "no ':' after a key";
        v = json_ws(p + 1, e);
        if (!(p = json_skip(v, e))) return "a malformed value";
        if (kl == 6 && !memcmp(k, "status", 6)) {
            a->status = atoi(v);
        } else if (kl == 5 && !memcmp(k, "token", 5) && *v == '"') {
            a->tok = v + 1;
            a->toklen = (size_t)(p - 1 - a->tok);
        } else if (kl == 8 && !memcmp(k, "messages", 8)) {
            if (*v != '[') return "messages is not an array";
            a->msgs = v;
        }
        p = json_ws(p, e);
        if (p < e && *p == '}') return json_ws(p + 1, e) == e ? NULL : "bytes after the object";
        if (p >= e || *p != ',') return "no ',' or '}' after a value";
        p = json_ws(p + 1, e);
    }
}

/* Hands each message of the answer (lp_parse checked the array) to
 * on_message, as a WebSocket text frame: a string unescaped first (one
 * that is not a JSON frame is a binary message's base64: other_frames),
 * an object or array as it is. Returns the messages, or -1. */
static int lp_messages(client_t *c, const lp_ans_t *a, const char *b, size_t n)
{
    const char *e = b + n, *p = a->msgs ? json_ws(a->msgs + 1, e) : e;
    int count = 0;
    while (p < e && *p != ']' && c->state < CS_CLOSING) {
        const char *q = json_skip(p, e), *m = p;
        size_t len = 0;
        if (!q) return -1;
        if (*p == '"') {
            size_t need = (size_t)(q - p);
            if (need > WK->lpcap) {
                char *nb = realloc(WK->lpbuf, need);
                if (!nb) return -1;
                WK->lpbuf = nb;
                WK->lpcap = need;
            }
            if (!json_string(p, e, WK->lpbuf, &len)) return -1;
            m = WK->lpbuf;
        } else if (*p == '{' || *p == '[') {
            len = (size_t)(q - p);
        } else {
            return -1;
        }
        count++;
        if (*p == '"' && (!len || (m[0] != '[' && m[0] != '{'))) {
            INC(WK->st->other_frames);
        } else {
            uint64_t t = 0;
            int have = find_t(m, len, &t);
            on_message(c, m, len, have, t);
        }
        p = json_ws(q, e);
        if (p < e && *p == ',') p = json_ws(p + 1, e);
    }
    return count;
}

/* One answer of the session's: the next step. */
static void lp_answer(client_t *c, int status, const char *b, size_t n)
{
    char *tok = WK->tokens[c->idx - WK->first];
    lp_ans_t a;
    int show = (int)(n > 80 ? 80 : n);
    if (status != 200) {
        ST(WK->st->http_status, status);
        client_end(c, "long poll answered HTTP %d: %.*s", status, show, b);
        return;
    }
    const char *why = lp_parse(b, n, &a);
    if (why) {
        client_end(c, "long-poll answer malformed (%s): %.*s", why, show, b);
        return;
    }
    int lp = a.status;
    if (lp == 410 && c->lp_step != LP_OPEN) {
        client_end(c, "long-poll session gone (410): %.*s", show, b);
        return;
    }
    switch (c->lp_step) {
    case LP_OPEN:
        if (lp != 410 || !a.tok || a.toklen > LP_TOKEN_MAX || !a.toklen) {
            client_end(c, "long-poll open answered %.*s", show, b);
            return;
        }
        memcpy(tok, a.tok, a.toklen);
        tok[a.toklen] = 0;
        lp_post_joins(c);
        return;
    case LP_POST:
        if (lp != 200) {
            client_end(c, "long-poll POST answered %.*s", show, b);
            return;
        }
        c->lp_step = LP_JOIN;
        break;
    default: /* LP_JOIN (the join replies, maybe messages after them), LP_HELD:
              * 204 after poll_ms, or messages */
        if (lp == 204) INC(WK->st->lp_empty);
        else if (c->lp_step == LP_HELD) INC(WK->st->lp_msgs);
        if (lp_messages(c, &a, b, n) < 0) {
            client_end(c, "long-poll answer with a malformed message: %.*s", show, b);
            return;
        }
        if (c->state >= CS_CLOSING) return; /* (a join refused) */
        if (c->state == CS_READY) c->lp_step = LP_HELD;
    }
    lp_request(c, NULL); /* the next poll */
}

static size_t lp_process(client_t *c, const char *p, size_t len)
{
    size_t off = 0;
    while (c->state < CS_CLOSING && off < len) {
        int status = 0;
        const char *body = NULL;
        size_t blen = 0;
        long used = http_answer(p + off, len - off, &status, &body, &blen);
        if (used < 0) {
            client_end(c, "not an HTTP answer with a Content-Length");
            return len;
        }
        if (!used) break;
        off += (size_t)used;
        lp_answer(c, status, body, blen);
    }
    return off;
}

/* Parses what arrived; returns the bytes consumed (the rest is kept). */
static size_t process(client_t *c, const char *p, size_t len)
{
    size_t off = 0;
    if (O.longpoll) return lp_process(c, p, len);
    if (c->state == CS_HANDSHAKE) {
        const char *e = memmem(p, len, "\r\n\r\n", 4);
        if (!e) {
            if (len > 16384) client_end(c, "handshake answer too long");
            return 0;
        }
        size_t hl = (size_t)(e - p) + 4;
        int status = 0;
        if (len > 12 && memcmp(p, "HTTP/1.", 7) == 0) status = atoi(p + 9);
        if (status != 101) {
            ST(WK->st->http_status, status);
            const char *nl = memchr(p, '\r', hl);
            client_end(c, "handshake answered %.*s", (int)(nl ? nl - p : 40), p);
            return len;
        }
        if (!memmem(p, hl, WS_ACCEPT, sizeof WS_ACCEPT - 1)) {
            client_end(c, "handshake: wrong or missing Sec-WebSocket-Accept");
            return len;
        }
        off = hl;
        handshake_done(c);
    }
    while (c->state >= CS_JOINING && c->state < CS_CLOSING && len - off >= 2) {
        const uint8_t *f = (const uint8_t *)p + off;
        size_t avail = len - off, hl = 2;
        uint64_t plen = f[1] & 0x7f;
        if (f[1] & 0x80) {
            INC(WK->st->bad_frames);
            client_end(c, "masked frame from the server");
            return len;
        }
        if (f[0] & 0x70) {
            INC(WK->st->bad_frames);
            client_end(c, "RSV bits set by the server (0x%02x)", f[0]);
            return len;
        }
        if (plen == 126) {
            if (avail < 4) break;
            plen = (uint64_t)f[2] << 8 | f[3];
            hl = 4;
        } else if (plen == 127) {
            if (avail < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = plen << 8 | f[2 + i];
            hl = 10;
        }
        if (plen > RBUF_MAX) {
            INC(WK->st->bad_frames);
            client_end(c, "frame of %" PRIu64 " bytes", plen);
            return len;
        }
        if (avail < hl + plen) break;
        on_frame(c, f[0] & 0x80, f[0] & 0x0f, (const char *)f + hl, (size_t)plen);
        off += hl + (size_t)plen;
    }
    return off;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    b->base = WK->buf;
    b->len = sizeof WK->buf;
}

static int reserve(client_t *c, size_t n)
{
    if (n <= c->rcap) return 0;
    size_t cap = c->rcap ? c->rcap : 256;
    while (cap < n) cap *= 2;
    char *nb = realloc(c->rbuf, cap);
    if (!nb) return -1;
    c->rbuf = nb;
    c->rcap = (uint32_t)cap;
    return 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    client_t *c = (client_t *)s;
    if (n == 0) return;
    if (n < 0) {
        client_end(c, "%s", n == UV_EOF ? "connection closed by the server (EOF)"
                                        : uv_strerror((int)n));
        return;
    }
    const char *p = b->base;
    size_t len = (size_t)n;
    if (c->rlen) { /* a partial frame was kept: append and parse from there */
        if (c->rlen + len > RBUF_MAX || reserve(c, c->rlen + len)) {
            client_end(c, "more than %u bytes buffered, or out of memory", RBUF_MAX);
            return;
        }
        memcpy(c->rbuf + c->rlen, p, len);
        p = c->rbuf;
        len += c->rlen;
    }
    size_t used = process(c, p, len);
    if (c->state >= CS_CLOSING) return;
    size_t rest = len - used;
    if (!rest) {
        c->rlen = 0;
        if (c->rcap > 4096) {
            free(c->rbuf);
            c->rbuf = NULL;
            c->rcap = 0;
        }
        return;
    }
    if (p == c->rbuf) {
        memmove(c->rbuf, c->rbuf + used, rest);
    } else if (reserve(c, rest)) {
        client_end(c, "out of memory");
        return;
    } else {
        memcpy(c->rbuf, p + used, rest);
    }
    c->rlen = (uint32_t)rest;
}

static void on_connect(uv_connect_t *req, int status)
{
    client_t *c = req->data;
    free(req);
    if (c->state != CS_CONNECTING) return;
    if (status < 0) {
        client_end(c, "connect: %s", uv_strerror(status));
        return;
    }
    if (O.longpoll) {
        c->state = CS_HANDSHAKE;
        c->lp_step = LP_OPEN;
        WK->tokens[c->idx - WK->first][0] = 0;
        int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        if (rc) client_end(c, "read: %s", uv_strerror(rc));
        else lp_request(c, NULL);
        return;
    }
    char path[512], reqbuf[1024];
    char topic[32];
    topic_name(topic, sizeof topic, c->idx);
    const char *own = O.topic_mode == TM_ONE ? "fan" : topic;
    int shared = O.topic_mode == TM_OWN_SHARED;
    switch (O.server) {
    case SRV_NCHAN:
        snprintf(path, sizeof path, "%s%s%s%s", O.ws_path, own, shared ? "/" : "",
                 shared ? "all" : "");
        break;
    case SRV_NODE:
        snprintf(path, sizeof path, "%stopic=%s%s", O.ws_path, own, shared ? "&topic=all" : "");
        break;
    default:
        snprintf(path, sizeof path, "%s", c->v1 ? O.ws_path_v1 : O.ws_path);
    }
    int n = snprintf(reqbuf, sizeof reqbuf,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, O.host, c->gen ? WK->rport : WK->port);
    c->state = CS_HANDSHAKE;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (!rc) rc = write_raw((uv_stream_t *)&c->tcp, reqbuf, (size_t)n);
    if (rc) client_end(c, "handshake write: %s", uv_strerror(rc));
}

static void start_client(client_t *c, uint32_t idx)
{
    wstat_t *st = WK->st;
    c->idx = idx;
    c->v1 = (uint8_t)is_v1(idx);
    c->state = CS_CONNECTING;
    c->in_frag = 0;
    WK->inflight++;
    c->t_start = now_ns();
    if (c->gen) {
        INC(st->storm.started);
        sclient(c)->t_reconn = c->t_start;
        if (!LD(st->storm.first_start_ns)) ST(st->storm.first_start_ns, c->t_start);
    } else {
        INC(st->started);
        if (!LD(st->first_start_ns)) ST(st->first_start_ns, c->t_start);
    }
    int rc = uv_tcp_init_ex(&WK->loop, &c->tcp, AF_INET);
    if (rc) {
        c->state = CS_CLOSED;
        if (c->gen) INC(st->storm.failed);
        else INC(st->failed);
        WK->inflight--;
        set_err(st->err, sizeof st->err, "socket: %s", uv_strerror(rc));
        return;
    }
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    }
    struct sockaddr_in src;
    memset(&src, 0, sizeof src);
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(0x7f000001u + (idx % (uint32_t)O.addrs));
    rc = uv_tcp_bind(&c->tcp, (const struct sockaddr *)&src, 0);
    if (!rc) rc = uv_tcp_nodelay(&c->tcp, 1);
    uv_connect_t *req = rc ? NULL : malloc(sizeof *req);
    if (!rc && !req) rc = UV_ENOMEM;
    if (!rc) {
        req->data = c;
        const struct sockaddr_in *dst = c->gen ? &WK->rdst : &WK->dst;
        rc = uv_tcp_connect(req, &c->tcp, (const struct sockaddr *)dst, on_connect);
        if (rc) free(req);
    }
    if (rc) client_end(c, "bind/connect: %s", uv_strerror(rc));
}

static void start_more(void)
{
    if (WK->in_start) return; /* the outer call's loop continues */
    WK->in_start = 1;
    while (WK->inflight < (uint32_t)O.concurrency && WK->next < WK->count) {
        uint32_t i = WK->next++;
        start_client(&WK->clients[i], WK->first + i);
    }
    WK->in_start = 0;
}

static void on_poll(uv_timer_t *t)
{
    (void)t;
    ST(WK->st->cpu_us, self_cpu_us(RUSAGE_SELF));
    if (WK->storm) {
        int cmd = __atomic_load_n(&SH->cmd, __ATOMIC_SEQ_CST);
        if (cmd != WK->cmd_seen) {
            WK->cmd_seen = cmd;
            if (cmd == SC_DROP) storm_drop();
            else if (cmd == SC_RECONNECT) storm_reconnect();
        }
        if (cmd == SC_DROP && !LD(WK->st->storm.drop_done)) {
            uint32_t i = 0;
            while (i < WK->count && !(WK->storm[i].away && WK->clients[i].state != CS_CLOSED)) i++;
            if (i == WK->count) ST(WK->st->storm.drop_done, 1);
        }
    }
    if (LD(SH->phase) == 1) {
        if (WK->storm) storm_final();
        ST(WK->st->cpu_us, self_cpu_us(RUSAGE_SELF));
        __atomic_store_n(&WK->st->done, 1, __ATOMIC_SEQ_CST);
        _exit(0); /* the kernel closes the sockets */
    }
}

static void on_heartbeat(uv_timer_t *t)
{
    (void)t;
    if (O.server != SRV_HERALD || O.heartbeat_ms <= 0 || O.longpoll) return; /* (none in LongPoll) */
    uint64_t slots = (uint64_t)(O.heartbeat_ms / 1000);
    if (slots < 1) slots = 1;
    uint64_t k = WK->tick++ % slots;
    for (uint32_t i = 0; i < WK->count; i++) {
        client_t *c = &WK->clients[i];
        if (c->state == CS_READY && (c->idx % slots) == k)
            send_text(c, c->v1 ? "{\"topic\":\"phoenix\",\"event\":\"heartbeat\",\"payload\":{},\"ref\":\"hb\"}"
                               : "[null,\"hb\",\"phoenix\",\"heartbeat\",{}]");
    }
}

/* With --sub-ports, worker id's clients all go to server id % n, so that each
 * server's figures are those of its workers (-1: no --sub-ports). In
 * recovery-storm they reconnect (rejoin != 0) to the next server, (id + 1) % n,
 * with --rejoin other (the default), or to the same one with --rejoin same. */
static int worker_node(int id, int rejoin)
{
    if (!O.nsub_ports) return -1;
    return (id + (rejoin && O.rejoin_other ? 1 : 0)) % O.nsub_ports;
}

static int node_port(int k) { return k < 0 ? O.port : O.sub_ports[k]; }

static void worker_main(int id, uint32_t first, uint32_t count)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, SIG_IGN); /* the coordinator decides when to stop */
    raise_nofile();
    worker_t *w = calloc(1, sizeof *w);
    if (!w) _exit(1);
    WK = w;
    w->id = id;
    w->first = first;
    w->count = count;
    w->st = &SH->w[id];
    w->rng = 0x9E3779B97F4A7C15ull ^ ((uint64_t)getpid() << 17) ^ now_ns();
    w->clients = calloc(count ? count : 1, sizeof *w->clients);
    if (O.storm && w->clients) {
        w->nbits = (uint32_t)(STORM_BEFORE + O.messages + STORM_LIVE + 64);
        w->nbytes = (w->nbits + 7) / 8;
        w->storm = calloc(count ? count : 1, sizeof *w->storm);
        w->seen = calloc(count ? count : 1, w->nbytes);
        if (!w->storm || !w->seen) {
            free(w->clients);
            w->clients = NULL;
        }
    }
    if (O.longpoll && w->clients && !(w->tokens = calloc(count ? count : 1, sizeof *w->tokens))) {
        free(w->clients);
        w->clients = NULL;
    }
    if (!w->clients || uv_loop_init(&w->loop)) {
        set_err(w->st->err, sizeof w->st->err, "worker %d: out of memory", id);
        w->st->failed = count;
        _exit(1);
    }
    w->port = node_port(worker_node(id, 0));
    uv_ip4_addr(O.host, w->port, &w->dst);
    w->rport = node_port(worker_node(id, 1));
    uv_ip4_addr(O.host, w->rport, &w->rdst);
    uv_timer_init(&w->loop, &w->poll);
    uv_timer_start(&w->poll, on_poll, 5, 5);
    uv_timer_init(&w->loop, &w->hb);
    uv_timer_start(&w->hb, on_heartbeat, 1000, 1000);
    start_more();
    uv_run(&w->loop, UV_RUN_DEFAULT);
    _exit(0);
}

/* -------------------------------------------------------------- server /proc */

static long proc_status_kb(int pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

static double proc_cpu_s(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may hold spaces */
    if (!p) return -1;
    /* after ") ": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt
     * cmajflt utime(14) stime(15) */
    unsigned long ut = 0, stt = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stt) != 2)
        return -1;
    return (double)(ut + stt) / (double)sysconf(_SC_CLK_TCK);
}

static int proc_alive(int pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

static long servers_kb(const char *key)
{
    long sum = 0;
    for (int i = 0; i < O.npids; i++) {
        long v = proc_status_kb(O.pids[i], key);
        if (v < 0) return -1;
        sum += v;
    }
    return O.npids ? sum : -1;
}

static double servers_cpu(void)
{
    double sum = 0;
    for (int i = 0; i < O.npids; i++) {
        double v = proc_cpu_s(O.pids[i]);
        if (v < 0) return -1;
        sum += v;
    }
    return O.npids ? sum : -1;
}

/* Non-idle CPU seconds of the whole machine (/proc/stat), to see other load. */
static double machine_busy_s(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 7) return -1;
    /* user nice system [idle iowait] irq softirq steal */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

/* Open file descriptors of pid (each connection is one). */
static long proc_fds(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static int servers_alive(void)
{
    for (int i = 0; i < O.npids; i++)
        if (!proc_alive(O.pids[i])) return 0;
    return 1;
}

/* -------------------------------------------------------------- coordinator */

enum { ST_CONNECT, ST_HOLD, ST_PUBLISH, ST_DRAIN, ST_STORM, ST_FINISH, ST_REAP, ST_DONE };

typedef struct pubconn {
    uv_tcp_t tcp; /* first */
    uv_timer_t pace;
    int id, connected, busy, closing;
    uint64_t sent_ns;
    char *rbuf;
    size_t rlen, rcap;
} pubconn_t;

static struct {
    uv_loop_t loop;
    uv_timer_t tick;
    uv_signal_t sigint, sigterm;
    pid_t wpid[MAXW];
    int nw;
    uint32_t wfirst[MAXW], wcount[MAXW];
    int stage;
    char err[256];
    uint64_t t_begin, t_connected, t_hold_end, t_finish, deadline;
    /* publishing */
    pubconn_t pub[MAXPUB];
    int round, nrounds;
    uint64_t sent, done, errors, reconnects, target;
    uint64_t expected, own_rr, n_joined;
    uint64_t expected_v1, n_joined_v1; /* -V: the V1 clients' share (not in recovery-storm) */
    uint64_t node_joined[MAXPORT]; /* --sub-ports: joined clients of each server */
    int marked;                    /* --mark: 1 after "start", 2 after "end" */
    /* rounds: api 2 (no subscriber, one); recovery-storm 3 (before the drop,
     * while away, the live check) */
    uint64_t round_start[3], round_end[3], round_done[3], round_err[3];
    uint64_t phist[HB_N], pmax_us;
    int last_status;
    char last_body[160];
    uint64_t last_deliv_count, last_progress_ns;
    char *pad; /* O.size bytes of 'x' */
    /* --await: message i went out at seq_sent_ns[i] to seq_expect[i] clients */
    uint64_t seq_sent_ns[MAXSEQ], seq_expect[MAXSEQ];
    int await_open;                /* the previous message is delivered (or given up) */
    uint64_t await_n, await_since; /* its deliveries when last seen grow, and when */
    /* recovery-storm: step 0 waits for the drop, 1 for the clients to be live */
    int storm_step;
    uint64_t storm_n;                      /* clients dropped */
    uint64_t storm_t_drop, storm_t_away;   /* drop command; herald closed them all */
    uint64_t storm_t0, storm_t_end;        /* reconnect command; all live (or given up) */
    uint64_t storm_progress, storm_since;  /* clients done when last seen grow, and when */
    double scpu_storm0, scpu_storm1;
    uint64_t ccpu_storm0, ccpu_storm1;
    long rss_away, rss_storm, fds_away;
    /* samples */
    long rss_base, rss_conn, rss_hold, rss_end, rss_peak;
    /* each --pid apart: RSS (kB), open files (connections), CPU */
    long prss_base[MAXPID], prss_hold[MAXPID], prss_end[MAXPID];
    long pfds_base[MAXPID], pfds_hold[MAXPID];
    double pcpu_begin[MAXPID], pcpu_conn[MAXPID], pcpu_pub0[MAXPID], pcpu_end[MAXPID];
    double pcpu_storm0[MAXPID], pcpu_storm1[MAXPID]; /* recovery-storm: the storm's ends */
    double scpu_begin, scpu_conn, scpu_pub0, scpu_pub1, scpu_end;
    double busy_begin, busy_end;
    uint64_t ccpu_conn, ccpu_pub0, ccpu_pub1;
    int server_alive;
    uint64_t last_print;
    int killed;
} P;

typedef struct {
    uint64_t started, ready, failed, closed, deliveries, bad, other;
    uint64_t first_start_ns, last_ready_ns, first_deliv_ns, last_deliv_ns, max_lat_us, cpu_us;
    uint64_t max_conn_us;
    int close_code, http_status;
    const char *err;
} totals_t;

static totals_t totals(void)
{
    totals_t t;
    memset(&t, 0, sizeof t);
    t.err = "";
    for (int i = 0; i < P.nw; i++) {
        wstat_t *s = &SH->w[i];
        t.started += LD(s->started);
        t.ready += LD(s->ready);
        t.failed += LD(s->failed);
        t.closed += LD(s->closed);
        t.deliveries += LD(s->deliveries);
        t.bad += LD(s->bad_frames);
        t.other += LD(s->other_frames);
        t.cpu_us += LD(s->cpu_us);
        uint64_t v = LD(s->first_start_ns);
        if (v && (!t.first_start_ns || v < t.first_start_ns)) t.first_start_ns = v;
        v = LD(s->first_deliv_ns);
        if (v && (!t.first_deliv_ns || v < t.first_deliv_ns)) t.first_deliv_ns = v;
        if ((v = LD(s->last_ready_ns)) > t.last_ready_ns) t.last_ready_ns = v;
        if ((v = LD(s->last_deliv_ns)) > t.last_deliv_ns) t.last_deliv_ns = v;
        if ((v = LD(s->max_lat_us)) > t.max_lat_us) t.max_lat_us = v;
        if ((v = LD(s->max_conn_us)) > t.max_conn_us) t.max_conn_us = v;
        if (LD(s->close_code)) t.close_code = LD(s->close_code);
        if (LD(s->http_status)) t.http_status = LD(s->http_status);
        if (!t.err[0] && s->err[0]) t.err = s->err;
    }
    return t;
}

static uint64_t client_cpu_now(void) { return self_cpu_us(RUSAGE_SELF) + totals().cpu_us; }

/* what: 'b' begin, 'c' connected, 'h' held, 'p' first publish, 'e' end: the
 * samples of each pid */
static void sample_procs(char what)
{
    for (int i = 0; i < O.npids; i++) {
        int pid = O.pids[i];
        switch (what) {
        case 'b':
            P.prss_base[i] = proc_status_kb(pid, "VmRSS");
            P.pfds_base[i] = proc_fds(pid);
            P.pcpu_begin[i] = proc_cpu_s(pid);
            break;
        case 'c': P.pcpu_conn[i] = proc_cpu_s(pid); break;
        case 'p': P.pcpu_pub0[i] = proc_cpu_s(pid); break;
        case 's': P.pcpu_storm0[i] = proc_cpu_s(pid); break;
        case 'S': P.pcpu_storm1[i] = proc_cpu_s(pid); break;
        case 'h':
            P.prss_hold[i] = proc_status_kb(pid, "VmRSS");
            P.pfds_hold[i] = proc_fds(pid);
            break;
        default:
            P.prss_end[i] = proc_status_kb(pid, "VmRSS");
            P.pcpu_end[i] = proc_cpu_s(pid);
        }
    }
}

static void finish(const char *why)
{
    if (P.stage >= ST_FINISH) return;
    if (why) set_err(P.err, sizeof P.err, "%s", why);
    P.stage = ST_FINISH;
}

/* ---- publishers */

/* The clients joined now (JOINED), and of them those on V1. */
static void count_joined(void)
{
    P.n_joined = P.n_joined_v1 = 0;
    for (int i = 0; i < O.clients; i++) {
        P.n_joined += JOINED[i];
        if (JOINED[i] && is_v1((uint32_t)i)) P.n_joined_v1++;
    }
}

/* Publish i's topic and the deliveries due: to all clients (expect), to the
 * V1 ones among them (expect_v1). */
static const char *round_topic(char *buf, size_t cap, uint64_t i, uint64_t *expect,
                               uint64_t *expect_v1)
{
    *expect_v1 = P.n_joined_v1;
    if (O.api) {
        if (P.round == 0) {
            *expect = *expect_v1 = 0;
            return "void";
        }
        *expect = P.n_joined;
        return "fan";
    }
    if (O.topic_mode == TM_ONE) {
        *expect = P.n_joined;
        return "fan";
    }
    if (O.topic_mode == TM_OWN_SHARED && O.shared_every > 0 &&
        (i + 1) % (uint64_t)O.shared_every == 0) {
        *expect = P.n_joined;
        return "all";
    }
    uint32_t k = (uint32_t)(P.own_rr++ % (uint64_t)O.clients);
    *expect = JOINED[k] ? 1 : 0;
    *expect_v1 = JOINED[k] && is_v1(k) ? 1 : 0;
    topic_name(buf, cap, k);
    return buf;
}

static void pub_connect(pubconn_t *pc);
static void pub_next(pubconn_t *pc);
static void round_complete(void);

static void pub_closed(uv_handle_t *h)
{
    pubconn_t *pc = (pubconn_t *)h;
    pc->closing = 0;
    pc->connected = 0;
    free(pc->rbuf);
    pc->rbuf = NULL;
    pc->rlen = pc->rcap = 0;
    if (P.stage == ST_PUBLISH && P.sent < P.target) {
        if (P.reconnects++ < 100) pub_connect(pc);
        else finish("publisher: too many reconnects");
    }
}

static void pub_fail(pubconn_t *pc, const char *what, int rc)
{
    if (pc->closing) return;
    if (pc->busy) { /* the request in flight is lost */
        pc->busy = 0;
        P.errors++;
        P.round_err[P.round]++;
        P.done++;
        P.round_done[P.round]++;
    }
    set_err(P.err, sizeof P.err, "publisher %d: %s: %s", pc->id, what, uv_strerror(rc));
    pc->closing = 1;
    uv_close((uv_handle_t *)&pc->tcp, pub_closed);
    if (P.stage == ST_PUBLISH && P.round_done[P.round] >= P.target) round_complete();
}

static int parse_response(pubconn_t *pc, int *status, int *close_after)
{
    char *p = pc->rbuf;
    size_t n = pc->rlen;
    char *e = memmem(p, n, "\r\n\r\n", 4);
    if (!e) return 0;
    size_t hl = (size_t)(e - p) + 4;
    *status = n > 12 && memcmp(p, "HTTP/1.", 7) == 0 ? atoi(p + 9) : 0;
    *close_after = 0;
    long clen = -1;
    int chunked = 0;
    for (char *l = memchr(p, '\n', hl); l && l < e; l = memchr(l, '\n', (size_t)(e - l))) {
        l++;
        if (!strncasecmp(l, "content-length:", 15)) clen = strtol(l + 15, NULL, 10);
        else if (!strncasecmp(l, "transfer-encoding:", 18)) {
            char *q = l + 18;
            while (*q == ' ') q++;
            chunked = !strncasecmp(q, "chunked", 7);
        } else if (!strncasecmp(l, "connection:", 11)) {
            char *q = l + 11;
            while (*q == ' ') q++;
            *close_after = !strncasecmp(q, "close", 5);
        }
    }
    size_t body = hl, end;
    if (chunked) {
        size_t q = body;
        for (;;) {
            char *nl = memmem(p + q, n - q, "\r\n", 2);
            if (!nl) return 0;
            unsigned long sz = strtoul(p + q, NULL, 16);
            q = (size_t)(nl - p) + 2;
            if (sz == 0) {
                char *te = memmem(p + q - 2, n - (q - 2), "\r\n\r\n", 4);
                if (!te) return 0;
                end = (size_t)(te - p) + 4;
                break;
            }
            if (n < q + sz + 2) return 0;
            q += sz + 2;
        }
    } else {
        if (clen < 0) clen = 0; /* the servers measured here always send a length */
        if (n < hl + (size_t)clen) return 0;
        end = hl + (size_t)clen;
    }
    if (*status < 200 || *status > 299) {
        P.last_status = *status;
        size_t bl = end - body < sizeof P.last_body - 1 ? end - body : sizeof P.last_body - 1;
        memcpy(P.last_body, p + body, bl);
        P.last_body[bl] = 0;
        for (size_t i = 0; i < bl; i++)
            if (P.last_body[i] == '"' || P.last_body[i] == '\\' || (uint8_t)P.last_body[i] < 32)
                P.last_body[i] = ' ';
    }
    return (int)end;
}

static void pub_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    pubconn_t *pc = (pubconn_t *)h;
    if (pc->rcap - pc->rlen < 4096) {
        size_t cap = pc->rcap ? pc->rcap * 2 : 8192;
        char *nb = realloc(pc->rbuf, cap);
        if (!nb) {
            b->base = NULL;
            b->len = 0;
            return;
        }
        pc->rbuf = nb;
        pc->rcap = cap;
    }
    b->base = pc->rbuf + pc->rlen;
    b->len = pc->rcap - pc->rlen;
}

static void pub_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    pubconn_t *pc = (pubconn_t *)s;
    if (n == 0) return;
    if (n < 0) {
        pub_fail(pc, "read", (int)n);
        return;
    }
    pc->rlen += (size_t)n;
    for (;;) {
        int status, close_after;
        int used = parse_response(pc, &status, &close_after);
        if (used <= 0) break;
        memmove(pc->rbuf, pc->rbuf + used, pc->rlen - (size_t)used);
        pc->rlen -= (size_t)used;
        if (!pc->busy) continue; /* nothing was asked */
        pc->busy = 0;
        uint64_t us = (now_ns() - pc->sent_ns) / 1000;
        P.phist[hbucket(us)]++;
        if (us > P.pmax_us) P.pmax_us = us;
        if (status < 200 || status > 299) {
            P.errors++;
            P.round_err[P.round]++;
        }
        P.done++;
        P.round_done[P.round]++;
        if (close_after) {
            pc->closing = 1;
            uv_close((uv_handle_t *)&pc->tcp, pub_closed);
        }
        if (P.round_done[P.round] >= P.target) {
            round_complete();
            return;
        }
        if (!close_after) pub_next(pc);
        return;
    }
}

static void on_pace(uv_timer_t *t) { pub_next((pubconn_t *)t->data); }

static void pub_next(pubconn_t *pc)
{
    if (P.stage != ST_PUBLISH || pc->busy || !pc->connected || pc->closing) return;
    if (P.sent >= P.target) return;
    if (O.await_ && P.sent > 0 && !P.await_open) return; /* on_tick opens it */
    uint64_t now = now_ns();
    if (O.rate > 0) {
        uint64_t due = P.round_start[P.round] + (uint64_t)((double)P.sent * 1e9 / O.rate);
        if (due > now) {
            uint64_t ms = (due - now + 999999) / 1000000;
            uv_timer_start(&pc->pace, on_pace, ms, 0);
            return;
        }
    }
    uint64_t i = P.sent++;
    char tbuf[32], data[256], head[512];
    uint64_t expect = 0, expect_v1 = 0;
    const char *topic = round_topic(tbuf, sizeof tbuf, i, &expect, &expect_v1);
    P.expected += expect;
    P.expected_v1 += expect_v1;
    uint64_t t = now_ns();
    int dl;
    if (O.await_ && i < MAXSEQ) {
        P.seq_sent_ns[i] = t;
        P.seq_expect[i] = expect;
        P.await_open = 0;
        P.await_n = 0;
        P.await_since = t;
        dl = snprintf(data, sizeof data, "{\"t\":%" PRIu64 ",\"i\":%" PRIu64 ",\"pad\":\"", t, i);
    } else {
        dl = snprintf(data, sizeof data, "{\"t\":%" PRIu64 ",\"pad\":\"", t);
    }
    int padn = O.size - dl - 2;
    if (padn < 0) padn = 0;
    /* body = prefix + data + pad + "\"}" + suffix */
    char prefix[320];
    const char *suffix = "";
    int pl = 0;
    char path[300];
    switch (O.server) {
    case SRV_HERALD:
        pl = snprintf(prefix, sizeof prefix, "{\"channel\":\"%s\",\"event\":\"bench\",\"data\":",
                      topic);
        suffix = "}";
        snprintf(path, sizeof path, "%s", O.pub_path);
        break;
    case SRV_NCHAN:
        snprintf(path, sizeof path, "%s%s", O.pub_path, topic);
        break;
    default:
        snprintf(path, sizeof path, "%s%s", O.pub_path, topic);
    }
    size_t blen = (size_t)pl + (size_t)dl + (size_t)padn + 2 + strlen(suffix);
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      path, O.host, O.port, blen);
    size_t total = (size_t)hl + blen;
    wbuf_t *w = malloc(sizeof *w + total);
    if (!w) {
        finish("publisher: out of memory");
        return;
    }
    char *q = w->data;
    memcpy(q, head, (size_t)hl);
    q += hl;
    memcpy(q, prefix, (size_t)pl);
    q += pl;
    memcpy(q, data, (size_t)dl);
    q += dl;
    memcpy(q, P.pad, (size_t)padn);
    q += padn;
    memcpy(q, "\"}", 2);
    q += 2;
    memcpy(q, suffix, strlen(suffix));
    pc->busy = 1;
    pc->sent_ns = t;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)total);
    int rc = uv_write(&w->req, (uv_stream_t *)&pc->tcp, &b, 1, on_written);
    if (rc) {
        free(w);
        pub_fail(pc, "write", rc);
    }
}

static void pub_on_connect(uv_connect_t *req, int status)
{
    pubconn_t *pc = req->data;
    free(req);
    if (pc->closing) return;
    if (status < 0) {
        pub_fail(pc, "connect", status);
        return;
    }
    pc->connected = 1;
    int rc = uv_read_start((uv_stream_t *)&pc->tcp, pub_alloc, pub_read);
    if (rc) {
        pub_fail(pc, "read_start", rc);
        return;
    }
    pub_next(pc);
}

static void pub_connect(pubconn_t *pc)
{
    struct sockaddr_in dst;
    uv_ip4_addr(O.host, O.port, &dst);
    uv_tcp_init(&P.loop, &pc->tcp);
    uv_tcp_nodelay(&pc->tcp, 1);
    uv_connect_t *req = malloc(sizeof *req);
    int rc = req ? 0 : UV_ENOMEM;
    if (!rc) {
        req->data = pc;
        rc = uv_tcp_connect(req, &pc->tcp, (const struct sockaddr *)&dst, pub_on_connect);
        if (rc) free(req);
    }
    if (rc) pub_fail(pc, "connect", rc);
}

static void round_begin(void)
{
    static const int storm_msgs[3] = {STORM_BEFORE, -1, STORM_LIVE}; /* -1: --messages */
    P.sent = 0;
    P.round_start[P.round] = now_ns();
    P.target = (uint64_t)(O.storm && storm_msgs[P.round] >= 0 ? storm_msgs[P.round] : O.messages);
    if (P.round == 0) {
        P.scpu_pub0 = servers_cpu();
        P.ccpu_pub0 = client_cpu_now();
        sample_procs('p');
    }
    for (int i = 0; i < O.publishers; i++) {
        pubconn_t *pc = &P.pub[i];
        if (!pc->connected && !pc->closing) {
            if (P.round == 0) {
                pc->id = i;
                uv_timer_init(&P.loop, &pc->pace);
                pc->pace.data = pc;
            }
            pub_connect(pc);
        } else {
            pub_next(pc);
        }
    }
}

static void storm_reconnect_all(void);

static void round_complete(void)
{
    P.round_end[P.round] = now_ns();
    if (O.storm && P.round == 1) { /* published while they were away */
        storm_reconnect_all();
        return;
    }
    if (O.storm && P.round == 0) { /* the clients get these before the drop */
        P.stage = ST_DRAIN;
        P.last_progress_ns = now_ns();
        P.last_deliv_count = totals().deliveries;
        return;
    }
    if (P.round + 1 < P.nrounds && !O.storm) {
        P.round++;
        round_begin();
        return;
    }
    P.scpu_pub1 = servers_cpu();
    P.ccpu_pub1 = client_cpu_now();
    P.stage = ST_DRAIN;
    P.last_progress_ns = now_ns();
    P.last_deliv_count = totals().deliveries;
}

/* ---- --mark */

/* Runs "<--mark> WHAT" with /bin/sh and waits for it, at most 10 s (then
 * SIGKILL). The coordinator's loop stands still meanwhile, so this is only
 * called outside the measured windows: after the settle, before the first
 * publish, and after the last delivery (the clients still connected). */
static void run_mark(const char *what)
{
    if (!O.mark_cmd) return;
    size_t n = strlen(O.mark_cmd) + strlen(what) + 2;
    char *cmd = malloc(n);
    if (!cmd) {
        set_err(P.err, sizeof P.err, "--mark %s: out of memory", what);
        return;
    }
    snprintf(cmd, n, "%s %s", O.mark_cmd, what);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGPIPE, SIG_DFL);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    free(cmd);
    if (pid < 0) {
        set_err(P.err, sizeof P.err, "--mark %s: fork: %s", what, strerror(errno));
        return;
    }
    int stt = 0;
    pid_t r = 0;
    for (int i = 0; i < 2000 && (r = waitpid(pid, &stt, WNOHANG)) == 0; i++) {
        struct timespec ts = {0, 5000000}; /* 5 ms, 10 s in all */
        nanosleep(&ts, NULL);
    }
    if (r == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &stt, 0);
        set_err(P.err, sizeof P.err, "--mark %s: still running after 10 s, killed", what);
    } else if (r < 0 || !WIFEXITED(stt) || WEXITSTATUS(stt) != 0) {
        set_err(P.err, sizeof P.err, "--mark %s: failed (status %d)", what,
                r < 0 ? -1 : WIFEXITED(stt) ? WEXITSTATUS(stt) : 128 + WTERMSIG(stt));
    }
}

/* --await: message i's deliveries so far, over all workers. */
static uint64_t seq_deliveries(int i)
{
    uint64_t n = 0;
    for (int w = 0; w < P.nw; w++) n += LD(SEQS[(size_t)w * (size_t)NSEQ + (size_t)i].n);
    return n;
}

/* --await: once the last message sent has reached every client it was due
 * to (or its deliveries stood still for --quiet ms), the next may go. */
static void await_check(uint64_t now)
{
    if (P.await_open || P.sent == 0 || P.sent >= P.target) return;
    int i = (int)P.sent - 1;
    uint64_t n = seq_deliveries(i);
    if (n >= P.seq_expect[i]) {
        P.await_open = 1;
    } else if (n != P.await_n) {
        P.await_n = n;
        P.await_since = now;
    } else if (now - P.await_since > (uint64_t)O.quiet_ms * 1000000ull) {
        set_err(P.err, sizeof P.err, "message %d: deliveries stopped at %" PRIu64 " of %" PRIu64,
                i, n, P.seq_expect[i]);
        P.await_open = 1;
    }
    if (P.await_open)
        for (int k = 0; k < O.publishers; k++) pub_next(&P.pub[k]);
}

/* ---- recovery-storm: the coordinator's side */

/* The storm's counters of the workers whose clients rejoined on server
 * node (--sub-ports), or of all workers (node -1). */
static sstat_t storm_totals_of(int node)
{
    sstat_t t;
    memset(&t, 0, sizeof t);
    uint64_t *o = (uint64_t *)&t;
    for (int i = 0; i < P.nw; i++) {
        if (node >= 0 && worker_node(i, 1) != node) continue;
        const uint64_t *w = (const uint64_t *)&SH->w[i].storm;
        size_t k = 0;
        for (; k < SS_SUMMED; k++) o[k] += LD(w[k]);
        uint64_t v = LD(w[k]);
        if (v && (!o[k] || v < o[k])) o[k] = v;
        for (k++; k < SS_WORDS; k++)
            if ((v = LD(w[k])) > o[k]) o[k] = v;
    }
    return t;
}

static sstat_t storm_totals(void) { return storm_totals_of(-1); }

/* The messages before the drop are in: every joined client closes its
 * TCP connection at once. */
static void storm_drop_all(uint64_t now)
{
    P.storm_t_drop = now;
    P.storm_step = 0;
    P.stage = ST_STORM;
    __atomic_store_n(&SH->cmd, SC_DROP, __ATOMIC_SEQ_CST);
}

/* Step 0: once the workers closed their sockets and herald holds none of
 * theirs (its open files down by the clients dropped from what it held
 * after the joins, the publishers' connections opened since aside; 10 s at
 * most), the M messages go out while the clients are away. */
static void storm_tick_drop(uint64_t now)
{
    sstat_t st = storm_totals();
    long fds = O.npids ? 0 : -1, held = 0; /* now, and after the joins */
    for (int i = 0; i < O.npids; i++) {
        long v = proc_fds(O.pids[i]);
        fds = fds < 0 || v < 0 ? -1 : fds + v;
        held += P.pfds_hold[i];
    }
    long want = held - (long)st.dropped + O.publishers;
    int workers_done = st.drop_done >= (uint64_t)P.nw;
    /* without --pid, herald's side cannot be seen: give it a second */
    int herald_done = O.npids ? fds >= 0 && fds <= want : now - P.storm_t_drop > 1000000000ull;
    int late = now - P.storm_t_drop > 10000000000ull;
    if (!(workers_done && herald_done) && !late) return;
    if (late)
        set_err(P.err, sizeof P.err,
                "10 s after the drop: %s (herald holds %ld files, %ld expected)",
                workers_done ? "herald has not closed every connection" : "clients not closed",
                fds, want);
    P.storm_t_away = now;
    P.storm_n = st.dropped;
    P.fds_away = fds;
    P.n_joined = st.dropped; /* the missed messages are due to every client dropped */
    P.round = 1;
    P.stage = ST_PUBLISH;
    if (O.messages > 0) round_begin();
    else storm_reconnect_all();
}

/* Every message published while away was answered: all reconnect at once.
 * --mark runs just before (its window is the storm alone). */
static void storm_reconnect_all(void)
{
    run_mark("start");
    P.marked = 1;
    P.rss_away = servers_kb("VmRSS");
    sample_procs('s');
    P.scpu_storm0 = servers_cpu();
    P.ccpu_storm0 = client_cpu_now();
    P.storm_t0 = P.storm_since = now_ns();
    P.storm_progress = 0;
    P.storm_step = 1;
    P.stage = ST_STORM;
    __atomic_store_n(&SH->cmd, SC_RECONNECT, __ATOMIC_SEQ_CST);
}

/* Step 1: the storm ends when every dropped client is live again (or was
 * refused recovery, failed, or was closed), or after --quiet ms with no
 * client getting further; then the live check goes out. */
static void storm_tick_reconnect(uint64_t now)
{
    sstat_t st = storm_totals();
    uint64_t settled = st.live + st.not_recovered + st.failed + st.lost;
    uint64_t progress = settled + st.rejoined + st.replayed;
    if (settled < P.storm_n) {
        if (progress != P.storm_progress) {
            P.storm_progress = progress;
            P.storm_since = now;
            return;
        }
        if (now - P.storm_since <= (uint64_t)O.quiet_ms * 1000000ull) return;
        set_err(P.err, sizeof P.err,
                "storm: %" PRIu64 " of %" PRIu64 " clients live, %" PRIu64 " rejoined, after %d ms "
                "without progress", st.live, P.storm_n, st.rejoined, O.quiet_ms);
    }
    /* the missed messages are due (as replays) only to the clients recovered */
    uint64_t missed = P.round_done[1] - P.round_err[1], gone = P.storm_n - st.recovered;
    P.expected -= gone * missed < P.expected ? gone * missed : P.expected;
    P.storm_t_end = now;
    P.scpu_storm1 = servers_cpu();
    P.ccpu_storm1 = client_cpu_now();
    sample_procs('S');
    P.rss_storm = servers_kb("VmRSS");
    if (P.marked == 1) { /* the storm's end, before the live check */
        run_mark("end");
        P.marked = 2;
    }
    count_joined();
    P.round = 2;
    P.stage = ST_PUBLISH;
    round_begin();
}

/* ---- the coordinator's clock */

static void progress(const totals_t *t, uint64_t now)
{
    if (!O.verbose || now - P.last_print < 1000000000ull) return;
    P.last_print = now;
    fprintf(stderr,
            "[%6.1fs] stage %d: ready %" PRIu64 " failed %" PRIu64 " closed %" PRIu64
            " | published %" PRIu64 "/%" PRIu64 " | deliveries %" PRIu64 "/%" PRIu64 "%s%s\n",
            (double)(now - P.t_begin) / 1e9, P.stage, t->ready, t->failed, t->closed, P.done,
            P.target, t->deliveries, P.expected, t->err[0] ? " | " : "", t->err);
    if (O.storm && P.storm_t_drop) {
        sstat_t st = storm_totals();
        fprintf(stderr,
                "          storm: dropped %" PRIu64 " reconnects %" PRIu64 " rejoined %" PRIu64
                " (recovered %" PRIu64 "/%" PRIu64 ") live %" PRIu64 " failed %" PRIu64 "\n",
                st.dropped, st.started, st.rejoined, st.recovered, st.not_recovered, st.live,
                st.failed);
    }
}

static void on_tick(uv_timer_t *tm)
{
    (void)tm;
    uint64_t now = now_ns();
    totals_t t = totals();
    progress(&t, now);
    if (P.stage < ST_FINISH) {
        if (!servers_alive()) {
            P.server_alive = 0;
            finish("the server process is gone");
        } else if (now > P.deadline) {
            finish("scenario timeout");
        }
    }
    if (P.stage == ST_PUBLISH && O.await_) await_check(now);
    switch (P.stage) {
    case ST_CONNECT:
        if (t.ready + t.failed >= (uint64_t)O.clients ||
            now > P.t_begin + (uint64_t)O.connect_timeout_s * 1000000000ull) {
            if (t.ready + t.failed < (uint64_t)O.clients)
                set_err(P.err, sizeof P.err, "connect phase timed out with %" PRIu64
                        " of %d ready", t.ready, O.clients);
            P.t_connected = t.ready ? t.last_ready_ns : now;
            P.rss_conn = servers_kb("VmRSS");
            P.scpu_conn = servers_cpu();
            sample_procs('c');
            P.ccpu_conn = client_cpu_now();
            count_joined();
            P.stage = ST_HOLD;
            P.t_hold_end = now + (uint64_t)(O.hold_ms > O.settle_ms ? O.hold_ms : O.settle_ms) *
                                     1000000ull;
        }
        break;
    case ST_HOLD:
        if (now >= P.t_hold_end) {
            P.rss_hold = servers_kb("VmRSS");
            sample_procs('h');
            count_joined();
            for (int w = 0; w < P.nw && O.nsub_ports; w++)
                for (uint32_t i = P.wfirst[w]; i < P.wfirst[w] + P.wcount[w]; i++)
                    P.node_joined[w % O.nsub_ports] += JOINED[i];
            if ((O.messages > 0 || O.storm) && O.publishers > 0) {
                P.stage = ST_PUBLISH;
                if (!O.storm) { /* recovery-storm: around the storm (storm_reconnect_all) */
                    run_mark("start");
                    P.marked = 1;
                }
                round_begin();
            } else {
                finish(NULL);
            }
        }
        break;
    case ST_DRAIN: {
        int drained = t.deliveries >= P.expected;
        if (!drained && t.deliveries != P.last_deliv_count) {
            P.last_deliv_count = t.deliveries;
            P.last_progress_ns = now;
        } else if (!drained && now - P.last_progress_ns > (uint64_t)O.quiet_ms * 1000000ull) {
            set_err(P.err, sizeof P.err, "deliveries stopped at %" PRIu64 " of %" PRIu64,
                    t.deliveries, P.expected);
            drained = 1;
        }
        if (drained && O.storm && P.round == 0) storm_drop_all(now);
        else if (drained) finish(NULL);
        break;
    }
    case ST_STORM:
        if (P.storm_step == 0) storm_tick_drop(now);
        else storm_tick_reconnect(now);
        break;
    case ST_FINISH:
        if (!P.rss_end) {
            if (O.npids && !servers_alive()) P.server_alive = 0;
            P.rss_end = servers_kb("VmRSS");
            P.rss_peak = servers_kb("VmHWM");
            sample_procs('e');
            P.scpu_end = servers_cpu();
            P.busy_end = machine_busy_s();
            if (!P.scpu_pub1 && P.scpu_pub0) {
                P.scpu_pub1 = P.scpu_end;
                P.ccpu_pub1 = client_cpu_now();
            }
            if (P.marked == 1) { /* after the samples, before the clients go */
                run_mark("end");
                P.marked = 2;
            }
        }
        P.t_finish = now;
        SH->due_before = P.round_done[0] - P.round_err[0];
        SH->due_live = P.round_done[2] - P.round_err[2];
        __atomic_store_n(&SH->phase, 1, __ATOMIC_SEQ_CST);
        for (int i = 0; i < O.publishers; i++)
            if (P.pub[i].connected && !P.pub[i].closing) {
                P.pub[i].closing = 1;
                uv_close((uv_handle_t *)&P.pub[i].tcp, pub_closed);
            }
        P.stage = ST_REAP;
        break;
    case ST_REAP: {
        int left = 0;
        for (int i = 0; i < P.nw; i++) {
            if (!P.wpid[i]) continue;
            int stt;
            pid_t r = waitpid(P.wpid[i], &stt, WNOHANG);
            if (r == P.wpid[i] || (r < 0 && errno == ECHILD)) P.wpid[i] = 0;
            else left++;
        }
        if (!left) {
            P.stage = ST_DONE;
            uv_stop(&P.loop);
        } else if (now - P.t_finish > 10000000000ull && !P.killed) {
            P.killed = 1;
            for (int i = 0; i < P.nw; i++)
                if (P.wpid[i]) kill(P.wpid[i], SIGKILL);
        }
        break;
    }
    default:
        break;
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    fprintf(stderr, "herald-bench: signal %d: stopping\n", signum);
    if (P.stage < ST_FINISH) finish("interrupted");
    else
        for (int i = 0; i < P.nw; i++)
            if (P.wpid[i]) kill(P.wpid[i], SIGKILL);
}

/* ---- report */

static void jnum(const char *k, double v, int prec);
static void jint(const char *k, long long v);
static void jstr(const char *k, const char *v);

/* Several --pid: "procs":[{pid, RSS before / after the joins / at the end,
 * open files before and after the joins (their difference: the connections
 * that server holds), CPU of the connect phase and from the first publish to
 * the end}]. */
static void report_procs(void)
{
    printf(",\"procs\":[");
    for (int i = 0; i < O.npids; i++) {
        long conns =
            P.pfds_hold[i] >= 0 && P.pfds_base[i] >= 0 ? P.pfds_hold[i] - P.pfds_base[i] : -1;
        printf("%s{\"pid\":%d", i ? "," : "", O.pids[i]);
        jint("rss_base_kb", P.prss_base[i]);
        jint("rss_held_kb", P.prss_hold[i]);
        jint("rss_end_kb", P.prss_end[i]);
        jint("fds_base", P.pfds_base[i]);
        jint("fds_held", P.pfds_hold[i]);
        jint("conns", conns);
        if (conns >= 100 && P.prss_hold[i] > 0 && P.prss_base[i] > 0)
            jnum("rss_per_conn_bytes",
                 (double)(P.prss_hold[i] - P.prss_base[i]) * 1024.0 / (double)conns, 0);
        else
            printf(",\"rss_per_conn_bytes\":null");
        jnum("cpu_connect_s", P.pcpu_conn[i] - P.pcpu_begin[i], 2);
        if (P.pcpu_pub0[i] > 0) jnum("cpu_publish_s", P.pcpu_end[i] - P.pcpu_pub0[i], 2);
        if (O.storm && P.storm_t_end && P.pcpu_storm0[i] >= 0 && P.pcpu_storm1[i] >= 0)
            jnum("cpu_storm_s", P.pcpu_storm1[i] - P.pcpu_storm0[i], 2);
        printf("}");
    }
    printf("]");
}

/* --await: "per_message":[{i, expected, deliveries, missing, last_ms (from
 * the send to its last delivery), latency percentiles}]. */
static void report_messages(void)
{
    static uint64_t h[HB_N];
    int n = (int)(P.sent < (uint64_t)NSEQ ? P.sent : (uint64_t)NSEQ);
    printf(",\"per_message\":[");
    for (int i = 0; i < n; i++) {
        memset(h, 0, sizeof h);
        uint64_t deliv = 0, last = 0, maxus = 0, nlat = 0;
        for (int w = 0; w < P.nw; w++) {
            seqstat_t *q = &SEQS[(size_t)w * (size_t)NSEQ + (size_t)i];
            deliv += q->n;
            if (q->last_ns > last) last = q->last_ns;
            if (q->max_us > maxus) maxus = q->max_us;
            for (int b = 0; b < HB_N; b++) h[b] += q->hist[b];
        }
        for (int b = 0; b < HB_N; b++) nlat += h[b];
        printf("%s{\"i\":%d", i ? "," : "", i);
        jint("expected", (long long)P.seq_expect[i]);
        jint("deliveries", (long long)deliv);
        jint("missing", P.seq_expect[i] > deliv ? (long long)(P.seq_expect[i] - deliv) : 0);
        jnum("last_ms", last > P.seq_sent_ns[i] ? (double)(last - P.seq_sent_ns[i]) / 1e6 : 0, 3);
        jnum("lat_p50_ms", hpercentile(h, nlat, 0.50) / 1000, 3);
        jnum("lat_p99_ms", hpercentile(h, nlat, 0.99) / 1000, 3);
        jnum("lat_max_ms", (double)maxus / 1000, 3);
        printf("}");
    }
    printf("]");
}

/* recovery-storm: the rejoins of the workers whose clients rejoined on
 * server node (-1: all workers), and their live times (reconnect to live):
 * the fields the whole storm and each node's share. Returns st. */
static sstat_t report_rejoins(int node)
{
    static uint64_t h[HB_N];
    memset(h, 0, sizeof h);
    uint64_t n = 0;
    for (int w = 0; w < P.nw; w++)
        if (node < 0 || worker_node(w, 1) == node)
            for (int i = 0; i < HB_N; i++) h[i] += SH->w[w].lhist[i];
    for (int i = 0; i < HB_N; i++) n += h[i];
    sstat_t st = storm_totals_of(node);
    uint64_t t0 = storm_totals().first_start_ns; /* the storm's first reconnect anywhere */
    jint("reconnects", (long long)st.started);
    jint("rejoined", (long long)st.rejoined);
    jint("rejoin_failed", (long long)st.failed);
    jint("recovered_true", (long long)st.recovered);
    jint("recovered_false", (long long)st.not_recovered);
    jint("live", (long long)st.live);
    jnum("storm_s",
         st.live && t0 && st.last_live_ns > t0 ? (double)(st.last_live_ns - t0) / 1e9 : NAN, 3);
    jnum("live_p50_ms", hpercentile(h, n, 0.50) / 1000, 3);
    jnum("live_p99_ms", hpercentile(h, n, 0.99) / 1000, 3);
    jnum("live_max_ms", (double)st.max_live_us / 1000, 3);
    jint("duplicates", (long long)st.dups);
    jint("out_of_order", (long long)st.ooo);
    return st;
}

/* recovery-storm: the drop, the storm (first reconnect to the last client
 * live again), recovery answers, what each client got, and herald's CPU and
 * RSS over it. */
static void report_storm(void)
{
    uint64_t missed = P.round_done[1] - P.round_err[1];
    jint("before_drop", (long long)(P.round_done[0] - P.round_err[0]));
    jint("missed", (long long)missed);
    jint("live_checks", (long long)(P.round_done[2] - P.round_err[2]));
    if (O.nsub_ports) jstr("rejoin", O.rejoin_other ? "other" : "same");
    jint("dropped", (long long)P.storm_n);
    uint64_t drop_ns = P.storm_t_away > P.storm_t_drop ? P.storm_t_away - P.storm_t_drop : 0;
    jnum("drop_s", (double)drop_ns / 1e9, 3);
    jint("fds_away", P.fds_away);
    sstat_t st = report_rejoins(-1);
    jint("lost", (long long)st.lost);
    uint64_t t0 = st.first_start_ns;
    double rejoin_s = t0 && st.last_rejoin_ns > t0 ? (double)(st.last_rejoin_ns - t0) / 1e9 : 0;
    jnum("reconnect_s", rejoin_s, 3);
    jnum("reconnect_rate", rejoin_s > 0 ? (double)st.rejoined / rejoin_s : 0, 1);
    jint("replayed", (long long)st.replayed);
    jint("replay_due", (long long)(st.recovered * missed));
    jint("unexpected", (long long)st.unexpected);
    jint("live_check_ok", (long long)st.live_ok);
    int checked = P.round_done[2] > P.round_err[2];
    jint("live_check_missing",
         checked && st.rejoined > st.live_ok ? (long long)(st.rejoined - st.live_ok) : 0);
    double sw = P.storm_t_end > P.storm_t0 ? (double)(P.storm_t_end - P.storm_t0) / 1e9 : 0;
    double sc = P.scpu_storm1 >= 0 && P.scpu_storm0 >= 0 ? P.scpu_storm1 - P.scpu_storm0 : -1;
    double cc = (double)(P.ccpu_storm1 - P.ccpu_storm0) / 1e6;
    jnum("server_cpu_storm_s", O.npids && sw > 0 ? sc : NAN, 2);
    jnum("client_cpu_storm_s", sw > 0 ? cc : NAN, 2);
    jnum("server_util_storm", O.npids && sw > 0 ? sc / sw : NAN, 2);
    jnum("client_util_storm", sw > 0 ? cc / sw : NAN, 2);
    jint("rss_away_kb", P.rss_away);
    jint("rss_storm_kb", P.rss_storm);
}

/* recovery-storm with --sub-ports: "storm":{...} of server k, from the
 * clients that rejoined on it (--rejoin other: not those that joined it
 * first; first_node says where they did). */
static void report_node_storm(int k)
{
    uint64_t clients = 0;
    for (int w = 0; w < P.nw; w++)
        if (worker_node(w, 1) == k) clients += P.wcount[w];
    printf(",\"storm\":{\"first_node\":%d",
           (k + O.nsub_ports - (O.rejoin_other ? 1 : 0)) % O.nsub_ports);
    jint("clients", (long long)clients);
    sstat_t st = report_rejoins(k);
    jint("missing", (long long)st.missing);
    printf("}");
}

/* --sub-ports: "nodes":[{port, clients, ready, ..., latency}] per server,
 * from the workers that connected to it. */
static void report_nodes(void)
{
    static uint64_t h[HB_N];
    printf(",\"sub_ports\":[");
    for (int k = 0; k < O.nsub_ports; k++) printf("%s%d", k ? "," : "", O.sub_ports[k]);
    printf("],\"nodes\":[");
    for (int k = 0; k < O.nsub_ports; k++) {
        memset(h, 0, sizeof h);
        uint64_t clients = 0, ready = 0, failed = 0, closed = 0, deliv = 0, last = 0, maxlat = 0;
        uint64_t nlat = 0;
        for (int w = k; w < P.nw; w += O.nsub_ports) {
            wstat_t *s = &SH->w[w];
            clients += P.wcount[w];
            ready += LD(s->ready);
            failed += LD(s->failed);
            closed += LD(s->closed);
            deliv += LD(s->deliveries);
            if (LD(s->last_deliv_ns) > last) last = LD(s->last_deliv_ns);
            if (LD(s->max_lat_us) > maxlat) maxlat = LD(s->max_lat_us);
            for (int i = 0; i < HB_N; i++) h[i] += s->hist[i];
        }
        for (int i = 0; i < HB_N; i++) nlat += h[i];
        uint64_t t0 = O.api ? P.round_start[1] : P.round_start[0];
        double ds = deliv && t0 && last > t0 ? (double)(last - t0) / 1e9 : 0;
        printf("%s{\"port\":%d", k ? "," : "", O.sub_ports[k]);
        jint("clients", (long long)clients);
        jint("ready", (long long)ready);
        jint("failed", (long long)failed);
        jint("closed_by_server", (long long)closed);
        /* every publish is due to every joined client (recovery-storm: see "storm") */
        if (O.topic_mode == TM_ONE && !O.api && !O.storm) {
            uint64_t exp = P.node_joined[k] * P.sent;
            jint("expected", (long long)exp);
            jint("missing", exp > deliv ? (long long)(exp - deliv) : 0);
        }
        jint("deliveries", (long long)deliv);
        jnum("deliver_s", ds, 3);
        jnum("deliveries_per_s", ds > 0 ? (double)deliv / ds : 0, 1);
        jnum("lat_p50_ms", hpercentile(h, nlat, 0.50) / 1000, 3);
        jnum("lat_p90_ms", hpercentile(h, nlat, 0.90) / 1000, 3);
        jnum("lat_p99_ms", hpercentile(h, nlat, 0.99) / 1000, 3);
        jnum("lat_max_ms", (double)maxlat / 1000, 3);
        if (O.storm) report_node_storm(k);
        printf("}");
    }
    printf("]");
}

/* -V: the V1 clients apart, and the V2 ones (all but them); hist is every
 * client's latency histogram, t0 when the deliveries' window starts. */
static void report_v1(const uint64_t *hist, uint64_t t0)
{
    static uint64_t h1[HB_N], h2[HB_N];
    uint64_t ready = 0, deliv = 0, maxlat = 0, last = 0, wrong = 0, n1 = 0, n2 = 0, clients = 0;
    for (int w = 0; w < P.nw; w++) {
        wstat_t *st = &SH->w[w];
        ready += LD(st->v1_ready);
        deliv += LD(st->v1_deliveries);
        wrong += LD(st->wrong_vsn);
        if (LD(st->v1_max_lat_us) > maxlat) maxlat = LD(st->v1_max_lat_us);
        if (LD(st->v1_last_deliv_ns) > last) last = LD(st->v1_last_deliv_ns);
        for (int i = 0; i < HB_N; i++) h1[i] += st->hist_v1[i];
    }
    for (int i = 0; i < HB_N; i++) {
        h2[i] = hist[i] - h1[i];
        n1 += h1[i];
        n2 += h2[i];
    }
    for (int i = 0; i < O.clients; i++) clients += (uint64_t)is_v1((uint32_t)i);
    jint("v1_percent", O.v1_pct);
    jint("wrong_serializer", (long long)wrong);
    if (!O.v1_pct) return;
    jstr("v1_path", O.ws_path_v1);
    jint("v1_clients", (long long)clients);
    jint("v1_ready", (long long)ready);
    if (!O.storm) { /* recovery-storm counts what is due per client by offset */
        jint("v1_expected", (long long)P.expected_v1);
        jint("v1_missing", P.expected_v1 > deliv ? (long long)(P.expected_v1 - deliv) : 0);
    }
    jint("v1_deliveries", (long long)deliv);
    double ds = deliv && t0 && last > t0 ? (double)(last - t0) / 1e9 : 0;
    jnum("v1_deliver_s", ds, 3);
    jnum("v1_lat_p50_ms", hpercentile(h1, n1, 0.50) / 1000, 3);
    jnum("v1_lat_p90_ms", hpercentile(h1, n1, 0.90) / 1000, 3);
    jnum("v1_lat_p99_ms", hpercentile(h1, n1, 0.99) / 1000, 3);
    jnum("v1_lat_max_ms", (double)maxlat / 1000, 3);
    jnum("v2_lat_p50_ms", hpercentile(h2, n2, 0.50) / 1000, 3);
    jnum("v2_lat_p90_ms", hpercentile(h2, n2, 0.90) / 1000, 3);
    jnum("v2_lat_p99_ms", hpercentile(h2, n2, 0.99) / 1000, 3);
}

static void jnum(const char *k, double v, int prec)
{
    if (v != v || v < -1e300 || v > 1e300) printf(",\"%s\":null", k);
    else printf(",\"%s\":%.*f", k, prec, v);
}

static void jint(const char *k, long long v) { printf(",\"%s\":%lld", k, v); }

static void jstr(const char *k, const char *v)
{
    printf(",\"%s\":\"", k);
    for (const char *p = v; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 32) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

static void report(void)
{
    totals_t t = totals();
    static uint64_t hist[HB_N], chist[HB_N];
    uint64_t nlat = 0, ncon = 0;
    for (int w = 0; w < P.nw; w++)
        for (int i = 0; i < HB_N; i++) {
            hist[i] += SH->w[w].hist[i];
            chist[i] += SH->w[w].chist[i];
        }
    for (int i = 0; i < HB_N; i++) {
        nlat += hist[i];
        ncon += chist[i];
    }
    uint64_t npub = 0;
    for (int i = 0; i < HB_N; i++) npub += P.phist[i];

    double connect_s = t.ready && P.t_connected > t.first_start_ns
                           ? (double)(P.t_connected - t.first_start_ns) / 1e9
                           : 0;
    double wall_s = (double)(P.t_finish - P.t_begin) / 1e9;
    /* client CPU: this process plus the reaped workers (getrusage children) */
    double ccpu = (double)(self_cpu_us(RUSAGE_SELF) + self_cpu_us(RUSAGE_CHILDREN)) / 1e6;
    double scpu = P.scpu_end >= 0 && P.scpu_begin >= 0 ? P.scpu_end - P.scpu_begin : -1;

    printf("{\"scenario\":\"%s\"", O.scenario);
    jstr("server", server_names[O.server]);
    jint("clients", O.clients);
    jint("ready", (long long)t.ready);
    jint("failed", (long long)t.failed);
    jint("closed_by_server", (long long)t.closed);
    jint("workers", P.nw);
    jint("src_addrs", O.addrs);
    jint("concurrency", O.concurrency);
    jstr("topics", topic_mode_names[O.topic_mode]);
    jstr("transport", O.longpoll ? "longpoll" : O.server == SRV_HERALD ? "websocket" : "ws");
    if (O.longpoll) {
        uint64_t polls = 0, empty = 0, msgs = 0;
        for (int w = 0; w < P.nw; w++) {
            polls += LD(SH->w[w].lp_polls);
            empty += LD(SH->w[w].lp_empty);
            msgs += LD(SH->w[w].lp_msgs);
        }
        jstr("lp_path", O.lp_path);
        jint("lp_polls", (long long)polls);
        jint("lp_polls_empty", (long long)empty);
        jint("lp_polls_msgs", (long long)msgs);
    }
    jnum("connect_s", connect_s, 3);
    jnum("connect_rate", connect_s > 0 ? (double)t.ready / connect_s : 0, 1);
    jnum("conn_p50_ms", hpercentile(chist, ncon, 0.50) / 1000, 3);
    jnum("conn_p99_ms", hpercentile(chist, ncon, 0.99) / 1000, 3);
    jnum("conn_max_ms", (double)t.max_conn_us / 1000, 3);

    jint("messages", O.api ? O.messages * 2 : O.messages);
    if (O.await_) printf(",\"await\":true");
    jint("publishers", O.publishers);
    jint("size", O.size);
    jint("published", (long long)P.done);
    jint("pub_errors", (long long)P.errors);
    /* a round cut short (timeout, server gone) is measured up to the finish */
    double rs[3] = {0, 0, 0};
    for (int r = 0; r < P.nrounds; r++)
        if (P.round_start[r])
            rs[r] = (double)((P.round_end[r] ? P.round_end[r] : P.t_finish) - P.round_start[r]) / 1e9;
    if (O.api && P.nrounds == 2) {
        jnum("pubs_per_s", rs[0] > 0 ? (double)P.round_done[0] / rs[0] : 0, 1);
        jnum("pubs_per_s_1sub", rs[1] > 0 ? (double)P.round_done[1] / rs[1] : 0, 1);
    } else {
        jnum("publish_s", rs[0], 3);
        jnum("pubs_per_s", rs[0] > 0 ? (double)P.round_done[0] / rs[0] : 0, 1);
    }
    jnum("pub_p50_ms", hpercentile(P.phist, npub, 0.50) / 1000, 3);
    jnum("pub_p99_ms", hpercentile(P.phist, npub, 0.99) / 1000, 3);
    jnum("pub_max_ms", (double)P.pmax_us / 1000, 3);

    uint64_t deliv_start = O.api ? P.round_start[1] : P.round_start[0];
    double deliver_s = t.deliveries && t.last_deliv_ns > deliv_start && deliv_start
                           ? (double)(t.last_deliv_ns - deliv_start) / 1e9
                           : 0;
    jint("expected", (long long)P.expected);
    jint("deliveries", (long long)t.deliveries);
    if (O.storm) { /* counted per client by offset; the time away is no delivery rate */
        jint("missing", (long long)storm_totals().missing);
        deliver_s = NAN;
    } else {
        jint("missing", P.expected > t.deliveries ? (long long)(P.expected - t.deliveries) : 0);
    }
    jnum("deliver_s", deliver_s, 3);
    jnum("deliveries_per_s",
         deliver_s > 0 ? (double)t.deliveries / deliver_s : O.storm ? NAN : 0, 1);
    jnum("lat_p50_ms", hpercentile(hist, nlat, 0.50) / 1000, 3);
    jnum("lat_p90_ms", hpercentile(hist, nlat, 0.90) / 1000, 3);
    jnum("lat_p99_ms", hpercentile(hist, nlat, 0.99) / 1000, 3);
    jnum("lat_max_ms", (double)t.max_lat_us / 1000, 3);
    report_v1(hist, deliv_start);
    if (O.nsub_ports) report_nodes();
    if (NSEQ) report_messages();
    if (O.storm) report_storm();
    if (O.npids > 1) report_procs();

    long fds_base = 0, fds_held = 0;
    for (int i = 0; i < O.npids; i++) {
        fds_base += P.pfds_base[i];
        fds_held += P.pfds_hold[i];
    }
    if (O.npids) {
        jint("server_fds_base", fds_base);
        jint("server_fds_held", fds_held);
    }
    jint("rss_base_kb", P.rss_base);
    jint("rss_connected_kb", P.rss_conn);
    jint("rss_held_kb", P.rss_hold);
    jint("rss_end_kb", P.rss_end);
    jint("rss_peak_kb", P.rss_peak);
    long rss_ref = P.rss_hold > 0 ? P.rss_hold : P.rss_conn;
    /* RSS grows in pages: per connection means something only for many */
    if (t.ready >= 100 && rss_ref > 0 && P.rss_base > 0)
        jnum("rss_per_conn_bytes", (double)(rss_ref - P.rss_base) * 1024.0 / (double)t.ready, 0);
    else
        printf(",\"rss_per_conn_bytes\":null");

    double scon = P.scpu_conn - P.scpu_begin;
    double ccon = (double)P.ccpu_conn / 1e6;
    jnum("server_cpu_s", scpu, 2);
    jnum("server_cpu_connect_s", scon, 2);
    jnum("client_cpu_s", ccpu, 2);
    jnum("client_cpu_connect_s", ccon, 2);
    jnum("client_cpu_share", ccpu + scpu > 0 ? ccpu / (ccpu + scpu) : 0, 3);
    if (P.scpu_pub0 > 0 || P.ccpu_pub0) {
        double pw = (double)(P.round_end[P.nrounds - 1] ? P.round_end[P.nrounds - 1] : P.t_finish) -
                    (double)P.round_start[0];
        /* the publish window reaches the last delivery, not only the last answer */
        if (t.last_deliv_ns > P.round_start[0] && t.last_deliv_ns > P.round_end[P.nrounds - 1])
            pw = (double)(t.last_deliv_ns - P.round_start[0]);
        pw /= 1e9;
        double sp = P.scpu_end - P.scpu_pub0;
        double cp = (double)(self_cpu_us(RUSAGE_SELF) + self_cpu_us(RUSAGE_CHILDREN)) / 1e6 -
                    (double)P.ccpu_pub0 / 1e6;
        jnum("server_cpu_publish_s", sp, 2);
        jnum("client_cpu_publish_s", cp, 2);
        jnum("server_util_publish", pw > 0 ? sp / pw : 0, 2);
        jnum("client_util_publish", pw > 0 ? cp / pw : 0, 2);
    }
    jnum("server_util_connect", connect_s > 0 ? scon / connect_s : 0, 2);
    jnum("client_util_connect", connect_s > 0 ? ccon / connect_s : 0, 2);
    jnum("wall_s", wall_s, 2);
    /* all CPU the machine spent meanwhile, and what neither side accounts for
     * (other processes, interrupts): a large figure means the run was disturbed */
    if (P.busy_begin >= 0 && P.busy_end >= 0 && scpu >= 0) {
        double busy = P.busy_end - P.busy_begin;
        jnum("machine_cpu_s", busy, 2);
        jnum("other_cpu_s", busy - scpu - ccpu, 2);
    }
    printf(",\"server_alive\":%s", P.server_alive ? "true" : "false");
    jint("bad_frames", (long long)t.bad);
    jint("close_code", t.close_code);
    if (t.http_status) jint("http_status", t.http_status);
    if (P.last_status) {
        jint("pub_last_status", P.last_status);
        jstr("pub_last_body", P.last_body);
    }
    char err[512];
    snprintf(err, sizeof err, "%s%s%s%s",
             P.server_alive || strstr(P.err, "server process") ? "" : "the server process is gone; ",
             P.err, P.err[0] && t.err[0] ? "; " : "", t.err);
    jstr("error", err);
    printf("}\n");
    fflush(stdout);
}

/* ------------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: herald-bench -s SCENARIO -p PORT [options]\n"
        "  -s, --scenario NAME    idle | fanout | fanout-paced | fanout-burst | many-topics |\n"
        "                         connect | api | cluster-fanout | cluster-large | recovery-storm\n"
        "  -S, --server KIND      herald (Phoenix join, POST /api/push; default) |\n"
        "                         nchan (ws /sub/T, POST /pub/T) | node (ws /sub?topic=T, POST /pub?topic=T)\n"
        "  -H, --host ADDR        server address, loopback only (default 127.0.0.1)\n"
        "  -p, --port PORT        server port (required): publishers, and subscribers unless\n"
        "                         --sub-ports\n"
        "      --sub-ports P,Q..  spread the subscribers over these servers' ports (worker w\n"
        "                         connects to the (w mod n)-th); figures per server in \"nodes\"\n"
        "      --rejoin other|same  recovery-storm with --sub-ports: reconnect to the next\n"
        "                         server, ((w + 1) mod n)-th (default), or to the same one\n"
        "  -P, --pid PID          server process to sample (RSS, CPU); repeatable\n"
        "  -n, --clients N        WebSocket clients\n"
        "  -w, --workers W        worker processes (default: enough for the file limit, at least 2)\n"
        "  -a, --addrs K          source addresses 127.0.0.1..127.0.0.K (default 8)\n"
        "  -c, --concurrency C    handshakes in flight per worker (default 256; recovery-storm:\n"
        "                         the first connect, its reconnects all go at once)\n"
        "  -m, --messages M       publishes (api: per round; recovery-storm: while the clients\n"
        "                         are away)\n"
        "      --publishers P     keep-alive publisher connections\n"
        "      --size BYTES       size of each message's data {\"t\":...,\"pad\":\"...\"}\n"
        "      --rate R           publishes per second in all (default 0: as fast as answered)\n"
        "      --await            send each publish once the previous reached every joined\n"
        "                         client (or --quiet ms passed); figures per message (at most %d)\n"
        "      --topics MODE      one | own | own+shared\n"
        "      --shared-every K   own+shared: every K-th publish goes to the shared topic\n"
        "      --hold MS          hold the connections this long before publishing/measuring\n"
        "      --settle MS        pause between connecting and publishing (default 300)\n"
        "      --heartbeat MS     Phoenix heartbeat period per client (default 25000, 0: none)\n"
        "      --connect-timeout S  give up connecting after S seconds (default 90)\n"
        "      --quiet MS         stop waiting for deliveries after MS without progress (default 10000)\n"
        "  -t, --timeout S        hard limit for the whole run (default 115)\n"
        "      --ws-path PATH     herald: WebSocket path (default /socket/websocket?vsn=2.0.0);\n"
        "                         nchan/node: path prefix (default /sub/ or /sub?)\n"
        "      --pub-path PATH    herald: /api/push; nchan/node: prefix (/pub/ or /pub?topic=)\n"
        "  -V, --v1 PCT           herald: PCT %% of the clients (every (100/PCT)-th, spread evenly)\n"
        "                         speak Phoenix's V1 serializer: upgrade at --v1-path, join\n"
        "                         and heartbeat with V1 objects, deliveries are V1 objects\n"
        "                         (default 0: all V2); figures apart in v1_* and v2_lat_*\n"
        "      --v1-path PATH     the V1 clients' WebSocket path (default: --ws-path with\n"
        "                         vsn=1.0.0; a path without vsn is V1 as well)\n"
        "      --longpoll         herald: the clients are Phoenix LongPoll sessions, each on one\n"
        "                         keep-alive connection: open, POST the joins (ndjson), poll\n"
        "                         for the replies, then hold a poll (again when answered);\n"
        "                         each message of an answer counts as a WebSocket frame would\n"
        "                         (idle, connect, fanout, fanout-paced, fanout-burst)\n"
        "      --lp-path PATH     their endpoint (default /socket/longpoll?vsn=2.0.0; -V\n"
        "                         clients: with vsn=1.0.0)\n"
        "      --mark CMD         run 'CMD start' (sh) before the first publish and 'CMD end'\n"
        "                         after the last delivery, clients still connected (at most\n"
        "                         10 s); recovery-storm: before the reconnects, once all live\n"
        "  -v, --verbose          progress on stderr every second\n"
        "Prints one JSON line on stdout.\n", MAXSEQ);
}

static int apply_scenario(const char *s)
{
    O.scenario = s;
    O.topic_mode = TM_OWN;
    O.messages = 0;
    O.publishers = 1;
    O.size = 100;
    O.hold_ms = 0;
    O.api = 0;
    O.rate = 0;
    O.await_ = 0;
    O.storm = 0;
    if (!strcmp(s, "idle")) {
        O.clients = 18000;
        O.hold_ms = 10000;
    } else if (!strcmp(s, "fanout")) {
        O.clients = 10000;
        O.topic_mode = TM_ONE;
        O.messages = 200;
    } else if (!strcmp(s, "cluster-fanout")) {
        /* fanout's load under its own name, for runs with --sub-ports:
         * scripts/cluster-bench.sh (one node against two joined by Redis) */
        O.clients = 10000;
        O.topic_mode = TM_ONE;
        O.messages = 200;
    } else if (!strcmp(s, "cluster-large")) {
        /* 100,000 clients of one topic (over herald processes sharing a
         * port: scripts/cluster-large.sh), 5 messages each sent once the
         * previous reached everyone: connect rate, delivery time, RSS */
        O.clients = 100000;
        O.topic_mode = TM_ONE;
        O.messages = 5;
        O.await_ = 1;
        /* 3,125 clients per source address: connect() finds a free port
         * at once (at 17,500 an address it took 8x the CPU) */
        O.addrs = 32;
        O.timeout_s = 240;
        O.connect_timeout_s = 150;
    } else if (!strcmp(s, "fanout-paced")) {
        /* the same fan-out at a rate every server sustains (nchan's one
         * worker tops out near 10 a second here): latency without queueing */
        O.clients = 10000;
        O.topic_mode = TM_ONE;
        O.messages = 120;
        O.rate = 8;
    } else if (!strcmp(s, "fanout-burst")) {
        O.clients = 10000;
        O.topic_mode = TM_ONE;
        O.messages = 2000;
        O.publishers = 4;
    } else if (!strcmp(s, "many-topics")) {
        O.clients = 18000;
        O.topic_mode = TM_OWN_SHARED;
        O.messages = 20000;
        O.publishers = 4;
        O.shared_every = 1000;
    } else if (!strcmp(s, "recovery-storm")) {
        /* clients of one topic with history get STORM_BEFORE messages, all
         * drop, M are published, all rejoin at once with since: time to
         * live, recovered true/false, gaps and duplicates, herald's CPU */
        O.clients = 10000;
        O.topic_mode = TM_ONE;
        O.messages = 10;
        O.storm = 1;
    } else if (!strcmp(s, "connect")) {
        O.clients = 18000;
    } else if (!strcmp(s, "api")) {
        O.clients = 1;
        O.topic_mode = TM_ONE;
        O.messages = 20000;
        O.publishers = 4;
        O.api = 1;
    } else {
        return -1;
    }
    return 0;
}

/* The V1 clients' WebSocket path: ws_path with its vsn set to 1.0.0 (a path
 * without vsn is V1 already: Phoenix defaults to 1.0.0). Never freed. */
static const char *v1_path(const char *ws)
{
    const char *q = strchr(ws, '?'), *v = NULL;
    for (const char *p = q; p && !v; p = strchr(p + 1, '&'))
        if (!strncmp(p + 1, "vsn=", 4)) v = p + 5;
    if (!v) return ws;
    size_t head = (size_t)(v - ws), tail_at = head + strcspn(v, "&");
    char *out = malloc(strlen(ws) + 8);
    if (!out) return ws;
    memcpy(out, ws, head);
    strcpy(out + head, "1.0.0");
    strcat(out, ws + tail_at);
    return out;
}

static int parse_int(const char *s, const char *what, long lo, long hi)
{
    char *e;
    errno = 0;
    long v = strtol(s, &e, 10);
    if (errno || *e || v < lo || v > hi) {
        fprintf(stderr, "herald-bench: bad %s '%s' (%ld..%ld)\n", what, s, lo, hi);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    enum { O_PUBS = 1000, O_SIZE, O_RATE, O_TOPICS, O_SHARED, O_HOLD, O_SETTLE, O_HB, O_CTO,
           O_QUIET, O_WSPATH, O_PUBPATH, O_SUBPORTS, O_MARK, O_AWAIT, O_REJOIN, O_V1PATH, O_LONGPOLL,
           O_LPPATH };
    static const struct option lo[] = {
        {"scenario", 1, 0, 's'},   {"server", 1, 0, 'S'},      {"host", 1, 0, 'H'},
        {"port", 1, 0, 'p'},       {"pid", 1, 0, 'P'},         {"clients", 1, 0, 'n'},
        {"workers", 1, 0, 'w'},    {"addrs", 1, 0, 'a'},       {"concurrency", 1, 0, 'c'},
        {"messages", 1, 0, 'm'},   {"publishers", 1, 0, O_PUBS}, {"size", 1, 0, O_SIZE},
        {"rate", 1, 0, O_RATE},    {"topics", 1, 0, O_TOPICS}, {"shared-every", 1, 0, O_SHARED},
        {"hold", 1, 0, O_HOLD},    {"settle", 1, 0, O_SETTLE}, {"heartbeat", 1, 0, O_HB},
        {"connect-timeout", 1, 0, O_CTO}, {"quiet", 1, 0, O_QUIET}, {"timeout", 1, 0, 't'},
        {"ws-path", 1, 0, O_WSPATH}, {"pub-path", 1, 0, O_PUBPATH}, {"verbose", 0, 0, 'v'},
        {"sub-ports", 1, 0, O_SUBPORTS}, {"mark", 1, 0, O_MARK}, {"await", 0, 0, O_AWAIT},
        {"rejoin", 1, 0, O_REJOIN}, {"v1", 1, 0, 'V'},         {"v1-path", 1, 0, O_V1PATH},
        {"longpoll", 0, 0, O_LONGPOLL}, {"lp-path", 1, 0, O_LPPATH},
        {"help", 0, 0, 'h'},       {0, 0, 0, 0}};

    O.server = SRV_HERALD;
    O.host = "127.0.0.1";
    O.addrs = 8;
    O.concurrency = 256;
    O.timeout_s = 115;
    O.quiet_ms = 10000;
    O.heartbeat_ms = 25000;
    O.connect_timeout_s = 90;
    O.settle_ms = 300;
    O.rejoin_other = 1;
    /* the scenario first: its defaults, then the flags on top */
    const char *scen = NULL;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-s") || !strcmp(argv[i], "--scenario")) && i + 1 < argc)
            scen = argv[i + 1];
        else if (!strncmp(argv[i], "--scenario=", 11))
            scen = argv[i] + 11;
    }
    if (!scen) {
        usage(stderr);
        return 2;
    }
    if (apply_scenario(scen)) {
        fprintf(stderr, "herald-bench: unknown scenario '%s'\n", scen);
        return 2;
    }
    int workers = 0, workers_given = 0, opt;
    while ((opt = getopt_long(argc, argv, "s:S:H:p:P:n:w:a:c:m:t:V:vh", lo, NULL)) != -1) {
        switch (opt) {
        case 's': break;
        case 'S':
            if (!strcmp(optarg, "herald")) O.server = SRV_HERALD;
            else if (!strcmp(optarg, "nchan")) O.server = SRV_NCHAN;
            else if (!strcmp(optarg, "node")) O.server = SRV_NODE;
            else {
                fprintf(stderr, "herald-bench: unknown server '%s'\n", optarg);
                return 2;
            }
            break;
        case 'H': O.host = optarg; break;
        case 'p': O.port = parse_int(optarg, "port", 1, 65535); break;
        case 'P':
            if (O.npids == MAXPID) {
                fprintf(stderr, "herald-bench: at most %d --pid\n", MAXPID);
                return 2;
            }
            O.pids[O.npids++] = parse_int(optarg, "pid", 1, 1 << 30);
            break;
        case 'n': O.clients = parse_int(optarg, "clients", 0, 1000000); break;
        case 'w':
            workers = parse_int(optarg, "workers", 1, MAXW);
            workers_given = 1;
            break;
        case 'a': O.addrs = parse_int(optarg, "addrs", 1, 254); break;
        case 'c': O.concurrency = parse_int(optarg, "concurrency", 1, 100000); break;
        case 'm': O.messages = parse_int(optarg, "messages", 0, 100000000); break;
        case O_PUBS: O.publishers = parse_int(optarg, "publishers", 0, MAXPUB); break;
        case O_SIZE: O.size = parse_int(optarg, "size", 0, 1 << 20); break;
        case O_RATE: O.rate = atof(optarg); break;
        case O_TOPICS:
            if (!strcmp(optarg, "one")) O.topic_mode = TM_ONE;
            else if (!strcmp(optarg, "own")) O.topic_mode = TM_OWN;
            else if (!strcmp(optarg, "own+shared")) O.topic_mode = TM_OWN_SHARED;
            else {
                fprintf(stderr, "herald-bench: --topics one|own|own+shared\n");
                return 2;
            }
            break;
        case O_SHARED: O.shared_every = parse_int(optarg, "shared-every", 0, 100000000); break;
        case O_HOLD: O.hold_ms = parse_int(optarg, "hold", 0, 3600000); break;
        case O_SETTLE: O.settle_ms = parse_int(optarg, "settle", 0, 600000); break;
        case O_HB: O.heartbeat_ms = parse_int(optarg, "heartbeat", 0, 3600000); break;
        case O_CTO: O.connect_timeout_s = parse_int(optarg, "connect-timeout", 1, 3600); break;
        case O_QUIET: O.quiet_ms = parse_int(optarg, "quiet", 100, 3600000); break;
        case 't': O.timeout_s = parse_int(optarg, "timeout", 1, 3600); break;
        case O_WSPATH: O.ws_path = optarg; break;
        case O_PUBPATH: O.pub_path = optarg; break;
        case O_SUBPORTS: {
            O.nsub_ports = 0;
            char *list = strdup(optarg), *save = NULL;
            for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (O.nsub_ports == MAXPORT) {
                    fprintf(stderr, "herald-bench: at most %d --sub-ports\n", MAXPORT);
                    return 2;
                }
                O.sub_ports[O.nsub_ports++] = parse_int(tok, "sub-ports port", 1, 65535);
            }
            free(list);
            if (!O.nsub_ports) {
                fprintf(stderr, "herald-bench: --sub-ports needs at least one port\n");
                return 2;
            }
            break;
        }
        case O_MARK: O.mark_cmd = optarg; break;
        case 'V': O.v1_pct = parse_int(optarg, "v1 percent", 0, 100); break;
        case O_V1PATH: O.ws_path_v1 = optarg; break;
        case O_LONGPOLL: O.longpoll = 1; break;
        case O_LPPATH: O.lp_path = optarg; break;
        case O_AWAIT: O.await_ = 1; break;
        case O_REJOIN:
            if (!strcmp(optarg, "other")) O.rejoin_other = 1;
            else if (!strcmp(optarg, "same")) O.rejoin_other = 0;
            else {
                fprintf(stderr, "herald-bench: --rejoin other|same\n");
                return 2;
            }
            break;
        case 'v': O.verbose = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !O.port) {
        usage(stderr);
        return 2;
    }
    struct in_addr ha;
    if (inet_pton(AF_INET, O.host, &ha) != 1 || (ntohl(ha.s_addr) >> 24) != 127) {
        fprintf(stderr, "herald-bench: --host must be an IPv4 loopback address (127.0.0.0/8)\n");
        return 2;
    }
    if (!O.ws_path)
        O.ws_path = O.server == SRV_HERALD  ? "/socket/websocket?vsn=2.0.0"
                    : O.server == SRV_NCHAN ? "/sub/"
                                            : "/sub?";
    if (O.v1_pct && O.server != SRV_HERALD) {
        fprintf(stderr, "herald-bench: -V (V1 clients) is for herald only\n");
        return 2;
    }
    if (!O.ws_path_v1) O.ws_path_v1 = v1_path(O.ws_path);
    if (!O.lp_path) O.lp_path = "/socket/longpoll?vsn=2.0.0";
    O.lp_path_v1 = v1_path(O.lp_path);
    /* LongPoll: one herald, the scenarios whose clients only join and
     * receive (recovery-storm drops and rejoins WebSockets; the cluster
     * ones spread over --sub-ports) */
    static const char *const lp_scenarios[] = {"idle", "connect", "fanout", "fanout-paced",
                                               "fanout-burst", NULL};
    int lp_ok = 0;
    for (int i = 0; lp_scenarios[i]; i++) lp_ok |= !strcmp(O.scenario, lp_scenarios[i]);
    if (O.longpoll && (O.server != SRV_HERALD || !lp_ok || O.storm || O.nsub_ports)) {
        if (O.server != SRV_HERALD || O.nsub_ports)
            fprintf(stderr, "herald-bench: --longpoll is for one herald (-S herald, no "
                            "--sub-ports)\n");
        else
            fprintf(stderr, "herald-bench: --longpoll runs idle, connect, fanout, fanout-paced "
                            "and fanout-burst, not %s\n", O.scenario);
        return 2;
    }
    if (!O.pub_path)
        O.pub_path = O.server == SRV_HERALD  ? "/api/push"
                     : O.server == SRV_NCHAN ? "/pub/"
                                             : "/pub?topic=";
    if (O.topic_mode == TM_OWN_SHARED && !O.shared_every) O.shared_every = 1000;
    if (O.await_ && (O.messages > MAXSEQ || O.api)) {
        fprintf(stderr,
                "herald-bench: --await takes at most %d --messages (and not the api scenario)\n",
                MAXSEQ);
        return 2;
    }
    if (O.publishers > MAXPUB) O.publishers = MAXPUB;
    if (O.storm && (O.server != SRV_HERALD || O.topic_mode != TM_ONE || O.await_ ||
                    O.publishers < 1 || O.messages > STORM_MAXMSG)) {
        fprintf(stderr, "herald-bench: recovery-storm takes herald, --topics one, at least one "
                        "publisher, at most %d --messages, no --await\n",
                STORM_MAXMSG);
        return 2;
    }
    if (O.nsub_ports < 2) O.rejoin_other = 0; /* one server: nowhere else to go */

    raise_nofile();
    long per = nofile_limit() - 64;
    if (per < 16) per = 16;
    if (!workers) {
        workers = (int)((O.clients + per - 1) / per);
        if (workers < 2) workers = 2;
    }
    if (workers > O.clients) workers = O.clients > 0 ? O.clients : 1;
    if (workers > MAXW) workers = MAXW;
    if (O.nsub_ports > 1 && workers % O.nsub_ports) {
        /* every server gets the same number of workers (hence of clients) */
        if (workers_given) {
            fprintf(stderr, "herald-bench: --workers must be a multiple of the %d --sub-ports\n",
                    O.nsub_ports);
            return 2;
        }
        workers += O.nsub_ports - workers % O.nsub_ports;
        if (workers > MAXW) workers = MAXW - MAXW % O.nsub_ports;
    }
    if ((O.clients + workers - 1) / workers > per) {
        fprintf(stderr,
                "herald-bench: %d clients over %d workers exceed %ld files per process; use "
                "more --workers\n",
                O.clients, workers, per);
        return 2;
    }

    NSEQ = O.await_ ? O.messages : 0;
    size_t joined_sz = ((size_t)O.clients + 64 + 63) & ~(size_t)63;
    size_t shsize =
        sizeof(shared_t) + joined_sz + (size_t)workers * (size_t)NSEQ * sizeof(seqstat_t);
    SH = mmap(NULL, shsize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (SH == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    JOINED = (uint8_t *)(SH + 1);
    SEQS = (seqstat_t *)(JOINED + joined_sz);
    signal(SIGPIPE, SIG_IGN);

    P.server_alive = 1;
    P.nrounds = O.api ? 2 : O.storm ? 3 : 1;
    P.pad = malloc((size_t)O.size + 1);
    if (!P.pad) {
        perror("malloc");
        return 1;
    }
    memset(P.pad, 'x', (size_t)O.size + 1);
    P.rss_base = servers_kb("VmRSS");
    P.scpu_begin = servers_cpu();
    sample_procs('b');
    P.busy_begin = machine_busy_s();
    if (O.npids && (P.rss_base < 0 || P.scpu_begin < 0)) {
        fprintf(stderr, "herald-bench: cannot read /proc of the server pid(s)\n");
        return 2;
    }
    P.t_begin = now_ns();
    P.deadline = P.t_begin + (uint64_t)O.timeout_s * 1000000000ull;

    fflush(NULL);
    P.nw = workers;
    for (int i = 0; i < workers; i++) {
        uint32_t first = (uint32_t)((uint64_t)O.clients * (uint64_t)i / (uint64_t)workers);
        uint32_t end = (uint32_t)((uint64_t)O.clients * (uint64_t)(i + 1) / (uint64_t)workers);
        P.wfirst[i] = first;
        P.wcount[i] = end - first;
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            for (int j = 0; j < i; j++) kill(P.wpid[j], SIGKILL);
            return 1;
        }
        if (pid == 0) worker_main(i, first, end - first);
        P.wpid[i] = pid;
    }

    uv_loop_init(&P.loop);
    uv_timer_init(&P.loop, &P.tick);
    uv_timer_start(&P.tick, on_tick, 10, 10);
    uv_signal_init(&P.loop, &P.sigint);
    uv_signal_start(&P.sigint, on_signal, SIGINT);
    uv_signal_init(&P.loop, &P.sigterm);
    uv_signal_start(&P.sigterm, on_signal, SIGTERM);
    if (O.verbose)
        fprintf(stderr,
                "herald-bench: %s against %s 127.0.0.1:%d%s%s: %d clients, %d workers, %d source "
                "addresses\n",
                O.scenario, server_names[O.server], O.port,
                O.nsub_ports ? " (subscribers spread over --sub-ports)" : "",
                O.storm && O.rejoin_other ? ", rejoining on the next" : "", O.clients, workers,
                O.addrs);
    uv_run(&P.loop, UV_RUN_DEFAULT);
    report();
    return P.err[0] && !strcmp(P.err, "interrupted") ? 130 : 0;
}
