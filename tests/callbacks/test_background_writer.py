"""The background writer: order, errors that surface, a bounded backlog that drops instead of blocking,
and trackers that are not thread-safe written from the training thread."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lit_explain.sinks import Picture, Sink, Table
from lit_explain.sinks.writer import BackgroundWriter, WriterError, to_host


class RecordingSink(Sink):
    """Records (kind, tag, step, thread) of every write."""

    def __init__(self, thread_safe: bool = True) -> None:
        super().__init__(logger=None)  # type: ignore[arg-type]
        self.thread_safe = thread_safe
        self.calls: list[tuple[str, str, int, int]] = []

    def image(self, tag: str, picture: Picture, step: int) -> None:
        self.calls.append(("image", tag, step, threading.get_ident()))

    def table(self, tag: str, table: Table, step: int) -> None:
        self.calls.append(("table", tag, step, threading.get_ident()))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        raise AssertionError("the writer never writes scalars")


PIXELS = torch.zeros(3, 4, 4, dtype=torch.uint8)


def _image_job(tag: str):
    return lambda log: log.image(tag, PIXELS)


def test_jobs_run_in_order_at_the_step_they_were_submitted_at() -> None:
    # Room for every epoch: five epochs submitted at once would otherwise be a backlog to drop from.
    sink, writer = RecordingSink(), BackgroundWriter(max_pending_epochs=5)
    for step in range(5):
        writer.submit([sink], step=step * 10, epoch=step, job=_image_job("explain/probes"), what="probes")
    writer.flush()
    assert [(c[1], c[2]) for c in sink.calls] == [("explain/probes", s * 10) for s in range(5)]
    assert all(c[3] != threading.get_ident() for c in sink.calls)  # written off the training thread
    assert writer.stats.jobs == 5 and writer.stats.dropped == 0
    writer.close()


def test_an_error_in_a_job_surfaces_on_the_training_thread_naming_the_job() -> None:
    writer = BackgroundWriter()

    def broken(log) -> None:
        raise ValueError("cannot draw this page")

    writer.submit([RecordingSink()], step=3, epoch=0, job=broken, what="worst samples")
    with pytest.raises(WriterError, match=r"worst samples.*cannot draw this page"):
        writer.flush()
    # Raised once; the writer keeps working afterwards.
    sink = RecordingSink()
    writer.submit([sink], step=4, epoch=1, job=_image_job("x"), what="x")
    writer.flush()
    assert [c[2] for c in sink.calls] == [4]
    writer.close()


def test_a_full_backlog_drops_the_oldest_waiting_epoch_with_one_warning_and_never_blocks() -> None:
    sink, writer = RecordingSink(), BackgroundWriter(max_pending_epochs=2)
    release, started = threading.Event(), threading.Event()

    def slow(log) -> None:
        started.set()
        assert release.wait(30)
        log.image("explain/probes", PIXELS)

    writer.submit([sink], step=0, epoch=0, job=slow, what="probes")
    assert started.wait(30)  # epoch 0 is running, the worker is stuck in it

    def submit_more() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for epoch in (1, 2, 3):
                writer.submit(
                    [sink], step=epoch, epoch=epoch, job=_image_job("explain/probes"), what="probes"
                )
                writer.submit([sink], step=epoch, epoch=epoch, job=_image_job("explain/worst"), what="worst")
        submit_more.caught = caught  # type: ignore[attr-defined]

    # If submit ever waited for the stuck worker, this thread would not finish.
    thread = threading.Thread(target=submit_more)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "submit blocked while the writer was busy"
    messages = [str(w.message) for w in submit_more.caught]  # type: ignore[attr-defined]
    assert len(messages) == 1 and "epoch 1" in messages[0] and "every_n_epochs" in messages[0]
    release.set()
    writer.flush()
    # Epoch 1 (the oldest waiting) was dropped; 2 and 3 were written, in order.
    assert [c[2] for c in sink.calls] == [0, 2, 2, 3, 3]
    assert writer.stats.dropped == 2 and writer.stats.dropped_epochs == [1]
    writer.close()


def test_trackers_that_are_not_thread_safe_are_written_from_the_training_thread() -> None:
    safe, unsafe, writer = RecordingSink(), RecordingSink(thread_safe=False), BackgroundWriter()

    def job(log) -> None:
        log.image("explain/probes/page_0", PIXELS)
        log.table("explain/worst_table", Table(("source",), [["idx 1"]], images={"x": [Picture(PIXELS)]}))

    writer.submit([safe, unsafe], step=7, epoch=0, job=job, what="probes")
    writer.flush()
    main = threading.get_ident()
    assert [c[:3] for c in unsafe.calls] == [
        ("image", "explain/probes/page_0", 7),
        ("table", "explain/worst_table", 7),
    ]
    assert all(c[3] == main for c in unsafe.calls)
    assert all(c[3] != main for c in safe.calls)
    writer.close()


def test_an_inline_writer_runs_each_job_at_once_and_raises_its_error_there() -> None:
    sink, writer = RecordingSink(), BackgroundWriter(inline=True)
    writer.submit([sink], step=5, epoch=0, job=_image_job("explain/probes"), what="probes")
    assert [c[1:3] for c in sink.calls] == [("explain/probes", 5)]  # written before submit returned
    assert sink.calls[0][3] == threading.get_ident()

    def broken(log) -> None:
        raise ValueError("no page")

    with pytest.raises(WriterError, match=r"probes.*no page"):
        writer.submit([sink], step=6, epoch=1, job=broken, what="probes")


def test_the_writer_is_inline_exactly_when_no_core_is_spare(monkeypatch) -> None:
    from types import SimpleNamespace

    from lit_explain.callbacks.base import background_pays_off

    cpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    gpu = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    monkeypatch.delenv("LIT_EXPLAIN_WRITER", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(2)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not background_pays_off(cpu) and background_pays_off(gpu)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert background_pays_off(cpu)
    monkeypatch.setenv("LIT_EXPLAIN_WRITER", "inline")
    assert not background_pays_off(gpu)


def test_host_copies_of_cpu_tensors_are_plain_tensors() -> None:
    maps = torch.rand(2, 1, 4, 4)
    host = to_host(maps=maps, guided=None).get()
    assert torch.equal(host["maps"], maps) and host["guided"] is None


def test_a_failing_picture_fails_the_fit_and_the_cost_is_reported(tmp_path, monkeypatch, caplog) -> None:
    import logging

    from callback_helpers import tiny_datamodule

    from lit_explain.callbacks import ConfusionMatrix, WorstSamples
    from lit_explain.callbacks import worst as worst_module
    from lit_explain.models import ImageClassifier

    def trainer(root):
        return L.Trainer(
            max_epochs=2,
            accelerator="cpu",
            logger=CSVLogger(root),
            callbacks=[WorstSamples(k=4), ConfusionMatrix()],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            limit_train_batches=2,
            limit_val_batches=2,
        )

    monkeypatch.setenv("LIT_EXPLAIN_WRITER", "thread")  # this machine may have no spare core
    with caplog.at_level(logging.INFO):
        fitted = trainer(tmp_path / "ok")
        fitted.fit(ImageClassifier("resnet18"), datamodule=tiny_datamodule())
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("explainability:")]
    assert len(lines) == 1 and "on the training thread (" in lines[0] and "s in the background" in lines[0]
    metrics = (tmp_path / "ok" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "explain/cost_s" in metrics.splitlines()[0]
    pages = list((tmp_path / "ok").rglob("images/explain/worst/page_0/step_*.png"))
    assert len(pages) == 2  # one per epoch, written by the background writer before fit returned

    def broken(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(worst_module, "render_pages", broken)
    monkeypatch.setenv("LIT_EXPLAIN_WRITER", "inline")  # the error surfaces in the other mode too
    with pytest.raises(WriterError, match=r"worst samples.*renderer exploded"):
        trainer(tmp_path / "broken").fit(ImageClassifier("resnet18"), datamodule=tiny_datamodule())
