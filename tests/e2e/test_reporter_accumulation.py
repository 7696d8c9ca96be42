"""test_reporter_accumulation.py - gradient accumulation: F forwards per
optimizer step, in both StatsReporter modes.

A CNN trains K optimizer steps of F = 4 micro-batches each (SGD, loss
scaled by 1/F), next to a twin without a reporter.
  * forwards_per_step=4 (PyTorch's semantics, one update per forward): the
    forward i of step s is normstat step s*4 + i; the served EMA equals the
    model's own running buffers (rtol 1e-5) and num_batches_tracked (K*F);
    it equals a float64 EMA updated once per micro-batch; the layer's last
    applied step is K*F - 1.
  * merge_forwards=True (one global batch per optimizer step): the served
    EMA equals a float64 EMA of the concatenated micro-batches of each step
    and num_batches_tracked is K, while the model's own buffers still equal
    the twin's (PyTorch updates them per forward whatever is reported).
  * Right after each forward, before step(), the model's running buffers
    (read as attributes, as a DistributedDataParallel wrapper around the
    reported model reads them to broadcast before its next forward) are
    the twin's: running_mean bit for bit, running_var within 1 ulp.
  * More forwards than forwards_per_step: strict=True raises ValueError naming
    the layer; by default the step is lost with a warning and training goes on.
"""

import warnings

import harness as h
from normstat.torch import StatsReporter

import torch

K = 5
F = 4
MICRO = 6


