#include "shaper.h"
#include "util.h"
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
    struct hd_shaper *hnext;       /* the name's hash chain */
    struct hd_shaper *prev, *next; /* on hd_shapers.list */
    hd_shapers *set;
    hd_topic_policy policy;        /* of the last submit */
    held *head, *tail;
    size_t count;
    uint64_t first_pending;        /* loop time of the oldest held frame */
    int window_open;               /* throttle: a window is running */
    uint32_t hash;
    size_t len;
    char name[];
} hd_shaper;

static uint64_t loop_now(hd_shapers *sh) { return uv_now(sh->loop); }

static uint32_t hash(const char *p, size_t n) { return hd_fnv1a(p, n); }

void hd_shapers_init(hd_shapers *sh, uv_loop_t *loop, hd_stats *st, hd_policy *pol,
                     hd_shaper_release_fn release, void *ud)
{
    memset(sh, 0, sizeof *sh);
    sh->loop = loop;
    sh->st = st;
    sh->pol = pol;
    sh->release = release;
    sh->release_ud = ud;
    sh->now = loop_now;
}

int hd_shaper_applies(const hd_topic_policy *p) { return p->throttle_ms || p->debounce_ms; }

static hd_shaper **slot_of(const hd_shapers *set, const char *name, size_t len, uint32_t h)
{
    hd_shaper **pp = &set->slots[h & (set->nslots - 1)];
    while (*pp && !((*pp)->len == len && memcmp((*pp)->name, name, len) == 0)) pp = &(*pp)->hnext;
    return pp;
}

static hd_shaper *find(const hd_shapers *set, const char *name, size_t len)
{
    return set->nslots ? *slot_of(set, name, len, hash(name, len)) : NULL;
}

int hd_shaper_active(const hd_shapers *set, const char *topic, size_t tlen)
{
    return find(set, topic, tlen) != NULL;
}

static void grow(hd_shapers *set)
{
    size_t n = set->nslots ? set->nslots * 2 : 64;
    hd_shaper **s = calloc(n, sizeof *s);
    if (!s) return; /* longer chains; still correct */
    for (hd_shaper *sh = set->list; sh; sh = sh->next) {
        sh->hnext = s[sh->hash & (n - 1)];
        s[sh->hash & (n - 1)] = sh;
    }
    free(set->slots);
    set->slots = s;
    set->nslots = n;
}

static void on_closed(uv_handle_t *h) { free(h->data); }

/* Unlinks sh and closes it (freed in the close callback). */
static void end(hd_shaper *sh)
{
    hd_shapers *set = sh->set;
    hd_shaper **pp = slot_of(set, sh->name, sh->len, sh->hash);
    if (*pp == sh) *pp = sh->hnext;
    if (sh->prev) sh->prev->next = sh->next;
    else set->list = sh->next;
    if (sh->next) sh->next->prev = sh->prev;
    set->count--;
    uv_close((uv_handle_t *)&sh->timer, on_closed);
}

/* Sends every held frame; returns local deliveries. */
static size_t release(hd_shaper *sh)
{
    hd_shapers *set = sh->set;
    held *h = sh->head;
    sh->head = sh->tail = NULL;
    sh->count = 0;
    size_t n = 0;
    while (h) {
        held *next = h->next;
        n += set->release(set->release_ud, sh->name, sh->len, h->event, h->elen, h->frame);
        set->st->shaped_released++;
        hd_buf_unref(h->frame);
        free(h);
        h = next;
    }
    return n;
}

static void on_timer(uv_timer_t *t)
{
    hd_shaper *sh = t->data;
    const hd_topic_policy *p = &sh->policy;
    int had = sh->count > 0;
    release(sh);
    if (p->debounce_ms == 0 && p->throttle_ms && had) {
        /* Throttle: what was released opens the next window. */
        uv_timer_start(&sh->timer, on_timer, p->throttle_ms, 0);
    } else {
        end(sh); /* quiet: nothing held, no window */
    }
}

static hd_shaper *shaper_of(hd_shapers *set, const char *name, size_t len)
{
    hd_shaper *sh = find(set, name, len);
    if (sh) return sh;
    if (set->count >= set->nslots) grow(set);
    if (!set->nslots) return NULL;
    sh = calloc(1, sizeof *sh + len + 1);
    if (!sh) return NULL;
    sh->set = set;
    sh->len = len;
    memcpy(sh->name, name, len);
    sh->hash = hash(name, len);
    uv_timer_init(set->loop, &sh->timer);
    sh->timer.data = sh;
    hd_shaper **pp = slot_of(set, name, len, sh->hash);
    *pp = sh;
    sh->next = set->list;
    if (set->list) set->list->prev = sh;
    set->list = sh;
    set->count++;
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
                if (set->pol) hd_policy_count(set->pol, p, HD_TC_COALESCED, 1);
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

/* Out of memory: the frame goes at once rather than not at all. */
static size_t at_once(hd_shapers *set, const char *topic, size_t tlen, const char *event,
                      size_t elen, hd_buf *frame)
{
    hd_error("shaper: out of memory; delivering at once");
    set->st->shaped_released++;
    return set->release(set->release_ud, topic, tlen, event, elen, frame);
}

size_t hd_shaper_submit(hd_shapers *set, const char *topic, size_t tlen,
                        const hd_topic_policy *p, const char *event, size_t elen, hd_buf *frame)
{
    set->st->shaped_received++;
    hd_shaper *sh = shaper_of(set, topic, tlen);
    if (!sh) return at_once(set, topic, tlen, event, elen, frame);
    sh->policy = *p;
    uint64_t now = set->now(set);
    if (p->debounce_ms) {
        if (hold(sh, p, event, elen, frame)) return at_once(set, topic, tlen, event, elen, frame);
        uint64_t due = now + p->debounce_ms;
        if (p->max_wait_ms && sh->first_pending + p->max_wait_ms < due)
            due = sh->first_pending + p->max_wait_ms;
        uv_timer_start(&sh->timer, on_timer, due > now ? due - now : 0, 0);
        return 0;
    }
    if (!sh->window_open) {
        sh->window_open = 1;
        uv_timer_start(&sh->timer, on_timer, p->throttle_ms, 0);
        set->st->shaped_released++;
        return set->release(set->release_ud, topic, tlen, event, elen, frame);
    }
    if (hold(sh, p, event, elen, frame)) return at_once(set, topic, tlen, event, elen, frame);
    return 0;
}

size_t hd_shaper_release(hd_shapers *set, const char *topic, size_t tlen)
{
    hd_shaper *sh = find(set, topic, tlen);
    if (!sh) return 0;
    uv_timer_stop(&sh->timer);
    size_t n = release(sh);
    end(sh);
    return n;
}

void hd_shaper_release_all(hd_shapers *set)
{
    /* A release may publish (through the observers) but never creates or
     * ends shapers, so the list is safe to walk; each then ends. */
    while (set->list) {
        hd_shaper *sh = set->list;
        uv_timer_stop(&sh->timer);
        release(sh);
        end(sh);
    }
}

void hd_shapers_close(hd_shapers *set)
{
    while (set->list) {
        hd_shaper *sh = set->list;
        for (held *h = sh->head, *next; h; h = next) {
            next = h->next;
            set->st->publishes_no_subs++;
            hd_buf_unref(h->frame);
            free(h);
        }
        sh->head = sh->tail = NULL;
        sh->count = 0;
        end(sh);
    }
    free(set->slots);
    set->slots = NULL;
    set->nslots = 0;
}
