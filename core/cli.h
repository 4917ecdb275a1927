/* herald's client commands: publish, status, reload, drain. Each is one
 * HTTP/1.1 request to a running node (a blocking client with a deadline:
 * the command is a short-lived process of its own, apart from any loop).
 *
 *   herald publish TOPIC EVENT JSON   POST /api/push
 *   herald status                     GET  /admin/status
 *   herald reload                     POST /admin/reload
 *   herald drain                      POST /admin/drain
 *
 * Options: --url URL (else $HERALD_URL, else http://127.0.0.1:4000; a path
 * in it prefixes the routes), --timeout SECONDS (default 10), -h/--help.
 * $HERALD_API_TOKEN, when set, goes as "Authorization: Bearer <token>" and
 * is never printed. The node's JSON answer goes to stdout, pretty-printed;
 * errors go to stderr. */
#ifndef HD_CLI_H
#define HD_CLI_H

#include <stdio.h>

/* Returns 1 when name is one of the client commands, else 0. */
int hd_cli_is_command(const char *name);

/* Runs the client command argv[0] (argc >= 1, hd_cli_is_command true) with
 * the arguments after it, reading the environment for HERALD_URL and
 * HERALD_API_TOKEN. Results go to out, errors and usage to err (neither is
 * closed). Returns the exit status: 0 done, 1 failed (the node could not be
 * reached, did not answer in time, or answered other than 2xx), 2 a usage
 * error. */
int hd_cli_main(int argc, char **argv, FILE *out, FILE *err);

/* Writes the usage lines of the client commands to f. */
void hd_cli_usage(FILE *f);

#endif
