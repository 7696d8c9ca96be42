"""test_relay.py - node-level relays (normstatd --upstream) against direct reporting.

Eight workers report the same steps twice: directly to one normstatd (world
size 8), and as 2 nodes x 4 local workers to two relays (--relay-rank 0/1,
--local-world-size 4) in front of another normstatd (world size 2, the
relays). Steps have uneven counts, empty batches (count 0, with and without
arrays, one node entirely empty), two domains (one per node and step, and
both nodes on one domain), /sync and /batches, scope global and domain.

Compared, each against an independent exact reference (Fractions over the
float32 arrivals) and against each other:
 * every /sync answer: count exactly; mean and var within the bound below;
 * served statistics of both daemons (ema, precise, last; pooled and per
   domain) and their checkpoints (doubles).
A relay rounds its node's combination once to float32 (the precision of a
report's arrays), so the two paths are not bitwise equal: counts, number
of batches and samples are; values agree within NODE_RTOL relative to the
values' scale (mean: |mean| + std, var: var + mean^2 spread), see
doc/design.md, "Relays".

Then: a killed relay is the worker the upstream's stall report waits for,
and a relay whose upstream is down counts failures in its metrics, marks
the upstream down, and recovers (forwards, upstream up) when it is back.
"""

import json
import os
import sys
import time

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


def report(s, w, per, local):
    dom = PLAN[s][node_of(w)]
    rep = {"step": s, "worker": (w % LOCAL) if local else w, "domain": dom, "layers": {}}
    if PLAN[s][3]:
        rep["scope"] = PLAN[s][3]
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


