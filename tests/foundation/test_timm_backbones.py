"""timm backbones (``timm:NAME``): data-shaped construction, weights (local files, the Hugging Face cache,
offline errors), fine-tuning parts, default explanation layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from lit_explain.data import ShapesDataModule
from lit_explain.errors import ConfigError
from lit_explain.models import ImageClassifier, build_backbone, timm_backbones
from lit_explain.models.explain_layers import default_explain_layers

VIT = "timm:vit_tiny_patch16_224"
CONVNEXT = "timm:convnext_atto"


def _shapes_model(backbone: str, **kwargs) -> ImageClassifier:
    """An ImageClassifier built the way `fit` builds it: data metadata first (6 classes, 64x64)."""
    model = ImageClassifier(backbone, **kwargs)
    model.adopt_data_metadata(ShapesDataModule().metadata())
    model.setup("fit")
    return model


def test_vit_takes_the_data_size_channels_and_kwargs() -> None:
    net = build_backbone(VIT, 5, in_channels=1, input_size=[64, 96], backbone_kwargs={"patch_size": 8})
    assert net.patch_embed.grid_size == (8, 12) and net.patch_embed.proj.in_channels == 1
    assert net(torch.zeros(2, 1, 64, 96)).shape == (2, 5)
    model = _shapes_model(VIT)
    assert model.net.patch_embed.img_size == (64, 64) and model.net.num_classes == 6
    assert model.net(torch.zeros(1, 3, 64, 64)).shape == (1, 6)


def test_convnext_and_the_head_through_get_classifier() -> None:
    model = _shapes_model(CONVNEXT)
    assert model.head_names == ["head.fc"] and model.net.get_classifier().out_features == 6
    # Everything but the head is backbone: frozen together by the fine-tuning schedule.
    head = sum(p.numel() for p in model.net.get_classifier().parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert backbone + head == sum(p.numel() for p in model.net.parameters())


def test_vit_backbone_includes_its_own_parameters_and_skips_their_decay() -> None:
    model = _shapes_model(VIT, backbone_kwargs={"patch_size": 8})
    backbone = {id(p) for p in model.backbone.parameters()}
    assert id(model.net.cls_token) in backbone and id(model.net.pos_embed) in backbone
    assert id(model.net.head.weight) not in backbone
    decay, no_decay = model._param_groups()
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.net.pos_embed) in no_decay_ids and id(model.net.cls_token) in no_decay_ids
    assert id(model.net.blocks[0].attn.qkv.weight) in {id(p) for p in decay["params"]}


def test_num_classes_before_the_data_gives_a_dynamic_size_that_rebuilds_the_same() -> None:
    model = ImageClassifier(VIT, num_classes=3)
    assert model.hparams.backbone_kwargs == {"dynamic_img_size": True, "img_size": [224, 224]}
    assert model.net(torch.zeros(1, 3, 64, 96)).shape == (1, 3)
    model.adopt_data_metadata({"input_size": [64, 64], "class_names": ["a", "b", "c"]})
    again = ImageClassifier(**model.hparams)
    again.load_state_dict(model.state_dict())  # same architecture, same position-embedding grid


def test_bad_timm_settings_name_what_to_change() -> None:
    with pytest.raises(ConfigError, match=r"not a timm model\. Did you mean vit_tiny_patch16_224"):
        build_backbone("timm:vit_tiny_patch16_2244", 3)
    with pytest.raises(
        ConfigError, match=r"backbone_kwargs.num_classes is set by lit_explain; use model.num_classes"
    ):
        build_backbone(CONVNEXT, 3, backbone_kwargs={"num_classes": 4})
    with pytest.raises(ConfigError, match=r"backbone_kwargs do not fit timm model convnext_atto: .*'colour'"):
        build_backbone(CONVNEXT, 3, backbone_kwargs={"colour": "red"})
    with pytest.raises(ConfigError, match=r"cifar_stem applies to torchvision ResNets only"):
        build_backbone(CONVNEXT, 3, cifar_stem=True)
    with pytest.raises(ConfigError, match=r"Conflicting input image sizes"):
        build_backbone(VIT, 3, input_size=[64, 64], backbone_kwargs={"img_size": 32})


@pytest.fixture(scope="module")
def convnext_1000() -> torch.nn.Module:
    """A timm ConvNeXt with ImageNet's head shape, standing in for published weights."""
    torch.manual_seed(0)
    return timm.create_model("convnext_atto", num_classes=1000)


