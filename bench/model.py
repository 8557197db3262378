"""What the refining module costs: MR R-CNN against Mask R-CNN, same weights, same images, two scales.

    python bench/model.py                   # prints the tables and writes docs/benchmarks/model.md
    python bench/model.py --scales demo     # the demo's scale only (a quick check)
    python bench/model.py --scales variants # every SARA weighting's cost, for the study of them

``r50``: R50-FPN, torchvision's default heads. Inference: one 800x1333 image, 100 detections (score
threshold 0 so both models keep 100). Training: one SGD step (forward, backward, update) on two 800x1333
images with 7 instances each. Both models are randomly initialised from one seed (MR R-CNN loads the Mask
R-CNN's weights and copies its heads into the refining module), so the arithmetic is that of real weights.

``demo``: where users first meet us, ``mrrcnn demo``'s models and data: the small models of
``synthetic/maskrcnn_small_finetune`` and ``synthetic/mrrcnn_small`` fine-tuned from the demo's Mask R-CNN
(600 iterations on its 240 synthetic 160-pixel images, trained once into ``bench/.cache/model_demo``), a
training step on 4 of its images (its batch), inference on 8 (its evaluation batch). Trained weights
matter here: how many RoIs the refining stage finds foreground, hence its work, depends on them. Then a
profile of each model's training step, its top operators.

Next to each time: the arithmetic both models do (FLOPs of matmuls and convolutions, by
``torch.utils.flop_counter``), whose ratio is the floor the refining heads' added work sets on the time
ratio. CUDA rows, in float32 and under AMP, are added when a GPU is present (``--devices cuda`` for those
alone).
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch
import torchvision
from common import (
    around_baseline,
    header,
    machine,
    median_seconds_side_by_side,
    peak_extra_mib,
    speedup,
    track_allocations_exactly,
    write_report,
)
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from mrrcnn.config import load_config
from mrrcnn.data import CocoDetection, make_synthetic
from mrrcnn.engine.train import train
from mrrcnn.models import build_model, maskrcnn_resnet50_fpn, mrrcnn_resnet50_fpn

ROOT = Path(__file__).resolve().parents[1]
IMAGE = (800, 1333)
DEMO_CACHE = ROOT / "bench" / ".cache" / "model_demo"
# The demo's defaults (mrrcnn.engine.demo.run_demo): data, stage 1's length and its learning-rate step.
DEMO_DATA = {"num_train": 240, "num_val": 60, "seed": 0, "image_size": 160}
DEMO_ITERATIONS, DEMO_MILESTONE = 600, 480


def r50_models(device: str) -> dict:
    torch.manual_seed(0)
    base = maskrcnn_resnet50_fpn(num_classes=91, box_score_thresh=0.0)
    refining = mrrcnn_resnet50_fpn(num_classes=91, box_score_thresh=0.0)
    refining.load_state_dict(base.state_dict(), strict=False)
    refining.init_refining_from_base()
    return {"Mask R-CNN": base.to(device), "MR R-CNN": refining.to(device)}


def r50_batch(device: str, num_images: int, with_targets: bool):
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


def demo_base() -> tuple[Path, Path]:
    """The demo's data and its Mask R-CNN (``final.pth``), made once under :data:`DEMO_CACHE`."""
    data, base = DEMO_CACHE / "data", DEMO_CACHE / "maskrcnn" / "final.pth"
    if not base.is_file():
        splits = make_synthetic(data, **DEMO_DATA)
        config = load_config("synthetic/maskrcnn_small", demo_overrides(data))
        config["train"].update(
            output_dir=str(base.parent), iterations=DEMO_ITERATIONS, milestones=[DEMO_MILESTONE], seed=0
        )
        print(
            f"training the demo's Mask R-CNN once ({splits['train']['num_images']} images) -> {base}",
            file=sys.stderr,
        )
        train(config, progress=False)
    return data, base


def demo_overrides(data: Path) -> list[str]:
    return [
        f"data.train.images={data / 'train'}",
        f"data.train.annotations={data / 'annotations/train.json'}",
        f"data.val.images={data / 'val'}",
        f"data.val.annotations={data / 'annotations/val.json'}",
    ]


def demo_models(device: str) -> dict:
    data, base = demo_base()
    models = {}
    for name, config in (("Mask R-CNN", "maskrcnn_small_finetune"), ("MR R-CNN", "mrrcnn_small")):
        config = load_config(f"synthetic/{config}", [*demo_overrides(data), f"model.base_weights={base}"])
        torch.manual_seed(0)
        models[name] = build_model(**config["model"]).to(device)
    return models


