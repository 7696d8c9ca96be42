/* test_registry.c - the run registry: run life cycle, status and stall
 * report, query errors, checkpoint validation, shutdown and delete waking
 * /sync waiters, persistence and wakeup hooks, concurrent reporters, and
 * allocation failures (with and without a persistence hook). */
#include <pthread.h>

#include "nsd_fixture.h"

static ns_run_config_t config(uint32_t world_size)
{
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    cfg.has_world_size = 1;
    cfg.world_size = world_size;
    return cfg;
}

START_TEST(test_run_life_cycle)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    ns_run_config_t cfg = config(3);
    ns_error_detail_t err = {0};
    int created = 0;
    ck_assert_int_eq(nsd_registry_put_run(reg, "r1", &cfg, &created, &err), 0);
    ck_assert_int_eq(created, 1);
    /* Update only what is set. */
    ns_run_config_t upd;
    memset(&upd, 0, sizeof(upd));
    upd.has_momentum = 1;
    upd.momentum = NS_MOMENTUM_CUMULATIVE;
    upd.has_on_timeout = 1;
    upd.on_timeout_drop = 1;
    ck_assert_int_eq(nsd_registry_put_run(reg, "r1", &upd, &created, &err), 0);
    ck_assert_int_eq(created, 0);
    json_t *info = nsd_registry_run_json(reg, "r1", 0, &err);
    json_t *c = json_object_get(info, "config");
    ck_assert_int_eq(json_integer_value(json_object_get(c, "world_size")), 3);
    ck_assert(json_is_null(json_object_get(c, "momentum")));
    ck_assert_str_eq(json_string_value(json_object_get(c, "on_timeout")), "drop");
    ck_assert_int_eq(json_integer_value(json_object_get(c, "sync_timeout_ms")), 60000);
    ck_assert(json_is_false(json_object_get(c, "ema_debias")));
    json_decref(info);
    /* Invalid values and names change nothing. */
    upd.momentum = 1.5;
    memset(&err, 0, sizeof(err));
    ck_assert_int_eq(nsd_registry_put_run(reg, "r1", &upd, NULL, &err), NS_EINVAL);
    ck_assert_str_eq(err.field, "momentum");
    ns_run_config_t ws0 = config(0);
    ck_assert_int_eq(nsd_registry_put_run(reg, "r2", &ws0, NULL, NULL), NS_EINVAL);
    ck_assert_int_eq(nsd_registry_put_run(reg, "bad/name", &cfg, NULL, NULL), NS_EINVAL);
    ck_assert_ptr_null(nsd_registry_run_json(reg, "r2", 0, NULL));
    /* A report creates a run with the report's world_size. */
    float m[2] = {1, 2}, v[2] = {1, 1};
    fx_layer_t l = {"bn", 4, 2, m, v};
    fx_opts_t o = {.world_size = 2};
    ck_assert_int_eq(fx_send(reg, "r0", 0, 1, &o, &l, 1, 0, NULL, NULL), 0);
    /* A rejected report to a missing run leaves no run behind. */
    ck_assert_int_eq(fx_send(reg, "r9", 0, 5, &o, &l, 1, 0, NULL, NULL), NS_EWORKER);
    json_t *list = nsd_registry_list_json(reg, NULL, 0);
    json_t *runs = json_object_get(list, "runs");
    ck_assert_int_eq(json_array_size(runs), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(runs, 0), "run")), "r0");
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(runs, 0), "world_size")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(runs, 0), "pending_steps")),
                     1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(runs, 1), "run")), "r1");
    json_decref(list);
    nsd_counters_t cnt;
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.runs, 2);
    ck_assert_uint_gt(cnt.memory_bytes, 0);
    /* Delete. */
    ck_assert_int_eq(nsd_registry_delete_run(reg, "r0", NULL), 0);
    ck_assert_int_eq(nsd_registry_delete_run(reg, "r0", NULL), NS_ENOTFOUND);
    ck_assert_int_eq(nsd_registry_delete_run(reg, "r1", NULL), 0);
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.runs, 0);
    ck_assert_uint_eq(cnt.memory_bytes, 0);
    ck_assert_uint_eq(cnt.pending_steps, 0);
    nsd_registry_free(reg);
}
END_TEST

START_TEST(test_stall_report)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    ns_run_config_t cfg = config(3);
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
    float m[2] = {1, 2}, v[2] = {1, 1};
    fx_layer_t l = {"bn", 4, 2, m, v};
    /* worker 0 at step 12, worker 2 at 10, worker 1 never reported */
    ck_assert_int_eq(fx_send(reg, "r", 10, 0, NULL, &l, 1, 100, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 10, 2, NULL, &l, 1, 150, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 12, 0, NULL, &l, 1, 300, NULL, NULL), 0);
    json_t *info = nsd_registry_run_json(reg, "r", 1000, NULL);
    json_t *st = json_object_get(info, "status");
    json_t *pending = json_object_get(st, "pending");
    ck_assert_int_eq(json_array_size(pending), 2);
    json_t *p0 = json_array_get(pending, 0);
    ck_assert_str_eq(json_string_value(json_object_get(p0, "layer")), "bn");
    ck_assert_int_eq(json_integer_value(json_object_get(p0, "step")), 10);
    ck_assert_int_eq(json_integer_value(json_object_get(p0, "age_ms")), 900);
    ck_assert_int_eq(json_array_size(json_object_get(p0, "arrived")), 2);
    ck_assert_int_eq(json_array_size(json_object_get(p0, "waiting_for")), 1);
    ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(p0, "waiting_for"), 0)), 1);
    json_t *p1 = json_array_get(pending, 1);
    ck_assert_int_eq(json_integer_value(json_object_get(p1, "step")), 12);
    ck_assert_int_eq(json_array_size(json_object_get(p1, "waiting_for")), 2);
    json_t *workers = json_object_get(st, "workers");
    ck_assert_int_eq(json_array_size(workers), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(workers, 0), "lag")), 0);
    ck_assert(json_is_null(json_object_get(json_array_get(workers, 1), "lag")));
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(workers, 2), "lag")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(workers, 2), "step")), 10);
    json_t *layer = json_object_get(json_object_get(st, "layers"), "bn");
    ck_assert_int_eq(json_integer_value(json_object_get(layer, "channels")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(layer, "pending_steps")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(
                         json_array_get(json_object_get(st, "domains"), 0), "generation")),
                     0);
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(st, "domains"), 0), "domain")),
                     "default");
    json_decref(info);
    nsd_registry_free(reg);
}
END_TEST

