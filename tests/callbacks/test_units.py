"""Fast unit tests of the callbacks' pieces: top-k merging, scores, metrics, configuration errors, loggers."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lit_explain.callbacks import ConfusionMatrix, ProbeHeatmaps, WorstSamples
from lit_explain.callbacks.confusion import per_class_accuracy, worst_k_mean
from lit_explain.callbacks.worst import TopK, ranking_scores
from lit_explain.errors import ConfigError
from lit_explain.sinks import CsvFilesSink, TensorBoardSink, sinks_for


def _batch(n: int, start: int, generator: torch.Generator) -> TopK:
    return TopK(
        score=torch.randn(n, generator=generator),
        image=torch.randn(n, 3, 4, 4, generator=generator),
        label=torch.randint(0, 5, (n,), generator=generator),
        pred=torch.randint(0, 5, (n,), generator=generator),
        confidence=torch.rand(n, generator=generator),
        loss=torch.rand(n, generator=generator),
        index=torch.arange(start, start + n),
        rank=torch.zeros(n, dtype=torch.long),
    )


def test_running_topk_equals_a_full_sort_and_keeps_rows_together() -> None:
    g = torch.Generator().manual_seed(0)
    k = 16
    top = TopK.empty(k, (3, 4, 4), torch.device("cpu"), torch.float32)
    seen = []
    for b, size in enumerate([5, 32, 1, 32, 7]):  # batches smaller and larger than k
        new = _batch(size, 100 * b, g)
        seen.append(new)
        top = top.merge(new)
        assert top.score.shape == (k,)
    everything = TopK(**{name: torch.cat([s.as_dict()[name] for s in seen]) for name in seen[0].as_dict()})
    expected = torch.topk(everything.score, k).indices
    got = torch.sort(top.score, descending=True)
    assert torch.equal(got.values, everything.score[expected])
    # Every field of a kept row belongs to the same sample (looked up by its dataset index).
    for row in range(k):
        where = int((everything.index == top.index[row]).nonzero())
        assert torch.equal(top.image[row], everything.image[where])
        assert top.label[row] == everything.label[where] and top.loss[row] == everything.loss[where]


def test_free_slots_stay_last_when_fewer_than_k_samples() -> None:
    top = TopK.empty(8, (3, 4, 4), torch.device("cpu"), torch.float32).merge(_batch(3, 0, torch.Generator()))
    assert int((top.score > float("-inf")).sum()) == 3
    assert sorted(top.index[top.score > float("-inf")].tolist()) == [0, 1, 2]


def test_ranking_scores() -> None:
    loss = torch.tensor([0.1, 2.0, float("nan")])
    conf = torch.tensor([0.9, 0.4, 0.6])
    correct = torch.tensor([True, False, True])
    assert ranking_scores("loss", loss, conf, correct).argmax() == 2  # NaN loss ranks as worst
    least = ranking_scores("least_confident_correct", loss, conf, correct)
    assert least.argmax() == 2 and least[1] == float("-inf")
    assert ranking_scores("most_confident_correct", loss, conf, correct).argmax() == 0


def test_per_class_accuracy_and_worst_k() -> None:
    cm = torch.tensor([[8, 2, 0], [1, 1, 0], [0, 0, 0]])
    acc = per_class_accuracy(cm)
    assert acc[0] == pytest.approx(0.8) and acc[1] == pytest.approx(0.5) and acc[2].isnan()
    assert worst_k_mean(acc, 1) == pytest.approx(0.5)
    assert worst_k_mean(acc, 5) == pytest.approx(0.65)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: ProbeHeatmaps(probes=[0, "a.png"]), "mixes"),
        (lambda: ProbeHeatmaps(probes=[]), "empty"),
        (lambda: ProbeHeatmaps(probes=list(range(5)), max_probes=4), "max_probes"),
        (lambda: ProbeHeatmaps(every_n_epochs=0), "every_n_epochs"),
        (lambda: WorstSamples(k=0), "k must be"),
        (lambda: WorstSamples(modes=["wrong"]), "modes"),
        (lambda: ConfusionMatrix(worst_k=0), "worst_k"),
    ],
)
def test_bad_configuration_is_a_clear_error(factory, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        factory()


def test_every_logger_gets_its_own_sink_in_the_trainers_order(tmp_path) -> None:
    tb1 = TensorBoardLogger(tmp_path, name="a")
    tb2 = TensorBoardLogger(tmp_path, name="b")
    csv = CSVLogger(tmp_path)
    trainer = L.Trainer(logger=[tb1, csv, tb2], enable_progress_bar=False)
    found = sinks_for(trainer)
    assert [type(s) for s in found] == [TensorBoardSink, CsvFilesSink, TensorBoardSink]
    assert [s.logger for s in found] == [tb1, csv, tb2]


def test_state_keys_tell_instances_apart() -> None:
    assert ProbeHeatmaps(layer="layer3").state_key != ProbeHeatmaps(layer="layer4").state_key
    assert WorstSamples(k=4).state_key != WorstSamples(k=8).state_key


def test_pointing_tolerance_scales_with_the_image() -> None:
    # Zhang et al.'s 15 px at 224 px, scaled to the probe images; an explicit value wins.
    assert ProbeHeatmaps().tolerance_px((224, 224)) == 15
    assert ProbeHeatmaps().tolerance_px((64, 64)) == 4
    assert ProbeHeatmaps().tolerance_px((32, 48)) == 2
    assert ProbeHeatmaps(pointing_tolerance=0).tolerance_px((64, 64)) == 0


def test_true_class_maps_reuse_the_predicted_ones_only_where_right() -> None:
    from torchvision.models import resnet18

    from lit_explain.explain import cam, explain_predictions

    torch.manual_seed(0)
    net = resnet18(num_classes=4).eval()
    images = torch.randn(6, 3, 48, 48)
    preds = net(images).argmax(1)
    labels = preds.clone()
    labels[::2] = (preds[::2] + 1) % 4  # every other row misclassified
    explained = explain_predictions(net, images, labels, layer="layer3", method="gradcam")
    expected = cam(net, images, layer="layer3", targets=labels).maps
    assert torch.allclose(explained.true_maps, expected, atol=1e-5)
    assert torch.equal(explained.preds, preds)


class _CountBatches(L.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, *args: object) -> None:
        self.batches += 1

    def on_validation_batch_start(self, *args: object) -> None:
        self.batches += 1


@pytest.mark.parametrize(
    ("callback", "expected"),
    [
        (lambda: ProbeHeatmaps(layer="layer5"), ["layer=", "layer5", "layer4", "init_args"]),
        (lambda: WorstSamples(layer=["layer2", "layr3"]), ["layr3", "layer3"]),
        (lambda: ProbeHeatmaps(method="gradcamm"), ["gradcamm", "gradcam++", "layercam"]),
        (lambda: WorstSamples(method="nope"), ["nope", "hirescam"]),
        (lambda: ProbeHeatmaps(probes=[3, 999]), ["[999]", "0..63"]),
        (lambda: ProbeHeatmaps(probes=["no/such/leaf.jpg"]), ["no/such/leaf.jpg", "not found"]),
    ],
)
def test_callback_settings_fail_at_setup_before_any_batch(tmp_path, callback, expected: list[str]) -> None:
    from callback_helpers import tiny_datamodule

    from lit_explain.models import ImageClassifier

    counter = _CountBatches()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=TensorBoardLogger(tmp_path),
        callbacks=[callback(), counter],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with pytest.raises(ConfigError) as info:
        trainer.fit(ImageClassifier("resnet18"), datamodule=tiny_datamodule())
    assert counter.batches == 0  # not even the sanity check ran
    message = str(info.value)
    assert all(word in message for word in expected), message


def _explained(n: int, wrong: list[int], size: int = 64):
    """Images, (pred maps, true maps, guided) and which rows are right, for render_pages."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(n, 1, size, size, generator=generator)
    preds = torch.zeros(n, dtype=torch.long)
    labels = preds.clone()
    labels[wrong] = 1
    columns = (maps, 1 - maps, torch.rand(n, 3, size, size, generator=generator))
    return torch.rand(n, 3, size, size, generator=generator), columns, preds == labels


