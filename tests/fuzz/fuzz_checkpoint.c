/* fuzz_checkpoint.c - checkpoint import (PUT /v1/runs/{run}/checkpoint)
 * through the registry alone (no HTTP, store or daemon): an accepted
 * checkpoint exports, and that export imports into a fresh registry and
 * exports again to the same JSON. */
#include <jansson.h>

#include "fuzz_common.h"
#include "registry/registry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static nsd_registry_t *first, *second;
    if (first == NULL) {
        first = nsd_registry_create(NULL);
        second = nsd_registry_create(NULL);
        FUZZ_CHECK(first && second, "no registry");
    }
    ns_error_detail_t err = {0};
    if (nsd_registry_checkpoint_import(first, "r", (const char *)data, size, &err) != 0) {
        FUZZ_CHECK(err.message[0] != '\0', "refused without a message");
        return 0;
    }
    json_t *a = nsd_registry_checkpoint_export(first, "r", &err);
    FUZZ_CHECK(a != NULL, "an imported run does not export: %s", err.message);
    char *text = json_dumps(a, JSON_COMPACT);
    FUZZ_CHECK(text != NULL, "no memory");
    FUZZ_CHECK(nsd_registry_checkpoint_import(second, "r", text, strlen(text), &err) == 0,
               "an export does not import: %s", err.message);
    json_t *b = nsd_registry_checkpoint_export(second, "r", &err);
    FUZZ_CHECK(b != NULL && json_equal(a, b), "export -> import -> export differs");
    free(text);
    json_decref(a);
    json_decref(b);
    return 0;
}
