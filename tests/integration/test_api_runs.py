"""test_api_runs.py - run management, routing, health, version, metrics, keep-alive.

Checks PUT /v1/runs/{run} (201 create, 200 update, each config field, bad
bodies 400 naming the field with the run unchanged), GET /v1/runs and
/v1/runs/{run}, DELETE (204, then 404), run-name validation, 404/405
routing, /livez /healthz /readyz, /v1/version, /metrics at start-up and
HTTP/1.1 keep-alive and the bytes of an accepted report's 202, against a
real normstatd.
"""

import json
import os
import re
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

DEFAULTS = {"world_size": 1, "momentum": 0.1, "sync_timeout_ms": 60000, "on_timeout": "partial",
            "ema_debias": False}
CONFIG_KEYS = set(DEFAULTS)

# Every rejection reason a client can cause with a report or PUT (the wire
# codes of proto/include/normstat/wire_errors.h); exported from start-up (doc/design.md).
REJECT_REASONS = ["bad_request", "channel_mismatch", "stale_step", "duplicate_report",
                  "bad_value", "worker_out_of_range", "conflict", "body_too_large",
                  "unsupported_media_type", "too_many_pending"]


def config_of(body):
    """The config object of GET /v1/runs/{run}."""
    cfg = body.get("config", body)
    return {k: cfg.get(k, "<absent>") for k in CONFIG_KEYS}


def parse_metrics(text):
    """Prometheus text exposition -> (samples [(name, labels, value)], types
    {family: type}, helps {family}); raises ValueError on a malformed line."""
    samples, types, helps = [], {}, set()
    rx = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$')
    lab = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# TYPE "):
            _, _, fam, typ = line.split(None, 3)
            types[fam] = typ.strip()
            continue
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        m = rx.match(line)
        if not m:
            raise ValueError(f"malformed metrics line: {line!r}")
        labels = {}
        if m.group(3):
            pos, s = 0, m.group(3)
            while pos < len(s):
                lm = lab.match(s, pos)
                if not lm:
                    raise ValueError(f"malformed labels in {line!r}")
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
        v = m.group(4)
        value = float("nan") if v == "NaN" else float(v)
        samples.append((m.group(1), labels, value))
    return samples, types, helps


def family_of(name, types):
    for suf in ("_total", "_bucket", "_sum", "_count", "_created", ""):
        if suf and name.endswith(suf) and name[: -len(suf)] in types:
            return name[: -len(suf)]
    return name


PER_RUN = "normstat_run_"


def rejection_counters(samples):
    """{reason: value} summed over the samples of families named *reject*
    with a 'reason' label (the per-run series, labelled 'run', count the same
    refusals again and are left out)."""
    out = {}
    for name, labels, value in samples:
        if "reason" in labels and "reject" in name and "run" not in labels:
            out[labels["reason"]] = out.get(labels["reason"], 0.0) + value
    return out


def report(step, worker=0, channels=3, layer="bn1", count=8):
    return {"step": step, "worker": worker,
            "layers": {layer: {"count": count, "mean": [0.5] * channels, "var": [2.0] * channels}}}


