/* normstat/core.h - libnscore, the statistics core of normstat.
 *
 * Pure computation on per-channel BatchNorm statistics: moments of raw
 * activations, SyncBN's combination of worker arrivals, PyTorch's EMA,
 * PreciseBN accumulators, per-domain mixtures and input validation.
 *
 * Conventions
 *  - Arithmetic is double precision; float32 appears only where data enters
 *    (activations, reported statistics). Results are double.
 *  - "var" is the biased (population) variance unless a name says otherwise;
 *    "m2" is the sum of squared deviations from the mean, so var = m2 / n.
 *  - Counts are values per channel (N*H*W of a batch) as uint64_t; every
 *    channel of a layer shares one count.
 *  - Arrays are caller-owned, 'channels' long, and may not overlap unless a
 *    function says so. No function allocates, logs or performs I/O.
 *  - Never sum-of-squares minus square-of-sums: moments are two-pass per
 *    cache-sized block, blocks and arrivals are merged with Chan's formula.
 *
 * Threads: every function is reentrant and may be called from any number of
 * threads at once on distinct outputs. The only global state is the kernel
 * table, chosen once (CPUID and XGETBV; NS_SIMD=scalar forces the reference)
 * on first use. Functions taking 'threads' use at most that many OpenMP
 * threads (<= 1 runs on the calling thread only), so many request threads
 * cannot oversubscribe the machine.
 *
 * Errors are the negative codes of <normstat/errors.h>. */
#ifndef NORMSTAT_CORE_H
#define NORMSTAT_CORE_H

#include <stddef.h>
#include <stdint.h>

#include <normstat/errors.h>
#include <normstat/export.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NS_VERSION_MAJOR  0
#define NS_VERSION_MINOR  1
#define NS_VERSION_PATCH  0
#define NS_VERSION_STRING "0.1.0"

/* ---------------------------------------------------------------- build */

/*! ns_core_version() : @return NS_VERSION_STRING of the linked library. */
NS_API const char *ns_core_version(void);

/*! ns_core_kernel() :
 *  @return the name of the kernel set in use: "avx2" (AVX2+FMA) or "scalar".
 *  The choice is made once per process, on first use of any kernel. */
NS_API const char *ns_core_kernel(void);

/*! ns_core_max_threads() :
 *  @return the number of processors OpenMP may use (1 without OpenMP). */
NS_API int ns_core_max_threads(void);

/* ---------------------------------------------------------------- moments */

/* One channel's statistics: count, mean and sum of squared deviations. */
typedef struct ns_moments_s {
    double n;
    double mean;
    double m2;
} ns_moments_t;

/*! ns_moments_merge() :
 *  Merge 'src' into 'dst' (Chan et al.); either side may have n == 0.
 *  @return 0, or NS_EINVAL if a field of 'src' is not finite or n < 0 or
 *  m2 < 0 (dst is then unchanged). */
NS_API int ns_moments_merge(ns_moments_t *dst, const ns_moments_t *src);

/*! ns_moments_nchw() :
 *  Per-channel moments of a float32 tensor laid out N x C x inner (NCHW with
 *  inner = H*W; NC with inner = 1; NCDHW with inner = D*H*W). Writes mean[c]
 *  and m2[c]; every channel's count is outer * inner.
 *  @return 0; NS_EINVAL if channels == 0, outer * inner == 0, a pointer is
 *  NULL or the sizes overflow; NS_EVALUE if the data holds a non-finite value
 *  (outputs are then unspecified). */
NS_API int ns_moments_nchw(const float *src, size_t outer, size_t channels, size_t inner,
                           double *mean, double *m2, int threads);

/*! ns_moments_nhwc() :
 *  Per-channel moments of a float32 tensor laid out outer x C (channels last:
 *  NHWC with outer = N*H*W). Every channel's count is 'outer'.
 *  @return as ns_moments_nchw(). */
NS_API int ns_moments_nhwc(const float *src, size_t outer, size_t channels, double *mean,
                           double *m2, int threads);

/* ---------------------------------------------------------------- combine */

/* One worker's statistics of one layer at one step (SyncBN's per-rank part).
 * An arrival that was sent in double (a relay's combined node, an F64
 * report) also sets mean64 and var64, which the combination then reads
 * instead of mean and var (those hold the same values rounded to float32). */
typedef struct ns_arrival_s {
    uint64_t n;           /* values per channel; 0 for an empty batch */
    const float *mean;    /* [channels]; may be NULL when n == 0 */
    const float *var;     /* [channels], biased; may be NULL when n == 0 */
    const double *mean64; /* [channels] or NULL: the mean in double */
    const double *var64;  /* [channels] or NULL (set together with mean64) */
} ns_arrival_t;

