/* Fuzz target: the WebSocket frame parser, fed in two pieces. */
#include "ws.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int touch(void *ud, int op, uint8_t *d, size_t n)
{
    size_t *sum = ud;
    for (size_t i = 0; i < n; i++) *sum += d[i];
    *sum += (size_t)op;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    size_t split = data[0] % (size + 1);
    uint8_t *copy = malloc(size);
    memcpy(copy, data, size);
    hd_ws_parser p;
    hd_ws_parser_init(&p, 4096);
    hd_ws_callbacks cb = {touch, touch};
    size_t sum = 0;
    int rc = hd_ws_parse(&p, copy, split, &cb, &sum, NULL);
    if (rc == 0) hd_ws_parse(&p, copy + split, size - split, &cb, &sum, NULL);
    hd_ws_parser_free(&p);
    free(copy);
    return 0;
}