START_TEST(test_stats_errors)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    float m[2] = {1, 2}, v[2] = {1, 1};
    fx_layer_t l = {"bn", 4, 2, m, v};
    ck_assert_int_eq(fx_send(reg, "r", 0, 0, NULL, &l, 1, 0, NULL, NULL), 0);
    nsd_stats_query_t q;
    nsd_stats_t *s = NULL;
    ns_error_detail_t err;
    const char layers[2][NS_NAME_MAX + 1] = {"bn", "nope"};

    memset(&q, 0, sizeof(q));
    q.n_layers = 2;
    q.layers = layers;
    memset(&err, 0, sizeof(err));
    ck_assert_int_eq(nsd_registry_stats(reg, "r", &q, &s, &err), NS_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.message, "nope"));
    ck_assert_ptr_null(s);
    q.n_layers = 1; /* "bn" only */
    ck_assert_int_eq(nsd_registry_stats(reg, "r", &q, &s, NULL), 0);
    ck_assert_uint_eq(s->n_layers, 1);
    nsd_stats_free(s);

    memset(&q, 0, sizeof(q));
    snprintf(q.domain, sizeof(q.domain), "photo");
    memset(&err, 0, sizeof(err));
    ck_assert_int_eq(nsd_registry_stats(reg, "r", &q, &s, &err), NS_ENOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.message, "photo"));

    memset(&q, 0, sizeof(q));
    q.biased = 1;
    ck_assert_int_eq(nsd_registry_stats(reg, "r", &q, &s, NULL), NS_EINVAL);
    q.source = NSD_SOURCE_LAST;
    ck_assert_int_eq(nsd_registry_stats(reg, "r", &q, &s, NULL), NS_EINVAL);
    q.source = NSD_SOURCE_PRECISE;
    ck_assert_int_eq(nsd_registry_stats(reg, "r", &q, &s, NULL), 0);
    nsd_stats_free(s);

    memset(&q, 0, sizeof(q));
    q.n_mixture = 1;
    snprintf(q.mixture[0].domain, sizeof(q.mixture[0].domain), "nope");
    q.mixture[0].weight = 1;
    ck_assert_int_eq(nsd_registry_stats(reg, "r", &q, &s, NULL), NS_ENOTFOUND);
    ck_assert_int_eq(nsd_registry_stats(reg, "missing", &q, &s, NULL), NS_ENOTFOUND);
    ck_assert_int_eq(nsd_registry_precise_reset(reg, "missing", NULL, NULL, NULL), NS_ENOTFOUND);
    ck_assert_ptr_null(nsd_registry_checkpoint_export(reg, "missing", NULL));
    nsd_registry_free(reg);
}
END_TEST

/* GET /checkpoint's text (written without a tree) is the export's document:
 * parsed, it equals nsd_checkpoint_export()'s tree, reals and all. */
START_TEST(test_checkpoint_text_equals_export)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    float m[3] = {1.0f, -2.5f, 1e-7f}, v[3] = {1, 0.1f, 3e5f};
    fx_layer_t ls[2] = {{"bn1", 4, 3, m, v}, {"bn2", 0, 0, NULL, NULL}};
    fx_opts_t a = {.domain = "photo"}, b = {.domain = "sketch"};
    for (uint64_t s = 0; s < 3; s++)
        ck_assert_int_eq(fx_send(reg, "r", s, 0, s % 2 ? &a : &b, ls, 2, 0, NULL, NULL), 0);
    ck_assert_int_eq(nsd_registry_precise_reset(reg, "r", "photo", NULL, NULL), 0);
    json_t *tree = nsd_registry_checkpoint_export(reg, "r", NULL);
    ns_buf_t text;
    ns_buf_init(&text, 0);
    ck_assert_int_eq(nsd_registry_checkpoint_text(reg, "r", &text, NULL), 0);
    json_error_t jerr;
    json_t *parsed = json_loadb(text.data, text.len, JSON_REJECT_DUPLICATES, &jerr);
    ck_assert_msg(parsed != NULL, "%s", jerr.text);
    ck_assert_msg(json_equal(parsed, tree), "text %s", text.data);
    ns_buf_free(&text);
    ns_buf_init(&text, 0);
    ck_assert_int_eq(nsd_registry_checkpoint_text(reg, "missing", &text, NULL), NS_ENOTFOUND);
    json_decref(parsed);
    json_decref(tree);
    ns_buf_free(&text);
    nsd_registry_free(reg);
}
END_TEST

/* The checkpoint stream holds its reservation from before its copy until
 * it is freed, pieces arriving one at a time; a run whose copy does not fit
 * the budget is refused with NS_EMEMORY, nothing left reserved. */
