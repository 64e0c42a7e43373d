"""The background writer: rendering, PNG encoding and sink writes off the training thread.

The training thread only explains and copies tensors to the host; it then hands a *job* to the writer of
its trainer. A job is a function of a :class:`StepLog` (bound to the global step of the moment it was
submitted) that renders pictures and tables and writes them through the log. One worker thread runs the
jobs in submission order, so every tag's steps stay in order.

* Bounded: at most ``max_pending_epochs`` epochs of jobs wait. When a new epoch would exceed that, the
  oldest waiting epoch's jobs are dropped (one warning per writer), so a slow tracker never blocks training.
* Errors are not swallowed: the first error in a job is re-raised on the training thread at the next
  :meth:`BackgroundWriter.check` (every hook of the callbacks calls it) or :meth:`flush`.
* Sinks whose library is not thread-safe (W&B's ``run.log``) get their items on the training thread: the
  worker renders and encodes, and :meth:`BackgroundWriter.drain` (at the next hook) writes them.

Example:
    >>> writer = BackgroundWriter()
    >>> writer.submit(sinks, step=120, epoch=3, job=lambda log: log.image("explain/x", grid))  # doctest: +SKIP
    >>> writer.flush()                                                                         # doctest: +SKIP
"""

from __future__ import annotations

import collections
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lit_explain.sinks.base import Sink
from lit_explain.sinks.items import Picture, Table

# Two epochs: the one being written and the next one waiting. A third means the writer fell behind.
DEFAULT_PENDING_EPOCHS = 2


class WriterError(RuntimeError):
    """A background job failed; raised on the training thread at the next hook, naming the job."""


class StepLog:
    """What a job writes to: every sink of the trainer, at the step the job was submitted at.

    Example:
        >>> log.image("explain/probes/page_0", page, caption="epoch 3")   # doctest: +SKIP
        >>> log.table("explain/worst_table", Table(("source",), [["idx 4"]]))  # doctest: +SKIP
    """

    def __init__(
        self, sinks: Sequence[Sink], step: int, deferred: Callable[[Callable[[], None]], None]
    ) -> None:
        self.sinks = list(sinks)
        self.step = step
        self._defer = deferred

    def image(self, tag: str, image: Tensor | Picture, caption: str = "") -> None:
        """Write a uint8 ``[3, H, W]`` image (PNG-encoded once, here on the worker) to every sink."""
        picture = image if isinstance(image, Picture) else Picture(image, caption)
        for sink in self.sinks:
            if not sink.thread_safe:
                _ = picture.png  # encode on the worker; only the tracker's call waits for the training thread
            self._write(sink, lambda s=sink: s.image(tag, picture, self.step))

    def table(self, tag: str, table: Table) -> None:
        """Write a table (image columns included where the tracker has them) to every sink."""
        for sink in self.sinks:
            if not sink.thread_safe:
                for pictures in table.images.values():
                    for picture in pictures:
                        _ = picture.png
            self._write(sink, lambda s=sink: s.table(tag, table, self.step))

    def text(self, tag: str, text: str) -> None:
        """Write a line (or a few) of text: TensorBoard's text tab, a W&B/MLflow/CSV one-cell table."""
        for sink in self.sinks:
            self._write(sink, lambda s=sink: s.text(tag, text, self.step))

    def _write(self, sink: Sink, call: Callable[[], None]) -> None:
        if sink.thread_safe:
            call()
        else:
            self._defer(call)


@dataclass
class _Job:
    run: Callable[[StepLog], None]
    sinks: list[Sink]
    step: int
    epoch: int
    what: str


@dataclass
class WriterStats:
    """What the writer did: seconds of work on the worker, jobs run and dropped."""

    background_s: float = 0.0
    jobs: int = 0
    dropped: int = 0
    dropped_epochs: list[int] = field(default_factory=list)


