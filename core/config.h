/* Configuration: a Lua file evaluated in a sandbox, checked against the
 * schema in lua/herald/config.lua (embedded in the binary), with every
 * default filled in. */
#ifndef HD_CONFIG_H
#define HD_CONFIG_H

#include "addr.h"

#include <stddef.h>
#include <stdint.h>

/* A topic's policy: the defaults, then the first matching config rule, then
 * the topic(name) hooks merged over them (policy.c), cached in the topic
 * until the scripts are reloaded. */
typedef struct hd_topic_policy {
    uint8_t tracked;              /* presence/listener tracking (default 1) */
    uint8_t presence;             /* send presence events to clients (default 0) */
    uint8_t coalesce;             /* HD_COALESCE_* (default none) */
    uint8_t on_overflow;          /* HD_OVERFLOW_* (default close) */
    uint32_t throttle_ms;         /* 0: off */
    uint32_t debounce_ms;         /* 0: off */
    uint32_t max_wait_ms;         /* 0: no cap */
    uint32_t max_queue_bytes;     /* 0: limits.send_queue_bytes */
    uint32_t history_size;        /* messages kept for recovery (0: no history, the default) */
    uint32_t history_ttl_ms;      /* how long a message is kept (default 300000) */
    uint32_t recover_max;         /* most messages replayed to one join (default 300) */
    int32_t rule;                 /* index of the config rule that matched, -1 none */
} hd_topic_policy;

/* The largest history_size. */
#define HD_HISTORY_MAX 100000

/* Per topic pattern counters (metrics), indexed by policy.rule + 1. */
enum { HD_TC_RECEIVED, HD_TC_DELIVERED, HD_TC_COALESCED, HD_TC_COUNT };

enum { HD_COALESCE_NONE, HD_COALESCE_LATEST };
enum { HD_OVERFLOW_CLOSE, HD_OVERFLOW_DROP_OLDEST };

/* The defaults: tracked, no presence events, no shaping, close on
 * overflow, no history (history_ttl_ms 300000, recover_max 300). */
void hd_topic_policy_default(hd_topic_policy *p);

/* Fields a topic rule sets (hd_topic_rule.set). */
enum {
    HD_TP_TRACKED = 1 << 0,
    HD_TP_PRESENCE = 1 << 1,
    HD_TP_THROTTLE = 1 << 2,
    HD_TP_DEBOUNCE = 1 << 3,
    HD_TP_MAX_WAIT = 1 << 4,
    HD_TP_MAX_QUEUE = 1 << 5,
    HD_TP_COALESCE = 1 << 6,
    HD_TP_OVERFLOW = 1 << 7,
    HD_TP_HISTORY = 1 << 8,
    HD_TP_HISTORY_TTL = 1 << 9,
    HD_TP_RECOVER_MAX = 1 << 10,
};

typedef struct lua_State lua_State;

/* [-0, +0] Reads the policy fields of the table at idx into *p and returns
 * the HD_TP_* bits of those it held. The table must have been checked by
 * lua/herald/config.lua's topic_policy (a `topics` rule, or a topic hook's
 * result): every field absent or valid; it is read with metamethods. */
uint32_t hd_config_read_policy(lua_State *L, int idx, hd_topic_policy *p);

typedef struct hd_topic_rule {
    char *match;             /* glob: '*' matches any run of characters */
    hd_topic_policy policy;  /* the fields in set */
    uint32_t set;            /* HD_TP_* */
} hd_topic_rule;

