"""test_durability_crash.py - kill -9 at random moments loses no acknowledged step.

4 worker threads drive a world_size-4 run (2 layers, domains a = workers 0-1
and b = workers 2-3) with /sync (and every 4th step /batches), each
(worker, step, layer) batch generated deterministically. A killer sends
SIGKILL at seeded random moments (seed printed; NS_DURABILITY_SEED
reproduces the schedule), at least 20 cycles of 0.2-1.5 s of load, and
restarts normstatd on the same --data-dir (every 4th cycle it is killed
once more within 30 ms of starting, during recovery). While it is down:
PRAGMA integrity_check on a copy of the store. After each restart, before
the workers resume:
 * every layer's last applied step >= the highest step any /sync answered
   200 for, num_batches_tracked == that step (every step 1..L applied, none
   twice, none missing), no pending step;
 * EMA (domains a, b, *) and PreciseBN (a, b, *) equal a float64 reference
   recomputed here from the deterministic reports of exactly steps 1..L
   (PyTorch EMA, momentum 0.1, unbiased N/(N-1); pooled PreciseBN M2/(n-1)),
   to 1e-6 relative (served values are float32).
Workers then re-report the steps that had not finalized (from the restarted
daemon's finalized step + 1; a layer already finalized at that step is left
out) and those reports must be accepted. Every /sync answer is checked
against the exact combination of the 4 reports. At the end the workers stop
at a common step, every view is recorded, SIGTERM (exit 0), restart, and the
bytes must be identical.
Every other daemon runs with --no-fsync (commits reach the kernel, not the
disk): a kill -9 must lose nothing acknowledged in that mode either.
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

nsd.SCRIPT_LIMIT_S = 170  # the whole script (the cycles below take well under a minute)

RUN = "crash"
WORLD = 4
LAYERS = {"features.0.bn": 3, "layer1.0.bn1": 2}
LAYER_IDX = {l: i for i, l in enumerate(LAYERS)}
DOMAIN = {0: "a", 1: "a", 2: "b", 3: "b"}
DOMAIN_WORKERS = {"a": (0, 1), "b": (2, 3), "*": (0, 1, 2, 3)}
MOMENTUM = 0.1
CYCLES = 22
LOAD_S = (0.2, 1.5)
DATA_SEED = 9041
HTTP_S = 30.0  # one request (a /sync waits for the other workers)
PARK_LIMIT_S = 30.0
SNAPSHOT_MS = 200  # snapshots (and log truncation) happen during the load, so kills hit them too


def set_fsync(d, start_no):
    """Odd starts run with --no-fsync, even ones fsync every commit."""
    d.args = [a for a in d.args if a != "--no-fsync"] + (["--no-fsync"] if start_no % 2 else [])


def is_batches(step):
    """Every 4th step is reported fire-and-forget, the others with /sync."""
    return step % 4 == 3


_cache = {}
_cache_lock = threading.Lock()


def layer_rep(worker, step, layer):
    """The deterministic report of one worker's layer at one step: count in
    [2, 12], float32 mean and biased var of a raw batch."""
    key = (worker, step, layer)
    with _cache_lock:
        v = _cache.get(key)
    if v is None:
        rng = np.random.default_rng([DATA_SEED, worker, step, LAYER_IDX[layer]])
        n = int(rng.integers(2, 13))
        loc = rng.uniform(-2, 2, LAYERS[layer])
        v = nsd.layer_report(nsd.gen_batch(rng, n, LAYERS[layer], loc=loc))
        with _cache_lock:
            _cache[key] = v
    return v


def combine(step, layer, workers):
    """(N, mean, biased var) of the given workers' reports, float64."""
    reps = [layer_rep(w, step, layer) for w in workers]
    n = np.array([r["count"] for r in reps], dtype=np.float64)
    m = np.array([r["mean"] for r in reps], dtype=np.float64)
    v = np.array([r["var"] for r in reps], dtype=np.float64)
    N = n.sum()
    mean = (n[:, None] * m).sum(0) / N
    var = (n[:, None] * (v + (m - mean) ** 2)).sum(0) / N
    return N, mean, var


