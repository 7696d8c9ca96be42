"""bench_trainer.py - table 6 of `make bench`: what StatsReporter adds to a CPU training step.

    /usr/bin/python3 tests/bench/bench_trainer.py --build BUILD [--rounds R] [--max-seconds S]

Two models, each trained with SGD on CPU in three modes: no reporter,
StatsReporter (background sender) and StatsReporter(sync=True), reporting
to a normstatd started here (--no-persist, 127.0.0.1, an ephemeral port):

* resnet50: ResNet-50 (torchvision's, else tests/bench/resnet50.py: 53
  BatchNorm2d layers, 26,560 channels), batch 16 at 64x64 by default;
* bn53: the BatchNorm-bound model, 53 x BatchNorm2d(256) in a row on
  16x256x14x14.

A step is zero_grad, forward, loss, backward, optimizer step and (with a
reporter) rep.step(s); each step is timed alone (time.perf_counter). The
modes run in interleaved rounds (their order rotated each round), so a busy
moment of the shared machine hurts one round of every mode rather than one
mode; each round builds a fresh reporter, runs --warmup untimed steps and
--steps timed ones, then closes it (the close, which waits for the
background sender, is timed too: the "incl. close" column). Rows give the
median of all timed steps and the extra time as a fraction of the median
step without a reporter; normstatd's CPU time per step comes from /proc.
Each reporter's run is checked afterwards: the daemon must have received
every step (else the benchmark fails). Exit status non-zero only on errors.
"""

import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "client", "python"))

import normstat  # noqa: E402
from normstat.torch import StatsReporter  # noqa: E402
from bench_server import Server, proc_cpu  # noqa: E402
from benchenv import code_version, cpu_busy  # noqa: E402
from resnet50 import resnet50  # noqa: E402

MODES = ("none", "reporter", "sync")
MODE_LABEL = {"none": "no reporter", "reporter": "`StatsReporter` (background sender)",
              "sync": "`StatsReporter(sync=True)`"}


def url(daemon):
    return "http://127.0.0.1:%d" % daemon.port


# ---------------------------------------------------------------- models

