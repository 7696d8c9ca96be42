"""test_precise.py - precise_bn across three workers equals the exact population.

Three trainer threads (own model replica, own Client, own data) first train
a CNN a few steps with a StatsReporter (EMA and PreciseBN generation 0 get
data), flush and meet at a barrier; then every worker calls precise_bn over
K batches of its own loader (worker 2's loader has only K-2 batches, so it
reports two empty steps). Afterwards every worker's running_mean and
running_var must equal the exact mean and unbiased variance of each BN
layer's inputs over all batches of all workers in the precise pass (float64,
computed here from the captured inputs), the served precise statistics
likewise (variance=biased: the biased variance; num_samples: the count), the
EMA must be untouched, and each model's momentum, training flags and
num_batches_tracked restored. A second precise_bn pass (new generation, new
data) must reflect only the second pass's batches, and training reports may
continue at the returned next_step through the training loop's
StatsReporter, which stayed open and did not collect the precise forwards.
"""

import threading

import harness as h
from normstat.torch import StatsReporter, precise_bn

import torch

WORLD = 3
TRAIN_STEPS = 4
K = 6
BATCH = [6, 9, 7]


def population(mats):
    """(n, mean, unbiased var, biased var) over [C, n_i] matrices."""
    x = torch.cat([m for m in mats if m is not None and m.shape[1] > 0], dim=1)
    var_b, mean = torch.var_mean(x, dim=1, unbiased=False)
    n = x.shape[1]
    return n, mean, var_b * n / (n - 1), var_b


def body(checks):
    d = h.start_daemon()
    run = h.run_name("precise")
    d.client().put_run(run, world_size=WORLD, momentum=0.1)
    barrier = threading.Barrier(WORLD, timeout=30)
    results = [None] * WORLD
    errors = []

    def work(rank):
        try:
            c = d.client()
            model = h.make_model("cnn", seed=11)
            cap = h.Capture(model)
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            gen = torch.Generator().manual_seed(300 + rank)
            rep = StatsReporter(model, c, run, rank, WORLD)  # stays open across the precise passes
            for step in range(TRAIN_STEPS):
                x, y = h.make_batch("cnn", BATCH[rank], gen)
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                rep.step(step)
            rep.flush()
            cap.take()
            barrier.wait()  # every training report is acknowledged: all steps finalized
            ema_before = c.stats(run, source="ema")
            model.eval()
            model.head.train()  # a mixed state, to be restored
            flags = [m.training for m in model.modules()]
            momenta = [m.momentum for m in model.modules() if hasattr(m, "momentum")]
            nbt = [int(m.num_batches_tracked) for m in model.modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            passes = []
            for p in range(2):
                n_batches = K - 2 if rank == 2 else K
                loader = [h.make_batch("cnn", BATCH[rank], gen, shift=0.5 * p + 0.1 * rank,
                                       scale=1.0 + 0.3 * p) for _ in range(n_batches)]
                res = precise_bn(model, loader, c, run, rank, WORLD, num_batches=K)
                bufs = {n: (m.running_mean.clone(), m.running_var.clone())
                        for n, m in model.named_modules()
                        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
                passes.append((res, cap.take(), bufs,
                               c.stats(run, source="precise", domain="default"),
                               c.stats(run, source="precise", domain="default", variance="biased")))
                barrier.wait()  # everyone fetched before the next pass resets
            ema_after = c.stats(run, source="ema")
            restored = ([m.training for m in model.modules()] == flags,
                        [m.momentum for m in model.modules() if hasattr(m, "momentum")] == momenta,
                        [int(m.num_batches_tracked) for m in model.modules()
                         if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)] == nbt)
            # training continues at next_step with the training reporter, which
            # must not have collected the precise passes' forwards
            nxt = passes[-1][0].next_step
            model.train()
            x, y = h.make_batch("cnn", BATCH[rank], gen)
            model(x)
            rep.step(nxt)
            rep.close()
            results[rank] = (passes, ema_before, ema_after, restored)
            c.close()
        except Exception as e:
            errors.append(f"worker {rank}: {type(e).__name__}: {e}")
            barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(WORLD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    checks.eq(errors, [], "workers finished without errors")
    if errors:
        print(d.tail())
        return
    for p in range(2):
        layers = sorted(results[0][0][p][1])
        ref = {l: population([results[w][0][p][1].get(l) for w in range(WORLD)]) for l in layers}
        res0 = results[0][0][p][0]
        checks.eq((res0.first_step, res0.last_step), (TRAIN_STEPS + p * K, TRAIN_STEPS + p * K + K - 1),
                  f"pass {p}: steps used (default step = one above the highest finalized)")
        checks.eq([results[w][0][p][0].batches for w in range(WORLD)], [K, K, K - 2],
                  f"pass {p}: batches forwarded per worker")
        checks.check(isinstance(res0.generation, int) and results[1][0][p][0].generation is None,
                     f"pass {p}: rank 0 reset (generation {res0.generation}), others did not")
        for w in range(WORLD):
            res, _, bufs, js, jsb = results[w][0][p]
            checks.eq((res.missing, res.extra), ([], []), f"pass {p} worker {w}: load missing/extra")
            for l in layers:
                n, mean, var_u, var_b = ref[l]
                tag = f"pass {p} worker {w} {l}"
                checks.close(bufs[l][0], mean, f"{tag}: running_mean = exact population mean")
                checks.close(bufs[l][1], var_u, f"{tag}: running_var = exact unbiased variance")
                if w == 0:
                    g = js["layers"].get(l, {})
                    checks.close(g.get("running_mean", []), mean, f"{tag}: served precise mean")
                    checks.close(g.get("running_var", []), var_u, f"{tag}: served precise var (unbiased)")
                    gb = jsb["layers"].get(l, {})
                    checks.close(gb.get("running_var", []), var_b, f"{tag}: variance=biased serves M2/n")
                    if "num_samples" in g:
                        checks.eq(g["num_samples"], n, f"{tag}: num_samples = population count")
                    if "num_batches" in g:
                        checks.eq(g["num_batches"], K, f"{tag}: num_batches")
    for w in range(WORLD):
        _, ema_before, ema_after, restored = results[w]
        checks.eq(ema_after["layers"], ema_before["layers"], f"worker {w}: EMA untouched by precise passes")
        checks.eq(restored, (True, True, True),
                  f"worker {w}: training flags, momentum, num_batches_tracked restored")
    info = d.client().get_run(run)
    steps = {l: v.get("finalized_step") for l, v in info["status"]["layers"].items()}
    checks.check(all(s == TRAIN_STEPS + 2 * K for s in steps.values()),
                 "a training step at next_step was accepted and finalized", f"{steps}")
    last = d.client().stats(run, source="last", layers=["head.1"])["layers"]["head.1"]
    checks.eq(last["count"], sum(BATCH),
              "the open training reporter saw only its own batch, not the precise passes'")
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(body)