START_TEST(test_checkpoint_stream_reserved)
{
    nsd_limits_t lim = {.max_memory = 1u << 20, .threads = 1};
    nsd_registry_t *reg = nsd_registry_create(&lim);
    float m[4] = {1, 2, 3, 4}, v[4] = {1, 1, 2, 2};
    fx_layer_t ls[3] = {{"a", 4, 4, m, v}, {"b", 4, 4, m, v}, {"c", 4, 4, m, v}};
    ck_assert_int_eq(fx_send(reg, "r", 0, 0, NULL, ls, 3, 0, NULL, NULL), 0);
    uint64_t free0 = nsd_registry_mem_free(reg);
    ns_error_detail_t err = {0};
    nsd_checkpoint_stream_t *s = nsd_registry_checkpoint_stream(reg, "r", &err);
    ck_assert_ptr_nonnull(s);
    uint64_t held = free0 - nsd_registry_mem_free(reg);
    ck_assert_uint_gt(held, 0);
    /* the pieces: the head, one per layer, the end */
    ns_buf_t text = {0};
    int done = 0, pieces = 0;
    while (!done) {
        ck_assert_int_eq(nsd_checkpoint_stream_next(s, &text, &done), 0);
        pieces++;
    }
    ck_assert_int_eq(pieces, 1 + 3 + 1);
    ck_assert_uint_le(text.len, held);
    ck_assert_uint_eq(free0 - nsd_registry_mem_free(reg), held);
    nsd_checkpoint_stream_free(s);
    ck_assert_uint_eq(nsd_registry_mem_free(reg), free0);
    /* the same text as the whole-buffer form */
    ns_buf_t whole = {0};
    ck_assert_int_eq(nsd_registry_checkpoint_text(reg, "r", &whole, NULL), 0);
    ck_assert_uint_eq(whole.len, text.len);
    ck_assert_int_eq(memcmp(whole.data, text.data, text.len), 0);
    ns_buf_free(&whole);
    ns_buf_free(&text);
    /* a copy that cannot fit: refused, nothing reserved */
    ck_assert_int_eq(nsd_registry_mem_reserve(reg, free0 - held / 2), 0);
    uint64_t free1 = nsd_registry_mem_free(reg);
    ck_assert_ptr_null(nsd_registry_checkpoint_stream(reg, "r", &err));
    ck_assert_int_eq(err.code, NS_EMEMORY);
    ck_assert_msg(strstr(err.message, "--max-memory") != NULL, "%s", err.message);
    ck_assert_uint_eq(nsd_registry_mem_free(reg), free1);
    nsd_registry_mem_release(reg, free0 - held / 2);
    nsd_registry_free(reg);
}
END_TEST

/* A broken checkpoint is refused with the field named, and changes nothing. */
START_TEST(test_checkpoint_validation)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    float m[2] = {1, 2}, v[2] = {1, 1};
    fx_layer_t l = {"bn", 4, 2, m, v};
    for (uint64_t s = 0; s < 3; s++)
        ck_assert_int_eq(fx_send(reg, "r", s, 0, NULL, &l, 1, 0, NULL, NULL), 0);
    json_t *cp = nsd_registry_checkpoint_export(reg, "r", NULL);
    ck_assert_int_eq(json_integer_value(json_object_get(cp, "version")), 1);
    char *before = fx_snapshot(reg, "r", 0);

    struct {
        const char *path; /* object path, '/'-separated */
        json_t *value;
        const char *field;
    } cases[] = {
        {"version", json_integer(2), "version"},
        {"config/world_size", json_integer(0), "config.world_size"},
        {"config/on_timeout", json_string("later"), "config.on_timeout"},
        {"layers/bn/pooled/running_mean", json_pack("[f]", 1.0), "layers.bn.pooled.running_mean"},
        {"layers/bn/domains/default/precise/m2", json_pack("[f, f]", 1.0, -1.0),
         "layers.bn.domains.default.precise.m2.1"},
        {"layers/bn/domains/default/ema/decay", json_real(2.0),
         "layers.bn.domains.default.ema.decay"},
        {"layers/bn/domains/default/precise/generation", json_integer(7),
         "layers.bn.domains.default.precise.generation"},
        {"layers/bn/domains/other", json_object(), "layers.bn.domains.other"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *copy = json_deep_copy(cp);
        char path[128];
        snprintf(path, sizeof(path), "%s", cases[i].path);
        json_t *obj = copy;
        char *save = NULL, *tok = strtok_r(path, "/", &save), *next;
        while ((next = strtok_r(NULL, "/", &save)) != NULL) {
            obj = json_object_get(obj, tok);
            ck_assert_ptr_nonnull(obj);
            tok = next;
        }
        json_object_set_new(obj, tok, cases[i].value);
        char *text = json_dumps(copy, JSON_COMPACT);
        ns_error_detail_t err = {0};
        ck_assert_int_eq(nsd_registry_checkpoint_import(reg, "r", text, strlen(text), &err),
                         NS_EINVAL);
        ck_assert_msg(strcmp(err.field, cases[i].field) == 0, "case %zu: field %s want %s (%s)", i,
                      err.field, cases[i].field, err.message);
        free(text);
        json_decref(copy);
        char *after = fx_snapshot(reg, "r", 0);
        ck_assert_str_eq(before, after);
        free(after);
    }
    ck_assert_int_eq(nsd_registry_checkpoint_import(reg, "r", "{", 1, NULL), NS_EINVAL);
    /* Importing into a new name creates the run. */
    char *text = json_dumps(cp, JSON_COMPACT);
    ck_assert_int_eq(nsd_registry_checkpoint_import(reg, "copy", text, strlen(text), NULL), 0);
    free(text);
    json_t *cp2 = nsd_registry_checkpoint_export(reg, "copy", NULL);
    json_object_del(cp2, "run");
    json_object_del(cp, "run");
    ck_assert(json_equal(cp, cp2));
    json_decref(cp2);
    json_decref(cp);
    free(before);
    nsd_registry_free(reg);
}
END_TEST

/* Reports whose sums or statistics could overflow are refused (422 naming
 * the field) before anything is accepted: a count above 2^32 (two workers at
 * 2^63-1 used to combine to -2, three to a step discarded after 202s), a mean
 * or variance beyond the bounds that keep every derived value finite, and an
 * arrival that would take the layer's PreciseBN accumulators past 2^63-1
 * once the arrivals already accepted are applied. */
