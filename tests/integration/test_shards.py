"""test_shards.py - runs sharded over three normstatd behind Debian's nginx.

Three persistent normstatd (each its own --data-dir) and a real nginx running
deploy/nginx/normstat-shards.conf (shard names replaced by the loopback
addresses, see shards.py), started the way an operator starts them. Twelve
runs (world_size 2, two layers) are driven through the proxy with the
unchanged Python client (safetensors and JSON reports, /batches and /sync
long-polls) and the C CLI (`normstat report`, `report --sync`, `stats`,
`runs`, `health`):

* every run is on exactly one shard, the one nginx's consistent hash of its
  name picks (evaluated independently in shards.py), and the proxy says so
  in X-Normstat-Shard;
* /sync answers and the served EMA, PreciseBN and last statistics equal a
  float64 reference computed from the raw batches (nsd.combine, nsd.Ema,
  nsd.Pool);
* the answers that span runs: the proxy's own /livez and /readyz, 404 with
  directions for GET /v1/runs and /metrics, each shard read-only under
  /shards/K/ (its /v1/runs equal to the daemon's own, its /metrics counting
  its runs), 405 for a write there, `normstat runs` listing every shard with
  the shard of each run (through the proxy and with --shards);
* a 15 MiB safetensors report and its 15 MiB /sync answer pass the proxy
  bit for bit; a body over 16 MiB is refused by the proxy with 413
  body_too_large and nothing is created;
* kill -9 of one shard: a /sync waiting on it ends at once with 502
  shard_unavailable (Python) instead of hanging, every call for its runs
  gets 502 shard_unavailable (Python ServerError, CLI exit status 1 naming
  it), nothing of its runs appears on another shard, the other shards' runs
  go on (reports, /sync, stats), `normstat runs` lists the others and names
  the missing shard (exit 1);
* the shard restarted on the same port and store: its runs serve the same
  bytes as before the kill, through the same proxy and client connections,
  and continue; every statistic of every run still equals the reference;
* libnormstat's asynchronous client (client_trainer.c, as in test_cli.py)
  trains a run through the proxy: its /sync answers and EMA equal the
  reference.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
import durable  # noqa: E402
import shards  # noqa: E402

sys.path.insert(0, os.path.join(nsd.REPO, "client", "python"))
import normstat  # noqa: E402

N_SHARDS = 3
RUNS_PER_SHARD = 4
LAYERS = {"stem.bn": 5, "layer1.0.bn1": 3}
MOMENTUM = 0.1
BATCH = {0: 6, 1: 4}  # values per channel of each worker's batch
VICTIM = 1  # the shard killed in test_d
CALL_TIMEOUT_S = 10.0  # any one client call: a hang fails as a Timeout, not as a stuck test
SYNC_WAIT_S = 20.0
CLI_TIMEOUT_S = 20.0


def cli_path():
    build = os.environ.get("NS_BUILD", "build")
    if not os.path.isabs(build):
        build = os.path.join(nsd.REPO, build)
    return os.path.join(build, "bin", "normstat")


class RunRef:
    """The float64 reference of one run: EMA and PreciseBN per layer, and
    the last step's combination."""

    def __init__(self):
        self.ema = {l: nsd.Ema(c, MOMENTUM) for l, c in LAYERS.items()}
        self.pool = {l: nsd.Pool() for l in LAYERS}
        self.last = None  # {layer: (N, mean, var)}

    def apply(self, batches):
        """One finalized step: batches[worker][layer] = raw x[n, C]."""
        self.last = {}
        for l in LAYERS:
            arrivals = [nsd.arrival_of(nsd.layer_report(batches[w][l])) for w in sorted(batches)]
            N, mean, var = nsd.combine(arrivals)
            self.ema[l].apply(N, mean, var)
            for w in sorted(batches):
                self.pool[l].add(batches[w][l])
            self.last[l] = (N, mean, var)


