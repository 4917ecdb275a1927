/* Byte buffers.
 *
 * hd_buf: immutable-once-filled, refcounted bytes. A broadcast frame is built
 * once into an hd_buf and every subscriber's write queue takes a reference;
 * the last hd_buf_unref() frees it.
 *
 * hd_str: a growable, NUL-terminated byte string owned by whoever declared
 * it, for building responses and frames. */
#ifndef HD_BUF_H
#define HD_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct hd_buf {
    uint32_t refs;
    uint32_t len;
    uint8_t data[];
} hd_buf;

/* Returns a buffer of len bytes (contents undefined) with one reference, or
 * NULL when out of memory. */
hd_buf *hd_buf_new(size_t len);
/* Returns a new buffer holding a copy of len bytes at p, or NULL. */
hd_buf *hd_buf_copy(const void *p, size_t len);
static inline hd_buf *hd_buf_ref(hd_buf *b)
{
    b->refs++;
    return b;
}
/* Drops one reference; frees the buffer at zero. NULL is a no-op. */
void hd_buf_unref(hd_buf *b);

typedef struct hd_str {
    char *p;      /* NULL until the first append */
    size_t len;
    size_t cap;
    int oom;      /* set when an append failed: the string is then truncated */
} hd_str;

#define HD_STR_INIT {NULL, 0, 0, 0}

/* Appends bytes; on allocation failure sets s->oom and returns HD_ENOMEM. */
int hd_str_add(hd_str *s, const void *p, size_t len);
int hd_str_adds(hd_str *s, const char *cstr);
int hd_str_addc(hd_str *s, char c);
int hd_str_printf(hd_str *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends p as a JSON string literal with quotes and escapes; bytes that
 * are not well-formed UTF-8 become U+FFFD, so the result is always JSON. */
int hd_str_add_json(hd_str *s, const char *p, size_t len);
/* Appends a JSON string literal, or null when p is NULL. */
int hd_str_add_json_or_null(hd_str *s, const char *p);
void hd_str_reset(hd_str *s);   /* len = 0, keeps the memory */
void hd_str_free(hd_str *s);    /* frees and re-initialises */

#endif
