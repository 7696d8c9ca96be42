"""benchenv.py - what the trainer benchmarks print about the machine and the code they measure.

    code_version()  -> "8bfc086 + uncommitted changes in client/python/normstat, server"
    cpu_busy(0.5)   -> 0.12 (fraction of all processors busy over 0.5 s)
"""

import os
import subprocess
import time

__all__ = ["code_version", "cpu_busy", "REPO"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the code a benchmark runs (packaging, docs and tests do not count)
_PARTS = ("client/python/normstat", "client/src", "client/include", "server", "proto", "core")


def code_version():
    """The commit of the checkout and the parts of the code that differ from
    it, or why that is unknown (no git, not a checkout)."""
    try:
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True, timeout=10)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        status = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--"] + list(_PARTS),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                universal_newlines=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    changed = sorted({part for line in status.splitlines() for part in _PARTS
                      if line[3:].startswith(part)})
    return head.stdout.strip() + (" + uncommitted changes in " + ", ".join(changed)
                                  if changed else "")


def _cpu_times():
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields), idle


def cpu_busy(seconds=0.5):
    """Fraction of all processors busy over 'seconds' (from /proc/stat), or
    nan where /proc/stat cannot be read."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(seconds)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else float("nan")
