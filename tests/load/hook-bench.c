/* hook-bench: the cost of one call of each Lua hook, measured in-process
 * against the real script layer (herald_core) with trivial hooks, next to
 * the same calls with no script loaded. Prints one JSON line per hook.
 *   hook-bench [CALLS]   (default 200000) */
#include "config.h"
#include "conn.h"
#include "hooks.h"
#include "script.h"
#include "server.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

static const char script[] =
    "return {\n"
    "  authenticate = function(req) return { id = req.params.user or 'u', assigns = { r = 1 } } end,\n"
    "  join = function(socket, topic, payload) return true end,\n"
    "  api_auth = function(req) return true end,\n"
    "  topic = function(name) return { tracked = true } end,\n"
    "  publish = function(msg) msg.data.seen = true; return msg end,\n"
    "  message = function(socket, topic, event, payload) return { ok = true } end,\n"
    "}\n";

static void call(int h, hd_scripts *srv, hd_conn *c, hd_hook_req *r, json_t *payload)
{
    char reason[128], *id = NULL, *assigns = NULL;
    hd_str reply = HD_STR_INIT;
    hd_topic_policy p;
    switch (h) {
    case 0:
        hd_hook_authenticate(srv, c, r, NULL, &id, &assigns, reason, sizeof reason);
        free(id);
        free(assigns);
        break;
    case 1: hd_hook_join(srv, c, "room:1", 6, payload, &reply, NULL, reason, sizeof reason); break;
    case 2: hd_hook_api_auth(srv, c, r); break;
    case 3:
        hd_topic_policy_default(&p);
        hd_hook_topic(srv, "room:1", 6, &p);
        break;
    case 4: {
        char *ev = strdup("e"), *data = strdup("{\"a\":1,\"b\":\"text\"}");
        hd_hook_publish(srv, "room:1", 6, &ev, &data);
        free(ev);
        free(data);
        break;
    }
    default:
        hd_hook_message(srv, c, "room:1", 6, "ev", payload, &reply, reason, sizeof reason);
    }
    hd_str_free(&reply);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    static const char *const names[] = {"authenticate", "join", "api_auth", "topic", "publish", "message"};
    char dir[] = "/tmp/hook-bench-XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char path[256], conf[256];
    snprintf(path, sizeof path, "%s/hooks.lua", dir);
    snprintf(conf, sizeof conf, "%s/herald.lua", dir);
    FILE *f = fopen(path, "w");
    fputs(script, f);
    fclose(f);
    f = fopen(conf, "w");
    fputs("scripts = { \"hooks.lua\", budget_ms = 1000 }\n", f);
    fclose(f);
    uv_loop_t loop;
    uv_loop_init(&loop);
    for (int with = 0; with < 2; with++) {
        hd_config cfg;
        char err[512];
        if (hd_config_load(&cfg, with ? conf : NULL, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        hd_server *srv = calloc(1, sizeof *srv);
        hd_server_init(srv, &loop, &cfg);
        if (hd_script_start(&srv->sc, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        hd_conn *c = calloc(1, sizeof *c);
        c->net = &srv->net;
        c->kind = HD_CONN_WS;
        hd_conn_set_identity(c, "user:1");
        c->assigns = strdup("{\"role\":\"admin\"}");
        hd_hook_req r;
        memset(&r, 0, sizeof r);
        r.method = "GET";
        r.path = "/socket/websocket";
        r.path_len = strlen(r.path);
        r.query = "vsn=2.0.0&user=7";
        r.query_len = strlen(r.query);
        r.hbuf = "";
        json_t *payload = json_pack("{s:i,s:s}", "a", 1, "b", "x");
        for (int h = 0; h < 6; h++) {
            uint64_t t0 = uv_hrtime();
            for (long i = 0; i < n; i++) call(h, &srv->sc, c, &r, payload);
            double ns = (double)(uv_hrtime() - t0) / (double)n;
            printf("{\"bench\":\"hook\",\"hook\":\"%s\",\"scripts\":\"%s\",\"calls\":%ld,"
                   "\"ns_per_call\":%.0f}\n",
                   names[h], with ? "trivial hooks" : "none", n, ns);
        }
        json_decref(payload);
        hd_conn_set_identity(c, NULL);
        free(c->assigns);
        free(c);
        hd_server_stop(srv);
        uv_run(&loop, UV_RUN_DEFAULT);
        hd_server_free(srv);
        free(srv);
        hd_config_free(&cfg);
    }
    uv_loop_close(&loop);
    unlink(path);
    unlink(conf);
    rmdir(dir);
    return 0;
}