class Shards(durable.Case):
    """One cluster for the class; the tests run in name order (a..d)."""

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="normstat-shards-")
        cls.daemons = []
        for k in range(N_SHARDS):
            d = durable.Durable(os.path.join(cls.root, f"shard{k}"), name=f"shard{k}",
                                log_level="info")
            cls.daemons.append(d)
            d.start()
        cls.ports = [d.port for d in cls.daemons]
        cls.proxy = shards.Proxy(cls.ports, os.path.join(cls.root, "nginx")).start()
        cls.url = cls.proxy.url
        cls.addrs = [f"127.0.0.1:{p}" for p in cls.ports]
        cls.ring = shards.chash_ring(cls.addrs)
        cls.runs = cls.pick_runs()
        cls.refs = {r: RunRef() for r in cls.runs}
        cls.rng = np.random.default_rng(20260414)
        cls.workers = [normstat.Client(cls.url, timeout=CALL_TIMEOUT_S, sync_timeout=SYNC_WAIT_S)
                       for _ in BATCH]
        cls.before_kill = {}

    @classmethod
    def pick_runs(cls):
        """RUNS_PER_SHARD run names per shard, as nginx will place them."""
        want = {a: [] for a in cls.addrs}
        i = 0
        while any(len(v) < RUNS_PER_SHARD for v in want.values()):
            name = f"shard-run-{i:03d}"
            home = shards.chash_shard(cls.ring, name)
            if len(want[home]) < RUNS_PER_SHARD:
                want[home].append(name)
            i += 1
        return {r: cls.addrs.index(a) for a, names in want.items() for r in names}

    @classmethod
    def tearDownClass(cls):
        for c in cls.workers:
            c.close()
        rc = cls.proxy.stop()
        print(f"{'ok  ' if rc == 0 else 'FAIL'} nginx stopped by SIGTERM with exit status {rc}")
        bad = [(d.name, d.stop()) for d in cls.daemons]
        bad = [b for b in bad if b[1] != 0]
        print(f"{'ok  ' if not bad else 'FAIL'} shards stopped by SIGTERM with exit status 0 "
              f"{bad if bad else ''}")
        shutil.rmtree(cls.root, ignore_errors=True)
        if rc != 0 or bad:
            raise AssertionError("a process did not stop cleanly")

    def setUp(self):
        self._fails = []
        self._clients = []

    def tearDown(self):
        for d in self.daemons:
            san = d.sanitizer_reports()
            if san:
                self.check(False, f"{d.name}: no sanitizer reports", "\n".join(san[:5]))
        if self._fails:
            self.fail(f"{len(self._fails)} failed checks: " + "; ".join(map(str, self._fails[:5])))

    # ---------------------------------------------------------------- helpers

    def batches(self):
        return {w: {l: nsd.gen_batch(self.rng, n, c) for l, c in LAYERS.items()}
                for w, n in BATCH.items()}

    @staticmethod
    def layers_of(batch):
        return {l: nsd.layer_report(x) for l, x in batch.items()}

    def raw(self, method, path, body=None, headers=None, port=None):
        """One exchange with the proxy (or a daemon's port) outside the
        clients: (status, headers, body bytes)."""
        c = nsd.Client("127.0.0.1", port or self.proxy.port, timeout=CALL_TIMEOUT_S)
        try:
            r = c.request(method, path, body=body, headers=headers, validate=False)
            return r.status, r.headers, r.body
        finally:
            c.close()

    def direct_runs(self, k):
        status, _, body = self.raw("GET", "/v1/runs", port=self.daemons[k].port)
        self.require(status == 200, f"shard {k}: GET /v1/runs directly -> 200", body[:200])
        return json.loads(body)

    def cli(self, *args, url=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("NORMSTAT_")}
        argv = [cli_path(), "--url", url or self.url, "--timeout", str(int(CALL_TIMEOUT_S * 1000))]
        r = subprocess.run(argv + list(args), capture_output=True, text=True, env=env,
                           timeout=CLI_TIMEOUT_S)
        return r.returncode, r.stdout, r.stderr

    def step_batches(self, run, step, via_cli=False):
        """/batches of both workers for one step (worker 1 by the CLI when
        via_cli); returns the raw batches."""
        b = self.batches()
        self.workers[0].report(run, step, 0, self.layers_of(b[0]))
        if via_cli:
            path = os.path.join(self.root, f"{run}-{step}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump({"step": step, "worker": 1, "layers": self.layers_of(b[1])}, f)
            rc, out, err = self.cli("report", run, path)
            self.require(rc == 0, f"{run} step {step}: normstat report through the proxy -> exit 0",
                         err)
        else:
            self.workers[1].report(run, step, 1, self.layers_of(b[1]), fmt="json")
        return b

    def cli_sync(self, run, step, worker, batch):
        """`normstat report --sync` of one worker: its answer as a dict."""
        path = os.path.join(self.root, f"{run}-{step}-{worker}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"step": step, "worker": worker, "layers": self.layers_of(batch)}, f)
        rc, out, err = self.cli("--json", "report", run, path, "--sync")
        if rc != 0:
            raise RuntimeError(f"normstat report --sync: exit {rc}: {err}")
        return json.loads(out)

    def step_sync(self, run, step, via_cli=False):
        """Both workers /sync one step at once (worker 1 by `normstat report
        --sync` when via_cli); checks the answers against the reference
        (which it advances). Returns the raw batches."""
        b = self.batches()
        calls = [lambda w=w: self.workers[w].sync(run, step, w, self.layers_of(b[w]))
                 for w in BATCH]
        if via_cli:
            calls[1] = lambda: self.cli_sync(run, step, 1, b[1])
        res, errs = nsd.parallel(calls, limit=SYNC_WAIT_S + 5)
        self.require(not any(errs), f"{run} step {step}: both /sync through the proxy answered"
                     + (" (worker 1: normstat report --sync)" if via_cli else ""), repr(errs))
        self.refs[run].apply(b)
        for w, ans in enumerate(res):
            ok = ans["complete"] and ans["step"] == step
            for l in LAYERS:
                N, mean, var = self.refs[run].last[l]
                got = ans["layers"][l]
                ok = ok and got["count"] == N and nsd.max_err(got["mean"], mean) <= 1 and \
                    nsd.max_err(got["var"], var) <= 1
            self.check(ok, f"{run} step {step}: worker {w}'s /sync answer = float64 combination",
                       str(ans)[:300])
        return b

    def check_stats(self, run, desc):
        """ema, precise and last of a run through the proxy against the reference."""
        ref = self.refs[run]
        ema = self.workers[0].stats(run, source="ema")
        pre = self.workers[0].stats(run, source="precise")
        last = self.workers[0].stats(run, source="last")
        worst = 0.0
        for l in LAYERS:
            m, v = ref.ema[l].served()
            worst = max(worst, nsd.max_err(ema["layers"][l]["running_mean"], m),
                        nsd.max_err(ema["layers"][l]["running_var"], v))
            _, pm, pv = ref.pool[l].values()
            worst = max(worst, nsd.max_err(pre["layers"][l]["running_mean"], pm),
                        nsd.max_err(pre["layers"][l]["running_var"], pv))
            N, lm, lv = ref.last[l]
            worst = max(worst, nsd.max_err(last["layers"][l]["mean"], lm),
                        nsd.max_err(last["layers"][l]["var"], lv))
            if ema["layers"][l]["num_batches_tracked"] != ref.ema[l].nbt:
                worst = float("inf")
        self.check(worst <= 1, f"{run}: {desc}: ema, precise, last = float64 reference "
                   f"(max err {worst:.3g} of tol)")

    def views(self, run):
        """Every statistics view of a run through the proxy, as bytes."""
        out = {}
        for src in ("ema", "precise", "last"):
            for fmt in ("json", "safetensors"):
                status, _, body = self.raw("GET", f"/v1/runs/{run}/stats?source={src}&format={fmt}")
                out[(src, fmt)] = (status, body)
        status, _, body = self.raw("GET", f"/v1/runs/{run}/checkpoint")
        out["checkpoint"] = (status, body)
        return out

    def expect_502(self, fn, desc):
        """fn() must raise the proxy's 502 shard_unavailable (not a timeout)."""
        try:
            fn()
        except normstat.Error as e:
            return self.check(e.status == 502 and e.code == "shard_unavailable"
                              and isinstance(e, normstat.ServerError),
                              f"{desc} -> 502 shard_unavailable (ServerError)",
                              f"{type(e).__name__}: {e}")
        return self.check(False, f"{desc} -> 502 shard_unavailable", "it succeeded")

    # ---------------------------------------------------------------- tests

    def test_a_runs_through_the_proxy(self):
        self.check(self.proxy.replaced == 3 * N_SHARDS,
                   "the shipped configuration names normstat-0..2 in its upstreams "
                   "(runs ring, one per shard, any)", f"{self.proxy.replaced} names replaced")
        with open(shards.CONF, encoding="utf-8") as f:
            ups = shards.upstreams(f.read())
        self.check_eq(ups.get("normstat_runs"), [f"normstat-{k}:8750" for k in range(N_SHARDS)],
                      "upstream normstat_runs lists the shards in order")
        cli_runs = {}  # one run per shard gets worker 1's step 1 from the C CLI
        for run, k in sorted(self.runs.items()):
            cli_runs.setdefault(k, run)
        for run in sorted(self.runs):
            ans = self.workers[0].put_run(run, world_size=len(BATCH), momentum=MOMENTUM,
                                          sync_timeout_ms=int(SYNC_WAIT_S * 1000))
            self.check(ans.created, f"{run}: PUT through the proxy created it")
            for step in (0, 1):
                b = self.step_batches(run, step, via_cli=step == 1 and run in cli_runs.values())
                self.refs[run].apply(b)
            self.step_sync(run, 2, via_cli=run in cli_runs.values())

        placed = {}
        for k in range(N_SHARDS):
            for r in self.direct_runs(k)["runs"]:
                placed.setdefault(r["run"], []).append(k)
        self.check_eq(sorted(placed), sorted(self.runs),
                      "the shards together hold exactly the 12 runs")
        wrong = {r: (ks, self.runs[r]) for r, ks in placed.items() if ks != [self.runs.get(r)]}
        self.check(not wrong, "every run is on exactly one shard: the one nginx's consistent "
                   "hash of its name picks (shards.chash_shard)", str(wrong))
        self.check_eq(sorted(len([r for r in placed if placed[r] == [k]]) for k in range(N_SHARDS)),
                      [RUNS_PER_SHARD] * N_SHARDS, "4 runs on each shard")
        for run, k in sorted(self.runs.items())[:N_SHARDS]:
            _, hdrs, _ = self.raw("GET", f"/v1/runs/{run}")
            self.check_eq(hdrs.get("x-normstat-shard"), self.addrs[k],
                          f"{run}: X-Normstat-Shard names its shard")
        # A run name percent-encoded reaches the same shard (the hash is of the decoded path).
        run = sorted(self.runs)[0]
        enc = "".join(f"%{b:02X}" for b in run.encode())
        status, hdrs, _ = self.raw("GET", f"/v1/runs/{enc}")
        self.check(status == 200 and hdrs.get("x-normstat-shard") == self.addrs[self.runs[run]],
                   f"{run} percent-encoded: 200 from the same shard", f"{status} {hdrs}")

        for run in sorted(self.runs):
            self.check_stats(run, "through the proxy")
        for run in cli_runs.values():
            rc, out, err = self.cli("stats", run, "--source", "ema")
            ok = rc == 0
            if ok:
                got = json.loads(out)
                for l in LAYERS:
                    m, v = self.refs[run].ema[l].served()
                    ok = ok and nsd.max_err(got["layers"][l]["running_mean"], m) <= 1 and \
                        nsd.max_err(got["layers"][l]["running_var"], v) <= 1
            self.check(ok, f"{run}: normstat stats through the proxy = float64 EMA", err or out[:200])

    def test_b_answers_that_span_runs(self):
        status, hdrs, body = self.raw("GET", "/livez")
        self.check(status == 200 and json.loads(body) == {"status": "ok"}
                   and "x-normstat-shard" not in hdrs, "proxy GET /livez -> 200, its own answer")
        status, _, body = self.raw("GET", "/readyz")
        self.check(status == 200 and json.loads(body) == {"status": "ready"},
                   "proxy GET /readyz -> 200 {status: ready}")
        for path, words in (("/v1/runs", "/shards/N/v1/runs"), ("/metrics", "/shards/N/metrics")):
            status, hdrs, body = self.raw("GET", path)
            err = json.loads(body).get("error", {}) if status == 404 else {}
            self.check(status == 404 and err.get("code") == "not_found"
                       and words in err.get("message", "")
                       and hdrs.get("content-type") == "application/json",
                       f"proxy GET {path} -> 404 not_found naming {words}", body[:200])
        try:
            normstat.Client(self.url, timeout=CALL_TIMEOUT_S).list_runs()
            self.check(False, "Python list_runs() at the proxy -> NotFound", "it succeeded")
        except normstat.NotFound as e:
            self.check("/shards/N/v1/runs" in e.message,
                       "Python list_runs() at the proxy -> NotFound naming /shards/N/v1/runs")
        status, _, body = self.raw("GET", "/v1/version")
        self.check(status == 200 and "version" in json.loads(body),
                   "proxy GET /v1/version -> a shard's version")

        for k in range(N_SHARDS):
            direct = self.direct_runs(k)
            status, hdrs, body = self.raw("GET", f"/shards/{k}/v1/runs")
            self.check(status == 200 and json.loads(body) == direct
                       and hdrs.get("x-normstat-shard") == self.addrs[k],
                       f"GET /shards/{k}/v1/runs = shard {k}'s own GET /v1/runs", body[:200])
            c = normstat.Client(f"{self.url}/shards/{k}", timeout=CALL_TIMEOUT_S)
            self.check_eq(c.list_runs(), direct["runs"],
                          f"Python Client at {self.url}/shards/{k}: list_runs() = shard {k}'s")
            c.close()
            status, _, body = self.raw("GET", f"/shards/{k}/metrics")
            m = re.search(rb"^normstat_runs (\d+)", body, re.M)
            self.check(status == 200 and m is not None and int(m.group(1)) == RUNS_PER_SHARD,
                       f"GET /shards/{k}/metrics -> shard {k}'s metrics (normstat_runs "
                       f"{RUNS_PER_SHARD})", body[:120])
            status, _, body = self.raw("GET", f"/shards/{k}/readyz")
            self.check(status == 200 and json.loads(body) == {"status": "ready"},
                       f"GET /shards/{k}/readyz -> 200")
        status, _, body = self.raw("GET", f"/shards/{N_SHARDS}/v1/runs")
        self.check(status == 404 and json.loads(body)["error"]["code"] == "not_found",
                   f"GET /shards/{N_SHARDS}/v1/runs (no such shard) -> 404 not_found")
        rep = {"step": 0, "worker": 0, "layers": {"bn": {"count": 2, "mean": [0.0], "var": [1.0]}}}
        for method, path in (("POST", "/shards/0/v1/runs/written-to-a-shard/batches"),
                             ("PUT", "/shards/0/v1/runs/written-to-a-shard"),
                             ("DELETE", f"/shards/{self.runs[sorted(self.runs)[0]]}/v1/runs/"
                                        f"{sorted(self.runs)[0]}")):
            status, hdrs, body = self.raw(method, path, body=rep if method == "POST" else None)
            self.check(status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"
                       and hdrs.get("allow") == "GET, HEAD",
                       f"{method} {path.split('/v1')[0]}/... -> 405 method_not_allowed, "
                       "Allow: GET, HEAD", body[:200])
        held = sorted(r["run"] for k in range(N_SHARDS) for r in self.direct_runs(k)["runs"])
        self.check_eq(held, sorted(self.runs), "the refused writes changed no shard")

        rc, out, err = self.cli("--json", "runs")
        ok = rc == 0
        if ok:
            got = json.loads(out)
            where = {r["run"]: r["shard"] for r in got["runs"]}
            ok = where == {r: f"{self.url}/shards/{k}" for r, k in self.runs.items()} and \
                [s.get("runs") for s in got["shards"]] == [RUNS_PER_SHARD] * N_SHARDS and \
                [r["run"] for r in got["runs"]] == sorted(self.runs)
        self.check(ok, "normstat runs at the proxy lists every shard's runs, each with its "
                   "/shards/K URL, sorted", (err + out)[:400])
        rc, out, err = self.cli("--table", "runs")
        rows = [line for line in out.splitlines()[1:] if line.strip()]
        self.check(rc == 0 and "SHARD" in out.splitlines()[0] and len(rows) == len(self.runs),
                   "normstat --table runs at the proxy: a SHARD column, 12 rows", out[:300])
        direct = ",".join(f"http://{a}" for a in self.addrs)
        rc, out, err = self.cli("--json", "runs", "--shards", direct)
        ok = rc == 0 and {r["run"]: r["shard"] for r in json.loads(out)["runs"]} == \
            {r: f"http://{self.addrs[k]}" for r, k in self.runs.items()}
        self.check(ok, "normstat runs --shards URL,URL,URL (the daemons) lists all 12 with their "
                   "shard", (err + out)[:300])
        rc, out, err = self.cli("--json", "health")
        self.check(rc == 0 and json.loads(out) == {"live": True, "ready": True},
                   "normstat health at the proxy -> live, ready", err)
        rc, out, err = self.cli("--json", "health", url=f"{self.url}/shards/2")
        self.check(rc == 0, "normstat health at /shards/2 -> exit 0", err)

    def test_c_bodies_up_to_16_mib(self):
        run = "shard-big-bodies"
        c = self.workers[0]
        c.put_run(run, world_size=2)
        channels = 15 * (1 << 20) // 8  # a 15 MiB safetensors report (mean and var float32)
        rng = np.random.default_rng(7)
        mean = rng.standard_normal(channels).astype(np.float32)
        var = rng.uniform(0.5, 2.0, channels).astype(np.float32)
        big = {"wide.bn": {"count": 8, "mean": mean.tobytes(), "var": var.tobytes()}}
        c.report(run, 0, 0, big)
        ans = self.workers[1].sync(run, 0, 1, {"wide.bn": {"count": 0}}, fmt="safetensors",
                                   timeout=SYNC_WAIT_S)
        got_mean = np.asarray(ans["layers"]["wide.bn"]["mean"], dtype=np.float32)
        got_var = np.asarray(ans["layers"]["wide.bn"]["var"], dtype=np.float32)
        self.check(ans["layers"]["wide.bn"]["count"] == 8 and got_mean.tobytes() == mean.tobytes()
                   and got_var.tobytes() == var.tobytes(),
                   f"a 15 MiB report ({channels} channels) and its /sync answer pass the proxy "
                   "bit for bit (one non-empty arrival: the combination is the arrival)")
        too_big = b"{" + b" " * ((16 << 20) + 1) + b"}"
        status, hdrs, body = self.raw("POST", "/v1/runs/shard-too-big/batches", body=too_big,
                                      headers={"Content-Type": "application/json"})
        self.check(status == 413 and json.loads(body)["error"]["code"] == "body_too_large",
                   "a body over 16 MiB -> 413 body_too_large (JSON) from the proxy", body[:200])
        status, _, _ = self.raw("GET", "/v1/runs/shard-too-big")
        self.check_eq(status, 404, "... and no run was created")
        c.delete_run(run)

    def test_d_kill_one_shard(self):
        victims = sorted(r for r, k in self.runs.items() if k == VICTIM)
        others = sorted(r for r, k in self.runs.items() if k != VICTIM)
        for run in victims:
            self.before_kill[run] = self.views(run)
        self.check(all(v[0] == 200 for view in self.before_kill.values() for v in view.values()),
                   "views of the victim shard's runs read before the kill")

        # A /sync waiting on the shard when it dies.
        run = victims[0]
        b = self.batches()
        waiter = normstat.Client(self.url, timeout=CALL_TIMEOUT_S, sync_timeout=SYNC_WAIT_S)
        t, box = shards.background(lambda: waiter.sync(run, 3, 0, self.layers_of(b[0])))
        victim = self.daemons[VICTIM]

        def waiting():
            status, _, body = self.raw("GET", "/metrics", port=victim.port)
            m = re.search(rb"^normstat_sync_waiters (\d+)", body, re.M)
            return m is not None and int(m.group(1)) == 1

        self.require(nsd.poll(waiting, limit=10.0), "the /sync is waiting on the victim shard")
        rc = victim.sigkill()
        self.check_eq(rc, -9, f"shard {VICTIM} killed with SIGKILL")
        t.join(CALL_TIMEOUT_S + 5)
        err = box.get("error")
        self.check(not t.is_alive() and isinstance(err, normstat.ServerError) and err.status == 502
                   and err.code == "shard_unavailable",
                   "the waiting /sync ends with 502 shard_unavailable, not a hang",
                   f"alive={t.is_alive()} {box}")
        waiter.close()

        for run in victims:
            self.expect_502(lambda: self.workers[0].report(run, 3, 0, self.layers_of(b[0])),
                            f"{run} (dead shard): Python report")
            self.expect_502(lambda: self.workers[1].stats(run), f"{run} (dead shard): Python stats")
        path = os.path.join(self.root, "dead.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"step": 3, "worker": 1, "layers": self.layers_of(b[1])}, f)
        rc, out, err = self.cli("report", victims[1], path)
        self.check(rc == 1 and "HTTP 502 shard_unavailable" in err and self.addrs[VICTIM] in err,
                   "normstat report for a dead shard's run -> exit 1 naming 502 "
                   "shard_unavailable and the shard", f"rc={rc} {err}")
        status, _, body = self.raw("GET", f"/shards/{VICTIM}/readyz")
        self.check(status == 502 and json.loads(body)["error"]["code"] == "shard_unavailable",
                   f"GET /shards/{VICTIM}/readyz -> 502 shard_unavailable")

        for run in others:  # the other shards go on
            self.refs[run].apply(self.step_batches(run, 3))
            self.step_sync(run, 4)
            self.check_stats(run, f"while shard {VICTIM} is down")
        rc, out, err = self.cli("--json", "runs")
        got = json.loads(out) if out.strip().startswith("{") else {}
        failed = [s for s in got.get("shards", []) if "error" in s]
        self.check(rc == 1 and sorted(r["run"] for r in got.get("runs", [])) == others
                   and [s["url"] for s in failed] == [f"{self.url}/shards/{VICTIM}"]
                   and f"/shards/{VICTIM}" in err,
                   "normstat runs with a shard down: the other shards' runs, the dead one named, "
                   "exit 1", f"rc={rc} {err} {out[:300]}")
        for k in range(N_SHARDS):
            if k != VICTIM:
                held = sorted(r["run"] for r in self.direct_runs(k)["runs"])
                self.check_eq(held, sorted(r for r, s in self.runs.items() if s == k),
                              f"shard {k} holds only its own runs (none moved from the dead shard)")

        victim.args = ["--listen", f"127.0.0.1:{self.ports[VICTIM]}"]
        victim.start()
        self.check_eq(victim.port, self.ports[VICTIM], f"shard {VICTIM} restarted on its port")
        for run in victims:
            after = self.views(run)
            diff = [k for k in after if after[k] != self.before_kill[run][k]]
            self.check(not diff, f"{run}: after the restart every view is the bytes served "
                       "before the kill (through the same proxy)", str(diff))
        for run in victims:  # and continue, through the clients that saw the 502s
            self.refs[run].apply(self.step_batches(run, 5))
            self.step_sync(run, 6)
        for run in sorted(self.runs):
            self.check_stats(run, "at the end")
        placed = sorted((r["run"], k) for k in range(N_SHARDS) for r in self.direct_runs(k)["runs"])
        self.check_eq(placed, sorted(self.runs.items()), "each run still on its one shard")
        rc, out, err = self.cli("--json", "runs")
        self.check(rc == 0 and len(json.loads(out)["runs"]) == len(self.runs),
                   "normstat runs lists all 12 again", err)


    def test_e_async_c_client(self):
        """libnormstat's asynchronous client (client_trainer.c: both workers'
        /sync at once on one libuv loop, the EMA read into buffers, a
        checkpoint round trip) through the proxy."""
        run = "shard-libtrain"
        trainer = os.path.join(os.path.dirname(cli_path()), "..", "tests", "integration",
                               "client_trainer")
        ref = RunRef()
        steps = []
        for _ in range(4):
            b = self.batches()
            steps.append([self.layers_of(b[w]) for w in sorted(b)])
            ref.apply(b)
        inp, out, ck = (os.path.join(self.root, f"libtrain-{f}.json") for f in ("in", "out", "ck"))
        with open(inp, "w", encoding="utf-8") as f:
            json.dump({"world_size": len(BATCH), "momentum": MOMENTUM, "layers": LAYERS,
                       "steps": steps}, f)
        p = subprocess.run([trainer, self.url, run, inp, out, ck], capture_output=True, text=True,
                           timeout=60)
        self.require(p.returncode == 0, "client_trainer (libnormstat, asynchronous) through the "
                     "proxy -> exit 0", p.stderr[-500:])
        with open(out, encoding="utf-8") as f:
            got = json.load(f)
        last = got["sync"][-1]
        ok = len(got["sync"]) == len(steps) and all(a["complete"] for a in last)
        for l in LAYERS:
            N, mean, var = ref.last[l]
            ok = ok and all(a["layers"][l]["count"] == N and nsd.max_err(a["layers"][l]["mean"], mean)
                            <= 1 and nsd.max_err(a["layers"][l]["var"], var) <= 1 for a in last)
            m, v = ref.ema[l].served()
            ok = ok and nsd.max_err(got["ema"][l]["mean"], m) <= 1 and \
                nsd.max_err(got["ema"][l]["var"], v) <= 1
        self.check(ok, "the asynchronous C client's /sync answers and EMA through the proxy = "
                   "float64 reference", str(got)[:300])
        home = shards.chash_shard(self.ring, run)
        held = [k for k in range(N_SHARDS) if run in {r["run"] for r in self.direct_runs(k)["runs"]}]
        self.check_eq(held, [self.addrs.index(home)], f"{run} is on the shard its name hashes to")
        self.workers[0].delete_run(run)


if __name__ == "__main__":
    nsd.main()
