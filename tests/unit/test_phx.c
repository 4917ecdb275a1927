/* tests/unit/test_phx.c: the Phoenix frame encoders. Every frame is
 * checked to the byte, WebSocket header included, and its payload is
 * parsed back with jansson as the [join_ref, ref, topic, event, payload]
 * array a Phoenix client reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "phx.h"
#include "ws.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* The payload length of a server text frame, after checking its header:
 * FIN + text, unmasked, the 2-byte form below 126 bytes, 126 + 16-bit
 * length up to 65535, 127 + 64-bit length beyond. *hl gets the header's
 * length. */
static size_t text_frame_len(const hd_buf *f, size_t *hl)
{
    assert_true(f->len >= 2);
    assert_int_equal(f->data[0], 0x81);
    size_t n = f->data[1];
    assert_int_equal(n & 0x80, 0); /* never masked */
    if (n < 126) {
        *hl = 2;
    } else if (n == 126) {
        *hl = 4;
        n = (size_t)f->data[2] << 8 | f->data[3];
        assert_true(n >= 126);
    } else {
        *hl = 10;
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | f->data[2 + i];
        assert_true(n > 0xFFFF);
    }
    assert_int_equal(f->len, *hl + n);
    return n;
}

/* Checks that f is exactly one text frame carrying want (wlen bytes) and
 * that jansson reads it as a 5-element array; returns the array (the
 * caller frees it) and drops f. */
static json_t *expect_frame_n(hd_buf *f, const char *want, size_t wlen)
{
    assert_non_null(f);
    assert_int_equal(f->refs, 1);
    size_t hl, n = text_frame_len(f, &hl);
    assert_int_equal(n, wlen);
    assert_memory_equal(f->data + hl, want, wlen);
    json_error_t err;
    json_t *a = json_loadb((const char *)f->data + hl, n, JSON_ALLOW_NUL, &err);
    if (!a) fail_msg("payload is not JSON: %s: %.*s", err.text, (int)n, f->data + hl);
    assert_true(json_is_array(a));
    assert_int_equal(json_array_size(a), 5);
    hd_buf_unref(f);
    return a;
}

static json_t *expect_frame(hd_buf *f, const char *want)
{
    return expect_frame_n(f, want, strlen(want));
}

/* Element i of a is the string s (NULL: JSON null). */
static void assert_elem(json_t *a, size_t i, const char *s)
{
    json_t *v = json_array_get(a, i);
    if (!s) {
        assert_true(json_is_null(v));
        return;
    }
    assert_true(json_is_string(v));
    assert_string_equal(json_string_value(v), s);
}

/* The four string-or-null fields of a frame. */
static void assert_head(json_t *a, const char *join_ref, const char *ref, const char *topic,
                        const char *event)
{
    assert_elem(a, 0, join_ref);
    assert_elem(a, 1, ref);
    assert_elem(a, 2, topic);
    assert_elem(a, 3, event);
}

/* The payload (element 4) equals the JSON text want. */
static void assert_payload(json_t *a, const char *want)
{
    json_t *w = json_loads(want, 0, NULL);
    assert_non_null(w);
    assert_true(json_equal(json_array_get(a, 4), w));
    json_decref(w);
}

static void test_msg(void **st)
{
    (void)st;
    json_t *a =
        expect_frame(hd_phx_msg("room:1", 6, "new", 3, "{\"a\":1}", 7),
                     "[null,null,\"room:1\",\"msg\",{\"data\":{\"a\":1},\"event\":\"new\"}]");
    assert_head(a, NULL, NULL, "room:1", "msg");
    assert_payload(a, "{\"event\":\"new\",\"data\":{\"a\":1}}");
    json_decref(a);
}

/* The header bytes themselves, for a short frame: 0x81 and the length. */
static void test_msg_header_bytes(void **st)
{
    (void)st;
    hd_buf *f = hd_phx_msg("t", 1, "e", 1, "1", 1);
    static const char want[] = "\x81\x2c[null,null,\"t\",\"msg\",{\"data\":1,\"event\":\"e\"}]";
    assert_int_equal(f->len, sizeof want - 1);
    assert_memory_equal(f->data, want, sizeof want - 1);
    hd_buf_unref(f);
}

/* Lengths bound topic, event and data: bytes past them are not read. */
static void test_msg_lengths(void **st)
{
    (void)st;
    json_t *a = expect_frame(hd_phx_msg("room:1xyz", 6, "newxyz", 3, "[1,2]xyz", 5),
                             "[null,null,\"room:1\",\"msg\",{\"data\":[1,2],\"event\":\"new\"}]");
    json_decref(a);
}

