"""safetensors encoding and decoding in pure Python (struct + json).

The format: an 8-byte little-endian header length, a JSON header mapping each
tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets into
the data area that follows) plus an optional "__metadata__" object of
strings, then the data area. Only the dtypes normstat uses are supported:
F32, F64 and I64, always little-endian.
"""

import json
import struct
import sys

__all__ = ["Tensor", "SafetensorsError", "encode", "decode", "DTYPES"]

# dtype -> (struct code, item size)
DTYPES = {"F32": ("f", 4), "F64": ("d", 8), "I64": ("q", 8)}

_LITTLE = sys.byteorder == "little"


class SafetensorsError(ValueError):
    """A buffer that is not a well-formed safetensors file, or a tensor that
    cannot be encoded."""


class Tensor:
    """One decoded tensor: dtype ("F32", "F64", "I64"), shape (list of ints)
    and data (the raw little-endian bytes). values() returns the elements as
    a flat list of Python numbers; item() the single element of a scalar."""

    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype, shape, data):
        self.dtype = dtype
        self.shape = list(shape)
        self.data = bytes(data)

    @property
    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    def values(self):
        code, _ = DTYPES[self.dtype]
        return list(struct.unpack(f"<{self.numel}{code}", self.data))

    def item(self):
        if self.numel != 1:
            raise SafetensorsError(f"item() of a tensor with {self.numel} elements")
        return self.values()[0]

    def __repr__(self):
        return f"Tensor({self.dtype}, shape={self.shape})"


def _numel(shape):
    n = 1
    for s in shape:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise SafetensorsError(f"bad shape {shape!r}")
        n *= s
    return n


def _pack(name, dtype, shape, values):
    """Raw little-endian bytes of one tensor. 'values' is a flat sequence of
    numbers, or bytes-like data already in the target dtype's layout."""
    if dtype not in DTYPES:
        raise SafetensorsError(f"{name}: dtype {dtype!r} not supported (F32, F64, I64)")
    code, size = DTYPES[dtype]
    n = _numel(shape)
    if isinstance(values, (bytes, bytearray, memoryview)):
        data = bytes(values)
        if len(data) != n * size:
            raise SafetensorsError(f"{name}: {len(data)} bytes for shape {shape} {dtype}")
        return data
    if hasattr(values, "tolist"):  # array-likes (numpy arrays, torch tensors)
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        if hasattr(values, "__iter__"):
            values = list(values)
        else:
            values = [values]
    if n == 1 and len(values) == 1 and isinstance(values[0], (list, tuple)):
        values = list(values[0])
    if len(values) != n:
        raise SafetensorsError(f"{name}: {len(values)} values for shape {shape}")
    try:
        if code == "q":
            return struct.pack(f"<{n}q", *[int(v) for v in values])
        return struct.pack(f"<{n}{code}", *[float(v) for v in values])
    except (struct.error, TypeError, ValueError, OverflowError) as e:
        raise SafetensorsError(f"{name}: cannot encode as {dtype}: {e}") from None


def encode(tensors, metadata=None):
    """Encode a safetensors buffer.

    'tensors' maps name -> (dtype, shape, values) (or a Tensor); tensors are
    laid out in name order. 'metadata' maps str -> str (other values are
    converted with str(), booleans to "true"/"false"). Returns bytes. The
    header is padded with spaces so the data area starts 8-byte aligned, as
    the reference implementation does."""
    header = {}
    if metadata:
        meta = {}
        for k, v in metadata.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            meta[str(k)] = str(v)
        header["__metadata__"] = meta
    chunks = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise SafetensorsError("a tensor may not be named __metadata__")
        t = tensors[name]
        if isinstance(t, Tensor):
            dtype, shape, values = t.dtype, t.shape, t.data
        else:
            dtype, shape, values = t
        shape = list(shape)
        data = _pack(name, dtype, shape, values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    head += b" " * ((-(8 + len(head))) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def decode(buf):
    """Decode and check a safetensors buffer.

    Returns (tensors, metadata): tensors maps name -> Tensor, metadata is a
    dict of strings ({} when absent). Raises SafetensorsError on anything
    inconsistent: lengths, offsets (gaps, overlaps, out of range), dtypes
    other than F32/F64/I64, shapes, non-string metadata."""
    buf = memoryview(buf).cast("B") if not isinstance(buf, bytes) else buf
    if len(buf) < 8:
        raise SafetensorsError(f"safetensors: {len(buf)} bytes, shorter than the 8-byte header length")
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    if hlen > len(buf) - 8:
        raise SafetensorsError(f"safetensors: header length {hlen} exceeds the {len(buf) - 8} bytes that follow")
    try:
        header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SafetensorsError(f"safetensors: header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("safetensors: header is not a JSON object")
    data = buf[8 + hlen:]
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SafetensorsError("safetensors: __metadata__ must map strings to strings")
    tensors = {}
    spans = []
    for name, t in header.items():
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"safetensors: {name}: bad tensor entry")
        dtype, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
        if dtype not in DTYPES:
            raise SafetensorsError(f"safetensors: {name}: dtype {dtype!r} not supported")
        if not isinstance(shape, list):
            raise SafetensorsError(f"safetensors: {name}: bad shape {shape!r}")
        n = _numel(shape)
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
                or not 0 <= offs[0] <= offs[1] <= len(data)):
            raise SafetensorsError(f"safetensors: {name}: data_offsets {offs!r} outside the "
                                   f"{len(data)}-byte data area")
        if offs[1] - offs[0] != n * DTYPES[dtype][1]:
            raise SafetensorsError(f"safetensors: {name}: {offs[1] - offs[0]} bytes for shape "
                                   f"{shape} {dtype}")
        tensors[name] = Tensor(dtype, shape, data[offs[0]:offs[1]])
        spans.append((offs[0], offs[1], name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise SafetensorsError(f"safetensors: {name}: tensors overlap or leave a gap at byte {pos}")
        pos = end
    if pos != len(data):
        raise SafetensorsError(f"safetensors: {len(data) - pos} unused bytes after the last tensor")
    return tensors, meta


def f32_bytes(values):
    """Little-endian float32 bytes of a flat sequence of numbers."""
    return _pack("values", "F32", [len(values)], values)


def is_little_endian():
    return _LITTLE
