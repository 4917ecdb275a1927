#include "script.h"
#include "embed.h"
#include "err.h"
#include "httpc.h"
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

/* Idle threads kept for tasks' holds and calls, per generation. */
#define POOL_MAX 64

struct hd_script {
    lua_State *L;
    hd_scripts *sc;
    uint64_t gen;
    int refs;                /* tasks alive on it */
    int retired;             /* a reload replaced it: freed after its last task */
    struct hd_script *next_retired;
    hd_task *task;           /* the task whose call is running now, or NULL */
    lua_State *pool[POOL_MAX]; /* idle threads (each anchored by pool_ref) */
    int pool_ref[POOL_MAX];
    int npool;
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

static void keep_trace(hd_script *s, const char *t);

/* The budget hook is about to raise in L. In a task's coroutine no message
 * handler runs where it raises, and once the error has ended the coroutine
 * its frames no longer know their lines: the traceback is taken here (the
 * first raise of the call: a re-raise by the sandbox's pcall keeps it). */
static void note_raise(hd_script *s, lua_State *L)
{
    if (s->task && s->task->co == L && !s->trace[0] && lua_checkstack(L, 4)) {
        luaL_traceback(L, L, NULL, 0);
        keep_trace(s, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
}

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    hd_script *s = script_of(L);
    if (!s || !s->depth) return;
    s->insns += HOOK_EVERY;
    char name[32];
    if (s->exceeded || s->insns > s->max_insns || uv_hrtime() > s->deadline_ns) {
        s->exceeded = 1;
        note_raise(s, L);
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
            note_raise(s, L);
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
    keep_trace(s, lua_tostring(L, -1));
    lua_settop(L, 1);
    return 1;
}

/* Notes traceback t ("stack traceback:\n\t<frame>\n\t<frame>...") in
 * s->trace, on one line. */
static void keep_trace(hd_script *s, const char *t)
{
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
}

/* A call of run (from src) failed with msg (NULL: not a string): keeps
 * it in s->failure, counts it and logs it with s->trace. */
static void failed(hd_script *s, int run, const char *src, const char *msg, uint64_t conn)
{
    snprintf(s->failure, sizeof s->failure, "%s", msg ? msg : "(error object is not a string)");
    if (s->exceeded) {
        s->sc->ss.budget_exceeded++;
        lua_gc(s->L, LUA_GCCOLLECT, 0); /* a runaway's garbage goes now */
    }
    if (run < HD_HOOK_COUNT) s->sc->ss.errors[run]++;
    else if (run == RUN_TIMER) s->sc->ss.timer_errors++;
    char name[32];
    char who[32] = "";
    if (conn) snprintf(who, sizeof who, "conn %llu: ", (unsigned long long)conn);
    hd_error("%s%s (%s) failed: %s%s%s", who, run_name(run, name, sizeof name), src ? src : "?",
             s->failure, s->trace[0] ? "; " : "", s->trace);
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
    failed(s, hook, src, lua_tostring(L, -1), 0);
    lua_pop(L, 1);
    if (outer) s->exceeded = 0;
    return -1;
}

/* ---- tasks: calls that may wait ------------------------------------------------- */

/* What a task waits for: one herald.http.request. The response is copied
 * here when it comes (the client's buffers last only its callback) and
 * read by http_result in the coroutine. */
typedef struct lua_wait {
    hd_task *t;
    hd_httpc_call *call;         /* NULL once answered */
    int err;                     /* 0, or the request failed: msg */
    char msg[160];
    int status;
    size_t nh;
    hd_httpc_hdr *h;             /* into store */
    const char *body;            /* into store */
    size_t body_len;
    char *store;
} lua_wait;

static void wait_free(lua_wait *w)
{
    if (!w) return;
    if (w->call) hd_httpc_cancel(w->call);
    free(w->store);
    free(w);
}

/* [-0, +0] A thread of s for a hold or a call: an idle one, or a new one
 * anchored in the registry (*ref). NULL without memory. */
static lua_State *thread_get(hd_script *s, int *ref)
{
    if (s->npool) {
        s->npool--;
        *ref = s->pool_ref[s->npool];
        return s->pool[s->npool];
    }
    lua_State *L = s->L;
    if (!lua_checkstack(L, 2)) return NULL;
    lua_State *th = lua_newthread(L); /* (raises only on memory: the panic then) */
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return th;
}

/* Gives back a thread that is not running (finished, or never run): kept
 * idle when it can be resumed again, else let go. */
static void thread_put(hd_script *s, lua_State *th, int ref)
{
    if (!th) return;
    if (lua_status(th) == 0 && s->npool < POOL_MAX) {
        lua_settop(th, 0);
        s->pool[s->npool] = th;
        s->pool_ref[s->npool++] = ref;
        return;
    }
    luaL_unref(s->L, LUA_REGISTRYINDEX, ref); /* (the collector takes it) */
}

static void script_free(hd_script *s);

/* The generation loses a task; a retired one goes with its last. */
static void unpin(hd_script *s)
{
    if (--s->refs > 0 || !s->retired) return;
    hd_scripts *sc = s->sc;
    for (hd_script **pp = &sc->retired; *pp; pp = &(*pp)->next_retired)
        if (*pp == s) {
            *pp = s->next_retired;
            break;
        }
    hd_info("scripts: generation %llu freed after its last waiting hook",
            (unsigned long long)s->gen);
    script_free(s);
    sc->nstates--;
}

/* ---- the waiting list: by deadline (each wait gets the same io_timeout_ms) */

static void on_wait_timer(uv_timer_t *h);

static void arm_wait_timer(hd_scripts *sc)
{
    if (!sc->wait_head) {
        if (sc->wait_timer) uv_timer_stop(sc->wait_timer);
        return;
    }
    if (!sc->wait_timer) {
        sc->wait_timer = malloc(sizeof *sc->wait_timer);
        if (!sc->wait_timer) return; /* (the waits end with their requests' own deadlines) */
        uv_timer_init(sc->loop, sc->wait_timer);
        sc->wait_timer->data = sc;
    }
    uint64_t now = uv_now(sc->loop), at = sc->wait_head->deadline;
    uv_timer_start(sc->wait_timer, on_wait_timer, at > now ? at - now : 0, 0);
}

static void list_wait(hd_scripts *sc, hd_task *t)
{
    t->deadline = uv_now(sc->loop) + sc->cfg->io_timeout_ms;
    t->wnext = NULL;
    t->wprev = sc->wait_tail;
    if (sc->wait_tail) sc->wait_tail->wnext = t;
    else sc->wait_head = t;
    sc->wait_tail = t;
    t->listed = 1;
    sc->nwaiting++;
    if (sc->wait_head == t) arm_wait_timer(sc);
}

static void unlist_wait(hd_scripts *sc, hd_task *t)
{
    if (!t->listed) return;
    int head = sc->wait_head == t;
    if (t->wprev) t->wprev->wnext = t->wnext;
    else sc->wait_head = t->wnext;
    if (t->wnext) t->wnext->wprev = t->wprev;
    else sc->wait_tail = t->wprev;
    t->listed = 0;
    sc->nwaiting--;
    if (head) arm_wait_timer(sc);
}

/* Drops the call in progress: its request cancelled, its coroutine let go. */
static void drop_call(hd_task *t)
{
    unlist_wait(t->s->sc, t);
    wait_free(t->io);
    t->io = NULL;
    if (t->co) luaL_unref(t->s->L, LUA_REGISTRYINDEX, t->co_ref);
    t->co = NULL;
}

/* ---- running a slice --------------------------------------------------------- */

/* Runs t's coroutine from where it is, with narg values pushed on it, until
 * it returns, fails or waits; the budget counts this slice on top of what
 * the call spent before. Returns as hd_task_call does. */
static int slice(hd_task *t, int narg, int *nres)
{
    hd_script *s = t->s;
    lua_State *co = t->co;
    int outer = s->depth == 0, saved = s->cur;
    hd_task *was = s->task;
    uint64_t start = uv_hrtime();
    if (outer) {
        uint64_t ms = s->sc->cfg->hook_budget_ms, all = ms * 1000000ULL;
        s->deadline_ns = start + (all > t->ns ? all - t->ns : 0);
        s->insns = t->insns;
        s->max_insns = ms * INSNS_PER_MS;
        s->exceeded = 0;
    }
    s->trace[0] = 0;
    s->cur = t->run;
    s->task = t;
    s->depth++;
    t->in_call = 1;
    int rc = lua_resume(co, narg);
    t->in_call = 0;
    s->depth--;
    s->task = was;
    s->cur = saved;
    if (outer) {
        t->insns = s->insns;
        t->ns += uv_hrtime() - start;
    }
    if (rc == LUA_YIELD && t->io) {
        if (outer) s->exceeded = 0;
        return 1;
    }
    if (rc == 0) {
        unlist_wait(s->sc, t);
        if (t->run < HD_HOOK_COUNT) s->sc->ss.calls[t->run]++;
        *nres = lua_gettop(co);
        if (!lua_checkstack(t->hold, *nres + 1)) {
            rc = LUA_ERRMEM;
        } else {
            lua_xmove(co, t->hold, *nres);
            thread_put(s, co, t->co_ref);
            t->co = NULL;
            if (outer) s->exceeded = 0;
            return 0;
        }
    }
    /* Failed (or yielded some other way): the message, and where. */
    const char *msg = rc == LUA_YIELD ? "yielded outside herald.http.request"
                      : rc == LUA_ERRMEM ? "not enough memory"
                                         : lua_tostring(co, -1);
    if (rc != LUA_YIELD && rc != LUA_ERRMEM && !s->trace[0] && lua_checkstack(s->L, 4)) {
        luaL_traceback(s->L, co, NULL, 0);
        keep_trace(s, lua_tostring(s->L, -1));
        lua_pop(s->L, 1);
    }
    failed(s, t->run, t->src, msg, t->conn_id);
    drop_call(t);
    if (outer) s->exceeded = 0;
    return -1;
}

int hd_task_begin(hd_scripts *sc, hd_task *t, int h)
{
    hd_script *s = sc->cur;
    t->s = NULL;
    t->hold = t->co = NULL;
    t->io = NULL;
    t->listed = t->in_call = 0;
    t->run = h;
    t->conn_id = 0;
    t->cancel = 0;
    if (!s) return -1;
    t->hold = thread_get(s, &t->hold_ref);
    if (!t->hold) return -1;
    t->s = s;
    s->refs++;
    return 0;
}

int hd_task_call(hd_task *t, const char *src, int nargs, int *nres)
{
    hd_script *s = t->s;
    *nres = 0;
    if (!src) src = "?";
    size_t sl = strlen(src) < sizeof t->src - 1 ? strlen(src) : sizeof t->src - 1;
    memcpy(t->src, src, sl); /* (once per call: no snprintf on the hot path) */
    t->src[sl] = 0;
    t->insns = t->ns = 0;
    t->co = thread_get(s, &t->co_ref);
    if (!t->co || !lua_checkstack(t->co, nargs + 2)) {
        if (t->co) thread_put(s, t->co, t->co_ref);
        t->co = NULL;
        lua_pop(t->hold, nargs + 1);
        failed(s, t->run, t->src, "not enough memory", t->conn_id);
        return -1;
    }
    lua_xmove(t->hold, t->co, nargs + 1);
    int rc = slice(t, nargs, nres);
    if (rc == 1 && t->cancel) { /* (given up during the call: it may not wait) */
        drop_call(t);
        return -1;
    }
    if (rc == 1) list_wait(s->sc, t);
    return rc;
}

void hd_task_end(hd_task *t)
{
    hd_script *s = t->s;
    if (!s) return;
    drop_call(t);
    thread_put(s, t->hold, t->hold_ref);
    t->hold = NULL;
    t->s = NULL;
    unpin(s);
}

/* The wait of t is over: resumes its call with true (the answer is in
 * t->io). It stays on the waiting list while it runs, with its first
 * wait's deadline: io_timeout_ms bounds the call's waits together. Tells
 * the task's owner once the call is over. */
static void wake(hd_task *t)
{
    int nres = 0;
    lua_pushboolean(t->co, 1);
    int rc = slice(t, 1, &nres);
    if (rc == 1 && t->cancel) { /* (given up during the call: it may not wait again) */
        drop_call(t);
        rc = -1;
    }
    if (rc != 1) t->resumed(t, rc, nres);
}

/* io_timeout_ms: the calls waiting since then are abandoned and fail. */
static void on_wait_timer(uv_timer_t *h)
{
    hd_scripts *sc = h->data;
    uint64_t now = uv_now(sc->loop);
    while (sc->wait_head && sc->wait_head->deadline <= now) {
        hd_task *t = sc->wait_head;
        char name[32];
        char who[32] = "";
        if (t->conn_id) snprintf(who, sizeof who, "conn %llu: ", (unsigned long long)t->conn_id);
        hd_error("%s%s (%s) waited longer than scripts.io_timeout_ms (%u ms): abandoned, its "
                 "default applies",
                 who, run_name(t->run, name, sizeof name), t->src, (unsigned)sc->cfg->io_timeout_ms);
        sc->ss.io_timeouts++;
        if (t->run < HD_HOOK_COUNT) sc->ss.errors[t->run]++;
        drop_call(t);
        t->resumed(t, -1, 0);
    }
    arm_wait_timer(sc);
}

/* ---- herald.http.request ------------------------------------------------------ */

/* The answer is in (hd_httpc_cb): copied into the wait, then the call goes on. */
static void on_http(void *ud, int err, const char *msg, const hd_httpc_res *res)
{
    lua_wait *w = ud;
    hd_task *t = w->t;
    w->call = NULL;
    size_t bytes = 0;
    if (!err) {
        bytes = res->body_len + 1 + res->nheaders * sizeof *w->h;
        for (size_t i = 0; i < res->nheaders; i++)
            bytes += res->headers[i].name_len + res->headers[i].value_len;
        if (!(w->store = malloc(bytes))) err = HD_ENOMEM, msg = "out of memory";
    }
    if (err) {
        w->err = err;
        snprintf(w->msg, sizeof w->msg, "%s", msg ? msg : hd_strerror(err));
        t->s->sc->ss.http_errors++;
    } else {
        w->status = res->status;
        w->nh = res->nheaders;
        w->h = (hd_httpc_hdr *)(void *)w->store;
        char *p = w->store + res->nheaders * sizeof *w->h;
        for (size_t i = 0; i < res->nheaders; i++) {
            const hd_httpc_hdr *x = &res->headers[i];
            w->h[i].name = memcpy(p, x->name, x->name_len);
            w->h[i].name_len = x->name_len;
            p += x->name_len;
            w->h[i].value = memcpy(p, x->value, x->value_len);
            w->h[i].value_len = x->value_len;
            p += x->value_len;
        }
        memcpy(p, res->body, res->body_len);
        p[res->body_len] = 0;
        w->body = p;
        w->body_len = res->body_len;
    }
    wake(t);
}

/* [-0, +0] The string field key of the options table at 1 (raw), or dflt;
 * raises when it is there and not a string. */
static int http_error(lua_State *L, const char *msg);

static const char *opt_string(lua_State *L, const char *key, const char *dflt, size_t *len)
{
    lua_pushstring(L, key); /* (raw: a script's __index cannot run here) */
    lua_rawget(L, 1);
    const char *v = dflt;
    if (lua_type(L, -1) == LUA_TSTRING) v = lua_tolstring(L, -1, len);
    else if (!lua_isnil(L, -1)) (lua_pushfstring(L, ": %s must be a string", key), http_error(L, lua_tostring(L, -1)));
    else if (len) *len = dflt ? strlen(dflt) : 0;
    lua_pop(L, 1); /* (the table keeps the string alive) */
    return v;
}

/* Raises "<where the script called herald.http.request>: herald.http.request<msg>"
 * (level 2: level 1 is lua/herald/init.lua's wrapper). */
static int http_error(lua_State *L, const char *msg)
{
    luaL_where(L, 2);
    lua_pushfstring(L, "herald.http.request%s", msg);
    lua_concat(L, 2);
    return lua_error(L);
}

/* herald.http.request's C half (opts): starts the request and waits (the
 * coroutine yields until the answer; it then returns true and
 * http_result gives the answer), or returns nil, err when it cannot start. */
static int l_http_start(lua_State *L)
{
    hd_script *s = script_of(L);
    hd_task *t = s ? s->task : NULL;
    if (!t || t->co != L || t->nowait) {
        char msg[96];
        int run = s && s->depth ? s->cur : RUN_LOAD;
        if (run < HD_HOOK_COUNT)
            snprintf(msg, sizeof msg, " is not available in hook %s", hook_names[run]);
        else
            snprintf(msg, sizeof msg, " is not available %s",
                     run == RUN_TIMER ? "here" : "while the scripts load");
        return http_error(L, msg);
    }
    if (!lua_isyieldable(L)) /* (before the request starts: nothing to undo) */
        return http_error(L, " cannot wait inside a function called from C (a table.sort "
                             "comparison, a string.gsub callback, a __gc metamethod)");
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1); /* (the options at 1; the slots below count from there) */
    hd_scripts *sc = s->sc;
    if (sc->stopping) {
        lua_pushnil(L);
        lua_pushstring(L, "the server is stopping");
        return 2;
    }
    hd_httpc_req req;
    memset(&req, 0, sizeof req);
    req.method = opt_string(L, "method", "GET", NULL);
    req.url = opt_string(L, "url", NULL, &req.url_len);
    if (!req.url) return http_error(L, ": url is required");
    req.body = opt_string(L, "body", NULL, &req.body_len);
    lua_pushstring(L, "timeout_ms");
    lua_rawget(L, 1);
    if (!lua_isnil(L, -1)) {
        lua_Number ms = lua_tonumber(L, -1);
        if (!lua_isnumber(L, -1) || ms < 1 || ms > 600000 || ms != (lua_Number)(uint32_t)ms)
            return http_error(L, ": timeout_ms must be an integer from 1 to 600000");
        req.timeout_ms = (uint32_t)ms;
    }
    lua_pop(L, 1);
    lua_pushstring(L, "headers");
    lua_rawget(L, 1); /* at 2 */
    if (!lua_isnil(L, 2)) {
        if (!lua_istable(L, 2)) return http_error(L, ": headers must be a table");
        size_t n = 0;
        for (lua_pushnil(L); lua_next(L, 2); lua_pop(L, 1)) n++;
        if (n > 100) return http_error(L, ": at most 100 headers");
        lua_newtable(L); /* at 3: keeps the values' strings (numbers converted) alive */
        hd_httpc_hdr *h = lua_newuserdata(L, (n ? n : 1) * sizeof *h); /* (the collector's) */
        n = 0;
        for (lua_pushnil(L); lua_next(L, 2); lua_pop(L, 1)) {
            if (lua_type(L, -2) != LUA_TSTRING ||
                (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
                return http_error(L, ": headers must map names to strings");
            h[n].name = lua_tolstring(L, -2, &h[n].name_len); /* (the table keeps it) */
            lua_pushvalue(L, -1);
            h[n].value = lua_tolstring(L, -1, &h[n].value_len);
            lua_rawseti(L, 3, (int)n + 1);
            n++;
        }
        req.headers = h;
        req.nheaders = n;
    }
    if (!sc->httpc) {
        hd_httpc_opts o = {sc->cfg->http_pool_size, sc->cfg->http_max_in_flight,
                           sc->cfg->http_timeout_ms, sc->cfg->http_max_response_bytes, 4000};
        sc->httpc = hd_httpc_new(sc->loop, &o);
        if (!sc->httpc) return http_error(L, ": out of memory");
    }
    char err[160];
    lua_wait *w = calloc(1, sizeof *w);
    hd_httpc_call *call = w ? hd_httpc_request(sc->httpc, &req, on_http, w, err, sizeof err) : NULL;
    if (!w) snprintf(err, sizeof err, "out of memory");
    sc->ss.http_requests++;
    if (!call) {
        free(w);
        sc->ss.http_errors++;
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    w->t = t;
    w->call = call;
    t->io = w;
    return lua_yield(L, 0);
}

/* herald.http.request's answer, after the wait: { status, headers, body }
 * (header names lower-case), or nil, err. */
static int l_http_result(lua_State *L)
{
    hd_script *s = script_of(L);
    hd_task *t = s ? s->task : NULL;
    lua_wait *w = t && t->co == L ? t->io : NULL;
    if (!w || w->call) return luaL_error(L, "herald.http.request: no answer to read");
    if (w->err) {
        lua_pushnil(L);
        lua_pushstring(L, w->msg);
    } else {
        lua_createtable(L, 0, 3);
        lua_pushnumber(L, w->status);
        lua_setfield(L, -2, "status");
        lua_createtable(L, 0, (int)w->nh);
        for (size_t i = 0; i < w->nh; i++) {
            lua_pushlstring(L, w->h[i].name, w->h[i].name_len);
            lua_pushlstring(L, w->h[i].value, w->h[i].value_len);
            lua_rawset(L, -3);
        }
        lua_setfield(L, -2, "headers");
        lua_pushlstring(L, w->body, w->body_len);
        lua_setfield(L, -2, "body");
        lua_pushnil(L); /* (two results either way) */
    }
    t->io = NULL;
    wait_free(w);
    return 2;
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

/* A timer callback's run: a task of its own, which may wait. */
typedef struct timer_run {
    hd_task t;
    int id;
} timer_run;

/* The callback is over (rc as hd_task_call's): a failing repeating timer
 * would fail for ever, so it stops. */
static void timer_over(timer_run *r, int rc)
{
    hd_script *s = r->t.s;
    if (rc != 0 && !s->retired)
        for (hd_timer *x = s->timers; x; x = x->next)
            if (x->id == r->id) {
                timer_cancel(s, x);
                break;
            }
    hd_task_end(&r->t);
    free(r);
}

static void timer_resumed(hd_task *t, int rc, int nres)
{
    (void)nres;
    timer_over((timer_run *)t, rc);
}

static void on_timer(uv_timer_t *h)
{
    hd_timer *t = h->data;
    hd_script *s = t->s;
    if (!s) return;
    timer_run *r = calloc(1, sizeof *r);
    int fnref = t->fnref;
    if (r) r->id = t->id;
    /* A one-shot timer is done with before its callback runs (which may
     * wait, or start timers of its own). */
    if (!uv_timer_get_repeat(h)) {
        lua_rawgeti(s->L, LUA_REGISTRYINDEX, fnref); /* (keeps the function past the unref) */
        timer_cancel(s, t);
    } else {
        lua_rawgeti(s->L, LUA_REGISTRYINDEX, fnref);
    }
    if (!r || s->sc->cur != s || hd_task_begin(s->sc, &r->t, RUN_TIMER) != 0) {
        hd_error("timer callback: out of memory");
        lua_pop(s->L, 1);
        free(r);
        return;
    }
    r->t.resumed = timer_resumed;
    lua_xmove(s->L, r->t.hold, 1);
    int nres;
    int rc = hd_task_call(&r->t, "timer", 0, &nres);
    if (rc == 0) lua_settop(r->t.hold, 0);
    if (rc != 1) timer_over(r, rc);
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
    /* In a hook run for a connection, the line names it. */
    hd_script *s = script_of(L);
    uint64_t conn = s && s->task && s->task->co == L ? s->task->conn_id : 0;
    if (conn) hd_log((hd_log_level)lv, "conn %llu: [lua] %s%s", (unsigned long long)conn, where, msg);
    else hd_log((hd_log_level)lv, "[lua] %s%s", where, msg);
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
    if (!c || !hd_conn_open(c) || c->kind == HD_CONN_HTTP)
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
    if (!c || !hd_conn_open(c) || c->kind == HD_CONN_HTTP)
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
        {"assign", l_assign},           {"http_start", l_http_start},
        {"http_result", l_http_result}, {NULL, NULL},
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
        hd_script__push_hook(s, L, HD_HOOK_INIT, i); /* src, fn */
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
    if (old && old->refs > 0) {
        /* Hooks still wait on it: they finish there; its timers stop now. */
        while (old->timers) timer_cancel(old, old->timers);
        old->retired = 1;
        old->next_retired = sc->retired;
        sc->retired = old;
        hd_info("scripts: generation %llu stays until its %d waiting hook(s) finish",
                (unsigned long long)old->gen, old->refs);
    } else {
        script_free(old);
    }
    sc->nstates = 1;
    for (hd_script *r = sc->retired; r; r = r->next_retired) sc->nstates++;
}

int hd_script_start(hd_scripts *sc, char *err, size_t errlen)
{
    sc->stopping = 0;
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

static void on_wait_timer_closed(uv_handle_t *h) { free(h); }

void hd_script_stop(hd_scripts *sc)
{
    sc->stopping = 1;
    if (sc->nwaiting)
        hd_info("scripts: %zu hook(s) waiting for I/O fail: the server is stopping", sc->nwaiting);
    while (sc->wait_head) {
        hd_task *t = sc->wait_head;
        drop_call(t);
        t->resumed(t, -1, 0);
    }
    while (sc->retired) { /* (none once their tasks are over: for safety) */
        hd_script *r = sc->retired;
        sc->retired = r->next_retired;
        script_free(r);
    }
    script_free(sc->cur);
    sc->cur = NULL;
    sc->nstates = 0;
    if (sc->httpc) hd_httpc_free(sc->httpc, NULL, NULL);
    sc->httpc = NULL;
    if (sc->wait_timer) uv_close((uv_handle_t *)sc->wait_timer, on_wait_timer_closed);
    sc->wait_timer = NULL;
}

size_t hd_script_memory(const hd_scripts *sc)
{
    size_t kb = 0;
    if (sc->cur) kb += (size_t)lua_gc(sc->cur->L, LUA_GCCOUNT, 0);
    for (hd_script *r = sc->retired; r; r = r->next_retired) kb += (size_t)lua_gc(r->L, LUA_GCCOUNT, 0);
    return kb * 1024;
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
void hd_script__push_hook(hd_script *s, lua_State *L, hd_hook h, int i)
{
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
