#include "buf.h"
#include "util.h"
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

hd_buf *hd_buf_new(size_t len)
{
    if (len > UINT32_MAX) return NULL;
    hd_buf *b = malloc(sizeof *b + len);
    if (!b) return NULL;
    b->refs = 1;
    b->len = (uint32_t)len;
    return b;
}

hd_buf *hd_buf_copy(const void *p, size_t len)
{
    hd_buf *b = hd_buf_new(len);
    if (b && len) memcpy(b->data, p, len);
    return b;
}

void hd_buf_unref(hd_buf *b)
{
    if (b && --b->refs == 0) free(b);
}

static int grow(hd_str *s, size_t extra)
{
    if (s->oom) return HD_ENOMEM;
    size_t need = s->len + extra + 1;
    if (need <= s->cap) return 0;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < need) cap *= 2;
    char *p = realloc(s->p, cap);
    if (!p) {
        s->oom = 1;
        return HD_ENOMEM;
    }
    s->p = p;
    s->cap = cap;
    return 0;
}

int hd_str_add(hd_str *s, const void *p, size_t len)
{
    if (grow(s, len)) return HD_ENOMEM;
    if (len) memcpy(s->p + s->len, p, len);
    s->len += len;
    s->p[s->len] = 0;
    return 0;
}

int hd_str_adds(hd_str *s, const char *cstr) { return hd_str_add(s, cstr, strlen(cstr)); }

int hd_str_addc(hd_str *s, char c) { return hd_str_add(s, &c, 1); }

int hd_str_printf(hd_str *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        s->oom = 1; /* a formatting error truncates the string like a failed append */
        return HD_ENOMEM;
    }
    if (grow(s, (size_t)n)) return HD_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(s->p + s->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    s->len += (size_t)n;
    return 0;
}

int hd_str_add_json(hd_str *s, const char *p, size_t len)
{
    if (grow(s, len + 2)) return HD_ENOMEM;
    s->p[s->len++] = '"';
    size_t run = 0; /* start of the pending run of bytes that go as they are */
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') { /* (most bytes: no call) */
            i++;
            continue;
        }
        char esc[8];
        size_t wl = 0, step;
        const char *w = hd_json_escape((const uint8_t *)p + i, len - i, esc, &wl, &step);
        if (w) {
            if (hd_str_add(s, p + run, i - run) || hd_str_add(s, w, wl)) return HD_ENOMEM;
            run = i + step;
        }
        i += step;
    }
    if (hd_str_add(s, p + run, len - run)) return HD_ENOMEM;
    return hd_str_addc(s, '"');
}

int hd_str_add_json_or_null(hd_str *s, const char *p)
{
    return p ? hd_str_add_json(s, p, strlen(p)) : hd_str_adds(s, "null");
}

void hd_str_reset(hd_str *s)
{
    s->len = 0;
    s->oom = 0;
    if (s->p) s->p[0] = 0;
}

void hd_str_free(hd_str *s)
{
    free(s->p);
    *s = (hd_str)HD_STR_INIT;
}
