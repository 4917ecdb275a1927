#include "config.h"
#include "buf.h"
#include "embed.h"
#include "luapi.h"
#include "err.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <lauxlib.h>
#include <luajit.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* A config file that runs this many VM instructions is taken to be stuck. */
#define CONFIG_INSN_LIMIT 50000000
#define HOOK_EVERY 10000
/* ... or that holds this much Lua heap. */
#define CONFIG_MEMORY_KB (256 * 1024)
enum { OUT_OF_INSNS = 1, OUT_OF_MEMORY };

/* The budget of the config chunk (instructions run, and whether it ran
 * out); sits in the registry under budget_key while the chunk runs. */
typedef struct {
    long hooks;
    int exceeded;
} budget;
static const char budget_key = 0;

static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_pushlightuserdata(L, (void *)&budget_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    budget *b = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (!b) return;
    if (!b->exceeded && ++b->hooks * HOOK_EVERY > CONFIG_INSN_LIMIT) b->exceeded = OUT_OF_INSNS;
    if (!b->exceeded && lua_gc(L, LUA_GCCOUNT, 0) > CONFIG_MEMORY_KB) b->exceeded = OUT_OF_MEMORY;
    if (b->exceeded) luaL_error(L, "over budget"); /* hd_config_load words the message */
}

/* Reads a whole file into *text (malloc'd, caller frees). */
static int read_file(const char *path, char **text, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    hd_str s = HD_STR_INIT;
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) hd_str_add(&s, chunk, n);
    int bad = ferror(f) || s.oom;
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "%s: cannot read", path);
        hd_str_free(&s);
        return -1;
    }
    *text = s.p;
    *len = s.len;
    return 0;
}

/* [-0, +1] Pushes the sandbox library table the config chunk may read. */
static void push_sandbox_lib(lua_State *L, const int *exceeded)
{
    lua_newtable(L);
    static const char *const globals[] = {"assert", "error", "ipairs", "next", "pairs",
                                          "select", "tonumber", "tostring", "type", "unpack",
                                          "string", "table", "math", NULL};
    hd_luapi_fill_sandbox(L, globals, exceeded);
    lua_newtable(L); /* os: only what a config needs */
    lua_getglobal(L, "os");
    lua_getfield(L, -1, "getenv");
    lua_setfield(L, -3, "getenv");
    lua_getfield(L, -1, "time");
    lua_setfield(L, -3, "time");
    lua_pop(L, 1);
    lua_setfield(L, -2, "os");
}

static char *dup_field(lua_State *L, int idx, const char *k)
{
    lua_getfield(L, idx, k);
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    char *r = s ? strdup(s) : NULL;
    lua_pop(L, 1);
    return r;
}

