"""Layer resolution: names, modules, automatic choice, helpful errors."""

from __future__ import annotations

import re

import pytest
import torch
from explain_helpers import shared_model
from torch import nn
from torchvision import models

from lit_explain.explain import LayerNotFoundError, cam, resolve_layer, resolve_layers
from lit_explain.explain.layers import _AUTO_CACHE


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return models.resnet18(num_classes=10).eval()


def test_dotted_names_and_modules(resnet: nn.Module) -> None:
    assert resolve_layer(resnet, "layer4") == ("layer4", resnet.layer4)
    assert resolve_layer(resnet, "layer4.1.conv2") == ("layer4.1.conv2", resnet.layer4[1].conv2)
    assert resolve_layer(resnet, resnet.layer3[0]) == ("layer3.0", resnet.layer3[0])
    with torch.device("meta"):  # names need no weights; skips initialising VGG's 130M parameters
        vgg = models.vgg11_bn(num_classes=10)
    assert resolve_layer(vgg, "features.27")[1] is vgg.features[27]
    assert [n for n, _ in resolve_layers(resnet, ["layer3", resnet.layer4])] == ["layer3", "layer4"]


def test_wrong_name_lists_close_matches_then_candidates(resnet: nn.Module) -> None:
    with pytest.raises(LayerNotFoundError) as err:
        resolve_layer(resnet, "layer5")
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "'layer5'" in message and "Close matches: layer4" in message
    assert "layer4.1.conv2" in message  # convolution-like candidates
    with pytest.raises(LayerNotFoundError, match=re.escape("layer4.1.conv2")):
        resolve_layer(resnet, "layer4.1.conv3")
    with pytest.raises(LayerNotFoundError):
        cam(resnet, torch.randn(1, 3, 32, 32), layer="head")


def test_module_from_another_model_is_rejected(resnet: nn.Module) -> None:
    with pytest.raises(LayerNotFoundError, match="not part of ResNet"):
        resolve_layer(resnet, nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError):
        resolve_layer(resnet, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs the images"):
        resolve_layer(resnet, None)


def test_module_prefix_only_for_wrapped_models(resnet: nn.Module) -> None:
    wrapped = nn.DataParallel(resnet)
    assert resolve_layer(wrapped, "module.layer4")[1] is resnet.layer4
    assert resolve_layer(wrapped, "layer4")[1] is resnet.layer4
    with pytest.raises(LayerNotFoundError):
        resolve_layer(resnet, "module.layer4")


@pytest.mark.parametrize(
    ("builder", "expected"),
    [
        (lambda: models.resnet18(num_classes=10), "layer4"),
        (lambda: shared_model("vgg11_bn"), "features"),  # not the adaptive (7, 7) avgpool after it
        (lambda: models.densenet121(num_classes=10), "features"),  # pooled functionally in forward
        (lambda: models.mobilenet_v3_small(num_classes=10), "features"),  # SE blocks pool inside
        (lambda: models.squeezenet1_1(num_classes=10), "classifier.2"),  # the CAM conv head, before its pool
    ],
)
def test_automatic_layer_is_the_last_spatial_output_before_global_pooling(builder, expected: str) -> None:
    torch.manual_seed(0)
    model = builder()
    model.train()
    try:
        name, module = resolve_layer(model, None, torch.randn(2, 3, 64, 64))
        assert name == expected and module is dict(model.named_modules())[expected]
        assert model.training  # the probe ran in eval mode and gave the flag back
    finally:
        model.eval()  # the VGG is shared with other tests


def test_automatic_choice_is_cached_per_input_shape(resnet: nn.Module) -> None:
    calls = []
    handle = resnet.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    try:
        x = torch.randn(3, 3, 48, 40)
        r1 = cam(resnet, x)
        r2 = cam(resnet, x)
    finally:
        handle.remove()
    assert r1.layers == r2.layers == ("layer4",)
    # one probe forward of a single image, then one forward per call
    assert calls == [1, 3, 3]
    assert any(key[0] == (3, 48, 40) for key in _AUTO_CACHE[resnet])
