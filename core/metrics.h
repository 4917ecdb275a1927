/* Counters and gauges, exported as Prometheus text on GET /metrics. */
#ifndef HD_METRICS_H
#define HD_METRICS_H

#include "buf.h"
#include "conn.h"
#include "publish.h"
#include "script.h"
#include "stats.h"

#include <stdint.h>

/* Appends the Prometheus text exposition of the counters and gauges of
 * the layers below the node to out (the node adds its own: readiness,
 * drain). */
void hd_metrics_render(hd_str *out, const hd_stats *st, const hd_net *net, const hd_engine *eng,
                       const hd_scripts *sc);

/* One counter or gauge with its HELP and TYPE lines. */
void hd_metrics_counter(hd_str *o, const char *name, const char *help, uint64_t v);
void hd_metrics_gauge(hd_str *o, const char *name, const char *help, uint64_t v);

#endif
