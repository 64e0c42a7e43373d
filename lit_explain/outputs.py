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
- **One writer at a time.** A command holds an exclusive ``flock`` on the output's lock file while it
  writes (:func:`locked_output_dir`: ``.lit_explain-output.lock`` inside a folder commands write into;
  :class:`AtomicReportDir`: ``.NAME.lit_explain.lock`` beside the report folder, which gets replaced;
  :func:`locked_report` takes that one from a command's start).
  A second run writing the same output stops at once with :class:`OutputBusyError`. ``flock`` works
  across PID namespaces (containers) on one host, so a temporary folder counts as abandoned only when
  its lock is free, never because its PID looks dead. Lock files are removed when their run ends.
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
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import IO, Any

from lit_explain.errors import LitExplainError

try:  # POSIX; without it (Windows) writers are not locked and clean_stale removes nothing
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK",
    "MARKER",
    "AtomicReportDir",
    "OutputBusyError",
    "OutputError",
    "OutputExistsError",
    "check_output_dir",
    "claim_output_dir",
    "clean_stale",
    "is_lit_explain_output",
    "json_safe",
    "locked_output_dir",
    "locked_report",
    "read_marker",
    "refuse_symlinks",
    "remove_output_dir",
    "safe_name",
    "write_atomic",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
]

MARKER = ".lit_explain-output"
LOCK = ".lit_explain-output.lock"  # inside a folder commands write into; see locked_output_dir
_REPORT_LOCK = ".{name}.lit_explain.lock"  # beside a report folder (the folder itself gets replaced)
# Bookkeeping that is never the user's: the marker, the lock, and the marker while it is being written
# (a concurrent run claiming the same new folder must not take that for someone else's file).
_OURS = re.compile(r"\.lit_explain-output(\.lock)?|\.\.lit_explain-output\.[0-9a-f]{12}\.tmp")
TOOL = "lit_explain"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]+$")

PathLike = str | os.PathLike[str]


class OutputError(LitExplainError):
    """An output cannot be written where asked (not ours to replace, a file where a folder must be,
    a read-only or missing parent); the message names the path and what to do."""


class OutputExistsError(OutputError, FileExistsError):
    """An output exists already and overwriting was not asked for."""


class OutputBusyError(OutputError):
    """Another lit_explain run (any process on this host) is writing the same output right now."""


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
        return sorted(p.name for p in directory.iterdir() if not _OURS.fullmatch(p.name))
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
        foreign = sorted(p.name for p in path.iterdir() if not _OURS.fullmatch(p.name))
        if foreign:
            raise _not_ours(path, foreign, what)
    return path


def _other_kind(marker: Mapping[str, Any], kind: str) -> str | None:
    """The marker's kind when another command wrote it (``explain`` and ``explain-folder`` are one family)."""
    found = marker.get("kind")
    if not isinstance(found, str) or found.split("-")[0] == kind.split("-")[0]:
        return None  # markers from before kinds were recorded count as the same command's
    return found


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
    marker = read_marker(path)
    if marker is not None:
        other = _other_kind(marker, kind)
        if other is not None:
            raise OutputError(
                f"{path} holds a lit_explain {other} output; {kind} results are not mixed into it: "
                f"choose another {what}"
            )
        return path
    make_dirs(path)
    _write_marker(path, kind=kind)
    return path


# ---------------------------------------------------------------------------------------------- locks

# Errors that mean "this file system has no flock" (NFS without lockd, some FUSE mounts), not "busy".
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_held = threading.local()  # folders this thread holds the lock of (nested writes inside do not lock again)


def _open_lock(path: Path) -> int:
    flags = os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, os.O_RDWR | flags, 0o666)
    except PermissionError:
        # Created by another user (umask 022): a local flock needs only read access.
        return os.open(path, os.O_RDONLY | flags)


