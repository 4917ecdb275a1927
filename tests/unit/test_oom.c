/* tests/unit/test_oom.c: out-of-memory paths. Linked with
 * -Wl,--wrap=malloc,--wrap=calloc,--wrap=free (tests/unit/CMakeLists.txt), so every
 * allocation herald_core makes goes through the wrappers below, which can
 * fail the Nth one and track what is still allocated. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "harness.h"
#include "err.h"

/* ---- the allocator wrappers ------------------------------------------------------- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void __wrap_free(void *p);

static long fail_in = -1;  /* fail the allocation after this many more; -1: never */
static int tracking;       /* record live allocations */
enum { LIVE_MAX = 4096 };
static void *live[LIVE_MAX];
static size_t nlive;

static int should_fail(void)
{
    if (fail_in < 0) return 0;
    return fail_in-- == 0;
}

static void *track(void *p)
{
    if (p && tracking && nlive < LIVE_MAX) live[nlive++] = p;
    return p;
}

void *__wrap_malloc(size_t n) { return should_fail() ? NULL : track(__real_malloc(n)); }
void *__wrap_calloc(size_t n, size_t m) { return should_fail() ? NULL : track(__real_calloc(n, m)); }

void __wrap_free(void *p)
{
    for (size_t i = 0; p && i < nlive; i++)
        if (live[i] == p) {
            live[i] = live[--nlive];
            break;
        }
    __real_free(p);
}

/* ---- hd_server_init failing part-way ----------------------------------------------- */

/* Every allocation of hd_server_init may fail: it must then return an
 * error having freed what it took and left no handle on the loop (before,
 * it leaked the topic table when the counters could not be allocated). */
static void test_server_init_fails_clean(void **st)
{
    (void)st;
    char path[] = "/tmp/herald-test-oom-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char text[] = "listen = { host = '127.0.0.1', port = 0 }\n"
                               "topics = { { match = 'a:*', tracked = false } }\n"
                               "log = { level = 'error' }\n";
    assert_int_equal(write(fd, text, sizeof text - 1), (ssize_t)sizeof text - 1);
    close(fd);
    hd_config c;
    char err[256];
    assert_int_equal(hd_config_load(&c, path, err, sizeof err), 0);
    unlink(path);
    int failures = 0;
    for (long n = 0; n < 64; n++) {
        uv_loop_t l;
        assert_int_equal(uv_loop_init(&l), 0);
        hd_server *s = __real_calloc(1, sizeof *s);
        nlive = 0;
        tracking = 1;
        fail_in = n;
        int rc = hd_server_init(s, &l, &c);
        fail_in = -1;
        tracking = 0;
        if (rc == 0) { /* no allocation left to fail: stop and clean up */
            hd_server_stop(s);
            uv_run(&l, UV_RUN_DEFAULT);
            hd_server_free(s);
            assert_int_equal(uv_loop_close(&l), 0);
            __real_free(s);
            break;
        }
        failures++;
        assert_int_equal(rc, HD_ENOMEM);
        assert_int_equal(nlive, 0);                  /* nothing it allocated is left */
        assert_int_equal(uv_loop_close(&l), 0);      /* and no handle joined the loop */
        __real_free(s);
    }
    assert_true(failures >= 2); /* the policy counters and the topic table */
    hd_config_free(&c);
}

/* ---- a close frame that cannot be built ---------------------------------------------- */

/* Out of memory for the close frame: the connection is closed at once
 * (before, it was marked "close sent" with nothing queued and lingered
 * until ws_close_ms). */
static void test_close_frame_oom(void **st)
{
    (void)st;
    cli *c = ws_client();
    join(c, "1", "room:1");
    hd_conn *conn = srv.net.conns;
    while (conn && conn->kind != HD_CONN_WS) conn = conn->next;
    assert_non_null(conn);
    fail_in = 0; /* the close frame's buffer */
    hd_conn_shut(conn, 1000, "bye");
    fail_in = -1;
    assert_true(conn->flags & HD_CF_CLOSED);
    RUN_UNTIL(c->eof);
    assert_int_equal(c->in.len, 0); /* no frame, just the end */
    assert_null(hd_topics_find(&srv.eng.topics, "room:1", 6)); /* unlinked */
    cli_free(c);
    RUN_UNTIL(srv.net.nconns == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_init_fails_clean),
        cmocka_unit_test_setup_teardown(test_close_frame_oom, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
