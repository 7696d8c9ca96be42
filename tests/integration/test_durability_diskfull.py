"""test_durability_diskfull.py - a full disk: 503 storage_error, nothing lost, recovery.

The --data-dir lives on a small tmpfs made by the test (skipped with a
message when mounting is not permitted). A world_size-1 run with two
512-channel layers is fed /sync steps; then a ballast file fills the
filesystem. Phase A (resume without restart): /sync steps until one fails,
which must be 503 storage_error; while full, /batches of a finalizing step,
PUT of a new run and DELETE answer 503 storage_error and change nothing
(the new run does not exist, the deleted one still does), reads and /livez
keep working, the daemon stays up and logs the reason. The ballast is
deleted: new /sync steps succeed again without a restart (bounded wait),
/batches, PUT and the statistics work; SIGTERM (exit 0), integrity_check,
restart: every view is byte-identical. Phase B (crash while full): fill
again, /sync until 503, SIGKILL, delete the ballast, restart: the last
applied step is at least the last acknowledged one, and every view equals
the one recorded while the daemon had exactly that step applied. Phase C
(only fire-and-forget reports): fill, /batches until one is refused with
503 storage_error (/metrics normstat_store_failing 1), delete the ballast,
/batches accepted again and the gauge back to 0 (bounded waits), SIGTERM,
restart: byte-identical.
"""

import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
import durable  # noqa: E402

FS_SIZE = "4m"
LAYERS = {"big.bn1": 512, "big.bn2": 512}
RUN = "full"
MAX_FULL_STEPS = 300  # /sync attempts on a full disk before one must fail
RESUME_LIMIT_S = 15.0
REASON = r"full|space|ENOSPC|SQLITE_FULL|disk|storage"


def report(step, n=6):
    rng = np.random.default_rng([7707, step])
    return {"step": step, "worker": 0,
            "layers": {l: nsd.layer_report(nsd.gen_batch(rng, n, c)) for l, c in LAYERS.items()}}


def small_views(c, run):
    """The views phase B compares (full views() would be slow at 512 channels)."""
    out = {}
    for src in ("ema", "precise", "last"):
        r = c.stats(run, source=src)
        out[f"stats {src} json"] = (r.status, r.body)
    r = c.stats(run, source="ema", format="safetensors")
    out["stats ema safetensors"] = (r.status, r.body)
    r = c.get(f"/v1/runs/{run}/checkpoint")
    out["checkpoint"] = (r.status, r.body)
    r = c.get(f"/v1/runs/{run}")
    out["run status"] = (r.status, durable.run_status(r.json()) if r.is_json() else r.body)
    return out


def applied_step(c, run):
    r = c.get(f"/v1/runs/{run}")
    if r.status != 200:
        return None
    steps = {v.get("step") for v in r.json().get("status", {}).get("layers", {}).values()}
    return steps.pop() if len(steps) == 1 else (None if not steps else tuple(sorted(steps, key=str)))


