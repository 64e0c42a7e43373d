"""Explain any image with a trained classifier: pre-processing, batched explaining, files on disk.

The same :class:`Explainer` backs ``python -m lit_explain explain``, the HTTP service and Python use.

Example:
    >>> from lit_explain.inference import Explainer
    >>> explainer = Explainer.from_checkpoint("last.ckpt")                  # doctest: +SKIP
    >>> explainer = Explainer.from_torchvision("vgg16", layer="features.29")  # doctest: +SKIP
    >>> result = explainer.explain("leaf.jpg", target="healthy", top_k=3)   # doctest: +SKIP
    >>> result.prediction, result.confidence, result.top_k[:3]              # doctest: +SKIP
    >>> result.save("out/leaf")                                             # doctest: +SKIP
"""

from lit_explain.inference.explainer import ClassExplanation, Explainer, Explanation, UnknownClassError
from lit_explain.inference.folder import FolderReport, explain_folder
from lit_explain.inference.outputs import OutputExistsError, save_explanation
from lit_explain.inference.preprocess import DEFAULT_MAX_PIXELS, ImageTooLargeError, Prepared, Preprocessor

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ClassExplanation",
    "Explainer",
    "Explanation",
    "FolderReport",
    "ImageTooLargeError",
    "OutputExistsError",
    "Prepared",
    "Preprocessor",
    "UnknownClassError",
    "explain_folder",
    "save_explanation",
]