static double num_field(lua_State *L, int idx, const char *k)
{
    lua_getfield(L, idx, k);
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/* [-0, +0] Policy fields from the checked table at idx (config.h). */
uint32_t hd_config_read_policy(lua_State *L, int idx, hd_topic_policy *p)
{
    if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
    uint32_t set = 0;
    static const struct {
        const char *key;
        uint32_t bit;
        size_t off;
    } bools[] = {{"tracked", HD_TP_TRACKED, offsetof(hd_topic_policy, tracked)},
                 {"presence", HD_TP_PRESENCE, offsetof(hd_topic_policy, presence)}},
      nums[] = {{"throttle_ms", HD_TP_THROTTLE, offsetof(hd_topic_policy, throttle_ms)},
                {"debounce_ms", HD_TP_DEBOUNCE, offsetof(hd_topic_policy, debounce_ms)},
                {"max_wait_ms", HD_TP_MAX_WAIT, offsetof(hd_topic_policy, max_wait_ms)},
                {"max_queue_bytes", HD_TP_MAX_QUEUE, offsetof(hd_topic_policy, max_queue_bytes)},
                {"history_size", HD_TP_HISTORY, offsetof(hd_topic_policy, history_size)},
                {"history_ttl_ms", HD_TP_HISTORY_TTL, offsetof(hd_topic_policy, history_ttl_ms)},
                {"recover_max", HD_TP_RECOVER_MAX, offsetof(hd_topic_policy, recover_max)}};
    for (size_t i = 0; i < sizeof bools / sizeof *bools; i++) {
        lua_getfield(L, idx, bools[i].key);
        if (lua_isboolean(L, -1)) {
            set |= bools[i].bit;
            *((uint8_t *)p + bools[i].off) = (uint8_t)lua_toboolean(L, -1);
        }
        lua_pop(L, 1);
    }
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++) {
        lua_getfield(L, idx, nums[i].key);
        if (lua_type(L, -1) == LUA_TNUMBER) {
            set |= nums[i].bit;
            uint32_t v = (uint32_t)lua_tonumber(L, -1);
            memcpy((char *)p + nums[i].off, &v, sizeof v);
        }
        lua_pop(L, 1);
    }
    lua_getfield(L, idx, "coalesce");
    if (lua_type(L, -1) == LUA_TSTRING) {
        set |= HD_TP_COALESCE;
        p->coalesce = strcmp(lua_tostring(L, -1), "latest") == 0 ? HD_COALESCE_LATEST
                                                                 : HD_COALESCE_NONE;
    }
    lua_getfield(L, idx, "on_overflow");
    if (lua_type(L, -1) == LUA_TSTRING) {
        set |= HD_TP_OVERFLOW;
        p->on_overflow = strcmp(lua_tostring(L, -1), "drop_oldest") == 0 ? HD_OVERFLOW_DROP_OLDEST
                                                                         : HD_OVERFLOW_CLOSE;
    }
    lua_pop(L, 2);
    return set;
}

/* [-1, +(1|2)] redis_url(url) -> true | nil, reason: hd_redis_url_parse for
 * the schema (M.redis_url), so that the config check and the cluster read
 * URLs with the same parser. */
