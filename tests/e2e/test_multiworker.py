"""test_multiworker.py - four trainer processes, then an evaluator process.

Four worker processes (forked; each its own model replica and data shard, batch
sizes 4, 7, 10 and 13; worker 3 has an empty batch at step 3, worker 1 at
step 5) train a CNN for K steps with StatsReporter(sync=False) and save a
float64 copy of every BN layer's input. The service's EMA must equal

  * a float64 EMA (PyTorch's formula) of each step's global statistics,
    computed here from the concatenated inputs of all workers, and
  * a float64 torch.nn.BatchNorm1d run in training mode over those
    concatenated inputs, step after step (PyTorch itself as the reference),

with float32 tolerances, and source=last must equal the last step's global
statistics. Then an evaluator process loads the statistics with load_stats
into a fresh model: its buffers equal the references, and its eval-mode
outputs equal those of a model here holding exactly the served buffers.
"""

import multiprocessing
import tempfile

import harness as h
from normstat.torch import StatsReporter, load_stats

import torch

# Worker processes are forked from this one (torch already imported), as
# DataLoader workers are, so each starts in milliseconds.
MP = multiprocessing.get_context("fork")

K = 8
WORLD = 4
BATCH = [4, 7, 10, 13]
EMPTY = {(3, 3), (1, 5)}  # (worker, step) with an empty batch


def worker(rank, url, run, out):
    import normstat

    c = normstat.Client(url, timeout=20.0)
    model = h.make_model("cnn", seed=1)
    cap = h.Capture(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)
    saved = {}
    with StatsReporter(model, c, run, rank=rank, world_size=WORLD) as rep:
        for step in range(K):
            if (rank, step) not in EMPTY:
                x, y = h.make_batch("cnn", BATCH[rank], gen, shift=0.2 * rank, scale=1 + 0.1 * step)
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            rep.step(step)
            saved[step] = cap.take()
    torch.save(saved, out)


def evaluator(url, run, out):
    import normstat

    c = normstat.Client(url, timeout=20.0)
    model = h.make_model("cnn", seed=5)
    res = load_stats(model, c, run, source="ema")
    model.eval()
    x, _ = h.make_batch("cnn", 6, torch.Generator().manual_seed(42))
    with torch.no_grad():
        y = model(x)
    bufs = {n: (m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked))
            for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    torch.save({"missing": res.missing, "extra": res.extra, "bufs": bufs, "out": y}, out)


def body(checks):
    d = h.start_daemon()
    run = h.run_name("multi")
    c = d.client()
    c.put_run(run, world_size=WORLD, momentum=0.1)
    tmp = tempfile.mkdtemp(prefix="ns-e2e-multi-")
    procs = []
    for rank in range(WORLD):
        out = f"{tmp}/w{rank}.pt"
        p = MP.Process(target=worker, args=(rank, d.url, run, out))
        p.start()
        procs.append((p, out))
    for rank, (p, _) in enumerate(procs):
        p.join(timeout=30)
        if p.exitcode is None:
            p.kill()
        checks.eq(p.exitcode, 0, f"worker process {rank} exit status")
    if checks.fails:
        print(d.tail())
        return
    caps = [torch.load(out) for _, out in procs]

    # references: float64 EMA of global batches; torch BatchNorm1d (float64) on the concatenation
    layers = sorted(caps[0][0])
    ema = {}
    bn = {}
    last = {}
    for step in range(K):
        for layer in layers:
            mats = [caps[w][step].get(layer) for w in range(WORLD)]
            n, mean, var = h.global_stats(mats)
            C = next(m.shape[0] for m in mats if m is not None)
            ema.setdefault(layer, h.EmaRef(C, 0.1)).update(n, mean, var)
            ref_bn = bn.setdefault(layer, torch.nn.BatchNorm1d(C, momentum=0.1).double().train())
            if n >= 2:
                ref_bn(torch.cat([m for m in mats if m is not None], dim=1).t())
            last[layer] = (n, mean, var)
        checks.eq(sum(1 for w in range(WORLD) if (w, step) in EMPTY and caps[w][step]), 0,
                  f"step {step}: empty-batch workers recorded no input")

    got = c.stats(run, source="ema")
    checks.eq(sorted(got["layers"]), layers, "served layers")
    for layer in layers:
        g = got["layers"][layer]
        checks.close(g["running_mean"], ema[layer].mean, f"{layer}: EMA mean = float64 EMA of global batches")
        checks.close(g["running_var"], ema[layer].var, f"{layer}: EMA var = float64 EMA of global batches")
        checks.close(g["running_mean"], bn[layer].running_mean,
                     f"{layer}: EMA mean = torch BatchNorm1d over the concatenated batches")
        checks.close(g["running_var"], bn[layer].running_var,
                     f"{layer}: EMA var = torch BatchNorm1d over the concatenated batches")
        checks.eq(g["num_batches_tracked"], int(bn[layer].num_batches_tracked),
                  f"{layer}: num_batches_tracked = torch BatchNorm1d's")
    lst = c.stats(run, source="last")
    for layer in layers:
        g = lst["layers"].get(layer, {})
        n, mean, var = last[layer]
        checks.eq(g.get("count"), n, f"{layer}: source=last count = global N of step {K - 1}")
        checks.close(g.get("mean", []), mean, f"{layer}: source=last mean = concatenated batch mean")
        checks.close(g.get("var", []), var, f"{layer}: source=last var = concatenated batch var (biased)")

    # an evaluator process
    out = f"{tmp}/eval.pt"
    p = MP.Process(target=evaluator, args=(d.url, run, out))
    p.start()
    p.join(timeout=30)
    if p.exitcode is None:
        p.kill()
    checks.eq(p.exitcode, 0, "evaluator process exit status")
    if p.exitcode != 0:
        return
    ev = torch.load(out)
    checks.eq((ev["missing"], ev["extra"]), ([], []), "evaluator: load_stats missing/extra")
    exact = h.make_model("cnn", seed=5)
    for name, m in exact.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            rm, rv, nbt = ev["bufs"][name]
            checks.close(rm, ema[name].mean, f"evaluator {name}: running_mean = reference EMA")
            checks.close(rv, ema[name].var, f"evaluator {name}: running_var = reference EMA")
            checks.eq(nbt, int(bn[name].num_batches_tracked), f"evaluator {name}: num_batches_tracked")
            with torch.no_grad():
                m.running_mean.copy_(torch.tensor(got["layers"][name]["running_mean"]))
                m.running_var.copy_(torch.tensor(got["layers"][name]["running_var"]))
    exact.eval()
    x, _ = h.make_batch("cnn", 6, torch.Generator().manual_seed(42))
    with torch.no_grad():
        y = exact(x)
    checks.close(ev["out"], y, "evaluator: eval outputs = a model holding exactly the served buffers",
                 rtol=1e-6, atol=1e-6)
    c.close()
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(body)
