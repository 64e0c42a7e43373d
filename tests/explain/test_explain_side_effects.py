"""Explaining leaves the model exactly as it was, in every context a caller may be in."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from explain_helpers import SIZE, assert_unchanged, make_model, snapshot
from torch import nn

from lit_explain.explain import (
    CAM,
    cam,
    deletion_auc,
    explanation_confidence,
    guided_backprop,
    guided_gradcam,
)


def messy_resnet() -> nn.Module:
    """A resnet18 in train mode with one stage frozen in eval, and .grad set on half the parameters."""
    model = make_model("resnet18")
    model.train()
    model.layer2.eval()
    gen = torch.Generator().manual_seed(3)
    for i, p in enumerate(model.parameters()):
        if i % 2 == 0:
            p.grad = torch.randn(p.shape, generator=gen)
    return model


def _x(n: int = 2, size: tuple[int, int] = SIZE) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(4))


CALLS: dict[str, Callable[[nn.Module, torch.Tensor], object]] = {
    "gradcam": lambda m, x: cam(m, x, layer="layer4", targets=[1, 2]),
    "gradcam++ auto layer": lambda m, x: cam(m, x, method="gradcam++"),
    "layercam two layers": lambda m, x: cam(m, x, layer=["layer3", "layer4.1.conv2"], method="layercam"),
    "eigencam": lambda m, x: cam(m, x, layer="layer4", method="eigencam"),
    "scorecam": lambda m, x: cam(
        m, x[:, :, :24, :20], layer="layer1.0.conv1", method="scorecam", chunk_size=40
    ),
    "inner relu twice": lambda m, x: cam(m, x, layer="layer4.1.relu", method="hirescam"),
    "guided_backprop": lambda m, x: guided_backprop(m, x),
    "guided_gradcam": lambda m, x: guided_gradcam(m, x, layer="layer4"),
    "guided_gradcam relus after": lambda m, x: guided_gradcam(m, x, layer="layer3", method="xgradcam"),
    "deletion_auc": lambda m, x: deletion_auc(m, x, torch.rand(2, 1, 8, 8), steps=3),
    "explanation_confidence": lambda m, x: explanation_confidence(m, x, torch.rand(2, 1, *SIZE)),
}


@pytest.mark.parametrize("call", CALLS)
def test_model_is_left_exactly_as_found(call: str) -> None:
    model = messy_resnet()
    before = snapshot(model)
    CALLS[call](model, _x())
    assert_unchanged(before, snapshot(model))


def test_computes_in_eval_mode_from_a_train_mode_model() -> None:
    model = messy_resnet()
    x = _x()
    reference = make_model("resnet18").eval()  # same weights, eval everywhere
    ours = cam(model, x, layer="layer4", targets=[1, 2])
    expected = cam(reference, x, layer="layer4", targets=[1, 2])
    assert torch.equal(ours.maps, expected.maps)
    assert torch.equal(ours.logits, reference(x).detach())
    assert model.training and not model.layer2.training and model.layer3.training


def test_the_class_form_holds_hooks_only_during_a_call() -> None:
    model = make_model("resnet18")
    explainer = CAM(model, "layer4", "gradcam")
    before = snapshot(model)
    first = explainer(_x(), targets=3)
    assert_unchanged(before, snapshot(model))
    second = explainer(_x(), targets=3)
    assert torch.equal(first.maps, second.maps)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("which", ["cam", "guided_gradcam"])
def test_works_inside_no_grad_and_inference_mode(context: str, which: str) -> None:
    model = make_model("resnet18")
    run = (
        (lambda x: cam(model, x, layer="layer4").maps)
        if which == "cam"
        else (lambda x: guided_gradcam(model, x, layer="layer4").guided)
    )
    expected = run(_x())
    ctx = torch.no_grad() if context == "no_grad" else torch.inference_mode()
    with ctx:
        x = _x()  # an inference tensor under inference_mode
        got = run(x)
        assert torch.is_grad_enabled() is False
    assert torch.equal(got, expected)


@pytest.mark.parametrize("which", ["cam", "guided_gradcam"])
def test_targets_that_are_inference_tensors(which: str) -> None:
    # Lightning's validate/test hand callbacks labels created under inference_mode.
    model = make_model("resnet18")

    def maps(x: torch.Tensor, targets) -> torch.Tensor:
        if which == "cam":
            return cam(model, x, layer="layer4", targets=targets).maps
        return guided_gradcam(model, x, layer="layer4", targets=targets).guided

    expected = maps(_x(), [1, 2])
    with torch.inference_mode():
        got = maps(_x(), torch.tensor([1, 2]))
    assert torch.equal(got, expected)


def test_autocast_bf16_gives_float32_maps_and_leaves_the_model_unchanged() -> None:
    model = messy_resnet()
    x = _x()
    plain = cam(model, x, layer="layer4", targets=[1, 2])
    before = snapshot(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = cam(model, x, layer="layer4", targets=[1, 2])
        gb = guided_gradcam(model, x, layer="layer4", targets=[1, 2])
        sc = cam(model, x[:, :, :24, :20], layer="layer1.0.conv1", method="scorecam", chunk_size=64)
        assert torch.is_autocast_enabled("cpu")  # the caller's autocast region is intact
    assert_unchanged(before, snapshot(model))  # flags, hooks, .grad, BatchNorm stats, parameters
    for t in (r.maps, r.raw, gb.guided, gb.backprop, sc.maps):
        assert t.dtype == torch.float32 and bool(torch.isfinite(t).all())
    assert float(r.maps.min()) >= 0.0 and float(r.maps.max()) <= 1.0
    corr = torch.corrcoef(torch.stack([r.maps.flatten(), plain.maps.flatten()]))[0, 1]
    assert float(corr) > 0.9  # bf16 rounding moves values, not the picture


def test_data_parallel_is_unwrapped_and_names_take_either_form() -> None:
    model = make_model("resnet18")
    wrapped = nn.DataParallel(model)
    wrapped.train()
    before = snapshot(wrapped)
    x = _x()
    expected = cam(model, x, layer="layer4", targets=[1, 2]).maps
    for layer in ("module.layer4", "layer4", model.layer4):
        assert torch.equal(cam(wrapped, x, layer=layer, targets=[1, 2]).maps, expected)
    assert torch.equal(guided_backprop(wrapped, x), guided_backprop(model, x))
    assert_unchanged(before, snapshot(wrapped))


def test_distributed_data_parallel_single_process(tmp_path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = make_model("resnet18")
        wrapped = nn.parallel.DistributedDataParallel(model)
        wrapped.train()
        before = snapshot(wrapped)
        x = _x()
        got = cam(wrapped, x, layer="module.layer4", targets=[1, 2])
        assert torch.equal(got.maps, cam(model, x, layer="layer4", targets=[1, 2]).maps)
        assert torch.equal(
            guided_gradcam(wrapped, x, layer="layer4").guided, guided_gradcam(model, x, layer="layer4").guided
        )
        assert_unchanged(before, snapshot(wrapped))
    finally:
        dist.destroy_process_group()


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("which", ["cam", "eigencam", "guided"])
def test_hooks_and_flags_are_restored_when_the_model_raises(which: str) -> None:
    model = messy_resnet()

    def explode(_module: nn.Module, _args: tuple, _out: torch.Tensor) -> None:
        raise Boom("raised inside forward")

    handle = model.fc.register_forward_hook(explode)
    before = snapshot(model)
    with pytest.raises(Boom):
        if which == "guided":
            guided_gradcam(model, _x(), layer="layer4")
        else:
            cam(model, _x(), layer="layer4", method="gradcam" if which == "cam" else "eigencam")
    assert_unchanged(before, snapshot(model))
    handle.remove()
    # relu is plain again: its gradient is negative where the upstream gradient is
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (grad,) = torch.autograd.grad((F.relu(x) * torch.tensor([-1.0, 1.0])).sum(), x)
    assert grad.tolist() == [-1.0, 1.0]


class Tiny(nn.Module):
    """conv -> global average -> linear, with weights set by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1))


