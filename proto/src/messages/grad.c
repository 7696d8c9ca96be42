/* grad.c - the decoded gradient-sum request: creation, freeing and the checks
 * shared by the JSON and safetensors decoders (sorting, duplicates, values). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

ns_grad_t *ns__grad_create(size_t n_layers)
{
    ns_grad_t *grad = calloc(1, sizeof(*grad));
    if (!grad)
        return NULL;
    if (n_layers) {
        grad->layers = calloc(n_layers, sizeof(*grad->layers));
        if (!grad->layers) {
            free(grad);
            return NULL;
        }
    }
    grad->n_layers = n_layers;
    grad->dtype = NS_DTYPE_F64;
    return grad;
}

void ns_grad_free(ns_grad_t *grad)
{
    if (!grad)
        return;
    for (size_t i = 0; i < grad->n_layers; i++)
        free(grad->layers[i].sum_dy); /* sum_dy_xmu shares the block */
    free(grad->layers);
    free(grad);
}

int ns__grad_layer_alloc(ns_grad_layer_t *layer, size_t channels)
{
    if (channels > SIZE_MAX / 2 / sizeof(double))
        return NS_ENOMEM;
    layer->sum_dy = malloc(2 * channels * sizeof(double));
    if (!layer->sum_dy)
        return NS_ENOMEM;
    layer->sum_dy_xmu = layer->sum_dy + channels;
    layer->channels = channels;
    return 0;
}

static int layer_cmp(const void *a, const void *b)
{
    return strcmp(((const ns_grad_layer_t *)a)->name, ((const ns_grad_layer_t *)b)->name);
}

int ns__grad_finish(ns_grad_t *grad, ns_error_detail_t *err)
{
    qsort(grad->layers, grad->n_layers, sizeof(*grad->layers), layer_cmp);
    for (size_t i = 0; i + 1 < grad->n_layers; i++)
        if (strcmp(grad->layers[i].name, grad->layers[i + 1].name) == 0)
            return ns_error_set(err, NS_EINVAL, "layers", "layer \"%s\" appears twice",
                                grad->layers[i].name);
    /* Values last: the whole structure was valid (400 before 422). */
    for (size_t i = 0; i < grad->n_layers; i++) {
        const ns_grad_layer_t *l = &grad->layers[i];
        for (size_t k = 0; k < 2 * l->channels; k++)
            if (!isfinite(l->sum_dy[k])) {
                int xmu = k >= l->channels;
                char field[256];
                snprintf(field, sizeof(field), "layers.%s.%s[%zu]", l->name,
                         xmu ? NS_FIELD_SUM_DY_XMU : NS_FIELD_SUM_DY, xmu ? k - l->channels : k);
                return ns_error_set(err, NS_EVALUE, field, "non-finite value %g", l->sum_dy[k]);
            }
    }
    return 0;
}
