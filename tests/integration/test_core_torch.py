"""test_core_torch.py - libnscore against real PyTorch (the statistics math).

Loads <NS_BUILD>/lib/libnscore.so (NS_BUILD defaults to "build") with ctypes
and checks, against torch on CPU:
  (a) torch.nn.BatchNorm2d in train mode, fed batches of different sizes
      (momentum 0.1, and momentum=None), against ns_moments_nchw followed by
      ns_ema_update per batch: running_mean, running_var, num_batches_tracked;
  (b) ns_combine of per-rank (n, mean, biased var), as SyncBatchNorm's ranks
      would send them, against torch.var_mean over the concatenated batch;
  (c) ns_moments_nchw (and ns_moments_nhwc) against
      torch.var_mean(x, dim=(0, 2, 3), unbiased=False) in float64.
Exits non-zero on the first failure; prints a SKIP line and exits 0 when
torch cannot be imported.
"""

import ctypes
import os
import sys

try:
    import numpy as np
    import torch
except ImportError as exc:  # torch is optional on a build host
    print(f"SKIP test_core_torch: cannot import torch/numpy ({exc})")
    sys.exit(0)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NS_MOMENTUM_CUMULATIVE = -1.0
FAILURES = []


def load_core():
    build = os.environ.get("NS_BUILD", "build")
    if not os.path.isabs(build):
        build = os.path.join(ROOT, build)
    path = os.path.join(build, "lib", "libnscore.so")
    lib = ctypes.CDLL(path)
    dp = ctypes.POINTER(ctypes.c_double)
    fp = ctypes.POINTER(ctypes.c_float)
    sz = ctypes.c_size_t
    lib.ns_moments_nchw.argtypes = [fp, sz, sz, sz, dp, dp, ctypes.c_int]
    lib.ns_moments_nchw.restype = ctypes.c_int
    lib.ns_moments_nhwc.argtypes = [fp, sz, sz, dp, dp, ctypes.c_int]
    lib.ns_moments_nhwc.restype = ctypes.c_int
    lib.ns_combine.argtypes = [ctypes.POINTER(Arrival), sz, sz, ctypes.POINTER(ctypes.c_uint64),
                               dp, dp, ctypes.c_int]
    lib.ns_combine.restype = ctypes.c_int
    lib.ns_ema_init.argtypes = [ctypes.POINTER(Ema), sz]
    lib.ns_ema_init.restype = None
    lib.ns_ema_update.argtypes = [ctypes.POINTER(Ema), sz, ctypes.c_uint64, dp, dp,
                                  ctypes.c_double]
    lib.ns_ema_update.restype = ctypes.c_int
    lib.ns_core_kernel.restype = ctypes.c_char_p
    return lib, path


class Arrival(ctypes.Structure):
    """ns_arrival_t of normstat/core.h; mean64/var64 stay NULL (float32 arrivals)."""
    _fields_ = [("n", ctypes.c_uint64),
                ("mean", ctypes.POINTER(ctypes.c_float)),
                ("var", ctypes.POINTER(ctypes.c_float)),
                ("mean64", ctypes.POINTER(ctypes.c_double)),
                ("var64", ctypes.POINTER(ctypes.c_double))]


class Ema(ctypes.Structure):
    _fields_ = [("running_mean", ctypes.POINTER(ctypes.c_double)),
                ("running_var", ctypes.POINTER(ctypes.c_double)),
                ("zero_mean", ctypes.POINTER(ctypes.c_double)),
                ("zero_var", ctypes.POINTER(ctypes.c_double)),
                ("decay", ctypes.c_double),
                ("num_batches_tracked", ctypes.c_uint64)]


