#include "shaper.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

typedef struct held {
    struct held *next;
    hd_buf *frame;       /* one reference */
    size_t elen;
    char event[];        /* for coalescing */
} held;

typedef struct hd_shaper {
    uv_timer_t timer;
    struct hd_shaper *prev, *next; /* on hd_shapers.list */
    hd_shapers *set;
    hd_topic *topic;
    held *head, *tail;
    size_t count;
    uint64_t first_pending;        /* loop time of the oldest held frame */
    int window_open;               /* throttle: a window is running */
} hd_shaper;

static uint64_t loop_now(hd_shapers *sh) { return uv_now(sh->loop); }

void hd_shapers_init(hd_shapers *sh, uv_loop_t *loop, hd_stats *st, hd_topics *topics)
{
    sh->loop = loop;
    sh->st = st;
    sh->topics = topics;
    sh->list = NULL;
    sh->now = loop_now;
}

int hd_shaper_applies(const hd_topic_policy *p) { return p->throttle_ms || p->debounce_ms; }

static void on_closed(uv_handle_t *h) { free(h->data); }

static size_t release(hd_shaper *sh)
{
    hd_shapers *set = sh->set;
    held *h = sh->head;
    sh->head = sh->tail = NULL;
    sh->count = 0;
    size_t n = 0;
    /* A fan-out may free the topic (its last subscriber closed as a slow
     * consumer); hd_shaper_forget then clears sh->topic. */
    while (h) {
        held *next = h->next;
        if (sh->topic) {
            size_t d = hd_topics_publish(set->topics, sh->topic, h->frame);
            set->st->deliveries += d;
            set->st->shaped_released++;
            n += d;
        } else {
            set->st->publishes_no_subs++;
        }
        hd_buf_unref(h->frame);
        free(h);
        h = next;
    }
    return n;
}

static void on_timer(uv_timer_t *t)
{
    hd_shaper *sh = t->data;
    if (!sh->topic) return;
    const hd_topic_policy *p = hd_topic_policy_of(sh->set->topics, sh->topic);
    int had = sh->count > 0;
    release(sh);
    if (!sh->topic) return;
    if (p->debounce_ms == 0 && p->throttle_ms && had) {
        /* Throttle: what was released opens the next window. */
        uv_timer_start(&sh->timer, on_timer, p->throttle_ms, 0);
    } else {
        sh->window_open = 0;
    }
}

static hd_shaper *shaper_of(hd_shapers *set, hd_topic *tp)
{
    if (tp->shaper) return tp->shaper;
    hd_shaper *sh = calloc(1, sizeof *sh);
    if (!sh) return NULL;
    sh->set = set;
    sh->topic = tp;
    uv_timer_init(set->loop, &sh->timer);
    sh->timer.data = sh;
    sh->next = set->list;
    if (set->list) set->list->prev = sh;
    set->list = sh;
    tp->shaper = sh;
    return sh;
}

static int hold(hd_shaper *sh, const hd_topic_policy *p, const char *event, size_t elen,
                hd_buf *frame)
{
    hd_shapers *set = sh->set;
    if (p->coalesce == HD_COALESCE_LATEST) {
        for (held *h = sh->head; h; h = h->next) {
            if (h->elen == elen && memcmp(h->event, event, elen) == 0) {
                hd_buf_unref(h->frame);
                h->frame = hd_buf_ref(frame);
                set->st->shaped_coalesced++;
                if (set->topics->pol) hd_policy_count(set->topics->pol, p, HD_TC_COALESCED, 1);
                return 0;
            }
        }
    }
    held *h = malloc(sizeof *h + elen);
    if (!h) return -1;
    h->next = NULL;
    h->frame = hd_buf_ref(frame);
    h->elen = elen;
    memcpy(h->event, event, elen);
    if (sh->tail) sh->tail->next = h;
    else sh->head = h;
    sh->tail = h;
    if (sh->count++ == 0) sh->first_pending = set->now(set);
    return 0;
}

size_t hd_shaper_submit(hd_shapers *set, hd_topic *tp, const hd_topic_policy *p, const char *event,
                        size_t elen, hd_buf *frame)
{
    set->st->shaped_received++;
    hd_shaper *sh = shaper_of(set, tp);
    if (!sh) {
        hd_error("shaper: out of memory; delivering at once");
        return hd_topics_publish(set->topics, tp, frame);
    }
    uint64_t now = set->now(set);
    if (p->debounce_ms) {
        if (hold(sh, p, event, elen, frame)) return hd_topics_publish(set->topics, tp, frame);
        uint64_t due = now + p->debounce_ms;
        if (p->max_wait_ms && sh->first_pending + p->max_wait_ms < due)
            due = sh->first_pending + p->max_wait_ms;
        uv_timer_start(&sh->timer, on_timer, due > now ? due - now : 0, 0);
        return 0;
    }
    if (!sh->window_open) {
        sh->window_open = 1;
        uv_timer_start(&sh->timer, on_timer, p->throttle_ms, 0);
        size_t n = hd_topics_publish(set->topics, tp, frame);
        set->st->shaped_released++;
        return n;
    }
    if (hold(sh, p, event, elen, frame)) return hd_topics_publish(set->topics, tp, frame);
    return 0;
}

size_t hd_shaper_release(hd_shapers *set, hd_topic *tp)
{
    (void)set;
    hd_shaper *sh = tp->shaper;
    if (!sh || !sh->count) return 0;
    uv_timer_stop(&sh->timer);
    sh->window_open = 0;
    return release(sh);
}

void hd_shaper_release_all(hd_shapers *set)
{
    /* release() may free topics and so shapers: walk by re-reading the list
     * head after each step, releasing one shaper with pending frames at a time. */
    for (;;) {
        hd_shaper *sh = set->list;
        while (sh && (!sh->count || !sh->topic)) sh = sh->next;
        if (!sh) return;
        uv_timer_stop(&sh->timer);
        sh->window_open = 0;
        release(sh);
    }
}

void hd_shaper_forget(hd_shapers *set, hd_topic *tp)
{
    hd_shaper *sh = tp->shaper;
    if (!sh) return;
    tp->shaper = NULL;
    sh->topic = NULL;
    for (held *h = sh->head, *next; h; h = next) {
        next = h->next;
        set->st->publishes_no_subs++;
        hd_buf_unref(h->frame);
        free(h);
    }
    sh->head = sh->tail = NULL;
    sh->count = 0;
    if (sh->prev) sh->prev->next = sh->next;
    else set->list = sh->next;
    if (sh->next) sh->next->prev = sh->prev;
    uv_close((uv_handle_t *)&sh->timer, on_closed);
}
