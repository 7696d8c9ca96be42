/* fuzz_grad.h - what both gradient harnesses check of a decoding's outcome. */
#ifndef NS_FUZZ_GRAD_H
#define NS_FUZZ_GRAD_H

#include <math.h>

#include "fuzz_common.h"

static inline void fuzz_grad_check(int rc, const ns_grad_t *grad, const ns_error_detail_t *err)
{
    if (rc != 0) {
        FUZZ_CHECK(grad == NULL, "a refused body leaves a request");
        FUZZ_CHECK(err->message[0] != '\0', "refused without a message");
        return;
    }
    FUZZ_CHECK(grad->n_layers > 0 || grad->layers == NULL, "layers without a count");
    for (size_t i = 0; i < grad->n_layers; i++) {
        const ns_grad_layer_t *l = &grad->layers[i];
        FUZZ_CHECK(ns_name_valid(l->name), "layer name '%s' invalid", l->name);
        FUZZ_CHECK(i == 0 || strcmp(grad->layers[i - 1].name, l->name) < 0,
                   "layers not sorted and unique at '%s'", l->name);
        FUZZ_CHECK(l->channels > 0 && l->sum_dy_xmu == l->sum_dy + l->channels, "layer '%s' arrays",
                   l->name);
        for (size_t c = 0; c < 2 * l->channels; c++)
            FUZZ_CHECK(isfinite(l->sum_dy[c]), "layer '%s' value %zu not finite", l->name, c);
    }
    /* The answer of these sums encodes in both formats (finite values). */
    for (int f = 0; f < 2; f++) {
        ns_buf_t buf = {0};
        int erc = ns_grad_encode_answer(&buf, (ns_format_t)f, grad);
        FUZZ_CHECK(erc == 0, "encoding the answer (format %d) fails: %d", f, erc);
        ns_buf_free(&buf);
    }
}

#endif
