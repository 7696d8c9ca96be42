"""test_client.py - normstat.Client and the layer-name rules against a real normstatd.

  * normstat.safetensors: known-answer layout checked with struct + json,
    round trip, and refusal of malformed buffers.
  * Layer names: a real DistributedDataParallel wrapper (gloo, world size 1)
    and torch.compile-style "_orig_mod" wrappers report the plain module
    paths; load_stats reports missing and extra layers, refuses a channel
    mismatch, and strict=True refuses both.
  * Errors: each rejection raises the normstat.Error subclass of its status
    with the server's code and message, compared with the error body of the
    same request sent here with http.client (duplicate_report, stale_step,
    channel_mismatch, worker_out_of_range, bad_value, bad_request,
    not_found); transport failures carry status None.
  * /sync: a step that times out answers incomplete ("partial") or raises
    SyncTimeout 504 ("drop"); a /sync waiting when the daemon gets SIGTERM
    raises Unavailable 503 shutting_down.
  * Encodings: the same reports sent as safetensors and as JSON give
    identical /sync answers and identical statistics (ema, precise, last).
  * Retries, through a proxy here that misbehaves on purpose: a report whose
    answer is lost is sent again and counts once (409 duplicate_report and
    stale_step after a retry are success); a keep-alive connection the
    server closed while idle is replaced before a non-idempotent request.
  * StatsReporter(strict=True): a failed background report is raised (ReporterError,
    with the server's status and code) by the next step() and by close(),
    but never masks an exception leaving its with-block.
  * Every other endpoint: list/get/delete runs, drift and history (against
    a float64 recomputation), checkpoint get/put, livez,
    readyz, metrics, version, one keep-alive connection for many calls.
"""

import http.client
import json
import socket
import struct
import threading

import harness as h
import normstat
from normstat import safetensors as st
from normstat.torch import StatsReporter, layer_name, load_stats

import torch
from torch import nn