class DiskFull(durable.Case):

    root_prefix = "normstat-diskfull-"

    def setUp(self):
        super().setUp()
        self.mnt = os.path.join(self.root, "fs")
        os.makedirs(self.mnt)
        self.mounted = False
        self.d = None

    def tearDown(self):
        for cl in self._clients:
            for e in cl.schema_errors:
                print(f"FAIL {self._testMethodName}: response breaks proto/openapi.yaml: {e}")
                self._fails.append(e)
            cl.close()
        if self.d is not None:
            san = self.d.sanitizer_reports()
            if san:
                self.check(False, "no sanitizer reports", "\n".join(san[:10]))
            self.d.kill()
        if self.mounted:
            durable.umount(self.mnt)
        self.finish()

    def client(self, timeout=nsd.HTTP_TIMEOUT_S):
        cl = self.d.client(timeout=timeout)
        self._clients.append(cl)
        return cl

    def start(self, desc):
        try:
            self.d.start()
        except RuntimeError as e:
            self.require(False, f"{desc}: normstatd starts on the data directory", str(e)[-2000:])
        return self.client()

    def fill(self):
        size = durable.fill(self.ballast)
        st = os.statvfs(self.mnt)
        print(f"note {self._testMethodName}: ballast {size} bytes, {st.f_bavail * st.f_frsize} bytes left")
        return size

    def sync_until_refused(self, c, s, desc, record=None):
        """/sync steps s, s+1, ... until one is not answered 200 (bounded).
        Returns (first refused step, its response, last acknowledged step)."""
        acked = None
        for k in range(s, s + MAX_FULL_STEPS):
            r = c.report(RUN, report(k), sync=True)
            if record is not None:
                record(c)
            if r.status == 200:
                acked = k
                continue
            return k, r, acked
        self.require(False, f"{desc}: a /sync is refused within {MAX_FULL_STEPS} steps on a full disk",
                     f"all {MAX_FULL_STEPS} answered 200 (acknowledged without space to store them?)")

    def test_disk_full(self):
        err = durable.mount_tmpfs(self.mnt, FS_SIZE)
        if err is not None:
            print(f"skip test_disk_full: cannot mount a {FS_SIZE} tmpfs ({err}); run as root to test a full disk")
            self.skipTest("mount not permitted")
        self.mounted = True
        data = os.path.join(self.mnt, "data")
        os.makedirs(data)
        self.ballast = os.path.join(self.mnt, "ballast")
        self.d = durable.Durable(data, name="diskfull")
        c = self.start("first start")
        self.check_status(c.put(f"/v1/runs/{RUN}", {"world_size": 1}), 201, "PUT the run", must=True)
        for s in range(1, 6):
            self.check_status(c.report(RUN, report(s), sync=True), 200, f"/sync step {s} with space")

        # ---- phase A: full, refused, space returns, resumes without a restart
        self.fill()
        mark = len(self.d.lines)
        k, r, acked = self.sync_until_refused(c, 6, "phase A")
        print(f"note phase A: /sync steps 6..{k - 1} acknowledged on the full disk, step {k} refused")
        self.check_status(r, 503, f"full disk: /sync step {k}", code="storage_error")
        self.check(self.d.alive(), "full disk: the daemon keeps running")
        self.check_status(c.get("/livez"), 200, "full disk: /livez")
        self.check_status(c.stats(RUN), 200, "full disk: GET stats (reads keep working)")
        self.check_status(c.get(f"/v1/runs/{RUN}"), 200, "full disk: GET run")
        r = c.report(RUN, report(k + 1))
        self.check_status(r, 503, f"full disk: /batches of step {k + 1} (finalizes at once, world 1)",
                          code="storage_error")
        r = c.put("/v1/runs/newrun", {"world_size": 2})
        self.check_status(r, 503, "full disk: PUT of a new run", code="storage_error")
        self.check_status(c.get("/v1/runs/newrun"), 404, "full disk: the refused run does not exist",
                          code="not_found")
        r = c.delete(f"/v1/runs/{RUN}")
        self.check_status(r, 503, "full disk: DELETE of the run", code="storage_error")
        self.check_status(c.get(f"/v1/runs/{RUN}"), 200, "full disk: the run refused deletion still exists")
        logged = [line for line in self.d.lines[mark:] if "level=warn" in line or "level=error" in line]
        reason = [line for line in logged if re.search(REASON, line, re.I)]
        self.check(reason, "full disk: the reason is logged (warn/error line about space)",
                   f"warn/error lines: {logged[:5]}")
        if reason:
            print(f"note full disk: {reason[0][:300]}")

        os.remove(self.ballast)
        deadline = time.monotonic() + RESUME_LIMIT_S
        s = k + 2
        tries = []
        while True:
            r = c.report(RUN, report(s), sync=True)
            tries.append(r.status)
            if r.status == 200 or time.monotonic() > deadline:
                break
            s += 1
            time.sleep(0.2)
        self.check_status(r, 200, f"space back: a new /sync step is acknowledged without a restart "
                                  f"(attempts {tries[:10]}{'...' if len(tries) > 10 else ''})", must=True)
        self.check_status(c.report(RUN, report(s + 1)), 202, "space back: /batches accepted")
        self.check_status(c.put("/v1/runs/newrun", {"world_size": 2}), 201, "space back: PUT newrun")
        self.check_status(c.report(RUN, report(s + 2), sync=True), 200, "space back: another /sync")
        last_acked = s + 2
        before = {RUN: durable.views(c, RUN), "newrun": durable.views(c, "newrun")}
        c.close()
        self.check_eq(self.d.stop(), 0, "SIGTERM after the disk-full episode: exit status 0")
        self.check_eq(durable.integrity_check(data), "ok", "PRAGMA integrity_check after the episode")
        c = self.start("restart after phase A")
        after = {RUN: durable.views(c, RUN), "newrun": durable.views(c, "newrun")}
        for run in before:
            d = durable.diff_views(before[run], after[run])
            self.check(not d, f"phase A restart: run {run}: {len(before[run])} views identical bytes",
                       " | ".join(d[:4]))
        L = applied_step(c, RUN)
        self.check(isinstance(L, int) and L >= last_acked, f"phase A restart: last applied step {L} >= "
                                                           f"last acknowledged {last_acked}")

        # ---- phase B: full, refused, SIGKILL, space back, restart
        recorded = {}

        def record(cl):
            step = applied_step(cl, RUN)
            if step not in recorded:
                recorded[step] = small_views(cl, RUN)
        record(c)
        self.fill()
        k, r, acked = self.sync_until_refused(c, s + 3, "phase B", record)
        acked = acked if acked is not None else last_acked
        print(f"note phase B: step {k} refused, acknowledged up to {acked}; "
              f"applied steps recorded: {sorted(x for x in recorded if isinstance(x, int))[-4:]}")
        self.check_status(r, 503, f"phase B full disk: /sync step {k}", code="storage_error")
        record(c)
        c.close()
        self.check_eq(self.d.sigkill(), -9, "phase B: SIGKILL while the disk is full")
        os.remove(self.ballast)
        self.check_eq(durable.integrity_check(data), "ok", "phase B: PRAGMA integrity_check after the kill")
        c = self.start("restart after SIGKILL on a full disk")
        L = applied_step(c, RUN)
        self.check(isinstance(L, int) and L >= acked, f"phase B restart: last applied step {L} >= "
                                                      f"last acknowledged {acked}")
        if L in recorded:
            d = durable.diff_views(recorded[L], small_views(c, RUN))
            self.check(not d, f"phase B restart: the views equal those served when step {L} was the last applied",
                       " | ".join(d[:4]))
        else:
            self.check(False, f"phase B restart: step {L} was the last applied step at some moment before the "
                              f"kill", f"recorded: {sorted(map(str, recorded))[-6:]}")
        self.check_status(c.get("/v1/runs/newrun"), 200, "phase B restart: newrun still exists")
        self.check_status(c.report(RUN, report(k + 1), sync=True), 200, "phase B restart: /sync works again")

        # ---- phase C: only /batches (the failure is found by the writer, not by a waiting answer)
        self.fill()
        s = k + 2
        deadline = time.monotonic() + RESUME_LIMIT_S
        while True:
            r = c.report(RUN, report(s))
            if r.status != 202 or time.monotonic() > deadline:
                break
            s += 1
            time.sleep(0.02)
        self.check_status(r, 503, f"phase C full disk: a later /batches (step {s}) is refused", code="storage_error")
        self.check_eq(durable.metric(c, "normstat_store_failing"), 1.0, "phase C: /metrics normstat_store_failing 1")
        os.remove(self.ballast)
        s += 1
        deadline = time.monotonic() + RESUME_LIMIT_S
        while True:
            r = c.report(RUN, report(s))
            if r.status == 202 or time.monotonic() > deadline:
                break
            s += 1
            time.sleep(0.2)
        self.check_status(r, 202, f"phase C space back: /batches accepted again (step {s})")
        ok = nsd.poll(lambda: durable.metric(c, "normstat_store_failing") == 0.0, limit=RESUME_LIMIT_S)
        self.check(ok, "phase C space back: normstat_store_failing returns to 0 (bounded)")
        before = durable.views(c, RUN)
        c.close()
        self.check_eq(self.d.stop(), 0, "phase C: SIGTERM, exit status 0")
        self.check_eq(durable.integrity_check(data), "ok", "phase C: PRAGMA integrity_check")
        c = self.start("restart after phase C")
        d = durable.diff_views(before, durable.views(c, RUN))
        self.check(not d, f"phase C restart: {len(before)} views identical bytes (the 202'd steps of the full "
                          f"disk were committed once space returned)", " | ".join(d[:4]))
        c.close()
        self.check_eq(self.d.stop(), 0, "final SIGTERM: exit status 0")


if __name__ == "__main__":
    nsd.main()
