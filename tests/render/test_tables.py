from __future__ import annotations

import pytest
import torch

from lit_explain.render import ConfusedPair, confused_pairs_table, markdown_table, name_pairs


def test_confused_pairs_sorted_ties_deterministic_and_off_diagonal_only() -> None:
    cm = torch.tensor(
        [
            [50, 3, 0, 7],
            [3, 40, 1, 0],
            [9, 0, 60, 3],
            [0, 1, 0, 90],
        ]
    )
    pairs = confused_pairs_table(cm, ["a", "b", "c", "d"], top_n=None)
    assert pairs == [(2, 0, 9), (0, 3, 7), (0, 1, 3), (1, 0, 3), (2, 3, 3), (1, 2, 1), (3, 1, 1)]
    assert all(isinstance(p, ConfusedPair) and isinstance(p.count, int) for p in pairs)
    assert confused_pairs_table(cm, top_n=2) == pairs[:2]
    assert confused_pairs_table(cm.float().requires_grad_(), top_n=1) == [(2, 0, 9.0)]
    assert name_pairs(pairs[:1], ["a", "b", "c", "d"]) == [("c", "a", 9)]


def test_confused_pairs_edge_cases() -> None:
    assert confused_pairs_table(torch.eye(3, dtype=torch.int64) * 5) == []
    with pytest.raises(ValueError, match="class names"):
        confused_pairs_table(torch.zeros(3, 3), ["a"])
    with pytest.raises(ValueError, match="square"):
        confused_pairs_table(torch.zeros(3, 2))


def test_markdown_table() -> None:
    text = markdown_table(
        [("cat", "dog", 31, 0.12345), ("a|b", "multi\nline", torch.tensor(2), torch.tensor(0.5))],
        ["true", "pred", "count", "rate"],
    )
    assert text.splitlines() == [
        "| true | pred | count | rate |",
        "| --- | --- | ---: | ---: |",
        "| cat | dog | 31 | 0.123 |",
        "| a\\|b | multi line | 2 | 0.500 |",
    ]
    assert markdown_table([], ["x"]) == "| x |\n| --- |"
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        markdown_table([(1,)], ["x", "y"])
