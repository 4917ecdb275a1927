/* herald's client commands (core/cli.h): one blocking HTTP/1.1 request
 * over a plain socket, with one deadline for connecting, sending and
 * reading; the answer read by llhttp. */
#include "cli.h"
#include "buf.h"
#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <llhttp.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_URL "http://127.0.0.1:4000"
#define DEFAULT_TIMEOUT_S 10
#define MAX_ANSWER_BYTES (64u << 20) /* an answer beyond it is refused, not buffered */

typedef struct command {
    const char *name;
    const char *method, *path;
    int nargs;         /* positional arguments */
    const char *args;  /* their names, for the usage */
    const char *about; /* one line */
} command;

static const command commands[] = {
    {"publish", "POST", "/api/push", 3, " TOPIC EVENT JSON",
     "publish a message (JSON: its data)"},
    {"status", "GET", "/admin/status", 0, "", "the node's state, scripts, cluster"},
    {"reload", "POST", "/admin/reload", 0, "",
     "reload the scripts (on an error, exit 1)"},
    {"drain", "POST", "/admin/drain", 0, "", "drain the node; it exits when done"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0) return &commands[i];
    return NULL;
}

int hd_cli_is_command(const char *name) { return find_command(name) != NULL; }

void hd_cli_usage(FILE *f)
{
    for (size_t i = 0; i < NCOMMANDS; i++) {
        char head[64];
        snprintf(head, sizeof head, "herald %s%s", commands[i].name, commands[i].args);
        fprintf(f, "       %-35s %s\n", head, commands[i].about);
    }
    fprintf(f, "       %-35s %s\n", "herald COMMAND --help", "a command's options");
    fprintf(f, "The commands talk to a running node: --url URL (default $HERALD_URL, else\n"
               "%s), --timeout SECONDS (default %d), the API token from\n"
               "$HERALD_API_TOKEN.\n",
            DEFAULT_URL, DEFAULT_TIMEOUT_S);
}

static void command_usage(const command *c, FILE *f)
{
    fprintf(f,
            "usage: herald %s%s [--url URL] [--timeout SECONDS]\n"
            "  %s: %s %s\n"
            "  --url URL          the node (default $HERALD_URL, else %s)\n"
            "  --timeout SECONDS  for the whole exchange (default %d)\n"
            "  $HERALD_API_TOKEN  sent as Authorization: Bearer (never printed)\n"
            "The node's JSON answer is printed, indented. Exit status: 0 done, 1 failed (no\n"
            "connection, no answer in time, or an answer other than 2xx), 2 a usage error.\n",
            c->name, c->args, c->about, c->method, c->path, DEFAULT_URL, DEFAULT_TIMEOUT_S);
    if (c->nargs) fprintf(f, "Put -- before a JSON argument that starts with '-'.\n");
}

/* ---- URLs -------------------------------------------------------------------------- */

typedef struct cli_url {
    char host[256]; /* an IPv6 address without its brackets */
    char port[6];
    char base[1024]; /* a path prefix without a trailing '/', or "" */
    char shown[1300]; /* http://host:port/base, for messages */
} cli_url;

/* Parses http://host[:port][/base]; returns 0, or -1 with err set (which
 * never repeats the URL: it may hold what the user did not mean to show). */
