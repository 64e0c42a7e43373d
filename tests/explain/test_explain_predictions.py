"""explain_predictions: the one engine call for probabilities, predictions, both maps and Guided Grad-CAM."""

from __future__ import annotations

import doctest
import warnings

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

import lit_explain.explain.predictions as predictions
from lit_explain.explain import cam, explain_predictions, guided_gradcam
from lit_explain.explain._true_rows import SHARE_FROM

LAYER = "layer3"
TOL = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A resnet18, 6 images, its predictions, and labels wrong in rows 0, 2 and 4."""
    torch.manual_seed(0)
    net = resnet18(num_classes=4).eval()
    images = torch.randn(6, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        preds = net(images).argmax(1)
    labels = preds.clone()
    labels[::2] = (preds[::2] + 1) % 4
    return net, images, preds, labels


class _Forwards:
    """Counts the network's forward passes and the batch size of each (a forward hook on the network)."""

    def __init__(self, net: nn.Module) -> None:
        self.sizes: list[int] = []
        self._handle = net.register_forward_hook(lambda _m, args, _out: self.sizes.append(args[0].shape[0]))

    def __enter__(self) -> _Forwards:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def _gelu_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def _turned_off(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "Guided Grad-CAM is turned off" in str(w.message)]


def test_agrees_with_separate_cam_and_guided_gradcam_calls(setup) -> None:
    net, images, preds, labels = setup
    e = explain_predictions(net, images, labels, layer=LAYER)
    reference = guided_gradcam(net, images, layer=LAYER)
    torch.testing.assert_close(e.pred_maps, cam(net, images, layer=LAYER).maps, **TOL)
    torch.testing.assert_close(e.guided, reference.guided, **TOL)
    torch.testing.assert_close(e.true_maps, cam(net, images, layer=LAYER, targets=labels).maps, **TOL)
    with torch.no_grad():
        torch.testing.assert_close(e.probs, net(images).softmax(1), **TOL)
    assert torch.equal(e.preds, preds) and torch.equal(e.targets, preds)
    assert e.probs.dtype == torch.float32 and e.preds.dtype == torch.int64
    assert e.guided.shape == images.shape and e.pred_maps.shape == (6, 1, 48, 48)
    assert e.layers == (LAYER,) and e.raw_size == (3, 3)


def test_many_misclassified_rows_get_their_true_class_maps_from_the_same_forward_pass(setup) -> None:
    net, images, preds, labels = setup
    with _Forwards(net) as forwards:
        e = explain_predictions(net, images, labels, layer=LAYER)
    # 3 of 6 rows are wrong (SHARE_FROM or more): one more backward pass over the predicted pass's graph.
    assert forwards.sizes == [6]
    assert torch.equal(e.true_maps[1::2], e.pred_maps[1::2])
    torch.testing.assert_close(
        e.true_maps[0::2], cam(net, images[0::2], layer=LAYER, targets=labels[0::2]).maps, **TOL
    )
    with _Forwards(net) as forwards:
        right = explain_predictions(net, images, preds, layer=LAYER)
        no_labels = explain_predictions(net, images, layer=LAYER)
    assert forwards.sizes == [6, 6]  # all right, or nothing to compare with: no second pass
    assert torch.equal(right.true_maps, right.pred_maps) and torch.equal(
        no_labels.true_maps, no_labels.pred_maps
    )


@pytest.mark.parametrize("guided", [True, False])
def test_few_misclassified_rows_get_a_pass_of_their_own(setup, guided: bool) -> None:
    net, images, preds, _ = setup
    labels = preds.clone()
    labels[3] = (preds[3] + 1) % 4  # 1 of 6 wrong: under SHARE_FROM
    assert SHARE_FROM * len(labels) > 1
    with _Forwards(net) as forwards:
        e = explain_predictions(net, images, labels, layer=LAYER, guided=guided)
    assert forwards.sizes == [6, 1]
    torch.testing.assert_close(
        e.true_maps[3:4], cam(net, images[3:4], layer=LAYER, targets=labels[3:4]).maps, **TOL
    )
    assert torch.equal(e.true_maps[:3], e.pred_maps[:3]) and torch.equal(e.true_maps[4:], e.pred_maps[4:])


def test_unknown_labels_get_the_predicted_class_map(setup) -> None:
    net, images, _, labels = setup
    labels = labels.clone()
    labels[:2] = -1  # row 0 was wrong, row 1 right; unknown now
    with _Forwards(net) as forwards:
        e = explain_predictions(net, images, labels, layer=LAYER, guided=False)
    assert forwards.sizes == [6]  # rows 2 and 4 only, from the same pass (2 of 6 >= SHARE_FROM)
    assert torch.equal(e.true_maps[:2], e.pred_maps[:2])
    torch.testing.assert_close(
        e.true_maps[2:], cam(net, images[2:], layer=LAYER, targets=labels[2:]).maps, **TOL
    )