START_TEST(test_report_bounds)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    ns_run_config_t cfg = config(3);
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
    float m[2] = {1, 2}, v[2] = {1, 1};
    fx_layer_t ok = {"bn", 4, 2, m, v};
    for (uint32_t w = 0; w < 3; w++)
        ck_assert_int_eq(fx_send(reg, "r", 0, w, NULL, &ok, 1, 0, NULL, NULL), 0);
    char *before = fx_snapshot(reg, "r", 0);
    float big_m[2] = {3e38f, 0}, neg_m[2] = {0, -0x1.000002p60f}, big_v[2] = {1, 0x1.000002p120f};
    struct {
        fx_layer_t layer;
        const char *field;
    } cases[] = {
        {{"bn", (uint64_t)INT64_MAX, 2, m, v}, "layers.bn.count"},
        {{"bn", NS_COUNT_MAX + 1, 2, m, v}, "layers.bn.count"},
        {{"bn", 4, 2, big_m, v}, "layers.bn.mean[0]"},
        {{"bn", 4, 2, neg_m, v}, "layers.bn.mean[1]"},
        {{"bn", 4, 2, m, big_v}, "layers.bn.var[1]"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        for (uint32_t w = 0; w < 3; w++) {
            ns_error_detail_t err = {0};
            ns_report_t *r = fx_report(1, w, NULL, &cases[i].layer, 1);
            ck_assert_int_eq(nsd_registry_report(reg, "r", r, 0, NULL, NULL, &err), NS_EVALUE);
            ck_assert_msg(strcmp(err.field, cases[i].field) == 0, "case %zu: %s", i, err.message);
            char *after = fx_snapshot(reg, "r", 0);
            ck_assert_str_eq(before, after);
            free(after);
        }
    /* The largest values accepted combine to finite statistics. */
    float edge_m[2] = {0x1p60f, -0x1p60f}, edge_v[2] = {0x1p120f, 0x1p120f};
    fx_layer_t edge = {"bn", NS_COUNT_MAX, 2, edge_m, edge_v};
    float flip_m[2] = {-0x1p60f, 0x1p60f};
    fx_layer_t flip = {"bn", NS_COUNT_MAX, 2, flip_m, edge_v};
    ck_assert_int_eq(fx_send(reg, "r", 1, 0, NULL, &edge, 1, 0, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 1, 1, NULL, &flip, 1, 0, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 1, 2, NULL, &edge, 1, 0, NULL, NULL), 0);
    nsd_stats_t *st = fx_stats(reg, "r", NSD_SOURCE_PRECISE, NULL);
    const ns_out_layer_t *ol = fx_layer_of(st, "bn");
    ck_assert_ptr_nonnull(ol);
    ck_assert_int_eq(fx_scalar(ol, NS_FIELD_NUM_SAMPLES), 12 + 3 * (int64_t)NS_COUNT_MAX);
    for (size_t c = 0; c < 2; c++)
        ck_assert_msg(isfinite((float)ol->arrays[1][c]), "var[%zu] %g", c, ol->arrays[1][c]);
    nsd_stats_free(st);
    free(before);
    nsd_registry_free(reg);
}
END_TEST

/* The accumulator bound counts the arrivals accepted but not applied yet:
 * two arrivals that each fit alone but not together are not both taken. */
START_TEST(test_precise_accumulator_bound)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    ns_run_config_t cfg = config(2);
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
    float m[1] = {1}, v[1] = {1};
    fx_layer_t one = {"bn", 4, 1, m, v};
    ck_assert_int_eq(fx_send(reg, "r", 0, 0, NULL, &one, 1, 0, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 0, 1, NULL, &one, 1, 0, NULL, NULL), 0);
    /* An accumulator near the limit, through an import. */
    json_t *cp = nsd_registry_checkpoint_export(reg, "r", NULL);
    json_t *prec = json_object_get(
        json_object_get(
            json_object_get(json_object_get(json_object_get(cp, "layers"), "bn"), "domains"),
            "default"),
        "precise");
    const uint64_t start = (uint64_t)INT64_MAX - 2 * NS_COUNT_MAX + 1;
    json_object_set_new(prec, "n", json_integer((json_int_t)start));
    char *text = json_dumps(cp, JSON_COMPACT);
    ns_error_detail_t err = {0};
    ck_assert_int_eq(nsd_registry_checkpoint_import(reg, "r", text, strlen(text), &err), 0);
    free(text);
    json_decref(cp);
    fx_layer_t full = {"bn", NS_COUNT_MAX, 1, m, v};
    ck_assert_int_eq(fx_send(reg, "r", 1, 0, NULL, &full, 1, 0, NULL, NULL), 0);
    char *before = fx_snapshot(reg, "r", 0);
    memset(&err, 0, sizeof(err));
    ck_assert_int_eq(
        nsd_registry_report(reg, "r", fx_report(1, 1, NULL, &full, 1), 0, NULL, NULL, &err),
        NS_EVALUE);
    ck_assert_str_eq(err.field, "layers.bn.count");
    char *after = fx_snapshot(reg, "r", 0);
    ck_assert_str_eq(before, after);
    free(after);
    free(before);
    /* What still fits is taken, and the accumulator ends exactly at 2^63-1. */
    fx_layer_t rest = {"bn", NS_COUNT_MAX - 1, 1, m, v};
    ck_assert_int_eq(fx_send(reg, "r", 1, 1, NULL, &rest, 1, 0, NULL, NULL), 0);
    nsd_stats_t *st = fx_stats(reg, "r", NSD_SOURCE_PRECISE, NULL);
    ck_assert_int_eq(fx_scalar(fx_layer_of(st, "bn"), NS_FIELD_NUM_SAMPLES), INT64_MAX);
    nsd_stats_free(st);
    /* Full: any further sample is refused, an empty batch or an EMA-only
     * report is not, and a reset makes room again. */
    fx_layer_t tiny = {"bn", 1, 1, m, v}, empty = {"bn", 0, 0, NULL, NULL};
    ck_assert_int_eq(fx_send(reg, "r", 2, 0, NULL, &tiny, 1, 0, NULL, NULL), NS_EVALUE);
    fx_opts_t ema = {.update = "[\"ema\"]"};
    ck_assert_int_eq(fx_send(reg, "r", 2, 0, &ema, &tiny, 1, 0, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 3, 0, NULL, &empty, 1, 0, NULL, NULL), 0);
    ck_assert_int_eq(nsd_registry_precise_reset(reg, "r", NULL, NULL, NULL), 0);
    ck_assert_int_eq(fx_send(reg, "r", 4, 0, NULL, &tiny, 1, 0, NULL, NULL), 0);
    nsd_registry_free(reg);
}
END_TEST

