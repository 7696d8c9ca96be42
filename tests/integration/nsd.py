"""nsd.py - harness of the integration tests: a real normstatd on loopback.

Starts build/bin/normstatd (or $NS_BUILD/bin/normstatd) on an ephemeral
127.0.0.1 port with a temporary --data-dir, waits (bounded) for /readyz,
talks HTTP/1.1 to it with keep-alive connections, validates JSON responses
against proto/openapi.yaml where a schema exists, and stops it with SIGTERM
(expecting exit status 0). Also an independent safetensors reader and writer
(struct + json) and the reference statistics the tests compare against.

Every wait is bounded: HTTP calls carry a timeout, daemon start-up and
shutdown have deadlines, and main() arms an alarm that kills the daemons and
fails the script if it ever runs longer than SCRIPT_LIMIT_S.

NS_TEST_PERSIST=1 runs the daemons with persistence (SQLite in the
temporary --data-dir) instead of --no-persist; the API must not change.

Test scripts are standalone: `/usr/bin/python3 tests/integration/test_X.py`
from the repository root; each check prints one line ("ok" or "FAIL").
"""

import atexit
import http.client
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
START_LIMIT_S = 10.0  # listening + /readyz 200
STOP_LIMIT_S = 10.0  # SIGTERM to exit
HTTP_TIMEOUT_S = 10.0  # any one HTTP exchange unless a test says otherwise
SCRIPT_LIMIT_S = 55  # the whole script

_daemons = []  # every daemon started, so the alarm and atexit can kill them


# ---------------------------------------------------------------- daemon


def binary_path():
    build = os.environ.get("NS_BUILD", "build")
    if not os.path.isabs(build):
        build = os.path.join(REPO, build)
    return os.path.join(build, "bin", "normstatd")