def raw(d, method, path, body=None, ctype="application/json"):
    """(status, parsed JSON body) of one request sent with http.client."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    hdrs = {"Content-Type": ctype} if body is not None else {}
    conn.request(method, path, body=body, headers=hdrs)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data


def expect_error(checks, d, desc, call, cls, status, code, raw_req):
    """call() must raise cls with status/code, and .message equal to the
    message of the same request sent raw (raw_req = (method, path, body,
    ctype)); raw_req is sent after call() so both meet the same state."""
    try:
        call()
    except normstat.Error as e:
        rs, rb = raw(d, *raw_req)
        rerr = rb.get("error", {}) if isinstance(rb, dict) else {}
        checks.check(isinstance(e, cls), f"{desc}: raises {cls.__name__}", f"got {type(e).__name__}: {e}")
        checks.eq((e.status, e.code), (status, code), f"{desc}: status and code")
        checks.eq((e.status, e.code, e.message), (rs, rerr.get("code"), rerr.get("message")),
                  f"{desc}: status, code and message are the server's")
        checks.check(bool(e.message), f"{desc}: message non-empty ({e.message!r})")
        return e
    checks.check(False, f"{desc}: raises {cls.__name__}", "no exception")
    return None


# ---------------------------------------------------------------- a misbehaving proxy


class Proxy:
    """HTTP/1.1 proxy to the daemon. For each request, action(index,
    method, path) says: "pass", "lose_answer" (forward, then close the
    client connection without answering) or "close_after" (answer, then
    close the client connection, as a server closing an idle connection)."""

    def __init__(self, port, action):
        self.port_up = port
        self.action = action
        self.index = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        up = http.client.HTTPConnection("127.0.0.1", self.port_up, timeout=10)
        f = s.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                hdrs = {}
                while True:
                    hl = f.readline().decode()
                    if hl in ("\r\n", "\n", ""):
                        break
                    k, v = hl.split(":", 1)
                    hdrs[k.strip()] = v.strip()
                n = int(hdrs.get("Content-Length", "0"))
                body = f.read(n) if n else None
                with self.lock:
                    i = self.index
                    self.index += 1
                act = self.action(i, method, path)
                fwd = {k: v for k, v in hdrs.items() if k.lower() in ("content-type", "accept")}
                up.request(method, path, body=body, headers=fwd)
                r = up.getresponse()
                data = r.read()
                if act == "lose_answer":
                    return
                head = f"HTTP/1.1 {r.status} {r.reason}\r\n"
                for k, v in r.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        head += f"{k}: {v}\r\n"
                head += f"Content-Length: {len(data)}\r\n\r\n"
                s.sendall(head.encode() + data)
                if act == "close_after":
                    return
        except (OSError, ValueError):
            return
        finally:
            up.close()
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------- parts


def names(checks, d):
    checks.eq([layer_name(p) for p in ("module.layer1.0.bn1", "_orig_mod.bn", "module._orig_mod.a.bn",
                                        "_orig_mod.module.x", "a._orig_mod.b", "bn")],
              ["layer1.0.bn1", "bn", "a.bn", "x", "a.b", "bn"], "layer_name strips wrapper prefixes")
    import torch.distributed as dist

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        plain = sorted(h.bn_names(h.make_model("cnn")))
        ddp = nn.parallel.DistributedDataParallel(h.make_model("cnn"))

        class Compiled(nn.Module):  # torch.compile's OptimizedModule keeps the model as _orig_mod
            def __init__(self, m):
                super().__init__()
                self._orig_mod = m

            def forward(self, x):
                return self._orig_mod(x)

        wrapped = {"DDP": ddp, "_orig_mod": Compiled(h.make_model("cnn")),
                   "DDP(_orig_mod)": nn.parallel.DistributedDataParallel(Compiled(h.make_model("cnn")))}
        for tag, model in wrapped.items():
            run = h.run_name("names")
            c = d.client()
            c.put_run(run, world_size=1)
            with StatsReporter(model, c, run, 0, 1) as rep:
                x, y = h.make_batch("cnn", 8, torch.Generator().manual_seed(1))
                model(x).sum().backward()
                rep.step(0)
            got = sorted(c.get_run(run)["status"]["layers"])
            checks.eq(got, plain, f"{tag}: reported layer names are the plain module paths")
            fresh = h.make_model("cnn", seed=3)
            res = load_stats(fresh, c, run)
            checks.eq((res.missing, res.extra), ([], []), f"{tag}: a plain evaluator model loads every layer")
            res = load_stats(model, c, run)
            checks.eq((res.missing, res.extra), ([], []), f"{tag}: the wrapped model loads every layer")
            c.close()
    finally:
        dist.destroy_process_group()

    # missing / extra / channel mismatch / strict
    run = h.run_name("missing")
    c = d.client()
    model = h.make_model("cnn")
    with StatsReporter(model, c, run, 0, 1) as rep:
        model(h.make_batch("cnn", 8, torch.Generator().manual_seed(2))[0])
        rep.step(0)

    class Variant(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = h.make_model("cnn").features  # features.1, features.4 served
            self.other = nn.BatchNorm1d(5)  # not served
            self.untracked = nn.BatchNorm1d(5, track_running_stats=False)  # no buffers to load

    v = Variant()
    before = v.other.running_mean.clone()
    res = load_stats(v, c, run)
    checks.eq((res.missing, res.extra), (["other"], ["head.1"]), "load_stats: missing and extra layers")
    checks.check(torch.equal(v.other.running_mean, before), "load_stats: a missing layer is left alone")
    served = c.stats(run)["layers"]["features.4"]["running_var"]
    checks.close(v.features[4].running_var, torch.tensor(served, dtype=torch.float32),
                 "load_stats: present layers loaded", rtol=0, atol=0)
    try:
        load_stats(Variant(), c, run, strict=True)
        checks.check(False, "load_stats(strict=True) refuses missing/extra", "no exception")
    except KeyError:
        checks.check(True, "load_stats(strict=True) refuses missing/extra")
    bad = h.make_model("cnn")
    bad.head[1] = nn.BatchNorm1d(7)
    try:
        load_stats(bad, c, run)
        checks.check(False, "load_stats refuses a channel mismatch", "no exception")
    except ValueError as e:
        checks.check("head.1" in str(e), "load_stats refuses a channel mismatch", str(e))
    c.close()


def report_body(step, worker, layers, fmt, **meta):
    """A report body encoded here, independently of the client."""
    if fmt == "json":
        body = {"step": step, "worker": worker, **meta, "layers": layers}
        return json.dumps(body).encode(), "application/json"
    tensors, md = {}, {"step": str(step), "worker": str(worker)}
    for k, v in meta.items():
        md[k] = ",".join(v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else str(v)
    for name, l in layers.items():
        tensors[f"{name}.count"] = ("I64", [], [l["count"]])
        if "mean" in l:
            tensors[f"{name}.mean"] = ("F32", [len(l["mean"])], struct.pack(f"<{len(l['mean'])}f", *l["mean"]))
            tensors[f"{name}.var"] = ("F32", [len(l["var"])], struct.pack(f"<{len(l['var'])}f", *l["var"]))
    return st.encode(tensors, md), "application/safetensors"


def errors(checks, d):
    c = d.client()
    run = h.run_name("errors")
    c.put_run(run, world_size=2)
    L = {"bn": {"count": 4, "mean": [0.5, 1.0, 1.5], "var": [1.0, 2.0, 0.5]}}
    c.report(run, 0, 0, L)
    path = f"/v1/runs/{run}/batches"
    for fmt in ("safetensors", "json"):
        expect_error(checks, d, f"second report of worker 0, step 0 ({fmt})",
                     lambda: c.report(run, 0, 0, L, fmt=fmt), normstat.Conflict, 409, "duplicate_report",
                     ("POST", path) + report_body(0, 0, L, fmt))
    expect_error(checks, d, "worker 5 of world_size 2", lambda: c.report(run, 0, 5, L),
                 normstat.Conflict, 409, "worker_out_of_range", ("POST", path) + report_body(0, 5, L, "json"))
    L4 = {"bn": {"count": 4, "mean": [0.5] * 4, "var": [1.0] * 4}}
    expect_error(checks, d, "4 channels for a 3-channel layer", lambda: c.report(run, 1, 0, L4),
                 normstat.Conflict, 409, "channel_mismatch", ("POST", path) + report_body(1, 0, L4, "json"))
    c.report(run, 0, 1, L)  # completes step 0
    expect_error(checks, d, "report of a finalized step", lambda: c.report(run, 0, 1, L),
                 normstat.Conflict, 409, "stale_step", ("POST", path) + report_body(0, 1, L, "json"))
    Lnan = {"bn": {"count": 4, "mean": [0.5, float("nan"), 1.5], "var": [1.0, 2.0, 0.5]}}
    expect_error(checks, d, "NaN mean (safetensors)", lambda: c.report(run, 2, 0, Lnan),
                 normstat.InvalidValue, 422, "bad_value",
                 ("POST", path) + report_body(2, 0, Lnan, "safetensors"))
    Lneg = {"bn": {"count": 4, "mean": [0.5, 1.0, 1.5], "var": [1.0, -2.0, 0.5]}}
    expect_error(checks, d, "negative variance (JSON)", lambda: c.report(run, 2, 0, Lneg, fmt="json"),
                 normstat.InvalidValue, 422, "bad_value", ("POST", path) + report_body(2, 0, Lneg, "json"))
    expect_error(checks, d, "momentum 2 in PUT", lambda: c.put_run(run, momentum=2.0),
                 normstat.BadRequest, 400, "bad_request",
                 ("PUT", f"/v1/runs/{run}", b'{"momentum": 2.0}', "application/json"))
    expect_error(checks, d, "GET of a run that does not exist", lambda: c.get_run("no-such-run"),
                 normstat.NotFound, 404, "not_found", ("GET", "/v1/runs/no-such-run", None, None))
    expect_error(checks, d, "invalid run name", lambda: c.get_run("bad name!"),
                 normstat.Error, 400, "bad_request", ("GET", "/v1/runs/bad%20name%21", None, None))
    expect_error(checks, d, "stats of a run that does not exist", lambda: c.stats("no-such-run"),
                 normstat.NotFound, 404, "not_found", ("GET", "/v1/runs/no-such-run/stats", None, None))
    # a rejected report changed nothing: step 2 can still be reported
    c.report(run, 2, 0, L)
    checks.check(True, "a rejected report leaves the step open")
    # transport errors
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    try:
        normstat.Client(f"http://127.0.0.1:{dead}", timeout=2).livez()
        checks.check(False, "refused connection raises ConnectionFailed", "no exception")
    except normstat.ConnectionFailed as e:
        checks.eq((e.status, e.code), (None, "connection_failed"), "refused connection: status None")
    c.close()


def encodings(checks, d):
    """Identical reports as safetensors and as JSON give identical results."""
    gen = torch.Generator().manual_seed(5)
    runs = {}
    for fmt in ("safetensors", "json"):
        run = h.run_name(f"enc-{fmt}")
        runs[fmt] = run
        d.client().put_run(run, world_size=2, momentum=0.1)
    answers = {"safetensors": [], "json": []}
    for step in range(4):
        reps = []
        for w in range(2):
            layers = {}
            for name, C in (("a.bn", 5), ("b.bn", 3)):
                n = 0 if (step, w, name) == (1, 1, "a.bn") else 3 + step + w
                mean = (torch.randn(C, generator=gen) * 3).tolist()
                var = (torch.rand(C, generator=gen) * 2).tolist()
                layers[name] = {"count": n, "mean": mean, "var": var} if n else {"count": 0}
            reps.append(layers)
        for fmt, run in runs.items():
            cls = [d.client(fmt=fmt) for _ in range(2)]
            out = [None, None]

            def go(w, fmt=fmt, run=run, cls=cls, out=out):
                out[w] = cls[w].sync(run, step, w, reps[w], update=["ema", "precise"],
                                     unbiased=(step == 2))

            ts = [threading.Thread(target=go, args=(w,)) for w in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(timeout=20)
            answers[fmt].append(out)
    checks.eq(answers["json"], answers["safetensors"], "/sync answers: safetensors = JSON")
    c = d.client()
    for source in ("ema", "precise", "last"):
        a = c.stats(runs["safetensors"], source=source)
        b = c.stats(runs["json"], source=source)
        a.pop("run"), b.pop("run")
        checks.eq(a, b, f"stats source={source}: safetensors-reported run = JSON-reported run")
        checks.check(len(a["layers"]) == 2, f"stats source={source}: both layers served", f"{a}")
        ta, ma = st.decode(c.stats(runs["safetensors"], source=source, format="safetensors"))
        tb, mb = st.decode(c.stats(runs["json"], source=source, format="safetensors"))
        checks.eq({k: (v.dtype, v.shape, v.data) for k, v in ta.items()},
                  {k: (v.dtype, v.shape, v.data) for k, v in tb.items()},
                  f"stats source={source} as safetensors: identical tensors")
        for layer, vals in a["layers"].items():
            for key, val in vals.items():
                t = ta.get(f"{layer}.{key}")
                if isinstance(val, list) and t is not None:
                    # JSON carries float32 values in 9 significant digits: exact after narrowing
                    checks.close(t.values(), torch.tensor(val, dtype=torch.float32),
                                 f"{source} {layer}.{key}: safetensors = JSON download", rtol=0, atol=0)
    c.close()


def retries(checks, d):
    for world in (2, 1):
        run = h.run_name(f"retry{world}")
        d.client().put_run(run, world_size=world)
        # request 0: GET (opens the connection); request 1: the report, whose answer is lost
        px = Proxy(d.port, lambda i, m, p: "lose_answer" if i == 1 else "pass")
        c = normstat.Client(f"http://127.0.0.1:{px.port}", timeout=10)
        c.get_run(run)
        L = {"bn": {"count": 5, "mean": [1.0, 2.0], "var": [0.5, 0.25]}}
        try:
            c.report(run, 0, 0, L)
            checks.check(True, f"world_size {world}: report with a lost answer succeeds after one retry")
        except normstat.Error as e:
            checks.check(False, f"world_size {world}: report with a lost answer succeeds after one retry",
                         f"{type(e).__name__}: {e}")
        checks.eq(c.reconnects, 1, f"world_size {world}: one reconnect")
        info = d.client().get_run(run)
        checks.eq(info["status"]["workers"][0]["step"], 0, f"world_size {world}: worker 0 at step 0")
        if world == 1:
            checks.eq(info["status"]["layers"]["bn"]["num_batches_tracked"], 1,
                      "world_size 1: the retried report counted once")
        else:
            pend = [(p["step"], p["arrived"]) for p in info["status"]["pending"]]
            checks.eq(pend, [(0, [0])], "world_size 2: one arrival pending")
        c.close()
        px.close()
    # the server closes an idle keep-alive connection: precise_reset (never repeated) still works
    run = h.run_name("idle")
    d.client().put_run(run)
    px = Proxy(d.port, lambda i, m, p: "close_after" if i == 0 else "pass")
    c = normstat.Client(f"http://127.0.0.1:{px.port}", timeout=10)
    c.get_run(run)
    import time

    deadline = time.monotonic() + 5
    while not c._stale() and time.monotonic() < deadline:  # the close reaches us (bounded)
        time.sleep(0.01)
    gen = c.precise_reset(run)
    checks.eq(gen, 1, "precise_reset on a fresh connection after the server closed the idle one")
    checks.eq((c.reconnects, px.connections), (1, 2), "idle close: one reconnect, two connections")
    c.close()
    px.close()


def endpoints(checks, d):
    c = d.client()
    checks.eq((c.livez(), c.readyz()), (True, True), "livez and readyz")
    v = c.version()
    checks.check(isinstance(v, dict) and "version" in v, "version", f"{v}")
    run = h.run_name("ep")
    a = c.put_run(run, world_size=1, momentum=None, sync_timeout_ms=5000, on_timeout="partial",
                  ema_debias=False)
    checks.eq(a.created, True, "put_run creates (201)")
    b = c.put_run(run, momentum=0.2)
    checks.eq(b.created, False, "put_run updates (200)")
    checks.eq(c.get_run(run)["config"]["momentum"], 0.2, "get_run shows the update")
    checks.check(any(r.get("run") == run for r in c.list_runs()), "list_runs lists the run")
    sock = c._conn.sock
    for step in range(3):
        c.report(run, step, 0, {"bn": (4, [0.1 * step, 1.0], [1.0, 2.0])})
    checks.check(c._conn is not None and c._conn.sock is sock, "one keep-alive connection for many calls")
    drift_and_history(checks, c, run, momentum=0.2, steps=[
        (4, [0.1 * step, 1.0], [1.0, 2.0]) for step in range(3)])
    cp = c.checkpoint_get(run)
    run2 = h.run_name("ep-restored")
    c.checkpoint_put(run2, cp)
    s1, s2 = c.stats(run), c.stats(run2)
    s1.pop("run"), s2.pop("run")
    checks.eq(s2, s1, "checkpoint_get then checkpoint_put: the same statistics")
    m = c.metrics()
    checks.check("normstat_" in m and "# TYPE" in m, "metrics is Prometheus text")
    c.delete_run(run)
    try:
        c.get_run(run)
        checks.check(False, "delete_run: the run is gone", "still there")
    except normstat.NotFound:
        checks.check(True, "delete_run: the run is gone")
    c.delete_run(run, missing_ok=True)
    checks.check(True, "delete_run(missing_ok=True) of a deleted run")
    c.close()


def drift_and_history(checks, c, run, momentum, steps):
    """Client.drift and Client.history against PyTorch's EMA and the paper's
    PreciseBN recomputed here in float64 from the (count, mean, biased var)
    of one worker's steps."""
    C = len(steps[0][1])
    ema_m, ema_v, ema_after = [0.0] * C, [1.0] * C, []
    for n, mean, var in steps:
        ema_m = [(1 - momentum) * e + momentum * x for e, x in zip(ema_m, mean)]
        ema_v = [(1 - momentum) * e + momentum * x * n / (n - 1) for e, x in zip(ema_v, var)]
        ema_after.append((list(ema_m), list(ema_v)))
    N = sum(n for n, _, _ in steps)
    pop_m = [sum(n * m[c] for n, m, _ in steps) / N for c in range(C)]
    second = [sum(n * (m[c] ** 2 + v[c]) for n, m, v in steps) / N for c in range(C)]
    pop_v = [N / (N - 1) * (s - m * m) for s, m in zip(second, pop_m)]
    dist = [abs(e - p) / (v + 1e-5) ** 0.5 for e, p, v in zip(ema_m, pop_m, pop_v)]
    rows = c.drift(run)["layers"]
    checks.eq([(r["layer"], r["domain"]) for r in rows], [("bn", "default")], "drift: one row, the layer's")
    got = rows[0]["drift"] or {}
    checks.close([got.get("mean_max"), got.get("mean_avg")], [max(dist), sum(dist) / C],
                 "drift: EMA vs PreciseBN as recomputed here", rtol=1e-12)
    pooled = c.drift(run, domain="*")["layers"]
    checks.eq([(r["layer"], r["domain"], r["drift"]) for r in pooled], [("bn", "*", rows[0]["drift"])],
              "drift(domain='*'): the pooled row, the only domain's drift")
    for ch in range(C):
        hist = c.history(run, "bn", channel=ch)
        checks.eq([s["step"] for s in hist["steps"]], list(range(len(steps))), f"history channel {ch}: steps")
        checks.close([x for s in hist["steps"] for x in (s["batch_mean"], s["ema_mean"], s["ema_var"])],
                     [x for (n, m, v), (em, ev) in zip(steps, ema_after) for x in (m[ch], em[ch], ev[ch])],
                     f"history channel {ch}: batch mean, EMA after each step (float32)", rtol=3e-7)
        checks.close([hist["population"]["mean"], hist["population"]["var"]], [pop_m[ch], pop_v[ch]],
                     f"history channel {ch}: PreciseBN now", rtol=1e-12)
    for desc, call, field in (("history of an unknown layer", lambda: c.history(run, "nope"), "layer"),
                              ("drift of an unknown domain", lambda: c.drift(run, domain="zz"), "domain")):
        try:
            call()
            checks.check(False, f"{desc} raises NotFound", "no exception")
        except normstat.NotFound as e:
            checks.check(e.message.startswith(field + ":"), f"{desc} raises NotFound naming {field}", e.message)


