"""test_api_strict.py - names, queries and HTTP framing taken strictly.

A path segment that decodes to a NUL or '/', or a {run} segment with any
character outside the name grammar, is answered 400 naming the character
and acts on no run (before: DELETE /v1/runs/r1%00x deleted r1). A query
parameter given twice, a value that decodes to a NUL, a layer named twice
and any parameter the route does not take are 400 on every route. Framing
that two parties could read differently (two Content-Length values,
Content-Length with Transfer-Encoding, a coding other than chunked) is 400
with the JSON error body and the connection closed, before the body is
read. A URL with thousands of parameters, an oversized URL and oversized
headers are answered (400, 414, 431) instead of left hanging; those and
whatever else libmicrohttpd refuses before a handler runs (a malformed
header line or chunk, an unsupported HTTP version) carry the JSON error
body, never the library's HTML page. A reset of a
domain the run has not seen is 404; a PUT racing DELETEs of its run creates
it or answers 409, never 404.

Malformed HTTP goes over raw sockets (http.client cannot send it); every
socket read has a timeout, and "closed" means the daemon ended the
connection within that bound.
"""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

READ_LIMIT_S = 5.0  # any one raw exchange

REP = {"step": 1, "worker": 0,
       "layers": {"bn1": {"count": 8, "mean": [0.5, -1.0], "var": [1.0, 2.0]}}}


