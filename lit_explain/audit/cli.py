"""``python -m lit_explain audit``: the audit report of a checkpoint, from the command line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from lit_explain.arguments import add_device_argument, add_overwrite_argument
from lit_explain.audit.attach import attach_report, check_attachable
from lit_explain.audit.checkpoint import audit_checkpoint
from lit_explain.audit.options import PARSER_SKIPS, AuditOptions, default_output, options_from_namespace
from lit_explain.errors import ConfigError, LitExplainError
from lit_explain.outputs import AtomicReportDir, locked_report

EPILOG = """\
data: taken from the checkpoint's own run (the config.yaml LightningCLI saved in its run folder,
version_N/ above checkpoints/), else from the data-module hyperparameters saved in the checkpoint itself
(so a checkpoint copied alone into any folder audits as it is). A config.yaml anywhere else is never
read; name one with --data_config FILE (YAML with data: {class_path: ..., init_args: {...}}). The audit
says which it used (a "data:" line, and data.origin in report.json). Override single data settings with
--data.NAME VALUE (e.g. --data.batch_size 128 --data.num_workers 4; a data module's own settings work
the same way, such as --data.data_dir DIR for the CIFAR-100 and plant modules).

output: a new folder, written whole or not at all. --overwrite replaces only an earlier audit report
that holds nothing but its own files; any other existing file or folder is refused, never moved or deleted.

example:
  python -m lit_explain audit --ckpt_path lightning_logs/shapes_demo/version_0/checkpoints/last.ckpt
  python -m lit_explain audit --ckpt_path best.ckpt --split test --output audit_best --compare_to audit_prev
"""


def build_parser() -> ArgumentParser:
    """The audit command's argument parser (``--help``, ``--config`` and ``--print_config`` work).

    The audit's own settings come from :class:`AuditOptions` (their help is its docstring); the options
    here say which checkpoint, data, output and device to use.
    """
    p = ArgumentParser(
        prog="python -m lit_explain audit",
        description="Audit a checkpoint: per-class accuracy, confusions, where it looks when right and wrong, "
        "whether those maps are trustworthy, and what to change next.",
        epilog=EPILOG,
        exit_on_error=False,
    )
    p.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options")
    p.add_argument(
        "--ckpt_path",
        type=str,
        required=True,
        help="checkpoint (.ckpt, or a plain weights file with --backbone)",
    )
    p.add_argument(
        "--output", type=str | None, default=None, help="report directory (default: next to the checkpoint)"
    )
    add_overwrite_argument(p, "an earlier audit report at --output")
    p.add_argument(
        "--log_to_run",
        type=bool,
        nargs="?",
        const=True,
        default=False,
        help="also attach the report to the checkpoint's run: a W&B artifact, MLflow run artifacts, "
        "or a copy next to the checkpoint for TensorBoard/CSV runs",
    )
    p.add_argument("--data_config", type=str | None, default=None, help="YAML file with the data section")
    p.add_argument("--backbone", type=str | None, default=None, help="architecture of a plain weights file")
    add_device_argument(p)
    p.add_class_arguments(AuditOptions, nested_key=None, skip=set(PARSER_SKIPS), fail_untyped=True)
    return p


def split_data_overrides(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Take ``--data.NAME VALUE`` / ``--data.NAME=VALUE`` out of argv; values are read as YAML scalars.

    Example:
        >>> split_data_overrides(["--split", "test", "--data.val_size=64"])
        (['--split', 'test'], {'val_size': 64})
    """
    rest: list[str] = []
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--data."):
            key, eq, value = arg[len("--data.") :].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{arg} needs a value")
                value = argv[i + 1]
                i += 1
            overrides[key] = yaml.safe_load(value) if value != "" else ""
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


class _StderrLines(logging.Handler):
    """Writes each record's message as one line to the current ``sys.stderr`` (looked up per record)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


@contextmanager
def _info_lines() -> Iterator[None]:
    """Show the audit's INFO lines (e.g. where its data settings came from) for the command's duration."""
    audit_log = logging.getLogger("lit_explain.audit")
    handler, level = _StderrLines(logging.INFO), audit_log.level
    audit_log.addHandler(handler)
    audit_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        audit_log.removeHandler(handler)
        audit_log.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run the audit command; returns the exit code (2 for user errors, printed without a traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, overrides = split_data_overrides(argv)
        parser = build_parser()
        try:
            cfg = parser.parse_args(rest)
        except Exception as exc:  # jsonargparse's ArgumentError: a bad or missing option
            raise ConfigError(f"{exc}\n(see python -m lit_explain audit --help)") from None
        options = options_from_namespace(cfg)
        options.validate()
        output = Path(cfg.output) if cfg.output else default_output(cfg.ckpt_path, cfg.split)
        # A bad --output is refused first, then the report's lock is taken and held for the whole
        # command: a second run aimed at the same --output stops within a second, not after this one's
        # checkpoint, data and sweep (the report writer and audit_checkpoint use the lock held here).
        AtomicReportDir(output, overwrite=cfg.overwrite, kind="audit").check()
        with locked_report(output):
            if cfg.log_to_run:  # refused now rather than after a long audit
                check_attachable(output, cfg.ckpt_path)
            with _info_lines():
                report = audit_checkpoint(
                    cfg.ckpt_path,
                    output,
                    options,
                    data_config=cfg.data_config,
                    data_overrides=overrides,
                    backbone=cfg.backbone,
                    device=cfg.device,
                )
            attached = attach_report(report["path"], cfg.ckpt_path) if cfg.log_to_run else None
    except LitExplainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The report folder is written aside and only renamed into place when complete: nothing to clean.
        print("audit interrupted; no report written", file=sys.stderr)
        return 130
    print(
        f"audit of {cfg.ckpt_path} on {report['split']} ({report['num_samples']} samples): accuracy "
        f"{report['accuracy']:.4f}; {len(report['recommendations'])} recommendation(s); "
        f"{report['timing']['total_s']:.1f} s\nreport: {report['path']}/index.html"
    )
    if attached:
        print(f"attached to the run: {attached}")
    return 0
