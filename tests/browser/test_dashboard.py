"""test_dashboard.py - the dashboard in a real browser, fed by a real multi-worker trainer.

A normstatd with a bearer token; three PyTorch trainer processes (forked, each
its own replica of a small CNN and its own data) report every step with
normstat.torch's StatsReporter: workers 0 and 1 in domain "photo", worker 2 in
domain "sketch", whose inputs drift with the step so EMA and PreciseBN differ.
Then Debian's chromium, driven by playwright-core (dashboard.mjs), opens
/#token=...: the page loads with no console error, the drift bars and the
per-step charts show what /drift and /history serve, the per-domain table what
/stats serves, and the run's rejections (one NaN report) what the run status
serves. From the keyboard: Tab reaches the drift bars, an arrow key and Enter
choose a layer, Tab goes on to the per-step chart, where Left moves the chosen
step and Up the channel; the readout under the chart gives /history's values
(and an EMA of the batch means computed in the test) at that step and channel.
Told the tab is hidden (document.hidden and a visibilitychange event: headless
chromium never hides a page itself), the page sends no API request over four
poll periods, and refreshes when visible again.
Then worker 2 stops reporting while 0 and 1 go on: the page's
stall report shows the pending step waiting for worker 2, and the worker lag
the API's. A screenshot is saved as build/test-artifacts/dashboard.png.

No browser, no node, or no playwright-core is a failure naming what is
missing: this test never passes without having run.

Run from the repository root (after `make browser-deps`):
    PYTHONPATH=client/python NS_BUILD=build /usr/bin/python3 tests/browser/test_dashboard.py
"""

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import harness as h  # noqa: E402
import normstat  # noqa: E402
from normstat.torch import StatsReporter  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

MP = multiprocessing.get_context("fork")
TOKEN = "dashboard-test-token"
WORLD = 3
K = 40  # steps every worker reports
DOMAIN = {0: "photo", 1: "photo", 2: "sketch"}
WAIT_S = 25
# Typically 6 to 10 s; a loaded machine slows chromium down several times.
h.SCRIPT_LIMIT_S = 58
CHROMIUM = "/usr/bin/chromium"
HERE = os.path.dirname(os.path.abspath(__file__))


class Net(nn.Module):
    """Four conv-BN blocks and a BN1d head: five BN layers of 8 to 24 channels."""

    def __init__(self):
        super().__init__()
        chans = [3, 8, 12, 16, 24]
        blocks = []
        for a, b in zip(chans, chans[1:]):
            blocks += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(24, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 4))

    def forward(self, x):
        return self.head(self.features(x))