def reporter_errors(checks, d):
    """A failed background report surfaces on the next step() and on close()."""
    run = h.run_name("rep-err")
    c = d.client()
    c.put_run(run, world_size=2)
    model = h.make_model("mlp")
    x = h.make_batch("mlp", 6, torch.Generator().manual_seed(3))[0]
    rep = StatsReporter(model, c, run, rank=2, world_size=2, strict=True)  # rank outside world_size
    model(x)
    rep.step(0)
    rep.flush(raise_errors=False)  # the background report has been answered
    model(x)
    try:
        rep.step(1)
        checks.check(False, "reporter: next step() raises the background error", "no exception")
    except normstat.ReporterError as e:
        checks.eq((e.step, e.status, e.code), (0, 409, "worker_out_of_range"),
                  "reporter: next step() raises ReporterError(step 0, 409 worker_out_of_range)")
        checks.check(isinstance(e.__cause__, normstat.Conflict), "reporter: the cause is the Conflict",
                     repr(e.__cause__))
    try:
        rep.close()
        checks.check(False, "reporter: close() raises the error of step 1", "no exception")
    except normstat.ReporterError as e:
        checks.eq(e.step, 1, "reporter: close() raises the error of step 1")
    try:
        with StatsReporter(model, c, run, rank=3, world_size=2, strict=True) as rep2:
            model(x)
            rep2.step(0)
            raise KeyError("training failed")
    except KeyError:
        checks.check(True, "reporter: an exception in the with-block is not masked by a report error")
    except normstat.Error as e:
        checks.check(False, "reporter: an exception in the with-block is not masked by a report error", repr(e))
    try:
        StatsReporter(nn.Linear(2, 2), c, run, 0, 2)
        checks.check(False, "reporter: a model without BatchNorm is refused", "no exception")
    except ValueError:
        checks.check(True, "reporter: a model without BatchNorm is refused")
    c.close()


