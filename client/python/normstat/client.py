"""normstat.Client: the HTTP API of normstatd, standard library only.

One Client holds one persistent HTTP/1.1 keep-alive connection and
serialises calls on it with a lock, so a Client may be shared between
threads (calls then wait for each other); give each thread its own Client
for parallel calls.

Retries. A request is sent again, once, on a fresh connection only when the
reused keep-alive connection turned out to be closed and the request is
safe to repeat: GET, PUT and DELETE, and reports. A report is idempotent per
(worker, step): when the repeated report is answered 409 duplicate_report
(the first copy did arrive), or 409 stale_step while the run says this worker's
last reported step is exactly this step, the report counts as delivered. A
/sync is repeated only if no part of it was answered; a repeated /sync that
finds its first copy arrived raises Conflict (its result went to the lost
connection). precise_reset is never repeated (each one starts a generation).
"""

import http.client
import json
import os
import select
import socket
import ssl
import threading
import urllib.parse

from . import safetensors as st
from .errors import ConnectionFailed, Error, Timeout, TransportError, error_for

__all__ = ["Client", "DEFAULT_URL", "mixture_query"]

DEFAULT_URL = "http://127.0.0.1:8750"
SAFETENSORS = "application/safetensors"
JSON = "application/json"

_UNSET = object()

# Failures on a reused connection that mean "the server had closed it".
_DROPPED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
            ConnectionAbortedError, http.client.BadStatusLine)


def mixture_query(mixture):
    """'a:0.7,b:0.3' from a dict {"a": 0.7, "b": 0.3} or a list of pairs; a
    string is passed through."""
    if mixture is None or isinstance(mixture, str):
        return mixture
    items = mixture.items() if hasattr(mixture, "items") else mixture
    return ",".join(f"{d}:{float(w)!r}" for d, w in items)


