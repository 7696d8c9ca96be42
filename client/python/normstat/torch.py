"""normstat.torch: PyTorch helpers for trainers and evaluators.

Only this module needs torch (it is imported here, not by `import normstat`).

* StatsReporter: forward hooks on every BatchNorm layer collect the per-
  channel count, mean and biased variance of each forward's input (computed
  on the device), moved to the CPU once per step and reported for all layers
  in one request - from a background thread, or synchronously (SyncBN over
  HTTP: step() returns the global statistics).
* load_stats: fetch population statistics (safetensors) into the BN buffers.
* precise_bn: the PreciseBN loop across all workers of a run.

Layer names are module paths with the wrapper prefixes "module."
(DistributedDataParallel, DataParallel) and "_orig_mod." (torch.compile)
removed, so a trainer's wrapped model and an evaluator's plain model agree.
"""

import collections
import queue
import re
import struct
import sys
import threading
import weakref

import torch

from . import safetensors as st
from .errors import NotFound, ReporterError

__all__ = ["StatsReporter", "load_stats", "precise_bn", "bn_layers", "layer_name",
           "LoadResult", "PreciseResult"]

_WRAPPERS = ("module", "_orig_mod")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_LITTLE = sys.byteorder == "little"
_REPORTERS = weakref.WeakSet()  # open StatsReporters, so precise_bn can pause them


def layer_name(path):
    """The normstat layer name of a module path: leading "module." and
    "_orig_mod." segments are dropped, and "_orig_mod" segments anywhere
    (a compiled submodule)."""
    parts = path.split(".") if path else []
    while parts and parts[0] in _WRAPPERS:
        parts.pop(0)
    return ".".join(p for p in parts if p != "_orig_mod")


def bn_layers(model):
    """[(layer name, module)] of every torch.nn.modules.batchnorm._BatchNorm
    (BatchNorm1d/2d/3d, SyncBatchNorm, lazy variants) in model, in module
    order. Raises ValueError for names normstat cannot carry, or two modules
    that map to the same name."""
    out, seen = [], {}
    for path, m in model.named_modules():
        if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            continue
        name = layer_name(path)
        if not _NAME_RE.match(name):
            raise ValueError(f"BatchNorm module at {path!r}: layer name {name!r} does not match "
                             "[A-Za-z0-9_.:-]{1,128}")
        if name in seen:
            raise ValueError(f"BatchNorm modules {seen[name]!r} and {path!r} both map to layer {name!r}")
        seen[name] = path
        out.append((name, m))
    return out


def _f32_bytes(t):
    """Little-endian float32 bytes of a CPU tensor."""
    t = t.detach().to(torch.float32).contiguous().reshape(-1)
    if _LITTLE:
        try:
            return t.numpy().tobytes()
        except (RuntimeError, ImportError, TypeError):
            pass
    return struct.pack(f"<{t.numel()}f", *t.tolist())


def _tensor(t):
    """A torch tensor (CPU) of a decoded safetensors Tensor."""
    dt = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}[t.dtype]
    if _LITTLE and t.data:
        out = torch.frombuffer(bytearray(t.data), dtype=dt)
    else:
        out = torch.tensor(t.values(), dtype=dt)
    return out.reshape(t.shape)


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
        _REPORTERS.add(self)
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
            raw = _f32_bytes(flat.cpu())
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
        _REPORTERS.discard(self)
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


LoadResult = collections.namedtuple("LoadResult", ["missing", "extra"])


def load_stats(model, client, run, source="ema", domain=None, mixture=None, layers=None,
               strict=False):
    """Fetch population statistics of 'run' as safetensors and load them into
    the BN buffers of 'model' (running_mean, running_var, and
    num_batches_tracked where both sides have it).

    source: "ema" or "precise"; domain: a name or "*" (the server's default,
    pooled); mixture: {"a": 0.7, "b": 0.3} or "a:0.7,b:0.3"; layers: names
    to fetch (default all). Returns LoadResult(missing, extra): sorted layer
    names the model has (with running buffers) but the server did not serve,
    and names served that the model lacks. strict=True raises KeyError when
    either is non-empty (nothing is loaded then). A served channel count
    that differs from the module's raises ValueError (nothing is loaded)."""
    if source not in ("ema", "precise"):
        raise ValueError(f"source must be 'ema' or 'precise', got {source!r}")
    data = client.stats(run, source=source, domain=domain, mixture=mixture, layers=layers,
                        format="safetensors")
    tensors, _meta = st.decode(data)
    served = {}
    for name, t in tensors.items():
        layer, _, part = name.rpartition(".")
        served.setdefault(layer, {})[part] = t
    plan, missing, names = [], [], set()
    for name, m in bn_layers(model):
        names.add(name)
        if m.running_mean is None or m.running_var is None:
            continue
        s = served.get(name)
        if s is None or "running_mean" not in s or "running_var" not in s:
            missing.append(name)
            continue
        rm, rv = _tensor(s["running_mean"]), _tensor(s["running_var"])
        if rm.numel() != m.running_mean.numel() or rv.numel() != m.running_var.numel():
            raise ValueError(f"{name}: the server has {rm.numel()} channels, the model "
                             f"{m.running_mean.numel()}")
        nbt = s.get("num_batches_tracked")
        plan.append((m, rm, rv, None if nbt is None else int(nbt.item())))
    extra = sorted(set(served) - names)
    missing.sort()
    if strict and (missing or extra):
        raise KeyError(f"load_stats(strict=True): missing {missing}, extra {extra}")
    with torch.no_grad():
        for m, rm, rv, nbt in plan:
            m.running_mean.copy_(rm.reshape(m.running_mean.shape))
            m.running_var.copy_(rv.reshape(m.running_var.shape))
            if nbt is not None and getattr(m, "num_batches_tracked", None) is not None:
                m.num_batches_tracked.fill_(nbt)
    return LoadResult(missing, extra)


