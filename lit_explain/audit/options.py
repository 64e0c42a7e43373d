"""The audit's settings and their validation: what the CLI flags and the callback's arguments become."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lit_explain.errors import ConfigError
from lit_explain.explain import METHODS

# How many samples, pairs and panels the report shows (0 is allowed: none).
COUNTS = (
    "best_per_class",
    "worst_per_class",
    "top_pairs",
    "pair_panels",
    "pair_examples",
    "probe_per_class",
    "label_issues_top",
)


@dataclass
class AuditOptions:
    """Settings of one audit (the flags of python -m lit_explain audit; AttentionAudit takes them too).

    The audit command's parser is built from this class (each flag's help is its line below), so a
    setting is declared once, here.

    Args:
        split: split to audit: val, test or train
        layer: layer to explain (default: the last spatial layer)
        method: CAM method: {methods}
        classes: only these classes (names or ids)
        max_samples: audit at most this many samples
        batch_size: inference batch size
        cam_batch_size: images per CAM batch
        num_workers: data loader workers
        best_per_class: most confident right predictions shown per class
        worst_per_class: worst predictions shown per class
        top_pairs: most confused class pairs listed
        pair_panels: confused pairs shown as a picture panel
        pair_examples: examples per confused pair
        probe_per_class: fixed probe samples per class (compared between reports; quality checks use them)
        quality_samples: probe images for deletion/insertion and randomisation
        faithfulness_steps: deletion/insertion steps
        progress: show progress bars
        overwrite: replace an earlier audit report at the output
        compare_to: another audit report to compare with
        label_issues: include the training run's label_issues.csv (TrainingDynamics), top rows explained
        label_issues_top: rows of label_issues.csv shown with their images
        extra: provenance written into report.json (not a flag)

    Example:
        >>> AuditOptions(split="test", method="gradcam++", max_samples=2000)
    """

    split: str = "val"
    layer: str | None = None
    method: str = "gradcam"
    classes: Sequence[int | str] | None = None
    max_samples: int | None = None
    batch_size: int = 256
    cam_batch_size: int = 64
    num_workers: int = 0
    best_per_class: int = 3
    worst_per_class: int = 5
    top_pairs: int = 15
    pair_panels: int = 5
    pair_examples: int = 6
    probe_per_class: int = 2
    quality_samples: int = 32
    faithfulness_steps: int = 10
    progress: bool = True
    overwrite: bool = False
    compare_to: str | None = None
    label_issues: bool = False
    label_issues_top: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`~lit_explain.errors.ConfigError` naming the first invalid setting."""
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r} is not known; choose one of {', '.join(METHODS)}")
        for name in ("batch_size", "cam_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", *COUNTS):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"--max_samples must be >= 1, got {self.max_samples}")
        if self.quality_samples < 0 or self.faithfulness_steps < 1:
            raise ConfigError("--quality_samples must be >= 0 and --faithfulness_steps >= 1")


# The method list in the help follows METHODS (the parser reads the docstring when it is built).
AuditOptions.__doc__ = (AuditOptions.__doc__ or "").replace("{methods}", ", ".join(METHODS))
# Fields the audit parser does not derive from this class: ``extra`` is provenance, not a flag;
# ``overwrite`` is the flag every writing command shares (lit_explain.arguments.add_overwrite_argument).
PARSER_SKIPS = frozenset({"extra", "overwrite"})


def options_from_namespace(cfg: Mapping[str, Any] | Any) -> AuditOptions:
    """The :class:`AuditOptions` among a parsed namespace's values (other keys are ignored)."""
    values = vars(cfg) if not isinstance(cfg, Mapping) else cfg
    return AuditOptions(**{f.name: values[f.name] for f in fields(AuditOptions) if f.name in values})


def resolve_classes(classes: Sequence[int | str] | None, class_names: Sequence[str]) -> list[int]:
    """Class ids from ids or names (``["3", "cat"]``); all classes when None.

    Example:
        >>> resolve_classes(["cat", 0], ["dog", "cat"])
        [0, 1]
    """
    if not classes:
        return list(range(len(class_names)))
    lookup = {name: i for i, name in enumerate(class_names)}
    chosen = []
    for c in classes:
        text = str(c)
        if text in lookup:
            chosen.append(lookup[text])
        elif text.lstrip("-").isdigit() and 0 <= int(text) < len(class_names):
            chosen.append(int(text))
        else:
            shown = ", ".join(list(class_names)[:12]) + (", ..." if len(class_names) > 12 else "")
            raise ConfigError(
                f"--classes: {text!r} is neither a class name nor an id 0..{len(class_names) - 1} ({shown})"
            )
    return sorted(set(chosen))


def default_output(ckpt_path: str | Path, split: str) -> Path:
    """``<checkpoint dir>/<checkpoint stem>_audit_<split>``: the report next to its checkpoint.

    Example:
        >>> default_output("runs/v0/checkpoints/best.ckpt", "val").as_posix()
        'runs/v0/checkpoints/best_audit_val'
    """
    ckpt_path = Path(ckpt_path)
    return ckpt_path.parent / f"{ckpt_path.stem}_audit_{split}"