static int url_parse(const char *url, cli_url *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    if (strncasecmp(url, "https://", 8) == 0) {
        snprintf(err, errlen, "https:// is not supported: give the node's http:// address");
        return -1;
    }
    if (strncasecmp(url, "http://", 7) != 0) {
        snprintf(err, errlen, "the URL must start with http://");
        return -1;
    }
    const char *a = url + 7, *end = a + strcspn(a, "/?#");
    if (memchr(a, '@', (size_t)(end - a))) {
        snprintf(err, errlen, "credentials in the URL are not supported: use HERALD_API_TOKEN");
        return -1;
    }
    hd_authority au;
    if (hd_authority_parse(a, (size_t)(end - a), &au) || au.host_len >= sizeof u->host) goto bad;
    memcpy(u->host, au.host, au.host_len);
    snprintf(u->port, sizeof u->port, "%u", (au.port ? au.port : 80) & 0xFFFF);
    if (*end == '?' || *end == '#') {
        snprintf(err, errlen, "the URL may not have a query or a fragment");
        return -1;
    }
    size_t bl = strlen(end);
    while (bl && end[bl - 1] == '/') bl--;
    if (bl >= sizeof u->base) goto bad;
    memcpy(u->base, end, bl);
    snprintf(u->shown, sizeof u->shown, strchr(u->host, ':') ? "http://[%s]:%s%s" : "http://%s:%s%s",
             u->host, u->port, u->base);
    return 0;
bad:
    snprintf(err, errlen, "not a URL of the form http://host[:port][/path]");
    return -1;
}

/* ---- one exchange ------------------------------------------------------------------ */

typedef struct answer {
    int status;
    hd_str body;
    int complete; /* the whole message was read */
    int too_big;  /* over MAX_ANSWER_BYTES (or out of memory) */
} answer;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd until deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) return 0;
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (n > 0) return 1;
        if (n == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

/* A connected socket to u before deadline, or -1 (err set). */
static int connect_to(const cli_url *u, int64_t deadline, char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    int g = getaddrinfo(u->host, u->port, &hints, &res);
    if (g) {
        snprintf(err, errlen, "cannot resolve %s: %s", u->host, gai_strerror(g));
        return -1;
    }
    int fd = -1, why = 0, timed_out = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            why = errno;
            continue;
        }
        why = connect(fd, ai->ai_addr, ai->ai_addrlen) ? errno : 0;
        if (why == EINPROGRESS) {
            int w = wait_fd(fd, POLLOUT, deadline);
            socklen_t sl = sizeof why;
            if (w == 0) why = ETIMEDOUT, timed_out = 1;
            else if (w < 0) why = errno;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &why, &sl)) why = errno;
        }
        if (why) {
            close(fd);
            fd = -1;
        }
        if (timed_out) break;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errlen, "cannot connect to %s: %s%s", u->shown, strerror(why),
                 why == ECONNREFUSED ? " (is herald running there?)" : "");
    return fd;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    answer *a = p->data;
    if (a->body.len + len > MAX_ANSWER_BYTES || hd_str_add(&a->body, at, len)) {
        a->too_big = 1;
        return -1;
    }
    return 0;
}

static int on_complete(llhttp_t *p)
{
    answer *a = p->data;
    a->status = p->status_code;
    a->complete = 1;
    return HPE_PAUSED; /* one answer: what follows is not read */
}

/* Writes len bytes of p to fd before deadline: 0, or -1 (err set). */
static int send_all(int fd, const char *p, size_t len, int64_t deadline, char *err, size_t errlen)
{
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n, len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            snprintf(err, errlen, "sending the request: %s", strerror(errno));
            return -1;
        }
        if (wait_fd(fd, POLLOUT, deadline) <= 0) {
            snprintf(err, errlen, "the node took no request within the timeout");
            return -1;
        }
    }
    return 0;
}

/* Reads the answer from fd into a before deadline: 0, or -1 (err set). */
static int read_answer(int fd, answer *a, int64_t deadline, char *err, size_t errlen)
{
    llhttp_settings_t s;
    llhttp_settings_init(&s);
    s.on_body = on_body;
    s.on_message_complete = on_complete;
    llhttp_t p;
    llhttp_init(&p, HTTP_RESPONSE, &s);
    p.data = a;
    char buf[16384];
    while (!a->complete) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        llhttp_errno_t e = HPE_OK;
        if (n > 0) {
            e = llhttp_execute(&p, buf, (size_t)n);
        } else if (n == 0) {
            e = llhttp_finish(&p); /* ends a body that runs to the close */
            if (!a->complete) {
                snprintf(err, errlen, "the node closed the connection before a whole answer");
                return -1;
            }
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            snprintf(err, errlen, "reading the answer: %s", strerror(errno));
            return -1;
        } else if (wait_fd(fd, POLLIN, deadline) <= 0) {
            snprintf(err, errlen, "no answer within the timeout");
            return -1;
        }
        if (e != HPE_OK && e != HPE_PAUSED) {
            snprintf(err, errlen, "%s",
                     a->too_big ? "an answer over 64 MiB" : "a malformed HTTP answer");
            return -1;
        }
    }
    return 0;
}

