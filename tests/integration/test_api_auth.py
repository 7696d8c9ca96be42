"""test_api_auth.py - bearer-token authentication (--auth-token-file) end to end.

A normstatd started with a token file must answer the probes without a
token, 401 unauthorized (with WWW-Authenticate) to a request without or with
a malformed Authorization header or with a token it does not know, and serve
the request with the right one (an admin token), for GET stats, PUT run and
POST batches (scopes: test_api_scopes.py);
a refused write changes nothing and its body is dropped (the keep-alive
connection goes on). /metrics counts each refusal by reason. The Python
client, the CLI and `normstatd --probe` are exercised against it, and the
token loading rules (trailing newline, both sources, empty file) are checked
on the command line.

Run from the repository root: /usr/bin/python3 tests/integration/test_api_auth.py
(NS_BUILD selects the build directory, default build/).
"""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
from test_api_runs import parse_metrics, rejection_counters  # noqa: E402

sys.path.insert(0, os.path.join(nsd.REPO, "client", "python"))
import normstat  # noqa: E402

CMD_LIMIT_S = 20.0
TOKEN = "s3cret-Token_0123456789.~+/="
TOKEN_DIR = tempfile.mkdtemp(prefix="normstat-auth-")
TOKEN_FILE = os.path.join(TOKEN_DIR, "token")
with open(TOKEN_FILE, "w") as f:
    f.write(TOKEN + "\n")  # the trailing newline is not part of the token

GOOD = {"Authorization": f"Bearer {TOKEN}"}
MALFORMED = [
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Bearer {TOKEN} extra"},
    {"Authorization": TOKEN},
]
WRONG = [
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": "Bearer other"},
    {"Authorization": f"Bearer {TOKEN.upper()}"},
]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMSTAT_")}
    env.update(extra)
    return env


def build_dir():
    build = os.environ.get("NS_BUILD", "build")
    return build if os.path.isabs(build) else os.path.join(nsd.REPO, build)


CLI = os.path.join(build_dir(), "bin", "normstat")


def rep(step, worker, mean=(0.5, -1.0), var=(1.0, 2.0)):
    return {"step": step, "worker": worker,
            "layers": {"bn": {"count": 4, "mean": list(mean), "var": list(var)}}}


class AuthClient(nsd.Client):
    """nsd.Client sending the right token unless a request names its own headers."""

    def request(self, method, path, body=None, headers=None, **kw):
        return super().request(method, path, body=body,
                               headers=GOOD if headers is None else headers, **kw)


