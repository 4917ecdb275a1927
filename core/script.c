#include "script.h"
#include "embed.h"
#include "err.h"
#include "log.h"
#include "luapi.h"
#include "util.h"

#include <errno.h>
#include <lauxlib.h>
#include <luajit.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <uv.h>

/* The count hook runs every HOOK_EVERY VM instructions; a call may run
 * INSNS_PER_MS * budget_ms instructions and budget_ms of wall-clock time. */
#define HOOK_EVERY 1000
#define INSNS_PER_MS 2000000ULL

/* Registry keys: addresses of statics. */
static const char script_key = 0;  /* light userdata: the hd_script */
static const char herald_key = 0;  /* the herald API table */
static const char sandbox_key = 0; /* the allow-listed globals */

typedef struct hd_timer {
    uv_timer_t t;
    struct hd_timer *next;
    struct hd_script *s; /* NULL once cancelled: the close callback frees */
    int id;
    int fnref;
} hd_timer;

struct hd_script {
    lua_State *L;
    hd_scripts *sc;
    uint64_t gen;
    int fns[HD_HOOK_COUNT];  /* registry ref: list of hook functions, or LUA_NOREF */
    int srcs[HD_HOOK_COUNT]; /* registry ref: list of their file names */
    int nfns[HD_HOOK_COUNT];
    hd_timer *timers;
    int next_timer_id;
    /* the call in progress */
    int depth;
    int cur;                 /* hd_hook, RUN_TIMER or RUN_LOAD */
    uint64_t deadline_ns;
    uint64_t insns;
    uint64_t max_insns;
    int exceeded;
    char failure[512];       /* the error of the last call that failed */
};

/* What guarded() runs besides hooks: a timer callback, or a chunk loading. */
#define RUN_TIMER HD_HOOK_COUNT
#define RUN_LOAD (HD_HOOK_COUNT + 1)

static const char *const hook_names[HD_HOOK_COUNT] = {
    "authenticate", "join", "api_auth", "topic", "publish", "message", "shutdown", "init",
};

const char *hd_hook_name(hd_hook h) { return h < HD_HOOK_COUNT ? hook_names[h] : "timer"; }

/* "join hook", "timer callback", "loading". */
static const char *run_name(int run, char *buf, size_t len)
{
    if (run == RUN_LOAD) return "loading";
    if (run == RUN_TIMER) return "timer callback";
    snprintf(buf, len, "%s hook", hook_names[run]);
    return buf;
}

static hd_script *script_of(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&script_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    hd_script *s = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return s;
}

/* ---- budget ------------------------------------------------------------------ */

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    hd_script *s = script_of(L);
    if (!s || !s->depth) return;
    s->insns += HOOK_EVERY;
    char name[32];
    if (s->exceeded || s->insns > s->max_insns || uv_hrtime() > s->deadline_ns) {
        s->exceeded = 1;
        luaL_where(L, 0);
        lua_pushfstring(L, "%s exceeded its budget of %d ms", run_name(s->cur, name, sizeof name),
                        (int)s->sc->cfg->hook_budget_ms);
        lua_concat(L, 2);
        lua_error(L);
    }
    /* The heap cap: garbage first, then the call fails (and cannot catch it). */
    int cap_kb = (int)s->sc->cfg->script_memory_mb * 1024;
    if (cap_kb > 0 && lua_gc(L, LUA_GCCOUNT, 0) > cap_kb) {
        lua_gc(L, LUA_GCCOLLECT, 0);
        if (lua_gc(L, LUA_GCCOUNT, 0) > cap_kb) {
            s->exceeded = 1;
            luaL_where(L, 0);
            lua_pushfstring(L, "%s: the scripts' Lua memory is over %d MiB (scripts.memory_mb)",
                            run_name(s->cur, name, sizeof name), (int)s->sc->cfg->script_memory_mb);
            lua_concat(L, 2);
            lua_error(L);
        }
    }
}

/* [-(nargs+1), +nres | +0] Calls the function below the nargs arguments
 * under the budget. On success leaves nres results (LUA_MULTRET: all) and
 * returns 0; on failure logs with file:line, counts, pops everything and
 * returns -1. */
static int guarded(hd_script *s, int hook, const char *src, int nargs, int nres)
{
    lua_State *L = s->L;
    int outer = s->depth == 0;
    int saved = s->cur;
    if (outer) {
        uint64_t ms = s->sc->cfg->hook_budget_ms;
        s->deadline_ns = uv_hrtime() + ms * 1000000ULL;
        s->insns = 0;
        s->max_insns = ms * INSNS_PER_MS;
        s->exceeded = 0;
    }
    s->cur = hook;
    s->depth++;
    int rc = lua_pcall(L, nargs, nres, 0);
    s->depth--;
    s->cur = saved;
    if (rc == 0) {
        if (hook < HD_HOOK_COUNT) s->sc->ss.calls[hook]++;
        if (outer) s->exceeded = 0;
        return 0;
    }
    const char *msg = lua_tostring(L, -1);
    snprintf(s->failure, sizeof s->failure, "%s", msg ? msg : "(error object is not a string)");
    if (s->exceeded) {
        s->sc->ss.budget_exceeded++;
        lua_gc(L, LUA_GCCOLLECT, 0); /* a runaway's garbage goes now */
    }
    if (hook < HD_HOOK_COUNT) s->sc->ss.errors[hook]++;
    else if (hook == RUN_TIMER) s->sc->ss.timer_errors++;
    char name[32];
    hd_error("%s (%s) failed: %s", run_name(hook, name, sizeof name), src ? src : "?", s->failure);
    lua_pop(L, 1);
    if (outer) s->exceeded = 0;
    return -1;
}

/* ---- the server-bound API ------------------------------------------------------ */

