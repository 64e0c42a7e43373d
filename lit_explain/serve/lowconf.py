"""Recording low-confidence requests for review: one complete folder per request, or none at all."""

from __future__ import annotations

import io
import os
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from lit_explain.inference.explainer import Explanation
from lit_explain.outputs import AtomicReportDir, dumps_json, read_marker, write_bytes
from lit_explain.render import encode_png
from lit_explain.serve.errors import logger

MARKER_ALLOWANCE = 4096  # the marker file that commit() adds to each record


def _image_extension(raw: bytes) -> str:
    try:
        with Image.open(io.BytesIO(raw)) as image:
            return (image.format or "bin").lower()
    except Exception:  # the request decoded fine; a failing re-open only loses the extension
        return "bin"


def _files_size(folder: Path) -> int:
    """Bytes of the files directly in ``folder`` (a record is flat); 0 where it cannot be read."""
    try:
        with os.scandir(folder) as entries:
            return sum(
                e.stat(follow_symlinks=False).st_size for e in entries if e.is_file(follow_symlinks=False)
            )
    except OSError:
        return 0


def records_size(directory: Path) -> int:
    """Bytes held by the low-confidence records lit_explain wrote into ``directory`` (nothing else counts)."""
    try:
        with os.scandir(directory) as entries:
            folders = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:  # missing (nothing recorded yet) or unreadable: the first write reports the problem
        return 0
    return sum(_files_size(f) for f in folders if (read_marker(f) or {}).get("kind") == "low-confidence")


class LowConfidenceLog:
    """Writes requests whose confidence is below ``threshold`` into ``directory``, one folder each.

    A folder holds the request's image as sent, the heatmap, the overlay, the model input and
    ``record.json`` (the response without the base64 pictures, plus the explanation summary). It is
    written through :class:`~lit_explain.outputs.AtomicReportDir`: under a hidden name, renamed when
    complete, and a folder left half-written by a killed server is removed by the next record.

    The records in ``directory`` (those of earlier runs included) may hold ``max_bytes`` at most: a record
    that would go over it is not written, and the first such one logs a warning; after it, recording
    stops. Whoever can reach the service can otherwise fill the disk with low-confidence images.

    Example:
        >>> log = LowConfidenceLog(Path("low_confidence"), threshold=0.5, max_bytes=200_000_000)
        >>> log.maybe_record(raw_bytes, explanation, response)  # doctest: +SKIP
        PosixPath('low_confidence/20260101T120000.000000Z_1a2b3c4d')
    """

    def __init__(self, directory: Path, threshold: float, max_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.threshold = threshold
        self.max_bytes = max_bytes
        self.written = 0
        self.used: int | None = None  # bytes the records hold; counted from the folder on first use
        self.full = False
        self._lock = threading.Lock()

    def maybe_record(self, raw: bytes, result: Explanation, response: dict[str, Any]) -> Path | None:
        """Write the record when ``result`` is below the threshold and it fits; returns its folder or None.

        Raises :class:`~lit_explain.outputs.OutputError` when the folder cannot be written.
        """
        if result.confidence >= self.threshold or self.full:
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        files = self._files(raw, result, response, stamp)
        size = sum(len(data) for data in files.values()) + MARKER_ALLOWANCE
        if not self._reserve(size):
            return None
        try:
            target = AtomicReportDir(
                self.directory / f"{stamp}_{uuid.uuid4().hex[:8]}", kind="low-confidence"
            )
            with target as tmp:
                for name, data in files.items():
                    write_bytes(tmp / name, data)
                folder = target.commit()  # the folder appears complete or not at all
        except BaseException:
            self._reserve(-size)
            raise
        with self._lock:
            self.written += 1
        return folder

    def _files(
        self, raw: bytes, result: Explanation, response: dict[str, Any], stamp: str
    ) -> dict[str, bytes]:
        explained = result.primary
        record = {
            "time": stamp,
            "threshold": self.threshold,
            **{k: v for k, v in response.items() if not k.startswith("gradcam_")},
            "summary": result.summary(),
        }
        return {
            f"request_image.{_image_extension(raw)}": raw,
            "heatmap.png": encode_png(explained.heatmap),
            "overlay.png": encode_png(explained.overlay),
            "model_input.png": encode_png(result.image),
            "record.json": (dumps_json(record) + "\n").encode("utf-8"),
        }

    def _reserve(self, size: int) -> bool:
        """Count ``size`` more bytes (negative: give them back) if they fit; the first refusal warns."""
        # Requests record from several threads at once: checking and counting happen under one lock.
        with self._lock:
            if self.used is None:
                self.used = records_size(self.directory) if self.max_bytes is not None else 0
            if self.max_bytes is None or size < 0 or self.used + size <= self.max_bytes:
                self.used += size
                return True
            if self.full:
                return False
            self.full = True
        logger.warning(
            "the low-confidence log %s holds %.1f MB of records, and the next would pass the limit of "
            "%.1f MB (--log_max_mb); no more low-confidence requests are recorded",
            self.directory,
            self.used / 1e6,
            self.max_bytes / 1e6,
        )
        return False


__all__ = ["LowConfidenceLog", "records_size"]
