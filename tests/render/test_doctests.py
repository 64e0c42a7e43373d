"""Keep the docstring examples of the public functions honest."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["charts", "colors", "figures", "grid", "images", "png", "tables"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"lit_explain.render.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
