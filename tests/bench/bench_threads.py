"""bench_threads.py - table 4e of `make bench`: one run on several cores.

Reports applied to ONE run by 1, 2 and 4 threads: in process through the
registry's API (BUILD/bench/bench_registry: no HTTP, no decoding, so the
clients do not share the cores with a server), and over HTTP (normstatd
--threads T, BUILD/bench/loadgen ingest --split 1 with T connections, each
reporting its own part of the layers of one run, safetensors). Thread counts
are interleaved in rounds (1, 2, 4, 1, 2, 4, ...) and every ratio is the
median over rounds of the ratio within a round, so a busy stretch of the
shared machine hurts one round rather than one thread count. Called by
bench_server.py (table 4, which imports it; this module uses its own copy of
bench_server's helpers and hands back the errors it met); runs alone too:

    /usr/bin/python3 tests/bench/bench_threads.py --build BUILD [--seconds S] [--rounds R]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_server  # noqa: E402

COUNTS = (1, 2, 4)
MODEL_CHANNELS = 26560  # ResNet-50: a "report" below is one worker's 53 layers


def busy_fraction(seconds=0.5):
    """How busy the processors were with anything over 'seconds' (/proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def in_process(build, seconds, rounds):
    """{(case, T): [result per round]} from bench_registry."""
    argv = [os.path.join(build, "bench", "bench_registry"), "--seconds", str(seconds),
            "--rounds", str(rounds), "--threads", ",".join(map(str, COUNTS))]
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600,
                       universal_newlines=True)
    out = {}
    for line in p.stdout.splitlines():
        r = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "case" not in r:
            continue
        for k in list(r):
            if k != "case":
                r[k] = float(r[k])
        out.setdefault((r["case"], int(r["threads"])), []).append(r)
    if p.returncode != 0:
        bench_server.ERRORS.append("bench_registry: exit %d: %s" % (p.returncode, p.stderr.strip()[-300:]))
    return out


def over_http(build, seconds, rounds):
    """{T: [loadgen result per round]}: normstatd --threads T, T connections,
    each reporting its part of the ResNet-50 layers into one run."""
    nsd = os.path.join(build, "bin", "normstatd")
    out = {}
    for _ in range(rounds):
        for t in COUNTS:
            d = bench_server.Server([nsd, "--listen", "127.0.0.1:0", "--no-persist", "--threads", str(t)],
                                    "normstatd")
            try:
                r = bench_server.run_loadgen(build, "ingest", "--port", d.port, "--pid", d.pid, "--format", "st",
                                             "--conns", t, "--layers", "resnet50", "--seconds", seconds,
                                             "--max", 2000000, "--run", "split", "--split", 1)
            finally:
                d.stop()
            if not r.get("failed"):
                r["model_rps"] = r.get("channel_rps", 0) / MODEL_CHANNELS
                r["cpu_s"] = r.get("server_cpu", float("nan"))
            out.setdefault(t, []).append(r)
    return out


def med(v):
    v = [x for x in v if x == x]
    return statistics.median(v) if v else float("nan")


def ratios(per_t, key="model_rps"):
    """{T: median over rounds of (rate at T / rate at 1 in the same round)}."""
    base = per_t.get(1, [])
    out = {}
    for t, rs in per_t.items():
        out[t] = med([bench_server.ratio(r.get(key), b.get(key)) for r, b in zip(rs, base)])
    return out


def rows_of(label, per_t):
    rat = ratios(per_t)
    rows = []
    for t in COUNTS:
        rs = per_t.get(t, [])
        rate = med([r.get("model_rps", float("nan")) for r in rs])
        cores = med([r.get("cpu_s", float("nan")) / r.get("seconds", float("nan")) for r in rs])
        per_cpu = med([bench_server.ratio(r.get("model_rps"), r.get("cpu_s", 0) / r.get("seconds", 1))
                       for r in rs])
        waits = med([bench_server.ratio(r.get("vcsw"), r.get("reports")) * 1000 for r in rs if "vcsw" in r])
        rows.append([label, str(t), bench_server.f(rate, "%.0f"), bench_server.f(rat.get(t), "%.2fx"),
                     bench_server.f(cores, "%.2f"), bench_server.f(per_cpu, "%.0f"),
                     bench_server.f(waits, "%.0f"), "%d" % len(rs)])
    return rows, rat


def table(build, seconds, rounds):
    """Print table 4e; @return the errors met (a program that failed)."""
    first_error = len(bench_server.ERRORS)
    busy = busy_fraction()
    load = os.getloadavg()[0]
    proc = in_process(build, seconds, rounds)
    http = over_http(build, seconds, rounds)
    split = {t: proc.get(("split", t), []) for t in COUNTS}
    workers = {t: proc.get(("workers", t), []) for t in COUNTS}
    rows, rat_split = rows_of("in process, different layers (T parts of the 53 layers)", split)
    r2, _ = rows_of("in process, same layers (T workers, world_size T)", workers)
    r3, rat_http = rows_of("HTTP safetensors, different layers (--threads T, T connections)", http)
    print()
    print("%d CPUs; before this table the processors were %.0f%% busy (/proc/stat over 0.5 s), "
          "load average %.2f%s. Reports counted in whole ResNet-50 reports (26,560 channels of one "
          "worker): the channels applied per second / 26,560."
          % (os.cpu_count(), busy * 100, load,
             " -- the machine is busy: thread counts compete with other work" if busy > 0.2 else ""))
    bench_server.table("4e. One run on several cores: reports applied by T threads (median of %d "
                       "interleaved rounds of %.1f s; ratio = median of the per-round ratios to T = 1)"
                       % (rounds, seconds),
                       ["case", "threads", "reports/s", "vs 1 thread", "CPU cores used",
                        "reports per CPU-second", "waits per 1k calls", "rounds"], rows + r2 + r3)
    r12 = rat_split.get(2, float("nan"))
    bench_server.table("4e. Target", ["target", "measured", "result"], [
        ["in process, different layers of one run: 1 -> 2 threads >= 1.7x on 2 cores",
         bench_server.f(r12, "%.2fx") + (" (machine %.0f%% busy)" % (busy * 100)), bench_server.met(r12 >= 1.7)],
        ["over HTTP, different layers: 1 -> 2 threads (for reference)",
         bench_server.f(rat_http.get(2), "%.2fx"), ""]])
    return bench_server.ERRORS[first_error:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    errors = table(a.build, a.seconds, a.rounds)
    if errors:
        print("\nerrors:", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