class Auth(nsd.Case):

    @classmethod
    def setUpClass(cls):
        cls.daemon = nsd.Daemon("--auth-token-file", TOKEN_FILE, env=clean_env()).start()
        cls.c = AuthClient("127.0.0.1", cls.daemon.port)
        cls.url = f"http://127.0.0.1:{cls.daemon.port}"

    def rejections(self):
        r = self.c.get("/metrics", validate=False)
        self.require(r.status == 200, "GET /metrics with the token -> 200", r.short())
        return rejection_counters(parse_metrics(r.body.decode())[0])

    def ready_run(self):
        """A world-1 run with step 1 finalized, created with the token."""
        run = nsd.run_name("auth")
        self.check_status(self.c.put(f"/v1/runs/{run}", {"world_size": 1}), 201,
                          "PUT run with the token", must=True)
        self.check_status(self.c.report(run, rep(1, 0)), 202, "report with the token", must=True)
        return run

    def check_refusals(self, method, path, body, desc):
        """No, malformed and wrong Authorization on one keep-alive client."""
        r = self.c.request(method, path, body=body, headers={})
        self.check_status(r, 401, f"{desc} without Authorization", code="unauthorized")
        self.check_eq(r.headers.get("www-authenticate"), 'Bearer realm="normstat"',
                      f"{desc}: 401 carries WWW-Authenticate")
        for h in MALFORMED:
            r = self.c.request(method, path, body=body, headers=h)
            self.check_status(r, 401, f"{desc} with malformed {h['Authorization'][:12]!r}...",
                              code="unauthorized")
        for h in WRONG:
            r = self.c.request(method, path, body=body, headers=h)
            self.check_status(r, 401, f"{desc} with an unknown token", code="unauthorized")
            self.check_eq(r.headers.get("www-authenticate"),
                          'Bearer realm="normstat", error="invalid_token"',
                          f"{desc}: 401 for an unknown token carries WWW-Authenticate with "
                          "error=invalid_token (RFC 6750)")

    def test_probes_open(self):
        for path in ("/livez", "/healthz", "/readyz"):
            self.check_status(self.c.get(path, headers={}), 200, f"GET {path} without a token")
        for path in ("/v1/version", "/metrics", "/v1/runs", "/nope"):
            self.check_status(self.c.get(path, headers={}), 401, f"GET {path} without a token",
                              code="unauthorized")
        self.check_status(self.c.post("/livez", b"", headers={}), 401,
                          "only GET of a probe is open: POST /livez", code="unauthorized")
        p = subprocess.run([nsd.binary_path(), "--probe", f"{self.url}/readyz"],
                           capture_output=True, timeout=CMD_LIMIT_S, env=clean_env())
        self.check_eq(p.returncode, 0, "normstatd --probe passes without a token")

    def test_dashboard_files_open(self):
        """The dashboard's files are served without a token and hold no run's data."""
        run = self.ready_run()
        for path in ("/", "/ui"):
            r = self.c.get(path, headers={}, validate=False)
            self.check_eq((r.status, r.headers.get("location")), (302, "ui/"),
                          f"GET {path} without a token redirects to ui/")
        for path, ctype in (("/ui/", "text/html"), ("/ui/dashboard.js", "text/javascript"),
                            ("/ui/dashboard.css", "text/css")):
            r = self.c.get(path, headers={}, validate=False)
            self.check_eq((r.status, r.content_type), (200, ctype), f"GET {path} without a token")
            self.check(run.encode() not in r.body, f"GET {path} holds no run name")
            self.check("default-src 'none'" in (r.headers.get("content-security-policy") or ""),
                       f"GET {path} carries a Content-Security-Policy")
        self.check_status(self.c.post("/ui/", b"", headers={}), 401,
                          "only GET of the dashboard is open: POST /ui/", code="unauthorized")
        self.check_status(self.c.get("/ui/../v1/runs", headers={}), 401,
                          "a dashboard-looking path to the API is not open", code="unauthorized")

    def test_get_stats(self):
        run = self.ready_run()
        path = f"/v1/runs/{run}/stats?source=last"
        self.check_refusals("GET", path, None, "GET stats")
        r = self.c.get(path)
        self.check_status(r, 200, "GET stats with the token")
        if r.status == 200:
            layer = r.json()["layers"]["bn"]
            self.check_close(nsd.served(layer)[0], [0.5, -1.0], "stats served")

    def test_put_run(self):
        run = nsd.run_name("auth-put")
        path = f"/v1/runs/{run}"
        self.check_refusals("PUT", path, {"world_size": 3}, "PUT run")
        self.check_status(self.c.get(path), 404, "refused PUTs created nothing", code="not_found")
        self.check_status(self.c.put(path, {"world_size": 3}), 201, "PUT run with the token")
        r = self.c.get(path)
        self.check(r.status == 200 and r.json()["config"].get("world_size") == 3,
                   "the run exists with world_size 3", r.short())

    def test_post_batches(self):
        run = self.ready_run()
        before = self.snapshot(run)
        path = f"/v1/runs/{run}/batches"
        self.check_refusals("POST", path, rep(2, 0, mean=(9.0, 9.0)), "POST batches")
        # A large body too: refused before it is read, dropped, the connection kept.
        big = nsd.json.dumps(rep(2, 0, mean=(7.0, 7.0))).encode() + b" " * (2 << 20)
        r = self.c.request("POST", path, body=big, headers={"Authorization": "Bearer no"},
                           content_type="application/json")
        self.check_status(r, 401, "POST batches of 2 MiB with an unknown token",
                          code="unauthorized")
        self.check_unchanged(before, run, "after refused reports")
        self.check_status(self.c.report(run, rep(2, 0, mean=(1.5, 2.5))), 202,
                          "POST batches with the token")
        r = self.c.stats(run, source="last")
        self.check(r.status == 200 and r.json().get("step") == 2
                   and nsd.served(r.json()["layers"]["bn"])[0] == [1.5, 2.5],
                   "the accepted report is step 2's statistics, the refused ones left no trace",
                   r.short())

    def test_metrics_count_refusals(self):
        before = self.rejections()
        self.check_status(self.c.get("/v1/runs", headers={}), 401, "GET runs without a token")
        mid = self.rejections()
        self.check_status(self.c.get("/v1/runs", headers=WRONG[0]), 401,
                          "GET runs, unknown token")
        after = self.rejections()
        self.check_eq(mid.get("unauthorized", 0) - before.get("unauthorized", 0), 1,
                      "normstat_rejections_total{reason=unauthorized} + 1")
        self.check_eq(after.get("unauthorized", 0) - mid.get("unauthorized", 0), 1,
                      "an unknown token: normstat_rejections_total{reason=unauthorized} + 1")
        self.check_eq(after.get("forbidden", 0) - before.get("forbidden", 0), 0,
                      "forbidden unchanged by 401s")

    def test_token_never_logged(self):
        self.c.get("/v1/runs", headers=WRONG[0])
        self.c.get("/v1/runs")
        with self.daemon._lock:
            lines = list(self.daemon.lines)
        self.check(lines and not any(TOKEN in ln or TOKEN[:-1] in ln for ln in lines),
                   "the daemon's debug log never holds the token", f"{len(lines)} lines")

    def test_python_client(self):
        run = self.ready_run()
        old = os.environ.pop("NORMSTAT_TOKEN", None)
        try:
            with normstat.Client(self.url, token=TOKEN) as c:
                self.check_eq(c.get_run(run)["config"]["world_size"], 1, "Client(token=...) reads a run")
                c.put_run(nsd.run_name("auth-py"), world_size=2)
                self.check(True, "Client(token=...) creates a run")
            os.environ["NORMSTAT_TOKEN"] = TOKEN
            with normstat.Client(self.url) as c:
                self.check_eq(c.get_run(run)["config"]["world_size"], 1, "Client() takes $NORMSTAT_TOKEN")
            for token, code, status in (("", "unauthorized", 401), ("wrong", "unauthorized", 401)):
                with normstat.Client(self.url, token=token) as c:
                    try:
                        c.get_run(run)
                        self.check(False, f"Client(token={token!r}) raises {code}")
                    except normstat.Error as e:
                        self.check(e.code == code and e.status == status
                                   and isinstance(e, normstat.AuthError),
                                   f"Client(token={token!r}) raises AuthError {status} {code}",
                                   repr(e))
                    self.check(c.livez() is not None, f"Client(token={token!r}): livez is open")
        finally:
            os.environ.pop("NORMSTAT_TOKEN", None)
            if old is not None:
                os.environ["NORMSTAT_TOKEN"] = old
        try:
            normstat.Client(self.url, token="two words")
            self.check(False, "a token with a space is refused by the client")
        except ValueError:
            self.check(True, "a token with a space is refused by the client")

    def test_cli(self):
        run = self.ready_run()

        def cli(*args, **env):
            p = subprocess.run([CLI, "--url", self.url, "--json"] + list(args),
                               capture_output=True, timeout=CMD_LIMIT_S, env=clean_env(**env))
            return p.returncode, p.stdout.decode(), p.stderr.decode()

        rc, out, err = cli("--token", TOKEN, "run", "show", run)
        self.check(rc == 0 and run in out, "normstat --token TOKEN run show -> 0", f"{rc} {err}")
        rc, out, err = cli("runs", "--token", TOKEN)
        self.check(rc == 0 and run in out, "--token after the command works too", f"{rc} {err}")
        rc, out, err = cli("runs", NORMSTAT_TOKEN=TOKEN)
        self.check(rc == 0 and run in out, "NORMSTAT_TOKEN is used", f"{rc} {err}")
        rc, out, err = cli("runs")
        self.check(rc == 1 and "unauthorized" in err, "no token: exit 1, unauthorized",
                   f"{rc} {err}")
        rc, out, err = cli("--token", "wrong", "runs", NORMSTAT_TOKEN=TOKEN)
        self.check(rc == 1 and "unauthorized" in err, "--token wins over NORMSTAT_TOKEN: exit 1, "
                   "unauthorized", f"{rc} {err}")
        rc, out, err = cli("health")
        self.check_eq(rc, 0, "normstat health needs no token")
        rc, out, err = cli("--help")
        self.check(rc == 0 and "--token TOKEN" in out and "NORMSTAT_TOKEN" in out,
                   "normstat --help documents --token and NORMSTAT_TOKEN")


