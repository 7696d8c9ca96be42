"""test_api_scopes.py - scoped tokens (--auth-tokens-file) end to end.

A normstatd started with a token file of an admin, a read and a write token
(runs matching "exp-*"), next to the admin token of --auth-token-file, must
allow and refuse every route exactly as doc/design.md's table says:

* admin: everything;
* read: every GET (runs, one run, statistics, checkpoint, /metrics,
  /v1/version), no PUT, POST or DELETE (403, scope "write" or "admin");
* write exp-*: PUT and POST on runs matching the glob (configuration,
  /batches, /sync, /grad, PreciseBN reset, checkpoint import, creating a run
  by its first report) and their GETs; 403 scope "read" for GETs of other
  runs and of routes without a run, scope "write" for writes to other runs,
  scope "admin" for DELETE.

A refused request changes nothing (the run is compared before and after with
the admin token; a refused first report creates no run); the 403 body names
the missing scope (proto/openapi.yaml's Forbidden); an unknown token is 401.
The file is re-read on SIGHUP: a new token works at once, a removed one gets
401, a changed scope applies, and a malformed or missing file keeps the tokens
in use (logged at level error). The Python client and the CLI work unchanged
with a scoped token. Start-up refuses a malformed file with one line.

Run from the repository root: /usr/bin/python3 tests/integration/test_api_scopes.py
(NS_BUILD selects the build directory, default build/).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
from test_api_runs import parse_metrics, rejection_counters  # noqa: E402
from test_cli import CLI  # noqa: E402

sys.path.insert(0, os.path.join(nsd.REPO, "client", "python"))
import normstat  # noqa: E402

CMD_LIMIT_S = 20.0
DIR = tempfile.mkdtemp(prefix="normstat-scopes-")
TOKENS = os.path.join(DIR, "tokens")
SINGLE = os.path.join(DIR, "single")

ADMIN, READ, WRITE, SOLO = "adm-Tok.1", "rd-Tok.2", "wr-Tok.3", "solo-Tok.4"
FILE_TEXT = (f"# scoped tokens\n{ADMIN} admin\n{READ}  read\n"
             f"{WRITE}\twrite exp-*\n")


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMSTAT_")}
    env.update(extra)
    return env


def rep(step, worker=0):
    return {"step": step, "worker": worker,
            "layers": {"bn": {"count": 4, "mean": [0.5, -1.0], "var": [1.0, 2.0]}}}


def grad(step):
    return {"step": step, "worker": 0,
            "layers": {"bn": {"sum_dy": [1.0, 2.0], "sum_dy_xmu": [0.5, 0.25]}}}



class Scopes(nsd.Case):

    @classmethod
    def setUpClass(cls):
        with open(TOKENS, "w") as f:
            f.write(FILE_TEXT)
        with open(SINGLE, "w") as f:
            f.write(SOLO + "\n")
        cls.daemon = nsd.Daemon("--auth-tokens-file", TOKENS, "--auth-token-file", SINGLE,
                                env=clean_env()).start()
        cls.c = cls.daemon.client()
        cls.url = f"http://127.0.0.1:{cls.daemon.port}"
        cls.step = 0

    def admin(self, method, path, body=None):
        return self.c.request(method, path, body=body, headers=bearer(ADMIN))

    def make_run(self, name):
        self.check_status(self.admin("PUT", f"/v1/runs/{name}", {"world_size": 1}), 201,
                          f"admin creates {name}", must=True)
        self.next_step()
        self.check_status(self.admin("POST", f"/v1/runs/{name}/batches", rep(self.step)), 202,
                          f"admin reports to {name}", must=True)

    def next_step(self):
        Scopes.step += 1
        return Scopes.step

    def requests(self, run):
        """(description, method, path, body factory, status when allowed) of every route."""
        ckpt = self.admin("GET", f"/v1/runs/{run}/checkpoint")
        self.require(ckpt.status == 200, "admin reads the checkpoint", ckpt.short())
        return [
            ("GET runs", "GET", "/v1/runs", None, 200),
            ("GET /metrics", "GET", "/metrics", None, 200),
            ("GET /v1/version", "GET", "/v1/version", None, 200),
            ("HEAD runs", "HEAD", "/v1/runs", None, 200),
            ("GET run", "GET", f"/v1/runs/{run}", None, 200),
            ("GET stats", "GET", f"/v1/runs/{run}/stats?source=ema", None, 200),
            ("GET checkpoint", "GET", f"/v1/runs/{run}/checkpoint", None, 200),
            ("PUT run", "PUT", f"/v1/runs/{run}", lambda: {"momentum": 0.25}, 200),
            ("POST batches", "POST", f"/v1/runs/{run}/batches",
             lambda: rep(self.next_step()), 202),
            ("POST sync", "POST", f"/v1/runs/{run}/sync", lambda: rep(self.next_step()), 200),
            ("POST grad", "POST", f"/v1/runs/{run}/grad", lambda: grad(self.next_step()), 200),
            ("POST precise reset", "POST", f"/v1/runs/{run}/precise/reset", lambda: {}, 200),
            ("PUT checkpoint", "PUT", f"/v1/runs/{run}/checkpoint", lambda: ckpt.json(),
             (200, 201)),
        ]

    def exercise(self, token, run, expect):
        """Every request of requests(run) with 'token'; expect(desc, method, path) is
        None (allowed) or the scope named in the 403."""
        for desc, method, path, body, ok in self.requests(run):
            need = expect(method, path)
            before = self.snapshot(run) if need and method not in ("GET", "HEAD") else None
            r = self.c.request(method, path, body=body() if body else None,
                               headers=bearer(token), validate=method != "HEAD")
            label = f"{token.split('-')[0]}: {desc} of {run}"
            if need is None:
                oks = ok if isinstance(ok, tuple) else (ok,)
                self.check(r.status in oks, f"{label} allowed ({ok})", r.short())
                continue
            self.check_status(r, 403, f"{label} refused",
                              code="forbidden" if method != "HEAD" else None)
            if method != "HEAD":
                self.check_eq(r.json()["error"].get("scope"), need,
                              f"{label}: the 403 names the missing scope")
            if before is not None:
                self.check_unchanged(before, run, f"{label} refused")

    def snapshot(self, run):
        saved = self.c.request

        def as_admin(method, path, body=None, headers=None, **kw):
            return saved(method, path, body=body, headers=bearer(ADMIN), **kw)
        self.c.request = as_admin
        try:
            return super().snapshot(run)
        finally:
            self.c.request = saved

    def check_unchanged(self, before, run, desc):
        saved = self.c.request

        def as_admin(method, path, body=None, headers=None, **kw):
            return saved(method, path, body=body, headers=bearer(ADMIN), **kw)
        self.c.request = as_admin
        try:
            return super().check_unchanged(before, run, desc)
        finally:
            self.c.request = saved

    def test_admin(self):
        for token in (ADMIN, SOLO):
            run = nsd.run_name("other-a")
            self.make_run(run)
            self.exercise(token, run, lambda m, p: None)
            r = self.c.delete(f"/v1/runs/{run}", headers=bearer(token))
            self.check_status(r, 204, f"{token.split('-')[0]}: DELETE run allowed")

    def test_read(self):
        run = nsd.run_name("exp-r")
        self.make_run(run)
        self.exercise(READ, run, lambda m, p: None if m in ("GET", "HEAD") else "write")
        r = self.c.delete(f"/v1/runs/{run}", headers=bearer(READ))
        self.check_status(r, 403, "rd: DELETE refused", code="forbidden")
        self.check_eq(r.json()["error"].get("scope"), "admin", "rd: DELETE needs admin")
        self.check_status(self.admin("GET", f"/v1/runs/{run}"), 200, "the run is still there")
        r = self.c.post(f"/v1/runs/{nsd.run_name('exp-new')}/batches", rep(1),
                        headers=bearer(READ))
        self.check_status(r, 403, "rd: a first report creating a run refused", code="forbidden")

    def test_write(self):
        mine, other = nsd.run_name("exp-w"), nsd.run_name("other-w")
        self.make_run(mine)
        self.make_run(other)

        def on_mine(method, path):
            return "read" if "/runs/" not in path else None

        def on_other(method, path):
            if "/runs/" not in path:
                return "read"
            return "read" if method in ("GET", "HEAD") else "write"
        self.exercise(WRITE, mine, on_mine)
        self.exercise(WRITE, other, on_other)
        for run in (mine, other):
            r = self.c.delete(f"/v1/runs/{run}", headers=bearer(WRITE))
            self.check_status(r, 403, f"wr: DELETE {run} refused", code="forbidden")
            self.check_eq(r.json()["error"].get("scope"), "admin", "wr: DELETE needs admin")
        new_mine, new_other = nsd.run_name("exp-new"), nsd.run_name("other-new")
        self.check_status(self.c.post(f"/v1/runs/{new_mine}/batches", rep(1),
                                      headers=bearer(WRITE)), 202,
                          "wr: a first report creates a matching run")
        r = self.c.post(f"/v1/runs/{new_other}/batches", rep(1), headers=bearer(WRITE))
        self.check_status(r, 403, "wr: a first report to another run refused", code="forbidden")
        self.check_status(self.admin("GET", f"/v1/runs/{new_other}"), 404,
                          "the refused report created no run", code="not_found")
        msg = r.json()["error"]["message"]
        self.check("exp-*" in msg and new_other in msg and WRITE not in msg,
                   "the 403 message says what the token may write, never the token", msg)

    def test_unknown_and_metrics(self):
        def counters():
            r = self.admin("GET", "/metrics")
            return rejection_counters(parse_metrics(r.body.decode())[0])
        before = counters()
        r = self.c.get("/v1/runs", headers=bearer("nobody"))
        self.check_status(r, 401, "an unknown token", code="unauthorized")
        r = self.c.get("/v1/runs", headers=bearer(WRITE))
        self.check_status(r, 403, "a write token lists runs", code="forbidden")
        after = counters()
        self.check_eq(after.get("unauthorized", 0) - before.get("unauthorized", 0), 1,
                      "normstat_rejections_total{reason=unauthorized} + 1")
        self.check_eq(after.get("forbidden", 0) - before.get("forbidden", 0), 1,
                      "normstat_rejections_total{reason=forbidden} + 1")
        for path in ("/livez", "/healthz", "/readyz"):
            self.check_status(self.c.get(path, headers={}), 200, f"GET {path} needs no token")

    def test_clients(self):
        run = nsd.run_name("exp-py")
        with normstat.Client(self.url, token=WRITE) as c:
            c.put_run(run, world_size=1)
            c.report(run, step=1, worker=0, layers={"bn": {"count": 4, "mean": [0.5, -1.0],
                                                            "var": [1.0, 2.0]}})
            got = c.stats(run, source="last")["layers"]["bn"]["mean"]
            self.check(got == [0.5, -1.0], "Python client with a write token: report, read back",
                       str(got))
            try:
                c.list_runs()
                self.check(False, "Python client, write token: list_runs raises AuthError 403")
            except normstat.AuthError as e:
                self.check(e.status == 403 and e.code == "forbidden" and "read" in str(e),
                           "Python client, write token: list_runs raises AuthError 403 naming read",
                           repr(e))

        def cli(token, *args):
            p = subprocess.run([CLI, "--url", self.url, "--json", "--token", token] + list(args),
                               capture_output=True, timeout=CMD_LIMIT_S, env=clean_env())
            return p.returncode, p.stdout.decode(), p.stderr.decode()
        rc, out, err = cli(READ, "runs")
        self.check(rc == 0 and run in out, "CLI with a read token lists runs", f"{rc} {err}")
        rc, out, err = cli(READ, "run", "delete", run)
        self.check(rc == 1 and "forbidden" in err, "CLI with a read token: delete refused (exit 1)",
                   f"{rc} {err}")
        rc, out, err = cli(ADMIN, "run", "delete", run)
        self.check(rc == 0, "CLI with the admin token deletes the run", f"{rc} {err}")

    def test_reload(self):
        new_token = "new-Tok.5"
        run = nsd.run_name("exp-rl")
        self.make_run(run)
        try:
            with open(TOKENS, "w") as f:
                f.write(f"{ADMIN} admin\n{READ} write exp-*\n{new_token} read\n")
            mark = len(self.daemon.lines)
            self.daemon.signal(nsd.signal.SIGHUP)
            line = self.daemon.wait_log("auth_reloaded", mark, CMD_LIMIT_S)
            self.check(line is not None and "tokens=4" in line,
                       "SIGHUP: event=auth_reloaded tokens=4 (three of the file, the single one)",
                       str(line))
            self.check_status(self.c.get("/v1/runs", headers=bearer(new_token)), 200,
                              "a token added to the file works after SIGHUP")
            self.check_status(self.c.get("/v1/runs", headers=bearer(WRITE)), 401,
                              "a token removed from the file gets 401", code="unauthorized")
            self.check_status(self.c.post(f"/v1/runs/{run}/batches", rep(self.next_step()),
                                          headers=bearer(READ)), 202,
                              "a token whose scope changed to write may report")
            self.check_status(self.c.get("/v1/version", headers=bearer(SOLO)), 200,
                              "the --auth-token-file token stays")
            for desc, text in (("a malformed line", f"{ADMIN} admin\n{WRITE} sudo\n"),
                               ("a file without tokens", "# empty\n"),
                               ("a missing file", None)):
                if text is None:
                    os.unlink(TOKENS)
                else:
                    with open(TOKENS, "w") as f:
                        f.write(text)
                mark = len(self.daemon.lines)
                self.daemon.signal(nsd.signal.SIGHUP)
                line = self.daemon.wait_log("auth_reload_failed", mark, CMD_LIMIT_S)
                self.check(line is not None and "level=error" in line and "kept=previous" in line
                           and WRITE not in line and ADMIN not in line,
                           f"SIGHUP with {desc}: logged at level error, no token in the log",
                           str(line))
                self.check_status(self.c.get("/v1/runs", headers=bearer(new_token)), 200,
                                  f"after {desc} the tokens in use stay")
                self.check_status(self.c.get("/v1/runs", headers=bearer(WRITE)), 401,
                                  f"after {desc} the removed token stays removed",
                                  code="unauthorized")
        finally:
            with open(TOKENS, "w") as f:
                f.write(FILE_TEXT)
            mark = len(self.daemon.lines)
            self.daemon.signal(nsd.signal.SIGHUP)
            self.check(self.daemon.wait_log("auth_reloaded", mark, CMD_LIMIT_S) is not None,
                       "the original file reloads")

    def test_tokens_never_logged(self):
        with self.daemon._lock:
            lines = list(self.daemon.lines)
        self.check(not any(t in ln for ln in lines for t in (ADMIN, READ, WRITE, SOLO)),
                   "the daemon's debug log never holds a token", f"{len(lines)} lines")


class Refusals(nsd.unittest.TestCase):

    def test_bad_files(self):
        for desc, text, want in (("an unknown scope", "t1 admin\nt2 owner\n", "line 2"),
                                 ("write without a glob", "t1 write\n", "line 1"),
                                 ("a token twice", "t1 admin\nt1 read\n", "line 2"),
                                 ("no token", "# nothing\n", "holds no token")):
            path = os.path.join(DIR, "bad")
            with open(path, "w") as f:
                f.write(text)
            p = subprocess.run([nsd.binary_path(), "--listen", "127.0.0.1:0", "--no-persist",
                                "--auth-tokens-file", path], capture_output=True,
                               timeout=CMD_LIMIT_S, env=clean_env())
            err = p.stderr.decode()
            ok = (p.returncode == 2 and err.count("\n") == 1 and "--auth-tokens-file" in err
                  and want in err and "t1" not in err.replace("--auth-tokens-file", ""))
            print(f"{'ok  ' if ok else 'FAIL'} start-up with {desc}: exit 2, one line naming "
                  f"the option and {want!r}" + ("" if ok else f" -- {p.returncode}: {err[:300]}"))
            self.assertTrue(ok, desc)


if __name__ == "__main__":
    try:
        nsd.main()
    finally:
        shutil.rmtree(DIR, ignore_errors=True)
