"""``python -m lit_explain serve``: the explain service over HTTP (FastAPI app on uvicorn).

Example::

    python -m lit_explain serve --ckpt_path last.ckpt --port 8000 --log_below 0.6
    curl -s localhost:8000/health
"""

from __future__ import annotations

import sys
from pathlib import Path

from jsonargparse import ArgumentParser

from lit_explain.errors import ConfigError, LitExplainError
from lit_explain.inference.cli import add_model_arguments, explainer_from_args
from lit_explain.serve.app import DEFAULT_MAX_BYTES, ServeSettings, create_app, warm_up


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m lit_explain serve",
        description="Serve predictions with Grad-CAM explanations over HTTP (and a web page at /).",
    )
    add_model_arguments(parser)
    parser.add_argument("--host", type=str, default="127.0.0.1", help="address to bind (0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    parser.add_argument(
        "--max_bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest request body in bytes"
    )
    parser.add_argument(
        "--max_batch", type=int, default=8, help="requests per batched forward/backward (1: off)"
    )
    parser.add_argument("--max_wait_ms", type=float, default=5.0, help="how long a request waits for a batch")
    parser.add_argument(
        "--log_below", type=float | None, default=None, help="record requests below this confidence"
    )
    parser.add_argument(
        "--log_dir", type=str, default="low_confidence", help="folder for low-confidence records"
    )
    parser.add_argument("--log_level", type=str, default="info", help="uvicorn log level")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load the model, warm it up and serve until interrupted; returns the exit code."""
    cfg = build_parser().parse_args(argv)
    try:
        if cfg.log_below is not None and not 0.0 < cfg.log_below <= 1.0:
            raise ConfigError(f"--log_below must be a confidence in (0, 1], got {cfg.log_below}")
        if cfg.max_batch < 1 or cfg.max_wait_ms < 0 or cfg.max_bytes < 1:
            raise ConfigError("--max_batch and --max_bytes must be >= 1 and --max_wait_ms >= 0")
        # Rows per forward = requests per batch: the service explains one class per request.
        cfg.batch_size = max(cfg.batch_size, cfg.max_batch)
        explainer = explainer_from_args(cfg, guided=False)
        warm_up(explainer)
        settings = ServeSettings(
            max_bytes=cfg.max_bytes,
            max_batch=cfg.max_batch,
            max_wait_ms=cfg.max_wait_ms,
            log_below=cfg.log_below,
            log_dir=Path(cfg.log_dir),
        )
        app = create_app(explainer, settings)
    except LitExplainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    return 0
