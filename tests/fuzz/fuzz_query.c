/* fuzz_query.c - the query and path decoding of normstatd (routes.c) and
 * proto's mixture parser. The first byte picks the input's use; the rest
 * is the text. Parsed results must keep the documented invariants, and a
 * mixture printed back must parse to the same weights. */
#include <math.h>

#include "fuzz_common.h"
#include "http/routes.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* routes.c names the handlers; this harness never calls them. */
#define STUB(name)                                                                                 \
    void name(nsd_request_t *req)                                                                  \
    {                                                                                              \
        (void)req;                                                                                 \
        abort();                                                                                   \
    }
STUB(nsd_h_runs_list)
STUB(nsd_h_run_put)
STUB(nsd_h_run_get)
STUB(nsd_h_run_delete)
STUB(nsd_h_batches)
STUB(nsd_h_sync)
STUB(nsd_h_grad)
STUB(nsd_h_stats)
STUB(nsd_h_drift)
STUB(nsd_h_history)
STUB(nsd_h_precise_reset)
STUB(nsd_h_checkpoint_get)
STUB(nsd_h_checkpoint_put)
STUB(nsd_h_livez)
STUB(nsd_h_readyz)
STUB(nsd_h_version)
STUB(nsd_h_metrics)
STUB(nsd_h_ui_redirect)
STUB(nsd_h_ui_asset)

static void fuzz_query(char *text, size_t len)
{
    nsd_param_t params[NSD_QUERY_PARAMS_MAX];
    size_t n = 0;
    ns_error_detail_t err = {0};
    if (nsd_query_parse(text, params, NSD_QUERY_PARAMS_MAX, &n, &err) != 0) {
        FUZZ_CHECK(err.message[0] != '\0', "refused without a message");
        return;
    }
    FUZZ_CHECK(n <= NSD_QUERY_PARAMS_MAX, "%zu parameters", n);
    for (size_t i = 0; i < n; i++) {
        /* Decoded in place: inside the input, never longer than it. */
        FUZZ_CHECK(params[i].key >= text && params[i].key < text + len + 1, "key outside");
        FUZZ_CHECK(params[i].key[0] != '\0', "empty name");
        FUZZ_CHECK(strlen(params[i].key) <= len && strlen(params[i].value) <= len, "grew");
        for (size_t j = 0; j < i; j++)
            FUZZ_CHECK(strcmp(params[i].key, params[j].key) != 0, "'%s' twice", params[i].key);
    }
}

static void fuzz_path(const char *method, const char *path)
{
    const nsd_route_t *route = NULL;
    char run[NS_NAME_MAX + 1], allow[128];
    ns_error_detail_t err = {0};
    int rc = nsd_routes_match(method, path, &route, run, sizeof(run), allow, sizeof(allow), &err);
    if (rc == 0) {
        FUZZ_CHECK(route != NULL, "matched without a route");
        FUZZ_CHECK(strstr(route->pattern, "{run}") == NULL || ns_name_valid(run),
                   "run '%s' is not a name", run);
    } else if (rc == NS_EINVAL) {
        FUZZ_CHECK(err.message[0] != '\0', "refused without a message");
    }
}

static void fuzz_mixture(const char *text)
{
    ns_mixture_weight_t w[8], again[8];
    size_t n = 0, m = 0;
    ns_error_detail_t err = {0};
    if (ns_mixture_parse(w, 8, &n, text, &err) != 0)
        return;
    FUZZ_CHECK(n >= 1 && n <= 8, "%zu weights", n);
    int positive = 0;
    char printed[8 * (NS_NAME_MAX + 40)];
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(ns_name_valid(w[i].domain), "domain '%s'", w[i].domain);
        FUZZ_CHECK(isfinite(w[i].weight) && w[i].weight >= 0, "weight %g", w[i].weight);
        positive |= w[i].weight > 0;
        for (size_t j = 0; j < i; j++)
            FUZZ_CHECK(strcmp(w[i].domain, w[j].domain) != 0, "'%s' twice", w[i].domain);
        at += (size_t)snprintf(printed + at, sizeof(printed) - at, "%s%s:%.17g", i ? "," : "",
                               w[i].domain, w[i].weight);
    }
    FUZZ_CHECK(positive, "no positive weight");
    FUZZ_CHECK(ns_mixture_parse(again, 8, &m, printed, &err) == 0 && m == n,
               "'%s' does not parse back: %s", printed, err.message);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(strcmp(w[i].domain, again[i].domain) == 0 && w[i].weight == again[i].weight,
                   "'%s' parses back differently", printed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    static const char *const methods[] = {"GET", "PUT", "POST", "DELETE", "HEAD", "PATCH"};
    size_t len = size - 1;
    char *text = malloc(len + 1);
    memcpy(text, data + 1, len);
    text[len] = '\0';
    switch (data[0] % 3) {
    case 0:
        fuzz_query(text, strlen(text));
        break;
    case 1:
        fuzz_path(methods[(data[0] / 3) % 6], text);
        break;
    default:
        fuzz_mixture(text);
        break;
    }
    free(text);
    return 0;
}
