"""SyncBatchNorm over normstat: torch.nn.SyncBatchNorm without a process group.

In training mode each forward of a layer sends its local (count, mean,
biased variance) to the daemon (/sync, one layer per request) and normalizes
with the global mean and biased variance of all workers; its backward sends
the per-channel sums sum_dy and sum_dy_xmu (/grad) and gets them added over
all workers, so the input gradient is the one a single process computes over
the concatenated batch. Everything else follows torch.nn.SyncBatchNorm
(torch/nn/modules/_functions.py): the weight and bias gradients are local
(DistributedDataParallel averages them), the running statistics take the
global mean and the unbiased variance with the global count, eval mode uses
the running statistics and needs no server.

Steps. Every training forward of a layer is one daemon step of that layer:
    step = step_base + num_batches_tracked   (the value before the forward)
num_batches_tracked is a buffer PyTorch saves in every checkpoint, so a job
resumed from its checkpoint goes on with the next step, and all ranks (which
run the same forwards) agree without talking. The backward of a forward uses
that forward's step on /grad - or, when several forwards of the layer come
before one backward (two views through one model), whose backward runs the
later forward first, one above the layer's previous gradient step, so that
the gradient steps of a layer increase as the daemon requires:
    grad step = max(forward step, previous grad step + 1)
(every rank runs the same backward order, so all agree; a resumed job
starts above every earlier gradient step, as its forward steps do).
step_base="next" (the default) is settled per
layer at its first training forward: one above the layer's last finalized
step in the run, so re-running a job on an existing run, or resuming it, never
reuses a step (each rank reads it before its first report of the layer,
and no step of the layer can finalize before every rank has reported, so
every rank reads the same value). Layers without running statistics
(track_running_stats=False) count their forwards in memory instead.
"""

import os
import re
import struct
import threading

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from .. import Client, wire
from ..errors import Error, NotFound, SyncTimeout
from .layers import layer_name

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm", "SyncBatchNormTimeout", "Link"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_HALF = (torch.float16, torch.bfloat16)


class SyncBatchNormTimeout(SyncTimeout):
    """Not every worker sent a layer's statistics (forward) or gradient
    sums (backward) within the run's sync_timeout_ms. .layer, .step,
    .missing (worker ranks, when the daemon named them) and .phase
    ("forward" or "backward")."""

    def __init__(self, layer, step, missing, phase, detail):
        self.layer, self.step, self.missing, self.phase = layer, step, missing, phase
        who = (("worker " if len(missing) == 1 else "workers ") + ", ".join(map(str, missing))
               if missing else "some workers")
        super().__init__(504, "sync_timeout",
                         f"SyncBatchNorm layer {layer!r} step {step} ({phase}): {who} did not "
                         f"arrive: {detail}")


def _timeout(err, layer, step, phase):
    """A daemon's 504 as SyncBatchNormTimeout; its message names the workers
    that did not arrive ("... workers 2, 3 did not send ...")."""
    m = re.search(r"workers? ([0-9, ]+) did not", err.message or "")
    missing = [int(w) for w in m.group(1).split(",") if w.strip()] if m else []
    return SyncBatchNormTimeout(layer, step, missing, phase, err.message)


