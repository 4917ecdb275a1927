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
typedef struct hd_task hd_task;
struct hd_httpc;

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
    uint64_t io_timeouts;            /* hook calls abandoned after scripts.io_timeout_ms */
    uint64_t discarded;              /* hook runs whose socket closed while they waited */
    uint64_t http_requests;          /* herald.http.request calls started */
    uint64_t http_errors;            /* of which failed (nil, err) */
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
    hd_script *retired;              /* older generations that still have tasks */
    size_t nstates;                  /* Lua states alive: cur and the retired */
    hd_task *wait_head, *wait_tail;  /* tasks waiting for I/O, by deadline */
    size_t nwaiting;
    uv_timer_t *wait_timer;          /* fires at the first deadline (made at the first wait) */
    struct hd_httpc *httpc;          /* herald.http.request's client (made at the first) */
    int stopping;                    /* hd_script_stop runs: no new requests */
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
/* At shutdown: fails every task still waiting (their resumed callbacks
 * run with -1), frees the generations, and closes the HTTP client and the
 * wait timer (the loop must run on for their close callbacks). */
void hd_script_stop(hd_scripts *sc);

/* Bytes the Lua states hold (the running one and the retired), garbage
 * not yet collected included. */
size_t hd_script_memory(const hd_scripts *sc);

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
/* [-0, +2] Pushes onto L (a thread of s) the file name (a string) and the
 * function of hook function i of h. */
void hd_script__push_hook(hd_script *s, lua_State *L, hd_hook h, int i);
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

/* ---- tasks: hook calls that may wait (for hooks.c) ------------------------------

 * A task is one run of hook functions that may wait for I/O
 * (herald.http.request): each function runs in a coroutine of its own,
 * under the budget, which counts its running time across resumptions; a
 * wait is bounded by scripts.io_timeout_ms. The values a run keeps
 * between its calls (arguments, merged results) live on the task's hold,
 * a thread that never runs. A task pins its generation: after a reload it
 * finishes on the old Lua state, which is freed after its last task. */
typedef void hd_task_fn(hd_task *t, int rc, int nres);

struct hd_task {
    hd_task_fn *resumed;   /* the caller's: a call that waited is over: rc 0 with nres
                            * results on the hold (above what was there), or -1 (failed,
                            * timed out or the server is stopping; logged and counted) */
    int nowait;            /* the caller cannot wait: herald.http.request raises */
    uint64_t conn_id;      /* the connection it runs for (its log lines say so), or 0 */
    int cancel;            /* its owner gave it up during a call: that call may not wait */
    /* script.c's */
    hd_script *s;          /* the generation, pinned */
    lua_State *hold;       /* the run's values */
    int hold_ref;          /* (registry references anchoring the threads) */
    lua_State *co;         /* the call in progress, or NULL */
    int co_ref;
    int run;               /* hd_hook (or a timer) */
    int in_call;           /* a call of it is running now */
    char src[128];         /* the running function's file */
    uint64_t insns, ns;    /* budget the call has spent */
    uint64_t deadline;     /* loop ms: its wait ends (io_timeout_ms) */
    hd_task *wprev, *wnext;/* on sc's waiting list (listed) */
    int listed;
    struct lua_wait *io;   /* what it waits for */
};

/* Starts a task of hook h on the running generation: 0, or -1 without
 * scripts or memory. resumed, nowait and conn_id are the caller's to set. */
int hd_task_begin(hd_scripts *sc, hd_task *t, int h);
/* [-(nargs+1), +nres | +0] on the hold: calls the function below the nargs
 * arguments in a coroutine (src names its file, for the log). Returns 0
 * when it returned (*nres results now on the hold), -1 when it failed
 * (logged, counted; nothing pushed), 1 when it waits: t->resumed follows. */
int hd_task_call(hd_task *t, const char *src, int nargs, int *nres);
/* Ends a task: a call still waiting is abandoned (its request cancelled,
 * no callback), the hold goes, and the generation is unpinned (a retired
 * one freed after its last task). Never call it from inside the call. */
void hd_task_end(hd_task *t);

#endif
