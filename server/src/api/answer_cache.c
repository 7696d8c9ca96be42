/* answer_cache.c - /sync answers: their fields, and JSON ones encoded once per step by the
 * threads that wait for them (answer_cache.h). */
#include "answer_cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/size_limits.h"

/* ---------------------------------------------------------------- fields */

int nsd_answer_fields(nsd_answer_fields_t *f, const nsd_sync_result_t *res)
{
    memset(f, 0, sizeof(*f));
    f->n_layers = res->n_layers;
    f->layers = calloc(res->n_layers ? res->n_layers : 1, sizeof(*f->layers));
    if (f->layers == NULL)
        return NS_ENOMEM;
    for (size_t i = 0; i < res->n_layers; i++) {
        const nsd_sync_layer_t *src = &res->layers[i];
        ns_out_layer_t *dst = &f->layers[i];
        dst->name = src->name;
        dst->channels = src->channels;
        if (src->channels > 0 && src->mean != NULL && src->var != NULL) {
            dst->n_arrays = 2;
            dst->array_names[0] = NS_FIELD_MEAN;
            dst->arrays[0] = src->mean;
            dst->array_names[1] = NS_FIELD_VAR;
            dst->arrays[1] = src->var;
        }
        dst->n_scalars = 1;
        dst->scalar_names[0] = NS_FIELD_COUNT;
        dst->scalars[0] = (int64_t)src->count;
    }
    /* An incomplete step names the workers that did not arrive. */
    if (!res->complete) {
        ns_buf_t list;
        ns_buf_init(&list, 0);
        int rc = 0;
        for (size_t i = 0; rc == 0 && i < res->n_missing; i++)
            rc = ns_buf_printf(&list, "%s%u", i ? "," : "", res->missing[i]);
        f->missing = rc == 0 ? ns_buf_take(&list, NULL) : NULL;
        if (f->missing == NULL) {
            ns_buf_free(&list);
            nsd_answer_fields_free(f);
            return NS_ENOMEM;
        }
    }
    f->meta[0] = (ns_meta_t){NS_FIELD_STEP, NS_META_INT, NULL, (int64_t)res->step};
    f->meta[1] = (ns_meta_t){NS_FIELD_COMPLETE, NS_META_BOOL, NULL, res->complete ? 1 : 0};
    f->meta[2] = (ns_meta_t){NS_FIELD_WORKERS, NS_META_INT, NULL, (int64_t)res->workers};
    f->meta[3] = (ns_meta_t){NS_FIELD_MISSING, NS_META_INT_LIST, f->missing, 0};
    f->n_meta = f->missing ? 4 : 3;
    return 0;
}

void nsd_answer_fields_free(nsd_answer_fields_t *f)
{
    free(f->layers);
    free(f->missing);
    memset(f, 0, sizeof(*f));
}

/* ---------------------------------------------------------------- shared answers */

struct nsd_answer_s {
    atomic_int refs;
    char *run;
    nsd_sync_result_t *res; /* taken from the worker that made the answer */
    nsd_answer_fields_t fields;
    size_t arrays_bytes;
    pthread_mutex_t lock; /* the parts' progress */
    pthread_cond_t all_done;
    size_t n_parts, next, done;
    int rc;
    ns_buf_t *parts;
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static nsd_answer_t *cache[NSD_ANSWER_CACHE_ENTRIES];
static size_t next_slot; /* the oldest entry, replaced next */

/* Whether the answers of a and b are the same bytes: everything the
 * answer is made of, arrays compared byte for byte. */
static int same_answer(const nsd_answer_t *a, const char *run, const nsd_sync_result_t *b)
{
    const nsd_sync_result_t *r = a->res;
    if (strcmp(a->run, run) != 0 || r->step != b->step || r->complete != b->complete ||
        r->workers != b->workers || r->n_missing != b->n_missing || r->n_layers != b->n_layers ||
        (r->n_missing && memcmp(r->missing, b->missing, r->n_missing * sizeof(*r->missing))))
        return 0;
    for (size_t i = 0; i < r->n_layers; i++) {
        const nsd_sync_layer_t *x = &r->layers[i], *y = &b->layers[i];
        int xa = x->channels > 0 && x->mean != NULL && x->var != NULL;
        int ya = y->channels > 0 && y->mean != NULL && y->var != NULL;
        if (strcmp(x->name, y->name) != 0 || x->count != y->count || x->channels != y->channels ||
            xa != ya)
            return 0;
        if (xa && (memcmp(x->mean, y->mean, x->channels * sizeof(double)) != 0 ||
                   memcmp(x->var, y->var, x->channels * sizeof(double)) != 0))
            return 0;
    }
    return 1;
}

static nsd_answer_t *answer_new(const char *run, nsd_sync_result_t *res)
{
    nsd_answer_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->run = strdup(run);
    if (a->run == NULL || nsd_answer_fields(&a->fields, res) != 0) {
        free(a->run);
        free(a);
        return NULL;
    }
    a->n_parts = ns_stats_json_parts(a->fields.layers, a->fields.n_layers);
    a->parts = calloc(a->n_parts, sizeof(*a->parts));
    if (a->parts == NULL) {
        nsd_answer_fields_free(&a->fields);
        free(a->run);
        free(a);
        return NULL;
    }
    for (size_t p = 0; p < a->n_parts; p++)
        ns_buf_init(&a->parts[p], NSD_ANSWER_MAX);
    for (size_t i = 0; i < res->n_layers; i++)
        a->arrays_bytes += 2 * res->layers[i].channels * sizeof(double);
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->all_done, NULL);
    atomic_init(&a->refs, 1);
    a->res = res;
    return a;
}