def worker(rank, url, run, trained, go_on):
    import normstat

    torch.manual_seed(7)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)
    client = normstat.Client(url, timeout=20.0, token=TOKEN)
    with StatsReporter(model, client, run, rank=rank, world_size=WORLD, domain=DOMAIN[rank],
                       strict=True) as rep:
        last = K if rank != 2 else K - 1  # worker 2 stops reporting after step K-1
        for step in range(last + 1):
            if step == K:
                rep.flush()
                trained.set()
                if not go_on.wait(WAIT_S * 2):
                    return
            # inputs drift, and jump halfway (new data, a learning-rate change):
            # the EMA lags behind the batches, PreciseBN averages them all
            shift = (0.5 if DOMAIN[rank] == "sketch" else 0.0) + 0.01 * step + (0.8 if step >= K // 2 else 0)
            x = torch.randn(6, 3, 8, 8, generator=gen) * (1 + 0.05 * step) + shift
            y = torch.randint(0, 4, (6,), generator=gen)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rep.step(step)
        rep.flush()
    if rank == 2:
        trained.set()


def wait_for(desc, cond):
    """Poll cond() until true, at most WAIT_S seconds; the bound matters only on failure."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {desc}")


def prerequisites(checks):
    """node, playwright-core and chromium must be there; each missing one fails the test."""
    modules = os.environ.get("NS_PLAYWRIGHT") or os.path.join(h.REPO, os.environ.get("NS_BUILD", "build"),
                                                              "browser")
    modules = os.path.abspath(modules)
    os.environ["NS_PLAYWRIGHT"] = modules
    node = shutil.which("node")
    ok = checks.check(node is not None, "node is installed", "install Debian's nodejs (sh mk/deps.sh test)")
    ok &= checks.check(os.path.isfile(os.path.join(modules, "node_modules", "playwright-core", "package.json")),
                       f"playwright-core is installed in {modules}", "run `make browser-deps` (npm ci)")
    ok &= checks.check(os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is installed",
                       "install Debian's chromium (sh mk/deps.sh test)")
    return node if ok else None


class Driver:
    """dashboard.mjs in a child process; its CHECK lines go to 'checks'."""

    def __init__(self, checks, node, url, run, shot):
        self.checks = checks
        self.phases = []
        self.proc = subprocess.Popen([node, os.path.join(HERE, "dashboard.mjs"), url, TOKEN, run, shot],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=h.REPO)
        self.cv = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("CHECK "):
                c = json.loads(line[6:])
                self.checks.check(c["ok"], "browser: " + c["desc"], c["detail"])
            elif line.startswith("PHASE ") or line == "DONE":
                with self.cv:
                    self.phases.append(line.split(" ", 1)[-1])
                    self.cv.notify_all()
            else:
                print("  node: " + line)
        with self.cv:
            self.phases.append("exit")
            self.cv.notify_all()

    def wait_phase(self, name):
        with self.cv:
            self.cv.wait_for(lambda: name in self.phases or "exit" in self.phases, h.SCRIPT_LIMIT_S)
            return name in self.phases

    def resume(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self):
        try:
            return self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        finally:
            self.reader.join(timeout=WAIT_S)


def body(checks):
    node = prerequisites(checks)
    if node is None:
        return
    d = h.start_daemon("--auth-token", TOKEN)
    c = d.client(token=TOKEN)
    run = h.run_name("dash")
    # a long timeout: the step worker 2 never sends stays pending, as in a stalled job
    c.put_run(run, world_size=WORLD, momentum=0.1, sync_timeout_ms=600000)
    trained = [MP.Event() for _ in range(WORLD)]
    go_on = MP.Event()
    procs = [MP.Process(target=worker, args=(r, d.url, run, trained[r], go_on)) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        for r in range(WORLD):
            checks.check(trained[r].wait(WAIT_S), f"worker {r} reported steps 0..{K - 1}")
        layers = wait_for("every layer applied step K-1", lambda: (lambda s: s if s and all(
            l["step"] == K - 1 for l in s.values()) else None)(c.get_run(run)["status"]["layers"]))
        checks.eq(len(layers), 5, "the run has the model's five BN layers")
        # a diverging trainer: a NaN batch mean, refused as bad_value
        nan = [float("nan")] * layers["features.1"]["channels"]
        try:
            c.report(run, K, 1, {"features.1": (8, nan, [1.0] * len(nan))}, domain="photo")
            checks.check(False, "a NaN report is refused")
        except normstat.Error as e:
            checks.check("bad_value" in str(e), "a NaN report is refused as bad_value", str(e))

        artifacts = os.path.join(h.REPO, os.environ.get("NS_BUILD", "build"), "test-artifacts")
        os.makedirs(artifacts, exist_ok=True)
        shot = os.path.join(artifacts, "dashboard.png")
        drv = Driver(checks, node, d.url, run, shot)
        if drv.wait_phase("trained"):
            go_on.set()  # workers 0 and 1 report step K; worker 2 has stopped
            wait_for("step K pending for worker 2", lambda: any(
                p["waiting_for"] == [2] for p in c.get_run(run)["status"].get("pending", [])))
            drv.resume()
        rc = drv.finish()
        checks.eq(rc, 0, "the browser driver exit status")
        checks.check(os.path.getsize(shot) > 10000 if os.path.exists(shot) else False,
                     f"screenshot written: {shot}")
    finally:
        go_on.set()
        for r, p in enumerate(procs):
            p.join(timeout=WAIT_S)
            if p.exitcode is None:
                p.kill()
            checks.eq(p.exitcode, 0, f"trainer worker {r} exit status")
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(body)
