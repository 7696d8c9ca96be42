/* test_answer_cache.c - the shared /sync JSON answers: results with the
 * same contents share one answer, a result that differs in anything the
 * answer shows gets its own; the parts, encoded by many threads at once,
 * join into the text jansson reads back as the results' float32 values
 * (and into the bytes of ns_stats_encode); the oldest answer goes first and
 * oversized ones are not kept. */
#include <check.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api/answer_cache.h"
#include "harness.h"

/* A result of n_layers layers of 'channels' channels, values from 'seed',
 * allocated as the registry allocates it (nsd_sync_result_free frees it). */
static nsd_sync_result_t *result_make(size_t n_layers, size_t channels, unsigned seed,
                                      uint64_t step)
{
    nsd_sync_result_t *r = calloc(1, sizeof(*r));
    r->step = step;
    r->complete = 1;
    r->workers = 2;
    r->n_layers = n_layers;
    r->layers = calloc(n_layers, sizeof(*r->layers));
    for (size_t i = 0; i < n_layers; i++) {
        nsd_sync_layer_t *l = &r->layers[i];
        snprintf(l->name, sizeof(l->name), "layer%zu.bn", i);
        l->count = 200704 + i;
        l->channels = channels;
        l->mean = malloc(2 * channels * sizeof(double));
        l->var = l->mean + channels;
        for (size_t c = 0; c < channels; c++) {
            l->mean[c] = ((double)((seed + i * 31 + c * 7) % 1000) - 500) / 333.0;
            l->var[c] = 0.5 + (double)((seed * 3 + c) % 997) / 997.0;
        }
    }
    return r;
}

static void result_make_incomplete(nsd_sync_result_t *r)
{
    r->complete = 0;
    r->workers = 1;
    r->n_missing = 1;
    r->missing = malloc(sizeof(*r->missing));
    r->missing[0] = 1;
}

/* The answer's parts joined. */
static char *joined(const nsd_answer_t *a, size_t *len)
{
    size_t n, total = 0;
    const ns_buf_t *parts = nsd_answer_parts(a, &n);
    for (size_t i = 0; i < n; i++)
        total += parts[i].len;
    char *text = malloc(total + 1);
    for (size_t i = 0, at = 0; i < n; at += parts[i++].len)
        memcpy(text + at, parts[i].data, parts[i].len);
    text[total] = '\0';
    *len = total;
    return text;
}

START_TEST(test_same_contents_share)
{
    nsd_sync_result_t *r0 = result_make(3, 40, 1, 100), *r1 = result_make(3, 40, 1, 100);
    nsd_answer_t *a0 = nsd_answer_share("share", &r0);
    ck_assert_ptr_nonnull(a0);
    ck_assert_ptr_null(r0); /* taken */
    nsd_answer_t *a1 = nsd_answer_share("share", &r1);
    ck_assert_ptr_eq(a0, a1);
    ck_assert_ptr_nonnull(r1); /* still the caller's */
    ck_assert_uint_eq(nsd_answer_result(a1)->step, 100);
    /* Anything the answer shows, changed: another answer. */
    for (int what = 0; what < 8; what++) {
        nsd_sync_result_t *r = result_make(3, 40, 1, 100);
        const char *run = "share";
        switch (what) {
        case 0: r->layers[2].var[39] = nextafter(r->layers[2].var[39], 2.0); break;
        case 1: r->layers[0].mean[0] = -r->layers[0].mean[0] - 1; break;
        case 2: r->layers[1].count++; break;
        case 3: r->layers[1].name[0] = 'L'; break;
        case 4: r->step++; break;
        case 5: result_make_incomplete(r); break;
        case 6: run = "share2"; break;
        case 7: /* the same first two layers, one fewer */
            nsd_sync_result_free(r);
            r = result_make(2, 40, 1, 100);
            break;
        }
        nsd_answer_t *other = nsd_answer_share(run, &r);
        ck_assert_msg(other != NULL && other != a0, "change %d shared the answer", what);
        ck_assert_ptr_null(r);
        nsd_answer_release(other);
    }
    nsd_sync_result_free(r1);
    nsd_answer_release(a0);
    nsd_answer_release(a1);
}
END_TEST

typedef struct encoder_s {
    nsd_answer_t *a;
    int rc;
} encoder_t;

static void *encode_thread(void *arg)
{
    encoder_t *e = arg;
    e->rc = nsd_answer_encode(e->a);
    return NULL;
}

/* Threads encoding one answer at once: all see it whole; jansson reads the
 * float32 of every value back, the missing workers and the counts. */
