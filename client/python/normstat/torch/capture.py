"""StatsCapture: the batch statistics normalization layers compute anyway.

DESIGN
* In training mode a forward pre-hook swaps the layer's running_mean and
  running_var for zeroed views of a per-step slab and sets its momentum to 1,
  so PyTorch's own kernel (native, cuDNN, ...) writes exactly the batch mean
  and the unbiased batch variance into them: O(C) extra work, no second pass
  over the activations, and the forward's output is untouched. The forward
  hook puts the real buffers and the momentum back.
* The real running buffers then receive PyTorch's update
  running = momentum * batch + (1 - momentum) * running, with momentum and
  1 - momentum rounded to float32 as the kernel does (momentum=None: 1 /
  num_batches_tracked, PyTorch's cumulative average), batched over all
  layers with three torch._foreach_* calls (list by list, with cached
  factor tensors for a fixed momentum: the fast kernels, on CPU too). The
  buffers are brought up to date before anything reads them: at the end
  of the model's forward (as PyTorch's own update, so a wrapper such as
  DistributedDataParallel, which broadcasts the buffers before the next
  forward of the model inside it, or code that reads them after the
  forward, finds them current), at the start of its next forward (after a
  forward that raised), at an eval-mode forward of a tracked layer, at
  state_dict(), and at take().
  On CPU float32 this gives running_mean bit for bit and running_var within
  1 ulp (the kernel keeps the unbiased variance in double before its
  update; here it passed through float32 once), both bit for bit for
  bfloat16 inputs; InstanceNorm within a few ulp of the buffers' scale
  (PyTorch averages the per-instance updated values, the update here is
  applied to their average).
* Autograd saves the buffers the op ran with: those are the slab views,
  never written again (each step gets a new slab). The real buffers it
  never saw, so updating them in place is safe.
* A layer whose statistics the trick cannot give falls back to one
  torch.var_mean over its input: BatchNorm without running statistics, a
  torch.nn.SyncBatchNorm synchronizing over several processes (its kernel
  writes the global statistics), and any layer while torch.compile traces
  (a traced graph cannot swap module state; the layer then updates its own
  buffers, and the fallback is what compiled models pay).

Threads: everything here runs on the training thread.
"""

import struct

import torch

__all__ = ["StatsCapture", "Capture"]

_MIN_SLAB = 1024


def _never():
    return False


# True while torch.compile traces (torch >= 2); torch 1.x has no compiler
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or getattr(
    getattr(torch, "_dynamo", None), "is_compiling", None) or _never


def _f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


_FACTORS = {}


def _factors(f):
    """(momentum, 1 - momentum) as the kernel rounds them: both float32."""
    out = _FACTORS.get(f)
    if out is None:
        mf = _f32(f)
        out = (mf, _f32(1.0 - mf))  # 1 - mf is exact in double: one float32 rounding
        if len(_FACTORS) < 4096:
            _FACTORS[f] = out
    return out


class Capture:
    """One training-mode forward of one layer: its index in the layer list,
    count (values per channel), mean and unbiased var (device tensors; None
    when count is 0), and where they lie in the step's slab (offset in
    elements, mean then var) or None when they are separate tensors."""

    __slots__ = ("layer", "count", "mean", "var", "slab", "offset")

    def __init__(self, layer, count, mean, var, slab=None, offset=None):
        self.layer, self.count, self.mean, self.var = layer, count, mean, var
        self.slab, self.offset = slab, offset


def _is_instance_norm(m):
    return isinstance(m, torch.nn.modules.instancenorm._InstanceNorm)


def _needs_var_mean(m):
    """True when the momentum trick cannot give this layer's own batch."""
    if m.__dict__.get("track_running_stats") is False:
        return True
    if isinstance(m, torch.nn.SyncBatchNorm):
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(m.process_group or dist.group.WORLD) > 1
    return False


