"""bench_syncbn.py - table 7 of `make bench`: SyncBatchNorm round trips over normstat vs gloo.

    /usr/bin/python3 tests/bench/bench_syncbn.py --build BUILD [--iters N] [--rounds R]

One BatchNorm2d(256) layer synchronized across W = 2 and 4 forked processes
on loopback (one torch thread each), a normstatd started here (--no-persist,
127.0.0.1, an ephemeral port). Each process times each step
(time.perf_counter_ns); all processes' steps are pooled into p50/p99 in us,
per layer per step. The cases:

* module: normstat.torch.SyncBatchNorm (convert_sync_batchnorm of the
  layer), forward + backward of a 4x256x8x8 batch: both round trips plus the
  BN arithmetic;
* local: plain torch.nn.BatchNorm2d, the same forward + backward with no
  synchronization (native kernels; module - local = the two round trips
  plus what the module computes itself);
* wire: the transport SyncBatchNorm uses (normstat.wire: one keep-alive
  connection, request bytes built once and patched), /sync with the
  layer's count, mean and var, then /grad with its sum_dy and sum_dy_xmu;
  float32 arrays copied in from torch tensors and the answers wrapped with
  torch.frombuffer, as a layer does;
* client: the same two requests through normstat.Client.sync and .grad;
* gloo: torch.distributed gloo all_gather of the [2C + 1] float32 tensor
  torch.nn.SyncBatchNorm gathers (mean, invstd, count) and all_reduce of
  its [2C] tensor (sum_dy, sum_dy_xmu): the same exchanges over gloo.

Cases whose code is not there (no normstat.torch.SyncBatchNorm, no
normstat.wire, no Client.grad) print a row saying so. Cases run in
interleaved rounds (--rounds), each round a fresh set of processes and a
fresh run. Exit status non-zero only on errors (a process that fails or
hangs past the bound), never for a missed target.
"""

import argparse
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "client", "python"))

import normstat  # noqa: E402
from bench_server import Server  # noqa: E402
from benchenv import code_version, cpu_busy  # noqa: E402

C = 256
LAYER = "bn"
WARMUP = 10
CASE_TIMEOUT = 120  # seconds; only reached when a process hangs


def what_is_missing(case):
    """None when the case's code is there, else why it cannot run."""
    if case == "module":
        try:
            from normstat.torch import SyncBatchNorm, convert_sync_batchnorm  # noqa: F401
        except ImportError as e:
            return "normstat.torch.SyncBatchNorm not available (%s)" % e
    elif case == "wire":
        try:
            from normstat import wire
            wire.SyncFrame, wire.GradFrame  # noqa: B018
        except (ImportError, AttributeError) as e:
            return "normstat.wire not available (%s)" % e
    elif case == "client":
        if not hasattr(normstat.Client, "grad"):
            return "normstat.Client has no grad() method"
    return None


# ---------------------------------------------------------------- one process per rank

def batch(rank):
    """This rank's input and output gradient (uneven values per rank)."""
    gen = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(4, C, 8, 8, generator=gen) * (1 + rank) + rank
    gy = torch.randn(4, C, 8, 8, generator=gen)
    return x, gy


def local_stats(rank):
    """(count, mean, var, sum_dy, sum_dy_xmu) of this rank's batch, as
    float32 tensors (what a layer computes before each exchange)."""
    x, gy = batch(rank)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    sum_dy = gy.sum(dim=(0, 2, 3))
    sum_dy_xmu = (gy * (x - mean.view(1, -1, 1, 1))).sum(dim=(0, 2, 3))
    return x.numel() // C, mean, var, sum_dy, sum_dy_xmu


class Timer:
    """Per-step times of one rank, in us; split into a forward and a
    backward exchange where the case has both."""

    def __init__(self):
        self.fwd, self.bwd, self.total = [], [], []

    def add(self, i, t0, t1, t2):
        if i >= WARMUP:
            self.fwd.append((t1 - t0) / 1000.0)
            self.bwd.append((t2 - t1) / 1000.0)
            self.total.append((t2 - t0) / 1000.0)


