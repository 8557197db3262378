"""Shape-aware RoIAlign (paper section 3.1, eqs. 1-5): the public function and module.

:func:`shape_aware_roi_align` validates its arguments and calls the registered operator
``torch.ops.mrrcnn.shape_aware_roi_align`` (:mod:`mrrcnn.ops.library`): a gather through
``embedding_bag`` on the CPU (:mod:`mrrcnn.ops.gather`), fused Triton kernels on CUDA
(:mod:`mrrcnn.ops.triton_kernels`), fake kernels for tracing and its own backward operators, so that it
runs under ``torch.compile(fullgraph=True)`` and ``torch.export`` as torchvision's RoIAlign does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import library  # noqa: F401  (registers torch.ops.mrrcnn.*)

BoxesLike = Tensor | list[Tensor] | tuple[Tensor, ...]


def _pair(output_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        size = (output_size, output_size)
    else:
        size = tuple(output_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"output_size must be a positive int or a pair of them, got {output_size!r}")
    return size


def convert_to_rois(boxes: BoxesLike, input: Tensor) -> Tensor:
    """Validate ``boxes`` against ``input`` and return them as ``Tensor[K, 5]`` (batch index, x1, y1, x2, y2).

    Args:
        boxes: ``Tensor[K, 5]``, or one ``Tensor[L_i, 4]`` per image of the batch (image i gets index i).
        input: the ``Tensor[B, C, H, W]`` feature map the boxes will be pooled from.

    Batch indices are checked on the CPU in eager mode only: on a GPU the check would wait for the device,
    and compiled or exported graphs cannot branch on data. There a RoI whose index is not an integer in
    ``0..B-1`` pools zeros instead.
    """
    batch = input.shape[0]
    if isinstance(boxes, (list, tuple)):
        if len(boxes) > batch:
            raise ValueError(f"boxes: {len(boxes)} per-image box tensors for a batch of {batch} feature maps")
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"boxes[{i}] must be a Tensor[L, 4], got {_describe(b)}")
            if b.device != input.device:
                raise ValueError(f"boxes[{i}] is on {b.device}, input on {input.device}")
        if not boxes:
            return input.new_zeros((0, 5))
        ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
        return torch.cat([ids, torch.cat(list(boxes))], dim=1)
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {_describe(boxes)}")
    if boxes.device != input.device:
        raise ValueError(f"boxes is on {boxes.device}, input on {input.device}")
    if boxes.device.type == "cpu" and not torch.compiler.is_compiling() and boxes.shape[0]:
        index = boxes[:, 0]
        if bool(((index < 0) | (index >= batch) | (index != index.floor())).any()):
            bad = index[(index < 0) | (index >= batch) | (index != index.floor())][0].item()
            raise ValueError(f"boxes[:, 0] holds batch index {bad}, outside 0..{batch - 1} of input's batch")
    return boxes


def _describe(x: object) -> str:
    return f"Tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def shape_aware_roi_align(
    input: Tensor,
    boxes: BoxesLike,
    masks: Tensor | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Shape-aware RoIAlign: RoIAlign whose every bilinear sample is weighted by the instance's mask.

    ``out[k, c, h, w] = sum_i f_c(a_i, b_i) * p_k(c_i, d_i) / N`` over the ``N`` samples ``(a_i, b_i)`` of
    bin ``(h, w)`` of RoI ``k`` (paper eq. 4), with ``f`` the bilinear feature (eq. 1) and ``p`` the
    bilinear mask probability (eq. 3) at the same place in the RoI (eq. 5).

    Everything RoIAlign has is as in ``torchvision.ops.roi_align``: sample placement, the adaptive grid
    ``ceil(roi_size / output_size)`` per RoI when ``sampling_ratio <= 0``, the half-pixel shift of
    ``aligned=True``, the minimum RoI size of 1 pixel when ``aligned=False``, the border rule. With
    ``masks=None`` (or all-ones masks) it is plain RoIAlign.

    Mask convention: ``masks[k]`` covers exactly box ``k``. A sample at relative position ``(u, v)`` in
    ``[0, 1]^2`` of its box (relative to the sampled extent, i.e. after the 1-pixel minimum) reads
    ``masks[k]`` bilinearly at continuous pixel coordinates ``(u * Wp - 0.5, v * Hp - 0.5)``, clamped to
    the map's border: what ``F.interpolate(mode="bilinear", align_corners=False)`` does.

    Implementations (the registered operator's kernels): on CUDA, fused Triton kernels; elsewhere, and on
    CUDA where Triton is missing or cannot take the input (one warning per process), a gather through
    ``embedding_bag``. The Triton backward adds with atomics, so it is not bitwise reproducible. Under
    ``torch.use_deterministic_algorithms(True)`` the features' gradient takes the gather on CUDA (its
    sums run in a fixed order); the masks' gradient raises PyTorch's nondeterminism error naming
    ``shape_aware_roi_align_backward`` (a warning with ``warn_only=True``), as the gather's would too
    (``F.interpolate``'s CUDA backward).

    Args:
        input: ``Tensor[B, C, H, W]`` features, in any memory layout: channels-last is read in place,
            any other copied to channels-last first.
        boxes: ``Tensor[K, 5]`` rows (batch index, x1, y1, x2, y2), or a list of ``Tensor[L_i, 4]`` per image,
            in image coordinates. Batch indices are checked on the CPU only (see :func:`convert_to_rois`).
        masks: ``Tensor[K, Hp, Wp]`` instance probabilities (not logits), one per box, or None.
        output_size: (oh, ow) bins, or an int for both.
        spatial_scale: feature-map pixels per image pixel (e.g. 1/16).
        sampling_ratio: samples per bin along each axis; ``<= 0`` for torchvision's adaptive rule.
        aligned: shift box coordinates by -0.5 pixel (pixel-centre convention).

    Returns:
        ``Tensor[K, C, oh, ow]`` in ``input``'s dtype, channels-last, differentiable with respect to
        ``input`` and ``masks``.
    """
    rois, masks, (oh, ow) = validate_arguments(input, boxes, masks, output_size, spatial_scale)
    # Both kernels read channels-last rows; copied here rather than inside the operator, the copy is the
    # one its backward reads (a no-op for the model's maps, which the RoI heads make channels-last).
    input = input.contiguous(memory_format=torch.channels_last)
    return torch.ops.mrrcnn.shape_aware_roi_align(
        input, rois, masks, oh, ow, float(spatial_scale), int(sampling_ratio), bool(aligned)
    )


