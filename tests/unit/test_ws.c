/* tests/unit/test_ws.c: the frame parser, fed at every split point, one
 * byte at a time and with stops and resumes, comparing the exact messages
 * delivered; cross-checked against wslay (an independent implementation):
 * wslay encodes client frames for our parser, and decodes our server
 * frames. A small encoder here makes the frames wslay refuses to build
 * (bad opcodes, RSV bits, oversized control frames, non-minimal lengths). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "buf.h"
#include "err.h"
#include "util.h"
#include "ws.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* ---- byte strings ---------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t len, cap;
} bytes;

static void put(bytes *b, const void *d, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    if (n) memcpy(b->p + b->len, d, n);
    b->len += n;
}

/* ---- a recorder of what the parser delivers ---------------------------------- */

typedef struct {
    hd_str log;     /* "M<op>:<len>:<bytes>|" per message, "C..." per control frame */
    int stop;       /* return 1 from every callback */
    size_t calls;
} rec;

static int record(rec *r, char kind, int op, uint8_t *d, size_t n)
{
    hd_str_printf(&r->log, "%c%d:%zu:", kind, op, n);
    hd_str_add(&r->log, d, n);
    hd_str_addc(&r->log, '|');
    /* The data is writable for the length of the call. */
    for (size_t i = 0; i < n; i++) d[i] ^= 0xFF, d[i] ^= 0xFF;
    r->calls++;
    return r->stop;
}
static int on_msg(void *ud, int op, uint8_t *d, size_t n) { return record(ud, 'M', op, d, n); }
static int on_ctl(void *ud, int op, uint8_t *d, size_t n) { return record(ud, 'C', op, d, n); }
static const hd_ws_callbacks cbs = {on_msg, on_ctl};

static void expect_add(hd_str *e, char kind, int op, const void *d, size_t n)
{
    hd_str_printf(e, "%c%d:%zu:", kind, op, n);
    hd_str_add(e, d, n);
    hd_str_addc(e, '|');
}

/* ---- client frames by wslay ---------------------------------------------------- */

static ssize_t w_send(const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)flags;
    put(ud, data, len);
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
    for (size_t i = 0; i < len; i++) buf[i] = (uint8_t)rnd();
    return 0;
}

static void wslay_frame(bytes *out, int fin, int op, const void *data, size_t len, int mask)
{
    struct wslay_frame_callbacks cb = {w_send, w_recv, w_mask};
    wslay_frame_context_ptr ctx;
    assert_int_equal(wslay_frame_context_init(&ctx, &cb, out), 0);
    struct wslay_frame_iocb io;
    memset(&io, 0, sizeof io);
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

/* ---- client frames by hand ------------------------------------------------------ */

enum { LEN_MIN = 0, LEN_16 = 16, LEN_64 = 64 };

/* b0 is FIN|RSV|opcode. form forces the length encoding. */
static void raw_frame(bytes *b, uint8_t b0, int masked, uint32_t key, const void *d, uint64_t n,
                      int form)
{
    uint8_t h[14];
    size_t hl = 2;
    h[0] = b0;
    uint8_t m = masked ? 0x80 : 0;
    if (form == LEN_64 || (form == LEN_MIN && n > 0xFFFF)) {
        h[1] = m | 127;
        for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)(n >> (56 - 8 * i));
        hl = 10;
    } else if (form == LEN_16 || n > 125) {
        h[1] = m | 126;
        h[2] = (uint8_t)(n >> 8), h[3] = (uint8_t)n;
        hl = 4;
    } else {
        h[1] = m | (uint8_t)n;
    }
    uint8_t k[4] = {(uint8_t)(key >> 24), (uint8_t)(key >> 16), (uint8_t)(key >> 8), (uint8_t)key};
    if (masked) memcpy(h + hl, k, 4), hl += 4;
    put(b, h, hl);
    if (!d) return; /* header only */
    size_t at = b->len;
    put(b, d, (size_t)n);
    if (masked)
        for (size_t i = 0; i < n; i++) b->p[at + i] ^= k[i & 3];
}

static void frame(bytes *b, int fin, int op, const void *d, size_t n)
{
    raw_frame(b, (uint8_t)((fin ? 0x80 : 0) | op), 1, rnd(), d, n, LEN_MIN);
}

/* ---- feeding the parser ------------------------------------------------------------ */

/* Feeds len bytes; with r->stop, resumes after every stop at *used until
 * all is consumed. Returns 0 or the negative error. */
