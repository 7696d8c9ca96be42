"""test_relay.py - node-level relays (normstatd --upstream) against direct reporting.

Eight workers report the same steps three times: directly to one normstatd
(world size 8), and twice as 2 nodes x 4 local workers through two relays
(--local-world-size 4) in front of another normstatd
(world size 2, the relays): once with F64 forwarding and --relay-rank 0/1
(workers send local ranks), once with --relay-f32 and no --relay-rank
(workers send global ranks and world_size; the relays derive their node and
create the upstream run with world size 2). Steps have uneven counts, empty batches (count 0,
with and without arrays, one node entirely empty), two domains (one per node
and step, and both nodes on one domain), /sync and /batches, scope global
and domain.

What must agree (doc/design.md, "Relays"), against an independent exact
reference (Fractions over the float32 arrivals) and between the paths:
 * counts, numbers of batches and samples, steps: equal everywhere;
 * F64 relays: the node's double combination is combined upstream in
   double, so every served double (the checkpoints: EMA, PreciseBN, last)
   is within rtol 1e-12 of direct reporting, and every float32 answer
   (/sync, stats) is bitwise equal, except where the exact value lies on a
   float32 rounding boundary to within 1e-12 (then one unit apart);
 * F32 relays (--relay-f32): the node is rounded once to float32, so values
   agree within NODE_RTOL of their scale (mean: |mean| + std, var: var +
   |mean| std).
The same with two tiers: the node relays' upstream is a relay (a rack's,
--local-world-size 2) in front of a daemon whose run has world size 1,
both nodes on one domain per step (a relay forwards one domain a step).
A node step missing a local worker is forwarded after --relay-timeout with
the others; a relay with a token requires it and sends it upstream. Then: a killed relay is the worker the upstream's stall report waits for,
and a relay whose upstream is down counts failures in its metrics, marks
the upstream down, and recovers (forwards, upstream up) when it is back.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

LAYERS = {"bn.a": 24, "bn.b": 7}
NODES, LOCAL = 2, 4
WORLD = NODES * LOCAL
SYNC_TIMEOUT_MS = 30000
# Relative to the scale of the values: a node arrival's float32 rounding
# (2^-24) can move the global statistics by a few units of it.
NODE_RTOL = 2e-6
# Paths whose relays have --relay-rank: their workers send local ranks. The
# f32 relays have none: their workers send global ranks and world_size.
LOCAL_RANKS = ("f64", "chain")


def node_of(w):
    return w // LOCAL


# step -> (domain of node 0, domain of node 1, path, scope)
PLAN = {
    0: ("photo", "sketch", "sync", None),
    1: ("photo", "photo", "sync", None),
    2: ("sketch", "sketch", "sync", None),
    3: ("sketch", "photo", "batches", None),
    4: ("photo", "sketch", "sync", "domain"),
    5: ("sketch", "sketch", "sync", None),
}


def counts(step, rng):
    c = [int(v) for v in rng.integers(1, 40, size=WORLD)]
    if step == 1:
        c[2] = 0          # one empty batch
        c[6] = 1
    if step == 2:
        c[4:8] = [0, 0, 0, 0]  # node 1 entirely empty
    if step == 3:
        c[5] = 1
        c[0] = 0
    if step == 5:
        c[1], c[7] = 0, 0
    return c


def make_data(rng):
    """data[step][w][layer] = (n, mean f32 list, var f32 list or None)."""
    data = {}
    for s in PLAN:
        cs = counts(s, rng)
        data[s] = []
        for w in range(WORLD):
            per = {}
            for l, C in LAYERS.items():
                n = cs[w]
                off = 50.0 * (1 + node_of(w)) + w
                mean = nsd.f32_list(off + rng.normal(0, 3, C))
                var = nsd.f32_list(rng.uniform(0.1, 4, C))
                omit = n == 0 and w == 2  # an empty batch without arrays
                per[l] = (n, None if omit else mean, None if omit else var)
            data[s].append(per)
    return data


def report(s, w, per, local, plan=PLAN):
    dom = plan[s][node_of(w)]
    rep = {"step": s, "worker": (w % LOCAL) if local else w, "domain": dom, "layers": {},
           "world_size": WORLD}
    if plan[s][3]:
        rep["scope"] = plan[s][3]
    for l, (n, mean, var) in per.items():
        body = {"count": n}
        if mean is not None:
            body.update(mean=mean, var=var)
        rep["layers"][l] = body
    return rep


def reference(data, s, l, workers):
    arr = [(data[s][w][l][0], data[s][w][l][1], data[s][w][l][2]) for w in workers
           if data[s][w][l][0] > 0]
    return nsd.combine(arr)


def scale_err(got, exp, ref_mean, ref_var, kind):
    """Largest |got - exp| over the channels, relative to the values' scale."""
    worst = 0.0
    for c in range(len(exp)):
        sc = abs(ref_mean[c]) + abs(ref_var[c]) ** 0.5 if kind == "mean" else \
            abs(ref_var[c]) + abs(ref_mean[c]) * abs(ref_var[c]) ** 0.5
        worst = max(worst, abs(got[c] - exp[c]) / max(sc, 1e-30))
    return worst


