"""test_syncbn_layer.py - one normstat SyncBatchNorm layer against torch.nn.BatchNorm.

* forward and backward, world_size 1, float64: output, input gradient,
  weight and bias gradients and running statistics equal those of the
  matching torch.nn.BatchNorm{1,2,3}d under autograd, for (N, C), (N, C, L),
  channels_last (N, C, H, W) and (N, C, D, H, W) inputs, affine=False,
  momentum=None and track_running_stats=False; a float32 layer, and bf16
  and fp16 inputs, against a float64 reference; the torch.var_mean path
  taken where torch.batch_norm_update_stats is missing;
* eval mode uses the running statistics and needs no server (the link
  points at a port where nothing listens), a training forward there raises
  ConnectionFailed;
* a worker that never arrives (world_size 2, sync_timeout_ms 300): the
  forward of the other raises SyncBatchNormTimeout naming the layer and
  worker 1 (also on a run with on_timeout "drop", answered 504); a worker
  that does its forward but not its backward: the other's backward raises
  it, phase "backward" - all within a bounded wait;
* two forwards before one backward (two views), two workers: outputs and
  gradients as torch's, the gradient steps increasing;
* step numbering: the run's steps of a layer are 0..K-1 after K forwards;
  a model resumed from that state_dict continues at K, a fresh model with
  step_base="next" continues above the run's last step, so does a model
  that loads an older state_dict, step_base=100 starts at 100;
* close() closes every socket the layers opened (the forward's connection
  and the one that settles step_base "next");
* bad arguments raise ValueError naming them; a global count of 1 raises
  ValueError like torch; an empty batch on every worker gives an empty
  output and leaves the running statistics.

Tolerance: rtol 5e-6, atol 5e-7 x the tensor's largest value (the global
statistics travel as float32; the gradient sums of a float64 layer as F64).
"""

import copy
import threading
import time

import harness as h

import torch

import normstat
from normstat.torch import SyncBatchNorm, SyncBatchNormTimeout, convert_sync_batchnorm
from normstat.torch.syncbn import Link

RTOL = 5e-6
ATOL_OF_MAX = 5e-7
WAIT_LIMIT_S = 20  # only matters when something hangs


def close(checks, got, ref, desc, rtol=RTOL, atol_of_max=ATOL_OF_MAX):
    ref = torch.as_tensor(ref, dtype=torch.float64)
    scale = ref.abs().max().item() if ref.numel() else 0.0
    return checks.close(got, ref, desc, rtol, atol_of_max * scale)


CASES = [
    # (description, BN class, input shape, kwargs, channels_last)
    ("BatchNorm1d (N, C)", torch.nn.BatchNorm1d, (9, 6), {}, False),
    ("BatchNorm1d (N, C, L)", torch.nn.BatchNorm1d, (4, 5, 7), {}, False),
    ("BatchNorm2d channels_last", torch.nn.BatchNorm2d, (3, 6, 5, 4), {}, True),
    ("BatchNorm3d", torch.nn.BatchNorm3d, (2, 3, 3, 4, 2), {}, False),
    ("BatchNorm2d affine=False", torch.nn.BatchNorm2d, (3, 4, 5, 5), {"affine": False}, False),
    ("BatchNorm2d momentum=None", torch.nn.BatchNorm2d, (5, 4, 3, 3), {"momentum": None}, False),
    ("BatchNorm1d track_running_stats=False", torch.nn.BatchNorm1d, (6, 5, 3),
     {"track_running_stats": False}, False),
]


