"""gpu_trainer.py - table 8: what normstat costs a ResNet-50 training step on a CUDA GPU.

    python3 tests/bench/gpu_trainer.py [--normstatd PATH] [--steps N] [--warmup N] [--out FILE]

On a machine without a CUDA GPU it prints "gpu_trainer: skipped: no CUDA
GPU" and exits 0 (--device cpu runs the same code on the CPU, small sizes
recommended, to check the script itself).

ResNet-50 (torchvision's, else tests/bench/resnet50.py), batch 128 at
224x224, bf16 autocast, channels_last, SGD (momentum 0.9), one fixed
synthetic batch; world_size 1. Modes, in this order:

  1. eager, no reporter                      (the baseline)
  2. eager + StatsReporter (background sender)
  3. eager + StatsReporter(sync=True)
  4. normstat SyncBatchNorm (convert_sync_batchnorm, world_size 1)
  5. torch.nn.SyncBatchNorm, NCCL process group of one process (PyTorch
     then takes its plain batch-norm path: it synchronizes only when
     world_size > 1)
  6. torch.nn.SyncBatchNorm with its synchronizing path forced (the NCCL
     all_gather and all_reduce SyncBN runs per layer when world_size > 1)
  7. torch.compile(model), no reporter       (torch >= 2)
  8. torch.compile(model) + StatsReporter    (torch >= 2)

Each mode: --warmup untimed steps (compiling, cuDNN autotuning), then
--steps timed steps in blocks of --block steps; a block's time is wall
clock from its first step to torch.cuda.synchronize() after its last (the
CPU runs ahead of the GPU as in training), ms/step = the median over blocks
of block time / block steps. Every reporter's run is checked afterwards
(the daemon must have finalized every step). A normstatd --no-persist is
started on 127.0.0.1 (an ephemeral port) from --normstatd, else
$NS_BUILD/bin/normstatd, build/bin/normstatd or .gpu/normstatd (a lib/
folder beside the binary goes on LD_LIBRARY_PATH, as the .gpu layout of
gpu-carry has it).

Bounded: no mode starts after --max-seconds (default 270) minus what it is
expected to take (compiled modes: --compile-seconds each), and an alarm at
--max-seconds + 20 prints what was measured and exits. Every mode's result
is printed as it completes; the markdown table follows at the end (--out
FILE gets it too, rewritten after every mode). A mode that fails prints its
error in its row; the others still run. Exit status: 0 when every mode
that ran succeeded (or was skipped), 1 otherwise.
"""

import argparse
import copy
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "client", "python"))

from benchenv import code_version  # noqa: E402

T0 = time.monotonic()


def log(msg):
    print("[gpu_trainer %5.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


class OutOfTime(Exception):
    pass


# ---------------------------------------------------------------- daemon

def find_normstatd(arg):
    cands = [arg] if arg else []
    if os.environ.get("NS_BUILD"):
        cands.append(os.path.join(os.environ["NS_BUILD"], "bin", "normstatd"))
    cands += [os.path.join(REPO, "build", "bin", "normstatd"),
              os.path.join(REPO, ".gpu", "normstatd")]
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    raise SystemExit("gpu_trainer: no normstatd (tried %s); build it or pass --normstatd"
                     % ", ".join(c for c in cands if c))


class Daemon:
    """normstatd --no-persist on 127.0.0.1:0; the port comes from its log."""

    def __init__(self, binary):
        env = dict(os.environ)
        lib = os.path.join(os.path.dirname(os.path.abspath(binary)), "lib")
        if os.path.isdir(lib):
            env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"]
                                            if env.get("LD_LIBRARY_PATH") else "")
        self.log = tempfile.NamedTemporaryFile(prefix="gpu-trainer-nsd-", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--no-persist"],
                                     stdout=subprocess.DEVNULL, stderr=self.log, env=env)
        self.url = None
        deadline = time.monotonic() + 20
        while self.url is None and time.monotonic() < deadline and self.proc.poll() is None:
            with open(self.log.name, errors="replace") as f:
                m = re.search(r"event=listening addr=127\.0\.0\.1:(\d+)", f.read())
            if m:
                self.url = "http://127.0.0.1:%s" % m.group(1)
            else:
                time.sleep(0.05)
        if self.url is None:
            tail = open(self.log.name, errors="replace").read()[-2000:]
            self.stop()
            raise SystemExit("gpu_trainer: normstatd did not start: " + tail)
        import normstat
        c = normstat.Client(self.url, timeout=5)
        deadline = time.monotonic() + 30
        while not c.readyz():
            if time.monotonic() > deadline:
                raise SystemExit("gpu_trainer: normstatd never became ready")
            time.sleep(0.05)
        self.version = c.version().get("version", "?")
        c.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
            os.unlink(self.log.name)


