"""test_reporter_capture.py - StatsReporter takes the statistics a layer
computes anyway, and leaves the model exactly as without it.

For each kind of layer and input (BatchNorm1d on (N, C) and (N, C, L),
BatchNorm2d in a CNN, channels_last, BatchNorm3d with momentum=None, bf16
CPU autocast, fp16, a lazy BatchNorm, InstanceNorm1d/2d/3d with
track_running_stats, a bare BatchNorm2d and a bare InstanceNorm2d as the
whole model, BatchNorm without running statistics, SyncBatchNorm and
torch.compile where this machine can run them) a model trains K steps with
a StatsReporter(sync=True) next to a twin built from the same seed without
one. Checked:
  * the outputs and the parameter gradients are bit for bit the twin's;
  * per step, from the same buffers: running_mean bit for bit and
    running_var within 1 ulp of a twin's forward (InstanceNorm: within 4 ulp of the buffers'
    scale, max(1, |values|); see capture.py), the number of bitwise-equal
    steps printed; num_batches_tracked exactly;
    after K chained steps, within 1e-6 relative of the twin;
  * the /sync answer (global = this worker's statistics) equals a float64
    computation from the layer's captured input (BatchNorm: mean and biased
    variance per channel; InstanceNorm: averages of the per-instance mean
    and unbiased variance, times (N-1)/N);
  * the served EMA equals the model's own buffers, and num_batches_tracked
    (BatchNorm) equals the model's; a bare module is layer "bn" and
    load_stats fills a fresh bare module; a model with only InstanceNorm
    layers is accepted, and load_stats fills its running buffers.
A training forward that raises inside a layer (caught by the trainer, as
when a batch is skipped after an out-of-memory error) leaves the layer as
the twin's: its state_dict and a following eval-mode forward are bit for
bit the twin's.
A fourth part: two workers where a branch runs only on worker 0 (worker 1
reports count 0 for it): every step finalizes and the branch's EMA equals a
float64 EMA of worker 0's inputs alone.
"""

import copy
import threading

import harness as h
from normstat.torch import StatsReporter, bn_layers, load_stats

import torch
from torch import nn

K = 5


def ordered(t):
    i = t.detach().float().contiguous().view(torch.int32).long()
    return torch.where(i < 0, -(i & 0x7FFFFFFF), i)


def ulps(a, b):
    return int((ordered(a) - ordered(b)).abs().max().item()) if a.numel() else 0


def is_in(m):
    return isinstance(m, nn.modules.instancenorm._InstanceNorm)


class Inputs:
    """Forward pre-hooks recording a float64 copy of every training-mode
    input of the tracked layers, by layer name."""

    def __init__(self, model):
        self.cur = {}
        self.hooks = [m.register_forward_pre_hook(self._hook(n)) for n, m in bn_layers(model)]

    def _hook(self, name):
        def hook(module, inputs):
            if module.training:
                self.cur.setdefault(name, []).append((module, inputs[0].detach().double().clone()))
        return hook

    def take(self):
        out, self.cur = self.cur, {}
        return out


def reference(module, x):
    """(count, mean, biased var) the /sync answer must hold, in float64."""
    if is_in(module):
        if x.dim() == module._get_no_batch_dim():
            x = x.unsqueeze(0)
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        n = flat.shape[0] * flat.shape[2]
        var, mean = torch.var_mean(flat, dim=2, unbiased=True)
        return n, mean.mean(0), var.mean(0) * (n - 1) / n
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1)
    var, mean = torch.var_mean(flat, dim=1, unbiased=False)
    return flat.shape[1], mean, var


def buffers(model):
    return {n: (m.running_mean, m.running_var, getattr(m, "num_batches_tracked", None))
            for n, m in bn_layers(model) if m.running_mean is not None}


