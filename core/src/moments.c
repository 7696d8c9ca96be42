/* moments.c - per-channel mean and M2 of float32 activations (NCHW, NHWC) and Chan's merge.
 *
 * DESIGN
 *  - Accuracy: never sum-of-squares minus square-of-sums. The kernels do two
 *    passes over a block that stays in L1 (the second pass costs no memory
 *    bandwidth); blocks are combined with Chan's pairwise formula.
 *  - Determinism: the work is cut by the shape alone, never by the thread
 *    count. A channel's result is a fold, in index order, over fixed *groups*
 *    (GROUP_BLOCKS blocks, or GROUP_CHUNKS row chunks), each group itself a
 *    fold over its blocks in order. Threads only change who computes a group,
 *    so the same input gives the same bits for any 'threads' (for one kernel
 *    table).
 *  - Threads: with many channels, threads take whole channels (NCHW) or
 *    channel tiles (NHWC) and fold them alone. With few channels, threads
 *    compute groups in rounds (an OpenMP 'for' over the next groups), and one
 *    thread merges the round's group results in index order.
 *  - Memory: scratch is on the stack and bounded; nothing is allocated. */
#include <normstat/core.h>

#include <math.h>
#include <stdint.h>

#include "kernels.h"

#define BLOCK_VALUES 4096   /* floats per two-pass block: 16 KiB, stays in L1 */
#define GROUP_BLOCKS 16     /* blocks (NCHW) per group */
#define GROUP_CHUNKS 16     /* row chunks (NHWC) per group */
#define ROUND_GROUPS 256    /* NCHW groups computed per parallel round */
#define CHUNK_VALUES 8192   /* floats per NHWC chunk (32 KiB) at most */
#define MAX_TILE 256        /* channels per NHWC tile */
#define ROW_MODE_CHANNELS 64 /* NHWC: at most this many channels for row-parallel mode */
#define ROW_MODE_THREADS 8
#define SERIAL_VALUES (1u << 18) /* below this, threads cost more than they save */

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* Chan et al.: merge (nb, mb, qb), nb > 0, into 'a' (which may be empty).
 * The same arithmetic as merge_arrays(), channel by channel. */
static void merge_into(ns_moments_t *a, double nb, double mb, double qb)
{
    if (a->n == 0.0) {
        a->n = nb;
        a->mean = mb;
        a->m2 = qb;
        return;
    }
    const double n = a->n + nb, f = nb / n, g = a->n * f;
    const double delta = mb - a->mean;
    a->mean += delta * f;
    a->m2 += qb + delta * delta * g;
    a->n = n;
}

/* Chan's merge of 'width' channels sharing the counts na > 0 and nb > 0. */
static void merge_arrays(double *am, double *aq, double na, const double *bm, const double *bq,
                         double nb, size_t width)
{
    const double n = na + nb, f = nb / n, g = na * f;
    for (size_t c = 0; c < width; c++) {
        const double delta = bm[c] - am[c];
        am[c] += delta * f;
        aq[c] += bq[c] + delta * delta * g;
    }
}

int ns_moments_merge(ns_moments_t *dst, const ns_moments_t *src)
{
    if (dst == NULL || src == NULL)
        return NS_EINVAL;
    if (!isfinite(src->n) || !isfinite(src->mean) || !isfinite(src->m2) || src->n < 0.0 ||
        src->m2 < 0.0)
        return NS_EINVAL;
    if (src->n == 0.0)
        return 0;
    merge_into(dst, src->n, src->mean, src->m2);
    return 0;
}

static int check_finite(const double *mean, const double *m2, size_t channels)
{
    for (size_t c = 0; c < channels; c++)
        if (!isfinite(mean[c]) || !isfinite(m2[c]))
            return NS_EVALUE;
    return 0;
}

/* ---------------------------------------------------------------- NCHW */

/* How one channel of an N x C x inner tensor is cut into blocks. */
typedef struct nchw_plan_s {
    const float *src;
    const ns_kernels_t *k;
    size_t outer, inner;
    size_t cstride; /* floats from (n, c) to (n + 1, c): C * inner */
    size_t blocks;  /* blocks per channel */
    size_t groups;  /* groups per channel */
    size_t per_n;   /* inner >= BLOCK_VALUES: blocks per n, each blen long (last shorter) */
    size_t blen;
    size_t nper; /* inner < BLOCK_VALUES: n's per block (segments of 'inner') */
} nchw_plan_t;

static void nchw_plan_init(nchw_plan_t *pl, const float *src, size_t outer, size_t channels,
                           size_t inner)
{
    pl->src = src;
    pl->k = ns__kernels();
    pl->outer = outer;
    pl->inner = inner;
    pl->cstride = channels * inner;
    if (inner >= BLOCK_VALUES) {
        pl->per_n = (inner + BLOCK_VALUES - 1) / BLOCK_VALUES;
        pl->blen = (inner + pl->per_n - 1) / pl->per_n;
        pl->nper = 0;
        pl->blocks = outer * pl->per_n;
    } else {
        pl->per_n = 0;
        pl->blen = 0;
        pl->nper = BLOCK_VALUES / inner;
        pl->blocks = (outer + pl->nper - 1) / pl->nper;
    }
    pl->groups = (pl->blocks + GROUP_BLOCKS - 1) / GROUP_BLOCKS;
}

