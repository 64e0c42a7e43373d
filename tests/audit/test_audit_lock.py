"""The audit takes its report's lock at the start: a second audit of the same --output is refused at once."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lock_helpers import held_by_another_process

from lit_explain.audit import source
from lit_explain.audit.cli import main
from lit_explain.outputs import AtomicReportDir, OutputBusyError, locked_report, write_json

FAST = ["--quality_samples", "2", "--max_samples", "16", "--progress", "false"]


def busy_line(dest: Path) -> str:
    lock = dest.with_name(f".{dest.name}.lit_explain.lock")
    return f"error: another lit_explain run is writing {dest} (lock {lock}); wait for it or choose another --output"


def test_second_audit_is_refused_before_loading_the_checkpoint(
    shapes_checkpoint: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "report"
    lock = tmp_path / ".report.lit_explain.lock"
    argv = ["--ckpt_path", str(shapes_checkpoint), "--output", str(dest), *FAST]
    with held_by_another_process(lock):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "lit_explain", "audit", *argv],
            capture_output=True,
            text=True,
            timeout=300,
        )
        elapsed = time.perf_counter() - start
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines[-1] == busy_line(dest)
        # Before, the command loaded the checkpoint and its data ("data: ..." is logged right after the
        # model loads) and ran the whole sweep, and only then was refused.
        assert not any(line.startswith("data:") for line in lines), proc.stderr
        assert proc.stdout == ""
        assert elapsed < 60  # interpreter and imports only; a real audit of this checkpoint takes longer
        assert [p.name for p in tmp_path.iterdir()] == [lock.name]  # no report, no temporary folder


def test_refused_audit_never_calls_load_model(
    shapes_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def load_model(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded although another run holds the report")

    monkeypatch.setattr(source, "load_model", load_model)
    dest = tmp_path / "nested" / "report"
    dest.parent.mkdir()
    with held_by_another_process(dest.with_name(".report.lit_explain.lock")):
        assert main(["--ckpt_path", str(shapes_checkpoint), "--output", str(dest), *FAST]) == 2
    assert capsys.readouterr().err.strip() == busy_line(dest)


def test_audit_holds_the_lock_from_loading_to_the_end(
    shapes_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    dest = tmp_path / "new" / "report"  # its parent is created for the lock, and stays with the report
    seen: list[str] = []
    real_load = source.load_model

    def try_second_writer() -> None:
        # Another thread has no claim on this thread's lock: it is refused like another process.
        try:
            AtomicReportDir(dest, overwrite=True, kind="audit").__enter__()
        except OutputBusyError as exc:
            seen.append(str(exc))

    def load_model(*args, **kwargs):
        thread = threading.Thread(target=try_second_writer)
        thread.start()
        thread.join()
        return real_load(*args, **kwargs)

    monkeypatch.setattr(source, "load_model", load_model)
    # The report writer inside reuses the lock the command holds: no deadlock, no refusing itself.
    assert main(["--ckpt_path", str(shapes_checkpoint), "--output", str(dest), *FAST]) == 0
    assert len(seen) == 1 and "another lit_explain run is writing" in seen[0]
    assert (dest / "report.json").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["report"]  # the lock file went with the run
    assert "report:" in capsys.readouterr().out


def test_locked_report_is_reused_by_one_writer_at_a_time(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "report"
    lock = dest.with_name(".report.lit_explain.lock")
    with locked_report(dest) as path:
        assert path == dest and lock.is_file()
        with locked_report(dest):  # nested: nothing taken twice
            pass
        assert lock.is_file()
        first = AtomicReportDir(dest, kind="test")
        with first as tmp:
            write_json(tmp / "a.json", {})
            with pytest.raises(OutputBusyError, match="another lit_explain run is writing"):
                AtomicReportDir(dest, overwrite=True, kind="test").__enter__()  # two writers: still refused
            first.commit()
        assert lock.is_file()  # the writer leaves the lock to the block that took it
        with AtomicReportDir(dest, overwrite=True, kind="test") as tmp:  # the next writer may use it
            write_json(tmp / "b.json", {})
    assert not lock.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["report"]
    # A refused or empty run leaves no folders it created.
    other = tmp_path / "x" / "y" / "report"
    with locked_report(other):
        assert other.parent.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
