"""MR R-CNN R50-FPN exported in every format of ``mrrcnn export``: agreement with PyTorch and CPU latency.

    python bench/export.py          # prints the tables and writes docs/benchmarks/export.md

The model is ``mrrcnn_resnet50_fpn(num_classes=91)`` with random weights from one seed (nothing is
downloaded). Its mask predictor's weights are scaled up and its biases drawn so that mask probabilities are
confident, as a trained model's are (a random mask head gives probabilities within 0.01 of 0.5, and exactly
0.5 where its features are 0: binarising those is a coin toss on float rounding); its refining heads are
perturbed away from stage 1's copies so that fusion, refined boxes and refined masks all change the output.
Score threshold 0.02 keeps about 100 detections per image.

Every file is written by :func:`mrrcnn.engine.export.export_model` and compared with PyTorch by
:func:`mrrcnn.engine.export.compare_detections` (what ``mrrcnn export --check`` runs) on the sample
images of the check: two the model does not resize (800x1333 and 1333x600) and, for the PyTorch 2 formats,
one it does (1200x1999). A disagreement is reported, not hidden; for the legacy ONNX file, whose
onnxruntime convolutions round differently from PyTorch's, stage 1's detections alone are compared too (a
graph of the model up to stage 1, exported the same way), to show where a difference starts. Latency: the
800x1333 image, PyTorch eager and each runtime timed in turns, onnxruntime given torch's thread count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch
import torchvision
from common import header, machine, median_seconds_side_by_side, write_report
from torch import Tensor, nn

from mrrcnn.engine.export import (
    BOX_RTOL,
    MASK_THRESHOLD_ATOL,
    MIN_MASK_IOU,
    SCORE_ATOL,
    check_image_sizes,
    compare_detections,
    export_model,
    load_exported,
    sample_image,
)
from mrrcnn.models import mrrcnn_resnet50_fpn

IMAGE = (800, 1333)
# (format, runtime, file suffix): PyTorch 2's formats first, then the legacy ones.
RUNTIMES = (
    ("exported-program", "ExportedProgram", "pt2"),
    ("onnx", "onnxruntime (dynamo export)", "onnx"),
    ("torchscript", "TorchScript (legacy)", "pt"),
    ("onnx-legacy", "onnxruntime (legacy export)", "onnx"),
)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = mrrcnn_resnet50_fpn(num_classes=91, box_score_thresh=0.02)
    heads = model.roi_heads
    with torch.no_grad():
        heads.mask_predictor.mask_fcn_logits.weight.mul_(100)
        heads.mask_predictor.mask_fcn_logits.bias.normal_()
        heads.init_refining_from_base()
        for module in (heads.refine_box_predictor.cls_score, heads.refine_box_predictor.bbox_pred):
            module.weight.add_(torch.randn_like(module.weight) * module.weight.std() * 0.5)
        heads.mask_flow.weight.normal_(std=0.01)
    return model.eval()


class Stage1(nn.Module):
    """The model up to stage 1's detections (the refining module's input): one image in, their boxes
    ``Tensor[D, 4]`` and labels ``Int64Tensor[D]`` out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        images, _ = self.model.transform([image])
        features = self.model.backbone(images.tensors)
        proposals, _ = self.model.rpn(images, features)
        found, _, _ = self.model.roi_heads.stage1_predict(features, proposals, images.image_sizes)
        return found.boxes[0], found.classes


