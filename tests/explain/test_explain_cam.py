"""The cam() / CAM contract: shapes, dtypes, normalisation, targets, scores, fusion, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from explain_helpers import SIZE, shared_model
from torch import nn

from lit_explain.explain import (
    CAM,
    CAM_METHODS,
    METHODS,
    ROLLOUT_METHODS,
    CAMResult,
    ScoreCAM,
    cam,
    guided_gradcam,
)
from lit_explain.explain.cam import DEFAULT_BATCH_SIZE


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return shared_model("resnet18")


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(5))


def _reference_maps(raw: torch.Tensor) -> torch.Tensor:
    """The contract, spelled out: upsample the ReLU'd map, then min-max per image (0 if constant)."""
    up = F.interpolate(raw, size=SIZE, mode="bilinear", align_corners=False)
    lo = up.amin(dim=(2, 3), keepdim=True)
    hi = up.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi > lo, (up - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(up))


def test_methods_list() -> None:
    assert CAM_METHODS == ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam"]
    assert ROLLOUT_METHODS == ("rollout", "gradient_rollout")
    assert [*CAM_METHODS, *ROLLOUT_METHODS] == METHODS


@pytest.mark.parametrize("method", CAM_METHODS)
def test_result_contract(model: nn.Module, x: torch.Tensor, method: str) -> None:
    layer = "layer1.0.conv1" if method == "scorecam" else "layer4"  # 64 channels keep scorecam short
    r = cam(model, x, layer=layer, method=method, chunk_size=96)
    assert isinstance(r, CAMResult) and r.method == method and r.layers == (layer,)
    assert r.maps.shape == (3, 1, *SIZE) and r.maps.dtype == torch.float32
    assert r.raw.dtype == torch.float32 and r.raw.shape[:2] == (3, 1) and bool((r.raw >= 0).all())
    assert r.logits.shape == (3, 10) and r.targets.dtype == torch.int64
    assert torch.equal(r.targets, r.logits.argmax(1))
    assert torch.allclose(r.logits, model(x), atol=1e-5)
    assert torch.allclose(r.maps, _reference_maps(r.raw), atol=1e-6)
    for i in range(3):
        assert float(r.maps[i].min()) == 0.0 and float(r.maps[i].max()) == 1.0


def test_target_forms(model: nn.Module, x: torch.Tensor) -> None:
    per_sample = cam(model, x, layer="layer4", targets=[4, 0, 9])
    assert per_sample.targets.tolist() == [4, 0, 9]
    as_tensor = cam(model, x, layer="layer4", targets=torch.tensor([4, 0, 9]))
    assert torch.equal(as_tensor.maps, per_sample.maps)
    one = cam(model, x, layer="layer4", targets=7)
    assert one.targets.tolist() == [7, 7, 7]
    # one image explained alone gives the same map as inside the batch (no cross-talk)
    alone = cam(model, x[1:2], layer="layer4", targets=[0])
    assert float((alone.maps[0] - per_sample.maps[1]).abs().max()) <= 1e-4  # conv kernels vary with B


@pytest.mark.parametrize(
    ("targets", "error"),
    [
        ([1, 2], ValueError),
        (10, ValueError),
        ([-1, 0, 0], ValueError),
        ([0.5, 1.0, 2.0], TypeError),
        (True, TypeError),
    ],
)
def test_bad_targets(model: nn.Module, x: torch.Tensor, targets, error: type[Exception]) -> None:
    with pytest.raises(error):
        cam(model, x, layer="layer4", targets=targets)


