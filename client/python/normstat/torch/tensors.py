"""Conversions between torch tensors and the wire's little-endian arrays."""

import struct
import sys

import torch

_LITTLE = sys.byteorder == "little"


def f32_bytes(t):
    """Little-endian float32 bytes of a CPU tensor."""
    t = t.detach().to(torch.float32).contiguous().reshape(-1)
    if _LITTLE:
        try:
            return t.numpy().tobytes()
        except (RuntimeError, ImportError, TypeError):
            pass
    return struct.pack(f"<{t.numel()}f", *t.tolist())


def from_safetensors(t):
    """A torch tensor (CPU) of a decoded safetensors Tensor."""
    dt = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}[t.dtype]
    if _LITTLE and t.data:
        out = torch.frombuffer(bytearray(t.data), dtype=dt)
    else:
        out = torch.tensor(t.values(), dtype=dt)
    return out.reshape(t.shape)