class Runs(nsd.Case):

    def test_create_update_each_field(self):
        run = nsd.run_name("cfg")
        r = self.c.put(f"/v1/runs/{run}", {})
        self.check_status(r, 201, "PUT new run with {}", must=True)
        r = self.c.get(f"/v1/runs/{run}")
        self.check_status(r, 200, "GET the new run", must=True)
        self.check_eq(r.json().get("run"), run, "GET run names the run")
        self.check_eq(config_of(r.json()), DEFAULTS, "a new run has the documented defaults")
        r = self.c.put(f"/v1/runs/{run}", b"", content_type="application/json")
        self.check_status(r, 200, "PUT existing run with an empty body (no change)")
        expect = dict(DEFAULTS)
        for field, value in (("world_size", 4), ("momentum", 0.25), ("momentum", None),
                             ("sync_timeout_ms", 1500), ("on_timeout", "drop"),
                             ("ema_debias", True), ("on_timeout", "partial"), ("momentum", 0.0),
                             ("momentum", 1.0), ("world_size", 1), ("ema_debias", False)):
            r = self.c.put(f"/v1/runs/{run}", {field: value})
            self.check_status(r, 200, f"PUT update {field}={value!r}")
            expect[field] = value
            if r.status == 200:
                self.check_eq(config_of(r.json()), expect, f"PUT {field}={value!r} answers the new config")
            got = config_of(self.c.get(f"/v1/runs/{run}").json())
            self.check_eq(got, expect, f"after {field}={value!r} only that field changed")
        full = {"world_size": 3, "momentum": 0.05, "sync_timeout_ms": 777, "on_timeout": "drop",
                "ema_debias": True}
        r = self.c.put(f"/v1/runs/{run}", full)
        self.check_status(r, 200, "PUT update with every field")
        self.check_eq(config_of(self.c.get(f"/v1/runs/{run}").json()), full, "every field updated")
        run2 = nsd.run_name("cfgfull")
        r = self.c.put(f"/v1/runs/{run2}", full)
        self.check_status(r, 201, "PUT create with every field")
        self.check_eq(config_of(self.c.get(f"/v1/runs/{run2}").json()), full, "created with every field")
        run3 = nsd.run_name("cfgnull")
        r = self.c.put(f"/v1/runs/{run3}", {"momentum": None})
        self.check_status(r, 201, "PUT create with momentum null")
        body = self.c.get(f"/v1/runs/{run3}").json()
        self.check(config_of(body)["momentum"] is None, "momentum null (cumulative) is served as null",
                   f"{body}")

    def test_bad_bodies(self):
        run = nsd.run_name("bad")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2, "momentum": 0.2}).status == 201,
                     "PUT create for the bad-body cases")
        cases = [({"world_size": 0}, "world_size"), ({"world_size": -1}, "world_size"),
                 ({"world_size": "4"}, "world_size"), ({"world_size": 1.5}, "world_size"),
                 ({"world_size": None}, "world_size"), ({"world_size": 2 ** 40}, "world_size"),
                 ({"momentum": 1.5}, "momentum"), ({"momentum": -0.1}, "momentum"),
                 ({"momentum": "0.1"}, "momentum"), ({"momentum": [0.1]}, "momentum"),
                 ({"sync_timeout_ms": 0}, "sync_timeout_ms"), ({"sync_timeout_ms": -5}, "sync_timeout_ms"),
                 ({"sync_timeout_ms": "100"}, "sync_timeout_ms"), ({"sync_timeout_ms": 2.5}, "sync_timeout_ms"),
                 ({"on_timeout": "later"}, "on_timeout"), ({"on_timeout": 1}, "on_timeout"),
                 ({"ema_debias": "yes"}, "ema_debias"), ({"ema_debias": 1}, "ema_debias"),
                 ({"colour": "red"}, "colour"),
                 ({"world_size": 3, "momentum": 7}, "momentum")]
        for body, field in cases:
            before = self.snapshot(run)
            r = self.c.put(f"/v1/runs/{run}", body)
            self.check_status(r, 400, f"PUT {body}", code="bad_request")
            msg = r.error_message() or ""
            self.check(field in msg, f"PUT {body}: message names '{field}'", f"message {msg!r}")
            self.check_unchanged(before, run, f"PUT {body}")
        for raw in (b"{", b"[]", b"null", b'"x"', b'{"world_size": 2,}', b'{"world_size": 2} x',
                    b'{"world_size": 2, "world_size": 3}'):
            before = self.snapshot(run)
            r = self.c.put(f"/v1/runs/{run}", raw, content_type="application/json")
            self.check_status(r, 400, f"PUT raw {raw!r}", code="bad_request")
            self.check_unchanged(before, run, f"PUT raw {raw!r}")
        fresh = nsd.run_name("never")
        r = self.c.put(f"/v1/runs/{fresh}", {"world_size": 0})
        self.check_status(r, 400, "PUT create with world_size 0", code="bad_request")
        self.check_status(self.c.get(f"/v1/runs/{fresh}"), 404, "a rejected create created nothing",
                          code="not_found")

    def test_list(self):
        names = [nsd.run_name("list") for _ in range(3)]
        for i, n in enumerate(names):
            self.require(self.c.put(f"/v1/runs/{n}", {"world_size": i + 1}).status == 201, f"create {n}")
        r = self.c.get("/v1/runs")
        self.check_status(r, 200, "GET /v1/runs", must=True)
        runs = r.json().get("runs")
        self.check(isinstance(runs, list), "GET /v1/runs has a 'runs' list", r.short())
        by = {x.get("run"): x for x in runs or []}
        for i, n in enumerate(names):
            self.check(n in by, f"list contains {n}")
            if n in by:
                self.check_eq(by[n].get("world_size"), i + 1, f"summary of {n} has its world_size")
        self.c.delete(f"/v1/runs/{names[0]}")
        listed = [x.get("run") for x in self.c.get("/v1/runs").json().get("runs", [])]
        self.check(names[0] not in listed and names[1] in listed, "a deleted run leaves the list")

    def test_get_run_status(self):
        run = nsd.run_name("status")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 2}).status == 201, "create world 2")
        for w in (0, 1):
            r = self.c.report(run, report(1, w))
            self.check_status(r, 202, f"/batches step 1 worker {w}")
        r = self.c.report(run, report(2, 0))
        self.check_status(r, 202, "/batches step 2 worker 0 (step 2 stays pending)")
        r = self.c.get(f"/v1/runs/{run}")
        self.check_status(r, 200, "GET run", must=True)
        st = r.json().get("status", {})
        lay = (st.get("layers") or {}).get("bn1", {})
        self.check_eq(lay.get("channels"), 3, "status: layer channels")
        self.check_eq(lay.get("step"), 1, "status: layer last applied step")
        self.check_eq(lay.get("num_batches_tracked"), 1, "status: layer num_batches_tracked")
        doms = [d.get("domain") if isinstance(d, dict) else d for d in st.get("domains", [])]
        self.check_eq(doms, ["default"], "status: domains")
        self.check_eq(st.get("skipped_steps"), 0, "status: skipped_steps")
        self.check(isinstance(st.get("precise_generation"), int), "status: precise_generation is an integer",
                   f"{st.get('precise_generation')!r}")
        pend = st.get("pending") or []
        self.check(len(pend) == 1 and pend[0].get("step") == 2 and pend[0].get("layer") == "bn1"
                   and pend[0].get("waiting_for") == [1] and pend[0].get("arrived") == [0],
                   "stall report: step 2 of bn1 waits for worker 1", f"{pend}")
        workers = {w.get("worker"): w for w in st.get("workers") or []}
        self.check(workers.get(0, {}).get("lag") == 0 and workers.get(1, {}).get("lag") == 1,
                   "stall report: worker 0 lags 0 steps, worker 1 lags 1", f"{st.get('workers')}")

    def test_delete(self):
        run = nsd.run_name("del")
        self.require(self.c.put(f"/v1/runs/{run}", {}).status == 201, "create")
        self.check_status(self.c.report(run, report(1)), 202, "a report to it")
        r = self.c.delete(f"/v1/runs/{run}")
        self.check_status(r, 204, "DELETE")
        self.check_eq(r.body, b"", "204 has an empty body")
        self.check_status(self.c.get(f"/v1/runs/{run}"), 404, "GET after DELETE", code="not_found")
        self.check_status(self.c.stats(run), 404, "GET stats after DELETE", code="not_found")
        self.check_status(self.c.delete(f"/v1/runs/{run}"), 404, "DELETE again", code="not_found")
        r = self.c.put(f"/v1/runs/{run}", {})
        self.check_status(r, 201, "PUT after DELETE creates it anew")
        nbt = self.c.stats(run).json().get("layers", {})
        self.check_eq(nbt, {}, "the re-created run has no layers (stored state was deleted)")

    def test_bad_run_names(self):
        for name in ("bad$name", "x" * 129, "bad%20name", "caf%C3%A9", "semi;colon", "q%3Fx"):
            r = self.c.put(f"/v1/runs/{name}", {})
            self.check_status(r, 400, f"PUT /v1/runs/{name[:20]}", code="bad_request")
            r = self.c.get(f"/v1/runs/{name}")
            self.check_status(r, 400, f"GET /v1/runs/{name[:20]}", code="bad_request")
            r = self.c.report(name, report(1))
            self.check_status(r, 400, f"POST /v1/runs/{name[:20]}/batches", code="bad_request")
        # an encoded slash is decoded before routing: the path has one more segment
        r = self.c.put("/v1/runs/a%2Fb", {})
        self.check(r.status in (400, 404), "PUT /v1/runs/a%2Fb -> 400 or 404", r.short())
        listed = [x.get("run") for x in self.c.get("/v1/runs").json().get("runs", [])]
        self.check(all(re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", x) for x in listed) and "a/b" not in listed,
                   "no badly named run was created", f"{listed}")
        for name in ("y" * 128, "A.b:c-d_e.0", "layer1.0.bn1"):
            r = self.c.put(f"/v1/runs/{name}", {})
            self.check(r.status in (200, 201), f"valid name {name[:20]}... accepted", r.short())
            self.c.delete(f"/v1/runs/{name}")

    def test_unknown_route_404(self):
        for path in ("/uix", "/v1", "/v1/nothing", "/v2/runs", "/v1/runs/a/unknown", "/v1/runs/a/stats/x",
                     "/v1/runs/a/precise", "/livez/x", "/metricsx"):
            r = self.c.get(path)
            self.check_status(r, 404, f"GET {path}", code="not_found")

    def test_wrong_method_405(self):
        for method, path in (("POST", "/v1/runs"), ("DELETE", "/v1/runs"), ("PATCH", "/v1/runs/a"),
                             ("POST", "/v1/runs/a"), ("GET", "/v1/runs/a/batches"),
                             ("GET", "/v1/runs/a/sync"), ("PUT", "/v1/runs/a/stats"),
                             ("GET", "/v1/runs/a/precise/reset"), ("POST", "/v1/runs/a/checkpoint"),
                             ("DELETE", "/livez"), ("POST", "/readyz"), ("POST", "/metrics"),
                             ("PUT", "/v1/version")):
            r = self.c.request(method, path, body=b"{}" if method in ("POST", "PUT", "PATCH") else None,
                               headers={"Content-Type": "application/json"})
            self.check_status(r, 405, f"{method} {path}", code="method_not_allowed")
            self.check("allow" in r.headers, f"{method} {path}: 405 carries an Allow header",
                       f"{r.header_list}")
        self.check_status(self.c.get("/v1/runs/a"), 404, "no run was created by those requests")

    def test_health(self):
        for path in ("/livez", "/healthz", "/readyz"):
            r = self.c.get(path)
            self.check_status(r, 200, f"GET {path}")
        r = self.c.request("HEAD", "/livez")
        self.check_status(r, 200, "HEAD /livez")

    def test_version(self):
        r = self.c.get("/v1/version")
        self.check_status(r, 200, "GET /v1/version", must=True)
        body = r.json()
        flat = " ".join(str(v) for v in _leaves(body))
        self.check(isinstance(body.get("version"), str) and re.match(r"^\d+\.\d+\.\d+", body["version"]),
                   "version is a semantic version string", f"{body}")
        kern = [v for v in _leaves(body) if v in ("avx2", "scalar", "neon")]
        self.check(bool(kern), "the SIMD kernel in use is named", flat)
        threads = {k: v for k, v in body.items() if "thread" in k}
        self.check(any(isinstance(v, int) and v >= 1 for v in threads.values()),
                   "OpenMP threads are reported", f"{body}")
        # a second daemon forced to the scalar reference names it
        d = nsd.Daemon(env=dict(os.environ, NS_SIMD="scalar")).start()
        try:
            c = d.client()
            b2 = c.get("/v1/version").json()
            c.close()
            self.check("scalar" in list(_leaves(b2)), "NS_SIMD=scalar: /v1/version names 'scalar'", f"{b2}")
        finally:
            self.check_eq(d.stop(), 0, "second daemon exits 0 on SIGTERM")

    def test_metrics_at_startup(self):
        d = nsd.Daemon().start()
        try:
            c = d.client()
            r = c.get("/metrics")
            self.check_status(r, 200, "GET /metrics")
            self.check(r.content_type == "text/plain", "metrics are text/plain", r.headers.get("content-type"))
            try:
                samples, types, helps = parse_metrics(r.body.decode())
                self.check(True, "exposition parses")
            except ValueError as e:
                self.check(False, "exposition parses", str(e))
                return
            fams = {family_of(n, types) for n, _, _ in samples}
            self.check(fams <= set(types), "every sample's family has a # TYPE line",
                       f"{sorted(fams - set(types))}")
            self.check(set(types) <= helps, "every family has a # HELP line", f"{sorted(set(types) - helps)}")
            documented = documented_families()
            if not documented:
                print("note test_metrics_at_startup: no metric family is documented yet "
                      "(README.md, proto/openapi.yaml); only the rejection counters are checked")
            for fam in documented:
                self.check(fam in types or fam + "_total" in types
                           or (fam.endswith("_total") and fam[:-6] in types),
                           f"documented family {fam} is exported")
            # a family labelled by request dimensions may only get its first series
            # when a request completes, which races with this first scrape; a second
            # scrape on the same keep-alive connection follows the first one's completion
            counters = [f for f, t in types.items() if t == "counter"]
            empty = [f for f in counters if not any(family_of(n, types) == f for n, _, _ in samples)]
            if empty:
                print(f"note test_metrics_at_startup: counter families without a series in the first "
                      f"scrape: {empty}")
            s2, t2, _ = parse_metrics(c.get("/metrics").body.decode())
            # per-run families (normstat_run_*) have series once a run exists
            # (tests/integration/test_api_health.py checks them)
            empty = [f for f, t in t2.items() if t == "counter" and not f.startswith(PER_RUN)
                     and not any(family_of(n, t2) == f for n, _, _ in s2)]
            self.check(not empty, "every counter family has a series (second scrape)", f"{empty}")
            table = documented_table()
            for fam, (typ, labels) in sorted(table.items()):
                fs = [lab for n, lab, _ in s2 if family_of(n, t2) == fam]
                extra = {"le"} if typ == "histogram" else set()
                bad = [lab for lab in fs if set(lab) - extra != set(labels)]
                self.check(t2.get(fam) == typ and (fs or fam.startswith(PER_RUN)) and not bad,
                           f"README's {fam}: type {typ}, labels {labels or '-'}",
                           f"type {t2.get(fam)}, {len(fs)} series, mismatched labels {bad[:2]}")
            if table:
                undocumented = sorted(f for f in t2 if f not in table)
                self.check(not undocumented, "every exported family is in README's table", f"{undocumented}")
            rej = rejection_counters(samples)
            for reason in REJECT_REASONS:
                self.check(rej.get(reason) == 0.0, f"rejection counter reason={reason} exported at 0",
                           f"{rej}")
            rfam = [n for n in types if "reject" in n]
            self.check(all(types[n] == "counter" for n in rfam) and rfam,
                       "rejection family is a counter", f"{[(n, types[n]) for n in rfam]}")
            # the counter moves (one rejected report, reason bad_request)
            c.post("/v1/runs/m/batches", b"{", content_type="application/json")
            rej2 = rejection_counters(parse_metrics(c.get("/metrics").body.decode())[0])
            self.check_eq(rej2.get("bad_request"), 1.0, "one malformed report counts bad_request 1")
            c.close()
        finally:
            self.check_eq(d.stop(), 0, "metrics daemon exits 0 on SIGTERM")

    def test_keepalive(self):
        c = self.client()
        r1 = c.get("/livez")
        sock1 = c.conn.sock if c.conn else None
        r2 = c.get("/v1/runs")
        sock2 = c.conn.sock if c.conn else None
        self.check(r1.status == 200 and r2.status == 200, "two requests on one connection succeed")
        self.check(sock1 is not None and sock1 is sock2 and c.reconnects == 0,
                   "the second request reused the first connection")
        for r in (r1, r2):
            self.check(r.headers.get("connection", "").lower() != "close",
                       f"{r.path}: no 'Connection: close'", f"{r.header_list}")
        # also after an error answer and a POST with a body
        r3 = c.post("/v1/runs/ka/batches", report(1))
        r4 = c.get("/v1/runs/ka/nothing")
        r5 = c.get("/v1/runs/ka")
        self.check(r3.status == 202 and r4.status == 404 and r5.status == 200
                   and c.conn is not None and c.conn.sock is sock1,
                   "keep-alive survives a POST and a 404", f"{r3.status} {r4.status} {r5.status}")
        # and a /sync answered after the connection was suspended (world_size 1 answers at once;
        # world_size 2 with the other worker first makes this one complete the step)
        c.put("/v1/runs/ka2", {"world_size": 2})
        self.client().post("/v1/runs/ka2/batches", report(1, worker=0))
        r6 = c.post("/v1/runs/ka2/sync", report(1, worker=1))
        r7 = c.get("/livez")
        self.check(r6.status == 200 and r7.status == 200 and c.conn is not None and c.conn.sock is sock1
                   and c.reconnects == 0, "keep-alive survives a /sync", f"{r6.short()} {r7.status}")
        # a /sync that really waits (suspended connection), answered when worker 0 arrives
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", c.post("/v1/runs/ka2/sync", report(2, worker=1))),
                             daemon=True)
        t.start()
        nsd.poll(lambda: self.client().get("/v1/runs/ka2").json()["status"]["pending"])
        self.client().post("/v1/runs/ka2/batches", report(2, worker=0))
        t.join(10)
        r8 = c.get("/livez")
        self.check(out.get("r") is not None and out["r"].status == 200 and r8.status == 200
                   and c.conn is not None and c.conn.sock is sock1 and c.reconnects == 0,
                   "keep-alive survives a suspended and resumed /sync",
                   f"{out.get('r') and out['r'].short()} {r8.status}")

    def test_batches_answer_bytes(self):
        """An accepted report's 202 is exactly the compact JSON of
        {"accepted", "step", "worker", "layers"} (written as text, without a
        tree): compared with Python's json.dumps, steps up to 2^63 - 1."""
        c = self.client()
        for step, worker in ((0, 0), (2**62 + 1, 3), (2**63 - 1, 7)):
            run = nsd.run_name("answer")
            c.put(f"/v1/runs/{run}", {"world_size": 8})
            layers = {"x": {"count": 2, "mean": [1.0], "var": [1.0]}, "y": {"count": 0}}
            r = c.post(f"/v1/runs/{run}/batches", {"step": step, "worker": worker, "layers": layers})
            want = json.dumps({"accepted": True, "step": step, "worker": worker, "layers": 2},
                              separators=(",", ":")).encode()
            self.check(r.status == 202 and r.body == want, f"202 of step {step}, worker {worker}",
                       f"{r.status} {r.body!r}, want {want!r}")