def start_relays(up, extra=(), ranked=True):
    """Relays with --relay-rank and --relays (workers send local ranks), or
    without (workers send global ranks and world_size; the relay derives both)."""
    return [nsd.Daemon("--upstream", f"http://127.0.0.1:{up.port}", "--local-world-size",
                       str(LOCAL), "--relay-timeout", "20000", *extra,
                       *(("--relay-rank", str(r), "--relays", str(NODES)) if ranked else ()),
                       name=f"relay{r}").start()
            for r in range(NODES)]


def ulp_apart_at_boundary(got, exp_exact):
    """got (float32) is one unit from float32(exact), and the exact value lies
    within 1e-12 of the midpoint of the two: a double rounding may fall
    either way there."""
    a, b = np.float32(got), np.float32(exp_exact)
    if a == b:
        return True
    if np.nextafter(a, b) != b:
        return False
    mid = (float(a) + float(b)) / 2
    return abs(exp_exact - mid) <= 1e-12 * abs(exp_exact)


class Relays(nsd.Case):

    @classmethod
    def setUpClass(cls):
        cls.daemon = nsd.Daemon(name="direct").start()
        cls.c = cls.daemon.client()
        cls.up = nsd.Daemon(name="upstream").start()
        cls.relays = start_relays(cls.up)
        cls.up32 = nsd.Daemon(name="upstream-f32").start()
        cls.relays32 = start_relays(cls.up32, ["--relay-f32"], ranked=False)
        # two tiers: the node relays' upstream is a relay whose workers they are
        cls.up2 = nsd.Daemon(name="upstream-chain").start()
        cls.hub = nsd.Daemon("--upstream", f"http://127.0.0.1:{cls.up2.port}", "--relay-rank",
                             "0", "--local-world-size", str(NODES), "--relays", "1",
                             "--relay-timeout", "20000", name="hub").start()
        cls.relays2 = start_relays(cls.hub)

    @classmethod
    def tearDownClass(cls):
        for d in cls.relays + cls.relays32 + cls.relays2 + [cls.hub, cls.up, cls.up32, cls.up2]:
            if d.alive():
                d.stop()
        super().tearDownClass()

    def path_clients(self, relays):
        out = []
        for w in range(WORLD):
            cl = relays[node_of(w)].client(timeout=40)
            self._clients.append(cl)
            out.append(cl)
        return out

    def drive(self, run, data, clients, plan=PLAN):
        """Every step to every path at once; returns answers[step][path][w]."""
        answers = {}
        for s in sorted(plan):
            path = plan[s][2]
            fns, keys = [], []
            for name, cls in clients.items():
                for w in range(WORLD):
                    rep = report(s, w, data[s][w], name in LOCAL_RANKS, plan)
                    fns.append(lambda c=cls[w], rep=rep: c.report(run, rep, sync=path == "sync"))
                    keys.append((name, w))
            res, errs = nsd.parallel(fns, limit=40)
            self.require(not any(errs), f"step {s}: every {path} request answered",
                         str([e for e in errs if e][:2]))
            exp = 200 if path == "sync" else 202
            bad = [(k, r.short(200)) for k, r in zip(keys, res) if r.status != exp]
            self.require(not bad, f"step {s}: all {len(res)} {path} requests -> {exp}",
                         str(bad[:2]))
            answers[s] = {name: [None] * WORLD for name in clients}
            for (name, w), r in zip(keys, res):
                answers[s][name][w] = r.json()
        return answers

    def check_sync(self, data, answers, plan=PLAN):
        paths = [p for p in answers[0] if p != "direct"]
        worst, same = 0.0, {p: [0, 0] for p in paths}
        for s, (d0, d1, path, scope) in plan.items():
            if path != "sync":
                continue
            for w in range(WORLD):
                dom = plan[s][node_of(w)]
                ws = [v for v in range(WORLD) if scope is None or plan[s][node_of(v)] == dom]
                a_d = answers[s]["direct"][w]
                for l in LAYERS:
                    N, mean, var = reference(data, s, l, ws)
                    ld = a_d["layers"][l]
                    md, vd = nsd.f32_list(ld["mean"]), nsd.f32_list(ld["var"])
                    if N > 0:
                        self.check(md == nsd.f32_list(mean) and vd == nsd.f32_list(var),
                                   f"step {s} worker {w} {l}: direct /sync = float32(exact)")
                    for name in paths:
                        a_r = answers[s][name][w]
                        lr = a_r["layers"][l]
                        mr, vr = nsd.f32_list(lr["mean"]), nsd.f32_list(lr["var"])
                        self.check(a_r["complete"] is True and ld["count"] == N and
                                   lr["count"] == N, f"step {s} worker {w} {l} {name}: "
                                   f"complete, count {N} on both paths",
                                   f"direct {ld['count']} relay {lr['count']}")
                        same[name][0] += sum(a == b for a, b in zip(md + vd, mr + vr))
                        same[name][1] += len(md + vd)
                        if N == 0:
                            self.check(mr == md and vr == vd,
                                       f"step {s} worker {w} {l} {name}: empty, equal zeros")
                        elif name != "f32":
                            ok = all(ulp_apart_at_boundary(g, e) for g, e in
                                     zip(mr + vr, mean + var))
                            self.check(ok, f"step {s} worker {w} {l} {name}: float32 bitwise equal "
                                       "to direct (but at a rounding boundary)",
                                       f"{mr[:3]} {md[:3]}")
                        else:
                            e = max(scale_err(mr, mean, mean, var, "mean"),
                                    scale_err(vr, var, mean, var, "var"))
                            worst = max(worst, e)
                            self.check(e <= NODE_RTOL, f"step {s} worker {w} {l} f32: within "
                                       f"{NODE_RTOL:g} of exact (scaled err {e:.2g})")
        for name, (eq, n) in same.items():
            print(f"note /sync through {name} relays: {eq} of {n} float32 values bitwise equal "
                  "to direct reporting")
        if "f32" in paths:
            print(f"note /sync through f32 relays: largest scaled error {worst:.3g}")

    def check_stats(self, run, up, name):
        for src in ("ema", "precise", "last"):
            for dom in ("*", "photo", "sketch"):
                rd = self.c.stats(run, source=src, domain=dom)
                ru = up.stats(run, source=src, domain=dom)
                self.check(rd.status == 200 and ru.status == 200,
                           f"{name} stats {src} {dom}: 200 on both")
                if rd.status != 200 or ru.status != 200:
                    continue
                jd, ju = rd.json(), ru.json()
                self.check_eq(sorted(ju["layers"]), sorted(jd["layers"]),
                              f"{name} stats {src} {dom}: same layers")
                for l in jd["layers"]:
                    Ld, Lu = jd["layers"][l], ju["layers"].get(l, {})
                    ints = {k: v for k, v in Ld.items() if isinstance(v, int)}
                    self.check_eq({k: Lu.get(k) for k in ints}, ints,
                                  f"{name} stats {src} {dom} {l}: counts and steps equal")
                    md, vd = nsd.served(Ld)
                    mu, vu = nsd.served(Lu)
                    if name != "f32":
                        # bitwise unless a double sits on a float32 boundary: one unit apart
                        apart = [(a, b) for a, b in zip(mu + vu, md + vd)
                                 if np.float32(a) != np.float32(b)]
                        near = all(np.nextafter(np.float32(a), np.float32(b)) == np.float32(b)
                                   for a, b in apart)
                        self.check(len(apart) <= 2 and near, f"{name} stats {src} {dom} {l}: "
                                   f"float32 equal to direct ({len(apart)} one unit apart)",
                                   str(apart[:3]))
                    else:
                        e = max(scale_err(mu, md, md, vd, "mean"),
                                scale_err(vu, vd, md, vd, "var"))
                        self.check(e <= NODE_RTOL, f"f32 stats {src} {dom} {l}: within "
                                   f"{NODE_RTOL:g} (scaled err {e:.2g})")

    def check_checkpoints(self, run, up, name):
        """Every double of an F64 path's checkpoint within rtol 1e-12 of direct."""
        a = self.c.get(f"/v1/runs/{run}/checkpoint").json()
        b = up.get(f"/v1/runs/{run}/checkpoint").json()
        for k in ("config", "run"):
            a.pop(k, None)
            b.pop(k, None)
        # Domains are numbered as they first arrive, which concurrent workers decide.
        for c in (a, b):
            c["domains"] = sorted(c.get("domains", []), key=lambda d: d["domain"])
        diffs, worst, n = [], 0.0, [0]

        def walk(x, y, path):
            if isinstance(x, dict):
                if sorted(x) != sorted(y if isinstance(y, dict) else {}):
                    diffs.append(f"{path}: keys {sorted(x)} vs {y}")
                    return
                for k in x:
                    walk(x[k], y[k], f"{path}.{k}")
            elif isinstance(x, list):
                if not isinstance(y, list) or len(x) != len(y):
                    diffs.append(f"{path}: lengths")
                    return
                for i, (u, v) in enumerate(zip(x, y)):
                    walk(u, v, f"{path}[{i}]")
            elif isinstance(x, float) or isinstance(y, float):
                n[0] += 1
                err = abs(x - y) / max(abs(x), abs(y), 1e-300)
                nonlocal worst
                worst = max(worst, err)
                if err > 1e-12:
                    diffs.append(f"{path}: {x!r} vs {y!r}")
            elif x != y:
                diffs.append(f"{path}: {x!r} vs {y!r}")
        walk(a, b, "checkpoint")
        self.check(not diffs and n[0] > 500, f"{name} checkpoint: {n[0]} doubles within rtol "
                   f"1e-12 of direct (largest {worst:.2g}), integers equal", str(diffs[:4]))
        print(f"note {name} checkpoint: largest relative difference {worst:.3g} over {n[0]} "
              "doubles")

    def test_relayed_equals_direct(self):
        run = nsd.run_name("relay")
        ups = {}
        for name, d in (("f64", self.up), ("f32", self.up32)):
            ups[name] = d.client()
            self._clients.append(ups[name])
        self.check_status(self.c.put(f"/v1/runs/{run}", {"world_size": WORLD,
                          "sync_timeout_ms": SYNC_TIMEOUT_MS}), 201, "PUT direct run", must=True)
        self.check_status(ups["f64"].put(f"/v1/runs/{run}", {"world_size": NODES,
                          "sync_timeout_ms": SYNC_TIMEOUT_MS}), 201, "PUT f64 upstream run",
                          must=True)
        # the f32 upstream's run is created by its relays' first report
        data = make_data(np.random.default_rng(14))
        answers = self.drive(run, data, {"direct": [self.client(timeout=40) for _ in range(WORLD)],
                                         "f64": self.path_clients(self.relays),
                                         "f32": self.path_clients(self.relays32)})
        self.check_sync(data, answers)
        cfg = ups["f32"].get(f"/v1/runs/{run}").json().get("config", {})
        self.check_eq(cfg.get("world_size"), NODES, "relays without --relay-rank: the run they "
                      "created has world_size = the workers' world_size / --local-world-size")
        for name, up in ups.items():
            self.check_stats(run, up, name)
        self.check_checkpoints(run, ups["f64"], "f64")
        # the relay keeps no runs: it points at its upstream
        r = self.relays[0].client()
        self._clients.append(r)
        self.check_status(r.get(f"/v1/runs/{run}"), 404, "GET run on a relay", code="not_found")
        m = r.get("/metrics").body.decode()
        self.check("normstat_relay_enabled 1" in m and "normstat_relay_forwarded_total 6" in m,
                   "relay metrics: enabled, 6 node steps forwarded", m[-600:])

    def test_two_tiers(self):
        """Node relays whose upstream is a relay (a rack's): the same statistics.
        A relay forwards one domain per step, so here both nodes share it."""
        run = nsd.run_name("chain")
        up = self.up2.client()
        self._clients.append(up)
        self.check_status(self.c.put(f"/v1/runs/{run}", {"world_size": WORLD,
                          "sync_timeout_ms": SYNC_TIMEOUT_MS}), 201, "PUT direct run", must=True)
        self.check_status(up.put(f"/v1/runs/{run}", {"world_size": 1,
                          "sync_timeout_ms": SYNC_TIMEOUT_MS}), 201, "PUT top run", must=True)
        plan = {s: (d0, d0, path, scope) for s, (d0, d1, path, scope) in PLAN.items()}
        data = make_data(np.random.default_rng(41))
        answers = self.drive(run, data, {"direct": [self.client(timeout=40) for _ in range(WORLD)],
                                         "chain": self.path_clients(self.relays2)}, plan)
        self.check_sync(data, answers, plan)
        self.check_stats(run, up, "chain")
        self.check_checkpoints(run, up, "chain")

    def test_partial_node(self):
        """A node step whose 4th worker never reports is forwarded after
        --relay-timeout with the other three; their /sync gets the upstream's
        answer over those three."""
        relay = nsd.Daemon("--upstream", f"http://127.0.0.1:{self.up32.port}", "--relay-rank", "0",
                           "--local-world-size", str(LOCAL), "--relay-timeout", "300",
                           name="relay-partial").start()
        try:
            run = nsd.run_name("partial")
            up = self.up32.client()
            self._clients.append(up)
            self.check_status(up.put(f"/v1/runs/{run}", {"world_size": 1}), 201,
                              "PUT upstream run (one relay)", must=True)
            rng = np.random.default_rng(5)
            arrivals = [(int(rng.integers(1, 30)), nsd.f32_list(rng.normal(4, 2, 7)),
                         nsd.f32_list(rng.uniform(0.5, 2, 7))) for _ in range(3)]
            cls = [relay.client(timeout=20) for _ in range(3)]
            self._clients.extend(cls)
            fns = [lambda lw=lw, a=a: cls[lw].report(run, {
                "step": 1, "worker": lw, "layers": {"bn": {"count": a[0], "mean": a[1],
                                                           "var": a[2]}}}, sync=True)
                for lw, a in enumerate(arrivals)]
            res, errs = nsd.parallel(fns, limit=20)
            self.require(not any(errs) and all(r.status == 200 for r in res),
                         "three of four local workers: /sync answered 200",
                         str([r.short(200) for r in res if r is not None]))
            N, mean, var = nsd.combine(arrivals)
            for lw, r in enumerate(res):
                L = r.json()["layers"]["bn"]
                self.check(L["count"] == N and all(ulp_apart_at_boundary(g, e) for g, e in
                           zip(nsd.f32_list(L["mean"]) + nsd.f32_list(L["var"]), mean + var)),
                           f"local worker {lw}: the combination of the three that arrived")
            text = cls[0].get("/metrics").body.decode()
            self.check("normstat_relay_partial_total 1" in text,
                       "relay metrics: one node step forwarded partial")
            # without --relay-rank the worker field is the global rank: node 1's
            # rank 5 is refused by the relay collecting node 0's step
            lay = {"bn": {"count": 2, "mean": [1.0] * 7, "var": [1.0] * 7}}
            self.check_status(cls[0].report(run, {"step": 2, "worker": 1, "layers": lay}), 202,
                              "step 2 rank 1 (node 0)")
            self.check_status(cls[0].report(run, {"step": 2, "worker": 5, "layers": lay}), 409,
                              "step 2 rank 5 (node 1) at node 0's relay",
                              code="worker_out_of_range")
        finally:
            relay.stop()

    def test_relay_token(self):
        """With a token, a relay requires it of its workers and sends it upstream."""
        env = dict(os.environ, NORMSTAT_AUTH_TOKEN="relay-secret")
        up = nsd.Daemon(name="upstream-auth", env=env).start()
        relay = nsd.Daemon("--upstream", f"http://127.0.0.1:{up.port}", "--relays", "1",
                           name="relay-auth", env=env).start()
        try:
            c = relay.client()
            self._clients.append(c)
            rep = {"step": 0, "worker": 0, "layers": {"bn": {"count": 3, "mean": [1.0],
                                                             "var": [0.5]}}}
            self.check_status(c.report("auth", rep, sync=True), 401,
                              "relay: /sync without the token", code="unauthorized")
            auth = {"Authorization": "Bearer relay-secret"}
            r = c.report("auth", rep, sync=True, headers=auth)
            self.check(r.status == 200 and r.json()["layers"]["bn"]["count"] == 3,
                       "relay: /sync with the token answered by the upstream", r.short(300))
            u = up.client()
            self._clients.append(u)
            self.check_status(u.get("/v1/runs/auth", headers=auth), 200,
                              "upstream: the run the relay's token created")
        finally:
            relay.stop()
            up.stop()

    def test_relay_keeps_no_store(self):
        import subprocess
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            p = subprocess.run([nsd.binary_path(), "--upstream", "http://127.0.0.1:9",
                                "--data-dir", tmp, "--listen", "127.0.0.1:0"],
                               capture_output=True, timeout=10)
            err = p.stderr.decode()
            self.check(p.returncode == 2 and "--data-dir" in err and "relay" in err,
                       "a relay given a --data-dir refuses to start (exit 2, names --data-dir)",
                       f"exit {p.returncode}: {err[:200]}")
            self.check(os.listdir(tmp) == [], "nothing written to the data directory")
        m = self.relays[0].client()
        self._clients.append(m)
        text = m.get("/metrics").body.decode()
        self.check("normstat_store_enabled 0" in text, "a relay's metrics: no store")

    def test_zz_dead_relay_and_upstream_outage(self):
        run = nsd.run_name("outage")
        rc = [self.relays[0].client(timeout=20) for _ in range(LOCAL)]
        self._clients.extend(rc)
        up = self.up.client()
        self._clients.append(up)
        self.check_status(up.put(f"/v1/runs/{run}", {"world_size": NODES,
                          "sync_timeout_ms": SYNC_TIMEOUT_MS}), 201, "PUT upstream run", must=True)
        def metric(name):
            text = rc[0].get("/metrics").body.decode()
            for line in text.splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
            return None
        fwd0 = metric("normstat_relay_forwarded_total")
        self.relays[1].kill()
        for lw in range(LOCAL):
            rep = {"step": 7, "worker": lw, "layers": {"bn.a": {"count": 2, "mean": [1.0] * 24,
                                                                "var": [0.5] * 24}}}
            self.check_status(rc[lw].report(run, rep), 202, f"step 7 local worker {lw} -> relay 0")

        def waiting():
            st = up.get(f"/v1/runs/{run}").json().get("status", {})
            return [p for p in st.get("pending", []) if p.get("step") == 7]
        pend = nsd.poll(waiting, limit=15)
        self.check(pend and pend[0].get("waiting_for") == [1] and pend[0].get("arrived") == [0],
                   "upstream stall report: step 7 arrived from relay 0, waits for relay 1 (killed)",
                   str(pend))
        # the relay heard the 202 of step 7 before the upstream goes away
        self.check(nsd.poll(lambda: metric("normstat_relay_forwarded_total") == fwd0 + 1,
                            limit=15), "relay metrics: step 7 forwarded")
        fwd_before = metric("normstat_relay_forwarded_total")
        # the upstream goes away: relay 0 counts failures and marks it down
        port = self.up.port
        self.up.kill()
        for lw in range(LOCAL):
            rep = {"step": 8, "worker": lw, "layers": {"bn.a": {"count": 2, "mean": [2.0] * 24,
                                                                "var": [0.5] * 24}}}
            self.check_status(rc[lw].report(run, rep), 202, f"step 8 local worker {lw} -> relay 0")
        self.check(nsd.poll(lambda: (metric("normstat_relay_upstream_failures_total") or 0) >= 2,
                            limit=15), "relay metrics: failures counted while the upstream is down")
        self.check_eq(metric("normstat_relay_upstream_up"), 0.0, "relay metrics: upstream down")
        self.check((metric("normstat_relay_forwarding") or 0) >= 1,
                   "relay metrics: the step waits to be retried")
        # back on the same port: the retry lands, the relay reports it up
        self.up = nsd.Daemon("--listen", f"127.0.0.1:{port}", name="upstream2").start()
        self.check(nsd.poll(lambda: metric("normstat_relay_upstream_up") == 1.0, limit=15),
                   "relay metrics: upstream up again after it restarted")
        self.check(nsd.poll(lambda: metric("normstat_relay_forwarded_total") == fwd_before + 1,
                            limit=15), "relay metrics: the retried step was forwarded")
        up2 = self.up.client()
        self._clients.append(up2)
        st = nsd.poll(lambda: [p for p in up2.get(f"/v1/runs/{run}").json().get("status", {})
                               .get("pending", []) if p.get("step") == 8], limit=10)
        self.check(st and st[0].get("arrived") == [0] and st[0].get("world_size") == NODES,
                   "restarted upstream: step 8 from relay 0, world_size = --relays", str(st))


if __name__ == "__main__":
    nsd.main()
