"""Export a trained model, one image per call, and check the file against PyTorch.

    import mrrcnn.ops                                         # registers torch.ops.mrrcnn.*
    detector = torch.export.load("model.pt2").module()        # exported-program (torch.export)
    boxes, labels, scores, masks = detector(image)            # image: Tensor[3, H, W], RGB in [0, 1]

    session = onnxruntime.InferenceSession("model.onnx")      # onnx (the dynamo exporter)
    boxes, labels, scores, masks = session.run(None, {"image": image.numpy()})

Every format holds the whole eval-mode model, as ``model([image])[0]`` computes it: resizing and
normalisation, the RPN, stage 1, the refining module with the score fusion at the ``alpha`` exported, the
second score threshold and NMS, the refined masks pasted into the image (``masks``: ``Tensor[D, 1, H, W]``
probabilities), for any image size and number of detections. ``exported-program`` (``torch.export``, what
ExecuTorch, AOTInductor and Torch-TensorRT take) and ``onnx`` (``torch.onnx.export(dynamo=True)``) bake
``alpha`` and the thresholds in (re-export with ``model.alpha=X`` to change them); so does the legacy
``onnx-legacy`` (the TorchScript-based ONNX exporter); the legacy ``torchscript`` keeps them as attributes
(``detector.model.roi_heads.alpha = X``). torch deprecates both legacy formats; they stay while it ships
them. An exported program takes images whose sides, once the model has resized them, exceed 64 pixels:
``torch.export`` specializes sizes of 1, and the coarsest FPN level (stride 64) of a narrower image has one
pixel (its guard then fails, naming the sizes); the ONNX file takes any.

The graph does not normalise intensities: give it images as the model was trained on them,
``mrrcnn.data.images.read_image(path, intensity=..., percentiles=...)`` with the checkpoint's
``data.intensity`` and ``data.percentiles`` (as ``mrrcnn predict`` and ``eval`` read them).

``torch.export`` traces the model while :func:`mrrcnn.models.traceable.traceable_detection` gives
torchvision's data-dependent pieces traceable forms (torchvision's own Mask R-CNN does not export
otherwise); the exported program calls the registered ``torch.ops.mrrcnn.shape_aware_roi_align``. For
ONNX (both exporters) and TorchScript, RoI pooling switches to
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

from ..models.traceable import traceable_detection
from ..models.transform import ScaleTransform
from .checkpoint import load_model

# PyTorch 2's formats first, then the legacy ones (TorchScript, and ONNX by the TorchScript-based exporter).
FORMATS = ("exported-program", "onnx", "torchscript", "onnx-legacy")
ONNX_FORMATS = ("onnx", "onnx-legacy")
OUTPUT_NAMES = ("boxes", "labels", "scores", "masks")
# By ONNX exporter: the default opset and the range taken. The legacy exporter: RoiAlign needs opset 10 and
# the model's dynamic padding 11, and 20 is its highest. The dynamo exporter: 18 and up (its torchlib's);
# onnxruntime 1.32 has no RoiAlign of opset 22.
DEFAULT_OPSET = {"onnx": 18, "onnx-legacy": 17}
OPSETS = {"onnx": (18, 21), "onnx-legacy": (11, 20)}
# The packages a format's exporter needs beyond torch (the export extra).
_PACKAGES = {"onnx": ("onnx", "onnxscript"), "onnx-legacy": ("onnx",)}

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
    torchvision resizes the shorter side to the last ``min_size``, capping the longer at ``max_size``); in
    ``scale`` mode one that the model sees as 192 x 256 pixels."""
    transform = model.transform
    if isinstance(transform, ScaleTransform):
        return max(32, round(192 / transform.scale)), max(32, round(256 / transform.scale))
    longer = int(transform.max_size)
    return min(int(transform.min_size[-1]), longer), longer


# The least model-input side an export in ``scale`` mode is traced for: below it the FPN's coarsest levels
# shrink to one cell, a case the traced graph would have to branch on.
_LEAST_SCALED_SIDE = 128