def train(checks, d, mode):
    run = h.run_name(f"accum-{mode}")
    c = d.client()
    c.put_run(run, world_size=1, momentum=0.1)
    model, twin = h.make_model("cnn", seed=2), h.make_model("cnn", seed=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    topt = torch.optim.SGD(twin.parameters(), lr=0.05)
    cap = h.Capture(model)
    gen = torch.Generator().manual_seed(9)
    per_forward, merged = {}, {}
    kw = {"forwards_per_step": F} if mode == "per-forward" else {"merge_forwards": True}
    with StatsReporter(model, c, run, 0, 1, strict=True, **kw) as rep:
        for step in range(K):
            mats = {}
            for i in range(F):
                x, y = h.make_batch("cnn", MICRO, gen, shift=0.1 * (step * F + i))
                for m, o in ((model, opt), (twin, topt)):
                    loss = torch.nn.functional.cross_entropy(m(x), y) / F
                    loss.backward()
                for layer, mat in cap.take().items():
                    r = per_forward.setdefault(layer, h.EmaRef(mat.shape[0], 0.1))
                    r.update(*h.global_stats([mat]))
                    mats.setdefault(layer, []).append(mat)
            for o in (opt, topt):
                o.step()
                o.zero_grad()
            rep.step(step)
            for layer, ms in mats.items():
                r = merged.setdefault(layer, h.EmaRef(ms[0].shape[0], 0.1))
                r.update(*h.global_stats(ms))
        rep.flush()
    served = c.stats(run)["layers"]
    status = c.get_run(run)["status"]["layers"]
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            continue
        t = dict(twin.named_modules())[name]
        checks.close(m.running_mean, t.running_mean, f"{mode} {name}: model running_mean = twin",
                     rtol=1e-6, atol=1e-7)
        checks.close(m.running_var, t.running_var, f"{mode} {name}: model running_var = twin",
                     rtol=1e-6, atol=1e-7)
        checks.eq(int(m.num_batches_tracked), K * F, f"{mode} {name}: model num_batches_tracked")
        got = served.get(name, {})
        ref = per_forward[name] if mode == "per-forward" else merged[name]
        checks.close(got.get("running_mean", []), ref.mean, f"{mode} {name}: EMA mean = float64 reference")
        checks.close(got.get("running_var", []), ref.var, f"{mode} {name}: EMA var = float64 reference")
        checks.eq(got.get("num_batches_tracked"), ref.nbt, f"{mode} {name}: EMA num_batches_tracked")
        if mode == "per-forward":
            checks.close(got.get("running_mean", []), m.running_mean, f"{mode} {name}: EMA mean = model",
                         rtol=1e-5, atol=1e-6)
            checks.close(got.get("running_var", []), m.running_var, f"{mode} {name}: EMA var = model",
                         rtol=1e-5, atol=1e-6)
            checks.eq(got.get("num_batches_tracked"), int(m.num_batches_tracked),
                      f"{mode} {name}: EMA num_batches_tracked = model")
        checks.eq((status.get(name) or {}).get("step"), K * F - 1 if mode == "per-forward" else K - 1,
                  f"{mode} {name}: last applied normstat step")
    c.close()


def too_many(checks, d):
    run = h.run_name("accum-too-many")
    c = d.client()
    model = h.make_model("mlp", seed=1)
    gen = torch.Generator().manual_seed(1)
    with StatsReporter(model, c, run, 0, 1, forwards_per_step=2, strict=True) as rep:
        for _ in range(3):
            model(h.make_batch("mlp", 4, gen)[0])
        try:
            rep.step(0)
            checks.check(False, "3 forwards with forwards_per_step=2 raise ValueError", "no exception")
        except ValueError as e:
            checks.check("net.1" in str(e) and "forwards_per_step=2" in str(e),
                         "strict: 3 forwards with forwards_per_step=2 raise ValueError naming the layer",
                         str(e))
    # not strict (the default): the step is lost with a warning, training goes on
    run = h.run_name("accum-too-many-lenient")
    with StatsReporter(model, c, run, 0, 1, forwards_per_step=2) as rep:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                model(h.make_batch("mlp", 4, gen)[0])
            checks.eq(rep.step(0), None, "lenient: step 0 with 3 forwards returns")
        checks.check(any("net.1" in str(w.message) for w in caught),
                     "lenient: a warning names the layer", [str(w.message) for w in caught])
        for _ in range(2):
            model(h.make_batch("mlp", 4, gen)[0])
        rep.step(1)
        rep.flush()
        checks.eq(rep.lost_steps, [0], "lenient: step 0 is listed as lost")
    served = c.stats(run)["layers"]
    checks.eq(served.get("net.1", {}).get("num_batches_tracked"), 2,
              "lenient: step 1's two forwards reached the daemon")
    c.close()


def ulps(a, b):
    ia, ib = a.view(torch.int32).long(), b.view(torch.int32).long()
    ia = torch.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = torch.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return int((ia - ib).abs().max().item())


def current_after_forward(checks, d):
    model, twin = h.make_model("cnn", seed=3), h.make_model("cnn", seed=3)
    bns = [(m, t) for m, t in zip(model.modules(), twin.modules())
           if isinstance(m, torch.nn.BatchNorm2d)]
    gen = torch.Generator().manual_seed(12)
    c = d.client()
    worst_mean = worst_var = 0
    with StatsReporter(model, c, h.run_name("accum-now"), 0, 1, forwards_per_step=2) as rep:
        for step in range(3):
            for _ in range(2):
                x = h.make_batch("cnn", MICRO, gen, shift=0.3 * step)[0]
                model(x)
                twin(x)
                for m, t in bns:
                    worst_mean = max(worst_mean, ulps(m.running_mean, t.running_mean))
                    worst_var = max(worst_var, ulps(m.running_var, t.running_var))
            rep.step(step)
    c.close()
    checks.eq(worst_mean, 0, "right after a forward, running_mean is the twin's bit for bit (ulps)")
    checks.check(worst_var <= 1, "right after a forward, running_var is within 1 ulp of the twin's",
                 f"{worst_var} ulp")


def body(checks):
    d = h.start_daemon()
    current_after_forward(checks, d)
    train(checks, d, "per-forward")
    train(checks, d, "merged")
    too_many(checks, d)
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(body)
