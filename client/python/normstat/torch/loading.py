"""load_stats: population statistics from normstatd into a model's BN buffers."""

import collections

import torch

from .. import safetensors as st
from .layers import bn_layers
from .tensors import from_safetensors

__all__ = ["load_stats", "LoadResult"]


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
        rm, rv = from_safetensors(s["running_mean"]), from_safetensors(s["running_var"])
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
