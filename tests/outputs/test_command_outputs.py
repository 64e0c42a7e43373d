"""Every command that writes outputs (audit, export) replaces only what lit_explain wrote."""

from __future__ import annotations

from pathlib import Path

import torch

from lit_explain.cli import main as lit_main


def test_export_overwrite_replaces_only_an_earlier_export(
    shapes_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "model.pth"
    export = ["export", "--ckpt_path", str(shapes_checkpoint), "--output"]
    assert lit_main([*export, str(out)]) == 0
    assert torch.load(out, weights_only=True)["lit_explain_export"] == 1
    assert lit_main([*export, str(out), "--overwrite"]) == 0  # bare flag works and replaces our own file
    user = tmp_path / "thesis.pth"
    user.write_bytes(b"not ours")
    assert lit_main([*export, str(user), "--overwrite", "true"]) == 2
    assert "was not written by lit_explain export" in capsys.readouterr().err
    assert user.read_bytes() == b"not ours"
    other = tmp_path / "other.pth"
    torch.save({"model_state_dict": {}}, other)  # a weights file from another tool
    assert lit_main([*export, str(other), "--overwrite"]) == 2
    assert "not written by lit_explain export" in capsys.readouterr().err
    assert lit_main([*export, str(tmp_path), "--overwrite"]) == 2
    assert "is a folder; give a file path" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth", "other.pth", "thesis.pth"]


def test_audit_refuses_what_it_did_not_write(
    shapes_checkpoint: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    home = tmp_path / "v"
    (home / "sub").mkdir(parents=True)
    (home / "thesis.txt").write_text("years of work")
    monkeypatch.chdir(home)
    audit = ["audit", "--ckpt_path", str(shapes_checkpoint), "--progress", "false", "--output"]
    # Before: rc 0 and thesis.txt and sub/ were gone; bare --overwrite said "expected one argument".
    assert lit_main([*audit, ".", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds files lit_explain did not write (sub, thesis.txt)" in err and err.count("\n") == 1
    afile = home / "thesis.txt"
    # Before: the file was silently moved to a hidden .thesis.txt.old-XXXX.
    assert lit_main([*audit, str(afile), "--overwrite", "true"]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert lit_main([*audit, str(afile / "report")]) == 2
    assert "thesis.txt is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in home.iterdir()) == ["sub", "thesis.txt"]
    assert afile.read_text() == "years of work"
