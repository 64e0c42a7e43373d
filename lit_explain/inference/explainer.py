"""The :class:`Explainer`: one object that predicts and explains images for the CLI, Python and HTTP.

It pre-processes images the way the model expects, runs them through the explain engine in batches
(one forward/backward per batch; top-k explanations are one batch of ``k`` copies of an image with ``k``
targets) and renders heatmaps, overlays and Guided Grad-CAM pictures as tensors on the model's device.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_explain.errors import ConfigError, LitExplainError
from lit_explain.explain import METHODS, explain_predictions, guided_applies, resolve_layer
from lit_explain.explain._state import eval_mode
from lit_explain.inference.preprocess import DEFAULT_MAX_PIXELS, ImageSource, Prepared, Preprocessor
from lit_explain.models.loading import load_classifier
from lit_explain.render import colorize, denormalize, guided_to_image, overlay, to_rgb

Target = int | str | None
DEFAULT_DEVICE = "auto"  # "cuda" when torch.cuda.is_available(), else "cpu": the rule of every command


def resolve_device(device: str | torch.device | None = DEFAULT_DEVICE) -> torch.device:
    """The device a command runs on: ``None`` or ``"auto"`` is CUDA when available, else the CPU.

    Example:
        >>> resolve_device("cpu"), resolve_device("auto").type in ("cuda", "cpu")
        (device(type='cpu'), True)
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from exc


class UnknownClassError(LitExplainError, KeyError):
    """A class name or index the model does not have; ``valid`` lists the model's class names."""

    def __init__(self, message: str, valid: Sequence[str]) -> None:
        super().__init__(message)
        self.message = message
        self.valid = list(valid)

    def __str__(self) -> str:
        return self.message


@dataclass
class ClassExplanation:
    """The explanation of one image for one class; pictures are float32 ``[3, H, W]`` in [0, 1] on the CPU."""

    class_index: int
    class_name: str
    probability: float
    rank: int  # 1 = the model's top prediction
    map: Tensor  # [1, H, W] in [0, 1]
    heatmap: Tensor
    overlay: Tensor
    guided: Tensor | None  # Guided Grad-CAM, None for gradient-free methods or when turned off