class BackgroundWriter:
    """One worker thread that runs logging jobs in order, with a bounded backlog (see the module docs).

    Args:
        max_pending_epochs: how many epochs of jobs may wait before the oldest waiting epoch is dropped.
        inline: run each job at once on the submitting thread instead (no worker thread). On a CPU whose
            cores all train, a worker thread slows training more than the work it takes over: its Python
            (PIL, matplotlib) holds the GIL between the training thread's many short operations, and its
            C work makes one of the training's OpenMP threads a straggler (docs/benchmarks.md, "Callbacks").
    """

    def __init__(self, max_pending_epochs: int = DEFAULT_PENDING_EPOCHS, inline: bool = False) -> None:
        if max_pending_epochs < 1:
            raise ValueError(f"max_pending_epochs must be >= 1, got {max_pending_epochs}")
        self.max_pending_epochs = max_pending_epochs
        self.inline = inline
        self.stats = WriterStats()
        self._queue: collections.deque[_Job] = collections.deque()
        self._deferred: collections.deque[Callable[[], None]] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._error: BaseException | None = None
        self._error_job = ""
        self._warned = False
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- training thread -----------------------------------------------------------------------------
    def submit(
        self, sinks: Sequence[Sink], step: int, epoch: int, job: Callable[[StepLog], None], what: str
    ) -> None:
        """Queue ``job`` to run on the worker with a :class:`StepLog` at ``step``; returns at once.

        Inline (see the class), the job runs now and its error is raised here.
        """
        self.check()
        if self.inline:
            item = _Job(job, list(sinks), int(step), int(epoch), what)
            try:
                self._run(item)
            except Exception as exc:
                raise WriterError(f"writing {what} failed: {exc}") from exc
            self.stats.jobs += 1
            self.drain()
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("the background writer is closed")
            epochs = list(dict.fromkeys(j.epoch for j in self._queue))
            if epoch not in epochs and len(epochs) >= self.max_pending_epochs:
                self._drop_epoch(epochs[0])
            self._queue.append(_Job(job, list(sinks), int(step), int(epoch), what))
            self._start()
            self._cond.notify_all()

    def check(self) -> None:
        """Write what waits for the training thread, and re-raise the first error of a background job."""
        self.drain()
        if self._error is not None:
            error, self._error = self._error, None
            raise WriterError(f"writing {self._error_job} in the background failed: {error}") from error

    def drain(self) -> None:
        """Run the writes queued for the training thread (sinks that are not thread-safe), in order."""
        while True:
            with self._cond:
                if not self._deferred:
                    return
                call = self._deferred.popleft()
            call()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued job ran (or ``timeout`` seconds), write the deferred items, re-raise errors.

        Returns False when the timeout passed with jobs still waiting.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        done = True
        with self._cond:
            while self._queue or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    done = False
                    break
                self._cond.wait(timeout=left)
        self.check()
        return done

    def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the worker thread."""
        try:
            self.flush(timeout)
        finally:
            with self._cond:
                self._closed = True
                self._queue.clear()
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join(timeout=5)

    def pending(self) -> int:
        """Jobs waiting or running."""
        with self._cond:
            return len(self._queue) + int(self._busy)

    # -- internals -----------------------------------------------------------------------------------
    def _drop_epoch(self, epoch: int) -> None:
        dropped = [j for j in self._queue if j.epoch == epoch]
        self._queue = collections.deque(j for j in self._queue if j.epoch != epoch)
        self.stats.dropped += len(dropped)
        self.stats.dropped_epochs.append(epoch)
        if not self._warned:
            self._warned = True
            names = ", ".join(dict.fromkeys(j.what for j in dropped))
            warnings.warn(
                f"explainability writer fell behind: epoch {epoch}'s pictures ({names}) were dropped to "
                "keep training going (the scalars are kept). Log less often with "
                "--explain.every_n_epochs N, or fewer probes/samples",
                RuntimeWarning,
                stacklevel=3,
            )

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="lit_explain-writer", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                self._busy = True
            start = time.perf_counter()
            try:
                if self._error is None:
                    self._run(job)
            except BaseException as exc:  # re-raised on the training thread by check()
                self._error, self._error_job = exc, job.what
            finally:
                with self._cond:
                    self.stats.background_s += time.perf_counter() - start
                    self.stats.jobs += 1
                    self._busy = False
                    self._cond.notify_all()

    def _run(self, job: _Job) -> None:
        log = StepLog(job.sinks, job.step, self._defer)
        # Inference mode: the job's tensors may be inference tensors from Lightning's validation loop, and
        # nothing here needs autograd.
        with torch.inference_mode():
            job.run(log)
        for sink in job.sinks:
            if sink.thread_safe:
                sink.flush_pictures()

    def _defer(self, call: Callable[[], None]) -> None:
        with self._cond:
            self._deferred.append(call)


@dataclass
class HostTensors:
    """Tensors copied to the host for a background job; :meth:`get` waits for a pending device copy."""

    tensors: dict[str, Any]
    event: Any = None

    def get(self) -> dict[str, Any]:
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        return self.tensors


def to_host(**tensors: Tensor | None) -> HostTensors:
    """Copy device tensors to pinned host memory without waiting (CUDA), or detach them (CPU).

    The copies are ordered after the work that produced them on the device's stream; the background job
    waits on one event before reading them, so the training thread never synchronises with the device here.

    Example:
        >>> host = to_host(maps=torch.rand(2, 1, 8, 8), guided=None)
        >>> sorted(host.get())
        ['guided', 'maps']
    """
    out: dict[str, Any] = {}
    event = None
    for name, t in tensors.items():
        if t is None or not isinstance(t, Tensor):
            out[name] = t
        elif t.device.type == "cuda":
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t.detach(), non_blocking=True)
            out[name] = host
            event = event or torch.cuda.Event()
        else:
            out[name] = t.detach().to("cpu")
    if event is not None:
        event.record()
    return HostTensors(out, event)