static int l_redis_url(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    hd_redis_url u;
    char why[128];
    if (hd_redis_url_parse(url, &u, why, sizeof why) == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

/* [-1, +1] cidr(s) -> boolean: hd_cidr_parse for the schema (M.cidr). */
static int l_cidr(lua_State *L)
{
    hd_cidr c;
    lua_pushboolean(L, hd_cidr_parse(&c, luaL_checkstring(L, 1)) == 0);
    return 1;
}

/* [-1, +1] plugin_source(name) -> text | nil: plugins/<name>.lua as compiled
 * into the binary, for the schema (M.plugin_source), which reads each
 * plugin's declaration of its options from it. */
static int l_plugin_source(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    char mod[160];
    snprintf(mod, sizeof mod, "plugins.%s", name);
    const hd_embedded *p = strlen(name) < 128 ? hd_embedded_find(mod) : NULL;
    if (p) lua_pushlstring(L, p->src, p->len);
    else lua_pushnil(L);
    return 1;
}

/* [-0, +0] Copies the list of strings at the top of the stack into a new
 * NULL-terminated array *out of *n strings (freed by hd_config_free, also
 * when this runs out of memory half way). Returns 0 or HD_ENOMEM. */
static int str_list(lua_State *L, char ***out, size_t *n)
{
    size_t len = lua_objlen(L, -1);
    *out = calloc(len + 1, sizeof **out);
    if (!*out) return HD_ENOMEM;
    for (size_t i = 0; i < len; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        char *v = strdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        if (!v) return HD_ENOMEM;
        (*out)[(*n)++] = v;
    }
    return 0;
}

/* [-0, +0] Copies the normalized table at the top of the stack into c. */
static int read_normalized(lua_State *L, hd_config *c, const char *dir)
{
    int t = lua_gettop(L);
    lua_getfield(L, t, "listen");
    c->host = dup_field(L, -1, "host");
    c->port = (int)num_field(L, -1, "port");
    lua_getfield(L, -1, "reuseport");
    c->reuseport = lua_toboolean(L, -1);
    lua_getfield(L, -2, "trusted_proxies");
    size_t nt = lua_objlen(L, -1);
    c->trusted = calloc(nt ? nt : 1, sizeof *c->trusted);
    if (!c->trusted) return HD_ENOMEM;
    for (size_t i = 0; i < nt; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        if (hd_cidr_parse(&c->trusted[c->ntrusted], lua_tostring(L, -1)) == 0) c->ntrusted++;
        lua_pop(L, 1);
    }
    lua_pop(L, 3);

    lua_getfield(L, t, "admin");
    lua_getfield(L, -1, "on");
    if (lua_toboolean(L, -1)) {
        c->admin_host = dup_field(L, -2, "host");
        if (!c->admin_host) return HD_ENOMEM;
        c->admin_port = (int)num_field(L, -2, "port");
    }
    lua_pop(L, 2);

    lua_getfield(L, t, "api");
    c->api_token = dup_field(L, -1, "token");
    lua_pop(L, 1);

    lua_getfield(L, t, "ws");
    lua_getfield(L, -1, "allowed_origins"); /* a list, or false: any origin */
    if (lua_istable(L, -1) && str_list(L, &c->allowed_origins, &c->nallowed_origins)) return HD_ENOMEM;
    lua_pop(L, 2);

    lua_getfield(L, t, "mounts");
    size_t n = lua_objlen(L, -1);
    c->ws_paths = calloc(n ? n : 1, sizeof *c->ws_paths);
    c->lp_paths = calloc(n ? n : 1, sizeof *c->lp_paths);
    if (!c->ws_paths || !c->lp_paths) return HD_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1); /* { path, websocket, longpoll } */
        lua_getfield(L, -1, "path");
        const char *m = lua_tostring(L, -1);
        lua_pop(L, 1);
        size_t ml = strlen(m);
        if (ml == 1) ml = 0; /* mount "/" serves "/websocket" */
        static const char *const tails[2] = {"/websocket", "/longpoll"};
        static const char *const keys[2] = {"websocket", "longpoll"};
        for (int k = 0; k < 2; k++) {
            lua_getfield(L, -1, keys[k]);
            int on = lua_toboolean(L, -1);
            lua_pop(L, 1);
            if (!on) continue;
            size_t tl = strlen(tails[k]);
            char *p = malloc(ml + tl + 1);
            if (!p) return HD_ENOMEM;
            memcpy(p, m, ml);
            memcpy(p + ml, tails[k], tl + 1);
            if (k == 0) c->ws_paths[c->nmounts++] = p;
            else c->lp_paths[c->nlp_paths++] = p;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "limits");
    c->max_connections = (size_t)num_field(L, -1, "max_connections");
    c->max_conns_per_ip = (size_t)num_field(L, -1, "max_connections_per_ip");
    c->connect_rate = (uint32_t)num_field(L, -1, "connect_rate");
    c->connect_rate_per_ip = (uint32_t)num_field(L, -1, "connect_rate_per_ip");
    c->ipv6_prefix = (unsigned)num_field(L, -1, "ipv6_prefix");
    c->max_message_bytes = (size_t)num_field(L, -1, "max_message_bytes");
    c->max_inbound_bytes = (size_t)num_field(L, -1, "max_inbound_bytes");
    c->send_queue_bytes = (size_t)num_field(L, -1, "send_queue_bytes");
    c->max_header_bytes = (size_t)num_field(L, -1, "max_header_bytes");
    c->max_url_bytes = (size_t)num_field(L, -1, "max_url_bytes");
    c->max_body_bytes = (size_t)num_field(L, -1, "max_body_bytes");
    c->max_topics_per_socket = (size_t)num_field(L, -1, "max_topics_per_socket");
    c->max_queued_bytes = (size_t)num_field(L, -1, "max_queued_bytes");
    c->fanout_backlog = (unsigned)num_field(L, -1, "fanout_backlog");
    c->client_messages_per_s = (uint32_t)num_field(L, -1, "client_messages_per_s");
    c->client_messages_burst = (uint32_t)num_field(L, -1, "client_messages_burst");
    lua_pop(L, 1);

    lua_getfield(L, t, "timeouts");
    c->ws_idle_ms = (uint64_t)num_field(L, -1, "ws_idle_ms");
    c->http_idle_ms = (uint64_t)num_field(L, -1, "http_idle_ms");
    c->http_head_ms = (uint64_t)num_field(L, -1, "http_head_ms");
    c->http_body_ms = (uint64_t)num_field(L, -1, "http_body_ms");
    c->ws_message_ms = (uint64_t)num_field(L, -1, "ws_message_ms");
    c->ws_close_ms = (uint64_t)num_field(L, -1, "ws_close_ms");
    lua_pop(L, 1);

    lua_getfield(L, t, "reload");
    lua_getfield(L, -1, "recheck_joins");
    c->recheck_joins = lua_toboolean(L, -1);
    lua_pop(L, 2);

    lua_getfield(L, t, "scripts");
    lua_getfield(L, -1, "watch");
    c->scripts_watch = lua_toboolean(L, -1);
    lua_pop(L, 1);
    c->hook_budget_ms = (uint32_t)num_field(L, -1, "budget_ms");
    c->script_memory_mb = (uint32_t)num_field(L, -1, "memory_mb");
    c->io_timeout_ms = (uint32_t)num_field(L, -1, "io_timeout_ms");
    lua_getfield(L, -1, "http");
    c->http_pool_size = (uint32_t)num_field(L, -1, "pool_size");
    c->http_timeout_ms = (uint32_t)num_field(L, -1, "timeout_ms");
    c->http_max_in_flight = (uint32_t)num_field(L, -1, "max_in_flight");
    c->http_max_response_bytes = (uint32_t)num_field(L, -1, "max_response_bytes");
    lua_pop(L, 1);
    lua_getfield(L, -1, "files");
    n = lua_objlen(L, -1);
    c->scripts = calloc(n ? n : 1, sizeof *c->scripts);
    if (!c->scripts) return HD_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        const char *f = lua_tostring(L, -1);
        char *p;
        if (f[0] == '/' || !dir) {
            p = strdup(f);
        } else {
            p = malloc(strlen(dir) + strlen(f) + 2);
            if (p) sprintf(p, "%s/%s", dir, f);
        }
        lua_pop(L, 1);
        if (!p) return HD_ENOMEM;
        c->scripts[c->nscripts++] = p;
    }
    lua_pop(L, 2);

    lua_getfield(L, t, "plugins");
    n = lua_objlen(L, -1);
    c->plugins = calloc(n ? n : 1, sizeof *c->plugins);
    if (!c->plugins) return HD_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        struct hd_plugin_cfg *pc = &c->plugins[c->nplugins++];
        pc->name = dup_field(L, -1, "name");
        lua_getfield(L, -1, "options");
        hd_str js = HD_STR_INIT;
        const char *e = hd_luapi_to_json(L, -1, &js);
        lua_pop(L, 2);
        if (e) {
            hd_str_free(&js);
            return HD_ECONFIG;
        }
        pc->options_json = js.p ? js.p : strdup("{}");
        if (!pc->name || !pc->options_json) return HD_ENOMEM;
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "presence");
    c->presence_batch_ms = (uint64_t)num_field(L, -1, "batch_ms");
    lua_pop(L, 1);

    lua_getfield(L, t, "longpoll");
    c->lp_poll_ms = (uint64_t)num_field(L, -1, "poll_ms");
    c->lp_window_ms = (uint64_t)num_field(L, -1, "window_ms");
    c->lp_max_batch = (size_t)num_field(L, -1, "max_batch");
    lua_pop(L, 1);

    lua_getfield(L, t, "topics");
    n = lua_objlen(L, -1);
    c->topic_rules = calloc(n ? n : 1, sizeof *c->topic_rules);
    if (!c->topic_rules) return HD_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        hd_topic_rule *r = &c->topic_rules[c->ntopic_rules++];
        hd_topic_policy_default(&r->policy);
        r->match = dup_field(L, -1, "match");
        if (!r->match) return HD_ENOMEM;
        r->set = hd_config_read_policy(L, -1, &r->policy);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    lua_getfield(L, t, "drain");
    c->drain_timeout_ms = (uint64_t)num_field(L, -1, "timeout_ms");
    c->drain_announce_ms = (uint64_t)num_field(L, -1, "announce_ms");
    c->drain_http_idle_ms = (uint64_t)num_field(L, -1, "http_idle_ms");
    c->drain_flush_ms = (uint64_t)num_field(L, -1, "flush_ms");
    c->drain_http_ms = (uint64_t)num_field(L, -1, "http_ms");
    c->drain_disconnect_rate = (uint64_t)num_field(L, -1, "disconnect_rate");
    lua_getfield(L, -1, "disconnect_sockets");
    c->drain_disconnect_sockets = lua_toboolean(L, -1);
    lua_pop(L, 2);

    lua_getfield(L, t, "cluster");
    c->cluster_node_timeout_ms = (uint64_t)num_field(L, -1, "node_timeout_ms");
    c->cluster_heartbeat_ms = (uint64_t)num_field(L, -1, "heartbeat_ms");
    c->cluster_queue_max = (size_t)num_field(L, -1, "queue_max");
    c->cluster_node = dup_field(L, -1, "node");
    lua_getfield(L, -1, "required");
    c->cluster_required = lua_toboolean(L, -1);
    lua_getfield(L, -2, "redis"); /* a list of URLs, or false */
    if (lua_istable(L, -1) && str_list(L, &c->cluster_urls, &c->ncluster_urls)) return HD_ENOMEM;
    lua_pop(L, 3);

    lua_getfield(L, t, "log");
    char *lvl = dup_field(L, -1, "level");
    c->log_level = lvl ? hd_log_parse_level(lvl) : HD_LOG_INFO;
    free(lvl);
    char *fmt = dup_field(L, -1, "format");
    c->log_format = fmt ? hd_log_parse_format(fmt) : HD_LOG_TEXT;
    free(fmt);
    lua_pop(L, 1);
    return c->host ? 0 : HD_ENOMEM;
}