/* A checkpoint import is refused unless everything it would serve, and
 * everything later steps make of it, is finite and consistent. */
START_TEST(test_checkpoint_bounds)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    float m[2] = {1, 2}, v[2] = {1, 1};
    fx_layer_t l = {"bn", 4, 2, m, v};
    for (uint64_t s = 0; s < 3; s++)
        ck_assert_int_eq(fx_send(reg, "r", s, 0, NULL, &l, 1, 0, NULL, NULL), 0);
    json_t *cp = nsd_registry_checkpoint_export(reg, "r", NULL);
    char *before = fx_snapshot(reg, "r", 0);
    const char *dom = "layers/bn/domains/default/";
    struct {
        const char *path; /* below 'dom' unless it starts with '/' */
        json_t *value;
        const char *field;
    } cases[] = {
        {"ema/running_var", json_pack("[f, f]", 1e308, 1.0), "ema.running_var.0"},
        {"ema/zero_var", json_pack("[f, f]", 1.0, 0x1p123), "ema.zero_var.1"},
        {"ema/running_mean", json_pack("[f, f]", 3e38, 1.0), "ema.running_mean.0"},
        {"/layers/bn/pooled/running_var", json_pack("[f, f]", 1e308, 1.0),
         "layers.bn.pooled.running_var.0"},
        {"precise/num_batches", json_integer(13), "precise.num_batches"},
        {"precise/m2", json_pack("[f, f]", 1.0, 1e300), "precise.m2.1"},
        {"precise/mean", json_pack("[f, f]", -1e30, 1.0), "precise.mean.0"},
        {"last/var", json_pack("[f, f]", 1e300, 1.0), "last.var.0"},
        {"ema/num_batches_tracked", json_integer(INT64_MAX), "ema.num_batches_tracked"},
        {"/layers/bn/last/mean", json_pack("[f, f]", 1.0, 1e20), "layers.bn.last.mean.1"},
        {"/skipped_steps", json_integer(INT64_MAX), "skipped_steps"},
        {"/precise_generation", json_integer(INT64_MAX), "precise_generation"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *copy = json_deep_copy(cp);
        char path[160], field[160];
        snprintf(path, sizeof(path), "%s%s", cases[i].path[0] == '/' ? "" : dom,
                 cases[i].path + (cases[i].path[0] == '/'));
        snprintf(field, sizeof(field), "%s%s",
                 cases[i].path[0] == '/' ? "" : "layers.bn.domains.default.", cases[i].field);
        json_t *obj = copy;
        char *save = NULL, *tok = strtok_r(path, "/", &save), *next;
        while ((next = strtok_r(NULL, "/", &save)) != NULL) {
            obj = json_object_get(obj, tok);
            ck_assert_ptr_nonnull(obj);
            tok = next;
        }
        json_object_set_new(obj, tok, cases[i].value);
        char *text = json_dumps(copy, JSON_COMPACT);
        ns_error_detail_t err = {0};
        ck_assert_int_eq(nsd_registry_checkpoint_import(reg, "r", text, strlen(text), &err),
                         NS_EVALUE);
        ck_assert_msg(strcmp(err.field, field) == 0, "case %zu: field %s want %s (%s)", i,
                      err.field, field, err.message);
        free(text);
        json_decref(copy);
        char *after = fx_snapshot(reg, "r", 0);
        ck_assert_str_eq(before, after);
        free(after);
    }
    /* n 0 or 1 with num_batches 3; n > 0 with no batch. */
    const json_int_t nb[][2] = {{0, 3}, {1, 3}, {5, 0}};
    for (size_t i = 0; i < 3; i++) {
        json_t *copy = json_deep_copy(cp);
        json_t *prec = json_object_get(
            json_object_get(
                json_object_get(json_object_get(json_object_get(copy, "layers"), "bn"), "domains"),
                "default"),
            "precise");
        json_object_set_new(prec, "n", json_integer(nb[i][0]));
        json_object_set_new(prec, "num_batches", json_integer(nb[i][1]));
        char *text = json_dumps(copy, JSON_COMPACT);
        ns_error_detail_t err = {0};
        ck_assert_int_eq(nsd_registry_checkpoint_import(reg, "r", text, strlen(text), &err),
                         NS_EVALUE);
        ck_assert_str_eq(err.field, "layers.bn.domains.default.precise.num_batches");
        free(text);
        json_decref(copy);
        char *after = fx_snapshot(reg, "r", 0);
        ck_assert_str_eq(before, after);
        free(after);
    }
    /* The export itself still imports, unchanged. */
    char *text = json_dumps(cp, JSON_COMPACT);
    ck_assert_int_eq(nsd_registry_checkpoint_import(reg, "r", text, strlen(text), NULL), 0);
    free(text);
    json_t *cp2 = nsd_registry_checkpoint_export(reg, "r", NULL);
    ck_assert(json_equal(cp, cp2));
    json_decref(cp2);
    json_decref(cp);
    free(before);
    nsd_registry_free(reg);
}
END_TEST

