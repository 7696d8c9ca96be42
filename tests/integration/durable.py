"""durable.py - persistent normstatd daemons for the durability tests.

Extends the nsd.py harness with what the durability tests need and nsd.py
does not offer: a daemon started WITH persistence on a given --data-dir that
survives stop/kill (so the next daemon restarts on it), a start that expects
a refusal (exit status and stderr of a daemon that must not come up), the
views of a run recorded as bytes for bit-for-bit comparisons, an
independent PRAGMA integrity_check on a copy of the store, and scratch
mounts (tmpfs, read-only bind) that are always undone.
"""

import atexit
import http.client
import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import tempfile
import threading
import time

import nsd

DB_NAME = "normstat.db"
REFUSE_LIMIT_S = 6.0  # a daemon that must refuse to start has exited by then


class Case(nsd.Case):
    """A test case without nsd.Case's class-wide daemon: each test starts its
    own daemons under a fresh temporary directory, self.root (prefix
    root_prefix), removed by finish()."""

    root_prefix = "normstat-"

    @classmethod
    def setUpClass(cls):
        cls.daemon = None
        cls.c = None

    @classmethod
    def tearDownClass(cls):
        pass

    def setUp(self):
        self._fails = []
        self._clients = []
        self.root = tempfile.mkdtemp(prefix=self.root_prefix)

    def finish(self):
        """Remove self.root, then fail the test if any check failed."""
        shutil.rmtree(self.root, ignore_errors=True)
        if self._fails:
            self.fail(f"{len(self._fails)} failed checks: " + "; ".join(map(str, self._fails[:5])))


class KillCycles:
    """What the threads of a kill -9 test share with the test that kills and
    restarts the daemon under them. Each epoch is one daemon: a thread that
    loses its connection parks until the test has checked the restarted
    daemon and bumped the epoch (or set stop)."""

    def __init__(self, layers):
        self.cond = threading.Condition()
        self.epoch = 0  # bumped when a (re)started daemon is checked and released to the threads
        self.port = None
        self.resume = {l: 0 for l in layers}  # finalized step per layer at the epoch's start
        self.stop = False
        self.stop_at = None  # threads do not report steps beyond this
        self.parked = set()
        self.finished = set()
        self.failures = []  # unexpected answers: (desc, detail)
        self.sync_bad = []

    def park(self, who, epoch):
        """Under self.cond: wait parked while the daemon of 'epoch' is being
        replaced. @return the new epoch, or None when the test stops."""
        self.parked.add(who)
        self.cond.notify_all()
        while not self.stop and self.epoch == epoch:
            self.cond.wait(1.0)
        self.parked.discard(who)
        return None if self.stop else self.epoch