def _leaves(v):
    if isinstance(v, dict):
        for x in v.values():
            yield from _leaves(x)
    elif isinstance(v, list):
        for x in v:
            yield from _leaves(x)
    else:
        yield v


def documented_table():
    """README.md's metrics table (between the BEGIN/END metrics markers):
    {name: (type, [labels])}; {} when the README has none."""
    p = os.path.join(nsd.REPO, "README.md")
    if not os.path.exists(p):
        return {}
    with open(p) as f:
        text = f.read()
    m = re.search(r"<!-- BEGIN metrics.*?-->(.*?)<!-- END metrics", text, re.S)
    out = {}
    for line in (m.group(1) if m else "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            labels = re.findall(r"`([a-z_]+)`", cells[2])
            out[cells[0].strip("`")] = (cells[1], labels)
    return out


def documented_families():
    """Metric families the project documents: those listed in
    proto/openapi.yaml (x-metrics, or a /metrics description) or README.md
    as normstat_* names; empty if nothing is documented yet."""
    names = set()
    for path in ("proto/openapi.yaml", "README.md"):
        p = os.path.join(nsd.REPO, path)
        if os.path.exists(p):
            with open(p) as f:
                names |= set(re.findall(r"\b(normstat_[a-z0-9_]+)\b", f.read()))
    out = set()
    for n in names:
        for suf in ("_bucket", "_sum", "_count"):
            if n.endswith(suf) and n[: -len(suf)] in names:
                n = n[: -len(suf)]
        out.add(n)
    return sorted(out)


if __name__ == "__main__":
    nsd.main()
