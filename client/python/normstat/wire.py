"""wire: the trainer's fast path to normstatd for fixed-shape requests.

A SyncBatchNorm layer sends the same request at every step (one layer, the
same channel count, worker and run) with only the step, the count and the
array values changing. Here each such request is built once, as its final
bytes (request line, headers, safetensors header and data area), and patched
in place per call; it travels on one persistent HTTP/1.1 keep-alive socket,
and the answer is read with as little parsing as HTTP allows (status line,
Content-Length, then the safetensors header). Standard library only: the
array regions of a frame and of an answer are memoryviews, which
torch.frombuffer (or numpy.frombuffer) wraps without a copy.

    conn = wire.Connection("http://127.0.0.1:8750")
    frame = wire.SyncFrame(conn, "r1", "layer1.0.bn1", worker=0, channels=256)
    frame.mean[:] = ...; frame.var[:] = ...          # float32 bytes, or via torch.frombuffer
    ans = conn.exchange(frame.request(step=12, count=200704), frame.path)
    ans.array("layer1.0.bn1.mean")                    # a memoryview of float32

A Connection serves one caller at a time (callers that share it between
threads serialise their calls). An answer's memoryviews are valid until the
next exchange.
"""

import json
import os
import socket
import ssl
import struct
import urllib.parse

from .errors import ConnectionFailed, Timeout, TransportError, error_for

__all__ = ["Connection", "Answer", "SyncFrame", "GradFrame"]

SAFETENSORS = b"application/safetensors"
STEP_DIGITS = 19  # room for any non-negative int64 step
_ITEM = {"F32": 4, "F64": 8, "I64": 8}
_RECV_CHUNK = 65536


class Answer:
    """One HTTP answer: status (int), content_type (bytes, lower case,
    without parameters), body (memoryview into the connection's buffer,
    valid until its next exchange)."""

    __slots__ = ("status", "content_type", "body", "_tensors", "_meta")

    def __init__(self, status, content_type, body):
        self.status = status
        self.content_type = content_type
        self.body = body
        self._tensors = None
        self._meta = None

    def _header(self):
        if self._tensors is None:
            body = self.body
            if self.content_type != SAFETENSORS or len(body) < 8:
                raise TransportError("bad_response", "expected a safetensors answer, got "
                                     f"{bytes(self.content_type)!r} ({len(body)} bytes)")
            (hlen,) = struct.unpack_from("<Q", body, 0)
            if hlen > len(body) - 8:
                raise TransportError("bad_response", "safetensors header runs past the body")
            self._meta, tensors = _parse_header(bytes(body[8:8 + hlen]))
            self._tensors = (tensors, 8 + hlen)
        return self._tensors

    @property
    def metadata(self):
        """The safetensors answer's __metadata__ (dict of strings)."""
        self._header()
        return self._meta

    def array(self, name):
        """(dtype, memoryview) of one tensor of a safetensors answer; raises
        TransportError when it is absent or its offsets are out of range."""
        header, base = self._header()
        t = header.get(name)
        if t is None:
            raise TransportError("bad_response", f"the answer has no tensor {name!r}")
        begin, end = t["data_offsets"]
        if not 0 <= begin <= end <= len(self.body) - base:
            raise TransportError("bad_response",
                                 f"{name}: data_offsets {begin}, {end} out of range")
        return t["dtype"], self.body[base + begin:base + end]

    def arrays(self, *names):
        """(dtype, memoryview) of several tensors of one dtype that lie next
        to each other in this order (the daemon writes a layer's tensors so),
        as one region; None when they do not."""
        header, base = self._header()
        dtype, end, begin = None, None, None
        for name in names:
            t = header.get(name)
            if t is None or (dtype is not None and t["dtype"] != dtype):
                return None
            b, e = t["data_offsets"]
            if end is not None and b != end:
                return None
            dtype, end = t["dtype"], e
            begin = b if begin is None else begin
        if not 0 <= begin <= end <= len(self.body) - base:
            raise TransportError("bad_response", f"{names[0]}: data_offsets out of range")
        return dtype, self.body[base + begin:base + end]

    def json(self):
        return json.loads(bytes(self.body)) if len(self.body) else None