static int feed(hd_ws_parser *p, uint8_t *d, size_t len, rec *r)
{
    size_t off = 0;
    for (;;) {
        size_t used = (size_t)-1;
        int rc = hd_ws_parse(p, d + off, len - off, &cbs, r, &used);
        if (rc < 0) return rc;
        assert_true(used <= len - off);
        if (rc == 0) {
            assert_int_equal(used, len - off);
            return 0;
        }
        assert_int_equal(rc, 1);
        off += used;
    }
}

enum { WHOLE, SPLIT, BYTES };

/* Parses stream (copied: the parser unmasks in place) cut as mode says
 * (SPLIT: at split). Fills r->log; returns 0 or the error. */
static int run(const bytes *stream, int mode, size_t split, size_t max_msg, rec *r, int stop)
{
    hd_ws_parser p;
    hd_ws_parser_init(&p, max_msg);
    uint8_t *copy = malloc(stream->len + 1);
    if (stream->len) memcpy(copy, stream->p, stream->len);
    hd_str_free(&r->log);
    hd_str_add(&r->log, "", 0);
    r->stop = stop;
    r->calls = 0;
    int err = 0;
    if (mode == WHOLE) {
        err = feed(&p, copy, stream->len, r);
    } else if (mode == BYTES) {
        for (size_t i = 0; i < stream->len && !err; i++) err = feed(&p, copy + i, 1, r);
    } else {
        err = feed(&p, copy, split, r);
        if (!err) err = feed(&p, copy + split, stream->len - split, r);
    }
    hd_ws_parser_free(&p);
    free(copy);
    return err;
}

