"""test_api_grad.py - POST /v1/runs/{run}/grad (gradient sums for SyncBatchNorm's
backward), the `missing` workers of incomplete /sync answers, and
GET /stats?source=last&domain=NAME.

Gradient sums are compared bit for bit with an independent Python
computation: per channel, in worker order 0..W-1, in double
(s = x_0; s += x_1; ...), with float32 inputs widened first and, for F32
answers, the double sum rounded once to float32 (numpy). Workers are threads
with their own keep-alive connections; where the arrival order matters, each
worker starts only after the daemon logged the previous one's arrival
(event=grad_accepted), a bounded wait that only matters on failure. Timeouts
use a small sync_timeout_ms with a worker that never sends, so they cannot
be flaky. Per-domain last statistics are compared with the exact-fraction
combination (nsd.combine) of what each domain's workers sent.
"""

import os
import re
import signal
import struct
import sys
import threading

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

ST = "application/safetensors"
WAIT_S = 20.0  # bound on any wait that only matters when something is broken


# ---------------------------------------------------------------- references


def f32(x):
    return float(np.float32(x))


def ref_sum(arrays):
    """Per element: ((a_0 + a_1) + a_2) + ... in double (Python floats)."""
    out = list(arrays[0])
    for a in arrays[1:]:
        out = [s + x for s, x in zip(out, a)]
    return out


def bits64(values):
    return struct.pack(f"<{len(values)}d", *values)


def bits32(values):
    return np.asarray(values, dtype=np.float64).astype(np.float32).tobytes()


def tricky_values(rng, c, w, world):
    """Channel values whose double sum depends on the order of addition
    (1 + 1e16 - 1e16 is 0 in one order and 1 in another), plus random ones of
    mixed magnitude."""
    order_sensitive = [1.0, 1e16, -1e16, 3.0, -2.5e15][w % 5] if world >= 3 else float(w + 1)
    rest = [float(v) for v in rng.standard_normal(c - 1) * 10.0 ** rng.integers(-8, 8, c - 1)]
    return [order_sensitive] + rest


def grad_body(step, worker, layers):
    return {"step": step, "worker": worker,
            "layers": {n: {"sum_dy": dy, "sum_dy_xmu": xmu} for n, (dy, xmu) in layers.items()}}


def grad_st(step, worker, layers, dtype="F32", meta=None):
    tensors = {}
    for n, (dy, xmu) in layers.items():
        tensors[f"{n}.sum_dy"] = (dtype, [len(dy)], dy)
        tensors[f"{n}.sum_dy_xmu"] = (dtype, [len(xmu)], xmu)
    md = {"step": str(step), "worker": str(worker)}
    md.update(meta or {})
    return nsd.st_write(tensors, md)


