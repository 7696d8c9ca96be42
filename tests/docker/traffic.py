"""traffic.py - statistics through a container's published port, for test_docker.sh.

    traffic.py put URL RUN SAVED.json    two workers report 4 steps of one layer; the
                                         served EMA and PreciseBN must equal a float64
                                         reference computed here; both are saved
    traffic.py same URL RUN SAVED.json   the served statistics are bit for bit the saved ones
                                         (after a restart on the same volume)

Prints "ok ..." / "FAIL ..." lines; exits 1 on a failed check. Every HTTP
call has a timeout, every wait a deadline.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "client", "python"))
import normstat  # noqa: E402

WORKERS, STEPS, CHANNELS, MOMENTUM = 2, 4, 3, 0.1
WAIT_S = 30


def batches():
    """(step, worker, count, mean, biased var) of the reports, deterministic."""
    out = []
    for step in range(STEPS):
        for worker in range(WORKERS):
            n = 5 + 3 * worker + step
            mean = [0.5 * step - worker + 0.25 * c for c in range(CHANNELS)]
            var = [1.0 + 0.1 * step + 0.3 * worker + 0.05 * c for c in range(CHANNELS)]
            out.append((step, worker, n, mean, var))
    return out


def reference():
    """PyTorch's EMA and the pooled PreciseBN over the steps, in float64."""
    rm, rv = [0.0] * CHANNELS, [1.0] * CHANNELS
    all_n, all_mean, all_m2 = 0, [0.0] * CHANNELS, [0.0] * CHANNELS
    for step in range(STEPS):
        rows = [b for b in batches() if b[0] == step]
        n = sum(r[2] for r in rows)
        for c in range(CHANNELS):
            mean = sum(r[2] * r[3][c] for r in rows) / n
            var = sum(r[2] * (r[4][c] + (r[3][c] - mean) ** 2) for r in rows) / n
            rm[c] = (1 - MOMENTUM) * rm[c] + MOMENTUM * mean
            rv[c] = (1 - MOMENTUM) * rv[c] + MOMENTUM * var * n / (n - 1)
        # every sample of every step, pooled: sum of squared deviations
        for r in rows:
            for c in range(CHANNELS):
                all_m2[c] += r[2] * (r[4][c] + r[3][c] ** 2)
                all_mean[c] += r[2] * r[3][c]
        all_n += n
    pmean = [s / all_n for s in all_mean]
    pvar = [(all_m2[c] - all_n * pmean[c] ** 2) / (all_n - 1) for c in range(CHANNELS)]
    return {"ema": (rm, rv), "precise": (pmean, pvar)}


fails = []


def check(cond, desc, detail=""):
    print(("ok   " if cond else "FAIL ") + desc + ("" if cond else f" -- {detail}"))
    if not cond:
        fails.append(desc)


def close(a, b, rel=1e-6):
    """Equal as the float32 values the daemon serves (it computes in float64)."""
    return len(a) == len(b) and all(abs(x - y) <= rel * max(1.0, abs(y)) for x, y in zip(a, b))


def served(client, run):
    return {src: client.stats(run, source=src)["layers"]["bn"] for src in ("ema", "precise")}


def put(client, run, path):
    client.delete_run(run, missing_ok=True)
    client.put_run(run, world_size=WORKERS, momentum=MOMENTUM)
    for step, worker, n, mean, var in batches():
        client.report(run, step, worker, {"bn": {"count": n, "mean": mean, "var": var}},
                      fmt="json")
    deadline = time.monotonic() + WAIT_S
    while client.stats(run, source="ema")["layers"].get("bn", {}).get("step") != STEPS - 1:
        if time.monotonic() > deadline:
            check(False, f"every step finalized within {WAIT_S} s")
            return
        time.sleep(0.2)
    got, ref = served(client, run), reference()
    for src in ("ema", "precise"):
        mean, var = got[src].get("running_mean"), got[src].get("running_var")
        check(close(mean, ref[src][0]), f"{src} mean served through the published port equals "
                                        "the float64 reference", f"{mean} vs {ref[src][0]}")
        check(close(var, ref[src][1]), f"{src} variance equals the float64 reference",
              f"{var} vs {ref[src][1]}")
    with open(path, "w") as f:
        json.dump(got, f)


def same(client, run, path):
    with open(path) as f:
        saved = json.load(f)
    got = served(client, run)
    check(got == saved, "after the restart on the same volume the EMA and PreciseBN are "
                        "bit for bit those served before", f"{got} vs {saved}")


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("put", "same"):
        sys.exit(__doc__)
    client = normstat.Client(sys.argv[2], timeout=10.0)
    (put if sys.argv[1] == "put" else same)(client, sys.argv[3], sys.argv[4])
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
