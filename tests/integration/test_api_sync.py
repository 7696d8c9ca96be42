"""test_api_sync.py - the step barrier, /sync answers and EMA/PreciseBN/last statistics.

Workers are threads with their own keep-alive connections. Every answer is
compared with statistics computed here from the raw float32 batches the
workers "saw" (math.fsum two-pass moments, exact fractions for combinations)
and the EMA with real PyTorch BatchNorm1d (float64) fed the same global
batches, plus the formulas of doc/design.md ("Statistics") evaluated separately.
"""

import os
import sys
import threading

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

LAYERS = {"features.0.bn": 4, "layer1.0.bn1": 3}
SYNC_TIMEOUT_S = 20.0


def make_step(rng, sizes, layers=LAYERS, loc=None):
    """Raw batches: data[w][layer] = x[n_w, C]."""
    return [{l: nsd.gen_batch(rng, n, c, loc=None if loc is None else loc[l]) for l, c in layers.items()}
            for n in sizes]


def reports(step, data, **extra):
    out = []
    for w, layers in enumerate(data):
        rep = {"step": step, "worker": w, "layers": {l: nsd.layer_report(x) for l, x in layers.items()}}
        rep.update(extra)
        out.append(rep)
    return out


def concat(data, layer, workers=None):
    ws = range(len(data)) if workers is None else workers
    return np.concatenate([data[w][layer] for w in ws], axis=0)


def global_ref(data, layer, workers=None):
    """(N, mean, biased var) of the concatenated raw batches."""
    n, mean, m2 = nsd.moments(concat(data, layer, workers))
    return n, mean, [v / n for v in m2] if n else None


def tight_ref(reps, layer, workers=None):
    """Exact combination of the float32 reports, as the server should do it."""
    from fractions import Fraction as F

    ws = range(len(reps)) if workers is None else workers
    arrivals = []
    for w in ws:
        n, mean, var = nsd.arrival_of(reps[w]["layers"][layer])
        if n and reps[w].get("unbiased"):  # the server converts with (n-1)/n
            var = [F(v) * (n - 1) / n for v in var]
        arrivals.append((n, mean, var))
    return nsd.combine(arrivals)