@dataclass
class Explanation:
    """What :meth:`Explainer.explain` returns for one image.

    Attributes:
        source: the file path, or ``"<bytes>"`` / ``"<PIL image>"``.
        prediction, prediction_index, confidence: the top class and its softmax probability.
        top_k: ``[(class name, index, probability), ...]`` best first: the ``top_k`` most probable classes
            asked for (at least the prediction; the HTTP service asks for its ``report_k``).
        explained: one :class:`ClassExplanation` per explained class; ``explained[0]`` is the requested
            class when one was named, else the prediction.
        image: the model's view of the image, float32 ``[3, H, W]`` in [0, 1].
        method, layer: how the maps were made.
        timings: seconds per stage (``preprocess``, ``explain``, ``render``; a batch's time is shared
            equally among its images).
    """

    source: str
    prediction: str
    prediction_index: int
    confidence: float
    top_k: list[tuple[str, int, float]]
    explained: list[ClassExplanation]
    image: Tensor
    method: str
    layer: str
    original_size: tuple[int, int]
    original_mode: str
    requested: str | None = None
    explained_top_k: int = 1
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def primary(self) -> ClassExplanation:
        """The first explained class (the named one, else the prediction)."""
        return self.explained[0]

    @property
    def for_prediction(self) -> ClassExplanation | None:
        """The explanation of the predicted class, if it was explained."""
        return next((e for e in self.explained if e.class_index == self.prediction_index), None)

    @property
    def top_explained(self) -> list[ClassExplanation]:
        """The explanations of the ``explained_top_k`` most probable classes, best first."""
        return sorted((e for e in self.explained if e.rank <= self.explained_top_k), key=lambda e: e.rank)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: prediction, confidence, top-k, explained classes, method, layer, timings."""
        return {
            "source": self.source,
            "prediction": self.prediction,
            "prediction_index": self.prediction_index,
            "confidence": round(self.confidence, 6),
            "top_k": [
                {"class_name": n, "class_index": i, "probability": round(p, 6)} for n, i, p in self.top_k
            ],
            "requested_class": self.requested,
            "explained": [
                {
                    "class_name": e.class_name,
                    "class_index": e.class_index,
                    "probability": round(e.probability, 6),
                    "rank": e.rank,
                }
                for e in self.explained
            ],
            "method": self.method,
            "layer": self.layer,
            "original_size": list(self.original_size),
            "original_mode": self.original_mode,
            "timings_s": {k: round(v, 6) for k, v in self.timings.items()},
        }

    def save(self, directory: str | Path, overwrite: bool = False) -> list[Path]:
        """Write the pictures and JSON files (see :func:`lit_explain.inference.outputs.save_explanation`)."""
        from lit_explain.inference.outputs import save_explanation

        return save_explanation(self, directory, overwrite=overwrite)


@dataclass
class _Job:
    prepared: Prepared
    target: int | None
    top_k: int
    report_k: int  # classes listed in Explanation.top_k


class Explainer:
    """Predict and explain images with one classifier; batched, on the model's device.

    Args:
        model: an :class:`~lit_explain.models.ImageClassifier` (its ``hparams`` give the pre-processing and
            class names); the maps are computed on ``model.net``.
        layer: dotted layer name in ``model.net`` (``"layer4"``, ``"features.29"``); None picks the last
            convolutional block automatically.
        method: one of :data:`lit_explain.explain.METHODS`.
        guided: also compute Guided Grad-CAM (same forward pass; one more backward to the input).
        batch_size: rows (image x explained class) per forward/backward.
        max_pixels: largest decoded image accepted.
        alpha: heatmap weight of the overlay.

    One call at a time: the explain engine hooks the model during a call, so concurrent callers must
    serialise (the HTTP service funnels every request through one micro-batching worker).

    The model is borrowed, not taken: every call (and the constructor's probe forward) runs it in eval mode
    and gives each module back its own train/eval flag afterwards, so a model in training stays in training.

    Example:
        >>> explainer = Explainer.from_checkpoint("last.ckpt")                      # doctest: +SKIP
        >>> result = explainer.explain("leaf.jpg", target=None, top_k=3)          # doctest: +SKIP
        >>> result.prediction, result.confidence, [n for n, _, _ in result.top_k]  # doctest: +SKIP
        >>> result.save("out/leaf")                                                # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        layer: str | None = None,
        method: str = "gradcam",
        guided: bool = True,
        batch_size: int = 16,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        alpha: float = 0.5,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"--method {method!r} is not known; choose one of {', '.join(METHODS)}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.net = getattr(model, "net", model)
        self.class_names: list[str] = list(getattr(model, "class_names", None) or [])
        self.preprocess = Preprocessor.for_model(model, max_pixels=max_pixels)
        self.method = method
        self.guided = guided and guided_applies(method)
        self.batch_size = batch_size
        self.alpha = alpha
        self.device = next(self.net.parameters()).device
        probe = torch.zeros(1, self.preprocess.in_channels, *self.preprocess.input_size, device=self.device)
        # Probe forwards in eval mode: in training mode they would update the caller's BatchNorm statistics.
        with eval_mode(self.model):
            try:
                self.layer_name, _ = resolve_layer(self.net, layer, probe)
            except (ValueError, KeyError, LookupError) as exc:
                raise ConfigError(f"--layer {layer!r}: {exc}") from exc
            if not self.class_names:
                with torch.no_grad():
                    self.class_names = [str(i) for i in range(self.net(probe).shape[1])]
        self._index = {name: i for i, name in enumerate(self.class_names)}

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        backbone: str | None = None,
        class_names: Sequence[str] | None = None,
        device: str | torch.device | None = DEFAULT_DEVICE,
        **kwargs: Any,
    ) -> Explainer:
        """From a lit_explain ``.ckpt``, a plain state-dict file (+ ``backbone``) or ``"torchvision:NAME"``.

        ``device``: ``"auto"`` (default) or None is CUDA when available, else the CPU (:func:`resolve_device`).
        """
        model = load_classifier(
            path, backbone=backbone, class_names=class_names, map_location=resolve_device(device)
        )
        return cls(model, **kwargs)

    @classmethod
    def from_file(
        cls, path: str | Path, backbone: str, class_names: Sequence[str] | None = None, **kwargs: Any
    ) -> Explainer:
        """From a plain ``{"model_state_dict", "class_names"}`` file or bare state dict of ``backbone``."""
        return cls.from_checkpoint(path, backbone=backbone, class_names=class_names, **kwargs)

    @classmethod
    def from_torchvision(cls, name: str, weights: str = "IMAGENET1K_V1", **kwargs: Any) -> Explainer:
        """A torchvision classifier with ImageNet weights from the local ``$TORCH_HOME`` cache."""
        return cls.from_checkpoint(f"torchvision:{name}:{weights}", **kwargs)

    # -- classes -----------------------------------------------------------------------------------
    def class_index(self, target: int | str) -> int:
        """Index of a class given by name (exact, then case-insensitive) or by index."""
        if isinstance(target, bool):
            raise UnknownClassError(f"class {target!r} is not a class name or index", self.class_names)
        if isinstance(target, int):
            if 0 <= target < len(self.class_names):
                return target
            raise UnknownClassError(
                f"class index {target} is out of range: the model has {len(self.class_names)} classes",
                self.class_names,
            )
        if target in self._index:
            return self._index[target]
        folded = [i for i, n in enumerate(self.class_names) if n.casefold() == str(target).casefold()]
        if len(folded) == 1:
            return folded[0]
        shown = ", ".join(self.class_names[:20]) + (", ..." if len(self.class_names) > 20 else "")
        raise UnknownClassError(
            f"unknown class name {target!r}; the model's classes are: {shown}", self.class_names
        )

    # -- explaining --------------------------------------------------------------------------------
    def explain(self, image: ImageSource, target: Target = None, top_k: int = 1) -> Explanation:
        """Predict and explain one image (path, bytes or PIL image).

        Args:
            image: the image.
            target: None explains the predicted class; a class name or index explains that class.
            top_k: also explain each of the ``top_k`` most probable classes (1: the prediction; 0 with a
                named ``target``: that class only).
        """
        return self.explain_batch([image], target=target, top_k=top_k)[0]

    def explain_batch(
        self, images: Sequence[ImageSource], target: Target | Sequence[Target] = None, top_k: int = 1
    ) -> list[Explanation]:
        """Explain several images, batched; ``target`` is one for all or one per image."""
        start = time.perf_counter()
        prepared = [self.preprocess(image) for image in images]
        per_image = (time.perf_counter() - start) / max(1, len(images))
        results = self.explain_prepared(prepared, target, top_k)
        for result in results:
            result.timings["preprocess"] = per_image
        return results

    def explain_prepared(
        self,
        prepared: Sequence[Prepared],
        target: Target | Sequence[Target] = None,
        top_k: int | Sequence[int] = 1,
        report_k: int | Sequence[int] | None = None,
    ) -> list[Explanation]:
        """Like :meth:`explain_batch` for images already pre-processed (the HTTP service decodes first).

        ``report_k`` is how many classes each result's ``top_k`` lists (default: its ``top_k``, at least 1),
        for callers that list more classes than they explain.
        """
        n = len(prepared)
        targets = list(target) if isinstance(target, (list, tuple)) else [target] * n
        ks = list(top_k) if isinstance(top_k, (list, tuple)) else [top_k] * n
        reports = list(report_k) if isinstance(report_k, (list, tuple)) else [report_k] * n
        if len(targets) != n or len(ks) != n or len(reports) != n:
            raise ConfigError(
                f"got {len(targets)} targets, {len(ks)} top_k and {len(reports)} report_k values for {n} images"
            )
        for t, k in zip(targets, ks, strict=True):
            if k < 0 or (k == 0 and t is None):
                raise ConfigError(f"top_k must be >= 1 (or 0 together with a named class), got {k}")
        classes = len(self.class_names)
        jobs = [
            _Job(p, None if t is None else self.class_index(t), min(k, classes), min(max(r or k, 1), classes))
            for p, t, k, r in zip(prepared, targets, ks, reports, strict=True)
        ]
        # Chunk by rows (image x class) so a folder of top-5 requests stays within one batch's memory.
        chunks: list[list[_Job]] = [[]]
        rows = 0
        for job in jobs:
            need = job.top_k + (job.target is not None)
            if chunks[-1] and rows + need > self.batch_size:
                chunks.append([])
                rows = 0
            chunks[-1].append(job)
            rows += need
        with eval_mode(self.model):  # every flag back as it was, even when a call fails
            return [result for chunk in chunks if chunk for result in self._run(chunk)]

    def _run(self, jobs: list[_Job]) -> list[Explanation]:
        start = time.perf_counter()
        x = torch.stack([job.prepared.tensor for job in jobs]).to(self.device)
        rows_of, probs = self._classes_to_explain(x, jobs)
        owner = torch.tensor([i for i, classes in enumerate(rows_of) for _ in classes], device=self.device)
        batch = x[owner]
        row_targets = None if probs is None else [c for classes in rows_of for c in classes]
        explained = explain_predictions(
            self.net,
            batch,
            layer=self.layer_name,
            method=self.method,
            guided=self.guided,
            targets=row_targets,
        )
        if self.guided and explained.guided is None:
            self.guided = False  # a network without ReLUs: the engine said so once, later calls skip it
        guided = explained.guided
        if probs is None:
            probs = explained.probs
        explain_s = time.perf_counter() - start

        start = time.perf_counter()
        maps = explained.pred_maps
        shown = to_rgb(denormalize(batch, self.preprocess.mean, self.preprocess.std))
        rendered = {
            "shown": shown.cpu(),
            "heat": colorize(maps).cpu(),
            "blended": overlay(shown, maps, alpha=self.alpha).cpu(),
            "guided": guided_to_image(guided).cpu() if guided is not None else None,
            "maps": maps.cpu(),
        }
        row_classes = explained.targets.tolist()
        probs_cpu = probs.cpu()
        render_s = time.perf_counter() - start
        timings = {"explain": explain_s / len(jobs), "render": render_s / len(jobs)}
        return self._assemble(jobs, rows_of, row_classes, probs_cpu, rendered, timings)

    def _classes_to_explain(
        self, x: Tensor, jobs: list[_Job]
    ) -> tuple[list[list[int | None]], Tensor | None]:
        """The classes each image is explained for; the probabilities when a separate forward was needed."""
        if all(job.top_k == 1 and job.target is None for job in jobs):
            # The common case (explain the prediction) needs no separate forward: targets=None is argmax.
            return [[None] for _ in jobs], None
        with torch.no_grad():
            probs = self.net(x).float().softmax(dim=1)
        top = probs.topk(max(job.top_k for job in jobs), dim=1).indices.tolist()
        rows_of: list[list[int | None]] = []
        for job, ranked in zip(jobs, top, strict=True):
            classes = [] if job.target is None else [job.target]
            classes += [c for c in ranked[: job.top_k] if c not in classes]
            rows_of.append(classes)
        return rows_of, probs

    def _assemble(
        self,
        jobs: list[_Job],
        rows_of: list[list[int | None]],
        row_classes: list[int],
        probs_cpu: Tensor,
        rendered: dict[str, Tensor | None],
        timings: dict[str, float],
    ) -> list[Explanation]:
        """One :class:`Explanation` per job from the rendered rows (host tensors)."""
        report_k = max(job.report_k for job in jobs)
        top_p, top_i = probs_cpu.topk(report_k, dim=1)
        guided_img = rendered["guided"]
        results: list[Explanation] = []
        row = 0
        for i, job in enumerate(jobs):
            ranking = top_i[i].tolist()
            first_row = row
            explained = []
            for _ in rows_of[i]:
                c = row_classes[row]
                explained.append(
                    ClassExplanation(
                        class_index=c,
                        class_name=self.class_names[c],
                        probability=float(probs_cpu[i, c]),
                        rank=int((probs_cpu[i] > probs_cpu[i, c]).sum()) + 1,
                        map=rendered["maps"][row],
                        heatmap=rendered["heat"][row],
                        overlay=rendered["blended"][row],
                        guided=guided_img[row] if guided_img is not None else None,
                    )
                )
                row += 1
            pred = ranking[0]
            results.append(
                Explanation(
                    source=job.prepared.source,
                    prediction=self.class_names[pred],
                    prediction_index=pred,
                    confidence=float(top_p[i, 0]),
                    top_k=[
                        (self.class_names[c], c, float(p))
                        for c, p in zip(ranking, top_p[i].tolist(), strict=True)
                    ][: job.report_k],
                    explained=explained,
                    image=rendered["shown"][first_row],
                    method=self.method,
                    layer=self.layer_name,
                    original_size=job.prepared.original_size,
                    original_mode=job.prepared.original_mode,
                    requested=None if job.target is None else self.class_names[job.target],
                    explained_top_k=job.top_k,
                    timings=timings,
                )
            )
        return results
