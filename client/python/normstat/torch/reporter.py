"""StatsReporter: a trainer's normalization statistics, reported once per step.

The statistics are the ones each layer's own kernel computes in the forward
(capture.py: no second pass over activations), copied to the host once per
step without waiting for the GPU (hostcopy.py), encoded with one copy
(reportcodec.py) and delivered by a background thread that never stops training
(sender.py), or synchronously when step() must return the global statistics.
"""

import collections
import re
import warnings
import weakref

import torch

from ..errors import Error, ReporterError
from .capture import StatsCapture
from .hostcopy import PinnedPool, to_host
from .layers import bn_layers
from .sender import ReportWarning, Sender
from .syncbn import SyncBatchNorm
from .reportcodec import decode_sync, encode_report

__all__ = ["StatsReporter", "ReportWarning"]

# open StatsReporters, so precise_bn can pause them
REPORTERS = weakref.WeakSet()

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_STATE_VERSION = 1


class _Job:
    """One step() for the sender: its host statistics and how to encode them."""

    __slots__ = ("step", "reports", "prepare", "bodies")

    def __init__(self, step, reports, prepare):
        self.step, self.reports, self.prepare = step, reports, prepare
        self.bodies = None  # the sender's encoding of the job, once made


class StatsReporter:
    """Report the batch statistics of every normalization layer of 'model'
    (BatchNorm of any kind, InstanceNorm with track_running_stats) to
    normstat, once per training step.

        with StatsReporter(model, client, "r1", rank, world_size) as rep:
            for step, (x, y) in enumerate(loader):
                loss(model(x), y).backward(); opt.step()
                rep.step(step)

    Capture. Each training-mode forward of a layer records its count
    (values per channel), mean and unbiased variance as the layer's own
    kernel computes them (no extra pass; the model's running buffers end up
    as without the reporter: see capture.py for the exact bounds). Forwards
    in eval mode, or while .enabled is False, are not recorded.

    Several forwards per step (gradient accumulation, a layer used twice).
    PyTorch updates running statistics once per forward. By default every
    forward is its own normstat step, so the run's EMA equals the model's
    own buffers: the i-th forward (i = 0, 1, ...) of a layer within step(s)
    is reported as normstat step s * forwards_per_step + i; a layer with
    fewer forwards reports count 0 for the rest; more than forwards_per_step
    forwards of one layer in a step are a misuse (below). merge_forwards=True
    instead merges the forwards of a step into one batch (normstat step s),
    as one large batch would give.

    step(s, domain=None) reports what was collected since the previous
    step() (count 0 for a layer that saw no forward, so no barrier waits for
    this worker). Steps must increase. 'domain' (default: the reporter's
    .domain, read now) files the step under that domain. A misuse in the
    loop (a step that does not increase, a bad domain name, too many
    forwards) raises ValueError with strict=True; otherwise that step is
    lost like an undeliverable one (ReportWarning, .lost_steps) and
    training goes on.

    sync=False: a background thread sends the reports. sync=True: step()
    sends /sync, waits for every worker and returns the answer {"step",
    "complete", "workers", "layers": {name: {"count", "mean", "var"}}}
    (global statistics, biased variance, float32 tensors); with several
    reports per step (forwards_per_step > 1, not merged), the list of
    answers.

    strict=False (default): normstat never stops training. Reports the
    daemon cannot take (unreachable, 5xx, 429) are buffered, up to
    max_buffered steps, and retried with backoff; beyond the bound the
    oldest are dropped. A report the daemon refuses (4xx: a bug such as a
    worker outside world_size) is dropped. Every drop issues a ReportWarning;
    .dropped counts the lost reports and .lost_steps lists their steps.
    sync=True steps that fail return None. close() retries for at most
    close_timeout seconds, then drops what is left.
    strict=True: a failed report raises ReporterError from the next step(),
    flush() or close(); step() blocks while max_buffered reports wait.

    Resume: state_dict() / load_state_dict() (see there) go with the model's
    checkpoint. queue_size is the former name of max_buffered; fmt="json"
    sends JSON bodies (slower; safetensors by default, whatever the Client's
    fmt, unless it is "json"). The reporter never creates or configures the
    run: a report
    creates a missing run with 'world_size' and the server's defaults, so
    call client.put_run() first for any other momentum. The client should be
    this reporter's own (calls on one Client are serialised)."""

    def __init__(self, model, client, run, rank, world_size, domain="default", sync=False,
                 update=("ema", "precise"), scope=None, queue_size=None, fmt=None, strict=False,
                 max_buffered=None, forwards_per_step=1, merge_forwards=False, close_timeout=10.0,
                 retry_max_s=2.0):
        self.client = client
        self.run = run
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.domain = domain
        self.sync = bool(sync)
        self.update = (update,) if isinstance(update, str) else tuple(update)
        self.scope = scope
        self.fmt = fmt
        self.strict = bool(strict)
        self.forwards_per_step = int(forwards_per_step)
        if self.forwards_per_step < 1:
            raise ValueError(f"forwards_per_step must be >= 1, got {forwards_per_step!r}")
        self.merge_forwards = bool(merge_forwards)
        self.close_timeout = float(close_timeout)
        # normstat's own SyncBatchNorm layers report their statistics themselves
        self.layers = [(n, m) for n, m in bn_layers(model) if not isinstance(m, SyncBatchNorm)]
        if not self.layers:
            raise ValueError("the model has no BatchNorm layers (nor InstanceNorm with "
                             "track_running_stats=True) other than normstat SyncBatchNorm")
        if max_buffered is None:
            max_buffered = queue_size if queue_size is not None else (16 if strict else 1024)
        self._names = [name for name, _ in self.layers]
        self._next_step = 0  # the lowest step step() accepts
        self._closed = False
        self._pool = PinnedPool()
        self._capture = StatsCapture(model, self.layers,
                                     1 if self.merge_forwards else self.forwards_per_step)
        REPORTERS.add(self)
        self._sender = Sender(client, run, self.rank, self.strict, max_buffered, retry_max_s,
                              name=f"normstat-reporter-{run}-{rank}")
        self._sync_sent = 0

    # ------------------------------------------------------------ state

    @property
    def enabled(self):
        return self._capture.enabled

    @enabled.setter
    def enabled(self, value):
        self._capture.enabled = bool(value)

    @property
    def steps_sent(self):
        """Reports the daemon accepted."""
        return self._sender.delivered + self._sync_sent

    @property
    def dropped(self):
        """Reports lost (see the class comment)."""
        return self._sender.dropped

    @property
    def lost_steps(self):
        """Steps (as passed to step()) of which a report was lost, in order."""
        return list(self._sender.lost_steps)

    def _daemon_steps(self, step):
        if self.merge_forwards:
            return [step]
        f = self.forwards_per_step
        return [step * f + i for i in range(f)]

    # ------------------------------------------------------------ encoding

    def _metadata(self, dstep, domain, update, world_size):
        return {"step": str(dstep), "worker": str(self.rank), "domain": domain,
                "unbiased": "true", "update": ",".join(update), "world_size": str(world_size)}

    def _reports(self, step, host):
        """[(daemon step, [(name, count, mean, var)])] of a step's host
        statistics: per forward, or merged (float64, Chan et al.)."""
        per_layer = collections.defaultdict(list)
        for layer, count, off, c in host.entries:
            per_layer[layer].append((count, off, c))
        flat = host.flat
        dsteps = self._daemon_steps(step)
        reports = []
        for k, dstep in enumerate(dsteps):
            items = []
            for idx, name in enumerate(self._names):
                fwd = per_layer.get(idx, ())
                if self.merge_forwards:
                    items.append(self._merged(name, fwd, flat))
                    continue
                count, off, c = fwd[k] if k < len(fwd) else (0, None, 0)
                if off is None:
                    items.append((name, count, None, None))
                else:
                    items.append((name, count, flat[off:off + c], flat[off + c:off + 2 * c]))
            reports.append((dstep, items))
        return reports

    @staticmethod
    def _merged(name, fwd, flat):
        parts = [(n, flat[off:off + c], flat[off + c:off + 2 * c]) for n, off, c in fwd
                 if off is not None and n]
        total = sum(n for n, *_ in fwd)
        if not parts:
            return (name, total, None, None)
        if len(parts) == 1:
            n, mean, var = parts[0]
            return (name, total, mean, var)
        big_n = float(sum(n for n, *_ in parts))
        mean = sum(mn.double() * n for n, mn, _ in parts) / big_n
        m2 = sum(vr.double() * (n - 1) + (mn.double() - mean) ** 2 * n for n, mn, vr in parts)
        var = m2 / (big_n - 1) if big_n > 1 else torch.zeros_like(mean)
        return (name, total, mean.float(), var.float())

    def _bodies(self, step, host, domain, scope, update, world_size):
        """Encode a step's reports: [(daemon step, body, content type)].
        fmt="json" (or a Client whose fmt is "json") is a compatibility
        path: the Client encodes the JSON value by value."""
        host.wait()
        try:
            as_json = (self.fmt or getattr(self.client, "fmt", "safetensors")) == "json"
            out = []
            for dstep, items in self._reports(step, host):
                md = self._metadata(dstep, domain, update, world_size)
                if scope is not None:
                    md["scope"] = scope
                if as_json:
                    layers = {name: (n, mean, var) for name, n, mean, var in items}
                    body, ctype = self.client._report_body(
                        dstep, self.rank, layers, domain, True, update, world_size, scope,
                        "json")
                    out.append((dstep, body, ctype))
                else:
                    out.append((dstep, encode_report(md, items), "application/safetensors"))
            return out
        finally:
            host.release()

    # ------------------------------------------------------------ steps

    def step(self, step, sync=None, domain=None):
        """Report everything collected since the previous step() as step
        'step' (see the class comment for the numbering and sync).
        domain: this step's domain (default: .domain, read now). With
        strict=True, raises ValueError for a step that does not increase, a
        bad domain name or more forwards than forwards_per_step, and the
        ReporterError of an earlier failed report; otherwise such a step is
        lost with a ReportWarning (see the class comment)."""
        if self._closed:
            raise RuntimeError("StatsReporter is closed")
        step = int(step)
        domain = self.domain if domain is None else domain
        caps = self._capture.take()
        refused = self._refusal(step, domain, caps)
        if refused is not None:
            # a misuse inside the training loop: raised when strict, else the
            # step is lost (with a warning) and training goes on
            if self.strict:
                raise ValueError(refused)
            self._sender.lose(step, len(self._daemon_steps(step)), refused)
            return None
        self._next_step = step + 1
        host = to_host(caps, self._pool)
        sync = self.sync if sync is None else sync
        n_reports = len(self._daemon_steps(step))
        # everything the report says is read now, not when the sender sends it
        update, world_size = self.update, self.world_size
        if sync:
            return self._step_sync(step, host, domain, n_reports, update, world_size)
        job = _Job(step, n_reports,
                   lambda: self._bodies(step, host, domain, None, update, world_size))
        self._sender.push(job)
        self._raise_pending()
        return None

    def _refusal(self, step, domain, caps):
        """Why step 'step' cannot be reported as given, or None."""
        if not isinstance(domain, str) or not _NAME_RE.match(domain):
            return f"domain: {domain!r} does not match [A-Za-z0-9_.:-]{{1,128}}"
        if step < self._next_step:
            return f"step {step}: steps must increase (next allowed: {self._next_step})"
        if not self.merge_forwards and len(caps) > len(self.layers):
            seen = collections.Counter(c.layer for c in caps)
            idx, most = seen.most_common(1)[0]
            if most > self.forwards_per_step:
                return (f"layer {self._names[idx]!r} ran {most} training forwards in step {step}, "
                        f"forwards_per_step={self.forwards_per_step}: raise forwards_per_step or "
                        "pass merge_forwards=True")
        return None

    def _step_sync(self, step, host, domain, n_reports, update, world_size):
        if self.strict:
            self._sender.flush()
            self._raise_pending()
        else:
            self._sender.flush(until_failing=True)
        answers = []
        try:
            for dstep, body, ctype in self._bodies(step, host, domain, self.scope, update,
                                                   world_size):
                data = self.client.send_report(self.run, dstep, self.rank, body, sync=True,
                                               content_type=ctype)
                self._sync_sent += 1
                answers.append(decode_sync(data))
        except Error as e:
            if self.strict:
                raise ReporterError(step, e) from e
            self._sender.lose(step, n_reports - len(answers), f"/sync failed: {e}")
            return None
        return answers[0] if len(answers) == 1 else answers

    def _raise_pending(self):
        err = self._sender.take_error()
        if err is not None:
            raise err

    def discard(self):
        """Drop what was collected since the last step() (e.g. a skipped
        batch) without reporting it; the model's buffers keep its updates."""
        self._capture.discard()

    def flush(self, timeout=None, raise_errors=True):
        """Wait until every report so far was delivered (or dropped:
        strict=False); True when so, False after 'timeout' seconds
        (strict=False: at most close_timeout when timeout is None, so that a
        daemon that is down never holds training up; the reports stay
        buffered). With strict=True, raises the first error of those that
        failed (unless raise_errors is False: the next step() raises it)."""
        if timeout is None and not self.strict:
            timeout = self.close_timeout
        done = self._sender.flush(timeout)
        if raise_errors:
            self._raise_pending()
        return done

    def close(self, raise_errors=True):
        """Deliver what is buffered (strict=False: retrying for at most
        close_timeout seconds), stop the thread, remove the hooks; with
        strict=True raises a pending report error (unless raise_errors is
        False)."""
        if self._closed:
            if raise_errors:
                self._raise_pending()
            return
        self._closed = True
        REPORTERS.discard(self)
        self._capture.remove()
        self._sender.close(self.close_timeout)
        if raise_errors:
            self._raise_pending()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # an exception already propagating is not masked by a report error
        self.close(raise_errors=exc_type is None)

    # ------------------------------------------------------------ resume

    def state_dict(self, run_checkpoint=None):
        """What a resumed job needs to continue this run's statistics from
        here, to save with the model's checkpoint: the next step, the step
        numbering, and (on rank 0, or when run_checkpoint is True) the
        daemon's checkpoint of the run (client.checkpoint_get) taken after
        this worker's reports were delivered. With several workers, call it
        after every rank's flush() and a barrier, so the run holds the last
        step of every worker. strict=False: waits at most close_timeout
        seconds for the buffered reports (the daemon may be down); if they
        are still buffered then, no run checkpoint is taken (a
        ReportWarning says so) and the reports stay buffered."""
        if run_checkpoint is None:
            run_checkpoint = self.rank == 0
        delivered = self.flush()
        ckpt = None
        if run_checkpoint and not delivered:
            warnings.warn(f"normstat run {self.run!r}: no run checkpoint saved: reports still "
                          f"buffered after {self.close_timeout} s", ReportWarning)
        elif run_checkpoint:
            try:
                ckpt = self.client.checkpoint_get(self.run)
            except Error as e:
                if self.strict:
                    raise
                warnings.warn(f"normstat run {self.run!r}: no run checkpoint saved: {e}",
                              ReportWarning)
        return {"version": _STATE_VERSION, "run": self.run, "next_step": self._next_step,
                "forwards_per_step": self.forwards_per_step,
                "merge_forwards": self.merge_forwards, "run_checkpoint": ckpt}

    def load_state_dict(self, state):
        """Continue from a state_dict(): the next step, and (rank 0 only)
        the run's statistics restored to the checkpoint (checkpoint_put), so
        that the steps after it, reported again, are not stale. Other ranks
        must not report before rank 0 restored it (a barrier)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"reporter state version {state.get('version')!r} is not "
                             f"{_STATE_VERSION}")
        if (state["forwards_per_step"], state["merge_forwards"]) != (self.forwards_per_step,
                                                                     self.merge_forwards):
            raise ValueError("reporter state: forwards_per_step/merge_forwards differ from "
                             "this reporter's, so step numbers would not continue")
        ckpt = state.get("run_checkpoint")
        if ckpt is not None and self.rank == 0:
            try:
                self.client.checkpoint_put(self.run, ckpt)
            except Error as e:
                if self.strict:
                    raise
                warnings.warn(f"normstat run {self.run!r}: run checkpoint not restored: {e}",
                              ReportWarning)
        self._next_step = int(state["next_step"])