typedef struct hd_config {
    char *source;            /* the file name, or "(embedded default)" */
    char *host;
    int port;                /* 0 = ephemeral */
    int reuseport;           /* listen.reuseport: SO_REUSEPORT, processes share the port */
    hd_cidr *trusted;        /* listen.trusted_proxies: may name the client (XFF, PROXY) */
    size_t ntrusted;
    char *admin_host;        /* the admin listener's address, or NULL: none */
    int admin_port;          /* 0 = ephemeral */
    char *api_token;         /* NULL when none is set */
    char **ws_paths;         /* "<mount>/websocket" of the mounts serving WebSocket, nmounts entries */
    char **lp_paths;         /* "<mount>/longpoll" of the mounts serving LongPoll, nlp_paths entries */
    size_t nlp_paths;
    char **allowed_origins;  /* ws.allowed_origins, lower-case; NULL: any origin */
    size_t nallowed_origins;
    size_t nmounts;
    size_t max_connections;
    size_t max_conns_per_ip; /* connections from one client address (0: no limit) */
    uint32_t connect_rate;   /* new connections per second for the node (0: no limit) */
    uint32_t connect_rate_per_ip; /* the same for one client address */
    unsigned ipv6_prefix;    /* an IPv6 client is counted by this network (bits; 128: the address) */
    size_t max_message_bytes;
    size_t max_inbound_bytes; /* all connections' partial inbound messages together */
    size_t send_queue_bytes;
    size_t max_header_bytes;
    size_t max_url_bytes;
    size_t max_body_bytes;
    size_t max_topics_per_socket;
    size_t max_queued_bytes; /* all connections' queues together */
    uint32_t client_messages_per_s; /* a WebSocket's message rate (token bucket); 0: no limit */
    uint32_t client_messages_burst; /* ... and its bucket size (>= 1 when the rate is set) */
    unsigned fanout_backlog; /* hold HTTP answers while a queue is this deep (0: never) */
    uint64_t presence_batch_ms;
    uint64_t lp_poll_ms;     /* longpoll.poll_ms: a poll is held this long when nothing is queued */
    uint64_t lp_window_ms;   /* longpoll.window_ms: a session without a poll is closed after this */
    size_t lp_max_batch;     /* longpoll.max_batch: messages one POST may carry */
    hd_topic_rule *topic_rules;
    size_t ntopic_rules;
    uint64_t ws_idle_ms;
    uint64_t http_idle_ms;
    uint64_t http_head_ms;   /* a request head (or handshake) must be complete within it */
    uint64_t http_body_ms;   /* a request body, once its head is complete, within it */
    uint64_t ws_message_ms;  /* a frame or fragmented message must be complete within it */
    uint64_t ws_close_ms;
    int log_level;           /* hd_log_level */
    int log_format;          /* hd_log_format */
    char **scripts;          /* operator scripts, paths resolved against the config's dir */
    size_t nscripts;
    int scripts_watch;       /* reload when a script file changes */
    uint32_t hook_budget_ms; /* wall-clock budget of one hook call */
    uint32_t script_memory_mb; /* the scripts' Lua heap at most */
    uint32_t io_timeout_ms;    /* a hook call's waits for I/O at most (scripts.io_timeout_ms) */
    uint32_t http_pool_size;   /* scripts.http: connections per origin */
    uint32_t http_timeout_ms;  /* default deadline of one request */
    uint32_t http_max_in_flight;
    uint32_t http_max_response_bytes;
    struct hd_plugin_cfg {
        char *name;          /* "jwt": the embedded module plugins.jwt */
        char *options_json;  /* its options table as JSON */
    } *plugins;
    size_t nplugins;
    int recheck_joins;       /* reload.recheck_joins */
    uint64_t drain_timeout_ms;       /* the whole drain sequence */
    uint64_t drain_announce_ms;      /* /readyz 503 before the listener closes */
    uint64_t drain_http_idle_ms;     /* idle keep-alive connections close after this */
    uint64_t drain_flush_ms;         /* longest wait for write queues to empty */
    uint64_t drain_http_ms;          /* longest wait for HTTP connections to finish */
    int drain_disconnect_sockets;    /* close WebSockets with 1012 */
    uint64_t drain_disconnect_rate;  /* closes per second, at most */
    /* cluster: absent means a single node (cluster_urls NULL, count 0);
     * the other fields hold their defaults either way. */
    char **cluster_urls;             /* cluster.redis, one per shard, in config order; each
                                      * parses with hd_redis_url_parse (checked at load) */
    size_t ncluster_urls;            /* the array is NULL-terminated too */
    uint64_t cluster_node_timeout_ms; /* a silent node's liveness key expires after this */
    uint64_t cluster_heartbeat_ms;   /* liveness refresh; < cluster_node_timeout_ms / 2 */
    int cluster_required;            /* /readyz 503 until every shard's link is up */
    size_t cluster_queue_max;        /* outbound messages kept while a link is down */
    char *cluster_node;              /* a stable node name (cluster.node), or NULL */
} hd_config;

/* Loads the config file at path, or the embedded default when path is NULL.
 * On success fills *c (free with hd_config_free) and returns 0. On failure
 * returns HD_ECONFIG or HD_ENOMEM and writes the errors into err, one line
 * each (separated by '\n', no newline after the last), each naming the file
 * and, where known, the line or the setting: a file that does not compile
 * or run has one error; the settings of one that runs are all checked, the
 * plugins' options against each plugin's declaration included, and every
 * error found is reported (truncated to errlen). No error shows the value
 * of api.token or of a plugin option declared secret. */
int hd_config_load(hd_config *c, const char *path, char *err, size_t errlen);
/* Frees what hd_config_load allocated; safe on a zeroed struct. */
void hd_config_free(hd_config *c);

#endif
