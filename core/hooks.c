#include "hooks.h"
#include "log.h"
#include "luapi.h"
#include "util.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- the runners ----------------------------------------------------------------- */

enum { CONTINUE, STOP };

/* [-0, +nargs] Pushes fresh arguments for one call of a hook function. */
typedef void push_fn(lua_State *L, void *ud);
/* [-0, +0] Reads one call's nres results, from stack index first on; nres
 * is -1 when the call failed (already logged and counted). src is the hook
 * function's file. Returns CONTINUE, or STOP to end the run. */
typedef int result_fn(lua_State *L, void *ud, int first, int nres, const char *src);

/* [-0, +0] The hooks that cannot wait (topic, leave, disconnect) run on
 * the state's main thread: calls the functions of hook h in load order,
 * each through the guarded call with copies of the nargs values on top of
 * the stack. Hands every call's results to on_result (NULL: always
 * CONTINUE) until it says STOP. */
static void run(hd_scripts *sc, hd_hook h, int nargs, result_fn *on_result, void *ud)
{
    hd_script *s = sc->cur;
    lua_State *L = hd_script__state(s);
    int base = lua_gettop(L), args = base - nargs + 1, verdict = CONTINUE;
    for (int i = 1, n = hd_script__nhooks(s, h); i <= n && verdict == CONTINUE; i++) {
        hd_script__push_hook(s, L, h, i); /* base + 1: its file, base + 2: the function */
        for (int k = 0; k < nargs; k++) lua_pushvalue(L, args + k);
        const char *src = lua_tostring(L, base + 1); /* valid while it is on the stack */
        int rc = hd_script__guarded(s, h, src, nargs, LUA_MULTRET);
        int nres = rc ? -1 : lua_gettop(L) - base - 1;
        if (on_result) verdict = on_result(L, ud, base + 2, nres, src);
        lua_settop(L, base);
    }
}

/* [-0, +0] The Lua state when the running scripts define hook h, else NULL. */
static lua_State *hooked(hd_scripts *sc, hd_hook h)
{
    return hd_script_has(sc, h) ? hd_script__state(sc->cur) : NULL;
}

typedef struct hook_run hook_run;
/* The hook's end: fills r->res from what the run kept. */
typedef void finish_fn(hook_run *r);

/* A run of the hooks that may wait: a task (script.h) and the fold of
 * their results. Its values live on the task's hold: the run's own (the
 * arguments, what it merges) at 1..base, each call's file and results
 * above while it is read. */
struct hook_run {
    hd_task task;                /* first */
    hd_scripts *sc;
    hd_hook h;
    int i, n;                    /* the next function, how many */
    int nargs, base, verdict;
    push_fn *push;               /* fresh arguments per call, or NULL: copies of base-nargs+1.. */
    result_fn *on_result;
    finish_fn *finish;
    void *call;                  /* on_result's and push's ud */
    hd_hook_done *done;
    void *ud;
    int cancelled;
    json_t *payload;             /* message: a reference of the caller's */
    hd_hook_result res;
};

static int step(hook_run *r);

/* A call's results are in (rc as hd_task_call's). */
static void after(hook_run *r, int rc, int nres)
{
    lua_State *H = r->task.hold;
    if (r->on_result && !r->cancelled)
        r->verdict = r->on_result(H, r->call, r->base + 2, rc ? -1 : nres, r->task.src);
    lua_settop(H, r->base);
    r->i++;
}

static void resumed(hd_task *t, int rc, int nres)
{
    hook_run *r = (hook_run *)t;
    after(r, rc, nres);
    step(r);
}

static void result_free(hd_hook_result *res)
{
    free(res->id);
    free(res->assigns);
    hd_str_free(&res->reply);
    hd_str_free(&res->meta);
    free(res->event);
    free(res->data);
}

/* Everything ran (or the run stopped, or was cancelled): the caller gets
 * the results, unless it cancelled, and the run goes. */
static void end_run(hook_run *r)
{
    if (!r->cancelled) {
        if (r->finish) r->finish(r);
        if (r->done) r->done(r->ud, &r->res);
    }
    result_free(&r->res);
    json_decref(r->payload);
    hd_task_end(&r->task);
    free(r);
}

/* Calls the functions from r->i on. Returns 1 when one waits (resumed()
 * goes on), else 0 once the run ended (r is gone). */
static int step(hook_run *r)
{
    lua_State *H = r->task.hold;
    while (r->verdict == CONTINUE && !r->cancelled && r->i <= r->n) {
        hd_script__push_hook(r->task.s, H, r->h, r->i);
        if (r->push) r->push(H, r->call);
        else
            for (int k = 0; k < r->nargs; k++) lua_pushvalue(H, r->base - r->nargs + 1 + k);
        int nres, rc = hd_task_call(&r->task, lua_tostring(H, r->base + 1), r->nargs, &nres);
        if (rc == 1) return 1;
        after(r, rc, nres);
    }
    end_run(r);
    return 0;
}

/* A run of hook h (which the scripts define) in a new block of size bytes
 * (a hook_run first), or NULL without memory. */
