"""bench_answers.py - table 4f of `make bench`: the big answers of one big run.

A run of 100,000 one-channel layers (four reports of 25,000 layers, one
step, --history-steps 0), then each of GET /v1/runs/{run}/checkpoint, /drift
and /v1/runs/{run} on a daemon of its own (so one answer's freed memory does
not hide the next one's peak): the answer's size, the daemon's CPU for it
(/proc/PID/stat utime + stime), and its peak RSS over the RSS before (VmHWM
reset through /proc/PID/clear_refs just before). The checkpoint's
reservation is read from normstat_memory_bytes while a client holds the
answer half read. Called by bench_server.py (table 4, which imports it);
runs alone too:

    /usr/bin/python3 tests/bench/bench_answers.py --build BUILD
"""
import argparse
import json
import math
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_server  # noqa: E402

LAYERS, PARTS = 100_000, 4
MIB = 1 << 20
PATHS = (("GET /v1/runs/{run}/checkpoint", "/v1/runs/big/checkpoint"),
         ("GET /v1/runs/{run}/drift", "/v1/runs/big/drift"),
         ("GET /v1/runs/{run} (status)", "/v1/runs/big"))


def vm(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def build_run(d):
    for part in range(PARTS):
        layers = {"l%06d" % i: {"count": 4, "mean": [math.sin(i * 0.37) * 1e3 + i * 1e-3],
                                "var": [1.0 + (i % 977) * 0.013]}
                  for i in range(part * LAYERS // PARTS, (part + 1) * LAYERS // PARTS)}
        body = json.dumps({"step": 0, "worker": 0, "layers": layers}, separators=(",", ":"))
        status, resp = d.request("POST", "/v1/runs/big/batches", body.encode())
        if status not in (200, 202):
            raise RuntimeError("report refused: %d %s" % (status, resp[:200]))


def held_reservation(d, base):
    """normstat_memory_bytes over 'base' while a GET /checkpoint is half read."""
    s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /v1/runs/big/checkpoint HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.recv(256)
        return bench_server.metric(d, "normstat_memory_bytes") - base
    finally:
        s.close()


def one(nsd, label, path):
    d = bench_server.Server([nsd, "--listen", "127.0.0.1:0", "--no-persist",
                             "--history-steps", "0"], "normstatd")
    try:
        build_run(d)
        bench_server.quiesce(d)
        base = bench_server.metric(d, "normstat_memory_bytes")
        reserved = held_reservation(d, base) if path.endswith("/checkpoint") else None
        deadline = time.monotonic() + 10  # the half-read answer's release
        while time.monotonic() < deadline and bench_server.metric(d, "normstat_memory_bytes") != base:
            time.sleep(0.05)
        with open("/proc/%d/clear_refs" % d.pid, "w") as f:
            f.write("5")
        rss0, cpu0 = vm(d.pid, "VmRSS"), bench_server.proc_cpu(d.pid)
        status, body = d.request("GET", path)
        cpu = bench_server.proc_cpu(d.pid) - cpu0
        peak = vm(d.pid, "VmHWM") - rss0
        if status != 200:
            raise RuntimeError("%s: %d %s" % (path, status, body[:200]))
        return [label, "%.1f" % (len(body) / 1e6), "%.2f" % cpu, "%.1f" % (peak / MIB),
                "%.1f" % (reserved / MIB) if reserved is not None else "",
                "%.1f" % (base / MIB)]
    finally:
        d.stop()


def table(build):
    """Print table 4f; @return the errors met."""
    nsd = os.path.join(build, "bin", "normstatd")
    rows, errors = [], []
    for label, path in PATHS:
        try:
            rows.append(one(nsd, label, path))
        except (OSError, RuntimeError) as e:
            errors.append("table 4f, %s: %s" % (label, e))
    bench_server.table("4f. Big answers: a run of %d one-channel layers (--history-steps 0, "
                       "--no-persist; a daemon per row)" % LAYERS,
                       ["answer", "MB", "server CPU s", "peak RSS +MiB", "reserved MiB",
                        "run counted MiB"], rows)
    return errors


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    errs = table(ap.parse_args().build)
    for e in errs:
        print(e)
    sys.exit(1 if errs else 0)
