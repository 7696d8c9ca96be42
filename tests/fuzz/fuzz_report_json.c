/* fuzz_report_json.c - the JSON report decoder: the public entry (fast
 * scanner first, jansson when it gives up) must give exactly what jansson
 * alone gives (code, message, report bits), and an accepted report must
 * survive encode -> decode in both formats. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *src = (const char *)data;
    ns_report_t *a = NULL, *b = NULL;
    ns_error_detail_t ea = {0}, eb = {0};
    int ra = ns_report_decode_json(&a, src, size, &ea);
    int rb = ns__report_decode_json_full(&b, src, size, &eb);
    FUZZ_CHECK(ra == rb, "fast path %d (%s) vs jansson %d (%s)", ra, ea.message, rb, eb.message);
    if (ra == 0) {
        const char *diff = fuzz_report_diff(a, b, 1);
        FUZZ_CHECK(diff == NULL, "fast path and jansson differ in %s", diff);
        fuzz_report_round_trip(a, NS_FORMAT_JSON);
        fuzz_report_round_trip(a, NS_FORMAT_SAFETENSORS);
    } else {
        FUZZ_CHECK(a == NULL && b == NULL, "a refused body leaves a report");
        FUZZ_CHECK(strcmp(ea.message, eb.message) == 0 && strcmp(ea.field, eb.field) == 0,
                   "errors differ: '%s: %s' vs '%s: %s'", ea.field, ea.message, eb.field,
                   eb.message);
    }
    ns_report_free(a);
    ns_report_free(b);
    return 0;
}
