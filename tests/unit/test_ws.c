/* tests/unit/test_ws.c: the frame parser, fed at every split point, and
 * cross-checked against wslay's frame encoder and decoder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "err.h"
#include "ws.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <wslay/wslay.h>

/* ---- a recorder of what the parser delivers ---- */

typedef struct {
    char log[200000];
    size_t len;
    int stop_after; /* stop (return 1) after this many callbacks; 0: never */
    int calls;
} rec;

static int record(rec *r, char kind, int op, const uint8_t *d, size_t n)
{
    r->len += (size_t)snprintf(r->log + r->len, sizeof r->log - r->len, "%c%d:%zu:", kind, op, n);
    size_t show = n < 64 ? n : 64;
    memcpy(r->log + r->len, d, show);
    r->len += show;
    r->log[r->len++] = '|';
    r->log[r->len] = 0;
    return r->stop_after && ++r->calls >= r->stop_after;
}
static int on_msg(void *ud, int op, uint8_t *d, size_t n) { return record(ud, 'M', op, d, n); }
static int on_ctl(void *ud, int op, uint8_t *d, size_t n) { return record(ud, 'C', op, d, n); }
static const hd_ws_callbacks cbs = {on_msg, on_ctl};

/* ---- client frames encoded by wslay (an independent implementation) ---- */

typedef struct {
    uint8_t *p;
    size_t len, cap;
} bytes;

static ssize_t w_send(const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)flags;
    bytes *b = ud;
    if (b->len + len > b->cap) {
        b->cap = (b->len + len) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, data, len);
    b->len += len;
    return (ssize_t)len;
}
static ssize_t w_recv(uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    bytes *b = ud; /* reads from p, consuming */
    size_t n = len < b->len ? len : b->len;
    if (n == 0) return WSLAY_ERR_WANT_READ;
    memcpy(buf, b->p, n);
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    return (ssize_t)n;
}
static int w_mask(uint8_t *buf, size_t len, void *ud)
{
    (void)ud;
    for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)(0x5a + 37 * i);
    return 0;
}

static void wslay_frame(bytes *out, int fin, int op, const void *data, size_t len, int mask)
{
    struct wslay_frame_callbacks cb = {w_send, w_recv, w_mask};
    wslay_frame_context_ptr ctx;
    assert_int_equal(wslay_frame_context_init(&ctx, &cb, out), 0);
    struct wslay_frame_iocb io = {0};
    io.fin = (uint8_t)fin;
    io.opcode = (uint8_t)op;
    io.mask = (uint8_t)mask;
    io.payload_length = len;
    io.data = data;
    io.data_length = len;
    size_t sent = 0;
    do {
        ssize_t r = wslay_frame_send(ctx, &io);
        assert_true(r >= 0);
        sent += (size_t)r;
        io.data = (const uint8_t *)data + sent;
        io.data_length = len - sent;
    } while (sent < len);
    wslay_frame_context_free(ctx);
}

static size_t parse_split(const bytes *stream, size_t split, size_t max_msg, rec *r, int *err)
{
    hd_ws_parser p;
    hd_ws_parser_init(&p, max_msg);
    uint8_t *copy = malloc(stream->len + 1); /* the parser unmasks in place */
    memcpy(copy, stream->p, stream->len);
    memset(r, 0, sizeof *r);
    *err = 0;
    size_t done = 0;
    if (split == 0) { /* one byte at a time */
        for (size_t i = 0; i < stream->len && !*err; i++) *err = hd_ws_parse(&p, copy + i, 1, &cbs, r, NULL);
    } else {
        *err = hd_ws_parse(&p, copy, split, &cbs, r, NULL);
        if (!*err) *err = hd_ws_parse(&p, copy + split, stream->len - split, &cbs, r, NULL);
    }
    hd_ws_parser_free(&p);
    free(copy);
    return done;
}

