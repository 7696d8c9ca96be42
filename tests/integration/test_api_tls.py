"""test_api_tls.py - HTTPS (--tls-cert, --tls-key) end to end.

The test makes its own certificates with the openssl command: a CA, two
server certificates it signed for localhost and 127.0.0.1 (one EC, one RSA,
for the reload), and a self-signed one nobody trusts. A normstatd started
with the first must:

* answer curl --cacert, the Python client (cafile=, $NORMSTAT_CACERT,
  $SSL_CERT_FILE), the CLI (--cacert, $NORMSTAT_CACERT) and the C library
  (the asynchronous trainer of test_cli.py), SyncBatchNorm's fast path
  (normstat.wire, the torch link) over https, with statistics equal
  to a float64 combination of what was reported; clients that do not trust
  the CA refuse the connection;
* serve the second certificate to new connections after SIGHUP (checked by
  the served certificate's SHA-256 against the file's, computed here), keep
  serving the first to a connection opened before, and keep the pair in use
  when the new files are unusable (mismatched key, garbage), logging why;
* pass `normstatd --probe` over https, as the Dockerfile's HEALTHCHECK runs it
  (NORMSTAT_LISTEN and NORMSTAT_TLS_CERT in the environment);
* close a plain-HTTP request at once instead of leaving it hanging; and a
  plain daemon closes (or answers) a TLS ClientHello at once;
* close, after --header-timeout as a slowloris, connections from other
  loopback addresses whose handshake stops (nothing sent, part of a
  ClientHello, a whole one and then silence), serving a TLS client on
  127.0.0.1 meanwhile;
* with scoped tokens too, serve the clients given only the CA and a token.

Start-up refusals (exit 2, one line naming the option): one of the two
options alone, an unreadable file, a key of another certificate, a
certificate file without a certificate, an encrypted key.

Run from the repository root: /usr/bin/python3 tests/integration/test_api_tls.py
(NS_BUILD selects the build directory, default build/).
"""

import hashlib
import os
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
from test_cli import CLI, TRAINER, combine, close  # noqa: E402

sys.path.insert(0, os.path.join(nsd.REPO, "client", "python"))
import normstat  # noqa: E402

CMD_LIMIT_S = 20.0
# A daemon that left a connection hanging would hold it for its 60 s idle
# timeout; any answer or close well before that is "at once".
HANG_LIMIT_S = 20.0

DIR = tempfile.mkdtemp(prefix="normstat-tls-")


def openssl(*args):
    p = subprocess.run(["openssl"] + list(args), capture_output=True, timeout=CMD_LIMIT_S,
                       cwd=DIR)
    if p.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)}: {p.stderr.decode()[-500:]}")


def path(name):
    return os.path.join(DIR, name)


def make_certificates():
    """ca.pem; a.pem/a.key (EC) and b.pem/b.key (RSA) signed by it for
    localhost and 127.0.0.1; rogue.pem/rogue.key self-signed; enc.key encrypted. Made once per script."""
    if os.path.exists(path("enc.key")):
        return
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=normstat test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    with open(path("server.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    for name, newkey, serial in (("a", ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "11"),
                                 ("b", ["rsa:2048"], "12")):
        openssl("req", "-newkey", *newkey, "-nodes", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", "-subj", "/CN=localhost")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-set_serial", serial, "-days", "2", "-extfile", "server.ext",
                "-out", f"{name}.pem")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    openssl("genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-aes-128-cbc", "-pass", "pass:secret", "-out", "enc.key")


def file_sha256(pem_file):
    """SHA-256 of the first certificate of a PEM file, computed from its DER."""
    with open(pem_file) as f:
        pem = f.read()
    end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem[:end])).hexdigest()


def trusting(cafile=None):
    ctx = ssl.create_default_context(cafile=path("ca.pem") if cafile is None else cafile)
    return ctx


def served_sha256(port, host="127.0.0.1"):
    """SHA-256 of the certificate a new connection is served (verified against the CA)."""
    with socket.create_connection(("127.0.0.1", port), timeout=CMD_LIMIT_S) as s:
        with trusting().wrap_socket(s, server_hostname=host) as t:
            return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NORMSTAT_") and k not in ("SSL_CERT_FILE", "CURL_CA_BUNDLE")}
    env.update(extra)
    return env