def variant_models(device: str) -> dict:
    """MR R-CNN with each SARA weighting (and without SARA), fine-tuned as the demo's from its Mask R-CNN;
    ``own``, the paper's, first: the others are compared with it."""
    data, base = demo_base()
    models = {}
    for name, overrides in (
        ("own (MR R-CNN)", []),
        ("no SARA", ["model.shape_aware=false"]),
        *(
            (weighting, [f"model.sara_weighting={weighting}"])
            for weighting in ("others", "ownership", "iterative")
        ),
    ):
        config = load_config(
            "synthetic/mrrcnn_small", [*demo_overrides(data), f"model.base_weights={base}", *overrides]
        )
        torch.manual_seed(0)
        models[name] = build_model(**config["model"]).to(device)
    return models


def demo_batch(device: str, num_images: int, with_targets: bool):
    data, _ = demo_base()
    split = "train" if with_targets else "val"
    dataset = CocoDetection(data / split, data / "annotations" / f"{split}.json")
    samples = [dataset[i] for i in range(num_images)]
    images = [image.to(device) for image, _ in samples]
    if not with_targets:
        return images, None
    return images, [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in target.items()}
        for _, target in samples
    ]


# scale: (models, batch, (inference images, training images), title); the first model is the reference.
SCALES = {
    "r50": (r50_models, r50_batch, (1, 2), "R50-FPN, 800x1333 images"),
    "demo": (demo_models, demo_batch, (8, 4), "the demo: small models, 160x160 synthetic images"),
    "variants": (
        variant_models,
        demo_batch,
        (8, 4),
        "the demo's, every SARA weighting against own (MR R-CNN)",
    ),
}
# The variants' cost, as the SARA-weighting study reads it (bench/reproduction/beyond.py).
VARIANTS_COST = ROOT / "bench" / "results" / "beyond" / "cost.json"


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


def tasks(scale: str, device: str) -> dict:
    """The scale's tasks: ``name: (step function, (images, targets))``."""
    _, batch, (inference_images, training_images), _ = SCALES[scale]
    detections = ", 100 detections" if scale == "r50" else ""
    return {
        f"inference ({inference_images} image{'s' * (inference_images > 1)}{detections})": (
            inference,
            batch(device, inference_images, False),
        ),
        f"training step ({training_images} images)": (training_step, batch(device, training_images, True)),
    }


def measure(scale: str, device: str, precision: str, repeats: int) -> dict[tuple[str, str], tuple]:
    """Time and FLOPs of every task and model of one (scale, device, precision): ``(task, model) -> (its
    step function, median seconds, GFLOP, detections)``."""
    models = SCALES[scale][0](device)
    amp = precision == "amp"
    measured = {}
    for task, (step, (images, targets)) in tasks(scale, device).items():
        fns = step_fns(models, step, images, targets, amp)
        seconds = median_seconds_side_by_side(fns, device, repeats)
        for name, fn in fns.items():
            flops = gflops(fn)
            detections = (
                len(inference(models[name], images, targets)[0]["boxes"])
                if step is inference and scale == "r50"
                else None
            )
            measured[task, name] = (fn, seconds[name], flops, detections)
            print(
                f"{scale} {device} {precision} {task} {name}: {seconds[name]:.3f} s, {flops:.1f} GFLOP",
                file=sys.stderr,
            )
    return measured


