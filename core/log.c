#include "log.h"
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <uv.h>

/* The log level is configuration fixed before the loop starts, not mutable
 * server state, so it is the one file-level variable in the core. */
static hd_log_level min_level = HD_LOG_INFO;

static const char *level_names[] = {"debug", "info", "warn", "error"};

void hd_log_set_level(hd_log_level level) { min_level = level; }

int hd_log_parse_level(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0) return i;
    return -1;
}

void hd_log(hd_log_level level, const char *fmt, ...)
{
    if (level < min_level) return;
    char line[2048];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ [%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    fwrite(line, 1, len, stderr);
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