# ---------------------------------------------------------------- training

class Trainer:
    """One model, its SGD optimizer and the fixed batch; step() is one
    training step under autocast."""

    def __init__(self, model, x, y, device, dtype):
        self.model, self.x, self.y, self.device, self.dtype = model, x, y, device, dtype
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.model.train()

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype):
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step_fn, device, warmup, steps, block):
    """(median ms/step over blocks, seconds the warm-up took)."""
    t0 = time.monotonic()
    for _ in range(warmup):
        step_fn()
    synchronize(device)
    warm_s = time.monotonic() - t0
    per_step = []
    done = 0
    while done < steps:
        k = min(block, steps - done)
        t = time.perf_counter()
        for _ in range(k):
            step_fn()
        synchronize(device)
        per_step.append((time.perf_counter() - t) / k * 1e3)
        done += k
    return statistics.median(per_step), warm_s


class ReportedSteps:
    """A step function that trains, then calls rep.step(s); counts steps."""

    def __init__(self, trainer, rep):
        self.trainer, self.rep, self.next = trainer, rep, 0

    def __call__(self):
        self.trainer.step()
        self.rep.step(self.next)
        self.next += 1


def check_received(url, run, last_step):
    """None, or why the daemon did not finalize every step of run."""
    import normstat
    c = normstat.Client(url, timeout=30)
    try:
        layers = c.get_run(run)["status"]["layers"]
    except Exception as e:  # noqa: BLE001 - reported in the table
        return "run %s: %s" % (run, e)
    finally:
        c.close()
    got = layers[min(layers)]["finalized_step"] if layers else None
    if got != last_step:
        return "daemon finalized step %s of %d (reports lost)" % (got, last_step)
    return None


def dynamo_stats():
    """(graph breaks, graphs compiled) so far, from torch._dynamo's
    counters, or None where they cannot be read."""
    try:
        from torch._dynamo.utils import counters
        return (sum(counters["graph_break"].values()),
                int(counters["stats"].get("unique_graphs", 0)))
    except Exception:  # noqa: BLE001 - diagnostics only
        return None


def dynamo_note(before):
    """What dynamo did since 'before' (dynamo_stats()), or ''."""
    after = dynamo_stats()
    if before is None or after is None:
        return ""
    return "dynamo: %d graph break(s), %d graph(s) compiled in this mode" % (
        after[0] - before[0], after[1] - before[1])


