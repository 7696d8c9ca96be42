/* safetensors_layers.c - what the safetensors decoders of reports and
 * gradient sums share: the step and worker of __metadata__, and tensors
 * named <layer>.<part> grouped by layer. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

#define NAME_RULE "[A-Za-z0-9_.:-]{1,128}"

int ns__safetensors_meta_step_worker(const ns_safetensors_t *st, const char *const *known,
                                     uint64_t *step, uint32_t *worker, ns_error_detail_t *err)
{
    const char *s;
    uint64_t u;
    if (!st->meta_table && !st->meta)
        return ns_error_set(err, NS_EINVAL, "__metadata__.step", "missing required field");
    int rc = ns__safetensors_meta_check_known(st, known, "__metadata__.", err);
    if (rc)
        return rc;
    if (!(s = ns__safetensors_meta_get(st, "step")))
        return ns_error_set(err, NS_EINVAL, "__metadata__.step", "missing required field");
    if (ns__parse_decimal(s, INT64_MAX, step))
        return ns_error_set(err, NS_EINVAL, "__metadata__.step",
                            "expected a non-negative integer, got \"%.64s\"", s);
    if (!(s = ns__safetensors_meta_get(st, "worker")))
        return ns_error_set(err, NS_EINVAL, "__metadata__.worker", "missing required field");
    if (ns__parse_decimal(s, UINT32_MAX, &u))
        return ns_error_set(err, NS_EINVAL, "__metadata__.worker",
                            "expected an integer in [0, 4294967295], got \"%.64s\"", s);
    *worker = (uint32_t)u;
    return 0;
}

static int piece_cmp(const void *a, const void *b)
{
    const ns__st_piece_t *x = a, *y = b;
    int c = strcmp(x->layer, y->layer);
    return c ? c : (x->part > y->part) - (x->part < y->part);
}

/* The index of 'suffix' in 'parts', or -1. */
static int part_index(const char *const *parts, const char *suffix)
{
    for (int p = 0; parts[p]; p++)
        if (strcmp(parts[p], suffix) == 0)
            return p;
    return -1;
}

int ns__safetensors_layer_pieces(const ns_safetensors_t *st, const char *const *parts,
                                 const char *naming, ns__st_piece_t **dst, size_t *n_layers,
                                 ns_error_detail_t *err)
{
    size_t cap = 0;
    *dst = NULL;
    int rc = ns__safetensors_layer_pieces_into(st, parts, naming, dst, &cap, n_layers, err);
    if (rc != 0) {
        free(*dst);
        *dst = NULL;
    }
    return rc;
}

int ns__safetensors_layer_pieces_into(const ns_safetensors_t *st, const char *const *parts,
                                      const char *naming, ns__st_piece_t **dst, size_t *cap,
                                      size_t *n_layers, ns_error_detail_t *err)
{
    size_t n = st->n_tensors;
    int rc = 0;
    if (*cap < (n ? n : 1)) {
        ns__st_piece_t *grown = realloc(*dst, (n ? n : 1) * sizeof(**dst));
        if (!grown)
            return ns_error_set(err, NS_ENOMEM, "", "out of memory");
        *dst = grown;
        *cap = n ? n : 1;
    }
    ns__st_piece_t *pieces = *dst;
    for (size_t i = 0; i < n; i++) {
        const ns_tensor_t *t = &st->tensors[i];
        const char *dot = strrchr(t->name, '.');
        int part = part_index(parts, dot ? dot + 1 : "");
        if (part < 0) {
            rc = ns_error_set(err, NS_EINVAL, "", "safetensors: tensor \"%.200s\" is not named %s",
                              t->name, naming);
            goto fail;
        }
        size_t len = (size_t)(dot - t->name);
        if (len < 1 || len > NS_NAME_MAX) {
            rc = ns_error_set(err, NS_EINVAL, "layers",
                              "invalid layer name \"%.*s\" (names match " NAME_RULE ")",
                              (int)(len < 140 ? len : 140), t->name);
            goto fail;
        }
        memcpy(pieces[i].layer, t->name, len);
        pieces[i].layer[len] = '\0';
        if (!ns_name_valid(pieces[i].layer)) {
            rc = ns_error_set(err, NS_EINVAL, "layers",
                              "invalid layer name \"%s\" (names match " NAME_RULE ")",
                              pieces[i].layer);
            goto fail;
        }
        pieces[i].part = part;
        pieces[i].tensor = t;
    }
    size_t sorted = 1; /* writers often emit layer order already: then no sort */
    while (sorted < n && piece_cmp(&pieces[sorted - 1], &pieces[sorted]) <= 0)
        sorted++;
    if (sorted < n)
        qsort(pieces, n, sizeof(*pieces), piece_cmp);
    *n_layers = 0;
    for (size_t i = 0; i < n; i++)
        *n_layers += i == 0 || strcmp(pieces[i].layer, pieces[i - 1].layer) != 0;
    if (*n_layers == 0) {
        rc = ns_error_set(err, NS_EINVAL, "layers", "must not be empty");
        goto fail;
    }
fail:
    return rc;
}

const char *ns__safetensors_next_layer(const ns__st_piece_t *pieces, size_t n, size_t *i,
                                       const ns__st_piece_t **by_part, size_t n_parts)
{
    const char *layer = pieces[*i].layer;
    for (size_t p = 0; p < n_parts; p++)
        by_part[p] = NULL;
    for (; *i < n && strcmp(pieces[*i].layer, layer) == 0; (*i)++)
        by_part[pieces[*i].part] = &pieces[*i];
    return layer;
}