class Durable(nsd.Daemon):
    """A normstatd on a fixed data directory that is never removed by the
    harness (nsd.Daemon deletes its temporary one); persist=False adds
    --no-persist. Every start gets a new ephemeral port."""

    def __init__(self, data_dir, *args, persist=True, name="nsd", log_level="debug"):
        super().__init__(*args, persist=persist, name=name)
        self.dir = data_dir
        self.log_level = log_level
        self.readyz_seen = []  # /readyz statuses observed while starting
        self.not_ready_probes = []  # (check, ok, detail) made while /readyz was 503, all starts
        self.past_lines = []  # sanitizer lines of earlier starts

    def sanitizer_reports(self):
        """Sanitizer lines of every start of this daemon."""
        with self._lock:
            return self.past_lines + [line for line in self.lines if _sanitizer_line(line)]

    def _spawn(self):
        exe = nsd.binary_path()
        if not os.access(exe, os.X_OK):
            raise RuntimeError(f"{exe} is not built (set NS_BUILD or run make)")
        self.data_dir = None  # nsd.Daemon._cleanup must not delete our directory
        self.port = None
        with self._lock:
            self.past_lines += [line for line in self.lines if _sanitizer_line(line)]
        self.lines = []
        self.readyz_seen = []
        argv = [exe, "--listen", "127.0.0.1:0", "--data-dir", self.dir, "--log-level", self.log_level]
        if not self.persist:
            argv.append("--no-persist")
        argv += self.args
        self.argv = argv
        self._popen(argv, tempfile.gettempdir())

    def start(self, limit=nsd.START_LIMIT_S):
        """Start and wait (bounded) until /readyz answers 200."""
        self._spawn()
        deadline = time.monotonic() + limit
        self._listening.wait(limit)
        if self.port is None:
            self.kill()
            raise RuntimeError(f"normstatd did not log event=listening within {limit}s "
                               f"(exit status {self.proc.poll()}); stderr:\n{self.log_tail()}")
        c = self.client(timeout=2.0)
        probed = False
        try:
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    r = c.request("GET", "/readyz", validate=False)
                    self.readyz_seen.append(r.status)
                    if r.status == 200:
                        return self
                    if r.status == 503 and not probed:
                        probed = True
                        self._probe_not_ready(c)
                except (OSError, http.client.HTTPException) as e:
                    self.readyz_seen.append(repr(e))
                time.sleep(0.005)
        finally:
            c.close()
        rc = self.proc.poll()
        self.kill()
        raise RuntimeError(f"normstatd not ready within {limit}s (exit status {rc}, /readyz seen "
                           f"{self.readyz_seen[-3:]}); stderr:\n{self.log_tail()}")

    def _probe_not_ready(self, c):
        """While /readyz says 503 (recovering): a read (GET /v1/runs) must be
        answered 200 and a write must get 503 not_ready. The write is a
        PreciseBN reset of a run that never exists, so if the daemon became
        ready meanwhile it is a harmless 404 (accepted only if /readyz is 200
        right after). Records (description, ok, detail) in not_ready_probes."""
        r = c.request("GET", "/v1/runs", validate=False)
        self.not_ready_probes.append(("GET /v1/runs while /readyz is 503 -> 200", r.status == 200, r.short(200)))
        r = c.request("POST", "/v1/runs/never-created-probe/precise/reset", body={}, validate=False)
        ok = r.status == 503 and r.error_code() == "not_ready"
        if not ok and r.status == 404:
            ok = c.request("GET", "/readyz", validate=False).status == 200
        self.not_ready_probes.append(("a write while /readyz is 503 -> 503 not_ready", ok, r.short(200)))

    def start_refused(self, limit=REFUSE_LIMIT_S):
        """Start a daemon that must refuse to start. Returns (exit status or
        None if it was still running after 'limit' s and had to be killed,
        its stderr lines, whether /readyz ever answered 200)."""
        self._spawn()
        deadline = time.monotonic() + limit
        ready = False
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.port is not None and not ready:
                c = self.client(timeout=1.0)
                try:
                    ready = c.request("GET", "/readyz", validate=False).status == 200
                except (OSError, http.client.HTTPException):
                    pass
                finally:
                    c.close()
                if ready:
                    break  # it is serving: no refusal is coming
            time.sleep(0.02)
        rc = self.proc.poll()
        if rc is None:
            self.kill()
        else:
            self._cleanup()
        with self._lock:
            lines = list(self.lines)
        return rc, lines, ready

    def sigkill(self):
        """SIGKILL and reap; returns the exit status (-9)."""
        self.proc.send_signal(signal.SIGKILL)
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        self._cleanup()
        return rc

    def db_path(self):
        return os.path.join(self.dir, DB_NAME)


def _sanitizer_line(line):
    return any(m in line for m in ("ERROR: AddressSanitizer", "WARNING: ThreadSanitizer", "runtime error:",
                                   "ERROR: LeakSanitizer", "WARNING: MemorySanitizer"))


def error_lines(lines):
    """The stderr lines logged at level error (or worse)."""
    return [line for line in lines if re.search(r"\blevel=(error|fatal|crit|critical|panic)\b", line)]


# ---------------------------------------------------------------- SQLite checks


def integrity_check(data_dir):
    """PRAGMA integrity_check of a copy of DIR/normstat.db (+ its -wal), so
    the check can neither change nor be influenced by the daemon's files.
    Returns the result text ("ok" when sound)."""
    src = os.path.join(data_dir, DB_NAME)
    if not os.path.exists(src):
        return f"{src} does not exist"
    tmp = tempfile.mkdtemp(prefix="normstat-icheck-")
    try:
        dst = os.path.join(tmp, DB_NAME)
        shutil.copyfile(src, dst)
        if os.path.exists(src + "-wal"):
            shutil.copyfile(src + "-wal", dst + "-wal")
        con = sqlite3.connect(dst)
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
        finally:
            con.close()
        return "; ".join(str(r[0]) for r in rows)
    except sqlite3.Error as e:
        return f"sqlite3 error: {e}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def listing(d):
    """{name: bytes} of the regular files of a directory (small stores only)."""
    out = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if os.path.isfile(p):
            out[name] = file_bytes(p)
    return out


