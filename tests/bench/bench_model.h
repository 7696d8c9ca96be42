/* bench_model.h - the layer layouts the benchmark programs report: torchvision
 * ResNet-50's BatchNorm layers, or N layers of C channels, and a model's
 * layers dealt into balanced parts (one per thread or connection reporting
 * different layers of one run). Shared by loadgen.c and bench_registry.c. */
#ifndef NS_BENCH_MODEL_H
#define NS_BENCH_MODEL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct model_s {
    size_t n;
    char (*names)[64];
    size_t *chans;
    size_t total;
} model_t;

static inline void model_die(const char *what)
{
    fprintf(stderr, "bench: %s\n", what);
    exit(2);
}

/* torchvision resnet50's BatchNorm2d layers in state_dict order. */
static inline size_t resnet50_layers(char names[][64], size_t *chans, size_t cap)
{
    static const struct {
        int blocks, width;
    } stage[4] = {{3, 64}, {4, 128}, {6, 256}, {3, 512}};
    size_t n = 0;
    if (cap < 53)
        return 0;
    snprintf(names[n], 64, "bn1");
    chans[n++] = 64;
    for (int s = 0; s < 4; s++) {
        for (int b = 0; b < stage[s].blocks; b++) {
            for (int k = 1; k <= 3; k++) {
                snprintf(names[n], 64, "layer%d.%d.bn%d", s + 1, b, k);
                chans[n++] = (size_t)stage[s].width * (k == 3 ? 4u : 1u);
            }
            if (b == 0) {
                snprintf(names[n], 64, "layer%d.0.downsample.1", s + 1);
                chans[n++] = (size_t)stage[s].width * 4u;
            }
        }
    }
    return n;
}

static inline void model_alloc(model_t *m, size_t cap)
{
    m->names = calloc(cap, sizeof(*m->names));
    m->chans = calloc(cap, sizeof(*m->chans));
    if (m->names == NULL || m->chans == NULL)
        model_die("out of memory");
    m->n = m->total = 0;
}

/* "resnet50" (53 layers, 26,560 channels) or "NxC". */
static inline void model_make(model_t *m, const char *spec)
{
    model_alloc(m, 4096);
    if (strcmp(spec, "resnet50") == 0) {
        m->n = resnet50_layers(m->names, m->chans, 4096);
        size_t sum = 0;
        for (size_t i = 0; i < m->n; i++)
            sum += m->chans[i];
        if (m->n != 53 || sum != 26560)
            model_die("resnet50 layout: expected 53 layers and 26,560 channels");
    } else {
        unsigned long nl = 0, c = 0;
        if (sscanf(spec, "%lux%lu", &nl, &c) != 2 || nl < 1 || nl > 4096 || c < 1)
            model_die("--layers: resnet50 or NxC");
        m->n = nl;
        for (size_t i = 0; i < nl; i++) {
            snprintf(m->names[i], 64, "l%04zu.bn", i);
            m->chans[i] = c;
        }
    }
    m->total = 0;
    for (size_t i = 0; i < m->n; i++)
        m->total += m->chans[i];
}

/* Part 'part' of 'parts' of the model's layers: largest layer first, each
 * to the part with the fewest channels so far (ties: the lowest part), so
 * the parts carry nearly equal channels. Layers keep their model order. */
static inline void model_part(const model_t *m, unsigned part, unsigned parts, model_t *dst)
{
    size_t *load = calloc(parts, sizeof(*load));
    unsigned *owner = calloc(m->n, sizeof(*owner));
    char *done = calloc(m->n, 1);
    if (load == NULL || owner == NULL || done == NULL)
        model_die("out of memory");
    for (size_t k = 0; k < m->n; k++) {
        size_t big = m->n;
        for (size_t i = 0; i < m->n; i++)
            if (!done[i] && (big == m->n || m->chans[i] > m->chans[big]))
                big = i;
        unsigned to = 0;
        for (unsigned p = 1; p < parts; p++)
            if (load[p] < load[to])
                to = p;
        done[big] = 1;
        owner[big] = to;
        load[to] += m->chans[big];
    }
    model_alloc(dst, m->n);
    for (size_t i = 0; i < m->n; i++)
        if (owner[i] == part) {
            memcpy(dst->names[dst->n], m->names[i], sizeof(m->names[i]));
            dst->chans[dst->n++] = m->chans[i];
            dst->total += m->chans[i];
        }
    free(load);
    free(owner);
    free(done);
}

static inline void model_free(model_t *m)
{
    free(m->names);
    free(m->chans);
}

#endif /* NS_BENCH_MODEL_H */