class Case:
    """One model with its optimizer, a fixed batch and a loss."""

    def __init__(self, name, label, model, x, y):
        self.name, self.label, self.model, self.x, self.y = name, label, model, x, y
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.model.train()

    def train_step(self):
        self.opt.zero_grad(set_to_none=True)
        out = self.model(self.x)
        if self.y is None:
            loss = out.square().mean()
        else:
            loss = torch.nn.functional.cross_entropy(out, self.y)
        loss.backward()
        self.opt.step()

    def bn_input_elements(self):
        """Elements entering BatchNorm layers in one forward (the work a
        recomputing capture repeats)."""
        total = [0]
        hooks = [m.register_forward_hook(lambda m, i, o: total.__setitem__(0, total[0] +
                                                                           i[0].numel()))
                 for m in self.model.modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        with torch.no_grad():
            self.model(self.x)
        for h in hooks:
            h.remove()
        return total[0]


def make_cases(a):
    gen = torch.Generator().manual_seed(0)
    cases = []
    for name in a.models.split(","):
        if name == "resnet50":
            model, source = resnet50(num_classes=10)
            x = torch.randn(a.batch, 3, a.size, a.size, generator=gen)
            y = torch.randint(0, 10, (a.batch,), generator=gen)
            label = "ResNet-50 (%s), batch %d at %dx%d" % (source, a.batch, a.size, a.size)
            cases.append(Case(name, label, model, x, y))
        elif name == "bn53":
            model = torch.nn.Sequential(*[torch.nn.BatchNorm2d(256) for _ in range(53)])
            x = torch.randn(a.bn_batch, 256, a.bn_size, a.bn_size, generator=gen)
            label = "53 x BatchNorm2d(256) on %dx256x%dx%d" % (a.bn_batch, a.bn_size, a.bn_size)
            cases.append(Case(name, label, model, x, None))
        else:
            raise SystemExit("bench_trainer: unknown model %r (resnet50, bn53)" % name)
    return cases


# ---------------------------------------------------------------- measurement

class Series:
    """A mode's measurements: timed steps, close times, daemon CPU."""

    def __init__(self):
        self.steps, self.closes, self.daemon_cpu = [], [], 0.0
        self.rounds = []  # each round's timed steps
        self.run, self.next_step = None, 0


def run_round(case, mode, series, daemon, warmup, steps):
    rep = None
    if mode != "none":
        client = normstat.Client(url(daemon), timeout=30)
        rep = StatsReporter(case.model, client, series.run, 0, 1, sync=(mode == "sync"))
    cpu0 = proc_cpu(daemon.pid)
    series.rounds.append([])
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        case.train_step()
        if rep is not None:
            rep.step(series.next_step)
            series.next_step += 1
        t1 = time.perf_counter()
        if i >= warmup:
            series.steps.append(t1 - t0)
            series.rounds[-1].append(t1 - t0)
    if rep is not None:
        t0 = time.perf_counter()
        rep.close()
        series.closes.append(time.perf_counter() - t0)
        client.close()
    series.daemon_cpu += proc_cpu(daemon.pid) - cpu0


def check_received(daemon, case, series):
    """An error message unless the daemon finalized every step sent."""
    client = normstat.Client(url(daemon), timeout=30)
    try:
        status = client.get_run(series.run)["status"]
    finally:
        client.close()
    first = min(status["layers"])
    got = status["layers"][first]["finalized_step"]
    if got != series.next_step - 1:
        return ("%s: run %s finalized step %s, expected %d (reports were lost)"
                % (case.name, series.run, got, series.next_step - 1))
    return None


def paired_extra(mode, base):
    """The extra time of 'mode' over 'base' in percent: the median over
    rounds of (mode's median step / base's median step in the same round)
    - 1, so a slow stretch of the shared machine that spans a round cancels."""
    ratios = [statistics.median(m) / statistics.median(b)
              for m, b in zip(mode.rounds, base.rounds) if m and b]
    return (statistics.median(ratios) - 1) * 100 if ratios else float("nan")


def median_ms(v):
    return statistics.median(v) * 1e3 if v else float("nan")


def encoding_table(reps=7):
    """Table 6b: the Python client's encoding of one ResNet-50 report body
    (float32 tensors), JSON next to the generic JSON path (the same values
    as lists of Python floats, how tensors were sent before the float32
    path) and safetensors; median of 'reps' after one warm-up."""
    from normstat import client as nc
    from resnet50 import bn_channels, resnet50 as build
    model, _src = build()
    gen = torch.Generator().manual_seed(0)
    layers = {"bn%d" % i: (200704, torch.randn(c, generator=gen), torch.rand(c, generator=gen) + 0.5)
              for i, c in enumerate(bn_channels(model))}
    lists = {k: (n, m.tolist(), v.tolist()) for k, (n, m, v) in layers.items()}
    rows = [("JSON, float32 tensors (9-digit text)", lambda: nc._report_json(1, 0, layers, {})),
            ("JSON, the same values as Python float lists (repr, 17 digits)",
             lambda: nc._report_json(1, 0, lists, {})),
            ("safetensors, float32 tensors", lambda: nc._report_safetensors(1, 0, layers, {}))]
    print()
    print("#### 6b. Python client: one ResNet-50 report body (53 layers, 26,560 channels), "
          "median of %d" % reps)
    print()
    print("| encoding | ms | bytes |")
    print("|---|---:|---:|")
    for label, fn in rows:
        body = fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print("| %s | %.1f | %d |" % (label, 1e3 * statistics.median(times), len(body)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.environ.get("NS_BUILD", "build"),
                    help="build directory holding bin/normstatd (default $NS_BUILD or build)")
    ap.add_argument("--normstatd", help="the daemon binary (default BUILD/bin/normstatd)")
    ap.add_argument("--models", default="resnet50,bn53")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per round, resnet50")
    ap.add_argument("--bn-steps", type=int, default=10, help="timed steps per round, bn53")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per round and mode")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bn-batch", type=int, default=16)
    ap.add_argument("--bn-size", type=int, default=14)
    ap.add_argument("--max-seconds", type=float, default=150,
                    help="no new round starts after this (at least 2 rounds run)")
    a = ap.parse_args()
    binary = a.normstatd or os.path.join(a.build, "bin", "normstatd")
    torch.manual_seed(0)
    cases = make_cases(a)
    t_begin = time.monotonic()
    busy = cpu_busy()
    daemon = Server([binary, "--listen", "127.0.0.1:0", "--no-persist"], "normstatd")
    errors = []
    results = {}
    try:
        for ci, case in enumerate(cases):
            steps = a.steps if case.name == "resnet50" else a.bn_steps
            series = {m: Series() for m in MODES}
            for m in MODES:
                series[m].run = "bench-trainer-%s-%s-%d" % (case.name, m, os.getpid())
            for _ in range(2):  # model warm-up (allocator, oneDNN primitives)
                case.train_step()
            share = a.max_seconds * (ci + 1) / len(cases)
            rounds = 0
            for r in range(a.rounds):
                if r >= 2 and time.monotonic() - t_begin > share:
                    break
                order = MODES[r % 3:] + MODES[:r % 3]
                for m in order:
                    run_round(case, m, series[m], daemon, a.warmup, steps)
                rounds += 1
            for m in MODES[1:]:
                err = check_received(daemon, case, series[m])
                if err:
                    errors.append(err)
            results[case.name] = (case, series, rounds, steps)
    finally:
        daemon.stop()

    print()
    print("#### 6. Trainer: StatsReporter's extra time per training step (CPU)")
    print()
    print("- torch %s, %d thread(s), %d CPUs, %.0f %% busy with other work just before the run; "
          "normstatd --no-persist on the same host, world_size 1"
          % (torch.__version__, torch.get_num_threads(), os.cpu_count(), busy * 100))
    if busy > 0.2:
        print("- **warning**: the machine was busy (%.0f %%): the rounds are interleaved, but "
              "the figures are noisy; run again when it is idle" % (busy * 100))
    print("- normstat code measured: %s" % code_version())
    print("- SGD (momentum 0.9); a step = zero_grad + forward + loss + backward + optimizer step "
          "+ `rep.step()`; modes interleaved in rounds (order rotated each round), each round "
          "%d untimed step(s) then the timed ones with a fresh reporter; ms/step = median of "
          "all timed steps; vs baseline = median over rounds of (the mode's median step / the "
          "median step without reporter in the same round) - 1" % a.warmup)
    rows = []
    targets = []
    for name, (case, series, rounds, steps) in results.items():
        print("- %s: %s; %.1f M elements enter BatchNorm per forward; %d rounds x %d timed steps "
              "per mode" % (name, case.label, case.bn_input_elements() / 1e6, rounds, steps))
        for m in MODES:
            s = series[m]
            med = median_ms(s.steps)
            n = len(s.steps)
            incl = (sum(s.steps) + sum(s.closes)) / n * 1e3 if n else float("nan")
            extra = paired_extra(s, series["none"])
            rows.append("| %s | %s | %.1f | %s | %.1f | %.2f | %d |"
                        % (name, MODE_LABEL[m], med, "—" if m == "none" else "%+.1f %%" % extra,
                           incl, s.daemon_cpu / max(1, n + a.warmup * rounds) * 1e3, n))
            if name == "resnet50" and m != "none":
                limit = 5 if m == "reporter" else 10
                targets.append((MODE_LABEL[m], limit, extra))
    print()
    print("| model | mode | ms/step | vs baseline | mean ms/step incl. close | "
          "normstatd CPU ms/step | timed steps |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(r)
    if targets:
        print()
        print("| target (resnet50) | measured | |")
        print("|---|---:|---|")
        for label, limit, got in targets:
            print("| %s <= %d %% of the step%s | %+.1f %% | %s |"
                  % (label, limit, " (the GPU target)" if limit == 10 else "", got,
                     "met" if got <= limit else "**not met**"))
    encoding_table()
    print()
    print("(bench_trainer took %.0f s)" % (time.monotonic() - t_begin))
    for e in errors:
        print("ERROR: " + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