/* One request to u; returns 0 with *a filled (the caller frees a->body),
 * or -1 with err set. body may be NULL. */
static int exchange(const cli_url *u, const command *c, const char *token, const char *body,
                    int timeout_ms, answer *a, char *err, size_t errlen)
{
    memset(a, 0, sizeof *a);
    int64_t deadline = now_ms() + timeout_ms;
    int fd = connect_to(u, deadline, err, errlen);
    if (fd < 0) return -1;
    hd_str req = HD_STR_INIT;
    const char *br = strchr(u->host, ':') ? "[" : "", *bk = *br ? "]" : "";
    hd_str_printf(&req, "%s %s%s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: herald/%s\r\n"
                        "Accept: application/json\r\nConnection: close\r\n",
                  c->method, u->base, c->path, br, u->host, bk, u->port, HERALD_VERSION);
    if (token) {
        hd_str_adds(&req, "Authorization: Bearer ");
        hd_str_adds(&req, token);
        hd_str_adds(&req, "\r\n");
    }
    size_t bl = body ? strlen(body) : 0;
    if (body) hd_str_adds(&req, "Content-Type: application/json\r\n");
    if (body || strcmp(c->method, "POST") == 0) hd_str_printf(&req, "Content-Length: %zu\r\n", bl);
    hd_str_adds(&req, "\r\n");
    if (body) hd_str_add(&req, body, bl);
    int rc = -1;
    if (req.oom) snprintf(err, errlen, "out of memory");
    else if (send_all(fd, req.p, req.len, deadline, err, errlen) == 0)
        rc = read_answer(fd, a, deadline, err, errlen);
    /* The request held the token: wiped before it is freed. */
    if (req.p) memset(req.p, 0, req.cap);
    hd_str_free(&req);
    close(fd);
    if (rc) hd_str_free(&a->body);
    return rc;
}

/* ---- the commands ------------------------------------------------------------------ */

/* Prints an answer's body: JSON indented, anything else as it came. */
static void print_answer(const answer *a, FILE *out)
{
    json_t *doc = a->body.len ? json_loadb(a->body.p, a->body.len, JSON_DECODE_ANY, NULL) : NULL;
    if (doc) {
        json_dumpf(doc, out, JSON_INDENT(2) | JSON_ENCODE_ANY);
        fputc('\n', out);
        json_decref(doc);
    } else if (a->body.len) {
        fwrite(a->body.p, 1, a->body.len, out);
        if (a->body.p[a->body.len - 1] != '\n') fputc('\n', out);
    }
}

/* What a refusal says: its JSON "error", else the start of its body. */
static void refusal_text(const answer *a, char *out, size_t cap)
{
    json_t *doc = a->body.len ? json_loadb(a->body.p, a->body.len, 0, NULL) : NULL;
    const char *e = json_string_value(json_object_get(doc, "error"));
    size_t n = 0;
    if (e) {
        snprintf(out, cap, "%s", e);
        n = strlen(out); /* (an error holding a NUL ends there) */
    } else if (a->body.len) {
        n = a->body.len < cap - 1 ? a->body.len : cap - 1;
        memcpy(out, a->body.p, n);
        out[n] = 0;
    } else {
        n = (size_t)snprintf(out, cap, "(no body)");
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20) out[i] = ' '; /* one line */
    json_decref(doc);
}

