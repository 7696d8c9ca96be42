"""test_cli.py - libnormstat and the normstat CLI against a real normstatd.

* A miniature C trainer on the library (client_trainer, built by
  client/client.mk) creates a run, reports two workers' statistics of every
  step through /sync at once on one libuv loop (the asynchronous client),
  reads the EMA into float buffers and round-trips a checkpoint through a
  file. Its /sync answers are compared with the combination of the reported
  arrivals computed here, its EMA with real PyTorch BatchNorm fed the
  concatenated raw batches (and with an EMA computed here in float64).
* The CLI: every command, --help, JSON and table output, files in and out,
  drift and history against a float64 recomputation,
  and the documented exit codes (0 ok, 1 server error, 2 usage, 3 connection
  failure or timeout), including a refused port and a server that never
  answers.

Run from the repository root: /usr/bin/python3 tests/integration/test_cli.py
(NS_BUILD selects the build directory, default build/).
"""

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

CMD_LIMIT_S = 20.0


def build_dir():
    build = os.environ.get("NS_BUILD", "build")
    return build if os.path.isabs(build) else os.path.join(nsd.REPO, build)


CLI = os.path.join(build_dir(), "bin", "normstat")
TRAINER = os.path.join(build_dir(), "tests", "integration", "client_trainer")