/*! ns_combine() :
 *  The global batch of 'src_len' arrivals, in array order (callers pass them
 *  in worker rank order, so results do not depend on arrival order):
 *    N = sum n_w,  mean = sum n_w mean_w / N,
 *    var = sum n_w (var_w + (mean_w - mean)^2) / N   (biased).
 *  Arrivals with n == 0 contribute nothing. If N == 0, mean and var are set
 *  to 0. A single non-empty arrival gives its own values, widened exactly
 *  (mean64/var64 copied when set).
 *  Writes *n = N. The result is the same bits for every 'threads'.
 *  When any non-empty arrival has mean64, every arrival is read in double
 *  (mean64/var64 where set, else mean/var widened) and each channel is
 *  evaluated by the same two passes in array order, without groups (the
 *  scalar reference's operations, so float-exact doubles give the bits of
 *  float arrivals for up to 256 of them).
 *  @return 0, or NS_EINVAL on NULL arguments, channels == 0, or an N that
 *  overflows. Inputs are assumed validated (finite, var >= 0). */
NS_API int ns_combine(const ns_arrival_t *src, size_t src_len, size_t channels, uint64_t *n,
                      double *mean, double *var, int threads);

/*! ns_var_unbias() :
 *  dst[c] = src[c] * n / (n - 1): biased to unbiased (Bessel). dst may equal src.
 *  @return 0, or NS_EINVAL if n < 2. */
NS_API int ns_var_unbias(double *dst, const double *src, size_t channels, uint64_t n);

/*! ns_var_bias_f32() :
 *  In place, var[c] *= (n - 1) / n (computed in double): an unbiased float32
 *  variance as reported by a worker, made biased. n <= 1 sets var to 0 (the
 *  biased variance of at most one value).
 *  @return 0, or NS_EINVAL if var is NULL and channels > 0. */
NS_API int ns_var_bias_f32(float *var, size_t channels, uint64_t n);

/* ---------------------------------------------------------------- EMA */

/* Momentum value selecting PyTorch's cumulative moving average
 * (BatchNorm(momentum=None)): f = 1 / num_batches_tracked. */
#define NS_MOMENTUM_CUMULATIVE (-1.0)

/* EMA state of one layer, PyTorch's running_mean / running_var /
 * num_batches_tracked. The arrays are caller-owned. zero_mean / zero_var are
 * optional (both NULL, or both set): the same average started from zero,
 * kept for the debiased view (ema_debias), stored already divided by
 * (1 - decay) so that view is exact after one step. */
typedef struct ns_ema_s {
    double *running_mean;         /* [channels], starts at 0 */
    double *running_var;          /* [channels], unbiased, starts at 1 */
    double *zero_mean;            /* [channels] or NULL, starts at 0 */
    double *zero_var;             /* [channels] or NULL, starts at 0 */
    double decay;                 /* product of (1 - f) over applied steps, starts at 1 */
    uint64_t num_batches_tracked; /* applied steps */
} ns_ema_t;

/*! ns_ema_init() :
 *  Set the arrays 'ema' points to, and its scalars, to PyTorch's initial
 *  state. The array pointers must already be set. */
NS_API void ns_ema_init(ns_ema_t *ema, size_t channels);

/*! ns_ema_update() :
 *  Apply one step's global statistics (n values per channel, biased var) the
 *  way torch.nn.BatchNorm does in training: if n < 2 nothing changes (PyTorch
 *  refuses such a batch). Otherwise num_batches_tracked += 1,
 *  f = momentum (or 1/num_batches_tracked for NS_MOMENTUM_CUMULATIVE),
 *  running_mean = (1-f) running_mean + f mean,
 *  running_var  = (1-f) running_var  + f var n/(n-1).
 *  @return 1 if applied, 0 if skipped (n < 2), NS_EINVAL on NULL arrays or a
 *  momentum outside [0, 1] that is not NS_MOMENTUM_CUMULATIVE. */
NS_API int ns_ema_update(ns_ema_t *ema, size_t channels, uint64_t n, const double *mean,
                         const double *var, double momentum);

/*! ns_ema_debiased() :
 *  The debiased view: zero-start average / (1 - decay), which removes the pull
 *  of the initial 0 / 1 early in training. Before any applied step (decay ==
 *  1) it is PyTorch's initial state (0, 1).
 *  @return 0, or NS_EINVAL if the state keeps no zero-start arrays. */
