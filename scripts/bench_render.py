"""Benchmark the CPU-bound rendering steps of the callbacks' epoch-end work, before vs after issue 20 (3).

1. Card charts per epoch (confusion matrix, per-class accuracy pages, TensorBoard card size) for 6 and 100
   classes: a new matplotlib figure per epoch (``figure_to_tensor(confusion_matrix_figure(..., card=True))``)
   vs ``confusion_matrix_image`` / ``per_class_accuracy_images`` (what the callbacks log: drawn as pixels,
   render/charts.py; the first call draws each chart's fixed parts, later calls reuse them).
2. PNG encoding at zlib level 1 (``Picture.png``) of a rendered panel grid and a figure: Pillow vs
   ``encode_png``, in MB/s of raw pixels; and whether another thread makes progress while a worker thread
   encodes (a pure-Python loop counting on the main thread, relative to the same loop next to a sleeping
   worker; a pure-Python worker shows what holding the GIL looks like), with the longest stall of that loop,
   under a 100 ms GIL switch interval so that holding the GIL stands out from the shared machine's noise.
3. TensorBoard record CRC32C for a 1 MB image summary record: tensorboard's pure-Python ``masked_crc32c``
   vs lit_explain's C one (the ``crc32c`` package), in MB/s, and whole ``RecordWriter.write`` calls.

Every timing is the minimum of ``--repeats`` runs (the machine is shared: minimums are the least noisy).

    python scripts/bench_render.py
    python scripts/bench_render.py --repeats 7
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


# -- 1. figures ------------------------------------------------------------------------------------------


def bench_figures(repeats: int) -> None:
    print("1. card charts per epoch (ms; min of repeats)")
    for n in (6, 100):
        _bench_figures_for(n, repeats)


def _bench_figures_for(n: int, repeats: int) -> None:
    from lit_explain.render import (
        confusion_matrix_figure,
        confusion_matrix_image,
        figure_to_tensor,
        per_class_accuracy_images,
        per_class_accuracy_pages,
    )

    names = [f"class_{i:03d}" for i in range(n)]
    g = torch.Generator().manual_seed(0)
    epochs = [
        torch.randint(0, 5, (n, n), generator=g) + torch.eye(n, dtype=torch.int64) * 40 for _ in range(3)
    ]
    accs = [torch.rand(n, generator=g) for _ in range(3)]
    epoch = iter(range(10**9))  # a different epoch's numbers at every call

    def matrix() -> torch.Tensor:
        return epochs[next(epoch) % 3]

    def acc() -> torch.Tensor:
        return accs[next(epoch) % 3]

    first_matrix = best_ms(lambda: confusion_matrix_image(matrix(), names), 1)
    first_pages = best_ms(lambda: per_class_accuracy_images(acc(), names), 1)
    print(
        f"   {n:3d} classes  first call (draws the fixed parts): matrix {first_matrix:.1f}"
        f"  accuracy pages {first_pages:.1f}"
    )
    rows = [
        (
            "confusion matrix",
            lambda: figure_to_tensor(confusion_matrix_figure(matrix(), names, card=True)),
            lambda: confusion_matrix_image(matrix(), names),
        ),
        (
            "per-class accuracy",
            lambda: [figure_to_tensor(p) for p in per_class_accuracy_pages(acc(), names)],
            lambda: per_class_accuracy_images(acc(), names),
        ),
    ]
    for label, before, after in rows:
        b, a = best_ms(before, repeats), best_ms(after, repeats)
        print(
            f"   {n:3d} classes  {label:20s} matplotlib figure {b:7.1f}  pixel chart {a:6.2f}  ({b / a:5.0f}x)"
        )


# -- 2. PNG ----------------------------------------------------------------------------------------------


def _pictures() -> dict[str, torch.Tensor]:
    from lit_explain.render import overlay, panel_grid, per_class_accuracy_images

    g = torch.Generator().manual_seed(0)
    up = torch.nn.functional.interpolate
    images = up(torch.rand(16, 3, 16, 16, generator=g), size=(128, 128), mode="bilinear")
    maps = up(torch.rand(16, 1, 7, 7, generator=g), size=(128, 128), mode="bilinear")
    grid = panel_grid(torch.stack([images, overlay(images, maps)], 1), [f"sample {i}" for i in range(16)])
    page = per_class_accuracy_images(torch.rand(100, generator=g), [f"c{i}" for i in range(100)])[0]
    return {"panel grid": grid, "figure page": page}


def _pillow_png(hwc: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(hwc).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


SWITCH_INTERVAL_S = 0.1


def _main_thread_progress(work: Callable[[], object], times: int = 4) -> tuple[float, float]:
    """Iterations/s of a pure-Python loop on this thread while ``work`` runs ``times`` on another, and the
    loop's longest stall (ms)."""
    done = threading.Event()

    def worker() -> None:
        for _ in range(times):
            work()
        done.set()

    thread = threading.Thread(target=worker)
    clock = time.perf_counter
    count, stall = 0, 0.0
    # A long switch interval: a thread that holds the GIL keeps it for up to this long before it must
    # hand it over, so holding it shows as stalls far above the shared machine's scheduling noise, while
    # C code that releases the GIL lets this loop run at once.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        start = last = clock()
        thread.start()
        while not done.is_set():
            now = clock()
            stall = max(stall, now - last)
            last = now
            count += 1
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    return count / (clock() - start), stall * 1e3


