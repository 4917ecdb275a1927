/* Fuzz target: the HTTP client's response parser (core/httpc.c, through
 * hd_httpc_parse: the code a call runs on what a backend sends).
 *
 * Input: byte 0 picks where the stream is cut in two; byte 1 is flags:
 * bit 0 the request was HEAD, bit 1 the server closes after the bytes,
 * bits 2-3 max_response_bytes (64, 512, 4096 or 1 MiB); the rest is the
 * server's bytes. They are parsed three ways: whole, cut in two (two
 * reads), and one byte at a time (shorter streams).
 *
 * Oracles: every byte of a response handed over is touched (ASan sees a
 * bad pointer or length); header names are lower-case, at most
 * HD_HTTPC_MAX_HEADERS, names, values and body NUL-terminated, and all of
 * it within the limit; an error is one of the documented codes with a
 * message; and the three ways end the same, with the same response. */
#include "err.h"
#include "httpc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t hash; /* FNV-1a over the response handed over */
    int calls;
    uint32_t max;
} trace;

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_httpc: %s\n", what);
        abort();
    }
}

static void mix(trace *t, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) t->hash = (t->hash ^ b[i]) * 0x100000001B3ULL;
}

static void on_res(void *ud, const hd_httpc_res *res, int reusable)
{
    trace *t = ud;
    size_t total = res->body_len;
    check(res->status >= 0 && res->status <= 999, "a status out of range");
    check(res->status / 100 != 1, "an interim response handed over");
    check(res->nheaders <= HD_HTTPC_MAX_HEADERS, "too many headers handed over");
    for (size_t i = 0; i < res->nheaders; i++) {
        const hd_httpc_hdr *h = &res->headers[i];
        for (size_t j = 0; j < h->name_len; j++)
            check(h->name[j] < 'A' || h->name[j] > 'Z', "an upper-case name");
        check(h->name[h->name_len] == 0 && h->value[h->value_len] == 0,
              "a header not NUL-terminated");
        mix(t, h->name, h->name_len + 1);
        mix(t, h->value, h->value_len + 1);
        total += h->name_len + h->value_len;
    }
    check(res->body[res->body_len] == 0, "a body not NUL-terminated");
    check(total <= t->max, "a response over the limit");
    mix(t, &res->status, sizeof res->status);
    mix(t, res->body, res->body_len);
    mix(t, &reusable, sizeof reusable);
    t->calls++;
}

/* mode 0: whole; 1: cut at split; 2: one byte at a time. */
static int run(const uint8_t *data, size_t n, int mode, size_t split, int eof, int head,
               uint32_t max, trace *t)
{
    char *copy = malloc(n ? n : 1); /* exact size: ASan catches over-reads */
    if (n) memcpy(copy, data, n);
    memset(t, 0, sizeof *t);
    t->hash = 0xCBF29CE484222325ULL;
    t->max = max;
    char msg[128] = "";
    int rc;
    if (mode == 0) {
        const char *p[1] = {copy};
        rc = hd_httpc_parse(p, &n, 1, eof, head, max, on_res, t, msg, sizeof msg);
    } else if (mode == 1) {
        const char *p[2] = {copy, copy + split};
        size_t lens[2] = {split, n - split};
        rc = hd_httpc_parse(p, lens, 2, eof, head, max, on_res, t, msg, sizeof msg);
    } else {
        const char **p = malloc((n ? n : 1) * sizeof *p);
        size_t *lens = malloc((n ? n : 1) * sizeof *lens);
        for (size_t i = 0; i < n; i++) p[i] = copy + i, lens[i] = 1;
        rc = hd_httpc_parse(p, lens, n, eof, head, max, on_res, t, msg, sizeof msg);
        free(p);
        free(lens);
    }
    check(rc == 0 || rc == 1 || rc == HD_EPROTO || rc == HD_ETOOBIG || rc == HD_ECLOSED ||
              rc == HD_ENOMEM,
          "an undocumented result");
    check(rc >= 0 || msg[0], "an error without a message");
    check((rc == 0) == (t->calls == 1) && t->calls <= 1,
          "a response handed over other than once on success");
    check(rc != 1 || !eof, "incomplete after the close");
    free(copy);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t maxes[4] = {64, 512, 4096, 1u << 20};
    if (size < 2) return 0;
    const uint8_t *s = data + 2;
    size_t n = size - 2;
    size_t split = (size_t)data[0] * 7 % (n + 1);
    int head = data[1] & 1, eof = (data[1] >> 1) & 1;
    uint32_t max = maxes[(data[1] >> 2) & 3];
    trace a, b, c;
    int ra = run(s, n, 0, 0, eof, head, max, &a);
    int rb = run(s, n, 1, split, eof, head, max, &b);
    check(ra == rb && a.hash == b.hash && a.calls == b.calls, "whole and split parses differ");
    if (n <= 4096) {
        int rc = run(s, n, 2, 0, eof, head, max, &c);
        check(ra == rc && a.hash == c.hash && a.calls == c.calls,
              "whole and byte-at-a-time parses differ");
    }
    return 0;
}
