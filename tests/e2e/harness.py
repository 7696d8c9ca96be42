"""harness.py - shared pieces of the end-to-end tests with real PyTorch.

A real normstatd on an ephemeral 127.0.0.1 port (--no-persist), started from
$NS_BUILD/bin/normstatd (NS_BUILD defaults to "build"), stopped with SIGTERM
(exit status 0 expected); small models; capture of every BatchNorm layer's
input with forward pre-hooks (float64 copies, independent of normstat.torch);
the reference statistics in float64 (concatenated batches, PyTorch's EMA
formula, exact population mean and unbiased variance); checks that print one
line each and a hard wall-clock limit per script.

Scripts run from the repository root as
    PYTHONPATH=client/python /usr/bin/python3 tests/e2e/test_X.py
and exit non-zero on any failure.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if not os.environ.get("PYTHONPATH"):  # run by hand: the tree's client
    sys.path.insert(0, os.path.join(REPO, "client", "python"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import normstat  # noqa: E402

SCRIPT_LIMIT_S = 50
START_LIMIT_S = 10.0
STOP_LIMIT_S = 10.0

# float32 arrivals, float64 references
RTOL = 1e-4
ATOL = 1e-5

torch.set_num_threads(1)


# ---------------------------------------------------------------- daemon


def binary_path():
    build = os.environ.get("NS_BUILD", "build")
    if not os.path.isabs(build):
        build = os.path.join(REPO, build)
    return os.path.join(build, "bin", "normstatd")


class Daemon:
    """One normstatd on 127.0.0.1:<ephemeral>, memory only."""

    def __init__(self, *args):
        self.args = list(args)
        self.proc = None
        self.port = None
        self.lines = []
        self.tmp = None

    def start(self):
        exe = binary_path()
        if not os.access(exe, os.X_OK):
            raise RuntimeError(f"{exe} is not built (run make, or set NS_BUILD)")
        self.tmp = tempfile.mkdtemp(prefix="nsd-e2e-")
        self.proc = subprocess.Popen([exe, "--listen", "127.0.0.1:0", "--no-persist"] + self.args,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, cwd=self.tmp)
        listening = threading.Event()

        def read():
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.lines.append(line)
                if self.port is None and "event=listening" in line:
                    m = re.search(r"\baddr=\"?[0-9.]+:(\d+)", line)
                    if m:
                        self.port = int(m.group(1))
                        listening.set()
            listening.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        listening.wait(START_LIMIT_S)
        if self.port is None:
            self.kill()
            raise RuntimeError("normstatd did not log event=listening:\n" + self.tail())
        c = self.client(timeout=2.0)
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            try:
                if c.readyz():
                    c.close()
                    return self
            except normstat.Error:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("normstatd not ready:\n" + self.tail())

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw):
        kw.setdefault("timeout", 20.0)
        return normstat.Client(self.url, **kw)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM; returns the exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            rc = None
        self.kill()
        return rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self.proc is not None and self.proc.poll() is not None and self.proc.stderr:
            self.reader.join(timeout=2)
            if not self.reader.is_alive():
                self.proc.stderr.close()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def tail(self, n=30):
        return "\n".join(self.lines[-n:])


# ---------------------------------------------------------------- checks


class Checks:
    """Soft checks: each prints one line; failed() says whether any failed."""

    def __init__(self, name):
        self.name = name
        self.fails = []
        self.count = 0

    def check(self, cond, desc, detail=""):
        self.count += 1
        if cond:
            print(f"ok   {desc}")
        else:
            print(f"FAIL {desc}" + (f" -- {detail}" if detail else ""))
            self.fails.append(desc)
        return bool(cond)

    def eq(self, got, exp, desc):
        return self.check(got == exp, desc, f"got {got!r}, expected {exp!r}")

    def close(self, got, ref, desc, rtol=RTOL, atol=ATOL):
        """Elementwise |got - ref| <= atol + rtol*|ref| (float64)."""
        g = torch.as_tensor(got, dtype=torch.float64).reshape(-1)
        r = torch.as_tensor(ref, dtype=torch.float64).reshape(-1)
        if g.shape != r.shape:
            return self.check(False, desc, f"shape {tuple(g.shape)} vs reference {tuple(r.shape)}")
        if g.numel() == 0:
            return self.check(True, desc + " (empty)")
        diff = (g - r).abs()
        rel = torch.where(diff == 0, torch.zeros_like(diff), diff / (atol + rtol * r.abs()))
        rel = torch.where(torch.isnan(rel), torch.full_like(rel, float("inf")), rel)
        err = rel.max().item()
        ok = err <= 1.0 and bool(torch.isfinite(g).all())
        i = int(rel.argmax())
        return self.check(ok, f"{desc} (max err {err:.3g} of tol)",
                          f"at [{i}] got {g[i].item()!r}, reference {r[i].item()!r}; "
                          f"got {g[:4].tolist()}, ref {r[:4].tolist()}")


def main(body):
    """Run body(checks) with a daemon-independent hard time limit; exit 1 on
    any failed check or exception."""

    def on_alarm(_sig, _frm):
        print(f"FAIL {os.path.basename(sys.argv[0])}: exceeded {SCRIPT_LIMIT_S}s")
        sys.stdout.flush()
        for d in list(_daemons):
            try:
                print(d.tail(20))
                d.kill()
            except Exception:
                pass
        os._exit(3)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(SCRIPT_LIMIT_S)
    os.chdir(REPO)
    name = os.path.basename(sys.argv[0])
    checks = Checks(name)
    t0 = time.monotonic()
    ok = True
    try:
        body(checks)
    except Exception:
        traceback.print_exc()
        print(f"FAIL {name}: exception")
        ok = False
    finally:
        for d in list(_daemons):
            d.kill()
    ok = ok and not checks.fails and checks.count > 0
    print(f"{'PASS' if ok else 'FAIL'} {name}: {checks.count} checks, {len(checks.fails)} failed, "
          f"{time.monotonic() - t0:.1f}s")
    sys.stdout.flush()
    os._exit(0 if ok else 1)


_daemons = []


def start_daemon(*args):
    d = Daemon(*args)
    _daemons.append(d)
    return d.start()


def stop_daemon(checks, d):
    alive = d.alive()
    rc = d.stop()
    checks.check(alive, "daemon still running at the end", d.tail())
    checks.eq(rc, 0, "normstatd exit status after SIGTERM")
    if d in _daemons:
        _daemons.remove(d)


# ---------------------------------------------------------------- models and data


class SmallCNN(nn.Module):
    """Conv-BN-ReLU x2, then Linear-BN1d-ReLU-Linear: BN layers
    features.1 (8), features.4 (16), head.1 (12)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(64, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 5))

    def forward(self, x):
        return self.head(self.features(x))


