"""test_api_overflow.py - arithmetic that cannot overflow, against a real daemon.

Counts whose step total would wrap (two workers at 2^63-1 were served as
count -2; with three the completing /sync got 400 and a step acknowledged
with 202s was discarded), means whose combination overflows float32 (3e38
and -3e38 were served as null), and checkpoint imports holding values no
run reaches (running_var 1e308 served as null, PreciseBN n 0 or 1 with
num_batches 3) are each refused with 422 bad_value naming the field, change
nothing (GET run and every source identical), and a valid step still works
afterwards. The references are computed here in Python, not by the daemon.
"""

import copy
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

BIG = 2 ** 63 - 1


def rep(step, worker, count, mean, var, **kw):
    return dict({"step": step, "worker": worker,
                 "layers": {"bn": {"count": count, "mean": list(mean), "var": list(var)}}}, **kw)


class Overflow(nsd.Case):

    def refused(self, r, field, desc):
        """422 bad_value whose message names 'field' first."""
        ok = self.check_status(r, 422, desc, code="bad_value")
        if ok:
            msg = r.error_message() or ""
            self.check(msg.startswith(field + ":"), f"{desc}: message names {field}", msg)

    def valid_step(self, run, step, ws, desc):
        """A complete step of ws workers (counts 3, means 1..ws, var 2); the
        completing report is a /sync whose answer is checked against a
        reference computed here."""
        counts, means = [3] * ws, [float(w + 1) for w in range(ws)]
        for w in range(ws - 1):
            self.check_status(self.c.report(run, rep(step, w, 3, [means[w]], [2.0])), 202,
                              f"{desc}: worker {w} of step {step}")
        r = self.c.report(run, rep(step, ws - 1, 3, [means[-1]], [2.0]), sync=True)
        if not self.check_status(r, 200, f"{desc}: completing /sync of step {step}"):
            return
        n = sum(counts)
        gm = sum(c * m for c, m in zip(counts, means)) / n
        gv = sum(c * (2.0 + (m - gm) ** 2) for c, m in zip(counts, means)) / n
        lay = r.json()["layers"]["bn"]
        self.check_eq(lay["count"], n, f"{desc}: /sync count")
        self.check_eq((nsd.f32(lay["mean"][0]), nsd.f32(lay["var"][0])), (nsd.f32(gm), nsd.f32(gv)),
                      f"{desc}: /sync mean, var")

    def test_count_two_workers(self):
        run = nsd.run_name("ovf2")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create")
        self.valid_step(run, 1, 2, "before")
        before = self.snapshot(run)
        for w in (0, 1):
            r = self.c.report(run, rep(2, w, BIG, [1.0], [1.0]))
            self.refused(r, "layers.bn.count", f"worker {w} count 2^63-1")
            self.check_unchanged(before, run, f"worker {w} count 2^63-1")
        r = self.c.report(run, rep(2, 0, 2 ** 32 + 1, [1.0], [1.0]))
        self.refused(r, "layers.bn.count", "count 2^32+1")
        self.check_unchanged(before, run, "count 2^32+1")
        self.valid_step(run, 2, 2, "after")
        r = self.c.stats(run, source="precise")
        self.check_eq(r.json()["layers"]["bn"]["num_samples"] if r.status == 200 else r.short(), 12,
                      "precise num_samples counts the two valid steps only")

    def test_count_three_workers_sync(self):
        run = nsd.run_name("ovf3")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 3}).status == 201, "create")
        before = self.snapshot(run)
        for w in (0, 1):
            self.refused(self.c.report(run, rep(1, w, BIG, [1.0], [1.0])), "layers.bn.count",
                         f"/batches worker {w} count 2^63-1")
        self.refused(self.c.report(run, rep(1, 2, BIG, [1.0], [1.0]), sync=True), "layers.bn.count",
                     "/sync worker 2 count 2^63-1")
        self.check_unchanged(before, run, "three arrivals of count 2^63-1")
        r = self.c.get(f"/v1/runs/{run}")
        self.check_eq(r.json()["status"]["pending"], [], "no pending step was left behind")
        # The largest counts accepted: the step's total is exact.
        for w in (0, 1):
            self.check_status(self.c.report(run, rep(1, w, 2 ** 32, [1.0], [1.0])), 202, f"worker {w} count 2^32")
        r = self.c.report(run, rep(1, 2, 2 ** 32, [1.0], [1.0]), sync=True)
        if self.check_status(r, 200, "completing /sync with counts 2^32"):
            self.check_eq(r.json()["layers"]["bn"]["count"], 3 * 2 ** 32, "/sync count is 3 * 2^32")
        self.valid_step(run, 2, 3, "after")

    def test_means_overflow(self):
        run = nsd.run_name("ovfm")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create")
        self.valid_step(run, 1, 2, "before")
        before = self.snapshot(run)
        self.refused(self.c.report(run, rep(2, 0, 4, [3e38], [1.0])), "layers.bn.mean[0]", "mean 3e38")
        self.refused(self.c.report(run, rep(2, 1, 4, [-3e38], [1.0]), sync=True), "layers.bn.mean[0]",
                     "mean -3e38 (/sync)")
        self.refused(self.c.report(run, rep(2, 1, 4, [1.0], [2e38])), "layers.bn.var[0]", "var 2e38")
        self.check_unchanged(before, run, "means ±3e38, var 2e38")
        # The extreme values still accepted combine to finite statistics.
        m, v = 2.0 ** 60, 2.0 ** 120
        self.check_status(self.c.report(run, rep(2, 0, 4, [m], [v])), 202, "mean 2^60, var 2^120")
        r = self.c.report(run, rep(2, 1, 4, [-m], [v]), sync=True)
        if self.check_status(r, 200, "mean -2^60, var 2^120 (/sync)"):
            lay = r.json()["layers"]["bn"]
            self.check_eq((nsd.f32(lay["mean"][0]), nsd.f32(lay["var"][0])), (0.0, nsd.f32(v + m * m)),
                          "/sync var is 2^121")
        for q in ({"source": "ema"}, {"source": "precise"}, {"source": "last"},
                  {"source": "precise", "variance": "biased"}):
            r = self.c.stats(run, **q)
            vals = []
            if r.status == 200:
                lay = r.json()["layers"]["bn"]
                vals = list(nsd.served(lay)[0]) + list(nsd.served(lay)[1])
            self.check(r.status == 200 and vals and all(isinstance(x, (int, float)) and math.isfinite(x) for x in vals),
                       f"stats {q}: every value finite", r.short())
        self.valid_step(run, 3, 2, "after")

    def test_checkpoint_import(self):
        run = nsd.run_name("ovfck")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create")
        for s in (1, 2, 3):
            self.valid_step(run, s, 2, "setup")
        r = self.c.get(f"/v1/runs/{run}/checkpoint")
        self.require(r.status == 200 and r.is_json(), "GET checkpoint", r.short())
        cp = r.json()
        dom = ("layers", "bn", "domains", "default")
        cases = [
            (dom + ("ema", "running_var"), [1e308], "layers.bn.domains.default.ema.running_var.0", "EMA running_var 1e308"),
            (("layers", "bn", "pooled", "running_var"), [1e308], "layers.bn.pooled.running_var.0",
             "pooled running_var 1e308"),
            (dom + ("ema", "running_mean"), [3e38], "layers.bn.domains.default.ema.running_mean.0",
             "running_mean 3e38"),
            (dom + ("precise", "m2"), [1e300], "layers.bn.domains.default.precise.m2.0", "PreciseBN m2 1e300"),
            (dom + ("last", "var"), [1e300], "layers.bn.domains.default.last.var.0", "last var 1e300"),
            (dom + ("ema", "num_batches_tracked"), BIG, "layers.bn.domains.default.ema.num_batches_tracked",
             "num_batches_tracked 2^63-1"),
        ]
        edits = []
        for path, value, field, what in cases:
            c = copy.deepcopy(cp)
            node = c
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
            edits.append((c, field, what))
        for n in (0, 1):
            c = copy.deepcopy(cp)
            c["layers"]["bn"]["domains"]["default"]["precise"].update(n=n, num_batches=3)
            edits.append((c, "layers.bn.domains.default.precise.num_batches", f"PreciseBN n {n} num_batches 3"))
        fresh = nsd.run_name("ovfnew")
        for body, field, what in edits:
            before = self.snapshot(run)
            text = json.dumps(body).encode()
            r = self.c.put(f"/v1/runs/{run}/checkpoint", text, content_type="application/json")
            self.refused(r, field, f"import with {what}")
            self.check_unchanged(before, run, f"import with {what}")
            r = self.c.put(f"/v1/runs/{fresh}/checkpoint", text, content_type="application/json")
            self.refused(r, field, f"import of {what} into a new run")
            self.check_status(self.c.get(f"/v1/runs/{fresh}"), 404, f"{what}: no run created", code="not_found")
        # The untouched export imports, and the run goes on.
        r = self.c.put(f"/v1/runs/{run}/checkpoint", r_body(cp), content_type="application/json")
        self.check_status(r, 200, "import of the unedited export")
        self.valid_step(run, 4, 2, "after")


def r_body(cp):
    return json.dumps(cp).encode()


if __name__ == "__main__":
    nsd.main()
