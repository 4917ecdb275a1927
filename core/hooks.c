#include "hooks.h"
#include "log.h"
#include "luapi.h"
#include "util.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- the runner ------------------------------------------------------------------ */

enum { CONTINUE, STOP };

/* [-0, +nargs] Pushes fresh arguments for one call of a hook function. */
typedef void push_fn(lua_State *L, void *ud);
/* [-0, +0] Reads one call's nres results, from stack index first on; nres
 * is -1 when the call failed (already logged and counted). src is the hook
 * function's file. Returns CONTINUE, or STOP to end the run. */
typedef int result_fn(lua_State *L, void *ud, int first, int nres, const char *src);

/* [-0, +0] Calls the functions of hook h in load order, each through the
 * guarded call with nargs arguments: fresh ones from push, or (push NULL)
 * copies of the nargs values on top of the stack, so that each function
 * sees what the one before left in them. Hands every call's results to
 * on_result (NULL: always CONTINUE) until it says STOP. Returns STOP when
 * stopped, else CONTINUE. */
static int run(hd_scripts *sc, hd_hook h, push_fn *push, int nargs, result_fn *on_result,
               void *ud)
{
    hd_script *s = sc->cur;
    lua_State *L = hd_script__state(s);
    int base = lua_gettop(L), args = base - nargs + 1, verdict = CONTINUE;
    for (int i = 1, n = hd_script__nhooks(s, h); i <= n && verdict == CONTINUE; i++) {
        hd_script__push_hook(s, h, i); /* base + 1: its file, base + 2: the function */
        if (push) push(L, ud);
        for (int k = 0; !push && k < nargs; k++) lua_pushvalue(L, args + k);
        const char *src = lua_tostring(L, base + 1); /* valid while it is on the stack */
        int rc = hd_script__guarded(s, h, src, nargs, LUA_MULTRET);
        int nres = rc ? -1 : lua_gettop(L) - base - 1;
        if (on_result) verdict = on_result(L, ud, base + 2, nres, src);
        lua_settop(L, base);
    }
    return verdict;
}

/* [-0, +0] The Lua state when the running scripts define hook h, else NULL. */
static lua_State *hooked(hd_scripts *sc, hd_hook h)
{
    return hd_script_has(sc, h) ? hd_script__state(sc->cur) : NULL;
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

/* Registry key: the metatable of socket tables. */
static const char socket_meta_key = 0;

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
    return 1;
}

/* [-0, +1] The socket table hooks see: {id, conn_id, assigns, remote_addr},
 * assigns decoded at its first read (socket_index). */
static void push_socket(hd_scripts *sc, lua_State *L, hd_conn *c)
{
    lua_createtable(L, 0, 4);
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
    }
    lua_setmetatable(L, -2);
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
 * bytes stay as they are). One that is not an object of JSON values is
 * logged and counted, and c keeps its assigns. */
static void keep_assigns(hd_scripts *sc, hd_hook h, lua_State *L, int sock, hd_conn *c)
{
    raw_field(L, sock, "assigns");
    if (!lua_isnil(L, -1)) {
        hd_str js = HD_STR_INIT;
        const char *e = lua_istable(L, -1) ? hd_luapi_to_json(L, -1, &js) : "not a table";
        if (!e && (js.oom || !js.p)) e = "out of memory";
        if (!e && js.p[0] != '{') e = "not an object";
        if (e) {
            hd_error("%s hook: socket.assigns cannot be kept: %s", hd_hook_name(h), e);
            sc->ss.errors[h]++;
        } else if (!same_json(c->assigns, js.p)) {
            free(c->assigns);
            c->assigns = js.p;
            js = (hd_str)HD_STR_INIT;
        }
        hd_str_free(&js);
    }
    lua_pop(L, 1);
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
    int assigns;  /* stack index: the assigns merged so far */
    char **id;    /* the first id a hook gave */
    char *reason;
    size_t rlen;
    int ok;
} auth_call;

