"""normstat.torch: PyTorch helpers for trainers and evaluators.

Only this package needs torch (it is imported here, not by `import normstat`).

* StatsReporter (reporter.py): a trainer's BN statistics, once per step.
* load_stats (loading.py): population statistics into the BN buffers.
* precise_bn (precise.py): the PreciseBN loop across all workers of a run.
* layer_name, bn_layers (layers.py): which modules are tracked, and their
  names: module paths without DDP's "module." and torch.compile's
  "_orig_mod.".
"""

from .layers import bn_layers, layer_name
from .loading import LoadResult, load_stats
from .precise import PreciseResult, next_free_step, precise_bn
from .reporter import StatsReporter

__all__ = ["StatsReporter", "load_stats", "precise_bn", "bn_layers", "layer_name",
           "LoadResult", "PreciseResult", "next_free_step"]