def _try_lock(path: Path) -> int | None:
    """A descriptor holding an exclusive flock on ``path`` (created if missing); None while another holds it.

    A holder unlinks the file before unlocking it (:func:`_unlock`). If that happened between our open
    and our flock, we would hold a lock on a file nobody else opens any more: check that the locked
    file is still the one at ``path``, and start again if not.
    """
    assert fcntl is not None
    while True:
        fd = _open_lock(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
                return fd
        os.close(fd)


def _unlock(fd: int, path: Path) -> None:
    # Unlinked while still locked, and only if it is the file we locked (see _try_lock).
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False)):
            os.unlink(path)
    os.close(fd)


def _acquire(lock: Path, output: Path, what: str) -> int | None:
    """Lock ``lock`` for writing ``output`` or raise :class:`OutputBusyError`; None where nothing can lock."""
    if fcntl is None:
        return None
    try:
        fd = _try_lock(lock)
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            warnings.warn(
                f"{lock.parent} does not support file locks: a second run writing {output} at the same "
                "time would not be stopped",
                stacklevel=3,
            )
            return None
        raise _os_error("lock", lock, exc) from exc
    if fd is None:
        # Refused at once rather than waited for: two runs aimed at one output are a mistake, and the
        # second would only replace the first one's results; the user learns it now, not after a hang.
        raise _busy(lock, output, what)
    return fd


def _busy(lock: Path, output: Path, what: str) -> OutputBusyError:
    return OutputBusyError(
        f"another lit_explain run is writing {output} (lock {lock}); wait for it or choose another {what}"
    )


@contextlib.contextmanager
def locked_output_dir(path: PathLike, kind: str, what: str = "--output") -> Iterator[Path]:
    """:func:`claim_output_dir`, then hold the folder's lock (:data:`LOCK` inside it) until the block ends.

    A second run writing the same folder meanwhile (any process on this host, containers included)
    gets :class:`OutputBusyError` at once. Within the block, the same thread may claim the folder or
    sub-folders again (one image's results inside a folder run) without locking twice. The lock file
    is removed on exit; one left by a killed run is taken over by the next.

    Example:
        >>> with locked_output_dir("explanations", kind="explain") as out:   # doctest: +SKIP
        ...     write_json(out / "summary.json", {})
    """
    path = claim_output_dir(path, kind, what)
    key = path.resolve()
    held: set[Path] = _held.__dict__.setdefault("dirs", set())
    if any(key == h or h in key.parents for h in held):
        yield path
        return
    fd = _acquire(path / LOCK, path, what)
    held.add(key)
    try:
        yield path
    finally:
        held.discard(key)
        if fd is not None:
            _unlock(fd, path / LOCK)


def refuse_symlinks(root: PathLike, paths: Iterable[PathLike], what: str = "--output") -> None:
    """Raise :class:`OutputError` if a path below ``root`` that is about to be written crosses a symlink.

    ``root`` itself may be a symlink (the user chose it). A link inside it (a result folder or file)
    may point anywhere: writing through it, or replacing it, would touch what lit_explain does not own,
    so it is refused; the link and its target are left as they are.
    """
    root = Path(root)
    seen: set[Path] = set()
    for path in paths:
        current = root
        for part in Path(path).relative_to(root).parts:
            current = current / part
            if current in seen:
                continue
            seen.add(current)
            if current.is_symlink():
                raise OutputError(
                    f"{current} is a symlink (to {os.readlink(current)}) inside {what} {root}; "
                    f"lit_explain never writes through one: remove the link or choose another {what}"
                )
            if not current.exists():
                break  # nothing below a missing entry exists yet


# --------------------------------------------------------------------------------------- report dirs


@cache
def _boot_id() -> str | None:
    # One value per running kernel, shared by its containers: whose flock we see.
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _same_locks(marker: Mapping[str, Any]) -> bool:
    """Whether the run that wrote ``marker`` took its locks where this process sees them.

    Same host name (also after a reboot), or the same running kernel (a container with its own host
    name). A temporary folder from another machine on a shared disk is left alone.
    """
    host = marker.get("host")
    return host in (None, socket.gethostname()) or (
        marker.get("boot") is not None and marker.get("boot") == _boot_id()
    )