/* Topic and event are escaped: quotes, backslashes, control characters
 * (short forms where JSON has them), NUL inside the length, DEL and valid
 * UTF-8 as they are, and every byte of an invalid sequence as U+FFFD. */
static void test_msg_escapes(void **st)
{
    (void)st;
    static const char topic[] = "a\"b\\c\n\r\t\b\f\x01\x1f\x7f\0z";
    static const char event[] = "\xc3\xa9\xff\xc0\xaf\xe2\x82\xed\xa0\x80\xf0\x9f\x98\x80";
    json_t *a = expect_frame(
        hd_phx_msg(topic, sizeof topic - 1, event, sizeof event - 1, "null", 4),
        "[null,null,\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\\u007f\\u0000z\",\"msg\","
        "{\"data\":null,\"event\":\"\xc3\xa9\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd"
        "\\ufffd\xf0\x9f\x98\x80\"}]");
    /* jansson reads back the raw topic, NUL and all... */
    json_t *t = json_array_get(a, 2);
    assert_int_equal(json_string_length(t), sizeof topic - 1);
    assert_memory_equal(json_string_value(t), topic, sizeof topic - 1);
    /* ...and the event with U+FFFD (EF BF BD) for each bad byte. */
    const char *ev = json_string_value(json_object_get(json_array_get(a, 4), "event"));
    assert_string_equal(ev, "\xc3\xa9"
                            "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                            "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
                            "\xf0\x9f\x98\x80");
    json_decref(a);
}

/* data_json is copied verbatim: spacing, key order, escapes untouched. */
static void test_msg_data_verbatim(void **st)
{
    (void)st;
    static const char data[] = "{ \"z\" : [1, 2.50 ,\"\\u00e9\\n\"], \"a\":{} }";
    json_t *a =
        expect_frame(hd_phx_msg("t", 1, "e", 1, data, sizeof data - 1),
                     "[null,null,\"t\",\"msg\",{\"data\":{ \"z\" : [1, 2.50 ,\"\\u00e9\\n\"],"
                     " \"a\":{} },\"event\":\"e\"}]");
    assert_payload(a, "{\"event\":\"e\",\"data\":{\"a\":{},\"z\":[1,2.5,\"\xc3\xa9\\n\"]}}");
    json_decref(a);
}

/* A msg payload of exactly n bytes: data is a JSON string padded to fit. */
static void msg_of_payload_len(size_t n, size_t want_header)
{
    static const char fixed[] = "[null,null,\"t\",\"msg\",{\"data\":,\"event\":\"e\"}]";
    size_t dl = n - (sizeof fixed - 1);
    char *data = malloc(dl), *want = malloc(n);
    data[0] = '"';
    memset(data + 1, 'x', dl - 2);
    data[dl - 1] = '"';
    int w = snprintf(want, n, "[null,null,\"t\",\"msg\",{\"data\":");
    memcpy(want + w, data, dl);
    memcpy(want + w + dl, ",\"event\":\"e\"}]", n - w - dl);
    hd_buf *f = hd_phx_msg("t", 1, "e", 1, data, dl);
    size_t hl;
    text_frame_len(f, &hl);
    assert_int_equal(hl, want_header);
    json_decref(expect_frame_n(f, want, n));
    free(data);
    free(want);
}

/* 125 bytes: the 2-byte header; 126 and 65535: 126 + 16 bits; 65536: 127
 * + 64 bits. */
static void test_msg_header_forms(void **st)
{
    (void)st;
    msg_of_payload_len(125, 2);
    msg_of_payload_len(126, 4);
    msg_of_payload_len(65535, 4);
    msg_of_payload_len(65536, 10);
}