def run_case(checks, d, tag, build, make_x, momentum=0.1, autocast=None, ulp_bound=1,
             backward_after_step=False):
    run = h.run_name(f"cap-{tag}")
    c = d.client()
    c.put_run(run, world_size=1, momentum=momentum)
    model, twin = build(), build()
    opt = torch.optim.SGD(model.parameters(), lr=0.05) if list(model.parameters()) else None
    topt = torch.optim.SGD(twin.parameters(), lr=0.05) if list(twin.parameters()) else None
    inputs = Inputs(twin)
    gen = torch.Generator().manual_seed(11)
    worst = {"mean": 0, "var": 0}
    bitwise = 0
    total = 0
    with StatsReporter(model, c, run, 0, 1, sync=True) as rep:
        for step in range(K):
            x = make_x(gen, step)
            # one forward from the reporter model's current buffers: the per-step bound
            one = build()
            if step:  # at step 0 both are fresh from the same seed (lazy layers not built yet)
                one.load_state_dict(copy.deepcopy(model.state_dict()))
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                out, tout = model(x), twin(x)
                with torch.no_grad():
                    one(x)
            checks.check(torch.equal(out, tout), f"{tag} step {step}: output bit for bit = twin")
            loss, tloss = out.float().pow(2).mean(), tout.float().pow(2).mean()
            if not backward_after_step:
                loss.backward()
                tloss.backward()
            ans = rep.step(step)
            if backward_after_step:  # the running buffers were updated in place before backward
                loss.backward()
                tloss.backward()
            grads_equal = all(torch.equal(p.grad, q.grad) for p, q in
                              zip(model.parameters(), twin.parameters()) if p.grad is not None)
            checks.check(grads_equal, f"{tag} step {step}: parameter gradients bit for bit = twin")
            for o in (opt, topt):
                if o is not None:
                    o.step()
                    o.zero_grad()
            mb, ob = buffers(model), buffers(one)
            for name, (rm, rv, nbt) in mb.items():
                orm, orv, onbt = ob[name]
                um, uv = ulps(rm, orm), ulps(rv, orv)
                worst["mean"], worst["var"] = max(worst["mean"], um), max(worst["var"], uv)
                total += 1
                bitwise += int(um == 0 and uv == 0)
                if ulp_bound is None:  # InstanceNorm: a few ulp of the buffers' scale
                    scale = max(1.0, float(orm.abs().max()), float(orv.abs().max()))
                    dev = max(float((rm - orm).abs().max()), float((rv - orv).abs().max()))
                    checks.check(dev <= 2.0 ** -21 * scale,
                                 f"{tag} step {step} {name}: running buffers within 4 ulp of "
                                 f"scale {scale:.3g} of one forward from the same buffers "
                                 f"(mean {um} ulp, var {uv} ulp, |diff| {dev:.3g})")
                else:
                    checks.check(um == 0 and uv <= ulp_bound,
                                 f"{tag} step {step} {name}: running_mean bit for bit and "
                                 f"running_var within {ulp_bound} ulp of one forward from the "
                                 f"same buffers (mean {um}, var {uv})")
                if nbt is not None:
                    checks.eq(int(nbt), int(onbt), f"{tag} step {step} {name}: num_batches_tracked")
            for name, seen in inputs.take().items():
                module, x64 = seen[0]
                n, mean, var = reference(module, x64)
                got = ans["layers"].get(name, {})
                checks.eq(got.get("count"), n, f"{tag} step {step} {name}: count")
                checks.close(got.get("mean", torch.empty(0)), mean, f"{tag} step {step} {name}: mean")
                checks.close(got.get("var", torch.empty(0)), var, f"{tag} step {step} {name}: var")
    print(f"     {tag}: worst per-step distance mean {worst['mean']} ulp, var {worst['var']} ulp; "
          f"{bitwise}/{total} layer-steps bit for bit")
    for name, (rm, rv, nbt) in buffers(model).items():
        trm, trv, tnbt = buffers(twin)[name]
        checks.close(rm, trm, f"{tag} {name}: after {K} chained steps running_mean ~ twin",
                     rtol=1e-6, atol=1e-7)
        checks.close(rv, trv, f"{tag} {name}: after {K} chained steps running_var ~ twin",
                     rtol=1e-6, atol=1e-7)
    served = c.stats(run)["layers"]
    for name, m in bn_layers(model):
        if m.running_mean is None:
            checks.check(name in served, f"{tag} {name}: served (a layer without running buffers)")
            continue
        got = served.get(name, {})
        checks.close(got.get("running_mean", []), m.running_mean, f"{tag} {name}: EMA mean = model",
                     rtol=1e-5, atol=1e-6)
        checks.close(got.get("running_var", []), m.running_var, f"{tag} {name}: EMA var = model",
                     rtol=1e-5, atol=1e-6)
        if not is_in(m):
            checks.eq(got.get("num_batches_tracked"), int(m.num_batches_tracked),
                      f"{tag} {name}: EMA num_batches_tracked = model")
    c.close()
    return run


def seeded(fn):
    def build():
        torch.manual_seed(5)
        return fn()
    return build


