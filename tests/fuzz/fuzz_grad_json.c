/* fuzz_grad_json.c - the JSON gradient-sum decoder; an accepted request has
 * sorted unique layers and finite values, and its answer encodes. */
#include <math.h>

#include "fuzz_common.h"
#include "fuzz_grad.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ns_grad_t *grad = NULL;
    ns_error_detail_t err = {0};
    int rc = ns_grad_decode_json(&grad, (const char *)data, size, &err);
    fuzz_grad_check(rc, grad, &err);
    ns_grad_free(grad);
    return 0;
}