def timeouts(checks, d):
    """A /sync whose step never completes: partial answer, or 504 with drop."""
    c = d.client()
    run = h.run_name("partial")
    c.put_run(run, world_size=2, sync_timeout_ms=300, on_timeout="partial")
    L = {"bn": {"count": 4, "mean": [1.0, 2.0], "var": [0.5, 0.5]}}
    ans = c.sync(run, 0, 0, L)
    checks.eq((ans["complete"], ans["workers"], ans["layers"]["bn"]["count"]), (False, 1, 4),
              "sync_timeout with partial: incomplete answer from the one worker")
    run = h.run_name("drop")
    c.put_run(run, world_size=2, sync_timeout_ms=300, on_timeout="drop")
    try:
        c.sync(run, 0, 0, L)
        checks.check(False, "sync_timeout with drop raises SyncTimeout", "no exception")
    except normstat.SyncTimeout as e:
        checks.eq((e.status, e.code), (504, "sync_timeout"), "sync_timeout with drop raises SyncTimeout 504")
    except normstat.Error as e:
        checks.check(False, "sync_timeout with drop raises SyncTimeout", repr(e))
    c.close()


def shutdown(checks):
    """A /sync waiting when the daemon gets SIGTERM raises Unavailable."""
    d = h.start_daemon()
    c = d.client()
    run = h.run_name("shutdown")
    c.put_run(run, world_size=2)
    got = []

    def wait():
        try:
            got.append(c.sync(run, 0, 0, {"bn": (4, [1.0], [0.5])}))
        except normstat.Error as e:
            got.append(e)

    t = threading.Thread(target=wait)
    t.start()
    import time

    deadline = time.monotonic() + 10  # the waiter has arrived (bounded)
    while time.monotonic() < deadline:
        if d.client().get_run(run)["status"]["pending"]:
            break
        time.sleep(0.02)
    rc = d.stop()
    t.join(timeout=15)
    e = got[0] if got else None
    checks.check(isinstance(e, normstat.Unavailable) and e.code == "shutting_down",
                 "a /sync waiting at SIGTERM raises Unavailable(503 shutting_down)", repr(e))
    checks.eq(rc, 0, "normstatd exit status after SIGTERM with a waiter")
    c.close()