def _least_side(model: MaskRCNN) -> int:
    """The least image side the exported graph takes: 32 where the model resizes every image to its
    ``min_size``; in ``scale`` mode what the scale makes :data:`_LEAST_SCALED_SIDE` pixels."""
    transform = model.transform
    return math.ceil(_LEAST_SCALED_SIDE / transform.scale) if isinstance(transform, ScaleTransform) else 32


def _check_arguments(fmt: str, image_size: Sequence[int], opset: int | None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if len(image_size) != 2 or not all(isinstance(s, int) and s >= 32 for s in image_size):
        raise ValueError(
            f"image_size must be (height, width), each an integer >= 32, got {tuple(image_size)}"
        )
    if opset is not None and fmt not in ONNX_FORMATS:
        raise ValueError(f"opset applies to the ONNX formats only, not to {fmt}")
    if opset is not None and not (isinstance(opset, int) and OPSETS[fmt][0] <= opset <= OPSETS[fmt][1]):
        low, high = OPSETS[fmt]
        raise ValueError(f"opset must be an integer in {low}..{high} for {fmt}, got {opset!r}")


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
    opset: int | None = None,
) -> Path:
    """Write ``model`` (a copy, in eval mode, on the CPU) to ``out`` as a :class:`SingleImageDetector`.

    Args:
        model: a Mask R-CNN or MR R-CNN of :mod:`mrrcnn.models` (or torchvision's ``MaskRCNN``).
        out: the file to write (its folder is created); replaced only once the export succeeded.
        fmt: one of :data:`FORMATS`: ``"exported-program"`` (``torch.export``, saved by
            ``torch.export.save``), ``"onnx"`` (``torch.onnx.export(dynamo=True)``), and the legacy
            ``"torchscript"`` (``torch.jit.script``) and ``"onnx-legacy"`` (traced, ``dynamo=False``).
        image_size: (height, width) of the example image the traced formats are made with (default: the
            model's own size, :func:`default_image_size`); exported graphs take any size.
        opset: the ONNX opset (:data:`OPSETS`; default :data:`DEFAULT_OPSET`).

    Returns:
        ``out`` as a ``Path``.
    """
    image_size = tuple(image_size) if image_size is not None else None
    check_exportable(model)
    image_size = image_size or default_image_size(model)
    _check_arguments(fmt, image_size, opset)
    if fmt != "torchscript":
        _check_memory(model, image_size)
    for package in _PACKAGES.get(fmt, ()):
        if importlib.util.find_spec(package) is None:
            raise ValueError(f"{fmt} export needs the {package} package: pip install 'mrrcnn[export]'")
    detector = SingleImageDetector(copy.deepcopy(model).cpu().eval())
    # The wrapper takes the scripted model's (losses, detections) apart: no need to warn that it is a tuple.
    detector.model._has_warned = True
    heads = detector.model.roi_heads
    if hasattr(heads, "alpha"):
        heads.alpha = float(heads.alpha)  # a scripted attribute keeps its type: any alpha can be set later
    out = _output_file(out, fmt)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{out.suffix}")
    try:
        with warnings.catch_warnings():
            # Tracing torchvision's detection code warns about every Python value it records as a constant,
            # by design (the graph stays correct for other sizes); those warnings say nothing to act on.
            warnings.simplefilter("ignore")
            if fmt == "torchscript":
                torch.jit.script(detector).save(str(tmp))
            elif fmt == "onnx-legacy":
                _export_onnx_legacy(detector, tmp, sample_image(image_size, seed=0), opset)
            else:
                _export_pt2(detector, tmp, sample_image(image_size, seed=0), fmt, opset)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _output_file(out: str | Path, fmt: str) -> Path:
    """``out`` as a path whose folder exists; a folder itself is refused, and an exported program's name
    must end in ``.pt2`` (``torch.export.load`` reads no other)."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"output {out} is a folder; give a file name")
    if fmt == "exported-program" and out.suffix != ".pt2":
        raise ValueError(
            f"output {out}: an exported program's file name ends in .pt2 (torch.export.load needs it)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _export_pt2(
    detector: SingleImageDetector, path: Path, image: Tensor, fmt: str, opset: int | None
) -> None:
    """``torch.export`` of ``detector`` on ``image``, saved as a program or (``fmt="onnx"``) translated by
    the dynamo ONNX exporter: image height and width dynamic, the number of detections too (it depends on
    the data)."""
    with torch.no_grad():
        # The poolers infer and keep their levels' scales (Python rounding: traced, a guard on the size).
        detector(image)
    side = _least_side(detector.model)
    shapes = ({1: torch.export.Dim("height", min=side), 2: torch.export.Dim("width", min=side)},)
    with traceable_detection():
        if fmt == "exported-program":
            program = torch.export.export(detector, (image,), dynamic_shapes=shapes)
            # A file object: torch.export.save and load take file names ending in .pt2 only.
            with open(path, "wb") as f:
                torch.export.save(program, f)
            return
        program = torch.onnx.export(
            detector,
            (image,),
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
            opset_version=opset or DEFAULT_OPSET[fmt],
            verbose=False,
        )
    program.save(str(path))


def _export_onnx_legacy(detector: SingleImageDetector, path: Path, image: Tensor, opset: int | None) -> None:
    """torch.onnx's TorchScript-based exporter, as torchvision's tests export Mask R-CNN: image height and
    width and the number of detections dynamic."""
    detections = {0: "detections"}
    torch.onnx.export(
        detector,
        (image,),
        str(path),
        opset_version=opset or DEFAULT_OPSET["onnx-legacy"],
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


def check_image_sizes(model: MaskRCNN, fmt: str) -> list[tuple[int, int]]:
    """Image sizes to check ``fmt`` on: landscape and portrait that the model does not resize (scale
    exactly 1), and for the PyTorch 2 formats one it resizes too.

    torchvision's scripted and traced transform computes the resize scale in float32, eager PyTorch in
    float64; where ``side * scale`` lands within float32 rounding of an integer the legacy formats may
    resize to one pixel more or less (torchvision's exported Mask R-CNN does too), and its detections then
    differ by more than rounding: they are checked at scale 1, where both resize alike. ``torch.export``
    keeps the sizes symbolic, computed in Python's float64 as in eager PyTorch.
    """
    short, long = default_image_size(model)
    sizes = [(short, long), (long, (3 * short) // 4)]
    return sizes if fmt in ("torchscript", "onnx-legacy") else [*sizes, ((3 * short) // 2, (3 * long) // 2)]


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
    (``torch.export.load``, ``torch.jit.load``, or onnxruntime's CPU provider with ``threads`` threads,
    default its own choice; the PyTorch formats run on torch's threads)."""
    if fmt == "exported-program":
        with open(path, "rb") as f:
            detector = torch.export.load(f).module()

        def run_program(image: Tensor) -> dict[str, Tensor]:
            with torch.no_grad():
                return dict(zip(OUTPUT_NAMES, detector(image)))

        return run_program
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
        images = [sample_image(size, seed=1 + k) for k, size in enumerate(check_image_sizes(model, fmt))]
    run = load_exported(path, fmt)
    summaries = []
    for k, image in enumerate(images):
        with torch.no_grad():
            expected = model([image])[0]
        size = f"{image.shape[1]}x{image.shape[2]}"
        where = f"{name or path} ({fmt}) on check image {k + 1} ({size})"
        try:
            actual = run(image)
        except (AssertionError, RuntimeError) as e:
            limit = " (an exported program takes images whose resized sides exceed 64 pixels)"
            raise ValueError(
                f"{where}: the exported file fails: {str(e).splitlines()[0]}"
                + (limit if fmt == "exported-program" else "")
            ) from e
        summaries.append({"image": size, **compare_detections(expected, actual, where)})
    return summaries


def export_checkpoint(
    weights: str | Path,
    out: str | Path,
    fmt: str,
    image_size: Sequence[int] | None = None,
    opset: int | None = None,
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
    out = _output_file(out, fmt)
    model, _, _ = load_model(weights, device="cpu", overrides=overrides)
    staged = out.with_name(f".{out.name}.{os.getpid()}.export{out.suffix}")
    try:
        export_model(model, staged, fmt, image_size, opset)
        checks = check_export(model, staged, fmt, name=out) if check else []
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    alpha = getattr(model.roi_heads, "alpha", None)
    return ExportResult(out, fmt, alpha, image_size or default_image_size(model), checks)
