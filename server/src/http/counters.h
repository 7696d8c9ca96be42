/* counters.h - normstatd's request counters: every answered request by
 * route, method and status with its duration, and every error answer by its
 * code. The dimensions are fixed lists (anything else is "other"), so
 * counting is one atomic increment, no lock, no allocation.
 *
 * Threads: process-wide atomics (one daemon per process), updated from any
 * thread; metrics.c renders them for GET /metrics. */
#ifndef NSD_COUNTERS_H
#define NSD_COUNTERS_H

#include <stdatomic.h>
#include <stddef.h>

#include <normstat/wire_errors.h>

#include "routes.h"

/* Routes counted by name; more share the slot of "unmatched". */
#define NSD_COUNTER_ROUTES 32
/* Methods of nsd_counter_methods[], the last is "other". */
#define NSD_COUNTER_METHODS 6
/* Statuses of nsd_counter_statuses[], the last (0) is "other". */
#define NSD_COUNTER_STATUSES 18
/* Bounds of nsd_counter_buckets[], then +Inf. */
#define NSD_COUNTER_BUCKETS 16

/* One rejection counter per row of the wire error table. */
#define NSD__COUNT_ROW(owner, name, code, status, wire, msg) +1
#define NSD_COUNTER_ERRORS                                   (0 NS_WIRE_ERROR_MAP(NSD__COUNT_ROW))

extern const char *const nsd_counter_methods[NSD_COUNTER_METHODS];
extern const int nsd_counter_statuses[NSD_COUNTER_STATUSES];
extern const double nsd_counter_buckets[NSD_COUNTER_BUCKETS]; /* seconds, ascending */
extern const int nsd_counter_errors[NSD_COUNTER_ERRORS];      /* NS_E* codes */

/* Slot NSD_COUNTER_ROUTES (or the route count, if lower) is "unmatched". */
typedef struct nsd_request_counters_s {
    atomic_uint_fast64_t requests[NSD_COUNTER_ROUTES + 1][NSD_COUNTER_METHODS]
                                 [NSD_COUNTER_STATUSES];
    atomic_uint_fast64_t duration_buckets[NSD_COUNTER_ROUTES + 1][NSD_COUNTER_BUCKETS + 1];
    atomic_uint_fast64_t duration_sum_ns[NSD_COUNTER_ROUTES + 1];
    atomic_uint_fast64_t rejections[NSD_COUNTER_ERRORS];
    atomic_uint_fast64_t body_bytes_in;  /* request bodies read (kept or dropped) */
    atomic_uint_fast64_t body_bytes_out; /* response bodies queued */
    double start_time;                   /* seconds since the epoch */
} nsd_request_counters_t;

/*! nsd_counters_init() : record the start time; call once before serving. */
void nsd_counters_init(void);

/*! nsd_counters_get() : the process's counters (read them atomically). */
const nsd_request_counters_t *nsd_counters_get(void);

/*! nsd_count_request() :
 *  Count one answered request: 'route' (NULL when no route matched),
 *  'method', HTTP 'status', and its duration in seconds. */
void nsd_count_request(const nsd_route_t *route, const char *method, int status, double seconds);

/*! nsd_count_rejection() : count one error answer by its NS_E* code. */
void nsd_count_rejection(int code);

/*! nsd_count_body_bytes() : request body bytes read ('in') or response body bytes queued. */
void nsd_count_body_bytes(int in, size_t bytes);

#endif /* NSD_COUNTERS_H */