class Sync(nsd.Case):

    def sync_all(self, run, reps, timeout=SYNC_TIMEOUT_S):
        clients = [self.client(timeout=timeout) for _ in reps]
        fns = [lambda c=c, r=r: c.report(run, r, sync=True) for c, r in zip(clients, reps)]
        res, errs = nsd.parallel(fns, limit=timeout + 5)
        for i, e in enumerate(errs):
            self.require(e is None, f"/sync of worker {i} answered", repr(e))
        return res

    def check_sync(self, ans, step, data, reps, desc, workers=None, complete=True, arrived=None):
        self.check_status(ans, 200, f"{desc}: /sync")
        if ans.status != 200:
            return
        b = ans.json()
        self.check(b.get("step") == step and b.get("complete") is complete
                   and b.get("workers") == (arrived if arrived is not None else len(reps)),
                   f"{desc}: step {step}, complete {complete}, workers {arrived or len(reps)}",
                   f"{ {k: b.get(k) for k in ('step', 'complete', 'workers')} }")
        self.check_eq(sorted(b.get("layers", {})), sorted(reps[0]["layers"]), f"{desc}: layers answered")
        for layer in reps[0]["layers"]:
            got = b.get("layers", {}).get(layer, {})
            n, mean, var = global_ref(data, layer, workers)
            tn, tmean, tvar = tight_ref(reps, layer, workers)
            self.check_eq(got.get("count"), n, f"{desc} {layer}: count = total values")
            self.check_close(got.get("mean", []), mean, f"{desc} {layer}: mean = mean of the concatenated raw batches")
            self.check_close(got.get("var", []), var, f"{desc} {layer}: var = biased var of the concatenation")
            u = max(nsd.ulps32(got.get("mean", []), tmean), nsd.ulps32(got.get("var", []), tvar))
            self.check(len(got.get("mean", [])) == len(tmean) and u <= 1,
                       f"{desc} {layer}: within 1 float32 ulp of the exact combination of the reports ({u} ulp)")

    def check_ema(self, run, emas, desc, torch_steps=None, momentum=0.1, step=None, domain=None):
        q = {"source": "ema"}
        if domain:
            q["domain"] = domain
        r = self.c.stats(run, **q)
        self.check_status(r, 200, f"{desc}: GET stats ema")
        if r.status != 200:
            return None
        b = r.json()
        for layer, e in emas.items():
            got = b.get("layers", {}).get(layer, {})
            m, v = e.served()
            self.check_eq(got.get("num_batches_tracked"), e.nbt, f"{desc} {layer}: num_batches_tracked")
            if step is not None:
                self.check_eq(got.get("step"), step, f"{desc} {layer}: step of the last applied step")
            self.check_close(got.get("running_mean", []), m, f"{desc} {layer}: running_mean = EMA formula")
            self.check_close(got.get("running_var", []), v, f"{desc} {layer}: running_var = EMA formula (unbiased)")
            if torch_steps is not None:
                t = nsd.torch_bn(torch_steps[layer], LAYERS.get(layer, len(m)), momentum)
                if t is None:
                    print(f"note {desc}: torch not importable, PyTorch comparison skipped")
                    continue
                self.check_close(got.get("running_mean", []), t[0], f"{desc} {layer}: running_mean = torch BatchNorm1d")
                self.check_close(got.get("running_var", []), t[1], f"{desc} {layer}: running_var = torch BatchNorm1d")
                self.check_eq(got.get("num_batches_tracked"), t[2], f"{desc} {layer}: nbt = torch BatchNorm1d")
        return b

    def check_initial(self, run, desc, sources=("precise", "last")):
        """Reported layers never applied: EMA serves PyTorch's initial state
        (0, 1, 0); precise and last leave them out (proto/openapi.yaml)."""
        b = self.c.stats(run).json()
        for l, c in LAYERS.items():
            got = b.get("layers", {}).get(l)
            self.check(got is not None and got.get("num_batches_tracked") == 0 and got["running_mean"] == [0.0] * c
                       and got["running_var"] == [1.0] * c, f"{desc}: ema {l} is the initial (0, 1, 0)", f"{got}")
        for src in sources:
            r = self.c.stats(run, source=src)
            self.check(r.status == 200 and r.json().get("layers") == {}, f"{desc}: {src} leaves the layers out",
                       r.short())

    # ------------------------------------------------------------------ tests

    def test_barrier_four_workers_one_empty(self):
        rng = np.random.default_rng(11)
        run = nsd.run_name("barrier")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 4}).status == 201, "create world 4")
        sizes = [[37, 0, 12, 64], [5, 20, 33, 0], [0, 16, 16, 9]]
        emas = {l: nsd.Ema(c) for l, c in LAYERS.items()}
        pools = {l: nsd.Pool() for l in LAYERS}
        tsteps = {l: [] for l in LAYERS}
        last = None
        for s, sz in enumerate(sizes, start=1):
            data = make_step(rng, sz)
            reps = reports(s, data)
            self.check("mean" not in reps[sz.index(0)]["layers"]["layer1.0.bn1"],
                       f"step {s}: the empty worker sends count 0 without arrays")
            answers = self.sync_all(run, reps)
            for w, a in enumerate(answers):
                self.check_sync(a, s, data, reps, f"step {s} worker {w} (sizes {sz})")
            self.check(len({a.body for a in answers}) == 1, f"step {s}: the 4 answers are identical bytes")
            for l in LAYERS:
                emas[l].apply(*global_ref(data, l))
                pools[l].add(concat(data, l))
                tsteps[l].append(concat(data, l))
            last = (data, reps)
        b = self.check_ema(run, emas, "after 3 steps", tsteps, step=3)
        if b:
            self.check(b.get("run") == run and b.get("source") == "ema" and b.get("domain") == "*"
                       and b.get("step") == 3, "stats header: run, source ema, domain *, step 3",
                       f"{ {k: v for k, v in b.items() if k != 'layers'} }")
        # source=last: the last step's global statistics (biased) and count
        r = self.c.stats(run, source="last")
        self.check_status(r, 200, "GET stats source=last")
        data, reps = last
        for l in LAYERS:
            got = r.json().get("layers", {}).get(l, {})
            n, mean, var = global_ref(data, l)
            self.check_eq(got.get("count"), n, f"last {l}: count")
            self.check_eq(got.get("step"), 3, f"last {l}: step")
            self.check_close(got.get("mean", []), mean, f"last {l}: mean = step 3 global mean")
            self.check_close(got.get("var", []), var, f"last {l}: var = step 3 global biased var")
        # source=precise: every sample pooled, unbiased; variance=biased
        for biased in (False, True):
            q = {"source": "precise"}
            if biased:
                q["variance"] = "biased"
            r = self.c.stats(run, **q)
            self.check_status(r, 200, f"GET stats {q}")
            for l in LAYERS:
                got = r.json().get("layers", {}).get(l, {})
                n, mean, var = pools[l].values(biased=biased)
                self.check_eq((got.get("num_batches"), got.get("num_samples")), (3, n),
                              f"precise {l}: num_batches 3, num_samples {n}")
                self.check_close(got.get("running_mean", []), mean, f"precise{' biased' if biased else ''} {l}: mean of all samples")
                self.check_close(got.get("running_var", []), var,
                                 f"precise {l}: {'biased M2/n' if biased else 'unbiased M2/(n-1)'} of all samples")
        # layers= selects layers and serves the same values
        full = self.c.stats(run).json()["layers"]
        r = self.c.stats(run, layers="layer1.0.bn1")
        self.check(r.status == 200 and list(r.json().get("layers", {})) == ["layer1.0.bn1"]
                   and r.json()["layers"]["layer1.0.bn1"] == full["layer1.0.bn1"],
                   "layers=layer1.0.bn1 serves only that layer, same values", r.short())
        r = self.c.stats(run, layers="layer1.0.bn1,features.0.bn")
        self.check(r.status == 200 and r.json().get("layers") == full, "layers=both serves both", r.short())

    def test_many_layers_answer(self):
        """A JSON answer is sent from its parts (a head, then one per layer
        array): with 1 layer and with 60 (121 parts; a report holds every
        layer's lock at once, and ThreadSanitizer's deadlock detector, make
        tsan, follows at most 64), each reads back whole and identical for
        the two workers."""
        rng = np.random.default_rng(21)
        for n_layers in (1, 60):
            layers = {f"blocks.{i}.bn": 2 + i % 5 for i in range(n_layers)}
            run = nsd.run_name(f"many{n_layers}")
            self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create world 2")
            data = make_step(rng, [7, 9], layers=layers)
            reps = reports(1, data)
            answers = self.sync_all(run, reps)
            for w, a in enumerate(answers):
                self.check_sync(a, 1, data, reps, f"{n_layers} layers, worker {w}")
            self.check(len({a.body for a in answers}) == 1,
                       f"{n_layers} layers: the 2 answers are identical bytes")

    def test_momentum_null_cumulative(self):
        rng = np.random.default_rng(12)
        run = nsd.run_name("cumul")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2, "momentum": None}).status == 201,
                     "create world 2, momentum null")
        emas = {l: nsd.Ema(c, momentum=None) for l, c in LAYERS.items()}
        tsteps = {l: [] for l in LAYERS}
        for s in range(1, 6):
            data = make_step(rng, [int(rng.integers(2, 40)), int(rng.integers(0, 40))])
            for rep in reports(s, data):
                self.check_status(self.c.report(run, rep), 202, f"/batches step {s} worker {rep['worker']}")
            for l in LAYERS:
                emas[l].apply(*global_ref(data, l))
                tsteps[l].append(concat(data, l))
        self.check_ema(run, emas, "momentum null, 5 steps", tsteps, momentum=None, step=5)

    def test_ema_debias(self):
        rng = np.random.default_rng(13)
        run = nsd.run_name("debias")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 1, "ema_debias": True}).status == 201,
                     "create world 1, ema_debias")
        emas = {l: nsd.Ema(c, debias=True) for l, c in LAYERS.items()}
        for s in range(1, 4):
            data = make_step(rng, [int(rng.integers(4, 30))])
            self.check_status(self.c.report(run, reports(s, data)[0]), 202, f"/batches step {s}")
            for l in LAYERS:
                emas[l].apply(*global_ref(data, l))
        self.check_ema(run, emas, "ema_debias, 3 steps: ema / (1 - 0.9^t) from a zero start", step=3)

    def test_determinism_arrival_order(self):
        rng = np.random.default_rng(14)
        run = nsd.run_name("determ")
        loc = {l: rng.uniform(-300, 300, c) for l, c in LAYERS.items()}
        steps = [make_step(rng, [int(rng.integers(1, 50)) for _ in range(4)], loc=loc) for _ in range(3)]
        orders_a = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]]
        orders_b = [[2, 0, 3, 1], [0, 1, 2, 3], [3, 0, 2, 1]]
        outputs = []
        for orders in (orders_a, orders_b):
            self.c.delete(f"/v1/runs/{run}")
            self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 4}).status == 201, "create world 4")
            for s, (data, order) in enumerate(zip(steps, orders), start=1):
                reps = reports(s, data)
                for w in order:
                    self.check_status(self.c.report(run, reps[w]), 202, f"/batches step {s} worker {w} (order {order})")
            out = {}
            for q in ({"source": "ema"}, {"source": "precise"}, {"source": "last"},
                      {"source": "precise", "variance": "biased"}, {"source": "ema", "format": "safetensors"}):
                r = self.c.stats(run, **q)
                out[str(q)] = (r.status, r.body)
            r = self.c.get(f"/v1/runs/{run}/checkpoint")
            out["checkpoint"] = (r.status, r.body)
            outputs.append(out)
        for k in outputs[0]:
            self.check(outputs[0][k] == outputs[1][k] and outputs[0][k][0] == 200,
                       f"same reports in another arrival order: identical bytes of {k}",
                       f"{outputs[0][k][1][:200]!r} vs {outputs[1][k][1][:200]!r}")

    def test_out_of_order_steps_across_workers(self):
        rng = np.random.default_rng(15)
        run = nsd.run_name("ooo")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create world 2")
        steps = [make_step(rng, [20, 31]), make_step(rng, [17, 9])]
        reps = [reports(s, d) for s, d in enumerate(steps, start=1)]
        self.check_status(self.c.report(run, reps[0][0]), 202, "worker 0 reports step 1")
        self.check_status(self.c.report(run, reps[1][0]), 202, "worker 0 reports step 2")
        st = self.c.get(f"/v1/runs/{run}").json().get("status", {})
        pend = [(p.get("layer"), p.get("step"), p.get("waiting_for")) for p in st.get("pending", [])]
        exp = sorted((l, s, [1]) for l in LAYERS for s in (1, 2))
        self.check_eq(sorted(pend), exp, "stall report: steps 1 and 2 of each layer wait for worker 1")
        self.check_initial(run, "while worker 1 has not reported")
        emas = {l: nsd.Ema(c) for l, c in LAYERS.items()}
        for s in (1, 2):
            ans = self.c.report(run, reps[s - 1][1], sync=True, timeout=SYNC_TIMEOUT_S)
            self.check_sync(ans, s, steps[s - 1], reps[s - 1], f"worker 1 /sync step {s}")
            for l in LAYERS:
                emas[l].apply(*global_ref(steps[s - 1], l))
        self.check_ema(run, emas, "after worker 1 caught up", step=2)

    def test_steps_nobody_reported_are_absent(self):
        rng = np.random.default_rng(16)
        run = nsd.run_name("every10")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create world 2")
        emas = {l: nsd.Ema(c) for l, c in LAYERS.items()}
        for s in (10, 20, 30):
            data = make_step(rng, [8, 13])
            for rep in reports(s, data):
                self.check_status(self.c.report(run, rep), 202, f"/batches step {s} worker {rep['worker']}")
            for l in LAYERS:
                emas[l].apply(*global_ref(data, l))
        self.check_ema(run, emas, "steps 10, 20, 30 only", step=30)
        st = self.c.get(f"/v1/runs/{run}").json().get("status", {})
        self.check(st.get("pending") == [] and st.get("skipped_steps") == 0,
                   "nothing pending, nothing skipped", f"{st}")

    def test_worker_skipping_a_step(self):
        """Worker 1 skips step 1: step 2 completes and is answered at once, but
        EMA applies it only after step 1 is finalized (here by a partial
        timeout after sync_timeout_ms is lowered), in step order."""
        rng = np.random.default_rng(17)
        run = nsd.run_name("skipper")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create world 2")
        s1, s2 = make_step(rng, [25, 14]), make_step(rng, [30, 22])
        r1, r2 = reports(1, s1), reports(2, s2)
        self.check_status(self.c.report(run, r1[0]), 202, "worker 0 reports step 1")
        self.check_status(self.c.report(run, r2[0]), 202, "worker 0 reports step 2")
        ans = self.c.report(run, r2[1], sync=True, timeout=SYNC_TIMEOUT_S)
        self.check_sync(ans, 2, s2, r2, "worker 1 /sync step 2 while step 1 is pending")
        # step 2 is finalized (source=last serves it, checked below) but not applied
        self.check_initial(run, "step 2 not applied while step 1 is pending", sources=("precise",))
        last = self.c.stats(run, source="last").json()
        self.check(all(last.get("layers", {}).get(l, {}).get("step") == 2 for l in LAYERS),
                   "source=last serves the finalized step 2 already", f"{last}")
        st = self.c.get(f"/v1/runs/{run}").json().get("status", {})
        pend = sorted((p.get("layer"), p.get("step"), p.get("waiting_for")) for p in st.get("pending", []))
        self.check_eq(pend, sorted((l, 1, [1]) for l in LAYERS), "stall report: only step 1 pending, waiting for worker 1")
        r = self.c.report(run, r1[1])
        self.check_status(r, 409, "worker 1 reporting step 1 after step 2", code="stale_step")
        self.check_status(self.c.put(f"/v1/runs/{run}", {"sync_timeout_ms": 100}), 200, "lower sync_timeout_ms to 100")
        done = nsd.poll(lambda: all(x.get("num_batches_tracked") == 2
                                    for x in self.c.stats(run).json().get("layers", {}).values()))
        self.require(done, "step 1 timed out (partial) and steps 1, 2 were applied (waited up to 10 s)")
        emas = {l: nsd.Ema(c) for l, c in LAYERS.items()}
        rev = {l: nsd.Ema(c) for l, c in LAYERS.items()}
        for l in LAYERS:
            emas[l].apply(*global_ref(s1, l, [0]))
            emas[l].apply(*global_ref(s2, l))
            rev[l].apply(*global_ref(s2, l))
            rev[l].apply(*global_ref(s1, l, [0]))
            self.check(nsd.max_err(rev[l].mean, emas[l].mean) > 10,
                       f"{l}: (self-check) applying in the wrong order would be detected")
        self.check_ema(run, emas, "EMA applied step 1 (worker 0 only) then step 2", step=2)
        r = self.c.stats(run, source="last")
        for l in LAYERS:
            got = r.json().get("layers", {}).get(l, {})
            n, mean, var = global_ref(s2, l)
            self.check(got.get("step") == 2 and got.get("count") == n and nsd.max_err(got.get("mean", []), mean) <= 1,
                       f"last {l}: step 2 (the highest finalized step)", f"{got}")

    def test_timeout_partial(self):
        rng = np.random.default_rng(18)
        run = nsd.run_name("partial")
        # 1 s: both reports (released together) must arrive before the step times out
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 3, "sync_timeout_ms": 1000,
                                                   "on_timeout": "partial"}).status == 201,
                     "create world 3, sync_timeout_ms 1000, partial")
        data = make_step(rng, [21, 34, 10])
        reps = reports(1, data)
        answers = self.sync_all(run, reps[:2])
        for w, a in enumerate(answers):
            self.check_sync(a, 1, data, reps, f"timed-out step, worker {w}", workers=[0, 1],
                            complete=False, arrived=2)
        emas = {l: nsd.Ema(c) for l, c in LAYERS.items()}
        for l in LAYERS:
            emas[l].apply(*global_ref(data, l, [0, 1]))
        self.check_ema(run, emas, "partial step applied with 2 of 3 workers", step=1)
        before = self.snapshot(run)
        r = self.c.report(run, reps[2])
        self.check_status(r, 409, "the late worker's report of the timed-out step", code="stale_step")
        self.check_unchanged(before, run, "late report rejected")
        data2 = make_step(rng, [5, 6, 7])
        reps2 = reports(2, data2)
        for w, a in enumerate(self.sync_all(run, reps2)):
            self.check_sync(a, 2, data2, reps2, f"step 2 complete, worker {w}")
        for l in LAYERS:
            emas[l].apply(*global_ref(data2, l))
        self.check_ema(run, emas, "then a complete step 2", step=2)

    def test_timeout_drop(self):
        rng = np.random.default_rng(19)
        run = nsd.run_name("drop")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2, "sync_timeout_ms": 300,
                                                   "on_timeout": "drop"}).status == 201,
                     "create world 2, sync_timeout_ms 300, drop")
        data = make_step(rng, [12, 12])
        reps = reports(1, data)
        r = self.c.report(run, reps[0], sync=True, timeout=SYNC_TIMEOUT_S)
        self.check_status(r, 504, "/sync of a step that times out with drop", code="sync_timeout")
        self.check_eq(r.error_message(), "step 1: worker 1 did not report within the run's "
                      "sync_timeout_ms (on_timeout drop)", "the 504 names the absent worker")
        self.check_initial(run, "dropped step not applied")
        r = self.c.report(run, reps[1])
        self.check_status(r, 409, "a report for the dropped step", code="stale_step")
        data2 = make_step(rng, [9, 15])
        for rep in reports(2, data2):
            self.check_status(self.c.report(run, rep), 202, f"/batches step 2 worker {rep['worker']}")
        emas = {l: nsd.Ema(c) for l, c in LAYERS.items()}
        for l in LAYERS:
            emas[l].apply(*global_ref(data2, l))
        self.check_ema(run, emas, "only step 2 applied", step=2)

    def test_small_batches_skipped(self):
        rng = np.random.default_rng(20)
        run = nsd.run_name("smallN")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create world 2")
        emas = {l: nsd.Ema(c) for l, c in LAYERS.items()}
        tsteps = {l: [] for l in LAYERS}
        plan = [(1, [1, 0], 1), (2, [0, 0], 2), (3, [6, 3], 2), (4, [1, 1], 2), (5, [0, 1], 3)]
        for s, sizes, skipped in plan:
            data = make_step(rng, sizes)
            reps = reports(s, data)
            self.check_status(self.c.report(run, reps[0]), 202, f"step {s} worker 0 (n={sizes[0]})")
            ans = self.c.report(run, reps[1], sync=True, timeout=SYNC_TIMEOUT_S)
            self.check_status(ans, 200, f"step {s} worker 1 /sync (n={sizes[1]})")
            for l in LAYERS:
                lay = ans.json().get("layers", {}).get(l, {}) if ans.status == 200 else {}
                self.check_eq(lay.get("count"), sum(sizes), f"step {s} {l}: /sync count N={sum(sizes)}")
                if sum(sizes) == 0:
                    self.check(lay.get("mean") == [0.0] * LAYERS[l] and lay.get("var") == [0.0] * LAYERS[l],
                               f"step {s} {l}: N=0 answers count 0 and zeros (proto/openapi.yaml)", f"{lay}")
                if sum(sizes) == 1:
                    n, mean, var = global_ref(data, l)
                    self.check(nsd.f32_list(lay.get("mean", [])) == nsd.f32_list(mean)
                               and lay.get("var") == [0.0] * len(mean),
                               f"step {s} {l}: N=1 answers the single value and var 0", f"{lay}")
                emas[l].apply(*global_ref(data, l))
                tsteps[l].append(concat(data, l))
            self.check_ema(run, emas, f"after step {s} (N={sum(sizes)})", tsteps)
            # skipped_steps counts (layer, step) pairs: N is a layer's step's global count
            # (a pending step is per (run, layer, step)); both layers here share N
            st = self.c.get(f"/v1/runs/{run}").json().get("status", {})
            self.check_eq(st.get("skipped_steps"), skipped * len(LAYERS),
                          f"after step {s}: skipped_steps ({skipped} steps x {len(LAYERS)} layers)")
        b = self.c.stats(run).json()
        self.check_eq([b["layers"][l]["num_batches_tracked"] for l in LAYERS], [2, 2],
                      "only the N>=2 steps 3 and 4 were counted")

    def test_elastic_world_size(self):
        """A changed world_size applies to steps without an arrival yet."""
        rng = np.random.default_rng(22)
        run = nsd.run_name("elastic")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create world 2")
        s1 = make_step(rng, [7, 9])
        r1 = reports(1, s1)
        self.check_status(self.c.report(run, r1[0]), 202, "worker 0 step 1 (pending, world 2)")
        self.check_status(self.c.put(f"/v1/runs/{run}", {"world_size": 3}), 200, "PUT world_size 3")
        ans = self.c.report(run, r1[1], sync=True, timeout=SYNC_TIMEOUT_S)
        self.check_sync(ans, 1, s1, r1, "step 1 completes with its 2 workers")
        s2 = make_step(rng, [4, 5, 6])
        r2 = reports(2, s2)
        for w in (0, 1):
            self.check_status(self.c.report(run, r2[w]), 202, f"worker {w} step 2")
        st = self.c.get(f"/v1/runs/{run}").json().get("status", {})
        pend = sorted((p.get("layer"), p.get("step"), p.get("waiting_for")) for p in st.get("pending", []))
        self.check_eq(pend, sorted((l, 2, [2]) for l in LAYERS), "step 2 waits for the new worker 2")
        ans = self.c.report(run, r2[2], sync=True, timeout=SYNC_TIMEOUT_S)
        self.check_sync(ans, 2, s2, r2, "step 2 completes with 3 workers")
        emas = {l: nsd.Ema(c) for l, c in LAYERS.items()}
        for data in (s1, s2):
            for l in LAYERS:
                emas[l].apply(*global_ref(data, l))
        self.check_ema(run, emas, "both steps applied", step=2)
        self.check_status(self.c.put(f"/v1/runs/{run}", {"world_size": 1}), 200, "PUT world_size 1")
        r = self.c.report(run, reports(3, make_step(rng, [3, 3, 3]))[2])
        self.check_status(r, 409, "worker 2 after shrinking to world_size 1", code="worker_out_of_range")

    def test_waiters_hold_no_thread(self):
        """11 /sync waiters (more than the daemon's 4 HTTP threads) while the
        daemon keeps serving; the 12th report releases them all."""
        rng = np.random.default_rng(24)
        run = nsd.run_name("many")
        world = 12
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": world}).status == 201, "create world 12")
        data = make_step(rng, [int(rng.integers(0, 20)) for _ in range(world - 1)] + [5])
        reps = reports(1, data)
        clients = [self.client(timeout=SYNC_TIMEOUT_S) for _ in range(world - 1)]
        out = [None] * (world - 1)
        def wait(i):
            try:
                out[i] = clients[i].report(run, reps[i], sync=True)
            except Exception as e:
                out[i] = e
        threads = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(world - 1)]
        for t in threads:
            t.start()

        def all_waiting():
            st = self.c.get(f"/v1/runs/{run}").json().get("status", {})
            return all(p.get("waiting_for") == [world - 1] for p in st.get("pending", [])) and \
                len(st.get("pending", [])) == len(LAYERS)
        self.require(nsd.poll(all_waiting), "11 workers wait at step 1 (the stall report shows it)")
        self.check_status(self.c.get("/livez"), 200, "the daemon serves while 11 /sync requests wait")
        ans = self.c.report(run, reps[world - 1], sync=True, timeout=SYNC_TIMEOUT_S)
        self.check_sync(ans, 1, data, reps, "the 12th worker's /sync")
        for t in threads:
            t.join(SYNC_TIMEOUT_S)
        for i, r in enumerate(out):
            ok = isinstance(r, nsd.Response) and r.status == 200 and r.body == ans.body
            self.check(ok, f"waiter {i} released with the same answer",
                       r.short(200) if isinstance(r, nsd.Response) else repr(r))

    def test_delete_while_waiting(self):
        run = nsd.run_name("delwait")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create world 2")
        rep = reports(1, make_step(np.random.default_rng(23), [5, 5]))[0]
        waiter = self.client(timeout=SYNC_TIMEOUT_S)
        out = {}

        def wait():
            out["r"] = waiter.report(run, rep, sync=True)

        t = threading.Thread(target=wait, daemon=True)
        t.start()
        self.require(nsd.poll(lambda: self.c.get(f"/v1/runs/{run}").json().get("status", {}).get("pending")),
                     "the waiter's step is pending")
        self.check_status(self.c.delete(f"/v1/runs/{run}"), 204, "DELETE the run while /sync waits")
        t.join(SYNC_TIMEOUT_S)
        self.check(not t.is_alive() and "r" in out, "the waiter was answered")
        if "r" in out:
            self.check_status(out["r"], 404, "the waiter of a deleted run", code="not_found")
        self.check_status(self.c.get(f"/v1/runs/{run}"), 404, "the run is gone", code="not_found")

    def test_concurrent_reports_deterministic(self):
        """4 worker threads report 15 steps each at once (/batches, their own
        pace); the statistics equal, byte for byte, those of the same reports
        sent one by one in rank order to a twin run."""
        rng = np.random.default_rng(25)
        a = nsd.run_name("concA")
        b = a.replace("concA", "concB")
        for run in (a, b):
            self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 4}).status == 201, f"create {run}")
        steps = [reports(s, make_step(rng, [int(rng.integers(0, 25)) for _ in range(4)])) for s in range(1, 16)]
        clients = [self.client() for _ in range(4)]

        def worker(w):
            return [clients[w].report(a, steps[i][w]).status for i in range(len(steps))]
        res, errs = nsd.parallel([lambda w=w: worker(w) for w in range(4)], limit=30)
        self.check(all(e is None for e in errs) and all(st == [202] * len(steps) for st in res),
                   "60 concurrent reports accepted", f"{errs} {res}")
        for reps in steps:
            for rep in reps:
                self.check(self.c.report(b, rep).status == 202, f"{b}: step {rep['step']} worker {rep['worker']}")
        for q in ({"source": "ema"}, {"source": "precise"}, {"source": "last"}):
            ra, rb = self.c.stats(a, **q), self.c.stats(b, **q)
            self.check(ra.status == 200 and ra.body.replace(a.encode(), b.encode()) == rb.body,
                       f"stats {q}: concurrent arrivals give the bytes of sequential ones",
                       f"{ra.short(200)} vs {rb.short(200)}")
        ca, cb = self.c.get(f"/v1/runs/{a}/checkpoint"), self.c.get(f"/v1/runs/{b}/checkpoint")
        self.check(ca.status == 200 and ca.body.replace(a.encode(), b.encode()) == cb.body,
                   "checkpoints (full precision) identical too")

    def test_unbiased_reports(self):
        rng = np.random.default_rng(26)
        run = nsd.run_name("unbiased")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create world 2")
        data = make_step(rng, [10, 27])
        reps = reports(1, data)
        for l, lay in reps[0]["layers"].items():
            n, _, m2 = nsd.moments(data[0][l])
            lay["var"] = nsd.f32_list([v / (n - 1) for v in m2])
        reps[0]["unbiased"] = True
        reps[1]["unbiased"] = False
        self.check_status(self.c.report(run, reps[0]), 202, "worker 0 reports unbiased variances")
        ans = self.c.report(run, reps[1], sync=True, timeout=SYNC_TIMEOUT_S)
        self.check_sync(ans, 1, data, reps, "unbiased + biased reports combine like the raw batches")

    def test_read_your_writes(self):
        rng = np.random.default_rng(21)
        run = nsd.run_name("ryw")
        emas = {l: nsd.Ema(c) for l, c in LAYERS.items()}
        for s in range(1, 7):
            data = make_step(rng, [int(rng.integers(2, 60))])
            rep = reports(s, data, world_size=1)[0]
            self.check_status(self.c.report(run, rep), 202, f"/batches step {s} (creates the run at step 1)")
            for l in LAYERS:
                emas[l].apply(*global_ref(data, l))
            self.check_ema(run, emas, f"immediately after step {s}", step=s)
            last = self.c.stats(run, source="last").json()
            self.check(all(last["layers"][l]["step"] == s for l in LAYERS), f"source=last is step {s} at once")
        cfg = self.c.get(f"/v1/runs/{run}").json().get("config", {})
        self.check_eq(cfg.get("world_size"), 1, "the run created by a report has that report's world_size")
        run3 = nsd.run_name("ryw3")
        rep = reports(1, make_step(rng, [4]), world_size=3)[0]
        self.check_status(self.c.report(run3, rep), 202, "/batches creating a run with world_size 3")
        cfg = self.c.get(f"/v1/runs/{run3}").json().get("config", {})
        self.check_eq((cfg.get("world_size"), cfg.get("momentum")), (3, 0.1),
                      "created with world_size 3 and default momentum")


if __name__ == "__main__":
    nsd.main()