/* [-0, +0] A table allows (its id, if the first, and its assigns merge),
 * another true value allows, false or nil (or a failure) denies and stops.
 * Returns the verdict. */
static int auth_result(lua_State *L, void *ud, int v, int nres, const char *src)
{
    auth_call *a = ud;
    if (nres < 0) {
        snprintf(a->reason, a->rlen, "unauthorized");
        a->ok = 0;
        return STOP;
    }
    if (no_opinion(L, v, nres)) return CONTINUE;
    if (!lua_istable(L, v)) {
        if (lua_toboolean(L, v)) return CONTINUE;
        copy_reason(L, v + 1, a->reason, a->rlen, "unauthorized");
        a->ok = 0;
        return STOP;
    }
    raw_field(L, v, "id");
    if (!*a->id && (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER))
        *a->id = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    raw_field(L, v, "assigns");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) { /* key, value -> key */
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, a->assigns);
        }
    }
    lua_pop(L, 1);
    return CONTINUE;
}

/* [-0, +0] 1 allow (with *id, *assigns_json), 0 deny (hooks.h). */
int hd_hook_authenticate(hd_scripts *sc, hd_conn *c, const hd_hook_req *r, const char *token,
                         char **id, char **assigns_json, char *reason, size_t rlen)
{
    *id = *assigns_json = NULL;
    lua_State *L = hooked(sc, HD_HOOK_AUTHENTICATE);
    if (!L) return 1;
    int base = lua_gettop(L);
    lua_newtable(L); /* the merged assigns */
    auth_call a = {lua_gettop(L), id, reason, rlen, 1};
    lua_createtable(L, 0, 6); /* req */
    push_params(L, r);
    lua_setfield(L, -2, "params");
    push_headers(L, r);
    lua_setfield(L, -2, "headers");
    if (token) {
        lua_pushstring(L, token);
        lua_setfield(L, -2, "token");
    }
    char peer[64];
    hd_conn_client(c, peer, sizeof peer);
    lua_pushstring(L, peer);
    lua_setfield(L, -2, "remote_addr");
    lua_pushlstring(L, r->path, r->path_len);
    lua_setfield(L, -2, "path");
    run(sc, HD_HOOK_AUTHENTICATE, NULL, 1, auth_result, &a);
    if (a.ok) {
        hd_str js = HD_STR_INIT;
        const char *e = hd_luapi_to_json(L, a.assigns, &js);
        if (e) {
            hd_error("authenticate: assigns cannot be kept: %s", e);
            sc->ss.errors[HD_HOOK_AUTHENTICATE]++;
            snprintf(reason, rlen, "unauthorized");
            a.ok = 0;
            hd_str_free(&js);
        } else {
            *assigns_json = js.p;
        }
    }
    if (!a.ok) {
        free(*id);
        *id = NULL;
    }
    lua_settop(L, base);
    return a.ok;
}

/* ---- join -------------------------------------------------------------------------- */

typedef struct {
    hd_scripts *sc;
    hd_conn *c;
    hd_str *reply, *meta; /* meta may be NULL */
    char *reason;
    size_t rlen;
    int ok, have_reply;
} join_call;

/* [-0, +0] false, or nil with a reason, denies (stop); true allows, with an optional
 * {reply = ..., meta = ...}; a failure or a hook that closed the socket
 * denies. Returns the verdict. */
static int join_result(lua_State *L, void *ud, int v, int nres, const char *src)
{
    join_call *j = ud;
    if (nres < 0 || !hd_conn_open(j->c)) {
        snprintf(j->reason, j->rlen, "%s", nres < 0 ? "join crashed" : "closed");
        j->ok = 0;
        return STOP;
    }
    if (no_opinion(L, v, nres)) return CONTINUE;
    if (!lua_toboolean(L, v)) {
        copy_reason(L, v + 1, j->reason, j->rlen, "unauthorized");
        j->ok = 0;
        return STOP;
    }
    if (nres >= 2 && lua_istable(L, v + 1)) {
        int r = field_object(L, v + 1, "reply", j->reply, "join", src);
        if (r > 0) j->have_reply = 1;
        int m = j->meta ? field_object(L, v + 1, "meta", j->meta, "join", src) : 0;
        if (r < 0 || m < 0) j->sc->ss.errors[HD_HOOK_JOIN]++;
    }
    return CONTINUE;
}