/* Moments of group g of channel c: the fold of its blocks in order. */
static ns_moments_t nchw_group(const nchw_plan_t *pl, size_t c, size_t g)
{
    ns_moments_t acc = {0.0, 0.0, 0.0};
    const size_t b1 = min_size((g + 1) * GROUP_BLOCKS, pl->blocks);
    double bm, bq;

    for (size_t b = g * GROUP_BLOCKS; b < b1; b++) {
        if (pl->per_n) {
            const size_t n = b / pl->per_n, off = (b % pl->per_n) * pl->blen;
            const size_t len = min_size(pl->blen, pl->inner - off);
            const float *p = pl->src + n * pl->cstride + c * pl->inner + off;
            pl->k->block_moments(p, len, 1, len, &bm, &bq);
            merge_into(&acc, (double)len, bm, bq);
        } else {
            const size_t n0 = b * pl->nper, nseg = min_size(pl->nper, pl->outer - n0);
            const float *p = pl->src + n0 * pl->cstride + c * pl->inner;
            pl->k->block_moments(p, pl->inner, nseg, pl->cstride, &bm, &bq);
            merge_into(&acc, (double)nseg * (double)pl->inner, bm, bq);
        }
    }
    return acc;
}

static void nchw_channel(const nchw_plan_t *pl, size_t c, double *mean, double *m2)
{
    ns_moments_t acc = {0.0, 0.0, 0.0};
    for (size_t g = 0; g < pl->groups; g++) {
        ns_moments_t part = nchw_group(pl, c, g);
        merge_into(&acc, part.n, part.mean, part.m2);
    }
    mean[c] = acc.mean;
    m2[c] = acc.m2;
}

/* Few channels: groups in rounds; one thread merges each round in order. */
static void nchw_rounds(const nchw_plan_t *pl, size_t channels, double *mean, double *m2,
                        int threads)
{
    ns_moments_t part[ROUND_GROUPS];
    ns_moments_t acc = {0.0, 0.0, 0.0};
    const size_t items = channels * pl->groups;

#pragma omp parallel num_threads(threads)
    for (size_t r0 = 0; r0 < items; r0 += ROUND_GROUPS) {
        const size_t rn = min_size(ROUND_GROUPS, items - r0);
#pragma omp for schedule(static)
        for (size_t i = 0; i < rn; i++)
            part[i] = nchw_group(pl, (r0 + i) / pl->groups, (r0 + i) % pl->groups);
#pragma omp single
        for (size_t i = 0; i < rn; i++) {
            const size_t c = (r0 + i) / pl->groups, g = (r0 + i) % pl->groups;
            if (g == 0)
                acc.n = acc.mean = acc.m2 = 0.0;
            merge_into(&acc, part[i].n, part[i].mean, part[i].m2);
            if (g + 1 == pl->groups) {
                mean[c] = acc.mean;
                m2[c] = acc.m2;
            }
        }
    }
}

int ns_moments_nchw(const float *src, size_t outer, size_t channels, size_t inner, double *mean,
                    double *m2, int threads)
{
    size_t per_c, total;

    if (src == NULL || mean == NULL || m2 == NULL || channels == 0)
        return NS_EINVAL;
    if (__builtin_mul_overflow(outer, inner, &per_c) || per_c == 0 ||
        __builtin_mul_overflow(per_c, channels, &total) || total > SIZE_MAX / sizeof(float))
        return NS_EINVAL;
    /* N x C x 1 is channels-last: the row kernel reads it in order. */
    if (inner == 1 && channels > 1)
        return ns_moments_nhwc(src, outer, channels, mean, m2, threads);

    nchw_plan_t pl;
    nchw_plan_init(&pl, src, outer, channels, inner);
    if (total < SERIAL_VALUES)
        threads = 1;

    if (threads <= 1) {
        for (size_t c = 0; c < channels; c++)
            nchw_channel(&pl, c, mean, m2);
    } else if (channels >= 8 * (size_t)threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (size_t c = 0; c < channels; c++)
            nchw_channel(&pl, c, mean, m2);
    } else {
        nchw_rounds(&pl, channels, mean, m2, threads);
    }
    return check_finite(mean, m2, channels);
}

/* ---------------------------------------------------------------- NHWC */

/* How the rows of an outer x C tensor are cut: chunks of 'rows' rows (one
 * two-pass call per tile), GROUP_CHUNKS chunks per group. Depends on C only,
 * so a channel's result does not depend on the tile it lands in (the row
 * kernels treat channels as independent lanes). */
typedef struct nhwc_plan_s {
    const float *src;
    const ns_kernels_t *k;
    size_t outer, channels;
    size_t rows;   /* rows per chunk */
    size_t groups; /* groups of GROUP_CHUNKS chunks */
} nhwc_plan_t;

