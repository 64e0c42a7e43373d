"""Fixtures for the service tests: a quick checkpoint, an explainer, PNG bytes and a running server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from serve_helpers import free_port, start_server, stop_server

from lit_explain.inference import Explainer
from lit_explain.models import ImageClassifier

CLASSES = ["circle", "square", "triangle", "star", "cross", "ring"]


@pytest.fixture(scope="session")
def serve_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lit_explain checkpoint of an untrained 64x64 ResNet-18 (explaining does not need accuracy)."""
    torch.manual_seed(0)
    model = ImageClassifier(
        "resnet18", num_classes=6, class_names=CLASSES, mean=[0.5] * 3, std=[0.25] * 3, input_size=[64, 64]
    )
    path = tmp_path_factory.mktemp("serve") / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


@pytest.fixture(scope="session")
def serve_explainer(serve_ckpt: Path) -> Explainer:
    return Explainer.from_checkpoint(serve_ckpt, guided=False)


@pytest.fixture(scope="session")
def live_server(serve_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A real server in a subprocess on a free loopback port, with a small body limit and low-confidence log.

    Its output (uvicorn's and lit_explain's log at level info) goes to the file ``server_log``.
    """
    port = free_port()
    log_dir = tmp_path_factory.mktemp("lowconf")
    server_log = tmp_path_factory.mktemp("server") / "server.log"
    proc = start_server(
        serve_ckpt,
        port,
        "--max_bytes",
        "300000",
        "--max_pixels",
        "1000000",
        "--log_below",
        "1.0",
        "--log_dir",
        str(log_dir),
        log_level="info",
        log=server_log,
    )
    try:
        yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "log_dir": log_dir, "server_log": server_log}
    finally:
        stop_server(proc)
