"""Export a trained model to TorchScript or ONNX, one image per call, and check the file against PyTorch.

    detector = torch.jit.load("model.pt")                     # TorchScript
    boxes, labels, scores, masks = detector(image)            # image: Tensor[3, H, W], RGB in [0, 1]

    session = onnxruntime.InferenceSession("model.onnx")      # ONNX
    boxes, labels, scores, masks = session.run(None, {"image": image.numpy()})

Both hold the whole eval-mode model, as ``model([image])[0]`` computes it: resizing and normalisation, the
RPN, stage 1, the refining module with the score fusion at the ``alpha`` exported, the second score
threshold and NMS, the refined masks pasted into the image (``masks``: ``Tensor[D, 1, H, W]``
probabilities). ONNX bakes ``alpha`` and the thresholds in (re-export with ``model.alpha=X`` to change
them); TorchScript keeps them as attributes (``detector.model.roi_heads.alpha = X``).

The graph does not normalise intensities: give it images as the model was trained on them,
``mrrcnn.data.images.read_image(path, intensity=..., percentiles=...)`` with the checkpoint's
``data.intensity`` and ``data.percentiles`` (as ``mrrcnn predict`` and ``eval`` read them).

Export traces (ONNX, ``torch.onnx.export(dynamo=False)``, as torchvision exports Mask R-CNN) or scripts
(TorchScript) the model; while it does, RoI pooling switches to
:func:`~mrrcnn.ops.exportable.exportable_shape_aware_roi_align` (RoIAlign, Resize, Mul, AveragePool).
"""

import copy
import importlib.util
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN

from .checkpoint import load_model

FORMATS = ("torchscript", "onnx")
OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")
DEFAULT_OPSET = 17
# RoiAlign needs opset 10 and the model's dynamic padding 11; 20 is the highest the TorchScript-based
# exporter supports (onnxruntime 1.32 has no RoiAlign of opset 22).
MIN_OPSET, MAX_OPSET = 11, 20

# What "agrees with PyTorch" means, for each detection of each check image.
# Box coordinates within 1e-3 of the box's width (x1, x2) or height (y1, y2), at least 1e-3 px: decoding
# scales the regression's rounding error by the box's size, not by where the box is.
BOX_RTOL = 1e-3
SCORE_ATOL = 1e-4
MIN_MASK_IOU = 0.99  # of the masks binarised at 0.5
# Pixels whose PyTorch probability is this close to 0.5 agree either way. torchvision pastes a mask padded
# with zeros, so a saturated probability (1.0 in float32) next to the padding gives pixels of exactly 0.5
# at the box's edge: which side of the threshold they fall on is float rounding, not the model.
MASK_THRESHOLD_ATOL = 1e-4


