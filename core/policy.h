/* Topic policy: the config's rules and a resolver, so that the engine never
 * calls Lua itself.
 *
 * A topic's policy is the defaults, then the first config rule (topics =
 * {...}) whose glob matches, then what the resolver adds: the node wires
 * the scripts' topic(name) hooks there at start-up. Topics cache the result
 * until the generation changes (hd_policy_invalidate, on every reload). */
#ifndef HD_POLICY_H
#define HD_POLICY_H

#include "config.h"

#include <stddef.h>
#include <stdint.h>

/* Merges over *p (which holds the defaults and rules already). */
typedef void (*hd_policy_resolver)(void *ud, const char *name, size_t len, hd_topic_policy *p);

typedef struct hd_policy {
    const hd_config *cfg;           /* borrowed */
    uint64_t gen;                   /* of cached policies; starts at 1 */
    hd_policy_resolver resolve;     /* or NULL */
    void *resolve_ud;
    uint64_t (*counts)[HD_TC_COUNT]; /* per config rule, + 1 (index 0) for "other" */
} hd_policy;

/* Returns 0 or HD_ENOMEM. */
int hd_policy_init(hd_policy *pol, const hd_config *cfg);
void hd_policy_free(hd_policy *pol);

/* Computes the policy of a topic by name, uncached. */
void hd_policy_for(hd_policy *pol, const char *name, size_t len, hd_topic_policy *out);
/* Makes every cached policy stale (after a reload). */
void hd_policy_invalidate(hd_policy *pol);
/* Adds n to counter kind (HD_TC_*) of the rule policy p came from. */
void hd_policy_count(hd_policy *pol, const hd_topic_policy *p, int kind, uint64_t n);

#endif
