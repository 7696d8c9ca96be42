"""test_domains.py - two domains: per-domain, pooled and mixture statistics.

Four trainer threads report a CNN's BN statistics for K steps (workers 0
and 1 in domain "photo", 2 and 3 in "sketch", with different input
distributions; worker 3 has an empty batch at step 2). Training reports feed
EMA and PreciseBN (generation 0). Checked against float64 references
computed here from the captured BN inputs:

  * EMA of each domain = PyTorch's EMA over that domain's combined batches;
  * pooled EMA (domain "*") = the EMA over all workers' combined batches;
  * PreciseBN of each domain = exact mean / unbiased variance of all that
    domain's inputs; pooled PreciseBN = the same over every input;
  * mixture photo:0.7,sketch:0.3 (EMA and PreciseBN) = sum w_d mu_d and
    sum w_d (var_d + mu_d^2) - mean^2 of the per-domain references;
  * load_stats with a mixture loads those values into a model.
"""

import threading

import harness as h
from normstat.torch import StatsReporter, load_stats

import torch

K = 6
WORLD = 4
DOMAIN = ["photo", "photo", "sketch", "sketch"]
BATCH = [6, 8, 5, 7]
EMPTY = {(3, 2)}
MIX = {"photo": 0.7, "sketch": 0.3}


def body(checks):
    d = h.start_daemon()
    run = h.run_name("domains")
    d.client().put_run(run, world_size=WORLD, momentum=0.2)
    caps = [None] * WORLD
    errors = []

    def work(rank):
        try:
            c = d.client()
            model = h.make_model("cnn", seed=21)
            cap = h.Capture(model)
            gen = torch.Generator().manual_seed(400 + rank)
            dom = DOMAIN[rank]
            shift, scale = (0.0, 1.0) if dom == "photo" else (1.5, 0.5)
            out = []
            with StatsReporter(model, c, run, rank, WORLD, domain=dom) as rep:
                for step in range(K):
                    if (rank, step) not in EMPTY:
                        x, _ = h.make_batch("cnn", BATCH[rank], gen, shift=shift, scale=scale)
                        with torch.no_grad():
                            model(x)
                    rep.step(step)
                    out.append(cap.take())
            caps[rank] = out
            c.close()
        except Exception as e:
            errors.append(f"worker {rank}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(r,)) for r in range(WORLD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    checks.eq(errors, [], "workers finished without errors")
    if errors:
        return
    layers = sorted(caps[0][0])
    groups = {"photo": [0, 1], "sketch": [2, 3], "*": [0, 1, 2, 3]}
    ema = {g: {} for g in groups}
    allx = {g: {} for g in groups}
    for step in range(K):
        for layer in layers:
            for g, ws in groups.items():
                mats = [caps[w][step].get(layer) for w in ws]
                n, mean, var = h.global_stats(mats)
                C = next(m.shape[0] for m in mats if m is not None)
                ema[g].setdefault(layer, h.EmaRef(C, 0.2)).update(n, mean, var)
                allx[g].setdefault(layer, []).extend(m for m in mats if m is not None)
    precise = {g: {} for g in groups}
    for g in groups:
        for layer in layers:
            x = torch.cat(allx[g][layer], dim=1)
            var, mean = torch.var_mean(x, dim=1, unbiased=True)
            precise[g][layer] = (mean, var)

    c = d.client()
    for g in groups:
        js = c.stats(run, source="ema", domain=g)
        pj = c.stats(run, source="precise", domain=g)
        for layer in layers:
            got = js["layers"].get(layer, {})
            checks.close(got.get("running_mean", []), ema[g][layer].mean, f"EMA {g} {layer}: mean")
            checks.close(got.get("running_var", []), ema[g][layer].var, f"EMA {g} {layer}: var")
            checks.eq(got.get("num_batches_tracked"), ema[g][layer].nbt, f"EMA {g} {layer}: num_batches_tracked")
            gp = pj["layers"].get(layer, {})
            checks.close(gp.get("running_mean", []), precise[g][layer][0], f"precise {g} {layer}: mean")
            checks.close(gp.get("running_var", []), precise[g][layer][1], f"precise {g} {layer}: unbiased var")
    # mixtures, as a dict and as a string
    for source in ("ema", "precise"):
        for mix in (MIX, "photo:0.7,sketch:0.3", {"photo": 7, "sketch": 3}):
            js = c.stats(run, source=source, mixture=mix)
            for layer in layers:
                if source == "ema":
                    per = {dm: (ema[dm][layer].mean, ema[dm][layer].var) for dm in MIX}
                else:
                    per = {dm: precise[dm][layer] for dm in MIX}
                mean = sum(MIX[dm] * per[dm][0] for dm in MIX)
                var = sum(MIX[dm] * (per[dm][1] + per[dm][0] ** 2) for dm in MIX) - mean ** 2
                got = js["layers"].get(layer, {})
                tag = f"mixture {mix!r} {source} {layer}"
                checks.close(got.get("running_mean", []), mean, f"{tag}: mean")
                checks.close(got.get("running_var", []), var, f"{tag}: var")
    model = h.make_model("cnn", seed=77)
    res = load_stats(model, c, run, source="precise", mixture=MIX)
    checks.eq((res.missing, res.extra), ([], []), "load_stats(mixture): missing/extra")
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            per = {dm: precise[dm][name] for dm in MIX}
            mean = sum(MIX[dm] * per[dm][0] for dm in MIX)
            var = sum(MIX[dm] * (per[dm][1] + per[dm][0] ** 2) for dm in MIX) - mean ** 2
            checks.close(m.running_mean, mean, f"load_stats(precise, mixture) {name}: running_mean")
            checks.close(m.running_var, var, f"load_stats(precise, mixture) {name}: running_var")
    model = h.make_model("cnn", seed=77)
    load_stats(model, c, run, source="ema", domain="sketch")
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            checks.close(m.running_mean, ema["sketch"][name].mean, f"load_stats(ema, sketch) {name}: running_mean")
            checks.eq(int(m.num_batches_tracked), ema["sketch"][name].nbt,
                      f"load_stats(ema, sketch) {name}: num_batches_tracked")
    c.close()
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(body)