START_TEST(test_encoded_by_many_threads)
{
    enum { THREADS = 8 };
    for (int round = 0; round < 20; round++) {
        nsd_sync_result_t *r = result_make(12, 64 + (size_t)round * 13, (unsigned)round, 7);
        result_make_incomplete(r);
        nsd_sync_result_t *copy = result_make(12, 64 + (size_t)round * 13, (unsigned)round, 7);
        nsd_answer_t *a = nsd_answer_share("threads", &r);
        pthread_t t[THREADS];
        encoder_t e[THREADS];
        for (int i = 0; i < THREADS; i++) {
            e[i] = (encoder_t){nsd_answer_ref(a), -1};
            ck_assert_int_eq(pthread_create(&t[i], NULL, encode_thread, &e[i]), 0);
        }
        for (int i = 0; i < THREADS; i++) {
            pthread_join(t[i], NULL);
            ck_assert_int_eq(e[i].rc, 0);
            nsd_answer_release(e[i].a);
        }
        size_t len;
        char *text = joined(a, &len);
        json_error_t jerr;
        json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        ck_assert_msg(root != NULL, "%s", jerr.text);
        ck_assert_int_eq(json_integer_value(json_object_get(root, "step")), 7);
        ck_assert(json_is_false(json_object_get(root, "complete")));
        ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(root, "missing"), 0)),
                         1);
        json_t *layers = json_object_get(root, "layers");
        ck_assert_uint_eq(json_object_size(layers), 12);
        for (size_t l = 0; l < 12; l++) {
            const nsd_sync_layer_t *want = &copy->layers[l];
            json_t *layer = json_object_get(layers, want->name);
            ck_assert_int_eq(json_integer_value(json_object_get(layer, "count")),
                             (json_int_t)want->count);
            json_t *mean = json_object_get(layer, "mean"), *var = json_object_get(layer, "var");
            ck_assert_uint_eq(json_array_size(mean), want->channels);
            for (size_t c = 0; c < want->channels; c++) {
                ck_assert((float)json_number_value(json_array_get(mean, c)) ==
                          (float)want->mean[c]);
                ck_assert((float)json_number_value(json_array_get(var, c)) ==
                          (float)want->var[c]);
            }
        }
        json_decref(root);
        /* The bytes of the whole encoding. */
        nsd_answer_fields_t f;
        ck_assert_int_eq(nsd_answer_fields(&f, nsd_answer_result(a)), 0);
        ns_buf_t whole = {0};
        ck_assert_int_eq(ns_stats_encode(&whole, NS_FORMAT_JSON, f.meta, f.n_meta, f.layers,
                                         f.n_layers),
                         0);
        ck_assert_uint_eq(whole.len, len);
        ck_assert(memcmp(whole.data, text, len) == 0);
        ns_buf_free(&whole);
        nsd_answer_fields_free(&f);
        free(text);
        nsd_sync_result_free(copy);
        nsd_answer_release(a);
    }
}
END_TEST

START_TEST(test_oldest_replaced_and_bounded)
{
    nsd_answer_t *made[NSD_ANSWER_CACHE_ENTRIES + 1];
    for (int i = 0; i <= NSD_ANSWER_CACHE_ENTRIES; i++) {
        nsd_sync_result_t *r = result_make(2, 8, 50, 1000 + (uint64_t)i);
        made[i] = nsd_answer_share("oldest", &r);
        ck_assert_ptr_null(r);
    }
    /* The first is gone; the others are found. */
    for (int i = NSD_ANSWER_CACHE_ENTRIES; i >= 0; i--) {
        nsd_sync_result_t *r = result_make(2, 8, 50, 1000 + (uint64_t)i);
        nsd_answer_t *again = nsd_answer_share("oldest", &r);
        ck_assert(i == 0 ? again != made[i] && r == NULL : again == made[i] && r != NULL);
        nsd_sync_result_free(r);
        nsd_answer_release(again);
    }
    for (int i = 0; i <= NSD_ANSWER_CACHE_ENTRIES; i++)
        nsd_answer_release(made[i]);
    /* Arrays above half the bound (their text adds about 0.7 times their
     * bytes): made, not kept. */
    size_t channels = NSD_ANSWER_CACHE_MAX_BYTES / 2 / (2 * sizeof(double)) + 1;
    nsd_sync_result_t *big = result_make(1, channels, 3, 5), *big2 = result_make(1, channels, 3, 5);
    nsd_answer_t *a = nsd_answer_share("big", &big), *b = nsd_answer_share("big", &big2);
    ck_assert(a != NULL && b != NULL && a != b && big == NULL && big2 == NULL);
    nsd_answer_release(a);
    nsd_answer_release(b);
    /* Just below: kept. */
    channels = NSD_ANSWER_CACHE_MAX_BYTES / 2 / (2 * sizeof(double));
    big = result_make(1, channels, 4, 6);
    big2 = result_make(1, channels, 4, 6);
    a = nsd_answer_share("big", &big);
    b = nsd_answer_share("big", &big2);
    ck_assert(a != NULL && a == b && big == NULL && big2 != NULL);
    nsd_sync_result_free(big2);
    nsd_answer_release(a);
    nsd_answer_release(b);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("answer_cache");
    TCase *tc = tcase_create("answer_cache");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_same_contents_share);
    tcase_add_test(tc, test_encoded_by_many_threads);
    tcase_add_test(tc, test_oldest_replaced_and_bounded);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
