/* Logging: one line per event on stderr,
 *   2026-11-22T11:40:01.123Z [info] message
 * Levels debug < info < warn < error. "error" is reserved for faults of the
 * server or its environment; bad client input logs at info or below, so
 * tests can assert that a run logged no [error] line. */
#ifndef HD_LOG_H
#define HD_LOG_H

typedef enum { HD_LOG_DEBUG, HD_LOG_INFO, HD_LOG_WARN, HD_LOG_ERROR } hd_log_level;

/* Sets the minimum level printed (default info). Process-wide setting made
 * once at start-up, before the loop runs. */
void hd_log_set_level(hd_log_level level);
/* Parses "debug"|"info"|"warn"|"error"; returns -1 if unknown. */
int hd_log_parse_level(const char *s);

void hd_log(hd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define hd_debug(...) hd_log(HD_LOG_DEBUG, __VA_ARGS__)
#define hd_info(...) hd_log(HD_LOG_INFO, __VA_ARGS__)
#define hd_warn(...) hd_log(HD_LOG_WARN, __VA_ARGS__)
#define hd_error(...) hd_log(HD_LOG_ERROR, __VA_ARGS__)

#endif
