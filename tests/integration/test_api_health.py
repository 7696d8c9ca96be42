"""test_api_health.py - a run's health in numbers, and refused reports in the log.

* GET /v1/runs/{run} carries "drift" {"worst"} (the first row of GET
  .../drift) and "health" {"steps_applied", "pending", "skipped",
  "rejections"}, counted here from what the test sent.
* /metrics carries the per-run series (normstat_run_*), equal to those
  answers, for at most --metrics-max-runs runs, the most recently active
  (a refused report is activity: a run gone bad stays in view).
* A refused report is logged at the default level (info), naming run,
  worker, layer and reason, whether the decoder refused it (NaN in a
  safetensors body, a JSON number beyond float32) or the run did (a worker
  outside world_size, a stale step), or the body did not decode (a NaN
  literal, as Python's json.dumps writes it: the line still names the
  worker and the layer holding it); at most 10 lines per second per run,
  each line counting the lines withheld before it, so that the lines and
  the withheld counts add up to the reports refused (checked by count: the
  bound depends on how many seconds the sending took, measured, never
  asserted).
"""

import json
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

LINES_PER_SECOND = 10  # NSD_REJECTION_LOG_LINES
LAYERS = {"bn1": 3, "bn2": 2}


def report(step, worker, mean_bias=0.0, count=8, layers=LAYERS):
    return {"step": step, "worker": worker,
            "layers": {l: {"count": count, "mean": [mean_bias + 0.25 * c + 0.5 * worker for c in range(C)],
                           "var": [1.0 + 0.125 * c for c in range(C)]} for l, C in layers.items()}}