def body(checks):
    d = h.start_daemon()
    failed_forward(checks, d)
    sq = lambda *shape, **kw: (lambda g, s: torch.randn(*shape, generator=g) * (1 + 0.2 * s) + 0.5 * s)  # noqa: E731
    run_case(checks, d, "bn1d-NC", seeded(lambda: nn.BatchNorm1d(6)), sq(16, 6))
    run_case(checks, d, "bn1d-NCL", seeded(lambda: nn.Sequential(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6))),
             sq(8, 3, 9))
    run_case(checks, d, "cnn", seeded(lambda: h.make_model("cnn", seed=5)),
             lambda g, s: h.make_batch("cnn", 12, g, shift=0.2 * s)[0], backward_after_step=True)
    run_case(checks, d, "cnn-channels_last",
             seeded(lambda: h.make_model("cnn", seed=5).to(memory_format=torch.channels_last)),
             lambda g, s: h.make_batch("cnn", 12, g, shift=0.2 * s)[0].contiguous(
                 memory_format=torch.channels_last))
    run_case(checks, d, "bn3d-momentum-None",
             seeded(lambda: nn.Sequential(nn.Conv3d(2, 4, 2), nn.BatchNorm3d(4, momentum=None))),
             sq(3, 2, 4, 4, 4), momentum=None)
    run_case(checks, d, "cnn-bf16-autocast", seeded(lambda: h.make_model("cnn", seed=5)),
             lambda g, s: h.make_batch("cnn", 12, g, shift=0.2 * s)[0], autocast=torch.bfloat16)
    try:
        nn.BatchNorm2d(2)(torch.randn(2, 2, 2, 2).half())
        half_ok = True
    except RuntimeError as e:
        half_ok = False
        checks.check(True, f"fp16 on CPU skipped: this torch has no CPU half BatchNorm ({e})")
    if half_ok:
        run_case(checks, d, "cnn-fp16-autocast", seeded(lambda: h.make_model("cnn", seed=5)),
                 lambda g, s: h.make_batch("cnn", 12, g, shift=0.2 * s)[0], autocast=torch.float16)
    run_case(checks, d, "lazy-bn2d", seeded(lambda: nn.Sequential(nn.Conv2d(3, 5, 3), nn.LazyBatchNorm2d())),
             sq(6, 3, 6, 6))
    inrun = run_case(checks, d, "instancenorm-1d2d3d", seeded(INModel), sq(3, 4, 6), ulp_bound=None)
    c = d.client()
    fresh = INModel()
    res = load_stats(fresh, c, inrun)
    checks.eq((res.missing, res.extra), ([], []), "InstanceNorm: load_stats fills every layer")
    served = c.stats(inrun)["layers"]
    for name in ("in1", "in2", "in3"):
        m = getattr(fresh, name)
        checks.close(m.running_var, torch.tensor(served[name]["running_var"]),
                     f"InstanceNorm {name}: loaded running_var = served", rtol=0, atol=0)
    c.close()
    run_case(checks, d, "instancenorm-one-image",
             seeded(lambda: nn.InstanceNorm2d(4, track_running_stats=True, affine=True)),
             sq(1, 4, 5, 5), ulp_bound=None)
    bare = run_case(checks, d, "bare-bn2d", seeded(lambda: nn.BatchNorm2d(4)), sq(6, 4, 3, 3))
    c = d.client()
    checks.eq(sorted(c.get_run(bare)["status"]["layers"]), ["bn"], "bare module: layer name 'bn'")
    fresh = nn.BatchNorm2d(4)
    res = load_stats(fresh, c, bare)
    checks.eq((res.missing, res.extra), ([], []), "bare module: load_stats fills a fresh bare module")
    checks.close(fresh.running_mean, torch.tensor(c.stats(bare)["layers"]["bn"]["running_mean"]),
                 "bare module: loaded running_mean = served", rtol=0, atol=0)
    c.close()
    run_case(checks, d, "bn-without-running-stats",
             seeded(lambda: nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6, track_running_stats=False))),
             sq(10, 5))
    if torch.cuda.is_available():
        checks.check(True, "SyncBatchNorm: covered by the device run (CUDA)")
    else:
        try:
            nn.SyncBatchNorm(2)(torch.randn(3, 2, 2))
            checks.check(False, "SyncBatchNorm ran on CPU: extend this test")
        except ValueError as e:
            checks.check(True, f"SyncBatchNorm on CPU skipped: {e}")
        checks.eq([n for n, _ in bn_layers(nn.Sequential(nn.SyncBatchNorm(2)))], ["0"],
                  "SyncBatchNorm is a tracked layer")
    if not hasattr(torch, "compile"):
        checks.check(True, f"torch.compile skipped: torch {torch.__version__} has none (needs torch>=2)")
    else:
        run_case(checks, d, "compiled-cnn", seeded(lambda: torch.compile(h.make_model("cnn", seed=5))),
                 lambda g, s: h.make_batch("cnn", 12, g, shift=0.2 * s)[0])
    unused_layer(checks, d)
    h.stop_daemon(checks, d)


