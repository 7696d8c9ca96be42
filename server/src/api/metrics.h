/* metrics.h - normstatd's Prometheus exposition (GET /metrics): the request
 * counters (counters.h), the registry's and the store's counters, build and
 * process facts. */
#ifndef NSD_METRICS_H
#define NSD_METRICS_H

#include <normstat/proto.h>

#include "registry/registry_types.h"

/*! nsd_metrics_render() :
 *  Append the whole exposition (text format 0.0.4) to 'dst'; 'reg' may be
 *  NULL (registry counters are then 0). @return 0 or the ns_buf_* error. */
int nsd_metrics_render(ns_buf_t *dst, nsd_registry_t *reg);

#endif /* NSD_METRICS_H */
