/* moments.c - per-channel mean and M2 of float32 activations (NCHW, NHWC) and Chan's merge.
 *
 * DESIGN
 *  - Accuracy: never sum-of-squares minus square-of-sums. The kernels do two
 *    passes over a block that stays in L1 (the second pass costs no memory
 *    bandwidth); blocks are combined with Chan's pairwise formula. The
 *    running mean of a merge is kept as shift + offset (acc_t), so its
 *    rounding does not accumulate over the merges: with mean 1e4 and std
 *    1e-2 a plain running mean drifts by ~sqrt(merges) ulps, and the
 *    relative error of m2 measured by tests/unit/core/test_moments.c is about
 *    twice as large (~1.2e-12 instead of ~6e-13).
 *  - Determinism: the work is cut by the shape alone, never by the thread
 *    count. A channel's result is a fold, in index order, over fixed groups
 *    (GROUP_BLOCKS blocks, or GROUP_CHUNKS row chunks), each group itself a
 *    fold over its blocks in order, materialised as (n, mean, m2). Threads
 *    only change who computes a group, so the same input gives the same bits
 *    for any 'threads' (for one kernel table).
 *  - Threads: with many channels, threads take channel tiles and fold them
 *    alone. With few channels, threads compute groups side by side and fold
 *    them into the channels one at a time in group order (OpenMP 'ordered').
 *  - Memory: NCHW tiles are read n-major, one contiguous stream of
 *    tile * inner floats per n. Scratch is on the stack and bounded; nothing
 *    is allocated. */
#include <normstat/core.h>

#include <math.h>
#include <stdint.h>

#include "kernels.h"

#define BLOCK_VALUES      4096  /* floats per two-pass block: 16 KiB, stays in L1 */
#define GROUP_BLOCKS      16    /* blocks (NCHW) per group */
#define GROUP_CHUNKS      16    /* row chunks (NHWC) per group */
#define ROUND_CHANNELS    16    /* NCHW: at most this many channels for group-parallel mode */
#define NCHW_TILE         64    /* NCHW channels read as one stream per n */
#define CHUNK_VALUES      32768 /* floats per NHWC chunk: 128 KiB, stays in L2 between passes */
#define NHWC_TILE         128   /* channels per NHWC tile at most */
#define ROW_MODE_CHANNELS 64    /* NHWC: at most this many channels for group-parallel mode */
#define SERIAL_VALUES     (1u << 18) /* below this, threads cost more than they save */

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* ---------------------------------------------------------------- merging */

/* A running merge: n values, mean = k + s / n, m2. The shift k is the first
 * merged mean; offsets from it are small, so s / n carries the mean to far
 * below one ulp of k and the deltas of later merges stay accurate. */
typedef struct acc_s {
    double n, k, s, m2;
} acc_t;

static const acc_t acc_empty = {0.0, 0.0, 0.0, 0.0};

/* Chan et al.: merge nb > 0 values of mean mb and m2 qb into 'a'. */
static void acc_add(acc_t *a, double nb, double mb, double qb)
{
    if (a->n == 0.0) {
        a->n = nb;
        a->k = mb;
        a->s = 0.0;
        a->m2 = qb;
        return;
    }
    const double db = mb - a->k;
    const double delta = db - a->s / a->n; /* mb - mean_a */
    const double n = a->n + nb;
    a->m2 += qb + delta * delta * (a->n * (nb / n));
    a->s += nb * db;
    a->n = n;
}

