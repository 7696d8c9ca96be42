"""served_digest.py - a digest of every statistic normstatd serves after a fixed
set of reports, to check that a change to the ingest path keeps the served
results bitwise: run it against the build before and the build after and
compare the TOTAL lines.

    NS_BUILD=BUILD /usr/bin/python3 tests/bench/served_digest.py

The reports (seeded, the same every run): JSON into a world_size-1 run, some
unbiased; safetensors into a run with ema_debias; EMA-only steps into a run
with cumulative momentum; two workers of two domains ("photo", "sketch") into
a world_size-2 run, one of them by /sync. Then every run's /stats (sources,
formats, domains), /drift and /history (layers, channels, domains) answer.
Prints the status and a SHA-256 prefix of each body, then TOTAL over all."""
import hashlib
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import nsd  # noqa: E402

R = random.Random(1234)
LAYERS = {"a.bn": 37, "b.bn": 300, "c.bn": 8, "d.bn": 1000}

def rep(step, worker, domain="default", unbiased=False, update=("ema", "precise"), scale=1.0):
    layers = {}
    for name, c in LAYERS.items():
        n = R.choice([1, 2, 7, 200704, 4096])
        layers[name] = {"count": n,
                        "mean": [R.uniform(-1, 1) * scale for _ in range(c)],
                        "var": [R.uniform(0.0, 2.0) * scale for _ in range(c)]}
    return {"step": step, "worker": worker, "domain": domain, "unbiased": unbiased,
            "update": list(update), "layers": layers}

d = nsd.Daemon("--history-steps", "4").start()
c = d.client()
out = []
try:
    c.put("/v1/runs/one", {"world_size": 1, "momentum": 0.1})
    c.put("/v1/runs/two", {"world_size": 2})
    c.put("/v1/runs/deb", {"world_size": 1, "momentum": 0.3, "ema_debias": True})
    c.put("/v1/runs/cum", {"world_size": 1, "momentum": None})
    for s in range(12):
        for fmt in ("json", "st"):
            run = "one" if fmt == "json" else "deb"
            r = rep(s, 0, unbiased=(s % 3 == 0))
            if fmt == "st":
                resp = c.post(f"/v1/runs/{run}/batches", nsd.report_to_safetensors(r),
                              headers={"Content-Type": "application/safetensors"})
            else:
                resp = c.report(run, r)
            assert resp.status == 202, (run, resp.status, resp.short())
        r = rep(s, 0, update=("ema",) if s % 2 else ("ema", "precise"))
        assert c.report("cum", r).status == 202
        for w in range(2):
            r = rep(s, w, domain=("photo" if (w + s) % 2 else "sketch"), unbiased=(w == 1))
            assert c.report("two", r, sync=(w == 1)).status in (200, 202)
    for run in ("one", "two", "deb", "cum"):
        for q in ("", "?source=precise", "?source=last", "?variance=biased",
                  "?format=safetensors", "?source=precise&format=safetensors",
                  "?source=last&format=safetensors", "?domain=photo", "?domain=sketch&source=precise"):
            resp = c.get(f"/v1/runs/{run}/stats{q}", validate=False)
            out.append((f"{run}/stats{q}", resp.status, resp.body))
        resp = c.get(f"/v1/runs/{run}/drift", validate=False)
        out.append((f"{run}/drift", resp.status, resp.body))
        for layer in LAYERS:
            for dom in ("", "&domain=photo"):
                for ch in (0, 7, 36):
                    resp = c.get(f"/v1/runs/{run}/history?layer={layer}&channel={ch}{dom}", validate=False)
                    out.append((f"{run}/history {layer} {ch}{dom}", resp.status, resp.body))
finally:
    d.stop()
tot = hashlib.sha256()
for name, st, body in out:
    h = hashlib.sha256(body).hexdigest()[:16]
    tot.update(h.encode())
    print(st, h, name)
print("TOTAL", tot.hexdigest(), len(out), "bodies")
