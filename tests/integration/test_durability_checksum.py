"""test_durability_checksum.py - a damaged store is refused, or recovered to
exactly its last good state: never served altered.

A store is written by normstatd itself (runs alpha and beta: log rows only;
gamma: a checkpoint import, i.e. a snapshot, then log rows after it), every
view of each run is recorded as bytes, the daemon stops (SIGTERM) and the
WAL is folded into the file. Then each variant damages a copy of it and a
daemon starts on the copy. The outcome must be either a refusal (exit
status 1, /readyz never 200, exactly ONE error line naming the path) or a
daemon serving every recorded view byte for byte. Variants, all from fixed
seeds: bit flips inside log row bodies and inside a snapshot's body (these
pass SQLite's quick_check: the refusal must name the run and the row),
flips anywhere in the file, pages overwritten with random bytes or zeros,
truncations at and between page boundaries, a 0-byte normstat.db, a WAL
without its database, a file that is not SQLite; and after kill -9 the WAL
cut at and between frames or with a byte changed, which must give a
refusal or exactly one of the states the daemon committed. --skip-damaged-runs starts
without the damaged runs (logged at level error, rows moved to the
damaged_* tables) and serves the others unchanged; damage to a row's run
name cannot be pinned on a run and refuses even then. Every row's checksum
of a fresh store equals a CRC-32C computed here (durable.row_sum).
"""

import os
import random
import re
import shutil
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
import durable  # noqa: E402

nsd.SCRIPT_LIMIT_S = 300

SEED = 15040
RUNS = ("alpha", "beta", "gamma")
STEPS = 6
CHANNELS = 16
BODY_FLIPS = 8
SNAPSHOT_FLIPS = 6
ANY_FLIPS = 24
CHECKSUM = r"checksum mismatch"


def layer(seed, step, c=CHANNELS):
    rnd = random.Random(seed * 1000 + step)
    return {"count": 4 + step, "mean": [round(rnd.uniform(-3, 3), 5) for _ in range(c)],
            "var": [round(rnd.uniform(0.1, 4), 5) for _ in range(c)]}


