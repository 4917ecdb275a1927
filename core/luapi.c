#include "luapi.h"
#include "util.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <uv.h>

/* The JSON null sentinel: a light userdata of this static's address. */
static const char json_null_key = 0;
#define JSON_NULL ((void *)&json_null_key)

static int is_null(lua_State *L, int idx)
{
    return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == JSON_NULL;
}

/* Returns n > 0 when the table at idx has exactly the keys 1..n, 0 when it
 * is empty, -1 otherwise. */
static long array_length(lua_State *L, int idx)
{
    long n = (long)lua_objlen(L, idx), count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TNUMBER) {
            lua_pop(L, 1);
            return -1;
        }
        double k = lua_tonumber(L, -1);
        if (k != floor(k) || k < 1 || k > (double)n) {
            lua_pop(L, 1);
            return -1;
        }
        count++;
    }
    return count == n ? n : -1;
}

static const char *encode(lua_State *L, int idx, hd_str *out, int depth)
{
    if (depth > HD_LUAPI_MAX_DEPTH) return "nesting too deep (or a cycle)";
    if (idx < 0) idx = lua_gettop(L) + idx + 1;
    switch (lua_type(L, idx)) {
    case LUA_TNIL: hd_str_adds(out, "null"); return NULL;
    case LUA_TBOOLEAN: hd_str_adds(out, lua_toboolean(L, idx) ? "true" : "false"); return NULL;
    case LUA_TNUMBER: {
        double d = lua_tonumber(L, idx);
        if (isnan(d) || isinf(d)) return "NaN or infinity cannot be encoded";
        if (d == floor(d) && fabs(d) < 1e15) hd_str_printf(out, "%.0f", d);
        else hd_str_printf(out, "%.17g", d);
        return NULL;
    }
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (!hd_utf8_valid((const uint8_t *)s, len)) return "a string is not valid UTF-8";
        hd_str_add_json(out, s, len);
        return NULL;
    }
    case LUA_TLIGHTUSERDATA:
        if (is_null(L, idx)) {
            hd_str_adds(out, "null");
            return NULL;
        }
        return "a userdata cannot be encoded";
    case LUA_TTABLE: {
        if (!lua_checkstack(L, 4)) return "out of stack";
        long n = array_length(L, idx);
        if (n > 0) {
            hd_str_addc(out, '[');
            for (long i = 1; i <= n; i++) {
                if (i > 1) hd_str_addc(out, ',');
                lua_rawgeti(L, idx, (int)i);
                const char *e = encode(L, -1, out, depth + 1);
                lua_pop(L, 1);
                if (e) return e;
            }
            hd_str_addc(out, ']');
            return NULL;
        }
        hd_str_addc(out, '{');
        int first = 1;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            /* Errors return at once: hd_luapi_to_json restores the stack. */
            size_t kl;
            const char *k;
            int kcopy = 0;
            if (lua_type(L, -2) == LUA_TSTRING) {
                k = lua_tolstring(L, -2, &kl);
            } else if (lua_type(L, -2) == LUA_TNUMBER) {
                lua_pushvalue(L, -2); /* convert a copy: lua_next needs the key intact */
                k = lua_tolstring(L, -1, &kl);
                kcopy = 1;
            } else {
                return "a table key is neither a string nor a number";
            }
            if (!hd_utf8_valid((const uint8_t *)k, kl)) return "a table key is not valid UTF-8";
            if (!first) hd_str_addc(out, ',');
            first = 0;
            hd_str_add_json(out, k, kl);
            hd_str_addc(out, ':');
            const char *e = encode(L, kcopy ? -2 : -1, out, depth + 1);
            if (e) return e;
            lua_pop(L, 1 + kcopy);
        }
        hd_str_addc(out, '}');
        return NULL;
    }
    default: return "a function, thread or userdata cannot be encoded";
    }
}

const char *hd_luapi_to_json(lua_State *L, int idx, hd_str *out)
{
    int top = lua_gettop(L);
    const char *e = encode(L, idx, out, 0);
    lua_settop(L, top);
    if (!e && out->oom) e = "out of memory";
    return e;
}

void hd_luapi_push_json(lua_State *L, json_t *v)
{
    luaL_checkstack(L, 4, "JSON too deep");
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        lua_createtable(L, 0, (int)json_object_size(v));
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x)
        {
            lua_pushstring(L, k);
            hd_luapi_push_json(L, x);
            lua_rawset(L, -3);
        }
        break;
    }
    case JSON_ARRAY: {
        lua_createtable(L, (int)json_array_size(v), 0);
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            hd_luapi_push_json(L, x);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    }
    case JSON_STRING: lua_pushlstring(L, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER: lua_pushnumber(L, (lua_Number)json_integer_value(v)); break;
    case JSON_REAL: lua_pushnumber(L, json_real_value(v)); break;
    case JSON_TRUE: lua_pushboolean(L, 1); break;
    case JSON_FALSE: lua_pushboolean(L, 0); break;
    default: lua_pushlightuserdata(L, JSON_NULL); break;
    }
}

