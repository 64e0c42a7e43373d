"""Command-line options several commands share, declared once (audit, explain, serve, export).

Example:
    >>> parser = ArgumentParser(prog="python -m lit_explain audit")
    >>> add_overwrite_argument(parser, "an earlier audit report at --output")
    >>> add_device_argument(parser)
    >>> parser.parse_args(["--overwrite"]).overwrite, parser.parse_args([]).device
    (True, 'auto')
"""

from __future__ import annotations

from jsonargparse import ArgumentParser

__all__ = ["DEVICE_HELP", "add_device_argument", "add_overwrite_argument"]

# One device rule for every command (lit_explain.inference.explainer.resolve_device reads it).
DEVICE_HELP = (
    "auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...; the same rule in audit, explain and serve"
)


def add_overwrite_argument(parser: ArgumentParser, replaces: str, note: str = "") -> None:
    """``--overwrite``: a bare flag or ``--overwrite true|false``; ``replaces`` says what it may replace.

    Every command refuses to replace what it did not write itself; ``note`` adds a command's own detail.
    """
    help_text = f"replace {replaces} (bare --overwrite or --overwrite true)"
    parser.add_argument(
        "--overwrite",
        type=bool,
        nargs="?",  # a bare --overwrite means true
        const=True,
        default=False,
        help=f"{help_text}; {note}" if note else help_text,
    )


def add_device_argument(parser: ArgumentParser) -> None:
    """``--device``: ``auto`` (the default: CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N``."""
    parser.add_argument("--device", type=str, default="auto", help=DEVICE_HELP)