/* The body of a publish, or NULL after printing why not (usage error). */
static char *publish_body(char **args, FILE *err)
{
    json_error_t e;
    json_t *data = json_loads(args[2], JSON_DECODE_ANY, &e);
    if (!data) {
        fprintf(err, "herald publish: JSON is not valid JSON: %s (column %d)\n", e.text, e.column);
        return NULL;
    }
    json_t *msg = json_pack("{s:s, s:s, s:o}", "channel", args[0], "event", args[1], "data", data);
    char *body = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    if (!body) fprintf(err, "herald publish: TOPIC and EVENT must be UTF-8 text\n");
    return body;
}

/* The token from the environment (NULL when unset or empty), or (char *)-1
 * when it cannot go in a header: it is never shown. */
static const char *env_token(void)
{
    const char *t = getenv("HERALD_API_TOKEN");
    if (!t || !*t) return NULL;
    for (const char *p = t; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) return (const char *)-1;
    return t;
}

int hd_cli_main(int argc, char **argv, FILE *out, FILE *err)
{
    const command *c = find_command(argv[0]);
    if (!c) return 2;
    const char *url = getenv("HERALD_URL");
    if (!url || !*url) url = DEFAULT_URL;
    double timeout_s = DEFAULT_TIMEOUT_S;
    char *args[3];
    int nargs = 0, options = 1;
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        const char *v = NULL;
        if (!options || a[0] != '-' || !a[1]) {
            if (nargs == c->nargs) {
                fprintf(err, "herald %s: unexpected argument '%s'\n", c->name, a);
                goto usage;
            }
            args[nargs++] = a;
        } else if (strcmp(a, "--") == 0) {
            options = 0;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            command_usage(c, out);
            return 0;
        } else if (strcmp(a, "--url") == 0 || strcmp(a, "--timeout") == 0 ||
                   strncmp(a, "--url=", 6) == 0 || strncmp(a, "--timeout=", 10) == 0) {
            int is_url = a[2] == 'u';
            v = strchr(a, '=');
            if (v) v++;
            else if (i + 1 < argc) v = argv[++i];
            else {
                fprintf(err, "herald %s: %s needs a value\n", c->name, a);
                goto usage;
            }
            if (is_url) {
                url = v;
                continue;
            }
            char *end;
            timeout_s = strtod(v, &end);
            if (end == v || *end || !(timeout_s > 0 && timeout_s <= 86400)) {
                fprintf(err, "herald %s: --timeout takes seconds, more than 0 and at most 86400\n",
                        c->name);
                goto usage;
            }
        } else {
            fprintf(err, "herald %s: unknown option '%s'\n", c->name, a);
            goto usage;
        }
    }
    if (nargs != c->nargs) {
        fprintf(err, "herald %s: expected%s\n", c->name, c->args);
        goto usage;
    }

    cli_url u;
    char why[2048]; /* room for a message naming the URL */
    if (url_parse(url, &u, why, sizeof why)) {
        fprintf(err, "herald %s: --url: %s\n", c->name, why);
        return 2;
    }
    const char *token = env_token();
    if (token == (const char *)-1) {
        fprintf(err, "herald %s: HERALD_API_TOKEN holds a control character\n", c->name);
        return 2;
    }
    char *body = NULL;
    if (c->nargs && !(body = publish_body(args, err))) return 2;
    answer a;
    int rc = exchange(&u, c, token, body, (int)(timeout_s * 1000), &a, why, sizeof why);
    free(body);
    if (rc) {
        fprintf(err, "herald %s: %s\n", c->name, why);
        return 1;
    }
    if (a.status >= 200 && a.status < 300) {
        print_answer(&a, out);
    } else {
        char text[512];
        refusal_text(&a, text, sizeof text);
        const char *hint = a.status != 403 ? ""
                           : token         ? " (is HERALD_API_TOKEN the node's api.token?)"
                                           : " (HERALD_API_TOKEN is not set)";
        fprintf(err, "herald %s: %s%s answered %d: %s%s\n", c->name,
                strcmp(c->name, "reload") == 0 ? "the reload failed: " : "", u.shown, a.status,
                text, hint);
        rc = 1;
    }
    hd_str_free(&a.body);
    return rc;
usage:
    command_usage(c, err);
    return 2;
}
