/* run_health.h - a run's health in numbers (run_health.c; the registry's
 * side is in registry.h: nsd_registry_health(), nsd_registry_note_rejection()).
 * Internal to the registry. Callers hold the run's lock. */
#ifndef NSD_RUN_HEALTH_H
#define NSD_RUN_HEALTH_H

#include "run.h"

/*! nsd_run_health_json() : GET /v1/runs/{run}'s "health": {"steps_applied"
 *  (since the daemon started), "pending", "skipped", "rejections": {reason:
 *  n} (the reasons seen)}. @return a new reference, NULL when out of memory. */
json_t *nsd_run_health_json(const nsd_run_t *run);

#endif /* NSD_RUN_HEALTH_H */
