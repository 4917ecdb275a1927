/* Fuzz target: what the cluster reads from Redis (core/cluster.c): the
 * messages on topic channels (fan-out "h1 ...", "h2 ..." and binary
 * "b1 ...", presence "p1 ...") and
 * the presence hashes a node loads (HGETALL replies). Redis is shared by
 * every node, so its bytes are outside input too.
 *
 * Input: byte 0 picks the mode; the rest is
 *   0  a payload on the channel of topic "room:1" (a subscribed, tracked
 *      topic with presence events) or, with bit 1 of byte 0, "plain:1"
 *   1  a channel name up to the first '\n', then a payload
 *   2  HGETALL's reply for room:1: fields and values, '\n'-separated pairs;
 *      what comes before a NUL byte, if any, is a payload on room:1's
 *      channel that arrives while the load is out (the journal)
 * A WebSocket connection of this node is subscribed to both topics.
 *
 * Oracles: no crash or sanitizer report; every frame queued on the
 * subscriber is one WebSocket text frame whose payload is a Phoenix
 * message, or one binary frame whose payload is a V2 binary broadcast
 * (kind 2, its lengths within the frame) of room:1 or plain:1 (checked
 * here by hand, not with phx.c's parser); presence_state of room:1 stays
 * valid JSON; the node's own entry is never replaced or removed by what
 * Redis says; an entry announced while a load was out outlives the load. */
#include "cluster.c"

#include <jansson.h>

static uv_loop_t loop;
static hd_config cfg;
static hd_stats st;
static hd_net net;
static hd_engine eng;
static hd_cluster cl;
static hd_conn *sub;
static char *urls[2] = {"redis://127.0.0.1:1", NULL};

static void die(const char *what)
{
    fprintf(stderr, "fuzz_cluster: %s\n", what);
    abort();
}

static void conn_read(hd_conn *c, uint8_t *d, size_t n) { (void)c, (void)d, (void)n; }
static void conn_shut(hd_conn *c, uint16_t code, const char *reason)
{
    (void)code, (void)reason;
    hd_conn_close(c);
}
static void conn_closed(hd_conn *c) { (void)c; }
static void conn_free(hd_conn *c) { (void)c; }
static const hd_conn_ops ops = {.on_read = conn_read, .close = conn_shut, .on_closed = conn_closed, .free = conn_free};

static void resolve(void *ud, const char *name, size_t len, hd_topic_policy *p)
{
    (void)ud;
    if (len >= 5 && memcmp(name, "room:", 5) == 0) p->presence = 1;
}

static void setup(void)
{
    uv_loop_init(&loop);
    cfg.max_connections = 100;
    cfg.send_queue_bytes = 1 << 30;
    cfg.max_queued_bytes = (size_t)1 << 40;
    cfg.presence_batch_ms = 1000000;
    cfg.cluster_urls = urls;
    cfg.ncluster_urls = 1;
    cfg.cluster_queue_max = 10;
    cfg.cluster_heartbeat_ms = 1000;
    cfg.cluster_node_timeout_ms = 3000;
    if (hd_engine_init(&eng, &loop, &cfg, &st, "self")) die("engine init");
    eng.pol.resolve = resolve;
    hd_net_init(&net, &loop, &cfg, &st);
    if (hd_cluster_init(&cl, &loop, &cfg, &eng, "self")) die("cluster init");
    sub = calloc(1, sizeof *sub);
    uv_tcp_init(&loop, &sub->tcp);
    sub->tcp.data = sub;
    sub->net = &net;
    sub->ops = &ops;
    sub->kind = HD_CONN_WS;
    sub->id = 1;
    net.conns = sub;
    net.nconns = net.nws = 1;
    hd_sub *a = hd_topics_subscribe(&eng.topics, "room:1", 6, sub, "1");
    hd_sub *b = hd_topics_subscribe(&eng.topics, "plain:1", 7, sub, "2");
    if (!a || !b || hd_presence_track(&eng.pres, a, NULL)) die("subscribe");
}

/* A binary frame's payload is a broadcast of one of the two topics. */
static void check_broadcast(const uint8_t *p, size_t len)
{
    if (len < 3 || p[0] != 2) die("a binary frame that is not a broadcast");
    size_t tl = p[1], el = p[2];
    if (3 + tl + el > len) die("a broadcast whose header does not fit");
    if (!(tl == 6 && memcmp(p + 3, "room:1", 6) == 0) &&
        !(tl == 7 && memcmp(p + 3, "plain:1", 7) == 0))
        die("a broadcast of a topic nobody here joined");
}

