"""StatsReporter: a trainer's BatchNorm statistics, reported once per step.

Forward hooks on every BatchNorm layer collect the per-channel count, mean
and biased variance of each forward's input (computed on the device), moved
to the CPU once per step and reported for all layers in one request - from a
background thread, or synchronously (step() returns the global statistics).
"""

import collections
import queue
import threading
import weakref

import torch

from ..errors import ReporterError
from .layers import bn_layers
from .tensors import f32_bytes

__all__ = ["StatsReporter"]

# open StatsReporters, so precise_bn can pause them
REPORTERS = weakref.WeakSet()


class _Acc:
    """One layer's statistics of the current step: count, mean and biased
    var tensors on the device. Several forwards in one step (gradient
    accumulation) are merged exactly (Chan et al., float64)."""

    __slots__ = ("n", "mean", "var")

    def __init__(self, n, mean, var):
        self.n, self.mean, self.var = n, mean, var

    def merge(self, n, mean, var):
        if n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.var = n, mean, var
            return
        na, nb = float(self.n), float(n)
        tot = na + nb
        ma, va = self.mean.double(), self.var.double()
        mb, vb = mean.double(), var.double()
        delta = mb - ma
        self.mean = ma + delta * (nb / tot)
        self.var = (va * na + vb * nb + delta * delta * (na * nb / tot)) / tot
        self.n += n