def _constant_tiny(fc_sign: float) -> Tiny:
    model = Tiny()
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.bias.fill_(1.0)  # the activation is 1 everywhere
        model.fc.weight.fill_(fc_sign)
    return model


@pytest.mark.parametrize(
    "method", ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam"]
)
@pytest.mark.parametrize("fc_sign", [1.0, -1.0], ids=["constant", "all-negative"])
def test_constant_or_negative_maps_give_zeros_not_nan(method: str, fc_sign: float) -> None:
    r = cam(_constant_tiny(fc_sign), torch.randn(2, 3, 9, 7), layer="conv", method=method)
    assert bool(torch.isfinite(r.raw).all()) and bool(torch.isfinite(r.maps).all())
    assert bool((r.maps == 0).all())
    if fc_sign < 0 and method in ("gradcam", "hirescam", "xgradcam"):
        assert bool((r.raw == 0).all())  # negative evidence is cut by the ReLU


def test_guided_gradcam_of_a_constant_map_is_zero() -> None:
    # Tiny has no relu: the guided rule is explicitly waived to test the constant-map path alone
    r = guided_gradcam(_constant_tiny(1.0), torch.randn(2, 3, 9, 7), layer="conv", allow_no_relu=True)
    assert bool(torch.isfinite(r.guided).all()) and bool((r.guided == 0).all())
