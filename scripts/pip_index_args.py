"""Print, one per line, the uv arguments that reproduce pip's package-index configuration.

uv does not read pip.conf or PIP_* variables, so a machine whose packages come from a mirror configured for pip
(index-url, extra-index-url, find-links, constraint files) would send uv to pypi.org. This reads
``pip config list`` (the merged configuration, environment variables included) from stdin and prints the
matching flags; scripts/setup_env.sh passes them to ``uv pip install``.

    pip config list | python scripts/pip_index_args.py
"""

from __future__ import annotations

import shlex
import sys

# pip option -> uv flag. Each pip value may hold several whitespace-separated entries.
FLAGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "trusted-host": "--allow-insecure-host",
}
# Where the same option is set several ways, pip takes the environment over [install] over [global].
PRIORITY = {":env:": 0, "install": 1, "global": 2}


def uv_args(pip_config_list: str) -> list[str]:
    """The uv flags for the options in ``pip config list`` output (``section.option='value'`` lines).

    Example:
        >>> uv_args("global.find-links='/opt/wheels'\\n:env:.index-url='file:///mirror'")
        ['--index-url', 'file:///mirror', '--find-links', '/opt/wheels']
    """
    chosen: dict[str, tuple[int, str]] = {}
    for line in pip_config_list.splitlines():
        key, sep, value = line.partition("=")
        section, dot, option = key.rpartition(".")
        if not (sep and dot) or option not in FLAGS or section not in PRIORITY:
            continue
        rank = PRIORITY[section]
        if option not in chosen or rank < chosen[option][0]:
            chosen[option] = (rank, value)
    args: list[str] = []
    for option, flag in FLAGS.items():
        if option in chosen:
            for entry in " ".join(shlex.split(chosen[option][1])).split():
                args += [flag, entry]
    return args


if __name__ == "__main__":
    print("\n".join(uv_args(sys.stdin.read())))