static hook_run *run_new(hd_scripts *sc, hd_hook h, size_t size, int nowait, hd_hook_done *done,
                         void *ud)
{
    hook_run *r = calloc(1, size);
    if (!r || hd_task_begin(sc, &r->task, h) != 0) {
        hd_error("%s hook: out of memory", hd_hook_name(h));
        free(r);
        return NULL;
    }
    r->task.resumed = resumed;
    r->task.nowait = nowait;
    r->sc = sc;
    r->h = h;
    r->i = 1;
    r->n = hd_script__nhooks(r->task.s, h);
    r->done = done;
    r->ud = ud;
    return r;
}

/* Starts r, whose values are on its hold (nargs of them the arguments, on
 * top). Returns r while it waits, or NULL once done was called. */
static hd_hook_run *go(hook_run *r, int nargs, push_fn *push, result_fn *on_result,
                       finish_fn *finish, void *call)
{
    r->nargs = nargs;
    r->base = lua_gettop(r->task.hold);
    r->push = push;
    r->on_result = on_result;
    r->finish = finish;
    r->call = call;
    return step(r) ? (hd_hook_run *)r : NULL;
}

void hd_hook_cancel(hd_hook_run *run)
{
    hook_run *r = (hook_run *)run;
    r->sc->ss.discarded++;
    r->cancelled = 1;
    r->task.cancel = 1;
    if (!r->task.in_call) end_run(r); /* (else it ends once its call returns) */
}

/* Without the hook, or without memory for its run: the default, at once. */
static hd_hook_run *answer_now(hd_hook_done *done, void *ud, hd_hook_result *res)
{
    if (done) done(ud, res);
    result_free(res);
    return NULL;
}

/* A run of hook h in a block of size bytes, or NULL once done had res:
 * as it is when the scripts do not define h, or with verdict fail and
 * reason why when there is no memory for the run. */
static hook_run *begin(hd_scripts *sc, hd_hook h, size_t size, int nowait, hd_hook_done *done,
                       void *ud, hd_hook_result *res, int fail, const char *why)
{
    hook_run *r = hd_script_has(sc, h) ? run_new(sc, h, size, nowait, done, ud) : NULL;
    if (r) return r;
    if (hd_script_has(sc, h)) {
        res->verdict = fail;
        snprintf(res->reason, sizeof res->reason, "%s", why);
    }
    answer_now(done, ud, res);
    return NULL;
}

/* ---- arguments --------------------------------------------------------------------- */

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

/* Registry keys: the metatable of socket tables; a weak-keyed table of
 * socket table -> the assigns JSON its hook first read (keep_assigns). */
static const char socket_meta_key = 0;
static const char snapshot_key = 0;

/* [-0, +1] Pushes t[key] of the table at idx without metamethods (below). */
static void raw_field(lua_State *L, int idx, const char *key);

/* [-2, +1] __index of socket tables (upvalue 1: the hd_scripts): the first
 * read of socket.assigns decodes the connection's assigns (JSON text in C)
 * and keeps the table in the socket table, raw; keep_assigns() finds it
 * there after the hook. A hook that never reads assigns costs no decoding
 * and no encoding. Any other missing key is nil. */
static int socket_index(lua_State *L)
{
    hd_scripts *sc = lua_touserdata(L, lua_upvalueindex(1));
    if (lua_type(L, 2) != LUA_TSTRING || strcmp(lua_tostring(L, 2), "assigns") != 0) return 0;
    raw_field(L, 1, "conn_id");
    hd_conn *c = lua_type(L, -1) == LUA_TNUMBER
                     ? hd_net_find(sc->net, (uint64_t)lua_tonumber(L, -1))
                     : NULL;
    lua_pop(L, 1);
    if (c && c->assigns) hd_luapi_push_json_text(L, c->assigns, strlen(c->assigns));
    if (!c || !c->assigns || !lua_istable(L, -1)) {
        lua_settop(L, 2);
        lua_newtable(L);
    }
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    /* What was read, for keep_assigns: a hook that waits may resume after
     * someone else (herald.assign in a timer) changed the socket's assigns. */
    lua_pushlightuserdata(L, (void *)&snapshot_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_istable(L, -1)) {
        lua_pushvalue(L, 1);
        lua_pushstring(L, c && c->assigns ? c->assigns : "{}");
        lua_rawset(L, -3);
    }
    lua_pop(L, 1);
    return 1;
}

/* [-0, +1] The socket table hooks see: {id, conn_id, assigns, remote_addr,
 * transport}, assigns decoded at its first read (socket_index). */
