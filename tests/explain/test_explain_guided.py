"""Guided backprop covers every way a model can call relu, and Guided Grad-CAM shares one forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from explain_helpers import SIZE, assert_unchanged, shared_model, snapshot
from torch import nn

from lit_explain.explain import cam, guided_backprop, guided_gradcam


class ReluZoo(nn.Module):
    """Every relu spelling, each followed by a conv so that every one of them matters to the gradient.

    An inplace module called twice, F.relu (out of place, inplace by keyword and by position),
    torch.relu, Tensor.relu_ with its result ignored, torch.relu_ and Tensor.relu.
    """

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, 6, 3, padding=1) for c in (3, 6, 6, 6, 6, 6, 6, 6, 6))
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(6, 4)
        for conv in self.convs:  # large enough weights that gradients are far from float32 noise
            nn.init.normal_(conv.weight, std=0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.convs
        x = self.relu(c[0](x))
        x = self.relu(c[1](x))  # the same module again, as torchvision's BasicBlock does
        x = F.relu(c[2](x))
        x = torch.relu(c[3](x))
        y = c[4](x)
        y.relu_()  # in place, return value ignored
        z = torch.relu_(c[5](y))
        z = F.relu(c[6](z) + y, inplace=True)
        z = F.relu(c[7](z), True)
        z = c[8](z).relu()
        return self.fc(z.mean(dim=(2, 3)))


def reference_guided(
    model: ReluZoo, x: torch.Tensor, targets: torch.Tensor, score: str = "logit"
) -> torch.Tensor:
    """Guided backprop built independently: out-of-place relus whose output gradient is clamped at 0.

    ``score="prob"`` differentiates the softmax probability of the target instead of its logit.
    """

    def g(t: torch.Tensor) -> torch.Tensor:
        out = torch.relu(t)
        out.register_hook(lambda grad: grad.clamp_min(0))
        return out

    x = x.clone().requires_grad_(True)
    c = model.convs
    h = g(c[1](g(c[0](x))))
    h = g(c[3](g(c[2](h))))
    y = g(c[4](h))
    z = g(c[5](y))
    z = g(c[6](z) + y)
    z = g(c[8](g(c[7](z))))
    logits = model.fc(z.mean(dim=(2, 3)))
    scores = logits.softmax(dim=1) if score == "prob" else logits
    (grad,) = torch.autograd.grad(scores.gather(1, targets[:, None]).sum(), x)
    return grad


@pytest.fixture
def zoo() -> ReluZoo:
    torch.manual_seed(0)
    return ReluZoo().eval()


def test_every_relu_spelling_is_guided(zoo: ReluZoo) -> None:
    x = torch.randn(3, 3, 11, 9)
    targets = torch.tensor([0, 2, 3])
    ours = guided_backprop(zoo, x, targets=targets)
    expected = reference_guided(zoo, x, targets)
    scale = float(expected.abs().max())
    assert scale > 1e-3
    assert float((ours - expected).abs().max()) <= 1e-5 * scale
    # plain gradients differ a lot, so the comparison above is not vacuous
    xx = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(zoo(xx).gather(1, targets[:, None]).sum(), xx)
    assert float((plain - expected).abs().max()) > 0.1 * scale


def test_modules_and_inplace_flags_survive(zoo: ReluZoo) -> None:
    relu, before = zoo.relu, snapshot(zoo)
    guided_backprop(zoo, torch.randn(2, 3, 11, 9))
    guided_gradcam(zoo, torch.randn(2, 3, 11, 9), layer="convs.4")
    assert zoo.relu is relu and zoo.relu.inplace is True
    assert_unchanged(before, snapshot(zoo))


def test_input_tensor_is_not_touched(zoo: ReluZoo) -> None:
    x = torch.randn(2, 3, 11, 9, requires_grad=True)
    guided_backprop(zoo, x)
    assert x.grad is None and x.requires_grad and x.grad_fn is None


class Counter:
    def __init__(self) -> None:
        self.forwards = 0
        self.grads = 0


@pytest.mark.parametrize(
    ("arch", "layer", "backward_passes"),
    # ResNet: nothing but pooling and fc after layer4, so one autograd.grad for both parts. VGG's
    # features.24 is followed by relus: a short plain pass to the layer, then the guided one.
    [("resnet18", "layer4", 1), ("vgg11_bn", "features.24", 2)],
)
def test_guided_gradcam_shares_one_forward(monkeypatch, arch: str, layer: str, backward_passes: int) -> None:
    model = shared_model(arch)
    x, targets = torch.randn(2, 3, *SIZE), [3, 7]
    count = Counter()
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        count.grads += 1
        return real_grad(*args, **kwargs)

    handle = model.register_forward_pre_hook(lambda *_: setattr(count, "forwards", count.forwards + 1))
    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    try:
        result = guided_gradcam(model, x, layer=layer, targets=targets)
    finally:
        handle.remove()
        monkeypatch.undo()
    assert (count.forwards, count.grads) == (1, backward_passes)

    # and it equals the two parts computed separately
    alone = cam(model, x, layer=layer, targets=targets)
    assert torch.allclose(result.cam.maps, alone.maps, atol=1e-6)
    assert torch.allclose(result.cam.raw, alone.raw, atol=1e-6, rtol=1e-5)
    assert torch.equal(result.backprop, guided_backprop(model, x, targets=targets))
    assert torch.equal(result.guided, result.backprop * result.cam.maps)
    assert result.cam.targets.tolist() == targets


@pytest.mark.parametrize("method", ["eigencam", "layercam", "scorecam"])
def test_guided_gradcam_with_other_methods(zoo: ReluZoo, method: str) -> None:
    x = torch.randn(2, 3, 11, 9)
    result = guided_gradcam(zoo, x, layer="convs.3", method=method, chunk_size=4)
    expected = cam(zoo, x, layer="convs.3", method=method, targets=result.cam.targets, chunk_size=4)
    assert result.cam.method == method
    assert torch.allclose(result.cam.maps, expected.maps, atol=1e-6)
    assert torch.equal(result.guided, result.backprop * result.cam.maps)


def test_probability_score(zoo: ReluZoo) -> None:
    x = torch.randn(2, 3, 11, 9)
    targets = torch.tensor([1, 2])
    ours = guided_backprop(zoo, x, targets=targets, score="prob")
    # The softmax has no relu: the seed d p_t / d logits = p_t (onehot_t - p) enters the guided relus,
    # so the reference differentiates softmax(logits)[t] through its own clamped relus.
    expected = reference_guided(zoo, x, targets, score="prob")
    scale = float(expected.abs().max())
    assert scale > 1e-6
    assert float((ours - expected).abs().max()) <= 1e-5 * scale
    # not the logit's map (scaled by p_t (1 - p_t) and mixed with the other classes' negative seeds)
    logit = reference_guided(zoo, x, targets)
    assert float((logit - expected).abs().max()) > 0.1 * scale
    xx = x.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="score"):
        guided_backprop(zoo, xx, score="margin")  # type: ignore[arg-type]
