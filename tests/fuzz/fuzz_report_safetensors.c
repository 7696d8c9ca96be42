/* fuzz_report_safetensors.c - the safetensors report decoder and the
 * container parser under it: the header scanner, when it accepts, must give
 * what the jansson header parser gives; an accepted report must survive
 * encode -> decode in both formats. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The scanner accepts only what jansson accepts, with the same tensors and metadata. */
static void check_container(const uint8_t *data, size_t size)
{
    ns_safetensors_t *fast = NULL, *full = NULL;
    ns_error_detail_t err = {0};
    int rfast = ns__safetensors_parse_fast(&fast, data, size);
    int rfull = ns__safetensors_parse_full(&full, data, size, &err);
    if (rfast == 0) {
        FUZZ_CHECK(rfull == 0, "header scanner accepts, jansson refuses: %s", err.message);
        size_t n = ns_safetensors_count(fast);
        FUZZ_CHECK(n == ns_safetensors_count(full), "tensor counts differ");
        for (size_t i = 0; i < n; i++) {
            const ns_tensor_t *x = ns_safetensors_at(fast, i), *y = ns_safetensors_at(full, i);
            FUZZ_CHECK(strcmp(x->name, y->name) == 0 && x->dtype == y->dtype &&
                           x->ndim == y->ndim && x->data == y->data && x->nbytes == y->nbytes &&
                           memcmp(x->shape, y->shape, sizeof(x->shape)) == 0,
                       "tensor %zu differs", i);
        }
        static const char *const keys[] = {"step",   "worker", "domain",     "unbiased",
                                           "update", "scope",  "world_size", "format"};
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
            const char *x = ns_safetensors_meta(fast, keys[i]),
                       *y = ns_safetensors_meta(full, keys[i]);
            FUZZ_CHECK(!x == !y && (!x || strcmp(x, y) == 0), "metadata %s differs", keys[i]);
        }
    } else {
        FUZZ_CHECK(fast == NULL, "a refused header leaves a result");
    }
    ns_safetensors_free(fast);
    ns_safetensors_free(full);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_container(data, size);
    ns_report_t *report = NULL;
    ns_error_detail_t err = {0};
    int rc = ns_report_decode_safetensors(&report, data, size, &err);
    if (rc == 0) {
        fuzz_report_round_trip(report, NS_FORMAT_SAFETENSORS);
        fuzz_report_round_trip(report, NS_FORMAT_JSON);
    } else {
        FUZZ_CHECK(report == NULL, "a refused body leaves a report");
        FUZZ_CHECK(err.message[0] != '\0', "refused without a message");
    }
    ns_report_free(report);
    return 0;
}
