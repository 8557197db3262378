"""What the refining module costs: MR R-CNN against Mask R-CNN, R50-FPN, same weights, same images.

    python bench/model.py           # prints the table and writes docs/benchmarks/model.md

Inference: one 800x1333 image, 100 detections (score threshold 0 so both models keep 100). Training:
one SGD step (forward, backward, update) on two 800x1333 images with 7 instances each. Both models are
randomly initialised from one seed (MR R-CNN loads the Mask R-CNN's weights and copies its heads into the
refining module), so the arithmetic is that of real weights. Next to each time: the arithmetic both
models do (FLOPs of matmuls and convolutions, by ``torch.utils.flop_counter``), whose ratio is the floor
the refining heads' added work sets on the time ratio. CUDA rows, in float32 and under AMP, are added when
a GPU is present (``--devices cuda`` for those alone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision
from common import (
    header,
    machine,
    median_seconds_side_by_side,
    peak_extra_mib,
    track_allocations_exactly,
    write_report,
)
from torch.utils.flop_counter import FlopCounterMode

from mrrcnn.models import maskrcnn_resnet50_fpn, mrrcnn_resnet50_fpn

IMAGE = (800, 1333)


def make_models(device: str):
    torch.manual_seed(0)
    base = maskrcnn_resnet50_fpn(num_classes=91, box_score_thresh=0.0)
    refining = mrrcnn_resnet50_fpn(num_classes=91, box_score_thresh=0.0)
    refining.load_state_dict(base.state_dict(), strict=False)
    refining.init_refining_from_base()
    return {"Mask R-CNN": base.to(device), "MR R-CNN": refining.to(device)}


def make_batch(device: str, num_images: int, with_targets: bool):
    g = torch.Generator().manual_seed(1)
    height, width = IMAGE
    images = [torch.rand(3, height, width, generator=g).to(device) for _ in range(num_images)]
    if not with_targets:
        return images, None
    targets = []
    for _ in range(num_images):
        xy = torch.rand(7, 2, generator=g) * torch.tensor([width * 0.75, height * 0.75])
        boxes = torch.cat([xy, xy + torch.rand(7, 2, generator=g) * 250 + 30], dim=1)
        masks = torch.zeros(7, height, width, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
            mask[y1:y2, x1:x2] = 1
        labels = torch.randint(1, 91, (7,), generator=g)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


def inference(model, images, targets, amp=False):
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", enabled=amp):
        return model(images)


def training_step(model, images, targets, optimizer, scaler, amp=False):
    """One step as ``mrrcnn train`` takes it: autocast and a gradient scaler under AMP."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", enabled=amp):
        losses = model(images, targets)
    scaler.scale(sum(losses.values())).backward()
    scaler.step(optimizer)
    scaler.update()


def gflops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def step_fns(models: dict, step, images, targets, amp: bool) -> dict:
    """For each model, a no-argument call of ``step`` on the batch (with its own optimizer when training)."""
    fns = {}
    for name, model in models.items():
        extra = ()
        if step is training_step:
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9, weight_decay=1e-4)
            extra = (optimizer, torch.amp.GradScaler("cuda", enabled=amp))

        def fn(step=step, model=model, extra=extra):
            torch.manual_seed(0)  # same RoI sampling in both models
            return step(model, images, targets, *extra, amp=amp)

        fns[name] = fn
    return fns


def measure(device: str, precision: str, repeats: int) -> list[tuple]:
    """The table's rows for one (device, precision): time, FLOPs and peak memory per task and model."""
    models = make_models(device)
    amp = precision == "amp"
    tasks = {
        "inference (1 image, 100 detections)": (inference, make_batch(device, 1, False)),
        "training step (2 images)": (training_step, make_batch(device, 2, True)),
    }
    measured = {}
    for task, (step, (images, targets)) in tasks.items():
        fns = step_fns(models, step, images, targets, amp)
        seconds = median_seconds_side_by_side(fns, device, repeats)
        for name, fn in fns.items():
            flops = gflops(fn)
            detections = (
                len(inference(models[name], images, targets)[0]["boxes"]) if step is inference else None
            )
            measured[task, name] = (fn, seconds[name], flops, detections)
            print(
                f"{device} {precision} {task} {name}: {seconds[name]:.2f} s, {flops:.0f} GFLOP",
                file=sys.stderr,
            )
    # Memory last: glibc's 64 KiB mmap threshold makes the resident set follow every tensor (bench/ops.py).
    if device == "cpu":
        track_allocations_exactly()
    memory = {key: peak_extra_mib(fn, device) for key, (fn, *_) in measured.items()}
    rows = []
    for (task, name), (_, seconds, flops, detections) in measured.items():
        _, base_seconds, base_flops, _ = measured[task, "Mask R-CNN"]
        base_memory = memory[task, "Mask R-CNN"]
        rows.append(
            (
                f"{device} {precision}",
                task,
                name,
                seconds,
                seconds / base_seconds,
                flops,
                memory[task, name],
                memory[task, name] / base_memory,
                flops / base_flops,
                detections,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median reported)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/benchmarks/model.md"
    )
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    parser.add_argument("--devices", nargs="+", choices=available, default=available)
    args = parser.parse_args(argv)

    devices = args.devices
    # (device, precision): float32 everywhere; on CUDA also AMP, as `mrrcnn train` runs there.
    rows = [
        row
        for device in devices
        for precision in (("fp32", "amp") if device == "cuda" else ("fp32",))
        for row in measure(device, precision, args.repeats)
    ]

    table = (
        "| device, precision | task | model | median s | time vs Mask R-CNN | GFLOP | FLOP ratio | "
        "peak extra MiB | memory vs Mask R-CNN | detections |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    ) + "".join(
        f"| {d} | {task} | {name} | {s:.2f} | {r:.2f}x | {f:.0f} | {fr:.2f}x | {mem:.0f} | {mr:.2f}x | "
        f"{'' if det is None else det} |\n"
        for d, task, name, s, r, f, mem, mr, fr, det in rows
    )
    text = (
        "# What the refining module costs\n\n"
        f"{header('model.py', argv, args.repeats)} torchvision {torchvision.__version__}; one warm-up run first.\n\n"
        + "".join(f"- {d}: {machine(d)}\n" for d in devices)
        + "\nR50-FPN, 800x1333 images, torchvision's default heads; MR R-CNN with the refining module of "
        "docs/method.md. The two models are timed in turns (one run of each per round). `FLOP ratio` is MR "
        "R-CNN's FLOPs over Mask R-CNN's (matmuls and convolutions, forward and backward, by "
        "`torch.utils.flop_counter`): the floor the refining heads' added arithmetic would set on the time "
        "ratio if every FLOP took the same time. The time ratio can fall below it: most of the added work is "
        "the refining mask head's 3x3 convolutions over 14x14 RoI features, which run at a higher FLOP rate "
        "than the backbone's convolutions over large maps. Peak extra memory: the peak above what was "
        "allocated before the call (CPU: resident set; CUDA: the caching allocator's peak). `amp`: under "
        "`torch.autocast` (float16) with a gradient scaler, as `mrrcnn train` runs on CUDA.\n\n" + table
    )
    print(table)
    write_report(args.out, text)


if __name__ == "__main__":
    main()
