"""test_api_drift.py - GET /v1/runs/{run}/drift and /history against an independent recomputation.

A run of four workers in two domains ("photo" on workers 0 and 1, "sketch"
on 2 and 3) reports two layers for more steps than --history-steps keeps.
From the float32 numbers the test sent, and nothing the daemon computed, it
evaluates in float64: each step's combination per domain and pooled
(SyncBN's formula), the EMA by PyTorch's formula (running_var takes the
step's unbiased variance, N < 2 leaves it alone), PreciseBN by the paper's
estimator (mean of all samples, var = N/(N-1) [avg(mu_i^2 + sigma_i^2) -
avg(mu_i)^2] weighted by sample counts), and the drift of doc/design.md
(per channel |mu_ema - mu_pop| / sqrt(var_pop + eps) and
|ln((var_ema + eps) / (var_pop + eps))|, eps = 1e-5, averaged and maximised
over channels). /drift must serve every row's drift now, worst first;
/history the last K steps of a (layer, domain, channel) with the step's
statistics, the EMA after it and the drift then. Also: one domain (the
pooled history is the domain's), PreciseBN with fewer than 2 samples (drift
null), a one-domain reset (the pooled population merges what is left),
errors, a daemon keeping no history, and history within --max-memory.
"""

import math
import os
import sys
import urllib.parse

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

K = 5
EPS = 1e-5
MOMENTUM = 0.1
LAYERS = {"stem.bn": 3, "layer1.0.bn1": 6}
DOMAIN_OF = {0: "photo", 1: "photo", 2: "sketch", 3: "sketch"}
SCOPES = {"photo": [0, 1], "sketch": [2, 3], "*": [0, 1, 2, 3]}
DRIFT_RTOL, DRIFT_ATOL = 1e-9, 1e-12  # double against double
F32_RTOL = 3e-7  # a float32 rounding of the reference


# ---------------------------------------------------------------- reference (float64)


def combine(arrivals):
    """SyncBN's global batch of (n, mean[C], biased var[C]) arrivals."""
    live = [a for a in arrivals if a[0] > 0]
    N = sum(a[0] for a in live)
    C = len(arrivals[0][1])
    if N == 0:
        return 0, [0.0] * C, [0.0] * C
    mean = [math.fsum(a[0] * a[1][c] for a in live) / N for c in range(C)]
    var = [math.fsum(a[0] * (a[2][c] + (a[1][c] - mean[c]) ** 2) for a in live) / N for c in range(C)]
    return N, mean, var


class Ema:
    """torch.nn.BatchNorm's running statistics; with debias, the view
    ema_debias serves: the average started from zero divided by its weight
    1 - (1 - f)^t."""

    def __init__(self, C, debias=False):
        self.mean, self.var, self.nbt, self.step = [0.0] * C, [1.0] * C, 0, None
        self.debias, self.zmean, self.zvar, self.decay = debias, [0.0] * C, [0.0] * C, 1.0

    def apply(self, step, N, mean, var):
        if N < 2:
            return
        self.nbt += 1
        f = MOMENTUM
        self.zmean = [(1 - f) * m + f * x for m, x in zip(self.zmean, mean)]
        self.zvar = [(1 - f) * v + f * x * N / (N - 1) for v, x in zip(self.zvar, var)]
        self.decay *= 1 - f
        if self.debias:
            self.mean = [z / (1 - self.decay) for z in self.zmean]
            self.var = [z / (1 - self.decay) for z in self.zvar]
        else:
            self.mean = [(1 - f) * m + f * x for m, x in zip(self.mean, mean)]
            self.var = [(1 - f) * v + f * x * N / (N - 1) for v, x in zip(self.var, var)]
        self.step = step


class Population:
    """PreciseBN by the paper's estimator over every arrival merged so far."""

    def __init__(self):
        self.arrivals = []  # (n, mean, var)
        self.batches = 0

    def add(self, arrivals):
        live = [a for a in arrivals if a[0] > 0]
        if live:
            self.arrivals += live
            self.batches += 1

    def values(self):
        """(mean, unbiased var) or None with fewer than 2 samples."""
        N = sum(a[0] for a in self.arrivals)
        if N < 2:
            return None
        C = len(self.arrivals[0][1])
        mean = [math.fsum(a[0] * a[1][c] for a in self.arrivals) / N for c in range(C)]
        second = [math.fsum(a[0] * (a[1][c] ** 2 + a[2][c]) for a in self.arrivals) / N
                  for c in range(C)]
        return mean, [N / (N - 1) * (s - m * m) for s, m in zip(second, mean)]


