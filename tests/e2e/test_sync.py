"""test_sync.py - StatsReporter(sync=True): SyncBN statistics over HTTP.

Three trainer threads (own model replica, own Client, batch sizes 5, 8 and
11; worker 2 has an empty batch at step 2) forward a CNN and an MLP in
training mode and call step() with sync=True each step. Every worker must
get back, for every BN layer, the global count, mean and biased variance of
the concatenated inputs of all workers of that step (torch.var_mean in
float64 over the inputs captured here). A second run uses two domains with
scope="domain": each worker gets the statistics of its own domain only. A
third run checks gradient accumulation with merge_forwards=True: three forwards of one worker in one
step are merged into one arrival, and eval-mode forwards are not reported.
"""

import threading

import harness as h
from normstat.torch import StatsReporter

import torch

K = 4
WORLD = 3
BATCH = [5, 8, 11]
EMPTY = {(2, 2)}


def run_workers(d, kind, run, domains=None, scope=None):
    """Each worker's [(returned answer, captured inputs)] per step."""
    results = [None] * WORLD
    errors = []

    def work(rank):
        try:
            c = d.client()
            model = h.make_model(kind, seed=3)
            cap = h.Capture(model)
            gen = torch.Generator().manual_seed(200 + rank)
            dom = domains[rank] if domains else "default"
            out = []
            with StatsReporter(model, c, run, rank, WORLD, domain=dom, sync=True, scope=scope) as rep:
                for step in range(K):
                    if (rank, step) not in EMPTY:
                        x, _ = h.make_batch(kind, BATCH[rank], gen, shift=0.3 * rank)
                        with torch.no_grad():
                            model(x)
                    ans = rep.step(step)
                    out.append((ans, cap.take()))
            c.close()
            results[rank] = out
        except Exception as e:  # reported by the main thread
            errors.append(f"worker {rank}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(r,)) for r in range(WORLD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results, errors


def body(checks):
    d = h.start_daemon()
    for kind in ("cnn", "mlp"):
        run = h.run_name(f"sync-{kind}")
        d.client().put_run(run, world_size=WORLD)
        results, errors = run_workers(d, kind, run)
        checks.eq(errors, [], f"{kind}: workers finished without errors")
        if errors:
            continue
        for step in range(K):
            layers = sorted(results[0][step][0]["layers"])
            for layer in layers:
                mats = [results[w][step][1].get(layer) for w in range(WORLD)]
                n, mean, var = h.global_stats(mats)
                for w in range(WORLD):
                    ans = results[w][step][0]
                    g = ans["layers"][layer]
                    tag = f"{kind} step {step} {layer} worker {w}"
                    checks.check(ans["step"] == step and ans["complete"] is True
                                 and ans["workers"] == WORLD, f"{tag}: step/complete/workers",
                                 f"{ {k: v for k, v in ans.items() if k != 'layers'} }")
                    checks.eq(g["count"], n, f"{tag}: count = concatenated N")
                    checks.close(g["mean"], mean, f"{tag}: mean = var_mean of the concatenation")
                    checks.close(g["var"], var, f"{tag}: biased var = var_mean of the concatenation")
            checks.eq(layers, sorted(h.bn_names(h.make_model(kind))), f"{kind} step {step}: layers answered")

    # domain-specific BN: scope=domain combines only the caller's domain
    run = h.run_name("sync-domain")
    d.client().put_run(run, world_size=WORLD)
    domains = ["a", "b", "a"]
    results, errors = run_workers(d, "mlp", run, domains=domains, scope="domain")
    checks.eq(errors, [], "scope=domain: workers finished without errors")
    if not errors:
        for step in range(K):
            for layer in results[0][step][0]["layers"]:
                for w in range(WORLD):
                    mats = [results[v][step][1].get(layer) for v in range(WORLD)
                            if domains[v] == domains[w]]
                    n, mean, var = h.global_stats(mats)
                    g = results[w][step][0]["layers"][layer]
                    tag = f"scope=domain step {step} {layer} worker {w} ({domains[w]})"
                    checks.eq(g["count"], n, f"{tag}: count = N of the domain")
                    if n:
                        checks.close(g["mean"], mean, f"{tag}: mean of the domain's batches")
                        checks.close(g["var"], var, f"{tag}: var of the domain's batches")
    accumulation(checks, d)
    h.stop_daemon(checks, d)


def accumulation(checks, d):
    """Several forwards in one step (gradient accumulation, merge_forwards=True) are merged into
    one arrival; eval-mode forwards are not reported."""
    run = h.run_name("sync-accum")
    d.client().put_run(run, world_size=2)
    out = [None, None]
    errors = []

    def work(rank):
        try:
            c = d.client()
            model = h.make_model("cnn", seed=4)
            cap = h.Capture(model)
            gen = torch.Generator().manual_seed(500 + rank)
            with StatsReporter(model, c, run, rank, 2, sync=True, merge_forwards=True) as rep:
                sizes = [3, 9, 4] if rank == 0 else [6]
                with torch.no_grad():
                    for i, n in enumerate(sizes):
                        model(h.make_batch("cnn", n, gen, shift=float(i))[0])
                    model.eval()
                    model(h.make_batch("cnn", 5, gen, shift=9.0)[0])  # not reported
                    model.train()
                out[rank] = (rep.step(0), cap.take())
            c.close()
        except Exception as e:
            errors.append(f"worker {rank}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    checks.eq(errors, [], "accumulation: workers finished without errors")
    if errors:
        return
    for layer, g in out[0][0]["layers"].items():
        n, mean, var = h.global_stats([out[0][1][layer], out[1][1][layer]])
        checks.eq(g["count"], n, f"accumulation {layer}: count = all training forwards of both workers")
        checks.close(g["mean"], mean, f"accumulation {layer}: mean of the merged forwards")
        checks.close(g["var"], var, f"accumulation {layer}: var of the merged forwards")


if __name__ == "__main__":
    h.main(body)
