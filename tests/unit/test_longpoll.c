/* tests/unit/test_longpoll.c: long-poll tokens: a round trip for ids
 * across the range, and every way a token can be wrong (each character
 * changed, another secret, another length, upper-case hex, another id
 * with the same MAC) is refused. The sessions themselves are tested with
 * real clients (tests/integration/18_longpoll, 19_longpoll_browser). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "longpoll.h"

#include <string.h>

static const uint8_t secret[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static void test_round_trip(void **state)
{
    (void)state;
    static const uint64_t ids[] = {0, 1, 2, 255, 256, 0x123456789abcdefULL, UINT64_MAX};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        char t[HD_LP_TOKEN_LEN + 1];
        hd_lp_token(secret, ids[i], t);
        assert_int_equal(strlen(t), HD_LP_TOKEN_LEN);
        for (size_t k = 0; k < HD_LP_TOKEN_LEN; k++) assert_non_null(strchr("0123456789abcdef", t[k]));
        uint64_t id = 42;
        assert_int_equal(hd_lp_token_verify(secret, t, HD_LP_TOKEN_LEN, &id), 1);
        assert_true(id == ids[i]);
    }
}

static void test_forgeries(void **state)
{
    (void)state;
    char t[HD_LP_TOKEN_LEN + 1], f[HD_LP_TOKEN_LEN + 2];
    uint64_t id = 0;
    hd_lp_token(secret, 77, t);
    /* every character changed, to each other hex digit */
    for (size_t k = 0; k < HD_LP_TOKEN_LEN; k++) {
        for (const char *d = "0123456789abcdef"; *d; d++) {
            if (*d == t[k]) continue;
            memcpy(f, t, sizeof t);
            f[k] = *d;
            assert_int_equal(hd_lp_token_verify(secret, f, HD_LP_TOKEN_LEN, &id), 0);
        }
    }
    /* another secret */
    uint8_t other[32];
    memcpy(other, secret, 32);
    other[31] ^= 1;
    assert_int_equal(hd_lp_token_verify(other, t, HD_LP_TOKEN_LEN, &id), 0);
    /* lengths */
    assert_int_equal(hd_lp_token_verify(secret, t, HD_LP_TOKEN_LEN - 1, &id), 0);
    memcpy(f, t, sizeof t);
    f[HD_LP_TOKEN_LEN] = '0';
    f[HD_LP_TOKEN_LEN + 1] = 0;
    assert_int_equal(hd_lp_token_verify(secret, f, HD_LP_TOKEN_LEN + 1, &id), 0);
    assert_int_equal(hd_lp_token_verify(secret, "", 0, &id), 0);
    /* upper-case hex is not the token */
    memcpy(f, t, sizeof t);
    for (size_t k = 0; k < HD_LP_TOKEN_LEN; k++)
        if (f[k] >= 'a') f[k] = (char)(f[k] - 32);
    if (strcmp(f, t) != 0) assert_int_equal(hd_lp_token_verify(secret, f, HD_LP_TOKEN_LEN, &id), 0);
    /* the MAC of one id under another's */
    char u[HD_LP_TOKEN_LEN + 1];
    hd_lp_token(secret, 78, u);
    memcpy(u + 16, t + 16, 32);
    assert_int_equal(hd_lp_token_verify(secret, u, HD_LP_TOKEN_LEN, &id), 0);
    assert_true(id == 0); /* (never set by a refusal) */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_forgeries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