class SyncPathBatchNorm(torch.nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm that takes its synchronizing path (all_gather
    of the statistics, all_reduce of the gradient sums) at any world size;
    PyTorch's own forward falls back to plain batch norm when world_size is
    1, which would measure nothing."""

    def forward(self, input):
        if not self.training:
            return super().forward(input)
        import torch.distributed as dist
        from torch.nn.modules._functions import SyncBatchNorm as sync_batch_norm
        self.num_batches_tracked.add_(1)
        factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                  else self.momentum)
        group = self.process_group or dist.group.WORLD
        return sync_batch_norm.apply(input, self.weight, self.bias, self.running_mean,
                                     self.running_var, self.eps, factor, group,
                                     dist.get_world_size(group))


def close_links(model):
    """Close the daemon connections of a model's normstat SyncBatchNorm layers."""
    for m in model.modules():
        if hasattr(m, "_link") and hasattr(m, "close"):
            m.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the modes

MODES = [
    ("none", "no reporter", "eager"),
    ("reporter", "`StatsReporter` (background sender)", "eager"),
    ("sync", "`StatsReporter(sync=True)`", "eager"),
    ("ns_syncbn", "normstat `SyncBatchNorm` (`convert_sync_batchnorm`, world_size 1)", "eager"),
    ("torch_syncbn", "`torch.nn.SyncBatchNorm`, NCCL, one process (its plain path)", "eager"),
    ("torch_syncbn_forced", "`torch.nn.SyncBatchNorm`, NCCL, one process, synchronizing path "
     "forced", "eager"),
    ("compiled", "`torch.compile(model)`, no reporter", "compiled"),
    ("compiled_reporter", "`torch.compile(model)` + `StatsReporter`", "compiled"),
]


class Bench:
    def __init__(self, a, device, daemon):
        self.a, self.device, self.daemon = a, device, daemon
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.amp]
        from resnet50 import resnet50
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        base, self.model_source = resnet50(num_classes=1000)
        self.base = base  # untouched copy, the source of every mode's model
        self.x = torch.randn(a.batch, 3, a.size, a.size, generator=gen).to(
            device).contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 1000, (a.batch,), generator=gen).to(device)
        self.eager = None
        self.compiled = None
        self.pg_ready = False

    def model(self):
        m = copy.deepcopy(self.base).to(self.device).to(memory_format=torch.channels_last)
        return m

    def trainer(self, model):
        return Trainer(model, self.x, self.y, self.device, self.dtype)

    def reporter(self, model, run, sync):
        import normstat
        from normstat.torch import StatsReporter
        client = normstat.Client(self.daemon.url, timeout=60)
        return StatsReporter(model, client, run, 0, 1, sync=sync), client

    def timed(self, fn):
        return time_steps(fn, self.device, self.a.warmup, self.a.steps, self.a.block)

    def run_mode(self, mode):
        """(ms/step, note)."""
        a = self.a
        run = "gpu-trainer-%s-%d" % (mode, os.getpid())
        if mode in ("none", "reporter", "sync"):
            if self.eager is None:
                self.eager = self.trainer(self.model())
            tr = self.eager
            if mode == "none":
                ms, warm = self.timed(tr.step)
                return ms, "warm-up %.1f s" % warm
            rep, client = self.reporter(tr.model, run, mode == "sync")
            try:
                fn = ReportedSteps(tr, rep)
                ms, warm = self.timed(fn)
                t = time.perf_counter()
                rep.close()
                close_ms = (time.perf_counter() - t) * 1e3
            finally:
                rep.close(raise_errors=False)
                client.close()
            err = check_received(self.daemon.url, run, fn.next - 1)
            if err:
                raise RuntimeError(err)
            return ms, "close %.1f ms; %d steps received" % (close_ms, fn.next)
        if mode == "ns_syncbn":
            import normstat
            try:
                from normstat.torch import convert_sync_batchnorm
            except ImportError as e:
                return None, "skipped: normstat.torch.convert_sync_batchnorm not available (%s)" % e
            client = normstat.Client(self.daemon.url, timeout=60)
            model = convert_sync_batchnorm(self.model(), client, run, 0, 1)
            tr = self.trainer(model)
            try:
                ms, warm = self.timed(tr.step)
            finally:
                close_links(model)
                client.close()
            last = a.warmup + a.steps - 1
            err = check_received(self.daemon.url, run, last)
            if err:
                raise RuntimeError(err)
            return ms, "warm-up %.1f s; %d steps synchronized" % (warm, last + 1)
        if mode in ("torch_syncbn", "torch_syncbn_forced"):
            if self.device.type != "cuda":
                return None, "skipped: torch.nn.SyncBatchNorm needs CUDA tensors"
            import torch.distributed as dist
            if not self.pg_ready:
                dist.init_process_group("nccl", init_method="tcp://127.0.0.1:%d" % free_port(),
                                        rank=0, world_size=1)
                self.pg_ready = True
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model())
            if mode == "torch_syncbn_forced":
                for m in model.modules():
                    if type(m) is torch.nn.SyncBatchNorm:
                        m.__class__ = SyncPathBatchNorm
            ms, warm = self.timed(self.trainer(model).step)
            return ms, "warm-up %.1f s" % warm
        if mode in ("compiled", "compiled_reporter"):
            if not hasattr(torch, "compile"):
                return None, ("skipped: torch.compile needs torch >= 2 (this is %s)"
                              % torch.__version__)
            if self.compiled is None:
                self.compiled = self.trainer(torch.compile(self.model()))
            tr = self.compiled
            before = dynamo_stats()
            if mode == "compiled":
                ms, warm = self.timed(tr.step)
                return ms, "; ".join(x for x in ("warm-up (compiling) %.1f s" % warm,
                                                 dynamo_note(before)) if x)
            rep, client = self.reporter(tr.model, run, False)
            try:
                fn = ReportedSteps(tr, rep)
                ms, warm = self.timed(fn)
                rep.close()
            finally:
                rep.close(raise_errors=False)
                client.close()
            err = check_received(self.daemon.url, run, fn.next - 1)
            if err:
                raise RuntimeError(err)
            return ms, "; ".join(x for x in ("warm-up (compiling) %.1f s" % warm,
                                             dynamo_note(before),
                                             "%d steps received" % fn.next) if x)
        raise ValueError(mode)