class Link:
    """What the SyncBatchNorm layers of one worker share: one keep-alive
    connection to the daemon (wire.Connection) and a prebuilt request per
    layer and kind. Thread-safe (one request at a time).

    url: the daemon, or a normstat.Client whose url, token and sync timeout
    are used (token: a bearer token, default $NORMSTAT_TOKEN). rank, world_size: this worker and the run's size (sent with
    every report, so /sync creates a missing run with it). domain, update:
    as for reports (update ("ema", "precise") lets the run's EMA and
    PreciseBN take the statistics too). timeout: seconds a request may wait
    (default: the Client's sync_timeout, else 120; keep it above the run's
    sync_timeout_ms so the daemon's timeout answer, naming the missing
    workers, arrives first)."""

    def __init__(self, url, run, rank, world_size, domain=None, update=("ema", "precise"),
                 timeout=None, token=None):
        cafile = None  # https: $NORMSTAT_CACERT, or the CA file of a Client given
        if isinstance(url, Client):
            client = url
            url = client.url
            cafile = client.cafile
            if timeout is None:
                timeout = client.sync_timeout
            if token is None:
                auth = client.headers.get("Authorization", "")
                token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        elif token is None:  # as normstat.Client does
            token = os.environ.get("NORMSTAT_TOKEN") or None
        if not _NAME_RE.match(run or ""):
            raise ValueError(f"run: {run!r} does not match [A-Za-z0-9_.:-]{{1,128}}")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank: expected 0 <= rank < world_size ({world_size}), got {rank}")
        self.url, self.run, self.rank, self.world_size = url, run, int(rank), int(world_size)
        self.domain = domain
        self.update = tuple([update] if isinstance(update, str) else update)
        self.timeout = 120.0 if timeout is None else timeout
        self.token = token
        self.cafile = cafile
        self._lock = threading.Lock()
        self._conn = None
        self._frames = {}
        self._client = None
        self._pid = os.getpid()

    def __getstate__(self):  # a pickled or copied model reconnects lazily
        state = dict(self.__dict__)
        state.update(_lock=None, _conn=None, _frames={}, _client=None)
        return state

    def __setstate__(self, state):
        state.setdefault("cafile", None)  # pickled before links had one
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __deepcopy__(self, memo):  # copies of a model share the connection
        return self

    def close(self):
        """Close the connections (the layers' and next_step's); reopened
        when needed."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._client is not None:
                self._client.close()
                self._client = None
            self._frames = {}

    def _connection(self):
        if self._conn is None:
            self._conn = wire.Connection(self.url, timeout=self.timeout, token=self.token,
                                         cafile=self.cafile)
        return self._conn

    def _frame(self, kind, layer, channels, dtype="F32"):
        if self._pid != os.getpid():  # a forked child never uses its parent's socket
            self._conn, self._frames, self._client, self._pid = None, {}, None, os.getpid()
        key = (kind, layer, dtype)
        f = self._frames.get(key)
        if f is None or f.channels != channels:
            conn = self._connection()
            if kind == "sync":
                f = wire.SyncFrame(conn, self.run, layer, self.rank, channels,
                                   world_size=self.world_size, domain=self.domain,
                                   update=self.update)
                f.host = torch.frombuffer(f.stats, dtype=torch.float32)
                f.host2d = f.host.view(2, channels)
            else:
                f = wire.GradFrame(conn, self.run, layer, self.rank, channels, dtype)
                f.host = torch.frombuffer(f.sums, dtype=torch.float64 if dtype == "F64"
                                          else torch.float32)
                f.host2d = f.host.view(2, channels)
            self._frames[key] = f
        return f

    def sync(self, layer, step, count, mean, var, device, dtype):
        """Send this worker's count, mean and biased var (float [C] tensors
        on any device, ignored when count is 0) of 'layer' at 'step'.
        Returns (global count, [2, C] tensor of the global mean and biased
        variance on 'device' in 'dtype'). Raises SyncBatchNormTimeout when a
        worker did not arrive."""
        channels = mean.shape[-1]
        with self._lock:
            f = self._frame("sync", layer, channels)
            if count == 0:
                f.host2d.zero_()  # ignored by the daemon, but must be finite
            elif mean.device.type == "cpu":
                torch.stack((mean, var), out=f.host2d)
            else:  # one device-to-host copy
                f.host2d.copy_(torch.stack((mean, var)))
            try:
                ans = f.conn.exchange(f.request(step, count), f.path)
            except SyncTimeout as e:  # a run with on_timeout "drop"
                raise _timeout(e, layer, step, "forward") from None
            meta = ans.metadata
            if meta.get("complete") != "true":
                missing = [int(w) for w in meta.get("missing", "").split(",") if w.strip()]
                raise SyncBatchNormTimeout(layer, step, missing, "forward",
                                           f"the daemon finalized the step with "
                                           f"{meta.get('workers', '?')} of {self.world_size} "
                                           f"workers")
            _, cb = ans.array(layer + ".count")
            total = struct.unpack("<q", cb)[0] if len(cb) == 8 else -1
            both = ans.arrays(layer + ".mean", layer + ".var")
            if both is not None and both[0] == "F32" and len(both[1]) == 8 * channels:
                host = torch.frombuffer(both[1], dtype=torch.float32).view(2, channels)
            else:
                host = torch.empty(2, channels, dtype=torch.float32)
                for i, part in enumerate(("mean", "var")):
                    got, b = ans.array(f"{layer}.{part}")
                    if got != "F32" or len(b) != 4 * channels:
                        raise Error(None, "bad_response",
                                    f"{layer}.{part}: expected F32 [{channels}], got {got} "
                                    f"({len(b)} bytes)")
                    host[i].copy_(torch.frombuffer(b, dtype=torch.float32))
            # a copy: the answer's buffer is reused by the next exchange
            return total, host.to(device=device, dtype=dtype, copy=True)

    def grad(self, layer, step, sum_dy, sum_dy_xmu, wire_dtype, device, dtype):
        """Send this worker's sum_dy and sum_dy_xmu ([C] tensors, any device)
        of 'layer' at 'step', as 'wire_dtype' (torch.float32 or
        torch.float64); returns the sums over all workers as a [2, C] tensor
        on 'device' in 'dtype'. Raises SyncBatchNormTimeout when a worker
        did not send its sums in time."""
        channels = sum_dy.shape[-1]
        code = "F64" if wire_dtype == torch.float64 else "F32"
        with self._lock:
            f = self._frame("grad", layer, channels, code)
            if sum_dy.device.type == "cpu":
                torch.stack((sum_dy, sum_dy_xmu), out=f.host2d)
            else:  # one device-to-host copy
                f.host2d.copy_(torch.stack((sum_dy, sum_dy_xmu)))
            try:
                ans = f.conn.exchange(f.request(step), f.path)
            except SyncTimeout as e:
                raise _timeout(e, layer, step, "backward") from None
            both = ans.arrays(layer + ".sum_dy", layer + ".sum_dy_xmu")
            size = f.host.element_size()
            if both is None or both[0] != code or len(both[1]) != 2 * size * channels:
                raise Error(None, "bad_response", f"{layer}.sum_dy, .sum_dy_xmu: expected "
                                                  f"{code} [{channels}] each, one after "
                                                  "the other")
            host = torch.frombuffer(both[1], dtype=f.host.dtype).view(2, channels)
            return host.to(device=device, dtype=dtype, copy=True)

    def next_step(self, layer):
        """One above the last finalized step of 'layer' in the run (0 when
        the run or the layer has none)."""
        if self._client is None:
            self._client = Client(self.url, timeout=min(self.timeout or 30.0, 30.0),
                                  token=self.token or "", cafile=self.cafile)
        try:
            info = self._client.get_run(self.run)
        except NotFound:
            return 0
        entry = (((info or {}).get("status") or {}).get("layers") or {}).get(layer) or {}
        last = max((v for v in (entry.get("finalized_step"), entry.get("step"))
                    if isinstance(v, int)), default=-1)
        return last + 1


def _local_moments(x):
    """(mean, biased var) per channel of a non-empty x, by PyTorch's own BN
    statistics kernel (one pass, several times faster on CPU than
    torch.var_mean over dims (0, 2, ...)); torch.var_mean where a build
    lacks it."""
    try:
        return torch.batch_norm_update_stats(x, None, None, 0.0)
    except (RuntimeError, NotImplementedError):
        var, mean = torch.var_mean(x, dim=[0] + list(range(2, x.dim())), unbiased=False)
        return mean, var


class _SyncBatchNormFunction(torch.autograd.Function):
    """Forward with the global statistics, backward with the global sums.

    The arithmetic is PyTorch's own kernels wherever they fit: the local
    statistics come from batch_norm_update_stats, the output from
    batch_norm in eval mode fed with the global mean and variance, and the
    backward's local sums from native_batch_norm_backward in eval mode
    (whose weight and bias gradients are sum_dy_xmu * invstd and sum_dy).
    The input gradient is torch.nn.SyncBatchNorm's
        dx = (dy - sum_dy/N - (x - mean) * invstd^2 * sum_dy_xmu/N) * invstd * w
    (N, sum_dy, sum_dy_xmu over all workers), computed as
        dx = dy * (invstd * w) - ((x - mean) * k2 + k1)
    with the second term one eval-mode batch_norm pass (mean, variance 1,
    eps 0, weight k2, bias k1); like PyTorch's CPU kernels, that pass
    applies a per-channel affine map. fp16/bf16 inputs are computed in
    float32."""

    @staticmethod
    def forward(ctx, x, weight, bias, bn, step, factor):
        channels = x.shape[1]
        count = x.numel() // channels if channels else 0
        xc = x.float() if x.dtype in _HALF else x
        if count > 0:
            mean, var = _local_moments(xc)
        else:
            mean = var = torch.zeros(channels, dtype=xc.dtype, device=x.device)
        total, glob = bn._link.sync(bn.layer, step, count, mean, var, x.device, xc.dtype)
        if total == 1:
            raise ValueError(f"SyncBatchNorm layer {bn.layer!r} step {step}: expected more than "
                             f"1 value per channel when training over all workers, got 1")
        mean, var = glob[0], glob[1]
        wc, bc = weight, bias
        if weight is not None and weight.dtype != xc.dtype:
            wc, bc = weight.to(xc.dtype), bias.to(xc.dtype)
        if count > 0:
            out = torch.batch_norm(xc, wc, bc, mean, var, False, 0.0, bn.eps, True)
            if out.dtype != x.dtype:
                out = out.to(x.dtype)
        else:
            out = torch.empty_like(x)
        if bn.running_mean is not None and total > 1:  # PyTorch's update, global count
            buffers = [bn.running_mean, bn.running_var]
            torch._foreach_mul_(buffers, 1 - factor)
            torch._foreach_add_(buffers, [mean.to(buffers[0].dtype),
                                          var.to(buffers[1].dtype) * (total / (total - 1))],
                                alpha=factor)
        ctx.save_for_backward(x, weight, glob)
        ctx.bn, ctx.step, ctx.total = bn, step, total
        ctx.grad_dtype = bn.grad_dtype or (torch.float64 if xc.dtype == torch.float64
                                          else torch.float32)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, glob = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        bn = ctx.bn
        xc = x.float() if x.dtype in _HALF else x
        dy = grad_output if grad_output.dtype == xc.dtype else grad_output.to(xc.dtype)
        mean, var = glob[0], glob[1]
        channels = x.shape[1]
        wc = (torch.ones(channels, dtype=xc.dtype, device=x.device) if weight is None
              else weight if weight.dtype == xc.dtype else weight.to(xc.dtype))
        if x.numel() > 0:
            dy = dy.contiguous(memory_format=_memory_format(xc))
            # eval-mode backward with the global statistics: its weight and
            # bias gradients are sum(dy * (x - mean)) * invstd and sum(dy)
            _, wdot, sum_dy = torch.ops.aten.native_batch_norm_backward(
                dy, xc, wc, mean, var, None, None, False, bn.eps, [False, True, True])
        else:
            wdot = sum_dy = torch.zeros(channels, dtype=xc.dtype, device=x.device)
        invstd = torch.rsqrt(var + bn.eps)
        grad_x = grad_w = grad_b = None
        if need_w:
            grad_w = wdot.to(weight.dtype)
        if need_b:
            grad_b = sum_dy.to(weight.dtype)
        if need_x:  # every rank runs the same model, so all of them get here or none
            step = max(ctx.step, bn._last_grad_step + 1)
            bn._last_grad_step = step
            g = bn._link.grad(bn.layer, step, sum_dy, wdot / invstd, ctx.grad_dtype, x.device,
                              xc.dtype)
            scale = invstd * wc
            # -(k1, k2): k1 = mean_dy * invstd * w, k2 = mean_dy_xmu * invstd^3 * w
            k = g * (scale / -ctx.total)
            k[1].mul_(invstd.square())
            if x.numel() > 0:
                ones = torch.ones_like(var)
                grad_x = torch.batch_norm(xc, k[1], k[0], mean, ones, False, 0.0, 0.0, True)
                grad_x.addcmul_(dy, scale.view([1, channels] + [1] * (x.dim() - 2)))
                if grad_x.dtype != x.dtype:
                    grad_x = grad_x.to(x.dtype)
            else:
                grad_x = torch.zeros_like(x)
        return grad_x, grad_w, grad_b, None, None, None


def _memory_format(x):
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) \
            and not x.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


class SyncBatchNorm(_BatchNorm):
    """torch.nn.SyncBatchNorm whose synchronization goes through normstat.

        bn = SyncBatchNorm(64, link=Link(client, "r1", rank, world_size), layer="bn1")

    Most users call convert_sync_batchnorm(model, ...) instead, which builds
    one Link per model and names each layer by its module path.

    Arguments as torch.nn.SyncBatchNorm (num_features, eps, momentum,
    affine, track_running_stats, device, dtype) without process_group, plus
    link (a Link: daemon, run, rank, world_size), layer (its name in the
    run), step_base (int, or "next": see the module's doc) and grad_dtype
    (torch.float32 or torch.float64: how the gradient sums travel; default:
    float64 for a float64 input, else float32 - the sums are computed in
    the input's precision, and the daemon adds them in double, so the wire
    never loses what the model computed).

    Input (N, C, *) on any device; a worker may have N = 0 (its count 0
    keeps the others from waiting) and workers may have different N. A
    worker that does not arrive makes the others raise SyncBatchNormTimeout
    (naming the layer and the missing workers) after the run's
    sync_timeout_ms."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, link=None, layer=None, step_base="next",
                 grad_dtype=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        if layer is not None and not _NAME_RE.match(layer):
            raise ValueError(f"layer: {layer!r} does not match [A-Za-z0-9_.:-]{{1,128}}")
        if not (step_base == "next" or (isinstance(step_base, int) and step_base >= 0)):
            raise ValueError(f"step_base: expected a non-negative int or 'next', got {step_base!r}")
        if grad_dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"grad_dtype: expected None, torch.float32 or torch.float64, "
                             f"got {grad_dtype!r}")
        self._link = link
        self.layer = layer
        self.step_base = self._step_base_arg = step_base
        self.grad_dtype = grad_dtype
        self._forwards = 0  # the step counter of layers without running statistics
        self._last_grad_step = -1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a loaded num_batches_tracked moves the steps: settle "next" again
        self.step_base = self._step_base_arg
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def extra_repr(self):
        return super().extra_repr() + f", layer={self.layer!r}"

    @property
    def next_step(self):
        """The daemon step the next training forward will use (None while
        step_base "next" is not settled yet)."""
        if self.step_base == "next":
            return None
        return self.step_base + self._counter()

    def _counter(self):
        if self.num_batches_tracked is not None:
            return int(self.num_batches_tracked)
        return self._forwards

    def close(self):
        """Close the connection of this layer's Link (reopened when needed)."""
        if self._link is not None:
            self._link.close()

    def forward(self, x):
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.running_mean is None, 0.0, self.eps)
        if self._link is None or self.layer is None:
            raise RuntimeError("SyncBatchNorm needs a link and a layer name to train "
                               "(use convert_sync_batchnorm, or pass link= and layer=)")
        if x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm layer {self.layer!r}: expected {self.num_features} "
                             f"channels, got input of shape {tuple(x.shape)}")
        if self.step_base == "next":
            self.step_base = max(0, self._link.next_step(self.layer) - self._counter())
        step = self.step_base + self._counter()
        factor = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        else:
            self._forwards += 1
        return _SyncBatchNormFunction.apply(x, self.weight, self.bias, self, step, factor)


