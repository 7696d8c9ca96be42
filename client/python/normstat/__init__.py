"""normstat: the Python client of normstatd, the BatchNorm-statistics service.

    import normstat
    c = normstat.Client("http://127.0.0.1:8750")
    c.put_run("r1", world_size=4, momentum=0.1)
    stats = c.stats("r1", source="ema")

normstat.Client and the exceptions need only the standard library; the
PyTorch helpers (StatsReporter, load_stats, precise_bn) live in
normstat.torch, which imports torch when it is imported itself.
"""

from . import safetensors
from .client import DEFAULT_URL, Client, mixture_query
from .errors import (AuthError, BadRequest, Conflict, ConnectionFailed, Error, InvalidValue,
                     MethodNotAllowed, NotFound, PayloadTooLarge, ReporterError, ServerError,
                     SyncTimeout, Timeout, TooManyRequests, TransportError, Unavailable,
                     UnsupportedMediaType)

__version__ = "0.1.0"

__all__ = [
    "Client", "DEFAULT_URL", "mixture_query", "safetensors", "Error", "TransportError",
    "ConnectionFailed", "Timeout", "BadRequest", "AuthError", "NotFound", "MethodNotAllowed",
    "Conflict", "PayloadTooLarge", "UnsupportedMediaType", "InvalidValue", "TooManyRequests",
    "ServerError", "Unavailable", "SyncTimeout", "ReporterError", "__version__",
]