def against_torch(checks, d):
    client = d.client()
    for desc, cls, shape, kw, cl in CASES:
        run = h.run_name("layer")
        torch.manual_seed(11)
        ref = cls(shape[1], **kw).double()
        if ref.affine:
            with torch.no_grad():
                ref.weight.uniform_(0.5, 1.5)
                ref.bias.uniform_(-0.5, 0.5)
        bn = convert_sync_batchnorm(copy.deepcopy(ref), client, run, 0, 1)
        checks.check(isinstance(bn, SyncBatchNorm) and bn.layer == "bn",
                     f"{desc}: a bare BatchNorm converts to a SyncBatchNorm named 'bn'")
        for it in range(3):
            x = (torch.randn(*shape, dtype=torch.float64) * (1 + it) + 0.5 * it)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            gy = torch.randn(*shape, dtype=torch.float64)
            xr, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            yr, ys = ref(xr), bn(xs)
            yr.backward(gy)
            ys.backward(gy)
            tag = f"{desc} forward {it}"
            close(checks, ys, yr, f"{tag}: output")
            close(checks, xs.grad, xr.grad, f"{tag}: input gradient")
            if ref.affine:
                close(checks, bn.weight.grad, ref.weight.grad, f"{tag}: weight gradient")
                close(checks, bn.bias.grad, ref.bias.grad, f"{tag}: bias gradient")
                bn.weight.grad = ref.weight.grad = bn.bias.grad = ref.bias.grad = None
        if ref.track_running_stats:
            close(checks, bn.running_mean, ref.running_mean, f"{desc}: running_mean")
            close(checks, bn.running_var, ref.running_var, f"{desc}: running_var")
            checks.eq(int(bn.num_batches_tracked), int(ref.num_batches_tracked),
                      f"{desc}: num_batches_tracked")
        bn.eval()
        ref.eval()
        x = torch.randn(*shape, dtype=torch.float64)
        close(checks, bn(x), ref(x), f"{desc}: eval output")

    # float32 layer (F32 gradient sums) against a float64 reference
    run = h.run_name("layer32")
    torch.manual_seed(5)
    ref = torch.nn.BatchNorm2d(8).double()
    bn = convert_sync_batchnorm(torch.nn.BatchNorm2d(8), client, run, 0, 1)
    x = torch.randn(4, 8, 6, 6, dtype=torch.float64) * 3 + 1
    gy = torch.randn_like(x)
    xr, xs = x.clone().requires_grad_(True), x.float().requires_grad_(True)
    yr = ref(xr)
    yr.backward(gy)
    ys = bn(xs)
    ys.backward(gy.float())
    checks.eq((ys.dtype, xs.grad.dtype), (torch.float32, torch.float32),
              "float32 layer: float32 output and input gradient")
    close(checks, ys, yr, "float32 layer: output", 1e-4, 1e-5)
    close(checks, xs.grad, xr.grad, "float32 layer: input gradient", 1e-4, 1e-5)
    close(checks, bn.weight.grad, ref.weight.grad, "float32 layer: weight gradient", 1e-4, 1e-5)
    close(checks, bn.bias.grad, ref.bias.grad, "float32 layer: bias gradient", 1e-4, 1e-5)
    close(checks, bn.running_var, ref.running_var, "float32 layer: running_var", 1e-4, 1e-5)

    # a build without batch_norm_update_stats on the input's device: torch.var_mean
    real = torch.batch_norm_update_stats

    def missing(*_a, **_k):
        raise NotImplementedError("batch_norm_update_stats is not here")

    torch.batch_norm_update_stats = missing
    try:
        torch.manual_seed(3)
        ref = torch.nn.BatchNorm2d(5).double()
        bn = convert_sync_batchnorm(copy.deepcopy(ref), client, h.run_name("fallback"), 0, 1)
        x = torch.randn(3, 5, 4, 4, dtype=torch.float64) * 2 - 1
        close(checks, bn(x), ref(x), "without batch_norm_update_stats: output as torch's")
        close(checks, bn.running_var, ref.running_var, "without batch_norm_update_stats: running_var")
    finally:
        torch.batch_norm_update_stats = real

    # bf16 and fp16 inputs (computed in float32, returned in the input's dtype)
    for half in (torch.bfloat16, torch.float16):
        run = h.run_name("layerhalf")
        torch.manual_seed(6)
        ref = torch.nn.BatchNorm2d(8).double()
        bn = convert_sync_batchnorm(torch.nn.BatchNorm2d(8), client, run, 0, 1)
        xh = (torch.randn(4, 8, 6, 6) * 2 + 1).to(half)
        gy = torch.randn(4, 8, 6, 6).to(half)
        xr, xs = xh.double().requires_grad_(True), xh.clone().requires_grad_(True)
        yr = ref(xr)
        yr.backward(gy.double())
        ys = bn(xs)
        ys.backward(gy)
        name = str(half).replace("torch.", "")
        checks.eq((ys.dtype, xs.grad.dtype), (half, half), f"{name} input: {name} output and "
                                                           "input gradient")
        eps = 2 ** -7 if half == torch.bfloat16 else 2 ** -10  # one rounding of the result
        close(checks, ys, yr, f"{name} input: output", eps, eps)
        close(checks, xs.grad, xr.grad, f"{name} input: input gradient", eps, eps)
        close(checks, bn.weight.grad, ref.weight.grad, f"{name} input: weight gradient", 1e-4, 1e-5)
        close(checks, bn.running_var, ref.running_var, f"{name} input: running_var", 1e-4, 1e-5)
    client.close()


