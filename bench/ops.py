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
import ctypes
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
import torchvision

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


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn, device: str) -> float:
    """Peak memory above what was allocated before ``fn()``, its result included (MiB)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    # glibc hands freed memory back to the system, so that reusing it shows in the resident set again;
    # writing 5 to clear_refs resets the process's peak resident set (VmHWM) to the current one.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def median_seconds(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {torch.get_num_threads()} threads"
    if device == "cuda":
        text = f"{torch.cuda.get_device_name()} (host: {text})"
    return text


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
    load = os.getloadavg()
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
    # Memory after timing: a 64 KiB mmap threshold makes glibc map (and unmap) every tensor on its own, so
    # the resident set follows allocations exactly, at a cost in page faults that must not reach the timings.
    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    for cell in cells:
        device, size, layout, mode, impl = cell
        memory[cell] = peak_extra_mib(partial(run_once, impl, mode, *cases[device, size, layout]), device)
    rows = []
    for cell in cells:
        device, size, layout, mode, impl = cell
        baseline = seconds[device, size, "NCHW", mode, "torchvision roi_align"]
        output_mib = cases[device, size, layout][3].numel() * 4 / 2**20
        rows.append((*cell, seconds[cell], seconds[cell] / baseline, memory[cell], output_mib))

    header = (
        "| device | size | features | pass | implementation | median ms | vs torchvision | "
        "peak extra MiB | output MiB |\n|---|---|---|---|---|---:|---:|---:|---:|\n"
    )
    table = header + "".join(
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
        f"Made by `{' '.join(['python bench/ops.py', *(sys.argv[1:] if argv is None else argv)])}` "
        f"on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}; median of {args.repeats} runs after one warm-up; load average "
        f"at the start {load[0]:.2f} (1 min).\n\n"
        f"Machines:\n{machines}\n\nSizes:\n{sizes}\n\n"
        "Peak extra memory is the peak above what was allocated before the call, output and gradients "
        "included (CPU: the process's peak resident set, reset before each measurement; CUDA: the caching "
        "allocator's peak). `vs torchvision` divides by torchvision's time on NCHW features (its native layout; "
        "it copies channels-last input to NCHW first) for the same device, size and pass.\n\n" + table
    )
    if not torch.cuda.is_available():
        text += "\nNo GPU on this machine: no CUDA rows.\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