class Daemon:
    """One normstatd process. Start with start(); stop() sends SIGTERM and
    returns the exit status; kill() is the emergency exit."""

    def __init__(self, *args, persist=None, name="nsd", env=None, ssl_context=None):
        self.args = list(args)
        self.env = env
        self.ssl_context = ssl_context  # talk HTTPS (the daemon has --tls-cert)
        # memory only unless asked; NS_TEST_PERSIST=1 runs every test on the SQLite store
        self.persist = os.environ.get("NS_TEST_PERSIST") == "1" if persist is None else persist
        self.name = name
        self.proc = None
        self.port = None
        self.lines = []  # stderr lines (logfmt)
        self._lock = threading.Lock()
        self._reader = None
        self.data_dir = None

    def _popen(self, argv, cwd, env=None):
        """Run argv; a thread collects its stderr lines into self.lines and
        sets self.port (and self._listening) at its event=listening line, or
        self._listening alone when the process ends first."""
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, cwd=cwd, env=env)
        _daemons.append(self)
        self._listening = threading.Event()

        def read():
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._lock:
                    self.lines.append(line)
                if self.port is None and "event=listening" in line:
                    m = re.search(r"\baddr=\"?[0-9.]+:(\d+)", line)
                    if m:
                        self.port = int(m.group(1))
                        self._listening.set()
            self._listening.set()  # EOF: the process ended

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def start(self):
        exe = binary_path()
        if not os.access(exe, os.X_OK):
            raise RuntimeError(f"{exe} is not built (set NS_BUILD or run make)")
        self.data_dir = tempfile.mkdtemp(prefix="normstatd-test-")
        argv = [exe, "--listen", "127.0.0.1:0", "--data-dir", self.data_dir,
                "--log-level", "debug"]
        if not self.persist:
            argv.append("--no-persist")
        argv += self.args
        self.argv = argv
        self._popen(argv, self.data_dir, self.env)
        deadline = time.monotonic() + START_LIMIT_S
        self._listening.wait(START_LIMIT_S)
        if self.port is None:
            self.kill()
            raise RuntimeError(f"normstatd did not log event=listening within {START_LIMIT_S}s; "
                               f"stderr:\n{self.log_tail()}")
        c = self.client(timeout=2.0)
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                r = c.request("GET", "/readyz", validate=False)
                last = r.status
                if r.status == 200:
                    c.close()
                    return self
            except (OSError, http.client.HTTPException) as e:
                last = repr(e)
            time.sleep(0.05)
        c.close()
        self.kill()
        raise RuntimeError(f"normstatd not ready within {START_LIMIT_S}s (last /readyz: {last}); "
                           f"stderr:\n{self.log_tail()}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout=HTTP_TIMEOUT_S):
        return Client("127.0.0.1", self.port, timeout=timeout, ssl_context=self.ssl_context)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, limit=STOP_LIMIT_S):
        """Exit status, or None if still running after 'limit' seconds."""
        try:
            return self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, limit=STOP_LIMIT_S):
        """SIGTERM, wait (bounded); kill if it hangs. Returns the exit status
        (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait(limit)
        if rc is None:
            self.kill()
        self._cleanup()
        return rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._cleanup()

    def _cleanup(self):
        if self._reader is not None:
            self._reader.join(timeout=2)
            if not self._reader.is_alive() and self.proc.stderr and not self.proc.stderr.closed:
                self.proc.stderr.close()
        if self.data_dir and os.path.isdir(self.data_dir):
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if self in _daemons and (self.proc is None or self.proc.poll() is not None):
            _daemons.remove(self)

    def sanitizer_reports(self):
        """Lines of the daemon's stderr where a sanitizer build reported a bug."""
        marks = ("ERROR: AddressSanitizer", "WARNING: ThreadSanitizer", "runtime error:",
                 "ERROR: LeakSanitizer", "WARNING: MemorySanitizer")
        with self._lock:
            return [line for line in self.lines if any(m in line for m in marks)]

    def log_tail(self, n=40):
        with self._lock:
            return "\n".join(self.lines[-n:])

    def wait_log(self, event, after, limit=30.0):
        """The first log line with 'event' past line index 'after', or None
        once 'limit' seconds passed (the bound matters only on failure)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self._lock:
                lines = self.lines[after:]
            for line in lines:
                if f"event={event}" in line:
                    return line
            time.sleep(0.02)
        return None


def _kill_all():
    for d in list(_daemons):
        try:
            d.kill()
        except Exception:
            pass


atexit.register(_kill_all)


# ---------------------------------------------------------------- HTTP


class Response:
    def __init__(self, method, path, status, reason, headers, body):
        self.method = method
        self.path = path
        self.status = status
        self.reason = reason
        self.header_list = headers
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body
        self._json = None

    def json(self):
        if self._json is None:
            self._json = json.loads(self.body.decode("utf-8"))
        return self._json

    def is_json(self):
        try:
            self.json()
            return True
        except (ValueError, UnicodeDecodeError):
            return False

    @property
    def content_type(self):
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def error_code(self):
        try:
            return self.json()["error"]["code"]
        except Exception:
            return None

    def error_message(self):
        try:
            return self.json()["error"]["message"]
        except Exception:
            return None

    def short(self, limit=400):
        b = self.body[:limit]
        try:
            b = b.decode("utf-8")
        except UnicodeDecodeError:
            b = repr(b)
        return f"{self.status} {b}"


class Client:
    """HTTP/1.1 client on one keep-alive connection (not thread-safe: one per
    thread). Validates every JSON response against the OpenAPI schema when
    one exists; violations accumulate in schema_errors."""

    def __init__(self, host, port, timeout=HTTP_TIMEOUT_S, ssl_context=None):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.ssl_context = ssl_context  # HTTPS with this context; None: plain HTTP
        self.conn = None
        self.schema_errors = []
        self.validated = 0
        self.reconnects = 0  # reused connections found closed by the server
        self.closed_by = []  # responses that carried Connection: close

    def _connect(self, timeout):
        if self.ssl_context is not None:
            self.conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                                    context=self.ssl_context)
        else:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        self.conn.connect()

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method, path, body=None, headers=None, timeout=None, validate=True,
                content_type=None):
        """Send one request. 'body' may be bytes/str (sent as is) or any other
        value (sent as JSON). Returns a Response. Retries once on a fresh
        connection only when a reused connection turned out closed before
        anything was answered."""
        timeout = self.timeout if timeout is None else timeout
        hdrs = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, bytearray, str)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", content_type or "application/json")
        elif isinstance(body, str):
            body = body.encode()
        if content_type is not None:
            hdrs["Content-Type"] = content_type
        for attempt in (0, 1):
            reused = self.conn is not None
            if self.conn is None:
                self._connect(timeout)
            self.conn.timeout = timeout
            if self.conn.sock is not None:
                self.conn.sock.settimeout(timeout)
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                r = self.conn.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if reused and attempt == 0:
                    self.reconnects += 1
                    continue
                raise
            except Exception:
                self.close()
                raise
            resp = Response(method, path, r.status, r.reason, r.getheaders(), data)
            if r.will_close:
                self.closed_by.append(f"{method} {path.split('?')[0]} -> {r.status}")
                self.close()
            if validate:
                self._validate(resp)
            return resp
        raise AssertionError("unreachable")

    def _validate(self, resp):
        sch = schemas()
        if sch is None:
            return
        err = sch.validate(resp)
        if err is True:
            self.validated += 1
            _validated[0] += 1
        elif err:
            self.schema_errors.append(f"{resp.method} {resp.path} -> {resp.status}: {err}")

    # conveniences
    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body=body, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def stats(self, run, timeout=None, **query):
        q = urllib.parse.urlencode(query, safe=":,*")
        return self.get(f"/v1/runs/{run}/stats" + (f"?{q}" if q else ""), timeout=timeout)

    def report(self, run, rep, sync=False, **kw):
        return self.post(f"/v1/runs/{run}/{'sync' if sync else 'batches'}", rep, **kw)


# ---------------------------------------------------------------- OpenAPI schemas


class Schemas:
    """Response schemas of proto/openapi.yaml. validate() returns True when a
    schema was found and the body conforms, None when there is no schema, or
    an error text."""

    def __init__(self, doc):
        import jsonschema

        self.doc = self._fix_nullable(doc) if str(doc.get("openapi", "")).startswith("3.0") else doc
        self.jsonschema = jsonschema
        self.resolver = jsonschema.RefResolver.from_schema(self.doc)
        self.paths = []
        for tmpl, item in (self.doc.get("paths") or {}).items():
            rx = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(tmpl)) + "$"
            self.paths.append((re.compile(rx), tmpl, item))
        # literal templates first, so /v1/runs/x/stats never matches a {run} catch-all
        self.paths.sort(key=lambda p: p[1].count("{"))

    @staticmethod
    def _fix_nullable(node):
        if isinstance(node, dict):
            node = {k: Schemas._fix_nullable(v) for k, v in node.items()}
            if node.pop("nullable", False) is True and "type" in node:
                t = node["type"]
                node["type"] = (t if isinstance(t, list) else [t]) + ["null"]
            return node
        if isinstance(node, list):
            return [Schemas._fix_nullable(v) for v in node]
        return node

    def _deref(self, node):
        while isinstance(node, dict) and "$ref" in node:
            _, node = self.resolver.resolve(node["$ref"])
        return node

    def find(self, method, path, status, content_type):
        path = path.split("?")[0]
        for rx, _tmpl, item in self.paths:
            if not rx.match(path):
                continue
            op = self._deref(item).get(method.lower())
            if op is None:
                return None
            responses = self._deref(op).get("responses") or {}
            resp = None
            for key in (str(status), f"{str(status)[0]}XX", f"{str(status)[0]}xx", "default"):
                if key in responses:
                    resp = self._deref(responses[key])
                    break
            if resp is None:
                return None
            content = resp.get("content") or {}
            media = content.get(content_type) or (content.get("application/json")
                                                    if content_type.endswith("json") else None)
            if media is None:
                return None
            schema = media.get("schema")
            return schema
        return None

    def validate(self, resp):
        if resp.method == "HEAD" or resp.status == 204:
            return None
        if resp.content_type not in ("application/json", "application/problem+json") \
                and not resp.content_type.endswith("+json"):
            return None
        schema = self.find(resp.method, resp.path, resp.status, resp.content_type)
        if schema is None:
            return None
        try:
            body = resp.json()
        except ValueError as e:
            return f"body is not JSON: {e}"
        cls = self.jsonschema.validators.validator_for(schema, default=self.jsonschema.Draft202012Validator)
        v = cls(schema, resolver=self.resolver)
        errs = sorted(v.iter_errors(body), key=lambda e: list(e.path))
        if not errs:
            return True
        e = errs[0]
        return f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message[:300]}"


_schemas = None
_schemas_loaded = False


def schemas():
    global _schemas, _schemas_loaded
    if not _schemas_loaded:
        _schemas_loaded = True
        path = os.path.join(REPO, "proto", "openapi.yaml")
        if os.path.exists(path):
            try:
                import yaml

                with open(path) as f:
                    _schemas = Schemas(yaml.safe_load(f))
            except Exception as e:  # a broken contract is itself a finding
                print(f"FAIL openapi: proto/openapi.yaml does not load: {e}")
                _schemas = None
                global _schema_load_error
                _schema_load_error = str(e)
    return _schemas


_schema_load_error = None
_validated = [0]  # responses validated against a schema, all clients


# ---------------------------------------------------------------- safetensors (independent)

ST_DTYPES = {"F32": ("<f4", 4), "F64": ("<f8", 8), "I64": ("<i8", 8), "I32": ("<i4", 4),
             "F16": ("<f2", 2), "U8": ("|u1", 1), "BF16": (None, 2), "BOOL": ("|b1", 1)}


class SafetensorsError(ValueError):
    pass


def st_write(tensors, metadata=None, align=8):
    """Encode a safetensors file. 'tensors' maps name -> (dtype, shape, values)
    with dtype "F32" or "I64"; values is any sequence (flattened, row-major).
    Tensors are laid out in name order."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    chunks = []
    off = 0
    for name in sorted(tensors):
        dtype, shape, values = tensors[name]
        count = 1
        for s in shape:
            count *= s
        flat = list(np.asarray(values).reshape(-1)) if count else []
        if len(flat) != count:
            raise ValueError(f"{name}: {len(flat)} values for shape {shape}")
        if dtype == "F32":
            data = struct.pack(f"<{count}f", *[float(x) for x in flat])
        elif dtype == "I64":
            data = struct.pack(f"<{count}q", *[int(x) for x in flat])
        elif dtype == "F64":
            data = struct.pack(f"<{count}d", *[float(x) for x in flat])
        else:
            raise ValueError(f"st_write: dtype {dtype} not supported")
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        chunks.append(data)
        off += len(data)
    hb = json.dumps(header, separators=(",", ":")).encode()
    if align:
        hb += b" " * ((-(8 + len(hb))) % align)
    return struct.pack("<Q", len(hb)) + hb + b"".join(chunks)


