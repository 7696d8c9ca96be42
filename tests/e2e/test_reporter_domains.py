"""test_reporter_domains.py - the domain of a step is the one given when the
step is taken, not when the background thread sends it.

One trainer, 20 steps, two domains in an irregular pattern: steps 0-9 pass
step(s, domain=d); steps 10-19 set reporter.domain = d before step(s). The
Client's connection lock is held by this thread while the steps are taken,
so the background sender cannot send any of them before the last domain
change (a sender that read .domain at send time would file them all under
the last domain). Afterwards, per domain: num_batches_tracked equals the
number of steps taken in it and the EMA equals a float64 EMA of its own
batches; the pooled "*" EMA counts all 20. A bad domain name is refused by
step() with ValueError naming it.
"""

import harness as h
from normstat.torch import StatsReporter

import torch

STEPS = 20
DOMAINS = ["photo", "sketch", "sketch", "photo", "photo", "photo", "sketch", "photo", "sketch",
           "sketch", "photo", "sketch", "photo", "photo", "sketch", "sketch", "sketch", "photo",
           "photo", "sketch"]


def body(checks):
    d = h.start_daemon()
    run = h.run_name("rep-domains")
    c = d.client()
    c.put_run(run, world_size=1, momentum=0.1)
    model = h.make_model("mlp", seed=4)
    cap = h.Capture(model)
    gen = torch.Generator().manual_seed(21)
    refs = {}
    with StatsReporter(model, c, run, 0, 1, strict=True, max_buffered=STEPS + 1) as rep:
        with c._lock:  # the sender waits for this lock: nothing is sent during the loop
            for step in range(STEPS):
                dom = DOMAINS[step]
                x, _ = h.make_batch("mlp", 8, gen, shift=1.0 if dom == "photo" else -1.0)
                with torch.no_grad():
                    model(x)
                if step < 10:
                    rep.step(step, domain=dom)
                else:
                    rep.domain = dom
                    rep.step(step)
                for layer, mat in cap.take().items():
                    refs.setdefault(dom, {}).setdefault(layer, h.EmaRef(mat.shape[0], 0.1)).update(
                        *h.global_stats([mat]))
            checks.eq(rep.steps_sent, 0, "no report was sent while the steps were taken")
        rep.flush()
        try:
            rep.step(STEPS, domain="no spaces")
            checks.check(False, "a bad domain name is refused", "no exception")
        except ValueError as e:
            checks.check("domain" in str(e) and "no spaces" in str(e), "a bad domain name is refused",
                         str(e))
    for dom in ("photo", "sketch"):
        n = DOMAINS.count(dom)
        served = c.stats(run, domain=dom)["layers"]
        for layer, ref in refs[dom].items():
            got = served.get(layer, {})
            checks.eq(got.get("num_batches_tracked"), n, f"{dom} {layer}: {n} steps filed in the domain")
            checks.close(got.get("running_mean", []), ref.mean, f"{dom} {layer}: EMA mean = its batches")
            checks.close(got.get("running_var", []), ref.var, f"{dom} {layer}: EMA var = its batches")
    pooled = c.stats(run, domain="*")["layers"]
    for layer in refs["photo"]:
        checks.eq(pooled[layer]["num_batches_tracked"], STEPS, f"*: {layer} counts every step")
    c.close()
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(body)