def validate_arguments(
    input: Tensor,
    boxes: BoxesLike,
    masks: Tensor | None,
    output_size: int | tuple[int, int],
    spatial_scale: float,
) -> tuple[Tensor, Tensor | None, tuple[int, int]]:
    """Check :func:`shape_aware_roi_align`'s arguments (``ValueError`` naming the bad one) without
    synchronising with a GPU; return ``(rois: Tensor[K, 5], masks, (oh, ow))``."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        raise ValueError(f"input must be a Tensor[B, C, H, W], got {_describe(input)}")
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got {input.dtype}")
    size = _pair(output_size)
    # Eager only: compiled, a module's float may be traced as a symbolic one, which math cannot test.
    if not torch.compiler.is_compiling() and not (
        isinstance(spatial_scale, (int, float)) and math.isfinite(spatial_scale) and spatial_scale > 0
    ):
        raise ValueError(f"spatial_scale must be a positive finite number, got {spatial_scale!r}")
    rois = convert_to_rois(boxes, input)
    if masks is not None:
        if not isinstance(masks, Tensor) or masks.dim() != 3 or min(masks.shape[1:], default=0) < 1:
            raise ValueError(f"masks must be a Tensor[K, Hp, Wp] with Hp, Wp >= 1, got {_describe(masks)}")
        if torch.compiler.is_compiling():
            # A check, not a branch: traced, the two counts may be sizes known only at run time.
            torch._check(masks.shape[0] == rois.shape[0])
        elif masks.shape[0] != rois.shape[0]:
            raise ValueError(
                f"masks holds {masks.shape[0]} maps for {rois.shape[0]} boxes; it needs one per box"
            )
        if masks.device != input.device:
            raise ValueError(f"masks is on {masks.device}, input on {input.device}")
    return rois, masks, size


def roi_align(
    input: Tensor,
    boxes: BoxesLike,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Plain RoIAlign through the same fast path: ``torchvision.ops.roi_align``'s signature and result."""
    return shape_aware_roi_align(input, boxes, None, output_size, spatial_scale, sampling_ratio, aligned)


class ShapeAwareRoIAlign(nn.Module):
    """Module form of :func:`shape_aware_roi_align`; ``forward(input, boxes, masks=None)``."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, boxes: BoxesLike, masks: Tensor | None = None) -> Tensor:
        return shape_aware_roi_align(
            input, boxes, masks, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
