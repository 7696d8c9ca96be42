"""test_store_compat.py - a store written by an earlier release opens and
serves the same statistics.

tests/integration/fixtures/store-v1/ holds a normstat.db written by
normstatd as of commit 8bfc086 (store schema version 1, STEP rows version 1;
made by make_fixture.py there, which says what it contains: log rows only, two runs, steps with two
domains, with one domain, an empty batch, a per-domain PreciseBN reset), the
reports it was sent (reports.json) and what that daemon served before it
stopped (served.json). This build opens a copy of it (/readyz 200), migrates
it to schema version 3 (every row gets its checksum, checked here against
a CRC-32C computed from the rows) and must serve every view exactly as served.json has it,
and within float32 rounding of statistics computed here from the reports
alone (EMA, PreciseBN and the last step, pooled and per domain).
"""

import json
import os
import shutil
import sqlite3
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nsd  # noqa: E402
import durable  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "store-v1")
PUT = {"main": {"world_size": 2, "momentum": 0.25}, "cum": {"world_size": 1, "momentum": None}}


def expected(sent):
    """{(run, source, domain, layer): (count or None, mean, var)} from the reports."""
    steps = {}  # (run, step) -> [(domain, layer report dict)] in arrival (worker) order
    order = []  # (run, step) or ("reset", run, domain), in order
    for item in sent:
        if "reset" in item:
            order.append(("reset", item["run"], item["reset"]))
            continue
        rep = item["report"]
        key = (item["run"], rep["step"])
        if key not in steps:
            steps[key] = []
            order.append(key)
        steps[key].append((rep["worker"], rep["domain"], rep["layers"]))
    out, emas, pools, last = {}, {}, {}, {}
    for key in order:
        if key[0] == "reset":
            _, run, dom = key
            for k in list(pools):
                if k[0] == run and k[1] == dom:
                    pools[k] = []
            continue
        run, step = key
        arrivals = sorted(steps[key])  # rank order
        for layer in arrivals[0][2]:
            doms = sorted({d for _, d, _ in arrivals})
            c = max(len(a[2][layer].get("mean", [])) for a in arrivals)  # the layer's channels
            groups = [("*", [a for a in arrivals])] + [(d, [a for a in arrivals if a[1] == d]) for d in doms]
            for dom, group in groups:
                arr = [nsd.arrival_of(a[2][layer]) for a in group]
                n, mean, var = nsd.combine(arr)
                ema = emas.setdefault((run, dom, layer), nsd.Ema(c, momentum=PUT[run]["momentum"]))
                if n >= 2:
                    ema.apply(n, mean, var)
                last[(run, dom, layer)] = (n, mean or [0.0] * c, var or [0.0] * c)  # N = 0: zeros
                if dom != "*":
                    pools.setdefault((run, dom, layer), []).extend(arr)
    for (run, dom, layer), ema in emas.items():
        out[(run, "ema", dom, layer)] = (None, ema.mean, ema.var)
        out[(run, "last", dom, layer)] = last[(run, dom, layer)]
    for run in PUT:
        layers = {k[2] for k in emas if k[0] == run}
        for layer in layers:
            doms = [k[1] for k in pools if k[0] == run and k[2] == layer]
            for dom in doms + ["*"]:
                arr = [a for k, v in pools.items() if k[0] == run and k[2] == layer and dom in ("*", k[1])
                       for a in v]
                n, mean, var = nsd.combine(arr)
                if n >= 2:  # else nothing to compare but the served bytes
                    out[(run, "precise", dom, layer)] = (None, mean, [v * n / (n - 1) for v in var])
    return out


class StoreCompat(durable.Case):

    root_prefix = "normstat-store-compat-"

    def tearDown(self):
        for cl in self._clients:
            cl.close()
        self.finish()

    def test_fixture_store_serves_the_same_values(self):
        with open(os.path.join(FIXTURE, "reports.json")) as f:
            sent = json.load(f)
        with open(os.path.join(FIXTURE, "served.json")) as f:
            served = json.load(f)
        data = os.path.join(self.root, "data")
        os.makedirs(data)
        shutil.copyfile(os.path.join(FIXTURE, durable.DB_NAME), os.path.join(data, durable.DB_NAME))
        d = durable.Durable(data, "--snapshot-interval", "0")
        try:
            d.start()
            c = d.client()
            self._clients.append(c)
            ref = expected(sent)
            compared = 0
            for key, body in sorted(served.items()):
                run, source, domain = key.split(" ")
                r = c.stats(run, source=source, domain=domain)
                self.check_status(r, 200, f"{key}: served")
                if r.status != 200:
                    continue
                got = r.json()
                self.check(got == body, f"{key}: the very values the writing release served",
                           f"{json.dumps(got)[:300]} vs {json.dumps(body)[:300]}")
                for layer, stats in got["layers"].items():
                    if (run, source, domain, layer) not in ref:
                        continue
                    count, mean, var = ref[(run, source, domain, layer)]
                    gm, gv = nsd.served(stats)
                    self.check_close(gm, mean, f"{key} {layer}: mean from the reports")
                    self.check_close(gv, var, f"{key} {layer}: var from the reports")
                    if count is not None:
                        self.check_eq(stats["count"], count, f"{key} {layer}: count")
                    compared += 1
            self.check(compared >= 20, "every layer of every view compared", str(compared))
            self.check_eq(d.stop(), 0, "exits 0 after SIGTERM")
            con = sqlite3.connect(os.path.join(data, durable.DB_NAME))
            self.check_eq(con.execute("PRAGMA user_version").fetchone()[0], 3,
                          "schema migrated to version 3 (row checksums, compact STEP rows)")
            self.check_eq(con.execute("PRAGMA integrity_check").fetchone()[0], "ok", "integrity_check")
            con.close()
            bad, n = durable.bad_row_sums(os.path.join(data, durable.DB_NAME))
            self.check(n > 0 and not bad, f"the migration gave each of the {n} rows the checksum "
                       "computed here from the rows (CRC-32C, RFC 3720)", "; ".join(bad[:5]))
        finally:
            d.kill()


if __name__ == "__main__":
    nsd.main()