def drift(ema, pop):
    """The drift of doc/design.md, or None without a population."""
    if pop is None:
        return None
    pm, pv = pop
    dm = [abs(e - p) / math.sqrt(v + EPS) for e, p, v in zip(ema.mean, pm, pv)]
    dv = [abs(math.log((e + EPS) / (v + EPS))) for e, v in zip(ema.var, pv)]
    return {"mean_avg": sum(dm) / len(dm), "mean_max": max(dm), "mean_max_channel": dm.index(max(dm)),
            "var_avg": sum(dv) / len(dv), "var_max": max(dv), "var_max_channel": dv.index(max(dv)),
            "_dm": dm, "_dv": dv}


class Reference:
    """What the daemon should hold, per scope ("photo", "sketch", "*") and layer."""

    def __init__(self, scopes, debias=False):
        self.scopes = scopes
        self.ema = {s: {l: Ema(C, debias) for l, C in LAYERS.items()} for s in scopes}
        self.pop = {s: {l: Population() for l in LAYERS} for s in scopes}
        self.history = {s: {l: [] for l in LAYERS} for s in scopes}

    def pooled_population(self, layer, domains):
        p = Population()
        for d in domains:
            p.arrivals += self.pop[d][layer].arrivals
            p.batches += self.pop[d][layer].batches
        return p

    def step(self, step, sent, update=("ema", "precise")):
        """sent[w][layer] = (n, mean, var) as the daemon decoded them."""
        for scope, workers in self.scopes.items():
            for l in LAYERS:
                arr = [sent[w][l] for w in workers]
                N, mean, var = combine(arr)
                if "ema" in update:
                    self.ema[scope][l].apply(step, N, mean, var)
                if "precise" in update and scope != "*":
                    self.pop[scope][l].add(arr)
        for scope in self.scopes:
            for l in LAYERS:
                N, mean, var = combine([sent[w][l] for w in self.scopes[scope]])
                self.history[scope][l].append({"step": step, "count": N, "batch_mean": mean,
                                               "batch_var": var, "ema_mean": list(self.ema[scope][l].mean),
                                               "ema_var": list(self.ema[scope][l].var),
                                               "drift": drift(self.ema[scope][l], self.population(scope, l))})

    def population(self, scope, layer):
        if scope == "*":
            return self.pooled_population(layer, [s for s in self.scopes if s != "*"]).values()
        return self.pop[scope][layer].values()

    def batches(self, scope, layer):
        if scope == "*":
            return sum(self.pop[s][layer].batches for s in self.scopes if s != "*")
        return self.pop[scope][layer].batches


def make_step(rng, step, workers, counts=None, domains=DOMAIN_OF):
    """One report per worker; returns (reports, sent) with the float32 values sent."""
    reps, sent = [], {}
    for w in workers:
        layers, sent[w] = {}, {}
        for l, C in LAYERS.items():
            n = int(counts[w]) if counts is not None else int(rng.integers(1, 40))
            mean = nsd.f32_list(rng.normal(0.5 * (w % 2) + 0.1 * step, 1.0, C))
            var = nsd.f32_list(rng.uniform(0.2, 3.0, C))
            layers[l] = {"count": n, "mean": mean, "var": var}
            sent[w][l] = (n, mean, var)
        reps.append({"step": step, "worker": w, "domain": domains[w], "layers": layers})
    return reps, sent


# ---------------------------------------------------------------- the test