class INModel(nn.Module):
    """InstanceNorm1d, 2d and 3d with running statistics on views of one input."""

    def __init__(self):
        super().__init__()
        self.in1 = nn.InstanceNorm1d(4, track_running_stats=True, affine=True)
        self.in2 = nn.InstanceNorm2d(4, track_running_stats=True)
        self.in3 = nn.InstanceNorm3d(4, track_running_stats=True, affine=True)

    def forward(self, x):
        n, c, l = x.shape
        return (self.in1(x).sum() + self.in2(x.reshape(n, c, 2, l // 2) * 2).sum()
                + self.in3(x.reshape(n, c, 1, 2, l // 2) - 1).sum()).reshape(1)


class Branchy(nn.Module):
    """A trunk BN and a branch BN that runs only when asked."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
        self.branch = nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3))

    def forward(self, x, use_branch):
        y = self.trunk(x)
        return self.branch(y).sum() if use_branch else y.sum()


def unused_layer(checks, d):
    run = h.run_name("cap-unused")
    d.client().put_run(run, world_size=2, momentum=0.1)
    inputs = {0: [], 1: []}
    errors = []
    barrier = threading.Barrier(2)

    def work(rank):
        try:
            c = d.client()
            torch.manual_seed(3)
            model = Branchy()
            cap = Inputs(model)
            gen = torch.Generator().manual_seed(40 + rank)
            with StatsReporter(model, c, run, rank, 2, strict=True) as rep:
                for step in range(K):
                    model(torch.randn(7 + rank, 4, generator=gen) + step, use_branch=(rank == 0))
                    rep.step(step)
                    inputs[rank].append(cap.take())
                rep.flush()
            barrier.wait(timeout=30)
            c.close()
        except Exception as e:
            errors.append(f"worker {rank}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    checks.eq(errors, [], "unused layer: both workers finished")
    ref = h.EmaRef(3, 0.1)
    for step in range(K):
        module, x = inputs[0][step]["branch.1"][0]
        n, mean, var = reference(module, x)
        ref.update(n, mean, var)
    got = d.client().stats(run)["layers"].get("branch.1", {})
    checks.eq(got.get("num_batches_tracked"), K, "unused layer: every step applied (no barrier waits)")
    checks.close(got.get("running_mean", []), ref.mean, "unused layer: EMA mean = worker 0's batches alone")
    checks.close(got.get("running_var", []), ref.var, "unused layer: EMA var = worker 0's batches alone")


def failed_forward(checks, d):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    twin = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(8)
    good, bad, probe = (torch.randn(8, 3, generator=gen) + 2, torch.randn(8, 4, generator=gen),
                        torch.randn(5, 3, generator=gen))
    c = d.client()
    with StatsReporter(model, c, h.run_name("cap-raise"), 0, 1, strict=True) as rep:
        saved = []
        for m in (model, twin):
            m(good)
            try:
                m[1](bad)  # the layer itself raises: 4 channels, not 3
                checks.check(False, "a forward with the wrong channel count raises")
            except RuntimeError:
                pass
            saved.append(m.state_dict())
        checks.check(all(torch.equal(saved[0][k], saved[1][k]) for k in saved[1]),
                     "after a forward that raised: state_dict bit for bit the twin's")
        outs = []
        for m in (model, twin):
            m.eval()
            outs.append(m(probe))
        checks.check(torch.equal(outs[0], outs[1]),
                     "after a forward that raised: an eval forward bit for bit the twin's",
                     f"max diff {(outs[0] - outs[1]).abs().max().item()}")
        checks.check(torch.equal(model[1].running_mean, twin[1].running_mean)
                     and torch.equal(model[1].running_var, twin[1].running_var)
                     and model[1].momentum == twin[1].momentum,
                     "after a forward that raised and an eval forward: buffers and momentum "
                     "the twin's")
        rep.step(0)
    c.close()


if __name__ == "__main__":
    h.main(body)