class Reference:
    """EMA and PreciseBN of steps 1..L per (layer, domain), float64,
    extended on demand; states[layer][domain][L-1] = (ema_mean, ema_var,
    precise_n, precise_mean, precise_m2)."""

    def __init__(self):
        self.states = {l: {d: [] for d in DOMAIN_WORKERS} for l in LAYERS}

    def _acc(self, acc, N, mean, m2):
        n0, mean0, m20 = acc
        n = n0 + N
        delta = mean - mean0
        return n, mean0 + delta * N / n, m20 + m2 + delta * delta * n0 * N / n

    def upto(self, layer, L):
        for d in DOMAIN_WORKERS:
            st = self.states[layer][d]
            C = LAYERS[layer]
            while len(st) < L:
                s = len(st) + 1
                if st:
                    em, ev, pn, pm, pm2 = st[-1]
                else:
                    em, ev, pn, pm, pm2 = np.zeros(C), np.ones(C), 0.0, np.zeros(C), np.zeros(C)
                N, mean, var = combine(s, layer, DOMAIN_WORKERS[d])
                em = (1 - MOMENTUM) * em + MOMENTUM * mean
                ev = (1 - MOMENTUM) * ev + MOMENTUM * var * N / (N - 1)
                if d == "*":  # pooled PreciseBN: the merge of the per-domain accumulators
                    pn, pm, pm2 = self._acc(self.states[layer]["a"][s - 1][2:], *self.states[layer]["b"][s - 1][2:])
                else:
                    pn, pm, pm2 = self._acc((pn, pm, pm2), N, mean, var * N)
                st.append((em, ev, pn, pm, pm2))
        return {d: self.states[layer][d][L - 1] for d in DOMAIN_WORKERS} if L > 0 else None


class Shared(durable.KillCycles):
    def __init__(self, workers):
        super().__init__(LAYERS)
        self.acked = 0  # highest step a /sync answered 200 for
        self.acks = 0  # /sync 200 answers in this cycle
        self.total_acks = 0
        self.steps_sent = 0
        self.sync_checked = 0
        self.batches_202 = 0
        self.rereported = 0  # reports repeated after a restart (their step had not finalized)


def worker_main(sh, w):
    my_epoch = 0
    sent_max = 0
    broken = True
    cl = None
    s = 1
    resume = None
    while True:
        with sh.cond:
            if broken:
                my_epoch = sh.park(w, my_epoch)
                if my_epoch is None:
                    break
                resume = dict(sh.resume)
                s = min(resume.values()) + 1
                sh.rereported += max(0, sent_max - s + 1)  # reported before the kill, not finalized
                port = sh.port
                broken = False
                if cl is not None:
                    cl.close()
                cl = nsd.Client("127.0.0.1", port, timeout=HTTP_S)
            if sh.stop or (sh.stop_at is not None and s > sh.stop_at):
                break
            epoch = sh.epoch
        layers = {l: layer_rep(w, s, l) for l in LAYERS if s > resume[l]}
        rep = {"step": s, "worker": w, "domain": DOMAIN[w], "layers": layers}
        sync = not is_batches(s)
        sent_max = max(sent_max, s)
        try:
            r = cl.report(RUN, rep, sync=sync, timeout=HTTP_S, validate=False)
        except (OSError, http.client.HTTPException):
            broken = True
            continue
        with sh.cond:
            sh.steps_sent += 1
            if sync and r.status == 200:
                sh.acked = max(sh.acked, s)
                sh.acks += 1
                sh.total_acks += 1
            elif not sync and r.status == 202:
                sh.batches_202 += 1
            elif sh.epoch != epoch or sh.stop:
                broken = True  # answered while being stopped (503 shutting_down)
                continue
            else:
                sh.failures.append((f"worker {w} step {s} {'/sync' if sync else '/batches'} "
                                    f"(epoch {epoch}, layers {sorted(layers)})", r.short(300)))
                broken = True
                continue
        if sync:
            check_sync_answer(sh, w, s, r, layers)
        s += 1
    if cl is not None:
        cl.close()
    with sh.cond:
        sh.finished.add(w)
        sh.cond.notify_all()