def run_local(rank, world, iters, ctx):
    bn = torch.nn.BatchNorm2d(C)
    x, gy = batch(rank)
    x.requires_grad_(True)
    tm = Timer()
    ctx["barrier"].wait()
    for i in range(WARMUP + iters):
        t0 = time.perf_counter_ns()
        y = bn(x)
        t1 = time.perf_counter_ns()
        y.backward(gy)
        t2 = time.perf_counter_ns()
        x.grad = None
        tm.add(i, t0, t1, t2)
    return tm


def run_module(rank, world, iters, ctx):
    from normstat.torch import convert_sync_batchnorm
    client = normstat.Client(ctx["url"], timeout=30)
    model = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(C)), client,
                                   ctx["run"], rank, world)
    x, gy = batch(rank)
    x.requires_grad_(True)
    tm = Timer()
    ctx["barrier"].wait()
    for i in range(WARMUP + iters):
        t0 = time.perf_counter_ns()
        y = model(x)
        t1 = time.perf_counter_ns()
        y.backward(gy)
        t2 = time.perf_counter_ns()
        x.grad = None
        tm.add(i, t0, t1, t2)
    for m in model.modules():
        if hasattr(m, "_link") and hasattr(m, "close"):
            m.close()
    client.close()
    return tm


def run_wire(rank, world, iters, ctx):
    from normstat import wire
    count, mean, var, sum_dy, sum_dy_xmu = local_stats(rank)
    conn = wire.Connection(ctx["url"], timeout=30)
    sf = wire.SyncFrame(conn, ctx["run"], LAYER, worker=rank, channels=C)
    gf = wire.GradFrame(conn, ctx["run"], LAYER, worker=rank, channels=C)
    stats_out = torch.frombuffer(sf.stats, dtype=torch.float32)
    sums_out = torch.frombuffer(gf.sums, dtype=torch.float32)
    stats_in = torch.cat([mean, var])
    sums_in = torch.cat([sum_dy, sum_dy_xmu])
    tm = Timer()
    ctx["barrier"].wait()
    for i in range(WARMUP + iters):
        t0 = time.perf_counter_ns()
        stats_out.copy_(stats_in)
        ans = conn.exchange(sf.request(i, count), LAYER)
        g_mean = torch.frombuffer(ans.array(LAYER + ".mean")[1], dtype=torch.float32).clone()
        g_var = torch.frombuffer(ans.array(LAYER + ".var")[1], dtype=torch.float32).clone()
        t1 = time.perf_counter_ns()
        sums_out.copy_(sums_in)
        ans = conn.exchange(gf.request(i), LAYER)
        g_dy = torch.frombuffer(ans.array(LAYER + ".sum_dy")[1], dtype=torch.float32).clone()
        g_dyx = torch.frombuffer(ans.array(LAYER + ".sum_dy_xmu")[1],
                                 dtype=torch.float32).clone()
        t2 = time.perf_counter_ns()
        tm.add(i, t0, t1, t2)
    del g_mean, g_var, g_dy, g_dyx
    conn.close()
    return tm


def run_client(rank, world, iters, ctx):
    count, mean, var, sum_dy, sum_dy_xmu = local_stats(rank)
    client = normstat.Client(ctx["url"], timeout=30)
    tm = Timer()
    ctx["barrier"].wait()
    for i in range(WARMUP + iters):
        t0 = time.perf_counter_ns()
        ans = client.sync(ctx["run"], i, rank, {LAYER: (count, mean, var)})
        g = ans["layers"][LAYER]
        g_mean, g_var = torch.tensor(g["mean"]), torch.tensor(g["var"])
        t1 = time.perf_counter_ns()
        ans = client.grad(ctx["run"], i, rank, {LAYER: (sum_dy, sum_dy_xmu)})
        g = ans["layers"][LAYER]
        g_dy, g_dyx = torch.tensor(g["sum_dy"]), torch.tensor(g["sum_dy_xmu"])
        t2 = time.perf_counter_ns()
        tm.add(i, t0, t1, t2)
    del g_mean, g_var, g_dy, g_dyx
    client.close()
    return tm