void hd_luapi_push_json_text(lua_State *L, const char *text, size_t len)
{
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY, NULL);
    if (!v) {
        lua_pushnil(L);
        return;
    }
    hd_luapi_push_json(L, v);
    json_decref(v);
}

void hd_luapi_hide_string_token(char *msg, size_t size)
{
    static const char near[] = " near '";
    char *at = strstr(msg, near);
    if (!at) return;
    const char *tok = at + sizeof near - 1;
    if (tok[0] == '"' || tok[0] == '\'' || (tok[0] == '[' && (tok[1] == '[' || tok[1] == '=')))
        snprintf(at, size - (size_t)(at - msg), " near a string literal (not shown)");
}

/* ---- the functions ------------------------------------------------------ */

static int l_json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    hd_str s = HD_STR_INIT;
    const char *e = hd_luapi_to_json(L, 1, &s);
    if (e) {
        hd_str_free(&s);
        lua_pushnil(L);
        lua_pushstring(L, e);
        return 2;
    }
    lua_pushlstring(L, s.p, s.len);
    hd_str_free(&s);
    return 1;
}

static int l_json_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    json_error_t err;
    json_t *v = json_loadb(s, len, JSON_DECODE_ANY, &err);
    if (!v) {
        lua_pushnil(L);
        lua_pushfstring(L, "invalid JSON: %s at line %d, column %d", err.text, err.line,
                        err.column);
        return 2;
    }
    hd_luapi_push_json(L, v);
    json_decref(v);
    return 1;
}

static int l_hmac_sha256(lua_State *L)
{
    size_t kl, dl;
    const char *k = luaL_checklstring(L, 1, &kl);
    const char *d = luaL_checklstring(L, 2, &dl);
    uint8_t out[32];
    hd_hmac_sha256(k, kl, d, dl, out);
    lua_pushlstring(L, (const char *)out, 32);
    return 1;
}

static int l_sha256(lua_State *L)
{
    size_t dl;
    const char *d = luaL_checklstring(L, 1, &dl);
    uint8_t out[32];
    hd_sha256(d, dl, out);
    lua_pushlstring(L, (const char *)out, 32);
    return 1;
}

static int l_ct_equal(lua_State *L)
{
    size_t al, bl;
    const char *a = luaL_checklstring(L, 1, &al);
    const char *b = luaL_checklstring(L, 2, &bl);
    lua_pushboolean(L, hd_ct_equal(a, al, b, bl));
    return 1;
}

static int b64_encode(lua_State *L, int url)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    /* Encode in slices so no large C buffer is held across a raising call. */
    for (size_t i = 0; i < len; i += 768) {
        char out[1025 + 4];
        size_t n = hd_base64_encode((const uint8_t *)s + i, len - i < 768 ? len - i : 768, out);
        if (url) {
            for (size_t j = 0; j < n; j++) out[j] = out[j] == '+' ? '-' : out[j] == '/' ? '_' : out[j];
            while (n && out[n - 1] == '=') n--;
        }
        luaL_addlstring(&b, out, n);
    }
    luaL_pushresult(&b);
    return 1;
}

static int l_b64_encode(lua_State *L) { return b64_encode(L, 0); }
static int l_b64url_encode(lua_State *L) { return b64_encode(L, 1); }

static int l_b64_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    uint8_t *out = lua_newuserdata(L, len / 4 * 3 + 4);
    long n = hd_base64_decode(s, len, out);
    if (n < 0) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, (const char *)out, (size_t)n);
    return 1;
}

static int l_glob(lua_State *L)
{
    size_t pl, sl;
    const char *p = luaL_checklstring(L, 1, &pl);
    const char *s = luaL_checklstring(L, 2, &sl);
    /* hd_glob_match reads the pattern up to its NUL: one inside would cut it. */
    if (memchr(p, 0, pl)) return luaL_argerror(L, 1, "pattern contains a NUL byte");
    lua_pushboolean(L, hd_glob_match(p, s, sl));
    return 1;
}

static int l_now(lua_State *L)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    lua_pushnumber(L, (lua_Number)tv.tv_sec + tv.tv_usec / 1e6);
    return 1;
}

static int l_monotonic_ms(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e6);
    return 1;
}