START_TEST(test_shutdown_and_delete_wake_waiters)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    ns_run_config_t cfg = config(2);
    ck_assert_int_eq(nsd_registry_put_run(reg, "a", &cfg, NULL, NULL), 0);
    ck_assert_int_eq(nsd_registry_put_run(reg, "b", &cfg, NULL, NULL), 0);
    float m[2] = {1, 2}, v[2] = {1, 1};
    fx_layer_t two[2] = {{"x", 4, 2, m, v}, {"y", 4, 2, m, v}};
    fx_sync_t sa = {0}, sb = {0}, sb2 = {0};
    ck_assert_int_eq(fx_send(reg, "a", 0, 0, NULL, two, 2, 0, fx_sync_cb, &sa), 0);
    ck_assert_int_eq(fx_send(reg, "b", 0, 0, NULL, two, 2, 0, fx_sync_cb, &sb), 0);
    ck_assert_int_eq(fx_send(reg, "b", 1, 0, NULL, two, 1, 0, fx_sync_cb, &sb2), 0);
    nsd_counters_t cnt;
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.sync_waiters, 3);
    ck_assert_int_eq(nsd_registry_delete_run(reg, "a", NULL), 0);
    ck_assert_int_eq(sa.calls, 1);
    ck_assert_int_eq(sa.res->status, NS_ENOTFOUND);
    ck_assert_int_eq(sb.calls, 0);
    nsd_registry_shutdown(reg);
    ck_assert_int_eq(sb.calls, 1);
    ck_assert_int_eq(sb.res->status, NS_ESHUTDOWN);
    ck_assert_int_eq(sb2.calls, 1);
    ck_assert_int_eq(sb2.res->status, NS_ESHUTDOWN);
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.sync_waiters, 0);
    /* After shutdown: reports and PUTs refused, reads work; no double calls. */
    ck_assert_int_eq(fx_send(reg, "b", 0, 1, NULL, two, 2, 0, fx_sync_cb, &sb), NS_ESHUTDOWN);
    ck_assert_int_eq(nsd_registry_put_run(reg, "c", &cfg, NULL, NULL), NS_ESHUTDOWN);
    nsd_registry_expire(reg, UINT64_MAX / 2);
    ck_assert_int_eq(sb.calls, 1);
    json_t *info = nsd_registry_run_json(reg, "b", 0, NULL);
    ck_assert_ptr_nonnull(info);
    json_decref(info);
    fx_sync_clear(&sa);
    fx_sync_clear(&sb);
    fx_sync_clear(&sb2);
    nsd_registry_free(reg);
}
END_TEST

/* ---------------------------------------------------------------- hooks */

typedef struct hooks_seen_s {
    int puts, created, deletes, steps, wakeups;
    uint64_t last_step;
    uint64_t count;
    size_t n_domains;
    char domain0[NS_NAME_MAX + 1];
    double mean0;
} hooks_seen_t;

static void h_put(void *arg, const char *run, const ns_run_config_t *cfg, int created)
{
    hooks_seen_t *h = arg;
    (void)run;
    (void)cfg;
    h->puts++;
    h->created += created;
}

static void h_del(void *arg, const char *run)
{
    (void)run;
    ((hooks_seen_t *)arg)->deletes++;
}

static void h_step(void *arg, const char *run, const nsd_step_t *rec)
{
    hooks_seen_t *h = arg;
    ck_assert_str_eq(run, "r");
    h->steps++;
    h->last_step = rec->step;
    h->count = rec->count;
    h->n_domains = rec->n_domains;
    snprintf(h->domain0, sizeof(h->domain0), "%s", rec->domains[0].name);
    h->mean0 = rec->domains[0].mean[0];
}

static void h_wake(void *arg)
{
    ((hooks_seen_t *)arg)->wakeups++;
}

START_TEST(test_persist_and_wakeup_hooks)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    hooks_seen_t h;
    memset(&h, 0, sizeof(h));
    nsd_persist_t hooks = {
        .arg = &h, .run_put = h_put, .run_deleted = h_del, .step_finalized = h_step};
    nsd_registry_set_persist(reg, &hooks);
    nsd_registry_set_wakeup(reg, h_wake, &h);
    ns_run_config_t cfg = config(2);
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
    ck_assert_int_eq(h.puts, 1);
    ck_assert_int_eq(h.created, 1);
    float m0[2] = {1, 2}, m1[2] = {3, 4}, v[2] = {1, 1};
    fx_layer_t l0 = {"bn", 4, 2, m0, v}, l1 = {"bn", 4, 2, m1, v};
    fx_opts_t od = {.domain = "d"}, oe = {.domain = "e"};
    ck_assert_int_eq(fx_send(reg, "r", 5, 0, &od, &l0, 1, 100, NULL, NULL), 0);
    ck_assert_int_eq(h.wakeups, 1); /* the first deadline */
    ck_assert_int_eq(fx_send(reg, "r", 5, 1, &oe, &l1, 1, 100, NULL, NULL), 0);
    ck_assert_int_eq(h.steps, 1);
    ck_assert_uint_eq(h.last_step, 5);
    ck_assert_uint_eq(h.count, 8);
    ck_assert_uint_eq(h.n_domains, 2);
    ck_assert_str_eq(h.domain0, "d");
    ck_assert(h.mean0 == 1.0);
    /* A later deadline does not wake; an earlier one would. */
    ck_assert_uint_eq(nsd_registry_expire(reg, 0), UINT64_MAX);
    ck_assert_int_eq(fx_send(reg, "r", 6, 0, &od, &l0, 1, 200, NULL, NULL), 0);
    ck_assert_int_eq(h.wakeups, 2);
    ck_assert_int_eq(fx_send(reg, "r", 6, 0, &od, &l0, 1, 200, NULL, NULL), NS_EDUPLICATE);
    ck_assert_int_eq(fx_send(reg, "r", 7, 0, &od, &l0, 1, 300, NULL, NULL), 0);
    ck_assert_int_eq(h.wakeups, 2);
    /* A step its first report completes (world_size 1) never has a
     * deadline to wait for: no wakeup. */
    ck_assert_int_eq(nsd_registry_delete_run(reg, "r", NULL), 0);
    ck_assert_int_eq(h.deletes, 1);
    ns_run_config_t one = config(1);
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &one, NULL, NULL), 0);
    ck_assert_uint_eq(nsd_registry_expire(reg, 400), UINT64_MAX);
    ck_assert_int_eq(fx_send(reg, "r", 1, 0, &od, &l0, 1, 400, NULL, NULL), 0);
    ck_assert_int_eq(h.wakeups, 2);
    nsd_registry_free(reg);
}
END_TEST