static double acc_mean(const acc_t *a)
{
    return a->k + a->s / a->n;
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
    if (dst->n == 0.0) {
        *dst = *src;
        return 0;
    }
    const double n = dst->n + src->n, f = src->n / n;
    const double delta = src->mean - dst->mean;
    dst->mean += delta * f;
    dst->m2 += src->m2 + delta * delta * (dst->n * f);
    dst->n = n;
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

/* Moments of block b of channel c into *bm, *bq; returns its value count. */
static double nchw_block(const nchw_plan_t *pl, size_t c, size_t b, double *bm, double *bq)
{
    if (pl->per_n) {
        const size_t n = b / pl->per_n, off = (b % pl->per_n) * pl->blen;
        const size_t len = min_size(pl->blen, pl->inner - off);
        pl->k->block_moments(pl->src + n * pl->cstride + c * pl->inner + off, len, 1, len, bm, bq);
        return (double)len;
    }
    const size_t n0 = b * pl->nper, nseg = min_size(pl->nper, pl->outer - n0);
    pl->k->block_moments(pl->src + n0 * pl->cstride + c * pl->inner, pl->inner, nseg, pl->cstride,
                         bm, bq);
    return (double)nseg * (double)pl->inner;
}

/* Folds blocks [b, b1) of channels [c0, c0 + width) into acc[], n-major: for
 * each step of n every channel's blocks of that n, so memory is read as one
 * stream (width * inner contiguous floats per n). Each channel still sees its
 * own blocks in index order. */
static void nchw_blocks(const nchw_plan_t *pl, size_t c0, size_t width, size_t b, size_t b1,
                        acc_t *acc)
{
    const size_t row = pl->per_n ? pl->per_n : 1; /* blocks per step of n */
    double bm, bq;

    while (b < b1) {
        const size_t end = min_size(b1, (b / row + 1) * row);
        for (size_t i = 0; i < width; i++)
            for (size_t k = b; k < end; k++) {
                double bn = nchw_block(pl, c0 + i, k, &bm, &bq);
                acc_add(&acc[i], bn, bm, bq);
            }
        b = end;
    }
}

/* Channels [c0, c0 + width): each channel's groups folded in order into the
 * outputs. */
static void nchw_tile(const nchw_plan_t *pl, size_t c0, size_t width, double *mean, double *m2)
{
    acc_t grp[NCHW_TILE], chan[NCHW_TILE];

    for (size_t i = 0; i < width; i++)
        chan[i] = acc_empty;
    for (size_t g = 0; g < pl->groups; g++) {
        for (size_t i = 0; i < width; i++)
            grp[i] = acc_empty;
        nchw_blocks(pl, c0, width, g * GROUP_BLOCKS, min_size((g + 1) * GROUP_BLOCKS, pl->blocks),
                    grp);
        for (size_t i = 0; i < width; i++)
            acc_add(&chan[i], grp[i].n, acc_mean(&grp[i]), grp[i].m2);
    }
    for (size_t i = 0; i < width; i++) {
        mean[c0 + i] = acc_mean(&chan[i]);
        m2[c0 + i] = chan[i].m2;
    }
}

/* Few channels (<= ROUND_CHANNELS): threads compute groups (all channels of
 * a range of blocks) side by side; each is folded into the channels in group
 * order ('ordered'), while the next groups are being computed. */
static void nchw_groups(const nchw_plan_t *pl, size_t channels, double *mean, double *m2,
                        int threads)
{
    acc_t chan[ROUND_CHANNELS];

    for (size_t i = 0; i < channels; i++)
        chan[i] = acc_empty;
#pragma omp parallel for ordered schedule(static, 1) num_threads(threads)
    for (size_t g = 0; g < pl->groups; g++) {
        acc_t part[ROUND_CHANNELS];
        for (size_t i = 0; i < channels; i++)
            part[i] = acc_empty;
        nchw_blocks(pl, 0, channels, g * GROUP_BLOCKS, min_size((g + 1) * GROUP_BLOCKS, pl->blocks),
                    part);
#pragma omp ordered
        for (size_t i = 0; i < channels; i++)
            acc_add(&chan[i], part[i].n, acc_mean(&part[i]), part[i].m2);
    }
    for (size_t i = 0; i < channels; i++) {
        mean[i] = acc_mean(&chan[i]);
        m2[i] = chan[i].m2;
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
        for (size_t c0 = 0; c0 < channels; c0 += NCHW_TILE)
            nchw_tile(&pl, c0, min_size(NCHW_TILE, channels - c0), mean, m2);
    } else if (channels > ROUND_CHANNELS || channels >= 8 * (size_t)threads) {
        /* ceil(C / threads) channels per tile, at most NCHW_TILE */
        const size_t tile = min_size((channels + (size_t)threads - 1) / (size_t)threads, NCHW_TILE);
        const size_t tiles = (channels + tile - 1) / tile;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (size_t t = 0; t < tiles; t++)
            nchw_tile(&pl, t * tile, min_size(tile, channels - t * tile), mean, m2);
    } else {
        nchw_groups(&pl, channels, mean, m2, threads);
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
    pl->rows = min_size(4096, CHUNK_VALUES / min_size(channels, NHWC_TILE));
    const size_t grows = pl->rows * GROUP_CHUNKS;
    pl->groups = (outer + grows - 1) / grows;
}

/* Group g of channels [c0, c0 + width): the fold of its chunks, written as
 * mean gm[] and m2 gq[]; returns the group's row count. */
static double nhwc_group(const nhwc_plan_t *pl, size_t c0, size_t width, size_t g, double *gm,
                         double *gq)
{
    acc_t acc[NHWC_TILE];
    double tm[NHWC_TILE], tq[NHWC_TILE];
    const size_t r0 = g * pl->rows * GROUP_CHUNKS;
    const size_t r1 = min_size(r0 + pl->rows * GROUP_CHUNKS, pl->outer);

    for (size_t i = 0; i < width; i++)
        acc[i] = acc_empty;
    for (size_t r = r0; r < r1; r += pl->rows) {
        const size_t rows = min_size(pl->rows, r1 - r);
        pl->k->rows_moments(pl->src + r * pl->channels + c0, rows, width, pl->channels, tm, tq);
        for (size_t i = 0; i < width; i++)
            acc_add(&acc[i], (double)rows, tm[i], tq[i]);
    }
    for (size_t i = 0; i < width; i++) {
        gm[i] = acc_mean(&acc[i]);
        gq[i] = acc[i].m2;
    }
    return (double)(r1 - r0);
}

/* All groups of one tile, folded in order. */
static void nhwc_tile(const nhwc_plan_t *pl, size_t c0, size_t width, double *mean, double *m2)
{
    acc_t chan[NHWC_TILE];
    double gm[NHWC_TILE], gq[NHWC_TILE];

    for (size_t i = 0; i < width; i++)
        chan[i] = acc_empty;
    for (size_t g = 0; g < pl->groups; g++) {
        double gn = nhwc_group(pl, c0, width, g, gm, gq);
        for (size_t i = 0; i < width; i++)
            acc_add(&chan[i], gn, gm[i], gq[i]);
    }
    for (size_t i = 0; i < width; i++) {
        mean[c0 + i] = acc_mean(&chan[i]);
        m2[c0 + i] = chan[i].m2;
    }
}

/* Few channels (<= ROW_MODE_CHANNELS): threads compute groups side by side;
 * each is folded into the channels in group order ('ordered'). */
static void nhwc_groups(const nhwc_plan_t *pl, double *mean, double *m2, int threads)
{
    acc_t chan[ROW_MODE_CHANNELS];
    const size_t width = pl->channels;

    for (size_t i = 0; i < width; i++)
        chan[i] = acc_empty;
#pragma omp parallel for ordered schedule(static, 1) num_threads(threads)
    for (size_t g = 0; g < pl->groups; g++) {
        double gm[ROW_MODE_CHANNELS], gq[ROW_MODE_CHANNELS];
        const double gn = nhwc_group(pl, 0, width, g, gm, gq);
#pragma omp ordered
        for (size_t i = 0; i < width; i++)
            acc_add(&chan[i], gn, gm[i], gq[i]);
    }
    for (size_t i = 0; i < width; i++) {
        mean[i] = acc_mean(&chan[i]);
        m2[i] = chan[i].m2;
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
        for (size_t c0 = 0; c0 < channels; c0 += NHWC_TILE)
            nhwc_tile(&pl, c0, min_size(NHWC_TILE, channels - c0), mean, m2);
    } else if (channels >= 16 * (size_t)threads || channels > ROW_MODE_CHANNELS) {
        /* Tiles sized so every thread gets work: ceil(C / threads), a
         * multiple of 8 (one vector step), at most NHWC_TILE. */
        size_t tile = (channels + (size_t)threads - 1) / (size_t)threads;
        tile = min_size((tile + 7) & ~(size_t)7, NHWC_TILE);
        const size_t tiles = (channels + tile - 1) / tile;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (size_t t = 0; t < tiles; t++)
            nhwc_tile(&pl, t * tile, min_size(tile, channels - t * tile), mean, m2);
    } else {
        nhwc_groups(&pl, mean, m2, threads);
    }
    return check_finite(mean, m2, channels);
}
