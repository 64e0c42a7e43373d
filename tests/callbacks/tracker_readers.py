"""Read back what a run logged, through each tracker's own files and client (imported by name by the tests)."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# W&B's run file (``run-<id>.wandb``) is a LevelDB-style log of protobuf ``Record`` messages: a 7-byte
# file header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks, each with a 7-byte header
# (checksum, length, type: 1 full, 2 first, 3 middle, 4 last). wandb 0.31 no longer ships its Python
# reader (the Go core writes the file), so the tests read the format directly.
_BLOCK = 32768
_HEADER = 7


def wandb_records(path: Path, timeout: float = 60.0) -> list[Any]:
    """Every ``wandb_internal_pb2.Record`` of a finished offline run file, in order.

    ``run.finish()`` can return before W&B's service process has written the file's last records (seen
    under heavy load), so the file is read again until it holds the run's ``exit`` record.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = list(_records(path.read_bytes()))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _records(data: bytes) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, "not a W&B run file"
    pos, parts = _HEADER, []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0 and length == 0:  # block padding
            pos += left
            continue
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 2):
            parts = [chunk]
        else:
            parts.append(chunk)
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            yield record


def wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's history rows: ``{key: value}`` with nested keys joined by ``/`` and values JSON-decoded."""
    (run_file,) = run_dir.glob("*.wandb")
    rows = []
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def wandb_logged(rows: list[dict[str, Any]], tag: str) -> list[tuple[int, dict[str, Any]]]:
    """``(trainer/global_step, {field: value})`` of every history row that logged media under ``tag``."""
    out = []
    for row in rows:
        fields = {k[len(tag) + 1 :]: v for k, v in row.items() if k.startswith(tag + "/")}
        if "_type" in fields:
            out.append((int(row["trainer/global_step"]), fields))
    return out


def wandb_artifact_files(run_dir: Path) -> list[tuple[str, dict[str, Path]]]:
    """``(name, {path inside the artifact: local staged file})`` of every artifact version the run logged."""
    (run_file,) = run_dir.glob("*.wandb")
    found = []
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "artifact":
            artifact = record.artifact
            found.append((artifact.name, {c.path: Path(c.local_path) for c in artifact.manifest.contents}))
    return found


def mlflow_artifacts(client: Any, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file path of an MLflow run, recursively."""
    files = []
    for info in client.list_artifacts(run_id, path):
        files += mlflow_artifacts(client, run_id, info.path) if info.is_dir else [info.path]
    return files


def mlflow_images(client: Any, run_id: str) -> dict[str, list[int]]:
    """Image key -> sorted steps of MLflow's time-stepped images (``images/<key with ~>+step+N+...png``)."""
    out: dict[str, list[int]] = {}
    for path in mlflow_artifacts(client, run_id, "images"):
        name = path.split("/", 1)[1]
        if not name.endswith(".png"):
            continue
        key, _, rest = name.partition("+step+")
        out.setdefault(key.replace("~", "/"), []).append(int(rest.split("+", 1)[0]))
    return {k: sorted(v) for k, v in out.items()}
