/* fuzz_run_config.c - the run configuration decoder (PUT /v1/runs/{run}): a
 * refused body leaves the configuration unchanged; an accepted one encodes
 * and decodes back to the same values. */
#include <math.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int same_values(const ns_run_config_t *a, const ns_run_config_t *b)
{
    return a->world_size == b->world_size &&
           memcmp(&a->momentum, &b->momentum, sizeof(a->momentum)) == 0 &&
           a->sync_timeout_ms == b->sync_timeout_ms && a->on_timeout_drop == b->on_timeout_drop &&
           a->ema_debias == b->ema_debias;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ns_run_config_t cfg, before;
    ns_run_config_defaults(&cfg);
    before = cfg;
    ns_error_detail_t err = {0};
    int rc = ns_run_config_decode_json(&cfg, (const char *)data, size, &err);
    if (rc != 0) {
        FUZZ_CHECK(memcmp(&cfg, &before, sizeof(cfg)) == 0, "a refused body changed the config");
        FUZZ_CHECK(err.message[0] != '\0', "refused without a message");
        return 0;
    }
    for (int fields = 0; fields < 2; fields++) {
        ns_buf_t buf = {0};
        rc = ns_run_config_encode_json(&buf, &cfg, (ns_run_config_fields_t)fields);
        FUZZ_CHECK(rc == 0, "encoding a decoded config fails: %d", rc);
        ns_run_config_t again;
        ns_run_config_defaults(&again);
        rc = ns_run_config_decode_json(&again, buf.data, buf.len, &err);
        FUZZ_CHECK(rc == 0, "an encoded config does not decode: %s (%s)", err.message, buf.data);
        FUZZ_CHECK(same_values(&cfg, &again), "round trip changes the config: %s", buf.data);
        ns_buf_free(&buf);
    }
    return 0;
}