def _report_lock(destination: Path) -> Path:
    return destination.with_name(_REPORT_LOCK.format(name=destination.name))


def _held_reports() -> dict[Path, bool]:
    """Report locks this thread holds through :func:`locked_report` -> whether an AtomicReportDir uses it."""
    return _held.__dict__.setdefault("reports", {})


def _report_key(destination: Path) -> Path:
    lock = _report_lock(Path(destination).absolute())
    return lock.parent.resolve() / lock.name


@contextlib.contextmanager
def locked_report(destination: PathLike, what: str = "--output") -> Iterator[Path]:
    """Hold a report's lock (``.NAME.lit_explain.lock`` beside it) from now until the block ends.

    For a command that works for long (loading a model, a sweep) before its :class:`AtomicReportDir`
    writes the report: a second run aimed at the same report (any process on this host) gets
    :class:`OutputBusyError` at once instead of at the end. Within the block, one
    :class:`AtomicReportDir` at a time for that destination in this thread uses this lock instead of
    taking it again; nested ``locked_report`` blocks for it do nothing. Missing parent folders are
    created (the lock lives there) and removed again on exit if they are still empty, as is the lock
    file. Yields the destination as an absolute path.

    Example:
        >>> with locked_report("reports/audit"):                      # doctest: +SKIP
        ...     model = load_model("best.ckpt")   # a concurrent run is refused before this
        ...     run_audit(model, datamodule, "reports/audit")
    """
    destination = Path(destination).absolute()
    held = _held_reports()
    if _report_key(destination) in held:
        yield destination
        return
    created = [p for p in [destination.parent, *destination.parent.parents] if not p.exists()]
    make_dirs(destination.parent)
    lock = _report_lock(destination)
    try:
        fd = _acquire(lock, destination, what)
    except BaseException:
        _remove_empty(created)
        raise
    key = _report_key(destination)
    held[key] = False
    try:
        # A killed run's temporaries go now, while the lock says nobody writes them, even when this run
        # is refused next (an existing report without --overwrite): "removed by the next run".
        _clean_stale(destination.parent, own=destination.name)
        yield destination
    finally:
        del held[key]
        if fd is not None:
            _unlock(fd, lock)
        _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) that are still empty; anything else stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def clean_stale(parent: PathLike) -> list[Path]:
    """Remove the temporary folders that killed lit_explain runs left in ``parent``; returns them.

    Only folders named ``.NAME.tmp-PID-<random hex>`` / ``.NAME.old-PID-<random hex>`` are candidates, and
    only while ``NAME``'s lock (``.NAME.lit_explain.lock``) is free: a live run holds it as long as its
    temporary folder exists, whatever PID namespace it runs in, so the recorded PID decides nothing.
    Among those, folders holding lit_explain's marker (written on this host or kernel) are removed, and
    unmarked ones only when empty (killed before the marker was written). A ``.old`` folder is the
    previous report moved aside during a replacement: it is deleted only if ``NAME`` exists again, and
    moved back to ``NAME`` if the kill came between the two renames.
    """
    return _clean_stale(Path(parent), own=None)


def _clean_stale(parent: Path, own: str | None) -> list[Path]:
    """:func:`clean_stale`; ``own`` names a report whose lock the caller holds (its folders are stale)."""
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TMP_RE.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        if match["name"] == own:
            if _remove_stale(entry, match):
                removed.append(entry)
            continue
        if fcntl is None:
            continue  # no way to tell a live run from a dead one: leave it
        lock = _report_lock(parent / match["name"])
        try:
            fd = _try_lock(lock)
        except OSError:
            continue  # cannot lock here: cannot tell, leave it
        if fd is None:
            continue  # a live run is writing it
        try:
            if _remove_stale(entry, match):
                removed.append(entry)
        finally:
            _unlock(fd, lock)
    return removed


