"""The one device-to-host copy of a step's statistics.

A step's captures usually lie in one slab (capture.py), in forward order:
that slab's used part is the flat array. Otherwise (several slabs, fallback
tensors, another dtype) they are concatenated on their device first, one
kernel. A CUDA flat array is copied into a reused pinned host buffer with
non_blocking=True and a CUDA event recorded after the copy: the training
thread never waits for the GPU; the sender thread waits on the event
(HostStats.wait) before it reads the buffer, then gives it back (release).
On CPU the flat array itself is the host copy (slabs are never reused).
"""

import threading

import torch

__all__ = ["HostStats", "PinnedPool", "to_host"]


class PinnedPool:
    """Pinned float32 host buffers, reused: get() takes one of at least n
    elements (or allocates), put() returns it. Shared by the training thread
    (get) and the sender (put)."""

    def __init__(self):
        self._free = []
        self._lock = threading.Lock()

    def get(self, n):
        with self._lock:
            for i, buf in enumerate(self._free):
                if buf.numel() >= n:
                    return self._free.pop(i)
        return torch.empty(max(n, 1024), dtype=torch.float32, pin_memory=True)

    def put(self, buf):
        with self._lock:
            if len(self._free) < 8:
                self._free.append(buf)


class HostStats:
    """A step's statistics on the host: flat (float32 CPU tensor, valid after
    wait()), and per capture (layer, count, offset, C): mean at
    flat[offset:offset+C], var right after it; offset None for count 0."""

    __slots__ = ("flat", "entries", "_event", "_pool", "_buf")

    def __init__(self, flat, entries, event=None, pool=None, buf=None):
        self.flat, self.entries = flat, entries
        self._event, self._pool, self._buf = event, pool, buf

    def wait(self):
        """Block until the device-to-host copy finished (no-op on CPU)."""
        if self._event is not None:
            self._event.synchronize()
            self._event = None

    def release(self):
        """Give the pinned buffer back; flat must not be read afterwards."""
        if self._pool is not None and self._buf is not None:
            self._pool.put(self._buf)
        self._buf = self._pool = None
        self.flat = None


def to_host(captures, pool):
    """HostStats of a step's captures (capture.Capture list), with at most
    one device kernel and one device-to-host copy per device."""
    entries = []
    with_data = [c for c in captures if c.count and c.mean is not None]
    if not with_data:
        return HostStats(torch.empty(0), [(c.layer, c.count, None, 0) for c in captures])
    slab = with_data[0].slab
    one_slab = (slab is not None and slab.dtype == torch.float32
                and all(c.slab is slab for c in with_data))
    if one_slab:
        end = max(c.offset + 2 * c.mean.numel() for c in with_data)
        flat = slab[:end]
        for c in captures:
            if c.count and c.mean is not None:
                entries.append((c.layer, c.count, c.offset, c.mean.numel()))
            else:
                entries.append((c.layer, c.count, None, 0))
    else:
        devices = {c.mean.device for c in with_data}
        if len(devices) > 1:  # model parallel: one host copy per device, then one array
            parts = [torch.cat([t.reshape(-1).float() for t in (c.mean, c.var)]).cpu()
                     for c in with_data]
            flat = torch.cat(parts)
        else:
            flat = torch.cat([t.reshape(-1).to(torch.float32) for c in with_data
                              for t in (c.mean, c.var)])
        off = 0
        for c in captures:
            if c.count and c.mean is not None:
                entries.append((c.layer, c.count, off, c.mean.numel()))
                off += 2 * c.mean.numel()
            else:
                entries.append((c.layer, c.count, None, 0))
    flat = flat.detach()
    if flat.is_cuda:
        n = flat.numel()
        buf = pool.get(n)
        host = buf[:n]
        host.copy_(flat, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(flat.device))  # the stream the copy went on
        return HostStats(host, entries, event, pool, buf)
    return HostStats(flat, entries)
