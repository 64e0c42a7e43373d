"""An interrupted or impossible audit leaves nothing behind and says so in one line."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lit_explain.audit.cli import main
from lit_explain.outputs import MARKER

FAST = ["--max_samples", "8", "--quality_samples", "0", "--cam_batch_size", "8", "--progress", "false"]


def _default_sigint() -> None:
    # A test runner started in the background by a non-interactive shell inherits SIGINT ignored, and so would
    # the audit (Python keeps an ignored SIGINT ignored): give the child the disposition a terminal user has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(ckpt: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lit_explain", "audit", "--ckpt_path", str(ckpt), "--output", str(out), *FAST],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def _temporaries(parent: Path) -> list[Path]:
    return sorted(parent.glob(".report.tmp-*"))


def _wait_for_temporary(proc: subprocess.Popen, parent: Path, timeout: float = 240) -> Path:
    """The audit's temporary report folder, as soon as it exists (the audit is then mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in _temporaries(parent) if (p / MARKER).is_file()]
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the audit ended (rc {proc.returncode}) before its temporary folder was seen")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the audit never created its temporary folder")


def test_kill_9_leftovers_are_cleaned_by_the_next_run(shapes_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = _start(shapes_checkpoint, out)
    stale = _wait_for_temporary(proc, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert stale.is_dir() and not out.exists()  # what kill -9 leaves: a temporary folder, no report
    assert str(proc.pid) in stale.name
    assert main(["--ckpt_path", str(shapes_checkpoint), "--output", str(out), *FAST]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # the stale folder is gone


def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing(shapes_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = _start(shapes_checkpoint, out)
    _wait_for_temporary(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "audit interrupted; no report written"
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_folder_of_a_live_run_is_left_alone(tmp_path: Path) -> None:
    from lit_explain.outputs import AtomicReportDir, clean_stale

    with AtomicReportDir(tmp_path / "report") as tmp:
        # Another process (here: a child that cannot be this one) looks at the folder while we write.
        code = f"from lit_explain.outputs import clean_stale; print(len(clean_stale({str(tmp_path)!r})))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == "0", done.stderr
        assert tmp.is_dir()
        assert clean_stale(tmp_path) == []


def test_unwritable_destinations_give_one_line(
    shapes_checkpoint: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    real_mkdir = Path.mkdir

    def read_only(self: Path, *args, **kwargs) -> None:
        if self.name.startswith(".report.tmp-"):
            raise PermissionError(13, "Permission denied")
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["--ckpt_path", str(shapes_checkpoint), "--output", str(tmp_path / "report"), *FAST]) == 2
    # The audit says which data settings it used before it writes; the failure itself is one line.
    *before, last = capsys.readouterr().err.splitlines()
    assert last == (
        f"error: cannot write the report {tmp_path / 'report'}: {tmp_path} is not writable "
        "(Permission denied); choose another output location"
    )
    assert all(line.startswith("data: ") for line in before), before
    monkeypatch.undo()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["--ckpt_path", str(shapes_checkpoint), "--output", str(blocker / "report"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "afile is a file, not a folder" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@contextmanager
def _read_only_folder(path: Path) -> Iterator[Path]:
    """An empty folder that the test process cannot write into, whether or not it runs as root.

    Root ignores permission bits, so for root the folder is a read-only tmpfs mount (needs CAP_SYS_ADMIN,
    which a root CI container usually has); where mounting is refused the test skips and says why.
    """
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o500)
        try:
            yield path
        finally:
            path.chmod(0o700)
        return
    mount = [shutil.which("mount") or "mount", "-t", "tmpfs", "-o", "ro,size=64k", "ro_test", str(path)]
    try:
        mounted = subprocess.run(mount, capture_output=True, text=True)
    except OSError as exc:
        pytest.skip(f"root ignores folder permissions and no read-only tmpfs could be mounted: {exc}")
    if mounted.returncode != 0:
        pytest.skip(
            "root ignores folder permissions and no read-only tmpfs could be mounted "
            f"({mounted.stderr.strip()}); run as a non-root user or with CAP_SYS_ADMIN"
        )
    try:
        yield path
    finally:
        subprocess.run([shutil.which("umount") or "umount", str(path)], check=True)


def test_read_only_parent_gives_one_line(shapes_checkpoint: Path, tmp_path: Path, capsys) -> None:
    with _read_only_folder(tmp_path / "ro") as parent:
        assert not os.access(parent, os.W_OK)  # truly read-only for this process, or the test proves nothing
        assert main(["--ckpt_path", str(shapes_checkpoint), "--output", str(parent / "report"), *FAST]) == 2
        assert list(parent.iterdir()) == []
    # The audit's progress log ("data: ...") may precede it; the failure itself is one line, no traceback.
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == err.splitlines()[-1:] and "Traceback" not in err, err
    assert errors[0].startswith("error: cannot ") and f": {parent} is not writable (" in errors[0]