nsd_answer_t *nsd_answer_share(const char *run, nsd_sync_result_t **res)
{
    pthread_mutex_lock(&cache_lock);
    for (size_t i = 0; i < NSD_ANSWER_CACHE_ENTRIES; i++)
        if (cache[i] != NULL && same_answer(cache[i], run, *res)) {
            nsd_answer_t *found = nsd_answer_ref(cache[i]);
            pthread_mutex_unlock(&cache_lock);
            return found;
        }
    pthread_mutex_unlock(&cache_lock);
    nsd_answer_t *a = answer_new(run, *res);
    if (a == NULL)
        return NULL;
    *res = NULL;
    /* Kept with its text, about 0.7 times its arrays' bytes: both within the bound. */
    if (a->arrays_bytes > NSD_ANSWER_CACHE_MAX_BYTES / 2)
        return a;
    nsd_answer_ref(a); /* the cache's */
    pthread_mutex_lock(&cache_lock);
    nsd_answer_t *old = cache[next_slot];
    cache[next_slot] = a;
    next_slot = (next_slot + 1) % NSD_ANSWER_CACHE_ENTRIES;
    pthread_mutex_unlock(&cache_lock);
    nsd_answer_release(old);
    return a;
}

const nsd_sync_result_t *nsd_answer_result(const nsd_answer_t *a)
{
    return a->res;
}

/* The parts' total within NSD_ANSWER_MAX (each part alone is). */
static int check_total(const nsd_answer_t *a)
{
    size_t total = 0;
    for (size_t p = 0; p < a->n_parts; p++) {
        if (a->parts[p].len > NSD_ANSWER_MAX - total)
            return NS_ETOOLARGE;
        total += a->parts[p].len;
    }
    return 0;
}

int nsd_answer_encode(nsd_answer_t *a)
{
    const nsd_answer_fields_t *f = &a->fields;
    pthread_mutex_lock(&a->lock);
    while (a->next < a->n_parts) {
        size_t p = a->next++;
        pthread_mutex_unlock(&a->lock);
        int rc = ns_stats_encode_json_part(&a->parts[p], f->meta, f->n_meta, f->layers,
                                           f->n_layers, p);
        pthread_mutex_lock(&a->lock);
        if (rc != 0 && a->rc == 0)
            a->rc = rc;
        if (++a->done == a->n_parts) {
            if (a->rc == 0)
                a->rc = check_total(a);
            pthread_cond_broadcast(&a->all_done);
        }
    }
    /* Every part taken: wait for those other threads still encode. */
    while (a->done < a->n_parts)
        pthread_cond_wait(&a->all_done, &a->lock);
    int rc = a->rc;
    pthread_mutex_unlock(&a->lock);
    return rc;
}

const ns_buf_t *nsd_answer_parts(const nsd_answer_t *a, size_t *n)
{
    *n = a->n_parts;
    return a->parts;
}

nsd_answer_t *nsd_answer_ref(nsd_answer_t *a)
{
    atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
    return a;
}

void nsd_answer_release(void *p)
{
    nsd_answer_t *a = p;
    if (a == NULL || atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < a->n_parts; i++)
        ns_buf_free(&a->parts[i]);
    free(a->parts);
    nsd_answer_fields_free(&a->fields);
    nsd_sync_result_free(a->res);
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->all_done);
    free(a->run);
    free(a);
}