static void test_every_split(void **st)
{
    (void)st;
    bytes s = {0};
    const char *text = "[null,\"1\",\"phoenix\",\"heartbeat\",{}]";
    wslay_frame(&s, 1, HD_WS_TEXT, text, strlen(text), 1);
    wslay_frame(&s, 1, HD_WS_PING, "hi", 2, 1);
    wslay_frame(&s, 0, HD_WS_TEXT, "frag", 4, 1);
    wslay_frame(&s, 1, HD_WS_PONG, "", 0, 1);
    wslay_frame(&s, 0, HD_WS_CONT, "ment", 4, 1);
    wslay_frame(&s, 1, HD_WS_CONT, "ed", 2, 1);
    wslay_frame(&s, 1, HD_WS_TEXT, "", 0, 1);
    char mid[300];
    memset(mid, 'm', sizeof mid);
    wslay_frame(&s, 1, HD_WS_BINARY, mid, sizeof mid, 1);
    wslay_frame(&s, 1, HD_WS_CLOSE, "\x03\xe8" "bye", 5, 1);
    rec *whole = calloc(1, sizeof *whole), *r = calloc(1, sizeof *r);
    int err;
    parse_split(&s, s.len, 1000, whole, &err);
    assert_int_equal(err, 1 - 1);
    char want[1024];
    snprintf(want, sizeof want,
             "M1:%zu:%s|C9:2:hi|C10:0:|M1:10:fragmented|M1:0:|M2:300:%.64s|C8:5:\x03\xe8" "bye|",
             strlen(text), text, mid);
    assert_string_equal(whole->log, want);
    for (size_t split = 0; split < s.len; split++) {
        parse_split(&s, split, 1000, r, &err);
        assert_int_equal(err, 0);
        assert_string_equal(r->log, whole->log);
    }
    free(whole);
    free(r);
    free(s.p);
}

static void test_lengths(void **st)
{
    (void)st;
    static const size_t sizes[] = {125, 126, 65535, 65536, 70000};
    for (size_t k = 0; k < 5; k++) {
        bytes s = {0};
        char *d = malloc(sizes[k]);
        for (size_t i = 0; i < sizes[k]; i++) d[i] = (char)('a' + i % 26);
        wslay_frame(&s, 1, HD_WS_TEXT, d, sizes[k], 1);
        size_t splits[] = {1, 2, 3, 7, 13, s.len / 2, s.len - 1};
        for (size_t j = 0; j < 7; j++) {
            rec *r = calloc(1, sizeof *r);
            int err;
            parse_split(&s, splits[j], 100000, r, &err);
            assert_int_equal(err, 0);
            char head[32];
            snprintf(head, sizeof head, "M1:%zu:", sizes[k]);
            assert_memory_equal(r->log, head, strlen(head));
            assert_memory_equal(r->log + strlen(head), d, 64);
            free(r);
        }
        /* Over the limit: refused from the header alone. */
        rec *r = calloc(1, sizeof *r);
        int err;
        parse_split(&s, 10, sizes[k] - 1, r, &err);
        assert_int_equal(err, HD_ETOOBIG);
        assert_int_equal(hd_ws_close_code(err), 1009);
        free(r);
        free(d);
        free(s.p);
    }
}

static int expect_error(const void *bytes_, size_t len, size_t max)
{
    hd_ws_parser p;
    hd_ws_parser_init(&p, max);
    uint8_t buf[512];
    memcpy(buf, bytes_, len);
    rec *r = calloc(1, sizeof *r);
    int rc = hd_ws_parse(&p, buf, len, &cbs, r, NULL);
    hd_ws_parser_free(&p);
    free(r);
    return rc;
}