class TokenLoading(nsd.unittest.TestCase):
    """Start-up rules, checked on the command line (exit 2, one line, no token)."""

    def refuse(self, desc, *args, env=None):
        exe = nsd.binary_path()
        p = subprocess.run([exe, "--listen", "127.0.0.1:0", "--no-persist"] + list(args),
                           capture_output=True, timeout=CMD_LIMIT_S, env=clean_env(**(env or {})))
        err = p.stderr.decode()
        ok = p.returncode == 2 and err.count("\n") == 1 and TOKEN not in err
        print(f"{'ok  ' if ok else 'FAIL'} {desc}: exit 2 with one line" +
              ("" if ok else f" -- got {p.returncode}: {err[:300]}"))
        self.assertTrue(ok, desc)

    def test_bad_token_sources(self):
        empty = os.path.join(TOKEN_DIR, "empty")
        with open(empty, "w") as f:
            f.write("\n")
        spaced = os.path.join(TOKEN_DIR, "spaced")
        with open(spaced, "w") as f:
            f.write("two words\n")
        self.refuse("an empty token file", "--auth-token-file", empty)
        self.refuse("a token with a space", "--auth-token-file", spaced)
        self.refuse("a missing token file", "--auth-token-file", os.path.join(TOKEN_DIR, "nope"))
        self.refuse("both a file and NORMSTAT_AUTH_TOKEN", "--auth-token-file", TOKEN_FILE,
                    env={"NORMSTAT_AUTH_TOKEN": TOKEN})

    def test_env_token(self):
        d = nsd.Daemon(env=clean_env(NORMSTAT_AUTH_TOKEN=TOKEN)).start()
        try:
            c = d.client()
            r1 = c.get("/v1/runs", validate=False)
            r2 = c.get("/v1/runs", headers=GOOD, validate=False)
            c.close()
        finally:
            rc = d.stop()
        ok = r1.status == 401 and r2.status == 200 and rc == 0
        print(f"{'ok  ' if ok else 'FAIL'} NORMSTAT_AUTH_TOKEN turns authentication on "
              f"(401 {r1.status}, 200 {r2.status}, exit {rc})")
        self.assertTrue(ok)

    def test_off_by_default(self):
        d = nsd.Daemon(env=clean_env()).start()
        try:
            c = d.client()
            r = c.get("/v1/runs", validate=False)
            c.close()
        finally:
            rc = d.stop()
        ok = r.status == 200 and rc == 0
        print(f"{'ok  ' if ok else 'FAIL'} without the option no token is needed ({r.status})")
        self.assertTrue(ok)


if __name__ == "__main__":
    nsd.main()
