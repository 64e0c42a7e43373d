"""Every file and folder a lit_explain command writes goes through here.

One set of rules for all outputs (PNG panels, JSON and CSV summaries, exported weights, report folders):

- **Atomic.** Bytes go to a hidden temporary file in the destination's folder, are flushed and
  ``fsync``-ed, then moved into place: readers never see half a file, a crash leaves no partial one.
  A report folder is written as ``.NAME.tmp-PID-<random hex>`` and renamed into place when complete.
- **Never clobbered unless asked.** Without ``overwrite`` an existing file is never replaced, even if it
  appears while the write runs (the final move is a hard link, which fails if the name exists; file
  systems without hard links fall back to check-then-rename).
- **Only lit_explain's own outputs are replaced.** Every folder lit_explain creates holds a small marker
  file, :data:`MARKER`; a report folder's marker lists the files it wrote. ``overwrite`` replaces a
  report folder only when everything in it is listed there, and writes into an output folder only
  when it is new, empty or marked. Anything else is refused with one line, never moved or deleted.
- **One permission rule: the umask.** Files are created ``0o666 & ~umask`` and folders
  ``0o777 & ~umask``, like any file a shell command creates (``tempfile`` would make them private).
- **One name rule.** :func:`safe_name` turns a class name into a file-name fragment.
- **Strict JSON.** NaN and infinities are written as ``null``, so browsers and ``json.loads`` agree.

This module depends only on the standard library and :mod:`lit_explain.errors`, so every layer may use it.

Example:
    >>> from lit_explain.outputs import write_json, safe_name
    >>> safe_name("Tomato: late blight")
    'Tomato_late_blight'
    >>> write_json("out/summary.json", {"loss": float("nan")})   # doctest: +SKIP
    PosixPath('out/summary.json')
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from lit_explain.errors import LitExplainError

__all__ = [
    "MARKER",
    "AtomicReportDir",
    "OutputError",
    "OutputExistsError",
    "check_output_dir",
    "claim_output_dir",
    "clean_stale",
    "is_lit_explain_output",
    "json_safe",
    "read_marker",
    "remove_output_dir",
    "safe_name",
    "write_atomic",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
]

MARKER = ".lit_explain-output"
TOOL = "lit_explain"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")

PathLike = str | os.PathLike[str]


class OutputError(LitExplainError):
    """An output cannot be written where asked (not ours to replace, a file where a folder must be,
    a read-only or missing parent); the message names the path and what to do."""


class OutputExistsError(OutputError, FileExistsError):
    """An output exists already and overwriting was not asked for."""


# ---------------------------------------------------------------------------------------------- names


def safe_name(name: object, limit: int = 80) -> str:
    """A class or file name as a file-name fragment: letters (any script), digits, ``.``, ``-``, ``_``.

    Runs of anything else become one ``_``; leading/trailing dots and underscores are dropped (no hidden
    files, no ``..``); an empty result becomes ``"class"``.

    Example:
        >>> safe_name("maple leaf / dry"), safe_name("../etc"), safe_name("  ")
        ('maple_leaf_dry', 'etc', 'class')
    """
    cleaned = re.sub(r"[^\w.-]+", "_", str(name)).strip("._")
    return cleaned[:limit].rstrip("._") or "class"


# --------------------------------------------------------------------------------------- permissions


def _umask() -> int:
    # os.umask can only be read by setting it; put it straight back (the window is one syscall).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a new folder gets: ``0o777 & ~umask``."""
    return 0o777 & ~_umask()


