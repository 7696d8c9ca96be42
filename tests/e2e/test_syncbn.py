"""test_syncbn.py - normstat SyncBatchNorm trains like one process over the whole batch.

2 and then 4 worker processes on CPU (forked, one torch thread each, gloo
DistributedDataParallel for the parameter gradients, no process group for
BN) train a float64 copy of the harness CNN (3 BN layers: two BatchNorm2d,
one BatchNorm1d) converted with convert_sync_batchnorm, for K SGD steps
with uneven batch sizes; one rank has an empty batch at one step. The
reference is one process running the same model with plain
torch.nn.BatchNorm over the concatenated batch (float64). Each rank's loss
is its share of the reference loss (sum over its samples / global batch),
so the input gradients are the reference's; DDP averages the parameter
gradients over the ranks, so the workers' learning rate is W times the
reference's.

Checked against the reference, for every step, layer and rank: the BN
outputs, the input gradients; at the end: every parameter and the running
statistics of every rank; the run's EMA on the daemon against the layers'
running statistics, and its PreciseBN against the population mean and
unbiased variance of every BN input of every step (captured in the
reference).

Tolerance: rtol 5e-6, atol 5e-7 x the tensor's largest value (measured:
within 7e-7 relative). The statistics travel as float32 (the daemon's wire
format) and bound the agreement; the gradient sums travel as float64 with 2
workers (the default for a float64 model) and as float32 with 4, which
changes the parameter errors by less than 2x.
"""

import multiprocessing
import os
import tempfile
import traceback

import harness as h

import torch
import torch.distributed as dist
import torch.nn.functional as F

from normstat.torch import SyncBatchNorm, convert_sync_batchnorm

K = 4
LR = 0.05
RTOL = 5e-6
# near-zero elements: absolute slack of 5e-7 of the tensor's largest value
# (the float32 global mean shifts every output by up to ~1e-7 of its scale)
ATOL_OF_MAX = 5e-7
# batch sizes per rank at each step, and the (rank, step) with an empty batch
BATCH = {2: [5, 3], 4: [5, 3, 6, 2]}
EMPTY = {2: (1, 2), 4: (3, 1)}
JOIN_LIMIT_S = 30
# how the gradient sums travel: the layer's default (float64 for this float64
# model) with 2 workers, float32 with 4
GRAD_DTYPE = {2: None, 4: torch.float32}


def close(checks, got, ref, desc):
    ref = torch.as_tensor(ref, dtype=torch.float64)
    scale = ref.abs().max().item() if ref.numel() else 0.0
    return checks.close(got, ref, desc, RTOL, ATOL_OF_MAX * scale)


def batch_of(world, rank, step):
    """The batch of 'rank' at 'step' (deterministic, so the reference can
    rebuild the concatenation)."""
    n = 0 if EMPTY[world] == (rank, step) else BATCH[world][rank] + step % 2
    gen = torch.Generator().manual_seed(1000 * world + 10 * step + rank)
    x, y = h.make_batch("cnn", n, gen, shift=0.2 * rank, scale=1.0 + 0.1 * rank)
    return x.double(), y


def make_model():
    return h.make_model("cnn", seed=7).double()


def global_count(world, step):
    return sum(batch_of(world, r, step)[0].shape[0] for r in range(world))


class Outputs:
    """Forward hooks recording each BN layer's output (float64 copies)."""

    def __init__(self, model, kinds):
        self.cur = {}
        for name, m in model.named_modules():
            if isinstance(m, kinds):
                m.register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(_m, _inp, out):
            self.cur[name] = out.detach().clone()
        return hook

    def take(self):
        out, self.cur = self.cur, {}
        return out


def worker(world, rank, url, run, pgfile, outdir):
    status = 1
    try:
        torch.set_num_threads(1)
        import normstat
        dist.init_process_group("gloo", init_method=f"file://{pgfile}", rank=rank,
                                 world_size=world)
        client = normstat.Client(url, timeout=20)
        model = convert_sync_batchnorm(make_model(), client, run, rank, world,
                                       grad_dtype=GRAD_DTYPE[world])
        outs = Outputs(model, SyncBatchNorm)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=LR * world, momentum=0.9)
        steps = []
        for step in range(K):
            x, y = batch_of(world, rank, step)
            x.requires_grad_(True)
            loss = F.cross_entropy(ddp(x), y, reduction="sum") / global_count(world, step)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps.append({"outputs": outs.take(), "grad": x.grad.detach().clone()})
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save({"steps": steps, "state": state}, os.path.join(outdir, f"rank{rank}.pt"))
        dist.barrier()
        client.close()
        status = 0
    except Exception:
        traceback.print_exc()
    finally:
        os._exit(status)


