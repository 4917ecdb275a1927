/* History and recovery (core/history.c, the join in channel.c): offsets
 * on the wire, the join reply's epoch and offset, a rejoin with since
 * replaying exactly what it missed before anything live, and every reason
 * a recovery is refused (another epoch, gone from the ring, expired, more
 * than recover_max, an offset in the future, a malformed since, a replay
 * that would not fit in the send queue). Topics without history keep
 * today's bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>

#include "harness.h"

static int setup_history(void **st)
{
    (void)st;
    return setup_with("listen = { host = '127.0.0.1', port = 0 }\n"
                      "limits = { send_queue_bytes = 16384 }\n"
                      "topics = { { match = 'h:*', history_size = 4, recover_max = 3 },\n"
                      "           { match = 't:*', history_size = 10, history_ttl_ms = 200 },\n"
                      "           { match = 'b:*', history_size = 100 } }\n"
                      "log = { level = 'error' }\n");
}

static void publish(const char *topic, int n)
{
    char data[32];
    snprintf(data, sizeof data, "{\"n\":%d}", n);
    hd_publish(&srv.eng, topic, strlen(topic), "e", 1, data, strlen(data));
}

static void expect_msg(cli *c, const char *topic, int n, unsigned long long offset)
{
    char want[256];
    snprintf(want, sizeof want, "[null,null,\"%s\",\"msg\",{\"data\":{\"n\":%d},\"event\":\"e\",\"offset\":%llu}]",
             topic, n, offset);
    expect_text(c, want);
}


static void test_offsets_and_recovery(void **st)
{
    (void)st;
    cli *a = ws_client();
    json_t *r = join_with(a, "h:1", "{}");
    assert_int_equal(strlen(epoch_of(r)), 16);
    assert_int_equal(offset_of(r), 0);
    assert_null(json_object_get(r, "recovered"));
    char epoch[17];
    snprintf(epoch, sizeof epoch, "%s", epoch_of(r));
    json_decref(r);
    publish("h:1", 1);
    publish("h:1", 2);
    expect_msg(a, "h:1", 1, 1);
    expect_msg(a, "h:1", 2, 2);

    /* A client that saw offset 1 rejoins: offset 2, then live from 3. */
    cli *b = ws_client();
    r = rejoin(b, "h:1", epoch, 1);
    assert_true(recovered(r));
    assert_string_equal(epoch_of(r), epoch);
    assert_int_equal(offset_of(r), 2);
    json_decref(r);
    expect_msg(b, "h:1", 2, 2);
    publish("h:1", 3);
    expect_msg(b, "h:1", 3, 3);
    expect_msg(a, "h:1", 3, 3);
    /* Up to date: recovered, nothing replayed. */
    cli *c = ws_client();
    r = rejoin(c, "h:1", epoch, 3);
    assert_true(recovered(r));
    json_decref(r);
    publish("h:1", 4);
    expect_msg(c, "h:1", 4, 4); /* (the first frame after the reply is live) */

    /* Refused, and nothing replayed: another epoch, the future, more than
     * recover_max (3) missing, gone from the ring (4 kept), malformed. */
    r = rejoin(c, "h:1", "0000000000000000", 3);
    assert_false(recovered(r));
    assert_string_equal(epoch_of(r), epoch); /* (what to come back with next time) */
    json_decref(r);
    r = rejoin(c, "h:1", epoch, 9);
    assert_false(recovered(r));
    json_decref(r);
    r = rejoin(c, "h:1", epoch, 0); /* 4 missing */
    assert_false(recovered(r));
    json_decref(r);
    publish("h:1", 5);
    publish("h:1", 6); /* the ring holds 3..6 */
    expect_msg(c, "h:1", 5, 5);
    expect_msg(c, "h:1", 6, 6);
    r = rejoin(c, "h:1", epoch, 3); /* 4..6: recoverable */
    assert_true(recovered(r));
    json_decref(r);
    expect_msg(c, "h:1", 4, 4);
    expect_msg(c, "h:1", 5, 5);
    expect_msg(c, "h:1", 6, 6);
    r = join_with(c, "h:1", "{\"since\":{\"epoch\":1,\"offset\":\"x\"}}");
    assert_false(recovered(r));
    json_decref(r);
    r = join_with(c, "h:1", "{\"since\":\"yesterday\"}");
    assert_false(recovered(r));
    json_decref(r);
    assert_int_equal(srv.eng.hist.recovered, 3);
    assert_int_equal(srv.eng.hist.not_recovered, 5);
    char *m = get_body("/metrics");
    assert_non_null(strstr(m, "herald_recoveries_total{result=\"recovered\"} 3\n"));
    assert_non_null(strstr(m, "herald_history_messages 4\n"));
    free(m);

    /* The history outlives the last subscriber here: everyone leaves, two
     * messages go out meanwhile, and a rejoin gets them. */
    cli_free(a);
    cli_free(b);
    cli_free(c);
    RUN_UNTIL(hd_topics_find(&srv.eng.topics, "h:1", 3) == NULL);
    publish("h:1", 7);
    publish("h:1", 8);
    cli *d = ws_client();
    r = rejoin(d, "h:1", epoch, 6);
    assert_true(recovered(r));
    assert_int_equal(offset_of(r), 8);
    json_decref(r);
    expect_msg(d, "h:1", 7, 7);
    expect_msg(d, "h:1", 8, 8);
    cli_free(d);
}

