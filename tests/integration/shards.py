"""shards.py - a real nginx in front of normstatd shards, for the tests of
deploy/nginx/normstat-shards.conf, and nginx's consistent hash evaluated
independently of nginx.

Proxy(shard_ports, work_dir) runs the shipped configuration itself: the
shard names (normstat-K:8750) become 127.0.0.1:<port of shard K>, the listen
port an ephemeral one, everything else is unchanged. Around it a main
nginx.conf of our own gives nginx a private prefix, pid file, logs and
temporary directories, so Debian's `nginx` runs as the current user
(workers too when that is root) and touches nothing of the system's. nginx
runs in its own process group, killed as a group by kill() and by nsd.py's
alarm, so no worker outlives a test.

chash_shard() is nginx's `hash ... consistent` (ngx_http_upstream_hash_module:
ketama points crc32(HOST \\0 PORT PREV_HASH), 160 per server of weight 1,
the key's crc32 looked up on the sorted ring), written from its description
in Python's zlib, to predict the shard of every run.
"""

import bisect
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import zlib

import nsd

CONF = os.path.join(nsd.REPO, "deploy", "nginx", "normstat-shards.conf")
SHARD_NAME = re.compile(r"\bnormstat-(\d+):8750\b")
START_LIMIT_S = 10.0
STOP_LIMIT_S = 10.0
START_TRIES = 5  # an ephemeral port taken between choosing it and nginx binding it


def nginx_binary():
    for path in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if path and os.access(path, os.X_OK):
            return path
    raise RuntimeError("nginx is not installed: sh mk/deps.sh test (Debian's nginx)")


def upstreams(text):
    """{upstream name: [server address as written]} of an nginx configuration."""
    out = {}
    for m in re.finditer(r"^\s*upstream\s+(\S+)\s*\{(.*?)^\s*\}", text, re.M | re.S):
        out[m.group(1)] = re.findall(r"^\s*server\s+(\S+?)[\s;]", m.group(2), re.M)
    return out


def shipped_conf(shard_ports, listen_port):
    """The shipped configuration with loopback shard addresses and port.
    Returns (text, number of shard names replaced)."""
    with open(CONF, encoding="utf-8") as f:
        text = f.read()

    def shard(m):
        return f"127.0.0.1:{shard_ports[int(m.group(1))]}"

    text, n = SHARD_NAME.subn(shard, text)
    text, listens = re.subn(r"^(\s*)listen 8750;", rf"\g<1>listen 127.0.0.1:{listen_port};",
                            text, flags=re.M)
    if listens != 1:
        raise RuntimeError(f"{CONF}: expected one 'listen 8750;', found {listens}")
    return text, n


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proxy:
    """Debian's nginx running deploy/nginx/normstat-shards.conf on loopback."""

    def __init__(self, shard_ports, work_dir):
        self.shard_ports = list(shard_ports)
        self.dir = work_dir
        self.proc = None
        self.port = None
        self.replaced = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _write(self, port):
        os.makedirs(self.dir, exist_ok=True)
        conf, self.replaced = shipped_conf(self.shard_ports, port)
        with open(os.path.join(self.dir, "normstat-shards.conf"), "w", encoding="utf-8") as f:
            f.write(conf)
        user = ""
        if os.geteuid() == 0:  # workers would otherwise switch to nobody
            import grp
            import pwd
            user = (f"user {pwd.getpwuid(os.geteuid()).pw_name} "
                    f"{grp.getgrgid(os.getegid()).gr_name};\n")
        d = self.dir
        main = (f"daemon off;\nmaster_process on;\nworker_processes 1;\n{user}"
                f"pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n"
                "events { worker_connections 512; }\n"
                "http {\n"
                f"    access_log {d}/access.log;\n"
                f"    client_body_temp_path {d}/client_body;\n"
                f"    proxy_temp_path {d}/proxy;\n"
                f"    fastcgi_temp_path {d}/fastcgi;\n"
                f"    uwsgi_temp_path {d}/uwsgi;\n"
                f"    scgi_temp_path {d}/scgi;\n"
                f"    include {d}/normstat-shards.conf;\n"
                "}\n")
        with open(os.path.join(d, "nginx.conf"), "w", encoding="utf-8") as f:
            f.write(main)

    def _argv(self, *extra):
        return [nginx_binary(), "-p", self.dir, "-c", os.path.join(self.dir, "nginx.conf"),
                "-e", os.path.join(self.dir, "error.log"), *extra]

    def check_config(self):
        """`nginx -t` of the written configuration: (exit status, output)."""
        r = subprocess.run(self._argv("-t"), capture_output=True, text=True, timeout=30)
        return r.returncode, r.stdout + r.stderr

    def start(self):
        last = ""
        for _ in range(START_TRIES):
            self.port = free_port()
            self._write(self.port)
            rc, out = self.check_config()
            if rc != 0:
                raise RuntimeError(f"nginx -t refused the configuration:\n{out}")
            self.proc = subprocess.Popen(self._argv(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            nsd._daemons.append(self)
            if self._wait_serving():
                return self
            last = self.log_tail()
            self.kill()
        raise RuntimeError(f"nginx did not serve /livez within {START_LIMIT_S}s:\n{last}")

    def _wait_serving(self):
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
            try:
                c.request("GET", "/livez")
                if c.getresponse().status == 200:
                    return True
            except (OSError, http.client.HTTPException):
                pass
            finally:
                c.close()
            time.sleep(0.02)
        return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM (nginx's fast shutdown), bounded; returns the exit status
        (None if the group had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            rc = None
        self.kill()
        return rc

    def kill(self):
        """SIGKILL to nginx's process group (master and workers)."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self in nsd._daemons:
            nsd._daemons.remove(self)

    def log_tail(self, n=20):
        try:
            with open(os.path.join(self.dir, "error.log"), encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


# ---------------------------------------------------------------- nginx's consistent hash


def _crc32(data):
    return zlib.crc32(data) & 0xFFFFFFFF


def chash_ring(servers):
    """The sorted ketama points of servers ("host:port" as written in the
    upstream block, weight 1): [(hash, server)], duplicates dropped."""
    points = []
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not port.isdigit():
            host, port = server, ""
        base = host.encode() + b"\0" + port.encode()
        prev = 0
        for _ in range(160):
            h = _crc32(base + prev.to_bytes(4, "little"))
            points.append((h, server))
            prev = h
    points.sort(key=lambda p: p[0])
    ring = []
    for h, server in points:
        if not ring or ring[-1][0] != h:
            ring.append((h, server))
    return ring


def chash_shard(ring, key):
    """The server nginx picks for 'key' (str) on 'ring' when all are up."""
    hashes = [h for h, _ in ring]
    i = bisect.bisect_left(hashes, _crc32(key.encode()))
    return ring[i % len(ring)][1]


def background(fn):
    """Run fn() in a thread; returns (thread, box) where box["value"] or
    box["error"] is set when it ends."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box
