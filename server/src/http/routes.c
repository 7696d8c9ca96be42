/* routes.c - the route table and path matching. */
#include "routes.h"

#include <stdio.h>
#include <string.h>

static const nsd_route_t table[] = {
    {"GET", "/v1/runs", nsd_h_runs_list, "runs_list", NSD_BODY_NONE},
    {"PUT", "/v1/runs/{run}", nsd_h_run_put, "run_put", NSD_BODY_JSON},
    {"GET", "/v1/runs/{run}", nsd_h_run_get, "run_get", NSD_BODY_NONE},
    {"DELETE", "/v1/runs/{run}", nsd_h_run_delete, "run_delete", NSD_BODY_NONE},
    {"POST", "/v1/runs/{run}/batches", nsd_h_batches, "batches", NSD_BODY_REPORT},
    {"POST", "/v1/runs/{run}/sync", nsd_h_sync, "sync", NSD_BODY_REPORT},
    {"POST", "/v1/runs/{run}/grad", nsd_h_grad, "grad", NSD_BODY_REPORT},
    {"GET", "/v1/runs/{run}/stats", nsd_h_stats, "stats", NSD_BODY_NONE},
    {"POST", "/v1/runs/{run}/precise/reset", nsd_h_precise_reset, "precise_reset", NSD_BODY_JSON},
    {"GET", "/v1/runs/{run}/checkpoint", nsd_h_checkpoint_get, "checkpoint_get", NSD_BODY_NONE},
    {"PUT", "/v1/runs/{run}/checkpoint", nsd_h_checkpoint_put, "checkpoint_put", NSD_BODY_JSON},
    {"GET", "/livez", nsd_h_livez, "livez", NSD_BODY_NONE},
    {"GET", "/healthz", nsd_h_livez, "healthz", NSD_BODY_NONE},
    {"GET", "/readyz", nsd_h_readyz, "readyz", NSD_BODY_NONE},
    {"GET", "/metrics", nsd_h_metrics, "metrics", NSD_BODY_NONE},
    {"GET", "/v1/version", nsd_h_version, "version", NSD_BODY_NONE},
};
#define N_ROUTES (sizeof(table) / sizeof(table[0]))

const nsd_route_t *nsd_routes_table(size_t *n)
{
    *n = N_ROUTES;
    return table;
}

size_t nsd_routes_index(const nsd_route_t *route)
{
    return (size_t)(route - table);
}

/* Match 'path' against 'pattern'; the {run} segment goes to *seg / *seg_len. */
static int path_matches(const char *pattern, const char *path, const char **seg, size_t *seg_len)
{
    *seg = NULL;
    *seg_len = 0;
    while (*pattern != '\0') {
        if (strncmp(pattern, "{run}", 5) == 0) {
            size_t len = strcspn(path, "/");
            if (len == 0)
                return 0;
            *seg = path;
            *seg_len = len;
            path += len;
            pattern += 5;
            continue;
        }
        if (*pattern != *path)
            return 0;
        pattern++;
        path++;
    }
    return *path == '\0';
}

int nsd_routes_match(const char *method, const char *path, const nsd_route_t **route, char *run,
                     size_t run_cap, char *allow, size_t allow_cap)
{
    const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;
    size_t allow_len = 0;
    int path_found = 0;
    if (run_cap > 0)
        run[0] = '\0';
    if (allow_cap > 0)
        allow[0] = '\0';
    for (size_t i = 0; i < N_ROUTES; i++) {
        const char *seg;
        size_t seg_len;
        if (!path_matches(table[i].pattern, path, &seg, &seg_len))
            continue;
        path_found = 1;
        if (strcmp(table[i].method, want) != 0) {
            int n = snprintf(allow + allow_len, allow_cap - allow_len, "%s%s",
                             allow_len ? ", " : "", table[i].method);
            if (n > 0 && (size_t)n < allow_cap - allow_len)
                allow_len += (size_t)n;
            continue;
        }
        *route = &table[i];
        if (seg == NULL)
            return 0;
        if (seg_len >= run_cap || seg_len > NS_NAME_MAX) {
            if (run_cap > 0)
                run[0] = '\0';
            return NS_EINVAL;
        }
        memcpy(run, seg, seg_len);
        run[seg_len] = '\0';
        return ns_name_valid(run) ? 0 : NS_EINVAL;
    }
    return path_found ? NS_EMETHOD : NS_ENOTFOUND;
}

void nsd_routes_print(FILE *out)
{
    for (size_t i = 0; i < N_ROUTES; i++)
        fprintf(out, "%-7s %-32s %s\n", table[i].method, table[i].pattern, table[i].label);
}
