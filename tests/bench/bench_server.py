"""bench_server.py - tables 2-5 of `make bench`: ingest, /sync, scale, durability.

    /usr/bin/python3 tests/bench/bench_server.py --build BUILD [--seconds S]

Starts normstatd (--listen 127.0.0.1:0), the bare libmicrohttpd server and
the torch.distributed gloo peer, drives them with BUILD/bench/loadgen, and
prints markdown tables whose rows are ratios to a reference measured in the
same run. Everything is bounded in time; the exit status is non-zero only on
errors (a program that fails to start, a load generator that fails), never
for a missed target. See tests/bench/README.md for what each row means.
"""
import argparse
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ERRORS = []


# ---------------------------------------------------------------- processes

class Server:
    """normstatd or bare_server on 127.0.0.1:0; the port comes from its log."""

    def __init__(self, argv, name):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix="nsbench-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.log)
        self.port = None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.proc.poll() is None:
            with open(self.log.name, errors="replace") as f:
                m = re.search(r"event=listening addr=127\.0\.0\.1:(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
                break
            time.sleep(0.05)
        if self.port is None:
            self.stop()
            raise RuntimeError("%s did not start: %s" % (name, open(self.log.name).read()[-2000:]))
        if name == "normstatd":
            self.wait_ready()

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("normstatd never became ready")

    def request(self, method, path, body=None, ctype="application/json"):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request(method, path, body=body, headers={"Content-Type": ctype} if body else {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:  # stop() may be called twice
            self.log.close()
            os.unlink(self.log.name)


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def metric(server, name):
    """A sample of /metrics: name may carry labels, e.g. x{reason="y"}."""
    status, body = server.request("GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid):
    """CPU seconds of each kind of thread: request (libmicrohttpd's), the store's writer,
    snapshot and checkpoint threads (named by the store), and the rest."""
    kinds = {"ns-store-write": "writer", "ns-store-snap": "snapshot", "ns-store-ckpt": "checkpoint"}
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as fh:
                head, tail = fh.read().rsplit(")", 1)
        except OSError:
            continue
        name = head.split("(", 1)[1]
        kind = "request" if name.startswith("MHD") else kinds.get(name, "other")
        fields = tail.split()
        out[kind] = out.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf(
            "SC_CLK_TCK")
    return out


CPU_KINDS = ("request", "writer", "snapshot", "checkpoint", "other")


def cpu_row(label, c0, c1, reports):
    """Server CPU per report by kind of thread, ms (the backlog's drain included)."""
    d = {k: c1.get(k, 0.0) - c0.get(k, 0.0) for k in CPU_KINDS}
    return [label] + [f(d[k] * 1e3 / reports if reports else None, "%.3f") for k in CPU_KINDS] + \
        [f(sum(d.values()) * 1e3 / reports if reports else None, "%.3f")]


QUIESCE = {"limit": 10.0}


def quiesce(srv, limit=None):
    """Wait until the server uses under 5 % of a CPU over 0.2 s (e.g. the store
    has committed the backlog of the previous row), at most 'limit' seconds
    (10; after one wait timed out, 1, so a server that is never idle cannot
    stretch the run). @return the seconds waited."""
    limit = limit if limit is not None else QUIESCE["limit"]
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        c0 = proc_cpu(srv.pid)
        time.sleep(0.2)
        if proc_cpu(srv.pid) - c0 < 0.01:
            return time.monotonic() - t0
    if QUIESCE["limit"] > 1:
        print("\n(note: %s still busy after %.0f s; later rows wait at most 1 s)"
              % (srv.name, limit))
        QUIESCE["limit"] = 1.0
    return time.monotonic() - t0


def run_loadgen(build, *args):
    argv = [os.path.join(build, "bench", "loadgen")] + [str(a) for a in args]
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                       universal_newlines=True)
    line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    res = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    for k, v in list(res.items()):
        try:
            res[k] = float(v)
        except ValueError:
            pass
    if res.get("samples") == 0:  # no latency measured (e.g. time ran out in warm-up)
        res["p50_us"] = res["p99_us"] = float("nan")
    if p.returncode != 0 or not res:
        ERRORS.append("loadgen %s: exit %d: %s" % (" ".join(argv[1:3]), p.returncode,
                                                   p.stderr.strip()[-500:]))
        res["failed"] = True
    elif res.get("errors", 0):
        ERRORS.append("loadgen %s: %d requests rejected: %s" %
                      (" ".join(argv[1:3]), res["errors"], p.stderr.strip()[-300:]))
    return res


def gloo(python, world, specs, iters, per_layer=False):
    argv = [python, os.path.join(HERE, "sync_gloo.py"), str(world), ",".join(specs), str(iters)]
    argv += ["--per-layer"] if per_layer else []
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300,
                           universal_newlines=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {}, "gloo: %s" % e
    out = {}
    for line in p.stdout.splitlines():
        res = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if "spec" in res:
            out[res["spec"]] = {k: float(v) for k, v in res.items() if k not in ("spec",)}
    if p.returncode != 0:
        return out, "gloo: exit %d: %s" % (p.returncode, p.stderr.strip()[-300:])
    return out, None


# ---------------------------------------------------------------- formatting

def table(title, header, rows):
    print()
    print("### " + title)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    sys.stdout.flush()


def f(v, fmt="%.0f"):
    if v is None or v != v:
        return "n/a"
    return fmt % v


def ratio(a, b):
    if a is None or b is None or a != a or b != b or b == 0:
        return float("nan")
    return a / b


def met(ok):
    return "**met**" if ok else "**not met**"


# ---------------------------------------------------------------- measurements

STORE_COUNTERS = ("commits_total", "rows_total", "bytes_total", "commit_seconds_total")


def store_counters(srv):
    """The store's counters now (normstat_store_*)."""
    return {k: metric(srv, "normstat_store_" + k) for k in STORE_COUNTERS}


def commit_row(label, c0, c1):
    """Commits, and per commit: rows, KB (row bodies), mean latency."""
    d = {k: c1[k] - c0[k] for k in STORE_COUNTERS}
    n = d["commits_total"]
    return [label, f(n), f(d["rows_total"] / n if n else None, "%.1f"),
            f(d["bytes_total"] / n / 1e3 if n else None, "%.1f"),
            f(d["commit_seconds_total"] / n * 1e3 if n else None, "%.2f")]


def ingest(build, srv, fmt, seconds, conns, tag, workers=1):
    quiesce(srv)
    return run_loadgen(build, "ingest", "--port", srv.port, "--pid", srv.pid, "--format", fmt,
                       "--conns", conns, "--layers", "resnet50", "--seconds", seconds,
                       "--max", 2000000, "--run", tag, "--workers", workers)


SYNC_CASES = [(w, spec, iters, fmt) for w in (2, 4) for spec, iters in (("1x256", 300),
              ("resnet50", 200)) for fmt in ("json", "st")]


def sync(build, srv, world, spec, iters, seconds, tag, fmt, answer=None):
    quiesce(srv)
    extra = ["--answer", answer] if answer else []
    return run_loadgen(build, "sync", "--port", srv.port, "--pid", srv.pid, "--format", fmt,
                       "--workers", world, "--layers", spec, "--iters", iters,
                       "--seconds", seconds, "--run", tag, *extra)


# Table 3b: W=2 ResNet-50 /sync with each request format and answer format
# (the answer asked for with Accept), in interleaved rounds.
ANSWER_CASES = [("json", "json"), ("st", "json"), ("json", "st"), ("st", "st")]


def answer_formats(build, srv, rounds, seconds):
    res = {c: [] for c in ANSWER_CASES}
    for _ in range(rounds):
        for req, ans in ANSWER_CASES:
            res[(req, ans)].append(sync(build, srv, 2, "resnet50", 60, seconds, "fmt", req, ans))
    return res


def median(values):
    v = sorted(x for x in values if x is not None and x == x)
    return v[len(v) // 2] if v else None


def answer_format_tables(res, rounds):
    name = {"json": "JSON", "st": "safetensors"}
    rows, p50 = [], {}
    for c in ANSWER_CASES:
        rs = res[c]
        p50[c] = median([r.get("p50_us") for r in rs])
        cpu = median([1e3 * r["server_cpu"] / r["requests"] * 2 for r in rs
                      if r.get("server_cpu", -1) >= 0 and r.get("requests")])
        rows.append([name[c[0]], name[c[1]], f(p50[c]), f(median([r.get("p99_us") for r in rs])),
                     " ".join(f(r.get("p50_us")) for r in rs), f(cpu, "%.2f"),
                     f(median([r.get("answer_bytes") for r in rs]))])
    ref = p50[("st", "st")]
    for row, c in zip(rows, ANSWER_CASES):
        row.append(f(ratio(p50[c], ref), "%.2fx"))
    table("3b. /sync W=2, 53 layers (26,560 ch) by request and answer format (us, per worker "
          "per step; median of %d interleaved rounds)" % rounds,
          ["request", "answer", "/sync p50", "/sync p99", "p50 of each round",
           "server CPU ms/step", "answer bytes", "p50 vs safetensors both ways"], rows)
    js, sj = ratio(p50[("json", "json")], ref), ratio(p50[("st", "json")], ref)
    table("3b. Answer format targets", ["target", "measured", "result"], [
        ["JSON /sync p50 <= 2x safetensors (JSON request and answer)", f(js, "%.2fx"),
         met(js is not None and js <= 2)],
        ["JSON answer alone (safetensors request): p50 <= 2x safetensors", f(sj, "%.2fx"),
         met(sj is not None and sj <= 2)]])


def best(a, b, key="rps"):
    """The better of two rounds of one row (the higher rate)."""
    if not a or a.get("failed"):
        return b
    if not b or b.get("failed"):
        return a
    if key == "jansson_rps":  # decode: each decoder's best round
        out = dict(a)
        for k in ("jansson_rps", "ns_json_rps", "ns_st_rps", "jansson_mbps"):
            out[k] = max(a.get(k, 0), b.get(k, 0))
        return out
    return b if b.get(key, 0) > a.get(key, 0) else a


def per_report_us(r):
    if r.get("failed") or not r.get("ok") or r.get("server_cpu", -1) < 0:
        return float("nan")
    return r["server_cpu"] / r["ok"] * 1e6


def ingest_rows(res, dec, bare):
    """Rows of table 2 (and 5): (label, result, reference rate, reference name)."""
    rows = []
    for label, r, ref in res:
        rows.append(["%s" % label, f(r.get("rps"), "%.1f"), f(r.get("mbps"), "%.1f"),
                     f(ratio(r.get("rps"), ref), "%.2fx") if ref else "reference",
                     f(r.get("client_cpu"), "%.2f"), f(r.get("server_cpu"), "%.2f"),
                     f(per_report_us(r), "%.0f")])
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the ingest rows (best kept)")
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--tables", default="2,3,4,5", help="which tables to print, e.g. 2,3")
    ap.add_argument("--thread-rounds", type=int, default=5, help="rounds of table 4e (median kept)")
    ap.add_argument("--answer-rounds", type=int, default=5,
                    help="rounds of table 3b (median kept)")
    a = ap.parse_args()
    want = set(a.tables.split(","))
    build, secs = a.build, a.seconds
    nsd = os.path.join(build, "bin", "normstatd")
    bare_bin = os.path.join(build, "bench", "bare_server")
    t_begin = time.monotonic()
    load = os.getloadavg()
    print()
    print("## normstatd benchmarks (tables 2-5)")
    print()
    print("%d CPUs, load average %.2f before the run; normstatd with its defaults "
          "(--threads 4, --core-threads 1); load generator on libuv, %d keep-alive "
          "connections, one request in flight each; ingest rows: best of %d interleaved rounds "
          "of %.1f s; ResNet-50 report = 53 layers, 26,560 channels."
          % (os.cpu_count(), load[0], a.conns, a.rounds, secs))
    tmp = tempfile.mkdtemp(prefix="nsbench-")
    try:
        if want & {"2", "3", "5"}:
            # ------------------------------------------------ table 2: ingest
            # Both servers up (the idle one costs nothing); the ingest rows run in
            # interleaved rounds and each keeps its best round, so a busy moment
            # of the shared machine hurts one round rather than one row.
            bare = Server([bare_bin], "bare_server")
            d = Server([nsd, "--listen", "127.0.0.1:0", "--no-persist"], "normstatd")
            try:
                b_st = b_js = n_st = n_js = n_st4 = dec = {}
                for _ in range(a.rounds):
                    b_st = best(b_st, ingest(build, bare, "st", secs, a.conns, "bare"))
                    n_st = best(n_st, ingest(build, d, "st", secs, a.conns, "ing"))
                    b_js = best(b_js, ingest(build, bare, "json", secs, a.conns, "bare"))
                    n_js = best(n_js, ingest(build, d, "json", secs, a.conns, "ing"))
                    n_st4 = best(n_st4, ingest(build, d, "st", secs, a.conns, "ing4",
                                               workers=4))
                    dec = best(dec, run_loadgen(build, "decode", "--layers", "resnet50",
                                                "--seconds", secs), "jansson_rps")
                bare.stop()
                # ------------------------------------------------ table 3: sync
                sync_res = {}
                for w, spec, iters, fmt in SYNC_CASES:
                    sync_res[(w, spec, fmt)] = sync(build, d, w, spec, iters, secs, "sync", fmt)
                fmt_res = answer_formats(build, d, a.answer_rounds, secs)
            finally:
                bare.stop()
                d.stop()
        gloo_res = {}
        gloo_err = []
        if "3" in want:
            for w in (2, 4):
                out, err = gloo(a.python, w, ["1x256", "resnet50"], 300)
                if err:
                    gloo_err.append(err)
                for spec, v in out.items():
                    gloo_res[(w, spec)] = v
                # As SyncBatchNorm does it: one all_gather per layer.
                out, err = gloo(a.python, w, ["resnet50"], 30, per_layer=True)
                if err:
                    gloo_err.append(err)
                for spec, v in out.items():
                    gloo_res[(w, spec + "/layer")] = v
    
        if "2" in want:
            jrate = dec.get("jansson_rps")
            rows = ingest_rows([("bare libmicrohttpd, safetensors bodies", b_st, None),
                                ("**normstatd, safetensors**", n_st, b_st.get("rps")),
                                ("normstatd, safetensors, 4-worker runs (a step every 4 "
                                 "reports)", n_st4, b_st.get("rps")),
                                ("bare libmicrohttpd, JSON bodies", b_js, None),
                                ("**normstatd, JSON**", n_js, b_js.get("rps"))], dec, None)
            rows.append(["jansson tree decode of the same JSON report (in-process, 1 thread)",
                         f(jrate, "%.1f"), f(dec.get("jansson_mbps"), "%.1f"), "reference",
                         "", "", f(1e6 / jrate if jrate else None, "%.0f")])
            rows.append(["normstatd JSON ingest vs jansson tree decode (last column: "
                         "per CPU-second)", "", "",
                         f(ratio(n_js.get("rps"), jrate), "%.2fx"), "", "",
                         f(ratio(1e6 / jrate if jrate else None, per_report_us(n_js)),
                           "%.2fx")])
            rows.append(["`ns_report_decode_json` (in-process, 1 thread)",
                         f(dec.get("ns_json_rps"), "%.1f"),
                         f(dec.get("ns_json_rps", 0) * dec.get("json_bytes", 0) / 1e6, "%.1f"),
                         f(ratio(dec.get("ns_json_rps"), jrate), "%.2fx"), "", "",
                         f(1e6 / dec["ns_json_rps"] if dec.get("ns_json_rps") else None, "%.0f")])
            rows.append(["`ns_report_decode_safetensors` (in-process, 1 thread)",
                         f(dec.get("ns_st_rps"), "%.1f"),
                         f(dec.get("ns_st_rps", 0) * dec.get("st_bytes", 0) / 1e6, "%.1f"), "",
                         "", "", f(1e6 / dec["ns_st_rps"] if dec.get("ns_st_rps") else None, "%.0f")])
            table("2. Ingest: ResNet-50 report (JSON %s bytes, safetensors %s bytes), persistence off"
                  % (f(dec.get("json_bytes")), f(dec.get("st_bytes"))),
                  ["row", "reports/s", "MB/s", "vs reference", "client CPU s", "server CPU s",
                   "server CPU us/report"], rows)
            st_ratio = ratio(n_st.get("rps"), b_st.get("rps"))
            js_ratio = ratio(n_js.get("rps"), jrate)
            table("2. Ingest targets", ["target", "measured", "result"], [
                ["safetensors ingest >= 50% of the bare-server rate", f(st_ratio * 100, "%.1f%%"),
                 met(st_ratio >= 0.5)],
                ["JSON ingest >= 4x jansson-tree decode", f(js_ratio, "%.2fx"), met(js_ratio >= 4)]])

        if "3" in want:
            rows = []
            targets = []
            for w, spec, _, fmt in SYNC_CASES:
                r = sync_res[(w, spec, fmt)]
                g = gloo_res.get((w, spec), {})
                label = "W=%d, %s, %s" % (w, "1 layer x 256" if spec == "1x256"
                                          else "53 layers (26,560 ch)",
                                          "JSON" if fmt == "json" else "safetensors")
                gl = gloo_res.get((w, spec + "/layer"), {})
                rows.append([label, f(r.get("p50_us")), f(r.get("p99_us")),
                             f(g.get("p50_us")), f(g.get("p99_us")),
                             f(ratio(g.get("p50_us"), r.get("p50_us")), "%.2fx"),
                             f(ratio(g.get("p99_us"), r.get("p99_us")), "%.2fx"),
                             f(gl.get("p50_us")) if gl else "=",
                             f(ratio(gl.get("p50_us"), r.get("p50_us")), "%.2fx") if gl else "=",
                             "%d / %d" % (r.get("samples", 0), g.get("samples", 0))])
                if spec == "1x256":
                    rr = ratio(g.get("p50_us"), r.get("p50_us"))
                    targets.append(["/sync p50 <= gloo all_gather p50, W=%d, 256 channels, %s"
                                    % (w, "JSON" if fmt == "json" else "safetensors"),
                                    "%s vs %s us (%s)" % (f(r.get("p50_us")), f(g.get("p50_us")),
                                                          f(rr, "%.2fx")), met(rr >= 1)])
            table("3. Sync round trip (us, per worker per step; gloo: one all_gather of a "
                  "concatenated [3, C] float32 tensor per step; per-layer: one all_gather "
                  "of [3, C_layer] per layer, as SyncBatchNorm does)",
                  ["case", "/sync p50", "/sync p99", "gloo p50", "gloo p99",
                   "p50 gloo / ours", "p99 gloo / ours", "gloo per-layer p50",
                   "p50 per-layer gloo / ours", "samples ours / gloo"], rows)
            table("3. Sync targets", ["target", "measured", "result"], targets)
            answer_format_tables(fmt_res, a.answer_rounds)
            for e in gloo_err:
                print("\n(%s)" % e)

        # ------------------------------------------------ table 4: scale
        if "4" in want:
            scale(build, a, secs, tmp)
            import bench_threads  # table 4e: one run on several cores
            ERRORS.extend(bench_threads.table(build, min(secs, 2.0), a.thread_rounds))
            import bench_answers  # table 4f: the big answers of one big run
            ERRORS.extend(bench_answers.table(build))

        # ------------------------------------------------ table 5: durability
        if "5" in want:
            runs = {mode: durability_pass(build, nsd, a, secs, os.path.join(tmp, "data-" + mode),
                                          extra)
                    for mode, extra in (("fsync", []), ("nofsync", ["--no-fsync"]))}
            fs, nf = runs["fsync"], runs["nofsync"]

            def row(label, off, on, on_nf, fmt="%.1f"):
                return [label, f(off, fmt), f(on, fmt), f(ratio(on, off), "%.2f"),
                        f(on_nf, fmt), f(ratio(on_nf, off), "%.2f")]
            rows = [row("ingest safetensors, reports/s", n_st.get("rps"), fs["st"].get("rps"),
                        nf["st"].get("rps")),
                    row("ingest JSON, reports/s", n_js.get("rps"), fs["json"].get("rps"),
                        nf["json"].get("rps")),
                    ["store backlog after the JSON ingest row, drained in (s)", "",
                     f(fs["drain"], "%.1f"), "", f(nf["drain"], "%.1f"), ""]]
            for w, spec, _, fmt in SYNC_CASES:
                r = sync_res[(w, spec, fmt)]
                p, q_nf = fs["sync"][(w, spec, fmt)], nf["sync"][(w, spec, fmt)]
                for q in ("p50", "p99"):
                    rows.append(row("/sync W=%d %s %s %s, us" % (w, spec, fmt, q), r.get(q + "_us"),
                                    p.get(q + "_us"), q_nf.get(q + "_us"), "%.0f"))
            rows.append(["fdatasync of a 4 KiB append in the data directory, p50 us (the floor "
                         "of a commit that survives a power cut)", "", f(fsync_floor_us(tmp)),
                         "", "", ""])
            table("5. Durability cost (persistence on: SQLite in a temp --data-dir, default "
                  "--commit-interval, fsync per commit or --no-fsync; off: --no-persist)",
                  ["row", "off (--no-persist)", "on (--data-dir)", "on / off",
                   "on, --no-fsync", "--no-fsync / off"], rows)
            table("5b. The store's commits during rows of table 5 (from /metrics: "
                  "normstat_store_commits_total, _rows_total, _bytes_total, "
                  "_commit_seconds_total)",
                  ["row", "commits", "rows per commit", "KB per commit", "ms per commit (mean)"],
                  [commit_row(label + (" --no-fsync" if mode == "nofsync" else ""), c0, c1)
                   for mode in ("fsync", "nofsync") for label, c0, c1 in runs[mode]["commits"]])
            table("5c. Server CPU per ingested report by thread, ms (persistence on, the store's "
                  "backlog drained; WAL file after the ingest rows: %s MB, %s MB with --no-fsync)"
                  % (f(fs.get("wal_mb"), "%.0f"), f(nf.get("wal_mb"), "%.0f")),
                  ["row", "request threads", "store writer", "snapshots", "WAL checkpoints",
                   "other", "all"],
                  [cpu_row(label + (" --no-fsync" if mode == "nofsync" else ""), c0, c1, n)
                   for mode in ("fsync", "nofsync") for label, c0, c1, n in runs[mode]["cpu"]])
    except Exception as e:  # an error, not a missed target
        ERRORS.append("%s: %s" % (type(e).__name__, e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n(tables 2-5 took %.0f s)" % (time.monotonic() - t_begin))
    if ERRORS:
        print("\nerrors:", file=sys.stderr)
        for e in ERRORS:
            print("  " + e, file=sys.stderr)
        sys.exit(1)


def durability_pass(build, nsd, a, secs, ddir, extra):
    """Table 5's rows against one persistent daemon: ingest, the store's drain, /sync cases,
    and the store's counters over each row."""
    os.makedirs(ddir)
    d = Server([nsd, "--listen", "127.0.0.1:0", "--data-dir", ddir] + extra, "normstatd")
    out = {"commits": [], "sync": {}, "cpu": []}
    try:
        c0 = store_counters(d)
        quiesce(d)
        t0 = thread_cpu(d.pid)
        out["st"] = ingest(build, d, "st", secs, a.conns, "dur")
        out["commits"].append(("ingest safetensors (world_size 1)", c0, store_counters(d)))
        quiesce(d, 60)
        t1 = thread_cpu(d.pid)
        out["cpu"].append(("ingest safetensors", t0, t1, out["st"].get("ok", 0)))
        out["json"] = ingest(build, d, "json", secs, a.conns, "dur")
        out["drain"] = quiesce(d, 60)
        out["cpu"].append(("ingest JSON", t1, thread_cpu(d.pid), out["json"].get("ok", 0)))
        wal = os.path.join(ddir, "normstat.db-wal")
        out["wal_mb"] = os.path.getsize(wal) / 1e6 if os.path.exists(wal) else 0.0
        for w, spec, iters, fmt in SYNC_CASES:
            c0 = store_counters(d)
            out["sync"][(w, spec, fmt)] = sync(build, d, w, spec, iters, secs, "dsync", fmt)
            if fmt == "st":
                out["commits"].append(("/sync W=%d %s" % (w, spec), c0, store_counters(d)))
    finally:
        d.stop()
    return out


def fsync_floor_us(where, n=200):
    """Median time of a 4 KiB append + fdatasync in 'where': what any commit that must survive
    a power cut pays at least, whatever the store."""
    path = os.path.join(where, "fsync-floor")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block, times = b"\0" * 4096, []
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return sorted(times)[n // 2] * 1e6


def body(build, spec, fmt, worker, world):
    p = subprocess.run([os.path.join(build, "bench", "loadgen"), "body", "--layers", spec,
                        "--format", fmt, "--worker", str(worker), "--workers", str(world)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    at = int(re.search(rb"step_offset=(\d+)", p.stderr).group(1))
    return bytearray(p.stdout), at


class Client:
    """One keep-alive connection for a few hundred requests from Python."""

    def __init__(self, port):
        self.port = port
        self.c = None

    def post(self, path, data, ctype="application/safetensors"):
        for attempt in (0, 1):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.c.request("POST", path, body=bytes(data), headers={"Content-Type": ctype})
                r = self.c.getresponse()
                out = r.status, r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.c.close()
                    self.c = None
                return out
            except (http.client.HTTPException, OSError):
                if self.c is not None:
                    self.c.close()
                self.c = None
                if attempt:
                    raise


def set_step(b, at, k):
    b[at:at + 7] = b"%07d" % (1000000 + k)


def scale(build, a, secs, tmp):
    nsd = os.path.join(build, "bin", "normstatd")
    rows = []
    N_RUNS, N_PEND = 50, 100
    d = Server([nsd, "--listen", "127.0.0.1:0", "--no-persist"], "normstatd")
    try:
        cl = Client(d.port)
        b1, at1 = body(build, "resnet50", "st", 0, 1)
        cl.post("/v1/runs/warm/batches", b1)  # first-touch costs outside the measurement
        time.sleep(0.2)
        rss0, m0 = rss_bytes(d.pid), metric(d, "normstat_memory_bytes")
        for i in range(N_RUNS):
            st, _ = cl.post("/v1/runs/mrun%d/batches" % i, b1)
            if st != 202:
                ERRORS.append("scale: run %d got %d" % (i, st))
        time.sleep(0.2)
        rss1, m1 = rss_bytes(d.pid), metric(d, "normstat_memory_bytes")
        d.request("PUT", "/v1/runs/pend", b'{"world_size": 2}')
        b2, at2 = body(build, "resnet50", "st", 0, 2)
        for k in range(N_PEND):
            set_step(b2, at2, k)
            st, _ = cl.post("/v1/runs/pend/batches", b2)
            if st != 202:
                ERRORS.append("scale: pending step %d got %d" % (k, st))
        time.sleep(0.2)
        rss2, m2 = rss_bytes(d.pid), metric(d, "normstat_memory_bytes")
        # Steps seen: 1k then 10k finalized steps of a small run.
        r1 = run_loadgen(build, "ingest", "--port", d.port, "--pid", d.pid, "--format", "st",
                         "--conns", 1, "--layers", "1x256", "--max", 1000, "--seconds", 60,
                         "--run", "steps", "--run-exact", 1)
        rss_1k, m_1k = rss_bytes(d.pid), metric(d, "normstat_memory_bytes")
        r2 = run_loadgen(build, "ingest", "--port", d.port, "--pid", d.pid, "--format", "st",
                         "--conns", 1, "--layers", "1x256", "--max", 9000, "--seconds", 60,
                         "--run", "steps", "--run-exact", 1, "--first-step", 1000)
        rss_10k, m_10k = rss_bytes(d.pid), metric(d, "normstat_memory_bytes")
        steps_ok = r1.get("ok", 0) + r2.get("ok", 0)
    finally:
        d.stop()
    mb = 1e6
    rows.append(["per run (ResNet-50 layers, after one step; %d runs)" % N_RUNS,
                 f((rss1 - rss0) / N_RUNS / mb, "%.3f"), f((m1 - m0) / N_RUNS / mb, "%.3f"),
                 "26,560 ch: %.1f B/ch (metric)" % ((m1 - m0) / N_RUNS / 26560)])
    rows.append(["per pending step (ResNet-50, 1 of 2 workers; %d steps)" % N_PEND,
                 f((rss2 - rss1) / N_PEND / mb, "%.3f"), f((m2 - m1) / N_PEND / mb, "%.3f"),
                 "%.1f B/ch (metric); report body %d B" % ((m2 - m1) / N_PEND / 26560, len(b2))])
    rows.append(["after 1k steps seen (1 x 256 ch, total)", f(rss_1k / mb, "%.2f"),
                 f(m_1k / mb, "%.3f"), ""])
    rows.append(["after 10k steps seen (total; %d accepted)" % steps_ok, f(rss_10k / mb, "%.2f"),
                 f(m_10k / mb, "%.3f"),
                 "RSS 10k/1k = %s; metric 10k/1k = %s" % (f(ratio(rss_10k, rss_1k), "%.3f"),
                                                         f(ratio(m_10k, m_1k), "%.3f"))])
    table("4a. Scale: memory (RSS from /proc/PID/status; metric = normstat_memory_bytes)",
          ["what", "RSS MB", "metric MB", "note"], rows)

    # Budget: pending steps until 429.
    budget = 8 * 1024 * 1024
    d = Server([nsd, "--listen", "127.0.0.1:0", "--no-persist", "--max-memory", str(budget)],
               "normstatd")
    try:
        cl = Client(d.port)
        d.request("PUT", "/v1/runs/budget", b'{"world_size": 2}')
        b2, at2 = body(build, "resnet50", "st", 0, 2)
        first429, code, accepted = None, "", 0
        for k in range(400):
            set_step(b2, at2, k)
            st, resp = cl.post("/v1/runs/budget/batches", b2)
            if st == 429:
                first429 = k
                m = re.search(rb'"code"\s*:\s*"([^"]+)"', resp)
                code = m.group(1).decode() if m else "?"
                break
            if st == 202:
                accepted += 1
        mem = metric(d, "normstat_memory_bytes")
        rej = metric(d, 'normstat_rejections_total{reason="memory_budget"}')
    finally:
        d.stop()
    ok = first429 is not None and code == "memory_budget" and mem <= budget and rej >= 1
    table("4b. Scale: memory budget (--max-memory %d = 8 MiB; pending ResNet-50 steps of a "
          "2-worker run, one worker reporting)" % budget,
          ["target", "measured", "result"],
          [["memory per pending step bounded by --max-memory; 429 + reason memory_budget",
            "%d steps accepted, then %s (code %s); normstat_memory_bytes %s <= %d; "
            "rejections{reason=\"memory_budget\"} %s"
            % (accepted, "429" if first429 is not None else "no 429", code or "-",
               f(mem), budget, f(rej)), met(ok)]])

    # Cost growth: workers and channels (server CPU per report, safetensors).
    d = Server([nsd, "--listen", "127.0.0.1:0", "--no-persist"], "normstatd")
    rows = []
    try:
        base = None
        for w in (1, 4, 16, 64):
            r = run_loadgen(build, "ingest", "--port", d.port, "--pid", d.pid, "--format", "st",
                            "--conns", a.conns, "--layers", "1x4096", "--workers", w,
                            "--seconds", secs / 2, "--run", "w%d" % w)
            us = per_report_us(r)
            base = base if base is not None else us
            rows.append(["W=%d (1 layer x 4096 ch)" % w, f(r.get("rps"), "%.0f"),
                         f(us, "%.1f"), f(us * w, "%.1f"),
                         f(ratio(us * w, base), "%.2f") + " (W = %d)" % w])
        table("4c. Scale: cost vs workers (server CPU per report; a step = W reports)",
              ["case", "reports/s", "server CPU us/report", "us/step", "step cost vs W=1"],
              rows)
        rows = []
        base = None
        for c in (64, 1024, 16384, 65536):
            r = run_loadgen(build, "ingest", "--port", d.port, "--pid", d.pid, "--format", "st",
                            "--conns", a.conns, "--layers", "1x%d" % c, "--seconds", secs / 2,
                            "--run", "c%d" % c)
            us = per_report_us(r)
            base = base if base is not None else us
            rows.append(["C=%d" % c, f(r.get("rps"), "%.0f"), f(us, "%.1f"),
                         f(us * 1000 / c, "%.2f"),
                         f(ratio(us, base), "%.2f") + " (C x %d)" % (c // 64)])
        table("4d. Scale: cost vs channels (1 layer, W=1, safetensors)",
              ["case", "reports/s", "server CPU us/report", "ns/channel",
               "cost vs C=64"], rows)
    finally:
        d.stop()


if __name__ == "__main__":
    main()
