"""test_http_threads.py - new connections are dealt evenly over the HTTP threads.

Before: libmicrohttpd's thread pool kept a connection on the thread that
accepted it, and one thread often accepted several in a row, so two busy
keep-alive connections (two workers of one run) could share a thread and be
served one after the other.

With --threads 4, connections opened one after another while the daemon
holds no other must land one per thread: /metrics'
normstat_http_connections{thread="i"} gauges each read 1 (the reference: 4
connections over 4 threads, the least loaded first). Closed connections
leave their thread's count, so after three close and three others open,
each thread again holds exactly one. With --threads 1 every connection is on
the one thread.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402

THREADS = 4


def per_thread(text):
    """{thread index: open connections} from the /metrics text."""
    counts = {}
    for line in text.splitlines():
        if line.startswith('normstat_http_connections{thread="'):
            key, value = line.rsplit(" ", 1)
            counts[int(key.split('"')[1])] = int(float(value))
    return counts


class HttpThreads(nsd.Case):
    DAEMON_ARGS = ("--threads", str(THREADS))

    def counts(self, cl):
        r = cl.get("/metrics")
        self.require(r.status == 200, "GET /metrics answers 200", r.short())
        return per_thread(r.body.decode())

    def wait_alone(self, cl):
        """Until the connections of earlier clients are reported closed and
        'cl' is the only one open (a bound, not a timing assertion)."""
        last = {}

        def alone():
            last.clear()
            last.update(self.counts(cl))
            return sum(last.values()) == 1
        self.require(nsd.poll(alone, limit=20), "only this connection is left open", str(last))

    def open_and_use(self, n):
        clients = []
        for _ in range(n):
            cl = self.client()
            r = cl.get("/livez")
            self.require(r.status == 200, "GET /livez on a new connection answers 200", r.short())
            clients.append(cl)
        return clients

    def test_spread(self):
        self.c.close()
        first = self.counts(self.c)
        self.check_eq(sorted(first), list(range(THREADS)), "one gauge per HTTP thread")
        self.wait_alone(self.c)
        others = self.open_and_use(THREADS - 1)
        self.check_eq(self.counts(self.c), {i: 1 for i in range(THREADS)},
                      f"{THREADS} connections opened in turn: one on each thread")
        for cl in others:
            cl.close()
        self.wait_alone(self.c)
        others = self.open_and_use(THREADS - 1)
        self.check_eq(self.counts(self.c), {i: 1 for i in range(THREADS)},
                      "after three closed and three opened: again one on each thread")
        more = self.open_and_use(THREADS)
        self.check_eq(self.counts(self.c), {i: 2 for i in range(THREADS)},
                      f"{2 * THREADS} connections: two on each thread")
        for cl in others + more:
            cl.close()


class OneThread(nsd.Case):
    DAEMON_ARGS = ("--threads", "1")

    def test_one_thread(self):
        clients = [self.client() for _ in range(3)]
        for cl in clients:
            self.require(cl.get("/livez").status == 200, "GET /livez answers 200")
        r = self.c.get("/metrics")
        got = per_thread(r.body.decode())
        self.check(sorted(got) == [0] and got[0] >= 4,
                   "--threads 1: one gauge, holding every open connection", str(got))


if __name__ == "__main__":
    nsd.main()