PreciseResult = collections.namedtuple(
    "PreciseResult", ["generation", "first_step", "last_step", "next_step", "batches",
                      "missing", "extra"])


def _default_forward(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    try:
        dev = next(model.parameters()).device
        batch = batch.to(dev)
    except (StopIteration, AttributeError):
        pass
    return model(batch)


def next_free_step(client, run):
    """1 + the highest step finalized in any layer of 'run' (0 for a run
    that does not exist or has no step yet)."""
    try:
        info = client.get_run(run)
    except NotFound:
        return 0
    best = -1
    for layer in ((info or {}).get("status") or {}).get("layers", {}).values():
        for key in ("finalized_step", "step"):
            v = layer.get(key)
            if isinstance(v, int) and v > best:
                best = v
    return best + 1


def precise_bn(model, loader, client, run, rank, world_size, num_batches=200, domain="default",
               step=None, forward=None, reset=True, load=True, fmt=None):
    """PreciseBN across all workers of 'run': the exact population mean and
    unbiased variance of every BN layer's input over num_batches batches of
    every worker, loaded into the model's running buffers.

    Every rank calls it with the same run, num_batches, domain and step.
    How the ranks agree, without any other channel:
      1. rank 0 starts a new PreciseBN generation (POST precise/reset: of
         every domain when reset is True, of one domain when reset is its
         name; the run is created with world_size if missing) before it
         reports anything;
      2. every rank forwards num_batches batches of its 'loader' (model in
         training mode, BN momentum 0, no grad) and reports each as steps
         step, step+1, ..., step+num_batches-1 with update=["precise"]; a
         rank whose loader runs out reports empty batches (count 0). No step
         can finalize before rank 0 has reported it, so none lands in the old
         generation;
      3. the last step is sent with /sync: when it returns, every rank has
         reported every step, so all are applied; each rank then fetches the
         precise statistics of 'domain' and loads them (if load).
    step: the first step number to use (the steps are consumed: later
    reports of the run must use higher steps; the result's next_step says
    which). Default: one above the highest step finalized in the run, read
    by each rank - pass it explicitly unless every rank's training reports
    are finalized before any rank gets here (flush() every StatsReporter and
    pass a barrier of your own).
    domain: the domain this rank's batches belong to (ranks may differ:
    each loads its own domain's values).
    forward(model, batch): how to run a batch (default: model(batch),
    model(batch[0]) for tuples/lists, model(**batch) for dicts, moved to the
    model's device). BN momentum, training flags, running buffers and
    num_batches_tracked are restored afterwards (then running_mean/var
    replaced by the precise values when load is True). Open StatsReporters
    on the model (the training loop's) are paused during the pass, so its
    batches never reach their next step.
    Returns PreciseResult(generation (rank 0, else None), first_step,
    last_step, next_step, batches (this rank's non-empty batches), missing,
    extra)."""
    if num_batches < 1:
        raise ValueError("num_batches must be >= 1")
    forward = forward or _default_forward
    if step is None:
        step = next_free_step(client, run)
    first, last = int(step), int(step) + int(num_batches) - 1
    bns = bn_layers(model)
    saved_training = [(m, m.training) for m in model.modules()]
    saved_bn = []
    for _, m in bns:
        saved_bn.append((m, m.momentum,
                         None if m.running_mean is None else m.running_mean.clone(),
                         None if m.running_var is None else m.running_var.clone(),
                         None if getattr(m, "num_batches_tracked", None) is None
                         else m.num_batches_tracked.clone()))
    generation = None
    if rank == 0 and reset:
        which = None if reset is True else reset
        try:
            generation = client.precise_reset(run, domain=which)
        except NotFound:
            client.put_run(run, world_size=world_size)
            generation = client.precise_reset(run, domain=which)
    batches = 0
    # other reporters on this model (the training loop's) must not see these forwards
    ids = {id(m) for _, m in bns}
    paused = [r for r in list(_REPORTERS)
              if r.enabled and any(id(m) in ids for _, m in r.layers)]
    for r in paused:
        r.enabled = False
    reporter = StatsReporter(model, client, run, rank, world_size, domain=domain, sync=False,
                             update=("precise",), fmt=fmt)
    try:
        for m, *_ in saved_bn:
            m.momentum = 0.0
        model.train()
        it = iter(loader)
        with torch.no_grad():
            for s in range(first, last + 1):
                batch = next(it, None) if it is not None else None
                if batch is None:
                    it = None
                else:
                    forward(model, batch)
                    batches += 1
                reporter.step(s, sync=(s == last))
        reporter.close()
    finally:
        reporter.close(raise_errors=False)
        with torch.no_grad():
            for m, momentum, rm, rv, nbt in saved_bn:
                m.momentum = momentum
                if rm is not None:
                    m.running_mean.copy_(rm)
                if rv is not None:
                    m.running_var.copy_(rv)
                if nbt is not None:
                    m.num_batches_tracked.copy_(nbt)
        for m, training in saved_training:
            m.training = training
        for r in paused:
            r.enabled = True
    missing, extra = [], []
    if load:
        missing, extra = load_stats(model, client, run, source="precise", domain=domain)
        with torch.no_grad():
            for m, _momentum, _rm, _rv, nbt in saved_bn:
                if nbt is not None:
                    m.num_batches_tracked.copy_(nbt)
    return PreciseResult(generation, first, last, last + 1, batches, missing, extra)