class StatsReporter:
    """Report the batch statistics of every BatchNorm layer of 'model' to
    normstat, once per training step.

        with StatsReporter(model, client, "r1", rank, world_size) as rep:
            for step, (x, y) in enumerate(loader):
                loss(model(x), y).backward(); opt.step()
                rep.step(step)

    Each forward of a BN module in training mode records its input's count
    (N*H*W...), mean and biased variance per channel (torch.var_mean on the
    input's device; forwards in eval mode or while .enabled is False are
    ignored). step(s) sends all layers of step s in one request, including
    count 0 for layers that saw no forward (an empty batch still arrives, so
    no barrier waits for this worker).

    sync=False: the request is sent by a background thread through a queue of
    'queue_size' steps (step() blocks when it is full); a failed report is
    raised as ReporterError by the next step(), flush() or close().
    sync=True: step() sends /sync, waits for every worker and returns the
    answer: {"step", "complete", "workers", "layers": {name: {"count",
    "mean", "var"}}} (global statistics, biased variance).

    The client should be this reporter's own (calls on one Client are
    serialised). The reporter never creates or configures the run: a report
    creates a missing run with 'world_size' and the server's defaults, so
    call client.put_run() first for any other momentum."""

    def __init__(self, model, client, run, rank, world_size, domain="default", sync=False,
                 update=("ema", "precise"), scope=None, queue_size=16, fmt=None):
        self.client = client
        self.run = run
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.domain = domain
        self.sync = bool(sync)
        self.update = (update,) if isinstance(update, str) else tuple(update)
        self.scope = scope
        self.fmt = fmt
        self.enabled = True
        self.layers = bn_layers(model)
        if not self.layers:
            raise ValueError("the model has no BatchNorm layers")
        self.steps_sent = 0
        self._acc = {}
        self._closed = False
        self._error = None
        self._err_lock = threading.Lock()
        self._hooks = [m.register_forward_hook(self._hook(name)) for name, m in self.layers]
        REPORTERS.add(self)
        self._queue = None
        self._thread = None
        if not self.sync:
            self._queue = queue.Queue(maxsize=max(1, int(queue_size)))
            self._thread = threading.Thread(target=self._worker, daemon=True,
                                            name=f"normstat-reporter-{run}-{rank}")
            self._thread.start()

    # ------------------------------------------------------------ collection

    def _hook(self, name):
        def hook(module, inputs, output):
            if not self.enabled or not module.training or not inputs:
                return
            with torch.no_grad():
                self._collect(name, module, inputs[0])
        return hook

    def _collect(self, name, module, x):
        x = x.detach()
        if x.dim() < 2:
            raise ValueError(f"{name}: input of shape {tuple(x.shape)} has no channel dimension")
        c = x.shape[1]
        n = x.numel() // c if c else 0
        acc = self._acc.get(name)
        if n == 0:
            if acc is None:
                self._acc[name] = _Acc(0, None, None)
            return
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        dims = [0] + list(range(2, x.dim()))
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        if acc is None:
            self._acc[name] = _Acc(n, mean, var)
        else:
            acc.merge(n, mean, var)

    def _take(self):
        """The step's layers as [(name, count, C, mean|None, var|None)] with
        device tensors, and reset collection."""
        acc, self._acc = self._acc, {}
        out = []
        for name, m in self.layers:
            a = acc.get(name)
            c = int(m.num_features)
            if a is None or a.n == 0:
                out.append((name, 0, c, None, None))
            else:
                out.append((name, a.n, a.mean.numel(), a.mean, a.var))
        return out

    @staticmethod
    def _to_host(layers):
        """{name: (count, mean bytes|None, var bytes|None)}: one device-to-host
        copy per device of all means and variances."""
        by_dev = collections.OrderedDict()
        for name, n, c, mean, var in layers:
            if mean is not None:
                by_dev.setdefault(mean.device, []).append((name, c, mean, var))
        host = {}
        for dev, items in by_dev.items():
            flat = torch.cat([t.reshape(-1).to(torch.float32) for _, _, mean, var in items
                              for t in (mean, var)])
            raw = f32_bytes(flat.cpu())
            off = 0
            for name, c, _, _ in items:
                host[name] = (raw[off:off + 4 * c], raw[off + 4 * c:off + 8 * c])
                off += 8 * c
        out = {}
        for name, n, c, mean, var in layers:
            mb, vb = host.get(name, (None, None))
            out[name] = (n, mb, vb)
        return out

    # ------------------------------------------------------------ sending

    def _send(self, step, layers, sync):
        payload = self._to_host(layers)
        kw = dict(domain=self.domain, update=list(self.update), world_size=self.world_size,
                  fmt=self.fmt)
        if sync:
            res = self.client.sync(self.run, step, self.rank, payload, scope=self.scope, **kw)
        else:
            res = self.client.report(self.run, step, self.rank, payload, **kw)
        self.steps_sent += 1
        return res

    def _worker(self):
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                step, layers = job
                try:
                    self._send(step, layers, False)
                except Exception as e:  # surfaced by the next call
                    err = ReporterError(step, e)
                    err.__cause__ = e
                    with self._err_lock:
                        if self._error is None:
                            self._error = err
            finally:
                self._queue.task_done()

    def _raise_pending(self):
        with self._err_lock:
            err, self._error = self._error, None
        if err is not None:
            raise err

    def step(self, step, sync=None):
        """Report everything collected since the previous step() as step
        'step' (steps must increase). sync (default: the reporter's mode)
        True sends /sync after the queued reports and returns its answer;
        otherwise the report is queued and None returned. Raises the
        ReporterError of an earlier failed background report: after queueing
        this step's report, or (sync) instead of sending it."""
        if self._closed:
            raise RuntimeError("StatsReporter is closed")
        layers = self._take()
        sync = self.sync if sync is None else sync
        if sync:
            if self._queue is not None:
                self._queue.join()
            self._raise_pending()
            return self._send(int(step), layers, True)
        self._queue.put((int(step), layers))
        self._raise_pending()
        return None

    def discard(self):
        """Drop what was collected since the last step() (e.g. a skipped
        batch) without reporting it."""
        self._acc = {}

    def flush(self):
        """Wait until every queued report was answered; raise the first
        error of those that failed."""
        if self._queue is not None:
            self._queue.join()
        self._raise_pending()

    def close(self, raise_errors=True):
        """Send what is queued, stop the thread, remove the hooks; raises a
        pending report error (unless raise_errors is False)."""
        if self._closed:
            if raise_errors:
                self._raise_pending()
            return
        self._closed = True
        REPORTERS.discard(self)
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if raise_errors:
            self._raise_pending()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # an exception already propagating is not masked by a report error
        self.close(raise_errors=exc_type is None)