/* Every way of cutting the stream gives want_err and the log want. */
static void check_all_splits(const bytes *s, size_t max_msg, int want_err, const char *want,
                             size_t want_len)
{
    rec r = {HD_STR_INIT, 0, 0};
    for (int stop = 0; stop < 2; stop++) {
        for (int mode = WHOLE; mode <= BYTES; mode++) {
            size_t n = mode == SPLIT ? s->len + 1 : 1;
            for (size_t split = 0; split < n; split++) {
                int err = run(s, mode, split, max_msg, &r, stop);
                if (err != want_err || r.log.len != want_len || memcmp(r.log.p, want, want_len))
                    fail_msg("mode %d split %zu stop %d: err %d (want %d), log %.200s (want %.200s)",
                             mode, split, stop, err, want_err, r.log.p, want);
            }
        }
    }
    hd_str_free(&r.log);
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_every_split(void **st)
{
    (void)st;
    bytes s = {0};
    hd_str want = HD_STR_INIT;
    const char *text = "[null,\"1\",\"phoenix\",\"heartbeat\",{}]";
    wslay_frame(&s, 1, HD_WS_TEXT, text, strlen(text), 1);
    expect_add(&want, 'M', 1, text, strlen(text));
    wslay_frame(&s, 1, HD_WS_PING, "hi", 2, 1);
    expect_add(&want, 'C', 9, "hi", 2);
    wslay_frame(&s, 0, HD_WS_TEXT, "frag", 4, 1);
    wslay_frame(&s, 1, HD_WS_PONG, "", 0, 1);
    expect_add(&want, 'C', 10, "", 0);
    wslay_frame(&s, 0, HD_WS_CONT, "ment", 4, 1);
    wslay_frame(&s, 1, HD_WS_PING, "in between", 10, 1);
    expect_add(&want, 'C', 9, "in between", 10);
    wslay_frame(&s, 1, HD_WS_CONT, "ed", 2, 1);
    expect_add(&want, 'M', 1, "fragmented", 10);
    wslay_frame(&s, 1, HD_WS_TEXT, "", 0, 1);
    expect_add(&want, 'M', 1, "", 0);
    wslay_frame(&s, 1, HD_WS_BINARY, "", 0, 1);
    expect_add(&want, 'M', 2, "", 0);
    char mid[300];
    for (size_t i = 0; i < sizeof mid; i++) mid[i] = (char)i;
    wslay_frame(&s, 1, HD_WS_BINARY, mid, sizeof mid, 1);
    expect_add(&want, 'M', 2, mid, sizeof mid);
    char ctl[125];
    memset(ctl, 'c', sizeof ctl);
    wslay_frame(&s, 1, HD_WS_PING, ctl, sizeof ctl, 1); /* the largest control frame */
    expect_add(&want, 'C', 9, ctl, sizeof ctl);
    wslay_frame(&s, 1, HD_WS_CLOSE, "\x03\xe8" "bye", 5, 1);
    expect_add(&want, 'C', 8, "\x03\xe8" "bye", 5);
    wslay_frame(&s, 1, HD_WS_CLOSE, "", 0, 1);
    expect_add(&want, 'C', 8, "", 0);
    check_all_splits(&s, 1000, 0, want.p, want.len);
    hd_str_free(&want);
    free(s.p);
}

/* Zero-length frames in every position of a fragmented message, odd mask
 * keys (zero, all ones) and non-minimal length encodings. */
static void test_zero_length_and_forms(void **st)
{
    (void)st;
    bytes s = {0};
    hd_str want = HD_STR_INIT;
    raw_frame(&s, 0x01, 1, 0, "", 0, LEN_MIN);          /* empty first fragment */
    raw_frame(&s, 0x00, 1, 0xFFFFFFFF, "", 0, LEN_MIN); /* empty middle */
    raw_frame(&s, 0x00, 1, 0x01020304, "abc", 3, LEN_16);
    raw_frame(&s, 0x89, 1, 0, "", 0, LEN_64);           /* ping, 64-bit length 0 */
    expect_add(&want, 'C', 9, "", 0);
    raw_frame(&s, 0x80, 1, 0xDEADBEEF, "", 0, LEN_MIN); /* empty last */
    expect_add(&want, 'M', 1, "abc", 3);
    raw_frame(&s, 0x02, 1, 0, "", 0, LEN_MIN);
    raw_frame(&s, 0x80, 1, 0, "", 0, LEN_MIN);
    expect_add(&want, 'M', 2, "", 0);                    /* all fragments empty */
    raw_frame(&s, 0x81, 1, 0x11223344, "0123456789", 10, LEN_64);
    expect_add(&want, 'M', 1, "0123456789", 10);
    raw_frame(&s, 0x8A, 1, 0x55667788, "pong", 4, LEN_16); /* control with a 16-bit length */
    expect_add(&want, 'C', 10, "pong", 4);
    raw_frame(&s, 0x81, 1, 0, "", 0, LEN_16);
    expect_add(&want, 'M', 1, "", 0);
    check_all_splits(&s, 100, 0, want.p, want.len);
    hd_str_free(&want);
    free(s.p);
}

/* A character split across fragments is valid; one cut short is not. */
static void test_utf8_across_fragments(void **st)
{
    (void)st;
    bytes s = {0};
    hd_str want = HD_STR_INIT;
    frame(&s, 0, HD_WS_TEXT, "\xe2", 1);
    frame(&s, 0, HD_WS_CONT, "\x82", 1);
    frame(&s, 1, HD_WS_PING, "", 0);
    expect_add(&want, 'C', 9, "", 0);
    frame(&s, 1, HD_WS_CONT, "\xac!", 2);
    expect_add(&want, 'M', 1, "\xe2\x82\xac!", 4);
    frame(&s, 1, HD_WS_TEXT, "\xf0\x9f\x98\x80", 4);
    expect_add(&want, 'M', 1, "\xf0\x9f\x98\x80", 4);
    check_all_splits(&s, 100, 0, want.p, want.len);
    s.len = 0;
    hd_str_reset(&want);
    frame(&s, 0, HD_WS_TEXT, "\xe2", 1);
    frame(&s, 0, HD_WS_CONT, "\x82", 1);
    frame(&s, 1, HD_WS_CONT, "\xac", 1);
    expect_add(&want, 'M', 1, "\xe2\x82\xac", 3);
    frame(&s, 0, HD_WS_TEXT, "ok\xf0\x9f", 4);
    frame(&s, 1, HD_WS_CONT, "\x98", 1); /* the last byte never comes */
    check_all_splits(&s, 100, HD_EUTF8, want.p, want.len);
    /* Binary is not UTF-8 checked. */
    s.len = 0;
    hd_str_reset(&want);
    frame(&s, 1, HD_WS_BINARY, "\xff\xfe\xc0", 3);
    expect_add(&want, 'M', 2, "\xff\xfe\xc0", 3);
    frame(&s, 1, HD_WS_TEXT, "\xc0\xaf", 2);
    check_all_splits(&s, 100, HD_EUTF8, want.p, want.len);
    hd_str_free(&want);
    free(s.p);
}

static void test_lengths(void **st)
{
    (void)st;
    static const size_t sizes[] = {125, 126, 127, 65535, 65536, 70000};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        size_t n = sizes[k];
        char *d = malloc(n);
        for (size_t i = 0; i < n; i++) d[i] = (char)('a' + i % 26);
        hd_str want = HD_STR_INIT;
        expect_add(&want, 'M', 1, d, n);
        for (int enc = 0; enc < 2; enc++) {
            bytes s = {0};
            if (enc) frame(&s, 1, HD_WS_TEXT, d, n);
            else wslay_frame(&s, 1, HD_WS_TEXT, d, n, 1);
            size_t hl = s.len - n;
            assert_int_equal(hl, n < 126 ? 6 : n < 65536 ? 8 : 14);
            rec r = {HD_STR_INIT, 0, 0};
            size_t splits[] = {1, 2, 3, hl - 1, hl, hl + 1, s.len / 2, s.len - 1, s.len};
            for (size_t j = 0; j < sizeof splits / sizeof *splits; j++) {
                assert_int_equal(run(&s, SPLIT, splits[j], n, &r, 0), 0); /* exactly the limit */
                assert_int_equal(r.log.len, want.len);
                assert_memory_equal(r.log.p, want.p, want.len);
            }
            if (n < 1000) {
                assert_int_equal(run(&s, BYTES, 0, n, &r, 0), 0);
                assert_memory_equal(r.log.p, want.p, want.len);
            }
            /* One byte over the limit: refused from the header alone. */
            bytes h = {0};
            put(&h, s.p, hl);
            assert_int_equal(run(&h, WHOLE, 0, n - 1, &r, 0), HD_ETOOBIG);
            assert_int_equal(r.calls, 0);
            assert_int_equal(run(&h, BYTES, 0, n - 1, &r, 0), HD_ETOOBIG);
            assert_int_equal(hd_ws_close_code(HD_ETOOBIG), 1009);
            hd_str_free(&r.log);
            free(h.p);
            free(s.p);
        }
        hd_str_free(&want);
        free(d);
    }
}

