"""The shortcut test's pure functions on hand-made models: a corner-stamp reader fires, a content reader does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from lit_explain.findings import read_findings, record_findings
from lit_explain.findings.shortcut import (
    CONTROL_BOXES,
    DEFAULT_THRESHOLD,
    describe_region,
    donor_pairs,
    region_picture,
    shared_region,
    shortcut_finding,
    shortcut_test,
)

SIZE, STAMP, CLASSES = 64, 8, 4
COLOURS = torch.tensor([[2.0, -2.0, -2.0], [-2.0, 2.0, -2.0], [-2.0, -2.0, 2.0], [2.0, 2.0, -2.0]])


class StampReader(nn.Module):
    """Classifies by the colour of the top-left 8x8 box only: the shortcut, exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)  # present so that a forward in train mode would show in its statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch = x[:, :, :STAMP, :STAMP].mean(dim=(-1, -2))
        _ = self.norm(x)
        return -((patch[:, None, :] - COLOURS[None]) ** 2).sum(-1)


class ContentReader(nn.Module):
    """Classifies by the colour of the brightest-saturated object wherever it is (the mean of its pixels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        strength = x.abs().sum(1, keepdim=True)
        weights = (strength > 4.5).float()
        colour = (x * weights).sum(dim=(-1, -2)) / weights.sum(dim=(-1, -2)).clamp_min(1)
        return -((colour[:, None, :] - COLOURS[None]) ** 2).sum(-1)


def gaussian_maps(centres: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """Maps [B, 1, SIZE, SIZE] peaking at centres (y, x)."""
    grid = torch.arange(SIZE, dtype=torch.float32)
    gy = torch.exp(-((grid[None, :] - centres[:, :1]) ** 2) / (2 * sigma**2))
    gx = torch.exp(-((grid[None, :] - centres[:, 1:]) ** 2) / (2 * sigma**2))
    return (gy[:, :, None] * gx[:, None, :])[:, None]


def stamped(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.randn(n, 3, SIZE, SIZE, generator=g) * 0.5
    images[:, :, :STAMP, :STAMP] = COLOURS[labels][:, :, None, None]
    return images, labels


def objects(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A class-coloured 20x20 square at a random place in each image; returns images, labels, centres."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.randn(n, 3, SIZE, SIZE, generator=g) * 0.5
    corners = torch.randint(0, SIZE - 20, (n, 2), generator=g)
    for i, (y, x) in enumerate(corners.tolist()):
        images[i, :, y : y + 20, x : x + 20] = COLOURS[labels[i]][:, None, None]
    return images, labels, corners + 10


def test_a_stamp_reader_fires_and_names_the_corner() -> None:
    images, _ = stamped()
    net = StampReader()
    preds = net(images).argmax(1)
    maps = gaussian_maps(torch.full((len(images), 2), 4.0) + torch.rand(len(images), 2))
    ev = shortcut_test(net, images, maps, preds)
    assert ev.fires(DEFAULT_THRESHOLD), ev
    assert ev.where == "top-left corner"
    x0, y0, x1, y1 = ev.region
    assert x0 == 0 and y0 == 0 and x1 <= 16 and y1 <= 16
    assert ev.share == 1.0 and ev.classes == CLASSES
    assert ev.follow > 0.9 and ev.control_follow < 0.1
    # Occluding the stamp removes the evidence; boxes elsewhere do not.
    assert ev.occlusion_drop > 0.3 > abs(ev.control_drop)


def test_a_content_reader_does_not_fire() -> None:
    images, _, centres = objects()
    net = ContentReader()
    preds = net(images).argmax(1)
    ev = shortcut_test(net, images, gaussian_maps(centres.float()), preds)
    assert not ev.fires(DEFAULT_THRESHOLD), ev
    assert ev.score < 0.1


def test_maps_in_the_corner_without_a_causal_cue_do_not_fire() -> None:
    # Every map peaks in the corner (a padding artefact, say) but the model reads the object: no shortcut.
    images, _, _ = objects()
    net = ContentReader()
    preds = net(images).argmax(1)
    maps = gaussian_maps(torch.full((len(images), 2), 3.0))
    ev = shortcut_test(net, images, maps, preds)
    assert ev.share == 1.0 and ev.where == "top-left corner"
    assert not ev.fires(DEFAULT_THRESHOLD), ev


def test_a_box_shared_by_one_predicted_class_only_is_not_a_shortcut() -> None:
    images, _ = stamped()
    net = StampReader()
    maps = gaussian_maps(torch.full((len(images), 2), 4.0))
    ev = shortcut_test(net, images, maps, torch.zeros(len(images), dtype=torch.long))
    assert ev.classes == 1 and ev.score == 0.0


def test_the_gate_skips_the_forwards_when_no_box_is_shared() -> None:
    calls = []
    images, _, centres = objects()
    net = ContentReader()
    preds = net(images).argmax(1)

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return net(x)

    ev = shortcut_test(forward, images, gaussian_maps(centres.float()), preds, gate=0.9)
    assert ev.score == 0.0 and calls == []
    shortcut_test(forward, images, gaussian_maps(centres.float()), preds, gate=0.0, occlusion=False)
    assert sum(calls) > 0


def test_the_controls_are_skipped_when_the_follow_rate_cannot_reach_the_gate() -> None:
    # Every map peaks in the corner (share 1.0), but the model reads the object: pasting the corner moves
    # no prediction, so share * follow stays under the gate and the control boxes would decide nothing.
    images, _, _ = objects()
    net = ContentReader()
    preds = net(images).argmax(1)
    maps = gaussian_maps(torch.full((len(images), 2), 3.0))
    calls: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return net(x)

    gated = shortcut_test(forward, images, maps, preds, gate=DEFAULT_THRESHOLD, occlusion=False)
    follow_only = sum(calls)
    calls.clear()
    full = shortcut_test(forward, images, maps, preds, gate=0.0, occlusion=False)
    assert gated.share == full.share == 1.0 and gated.follow == full.follow
    assert gated.share * gated.follow < DEFAULT_THRESHOLD
    assert gated.score == 0.0 and not gated.fires(DEFAULT_THRESHOLD) and not full.fires(DEFAULT_THRESHOLD)
    assert follow_only > 0 and sum(calls) == follow_only * (1 + CONTROL_BOXES)  # the controls' forwards
    # A real shortcut passes the gate: the whole test runs and fires as without it.
    images, _ = stamped()
    net = StampReader()
    corner = gaussian_maps(torch.full((len(images), 2), 4.0))
    assert shortcut_test(net, images, corner, net(images).argmax(1), gate=DEFAULT_THRESHOLD).fires()


def test_the_network_runs_in_eval_mode_and_is_given_back_as_it_was() -> None:
    images, _ = stamped()
    net = StampReader().train()
    before = net.norm.running_mean.clone()
    shortcut_test(net, images, gaussian_maps(torch.full((len(images), 2), 4.0)), net(images).argmax(1))
    assert net.training and net.norm.training
    # The one train-mode forward above (for preds) moved the statistics; the test's forwards must not.
    after_preds = net.norm.running_mean.clone()
    shortcut_test(
        net, images, gaussian_maps(torch.full((len(images), 2), 4.0)), torch.arange(len(images)) % 4
    )
    assert torch.equal(net.norm.running_mean, after_preds) and not torch.equal(before, after_preds)


def test_shared_region_is_tight_around_clustered_peaks() -> None:
    maps = gaussian_maps(torch.tensor([[60.0, 60.0]] * 10 + [[10.0, 30.0]] * 2))
    region, share, classes = shared_region(maps, torch.arange(12) % 3)
    assert share == pytest.approx(10 / 12) and classes == 3
    assert region[0] >= 48 and region[1] >= 48 and region[2] == 64 and region[3] == 64
    assert describe_region(region, (64, 64)) == "bottom-right corner"


@pytest.mark.parametrize(
    ("region", "where"),
    [
        ([0, 0, 8, 8], "top-left corner"),
        ([56, 0, 64, 8], "top-right corner"),
        ([0, 56, 8, 64], "bottom-left corner"),
        ([56, 56, 64, 64], "bottom-right corner"),
        ([28, 28, 36, 36], "centre"),
        ([0, 28, 8, 36], "left edge"),
        ([28, 56, 36, 64], "bottom edge"),
    ],
)
def test_describe_region(region: list[int], where: str) -> None:
    assert describe_region(region, (64, 64)) == where


def test_donor_pairs_pair_images_of_different_predictions() -> None:
    preds = torch.tensor([0, 0, 1, 2, 2])
    pairs = donor_pairs(preds)
    assert len(pairs) == 5
    assert all(preds[r] != preds[d] for r, d in pairs.tolist())
    assert len(donor_pairs(torch.zeros(4, dtype=torch.long))) == 0


def test_the_finding_says_what_where_the_numbers_and_what_to_do(tmp_path: Path) -> None:
    images, _ = stamped()
    net = StampReader()
    ev = shortcut_test(net, images, gaussian_maps(torch.full((len(images), 2), 4.0)), net(images).argmax(1))
    finding = shortcut_finding(ev, epoch=3)
    assert finding.kind == "shortcut" and finding.epoch == 3 and finding.severity == "critical"
    for part in (
        "top-left corner",
        f"{ev.share:.0%}",
        f"{ev.follow:.0%}",
        "crop or mask it",
        "examples without it",
    ):
        assert part in finding.message, part
    record_findings(tmp_path, [finding])
    record_findings(tmp_path, [shortcut_finding(ev, epoch=4)])
    entries = json.loads((tmp_path / "findings.json").read_text())
    assert entries == read_findings(tmp_path)
    assert [e["epoch"] for e in entries] == [3, 4]  # earlier findings kept
    for entry in entries:
        assert {"kind", "epoch", "severity", "message", "region"} <= set(entry)
        assert entry["kind"] == "shortcut"
        assert len(entry["region"]) == 4 and all(isinstance(v, int) for v in entry["region"])
        x0, y0, x1, y1 = entry["region"]
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
        assert entry["details"]["where"] == "top-left corner"


def test_region_picture_outlines_the_region() -> None:
    picture = region_picture(
        torch.zeros(3, 3, 32, 32), torch.zeros(3, 1, 32, 32), [0, 0, 8, 8], ["a", "b", "c"]
    )
    assert picture.dtype == torch.uint8 and picture.shape[0] == 3
    assert picture.float().mean() > 0  # not blank: the outline and captions are drawn
