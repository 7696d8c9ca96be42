"""test_reporter_resume.py - a job resumed from its checkpoint continues the
run's statistics from the same point.

Job A trains a CNN 10 steps (data of step s from a generator seeded with
s), saving at step 5 a checkpoint of the model, the optimizer and
reporter.state_dict() (which holds the run's daemon checkpoint). Then:
  * without load_state_dict, a job restarted from that checkpoint gets its
    step 6 refused (409 stale_step: the run is at step 9): the step is
    listed as lost, training goes on;
  * job B loads the checkpoint, reporter.load_state_dict() restores the run
    to step 5, and B trains steps 6-9 again: the served EMA equals job A's
    final EMA bit for bit (same reports, same order), a float64 EMA of the
    10 steps' inputs, and B's own running buffers; num_batches_tracked 10;
  * a step below the resumed one raises ValueError; a state saved with
    another forwards_per_step is refused;
  * re-running a finished job: delete_run, then the same steps are taken
    again without a loss.
"""

import copy
import warnings

import harness as h
from normstat.torch import StatsReporter

import torch

K = 10
SAVE_AT = 5


def batch(step):
    return h.make_batch("cnn", 8, torch.Generator().manual_seed(100 + step), shift=0.1 * step)


def train(model, opt, rep, steps, cap=None, refs=None, on_step=None):
    for step in steps:
        x, y = batch(step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rep.step(step)
        if cap is not None:
            for layer, mat in cap.take().items():
                refs.setdefault(layer, h.EmaRef(mat.shape[0], 0.1)).update(*h.global_stats([mat]))
        if on_step is not None:
            on_step(step)


def body(checks):
    d = h.start_daemon()
    c = d.client()
    run = h.run_name("resume")
    c.put_run(run, world_size=1, momentum=0.1)

    # job A, uninterrupted, with a checkpoint at step 5
    model = h.make_model("cnn", seed=7)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cap, refs, saved = h.Capture(model), {}, {}

    def save(step):
        if step == SAVE_AT:
            saved.update(model=copy.deepcopy(model.state_dict()), opt=copy.deepcopy(opt.state_dict()),
                         reporter=rep.state_dict())

    with StatsReporter(model, c, run, 0, 1, strict=True) as rep:
        train(model, opt, rep, range(K), cap, refs, save)
    checks.check(saved.get("reporter", {}).get("run_checkpoint") is not None,
                 "state_dict() on rank 0 holds the run's checkpoint")
    checks.eq(saved["reporter"]["next_step"], SAVE_AT + 1, "state_dict(): next_step")
    final_a = c.stats(run, format="safetensors")
    json_a = c.stats(run)["layers"]

    def restored():
        m = h.make_model("cnn", seed=99)
        m.load_state_dict(saved["model"])
        o = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        o.load_state_dict(saved["opt"])
        return m, o

    # restarted without the reporter state: stale, listed as lost, training goes on
    m0, o0 = restored()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with StatsReporter(m0, c, run, 0, 1) as rep0:
            train(m0, o0, rep0, [SAVE_AT + 1])
            rep0.flush(timeout=30)
    checks.eq(rep0.lost_steps, [SAVE_AT + 1], "without load_state_dict: step 6 is stale, listed as lost")
    checks.check(c.stats(run, format="safetensors") == final_a, "a stale report changed nothing")

    # job B: resumed from the step-5 checkpoint
    mb, ob = restored()
    with StatsReporter(mb, c, run, 0, 1, strict=True) as rep:
        rep.load_state_dict(saved["reporter"])
        try:
            rep.step(SAVE_AT)
            checks.check(False, "a step below the resumed one raises ValueError", "no exception")
        except ValueError:
            checks.check(True, "a step below the resumed one raises ValueError")
        train(mb, ob, rep, range(SAVE_AT + 1, K))
    checks.check(c.stats(run, format="safetensors") == final_a,
                 "resumed: the served EMA (safetensors) equals the uninterrupted job's bit for bit")
    served = c.stats(run)["layers"]
    for name, m in mb.named_modules():
        if not isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            continue
        got = served.get(name, {})
        checks.eq(got.get("num_batches_tracked"), K, f"resumed {name}: num_batches_tracked")
        checks.eq(got.get("running_mean"), json_a[name]["running_mean"], f"resumed {name}: EMA mean = job A's")
        checks.close(got.get("running_mean", []), refs[name].mean, f"resumed {name}: EMA mean = float64 reference")
        checks.close(got.get("running_var", []), refs[name].var, f"resumed {name}: EMA var = float64 reference")
        checks.close(got.get("running_mean", []), m.running_mean, f"resumed {name}: EMA mean = model",
                     rtol=1e-5, atol=1e-6)
        checks.close(got.get("running_var", []), m.running_var, f"resumed {name}: EMA var = model",
                     rtol=1e-5, atol=1e-6)
        ma = dict(model.named_modules())[name]
        checks.check(torch.equal(m.running_mean, ma.running_mean) and torch.equal(m.running_var, ma.running_var),
                     f"resumed {name}: the model's buffers equal job A's bit for bit")

    with StatsReporter(h.make_model("cnn"), c, run, 0, 1, forwards_per_step=2) as rep:
        try:
            rep.load_state_dict(saved["reporter"])
            checks.check(False, "a state with another forwards_per_step is refused", "no exception")
        except ValueError:
            checks.check(True, "a state with another forwards_per_step is refused")

    # re-running a finished job: a fresh start of the same run
    c.delete_run(run)
    m2 = h.make_model("cnn", seed=7)
    with StatsReporter(m2, c, run, 0, 1, strict=True) as rep:
        train(m2, torch.optim.SGD(m2.parameters(), lr=0.05, momentum=0.9), rep, range(K))
    checks.eq(rep.lost_steps, [], "re-run after delete_run: nothing lost")
    checks.check(c.stats(run, format="safetensors") == final_a, "re-run after delete_run: the same EMA")
    c.close()
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(body)
