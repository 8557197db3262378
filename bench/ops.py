"""Shape-aware RoIAlign against torchvision's RoIAlign: time and peak memory, forward and forward+backward.

    python bench/ops.py            # prints the table and writes docs/benchmarks/ops.md

Sizes: "training" is two images' 512 sampled RoIs each on a stride-4 100x168 map (256 channels, 7x7,
sampling 2), "inference" is 100 detections on one stride-4 200x336 map. Each size runs with the features
in NCHW (the copy to channels-last is part of our time) and already channels-last (as in our model, which
converts the FPN maps once per image). Masks are 28x28 probabilities that require grad in the
forward+backward rows. CUDA rows are added when a GPU is present.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch
import torchvision
from common import header, machine, median_seconds, peak_extra_mib, track_allocations_exactly, write_report

from mrrcnn.ops import roi_align, shape_aware_roi_align

SIZES = {
    # name: (boxes, batch, channels, map height, map width, spatial scale)
    "training": (1024, 2, 256, 100, 168, 0.25),
    "inference": (100, 1, 256, 200, 336, 0.25),
}


def make_case(size: str, layout: str, device: str, seed: int = 0):
    num_boxes, batch, channels, height, width, scale = SIZES[size]
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
    grad = torch.randn(num_boxes, channels, 7, 7, generator=g)
    return features.to(device), rois.to(device), masks.to(device), grad.to(device), scale


def run_once(impl: str, mode: str, features, rois, masks, grad, scale):
    backward = mode == "forward+backward"
    f = features.detach().requires_grad_(backward)
    m = masks.detach().requires_grad_(backward)
    if impl == "torchvision roi_align":
        out = torchvision.ops.roi_align(f, rois, (7, 7), scale, 2)
    elif impl == "ours plain":
        out = roi_align(f, rois, (7, 7), scale, 2)
    else:
        out = shape_aware_roi_align(f, rois, m, (7, 7), scale, 2)
    if backward:
        out.backward(grad)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per cell (median reported)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/benchmarks/ops.md"
    )
    args = parser.parse_args(argv)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    impls = ["torchvision roi_align", "ours plain", "ours shape-aware"]
    cells = [
        (device, size, layout, mode, impl)
        for device in devices
        for size in SIZES
        for layout in ("NCHW", "channels_last")
        for mode in ("forward", "forward+backward")
        for impl in impls
    ]
    cases = {}
    seconds, memory = {}, {}
    for cell in cells:
        device, size, layout, mode, impl = cell
        if (device, size, layout) not in cases:
            cases[device, size, layout] = make_case(size, layout, device)
        seconds[cell] = median_seconds(
            partial(run_once, impl, mode, *cases[device, size, layout]), device, args.repeats
        )
        print(*cell, f"{seconds[cell] * 1e3:.1f} ms", file=sys.stderr)
    track_allocations_exactly()
    for cell in cells:
        device, size, layout, mode, impl = cell
        memory[cell] = peak_extra_mib(partial(run_once, impl, mode, *cases[device, size, layout]), device)
    rows = []
    for cell in cells:
        device, size, layout, mode, impl = cell
        baseline = seconds[device, size, "NCHW", mode, "torchvision roi_align"]
        output_mib = cases[device, size, layout][3].numel() * 4 / 2**20
        rows.append((*cell, seconds[cell], seconds[cell] / baseline, memory[cell], output_mib))

    columns = (
        "| device | size | features | pass | implementation | median ms | vs torchvision | "
        "peak extra MiB | output MiB |\n|---|---|---|---|---|---:|---:|---:|---:|\n"
    )
    table = columns + "".join(
        f"| {d} | {s} | {lay} | {m} | {i} | {t * 1e3:.1f} | {r:.2f}x | {mem:.0f} | {out:.1f} |\n"
        for d, s, lay, m, i, t, r, mem, out in rows
    )
    sizes = "\n".join(
        f"- {name}: {k} boxes, batch {b}, {c} channels, {h}x{w} map, spatial scale {sc}, 7x7 bins, sampling 2"
        for name, (k, b, c, h, w, sc) in SIZES.items()
    )
    machines = "\n".join(f"- {d}: {machine(d)}" for d in devices)
    text = (
        "# Shape-aware RoIAlign: speed and memory\n\n"
        f"{header('ops.py', argv, args.repeats)} torchvision {torchvision.__version__}; one warm-up run first.\n\n"
        f"Machines:\n{machines}\n\nSizes:\n{sizes}\n\n"
        "Peak extra memory is the peak above what was allocated before the call, output and gradients "
        "included (CPU: the process's peak resident set, reset before each measurement; CUDA: the caching "
        "allocator's peak). `vs torchvision` divides by torchvision's time on NCHW features (its native layout; "
        "it copies channels-last input to NCHW first) for the same device, size and pass.\n\n" + table
    )
    print(table)
    write_report(args.out, text)


if __name__ == "__main__":
    main()
