"""Another run holding a lit_explain lock: a child process with an ``flock`` on a file until released.

It stands for a run in another process (or another PID namespace), whose recorded PID means nothing here.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOLDER = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


@contextmanager
def held_by_another_process(lock: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``lock`` in a child process for the duration of the block."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield
    finally:
        proc.communicate(timeout=30)