static void push_socket(hd_scripts *sc, lua_State *L, hd_conn *c)
{
    lua_createtable(L, 0, 5);
    lua_pushstring(L, c->kind == HD_CONN_LP ? "longpoll" : "websocket");
    lua_setfield(L, -2, "transport");
    const char *id = hd_conn_identity(c);
    if (id) lua_pushstring(L, id);
    else lua_pushfstring(L, "%d", (int)c->id);
    lua_setfield(L, -2, "id");
    lua_pushnumber(L, (lua_Number)c->id);
    lua_setfield(L, -2, "conn_id");
    char peer[64];
    hd_conn_client(c, peer, sizeof peer);
    lua_pushstring(L, peer);
    lua_setfield(L, -2, "remote_addr");
    lua_pushlightuserdata(L, (void *)&socket_meta_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_isnil(L, -1)) { /* the first socket of this Lua state */
        lua_pop(L, 1);
        lua_createtable(L, 0, 2);
        lua_pushlightuserdata(L, sc);
        lua_pushcclosure(L, socket_index, 1);
        lua_setfield(L, -2, "__index");
        lua_pushboolean(L, 0); /* scripts can neither read nor replace it */
        lua_setfield(L, -2, "__metatable");
        lua_pushlightuserdata(L, (void *)&socket_meta_key);
        lua_pushvalue(L, -2);
        lua_rawset(L, LUA_REGISTRYINDEX);
        lua_pushlightuserdata(L, (void *)&snapshot_key);
        lua_createtable(L, 0, 1); /* weak keys: a socket table's entry goes with it */
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "k");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_rawset(L, LUA_REGISTRYINDEX);
    }
    lua_setmetatable(L, -2);
}

/* The assigns c holds now (cur, JSON text or NULL) with a hook's changes
 * to what it read (read) applied: keys whose value the hook changed or
 * added take its value, keys it removed go, the rest stay as cur has them.
 * Returns malloc'd JSON text, or NULL without memory. */
static char *merge_assigns(const char *cur, const char *read, const char *hook)
{
    json_t *c = cur ? json_loads(cur, JSON_ALLOW_NUL, NULL) : NULL;
    json_t *r = json_loads(read, JSON_ALLOW_NUL, NULL), *h = json_loads(hook, JSON_ALLOW_NUL, NULL);
    if (!json_is_object(c)) {
        json_decref(c);
        c = json_object();
    }
    char *out = NULL;
    if (c && json_is_object(r) && json_is_object(h)) {
        const char *k;
        json_t *v;
        json_object_foreach(h, k, v) if (!json_equal(v, json_object_get(r, k)))
            json_object_set(c, k, v);
        json_object_foreach(r, k, v) if (!json_object_get(h, k)) json_object_del(c, k);
        out = json_dumps(c, JSON_COMPACT);
    }
    json_decref(c);
    json_decref(r);
    json_decref(h);
    return out;
}

/* Whether JSON text a (NULL: none, as {}) and b mean the same. */
static int same_json(const char *a, const char *b)
{
    if (!a) return strcmp(b, "{}") == 0;
    if (strcmp(a, b) == 0) return 1;
    json_t *x = json_loads(a, JSON_ALLOW_NUL, NULL), *y = json_loads(b, JSON_ALLOW_NUL, NULL);
    int same = x && y && json_equal(x, y);
    json_decref(x);
    json_decref(y);
    return same;
}

/* [-0, +0] After hook h ran with the socket table at sock: when a hook
 * read (and so maybe changed) socket.assigns, or set it, the table's JSON
 * becomes c's assigns, unless it means what they hold already (then the
 * bytes stay as they are). When the socket's assigns changed while the
 * hook waited, only the hook's own changes to what it read apply
 * (merge_assigns). One that is not an object of JSON values is logged and
 * counted, and c keeps its assigns. */
static void keep_assigns(hd_scripts *sc, hd_hook h, lua_State *L, int sock, hd_conn *c)
{
    if (sock < 0) sock = lua_gettop(L) + sock + 1;
    lua_pushlightuserdata(L, (void *)&snapshot_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_istable(L, -1)) {
        lua_pushvalue(L, sock);
        lua_rawget(L, -2);
        lua_remove(L, -2);
    }
    const char *read = lua_tostring(L, -1); /* (kept alive on the stack) */
    raw_field(L, sock, "assigns");
    if (!lua_isnil(L, -1)) {
        hd_str js = HD_STR_INIT;
        const char *e = lua_istable(L, -1) ? hd_luapi_to_json(L, -1, &js) : "not a table";
        if (!e && (js.oom || !js.p)) e = "out of memory";
        if (!e && js.p[0] != '{') e = "not an object";
        if (e) {
            hd_error("conn %llu: %s hook: socket.assigns cannot be kept: %s",
                     (unsigned long long)c->id, hd_hook_name(h), e);
            sc->ss.errors[h]++;
        } else if (read && same_json(read, js.p)) {
            /* the hook changed nothing: c keeps what it holds */
        } else if (!read || same_json(c->assigns, read)) {
            if (!same_json(c->assigns, js.p)) {
                free(c->assigns);
                c->assigns = js.p;
                js = (hd_str)HD_STR_INIT;
            }
        } else {
            char *m = merge_assigns(c->assigns, read, js.p);
            if (m) {
                free(c->assigns);
                c->assigns = m;
            } else {
                hd_error("conn %llu: %s hook: out of memory keeping socket.assigns",
                         (unsigned long long)c->id, hd_hook_name(h));
            }
        }
        hd_str_free(&js);
    }
    lua_pop(L, 2);
}

/* keep_assigns for a run, whose socket (stack slot sock of its hold
 * thread) is found again by id: it may have closed while the run waited. */
static void keep_run_assigns(hook_run *r, hd_hook h, int sock)
{
    hd_conn *c = hd_net_find(r->sc->net, r->task.conn_id);
    if (c) keep_assigns(r->sc, h, r->task.hold, sock, c);
}

/* ---- results --------------------------------------------------------------------- */

