/* test_proto_config.c - the run configuration's JSON (PUT /v1/runs/{run}, a
 * run's view) in both directions, and the mixture query of GET /stats. */
#include <normstat/proto.h>

#include <stdio.h>
#include <string.h>

#include "harness.h"

static int decode(ns_run_config_t *cfg, const char *body, ns_error_detail_t *err)
{
    return ns_run_config_decode_json(cfg, body, strlen(body), err);
}

START_TEST(test_defaults)
{
    ns_run_config_t cfg;
    memset(&cfg, 0x5a, sizeof(cfg));
    ns_run_config_defaults(&cfg);
    /* doc/design.md: world_size 1, momentum 0.1, sync_timeout_ms 60000, partial, no debias */
    ck_assert_uint_eq(cfg.world_size, 1);
    ck_assert(cfg.momentum == 0.1);
    ck_assert_uint_eq(cfg.sync_timeout_ms, 60000);
    ck_assert_int_eq(cfg.on_timeout_drop, 0);
    ck_assert_int_eq(cfg.ema_debias, 0);
    ck_assert_int_eq(cfg.has_world_size | cfg.has_momentum | cfg.has_sync_timeout_ms |
                         cfg.has_on_timeout | cfg.has_ema_debias,
                     0);
}
END_TEST

START_TEST(test_full_and_partial_bodies)
{
    ns_run_config_t cfg;
    ns_error_detail_t err = {0};
    ns_run_config_defaults(&cfg);
    ck_assert_int_eq(decode(&cfg,
                            "{\"world_size\": 8, \"momentum\": null, \"sync_timeout_ms\": 250,"
                            " \"on_timeout\": \"drop\", \"ema_debias\": true}",
                            &err),
                     0);
    ck_assert_uint_eq(cfg.world_size, 8);
    ck_assert(cfg.momentum == NS_MOMENTUM_CUMULATIVE);
    ck_assert_uint_eq(cfg.sync_timeout_ms, 250);
    ck_assert_int_eq(cfg.on_timeout_drop, 1);
    ck_assert_int_eq(cfg.ema_debias, 1);
    ck_assert(cfg.has_world_size && cfg.has_momentum && cfg.has_sync_timeout_ms &&
              cfg.has_on_timeout && cfg.has_ema_debias);

    /* A later partial body keeps what it does not name. */
    ns_run_config_t upd = cfg;
    upd.has_world_size = upd.has_momentum = upd.has_sync_timeout_ms = 0;
    upd.has_on_timeout = upd.has_ema_debias = 0;
    ck_assert_int_eq(decode(&upd, "{\"momentum\": 1}", &err), 0);
    ck_assert(upd.momentum == 1.0 && upd.has_momentum);
    ck_assert_uint_eq(upd.world_size, 8);
    ck_assert(!upd.has_world_size);
    ck_assert_int_eq(decode(&upd, "{\"momentum\": 0, \"on_timeout\": \"partial\"}", &err), 0);
    ck_assert(upd.momentum == 0.0);
    ck_assert_int_eq(upd.on_timeout_drop, 0);
    ck_assert_int_eq(decode(&upd, "{\"momentum\": 0.25}", &err), 0);
    ck_assert(upd.momentum == 0.25);

    /* Empty bodies are {}. */
    ns_run_config_t before = upd;
    ck_assert_int_eq(ns_run_config_decode_json(&upd, "", 0, &err), 0);
    ck_assert_int_eq(ns_run_config_decode_json(&upd, NULL, 0, &err), 0);
    ck_assert_int_eq(decode(&upd, " \r\n\t", &err), 0);
    ck_assert_int_eq(decode(&upd, "{}", &err), 0);
    ck_assert_int_eq(memcmp(&before, &upd, sizeof(upd)), 0);
    ck_assert_int_eq(err.code, 0);
}
END_TEST

