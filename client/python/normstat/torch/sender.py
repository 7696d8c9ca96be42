"""Sender: the background thread that delivers a StatsReporter's reports.

DESIGN
* Jobs: one per StatsReporter.step(), pushed by the training thread, in step
  order. job.prepare() (run here, once; stored in job.bodies) waits for the
  job's device-to-host copy and encodes its report bodies [(daemon step,
  body, content type)]; while a report is retried, the jobs behind it are
  encoded too, so an outage holds bytes, not pinned buffers; the bodies are
  sent in order, one job after the other, on the reporter's Client.
* strict=False (never stop training): a report the daemon could not take
  (no connection, timeout, 5xx, 429) stays at the head and is retried with
  exponential backoff (0.05 s doubling up to retry_max_s), so later steps
  wait behind it in order. At most max_buffered jobs are held (the one being
  sent included): beyond, the oldest job not being sent is dropped. Dropped
  and refused reports (4xx: a bug in the caller, e.g. a worker outside
  world_size) are counted (dropped), their steps listed (lost_steps), and a
  ReportWarning is issued. close() keeps retrying until its deadline, then
  drops what is left.
* strict=True: nothing is retried here (the Client itself repeats a request
  once on a connection the server had closed); the first failure is kept in
  .error, for the training thread to raise, and the rest of that job is
  dropped. push() blocks while max_buffered jobs wait (back-pressure).
* The thread outlives any exception of a delivery (a bug: the job is
  counted lost) and ReportWarnings that a warnings filter turns into errors
  (dropped on this thread), so flush() and close() always return.
* flush() waits until every pushed job was delivered or dropped (or, with
  until_failing, until the daemon is failing). Completion is signalled
  through one Condition that guards the queue and every counter.
"""

import collections
import threading
import time
import warnings

from ..errors import Error, ReporterError, TransportError

__all__ = ["Sender", "ReportWarning"]

_FIRST_DELAY_S = 0.05


class ReportWarning(RuntimeWarning):
    """normstat could not take a report; training continues."""


def _retryable(err):
    status = getattr(err, "status", None)
    return isinstance(err, TransportError) or status is None or status >= 500 or status == 429


