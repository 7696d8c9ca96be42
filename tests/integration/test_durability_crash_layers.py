"""test_durability_crash_layers.py - kill -9 under multi-threaded ingest of one run.

Reports to different layers of one run are applied in parallel (each layer
under its own lock) and each layer's finalized steps reach the store's log
in their own order, so this test drives one world_size-1 run from 6 client
threads at once, each owning its own layers (one thread sends three layers
per report, the others one or two), with /sync (every 4th step /batches),
each (layer, step) report generated deterministically. SIGKILL comes at
seeded random moments (seed printed; NS_DURABILITY_SEED repeats the
schedule), 8 cycles of 0.3-1.2 s of load, and normstatd restarts on the
same --data-dir. After each restart, before the threads resume:
 * every layer's last applied step >= the highest step a /sync of that
   layer answered 200 for; num_batches_tracked == finalized_step == that
   step (every step 1..L applied once), no pending step;
 * EMA and PreciseBN of every layer equal a float64 reference computed
   here from the deterministic reports of steps 1..L of that layer (PyTorch
   EMA, momentum 0.1, unbiased N/(N-1); PreciseBN M2/(n-1) by Chan's
   merge), to 1e-6 relative (served values are float32).
Each /sync answer must carry its report's own values (world_size 1). The
threads then resume after each layer's finalized step (a layer of a
multi-layer report can be recovered one step ahead of the others: the log
holds each layer's rows in its own order). At the end the threads stop at
a common step, SIGTERM (exit 0), restart, and the state is verified again.
"""

import http.client
import os
import random
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
import durable  # noqa: E402

nsd.SCRIPT_LIMIT_S = 55

RUN = "layers"
MOMENTUM = 0.1
GROUPS = [  # one client thread per group; a report carries the group's layers
    {"stem.bn": 8, "layer1.0.bn1": 6, "layer1.0.bn2": 6},
    {"layer2.0.bn1": 12},
    {"layer2.0.bn2": 12, "layer2.1.bn1": 4},
    {"layer3.0.bn1": 16},
    {"layer3.0.bn2": 5, "layer3.1.bn1": 7},
    {"layer4.0.bn1": 10},
]
LAYERS = {l: c for g in GROUPS for l, c in g.items()}
LAYER_IDX = {l: i for i, l in enumerate(LAYERS)}
CYCLES = 8
LOAD_S = (0.3, 1.2)
DATA_SEED = 7207
HTTP_S = 20.0
PARK_LIMIT_S = 20.0


def is_batches(step):
    return step % 4 == 3


_cache = {}
_cache_lock = threading.Lock()


def layer_rep(step, layer):
    """The deterministic report of one layer at one step: count in [2, 40],
    float32 mean and biased var of a raw batch."""
    key = (step, layer)
    with _cache_lock:
        v = _cache.get(key)
    if v is None:
        rng = np.random.default_rng([DATA_SEED, step, LAYER_IDX[layer]])
        n = int(rng.integers(2, 41))
        v = nsd.layer_report(nsd.gen_batch(rng, n, LAYERS[layer]))
        with _cache_lock:
            _cache[key] = v
    return v


class Reference:
    """EMA and PreciseBN of steps 1..L of a layer, float64, from the float32
    values each report carries (world_size 1: a step's statistics are its
    one report's); states[layer][L-1] = (ema_mean, ema_var, n, mean, m2)."""

    def __init__(self):
        self.states = {l: [] for l in LAYERS}

    def upto(self, layer, L):
        st = self.states[layer]
        C = LAYERS[layer]
        while len(st) < L:
            s = len(st) + 1
            em, ev, pn, pm, pm2 = st[-1] if st else (np.zeros(C), np.ones(C), 0, np.zeros(C), np.zeros(C))
            r = layer_rep(s, layer)
            N = r["count"]
            mean = np.array(r["mean"], dtype=np.float64)
            var = np.array(r["var"], dtype=np.float64)
            em = (1 - MOMENTUM) * em + MOMENTUM * mean
            ev = (1 - MOMENTUM) * ev + MOMENTUM * var * N / (N - 1)
            n = pn + N
            delta = mean - pm
            pm, pm2 = pm + delta * N / n, pm2 + var * N + delta * delta * pn * N / n
            st.append((em, ev, n, pm, pm2))
        return st[L - 1]


class Shared(durable.KillCycles):
    def __init__(self):
        super().__init__(LAYERS)
        self.acked = {l: 0 for l in LAYERS}  # highest step a /sync of the layer answered 200 for
        self.acks = 0
        self.total_acks = 0
        self.reports = 0