def test_pages_stay_under_the_card_limits_with_a_true_column_only_for_errors() -> None:
    from lit_explain.render.pages import MAX_PAGE_PX, PAD, render_pages

    images, explained, correct = _explained(48, wrong=[1, 5], size=48)  # 48 px cells upscaled x2 to 96
    captions = [f"probe {i}\ntrue: a · pred: b (confidence 0.50)" for i in range(48)]
    pages = render_pages(images, *explained, captions, correct, min_cell=96)
    assert len(pages) >= 4 and all(p.shape[1] <= MAX_PAGE_PX for p in pages)
    width = pages[0].shape[2]
    assert width == 4 * 96 + 5 * PAD  # image | predicted | true | guided
    # The true-class cell is blank where the prediction is right (row 0) and drawn where it is wrong (row 1).
    title_h = PAD + math.ceil(readable(width) * 1.6)
    row_h = 96 + math.ceil(readable(width) * 1.6) + math.ceil(readable(width) * 1.3) + PAD
    x0 = PAD + 2 * (96 + PAD)
    cell = lambda r: pages[0][:, title_h + r * row_h : title_h + r * row_h + 96, x0 : x0 + 96]  # noqa: E731
    assert (cell(0) == 255).all() and not (cell(1) == 255).all()
    # All right: the column is left out.
    images, explained, correct = _explained(8, wrong=[], size=48)
    pages = render_pages(images, *explained, captions[:8], correct, min_cell=96)
    assert pages[0].shape[2] == 3 * 96 + 4 * PAD