def same_stage1(model: nn.Module, images: list[Tensor], folder: Path) -> list[str]:
    """Per image, how many of PyTorch's stage-1 detections onnxruntime also finds (label, box to 0.1 px)."""
    path = folder / "stage1.onnx"
    wrapper = Stage1(model).eval()
    torch.onnx.export(
        wrapper,
        (images[0],),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["image"],
        dynamic_axes={"image": {1: "height", 2: "width"}},
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    counts = []
    for image in images:
        with torch.no_grad():
            boxes, labels = wrapper(image)
        other_boxes, other_labels = (torch.from_numpy(a) for a in session.run(None, {"image": image.numpy()}))
        close = (boxes[:, None] - other_boxes[None]).abs().amax(-1) <= 0.1
        found = (close & (labels[:, None] == other_labels[None])).any(1)
        counts.append(f"{int(found.sum())}/{len(boxes)}")
    return counts


def agreement(expected: dict[str, Tensor], actual: dict[str, Tensor], where: str) -> list[str]:
    """Table cells: the comparison's summary, or the disagreement it found."""
    try:
        c = compare_detections(expected, actual, where)
    except ValueError as e:
        return ["**disagrees**: " + str(e).split(": ", 1)[1], "", "", ""]
    return [
        f"{c['detections']} agree",
        f"{c['max_box_error_px']:.1e} ({c['max_box_error_relative']:.1e})",
        f"{c['max_score_error']:.1e}",
        f"{c['min_mask_iou']:.4f}",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median reported)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: mrrcnn export's for each exporter)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/benchmarks/export.md"
    )
    args = parser.parse_args(argv)
    model = make_model()
    sizes = check_image_sizes(model, "exported-program")
    assert sizes[0] == IMAGE
    images = [sample_image(size, seed=1 + k) for k, size in enumerate(sizes)]
    with torch.no_grad():
        expected = [model([image])[0] for image in images]

    checks, exports = [], []
    runners = {"PyTorch (eager)": lambda: inference(model, images[0])}
    with tempfile.TemporaryDirectory() as folder:
        stage1 = same_stage1(model, images, Path(folder))
        for fmt, name, suffix in RUNTIMES:
            path = Path(folder) / f"mrrcnn_r50_fpn_{fmt}.{suffix}"
            start = time.perf_counter()
            opset = args.opset if fmt in ("onnx", "onnx-legacy") else None
            export_model(model, path, fmt, IMAGE, opset)
            exports.append((name, fmt, path.stat().st_size / 2**20, time.perf_counter() - start))
            run = load_exported(path, fmt, threads=torch.get_num_threads())
            checked = len(check_image_sizes(model, fmt))
            for k, (image, reference) in enumerate(zip(images[:checked], expected)):
                size = f"{image.shape[1]}x{image.shape[2]}"
                first = stage1[k] if fmt == "onnx-legacy" else "not compared"
                cells = [
                    name,
                    size,
                    str(len(reference["scores"])),
                    *agreement(reference, run(image), size),
                    first,
                ]
                checks.append(cells)
                print(" | ".join(cells), file=sys.stderr)
            runners[name] = lambda run=run: run(images[0])
        timings = median_seconds_side_by_side(runners, "cpu", args.repeats)

    reference = timings["PyTorch (eager)"]
    agreement_table = (
        "| runtime | image | PyTorch detections | detections | max box error px (of box size) | max score "
        "error | min mask IoU | stage-1 detections as PyTorch's |\n|---|---|---:|---|---:|---:|---:|---:|\n"
    ) + "".join(f"| {' | '.join(cells)} |\n" for cells in checks)
    latency_table = (
        "| runtime | file | MiB | export s | median s / image (800x1333) | vs PyTorch |\n"
        "|---|---|---:|---:|---:|---:|\n"
        f"| PyTorch (eager) | | | | {reference:.2f} | 1.00x |\n"
    ) + "".join(
        f"| {name} | {fmt} | {mib:.0f} | {seconds:.1f} | {timings[name]:.2f} | {reference / timings[name]:.2f}x |\n"
        for name, fmt, mib, seconds in exports
    )
    text = (
        "# MR R-CNN exported: ExportedProgram, ONNX and TorchScript against PyTorch\n\n"
        f"{header('export.py', argv, args.repeats)} torchvision {torchvision.__version__}, onnxruntime "
        f"{onnxruntime.__version__} (CPU provider, {torch.get_num_threads()} threads); ONNX opset "
        f"{args.opset or 'mrrcnn export' + chr(39) + 's defaults'}; one warm-up run first.\n\n"
        f"- cpu: {machine('cpu')}\n\n"
        "R50-FPN MR R-CNN, 91 classes, random weights (mask logits scaled up to be confident, refining heads "
        "perturbed away from stage 1's; score threshold 0.02), exported by `mrrcnn.engine.export` "
        "(`mrrcnn export`), one image per call.\n\n"
        "## Agreement\n\n"
        "The exported file and PyTorch on the sample images of `mrrcnn export --check` (two the model does "
        "not resize, and for the PyTorch 2 formats one it does). A detection agrees when matched (same label, "
        f"score within {SCORE_ATOL}), boxes within "
        f"{BOX_RTOL} of their width (x) or height (y), masks binarised at 0.5 with IoU >= {MIN_MASK_IOU} "
        f"(pixels within {MASK_THRESHOLD_ATOL} of 0.5 agree either way: torchvision's paste gives exactly 0.5 "
        "at the edge of a saturated mask); errors are the worst over the image's detections. The "
        "ExportedProgram runs PyTorch's kernels and the registered Shape-aware RoIAlign; TorchScript runs "
        "PyTorch's kernels, but for the RoI pooling (torchvision's RoIAlign instead of the eager "
        "operator). onnxruntime runs its own convolutions, which round differently: `stage-1 detections as "
        "PyTorch's` counts stage 1's detections (the refining module's input; same label, box within 0.1 px) "
        "that onnxruntime also finds. Where they already differ, the disagreement starts before the refining "
        "module, in stage 1 (torchvision's Mask R-CNN code): its NMS at IoU 0.5 and its cut at 100 "
        "detections decide near-ties, which boxes moved by rounding can tip the other way.\n\n"
        + agreement_table
        + "\n## Latency\n\n"
        "One 800x1333 image, the runtimes timed in turns; `vs PyTorch` is PyTorch's time over the "
        "runtime's (above 1: faster). `export s`: writing the file (scripting, or tracing and converting).\n\n"
        + latency_table
    )
    print(agreement_table + "\n" + latency_table)
    write_report(args.out, text)


def inference(model: nn.Module, image: Tensor) -> object:
    with torch.no_grad():
        return model([image])


if __name__ == "__main__":
    main()
