"""lit_explain agrees with pytorch-grad-cam and captum on the same model, images, layer and targets.

What is compared, and why:
- Gradient CAMs: the final maps, against pytorch-grad-cam's output at the input size. Its pipeline
  (ReLU, min-max with eps 1e-7, cv2.resize, mean over layers, min-max again) equals ours (ReLU,
  bilinear align_corners=False upsample, min-max) up to float32 rounding: cv2's INTER_LINEAR upscale
  is the same half-pixel bilinear formula (checked below) and min-max commutes with it.
- EigenCAM: pytorch-grad-cam keeps whatever sign LAPACK returns for the principal direction, ours is
  oriented (see EigenCAM). We compare the signed projections up to sign, then the final maps for the
  images where its sign agrees with ours and against our flipped map where it does not.
- Grad-CAM raw maps against captum's LayerGradCam(relu_attributions=True), at the layer resolution.
- Guided backprop against captum's GuidedBackprop, which only overrides nn.ReLU modules: DenseNet's
  final functional relu is compared through a module-relu twin (see explain_helpers.ModuleReluDenseNet).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, GuidedGradCam, LayerGradCam
from explain_helpers import LAYERS, SIZE, make_model, shared_model
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from lit_explain.errors import ConfigError
from lit_explain.explain import NoReluError, cam, guided_backprop, guided_gradcam, resolve_layer
from lit_explain.explain._common import minmax, upsample
from lit_explain.explain.cam import eigen_projection

TOL = 1e-4
ARCHS = ["resnet18", "vgg11_bn", "densenet121", "mobilenet_v3_small"]
PEERS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
}
# (batch size, targets): batch 1 with argmax targets, batch 3 with explicit per-sample classes.
BATCHES = {"b1-argmax": (1, None), "b3-per-sample": (3, [1, 5, 9])}


def _images(batch: int, size: tuple[int, int] = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))


def _peer_targets(targets: list[int] | None, kind=ClassifierOutputTarget):
    return None if targets is None else [kind(t) for t in targets]


def _max_diff(ours: torch.Tensor, theirs) -> float:
    theirs = torch.as_tensor(np.asarray(theirs)) if not isinstance(theirs, torch.Tensor) else theirs
    return float((ours.detach().cpu() - theirs.detach().cpu().reshape(ours.shape)).abs().max())


def test_cv2_resize_is_bilinear_half_pixel() -> None:
    # The premise of comparing final maps: pytorch-grad-cam resizes with cv2, we with F.interpolate.
    small = torch.rand(1, 1, 3, 2)
    ours = F.interpolate(small, size=SIZE, mode="bilinear", align_corners=False)[0, 0]
    theirs = cv2.resize(small[0, 0].numpy(), (SIZE[1], SIZE[0]))
    assert _max_diff(ours, theirs) <= 1e-6


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", PEERS)
@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_methods_match_pytorch_grad_cam(arch: str, method: str, batch: str) -> None:
    model = shared_model(arch)
    n, targets = BATCHES[batch]
    x = _images(n)
    ours = cam(model, x, layer=LAYERS[arch], targets=targets, method=method)
    with PEERS[method](model=model, target_layers=[resolve_layer(model, LAYERS[arch])[1]]) as peer:
        theirs = peer(input_tensor=x, targets=_peer_targets(targets))
    assert ours.maps.shape == (n, 1, *SIZE)
    assert _max_diff(ours.maps[:, 0], theirs) <= TOL


def test_prob_score_matches_softmax_target() -> None:
    model, x, targets = shared_model("resnet18"), _images(3), [2, 4, 6]
    ours = cam(model, x, layer="layer4", targets=targets, method="gradcam++", score="prob")
    with GradCAMPlusPlus(model=model, target_layers=[model.layer4]) as peer:
        theirs = peer(input_tensor=x, targets=_peer_targets(targets, ClassifierOutputSoftmaxTarget))
    assert _max_diff(ours.maps[:, 0], theirs) <= TOL


def test_several_layers_fused_by_mean_match_pytorch_grad_cam() -> None:
    model, x, targets = shared_model("resnet18"), _images(3), [2, 4, 6]
    ours = cam(model, x, layer=["layer3", "layer4"], targets=targets, fuse="mean")
    with GradCAM(model=model, target_layers=[model.layer3, model.layer4]) as peer:
        theirs = peer(input_tensor=x, targets=_peer_targets(targets))
    assert isinstance(ours.raw, tuple) and len(ours.raw) == 2
    assert _max_diff(ours.maps[:, 0], theirs) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_eigencam_matches_pytorch_grad_cam_up_to_the_svd_sign(arch: str) -> None:
    model, x = shared_model(arch), _images(3)
    name, layer = resolve_layer(model, LAYERS[arch])
    ours = cam(model, x, layer=name, method="eigencam")
    with EigenCAM(model=model, target_layers=[layer]) as peer:
        theirs = torch.as_tensor(peer(input_tensor=x, targets=None))

    captured = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    their_proj = torch.as_tensor(get_2d_projection(captured["a"].numpy()))
    our_proj = eigen_projection(captured["a"])
    for i in range(x.shape[0]):
        sign = 1.0 if float((their_proj[i] * our_proj[i]).sum()) >= 0 else -1.0
        scale = float(their_proj[i].abs().max())
        assert _max_diff(our_proj[i], sign * their_proj[i]) <= TOL * scale
        if sign > 0:
            expected = ours.maps[i, 0]
        else:  # the map pytorch-grad-cam draws from the other orientation of the same component
            flipped = (-our_proj[i]).clamp_min(0)[None, None]
            expected = minmax(upsample(flipped, SIZE))[0, 0]
        assert _max_diff(expected, theirs[i]) <= TOL
    # our orientation: the map correlates positively with the mean activation over channels
    mean_act = captured["a"].mean(dim=1).flatten(1)
    corr = ((mean_act - mean_act.mean(1, keepdim=True)) * our_proj.flatten(1)).sum(1)
    assert bool((corr >= 0).all())


@pytest.mark.parametrize(
    ("arch", "layer", "chunk"),
    [("resnet18", "layer1", 7), ("mobilenet_v3_small", "features.3", 16)],
)
def test_scorecam_matches_pytorch_grad_cam(arch: str, layer: str, chunk: int) -> None:
    # Layers with few channels keep the B*K masked forwards cheap; chunk 7 splits images across chunks.
    model, x, targets = shared_model(arch), _images(2, (40, 36)), [3, 8]
    ours = cam(model, x, layer=layer, targets=targets, method="scorecam", chunk_size=chunk)
    with ScoreCAM(model=model, target_layers=[resolve_layer(model, layer)[1]]) as peer:
        theirs = peer(input_tensor=x, targets=_peer_targets(targets))
    assert _max_diff(ours.maps[:, 0], theirs) <= TOL


@pytest.mark.parametrize("arch", ARCHS)
def test_raw_gradcam_matches_captum_layer_gradcam(arch: str) -> None:
    model, x, targets = shared_model(arch), _images(3), [1, 5, 9]
    name, layer = resolve_layer(model, LAYERS[arch])
    ours = cam(model, x, layer=name, targets=targets)
    theirs = LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)
    assert _max_diff(ours.raw, theirs) <= TOL * max(1.0, float(theirs.abs().max()))


def test_layer_followed_by_an_inplace_relu_matches_captum() -> None:
    # DenseNet's forward applies F.relu(inplace=True) to `features`: the layer's own output (before
    # that relu) is what is explained, as captum does; pytorch-grad-cam would see the relu'd tensor.
    model, x, targets = shared_model("densenet121"), _images(3), [1, 5, 9]
    ours = cam(model, x, layer="features", targets=targets)
    theirs = LayerGradCam(model, model.features).attribute(x, target=targets, relu_attributions=True)
    assert _max_diff(ours.raw, theirs) <= TOL * max(1.0, float(theirs.abs().max()))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn", "densenet121_module_relu", "mobilenet_v3_small"])
def test_guided_backprop_matches_captum(arch: str, batch: str) -> None:
    model = make_model(arch) if arch.endswith("module_relu") else shared_model(arch)
    n, targets = BATCHES[batch]
    x = _images(n)
    ours = guided_backprop(model, x, targets=targets)
    chosen = targets if targets is not None else model(x).argmax(1).tolist()
    theirs = GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=chosen)
    assert ours.shape == x.shape and ours.dtype == torch.float32
    assert _max_diff(ours, theirs) <= TOL * max(1.0, float(theirs.abs().max()))


def test_guided_backprop_covers_densenets_functional_relu() -> None:
    # Same weights; the original calls F.relu in forward, the twin an nn.ReLU module.
    functional, modular = shared_model("densenet121"), make_model("densenet121_module_relu")
    modular.load_state_dict(functional.state_dict())
    x = _images(2)
    ours = guided_backprop(functional, x, targets=[1, 2])
    theirs = GuidedBackprop(modular).attribute(x.clone().requires_grad_(True), target=[1, 2])
    assert _max_diff(ours, theirs) <= TOL * max(1.0, float(theirs.abs().max()))


@pytest.mark.parametrize(("arch", "layer"), [("resnet18", "layer4"), ("vgg11_bn", "features.24")])
def test_guided_gradcam_parts_match_captum(arch: str, layer: str) -> None:
    # VGG's classifier has relus after the layer: the CAM must still use the plain gradient.
    model, x, targets = shared_model(arch), _images(2), [1, 5]
    _, module = resolve_layer(model, layer)
    ours = guided_gradcam(model, x, layer=layer, targets=targets)
    theirs = GuidedGradCam(model, module).attribute(x, target=targets, interpolate_mode="bilinear")
    # captum multiplies by the unnormalised upsampled map; rebuild that product from our parts.
    rebuilt = ours.backprop * upsample(ours.cam.raw, SIZE)
    assert _max_diff(rebuilt, theirs) <= TOL * max(1.0, float(theirs.abs().max()))
    assert _max_diff(ours.guided, ours.backprop * ours.cam.maps) == 0.0


@pytest.mark.parametrize("method", PEERS)
def test_silu_network_efficientnet_matches_pytorch_grad_cam(method: str) -> None:
    # EfficientNet-B0: SiLU activations and squeeze-excitation gates, no ReLU anywhere.
    model, x, targets = shared_model("efficientnet_b0"), _images(2), [1, 5]
    ours = cam(model, x, layer=LAYERS["efficientnet_b0"], targets=targets, method=method)
    layer = resolve_layer(model, LAYERS["efficientnet_b0"])[1]
    with PEERS[method](model=model, target_layers=[layer]) as peer:
        theirs = peer(input_tensor=x, targets=_peer_targets(targets))
    assert float(ours.maps.std()) > 0.05
    assert _max_diff(ours.maps[:, 0], theirs) <= TOL


def test_guided_backprop_on_a_silu_network_is_refused_unless_waived() -> None:
    model, x = shared_model("efficientnet_b0"), _images(2)
    with pytest.raises(NoReluError, match=r"needs ReLU.*SiLU") as err:
        guided_backprop(model, x, targets=[1, 5])
    assert isinstance(err.value, ConfigError)
    with pytest.raises(NoReluError):
        guided_gradcam(model, x, layer="features", targets=[1, 5])
    # waived: the plain input gradient, which is what captum's GuidedBackprop gives without ReLUs
    ours = guided_backprop(model, x, targets=[1, 5], allow_no_relu=True)
    theirs = GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=[1, 5])
    assert _max_diff(ours, theirs) <= TOL * max(1.0, float(theirs.abs().max()))