class Sender:
    """The delivery thread of one reporter (see the DESIGN block)."""

    def __init__(self, client, run, worker, strict, max_buffered, retry_max_s, name):
        self.client, self.run, self.worker = client, run, int(worker)
        self.strict = bool(strict)
        self.max_buffered = max(1, int(max_buffered))
        self.retry_max_s = max(_FIRST_DELAY_S, float(retry_max_s))
        self.error = None  # strict: the first failure, as ReporterError
        self.delivered = 0  # reports the daemon accepted
        self.dropped = 0  # reports lost (buffer full, refused, or undelivered at close)
        self.lost_steps = []  # steps (as passed to step()) with a lost report
        self.failing = False  # the last attempt failed with a retryable error
        self._jobs = collections.deque()
        self._inflight = None
        self._closing = False
        self._deadline = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=name)
        self._thread.start()

    # ------------------------------------------------------------ training thread

    def push(self, job):
        with self._cond:
            if self.strict:
                while len(self._jobs) >= self.max_buffered and self._thread.is_alive():
                    self._cond.wait()
            self._jobs.append(job)
            if not self.strict:
                while len(self._jobs) > self.max_buffered:
                    victim = next(j for j in self._jobs if j is not self._inflight)
                    self._jobs.remove(victim)
                    self._lose(victim, victim.reports, "the buffer of unsent steps is full "
                               f"(max_buffered={self.max_buffered})")
            self._cond.notify_all()

    def flush(self, timeout=None, until_failing=False):
        """Wait until every pushed job is delivered or dropped; True when so,
        False on timeout (or when until_failing and the daemon is failing)."""
        with self._cond:
            done = lambda: not self._jobs and self._inflight is None  # noqa: E731
            self._cond.wait_for(lambda: done() or (until_failing and self.failing), timeout)
            return done()

    def close(self, timeout):
        """Deliver what is buffered, retrying for at most 'timeout' seconds
        (non-strict), then drop the rest and stop the thread."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + max(0.0, float(timeout))
            self._cond.notify_all()
        self._thread.join()

    def lose(self, step, reports, why):
        """Count reports the training thread could not send (sync=True)."""
        with self._cond:
            self._lose_locked(step, reports, why)

    # ------------------------------------------------------------ thread

    def _lose(self, job, reports, why):
        self._lose_locked(job.step, reports, why)

    def _lose_locked(self, step, reports, why):
        if reports <= 0:
            return
        self.dropped += reports
        if not self.lost_steps or self.lost_steps[-1] != step:
            self.lost_steps.append(step)
        self._warn(f"normstat run {self.run!r} worker {self.worker}: step {step} not "
                   f"reported ({reports} report(s) dropped, {self.dropped} in all): {why}")

    def _warn(self, message):
        """A ReportWarning. On this sender's thread one that a warnings filter
        turns into an error is dropped: the thread must go on delivering
        (on the training thread it raises, as the filter asks)."""
        try:
            warnings.warn(message, ReportWarning, stacklevel=4)
        except Warning:
            if threading.current_thread() is not self._thread:
                raise

    def _loop(self):
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._inflight = self._jobs[0]
            try:
                self._deliver(job)
            except Exception as e:  # the thread must go on, or flush() would wait forever
                self._unexpected(job, e)
            finally:
                with self._cond:
                    if self._jobs and self._jobs[0] is job:
                        self._jobs.popleft()
                    self._inflight = None
                    self._cond.notify_all()

    @staticmethod
    def _prepared(job):
        """job's bodies, encoded once (which also frees its host buffer)."""
        if job.bodies is None:
            try:
                job.bodies = job.prepare()
            except Exception as e:  # a bug, not the daemon: never retried
                job.bodies = e
        return job.bodies

    def _prepare_waiting(self):
        """Encode the jobs waiting behind a failing one, so that a long
        outage holds encoded bodies rather than pinned host buffers."""
        with self._cond:
            waiting = [j for j in self._jobs if j.bodies is None and j is not self._inflight]
        for j in waiting:
            self._prepared(j)

    def _deliver(self, job):
        bodies = self._prepared(job)
        if isinstance(bodies, Exception):
            self._fail(job, job.reports, bodies)
            return
        delay = _FIRST_DELAY_S
        i, attempts = 0, 0
        while i < len(bodies):
            dstep, body, ctype = bodies[i]
            attempts += 1
            try:
                self.client.send_report(self.run, dstep, self.worker, body, content_type=ctype)
            except Error as e:
                if attempts > 1 and self._arrived(dstep, e):
                    pass  # an earlier attempt was delivered
                elif self.strict or not _retryable(e):
                    self._fail(job, 1 if not self.strict else len(bodies) - i, e)
                    if self.strict:
                        return
                    i, attempts = i + 1, 0
                    continue
                else:
                    if not self.failing:
                        self._warn(f"normstat run {self.run!r} worker {self.worker}: "
                                   f"report of step {job.step} failed ({e}); buffering up to "
                                   f"{self.max_buffered} steps and retrying")
                    self._prepare_waiting()
                    with self._cond:
                        self.failing = True
                        self._cond.notify_all()
                        if self._closing and time.monotonic() >= self._deadline:
                            self._lose(job, len(bodies) - i, f"undelivered at close ({e})")
                            return
                        wait = delay
                        if self._closing:
                            wait = min(wait, max(0.0, self._deadline - time.monotonic()))
                        self._cond.wait(wait)
                    delay = min(delay * 2, self.retry_max_s)
                    continue
            with self._cond:
                self.delivered += 1
                self.failing = False
            i, attempts, delay = i + 1, 0, _FIRST_DELAY_S

    def _unexpected(self, job, err):
        """An exception _deliver did not expect (a bug): the job fails like
        a refused one."""
        self._fail(job, job.reports, err)

    def _arrived(self, dstep, err):
        code = getattr(err, "code", None)
        if code == "duplicate_report":
            return True
        if code == "stale_step":
            try:
                return bool(self.client._delivered(self.run, self.worker, dstep, err))
            except Exception:
                return False
        return False

    def _fail(self, job, reports, err):
        with self._cond:
            if self.strict:
                if self.error is None:
                    e = ReporterError(job.step, err)
                    e.__cause__ = err
                    self.error = e
                self.dropped += reports
                if not self.lost_steps or self.lost_steps[-1] != job.step:
                    self.lost_steps.append(job.step)
            else:
                self._lose(job, reports, f"refused: {err}")

    def take_error(self):
        with self._cond:
            err, self.error = self.error, None
            return err