def reference(world):
    """Per step: BN outputs and input gradient of the concatenated batch;
    and the final state, of plain BatchNorm in one process."""
    model = make_model()
    outs = Outputs(model, torch.nn.modules.batchnorm._BatchNorm)
    cap = h.Capture(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    steps = []
    for step in range(K):
        parts = [batch_of(world, r, step) for r in range(world)]
        x = torch.cat([p[0] for p in parts]).requires_grad_(True)
        y = torch.cat([p[1] for p in parts])
        loss = F.cross_entropy(model(x), y, reduction="sum") / x.shape[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sizes = [p[0].shape[0] for p in parts]
        steps.append({"outputs": outs.take(), "grad": x.grad.detach().clone(), "sizes": sizes})
    # every BN input of every step, [C, n] per layer: the PreciseBN population
    population = cap.take()
    return steps, {k: v.detach().clone() for k, v in model.state_dict().items()}, population


def train(checks, d, world):
    run = h.run_name(f"syncbn{world}")
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="ns-syncbn-") as tmp:
        procs = [ctx.Process(target=worker, args=(world, r, d.url, run, os.path.join(tmp, "pg"),
                                                  tmp)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(JOIN_LIMIT_S)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        codes = [p.exitcode for p in procs]
        checks.eq(codes, [0] * world, f"W={world}: every worker exits 0")
        if codes != [0] * world:
            print(d.tail())
            return
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
    ref_steps, ref_state, population = reference(world)
    empty_rank, empty_step = EMPTY[world]
    checks.eq(ref_steps[empty_step]["sizes"][empty_rank], 0,
              f"W={world}: rank {empty_rank} has an empty batch at step {empty_step}")
    checks.check(len(set(ref_steps[0]["sizes"])) > 1, f"W={world}: batch sizes differ "
                                                      f"({ref_steps[0]['sizes']})")
    for step in range(K):
        ref = ref_steps[step]
        offs = [0]
        for n in ref["sizes"]:
            offs.append(offs[-1] + n)
        for r in range(world):
            got = results[r]["steps"][step]
            lo, hi = offs[r], offs[r + 1]
            for layer, out in sorted(ref["outputs"].items()):
                close(checks, got["outputs"].get(layer), out[lo:hi],
                      f"W={world} step {step} rank {r} {layer}: BN output")
            close(checks, got["grad"], ref["grad"][lo:hi],
                  f"W={world} step {step} rank {r}: input gradient")
    for r in range(world):
        state = results[r]["state"]
        for key, ref in ref_state.items():
            if key.endswith("num_batches_tracked"):
                checks.eq(int(state[key]), int(ref), f"W={world} rank {r} {key}")
            else:
                close(checks, state[key], ref, f"W={world} rank {r} {key} after {K} steps")
    # the run's EMA took the same global statistics (in double on the daemon)
    ema = d.client().stats(run, source="ema")["layers"]
    for layer in ("features.1", "features.4", "head.1"):
        e = ema.get(layer, {})
        for buf in ("running_mean", "running_var"):
            close(checks, e.get(buf, []), results[0]["state"][f"{layer}.{buf}"],
                  f"W={world} daemon EMA {layer}.{buf} = SyncBatchNorm's")
        checks.eq(e.get("num_batches_tracked"), K, f"W={world} daemon EMA {layer} "
                                                   "num_batches_tracked")
    # and its PreciseBN: the population of every BN input of every step
    precise = d.client().stats(run, source="precise")["layers"]
    for layer, mat in sorted(population.items()):
        p = precise.get(layer, {})
        var, mean = torch.var_mean(mat, dim=1, unbiased=True)
        close(checks, p.get("running_mean", []), mean,
              f"W={world} daemon PreciseBN {layer}.running_mean = the inputs' population mean")
        close(checks, p.get("running_var", []), var,
              f"W={world} daemon PreciseBN {layer}.running_var = their unbiased variance")


def body(checks):
    torch.set_num_threads(1)
    d = h.start_daemon()
    for world in (2, 4):
        train(checks, d, world)
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(body)
