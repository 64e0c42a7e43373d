"""One writer per output: flock'ed lock files, and stale temporary folders judged by their lock, not a PID."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from lock_helpers import held_by_another_process

from lit_explain import outputs
from lit_explain.outputs import (
    LOCK,
    MARKER,
    AtomicReportDir,
    OutputBusyError,
    OutputError,
    claim_output_dir,
    clean_stale,
    locked_output_dir,
    refuse_symlinks,
    write_json,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp_folder(parent: Path, name: str, pid: int, host: str | None = None, boot: str | None = None) -> Path:
    path = parent / name
    (path / "worst_predictions").mkdir(parents=True)
    (path / "worst_predictions" / "class_0.png").write_bytes(b"x")
    marker = {"tool": "lit_explain", "state": "writing", "pid": pid, "host": host or socket.gethostname()}
    if boot is not None:
        marker["boot"] = boot
    (path / MARKER).write_text(json.dumps(marker))
    return path


def test_a_live_run_whose_pid_looks_dead_keeps_its_temporary_folder(tmp_path: Path) -> None:
    # Before: the PID in the name was dead here, so the folder was deleted under the live writer
    # (the audit then committed a report without worst_predictions/).
    dead = _dead_pid()
    live = _temp_folder(tmp_path, f".report.tmp-{dead}-abcd", dead)
    with held_by_another_process(tmp_path / ".report.lit_explain.lock"):
        assert clean_stale(tmp_path) == []
        assert (live / "worst_predictions" / "class_0.png").is_file()
    # The writer is gone (its lock is free): now the folder is abandoned, and the lock file goes too.
    assert clean_stale(tmp_path) == [live]
    assert list(tmp_path.iterdir()) == []


def test_a_free_lock_means_abandoned_whatever_the_pid_or_host_name(tmp_path: Path) -> None:
    # Before: a PID that runs (reused by an unrelated process) kept the folder forever.
    reused = _temp_folder(tmp_path, f".a.tmp-{os.getppid()}-abcd", os.getppid())
    # Written by a container of this kernel (its own host name, same boot id): its lock is ours to test.
    container = _temp_folder(tmp_path, ".b.tmp-1-abcd", 1, host="container-1", boot=outputs._boot_id())
    # Another machine on a shared disk: its locks are not visible here, so it is left alone.
    remote = _temp_folder(tmp_path, ".c.tmp-1-abcd", 1, host="elsewhere", boot="another-kernel")
    expected = [reused, container] if outputs._boot_id() else [reused]
    assert sorted(clean_stale(tmp_path)) == sorted(expected)
    assert remote.is_dir()


def test_a_second_writer_of_a_report_is_refused_at_once(tmp_path: Path) -> None:
    dest = tmp_path / "report"
    first = AtomicReportDir(dest, kind="test")
    with first as tmp:
        write_json(tmp / "a.json", {})
        # Before: the second writer went ahead and both renamed their folders onto the same report.
        with pytest.raises(OutputBusyError) as info:
            AtomicReportDir(dest, overwrite=True, kind="test").__enter__()
        lock = tmp_path / ".report.lit_explain.lock"
        assert str(info.value) == (
            f"another lit_explain run is writing {dest} (lock {lock}); wait for it or choose another --output"
        )
        assert tmp.is_dir() and lock.is_file()
        assert clean_stale(tmp_path) == []  # a cleaner in this process sees the lock as taken, too
        first.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # the lock file went with the run


def test_report_writer_in_another_process_blocks_this_one(tmp_path: Path) -> None:
    with held_by_another_process(tmp_path / ".r.lit_explain.lock"):
        with pytest.raises(OutputBusyError, match="another lit_explain run is writing"):
            AtomicReportDir(tmp_path / "r").__enter__()
        assert [p.name for p in tmp_path.iterdir()] == [".r.lit_explain.lock"]  # no temporary folder made
    with AtomicReportDir(tmp_path / "r") as tmp:  # the lock file a holder left is taken over
        assert tmp.is_dir()
    assert list(tmp_path.iterdir()) == []


def test_locked_output_dir_one_writer_nested_claims_and_no_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with locked_output_dir(out, kind="explain") as path:
        assert (path / LOCK).is_file()
        with locked_output_dir(path / "a_jpg", kind="explain") as inner:  # same thread: no second lock
            assert not (inner / LOCK).exists()
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                with locked_output_dir(out, kind="explain"):
                    pass
            except OutputBusyError as exc:
                errors.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert len(errors) == 1 and f"(lock {out / LOCK})" in str(errors[0])
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "a_jpg"]
    busy = pytest.raises(OutputBusyError, match="choose another --output")
    with held_by_another_process(out / LOCK), busy, locked_output_dir(out, kind="explain"):
        pass
    # A lock file left by a killed run is neither "someone else's file" nor an obstacle.
    user = tmp_path / "user"
    user.mkdir()
    (user / LOCK).write_bytes(b"")
    with locked_output_dir(user, kind="explain"):
        pass
    assert sorted(p.name for p in user.iterdir()) == [MARKER]


def test_file_systems_without_locks_warn_and_never_clean(tmp_path: Path, monkeypatch) -> None:
    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(outputs.fcntl, "flock", no_locks)
    stale = _temp_folder(tmp_path, f".r.tmp-{_dead_pid()}-abcd", 1)
    assert clean_stale(tmp_path) == [] and stale.is_dir()  # cannot tell live from dead: leave it
    warned = pytest.warns(UserWarning, match="does not support file locks")
    with warned, locked_output_dir(tmp_path / "out", kind="explain"):
        pass


def test_refuse_symlinks_inside_the_output(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_jpg").symlink_to(outside)
    with pytest.raises(OutputError, match=r"a_jpg is a symlink \(to .*outside\) inside --output"):
        refuse_symlinks(out, [out / "a_jpg" / "x.png"])
    refuse_symlinks(out, [out / "b_jpg" / "x.png", out / "c.csv"])  # missing or real: fine
    linked_root = tmp_path / "root_link"
    linked_root.symlink_to(out)
    refuse_symlinks(linked_root, [linked_root / "b_jpg" / "x.png"])  # --output itself may be a link


def test_a_marker_being_written_by_a_concurrent_claim_is_not_someone_elses_file(tmp_path: Path) -> None:
    # Before: the second of two runs claiming the same new folder saw the first one's half-written
    # marker ("..lit_explain-output.<hex>.tmp") and refused the folder as holding files it did not write.
    out = tmp_path / "out"
    out.mkdir()
    (out / "..lit_explain-output.463bf0c3695b.tmp").write_text("{")
    assert claim_output_dir(out, kind="explain") == out
    user = tmp_path / "user"
    user.mkdir()
    (user / ".lit_explain-output.tmp").write_text("mine")  # not our pattern: still the user's
    with pytest.raises(OutputError, match="did not write"):
        claim_output_dir(user, kind="explain")


def test_taking_a_reports_lock_removes_its_killed_runs_temporaries(tmp_path: Path) -> None:
    # kill -9 during `audit --overwrite`, then a rerun without --overwrite: the rerun is refused (the old
    # report exists), but the killed run's temporary folder goes as soon as the rerun holds the lock.
    from lit_explain.outputs import locked_report

    report = tmp_path / "report"
    report.mkdir()
    stale = _temp_folder(tmp_path, f".report.tmp-{_dead_pid()}-abcd", 1)
    other = _temp_folder(tmp_path, f".other.tmp-{_dead_pid()}-abcd", 1)
    with held_by_another_process(tmp_path / ".other.lit_explain.lock"), locked_report(report):
        assert not stale.exists()
        assert other.is_dir()  # another report's run still holds its lock