NS_API int ns_ema_debiased(const ns_ema_t *ema, size_t channels, double *mean, double *var);

/* ---------------------------------------------------------------- PreciseBN */

/* PreciseBN accumulator of one layer: every sample weighs the same. */
typedef struct ns_precise_s {
    uint64_t n;           /* samples (values per channel) merged */
    uint64_t num_batches; /* steps merged (steps with n > 0) */
    double *mean;         /* [channels] */
    double *m2;           /* [channels] */
} ns_precise_t;

/* ---------------------------------------------------------------- fused update */

/* The most EMAs one ns_step_update() call updates (a domain's and the pooled one). */
#define NS_STEP_EMA_MAX 2

/*! ns_step_update() :
 *  One step's statistics (n values per channel, biased var) applied in one
 *  pass over the channels to 'n_ema' EMAs, each as ns_ema_update() with
 *  'momentum' would (applied[i] = 1, or 0 when n < 2 left it unchanged),
 *  and to the accumulator 'precise' (NULL: none) as ns_precise_add()
 *  would: the same operations in the same order, so the same bits, with
 *  the step's arrays read once instead of once per population.
 *  @return 0, or NS_EINVAL (what those calls refuse; nothing is changed). */
NS_API int ns_step_update(ns_ema_t *const *ema, size_t n_ema, ns_precise_t *precise,
                          size_t channels, uint64_t n, const double *mean, const double *var,
                          double momentum, int *applied);

/*! ns_precise_init() : an empty accumulator (the arrays must be set). */
NS_API void ns_precise_init(ns_precise_t *acc, size_t channels);

/*! ns_precise_add() :
 *  Merge one step's global statistics (n values, biased var) into 'acc'
 *  (Chan). n == 0 changes nothing.
 *  @return 0, or NS_EINVAL on NULL arrays or a count that overflows. */
NS_API int ns_precise_add(ns_precise_t *acc, size_t channels, uint64_t n, const double *mean,
                          const double *var);

/*! ns_precise_merge() :
 *  Merge accumulator 'src' into 'dst' exactly (pooling domains); counts and
 *  num_batches add.
 *  @return 0, or NS_EINVAL on NULL arrays or overflow. */
NS_API int ns_precise_merge(ns_precise_t *dst, const ns_precise_t *src, size_t channels);

/*! ns_precise_read() :
 *  The population estimate: mean, and var = m2 / (n - 1) (unbiased; the
 *  Rethinking-BatchNorm estimator) or m2 / n when 'biased' (fvcore's).
 *  @return 0; NS_ENOTFOUND if nothing was merged (n == 0); NS_EINVAL if
 *  unbiased is asked with n == 1. */
NS_API int ns_precise_read(const ns_precise_t *acc, size_t channels, int biased, double *mean,
                           double *var);

/* ---------------------------------------------------------------- mixtures */

/* One domain's part of a mixture. */
typedef struct ns_component_s {
    double weight;      /* >= 0; normalised over all components */
    const double *mean; /* [channels] */
    const double *var;  /* [channels] */
} ns_component_t;

/*! ns_mixture() :
 *  Moments of the mixture with weights w_d (normalised to sum 1):
 *    mean = sum w_d mean_d,  var = sum w_d (var_d + mean_d^2) - mean^2,
 *  evaluated as sum w_d (var_d + (mean_d - mean)^2), which is the same value
 *  without cancellation.
 *  @return 0, or NS_EINVAL on NULL arguments, no components, a weight that
 *  is negative or not finite, or weights summing to 0. */
NS_API int ns_mixture(const ns_component_t *src, size_t src_len, size_t channels, double *mean,
                      double *var);

/* ---------------------------------------------------------------- drift */

/* BatchNorm's eps (torch.nn.BatchNorm default): the drift's floor under
 * variances, so a channel with zero variance keeps a finite distance. */
#define NS_DRIFT_EPS 1e-5

/* How far an EMA is from the population statistics (PreciseBN), per
 * channel c, summarised over the channels:
 *   mean distance  dm[c] = |mu_ema[c] - mu_pop[c]| / sqrt(var_pop[c] + eps)
 *                  (the EMA's error in units of the population's std)
 *   var distance   dv[c] = |ln((var_ema[c] + eps) / (var_pop[c] + eps))|
 *                  (the EMA's variance off by a factor exp(dv)) */
typedef struct ns_drift_s {
    double mean_avg;         /* mean of dm over the channels */
    double mean_max;         /* largest dm */
    size_t mean_max_channel; /* first channel holding it */
    double var_avg;          /* mean of dv over the channels */
    double var_max;          /* largest dv */
    size_t var_max_channel;  /* first channel holding it */
} ns_drift_t;

