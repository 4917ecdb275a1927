/* Fuzz target: what another node sends this one's long polls through
 * Redis (core/longpoll.c, hd_lp_node_message): requests forwarded to a
 * session of this node's ("lq1"), the answers to requests it forwarded
 * ("lr1") and cancels ("lc1"). Redis is shared by every node, so these
 * bytes are outside input.
 *
 * Input: byte 0 picks the mode; the rest is
 *   0  a whole message
 *   1  "lq1 peer 7 <n> G\n<the live session's token>\n" then the rest
 *      (a poll: answered at once when something is queued, else held)
 *   2  the same with N and the rest an ndjson body (the batch splitter,
 *      base64 lines, the handler)
 *   3  the same with T (the rest one message)
 *   4  "lc1 peer 7 <n>\n<the token>" then the rest (a cancel of the last
 *      poll: it, or with more bytes a token that is not the session's)
 *   5  "lr1 " then the rest, after this node forwarded a poll of its own
 *      (a connection that is not there: the answer is dropped)
 * The session has a text frame queued now and then, so that polls are
 * answered with messages.
 *
 * The cluster is not there: hd_cluster_to_node and hd_cluster_reaches are
 * this file's, and what would go to Redis is checked instead.
 *
 * Oracles: no crash or sanitizer report; everything sent back is
 * "lr1 <id> <seq> <status 200..599> <0|1>\n" and a JSON object with an
 * integer status (and, for a poll's 200, a messages array of strings), or
 * an "lc1". */
#include "longpoll.c"

#include <jansson.h>

static uv_loop_t loop;
static hd_config cfg;
static hd_stats st;
static hd_net net;
static hd_lp_ctx lp;
static hd_conn from;
static hd_conn *sess;
static char token[HD_LP_TOKEN_MAX + 1];

static void die(const char *what, const char *m, size_t n)
{
    fprintf(stderr, "fuzz_longpoll: %s: %.*s\n", what, (int)(n > 200 ? 200 : n), m);
    abort();
}

/* What would have gone to another node. */
int hd_cluster_reaches(const hd_cluster *c, const char *node)
{
    (void)c;
    return node && *node;
}

int hd_cluster_to_node(hd_cluster *c, const char *node, const char *msg, size_t len)
{
    (void)c;
    if (!node || !*node) die("a message to no node", msg, len);
    if (len >= 4 && memcmp(msg, "lc1 ", 4) == 0) return 0;
    if (len >= 4 && memcmp(msg, "lq1 ", 4) == 0) return 0;
    if (len < 4 || memcmp(msg, "lr1 ", 4) != 0) die("not an lr1", msg, len);
    const char *nl = memchr(msg, '\n', len);
    unsigned long long id, seq;
    int http, keep, used = 0;
    if (!nl || sscanf(msg + 4, "%llu %llu %d %d%n", &id, &seq, &http, &keep, &used) != 4 ||
        msg + 4 + used != nl || http < 200 || http > 599 || (keep != 0 && keep != 1))
        die("a malformed lr1 head", msg, len);
    json_error_t e;
    json_t *j = json_loadb(nl + 1, len - (size_t)(nl + 1 - msg), 0, &e);
    json_t *status = json_object_get(j, "status");
    if (!json_is_object(j) || !json_is_integer(status)) die("an lr1 body that is not a status", msg, len);
    json_t *msgs = json_object_get(j, "messages");
    if (json_integer_value(status) == 200 && msgs) {
        size_t i;
        json_t *m;
        json_array_foreach(msgs, i, m) if (!json_is_string(m)) die("a message that is not text", msg, len);
    }
    json_decref(j);
    return 0;
}

static int on_message(void *ud, hd_conn *c, int opcode, uint8_t *data, size_t len, int refused)
{
    (void)ud, (void)c, (void)opcode, (void)data, (void)len, (void)refused;
    return 0;
}
static void on_close(void *ud, hd_conn *c, const char *reason) { (void)ud, (void)c, (void)reason; }
static const hd_ws_handler handler = {on_message, on_close};

static void new_session(void)
{
    lp_session *s = calloc(1, sizeof *s);
    sess = s ? hd_net_add_session(&net, &lp.ops, s, &from) : NULL;
    if (!sess) die("out of memory", "", 0);
    s->c = sess;
    sess->flags |= HD_CF_TEXT;
    hd_ws_rate_init(&s->rate, &cfg, uv_now(&loop));
    idle(&lp, s);
    token_for(&lp, sess->id, token);
}

static void setup(void)
{
    uv_loop_init(&loop);
    cfg.max_connections = 100;
    cfg.send_queue_bytes = 1 << 20;
    cfg.max_queued_bytes = (size_t)1 << 30;
    cfg.max_message_bytes = 65536;
    cfg.lp_poll_ms = 1000000;
    cfg.lp_window_ms = 1000000;
    cfg.lp_max_batch = 100;
    cfg.io_timeout_ms = 1000;
    cfg.ws_close_ms = 1000;
    hd_net_init(&net, &loop, &cfg, &st);
    hd_lp_init(&lp, &loop, &cfg, &st, &net, &handler, NULL);
    lp.cluster = (hd_cluster *)&lp; /* (never dereferenced: the stubs above) */
    lp.node = "self~00000001";
    from.net = &net;
    new_session();
}

/* A text frame of the session's, now and then. */
static void queue_frame(void)
{
    static const char text[] = "[null,null,\"room:1\",\"msg\",{\"n\":1}]";
    uint8_t head[10];
    size_t hl = hd_ws_header(head, HD_WS_TEXT, sizeof text - 1);
    hd_buf *b = hd_buf_new(hl + sizeof text - 1);
    if (!b) die("out of memory", "", 0);
    memcpy(b->data, head, hl);
    memcpy(b->data + hl, text, sizeof text - 1);
    hd_conn_send(sess, b);
    hd_buf_unref(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    static uint64_t seq;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size == 0) return 0;
    if (!hd_conn_open(sess)) new_session(); /* (a message may end it: a POST's own close) */
    if (data[0] & 0x80) queue_frame();
    int mode = (data[0] & 0x7f) % 6;
    hd_str m = HD_STR_INIT;
    const char *kinds = "GNT";
    if (mode >= 1 && mode <= 3)
        hd_str_printf(&m, "lq1 peer~00000002 7 %llu %c\n%s\n", (unsigned long long)++seq,
                      kinds[mode - 1], token);
    else if (mode == 4)
        hd_str_printf(&m, "lc1 peer~00000002 7 %llu\n%s", (unsigned long long)seq, token);
    else if (mode == 5)
        hd_str_adds(&m, "lr1 ");
    hd_str_add(&m, data + 1, size - 1);
    if (m.oom) die("out of memory", "", 0);
    hd_lp_node_message(&lp, m.p, m.len);
    hd_str_free(&m);
    uv_run(&loop, UV_RUN_NOWAIT);
    /* The writer's turn: a held poll takes what is queued. */
    if (sess->wq_head && hd_conn_open(sess)) lp_write(sess);
    hd_conn_drop_queue(sess);
    return 0;
}
