"""test_api_errors.py - every error status of the report path, with state unchanged.

For each rejected request: the status and error code, the message naming
the offending field, GET run and every statistics source byte-identical
before and after, and the /metrics rejection counter of that reason up by
exactly one. Covers 400 (malformed, wrong types, missing fields), 409
(channel mismatch, stale, duplicate, worker out of range, update
disagreement), 413 (--max-body), 415, 422 (negative, overflow, NaN, inf),
429 (--max-pending-steps), 400/404 on statistics queries, and that one NaN
batch never reaches the running statistics.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
from test_api_runs import parse_metrics, rejection_counters  # noqa: E402

L1 = [0.25, -0.5, 1.0, 2.0]
V1 = [1.0, 0.5, 2.0, 0.125]
L2 = [0.75, 0.125]
V2 = [0.25, 4.0]


def rep(step, worker, **kw):
    r = {"step": step, "worker": worker,
         "layers": {"l1": {"count": 8, "mean": list(L1), "var": list(V1)},
                    "l2": {"count": 8, "mean": list(L2), "var": list(V2)}}}
    r.update(kw)
    return r


def with_layer(step, worker, **fields):
    r = rep(step, worker)
    r["layers"]["l1"].update(fields)
    return r


def without(d, *path):
    d = json.loads(json.dumps(d))
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    del cur[path[-1]]
    return d


class ErrorCase(nsd.Case):

    def rejections(self):
        r = self.c.get("/metrics", validate=False)
        return rejection_counters(parse_metrics(r.body.decode())[0]) if r.status == 200 else {}

    def base_run(self, world=2):
        """A run with layers l1 (4 channels) and l2 (2) and step 1 applied."""
        run = nsd.run_name("err")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": world}).status == 201, "create run")
        for w in range(world):
            self.require(self.c.report(run, rep(1, w)).status == 202, f"step 1 worker {w} accepted")
        return run

    def reject(self, run, body, status, code, desc, field=None, endpoint="batches", content_type=None,
               count_metric=True):
        before = self.snapshot(run)
        m0 = self.rejections() if count_metric else None
        kw = {}
        if content_type:
            kw["content_type"] = content_type
        elif isinstance(body, (bytes, str)):
            kw["content_type"] = "application/json"
        r = self.c.post(f"/v1/runs/{run}/{endpoint}", body, timeout=10, **kw)
        self.check_status(r, status, f"{desc} ({endpoint})", code=code)
        if field is not None:
            msg = r.error_message() or ""
            fields = field if isinstance(field, tuple) else (field,)
            self.check(any(f in msg for f in fields), f"{desc}: message names {' or '.join(fields)}",
                       f"message {msg!r}")
        self.check_unchanged(before, run, desc)
        if count_metric and isinstance(code, str):
            m1 = self.rejections()
            self.check_eq(m1.get(code, 0) - m0.get(code, 0), 1,
                          f"{desc}: /metrics rejections reason={code} +1")
        return r


class Errors(ErrorCase):

    def test_400_malformed_and_types(self):
        run = self.base_run()
        raw = [(b'{"step": 2,', "truncated JSON"), (b"[]", "a JSON array"), (b"", "an empty body"),
               (b"null", "JSON null"), (b'{"step": 2, "worker": 0, "layers": {}} trailing', "trailing garbage"),
               (b'{"step": 2, "step": 3, "worker": 0, "layers": {"l1": {"count": 0}}}', "a duplicate key"),
               (b'{"step": 2, "worker": 0, "layers": {"l1": {"count": 8, "mean": [NaN, 0, 0, 0], '
                b'"var": [1, 1, 1, 1]}}}', "a NaN literal")]
        for body, what in raw:  # JSON has no NaN literal: malformed (proto/openapi.yaml)
            self.reject(run, body, 400, "bad_request", f"body is {what}")
        cases = [
            (rep("2", 0), "step"), (rep(-1, 0), "step"), (rep(2.0, 0), "step"), (rep(2, 0, domain="*"), "domain"), (rep(2.5, 0), "step"), (rep(2 ** 64, 0), "step"),
            (without(rep(2, 0), "step"), "step"),
            (rep(2, "0"), "worker"), (rep(2, -1), "worker"), (rep(2, 0.5), "worker"),
            (without(rep(2, 0), "worker"), "worker"),
            (without(rep(2, 0), "layers"), "layers"), (rep(2, 0, layers=[]), "layers"),
            (rep(2, 0, layers={}), "layers"), (rep(2, 0, layers={"l1": [1, 2]}), "layers.l1"),
            (with_layer(2, 0, count="8"), "layers.l1.count"), (with_layer(2, 0, count=-1), "layers.l1.count"),
            (with_layer(2, 0, count=2.5), "layers.l1.count"), (with_layer(2, 0, count=2 ** 64), "layers.l1.count"),
            (without(rep(2, 0), "layers", "l1", "count"), "layers.l1.count"),
            (without(rep(2, 0), "layers", "l1", "mean"), "layers.l1.mean"),
            (without(rep(2, 0), "layers", "l1", "var"), "layers.l1.var"),
            (with_layer(2, 0, mean=L1[:3]), ("layers.l1.mean", "layers.l1.var")),
            (with_layer(2, 0, var=V1 + [1.0]), ("layers.l1.mean", "layers.l1.var")),
            (with_layer(2, 0, mean=["a", 0, 0, 0]), "layers.l1.mean"),
            (with_layer(2, 0, mean=0.5), "layers.l1.mean"), (with_layer(2, 0, var={"0": 1}), "layers.l1.var"),
            (with_layer(2, 0, lr=0.1), "lr"),
            (rep(2, 0, layers={"bad layer": {"count": 0}}), "layers"),
            (rep(2, 0, layers={"x" * 129: {"count": 0}}), "layers"),
            (rep(2, 0, domain=5), "domain"), (rep(2, 0, domain="bad name"), "domain"), (rep(2, 0, domain=""), "domain"),
            (rep(2, 0, unbiased="no"), "unbiased"), (rep(2, 0, update=["bogus"]), "update"),
            (rep(2, 0, update="ema"), "update"), (rep(2, 0, scope="world"), "scope"),
            (rep(2, 0, world_size=0), "world_size"), (rep(2, 0, colour="red"), "colour"),
        ]
        for body, field in cases:
            desc = f"400 for {json.dumps(body)[:90]}"
            self.reject(run, body, 400, "bad_request", desc, field=field)
        # the message form of proto/openapi.yaml: "<path>: expected N values, got M"
        r = self.reject(run, with_layer(2, 0, mean=L1[:3]), 400, "bad_request", "mean with 3 of 4 values")
        self.check(r.error_message() in ("layers.l1.mean: expected 4 values, got 3",
                                         "layers.l1.var: expected 3 values, got 4"),
                   "message text for 3 means next to 4 variances", f"{r.error_message()!r}")
        r = self.reject(run, with_layer(2, 0, mean=L1[:3], var=V1[:3]), 409, "channel_mismatch",
                        "3 means and 3 variances for the 4-channel l1")
        msg = r.error_message() or ""
        self.check(msg.startswith("layers.l1") and "4" in msg and "3" in msg,
                   "message for 3 channels where the layer has 4 names layers.l1 and both counts", repr(msg))
        # the same on /sync answers at once
        for body, field in cases[:3]:
            self.reject(run, body, 400, "bad_request", f"/sync 400 for {json.dumps(body)[:60]}", field=field,
                        endpoint="sync")

    def test_409_conflicts(self):
        run = self.base_run()
        r = self.reject(run, with_layer(2, 0, mean=L1[:3], var=V1[:3]), 409, "channel_mismatch",
                        "l1 with 3 channels, the layer has 4", field="l1")
        self.reject(run, rep(2, 0, layers={"l2": {"count": 4, "mean": [0.0] * 3, "var": [1.0] * 3},
                                           "l3": {"count": 4, "mean": [0.0], "var": [1.0]}}),
                    409, "channel_mismatch", "l2 mismatched next to a new valid layer l3", field="l2")
        self.reject(run, rep(1, 0), 409, "stale_step", "worker 0 re-reports the finalized step 1")
        self.reject(run, rep(1, 1), 409, "stale_step", "worker 1 re-reports the finalized step 1", endpoint="sync")
        self.reject(run, rep(2, 2), 409, "worker_out_of_range", "worker 2 with world_size 2", field="worker")
        self.reject(run, rep(2, 99), 409, "worker_out_of_range", "worker 99 with world_size 2", endpoint="sync")
        self.check_status(self.c.report(run, rep(2, 0)), 202, "worker 0 reports step 2 (pending)")
        self.reject(run, rep(2, 0), 409, "duplicate_report", "worker 0 reports step 2 again")
        self.reject(run, rep(2, 0), 409, "duplicate_report", "worker 0 reports step 2 again", endpoint="sync")
        self.check_status(self.c.report(run, rep(5, 0)), 202, "worker 0 reports step 5 (pending)")
        self.reject(run, rep(4, 0), 409, "stale_step", "worker 0 goes back from step 5 to 4")
        # update disagreement within a step
        self.check_status(self.c.report(run, rep(7, 0, update=["ema"])), 202, "worker 0 step 7 update [ema]")
        self.reject(run, rep(7, 1, update=["precise"]), 409, "conflict", "worker 1 step 7 update [precise]",
                    field="update")
        self.reject(run, rep(7, 1), 409, "conflict", "worker 1 step 7 update default (both)")
        self.check_status(self.c.report(run, rep(7, 1, update=["ema"])), 202, "worker 1 step 7 update [ema] agrees")
        # steps 2 and 5 still wait for worker 1; a world_size change applies to new steps only
        st = self.c.get(f"/v1/runs/{run}").json().get("status", {})
        pend = sorted({(p.get("step"), tuple(p.get("waiting_for", []))) for p in st.get("pending", [])})
        self.check_eq(pend, [(2, (1,)), (5, (1,))], "pending steps 2 and 5 wait for worker 1")

    def test_415_media_type(self):
        run = self.base_run()
        body = json.dumps(rep(2, 0)).encode()
        for ct in ("text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data"):
            self.reject(run, body, 415, "unsupported_media_type", f"report as {ct}", content_type=ct)
        before = self.snapshot(run)
        r = self.c.put(f"/v1/runs/{run}", b'{"world_size": 3}', content_type="text/plain")
        self.check_status(r, 415, "PUT run as text/plain", code="unsupported_media_type")
        self.check_unchanged(before, run, "PUT run as text/plain")

    def test_422_values_and_nan_never_poisons(self):
        run = self.base_run()
        cases = [(with_layer(2, 0, var=[1.0, -0.5, 1.0, 1.0]), "layers.l1.var", "negative variance"),
                 (with_layer(2, 0, var=[1.0, 1.0, 1.0, -1e-30]), "layers.l1.var", "tiny negative variance"),
                 (with_layer(2, 0, mean=[1e39, 0.0, 0.0, 0.0]), "layers.l1.mean", "mean 1e39 overflows float32"),
                 (with_layer(2, 0, var=[1.0, 1e39, 1.0, 1.0]), "layers.l1.var", "var 1e39 overflows float32"),
                 (with_layer(2, 0, mean=[-1e300, 0.0, 0.0, 0.0]), "layers.l1.mean", "mean -1e300")]
        for body, field, what in cases:
            self.reject(run, body, 422, "bad_value", what, field=field)
        # l1 valid, l2 negative: nothing of the body is applied
        bad = rep(2, 0)
        bad["layers"]["l2"]["var"] = [0.5, -2.0]
        self.reject(run, bad, 422, "bad_value", "valid l1 next to negative l2 var", field="layers.l2.var")
        # NaN and inf can only travel in safetensors: F32 bit patterns
        for val, what in ((float("nan"), "NaN mean"), (float("inf"), "+inf mean"), (float("-inf"), "-inf mean")):
            r = rep(2, 0)
            r["layers"]["l1"]["mean"] = [0.25, val, 1.0, 2.0]
            self.reject(run, nsd.report_to_safetensors(r), 422, "bad_value", f"safetensors with {what}",
                        field="l1", content_type="application/safetensors")
        r = rep(2, 0)
        r["layers"]["l1"]["var"] = [float("nan")] * 4
        self.reject(run, nsd.report_to_safetensors(r), 422, "bad_value", "safetensors with NaN variances",
                    field="l1", content_type="application/safetensors", endpoint="sync")
        # after all that, step 2 is still open for worker 0 and EMA matches the clean reference
        for w in (0, 1):
            self.check_status(self.c.report(run, rep(2, w)), 202, f"clean step 2 worker {w} accepted")
        e1, e2 = nsd.Ema(4), nsd.Ema(2)
        for _ in (1, 2):
            e1.apply(16, L1, V1)
            e2.apply(16, L2, V2)
        b = self.c.stats(run).json()["layers"]
        self.check_close(b["l1"]["running_mean"], e1.mean, "l1 EMA as if the rejected batches never came")
        self.check_close(b["l1"]["running_var"], e1.var, "l1 running_var unpoisoned")
        self.check_close(b["l2"]["running_var"], e2.var, "l2 running_var unpoisoned")
        self.check_eq([b["l1"]["num_batches_tracked"], b["l2"]["num_batches_tracked"]], [2, 2], "two steps applied")

    def test_stats_queries(self):
        run = self.base_run()
        for q in ("source=bogus", "format=xml", "variance=weird", "source=precise&variance=unbiasedx",
                  "source=ema&variance=biased", "domain=bad$name", "mixture=photo", "mixture=a:-1",
                  "mixture=a:x", "mixture=a:0", "mixture=a:0.5,a:0.5", "mixture=:1", "layers=bad$name",
                  "colour=red", "source=", "format=", "domain=default&mixture=default:1",
                  "source=last&mixture=default:1"):
            before = self.snapshot(run)
            r = self.c.get(f"/v1/runs/{run}/stats?{q}")
            self.check_status(r, 400, f"GET stats?{q}", code="bad_request")
            self.check_unchanged(before, run, f"stats?{q}")
        for q in ("source=precise&variance=unbiased", "source=precise&variance=biased", "domain=*",
                  "domain=default", "mixture=default:2", "layers=l1,l2", "format=json", "source=last",
                  "source=last&domain=default"):
            self.check_status(self.c.get(f"/v1/runs/{run}/stats?{q}"), 200, f"GET stats?{q} (valid)")
        for q in ("layers=nosuch", "domain=nosuch", "mixture=default:1,nosuch:1",
                  "source=last&domain=nosuch"):
            r = self.c.get(f"/v1/runs/{run}/stats?{q}")
            self.check_status(r, 404, f"GET stats?{q}", code="not_found")
        self.check_status(self.c.stats("no-such-run"), 404, "GET stats of an unknown run", code="not_found")
        self.check_status(self.c.get("/v1/runs/no-such-run"), 404, "GET an unknown run", code="not_found")


class BodyLimit(ErrorCase):
    DAEMON_ARGS = ("--max-body", "4096")

    def test_413_body_over_max_body(self):
        run = self.base_run()
        big = rep(2, 0, layers={"wide": {"count": 4, "mean": [0.123456] * 600, "var": [1.5] * 600}})
        blen = len(json.dumps(big))
        self.check(blen > 4096, f"the big body has {blen} bytes > 4096")
        self.reject(run, big, 413, "body_too_large", f"{blen}-byte JSON report, --max-body 4096")
        st = rep(2, 0, layers={"wide": {"count": 4, "mean": [0.5] * 1100, "var": [1.5] * 1100}})
        stb = nsd.report_to_safetensors(st)
        self.check(len(stb) > 4096, f"the big safetensors body has {len(stb)} bytes")
        self.reject(run, stb, 413, "body_too_large", "big safetensors report", content_type="application/safetensors")
        before = self.snapshot(run)
        r = self.c.put(f"/v1/runs/{run}", b'{"world_size": 3' + b" " * 5000 + b"}", content_type="application/json")
        self.check_status(r, 413, "5 KB PUT body", code="body_too_large")
        self.check_unchanged(before, run, "5 KB PUT body")
        small = rep(2, 0, layers={"wide": {"count": 4, "mean": [0.5] * 100, "var": [1.5] * 100}})
        self.check(len(json.dumps(small)) < 4096, "a report under the limit")
        self.check_status(self.c.report(run, small), 202, "a report under --max-body is accepted")
        self.check_status(self.c.get("/livez"), 200, "still serving after 413s")


class PendingLimit(ErrorCase):
    DAEMON_ARGS = ("--max-pending-steps", "2")

    def test_429_max_pending_steps(self):
        run = nsd.run_name("pend")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create world 2")
        for s in (1, 2):
            self.check_status(self.c.report(run, rep(s, 0)), 202, f"worker 0 step {s} (pending)")
        self.reject(run, rep(3, 0), 429, "too_many_pending", "a third pending step with --max-pending-steps 2")
        self.reject(run, rep(3, 1), 429, "too_many_pending", "a third pending step from worker 1", endpoint="sync")
        self.check_status(self.c.report(run, rep(1, 1)), 202, "worker 1 completes step 1")
        self.check_status(self.c.report(run, rep(3, 0)), 202, "now step 3 fits")
        self.reject(run, rep(4, 0), 429, "too_many_pending", "step 4 while 2 and 3 are pending")
        b = self.c.stats(run).json()["layers"]
        self.check_eq(b["l1"]["num_batches_tracked"], 1, "only step 1 applied")


if __name__ == "__main__":
    nsd.main()