START_TEST(test_rejected_bodies_change_nothing)
{
    static const struct {
        const char *body, *message;
    } cases[] = {
        {"{\"world_size\": 0}", "world_size: expected an integer in [1, 4294967295]"},
        {"{\"world_size\": 4294967296}", "world_size: expected an integer in [1, 4294967295]"},
        {"{\"world_size\": 2.0}", "world_size: expected an integer in [1, 4294967295]"},
        {"{\"world_size\": \"2\"}", "world_size: expected an integer in [1, 4294967295]"},
        {"{\"momentum\": 1.5}",
         "momentum: expected a number in [0, 1] or null (cumulative average)"},
        {"{\"momentum\": -0.1}",
         "momentum: expected a number in [0, 1] or null (cumulative average)"},
        {"{\"momentum\": \"0.1\"}",
         "momentum: expected a number in [0, 1] or null (cumulative average)"},
        {"{\"sync_timeout_ms\": 0}", "sync_timeout_ms: expected an integer >= 1"},
        {"{\"sync_timeout_ms\": 1.5}", "sync_timeout_ms: expected an integer >= 1"},
        {"{\"on_timeout\": \"wait\"}", "on_timeout: expected \"partial\" or \"drop\""},
        {"{\"on_timeout\": null}", "on_timeout: expected \"partial\" or \"drop\""},
        {"{\"ema_debias\": 1}", "ema_debias: expected a boolean"},
        {"{\"world_sise\": 2}", "world_sise: unknown field"},
        {"{\"world_size\": 2, \"world_size\": 3}",
         "invalid JSON at line 1, column 30: duplicate object key near '\"world_size\"'"},
        {"[]", "request body must be a JSON object"},
        {"{", "invalid JSON at line 1, column 1: string or '}' expected near end of file"},
        /* the first fields are valid: still nothing is applied */
        {"{\"world_size\": 4, \"momentum\": 2}",
         "momentum: expected a number in [0, 1] or null (cumulative average)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ns_run_config_t cfg, before;
        ns_run_config_defaults(&cfg);
        before = cfg;
        ns_error_detail_t err = {0};
        ck_assert_int_eq(decode(&cfg, cases[i].body, &err), NS_EINVAL);
        ck_assert_int_eq(err.code, NS_EINVAL);
        ck_assert_msg(strcmp(err.message, cases[i].message) == 0, "%s: got \"%s\"", cases[i].body,
                      err.message);
        ck_assert_int_eq(memcmp(&cfg, &before, sizeof(cfg)), 0);
    }
}
END_TEST

/* ---------------------------------------------------------------- mixtures */

static void encode(const ns_run_config_t *cfg, ns_run_config_fields_t fields, const char *want)
{
    ns_buf_t buf = {0};
    ck_assert_int_eq(ns_run_config_encode_json(&buf, cfg, fields), 0);
    ck_assert_str_eq(buf.data ? buf.data : "", want);
    ns_buf_free(&buf);
}

START_TEST(test_encode)
{
    ns_run_config_t cfg;
    ns_run_config_defaults(&cfg);
    encode(&cfg, NS_RUN_CONFIG_ALL,
           "{\"world_size\":1,\"momentum\":0.10000000000000001,\"sync_timeout_ms\":60000,"
           "\"on_timeout\":\"partial\",\"ema_debias\":false}");
    encode(&cfg, NS_RUN_CONFIG_SET, "{}");

    cfg.world_size = 65536;
    cfg.momentum = NS_MOMENTUM_CUMULATIVE;
    cfg.sync_timeout_ms = 9007199254740993ull;
    cfg.on_timeout_drop = cfg.ema_debias = 1;
    encode(&cfg, NS_RUN_CONFIG_ALL,
           "{\"world_size\":65536,\"momentum\":null,\"sync_timeout_ms\":9007199254740993,"
           "\"on_timeout\":\"drop\",\"ema_debias\":true}");
    cfg.has_momentum = cfg.has_on_timeout = 1;
    encode(&cfg, NS_RUN_CONFIG_SET, "{\"momentum\":null,\"on_timeout\":\"drop\"}");
    cfg.momentum = 1.0;
    encode(&cfg, NS_RUN_CONFIG_SET, "{\"momentum\":1.0,\"on_timeout\":\"drop\"}");
}
END_TEST

START_TEST(test_encode_decode_round_trip)
{
    const double momenta[] = {
        0.0, 0.1, 1.0 / 3.0, 0.999999999999, 1.0, 5e-324, NS_MOMENTUM_CUMULATIVE};
    for (size_t i = 0; i < sizeof(momenta) / sizeof(momenta[0]); i++) {
        ns_run_config_t cfg, back;
        ns_run_config_defaults(&cfg);
        cfg.world_size = (uint32_t)(i + 1) * 1000;
        cfg.momentum = momenta[i];
        cfg.sync_timeout_ms = 1 + i;
        cfg.on_timeout_drop = (int)(i & 1);
        cfg.ema_debias = (int)(i & 2) != 0;
        ns_buf_t buf = {0};
        ck_assert_int_eq(ns_run_config_encode_json(&buf, &cfg, NS_RUN_CONFIG_ALL), 0);
        ns_run_config_defaults(&back);
        ck_assert_int_eq(ns_run_config_decode_json(&back, buf.data, buf.len, NULL), 0);
        ck_assert(back.has_world_size && back.has_momentum && back.has_sync_timeout_ms &&
                  back.has_on_timeout && back.has_ema_debias);
        ck_assert_uint_eq(back.world_size, cfg.world_size);
        ck_assert(memcmp(&back.momentum, &cfg.momentum, sizeof(double)) == 0);
        ck_assert_uint_eq(back.sync_timeout_ms, cfg.sync_timeout_ms);
        ck_assert_int_eq(back.on_timeout_drop, cfg.on_timeout_drop);
        ck_assert_int_eq(back.ema_debias, cfg.ema_debias);
        ns_buf_free(&buf);
    }
}
END_TEST

START_TEST(test_encode_ceiling)
{
    ns_run_config_t cfg;
    ns_buf_t buf;
    ns_run_config_defaults(&cfg);
    ns_buf_init(&buf, 16);
    ck_assert_int_eq(ns_run_config_encode_json(&buf, &cfg, NS_RUN_CONFIG_ALL), NS_ETOOLARGE);
    ck_assert_ptr_null(buf.data);
}
END_TEST

START_TEST(test_mixture_valid)
{
    ns_mixture_weight_t w[4];
    size_t n = 99;
    ns_error_detail_t err = {0};
    ck_assert_int_eq(ns_mixture_parse(w, 4, &n, "a:0.7,b:0.3", &err), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(w[0].domain, "a");
    ck_assert(w[0].weight == 0.7);
    ck_assert_str_eq(w[1].domain, "b");
    ck_assert(w[1].weight == 0.3);
    /* names with ':' and '.', integer, exponent and zero weights */
    ck_assert_int_eq(ns_mixture_parse(w, 4, &n, "photo:v2:2,x.y:0,z:.5,q-1:1e-1", &err), 0);
    ck_assert_uint_eq(n, 4);
    ck_assert_str_eq(w[0].domain, "photo:v2");
    ck_assert(w[0].weight == 2.0);
    ck_assert_str_eq(w[1].domain, "x.y");
    ck_assert(w[1].weight == 0.0);
    ck_assert(w[2].weight == 0.5);
    ck_assert(w[3].weight == 0.1);
    ck_assert_int_eq(ns_mixture_parse(w, 1, &n, "only:3", &err), 0);
    ck_assert_uint_eq(n, 1);
}
END_TEST

START_TEST(test_mixture_invalid)
{
    static const struct {
        const char *src, *message;
    } cases[] = {
        {"", "mixture: expected domain:weight[,domain:weight...]"},
        {"a", "mixture: \"a\": expected domain:weight"},
        {"a:0.5,", "mixture: \"\": expected domain:weight"},
        {":0.5", "mixture: \":0.5\": invalid domain name"},
        {"a b:1", "mixture: \"a b\": invalid domain name"},
        {"*:1", "mixture: \"*\": invalid domain name"},
        {"a:1,a:2", "mixture: \"a\" appears twice"},
        {"a:-1", "mixture: \"a\": weight must be a finite number >= 0"},
        {"a:nan", "mixture: \"a\": weight must be a finite number >= 0"},
        {"a:inf", "mixture: \"a\": weight must be a finite number >= 0"},
        {"a:1e999", "mixture: \"a\": weight must be a finite number >= 0"},
        {"a:0x10", "mixture: \"a\": weight must be a finite number >= 0"},
        {"a:", "mixture: \"a\": weight must be a finite number >= 0"},
        {"a:1.5.5", "mixture: \"a\": weight must be a finite number >= 0"},
        {"a: 1", "mixture: \"a\": weight must be a finite number >= 0"},
        {"a:0,b:0", "mixture: at least one weight must be > 0"},
        {"a:1,b:1,c:1,d:1,e:1", "mixture: more than 4 domains"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ns_mixture_weight_t w[4];
        size_t n = 99;
        ns_error_detail_t err = {0};
        ck_assert_int_eq(ns_mixture_parse(w, 4, &n, cases[i].src, &err), NS_EINVAL);
        ck_assert_uint_eq(n, 0);
        ck_assert_str_eq(err.field, "mixture");
        ck_assert_msg(strcmp(err.message, cases[i].message) == 0, "%s: got \"%s\"", cases[i].src,
                      err.message);
    }
}
END_TEST

static Suite *proto_config_suite(void)
{
    Suite *s = suite_create("proto_config");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_full_and_partial_bodies);
    tcase_add_test(tc, test_rejected_bodies_change_nothing);
    tcase_add_test(tc, test_encode);
    tcase_add_test(tc, test_encode_decode_round_trip);
    tcase_add_test(tc, test_encode_ceiling);
    tcase_add_test(tc, test_mixture_valid);
    tcase_add_test(tc, test_mixture_invalid);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(proto_config_suite)