def _remove_stale(entry: Path, match: re.Match[str]) -> bool:
    """Remove (or restore) one abandoned temporary folder, its lock held by the caller; True if removed."""
    marker = read_marker(entry)
    if marker is None:
        # Killed between creating the folder and writing its marker: only an empty one is ours for sure.
        try:
            entry.rmdir()
        except OSError:
            return False
        return True
    if not _same_locks(marker):
        return False
    final = entry.parent / match["name"]
    try:
        if match["kind"] == "old" and not final.exists() and not final.is_symlink():
            os.rename(entry, final)  # the interrupted replacement: put the previous report back
            return False
        shutil.rmtree(entry)
    except OSError:
        return False
    return True


class AtomicReportDir:
    """A report folder that appears whole or not at all, and replaces only an earlier lit_explain report.

    Inside ``with``, the report's lock (``.NAME.lit_explain.lock`` beside it) is held, so a second run
    writing the same report stops at once with :class:`OutputBusyError` (a command that works for long
    before writing takes it earlier with :func:`locked_report`, which this then uses); files go to
    ``.NAME.tmp-PID-<random hex>`` next to the destination (created in ``__enter__``, with the umask's
    permissions, holding a marker); :meth:`commit` writes the marker listing every file, then renames
    the folder into place. An existing destination is refused unless ``overwrite`` *and* it is an
    earlier lit_explain report whose files are all its own (:func:`is_lit_explain_output`); a missing
    or empty one is fine. Leaving ``with`` without :meth:`commit` (an error, Ctrl-C) deletes the
    temporary folder; a run killed outright leaves it, and a later run removes it once its lock is free
    (:func:`clean_stale`). The lock file is removed when the block ends.

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
        self._lock: int | None = None
        self._borrowed: Path | None = None  # the locked_report lock this writer uses, if any

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
        marker = read_marker(dest)
        if marker is None or foreign_entries(dest):
            raise _not_ours(dest, foreign_entries(dest), "--output")
        other = _other_kind(marker, self.kind)
        if other is not None:
            raise OutputError(
                f"{dest} holds a lit_explain {other} output; --overwrite replaces only an earlier "
                f"{self.kind} output: choose another --output"
            )
        if not self.overwrite:
            raise OutputExistsError(
                f"{dest} already exists (an earlier report); choose another --output or pass --overwrite to replace it"
            )

    def __enter__(self) -> Path:
        self.check()  # the clearest message for a bad destination comes before anything is created
        parent = self.destination.parent
        make_dirs(parent)
        self._take_lock()
        try:
            _clean_stale(parent, own=self.destination.name)
            self.check()  # again, now that no other run can change it
            self.path = self._make_temp(parent)
            _write_marker(
                self.path,
                kind=self.kind,
                state="writing",
                pid=os.getpid(),
                host=socket.gethostname(),
                boot=_boot_id(),
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.path

    def _take_lock(self) -> None:
        """Take the report's lock, or use the one :func:`locked_report` holds for it in this thread."""
        held, key = _held_reports(), _report_key(self.destination)
        if key not in held:
            self._lock = _acquire(_report_lock(self.destination), self.destination, "--output")
            return
        if held[key]:  # another writer of this report inside the same locked_report block
            raise _busy(_report_lock(self.destination), self.destination, "--output")
        held[key], self._borrowed = True, key

    def _make_temp(self, parent: Path) -> Path:
        while True:
            path = parent / f".{self.destination.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                path.mkdir()  # 0o777 & ~umask (tempfile.mkdtemp would make it 0o700)
                return path
            except FileExistsError:
                continue
            except OSError as exc:
                raise _os_error("write the report", self.destination, exc) from exc

    def __exit__(self, *exc_info: object) -> None:
        try:
            if not self.committed and self.path is not None:
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            if self._borrowed is not None:
                key, self._borrowed = self._borrowed, None
                if key in _held_reports():  # still held: the next writer in that block may use it
                    _held_reports()[key] = False
            if self._lock is not None:
                lock, self._lock = self._lock, None
                _unlock(lock, _report_lock(self.destination))

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
