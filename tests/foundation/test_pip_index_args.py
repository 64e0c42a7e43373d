"""scripts/pip_index_args.py: pip's index configuration becomes the same uv flags, with pip's precedence."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("pip_index_args", ROOT / "scripts" / "pip_index_args.py")
pip_index_args = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pip_index_args)


def test_every_index_option_and_every_entry_of_a_list_become_flags() -> None:
    listed = "\n".join(
        [
            ":env:.cert='/etc/ssl/certs/ca-certificates.crt'",  # not an index option: ignored
            ":env:.find-links='/opt/wheels'",
            "global.constraint='/etc/xdg/pip/constraints.txt'",
            "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'",
            "global.trusted-host='mirror.local'",
        ]
    )
    assert pip_index_args.uv_args(listed) == [
        "--extra-index-url",
        "file:///opt/pypi/simple",
        "--extra-index-url",
        "file:///opt/pypi-more/simple",
        "--find-links",
        "/opt/wheels",
        "--constraint",
        "/etc/xdg/pip/constraints.txt",
        "--allow-insecure-host",
        "mirror.local",
    ]


def test_the_environment_beats_install_beats_global() -> None:
    listed = "global.index-url='https://g'\ninstall.index-url='https://i'\n:env:.index-url='https://e'"
    assert pip_index_args.uv_args(listed) == ["--index-url", "https://e"]
    listed = "global.index-url='https://g'\ninstall.index-url='https://i'"
    assert pip_index_args.uv_args(listed) == ["--index-url", "https://i"]


def test_nothing_configured_gives_no_flags() -> None:
    assert pip_index_args.uv_args("") == []
    assert pip_index_args.uv_args("global.timeout='60'\nnot a config line") == []