def dptr(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


def fptr(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        FAILURES.append(name)


def max_rel(got, want, floor):
    """max |got - want| / max(|want|, floor), elementwise over arrays."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), floor)))


def moments(lib, x, threads=1):
    """(n, mean, biased var) per channel of an NCHW float32 tensor via libnscore."""
    xa = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    n_, c = xa.shape[0], xa.shape[1]
    inner = int(np.prod(xa.shape[2:])) if xa.ndim > 2 else 1
    mean = np.empty(c)
    m2 = np.empty(c)
    rc = lib.ns_moments_nchw(fptr(xa), n_, c, inner, dptr(mean), dptr(m2), threads)
    if rc != 0:
        raise RuntimeError(f"ns_moments_nchw returned {rc}")
    n = n_ * inner
    return n, mean, m2 / n


def random_batch(gen, n, c, h, w, offset, scale):
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float32)
    return x * scale.view(1, c, 1, 1) + offset.view(1, c, 1, 1)


def test_batchnorm_ema(lib, gen):
    """(a) BatchNorm2d(train) buffers vs ns_moments_nchw + ns_ema_update."""
    c = 6
    offset = torch.linspace(-2.0, 3.0, c)
    scale = torch.linspace(0.5, 2.0, c)
    shapes = [(8, 5, 7), (3, 4, 4), (1, 3, 3), (16, 2, 5), (5, 6, 6), (2, 1, 1)]
    for momentum in (0.1, None):
        bn = torch.nn.BatchNorm2d(c, momentum=momentum).train()
        rm = np.empty(c)
        rv = np.empty(c)
        ema = Ema(dptr(rm), dptr(rv), None, None, 0.0, 0)
        lib.ns_ema_init(ctypes.byref(ema), c)
        mom = NS_MOMENTUM_CUMULATIVE if momentum is None else momentum
        worst_m = worst_v = 0.0
        for n, h, w in shapes:
            x = random_batch(gen, n, c, h, w, offset, scale)
            with torch.no_grad():
                bn(x)
            cnt, mean, var = moments(lib, x)
            rc = lib.ns_ema_update(ctypes.byref(ema), c, cnt, dptr(mean), dptr(var), mom)
            if rc != 1:
                check(f"ema momentum={momentum} applied", False, f"ns_ema_update returned {rc}")
                return
            # torch keeps float32 buffers and float32 batch statistics: a few
            # float32 roundings per step, relative to the channel's scale
            worst_m = max(worst_m, max_rel(rm, bn.running_mean, 1.0))
            worst_v = max(worst_v, max_rel(rv, bn.running_var, 1.0))
        steps = int(bn.num_batches_tracked.item())
        check(f"BatchNorm2d momentum={momentum} running_mean", worst_m < 1e-6,
              f"{len(shapes)} batches, max rel err {worst_m:.2e} (bound 1e-6)")
        check(f"BatchNorm2d momentum={momentum} running_var", worst_v < 1e-6,
              f"{len(shapes)} batches, max rel err {worst_v:.2e} (bound 1e-6)")
        check(f"BatchNorm2d momentum={momentum} num_batches_tracked",
              steps == ema.num_batches_tracked == len(shapes),
              f"torch {steps}, libnscore {ema.num_batches_tracked}")

    # a batch of one value per channel: torch refuses it, libnscore skips it
    bn = torch.nn.BatchNorm2d(c, momentum=0.1).train()
    refused = False
    try:
        with torch.no_grad():
            bn(torch.randn(1, c, 1, 1))
    except ValueError:
        refused = True
    rm = np.zeros(c)
    rv = np.ones(c)
    ema = Ema(dptr(rm), dptr(rv), None, None, 1.0, 0)
    one = np.ones(c)
    rc = lib.ns_ema_update(ctypes.byref(ema), c, 1, dptr(one), dptr(one), 0.1)
    check("N=1 batch skipped like torch refuses it", refused and rc == 0
          and ema.num_batches_tracked == 0,
          f"torch raised ValueError: {refused}; ns_ema_update returned {rc}")


def test_syncbn_combine(lib, gen):
    """(b) ns_combine of per-rank float32 statistics vs var_mean of the whole batch."""
    c = 24
    offset = torch.linspace(-50.0, 80.0, c)
    scale = torch.linspace(0.1, 5.0, c)
    h = w = 7
    for ranks in ([4, 4, 4, 4], [5, 0, 2, 9, 1], [1], [3, 0, 0, 7, 2, 2, 6, 1]):
        parts = [random_batch(gen, n, c, h, w, offset, scale) for n in ranks]
        keep = []  # float32 arrays must outlive the call
        arr = (Arrival * len(ranks))()
        for i, (n, x) in enumerate(zip(ranks, parts)):
            arr[i].n = n * h * w
            if n == 0:
                continue  # an empty rank sends count 0 and no arrays
            # what a rank sends: its biased batch statistics in float32
            var_r, mean_r = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
            m = np.ascontiguousarray(mean_r.numpy(), dtype=np.float32)
            v = np.ascontiguousarray(var_r.numpy(), dtype=np.float32)
            keep += [m, v]
            arr[i].mean = fptr(m)
            arr[i].var = fptr(v)
        total = ctypes.c_uint64(0)
        mean = np.empty(c)
        var = np.empty(c)
        rc = lib.ns_combine(arr, len(ranks), c, ctypes.byref(total), dptr(mean), dptr(var), 2)
        whole = torch.cat([p for p in parts if p.shape[0] > 0]).double()
        var_t, mean_t = torch.var_mean(whole, dim=(0, 2, 3), unbiased=False)
        # float32 rank statistics: relative 6e-8 each, plus torch's float32
        # reduction; means are compared relative to the channel's spread too
        em = max_rel(mean, mean_t, 1.0)
        ev = max_rel(var, var_t, 1e-3)
        ok = rc == 0 and total.value == sum(ranks) * h * w and em < 1e-6 and ev < 1e-5
        check(f"SyncBN combine ranks={ranks}", ok,
              f"N {total.value} (want {sum(ranks) * h * w}), mean rel err {em:.2e} (1e-6), "
              f"var rel err {ev:.2e} (1e-5)")


def test_moments(lib, gen):
    """(c) ns_moments_nchw / nhwc vs torch.var_mean in float64."""
    cases = [((4, 3, 5, 5), 1), ((2, 17, 9, 11), 1), ((16, 64, 28, 28), 2), ((1, 5, 1, 1), 1),
             ((32, 256, 7, 7), 2), ((3, 8, 1, 1), 1)]
    for shape, threads in cases:
        n, c = shape[0], shape[1]
        offset = torch.linspace(-1000.0, 1000.0, c)
        scale = torch.linspace(0.01, 10.0, c)
        x = random_batch(gen, *shape, offset, scale)
        cnt, mean, var = moments(lib, x, threads)
        var_t, mean_t = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
        # both reduce the same float32 values in double: only double rounding
        # (and the order of summation) separates them
        em = max_rel(mean, mean_t, 1.0)
        ev = max_rel(var, var_t, 1e-6)
        check(f"moments nchw {shape} threads={threads}",
              cnt == n * shape[2] * shape[3] and em < 1e-12 and ev < 1e-10,
              f"mean rel err {em:.1e} (1e-12), var rel err {ev:.1e} (1e-10)")

    # channels-last: the same tensor as N*H*W rows of C values
    x = random_batch(gen, 8, 12, 6, 6, torch.linspace(-5.0, 5.0, 12), torch.linspace(1, 3, 12))
    rows = np.ascontiguousarray(x.permute(0, 2, 3, 1).reshape(-1, 12).numpy())
    mean = np.empty(12)
    m2 = np.empty(12)
    rc = lib.ns_moments_nhwc(fptr(rows), rows.shape[0], 12, dptr(mean), dptr(m2), 1)
    var_t, mean_t = torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)
    em = max_rel(mean, mean_t, 1.0)
    ev = max_rel(m2 / rows.shape[0], var_t, 1e-6)
    check("moments nhwc (8, 6, 6, 12)", rc == 0 and em < 1e-12 and ev < 1e-10,
          f"mean rel err {em:.1e}, var rel err {ev:.1e}")


def main():
    lib, path = load_core()
    print(f"libnscore: {path} (kernel {lib.ns_core_kernel().decode()}), "
          f"torch {torch.__version__}")
    gen = torch.Generator().manual_seed(int(os.environ.get("NS_TEST_SEED", "1234")) % (2**63))
    test_batchnorm_ema(lib, gen)
    test_syncbn_combine(lib, gen)
    test_moments(lib, gen)
    if FAILURES:
        print(f"test_core_torch: {len(FAILURES)} check(s) failed: {', '.join(FAILURES)}")
        return 1
    print("test_core_torch: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
