"""The audit's settings are declared once (AuditOptions), a checkpoint is read once per audit, and a wrong
--layer fails before the inference pass."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import lit_explain.audit.checkpoint as checkpoint
import lit_explain.audit.run as run
from lit_explain.arguments import DEVICE_HELP
from lit_explain.audit import AttentionAudit, AuditOptions
from lit_explain.audit.cli import build_parser, main
from lit_explain.audit.options import PARSER_SKIPS, options_from_namespace
from lit_explain.errors import ConfigError


def test_every_setting_is_a_flag_with_the_same_default_and_a_help() -> None:
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}  # argparse keeps no public list of its options
    for f in dataclasses.fields(AuditOptions):
        if f.name in PARSER_SKIPS - {"overwrite"}:
            assert f.name not in actions
            continue
        assert f.name in actions, f"--{f.name} is not a flag"
        assert actions[f.name].help, f"--{f.name} has no help"
    cfg = parser.parse_args(["--ckpt_path", "x.ckpt"])
    assert options_from_namespace(cfg) == AuditOptions()  # the defaults are the dataclass's own
    cfg = parser.parse_args(
        [
            "--ckpt_path",
            "x.ckpt",
            "--overwrite",
            "--classes",
            "[cat, 2]",
            "--top_pairs",
            "3",
            "--progress",
            "false",
        ]
    )
    assert options_from_namespace(cfg) == AuditOptions(
        classes=["cat", 2], top_pairs=3, progress=False, overwrite=True
    )


def test_overwrite_and_device_are_one_declaration_in_every_command() -> None:
    from lit_explain.inference.cli import build_parser as explain_parser
    from lit_explain.models.export import build_parser as export_parser
    from lit_explain.serve.cli import build_parser as serve_parser

    def option(parser, dest):
        return next((a for a in parser._actions if a.dest == dest), None)

    for parser in (build_parser(), explain_parser(), serve_parser()):
        device = option(parser, "device")
        assert device.help == DEVICE_HELP and device.default == "auto"
    for parser in (build_parser(), explain_parser(), export_parser()):
        overwrite = option(parser, "overwrite")
        assert overwrite.nargs == "?" and overwrite.const is True and overwrite.default is False
        assert "(bare --overwrite or --overwrite true)" in overwrite.help


def test_callback_takes_audit_options() -> None:
    assert AttentionAudit().options == AuditOptions(progress=False)
    assert AttentionAudit(AuditOptions(max_samples=8)).options.max_samples == 8
    with pytest.raises(ConfigError, match="--method 'nope'"):
        AttentionAudit(AuditOptions(method="nope"))


def test_a_checkpoint_is_read_once_per_audit(shapes_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    loads = []
    real_load = torch.load

    def counting_load(*args, **kwargs):
        loads.append(args[0])
        return real_load(*args, **kwargs)

    def fake_run_audit(model, datamodule, output, options, device=None, label_issues=None):
        return {"path": str(output), "extra": options.extra}

    monkeypatch.setattr(torch, "load", counting_load)
    monkeypatch.setattr(checkpoint, "run_audit", fake_run_audit)
    # Copied alone: the data settings come from the checkpoint too (model, data and provenance: one read).
    alone = tmp_path / "alone.ckpt"
    alone.write_bytes(shapes_checkpoint.read_bytes())
    report = checkpoint.audit_checkpoint(
        alone, tmp_path / "report", AuditOptions(progress=False), device="cpu"
    )
    assert len(loads) == 1
    assert (
        report["extra"]["data"]["origin"] == "checkpoint" and report["extra"]["checkpoint_epoch"] is not None
    )


def test_a_wrong_layer_fails_before_the_sweep(
    shapes_checkpoint: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep ran although --layer is wrong")

    monkeypatch.setattr(run, "sweep", no_sweep)
    argv = ["--ckpt_path", str(shapes_checkpoint), "--output", str(tmp_path / "r"), "--layer", "layer9"]
    assert main([*argv, "--progress", "false"]) == 2
    err = capsys.readouterr().err
    assert "layer9" in err and "layer4" in err  # the message lists the valid names
    assert not (tmp_path / "r").exists()