# ---------------------------------------------------------------- table

def table(results, header_lines, wanted):
    out = ["", "#### 8. Trainer on a GPU: ResNet-50, ms per training step", ""]
    out += ["- " + h for h in header_lines]
    out += ["", "| mode | ms/step | vs baseline | note |", "|---|---:|---:|---|"]
    base = {"eager": results.get("none", (None,))[0],
            "compiled": results.get("compiled", (None,))[0]}
    for mode, label, kind in MODES:
        if mode not in wanted:
            continue
        if mode not in results:
            out.append("| %s | | | not run (time limit) |" % label)
            continue
        ms, note = results[mode]
        ref = base[kind]
        if ms is None:
            out.append("| %s | | | %s |" % (label, note))
            continue
        vs = "—" if mode in ("none", "compiled") else (
            "%+.1f %%" % ((ms / ref - 1) * 100) if ref else "")
        out.append("| %s | %.1f | %s | %s |" % (label, ms, vs, note))
    targets = []

    def extra(mode, kind="eager"):
        r, ref = results.get(mode, (None,))[0], base[kind]
        return None if r is None or ref is None else (r / ref - 1) * 100

    for mode, kind, limit, label in (("reporter", "eager", 3, "`StatsReporter`"),
                                     ("compiled_reporter", "compiled", 3,
                                      "`torch.compile` + `StatsReporter`"),
                                     ("sync", "eager", 10, "`StatsReporter(sync=True)`")):
        e = extra(mode, kind)
        if e is not None:
            verdict = "met" if e <= limit else "**not met**"
            targets.append("| %s <= %d %% | %+.1f %% | %s |" % (label, limit, e, verdict))
    ns = extra("ns_syncbn")
    for ref_mode, what in (("torch_syncbn", "as PyTorch runs it at world_size 1"),
                           ("torch_syncbn_forced", "synchronizing path forced")):
        t = extra(ref_mode)
        if ns is not None and t is not None:
            ok = ns <= 2 * max(t, 0.0)
            targets.append("| normstat `SyncBatchNorm` overhead <= 2x `torch.nn.SyncBatchNorm`'s "
                           "(%s) | %+.1f %% vs %+.1f %% | %s |"
                           % (what, ns, t, "met" if ok else "**not met**"))
    if targets:
        out += ["", "| target | measured | |", "|---|---:|---|"] + targets
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--normstatd", help="normstatd binary (default $NS_BUILD/bin/normstatd, "
                    "build/bin/normstatd, .gpu/normstatd)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (to check the script)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--amp", default="bf16", choices=("bf16", "fp16"))
    ap.add_argument("--steps", type=int, default=30, help="timed steps per mode")
    ap.add_argument("--block", type=int, default=5, help="steps per timed block")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per mode")
    ap.add_argument("--modes", default=",".join(m for m, _, _ in MODES))
    ap.add_argument("--max-seconds", type=float, default=270,
                    help="no mode starts when it would end after this")
    ap.add_argument("--compile-seconds", type=float, default=90,
                    help="expected time of a compiled mode (compiling included)")
    ap.add_argument("--out", help="also write the markdown table to this file")
    a = ap.parse_args()

    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_trainer: skipped: no CUDA GPU (torch %s, torch.cuda.is_available() is False)"
              % torch.__version__)
        return 0
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    nsd = find_normstatd(a.normstatd)
    daemon = Daemon(nsd)
    wanted = a.modes.split(",")
    unknown = set(wanted) - {m for m, _, _ in MODES}
    if unknown:
        daemon.stop()
        raise SystemExit("gpu_trainer: unknown mode(s) %s" % ", ".join(sorted(unknown)))
    results = {}
    failed = []

    def on_alarm(signum, frame):
        raise OutOfTime()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(a.max_seconds + 20))
    header = []
    try:
        bench = Bench(a, device, daemon)
        dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        header = [
            "%s; torch %s%s; %s" % (dev_name, torch.__version__,
                                    ", CUDA %s" % torch.version.cuda if device.type == "cuda"
                                    else "", bench.model_source),
            "batch %d at %dx%d, %s autocast, channels_last, SGD (momentum 0.9), one fixed "
            "synthetic batch, world_size 1; normstatd %s --no-persist on the same host"
            % (a.batch, a.size, a.size, a.amp, daemon.version),
            "normstat code measured: %s" % code_version(),
            "ms/step: median over blocks of %d steps (wall clock to torch.cuda.synchronize()), "
            "%d timed steps after %d warm-up steps per mode" % (a.block, a.steps, a.warmup),
            "vs baseline: eager rows vs eager without reporter, compiled rows vs compiled "
            "without reporter",
        ]
        for mode, label, kind in MODES:
            if mode not in wanted:
                continue
            need = a.compile_seconds if kind == "compiled" else 20
            left = a.max_seconds - (time.monotonic() - T0)
            if need > left:
                results[mode] = (None, "skipped: time budget (%.0f s left, ~%.0f s needed)"
                                 % (left, need))
                log("%s: skipped (time budget)" % mode)
                continue
            log("%s: starting" % mode)
            try:
                results[mode] = bench.run_mode(mode)
            except OutOfTime:
                raise
            except Exception as e:  # noqa: BLE001 - one failed mode does not stop the others
                results[mode] = (None, "**failed**: %s: %s" % (type(e).__name__,
                                                              str(e).replace("|", "/")[:300]))
                failed.append(mode)
            ms, note = results[mode]
            log("%s: %s ms/step; %s" % (mode, "%.2f" % ms if ms is not None else "-", note))
            if a.out:  # what is measured so far survives a kill from outside
                with open(a.out, "w") as f:
                    f.write(table(results, header, wanted))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    except OutOfTime:
        log("time limit (%.0f s) reached; printing what was measured" % (a.max_seconds + 20))
        failed.append("time limit")
    finally:
        signal.alarm(0)
        daemon.stop()
        if results and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    text = table(results, header, wanted)
    print(text, flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    log("done")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
