"""Read checkpoints without running code (``weights_only=True`` for paths, ``file://`` and ``http(s)://``
URLs) and write them atomically.

Every command reads checkpoints through :func:`read_checkpoint`. Lightning's own loader fetches ``http``
URLs through ``torch.hub`` with ``weights_only=False`` (and caches them by file name), so the CLI installs
:class:`SafeCheckpointIO` as the trainer's checkpoint IO for ``fit/validate/test/predict``.

Lightning's own writer goes through fsspec, which writes a local file under ``$TMPDIR`` and then
``shutil.move``s it: across file systems that is a copy onto the destination, so a full disk truncates
``last.ckpt``. :func:`write_checkpoint` writes next to the destination, fsyncs and renames instead.
"""

from __future__ import annotations

import errno
import io
import pickle
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_explain.errors import LitExplainError
from lit_explain.outputs import OutputError, write_atomic

DOWNLOAD_TIMEOUT_S = 60.0
# What Lightning needs to restore a model, and in addition to resume training.
LIGHTNING_KEYS = ("pytorch-lightning_version", "state_dict")
RESUME_KEYS = ("epoch", "global_step", "loops", "optimizer_states")


class CheckpointError(LitExplainError, ValueError):
    """The file is missing, unreadable, unsafe, or not a checkpoint lit_explain can use."""


class CheckpointSaveError(LitExplainError):
    """A checkpoint could not be written (full disk, no permission); the file it would replace is intact."""


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def local_path(source: str | Path) -> Path | None:
    """The local file a source names (a path or a ``file://`` URL); None for a remote URL."""
    if isinstance(source, Path):
        return source
    parsed = urlparse(source)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    # A one-letter scheme is a Windows drive ("C:\\..."), not a URL.
    return Path(source) if len(parsed.scheme) <= 1 else None


# What torch's weights-only unpickler says when a pickle names code (a global, a call, an object build).
_UNSAFE = re.compile(r"GLOBAL|allowlist|add_safe_globals|reduce|Can only (build|create)", re.IGNORECASE)


def _refusal(name: str, reason: str) -> CheckpointError:
    """One line for a pickle that the weights-only loader refused; never torch's advice to turn it off."""
    needed = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", reason)
    what = f"loading it would call {needed.group(1)}" if needed else f"it holds more than tensors ({reason})"
    return CheckpointError(
        f"refused to load {name!r} as unsafe: {what}, and lit_explain loads checkpoints with weights_only=True "
        "(tensors and plain data only, never code). Use a checkpoint written by lit_explain, or re-save "
        "trusted weights as a plain state dict"
    )


def _unpickler_reason(text: str) -> str:
    """What torch's weights-only error says about the file, without its paragraphs of advice (one of which
    is to retry with weights_only=False: never what lit_explain tells anyone)."""
    body = text.split("Check the documentation of torch.load", 1)[0]
    if "WeightsUnpickler error:" in body:
        body = body.split("WeightsUnpickler error:", 1)[1]
    lines = (line.strip() for line in body.splitlines())
    kept = [line for line in lines if line and "weights_only" not in line and "Weights only" not in line]
    return _one_line(" ".join(kept))


def _load(file: IO[bytes], name: str, map_location: Any) -> Any:
    try:
        with warnings.catch_warnings():
            # A bare pickle (not torch.save's zip) makes torch warn about its protocol on stderr; the
            # outcome, loaded or refused, is said in one line anyway.
            warnings.filterwarnings("ignore", message=r".*pickle protocol", category=UserWarning)
            return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(str(exc))
        if _UNSAFE.search(reason):
            raise _refusal(name, reason) from None
        raise CheckpointError(
            f"{name!r} is not a readable PyTorch checkpoint (truncated, corrupt or another format: {reason})"
        ) from None
    except EOFError:
        raise CheckpointError(f"{name!r} is not a readable PyTorch checkpoint (it ends too early)") from None
    except Exception as exc:  # zip reader errors for truncated files, KeyError for other formats, ...
        raise CheckpointError(
            f"{name!r} is not a readable PyTorch checkpoint (truncated, corrupt or another format: "
            f"{type(exc).__name__}: {_one_line(exc)})"
        ) from None