def sync_answer_bad(r, s, layers):
    """What is wrong with a /sync answer: world_size 1, so each layer's
    statistics are exactly the float32 values its report carried."""
    try:
        b = r.json()
        bad = []
        if b.get("step") != s or b.get("complete") is not True or b.get("workers") != 1:
            bad.append(f"header {({k: b.get(k) for k in ('step', 'complete', 'workers')})}")
        for l, rep in layers.items():
            got = b.get("layers", {}).get(l, {})
            if got.get("count") != rep["count"] or nsd.f32_list(got.get("mean", [])) != rep["mean"] \
                    or nsd.f32_list(got.get("var", [])) != rep["var"]:
                bad.append(f"{l}: got {got}, sent {rep}")
        return bad
    except Exception as e:  # a malformed answer is a finding
        return [f"unparsable answer {e!r}: {r.short(200)}"]


def thread_main(sh, g):
    group = GROUPS[g]
    my_epoch, broken, cl, s, resume = 0, True, None, 1, None
    while True:
        with sh.cond:
            if broken:
                my_epoch = sh.park(g, my_epoch)
                if my_epoch is None:
                    break
                resume = {l: sh.resume[l] for l in group}
                s = min(resume.values()) + 1
                broken = False
                if cl is not None:
                    cl.close()
                cl = nsd.Client("127.0.0.1", sh.port, timeout=HTTP_S)
            if sh.stop or (sh.stop_at is not None and s > sh.stop_at):
                break
            epoch = sh.epoch
        layers = {l: layer_rep(s, l) for l in group if s > resume[l]}
        sync = not is_batches(s)
        try:
            r = cl.report(RUN, {"step": s, "worker": 0, "layers": layers}, sync=sync, timeout=HTTP_S,
                          validate=False)
        except (OSError, http.client.HTTPException):
            broken = True
            continue
        with sh.cond:
            sh.reports += 1
            if sync and r.status == 200:
                for l in layers:
                    sh.acked[l] = max(sh.acked[l], s)
                sh.acks += 1
                sh.total_acks += 1
            elif not sync and r.status == 202:
                pass
            elif sh.epoch != epoch or sh.stop:
                broken = True  # answered while being stopped
                continue
            else:
                sh.failures.append((f"group {g} step {s}", r.short(300)))
                broken = True
                continue
        if sync:
            bad = sync_answer_bad(r, s, layers)
            if bad:
                with sh.cond:
                    sh.sync_bad.append(f"group {g} step {s}: " + "; ".join(bad))
        s += 1
    if cl is not None:
        cl.close()
    with sh.cond:
        sh.finished.add(g)
        sh.cond.notify_all()


