"""ShortcutAlarm takes ProbeHeatmaps' maps of the same validation sample instead of explaining it again;
a map is only shared at the step and loop it was made in, for equal images, layers and method."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from test_shortcut_alarm import Handmade, shapes, trainer_for

from lit_explain.callbacks import ProbeHeatmaps, ShortcutAlarm
from lit_explain.callbacks import shortcut as shortcut_module
from lit_explain.callbacks.shared_maps import recall, remember


class _Trainer:  # what the sharing reads of a trainer (weakly referenced, like a real one)
    def __init__(self, step: int = 3, epoch: int = 1) -> None:
        self.state = SimpleNamespace(fn="fit", stage="validate")
        self.current_epoch, self.global_step = epoch, step
        self.sanity_checking = True  # a callback's epoch start then does nothing but its bookkeeping


def test_recall_gives_back_only_what_matches() -> None:
    trainer, images = _Trainer(), torch.rand(4, 3, 8, 8)
    maps, logits = torch.rand(4, 1, 8, 8), torch.rand(4, 3)
    remember(trainer, images, ["layer1", "layer2"], "layercam", maps, logits)
    shared = recall(trainer, images.clone(), ["layer1", "layer2"], "layercam")  # equal by value
    assert shared is not None and shared[0] is maps and shared[1] is logits
    assert recall(trainer, images + 1e-6, ["layer1", "layer2"], "layercam") is None  # other images
    assert recall(trainer, images[:3], ["layer1", "layer2"], "layercam") is None
    assert recall(trainer, images, ["layer2"], "layercam") is None  # other layers
    assert recall(trainer, images, ["layer1", "layer2"], "gradcam") is None  # other method
    trainer.global_step = 4  # the weights moved on: stale
    assert recall(trainer, images, ["layer1", "layer2"], "layercam") is None
    assert recall(_Trainer(), images, ["layer1", "layer2"], "layercam") is None  # another trainer


def test_a_new_validation_starts_without_the_last_ones_maps() -> None:
    # trainer.validate twice on other weights: same step, same epoch, so only the epoch start tells them apart.
    trainer, images = _Trainer(), torch.rand(4, 3, 8, 8)
    remember(trainer, images, "layer4", "gradcam", torch.rand(4, 1, 8, 8), torch.rand(4, 3))
    ShortcutAlarm().on_validation_epoch_start(trainer, None)  # any lit_explain callback's epoch start
    assert recall(trainer, images, "layer4", "gradcam") is None


def _fit(root: Path, callbacks: list[L.Callback]) -> None:
    L.seed_everything(0, verbose=False)
    trainer_for(root, *callbacks).fit(Handmade(corner_only=True), datamodule=shapes(cue=True))


def test_the_alarm_reuses_the_probes_maps_and_decides_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = ShortcutAlarm(sample_size=48, show=4)
    _fit(tmp_path / "alone", [own])

    calls: list[int] = []
    original = shortcut_module.predicted_maps

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(shortcut_module, "predicted_maps", counted)
    # The recipes' settings: 8 probes per class, up to 48, the alarm's 48 class-balanced images.
    probes = ProbeHeatmaps(per_class=8, max_probes=48, method="layercam")
    shared = ShortcutAlarm(sample_size=48, show=4)
    _fit(tmp_path / "shared", [probes, shared])
    assert calls == []  # both validations took the probes' maps
    assert own.last is not None and shared.last is not None
    assert shared.last.score == own.last.score and shared.last.region == own.last.region
    assert own.last.score > 0  # the corner reader's shortcut: a decision worth comparing

    calls.clear()
    _fit(tmp_path / "other", [ProbeHeatmaps(per_class=8, max_probes=48, method="gradcam"), ShortcutAlarm()])
    assert calls == [1, 1]  # another method: the alarm explains on its own


def test_the_callbacks_explain_channels_last_cpu_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fast_layout: faster convolutions on the CPU, the same pictures (explain/test_memory_layout.py).
    from callback_helpers import fit_shapes

    from lit_explain.callbacks import WorstSamples
    from lit_explain.callbacks import probes as probes_module
    from lit_explain.callbacks import worst as worst_module

    layouts: dict[str, list[bool]] = {"probes": [], "worst": []}

    def recording(name: str, original):
        def explain(net, images, *args, **kwargs):
            layouts[name].append(images.is_contiguous(memory_format=torch.channels_last))
            return original(net, images, *args, **kwargs)

        return explain

    for name, module in (("probes", probes_module), ("worst", worst_module)):
        monkeypatch.setattr(module, "explain_predictions", recording(name, module.explain_predictions))
    callbacks = [ProbeHeatmaps(per_class=1, max_probes=6, layer="layer3"), WorstSamples(k=4, layer="layer3")]
    fit_shapes(tmp_path, callbacks, epochs=2, train_size=32, val_size=32)
    assert layouts == {"probes": [True, True], "worst": [True, True]}  # one explanation per epoch each