/* pcall/xpcall for sandboxes: once the budget flag is set the error is
 * re-raised, so that a chunk cannot swallow its own budget error, and
 * xpcall's handler is skipped (a handler runs with the count hook off, so
 * a looping one would never be stopped). They are Lua over the VM's own
 * pcall and xpcall, which a coroutine can be suspended across: a hook may
 * wait (herald.http.request) inside them. */
static const char safe_calls[] =
    "local vm, spent, error, select, type = {}, nil, nil, nil, nil\n"
    "vm.pcall, vm.xpcall, spent, error, select, type = ...\n"
    "local function pass(ok, ...)\n"
    "  if spent() then error((...), 0) end\n"
    "  return ok, ...\n"
    "end\n"
    "local function pcall(...)\n"
    "  if select('#', ...) == 0 then error(\"bad argument #1 to 'pcall' (value expected)\", 2) end\n"
    "  return pass(vm.pcall(...))\n"
    "end\n"
    "local function xpcall(f, handler, ...)\n"
    "  if type(handler) ~= 'function' then\n"
    "    error(\"bad argument #2 to 'xpcall' (function expected, got \" ..\n"
    "          (handler == nil and 'no value' or type(handler)) .. ')', 2)\n"
    "  end\n"
    "  return pass(vm.xpcall(f, function(e)\n"
    "    if spent() then return e end\n"
    "    return handler(e)\n"
    "  end, ...))\n"
    "end\n"
    "return pcall, xpcall\n";

/* Whether the budget flag (upvalue 1) is set. */
static int l_spent(lua_State *L)
{
    lua_pushboolean(L, *(const int *)lua_touserdata(L, lua_upvalueindex(1)));
    return 1;
}

/* string.rep with a cap on the result: it runs in C, where neither the
 * instruction budget nor the heap cap can stop it. Upvalue 1: the original. */
static int l_bounded_rep(lua_State *L)
{
    size_t l = 0, sl = 0;
    luaL_checklstring(L, 1, &l);
    lua_Number n = luaL_checknumber(L, 2);
    luaL_optlstring(L, 3, "", &sl);
    if (n >= 1 && (double)l * n + (double)sl * (n - 1) > (double)HD_LUAPI_MAX_REP)
        return luaL_error(L, "string.rep: the result would be over %d MiB", HD_LUAPI_MAX_REP >> 20);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

void hd_luapi_bound_rep(lua_State *L)
{
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "rep");
    lua_pushcclosure(L, l_bounded_rep, 1);
    lua_setfield(L, -2, "rep");
    lua_pop(L, 1);
}

void hd_luapi_fill_sandbox(lua_State *L, const char *const *names, const int *exceeded)
{
    for (int i = 0; names[i]; i++) {
        lua_getglobal(L, names[i]);
        if (lua_istable(L, -1)) {
            lua_newtable(L);
            lua_pushnil(L);
            while (lua_next(L, -3)) {
                lua_pushvalue(L, -2);
                lua_insert(L, -2);
                lua_rawset(L, -4);
            }
            lua_remove(L, -2);
        }
        lua_setfield(L, -2, names[i]);
    }
    if (luaL_loadbuffer(L, safe_calls, sizeof safe_calls - 1, "=[herald sandbox]") != 0) {
        lua_error(L); /* (only out of memory) */
    }
    lua_getglobal(L, "pcall");
    lua_getglobal(L, "xpcall");
    lua_pushlightuserdata(L, (void *)exceeded);
    lua_pushcclosure(L, l_spent, 1);
    lua_getglobal(L, "error");
    lua_getglobal(L, "select");
    lua_getglobal(L, "type");
    lua_call(L, 6, 2);
    lua_setfield(L, -3, "xpcall");
    lua_setfield(L, -2, "pcall");
}

void hd_luapi_push_pure(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"json_encode", l_json_encode}, {"json_decode", l_json_decode},
        {"hmac_sha256", l_hmac_sha256}, {"sha256", l_sha256},
        {"ct_equal", l_ct_equal},       {"b64_encode", l_b64_encode},
        {"b64url_encode", l_b64url_encode}, {"b64_decode", l_b64_decode},
        {"now", l_now},                 {"monotonic_ms", l_monotonic_ms},
        {"glob", l_glob},               {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    lua_pushlightuserdata(L, JSON_NULL);
    lua_setfield(L, -2, "null");
}

/* The Lua module "herald.c" (pure functions only), for busted specs. */
int luaopen_herald_c(lua_State *L);
int luaopen_herald_c(lua_State *L)
{
    hd_luapi_push_pure(L);
    return 1;
}