typedef struct {
    const char *name;
    int err;
} err_case;

/* Builds one broken stream per case, each after a valid message that must
 * still be delivered; checks every cut gives the same error. */
static void test_errors(void **st)
{
    (void)st;
    uint8_t big[200];
    memset(big, 'x', sizeof big);
    for (int c = 0;; c++) {
        bytes s = {0};
        frame(&s, 1, HD_WS_TEXT, "ok", 2);
        size_t max = 100;
        int err = HD_EPROTO;
        switch (c) {
        case 0: raw_frame(&s, 0x81, 0, 0, "x", 1, LEN_MIN); break;          /* unmasked */
        case 1: raw_frame(&s, 0x89, 0, 0, "", 0, LEN_MIN); break;           /* unmasked ping */
        case 2: raw_frame(&s, 0xC1, 1, 1, "x", 1, LEN_MIN); break;          /* RSV1 */
        case 3: raw_frame(&s, 0xA1, 1, 1, "x", 1, LEN_MIN); break;          /* RSV2 */
        case 4: raw_frame(&s, 0x91, 1, 1, "x", 1, LEN_MIN); break;          /* RSV3 */
        case 5: raw_frame(&s, 0xC9, 1, 1, "", 0, LEN_MIN); break;           /* RSV1 on a ping */
        case 6: case 7: case 8: case 9: case 10:                              /* opcodes 3-7 */
            raw_frame(&s, (uint8_t)(0x80 | (c - 3)), 1, 1, "x", 1, LEN_MIN);
            break;
        case 11: case 12: case 13: case 14: case 15:                          /* opcodes B-F */
            raw_frame(&s, (uint8_t)(0x80 | (c - 11 + 0xB)), 1, 1, "", 0, LEN_MIN);
            break;
        case 16: raw_frame(&s, 0x09, 1, 1, "x", 1, LEN_MIN); break;         /* fragmented ping */
        case 17: raw_frame(&s, 0x0A, 1, 1, "", 0, LEN_MIN); break;          /* fragmented pong */
        case 18: raw_frame(&s, 0x08, 1, 1, "\x03\xe8", 2, LEN_MIN); break;  /* fragmented close */
        case 19: raw_frame(&s, 0x89, 1, 1, big, 126, LEN_MIN); break;       /* ping of 126 */
        case 20: raw_frame(&s, 0x8A, 1, 1, big, 200, LEN_64); break;        /* pong of 200 */
        case 21: raw_frame(&s, 0x88, 1, 1, big, 126, LEN_16); break;        /* close of 126 */
        case 22: raw_frame(&s, 0x80, 1, 1, "x", 1, LEN_MIN); break;         /* CONT, no start */
        case 23: raw_frame(&s, 0x00, 1, 1, "x", 1, LEN_MIN); break;         /* same, not FIN */
        case 24:                                                               /* TEXT inside */
            frame(&s, 0, HD_WS_TEXT, "a", 1);
            frame(&s, 1, HD_WS_TEXT, "b", 1);
            break;
        case 25:                                                               /* BINARY inside */
            frame(&s, 0, HD_WS_TEXT, "a", 1);
            frame(&s, 0, HD_WS_BINARY, "b", 1);
            break;
        case 26: /* CONT after a finished fragmented message */
            frame(&s, 0, HD_WS_TEXT, "a", 1);
            frame(&s, 1, HD_WS_CONT, "b", 1);
            frame(&s, 1, HD_WS_CONT, "c", 1);
            break;
        case 27: raw_frame(&s, 0x81, 1, 1, NULL, 1ULL << 63, LEN_64); break; /* MSB set */
        case 28: raw_frame(&s, 0x81, 1, 1, NULL, ~0ULL, LEN_64); break;
        case 29: raw_frame(&s, 0x81, 1, 1, NULL, 1ULL << 62, LEN_64); err = HD_ETOOBIG; break;
        case 30: raw_frame(&s, 0x82, 1, 1, big, 101, LEN_MIN); err = HD_ETOOBIG; break;
        case 31: /* fragments that together pass the limit: refused at the header */
            frame(&s, 0, HD_WS_TEXT, big, 60);
            raw_frame(&s, 0x80, 1, 1, NULL, 41, LEN_MIN);
            err = HD_ETOOBIG;
            break;
        case 32: /* an empty CONT after reaching the limit exactly is fine; then one more byte */
            frame(&s, 0, HD_WS_TEXT, big, 100);
            frame(&s, 0, HD_WS_CONT, "", 0);
            raw_frame(&s, 0x80, 1, 1, NULL, 1, LEN_MIN);
            err = HD_ETOOBIG;
            break;
        case 33: frame(&s, 1, HD_WS_TEXT, "\xc3\x28", 2); err = HD_EUTF8; break;
        case 34: frame(&s, 1, HD_WS_TEXT, "\xed\xa0\x80", 3); err = HD_EUTF8; break;
        case 35: frame(&s, 1, HD_WS_CLOSE, "\x03", 1); break;                /* 1-byte close */
        case 36: frame(&s, 1, HD_WS_CLOSE, "\x03\xe8\xff", 3); err = HD_EUTF8; break;
        case 37: frame(&s, 1, HD_WS_CLOSE, "\x03\xe8" "ab\xc3", 5); err = HD_EUTF8; break;
        default: free(s.p); return;
        }
        hd_str want = HD_STR_INIT;
        expect_add(&want, 'M', 1, "ok", 2);
        if (c == 26) expect_add(&want, 'M', 1, "ab", 2);
        check_all_splits(&s, max, err, want.p, want.len);
        assert_int_equal(hd_ws_close_code(err), err == HD_EUTF8 ? 1007 : err == HD_ETOOBIG ? 1009 : 1002);
        hd_str_free(&want);
        free(s.p);
    }
}