# ---------------------------------------------------------------- views of a run


STATUS_KEEP = ("layers", "domains", "skipped_steps", "precise_generation")
LAYER_DROP = ("pending_steps",)  # pending steps live in memory only


def run_status(body):
    """GET /v1/runs/{run} reduced to what must survive a restart: config and
    the durable parts of status (no pending steps, workers, memory, ages)."""
    st = body.get("status", {}) if isinstance(body, dict) else {}
    out = {"config": body.get("config") if isinstance(body, dict) else None}
    for k in STATUS_KEEP:
        v = st.get(k)
        if k == "layers" and isinstance(v, dict):
            v = {ln: {a: b for a, b in lv.items() if a not in LAYER_DROP} if isinstance(lv, dict) else lv
                 for ln, lv in v.items()}
        out[k] = v
    return out


def views(client, run, domains=(), layers=None, mixture=None):
    """Every statistics view of a run as {key: (status, body bytes)}: each
    source (ema, precise, last) for each domain and "*", json and
    safetensors; precise variance=biased; a layers= subset; a mixture;
    the checkpoint; and the run's durable status."""
    out = {}
    doms = list(domains) + ["*"]
    for src in ("ema", "precise", "last"):
        for d in doms:
            for fmt in ("json", "safetensors"):
                q = {"source": src, "domain": d, "format": fmt}
                r = client.stats(run, **q)
                out[f"stats {src} domain={d} {fmt}"] = (r.status, r.body)
    for d in doms:
        r = client.stats(run, source="precise", domain=d, variance="biased")
        out[f"stats precise domain={d} variance=biased"] = (r.status, r.body)
    if layers:
        r = client.stats(run, layers=",".join(layers))
        out[f"stats ema layers={','.join(layers)}"] = (r.status, r.body)
    if mixture:
        for src in ("ema", "precise"):
            for fmt in ("json", "safetensors"):
                r = client.stats(run, source=src, mixture=mixture, format=fmt)
                out[f"stats {src} mixture={mixture} {fmt}"] = (r.status, r.body)
    r = client.get(f"/v1/runs/{run}/checkpoint")
    out["checkpoint"] = (r.status, r.body)
    r = client.get(f"/v1/runs/{run}")
    out["run status"] = (r.status, run_status(r.json()) if r.is_json() else r.body)
    return out


