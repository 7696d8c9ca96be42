"""test_durability_restart.py - a restart serves every statistic bit for bit.

A persistent normstatd (SQLite in a --data-dir) and a --no-persist reference
daemon are fed the same requests: a 4-worker run with 2 domains and 3 layers
(EMA and PreciseBN, /batches and /sync, an empty batch, precise-only steps,
a full and a per-domain PreciseBN reset), an ema_debias run, a momentum-null
run with a skipped step, a run that was only configured, a deleted run, and
a step still pending at shutdown. Every view of every run (each source and
domain, json and safetensors, variance=biased, mixtures, layers=, the
checkpoint, the durable part of GET run) is recorded as bytes; SIGTERM (exit
0), PRAGMA integrity_check, restart on the same directory, /readyz 200, and
every view must be byte-identical. Both daemons then continue (the pending
step re-reported on the restarted one) and must serve identical bytes again,
across a second restart too. A checkpoint exported and imported under a new
name (and over an existing run) is identical across a restart.
"""

import os
import signal
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
import durable  # noqa: E402

LAYERS = {"stem.bn": 3, "layer1.0.bn1": 5, "layer1.0.bn2": 2}
DOMAIN = {0: "photo", 1: "photo", 2: "sketch", 3: "sketch"}
MIX = "photo:0.7,sketch:0.3"
SYNC_TIMEOUT_S = 20.0

# name -> (domains, mixture) for views()
RUNS = {"main": (("photo", "sketch"), MIX), "debias": ((), None), "cumavg": ((), None),
        "configonly": ((), None), "reborn": ((), None)}


def step_reports(rng, step, sizes, layers=LAYERS, domains=DOMAIN, update=None):
    """One report per worker with raw batches of the given sizes."""
    out = []
    for w, n in enumerate(sizes):
        rep = {"step": step, "worker": w,
               "layers": {l: nsd.layer_report(nsd.gen_batch(rng, n, c)) for l, c in layers.items()}}
        if domains:
            rep["domain"] = domains[w]
        if update is not None:
            rep["update"] = update
        out.append(rep)
    return out


