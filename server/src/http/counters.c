/* counters.c - normstatd's request counters (see counters.h). */
#include "counters.h"

#include <string.h>

#include "base/clock.h"

const char *const nsd_counter_methods[NSD_COUNTER_METHODS] = {"GET",  "HEAD",   "PUT",
                                                              "POST", "DELETE", "other"};
const int nsd_counter_statuses[NSD_COUNTER_STATUSES] = {200, 201, 202, 204, 400, 401, 403, 404, 405,
                                                        409, 413, 415, 422, 429, 500, 503, 504, 0};
const double nsd_counter_buckets[NSD_COUNTER_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
const int nsd_counter_errors[NSD_COUNTER_ERRORS] = {
#define CODE(owner, name, code, status, wire, msg) code,
    NS_WIRE_ERROR_MAP(CODE)
#undef CODE
};

static nsd_request_counters_t counters;

void nsd_counters_init(void)
{
    struct timespec ts = nsd_wall_time();
    counters.start_time = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const nsd_request_counters_t *nsd_counters_get(void)
{
    return &counters;
}

static size_t route_slot(const nsd_route_t *route)
{
    size_t n;
    nsd_routes_table(&n);
    if (route == NULL)
        return n < NSD_COUNTER_ROUTES ? n : NSD_COUNTER_ROUTES;
    size_t i = nsd_routes_index(route);
    return i < NSD_COUNTER_ROUTES ? i : NSD_COUNTER_ROUTES;
}

void nsd_count_request(const nsd_route_t *route, const char *method, int status, double seconds)
{
    size_t r = route_slot(route), m = NSD_COUNTER_METHODS - 1, s = NSD_COUNTER_STATUSES - 1;
    size_t b = NSD_COUNTER_BUCKETS;
    for (size_t i = 0; i + 1 < NSD_COUNTER_METHODS; i++)
        if (strcmp(method, nsd_counter_methods[i]) == 0)
            m = i;
    for (size_t i = 0; i + 1 < NSD_COUNTER_STATUSES; i++)
        if (nsd_counter_statuses[i] == status)
            s = i;
    for (size_t i = 0; i < NSD_COUNTER_BUCKETS; i++)
        if (seconds <= nsd_counter_buckets[i]) {
            b = i;
            break;
        }
    atomic_fetch_add_explicit(&counters.requests[r][m][s], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&counters.duration_buckets[r][b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&counters.duration_sum_ns[r], (uint_fast64_t)(seconds * 1e9),
                              memory_order_relaxed);
}

void nsd_count_body_bytes(int in, size_t bytes)
{
    atomic_fetch_add_explicit(in ? &counters.body_bytes_in : &counters.body_bytes_out, bytes,
                              memory_order_relaxed);
}

void nsd_count_rejection(int code)
{
    for (size_t i = 0; i < NSD_COUNTER_ERRORS; i++)
        if (nsd_counter_errors[i] == code)
            atomic_fetch_add_explicit(&counters.rejections[i], 1, memory_order_relaxed);
}