/* [-0, +0] No opinion: nothing returned, or nil with no reason after it
 * (only false, or nil with a reason, refuses). */
static int no_opinion(lua_State *L, int v, int nres)
{
    return nres == 0 || (nres > 0 && lua_isnil(L, v) && (nres == 1 || lua_isnil(L, v + 1)));
}

/* [-0, +1] Pushes t[key] of the table at idx without metamethods: a
 * script's __index can neither raise outside the guarded call nor loop
 * past the budget. */
static void raw_field(lua_State *L, int idx, const char *key)
{
    if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
    lua_pushstring(L, key);
    lua_rawget(L, idx);
}

/* [-0, +0] Copies the string at idx into reason, or dflt when it is none. */
static void copy_reason(lua_State *L, int idx, char *reason, size_t rlen, const char *dflt)
{
    const char *r = lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx) : dflt;
    snprintf(reason, rlen, "%s", r);
}

/* [-0, +0] Encodes field key of the table at idx as a JSON object into out
 * (replacing it). Returns 1 when set, 0 when the field is nil, -1 after
 * logging. */
static int field_object(lua_State *L, int idx, const char *key, hd_str *out, const char *what,
                        const char *src)
{
    raw_field(L, idx, key);
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

/* ---- authenticate ------------------------------------------------------------------ */

typedef struct {
    hd_hook_result *res;
    int ok;
} auth_call;

/* The merged assigns are at 1 on the hold. */
#define AUTH_ASSIGNS 1

/* [-0, +0] A table allows (its id, if the first, and its assigns merge),
 * another true value allows, false or nil (or a failure) denies and stops.
 * Returns the verdict. */
static int auth_result(lua_State *L, void *ud, int v, int nres, const char *src)
{
    (void)src;
    auth_call *a = ud;
    if (nres < 0) {
        snprintf(a->res->reason, sizeof a->res->reason, "unauthorized");
        a->ok = 0;
        return STOP;
    }
    if (no_opinion(L, v, nres)) return CONTINUE;
    if (!lua_istable(L, v)) {
        if (lua_toboolean(L, v)) return CONTINUE;
        copy_reason(L, v + 1, a->res->reason, sizeof a->res->reason, "unauthorized");
        a->ok = 0;
        return STOP;
    }
    raw_field(L, v, "id");
    if (!a->res->id && (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER))
        a->res->id = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    raw_field(L, v, "assigns");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) { /* key, value -> key */
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, AUTH_ASSIGNS);
        }
    }
    lua_pop(L, 1);
    return CONTINUE;
}

typedef struct {
    hook_run r;
    auth_call a;
} auth_run;

static void auth_finish(hook_run *r)
{
    auth_run *x = (auth_run *)r;
    hd_hook_result *res = &r->res;
    if (x->a.ok) {
        hd_str js = HD_STR_INIT;
        const char *e = hd_luapi_to_json(r->task.hold, AUTH_ASSIGNS, &js);
        if (e) {
            hd_error("conn %llu: authenticate: assigns cannot be kept: %s",
                     (unsigned long long)r->task.conn_id, e);
            r->sc->ss.errors[HD_HOOK_AUTHENTICATE]++;
            snprintf(res->reason, sizeof res->reason, "unauthorized");
            x->a.ok = 0;
            hd_str_free(&js);
        } else {
            res->assigns = js.p;
        }
    }
    if (!x->a.ok) {
        free(res->id);
        res->id = NULL;
    }
    res->verdict = x->a.ok;
}

static hd_hook_run *authenticate(hd_scripts *sc, hd_conn *c, const hd_hook_req *rq,
                                 const char *token, int nowait, hd_hook_done *done, void *ud)
{
    hd_hook_result res = {.verdict = 1};
    auth_run *x = (auth_run *)begin(sc, HD_HOOK_AUTHENTICATE, sizeof *x, nowait, done, ud, &res,
                                    0, "unauthorized");
    if (!x) return NULL;
    lua_State *L = x->r.task.hold;
    x->r.task.conn_id = c->id;
    x->a.res = &x->r.res;
    x->a.ok = 1;
    lua_newtable(L); /* AUTH_ASSIGNS: the merged assigns */
    lua_createtable(L, 0, 6); /* req */
    push_params(L, rq);
    lua_setfield(L, -2, "params");
    push_headers(L, rq);
    lua_setfield(L, -2, "headers");
    if (token) {
        lua_pushstring(L, token);
        lua_setfield(L, -2, "token");
    }
    char peer[64];
    hd_conn_client(c, peer, sizeof peer);
    lua_pushstring(L, peer);
    lua_setfield(L, -2, "remote_addr");
    lua_pushlstring(L, rq->path, rq->path_len);
    lua_setfield(L, -2, "path");
    return go(&x->r, 1, NULL, auth_result, auth_finish, &x->a);
}

hd_hook_run *hd_hook_authenticate_start(hd_scripts *sc, hd_conn *c, const hd_hook_req *r,
                                        const char *token, hd_hook_done *done, void *ud)
{
    return authenticate(sc, c, r, token, 0, done, ud);
}

/* hd_hook_done of the sync wrappers: takes the results. */
static void take_result(void *ud, hd_hook_result *res)
{
    hd_hook_result *out = ud;
    *out = *res;
    memset(res, 0, sizeof *res);
}

