"""Under CI=true, a selected test whose precondition is missing stops the run with one line (tests/conftest.py).

Outside CI the same tests skip with their reason; a skip in CI would let a green run hide that they never ran.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
USAGE_ERROR = 4  # pytest's exit code for a usage error


def _root_conftest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_root_conftest_ci", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _item(marker: str | None = None, fixtures: tuple[str, ...] = ()) -> SimpleNamespace:
    """What the hook reads of a collected test: its markers and its fixture names."""
    return SimpleNamespace(get_closest_marker=lambda name: name == marker or None, fixturenames=fixtures)


@pytest.fixture
def conftest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    """The root conftest on a machine with neither chromium nor the real photos."""
    module = _root_conftest()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(module, "LEAF_SHAPES", tmp_path / "no-leaf-shapes")
    return module


@pytest.mark.parametrize(
    ("item", "needs"),
    [
        (_item(marker="browser"), "chromium for the browser tests (Debian: apt-get install chromium)"),
        (_item(fixtures=("leaf_shapes_dir",)), "the real leaf photos at "),
    ],
)
def test_missing_preconditions_fail_in_ci_and_skip_elsewhere(conftest, monkeypatch, item, needs) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.UsageError, match="CI=true and selected tests need") as err:
        conftest.pytest_collection_modifyitems(config=None, items=[_item(), item])
    assert needs in str(err.value) and "\n" not in str(err.value)
    conftest.pytest_collection_modifyitems(config=None, items=[_item()])  # not selected: nothing needed
    monkeypatch.delenv("CI")
    conftest.pytest_collection_modifyitems(config=None, items=[item])  # outside CI: the test skips itself


def test_a_ci_run_stops_with_one_line(tmp_path: Path) -> None:
    """Through pytest itself: exit code 4 and one line, before any test runs."""
    env = {**os.environ, "CI": "true", "PATH": str(tmp_path)}  # no chromium on this PATH
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/serve/test_page.py"]
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == USAGE_ERROR, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stderr.strip().splitlines() == [
        "ERROR: CI=true and selected tests need what is missing here: chromium for the browser tests "
        "(Debian: apt-get install chromium) (install or provide it, or deselect those tests explicitly)"
    ]