class Checksum(durable.Case):

    root_prefix = "normstat-checksum-"

    def tearDown(self):
        for cl in self._clients:
            cl.close()
        self.finish()

    # ---------------------------------------------------------------- helpers

    def make_store(self):
        """The pristine store: its directory, its bytes, the recorded views
        of each run and the page size."""
        dd = os.path.join(self.root, "pristine")
        os.makedirs(dd)
        d = durable.Durable(dd, "--snapshot-interval", "0", name="pristine")
        d.start()
        c = d.client()
        for i, run in enumerate(("alpha", "beta")):
            self.require(c.put(f"/v1/runs/{run}", {"world_size": 1}).status == 201, f"PUT {run}")
            for s in range(1, STEPS + 1):
                rep = {"step": s, "worker": 0, "domain": "d%d" % (s % 2),
                       "layers": {"bn1": layer(i, s), "bn2": layer(i + 10, s, 3)}}
                self.require(c.report(run, rep, sync=True).status == 200, f"{run}: /sync step {s}")
        r = c.get("/v1/runs/alpha/checkpoint")
        self.require(r.status == 200, "GET alpha's checkpoint")
        self.require(c.put("/v1/runs/gamma/checkpoint", r.json()).status in (200, 201),
                     "PUT gamma's checkpoint (a snapshot row)")
        for s in range(STEPS + 1, STEPS + 3):
            rep = {"step": s, "worker": 0, "domain": "d0", "layers": {"bn1": layer(7, s), "bn2": layer(8, s, 3)}}
            self.require(c.report("gamma", rep, sync=True).status == 200, f"gamma: /sync step {s}")
        ref = {run: durable.views(c, run, domains=("d0", "d1")) for run in RUNS}
        for run in RUNS:
            self.require(not durable.ok_views(ref[run]), f"{run}: every view answers 200",
                         str(durable.ok_views(ref[run])))
        c.close()
        self.require(d.stop() == 0, "the pristine store's daemon stops with status 0")
        db = d.db_path()
        con = sqlite3.connect(db)
        try:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            page = con.execute("PRAGMA page_size").fetchone()[0]
        finally:
            con.close()
        for s in ("-wal", "-shm"):
            if os.path.exists(db + s):
                os.remove(db + s)
        return dd, durable.file_bytes(db), ref, page

    def damaged(self, name, data):
        """A data directory holding 'data' as normstat.db."""
        dd = os.path.join(self.root, name)
        os.makedirs(dd)
        with open(os.path.join(dd, durable.DB_NAME), "wb") as f:
            f.write(data)
        return dd

    def start_on(self, dd, what, *args):
        """Start on 'dd': ('refused', error line) or ('started', daemon)."""
        d = durable.Durable(dd, *args, name=what)
        rc, lines, ready = d.start_refused(limit=durable.REFUSE_LIMIT_S)
        if ready or rc is None:
            return "started", d
        errs = durable.error_lines(lines)
        tail = "\n      ".join(lines[-6:])
        self.check(rc == 1, f"{what}: refused with exit status 1", f"exit status {rc}; stderr:\n      {tail}")
        self.check(len(errs) == 1, f"{what}: exactly one error line", f"{len(errs)}; stderr:\n      {tail}")
        line = errs[0] if errs else ""
        self.check(dd in line, f"{what}: the line names the path", line)
        return "refused", line

    def refused_or_same(self, dd, what, ref):
        """The outcome must be a refusal or every view as recorded."""
        outcome, x = self.start_on(dd, what)
        if outcome == "refused":
            return outcome, x
        d = durable.Durable(dd, name=what)
        try:
            d.start()
        except RuntimeError as e:
            self.check(False, f"{what}: a store that did not refuse starts", str(e)[-300:])
            return "failed", None
        c = d.client()
        diffs = []
        for run in RUNS:
            diffs += durable.diff_views(ref[run], durable.views(c, run, domains=("d0", "d1")))
        c.close()
        self.check(not diffs, f"{what}: started, so it serves exactly the recorded views",
                   f"{len(diffs)} differ: " + " | ".join(diffs[:2]))
        d.stop()
        return "same", None

    def rows(self, db):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            log = con.execute("SELECT seq, run, body FROM log WHERE kind = 3 ORDER BY seq").fetchall()
            snaps = con.execute("SELECT run, seq, body FROM snapshot").fetchall()
        finally:
            con.close()
        return log, snaps

    # ------------------------------------------------------------------ tests

    def test_fresh_store_checksums_match_reference(self):
        dd, _data, _ref, _page = self.make_store()
        bad, n = durable.bad_row_sums(os.path.join(dd, durable.DB_NAME))
        self.check(n >= 2 * STEPS and not bad, f"each of the {n} rows holds the CRC-32C computed here",
                   "; ".join(bad[:5]))

    def test_flips_inside_log_bodies(self):
        _dd, data, ref, _page = self.make_store()
        log, _snaps = self.rows(os.path.join(_dd, durable.DB_NAME))
        rnd = random.Random(SEED)
        # STEP rows whose body lies once, whole, in the file
        steps = [r for r in log if data.count(bytes(r[2])) == 1]
        self.require(len(steps) >= BODY_FLIPS, f"{len(steps)} STEP rows to damage")
        for i, (seq, run, body) in enumerate(rnd.sample(steps, BODY_FLIPS)):
            off = data.find(bytes(body))
            at = off + rnd.randrange(len(body))
            bad = bytearray(data)
            bad[at] ^= 1 << rnd.randrange(8)
            what = f"log row {seq} (run {run}) bit flip at byte {at}"
            outcome, line = self.start_on(self.damaged(f"body{i}", bytes(bad)), what)
            self.check(outcome == "refused", f"{what}: refused, not served altered")
            if outcome == "refused":
                self.check(re.search(CHECKSUM, line) and f"log row {seq} of run {run}" in line,
                           f"{what}: the line names the checksum, the run and the row", line)
            else:
                line.kill()
        if outcome == "refused":
            print(f"note: {line}")

    def test_flips_inside_a_snapshot(self):
        _dd, data, ref, _page = self.make_store()
        _log, snaps = self.rows(os.path.join(_dd, durable.DB_NAME))
        self.require(len(snaps) == 1 and snaps[0][0] == "gamma", "gamma has the one snapshot", str(snaps)[:100])
        body = snaps[0][2].encode()
        head = body[:1000]
        off = data.find(head)
        self.require(off > 0, "the snapshot's first 1000 bytes lie together in the file")
        rnd = random.Random(SEED + 1)
        for i in range(SNAPSHOT_FLIPS):
            # a digit changed to another digit: still valid JSON, another value
            digits = [k for k, ch in enumerate(head) if 0x30 <= ch <= 0x39]
            at = off + rnd.choice(digits)
            bad = bytearray(data)
            bad[at] = 0x30 + (bad[at] - 0x30 + 1 + rnd.randrange(9)) % 10
            what = f"snapshot of gamma: digit changed at byte {at}"
            outcome, line = self.start_on(self.damaged(f"snap{i}", bytes(bad)), what)
            self.check(outcome == "refused", f"{what}: refused, not served altered")
            if outcome == "refused":
                self.check(re.search(CHECKSUM, line) and "snapshot of run gamma" in line,
                           f"{what}: the line names the checksum and the run's snapshot", line)
            else:
                line.kill()

    def test_flips_anywhere(self):
        _dd, data, ref, _page = self.make_store()
        rnd = random.Random(SEED + 2)
        seen = {}
        for i in range(ANY_FLIPS):
            at = rnd.randrange(len(data))
            bad = bytearray(data)
            bad[at] ^= 1 + rnd.randrange(255)
            outcome, _ = self.refused_or_same(self.damaged(f"any{i}", bytes(bad)), f"byte {at} changed", ref)
            seen[outcome] = seen.get(outcome, 0) + 1
        print(f"note test_flips_anywhere: {seen}")

    def test_pages_overwritten(self):
        _dd, data, ref, page = self.make_store()
        pages = len(data) // page
        self.require(pages >= 4, f"{pages} pages")
        rnd = random.Random(SEED + 3)
        seen = {}
        for p in range(1, pages):
            for kind in ("random", "zero"):
                bad = bytearray(data)
                bad[p * page:(p + 1) * page] = rnd.randbytes(page) if kind == "random" else bytes(page)
                outcome, _ = self.refused_or_same(self.damaged(f"page{p}{kind}", bytes(bad)),
                                                  f"page {p + 1} of {pages} {kind}", ref)
                seen[outcome] = seen.get(outcome, 0) + 1
        print(f"note test_pages_overwritten: {seen}")

    def test_truncations(self):
        _dd, data, ref, page = self.make_store()
        pages = len(data) // page
        cuts = sorted({100, page // 2, len(data) - 1, len(data) - page // 2}
                      | {k * page for k in range(1, pages)})
        seen = {}
        for n in cuts:
            outcome, _ = self.refused_or_same(self.damaged(f"cut{n}", data[:n]),
                                              f"truncated to {n} of {len(data)} bytes", ref)
            seen[outcome] = seen.get(outcome, 0) + 1
        print(f"note test_truncations: {seen}")

    def test_zero_length_and_strays(self):
        dd = self.damaged("zero", b"")
        outcome, line = self.start_on(dd, "a 0-byte normstat.db")
        self.check(outcome == "refused", "a 0-byte normstat.db is refused, not taken for a new store")
        if outcome == "refused":
            self.check("0 bytes" in line, "the line says the file is empty", line)
            self.check_eq(os.path.getsize(os.path.join(dd, durable.DB_NAME)), 0, "the file is left as it was")
            self.check_eq(sorted(os.listdir(dd)), [durable.DB_NAME], "nothing was created beside it")
        else:
            line.kill()
        dd = os.path.join(self.root, "wal-only")
        os.makedirs(dd)
        with open(os.path.join(dd, durable.DB_NAME + "-wal"), "wb") as f:
            f.write(random.Random(SEED + 4).randbytes(8192))
        outcome, line = self.start_on(dd, "a WAL without normstat.db")
        self.check(outcome == "refused", "a WAL without its database is refused")
        if outcome != "refused":
            line.kill()
        dd = self.damaged("text", b"these are not the pages of a database\n" * 3)
        outcome, line = self.start_on(dd, "a normstat.db that is a text file")
        self.check(outcome == "refused", "a file that is not SQLite is refused")
        if outcome != "refused":
            line.kill()
        # the controls: an empty directory, and a directory without normstat.db
        for name, make in (("empty", True), ("absent", False)):
            dd = os.path.join(self.root, name)
            if make:
                os.makedirs(dd)
            d = durable.Durable(dd, name=name)
            try:
                d.start()
                self.check_eq(d.stop(), 0, f"{name} data directory: a new store starts and stops")
            except RuntimeError as e:
                self.check(False, f"{name} data directory: a new store starts", str(e)[-300:])
            self.check(os.path.getsize(os.path.join(dd, durable.DB_NAME)) > 0, f"{name}: the store was written")
            self.check(not os.path.exists(os.path.join(dd, durable.DB_NAME + ".new")),
                       f"{name}: no temporary file left")

    def test_wal_truncated_or_flipped(self):
        """After kill -9 the WAL holds every commit. Cut or damaged, it must
        give a refusal or exactly one of the states the daemon committed
        (SQLite reads the WAL up to the last intact commit before the damage)."""
        dd = os.path.join(self.root, "wal")
        os.makedirs(dd)
        d = durable.Durable(dd, "--snapshot-interval", "0", name="wal")
        d.start()
        c = d.client()
        states = [self.state(c)]  # no run yet
        self.require(c.put("/v1/runs/w", {"world_size": 1}).status == 201, "PUT w")
        states.append(self.state(c))
        for s in range(1, STEPS + 1):
            rep = {"step": s, "worker": 0, "layers": {"bn1": layer(20, s)}}
            self.require(c.report("w", rep, sync=True).status == 200, f"w: /sync step {s}")
            states.append(self.state(c))  # /sync answered: committed
        c.close()
        d.sigkill()
        db = d.db_path()
        self.require(os.path.exists(db + "-wal") and os.path.getsize(db + "-wal") > 0, "a WAL after kill -9")
        main, wal = durable.file_bytes(db), durable.file_bytes(db + "-wal")
        page = int.from_bytes(main[16:18], "big")
        page = 65536 if page == 1 else page  # the header's 1 means 65536 (SQLite file format)
        frame = 24 + page
        frames = (len(wal) - 32) // frame
        rnd = random.Random(SEED + 6)
        variants = [(f"WAL cut to {n} bytes", wal[:n])
                    for n in sorted({0, 16, 32} | {32 + k * frame for k in range(1, frames)}
                                    | {32 + k * frame + rnd.randrange(1, frame) for k in range(0, frames, 2)})]
        for i in range(12):
            at = rnd.randrange(len(wal))
            bad = bytearray(wal)
            bad[at] ^= 1 + rnd.randrange(255)
            variants.append((f"WAL byte {at} changed", bytes(bad)))
        seen = {}
        for i, (what, w) in enumerate(variants):
            vd = self.damaged(f"wal{i}", main)
            with open(os.path.join(vd, durable.DB_NAME + "-wal"), "wb") as f:
                f.write(w)
            outcome, x = self.start_on(vd, what)
            if outcome == "started":
                d = durable.Durable(vd, name=what)
                d.start()
                c = d.client()
                got = self.state(c)
                c.close()
                d.stop()
                self.check(got in states, f"{what}: started, so it serves one of the committed states",
                           str(got)[:200])
                outcome = f"state {states.index(got)}" if got in states else "altered"
            seen[outcome] = seen.get(outcome, 0) + 1
        print(f"note test_wal_truncated_or_flipped: {frames} frames; {seen}")

    def state(self, c):
        r = c.get("/v1/runs/w/checkpoint")
        e = c.stats("w") if r.status == 200 else None
        return (r.status, r.body if r.status == 200 else None, e.body if e is not None else None)

    def test_skip_damaged_runs(self):
        pristine, data, ref, _page = self.make_store()
        log, snaps = self.rows(os.path.join(pristine, durable.DB_NAME))
        bad = bytearray(data)
        rnd = random.Random(SEED + 5)
        alpha = [r for r in log if r[1] == "alpha" and data.count(bytes(r[2])) == 1]
        off = data.find(bytes(alpha[2][2]))
        bad[off + 40] ^= 0x10  # inside a double of one of alpha's steps
        snap = snaps[0][2].encode()
        off = data.find(snap[:200])
        digit = [k for k, ch in enumerate(snap[:200]) if 0x31 <= ch <= 0x38][rnd.randrange(4)]
        bad[off + digit] += 1  # a digit of gamma's snapshot
        dd = self.damaged("skip", bytes(bad))
        outcome, line = self.start_on(dd, "damaged alpha and gamma, without the option")
        self.check(outcome == "refused", "refused without --skip-damaged-runs")
        if outcome != "refused":
            line.kill()
        con = sqlite3.connect(f"file:{os.path.join(dd, durable.DB_NAME)}?mode=ro", uri=True)
        n_alpha = con.execute("SELECT count(*) FROM log WHERE run = 'alpha'").fetchone()[0]
        con.close()
        d = durable.Durable(dd, "--skip-damaged-runs", name="skip")
        try:
            d.start()
        except RuntimeError as e:
            self.check(False, "--skip-damaged-runs starts", str(e)[-400:])
            return
        loud = [ln for ln in durable.error_lines(d.lines) if "event=store_run_set_aside" in ln]
        self.check(len(loud) == 2 and any("run=alpha" in ln for ln in loud) and any("run=gamma" in ln for ln in loud),
                   "one error line per run set aside (alpha, gamma)", " | ".join(loud))
        c = d.client()
        for run in ("alpha", "gamma"):
            self.check_eq(c.get(f"/v1/runs/{run}").status, 404, f"{run} (damaged) is not served")
        self.check(not durable.diff_views(ref["beta"], durable.views(c, "beta", domains=("d0", "d1"))),
                   "beta is served exactly as before")
        c.close()
        self.check_eq(d.stop(), 0, "stops with status 0")
        con = sqlite3.connect(os.path.join(dd, durable.DB_NAME))
        try:
            moved = con.execute("SELECT count(*) FROM damaged_log WHERE run = 'alpha'").fetchone()[0]
            snap_moved = con.execute("SELECT count(*) FROM damaged_snapshot WHERE run = 'gamma'").fetchone()[0]
            left = con.execute("SELECT count(*) FROM log WHERE run IN ('alpha', 'gamma')").fetchone()[0]
        finally:
            con.close()
        self.check_eq((moved, snap_moved, left), (n_alpha, 1, 0), "the damaged runs' rows were moved aside whole")
        d = durable.Durable(dd, name="after-skip")
        try:
            d.start()
            c = d.client()
            self.check_eq(c.get("/v1/runs/alpha").status, 404, "after the restart without the option: alpha absent")
            self.check(not durable.diff_views(ref["beta"], durable.views(c, "beta", domains=("d0", "d1"))),
                       "after the restart without the option: beta unchanged")
            c.close()
            self.check_eq(d.stop(), 0, "stops with status 0")
        except RuntimeError as e:
            self.check(False, "the store starts without the option once the damage is set aside", str(e)[-400:])

    def test_damaged_run_name_is_refused_even_with_the_option(self):
        _dd, data, ref, _page = self.make_store()
        dd = self.damaged("name", data)
        con = sqlite3.connect(os.path.join(dd, durable.DB_NAME))
        try:
            seq = con.execute("SELECT max(seq) FROM log WHERE run = 'beta'").fetchone()[0]
            con.execute("UPDATE log SET run = 'alpha' WHERE seq = ?", (seq,))  # another run's name
            con.commit()
        finally:
            con.close()
        for args in ((), ("--skip-damaged-runs",)):
            what = f"log row {seq} moved from beta to alpha {' '.join(args)}"
            d = durable.Durable(dd, *args, name="name")
            rc, lines, ready = d.start_refused()
            errs = durable.error_lines(lines)
            self.check(rc == 1 and not ready and len(errs) == 1, f"{what}: refused with one error line",
                       f"exit status {rc}; " + " | ".join(errs))
            if errs:
                self.check(f"log row {seq}" in errs[0] and "run name is damaged" in errs[0],
                           f"{what}: the line names the row and says its run cannot be told", errs[0])


if __name__ == "__main__":
    nsd.main()
