"""test_routes_spec.py - normstatd's route table against proto/openapi.yaml, and its command line.

* `normstatd --routes` must list exactly the (method, path) pairs of the
  OpenAPI document's `paths`, and a daemon must answer every one of them with
  something other than 404/405, and a method the document does not list
  with 405 and an Allow header naming exactly the documented methods.
* Command line: bad values exit 2 with one line on stderr naming the flag or
  variable; flags override NORMSTAT_* variables; --probe exits 0 against a
  ready daemon and 1 against a closed port; SIGTERM exits 0.

Run from the repository root: /usr/bin/python3 tests/integration/test_routes_spec.py
(NS_BUILD=build/x selects another build directory). Every wait is bounded.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import unittest

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
TIMEOUT_S = 10


def binary():
    build = os.environ.get("NS_BUILD", "build")
    if not os.path.isabs(build):
        build = os.path.join(REPO, build)
    return os.path.join(build, "bin", "normstatd")


def spec_routes():
    with open(os.path.join(REPO, "proto", "openapi.yaml")) as f:
        doc = yaml.safe_load(f)
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}


def table_routes():
    out = subprocess.run([binary(), "--routes"], capture_output=True, text=True,
                         timeout=TIMEOUT_S, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    for row in rows:
        assert len(row) == 3, f"--routes line is not 'METHOD PATH LABEL': {row}"
    return {(r[0], r[1]) for r in rows}, [r[2] for r in rows]


class Daemon:
    """normstatd on an ephemeral loopback port; stop() returns the exit status."""

    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen(
            [binary(), "--listen", "127.0.0.1:0", "--no-persist", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=env if env is not None else {k: v for k, v in os.environ.items()
                                             if not k.startswith("NORMSTAT_")})
        self.port = None
        self.log = []
        deadline = time.monotonic() + TIMEOUT_S
        while self.port is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            # ready, not merely listening: /readyz answers 503 until then
            m = re.search(r"event=ready addr=127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("normstatd did not log event=ready: " + "".join(self.log))
        # Keep reading the log so the daemon never blocks on a full pipe.
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.reader.join(timeout=TIMEOUT_S)
        self.proc.stderr.close()
        return self.proc.returncode


def concrete(path):
    return path.replace("{run}", "r1")


class RouteTable(unittest.TestCase):
    def test_table_equals_spec(self):
        spec = spec_routes()
        table, labels = table_routes()
        self.assertTrue(spec, "no paths in proto/openapi.yaml")
        self.assertEqual(sorted(table - spec), [], "routes served but not documented")
        self.assertEqual(sorted(spec - table), [], "routes documented but not served")
        self.assertEqual(len(labels), len(set(labels)), "metrics labels repeat")

    def test_daemon_serves_spec(self):
        spec = spec_routes()
        d = Daemon()
        try:
            c = d.conn()
            by_path = {}
            for method, path in spec:
                by_path.setdefault(path, set()).add(method)
            for path, methods in sorted(by_path.items()):
                for method in sorted(methods):
                    body = b"{}" if method in ("PUT", "POST") else None
                    headers = {"Content-Type": "application/json"} if body else {}
                    c.request(method, concrete(path), body=body, headers=headers)
                    r = c.getresponse()
                    text = r.read().decode()
                    # Routed: any answer but 405, and a 404 only for the missing run.
                    self.assertNotEqual(r.status, 405, f"{method} {path}")
                    if r.status == 404:
                        self.assertNotIn("no route", text, f"{method} {path}")
                        self.assertIn("{run}", path, f"{method} {path}: {text}")
                # A method the document does not list: 405 with the documented ones in Allow.
                other = "PATCH"
                c.request(other, concrete(path))
                r = c.getresponse()
                r.read()
                self.assertEqual(r.status, 405, f"{other} {path}")
                allow = {m.strip() for m in (r.getheader("Allow") or "").split(",") if m.strip()}
                self.assertEqual(allow, methods, f"Allow of {path}")
            # An undocumented path is a routing 404.
            c.request("GET", "/v1/nothing")
            r = c.getresponse()
            self.assertEqual(r.status, 404)
            self.assertIn("no route", r.read().decode())
            c.close()
            self.assertEqual(d.stop(), 0)
        finally:
            if d.proc.poll() is None:
                d.proc.kill()


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*\})? (-?[0-9.e+-]+|\+Inf|NaN)$')


class Metrics(unittest.TestCase):
    """/metrics is valid Prometheus text: every sample belongs to a family with
    HELP and TYPE, rejection counters exist from start-up for every error code."""

    def test_exposition(self):
        d = Daemon()
        try:
            c = d.conn()
            c.request("GET", "/nope")  # one routing 404, counted
            c.getresponse().read()
            c.request("GET", "/metrics")
            r = c.getresponse()
            text = r.read().decode()
            self.assertEqual(r.status, 200)
            self.assertTrue(r.getheader("Content-Type").startswith("text/plain"))
            helps, types, samples = set(), {}, []
            for line in text.splitlines():
                if line.startswith("# HELP "):
                    helps.add(line.split()[2])
                elif line.startswith("# TYPE "):
                    _, _, name, kind = line.split()
                    self.assertIn(kind, ("counter", "gauge", "histogram", "summary", "untyped"))
                    types[name] = kind
                else:
                    m = SAMPLE.match(line)
                    self.assertIsNotNone(m, f"not a sample line: {line!r}")
                    samples.append((m.group(1), line))
            for name, line in samples:
                family = re.sub(r"_(bucket|sum|count)$", "", name)
                family = family if family in types else name
                self.assertIn(family, types, line)
                self.assertIn(family, helps, line)
            # Every wire code of NS_WIRE_ERROR_MAP, read from wire_errors.h independently.
            with open(os.path.join(REPO, "proto", "include", "normstat", "wire_errors.h")) as f:
                codes = re.findall(r'XX\((?:CORE|PROTO),\s*\w+,\s*-\d+,\s*\d+,\s*"([a-z_]+)"',
                                   f.read())
            self.assertGreater(len(codes), 10)
            for code in codes:
                self.assertRegex(text, rf'\nnormstat_rejections_total\{{reason="{code}"\}} \d+\n')
            self.assertIn('normstat_rejections_total{reason="not_found"} 1\n', text)
            self.assertIn('normstat_http_requests_total{route="unmatched",method="GET",status="404"} 1\n',
                          text)
            for name in ("normstat_steps_finalized_total", "normstat_steps_applied_total",
                         "normstat_steps_timed_out_total", "normstat_steps_dropped_total",
                         "normstat_steps_skipped_total", "normstat_pending_steps",
                         "normstat_sync_waiters", "normstat_runs", "normstat_memory_bytes",
                         "process_resident_memory_bytes", "process_start_time_seconds"):
                self.assertRegex(text, rf"\n{name} [0-9.e+]+\n")
            self.assertEqual(types["normstat_http_request_duration_seconds"], "histogram")
            # A request is counted before its answer is sent: every scrape that
            # follows an answered request counts it, whatever the scheduling.
            livez = re.compile(r'normstat_http_requests_total\{route="livez",method="GET",'
                               r'status="200"\} (\d+)\n')
            for n in range(1, 31):
                c.request("GET", "/livez")
                c.getresponse().read()
                c.request("GET", "/metrics")
                m = livez.search(c.getresponse().read().decode())
                self.assertIsNotNone(m)
                self.assertEqual(int(m.group(1)), n)
            c.close()
            self.assertEqual(d.stop(), 0)
        finally:
            if d.proc.poll() is None:
                d.proc.kill()


class CommandLine(unittest.TestCase):
    def run_bad(self, args, env_extra=None, names=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("NORMSTAT_")}
        env.update(env_extra or {})
        p = subprocess.run([binary(), *args], capture_output=True, text=True, env=env,
                           timeout=TIMEOUT_S)
        self.assertEqual(p.returncode, 2, f"{args} {env_extra}: {p.stderr}")
        lines = p.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, p.stderr)
        self.assertIn(names, lines[0])

    def test_bad_values_exit_2(self):
        self.run_bad(["--threads", "0"], names="--threads")
        self.run_bad(["--max-body", "12X"], names="--max-body")
        self.run_bad(["--listen", "localhost"], names="--listen")
        self.run_bad(["--log-level", "verbose"], names="--log-level")
        self.run_bad(["--frobnicate"], names="--frobnicate")
        self.run_bad([], {"NORMSTAT_MAX_PENDING_STEPS": "-3"}, names="NORMSTAT_MAX_PENDING_STEPS")

    def test_flag_overrides_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("NORMSTAT_")}
        env["NORMSTAT_THREADS"] = "3"
        env["NORMSTAT_CORE_THREADS"] = "2"
        d = Daemon("--threads", "2", env=env)
        try:
            c = d.conn()
            c.request("GET", "/v1/version")
            v = json.loads(c.getresponse().read())
            c.close()
            self.assertEqual(v["http_threads"], 2)   # flag wins
            self.assertEqual(v["core_threads"], 2)   # environment applies
            self.assertEqual(d.stop(), 0)
        finally:
            if d.proc.poll() is None:
                d.proc.kill()

    def test_probe(self):
        d = Daemon()
        try:
            p = subprocess.run([binary(), "--probe", f"http://127.0.0.1:{d.port}/readyz"],
                               capture_output=True, timeout=TIMEOUT_S)
            self.assertEqual(p.returncode, 0, p.stderr)
            # Without a URL the probe uses --listen (0.0.0.0 goes through loopback).
            p = subprocess.run([binary(), "--listen", f"0.0.0.0:{d.port}", "--probe"],
                               capture_output=True, timeout=TIMEOUT_S)
            self.assertEqual(p.returncode, 0, p.stderr)
            p = subprocess.run([binary(), "--probe", f"http://127.0.0.1:{d.port}/nope"],
                               capture_output=True, timeout=TIMEOUT_S)
            self.assertEqual(p.returncode, 1)
            self.assertEqual(d.stop(), 0)
        finally:
            if d.proc.poll() is None:
                d.proc.kill()
        # A port nobody listens on: bind one, close it, probe it.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        p = subprocess.run([binary(), "--listen", f"127.0.0.1:{port}", "--probe"],
                           capture_output=True, timeout=TIMEOUT_S)
        self.assertEqual(p.returncode, 1)


if __name__ == "__main__":
    signal.alarm(120)  # the whole script, whatever happens
    unittest.main(verbosity=2)