def readable(width: int) -> int:
    from lit_explain.render.pages import readable_font_px

    return readable_font_px(width)


def test_sources_name_files_relative_to_the_data_root_or_the_dataset_index(tmp_path) -> None:
    from types import SimpleNamespace

    from lit_explain.callbacks.captions import sample_sources
    from lit_explain.data import ShapesDataModule

    shapes = SimpleNamespace(datamodule=ShapesDataModule(val_size=10))
    assert sample_sources(shapes, "val", [2, 0, -1]) == ["idx 2", "idx 0", "?"]
    record = SimpleNamespace(path=tmp_path / "Ovate" / "Ovate_003.jpg")
    files = SimpleNamespace(
        root=tmp_path, dataset=lambda split: SimpleNamespace(records=[record, record, record])
    )
    assert sample_sources(SimpleNamespace(datamodule=files), "val", [1]) == ["Ovate/Ovate_003.jpg"]
    own = SimpleNamespace(sample_source=lambda split, i: f"{split}:{i}")
    assert sample_sources(SimpleNamespace(datamodule=own), "test", [4]) == ["test:4"]


@pytest.mark.parametrize(("classes", "has_top5"), [(4, False), (5, False), (6, True)])
def test_top5_accuracy_exists_only_with_more_than_five_classes(classes: int, has_top5: bool) -> None:
    from lit_explain.models import ImageClassifier

    model = ImageClassifier("resnet18", num_classes=classes)
    assert all(hasattr(model, f"{stage}_acc_top5") == has_top5 for stage in ("train", "val", "test"))


def test_layer_none_takes_the_models_default_explanation_layers() -> None:
    from torchvision.models import resnet18

    from lit_explain.callbacks.settings import explain_layers
    from lit_explain.models import ImageClassifier

    model = ImageClassifier("resnet18", num_classes=6, input_size=[64, 64])
    assert explain_layers(model, None) == ["layer1", "layer2"]  # layer4 would be 2x2 at 64 px
    assert explain_layers(model, "layer4") == "layer4"  # a configured layer wins
    assert explain_layers(resnet18(), None) is None  # a plain network: the engine's automatic choice


def test_panel_helpers_docstring_examples() -> None:
    import doctest

    from lit_explain.callbacks import captions, cost
    from lit_explain.render import pages

    attempted = 0
    for module in (captions, cost, pages):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__
        attempted += result.attempted
    assert attempted >= 8


def test_models_without_relus_and_rollout_methods_drop_the_guided_column() -> None:
    from lit_explain.explain import cam, explain_predictions

    torch.manual_seed(0)
    gelu_net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.GELU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.GELU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 3),
    ).eval()
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 0])
    with pytest.warns(UserWarning, match="Guided Grad-CAM column is left out.*GELU"):
        explained = explain_predictions(gelu_net, images, labels, layer="2", method="gradcam")
    assert explained.guided is None
    reference = cam(gelu_net, images, layer="2", method="gradcam")
    assert torch.allclose(explained.pred_maps, reference.maps, atol=1e-6)
    assert torch.equal(explained.preds, reference.targets)
    # Once per network: the next epoch (or the other callback) gets the same maps without a second warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = explain_predictions(gelu_net, images, labels, layer="2", method="gradcam")
    assert again.guided is None and torch.equal(again.pred_maps, explained.pred_maps)

    import timm

    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=3
    )
    explained = explain_predictions(
        vit.eval(), torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), method="rollout"
    )
    assert explained.guided is None and explained.pred_maps.shape == (2, 1, 32, 32)