def no_server(checks):
    """Eval needs no daemon; training without one fails clearly."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    torch.manual_seed(2)
    ref = h.make_model("cnn", seed=4).double()
    with torch.no_grad():  # running statistics that are not the defaults
        ref.train()
        for _ in range(3):
            ref(torch.randn(6, 3, 8, 8, dtype=torch.float64) + 0.3)
    ref.eval()
    model = convert_sync_batchnorm(copy.deepcopy(ref), f"http://127.0.0.1:{port}", "nosrv", 0, 2,
                                   configure_run=False)
    model.eval()
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    close(checks, model(x), ref(x), "eval mode without a server: output as torch's eval BN")
    model.train()
    try:
        model(x)
        checks.check(False, "training without a server raises ConnectionFailed")
    except normstat.ConnectionFailed as e:
        checks.check(str(port) in str(e), "training without a server raises ConnectionFailed "
                                          "naming the address", str(e))


def in_thread(fn):
    """Run fn() in a thread; (finished, result or exception, seconds)."""
    out = {}

    def run():
        t0 = time.monotonic()
        try:
            out["value"] = fn()
        except Exception as e:  # returned to the caller
            out["value"] = e
        out["s"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT_LIMIT_S)
    return not t.is_alive(), out.get("value"), out.get("s")


def dead_worker(checks, d):
    client = d.client()
    # forward: worker 1 never comes
    run = h.run_name("dead-fwd")
    client.put_run(run, world_size=2, sync_timeout_ms=300)
    model = convert_sync_batchnorm(h.make_model("mlp", seed=1), client, run, 0, 2)
    x = torch.randn(6, 20)
    done, err, secs = in_thread(lambda: model(x))
    checks.check(done, f"forward with a dead worker returns within {WAIT_LIMIT_S} s")
    ok = isinstance(err, SyncBatchNormTimeout)
    checks.check(ok, "forward with a dead worker raises SyncBatchNormTimeout", repr(err))
    if ok:
        checks.eq((err.layer, err.step, err.missing, err.phase), ("net.1", 0, [1], "forward"),
                  "forward timeout: layer, step, missing workers, phase")
        checks.check("'net.1'" in str(err) and "worker 1" in str(err),
                     "forward timeout message names the layer and worker 1", str(err))
        checks.check(isinstance(err, normstat.SyncTimeout), "it is a normstat.SyncTimeout")
        print(f"note forward timeout after {secs:.2f} s: {err}")

    # forward on a run that drops incomplete steps: the daemon answers 504
    run = h.run_name("dead-drop")
    client.put_run(run, world_size=2, sync_timeout_ms=300, on_timeout="drop")
    model = convert_sync_batchnorm(h.make_model("mlp", seed=1), client, run, 0, 2)
    done, err, secs = in_thread(lambda: model(x))
    checks.check(done and isinstance(err, SyncBatchNormTimeout) and err.layer == "net.1"
                 and err.phase == "forward",
                 "on_timeout drop: the forward raises SyncBatchNormTimeout for net.1", repr(err))
    checks.eq(getattr(err, "missing", None), [1], "on_timeout drop: the error names worker 1")
    print(f"note forward timeout (drop) after {secs:.2f} s: {err}")

    # backward: both forward, worker 1 never sends its gradient sums
    run = h.run_name("dead-bwd")
    client.put_run(run, world_size=2, sync_timeout_ms=20000)  # the forwards may be slow
    models = [convert_sync_batchnorm(h.make_model("mlp", seed=1), d.client(), run, r, 2)
              for r in range(2)]
    xs = [torch.randn(4 + r, 20, requires_grad=True) for r in range(2)]
    outs = [None, None]

    def fwd(r):
        outs[r] = models[r](xs[r])

    threads = [threading.Thread(target=fwd, args=(r,), daemon=True) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_LIMIT_S)
    checks.check(all(o is not None for o in outs), "both workers' forwards completed")
    client.put_run(run, sync_timeout_ms=300)  # for the gradient step, created after this
    if all(o is not None for o in outs):
        done, err, secs = in_thread(lambda: outs[0].sum().backward())
        checks.check(done, f"backward with a dead worker returns within {WAIT_LIMIT_S} s")
        ok = isinstance(err, SyncBatchNormTimeout)
        checks.check(ok, "backward with a dead worker raises SyncBatchNormTimeout", repr(err))
        if ok:
            checks.eq((err.layer, err.step, err.missing, err.phase), ("net.4", 0, [1], "backward"),
                      "backward timeout: layer (the last BN, first in backward), step, "
                      "missing workers, phase")
            checks.check("'net.4'" in str(err) and "1" in str(err),
                         "backward timeout message names the layer and worker 1", str(err))
            print(f"note backward timeout after {secs:.2f} s: {err}")
    client.close()


def two_views(checks, d):
    """Two forwards of the model before one backward (two augmented views
    through one network, as contrastive training does), two workers
    (threads with their own model copy and connection): the backward runs
    the second forward first; gradients and outputs equal those of
    torch.nn.BatchNorm over each view's concatenated batch."""
    run = h.run_name("views")
    torch.manual_seed(8)
    ref = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.Tanh(),
                              torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4)).double()
    views = [[torch.randn(3 + r, 6, dtype=torch.float64) + r for r in range(2)] for _ in range(2)]
    results, errors = [None, None], []

    def work(r):
        try:
            m = convert_sync_batchnorm(copy.deepcopy(ref), d.client(), run, r, 2)
            outs = []
            for it in range(2):
                xs = [views[v][r].clone().requires_grad_(True) for v in range(2)]
                y1, y2 = m(xs[0]), m(xs[1])
                (y1.pow(3).sum() + y2.sin().sum()).backward()
                outs.append(([y1.detach(), y2.detach()], [x.grad for x in xs]))
            results[r] = (outs, {n: p.grad.clone() for n, p in m.named_parameters()}, m)
        except Exception as e:  # reported below
            errors.append(f"worker {r}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(r,), daemon=True) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_LIMIT_S)
    checks.eq(errors, [], "two views, two workers: no errors (gradient steps increase)")
    if errors or None in results:
        return
    for it in range(2):
        xs = [torch.cat(views[v]).requires_grad_(True) for v in range(2)]
        y1, y2 = ref(xs[0]), ref(xs[1])
        (y1.pow(3).sum() + y2.sin().sum()).backward()
        for r in range(2):
            lo = sum(x.shape[0] for x in views[0][:r])
            outs, grads = results[r][0][it]
            for v, y in enumerate((y1, y2)):
                n = views[v][r].shape[0]
                close(checks, outs[v], y[lo:lo + n].detach(), f"two views it {it} worker {r} "
                                                               f"view {v}: output")
                close(checks, grads[v], xs[v].grad[lo:lo + n], f"two views it {it} worker {r} "
                                                                f"view {v}: input gradient")
    # the local parameter gradients add up to the reference's (a Linear's bias
    # before BN has gradient 0: measured against the largest gradient)
    scale = max(p.grad.abs().max().item() for p in ref.parameters())
    for n, p in ref.named_parameters():
        checks.close(results[0][1][n] + results[1][1][n], p.grad,
                     f"two views: {n} gradient summed over the workers", RTOL,
                     ATOL_OF_MAX * scale)
    checks.eq(results[0][2][1]._last_grad_step, 4,
              "two views: gradient steps 1, 2 then 3, 4 (forward steps 0, 1 then 2, 3)")


def layer_steps(client, run):
    layers = client.get_run(run)["status"]["layers"]
    return {k: v.get("finalized_step") for k, v in layers.items()}


def step_numbering(checks, d):
    client = d.client()
    run = h.run_name("steps")
    model = convert_sync_batchnorm(h.make_model("mlp", seed=2), client, run, 0, 1)
    for _ in range(3):
        model(torch.randn(5, 20)).sum().backward()
    checks.eq(layer_steps(client, run), {"net.1": 2, "net.4": 2},
              "3 training forwards: steps 0, 1, 2 of each layer")
    checks.eq(model.net[1].next_step, 3, "next_step after 3 forwards")
    state = model.state_dict()

    resumed = convert_sync_batchnorm(h.make_model("mlp", seed=2), client, run, 0, 1)
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed(torch.randn(5, 20)).sum().backward()
    checks.eq(layer_steps(client, run), {"net.1": 4, "net.4": 4},
              "a model resumed from the state_dict continues with steps 3, 4")

    fresh = convert_sync_batchnorm(h.make_model("mlp", seed=2), client, run, 0, 1)
    fresh(torch.randn(5, 20)).sum().backward()
    checks.eq(layer_steps(client, run), {"net.1": 5, "net.4": 5},
              "a fresh model with step_base='next' continues at step 5 (no stale_step)")
    model.load_state_dict(state)  # an older checkpoint into a model that trained on
    model(torch.randn(5, 20)).sum().backward()
    checks.eq(layer_steps(client, run), {"net.1": 6, "net.4": 6},
              "load_state_dict settles step_base='next' again: step 6, not a stale 3")
    ema = client.stats(run)["layers"]
    checks.eq(ema["net.1"]["num_batches_tracked"], 7, "the run's EMA took all 7 steps")

    run2 = h.run_name("steps100")
    m100 = convert_sync_batchnorm(h.make_model("mlp", seed=2), client, run2, 0, 1, step_base=100)
    m100(torch.randn(5, 20))
    checks.eq(layer_steps(client, run2), {"net.1": 100, "net.4": 100},
              "step_base=100 starts at 100")

    # a forward in eval mode is no step
    m100.eval()
    m100(torch.randn(5, 20))
    checks.eq(layer_steps(client, run2)["net.1"], 100, "an eval forward is no step")
    client.close()


def bad_arguments(checks, d):
    client = d.client()
    for desc, fn in [
        ("rank >= world_size", lambda: Link(client, "r", 2, 2)),
        ("bad run name", lambda: Link(client, "a b", 0, 1)),
        ("bad layer name", lambda: SyncBatchNorm(4, layer="x y")),
        ("bad step_base", lambda: SyncBatchNorm(4, step_base=-1)),
        ("bad grad_dtype", lambda: SyncBatchNorm(4, grad_dtype=torch.float16)),
    ]:
        try:
            fn()
            checks.check(False, f"{desc} raises ValueError")
        except ValueError as e:
            checks.check(True, f"{desc} raises ValueError: {e}")
    try:
        SyncBatchNorm(4)(torch.randn(3, 4))
        checks.check(False, "training without a link raises RuntimeError")
    except RuntimeError as e:
        checks.check("link" in str(e), f"training without a link raises RuntimeError: {e}")
    run = h.run_name("one")
    bn = convert_sync_batchnorm(torch.nn.BatchNorm1d(3), client, run, 0, 1)
    try:
        bn(torch.randn(1, 3))
        checks.check(False, "a global count of 1 raises ValueError")
    except ValueError as e:
        checks.check("more than 1 value" in str(e), f"a global count of 1 raises ValueError: {e}")
    # an empty batch on the only worker: empty output, buffers untouched
    bn = convert_sync_batchnorm(torch.nn.BatchNorm1d(3), client, h.run_name("empty"), 0, 1)
    x = torch.randn(0, 3, requires_grad=True)
    y = bn(x)
    y.sum().backward()
    checks.eq((tuple(y.shape), tuple(x.grad.shape)), ((0, 3), (0, 3)),
              "an empty batch everywhere: empty output and gradient")
    checks.check(torch.equal(bn.running_mean, torch.zeros(3))
                 and torch.equal(bn.running_var, torch.ones(3)),
                 "an empty batch everywhere leaves the running statistics")
    client.close()


def open_sockets():
    """Socket file descriptors of this process."""
    import os
    out = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            out += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return out


def closing(checks, d):
    before = open_sockets()
    client = d.client()
    model = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3),
                                                       torch.nn.BatchNorm2d(4)),
                                   client, h.run_name("close"), 0, 1)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    model[1].close()
    client.close()
    checks.eq(open_sockets(), before, "close() leaves no socket of the layers open")


def body(checks):
    d = h.start_daemon()
    closing(checks, d)
    against_torch(checks, d)
    no_server(checks)
    dead_worker(checks, d)
    two_views(checks, d)
    step_numbering(checks, d)
    bad_arguments(checks, d)
    h.stop_daemon(checks, d)


if __name__ == "__main__":
    h.main(body)