/* Every queued frame is a text frame holding a Phoenix message, or a
 * binary frame holding a broadcast. */
static void check_queue(void)
{
    for (hd_wq_item *it = sub->wq_head; it; it = it->next) {
        const hd_buf *f = it->buf;
        if (f->len < 2 || (f->data[0] != 0x81 && f->data[0] != 0x82))
            die("a queued frame that is not one text or binary frame");
        size_t len;
        const uint8_t *p = frame_payload(f, &len);
        if (p + len != f->data + f->len) die("a frame whose length is not its header's");
        if (f->data[0] == 0x82) {
            check_broadcast(p, len);
            continue;
        }
        json_error_t e;
        json_t *j = json_loadb((const char *)p, len, JSON_ALLOW_NUL, &e);
        if (!j || !json_is_array(j) || json_array_size(j) != 5) die("a frame that is not Phoenix");
        json_decref(j);
    }
    hd_conn_drop_queue(sub); /* (nothing is in flight: all of it goes) */
}

static void check_presence(void)
{
    hd_topic *tp = hd_topics_find(&eng.topics, "room:1", 6);
    if (!tp) die("room:1 is gone");
    int own = 0;
    for (hd_pres *e = tp->pres; e; e = e->next) own += e->sub != NULL;
    if (own != 1) die("this node's own entry was touched");
    hd_str s = HD_STR_INIT;
    hd_presence_state(&eng.pres, tp, &s);
    json_error_t e;
    json_t *j = s.oom ? NULL : json_loadb(s.p, s.len, 0, &e);
    if (!j || !json_is_object(j)) die("presence_state is not a JSON object");
    json_decref(j);
    hd_str_free(&s);
    /* Bounded: remote entries go again (as a dead node's would). */
    for (hd_pres *e2 = tp->pres, *next; e2; e2 = next) {
        next = e2->next;
        if (!e2->sub) hd_presence_withdraw(&eng.pres, tp, e2->node);
    }
}

static size_t remote_entries(void)
{
    size_t n = 0;
    for (hd_pres *e = hd_topics_find(&eng.topics, "room:1", 6)->pres; e; e = e->next) n += !e->sub;
    return n;
}

/* HGETALL's reply built from '\n'-separated lines, after what comes
 * before a NUL was announced on the channel. */
static void load(const uint8_t *d, size_t n)
{
    load_req *q = load_new(&cl, "room:1", 6);
    const uint8_t *nul = memchr(d, 0, n);
    if (nul) {
        static const char ch[] = "herald:t:{room:1}";
        deliver(&cl.shards[0], ch, sizeof ch - 1, (const char *)d, (size_t)(nul - d));
        n -= (size_t)(nul - d) + 1;
        d = nul + 1;
    }
    redisReply *el[64];
    size_t ne = 0;
    const char *p = (const char *)d, *end = p + n;
    while (p <= end && ne < 64) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = (size_t)((nl ? nl : end) - p);
        redisReply *r = calloc(1, sizeof *r);
        r->type = REDIS_REPLY_STRING;
        r->str = malloc(len + 1);
        memcpy(r->str, p, len);
        r->str[len] = 0;
        r->len = len;
        el[ne++] = r;
        if (!nl) break;
        p = nl + 1;
    }
    redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = ne, .element = el};
    size_t before = remote_entries();
    on_loaded(NULL, &arr, q);
    if (remote_entries() < before) die("a load dropped an entry announced while it was out");
    for (size_t i = 0; i < ne; i++) {
        free(el[i]->str);
        free(el[i]);
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
    int mode = data[0] % 3;
    const char *rest = (const char *)data + 1;
    size_t n = size - 1;
    hd_shard *s = &cl.shards[0];
    if (mode == 0) {
        const char *ch = data[0] & 2 ? "herald:t:{plain:1}" : "herald:t:{room:1}";
        deliver(s, ch, strlen(ch), rest, n);
    } else if (mode == 1) {
        const char *nl = memchr(rest, '\n', n);
        size_t cl_ = nl ? (size_t)(nl - rest) : n;
        deliver(s, rest, cl_, nl ? nl + 1 : rest + n, nl ? n - cl_ - 1 : 0);
    } else {
        load((const uint8_t *)rest, n);
    }
    check_presence();
    hd_presence_flush(&eng.pres); /* the diffs go out as frames: checked, then dropped */
    check_queue();
    return 0;
}
