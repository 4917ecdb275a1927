#include "shaper.h"
#include "log.h"
#include "server.h"

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
    struct hd_shaper *prev, *next; /* srv->shapers */
    hd_server *srv;
    hd_topic *topic;
    held *head, *tail;
    size_t count;
    uint64_t first_pending;        /* loop time of the oldest held frame */
    int window_open;               /* throttle: a window is running */
} hd_shaper;

int hd_shaper_applies(const hd_topic_policy *p) { return p->throttle_ms || p->debounce_ms; }

static void on_closed(uv_handle_t *h) { free(h->data); }

static size_t release(hd_shaper *sh)
{
    hd_server *srv = sh->srv;
    held *h = sh->head;
    sh->head = sh->tail = NULL;
    sh->count = 0;
    size_t n = 0;
    /* A fan-out may free the topic (its last subscriber closed as a slow
     * consumer); hd_shaper_forget then clears sh->topic. */
    while (h) {
        held *next = h->next;
        if (sh->topic) {
            size_t d = hd_topics_publish(srv, sh->topic, h->frame);
            srv->m.deliveries += d;
            srv->m.shaped_released++;
            n += d;
        } else {
            srv->m.publishes_no_subs++;
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
    const hd_topic_policy *p = hd_topic_policy_of(sh->srv, sh->topic);
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

static hd_shaper *shaper_of(hd_server *srv, hd_topic *tp)
{
    if (tp->shaper) return tp->shaper;
    hd_shaper *sh = calloc(1, sizeof *sh);
    if (!sh) return NULL;
    sh->srv = srv;
    sh->topic = tp;
    uv_timer_init(srv->loop, &sh->timer);
    sh->timer.data = sh;
    sh->next = srv->shapers;
    if (srv->shapers) srv->shapers->prev = sh;
    srv->shapers = sh;
    tp->shaper = sh;
    return sh;
}

static int hold(hd_shaper *sh, const hd_topic_policy *p, const char *event, size_t elen,
                hd_buf *frame)
{
    hd_server *srv = sh->srv;
    if (p->coalesce == HD_COALESCE_LATEST) {
        for (held *h = sh->head; h; h = h->next) {
            if (h->elen == elen && memcmp(h->event, event, elen) == 0) {
                hd_buf_unref(h->frame);
                h->frame = hd_buf_ref(frame);
                srv->m.shaped_coalesced++;
                hd_server_count_topic(srv, p, HD_TC_COALESCED, 1);
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
    if (sh->count++ == 0) sh->first_pending = uv_now(srv->loop);
    return 0;
}

size_t hd_shaper_submit(hd_server *srv, hd_topic *tp, const hd_topic_policy *p, const char *event,
                        size_t elen, hd_buf *frame)
{
    srv->m.shaped_received++;
    hd_shaper *sh = shaper_of(srv, tp);
    if (!sh) {
        hd_error("shaper: out of memory; delivering at once");
        return hd_topics_publish(srv, tp, frame);
    }
    uint64_t now = uv_now(srv->loop);
    if (p->debounce_ms) {
        if (hold(sh, p, event, elen, frame)) return hd_topics_publish(srv, tp, frame);
        uint64_t due = now + p->debounce_ms;
        if (p->max_wait_ms && sh->first_pending + p->max_wait_ms < due)
            due = sh->first_pending + p->max_wait_ms;
        uv_timer_start(&sh->timer, on_timer, due > now ? due - now : 0, 0);
        return 0;
    }
    if (!sh->window_open) {
        sh->window_open = 1;
        uv_timer_start(&sh->timer, on_timer, p->throttle_ms, 0);
        size_t n = hd_topics_publish(srv, tp, frame);
        srv->m.shaped_released++;
        return n;
    }
    if (hold(sh, p, event, elen, frame)) return hd_topics_publish(srv, tp, frame);
    return 0;
}

size_t hd_shaper_release(hd_server *srv, hd_topic *tp)
{
    (void)srv;
    hd_shaper *sh = tp->shaper;
    if (!sh || !sh->count) return 0;
    uv_timer_stop(&sh->timer);
    sh->window_open = 0;
    return release(sh);
}

void hd_shaper_release_all(hd_server *srv)
{
    /* release() may free topics and so shapers: walk by re-reading the list
     * head after each step, releasing one shaper with pending frames at a time. */
    for (;;) {
        hd_shaper *sh = srv->shapers;
        while (sh && (!sh->count || !sh->topic)) sh = sh->next;
        if (!sh) return;
        uv_timer_stop(&sh->timer);
        sh->window_open = 0;
        release(sh);
    }
}

void hd_shaper_forget(hd_server *srv, hd_topic *tp)
{
    hd_shaper *sh = tp->shaper;
    if (!sh) return;
    tp->shaper = NULL;
    sh->topic = NULL;
    for (held *h = sh->head, *next; h; h = next) {
        next = h->next;
        srv->m.publishes_no_subs++;
        hd_buf_unref(h->frame);
        free(h);
    }
    sh->head = sh->tail = NULL;
    sh->count = 0;
    if (sh->prev) sh->prev->next = sh->next;
    else srv->shapers = sh->next;
    if (sh->next) sh->next->prev = sh->prev;
    uv_close((uv_handle_t *)&sh->timer, on_closed);
}