/* ---------------------------------------------------------------- threads */

#define T_WORKERS 4
#define T_STEPS   50
#define T_C       16

typedef struct thread_arg_s {
    nsd_registry_t *reg;
    uint32_t worker;
    float (*mean)[T_WORKERS][T_C];
    float (*var)[T_WORKERS][T_C];
    int fails;
    int calls;
    pthread_mutex_t *lock;
} thread_arg_t;

static void t_cb(void *arg, nsd_sync_result_t *res)
{
    thread_arg_t *t = arg;
    pthread_mutex_lock(t->lock);
    t->calls++;
    if (res->status != 0 || !res->complete || res->workers != T_WORKERS)
        t->fails++;
    pthread_mutex_unlock(t->lock);
    nsd_sync_result_free(res);
}

static void *t_main(void *p)
{
    thread_arg_t *t = p;
    for (uint64_t s = 0; s < T_STEPS; s++) {
        fx_layer_t l[2] = {{"a", 10 + t->worker, T_C, t->mean[s][t->worker], t->var[s][t->worker]},
                           {"b", 3, T_C, t->mean[s][t->worker], t->var[s][t->worker]}};
        ns_report_t *r = fx_report(s, t->worker, NULL, l, 2);
        ns_error_detail_t err = {0};
        if (nsd_registry_report(t->reg, "r", r, 0, s % 2 ? t_cb : NULL, t, &err) != 0)
            t->fails++;
        if (s % 7 == 0) {
            nsd_stats_t *st = NULL;
            nsd_stats_query_t q;
            memset(&q, 0, sizeof(q));
            if (nsd_registry_stats(t->reg, "r", &q, &st, NULL) != 0)
                t->fails++;
            nsd_stats_free(st);
        }
    }
    return NULL;
}

/* Concurrent reporters give the same bits as one thread reporting in order. */
START_TEST(test_concurrent_reports)
{
    uint64_t rng = ns_test_seed() + 77;
    static float mean[T_STEPS][T_WORKERS][T_C], var[T_STEPS][T_WORKERS][T_C];
    for (int s = 0; s < T_STEPS; s++)
        for (int w = 0; w < T_WORKERS; w++) {
            fx_random_floats(&rng, mean[s][w], T_C, -2, 2);
            fx_random_floats(&rng, var[s][w], T_C, 0, 3);
        }
    nsd_limits_t lim = {.threads = 2};
    nsd_registry_t *conc = nsd_registry_create(&lim), *seq = nsd_registry_create(&lim);
    ns_run_config_t cfg = config(T_WORKERS);
    ck_assert_int_eq(nsd_registry_put_run(conc, "r", &cfg, NULL, NULL), 0);
    ck_assert_int_eq(nsd_registry_put_run(seq, "r", &cfg, NULL, NULL), 0);
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_t th[T_WORKERS];
    thread_arg_t ta[T_WORKERS];
    for (uint32_t w = 0; w < T_WORKERS; w++) {
        ta[w] = (thread_arg_t){conc, w, mean, var, 0, 0, &lock};
        ck_assert_int_eq(pthread_create(&th[w], NULL, t_main, &ta[w]), 0);
    }
    for (uint32_t w = 0; w < T_WORKERS; w++)
        ck_assert_int_eq(pthread_join(th[w], NULL), 0);
    for (uint64_t s = 0; s < T_STEPS; s++)
        for (uint32_t w = 0; w < T_WORKERS; w++) {
            fx_layer_t l[2] = {{"a", 10 + w, T_C, mean[s][w], var[s][w]},
                               {"b", 3, T_C, mean[s][w], var[s][w]}};
            ck_assert_int_eq(fx_send(seq, "r", s, w, NULL, l, 2, 0, NULL, NULL), 0);
        }
    for (uint32_t w = 0; w < T_WORKERS; w++) {
        ck_assert_int_eq(ta[w].fails, 0);
        ck_assert_int_eq(ta[w].calls, T_STEPS / 2);
    }
    char *a = fx_snapshot(conc, "r", 0), *b = fx_snapshot(seq, "r", 0);
    ck_assert_str_eq(a, b);
    free(a);
    free(b);
    nsd_counters_t cnt;
    nsd_registry_counters(conc, &cnt);
    ck_assert_uint_eq(cnt.steps_applied, 2 * T_STEPS);
    ck_assert_uint_eq(cnt.pending_steps, 0);
    ck_assert_uint_eq(cnt.sync_waiters, 0);
    nsd_registry_free(conc);
    nsd_registry_free(seq);
}
END_TEST

/* ---------------------------------------------------------------- allocation failures */

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define FAIL_ALLOC_TEST 1
/* This program replaces malloc/calloc/realloc (glibc allows it) to fail the
 * Nth allocation after fail_at is set; free stays glibc's, same heap. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
static long fail_at = -1, alloc_count;

static int should_fail(void)
{
    return fail_at >= 0 && alloc_count++ == fail_at;
}

void *malloc(size_t n);
void *calloc(size_t k, size_t n);
void *realloc(void *p, size_t n);

void *malloc(size_t n)
{
    return should_fail() ? NULL : __libc_malloc(n);
}

void *calloc(size_t k, size_t n)
{
    return should_fail() ? NULL : __libc_calloc(k, n);
}

void *realloc(void *p, size_t n)
{
    return should_fail() ? NULL : __libc_realloc(p, n);
}

static long hook_steps; /* step_finalized calls of the attempt */

