"""scripts/setup_env.sh: a venv is reused, topped up from runtime to dev in place, or refused a bad level.

The venv here is fake: ``bin/python`` runs this interpreter and ``bin/pip`` only records its arguments, so the
test checks which installs the script asks for without installing anything.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "setup_env.sh"


def _key() -> str:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "env_key.py")], capture_output=True, text=True, check=True
    ).stdout.strip()


PIP_CONFIG = "global.extra-index-url='file:///mirror/a file:///mirror/b'\\n:env:.find-links='/opt/wheels'"


def _fake_venv(tmp_path: Path, stamp: str, uv: bool = False) -> Path:
    """A venv whose pip (and uv, if asked) only log their arguments; pip answers ``config list``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    pip = venv / "bin" / "pip"
    pip.write_text(
        f'#!/bin/sh\necho "$*" >> {tmp_path / "pip.log"}\n'
        f'[ "$1" = config ] && printf "{PIP_CONFIG}\\n"\nexit 0\n'
    )
    tools = [python, pip]
    if uv:
        tools.append(venv / "bin" / "uv")
        tools[-1].write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "uv.log"}\n')
    for tool in tools:
        tool.chmod(0o755)
    (venv / ".lit_explain-env").write_text(stamp)
    return venv


def _run(venv: Path, *level: str, uv: bool = False) -> subprocess.CompletedProcess:
    # PYTHON: the interpreter env_key.py runs under must match the one the stamp's key came from.
    # Without uv the script falls back to pip (LIT_EXPLAIN_NO_UV, so a uv on this machine's PATH is not used).
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, **({} if uv else {"LIT_EXPLAIN_NO_UV": "1"})}
    return subprocess.run(["bash", str(SCRIPT), str(venv), *level], capture_output=True, text=True, env=env)


def _dependency_installs(tmp_path: Path) -> list[str]:
    log = tmp_path / "pip.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if "-c constraints.txt" in line]


@pytest.mark.parametrize(("stamp_level", "asked"), [("", "dev"), ("dev", "runtime"), ("runtime", "runtime")])
def test_a_venv_with_the_same_pins_and_enough_level_is_reused(
    tmp_path: Path, stamp_level: str, asked: str
) -> None:
    # A stamp without a level line was written before levels existed, by a dev build.
    venv = _fake_venv(tmp_path, _key() + "\n" + (stamp_level + "\n" if stamp_level else ""))
    done = _run(venv, asked)
    assert done.returncode == 0, done.stderr
    assert _dependency_installs(tmp_path) == []
    assert (venv / "bin" / "python").exists()  # not rebuilt


def test_a_runtime_venv_is_topped_up_to_dev_in_place(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path, _key() + "\nruntime\n")
    done = _run(venv, "dev")
    assert done.returncode == 0, done.stderr
    assert [line.split() for line in _dependency_installs(tmp_path)] == [
        ["install", "--quiet", "-c", "constraints.txt", "-e", ".[dev]"]
    ]
    assert (venv / ".lit_explain-env").read_text().splitlines() == [_key(), "dev"]


def test_uv_installs_with_pips_index_settings(tmp_path: Path) -> None:
    # The venv's own uv (what an earlier set-up's `pip install uv` left there) comes before one on PATH.
    venv = _fake_venv(tmp_path, _key() + "\nruntime\n", uv=True)
    done = _run(venv, "dev", uv=True)
    assert done.returncode == 0, done.stderr
    assert _dependency_installs(tmp_path) == []  # pip did not install the dependencies
    uv_args = (tmp_path / "uv.log").read_text().split()
    assert uv_args[:2] == ["pip", "install"]
    assert uv_args[uv_args.index("--python") + 1] == str(venv / "bin" / "python")
    assert uv_args[uv_args.index("--index-strategy") + 1] == "unsafe-best-match"  # pip's rule
    assert "--compile-bytecode" in uv_args  # dev: .pyc files, as pip writes them
    pairs = list(itertools.pairwise(uv_args))
    for pair in [
        ("--extra-index-url", "file:///mirror/a"),
        ("--extra-index-url", "file:///mirror/b"),
        ("--find-links", "/opt/wheels"),
        ("-c", "constraints.txt"),
        ("-e", ".[dev]"),
    ]:
        assert pair in pairs
    assert (venv / ".lit_explain-env").read_text().splitlines() == [_key(), "dev"]


def test_a_folder_that_is_not_a_venv_is_never_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "keep.jpg").write_bytes(b"user data")
    done = _run(folder, "runtime")
    assert done.returncode == 1 and "not a virtual environment" in done.stderr
    assert (folder / "keep.jpg").read_bytes() == b"user data"


def test_an_unknown_level_is_refused(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path, _key() + "\n")
    done = _run(venv, "everything")
    assert done.returncode == 2 and "runtime or dev" in done.stderr