def run_gloo(rank, world, iters, ctx):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % ctx["port"],
                            rank=rank, world_size=world)
    count, mean, var, sum_dy, sum_dy_xmu = local_stats(rank)
    # what torch.nn.SyncBatchNorm exchanges: cat(mean, invstd, count), then
    # cat(sum_dy, sum_dy_xmu)
    combined = torch.cat([mean, torch.rsqrt(var + 1e-5), torch.full((1,), float(count))])
    gathered = [torch.empty_like(combined) for _ in range(world)]
    sums = torch.cat([sum_dy, sum_dy_xmu])
    tm = Timer()
    dist.barrier()
    for i in range(WARMUP + iters):
        t0 = time.perf_counter_ns()
        dist.all_gather(gathered, combined)
        t1 = time.perf_counter_ns()
        red = sums.clone()
        dist.all_reduce(red)
        t2 = time.perf_counter_ns()
        tm.add(i, t0, t1, t2)
    dist.barrier()
    dist.destroy_process_group()
    return tm


RUNNERS = {"module": run_module, "local": run_local, "wire": run_wire, "client": run_client,
           "gloo": run_gloo}


def rank_main(case, rank, world, iters, ctx, out):
    torch.set_num_threads(1)
    try:
        tm = RUNNERS[case](rank, world, iters, ctx)
        out.put((rank, tm.fwd, tm.bwd, tm.total, None))
    except BaseException as e:  # reported by the parent
        out.put((rank, [], [], [], "%s: %s" % (type(e).__name__, e)))
        raise