/* [-0, +0] 1 allow (with the reply, maybe meta), 0 deny (hooks.h). */
int hd_hook_join(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen, json_t *payload,
                 hd_str *reply_json, hd_str *meta_json, char *reason, size_t rlen)
{
    lua_State *L = hooked(sc, HD_HOOK_JOIN);
    if (!L) {
        hd_str_adds(reply_json, "{}");
        return 1;
    }
    int base = lua_gettop(L);
    push_socket(sc, L, c);
    lua_pushlstring(L, topic, tlen);
    if (payload) hd_luapi_push_json(L, payload);
    else lua_newtable(L);
    join_call j = {sc, c, reply_json, meta_json, reason, rlen, 1, 0};
    run(sc, HD_HOOK_JOIN, NULL, 3, join_result, &j);
    keep_assigns(sc, HD_HOOK_JOIN, L, base + 1, c);
    if (j.ok && !j.have_reply) hd_str_adds(reply_json, "{}");
    lua_settop(L, base);
    return j.ok;
}

/* ---- api_auth ---------------------------------------------------------------------- */

/* [-0, +0] A true value allows; false, nil with a reason, or a failure
 * denies and stops. Returns the verdict. */
static int api_auth_result(lua_State *L, void *ud, int v, int nres, const char *src)
{
    int *verdict = ud;
    if (no_opinion(L, v, nres)) return CONTINUE;
    *verdict = nres > 0 && lua_toboolean(L, v);
    return *verdict ? CONTINUE : STOP;
}