class SingleImageDetector(nn.Module):
    """The exported interface: one image in, its detections out, as ``model([image])[0]`` in eval mode.

    ``forward(image: Tensor[3, H, W])`` (RGB in [0, 1], any size) returns ``boxes: Tensor[D, 4]`` (x1, y1,
    x2, y2 pixels of the image), ``labels: Int64Tensor[D]``, ``scores: Tensor[D]`` (sorted, highest first)
    and ``masks: Tensor[D, 1, H, W]`` (probabilities). The wrapped model is ``self.model``.
    """

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # Scripted, torchvision's detection models return (losses, detections); eager and traced, detections.
        if torch.jit.is_scripting():
            _, detections = self.model([image])
        else:
            detections = self.model([image])
        found = detections[0]
        return found["boxes"], found["labels"], found["scores"], found["masks"]


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote: the file, its format, the fusion weight baked in (None for a
    Mask R-CNN), the example image size it was traced with, and one :func:`compare_detections` summary
    per check image (empty without ``check``)."""

    path: Path
    format: str
    alpha: float | None
    image_size: tuple[int, int]
    checks: list[dict[str, Any]] = field(default_factory=list)


def check_exportable(model: nn.Module) -> None:
    """Raise ``ValueError`` naming what of ``model`` an exported graph cannot hold."""
    if not isinstance(model, MaskRCNN):
        raise ValueError(f"only Mask R-CNN and MR R-CNN models export, not {type(model).__name__}")
    heads = model.roi_heads
    if getattr(heads, "sara_masks", "predicted") != "predicted":
        raise ValueError(
            f"model.sara_masks={heads.sara_masks!r} (a diagnostic) reads ground-truth masks at evaluation, "
            "which an exported model has no input for; export with model.sara_masks=predicted"
        )
    # The one pooler that is given masks: the refining box head's, when Shape-aware RoIAlign is on.
    if getattr(heads, "shape_aware", False) and heads.refine_box_roi_pool.sampling_ratio <= 0:
        raise ValueError(
            f"roi_heads.refine_box_roi_pool has sampling_ratio={heads.refine_box_roi_pool.sampling_ratio} "
            "(adaptive): Shape-aware RoIAlign would then sample every box on its own grid, which has no "
            "form in exported operators (one RoIAlign grid and one mask size for all boxes); export a model "
            "with a fixed sampling_ratio > 0"
        )


def default_image_size(model: MaskRCNN) -> tuple[int, int]:
    """(height, width) of the example image: a landscape image the model does not resize (in eval mode
    torchvision resizes the shorter side to the last ``min_size``, capping the longer at ``max_size``)."""
    transform = model.transform
    longer = int(transform.max_size)
    return min(int(transform.min_size[-1]), longer), longer


def _check_arguments(fmt: str, image_size: Sequence[int], opset: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if len(image_size) != 2 or not all(isinstance(s, int) and s >= 32 for s in image_size):
        raise ValueError(
            f"image_size must be (height, width), each an integer >= 32, got {tuple(image_size)}"
        )
    if not (isinstance(opset, int) and MIN_OPSET <= opset <= MAX_OPSET):
        raise ValueError(f"opset must be an integer in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")


def _check_memory(model: MaskRCNN, image_size: Sequence[int]) -> None:
    """Refuse, before allocating anything, an example image that tracing cannot hold in this machine's
    memory: the image and its detections' masks pasted at full size, float32 each."""
    height, width = image_size
    planes = 3 + model.roi_heads.detections_per_img
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # no sysconf (Windows): left to the allocator
        return
    if 4 * height * width * planes > total:
        raise ValueError(
            f"image_size {height}x{width}: tracing holds the image and up to {planes - 3} masks of its size in "
            f"float32, {4 * height * width * planes / 2**30:.0f} GiB, more than this machine's "
            f"{total / 2**30:.0f} GiB of memory; give a smaller image_size (--image-size): the exported model "
            "takes images of any size"
        )