int hd_config_load(hd_config *c, const char *path, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    int rc = HD_ECONFIG;
    budget bud = {0, 0};
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "cannot create a Lua state");
        return HD_ENOMEM;
    }
    luaL_openlibs(L);
    hd_luapi_bound_rep(L);
    c->source = strdup(path ? path : "(embedded default)");

    /* The schema module. */
    const hd_embedded *schema_src = hd_embedded_find("herald.config");
    const hd_embedded *defaults = hd_embedded_find("herald.defaults");
    if (luaL_loadbuffer(L, schema_src->src, schema_src->len, "@lua/herald/config.lua") ||
        lua_pcall(L, 0, 1, 0)) {
        snprintf(err, errlen, "internal: %s", lua_tostring(L, -1));
        goto out;
    }
    int schema = lua_gettop(L);
    lua_getglobal(L, "os");
    lua_getfield(L, -1, "getenv");
    lua_setfield(L, schema, "getenv");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_redis_url);
    lua_setfield(L, schema, "redis_url");
    lua_pushcfunction(L, l_cidr);
    lua_setfield(L, schema, "cidr");
    lua_pushcfunction(L, l_plugin_source);
    lua_setfield(L, schema, "plugin_source");

    /* The operator's chunk, read as source text (bytecode is refused). */
    int lrc;
    if (path) {
        char *text = NULL;
        size_t len = 0;
        if (read_file(path, &text, &len, err, errlen)) goto out;
        if (len > 0 && text[0] == '\033') {
            snprintf(err, errlen, "%s: precompiled bytecode is not accepted", path);
            free(text);
            goto out;
        }
        char name[4096];
        snprintf(name, sizeof name, "@%s", path);
        lrc = luaL_loadbuffer(L, text, len, name);
        free(text);
    } else {
        lrc = luaL_loadbuffer(L, defaults->src, defaults->len, "=(embedded default)");
    }
    if (lrc) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        hd_luapi_hide_string_token(err, errlen);
        goto out;
    }
    /* JIT off for the chunk so that the instruction budget applies. */
    luaJIT_setmode(L, -1, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_OFF);
    int chunk = lua_gettop(L);
    lua_newtable(L); /* env: the globals the file sets land here */
    int env = lua_gettop(L);
    lua_newtable(L); /* its metatable reads through to the allow-list */
    push_sandbox_lib(L, &bud.exceeded);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, env);
    lua_pushvalue(L, env);
    lua_setfenv(L, chunk);
    lua_pushvalue(L, chunk);
    lua_pushlightuserdata(L, (void *)&budget_key);
    lua_pushlightuserdata(L, &bud);
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
    if (lua_pcall(L, 0, 1, 0)) {
        lua_sethook(L, NULL, 0, 0);
        if (bud.exceeded == OUT_OF_INSNS)
            snprintf(err, errlen, "%s: did not finish within %d Lua instructions (a loop that never ends?)",
                     c->source, CONFIG_INSN_LIMIT);
        else if (bud.exceeded == OUT_OF_MEMORY)
            snprintf(err, errlen, "%s: uses over %d MiB of Lua memory", c->source, CONFIG_MEMORY_KB >> 10);
        else snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto out;
    }
    lua_sethook(L, NULL, 0, 0);
    /* A config sets globals; a hook script or a plugin returns its hooks. */
    if (!lua_isnil(L, -1)) {
        snprintf(err, errlen,
                 "%s: returns a %s, as a hook script or a plugin does; a config sets settings "
                 "(listen = { ... }) and names its scripts in scripts = { ... }",
                 c->source, luaL_typename(L, -1));
        goto out;
    }
    lua_pop(L, 1);

    /* settings table = raw contents of env (globals the file set). */
    lua_getfield(L, schema, "normalize");
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, env)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    lua_pushstring(L, c->source);
    if (lua_pcall(L, 2, 2, 0)) {
        snprintf(err, errlen, "%s: %s", c->source, lua_tostring(L, -1));
        goto out;
    }
    if (lua_isnil(L, -2)) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto out;
    }
    lua_pop(L, 1);
    char *dir = NULL;
    if (path) {
        dir = strdup(path);
        char *slash = dir ? strrchr(dir, '/') : NULL;
        if (slash) *slash = 0;
        else if (dir) strcpy(dir, ".");
    }
    rc = read_normalized(L, c, dir);
    free(dir);
    if (rc == HD_ECONFIG)
        snprintf(err, errlen, "%s: plugins: options must be JSON-like tables", c->source);
    else if (rc)
        snprintf(err, errlen, "%s: out of memory", c->source);
