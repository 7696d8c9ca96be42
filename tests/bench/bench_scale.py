"""bench_scale.py - table 9 of `make bench` (`make bench-scale`): one big run of 64, 256 and
1,024 simulated workers, reporting directly to one normstatd or through relays of 8.

    /usr/bin/python3 tests/bench/bench_scale.py --build BUILD [--workers 64,256,1024]

Each worker is a keep-alive connection of BUILD/bench/loadgen (libuv) that
sends one ResNet-50 report (53 BatchNorm layers, 26,560 channels,
safetensors) per step to /sync and waits for the answer before its next
step. (a) direct: every worker to one normstatd (world size W). (b) relays:
W/8 relay processes (normstatd --upstream, --local-world-size 8), each the
worker --relay-rank r of the upstream normstatd's run (world size W/8),
forwarding F64 (the default, exact); (c) relays-f32: the same with
--relay-f32 (float32 forwards, half the bytes upstream).
Persistence is off everywhere (the store's cost is per finalized step and
layer, not per worker, so it does not change with W).

Measured per process: CPU (utime + stime of /proc/PID/stat), HTTP body
bytes in and out (the daemon's normstat_http_request_body_bytes_total and
..._response_body_bytes_total; headers, a few hundred bytes a request, not
counted), peak RSS (VmHWM of /proc/PID/status); from the
load generator: steps per second and the /sync round trip p50 / p99 (per
worker per step, after 2 warm-up steps). All processes share this machine's
cores, so absolute numbers depend on its load; the ratios compare rows of
the same run. Bounded: a few steps per row, and every process is killed
after --limit seconds.
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_server import Server, f, met, metric, proc_cpu, ratio, table  # noqa: E402

GROUP = 8  # workers per relay
MODES = ("direct", "relays", "relays-f32")
STEPS = {64: 24, 256: 12, 1024: 10}
WARMUP = 2


def http_bytes(server):
    """Request and response body bytes the daemon counted (its /metrics)."""
    return (metric(server, "normstat_http_request_body_bytes_total") +
            metric(server, "normstat_http_response_body_bytes_total"))


def peak_rss(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def start_daemon(build, extra, name="normstatd"):
    argv = [os.path.join(build, "bin", "normstatd"), "--listen", "127.0.0.1:0", "--no-persist",
            "--log-level", "warn"] + extra
    # The port is read from event=listening, which is logged at every level.
    return Server(argv, name)


def start_relays(build, upstream, n, extra):
    """n relays, each waited for (bounded by Server)."""
    relays = []
    for r in range(n):
        relays.append(start_daemon(build, [
            "--upstream", "http://127.0.0.1:%d" % upstream.port, "--relay-rank", str(r),
            "--local-world-size", str(GROUP), "--relays", str(n), "--threads", "2",
            "--relay-timeout", "120000"] + extra))
    return relays


def sample(procs):
    return [(proc_cpu(p.pid), http_bytes(p)) for p in procs]


def run_row(build, workers, mode, limit):
    """One row: W workers in 'mode' ("direct", "relays" forwarding F64, "relays-f32");
    returns a dict."""
    steps = STEPS.get(workers, 6)
    # every simulated worker keeps a connection from 127.0.0.1: room for all of them
    top = start_daemon(build, ["--threads", "4", "--max-connections", "4096",
                               "--max-connections-per-address", "4096"])
    relays = []
    try:
        run = "scale-%s-%d" % (mode, workers)
        config = '{"world_size": %d, "sync_timeout_ms": 120000}' % (
            workers if mode == "direct" else workers // GROUP)
        status, body = top.request("PUT", "/v1/runs/" + run, config.encode())
        if status not in (200, 201):
            raise RuntimeError("PUT run: %d %s" % (status, body[:200]))
        if mode != "direct":
            relays = start_relays(build, top, workers // GROUP,
                                  ["--relay-f32"] if mode == "relays-f32" else [])
            target = ["--ports", ",".join(str(r.port) for r in relays), "--group", str(GROUP)]
        else:
            target = ["--port", str(top.port)]
        before = sample([top] + relays)
        argv = [os.path.join(build, "bench", "loadgen"), "sync", "--workers", str(workers),
                "--format", "st", "--layers", "resnet50", "--iters", str(steps + WARMUP),
                "--warmup", str(WARMUP), "--seconds", str(limit), "--run", run,
                "--run-exact", "1"] + target
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=limit + 60)
        after = sample([top] + relays)
        kv = dict(re.findall(r"(\w+)=([^\s]+)", p.stdout.decode()))
        if p.returncode != 0 or int(kv.get("errors", "1")) != 0:
            raise RuntimeError("loadgen failed (%d): %s %s" % (p.returncode, p.stdout.decode(),
                                                              p.stderr.decode()[-800:]))
        done = int(kv["ok"]) / workers  # steps every worker completed
        delta = [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before)]
        return {
            "workers": workers, "mode": mode, "steps": done,
            "steps_per_s": done / float(kv["seconds"]),
            "p50_ms": float(kv["p50_us"]) / 1e3, "p99_ms": float(kv["p99_us"]) / 1e3,
            "top_cpu_ms": delta[0][0] / done * 1e3,
            "top_bytes": delta[0][1] / done,
            "relay_cpu_ms": sum(d[0] for d in delta[1:]) / done * 1e3,
            "relay_bytes": sum(d[1] for d in delta[1:]) / done,
            "client_cpu_ms": float(kv["client_cpu"]) / done * 1e3,
            "top_rss": peak_rss(top.pid),
            "relay_rss": max([peak_rss(r.pid) for r in relays] or [0]),
            "relays": len(relays),
            "body_bytes": int(kv["body_bytes"]),
        }
    finally:
        for r in relays:
            r.proc.send_signal(signal.SIGTERM)
        for r in relays:
            r.stop()
        top.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--workers", default="64,256,1024")
    ap.add_argument("--limit", type=float, default=120.0, help="seconds per row at most")
    a = ap.parse_args()
    t0 = time.monotonic()
    rows = []
    for w in [int(x) for x in a.workers.split(",")]:
        for mode in MODES:
            r = run_row(a.build, w, mode, a.limit)
            rows.append(r)
            print("  (%s %d workers: %.0f steps in %.1f s)" % (mode, w, r["steps"],
                                                             r["steps"] / r["steps_per_s"]),
                  file=sys.stderr)
    print("\n## One big run: direct vs relays of %d (table 9)" % GROUP)
    print("\nResNet-50 reports (53 layers, 26,560 channels, safetensors %d bytes) to /sync, one "
          "per worker per step; processes share %d cores, so compare rows of this run."
          % (rows[0]["body_bytes"], os.cpu_count()))
    MB = 1e6
    table("9a. Scale: per step (top = the one normstatd holding the run; relays = all "
          "relays together)",
          ["workers", "path", "steps/s", "/sync p50 ms", "/sync p99 ms", "top CPU ms/step",
           "top MB/step", "relays CPU ms/step", "relays MB/step", "loadgen CPU ms/step"],
          [[str(r["workers"]), r["mode"] + (" (%d)" % r["relays"] if r["relays"] else ""),
            f(r["steps_per_s"], "%.2f"), f(r["p50_ms"], "%.1f"), f(r["p99_ms"], "%.1f"),
            f(r["top_cpu_ms"], "%.1f"), f(r["top_bytes"] / MB, "%.1f"),
            f(r["relay_cpu_ms"], "%.1f") if r["relays"] else "-",
            f(r["relay_bytes"] / MB, "%.1f") if r["relays"] else "-",
            f(r["client_cpu_ms"], "%.1f")] for r in rows])
    table("9b. Scale: memory (peak RSS, MB)",
          ["workers", "path", "top", "one relay", "relays total"],
          [[str(r["workers"]), r["mode"], f(r["top_rss"] / MB, "%.1f"),
            f(r["relay_rss"] / MB, "%.1f") if r["relays"] else "-",
            f(r["relay_rss"] * r["relays"] / MB, "%.0f") if r["relays"] else "-"] for r in rows])
    by = {(r["workers"], r["mode"]): r for r in rows}
    targets = []
    for w in sorted({r["workers"] for r in rows}):
        d = by.get((w, "direct"))
        for mode in MODES[1:]:
            rl = by.get((w, mode))
            if not d or not rl:
                continue
            cpu = ratio(rl["top_cpu_ms"], d["top_cpu_ms"])
            net = ratio(rl["top_bytes"], d["top_bytes"])
            for what, v in (("CPU", cpu), ("bytes", net)):
                targets.append(["%d workers: top %s per step, %s / direct" % (w, what, mode),
                                f(v, "%.3f"), met(v <= 1 / 6) if w == 1024
                                else "(target at 1,024: <= 0.167)"])
    table("9c. Scale targets (ratios from the same run)", ["target", "measured", "result"],
          targets)
    print("\n(table 9 took %.0f s)" % (time.monotonic() - t0))


if __name__ == "__main__":
    main()