class Restart(durable.Case):

    root_prefix = "normstat-durability-"

    def setUp(self):
        super().setUp()
        self.daemons = []

    def tearDown(self):
        for cl in self._clients:
            for e in cl.schema_errors:
                print(f"FAIL {self._testMethodName}: response breaks proto/openapi.yaml: {e}")
                self._fails.append(e)
            cl.close()
        for d in self.daemons:
            san = d.sanitizer_reports()
            if san:
                self.check(False, f"{d.name}: no sanitizer reports", "\n".join(san[:10]))
            d.kill()
        self.finish()

    # ---- daemons and clients
    def start(self, d):
        if d not in self.daemons:
            self.daemons.append(d)
        d.start()
        seen = [s for s in d.readyz_seen if s != 200]
        self.check(d.readyz_seen[-1:] == [200], f"{d.name}: /readyz 200 after start-up",
                   f"seen {d.readyz_seen[-5:]}")
        if seen:
            print(f"note {self._testMethodName}: {d.name} answered /readyz {sorted(set(map(str, seen)))} "
                  f"before 200 (recovery in progress)")
        durable.check_probes(self, d, f"{d.name} start-up")
        return self.client_of(d)

    def client_of(self, d, timeout=nsd.HTTP_TIMEOUT_S):
        cl = d.client(timeout=timeout)
        self._clients.append(cl)
        return cl

    def stop(self, d, desc):
        rc = d.stop()
        self.check_eq(rc, 0, f"{desc}: {d.name} exits with status 0 after SIGTERM")
        if rc != 0:
            print(d.log_tail(20))
        return rc

    # ---- requests on several daemons at once
    def put_all(self, cls, path, body, exp, desc):
        for cl in cls:
            r = cl.put(path, body)
            self.check(r.status in exp, f"{desc} -> {exp}", r.short())

    def send(self, d, run, reps, sync, desc, workers=None):
        """Send reports to one daemon (all /sync at once on their own
        connections); returns the answers."""
        ws = range(len(reps)) if workers is None else workers
        if not sync:
            out = []
            cl = self.client_of(d)
            for w in ws:
                r = cl.report(run, reps[w])
                self.check_status(r, 202, f"{desc} worker {w} /batches")
                out.append(r)
            cl.close()
            return out
        cls = [self.client_of(d, timeout=SYNC_TIMEOUT_S) for _ in ws]
        fns = [lambda c=c, w=w: c.report(run, reps[w], sync=True) for c, w in zip(cls, ws)]
        res, errs = nsd.parallel(fns, limit=SYNC_TIMEOUT_S + 5)
        for w, r, e in zip(ws, res, errs):
            self.require(e is None, f"{desc} worker {w} /sync answered", repr(e))
            self.check_status(r, 200, f"{desc} worker {w} /sync")
        for c in cls:
            c.close()
        return res

    def feed(self, pairs, run, reps, sync, desc, workers=None):
        """Same reports to every daemon; /sync answers must be the same bytes."""
        answers = [self.send(d, run, reps, sync, f"{desc} [{d.name}]", workers) for d in pairs]
        if sync and len(answers) > 1:
            same = all(a.body == b.body for a, b in zip(answers[0], answers[1]))
            self.check(same, f"{desc}: /sync answers identical bytes on {pairs[0].name} and {pairs[1].name}",
                       f"{answers[0][0].short(200)} vs {answers[1][0].short(200)}")

    # ---- views
    def all_views(self, cl):
        return {run: durable.views(cl, run, doms, list(LAYERS)[:2] if run == "main" else None, mix)
                for run, (doms, mix) in RUNS.items()}

    def run_list(self, cl):
        r = cl.get("/v1/runs")
        if r.status != 200 or not r.is_json():
            return (r.status, r.body)
        keep = ("run", "world_size", "layers", "domains", "step")
        return sorted(tuple((k, x.get(k)) for k in keep) for x in r.json().get("runs", []))

    def same(self, va, vb, desc, rename=None):
        for run in va:
            d = durable.diff_views(va[run], vb[run], rename)
            self.check(not d, f"{desc}: run {run}: {len(va[run])} views identical bytes",
                       f"{len(d)} differ: " + " | ".join(d[:4]))

    def require_served(self, v, desc):
        for run in ("main", "debias", "cumavg"):
            for k in ("stats ema domain=* json", "stats precise domain=* json", "stats last domain=* json",
                      "stats ema domain=* safetensors", "checkpoint", "run status"):
                st = v[run][k][0]
                self.check(st == 200, f"{desc}: run {run}: {k} -> 200", f"got {st} {str(v[run][k][1])[:200]}")
        bad = {run: durable.ok_views(v[run]) for run in v}
        bad = {r: k for r, k in bad.items() if k}
        if bad:
            print(f"note {desc}: views not answered 200 (compared as they are): {bad}")

    # ------------------------------------------------------------------ tests

    def test_restart_resume(self):
        rng = np.random.default_rng(401)
        a = durable.Durable(os.path.join(self.root, "a"), name="persistent")
        ref = durable.Durable(os.path.join(self.root, "ref"), persist=False, name="reference")
        os.makedirs(a.dir)
        os.makedirs(ref.dir)
        ca = self.start(a)
        cr = self.start(ref)
        self.check(os.path.exists(a.db_path()), f"the store {durable.DB_NAME} exists in --data-dir after start-up",
                   f"{os.listdir(a.dir)}")
        both = (a, ref)
        cls = (ca, cr)
        self.put_all(cls, "/v1/runs/main", {"world_size": 4}, (201,), "PUT main world 4")
        self.put_all(cls, "/v1/runs/debias", {"world_size": 2, "momentum": 0.05, "ema_debias": True}, (201,),
                     "PUT debias")
        self.put_all(cls, "/v1/runs/cumavg", {"world_size": 1, "momentum": None}, (201,), "PUT cumavg momentum null")
        self.put_all(cls, "/v1/runs/configonly", {"world_size": 3, "momentum": 0.2, "sync_timeout_ms": 1234,
                                                  "on_timeout": "drop", "ema_debias": True}, (201,), "PUT configonly")
        self.put_all(cls, "/v1/runs/gone", {"world_size": 1}, (201,), "PUT gone")
        self.feed(both, "gone", step_reports(rng, 1, [5], domains=None), False, "gone step 1")
        for cl in cls:
            self.check_status(cl.delete("/v1/runs/gone"), 204, "DELETE gone")

        # reborn: deleted after 3 steps and created again with other settings
        self.put_all(cls, "/v1/runs/reborn", {"world_size": 2, "momentum": 0.3}, (201,), "PUT reborn")
        for s in range(1, 4):
            self.feed(both, "reborn", step_reports(rng, s, [4, 5], {"bn": 3}, None), False, f"reborn step {s}")
        for cl in cls:
            self.check_status(cl.delete("/v1/runs/reborn"), 204, "DELETE reborn")
        self.put_all(cls, "/v1/runs/reborn", {"world_size": 1, "momentum": 0.2}, (201,), "PUT reborn again")
        for s in (1, 2):
            self.feed(both, "reborn", step_reports(rng, s, [6], {"bn": 3}, None), True, f"reborn (new) step {s}")

        # main: 4 workers, 2 domains, 3 layers
        for s in range(1, 9):
            sizes = [int(x) for x in rng.integers(2, 20, 4)]
            if s == 2:
                sizes[3] = 0  # an empty batch still arrives
            update = ["precise"] if s in (5, 6) else None
            if s == 5:
                for cl in cls:
                    r = cl.post("/v1/runs/main/precise/reset", {})
                    self.check_status(r, 200, "main: PreciseBN reset (all domains) before step 5")
            if s == 7:
                for cl in cls:
                    r = cl.post("/v1/runs/main/precise/reset", {"domain": "photo"})
                    self.check_status(r, 200, "main: PreciseBN reset of domain photo before step 7")
            self.feed(both, "main", step_reports(rng, s, sizes, update=update), s % 2 == 0, f"main step {s}")
        # debias: /batches, a config update in between
        for s in range(1, 6):
            if s == 4:
                self.put_all(cls, "/v1/runs/debias", {"world_size": 2, "momentum": 0.05, "ema_debias": True,
                                                      "sync_timeout_ms": 30000}, (200,), "PUT debias (update)")
            self.feed(both, "debias", step_reports(rng, s, [int(x) for x in rng.integers(2, 30, 2)], {"bn": 4},
                                                   None), False, f"debias step {s}")
        # cumavg: world 1 /sync, step 3 has N = 1 (skipped)
        for s in range(1, 6):
            self.feed(both, "cumavg", step_reports(rng, s, [1 if s == 3 else 7], {"bn": 2}, None), True,
                      f"cumavg step {s}")
        # main step 9 is pending at shutdown: only workers 0 and 1 reported
        pending = step_reports(rng, 9, [int(x) for x in rng.integers(2, 20, 4)])
        self.feed(both, "main", pending, False, "main step 9 (workers 0, 1)", workers=[0, 1])

        va1 = self.all_views(ca)
        vr1 = self.all_views(cr)
        self.require_served(va1, "before restart")
        self.same(va1, vr1, "before restart, persistent vs --no-persist reference")
        list1 = self.run_list(ca)
        st = ca.get("/v1/runs/cumavg").json().get("status", {})
        self.check_eq(st.get("skipped_steps"), 1, "cumavg: the N=1 step is counted in skipped_steps")

        # SIGTERM, integrity, restart
        ca.close()
        self.stop(a, "first restart")
        self.check_eq(durable.integrity_check(a.dir), "ok", "PRAGMA integrity_check of the stopped store")
        ca = self.start(a)
        cls = (ca, cr)
        va2 = self.all_views(ca)
        self.same(va1, va2, "after restart (SIGTERM, start on the same --data-dir)")
        self.check_eq(self.run_list(ca), list1, "GET /v1/runs lists the same runs after restart")
        self.check_status(ca.get("/v1/runs/gone"), 404, "the deleted run stays deleted after restart",
                          code="not_found")
        r = ca.get("/v1/runs/main").json().get("status", {})
        self.check_eq(r.get("pending", []), [], "no pending step after restart (pending steps are memory only)")

        # continue on both: the pending step is re-reported on the restarted daemon
        self.send(a, "main", pending, False, "main step 9 re-reported after restart [persistent]")
        self.send(ref, "main", pending, False, "main step 9 (workers 2, 3) [reference]", workers=[2, 3])
        for s in (10, 11):
            self.feed(both, "main", step_reports(rng, s, [int(x) for x in rng.integers(2, 20, 4)]), True,
                      f"main step {s} after restart")
        for cl in cls:
            self.check_status(cl.post("/v1/runs/main/precise/reset", {}), 200, "main: reset after restart")
        self.feed(both, "main", step_reports(rng, 12, [3, 0, 9, 4]), False, "main step 12")
        for s in (6, 7):
            self.feed(both, "debias", step_reports(rng, s, [int(x) for x in rng.integers(2, 30, 2)], {"bn": 4},
                                                   None), False, f"debias step {s}")
            self.feed(both, "cumavg", step_reports(rng, s, [9], {"bn": 2}, None), True, f"cumavg step {s}")
        self.put_all(cls, "/v1/runs/configonly", {"world_size": 2, "momentum": 0.2, "sync_timeout_ms": 1234,
                                                  "on_timeout": "drop", "ema_debias": True}, (200,),
                     "PUT configonly (update after restart)")
        va3 = self.all_views(ca)
        vr3 = self.all_views(cr)
        self.require_served(va3, "after continuing")
        self.same(va3, vr3, "continued after restart, persistent vs reference")
        main = ca.get("/v1/runs/main").json().get("status", {}).get("layers", {})
        self.check(all(v.get("step") == 12 for v in main.values()) and len(main) == 3,
                   "main: every layer applied up to step 12", f"{main}")

        # a second restart, of a store that was itself recovered, holding
        # snapshots: restart with a short --snapshot-interval, one more step
        # on every run, wait (bounded) until snapshots were committed
        ca.close()
        self.stop(a, "restart for snapshots")
        a.args = ["--snapshot-interval", "50"]
        ca = self.start(a)
        cls = (ca, cr)
        self.same(va3, self.all_views(ca), "after a restart with --snapshot-interval 50")
        self.feed(both, "main", step_reports(rng, 13, [5, 6, 7, 8]), True, "main step 13")
        self.feed(both, "debias", step_reports(rng, 8, [4, 9], {"bn": 4}, None), False, "debias step 8")
        self.feed(both, "cumavg", step_reports(rng, 8, [3], {"bn": 2}, None), True, "cumavg step 8")
        snaps = nsd.poll(lambda: (durable.metric(ca, "normstat_store_snapshots_total") or 0) >= 3, limit=10)
        self.check(snaps, "snapshots were committed (normstat_store_snapshots_total >= 3, bounded 10 s)",
                   f"{durable.metric(ca, 'normstat_store_snapshots_total')}")
        self.feed(both, "main", step_reports(rng, 14, [2, 3, 4, 5]), False, "main step 14 (log after the snapshot)")
        va3 = self.all_views(ca)
        self.same(va3, self.all_views(cr), "with snapshots, persistent vs reference")
        ca.close()
        a.args = []
        self.stop(a, "second restart")
        self.check_eq(durable.integrity_check(a.dir), "ok", "PRAGMA integrity_check after the second stop")
        ca = self.start(a)
        va4 = self.all_views(ca)
        self.same(va3, va4, "after the second restart")
        self.check_eq(self.run_list(ca), self.run_list(cr), "GET /v1/runs: same runs as the reference")
        ca.close()
        self.stop(a, "end")
        self.stop(ref, "end")
        self.check(not os.path.exists(os.path.join(ref.dir, durable.DB_NAME)),
                   "--no-persist wrote no store in its --data-dir", f"{os.listdir(ref.dir)}")

    def test_double_sigterm(self):
        """Graceful shutdown flushes everything, and a second SIGTERM during
        the shutdown does not corrupt the store: with --commit-interval 60000
        the /batches steps are still queued when SIGTERM arrives (a /sync
        waits on an incomplete step meanwhile); two SIGTERMs 50 ms apart;
        exit 0, the waiter answered 503 shutting_down, integrity ok, and
        after a restart every view is byte-identical."""
        rng = np.random.default_rng(403)
        a = durable.Durable(os.path.join(self.root, "twice"), "--commit-interval", "60000", name="persistent")
        os.makedirs(a.dir)
        ca = self.start(a)
        self.check_status(ca.put("/v1/runs/t", {"world_size": 2}), 201, "PUT t")
        big = {f"layer{i}.bn": 128 for i in range(4)}

        def rep(s, w):
            return {"step": s, "worker": w, "layers": {
                l: {"count": int(rng.integers(2, 50)), "mean": nsd.f32_list(rng.uniform(-2, 2, c)),
                    "var": nsd.f32_list(rng.uniform(0.1, 4, c))} for l, c in big.items()}}
        for s in range(1, 4):
            self.send(a, "t", [rep(s, 0), rep(s, 1)], True, f"t step {s}")
        for s in range(4, 154):
            for w in (0, 1):
                r = ca.report("t", rep(s, w))
                if r.status != 202:
                    self.check_status(r, 202, f"t step {s} worker {w} /batches")
        queued = durable.metric(ca, "normstat_store_queued_jobs")
        self.check(queued is not None and queued > 0, f"the store has queued, uncommitted jobs before SIGTERM "
                                                      f"(normstat_store_queued_jobs {queued})")
        v1 = durable.views(ca, "t", (), None, None)
        self.require(v1["stats ema domain=* json"][0] == 200, "stats served before SIGTERM")
        waiter = self.client_of(a, timeout=20)
        box = []
        th = threading.Thread(target=lambda: box.append(waiter.report("t", rep(154, 0), sync=True)), daemon=True)
        th.start()
        nsd.poll(lambda: ca.get("/v1/runs/t").json().get("status", {}).get("pending"), limit=10)
        ca.close()
        a.signal(signal.SIGTERM)
        time.sleep(0.05)
        a.signal(signal.SIGTERM)
        rc = a.wait(nsd.STOP_LIMIT_S)
        th.join(10)
        self.check(box and box[0].status == 503 and box[0].error_code() == "shutting_down",
                   "the waiting /sync is answered 503 shutting_down", box[0].short() if box else "no answer")
        self.check_eq(rc, 0, "two SIGTERMs: exit status 0 (everything flushed)")
        if rc != 0:
            print(a.log_tail(10))
        a.kill()
        self.check_eq(durable.integrity_check(a.dir), "ok", "PRAGMA integrity_check after two SIGTERMs")
        a.args = []
        ca = self.start(a)
        d = durable.diff_views(v1, durable.views(ca, "t", (), None, None))
        self.check(not d, f"after two SIGTERMs and a restart: {len(v1)} views identical bytes (all 153 steps)",
                   " | ".join(d[:4]))
        ca.close()
        self.stop(a, "end")

    def test_finalized_step_waiting(self):
        """A finalized step that waits for an earlier pending step is durable
        (doc/design.md, "Restarts and stale steps"). World 2: step 1 only from worker 0 (pending), step 2 from
        both (finalized, waiting for step 1). After a restart the pending
        step 1 is gone (memory only) and nothing waits any more: step 2 is
        applied, and the state equals a --no-persist reference run that
        only ever saw step 2. The re-report of step 1 (now below a finalized
        step) must change nothing; step 3 then applies on both alike. Once
        with SIGTERM, once with SIGKILL after the group commit."""
        rng = np.random.default_rng(404)
        ref = durable.Durable(os.path.join(self.root, "wref"), persist=False, name="reference")
        os.makedirs(ref.dir)
        cr = self.start(ref)
        layers = {"bn": 3, "bn2": 2}
        for how in ("SIGTERM", "SIGKILL"):
            a = durable.Durable(os.path.join(self.root, f"w-{how}"), name=f"persistent-{how}")
            os.makedirs(a.dir)
            ca = self.start(a)
            run = f"wait-{how.lower()}"
            for cl in (ca, cr):
                self.check_status(cl.put(f"/v1/runs/{run}", {"world_size": 2}), 201, f"PUT {run}")
            s1 = step_reports(rng, 1, [5, 7], layers, None)
            s2 = step_reports(rng, 2, [6, 4], layers, None)
            s3 = step_reports(rng, 3, [3, 9], layers, None)
            self.send(a, run, s1, False, f"{run} step 1", workers=[0])
            self.send(a, run, s2, False, f"{run} step 2")
            self.send(ref, run, s2, False, f"{run} step 2 [reference: step 2 only]")
            st = ca.get(f"/v1/runs/{run}").json().get("status", {}).get("layers", {}).get("bn", {})
            self.check(st.get("finalized_step") == 2 and st.get("num_batches_tracked") == 0,
                       f"{how}: step 2 finalized, not applied (waits for step 1)", f"{st}")
            ca.close()
            if how == "SIGTERM":
                self.stop(a, f"{how}")
            else:
                c2 = self.client_of(a)
                ok = nsd.poll(lambda: durable.metric(c2, "normstat_store_queued_jobs") == 0.0, limit=10)
                self.check(ok, "SIGKILL: the store's queue is empty first (group commit done, bounded 10 s)")
                c2.close()
                self.check_eq(a.sigkill(), -9, "SIGKILL")
            self.check_eq(durable.integrity_check(a.dir), "ok", f"{how}: PRAGMA integrity_check")
            ca = self.start(a)
            d = durable.diff_views(durable.views(cr, run), durable.views(ca, run))
            self.check(not d, f"{how} restart: the finalized step 2 survived and is applied, the pending step 1 "
                              f"is gone: views equal the reference of step 2 alone", " | ".join(d[:4]))
            answers = []
            for w in (0, 1):
                r = ca.report(run, s1[w])
                answers.append(f"{r.status} {r.error_code() or ''}".strip())
            print(f"note {how} restart: re-reports of step 1 (below finalized step 2) answered {answers}")
            for dm in (a, ref):
                self.send(dm, run, s3, True, f"{run} step 3 [{dm.name}]")
            d = durable.diff_views(durable.views(cr, run), durable.views(ca, run))
            self.check(not d, f"{how} restart: after step 3, views equal the reference (steps 2, 3): the "
                              f"re-reports of step 1 changed nothing", " | ".join(d[:4]))
            ca.close()
            self.stop(a, "end")
        cr.close()
        self.stop(ref, "end")

    def test_checkpoint_import_restart(self):
        rng = np.random.default_rng(402)
        a = durable.Durable(os.path.join(self.root, "cp"), name="persistent")
        os.makedirs(a.dir)
        ca = self.start(a)
        doms = ("photo", "sketch")
        self.check_status(ca.put("/v1/runs/src", {"world_size": 2, "momentum": 0.03, "ema_debias": True}), 201,
                          "PUT src")
        self.check_status(ca.put("/v1/runs/other", {"world_size": 1}), 201, "PUT other")
        dom2 = {0: "photo", 1: "sketch"}
        for s in range(1, 6):
            if s == 3:
                self.check_status(ca.post("/v1/runs/src/precise/reset", {}), 200, "src: reset before step 3")
            self.send(a, "src", step_reports(rng, s, [int(x) for x in rng.integers(2, 25, 2)], domains=dom2),
                      s % 2 == 1, f"src step {s}")
            self.send(a, "other", step_reports(rng, s, [6], domains=None), False, f"other step {s}")
        r = ca.get("/v1/runs/src/checkpoint")
        self.check_status(r, 200, "GET src checkpoint", must=True)
        cp = r.body
        r = ca.put("/v1/runs/dst/checkpoint", cp, content_type=r.content_type or "application/json")
        self.check(r.status in (200, 201), "PUT the checkpoint as new run dst (200/201)", r.short())
        r = ca.put("/v1/runs/other/checkpoint", cp, content_type="application/json")
        self.check(r.status in (200, 201), "PUT the checkpoint over the existing run other (200/201)", r.short())
        names = ("src", "dst", "other")
        v1 = {n: durable.views(ca, n, doms, None, "photo:1,sketch:3") for n in names}
        for n in ("dst", "other"):
            d = durable.diff_views(v1["src"], v1[n], rename=("src", n))
            self.check(not d, f"imported {n} serves the same bytes as src (run name aside)",
                       " | ".join(d[:4]))
        exports = {n: ca.get(f"/v1/runs/{n}/checkpoint").body for n in names}
        ca.close()
        self.stop(a, "checkpoint restart")
        self.check_eq(durable.integrity_check(a.dir), "ok", "PRAGMA integrity_check of the stopped store")
        ca = self.start(a)
        v2 = {n: durable.views(ca, n, doms, None, "photo:1,sketch:3") for n in names}
        for n in names:
            d = durable.diff_views(v1[n], v2[n])
            self.check(not d, f"after restart: run {n}: {len(v1[n])} views identical bytes", " | ".join(d[:4]))
            r = ca.get(f"/v1/runs/{n}/checkpoint")
            self.check(r.status == 200 and r.body == exports[n],
                       f"after restart: re-export of {n} is byte-identical to its export before", r.short(200))
        # the imported run continues exactly like its source
        reps = step_reports(rng, 6, [7, 11], domains=dom2)
        for n in ("src", "dst"):
            self.send(a, n, reps, True, f"{n} step 6 after restart")
        v3 = {n: durable.views(ca, n, doms, None, "photo:1,sketch:3") for n in ("src", "dst")}
        d = durable.diff_views(v3["src"], v3["dst"], rename=("src", "dst"))
        self.check(not d, "src and dst continue identically after restart", " | ".join(d[:4]))
        ca.close()
        self.stop(a, "end")


if __name__ == "__main__":
    nsd.main()