def run_cli(*args, url=None, env_url=None):
    """Run normstat; returns (exit status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMSTAT_")}
    if env_url is not None:
        env["NORMSTAT_URL"] = env_url
    argv = [CLI] + (["--url", url] if url else []) + list(args)
    p = subprocess.run(argv, capture_output=True, timeout=CMD_LIMIT_S, env=env)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def combine(arrivals):
    """Global (N, mean, biased var) of arrivals [(n, mean[C], var[C])], in
    float64 with correctly rounded sums (doc/design.md, "Combining arrivals")."""
    N = sum(n for n, _, _ in arrivals)
    C = len(arrivals[0][1])
    mean = [math.fsum(n * m[c] for n, m, _ in arrivals) / N for c in range(C)]
    var = [math.fsum(n * (v[c] + (m[c] - mean[c]) ** 2) for n, m, v in arrivals) / N
           for c in range(C)]
    return N, mean, var


def close(a, b, rtol, atol=0.0):
    return len(a) == len(b) and all(abs(x - y) <= atol + rtol * abs(y) for x, y in zip(a, b))


class LibraryTrainer(unittest.TestCase):
    """Two workers on the asynchronous client; EMA read into buffers."""

    def test_sync_ema_checkpoint(self):
        rng = np.random.default_rng(int(os.environ.get("NS_TEST_SEED", "20261122")))
        layers = {"layer1.0.bn1": 3, "layer2.bn": 5}
        batch = [4, 7]  # the two workers' batch sizes differ
        steps, raw = [], {name: [] for name in layers}
        for s in range(6):
            per_worker = []
            for w, n in enumerate(batch):
                rep = {}
                for name, C in layers.items():
                    x = rng.normal(loc=w - 0.5, scale=1.0 + s, size=(n, C)).astype(np.float32)
                    raw[name].append((s, x))
                    x64 = x.astype(np.float64)
                    rep[name] = {"count": n,
                                 "mean": nsd.f32_list(x64.mean(axis=0)),
                                 "var": nsd.f32_list(x64.var(axis=0))}
                per_worker.append(rep)
            steps.append(per_worker)
        with tempfile.TemporaryDirectory() as tmp:
            inp, out, ck = (os.path.join(tmp, f) for f in ("in.json", "out.json", "ck.json"))
            with open(inp, "w") as f:
                json.dump({"world_size": 2, "momentum": 0.1, "layers": layers, "steps": steps}, f)
            d = nsd.Daemon().start()
            try:
                p = subprocess.run([TRAINER, f"http://127.0.0.1:{d.port}", "libtrain", inp, out, ck],
                                   capture_output=True, timeout=60)
                self.assertEqual(p.returncode, 0, p.stderr.decode())
                with open(out) as f:
                    got = json.load(f)
                self.assertTrue(os.path.getsize(ck) > 0)
            finally:
                self.assertEqual(d.stop(), 0)

        self.assertTrue(got["created"])
        # /sync: both workers get the combination of both arrivals.
        ema_ref = {name: ([0.0] * C, [1.0] * C) for name, C in layers.items()}
        for s, per_worker in enumerate(steps):
            answers = got["sync"][s]
            self.assertEqual(len(answers), 2)
            for a in answers:
                self.assertEqual(a["step"], s + 1)
                self.assertTrue(a["complete"])
                self.assertEqual(a["workers"], 2)
            for name in layers:
                arrivals = [(r[name]["count"], r[name]["mean"], r[name]["var"]) for r in per_worker]
                N, mean, var = combine(arrivals)
                for a in answers:
                    L = a["layers"][name]
                    self.assertEqual(L["count"], N)
                    self.assertTrue(close(L["mean"], mean, 1e-6, 1e-7), (s, name, L["mean"], mean))
                    self.assertTrue(close(L["var"], var, 1e-6, 1e-7), (s, name, L["var"], var))
                rm, rv = ema_ref[name]
                ema_ref[name] = ([0.9 * rm[c] + 0.1 * mean[c] for c in range(len(mean))],
                                 [0.9 * rv[c] + 0.1 * var[c] * N / (N - 1) for c in range(len(var))])

        # EMA in caller buffers: against the float64 reference of the
        # reported arrivals, and against real PyTorch on the raw batches.
        for name, C in layers.items():
            e = got["ema"][name]
            self.assertEqual(e["num_batches"], len(steps))
            self.assertTrue(close(e["mean"], ema_ref[name][0], 1e-6, 1e-7), (name, e, ema_ref[name]))
            self.assertTrue(close(e["var"], ema_ref[name][1], 1e-6, 1e-7), (name, e, ema_ref[name]))
            per_step = [np.concatenate([x for s2, x in raw[name] if s2 == s]) for s in range(len(steps))]
            ref = nsd.torch_bn(per_step, C, 0.1)
            if ref is not None:
                self.assertTrue(close(e["mean"], ref[0], 1e-5, 1e-6), (name, e["mean"], ref[0]))
                self.assertTrue(close(e["var"], ref[1], 1e-5, 1e-6), (name, e["var"], ref[1]))
                self.assertEqual(e["num_batches"], ref[2])
        # Checkpoint: deleted run is gone; restored run serves the same bits.
        self.assertEqual(got["after_delete"], "not_found")
        self.assertEqual(got["ema_restored"], got["ema"])


class Cli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = nsd.Daemon().start()
        cls.url = f"http://127.0.0.1:{cls.d.port}"
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()
        assert cls.d.stop() == 0

    def cli(self, *args, expect=0):
        rc, out, err = run_cli(*args, env_url=self.url)
        self.assertEqual(rc, expect, f"normstat {' '.join(args)}: exit {rc}\n{out}\n{err}")
        return out, err

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def test_help_and_usage(self):
        out, _ = self.cli("--help")
        for word in ("runs", "run", "report", "stats", "precise-reset", "checkpoint", "health",
                     "version", "exit status", "NORMSTAT_URL"):
            self.assertIn(word, out)
        for cmd in ("runs", "run", "report", "stats", "precise-reset", "checkpoint", "health",
                    "version", "metrics", "drift", "history"):
            out, _ = self.cli(cmd, "--help")
            self.assertIn(f"usage: normstat {cmd}", out)
        self.cli(expect=2)
        _, err = self.cli("frobnicate", expect=2)
        self.assertIn("unknown command", err)
        self.cli("stats", expect=2)
        self.cli("stats", "r", "--source", expect=2)
        self.cli("stats", "r", "--bogus", expect=2)
        self.cli("run", "create", "r", "--world-size", "0", expect=2)
        self.cli("run", "create", "r", "--momentum", "2", expect=2)
        self.cli("run", "create", "r", "--on-timeout", "later", expect=2)
        self.cli("checkpoint", "save", "r", expect=2)
        self.cli("--timeout", "soon", "health", expect=2)
        self.cli("report", "r", self.path("missing.json"), expect=2)
        self.cli("stats", "r", "-o", self.path("out.txt"), expect=2)

    def test_connection_failures(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        rc, _, err = run_cli("health", url=f"http://127.0.0.1:{port}")
        self.assertEqual(rc, 3, err)
        self.assertIn("connect_failed", err)
        # A server that accepts connections and never answers.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        try:
            rc, _, err = run_cli("--timeout", "200", "version",
                                 url=f"http://127.0.0.1:{silent.getsockname()[1]}")
            self.assertEqual(rc, 3, err)
            self.assertIn("request_timeout", err)
        finally:
            silent.close()
        # --url wins over NORMSTAT_URL.
        rc, _, _ = run_cli("health", url=self.url, env_url=f"http://127.0.0.1:{port}")
        self.assertEqual(rc, 0)

    def test_health_version_metrics(self):
        out, _ = self.cli("health")
        self.assertEqual(json.loads(out), {"live": True, "ready": True})
        out, _ = self.cli("--table", "health")
        self.assertIn("ready: yes", out)
        out, _ = self.cli("version")
        self.assertIn("version", json.loads(out))
        out, _ = self.cli("--table", "version")
        self.assertIn("normstat client:", out)
        out, _ = self.cli("metrics")
        self.assertIn("normstat_rejections_total", out)

    def test_run_lifecycle(self):
        out, _ = self.cli("run", "create", "cli-run", "--world-size", "3", "--momentum", "null",
                          "--sync-timeout-ms", "500", "--on-timeout", "drop", "--ema-debias")
        self.assertEqual(json.loads(out)["config"],
                         {"world_size": 3, "momentum": None, "sync_timeout_ms": 500,
                          "on_timeout": "drop", "ema_debias": True})
        out, _ = self.cli("--table", "run", "create", "cli-run", "--world-size", "2")
        self.assertIn("updated run cli-run", out)
        out, _ = self.cli("run", "show", "cli-run")
        self.assertEqual(json.loads(out)["config"]["world_size"], 2)
        out, _ = self.cli("runs")
        self.assertIn("cli-run", [r["run"] for r in json.loads(out)["runs"]])
        out, _ = self.cli("--table", "runs")
        self.assertTrue(out.startswith("RUN"), out)
        self.assertIn("cli-run", out)
        self.cli("run", "delete", "cli-run")
        _, err = self.cli("run", "show", "cli-run", expect=1)
        self.assertIn("not_found", err)
        self.cli("run", "delete", "cli-run", expect=1)

    def test_drift_history(self):
        """normstat drift and history against PyTorch's EMA (momentum 0.1) and
        the paper's PreciseBN recomputed here in float64 (the CLI prints 9
        significant digits)."""
        run = "cli-drift"
        self.cli("run", "create", run, "--momentum", "0.1")
        steps = [(10, [1.0, 2.0], [0.5, 0.25]), (30, [-1.0, 0.5], [2.0, 1.0]), (5, [0.25, 0.0], [1.0, 4.0])]
        for step, (n, mean, var) in enumerate(steps):
            with open(self.path(f"d{step}.json"), "w") as f:
                json.dump({"step": step, "worker": 0, "layers": {"bn1": {"count": n, "mean": mean, "var": var}}}, f)
            self.cli("report", run, self.path(f"d{step}.json"))
        rm, rv, after = [0.0, 0.0], [1.0, 1.0], []
        for n, mean, var in steps:
            rm = [0.9 * rm[c] + 0.1 * mean[c] for c in range(2)]
            rv = [0.9 * rv[c] + 0.1 * var[c] * n / (n - 1) for c in range(2)]
            after.append((rm, rv))
        N = sum(n for n, _, _ in steps)
        pm = [math.fsum(n * m[c] for n, m, _ in steps) / N for c in range(2)]
        pv = [N / (N - 1) * (math.fsum(n * (m[c] ** 2 + v[c]) for n, m, v in steps) / N - pm[c] ** 2)
              for c in range(2)]
        dist = [abs(rm[c] - pm[c]) / math.sqrt(pv[c] + 1e-5) for c in range(2)]
        out, _ = self.cli("drift", run)
        rows = json.loads(out)["layers"]
        self.assertEqual([(r["layer"], r["domain"], r["num_batches_tracked"]) for r in rows], [("bn1", "default", 3)])
        d = rows[0]["drift"]
        self.assertTrue(close([d["mean_max"], d["mean_avg"]], [max(dist), sum(dist) / 2], 1e-8), (d, dist))
        self.assertEqual(d["mean_max_channel"], dist.index(max(dist)))
        out, _ = self.cli("--table", "drift", run, "--domain", "default")
        self.assertTrue(out.startswith("LAYER") and "bn1" in out and f"{max(dist):.6g}" in out, out)
        for ch in range(2):
            out, _ = self.cli("history", run, "bn1", "--channel", str(ch))
            h = json.loads(out)
            self.assertEqual([x["step"] for x in h["steps"]], [0, 1, 2])
            got = [v for x in h["steps"] for v in (x["batch_mean"], x["ema_mean"], x["ema_var"])]
            want = [v for (n, m, _), (em, ev) in zip(steps, after) for v in (m[ch], em[ch], ev[ch])]
            self.assertTrue(close(got, want, 3e-7), (got, want))
            self.assertTrue(close([h["population"]["mean"], h["population"]["var"]], [pm[ch], pv[ch]], 1e-8))
        out, _ = self.cli("--table", "history", run, "bn1", "--domain", "*", "--channel", "1")
        self.assertIn("channel 1 of 2", out)
        self.assertEqual(len([l for l in out.splitlines() if l.split() and l.split()[0].isdigit()]), 3, out)
        # the server's errors exit 1 naming the field; bad arguments exit 2
        _, err = self.cli("history", run, "nope", expect=1)
        self.assertIn("layer: no layer 'nope'", err)
        _, err = self.cli("history", run, "bn1", "--channel", "2", expect=1)
        self.assertIn("channel:", err)
        _, err = self.cli("drift", run, "--domain", "zz", expect=1)
        self.assertIn("domain:", err)
        self.cli("history", run, expect=2)
        self.cli("history", run, "bn1", "--channel", "-1", expect=2)
        self.cli("drift", expect=2)
        self.cli("drift", run, "--bogus", expect=2)

    def test_report_stats_checkpoint(self):
        run = "cli-stats"
        self.cli("run", "create", run, "--momentum", "null")
        reps = []
        for step, (n, mean, var) in enumerate([(10, [1.0, 2.0], [0.5, 0.25]),
                                               (30, [-1.0, 0.5], [2.0, 1.0]),
                                               (5, [0.25, 0.0], [1.0, 4.0])], start=1):
            reps.append({"step": step, "worker": 0, "layers": {"bn1": {"count": n, "mean": mean, "var": var}}})
        # Step 1 as JSON, step 2 as safetensors without an extension (sniffed),
        # step 3 through /sync.
        with open(self.path("r1.json"), "w") as f:
            json.dump(reps[0], f)
        with open(self.path("r2.bin"), "wb") as f:
            f.write(nsd.report_to_safetensors(reps[1]))
        with open(self.path("r3.safetensors"), "wb") as f:
            f.write(nsd.report_to_safetensors(reps[2]))
        out, _ = self.cli("report", run, self.path("r1.json"))
        self.assertEqual(json.loads(out), {"accepted": True})
        self.cli("report", run, self.path("r2.bin"))
        out, _ = self.cli("report", run, self.path("r3.safetensors"), "--sync")
        sync = json.loads(out)
        self.assertEqual((sync["step"], sync["complete"], sync["workers"]), (3, True, 1))
        self.assertEqual(sync["layers"]["bn1"], {"count": 5, "mean": [0.25, 0.0], "var": [1.0, 4.0]})
        # A repeated step is the server's error: exit 1, its code on stderr.
        _, err = self.cli("report", run, self.path("r1.json"), expect=1)
        self.assertIn("stale_step", err)
        with open(self.path("bad.json"), "w") as f:
            json.dump({"step": 9, "worker": 0, "layers": {"bn1": {"count": 3, "mean": [1, 2, 3],
                                                                   "var": [1, 1, 1]}}}, f)
        _, err = self.cli("report", run, self.path("bad.json"), expect=1)
        self.assertIn("channel_mismatch", err)
        with open(self.path("junk.txt"), "w") as f:
            f.write("not a report")
        self.cli("report", run, self.path("junk.txt"), expect=2)

        # EMA with momentum null is the cumulative average (PyTorch), with
        # the unbiased variance of each step.
        steps = [(r["layers"]["bn1"]["count"], r["layers"]["bn1"]["mean"], r["layers"]["bn1"]["var"])
                 for r in reps]
        rm, rv = [0.0, 0.0], [1.0, 1.0]
        for t, (n, mean, var) in enumerate(steps, start=1):
            f = 1.0 / t
            rm = [(1 - f) * rm[c] + f * mean[c] for c in range(2)]
            rv = [(1 - f) * rv[c] + f * var[c] * n / (n - 1) for c in range(2)]
        out, _ = self.cli("stats", run)
        st = json.loads(out)
        L = st["layers"]["bn1"]
        self.assertEqual((st["source"], st["domain"], L["num_batches_tracked"]), ("ema", "*", 3))
        self.assertTrue(close(L["running_mean"], rm, 1e-6, 1e-7), (L, rm))
        self.assertTrue(close(L["running_var"], rv, 1e-6, 1e-7), (L, rv))
        out, _ = self.cli("--table", "stats", run)
        self.assertIn("LAYER", out)
        self.assertIn("bn1", out)
        # The same values as a file, in both formats.
        self.cli("stats", run, "-o", self.path("ema.safetensors"))
        with open(self.path("ema.safetensors"), "rb") as f:
            tensors, meta = nsd.st_read(f.read())
        self.assertEqual(meta["source"], "ema")
        # JSON prints float32 with 9 digits: the same float32 values.
        self.assertEqual([float(v) for v in tensors["bn1.running_mean"][2]], nsd.f32_list(L["running_mean"]))
        self.assertEqual([float(v) for v in tensors["bn1.running_var"][2]], nsd.f32_list(L["running_var"]))
        self.assertEqual(int(tensors["bn1.num_batches_tracked"][2]), 3)
        self.cli("stats", run, "-o", self.path("ema.json"))
        with open(self.path("ema.json")) as f:
            self.assertEqual(json.load(f), st)
        # Other sources and selections.
        out, _ = self.cli("stats", run, "--source", "last")
        self.assertEqual(json.loads(out)["layers"]["bn1"]["count"], 5)
        out, _ = self.cli("stats", run, "--source", "precise", "--variance", "biased")
        P = json.loads(out)["layers"]["bn1"]
        N, mean, var = combine(steps)
        self.assertEqual((P["num_batches"], P["num_samples"]), (3, N))
        self.assertTrue(close(P["running_mean"], mean, 1e-6, 1e-7))
        self.assertTrue(close(P["running_var"], var, 1e-6, 1e-7))
        out, _ = self.cli("stats", run, "--domain", "default", "--layers", "bn1")
        self.assertEqual(json.loads(out)["domain"], "default")
        out, _ = self.cli("stats", run, "--mixture", "default:1")
        self.assertTrue(close(json.loads(out)["layers"]["bn1"]["running_mean"], rm, 1e-6, 1e-7))
        _, err = self.cli("stats", run, "--source", "bogus", expect=1)
        self.assertIn("bad_request", err)
        self.cli("stats", "no-such-run", expect=1)

        out, _ = self.cli("precise-reset", run)
        self.assertEqual(json.loads(out)["generation"], 1)
        out, _ = self.cli("precise-reset", run, "--domain", "default")
        self.assertEqual(json.loads(out)["generation"], 2)

        # Checkpoint round trip through a file.
        self.cli("checkpoint", "save", run, self.path("ck.json"))
        with open(self.path("ck.json")) as f:
            self.assertEqual(json.load(f)["run"], run)
        self.cli("run", "delete", run)
        self.cli("stats", run, expect=1)
        self.cli("checkpoint", "restore", run, self.path("ck.json"))
        out, _ = self.cli("stats", run)
        self.assertEqual(json.loads(out), st)
        self.cli("checkpoint", "restore", run, self.path("missing.json"), expect=2)
        self.cli("checkpoint", "restore", run, self.path("junk.txt"), expect=1)


if __name__ == "__main__":
    nsd.main()