out:
    lua_close(L);
    if (rc) hd_config_free(c);
    return rc;
}

void hd_config_free(hd_config *c)
{
    free(c->source);
    free(c->host);
    free(c->api_token);
    free(c->trusted);
    free(c->admin_host);
    for (size_t i = 0; i < c->nallowed_origins; i++) free(c->allowed_origins[i]);
    free(c->allowed_origins);
    c->allowed_origins = NULL;
    c->nallowed_origins = 0;
    free(c->cluster_node);
    for (size_t i = 0; i < c->nmounts; i++) free(c->ws_paths[i]);
    free(c->ws_paths);
    for (size_t i = 0; i < c->nlp_paths; i++) free(c->lp_paths[i]);
    free(c->lp_paths);
    for (size_t i = 0; i < c->nscripts; i++) free(c->scripts[i]);
    free(c->scripts);
    for (size_t i = 0; i < c->nplugins; i++) {
        free(c->plugins[i].name);
        free(c->plugins[i].options_json);
    }
    free(c->plugins);
    for (size_t i = 0; i < c->ntopic_rules; i++) free(c->topic_rules[i].match);
    free(c->topic_rules);
    for (size_t i = 0; i < c->ncluster_urls; i++) free(c->cluster_urls[i]);
    free(c->cluster_urls);
    memset(c, 0, sizeof *c);
}

void hd_topic_policy_default(hd_topic_policy *p)
{
    memset(p, 0, sizeof *p);
    p->tracked = 1;
    p->rule = -1;
    p->history_ttl_ms = 300000;
    p->recover_max = 300;
}