def test_given_targets_are_explained_and_labels_compared_with_them(setup) -> None:
    net, images, preds, _ = setup
    targets = (preds + 2) % 4
    e = explain_predictions(net, images, targets, layer=LAYER, targets=targets)
    assert torch.equal(e.targets, targets) and torch.equal(e.preds, preds)
    assert torch.equal(e.true_maps, e.pred_maps)  # label == explained class everywhere
    torch.testing.assert_close(e.pred_maps, cam(net, images, layer=LAYER, targets=targets).maps, **TOL)


def test_fused_layers_go_through_the_same_single_pass(setup) -> None:
    net, images, _, labels = setup
    layers = ["layer3", "layer4"]
    with _Forwards(net) as forwards:
        e = explain_predictions(net, images, labels, layer=layers)
    assert forwards.sizes == [6]  # the true-class maps of the 3 wrong rows from the same pass too
    torch.testing.assert_close(e.guided, guided_gradcam(net, images, layer=layers).guided, **TOL)
    torch.testing.assert_close(e.pred_maps, cam(net, images, layer=layers).maps, **TOL)
    torch.testing.assert_close(e.true_maps, cam(net, images, layer=layers, targets=labels).maps, **TOL)
    assert e.layers == tuple(layers) and e.raw_size == (3, 3)  # the first layer's resolution


def test_works_under_inference_mode(setup) -> None:
    net, images, _, labels = setup
    expected = explain_predictions(net, images, labels, layer=LAYER)
    with torch.inference_mode():
        x, y = images.clone(), labels.clone()  # inference tensors, as Lightning's validation loop makes
        e = explain_predictions(net, x, y, layer=LAYER)
    torch.testing.assert_close(e.true_maps, expected.true_maps)
    torch.testing.assert_close(e.guided, expected.guided)


def test_model_modes_grads_and_batchnorm_statistics_are_left_alone(setup) -> None:
    net, images, _, labels = setup
    net.train()
    net.layer1.eval()  # partly frozen: each module's own flag must come back
    flags = {name: m.training for name, m in net.named_modules()}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    marked = torch.full_like(net.fc.weight, 7.0)
    net.fc.weight.grad = marked.clone()
    try:
        explain_predictions(net, images, labels, layer=LAYER)
        assert {name: m.training for name, m in net.named_modules()} == flags
        assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
        assert torch.equal(net.fc.weight.grad, marked)
        assert all(p.grad is None for name, p in net.named_parameters() if name != "fc.weight")
    finally:
        net.fc.weight.grad = None
        net.eval()


def test_network_without_relus_gets_no_guided_and_one_warning() -> None:
    net, images, labels = _gelu_net(), torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, -1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = explain_predictions(net, images, labels, layer="2")
        second = explain_predictions(net, images, labels, layer="2")
    said = _turned_off(caught)
    assert len(said) == 1 and "GELU" in said[0] and "column is left out" in said[0]
    assert first.guided is None and second.guided is None
    assert torch.equal(first.pred_maps, second.pred_maps)
    torch.testing.assert_close(first.pred_maps, cam(net, images, layer="2").maps, **TOL)
    with _Forwards(net) as forwards:  # remembered: no guided attempt, one forward for the predicted class
        explain_predictions(net, images, layer="2")
    assert forwards.sizes == [4]


def test_gradient_free_methods_and_guided_off_make_no_guided_and_say_nothing() -> None:
    net, images = _gelu_net(), torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert explain_predictions(net, images, layer="2", guided=False).guided is None
        assert explain_predictions(net, images, layer="2", method="eigencam").guided is None
    assert _turned_off(caught) == [] and net not in predictions._NETS_WITHOUT_RELU


@pytest.mark.parametrize("method", ["rollout", "gradient_rollout"])
def test_rollout_methods_give_no_guided(method: str) -> None:
    import timm

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=3
    ).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = explain_predictions(vit, images, torch.tensor([0, 1]), method=method)
    assert e.guided is None and _turned_off(caught) == []
    assert e.pred_maps.shape == (2, 1, 32, 32) and e.raw_size == (4, 4)
    torch.testing.assert_close(e.pred_maps, cam(vit, images, method=method).maps, **TOL)


def test_docstring_examples() -> None:
    torch.manual_seed(0)
    result = doctest.testmod(predictions, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0