static void nhwc_plan_init(nhwc_plan_t *pl, const float *src, size_t outer, size_t channels)
{
    pl->src = src;
    pl->k = ns__kernels();
    pl->outer = outer;
    pl->channels = channels;
    pl->rows = min_size(4096, CHUNK_VALUES / min_size(channels, MAX_TILE));
    const size_t grows = pl->rows * GROUP_CHUNKS;
    pl->groups = (outer + grows - 1) / grows;
}

/* Moments of channels [c0, c0 + width) over group g's rows into gm/gq, using
 * tm/tq as scratch; returns the group's row count. */
static double nhwc_group(const nhwc_plan_t *pl, size_t c0, size_t width, size_t g, double *gm,
                         double *gq, double *tm, double *tq)
{
    const size_t r0 = g * pl->rows * GROUP_CHUNKS;
    const size_t r1 = min_size(r0 + pl->rows * GROUP_CHUNKS, pl->outer);
    double n = 0.0;

    for (size_t r = r0; r < r1; r += pl->rows) {
        const size_t rows = min_size(pl->rows, r1 - r);
        const float *p = pl->src + r * pl->channels + c0;
        if (r == r0) {
            pl->k->rows_moments(p, rows, width, pl->channels, gm, gq);
        } else {
            pl->k->rows_moments(p, rows, width, pl->channels, tm, tq);
            merge_arrays(gm, gq, n, tm, tq, (double)rows, width);
        }
        n += (double)rows;
    }
    return n;
}

/* All groups of one tile, folded in order straight into the outputs. */
static void nhwc_tile(const nhwc_plan_t *pl, size_t c0, size_t width, double *mean, double *m2)
{
    double gm[MAX_TILE], gq[MAX_TILE], tm[MAX_TILE], tq[MAX_TILE];
    double n = 0.0;

    for (size_t g = 0; g < pl->groups; g++) {
        if (g == 0) {
            n = nhwc_group(pl, c0, width, g, mean + c0, m2 + c0, tm, tq);
        } else {
            double gn = nhwc_group(pl, c0, width, g, gm, gq, tm, tq);
            merge_arrays(mean + c0, m2 + c0, n, gm, gq, gn, width);
            n += gn;
        }
    }
}

/* Few channels (<= ROW_MODE_CHANNELS): groups in rounds, merged in order. */
static void nhwc_rounds(const nhwc_plan_t *pl, double *mean, double *m2, int threads)
{
    double gm[ROW_MODE_THREADS][ROW_MODE_CHANNELS], gq[ROW_MODE_THREADS][ROW_MODE_CHANNELS];
    double gn[ROW_MODE_THREADS];
    const size_t width = pl->channels;
    const size_t round = (size_t)threads;
    double n = 0.0;

#pragma omp parallel num_threads(threads)
    {
        double tm[ROW_MODE_CHANNELS], tq[ROW_MODE_CHANNELS];
        for (size_t g0 = 0; g0 < pl->groups; g0 += round) {
            const size_t rn = min_size(round, pl->groups - g0);
#pragma omp for schedule(static)
            for (size_t i = 0; i < rn; i++)
                gn[i] = nhwc_group(pl, 0, width, g0 + i, gm[i], gq[i], tm, tq);
#pragma omp single
            for (size_t i = 0; i < rn; i++) {
                if (g0 + i == 0) {
                    for (size_t c = 0; c < width; c++) {
                        mean[c] = gm[i][c];
                        m2[c] = gq[i][c];
                    }
                } else {
                    merge_arrays(mean, m2, n, gm[i], gq[i], gn[i], width);
                }
                n += gn[i];
            }
        }
    }
}

int ns_moments_nhwc(const float *src, size_t outer, size_t channels, double *mean, double *m2,
                    int threads)
{
    size_t total;

    if (src == NULL || mean == NULL || m2 == NULL || channels == 0 || outer == 0)
        return NS_EINVAL;
    if (__builtin_mul_overflow(outer, channels, &total) || total > SIZE_MAX / sizeof(float))
        return NS_EINVAL;

    nhwc_plan_t pl;
    nhwc_plan_init(&pl, src, outer, channels);
    if (total < SERIAL_VALUES)
        threads = 1;

    if (threads <= 1) {
        for (size_t c0 = 0; c0 < channels; c0 += MAX_TILE)
            nhwc_tile(&pl, c0, min_size(MAX_TILE, channels - c0), mean, m2);
    } else if (channels >= 16 * (size_t)threads || channels > ROW_MODE_CHANNELS) {
        /* Tiles sized so every thread gets work: ceil(C / threads), a
         * multiple of 8 (one vector step), at most MAX_TILE. */
        size_t tile = (channels + (size_t)threads - 1) / (size_t)threads;
        tile = min_size((tile + 7) & ~(size_t)7, MAX_TILE);
        const size_t tiles = (channels + tile - 1) / tile;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (size_t t = 0; t < tiles; t++)
            nhwc_tile(&pl, t * tile, min_size(tile, channels - t * tile), mean, m2);
    } else {
        if (threads > ROW_MODE_THREADS)
            threads = ROW_MODE_THREADS;
        nhwc_rounds(&pl, mean, m2, threads);
    }
    return check_finite(mean, m2, channels);
}
