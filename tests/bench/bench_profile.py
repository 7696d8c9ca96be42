#!/usr/bin/env python3
"""bench_profile.py - table 2b: where a ResNet-50 report's server cost goes.

normstatd (--no-persist, --threads 1) receives ResNet-50 reports from one
keep-alive connection (`loadgen ingest --conns 1`, world_size 1: every report
finalizes and applies its step), three ways:

* under `valgrind --tool=callgrind`: instructions, which do not depend on how
  busy the shared machine is. Each format is run twice, with N1 and N2
  reports; per report = (run2 - run1) / (N2 - N1), so start-up, the first
  report of each layer and shutdown cancel out. The parts are inclusive
  costs of the functions that do them (callgrind_annotate --inclusive).
* with tests/bench/malloc_count.c preloaded: heap allocations per report, by
  the same difference.
* plainly, for --seconds: the server's CPU time per report (/proc/PID/stat),
  per channel in ns.

Usage: bench_profile.py --build BUILD [--formats st,json] [--seconds 3]
Prints a markdown table; exits non-zero only on errors (valgrind missing is
said in the table, and the other columns are still measured).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

CHANNELS = 26560  # ResNet-50's BatchNorm channels (tests/bench/bench_model.h)

# (row, function or tuple of functions whose inclusive costs it is); "rest"
# is the total minus the decode and the registry: libmicrohttpd, the body
# copy, the answer.
PARTS = [
    ("decode (bound, parse, values)", "h_report.c:decode"),
    ("registry: checks and commit", None),  # registry minus the rows below
    ("registry: finalize (combine)", "barrier.c:nsd_barrier_finalize"),
    ("registry: EMA + PreciseBN + history values + drift (one fused pass)",
     "population.c:nsd_pop_apply_with_pooled"),
    ("registry: history ring (slot, pooled row) and steps not fused",
     ("drift.c:nsd_layer_history_note", "drift.c:nsd_layer_history_open",
      "drift.c:nsd_layer_history_close")),
    ("registry: last-values copies", "layer.c:nsd_layer_ready_insert"),
]
REGISTRY = "registry.c:nsd_registry_report"


def die(msg):
    print("bench_profile: " + msg, file=sys.stderr)
    sys.exit(1)


class Daemon:
    """normstatd on 127.0.0.1:0, optionally under a wrapper command."""

    def __init__(self, build, wrap=(), env=None):
        self.log = tempfile.NamedTemporaryFile(prefix="nsprof-", suffix=".log", delete=False)
        argv = list(wrap) + [os.path.join(build, "bin", "normstatd"), "--listen", "127.0.0.1:0",
                             "--no-persist", "--threads", "1"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log,
                                     env=dict(os.environ, **(env or {})))
        self.port = None
        deadline = time.monotonic() + 120  # valgrind starts slowly
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = open(self.log.name, errors="replace").read()
            m = re.search(r"event=listening addr=127\.0\.0\.1:(\d+)", text)
            if m and "event=ready" in text:
                self.port = int(m.group(1))
                break
            time.sleep(0.1)
        if self.port is None:
            self.stop()
            die("normstatd did not start: " + open(self.log.name).read()[-2000:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)


def loadgen(build, port, fmt, extra):
    out = subprocess.run([os.path.join(build, "bench", "loadgen"), "ingest", "--port", str(port),
                          "--format", fmt, "--conns", "1", "--layers", "resnet50"] + extra,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        die("loadgen failed: " + out.stderr[-2000:])
    r = dict(kv.split("=", 1) for kv in out.stdout.split() if "=" in kv)
    if int(r.get("errors", "1")) != 0:
        die("loadgen: errors in " + out.stdout)
    return r


def callgrind_run(build, fmt, n, workdir):
    path = os.path.join(workdir, "cg.%s.%d" % (fmt, n))
    d = Daemon(build, ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + path])
    try:
        loadgen(build, d.port, fmt, ["--max", str(n), "--seconds", "500"])
    finally:
        d.stop()
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                          capture_output=True, text=True, timeout=300).stdout
    costs = {}
    total = None
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(\S+)", line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        if m.group(2) == "PROGRAM":
            total = ir
            continue
        name = m.group(2).split("/")[-1]  # file:function
        costs[name] = max(costs.get(name, 0), ir)
    if total is None:
        die("callgrind_annotate gave no total for " + path)
    costs["total"] = total
    return costs


def allocations(build, fmt, n, workdir):
    out = os.path.join(workdir, "mc.%s.%d" % (fmt, n))
    d = Daemon(build, env={"LD_PRELOAD": os.path.abspath(os.path.join(build, "bench",
                                                                      "malloc_count.so")),
                           "NS_MALLOC_COUNT_OUT": out})
    try:
        loadgen(build, d.port, fmt, ["--max", str(n), "--seconds", "120"])
    finally:
        d.stop()
    m = re.search(r"allocations=(\d+)", open(out).read())
    if not m:
        die("no allocation count in " + out)
    return int(m.group(1))


def cpu_per_report(build, fmt, seconds):
    d = Daemon(build)
    try:
        loadgen(build, d.port, fmt, ["--seconds", "1", "--max", "100000"])  # warm-up
        r = loadgen(build, d.port, fmt, ["--seconds", str(seconds), "--pid", str(d.proc.pid)])
    finally:
        d.stop()
    cpu, ok = float(r["server_cpu"]), int(r["ok"])
    return cpu / ok if cpu >= 0 and ok > 0 else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--formats", default="st,json")
    ap.add_argument("--seconds", type=float, default=3.0, help="the plain CPU-time run")
    args = ap.parse_args()
    formats = args.formats.split(",")
    # Reports per callgrind run (a JSON report costs about 7x a safetensors one).
    counts = {"st": (40, 120), "json": (15, 45)}
    have_valgrind = shutil.which("valgrind") and shutil.which("callgrind_annotate")
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="nsprof-")
    cols, rows = [], {}
    try:
        for fmt in formats:
            n1, n2 = counts[fmt]
            col = {}
            a1, a2 = allocations(args.build, fmt, n1, workdir), allocations(args.build, fmt, n2,
                                                                            workdir)
            col["alloc"] = (a2 - a1) / (n2 - n1)
            col["cpu"] = cpu_per_report(args.build, fmt, args.seconds)
            if have_valgrind:
                c1 = callgrind_run(args.build, fmt, n1, workdir)
                c2 = callgrind_run(args.build, fmt, n2, workdir)
                per = {k: (c2.get(k, 0) - c1.get(k, 0)) / (n2 - n1) for k in c2}
                col["ir"] = per
            cols.append(fmt)
            rows[fmt] = col
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(cols, rows, counts, have_valgrind, args.seconds)
    print("\n(table 2b took %.0f s)" % (time.monotonic() - started))


def print_table(cols, rows, counts, have_valgrind, seconds):
    """The markdown table of the measurements: a pair of columns a format."""
    name = {"st": "safetensors", "json": "JSON"}
    print("### 2b. Per-channel server cost: one ResNet-50 report (26,560 channels), "
          "world_size 1, normstatd --threads 1 --no-persist\n")
    print("- instructions: callgrind, per report = difference of a %s-report and a %s-report run "
          "(safetensors; JSON %s and %s), so start-up cancels out; parts are inclusive costs"
          % (counts["st"][0], counts["st"][1], counts["json"][0], counts["json"][1]))
    if not have_valgrind:
        print("- valgrind: not available (`sh mk/deps.sh bench` installs it); instruction rows empty")
    print("- allocations: malloc, calloc, realloc, posix_memalign, aligned_alloc calls of the "
          "process (tests/bench/malloc_count.c), the same difference")
    print("- CPU: the server's utime + stime per report over %.0f s of one connection, not "
          "under valgrind (depends on the machine's load)\n" % seconds)
    print("| row | " + " | ".join("%s per report | per channel" % name[f] for f in cols) + " |")
    print("|---|" + "---:|---:|" * len(cols))

    def line(label, values):
        print("| %s | %s |" % (label, " | ".join(values)))

    def ir_cells(f, v):
        if v is None:
            return ["", ""]
        return ["%.2f M" % (v / 1e6), "%.1f" % (v / CHANNELS)]

    def ir_of(f, key):
        ir = rows[f].get("ir")
        if ir is None:
            return None
        return sum(ir.get(k, 0) for k in key) if isinstance(key, tuple) else ir.get(key, 0)

    line("**instructions, all**", sum((ir_cells(f, ir_of(f, "total")) for f in cols), []))
    for label, fn in PARTS:
        cells = []
        for f in cols:
            if rows[f].get("ir") is None:
                cells += ["", ""]
                continue
            if fn is None:
                v = ir_of(f, REGISTRY) - sum(ir_of(f, p[1]) for p in PARTS if p[1] and
                                             p[1] != "h_report.c:decode")
            else:
                v = ir_of(f, fn)
            cells += ir_cells(f, v)
        line(label, cells)
    cells = []
    for f in cols:
        if rows[f].get("ir") is None:
            cells += ["", ""]
        else:
            cells += ir_cells(f, ir_of(f, "total") - ir_of(f, "h_report.c:decode") -
                              ir_of(f, REGISTRY))
    line("HTTP and the rest (libmicrohttpd, body copy, answer)", cells)
    line("**heap allocations**", sum((["%.1f" % rows[f]["alloc"], "%.4f" % (rows[f]["alloc"] /
                                                                           CHANNELS)]
                                      for f in cols), []))
    cells = []
    for f in cols:
        c = rows[f]["cpu"]
        cells += ["", ""] if c is None else ["%.0f us" % (c * 1e6), "%.2f ns" % (c * 1e9 / CHANNELS)]
    line("**server CPU** (not under valgrind)", cells)


if __name__ == "__main__":
    main()
