"""Helpers for the checkpoint, resume and run-folder tests: a tiny copy of the demo recipe, a local HTTP
server, a pickle that leaves a marker file when it is unpickled, and TensorBoard event reading."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import pathlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback

from lit_explain.cli import recipe_path

REPO = Path(__file__).resolve().parents[2]


def tiny_recipe(path: Path, monitor: str | None = None, mode: str | None = None, **data: Any) -> Path:
    """The demo recipe with its own checkpoint and logger sections, tiny data and no explainability callbacks.

    ``monitor``/``mode`` replace the best-checkpoint callback's monitor (e.g. ``epoch``/``min``: it never
    improves after the first epoch).
    """
    recipe = yaml.safe_load(recipe_path().read_text())
    callbacks = [c for c in recipe["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    if monitor is not None:
        callbacks[0]["init_args"].update(monitor=monitor, mode=mode or "max")
    recipe["trainer"].update(callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False)
    recipe["trainer"].update(num_sanity_val_steps=0, log_every_n_steps=1)
    recipe["data"]["init_args"].update(
        {"train_size": 48, "val_size": 16, "test_size": 16, "image_size": 32, "batch_size": 8, **data}
    )
    path.write_text(yaml.safe_dump(recipe))
    return path


class Marker:
    """Unpickling this object creates ``path``: the stand-in for code a malicious checkpoint would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def write_malicious_checkpoint(path: Path, marker: Path, base: dict[str, Any] | None = None) -> Path:
    """A Lightning-looking checkpoint whose pickle would create ``marker`` if loaded without weights_only."""
    checkpoint = dict(base or {"pytorch-lightning_version": "2.6.6", "state_dict": {}})
    checkpoint["payload"] = Marker(marker)
    torch.save(checkpoint, path)
    return path


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (a free port) for the duration; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def scalar_points(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar as TensorBoard shows it (events purged by a restart are dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def scalar_steps(run_dir: Path, tag: str) -> list[int]:
    """Steps of a scalar as TensorBoard shows them."""
    return [step for step, _ in scalar_points(run_dir, tag)]


def scalar_tags(run_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return list(accumulator.Tags()["scalars"])


def run_folders(root: Path) -> list[Path]:
    """Every ``version_*`` folder below ``root``."""
    return sorted(p for p in root.rglob("version_*") if p.is_dir())


class KillAtStep(Callback):
    """SIGKILL this process when training reaches ``step``, before that batch (the earlier batches' logs
    written and flushed, as most of them are in a long run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.logger.experiment.flush()
            os.kill(os.getpid(), signal.SIGKILL)