class Drift(nsd.Case):
    DAEMON_ARGS = ("--history-steps", str(K))

    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(1616)

    def feed(self, run, ref, step, workers, counts=None, update=None, domains=DOMAIN_OF):
        reps, sent = make_step(self.rng, step, workers, counts, domains)
        for rep in reps:
            if update:
                rep["update"] = list(update)
            self.require(self.c.report(run, rep).status == 202, f"report step {step} worker {rep['worker']}")
        ref.step(step, sent, update or ("ema", "precise"))

    def get(self, path, **query):
        q = urllib.parse.urlencode(query, safe="*")
        return self.c.get(path + (f"?{q}" if q else ""))

    def check_drift(self, got, exp, desc):
        if exp is None:
            return self.check(got is None, f"{desc}: drift null", f"got {got}")
        if not self.check(isinstance(got, dict), f"{desc}: drift present", f"got {got}"):
            return False
        ok = all(abs(got[k] - exp[k]) <= DRIFT_ATOL + DRIFT_RTOL * abs(exp[k])
                 for k in ("mean_avg", "mean_max", "var_avg", "var_max"))
        # the channel of a maximum: the reference's, unless another is within rounding of it
        for k, arr in (("mean_max_channel", exp["_dm"]), ("var_max_channel", exp["_dv"])):
            c = got[k]
            top = max(arr)
            ok = ok and 0 <= c < len(arr) and (c == exp[k] or abs(arr[c] - top) <= DRIFT_ATOL + 1e-9 * top)
        return self.check(ok, f"{desc}: drift equals the float64 recomputation",
                          f"got {got}, expected { {k: v for k, v in exp.items() if not k.startswith('_')} }")

    def check_history(self, run, ref, layer, scope, channel, desc):
        r = self.get(f"/v1/runs/{run}/history", layer=layer, domain=scope, channel=channel)
        if not self.check_status(r, 200, f"{desc}: GET history"):
            return
        b = r.json()
        exp = ref.history[scope][layer][-K:]
        self.check_eq([s["step"] for s in b["steps"]], [e["step"] for e in exp],
                      f"{desc}: the last {K} steps, oldest first")
        self.check_eq((b["layer"], b["domain"], b["channel"], b["channels"]),
                      (layer, scope, channel, LAYERS[layer]), f"{desc}: names the row")
        for g, e in zip(b["steps"], exp):
            d = f"{desc} step {e['step']}"
            self.check_eq(g["count"], e["count"], f"{d}: count")
            got = [g["batch_mean"], g["batch_var"], g["ema_mean"], g["ema_var"]]
            want = [e["batch_mean"][channel], e["batch_var"][channel], e["ema_mean"][channel],
                    e["ema_var"][channel]]
            self.check_close(got, want, f"{d}: batch mean/var and the EMA after it", rtol=F32_RTOL, atol=1e-30)
            self.check_drift(g["drift"], e["drift"], d)
        pop = ref.population(scope, layer)
        if pop is None:
            self.check(b["population"] is None, f"{desc}: population null", f"got {b['population']}")
        else:
            p = b["population"] or {}
            self.check_close([p.get("mean"), p.get("var")], [pop[0][channel], pop[1][channel]],
                             f"{desc}: population is PreciseBN's value now", rtol=1e-12, atol=1e-15)
            self.check_eq(p.get("num_batches"), ref.batches(scope, layer), f"{desc}: population num_batches")

    def check_rows(self, run, ref, scopes, desc, **query):
        r = self.get(f"/v1/runs/{run}/drift", **query)
        if not self.check_status(r, 200, f"{desc}: GET drift {query}"):
            return None
        b = r.json()
        rows = b["layers"]
        self.check_eq(sorted((x["layer"], x["domain"]) for x in rows),
                      sorted((l, s) for l in LAYERS for s in scopes), f"{desc}: one row per layer and domain")
        for x in rows:
            s, l = x["domain"], x["layer"]
            exp = drift(ref.ema[s][l], ref.population(s, l))
            self.check_drift(x["drift"], exp, f"{desc} {l} {s}")
            self.check_eq((x["channels"], x["num_batches_tracked"], x["last_step"], x["precise_batches"]),
                          (LAYERS[l], ref.ema[s][l].nbt, ref.ema[s][l].step, ref.batches(s, l)),
                          f"{desc} {l} {s}: channels, num_batches_tracked, last_step, precise_batches")
        keys = [(-(x["drift"]["mean_max"]) if x["drift"] else math.inf, x["layer"]) for x in rows]
        self.check(all(keys[i][0] <= keys[i + 1][0] for i in range(len(keys) - 1)),
                   f"{desc}: rows sorted worst first, undefined last", f"{keys}")
        first = rows[0] if rows and rows[0]["drift"] else None
        want = None if first is None else {"layer": first["layer"], "domain": first["domain"],
                                           "mean_max": first["drift"]["mean_max"]}
        self.check_eq(b["worst"], want, f"{desc}: worst is the first row")
        self.check_eq(b["history_steps"], K, f"{desc}: history_steps is --history-steps")
        return b

    def test_two_domains(self):
        run = nsd.run_name("drift")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 4, "momentum": MOMENTUM}).status == 201,
                     "PUT run world_size 4")
        ref = Reference(SCOPES)
        for step in range(9):
            counts = None
            if step == 2:
                counts = {0: 0, 1: 0, 2: 7, 3: 9}  # photo's batches empty: its EMA and PreciseBN stay
            self.feed(run, ref, step, [0, 1, 2, 3], counts,
                      update=("precise",) if step == 6 else None)
        self.check_rows(run, ref, ["photo", "sketch", "*"], "two domains")
        self.check_rows(run, ref, ["photo"], "domain=photo", domain="photo")
        self.check_rows(run, ref, ["*"], "domain=*", domain="*")
        for layer, C in LAYERS.items():
            for scope in SCOPES:
                self.check_history(run, ref, layer, scope, C - 1 if scope == "sketch" else 1,
                                   f"history {layer} {scope}")
        # A reset of photo: its drift is undefined, the pooled population is sketch's.
        self.check_status(self.c.post(f"/v1/runs/{run}/precise/reset", {"domain": "photo"}), 200,
                          "reset photo")
        ref.pop["photo"] = {l: Population() for l in LAYERS}
        self.check_rows(run, ref, ["photo", "sketch", "*"], "after photo reset")
        self.check_history(run, ref, "stem.bn", "photo", 0, "after photo reset, history photo")
        self.check_history(run, ref, "stem.bn", "*", 2, "after photo reset, history *")

        # errors
        base = f"/v1/runs/{run}/history"
        for q, status, field in ((dict(domain="photo"), 400, "layer"),
                                 (dict(layer="nope"), 404, "layer"),
                                 (dict(layer="stem.bn", domain="nope"), 404, "domain"),
                                 (dict(layer="stem.bn", channel=3), 400, "channel"),
                                 (dict(layer="stem.bn", channel="x"), 400, "channel"),
                                 (dict(layer="stem.bn", channel="-1"), 400, "channel"),
                                 (dict(layer="stem.bn", since=1), 400, "since")):
            r = self.get(base, **q)
            self.check(r.status == status and (r.error_message() or "").startswith(field),
                       f"history {q} -> {status} naming {field}", r.short())
        r = self.get(f"/v1/runs/{run}/drift", domain="nope")
        self.check(r.status == 404 and "nope" in (r.error_message() or ""), "drift domain=nope -> 404 naming it",
                   r.short())
        r = self.get("/v1/runs/no-such-run/drift")
        self.check_status(r, 404, "drift of an unknown run", code="not_found")
        r = self.get("/v1/runs/no-such-run/history", layer="stem.bn")
        self.check_status(r, 404, "history of an unknown run", code="not_found")

    def test_one_domain(self):
        run = nsd.run_name("drift1")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 1, "momentum": MOMENTUM}).status == 201,
                     "PUT run world_size 1")
        scopes = {"default": [0], "*": [0]}
        doms = {0: "default", 1: "other"}
        ref = Reference(scopes)
        self.feed(run, ref, 0, [0], counts={0: 1}, domains=doms)  # one sample: no EMA step, PreciseBN undefined
        b = self.check_rows(run, ref, ["default"], "one sample")
        self.check(b is not None and b["worst"] is None, "worst null while no drift is defined")
        for step in range(1, 8):
            self.feed(run, ref, step, [0], domains=doms)
        self.check_rows(run, ref, ["default"], "one domain: no pooled row by default")
        self.check_rows(run, ref, ["*"], "one domain, domain=*", domain="*")
        for scope in scopes:
            self.check_history(run, ref, "layer1.0.bn1", scope, 4, f"one domain, history {scope}")
        # The pooled history reads the domain's: the same answer but for the name.
        a = self.get(f"/v1/runs/{run}/history", layer="stem.bn").json()
        d = self.get(f"/v1/runs/{run}/history", layer="stem.bn", domain="default").json()
        self.check(a["steps"] == d["steps"] and a["domain"] == "*", "pooled history equals the domain's")
        # A second domain appears: the pooled row gets its own history, from the domain's.
        scopes2 = {"default": [0], "other": [1], "*": [0, 1]}
        self.check_status(self.c.put(f"/v1/runs/{run}", {"world_size": 2}), 200, "world_size 2")
        ref2 = Reference(scopes2)
        for s in ("default", "*"):
            for l in LAYERS:
                ref2.ema[s][l], ref2.history[s][l] = ref.ema[s][l], ref.history[s][l]
        ref2.pop["default"] = ref.pop["default"]
        for step in range(8, 11):
            self.feed(run, ref2, step, [0, 1], domains=doms)
        self.check_rows(run, ref2, ["default", "other", "*"], "second domain")
        for scope in scopes2:
            self.check_history(run, ref2, "stem.bn", scope, 0, f"second domain, history {scope}")

    def test_debiased_ema(self):
        """With ema_debias the drift and the history take the EMA as served:
        the debiased view."""
        run = nsd.run_name("debias")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 1, "momentum": MOMENTUM,
                                                    "ema_debias": True}).status == 201, "PUT run ema_debias")
        scopes = {"default": [0], "*": [0]}
        ref = Reference(scopes, debias=True)
        for step in range(4):
            self.feed(run, ref, step, [0], domains={0: "default"})
        self.check_rows(run, ref, ["default"], "debiased")
        self.check_history(run, ref, "stem.bn", "default", 1, "debiased history")


