"""The randomisation check randomises the top layers in place and puts every tensor back, without a network copy."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models import resnet18

import lit_explain.audit.attention as attention
from lit_explain.audit.attention import randomisation_check
from lit_explain.explain import cam


def _net():
    torch.manual_seed(0)
    net = resnet18(num_classes=3)
    net.train()  # as during training, when the callback audits
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    return net


def _snapshot(net):
    return {k: v.clone() for k, v in net.state_dict().items()}, {
        n: p.grad.clone() for n, p in net.named_parameters()
    }


def test_no_copy_and_everything_restored(monkeypatch) -> None:
    net = _net()
    images = torch.randn(4, 3, 48, 48)
    targets = torch.tensor([0, 1, 2, 0])
    state, grads = _snapshot(net)
    params = list(net.parameters())
    maps = cam(net, images, layer="layer4", targets=targets).maps

    def no_copy(*args, **kwargs):
        raise AssertionError("the randomisation check must not copy the network")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    out = randomisation_check(net, images, targets, maps, "layer4", "gradcam", head="fc")
    monkeypatch.undo()
    assert out["randomised_layers"] == ["layer4.1", "fc"] and out["samples"] == 4
    assert net.training  # the mode is restored too
    for key, value in net.state_dict().items():  # weights and BatchNorm statistics, bit for bit
        assert torch.equal(value, state[key]), key
    for name, p in net.named_parameters():
        assert torch.equal(p.grad, grads[name]), name
    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))  # same Parameter objects

    # The same number as the plain (deep-copy) construction of the randomised network.
    randomised = copy.deepcopy(net)
    torch.manual_seed(0)
    for name in out["randomised_layers"]:
        for module in randomised.get_submodule(name).modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    new = cam(randomised, images, layer="layer4", targets=targets).maps
    assert out["spearman_mean"] == pytest.approx(float(attention.spearman(maps, new).nanmean()), abs=1e-6)


def test_restored_even_when_the_explanation_fails(monkeypatch) -> None:
    net = _net()
    images = torch.randn(2, 3, 48, 48)
    state, _ = _snapshot(net)
    maps = torch.rand(2, 1, 48, 48)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(attention, "cam", fail)
    rng = torch.random.get_rng_state()
    with pytest.raises(KeyboardInterrupt):
        randomisation_check(net, images, torch.tensor([0, 1]), maps, "layer4", "gradcam", head="fc")
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's random stream is untouched
