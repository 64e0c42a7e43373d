"""Recording low-confidence requests for review: one complete folder per request, or none at all."""

from __future__ import annotations

import io
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from PIL import Image

from lit_explain.inference.explainer import Explanation
from lit_explain.outputs import AtomicReportDir, write_bytes, write_json
from lit_explain.render import encode_png


def _image_extension(raw: bytes) -> str:
    try:
        with Image.open(io.BytesIO(raw)) as image:
            return (image.format or "bin").lower()
    except Exception:  # the request decoded fine; a failing re-open only loses the extension
        return "bin"


class LowConfidenceLog:
    """Writes requests whose confidence is below ``threshold`` into ``directory``, one folder each.

    A folder holds the request's image as sent, the heatmap, the overlay, the model input and
    ``record.json`` (the response without the base64 pictures, plus the explanation summary). It is
    written through :class:`~lit_explain.outputs.AtomicReportDir`: under a hidden name, renamed when
    complete, and a folder left half-written by a killed server is removed by the next record.

    Example:
        >>> log = LowConfidenceLog(Path("low_confidence"), threshold=0.5)
        >>> log.maybe_record(raw_bytes, explanation, response)  # doctest: +SKIP
        PosixPath('low_confidence/20260101T120000.000000Z_1a2b3c4d')
    """

    def __init__(self, directory: Path, threshold: float) -> None:
        self.directory = Path(directory)
        self.threshold = threshold
        self.written = 0

    def maybe_record(self, raw: bytes, result: Explanation, response: dict[str, Any]) -> Path | None:
        """Write the record when ``result`` is below the threshold; returns its folder (None otherwise).

        Raises :class:`~lit_explain.outputs.OutputError` when the folder cannot be written.
        """
        if result.confidence >= self.threshold:
            return None
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = AtomicReportDir(self.directory / f"{stamp}_{uuid.uuid4().hex[:8]}", kind="low-confidence")
        with target as tmp:
            explained = result.primary
            write_bytes(tmp / f"request_image.{_image_extension(raw)}", raw)
            write_bytes(tmp / "heatmap.png", encode_png(explained.heatmap))
            write_bytes(tmp / "overlay.png", encode_png(explained.overlay))
            write_bytes(tmp / "model_input.png", encode_png(result.image))
            record = {
                "time": stamp,
                "threshold": self.threshold,
                **{k: v for k, v in response.items() if not k.startswith("gradcam_")},
                "summary": result.summary(),
            }
            write_json(tmp / "record.json", record)
            folder = target.commit()  # the folder appears complete or not at all
        self.written += 1
        return folder


__all__ = ["LowConfidenceLog"]
