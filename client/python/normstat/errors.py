"""Exceptions of the normstat client.

Every failure of a call raises normstat.Error. An error answered by the
server carries its HTTP status and the body's {"error": {"code", "message"}}
unchanged: .status (int), .code (the wire string, e.g. "duplicate_report")
and .message. Failures before an answer (refused connection, timeout, a
connection that dropped) are TransportError, with .status None.
"""

__all__ = [
    "Error", "TransportError", "ConnectionFailed", "Timeout", "BadRequest", "AuthError",
    "NotFound", "MethodNotAllowed", "Conflict", "PayloadTooLarge", "UnsupportedMediaType",
    "InvalidValue", "TooManyRequests", "ServerError", "Unavailable", "SyncTimeout",
    "ReporterError", "error_for",
]


class Error(Exception):
    """A failed normstat call. status: HTTP status (None when no answer
    arrived); code: the server's error code (wire string); message: the
    server's message; body: the raw response body (bytes) if any."""

    def __init__(self, status, code, message, body=None, method=None, path=None):
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        self.method = method
        self.path = path
        super().__init__(str(self))

    def __str__(self):
        where = f"{self.method} {self.path}: " if self.method else ""
        status = f"{self.status} " if self.status is not None else ""
        return f"{where}{status}{self.code}: {self.message}"


class TransportError(Error):
    """No (complete) answer: the connection failed, dropped or timed out."""

    def __init__(self, code, message, method=None, path=None):
        super().__init__(None, code, message, None, method, path)


class ConnectionFailed(TransportError):
    """The server could not be reached (refused, unresolvable, reset)."""


class Timeout(TransportError):
    """No answer within the call's timeout."""


class BadRequest(Error):
    """400: the request is malformed; the message names the field."""


class AuthError(Error):
    """401 or 403."""


class NotFound(Error):
    """404: no such run (or route)."""


class MethodNotAllowed(Error):
    """405."""


class Conflict(Error):
    """409: channel_mismatch, stale_step, duplicate_report,
    worker_out_of_range or conflict (e.g. a step's update sets disagree)."""


class PayloadTooLarge(Error):
    """413: the body exceeds the server's --max-body."""


class UnsupportedMediaType(Error):
    """415."""


class InvalidValue(Error):
    """422: non-finite or negative statistics."""


class TooManyRequests(Error):
    """429: too many pending steps, or the memory budget is exhausted."""


class ServerError(Error):
    """5xx not covered by a more specific class."""


class Unavailable(ServerError):
    """503: shutting down, not ready, out of memory or storage trouble."""


class SyncTimeout(ServerError):
    """504: a /sync step timed out and the run drops partial steps."""


class ReporterError(Error):
    """A background report of a StatsReporter failed; .step is the step and
    __cause__ the original error."""

    def __init__(self, step, cause):
        self.step = step
        status = getattr(cause, "status", None)
        code = getattr(cause, "code", None) or type(cause).__name__
        message = getattr(cause, "message", None) or str(cause)
        super().__init__(status, code, f"report of step {step} failed: {message}")


_BY_STATUS = {400: BadRequest, 401: AuthError, 403: AuthError, 404: NotFound,
              405: MethodNotAllowed, 409: Conflict, 413: PayloadTooLarge,
              415: UnsupportedMediaType, 422: InvalidValue, 429: TooManyRequests,
              503: Unavailable, 504: SyncTimeout}


def error_for(status, code, message, body=None, method=None, path=None):
    """The Error subclass instance for an HTTP error answer."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else Error
    return cls(status, code, message, body, method, path)
