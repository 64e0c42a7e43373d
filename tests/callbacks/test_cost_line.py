"""The end-of-fit cost line names the speed-up extras a run lacks, with the command that adds them."""

from __future__ import annotations

import importlib.util

import pytest

from lit_explain.callbacks import cost
from lit_explain.render import png


@pytest.mark.parametrize(
    ("isal", "crc", "tensorboard", "expected"),
    [
        (True, True, True, []),
        (False, True, True, ["fast-png"]),
        (True, False, True, ["fast-tensorboard"]),
        (True, False, False, []),  # the CRC only matters to TensorBoard's event files
        (False, False, True, ["fast-png", "fast-tensorboard"]),
    ],
)
def test_missing_speedups_follow_what_is_installed(
    monkeypatch: pytest.MonkeyPatch, isal: bool, crc: bool, tensorboard: bool, expected: list[str]
) -> None:
    monkeypatch.setattr(png, "_ISAL", (lambda data, level: b"") if isal else None)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            (real_find_spec("json") if crc else None) if name == "crc32c" else real_find_spec(name, *a)
        ),
    )
    assert cost.missing_speedups(tensorboard) == expected


def test_the_line_names_the_missing_extras_in_one_install_command() -> None:
    line = cost.cost_line(6.5, 65.0, 0.0, inline=True, missing=["fast-png", "fast-tensorboard"])
    assert line.startswith("explainability: 6.5 s on the training thread (10.0% of training; pictures drawn")
    assert line.endswith(
        "cheaper pictures: pip install 'lit_explain[fast-png,fast-tensorboard]' (with both speed-ups the demo's "
        "cost halves)"
    )
    assert "pip install" not in cost.cost_line(6.5, 65.0, 0.0, inline=True)
