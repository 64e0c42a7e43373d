"""Thin Lightning glue: collect during validation -> explain -> hand off to the background writer.

Callbacks, each configurable from YAML (``class_path: lit_explain.callbacks.ProbeHeatmaps``):

* :class:`ProbeHeatmaps`: the same probe images explained every epoch (attention drift, energy in the
  object mask, pointing game);
* :class:`WorstSamples`: the highest-loss validation samples, explained;
* :class:`ConfusionMatrix`: confusion matrix, per-class accuracy, most-confused pairs;
* :class:`ShortcutAlarm`: says when the model's evidence sits in a fixed region whatever the image;
* :class:`TrainingDynamics`: ranks the training images whose labels look wrong.

All of them derive from :class:`~lit_explain.callbacks.base.ExplainCallback`: they skip the sanity check,
explain on the global-zero rank only, leave training bit-for-bit unchanged, and hand rendering, PNG
encoding and writing to one background writer per trainer (:mod:`lit_explain.sinks.writer`), which writes
to every supported logger of the trainer (TensorBoard, W&B, MLflow, CSV). What they cost is logged as
``explain/cost_s`` every epoch and printed in one line at the end of fit.
"""

from lit_explain.callbacks.confusion import ConfusionMatrix
from lit_explain.callbacks.dynamics import TrainingDynamics
from lit_explain.callbacks.probes import ProbeHeatmaps
from lit_explain.callbacks.shortcut import ShortcutAlarm
from lit_explain.callbacks.worst import WorstSamples

__all__ = ["ConfusionMatrix", "ProbeHeatmaps", "ShortcutAlarm", "TrainingDynamics", "WorstSamples"]