/*! ns_drift() :
 *  The drift of an EMA (ema_mean, ema_var) from population statistics
 *  (pop_mean, pop_var), as ns_drift_t defines it; use the same variance
 *  form on both sides (normstat serves unbiased ones). Inputs must be
 *  finite, variances in [0, 2^500], eps in [2^-500, 1]: the ratio under the
 *  logarithm is then a normal double. Per channel, dm is the same bits in
 *  every kernel; dv and the averages may differ from the scalar reference
 *  by rounding (bound in tests/unit/core/test_drift.c).
 *  @return 0, or NS_EINVAL on NULL arguments, channels == 0 or an eps
 *  outside that range. */
NS_API int ns_drift(const double *ema_mean, const double *ema_var, const double *pop_mean,
                    const double *pop_var, size_t channels, double eps, ns_drift_t *dst);

/*! ns_drift_precise() :
 *  ns_drift() of an EMA from a PreciseBN accumulator's unbiased statistics,
 *  read in the same pass (no arrays for them): the same bits as
 *  ns_precise_read(acc, channels, 0, ...) followed by ns_drift().
 *  @return 0; NS_ENOTFOUND if acc->n == 0; NS_EINVAL if acc->n == 1, on
 *  NULL arguments, channels == 0 or an eps outside ns_drift()'s range. */
NS_API int ns_drift_precise(const double *ema_mean, const double *ema_var, const ns_precise_t *acc,
                            size_t channels, double eps, ns_drift_t *dst);

/* What ns_step_update_record() records in its pass (a history entry):
 * the step's values and an EMA's as served, in float32, and that EMA's
 * drift from an accumulator. */
typedef struct ns_step_record_s {
    const ns_ema_t *ema;         /* the EMA recorded (one of those updated, or another) */
    int debiased;                /* its ns_ema_debiased() view, else its running arrays */
    const ns_precise_t *precise; /* the drift's population (its unbiased statistics); NULL: none */
    double eps;                  /* the drift's eps (ns_drift()'s range) */
    float *batch_mean, *batch_var, *ema_mean, *ema_var; /* [channels] each, written */
    int has_drift;    /* set: 1 when 'precise' held >= 2 samples after the step */
    ns_drift_t drift; /* set when has_drift */
} ns_step_record_t;

/*! ns_step_update_record() :
 *  ns_step_update(), and in the same pass over the channels: batch_mean,
 *  batch_var = the step's mean and var, ema_mean, ema_var = rec->ema as
 *  served after the update, rounded to float32 as ns_narrow_f32() rounds;
 *  and, when rec->precise holds at least 2 samples after the update,
 *  rec->drift = ns_drift_precise() of that EMA (in double) from it. The
 *  same bits as those calls after ns_step_update(), with the arrays read
 *  once. rec == NULL: ns_step_update().
 *  @return 0, or NS_EINVAL (what ns_step_update() refuses; a record with
 *  NULL arrays, a debiased view without zero-start arrays, an eps outside
 *  ns_drift()'s range): nothing is changed. */
NS_API int ns_step_update_record(ns_ema_t *const *ema, size_t n_ema, ns_precise_t *precise,
                                 size_t channels, uint64_t n, const double *mean, const double *var,
                                 double momentum, int *applied, ns_step_record_t *rec);

/* ---------------------------------------------------------------- validation */

/*! ns_find_nonfinite() :
 *  @return the index of the first NaN or infinity in src, or src_len if all
 *  values are finite. */
NS_API size_t ns_find_nonfinite(const float *src, size_t src_len);

/*! ns_find_bad_variance() :
 *  @return the index of the first value that is not a finite number >= 0
 *  (NaN, infinity, negative; -0.0 is accepted), or src_len if none. */
NS_API size_t ns_find_bad_variance(const float *src, size_t src_len);

/*! ns_narrow_f32() :
 *  dst[i] = (float)src[i] for i < n, rounded to nearest as the C conversion. */
NS_API void ns_narrow_f32(float *dst, const double *src, size_t n);

/*! ns_find_outside() :
 *  @return the index of the first value x that is not in [lo, hi] (NaN is
 *  never in it), or src_len if none. lo may be -INFINITY, hi INFINITY. */
NS_API size_t ns_find_outside(const float *src, size_t src_len, float lo, float hi);

#ifdef __cplusplus
}
#endif
#endif /* NORMSTAT_CORE_H */