class CrashLayers(durable.Case):

    root_prefix = "normstat-crash-layers-"

    def tearDown(self):
        self.finish()

    def verify(self, c, sh, ref, desc):
        """The state after a restart against the acknowledged steps and the
        reference; returns each layer's finalized step."""
        r = c.get(f"/v1/runs/{RUN}", validate=False)
        self.require(r.status == 200, f"{desc}: the run exists after restart", r.short())
        st = r.json().get("status", {})
        layers = st.get("layers", {})
        with sh.cond:
            acked = dict(sh.acked)
        applied, details = {}, []
        for l in LAYERS:
            lv = layers.get(l, {})
            L = max(lv.get("step", -1), 0) if lv else 0
            applied[l] = L
            if L < acked[l]:
                details.append(f"{l}: last applied step {L} < acknowledged step {acked[l]}")
            if lv and (lv.get("num_batches_tracked") != L or lv.get("finalized_step") != L):
                details.append(f"{l}: num_batches_tracked {lv.get('num_batches_tracked')}, finalized_step "
                               f"{lv.get('finalized_step')}, applied step {L}")
        self.check(not details, f"{desc}: every acknowledged step of every layer is present "
                                f"(applied {min(applied.values())}..{max(applied.values())})", "; ".join(details))
        self.check(not st.get("pending"), f"{desc}: no pending step after restart", f"{st.get('pending')}")
        if max(applied.values()) == 0:
            return applied
        ema, pre = c.stats(RUN, source="ema"), c.stats(RUN, source="precise")
        self.require(ema.status == 200 and pre.status == 200, f"{desc}: stats served",
                     f"{ema.short(150)} {pre.short(150)}")
        eb, pb = ema.json().get("layers", {}), pre.json().get("layers", {})
        worst, bad = 0.0, []
        for l, L in applied.items():
            if L == 0:
                continue
            em, ev, pn, pm, pm2 = ref.upto(l, L)
            ge, gp = eb.get(l, {}), pb.get(l, {})
            errs = [nsd.max_err(ge.get("running_mean", []), em), nsd.max_err(ge.get("running_var", []), ev),
                    nsd.max_err(gp.get("running_mean", []), pm), nsd.max_err(gp.get("running_var", []), pm2 / (pn - 1))]
            worst = max([worst] + errs)
            if max(errs) > 1 or ge.get("num_batches_tracked") != L or gp.get("num_samples") != pn \
                    or gp.get("num_batches") != L:
                bad.append(f"{l} (steps 1..{L}): errors {errs}, num_batches_tracked "
                           f"{ge.get('num_batches_tracked')}, num_samples {gp.get('num_samples')} ref {pn}, "
                           f"num_batches {gp.get('num_batches')}")
        self.check(not bad, f"{desc}: EMA and PreciseBN of every layer = float64 reference of its applied "
                            f"steps (max err {worst:.3g} of tol)", " | ".join(bad[:3]))
        return {l: layers.get(l, {}).get("finalized_step", applied[l]) or 0 for l in LAYERS}

    def test_kill9_parallel_layers(self):
        seed = int(os.environ.get("NS_DURABILITY_SEED", str(int(time.time() * 1000) % 1000000)))
        print(f"note test_kill9_parallel_layers: seed {seed} (NS_DURABILITY_SEED={seed} repeats the schedule)")
        krng = random.Random(seed)
        d = durable.Durable(os.path.join(self.root, "data"), "--threads", "8", name="crash-layers",
                            log_level="info")
        os.makedirs(d.dir)
        d.start()
        c = d.client()
        self.require(c.put(f"/v1/runs/{RUN}", {"world_size": 1, "momentum": MOMENTUM}).status == 201,
                     "create the run")
        c.close()
        sh, ref = Shared(), Reference()
        threads = [threading.Thread(target=thread_main, args=(sh, g), daemon=True) for g in range(len(GROUPS))]
        for t in threads:
            t.start()
        with sh.cond:
            sh.port, sh.epoch = d.port, 1
            sh.cond.notify_all()
        split, t0 = 0, time.monotonic()
        try:
            for cycle in range(1, CYCLES + 1):
                load = krng.uniform(*LOAD_S)
                time.sleep(load)
                rc = d.sigkill()
                with sh.cond:
                    parked = sh.cond.wait_for(lambda: len(sh.parked | sh.finished) == len(GROUPS), PARK_LIMIT_S)
                    acks, sh.acks = sh.acks, 0
                self.require(parked, f"cycle {cycle}: every thread noticed the kill (bounded {PARK_LIMIT_S}s)")
                desc = f"cycle {cycle} (kill after {load:.2f}s, {acks} /sync acks)"
                self.check_eq(rc, -9, f"{desc}: the daemon died of SIGKILL")
                self.check_eq(durable.integrity_check(d.dir), "ok", f"{desc}: PRAGMA integrity_check while down")
                try:
                    d.start()
                except RuntimeError as e:
                    self.require(False, f"{desc}: restart on the same --data-dir", str(e)[-1500:])
                c = d.client()
                resume = self.verify(c, sh, ref, desc)
                c.close()
                split += any(len({resume[l] for l in g}) > 1 for g in GROUPS)
                with sh.cond:
                    sh.resume, sh.port = resume, d.port
                    sh.epoch += 1
                    sh.cond.notify_all()
            with sh.cond:
                sh.stop_at = max(sh.resume.values()) + 4
                stop_at = sh.stop_at
                done = sh.cond.wait_for(lambda: len(sh.finished) == len(GROUPS), 30)
            self.require(done, f"the threads reach step {stop_at} and stop (bounded 30 s)")
            self.check_eq(d.stop(), 0, "SIGTERM at the end: exit status 0")
            d.start()
            c = d.client()
            final = self.verify(c, sh, ref, "after the final SIGTERM restart")
            c.close()
            self.check(all(v == stop_at for v in final.values()), f"every layer applied up to step {stop_at}",
                       f"{final}")
            self.check_eq(d.stop(), 0, "final SIGTERM: exit status 0")
        finally:
            with sh.cond:
                sh.stop = True
                sh.cond.notify_all()
            d.kill()
            for t in threads:
                t.join(10)
        self.check(sh.total_acks >= CYCLES, f"the threads had /sync answers acknowledged ({sh.total_acks})")
        self.check(not sh.failures, "every report was accepted (202, or 200 for /sync)", f"{sh.failures[:3]}")
        self.check(not sh.sync_bad, "every /sync answer carried its report's values", " | ".join(sh.sync_bad[:3]))
        self.check(not d.sanitizer_reports(), "no sanitizer report in the daemon's log",
                   "\n".join(d.sanitizer_reports()[:5]))
        print(f"note test_kill9_parallel_layers: {CYCLES} kill cycles in {time.monotonic() - t0:.1f}s, "
              f"{sh.reports} reports answered, {sh.total_acks} /sync acks, {split} restarts recovered the "
              f"layers of one report at different steps")


if __name__ == "__main__":
    nsd.main()
