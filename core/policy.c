#include "policy.h"
#include "err.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

int hd_policy_init(hd_policy *pol, const hd_config *cfg)
{
    memset(pol, 0, sizeof *pol);
    pol->cfg = cfg;
    pol->gen = 1; /* topics start at 0: their first use resolves */
    pol->counts = calloc(cfg->ntopic_rules + 1, sizeof *pol->counts);
    return pol->counts ? 0 : HD_ENOMEM;
}

void hd_policy_free(hd_policy *pol)
{
    free(pol->counts);
    pol->counts = NULL;
}

/* The first config rule matching the topic sets its fields. */
static void apply_rules(const hd_config *cfg, const char *name, size_t len, hd_topic_policy *p)
{
    for (size_t i = 0; i < cfg->ntopic_rules; i++) {
        const hd_topic_rule *r = &cfg->topic_rules[i];
        if (!hd_glob_match(r->match, name, len)) continue;
        p->rule = (int32_t)i;
        if (r->set & HD_TP_TRACKED) p->tracked = r->policy.tracked;
        if (r->set & HD_TP_PRESENCE) p->presence = r->policy.presence;
        if (r->set & HD_TP_THROTTLE) p->throttle_ms = r->policy.throttle_ms;
        if (r->set & HD_TP_DEBOUNCE) p->debounce_ms = r->policy.debounce_ms;
        if (r->set & HD_TP_MAX_WAIT) p->max_wait_ms = r->policy.max_wait_ms;
        if (r->set & HD_TP_MAX_QUEUE) p->max_queue_bytes = r->policy.max_queue_bytes;
        if (r->set & HD_TP_HISTORY) p->history_size = r->policy.history_size;
        if (r->set & HD_TP_HISTORY_TTL) p->history_ttl_ms = r->policy.history_ttl_ms;
        if (r->set & HD_TP_RECOVER_MAX) p->recover_max = r->policy.recover_max;
        if (r->set & HD_TP_COALESCE) p->coalesce = r->policy.coalesce;
        if (r->set & HD_TP_OVERFLOW) p->on_overflow = r->policy.on_overflow;
        return;
    }
}

void hd_policy_for(hd_policy *pol, const char *name, size_t len, hd_topic_policy *out)
{
    hd_topic_policy_default(out);
    apply_rules(pol->cfg, name, len, out);
    if (pol->resolve) pol->resolve(pol->resolve_ud, name, len, out);
}

void hd_policy_invalidate(hd_policy *pol) { pol->gen++; }

void hd_policy_count(hd_policy *pol, const hd_topic_policy *p, int kind, uint64_t n)
{
    if (pol->counts) pol->counts[p->rule + 1][kind] += n;
}