def _same_backbone(net: torch.nn.Module, reference: torch.nn.Module, skip: str) -> None:
    expected = reference.state_dict()
    for key, value in net.state_dict().items():
        if not key.startswith(skip):
            assert torch.equal(value, expected[key]), key


def test_weights_path_safetensors_and_pth(convnext_1000: torch.nn.Module, tmp_path: Path) -> None:
    file = tmp_path / "convnext_atto.safetensors"
    save_file(convnext_1000.state_dict(), str(file))
    model = _shapes_model(CONVNEXT, weights_path=str(file))
    _same_backbone(model.net, convnext_1000, skip="head.fc")
    assert model.net.head.fc.out_features == 6 and model.pretrained
    # A .pth holding a lit_explain checkpoint's state dict ("net." keys) with the same class count keeps
    # its head.
    six = model.net.state_dict()
    pth = tmp_path / "six.pth"
    torch.save({"state_dict": {f"net.{k}": v for k, v in six.items()}}, pth)
    again = _shapes_model(CONVNEXT, weights_path=str(pth))
    assert torch.equal(again.net.head.fc.weight, six["head.fc.weight"])
    # One input channel: timm adapts the RGB stem (sum over channels).
    gray = build_backbone(CONVNEXT, 6, in_channels=1, weights_path=str(file))
    stem = convnext_1000.stem[0].weight
    assert torch.allclose(gray.stem[0].weight, stem.sum(dim=1, keepdim=True))


def test_weights_path_for_a_vit_resizes_position_embeddings(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=1000)
    file = tmp_path / "vit.safetensors"
    save_file(reference.state_dict(), str(file))
    net = build_backbone(VIT, 6, input_size=[64, 64], weights_path=str(file))
    assert net.pos_embed.shape == (1, 1 + 16, 192)  # 14x14 grid resampled to 4x4, class token kept
    assert torch.equal(net.cls_token, reference.cls_token)
    assert torch.equal(net.blocks[11].mlp.fc2.weight, reference.blocks[11].mlp.fc2.weight)
    assert net.head.out_features == 6