static void test_close_codes(void **st)
{
    (void)st;
    for (unsigned code = 0; code < 65536; code++) {
        int ok = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
                 (code >= 3000 && code <= 4999);
        uint8_t pl[4] = {(uint8_t)(code >> 8), (uint8_t)code, 'o', 'k'};
        bytes s = {0};
        frame(&s, 1, HD_WS_CLOSE, pl, code % 2 ? 4 : 2);
        rec r = {HD_STR_INIT, 0, 0};
        int err = run(&s, WHOLE, 0, 100, &r, 0);
        if (err != (ok ? 0 : HD_EPROTO)) fail_msg("close code %u: %d", code, err);
        assert_int_equal(r.calls, ok ? 1 : 0);
        hd_str_free(&r.log);
        free(s.p);
    }
    /* A 123-byte reason, the most a control frame holds, in UTF-8. */
    uint8_t pl[125] = {0x0F, 0xA0};
    for (size_t i = 2; i + 1 < 125; i += 2) pl[i] = 0xC3, pl[i + 1] = 0xA9;
    pl[124] = 'z';
    bytes s = {0};
    frame(&s, 1, HD_WS_CLOSE, pl, 125);
    hd_str want = HD_STR_INIT;
    expect_add(&want, 'C', 8, pl, 125);
    check_all_splits(&s, 100, 0, want.p, want.len);
    hd_str_free(&want);
    free(s.p);
}

