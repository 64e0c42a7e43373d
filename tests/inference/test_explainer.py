"""The Python API: Explainer from each model source, explain(target, top_k), batching, save()."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lit_explain.explain import cam
from lit_explain.inference import Explainer, OutputExistsError, UnknownClassError
from lit_explain.models.loading import load_classifier


@pytest.fixture(scope="module")
def explainer(quick_ckpt):
    return Explainer.from_checkpoint(quick_ckpt, layer="layer4")


def test_explain_the_prediction(explainer, odd_images):
    r = explainer.explain(odd_images["rgb.jpg"])
    probs = [p for _, _, p in r.top_k]
    assert r.prediction == r.top_k[0][0] and r.confidence == pytest.approx(probs[0])
    assert probs == sorted(probs, reverse=True) and len(r.top_k) == 1  # top_k=1: the prediction
    assert len(r.explained) == 1 and r.primary.class_index == r.prediction_index and r.primary.rank == 1
    assert (
        r.primary.map.shape == (1, 64, 64)
        and 0 <= float(r.primary.map.min()) <= float(r.primary.map.max()) <= 1
    )
    for picture in (r.image, r.primary.heatmap, r.primary.overlay, r.primary.guided):
        assert picture.shape == (3, 64, 64) and picture.device.type == "cpu"
    assert r.layer == "layer4" and r.method == "gradcam"
    assert set(r.timings) == {"preprocess", "explain", "render"}


def test_maps_equal_the_engine_on_the_model_input(explainer, odd_images):
    r = explainer.explain(odd_images["rgba.png"], target="star")
    x = explainer.preprocess(odd_images["rgba.png"]).tensor[None]
    expected = cam(explainer.net, x, layer="layer4", targets=3).maps[0]
    named = next(e for e in r.explained if e.class_name == "star")
    torch.testing.assert_close(named.map, expected, atol=1e-5, rtol=1e-4)


def test_named_class_by_name_index_and_case(explainer, odd_images):
    a = explainer.explain(odd_images["gray.png"], target="triangle")
    b, c = explainer.explain_batch([odd_images["gray.png"]] * 2, target=[2, "TRIANGLE"])
    for r in (a, b, c):
        assert r.requested == "triangle" and r.primary.class_name == "triangle"
        assert r.for_prediction is not None  # the prediction is explained alongside
    torch.testing.assert_close(a.primary.map, b.primary.map)
    only = explainer.explain(odd_images["gray.png"], target="triangle", top_k=0)
    assert [e.class_name for e in only.explained] == ["triangle"]


def test_top_k_explains_each_class_in_one_batch(explainer, odd_images):
    r = explainer.explain(odd_images["rgb.jpg"], top_k=3)
    assert [e.rank for e in r.top_explained] == [1, 2, 3]
    assert [e.class_index for e in r.top_explained] == [i for _, i, _ in r.top_k[:3]]
    maps = torch.stack([e.map for e in r.top_explained])
    assert not torch.equal(maps[0], maps[1])  # different classes, different maps


def test_batch_equals_one_by_one(explainer, odd_images):
    paths = [odd_images[n] for n in ("rgb.jpg", "deep16.png", "tiny.bmp")]
    together = explainer.explain_batch(paths, top_k=2)
    for path, r in zip(paths, together, strict=True):
        alone = explainer.explain(path, top_k=2)
        assert r.prediction == alone.prediction
        torch.testing.assert_close(r.primary.map, alone.primary.map, atol=1e-4, rtol=1e-3)


def test_unknown_class_lists_the_valid_ones(explainer, odd_images):
    with pytest.raises(UnknownClassError, match=r"unknown class name 'hexagon'.*circle, square"):
        explainer.explain(odd_images["rgb.jpg"], target="hexagon")
    with pytest.raises(UnknownClassError, match="out of range"):
        explainer.explain(odd_images["rgb.jpg"], target=6)


def test_bad_layer_and_method_are_config_errors(quick_ckpt):
    with pytest.raises(ValueError, match="layer9"):
        Explainer.from_checkpoint(quick_ckpt, layer="layer9")
    with pytest.raises(ValueError, match="gradcam"):
        Explainer.from_checkpoint(quick_ckpt, method="magic")


def test_save_writes_every_file_and_never_clobbers(explainer, odd_images, tmp_path):
    r = explainer.explain(odd_images["rgb.jpg"], target="ring", top_k=2)
    written = r.save(tmp_path / "out")
    names = {p.relative_to(tmp_path / "out").as_posix() for p in written}
    top = [f"top_predictions/gradcam_top{e.rank}_{e.class_name}.png" for e in r.top_explained]
    assert {"gradcam_prediction.png", "analysis_summary.json", "class_analysis_ring.json", *top} <= names
    summary = json.loads((tmp_path / "out" / "analysis_summary.json").read_text())
    assert summary["prediction"] == r.prediction and summary["layer"] == "layer4"
    assert summary["requested_class"] == "ring" and len(summary["top_k"]) == 2
    analysis = json.loads((tmp_path / "out" / "class_analysis_ring.json").read_text())
    assert analysis["class_name"] == "ring" and 0 <= analysis["probability"] <= 1
    with pytest.raises(OutputExistsError, match="--overwrite"):
        r.save(tmp_path / "out")
    r.save(tmp_path / "out", overwrite=True)


def test_gradient_free_method_has_no_guided_picture(quick_ckpt, odd_images):
    r = Explainer.from_checkpoint(quick_ckpt, method="eigencam").explain(odd_images["rgb.jpg"])
    assert r.primary.guided is None and r.method == "eigencam"


def test_single_channel_plain_file_with_labels(gray_plain_file, odd_images):
    e = Explainer.from_file(gray_plain_file, backbone="resnet18", class_names=["cat", "dog", "bird"])
    assert e.preprocess.in_channels == 1 and e.preprocess.input_size == (64, 64)
    r = e.explain(odd_images["rgb.jpg"], target="bird", top_k=3)
    assert r.image.shape == (3, 64, 64) and r.primary.class_name == "bird"
    assert {n for n, _, _ in r.top_k} == {"cat", "dog", "bird"}


def test_torchvision_name_with_features_layer(torch_home, odd_images):
    e = Explainer.from_torchvision("squeezenet1_1", layer="features.12", batch_size=4)
    assert len(e.class_names) == 1000 and e.class_names[0] == "tench"
    r = e.explain(odd_images["palette.gif"], top_k=2, target="goldfish")
    assert r.layer == "features.12" and r.primary.class_name == "goldfish"
    assert r.primary.map.shape == (1, 224, 224)


def _flags(model: torch.nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def test_explainer_borrows_the_model_and_gives_its_modes_back(quick_ckpt, odd_images, monkeypatch):
    model = load_classifier(quick_ckpt)
    reference = Explainer(copy.deepcopy(model).eval()).explain(odd_images["rgb.jpg"], top_k=2)
    model.train()
    model.net.layer1.eval()  # partly frozen: each module's own flag must come back, not one model.train()
    flags = _flags(model)
    assert flags[""] and not flags["net.layer1"] and flags["net.layer2.0.bn1"]
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm running stats included
    e = Explainer(model)  # its probe forward must not switch modes or touch BatchNorm statistics
    assert e.device == next(model.parameters()).device
    assert _flags(model) == flags
    result = e.explain(odd_images["rgb.jpg"], top_k=2)
    assert _flags(model) == flags and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    # ... and the maps were made in eval mode all the same: equal to those of an explainer of an eval copy
    for ours, theirs in zip(result.explained, reference.explained, strict=True):
        assert ours.class_index == theirs.class_index
        torch.testing.assert_close(ours.map, theirs.map)
    # A call that fails half-way gives the flags back too.
    monkeypatch.setattr(e, "_run", lambda jobs: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        e.explain(odd_images["rgb.jpg"])
    assert _flags(model) == flags


def test_device_is_cuda_when_available_else_cpu(quick_ckpt, monkeypatch):
    from lit_explain.inference.cli import build_parser
    from lit_explain.inference.explainer import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("cuda:1") == torch.device("cuda:1")
    for available, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert resolve_device() == resolve_device(None) == resolve_device("auto") == torch.device(expected)
    with pytest.raises(ValueError, match=r"--device 'gpu0' is not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    # from_checkpoint and the explain command default to that rule (CPU here: CUDA reported absent).
    assert Explainer.from_checkpoint(quick_ckpt).device == torch.device("cpu")
    assert build_parser().parse_args(["--ckpt_path", "x.ckpt", "--image", "a.jpg"]).device == "auto"


def test_vgg_features_layer_like_the_vgg16_example(odd_images):
    # VGG16's `features.29` is the ReLU after its last convolution; in VGG11 that is `features.19`. Same code
    # path (a layer named features.N, inplace ReLUs for guided backprop), a smaller net and a 64x64 input.
    from lit_explain.models import ImageClassifier

    torch.manual_seed(0)
    model = ImageClassifier(
        "vgg11",
        num_classes=4,
        class_names=["a", "b", "c", "d"],
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        input_size=[64, 64],
    )
    r = Explainer(model, layer="features.19").explain(odd_images["rgb.jpg"], top_k=2)
    assert r.layer == "features.19" and len(r.top_explained) == 2
    assert r.primary.guided is not None and r.primary.map.shape == (1, 64, 64)


def test_gelu_models_lose_the_guided_picture_with_a_warning_and_rollout_works(odd_images):
    # Guided backprop needs ReLUs: a ViT gets its CAM (and rollouts) instead of a failed call.
    from lit_explain.models import ImageClassifier

    torch.manual_seed(0)
    model = ImageClassifier(
        "timm:vit_tiny_patch16_224",
        num_classes=3,
        class_names=["a", "b", "c"],
        mean=[0.5] * 3,
        std=[0.25] * 3,
        input_size=[32, 32],
        backbone_kwargs={"patch_size": 8},
    )
    explainer = Explainer(model)
    with pytest.warns(UserWarning, match="Guided Grad-CAM is turned off.*GELU"):
        r = explainer.explain(odd_images["rgb.jpg"], top_k=2)
    assert r.primary.guided is None and len(r.top_explained) == 2 and r.primary.map.shape == (1, 32, 32)
    assert explainer.guided is False  # said once, not on every call
    rolled = Explainer(model, method="gradient_rollout").explain(odd_images["rgb.jpg"])
    assert rolled.method == "gradient_rollout" and rolled.primary.guided is None
    assert float(rolled.primary.map.max()) == pytest.approx(1.0)
