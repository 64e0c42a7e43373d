"""The callbacks stay thin glue: no long functions, nothing explained or drawn twice."""

from __future__ import annotations

import ast
from pathlib import Path

CALLBACKS = Path(__file__).resolve().parents[2] / "lit_explain" / "callbacks"
MAX_FUNCTION_LINES = 60


def _functions(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_function_in_the_callbacks_package_is_longer_than_60_lines() -> None:
    long = [
        f"{path.name}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for path in sorted(CALLBACKS.glob("*.py"))
        for fn in _functions(path)
        if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_the_callbacks_explain_through_the_one_engine_call() -> None:
    # Predicted/true/guided maps come from lit_explain.explain.explain_predictions only.
    for path in CALLBACKS.glob("*.py"):
        source = path.read_text()
        for primitive in ("guided_gradcam(", "true_class_maps(", "NoReluError"):
            assert primitive not in source, f"{path.name} calls {primitive} itself"


def test_the_callbacks_read_no_private_trainer_attribute() -> None:
    for path in CALLBACKS.glob("*.py"):
        assert "._trainer" not in path.read_text(), path.name