def convert_sync_batchnorm(module, client, run, rank, world_size, *, domain=None,
                           update=("ema", "precise"), step_base="next", grad_dtype=None,
                           configure_run=True, timeout=None):
    """Replace every BatchNorm layer of 'module' (torch.nn.modules.batchnorm.
    _BatchNorm: BatchNorm1d/2d/3d, torch.nn.SyncBatchNorm, initialized lazy
    ones) by a normstat SyncBatchNorm that synchronizes through 'run' as
    worker 'rank' of 'world_size'; returns the converted module (a new one
    when 'module' itself is a BatchNorm layer), as
    torch.nn.SyncBatchNorm.convert_sync_batchnorm does. Parameters and
    buffers are the original ones (same Parameter objects), so an optimizer
    built before the conversion still works.

    client: a normstat.Client (or the daemon's URL). Layers are named by
    their module path without DDP's "module." (a bare BatchNorm: "bn").
    configure_run: create or update the run with world_size and, when all
    layers agree, their momentum (so the run's EMA equals the layers'
    running statistics). domain, update, step_base, grad_dtype: as for
    SyncBatchNorm and Link. The layers share one Link (one connection)."""
    link = Link(client, run, rank, world_size, domain=domain, update=update, timeout=timeout)
    found = []

    def convert(m, path):
        if isinstance(m, _BatchNorm) and not isinstance(m, SyncBatchNorm):
            if isinstance(m, LazyModuleMixin) and m.has_uninitialized_params():
                raise ValueError(f"BatchNorm module at {path!r} is lazy and not initialized yet: "
                                 "run one forward before converting")
            name = layer_name(path) or "bn"
            out = SyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine,
                                m.track_running_stats, link=link, layer=name,
                                step_base=step_base, grad_dtype=grad_dtype)
            if m.affine:
                with torch.no_grad():
                    out.weight = m.weight
                    out.bias = m.bias
            out.running_mean = m.running_mean
            out.running_var = m.running_var
            out.num_batches_tracked = m.num_batches_tracked
            out.training = m.training
            if hasattr(m, "qconfig"):
                out.qconfig = m.qconfig
            found.append((name, out))
            return out
        for child_name, child in m.named_children():
            m.add_module(child_name, convert(child, f"{path}.{child_name}" if path else child_name))
        return m

    out = convert(module, "")
    names = [n for n, _ in found]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"BatchNorm layers map to the same name(s) {sorted(dup)}")
    if configure_run:
        c = client if isinstance(client, Client) else Client(client, token=link.token or "",
                                                             cafile=link.cafile)
        momenta = {m.momentum for _, m in found}
        kw = {"momentum": momenta.pop()} if len(momenta) == 1 else {}
        try:
            c.put_run(run, world_size=world_size, **kw)
        finally:
            if c is not client:
                c.close()
    return out