static void test_errors(void **st)
{
    (void)st;
    bytes s = {0};
    wslay_frame(&s, 1, HD_WS_TEXT, "x", 1, 0); /* unmasked */
    assert_int_equal(expect_error(s.p, s.len, 100), HD_EPROTO);
    s.len = 0;
    wslay_frame(&s, 1, HD_WS_TEXT, "\xc3\x28", 2, 1);
    assert_int_equal(expect_error(s.p, s.len, 100), HD_EUTF8);
    s.len = 0;
    wslay_frame(&s, 1, HD_WS_CONT, "x", 1, 1); /* continuation without a start */
    assert_int_equal(expect_error(s.p, s.len, 100), HD_EPROTO);
    s.len = 0;
    wslay_frame(&s, 0, HD_WS_PING, "x", 1, 1); /* fragmented control */
    assert_int_equal(expect_error(s.p, s.len, 100), HD_EPROTO);
    s.len = 0;
    wslay_frame(&s, 0, HD_WS_TEXT, "a", 1, 1);
    wslay_frame(&s, 1, HD_WS_TEXT, "b", 1, 1); /* new message inside a fragmented one */
    assert_int_equal(expect_error(s.p, s.len, 100), HD_EPROTO);
    const uint8_t rsv[] = {0xC1, 0x80, 0, 0, 0, 0};
    assert_int_equal(expect_error(rsv, sizeof rsv, 100), HD_EPROTO);
    const uint8_t op3[] = {0x83, 0x80, 0, 0, 0, 0};
    assert_int_equal(expect_error(op3, sizeof op3, 100), HD_EPROTO);
    const uint8_t bigping[] = {0x89, 0xFE, 0, 126, 0, 0, 0, 0};
    assert_int_equal(expect_error(bigping, sizeof bigping, 1000), HD_EPROTO);
    const uint8_t close1005[] = {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xED};
    assert_int_equal(expect_error(close1005, sizeof close1005, 100), HD_EPROTO);
    const uint8_t close1byte[] = {0x88, 0x81, 0, 0, 0, 0, 0x03};
    assert_int_equal(expect_error(close1byte, sizeof close1byte, 100), HD_EPROTO);
    const uint8_t closeutf8[] = {0x88, 0x83, 0, 0, 0, 0, 0x03, 0xE8, 0xFF};
    assert_int_equal(expect_error(closeutf8, sizeof closeutf8, 100), HD_EUTF8);
    const uint8_t len63[] = {0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(expect_error(len63, sizeof len63, 100), HD_EPROTO);
    free(s.p);
}

static void test_stop_and_used(void **st)
{
    (void)st;
    bytes s = {0};
    wslay_frame(&s, 1, HD_WS_TEXT, "one", 3, 1);
    size_t first = s.len;
    wslay_frame(&s, 1, HD_WS_TEXT, "two", 3, 1);
    hd_ws_parser p;
    hd_ws_parser_init(&p, 100);
    rec *r = calloc(1, sizeof *r);
    r->stop_after = 1;
    size_t used = 0;
    assert_int_equal(hd_ws_parse(&p, s.p, s.len, &cbs, r, &used), 1);
    assert_int_equal(used, first);
    assert_string_equal(r->log, "M1:3:one|");
    hd_ws_parser_free(&p);
    free(r);
    free(s.p);
}

/* Our server frames decode with wslay's frame reader. */
static void test_encoder(void **st)
{
    (void)st;
    uint8_t h[10];
    assert_int_equal(hd_ws_header(h, HD_WS_TEXT, 125), 2);
    assert_int_equal(hd_ws_header(h, HD_WS_TEXT, 126), 4);
    assert_int_equal(hd_ws_header(h, HD_WS_TEXT, 65535), 4);
    assert_int_equal(hd_ws_header(h, HD_WS_TEXT, 65536), 10);
    static const size_t sizes[] = {0, 5, 125, 126, 65535, 65536};
    for (size_t k = 0; k < 6; k++) {
        char *d = malloc(sizes[k] + 1);
        memset(d, 'q', sizes[k]);
        hd_buf *f = hd_ws_frame(HD_WS_TEXT, d, sizes[k]);
        bytes in = {malloc(f->len + 1), f->len, f->len + 1};
        memcpy(in.p, f->data, f->len);
        struct wslay_frame_callbacks cb = {w_send, w_recv, w_mask};
        wslay_frame_context_ptr ctx;
        wslay_frame_context_init(&ctx, &cb, &in);
        struct wslay_frame_iocb io;
        size_t got = 0;
        int op = -1, fin = 0, mask = 1;
        while (got < sizes[k] || op < 0) {
            ssize_t r = wslay_frame_recv(ctx, &io);
            assert_true(r >= 0);
            op = io.opcode, fin = io.fin, mask = io.mask;
            assert_int_equal(io.payload_length, sizes[k]);
            got += io.data_length;
        }
        assert_int_equal(op, HD_WS_TEXT);
        assert_int_equal(fin, 1);
        assert_int_equal(mask, 0);
        assert_int_equal(got, sizes[k]);
        wslay_frame_context_free(ctx);
        free(in.p);
        hd_buf_unref(f);
        free(d);
    }
    hd_buf *c = hd_ws_close_frame(1012, "restart");
    assert_int_equal(c->len, 2 + 2 + 7);
    assert_memory_equal(c->data, "\x88\x09\x03\xf4restart", 11);
    hd_buf_unref(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_split), cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_errors),      cmocka_unit_test(test_stop_and_used),
        cmocka_unit_test(test_encoder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