def bench_png(repeats: int) -> None:
    from lit_explain.render import encode_png

    print("2. PNG at zlib level 1 (MB/s of raw pixels, output size)")
    for label, picture in _pictures().items():
        hwc = np.ascontiguousarray(picture.permute(1, 2, 0).numpy())
        mb = hwc.nbytes / 1e6
        b = best_ms(lambda hwc=hwc: _pillow_png(hwc), repeats)
        a = best_ms(lambda picture=picture: encode_png(picture, compress_level=1), repeats)
        sizes = len(_pillow_png(hwc)) / 1e3, len(encode_png(picture, compress_level=1)) / 1e3
        print(
            f"   {label:12s} {tuple(hwc.shape)}  Pillow {mb / b * 1e3:6.1f} MB/s ({sizes[0]:.0f} kB)  "
            f"encode_png {mb / a * 1e3:6.1f} MB/s ({sizes[1]:.0f} kB)  ({b / a:3.1f}x)"
        )
    grid = _pictures()["panel grid"]
    hwc = np.ascontiguousarray(grid.permute(1, 2, 0).numpy())

    def pure_python() -> None:  # holds the GIL throughout, like a pure-Python CRC
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:
            pass

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    from tensorboard.summary.writer import record_writer

    from lit_explain.compat import use_fast_tensorboard_crc

    record = os.urandom(1 << 18)
    workers = {
        "sleeping worker": lambda: time.sleep(0.05),
        "pure-Python worker": pure_python,
        "Pillow encoding": lambda: _pillow_png(hwc),
        "encode_png": lambda: encode_png(grid, compress_level=1),
        "TB CRC 256 kB, Python": lambda: masked_crc32c(record),
    }
    original = record_writer.masked_crc32c
    if use_fast_tensorboard_crc():
        fast = record_writer.masked_crc32c
        record_writer.masked_crc32c = original
        workers["TB CRC 256 kB, crc32c"] = lambda: [fast(record) for _ in range(100)]
    print(
        "   main-thread progress while a worker thread runs 4 times (best of repeats; 100% = next to a sleeper;"
        f" GIL switch interval {SWITCH_INTERVAL_S * 1e3:.0f} ms)"
    )
    results = {name: [_main_thread_progress(fn) for _ in range(repeats)] for name, fn in workers.items()}
    base = max(r for r, _ in results["sleeping worker"])
    for name, runs in results.items():
        rate, stall = max(r for r, _ in runs), min(s for _, s in runs)
        print(f"   {name:24s} {rate / base * 100:5.0f}%   longest stall {stall:6.1f} ms")


# -- 3. CRC ----------------------------------------------------------------------------------------------


def bench_crc(repeats: int) -> None:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as pure_python
    from tensorboard.summary.writer import record_writer

    from lit_explain.compat import use_fast_tensorboard_crc

    image = Summary.Image(height=1, width=1, colorspace=3, encoded_image_string=os.urandom(1 << 20))
    record = Summary(value=[Summary.Value(tag="val/probes", image=image)]).SerializeToString()
    mb = len(record) / 1e6
    print(f"3. TensorBoard record CRC32C, one {mb:.2f} MB image summary record (MB/s)")
    b = best_ms(lambda: pure_python(record), max(1, repeats // 2))
    print(f"   tensorboard (pure Python)  {mb / b * 1e3:10.1f}")
    original = record_writer.masked_crc32c
    try:
        if not use_fast_tensorboard_crc():
            print("   crc32c not installed: pip install 'lit_explain[fast-tensorboard]'")
            return
        fast = record_writer.masked_crc32c
        a = best_ms(lambda: fast(record), repeats * 10)
        print(f"   lit_explain (crc32c, C)    {mb / a * 1e3:10.1f}   ({b / a:.0f}x)")
        sink = io.BytesIO()
        writer = record_writer.RecordWriter(sink)
        w = best_ms(lambda: writer.write(record), repeats * 10)
        print(f"   whole RecordWriter.write   {mb / w * 1e3:10.1f}   (with the C CRC)")
    finally:
        record_writer.masked_crc32c = original


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--only", choices=["figures", "png", "crc"], nargs="*", default=["figures", "png", "crc"]
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # the writer thread's share of a shared machine
    for name in args.only:
        {"figures": bench_figures, "png": bench_png, "crc": bench_crc}[name](args.repeats)


if __name__ == "__main__":
    main()