def make_dirs(path: PathLike) -> Path:
    """``mkdir -p`` with the umask's permissions; a clear :class:`OutputError` when that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)  # mode 0o777 is masked by the umask, as for mkdir(1)
    except FileExistsError:
        raise OutputError(f"cannot create the folder {path}: {_blocking_file(path)} is a file") from None
    except NotADirectoryError:
        raise OutputError(f"cannot create the folder {path}: {_blocking_file(path)} is a file") from None
    except PermissionError:
        raise OutputError(
            f"cannot create the folder {path}: permission denied in {_existing_parent(path)} "
            "(read-only?); choose another output location"
        ) from None
    except OSError as exc:
        raise OutputError(f"cannot create the folder {path}: {exc.strerror or exc}") from None
    return path


def _existing_parent(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return path


def _blocking_file(path: Path) -> Path:
    for parent in [*reversed(path.parents), path]:
        if parent.exists() and not parent.is_dir():
            return parent
    return path


def _os_error(action: str, path: Path, exc: OSError) -> OutputError:
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(
            f"cannot {action} {path}: {path.parent} is not writable ({exc.strerror}); "
            "choose another output location"
        )
    if isinstance(exc, NotADirectoryError | FileNotFoundError):
        return OutputError(f"cannot {action} {path}: {_blocking_file(path.parent)} is not a folder")
    if exc.errno == errno.ENOSPC:
        return OutputError(f"cannot {action} {path}: no space left on the device")
    return OutputError(f"cannot {action} {path}: {exc.strerror or exc}")


# ---------------------------------------------------------------------------------------------- files


def _exists_error(dest: Path) -> OutputExistsError:
    return OutputExistsError(f"{dest} already exists; pass --overwrite (overwrite=True) to replace it")


def write_atomic(
    path: PathLike, write: Callable[[IO[bytes]], Any], overwrite: bool = False, mkdir: bool = True
) -> Path:
    """Write a file through ``write(handle)`` atomically (temp file in the same folder, fsync, move).

    Args:
        path: destination file.
        write: called once with a binary file handle (e.g. ``lambda f: torch.save(obj, f)``).
        overwrite: replace an existing file instead of raising :class:`OutputExistsError`.
        mkdir: create missing parent folders (with the umask's permissions).

    Returns:
        The destination path.

    Example:
        >>> write_atomic("model.pth", lambda f: torch.save(state, f))   # doctest: +SKIP
        PosixPath('model.pth')
    """
    dest = Path(path)
    if dest.is_dir():
        raise OutputError(f"{dest} is a folder; give a file path")
    if not overwrite and (dest.exists() or dest.is_symlink()):
        raise _exists_error(dest)
    if mkdir:
        make_dirs(dest.parent)
    tmp = _open_temp(dest)
    try:
        with os.fdopen(tmp[1], "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp[0], dest)
        else:
            _move_no_clobber(tmp[0], dest)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise _os_error("write", dest, exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp[0].unlink()
    return dest


def _open_temp(dest: Path) -> tuple[Path, int]:
    while True:
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 lets the umask decide, as for any new file (tempfile.mkstemp would make it 0o600).
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _os_error("write", dest, exc) from exc


def _move_no_clobber(tmp: Path, dest: Path) -> None:
    try:
        os.link(tmp, dest)  # fails if dest exists, atomically: no window between "check" and "replace"
    except FileExistsError:
        raise _exists_error(dest) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # File systems without hard links (FAT, some network mounts): check, then rename (small race).
        if dest.exists():
            raise _exists_error(dest) from None
        os.replace(tmp, dest)


def write_bytes(path: PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Atomically write ``data`` to ``path``; see :func:`write_atomic`."""
    return write_atomic(path, lambda handle: handle.write(data), overwrite)


def write_text(path: PathLike, text: str, overwrite: bool = False) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return write_bytes(path, text.encode("utf-8"), overwrite)


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf as None, tuples as lists, tensors/arrays via ``tolist()``, keys as strings.

    Example:
        >>> json_safe({"a": float("nan"), 1: (2.0, float("inf"))})
        {'a': None, '1': [2.0, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors, numpy arrays and scalars
        return json_safe(value.tolist())
    return value


def dumps_json(payload: Any, indent: int | None = 2) -> str:
    """Strict JSON text (NaN/inf -> null) of ``payload``."""
    return json.dumps(json_safe(payload), indent=indent, allow_nan=False)


def write_json(path: PathLike, payload: Any, overwrite: bool = False, indent: int | None = 2) -> Path:
    """Atomically write ``payload`` as strict JSON (NaN and infinities become ``null``)."""
    return write_text(path, dumps_json(payload, indent) + "\n", overwrite)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if value is None:
        return ""
    return value


def write_csv(
    path: PathLike,
    rows: Iterable[Mapping[str, Any] | Sequence[Any]],
    fields: Sequence[str],
    overwrite: bool = False,
) -> Path:
    """Atomically write ``rows`` (mappings keyed by ``fields``, or sequences in that order) with a header.

    Floats are written with 6 significant digits, NaN and None as empty cells.

    Example:
        >>> write_csv("classes.csv", [{"id": 0, "acc": 0.5}], fields=["id", "acc"])   # doctest: +SKIP
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(fields))
    for row in rows:
        cells = [row.get(f, "") for f in fields] if isinstance(row, Mapping) else list(row)
        writer.writerow([_csv_cell(v) for v in cells])
    return write_text(path, buffer.getvalue(), overwrite)


# ------------------------------------------------------------------------------------------- markers


def read_marker(directory: PathLike) -> dict[str, Any] | None:
    """The marker lit_explain left in ``directory``, or None when there is none (or it is not ours)."""
    path = Path(directory) / MARKER
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 8 << 20:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == TOOL else None


def _write_marker(directory: Path, **fields: Any) -> None:
    write_json(directory / MARKER, {"tool": TOOL, **fields}, overwrite=True, indent=1)


def _tree(directory: Path) -> list[str]:
    """Every file and symlink under ``directory`` (relative, POSIX style), without following symlinks."""
    out = []
    for root, dirs, files in os.walk(directory):
        rel = Path(root).relative_to(directory)
        out += [(rel / f).as_posix() for f in files]
        out += [(rel / d).as_posix() for d in dirs if (Path(root) / d).is_symlink()]
    return sorted(p for p in out if p != MARKER)


def foreign_entries(directory: PathLike) -> list[str]:
    """What in ``directory`` lit_explain did not write: everything when unmarked; else what is unlisted.

    A marker without a file list (an output folder that commands write into) vouches for the whole folder.
    """
    directory = Path(directory)
    marker = read_marker(directory)
    if marker is None:
        return sorted(p.name for p in directory.iterdir() if p.name != MARKER)
    entries = _tree(directory)
    listed = marker.get("files")
    if listed is None:
        return []
    listed = set(listed)
    return [e for e in entries if e not in listed]


def is_lit_explain_output(path: PathLike) -> bool:
    """True when ``path`` is a folder lit_explain wrote and nothing else has been put into it since."""
    path = Path(path)
    return (
        path.is_dir()
        and not path.is_symlink()
        and read_marker(path) is not None
        and not foreign_entries(path)
    )


def _not_ours(path: Path, foreign: list[str], what: str) -> OutputError:
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return OutputError(
        f"{path} holds files lit_explain did not write ({shown}); it is never replaced or deleted: "
        f"choose a new or empty folder for {what}"
    )


def remove_output_dir(path: PathLike) -> None:
    """Delete a folder lit_explain wrote (:func:`is_lit_explain_output`); refuse anything else."""
    path = Path(path)
    if not path.exists():
        return
    if not is_lit_explain_output(path):
        raise _not_ours(path, foreign_entries(path) if path.is_dir() else [path.name], "this output")
    shutil.rmtree(path)


def check_output_dir(path: PathLike, what: str = "--output") -> Path:
    """Raise :class:`OutputError` unless ``path`` is missing, an empty folder or a folder lit_explain marked.

    Cheap and side-effect free: commands call it before loading a model, so a bad ``--output`` is
    reported first. :func:`claim_output_dir` applies the same rule and then creates/marks the folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(
            f"{what} {path} is a file, not a folder; give a folder path (it is created if missing)"
        )
    blocker = _blocking_file(path)
    if blocker != path and blocker.exists() and not blocker.is_dir():
        raise OutputError(f"{what} {path}: {blocker} is a file, not a folder")
    if path.is_dir() and read_marker(path) is None:
        foreign = sorted(p.name for p in path.iterdir())
        if foreign:
            raise _not_ours(path, foreign, what)
    return path


def claim_output_dir(path: PathLike, kind: str, what: str = "--output") -> Path:
    """Make ``path`` a folder that commands may write files into, or refuse it.

    New or empty folders are created/adopted and marked; a folder lit_explain marked earlier is reused
    (whether files in it may be replaced is each writer's ``overwrite``); a file, or a folder holding
    anything else, is refused with :class:`OutputError` whatever ``overwrite`` says.

    Example:
        >>> claim_output_dir("explanations", kind="explain")   # doctest: +SKIP
        PosixPath('explanations')
    """
    path = check_output_dir(path, what)
    if read_marker(path) is not None:
        return path
    make_dirs(path)
    _write_marker(path, kind=kind)
    return path


# --------------------------------------------------------------------------------------- report dirs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(parent: PathLike) -> list[Path]:
    """Remove the temporary folders that killed lit_explain runs left in ``parent``; returns them.

    Only folders named ``.NAME.tmp-PID-<random hex>`` / ``.NAME.old-PID-<random hex>`` whose PID no longer runs and that
    hold lit_explain's marker (written on this host) are removed, or that are empty (killed before the
    marker was written). A ``.old`` folder is the previous
    report moved aside during a replacement: it is deleted only if ``NAME`` exists again, and moved
    back to ``NAME`` if the kill came between the two renames.
    """
    parent = Path(parent)
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_RE.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        marker = read_marker(entry)
        if marker is None:
            # Killed between creating the folder and writing its marker: only an empty one is ours for sure.
            with contextlib.suppress(OSError):
                entry.rmdir()
                removed.append(entry)
            continue
        if marker.get("host", socket.gethostname()) != socket.gethostname():
            continue
        final = parent / match["name"]
        with contextlib.suppress(OSError):
            if match["kind"] == "old" and not final.exists() and not final.is_symlink():
                os.rename(entry, final)  # the interrupted replacement: put the previous report back
                continue
            shutil.rmtree(entry)
            removed.append(entry)
    return removed


class AtomicReportDir:
    """A report folder that appears whole or not at all, and replaces only an earlier lit_explain report.

    Inside ``with``, files go to ``.NAME.tmp-PID-<random hex>`` next to the destination (created in
    ``__enter__``, with the umask's permissions, holding a marker with this process's PID);
    :meth:`commit` writes the marker listing every file, then renames the folder into place. An
    existing destination is refused unless ``overwrite`` *and* it is an earlier lit_explain report
    whose files are all its own (:func:`is_lit_explain_output`); a missing or empty one is fine.
    Leaving ``with`` without :meth:`commit` (an error, Ctrl-C) deletes the temporary folder; a run
    killed outright leaves it, and the next run's ``__enter__`` removes it (:func:`clean_stale`).

    Example:
        >>> target = AtomicReportDir("reports/audit", overwrite=True, kind="audit")
        >>> with target as tmp:                                   # doctest: +SKIP
        ...     write_json(tmp / "report.json", {"accuracy": 0.9})
        ...     final = target.commit()
    """

    def __init__(self, destination: PathLike, overwrite: bool = False, kind: str = "report") -> None:
        self.destination = Path(destination).absolute()
        self.overwrite = overwrite
        self.kind = kind
        self.path: Path | None = None
        self.committed = False

    def check(self) -> None:
        """Raise unless the destination may be written: missing, empty, or (with overwrite) our report."""
        dest = self.destination
        if not dest.exists() and not dest.is_symlink():
            blocker = _blocking_file(dest.parent)
            if blocker.exists() and not blocker.is_dir():
                raise OutputError(f"cannot write the report {dest}: {blocker} is a file, not a folder")
            return
        if dest.is_symlink() or not dest.is_dir():
            raise OutputError(
                f"{dest} exists and is not a folder; it is never replaced: choose another --output"
            )
        if not any(dest.iterdir()):
            return
        if read_marker(dest) is None or foreign_entries(dest):
            raise _not_ours(dest, foreign_entries(dest), "--output")
        if not self.overwrite:
            raise OutputExistsError(
                f"{dest} already exists (an earlier report); choose another --output or pass --overwrite to replace it"
            )

    def __enter__(self) -> Path:
        self.check()
        parent = self.destination.parent
        make_dirs(parent)
        clean_stale(parent)
        while True:
            path = parent / f".{self.destination.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                path.mkdir()  # 0o777 & ~umask (tempfile.mkdtemp would make it 0o700)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise _os_error("write the report", self.destination, exc) from exc
        self.path = path
        _write_marker(path, kind=self.kind, state="writing", pid=os.getpid(), host=socket.gethostname())
        return path

    def __exit__(self, *exc_info: object) -> None:
        if not self.committed and self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self) -> Path:
        """Move the finished folder into place (replacing an earlier report when allowed)."""
        if self.path is None:
            raise RuntimeError("commit() outside the with block")
        self.check()
        _write_marker(self.path, kind=self.kind, files=_tree(self.path))
        dest, old = self.destination, None
        try:
            if dest.is_dir() and any(dest.iterdir()):
                old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
                os.rename(dest, old)
            os.rename(self.path, dest)  # also replaces an empty folder atomically
        except OSError as exc:
            if old is not None and not dest.exists():
                os.rename(old, dest)
            raise _os_error("write the report", dest, exc) from exc
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return dest
