"""Benchmark the explain service on loopback: throughput, latency percentiles, errors and memory.

Starts ``python -m lit_explain serve`` in a subprocess on a free 127.0.0.1 port, sends a bounded number
of ``POST /predict_with_gradcam`` requests from several concurrent clients, and reports requests/s,
p50/p95 latency, the single-image explain latency (in-process, same settings as the service), the error
count, and the server's resident memory (from /proc) sampled while the requests run.

    python scripts/bench_serve.py                                  # an untrained 64x64 ResNet-18
    python scripts/bench_serve.py --ckpt_path last.ckpt --requests 1000 --clients 8
    python scripts/bench_serve.py --compare_batching               # max_batch 1 vs --max_batch
    python scripts/bench_serve.py --large 16 --compare_budget      # 16 concurrent 7000x7000 PNGs: peak RSS
    python scripts/bench_serve.py --bodies 100                     # 100 concurrent 19 MB bodies: peak RSS

``--large N`` skips the throughput runs and instead sends N concurrent requests with a large PNG
(``--large_side``, default 7000x7000: about 0.2 MB, under every size limit, 49 megapixels decoded), sampling
the server's resident memory every 20 ms: its peak, and what it keeps 2 s after the last answer. With
``--compare_budget`` it does the same with the pixel budget switched off (``--decode_budget`` 10^15).

``--bodies N`` sends N concurrent requests whose body is as large as the default ``--max_bytes`` allows: a
valid 320x240 PNG carrying a private ancillary chunk of ``--chunk_mb`` (14.5) MB of noise, base64 in JSON,
about 19.6 MB. The image decodes to 77 k pixels, so only the body budget (``--body_budget``) bounds what
the server holds. It reports the server's peak RSS over idle (sampled every 20 ms), the count of each status
code (503s are the body budget's refusals, with ``Retry-After``) and client-side failures, then opens 10
connections that send their request head a byte every 0.2 s and reports how long the server kept each one
(``--header_timeout_s``, default 10 s). Exit status 1 when the peak is over ``--max_over_idle_mb`` (1024),
or any answer is a 5xx other than 503, or a client failed.
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image


def make_checkpoint(directory: Path, size: int) -> Path:
    """An untrained ResNet-18 lit_explain checkpoint (the timing does not depend on the weights)."""
    from lit_explain.models import ImageClassifier

    torch.manual_seed(0)
    model = ImageClassifier(
        "resnet18",
        num_classes=10,
        class_names=[f"class_{i}" for i in range(10)],
        mean=[0.5] * 3,
        std=[0.25] * 3,
        input_size=[size, size],
    )
    path = directory / "bench.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


def test_image(path: str | None, size: tuple[int, int] = (320, 240)) -> bytes:
    if path:
        return Path(path).read_bytes()
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def large_png(side: int, mode: str = "RGB") -> bytes:
    """A smooth ``side`` x ``side`` PNG (RGB or RGBA): tiny on disk, ``side**2`` pixels to decode."""
    buffer = io.BytesIO()
    gradient = Image.linear_gradient("L").resize((side, side))
    bands = (gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient, gradient)
    Image.merge(mode, bands[: len(mode)]).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def start_server(
    ckpt: Path, port: int, max_batch: int, max_wait_ms: float, threads: int, *extra: str
) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
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
            "--max_batch",
            str(max_batch),
            "--max_wait_ms",
            str(max_wait_ms),
            "--log_level",
            "warning",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start within 300 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def single_latency(ckpt: Path, image: bytes, repeats: int, threads: int) -> dict[str, float]:
    """In-process ``Explainer.explain`` of one image, as the service configures it (no Guided Grad-CAM)."""
    from lit_explain.inference import Explainer

    torch.set_num_threads(threads)
    explainer = Explainer.from_checkpoint(ckpt, guided=False)
    explainer.explain(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        explainer.explain(image)
        times.append(time.perf_counter() - start)
    return {"median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times)}


def run_load(url: str, payload: bytes, requests: int, clients: int, pid: int, rss_every: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    rss: list[tuple[int, float]] = [(0, rss_mb(pid))]
    counter = {"done": 0}
    lock = threading.Lock()
    per_client = [requests // clients + (i < requests % clients) for i in range(clients)]

    def client(n: int) -> None:
        with httpx.Client(timeout=300) as http:
            for _ in range(n):
                start = time.perf_counter()
                try:
                    r = http.post(url, content=payload, headers={"Content-Type": "application/json"})
                    ok = r.status_code == 200 and "gradcam_overlay" in r.json()
                    problem = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except Exception as exc:  # every failure counts, whatever it is
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)
                    counter["done"] += 1
                    if counter["done"] % rss_every == 0:
                        rss.append((counter["done"], rss_mb(pid)))

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, per_client))
    wall = time.perf_counter() - start
    rss.append((requests, rss_mb(pid)))
    ordered = sorted(latencies)
    return {
        "requests": requests,
        "clients": clients,
        "wall_s": wall,
        "throughput_rps": requests / wall,
        "p50_ms": 1000 * ordered[len(ordered) // 2],
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "errors": len(errors),
        "first_errors": errors[:3],
        "rss_mb": rss,
    }


def bench(args: argparse.Namespace, ckpt: Path, payload: bytes, max_batch: int) -> dict:
    port = free_port()
    proc = start_server(ckpt, port, max_batch, args.max_wait_ms, args.threads)
    try:
        url = f"http://127.0.0.1:{port}/predict_with_gradcam"
        run_load(url, payload, min(args.requests, 2 * args.clients), args.clients, proc.pid, 10**9)  # warm-up
        result = run_load(url, payload, args.requests, args.clients, proc.pid, args.rss_every)
        result["batching"] = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["batching"]
        result["max_batch"] = max_batch
    finally:
        stop(proc)
    return result


class RssSampler:
    """Samples a process's resident memory every ``every_s`` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def bench_large(args: argparse.Namespace, ckpt: Path, budget: int | None) -> dict:
    """``args.large`` concurrent requests with one large PNG each: status codes, time, server RSS."""
    image = large_png(args.large_side, args.large_mode)
    payload = json.dumps({"image": base64.b64encode(image).decode()}).encode()
    extra = [] if budget is None else ["--decode_budget", str(budget)]
    port = free_port()
    proc = start_server(ckpt, port, args.max_batch, args.max_wait_ms, args.threads, *extra)
    url = f"http://127.0.0.1:{port}/predict_with_gradcam"
    try:
        idle = rss_mb(proc.pid)

        def send(_: int) -> int:
            with httpx.Client(timeout=600) as http:
                return http.post(
                    url, content=payload, headers={"Content-Type": "application/json"}
                ).status_code

        start = time.perf_counter()
        with RssSampler(proc.pid) as sampler, ThreadPoolExecutor(args.large) as pool:
            statuses = list(pool.map(send, range(args.large)))
        wall = time.perf_counter() - start
        time.sleep(2.0)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
    finally:
        after = rss_mb(proc.pid)
        stop(proc)
    return {
        "requests": args.large,
        "side": args.large_side,
        "mode": args.large_mode,
        "png_kb": len(image) / 1024,
        "decode_budget": health["decoding"]["capacity"],
        "peak_decoding_pixels": health["decoding"]["peak"],
        "statuses": statuses,
        "wall_s": wall,
        "rss_idle_mb": idle,
        "rss_peak_mb": sampler.peak,
        "rss_after_mb": after,
    }


