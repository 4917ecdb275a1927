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
static const char policy_key = 0;  /* lua/herald/config.lua's topic_policy */

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
    int handler;             /* registry ref: the message handler (traceback) */
    char failure[512];       /* the error of the last call that failed */
    char trace[1024];        /* its stack traceback, on one line ("" if none) */
};

/* What hd_script__guarded() runs besides hooks: a timer callback, a chunk loading. */
#define RUN_TIMER HD_HOOK_COUNT
#define RUN_LOAD (HD_HOOK_COUNT + 1)

static const char *const hook_names[HD_HOOK_COUNT] = {
    "authenticate", "join", "api_auth", "topic", "publish", "message", "shutdown", "init",
    "leave",        "disconnect",
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

/* [-1, +1] lua_pcall's message handler (upvalue: the hd_script): leaves
 * the error as it is and notes the stack traceback of where it was raised
 * in s->trace, on one line, for the log. */
static int traceback(lua_State *L)
{
    hd_script *s = lua_touserdata(L, lua_upvalueindex(1));
    luaL_traceback(L, L, NULL, 1); /* "stack traceback:\n\t<frame>\n\t<frame>..." */
    const char *t = lua_tostring(L, -1);
    size_t n = 0;
    for (int frames = 0; t && *t && n < sizeof s->trace - 4; t++) {
        if (*t != '\n') {
            s->trace[n++] = *t;
        } else { /* "stack traceback: <frame> | <frame> | ..." */
            const char *sep = frames++ ? " | " : " ";
            memcpy(s->trace + n, sep, strlen(sep));
            n += strlen(sep);
            if (t[1] == '\t') t++;
        }
    }
    s->trace[n] = 0;
    lua_settop(L, 1);
    return 1;
}

/* [-(nargs+1), +nres | +0] 0 with the results, or -1 after logging the
 * error with its traceback (script.h). */
int hd_script__guarded(hd_script *s, int hook, const char *src, int nargs, int nres)
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
    int fn = lua_gettop(L) - nargs;
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->handler);
    lua_insert(L, fn);
    s->trace[0] = 0; /* memory errors skip the handler */
    s->cur = hook;
    s->depth++;
    int rc = lua_pcall(L, nargs, nres, fn);
    s->depth--;
    s->cur = saved;
    lua_remove(L, fn); /* the handler, below the results or the error */
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
    hd_error("%s (%s) failed: %s%s%s", run_name(hook, name, sizeof name), src ? src : "?",
             s->failure, s->trace[0] ? "; " : "", s->trace);
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
    if (hd_script__guarded(s, RUN_TIMER, "timer", 0, 0) != 0) {
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

/* herald.assign's C half (conn_id, key, value): sets key of the socket's
 * assigns (JSON text in C) to value, a JSON value; nil removes it. Raises
 * on a closed socket or a value JSON cannot hold; returns true. */
static int l_assign(lua_State *L)
{
    hd_script *s = api_script(L, "assign", 0);
    uint64_t id = (uint64_t)luaL_checknumber(L, 1);
    size_t kl;
    const char *key = luaL_checklstring(L, 2, &kl);
    if (strlen(key) != kl) return luaL_argerror(L, 2, "key holds a NUL byte");
    hd_conn *c = hd_net_find(s->sc->net, id);
    if (!c || !hd_conn_open(c) || c->kind != HD_CONN_WS)
        return luaL_error(L, "attempt to use a closed socket");
    hd_str js = HD_STR_INIT;
    const char *e = lua_isnil(L, 3) ? NULL : hd_luapi_to_json(L, 3, &js);
    if (e) {
        hd_str_free(&js);
        return luaL_argerror(L, 3, e);
    }
    /* From here to the end nothing raises: js, o and text are freed below. */
    json_t *o = c->assigns ? json_loads(c->assigns, JSON_ALLOW_NUL, NULL) : NULL;
    if (!json_is_object(o)) {
        json_decref(o);
        o = json_object();
    }
    json_t *v = js.p ? json_loadb(js.p, js.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL) : NULL;
    hd_str_free(&js);
    int bad = !o || (!lua_isnil(L, 3) && !v);
    if (!bad && v) bad = json_object_set_new(o, key, v) != 0;
    else if (!bad) json_object_del(o, key);
    else json_decref(v);
    char *text = bad ? NULL : json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!text) return luaL_error(L, "out of memory");
    free(c->assigns);
    c->assigns = text;
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
        {"assign", l_assign},           {NULL, NULL},
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
                     "authenticate, join, api_auth, topic, publish, message, shutdown, init, leave, "
                     "disconnect",
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
        hd_luapi_hide_string_token(err, errlen);
        lua_pop(L, 1);
        return -1;
    }
    if (jit_off) luaJIT_setmode(L, -1, LUAJIT_MODE_ALLFUNC | LUAJIT_MODE_OFF);
    push_env(L);
    lua_setfenv(L, -2);
    if (hd_script__guarded(s, RUN_LOAD, src, 0, 1) != 0) {
        snprintf(err, errlen, "%s", s->failure);
        return -1;
    }
    if (plugin_opts) {
        /* A plugin returns { options = <declaration>, setup = function(options)
         * -> hooks table }. Its options were checked against the declaration
         * when the config was loaded (lua/herald/config.lua), defaults filled
         * in; neither changes at a reload, so setup gets them as they are. */
        if (lua_istable(L, -1)) lua_getfield(L, -1, "setup");
        else lua_pushnil(L);
        lua_remove(L, -2);
        if (!lua_isfunction(L, -1)) {
            snprintf(err, errlen,
                     "%s: a plugin must return { options = { ... }, "
                     "setup = function(options) ... end }",
                     src);
            lua_pop(L, 1);
            return -1;
        }
        hd_luapi_push_json_text(L, plugin_opts, strlen(plugin_opts));
        if (hd_script__guarded(s, RUN_LOAD, src, 1, 1) != 0) {
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
    lua_pushlightuserdata(L, s);
    lua_pushcclosure(L, traceback, 1);
    s->handler = luaL_ref(L, LUA_REGISTRYINDEX);
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
    if (hd_script__guarded(s, RUN_LOAD, "lua/herald/init.lua", 1, 1) != 0) {
        snprintf(err, errlen, "internal: lua/herald/init.lua failed: %s", s->failure);
        goto fail;
    }
    lua_pushlightuserdata(L, (void *)&herald_key);
    lua_insert(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    build_sandbox(s);

    /* The config's schema checks the topic hooks' results, so that a hook
     * may set what a `topics` rule may, in the same words (hooks.c). It is
     * Herald's own code, outside the sandbox: scripts cannot reach it. */
    const hd_embedded *schema = hd_embedded_find("herald.config");
    if (!schema || luaL_loadbuffer(L, schema->src, schema->len, "@lua/herald/config.lua")) {
        snprintf(err, errlen, "internal: cannot load lua/herald/config.lua: %s",
                 schema ? lua_tostring(L, -1) : "missing");
        goto fail;
    }
    if (hd_script__guarded(s, RUN_LOAD, "lua/herald/config.lua", 0, 1) != 0) {
        snprintf(err, errlen, "internal: lua/herald/config.lua failed: %s", s->failure);
        goto fail;
    }
    lua_pushlightuserdata(L, (void *)&policy_key);
    lua_getfield(L, -2, "topic_policy");
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);

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
        hd_script__push_hook(s, HD_HOOK_INIT, i); /* src, fn */
        const char *src = lua_tostring(L, -2);
        if (hd_script__guarded(s, HD_HOOK_INIT, src, 0, 2) != 0) {
            snprintf(err, errlen, "%s: init() failed: %s", src, s->failure);
            goto fail;
        }
        if (lua_isboolean(L, -2) && !lua_toboolean(L, -2)) {
            snprintf(err, errlen, "%s: init() refused: %s", src,
                     lua_isstring(L, -1) ? lua_tostring(L, -1) : "no reason given");
            goto fail;
        }
        lua_pop(L, 3);
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

/* ---- for hooks.c ----------------------------------------------------------------- */

/* The generation's Lua state. */
lua_State *hd_script__state(hd_script *s) { return s->L; }

/* How many functions the generation has for hook h. */
int hd_script__nhooks(hd_script *s, hd_hook h) { return s->nfns[h]; }

/* [-0, +2] Pushes the file and the function of hook function i of h. */
void hd_script__push_hook(hd_script *s, hd_hook h, int i)
{
    lua_State *L = s->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->srcs[h]);
    lua_rawgeti(L, -1, i);
    lua_replace(L, -2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->fns[h]);
    lua_rawgeti(L, -1, i);
    lua_replace(L, -2);
}

/* [-0, +1] Pushes the checker of topic policies (script.h). */
void hd_script__push_policy_check(hd_script *s)
{
    lua_pushlightuserdata(s->L, (void *)&policy_key);
    lua_rawget(s->L, LUA_REGISTRYINDEX);
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