_layouts = {}  # header text without its metadata -> tensor entries
_LAYOUTS_MAX = 4096


def _parse_header(text):
    """(metadata, tensor entries) of a safetensors header. The daemon writes
    the metadata object first; the rest of the header repeats from step to
    step, so its parse is kept and only the short metadata is decoded."""
    end = text.find(b"}", 17) + 1  # normstat's metadata values hold no braces
    if text.startswith(b'{"__metadata__":{') and end > 0:
        rest = text[end:]
        try:
            meta = json.loads(text[16:end])
            tensors = _layouts.get(rest)
            if tensors is None:
                tensors = json.loads(b"{" + rest[1:]) if rest.startswith(b",") else {}
                if len(_layouts) >= _LAYOUTS_MAX:
                    _layouts.clear()
                _layouts[rest] = tensors
            return meta, tensors
        except ValueError:
            pass  # not split where expected: parse the whole header
    try:
        header = json.loads(text)
    except ValueError as e:
        raise TransportError("bad_response", f"safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise TransportError("bad_response", "safetensors header is not an object")
    meta = header.pop("__metadata__", None) or {}
    return meta, header


class Connection:
    """One persistent HTTP/1.1 keep-alive connection to a normstatd.

    url: "http://host:port[/prefix]" or "https://..."; timeout: seconds for
    connecting and for each answer (None: no limit); token: a bearer token
    (None: none); cafile: for https, a PEM file of the CAs to trust (None:
    $NORMSTAT_CACERT, else Python's default, which honours $SSL_CERT_FILE).
    exchange() sends prepared request bytes and returns the Answer; errors
    (status >= 400) raise the normstat.Error subclass of the status, with
    the server's code and message. A request is sent again once, on a fresh
    connection, only when a reused connection turned out closed before any
    byte of the answer arrived."""

    def __init__(self, url, timeout=120.0, token=None, cafile=None):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"url must be http://host[:port][/prefix], got {url!r}")
        self.url = url
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self._ssl_context = None
        if u.scheme == "https":
            cafile = cafile or os.environ.get("NORMSTAT_CACERT") or None
            self._ssl_context = ssl.create_default_context(cafile=cafile)
        self.prefix = u.path.rstrip("/")
        self.timeout = timeout
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        # the headers every request carries after its request line
        self.common_headers = f"Host: {self.host}:{self.port}\r\n{auth}".encode("ascii")
        self.reconnects = 0
        self._sock = None
        self._buf = bytearray(_RECV_CHUNK)
        self._view = memoryview(self._buf)

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _connect(self):
        try:
            s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except socket.timeout:
            raise Timeout("timeout", f"{self.host}:{self.port}: no connection within "
                                     f"{self.timeout} s") from None
        except OSError as e:
            raise ConnectionFailed("connection_failed",
                                   f"{self.host}:{self.port}: {type(e).__name__}: {e}") from None
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl_context is not None:
            try:
                s = self._ssl_context.wrap_socket(s, server_hostname=self.host)
            except OSError as e:  # ssl.SSLError (a certificate not trusted) included
                s.close()
                raise ConnectionFailed("connection_failed",
                                       f"{self.host}:{self.port}: TLS: {e}") from None
        self._sock = s

    def exchange(self, request, what=""):
        """Send 'request' (bytes-like, a whole HTTP request) and return its
        Answer (status < 400). 'what' names the request in errors (a frame's
        .path, say)."""
        for attempt in (0, 1):
            reused = self._sock is not None
            if not reused:
                self._connect()
            try:
                self._sock.sendall(request)
                return self._receive(what)
            except _Closed:
                self.close()
                if reused and attempt == 0:
                    self.reconnects += 1
                    continue
                raise ConnectionFailed("connection_dropped",
                                       f"{self.host}:{self.port} closed the connection", None,
                                       what) from None
            except socket.timeout:
                self.close()
                raise Timeout("timeout", f"no answer within {self.timeout} s", None, what) from None
            except OSError as e:
                self.close()
                if reused and attempt == 0 and isinstance(e, _RESET):
                    self.reconnects += 1
                    continue
                raise ConnectionFailed("connection_failed", f"{type(e).__name__}: {e}", None,
                                       what) from None
        raise AssertionError("unreachable")

    def _receive(self, what):
        sock, buf, view = self._sock, self._buf, self._view
        have = 0
        while True:
            n = sock.recv_into(view[have:])
            if n == 0:
                if have == 0:
                    raise _Closed()
                raise ConnectionFailed("connection_dropped", "the answer was cut short", None, what)
            have += n
            end = buf.find(b"\r\n\r\n", 0, have)
            if end >= 0:
                break
            if have == len(buf):
                raise TransportError("bad_response", "answer headers too long", None, what)
        head = bytes(buf[:end]).lower()
        try:
            status = int(head[9:12])
        except ValueError:
            raise TransportError("bad_response", f"bad status line {head[:40]!r}", None,
                                 what) from None
        length = _field(head, b"content-length")
        try:
            length = int(length)
        except (TypeError, ValueError):
            raise TransportError("bad_response", "answer without a Content-Length", None,
                                 what) from None
        ctype = (_field(head, b"content-type") or b"").split(b";")[0].strip()
        start = end + 4
        total = start + length
        if total > len(buf):  # grow once; later answers of this size fit
            grown = bytearray(total)
            grown[:have] = buf[:have]
            self._buf = buf = grown
            self._view = view = memoryview(buf)
        while have < total:
            n = sock.recv_into(view[have:total])
            if n == 0:
                raise ConnectionFailed("connection_dropped", "the answer was cut short", None, what)
            have += n
        if b"\r\nconnection: close" in head:
            self.close()
        body = view[start:total]
        if status >= 400:
            code, message = f"http_{status}", bytes(body[:200]).decode("utf-8", "replace")
            try:
                err = json.loads(bytes(body))["error"]
                code, message = err["code"], err["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise error_for(status, code, message, bytes(body), "POST", what)
        return Answer(status, ctype, body)


def _field(head, name):
    """The value of header 'name' (lower case) in a lower-cased header
    block, or None."""
    i = head.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    i += len(name) + 3
    j = head.find(b"\r\n", i)
    return head[i:j if j >= 0 else len(head)].strip()


# a reused socket the peer had closed (over TLS, without a close_notify)
_RESET = (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError)


class _Closed(Exception):
    """The peer closed a connection before answering (it may be retried)."""


class _Frame:
    """A request built once: request line and headers, then a safetensors
    body whose header ends with the step (patched per call, padded with
    spaces to a fixed length) and whose data area holds the arrays."""

    def __init__(self, conn, path, tensors, metadata):
        # tensors: [(name, dtype, nbytes)], laid out in this order
        self.conn = conn
        header = {}
        offset = 0
        self.offsets = {}
        for name, dtype, nbytes in tensors:
            header[name] = {"dtype": dtype, "shape": [nbytes // _ITEM[dtype]] if dtype != "I64"
                            else [], "data_offsets": [offset, offset + nbytes]}
            self.offsets[name] = (offset, nbytes)
            offset += nbytes
        # the metadata object comes last and the step last in it, so that
        # patching the step rewrites only the header's tail
        meta_text = json.dumps(dict(metadata), separators=(",", ":"))[:-1]
        prefix = (json.dumps(header, separators=(",", ":"))[:-1] + ',"__metadata__":' + meta_text
                  + (',' if metadata else '') + '"step":"')
        self._step_at = 8 + len(prefix.encode("utf-8"))
        hlen = len(prefix.encode("utf-8")) + STEP_DIGITS + 3
        hlen += (-(8 + hlen)) % 8  # data area 8-byte aligned
        self._hend = 8 + hlen
        body_len = self._hend + offset
        head = (f"POST {conn.prefix}{path} HTTP/1.1\r\n").encode("ascii") + conn.common_headers + (
            b"Content-Type: application/safetensors\r\nAccept: application/safetensors\r\n"
            b"Content-Length: " + str(body_len).encode() + b"\r\n\r\n")
        self._body_at = len(head)
        self.buf = bytearray(head) + bytearray(body_len)
        struct.pack_into("<Q", self.buf, self._body_at, hlen)
        b = self._body_at
        self.buf[b + 8:b + self._step_at] = prefix.encode("utf-8")
        self.view = memoryview(self.buf)
        self.data_at = b + self._hend
        self.path = path

    def region(self, name):
        """The memoryview (bytes) of tensor 'name' in the data area."""
        off, n = self.offsets[name]
        return self.view[self.data_at + off:self.data_at + off + n]

    def _set_step(self, step):
        digits = str(int(step)).encode("ascii")
        if step < 0 or len(digits) > STEP_DIGITS:
            raise ValueError(f"step: expected a non-negative int64, got {step!r}")
        a = self._body_at + self._step_at
        tail = digits + b'"}}'
        self.buf[a:a + len(tail)] = tail
        pad = self._body_at + self._hend
        self.buf[a + len(tail):pad] = b" " * (pad - a - len(tail))


def _run_path(run, suffix):
    return "/v1/runs/" + urllib.parse.quote(run, safe="") + suffix


class SyncFrame(_Frame):
    """POST /sync of one layer: '<layer>.mean', '<layer>.var' (F32 [C]) and
    '<layer>.count' (I64 []). mean and var are writable memoryviews of the
    frame's float32 bytes; request(step, count) patches and returns the
    bytes to send. A count of 0 sends the arrays anyway (ignored by the
    daemon, which only checks their length)."""

    def __init__(self, conn, run, layer, worker, channels, world_size=None, domain=None,
                 update=("ema", "precise"), scope=None):
        meta = {"worker": str(int(worker))}
        if world_size is not None:
            meta["world_size"] = str(int(world_size))
        if domain is not None:
            meta["domain"] = str(domain)
        if update is not None:
            meta["update"] = ",".join([update] if isinstance(update, str) else update)
        if scope is not None:
            meta["scope"] = scope
        self.layer = layer
        self.channels = channels
        super().__init__(conn, _run_path(run, "/sync"),
                         [(layer + ".mean", "F32", 4 * channels),
                          (layer + ".var", "F32", 4 * channels),
                          (layer + ".count", "I64", 8)], meta)
        self.mean = self.region(layer + ".mean")
        self.var = self.region(layer + ".var")
        self.stats = self.view[self.data_at:self.data_at + 8 * channels]  # mean then var
        self._count_at = self.data_at + self.offsets[layer + ".count"][0]

    def request(self, step, count):
        self._set_step(step)
        struct.pack_into("<q", self.buf, self._count_at, int(count))
        return self.view


class GradFrame(_Frame):
    """POST /grad of one layer: '<layer>.sum_dy' and '<layer>.sum_dy_xmu',
    F32 or F64 [C], both in 'sums' (sum_dy then sum_dy_xmu)."""

    def __init__(self, conn, run, layer, worker, channels, dtype="F32"):
        if dtype not in ("F32", "F64"):
            raise ValueError(f"dtype: expected 'F32' or 'F64', got {dtype!r}")
        self.layer = layer
        self.channels = channels
        self.dtype = dtype
        size = _ITEM[dtype] * channels
        super().__init__(conn, _run_path(run, "/grad"),
                         [(layer + ".sum_dy", dtype, size), (layer + ".sum_dy_xmu", dtype, size)],
                         {"worker": str(int(worker))})
        self.sums = self.view[self.data_at:self.data_at + 2 * size]

    def request(self, step):
        self._set_step(step)
        return self.view
