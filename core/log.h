/* Logging: one line per event on stderr, in one of two formats:
 *   text: 2026-11-22T11:40:01.123Z [info] message
 *   json: {"ts":"2026-11-22T11:40:01.123Z","level":"info","msg":"message"}
 * Levels debug < info < warn < error. "error" is reserved for faults of the
 * server or its environment; bad client input logs at info or below, so
 * tests can assert that a run logged no [error] line.
 *
 * A message about one connection or request starts "conn <id>: ". The json
 * format moves that id into a "conn" field (a number) and drops the prefix
 * from "msg"; the text format prints the message as it is. */
#ifndef HD_LOG_H
#define HD_LOG_H

#include <stddef.h>
#include <sys/time.h>

typedef enum { HD_LOG_DEBUG, HD_LOG_INFO, HD_LOG_WARN, HD_LOG_ERROR } hd_log_level;
typedef enum { HD_LOG_TEXT, HD_LOG_JSON } hd_log_format;

/* Sets the minimum level printed (default info). Process-wide setting made
 * once at start-up, before the loop runs. */
void hd_log_set_level(hd_log_level level);
/* Parses "debug"|"info"|"warn"|"error"; returns -1 if unknown. */
int hd_log_parse_level(const char *s);
/* Sets the line format (default text); the same kind of setting as the
 * level. */
void hd_log_set_format(hd_log_format format);
/* Parses "text"|"json"; returns -1 if unknown. */
int hd_log_parse_format(const char *s);

/* Writes the log line of msg (len bytes, any bytes) at level and time tv
 * into out (cap bytes, at least 128), ending in '\n' (no NUL); returns its
 * length. A json line is valid JSON whatever msg holds: control characters
 * and '"' '\\' escaped, bytes that are not UTF-8 as U+FFFD; a msg too long
 * for out is cut at a character. */
size_t hd_log_format_line(char *out, size_t cap, hd_log_format format, hd_log_level level,
                          const struct timeval *tv, const char *msg, size_t len);

void hd_log(hd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define hd_debug(...) hd_log(HD_LOG_DEBUG, __VA_ARGS__)
#define hd_info(...) hd_log(HD_LOG_INFO, __VA_ARGS__)
#define hd_warn(...) hd_log(HD_LOG_WARN, __VA_ARGS__)
#define hd_error(...) hd_log(HD_LOG_ERROR, __VA_ARGS__)

#endif