def curl(*args):
    p = subprocess.run(["curl", "-sS", "--max-time", str(CMD_LIMIT_S)] + list(args),
                       capture_output=True, timeout=CMD_LIMIT_S + 5, env=clean_env())
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def rep(step, worker, n, mean, var):
    return {"step": step, "worker": worker,
            "layers": {"bn": {"count": n, "mean": list(mean), "var": list(var)}}}



class Tls(nsd.Case):

    @classmethod
    def setUpClass(cls):
        make_certificates()
        shutil.copy(path("a.pem"), path("cert.pem"))
        shutil.copy(path("a.key"), path("key.pem"))
        cls.daemon = nsd.Daemon("--tls-cert", path("cert.pem"), "--tls-key", path("key.pem"),
                                env=clean_env(), ssl_context=trusting()).start()
        cls.c = cls.daemon.client()
        cls.port = cls.daemon.port
        cls.url = f"https://127.0.0.1:{cls.port}"

    def test_curl(self):
        run = nsd.run_name("tls-curl")
        rc, out, err = curl("--cacert", path("ca.pem"), f"https://127.0.0.1:{self.port}/v1/version")
        self.check(rc == 0 and '"version"' in out, "curl --cacert https://127.0.0.1/v1/version",
                   f"{rc} {err}")
        rc, out, err = curl("--cacert", path("ca.pem"), f"{self.url}/readyz")
        self.check(rc == 0 and "ready" in out, "curl --cacert https://127.0.0.1/readyz", f"{rc} {err}")
        rc, out, err = curl("--cacert", path("ca.pem"), "-X", "POST", "-H",
                            "Content-Type: application/json", "--data-binary",
                            nsd.json.dumps(rep(1, 0, 4, [0.5, -1.5], [2.0, 0.25])),
                            f"{self.url}/v1/runs/{run}/batches")
        self.check(rc == 0 and '"accepted":true' in out, "curl POST batches over https",
                   f"{rc} {out} {err}")
        rc, out, err = curl("--cacert", path("ca.pem"), f"{self.url}/v1/runs/{run}/stats?source=last")
        layer = nsd.json.loads(out)["layers"]["bn"] if rc == 0 else {}
        self.check_close(nsd.served(layer)[0] if layer else [], [0.5, -1.5],
                         "curl GET stats over https: the reported means")
        rc, out, err = curl(f"{self.url}/livez")
        self.check(rc == 60, "curl without --cacert refuses the certificate (exit 60)", f"{rc} {err}")
        rc, out, err = curl("--cacert", path("rogue.pem"), f"{self.url}/livez")
        self.check(rc == 60, "curl trusting another certificate refuses it (exit 60)", f"{rc} {err}")

    def test_python_client(self):
        run = nsd.run_name("tls-py")
        arrivals = [(3, [0.25, 1.0], [1.0, 0.5]), (5, [-0.75, 2.0], [0.5, 4.0])]
        with normstat.Client(self.url, cafile=path("ca.pem")) as c:
            c.put_run(run, world_size=2)
            for w, (n, m, v) in enumerate(arrivals):
                c.report(run, step=1, worker=w, layers={"bn": {"count": n, "mean": m, "var": v}})
            got = c.stats(run, source="last")["layers"]["bn"]
        N, mean, var = combine(arrivals)
        self.check(got["count"] == N and close(got["mean"], mean, 1e-6, 1e-7)
                   and close(got["var"], var, 1e-6, 1e-7),
                   "Client(https, cafile=): two reports combine as computed here in float64",
                   f"{got} vs {N} {mean} {var}")
        saved = {k: os.environ.pop(k, None) for k in ("NORMSTAT_CACERT", "SSL_CERT_FILE")}
        try:
            for key in ("NORMSTAT_CACERT", "SSL_CERT_FILE"):
                os.environ[key] = path("ca.pem")
                with normstat.Client(self.url) as c:
                    self.check(c.readyz() is not None, f"Client(https) trusts ${key}")
                del os.environ[key]
            with normstat.Client(self.url) as c:
                try:
                    c.readyz()
                    self.check(False, "Client(https) without the CA refuses the server")
                except normstat.ConnectionFailed as e:
                    self.check("CERTIFICATE_VERIFY_FAILED" in str(e) or "certificate" in str(e),
                               "Client(https) without the CA refuses the server", repr(e))
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v

    def test_wire(self):
        """SyncBatchNorm's fast path (normstat.wire) over https: two workers'
        /sync frames on keep-alive TLS connections."""
        from normstat import wire
        run = nsd.run_name("tls-wire")
        arrivals = [(3, [0.5, -2.0], [1.0, 0.25]), (5, [1.5, 0.0], [2.0, 4.0])]
        conns = [wire.Connection(self.url, timeout=CMD_LIMIT_S, cafile=path("ca.pem"))
                 for _ in arrivals]
        frames = [wire.SyncFrame(c, run, "bn", worker=w, channels=2, world_size=2)
                  for w, c in enumerate(conns)]
        N, mean, var = combine(arrivals)
        for step in (1, 2):
            for f, (n, m, v) in zip(frames, arrivals):
                f.mean[:] = nsd.struct.pack("<2f", *m)
                f.var[:] = nsd.struct.pack("<2f", *v)

            def send(c, f, n, step=step):
                ans = c.exchange(f.request(step, n), f.path)
                return list(nsd.struct.unpack("<2f", bytes(ans.array("bn.mean")[1])))
            results, errors = nsd.parallel(
                [lambda c=c, f=f, n=n: send(c, f, n)
                 for c, f, (n, _, _) in zip(conns, frames, arrivals)])
            for got_mean in results:
                self.check(not any(errors) and got_mean is not None
                           and close(got_mean, mean, 1e-6, 1e-7),
                           f"wire /sync step {step} over https: the combination computed here",
                           f"{got_mean} vs {mean}; {errors}")
        for c in conns:
            c.close()
        saved = os.environ.pop("NORMSTAT_CACERT", None)
        try:
            c = wire.Connection(self.url, timeout=CMD_LIMIT_S)
            f = wire.SyncFrame(c, run, "bn", worker=0, channels=2)
            try:
                c.exchange(f.request(3, 3), f.path)
                self.check(False, "wire without the CA refuses the server")
            except normstat.ConnectionFailed as e:
                self.check("TLS" in str(e), "wire without the CA refuses the server", repr(e))
            os.environ["NORMSTAT_CACERT"] = path("ca.pem")
            c = wire.Connection(self.url, timeout=CMD_LIMIT_S)
            c._connect()
            self.check(c._sock is not None, "wire trusts $NORMSTAT_CACERT")
            c.close()
        finally:
            os.environ.pop("NORMSTAT_CACERT", None)
            if saved is not None:
                os.environ["NORMSTAT_CACERT"] = saved

    def test_syncbn_link(self):
        """normstat.torch's SyncBatchNorm link over https, given a Client
        with cafile= or a URL with $NORMSTAT_CACERT: a world of one gets its
        own statistics back."""
        import torch
        from normstat.torch.syncbn import Link
        mean = torch.tensor([0.5, -1.25, 3.0])
        var = torch.tensor([1.0, 0.5, 2.0])
        saved = os.environ.pop("NORMSTAT_CACERT", None)
        try:
            for how in ("Client(cafile=)", "$NORMSTAT_CACERT"):
                run = nsd.run_name("tls-link")
                if how == "$NORMSTAT_CACERT":
                    os.environ["NORMSTAT_CACERT"] = path("ca.pem")
                    link = Link(self.url, run, rank=0, world_size=1, timeout=CMD_LIMIT_S)
                else:
                    link = Link(normstat.Client(self.url, cafile=path("ca.pem")), run, rank=0,
                                world_size=1, timeout=CMD_LIMIT_S)
                n, stats = link.sync("bn", 1, 6, mean, var, torch.device("cpu"), torch.float32)
                self.check(n == 6 and torch.equal(stats[0], mean) and torch.equal(stats[1], var),
                           f"SyncBatchNorm link over https ({how}): its statistics back",
                           f"{n} {stats}")
                link.close()
        finally:
            os.environ.pop("NORMSTAT_CACERT", None)
            if saved is not None:
                os.environ["NORMSTAT_CACERT"] = saved

    def test_cli(self):
        def cli(*args, **env):
            p = subprocess.run([CLI, "--url", self.url, "--json"] + list(args),
                               capture_output=True, timeout=CMD_LIMIT_S, env=clean_env(**env))
            return p.returncode, p.stdout.decode(), p.stderr.decode()

        rc, out, err = cli("--cacert", path("ca.pem"), "health")
        self.check(rc == 0, "normstat --cacert CA health over https -> 0", f"{rc} {err}")
        rc, out, err = cli("version", NORMSTAT_CACERT=path("ca.pem"))
        self.check(rc == 0 and "version" in out, "NORMSTAT_CACERT is used", f"{rc} {err}")
        rc, out, err = cli("version")
        self.check(rc == 3 and "TLS" in err, "without the CA: exit 3 (cannot connect), says TLS",
                   f"{rc} {err}")
        rc, out, err = cli("--cacert", path("rogue.pem"), "version")
        self.check(rc == 3, "trusting another certificate: exit 3", f"{rc} {err}")
        # runs --shards: each shard's client trusts the same CA
        run = nsd.run_name("tls-shards")
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 1}).status == 201, "PUT run")
        rc, out, err = cli("--cacert", path("ca.pem"), "runs", "--shards", self.url)
        self.check(rc == 0 and run in out, "normstat --cacert CA runs --shards URL lists the shard's runs",
                   f"{rc} {err}")
        rc, out, err = cli("--help")
        self.check(rc == 0 and "--cacert FILE" in out and "NORMSTAT_CACERT" in out,
                   "normstat --help documents --cacert and NORMSTAT_CACERT")

    def test_library(self):
        """The asynchronous C client (client_trainer) over https: /sync answers
        equal the float64 combination of the reported arrivals."""
        steps = [[{"bn": {"count": 4, "mean": [0.5, -1.0, 2.0], "var": [1.0, 2.0, 0.5]}},
                  {"bn": {"count": 6, "mean": [1.5, 0.0, -2.0], "var": [0.25, 1.0, 3.0]}}],
                 [{"bn": {"count": 2, "mean": [0.0, 0.5, 1.0], "var": [1.0, 1.0, 1.0]}},
                  {"bn": {"count": 8, "mean": [1.0, -0.5, 0.0], "var": [2.0, 0.5, 0.25]}}]]
        with tempfile.TemporaryDirectory() as tmp:
            inp, out, ck = (os.path.join(tmp, f) for f in ("in.json", "out.json", "ck.json"))
            with open(inp, "w") as f:
                nsd.json.dump({"world_size": 2, "momentum": 0.1, "layers": {"bn": 3},
                               "steps": steps}, f)
            p = subprocess.run([TRAINER, self.url, nsd.run_name("tls-lib"), inp, out, ck],
                               capture_output=True, timeout=CMD_LIMIT_S * 2,
                               env=clean_env(NORMSTAT_CACERT=path("ca.pem")))
            if not self.check(p.returncode == 0, "client_trainer over https with NORMSTAT_CACERT",
                              p.stderr.decode()[-400:]):
                return
            with open(out) as f:
                got = nsd.json.load(f)
        for s, per_worker in enumerate(steps):
            N, mean, var = combine([(r["bn"]["count"], r["bn"]["mean"], r["bn"]["var"])
                                    for r in per_worker])
            for a in got["sync"][s]:
                L = a["layers"]["bn"]
                self.check(L["count"] == N and close(L["mean"], mean, 1e-6, 1e-7)
                           and close(L["var"], var, 1e-6, 1e-7),
                           f"library /sync step {s + 1} over https: the combination computed here",
                           f"{L} vs {N} {mean} {var}")
        p = subprocess.run([TRAINER, self.url, nsd.run_name("tls-lib"), inp, out, ck],
                           capture_output=True, timeout=CMD_LIMIT_S * 2, env=clean_env())
        self.check(p.returncode != 0, "client_trainer without the CA fails",
                   p.stderr.decode()[-300:])

    def test_probe(self):
        exe = nsd.binary_path()
        p = subprocess.run([exe, "--probe", f"https://127.0.0.1:{self.port}/readyz"],
                           capture_output=True, timeout=CMD_LIMIT_S, env=clean_env())
        self.check_eq(p.returncode, 0, "normstatd --probe https://127.0.0.1:PORT/readyz")
        env = clean_env(NORMSTAT_LISTEN=f"0.0.0.0:{self.port}",
                        NORMSTAT_TLS_CERT=path("cert.pem"), NORMSTAT_TLS_KEY=path("key.pem"))
        p = subprocess.run([exe, "--probe"], capture_output=True, timeout=CMD_LIMIT_S, env=env)
        self.check_eq(p.returncode, 0, "HEALTHCHECK's `normstatd --probe` with NORMSTAT_TLS_CERT "
                      "set probes over https")
        env.pop("NORMSTAT_TLS_CERT")
        p = subprocess.run([exe, "--probe"], capture_output=True, timeout=CMD_LIMIT_S, env=env)
        self.check_eq(p.returncode, 1, "the same probe over plain http fails (exit 1)")

    def test_plain_http_closed(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=HANG_LIMIT_S) as s:
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
            try:
                data = s.recv(4096)
                self.check(not data.startswith(b"HTTP/1.1 200"),
                           "plain HTTP to the TLS port is closed at once, not served",
                           repr(data[:80]))
            except (ConnectionResetError, socket.timeout) as e:
                self.check(isinstance(e, ConnectionResetError),
                           "plain HTTP to the TLS port is closed at once, not served", repr(e))
        self.check_status(self.c.get("/livez"), 200, "the daemon serves https afterwards")

    def test_reload(self):
        fa, fb = file_sha256(path("a.pem")), file_sha256(path("b.pem"))
        self.require(fa != fb, "the two certificates differ")
        self.check_eq(served_sha256(self.port), fa, "first certificate served")
        old = socket.create_connection(("127.0.0.1", self.port), timeout=CMD_LIMIT_S)
        old = trusting().wrap_socket(old, server_hostname="127.0.0.1")
        shutil.copy(path("b.pem"), path("cert.pem"))
        shutil.copy(path("b.key"), path("key.pem"))
        mark = len(self.daemon.lines)
        self.daemon.signal(nsd.signal.SIGHUP)
        line = self.daemon.wait_log("tls_reloaded", mark, CMD_LIMIT_S)
        logged = line.split("sha256=")[1].split()[0].replace(":", "").lower() if line else None
        self.check_eq(logged, fb, "SIGHUP: event=tls_reloaded logs the new fingerprint")
        self.check_eq(served_sha256(self.port), fb, "after SIGHUP new connections get the new "
                      "certificate (SHA-256 of the file)")
        self.check_eq(served_sha256(self.port, host="127.0.0.1"), fb, "also by IP address")
        old.sendall(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = old.recv(4096)
        self.check(data.startswith(b"HTTP/1.1 200") and
                   hashlib.sha256(old.getpeercert(binary_form=True)).hexdigest() == fa,
                   "a connection opened before the reload goes on with the first certificate",
                   repr(data[:60]))
        old.close()
        self.check_status(self.c.get("/livez"), 200, "the keep-alive client goes on")
        # Unusable files keep the pair in use.
        for desc, cert, key in (("a key of another certificate", "a.pem", "b.key"),
                                ("a certificate file without a certificate", "b.key", "b.key"),
                                ("a missing key", "b.pem", None)):
            shutil.copy(path(cert), path("cert.pem"))
            if key is None:
                os.unlink(path("key.pem"))
            else:
                shutil.copy(path(key), path("key.pem"))
            mark = len(self.daemon.lines)
            self.daemon.signal(nsd.signal.SIGHUP)
            line = self.daemon.wait_log("tls_reload_failed", mark, CMD_LIMIT_S)
            self.check(line is not None and "level=error" in line and "kept=previous" in line,
                       f"SIGHUP with {desc}: logged at level error, the pair in use kept",
                       str(line))
            self.check_eq(served_sha256(self.port), fb, f"after SIGHUP with {desc}: still the "
                          "second certificate")
        shutil.copy(path("b.pem"), path("cert.pem"))
        shutil.copy(path("b.key"), path("key.pem"))
        mark = len(self.daemon.lines)
        self.daemon.signal(nsd.signal.SIGHUP)
        self.check(self.daemon.wait_log("tls_unchanged", mark, CMD_LIMIT_S) is not None,
                   "SIGHUP with the files in use: event=tls_unchanged")


class TlsWithTokens(nsd.Case):
    """HTTPS and scoped tokens together: the clients change only by the CA
    file and the token."""

    @classmethod
    def setUpClass(cls):
        make_certificates()
        with open(path("tokens"), "w") as f:
            f.write("rd-tok read\nwr-tok write exp-*\n")
        cls.daemon = nsd.Daemon("--tls-cert", path("a.pem"), "--tls-key", path("a.key"),
                                "--auth-tokens-file", path("tokens"), env=clean_env(),
                                ssl_context=trusting()).start()
        cls.c = cls.daemon.client()
        cls.url = f"https://127.0.0.1:{cls.daemon.port}"

    def test_clients(self):
        run = nsd.run_name("exp-tt")
        with normstat.Client(self.url, cafile=path("ca.pem"), token="wr-tok") as c:
            c.report(run, step=1, worker=0, layers={"bn": {"count": 2, "mean": [1.5], "var": [0.5]}})
            got = c.stats(run, source="last")["layers"]["bn"]["mean"]
            self.check_eq(got, [1.5], "Python client, https + write token: report and read back")
            try:
                c.list_runs()
                self.check(False, "Python client, https + write token: list_runs is 403")
            except normstat.AuthError as e:
                self.check_eq(e.status, 403, "Python client, https + write token: list_runs is 403")
        p = subprocess.run([CLI, "--url", self.url, "--json", "--cacert", path("ca.pem"), "runs"],
                           capture_output=True, timeout=CMD_LIMIT_S,
                           env=clean_env(NORMSTAT_TOKEN="rd-tok"))
        self.check(p.returncode == 0 and run in p.stdout.decode(),
                   "CLI, https + read token from NORMSTAT_TOKEN: runs", p.stderr.decode())
        rc, out, err = curl("--cacert", path("ca.pem"), "-H", "Authorization: Bearer rd-tok",
                            "-X", "DELETE", "-w", "%{http_code}", f"{self.url}/v1/runs/{run}")
        self.check(rc == 0 and out.endswith("403") and '"scope":"admin"' in out,
                   "curl, https + read token: DELETE is 403 naming admin", out)


class HandshakeDeadline(nsd.Case):
    """A handshake is bounded by --header-timeout like a slowloris: half
    handshakes from other loopback addresses are closed after it, while a
    TLS client on 127.0.0.1 is served."""

    HEADER_MS = 500
    PER_KIND = 40  # from each of 127.0.0.2..9 in turn

    @classmethod
    def setUpClass(cls):
        make_certificates()
        cls.daemon = nsd.Daemon("--tls-cert", path("a.pem"), "--tls-key", path("a.key"),
                                "--header-timeout", str(cls.HEADER_MS), env=clean_env(),
                                ssl_context=trusting()).start()
        cls.c = cls.daemon.client()

    @staticmethod
    def client_hello():
        """The first flight of a real TLS client, as bytes."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = trusting().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return outgoing.read()

    def closed_count(self):
        text = self.c.get("/metrics").body.decode()
        for line in text.splitlines():
            if line.startswith('normstat_connections_closed_total{reason="header_timeout"}'):
                return float(line.split()[-1])
        return 0.0

    def test_half_handshakes_closed(self):
        hello = self.client_hello()
        self.require(len(hello) > 40 and hello[0] == 0x16, "a ClientHello record was made",
                     repr(hello[:8]))
        kinds = (("nothing", b""), ("part of a ClientHello", hello[:20]),
                 ("a whole ClientHello, then silence", hello))
        before = self.closed_count()
        socks = []
        for k, (_, first) in enumerate(kinds):
            for i in range(self.PER_KIND):
                s = socket.socket()
                s.bind((f"127.0.0.{2 + (k * self.PER_KIND + i) % 8}", 0))
                s.settimeout(CMD_LIMIT_S)
                s.connect(("127.0.0.1", self.daemon.port))
                if first:
                    s.sendall(first)
                s.setblocking(False)
                socks.append((k, s))
        # a TLS client on 127.0.0.1 meanwhile: a fresh connection each time
        served = 0
        for _ in range(5):
            cl = nsd.Client("127.0.0.1", self.daemon.port, ssl_context=trusting())
            served += cl.get("/livez").status == 200
            cl.close()
        self.check_eq(served, 5, "a TLS client on 127.0.0.1 gets /livez answered meanwhile")
        # each half handshake is closed by the daemon, well within HANG_LIMIT_S
        open_ = {s.fileno(): (k, s) for k, s in socks}
        deadline = time.monotonic() + HANG_LIMIT_S
        while open_ and time.monotonic() < deadline:
            ready, _, _ = select.select(list(open_), [], [], 0.5)
            for fd in ready:
                k, s = open_[fd]
                try:
                    while s.recv(65536):
                        pass  # a ServerHello to the whole ClientHello; then the close
                    del open_[fd]  # end of file
                except BlockingIOError:
                    continue
                except OSError:
                    del open_[fd]  # reset: closed as well
        for k, (desc, _) in enumerate(kinds):
            left = sum(1 for kk, _ in open_.values() if kk == k)
            self.check(left == 0, f"{self.PER_KIND} connections that sent {desc} are closed "
                       f"by the daemon (--header-timeout {self.HEADER_MS} ms)",
                       f"{left} still open after {HANG_LIMIT_S:.0f} s")
        for _, s in socks:
            s.close()
        closed = self.closed_count() - before
        self.check(closed >= len(socks), "each counted as closed for header_timeout",
                   f"{closed:.0f} of {len(socks)}")
        self.check_status(self.c.get("/livez"), 200, "the daemon goes on serving")


class PlainPort(nsd.Case):

    def test_client_hello_closed(self):
        """A TLS client on a plain port fails at once, it is not left waiting."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.daemon.port), timeout=HANG_LIMIT_S) as s:
            try:
                ctx.wrap_socket(s, server_hostname="127.0.0.1")
                self.check(False, "a ClientHello to a plain port gets no TLS session")
            except (ssl.SSLError, ConnectionResetError, OSError) as e:
                self.check(not isinstance(e, socket.timeout),
                           "a ClientHello to a plain port is answered or closed at once", repr(e))
        self.check_status(self.c.get("/livez"), 200, "the daemon goes on serving")


class Refusals(nsd.unittest.TestCase):
    """Start-up with unusable files: exit 2, one line naming the option."""

    def refuse(self, desc, want, *args):
        p = subprocess.run([nsd.binary_path(), "--listen", "127.0.0.1:0", "--no-persist"]
                           + list(args), capture_output=True, timeout=CMD_LIMIT_S,
                           env=clean_env())
        err = p.stderr.decode()
        ok = p.returncode == 2 and err.count("\n") == 1 and want in err
        print(f"{'ok  ' if ok else 'FAIL'} {desc}: exit 2 with one line naming {want}"
              + ("" if ok else f" -- got {p.returncode}: {err[:300]}"))
        self.assertTrue(ok, desc)

    def test_refusals(self):
        make_certificates()
        self.refuse("--tls-cert alone", "--tls-key", "--tls-cert", path("a.pem"))
        self.refuse("--tls-key alone", "--tls-cert", "--tls-key", path("a.key"))
        self.refuse("a missing certificate file", "--tls-cert", "--tls-cert", path("nope.pem"),
                    "--tls-key", path("a.key"))
        self.refuse("a key of another certificate", "does not belong", "--tls-cert",
                    path("a.pem"), "--tls-key", path("b.key"))
        self.refuse("a certificate file without a certificate", "--tls-cert", "--tls-cert",
                    path("a.key"), "--tls-key", path("a.key"))
        self.refuse("an encrypted key", "--tls-key", "--tls-cert", path("a.pem"), "--tls-key",
                    path("enc.key"))


if __name__ == "__main__":
    try:
        nsd.main()
    finally:
        shutil.rmtree(DIR, ignore_errors=True)
