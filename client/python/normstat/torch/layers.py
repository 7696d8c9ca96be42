"""Which modules of a model normstat tracks, and the layer name of each.

Layer names are module paths with the wrapper prefixes "module."
(DistributedDataParallel, DataParallel) and "_orig_mod." (torch.compile)
removed, so a trainer's wrapped model and an evaluator's plain model agree.
"""

import re

import torch

__all__ = ["layer_name", "bn_layers"]

_WRAPPERS = ("module", "_orig_mod")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


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
