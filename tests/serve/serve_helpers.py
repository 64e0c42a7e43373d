"""Helpers shared by the service tests and scripts/bench_serve.py-style checks: images, ports, a server."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def png_bytes(size: tuple[int, int] = (80, 60), mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0]) if channels is None else (size[1], size[0], channels)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    ckpt: Path,
    port: int,
    *extra: str,
    timeout: float = 180.0,
    log_level: str = "warning",
    log: Path | None = None,
) -> subprocess.Popen:
    """``python -m lit_explain serve`` on loopback; returns once /health answers (or raises with its log).

    ``log``: a file that receives the server's output while it runs (default: a pipe read at the end).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    output = subprocess.PIPE if log is None else log.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lit_explain",
            "serve",
            "--ckpt_path",
            str(ckpt),
            "--port",
            str(port),
            "--log_level",
            log_level,
            *extra,
        ],
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    if log is not None:
        output.close()  # the server holds its own copy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = proc.stdout.read() if log is None else log.read_text()
            raise RuntimeError(f"server exited with {proc.returncode}:\n{text}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"server did not answer /health within {timeout} s")


def stop_server(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""
