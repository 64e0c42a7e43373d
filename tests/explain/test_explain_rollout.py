"""Attention rollout against a naive per-block implementation of the formulas, and its contract.

The reference below recomputes each block of a timm ViT by hand (norm1, qkv, softmax(q·kᵀ·scale),
attention times values, projection, layer scale, MLP), so the attention probabilities and their
gradients come from explicit tensors rather than lit_explain's hooks, then builds the full
``T x T`` matrices in forward order exactly as the papers write them:

- rollout: ``Â = 0.5·mean_heads(A) + 0.5·I``, rows renormalised, ``R ← Â·R``;
- gradient rollout: ``Ā = mean_heads((∂y/∂A ⊙ A)⁺)``, ``R ← R + Ā·R``;

and reads the class token's row over the patch tokens.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformer_helpers as th
from explain_helpers import assert_unchanged, snapshot
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from lit_explain.errors import ConfigError
from lit_explain.explain import (
    METHODS,
    ROLLOUT_METHODS,
    CAMResult,
    RolloutResult,
    attention_rollout,
    cam,
    guided_gradcam,
    is_rollout_method,
)

TOKEN_MODELS = [
    "vit",
    "deit_distilled",
    pytest.param("dinov2_reg4", marks=pytest.mark.slow),
    "vit_dynamic_nonsquare",
]


def _manual_forward(model: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and every block's attention probabilities [B, heads, T, T], computed by hand."""
    h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    probs = []
    for blk in model.blocks:
        attn = blk.attn
        y = blk.norm1(h)
        b, n, c = y.shape
        qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        a = F.softmax((q * attn.scale) @ k.transpose(-2, -1), dim=-1)
        probs.append(a)
        out = attn.proj(attn.norm((a @ v).transpose(1, 2).reshape(b, n, c)))
        h = h + blk.ls1(out)
        h = h + blk.ls2(blk.mlp(blk.norm2(h)))
    return model.forward_head(model.norm(h)), probs


def _naive(model: nn.Module, x: torch.Tensor, targets: list[int], method: str) -> torch.Tensor:
    """The read-out row [B, T - prefix] from full per-block matrices."""
    with torch.enable_grad():
        logits, probs = _manual_forward(model, x)
        assert torch.allclose(logits, model(x), atol=1e-4)  # the hand-written forward is the model's
        y = logits[torch.arange(len(targets)), torch.tensor(targets)].sum()
        grads = torch.autograd.grad(y, probs)
    t = probs[0].shape[-1]
    eye = torch.eye(t).expand(x.shape[0], t, t)
    r = eye.clone()
    for a, g in zip(probs, grads, strict=True):
        if method == "rollout":
            a_hat = 0.5 * a.detach().mean(dim=1) + 0.5 * eye
            a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True)
            r = a_hat @ r
        else:
            a_bar = (g * a.detach()).clamp(min=0).mean(dim=1)
            r = r + a_bar @ r
    return r[:, 0, model.num_prefix_tokens :]


@pytest.mark.parametrize("method", ROLLOUT_METHODS)
@pytest.mark.parametrize("key", TOKEN_MODELS)
def test_rollouts_match_the_naive_per_block_formulas(key: str, method: str) -> None:
    model, x, targets = th.shared(key), th.images(key), [1, 5]
    ours = attention_rollout(model, x, targets=targets, method=method)
    expected = _naive(model, x, targets, method)
    grid = model.patch_embed.dynamic_feat_size(th.CASES[key].size)
    assert isinstance(ours, RolloutResult) and ours.method == method
    assert ours.raw.shape == (2, *grid) and ours.maps.shape == (2, 1, *th.CASES[key].size)
    scale = float(expected.abs().max())
    assert float((ours.raw.flatten(1) - expected).abs().max()) <= 1e-4 * scale
    up = F.interpolate(
        expected.reshape(2, 1, *grid), size=th.CASES[key].size, mode="bilinear", align_corners=False
    )
    lo, hi = up.amin(dim=(2, 3), keepdim=True), up.amax(dim=(2, 3), keepdim=True)
    assert float((ours.maps - (up - lo) / (hi - lo)).abs().max()) <= 1e-4  # normalised exactly like cam
    assert ours.targets.tolist() == targets and ours.layers[0] == "blocks.0.attn" and len(ours.layers) == 12
    assert torch.allclose(ours.logits, model(x), atol=1e-4)


def test_gradient_rollout_depends_on_the_target_and_rollout_does_not() -> None:
    model, x = th.shared("vit"), th.images("vit")
    plain = [attention_rollout(model, x, targets=t, method="rollout").raw for t in (1, 7)]
    weighted = [attention_rollout(model, x, targets=t, method="gradient_rollout").raw for t in (1, 7)]
    assert torch.equal(plain[0], plain[1])
    assert float((weighted[0] - weighted[1]).abs().max()) > 1e-3 * float(weighted[0].abs().max())