class SmallMLP(nn.Module):
    """BN layers net.1 (32) and net.4 (16)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(20, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                 nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


def make_model(kind, seed=0, momentum=0.1):
    torch.manual_seed(seed)
    m = SmallCNN() if kind == "cnn" else SmallMLP()
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.momentum = momentum
            # non-trivial affine parameters, so outputs depend on the buffers
            with torch.no_grad():
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m


def make_batch(kind, n, gen, shift=0.0, scale=1.0):
    """A synthetic batch (inputs, labels) from a torch.Generator."""
    if kind == "cnn":
        x = torch.randn(n, 3, 8, 8, generator=gen) * scale + shift
        x[:, 1] += 0.7  # channel-specific offsets
        y = torch.randint(0, 5, (n,), generator=gen)
    else:
        x = torch.randn(n, 20, generator=gen) * scale + shift
        y = torch.randint(0, 4, (n,), generator=gen)
    return x, y


def bn_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class Capture:
    """Forward pre-hooks on every BN module recording a float64 copy of
    each training-mode input as a [C, n] matrix, per layer, until take()."""

    def __init__(self, model, strip=""):
        self.cur = {}
        self.hooks = []
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                key = name[len(strip):] if strip and name.startswith(strip) else name
                self.hooks.append(m.register_forward_pre_hook(self._hook(key)))

    def _hook(self, name):
        def hook(module, inputs):
            if module.training:
                x = inputs[0].detach().double()
                c = x.shape[1]
                self.cur.setdefault(name, []).append(x.transpose(0, 1).reshape(c, -1).clone())
        return hook

    def take(self):
        out = {k: torch.cat(v, dim=1) for k, v in self.cur.items()}
        self.cur = {}
        return out

    def remove(self):
        for h in self.hooks:
            h.remove()


def global_stats(mats):
    """(N, mean, biased var) per channel of the concatenation of [C, n_i]
    matrices (float64)."""
    mats = [m for m in mats if m is not None and m.shape[1] > 0]
    if not mats:
        return 0, None, None
    x = torch.cat(mats, dim=1)
    var, mean = torch.var_mean(x, dim=1, unbiased=False)
    return x.shape[1], mean, var


class EmaRef:
    """PyTorch's EMA (doc/design.md, "EMA": initial mean 0, var 1, unbiased var of the
    step's global batch, skipped when N < 2), in float64."""

    def __init__(self, channels, momentum):
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.var = torch.ones(channels, dtype=torch.float64)
        self.nbt = 0
        self.momentum = momentum

    def update(self, n, mean, var):
        if n < 2:
            return
        self.nbt += 1
        f = 1.0 / self.nbt if self.momentum is None else self.momentum
        self.mean = (1 - f) * self.mean + f * mean
        self.var = (1 - f) * self.var + f * var * n / (n - 1)


def run_name(prefix):
    return f"{prefix}-{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
