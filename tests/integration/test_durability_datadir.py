"""test_durability_datadir.py - an unusable --data-dir makes normstatd refuse to start.

Never a silent empty start over someone's data: for each case the daemon
must exit with status 1 within a few seconds, never answer /readyz 200, log
exactly ONE error line that names the problem and the path, and leave the
existing file byte-identical. Cases: a read-only directory (empty, and one
holding a store; a read-only bind mount, since root ignores permission bits;
as a fallback an unprivileged user via setpriv; skipped with a message if
neither is possible), a path that is a regular file, a normstat.db of random
bytes, a store whose pages after the header are random bytes, a foreign
SQLite database, and a store whose schema version (PRAGMA user_version) was
bumped beyond what this release knows. A fresh empty directory starts (the
control), stores a schema version, and keeps a run across a restart.
"""

import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
import durable  # noqa: E402

SEED = 4301
NEW_VERSION = 987654

PROBLEM = {
    "read-only": r"read[- ]?only|not writable|permission|EROFS|EACCES|denied",
    "not a directory": r"not a directory|ENOTDIR|is a file|regular file",
    "corrupt": r"corrupt|not a database|malformed|damaged|invalid|integrity",
    "foreign": r"foreign|not a normstat|unknown|unexpected|unrelated|not created by|unrecogni[sz]ed|"
               r"application[_ ]id|other application|not .*normstat",
    "newer schema": r"schema|version|newer",
}