def diff_views(a, b, rename=None):
    """Keys whose (status, bytes) differ between two views() results, with a
    short description each. rename=(old, new) replaces the run name in a's
    bodies first (a checkpoint imported under another name)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if rename and va is not None and vb is not None and isinstance(va[1], (bytes, bytearray)):
            if k.endswith("safetensors"):
                # the header length moves with the name: compare the parsed content
                va, vb = (va[0], _st_renamed(va[1], rename)), (vb[0], _st_renamed(vb[1], None))
            else:
                va = (va[0], va[1].replace(rename[0].encode(), rename[1].encode()))
        if va != vb:
            sa = "missing" if va is None else f"{va[0]} {str(va[1])[:160]}"
            sb = "missing" if vb is None else f"{vb[0]} {str(vb[1])[:160]}"
            out.append(f"[{k}] {sa} != {sb}")
    return out


def _st_renamed(body, rename):
    """A safetensors body as comparable data (tensor bytes, metadata with the
    run renamed), or the raw body if it does not parse."""
    try:
        tensors, meta = nsd.st_read(body)
    except nsd.SafetensorsError:
        return body
    if rename:
        meta = {k: v.replace(rename[0], rename[1]) for k, v in meta.items()}
    return (sorted((n, d, tuple(sh), None if a is None else a.tobytes()) for n, (d, sh, a) in tensors.items()),
            sorted(meta.items()))


def ok_views(v):
    """Keys of views that did not answer 200 (a comparison of two 404s would
    prove nothing for the sources every run must serve)."""
    return [k for k, (st, _b) in v.items() if st != 200]


# ---------------------------------------------------------------- mounts


_mounts = []


def mount(args, target):
    """Run `mount args... target`; returns None on success, else the error
    text (not permitted, no such filesystem...)."""
    try:
        p = subprocess.run(["mount"] + list(args) + [target], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if p.returncode != 0:
        return (p.stderr or p.stdout).strip() or f"mount exit status {p.returncode}"
    _mounts.append(target)
    return None


def mount_tmpfs(target, size):
    return mount(["-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs"], target)


def mount_readonly_bind(target):
    """Make 'target' (a directory) read-only by bind-mounting it onto itself
    and remounting the bind read-only."""
    err = mount(["--bind", target], target)
    if err:
        return err
    p = subprocess.run(["mount", "-o", "remount,bind,ro", target], capture_output=True, text=True, timeout=20)
    if p.returncode != 0:
        umount(target)
        return (p.stderr or p.stdout).strip() or "remount ro failed"
    return None


def umount(target):
    for _ in range(20):
        p = subprocess.run(["umount", target], capture_output=True, text=True, timeout=20)
        if p.returncode == 0:
            break
        time.sleep(0.1)
    if target in _mounts:
        _mounts.remove(target)


_nsd_kill_all = nsd._kill_all


def _umount_all():
    _nsd_kill_all()
    for t in reversed(list(_mounts)):
        try:
            umount(t)
        except Exception:
            pass


atexit.register(_umount_all)
nsd._kill_all = _umount_all  # nsd.main's alarm handler exits with os._exit: undo mounts there too


def fill(path, chunk=1 << 16):
    """Write a ballast file until the filesystem is full (ENOSPC); returns
    its size."""
    size = 0
    with open(path, "wb", buffering=0) as f:
        for n in (chunk, 4096, 512, 1):
            block = b"\xa5" * n
            while True:
                try:
                    w = f.write(block)
                except OSError:
                    break
                if not w:
                    break
                size += w
    return size


def check_probes(case, d, desc):
    """Report the not-ready probes of a daemon's starts as checks (one line
    each kind) and forget them."""
    probes, d.not_ready_probes = d.not_ready_probes, []
    kinds = {}
    for what, ok, detail in probes:
        kinds.setdefault(what, []).append((ok, detail))
    for what, res in kinds.items():
        bad = [det for ok, det in res if not ok]
        case.check(not bad, f"{desc}: {what} ({len(res)} probes while recovering)", " | ".join(bad[:3]))
    return len(probes)


def metric(client, name):
    """A sample's value from /metrics (first series of that name), or None."""
    r = client.get("/metrics", validate=False)
    if r.status != 200:
        return None
    for line in r.body.decode("utf-8", "replace").splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------- row checksums


def _crc32c_table():
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data, crc=0):
    """CRC-32C written from RFC 3720 section 12.1 (reflected polynomial
    0x82F63B78, initial value and final xor 0xFFFFFFFF), byte at a time: a
    reference independent of the daemon's eight-bytes-at-a-time code."""
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ _CRC32C[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


def _column(v):
    """One column as doc/design.md's store section encodes it for the sum:
    SQLite's type code, then the value."""
    if v is None:
        return b"\x05"
    if isinstance(v, int):
        return b"\x01" + struct.pack("<q", v)
    if isinstance(v, float):
        return b"\x02" + struct.pack("<d", v)
    if isinstance(v, str):
        v = v.encode("utf-8")
        return b"\x03" + struct.pack("<Q", len(v)) + v
    return b"\x04" + struct.pack("<Q", len(v)) + bytes(v)


def row_sum(table, columns, run):
    """The crc column a row must hold (signed, as SQLite returns it): the
    high word the CRC-32C of the run name, the low word that of b'L' (log) or
    b'S' (snapshot) followed by the columns in table order."""
    low = crc32c((b"L" if table == "log" else b"S") + b"".join(_column(v) for v in columns))
    v = crc32c(run.encode("utf-8")) << 32 | low
    return v - (1 << 64) if v >= 1 << 63 else v


def bad_row_sums(db_path):
    """Rows of a store whose crc differs from row_sum() (read-only), and how
    many rows were compared."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        bad, n = [], 0
        for seq, run, kind, layer, step, body, crc in con.execute(
                "SELECT seq, run, kind, layer, step, body, crc FROM log"):
            n += 1
            if crc != row_sum("log", (seq, run, kind, layer, step, body), run):
                bad.append(f"log row {seq}")
        for run, seq, taken, body, crc in con.execute("SELECT run, seq, taken_ms, body, crc FROM snapshot"):
            n += 1
            if crc != row_sum("snapshot", (run, seq, taken, body), run):
                bad.append(f"snapshot of {run}")
        return bad, n
    finally:
        con.close()
