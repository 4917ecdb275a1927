/* herald: command line, signals, the loop. */
#include "cli.h"
#include "config.h"
#include "err.h"
#include "log.h"
#include "script.h"
#include "server.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

typedef struct app {
    uv_loop_t loop;
    hd_server srv;
    uv_signal_t sigterm, sigint, sighup;
    int signals;
} app;

static void usage(FILE *f)
{
    fprintf(f, "usage: herald [-c FILE]                    run (no FILE: the embedded default config)\n"
               "       herald check FILE                   validate a config file; exit 0 if valid\n"
               "       herald version                      print the version\n");
    hd_cli_usage(f);
}

static void on_signal(uv_signal_t *s, int signum)
{
    app *a = s->data;
    if (++a->signals > 1) {
        hd_warn("second signal (%s): exiting at once", signum == SIGINT ? "SIGINT" : "SIGTERM");
        _exit(1);
    }
    hd_server_drain(&a->srv, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static void on_sighup(uv_signal_t *s, int signum)
{
    (void)signum;
    app *a = s->data;
    char err[1024];
    hd_info("SIGHUP: reloading scripts");
    hd_server_reload(&a->srv, err, sizeof err);
}

static void close_signals(app *a)
{
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->sighup, NULL);
}

static void on_stopped(hd_server *srv)
{
    app *a = (app *)((char *)srv - offsetof(app, srv));
    close_signals(a);
    hd_info("stopped");
}

static void warn_about(const hd_config *cfg)
{
    if (!cfg->nallowed_origins)
        hd_warn("no ws.allowed_origins configured: any web page may open a WebSocket here with "
                "its visitors' cookies");
    if (!cfg->api_token)
        hd_warn("no API token configured (api.token): /api accepts requests from loopback "
                "addresses only");
    /* Raise the soft descriptor limit as far as the hard limit allows; the
     * server sizes its connection caps from what it gets. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        cfg->max_connections + 64 > rl.rlim_cur && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Logs text, which may hold several lines (a config's errors), one log line
 * each. */
static void error_lines(const char *text)
{
    while (*text) {
        size_t n = strcspn(text, "\n");
        if (n) hd_error("%.*s", (int)n, text);
        text += n;
        if (*text) text++;
    }
}

/* Room for many errors of a config, each on a line of its own. */
#define CONFIG_ERR_BYTES 16384

static int run(const char *path)
{
    hd_config cfg;
    char err[CONFIG_ERR_BYTES];
    if (hd_config_load(&cfg, path, err, sizeof err)) {
        error_lines(err);
        return 2;
    }
    hd_log_set_level((hd_log_level)cfg.log_level);
    hd_log_set_format((hd_log_format)cfg.log_format);
    hd_info("herald %s starting with %s", HERALD_VERSION, cfg.source);
    warn_about(&cfg);

    signal(SIGPIPE, SIG_IGN);
    app *a = calloc(1, sizeof *a);
    int rc = a ? uv_loop_init(&a->loop) : HD_ENOMEM;
    if (!rc) {
        rc = hd_server_init(&a->srv, &a->loop, &cfg);
        if (rc) uv_loop_close(&a->loop); /* a failed init leaves no handle */
    }
    if (rc) {
        hd_error("cannot start: %s", hd_strerror(rc));
        free(a);
        hd_config_free(&cfg);
        return 1;
    }
    a->srv.on_stopped = on_stopped;
    uv_signal_init(&a->loop, &a->sigterm);
    uv_signal_init(&a->loop, &a->sigint);
    uv_signal_init(&a->loop, &a->sighup);
    a->sigterm.data = a->sigint.data = a->sighup.data = a;
    uv_signal_start(&a->sigterm, on_signal, SIGTERM);
    uv_signal_start(&a->sigint, on_signal, SIGINT);
    uv_signal_start(&a->sighup, on_sighup, SIGHUP);

    /* Scripts load before the listener opens: a broken one fails start-up. */
    char serr[1024];
    rc = hd_script_start(&a->srv.sc, serr, sizeof serr);
    if (rc) error_lines(serr);
    else {
        if (!hd_script_has(&a->srv.sc, HD_HOOK_AUTHENTICATE))
            hd_warn("no authenticate hook is configured: any client may connect and join any "
                    "topic");
        rc = hd_server_start(&a->srv);
    }
    if (rc) hd_server_stop(&a->srv); /* on_stopped closes the signal handles */
    uv_run(&a->loop, UV_RUN_DEFAULT);
    if (a->srv.drain.stats.lost_frames) {
        hd_warn("exiting with %llu frame(s) undelivered", (unsigned long long)a->srv.drain.stats.lost_frames);
        rc = 1;
    }
    hd_server_free(&a->srv);
    int lc = uv_loop_close(&a->loop);
    if (lc) hd_warn("loop closed with handles still open: %s", uv_strerror(lc));
    free(a);
    hd_config_free(&cfg);
    return rc ? 1 : 0;
}

/* herald check FILE: the config and every script and plugin it names. */
static int check(const char *path)
{
    hd_config cfg;
    char err[CONFIG_ERR_BYTES];
    if (hd_config_load(&cfg, path, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    hd_log_set_level(HD_LOG_WARN);
    uv_loop_t loop;
    hd_server *srv = calloc(1, sizeof *srv);
    int rc = srv ? uv_loop_init(&loop) : HD_ENOMEM;
    int loop_ok = rc == 0, inited = 0;
    if (!rc) {
        /* Quiet while the node is built: warnings about this shell's file
         * limit say nothing of the file being checked. */
        hd_log_set_level(HD_LOG_ERROR);
        rc = hd_server_init(srv, &loop, &cfg);
        hd_log_set_level(HD_LOG_WARN);
        inited = rc == 0;
    }
    if (!rc) rc = hd_script_start(&srv->sc, err, sizeof err);
    if (rc) fprintf(stderr, "%s\n", rc == HD_ECONFIG ? err : hd_strerror(rc));
    else printf("%s: ok (%zu script(s), %zu plugin(s))\n", path, cfg.nscripts, cfg.nplugins);
    if (inited) {
        hd_script_stop(&srv->sc); /* no shutdown hooks: nothing ran */
        hd_server_stop(srv);
        uv_run(&loop, UV_RUN_DEFAULT);
        hd_server_free(srv);
    }
    if (loop_ok) uv_loop_close(&loop);
    free(srv);
    hd_config_free(&cfg);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "version") == 0) {
        printf("herald %s\n", HERALD_VERSION);
        return 0;
    }
    if (argc >= 2 && hd_cli_is_command(argv[1])) return hd_cli_main(argc - 1, argv + 1, stdout, stderr);
    if (argc >= 2 && strcmp(argv[1], "check") == 0) {
        if (argc != 3) {
            usage(stderr);
            return 2;
        }
        return check(argv[2]);
    }
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
            path = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "herald: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    return run(path);
}
