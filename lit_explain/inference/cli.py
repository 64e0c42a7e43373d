"""``python -m lit_explain explain``: explain one image or a folder of images from the command line.

Examples::

    python -m lit_explain explain --ckpt_path last.ckpt --image leaf.jpg --top_k 3
    python -m lit_explain explain --ckpt_path model.pth --backbone resnet18 --images_dir photos/ --output out/
    python -m lit_explain explain --ckpt_path torchvision:vgg16 --layer features.29 --image cat.jpg \\
        --class_name "tiger cat"
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from lit_explain.arguments import add_device_argument, add_overwrite_argument
from lit_explain.errors import ConfigError, LitExplainError
from lit_explain.explain import METHODS
from lit_explain.inference.explainer import Explainer
from lit_explain.inference.folder import explain_folder
from lit_explain.inference.preprocess import DEFAULT_MAX_PIXELS
from lit_explain.outputs import check_output_dir, locked_output_dir

SHOWN = 10  # skipped entries printed; summary.csv lists them all


def read_labels(path: str | Path) -> list[str]:
    """Class names from a ``.json`` list / ``{index: name}`` mapping, or a text file with one name a line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--labels {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--labels {str(path)!r} is not valid JSON: {exc}") from exc
        if isinstance(data, dict):
            try:
                ordered = sorted(((int(k), str(v)) for k, v in data.items()), key=lambda kv: kv[0])
            except ValueError as exc:
                raise ConfigError(f"--labels {str(path)!r}: a mapping must be {{index: name}}") from exc
            if [k for k, _ in ordered] != list(range(len(ordered))):
                raise ConfigError(
                    f"--labels {str(path)!r}: the indices must be 0..{len(ordered) - 1} without gaps"
                )
            return [v for _, v in ordered]
        if isinstance(data, list):
            return [str(v) for v in data]
        raise ConfigError(f"--labels {str(path)!r} must hold a list of names or an {{index: name}} mapping")
    return [line.strip() for line in text.splitlines() if line.strip()]


def add_model_arguments(parser: ArgumentParser) -> None:
    """The options that choose and configure the model (shared by ``explain`` and ``serve``)."""
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options")
    parser.add_argument(
        "--ckpt_path",
        type=str,
        required=True,
        help="lit_explain .ckpt, a plain state-dict file (with --backbone), or torchvision:NAME (e.g. torchvision:vgg16)",
    )
    parser.add_argument(
        "--backbone", type=str | None, default=None, help="architecture of a plain state-dict file"
    )
    parser.add_argument(
        "--labels", type=str | None, default=None, help="class names: .json list/mapping or .txt"
    )
    parser.add_argument(
        "--layer", type=str | None, default=None, help="layer to explain, e.g. layer4, features.29"
    )
    parser.add_argument("--method", type=str, default="gradcam", help=f"one of {', '.join(METHODS)}")
    add_device_argument(parser)
    parser.add_argument(
        "--batch_size", type=int, default=16, help="rows (image x class) per forward/backward"
    )
    parser.add_argument(
        "--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image (width*height)"
    )


def explainer_from_args(cfg: Namespace, guided: bool = True) -> Explainer:
    """Build the :class:`Explainer` the model options describe."""
    if cfg.method not in METHODS:
        raise ConfigError(f"--method {cfg.method!r} is not known; choose one of {', '.join(METHODS)}")
    class_names = read_labels(cfg.labels) if cfg.labels else None
    return Explainer.from_checkpoint(
        cfg.ckpt_path,
        backbone=cfg.backbone,
        class_names=class_names,
        device=cfg.device,
        layer=cfg.layer,
        method=cfg.method,
        guided=guided,
        batch_size=cfg.batch_size,
        max_pixels=cfg.max_pixels,
    )


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m lit_explain explain",
        description="Explain images with Grad-CAM family maps and Guided Grad-CAM; write pictures and JSON.",
    )
    add_model_arguments(parser)
    parser.add_argument("--image", type=str | None, default=None, help="one image file")
    parser.add_argument("--images_dir", type=str | None, default=None, help="a folder of images (recursive)")
    parser.add_argument("--class_name", type=str | None, default=None, help="explain this class too")
    parser.add_argument("--top_k", type=int, default=1, help="explain each of the k most probable classes")
    parser.add_argument("--output", type=str, default="explanations", help="folder for the results")
    parser.add_argument("--no_guided", type=bool, default=False, help="skip Guided Grad-CAM (faster)")
    add_overwrite_argument(
        parser,
        "result files an earlier explain run wrote",
        note="a folder holding anything else is never written into",
    )
    parser.add_argument("--progress", type=bool, default=True, help="show a progress bar for folders")
    return parser


