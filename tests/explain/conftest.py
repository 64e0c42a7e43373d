"""Fixtures for the explanation-engine tests (models and helpers live in explain_helpers.py)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from explain_helpers import SIZE


@pytest.fixture(autouse=True)
def _torch_threads() -> Iterator[None]:
    # Same name as tests/conftest.py's per-test fixture (2 threads), so this one replaces it here: a
    # session-scoped fixture ran once and was then overridden before every test. The machine's 2 cores
    # are shared; one thread avoids oversubscription stalls and keeps runs steady.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _quiet_peers() -> Iterator[None]:
    # captum and pytorch-grad-cam warn on every call about hooks they set; not what these tests check.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(2))