def check_sync_answer(sh, w, s, r, layers):
    """A /sync answer carries the exact global statistics of the 4 reports."""
    try:
        b = r.json()
        bad = []
        if b.get("step") != s or b.get("complete") is not True or b.get("workers") != WORLD:
            bad.append(f"header {({k: b.get(k) for k in ('step', 'complete', 'workers')})}")
        if sorted(b.get("layers", {})) != sorted(layers):
            bad.append(f"layers {sorted(b.get('layers', {}))} != {sorted(layers)}")
        for l in layers:
            got = b.get("layers", {}).get(l, {})
            N, mean, var = combine(s, l, DOMAIN_WORKERS["*"])
            if got.get("count") != int(N) or nsd.max_err(got.get("mean", []), mean) > 1 \
                    or nsd.max_err(got.get("var", []), var) > 1:
                bad.append(f"{l}: got {got} expected count {int(N)} mean {list(mean)} var {list(var)}")
    except Exception as e:  # a malformed answer is a finding
        bad = [f"unparsable answer {e!r}: {r.short(200)}"]
    with sh.cond:
        sh.sync_checked += 1
        if bad:
            sh.sync_bad.append(f"worker {w} step {s}: " + "; ".join(bad))


class Crash(durable.Case):

    root_prefix = "normstat-crash-"

    def setUp(self):
        super().setUp()

    def tearDown(self):
        self.finish()

    def verify(self, c, sh, ref, desc):
        """State after a restart against the acknowledged steps and the
        reference; returns the per-layer finalized step to resume from."""
        r = c.get(f"/v1/runs/{RUN}", validate=False)
        self.require(r.status == 200, f"{desc}: the run exists after restart", r.short())
        st = r.json().get("status", {})
        layers = st.get("layers", {})
        applied = {}
        ok = True
        details = []
        for l in LAYERS:
            lv = layers.get(l)
            if lv is None:
                if sh.acked > 0:
                    ok = False
                    details.append(f"layer {l} missing")
                applied[l] = 0
                continue
            L = lv.get("step", -1)
            L = 0 if L is None or L < 0 else L
            applied[l] = L
            if L < sh.acked:
                ok = False
                details.append(f"layer {l}: last applied step {L} < acknowledged step {sh.acked}")
            if lv.get("num_batches_tracked") != L:
                ok = False
                details.append(f"layer {l}: num_batches_tracked {lv.get('num_batches_tracked')} != last applied "
                               f"step {L} (a step missing or applied twice)")
            if lv.get("finalized_step", L) != L:
                ok = False
                details.append(f"layer {l}: finalized_step {lv.get('finalized_step')} != applied step {L} "
                               f"with nothing pending")
        self.check(ok, f"{desc}: every acknowledged step is present (acked up to {sh.acked}, "
                       f"applied {applied})", "; ".join(details))
        self.check(not st.get("pending"), f"{desc}: no pending step after restart", f"{st.get('pending')}")
        # EMA and PreciseBN against the reference of steps 1..L
        worst = 0.0
        bad = []
        for d in DOMAIN_WORKERS:
            ema = c.stats(RUN, source="ema", domain=d)
            pre = c.stats(RUN, source="precise", domain=d)
            if ema.status != 200 or pre.status != 200:
                if max(applied.values()) > 0:
                    bad.append(f"domain {d}: stats ema {ema.short(150)} precise {pre.short(150)}")
                continue
            eb, pb = ema.json().get("layers", {}), pre.json().get("layers", {})
            for l in LAYERS:
                L = applied[l]
                if L == 0:
                    continue
                em, ev, pn, pm, pm2 = ref.upto(l, L)[d]
                ge, gp = eb.get(l, {}), pb.get(l, {})
                errs = [nsd.max_err(ge.get("running_mean", []), em), nsd.max_err(ge.get("running_var", []), ev),
                        nsd.max_err(gp.get("running_mean", []), pm),
                        nsd.max_err(gp.get("running_var", []), pm2 / (pn - 1))]
                worst = max([worst] + errs)
                if max(errs) > 1:
                    bad.append(f"domain {d} layer {l} (steps 1..{L}): ema mean {ge.get('running_mean')} "
                               f"ref {list(em)}; ema var {ge.get('running_var')} ref {list(ev)}; precise mean "
                               f"{gp.get('running_mean')} ref {list(pm)}; precise var {gp.get('running_var')} "
                               f"ref {list(pm2 / (pn - 1))}")
                if ge.get("num_batches_tracked") != L or ge.get("step") != L:
                    bad.append(f"domain {d} layer {l}: ema num_batches_tracked {ge.get('num_batches_tracked')}, "
                               f"step {ge.get('step')}, expected {L}")
                # (pooled num_batches is the domains' merge: not compared with L)
                if (d != "*" and gp.get("num_batches") != L) or gp.get("num_samples") != int(pn):
                    bad.append(f"domain {d} layer {l}: precise num_batches {gp.get('num_batches')} num_samples "
                               f"{gp.get('num_samples')}, expected {L}, {int(pn)}")
        self.check(not bad, f"{desc}: EMA and PreciseBN (domains a, b, *) = reference of the applied steps "
                            f"(max err {worst:.3g} of tol)", " | ".join(bad[:3]))
        return {l: layers.get(l, {}).get("finalized_step", applied[l]) or 0 for l in LAYERS}

    def test_kill9_cycles(self):
        seed = int(os.environ.get("NS_DURABILITY_SEED", str(int(time.time() * 1000) % 1000000)))
        print(f"note test_kill9_cycles: seed {seed} (NS_DURABILITY_SEED={seed} repeats the kill schedule)")
        krng = random.Random(seed)
        d = durable.Durable(os.path.join(self.root, "data"), "--snapshot-interval", str(SNAPSHOT_MS),
                            name="crash", log_level="info")
        os.makedirs(d.dir)
        d.start()
        c = d.client()
        self.require(c.put(f"/v1/runs/{RUN}", {"world_size": WORLD, "momentum": MOMENTUM,
                                                "sync_timeout_ms": 120000}).status == 201, "create the run")
        c.close()
        sh = Shared(WORLD)
        ref = Reference()
        threads = [threading.Thread(target=worker_main, args=(sh, w), daemon=True) for w in range(WORLD)]
        for t in threads:
            t.start()
        with sh.cond:
            sh.port = d.port
            sh.epoch = 1
            sh.cond.notify_all()
        cycles_with_acks = 0
        early_kills = 0  # extra kills during start-up (recovery)
        beyond = []  # per cycle: finalized steps recovered beyond the last acknowledged one
        split = []  # cycles that recovered the layers at different steps
        t0 = time.monotonic()
        try:
            for cycle in range(1, CYCLES + 1):
                load = krng.uniform(*LOAD_S)
                time.sleep(load)
                rc = d.sigkill()
                with sh.cond:
                    parked = sh.cond.wait_for(lambda: len(sh.parked | sh.finished) == WORLD, PARK_LIMIT_S)
                    acked, acks = sh.acked, sh.acks
                    sh.acks = 0
                self.require(parked, f"cycle {cycle}: every worker noticed the kill (bounded {PARK_LIMIT_S}s)")
                cycles_with_acks += acks > 0
                desc = f"cycle {cycle} (kill after {load:.2f}s, {acks} /sync acks, acked up to step {acked})"
                self.check_eq(rc, -9, f"{desc}: the daemon died of SIGKILL")
                self.check_eq(durable.integrity_check(d.dir), "ok", f"{desc}: PRAGMA integrity_check while down")
                if cycle % 4 == 0:
                    # and killed again during start-up/recovery
                    d._spawn()
                    time.sleep(krng.uniform(0.0, 0.03))
                    d.sigkill()
                    early_kills += 1
                    self.check_eq(durable.integrity_check(d.dir), "ok",
                                  f"{desc}: PRAGMA integrity_check after a kill during start-up")
                desc += ", the killed daemon ran with --no-fsync" if (cycle - 1) % 2 else ""
                set_fsync(d, cycle)
                try:
                    d.start()
                except RuntimeError as e:
                    self.require(False, f"{desc}: restart on the same --data-dir", str(e)[-1500:])
                c = d.client()
                resume = self.verify(c, sh, ref, desc)
                c.close()
                ahead = max(resume.values()) - acked
                if ahead > 0:
                    beyond.append(ahead)
                if len(set(resume.values())) > 1:
                    split.append((cycle, resume))
                with sh.cond:
                    sh.resume = resume
                    sh.port = d.port
                    sh.epoch += 1
                    sh.cond.notify_all()
            # the end: stop at a common step, then a graceful restart must be exact
            with sh.cond:
                sh.stop_at = max([sh.acked] + list(sh.resume.values())) + 6
                stop_at = sh.stop_at
            with sh.cond:
                done = sh.cond.wait_for(lambda: len(sh.finished) == WORLD, 60)
            self.require(done, f"the workers reach step {stop_at} and stop (bounded 60 s)")
            c = d.client()
            r = c.get(f"/v1/runs/{RUN}", validate=False).json().get("status", {}).get("layers", {})
            self.check(all(v.get("step") == stop_at for v in r.values()) and len(r) == len(LAYERS),
                       f"all layers applied up to the last step {stop_at}", f"{r}")
            v1 = durable.views(c, RUN, ("a", "b"), None, "a:1,b:1")
            bad = durable.ok_views(v1)
            c.close()
            self.check_eq(d.stop(), 0, "SIGTERM at the end: exit status 0")
            self.check_eq(durable.integrity_check(d.dir), "ok", "PRAGMA integrity_check after SIGTERM")
            d.start()
            c = d.client()
            self.verify(c, sh, ref, "after the final SIGTERM restart")
            v2 = durable.views(c, RUN, ("a", "b"), None, "a:1,b:1")
            diff = durable.diff_views(v1, v2)
            self.check(not diff, f"after SIGTERM and restart: {len(v1)} views identical bytes "
                                 f"({len(v1) - len(bad)} answered 200)", " | ".join(diff[:4]))
            c.close()
            self.check_eq(d.stop(), 0, "final SIGTERM: exit status 0")
        finally:
            with sh.cond:
                sh.stop = True
                sh.cond.notify_all()
            d.kill()
            for t in threads:
                t.join(10)
        el = time.monotonic() - t0
        print(f"note test_kill9_cycles: {CYCLES} kill cycles in {el:.1f}s, {sh.steps_sent} reports answered, "
              f"{sh.total_acks} /sync acks ({cycles_with_acks} cycles with acks), {sh.batches_202} /batches 202, "
              f"last step {sh.acked}, {sh.sync_checked} /sync answers checked")
        print(f"note test_kill9_cycles: {early_kills} extra kills during start-up")
        print(f"note test_kill9_cycles: {len(beyond)} of {CYCLES} restarts recovered finalized steps beyond the "
              f"last /sync ack (by {sorted(beyond)}); {sh.rereported} reports re-sent after restarts, all accepted; "
              f"layers recovered "
              f"at different steps in {len(split)} cycles {split[:3]}")
        n = durable.check_probes(self, d, "restarts")
        print(f"note test_kill9_cycles: {n} probes made while /readyz was 503")
        for desc, detail in sh.failures[:10]:
            self.check(False, f"{desc}: accepted (200 /sync, 202 /batches)", detail)
        self.check(not sh.failures, f"every report of the workers was accepted ({len(sh.failures)} not)")
        self.check(not sh.sync_bad, f"{sh.sync_checked} /sync answers = exact combination of the 4 reports",
                   " | ".join(sh.sync_bad[:3]))
        self.check(cycles_with_acks >= CYCLES // 2, f"load reached the daemon: /sync acks in "
                                                   f"{cycles_with_acks} of {CYCLES} cycles (at least half)")
        san = d.sanitizer_reports()
        self.check(not san, "no sanitizer reports", "\n".join(san[:5]))


if __name__ == "__main__":
    nsd.main()