def st_read(buf):
    """Parse and check a safetensors file. Returns (tensors, metadata) with
    tensors: name -> (dtype, shape, numpy array) and metadata a dict (or {}).
    Raises SafetensorsError on any inconsistency."""
    if len(buf) < 8:
        raise SafetensorsError("shorter than the 8-byte header length")
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    if hlen > len(buf) - 8:
        raise SafetensorsError(f"header length {hlen} beyond the {len(buf)}-byte file")
    try:
        header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SafetensorsError(f"header is not JSON: {e}")
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    data = memoryview(buf)[8 + hlen:]
    meta = header.pop("__metadata__", {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SafetensorsError("__metadata__ must map strings to strings")
    tensors = {}
    ranges = []
    for name, t in header.items():
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{name}: bad tensor entry {t!r}")
        dtype, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
        if dtype not in ST_DTYPES:
            raise SafetensorsError(f"{name}: unknown dtype {dtype}")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise SafetensorsError(f"{name}: bad shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) for o in offs) or not 0 <= offs[0] <= offs[1] <= len(data)):
            raise SafetensorsError(f"{name}: bad data_offsets {offs!r} (data area {len(data)} bytes)")
        count = 1
        for s in shape:
            count *= s
        npdt, size = ST_DTYPES[dtype]
        if count * size != offs[1] - offs[0]:
            raise SafetensorsError(f"{name}: {offs[1] - offs[0]} bytes for shape {shape} {dtype}")
        arr = None
        if npdt is not None:
            arr = np.frombuffer(bytes(data[offs[0]:offs[1]]), dtype=np.dtype(npdt)).reshape(shape)
        tensors[name] = (dtype, shape, arr)
        ranges.append((offs[0], offs[1], name))
    ranges.sort()
    pos = 0
    for b, e, name in ranges:
        if b != pos:
            raise SafetensorsError(f"{name}: offsets overlap or leave a gap at byte {pos}")
        pos = e
    if pos != len(data):
        raise SafetensorsError(f"data area has {len(data) - pos} unused trailing bytes")
    return tensors, meta


def report_to_safetensors(rep):
    """The safetensors form of a JSON report dict (proto/openapi.yaml: <layer>.mean,
    <layer>.var F32 [C], <layer>.count I64 [], scalars as metadata strings)."""
    tensors = {}
    for layer, v in rep["layers"].items():
        tensors[f"{layer}.count"] = ("I64", [], [v["count"]])
        if "mean" in v:
            tensors[f"{layer}.mean"] = ("F32", [len(v["mean"])], v["mean"])
            tensors[f"{layer}.var"] = ("F32", [len(v["var"])], v["var"])
    meta = {}
    for k, v in rep.items():
        if k == "layers":
            continue
        if isinstance(v, bool):
            meta[k] = "true" if v else "false"
        elif isinstance(v, list):
            meta[k] = ",".join(v)
        else:
            meta[k] = str(v)
    return st_write(tensors, meta)


# ---------------------------------------------------------------- reference statistics


def f32(x):
    """x rounded to float32, as a Python float (exactly representable)."""
    return float(np.float32(x))


def f32_list(a):
    return [float(v) for v in np.asarray(a, dtype=np.float32).reshape(-1)]


def moments(x):
    """Exact-as-double per-channel statistics of raw data x[n, C] (float32 or
    float64): (n, mean[C], m2[C]) with sums by math.fsum (correctly rounded),
    two-pass. Returns float64 lists."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n == 0:
        return 0, [0.0] * x.shape[1], [0.0] * x.shape[1]
    mean = [math.fsum(x[:, c]) / n for c in range(x.shape[1])]
    m2 = [math.fsum((x[:, c] - mean[c]) ** 2) for c in range(x.shape[1])]
    return n, mean, m2


def combine(arrivals):
    """SyncBN combination of (n, mean[C], var_biased[C]) arrivals, evaluated
    independently of the server with exact fractions. Returns (N, mean, var
    biased) as float lists; N = 0 gives ([], [])."""
    from fractions import Fraction as F

    live = [a for a in arrivals if a[0] > 0]
    N = sum(a[0] for a in live)
    if N == 0:
        return 0, None, None
    C = len(live[0][1])
    mean, var = [], []
    for c in range(C):
        mu = sum(F(a[0]) * F(a[1][c]) for a in live) / N
        v = sum(F(a[0]) * (F(a[2][c]) + (F(a[1][c]) - mu) ** 2) for a in live) / N
        mean.append(float(mu))
        var.append(float(v))
    return N, mean, var


class Ema:
    """PyTorch's BatchNorm running statistics, evaluated from a step's global
    (N, mean, biased var): running_var takes the unbiased var N/(N-1). Steps
    with N < 2 leave it untouched. momentum None is the cumulative average."""

    def __init__(self, channels, momentum=0.1, debias=False):
        self.momentum = momentum
        self.mean = [0.0] * channels
        self.var = [1.0] * channels
        self.nbt = 0
        self.debias = debias
        self.zmean = [0.0] * channels  # zero-start EMA for debiasing
        self.zvar = [0.0] * channels
        self.decay = 1.0  # prod (1 - f)

    def apply(self, N, mean, var):
        if N < 2:
            return False
        self.nbt += 1
        f = self.momentum if self.momentum is not None else 1.0 / self.nbt
        for c in range(len(self.mean)):
            uv = var[c] * N / (N - 1)
            self.mean[c] = (1 - f) * self.mean[c] + f * mean[c]
            self.var[c] = (1 - f) * self.var[c] + f * uv
            self.zmean[c] = (1 - f) * self.zmean[c] + f * mean[c]
            self.zvar[c] = (1 - f) * self.zvar[c] + f * uv
        self.decay *= (1 - f)
        return True

    def served(self):
        if not self.debias:
            return self.mean, self.var
        d = 1 - self.decay
        return [m / d for m in self.zmean], [v / d for v in self.zvar]


class Pool:
    """PreciseBN reference: every sample of every applied step pooled."""

    def __init__(self):
        self.parts = []
        self.batches = 0

    def add(self, x):
        self.parts.append(np.asarray(x, dtype=np.float64))
        self.batches += 1

    def values(self, biased=False):
        x = np.concatenate(self.parts, axis=0)
        n, mean, m2 = moments(x)
        d = n if biased else n - 1
        return n, mean, [v / d for v in m2]


def mixture(parts):
    """The mixture (doc/design.md) of per-domain served (mean, var) with weights w
    (normalised here): mean = sum w mu, var = sum w (var + mu^2) - mean^2."""
    from fractions import Fraction as F

    tot = sum(F(w) for w, _, _ in parts)
    C = len(parts[0][1])
    mean, var = [], []
    for c in range(C):
        m = sum(F(w) / tot * F(mu[c]) for w, mu, _ in parts)
        v = sum(F(w) / tot * (F(s[c]) + F(mu[c]) ** 2) for w, mu, s in parts) - m * m
        mean.append(float(m))
        var.append(float(v))
    return mean, var


def gen_batch(rng, n, channels, loc=None, scale=None):
    """Raw float32 activations x[n, C] with per-channel offsets in [-2, 2] and
    scales in [0.5, 3] (statistics of order 1, so absolute and relative
    float32 rounding are alike)."""
    loc = rng.uniform(-2, 2, channels) if loc is None else loc
    scale = rng.uniform(0.5, 3, channels) if scale is None else scale
    return (rng.standard_normal((n, channels)) * scale + loc).astype(np.float32)


def layer_report(x):
    """A worker's report of one layer from raw x[n, C]: count, biased mean and
    var rounded to float32 (what a trainer sends). An empty batch has count
    0 and no arrays."""
    n, mean, m2 = moments(x)
    if n == 0:
        return {"count": 0}
    return {"count": n, "mean": f32_list(mean), "var": f32_list([v / n for v in m2])}


def arrival_of(rep_layer):
    """(n, mean, var) of a layer report as the server sees it (float32 values)."""
    if rep_layer["count"] == 0:
        return (0, None, None)
    return (rep_layer["count"], rep_layer["mean"], rep_layer["var"])


# ---------------------------------------------------------------- comparisons

# Tolerance against references computed from the raw data: every worker's
# mean and var is rounded to float32 before it is sent (relative 2^-24 ~ 6e-8
# each), the server works in double and serves float32 (another 6e-8). With
# statistics of order 1 the total stays below ~3e-7; 1e-6 relative plus
# 1e-6 absolute leaves a margin without hiding a wrong formula (a wrong
# N/(N-1), momentum or weight moves values by >= 1e-3 here).
RTOL = 1e-6
ATOL = 1e-6


def max_err(got, ref, rtol=RTOL, atol=ATOL):
    """Largest |got - ref| / (atol + rtol |ref|) over the arrays (<= 1 is ok)."""
    got = list(got)
    ref = list(ref)
    if len(got) != len(ref):
        return math.inf
    worst = 0.0
    for g, r in zip(got, ref):
        if g is None or not math.isfinite(g):
            return math.inf
        worst = max(worst, abs(g - r) / (atol + rtol * abs(r)))
    return worst


def ulps32(got, ref):
    """Largest distance in float32 ulps between served values and a reference
    rounded to float32."""
    worst = 0
    for g, r in zip(got, ref):
        gi = np.array([g], dtype=np.float32).view(np.int32)[0]
        ri = np.array([r], dtype=np.float32).view(np.int32)[0]
        worst = max(worst, abs(int(gi) - int(ri)))
    return worst


# ---------------------------------------------------------------- test case base

VOLATILE_KEYS = {"uptime_s", "uptime_ms", "age_ms", "now", "time", "ts", "waited_ms",
                 "pending_ms", "oldest_ms", "updated_at", "last_report_ms", "idle_ms"}


# Counts of refused requests (GET /v1/runs/{run}'s health.rejections): a
# refusal changes nothing in the run but them.
COUNTED_KEYS = {"rejections"}


def strip_volatile(v):
    """A GET /v1/runs/{run} body without clock-dependent fields (ages) and
    the counts of refused requests."""
    if isinstance(v, dict):
        return {k: strip_volatile(x) for k, x in v.items() if k not in VOLATILE_KEYS
                and k not in COUNTED_KEYS and not k.endswith("_age_ms") and not k.startswith("age")}
    if isinstance(v, list):
        return [strip_volatile(x) for x in v]
    return v


class Case(unittest.TestCase):
    """Base of every integration test: one daemon per class (DAEMON_ARGS),
    soft checks that print one line each, and a tearDown that fails the test
    if any check failed, a response broke its schema or the daemon died."""

    DAEMON_ARGS = ()
    daemon = None

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon(*cls.DAEMON_ARGS).start()
        cls.c = cls.daemon.client()

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        rc = cls.daemon.stop()
        san = cls.daemon.sanitizer_reports()
        if san:
            print(f"FAIL {cls.__name__}: sanitizer reports in the daemon's log:\n" + "\n".join(san[:10]))
            raise AssertionError("sanitizer reports")
        if rc != 0:
            print(f"FAIL {cls.__name__}: daemon exit status after SIGTERM is {rc}, expected 0\n"
                  f"{cls.daemon.log_tail()}")
            raise AssertionError(f"normstatd exit status {rc} after SIGTERM")
        print(f"ok   {cls.__name__}: daemon stopped by SIGTERM with exit status 0")

    def setUp(self):
        self._fails = []
        self._clients = [self.c]
        self._schema_seen = len(self.c.schema_errors)

    def tearDown(self):
        errs = []
        for cl in self._clients:
            start = self._schema_seen if cl is self.c else 0
            errs += cl.schema_errors[start:]
        for e in errs:
            print(f"FAIL {self._testMethodName}: response breaks proto/openapi.yaml: {e}")
        rec = sum(cl.reconnects for cl in self._clients)
        if rec:
            self.check(False, "keep-alive: no idle connection was dropped by the daemon",
                       f"{rec} reused connections found closed")
        closes = [x for cl in self._clients for x in cl.closed_by]
        if closes:
            print(f"note {self._testMethodName}: Connection: close after {closes[:6]}")
        if not self.daemon.alive():
            self._fails.append("daemon died")
            print(f"FAIL {self._testMethodName}: daemon is no longer running\n{self.daemon.log_tail()}")
        for cl in self._clients[1:]:
            cl.close()
        if self._fails or errs:
            self.fail(f"{len(self._fails)} failed checks, {len(errs)} schema violations: "
                      + "; ".join(self._fails[:5] + errs[:3]))

    def client(self, timeout=HTTP_TIMEOUT_S):
        """A separate keep-alive client (e.g. one per worker thread)."""
        cl = self.daemon.client(timeout=timeout)
        self._clients.append(cl)
        return cl

    # ---- checks
    def check(self, cond, desc, detail=""):
        name = self._testMethodName
        if cond:
            print(f"ok   {name}: {desc}")
        else:
            print(f"FAIL {name}: {desc}" + (f" -- {detail}" if detail else ""))
            self._fails.append(desc)
        return bool(cond)

    def require(self, cond, desc, detail=""):
        """A check later steps depend on: stops the test on failure."""
        if not self.check(cond, desc, detail):
            self.fail(f"{desc}: {detail}")

    def check_eq(self, got, exp, desc):
        return self.check(got == exp, desc, f"got {got!r}, expected {exp!r}")

    def check_status(self, r, status, desc, code=None, must=False):
        ok = r.status == status
        if code is not None:
            codes = code if isinstance(code, (tuple, list, set)) else (code,)
            ok = ok and r.error_code() in codes
        exp = f"{status}" + (f" {code}" if code else "")
        f = self.require if must else self.check
        return f(ok, f"{desc} -> {exp}", f"got {r.short()}")

    def check_close(self, got, ref, desc, rtol=RTOL, atol=ATOL):
        e = max_err(got, ref, rtol, atol)
        return self.check(e <= 1.0, f"{desc} (max err {e:.3g} of tol)",
                          f"got {list(got)[:6]}, ref {list(ref)[:6]}")

    # ---- state snapshots
    def snapshot(self, run):
        """What must not change when a request is rejected: GET run (minus
        ages) and every statistics source, as (status, body)."""
        out = []
        r = self.c.get(f"/v1/runs/{run}")
        out.append(("run", r.status, strip_volatile(r.json()) if r.is_json() else r.body))
        for src in ("ema", "precise", "last"):
            r = self.c.stats(run, source=src)
            out.append((src, r.status, r.body))
        return out

    def check_unchanged(self, before, run, desc):
        after = self.snapshot(run)
        diff = [b[0] for b, a in zip(before, after) if b != a]
        return self.check(not diff, f"{desc}: state unchanged (GET run, stats ema/precise/last)",
                          f"changed: {diff}; before {str(before)[:300]} after {str(after)[:300]}")


def served(layer):
    """(mean, var) arrays of a statistics layer object, whatever the source."""
    if "running_mean" in layer:
        return layer["running_mean"], layer["running_var"]
    return layer["mean"], layer["var"]


_uniq = [0]


def run_name(prefix):
    _uniq[0] += 1
    return f"{prefix}-{os.getpid() % 10000}-{_uniq[0]}"


def main():
    """Run the TestCases of __main__ with a hard wall-clock limit."""

    def on_alarm(_sig, _frm):
        print(f"FAIL script exceeded {SCRIPT_LIMIT_S}s; killing normstatd")
        for d in list(_daemons):
            print(d.log_tail(20))
        _kill_all()
        os._exit(3)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(SCRIPT_LIMIT_S)
    os.chdir(REPO)
    prog = unittest.main(module="__main__", exit=False, verbosity=1)
    _kill_all()
    res = prog.result
    ok = res.wasSuccessful() and res.testsRun > 0
    if _schema_load_error:
        ok = False
    sch = "none yet" if schemas() is None else f"{_validated[0]} responses validated against proto/openapi.yaml"
    print(f"{'PASS' if ok else 'FAIL'} {os.path.basename(sys.argv[0])}: {res.testsRun} tests, "
          f"{len(res.failures)} failed, {len(res.errors)} errors (schemas: {sch})")
    sys.exit(0 if ok else 1)


# ---------------------------------------------------------------- concurrency and polling


def parallel(fns, limit=30.0):
    """Run the callables at once (one thread each, released together) and
    return (results, errors) in order; raises TimeoutError if any is still
    running after 'limit' seconds."""
    n = len(fns)
    results, errors = [None] * n, [None] * n
    gate = threading.Barrier(n)

    def run(i):
        try:
            gate.wait(limit)
            results[i] = fns[i]()
        except BaseException as e:  # reported to the caller
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + limit
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"parallel requests still running after {limit}s")
    return results, errors


def proc_memory(pid):
    """VmRSS and VmHWM (peak) of a process, in bytes, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak_memory(pid):
    """VmHWM := VmRSS (Linux: 5 written to clear_refs). False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def poll(fn, limit=10.0, every=0.02):
    """Call fn() until it returns a true value or 'limit' seconds pass;
    returns the last value. A bound, not a timing assertion."""
    deadline = time.monotonic() + limit
    v = fn()
    while not v and time.monotonic() < deadline:
        time.sleep(every)
        v = fn()
    return v


def torch_bn(steps, channels, momentum):
    """Real PyTorch BatchNorm1d (float64, training mode) fed the
    concatenated raw batch of each step; steps with fewer than 2 values are
    not fed (PyTorch refuses them). Returns (running_mean, running_var,
    num_batches_tracked) or None when torch is not importable."""
    try:
        import torch
    except Exception:
        return None
    bn = torch.nn.BatchNorm1d(channels, momentum=momentum).double()
    bn.train()
    with torch.no_grad():
        for x in steps:
            if x.shape[0] >= 2:
                bn(torch.from_numpy(np.asarray(x, dtype=np.float64)))
    return bn.running_mean.tolist(), bn.running_var.tolist(), int(bn.num_batches_tracked)