def test_no_class_token_reads_the_mean_patch_row() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, class_token=False, global_pool="avg"
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    ours = attention_rollout(model, x, method="rollout")
    _, probs = _manual_forward(model, x)
    eye = torch.eye(16)
    r = eye.expand(2, 16, 16)
    for a in probs:
        a_hat = 0.5 * a.detach().mean(dim=1) + 0.5 * eye
        r = (a_hat / a_hat.sum(dim=-1, keepdim=True)) @ r
    assert torch.allclose(ours.raw.flatten(1), r.mean(dim=1), rtol=1e-4, atol=1e-7)


def test_rollout_methods_are_selectable_wherever_a_method_is() -> None:
    assert [m for m in METHODS if is_rollout_method(m)] == ["rollout", "gradient_rollout"]
    assert not is_rollout_method("gradcam") and is_rollout_method("Gradient-Rollout")
    model, x = th.shared("vit"), th.images("vit")
    for method in ROLLOUT_METHODS:
        via_cam = cam(model, x, targets=[2, 3], method=method)
        direct = attention_rollout(model, x, targets=[2, 3], method=method)
        assert isinstance(via_cam, CAMResult) and via_cam.method == method
        assert torch.equal(via_cam.maps, direct.maps) and torch.equal(via_cam.raw[:, 0], direct.raw)
        assert via_cam.raw.shape == (2, 1, 4, 4)


def test_models_without_global_attention_are_refused() -> None:
    with pytest.raises(ConfigError, match="windowed attention"):
        attention_rollout(th.shared("swin"), th.images("swin"))
    with pytest.raises(ConfigError, match="timm-style attention"):
        attention_rollout(th.shared("convnext"), th.images("convnext"))
    with pytest.raises(ConfigError, match="method must be one of"):
        attention_rollout(th.shared("vit"), th.images("vit"), method="gradcam")
    with pytest.raises(ConfigError, match="is an attention rollout"):
        guided_gradcam(th.shared("vit"), th.images("vit"), method="gradient_rollout")


def _messy_vit() -> nn.Module:
    """A ViT in train mode with one block in eval, fused attention mixed per block, .grad on some params."""
    model = th.make("vit").train()
    model.blocks[3].eval()
    for i, block in enumerate(model.blocks):
        block.attn.fused_attn = i % 2 == 0
    gen = torch.Generator().manual_seed(3)
    for i, p in enumerate(model.parameters()):
        if i % 3 == 0:
            p.grad = torch.randn(p.shape, generator=gen)
    return model


@pytest.mark.parametrize("method", [*ROLLOUT_METHODS, "gradcam", "layercam"])
def test_transformers_are_left_exactly_as_found(method: str) -> None:
    model = _messy_vit()
    before, flags = snapshot(model), th.fused_flags(model)
    reference = cam(th.make("vit"), th.images("vit"), targets=[1, 2], method=method)  # eval, same weights
    got = cam(model, th.images("vit"), targets=[1, 2], method=method)
    assert_unchanged(before, snapshot(model))
    assert th.fused_flags(model) == flags
    assert torch.allclose(got.maps, reference.maps, atol=1e-5)  # computed in eval mode


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("method", ["gradient_rollout", "rollout", "gradcam"])
def test_transformers_work_inside_no_grad_and_inference_mode(context: str, method: str) -> None:
    model = th.shared("vit")
    expected = cam(model, th.images("vit"), method=method).maps
    with torch.no_grad() if context == "no_grad" else torch.inference_mode():
        got = cam(model, th.images("vit"), method=method).maps
        assert not torch.is_grad_enabled()
    assert torch.equal(got, expected)


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("method", ROLLOUT_METHODS)
def test_fused_flags_and_hooks_are_restored_when_the_model_raises(method: str) -> None:
    model = _messy_vit()

    def explode(_module: nn.Module, _args: tuple, _out: torch.Tensor) -> None:
        raise Boom("raised inside forward")

    before, flags = snapshot(model), th.fused_flags(model)
    handle = model.blocks[6].register_forward_hook(explode)
    with pytest.raises(Boom):
        attention_rollout(model, th.images("vit"), method=method)
    handle.remove()
    assert th.fused_flags(model) == flags and any(f for _, f in flags) and not all(f for _, f in flags)
    assert_unchanged(before, snapshot(model))


def test_rollout_under_bf16_autocast_is_float32_and_close() -> None:
    model, x = th.shared("vit"), th.images("vit")
    plain = attention_rollout(model, x, method="gradient_rollout")
    before = snapshot(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = attention_rollout(model, x, method="gradient_rollout")
    assert_unchanged(before, snapshot(model))
    assert r.maps.dtype == r.raw.dtype == torch.float32 and bool(torch.isfinite(r.maps).all())
    corr = torch.corrcoef(torch.stack([r.maps.flatten(), plain.maps.flatten()]))[0, 1]
    assert float(corr) > 0.9
