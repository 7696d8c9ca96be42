/* report.c - the decoded report: creation, freeing and the checks shared by
 * the JSON and safetensors decoders (sorting, values, unbiased variances). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

void ns__report_defaults(ns_report_t *report)
{
    memcpy(report->domain, "default", sizeof("default"));
    report->update = NS_UPDATE_EMA | NS_UPDATE_PRECISE;
    report->scope = NS_SCOPE_GLOBAL;
    report->world_size = -1;
}

ns_report_t *ns__report_create(size_t n_layers)
{
    ns_report_t *report = calloc(1, sizeof(*report));
    if (!report)
        return NULL;
    if (n_layers) {
        report->layers = calloc(n_layers, sizeof(*report->layers));
        if (!report->layers) {
            free(report);
            return NULL;
        }
    }
    report->n_layers = n_layers;
    ns__report_defaults(report);
    return report;
}

void ns_report_free(ns_report_t *report)
{
    if (!report)
        return;
    for (size_t i = 0; i < report->n_layers; i++) {
        if (!report->layers[i].borrowed) {
            free(report->layers[i].mean);
            free(report->layers[i].var);
        }
        free(report->layers[i].mean64);
        free(report->layers[i].var64);
    }
    report->n_layers = 0;
    if (report->scratch != NULL)
        return; /* the struct and its layers are the scratch's */
    free(report->layers);
    free(report);
}

unsigned ns__update_parse_word(const char *s, size_t len)
{
    if (len == 3 && memcmp(s, "ema", 3) == 0)
        return NS_UPDATE_EMA;
    if (len == 7 && memcmp(s, "precise", 7) == 0)
        return NS_UPDATE_PRECISE;
    return 0;
}

static int layer_cmp(const void *a, const void *b)
{
    return strcmp(((const ns_layer_report_t *)a)->name, ((const ns_layer_report_t *)b)->name);
}

/* Report element 'index' of one layer's mean (is_var 0) or var (is_var 1). */
static int value_error(const ns_layer_report_t *layer, int is_var, size_t index, float value,
                       ns_error_detail_t *err, ns__value_hint_fn hint, void *hint_ctx)
{
    char field[256], why[160];
    snprintf(field, sizeof(field), "layers.%s.%s[%zu]", layer->name,
             is_var ? NS_FIELD_VAR : NS_FIELD_MEAN, index);
    if (!isfinite(value)) {
        if (hint && hint(hint_ctx, layer, is_var, index, why, sizeof(why)) == 0)
            return ns_error_set(err, NS_EVALUE, field, "%s", why);
        return ns_error_set(err, NS_EVALUE, field, "non-finite value %g", (double)value);
    }
    return ns_error_set(err, NS_EVALUE, field, "negative variance %g", (double)value);
}

int ns__report_finish(ns_report_t *report, ns_error_detail_t *err, ns__value_hint_fn hint,
                      void *hint_ctx)
{
    size_t sorted = 1; /* the safetensors decoder's layers come sorted: then no sort */
    while (sorted < report->n_layers &&
           layer_cmp(&report->layers[sorted - 1], &report->layers[sorted]) <= 0)
        sorted++;
    if (sorted < report->n_layers)
        qsort(report->layers, report->n_layers, sizeof(*report->layers), layer_cmp);
    for (size_t i = 0; i + 1 < report->n_layers; i++)
        if (strcmp(report->layers[i].name, report->layers[i + 1].name) == 0)
            return ns_error_set(err, NS_EINVAL, "layers", "layer \"%s\" appears twice",
                                report->layers[i].name);
    for (size_t i = 0; i < report->n_layers; i++) {
        const ns_layer_report_t *layer = &report->layers[i];
        if (!layer->mean)
            continue;
        size_t bad = ns_find_nonfinite(layer->mean, layer->channels);
        if (bad < layer->channels)
            return value_error(layer, 0, bad, layer->mean[bad], err, hint, hint_ctx);
        bad = ns_find_bad_variance(layer->var, layer->channels);
        if (bad < layer->channels)
            return value_error(layer, 1, bad, layer->var[bad], err, hint, hint_ctx);
        /* A negative double variance may round to float32 -0. */
        for (size_t c = 0; layer->var64 != NULL && c < layer->channels; c++)
            if (layer->var64[c] < 0)
                return ns_error_set(err, NS_EVALUE, "", "layers.%s.%s[%zu]: negative variance %g",
                                    layer->name, NS_FIELD_VAR, c, layer->var64[c]);
    }
    if (report->unbiased)
        for (size_t i = 0; i < report->n_layers; i++)
            if (report->layers[i].var) {
                ns_layer_report_t *l = &report->layers[i];
                if (l->var64 == NULL) {
                    ns_var_bias_f32(l->var, l->channels, l->count);
                    continue;
                }
                /* F64: converted in double, and the float32 copy narrowed from
                 * that (one rounding, as for a biased F64 variance). */
                double keep = l->count > 1 ? (double)(l->count - 1) / (double)l->count : 0.0;
                for (size_t c = 0; c < l->channels; c++) {
                    l->var64[c] *= keep;
                    l->var[c] = (float)l->var64[c];
                }
            }
    return 0;
}
