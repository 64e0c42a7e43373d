"""The service behind the routes: checked fields -> budgeted decode -> micro-batched explain -> JSON answer."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_explain.errors import ConfigError
from lit_explain.inference.explainer import Explainer, Explanation, UnknownClassError
from lit_explain.inference.preprocess import Prepared
from lit_explain.outputs import OutputError
from lit_explain.render import encode_png
from lit_explain.serve.batching import MicroBatcher
from lit_explain.serve.bodies import (
    DEFAULT_BODY_BUDGET,
    BodyReader,
    class_field,
    image_bytes,
    top_k_field,
)
from lit_explain.serve.budget import Budget
from lit_explain.serve.decoding import DEFAULT_DECODE_BUDGET, ImageDecoder, PixelBudget
from lit_explain.serve.errors import ApiError, logger, shorten
from lit_explain.serve.lowconf import LowConfidenceLog

DEFAULT_MAX_BYTES = 20 * 1024 * 1024
SHOWN_CLASSES = 50  # class names listed in an unknown-class error


@dataclass(frozen=True)
class ServeSettings:
    """Limits and options of the service.

    Attributes:
        max_bytes: largest request body (the base64 image is 4/3 of the file's size).
        max_batch, max_wait_ms: micro-batching (``max_batch=1`` turns it off).
        decode_budget: pixels (width x height, from the images' headers) decoded at once across all
            requests; more wait their turn. Bounds the decoding memory (about 5 bytes per RGB pixel).
        body_budget: bytes of request bodies held at once across all requests (see
            :class:`~lit_explain.serve.bodies.BodyReader`); a request whose body does not fit waits up
            to ``body_wait_s`` seconds, then gets 503 with ``Retry-After``.
        body_timeout_s: seconds a request body may take to arrive (408 after it).
        header_timeout_s: seconds a new connection may take to send a complete request head before the
            server closes it (applied by ``python -m lit_explain serve``'s server, not by the app).
        cors_origin: the one web origin (``http://host:port``) allowed to call the service from a
            browser; None sends no CORS headers, so browsers let no other page read the answers. Multipart
            uploads are accepted from it, from the server's own origin and from requests with no Origin.
        log_below: record requests whose confidence is below this into ``log_dir`` (None: off).
        log_dir: where the low-confidence records go.
        log_max_mb: megabytes of records ``log_dir`` may hold; past it one warning is logged and
            recording stops.
        png_level: zlib level of the returned PNGs (1: fast).

    Example:
        >>> ServeSettings(max_bytes=5_000_000, log_below=0.5).decode_budget
        100000000
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_batch: int = 8
    max_wait_ms: float = 5.0
    decode_budget: int = DEFAULT_DECODE_BUDGET
    body_budget: int = DEFAULT_BODY_BUDGET
    body_wait_s: float = 5.0
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    cors_origin: str | None = None
    log_below: float | None = None
    log_dir: Path = Path("low_confidence")
    log_max_mb: float = 200.0
    png_level: int = 1

    def __post_init__(self) -> None:
        check_limits(self)


@dataclass
class _Work:
    prepared: Prepared  # only the small model input goes to the batch; the decoded image is gone
    target: int | None
    top_k: int


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")


def check_limits(settings: ServeSettings) -> None:
    """Raise :class:`~lit_explain.errors.ConfigError` naming the option when a limit cannot work."""
    if settings.body_budget < 1 or settings.log_max_mb <= 0:
        raise ConfigError(
            f"--body_budget must be >= 1 and --log_max_mb > 0, got {settings.body_budget} and {settings.log_max_mb}"
        )
    if settings.body_wait_s < 0 or settings.body_timeout_s <= 0 or settings.header_timeout_s <= 0:
        raise ConfigError(
            "--body_wait_s must be >= 0 and --body_timeout_s, --header_timeout_s > 0 (seconds), got "
            f"{settings.body_wait_s}, {settings.body_timeout_s} and {settings.header_timeout_s}"
        )
    origin = settings.cors_origin
    if origin is not None and not _ORIGIN.fullmatch(origin):
        raise ConfigError(
            f"--cors_origin must be one web origin such as http://localhost:3000 (scheme, host and port, no "
            f"path or '*'), got {shorten(origin, 60)}"
        )


def _b64_png(image: Any, level: int) -> str:
    return base64.b64encode(encode_png(image, compress_level=level)).decode("ascii")


def _unknown_class_message(name: str | int, names: list[str]) -> str:
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    if isinstance(name, int):
        return f"class index {shorten(name)} is out of range: the model has {len(names)} classes ({shown})"
    return f"unknown class name {shorten(name)}; the model's classes are: {shown}"


class ExplainService:
    """One explainer served to concurrent requests (the routes in :mod:`lit_explain.serve.app` call it).

    Example:
        >>> service = ExplainService(explainer, ServeSettings())        # doctest: +SKIP
        >>> await service.explain({"image": b64}, target=None)          # doctest: +SKIP
        {'prediction': 'star', 'confidence': 0.91, ...}
    """

    def __init__(self, explainer: Explainer, settings: ServeSettings) -> None:
        self.explainer = explainer
        self.settings = settings
        self.log = (
            LowConfidenceLog(settings.log_dir, settings.log_below, round(settings.log_max_mb * 1e6))
            if settings.log_below is not None
            else None
        )
        self.budget = PixelBudget(settings.decode_budget)
        self.body_budget = Budget(settings.body_budget, what="body budget")
        self.bodies = BodyReader(
            settings.max_bytes,
            self.body_budget,
            settings.body_wait_s,
            settings.body_timeout_s,
            cors_origin=settings.cors_origin,
        )
        self.decoder = ImageDecoder(explainer.preprocess, self.budget)
        self.batcher: MicroBatcher[_Work, tuple[dict[str, Any], Explanation]] = MicroBatcher(
            self.run_batch, settings.max_batch, settings.max_wait_ms
        )
        self.started = time.time()

    def class_target(self, payload: dict[str, Any]) -> int:
        """The index of the class the request names; 422 without one, 404 for one the model lacks."""
        name = class_field(payload)
        try:
            return self.explainer.class_index(name)
        except UnknownClassError as exc:
            names = list(exc.valid)
            raise ApiError(
                404,
                _unknown_class_message(name, names),
                valid_classes=names[:SHOWN_CLASSES],
                num_classes=len(names),
                truncated=len(names) > SHOWN_CLASSES,
            ) from None

    async def explain(
        self, payload: dict[str, Any], target: int | None, request_id: str = "-"
    ) -> dict[str, Any]:
        """Decode the request's image, explain ``target`` (None: the prediction) and build the answer."""
        top_k = top_k_field(payload, len(self.explainer.class_names))
        raw = image_bytes(payload.get("image"))
        prepared = await self.decoder(raw, request_id)
        response, result = await self.batcher.submit(_Work(prepared, target, top_k))
        if self.log is not None:
            # Written from this request's own thread, not the batch's: slow disks never hold up the model.
            await asyncio.to_thread(self._record, raw, result, response, request_id)
        return response

    def run_batch(self, items: list[_Work]) -> list[tuple[dict[str, Any], Explanation] | Exception]:
        """One batched explain; building each answer can fail for that request alone."""
        results = self.explainer.explain_prepared(
            [w.prepared for w in items],
            [w.target for w in items],
            [0 if w.target is not None else 1 for w in items],
            report_k=[w.top_k for w in items],
        )
        out: list[tuple[dict[str, Any], Explanation] | Exception] = []
        for work, result in zip(items, results, strict=True):
            try:
                out.append((self._answer(work, result), result))
            except Exception as exc:  # raised to this request only; the error middleware logs it
                out.append(exc)
        return out

    def _answer(self, work: _Work, result: Explanation) -> dict[str, Any]:
        explained = result.primary
        return {
            "prediction": result.prediction,
            "confidence": result.confidence,
            "top_k": [{"class_name": n, "probability": p} for n, _, p in result.top_k[: work.top_k]],
            "class_name": explained.class_name,
            "class_probability": explained.probability,
            "class_rank": explained.rank,
            "method": result.method,
            "layer": result.layer,
            "gradcam_heatmap": _b64_png(explained.heatmap, self.settings.png_level),
            "gradcam_overlay": _b64_png(explained.overlay, self.settings.png_level),
        }

    def _record(self, raw: bytes, result: Explanation, response: dict[str, Any], request_id: str) -> None:
        assert self.log is not None
        try:
            folder = self.log.maybe_record(raw, result, response)
        except (OSError, OutputError) as exc:  # a full disk must not fail the request itself
            logger.warning("request %s: cannot record a low-confidence request: %s", request_id, exc)
            # The exception names server paths; the client only learns that recording failed.
            response["low_confidence_log_error"] = "the record could not be written; the server log has why"
            return
        if folder is not None:
            response["logged"] = folder.name

    def health(self) -> dict[str, Any]:
        """Liveness, what is loaded, and the batching and decoding counters."""
        explainer, settings = self.explainer, self.settings
        return {
            "status": "ok",
            "num_classes": len(explainer.class_names),
            "method": explainer.method,
            "layer": explainer.layer_name,
            "input_size": list(explainer.preprocess.input_size),
            "in_channels": explainer.preprocess.in_channels,
            "device": str(explainer.device),
            "batching": {
                "max_batch": settings.max_batch,
                "max_wait_ms": settings.max_wait_ms,
                **self.batcher.stats.as_dict(),
            },
            "decoding": {"max_pixels": explainer.preprocess.max_pixels, **self.budget.as_dict()},
            "bodies": {"max_bytes": settings.max_bytes, **self.body_budget.as_dict()},
            "low_confidence_logged": self.log.written if self.log is not None else None,
            "low_confidence_log_full": self.log.full if self.log is not None else None,
            "uptime_s": round(time.time() - self.started, 1),
        }


__all__ = ["DEFAULT_MAX_BYTES", "ExplainService", "ServeSettings", "check_limits"]
