"""Benchmark lit_explain's explanation engine against pytorch-grad-cam, captum, torchcam and the floor.

One run: the same model (resnet18, or with ``--model vit_small_patch16_224`` a timm ViT; random init,
eval), the same batch and the same targets for every implementation. Timings are the median of ``--repeats`` calls after ``--warmup`` calls, with the
implementations interleaved within each repeat so that background load spreads evenly over them.
"floor" is the least work the result needs, written inline with no safety at all:

- Grad-CAM floor: one forward with a hook on the layer + ``torch.autograd.grad`` of the summed target
  logits to the activation + the CAM arithmetic (weights, weighted sum, ReLU, upsample, min-max).
- Guided floor: one forward + one input-gradient backward (plain ReLU backward), plus, for Guided
  Grad-CAM, the layer gradient from the same graph and the CAM arithmetic and product.
- ViT (``--model vit_small_patch16_224``): Grad-CAM at the layer ``layer=None`` picks
  (``blocks.11.norm1``), its floor as above with the token reshape (drop the class token, fold onto
  the 14x14 grid); gradient rollout's floor is one forward (timm's default fused attention) + one
  ``torch.autograd.grad`` of the summed target logits to the input (no parameter gradients).

Peak memory is the extra memory of one call over what was in use before it: on CUDA from
``torch.cuda.max_memory_allocated``; on CPU from the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs) in a fresh subprocess per implementation, with glibc told to return large
blocks to the system at once (MALLOC_MMAP_THRESHOLD_) so that resident memory follows live memory.

Usage:
    python scripts/bench_explain.py --batch 32 --size 224 --repeats 5 --device cpu
    python scripts/bench_explain.py --model vit_small_patch16_224 --batch 16 --repeats 5 --no-memory
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18

from lit_explain.explain import attention_rollout, cam, guided_backprop, guided_gradcam

LAYER = "layer4"
VIT_LAYER = "blocks.11.norm1"


def _minmax(m: Tensor) -> Tensor:
    lo = m.amin(dim=(2, 3), keepdim=True)
    span = m.amax(dim=(2, 3), keepdim=True) - lo
    return torch.where(span > 0, (m - lo) / torch.where(span > 0, span, 1.0), 0.0)


def _cam_arithmetic(act: Tensor, grad: Tensor, size: tuple[int, int]) -> Tensor:
    weights = grad.mean(dim=(2, 3))
    raw = torch.einsum("bk,bkhw->bhw", weights, act).clamp_min(0)[:, None]
    return _minmax(F.interpolate(raw, size=size, mode="bilinear", align_corners=False))


def floor_gradcam(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    store: dict[str, Tensor] = {}
    handle = model.layer4.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), store["a"])
    with torch.no_grad():
        return _cam_arithmetic(store["a"], grad, x.shape[-2:])


def floor_guided_backprop(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)
    return grad


def floor_guided_gradcam(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    store: dict[str, Tensor] = {}
    handle = model.layer4.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    g_act, g_in = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), [store["a"], x])
    with torch.no_grad():
        return g_in * _cam_arithmetic(store["a"], g_act, x.shape[-2:])


def _tokens_to_grid(tokens: Tensor, prefix: int) -> Tensor:
    b, n, c = tokens.shape
    side = math.isqrt(n - prefix)
    return tokens[:, prefix:].reshape(b, side, side, c).permute(0, 3, 1, 2)


def floor_vit_gradcam(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    store: dict[str, Tensor] = {}
    layer = model.blocks[-1].norm1
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), store["a"])
    with torch.no_grad():
        prefix = model.num_prefix_tokens
        act, grad = _tokens_to_grid(store["a"], prefix), _tokens_to_grid(grad, prefix)
        return _cam_arithmetic(act, grad, x.shape[-2:])


def floor_forward_backward(model: nn.Module, x: Tensor, t: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)
    return grad


def build_vit_impls(model: nn.Module, x: Tensor, t: Tensor) -> dict[str, dict[str, Callable[[], object]]]:
    """{group: {implementation: zero-argument call}} for a timm ViT."""
    from pytorch_grad_cam import GradCAM as PgcGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    prefix = model.num_prefix_tokens
    targets = t.tolist()

    def pgc_gradcam():
        with PgcGradCAM(
            model=model,
            target_layers=[model.blocks[-1].norm1],
            reshape_transform=lambda a: _tokens_to_grid(a, prefix),
        ) as extractor:
            return extractor(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])

    return {
        "Grad-CAM": {
            "floor": lambda: floor_vit_gradcam(model, x, t),
            "lit_explain": lambda: cam(model, x, targets=t),
            "pytorch-grad-cam": pgc_gradcam,
        },
        "Gradient rollout": {
            "floor": lambda: floor_forward_backward(model, x, t),
            "lit_explain": lambda: attention_rollout(model, x, targets=t, method="gradient_rollout"),
        },
        "Rollout": {
            "floor": lambda: floor_forward_backward(model, x, t),
            "lit_explain": lambda: attention_rollout(model, x, targets=t, method="rollout"),
        },
    }


def build_impls(
    model: nn.Module, x: Tensor, t: Tensor, loops: bool
) -> dict[str, dict[str, Callable[[], object]]]:
    """{group: {implementation: zero-argument call}}; each call produces the group's full result."""
    from captum.attr import GuidedBackprop, GuidedGradCam, LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM as PgcGradCAM
    from pytorch_grad_cam import GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TorchcamGradCAM

    size = tuple(x.shape[-2:])
    targets = t.tolist()

    def pgc_gradcam():
        with PgcGradCAM(model=model, target_layers=[model.layer4]) as extractor:
            return extractor(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in targets])

    def captum_gradcam():
        attr = LayerGradCam(model, model.layer4).attribute(x, target=t, relu_attributions=True)
        return _minmax(LayerAttribution.interpolate(attr, size, interpolate_mode="bilinear"))

    def torchcam_gradcam():
        with TorchcamGradCAM(model, LAYER, input_shape=tuple(x.shape[1:])) as extractor:
            scores = model(x)
            (maps,) = extractor(class_idx=targets, scores=scores)
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)

    # pytorch-grad-cam's guided backprop swaps the ReLU modules for its own and back for fresh ones,
    # and explains one image per call: give it a copy and loop.
    pgc_model = copy.deepcopy(model)

    def pgc_guided_gradcam():
        maps = torch.as_tensor(pgc_gradcam())
        guided = GuidedBackpropReLUModel(model=pgc_model, device=x.device)
        grads = [torch.as_tensor(guided(x[i : i + 1], target_category=c)) for i, c in enumerate(targets)]
        return torch.stack(grads).permute(0, 3, 1, 2) * maps[:, None]

    def captum_guided_gradcam():
        return GuidedGradCam(model, model.layer4).attribute(x, target=t, interpolate_mode="bilinear")

    def captum_guided_backprop():
        return GuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=t)

    groups: dict[str, dict[str, Callable[[], object]]] = {
        "Grad-CAM": {
            "floor": lambda: floor_gradcam(model, x, t),
            "lit_explain": lambda: cam(model, x, layer=LAYER, targets=t),
            "pytorch-grad-cam": pgc_gradcam,
            "captum": captum_gradcam,
            "torchcam": torchcam_gradcam,
        },
        "Guided Grad-CAM": {
            "floor": lambda: floor_guided_gradcam(model, x, t),
            "lit_explain": lambda: guided_gradcam(model, x, layer=LAYER, targets=t),
            "captum": captum_guided_gradcam,
        },
        "Guided Backprop": {
            "floor": lambda: floor_guided_backprop(model, x, t),
            "lit_explain": lambda: guided_backprop(model, x, targets=t),
            "captum": captum_guided_backprop,
        },
    }
    if loops:
        groups["Guided Grad-CAM"]["pytorch-grad-cam (1 image/call, looped)"] = pgc_guided_gradcam
    return groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_all(groups, device: torch.device, warmup: int, repeats: int) -> dict[tuple[str, str], list[float]]:
    calls = [(g, name, fn) for g, impls in groups.items() for name, fn in impls.items()]
    for _ in range(warmup):
        for _, _, fn in calls:
            fn()
    times: dict[tuple[str, str], list[float]] = {(g, n): [] for g, n, _ in calls}
    for _ in range(repeats):
        for g, name, fn in calls:  # interleaved: background load hits every implementation alike
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[(g, name)].append(time.perf_counter() - start)
    return times


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def measure_memory(fn: Callable[[], object], device: torch.device) -> float:
    """Extra peak bytes of one call (after a warm-up call) over the memory in use before it."""
    fn()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - before)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    fn()
    return float(_status_kib("VmHWM") - before) * 1024