def _download(url: str) -> IO[bytes]:
    """The body of ``url`` in a temporary file (deleted when closed), never in a shared cache."""
    try:
        response = urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise CheckpointError(f"cannot download checkpoint {url!r}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CheckpointError(f"cannot download checkpoint {url!r}: {_one_line(reason)}") from None
    file = tempfile.TemporaryFile()  # noqa: SIM115 (returned open; the caller closes it)
    try:
        with response:
            shutil.copyfileobj(response, file, length=1 << 20)
    except OSError as exc:
        file.close()
        raise CheckpointError(f"cannot download checkpoint {url!r}: {_one_line(exc)}") from None
    file.seek(0)
    return file


def _open_remote(source: str) -> IO[bytes]:
    if source.startswith(("http://", "https://")):
        return _download(source)
    import fsspec

    try:
        return fsspec.open(source, "rb").open()
    except (ImportError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {source!r}: {_one_line(exc)}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {source!r}: {_one_line(exc)}") from None


def read_checkpoint(source: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True`` from a path or URL; a clear error when it cannot.

    Example:
        >>> checkpoint = read_checkpoint("lightning_logs/shapes_demo/version_0/checkpoints/last.ckpt")
        >>> checkpoint = read_checkpoint("https://example.org/models/shapes.ckpt")  # downloaded, not cached
    """
    name = str(source)
    path = local_path(source)
    if path is not None:
        if not path.is_file():
            raise CheckpointError(f"checkpoint {name!r} does not exist or is not a file")
        if path.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {name!r} is empty (0 bytes)")
        try:
            file: IO[bytes] = path.open("rb")
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {name!r}: {exc.strerror or exc}") from None
    else:
        file = _open_remote(name)
    with file:
        checkpoint = _load(file, name, map_location)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{name!r} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def check_lightning_checkpoint(checkpoint: Mapping[str, Any], name: str, resume: bool = False) -> None:
    """Raise :class:`CheckpointError` unless Lightning can restore from ``checkpoint`` (and resume, if asked)."""
    missing = [key for key in LIGHTNING_KEYS if key not in checkpoint]
    if missing:
        keys = ", ".join(sorted(map(str, checkpoint))[:8]) or "none"
        raise CheckpointError(
            f"{name!r} is not a Lightning checkpoint (no {' or '.join(map(repr, missing))}; its keys: {keys}); "
            "--ckpt_path takes a .ckpt written by `python -m lit_explain fit`"
        )
    missing = [key for key in RESUME_KEYS if key not in checkpoint] if resume else []
    if missing:
        raise CheckpointError(
            f"{name!r} holds weights but no training state ({', '.join(missing)} missing, e.g. saved with "
            "save_weights_only), so fit cannot resume from it; validate, test and predict can use it"
        )


def _save_failure(path: Path, existed: bool, exc: OutputError) -> CheckpointSaveError:
    kept = (
        "the previous checkpoint is intact"
        if existed
        else "no partial file was left (there was no earlier checkpoint at that path)"
    )
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
        then = "resume with --ckpt_path last" if existed else "run again"
        return CheckpointSaveError(
            f"no space left on the device of {path.parent} while saving {path}; {kept}. Free some space and {then}"
        )
    return CheckpointSaveError(f"{exc} while saving a checkpoint; {kept}")


def write_checkpoint(checkpoint: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: the old file stays whole until the new one is complete.

    Raises :class:`CheckpointSaveError` (one line) when the disk is full or the folder is not writable.

    Example:
        >>> write_checkpoint(read_checkpoint("runs/best.ckpt"), "runs/copy.ckpt")  # doctest: +SKIP
    """
    path = Path(path)
    # Serialised in memory first (as Lightning does): a write error then surfaces as the OSError it is,
    # not as a RuntimeError from inside torch's zip writer.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    existed = path.is_file()
    try:
        return write_atomic(path, lambda handle: handle.write(buffer.getbuffer()), overwrite=True)
    except OutputError as exc:
        raise _save_failure(path, existed, exc) from None


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with every load ``weights_only=True``, from paths and URLs alike, and every
    local save atomic (:func:`write_checkpoint`).

    :meth:`preload` reads and checks a checkpoint early (before a run folder exists); the trainer's later
    load of the same source gets that dict instead of reading the file again.

    Example:
        >>> trainer = L.Trainer(plugins=[SafeCheckpointIO()])
        >>> trainer.validate(model, datamodule=data, ckpt_path="https://example.org/shapes.ckpt")
    """

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: dict[str, dict[str, Any]] = {}

    def preload(self, source: str | Path, resume: bool = False) -> dict[str, Any]:
        """Read and check a Lightning checkpoint now; the next :meth:`load_checkpoint` of it returns it."""
        checkpoint = read_checkpoint(source)
        check_lightning_checkpoint(checkpoint, str(source), resume=resume)
        self._preloaded[str(source)] = checkpoint
        return checkpoint

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        target = local_path(str(path))
        if target is None or storage_options is not None:
            # Object stores (s3://, gs://) commit a whole object or nothing; Lightning's writer does that.
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_checkpoint(checkpoint, target)

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Callable | str | torch.device | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is False:
            raise CheckpointError(
                "lit_explain loads checkpoints with weights_only=True only; drop weights_only=false"
            )
        preloaded = self._preloaded.pop(str(path), None)
        if preloaded is not None:
            return preloaded
        checkpoint = read_checkpoint(path, map_location=map_location or "cpu")
        check_lightning_checkpoint(checkpoint, str(path))
        return checkpoint
