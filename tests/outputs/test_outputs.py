"""lit_explain.outputs: one set of rules for every file and folder a command writes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_explain import outputs
from lit_explain.outputs import (
    MARKER,
    AtomicReportDir,
    OutputError,
    OutputExistsError,
    claim_output_dir,
    clean_stale,
    is_lit_explain_output,
    remove_output_dir,
    safe_name,
    write_bytes,
    write_csv,
    write_json,
)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def test_files_and_folders_follow_the_umask(tmp_path: Path, umask_027: int) -> None:
    path = write_bytes(tmp_path / "new" / "sub" / "a.bin", b"x")
    assert path.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o750
    target = AtomicReportDir(tmp_path / "report", kind="test")
    with target as tmp:
        # The report folder was made with tempfile.mkdtemp (0o700) before: private whatever the umask.
        assert tmp.stat().st_mode & 0o777 == 0o750
        write_json(tmp / "r.json", {})
        final = target.commit()
    assert final.stat().st_mode & 0o777 == 0o750
    assert (final / "r.json").stat().st_mode & 0o777 == 0o640


def test_write_is_atomic_and_never_clobbers(tmp_path: Path) -> None:
    dest = tmp_path / "a.txt"
    write_bytes(dest, b"first")
    with pytest.raises(OutputExistsError, match=r"a\.txt already exists; pass --overwrite"):
        write_bytes(dest, b"second")
    assert dest.read_bytes() == b"first"
    write_bytes(dest, b"second", overwrite=True)
    assert dest.read_bytes() == b"second"

    def fail(handle) -> None:
        handle.write(b"half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        outputs.write_atomic(tmp_path / "b.txt", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no partial file, no temp file


def test_no_hard_links_falls_back_to_check_then_rename(tmp_path: Path, monkeypatch) -> None:
    def no_links(src, dst) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    dest = write_bytes(tmp_path / "a.txt", b"1")
    assert dest.read_bytes() == b"1"
    with pytest.raises(OutputExistsError):
        write_bytes(dest, b"2")
    assert dest.read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_unwritable_places_give_one_clear_line(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("user data")
    with pytest.raises(OutputError, match=r"afile is a file"):
        write_bytes(blocker / "sub" / "x.txt", b"1")
    with pytest.raises(OutputError, match=r"is a folder; give a file path"):
        write_bytes(tmp_path, b"1")

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OutputError, match=r"not writable \(Permission denied\)"):
        write_bytes(tmp_path / "x.txt", b"1")
    assert blocker.read_text() == "user data"


def test_safe_name() -> None:
    assert safe_name("Tomato: late blight") == "Tomato_late_blight"
    assert safe_name("maple leaf / dry") == "maple_leaf_dry"
    assert safe_name("../../etc/passwd") == "etc_passwd"  # no path separators, no leading dots
    assert safe_name(".hidden") == "hidden"
    assert safe_name("") == safe_name("///") == "class"
    assert safe_name("x" * 200, limit=10) == "x" * 10
    assert safe_name("épi de blé") == "épi_de_blé"  # letters of any script are kept


def test_json_is_strict_and_csv_uniform(tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "a.json", {"nan": float("nan"), "t": torch.tensor([1.5, float("inf")]), 3: (1,)}
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"nan": None, "t": [1.5, None], "3": [1]}
    csv_path = write_csv(
        tmp_path / "a.csv",
        [{"a": 1, "b": 0.123456789}, [2, float("nan")], {"a": None}],
        fields=["a", "b"],
    )
    assert csv_path.read_text() == "a,b\n1,0.123457\n2,\n,\n"


def test_report_dir_temp_folder_only_inside_with(tmp_path: Path) -> None:
    target = AtomicReportDir(tmp_path / "r")
    assert list(tmp_path.iterdir()) == []  # building one outside ``with`` leaks nothing
    with pytest.raises(RuntimeError), target as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def _report(dest: Path, overwrite: bool = False, content: str = "1") -> Path:
    target = AtomicReportDir(dest, overwrite=overwrite, kind="test")
    with target as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text(content)
        return target.commit()


def test_report_dir_replaces_only_an_earlier_report(tmp_path: Path) -> None:
    dest = _report(tmp_path / "r")
    marker = json.loads((dest / MARKER).read_text())
    assert marker["tool"] == "lit_explain" and marker["files"] == ["sub/a.txt"]
    assert is_lit_explain_output(dest)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        _report(dest)
    _report(dest, overwrite=True, content="2")
    assert (dest / "sub" / "a.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no temporary or old folder left
    # A file the user put into the report makes it theirs too: refused, nothing moved or deleted.
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"did not write \(notes\.txt\)"):
        _report(dest, overwrite=True)
    assert (dest / "notes.txt").read_text() == "mine" and (dest / "sub" / "a.txt").read_text() == "2"


def test_report_dir_refuses_what_lit_explain_did_not_write(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "v"
    (home / "sub").mkdir(parents=True)
    (home / "thesis.txt").write_text("years of work")
    monkeypatch.chdir(home)
    for dest in (Path("."), home):
        with pytest.raises(OutputError, match=r"holds files lit_explain did not write \(sub, thesis\.txt\)"):
            _report(dest, overwrite=True)
    afile = tmp_path / "afile"
    afile.write_text("data")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        _report(afile, overwrite=True)
    with pytest.raises(OutputError, match="afile is a file, not a folder"):
        _report(afile / "report")
    assert (home / "thesis.txt").read_text() == "years of work" and (home / "sub").is_dir()
    assert afile.read_text() == "data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "v"]
    assert sorted(p.name for p in home.iterdir()) == ["sub", "thesis.txt"]
    # An empty folder holds nothing to lose: it is replaced without --overwrite.
    (tmp_path / "empty").mkdir()
    assert (_report(tmp_path / "empty") / "sub" / "a.txt").is_file()


def test_remove_output_dir_only_removes_ours(tmp_path: Path) -> None:
    dest = _report(tmp_path / "r")
    (dest / "extra.txt").write_text("user")
    with pytest.raises(OutputError):
        remove_output_dir(dest)
    assert dest.is_dir()
    (dest / "extra.txt").unlink()
    remove_output_dir(dest)
    assert not dest.exists()
    user = tmp_path / "user"
    user.mkdir()
    with pytest.raises(OutputError):
        remove_output_dir(user)
    assert user.is_dir()


def test_claim_output_dir(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(OutputError, match=r"--output .*afile is a file, not a folder"):
        claim_output_dir(afile, kind="explain")
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"did not write \(thesis\.txt\)"):
        claim_output_dir(user, kind="explain")
    assert sorted(p.name for p in user.iterdir()) == ["thesis.txt"]
    new = claim_output_dir(tmp_path / "new" / "out", kind="explain")
    assert json.loads((new / MARKER).read_text())["kind"] == "explain"
    (new / "result.png").write_bytes(b"x")
    assert claim_output_dir(new, kind="explain") == new  # marked: ours to write into again
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (claim_output_dir(empty, kind="explain") / MARKER).is_file()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_temp(parent: Path, name: str, pid: int, marker: bool = True) -> Path:
    path = parent / name
    path.mkdir()
    (path / "half.png").write_bytes(b"x")
    if marker:
        payload = {"tool": "lit_explain", "state": "writing", "pid": pid, "host": os.uname().nodename}
        (path / MARKER).write_text(json.dumps(payload))
    return path


def test_clean_stale_removes_only_unlocked_lit_explain_temporaries(tmp_path: Path) -> None:
    # The PIDs in the names decide nothing any more (see tests/outputs/test_locks.py): no run holds
    # r's lock here, so every marked or empty temporary folder of r is abandoned, "alive" PID or not.
    dead, alive = _dead_pid(), os.getppid()
    stale = _fake_temp(tmp_path, f".r.tmp-{dead}-abcd", dead)
    reused = _fake_temp(tmp_path, f".r.tmp-{alive}-abcd", alive)  # the PID now belongs to another process
    unmarked = _fake_temp(tmp_path, f".r.tmp-{dead}-beef", dead, marker=False)
    lookalike = _fake_temp(tmp_path, ".r.tmp-xyz", dead)
    empty = tmp_path / f".r.tmp-{dead}-0123"  # killed between mkdir and writing the marker
    empty.mkdir()
    assert sorted(clean_stale(tmp_path)) == sorted([stale, reused, empty])
    assert not stale.exists() and not reused.exists() and not empty.exists()
    assert unmarked.is_dir() and lookalike.is_dir()  # not ours for sure
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([unmarked.name, lookalike.name])  # no lock


def test_clean_stale_restores_a_report_moved_aside(tmp_path: Path) -> None:
    dead = _dead_pid()
    old = _fake_temp(tmp_path, f".r.old-{dead}-abcd", dead)
    clean_stale(tmp_path)  # killed between the two renames: the previous report comes back
    assert not old.exists() and (tmp_path / "r" / "half.png").is_file()
    old = _fake_temp(tmp_path, f".r.old-{dead}-abcd", dead)
    clean_stale(tmp_path)  # the new report is in place: the old one goes
    assert not old.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_one_commands_output_is_never_mixed_into_or_replaced_by_anothers(tmp_path: Path) -> None:
    from lit_explain.outputs import AtomicReportDir, OutputError, claim_output_dir

    target = AtomicReportDir(tmp_path / "report", kind="audit")
    with target as tmp:
        (tmp / "index.html").write_text("<h1>audit</h1>")
        target.commit()
    explained = claim_output_dir(tmp_path / "explained", kind="explain-folder")
    claim_output_dir(explained, kind="explain")  # one image's results inside a folder run: same command
    with pytest.raises(OutputError, match="holds a lit_explain audit output"):
        claim_output_dir(tmp_path / "report", kind="explain")
    with pytest.raises(
        OutputError,
        match="holds a lit_explain explain-folder output; --overwrite replaces only an earlier audit",
    ):
        AtomicReportDir(explained, overwrite=True, kind="audit").check()
    AtomicReportDir(tmp_path / "report", overwrite=True, kind="audit").check()  # its own kind: allowed
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [".lit_explain-output", "index.html"]