def raw_exchange(port, data, limit=READ_LIMIT_S):
    """Send 'data' on a fresh connection; read one response and then wait
    (bounded) for the daemon to close. Returns (Response or None, closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    buf = b""
    try:
        s.sendall(data)
    except OSError:
        pass  # the daemon may answer and close before reading everything
    resp, closed = None, False
    try:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        if b"\r\n\r\n" in buf:
            head, body = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = [tuple(x.strip() for x in h.split(":", 1)) for h in lines[1:] if ":" in h]
            length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
            resp = nsd.Response("RAW", "", status, "", headers, body[:length])
        while True:  # anything after the answer, then the close
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
    except (socket.timeout, ConnectionResetError):
        closed = closed or False
    finally:
        s.close()
    return resp, closed


def request(method, target, headers=(), body=b"", close=False):
    lines = [f"{method} ".encode() + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [h.encode() if isinstance(h, str) else h for h in headers]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class Strict(nsd.Case):

    def runs(self):
        r = self.c.get("/v1/runs")
        return sorted(x["run"] for x in r.json()["runs"]) if r.status == 200 else None

    def make_run(self, name):
        self.require(self.c.put(f"/v1/runs/{name}", {"world_size": 1}).status == 201, f"create {name}")
        self.require(self.c.report(name, REP).status == 202, f"{name}: step 1 applied")

    def check_error(self, r, status, desc, names=()):
        if not self.check_status(r, status, desc, code="bad_request" if status == 400 else None):
            return
        msg = r.error_message() or ""
        for n in names:
            self.check(n in msg, f"{desc}: message names {n!r}", repr(msg))

    def test_path_segments(self):
        self.make_run("r1")
        self.make_run("victim")
        before = self.runs()
        snap = self.snapshot("r1")
        cases = [
            ("DELETE", "/v1/runs/r1%00x", ("0x00",)),
            ("DELETE", "/v1/runs/r1%00", ("0x00",)),
            ("PUT", "/v1/runs/zz%00evil", ("0x00",)),
            ("GET", "/v1/runs/victim%2Fstats", ("'/'",)),
            ("DELETE", "/v1/runs/victim%2f", ("'/'",)),
            ("POST", "/v1/runs/r1%2Fx/batches", ("'/'",)),
            ("PUT", "/v1/runs/a%20b", ("0x20",)),
            ("PUT", "/v1/runs/%C3%BCber", ("0xC3",)),
            ("PUT", "/v1/runs/a%2Ab", ("'*'",)),
            ("PUT", "/v1/runs/a%zzb", ("'%'",)),
            ("PUT", "/v1/runs/ab%4", ("'%'",)),
        ]
        for method, path, names in cases:
            body = {"world_size": 1} if method == "PUT" else (REP if method == "POST" else None)
            r = self.c.request(method, path, body=body)
            self.check_error(r, 400, f"{method} {path}", names)
        # a raw NUL byte, which http.client refuses to send
        r, _ = raw_exchange(self.daemon.port, request("DELETE", b"/v1/runs/r1\x00x", close=True))
        self.check(r is not None and r.status == 400 and r.error_code() == "bad_request",
                   "DELETE /v1/runs/r1<NUL>x -> 400 bad_request", r.short() if r else "no answer")
        self.check(r is not None and "NUL" in (r.error_message() or ""), "raw NUL: message names it",
                   r.short() if r else "")
        self.check_eq(self.runs(), before, "no run created or deleted by the refused requests")
        self.check_unchanged(snap, "r1", "refused requests on r1")
        # an escaped character of the grammar is the character itself
        r = self.c.put("/v1/runs/enc%2Dname%2E1", {"world_size": 1})
        self.check_status(r, 201, "PUT /v1/runs/enc%2Dname%2E1 creates enc-name.1")
        self.check_status(self.c.get("/v1/runs/enc-name.1"), 200, "GET /v1/runs/enc-name.1")

    def test_queries(self):
        self.make_run("q1")
        snap = self.snapshot("q1")
        cases = [
            ("GET", "/v1/runs/q1/stats?source=ema%00", ("source", "0x00")),
            ("GET", "/v1/runs/q1/stats?source=ema&source=precise", ("source", "more than once")),
            ("GET", "/v1/runs/q1/stats?layers=bn1&layers=bn1", ("layers", "more than once")),
            ("GET", "/v1/runs/q1/stats?layers=bn1,bn1", ("layers", "bn1")),
            ("GET", "/v1/runs/q1/stats?layers=bn1,bn2,bn1", ("layers", "bn1")),
            ("GET", "/v1/runs/q1/stats?lyers=bn1", ("lyers",)),
            ("GET", "/v1/runs/q1/stats?source=%zz", ("source", "'%'")),
            ("GET", "/v1/runs/q1/stats?=ema", ("without a name",)),
            ("GET", "/v1/runs/q1/stats?source", ("source",)),
            ("DELETE", "/v1/runs/q1?force=1", ("force",)),
            ("DELETE", "/v1/runs/q1?x%00=1", ("0x00",)),
            ("GET", "/v1/runs/q1?verbose=1", ("verbose",)),
            ("PUT", "/v1/runs/q1?world_size=2", ("world_size",)),
            ("POST", "/v1/runs/q1/batches?wait=1", ("wait",)),
            ("POST", "/v1/runs/q1/precise/reset?domain=x", ("domain",)),
            ("GET", "/v1/runs/q1/checkpoint?x=1", ("x",)),
            ("GET", "/v1/runs?sort=name", ("sort",)),
            ("GET", "/v1/runs?limit=10&limit=20", ("limit",)),
            ("GET", "/v1/version?x", ("x",)),
            ("GET", "/metrics?name=x", ("name",)),
        ]
        for method, path, names in cases:
            body = ({"world_size": 2} if method == "PUT" else
                    dict(REP, step=2) if path.startswith("/v1/runs/q1/batches") else
                    {} if method == "POST" else None)
            r = self.c.request(method, path, body=body)
            self.check_error(r, 400, f"{method} {path}", names)
        self.check_unchanged(snap, "q1", "refused queries")
        # the valid forms answer as before
        ok = self.c.get("/v1/runs/q1/stats?source=ema&layers=bn1&")
        self.check_status(ok, 200, "stats?source=ema&layers=bn1& (a trailing '&' is no parameter)")
        self.check(ok.status == 200 and list(ok.json().get("layers", {})) == ["bn1"], "answer holds bn1",
                   ok.short())
        self.check_status(self.c.get("/v1/runs/q1/stats?source=%65ma"), 200, "source=%65ma is ema")
        # thousands of parameters: answered (MHD queued a 431 it never sent)
        many = b"&".join(b"a%d=1" % i for i in range(2000))
        r, _ = raw_exchange(self.daemon.port, request("GET", b"/v1/runs?" + many, close=True))
        self.check(r is not None and r.status == 400 and r.error_code() == "bad_request",
                   "GET /v1/runs with 2,000 query parameters -> 400 bad_request",
                   r.short() if r else "no answer")

    def test_framing(self):
        port = self.daemon.port
        body = b'{"world_size": 1}'
        cases = [
            ("two different Content-Length values", "f1",
             [f"Content-Length: {len(body)}", "Content-Length: 5"], body, "Content-Length"),
            ("Content-Length with Transfer-Encoding: chunked", "f2",
             [f"Content-Length: {len(body)}", "Transfer-Encoding: chunked"],
             b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n", "Content-Length"),
            ("Transfer-Encoding: gzip", "f3", ["Transfer-Encoding: gzip"], body, "Transfer-Encoding"),
            ("Transfer-Encoding: gzip, chunked", "f4", ["Transfer-Encoding: gzip, chunked"],
             b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n", "Transfer-Encoding"),
            ("two Transfer-Encoding headers", "f5", ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
             b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n", "Transfer-Encoding"),
        ]
        for desc, run, headers, payload, name in cases:
            hdrs = ["Content-Type: application/json"] + headers
            r, closed = raw_exchange(port, request("PUT", f"/v1/runs/{run}".encode(), hdrs, payload))
            self.check(r is not None and r.status == 400 and r.error_code() == "bad_request",
                       f"{desc} -> 400 bad_request (JSON)", r.short() if r else "no answer")
            self.check(r is not None and name in (r.error_message() or ""), f"{desc}: message names {name}",
                       r.short() if r else "")
            self.check(r is not None and r.headers.get("connection", "").lower() == "close",
                       f"{desc}: answered with Connection: close", str(r.headers if r else None))
            self.check(closed, f"{desc}: the daemon closed the connection")
            if r is not None and r.is_json():
                err = nsd.schemas().validate(nsd.Response("PUT", f"/v1/runs/{run}", r.status, "",
                                                          r.header_list, r.body))
                self.check(err in (True, None), f"{desc}: answer conforms to proto/openapi.yaml", str(err))
            self.check_status(self.c.get(f"/v1/runs/{run}"), 404, f"{desc}: run {run} not created")
        # a repeated but equal Content-Length is one length
        r, _ = raw_exchange(port, request("PUT", b"/v1/runs/f6",
                                          ["Content-Type: application/json", f"Content-Length: {len(body)}",
                                           f"Content-Length: {len(body)}"], body, close=True))
        self.check(r is not None and r.status == 201, "two equal Content-Length values -> 201",
                   r.short() if r else "no answer")

    def test_oversized(self):
        port = self.daemon.port
        cases = [
            ("a 200 KB URL", request("GET", b"/v1/runs/" + b"a" * 200000), 414),
            ("a 200 KB header", request("GET", b"/livez", [b"X-Big: " + b"a" * 200000]), 431),
            ("3,000 small headers", request("GET", b"/livez", [b"X-%d: 1" % i for i in range(3000)]), 431),
        ]
        for desc, data, status in cases:
            r, closed = raw_exchange(port, data)
            self.check(r is not None and r.status == status, f"{desc} -> {status}",
                       r.short() if r else "no answer")
            self.check_json_error(r, desc)
            self.check(closed, f"{desc}: the daemon closed the connection")
        self.check_status(self.c.get("/livez"), 200, "/livez answers afterwards")

    def check_json_error(self, r, desc, code="bad_request"):
        """The API's JSON error body, never libmicrohttpd's HTML page."""
        if r is None:
            return
        self.check(r.headers.get("content-type", "").startswith("application/json"),
                   f"{desc}: Content-Type application/json", str(r.headers))
        self.check(b"<html" not in r.body.lower(), f"{desc}: no HTML page", r.body[:120])
        try:
            err = nsd.json.loads(r.body.decode())["error"]
            ok = err.get("code") == code and isinstance(err.get("message"), str) and err["message"]
        except (ValueError, KeyError, TypeError, AttributeError):
            ok, err = False, r.body[:200]
        self.check(ok, f"{desc}: JSON error body with code {code} and a message", str(err))

    def test_unparsable_http(self):
        """What libmicrohttpd refuses before any handler runs is answered
        with the same JSON error body as everything else."""
        port = self.daemon.port
        body = b'{"world_size": 1}'
        cases = [
            ("a header line without a colon", request("GET", b"/v1/runs", [b"Bad Header"]), 400,
             "bad_request"),
            ("HTTP/9.9", b"GET /v1/runs HTTP/9.9\r\nHost: x\r\n\r\n", 505, "bad_request"),
            ("HTTP/0.9-style version HTTP/0.1", b"GET /v1/runs HTTP/0.1\r\nHost: x\r\n\r\n", 505,
             "bad_request"),
            ("a chunk size that is not hexadecimal",
             request("PUT", b"/v1/runs/u1", ["Content-Type: application/json", "Transfer-Encoding: chunked"],
                     b"zz\r\n" + body + b"\r\n0\r\n\r\n"), 400, "bad_request"),
            ("a chunk size beyond 64 bits",
             request("PUT", b"/v1/runs/u2", ["Content-Type: application/json", "Transfer-Encoding: chunked"],
                     b"fffffffffffffffffffff\r\n" + body + b"\r\n0\r\n\r\n"), 413, "body_too_large"),
        ]
        for desc, data, status, code in cases:
            r, closed = raw_exchange(port, data)
            self.check(r is not None and r.status == status, f"{desc} -> {status}",
                       r.short() if r else "no answer")
            self.check_json_error(r, desc, code)
            self.check(closed, f"{desc}: the daemon closed the connection")
        self.check_eq(self.runs().count("u1") + self.runs().count("u2"), 0, "no run was created")
        self.check_status(self.c.get("/livez"), 200, "/livez answers afterwards")

    def test_reset_unknown_domain(self):
        run = "d1"
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 1}).status == 201, "create d1")
        self.require(self.c.report(run, dict(REP, domain="photo")).status == 202, "d1: photo step 1")
        snap = self.snapshot(run)
        g0 = self.c.get(f"/v1/runs/{run}").json()["status"]["precise_generation"]
        r = self.c.post(f"/v1/runs/{run}/precise/reset", {"domain": "sketch"})
        self.check_status(r, 404, "reset of domain sketch, which d1 has not seen", code="not_found")
        self.check("sketch" in (r.error_message() or ""), "message names the domain", r.short())
        self.check_unchanged(snap, run, "refused reset")
        st = self.c.get(f"/v1/runs/{run}").json()["status"]
        self.check_eq((st["precise_generation"], [d["domain"] for d in st["domains"]]), (g0, ["photo"]),
                      "generation and domains unchanged")
        self.check_status(self.c.post(f"/v1/runs/{run}/precise/reset", {"domain": "photo"}), 200,
                          "reset of the known domain photo")
        self.check_status(self.c.post(f"/v1/runs/{run}/precise/reset", {"domain": "*"}), 200,
                          "reset of every domain")

    def test_put_racing_delete(self):
        # The window (between the map lookup and the run's lock) is narrow:
        # eight PUT and eight DELETE threads hit it a few times in 4,000 PUTs.
        rounds, pairs = 500, 8
        statuses = {"PUT": set(), "DELETE": set()}
        bad = []

        def worker(method, n):
            cl = self.client()

            def go():
                seen = []
                for _ in range(n):
                    if method == "PUT":
                        r = cl.put("/v1/runs/race", {"world_size": 1}, validate=False)
                    else:
                        r = cl.delete("/v1/runs/race", validate=False)
                    seen.append((r.status, r.error_code()))
                return seen
            return go

        fns = [worker("PUT", rounds) for _ in range(pairs)] + [worker("DELETE", rounds) for _ in range(pairs)]
        results, errors = nsd.parallel(fns, limit=40.0)
        self.check(not any(errors), "every racing request answered", str([e for e in errors if e]))
        for i, seen in enumerate(results):
            method = "PUT" if i < pairs else "DELETE"
            for status, code in seen or []:
                statuses[method].add(status)
                allowed = {200, 201} if method == "PUT" else {204, 404}
                if status not in allowed and not (method == "PUT" and status == 409 and code == "conflict"):
                    bad.append((method, status, code))
        self.check(not bad, f"PUT racing DELETE: PUT answers 200/201/409 conflict, DELETE 204/404 "
                            f"(seen {sorted(statuses['PUT'])} / {sorted(statuses['DELETE'])})", str(bad[:5]))


if __name__ == "__main__":
    nsd.main()
