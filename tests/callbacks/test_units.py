"""Fast unit tests of the callbacks' pieces: top-k merging, scores, metrics, configuration errors, loggers."""

from __future__ import annotations

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

    from lit_explain.callbacks._panels import explain_batch
    from lit_explain.explain import cam

    torch.manual_seed(0)
    net = resnet18(num_classes=4).eval()
    images = torch.randn(6, 3, 48, 48)
    preds = net(images).argmax(1)
    labels = preds.clone()
    labels[::2] = (preds[::2] + 1) % 4  # every other row misclassified
    explained = explain_batch(net, images, labels, "layer3", "gradcam")
    expected = cam(net, images, layer="layer3", targets=labels).maps
    assert torch.allclose(explained.true_maps, expected, atol=1e-5)
    assert torch.equal(explained.preds, preds)
