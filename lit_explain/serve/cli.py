"""``python -m lit_explain serve``: the explain service over HTTP (FastAPI app on uvicorn).

Example::

    python -m lit_explain serve --ckpt_path last.ckpt --port 8000 --log_below 0.6
    curl -s localhost:8000/health
"""

from __future__ import annotations

import copy
import socket
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from lit_explain.errors import ConfigError, LitExplainError
from lit_explain.inference.cli import add_model_arguments, explainer_from_args
from lit_explain.serve.app import create_app, warm_up
from lit_explain.serve.bodies import DEFAULT_BODY_BUDGET
from lit_explain.serve.decoding import DEFAULT_DECODE_BUDGET
from lit_explain.serve.protocol import head_deadline_protocol
from lit_explain.serve.service import DEFAULT_MAX_BYTES, ServeSettings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m lit_explain serve",
        description="Serve predictions with Grad-CAM explanations over HTTP (and a web page at /).",
    )
    add_model_arguments(parser)  # --device auto: cuda when available, else cpu, as in every command
    parser.add_argument("--host", type=str, default="127.0.0.1", help="address to bind (0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    parser.add_argument(
        "--max_bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest request body in bytes"
    )
    parser.add_argument(
        "--decode_budget",
        type=int,
        default=DEFAULT_DECODE_BUDGET,
        help="pixels decoded at once across all requests, others wait (about 5 bytes of memory per RGB pixel; RGBA, palette and 16-bit count 4x)",
    )
    parser.add_argument(
        "--body_budget",
        type=int,
        default=DEFAULT_BODY_BUDGET,
        help="bytes of request bodies held at once across all requests (about 2 bytes of memory each); "
        "a request that does not fit waits up to --body_wait_s, then gets 503 with Retry-After",
    )
    parser.add_argument(
        "--body_wait_s", type=float, default=5.0, help="how long a request waits for the body budget"
    )
    parser.add_argument(
        "--body_timeout_s", type=float, default=30.0, help="seconds a request body may take to arrive (408)"
    )
    parser.add_argument(
        "--header_timeout_s",
        type=float,
        default=10.0,
        help="seconds a connection may take to send its request line and headers before it is closed",
    )
    parser.add_argument(
        "--cors_origin",
        type=str | None,
        default=None,
        help="the one web origin allowed to call the service from a browser, e.g. http://localhost:3000 "
        "(default: none, no CORS headers); also the one page besides the server's own allowed to send "
        "multipart uploads",
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
    parser.add_argument(
        "--log_max_mb",
        type=float,
        default=200.0,
        help="megabytes the low-confidence records may fill; past it a warning is logged and recording stops",
    )
    parser.add_argument(
        "--log_level",
        type=str,
        default="info",
        help=f"log level of uvicorn and lit_explain: {', '.join(LOG_LEVELS)}",
    )
    return parser


def logging_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration plus the ``lit_explain`` loggers on its ``default`` (stderr) handler."""
    from uvicorn.config import LOG_LEVELS as UVICORN_LEVELS
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["lit_explain"] = {
        "handlers": ["default"],
        "level": UVICORN_LEVELS[level],
        "propagate": False,
    }
    return config


def _check(cfg: Namespace) -> None:
    if cfg.log_below is not None and not 0.0 < cfg.log_below <= 1.0:
        raise ConfigError(f"--log_below must be a confidence in (0, 1], got {cfg.log_below}")
    if cfg.max_batch < 1 or cfg.max_wait_ms < 0 or cfg.max_bytes < 1 or cfg.decode_budget < 1:
        raise ConfigError(
            "--max_batch, --max_bytes and --decode_budget must be >= 1 and --max_wait_ms >= 0, got "
            f"{cfg.max_batch}, {cfg.max_bytes}, {cfg.decode_budget} and {cfg.max_wait_ms}"
        )
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"--log_level {cfg.log_level!r} is not one of {', '.join(LOG_LEVELS)}")


def check_can_listen(host: str, port: int) -> None:
    """Fail in one line, not with uvicorn's log lines and exit 3, when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            # As uvicorn binds: SO_REUSEADDR, so a port in TIME_WAIT is not mistaken for a taken one.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"cannot listen on {host}:{port} ({reason}); choose another --port, or stop what is using it"
        ) from None


def _settings(cfg: Namespace) -> ServeSettings:
    """The service's settings from the command line (checked, before any model is loaded)."""
    return ServeSettings(
        max_bytes=cfg.max_bytes,
        max_batch=cfg.max_batch,
        max_wait_ms=cfg.max_wait_ms,
        decode_budget=cfg.decode_budget,
        body_budget=cfg.body_budget,
        body_wait_s=cfg.body_wait_s,
        body_timeout_s=cfg.body_timeout_s,
        header_timeout_s=cfg.header_timeout_s,
        cors_origin=cfg.cors_origin,
        log_below=cfg.log_below,
        log_dir=Path(cfg.log_dir),
        log_max_mb=cfg.log_max_mb,
    )


def main(argv: list[str] | None = None) -> int:
    """Load the model, warm it up and serve until interrupted; returns the exit code."""
    cfg = build_parser().parse_args(argv)
    try:
        _check(cfg)
        settings = _settings(cfg)
        # Rows per forward = requests per batch: the service explains one class per request.
        cfg.batch_size = max(cfg.batch_size, cfg.max_batch)
        explainer = explainer_from_args(cfg, guided=False)
        warm_up(explainer)
        app = create_app(explainer, settings)
        check_can_listen(cfg.host, cfg.port)
    except LitExplainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level=cfg.log_level,
        log_config=logging_config(cfg.log_level),
        # uvicorn times out idle kept-alive connections only; this also closes slow or silent new ones.
        http=head_deadline_protocol(settings.header_timeout_s),
    )
    return 0
