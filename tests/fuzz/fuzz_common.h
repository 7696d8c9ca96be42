/* fuzz_common.h - what the libFuzzer harnesses share: a finding is abort()
 * with a line on stderr, reports compared bit for bit. */
#ifndef NS_FUZZ_COMMON_H
#define NS_FUZZ_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <normstat/proto.h>

#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz finding: %s: ", #cond);                                          \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Library-internal decoders the harnesses compare against each other. */
int ns__report_decode_json_full(ns_report_t **dst, const char *src, size_t src_len,
                                ns_error_detail_t *err);
int ns__safetensors_parse_fast(ns_safetensors_t **dst, const uint8_t *src, size_t src_len);
int ns__safetensors_parse_full(ns_safetensors_t **dst, const uint8_t *src, size_t src_len,
                               ns_error_detail_t *err);

/* Two float arrays alike: bit for bit, or (zero_sign 0) as values, so that
 * -0 and 0 are alike: JSON's "-0" is the integer 0, +0 when read back. */
static inline int fuzz_floats_equal(const float *x, const float *y, size_t n, int zero_sign)
{
    if (zero_sign)
        return memcmp(x, y, n * sizeof(float)) == 0;
    for (size_t i = 0; i < n; i++)
        if (!(x[i] == y[i]))
            return 0;
    return 1;
}

/* Equality of two decoded reports (values bit for bit when 'zero_sign');
 * names the first difference. */
static inline const char *fuzz_report_diff(const ns_report_t *a, const ns_report_t *b,
                                           int zero_sign)
{
    if (a->step != b->step || a->worker != b->worker || strcmp(a->domain, b->domain) != 0)
        return "step, worker or domain";
    if (a->unbiased != b->unbiased || a->update != b->update || a->scope != b->scope ||
        a->world_size != b->world_size)
        return "unbiased, update, scope or world_size";
    if (a->n_layers != b->n_layers)
        return "number of layers";
    for (size_t i = 0; i < a->n_layers; i++) {
        const ns_layer_report_t *x = &a->layers[i], *y = &b->layers[i];
        if (strcmp(x->name, y->name) != 0 || x->count != y->count || x->channels != y->channels)
            return "a layer's name, count or channels";
        if (!x->mean != !y->mean || !x->var != !y->var)
            return "a layer's arrays present";
        if (x->mean && (!fuzz_floats_equal(x->mean, y->mean, x->channels, zero_sign) ||
                        !fuzz_floats_equal(x->var, y->var, x->channels, zero_sign)))
            return "a layer's values";
        /* F64 arrays survive a safetensors round trip as doubles, bit for bit. */
        if (zero_sign && (!x->mean64 != !y->mean64 ||
                          (x->mean64 && (memcmp(x->mean64, y->mean64, x->channels * 8) != 0 ||
                                         memcmp(x->var64, y->var64, x->channels * 8) != 0))))
            return "a layer's F64 values";
    }
    return NULL;
}

/* Encode a decoded report in 'format' and decode it again: the same report
 * (JSON may turn -0 into 0). A decoded var is biased, so it is sent as biased. */
static inline void fuzz_report_round_trip(const ns_report_t *report, ns_format_t format)
{
    ns_report_t copy = *report;
    copy.unbiased = 0;
    ns_buf_t buf = {0};
    ns_error_detail_t err = {0};
    int rc = ns_report_encode(&buf, format, &copy, &err);
    FUZZ_CHECK(rc == 0, "encoding a decoded report (format %d) fails: %d %s", (int)format, rc,
               err.message);
    ns_report_t *again = NULL;
    rc = format == NS_FORMAT_JSON
             ? ns_report_decode_json(&again, (const char *)buf.data, buf.len, &err)
             : ns_report_decode_safetensors(&again, (const uint8_t *)buf.data, buf.len, &err);
    FUZZ_CHECK(rc == 0, "an encoded report (format %d) does not decode: %s", (int)format,
               err.message);
    const char *diff = fuzz_report_diff(&copy, again, format == NS_FORMAT_SAFETENSORS);
    FUZZ_CHECK(diff == NULL, "round trip (format %d) changes %s", (int)format, diff);
    ns_report_free(again);
    ns_buf_free(&buf);
}

#endif
