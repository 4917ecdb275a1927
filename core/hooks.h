/* The hook entry points: what the protocol and service layers call to ask
 * the operator's scripts. Each builds its hook's arguments once, runs the
 * hook's functions in load order through one runner (each call guarded:
 * budget, traceback, counted), and folds their results:
 *   authenticate, join, api_auth: the first refusal wins and ends the run;
 *   publish: the hooks chain (each sees the message the one before returned);
 *   topic: the results merge, each table all or nothing;
 *   message: the first hook with an answer ends the run;
 *   shutdown, leave, disconnect: every hook runs, results ignored.
 * One rule for nil: a bare `return`, or `return nil` (no reason after
 * it), is no opinion everywhere; false, or nil with a reason, refuses
 * (publish: drops; topic cannot refuse); returned tables are read raw (no
 * metamethods). socket.assigns is decoded at its first read and, after
 * a join, message or leave run that read it, written back to c->assigns
 * when its meaning changed. Without scripts (or without the
 * hook) each returns its default at once, without touching Lua. */
#ifndef HD_HOOKS_H
#define HD_HOOKS_H

#include "buf.h"
#include "conn.h"
#include "policy.h"
#include "script.h"

#include <jansson.h>
#include <stddef.h>

/* ---- hooks that may wait ------------------------------------------------------------
 * authenticate, join, api_auth, publish, message and shutdown may call
 * herald.http.request, which suspends the hook until the answer while the
 * loop goes on. Each has a _start form: it runs the hooks and calls done
 * with the results, at once when nothing waited (done has run before
 * _start returns NULL), or later (_start returned the run, which the
 * caller may cancel until done runs). The results are the same as the
 * plain forms' below (which cannot wait: herald.http.request raises in
 * them). A run started on a generation finishes there after a reload. */

typedef struct hd_hook_run hd_hook_run;

typedef struct hd_hook_result {
    int verdict;                 /* as the plain form returns */
    char *id, *assigns;          /* authenticate: identity and assigns JSON (malloc'd, or NULL) */
    hd_str reply;                /* join: the reply object ("{}" by default); message: the reply */
    hd_str meta;                 /* join: the presence meta a hook returned (or empty) */
    char *event, *data;          /* publish: the message to deliver */
    char reason[256];            /* a refusal's reason (client-safe) */
} hd_hook_result;

/* The results: done may take (and then NULL) the malloc'd fields; the
 * rest is freed after it returns. */
typedef void hd_hook_done(void *ud, hd_hook_result *res);

hd_hook_run *hd_hook_authenticate_start(hd_scripts *sc, hd_conn *c, const hd_hook_req *r,
                                        const char *token, hd_hook_done *done, void *ud);
hd_hook_run *hd_hook_join_start(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen,
                                json_t *payload, hd_hook_done *done, void *ud);
hd_hook_run *hd_hook_api_auth_start(hd_scripts *sc, hd_conn *c, const hd_hook_req *r,
                                    hd_hook_done *done, void *ud);
/* (event and data_json are copied.) */
hd_hook_run *hd_hook_publish_start(hd_scripts *sc, const char *topic, size_t tlen,
                                   const char *event, const char *data_json, hd_hook_done *done,
                                   void *ud);
hd_hook_run *hd_hook_message_start(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen,
                                   const char *event, json_t *payload, hd_hook_done *done,
                                   void *ud);
/* The message hooks for a binary push: message(socket, topic, event,
 * payload, meta) with payload a Lua string of the bytes (data, dlen:
 * copied) and meta = {binary = true}; answered as hd_hook_message_start. */
hd_hook_run *hd_hook_message_binary_start(hd_scripts *sc, hd_conn *c, const char *topic,
                                          size_t tlen, const char *event, const void *data,
                                          size_t dlen, hd_hook_done *done, void *ud);
hd_hook_run *hd_hook_shutdown_start(hd_scripts *sc, const char *phase, hd_hook_done *done,
                                    void *ud);
/* Cancels a run whose done has not run (its socket closed): done never
 * runs, its request is cancelled, herald_hooks_discarded_total counts it.
 * Called from inside the run's own call (a hook that closed its socket),
 * the run ends once that call returns. */
void hd_hook_cancel(hd_hook_run *run);

/* ---- the plain forms ---------------------------------------------------------------- */

/* authenticate(req). Returns 1 to allow (*id and *assigns_json are set,
 * malloc'd, either may be NULL), 0 to deny with reason (a client-safe
 * text). Without the hook: allow. On failure: deny, "unauthorized". */
int hd_hook_authenticate(hd_scripts *sc, hd_conn *c, const hd_hook_req *r, const char *token,
                         char **id, char **assigns_json, char *reason, size_t rlen);

/* join(socket, topic, payload). Returns 1 to allow (reply_json receives the
 * reply object, "{}" by default; meta_json, if not NULL, the presence meta
 * object a hook returned, else stays empty), 0 to deny with reason.
 * Without the hook: allow. On failure: deny, "join crashed"; when a hook
 * closed the socket: deny, "closed". */
int hd_hook_join(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen, json_t *payload,
                 hd_str *reply_json, hd_str *meta_json, char *reason, size_t rlen);

/* api_auth(req). Returns 1 allow, 0 deny, -1 no hook or every hook deferred
 * (the static token rule applies). On failure: deny. */
int hd_hook_api_auth(hd_scripts *sc, hd_conn *c, const hd_hook_req *r);

/* topic(name): fills *p (already holding the defaults) from the merged
 * results. On failure p keeps what the other hooks gave. */
void hd_hook_topic(hd_scripts *sc, const char *topic, size_t tlen, hd_topic_policy *p);

/* The same as a policy resolver (hd_policy_resolver; ud is the hd_scripts). */
void hd_hook_resolve(void *ud, const char *topic, size_t tlen, hd_topic_policy *p);

/* publish(msg) for one topic. *event and *data_json are in/out (malloc'd
 * strings, replaced when a hook changes them). Returns 1 to deliver, 0 when
 * a hook dropped the message. On failure: deliver unchanged. */
int hd_hook_publish(hd_scripts *sc, const char *topic, size_t tlen, char **event,
                    char **data_json);

/* message(socket, topic, event, payload). Returns 0 for no reply, 1 with an
 * ok reply (reply_json), 2 with an error reply (reason). On failure: 2,
 * "internal error". */
int hd_hook_message(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen,
                    const char *event, json_t *payload, hd_str *reply_json, char *reason,
                    size_t rlen);

/* shutdown(phase): every hook, whatever the others did. */
void hd_hook_shutdown(hd_scripts *sc, const char *phase);

/* leave(socket, topic): c left topic (already unlinked from it). Every
 * hook runs; results are ignored. c must not be freed yet (its close
 * callback has not run); it may be closing. */
void hd_hook_leave(hd_scripts *sc, hd_conn *c, const char *topic, size_t tlen);

/* disconnect(socket, reason): c's socket is closing (reason: "closed",
 * "idle timeout", a close reason; borrowed). Every hook runs; results are
 * ignored. The caller runs it once per socket, after the leaves. */
void hd_hook_disconnect(hd_scripts *sc, hd_conn *c, const char *reason);

#endif
