"""fast_layout: channels-last CPU batches for the callbacks; the plain layout for networks that cannot take one."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from lit_explain.explain import cam, explain_predictions, fast_layout, guided_gradcam
from lit_explain.explain.hooks import _CONTIGUOUS_ONLY


class ViewsItsInput(nn.Module):
    """A network whose forward ``.view()``s the raw batch, which a channels-last batch cannot give."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, 5)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        flat = x.view(x.shape[0], -1)
        return self.fc(flat) + torch.relu(self.conv(x)).mean(dim=(2, 3)).sum(dim=1, keepdim=True)


def test_a_network_that_views_its_input_is_explained_on_the_plain_layout() -> None:
    torch.manual_seed(0)
    net, x = ViewsItsInput(), torch.randn(2, 3, 8, 8)
    first = cam(net, fast_layout(x), layer="conv", targets=[1, 2])
    assert net in _CONTIGUOUS_ONLY
    assert net.calls == 2  # the channels-last try, then the plain layout
    second = guided_gradcam(net, fast_layout(x), layer="conv", targets=[1, 2])
    assert net.calls == 3  # no second try for this network
    assert second.guided.shape == x.shape  # the input gradient flows through the layout copy
    torch.testing.assert_close(first.maps, cam(net, x, layer="conv", targets=[1, 2]).maps)
    torch.testing.assert_close(first.maps, second.cam.maps)


def test_an_error_that_is_not_the_layouts_is_raised_and_the_network_keeps_the_fast_layout() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match="channels"):
        cam(net, fast_layout(torch.randn(2, 5, 8, 8)), layer="0")  # 5 channels into a 3-channel conv
    assert net not in _CONTIGUOUS_ONLY


def test_the_engine_keeps_the_callers_layout_and_the_fast_one_gives_the_same_maps_up_to_rounding() -> None:
    torch.manual_seed(0)
    net, x = resnet18(num_classes=4).eval(), torch.randn(3, 3, 64, 64)
    labels = torch.tensor([0, 1, 2])
    plain = explain_predictions(net, x, labels, layer="layer3")
    fast = explain_predictions(net, fast_layout(x), labels, layer="layer3")
    assert torch.equal(plain.logits, net(x).detach())  # the caller's layout: the model's own numbers
    torch.testing.assert_close(fast.logits, plain.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.pred_maps, plain.pred_maps, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fast.guided, plain.guided, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize(
    ("x", "converted"),
    [
        (torch.randn(2, 3, 8, 8), True),
        (torch.randn(2, 1, 8, 8), False),  # one channel: the same memory either way
        (torch.randn(2, 8, 8), False),  # not an image batch
        (torch.randint(0, 9, (2, 3, 8, 8)), False),  # not floating point
    ],
)
def test_which_batches_fast_layout_changes(x: torch.Tensor, converted: bool) -> None:
    out = fast_layout(x)
    assert torch.equal(out, x)
    assert (out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()) == converted
