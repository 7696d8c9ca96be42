#!/usr/bin/env python3
"""torch_var_mean.py - time torch.var_mean over the channels of an NCHW tensor.

The PyTorch peer of tests/bench/bench_core.c. It maps the float32 tensor the
benchmark wrote (a file, or /proc/PID/fd/N of a memfd) without copying it, so
both sides read the same bytes from the same kind of memory, then times

    torch.var_mean(x, dim=(0, 2, 3), unbiased=False)

Usage: torch_var_mean.py FILE SHAPE THREADS REPS
    SHAPE    NxCxHxW, e.g. 64x256x64x64
    THREADS  torch.set_num_threads(THREADS)
    REPS     timed repetitions after one warm-up call

Output, one "key value..." line each (all times in seconds):
    seconds <median>   best <min>   threads <torch.get_num_threads()>
    torch <version>    var <C values>   mean <C values>
If torch or numpy cannot be imported it prints "error <reason>" and exits 3.
"""

import statistics
import sys
import time


def main(argv):
    if len(argv) != 5:
        print("usage: torch_var_mean.py FILE SHAPE THREADS REPS", file=sys.stderr)
        return 2
    path = argv[1]
    shape = tuple(int(s) for s in argv[2].replace(",", "x").split("x"))
    threads = int(argv[3])
    reps = max(1, int(argv[4]))
    try:
        import numpy as np
        import torch
    except ImportError as exc:  # the benchmark then reports "torch: not available"
        print(f"error {exc}")
        return 3

    torch.set_num_threads(threads)
    # mode "c" (copy-on-write) gives a writable array, which torch.from_numpy
    # wants, while the pages stay those of the shared tensor (nothing writes).
    x = torch.from_numpy(np.memmap(path, dtype=np.float32, mode="c", shape=shape))
    dims = (0, 2, 3) if len(shape) == 4 else tuple(d for d in range(len(shape)) if d != 1)

    var, mean = torch.var_mean(x, dim=dims, unbiased=False)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        times.append(time.perf_counter() - t0)

    print(f"seconds {statistics.median(times):.9f}")
    print(f"best {min(times):.9f}")
    print(f"threads {torch.get_num_threads()}")
    print(f"torch {torch.__version__}")
    print("var " + " ".join(repr(v) for v in var.double().tolist()))
    print("mean " + " ".join(repr(v) for v in mean.double().tolist()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
