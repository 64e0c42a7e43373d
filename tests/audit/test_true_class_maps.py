"""The one "CAMs for the true and the predicted class" helper used by the audit and the training callbacks."""

from __future__ import annotations

import torch
from torchvision.models import resnet18

import lit_explain.explain.true_class as true_class
from lit_explain.audit.attention import explain_batch
from lit_explain.explain import cam
from lit_explain.explain.true_class import true_class_maps


def _setup():
    torch.manual_seed(0)
    net = resnet18(num_classes=4).eval()
    images = torch.randn(6, 3, 48, 48)
    with torch.no_grad():
        preds = net(images).argmax(1)
    labels = preds.clone()
    labels[::2] = (preds[::2] + 1) % 4  # rows 0, 2, 4 misclassified
    return net, images, preds, labels


def test_only_misclassified_rows_get_a_second_pass(monkeypatch) -> None:
    net, images, preds, labels = _setup()
    predicted = cam(net, images, layer="layer3", targets=preds)
    seen: list[torch.Tensor] = []
    real = true_class.cam

    def counting(model, x, **kwargs):
        seen.append(kwargs["targets"].clone())
        return real(model, x, **kwargs)

    monkeypatch.setattr(true_class, "cam", counting)
    maps = true_class_maps(net, images, labels, predicted, layer="layer3")
    assert len(seen) == 1 and torch.equal(seen[0], labels[::2])
    expected = cam(net, images, layer="layer3", targets=labels).maps
    assert torch.allclose(maps, expected, atol=1e-5)
    assert torch.equal(maps[1::2], predicted.maps[1::2])  # right rows: the predicted map, reused
    seen.clear()
    true_class_maps(net, images, preds, predicted, layer="layer3")
    assert seen == []  # all right: no second pass at all


def test_audit_uses_the_shared_engine_call(monkeypatch) -> None:
    net, images, preds, labels = _setup()
    calls = []
    import lit_explain.audit.attention as attention

    real = attention.explain_predictions
    monkeypatch.setattr(attention, "explain_predictions", lambda *a, **k: calls.append(1) or real(*a, **k))
    maps = explain_batch(net, images, labels, preds, "layer3", "gradcam")
    assert calls == [1]
    assert torch.allclose(maps.true, cam(net, images, layer="layer3", targets=labels).maps, atol=1e-5)
    assert torch.allclose(maps.pred, cam(net, images, layer="layer3", targets=preds).maps, atol=1e-5)
    assert maps.layer == "layer3" and maps.raw_size == (3, 3)