def start_spinner():
    """A busy loop at the lowest priority: it takes only time no one else
    wants, and keeps the cores from sleeping between round trips."""
    return subprocess.Popen([sys.executable, "-c", "import os\nos.nice(19)\nwhile True: pass"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(case, world, iters, daemon, tag):
    """Pooled (fwd, bwd, total) us lists of all ranks, or raises."""
    mpc = mp.get_context("fork")
    url = "http://127.0.0.1:%d" % daemon.port
    ctx = {"url": url, "run": tag, "port": free_port(), "barrier": mpc.Barrier(world)}
    if case in ("module", "wire", "client"):
        client = normstat.Client(url, timeout=30)
        client.put_run(tag, world_size=world, sync_timeout_ms=20000)
        client.close()
    out = mpc.Queue()
    procs = [mpc.Process(target=rank_main, args=(case, r, world, iters, ctx, out))
             for r in range(world)]
    for p in procs:
        p.start()
    fwd, bwd, total, errors = [], [], [], []
    deadline = time.monotonic() + CASE_TIMEOUT
    try:
        for _ in range(world):
            left = deadline - time.monotonic()
            rank, f, b, t, err = out.get(timeout=max(1.0, left))
            if err:
                errors.append("rank %d: %s" % (rank, err))
            fwd += f
            bwd += b
            total += t
    except Exception as e:  # queue.Empty: a rank hangs
        errors.append("no result within %d s (%s)" % (CASE_TIMEOUT, type(e).__name__))
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()
    if errors:
        raise RuntimeError("%s W=%d: %s" % (case, world, "; ".join(errors)))
    return fwd, bwd, total


# ---------------------------------------------------------------- output

def pct(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]


def fmt(v):
    return "n/a" if v != v else "%.0f" % v


LABELS = {
    "module": "normstat `SyncBatchNorm` forward + backward (both round trips + BN arithmetic)",
    "local": "plain `BatchNorm2d` forward + backward, no synchronization (the arithmetic)",
    "wire": "normstat wire: `/sync` (count, mean, var) + `/grad` (sum_dy, sum_dy_xmu)",
    "client": "`normstat.Client.sync` + `.grad`",
    "gloo": "gloo `all_gather` [2C+1] + `all_reduce` [2C] (what `torch.nn.SyncBatchNorm` sends)",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.environ.get("NS_BUILD", "build"),
                    help="build directory holding bin/normstatd (default $NS_BUILD or build)")
    ap.add_argument("--normstatd", help="the daemon binary (default BUILD/bin/normstatd)")
    ap.add_argument("--workers", default="1,2,4", help="process counts, e.g. 2,4")
    ap.add_argument("--iters", type=int, default=300, help="timed steps per rank per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default="module,local,wire,client,gloo")
    ap.add_argument("--keep-awake", action="store_true",
                    help="run a busy loop at nice 19 meanwhile, so that no core sleeps "
                    "(how much of a round trip is waking idle cores)")
    a = ap.parse_args()
    binary = a.normstatd or os.path.join(a.build, "bin", "normstatd")
    t_begin = time.monotonic()
    busy = cpu_busy()
    cases = a.cases.split(",")
    missing = {c: what_is_missing(c) for c in cases}
    runnable = [c for c in cases if missing[c] is None]
    worlds = [int(w) for w in a.workers.split(",")]
    res = {(w, c): ([], [], []) for w in worlds for c in runnable}
    errors = []
    daemon = Server([binary, "--listen", "127.0.0.1:0", "--no-persist"], "normstatd")
    spinner = start_spinner() if a.keep_awake else None
    try:
        for w in worlds:
            for r in range(a.rounds):
                order = runnable[r % len(runnable):] + runnable[:r % len(runnable)]
                for c in order:
                    if (w, c) in res and res[(w, c)] is None:
                        continue  # failed in an earlier round
                    try:
                        got = run_case(c, w, a.iters, daemon,
                                       "bench-syncbn-%s-w%d-r%d-%d" % (c, w, r, os.getpid()))
                    except RuntimeError as e:
                        errors.append(str(e))
                        res[(w, c)] = None
                        continue
                    for acc, new in zip(res[(w, c)], got):
                        acc += new
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
        daemon.stop()

    print()
    print("#### 7. SyncBatchNorm over normstat: one BatchNorm2d(256) layer, us per layer per step")
    print()
    print("- torch %s, one torch thread per process, %d CPUs, %.0f %% busy with other work just "
          "before the run; W processes (fork) on loopback; normstatd --no-persist on the same host"
          % (torch.__version__, os.cpu_count(), busy * 100))
    if busy > 0.2:
        print("- **warning**: the machine was busy (%.0f %%): p99 above all is noisy; run again "
              "when it is idle" % (busy * 100))
    print("- normstat code measured: %s" % code_version())
    print("- %d rounds x %d timed steps per rank (after %d warm-up steps), cases interleaved; "
          "all ranks' steps pooled; batch per rank 4x256x8x8 (count 256)"
          % (a.rounds, a.iters, WARMUP))
    if a.keep_awake:
        print("- --keep-awake: a busy loop at nice 19 ran meanwhile, so no core was idle")
    for c in cases:
        if missing[c]:
            print("- %s: not measured: %s" % (c, missing[c]))
    print()
    print("| W | case | forward exchange p50 | p99 | backward exchange p50 | p99 | "
          "step p50 | step p99 | step p50 vs gloo | samples |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    targets = []
    for w in worlds:
        gl = res.get((w, "gloo"))
        gloo_p50 = pct(gl[2], 0.5) if gl else float("nan")
        local = res.get((w, "local"))
        for c in cases:
            if missing[c]:
                continue
            v = res.get((w, c))
            if v is None:
                print("| %d | %s | failed | | | | | | | |" % (w, LABELS[c]))
                continue
            fwd, bwd, total = v
            p50 = pct(total, 0.5)
            vs = "reference" if c == "gloo" else (
                "%.2fx" % (p50 / gloo_p50) if gloo_p50 == gloo_p50 and c != "local" else "")
            print("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %d |"
                  % (w, LABELS[c], fmt(pct(fwd, 0.5)), fmt(pct(fwd, 0.99)), fmt(pct(bwd, 0.5)),
                     fmt(pct(bwd, 0.99)), fmt(p50), fmt(pct(total, 0.99)), vs, len(total)))
            if c == "module" and local:
                extra = p50 - pct(local[2], 0.5)
                print("| %d | normstat `SyncBatchNorm` - plain `BatchNorm2d` (the round trips and "
                      "the module's own arithmetic) | | | | | %s | | %s | |"
                      % (w, fmt(extra), "%.2fx" % (extra / gloo_p50)
                         if gloo_p50 == gloo_p50 else ""))
            if c == "wire":
                targets.append((w, "wire `/sync`", pct(fwd, 0.5)))
                targets.append((w, "wire `/grad`", pct(bwd, 0.5)))
    if targets:
        print()
        print("| target: per-layer round trip from Python <= 100 us p50 (the wire "
              "SyncBatchNorm uses) | measured | |")
        print("|---|---:|---|")
        for w, label, v in targets:
            print("| W=%d, %s | %s us | %s |" % (w, label, fmt(v),
                                                 "met" if v <= 100 else "**not met**"))
    print()
    print("(bench_syncbn took %.0f s)" % (time.monotonic() - t_begin))
    for e in errors:
        print("ERROR: " + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
