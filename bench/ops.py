"""Shape-aware RoIAlign against torchvision's RoIAlign: time and peak memory, forward and forward+backward.

    python bench/ops.py            # prints the table and writes docs/benchmarks/ops.md
    python bench/ops.py --quick    # a tiny case on every device, a smoke test; writes nothing

Sizes: "training" is two images' 512 sampled RoIs each on a stride-4 100x168 map (256 channels, 7x7,
sampling 2), "inference" is 100 detections on one stride-4 200x336 map, "large" (CUDA only by default) is
4096 RoIs on eight 200x336 maps with adaptive sampling. Each size runs with the features in NCHW and
already channels-last (as in our model, which converts the FPN maps once per image batch). Masks are 28x28
probabilities that require grad in the forward+backward rows. CUDA rows, added when a GPU is present, time
with CUDA events (warm-up first, median of ``--cuda-repeats``) and add the ``embedding_bag`` path, which
CUDA uses only as a fallback, for reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path

import torch
import torchvision
from common import (
    around_baseline,
    header,
    machine,
    median_seconds,
    peak_extra_mib,
    speedup,
    track_allocations_exactly,
    write_report,
)

from mrrcnn.ops import roi_align, shape_aware_roi_align

SIZES = {
    # name: (boxes, batch, channels, map height, map width, spatial scale, sampling ratio)
    "training": (1024, 2, 256, 100, 168, 0.25, 2),
    "inference": (100, 1, 256, 200, 336, 0.25, 2),
    "large": (4096, 8, 256, 200, 336, 0.25, -1),
    "smoke": (16, 1, 32, 25, 42, 0.25, 2),
}
DEFAULT_SIZES = {"cpu": ["training", "inference"], "cuda": ["training", "inference", "large"]}
IMPLEMENTATIONS = {
    "cpu": ["torchvision roi_align", "ours plain", "ours shape-aware"],
    "cuda": ["torchvision roi_align", "ours plain", "ours shape-aware", "embedding_bag shape-aware"],
}
OUTPUT_SIZE = (7, 7)


def make_case(size: str, layout: str, device: str, seed: int = 0):
    """Features ``[B, C, H, W]`` in ``layout``, rois ``[K, 5]``, masks ``[K, 28, 28]``, an output gradient
    ``[K, C, 7, 7]``, the spatial scale and the sampling ratio of ``size``."""
    num_boxes, batch, channels, height, width, scale, sampling_ratio = SIZES[size]
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=g)
    if layout == "channels_last":
        features = features.contiguous(memory_format=torch.channels_last)
    image = torch.tensor([width, height]) / scale
    # Log-uniform box sides from 16 to 320 image pixels, as detections and sampled RoIs are.
    wh = torch.exp(
        torch.empty(num_boxes, 2).uniform_(
            torch.log(torch.tensor(16.0)), torch.log(torch.tensor(320.0)), generator=g
        )
    )
    xy = torch.rand(num_boxes, 2, generator=g) * (image - wh).clamp(min=1)
    index = torch.randint(0, batch, (num_boxes, 1), generator=g).float()
    rois = torch.cat([index, xy, xy + wh], dim=1)
    masks = torch.rand(num_boxes, 28, 28, generator=g)
    grad = torch.randn(num_boxes, channels, *OUTPUT_SIZE, generator=g)
    return features.to(device), rois.to(device), masks.to(device), grad.to(device), scale, sampling_ratio


def run_once(impl: str, mode: str, features, rois, masks, grad, scale, sampling_ratio):
    backward = mode == "forward+backward"
    f = features.detach().requires_grad_(backward)
    m = masks.detach().requires_grad_(backward)
    if impl == "torchvision roi_align":
        out = torchvision.ops.roi_align(f, rois, OUTPUT_SIZE, scale, sampling_ratio)
    elif impl == "ours plain":
        out = roi_align(f, rois, OUTPUT_SIZE, scale, sampling_ratio)
    elif impl == "ours shape-aware":
        out = shape_aware_roi_align(f, rois, m, OUTPUT_SIZE, scale, sampling_ratio)
    else:
        return gather_path(f, rois, m, grad if backward else None, scale, sampling_ratio)
    if backward:
        out.backward(grad)
    return out


def gather_path(f, rois, m, grad, scale, sampling_ratio):
    """The operator's gather kernels called directly (CUDA's fallback): forward and, given ``grad``, both
    gradients, as autograd would call them."""
    # Imported here: a --baseline run of this script may use a package from before these modules.
    from mrrcnn.ops import gather
    from mrrcnn.ops.geometry import geometry_dtype, roi_geometry

    geometry = roi_geometry(
        rois, f.shape[0], OUTPUT_SIZE, scale, sampling_ratio, False, geometry_dtype(f.dtype)
    )
    out = gather.forward(f, geometry, m, OUTPUT_SIZE, sampling_ratio)
    if grad is not None:
        gather.backward_input(grad, geometry, m, tuple(f.shape), sampling_ratio)
        gather.backward_masks(grad, f, geometry, m, sampling_ratio)
    return out


def cuda_median_seconds(fn, repeats: int, warmup: int = 3) -> float:
    """Median GPU time of ``fn()`` between two CUDA events, after ``warmup`` runs (compilation included)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def device_label(device: str) -> str:
    return f"cuda ({torch.cuda.get_device_name()})" if device == "cuda" else device


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed CPU runs per cell (median reported)")
    parser.add_argument("--cuda-repeats", type=int, default=20, help="timed CUDA runs per cell (median)")
    parser.add_argument(
        "--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda if present"
    )
    parser.add_argument(
        "--sizes", nargs="+", choices=list(SIZES), help="default: training and inference (+ large on CUDA)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: the tiny 'smoke' size, 2 runs a cell, no report"
    )
    parser.add_argument(
        "--out", type=Path, help="report path (default docs/benchmarks/ops.md; none with --quick)"
    )
    parser.add_argument(
        "--baseline", help="a git revision whose package this script also times, CPU rows, beside these"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or ["smoke"]
        args.repeats = args.cuda_repeats = 2
    elif args.out is None:
        args.out = Path(__file__).resolve().parents[1] / "docs/benchmarks/ops.md"
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices cuda: no GPU here")
    return args


def measure(cells: list[tuple[str, ...]], args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """The cases (inputs), median seconds and peak extra MiB of every cell."""
    cases = {}
    seconds, memory = {}, {}
    for cell in cells:
        device, size, layout, mode, impl = cell
        if (device, size, layout) not in cases:
            cases[device, size, layout] = make_case(size, layout, device)
        fn = partial(run_once, impl, mode, *cases[device, size, layout])
        if device == "cuda":
            seconds[cell] = cuda_median_seconds(fn, args.cuda_repeats)
        else:
            seconds[cell] = median_seconds(fn, device, args.repeats)
        print(*cell, f"{seconds[cell] * 1e3:.2f} ms", file=sys.stderr)
    track_allocations_exactly()
    for cell in cells:
        device, size, layout, mode, impl = cell
        memory[cell] = peak_extra_mib(partial(run_once, impl, mode, *cases[device, size, layout]), device)
    return cases, seconds, memory


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cells = [
        (device, size, layout, mode, impl)
        for device in args.devices
        for size in args.sizes or DEFAULT_SIZES[device]
        for layout in ("NCHW", "channels_last")
        for mode in ("forward", "forward+backward")
        for impl in IMPLEMENTATIONS[device]
    ]
    options = [
        "--devices",
        "cpu",
        "--sizes",
        *(args.sizes or DEFAULT_SIZES["cpu"]),
        "--repeats",
        str(args.repeats),
    ]
    (cases, seconds, memory), before = around_baseline(
        args.baseline, "ops.py", options, 5, partial(measure, cells, args)
    )
    columns = (
        "| device | size | features | pass | implementation | median ms | vs torchvision | output GB/s | "
        "peak extra MiB | output MiB |\n|---|---|---|---|---|---:|---:|---:|---:|---:|\n"
    )
    if args.baseline:
        columns = columns.replace(
            " peak extra MiB |", f" `{args.baseline}` ms | now vs `{args.baseline}` | peak extra MiB |"
        )
        columns = columns.replace("|---:|---:|---:|---:|---:|\n", "|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = []
    for cell in cells:
        device, size, layout, mode, impl = cell
        baseline = seconds[device, size, "NCHW", mode, "torchvision roi_align"]
        output_bytes = cases[device, size, layout][3].numel() * 4
        then = before.get((device_label(device), size, layout, mode, impl))
        compared = (
            ()
            if not args.baseline
            else ((then[0], speedup(float(then[0]), seconds[cell] * 1e3)) if then else ("-", "-"))
        )
        values = (
            f"{seconds[cell] * 1e3:.2f}",
            f"{seconds[cell] / baseline:.2f}x",
            f"{output_bytes / seconds[cell] / 1e9:.1f}",
            *compared,
            f"{memory[cell]:.0f}",
            f"{output_bytes / 2**20:.1f}",
        )
        rows.append(
            f"| {device_label(device)} | {size} | {layout} | {mode} | {impl} | {' | '.join(values)} |\n"
        )
    table = columns + "".join(rows)
    sizes = "\n".join(
        f"- {name}: {k} boxes, batch {b}, {c} channels, {h}x{w} map, spatial scale {sc}, 7x7 bins, "
        f"sampling {sr if sr > 0 else 'adaptive (ceil(roi / bins))'}"
        for name, (k, b, c, h, w, sc, sr) in SIZES.items()
        if name in {size for _, size, *_ in cells}
    )
    machines = "\n".join(f"- {d}: {machine(d)}" for d in args.devices)
    text = (
        "# Shape-aware RoIAlign: speed and memory\n\n"
        f"{header('ops.py', argv, args.repeats)} torchvision {torchvision.__version__}; one warm-up run "
        f"first. CUDA rows: median of {args.cuda_repeats} runs timed with CUDA events after 3 warm-up runs."
        f"\n\nMachines:\n{machines}\n\nSizes:\n{sizes}\n\n"
        "Peak extra memory is the peak above what was allocated before the call, output and gradients "
        "included (CPU: the process's peak resident set, reset before each measurement; CUDA: the caching "
        "allocator's peak). `vs torchvision` divides by torchvision's time on NCHW features (its native "
        "layout; it copies channels-last input to NCHW first) for the same device, size and pass. "
        "`output GB/s` is the float32 output's size over the time: the rate at which the pass produces its "
        "result, against the memory bandwidth of the device (reading the features comes on top). On CUDA, "
        "`ours` runs the Triton kernels (from NCHW features, after a copy to channels-last that the time "
        "includes) and `embedding_bag shape-aware` the fallback path."
        + (
            f" `{args.baseline}` ms: the same cell timed by this script on the package as of that revision "
            "(a git worktree), in the same run, once before this one's and once after: the mean of the two."
            if args.baseline
            else ""
        )
        + "\n\n"
        + table
    )
    print(table)
    if args.out is not None:
        write_report(args.out, text)


if __name__ == "__main__":
    main()