/* history_ttl_ms: expired messages cannot be recovered, and a stream with
 * nothing left and no subscriber goes (a new one has a new epoch). */
static void test_ttl(void **st)
{
    (void)st;
    cli *a = ws_client();
    char epoch[17];
    join_epoch(a, "t:1", epoch);
    publish("t:1", 1);
    expect_msg(a, "t:1", 1, 1);
    cli_free(a);
    uint64_t t0 = uv_now(&loop);
    RUN_UNTIL(uv_now(&loop) - t0 > 250 && srv.eng.hist.count == 0);
    cli *b = ws_client();
    json_t *r = rejoin(b, "t:1", epoch, 0);
    assert_false(recovered(r));
    assert_string_not_equal(epoch_of(r), epoch);
    assert_int_equal(offset_of(r), 0);
    json_decref(r);
    cli_free(b);
}

/* A topic without history: the bytes of today (no offset, no epoch), and
 * the join hook's own answer is kept next to the epoch. */
static void test_without_history(void **st)
{
    (void)st;
    cli *a = ws_client();
    join(a, "1", "plain:1");
    publish("plain:1", 1);
    expect_text(a, "[null,null,\"plain:1\",\"msg\",{\"data\":{\"n\":1},\"event\":\"e\"}]");
    assert_int_equal(srv.eng.hist.count, 0);
    cli_free(a);
}

static void publish_big(const char *topic, int n)
{
    char data[1100];
    int len = snprintf(data, sizeof data, "{\"n\":%d,\"pad\":\"", n);
    memset(data + len, 'x', 1000);
    memcpy(data + len + 1000, "\"}", 3);
    hd_publish(&srv.eng, topic, strlen(topic), "e", 1, data, strlen(data));
}

/* A replay that would not fit in limits.send_queue_bytes is refused
 * (recovered: false, the connection kept), rather than closing the
 * connection as a slow consumer before the reply is out, again at every
 * reconnect with the same since. One that fits is replayed. */
static void test_replay_over_send_queue(void **st)
{
    (void)st;
    cli *a = ws_client();
    char epoch[17];
    join_epoch(a, "b:1", epoch);
    cli_free(a);
    RUN_UNTIL(hd_topics_find(&srv.eng.topics, "b:1", 3) == NULL);
    for (int i = 1; i <= 20; i++)
        publish_big("b:1", i); /* about 21 KiB, over the queue's 16 */
    cli *b = ws_client();
    json_t *r = rejoin(b, "b:1", epoch, 0);
    assert_false(recovered(r));
    assert_int_equal(offset_of(r), 20);
    json_decref(r);
    publish("b:1", 21);
    expect_msg(b, "b:1", 21, 21); /* open, and nothing replayed */
    assert_int_equal(srv.st.slow_closes, 0);
    r = rejoin(b, "b:1", epoch, 18); /* 19, 20 and 21: about 2 KiB */
    assert_true(recovered(r));
    json_decref(r);
    for (int i = 19; i <= 20; i++) {
        int op;
        char *f = next_frame(b, &op);
        char want[32];
        snprintf(want, sizeof want, "\"offset\":%d}]", i);
        assert_non_null(strstr(f, want));
        free(f);
    }
    expect_msg(b, "b:1", 21, 21);
    cli_free(b);
}

static int setup_hook(void **st)
{
    (void)st;
    return setup_with_script("listen = { host = '127.0.0.1', port = 0 }\n"
                             "topics = { { match = 'h:*', history_size = 4 } }\n"
                             "log = { level = 'error' }\n",
                             "local M = {}\n"
                             "function M.join(socket, topic, payload)\n"
                             "  return true, { reply = { hello = 'world', epoch = 'mine', recovered = 1 } }\n"
                             "end\n"
                             "return M\n");
}

static void test_join_hook_answer(void **st)
{
    (void)st;
    cli *a = ws_client();
    json_t *r = join_with(a, "h:2", "{}");
    assert_string_equal(json_string_value(json_object_get(r, "hello")), "world");
    assert_int_equal(strlen(epoch_of(r)), 16); /* herald's, not the hook's */
    assert_null(json_object_get(r, "recovered"));
    json_decref(r);
    cli_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_offsets_and_recovery, setup_history, teardown),
        cmocka_unit_test_setup_teardown(test_ttl, setup_history, teardown),
        cmocka_unit_test_setup_teardown(test_without_history, setup_history, teardown),
        cmocka_unit_test_setup_teardown(test_join_hook_answer, setup_hook, teardown),
        cmocka_unit_test_setup_teardown(test_replay_over_send_queue, setup_history, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
