/* Rate shaping at the sender: throttle, debounce and coalescing per topic.
 *
 * A topic whose policy sets throttle_ms or debounce_ms gets a shaper that
 * holds published frames and releases them:
 *   throttle_ms   at most one release per window: a message arriving while
 *                 no window is open goes out at once and opens one; later
 *                 ones wait for the window's end and go out together.
 *   debounce_ms   a release once the topic has been quiet for debounce_ms,
 *                 but never later than max_wait_ms after the first pending
 *                 message (max_wait_ms 0: no cap).
 *   coalesce      "latest" keeps only the newest pending frame per event
 *                 name; "none" keeps them all, in order.
 * Frames released together are queued in one loop turn, so each connection
 * gets them in one write. Pending frames are released, never dropped, when
 * the server drains; if the topic loses its last subscriber they are
 * counted as unheard. */
#ifndef HD_SHAPER_H
#define HD_SHAPER_H

#include "buf.h"
#include "topic.h"

#include <uv.h>

struct hd_shaper;

typedef struct hd_shapers {
    uv_loop_t *loop;
    hd_stats *st;
    hd_topics *topics;
    struct hd_shaper *list;        /* topics with rate shaping */
    /* The clock (loop time in ms): uv_now by default; tests replace it. */
    uint64_t (*now)(struct hd_shapers *sh);
} hd_shapers;

/* Prepares sh. */
void hd_shapers_init(hd_shapers *sh, uv_loop_t *loop, hd_stats *st, hd_topics *topics);

/* Returns 1 when the policy shapes (throttle or debounce). */
int hd_shaper_applies(const hd_topic_policy *p);

/* Takes a published frame for a shaped topic: holds it or releases it at
 * once. event (elen bytes) names it for coalescing. Returns the number of
 * connections it was queued on now (0 when held). */
size_t hd_shaper_submit(hd_shapers *sh, hd_topic *topic, const hd_topic_policy *p,
                        const char *event, size_t elen, hd_buf *frame);

/* Releases everything a topic's shaper holds (e.g. its policy no longer
 * shapes). Returns deliveries. */
size_t hd_shaper_release(hd_shapers *sh, hd_topic *topic);
/* Releases every shaper's pending frames now (the drain's flush phase). */
void hd_shaper_release_all(hd_shapers *sh);
/* Frees a topic's shaper (the topic is being freed). */
void hd_shaper_forget(hd_shapers *sh, hd_topic *topic);

#endif
