"""The service stays in small pieces: no function under lit_explain/serve is longer than 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import lit_explain.serve

LIMIT = 80


def test_no_long_functions_in_serve():
    package = Path(lit_explain.serve.__file__).parent
    long = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert len(list(package.glob("*.py"))) >= 5 and not long, long
