/* answer_cache.c - /sync answers encoded once per step (answer_cache.h). */
#include "answer_cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry_s {
    char *key, *body;
    size_t key_len, body_len;
} entry_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static entry_t entries[NSD_ANSWER_CACHE_ENTRIES];
static size_t next_slot; /* the oldest entry, replaced next */

int nsd_answer_cache_find(const ns_buf_t *key, ns_buf_t *dst)
{
    int found = 0;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < NSD_ANSWER_CACHE_ENTRIES && !found; i++) {
        const entry_t *e = &entries[i];
        if (e->key == NULL || e->key_len != key->len || memcmp(e->key, key->data, key->len) != 0)
            continue;
        found = ns_buf_append(dst, e->body, e->body_len) == 0;
    }
    pthread_mutex_unlock(&lock);
    return found;
}

void nsd_answer_cache_add(const ns_buf_t *key, const ns_buf_t *body)
{
    if (key->len + body->len > NSD_ANSWER_CACHE_MAX_BYTES)
        return;
    entry_t e = {malloc(key->len ? key->len : 1), malloc(body->len ? body->len : 1), key->len,
                 body->len};
    if (e.key == NULL || e.body == NULL) {
        free(e.key);
        free(e.body);
        return;
    }
    memcpy(e.key, key->data, key->len);
    memcpy(e.body, body->data, body->len);
    pthread_mutex_lock(&lock);
    entry_t old = entries[next_slot];
    entries[next_slot] = e;
    next_slot = (next_slot + 1) % NSD_ANSWER_CACHE_ENTRIES;
    pthread_mutex_unlock(&lock);
    free(old.key);
    free(old.body);
}