/* [-0, +0] 1 allow (with *id, *assigns_json), 0 deny (hooks.h). */
int hd_hook_authenticate(hd_scripts *sc, hd_conn *c, const hd_hook_req *r, const char *token,
                         char **id, char **assigns_json, char *reason, size_t rlen)
{
    hd_hook_result res = {0};
    authenticate(sc, c, r, token, 1, take_result, &res);
    *id = res.id;
    *assigns_json = res.assigns;
    res.id = res.assigns = NULL;
    if (!res.verdict) snprintf(reason, rlen, "%s", res.reason);
    result_free(&res);
    return res.verdict;
}

/* ---- join -------------------------------------------------------------------------- */

typedef struct {
    hd_scripts *sc;
    uint64_t conn_id;
    hd_hook_result *res;
    int ok, have_reply;
} join_call;

/* [-0, +0] false, or nil with a reason, denies (stop); true allows, with an optional
 * {reply = ..., meta = ...}; a failure or a hook that closed the socket
 * denies. Returns the verdict. */
static int join_result(lua_State *L, void *ud, int v, int nres, const char *src)
{
    join_call *j = ud;
    hd_conn *c = hd_net_find(j->sc->net, j->conn_id);
    if (nres < 0 || !c || !hd_conn_open(c)) {
        snprintf(j->res->reason, sizeof j->res->reason, "%s", nres < 0 ? "join crashed" : "closed");
        j->ok = 0;
        return STOP;
    }
    if (no_opinion(L, v, nres)) return CONTINUE;
    if (!lua_toboolean(L, v)) {
        copy_reason(L, v + 1, j->res->reason, sizeof j->res->reason, "unauthorized");
        j->ok = 0;
        return STOP;
    }
    if (nres >= 2 && lua_istable(L, v + 1)) {
        int r = field_object(L, v + 1, "reply", &j->res->reply, "join", src);
        if (r > 0) j->have_reply = 1;
        int m = field_object(L, v + 1, "meta", &j->res->meta, "join", src);
        if (r < 0 || m < 0) j->sc->ss.errors[HD_HOOK_JOIN]++;
    }
    return CONTINUE;
}

typedef struct {
    hook_run r;
    join_call j;
} join_run;

static void join_finish(hook_run *r)
{
    join_run *x = (join_run *)r;
    keep_run_assigns(r, HD_HOOK_JOIN, 1);
    if (x->j.ok && !x->j.have_reply) {
        hd_str_reset(&r->res.reply);
        hd_str_adds(&r->res.reply, "{}");
    }
    r->res.verdict = x->j.ok;
}

static hd_hook_run *join(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen,
                         json_t *payload, int nowait, hd_hook_done *done, void *ud)
{
    hd_hook_result res = {.verdict = 1};
    if (!hd_script_has(sc, HD_HOOK_JOIN)) hd_str_adds(&res.reply, "{}");
    join_run *x = (join_run *)begin(sc, HD_HOOK_JOIN, sizeof *x, nowait, done, ud, &res, 0,
                                    "join crashed");
    if (!x) return NULL;
    lua_State *L = x->r.task.hold;
    x->r.task.conn_id = c->id;
    x->j = (join_call){sc, c->id, &x->r.res, 1, 0};
    push_socket(sc, L, c); /* at 1 */
    lua_pushlstring(L, topic, tlen);
    if (payload) hd_luapi_push_json(L, payload);
    else lua_newtable(L);
    return go(&x->r, 3, NULL, join_result, join_finish, &x->j);
}

hd_hook_run *hd_hook_join_start(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen,
                                json_t *payload, hd_hook_done *done, void *ud)
{
    return join(sc, c, topic, tlen, payload, 0, done, ud);
}

/* [-0, +0] 1 allow (with the reply, maybe meta), 0 deny (hooks.h). */
int hd_hook_join(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen, json_t *payload,
                 hd_str *reply_json, hd_str *meta_json, char *reason, size_t rlen)
{
    hd_hook_result res = {0};
    join(sc, c, topic, tlen, payload, 1, take_result, &res);
    if (res.reply.p) hd_str_add(reply_json, res.reply.p, res.reply.len);
    if (meta_json && res.meta.p) hd_str_add(meta_json, res.meta.p, res.meta.len);
    if (!res.verdict) snprintf(reason, rlen, "%s", res.reason);
    result_free(&res);
    return res.verdict;
}

/* ---- api_auth ---------------------------------------------------------------------- */

/* [-0, +0] A true value allows; false, nil with a reason, or a failure
 * denies and stops. Returns the verdict. */
static int api_auth_result(lua_State *L, void *ud, int v, int nres, const char *src)
{
    (void)src;
    int *verdict = ud;
    if (no_opinion(L, v, nres)) return CONTINUE;
    *verdict = nres > 0 && lua_toboolean(L, v);
    return *verdict ? CONTINUE : STOP;
}

typedef struct {
    hook_run r;
    int verdict;
} api_run;

static void api_finish(hook_run *r) { r->res.verdict = ((api_run *)r)->verdict; }

