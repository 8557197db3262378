"""PyTorch 2 for the models: graph breaks under torch.compile, and compiled against eager time.

    python bench/compile.py          # prints the tables and writes docs/benchmarks/compile.md

Graph breaks: ``torch._dynamo.explain`` of one training step and one inference of a 128-pixel image (two
instances), for torchvision's own Mask R-CNN (the small model's backbone and heads with torchvision's
``MultiScaleRoIAlign``), our Mask R-CNN control (``maskrcnn_small``: our RoI pooling) and MR R-CNN
(``mrrcnn_small``), each under torch.compile's defaults and under the setting ``mrrcnn export`` traces
with: data-dependent output shapes and scalars captured, and torchvision's data-dependent pieces in
traceable form (``mrrcnn.models.traceable``). Timing, at the demo's scale (its models, from the demo's Mask
R-CNN cached by ``bench/model.py``, and its batch of 4): the training step eager and under
``torch.compile`` (inductor, defaults), with the time its first steps take to compile, and the inference
of one image compiled as one graph. Export agreement and latency per format: ``bench/export.py``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import time
from pathlib import Path

import torch
import torchvision
from common import header, machine, write_report
from model import demo_batch, demo_models, training_step
from torchvision.models.detection import MaskRCNN
from torchvision.ops import MultiScaleRoIAlign

from mrrcnn.models import maskrcnn_small, mrrcnn_small
from mrrcnn.models.traceable import traceable_detection

SMALL = {"num_classes": 4, "min_size": 128, "max_size": 128}
SETTINGS = ("torch.compile defaults", "shapes captured + traceable torchvision")


def torchvision_mask_rcnn() -> MaskRCNN:
    """torchvision's own Mask R-CNN: the small model with torchvision's RoI poolers instead of ours."""
    names = ["0", "1", "2", "3"]
    ours = maskrcnn_small(**SMALL)
    heads = ours.roi_heads
    return MaskRCNN(
        ours.backbone,
        min_size=128,
        max_size=128,
        rpn_anchor_generator=ours.rpn.anchor_generator,
        box_roi_pool=MultiScaleRoIAlign(names, 7, 2),
        mask_roi_pool=MultiScaleRoIAlign(names, 14, 2),
        box_head=heads.box_head,
        box_predictor=heads.box_predictor,
        mask_head=heads.mask_head,
        mask_predictor=heads.mask_predictor,
    )


MODELS = {
    "torchvision Mask R-CNN": torchvision_mask_rcnn,
    "Mask R-CNN (ours, the control)": lambda: maskrcnn_small(**SMALL),
    "MR R-CNN": lambda: mrrcnn_small(**SMALL),
}


def image_and_target() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[10.0, 10.0, 60.0, 70.0], [40.0, 30.0, 100.0, 90.0]])
    masks = torch.zeros(2, 128, 128, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
        mask[y1:y2, x1:x2] = 1
    return [torch.rand(3, 128, 128, generator=g)], [
        {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}
    ]


def setting(name: str) -> contextlib.AbstractContextManager:
    """The dynamo configuration and context of one of :data:`SETTINGS`."""
    if name == SETTINGS[0]:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(
        torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True, capture_scalar_outputs=True)
    )
    stack.enter_context(traceable_detection())
    return stack


def graph_breaks() -> list[tuple[str, str, str, int, int, str]]:
    """(model, mode, setting, graphs, breaks, most frequent reason) for every cell."""
    images, targets = image_and_target()
    rows = []
    for name, build in MODELS.items():
        for mode in ("training", "inference"):
            for chosen in SETTINGS:
                torch.manual_seed(0)
                model = build().train(mode == "training")
                if mode == "inference":
                    with torch.no_grad():
                        model(images)  # the poolers infer their scales, as before an export
                torch._dynamo.reset()
                args = (images, targets) if mode == "training" else (images,)
                grad = torch.enable_grad() if mode == "training" else torch.no_grad()
                with setting(chosen), grad:
                    explained = torch._dynamo.explain(model)(*args)
                reasons = collections.Counter(
                    str(b.reason).splitlines()[0][:90] for b in explained.break_reasons
                )
                top = reasons.most_common(1)[0][0] if reasons else ""
                rows.append((name, mode, chosen, explained.graph_count, explained.graph_break_count, top))
                print(*rows[-1][:5], file=sys.stderr)
    return rows


def compiled_training(steps: int) -> list[tuple[str, float, float, float]]:
    """Per demo model: (name, seconds of the first compiled steps beyond eager, eager step, compiled step)."""
    images, targets = demo_batch("cpu", 4, True)
    rows = []
    for name, model in demo_models("cpu").items():
        times = {}
        for kind in ("eager", "compiled"):
            torch._dynamo.reset()
            runner = torch.compile(model) if kind == "compiled" else model
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6)
            scaler = torch.amp.GradScaler("cuda", enabled=False)
            times[kind] = []
            for _ in range(steps):
                torch.manual_seed(0)
                started = time.perf_counter()
                training_step(runner, images, targets, optimizer, scaler)
                times[kind].append(time.perf_counter() - started)
        eager, compiled = (min(times[k][steps // 2 :]) for k in ("eager", "compiled"))
        warm_up = sum(times["compiled"][: steps // 2]) - eager * (steps // 2)
        rows.append((name, warm_up, eager, compiled))
        print(name, rows[-1][1:], file=sys.stderr)
    return rows


def compiled_inference() -> list[tuple[str, str]]:
    """Per demo model: whether inference compiles as one graph and runs, or the first line of its error."""
    images, _ = demo_batch("cpu", 1, False)
    rows = []
    for name, model in demo_models("cpu").items():
        model.eval()
        with torch.no_grad():
            model(images)
        torch._dynamo.reset()
        try:
            with setting(SETTINGS[1]), torch.no_grad():
                torch.compile(model, fullgraph=True)(images)
            rows.append((name, "runs"))
        except (RuntimeError, AssertionError) as e:  # a compiler failure (or its runtime check), reported
            rows.append((name, f"fails: {type(e).__name__}: {str(e).splitlines()[0][:160]}"))
        print(*rows[-1], file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="training steps timed per model and mode")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/benchmarks/compile.md"
    )
    args = parser.parse_args(argv)
    breaks = graph_breaks()
    training = compiled_training(args.steps)
    inference = compiled_inference()
    break_table = "| model | mode | setting | graphs | graph breaks | most frequent reason |\n|---|---|---|---:|---:|---|\n"
    break_table += "".join(
        f"| {m} | {mode} | {s} | {g} | {b} | {r.replace('|', '/')} |\n" for m, mode, s, g, b, r in breaks
    )
    training_table = (
        "| model | eager s / step | compiled s / step | compiled vs eager | first steps' extra s (compiling) |\n"
        "|---|---:|---:|---:|---:|\n"
    ) + "".join(f"| {n} | {e:.3f} | {c:.3f} | {e / c:.2f}x | {w:.0f} |\n" for n, w, e, c in training)
    inference_table = "| model | inference compiled as one graph (fullgraph=True) |\n|---|---|\n" + "".join(
        f"| {n} | {r.replace('|', '/')} |\n" for n, r in inference
    )
    text = (
        "# PyTorch 2: graph breaks and compiled time\n\n"
        f"{header('compile.py', argv, 1)} torchvision {torchvision.__version__}.\n\n"
        f"- cpu: {machine('cpu')}\n\n"
        "## Graph breaks\n\n"
        "`torch._dynamo.explain` on one 128-pixel image with two instances (random weights): a training step "
        "and an inference. torchvision's own Mask R-CNN is the small model with torchvision's RoI poolers; "
        "ours use the registered Shape-aware RoIAlign. The second setting is the one `mrrcnn export` "
        "traces with (`torch._dynamo.config`: `capture_dynamic_output_shape_ops` and "
        "`capture_scalar_outputs`; `mrrcnn.models.traceable.traceable_detection()`).\n\n"
        + break_table
        + "\n## Training step, eager and compiled\n\n"
        f"The demo's models and batch (4 images of 160 pixels), {args.steps} steps each, eager then "
        "`torch.compile(model)` (inductor, torch.compile's defaults: the graph breaks above): the best of "
        "the later half's steps, and the time the first half took beyond as many eager steps (compiling, "
        "recompiling for new shapes).\n\n" + training_table + "\n## Inference compiled as one graph\n\n"
        "The demo's models on one image, `torch.compile(model, fullgraph=True)` under the second setting.\n\n"
        + inference_table
        + "\nExport agreement and latency in every format: `docs/benchmarks/export.md` (`python bench/export.py`).\n"
    )
    print(text)
    write_report(args.out, text)


if __name__ == "__main__":
    main()