class Relays(nsd.Case):

    @classmethod
    def setUpClass(cls):
        cls.daemon = nsd.Daemon(name="direct").start()
        cls.c = cls.daemon.client()
        cls.up = nsd.Daemon(name="upstream").start()
        cls.relays = []
        for r in range(NODES):
            cls.relays.append(nsd.Daemon(
                "--upstream", f"http://127.0.0.1:{cls.up.port}", "--relay-rank", str(r),
                "--local-world-size", str(LOCAL), "--relays", str(NODES),
                "--relay-timeout", "20000", name=f"relay{r}").start())

    @classmethod
    def tearDownClass(cls):
        for d in cls.relays + [cls.up]:
            if d.alive():
                d.stop()
        super().tearDownClass()

    def worker_clients(self):
        direct = [self.client(timeout=40) for _ in range(WORLD)]
        relayed = []
        for w in range(WORLD):
            cl = self.relays[node_of(w)].client(timeout=40)
            self._clients.append(cl)
            relayed.append(cl)
        return direct, relayed

    def drive(self, run, data):
        """Every step to both paths; returns answers[step][path][w]."""
        direct, relayed = self.worker_clients()
        answers = {}
        for s in sorted(PLAN):
            path = PLAN[s][2]
            fns = []
            for w in range(WORLD):
                per = data[s][w]
                fns.append(lambda w=w, per=per: direct[w].report(
                    run, report(s, w, per, False), sync=path == "sync"))
                fns.append(lambda w=w, per=per: relayed[w].report(
                    run, report(s, w, per, True), sync=path == "sync"))
            res, errs = nsd.parallel(fns, limit=40)
            self.require(not any(errs), f"step {s}: every {path} request answered",
                         str([e for e in errs if e][:2]))
            exp = 200 if path == "sync" else 202
            bad = [(i, r.short(200)) for i, r in enumerate(res) if r.status != exp]
            self.require(not bad, f"step {s}: all 16 {path} requests -> {exp}", str(bad[:2]))
            answers[s] = {"direct": [res[2 * w].json() for w in range(WORLD)],
                          "relay": [res[2 * w + 1].json() for w in range(WORLD)]}
        return answers

    def check_sync(self, data, answers):
        worst, same = 0.0, [0, 0]
        for s, (d0, d1, path, scope) in PLAN.items():
            if path != "sync":
                continue
            for w in range(WORLD):
                dom = PLAN[s][node_of(w)]
                ws = [v for v in range(WORLD) if scope is None or PLAN[s][node_of(v)] == dom]
                a_d, a_r = answers[s]["direct"][w], answers[s]["relay"][w]
                self.check(a_r["complete"] is True and a_d["complete"] is True,
                           f"step {s} worker {w}: both /sync answers complete")
                for l in LAYERS:
                    N, mean, var = reference(data, s, l, ws)
                    ld, lr = a_d["layers"][l], a_r["layers"][l]
                    self.check(ld["count"] == N and lr["count"] == N,
                               f"step {s} worker {w} {l}: count {N} on both paths",
                               f"direct {ld['count']} relay {lr['count']}")
                    if N == 0:
                        self.check(lr["mean"] == ld["mean"] and lr["var"] == ld["var"],
                                   f"step {s} worker {w} {l}: empty step, equal zeros")
                        continue
                    # direct: float32 of the exact value; relay: within the node bound
                    md, vd = nsd.f32_list(ld["mean"]), nsd.f32_list(ld["var"])
                    mr, vr = nsd.f32_list(lr["mean"]), nsd.f32_list(lr["var"])
                    same[0] += sum(a == b for a, b in zip(md + vd, mr + vr))
                    same[1] += len(md + vd)
                    self.check(md == nsd.f32_list(mean) and vd == nsd.f32_list(var),
                               f"step {s} worker {w} {l}: direct /sync = float32(exact)")
                    e = max(scale_err(mr, mean, mean, var, "mean"),
                            scale_err(vr, var, mean, var, "var"))
                    worst = max(worst, e)
                    self.check(e <= NODE_RTOL, f"step {s} worker {w} {l}: relay /sync within "
                               f"{NODE_RTOL:g} of exact (scaled err {e:.2g})")
        print(f"note relay /sync: largest scaled error {worst:.3g}; {same[0]} of {same[1]} "
              "float32 values bitwise equal to direct reporting")

    def check_stats(self, run):
        up = self.up.client()
        self._clients.append(up)
        for src in ("ema", "precise", "last"):
            for dom in ("*", "photo", "sketch"):
                rd = self.c.stats(run, source=src, domain=dom)
                ru = up.stats(run, source=src, domain=dom)
                self.check(rd.status == 200 and ru.status == 200, f"stats {src} {dom}: 200 on both")
                if rd.status != 200 or ru.status != 200:
                    continue
                jd, ju = rd.json(), ru.json()
                self.check_eq(sorted(ju["layers"]), sorted(jd["layers"]),
                              f"stats {src} {dom}: same layers")
                for l in jd["layers"]:
                    Ld, Lu = jd["layers"][l], ju["layers"].get(l, {})
                    ints = {k: v for k, v in Ld.items() if isinstance(v, int)}
                    self.check_eq({k: Lu.get(k) for k in ints}, ints,
                                  f"stats {src} {dom} {l}: counts and steps equal")
                    md, vd = nsd.served(Ld)
                    mu, vu = nsd.served(Lu)
                    e = max(scale_err(mu, md, md, vd, "mean"), scale_err(vu, vd, md, vd, "var"))
                    self.check(e <= NODE_RTOL, f"stats {src} {dom} {l}: within {NODE_RTOL:g} "
                               f"(scaled err {e:.2g})")

    def test_relayed_equals_direct(self):
        run = nsd.run_name("relay")
        up = self.up.client()
        self._clients.append(up)
        self.check_status(self.c.put(f"/v1/runs/{run}", {"world_size": WORLD,
                          "sync_timeout_ms": SYNC_TIMEOUT_MS}), 201, "PUT direct run", must=True)
        self.check_status(up.put(f"/v1/runs/{run}", {"world_size": NODES,
                          "sync_timeout_ms": SYNC_TIMEOUT_MS}), 201, "PUT upstream run", must=True)
        data = make_data(np.random.default_rng(14))
        answers = self.drive(run, data)
        self.check_sync(data, answers)
        self.check_stats(run)
        # the relay keeps no runs: it points at its upstream
        r = self.relays[0].client()
        self._clients.append(r)
        self.check_status(r.get(f"/v1/runs/{run}"), 404, "GET run on a relay", code="not_found")
        m = r.get("/metrics").body.decode()
        self.check("normstat_relay_enabled 1" in m and "normstat_relay_forwarded_total 6" in m,
                   "relay metrics: enabled, 6 node steps forwarded", m[-600:])

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
        # the upstream goes away: relay 0 counts failures and marks it down
        port = self.up.port
        self.up.kill()
        for lw in range(LOCAL):
            rep = {"step": 8, "worker": lw, "layers": {"bn.a": {"count": 2, "mean": [2.0] * 24,
                                                                "var": [0.5] * 24}}}
            self.check_status(rc[lw].report(run, rep), 202, f"step 8 local worker {lw} -> relay 0")

        def metric(name):
            text = rc[0].get("/metrics").body.decode()
            for line in text.splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
            return None
        fwd_before = metric("normstat_relay_forwarded_total")
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