static void test_stop_and_used(void **st)
{
    (void)st;
    bytes s = {0};
    frame(&s, 1, HD_WS_TEXT, "one", 3);
    size_t first = s.len;
    frame(&s, 1, HD_WS_PING, "p", 1);
    size_t second = s.len;
    frame(&s, 0, HD_WS_TEXT, "t", 1);
    frame(&s, 1, HD_WS_CONT, "wo", 2);
    size_t third = s.len;
    frame(&s, 1, HD_WS_BINARY, "", 0);
    size_t fourth = s.len;
    hd_ws_parser p;
    hd_ws_parser_init(&p, 100);
    rec r = {HD_STR_INIT, 1, 0};
    size_t used = 0;
    assert_int_equal(hd_ws_parse(&p, s.p, s.len, &cbs, &r, &used), 1);
    assert_int_equal(used, first);
    assert_string_equal(r.log.p, "M1:3:one|");
    assert_int_equal(hd_ws_parse(&p, s.p + first, s.len - first, &cbs, &r, &used), 1);
    assert_int_equal(used, second - first);
    assert_int_equal(hd_ws_parse(&p, s.p + second, s.len - second, &cbs, &r, &used), 1);
    assert_int_equal(used, third - second);
    assert_int_equal(hd_ws_parse(&p, s.p + third, s.len - third, &cbs, &r, &used), 1);
    assert_int_equal(used, fourth - third);
    assert_string_equal(r.log.p, "M1:3:one|C9:1:p|M1:3:two|M2:0:|");
    assert_int_equal(hd_ws_parse(&p, s.p + fourth, 0, &cbs, &r, &used), 0);
    assert_int_equal(used, 0);
    hd_ws_parser_free(&p);
    /* A callback's own value comes back as is. */
    hd_ws_parser_init(&p, 100);
    s.len = 0;
    frame(&s, 1, HD_WS_TEXT, "x", 1);
    frame(&s, 1, HD_WS_TEXT, "y", 1);
    r.stop = 7;
    assert_int_equal(hd_ws_parse(&p, s.p, s.len, &cbs, &r, NULL), 7);
    hd_ws_parser_free(&p);
    /* Stopping inside a split message held in the parser's buffer. */
    hd_ws_parser_init(&p, 100);
    s.len = 0;
    frame(&s, 1, HD_WS_TEXT, "abcdef", 6);
    size_t one = s.len;
    frame(&s, 1, HD_WS_TEXT, "g", 1);
    hd_str_reset(&r.log);
    r.stop = 1;
    assert_int_equal(hd_ws_parse(&p, s.p, 5, &cbs, &r, &used), 0);
    assert_int_equal(used, 5);
    assert_int_equal(hd_ws_parse(&p, s.p + 5, s.len - 5, &cbs, &r, &used), 1);
    assert_int_equal(used, one - 5);
    assert_string_equal(r.log.p, "M1:6:abcdef|");
    assert_null(p.msg); /* nothing held between messages */
    assert_int_equal(hd_ws_parse(&p, s.p + one, s.len - one, &cbs, &r, &used), 1);
    assert_string_equal(r.log.p, "M1:6:abcdef|M1:1:g|");
    hd_ws_parser_free(&p);
    hd_ws_parser_free(&p); /* twice is fine */
    hd_str_free(&r.log);
    free(s.p);
}

/* Random streams built by wslay (random sizes, fragmentation, control
 * frames in between, random masks), cut at random points. */
static void random_utf8(bytes *b, size_t n)
{
    static const char *const ch[] = {"a", "Z", "{", "\"", "\xc3\xa9", "\xe2\x82\xac",
                                     "\xf0\x9f\x98\x80", "\xdf\xbf", "\xef\xbf\xbf", "\x7f"};
    while (b->len < n) {
        const char *c = ch[rnd() % 10];
        size_t l = strlen(c);
        if (b->len + l > n) c = "x", l = 1;
        put(b, c, l);
    }
}