static hd_hook_run *api_auth(hd_scripts *sc, hd_conn *c, const hd_hook_req *rq, int nowait,
                             hd_hook_done *done, void *ud)
{
    hd_hook_result res = {.verdict = -1};
    api_run *x = (api_run *)begin(sc, HD_HOOK_API_AUTH, sizeof *x, nowait, done, ud, &res, 0,
                                  "forbidden");
    if (!x) return NULL;
    x->verdict = -1;
    x->r.task.conn_id = c->id;
    lua_State *L = x->r.task.hold;
    lua_createtable(L, 0, 6);
    lua_pushstring(L, rq->method);
    lua_setfield(L, -2, "method");
    lua_pushlstring(L, rq->path, rq->path_len);
    lua_setfield(L, -2, "path");
    push_params(L, rq);
    lua_setfield(L, -2, "params");
    push_headers(L, rq);
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
    hd_conn_client(c, peer, sizeof peer);
    lua_pushstring(L, peer);
    lua_setfield(L, -2, "remote_addr");
    return go(&x->r, 1, NULL, api_auth_result, api_finish, &x->verdict);
}

hd_hook_run *hd_hook_api_auth_start(hd_scripts *sc, hd_conn *c, const hd_hook_req *r,
                                    hd_hook_done *done, void *ud)
{
    return api_auth(sc, c, r, 0, done, ud);
}

/* [-0, +0] 1 allow, 0 deny, -1 no opinion (hooks.h). */
int hd_hook_api_auth(hd_scripts *sc, hd_conn *c, const hd_hook_req *r)
{
    hd_hook_result res = {0};
    api_auth(sc, c, r, 1, take_result, &res);
    result_free(&res);
    return res.verdict;
}

/* ---- topic ------------------------------------------------------------------------- */

typedef struct {
    hd_scripts *sc;
    hd_topic_policy *p;
} topic_call;

/* [-0, +0] Merges a table of policy fields over *p, all or none; nil (or a
 * failure) leaves p alone. The table is checked by the config's own
 * schema (lua/herald/config.lua's topic_policy), so that a hook may set
 * exactly what a `topics` rule may, and a bad value is reported in the
 * words the config uses for it: "topic hook (<file>): history_size:
 * expected an integer from 0 to 100000, got 100001", one line per error.
 * Returns CONTINUE: every topic hook runs. */
