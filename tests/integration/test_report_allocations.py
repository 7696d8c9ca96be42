"""test_report_allocations.py - what a steady stream of reports costs the
daemon in heap allocations and in --max-memory.

1. Allocations: normstatd runs with tests/bench/malloc_count.c preloaded
   (it counts every malloc, calloc, realloc, posix_memalign and
   aligned_alloc of the process and writes the total at exit). Two daemons
   receive N1 and N2 safetensors reports (world_size 1, steps 1, 2, ...) on
   one keep-alive connection; per report = (total2 - total1) / (N2 - N1), so
   start-up, the first report of each layer and shutdown cancel out. It must
   not exceed ALLOWED, the allocations still made per report (listed there);
   the request context, the body buffer and the decoding scratch (the
   report, its layers, the safetensors header's arrays) are kept on the
   connection.
2. Accounting: what a connection keeps stays counted in --max-memory:
   normstat_memory_bytes while a JSON report's connection is open is higher,
   by exactly the body's length, than once it closed; a safetensors report
   the registry refuses (so nothing changes there) leaves its body and
   scratch counted until its connection closes, then exactly the value
   from before.
"""

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

LAYERS = 12
CHANNELS = 64
N1, N2 = 8, 32
WAIT_S = 20.0  # bounded waits: matter only on failure

# Allocations a report still makes per endpoint, by the same difference:
# libmicrohttpd's response and its headers (4), the answer text (1); /sync
# also the step's result, its waiter and the answer's fields and buffers
# (23 in all; 29 when the safetensors answer's header doubled its way up).
ALLOWED = {"batches": 5, "sync": 23}

SANITIZED = os.environ.get("NS_SANITIZED") == "1" or "TSAN_OPTIONS" in os.environ


def report_body(step):
    rng = np.random.default_rng(step)
    rep = {"step": step, "worker": 0, "world_size": 1, "layers": {}}
    for i in range(LAYERS):
        x = rng.standard_normal((4, CHANNELS)).astype(np.float32)
        rep["layers"][f"bn{i:02d}"] = nsd.layer_report(x)
    return nsd.report_to_safetensors(rep)


def counter_library(tmp):
    """tests/bench/malloc_count.c built by the bench rules, or here."""
    built = os.path.join(os.path.dirname(nsd.binary_path()), "..", "bench", "malloc_count.so")
    if os.path.exists(built):
        return os.path.abspath(built)
    out = os.path.join(tmp, "malloc_count.so")
    src = os.path.join(nsd.REPO, "tests", "bench", "malloc_count.c")
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", out, src], check=True, timeout=60)
    return out


class Allocations(nsd.Case):
    DAEMON_ARGS = ("--max-memory", "64M")

    def allocations(self, lib, tmp, path, n):
        """The daemon's allocation count after n reports to /v1/runs/r/<path>."""
        out = os.path.join(tmp, f"count-{path}-{n}")
        env = dict(os.environ, LD_PRELOAD=lib, NS_MALLOC_COUNT_OUT=out)
        d = nsd.Daemon("--threads", "1", "--log-level", "warn", env=env).start()
        c = d.client()
        refused = []
        try:
            for step in range(1, n + 1):
                r = c.post(f"/v1/runs/r/{path}", report_body(step),
                           content_type="application/safetensors",
                           headers={"Accept": "application/safetensors"})
                if r.status not in (200, 202):
                    refused.append(f"step {step}: {r.short()}")
        finally:
            c.close()
            rc = d.stop()
        self.require(not refused, f"/{path}: {n} reports accepted", "; ".join(refused[:3]))
        self.require(rc == 0, "the counting daemon stopped cleanly", str(rc))
        with open(out) as f:
            return int(f.read().split("=")[1])

    def test_steady_state_allocations(self):
        if SANITIZED:
            print("note allocations not counted: a sanitizer replaces malloc")
            return
        with tempfile.TemporaryDirectory(prefix="nsalloc-") as tmp:
            lib = counter_library(tmp)
            for path, allowed in ALLOWED.items():
                a1 = self.allocations(lib, tmp, path, N1)
                a2 = self.allocations(lib, tmp, path, N2)
                per = (a2 - a1) / (N2 - N1)
                print(f"note /{path}: {per:.2f} allocations per report in steady state")
                # A stray allocation of a background thread (the connection
                # sweep, the log) may fall in either run: half an allocation
                # per report of slack, far below one more per report.
                if allowed is not None:
                    self.check(per < allowed + 0.5,
                               f"/{path}: at most {allowed} allocations per report",
                               f"{per:.2f}")

    def memory_bytes(self):
        for line in self.c.get("/metrics").body.decode().splitlines():
            if line.startswith("normstat_memory_bytes "):
                return int(float(line.split()[1]))
        self.require(False, "/metrics has normstat_memory_bytes")

    def wait_change(self, value):
        """normstat_memory_bytes once it differs from 'value' (a connection
        closing is seen by the daemon a moment later)."""
        deadline = time.monotonic() + WAIT_S
        now = value
        while now == value and time.monotonic() < deadline:
            time.sleep(0.02)
            now = self.memory_bytes()
        return now

    def test_kept_body_counted(self):
        """A JSON report's body buffer stays counted, its exact length,
        until its connection closes."""
        rep = {"step": 1, "worker": 0, "world_size": 1,
               "layers": {"bn": {"count": 2, "mean": [0.5, 1.5], "var": [1.0, 2.0]}}}
        body = nsd.json.dumps(rep).encode()
        w = self.client()
        r = w.post("/v1/runs/kept/batches", body, content_type="application/json")
        self.require(r.status == 202, "the report is accepted", r.short())
        open_bytes = self.memory_bytes()
        w.close()
        closed_bytes = self.wait_change(open_bytes)
        self.check_eq(open_bytes - closed_bytes, len(body),
                      "the kept body buffer is counted until its connection closes")

    def test_kept_scratch_counted(self):
        """A safetensors report refused by the registry (worker 3 of a run of
        one) changes nothing there: what its connection keeps (body and
        decoding scratch) is counted while open, all of it given back once
        it closed."""
        r = self.c.post("/v1/runs/scratch/batches", report_body(1),
                        content_type="application/safetensors")
        self.require(r.status == 202, "the run is created", r.short())
        before = self.memory_bytes()
        body = nsd.report_to_safetensors({"step": 2, "worker": 3, "layers": {
            f"bn{i:02d}": {"count": 2, "mean": [0.5] * CHANNELS, "var": [1.0] * CHANNELS}
            for i in range(LAYERS)}})
        w = self.client()
        r = w.post("/v1/runs/scratch/batches", body, content_type="application/safetensors")
        self.check_eq(r.error_code(), "worker_out_of_range", "the report is refused")
        open_bytes = self.memory_bytes()
        w.close()
        closed_bytes = self.wait_change(open_bytes)
        self.check(open_bytes - before > len(body),
                   "the kept body and scratch are counted while the connection is open",
                   f"{open_bytes - before} bytes for a {len(body)}-byte body")
        self.check_eq(closed_bytes, before, "all of it is given back when it closes")


if __name__ == "__main__":
    nsd.main()