static void test_wslay_random(void **st)
{
    (void)st;
    static const size_t lens[] = {0, 1, 2, 5, 17, 124, 125, 126, 127, 200, 1000, 65535, 65536, 70001};
    rec r = {HD_STR_INIT, 0, 0};
    for (int iter = 0; iter < 300; iter++) {
        bytes s = {0};
        hd_str want = HD_STR_INIT;
        int nmsg = 1 + (int)(rnd() % 6);
        for (int m = 0; m < nmsg; m++) {
            int op = rnd() % 2 ? HD_WS_TEXT : HD_WS_BINARY;
            size_t n = lens[rnd() % (sizeof lens / sizeof *lens)];
            if (iter % 3) n = n > 1000 ? n % 1000 : n; /* mostly small */
            bytes msg = {0};
            if (op == HD_WS_TEXT) random_utf8(&msg, n);
            else
                for (size_t i = 0; i < n; i++) {
                    uint8_t c = (uint8_t)rnd();
                    put(&msg, &c, 1);
                }
            int nfrag = 1 + (int)(rnd() % 4);
            size_t at = 0;
            for (int f = 0; f < nfrag; f++) {
                size_t take = f == nfrag - 1 ? msg.len - at : (msg.len - at ? rnd() % (msg.len - at + 1) : 0);
                wslay_frame(&s, f == nfrag - 1, f ? HD_WS_CONT : op, msg.p ? msg.p + at : NULL, take, 1);
                at += take;
                if (f < nfrag - 1 && rnd() % 2) {
                    uint8_t cp[125];
                    size_t cl = rnd() % 126;
                    for (size_t i = 0; i < cl; i++) cp[i] = (uint8_t)rnd();
                    int cop = rnd() % 2 ? HD_WS_PING : HD_WS_PONG;
                    wslay_frame(&s, 1, cop, cp, cl, 1);
                    expect_add(&want, 'C', cop, cp, cl);
                }
            }
            expect_add(&want, 'M', op, msg.p, msg.len);
            free(msg.p);
        }
        for (int k = 0; k < 6; k++) {
            int mode = k == 0 ? WHOLE : k == 1 ? (s.len < 4000 ? BYTES : SPLIT) : SPLIT;
            size_t split = rnd() % (s.len + 1);
            int err = run(&s, mode, split, 100000, &r, k == 5);
            if (err || r.log.len != want.len || memcmp(r.log.p, want.p, want.len))
                fail_msg("iteration %d mode %d split %zu of %zu: err %d", iter, mode, split, s.len, err);
        }
        hd_str_free(&want);
        free(s.p);
    }
    hd_str_free(&r.log);
}

/* ---- the encoder, checked by wslay's decoder ------------------------------------------ */

/* Decodes one server frame with wslay; returns its payload in *out. */
static void wslay_decode(const hd_buf *f, int *op, int *fin, int *mask, bytes *out)
{
    bytes in = {0};
    put(&in, f->data, f->len);
    struct wslay_frame_callbacks cb = {w_send, w_recv, w_mask};
    wslay_frame_context_ptr ctx;
    assert_int_equal(wslay_frame_context_init(&ctx, &cb, &in), 0);
    struct wslay_frame_iocb io;
    *op = -1;
    out->len = 0;
    for (;;) {
        ssize_t r = wslay_frame_recv(ctx, &io);
        assert_true(r >= 0);
        *op = io.opcode, *fin = io.fin, *mask = io.mask;
        put(out, io.data, io.data_length);
        if (out->len == io.payload_length) break;
    }
    assert_int_equal(in.len, 0); /* nothing after the frame */
    wslay_frame_context_free(ctx);
    free(in.p);
}

