"""The docstring examples of the explanation engine run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

MODULES = ["", ".layers", ".layouts", ".hooks", ".cam", ".guided", ".rollout", ".metrics", "._state"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"lit_explain.explain{name}")
    torch.manual_seed(0)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
