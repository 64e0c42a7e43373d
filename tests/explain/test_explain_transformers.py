"""timm transformers and channels-last models: agreement with pytorch-grad-cam, layouts, layer choice.

The peer runs with the ``reshape_transform`` its documentation prescribes (see transformer_helpers);
lit_explain runs with no reshape code at all and must give the same maps within 1e-4 after the
per-image min-max. Random weights, small inputs; Swin and the DINOv2 ViT are the heavy ones (slow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformer_helpers as th
from explain_helpers import assert_unchanged, snapshot
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from timm.models.swin_transformer import SwinTransformer as SwinTimm
from timm.models.vision_transformer import VisionTransformer as VitTimm
from torch import nn
from torchvision.models import VisionTransformer

from lit_explain.errors import ConfigError
from lit_explain.explain import (
    CAM_METHODS,
    LayerNotFoundError,
    Layout,
    NoReluError,
    ZeroGradientError,
    cam,
    family_layer,
    guided_backprop,
    guided_gradcam,
    resolve_layer,
)
from lit_explain.explain.layouts import detect_layout

TOL = 1e-4
PEERS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
}
HEAVY = {"swin", "dinov2_reg4"}
MODELS = [pytest.param(k, marks=pytest.mark.slow) if k in HEAVY else k for k in th.CASES]
TARGETS = [1, 5]


def _peer_maps(key: str, method: str, x: torch.Tensor) -> torch.Tensor:
    model = th.shared(key)
    layer = resolve_layer(model, th.CASES[key].layer)[1]
    with PEERS[method](
        model=model, target_layers=[layer], reshape_transform=th.peer_reshape(key, model)
    ) as peer:
        out = peer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in TARGETS])
    return torch.as_tensor(np.asarray(out))


@pytest.mark.parametrize("method", PEERS)
@pytest.mark.parametrize("key", MODELS)
def test_gradient_methods_match_pytorch_grad_cam_without_reshape_code(key: str, method: str) -> None:
    x = th.images(key)
    ours = cam(th.shared(key), x, targets=TARGETS, method=method)  # layer=None: the family rule
    assert ours.layers == (th.CASES[key].layer,)
    assert ours.maps.shape == (2, 1, *th.CASES[key].size)
    assert float(ours.maps.std()) > 0.05  # a real picture, not a constant
    theirs = _peer_maps(key, method, x)
    assert float((ours.maps[:, 0] - theirs).abs().max()) <= TOL


def _tiny(kind: str) -> nn.Module:
    """Tiny timm models (random init) so that scorecam's B*K masked forwards stay cheap."""
    torch.manual_seed(0)
    if kind == "vit_reg":
        return VitTimm(
            img_size=(24, 40), patch_size=8, embed_dim=16, depth=2, num_heads=2, reg_tokens=2, num_classes=4
        )
    return SwinTimm(
        img_size=32, patch_size=4, window_size=2, embed_dim=8, depths=(1, 1), num_heads=(1, 1), num_classes=4
    )


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("kind", ["vit_reg", "swin"])
def test_every_method_reads_tokens_and_channels_last_like_the_explicit_reshape(
    kind: str, method: str
) -> None:
    # eigencam and scorecam see the same [B, C, h, w] tensor as the gradient methods: the detected
    # layout == the layout name == the peer-style reshape callable.
    model = _tiny(kind).eval()
    size = (24, 40) if kind == "vit_reg" else (32, 32)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    if kind == "vit_reg":
        name, grid = "tokens", (3, 5)

        def explicit(t: torch.Tensor) -> torch.Tensor:
            return t[:, 3:].reshape(t.shape[0], *grid, t.shape[2]).permute(0, 3, 1, 2)
    else:
        name, grid = "nhwc", (4, 4)

        def explicit(t: torch.Tensor) -> torch.Tensor:
            return t.permute(0, 3, 1, 2)

    auto = cam(model, x, targets=[1, 3], method=method, chunk_size=64)
    assert auto.raw.shape == (2, 1, *grid)
    assert float(auto.maps.std()) > 0.05
    for kwargs in ({"layout": name}, {"reshape": explicit}):
        other = cam(model, x, targets=[1, 3], method=method, chunk_size=64, **kwargs)
        assert torch.equal(auto.maps, other.maps), kwargs