static void test_encoder(void **st)
{
    (void)st;
    uint8_t h[10];
    assert_int_equal(hd_ws_header(h, HD_WS_TEXT, 0), 2);
    assert_memory_equal(h, "\x81\x00", 2);
    assert_int_equal(hd_ws_header(h, HD_WS_TEXT, 125), 2);
    assert_memory_equal(h, "\x81\x7d", 2);
    assert_int_equal(hd_ws_header(h, HD_WS_BINARY, 126), 4);
    assert_memory_equal(h, "\x82\x7e\x00\x7e", 4);
    assert_int_equal(hd_ws_header(h, HD_WS_TEXT, 65535), 4);
    assert_memory_equal(h, "\x81\x7e\xff\xff", 4);
    assert_int_equal(hd_ws_header(h, HD_WS_TEXT, 65536), 10);
    assert_memory_equal(h, "\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    assert_int_equal(hd_ws_header(h, HD_WS_PING, 0x0102030405ULL), 10);
    assert_memory_equal(h, "\x89\x7f\x00\x00\x00\x01\x02\x03\x04\x05", 10);

    static const size_t sizes[] = {0, 5, 125, 126, 127, 65535, 65536, 100000};
    static const int ops[] = {HD_WS_TEXT, HD_WS_BINARY, HD_WS_PING, HD_WS_PONG};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        for (size_t o = 0; o < 4; o++) {
            if (ops[o] >= 8 && sizes[k] > 125) continue;
            char *d = malloc(sizes[k] + 1);
            for (size_t i = 0; i < sizes[k]; i++) d[i] = (char)rnd();
            hd_buf *f = hd_ws_frame(ops[o], d, sizes[k]);
            assert_non_null(f);
            assert_int_equal(f->refs, 1);
            assert_int_equal(f->len, sizes[k] + (sizes[k] < 126 ? 2 : sizes[k] < 65536 ? 4 : 10));
            int op, fin, mask;
            bytes got = {0};
            wslay_decode(f, &op, &fin, &mask, &got);
            assert_int_equal(op, ops[o]);
            assert_int_equal(fin, 1);
            assert_int_equal(mask, 0);
            assert_int_equal(got.len, sizes[k]);
            if (sizes[k]) assert_memory_equal(got.p, d, sizes[k]);
            free(got.p);
            hd_buf_unref(f);
            free(d);
        }
    }
}

/* A server frame made into a client frame (masked) for our own parser. */
static int reparse_close(const hd_buf *f, rec *r)
{
    size_t hl = 2, n = f->data[1] & 0x7F;
    bytes s = {0};
    raw_frame(&s, f->data[0], 1, 0x0BADF00D, f->data + hl, n, LEN_MIN);
    int err = run(&s, WHOLE, 0, 100, r, 0);
    free(s.p);
    return err;
}

static void test_close_frame(void **st)
{
    (void)st;
    hd_buf *c = hd_ws_close_frame(1012, "restart");
    assert_int_equal(c->len, 2 + 2 + 7);
    assert_memory_equal(c->data, "\x88\x09\x03\xf4restart", 11);
    int op, fin, mask;
    bytes got = {0};
    wslay_decode(c, &op, &fin, &mask, &got);
    assert_int_equal(op, HD_WS_CLOSE);
    assert_int_equal(fin, 1);
    assert_int_equal(mask, 0);
    assert_memory_equal(got.p, "\x03\xf4restart", 9);
    hd_buf_unref(c);

    c = hd_ws_close_frame(0, "ignored");
    assert_int_equal(c->len, 2);
    assert_memory_equal(c->data, "\x88\x00", 2);
    hd_buf_unref(c);
    c = hd_ws_close_frame(1000, NULL);
    assert_memory_equal(c->data, "\x88\x02\x03\xe8", 4);
    hd_buf_unref(c);
    c = hd_ws_close_frame(1001, "");
    assert_memory_equal(c->data, "\x88\x02\x03\xe9", 4);
    hd_buf_unref(c);

    /* A long reason is cut to fit the 125-byte control payload. */
    char reason[300];
    memset(reason, 'r', sizeof reason - 1);
    reason[sizeof reason - 1] = 0;
    c = hd_ws_close_frame(4000, reason);
    assert_int_equal(c->len, 2 + 125);
    assert_int_equal(c->data[1], 125);
    wslay_decode(c, &op, &fin, &mask, &got);
    assert_int_equal(got.len, 125);
    rec r = {HD_STR_INIT, 0, 0};
    assert_int_equal(reparse_close(c, &r), 0);
    hd_buf_unref(c);
    free(got.p);

    /* Every close frame we build is one our parser (and so a strict
     * client) accepts: the cut must not split a UTF-8 character. */
    for (size_t lead = 118; lead <= 123; lead++) {
        char u[200];
        memset(u, 'a', lead);
        strcpy(u + lead, "\xe2\x82\xac\xe2\x82\xac");
        c = hd_ws_close_frame(1001, u);
        assert_true(c->len <= 127);
        int err = reparse_close(c, &r);
        if (err) fail_msg("close frame with a %zu+6 byte reason: the parser says %d (cut inside a character)",
                          lead, err);
        hd_buf_unref(c);
    }
    hd_str_free(&r.log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_split),
        cmocka_unit_test(test_zero_length_and_forms),
        cmocka_unit_test(test_utf8_across_fragments),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_close_codes),
        cmocka_unit_test(test_stop_and_used),
        cmocka_unit_test(test_wslay_random),
        cmocka_unit_test(test_encoder),
        cmocka_unit_test(test_close_frame),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