static hd_script *api_script(lua_State *L, const char *fn, int allowed_in_topic)
{
    hd_script *s = script_of(L);
    if (!s) luaL_error(L, "herald.%s is not available here", fn);
    if (!allowed_in_topic && s->depth && s->cur == HD_HOOK_TOPIC)
        luaL_error(L, "herald.%s is not available in hook topic", fn);
    return s;
}

static int l_publish(lua_State *L)
{
    hd_script *s = api_script(L, "publish", 0);
    size_t tl, el;
    const char *topic = luaL_checklstring(L, 1, &tl);
    const char *event = luaL_checklstring(L, 2, &el);
    luaL_checkany(L, 3);
    hd_str data = HD_STR_INIT;
    const char *e = hd_luapi_to_json(L, 3, &data);
    if (e) {
        hd_str_free(&data);
        return luaL_argerror(L, 3, e);
    }
    /* Publishes from Lua skip the publish hooks: no recursion. */
    size_t n = hd_publish(s->sc->eng, topic, tl, event, el, data.p, data.len);
    hd_str_free(&data);
    lua_pushnumber(L, (lua_Number)n);
    return 1;
}

static int l_subscribers(lua_State *L)
{
    hd_script *s = api_script(L, "subscribers", 1);
    size_t tl;
    const char *topic = luaL_checklstring(L, 1, &tl);
    hd_topic *tp = hd_topics_find(&s->sc->eng->topics, topic, tl);
    lua_pushnumber(L, tp ? tp->nsubs : 0);
    return 1;
}

static int valid_close_code(lua_Number c)
{
    int v = (int)c;
    if (v != c) return 0;
    return (v >= 1000 && v <= 1014 && v != 1004 && v != 1005 && v != 1006) ||
           (v >= 3000 && v <= 4999);
}

static int l_disconnect(lua_State *L)
{
    hd_script *s = api_script(L, "disconnect", 0);
    const char *id = luaL_checkstring(L, 1);
    lua_Number code = luaL_optnumber(L, 2, 1001);
    if (!valid_close_code(code)) return luaL_argerror(L, 2, "not a valid close code");
    int n = 0;
    for (hd_conn *c = hd_net_find_ident(s->sc->net, id, NULL); c;
         c = hd_net_find_ident(s->sc->net, id, c)) {
        if (!hd_conn_open(c)) continue;
        hd_conn_shut(c, (uint16_t)code, "disconnected");
        n++;
    }
    lua_pushnumber(L, n);
    return 1;
}

static void on_timer_closed(uv_handle_t *h) { free(h->data); }

static void timer_cancel(hd_script *s, hd_timer *t)
{
    for (hd_timer **pp = &s->timers; *pp; pp = &(*pp)->next) {
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    }
    luaL_unref(s->L, LUA_REGISTRYINDEX, t->fnref);
    t->s = NULL;
    uv_close((uv_handle_t *)&t->t, on_timer_closed);
}

static void on_timer(uv_timer_t *h)
{
    hd_timer *t = h->data;
    hd_script *s = t->s;
    if (!s) return;
    int id = t->id, repeating = uv_timer_get_repeat(h) > 0;
    lua_rawgeti(s->L, LUA_REGISTRYINDEX, t->fnref);
    if (guarded(s, RUN_TIMER, "timer", 0, 0) != 0) {
        /* A failing repeating timer would fail forever: stop it. */
        repeating = 0;
    }
    /* The callback may have cancelled its own timer: look it up again. */
    for (hd_timer *x = s->timers; x; x = x->next)
        if (x->id == id) {
            if (!repeating) timer_cancel(s, x);
            break;
        }
}

static int l_timer_start(lua_State *L)
{
    hd_script *s = api_script(L, "after", 1);
    lua_Number ms = luaL_checknumber(L, 1);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    int repeat = lua_toboolean(L, 3);
    if (ms < 0 || ms > 86400000.0 * 365) return luaL_argerror(L, 1, "delay out of range");
    if (repeat && ms < 1) return luaL_argerror(L, 1, "an interval must be at least 1 ms");
    hd_timer *t = calloc(1, sizeof *t);
    if (!t) return luaL_error(L, "out of memory");
    lua_pushvalue(L, 2);
    t->fnref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->s = s;
    t->id = ++s->next_timer_id;
    uv_timer_init(s->sc->loop, &t->t);
    t->t.data = t;
    uint64_t v = (uint64_t)ms;
    uv_timer_start(&t->t, on_timer, v, repeat ? v : 0);
    t->next = s->timers;
    s->timers = t;
    lua_pushnumber(L, t->id);
    return 1;
}

static int l_timer_cancel(lua_State *L)
{
    hd_script *s = api_script(L, "cancel", 1);
    int id = (int)luaL_checknumber(L, 1);
    for (hd_timer *t = s->timers; t; t = t->next) {
        if (t->id == id) {
            timer_cancel(s, t);
            lua_pushboolean(L, 1);
            return 1;
        }
    }
    lua_pushboolean(L, 0);
    return 1;
}