def memory_in_subprocess(args: argparse.Namespace, group: str, name: str) -> float | None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, *_passthrough(args), "--memory-of", f"{group}::{name}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)["bytes"]
    print(f"memory measurement failed for {group} / {name}:\n{out.stderr[-2000:]}", file=sys.stderr)
    return None


def _passthrough(args: argparse.Namespace) -> list[str]:
    out = [
        "--batch",
        str(args.batch),
        "--size",
        str(args.size),
        "--device",
        args.device,
        "--model",
        args.model,
    ]
    out += ["--threads", str(args.threads)]
    return out + ([] if args.loops else ["--no-loops"])


def setup(args: argparse.Namespace) -> tuple[nn.Module, Tensor, Tensor, torch.device]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.model == "resnet18":
        model = resnet18().eval().to(device)
    else:
        import timm

        model = timm.create_model(args.model, pretrained=False, img_size=args.size).eval().to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)).to(
        device
    )
    with torch.no_grad():
        t = model(x).argmax(1)
    return model, x, t, device


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="resnet18", help="resnet18, or a timm ViT such as vit_small_patch16_224"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-loops", dest="loops", action="store_false", help="skip per-image peer loops")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip peak-memory runs")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()[0]

    model, x, t, device = setup(args)
    groups = (
        build_impls(model, x, t, args.loops) if args.model == "resnet18" else build_vit_impls(model, x, t)
    )
    if args.memory_of:
        group, name = args.memory_of.split("::", 1)
        print(json.dumps({"bytes": measure_memory(groups[group][name], device)}))
        return

    times = time_all(groups, device, args.warmup, args.repeats)
    for (group, name), values in times.items():  # the spread, for judging a noisy machine
        print(f"{group} / {name}: " + " ".join(f"{v * 1e3:.0f}" for v in values), file=sys.stderr)
    memory: dict[tuple[str, str], float | None] = {}
    if args.memory:
        for group, impls in groups.items():
            for name in impls:
                memory[(group, name)] = memory_in_subprocess(args, group, name)

    vit = args.model != "resnet18"
    channels, stride = (model.embed_dim, model.patch_embed.patch_size[0]) if vit else (512, 32)
    act_bytes = 4 * args.batch * channels * (-(-args.size // stride)) ** 2
    print(f"command: python scripts/bench_explain.py {' '.join(sys.argv[1:])}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.threads} threads, device {device}, "
        f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(
        f"{args.model} random init, eval, batch {args.batch}, {args.size}x{args.size}, "
        f"layer {VIT_LAYER if vit else LAYER}; "
    )
    print(
        f"median of {args.repeats} after {args.warmup} warm-up; layer activation + gradient = "
        f"{2 * act_bytes / 2**20:.1f} MiB\n"
    )
    print(
        "| task | implementation | ms / batch (median) | min ms | images / s | x floor | extra peak memory (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for group, impls in groups.items():
        floor = statistics.median(times[(group, "floor")])
        for name in impls:
            med = statistics.median(times[(group, name)])
            mem = memory.get((group, name))
            mem_txt = "n/a" if mem is None else f"{mem / 2**20:.1f}"
            print(
                f"| {group} | {name} | {med * 1e3:.0f} | {min(times[(group, name)]) * 1e3:.0f} | "
                f"{args.batch / med:.1f} | {med / floor:.2f} | {mem_txt} |"
            )


if __name__ == "__main__":
    main()
