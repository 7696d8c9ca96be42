/* combine.c - SyncBN's global batch: the workers' arrivals combined per channel.
 *
 * The channels are cut into fixed blocks (their size depends only on the
 * number of non-empty arrivals), each block is combined by the kernel on its
 * own, and OpenMP threads only decide who computes which block. The blocks
 * and the order of operations inside a block never depend on the thread
 * count, so every thread count gives the same bits. Empty arrivals are left
 * out while copying a block's arrivals (with their pointers moved to the
 * block); the others keep their rank order. More than GROUP_MAX non-empty
 * arrivals are combined GROUP_MAX at a time and the groups merged in rank
 * order with Chan's formula, so nothing is allocated. Arrivals in double
 * (mean64) take combine_wide(): the same two passes per channel, scalar. */
#include <normstat/core.h>

#include <string.h>

#include "kernels.h"

enum {
    GROUP_MAX = 256, /* arrivals copied per kernel call (6 KiB of stack) */
    BLOCK_MIN = 64,  /* channels per block, bounds */
    BLOCK_MAX = 8192,
    BLOCK_BYTES = 128 * 1024, /* aimed working set of one block: means + vars */
    PARALLEL_MIN = 1 << 16    /* arrivals x channels worth waking threads for */
};

/* Channels per block: the block's floats of one group should stay in L2. */
static size_t block_channels(size_t live)
{
    if (live >= GROUP_MAX)
        return BLOCK_MIN; /* later groups merge through BLOCK_MIN-sized buffers */
    size_t b = BLOCK_BYTES / (live * 2 * sizeof(float));
    if (b < BLOCK_MIN)
        b = BLOCK_MIN;
    if (b > BLOCK_MAX)
        b = BLOCK_MAX;
    return b - b % BLOCK_MIN;
}

/* Combines channels [c0, c0 + len) of the non-empty arrivals of src. */
static void combine_block(const ns_kernels_t *k, const ns_arrival_t *src, size_t src_len, size_t c0,
                          size_t len, double *mean, double *var)
{
    ns_arrival_t group[GROUP_MAX];
    double gmean[BLOCK_MIN], gvar[BLOCK_MIN];
    uint64_t done = 0; /* samples already combined into mean/var */
    size_t i = 0;

    while (i < src_len) {
        size_t g = 0;
        uint64_t gn = 0;
        for (; i < src_len && g < GROUP_MAX; i++) {
            if (src[i].n == 0)
                continue;
            group[g].n = src[i].n;
            group[g].mean = src[i].mean + c0;
            group[g].var = src[i].var + c0;
            gn += src[i].n;
            g++;
        }
        if (g == 0)
            break;
        if (done == 0) {
            k->combine(group, g, len, (double)gn, mean + c0, var + c0);
            done = gn;
            continue;
        }
        /* A later group (only when more than GROUP_MAX arrivals are live, so
         * len <= BLOCK_MIN): merge it into what the earlier groups gave. */
        k->combine(group, g, len, (double)gn, gmean, gvar);
        const double total = (double)(done + gn);
        const double wa = (double)done / total, wb = (double)gn / total;
        for (size_t c = 0; c < len; c++) {
            const double delta = gmean[c] - mean[c0 + c];
            mean[c0 + c] += delta * wb;
            var[c0 + c] = wa * var[c0 + c] + wb * gvar[c] + wa * wb * delta * delta;
        }
        done += gn;
    }
}

/* The scalar kernel's two passes over arrivals of which some came in double,
 * a tile of channels at a time with the arrivals in the outer loop (the
 * kernel's order of operations per channel, and contiguous reads). */
static void combine_wide(const ns_arrival_t *src, size_t src_len, size_t channels, double total,
                         double *mean, double *var)
{
    enum { TILE = 1024 };
    for (size_t c0 = 0; c0 < channels; c0 += TILE) {
        size_t c1 = channels - c0 < TILE ? channels : c0 + TILE;
        for (size_t c = c0; c < c1; c++)
            mean[c] = var[c] = 0.0;
        for (size_t w = 0; w < src_len; w++) {
            const double nw = (double)src[w].n;
            if (src[w].n == 0)
                continue;
            if (src[w].mean64 != NULL)
                for (size_t c = c0; c < c1; c++)
                    mean[c] += nw * src[w].mean64[c];
            else
                for (size_t c = c0; c < c1; c++)
                    mean[c] += nw * (double)src[w].mean[c];
        }
        for (size_t c = c0; c < c1; c++)
            mean[c] /= total;
        for (size_t w = 0; w < src_len; w++) {
            const double nw = (double)src[w].n;
            if (src[w].n == 0)
                continue;
            const double *m64 = src[w].mean64, *v64 = src[w].var64;
            const float *m32 = src[w].mean, *v32 = src[w].var;
            if (m64 != NULL)
                for (size_t c = c0; c < c1; c++) {
                    double d = m64[c] - mean[c];
                    var[c] += nw * (v64[c] + d * d);
                }
            else
                for (size_t c = c0; c < c1; c++) {
                    double d = (double)m32[c] - mean[c];
                    var[c] += nw * ((double)v32[c] + d * d);
                }
        }
        for (size_t c = c0; c < c1; c++)
            var[c] /= total;
    }
}

int ns_combine(const ns_arrival_t *src, size_t src_len, size_t channels, uint64_t *n, double *mean,
               double *var, int threads)
{
    if ((src == NULL && src_len > 0) || channels == 0 || n == NULL || mean == NULL || var == NULL)
        return NS_EINVAL;

    uint64_t total = 0;
    size_t live = 0;
    int wide = 0;
    for (size_t i = 0; i < src_len; i++) {
        if (src[i].n == 0)
            continue;
        if ((src[i].mean64 != NULL) != (src[i].var64 != NULL))
            return NS_EINVAL;
        wide |= src[i].mean64 != NULL;
        if ((src[i].mean64 == NULL && (src[i].mean == NULL || src[i].var == NULL)) ||
            total > UINT64_MAX - src[i].n)
            return NS_EINVAL;
        total += src[i].n;
        live++;
    }

    *n = total;
    if (total == 0) {
        for (size_t c = 0; c < channels; c++) {
            mean[c] = 0.0;
            var[c] = 0.0;
        }
        return 0;
    }

    if (live == 1) {
        /* One non-empty arrival is its own global batch: its values, widened
         * (exactly; the formula would give them back up to rounding). */
        const ns_arrival_t *a = src;
        while (a->n == 0)
            a++;
        if (a->mean64 != NULL) {
            memcpy(mean, a->mean64, channels * sizeof(double));
            memcpy(var, a->var64, channels * sizeof(double));
        } else {
            ns__kernels()->widen(mean, a->mean, channels);
            ns__kernels()->widen(var, a->var, channels);
        }
        return 0;
    }
    if (wide) {
        combine_wide(src, src_len, channels, (double)total, mean, var);
        return 0;
    }
    const ns_kernels_t *k = ns__kernels();
    const size_t block = block_channels(live);
    const size_t nblocks = (channels + block - 1) / block;

    if (threads > 1 && nblocks > 1 && channels >= PARALLEL_MIN / live) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (size_t b = 0; b < nblocks; b++) {
            size_t c0 = b * block;
            size_t len = channels - c0 < block ? channels - c0 : block;
            combine_block(k, src, src_len, c0, len, mean, var);
        }
    } else {
        for (size_t b = 0; b < nblocks; b++) {
            size_t c0 = b * block;
            size_t len = channels - c0 < block ? channels - c0 : block;
            combine_block(k, src, src_len, c0, len, mean, var);
        }
    }
    return 0;
}