@pytest.mark.parametrize("key", ["vit", "vit_dynamic_nonsquare"])
def test_eigencam_on_tokens_is_the_principal_component_of_the_patch_grid(key: str) -> None:
    model, x = th.shared(key), th.images(key)
    captured = {}
    layer = resolve_layer(model, th.CASES[key].layer)[1]
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    grid = th.peer_reshape(key, model)(captured["a"])
    theirs = torch.as_tensor(get_2d_projection(grid.numpy()))  # pytorch-grad-cam's signed projection
    ours = cam(model, x, method="eigencam")
    for i in range(2):
        # equal up to the SVD's arbitrary sign, after the ReLU every CAM applies
        diffs = [float((ours.raw[i, 0] - (sign * theirs[i]).clamp_min(0)).abs().max()) for sign in (1, -1)]
        assert min(diffs) <= TOL * max(1.0, float(theirs[i].abs().max()))


def test_family_rule_finds_the_backbone_inside_a_wrapper() -> None:
    class Classifier(nn.Module):  # the shape of lit_explain's ImageClassifier: the backbone as `net`
        def __init__(self) -> None:
            super().__init__()
            self.net = th.make("vit")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    wrapper = Classifier()
    assert family_layer(wrapper) == "net.blocks.11.norm1"
    x = th.images("vit")
    inner = cam(wrapper.net, x, targets=TARGETS)
    outer = cam(wrapper, x, targets=TARGETS)
    assert outer.layers == ("net.blocks.11.norm1",) and torch.equal(inner.maps, outer.maps)


def test_torchvision_vit_gets_its_last_encoder_norm_and_a_found_prefix() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=16, num_classes=4
    ).eval()
    r = cam(model, torch.randn(2, 3, 32, 32), targets=[0, 3])
    assert r.layers == ("encoder.layers.encoder_layer_1.ln_1",)
    assert r.raw.shape == (2, 1, 4, 4)  # 17 tokens: the class token found and dropped, 4x4 grid


@pytest.mark.parametrize("layer", ["norm", "blocks.11"])
@pytest.mark.parametrize("key", ["vit", "deit_distilled"])
def test_a_layer_after_which_only_the_class_token_is_read_is_refused(key: str, layer: str) -> None:
    with pytest.raises(ZeroGradientError, match=r"zero.*blocks\.11\.norm1") as err:
        cam(th.shared(key), th.images(key), layer=layer)
    assert isinstance(err.value, ConfigError)
    cam(th.shared(key), th.images(key), layer="blocks.11.norm1")  # the suggested layer works


def test_wrong_layer_names_on_transformers_list_candidates() -> None:
    with pytest.raises(
        LayerNotFoundError, match=r"Close matches: .*blocks\.11\.norm1.*picks 'blocks\.11\.norm1'"
    ):
        cam(th.shared("vit"), th.images("vit"), layer="blocks.11.norm")
    with pytest.raises(
        LayerNotFoundError, match=r"picks 'layers\.3\.blocks\.1\.norm1'.*Top-level layers: patch_embed"
    ):
        cam(th.shared("swin"), th.images("swin"), layer="layer4")