def codec(checks, d):
    """normstat.safetensors against the format read by hand (struct + json),
    and its refusal of malformed buffers."""
    b = st.encode({"a.mean": ("F32", [2], [1.0, -2.5]), "a.count": ("I64", [], [5]),
                   "z": ("F64", [1, 2], [0.1, 1e300])}, {"step": 3, "unbiased": False})
    (hlen,) = struct.unpack_from("<Q", b)
    head = json.loads(b[8:8 + hlen])
    checks.eq((8 + hlen) % 8, 0, "codec: data area 8-byte aligned")
    checks.eq(head, {"__metadata__": {"step": "3", "unbiased": "false"},
                     "a.count": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]},
                     "a.mean": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
                     "z": {"dtype": "F64", "shape": [1, 2], "data_offsets": [16, 32]}},
              "codec: header (name order, offsets, metadata as strings)")
    data = b[8 + hlen:]
    checks.eq((struct.unpack("<q", data[0:8]), struct.unpack("<2f", data[8:16]), struct.unpack("<2d", data[16:32])),
              ((5,), (1.0, -2.5), (0.1, 1e300)), "codec: little-endian data")
    t, m = st.decode(b)
    checks.eq((t["a.count"].item(), t["a.mean"].values(), t["z"].values(), t["z"].shape, m),
              (5, [1.0, -2.5], [0.1, 1e300], [1, 2], {"step": "3", "unbiased": "false"}), "codec: round trip")

    def mk(header, data=b""):
        hb = json.dumps(header).encode()
        return struct.pack("<Q", len(hb)) + hb + data

    bad = {
        "shorter than 8 bytes": b"\x01\x00",
        "header length past the end": struct.pack("<Q", 100) + b"{}",
        "header not JSON": struct.pack("<Q", 3) + b"{x}",
        "header not an object": mk([1]),
        "offsets past the end": mk({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
        "size differs from shape": mk({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
        "gap": mk({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
        "overlap": mk({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                       "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "trailing bytes": mk({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8),
        "unknown dtype": mk({"a": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}, b"\0" * 2),
        "negative shape": mk({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}),
        "metadata not strings": mk({"__metadata__": {"step": 1}}),
        "extra tensor field": mk({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, b"\0" * 4),
    }
    for what, buf in bad.items():
        try:
            st.decode(buf)
            checks.check(False, f"codec: refuses {what}", "decoded")
        except st.SafetensorsError:
            checks.check(True, f"codec: refuses {what}")


def body(checks):
    d = h.start_daemon()
    for part in (codec, names, errors, reporter_errors, timeouts, encodings, retries, endpoints):
        print(f"-- {part.__name__}")
        try:
            part(checks, d)
        except Exception as e:
            import traceback

            traceback.print_exc()
            checks.check(False, f"{part.__name__}: no exception", f"{type(e).__name__}: {e}")
    h.stop_daemon(checks, d)
    shutdown(checks)


if __name__ == "__main__":
    h.main(body)
