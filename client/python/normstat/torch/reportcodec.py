"""Report bodies and /sync answers in safetensors, without per-value Python.

encode_report: the body of one report from float32 CPU tensors: a JSON
header (the per-layer part cached by layout, so a step only formats its
metadata), then every mean and var array taken as raw bytes, then the
counts; b"".join copies each array once.
decode_sync: a /sync answer into torch tensors with torch.frombuffer over
one copy of the answer's data area.
"""

import json
import struct
import sys

import torch

from ..client import sync_answer_fields
from ..safetensors import SafetensorsError
from .tensors import f32_bytes

__all__ = ["encode_report", "decode_sync"]

_LITTLE = sys.byteorder == "little"
_HEADERS = {}  # layout -> (tensor entries JSON text, data length)
_DTYPES = {"F32": (torch.float32, 4), "F64": (torch.float64, 8), "I64": (torch.int64, 8)}


def _raw(t):
    """The little-endian float32 bytes of a 1-D CPU tensor, without a copy
    where possible."""
    if _LITTLE and t.dtype == torch.float32 and t.is_contiguous():
        return memoryview(t.numpy()).cast("B")
    return f32_bytes(t)


def _entries(layout):
    """JSON text of the tensor entries of a layout ((name, C or 0) per
    layer): means and vars in layout order, then the I64 counts."""
    got = _HEADERS.get(layout)
    if got is not None:
        return got
    parts, off = [], 0
    for name, c in layout:
        if c:
            n = json.dumps(name)
            parts.append(f'"{n[1:-1]}.mean":{{"dtype":"F32","shape":[{c}],'
                         f'"data_offsets":[{off},{off + 4 * c}]}}')
            parts.append(f'"{n[1:-1]}.var":{{"dtype":"F32","shape":[{c}],'
                         f'"data_offsets":[{off + 4 * c},{off + 8 * c}]}}')
            off += 8 * c
    for name, _ in layout:
        n = json.dumps(name)
        parts.append(f'"{n[1:-1]}.count":{{"dtype":"I64","shape":[],'
                     f'"data_offsets":[{off},{off + 8}]}}')
        off += 8
    got = (",".join(parts), off)
    if len(_HEADERS) < 256:
        _HEADERS[layout] = got
    return got


def encode_report(metadata, items):
    """A safetensors report body. metadata: {str: str}; items: [(layer name,
    count, mean, var)], mean/var 1-D float32 CPU tensors of C values, or
    None when count is 0 (the layer then travels as its count alone)."""
    layout = tuple((name, 0 if mean is None else mean.numel()) for name, _, mean, _ in items)
    entries, size = _entries(layout)
    head = ('{"__metadata__":' + json.dumps(metadata, separators=(",", ":")) + ","
            + entries + "}").encode("utf-8")
    head += b" " * ((-(8 + len(head))) % 8)
    chunks = [struct.pack("<Q", len(head)), head]
    for _, _, mean, var in items:
        if mean is not None:
            chunks.append(_raw(mean))
            chunks.append(_raw(var))
    chunks.append(struct.pack(f"<{len(items)}q", *[int(n) for _, n, _, _ in items]))
    body = b"".join(chunks)
    if len(body) != 8 + len(head) + size:
        raise ValueError("report body: arrays do not match their layout")
    return body


def decode_sync(data):
    """A /sync answer in safetensors form: {"step", "complete", "workers",
    "layers": {name: {"count": int, "mean": tensor, "var": tensor}}}, the
    arrays float32 CPU tensors sharing one buffer."""
    if len(data) < 8:
        raise SafetensorsError("safetensors: answer shorter than 8 bytes")
    (hlen,) = struct.unpack_from("<Q", data, 0)
    if hlen > len(data) - 8:
        raise SafetensorsError("safetensors: header length exceeds the answer")
    header = json.loads(bytes(data[8:8 + hlen]).decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    area = bytearray(data[8 + hlen:])
    layers = {}
    for name, t in header.items():
        dt, size = _DTYPES.get(t.get("dtype"), (None, 0))
        begin, end = t["data_offsets"]
        if dt is None or not 0 <= begin <= end <= len(area) or (end - begin) % size:
            raise SafetensorsError(f"safetensors: {name}: bad tensor entry")
        layer, _, part = name.rpartition(".")
        n = (end - begin) // size
        if part == "count":
            value = struct.unpack_from("<q", area, begin)[0] if n == 1 else 0
        elif n == 0:
            value = torch.empty(0, dtype=dt)
        elif _LITTLE:
            value = torch.frombuffer(area, dtype=dt, count=n, offset=begin)
        else:
            code = "d" if size == 8 else "f"
            value = torch.tensor(struct.unpack_from(f"<{n}{code}", area, begin), dtype=dt)
        layers.setdefault(layer, {})[part] = value
    return sync_answer_fields(meta, layers)