def metric_samples(text):
    """{(name, frozenset(labels.items())): value} of a Prometheus text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$', line)
        if not m:
            continue
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


def rejected_lines(daemon, run):
    """The report_rejected lines of 'run', as dicts of their logfmt fields."""
    with daemon._lock:
        lines = list(daemon.lines)
    out = []
    for line in lines:
        if "event=report_rejected" not in line:
            continue
        fields = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line))
        if fields.get("run") == run:
            out.append(fields)
    return out


class Health(nsd.Case):
    # the default log level: refused reports must show without debug
    DAEMON_ARGS = ("--log-level", "info", "--metrics-max-runs", "2")

    def status(self, run):
        r = self.c.get(f"/v1/runs/{run}")
        self.require(r.status == 200, f"GET run {run}", r.short())
        return r.json()["status"]

    def metrics(self):
        r = self.c.get("/metrics")
        self.require(r.status == 200, "GET /metrics", r.short())
        return metric_samples(r.body.decode())

    def test_status_and_metrics(self):
        run = "h-b-health"  # names chosen so ties of activity keep the expected order
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "PUT run")
        applied = skipped = 0
        for step in range(4):
            for w in (0, 1):
                self.require(self.c.report(run, report(step, w, mean_bias=step)).status == 202, "report")
            applied += len(LAYERS)
        # a step of one value in all: applied, but EMA skips it (counted per layer)
        for w in (0, 1):
            self.require(self.c.report(run, report(4, w, count=0 if w else 1)).status == 202, "count 1")
        applied += len(LAYERS)
        skipped += len(LAYERS)
        # worker 0 runs ahead by three steps: pending steps and a lag of 3
        for step in (5, 6, 7):
            self.require(self.c.report(run, report(step, 0)).status == 202, f"worker 0 step {step}")
        pending = 3 * len(LAYERS)
        # refused: a worker outside world_size, twice
        for _ in range(2):
            r = self.c.report(run, report(9, 5))
            self.check_status(r, 409, "worker 5 of 2", code="worker_out_of_range")
        st = self.status(run)
        health = st.get("health", {})
        self.check_eq((health.get("steps_applied"), health.get("pending"), health.get("skipped")),
                      (applied, pending, skipped), "health: steps applied, pending, skipped")
        self.check_eq(health.get("rejections"), {"worker_out_of_range": 2}, "health: rejections by reason")
        d = self.c.get(f"/v1/runs/{run}/drift").json()
        self.check(d["worst"] is not None and st.get("drift") == {"worst": d["worst"]},
                   "status drift.worst is GET drift's worst", f"{st.get('drift')} vs {d['worst']}")
        lag = max(w["lag"] for w in st["workers"] if w["lag"] is not None)
        self.check_eq(lag, 3, "worker 1 lags 3 steps")

        m = self.metrics()
        R = frozenset({("run", run)})
        self.check_eq(m.get(("normstat_run_steps_applied_total", R)), applied, "metric steps applied")
        self.check_eq(m.get(("normstat_run_pending_steps", R)), pending, "metric pending steps")
        self.check_eq(m.get(("normstat_run_steps_skipped_total", R)), skipped, "metric skipped steps")
        self.check_eq(m.get(("normstat_run_worker_lag_steps", R)), lag, "metric worker lag")
        worst = m.get(("normstat_run_drift_worst", frozenset({("run", run), ("layer", d["worst"]["layer"])})))
        self.check(worst is not None and math.isclose(worst, d["worst"]["mean_max"], rel_tol=1e-15),
                   "metric drift worst, labelled with its layer", f"{worst} vs {d['worst']}")
        rej = {dict(k[1])["reason"]: v for k, v in m.items()
               if k[0] == "normstat_run_rejections_total" and dict(k[1]).get("run") == run}
        self.check(rej.get("worker_out_of_range") == 2 and rej.get("bad_value") == 0
                   and len(rej) >= 20, "metric rejections: every reason, counted", f"{rej}")

        # Bounded cardinality: two runs at most, the most recently active.
        for name in ("h-c-old", "h-a-new"):
            self.require(self.c.report(name, report(0, 0)).status == 202, f"report to {name}")
        m = self.metrics()
        runs = {dict(k[1])["run"] for k in m if k[0] == "normstat_run_steps_applied_total"}
        self.check_eq(runs, {"h-c-old", "h-a-new"}, "--metrics-max-runs 2: the two most recently active runs")
        self.check(all(("normstat_run_rejections_total", frozenset({("run", run), ("reason", r)})) not in m
                       for r in rej), "the older run's series are gone")
        # A run whose reports are now all refused (a diverging trainer) is
        # active too: its series come back, the bad values counted, while it
        # has no accepted report newer than the others'.
        bad = report(9, 0)
        bad["layers"]["bn1"]["var"][0] = -1.0
        self.check_status(self.c.report(run, bad), 422, "a negative variance", code="bad_value")
        m = self.metrics()
        runs = {dict(k[1])["run"] for k in m if k[0] == "normstat_run_steps_applied_total"}
        self.check_eq(runs, {run, "h-a-new"}, "a refused report makes its run the most recently active")
        self.check_eq(m.get(("normstat_run_rejections_total", frozenset({("run", run), ("reason", "bad_value")}))),
                      1, "its bad value is counted in /metrics")

    def test_rejections_logged(self):
        run = "h-log"
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 4}).status == 201, "PUT run")
        self.require(self.c.report(run, report(0, 0)).status == 202, "a good report")
        # NaN from worker 2 in bn2, through safetensors (JSON cannot carry NaN)
        bad = report(1, 2)
        bad["layers"]["bn2"]["mean"][1] = float("nan")
        r = self.c.post(f"/v1/runs/{run}/batches", nsd.report_to_safetensors(bad),
                        content_type="application/safetensors")
        self.check_status(r, 422, "NaN mean", code="bad_value")
        # a JSON number beyond float32, worker 3, bn1
        bad = report(1, 3)
        bad["layers"]["bn1"]["var"][0] = 1e39
        self.check_status(self.c.report(run, bad), 422, "var 1e39", code="bad_value")
        # refused by the run: worker 0 repeats step 0 (stale), bn1 first in name order
        self.check_status(self.c.report(run, report(0, 0)), 409, "stale step", code=("stale_step", "duplicate_report"))
        # Python's json.dumps of a NaN (a literal JSON has not): malformed, yet the
        # line names the worker and the layer that holds it (worker 1, bn2's var)
        bad = report(1, 1)
        bad["layers"]["bn2"]["var"][1] = float("nan")
        self.check_status(self.c.post(f"/v1/runs/{run}/batches", json.dumps(bad).encode()), 400,
                          "a NaN literal in JSON", code="bad_request")
        lines = nsd.poll(lambda: len(rejected_lines(self.daemon, run)) >= 4 and rejected_lines(self.daemon, run))
        got = [(x.get("worker"), x.get("layer"), x.get("reason")) for x in lines or []]
        self.check_eq(got[:4], [("2", "bn2", "bad_value"), ("3", "bn1", "bad_value"),
                                ("0", "bn1", got[2][2] if len(got) > 2 else "?"), ("1", "bn2", "bad_request")],
                      "each refused report logged at info with worker, layer and reason")
        self.check(all(x.get("run") == run and x.get("withheld") == "0" for x in lines[:4]),
                   "lines name the run; none withheld yet")
        with self.daemon._lock:
            lvl = [l for l in self.daemon.lines if "event=report_rejected" in l]
        self.check(all("level=info" in l for l in lvl), "logged at level info", lvl[:1])

    def test_rate_limit(self):
        run = "h-flood"
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "PUT run")
        sent = 120
        t0 = time.monotonic()
        for i in range(sent):
            r = self.c.report(run, report(i, 7))  # worker 7 of 2
            if r.status != 409:
                self.check(False, "every flood report is refused", r.short())
                break
        elapsed = time.monotonic() - t0
        # The limiter's windows are whole seconds of the daemon's clock: the
        # sending spans at most ceil(elapsed) + 1 of them.
        bound = LINES_PER_SECOND * (math.ceil(elapsed) + 1)
        lines = nsd.poll(lambda: rejected_lines(self.daemon, run), limit=5)
        self.check(0 < len(lines) <= bound, f"at most {LINES_PER_SECOND} lines per second per run",
                   f"{len(lines)} lines for {sent} reports in {elapsed:.2f}s (bound {bound})")
        if sent > bound:
            self.check(len(lines) < sent, "the flood was rate-limited", f"{len(lines)} lines")
        # After a new window begins, the next refusal is logged with the count withheld.
        last_line_at = time.monotonic()
        while time.monotonic() - last_line_at < 1.1:  # the limiter's window is one second
            time.sleep(0.05)
        self.check_status(self.c.report(run, report(999, 7)), 409, "one more after the window")
        final = nsd.poll(lambda: len(rejected_lines(self.daemon, run)) > len(lines)
                         and rejected_lines(self.daemon, run))
        total = len(final) + sum(int(x.get("withheld", "0")) for x in final) if final else 0
        self.check_eq(total, sent + 1, "lines plus withheld counts add up to the reports refused")
        st = self.status(run)
        self.check_eq(st["health"]["rejections"], {"worker_out_of_range": sent + 1},
                      "every refusal counted, logged or not")

    def test_reads_while_reporting(self):
        """Four workers report 15 steps each while a reader polls /metrics,
        /drift, /history and the run status: every read answers 200 and the
        final counts are exact (run under make tsan, this is the race test)."""
        run = "h-conc"
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 4}).status == 201, "PUT run")
        steps, stop = 15, []

        def worker(w):
            cl = self.client()
            for step in range(steps):
                r = cl.report(run, report(step, w, mean_bias=0.1 * step))
                if r.status != 202:
                    return f"worker {w} step {step}: {r.short()}"
            return None

        def reader():
            cl = self.client()
            bad = []
            while not stop:
                for path in ("/metrics", f"/v1/runs/{run}/drift", f"/v1/runs/{run}/history?layer=bn1",
                             f"/v1/runs/{run}"):
                    r = cl.get(path, validate=path != "/metrics")
                    if r.status not in (200, 404) or (r.status == 404 and "history" not in path):
                        bad.append(f"{path}: {r.short()}")
            return bad

        import threading
        out = {}
        t = threading.Thread(target=lambda: out.update(bad=reader()), daemon=True)
        t.start()
        res, errs = nsd.parallel([lambda w=w: worker(w) for w in range(4)])
        stop.append(True)
        t.join(30)  # a bound; the reader ends after its current round
        self.check(not any(res) and not any(errs), "every report accepted", f"{res} {errs}")
        self.check(not t.is_alive() and out.get("bad") == [], "every read answered", f"{out.get('bad')}")
        health = self.status(run)["health"]
        self.check_eq((health["steps_applied"], health["pending"]), (steps * len(LAYERS), 0),
                      "all steps applied, none pending")


if __name__ == "__main__":
    nsd.main()