static void count_step(void *arg, const char *run, const nsd_step_t *rec)
{
    (void)arg;
    (void)run;
    (void)rec;
    hook_steps++;
}

/* Send the report that fails, then time out what it left pending. */
static int failing_report(nsd_registry_t *reg, const fx_layer_t *l3, fx_sync_t *sync, long n)
{
    fx_opts_t od = {.domain = "d"};
    ns_report_t *r = fx_report(0, 1, &od, l3, 3);
    ns_error_detail_t err = {0};
    hook_steps = 0;
    alloc_count = 0;
    fail_at = n;
    int rc = nsd_registry_report(reg, "r", r, 0, fx_sync_cb, sync, &err);
    fail_at = -1;
    /* Layer c waits for worker 0: time it out (partial). */
    if (rc == 0 && sync->calls == 0)
        nsd_registry_expire(reg, UINT64_MAX / 2);
    return rc;
}

/* Fail allocation N = 0, 1, 2, ... of a report that creates a layer, a
 * domain and completes a /sync step: each failure returns NS_ENOMEM and
 * leaves the state exactly as it was, without calling back. With a
 * persistence hook installed ('persisted'), the hook is handed each
 * finalized step itself (no copy is allocated for it), so every step that
 * finalizes reaches the hook whatever allocation fails. */
static void allocation_failures(int persisted)
{
    nsd_registry_t *reg = nsd_registry_create(NULL);
    if (persisted) {
        nsd_persist_t hooks = {0};
        hooks.step_finalized = count_step;
        nsd_registry_set_persist(reg, &hooks);
    }
    ns_run_config_t cfg = config(2);
    ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
    float m[3] = {1, 2, 3}, v[3] = {1, 1, 1};
    fx_layer_t l[2] = {{"a", 4, 3, m, v}, {"b", 4, 3, m, v}};
    ck_assert_int_eq(fx_send(reg, "r", 0, 0, NULL, l, 2, 0, NULL, NULL), 0);
    /* layer c is new: created by the failing report */
    fx_layer_t l3[3] = {l[0], l[1], {"c", 0, 0, NULL, NULL}};
    char *before = fx_snapshot(reg, "r", 0);
    long all_records = 0;
    if (persisted) {
        /* How many records the report hands over when nothing fails. */
        fx_sync_t sync = {0};
        ck_assert_int_eq(failing_report(reg, l3, &sync, -1), 0);
        all_records = hook_steps;
        ck_assert_int_eq(all_records, 3);
        fx_sync_clear(&sync);
        nsd_registry_delete_run(reg, "r", NULL);
        ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
        ck_assert_int_eq(fx_send(reg, "r", 0, 0, NULL, l, 2, 0, NULL, NULL), 0);
    }
    int done = 0, enomem_results = 0, lost_records = 0;
    for (long n = 0; n < 10000 && !done; n++) {
        fx_sync_t sync = {0};
        int rc = failing_report(reg, l3, &sync, n);
        if (rc == 0) {
            /* Allocations after the commit (finalization) may still fail:
             * the step is then lost and the /sync answer says so. */
            ck_assert_msg(sync.calls == 1, "allocation %ld: no callback", n);
            ck_assert(sync.res->status == 0 || sync.res->status == NS_ENOMEM);
            if (sync.res->status == 0 && hook_steps == all_records) {
                done = 1;
            } else {
                if (sync.res->status == 0)
                    lost_records++;
                else
                    enomem_results++;
                nsd_registry_delete_run(reg, "r", NULL);
                ck_assert_int_eq(nsd_registry_put_run(reg, "r", &cfg, NULL, NULL), 0);
                ck_assert_int_eq(fx_send(reg, "r", 0, 0, NULL, l, 2, 0, NULL, NULL), 0);
            }
        } else {
            ck_assert_int_eq(rc, NS_ENOMEM);
            ck_assert_int_eq(sync.calls, 0);
            char *after = fx_snapshot(reg, "r", 0);
            ck_assert_msg(strcmp(before, after) == 0, "failing allocation %ld changed the state",
                          n);
            free(after);
        }
        fx_sync_clear(&sync);
    }
    ck_assert(done);
    free(before);
    /* the successful report finalized a and b with every allocation */
    nsd_stats_t *st = fx_stats(reg, "r", NSD_SOURCE_LAST, NULL);
    ck_assert_uint_eq(st->n_layers, 2); /* c has no channels */
    nsd_stats_free(st);
    ck_assert_int_gt(enomem_results, 0); /* the loop did reach finalization */
    ck_assert_int_eq(lost_records, 0);   /* a finalized step always reached the hook */
    nsd_counters_t cnt;
    nsd_registry_counters(reg, &cnt);
    ck_assert_uint_eq(cnt.sync_waiters, 0);
    nsd_registry_free(reg);
}

START_TEST(test_allocation_failures)
{
    allocation_failures(0);
}
END_TEST

START_TEST(test_allocation_failures_persisted)
{
    allocation_failures(1);
}
END_TEST
#endif

static Suite *make_suite(void)
{
    Suite *s = suite_create("registry");
    TCase *tc = tcase_create("registry");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_run_life_cycle);
    tcase_add_test(tc, test_checkpoint_text_equals_export);
    tcase_add_test(tc, test_checkpoint_stream_reserved);
    tcase_add_test(tc, test_stall_report);
    tcase_add_test(tc, test_stats_errors);
    tcase_add_test(tc, test_checkpoint_validation);
    tcase_add_test(tc, test_report_bounds);
    tcase_add_test(tc, test_precise_accumulator_bound);
    tcase_add_test(tc, test_checkpoint_bounds);
    tcase_add_test(tc, test_shutdown_and_delete_wake_waiters);
    tcase_add_test(tc, test_persist_and_wakeup_hooks);
    tcase_add_test(tc, test_concurrent_reports);
#ifdef FAIL_ALLOC_TEST
    tcase_add_test(tc, test_allocation_failures);
    tcase_add_test(tc, test_allocation_failures_persisted);
#endif
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