def export_model(
    model: MaskRCNN,
    out: str | Path,
    fmt: str,
    image_size: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write ``model`` (a copy, in eval mode, on the CPU) to ``out`` as a :class:`SingleImageDetector`.

    Args:
        model: a Mask R-CNN or MR R-CNN of :mod:`mrrcnn.models` (or torchvision's ``MaskRCNN``).
        out: the file to write (its folder is created); replaced only once the export succeeded.
        fmt: ``"torchscript"`` (``torch.jit.script``) or ``"onnx"`` (traced on a random example image).
        image_size: (height, width) of the example image that ONNX export traces with (default: the
            model's own size, :func:`default_image_size`); exported graphs take any size.
        opset: the ONNX opset, in ``MIN_OPSET..MAX_OPSET``.

    Returns:
        ``out`` as a ``Path``.
    """
    image_size = tuple(image_size) if image_size is not None else None
    check_exportable(model)
    image_size = image_size or default_image_size(model)
    _check_arguments(fmt, image_size, opset)
    if fmt == "onnx":
        _check_memory(model, image_size)
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise ValueError("ONNX export needs the onnx package: pip install 'mrrcnn[export]'")
    detector = SingleImageDetector(copy.deepcopy(model).cpu().eval())
    # The wrapper takes the scripted model's (losses, detections) apart: no need to warn that it is a tuple.
    detector.model._has_warned = True
    heads = detector.model.roi_heads
    if hasattr(heads, "alpha"):
        heads.alpha = float(heads.alpha)  # a scripted attribute keeps its type: any alpha can be set later
    out = _output_file(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            # Tracing torchvision's detection code warns about every Python value it records as a constant,
            # by design (the graph stays correct for other sizes); those warnings say nothing to act on.
            warnings.simplefilter("ignore")
            if fmt == "torchscript":
                torch.jit.script(detector).save(str(tmp))
            else:
                _export_onnx(detector, tmp, sample_image(image_size, seed=0), opset)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _output_file(out: str | Path) -> Path:
    """``out`` as a path whose folder exists; a folder itself is refused."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"output {out} is a folder; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _export_onnx(detector: SingleImageDetector, path: Path, image: Tensor, opset: int) -> None:
    """torch.onnx's TorchScript-based exporter, as torchvision's tests export Mask R-CNN: image height and
    width and the number of detections dynamic."""
    detections = {0: "detections"}
    torch.onnx.export(
        detector,
        (image,),
        str(path),
        opset_version=opset,
        dynamo=False,
        input_names=["image"],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={
            "image": {1: "height", 2: "width"},
            "boxes": detections,
            "labels": detections,
            "scores": detections,
            "masks": {0: "detections", 2: "height", 3: "width"},
        },
    )


def sample_image(size: Sequence[int], seed: int) -> Tensor:
    """A deterministic ``Tensor[3, H, W]`` in [0, 1]: a smooth random colour field with a few flat
    rectangles on it, so that even a randomly initialised model finds boxes of several sizes."""
    g = torch.Generator().manual_seed(seed)
    height, width = size
    image = F.interpolate(torch.rand(1, 3, 6, 8, generator=g), size=(height, width), mode="bilinear")[0]
    for _ in range(6):
        h, w = (int(s * (0.15 + 0.35 * float(torch.rand(1, generator=g)))) for s in (height, width))
        y, x = (
            int(torch.randint(0, height - h, (1,), generator=g)),
            int(torch.randint(0, width - w, (1,), generator=g)),
        )
        image[:, y : y + h, x : x + w] = torch.rand(3, 1, 1, generator=g)
    return image


def check_image_sizes(model: MaskRCNN) -> list[tuple[int, int]]:
    """Two image sizes, landscape and portrait, that the model does not resize (scale exactly 1).

    torchvision's scripted and traced transform computes the resize scale in float32, eager PyTorch in
    float64; where ``side * scale`` lands within float32 rounding of an integer the exported model may
    resize to one pixel more or less (torchvision's exported Mask R-CNN does too), and its detections then
    differ by more than rounding. At scale 1 both resize alike, so the check compares the models, not that.
    """
    short, long = default_image_size(model)
    return [(short, long), (long, (3 * short) // 4)]


def compare_detections(expected: dict[str, Tensor], actual: dict[str, Tensor], where: str) -> dict[str, Any]:
    """Check that ``actual`` holds ``expected``'s detections, to :data:`BOX_RTOL`, :data:`SCORE_ATOL` and
    :data:`MIN_MASK_IOU` (see :data:`MASK_THRESHOLD_ATOL`), and summarise how closely.

    Each expected detection (``boxes: Tensor[D, 4]``, ``labels``, ``scores: Tensor[D]``, ``masks: Tensor[D,
    1, H, W]``) is matched, in score order, to the unmatched actual detection of its label within the score
    tolerance whose box is closest: detections whose scores tie to rounding may come out in either order.

    Raises:
        ValueError: naming ``where`` and what disagrees.
    """
    n, m = expected["scores"].shape[0], actual["scores"].shape[0]
    if n != m:
        raise ValueError(f"{where}: {m} detections, PyTorch {n}")
    boxes, scores = expected["boxes"].double(), expected["scores"].double()
    other_boxes, other_scores = actual["boxes"].double(), actual["scores"].double()
    gap = (boxes[:, None] - other_boxes[None]).abs().amax(-1)
    eligible = (expected["labels"][:, None] == actual["labels"][None]) & (
        (scores[:, None] - other_scores[None]).abs() <= SCORE_ATOL
    )
    gap = gap.masked_fill(~eligible, math.inf)
    match = []
    for i in range(n):
        j = int(gap[i].argmin())
        if not math.isfinite(float(gap[i, j])):
            raise ValueError(
                f"{where}: PyTorch's detection {i} (label {int(expected['labels'][i])}, score "
                f"{float(scores[i]):.6f}) has no counterpart of that label within {SCORE_ATOL} in score"
            )
        match.append(j)
        gap[:, j] = math.inf
    match = torch.tensor(match, dtype=torch.long)
    box_error = (other_boxes[match] - boxes).abs()
    relative = box_error / (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2).clamp(min=1.0)
    if bool((relative > BOX_RTOL).any()):
        raise ValueError(
            f"{where}: boxes differ by up to {float(relative.max()):.3g} of their size (tolerance {BOX_RTOL}), "
            f"{float(box_error.max()):.4g} px"
        )
    iou = _mask_iou(expected["masks"], actual["masks"][match])
    if bool((iou < MIN_MASK_IOU).any()):
        raise ValueError(
            f"{where}: a mask overlaps PyTorch's with IoU {float(iou.min()):.4f} < {MIN_MASK_IOU}"
        )
    return {
        "detections": n,
        "max_box_error_px": float(box_error.max()) if n else 0.0,
        "max_box_error_relative": float(relative.max()) if n else 0.0,
        "max_score_error": float((other_scores[match] - scores).abs().max()) if n else 0.0,
        "min_mask_iou": float(iou.min()) if n else 1.0,
    }


def _mask_iou(expected: Tensor, actual: Tensor) -> Tensor:
    """IoU of each pair of masks ``Tensor[D, 1, H, W]`` binarised at 0.5, where ``actual`` takes
    ``expected``'s side at pixels within :data:`MASK_THRESHOLD_ATOL` of 0.5; 1 for two empty masks."""
    a = expected > 0.5
    b = torch.where((expected - 0.5).abs() <= MASK_THRESHOLD_ATOL, a, actual > 0.5)
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def load_exported(
    path: str | Path, fmt: str, threads: int | None = None
) -> Callable[[Tensor], dict[str, Tensor]]:
    """A function ``image -> {boxes, labels, scores, masks}`` that runs an exported file on the CPU
    (``torch.jit.load``, or onnxruntime's CPU provider with ``threads`` threads, default its own choice;
    TorchScript runs on torch's threads)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, not gone
            detector = torch.jit.load(str(path), map_location="cpu")

        def run(image: Tensor) -> dict[str, Tensor]:
            with torch.no_grad():
                return dict(zip(OUTPUT_NAMES, detector(image)))

        return run
    try:
        import onnxruntime
    except ImportError as e:
        raise ValueError("running an ONNX model needs onnxruntime: pip install 'mrrcnn[export]'") from e
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_onnx(image: Tensor) -> dict[str, Tensor]:
        outputs = session.run(None, {"image": image.numpy()})
        return {name: torch.from_numpy(output) for name, output in zip(OUTPUT_NAMES, outputs)}

    return run_onnx


def check_export(
    model: MaskRCNN,
    path: str | Path,
    fmt: str,
    images: Sequence[Tensor] | None = None,
    name: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run the exported file and ``model`` (eval mode, CPU) on ``images`` and compare their detections.

    Args:
        images: ``Tensor[3, H, W]`` images (default: :func:`sample_image` at :func:`check_image_sizes`).
        name: what errors call the file (default: ``path``).

    Returns:
        One :func:`compare_detections` summary per image, with its ``image`` size ("HxW").

    Raises:
        ValueError: naming the file, the image and what disagrees.
    """
    model = copy.deepcopy(model).cpu().eval()
    if images is None:
        images = [sample_image(size, seed=1 + k) for k, size in enumerate(check_image_sizes(model))]
    run = load_exported(path, fmt)
    summaries = []
    for k, image in enumerate(images):
        with torch.no_grad():
            expected = model([image])[0]
        size = f"{image.shape[1]}x{image.shape[2]}"
        where = f"{name or path} ({fmt}) on check image {k + 1} ({size})"
        summaries.append({"image": size, **compare_detections(expected, run(image), where)})
    return summaries


def export_checkpoint(
    weights: str | Path,
    out: str | Path,
    fmt: str,
    image_size: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = False,
    overrides: Sequence[str] = (),
) -> ExportResult:
    """Export a checkpoint's model (:func:`export_model`), and with ``check`` verify the file against it
    (:func:`check_export`) before it replaces ``out``.

    Args:
        weights: an mrrcnn checkpoint; ``overrides`` (``section.key=value``, e.g. ``model.alpha=0.5``)
            change its configuration first, as for ``mrrcnn eval``.
        out, fmt, image_size, opset: as :func:`export_model`.
        check: run the exported file on two sample images and compare it with PyTorch.
    """
    image_size = tuple(image_size) if image_size is not None else None
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = _output_file(out)
    model, _, _ = load_model(weights, device="cpu", overrides=overrides)
    staged = out.with_name(f".{out.name}.{os.getpid()}.export")
    try:
        export_model(model, staged, fmt, image_size, opset)
        checks = check_export(model, staged, fmt, name=out) if check else []
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    alpha = getattr(model.roi_heads, "alpha", None)
    return ExportResult(out, fmt, alpha, image_size or default_image_size(model), checks)
