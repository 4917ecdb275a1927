/* Fuzz target: the WebSocket frame parser (core/ws.c).
 *
 * Input: byte 0 picks where the stream is cut in two, bit 0 of byte 1
 * makes every callback ask to stop (the parse resumes at *used); the rest
 * is the stream of client frames. It is parsed three ways: whole, cut in
 * two (with stops if asked), and one byte at a time (shorter streams).
 *
 * Oracles: every byte delivered is touched (ASan sees a bad pointer or
 * length); a data message is TEXT or BINARY, within max_msg, and TEXT is
 * UTF-8; a control frame is PING, PONG or CLOSE of at most 125 bytes and a
 * CLOSE is empty or a valid code and UTF-8; *used stays within the input
 * and a stop resumes cleanly; and the three ways deliver exactly the same
 * messages and end with the same error. */
#include "err.h"
#include "util.h"
#include "ws.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MSG 4096

typedef struct {
    uint64_t hash; /* FNV-1a over what was delivered */
    size_t calls;
    int stop;
} trace;

static void mix(trace *t, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) t->hash = (t->hash ^ b[i]) * 0x100000001B3ULL;
}

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_ws: %s\n", what);
        abort();
    }
}

static int on_message(void *ud, int op, uint8_t *d, size_t n)
{
    trace *t = ud;
    check(op == HD_WS_TEXT || op == HD_WS_BINARY, "a message with a control or unknown opcode");
    check(n <= MAX_MSG, "a message over max_msg");
    check(op != HD_WS_TEXT || hd_utf8_valid(d, n), "a text message that is not UTF-8");
    uint8_t k[2] = {'M', (uint8_t)op};
    mix(t, k, 2);
    mix(t, &n, sizeof n);
    mix(t, d, n);
    for (size_t i = 0; i < n; i++) d[i] ^= 0x5A; /* writable */
    t->calls++;
    return t->stop;
}

static int on_control(void *ud, int op, uint8_t *d, size_t n)
{
    trace *t = ud;
    check(op == HD_WS_CLOSE || op == HD_WS_PING || op == HD_WS_PONG, "a control frame with a bad opcode");
    check(n <= 125, "a control frame over 125 bytes");
    if (op == HD_WS_CLOSE && n) {
        check(n >= 2, "a close frame of one byte");
        unsigned code = (unsigned)d[0] << 8 | d[1];
        check((code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
                  (code >= 3000 && code <= 4999),
              "a close code not allowed on the wire");
        check(hd_utf8_valid(d + 2, n - 2), "a close reason that is not UTF-8");
    }
    uint8_t k[2] = {'C', (uint8_t)op};
    mix(t, k, 2);
    mix(t, &n, sizeof n);
    mix(t, d, n);
    t->calls++;
    return t->stop;
}

static const hd_ws_callbacks cbs = {on_message, on_control};

/* Feeds one piece, resuming after stops. Returns 0 or the error. */
static int feed(hd_ws_parser *p, uint8_t *d, size_t n, trace *t)
{
    size_t off = 0;
    for (;;) {
        size_t used = (size_t)-1;
        int rc = hd_ws_parse(p, d + off, n - off, &cbs, t, &used);
        check(used <= n - off, "*used beyond the input");
        if (rc < 0) {
            check(rc == HD_EPROTO || rc == HD_ETOOBIG || rc == HD_EUTF8 || rc == HD_ENOMEM,
                  "an undocumented error");
            return rc;
        }
        if (rc == 0) {
            check(used == n - off, "success without consuming everything");
            return 0;
        }
        check(rc == 1 && t->stop, "a stop nobody asked for");
        off += used;
    }
}

/* mode 0: whole; 1: cut at split; 2: one byte at a time. */
static int run(const uint8_t *data, size_t n, int mode, size_t split, int stop, trace *t)
{
    uint8_t *copy = malloc(n ? n : 1); /* exact size: ASan catches over-reads */
    if (n) memcpy(copy, data, n);
    hd_ws_parser p;
    hd_ws_parser_init(&p, MAX_MSG);
    memset(t, 0, sizeof *t);
    t->hash = 0xCBF29CE484222325ULL;
    t->stop = stop;
    int rc = 0;
    if (mode == 0) {
        rc = feed(&p, copy, n, t);
    } else if (mode == 1) {
        rc = feed(&p, copy, split, t);
        if (!rc) rc = feed(&p, copy + split, n - split, t);
    } else {
        for (size_t i = 0; i < n && !rc; i++) rc = feed(&p, copy + i, 1, t);
    }
    hd_ws_parser_free(&p);
    free(copy);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    const uint8_t *s = data + 2;
    size_t n = size - 2;
    size_t split = (size_t)data[0] * 7 % (n + 1);
    int stop = data[1] & 1;
    trace a, b, c;
    int ra = run(s, n, 0, 0, 0, &a);
    int rb = run(s, n, 1, split, stop, &b);
    check(ra == rb && a.hash == b.hash && a.calls == b.calls, "whole and split parses differ");
    if (n <= 4096) {
        int rc = run(s, n, 2, 0, !stop, &c);
        check(ra == rc && a.hash == c.hash && a.calls == c.calls,
              "whole and byte-at-a-time parses differ");
    }
    return 0;
}
