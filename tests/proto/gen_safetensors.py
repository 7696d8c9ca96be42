#!/usr/bin/env python3
"""gen_safetensors.py - writes the request.safetensors files of the st_* cases
under tests/proto/valid and tests/proto/invalid (standard library only, so the
files are produced independently of libnsproto's own encoder).

Run from the repository root: /usr/bin/python3 tests/proto/gen_safetensors.py
The expected.json / error files next to them are written by hand."""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)))

FMT = {"F32": "<%df", "F64": "<%dd", "I64": "<%dq", "I32": "<%di", "F16": "<%de"}


def pack(dtype, values):
    return struct.pack(FMT[dtype] % len(values), *values)


def build(tensors, metadata=None, pad=True, order=None):
    """tensors: list of (name, dtype, shape, values). Data is laid out in list
    order; 'order' optionally permutes the order of header keys."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    entries = []
    for name, dtype, shape, values in tensors:
        raw = pack(dtype, values) if not isinstance(values, bytes) else values
        entries.append((name, {"dtype": dtype, "shape": shape,
                               "data_offsets": [len(data), len(data) + len(raw)]}))
        data += raw
    if order:
        entries = [entries[i] for i in order]
    for name, entry in entries:
        header[name] = entry
    return finish(header, data, pad)


def finish(header, data, pad=True):
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write(kind, name, blob):
    d = os.path.join(ROOT, kind, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "request.safetensors"), "wb") as f:
        f.write(blob)


META = {"step": "12", "worker": "3"}
L1 = [("l1.mean", "F32", [3], [0.5, -1.25, 2.0]),
      ("l1.var", "F32", [3], [0.25, 1.0, 4.5]),
      ("l1.count", "I64", [], [64])]


def main():
    # ---- valid
    write("valid", "st_minimal", build(L1, META))
    write("valid", "st_all_metadata", build(
        [("layer1.0.bn1.count", "I64", [1], [5]),
         ("layer1.0.bn1.var", "F64", [2], [2.0, 0.5]),
         ("layer1.0.bn1.mean", "F64", [2], [0.1, 1e-300]),
         ("empty.count", "I64", [], [0]),
         ("B.mean", "F32", [1], [3.0]),
         ("B.var", "F32", [1], [0.0]),
         ("B.count", "I64", [], [2])],
        {"step": "18446744073709551615"[:19], "worker": "4294967295", "domain": "photo",
         "unbiased": "true", "update": "precise,ema", "scope": "domain",
         "world_size": "4", "format": "pt"},
        order=[6, 0, 3, 1, 5, 2, 4]))
    write("valid", "st_unpadded_header", build(L1, META, pad=False))

    # ---- invalid: the container
    good = build(L1, META)
    write("invalid", "st_truncated", good[:5])
    write("invalid", "st_truncated_data", good[:-1])
    write("invalid", "st_header_too_long", struct.pack("<Q", 1 << 40) + good[8:])
    write("invalid", "st_header_not_json", struct.pack("<Q", 8) + b"{nope  }")
    write("invalid", "st_header_not_object", finish([1, 2], b""))
    write("invalid", "st_unknown_dtype", build(
        [("l1.mean", "F32", [1], [1.0]), ("l1.var", "F32", [1], [1.0]),
         ("l1.count", "Q8", [], bytes(8))], META))
    write("invalid", "st_shape_mismatch", finish(
        {"__metadata__": META,
         "l1.mean": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
         "l1.var": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
         "l1.count": {"dtype": "I64", "shape": [], "data_offsets": [16, 24]}}, bytes(24)))
    write("invalid", "st_overlap", finish(
        {"__metadata__": META,
         "l1.mean": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "l1.var": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
         "l1.count": {"dtype": "I64", "shape": [], "data_offsets": [12, 20]}}, bytes(20)))
    write("invalid", "st_hole", finish(
        {"__metadata__": META,
         "l1.mean": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "l1.var": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]},
         "l1.count": {"dtype": "I64", "shape": [], "data_offsets": [20, 28]}}, bytes(28)))
    write("invalid", "st_offsets_past_end", finish(
        {"__metadata__": META,
         "l1.mean": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "l1.var": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
         "l1.count": {"dtype": "I64", "shape": [], "data_offsets": [16, 24]}}, bytes(20)))
    write("invalid", "st_trailing_data", build(L1, META) + bytes(4))
    write("invalid", "st_offsets_reversed", finish(
        {"l1.count": {"dtype": "I64", "shape": [], "data_offsets": [8, 0]}}, bytes(8)))
    write("invalid", "st_shape_negative", finish(
        {"l1.mean": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b""))
    write("invalid", "st_shape_five_dims", finish(
        {"l1.mean": {"dtype": "F32", "shape": [1, 1, 1, 1, 1], "data_offsets": [0, 4]}}, bytes(4)))
    write("invalid", "st_shape_overflow", finish(
        {"l1.mean": {"dtype": "F64", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}}, b""))
    write("invalid", "st_tensor_extra_field", finish(
        {"l1.count": {"dtype": "I64", "shape": [], "data_offsets": [0, 8], "stride": [1]}}, bytes(8)))
    dup = b'{"a.count":{"dtype":"I64","shape":[],"data_offsets":[0,8]},' \
          b'"a.count":{"dtype":"I64","shape":[],"data_offsets":[0,8]}}'
    write("invalid", "st_duplicate_tensor", struct.pack("<Q", len(dup)) + dup + bytes(8))
    # ---- invalid: metadata
    write("invalid", "st_metadata_not_string", build(L1, {"step": 12, "worker": "3"}))
    write("invalid", "st_metadata_not_object", build(L1, ["step", "12"]))
    write("invalid", "st_metadata_missing", build(L1, None))
    write("invalid", "st_metadata_unknown", build(L1, dict(META, stpe="1")))
    write("invalid", "st_step_not_integer", build(L1, dict(META, step="1.5")))
    write("invalid", "st_worker_too_big", build(L1, dict(META, worker="4294967296")))
    write("invalid", "st_update_repeated", build(L1, dict(META, update="ema,ema")))
    write("invalid", "st_unbiased_bad", build(L1, dict(META, unbiased="yes")))
    write("invalid", "st_scope_bad", build(L1, dict(META, scope="all")))
    write("invalid", "st_world_size_zero", build(L1, dict(META, world_size="0")))
    write("invalid", "st_domain_bad", build(L1, dict(META, domain="a/b")))
    # ---- invalid: the report's tensors
    write("invalid", "st_missing_count", build(L1[:2], META))
    write("invalid", "st_missing_var", build([L1[0], L1[2]], META))
    write("invalid", "st_bad_tensor_name", build(L1 + [("l1.weight", "F32", [3], [1, 2, 3])], META))
    write("invalid", "st_no_dot", build(L1 + [("bias", "F32", [1], [1])], META))
    write("invalid", "st_bad_layer_name", build([("l 1.count", "I64", [], [0])], META))
    write("invalid", "st_no_tensors", build([], META))
    write("invalid", "st_count_negative", build([L1[0], L1[1], ("l1.count", "I64", [], [-7])], META))
    write("invalid", "st_count_f32", build([L1[0], L1[1], ("l1.count", "F32", [], [64.0])], META))
    write("invalid", "st_count_vector", build([L1[0], L1[1], ("l1.count", "I64", [2], [64, 64])], META))
    write("invalid", "st_mean_f16", build([("l1.mean", "F16", [3], [0.5, 1, 2]), L1[1], L1[2]], META))
    write("invalid", "st_mean_2d", build([("l1.mean", "F32", [1, 3], [0.5, 1, 2]), L1[1], L1[2]], META))
    write("invalid", "st_mean_empty", build([("l1.mean", "F32", [0], []), ("l1.var", "F32", [0], []), L1[2]], META))
    write("invalid", "st_length_mismatch", build([L1[0], ("l1.var", "F32", [2], [1, 1]), L1[2]], META))
    write("invalid", "st_nan_mean", build([("l1.mean", "F32", [3], [0.5, float("nan"), 1]), L1[1], L1[2]], META))
    write("invalid", "st_inf_var", build([L1[0], ("l1.var", "F32", [3], [0.5, 1, float("inf")]), L1[2]], META))
    write("invalid", "st_negative_var", build([L1[0], ("l1.var", "F32", [3], [0.5, -0.25, 1]), L1[2]], META))
    write("invalid", "st_f64_overflow", build([("l1.mean", "F64", [3], [0.5, 1, -1e39]), ("l1.var", "F64", [3], [1, 1, 1]), L1[2]], META))


if __name__ == "__main__":
    main()
