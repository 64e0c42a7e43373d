"""The engine runs CPU image batches channels-last, and falls back to the caller's layout when a network cannot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_explain.explain import cam, guided_gradcam
from lit_explain.explain.hooks import _CONTIGUOUS_ONLY, channels_last_input


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


def test_a_network_that_views_its_input_is_explained_in_its_own_layout() -> None:
    torch.manual_seed(0)
    net, x = ViewsItsInput(), torch.randn(2, 3, 8, 8)
    first = cam(net, x, layer="conv", targets=[1, 2])
    assert net in _CONTIGUOUS_ONLY
    assert net.calls == 2  # the channels-last try, then the batch as given
    second = guided_gradcam(net, x, layer="conv", targets=[1, 2])
    assert net.calls == 3  # no second try for this network
    assert torch.equal(first.maps, second.cam.maps)
    assert torch.equal(first.logits, net(x).detach())


def test_an_error_that_is_not_the_layouts_is_raised_and_the_network_keeps_the_fast_layout() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match="channels"):
        cam(net, torch.randn(2, 5, 8, 8), layer="0")  # 5 channels into a 3-channel conv
    assert net not in _CONTIGUOUS_ONLY


@pytest.mark.parametrize(
    ("x", "converted"),
    [
        (torch.randn(2, 3, 8, 8), True),
        (torch.randn(2, 1, 8, 8), False),  # one channel: the same memory either way
        (torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last), False),  # already
        (torch.randn(2, 8, 8), False),  # not an image batch
        (torch.randint(0, 9, (2, 3, 8, 8)), False),  # not floating point
    ],
)
def test_which_inputs_go_in_channels_last(x: torch.Tensor, converted: bool) -> None:
    out = channels_last_input(nn.Conv2d(3, 4, 3), (x,), {})
    assert (out is not None) == converted
    if converted:
        assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, x)
    assert channels_last_input(nn.Conv2d(3, 4, 3), (x,), {"extra": 1}) is None
