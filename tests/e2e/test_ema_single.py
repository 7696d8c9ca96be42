"""test_ema_single.py - one trainer: the service's EMA equals the model's own.

A CNN and an MLP train K steps (SGD, synthetic data, CPU) with a
StatsReporter (background thread, safetensors reports), for momentum 0.1 and
momentum None (PyTorch's cumulative average). Afterwards the service's EMA
(JSON and safetensors) equals the model's running_mean / running_var
(rtol 1e-5) and num_batches_tracked (exactly), and equals an independent
float64 EMA of the captured BN inputs; load_stats into a fresh model gives
the same buffers. JSON reports (fmt="json") give the same statistics.
"""

import harness as h
from normstat.torch import StatsReporter, load_stats

import torch

K = 12


def train_one(checks, d, kind, momentum, fmt):
    run = h.run_name(f"single-{kind}-{fmt}-{'none' if momentum is None else momentum}")
    c = d.client(fmt=fmt)
    c.put_run(run, world_size=1, momentum=momentum)
    model = h.make_model(kind, seed=1, momentum=momentum)
    cap = h.Capture(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(7)
    refs = {}
    with StatsReporter(model, c, run, rank=0, world_size=1) as rep:
        for step in range(K):
            x, y = h.make_batch(kind, 16, gen, shift=0.1 * step)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rep.step(step)
            for layer, mat in cap.take().items():
                r = refs.setdefault(layer, h.EmaRef(mat.shape[0], momentum))
                r.update(*h.global_stats([mat]))
        rep.flush()
        checks.eq(rep.steps_sent, K, f"{kind}/{fmt}/m={momentum}: reports sent")
    tag = f"{kind}/{fmt}/momentum={momentum}"
    js = c.stats(run, source="ema")
    bns = dict((n, m) for n, m in model.named_modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    checks.eq(sorted(js["layers"]), sorted(bns), f"{tag}: served layers are the model's BN layers")
    for name, m in bns.items():
        got = js["layers"].get(name, {})
        checks.close(got.get("running_mean", []), m.running_mean, f"{tag} {name}: EMA mean = model",
                     rtol=1e-5, atol=1e-6)
        checks.close(got.get("running_var", []), m.running_var, f"{tag} {name}: EMA var = model",
                     rtol=1e-5, atol=1e-6)
        checks.eq(got.get("num_batches_tracked"), int(m.num_batches_tracked),
                  f"{tag} {name}: num_batches_tracked = model")
        checks.close(got.get("running_mean", []), refs[name].mean,
                     f"{tag} {name}: EMA mean = float64 reference")
        checks.close(got.get("running_var", []), refs[name].var,
                     f"{tag} {name}: EMA var = float64 reference")
    # safetensors download and load_stats into a fresh model
    fresh = h.make_model(kind, seed=99, momentum=momentum)
    res = load_stats(fresh, c, run, source="ema")
    checks.eq((res.missing, res.extra), ([], []), f"{tag}: load_stats missing/extra")
    for (name, m), (_, f) in zip(model.named_modules(), fresh.named_modules()):
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            checks.close(f.running_mean, torch.tensor(js["layers"][name]["running_mean"]),
                         f"{tag} {name}: loaded running_mean = served JSON", rtol=0, atol=0)
            checks.close(f.running_var, torch.tensor(js["layers"][name]["running_var"]),
                         f"{tag} {name}: loaded running_var = served JSON", rtol=0, atol=0)
            checks.eq(int(f.num_batches_tracked), int(m.num_batches_tracked),
                      f"{tag} {name}: loaded num_batches_tracked")
    c.close()


def body(checks):
    d = h.start_daemon()
    for kind in ("cnn", "mlp"):
        for momentum in (0.1, None):
            train_one(checks, d, kind, momentum, "safetensors")
    train_one(checks, d, "cnn", 0.1, "json")
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(body)
