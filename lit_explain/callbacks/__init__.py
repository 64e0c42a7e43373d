"""Thin Lightning glue: collect during validation -> explain -> render -> log to TensorBoard.

Three callbacks, each configurable from YAML (``class_path: lit_explain.callbacks.ProbeHeatmaps``):

* :class:`ProbeHeatmaps`: the same probe images explained every epoch (attention drift, energy in the
  object mask, pointing game);
* :class:`WorstSamples`: the highest-loss validation samples, explained;
* :class:`ConfusionMatrix`: confusion matrix, per-class accuracy, most-confused pairs.

All of them skip the sanity check, render on the global-zero rank only, log to every
``TensorBoardLogger`` of the trainer, and leave training bit-for-bit unchanged.
"""

from lit_explain.callbacks.confusion import ConfusionMatrix
from lit_explain.callbacks.probes import ProbeHeatmaps
from lit_explain.callbacks.worst import WorstSamples

__all__ = ["ConfusionMatrix", "ProbeHeatmaps", "WorstSamples"]