static void test_reply(void **st)
{
    (void)st;
    json_t *a = expect_frame(hd_phx_reply("1", "2", "room:1", "ok", "{\"x\":[1]}"),
                             "[\"1\",\"2\",\"room:1\",\"phx_reply\","
                             "{\"status\":\"ok\",\"response\":{\"x\":[1]}}]");
    assert_head(a, "1", "2", "room:1", "phx_reply");
    assert_payload(a, "{\"status\":\"ok\",\"response\":{\"x\":[1]}}");
    json_decref(a);

    /* A heartbeat's reply: no join_ref. */
    a = expect_frame(hd_phx_reply(NULL, "7", "phoenix", "ok", "{}"),
                     "[null,\"7\",\"phoenix\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    assert_head(a, NULL, "7", "phoenix", "phx_reply");
    json_decref(a);

    /* Both refs null; refs are escaped like any string. */
    a = expect_frame(hd_phx_reply(NULL, NULL, "t", "error", "{}"),
                     "[null,null,\"t\",\"phx_reply\",{\"status\":\"error\",\"response\":{}}]");
    assert_head(a, NULL, NULL, "t", "phx_reply");
    json_decref(a);
    a = expect_frame(
        hd_phx_reply("a\"b", "\\", "t", "ok", "{}"),
        "[\"a\\\"b\",\"\\\\\",\"t\",\"phx_reply\",{\"status\":\"ok\",\"response\":{}}]");
    assert_head(a, "a\"b", "\\", "t", "phx_reply");
    json_decref(a);
}

static void test_reply_error(void **st)
{
    (void)st;
    json_t *a = expect_frame(hd_phx_reply_error("3", "4", "private:x", "unauthorized"),
                             "[\"3\",\"4\",\"private:x\",\"phx_reply\",{\"status\":\"error\","
                             "\"response\":{\"reason\":\"unauthorized\"}}]");
    assert_head(a, "3", "4", "private:x", "phx_reply");
    assert_payload(a, "{\"status\":\"error\",\"response\":{\"reason\":\"unauthorized\"}}");
    json_decref(a);

    /* The reason is raw text (from a hook): escaped, bad bytes replaced. */
    a = expect_frame(hd_phx_reply_error(NULL, "4", "t", "say \"no\"\\\n\x02\xff"),
                     "[null,\"4\",\"t\",\"phx_reply\",{\"status\":\"error\","
                     "\"response\":{\"reason\":\"say \\\"no\\\"\\\\\\n\\u0002\\ufffd\"}}]");
    const char *reason = json_string_value(
        json_object_get(json_object_get(json_array_get(a, 4), "response"), "reason"));
    assert_string_equal(reason, "say \"no\"\\\n\x02\xef\xbf\xbd");
    json_decref(a);
}

static void test_close(void **st)
{
    (void)st;
    json_t *a = expect_frame(hd_phx_close("5", "room:\"1\""),
                             "[\"5\",\"5\",\"room:\\\"1\\\"\",\"phx_close\",{}]");
    assert_head(a, "5", "5", "room:\"1\"", "phx_close");
    assert_payload(a, "{}");
    json_decref(a);
    a = expect_frame(hd_phx_close(NULL, "t"), "[null,null,\"t\",\"phx_close\",{}]");
    json_decref(a);
}

static void test_presence_state(void **st)
{
    (void)st;
    static const char state[] = "{\"u1\":{\"metas\":[{\"phx_ref\":\"r\",\"online_at\":1}]}}";
    json_t *a = expect_frame(hd_phx_presence_state("9", "room:1xx", 6, state, sizeof state - 1),
                             "[\"9\",null,\"room:1\",\"presence_state\","
                             "{\"u1\":{\"metas\":[{\"phx_ref\":\"r\",\"online_at\":1}]}}]");
    assert_head(a, "9", NULL, "room:1", "presence_state");
    assert_payload(a, state);
    json_decref(a);
    a = expect_frame(hd_phx_presence_state(NULL, "t\t", 2, "{}", 2),
                     "[null,null,\"t\\t\",\"presence_state\",{}]");
    assert_head(a, NULL, NULL, "t\t", "presence_state");
    json_decref(a);
}

static void test_presence_diff(void **st)
{
    (void)st;
    static const char diff[] =
        "{\"joins\":{\"u\":{\"metas\":[{\"phx_ref\":\"a\"}]}},\"leaves\":{}}";
    json_t *a =
        expect_frame(hd_phx_presence_diff("room:\xff", 6, diff, sizeof diff - 1),
                     "[null,null,\"room:\\ufffd\",\"presence_diff\","
                     "{\"joins\":{\"u\":{\"metas\":[{\"phx_ref\":\"a\"}]}},\"leaves\":{}}]");
    assert_head(a, NULL, NULL, "room:\xef\xbf\xbd", "presence_diff");
    assert_payload(a, diff);
    json_decref(a);
}

/* A presence_state of 300 bytes takes the 126 form too (not only msg). */
static void test_presence_state_long(void **st)
{
    (void)st;
    char state[300];
    memset(state, ' ', sizeof state);
    state[0] = '{';
    state[sizeof state - 1] = '}';
    hd_buf *f = hd_phx_presence_state(NULL, "t", 1, state, sizeof state);
    size_t want = sizeof "[null,null,\"t\",\"presence_state\",]" - 1 + sizeof state;
    assert_int_equal(f->data[1], 126);
    assert_int_equal((size_t)f->data[2] << 8 | f->data[3], want);
    size_t hl;
    assert_int_equal(text_frame_len(f, &hl), want);
    assert_memory_equal(f->data + 4 + want - sizeof state - 1, state, sizeof state);
    assert_int_equal(f->data[f->len - 1], ']');
    hd_buf_unref(f);
}

/* V1: each V2 frame turned into the object a V1 client reads, to the
 * byte, its elements copied as they are (strings holding brackets,
 * commas and escapes too); a long frame keeps the right header form. */
static void expect_v1(hd_buf *v2, const char *want)
{
    assert_non_null(v2);
    hd_buf *f = hd_phx_v1(v2);
    hd_buf_unref(v2);
    assert_non_null(f);
    assert_int_equal(f->refs, 1);
    size_t hl, n = text_frame_len(f, &hl);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(f->data + hl, want, n);
    hd_buf_unref(f);
}

static void test_v1(void **st)
{
    (void)st;
    static const char tricky[] = "{\"a\":[1,\"],}\\\"\"]}";
    expect_v1(hd_phx_msg("room:1", 6, "ev", 2, tricky, sizeof tricky - 1),
              "{\"topic\":\"room:1\",\"event\":\"msg\",\"payload\":{\"data\":{\"a\":[1,\"],}\\\"\"]},"
              "\"event\":\"ev\"},\"ref\":null}");
    expect_v1(hd_phx_reply("3", "7", "r,[", "ok", "{}"),
              "{\"topic\":\"r,[\",\"event\":\"phx_reply\",\"payload\":{\"status\":\"ok\",\"response\":{}},"
              "\"ref\":\"7\"}");
    expect_v1(hd_phx_reply(NULL, "9", "phoenix", "ok", "{}"),
              "{\"topic\":\"phoenix\",\"event\":\"phx_reply\",\"payload\":{\"status\":\"ok\","
              "\"response\":{}},\"ref\":\"9\"}");
    expect_v1(hd_phx_close("3", "t"),
              "{\"topic\":\"t\",\"event\":\"phx_close\",\"payload\":{},\"ref\":\"3\"}");
    expect_v1(hd_phx_presence_diff("t", 1, "{\"joins\":{},\"leaves\":{}}", 24),
              "{\"topic\":\"t\",\"event\":\"presence_diff\",\"payload\":{\"joins\":{},\"leaves\":{}},"
              "\"ref\":null}");
    hd_buf *m = hd_phx_msg("t", 1, "e", 1, "1", 1), *at = hd_phx_msg_at(m, 5);
    hd_buf_unref(m);
    expect_v1(at, "{\"topic\":\"t\",\"event\":\"msg\",\"payload\":{\"data\":1,\"event\":\"e\","
                  "\"offset\":5},\"ref\":null}");

    char data[200];
    memset(data, 'x', sizeof data);
    data[0] = data[sizeof data - 1] = '"';
    hd_buf *big = hd_phx_msg("t", 1, "e", 1, data, sizeof data), *v1 = hd_phx_v1(big);
    assert_non_null(v1);
    assert_int_equal(v1->data[1], 126);
    size_t hl;
    text_frame_len(v1, &hl);
    hd_buf_unref(v1);
    hd_buf_unref(big);

    /* Not a V2 frame: NULL. */
    static const char *const bad[] = {"{}", "[1,2,3,4]", "[1,2,3,4,5,6]", "[\"a", "[,,,,]"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        hd_buf *f = hd_ws_frame(HD_WS_TEXT, bad[i], strlen(bad[i]));
        assert_non_null(f);
        assert_null(hd_phx_v1(f));
        hd_buf_unref(f);
    }
}

/* The V2 binary format: a broadcast to the byte, a client push parsed
 * into its fields, and every malformed header refused with its reason. */
static void test_binary(void **st)
{
    (void)st;
    static const uint8_t bytes[] = {0, 0xff, '"', ']'};
    hd_buf *f = hd_phx_broadcast_binary("room:1", 6, "blob", 4, bytes, sizeof bytes);
    assert_non_null(f);
    static const uint8_t want[] = {0x82, 17, 2, 6, 4, 'r', 'o', 'o', 'm', ':', '1',
                                   'b', 'l', 'o', 'b', 0, 0xff, '"', ']'};
    assert_int_equal(f->len, sizeof want);
    assert_memory_equal(f->data, want, sizeof want);
    hd_buf_unref(f);
    char big[256];
    memset(big, 'x', sizeof big);
    assert_null(hd_phx_broadcast_binary(big, 256, "e", 1, "", 0));
    assert_null(hd_phx_broadcast_binary("t", 1, big, 256, "", 0));

    static const uint8_t push[] = {0, 1, 2, 1, 2, '3', '1', '2', 't', 'e', 'v', 0, 1};
    hd_phx_bin m;
    assert_null(hd_phx_parse_binary(push, sizeof push, &m));
    assert_int_equal(m.jrlen, 1);
    assert_memory_equal(m.join_ref, "3", 1);
    assert_int_equal(m.reflen, 2);
    assert_memory_equal(m.ref, "12", 2);
    assert_int_equal(m.tlen, 1);
    assert_memory_equal(m.topic, "t", 1);
    assert_int_equal(m.elen, 2);
    assert_memory_equal(m.event, "ev", 2);
    assert_int_equal(m.plen, 2);
    assert_ptr_equal(m.payload, push + 11);

    static const struct {
        uint8_t b[12];
        size_t len;
        const char *why;
    } bad[] = {
        {{0}, 0, "truncated header"},
        {{0, 0, 0, 1}, 4, "truncated header"},
        {{0, 0, 0, 2, 1, 't'}, 6, "truncated header"},
        {{0, 255, 255, 255, 255}, 5, "truncated header"},
        {{1, 0, 0, 1, 1, 't', 'e'}, 7, "unknown kind (a client sends pushes, kind 0)"},
        {{0, 0, 0, 0, 1, 'e'}, 6, "topic or event empty"},
        {{0, 0, 0, 1, 0, 't'}, 6, "topic or event empty"},
        {{0, 0, 0, 1, 1, 0, 'e'}, 7, "a header string that is not UTF-8 without NUL"},
        {{0, 1, 0, 1, 1, 0xc3, 't', 'e'}, 8, "a header string that is not UTF-8 without NUL"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *why = hd_phx_parse_binary(bad[i].b, bad[i].len, &m);
        assert_non_null(why);
        assert_string_equal(why, bad[i].why);
    }
}

/* A broadcast (kind 2) read back from hd_phx_broadcast_binary's payload,
 * and every malformed header refused with its reason. */
static void test_parse_broadcast(void **st)
{
    (void)st;
    static const uint8_t bytes[] = {0, 0xff, 2, '\n'};
    hd_buf *f = hd_phx_broadcast_binary("room:1", 6, "blob", 4, bytes, sizeof bytes);
    assert_non_null(f);
    hd_phx_bin m;
    assert_null(hd_phx_parse_broadcast(f->data + 2, f->len - 2, &m));
    assert_int_equal(m.tlen, 6);
    assert_memory_equal(m.topic, "room:1", 6);
    assert_int_equal(m.elen, 4);
    assert_memory_equal(m.event, "blob", 4);
    assert_int_equal(m.plen, sizeof bytes);
    assert_memory_equal(m.payload, bytes, sizeof bytes);
    assert_null(m.join_ref);
    assert_int_equal(m.jrlen + m.reflen, 0);
    hd_buf_unref(f);
    static const uint8_t empty[] = {2, 0, 0}; /* (empty strings and data: as built) */
    assert_null(hd_phx_parse_broadcast(empty, sizeof empty, &m));
    assert_int_equal(m.tlen + m.elen + m.plen, 0);

    static const struct {
        uint8_t b[8];
        size_t len;
        const char *why;
    } bad[] = {
        {{0}, 0, "truncated header"},
        {{2, 0}, 2, "truncated header"},
        {{2, 1, 1, 't'}, 4, "truncated header"},
        {{2, 255, 255, 't', 'e'}, 5, "truncated header"},
        {{0, 0, 0, 1, 1, 't', 'e'}, 7, "not a broadcast (kind 2)"},
        {{1, 1, 1, 't', 'e'}, 5, "not a broadcast (kind 2)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *why = hd_phx_parse_broadcast(bad[i].b, bad[i].len, &m);
        assert_non_null(why);
        assert_string_equal(why, bad[i].why);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msg),
        cmocka_unit_test(test_msg_header_bytes),
        cmocka_unit_test(test_msg_lengths),
        cmocka_unit_test(test_msg_escapes),
        cmocka_unit_test(test_msg_data_verbatim),
        cmocka_unit_test(test_msg_header_forms),
        cmocka_unit_test(test_reply),
        cmocka_unit_test(test_reply_error),
        cmocka_unit_test(test_close),
        cmocka_unit_test(test_presence_state),
        cmocka_unit_test(test_presence_diff),
        cmocka_unit_test(test_presence_state_long),
        cmocka_unit_test(test_v1),
        cmocka_unit_test(test_binary),
        cmocka_unit_test(test_parse_broadcast),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