static int topic_result(lua_State *L, void *ud, int v, int nres, const char *src)
{
    topic_call *t = ud;
    if (nres <= 0 || lua_isnil(L, v)) return CONTINUE;
    if (!lua_istable(L, v)) {
        hd_error("topic hook (%s): expected a table of policy fields or nil, got a %s", src,
                 luaL_typename(L, v));
        t->sc->ss.errors[HD_HOOK_TOPIC]++;
        return CONTINUE;
    }
    hd_script__push_policy_check(t->sc->cur);
    lua_pushvalue(L, v);
    if (lua_pcall(L, 1, 2, 0)) { /* out of memory, or out of budget in a nested call */
        hd_error("topic hook (%s): its result could not be checked: %s", src,
                 lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
        t->sc->ss.errors[HD_HOOK_TOPIC]++;
        lua_pop(L, 1);
        return CONTINUE;
    }
    if (lua_istable(L, -2)) {
        hd_config_read_policy(L, -2, t->p);
    } else {
        for (int i = 1, n = (int)lua_objlen(L, -1); i <= n; i++) {
            lua_rawgeti(L, -1, i);
            hd_error("topic hook (%s): %s", src, lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        t->sc->ss.errors[HD_HOOK_TOPIC]++;
    }
    lua_pop(L, 2);
    return CONTINUE;
}

/* [-0, +0] Merges the hooks' results over *p (hooks.h). */
void hd_hook_topic(hd_scripts *sc, const char *topic, size_t tlen, hd_topic_policy *p)
{
    lua_State *L = hooked(sc, HD_HOOK_TOPIC);
    if (!L) return;
    int base = lua_gettop(L);
    lua_pushlstring(L, topic, tlen);
    topic_call t = {sc, p};
    run(sc, HD_HOOK_TOPIC, 1, topic_result, &t);
    lua_settop(L, base);
}

/* [-0, +0] hd_hook_topic as an hd_policy_resolver. */
void hd_hook_resolve(void *ud, const char *topic, size_t tlen, hd_topic_policy *p)
{
    hd_hook_topic(ud, topic, tlen, p);
}

/* ---- publish ----------------------------------------------------------------------- */

typedef struct {
    int msg;     /* stack index: the message the next hook gets */
    int deliver; /* 0: dropped */
    int failed;
} publish_call;

/* [-0, +0] A table becomes the message, false (or nil with a reason)
 * drops it (stop), anything else keeps it (as the hook may have changed
 * it); a failure stops. Returns the verdict. */
static int publish_result(lua_State *L, void *ud, int v, int nres, const char *src)
{
    (void)src;
    publish_call *m = ud;
    if (nres < 0) {
        m->failed = 1;
        return STOP;
    }
    if (nres > 0 && lua_istable(L, v)) {
        lua_pushvalue(L, v);
        lua_replace(L, m->msg);
    } else if (nres > 0 && !lua_toboolean(L, v) && !no_opinion(L, v, nres)) {
        m->deliver = 0;
        return STOP;
    }
    return CONTINUE;
}

/* [-0, +0] Replaces *event and *data_json with those of the message at
 * idx; logs and counts a message that cannot be sent (it then goes out as
 * it came in). */
static void take_message(hd_scripts *sc, lua_State *L, int idx, char **event, char **data_json)
{
    raw_field(L, idx, "event");
    const char *ev = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    raw_field(L, idx, "data");
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
    lua_pop(L, 2);
}

typedef struct {
    hook_run r;
    publish_call m;
} publish_run;

static void publish_finish(hook_run *r)
{
    publish_run *x = (publish_run *)r;
    if (!x->m.deliver) r->sc->ss.publish_dropped++;
    else if (!x->m.failed) /* (failed: unchanged) */
        take_message(r->sc, r->task.hold, x->m.msg, &r->res.event, &r->res.data);
    r->res.verdict = x->m.deliver;
}

static hd_hook_run *publish(hd_scripts *sc, const char *topic, size_t tlen, const char *event,
                            const char *data_json, int nowait, hd_hook_done *done, void *ud)
{
    hd_hook_result res = {.verdict = 1};
    res.event = strdup(event);
    res.data = strdup(data_json);
    if (!res.event || !res.data) {
        hd_error("publish hook: out of memory");
        res.verdict = 0;
        return answer_now(done, ud, &res);
    }
    publish_run *x = hd_script_has(sc, HD_HOOK_PUBLISH)
                         ? (publish_run *)run_new(sc, HD_HOOK_PUBLISH, sizeof *x, nowait, done, ud)
                         : NULL;
    if (!x) return answer_now(done, ud, &res); /* (without memory: delivered unchanged) */
    x->r.res = res;
    lua_State *L = x->r.task.hold;
    lua_createtable(L, 0, 3);
    lua_pushlstring(L, topic, tlen);
    lua_setfield(L, -2, "topic");
    lua_pushstring(L, event);
    lua_setfield(L, -2, "event");
    hd_luapi_push_json_text(L, data_json, strlen(data_json));
    lua_setfield(L, -2, "data");
    x->m = (publish_call){lua_gettop(L), 1, 0};
    return go(&x->r, 1, NULL, publish_result, publish_finish, &x->m);
}

hd_hook_run *hd_hook_publish_start(hd_scripts *sc, const char *topic, size_t tlen,
                                   const char *event, const char *data_json, hd_hook_done *done,
                                   void *ud)
{
    return publish(sc, topic, tlen, event, data_json, 0, done, ud);
}

/* [-0, +0] 1 deliver (*event, *data_json maybe replaced), 0 dropped (hooks.h). */
int hd_hook_publish(hd_scripts *sc, const char *topic, size_t tlen, char **event,
                    char **data_json)
{
    hd_hook_result res = {0};
    publish(sc, topic, tlen, *event, *data_json, 1, take_result, &res);
    if (res.verdict && res.event && res.data) {
        free(*event);
        free(*data_json);
        *event = res.event;
        *data_json = res.data;
        res.event = res.data = NULL;
    }
    result_free(&res);
    return res.verdict;
}

/* ---- message ----------------------------------------------------------------------- */

typedef struct {
    hd_scripts *sc;
    uint64_t conn_id;
    json_t *payload;             /* a binary message's: a string of its bytes */
    int binary;                  /* a binary message: meta = {binary = true} follows */
    hd_hook_result *res;
} message_call;

/* The socket, topic and event are at 1, 2, 3 on the hold. */
enum { MSG_SOCKET = 1, MSG_TOPIC, MSG_EVENT };

/* [-0, +4] socket (the same table), topic, event, payload (fresh for each hook). */
static void push_message(lua_State *L, void *ud)
{
    message_call *m = ud;
    lua_pushvalue(L, MSG_SOCKET);
    lua_pushvalue(L, MSG_TOPIC);
    lua_pushvalue(L, MSG_EVENT);
    hd_luapi_push_json(L, m->payload);
    if (m->binary) {
        lua_createtable(L, 0, 1);
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "binary");
    }
}

/* [-0, +0] A table is the ok reply, true an empty one, false (or nil, reason)
 * an error reply, nothing (or a bare nil) no answer; the first answer, a failure or a closed
 * socket stops. Returns the verdict. */
static int message_result(lua_State *L, void *ud, int v, int nres, const char *src)
{
    message_call *m = ud;
    hd_hook_result *res = m->res;
    if (nres < 0) {
        snprintf(res->reason, sizeof res->reason, "internal error");
        res->verdict = 2;
        return STOP;
    }
    hd_conn *c = hd_net_find(m->sc->net, m->conn_id);
    if (!c || !hd_conn_open(c)) return STOP;
    if (no_opinion(L, v, nres)) return CONTINUE;
    if (lua_istable(L, v)) {
        hd_str js = HD_STR_INIT;
        const char *e = hd_luapi_to_json(L, v, &js);
        if (e || js.len == 0 || js.p[0] != '{') {
            hd_error("conn %llu: message hook (%s): a reply must be a JSON object",
                     (unsigned long long)m->conn_id, src);
            m->sc->ss.errors[HD_HOOK_MESSAGE]++;
            snprintf(res->reason, sizeof res->reason, "internal error");
            res->verdict = 2;
        } else {
            hd_str_add(&res->reply, js.p, js.len);
            res->verdict = 1;
        }
        hd_str_free(&js);
    } else if (lua_toboolean(L, v)) {
        hd_str_adds(&res->reply, "{}");
        res->verdict = 1;
    } else { /* false, or nil with a reason */
        copy_reason(L, v + 1, res->reason, sizeof res->reason, "refused");
        res->verdict = 2;
    }
    return res->verdict ? STOP : CONTINUE;
}

typedef struct {
    hook_run r;
    message_call m;
} message_run;

static void message_finish(hook_run *r) { keep_run_assigns(r, HD_HOOK_MESSAGE, MSG_SOCKET); }

static hd_hook_run *message(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen,
                            const char *event, json_t *payload, int binary, int nowait,
                            hd_hook_done *done, void *ud)
{
    hd_hook_result res = {.verdict = 0};
    message_run *x = (message_run *)begin(sc, HD_HOOK_MESSAGE, sizeof *x, nowait, done, ud, &res,
                                          2, "internal error");
    if (!x) return NULL;
    lua_State *L = x->r.task.hold;
    x->r.task.conn_id = c->id;
    x->r.payload = json_incref(payload);
    x->m = (message_call){sc, c->id, payload, binary, &x->r.res};
    push_socket(sc, L, c); /* MSG_SOCKET */
    lua_pushlstring(L, topic, tlen);
    lua_pushstring(L, event);
    return go(&x->r, binary ? 5 : 4, push_message, message_result, message_finish, &x->m);
}

hd_hook_run *hd_hook_message_start(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen,
                                   const char *event, json_t *payload, hd_hook_done *done,
                                   void *ud)
{
    return message(sc, c, topic, tlen, event, payload, 0, 0, done, ud);
}

hd_hook_run *hd_hook_message_binary_start(hd_scripts *sc, hd_conn *c, const char *topic,
                                          size_t tlen, const char *event, const void *data,
                                          size_t dlen, hd_hook_done *done, void *ud)
{
    /* (a jansson string holds any bytes: the payload reaches Lua as they are) */
    json_t *payload = json_stringn_nocheck(data, dlen);
    if (!payload) {
        hd_hook_result res = {.verdict = 2};
        snprintf(res.reason, sizeof res.reason, "internal error");
        return answer_now(done, ud, &res);
    }
    hd_hook_run *run = message(sc, c, topic, tlen, event, payload, 1, 0, done, ud);
    json_decref(payload); /* (the run holds its own reference) */
    return run;
}

/* [-0, +0] 0 no reply, 1 ok reply, 2 error reply (hooks.h). */
int hd_hook_message(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen,
                    const char *event, json_t *payload, hd_str *reply_json, char *reason,
                    size_t rlen)
{
    hd_hook_result res = {0};
    message(sc, c, topic, tlen, event, payload, 0, 1, take_result, &res);
    if (res.verdict == 1 && res.reply.p) hd_str_add(reply_json, res.reply.p, res.reply.len);
    if (res.verdict == 2) snprintf(reason, rlen, "%s", res.reason);
    result_free(&res);
    return res.verdict;
}

/* ---- shutdown ---------------------------------------------------------------------- */

static hd_hook_run *shutdown_run(hd_scripts *sc, const char *phase, int nowait,
                                 hd_hook_done *done, void *ud)
{
    hd_hook_result res = {0};
    hook_run *r = begin(sc, HD_HOOK_SHUTDOWN, sizeof *r, nowait, done, ud, &res, 0, "");
    if (!r) return NULL;
    lua_pushstring(r->task.hold, phase);
    return go(r, 1, NULL, NULL, NULL, NULL);
}

hd_hook_run *hd_hook_shutdown_start(hd_scripts *sc, const char *phase, hd_hook_done *done,
                                    void *ud)
{
    return shutdown_run(sc, phase, 0, done, ud);
}

/* [-0, +0] Runs every shutdown hook with phase. */
void hd_hook_shutdown(hd_scripts *sc, const char *phase) { shutdown_run(sc, phase, 1, NULL, NULL); }

/* ---- leave, disconnect ------------------------------------------------------------- */

/* [-0, +0] Runs every leave hook with (socket, topic). */
void hd_hook_leave(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen)
{
    lua_State *L = hooked(sc, HD_HOOK_LEAVE);
    if (!L) return;
    int base = lua_gettop(L);
    push_socket(sc, L, c);
    lua_pushlstring(L, topic, tlen);
    run(sc, HD_HOOK_LEAVE, 2, NULL, NULL);
    keep_assigns(sc, HD_HOOK_LEAVE, L, base + 1, c);
    lua_settop(L, base);
}

/* [-0, +0] Runs every disconnect hook with (socket, reason). */
void hd_hook_disconnect(hd_scripts *sc, hd_conn *c, const char *reason)
{
    lua_State *L = hooked(sc, HD_HOOK_DISCONNECT);
    if (!L) return;
    int base = lua_gettop(L);
    push_socket(sc, L, c);
    lua_pushstring(L, reason);
    run(sc, HD_HOOK_DISCONNECT, 2, NULL, NULL);
    lua_settop(L, base);
}