def test_bad_layout_arguments_are_config_errors() -> None:
    model, x = th.shared("vit"), th.images("vit")
    with pytest.raises(ConfigError, match="layout must be one of"):
        cam(model, x, layout="hwc")
    with pytest.raises(ConfigError, match="not a nhwc layout"):
        cam(model, x, layout="nhwc")  # the layer outputs tokens
    with pytest.raises(ConfigError, match=r"reshape must return a \[B, C, h, w\]"):
        cam(model, x, reshape=lambda t: t[:, 1:])
    with pytest.raises(ConfigError, match="no spatial layout"):
        cam(model, x, layer="head")  # [B, classes]


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((2, 768, 7, 7), (224, 224), Layout("nchw")),
        ((2, 7, 7, 768), (224, 224), Layout("nhwc")),
        ((2, 64, 56, 56), (224, 224), Layout("nchw")),  # 64 channels could look spatial; 56x56 fits
        ((2, 512, 3, 2), (67, 45), Layout("nchw")),  # ceil/floor strides of an odd input
        ((2, 3, 5, 192), (48, 80), Layout("nhwc")),  # non-square channels-last
        ((2, 197, 384), (224, 224), Layout("tokens", prefix=1, grid=(14, 14))),  # searched prefix
        ((2, 198, 192), (224, 224), Layout("tokens", prefix=2, grid=(14, 14))),
        ((2, 49, 768), (224, 224), Layout("tokens", prefix=0, grid=(7, 7))),  # Swin-style tokens
        ((2, 16, 32), (48, 80), Layout("tokens", prefix=1, grid=(3, 5))),
    ],
)
def test_layout_detection_from_shapes(shape: tuple, size: tuple, expected: Layout) -> None:
    assert detect_layout(nn.Identity(), "", torch.empty(shape), size) == expected


def test_ambiguous_or_impossible_layouts() -> None:
    ambiguous = torch.empty(2, 7, 7, 7)
    assert detect_layout(nn.Identity(), "", ambiguous, (224, 224)).kind == "nchw"  # PyTorch's convention
    owner = nn.Module()
    owner.output_fmt = "NHWC"  # timm's declaration (Swin) breaks the tie
    assert detect_layout(owner, "", ambiguous, (224, 224)).kind == "nhwc"
    with pytest.raises(ConfigError, match="cannot tell which dimensions"):
        detect_layout(nn.Identity(), "x", torch.empty(2, 300, 5, 300), (224, 224))
    vit = nn.Module()
    vit.num_prefix_tokens = 1
    with pytest.raises(ConfigError, match="do not form a grid"):
        detect_layout(vit, "x", torch.empty(2, 150, 8), (224, 224))  # 149 patch tokens: no grid


def test_layouts_move_the_right_elements() -> None:
    # token (prefix + i*w + j) lands at [:, :, i, j]; channels-last [b, i, j, c] at [b, c, i, j]
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    grid = Layout("tokens", prefix=1, grid=(2, 3))(tokens)
    assert grid.shape == (2, 3, 2, 3) and torch.equal(grid[1, 2, 1, 0], tokens[1, 1 + 1 * 3 + 0, 2])
    nhwc = torch.randn(2, 4, 5, 6)
    assert torch.equal(Layout("nhwc")(nhwc)[1, 3, 2, 4], nhwc[1, 2, 4, 3])


@pytest.mark.parametrize("key", ["vit", "convnext"])
def test_guided_backprop_on_gelu_networks_names_the_reason(key: str) -> None:
    model, x = th.shared(key), th.images(key)
    before = snapshot(model)
    with pytest.raises(NoReluError, match=r"ran no relu \(its activations: GELU\)"):
        guided_gradcam(model, x, targets=TARGETS)
    assert_unchanged(before, snapshot(model))
    plain = guided_backprop(model, x, targets=TARGETS, allow_no_relu=True)
    xg = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(xg)[[0, 1], TARGETS].sum(), xg)
    assert torch.allclose(plain, expected, atol=1e-6 * float(expected.abs().max()))


def test_chunked_transformer_explanations_equal_one_pass() -> None:
    model, x = th.shared("vit"), th.images("vit", batch=3)
    for method in ("gradcam", "gradient_rollout"):
        whole = cam(model, x, targets=[1, 5, 7], method=method, batch_size=None)
        sliced = cam(model, x, targets=[1, 5, 7], method=method, batch_size=2)
        assert float((whole.maps - sliced.maps).abs().max()) <= 1e-5, method
