"""test_api_domains.py - per-domain and pooled statistics, mixtures, scope, PreciseBN resets.

Two domains ("photo" on workers 0 and 1, "sketch" on workers 2 and 3) of
one run: per-domain EMA and PreciseBN, the pooled "*" EMA (of all arrivals
combined) and pooled PreciseBN (every sample), mixtures by the formula of doc/design.md
from independently computed per-domain values, /sync scope "domain", and
PreciseBN generations (reset; update ["precise"] leaves EMA alone).
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
from test_api_sync import LAYERS, SYNC_TIMEOUT_S, concat, global_ref, make_step, reports  # noqa: E402

DOMAIN = {0: "photo", 1: "photo", 2: "sketch", 3: "sketch"}
WORKERS = {"photo": [0, 1], "sketch": [2, 3], "*": [0, 1, 2, 3]}


def domain_reports(step, data, scopes=None, **extra):
    reps = reports(step, data, **extra)
    for w, r in enumerate(reps):
        r["domain"] = DOMAIN[w]
        if scopes and scopes.get(w):
            r["scope"] = scopes[w]
    return reps


class Domains(nsd.Case):

    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(31)

    def served(self, run, **q):
        r = self.c.stats(run, **q)
        self.check_status(r, 200, f"GET stats {q}")
        return r.json() if r.status == 200 else {"layers": {}}

    def feed(self, run, data_steps, first_step, refs, update=None, sync=False):
        """Report the steps (all 4 workers) and update the references."""
        for i, data in enumerate(data_steps):
            s = first_step + i
            extra = {"update": update} if update else {}
            reps = domain_reports(s, data, **extra)
            for rep in reps:
                self.check_status(self.c.report(run, rep), 202, f"/batches step {s} worker {rep['worker']}")
            for dom, ws in WORKERS.items():
                for l in LAYERS:
                    if update is None or "ema" in update:
                        refs["ema"][dom][l].apply(*global_ref(data, l, ws))
                    if update is None or "precise" in update:
                        x = concat(data, l, ws)
                        if x.shape[0]:
                            refs["pool"][dom][l].add(x)

    def check_all(self, run, refs, desc, ema=True):
        for dom in ("photo", "sketch", "*"):
            if ema:
                b = self.served(run, source="ema", domain=dom)
                for l in LAYERS:
                    e = refs["ema"][dom][l]
                    got = b["layers"].get(l, {})
                    self.check_eq(got.get("num_batches_tracked"), e.nbt, f"{desc} ema {dom} {l}: num_batches_tracked")
                    self.check_close(got.get("running_mean", []), e.mean, f"{desc} ema {dom} {l}: running_mean")
                    self.check_close(got.get("running_var", []), e.var, f"{desc} ema {dom} {l}: running_var")
            for biased in (False, True):
                q = {"source": "precise", "domain": dom}
                if biased:
                    q["variance"] = "biased"
                b = self.served(run, **q)
                for l in LAYERS:
                    n, mean, var = refs["pool"][dom][l].values(biased=biased)
                    got = b["layers"].get(l, {})
                    self.check_eq(got.get("num_samples"), n, f"{desc} precise {dom} {l}: num_samples")
                    self.check_close(got.get("running_mean", []), mean, f"{desc} precise {dom} {l}: mean of all samples")
                    self.check_close(got.get("running_var", []), var,
                                     f"{desc} precise{' biased' if biased else ''} {dom} {l}: var of all samples")
        # mixtures, from the per-domain references
        for src in ("ema", "precise"):
            layers07 = self.served(run, source=src, mixture="photo:0.7,sketch:0.3")["layers"]
            layers73 = self.served(run, source=src, mixture="photo:7,sketch:3")["layers"]
            for l in LAYERS:
                parts = []
                for dom, w in (("photo", 0.7), ("sketch", 0.3)):
                    if src == "ema":
                        mu, var = refs["ema"][dom][l].mean, refs["ema"][dom][l].var
                    else:
                        _, mu, var = refs["pool"][dom][l].values()
                    parts.append((w, mu, var))
                mean, var = nsd.mixture(parts)
                got = layers07.get(l, {})
                self.check_close(got.get("running_mean", []), mean, f"{desc} mixture {src} {l}: mean = sum w mu")
                self.check_close(got.get("running_var", []), var,
                                 f"{desc} mixture {src} {l}: var = sum w (sigma^2 + mu^2) - mean^2")
                self.check(layers73.get(l, {}).get("running_mean") == got.get("running_mean")
                           and layers73.get(l, {}).get("running_var") == got.get("running_var"),
                           f"{desc} mixture {src} {l}: weights 7:3 are normalised (same values as 0.7:0.3)")

    def new_refs(self):
        return {"ema": {d: {l: nsd.Ema(c) for l, c in LAYERS.items()} for d in WORKERS},
                "pool": {d: {l: nsd.Pool() for l in LAYERS} for d in WORKERS}}

    def test_domains_scope_and_mixtures(self):
        run = nsd.run_name("dom")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 4}).status == 201, "create world 4")
        refs = self.new_refs()
        plan = [[10, 7, 12, 5], [6, 9, 8, 11], [14, 3, 0, 0], [5, 5, 9, 1]]
        scopes = {0: "domain", 2: "domain"}
        for s, sizes in enumerate(plan, start=1):
            data = make_step(self.rng, sizes)
            reps = domain_reports(s, data, scopes)
            clients = [self.client(timeout=SYNC_TIMEOUT_S) for _ in reps]
            res, errs = nsd.parallel([lambda c=c, r=r: c.report(run, r, sync=True) for c, r in zip(clients, reps)],
                                     limit=SYNC_TIMEOUT_S + 5)
            for w, (a, e) in enumerate(zip(res, errs)):
                self.require(e is None, f"step {s} worker {w}: /sync answered", repr(e))
                self.check_status(a, 200, f"step {s} worker {w} ({DOMAIN[w]}, scope {scopes.get(w, 'global')})")
                ws = WORKERS[DOMAIN[w]] if scopes.get(w) else WORKERS["*"]
                for l in LAYERS:
                    got = a.json().get("layers", {}).get(l, {})
                    n, mean, var = global_ref(data, l, ws)
                    self.check_eq(got.get("count"), n, f"step {s} worker {w} {l}: count of its scope")
                    if n:
                        self.check_close(got.get("mean", []), mean, f"step {s} worker {w} {l}: mean of its scope")
                        self.check_close(got.get("var", []), var, f"step {s} worker {w} {l}: var of its scope")
            for dom, ws in WORKERS.items():
                for l in LAYERS:
                    refs["ema"][dom][l].apply(*global_ref(data, l, ws))
                    x = concat(data, l, ws)
                    if x.shape[0]:
                        refs["pool"][dom][l].add(x)
        self.check_eq([refs["ema"][d]["layer1.0.bn1"].nbt for d in ("photo", "sketch", "*")], [4, 3, 4],
                      "(self-check) sketch had an empty step")
        self.check_all(run, refs, "4 steps")
        b = self.served(run, source="precise", domain="photo")
        self.check(all(x.get("num_batches") == 4 for x in b["layers"].values()), "precise photo: num_batches 4",
                   f"{b['layers']}")
        st = self.c.get(f"/v1/runs/{run}").json().get("status", {})
        doms = sorted(d.get("domain") if isinstance(d, dict) else d for d in st.get("domains", []))
        self.check_eq(doms, ["photo", "sketch"], "GET run lists the two domains")

    def test_default_domain(self):
        run = nsd.run_name("defdom")
        for s in (1, 2):
            data = make_step(self.rng, [9])
            self.check_status(self.c.report(run, reports(s, data)[0]), 202, f"step {s} without a domain")
        a = self.served(run, domain="default")
        b = self.served(run, domain="*")
        self.check(a["layers"] == b["layers"] and a["layers"], "domain=default serves what * serves")
        self.check_eq(a.get("domain"), "default", "the answer names domain default")

    def test_precise_reset_generations(self):
        run = nsd.run_name("reset")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 4}).status == 201, "create world 4")
        refs = self.new_refs()
        self.feed(run, [make_step(self.rng, [8, 9, 10, 11]) for _ in range(2)], 1, refs)
        g0 = self.c.get(f"/v1/runs/{run}").json().get("status", {}).get("precise_generation")
        ema_before = {d: self.c.stats(run, source="ema", domain=d).body for d in ("photo", "sketch", "*")}
        r = self.c.post(f"/v1/runs/{run}/precise/reset", {})
        self.check_status(r, 200, "POST precise/reset {}")
        g1 = r.json().get("generation") if r.status == 200 else None
        self.check(isinstance(g1, int) and isinstance(g0, int) and g1 > g0,
                   f"reset returns a new generation number ({g0} -> {g1})")
        # a fresh generation: precise values only from steps after the reset
        refs["pool"] = {d: {l: nsd.Pool() for l in LAYERS} for d in WORKERS}
        self.feed(run, [make_step(self.rng, [5, 12, 7, 6]) for _ in range(2)], 3, refs, update=["precise"])
        ema_after = {d: self.c.stats(run, source="ema", domain=d).body for d in ("photo", "sketch", "*")}
        self.check(ema_before == ema_after, "update [precise] reports leave every EMA byte-identical")
        self.check_all(run, refs, "after reset + 2 precise-only steps")
        b = self.served(run, source="precise", domain="photo")
        self.check(all(x.get("num_batches") == 2 for x in b["layers"].values()),
                   "precise photo: num_batches 2 in the new generation", f"{b['layers']}")
        g = self.c.get(f"/v1/runs/{run}").json().get("status", {}).get("precise_generation")
        self.check_eq(g, g1, "GET run shows the new precise generation")
        # one domain only
        r = self.c.post(f"/v1/runs/{run}/precise/reset", {"domain": "photo"})
        self.check_status(r, 200, "POST precise/reset {domain: photo}")
        g2 = r.json().get("generation") if r.status == 200 else None
        self.check(isinstance(g2, int) and g2 > g1, f"domain reset gets a new number ({g1} -> {g2})")
        refs["pool"]["photo"] = {l: nsd.Pool() for l in LAYERS}
        data = make_step(self.rng, [7, 7, 7, 7])
        self.feed(run, [data], 5, refs, update=["precise"])
        for dom in ("photo", "sketch"):
            b = self.served(run, source="precise", domain=dom)
            for l in LAYERS:
                n, mean, var = refs["pool"][dom][l].values()
                got = b["layers"].get(l, {})
                self.check(got.get("num_samples") == n and nsd.max_err(got.get("running_var", []), var) <= 1
                           and nsd.max_err(got.get("running_mean", []), mean) <= 1,
                           f"after photo reset, precise {dom} {l}: {'step 5 only' if dom == 'photo' else 'steps 3-5'}",
                           f"{got} vs n={n}")
            if dom == "photo":
                self.check_eq(b.get("generation"), g2, "precise photo answer names generation g2")
        # pooled precise is the exact merge of the domains' accumulators
        pooled = nsd.Pool()
        for dom in ("photo", "sketch"):
            pooled.parts += refs["pool"][dom]["layer1.0.bn1"].parts
        n, mean, var = pooled.values()
        got = self.served(run, source="precise", domain="*")["layers"].get("layer1.0.bn1", {})
        self.check(got.get("num_samples") == n and nsd.max_err(got.get("running_var", []), var) <= 1,
                   "pooled precise merges the domains' current generations", f"{got} vs n={n}")
        self.check_status(self.c.post("/v1/runs/no-such-run/precise/reset", {}), 404, "reset of an unknown run",
                          code="not_found")
        before = self.snapshot(run)
        self.check_status(self.c.post(f"/v1/runs/{run}/precise/reset", {"domain": "bad name"}), 400,
                          "reset with a bad domain name", code="bad_request")
        self.check_unchanged(before, run, "bad reset")


if __name__ == "__main__":
    nsd.main()
