"""test_client_json.py - the Python client's JSON report encoding of float32
arrays (9 significant digits, spliced as text) against a real normstatd.

  * Every float32 it may carry (random bit patterns inside the daemon's
    bounds, signed zeros, subnormals, 2^60 and the smallest normal)
    reaches the daemon bit for bit: the same values sent as safetensors and
    as JSON, from numpy arrays, torch tensors and little-endian bytes, serve
    the same bits as `source=last` (world_size 1: the step is the arrival),
    and those bits are the values sent, -0 included.
  * The body is read here as JSON with Python's parser and each number
    rounded to float32 by numpy: the values sent, an independent reading.
  * Python floats (doubles) and non-finite values keep the generic path:
    doubles are sent exactly (the daemon rounds once), NaN is refused 400.
"""

import json

import numpy as np
import torch

import harness as h
import normstat
from normstat import client as nc

MEAN_MAX = 2.0 ** 60  # the daemon's bounds on an arrival (doc/design.md, Bounds)
VAR_MAX = 2.0 ** 120


def values(rng, n):
    """n float32 values from random bit patterns within the bounds, and the
    edge cases."""
    bits = rng.integers(0, 2 ** 32, 4 * n, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) <= MEAN_MAX)][:n - 11]
    edge = np.array([-0.0, 0.0, -0.0, -0.0, 1.0, -1.0, 1.4e-45, -1.17549435e-38, 2.0 ** 60,
                     0.1, -0.0], dtype=np.float32)
    return np.concatenate([x, edge])


def served_last(c, run, layer):
    """(mean, var) of source=last as float32 bit patterns."""
    tensors, _ = c.stats_tensors(run, source="last")
    out = []
    for part in ("mean", "var"):
        t = tensors[f"{layer}.{part}"]
        out.append(np.frombuffer(bytes(t.data), dtype="<f4").view(np.uint32).tolist())
    return out


def body(checks):
    d = h.start_daemon("--no-persist")
    c = d.client()
    rng = np.random.default_rng(20261204)
    mean = values(rng, 4096)
    var = np.abs(values(rng, 4096))
    var = np.where(var <= VAR_MAX, var, np.float32(1.0)).astype(np.float32)
    want = [mean.view(np.uint32).tolist(), var.view(np.uint32).tolist()]
    served_want = want  # one arrival: its combination is its values, -0 included
    forms = {"numpy": (mean, var), "torch": (torch.from_numpy(mean.copy()), torch.from_numpy(var.copy())),
             "bytes": (mean.tobytes(), var.tobytes())}

    # The encoded body, read independently.
    for form, (m, v) in forms.items():
        raw = nc._report_json(0, 0, {"bn": (7, m, v)}, {})
        doc = json.loads(raw, parse_int=float)
        got = [np.array(doc["layers"]["bn"][k], dtype=np.float64).astype(np.float32)
               .view(np.uint32).tolist() for k in ("mean", "var")]
        checks.check(got == want, f"{form}: the JSON body's numbers round to the float32 values sent")
        checks.check(len(raw) < len(nc._report_json(0, 0, {"bn": (7, m.tolist() if hasattr(m, "tolist")
                                                                   and not isinstance(m, bytes)
                                                                   else list(mean), list(var))}, {})),
                     f"{form}: shorter than the generic encoding")

    # The daemon's reading: JSON and safetensors serve the same bits.
    for form, (m, v) in forms.items():
        for fmt in ("json", "safetensors"):
            run = f"{form}-{fmt}"
            c.report(run, 0, 0, {"bn": (7, m, v)}, world_size=1, fmt=fmt)
            checks.check(served_last(c, run, "bn") == served_want,
                         f"{form} sent as {fmt}: source=last serves the very float32 values sent")

    # Python floats: doubles, sent exactly; the daemon rounds them once.
    dbl = [0.1, 1.0 / 3.0, 2.0 ** -140, 1e17 + 3.0]
    c.report("doubles", 0, 0, {"bn": (7, dbl, [0.5] * 4)}, world_size=1, fmt="json")
    exp = np.array(dbl, dtype=np.float64).astype(np.float32).view(np.uint32).tolist()
    checks.eq(served_last(c, "doubles", "bn")[0], exp, "doubles: each rounded once to float32")

    # Non-finite float32 values take the generic path: refused 400.
    bad = np.array([1.0, np.nan], dtype=np.float32)
    try:
        c.report("nan", 0, 0, {"bn": (7, bad, np.ones(2, np.float32))}, world_size=1, fmt="json")
        checks.check(False, "NaN in a float32 array is refused")
    except normstat.Error as e:
        checks.eq(e.status, 400, "NaN in a float32 array is refused with 400")
    c.close()
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(body)