def test_weights_file_for_another_architecture_is_refused(
    convnext_1000: torch.nn.Module, tmp_path: Path
) -> None:
    file = tmp_path / "convnext.safetensors"
    save_file(convnext_1000.state_dict(), str(file))
    with pytest.raises(ConfigError, match=r"convnext.safetensors' do not fit timm model convnext_femto"):
        build_backbone("timm:convnext_femto", 3, weights_path=str(file))
    with pytest.raises(ConfigError, match=r"does not exist"):
        build_backbone(CONVNEXT, 3, weights_path=str(tmp_path / "missing.safetensors"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"junk.pth' is not a readable PyTorch checkpoint"):
        build_backbone(CONVNEXT, 3, weights_path=str(tmp_path / "junk.pth"))


def _offline(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(timm_backbones, "_reachable", lambda host, timeout=3.0: "OSError: no network")


def test_pretrained_tag_offline_names_the_file_to_provide(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _offline(monkeypatch, tmp_path)
    with pytest.raises(ConfigError) as info:
        build_backbone(CONVNEXT, 6, weights=True)
    message = str(info.value)
    assert "https://huggingface.co/timm/convnext_atto.d2_in1k/resolve/main/model.safetensors" in message
    assert "model.weights_path" in message and str(tmp_path) in message
    with pytest.raises(
        ConfigError, match=r"no pretrained tag 'nope' for convnext_atto; choose one of d2_in1k"
    ):
        build_backbone(CONVNEXT, 6, weights="nope")


def test_pretrained_tag_from_the_hugging_face_cache(
    convnext_1000: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _offline(monkeypatch, tmp_path)
    repo = tmp_path / "models--timm--convnext_atto.d2_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(convnext_1000.state_dict(), str(repo / "snapshots" / "0123abcd" / "model.safetensors"))
    net = build_backbone(CONVNEXT, 6, weights="d2_in1k")
    _same_backbone(net, convnext_1000, skip="head.fc")
    assert net.head.fc.out_features == 6


def test_default_explanation_layers_follow_the_backbone() -> None:
    assert _shapes_model(VIT, backbone_kwargs={"patch_size": 8}).default_explain_layers == ["blocks.11.norm1"]
    assert _shapes_model(CONVNEXT).default_explain_layers == ["stages.3"]
    # torchvision ResNets: layer4, or layer1+layer2 where layer4 would be under 4x4 (the 64 px demo).
    assert _shapes_model("resnet18").default_explain_layers == ["layer1", "layer2"]
    resnet = ImageClassifier("resnet18", num_classes=3, input_size=[224, 224])
    assert resnet.default_explain_layers == ["layer4"]
    cifar = ImageClassifier("resnet34", num_classes=3, cifar_stem=True, input_size=[32, 32])
    assert cifar.default_explain_layers == ["layer4"]
    vgg = build_backbone("vgg11", 3)
    assert default_explain_layers(vgg, 3, [64, 64]) == ["features"]


def test_default_explanation_layers_are_measured_once_per_network_and_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every callback asks at every start; the probe forward runs once until the network or input changes."""
    from lit_explain.models import classifier as classifier_module

    calls: list[tuple] = []

    def counting(net: torch.nn.Module, in_channels: int, input_size: object) -> list[str]:
        calls.append((id(net), input_size))
        return default_explain_layers(net, in_channels, input_size)

    monkeypatch.setattr(classifier_module, "default_explain_layers", counting)
    model = ImageClassifier("resnet18", num_classes=3, input_size=[64, 64])
    answers = [model.default_explain_layers for _ in range(4)]
    assert answers == [["layer1", "layer2"]] * 4 and len(calls) == 1
    answers[0].append("mutated")  # a caller's list is its own
    assert model.default_explain_layers == ["layer1", "layer2"]
    model.hparams.input_size = [224, 224]
    assert model.default_explain_layers == ["layer4"] and len(calls) == 2


def test_checkpoint_and_export_round_trip(tmp_path: Path) -> None:
    """hyper_parameters alone rebuild a timm model; the exported plain file loads back too."""
    from lit_explain.models import classifier_from_checkpoint, load_classifier
    from lit_explain.models.export import export_checkpoint

    torch.manual_seed(0)
    model = _shapes_model(VIT, backbone_kwargs={"patch_size": 8, "depth": 2})
    ckpt = tmp_path / "vit.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, ckpt)
    images = torch.randn(2, 3, 64, 64)
    expected = model.eval()(images)
    rebuilt = classifier_from_checkpoint(ckpt)
    assert torch.allclose(rebuilt(images), expected, atol=1e-6)
    export_checkpoint(ckpt, tmp_path / "vit.pth")
    plain = load_classifier(tmp_path / "vit.pth")
    assert plain.hparams.backbone == VIT and plain.class_names == model.class_names
    assert plain.hparams.input_size == [64, 64] and plain.hparams.mean == model.hparams.mean
    assert torch.allclose(plain(images), expected, atol=1e-6)


def test_weights_true_from_the_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--model.weights true` arrives as the string 'true' (str comes first in the union)."""
    _offline(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match=r"convnext_atto\.d2_in1k"):
        build_backbone(CONVNEXT, 6, weights="true")
    assert not ImageClassifier(CONVNEXT, weights="false").pretrained
    assert ImageClassifier(CONVNEXT, weights="true").pretrained
