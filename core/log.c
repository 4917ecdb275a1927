#include "log.h"
#include "err.h"
#include "util.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <uv.h>

/* The level and format are configuration fixed before the loop starts, not
 * mutable server state: the one pair of file-level variables in the core. */
static hd_log_level min_level = HD_LOG_INFO;
static hd_log_format line_format = HD_LOG_TEXT;

static const char *level_names[] = {"debug", "info", "warn", "error"};
static const char *format_names[] = {"text", "json"};

void hd_log_set_level(hd_log_level level) { min_level = level; }
void hd_log_set_format(hd_log_format format) { line_format = format; }

static int name_index(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

int hd_log_parse_level(const char *s) { return name_index(s, level_names, 4); }
int hd_log_parse_format(const char *s) { return name_index(s, format_names, 2); }

/* The length of a "conn <id>: " prefix of msg (*id set), or 0. */
static size_t conn_prefix(const char *msg, size_t len, unsigned long long *id)
{
    size_t i = 5, digits = 0;
    if (len < 8 || memcmp(msg, "conn ", 5) != 0) return 0;
    unsigned long long v = 0;
    for (; i < len && msg[i] >= '0' && msg[i] <= '9' && digits < 19; i++, digits++)
        v = v * 10 + (unsigned long long)(msg[i] - '0');
    if (!digits || i + 1 >= len || msg[i] != ':' || msg[i + 1] != ' ') return 0;
    *id = v;
    return i + 2;
}

/* Appends msg as the body of a JSON string to out[*n..cap), cut at a
 * character when it does not fit. */
static void add_json_text(char *out, size_t *n, size_t cap, const char *msg, size_t len)
{
    const uint8_t *p = (const uint8_t *)msg;
    size_t o = *n;
    for (size_t i = 0; i < len;) {
        char esc[8];
        size_t wl = 0, step;
        const char *w = hd_json_escape(p + i, len - i, esc, &wl, &step);
        if (!w) w = msg + i, wl = step;
        if (o + wl > cap) break;
        memcpy(out + o, w, wl);
        o += wl;
        i += step;
    }
    *n = o;
}

size_t hd_log_format_line(char *out, size_t cap, hd_log_format format, hd_log_level level,
                          const struct timeval *tv, const char *msg, size_t len)
{
    struct tm tm;
    time_t sec = tv->tv_sec;
    gmtime_r(&sec, &tm);
    char ts[80]; /* room for any int fields, to please -Wformat-truncation */
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(tv->tv_usec / 1000));
    size_t n;
    if (format == HD_LOG_TEXT) {
        n = (size_t)snprintf(out, cap, "%s [%s] ", ts, level_names[level]);
        if (len > cap - n - 1) len = cap - n - 1;
        memcpy(out + n, msg, len);
        n += len;
    } else {
        unsigned long long id = 0;
        size_t skip = conn_prefix(msg, len, &id);
        char tail[40] = "\"}";
        if (skip) snprintf(tail, sizeof tail, "\",\"conn\":%llu}", id);
        size_t tl = strlen(tail);
        n = (size_t)snprintf(out, cap, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts,
                             level_names[level]);
        add_json_text(out, &n, cap - tl - 1, msg + skip, len - skip);
        memcpy(out + n, tail, tl);
        n += tl;
    }
    out[n++] = '\n';
    return n;
}

void hd_log(hd_log_level level, const char *fmt, ...)
{
    if (level < min_level) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = m < 0 ? 0 : (size_t)m >= sizeof msg ? sizeof msg - 1 : (size_t)m;
    /* Room for the message escaped at worst (6 bytes a byte) and the fields. */
    char line[6 * sizeof msg + 128];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    size_t n = hd_log_format_line(line, sizeof line, line_format, level, &tv, msg, len);
    fwrite(line, 1, n, stderr);
}

const char *hd_strerror(int err)
{
    switch (err) {
    case 0: return "success";
    case HD_ENOMEM: return "out of memory";
    case HD_ETOOBIG: return "over the size limit";
    case HD_EFULL: return "queue full";
    case HD_ELIMIT: return "limit reached";
    case HD_EPROTO: return "protocol error";
    case HD_EUTF8: return "invalid UTF-8";
    case HD_EBINARY: return "binary data not supported";
    case HD_EJSON: return "invalid JSON";
    case HD_ECLOSED: return "connection closed";
    case HD_ECONFIG: return "bad configuration";
    default: return err < 0 && err > -10000 ? uv_strerror(err) : "unknown error";
    }
}
