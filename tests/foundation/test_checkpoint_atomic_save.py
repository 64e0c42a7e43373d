"""Checkpoints are written atomically (temp file in the destination folder, fsync, rename): a full disk leaves
the previous last.ckpt whole and loadable, and the run stops with one line, exit 2."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from checkpoint_helpers import tiny_recipe
from lightning.pytorch import Callback

import lit_explain.models.checkpoint_io as checkpoint_io
from lit_explain.cli import main
from lit_explain.models.checkpoint_io import (
    CheckpointSaveError,
    SafeCheckpointIO,
    check_lightning_checkpoint,
    read_checkpoint,
)


class _FullDisk:
    """A file handle that takes half of the first write, then fails as a full disk does."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def _fail_saving(monkeypatch: pytest.MonkeyPatch, name: str, after: int) -> list[Path]:
    """Make every save of ``name`` after the first ``after`` ones run out of disk half-way."""
    real, seen = checkpoint_io.write_atomic, []

    def write_atomic(path: Path, write: Callable[[IO[bytes]], Any], **kwargs: Any) -> Path:
        if Path(path).name == name:
            seen.append(Path(path))
            if len(seen) > after:
                return real(path, lambda handle: write(_FullDisk(handle)), **kwargs)
        return real(path, write, **kwargs)

    monkeypatch.setattr(checkpoint_io, "write_atomic", write_atomic)
    return seen


def test_a_failed_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = SafeCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "weights": list(range(10_000))}, path)
    before = path.read_bytes()
    _fail_saving(monkeypatch, "last.ckpt", after=0)
    with pytest.raises(CheckpointSaveError) as err:
        io.save_checkpoint({"epoch": 1, "weights": list(range(20_000))}, path)
    assert str(err.value) == (
        f"no space left on the device of {path.parent} while saving {path}; the previous checkpoint is "
        "intact. Free some space and resume with --ckpt_path last"
    )
    assert path.read_bytes() == before and read_checkpoint(path)["epoch"] == 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    first = tmp_path / "ckpts" / "first.ckpt"
    _fail_saving(monkeypatch, "first.ckpt", after=0)
    with pytest.raises(
        CheckpointSaveError, match=r"no partial file was left .*Free some space and run again"
    ):
        io.save_checkpoint({"epoch": 1}, first)
    assert not first.exists() and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_saves_go_next_to_the_destination_not_to_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fsspec's local writer (Lightning's) writes under $TMPDIR, then shutil.moves: a copy across devices.
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    seen: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(str(a)), real_replace(a, b))[1])
    SafeCheckpointIO().save_checkpoint({"epoch": 3}, tmp_path / "out" / "last.ckpt")
    assert read_checkpoint(tmp_path / "out" / "last.ckpt")["epoch"] == 3
    assert len(seen) == 1 and Path(seen[0]).parent == tmp_path / "out"
    assert list(tmpdir.iterdir()) == []


def _fit(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, list[str]]:
    recipe = tiny_recipe(tmp_path / "tiny.yaml", monitor="epoch", mode="min")  # best: epoch 0 only
    code = main(["fit", "--config", str(recipe), f"--trainer.default_root_dir={tmp_path / 'runs'}", *args])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def _last(tmp_path: Path) -> Path:
    (found,) = (tmp_path / "runs").rglob("last.ckpt")
    return found


def test_a_full_disk_during_fit_is_one_line_and_last_stays_loadable(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _fail_saving(monkeypatch, "last.ckpt", after=1)
    code, lines = _fit(tmp_path, capsys, "--trainer.max_epochs=2")
    assert len(seen) == 2 and code == 2, lines
    last = _last(tmp_path)
    assert lines[-1] == (
        f"error: no space left on the device of {last.parent} while saving {last}; the previous checkpoint "
        "is intact. Free some space and resume with --ckpt_path last"
    )
    assert not any("Traceback" in line for line in lines)
    checkpoint = read_checkpoint(last)
    check_lightning_checkpoint(checkpoint, str(last), resume=True)
    assert checkpoint["epoch"] == 0


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


class FillDisk(Callback):
    """At the start of epoch ``epoch``, fill the disk of ``folder`` but for 256 KiB: room for the logs, not
    for a checkpoint."""

    def __init__(self, folder: str, epoch: int) -> None:
        self.folder, self.epoch = Path(folder), epoch

    def on_train_epoch_start(self, trainer: Any, *args: Any) -> None:
        if trainer.current_epoch == self.epoch:
            stat = os.statvfs(self.folder)
            (self.folder / "filler").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - (256 << 10)))


@pytest.mark.parametrize("full_at", [0, 1])
def test_a_really_full_disk(full_at: int, small_tmpfs: Path, capsys: pytest.CaptureFixture) -> None:
    # The tester's case on a real file system. Lightning's own writer copies from $TMPDIR onto the
    # destination: with the disk full before the first save it leaves a truncated checkpoint and a
    # 70-line traceback (and in place of an old last.ckpt it needs the room of one, where this needs two).
    recipe = tiny_recipe(small_tmpfs.parent / "tiny.yaml", monitor="epoch", mode="min")
    config = yaml.safe_load(recipe.read_text())
    fill = {"class_path": f"{__name__}.FillDisk", "init_args": {"folder": str(small_tmpfs), "epoch": full_at}}
    config["trainer"]["callbacks"].append(fill)
    recipe.write_text(yaml.safe_dump(config))
    root = f"--trainer.default_root_dir={small_tmpfs}"
    code = main(["fit", "--config", str(recipe), root, f"--trainer.max_epochs={full_at + 1}"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert (small_tmpfs / "filler").is_file()
    assert code == 2 and lines[-1].startswith("error: no space left on the device"), lines
    (folder,) = {p.parent for p in small_tmpfs.rglob("*.ckpt")} or {next(small_tmpfs.rglob("checkpoints"))}
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    if full_at == 0:
        assert "no partial file was left" in lines[-1] and list(folder.iterdir()) == []
    else:
        assert "the previous checkpoint is intact" in lines[-1]
        assert read_checkpoint(folder / "last.ckpt")["epoch"] == 0
