/* herald: command line, signals, the loop. */
#include "config.h"
#include "err.h"
#include "log.h"
#include "server.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

typedef struct app {
    uv_loop_t loop;
    hd_server srv;
    uv_signal_t sigterm, sigint;
    int signals;
} app;

static void usage(FILE *f)
{
    fprintf(f, "usage: herald [-c FILE]     run (no FILE: the embedded default config)\n"
               "       herald check FILE    validate a config file; exit 0 if valid\n"
               "       herald version       print the version\n");
}

static void on_signal(uv_signal_t *s, int signum)
{
    app *a = s->data;
    if (++a->signals > 1) {
        hd_warn("second signal (%s): exiting at once", signum == SIGINT ? "SIGINT" : "SIGTERM");
        exit(1);
    }
    hd_info("%s: shutting down", signum == SIGINT ? "SIGINT" : "SIGTERM");
    hd_server_stop(&a->srv);
}

static void on_stopped(hd_server *srv)
{
    app *a = (app *)((char *)srv - offsetof(app, srv));
    uv_close((uv_handle_t *)&a->sigterm, NULL);
    uv_close((uv_handle_t *)&a->sigint, NULL);
    hd_info("stopped");
}

static void warn_about(const hd_config *cfg)
{
    if (!cfg->api_token)
        hd_warn("no API token configured (api.token): /api accepts requests from loopback "
                "addresses only");
    hd_warn("no authentication is configured: any client may connect and join any topic");
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        cfg->max_connections + 64 > rl.rlim_cur) {
        /* Raise the soft limit as far as the hard limit allows. */
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur != RLIM_INFINITY && cfg->max_connections + 64 > rl.rlim_cur)
            hd_warn("limits.max_connections is %zu but this process may open only %llu files "
                    "(RLIMIT_NOFILE): connections beyond about %llu will be refused",
                    cfg->max_connections, (unsigned long long)rl.rlim_cur,
                    (unsigned long long)(rl.rlim_cur > 64 ? rl.rlim_cur - 64 : 0));
    }
}

static int run(const char *path)
{
    hd_config cfg;
    char err[1024];
    if (hd_config_load(&cfg, path, err, sizeof err)) {
        hd_error("%s", err);
        return 2;
    }
    hd_log_set_level((hd_log_level)cfg.log_level);
    hd_info("herald %s starting with %s", HERALD_VERSION, cfg.source);
    warn_about(&cfg);

    signal(SIGPIPE, SIG_IGN);
    app *a = calloc(1, sizeof *a);
    if (!a) return 1;
    uv_loop_init(&a->loop);
    int rc = hd_server_init(&a->srv, &a->loop, &cfg);
    if (rc) {
        hd_error("cannot start: %s", hd_strerror(rc));
        return 1;
    }
    a->srv.on_stopped = on_stopped;
    uv_signal_init(&a->loop, &a->sigterm);
    uv_signal_init(&a->loop, &a->sigint);
    a->sigterm.data = a->sigint.data = a;
    uv_signal_start(&a->sigterm, on_signal, SIGTERM);
    uv_signal_start(&a->sigint, on_signal, SIGINT);

    rc = hd_server_start(&a->srv);
    if (rc) {
        hd_server_stop(&a->srv);
        uv_close((uv_handle_t *)&a->sigterm, NULL);
        uv_close((uv_handle_t *)&a->sigint, NULL);
    }
    uv_run(&a->loop, UV_RUN_DEFAULT);
    hd_server_free(&a->srv);
    int lc = uv_loop_close(&a->loop);
    if (lc) hd_warn("loop closed with handles still open: %s", uv_strerror(lc));
    free(a);
    hd_config_free(&cfg);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "version") == 0) {
        printf("herald %s\n", HERALD_VERSION);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "check") == 0) {
        if (argc != 3) {
            usage(stderr);
            return 2;
        }
        hd_config cfg;
        char err[1024];
        if (hd_config_load(&cfg, argv[2], err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        printf("%s: ok\n", argv[2]);
        hd_config_free(&cfg);
        return 0;
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