static int l_log(lua_State *L)
{
    const char *level = luaL_checkstring(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    int lv = hd_log_parse_level(level);
    if (lv < 0) return luaL_argerror(L, 1, "level must be debug, info, warn or error");
    lua_Debug ar;
    char where[128] = "";
    /* Level 2: the script function that called herald.log (level 1 is the
     * Lua wrapper in lua/herald/init.lua). */
    if (lua_getstack(L, 2, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(where, sizeof where, "%s:%d: ", ar.short_src, ar.currentline);
    hd_log((hd_log_level)lv, "[lua] %s%s", where, msg);
    return 0;
}

static int l_node_id(lua_State *L)
{
    hd_script *s = api_script(L, "node_id", 1);
    lua_pushstring(L, s->sc->node_id);
    return 1;
}

static int l_socket_open(lua_State *L)
{
    hd_script *s = api_script(L, "socket", 1);
    uint64_t id = (uint64_t)luaL_checknumber(L, 1);
    hd_conn *c = hd_net_find(s->sc->net, id);
    lua_pushboolean(L, c && hd_conn_open(c));
    return 1;
}

static int l_presence(lua_State *L)
{
    hd_script *s = api_script(L, "presence", 1);
    size_t tl;
    const char *topic = luaL_checklstring(L, 1, &tl);
    hd_str out = HD_STR_INIT;
    hd_presence_state(&s->sc->eng->pres, hd_topics_find(&s->sc->eng->topics, topic, tl), &out);
    if (out.oom) {
        hd_str_free(&out);
        return luaL_error(L, "out of memory");
    }
    hd_luapi_push_json_text(L, out.p, out.len);
    hd_str_free(&out);
    return 1;
}

static int l_presence_update(lua_State *L)
{
    hd_script *s = api_script(L, "presence_update", 0);
    uint64_t id = (uint64_t)luaL_checknumber(L, 1);
    size_t tl;
    const char *topic = luaL_checklstring(L, 2, &tl);
    luaL_checktype(L, 3, LUA_TTABLE);
    hd_conn *c = hd_net_find(s->sc->net, id);
    if (!c || !hd_conn_open(c) || c->kind != HD_CONN_WS)
        return luaL_error(L, "attempt to use a closed socket");
    hd_sub *sub = hd_topics_sub_of(c, topic, tl);
    if (!sub) {
        lua_pushnil(L);
        lua_pushstring(L, "the socket has not joined that topic");
        return 2;
    }
    hd_str meta = HD_STR_INIT;
    const char *e = hd_luapi_to_json(L, 3, &meta);
    if (e) {
        hd_str_free(&meta);
        return luaL_argerror(L, 3, e);
    }
    int rc = hd_presence_update(&s->sc->eng->pres, sub, meta.p);
    hd_str_free(&meta);
    if (rc) {
        lua_pushnil(L);
        lua_pushstring(L, rc == HD_ELIMIT ? "the topic is not tracked" : hd_strerror(rc));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* [-0, +1] The C table lua/herald/init.lua builds the herald API from. */
static void push_c_api(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"publish", l_publish},         {"subscribers", l_subscribers},
        {"disconnect", l_disconnect},   {"timer_start", l_timer_start},
        {"timer_cancel", l_timer_cancel}, {"log", l_log},
        {"node_id", l_node_id},         {"socket_open", l_socket_open},
        {"presence", l_presence},       {"presence_update", l_presence_update},
        {NULL, NULL},
    };
    hd_luapi_push_pure(L);
    luaL_register(L, NULL, fns);
}

void hd_scripts_init(hd_scripts *sc, uv_loop_t *loop, const hd_config *cfg, hd_engine *eng,
                     hd_net *net, const char *node_id)
{
    memset(sc, 0, sizeof *sc);
    sc->loop = loop;
    sc->cfg = cfg;
    sc->eng = eng;
    sc->net = net;
    sc->node_id = node_id;
}

/* ---- building a generation ---------------------------------------------------- */

/* [-0, +1] A new environment for one chunk: globals it sets stay in it,
 * reads fall through to the allow-list. */
static void push_env(lua_State *L)
{
    lua_newtable(L);
    lua_newtable(L);
    lua_pushlightuserdata(L, (void *)&sandbox_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
}

/* [-0, +0] Builds the allow-listed globals (registry[sandbox_key]). */
static void build_sandbox(hd_script *s)
{
    lua_State *L = s->L;
    lua_pushlightuserdata(L, (void *)&sandbox_key);
    lua_newtable(L);
    static const char *const base[] = {"assert", "error", "ipairs", "next", "pairs",
                                       "select", "tonumber", "tostring", "type", "unpack",
                                       "setmetatable", "getmetatable", "rawequal", "rawget",
                                       "rawset", "string", "table", "math", "bit", NULL};
    hd_luapi_fill_sandbox(L, base, &s->exceeded);
    lua_newtable(L);
    lua_getglobal(L, "os");
    static const char *const os_fns[] = {"time", "clock", "date", "getenv", NULL};
    for (int i = 0; os_fns[i]; i++) {
        lua_getfield(L, -1, os_fns[i]);
        lua_setfield(L, -3, os_fns[i]);
    }
    lua_pop(L, 1);
    lua_setfield(L, -2, "os");
    lua_pushlightuserdata(L, (void *)&herald_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    lua_setfield(L, -2, "herald");
    lua_rawset(L, LUA_REGISTRYINDEX);
}

static int hook_index(const char *name)
{
    for (int h = 0; h < HD_HOOK_COUNT; h++)
        if (strcmp(name, hook_names[h]) == 0) return h;
    return -1;
}

/* [-1, +0] Registers the hook table at the top, from src. */
static int register_hooks(hd_script *s, const char *src, char *err, size_t errlen)
{
    lua_State *L = s->L;
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "%s: must return a table of hook functions (got %s)", src,
                 luaL_typename(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        int h = k ? hook_index(k) : -1;
        if (h < 0 || !lua_isfunction(L, -1)) {
            snprintf(err, errlen,
                     "%s: returned %s '%s': the table may hold only the hook functions "
                     "authenticate, join, api_auth, topic, publish, message, shutdown, init",
                     src, h < 0 ? "an unknown key" : "a non-function for", k ? k : "?");
            lua_pop(L, 3);
            return -1;
        }
        lua_rawgeti(L, LUA_REGISTRYINDEX, s->fns[h]);
        lua_pushvalue(L, -2);
        lua_rawseti(L, -2, ++s->nfns[h]);
        lua_pop(L, 1);
        lua_rawgeti(L, LUA_REGISTRYINDEX, s->srcs[h]);
        lua_pushstring(L, src);
        lua_rawseti(L, -2, s->nfns[h]);
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    return 0;
}

static int read_file(const char *path, hd_str *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) hd_str_add(out, chunk, n);
    int bad = ferror(f) || out->oom;
    fclose(f);
    if (bad) snprintf(err, errlen, "%s: cannot read", path);
    return bad ? -1 : 0;
}

/* Loads one chunk (operator script or plugin) and registers its hooks. */
static int load_chunk(hd_script *s, const char *src, const char *text, size_t len,
                      const char *chunkname, int jit_off, const char *plugin_opts, char *err,
                      size_t errlen)
{
    lua_State *L = s->L;
    if (len > 0 && text[0] == '\033') {
        snprintf(err, errlen, "%s: precompiled bytecode is not accepted", src);
        return -1;
    }
    if (luaL_loadbuffer(L, text, len, chunkname)) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    if (jit_off) luaJIT_setmode(L, -1, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_OFF);
    push_env(L);
    lua_setfenv(L, -2);
    if (guarded(s, RUN_LOAD, src, 0, 1) != 0) {
        snprintf(err, errlen, "%s", s->failure);
        return -1;
    }
    if (plugin_opts) {
        /* A plugin returns a factory: factory(options) -> hooks table. */
        if (!lua_isfunction(L, -1)) {
            snprintf(err, errlen, "%s: a plugin must return a function(options)", src);
            lua_pop(L, 1);
            return -1;
        }
        hd_luapi_push_json_text(L, plugin_opts, strlen(plugin_opts));
        if (guarded(s, RUN_LOAD, src, 1, 1) != 0) {
            snprintf(err, errlen, "%s: options rejected: %s", src, s->failure);
            return -1;
        }
    }
    return register_hooks(s, src, err, errlen);
}

static void script_free(hd_script *s)
{
    if (!s) return;
    while (s->timers) timer_cancel(s, s->timers);
    if (s->L) lua_close(s->L);
    free(s);
}

static hd_script *build(hd_scripts *sc, char *err, size_t errlen)
{
    const hd_config *cfg = sc->cfg;
    hd_script *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->sc = sc;
    s->cur = RUN_LOAD;
    s->L = luaL_newstate();
    if (!s->L) {
        free(s);
        snprintf(err, errlen, "cannot create a Lua state");
        return NULL;
    }
    lua_State *L = s->L;
    luaL_openlibs(L);
    hd_luapi_bound_rep(L);
    lua_pushlightuserdata(L, (void *)&script_key);
    lua_pushlightuserdata(L, s);
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_EVERY);
    for (int h = 0; h < HD_HOOK_COUNT; h++) {
        lua_newtable(L);
        s->fns[h] = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_newtable(L);
        s->srcs[h] = luaL_ref(L, LUA_REGISTRYINDEX);
    }

    /* The herald API: lua/herald/init.lua over the C table. */
    const hd_embedded *init = hd_embedded_find("herald.init");
    if (!init || luaL_loadbuffer(L, init->src, init->len, "@lua/herald/init.lua")) {
        snprintf(err, errlen, "internal: cannot load lua/herald/init.lua: %s",
                 init ? lua_tostring(L, -1) : "missing");
        goto fail;
    }
    push_c_api(L);
    if (guarded(s, RUN_LOAD, "lua/herald/init.lua", 1, 1) != 0) {
        snprintf(err, errlen, "internal: lua/herald/init.lua failed: %s", s->failure);
        goto fail;
    }
    lua_pushlightuserdata(L, (void *)&herald_key);
    lua_insert(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    build_sandbox(s);

    for (size_t i = 0; i < cfg->nplugins; i++) {
        char mod[128], src[160];
        snprintf(mod, sizeof mod, "plugins.%s", cfg->plugins[i].name);
        snprintf(src, sizeof src, "plugins/%s.lua", cfg->plugins[i].name);
        const hd_embedded *p = hd_embedded_find(mod);
        if (!p) {
            snprintf(err, errlen, "%s: plugins: unknown plugin '%s'", cfg->source,
                     cfg->plugins[i].name);
            goto fail;
        }
        char chunk[180];
        snprintf(chunk, sizeof chunk, "@%s", src);
        if (load_chunk(s, src, p->src, p->len, chunk, 0, cfg->plugins[i].options_json, err,
                       errlen))
            goto fail;
    }
    for (size_t i = 0; i < cfg->nscripts; i++) {
        const char *path = cfg->scripts[i];
        hd_str text = HD_STR_INIT;
        if (read_file(path, &text, err, errlen)) {
            hd_str_free(&text);
            goto fail;
        }
        char chunk[4096];
        snprintf(chunk, sizeof chunk, "@%s", path);
        int rc = load_chunk(s, path, text.p ? text.p : "", text.len, chunk, 1, NULL, err, errlen);
        hd_str_free(&text);
        if (rc) goto fail;
    }
    /* init() hooks: a script may refuse to start (its own checks). */
    for (int i = 1; i <= s->nfns[HD_HOOK_INIT]; i++) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, s->fns[HD_HOOK_INIT]);
        lua_rawgeti(L, -1, i);
        lua_remove(L, -2);
        lua_rawgeti(L, LUA_REGISTRYINDEX, s->srcs[HD_HOOK_INIT]);
        lua_rawgeti(L, -1, i);
        const char *src = lua_tostring(L, -1);
        char srcbuf[512];
        snprintf(srcbuf, sizeof srcbuf, "%s", src ? src : "?");
        lua_pop(L, 2);
        if (guarded(s, HD_HOOK_INIT, srcbuf, 0, 2) != 0) {
            snprintf(err, errlen, "%s: init() failed: %s", srcbuf, s->failure);
            goto fail;
        }
        if (lua_isboolean(L, -2) && !lua_toboolean(L, -2)) {
            snprintf(err, errlen, "%s: init() refused: %s", srcbuf,
                     lua_isstring(L, -1) ? lua_tostring(L, -1) : "no reason given");
            lua_pop(L, 2);
            goto fail;
        }
        lua_pop(L, 2);
    }
    lua_settop(L, 0);
    return s;
fail:
    script_free(s);
    return NULL;
}

/* ---- lifecycle --------------------------------------------------------------- */

static void swap_in(hd_scripts *sc, hd_script *s)
{
    hd_script *old = sc->cur;
    sc->cur = s;
    s->gen = ++sc->ss.generation;
    if (sc->eng) hd_policy_invalidate(&sc->eng->pol); /* cached topic policies are stale */
    script_free(old);
}

int hd_script_start(hd_scripts *sc, char *err, size_t errlen)
{
    hd_script *s = build(sc, err, errlen);
    if (!s) return HD_ECONFIG;
    swap_in(sc, s);
    if (sc->cfg->nscripts || sc->cfg->nplugins)
        hd_info("scripts loaded: %zu script(s), %zu plugin(s)", sc->cfg->nscripts,
                sc->cfg->nplugins);
    return 0;
}

int hd_script_reload(hd_scripts *sc, char *err, size_t errlen)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    sc->ss.last_reload_at = (double)tv.tv_sec + tv.tv_usec / 1e6;
    hd_script *s = build(sc, err, errlen);
    if (!s) {
        sc->ss.reloads_failed++;
        snprintf(sc->ss.last_error, sizeof sc->ss.last_error, "%s", err);
        hd_error("reload failed, the previous scripts stay in force: %s", err);
        return HD_ECONFIG;
    }
    swap_in(sc, s);
    sc->ss.reloads_ok++;
    sc->ss.last_error[0] = 0;
    hd_info("scripts reloaded (generation %llu)", (unsigned long long)sc->ss.generation);
    return 0;
}

void hd_script_stop(hd_scripts *sc)
{
    script_free(sc->cur);
    sc->cur = NULL;
}

int hd_script_has(hd_scripts *sc, hd_hook h)
{
    return sc->cur && sc->cur->nfns[h] > 0;
}

/* ---- hook calls ----------------------------------------------------------------- */

/* Pushes hook function i (1-based) of h and sets *src to its file. */
static void push_hook(hd_script *s, hd_hook h, int i, char *src, size_t srclen)
{
    lua_State *L = s->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->srcs[h]);
    lua_rawgeti(L, -1, i);
    snprintf(src, srclen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    lua_pop(L, 2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->fns[h]);
    lua_rawgeti(L, -1, i);
    lua_remove(L, -2);
}

/* [-0, +1] {k = v} of the request's headers (names lower-cased). */
static void push_headers(lua_State *L, const hd_hook_req *r)
{
    lua_createtable(L, 0, (int)r->nh);
    for (uint32_t i = 0; i < r->nh; i++) {
        const hd_hdr *h = &r->h[i];
        char name[128];
        size_t n = h->name_len < sizeof name - 1 ? h->name_len : sizeof name - 1;
        for (size_t j = 0; j < n; j++) {
            char ch = r->hbuf[h->name_off + j];
            name[j] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
        }
        lua_pushlstring(L, name, n);
        lua_pushlstring(L, r->hbuf + h->val_off, h->val_len);
        lua_rawset(L, -3);
    }
}

/* [-0, +1] {k = v} of the query string, URL-decoded. */
static void push_params(lua_State *L, const hd_hook_req *r)
{
    lua_newtable(L);
    const char *q = r->query, *end = r->query ? r->query + r->query_len : NULL;
    hd_query_pair p;
    while (hd_query_next(&q, end, &p)) {
        if (!p.kl) continue;
        /* The scratch buffer is a userdata: the collector owns it, so a
         * memory error raised by a push below cannot leak it. */
        char *buf = lua_newuserdata(L, p.kl + p.vl);
        memcpy(buf, p.k, p.kl);
        size_t kl = hd_url_decode(buf, p.kl);
        char *v = buf + p.kl;
        memcpy(v, p.v, p.vl);
        size_t vl = hd_url_decode(v, p.vl);
        lua_pushlstring(L, buf, kl);
        lua_pushlstring(L, v, vl);
        lua_rawset(L, -4);
        lua_pop(L, 1);
    }
}

/* [-0, +1] The socket table hooks see: {id, conn_id, assigns}. */
static void push_socket(lua_State *L, hd_conn *c)
{
    lua_createtable(L, 0, 4);
    const char *id = hd_conn_identity(c);
    if (id) lua_pushstring(L, id);
    else lua_pushfstring(L, "%d", (int)c->id);
    lua_setfield(L, -2, "id");
    lua_pushnumber(L, (lua_Number)c->id);
    lua_setfield(L, -2, "conn_id");
    const char *assigns = c->assigns;
    if (assigns) hd_luapi_push_json_text(L, assigns, strlen(assigns));
    else lua_newtable(L);
    lua_setfield(L, -2, "assigns");
    char peer[64];
    hd_conn_peer(c, peer, sizeof peer);
    lua_pushstring(L, peer);
    lua_setfield(L, -2, "remote_addr");
}

static void copy_reason(lua_State *L, int idx, char *reason, size_t rlen, const char *dflt)
{
    const char *r = lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : dflt;
    snprintf(reason, rlen, "%s", r);
}

int hd_script_authenticate(hd_scripts *sc, hd_conn *c, const hd_hook_req *r, const char *token,
                           char **id, char **assigns_json, char *reason, size_t rlen)
{
    *id = *assigns_json = NULL;
    hd_script *s = sc->cur;
    if (!s || !s->nfns[HD_HOOK_AUTHENTICATE]) return 1;
    lua_State *L = s->L;
    int base = lua_gettop(L);
    lua_createtable(L, 0, 6);
    push_params(L, r);
    lua_setfield(L, -2, "params");
    push_headers(L, r);
    lua_setfield(L, -2, "headers");
    if (token) {
        lua_pushstring(L, token);
        lua_setfield(L, -2, "token");
    }
    char peer[64];
    hd_conn_peer(c, peer, sizeof peer);
    lua_pushstring(L, peer);
    lua_setfield(L, -2, "remote_addr");
    lua_pushlstring(L, r->path, r->path_len);
    lua_setfield(L, -2, "path");
    int req = lua_gettop(L);
    lua_newtable(L); /* merged assigns */
    int assigns = lua_gettop(L);
    int ok = 1;
    for (int i = 1; i <= s->nfns[HD_HOOK_AUTHENTICATE] && ok; i++) {
        char src[512];
        push_hook(s, HD_HOOK_AUTHENTICATE, i, src, sizeof src);
        lua_pushvalue(L, req);
        int top = lua_gettop(L) - 2;
        if (guarded(s, HD_HOOK_AUTHENTICATE, src, 1, LUA_MULTRET) != 0) {
            snprintf(reason, rlen, "unauthorized");
            ok = 0;
            break;
        }
        int nres = lua_gettop(L) - top;
        if (nres == 0) continue; /* no opinion */
        int v = top + 1;
        if (lua_istable(L, v)) {
            lua_getfield(L, v, "id");
            if (!*id && (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER))
                *id = strdup(lua_tostring(L, -1));
            lua_pop(L, 1);
            lua_getfield(L, v, "assigns");
            if (lua_istable(L, -1)) {
                lua_pushnil(L);
                while (lua_next(L, -2)) {
                    lua_pushvalue(L, -2);
                    lua_insert(L, -2);
                    lua_rawset(L, assigns);
                }
            }
            lua_pop(L, 1);
        } else if (!lua_toboolean(L, v)) {
            copy_reason(L, v + 1, reason, rlen, "unauthorized");
            ok = 0;
        }
        lua_settop(L, top);
    }
    if (ok) {
        hd_str js = HD_STR_INIT;
        const char *e = hd_luapi_to_json(L, assigns, &js);
        if (e) {
            hd_error("authenticate: assigns cannot be kept: %s", e);
            sc->ss.errors[HD_HOOK_AUTHENTICATE]++;
            snprintf(reason, rlen, "unauthorized");
            ok = 0;
            hd_str_free(&js);
        } else {
            *assigns_json = js.p;
        }
    }
    if (!ok) {
        free(*id);
        *id = NULL;
    }
    lua_settop(L, base);
    return ok;
}

/* Encodes the table field key of the table at idx as a JSON object into
 * out (replacing it). Returns 0, or -1 after logging. */
static int field_object(lua_State *L, int idx, const char *key, hd_str *out, const char *what,
                        const char *src)
{
    lua_getfield(L, idx, key);
    int rc = 0;
    if (!lua_isnil(L, -1)) {
        hd_str js = HD_STR_INIT;
        const char *e = hd_luapi_to_json(L, -1, &js);
        if (e || js.len == 0 || js.p[0] != '{') {
            hd_error("%s hook (%s): %s must be a JSON object: %s", what, src, key,
                     e ? e : "not an object");
            rc = -1;
        } else {
            hd_str_reset(out);
            hd_str_add(out, js.p, js.len);
            rc = 1;
        }
        hd_str_free(&js);
    }
    lua_pop(L, 1);
    return rc;
}

int hd_script_join(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen, json_t *payload,
                   hd_str *reply_json, hd_str *meta_json, char *reason, size_t rlen)
{
    hd_script *s = sc->cur;
    if (!s || !s->nfns[HD_HOOK_JOIN]) {
        hd_str_adds(reply_json, "{}");
        return 1;
    }
    lua_State *L = s->L;
    int base = lua_gettop(L);
    push_socket(L, c);
    int sock = lua_gettop(L);
    lua_pushlstring(L, topic, tlen);
    int tidx = lua_gettop(L);
    if (payload) hd_luapi_push_json(L, payload);
    else lua_newtable(L);
    int pidx = lua_gettop(L);
    int ok = 1, have_reply = 0;
    for (int i = 1; i <= s->nfns[HD_HOOK_JOIN] && ok; i++) {
        char src[512];
        push_hook(s, HD_HOOK_JOIN, i, src, sizeof src);
        lua_pushvalue(L, sock);
        lua_pushvalue(L, tidx);
        lua_pushvalue(L, pidx);
        int top = lua_gettop(L) - 4;
        if (guarded(s, HD_HOOK_JOIN, src, 3, LUA_MULTRET) != 0) {
            snprintf(reason, rlen, "join crashed");
            ok = 0;
            break;
        }
        if (!hd_conn_open(c)) { /* the hook disconnected this socket */
            snprintf(reason, rlen, "closed");
            ok = 0;
            break;
        }
        int nres = lua_gettop(L) - top;
        if (nres == 0) continue;
        int v = top + 1;
        if (!lua_toboolean(L, v)) {
            copy_reason(L, v + 1, reason, rlen, "unauthorized");
            ok = 0;
        } else if (nres >= 2 && lua_istable(L, v + 1)) {
            int r = field_object(L, v + 1, "reply", reply_json, "join", src);
            if (r > 0) have_reply = 1;
            int m = meta_json ? field_object(L, v + 1, "meta", meta_json, "join", src) : 0;
            if (r < 0 || m < 0) sc->ss.errors[HD_HOOK_JOIN]++;
        }
        lua_settop(L, top);
    }
    if (ok && !have_reply) hd_str_adds(reply_json, "{}");
    lua_settop(L, base);
    return ok;
}

int hd_script_api_auth(hd_scripts *sc, hd_conn *c, const hd_hook_req *r)
{
    hd_script *s = sc->cur;
    if (!s || !s->nfns[HD_HOOK_API_AUTH]) return -1;
    lua_State *L = s->L;
    int base = lua_gettop(L);
    lua_createtable(L, 0, 6);
    lua_pushstring(L, r->method);
    lua_setfield(L, -2, "method");
    lua_pushlstring(L, r->path, r->path_len);
    lua_setfield(L, -2, "path");
    push_params(L, r);
    lua_setfield(L, -2, "params");
    push_headers(L, r);
    lua_getfield(L, -1, "authorization");
    if (lua_isstring(L, -1)) {
        size_t l;
        const char *a = lua_tolstring(L, -1, &l);
        if (l > 7 && strncasecmp(a, "bearer ", 7) == 0) {
            lua_pushstring(L, a + 7);
            lua_setfield(L, -4, "token");
        }
    }
    lua_pop(L, 1);
    lua_setfield(L, -2, "headers");
    char peer[64];
    hd_conn_peer(c, peer, sizeof peer);
    lua_pushstring(L, peer);
    lua_setfield(L, -2, "remote_addr");
    int req = lua_gettop(L);
    int verdict = -1;
    for (int i = 1; i <= s->nfns[HD_HOOK_API_AUTH]; i++) {
        char src[512];
        push_hook(s, HD_HOOK_API_AUTH, i, src, sizeof src);
        lua_pushvalue(L, req);
        int top = lua_gettop(L) - 2;
        if (guarded(s, HD_HOOK_API_AUTH, src, 1, LUA_MULTRET) != 0) {
            verdict = 0;
            break;
        }
        int nres = lua_gettop(L) - top;
        if (nres == 0) continue;
        int allow = lua_toboolean(L, top + 1);
        lua_settop(L, top);
        if (!allow) {
            verdict = 0;
            break;
        }
        verdict = 1;
    }
    lua_settop(L, base);
    return verdict;
}

static int policy_uint(lua_State *L, const char *key, uint32_t *out, const char *src)
{
    lua_getfield(L, -1, key);
    int rc = 0;
    if (!lua_isnil(L, -1)) {
        lua_Number v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : -1;
        if (v < 0 || v > 4294967295.0 || v != (lua_Number)(uint32_t)v) {
            hd_error("topic hook (%s): %s must be a non-negative integer", src, key);
            rc = -1;
        } else {
            *out = (uint32_t)v;
        }
    }
    lua_pop(L, 1);
    return rc;
}

static int policy_bool(lua_State *L, const char *key, uint8_t *out, const char *src)
{
    lua_getfield(L, -1, key);
    int rc = 0;
    if (lua_isboolean(L, -1)) *out = (uint8_t)lua_toboolean(L, -1);
    else if (!lua_isnil(L, -1)) {
        hd_error("topic hook (%s): %s must be true or false", src, key);
        rc = -1;
    }
    lua_pop(L, 1);
    return rc;
}

static int policy_enum(lua_State *L, const char *key, uint8_t *out, const char *a,
                       const char *b, const char *src)
{
    lua_getfield(L, -1, key);
    int rc = 0;
    if (!lua_isnil(L, -1)) {
        const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
        if (strcmp(v, a) == 0) *out = 0;
        else if (strcmp(v, b) == 0) *out = 1;
        else {
            hd_error("topic hook (%s): %s must be \"%s\" or \"%s\"", src, key, a, b);
            rc = -1;
        }
    }
    lua_pop(L, 1);
    return rc;
}

void hd_script_resolve(void *ud, const char *topic, size_t tlen, hd_topic_policy *p)
{
    hd_script_topic(ud, topic, tlen, p);
}

void hd_script_topic(hd_scripts *sc, const char *topic, size_t tlen, hd_topic_policy *p)
{
    hd_script *s = sc->cur;
    if (!s || !s->nfns[HD_HOOK_TOPIC]) return;
    lua_State *L = s->L;
    int base = lua_gettop(L);
    for (int i = 1; i <= s->nfns[HD_HOOK_TOPIC]; i++) {
        char src[512];
        push_hook(s, HD_HOOK_TOPIC, i, src, sizeof src);
        lua_pushlstring(L, topic, tlen);
        if (guarded(s, HD_HOOK_TOPIC, src, 1, 1) != 0) continue;
        if (lua_istable(L, -1)) {
            hd_topic_policy q = *p; /* all fields or none: a bad field voids the result */
            int bad = policy_bool(L, "tracked", &q.tracked, src) |
                      policy_bool(L, "presence", &q.presence, src) |
                      policy_uint(L, "throttle_ms", &q.throttle_ms, src) |
                      policy_uint(L, "debounce_ms", &q.debounce_ms, src) |
                      policy_uint(L, "max_wait_ms", &q.max_wait_ms, src) |
                      policy_uint(L, "max_queue_bytes", &q.max_queue_bytes, src) |
                      policy_enum(L, "coalesce", &q.coalesce, "none", "latest", src) |
                      policy_enum(L, "on_overflow", &q.on_overflow, "close", "drop_oldest", src);
            if (bad) sc->ss.errors[HD_HOOK_TOPIC]++;
            else *p = q;
        } else if (!lua_isnil(L, -1)) {
            hd_error("topic hook (%s): must return a table or nil", src);
            sc->ss.errors[HD_HOOK_TOPIC]++;
        }
        lua_settop(L, base);
    }
}

int hd_script_publish(hd_scripts *sc, const char *topic, size_t tlen, char **event,
                      char **data_json)
{
    hd_script *s = sc->cur;
    if (!s || !s->nfns[HD_HOOK_PUBLISH]) return 1;
    lua_State *L = s->L;
    int base = lua_gettop(L);
    lua_createtable(L, 0, 3);
    lua_pushlstring(L, topic, tlen);
    lua_setfield(L, -2, "topic");
    lua_pushstring(L, *event);
    lua_setfield(L, -2, "event");
    hd_luapi_push_json_text(L, *data_json, strlen(*data_json));
    lua_setfield(L, -2, "data");
    int msg = lua_gettop(L);
    int deliver = 1;
    for (int i = 1; i <= s->nfns[HD_HOOK_PUBLISH]; i++) {
        char src[512];
        push_hook(s, HD_HOOK_PUBLISH, i, src, sizeof src);
        lua_pushvalue(L, msg);
        int top = lua_gettop(L) - 2;
        if (guarded(s, HD_HOOK_PUBLISH, src, 1, LUA_MULTRET) != 0) {
            /* Safe default: deliver the message as it came in. */
            lua_settop(L, base);
            return 1;
        }
        int nres = lua_gettop(L) - top;
        if (nres > 0 && lua_istable(L, top + 1)) {
            lua_replace(L, msg);
        } else if (nres > 0 && lua_isboolean(L, top + 1) && !lua_toboolean(L, top + 1)) {
            deliver = 0;
            lua_settop(L, top);
            break;
        }
        lua_settop(L, top);
    }
    if (deliver) {
        lua_getfield(L, msg, "event");
        const char *ev = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        lua_getfield(L, msg, "data");
        hd_str js = HD_STR_INIT;
        const char *e = hd_luapi_to_json(L, -1, &js);
        if (!ev || e) {
            hd_error("publish hook: the message's %s", !ev ? "event must be a string"
                                                           : "data cannot be encoded as JSON");
            sc->ss.errors[HD_HOOK_PUBLISH]++;
            hd_str_free(&js);
        } else {
            char *nev = strdup(ev);
            if (nev && js.p) {
                free(*event);
                free(*data_json);
                *event = nev;
                *data_json = js.p;
            } else {
                free(nev);
                hd_str_free(&js);
            }
        }
    } else {
        sc->ss.publish_dropped++;
    }
    lua_settop(L, base);
    return deliver;
}

int hd_script_message(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen,
                      const char *event, json_t *payload, hd_str *reply_json, char *reason,
                      size_t rlen)
{
    hd_script *s = sc->cur;
    if (!s || !s->nfns[HD_HOOK_MESSAGE]) return 0;
    lua_State *L = s->L;
    int base = lua_gettop(L);
    int result = 0;
    for (int i = 1; i <= s->nfns[HD_HOOK_MESSAGE] && result == 0; i++) {
        char src[512];
        push_hook(s, HD_HOOK_MESSAGE, i, src, sizeof src);
        push_socket(L, c);
        lua_pushlstring(L, topic, tlen);
        lua_pushstring(L, event);
        hd_luapi_push_json(L, payload);
        int top = lua_gettop(L) - 5;
        if (guarded(s, HD_HOOK_MESSAGE, src, 4, LUA_MULTRET) != 0) {
            snprintf(reason, rlen, "internal error");
            result = 2;
            break;
        }
        if (!hd_conn_open(c)) break;
        int nres = lua_gettop(L) - top;
        if (nres == 0) continue;
        int v = top + 1;
        if (lua_istable(L, v)) {
            hd_str js = HD_STR_INIT;
            const char *e = hd_luapi_to_json(L, v, &js);
            if (e || js.p[0] != '{') {
                hd_error("message hook (%s): a reply must be a JSON object", src);
                sc->ss.errors[HD_HOOK_MESSAGE]++;
                snprintf(reason, rlen, "internal error");
                result = 2;
            } else {
                hd_str_add(reply_json, js.p, js.len);
                result = 1;
            }
            hd_str_free(&js);
        } else if (lua_toboolean(L, v)) {
            hd_str_adds(reply_json, "{}");
            result = 1;
        } else if (lua_isboolean(L, v) || nres >= 2) {
            copy_reason(L, v + 1, reason, rlen, "refused");
            result = 2;
        }
        lua_settop(L, top);
    }
    lua_settop(L, base);
    return result;
}

void hd_script_shutdown(hd_scripts *sc, const char *phase)
{
    hd_script *s = sc->cur;
    if (!s || !s->nfns[HD_HOOK_SHUTDOWN]) return;
    lua_State *L = s->L;
    int base = lua_gettop(L);
    for (int i = 1; i <= s->nfns[HD_HOOK_SHUTDOWN]; i++) {
        char src[512];
        push_hook(s, HD_HOOK_SHUTDOWN, i, src, sizeof src);
        lua_pushstring(L, phase);
        guarded(s, HD_HOOK_SHUTDOWN, src, 1, 0);
        lua_settop(L, base);
    }
}

void hd_script_status_json(hd_scripts *sc, hd_str *out)
{
    const hd_config *cfg = sc->cfg;
    hd_str_printf(out, "{\"generation\":%llu,\"scripts\":[",
                  (unsigned long long)sc->ss.generation);
    for (size_t i = 0; i < cfg->nscripts; i++) {
        if (i) hd_str_addc(out, ',');
        hd_str_add_json(out, cfg->scripts[i], strlen(cfg->scripts[i]));
    }
    hd_str_adds(out, "],\"plugins\":[");
    for (size_t i = 0; i < cfg->nplugins; i++) {
        if (i) hd_str_addc(out, ',');
        hd_str_add_json(out, cfg->plugins[i].name, strlen(cfg->plugins[i].name));
    }
    hd_str_adds(out, "],\"hooks\":{");
    int first = 1;
    for (int h = 0; h < HD_HOOK_COUNT; h++) {
        int n = sc->cur ? sc->cur->nfns[h] : 0;
        if (!n) continue;
        hd_str_printf(out, "%s\"%s\":%d", first ? "" : ",", hook_names[h], n);
        first = 0;
    }
    hd_str_printf(out, "},\"reloads\":{\"ok\":%llu,\"failed\":%llu},\"last_error\":",
                  (unsigned long long)sc->ss.reloads_ok,
                  (unsigned long long)sc->ss.reloads_failed);
    if (sc->ss.last_error[0])
        hd_str_add_json(out, sc->ss.last_error, strlen(sc->ss.last_error));
    else
        hd_str_adds(out, "null");
    hd_str_addc(out, '}');
}