class NoHistory(nsd.Case):
    DAEMON_ARGS = ("--history-steps", "0")

    def test_no_history(self):
        run = nsd.run_name("nohist")
        rng = np.random.default_rng(7)
        for step in range(3):
            reps, _ = make_step(rng, step, [0], domains={0: "default"})
            self.require(self.c.report(run, reps[0]).status == 202, f"report step {step}")
        r = self.c.get(f"/v1/runs/{run}/drift")
        self.check(r.status == 200 and r.json()["history_steps"] == 0
                   and all(x["drift"] is not None for x in r.json()["layers"]),
                   "--history-steps 0: drift still served", r.short())
        r = self.c.get(f"/v1/runs/{run}/history?layer=stem.bn")
        self.check(r.status == 200 and r.json()["steps"] == [] and r.json()["population"] is not None,
                   "--history-steps 0: no steps kept", r.short())


    def test_memory_budget(self):
        """History is counted in --max-memory: its rings are in the run's
        memory_bytes (one per layer for a run of one domain), and when the
        budget has no room for them the reports are still accepted and no step
        is recorded."""
        run = "budget"
        rng = np.random.default_rng(9)
        reps = [make_step(rng, s, [0], domains={0: "default"})[0][0] for s in range(3)]

        def feed(client):
            for rep in reps:
                self.require(client.report(run, rep).status == 202, f"report step {rep['step']}")
            return client.get(f"/v1/runs/{run}").json()["status"]["memory_bytes"]

        m0 = feed(self.c)  # this daemon keeps no history
        hist_k = 1024
        # doc/design.md: 16 C K + 72 K + 48 C bytes and a header (< 128) per ring
        need = sum(16 * C * hist_k + 72 * hist_k + 48 * C for C in LAYERS.values())
        # A report also reserves its body and what decoding it may allocate
        # until it is answered (about 12 KiB here): TRANSIENT leaves room for
        # that, and with K = 1024 the smallest ring (16 C K + 72 K + 48 C, over
        # 120 KiB) is far beyond it.
        transient = 32768
        for budget, kept in ((m0 + transient, False), (m0 + need + transient, True)):
            d = nsd.Daemon("--history-steps", str(hist_k), "--max-memory", str(budget)).start()
            try:
                c = d.client()
                m = feed(c)
                steps = c.get(f"/v1/runs/{run}/history?layer=stem.bn").json()["steps"]
                drift_rows = c.get(f"/v1/runs/{run}/drift").json()["layers"]
                if kept:
                    self.check(len(steps) == 3 and need <= m - m0 < need + 128 * len(LAYERS),
                               f"budget {budget}: history kept and counted in memory_bytes",
                               f"{len(steps)} steps, memory {m} = {m0} + {m - m0}, rings {need}")
                else:
                    self.check(steps == [] and m == m0 and all(x["drift"] for x in drift_rows),
                               f"budget {budget}: no room for history, reports accepted, drift served",
                               f"{len(steps)} steps, memory {m} vs {m0}")
                self.check(m <= budget, f"memory_bytes {m} within --max-memory {budget}")
                c.close()
            finally:
                self.check_eq(d.stop(), 0, "budget daemon exits 0 on SIGTERM")


if __name__ == "__main__":
    nsd.main()