def _floats(values, what):
    """A flat list of Python floats from a sequence, bytes (little-endian
    float32) or an array-like with tolist()."""
    if isinstance(values, (bytes, bytearray, memoryview)):
        b = bytes(values)
        if len(b) % 4:
            raise ValueError(f"{what}: {len(b)} bytes is not a whole number of float32 values")
        return st.Tensor("F32", [len(b) // 4], b).values()
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [float(v) for v in values]


def _norm_layers(layers):
    """{name: (count, mean|None, var|None)} from the accepted layer forms:
    {"count", "mean", "var"} dicts or (count, mean, var) tuples."""
    out = {}
    for name, v in layers.items():
        if isinstance(v, dict):
            count, mean, var = v.get("count"), v.get("mean"), v.get("var")
        else:
            count, mean, var = v
        if hasattr(count, "item"):
            count = count.item()
        if count is None or int(count) != count or count < 0:
            raise ValueError(f"layers.{name}.count: expected a non-negative integer, got {count!r}")
        if (mean is None) != (var is None):
            raise ValueError(f"layers.{name}: mean and var come together")
        out[name] = (int(count), mean, var)
    return out


_F32_DTYPES = ("float32", "torch.float32")


def _f32_json(values):
    """The JSON array text of float32 values, 9 significant digits each (any
    float32 reads back exactly from 9, and the daemon rounds every JSON number
    to the nearest float32), or None when the values are not known to be
    float32 (Python floats are doubles: they go through repr, so the daemon
    rounds the exact double once) or not all finite (the generic path sends
    them, and the daemon answers 400 as it should). About 3x faster than
    json.dumps of the floats' repr, and 40 % less text for the daemon."""
    if isinstance(values, (bytes, bytearray, memoryview)):
        b = bytes(values)
        if len(b) % 4:
            return None
        vals = st.Tensor("F32", [len(b) // 4], b).values()
    elif str(getattr(values, "dtype", "")) in _F32_DTYPES and hasattr(values, "tolist"):
        if hasattr(values, "detach"):
            values = values.detach()
        vals = values.tolist()
        if vals and isinstance(vals[0], list):
            return None  # not flat: the generic path names the problem
    else:
        return None
    text = "," + ",".join(map("%.9g".__mod__, vals)) + ","
    if "n" in text:  # inf, nan
        return None
    if ",-0," in text:  # "-0" would read back as the integer 0: keep the sign
        text = text.replace(",-0,", ",-0.0,").replace(",-0,", ",-0.0,")
    return "[" + text[1:-1] + "]"


def _report_json(step, worker, layers, meta):
    body = {"step": int(step), "worker": int(worker)}
    body.update(meta)
    jl, fast = {}, {}
    for name, (count, mean, var) in layers.items():
        entry = {"count": count}
        if mean is not None:
            m, v = _f32_json(mean), _f32_json(var)
            if m is not None and v is not None:
                fast[name] = (count, m, v)
                continue
            entry["mean"] = _floats(mean, f"layers.{name}.mean")
            entry["var"] = _floats(var, f"layers.{name}.var")
        jl[name] = entry
    body["layers"] = jl
    text = json.dumps(body, separators=(",", ":"))
    if fast:
        # The float32 layers spliced in as text; names are JSON-safe by the
        # name grammar, and json.dumps quotes them all the same.
        parts = ['%s:{"count":%d,"mean":%s,"var":%s}' % (json.dumps(n), c, m, v)
                 for n, (c, m, v) in fast.items()]
        head = text[:-2]  # up to the layers object's closing brace
        text = head + ("," if jl else "") + ",".join(parts) + "}}"
    return text.encode("utf-8")


def _f32(values, what):
    if isinstance(values, (bytes, bytearray, memoryview)):
        b = bytes(values)
        if len(b) % 4:
            raise ValueError(f"{what}: {len(b)} bytes is not a whole number of float32 values")
        return b, len(b) // 4
    vals = _floats(values, what)
    return st.f32_bytes(vals), len(vals)


def _report_safetensors(step, worker, layers, meta):
    tensors = {}
    for name, (count, mean, var) in layers.items():
        tensors[f"{name}.count"] = ("I64", [], [count])
        if mean is not None:
            mb, c = _f32(mean, f"layers.{name}.mean")
            vb, cv = _f32(var, f"layers.{name}.var")
            tensors[f"{name}.mean"] = ("F32", [c], mb)
            tensors[f"{name}.var"] = ("F32", [cv], vb)
    md = {"step": str(int(step)), "worker": str(int(worker))}
    for k, v in meta.items():
        if k == "update":
            md[k] = ",".join(v)
        elif isinstance(v, bool):
            md[k] = "true" if v else "false"
        else:
            md[k] = str(v)
    return st.encode(tensors, md)


def _grad_floats(values, code, what):
    """Gradient sums as a flat list of Python floats (bytes: little-endian
    values of 'code', "F32" or "F64")."""
    if isinstance(values, (bytes, bytearray, memoryview)):
        b = bytes(values)
        size = 4 if code == "F32" else 8
        if len(b) % size:
            raise ValueError(f"{what}: {len(b)} bytes is not a whole number of {code} values")
        return st.Tensor(code, [len(b) // size], b).values()
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [float(v) for v in values]


def sync_answer_fields(meta, layers):
    """A /sync answer's safetensors metadata (every value a string) and its
    layers as the JSON form's dict: step and workers ints, complete a bool,
    missing a list of worker ranks."""
    out = {"layers": layers}
    for k, v in meta.items():
        if k in ("step", "workers"):
            out[k] = int(v)
        elif k == "complete":
            out[k] = v == "true"
        elif k == "missing":
            out[k] = [int(w) for w in v.split(",") if w.strip()]
        else:
            out[k] = v
    return out


def _sync_from_safetensors(data):
    """A /sync answer in safetensors form as the JSON form's dict."""
    tensors, meta = st.decode(data)
    layers = {}
    for name, t in tensors.items():
        layer, _, part = name.rpartition(".")
        entry = layers.setdefault(layer, {})
        entry[part] = t.item() if part == "count" else t.values()
    return sync_answer_fields(meta, layers)


class Client:
    """A client of one normstatd.

    url: "http://host:port" (a path prefix is kept; https works too); None
    takes $NORMSTAT_URL, else the default.
    timeout: seconds for connecting and for each answer (None: no limit).
    sync_timeout: seconds a /sync may wait for its step (default: the larger
    of 'timeout' and 120 s, above the server's default sync_timeout_ms).
    fmt: "safetensors" (default) or "json": how reports are encoded.
    headers: extra headers sent with every request.
    token: bearer token sent as "Authorization: Bearer <token>", for a server
    started with --auth-token-file or --auth-tokens-file; None takes
    $NORMSTAT_TOKEN, "" sends none. A refusal raises AuthError (code
    "unauthorized" or "forbidden").
    cafile: for https, a PEM file of the CAs to trust (a self-signed server
    certificate works) instead of the system's; None takes $NORMSTAT_CACERT,
    else Python's default (which honours $SSL_CERT_FILE).
    """

    def __init__(self, url=DEFAULT_URL, timeout=30.0, sync_timeout=None, fmt="safetensors",
                 headers=None, token=None, cafile=None):
        if url is None:
            url = os.environ.get("NORMSTAT_URL") or DEFAULT_URL
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"url must be http://host[:port][/prefix], got {url!r}")
        if fmt not in ("safetensors", "json"):
            raise ValueError(f"fmt must be 'safetensors' or 'json', got {fmt!r}")
        self.url = url
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path.rstrip("/")
        self.timeout = timeout
        if sync_timeout is None:
            sync_timeout = None if timeout is None else max(timeout, 120.0)
        self.sync_timeout = sync_timeout
        self.fmt = fmt
        self.headers = dict(headers or {})
        if token is None:
            token = os.environ.get("NORMSTAT_TOKEN") or None
        if token:  # "" sends none, whatever $NORMSTAT_TOKEN holds
            if any(not 0x20 < ord(c) < 0x7f for c in token):
                raise ValueError("token must be visible ASCII characters without spaces")
            self.headers["Authorization"] = "Bearer " + token
        if cafile is None:
            cafile = os.environ.get("NORMSTAT_CACERT") or None
        self.cafile = cafile
        self._ssl_context = None
        if u.scheme == "https":
            self._ssl_context = ssl.create_default_context(cafile=cafile)
        self.reconnects = 0  # connections replaced after the server closed one
        self._conn = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------ plumbing

    def close(self):
        """Close the connection (a later call opens a new one)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"normstat.Client({self.url!r})"

    def __del__(self):
        conn = getattr(self, "_conn", None)
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _connect(self, timeout):
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self._ssl_context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        conn.connect()
        try:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return conn

    def _stale(self):
        """True when the idle connection was closed by the server (readable
        at rest means EOF or garbage: either way it cannot carry a request)."""
        sock = self._conn.sock
        if sock is None:
            return True
        try:
            r, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(r)

    def _request(self, method, path, body=None, content_type=None, accept=None, timeout=_UNSET,
                 retry=True):
        """Send one request; returns (status, headers dict (lower-case
        names), body bytes, retried). 'retry': repeat once on a fresh
        connection if a reused one turns out closed."""
        if timeout is _UNSET:
            timeout = self.timeout
        hdrs = dict(self.headers)
        if body is not None:
            hdrs["Content-Type"] = content_type or JSON
        if accept:
            hdrs["Accept"] = accept
        target = self.prefix + path
        with self._lock:
            retried = False
            for attempt in (0, 1):
                reused = self._conn is not None
                if reused and self._stale():
                    self.close()
                    self.reconnects += 1
                    reused = False
                try:
                    if self._conn is None:
                        self._conn = self._connect(timeout)
                    self._conn.timeout = timeout
                    self._conn.sock.settimeout(timeout)
                    self._conn.request(method, target, body=body, headers=hdrs)
                    resp = self._conn.getresponse()
                    data = resp.read()
                except socket.timeout:
                    self.close()
                    raise Timeout("timeout", f"no answer within {timeout} s", method, path) from None
                except _DROPPED as e:
                    self.close()
                    if reused and retry and attempt == 0:
                        self.reconnects += 1
                        retried = True
                        continue
                    raise ConnectionFailed("connection_dropped", f"{type(e).__name__}: {e}",
                                           method, path) from None
                except OSError as e:
                    self.close()
                    raise ConnectionFailed("connection_failed",
                                           f"{self.host}:{self.port}: {type(e).__name__}: {e}",
                                           method, path) from None
                except http.client.HTTPException as e:
                    self.close()
                    raise TransportError("bad_response", f"{type(e).__name__}: {e}",
                                         method, path) from None
                headers = {k.lower(): v for k, v in resp.getheaders()}
                if resp.will_close:
                    self.close()
                return resp.status, headers, data, retried
        raise AssertionError("unreachable")

    @staticmethod
    def _error(method, path, status, headers, data):
        code, message = None, None
        try:
            err = json.loads(data.decode("utf-8"))["error"]
            code, message = err.get("code"), err.get("message")
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            pass
        if not isinstance(code, str):
            code = f"http_{status}"
        if not isinstance(message, str):
            message = data[:200].decode("utf-8", "replace") or http.client.responses.get(status, "")
        return error_for(status, code, message, data, method, path)

    def _call(self, method, path, body=None, ok=(200,), **kw):
        """_request + raise on a status outside 'ok'."""
        status, headers, data, retried = self._request(method, path, body, **kw)
        if status not in ok:
            raise self._error(method, path, status, headers, data)
        return status, headers, data, retried

    @staticmethod
    def _json(data):
        if not data:
            return None
        return json.loads(data.decode("utf-8"))

    @staticmethod
    def _run_path(run, suffix=""):
        return "/v1/runs/" + urllib.parse.quote(run, safe="") + suffix

    # ------------------------------------------------------------ runs

    def put_run(self, run, world_size=None, momentum=_UNSET, sync_timeout_ms=None,
                on_timeout=None, ema_debias=None, **extra):
        """Create or update a run. Only the given fields are sent; momentum
        may be None (PyTorch's cumulative average). Returns the answer's
        JSON; .created tells whether the server answered 201."""
        body = dict(extra)
        if world_size is not None:
            body["world_size"] = int(world_size)
        if momentum is not _UNSET:
            body["momentum"] = None if momentum is None else float(momentum)
        if sync_timeout_ms is not None:
            body["sync_timeout_ms"] = int(sync_timeout_ms)
        if on_timeout is not None:
            body["on_timeout"] = on_timeout
        if ema_debias is not None:
            body["ema_debias"] = bool(ema_debias)
        status, _, data, _ = self._call("PUT", self._run_path(run), json.dumps(body).encode(),
                                        ok=(200, 201))
        out = self._json(data)
        if isinstance(out, dict):
            out = _Answer(out)
            out.created = status == 201
        return out

    def get_run(self, run):
        """Config and status of a run (dict), NotFound if there is none."""
        return self._json(self._call("GET", self._run_path(run))[2])

    def list_runs(self):
        """A summary of every run (list of dicts), following the pages."""
        runs, path = [], "/v1/runs"
        while True:
            out = self._json(self._call("GET", path)[2])
            if not (isinstance(out, dict) and isinstance(out.get("runs"), list)):
                return out
            runs += out["runs"]
            if not out.get("next"):
                return runs
            path = "/v1/runs?after=" + urllib.parse.quote(out["next"], safe="")

    def delete_run(self, run, missing_ok=False):
        """Delete a run and its stored state. NotFound if there is none,
        unless missing_ok."""
        status, headers, data, retried = self._request("DELETE", self._run_path(run))
        if status == 404 and (missing_ok or retried):
            return  # gone, possibly by the first copy of a retried request
        if status not in (200, 202, 204):
            raise self._error("DELETE", self._run_path(run), status, headers, data)

    # ------------------------------------------------------------ reports

    def _report_body(self, step, worker, layers, domain, unbiased, update, world_size, scope, fmt):
        fmt = fmt or self.fmt
        if fmt not in ("safetensors", "json"):
            raise ValueError(f"fmt must be 'safetensors' or 'json', got {fmt!r}")
        meta = {}
        if domain is not None:
            meta["domain"] = domain
        if unbiased is not None:
            meta["unbiased"] = bool(unbiased)
        if update is not None:
            update = [update] if isinstance(update, str) else list(update)
            meta["update"] = update
        if scope is not None:
            meta["scope"] = scope
        if world_size is not None:
            meta["world_size"] = int(world_size)
        norm = _norm_layers(layers)
        if fmt == "json":
            return _report_json(step, worker, norm, meta), JSON
        return _report_safetensors(step, worker, norm, meta), SAFETENSORS

    def report(self, run, step, worker, layers, domain=None, unbiased=None, update=None,
               world_size=None, fmt=None):
        """POST /batches: one worker's statistics of one step, any number of
        layers, answered at once (202).

        layers: {name: {"count": n, "mean": [C], "var": [C]}} or {name: (n,
        mean, var)}; mean/var are sequences of numbers, array-likes with
        tolist() or little-endian float32 bytes, and may be None when n == 0.
        Variances are biased unless unbiased=True. update: ("ema",
        "precise") by default, or either alone. world_size is used when the
        report creates the run. fmt: "safetensors" or "json" (default: the
        Client's). Returns the answer's JSON (or None)."""
        body, ctype = self._report_body(step, worker, layers, domain, unbiased, update,
                                        world_size, None, fmt)
        path = self._run_path(run, "/batches")
        status, headers, data, retried = self._request("POST", path, body, content_type=ctype,
                                                       accept=JSON)
        if status in (200, 201, 202):
            return self._json(data) if data else None
        err = self._error("POST", path, status, headers, data)
        if retried and self._delivered(run, worker, step, err):
            return None
        raise err

    def _delivered(self, run, worker, step, err):
        """After a retried report was refused: did the first copy arrive?"""
        if err.code == "duplicate_report":
            return True
        if err.code != "stale_step":
            return False
        try:
            workers = self.get_run(run)["status"]["workers"]
            return any(w.get("worker") == worker and w.get("step") == step for w in workers)
        except (Error, KeyError, TypeError, ValueError):
            return False

    def send_report(self, run, step, worker, body, sync=False, timeout=None,
                    content_type=SAFETENSORS):
        """POST an already encoded report (the body report() or sync() would
        send for this step and worker; safetensors unless content_type says
        JSON) to /batches, or to /sync when sync is True. Returns None for
        /batches (a retried copy refused as already delivered counts as
        delivered, as in report()); for /sync the answer as raw safetensors
        bytes. Errors raise like report()."""
        path = self._run_path(run, "/sync" if sync else "/batches")
        if sync:
            timeout = self.sync_timeout if timeout is None else timeout
        else:
            timeout = self.timeout if timeout is None else timeout
        status, headers, data, retried = self._request("POST", path, body, content_type=content_type,
                                                       accept=SAFETENSORS if sync else JSON,
                                                       timeout=timeout)
        if sync and status == 200:
            return data
        if not sync and status in (200, 201, 202):
            return None
        err = self._error("POST", path, status, headers, data)
        if not sync and retried and self._delivered(run, worker, step, err):
            return None
        raise err

    def sync(self, run, step, worker, layers, domain=None, unbiased=None, update=None,
             world_size=None, scope=None, fmt=None, timeout=None):
        """POST /sync: report like report() and wait until every worker of
        the step has reported (or the run's sync_timeout_ms passed); returns
        {"step", "complete", "workers", "layers": {name: {"count", "mean",
        "var"}}} with the global (biased) statistics. scope: "global"
        (default) or "domain". timeout: seconds to wait for the answer
        (default: the Client's sync_timeout)."""
        body, ctype = self._report_body(step, worker, layers, domain, unbiased, update,
                                        world_size, scope, fmt)
        path = self._run_path(run, "/sync")
        status, headers, data, retried = self._request(
            "POST", path, body, content_type=ctype, accept=JSON,
            timeout=self.sync_timeout if timeout is None else timeout)
        if status != 200:
            raise self._error("POST", path, status, headers, data)
        if headers.get("content-type", "").split(";")[0].strip() == SAFETENSORS:
            return _sync_from_safetensors(data)
        return self._json(data)

    # ------------------------------------------------------------ gradient sums

    def grad(self, run, step, worker, layers, fmt=None, dtype="float32", timeout=None):
        """POST /grad: one worker's per-channel gradient sums of one step
        (SyncBatchNorm's backward all-reduce), waiting until every worker of
        the run sent the same (layer, step); returns {"step", "workers",
        "layers": {name: {"sum_dy": [C], "sum_dy_xmu": [C]}}} with the sums
        over the workers, added in worker order in double.

        layers: {name: {"sum_dy": ..., "sum_dy_xmu": ...}} or {name: (sum_dy,
        sum_dy_xmu)}; values are sequences of numbers, array-likes with
        tolist(), or little-endian bytes of 'dtype'. fmt: "safetensors" or
        "json" (default: the Client's); dtype: "float32" or "float64", the
        safetensors element type both ways (JSON always carries doubles).
        timeout: seconds to wait (default: the Client's sync_timeout). When
        a worker has not sent within the run's sync_timeout_ms, the error
        raised has code "sync_timeout" and a message naming the layer, the
        step and the missing workers."""
        fmt = fmt or self.fmt
        if fmt not in ("safetensors", "json"):
            raise ValueError(f"fmt must be 'safetensors' or 'json', got {fmt!r}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        code = "F32" if dtype == "float32" else "F64"
        pairs = {}
        for name, v in layers.items():
            dy, xmu = (v["sum_dy"], v["sum_dy_xmu"]) if isinstance(v, dict) else v
            pairs[name] = (dy, xmu)
        if fmt == "json":
            jl = {name: {"sum_dy": _grad_floats(dy, code, f"layers.{name}.sum_dy"),
                         "sum_dy_xmu": _grad_floats(xmu, code, f"layers.{name}.sum_dy_xmu")}
                  for name, (dy, xmu) in pairs.items()}
            body = json.dumps({"step": int(step), "worker": int(worker), "layers": jl},
                              separators=(",", ":")).encode("utf-8")
            ctype = JSON
        else:
            tensors = {}
            for name, (dy, xmu) in pairs.items():
                for part, vals in (("sum_dy", dy), ("sum_dy_xmu", xmu)):
                    data = vals if isinstance(vals, (bytes, bytearray, memoryview)) else \
                        _grad_floats(vals, code, f"layers.{name}.{part}")
                    size = 4 if code == "F32" else 8
                    n = len(data) // size if isinstance(data, (bytes, bytearray, memoryview)) \
                        else len(data)
                    tensors[f"{name}.{part}"] = (code, [n], data)
            body = st.encode(tensors, {"step": str(int(step)), "worker": str(int(worker))})
            ctype = SAFETENSORS
        path = self._run_path(run, "/grad")
        status, headers, data, _ = self._request(
            "POST", path, body, content_type=ctype, accept=ctype,
            timeout=self.sync_timeout if timeout is None else timeout)
        if status != 200:
            raise self._error("POST", path, status, headers, data)
        if headers.get("content-type", "").split(";")[0].strip() != SAFETENSORS:
            out = self._json(data)
            for entry in out.get("layers", {}).values():  # "6" reads as int 6
                for part in entry:
                    entry[part] = [float(v) for v in entry[part]]
            return out
        tensors, meta = st.decode(data)
        out = {"step": int(meta.get("step", step)), "workers": int(meta.get("workers", 0)),
               "layers": {}}
        for name, t in tensors.items():
            layer, _, part = name.rpartition(".")
            out["layers"].setdefault(layer, {})[part] = t.values()
        return out

    # ------------------------------------------------------------ statistics

    def stats(self, run, source="ema", domain=None, mixture=None, layers=None, variance=None,
              format="json"):
        """GET /stats: population statistics.

        source: "ema", "precise" or "last"; domain: a name or "*" (pooled,
        the server's default); mixture: {"a": 0.7, "b": 0.3} or "a:0.7,b:0.3";
        layers: names to fetch (default all); variance: "biased" (precise
        only). format="json" returns the answer as a dict of plain Python
        lists; format="safetensors" returns the raw safetensors bytes."""
        if format not in ("json", "safetensors"):
            raise ValueError(f"format must be 'json' or 'safetensors', got {format!r}")
        q = [("source", source)]
        if domain is not None:
            q.append(("domain", domain))
        if mixture is not None:
            q.append(("mixture", mixture_query(mixture)))
        if layers is not None:
            q.append(("layers", layers if isinstance(layers, str) else ",".join(layers)))
        if variance is not None:
            q.append(("variance", variance))
        if format != "json":
            q.append(("format", format))
        path = self._run_path(run, "/stats?" + urllib.parse.urlencode(q, safe=":,*"))
        data = self._call("GET", path, accept=SAFETENSORS if format == "safetensors" else JSON)[2]
        return data if format == "safetensors" else self._json(data)

    def stats_tensors(self, run, **query):
        """stats(..., format="safetensors") decoded: ({name: Tensor}, metadata)."""
        return st.decode(self.stats(run, format="safetensors", **query))

    def drift(self, run, domain=None):
        """GET /drift: how far each layer's EMA is from its PreciseBN now, a
        dict with "layers" (one row per layer and domain, worst first),
        "worst" and "history_steps". domain: a name, or "*" for the pooled
        rows (default every row)."""
        q = "" if domain is None else "?" + urllib.parse.urlencode([("domain", domain)], safe="*")
        return self._json(self._call("GET", self._run_path(run, "/drift" + q))[2])

    def history(self, run, layer, domain=None, channel=None):
        """GET /history: one channel of a layer's last applied steps, oldest
        first (each step's batch mean and variance, the EMA after it and its
        drift), with PreciseBN's current value; a dict. domain: a name or "*"
        (pooled, the server's default); channel: default 0."""
        q = [("layer", layer)]
        if domain is not None:
            q.append(("domain", domain))
        if channel is not None:
            q.append(("channel", int(channel)))
        path = self._run_path(run, "/history?" + urllib.parse.urlencode(q, safe="*"))
        return self._json(self._call("GET", path)[2])

    def precise_reset(self, run, domain=None):
        """Start a new PreciseBN generation (all domains, or one); returns
        the generation number."""
        body = json.dumps({"domain": domain} if domain is not None else {}).encode()
        data = self._call("POST", self._run_path(run, "/precise/reset"), body, ok=(200, 201),
                          retry=False)[2]
        out = self._json(data)
        if isinstance(out, dict) and "generation" in out:
            return out["generation"]
        return out

    def checkpoint_get(self, run):
        """The whole state of a run (dict), to give back to checkpoint_put."""
        return self._json(self._call("GET", self._run_path(run, "/checkpoint"))[2])

    def checkpoint_put(self, run, checkpoint):
        """Restore a run from checkpoint_get()'s value (a dict, or the JSON
        text/bytes of one). Returns the answer's JSON (or None)."""
        if isinstance(checkpoint, (bytes, bytearray)):
            body = bytes(checkpoint)
        elif isinstance(checkpoint, str):
            body = checkpoint.encode("utf-8")
        else:
            body = json.dumps(checkpoint).encode("utf-8")
        data = self._call("PUT", self._run_path(run, "/checkpoint"), body, ok=(200, 201, 204))[2]
        return self._json(data)

    # ------------------------------------------------------------ service

    def livez(self):
        """True when the daemon answers /livez with 200."""
        status, headers, data, _ = self._request("GET", "/livez")
        if status == 200:
            return True
        raise self._error("GET", "/livez", status, headers, data)

    def readyz(self):
        """True when the daemon is ready (recovery finished), False on 503."""
        status, headers, data, _ = self._request("GET", "/readyz")
        if status == 200:
            return True
        if status == 503:
            return False
        raise self._error("GET", "/readyz", status, headers, data)

    def metrics(self):
        """The Prometheus text exposition of /metrics (str)."""
        return self._call("GET", "/metrics", accept="text/plain")[2].decode("utf-8")

    def version(self):
        """Version and build information (dict)."""
        return self._json(self._call("GET", "/v1/version")[2])


class _Answer(dict):
    """A JSON object answer with extra attributes (e.g. put_run's created)."""

    created = None