def test_bad_arguments(model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="gradcam"):
        cam(model, x, layer="layer4", method="smoothgrad")
    with pytest.raises(ValueError, match="score"):
        cam(model, x, layer="layer4", score="margin")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fuse"):
        cam(model, x, layer="layer4", fuse="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        cam(model, x[0], layer="layer4")
    with pytest.raises(TypeError, match="floating"):
        cam(model, x.to(torch.uint8), layer="layer4")


def test_method_aliases_and_instances(model: nn.Module, x: torch.Tensor) -> None:
    a = cam(model, x, layer="layer4", method="GradCAM++")
    b = cam(model, x, layer="layer4", method="gradcam_pp")
    assert a.method == b.method == "gradcam++" and torch.equal(a.maps, b.maps)
    explainer = CAM(model, "layer1.0.conv1", ScoreCAM(chunk_size=100))
    assert "chunk_size=100" in repr(explainer)
    small = x[:2, :, :24, :20]
    expected = cam(model, small, "layer1.0.conv1", method="scorecam", chunk_size=7).maps
    assert float((explainer(small).maps - expected).abs().max()) <= 1e-5


def test_prob_score_changes_the_gradient(model: nn.Module, x: torch.Tensor) -> None:
    logit = cam(model, x, layer="layer4", targets=[1, 2, 3], score="logit")
    prob = cam(model, x, layer="layer4", targets=[1, 2, 3], score="prob")
    assert not torch.allclose(logit.maps, prob.maps, atol=1e-3)


@pytest.mark.parametrize("fuse", ["mean", "max"])
def test_several_layers_fuse_normalised_maps(model: nn.Module, x: torch.Tensor, fuse: str) -> None:
    r = cam(model, x, layer=["layer3", "layer4"], fuse=fuse, targets=[1, 2, 3])
    assert r.layers == ("layer3", "layer4") and [t.shape[-1] for t in r.raw] == [3, 2]
    singles = [cam(model, x, layer=n, targets=[1, 2, 3]) for n in r.layers]
    for single, raw in zip(singles, r.raw, strict=True):
        assert torch.allclose(single.raw, raw, atol=1e-6)
    # each layer's map is normalised at its own resolution, upsampled, fused, normalised again
    per_layer = torch.stack([_reference_maps(_reference_maps_at(raw)) for raw in r.raw])
    fused = per_layer.amax(0) if fuse == "max" else per_layer.mean(0)
    assert torch.allclose(r.maps, _normalise(fused), atol=1e-6)


def _reference_maps_at(raw: torch.Tensor) -> torch.Tensor:
    return _normalise(raw)


def _normalise(m: torch.Tensor) -> torch.Tensor:
    lo = m.amin(dim=(2, 3), keepdim=True)
    hi = m.amax(dim=(2, 3), keepdim=True)
    return torch.where(hi > lo, (m - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(m))


def test_input_size_and_batch_one(model: nn.Module) -> None:
    r = cam(model, torch.randn(1, 3, 97, 33), layer="layer2", method="xgradcam", targets=3)
    assert r.maps.shape == (1, 1, 97, 33) and r.raw.shape == (1, 1, 13, 5)


def test_frozen_backbone_still_explains(x: torch.Tensor) -> None:
    # fine-tuning recipes freeze the backbone: its outputs do not require grad, the CAM still works
    frozen = shared_model("resnet18")
    flags = [p.requires_grad for p in frozen.parameters()]
    try:
        for name, p in frozen.named_parameters():
            p.requires_grad_(name.startswith("fc."))
        r = cam(frozen, x, layer="layer4", targets=[1, 2, 3])
    finally:
        for p, flag in zip(frozen.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    assert torch.allclose(r.maps, cam(frozen, x, layer="layer4", targets=[1, 2, 3]).maps, atol=1e-6)


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Conv2d(3, 4, 3)
        self.unused = nn.Conv2d(3, 4, 3)
        self.tuple_out = nn.LSTM(2, 2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.unused(x)
        return self.fc(self.used(x).mean(dim=(2, 3)))


def test_layer_off_the_score_path_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="does not depend on"):
        cam(TwoHeads(), torch.randn(2, 3, 8, 8), layer="unused")
    with pytest.raises(RuntimeError, match="did not run"):
        cam(TwoHeads(), torch.randn(2, 3, 8, 8), layer="tuple_out")


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_large_batches_are_explained_in_slices_with_the_same_result(model: nn.Module, method: str) -> None:
    x = torch.randn(5, 3, 48, 40, generator=torch.Generator().manual_seed(6))
    targets = [4, 0, 9, 1, 2]
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        sliced = cam(model, x, layer="layer3", targets=targets, method=method, batch_size=2)
        assert seen == [2, 2, 1]  # memory is bounded by two images' activations
        seen.clear()
        argmax = cam(model, x, layer="layer3", method=method, batch_size=3)
        assert seen == [3, 2]
    finally:
        handle.remove()
    whole = cam(model, x, layer="layer3", targets=targets, method=method, batch_size=None)
    assert sliced.targets.tolist() == targets and torch.equal(argmax.targets, whole.logits.argmax(1))
    # same maps; only float32 rounding of batch-size-dependent conv kernels may differ
    assert float((sliced.maps - whole.maps).abs().max()) <= 1e-5
    assert float((sliced.raw - whole.raw).abs().max()) <= 1e-5 * float(whole.raw.abs().max())
    assert torch.allclose(sliced.logits, whole.logits, atol=1e-5)


def test_the_default_batch_size_bounds_a_large_batch(model: nn.Module) -> None:
    x = torch.randn(DEFAULT_BATCH_SIZE + 3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    seen: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        sliced = cam(model, x, layer="layer2", targets=1)
        guided = guided_gradcam(model, x[:5], layer="layer2", targets=[1, 2, 3, 4, 5], batch_size=2)
    finally:
        handle.remove()
    assert seen == [DEFAULT_BATCH_SIZE, 3, 2, 2, 1]
    whole = guided_gradcam(model, x[:5], layer="layer2", targets=[1, 2, 3, 4, 5], batch_size=None)
    assert float((guided.guided - whole.guided).abs().max()) <= 1e-5 * float(whole.guided.abs().max())
    assert (
        float((sliced.maps - cam(model, x, layer="layer2", targets=1, batch_size=None).maps).abs().max())
        <= 1e-5
    )


def test_slicing_checks_targets_and_batch_size(model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="got 2 targets for a batch of 3"):
        cam(model, x, layer="layer4", targets=[1, 2], batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        cam(model, x, layer="layer4", batch_size=0)
