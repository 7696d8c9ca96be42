/* metrics.h - normstatd's Prometheus metrics: HTTP requests, rejections, registry counters.
 *
 * Counters are process-wide atomics (one daemon per process), updated from
 * any thread without locks; GET /metrics renders them with the registry's
 * counters and process information. */
#ifndef NSD_METRICS_H
#define NSD_METRICS_H

#include <normstat/proto.h>

#include "routes.h"

typedef struct nsd_registry_s nsd_registry_t;

/*! nsd_metrics_init() : record the start time; call once before serving. */
void nsd_metrics_init(void);

/*! nsd_metrics_request() :
 *  Count one answered request: 'route' (NULL when no route matched),
 *  'method', HTTP 'status', and its duration in seconds. */
void nsd_metrics_request(const nsd_route_t *route, const char *method, int status, double seconds);

/*! nsd_metrics_rejection() : count one error answer by its NS_E* code. */
void nsd_metrics_rejection(int code);

/*! nsd_metrics_render() :
 *  Append the whole exposition (text format 0.0.4) to 'dst'; 'reg' may be
 *  NULL (registry counters are then 0). @return 0 or the ns_buf_* error. */
int nsd_metrics_render(ns_buf_t *dst, nsd_registry_t *reg);

#endif