class DataDir(durable.Case):

    root_prefix = "normstat-datadir-"

    def setUp(self):
        super().setUp()

    def tearDown(self):
        for cl in self._clients:
            cl.close()
        self.finish()

    # ---- helpers
    def make_store(self, name, steps=3):
        """A store written by normstatd itself: start, a run with a few
        steps, SIGTERM. Returns its directory."""
        d = durable.Durable(os.path.join(self.root, name), name=name)
        os.makedirs(d.dir)
        d.start()
        c = d.client()
        self.require(c.put("/v1/runs/kept", {"world_size": 1}).status == 201, f"{name}: PUT a run")
        for s in range(1, steps + 1):
            rep = {"step": s, "worker": 0, "layers": {"bn": {"count": 8, "mean": [0.5 * s] * 64,
                                                           "var": [1.0 + s] * 64}}}
            self.require(c.report("kept", rep, sync=True).status == 200, f"{name}: /sync step {s}")
        c.close()
        self.require(d.stop() == 0, f"{name}: the store's daemon stops with status 0")
        self.require(os.path.exists(d.db_path()), f"{name}: {durable.DB_NAME} was written",
                     f"{os.listdir(d.dir)}")
        return d.dir

    def refuse(self, path, what, problem, files=None, user=None):
        """Start on 'path' and check the refusal; 'files' are paths that must
        stay byte-identical."""
        files = files or []
        before = {f: durable.file_bytes(f) for f in files}
        names_before = sorted(os.listdir(path)) if os.path.isdir(path) else None
        d = durable.Durable(path, name=what)
        if user is not None:
            rc, lines, ready = self._refuse_as(d, user)
        else:
            rc, lines, ready = d.start_refused()
        errs = durable.error_lines(lines)
        tail = "\n      ".join(lines[-8:])
        self.check(rc == 1, f"{what}: normstatd exits with status 1 (within {durable.REFUSE_LIMIT_S:.0f} s)",
                   f"exit status {rc} (None = still running, killed); stderr:\n      {tail}")
        self.check(not ready, f"{what}: /readyz never answered 200")
        self.check(len(errs) == 1, f"{what}: exactly one error line on stderr",
                   f"{len(errs)} error lines; stderr:\n      {tail}")
        line = errs[0] if errs else ""
        self.check(path in line or os.path.join(path, durable.DB_NAME) in line,
                   f"{what}: the error line names the path", f"line: {line!r}, path {path}")
        self.check(re.search(PROBLEM[problem], line, re.I) is not None,
                   f"{what}: the error line names the problem ({problem})", f"line: {line!r}")
        if line:
            print(f"note {what}: {line}")
        for f, b in before.items():
            after = durable.file_bytes(f) if os.path.exists(f) else None
            self.check(after == b, f"{what}: {os.path.basename(f)} is left byte-identical",
                       "missing" if after is None else f"{len(b)} -> {len(after)} bytes, changed")
        if names_before is not None and os.path.isdir(path):
            new = sorted(set(os.listdir(path)) - set(names_before))
            extra = [n for n in new if not n.endswith(("-wal", "-shm", "-journal"))]
            self.check(not extra, f"{what}: no new files in the directory", f"new: {new}")
            if new and not extra:
                print(f"note {what}: SQLite side files appeared: {new}")
        return rc

    def _refuse_as(self, d, prefix):
        """start_refused() with the daemon run through a privilege-dropping
        prefix (setpriv ...)."""
        orig = durable.nsd.binary_path
        exe = orig()
        wrapper = os.path.join(self.root, "as-user.sh")
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\nexec " + " ".join(prefix) + f" {exe} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        durable.nsd.binary_path = lambda: wrapper
        try:
            return d.start_refused()
        finally:
            durable.nsd.binary_path = orig

    # ------------------------------------------------------------------ tests

    def test_a_fresh_directory_starts(self):
        dd = self.make_store("fresh")
        db = os.path.join(dd, durable.DB_NAME)
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            uv = con.execute("PRAGMA user_version").fetchone()[0]
            jm = con.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            con.close()
        self.check(uv >= 1, f"a schema version is stored (PRAGMA user_version = {uv})")
        self.check_eq(jm.lower(), "wal", "the store is in WAL mode")
        self.check_eq(durable.integrity_check(dd), "ok", "PRAGMA integrity_check of the fresh store")
        missing = os.path.join(self.root, "not-yet")
        d = durable.Durable(missing, name="missing")
        try:
            d.start()
            self.check(os.path.exists(os.path.join(missing, durable.DB_NAME)),
                       "a missing --data-dir (parent exists) is created with its store", f"{os.listdir(missing)}")
            self.check_eq(d.stop(), 0, "the daemon on the created directory stops with status 0")
        except RuntimeError as e:
            self.check(False, "a missing --data-dir (parent exists) is created and the daemon starts", str(e)[-600:])
        d = durable.Durable(dd, name="fresh")
        d.start()
        c = d.client()
        r = c.get("/v1/runs/kept")
        self.check(r.status == 200 and r.json()["status"]["layers"]["bn"]["step"] == 3,
                   "the control store keeps its run across a restart", r.short(200))
        c.close()
        self.check_eq(d.stop(), 0, "control daemon stops with status 0")

    def test_read_only_directory(self):
        empty = os.path.join(self.root, "ro-empty")
        os.makedirs(empty)
        err = durable.mount_readonly_bind(empty)
        if err is None:
            try:
                self.refuse(empty, "read-only empty directory (ro bind mount)", "read-only")
            finally:
                durable.umount(empty)
            full = self.make_store("ro-store")
            db = os.path.join(full, durable.DB_NAME)
            self.require(durable.mount_readonly_bind(full) is None, "read-only bind mount of the store")
            try:
                files = [db] + [db + s for s in ("-wal",) if os.path.exists(db + s)]
                self.refuse(full, "read-only directory holding a store (ro bind mount)", "read-only", files)
            finally:
                durable.umount(full)
            return
        print(f"note test_read_only_directory: bind mount not permitted ({err}); trying an unprivileged user")
        full = self.make_store("ro-store")
        db = os.path.join(full, durable.DB_NAME)
        setpriv = shutil.which("setpriv")
        if setpriv is None or os.geteuid() != 0:
            print("skip test_read_only_directory: neither a read-only mount nor setpriv as root is available")
            self.skipTest("no way to make a directory read-only for the daemon")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run(prefix + [nsd.binary_path(), "--version"], capture_output=True, timeout=10)
        if probe.returncode != 0:
            print(f"skip test_read_only_directory: the binary cannot run as nobody "
                  f"({probe.stderr.decode(errors='replace').strip()[:200]})")
            self.skipTest("binary not runnable as nobody")
        for p in (self.root, empty, full):
            os.chmod(p, 0o555)
        os.chmod(db, 0o444)
        try:
            self.refuse(empty, "read-only empty directory (mode 0555, user nobody)", "read-only", user=prefix)
            self.refuse(full, "read-only directory holding a store (mode 0555, user nobody)", "read-only",
                        [db], user=prefix)
        finally:
            for p in (self.root, empty, full):
                os.chmod(p, 0o755)

    def test_path_is_a_regular_file(self):
        path = os.path.join(self.root, "plain-file")
        with open(path, "wb") as f:
            f.write(b"a regular file where a directory belongs\n" * 10)
        self.refuse(path, "--data-dir is a regular file", "not a directory", [path])

    def test_random_bytes(self):
        dd = os.path.join(self.root, "random")
        os.makedirs(dd)
        db = os.path.join(dd, durable.DB_NAME)
        with open(db, "wb") as f:
            f.write(random.Random(SEED).randbytes(64 * 1024))
        self.refuse(dd, "normstat.db of random bytes", "corrupt", [db])

    def test_damaged_pages(self):
        dd = self.make_store("damaged", steps=12)
        db = os.path.join(dd, durable.DB_NAME)
        for s in ("-wal", "-shm"):
            if os.path.exists(db + s) and os.path.getsize(db + s) > 0:
                print(f"note test_damaged_pages: {durable.DB_NAME}{s} left after SIGTERM "
                      f"({os.path.getsize(db + s)} bytes); removed for this case")
            if os.path.exists(db + s):
                os.remove(db + s)
        data = bytearray(durable.file_bytes(db))
        page = int.from_bytes(data[16:18], "big") or 65536
        self.require(len(data) >= 2 * page, f"the store has more than one page ({len(data)} bytes, page {page})")
        rnd = random.Random(SEED + 1)
        data[page:] = rnd.randbytes(len(data) - page)
        with open(db, "wb") as f:
            f.write(data)
        self.refuse(dd, "store with intact header and random pages", "corrupt", [db])

    def test_foreign_database(self):
        dd = os.path.join(self.root, "foreign")
        os.makedirs(dd)
        db = os.path.join(dd, durable.DB_NAME)
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance REAL)")
        con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER, total REAL)")
        con.executemany("INSERT INTO customers (name, balance) VALUES (?, ?)",
                        [(f"customer {i}", i * 1.5) for i in range(200)])
        con.commit()
        con.close()
        self.refuse(dd, "a foreign SQLite database", "foreign", [db])

    def test_newer_schema_version(self):
        dd = self.make_store("newer")
        db = os.path.join(dd, durable.DB_NAME)
        con = sqlite3.connect(db)
        try:
            cur = con.execute("PRAGMA user_version").fetchone()[0]
            con.execute(f"PRAGMA user_version = {NEW_VERSION}")
            con.commit()
        finally:
            con.close()
        print(f"note test_newer_schema_version: user_version {cur} -> {NEW_VERSION}")
        files = [db] + [db + s for s in ("-wal",) if os.path.exists(db + s)]
        self.refuse(dd, f"store with schema version {NEW_VERSION}", "newer schema", files)


if __name__ == "__main__":
    nsd.main()
