"""test_reporter_resilience.py - normstat never stops training (strict=False).

  * No daemon at all: a CNN trains 10 steps with a StatsReporter pointed at
    a closed port; training finishes, the model's buffers equal a twin
    trained without a reporter, every step is listed in lost_steps and
    counted in dropped, and a ReportWarning was issued; state_dict() (a
    checkpoint taken then) returns with the next step and no run checkpoint,
    and flush() returns False, both after close_timeout; with sync=True
    step() returns None and lists the step. strict=True keeps
    the old contract: close() raises ReporterError (connection_failed).
  * The bound: with max_buffered=3 and no daemon, 10 steps drop exactly 7
    reports while training (the 3 newest, or the one being retried, are
    held), and close() drops the rest.
  * The daemon stopped mid-run and restarted (SIGTERM, then the same port
    and data directory): steps 0-4 delivered, 5-9 taken while it is down
    (buffered), 10-14 after the restart; close() delivers everything in
    order: nothing lost, and the served EMA equals a float64 EMA of all 15
    steps' inputs and the model's own buffers, num_batches_tracked 15.
  * A report the daemon refuses (409 worker_out_of_range) is dropped with a
    warning; step() does not raise. The same with warnings turned into
    errors (warnings.simplefilter("error"), as a test suite may run): the
    sender goes on, so every step is counted lost and flush() returns; so
    with no daemon at all, where close() drops the buffered steps.
Waits are bounded (flush/close timeouts, readiness deadlines) and only
matter when something is broken.
"""

import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings

import harness as h
import normstat
from normstat.torch import ReportWarning, StatsReporter

import torch