class Grad(nsd.Case):

    # ---- helpers
    def new_run(self, world, timeout_ms=20000, prefix="grad"):
        run = nsd.run_name(prefix)
        r = self.c.put(f"/v1/runs/{run}", {"world_size": world, "sync_timeout_ms": timeout_ms})
        self.check_status(r, 201, f"PUT run {run} world_size {world}", must=True)
        return run

    def post_grad(self, client, run, step, worker, layers, fmt="json", dtype="F32", accept=None,
                  timeout=WAIT_S):
        headers = {"Accept": accept} if accept else None
        if fmt == "json":
            return client.post(f"/v1/runs/{run}/grad", grad_body(step, worker, layers),
                               headers=headers, timeout=timeout)
        return client.post(f"/v1/runs/{run}/grad", grad_st(step, worker, layers, dtype),
                           content_type=ST, headers=headers, timeout=timeout)

    def arrived(self, run, step, worker):
        pat = f"event=grad_accepted run={run} step={step} worker={worker}"
        with self.daemon._lock:
            return any(pat in line for line in self.daemon.lines)

    def start(self, fn):
        """Run fn() in a thread; returns (thread, box) with box[0] its result
        or box[1] its exception."""
        box = [None, None]

        def go():
            try:
                box[0] = fn()
            except BaseException as e:  # reported by finish()
                box[1] = e

        t = threading.Thread(target=go, daemon=True)
        t.start()
        return t, box

    def finish(self, t, box, desc):
        t.join(WAIT_S + 10)
        self.require(not t.is_alive(), f"{desc}: answered within the bound")
        self.require(box[1] is None, f"{desc}: no client error", repr(box[1]))
        return box[0]

    def round_in_order(self, run, step, per_worker, order, fmt="json", dtype="F32", accept=None):
        """Each worker (in 'order') sends its layers once the previous one's
        arrival is logged; returns the responses by worker."""
        running = {}
        for i, w in enumerate(order):
            cl = self.client(timeout=WAIT_S + 5)
            running[w] = self.start(lambda cl=cl, w=w: self.post_grad(
                cl, run, step, w, per_worker[w], fmt, dtype, accept))
            if i + 1 < len(order):
                self.require(nsd.poll(lambda w=w: self.arrived(run, step, w) or not running[w][0].is_alive(),
                                      WAIT_S), f"worker {w} of step {step} arrived")
        return {w: self.finish(*running[w], f"step {step} worker {w}") for w in order}

    def expected(self, per_worker, dtype_in):
        """{layer: (sum_dy, sum_dy_xmu)} in double, inputs rounded as sent."""
        out = {}
        for name in per_worker[0]:
            parts = []
            for k in (0, 1):
                arrs = [per_worker[w][name][k] for w in range(len(per_worker))]
                if dtype_in == "F32":
                    arrs = [[f32(v) for v in a] for a in arrs]
                parts.append(ref_sum(arrs))
            out[name] = tuple(parts)
        return out

    def check_answer(self, r, step, world, exp, answer_dtype, desc):
        """Bitwise comparison of a 200 answer with the reference sums."""
        if not self.check_status(r, 200, desc):
            return
        if r.content_type == ST:
            tensors, meta = nsd.st_read(r.body)
            self.check_eq((meta.get("step"), meta.get("workers")), (str(step), str(world)),
                          f"{desc}: metadata step and workers")
            for name, (dy, xmu) in exp.items():
                for part, ref in (("sum_dy", dy), ("sum_dy_xmu", xmu)):
                    got = tensors.get(f"{name}.{part}")
                    ok = got is not None and got[0] == answer_dtype and got[1] == [len(ref)]
                    want = bits64(ref) if answer_dtype == "F64" else bits32(ref)
                    self.check(ok and got[2].tobytes() == want,
                               f"{desc}: {name}.{part} {answer_dtype} bit-identical to worker-order sum",
                               f"got {got and got[0]} {got and list(got[2])[:4]}, ref {ref[:4]}")
            self.check_eq(len(tensors), 2 * len(exp), f"{desc}: one tensor pair per layer")
            return
        b = r.json()
        self.check_eq((b.get("step"), b.get("workers")), (step, world), f"{desc}: step and workers")
        self.check_eq(sorted(b.get("layers", {})), sorted(exp), f"{desc}: layers answered")
        for name, (dy, xmu) in exp.items():
            got = b.get("layers", {}).get(name, {})
            for part, ref in (("sum_dy", dy), ("sum_dy_xmu", xmu)):
                vals = [float(v) for v in got.get(part, [])]
                self.check(len(vals) == len(ref) and bits64(vals) == bits64(ref),
                           f"{desc}: {name}.{part} JSON round-trips the worker-order double sum",
                           f"got {vals[:4]}, ref {ref[:4]}")

    def valid_round(self, run, step, world, desc, layers=None, fmt="json", dtype="F32"):
        """A round every worker sends; proves the daemon state allows it and
        sums are right."""
        rng = np.random.default_rng(step * 7919 + world)
        layers = layers or {"bn1": 3}
        per_worker = [{n: (tricky_values(rng, c, w, world), tricky_values(rng, c, w + 1, world))
                       for n, c in layers.items()} for w in range(world)]
        res = self.round_in_order(run, step, per_worker, list(range(world))[::-1], fmt, dtype)
        exp = self.expected(per_worker, dtype if fmt != "json" else "F64")
        ans_dtype = "F64" if fmt == "json" or dtype == "F64" else "F32"
        for w in range(world):
            self.check_answer(res[w], step, world, exp, ans_dtype, f"{desc}: worker {w}")

    # ---- tests
    def test_sums_bitwise_scrambled(self):
        world = 3
        run = self.new_run(world)
        rng = np.random.default_rng(12)
        layers = {"layer1.0.bn1": 6, "features.0.bn": 1}
        # 1e16 and -1e16 arrive first, so summing in arrival order gives 1 where
        # worker order gives (1 + 1e16) - 1e16 = 0
        orders = [[1, 2, 0], [2, 1, 0]]
        cases = [("json", "F64", None), ("safetensors", "F32", None), ("safetensors", "F64", None),
                 ("safetensors", "F32", "application/json"), ("json", "F64", ST)]
        for step, ((fmt, dtype, accept), order) in enumerate(zip(cases, orders * 3), start=1):
            per_worker = [{n: (tricky_values(rng, c, w, world), tricky_values(rng, c, w + 2, world))
                           for n, c in layers.items()} for w in range(world)]
            res = self.round_in_order(run, step, per_worker, order, fmt, dtype, accept)
            exp = self.expected(per_worker, "F64" if fmt == "json" else dtype)
            ans = "F64" if fmt == "json" or dtype == "F64" else "F32"
            desc = f"step {step} {fmt} {dtype} accept={accept} arrivals {order}"
            for w in range(world):
                self.check_answer(res[w], step, world, exp, ans, f"{desc}: worker {w}")
            # the reference really depends on order: arrival order gives other bits
            arr = ref_sum([[per_worker[w]["layer1.0.bn1"][0][0]] for w in order])
            self.check(arr != exp["layer1.0.bn1"][0][:1], f"{desc}: arrival-order sum differs "
                       "(the check can fail)", f"{arr} vs {exp['layer1.0.bn1'][0][:1]}")
        # statistics untouched: no layer, no pending step, no EMA
        st = self.c.get(f"/v1/runs/{run}").json()["status"]
        self.check_eq((st["layers"], st["pending"]), ({}, []), "grad never touches statistics state")
        self.check_eq(self.c.stats(run).json()["layers"], {}, "no EMA from gradient sums")

    def test_same_step_as_sync(self):
        """/sync and /grad of the same step number are independent."""
        world = 2
        run = self.new_run(world)
        reps = [{"step": 5, "worker": w, "layers": {"bn": {"count": 4, "mean": [0.5 * w, 1.0],
                                                            "var": [1.0, 2.0]}}} for w in range(world)]
        cls = [self.client(timeout=WAIT_S) for _ in range(world)]
        res, errs = nsd.parallel([lambda c=c, r=r: c.report(run, r, sync=True) for c, r in zip(cls, reps)],
                                 limit=WAIT_S)
        self.check(all(e is None and r.status == 200 for e, r in zip(errs, res)), "/sync of step 5")
        self.valid_round(run, 5, world, "grad step 5 after /sync step 5", layers={"bn": 2})
        # the statistics layer fixed 2 channels: a gradient of 3 channels conflicts
        r = self.post_grad(self.c, run, 6, 0, {"bn": ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])})
        self.check_status(r, 409, "grad with 3 channels on a 2-channel statistics layer",
                          code="channel_mismatch")
        self.check("layers.bn" in (r.error_message() or ""), "message names layers.bn", r.short())
        n = self.c.stats(run).json()["layers"]["bn"]["num_batches_tracked"]
        self.check_eq(n, 1, "EMA saw the /sync step only")

    def test_validation_changes_nothing(self):
        world = 3
        run = self.new_run(world)
        good = {"bn1": ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])}
        step = 1
        # Worker 0 waits on step 1 of bn1; the bad requests below come from worker 1.
        c0 = self.client(timeout=WAIT_S + 5)
        t0 = self.start(lambda: self.post_grad(c0, run, step, 0, good))
        self.require(nsd.poll(lambda: self.arrived(run, step, 0), WAIT_S), "worker 0 waiting on step 1")

        def bad(body, status, code, field, desc, ctype=None):
            r = self.c.post(f"/v1/runs/{run}/grad", body, content_type=ctype)
            self.check_status(r, status, desc, code=code)
            msg = r.error_message() or ""
            self.check(msg.startswith(field), f"{desc}: message names {field}", msg)

        two = {"bn1": ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), "bn2": ([1.0], [2.0])}
        bad({"step": 1, "worker": 3, "layers": grad_body(1, 3, good)["layers"]}, 409,
            "worker_out_of_range", "worker", "worker 3 of world_size 3")
        bad({"step": -1, "worker": 1, "layers": grad_body(1, 1, good)["layers"]}, 400,
            "bad_request", "step", "negative step")
        bad({"step": 1.5, "worker": 1, "layers": grad_body(1, 1, good)["layers"]}, 400,
            "bad_request", "step", "step 1.5")
        bad({"step": 1, "worker": 1, "layers": {"bn1": {"sum_dy": [1.0, 2.0, 3.0]}}}, 400,
            "bad_request", "layers.bn1.sum_dy_xmu", "missing sum_dy_xmu")
        bad({"step": 1, "worker": 1, "layers": {"bn1": {"sum_dy": [1.0, 2.0, 3.0],
                                                        "sum_dy_xmu": [1.0, 2.0]}}}, 400,
            "bad_request", "layers.bn1.sum_dy_xmu", "sum_dy_xmu shorter than sum_dy")
        bad({"step": 1, "worker": 1, "layers": {"bn1": {"sum_dy": [], "sum_dy_xmu": []}}}, 400,
            "bad_request", "layers.bn1.sum_dy", "empty arrays")
        bad({"step": 1, "worker": 1, "layers": {"bn1": {"sum_dy": [1, "x", 3],
                                                        "sum_dy_xmu": [1, 2, 3]}}}, 400,
            "bad_request", "layers.bn1.sum_dy[1]", "a string value")
        bad({"step": 1, "worker": 1, "domain": "a", "layers": grad_body(1, 1, good)["layers"]}, 400,
            "bad_request", "domain", "unknown field")
        bad({"step": 1, "worker": 1, "layers": {}}, 400, "bad_request", "layers", "no layers")
        bad({"step": 1, "worker": 1, "layers": {"bad$name": {"sum_dy": [1], "sum_dy_xmu": [1]}}},
            400, "bad_request", "layers", "invalid layer name")
        # bn2 is fine, bn1 has 2 channels where step 1's first arrival has 3
        bad(grad_body(1, 1, {"bn1": ([1.0, 2.0], [1.0, 2.0]), "bn2": ([1.0], [2.0])}), 409,
            "channel_mismatch", "layers.bn1", "2 channels where the first arrival had 3")
        # values: 422 naming the element (safetensors carries NaN and infinity)
        nan = {"bn1": ([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), "bn2": ([float("nan")], [2.0])}
        bad(grad_st(1, 1, nan, "F32"), 422, "bad_value", "layers.bn2.sum_dy[0]", "NaN (F32)", ST)
        inf = {"bn1": ([1.0, 2.0, 3.0], [4.0, float("inf"), 6.0]), "bn2": ([1.0], [2.0])}
        bad(grad_st(1, 1, inf, "F64"), 422, "bad_value", "layers.bn1.sum_dy_xmu[1]", "inf (F64)", ST)
        mixed = nsd.st_write({"bn1.sum_dy": ("F32", [3], [1, 2, 3]), "bn1.sum_dy_xmu": ("F64", [3], [1, 2, 3])},
                             {"step": "1", "worker": "1"})
        bad(mixed, 400, "bad_request", "layers.bn1.sum_dy_xmu", "F32 and F64 in one request", ST)
        i64 = nsd.st_write({"bn1.sum_dy": ("I64", [3], [1, 2, 3]), "bn1.sum_dy_xmu": ("I64", [3], [1, 2, 3])},
                           {"step": "1", "worker": "1"})
        bad(i64, 400, "bad_request", "layers.bn1.sum_dy", "I64 arrays", ST)
        bad(grad_st(1, 1, good, meta={"domain": "x"}), 400, "bad_request", "__metadata__.domain",
            "unknown metadata", ST)
        nostep = nsd.st_write({"bn1.sum_dy": ("F32", [1], [1]), "bn1.sum_dy_xmu": ("F32", [1], [1])},
                              {"worker": "1"})
        bad(nostep, 400, "bad_request", "__metadata__.step", "no step", ST)
        odd = nsd.st_write({"bn1.mean": ("F32", [1], [1])}, {"step": "1", "worker": "1"})
        bad(odd, 400, "bad_request", "safetensors", "a statistics tensor name", ST)
        # duplicate: worker 0 again for the pending step
        bad(grad_body(1, 0, two), 409, "duplicate_report", "layers.bn1", "worker 0 twice for step 1")
        r = self.post_grad(self.c, "no-such-run", 1, 0, good)
        self.check_status(r, 404, "grad to an unknown run", code="not_found")
        self.check_eq(self.c.get("/v1/runs/no-such-run").status, 404, "the unknown run was not created")

        # Nothing changed: workers 1 and 2 complete step 1 and every answer is right,
        # including bn2 which only rejected requests carried (a fresh step of it works).
        per_worker = [good, {"bn1": ([0.5, 1e16, -7.0], [1.0, 1.0, 1.0])},
                      {"bn1": ([0.25, -1e16, 7.0], [2.0, 2.0, 2.0])}]
        res = self.round_in_order(run, step, per_worker, [1, 2], "json")
        res[0] = self.finish(*t0, "worker 0 of step 1")
        exp = self.expected(per_worker, "F64")
        for w in range(world):
            self.check_answer(res[w], step, world, exp, "F64", f"after rejections: worker {w}")
        # stale: step 1 again, and step 0 below it
        for s in (1, 0):
            r = self.post_grad(self.c, run, s, 1, good)
            self.check_status(r, 409, f"worker 1 sends completed-or-lower step {s}", code="stale_step")
            self.check((r.error_message() or "").startswith("layers.bn1"), "stale message names the layer",
                       r.short())
        self.valid_round(run, 2, world, "a valid round after the stale requests",
                         layers={"bn1": 3, "bn2": 1}, fmt="safetensors", dtype="F32")

    def grad_metrics(self):
        text = self.c.get("/metrics").body.decode()
        return {name: int(re.search(rf"\n{name} (\d+)\n", text).group(1))
                for name in ("normstat_grad_steps_completed_total",
                             "normstat_grad_steps_timed_out_total",
                             "normstat_grad_pending_steps", "normstat_grad_waiters")}

    def test_timeout_names_missing_workers(self):
        world = 4
        before = self.grad_metrics()
        run = self.new_run(world, timeout_ms=300)
        layers = {"layer1.0.bn1": ([1.0, 2.0], [3.0, 4.0])}
        cls = [self.client(timeout=WAIT_S) for _ in range(2)]
        res, errs = nsd.parallel([lambda c=c, w=w: self.post_grad(c, run, 12, w, layers)
                                  for w, c in enumerate(cls)], limit=WAIT_S)
        want = ("layers.layer1.0.bn1 step 12: workers 2, 3 did not send their gradient sums "
                "within 300 ms")
        for w in range(2):
            self.require(errs[w] is None, f"worker {w} answered", repr(errs[w]))
            self.check_status(res[w], 504, f"worker {w} of step 12 with workers 2, 3 missing",
                              code="sync_timeout")
            self.check_eq(res[w].error_message(), want, f"worker {w}: timeout message")
        # one missing: singular message
        run1 = self.new_run(2, timeout_ms=300)
        r = self.post_grad(self.c, run1, 3, 1, layers, fmt="safetensors")
        self.check_status(r, 504, "worker 1 alone", code="sync_timeout")
        self.check_eq(r.error_message(), "layers.layer1.0.bn1 step 3: worker 0 did not send its "
                      "gradient sums within 300 ms", "singular timeout message")
        # discarded, never partial: the same step completes afresh with every worker
        self.valid_round(run, 12, world, "step 12 again after its timeout", layers={"layer1.0.bn1": 2})
        after = self.grad_metrics()
        self.check_eq(after["normstat_grad_steps_timed_out_total"]
                      - before["normstat_grad_steps_timed_out_total"], 2,
                      "/metrics counts the two timed-out gradient steps")
        self.check_eq(after["normstat_grad_steps_completed_total"]
                      - before["normstat_grad_steps_completed_total"], 1,
                      "/metrics counts the completed gradient step")
        self.check_eq((after["normstat_grad_pending_steps"], after["normstat_grad_waiters"]), (0, 0),
                      "no gradient step or waiter left pending")

    def test_delete_wakes_waiters(self):
        run = self.new_run(2)
        cl = self.client(timeout=WAIT_S + 5)
        t = self.start(lambda: self.post_grad(cl, run, 1, 0, {"bn": ([1.0], [2.0])}))
        self.require(nsd.poll(lambda: self.arrived(run, 1, 0), WAIT_S), "worker 0 waiting")
        self.check_eq(self.c.delete(f"/v1/runs/{run}").status, 204, "DELETE the run")
        r = self.finish(*t, "the waiter")
        self.check_status(r, 404, "waiter of a deleted run", code="not_found")

    def test_sync_lists_missing_workers(self):
        run = self.new_run(4, timeout_ms=300)
        cls = [self.client(timeout=WAIT_S) for _ in range(2)]
        lay = {"bn": {"count": 4, "mean": [1.0, 2.0], "var": [1.0, 1.0]}}
        fns = [lambda: cls[0].report(run, {"step": 1, "worker": 0, "layers": lay}, sync=True),
               lambda: cls[1].post(f"/v1/runs/{run}/sync",
                                   nsd.report_to_safetensors({"step": 1, "worker": 2, "layers": lay}),
                                   content_type=ST)]
        res, errs = nsd.parallel(fns, limit=WAIT_S)
        self.require(all(e is None for e in errs), "both /sync answered", repr(errs))
        self.check_status(res[0], 200, "partial /sync (JSON)")
        b = res[0].json()
        self.check_eq((b.get("complete"), b.get("workers"), b.get("missing")), (False, 2, [1, 3]),
                      "JSON answer: complete false, 2 workers, missing [1, 3]")
        self.check_status(res[1], 200, "partial /sync (safetensors)")
        _, meta = nsd.st_read(res[1].body)
        self.check_eq((meta.get("complete"), meta.get("missing")), ("false", "1,3"),
                      "safetensors answer: missing \"1,3\"")
        # a complete answer has no "missing"
        run2 = self.new_run(1)
        r = self.c.report(run2, {"step": 1, "worker": 0, "layers": lay}, sync=True)
        self.check(r.status == 200 and "missing" not in r.json() and r.json()["complete"] is True,
                   "complete /sync answer has no missing", r.short())


class PythonClient(nsd.Case):
    def test_client_grad(self):
        sys.path.insert(0, os.path.join(nsd.REPO, "client", "python"))
        import normstat

        run = nsd.run_name("client")
        self.c.put(f"/v1/runs/{run}", {"world_size": 2})
        url = f"http://127.0.0.1:{self.daemon.port}"
        x = [([0.1, 1e16, 3.0], [1.0, 2.0, -0.5]), ([0.2, -1e16, 1e-30], [0.25, 0.5, 0.75])]
        for step, (fmt, dtype) in enumerate((("safetensors", "float32"), ("safetensors", "float64"),
                                             ("json", "float32")), start=1):
            out = [None, None]

            def go(w, fmt=fmt, dtype=dtype, step=step):
                with normstat.Client(url, timeout=WAIT_S) as cl:
                    layers = {"bn": x[w]} if w == 0 else {"bn": {"sum_dy": x[w][0], "sum_dy_xmu": x[w][1]}}
                    out[w] = cl.grad(run, step, w, layers, fmt=fmt, dtype=dtype)

            _, errs = nsd.parallel([lambda: go(0), lambda: go(1)], limit=WAIT_S)
            self.require(errs == [None, None], f"Client.grad {fmt} {dtype} answered", repr(errs))
            f = (lambda v: f32(v)) if fmt == "safetensors" and dtype == "float32" else float
            for part, k in (("sum_dy", 0), ("sum_dy_xmu", 1)):
                ref = [f(a) + f(b) for a, b in zip(x[0][k], x[1][k])]
                if fmt == "safetensors" and dtype == "float32":
                    ref = [f32(v) for v in ref]
                for w in (0, 1):
                    got = out[w]["layers"]["bn"][part]
                    self.check(bits64(got) == bits64(ref) and out[w]["workers"] == 2
                               and out[w]["step"] == step,
                               f"Client.grad {fmt} {dtype} worker {w}: {part} exact", f"{got} vs {ref}")

    def test_client_sync_missing(self):
        """Client.sync gives a partial answer's missing workers as the same
        list of ranks, whatever the answer's encoding."""
        sys.path.insert(0, os.path.join(nsd.REPO, "client", "python"))
        import normstat

        url = f"http://127.0.0.1:{self.daemon.port}"
        for step, fmt in enumerate(("json", "safetensors"), start=1):
            run = nsd.run_name("client-missing")
            self.c.put(f"/v1/runs/{run}", {"world_size": 3, "sync_timeout_ms": 300})
            with normstat.Client(url, timeout=WAIT_S, fmt=fmt) as cl:
                ans = cl.sync(run, step, 1, {"bn": (4, [1.0, 2.0], [1.0, 1.0])})
            self.check_eq((ans.get("complete"), ans.get("missing")), (False, [0, 2]),
                          f"Client.sync ({fmt} answer): missing workers [0, 2]")


class LastPerDomain(nsd.Case):
    def test_last_of_a_domain(self):
        run = nsd.run_name("lastdom")
        self.c.put(f"/v1/runs/{run}", {"world_size": 3})
        rng = np.random.default_rng(5)
        sent = {}  # (step, worker) -> (domain, {layer: report})

        def send(step, worker, domain, layers):
            lay = {n: nsd.layer_report(nsd.gen_batch(rng, rng.integers(2, 9), c)) for n, c in layers.items()}
            sent[(step, worker)] = (domain, lay)
            r = self.c.report(run, {"step": step, "worker": worker, "domain": domain, "layers": lay})
            self.check_status(r, 202, f"report step {step} worker {worker} domain {domain}")

        send(1, 0, "a", {"l1": 3, "l2": 2})
        send(1, 1, "b", {"l1": 3, "l2": 2})
        send(1, 2, "a", {"l1": 3, "l2": 2})
        send(2, 0, "b", {"l1": 3})
        send(2, 1, "b", {"l1": 3})
        send(2, 2, "b", {"l1": 3})
        send(3, 0, "b", {"l2": 2})
        send(3, 1, "b", {"l2": 2})
        send(3, 2, "b", {"l2": 2})

        def ref(step, layer, domain):
            arr = [nsd.arrival_of(sent[(step, w)][1][layer]) for w in range(3)
                   if domain in ("*", sent[(step, w)][0])]
            return nsd.combine(arr)

        # (domain, layer) -> the step it must serve
        want = {("a", "l1"): 1, ("a", "l2"): 1, ("b", "l1"): 2, ("b", "l2"): 3,
                ("*", "l1"): 2, ("*", "l2"): 3}
        for dom in ("a", "b", "*"):
            for fmt in ("json", "safetensors"):
                r = self.c.stats(run, source="last", domain=dom, format=fmt)
                self.check_status(r, 200, f"last of domain {dom} ({fmt})")
                if r.status != 200:
                    continue
                if fmt == "json":
                    b = r.json()
                    self.check_eq(b.get("domain"), dom, f"domain {dom}: answer names it")
                    got = {n: (v["count"], v["mean"], v["var"], v["step"]) for n, v in b["layers"].items()}
                else:
                    tensors, meta = nsd.st_read(r.body)
                    got = {n: (int(tensors[f"{n}.count"][2]), list(tensors[f"{n}.mean"][2]),
                               list(tensors[f"{n}.var"][2]), int(meta[f"{n}.step"]))
                           for n in ("l1", "l2") if f"{n}.mean" in tensors}
                for layer in ("l1", "l2"):
                    step = want[(dom, layer)]
                    N, mean, var = ref(step, layer, dom)
                    g = got.get(layer)
                    if not self.check(g is not None, f"{dom}/{layer} ({fmt}) served"):
                        continue
                    self.check_eq((g[0], g[3]), (N, step), f"{dom}/{layer} ({fmt}): count and step {step}")
                    self.check_close(g[1], mean, f"{dom}/{layer} ({fmt}): mean = combination of step {step}")
                    self.check_close(g[2], var, f"{dom}/{layer} ({fmt}): biased var")
        r = self.c.stats(run, source="last", domain="nosuch")
        self.check_status(r, 404, "last of an unknown domain", code="not_found")
        self.check("nosuch" in (r.error_message() or ""), "404 names the domain", r.short())
        r = self.c.stats(run, source="last", mixture="a:1,b:1")
        self.check_status(r, 400, "last with a mixture", code="bad_request")
        # a domain that never reached a layer: the layer is left out
        self.c.report(run, {"step": 4, "worker": 0, "domain": "c", "layers": {"l2": {"count": 0}},
                            "world_size": 3})
        for w in (1, 2):
            self.c.report(run, {"step": 4, "worker": w, "domain": "b",
                                "layers": {"l2": nsd.layer_report(nsd.gen_batch(rng, 3, 2))}})
        b = self.c.stats(run, source="last", domain="c").json()
        self.check_eq(sorted(b["layers"]), ["l2"], "domain c: only the layer it reported")
        self.check_eq(b["layers"]["l2"]["count"], 0, "domain c at step 4: count 0")
        # survives a checkpoint round trip
        cp = self.c.get(f"/v1/runs/{run}/checkpoint").json()
        before = self.c.stats(run, source="last", domain="a").body
        run2 = nsd.run_name("lastdom-copy")
        self.check_status(self.c.put(f"/v1/runs/{run2}/checkpoint", cp), 200, "checkpoint PUT")
        after = self.c.stats(run2, source="last", domain="a").body.replace(run2.encode(), run.encode())
        self.check_eq(after, before, "per-domain last survives a checkpoint export/import")


class Limits(nsd.Case):
    DAEMON_ARGS = ("--max-memory", "200K", "--max-pending-steps", "2")

    def test_pending_and_memory_limits(self):
        run = nsd.run_name("limits")
        self.c.put(f"/v1/runs/{run}", {"world_size": 2, "sync_timeout_ms": 30000})
        small = {"bn": ([1.0, 2.0], [3.0, 4.0])}
        waiting = []
        for step in (1, 2):
            cl = self.client(timeout=WAIT_S + 5)
            waiting.append(Grad.start(self, lambda cl=cl, s=step: Grad.post_grad(self, cl, run, s, 0, small)))
            self.require(nsd.poll(lambda s=step: Grad.arrived(self, run, s, 0), WAIT_S),
                         f"worker 0 waiting on step {step}")
        r = Grad.post_grad(self, self.c, run, 3, 0, small)
        self.check_status(r, 429, "a third pending gradient step of bn", code="too_many_pending")
        big = {"wide": ([0.5] * 20000, [0.25] * 20000)}  # 320 KB of doubles > 200K
        r = Grad.post_grad(self, self.c, run, 1, 0, big, fmt="safetensors", dtype="F32")
        self.check_status(r, 429, "a gradient step over --max-memory", code="memory_budget")
        for step in (1, 2):
            r = Grad.post_grad(self, self.c, run, step, 1, {"bn": ([10.0, 20.0], [30.0, 40.0])})
            self.check_answer_simple(r, step, [11.0, 22.0], [33.0, 44.0])
        for i, (t, box) in enumerate(waiting):
            self.check_answer_simple(Grad.finish(self, t, box, f"waiter {i}"), i + 1,
                                     [11.0, 22.0], [33.0, 44.0])
        m = re.search(r"\nnormstat_memory_bytes (\d+)\n", self.c.get("/metrics").body.decode())
        self.check(m is not None, "memory gauge present")

    def check_answer_simple(self, r, step, dy, xmu):
        ok = r.status == 200 and r.json()["layers"]["bn"] == {"sum_dy": dy, "sum_dy_xmu": xmu} \
            and r.json()["step"] == step
        self.check(ok, f"step {step} sums", r.short())


class Shutdown(nsd.Case):
    def test_shutdown_answers_waiters(self):
        d = nsd.Daemon().start()
        try:
            c = d.client()
            c.put("/v1/runs/s", {"world_size": 2})
            cl = d.client(timeout=WAIT_S)
            box = [None, None]

            def go():
                try:
                    box[0] = cl.post("/v1/runs/s/grad", grad_body(1, 0, {"bn": ([1.0], [1.0])}))
                except BaseException as e:
                    box[1] = e

            t = threading.Thread(target=go, daemon=True)
            t.start()
            pat = "event=grad_accepted run=s step=1 worker=0"
            self.require(nsd.poll(lambda: any(pat in x for x in list(d.lines)), WAIT_S), "waiting")
            d.signal(signal.SIGTERM)
            t.join(WAIT_S)
            self.require(not t.is_alive() and box[1] is None, "waiter answered", repr(box[1]))
            self.check_status(box[0], 503, "waiter at shutdown", code="shutting_down")
            self.check_eq(d.wait(WAIT_S), 0, "daemon exits 0")
            cl.close()
            c.close()
        finally:
            d.kill()


if __name__ == "__main__":
    nsd.main()
