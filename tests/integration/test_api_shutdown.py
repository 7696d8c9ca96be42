"""test_api_shutdown.py - SIGTERM while /sync requests wait.

world_size 4, only 3 workers report with /sync; once the stall report shows
them waiting, SIGTERM: each waiter must get a complete HTTP answer 503
{"error": {"code": "shutting_down"}} (not a reset connection) and the daemon
must exit with status 0 (bounded wait).
"""

import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402


def rep(worker):
    return {"step": 1, "worker": worker,
            "layers": {"bn": {"count": 16, "mean": [0.5, -0.25], "var": [1.0, 2.0]}}}


class Shutdown(nsd.Case):

    @classmethod
    def setUpClass(cls):
        cls.daemon = None
        cls.c = None

    @classmethod
    def tearDownClass(cls):
        pass

    def setUp(self):
        self.daemon = nsd.Daemon().start()
        self.c = self.daemon.client()
        super().setUp()

    def tearDown(self):
        try:
            super().tearDown() if self.daemon.alive() else self._final()
        finally:
            self.daemon.kill()

    def _final(self):
        for cl in self._clients:
            for e in cl.schema_errors:
                print(f"FAIL {self._testMethodName}: response breaks proto/openapi.yaml: {e}")
                self._fails.append(e)
        if self._fails:
            self.fail(f"{len(self._fails)} failed checks: " + "; ".join(self._fails[:5]))

    def test_sigterm_answers_waiters(self):
        run = "shut"
        self.require(self.c.put(f"/v1/runs/{run}", {"world_size": 4}).status == 201, "create world 4")
        clients = [self.client(timeout=20) for _ in range(3)]
        results, errors = [None] * 3, [None] * 3

        def waiter(i):
            try:
                results[i] = clients[i].report(run, rep(i), sync=True, timeout=20)
            except Exception as e:  # a reset connection is a failure of the daemon
                errors[i] = e

        threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()

        def waiting():
            st = self.c.get(f"/v1/runs/{run}").json().get("status", {})
            return [p.get("waiting_for") for p in st.get("pending", [])] == [[3]]
        self.require(nsd.poll(waiting, limit=10), "the stall report shows step 1 waiting for worker 3 only")
        self.c.close()
        self.daemon.signal(signal.SIGTERM)
        for t in threads:
            t.join(20)
        self.check(not any(t.is_alive() for t in threads), "every waiter got an answer (bounded 20 s)")
        for i in range(3):
            r = results[i]
            self.check(errors[i] is None, f"waiter {i}: a complete HTTP answer, not a reset", repr(errors[i]))
            if r is not None:
                self.check_status(r, 503, f"waiter {i}", code="shutting_down")
        rc = self.daemon.wait(10)
        self.check_eq(rc, 0, "the daemon exits with status 0 after SIGTERM (within 10 s)")
        if rc is None:
            print(self.daemon.log_tail())

    def test_sigterm_idle(self):
        self.check_status(self.c.get("/livez"), 200, "serving")
        self.c.close()
        self.daemon.signal(signal.SIGTERM)
        self.check_eq(self.daemon.wait(10), 0, "an idle daemon exits 0 on SIGTERM")


if __name__ == "__main__":
    nsd.main()