K = 10


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class PersistentDaemon:
    """normstatd on a fixed port with a data directory, restartable."""

    def __init__(self, port, data_dir):
        self.port, self.data_dir = port, data_dir
        self.proc = None
        self.lines = []

    def start(self):
        self.proc = subprocess.Popen([h.binary_path(), "--listen", f"127.0.0.1:{self.port}",
                                      "--data-dir", self.data_dir],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        threading.Thread(target=lambda: [self.lines.append(line) for line in self.proc.stderr],
                         daemon=True).start()
        c = normstat.Client(self.url, timeout=2.0)
        deadline = time.monotonic() + h.START_LIMIT_S
        while time.monotonic() < deadline:
            try:
                if c.readyz():
                    c.close()
                    return self
            except normstat.Error:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("normstatd not ready: " + b"".join(self.lines[-20:]).decode("utf-8", "replace"))

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=h.STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def train(model, rep, gen, steps, cap=None, refs=None, twin=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    topt = torch.optim.SGD(twin.parameters(), lr=0.05) if twin is not None else None
    for step in steps:
        x, y = h.make_batch("cnn", 8, gen, shift=0.1 * step)
        for m, o in ((model, opt), (twin, topt)):
            if m is None:
                continue
            loss = torch.nn.functional.cross_entropy(m(x), y)
            o.zero_grad()
            loss.backward()
            o.step()
        rep.step(step)
        if cap is not None:
            for layer, mat in cap.take().items():
                refs.setdefault(layer, h.EmaRef(mat.shape[0], 0.1)).update(*h.global_stats([mat]))


def bn_buffers(model):
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def no_daemon(checks):
    url = f"http://127.0.0.1:{free_port()}"
    model, twin = h.make_model("cnn", seed=1), h.make_model("cnn", seed=1)
    gen = torch.Generator().manual_seed(3)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rep = StatsReporter(model, normstat.Client(url, timeout=2.0), "nowhere", 0, 1,
                            close_timeout=0.2)
        train(model, rep, gen, range(K), twin=twin)
        checks.check(True, "no daemon: the training loop finished")
        # a checkpoint taken while the daemon is down: state_dict() returns
        # (after close_timeout), without the run's checkpoint
        got = {}
        t = threading.Thread(target=lambda: got.update(state=rep.state_dict()), daemon=True)
        t.start()
        t.join(timeout=30)  # only matters when state_dict() hangs
        checks.check(not t.is_alive(), "no daemon: state_dict() returns")
        state = got.get("state") or {}
        checks.eq((state.get("next_step"), state.get("run_checkpoint")), (K, None),
                  "no daemon: state_dict() has the next step and no run checkpoint")
        # flush() before a checkpoint barrier: returns False after close_timeout
        t = threading.Thread(target=lambda: got.update(flushed=rep.flush()), daemon=True)
        t.start()
        t.join(timeout=30)  # only matters when flush() hangs
        checks.eq((t.is_alive(), got.get("flushed")), (False, False),
                  "no daemon: flush() returns False (reports still buffered)")
        rep.close()
    checks.eq(rep.lost_steps, list(range(K)), "no daemon: every step listed in lost_steps")
    checks.eq(rep.dropped, K, "no daemon: every report counted in dropped")
    checks.eq(rep.steps_sent, 0, "no daemon: nothing delivered")
    checks.check(any(issubclass(w.category, ReportWarning) for w in seen),
                 "no daemon: a ReportWarning was issued", [str(w.message) for w in seen][:3])
    for (name, m), (_, t) in zip(bn_buffers(model), bn_buffers(twin)):
        checks.close(m.running_mean, t.running_mean, f"no daemon {name}: running_mean = twin",
                     rtol=1e-6, atol=1e-7)
        checks.close(m.running_var, t.running_var, f"no daemon {name}: running_var = twin",
                     rtol=1e-6, atol=1e-7)
        checks.eq(int(m.num_batches_tracked), K, f"no daemon {name}: num_batches_tracked")
    # sync=True: a step whose /sync cannot be answered returns None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = StatsReporter(model, normstat.Client(url, timeout=2.0), "nowhere", 0, 1, sync=True,
                            close_timeout=0.2)
        model(h.make_batch("cnn", 4, gen)[0])
        checks.eq(rep.step(0), None, "no daemon, sync=True: step() returns None")
        rep.close()
    checks.eq(rep.lost_steps, [0], "no daemon, sync=True: the step is listed as lost")
    # strict=True: the old contract
    rep = StatsReporter(model, normstat.Client(url, timeout=2.0), "nowhere", 0, 1, strict=True)
    model(h.make_batch("cnn", 4, gen)[0])
    rep.step(0)
    try:
        rep.close()
        checks.check(False, "strict=True without a daemon: close() raises", "no exception")
    except normstat.ReporterError as e:
        checks.eq((e.step, e.code), (0, "connection_failed"),
                  "strict=True without a daemon: close() raises ReporterError(step 0, connection_failed)")


def bound(checks):
    url = f"http://127.0.0.1:{free_port()}"
    model = h.make_model("cnn", seed=1)
    gen = torch.Generator().manual_seed(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = StatsReporter(model, normstat.Client(url, timeout=2.0), "nowhere", 0, 1,
                            max_buffered=3, close_timeout=0.2)
        train(model, rep, gen, range(K))
        checks.eq(rep.dropped, K - 3, "bound: max_buffered=3 drops 7 of 10 reports while training")
        checks.eq(len(rep.lost_steps), K - 3, "bound: 7 steps listed as lost while training")
        rep.close()
    checks.eq(sorted(rep.lost_steps), list(range(K)), "bound: after close every step is listed")
    checks.eq(rep.dropped, K, "bound: after close every report is counted")


def restart(checks):
    tmp = tempfile.mkdtemp(prefix="nsd-rep-restart-")
    d = PersistentDaemon(free_port(), os.path.join(tmp, "var"))
    try:
        d.start()
        c = normstat.Client(d.url, timeout=5.0)
        run = h.run_name("restart")
        c.put_run(run, world_size=1, momentum=0.1)
        model = h.make_model("cnn", seed=5)
        cap = h.Capture(model)
        refs = {}
        gen = torch.Generator().manual_seed(6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = StatsReporter(model, c, run, 0, 1, close_timeout=30.0, retry_max_s=0.5)
            train(model, rep, gen, range(0, 5), cap, refs)
            checks.check(rep.flush(timeout=30), "restart: steps 0-4 delivered before the stop")
            checks.eq(d.stop(), 0, "restart: normstatd exit status after SIGTERM")
            train(model, rep, gen, range(5, 10), cap, refs)
            checks.check(not rep.flush(timeout=0.2), "restart: steps 5-9 wait while the daemon is down")
            d.start()
            train(model, rep, gen, range(10, 15), cap, refs)
            rep.close()
        checks.eq(rep.lost_steps, [], "restart: no step lost")
        checks.eq(rep.steps_sent, 15, "restart: 15 reports delivered")
        served = c.stats(run)["layers"]
        for name, m in bn_buffers(model):
            got = served.get(name, {})
            checks.eq(got.get("num_batches_tracked"), 15, f"restart {name}: num_batches_tracked 15")
            checks.close(got.get("running_mean", []), refs[name].mean, f"restart {name}: EMA mean = float64 reference")
            checks.close(got.get("running_var", []), refs[name].var, f"restart {name}: EMA var = float64 reference")
            checks.close(got.get("running_mean", []), m.running_mean, f"restart {name}: EMA mean = model",
                         rtol=1e-5, atol=1e-6)
            checks.close(got.get("running_var", []), m.running_var, f"restart {name}: EMA var = model",
                         rtol=1e-5, atol=1e-6)
        c.close()
        checks.eq(d.stop(), 0, "restart: normstatd exit status after the second SIGTERM")
    finally:
        d.kill()


def refused(checks):
    d = h.start_daemon()
    c = d.client()
    run = h.run_name("refused")
    c.put_run(run, world_size=2)
    model = h.make_model("mlp", seed=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with StatsReporter(model, c, run, 2, 2) as rep:  # worker outside world_size
            model(h.make_batch("mlp", 4, torch.Generator().manual_seed(1))[0])
            rep.step(0)
            checks.check(rep.flush(timeout=30), "refused: the report was answered")
            model(h.make_batch("mlp", 4, torch.Generator().manual_seed(2))[0])
            rep.step(1)  # does not raise
            rep.flush(timeout=30)
    checks.eq(rep.lost_steps, [0, 1], "refused: 409 worker_out_of_range drops the steps")
    checks.check(any("worker_out_of_range" in str(w.message) for w in seen),
                 "refused: the warning names the server's error code")
    # a ReportWarning raised as an error in the sender thread must not stop it
    model = h.make_model("mlp", seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)
        rep = StatsReporter(model, c, run, 2, 2)
        for step in range(3):
            model(h.make_batch("mlp", 4, torch.Generator().manual_seed(step))[0])
            rep.step(step)
        checks.check(rep.flush(timeout=30),
                     "refused, warnings as errors: flush() returns (the sender went on)")
        checks.eq(rep.lost_steps, [0, 1, 2], "refused, warnings as errors: every step counted lost")
        rep.close()
        # the same with no daemon (retried, then dropped at close)
        rep = StatsReporter(model, normstat.Client(f"http://127.0.0.1:{free_port()}", timeout=2.0),
                            "nowhere", 0, 1, close_timeout=0.2)
        for step in range(3):
            model(h.make_batch("mlp", 4, torch.Generator().manual_seed(step))[0])
            rep.step(step)
        rep.close()
        checks.eq(rep.lost_steps, [0, 1, 2],
                  "no daemon, warnings as errors: every step counted lost at close")
    c.close()
    h.stop_daemon(checks, d)


def body(checks):
    no_daemon(checks)
    bound(checks)
    restart(checks)
    refused(checks)


if __name__ == "__main__":
    h.main(body)
