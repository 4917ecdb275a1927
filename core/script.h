/* The Lua policy layer: operator scripts and plugins in one LuaJIT state,
 * hook calls under a budget, the herald.* API, timers, hot reload.
 *
 * A generation (hd_script) is one lua_State with its scripts loaded. Reload
 * builds a new generation and swaps it in only if every script loaded and
 * every init() hook succeeded; the old one is then freed with its timers.
 * Connections keep their identity and assigns in C (JSON text), so they
 * survive reloads.
 *
 * Every hook call goes through one guarded call: pcall with a traceback, an
 * instruction budget and a wall-clock budget (JIT off for operator chunks so
 * the count hook fires in loops). On failure the hook's safe default
 * applies, the log names file:line and the call chain, and
 * herald_hook_errors_total counts it. The hook entry points, which run a
 * hook's functions and read their results, are in hooks.h. */
#ifndef HD_SCRIPT_H
#define HD_SCRIPT_H

#include "buf.h"
#include "conn.h"
#include "publish.h"

#include <jansson.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    HD_HOOK_AUTHENTICATE,
    HD_HOOK_JOIN,
    HD_HOOK_API_AUTH,
    HD_HOOK_TOPIC,
    HD_HOOK_PUBLISH,
    HD_HOOK_MESSAGE,
    HD_HOOK_SHUTDOWN,
    HD_HOOK_INIT,
    HD_HOOK_LEAVE,
    HD_HOOK_DISCONNECT,
    HD_HOOK_COUNT
} hd_hook;

typedef struct hd_script hd_script;

/* A header of a request: offsets into the request's header bytes. */
typedef struct hd_hdr {
    uint32_t name_off, name_len, val_off, val_len;
} hd_hdr;

/* What hooks see of an HTTP request (the protocol layer fills it; every
 * pointer borrowed for the call). */
typedef struct hd_hook_req {
    const char *method;              /* "GET", ... */
    const char *path;
    size_t path_len;
    const char *query;               /* after '?', or NULL */
    size_t query_len;
    const char *hbuf;                /* header names and values */
    const hd_hdr *h;
    uint32_t nh;
} hd_hook_req;

typedef struct hd_script_stats {
    uint64_t calls[HD_HOOK_COUNT];
    uint64_t errors[HD_HOOK_COUNT];  /* failed: error, budget, bad result */
    uint64_t budget_exceeded;
    uint64_t timer_errors;
    uint64_t reloads_ok;
    uint64_t reloads_failed;
    uint64_t publish_dropped;        /* messages a publish hook dropped */
    uint64_t generation;             /* of the running scripts */
    char last_error[512];            /* of the last failed reload ("" if none) */
    double last_reload_at;           /* unix seconds */
} hd_script_stats;

/* The scripts of a node: the running generation and what herald.* reaches. */
typedef struct hd_scripts {
    uv_loop_t *loop;
    const hd_config *cfg;            /* borrowed */
    hd_engine *eng;                  /* herald.publish, subscribers, presence */
    hd_net *net;                     /* herald.disconnect, socket lookups */
    const char *node_id;             /* herald.node_id() */
    hd_script *cur;                  /* the running generation, or NULL */
    hd_script_stats ss;
} hd_scripts;

/* Prepares sc (no scripts loaded yet). */
void hd_scripts_init(hd_scripts *sc, uv_loop_t *loop, const hd_config *cfg, hd_engine *eng,
                     hd_net *net, const char *node_id);

/* The name of a hook ("authenticate", ...). */
const char *hd_hook_name(hd_hook h);

/* Loads srv->cfg's scripts and plugins into a new generation and makes it
 * current. On failure returns HD_ECONFIG with a message naming file:line
 * in err, and srv keeps whatever it had. */
int hd_script_start(hd_scripts *sc, char *err, size_t errlen);
/* Reloads: builds a new generation and swaps it in on success (dropping
 * the topic policy cache, cancelling the old timers). Returns 0 or
 * HD_ECONFIG (err filled; old scripts stay). */
int hd_script_reload(hd_scripts *sc, char *err, size_t errlen);
/* Frees the current generation (at shutdown). */
void hd_script_stop(hd_scripts *sc);

/* True when the running scripts define hook h. */
int hd_script_has(hd_scripts *sc, hd_hook h);

/* Appends a JSON object describing the scripts (generation, files, last
 * reload result) to out. */
void hd_script_status_json(hd_scripts *sc, hd_str *out);

/* ---- for hooks.c only (the hook runner) ------------------------------------- */

/* The Lua state of generation s. */
lua_State *hd_script__state(hd_script *s);
/* How many functions s has for hook h (in load order, 1-based). */
int hd_script__nhooks(hd_script *s, hd_hook h);
/* [-0, +2] Pushes the file name (a string) and the function of hook
 * function i of h. */
void hd_script__push_hook(hd_script *s, hd_hook h, int i);
/* [-0, +1] Pushes lua/herald/config.lua's topic_policy(t): t's policy
 * fields checked as a `topics` rule's are, returned as a new table, or nil
 * and a list of error lines ("history_size: expected ..., got ..."). It
 * calls no metamethod of t and runs no script code. */
void hd_script__push_policy_check(hd_script *s);
/* [-(nargs+1), +nres | +0] Calls the function below the nargs arguments
 * under the budget, with a traceback handler; run is an hd_hook (or one of
 * script.c's own kinds of call) and src names the file, for the log. On
 * success leaves nres results (LUA_MULTRET: all), counts the call and
 * returns 0; on failure logs "<run> (<src>) failed: <error>; <traceback>",
 * counts it, keeps the error (without the traceback) in the generation for
 * the caller, pops everything and returns -1. */
int hd_script__guarded(hd_script *s, int run, const char *src, int nargs, int nres);

#endif
