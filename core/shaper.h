/* Rate shaping at the origin: throttle, debounce and coalescing per topic.
 *
 * A publish to a topic whose policy sets throttle_ms or debounce_ms goes to
 * the topic's shaper (keyed by the topic's name: a node shapes what it
 * publishes whether or not it has subscribers of the topic itself, since
 * in a cluster the other nodes deliver what it releases, unshaped). The
 * shaper holds published frames and releases them:
 *   throttle_ms   at most one release per window: a message arriving while
 *                 no window is open goes out at once and opens one; later
 *                 ones wait for the window's end and go out together.
 *   debounce_ms   a release once the topic has been quiet for debounce_ms,
 *                 but never later than max_wait_ms after the first pending
 *                 message (max_wait_ms 0: no cap).
 *   coalesce      "latest" keeps only the newest pending frame per event
 *                 name; "none" keeps them all, in order.
 * Each released frame goes to the release callback (the engine: the
 * observers and the local fan-out). Frames released together are queued
 * in one loop turn, so each connection gets them in one write. Pending
 * frames are released, never dropped, when the server drains. A shaper
 * lives while it holds frames or its window is open. */
#ifndef HD_SHAPER_H
#define HD_SHAPER_H

#include "buf.h"
#include "policy.h"
#include "stats.h"

#include <uv.h>

struct hd_shaper;

/* A frame goes out: returns the local connections it was queued on. */
typedef size_t (*hd_shaper_release_fn)(void *ud, const char *topic, size_t tlen,
                                       const char *event, size_t elen, hd_buf *frame);

typedef struct hd_shapers {
    uv_loop_t *loop;
    hd_stats *st;
    hd_policy *pol;                /* the coalesced counters (may be NULL) */
    hd_shaper_release_fn release;
    void *release_ud;
    struct hd_shaper **slots;      /* by topic name */
    size_t nslots, count;
    struct hd_shaper *list;        /* every shaper */
    /* The clock (loop time in ms): uv_now by default; tests replace it. */
    uint64_t (*now)(struct hd_shapers *sh);
} hd_shapers;

/* Prepares sh. */
void hd_shapers_init(hd_shapers *sh, uv_loop_t *loop, hd_stats *st, hd_policy *pol,
                     hd_shaper_release_fn release, void *ud);
/* Frees every shaper (at stop): what they hold is dropped, counted as
 * unheard; their timers close in the loop. */
void hd_shapers_close(hd_shapers *sh);

/* Returns 1 when the policy shapes (throttle or debounce). */
int hd_shaper_applies(const hd_topic_policy *p);

/* Takes a published frame (borrowed) of the topic under policy p: holds it
 * or releases it at once. event (elen bytes) names it for coalescing.
 * Returns the local connections it was queued on now (0 when held). */
size_t hd_shaper_submit(hd_shapers *sh, const char *topic, size_t tlen,
                        const hd_topic_policy *p, const char *event, size_t elen, hd_buf *frame);

/* Releases everything the topic's shaper holds and ends it (its policy no
 * longer shapes). Returns local deliveries (0: no shaper). */
size_t hd_shaper_release(hd_shapers *sh, const char *topic, size_t tlen);
/* Releases every shaper's pending frames now (the drain's flush phase). */
void hd_shaper_release_all(hd_shapers *sh);
/* 1 while the topic has a shaper. */
int hd_shaper_active(const hd_shapers *sh, const char *topic, size_t tlen);

#endif
