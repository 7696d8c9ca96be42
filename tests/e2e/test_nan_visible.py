"""test_nan_visible.py - a trainer sending NaN is visible at the daemon's default log level.

Two PyTorch workers (StatsReporter, safetensors, the client's defaults)
train an MLP for 4 steps against a normstatd started without --log-level
(info). At step 2 worker 1's batch holds a NaN, so every statistic of its
first BatchNorm (net.1) is NaN: the daemon refuses the report (422
bad_value), the reporter drops the step with a warning and training goes
on. The daemon's log must show it at level info, naming the run, worker 1,
layer net.1 and the reason; the run's status counts it under
health.rejections and shows step 2 of net.1 waiting for worker 1; /metrics
counts it in normstat_run_rejections_total.
"""

import re
import time
import warnings

import harness as h
from normstat.torch import StatsReporter

import torch

STEPS = 4
NAN_STEP = 2


def main(checks):
    d = h.start_daemon()  # the default log level: info
    run = h.run_name("nan")
    c = d.client()
    c.put_run(run, world_size=2)
    models = [h.make_model("mlp", seed=1), h.make_model("mlp", seed=1)]
    gens = [torch.Generator().manual_seed(10 + r) for r in range(2)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        reps = [StatsReporter(models[r], d.client(), run, r, 2) for r in range(2)]
        for step in range(STEPS):
            for r in range(2):
                x, _ = h.make_batch("mlp", 8, gens[r], shift=0.1 * step)
                if r == 1 and step == NAN_STEP:
                    x[3, 5] = float("nan")  # one bad input: every output of net.0 is NaN
                models[r](x)
                reps[r].step(step)
        for rep in reps:
            checks.check(rep.flush(timeout=30), f"worker {rep.rank}: every report answered")
        lost = [rep.lost_steps for rep in reps]
        for rep in reps:
            rep.close()
    checks.eq(lost, [[], [NAN_STEP]], "only worker 1's NaN step is refused and dropped")
    checks.check(any("bad_value" in str(w.message) for w in seen),
                 "the trainer is warned with the server's error code", [str(w.message) for w in seen][:3])

    def rejected():
        return [line for line in list(d.lines) if "event=report_rejected" in line and f"run={run}" in line]

    deadline = time.monotonic() + 10  # the line is written before the answer; bound only
    while not rejected() and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = rejected()
    checks.eq(len(lines), 1, "one report_rejected line for the run")
    fields = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', lines[0])) if lines else {}
    checks.eq({k: fields.get(k) for k in ("level", "run", "worker", "layer", "reason")},
              {"level": "info", "run": run, "worker": "1", "layer": "net.1", "reason": "bad_value"},
              "logged at info naming run, worker, layer and reason")

    st = c.get_run(run)["status"]
    checks.eq(st["health"]["rejections"], {"bad_value": 1}, "run status counts the rejection")
    waiting = [(p["layer"], p["step"], p["waiting_for"]) for p in st["pending"]]
    checks.check(("net.1", NAN_STEP, [1]) in waiting, "the stall report shows step 2 waiting for worker 1",
                 f"{waiting}")
    metrics = c.metrics()
    checks.check(f'normstat_run_rejections_total{{run="{run}",reason="bad_value"}} 1\n' in metrics,
                 "/metrics counts it for the run")
    c.close()
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(main)
