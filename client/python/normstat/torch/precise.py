"""precise_bn: the PreciseBN pass of "Rethinking Batch in BatchNorm", across
every worker of a run."""

import collections

import torch

from ..errors import NotFound
from .layers import bn_layers
from .loading import load_stats
from .reporter import REPORTERS, StatsReporter

__all__ = ["precise_bn", "next_free_step", "PreciseResult"]


PreciseResult = collections.namedtuple(
    "PreciseResult", ["generation", "first_step", "last_step", "next_step", "batches",
                      "missing", "extra"])


def _default_forward(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    try:
        dev = next(model.parameters()).device
        batch = batch.to(dev)
    except (StopIteration, AttributeError):
        pass
    return model(batch)


def next_free_step(client, run):
    """1 + the highest step finalized in any layer of 'run' (0 for a run
    that does not exist or has no step yet)."""
    try:
        info = client.get_run(run)
    except NotFound:
        return 0
    best = -1
    for layer in ((info or {}).get("status") or {}).get("layers", {}).values():
        for key in ("finalized_step", "step"):
            v = layer.get(key)
            if isinstance(v, int) and v > best:
                best = v
    return best + 1


def precise_bn(model, loader, client, run, rank, world_size, num_batches=200, domain="default",
               step=None, forward=None, reset=True, load=True, fmt=None):
    """PreciseBN across all workers of 'run': the exact population mean and
    unbiased variance of every BN layer's input over num_batches batches of
    every worker, loaded into the model's running buffers.

    Every rank calls it with the same run, num_batches, domain and step.
    How the ranks agree, without any other channel:
      1. rank 0 starts a new PreciseBN generation (POST precise/reset: of
         every domain when reset is True, of one domain when reset is its
         name; the run is created with world_size if missing) before it
         reports anything;
      2. every rank forwards num_batches batches of its 'loader' (model in
         training mode, BN momentum 0, no grad) and reports each as steps
         step, step+1, ..., step+num_batches-1 with update=["precise"]; a
         rank whose loader runs out reports empty batches (count 0). No step
         can finalize before rank 0 has reported it, so none lands in the old
         generation;
      3. the last step is sent with /sync: when it returns, every rank has
         reported every step, so all are applied; each rank then fetches the
         precise statistics of 'domain' and loads them (if load).
    step: the first step number to use (the steps are consumed: later
    reports of the run must use higher steps; the result's next_step says
    which). Default: one above the highest step finalized in the run, read
    by each rank - pass it explicitly unless every rank's training reports
    are finalized before any rank gets here (flush() every StatsReporter and
    pass a barrier of your own).
    domain: the domain this rank's batches belong to (ranks may differ:
    each loads its own domain's values).
    forward(model, batch): how to run a batch (default: model(batch),
    model(batch[0]) for tuples/lists, model(**batch) for dicts, moved to the
    model's device). BN momentum, training flags, running buffers and
    num_batches_tracked are restored afterwards (then running_mean/var
    replaced by the precise values when load is True). Open StatsReporters
    on the model (the training loop's) are paused during the pass, so its
    batches never reach their next step.
    Returns PreciseResult(generation (rank 0, else None), first_step,
    last_step, next_step, batches (this rank's non-empty batches), missing,
    extra)."""
    if num_batches < 1:
        raise ValueError("num_batches must be >= 1")
    forward = forward or _default_forward
    if step is None:
        step = next_free_step(client, run)
    first, last = int(step), int(step) + int(num_batches) - 1
    bns = bn_layers(model)
    # other reporters on this model (the training loop's) must not see these
    # forwards; their pending running-buffer updates land before the save below
    ids = {id(m) for _, m in bns}
    paused = [r for r in list(REPORTERS)
              if r.enabled and any(id(m) in ids for _, m in r.layers)]
    for r in paused:
        r._capture.apply_pending()
    saved_training = [(m, m.training) for m in model.modules()]
    saved_bn = []
    for _, m in bns:
        saved_bn.append((m, m.momentum,
                         None if m.running_mean is None else m.running_mean.clone(),
                         None if m.running_var is None else m.running_var.clone(),
                         None if getattr(m, "num_batches_tracked", None) is None
                         else m.num_batches_tracked.clone()))
    generation = None
    if rank == 0 and reset:
        which = None if reset is True else reset
        try:
            generation = client.precise_reset(run, domain=which)
        except NotFound:
            client.put_run(run, world_size=world_size)
            try:
                generation = client.precise_reset(run, domain=which)
            except NotFound:
                if which is None:
                    raise
                # a domain the run has not seen yet (the daemon refuses its
                # reset) starts empty in the run's latest generation
                generation = client.get_run(run)["status"]["precise_generation"]
    batches = 0
    for r in paused:
        r.enabled = False
    # strict: a PreciseBN pass with a lost batch would be wrong, so it fails
    reporter = StatsReporter(model, client, run, rank, world_size, domain=domain, sync=False,
                             update=("precise",), fmt=fmt, strict=True)
    try:
        for m, *_ in saved_bn:
            m.momentum = 0.0
        model.train()
        it = iter(loader)
        with torch.no_grad():
            for s in range(first, last + 1):
                batch = next(it, None) if it is not None else None
                if batch is None:
                    it = None
                else:
                    forward(model, batch)
                    batches += 1
                reporter.step(s, sync=(s == last))
        reporter.close()
    finally:
        reporter.close(raise_errors=False)
        with torch.no_grad():
            for m, momentum, rm, rv, nbt in saved_bn:
                m.momentum = momentum
                if rm is not None:
                    m.running_mean.copy_(rm)
                if rv is not None:
                    m.running_var.copy_(rv)
                if nbt is not None:
                    m.num_batches_tracked.copy_(nbt)
        for m, training in saved_training:
            m.training = training
        for r in paused:
            r.enabled = True
    missing, extra = [], []
    if load:
        missing, extra = load_stats(model, client, run, source="precise", domain=domain)
        with torch.no_grad():
            for m, _momentum, _rm, _rv, nbt in saved_bn:
                if nbt is not None:
                    m.num_batches_tracked.copy_(nbt)
    return PreciseResult(generation, first, last, last + 1, batches, missing, extra)