def rows_with_memory(scale: str, device: str, precision: str, measured: dict) -> list[tuple]:
    """The table's rows for one (scale, device, precision) from :func:`measure`'s cells, each step's peak
    memory measured now; against the scale's first model, its reference."""
    memory = {key: peak_extra_mib(fn, device) for key, (fn, *_) in measured.items()}
    rows = []
    reference = next(iter(measured))[1]
    for (task, name), (_, seconds, flops, detections) in measured.items():
        _, base_seconds, base_flops, _ = measured[task, reference]
        base_memory = memory[task, reference]
        rows.append(
            (
                scale,
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


def measure_all(scales: list[str], devices: list[str], repeats: int) -> tuple[list[tuple], str]:
    """Every row of the table, and the demo's profile summary (empty without the CPU demo scale). Memory
    last, after every timing and the profile: glibc's 64 KiB mmap threshold, which makes the resident set
    follow every tensor (bench/ops.py), stays set for the process and costs page faults."""
    measured = {
        (scale, device, precision): measure(scale, device, precision, repeats)
        for scale in scales
        for device in devices
        # float32 everywhere; on CUDA also AMP, as `mrrcnn train` runs there
        for precision in (("fp32", "amp") if device == "cuda" else ("fp32",))
    }
    profile = profile_summary() if "demo" in scales and "cpu" in devices else ""
    if "cpu" in devices:
        track_allocations_exactly()
    return [row for key, cells in measured.items() for row in rows_with_memory(*key, cells)], profile


def profile_summary(top: int = 8) -> str:
    """A markdown table per model: the top operators (self CPU time) of the demo's training step."""
    models = demo_models("cpu")
    images, targets = demo_batch("cpu", SCALES["demo"][2][1], True)
    text, steps = "", 3
    for name, fn in step_fns(models, training_step, images, targets, False).items():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                fn()
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        text += f"\n{name}, {total / steps / 1e3:.0f} ms of operator time a step:\n\n| operator | calls a step | ms a step | share |\n|---|---:|---:|---:|\n"
        text += "".join(
            f"| `{e.key}` | {e.count / steps:.0f} | {e.self_cpu_time_total / steps / 1e3:.1f} | "
            f"{e.self_cpu_time_total / total:.0%} |\n"
            for e in events[:top]
        )
    return text


def _compared(before: dict, key: tuple[str, ...], seconds: float, baseline: str | None) -> str:
    """The baseline's cells of a row: its seconds and how much faster this run is (none without one)."""
    if baseline is None:
        return ""
    then = before.get(key)
    return f" {then[0]} | {speedup(float(then[0]), seconds)} |" if then else " - | - |"


def write_variants_cost(rows: list[tuple], argv: list[str] | None) -> None:
    """The ``variants`` rows on the CPU as :data:`VARIANTS_COST`: per weighting, seconds and ratio to own."""
    cost: dict = {"command": " ".join(["python bench/model.py", *(sys.argv[1:] if argv is None else argv)])}
    cost["machine"] = machine("cpu")
    for scale, device, task, name, seconds, ratio, *_ in rows:
        if scale == "variants" and device == "cpu fp32":
            key = "training_step" if task.startswith("training") else "inference"
            cost.setdefault(name, {})[key] = {"seconds": seconds, "vs_own": ratio}
    VARIANTS_COST.parent.mkdir(parents=True, exist_ok=True)
    VARIANTS_COST.write_text(json.dumps(cost, indent=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median reported)")
    parser.add_argument(
        "--out", type=Path, help="default docs/benchmarks/model.md (model_variants.md for --scales variants)"
    )
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    parser.add_argument("--devices", nargs="+", choices=available, default=available)
    parser.add_argument("--scales", nargs="+", choices=list(SCALES), default=["r50", "demo"])
    parser.add_argument(
        "--baseline", help="a git revision whose package this script also times, CPU rows, beside these"
    )
    args = parser.parse_args(argv)
    if args.out is None:
        name = "model_variants.md" if args.scales == ["variants"] else "model.md"
        args.out = ROOT / "docs" / "benchmarks" / name

    options = ["--scales", *args.scales, "--devices", "cpu", "--repeats", str(args.repeats)]
    (rows, profile), before = around_baseline(
        args.baseline, "model.py", options, 4, partial(measure_all, args.scales, args.devices, args.repeats)
    )
    if "variants" in args.scales and "cpu" in args.devices:
        write_variants_cost(rows, argv)
    then = f" `{args.baseline}` s | now vs `{args.baseline}` |" if args.baseline else ""
    table = (
        f"| scale | device, precision | task | model | median s |{then} time vs reference | GFLOP | FLOP ratio | "
        "peak extra MiB | memory vs reference | detections |\n"
        "|---|---|---|---|---:|" + "---:|" * (2 * bool(args.baseline)) + "---:|---:|---:|---:|---:|---:|\n"
    ) + "".join(
        f"| {sc} | {d} | {task} | {name} | {s:.3f} |{_compared(before, (sc, d, task, name), s, args.baseline)} "
        f"{r:.2f}x | {f:.1f} | {fr:.2f}x | {mem:.0f} | {mr:.2f}x | {'' if det is None else det} |\n"
        for sc, d, task, name, s, r, f, mem, mr, fr, det in rows
    )
    text = (
        "# What the refining module costs\n\n"
        f"{header('model.py', argv, args.repeats)} torchvision {torchvision.__version__}; one warm-up run first.\n\n"
        + "".join(f"- {d}: {machine(d)}\n" for d in args.devices)
        + "\nScales: "
        + "; ".join(f"`{name}`: {title}" for name, (*_, title) in SCALES.items() if name in args.scales)
        + " (the script's docstring says how each is made). MR R-CNN with the refining module of "
        "docs/method.md. The reference of a scale is its first model (Mask R-CNN; for `variants`, MR R-CNN "
        "with the paper's own-mask SARA); a scale's models are timed in turns (one run of each per round). "
        "`FLOP ratio` is a model's FLOPs over the reference's (matmuls and convolutions, forward and backward, by "
        "`torch.utils.flop_counter`): the floor the refining heads' added arithmetic would set on the time "
        "ratio if every FLOP took the same time. Peak extra memory: the peak above what was allocated before "
        "the call (CPU: resident set; CUDA: the caching allocator's peak). `amp`: under `torch.autocast` "
        "(float16) with a gradient scaler, as `mrrcnn train` runs on CUDA."
        + (
            f" `{args.baseline}` s: the same cell timed by this script on the package as of that revision (a "
            "git worktree), in the same run, once before this one's and once after: the mean of the two."
            if args.baseline
            else ""
        )
        + "\n\n"
        + table
    )
    if profile:
        text += (
            "\nWhere the demo's training step spends its time (CPU, `torch.profiler`, 3 steps):\n" + profile
        )
    print(text)
    write_report(args.out, text)


if __name__ == "__main__":
    main()
