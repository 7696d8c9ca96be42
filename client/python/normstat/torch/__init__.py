"""normstat.torch: PyTorch helpers for trainers and evaluators.

Only this package needs torch (it is imported here, not by `import normstat`).

* StatsReporter (reporter.py): a trainer's normalization statistics, once per
  step, taken from what each layer computes anyway (capture.py), copied to
  the host once per step (hostcopy.py), encoded (reportcodec.py) and delivered by a
  background thread that never stops training (sender.py).
* load_stats (loading.py): population statistics into the running buffers.
* precise_bn (precise.py): the PreciseBN loop across all workers of a run.
* layer_name, bn_layers (layers.py): which modules are tracked (BatchNorm,
  InstanceNorm with track_running_stats), and their names: module paths
  without DDP's "module." and torch.compile's "_orig_mod."; "bn" for a
  tracked module that is the whole model.
"""

from .layers import bn_layers, layer_name
from .loading import LoadResult, load_stats
from .precise import PreciseResult, next_free_step, precise_bn
from .reporter import StatsReporter
from .sender import ReportWarning
from .syncbn import SyncBatchNorm, SyncBatchNormTimeout, convert_sync_batchnorm

__all__ = ["StatsReporter", "ReportWarning", "load_stats", "precise_bn", "bn_layers",
           "layer_name", "LoadResult", "PreciseResult", "next_free_step"]
__all__ += ["SyncBatchNorm", "SyncBatchNormTimeout", "convert_sync_batchnorm"]