def _lock_early(output: Path, folder: bool) -> contextlib.AbstractContextManager[Any]:
    """The --output lock, taken before the model loads when the folder exists (a re-run, --overwrite).

    A concurrent run is then refused within a second, not after loading a model. A new folder is
    locked once it is created, after the model loaded (so a bad checkpoint creates nothing); the
    writers take the lock themselves and do not take it twice.
    """
    if not output.is_dir():
        return contextlib.nullcontext()
    return locked_output_dir(output, kind="explain-folder" if folder else "explain")


def _print_single(result: Any, output: Path) -> None:
    print(f"{result.source}: {result.prediction} ({result.confidence:.3f})")
    for name, _, prob in result.top_k[: max(1, result.explained_top_k)]:
        print(f"  {prob:.3f}  {name}")
    if result.requested is not None:
        p = result.primary
        print(f"  requested {p.class_name}: {p.probability:.3f} (rank {p.rank})")
    print(f"results in {output}")


def main(argv: list[str] | None = None) -> int:
    """Run the explain command; returns the exit code (2 for a usage or input error)."""
    parser = build_parser()
    cfg = parser.parse_args(argv)
    try:
        if (cfg.image is None) == (cfg.images_dir is None):
            raise ConfigError("give exactly one of --image PATH or --images_dir DIR")
        if cfg.top_k < 1:
            raise ConfigError(f"--top_k must be >= 1, got {cfg.top_k}")
        output = check_output_dir(cfg.output)  # a bad --output is reported before the model loads
        with _lock_early(output, folder=cfg.images_dir is not None):
            return _run(cfg, output)
    except LitExplainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(cfg: Namespace, output: Path) -> int:
    """Load the model, explain, write, print; the options are valid and ``output`` is usable."""
    explainer = explainer_from_args(cfg, guided=not cfg.no_guided)
    target = cfg.class_name
    if target is not None:
        target = explainer.class_names[explainer.class_index(target)]
    if cfg.image is not None:
        result = explainer.explain(cfg.image, target=target, top_k=cfg.top_k)
        result.save(output, overwrite=cfg.overwrite)
        _print_single(result, output)
        return 0
    report = explain_folder(
        explainer,
        cfg.images_dir,
        output,
        target=target,
        top_k=cfg.top_k,
        overwrite=cfg.overwrite,
        progress=cfg.progress,
    )
    _print_folder(report, output)
    return 0


def _print_folder(report: Any, output: Path) -> None:
    print(f"explained {report.explained} images in {report.seconds:.1f} s; results in {output}")
    if report.unreadable:
        print(
            f"{len(report.unreadable)} unreadable files (listed in {output / 'summary.csv'}):",
            file=sys.stderr,
        )
        for item in report.unreadable:
            print(f"  {item['file']}: {item['error']}", file=sys.stderr)
    if report.skipped:
        print(f"{len(report.skipped)} entries skipped (listed in summary.csv):", file=sys.stderr)
        for item in report.skipped[:SHOWN]:
            print(f"  {item['file']}: {item['reason']}", file=sys.stderr)
        if len(report.skipped) > SHOWN:
            print(f"  ... and {len(report.skipped) - SHOWN} more", file=sys.stderr)
    if report.renamed:
        print(
            f"{len(report.renamed)} images share an output name with another; their results went to "
            "suffixed folders:",
            file=sys.stderr,
        )
        for source, folder in report.renamed.items():
            print(f"  {source} -> {folder}", file=sys.stderr)
