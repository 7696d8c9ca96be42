"""Which modules of a model normstat tracks, and the layer name of each.

Tracked: every BatchNorm (torch.nn.modules.batchnorm._BatchNorm: BatchNorm1d/
2d/3d, SyncBatchNorm, the lazy variants) and every InstanceNorm1d/2d/3d built
with track_running_stats=True (the only InstanceNorms with running
statistics to serve).

Layer names are module paths with the wrapper prefixes "module."
(DistributedDataParallel, DataParallel) and "_orig_mod." (torch.compile)
removed, so a trainer's wrapped model and an evaluator's plain model agree.
A tracked module given as the whole model (empty path) is layer "bn".
"""

import re

import torch

__all__ = ["layer_name", "bn_layers", "is_tracked", "ROOT_LAYER"]

_WRAPPERS = ("module", "_orig_mod")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

# the layer name of a normalization module that is the whole model
ROOT_LAYER = "bn"


def layer_name(path):
    """The normstat layer name of a module path: leading "module." and
    "_orig_mod." segments are dropped, and "_orig_mod" segments anywhere
    (a compiled submodule). The empty path (the model itself) is "bn"."""
    parts = path.split(".") if path else []
    while parts and parts[0] in _WRAPPERS:
        parts.pop(0)
    return ".".join(p for p in parts if p != "_orig_mod") or ROOT_LAYER


def is_tracked(module):
    """True for the modules normstat reports and loads: BatchNorm of any
    kind, and InstanceNorm with track_running_stats=True."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return True
    return (isinstance(module, torch.nn.modules.instancenorm._InstanceNorm)
            and bool(module.track_running_stats))


def bn_layers(model):
    """[(layer name, module)] of every tracked module of model (is_tracked),
    in module order. Raises ValueError for names normstat cannot carry, or
    two modules that map to the same name."""
    out, seen = [], {}
    for path, m in model.named_modules():
        if not is_tracked(m):
            continue
        name = layer_name(path)
        if not _NAME_RE.match(name):
            raise ValueError(f"normalization module at {path!r}: layer name {name!r} does not "
                             "match [A-Za-z0-9_.:-]{1,128}")
        if name in seen:
            raise ValueError(f"normalization modules {seen[name]!r} and {path!r} both map to "
                             f"layer {name!r}")
        seen[name] = path
        out.append((name, m))
    return out