def png_with_chunk(chunk_bytes: int) -> bytes:
    """A valid 320x240 RGB PNG with a private ancillary chunk ("prVt") of ``chunk_bytes`` of noise after IHDR.

    Decoders skip such a chunk (lower-case first letter: ancillary), so the image is small to decode while
    the file, and the request body carrying it, is large.
    """
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()
    data = rng.integers(0, 255, chunk_bytes, dtype=np.uint8).tobytes()
    chunk = struct.pack(">I", len(data)) + b"prVt" + data + struct.pack(">I", zlib.crc32(b"prVt" + data))
    ihdr_end = 8 + 25  # signature, then IHDR: length, type, 13 bytes, CRC
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def held_open_s(port: int, give_up_s: float = 60.0) -> float:
    """Seconds the server keeps a connection that sends its request head one byte every 0.2 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        start = time.monotonic()
        s.sendall(b"POST /predict_with_gradcam HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        while time.monotonic() - start < give_up_s:
            readable, _, _ = select.select([s], [], [], 0.2)
            try:
                if readable and not s.recv(65536):
                    break
                if not readable:
                    s.sendall(b"a")
            except OSError:  # reset: closed as well
                break
        return time.monotonic() - start


def bench_bodies(args: argparse.Namespace, ckpt: Path) -> dict:
    """``args.bodies`` concurrent large bodies, then 10 slow-header clients: statuses, RSS, held times."""
    image = png_with_chunk(int(args.chunk_mb * 1e6))
    payload = json.dumps({"image": base64.b64encode(image).decode()}).encode()
    extra = [] if args.body_budget is None else ["--body_budget", str(args.body_budget)]
    extra += [] if args.body_wait_s is None else ["--body_wait_s", str(args.body_wait_s)]
    port = free_port()
    proc = start_server(ckpt, port, args.max_batch, args.max_wait_ms, args.threads, *extra)
    url = f"http://127.0.0.1:{port}/predict_with_gradcam"
    try:
        time.sleep(2.0)
        idle = rss_mb(proc.pid)

        def send(_: int) -> str:
            try:
                with httpx.Client(timeout=600) as http:
                    r = http.post(url, content=payload, headers={"Content-Type": "application/json"})
                if r.status_code == 503 and r.headers.get("retry-after") is None:
                    return "503 without Retry-After"
                return str(r.status_code)
            except Exception as exc:  # every client-side failure counts, whatever it is
                return type(exc).__name__

        start = time.perf_counter()
        with RssSampler(proc.pid) as sampler, ThreadPoolExecutor(args.bodies) as pool:
            outcomes = list(pool.map(send, range(args.bodies)))
        wall = time.perf_counter() - start
        time.sleep(2.0)
        after = rss_mb(proc.pid)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        with ThreadPoolExecutor(10) as pool:
            held = list(pool.map(lambda _: held_open_s(port), range(10)))
    finally:
        stop(proc)
    return {
        "requests": args.bodies,
        "body_mb": len(payload) / 1e6,
        "max_bytes": health["bodies"]["max_bytes"],
        "body_budget": health["bodies"]["capacity"],
        "body_budget_peak": health["bodies"]["peak"],
        "body_wait_s": args.body_wait_s,
        "outcomes": dict(collections.Counter(outcomes)),
        "wall_s": wall,
        "rss_idle_mb": idle,
        "rss_peak_mb": sampler.peak,
        "rss_after_mb": after,
        "slow_header_held_s": held,
    }


def main_bodies(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt_path) if args.ckpt_path else make_checkpoint(Path(tmp), args.input_size)
        run = bench_bodies(args, ckpt)
    over = run["rss_peak_mb"] - run["rss_idle_mb"]
    held = run["slow_header_held_s"]
    print(
        f"{run['requests']} concurrent bodies of {run['body_mb']:.2f} MB (--max_bytes {run['max_bytes']:,}), "
        f"body budget {run['body_budget']:,} bytes (peak held {run['body_budget_peak']:,}): "
        f"outcomes {run['outcomes']} in {run['wall_s']:.1f} s; server RSS idle {run['rss_idle_mb']:.0f} MB, "
        f"peak {run['rss_peak_mb']:.0f} MB (+{over:.0f} MB), 2 s after {run['rss_after_mb']:.0f} MB"
    )
    print(f"10 slow-header clients held open {min(held):.2f}-{max(held):.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=2))
    bad = [k for k in run["outcomes"] if k not in ("200", "503")]
    return 0 if over <= args.max_over_idle_mb and not bad else 1


def main_large(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt_path) if args.ckpt_path else make_checkpoint(Path(tmp), args.input_size)
        budgets: list[int | None] = [args.decode_budget] + ([10**15] if args.compare_budget else [])
        runs = [bench_large(args, ckpt, budget) for budget in budgets]
    for run in runs:
        ok = sum(code == 200 for code in run["statuses"])
        print(
            f"{run['requests']} concurrent {run['side']}x{run['side']} {run['mode']} PNGs "
            f"({run['png_kb']:.0f} KB each), "
            f"decode budget {run['decode_budget']:,} px (peak held {run['peak_decoding_pixels']:,}): "
            f"{ok}/{run['requests']} answered 200 in {run['wall_s']:.1f} s; server RSS idle "
            f"{run['rss_idle_mb']:.0f} MB, peak {run['rss_peak_mb']:.0f} MB, 2 s after {run['rss_after_mb']:.0f} MB"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0 if all(code == 200 for run in runs for code in run["statuses"]) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", default=None, help="model to serve (default: an untrained ResNet-18)")
    parser.add_argument("--input_size", type=int, default=64, help="input size of the default model")
    parser.add_argument("--image", default=None, help="image to send (default: a 320x240 JPEG of noise)")
    parser.add_argument("--requests", type=int, default=200, help="requests per run (bounded)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--max_batch", type=int, default=8)
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    parser.add_argument("--compare_batching", action="store_true", help="also run with --max_batch 1")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="torch threads")
    parser.add_argument("--single_repeats", type=int, default=20)
    parser.add_argument("--rss_every", type=int, default=100, help="sample the server's RSS every N requests")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--large", type=int, default=0, help="N concurrent large images (memory test)")
    parser.add_argument("--large_side", type=int, default=7000, help="side of the large PNG in pixels")
    parser.add_argument("--large_mode", choices=["RGB", "RGBA"], default="RGB", help="mode of the large PNG")
    parser.add_argument(
        "--decode_budget", type=int, default=None, help="the server's --decode_budget (default: its own)"
    )
    parser.add_argument("--compare_budget", action="store_true", help="also run --large without a budget")
    parser.add_argument("--bodies", type=int, default=0, help="N concurrent large bodies (memory test)")
    parser.add_argument("--chunk_mb", type=float, default=14.5, help="ancillary chunk in each --bodies PNG")
    parser.add_argument(
        "--body_budget", type=int, default=None, help="the server's --body_budget (default: its own)"
    )
    parser.add_argument(
        "--body_wait_s", type=float, default=None, help="the server's --body_wait_s (default: its own)"
    )
    parser.add_argument(
        "--max_over_idle_mb", type=float, default=1024, help="--bodies fails above this peak over idle"
    )
    args = parser.parse_args()
    if args.bodies:
        if not 1 <= args.bodies <= 200:
            parser.error("--bodies must be in 1..200")
        return main_bodies(args)
    if args.large:
        if not 1 <= args.large <= 64:
            parser.error("--large must be in 1..64")
        return main_large(args)
    if not 1 <= args.requests <= 100_000 or not 1 <= args.clients <= 256:
        parser.error("--requests must be in 1..100000 and --clients in 1..256")

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt_path) if args.ckpt_path else make_checkpoint(Path(tmp), args.input_size)
        image = test_image(args.image)
        payload = json.dumps({"image": base64.b64encode(image).decode()}).encode()
        report = {"single": single_latency(ckpt, image, args.single_repeats, args.threads), "runs": []}
        batches = [args.max_batch] + ([1] if args.compare_batching and args.max_batch != 1 else [])
        for max_batch in batches:
            report["runs"].append(bench(args, ckpt, payload, max_batch))

    print(
        f"single-image explain (in-process): median {report['single']['median_ms']:.1f} ms, "
        f"min {report['single']['min_ms']:.1f} ms"
    )
    for run in report["runs"]:
        rss = run["rss_mb"]
        print(
            f"max_batch={run['max_batch']}: {run['requests']} requests, {run['clients']} clients: "
            f"{run['throughput_rps']:.1f} req/s, p50 {run['p50_ms']:.0f} ms, p95 {run['p95_ms']:.0f} ms, "
            f"errors {run['errors']}, mean batch {run['batching']['mean_batch']}, "
            f"RSS {rss[0][1]:.0f} -> {rss[-1][1]:.0f} MB (samples: {', '.join(f'{m:.0f}' for _, m in rss)})"
        )
        for problem in run["first_errors"]:
            print(f"  error: {problem}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if any(run["errors"] for run in report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
