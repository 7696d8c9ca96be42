"""test_connections.py - idle sockets, slowloris and trickled bodies cause no outage.

Before: about 1,020 connections in all, no limit per address and only an
idle timeout: 2,000 idle sockets made /livez unreachable for 59 s, 1,100
slowloris connections timed out every probe, and bodies trickled at one byte
per second were never closed.

1. An attacker on 127.0.0.2-127.0.0.9 keeps 2,000 idle sockets and 1,100
   slowloris connections (one byte per second) open, reconnecting whatever
   the daemon closes, while a client on 127.0.0.1 asks /livez and posts a
   report to /batches, each on a new connection and on one kept-alive
   connection, over and over: every request must be answered, each within
   1 s (a generous bound that fails only on an outage, not a benchmark).
   The metrics must show the defences at work: refusals per address,
   evictions, header deadlines.
2. 300 bodies trickled one byte at a time are each closed by
   --body-timeout (the daemon closes them; the client never stops sending).
3. With the general pool full of connections inside a request (which are
   never evicted), the reserve still serves probes from new connections and
   exactly one other request at a time; a second is 503
   too_many_connections.

Every socket operation has a timeout; all loops are bounded in time.
"""

import multiprocessing
import os
import resource
import selectors
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

ATTACK_ADDRS = [f"127.0.0.{i}" for i in range(2, 10)]
IDLE_SOCKETS = 2000
SLOW_SOCKETS = 1100
ATTACK_S = 12.0          # how long the attack lasts
ANSWER_LIMIT_S = 1.0     # per request of the normal client: an outage, not a benchmark
HEADER_MS, BODY_MS = 3000, 3000
TRICKLED = 300
IP_BIND_ADDRESS_NO_PORT = 24  # Linux: pick the port at connect(), sharing ports across peers


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_from(addr, port, blocking=False, timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    s.bind((addr, 0))
    if blocking:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
    else:
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
    return s


def metric(text, name, labels=""):
    key = name + labels
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return None


class Attacker:
    """Keeps 'idle' silent sockets and 'slow' slowloris sockets open from the
    attack addresses, reopening those the daemon closes. Runs in a process
    of its own, so that its work never delays the normal client's."""

    def __init__(self, port, idle, slow):
        self.port, self.want = port, {"idle": idle, "slow": slow}
        self.opened = 0
        self.closed_by_daemon = 0
        self.peak = 0
        self.error = None
        ctx = multiprocessing.get_context("fork")
        self.stop = ctx.Event()
        self._results = ctx.Queue()
        self._proc = ctx.Process(target=self._main, daemon=True)

    def start(self):
        self._proc.start()

    def join(self, limit):
        try:
            self.opened, self.closed_by_daemon, self.peak, self.error = \
                self._results.get(timeout=limit)
        except Exception as e:
            self.error = f"no result from the attacker process: {e!r}"
        self._proc.join(limit)
        if self._proc.is_alive():
            self._proc.kill()

    def _main(self):
        try:
            self._run()
        except BaseException as e:  # reported by the test
            self.error = repr(e)
        self._results.put((self.opened, self.closed_by_daemon, self.peak, self.error))

    def _open(self, sel, kind, n):
        # idle sockets from two addresses (past the per-address limit), the
        # slowloris from the six others
        addrs = ATTACK_ADDRS[:2] if kind == "idle" else ATTACK_ADDRS[2:]
        addr = addrs[n % len(addrs)]
        try:
            s = open_from(addr, self.port)
        except OSError:
            return False
        if kind == "slow" and n % 2 == 0:
            # half send a request line at once, then a header one byte at a time
            try:
                s.send(b"POST /v1/runs/slow/batches HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            except OSError:
                pass
        sel.register(s, selectors.EVENT_READ, kind)
        self.opened += 1
        return True

    def _run(self):
        sel = selectors.DefaultSelector()
        count = {"idle": 0, "slow": 0}
        next_byte = time.monotonic() + 1.0
        while not self.stop.is_set():
            for kind in ("idle", "slow"):
                budget = 60  # new sockets per round
                while count[kind] < self.want[kind] and budget > 0:
                    budget -= 1
                    if self._open(sel, kind, self.opened):
                        count[kind] += 1
            self.peak = max(self.peak, count["idle"] + count["slow"])
            for key, _ in sel.select(0.05):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    s.close()
                    count[key.data] -= 1
                    self.closed_by_daemon += 1
            if time.monotonic() >= next_byte:
                next_byte += 1.0
                for key in list(sel.get_map().values()):
                    if key.data == "slow":
                        try:
                            key.fileobj.send(b"a")
                        except OSError:
                            pass
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()


def read_until_closed(s, limit):
    """Read until the peer closes; returns (closed, data)."""
    data = b""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except OSError:
            return True, data
        if not chunk:
            return True, data
        data += chunk
    return False, data


REPORT = {"step": 0, "worker": 0,
          "layers": {"bn1": {"count": 4, "mean": [0.5, -1.0], "var": [1.0, 2.0]}}}


class Flood(nsd.Case):
    DAEMON_ARGS = ("--header-timeout", str(HEADER_MS), "--body-timeout", str(BODY_MS))

    def metrics(self, timeout=5.0):
        cl = nsd.Client("127.0.0.1", self.daemon.port, timeout=timeout)
        try:
            r = cl.get("/metrics")
        finally:
            cl.close()
        return r.body.decode() if r.status == 200 else ""

    def test_1_idle_and_slowloris(self):
        limit = raise_fd_limit(IDLE_SOCKETS + SLOW_SOCKETS + 1000)
        self.require(limit >= IDLE_SOCKETS + SLOW_SOCKETS + 200,
                     f"the test process may open {IDLE_SOCKETS + SLOW_SOCKETS} sockets",
                     f"RLIMIT_NOFILE {limit}")
        attacker = Attacker(self.daemon.port, IDLE_SOCKETS, SLOW_SOCKETS)
        attacker.start()
        kept = self.client(timeout=ANSWER_LIMIT_S)
        failures, answered, slowest = [], 0, 0.0
        step, most_held, next_scrape = 0, 0, time.monotonic() + 1
        end = time.monotonic() + ATTACK_S
        while time.monotonic() < end:
            if time.monotonic() >= next_scrape:
                next_scrape += 1
                try:
                    held = metric(self.metrics(ANSWER_LIMIT_S), "normstat_connections_open",
                                  '{pool="general"}')
                    most_held = max(most_held, held or 0)
                except Exception as e:
                    failures.append(f"metrics: {e!r}")
            for fresh in (True, False):
                cl = nsd.Client("127.0.0.1", self.daemon.port, timeout=ANSWER_LIMIT_S) \
                    if fresh else kept
                for what in ("livez", "batches"):
                    t0 = time.monotonic()
                    try:
                        if what == "livez":
                            r = cl.get("/livez")
                            ok = r.status == 200
                        else:
                            rep = dict(REPORT, step=step)
                            step += 1
                            r = cl.report("flood", rep)
                            ok = r.status == 202
                        if not ok:
                            failures.append(f"{what} fresh={fresh}: {r.short()}")
                    except Exception as e:  # a timeout or a refused connection is the outage
                        failures.append(f"{what} fresh={fresh}: {e!r}")
                    else:
                        answered += 1
                    slowest = max(slowest, time.monotonic() - t0)
                if fresh:
                    self._clients.append(cl)  # its schema checks count too
                    cl.close()
        attacker.stop.set()
        attacker.join(10)
        self.check(attacker.error is None, "the attacker ran without error", attacker.error)
        print(f"note attacker: {attacker.opened} sockets opened, peak {attacker.peak} open at "
              f"once, {attacker.closed_by_daemon} closed by the daemon; normal client: "
              f"{answered} requests answered, slowest {slowest:.3f}s; daemon held up to "
              f"{most_held:.0f} connections")
        self.check(attacker.opened >= IDLE_SOCKETS + SLOW_SOCKETS,
                   f"the attacker opened at least {IDLE_SOCKETS + SLOW_SOCKETS} sockets",
                   f"{attacker.opened}")
        self.check(most_held >= 1024, "the daemon's connection pool (1024) was full meanwhile",
                   f"{most_held}")
        self.check(not failures and answered > 0,
                   f"every /livez and /batches of 127.0.0.1 answered within {ANSWER_LIMIT_S}s "
                   "during the attack", "; ".join(failures[:5]) + f" ({len(failures)} failures)")
        m = self.metrics()
        for name, labels in (("normstat_connections_refused_total", '{reason="per_address"}'),
                             ("normstat_connections_closed_total", '{reason="evicted"}'),
                             ("normstat_connections_closed_total", '{reason="header_timeout"}')):
            v = metric(m, name, labels)
            self.check(v is not None and v > 0, f"{name}{labels} counted the defence", f"{v}")
        # once the attacker is gone, its connections go: nothing stays held
        end = time.monotonic() + 10
        held = None
        while time.monotonic() < end:
            held = metric(self.metrics(), "normstat_connections_open", '{pool="general"}')
            if held is not None and held <= 3:
                break
            time.sleep(0.1)
        self.check(held is not None and held <= 3, "the attacker's connections are all closed",
                   f"{held} still open")

    def test_2_trickled_bodies(self):
        raise_fd_limit(TRICKLED + 1000)
        socks = []
        head = (b"POST /v1/runs/trickle/batches HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        for i in range(TRICKLED):
            s = open_from(ATTACK_ADDRS[i % len(ATTACK_ADDRS)], self.daemon.port, blocking=True)
            s.sendall(head)
            socks.append(s)
        t0 = time.monotonic()
        closed_at = [None] * TRICKLED
        end = t0 + BODY_MS / 1000 + 10  # generous: without the deadline none closes
        while time.monotonic() < end and None in closed_at:
            for i, s in enumerate(socks):
                if closed_at[i] is not None:
                    continue
                try:
                    s.settimeout(0)
                    data = s.recv(4096)
                    if not data:
                        closed_at[i] = time.monotonic() - t0
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[i] = time.monotonic() - t0
                    continue
                try:
                    s.send(b" ")
                except OSError:
                    closed_at[i] = time.monotonic() - t0
            time.sleep(0.2)
        for s in socks:
            s.close()
        done = [t for t in closed_at if t is not None]
        print(f"note trickled bodies: {len(done)} of {TRICKLED} closed, the last after "
              f"{max(done) if done else 0:.2f}s (--body-timeout {BODY_MS} ms)")
        self.check(len(done) == TRICKLED, f"all {TRICKLED} trickled bodies closed by the daemon",
                   f"{TRICKLED - len(done)} still open after {end - t0:.0f}s")
        v = metric(self.metrics(), "normstat_connections_closed_total", '{reason="body_timeout"}')
        self.check(v is not None and v >= TRICKLED, "counted as body_timeout", f"{v}")
        r = self.c.get("/livez")
        self.check_status(r, 200, "the daemon serves afterwards")


def request_bytes(method, path, body=b"", extra=""):
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def status_of(data):
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


class Reserve(nsd.Case):
    GENERAL = 32
    DAEMON_ARGS = ("--max-connections", str(GENERAL), "--body-timeout", "30000")

    def exchange(self, addr, data, limit=5.0):
        s = open_from(addr, self.daemon.port, blocking=True)
        s.sendall(data)
        closed, got = read_until_closed(s, limit)
        s.close()
        return closed, got

    def test_reserve(self):
        # the general pool, full of requests waiting for a body that never
        # comes: a connection inside a request is never evicted
        held = []
        head = (b"POST /v1/runs/held/batches HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        for i in range(self.GENERAL):
            s = open_from("127.0.0.2", self.daemon.port, blocking=True)
            s.sendall(head)
            held.append(s)
            # 100 Continue: the daemon counted it and read its headers
            if status_of(s.recv(4096)) != 100:
                self.require(False, f"held connection {i} is inside its request (100 Continue)")
        closed, got = self.exchange("127.0.0.13", request_bytes("GET", "/metrics"))
        text = got.decode("latin-1")
        full = metric(text, "normstat_connections_open", '{pool="general"}')
        self.require(full == self.GENERAL and closed,
                     f"the general pool holds {self.GENERAL} connections inside a request, and "
                     "/metrics is answered from the reserve", f"{full}")
        closed, got = self.exchange("127.0.0.1", request_bytes("GET", "/livez"))
        self.check(status_of(got) == 200 and closed and b"close" in got.lower(),
                   "/livez on a new connection is answered from the reserve, then closed",
                   got[:200])
        # the one other request: headers in (100 Continue proves the daemon read them)
        rep = (b'{"step": 1, "worker": 0, "layers": {"bn1": {"count": 4, '
               b'"mean": [0.5], "var": [1.0]}}}')
        a = open_from("127.0.0.10", self.daemon.port, blocking=True)
        a.sendall(request_bytes("POST", "/v1/runs/res/batches", rep,
                                extra="Expect: 100-continue\r\n")[:-len(rep)])
        a.settimeout(5)
        cont = a.recv(4096)
        self.require(status_of(cont) == 100, "a non-probe request on a reserved connection "
                     "is let through (100 Continue)", cont[:200])
        closed, got = self.exchange("127.0.0.11", request_bytes("POST", "/v1/runs/res/batches",
                                                               rep))
        self.check(status_of(got) == 503 and b"too_many_connections" in got and closed,
                   "a second non-probe request meanwhile -> 503 too_many_connections, closed",
                   got[:300])
        closed, got = self.exchange("127.0.0.12", request_bytes("GET", "/readyz"))
        self.check(status_of(got) == 200, "/readyz still answered from the reserve", got[:200])
        a.sendall(rep)
        closed, got = read_until_closed(a, 5)
        a.close()
        self.check(status_of(got) == 202 and closed, "the admitted request is answered "
                   "(202) and its connection closed", got[:300])
        end, got = time.monotonic() + 5, b""
        while time.monotonic() < end:
            closed, got = self.exchange("127.0.0.11", request_bytes(
                "POST", "/v1/runs/res/batches", rep.replace(b'"step": 1', b'"step": 2')))
            if status_of(got) == 202:
                break
            time.sleep(0.05)
        self.check(status_of(got) == 202, "once it closed, the next other request is served",
                   got[:300])
        for s in held:
            s.close()


if __name__ == "__main__":
    nsd.main()