/* [-0, +0] 1 allow, 0 deny, -1 no opinion (hooks.h). */
int hd_hook_api_auth(hd_scripts *sc, hd_conn *c, const hd_hook_req *r)
{
    lua_State *L = hooked(sc, HD_HOOK_API_AUTH);
    if (!L) return -1;
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
    hd_conn_client(c, peer, sizeof peer);
    lua_pushstring(L, peer);
    lua_setfield(L, -2, "remote_addr");
    int verdict = -1;
    run(sc, HD_HOOK_API_AUTH, NULL, 1, api_auth_result, &verdict);
    lua_settop(L, base);
    return verdict;
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
    run(sc, HD_HOOK_TOPIC, NULL, 1, topic_result, &t);
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

/* [-0, +0] 1 deliver (*event, *data_json maybe replaced), 0 dropped (hooks.h). */
int hd_hook_publish(hd_scripts *sc, const char *topic, size_t tlen, char **event,
                    char **data_json)
{
    lua_State *L = hooked(sc, HD_HOOK_PUBLISH);
    if (!L) return 1;
    int base = lua_gettop(L);
    lua_createtable(L, 0, 3);
    lua_pushlstring(L, topic, tlen);
    lua_setfield(L, -2, "topic");
    lua_pushstring(L, *event);
    lua_setfield(L, -2, "event");
    hd_luapi_push_json_text(L, *data_json, strlen(*data_json));
    lua_setfield(L, -2, "data");
    publish_call m = {lua_gettop(L), 1, 0};
    run(sc, HD_HOOK_PUBLISH, NULL, 1, publish_result, &m);
    if (!m.deliver) sc->ss.publish_dropped++;
    else if (!m.failed) take_message(sc, L, m.msg, event, data_json); /* failed: unchanged */
    lua_settop(L, base);
    return m.deliver;
}

/* ---- message ----------------------------------------------------------------------- */

typedef struct {
    hd_scripts *sc;
    hd_conn *c;
    const char *topic, *event;
    size_t tlen;
    json_t *payload;
    hd_str *reply;
    char *reason;
    size_t rlen;
    int result; /* 0 none, 1 ok reply, 2 error reply */
    int sock;   /* stack index: the socket table, one for every hook */
} message_call;

/* [-0, +4] socket (the same table), topic, event, payload (fresh for each hook). */
static void push_message(lua_State *L, void *ud)
{
    message_call *m = ud;
    lua_pushvalue(L, m->sock);
    lua_pushlstring(L, m->topic, m->tlen);
    lua_pushstring(L, m->event);
    hd_luapi_push_json(L, m->payload);
}

/* [-0, +0] A table is the ok reply, true an empty one, false (or nil, reason)
 * an error reply, nothing (or a bare nil) no answer; the first answer, a failure or a closed
 * socket stops. Returns the verdict. */
static int message_result(lua_State *L, void *ud, int v, int nres, const char *src)
{
    message_call *m = ud;
    if (nres < 0) {
        snprintf(m->reason, m->rlen, "internal error");
        m->result = 2;
        return STOP;
    }
    if (!hd_conn_open(m->c)) return STOP;
    if (no_opinion(L, v, nres)) return CONTINUE;
    if (lua_istable(L, v)) {
        hd_str js = HD_STR_INIT;
        const char *e = hd_luapi_to_json(L, v, &js);
        if (e || js.len == 0 || js.p[0] != '{') {
            hd_error("message hook (%s): a reply must be a JSON object", src);
            m->sc->ss.errors[HD_HOOK_MESSAGE]++;
            snprintf(m->reason, m->rlen, "internal error");
            m->result = 2;
        } else {
            hd_str_add(m->reply, js.p, js.len);
            m->result = 1;
        }
        hd_str_free(&js);
    } else if (lua_toboolean(L, v)) {
        hd_str_adds(m->reply, "{}");
        m->result = 1;
    } else { /* false, or nil with a reason */
        copy_reason(L, v + 1, m->reason, m->rlen, "refused");
        m->result = 2;
    }
    return m->result ? STOP : CONTINUE;
}

/* [-0, +0] 0 no reply, 1 ok reply, 2 error reply (hooks.h). */
int hd_hook_message(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen,
                    const char *event, json_t *payload, hd_str *reply_json, char *reason,
                    size_t rlen)
{
    lua_State *L = hooked(sc, HD_HOOK_MESSAGE);
    if (!L) return 0;
    int base = lua_gettop(L);
    push_socket(sc, L, c);
    message_call m = {sc, c, topic, event, tlen, payload, reply_json, reason, rlen, 0, base + 1};
    run(sc, HD_HOOK_MESSAGE, push_message, 4, message_result, &m);
    keep_assigns(sc, HD_HOOK_MESSAGE, L, base + 1, c);
    lua_settop(L, base);
    return m.result;
}

/* ---- shutdown ---------------------------------------------------------------------- */

/* [-0, +0] Runs every shutdown hook with phase. */
void hd_hook_shutdown(hd_scripts *sc, const char *phase)
{
    lua_State *L = hooked(sc, HD_HOOK_SHUTDOWN);
    if (!L) return;
    int base = lua_gettop(L);
    lua_pushstring(L, phase);
    run(sc, HD_HOOK_SHUTDOWN, NULL, 1, NULL, NULL);
    lua_settop(L, base);
}

/* ---- leave, disconnect ------------------------------------------------------------- */

/* [-0, +0] Runs every leave hook with (socket, topic). */
void hd_hook_leave(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen)
{
    lua_State *L = hooked(sc, HD_HOOK_LEAVE);
    if (!L) return;
    int base = lua_gettop(L);
    push_socket(sc, L, c);
    lua_pushlstring(L, topic, tlen);
    run(sc, HD_HOOK_LEAVE, NULL, 2, NULL, NULL);
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
    run(sc, HD_HOOK_DISCONNECT, NULL, 2, NULL, NULL);
    lua_settop(L, base);
}