def _var_mean(module, x, c):
    """(count, mean, unbiased var) of a layer's input, computed directly:
    per channel (BatchNorm), or the average over instances of each
    instance's mean and unbiased variance (InstanceNorm, as its running
    statistics average them)."""
    x = x.detach()
    n = x.numel() // c if c else 0
    if n == 0:
        return 0, None, None
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if _is_instance_norm(module):
        if x.dim() == module._get_no_batch_dim():
            x = x.unsqueeze(0)
        flat = x.reshape(x.shape[0], c, -1)
        if flat.shape[2] < 2:
            return n, flat.mean((0, 2)), torch.zeros(c, dtype=x.dtype, device=x.device)
        var, mean = torch.var_mean(flat, dim=2, unbiased=True)
        return n, mean.mean(0), var.mean(0)
    dims = [0] + list(range(2, x.dim())) if x.dim() > 1 else [0]
    if n < 2:
        return n, torch.mean(x, dims), torch.zeros(c, dtype=x.dtype, device=x.device)
    var, mean = torch.var_mean(x, dim=dims, unbiased=True)
    return n, mean, var


class StatsCapture:
    """Hooks on 'layers' ([(name, module)]) of 'model' that record every
    training-mode forward as a Capture (see the DESIGN block above).
    enabled=False leaves the layers to PyTorch alone. take() returns the
    step's captures and starts the next step; remove() removes the hooks."""

    def __init__(self, model, layers, forwards_hint=1):
        self.layers = list(layers)
        self.enabled = True
        self.captures = []
        self._pending = []  # (real mean, real var, batch mean, batch var, factor, fixed momentum)
        self._factor_cache = {}
        # id(module) -> (real mean, real var, momentum, batch mean, batch var, slab, offset)
        self._open = {}
        self._nbt = {}  # id(module) -> (num_batches_tracked, its tensor version)
        self._slabs = {}  # (device, dtype) -> [tensor, used]
        known = sum(int(getattr(m, "num_features", 0) or 0) for _, m in self.layers)
        self._slab_elems = max(_MIN_SLAB, 2 * known * max(1, int(forwards_hint)))
        self._hooks = [model.register_forward_pre_hook(self._model_pre),
                       model.register_forward_hook(self._model_post)]
        for i, (_, m) in enumerate(self.layers):
            self._hooks.append(m.register_forward_pre_hook(self._pre_hook(i)))
            self._hooks.append(m.register_forward_hook(self._post_hook(i)))
            if hasattr(m, "_register_state_dict_hook"):
                self._hooks.append(m._register_state_dict_hook(self._state_dict_hook))

    # ------------------------------------------------------------ hooks

    def _model_pre(self, module, inputs):
        if self._pending:
            self.apply_pending()

    def _model_post(self, module, inputs, output):
        if self._pending:
            self.apply_pending()

    def _state_dict_hook(self, module, state_dict, prefix, local_metadata):
        if id(module) in self._open:  # its last forward raised: save the real buffers
            self._restore(module)
            for key in ("running_mean", "running_var"):
                if prefix + key in state_dict:
                    state_dict[prefix + key] = module._buffers[key].detach()
        # the saved tensors share the buffers' storage: updated in place
        if self._pending:
            self.apply_pending()

    def _pre_hook(self, idx):
        def hook(module, inputs):
            if id(module) in self._open:  # the previous forward raised (caught by the caller)
                self._restore(module)
            if not (self.enabled and module.training):
                if self._pending:
                    self.apply_pending()  # an eval forward reads the buffers
                return
            if _compiling() or _needs_var_mean(module):
                return
            bufs = module._buffers
            rm, rv = bufs.get("running_mean"), bufs.get("running_var")
            if rm is None or rv is None or not inputs or not inputs[0].numel():
                return
            fm, fv, slab, off = self._fresh(rm)
            bufs["running_mean"], bufs["running_var"] = fm, fv
            d = module.__dict__
            self._open[id(module)] = (rm, rv, d["momentum"], fm, fv, slab, off)
            d["momentum"] = 1.0
        return hook

    def _post_hook(self, idx):
        def hook(module, inputs, output):
            rec = self._open.pop(id(module), None)
            if rec is not None:
                rm, rv, momentum, fm, fv, slab, off = rec
                bufs = module._buffers
                bufs["running_mean"], bufs["running_var"] = rm, rv
                module.__dict__["momentum"] = momentum
                c = rm.numel()
                n = inputs[0].numel() // c
                self.captures.append(Capture(idx, n, fm, fv, slab, off))
                self._pending.append((rm, rv, fm, fv, self._factor(module, momentum),
                                      momentum is not None))
                return
            if not (self.enabled and module.training) or not inputs:
                return
            with torch.no_grad():
                x = inputs[0]
                no_batch = _is_instance_norm(module) and x.dim() == module._get_no_batch_dim()
                c = x.shape[1] if x.dim() > 1 and not no_batch else x.shape[0]
                n, mean, var = _var_mean(module, x, c)
            # a plain tuple: a side effect torch.compile replays without a graph break
            self.captures.append((idx, n, mean, var))
        return hook

    def _restore(self, module):
        rm, rv, momentum, *_ = self._open.pop(id(module))
        module._buffers["running_mean"], module._buffers["running_var"] = rm, rv
        module.__dict__["momentum"] = momentum

    def _fresh(self, like):
        """Zeroed views (mean, var) of C elements each in the step's slab of
        like's device and dtype, a new slab when it is full."""
        c = like.numel()
        key = (like.device, like.dtype)
        ent = self._slabs.get(key)
        if ent is None or ent[1] + 2 * c > ent[0].numel():
            size = max(self._slab_elems, 2 * c)
            ent = [torch.zeros(size, dtype=like.dtype, device=like.device), 0]
            self._slabs[key] = ent
        slab, off = ent[0], ent[1]
        ent[1] = off + 2 * c
        return slab[off:off + c], slab[off + c:off + 2 * c], slab, off

    def _factor(self, module, momentum):
        """PyTorch's exponential_average_factor of the forward that just ran:
        momentum, or 1 / num_batches_tracked when momentum is None (read
        from the tensor only when something other than the forward's
        add_(1) changed it, so no device synchronization per step)."""
        if momentum is not None:
            return momentum
        nbt = module._buffers.get("num_batches_tracked")
        if nbt is None:
            return 0.0
        key = id(module)
        prev = self._nbt.get(key)
        ver = nbt._version
        if prev is not None and prev[1] + 1 == ver:
            count = prev[0] + 1
        else:
            count = int(nbt.item())
        self._nbt[key] = (count, ver)
        return 1.0 / count

    # ------------------------------------------------------------ step end

    def apply_pending(self):
        """Apply the EMA updates of the forwards captured so far to the real
        running buffers, in forward order per layer."""
        pend, self._pending = self._pending, []
        with torch.no_grad():
            while pend:
                wave, rest, seen = [], [], set()
                for p in pend:  # one update per buffer per wave keeps each layer's order
                    if id(p[0]) in seen:
                        rest.append(p)
                    else:
                        seen.add(id(p[0]))
                        wave.append(p)
                reals, batch, ms, oms = [], [], [], []
                fixed = all(p[5] for p in wave)
                for rm, rv, fm, fv, f, _ in wave:
                    mf, omf = _factors(f)
                    reals += (rm, rv)
                    batch += (fm, fv)
                    if fixed:  # tensor factors: the fast list-by-list kernels (CPU too)
                        mt, omt = self._factor_tensors(rm, mf, omf)
                        ms += (mt, mt)
                        oms += (omt, omt)
                    else:
                        ms += (mf, mf)
                        oms += (omf, omf)
                scaled = torch._foreach_mul(batch, ms)
                torch._foreach_mul_(reals, oms)
                torch._foreach_add_(reals, scaled)
                pend = rest

    def _factor_tensors(self, like, mf, omf):
        """Tensors filled with momentum and 1 - momentum, like 'like', made
        once per (shape, dtype, device, momentum): a fixed momentum only."""
        key = (like.numel(), like.dtype, like.device, mf)
        got = self._factor_cache.get(key)
        if got is None:
            got = (torch.full_like(like, mf), torch.full_like(like, omf))
            if len(self._factor_cache) < 1024:
                self._factor_cache[key] = got
        return got

    def take(self):
        """This step's captures (in forward order), after bringing the
        running buffers up to date; the next step starts empty."""
        for key in list(self._open):
            for _, m in self.layers:
                if id(m) == key:
                    self._restore(m)
                    break
        if self._pending:
            self.apply_pending()
        caps = [c if isinstance(c, Capture) else Capture(*c) for c in self.captures]
        self.captures = []
        used = sum(ent[1] for ent in self._slabs.values())
        if used:  # next step's slab fits this step's forwards
            self._slab_elems = max(_MIN_SLAB, used)
        self._slabs = {}
        return caps

    def discard(self):
        """Forget this step's captures (their EMA updates are applied)."""
        self.take()

    def remove(self):
        self.take()
        for h in self._hooks:
            h.remove()
        self._hooks = []
