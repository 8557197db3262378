"""Shape-aware RoIAlign (paper section 3.1, eqs. 1-5) as one sparse, linear map of the features.

For fixed RoIs and masks the operator is linear in the features: every output bin is a weighted sum of
the (at most) ``4 * N`` feature pixels that its ``N`` bilinear samples touch, each weight being
``bilinear coefficient * mask probability at the sample / N``. We build those index/weight lists with
broadcasting and let ``torch.nn.functional.embedding_bag`` (a fused gather + weighted sum over
channels-last rows) do the arithmetic. Autograd through ``embedding_bag`` gives the gradient for the
features (a scatter-add of the same weights) and for the per-entry weights, and from those for the masks.

That is the CPU implementation. CUDA tensors go to the fused Triton kernels of
:mod:`mrrcnn.ops.triton_kernels` (same results), and back to this one where those cannot run.
"""

from __future__ import annotations

import math
import warnings
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

    Batch indices are checked on the CPU only: on a GPU the check would wait for the device. There a RoI
    whose index is not an integer in ``0..B-1`` pools zeros instead.
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
    if boxes.shape[0] and boxes.device.type == "cpu":
        index = boxes[:, 0]
        if bool(((index < 0) | (index >= batch) | (index != index.floor())).any()):
            bad = index[(index < 0) | (index >= batch) | (index != index.floor())][0].item()
            raise ValueError(f"boxes[:, 0] holds batch index {bad}, outside 0..{batch - 1} of input's batch")
    return boxes


def _describe(x: object) -> str:
    return f"Tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _axis_samples(start: Tensor, bin_size: Tensor, bins: int, grid: int, size: int) -> tuple[Tensor, Tensor]:
    """Bilinear taps of the sample coordinates along one axis, with torchvision's RoIAlign border rule.

    Args:
        start, bin_size: ``Tensor[K]``, the RoI's first coordinate and bin size in feature-map pixels.
        bins: output bins along the axis; grid: samples per bin along the axis; size: map size (pixels).

    Returns:
        ``index: LongTensor[K, bins, grid, 2]`` (low and high pixel) and ``weight: Tensor[K, bins, grid, 2]``.
        A sample further than one pixel outside the map gets zero weight; one within a pixel of the border
        reads the border pixel, as in torchvision.
    """
    step = torch.arange(bins, dtype=start.dtype, device=start.device).view(1, bins, 1)
    offset = torch.arange(grid, dtype=start.dtype, device=start.device).view(1, 1, grid) + 0.5
    # Same operation order as torchvision's kernel, so all-ones masks reproduce it to the last bit or so.
    bin_size = bin_size.view(-1, 1, 1)
    coord = start.view(-1, 1, 1) + step * bin_size + offset * bin_size / grid
    inside = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    # Clamped on both sides so that NaN or huge coordinates still give valid (zero-weight) indices.
    low = coord.long().clamp(0, size - 1)
    zero = torch.zeros_like(coord)
    frac = torch.where(inside & (low < size - 1), coord - low, zero)
    index = torch.stack([low, (low + 1).clamp(max=size - 1)], dim=-1)
    weight = torch.stack([torch.where(inside, 1.0 - frac, zero), frac], dim=-1)
    return index, weight


def _bag_entries(
    rois: Tensor,
    masks: Tensor | None,
    map_size: tuple[int, int],
    output_size: tuple[int, int],
    spatial_scale: float,
    grid: tuple[int, int],
    aligned: bool,
) -> tuple[Tensor, Tensor]:
    """Feature-row indices and weights of every (bin, sample, tap) of RoIs that share one sampling grid.

    Args:
        rois: ``Tensor[K, 5]`` in image coordinates; masks: ``Tensor[K, Hp, Wp]`` or None (all ones).
        map_size: (H, W) of the feature map; grid: (gh, gw) samples per bin, the same for these K RoIs.

    Returns:
        ``index: LongTensor[K * oh * ow * gh * gw * 4]`` into the ``[B * H * W, C]`` channels-last rows and
        matching ``weight``, ordered by RoI, then bin, so each bin's ``4 * gh * gw`` entries are contiguous.
    """
    height, width = map_size
    oh, ow = output_size
    gh, gw = grid
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    y_index, y_weight = _axis_samples(y1, roi_h / oh, oh, gh, height)
    x_index, x_weight = _axis_samples(x1, roi_w / ow, ow, gw, width)

    k = rois.shape[0]
    # Entries laid out as [K, oh, ow, gh, 2 (y tap), gw, 2 (x tap)].
    rows = rois[:, 0].long().view(k, 1, 1, 1) * height + y_index
    index = rows.view(k, oh, 1, gh, 2, 1, 1) * width + x_index.view(k, 1, ow, 1, 1, gw, 2)
    weight = y_weight.view(k, oh, 1, gh, 2, 1, 1) * (x_weight.view(k, 1, ow, 1, 1, gw, 2) / (gh * gw))
    if masks is not None:
        # The sample at relative position (u, v) of its box reads the mask at (u * Wp - 0.5, v * Hp - 0.5):
        # exactly bilinear resizing of the mask to the (oh * gh, ow * gw) grid of samples.
        prob = F.interpolate(masks[:, None], size=(oh * gh, ow * gw), mode="bilinear", align_corners=False)
        weight = weight * prob.view(k, oh, gh, ow, gw).permute(0, 1, 3, 2, 4).reshape(k, oh, ow, gh, 1, gw, 1)
    return index.reshape(-1), weight.reshape(-1)


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

    Implementations: on CUDA, fused Triton kernels (:mod:`mrrcnn.ops.triton_kernels`); elsewhere, and on
    CUDA where Triton is missing or cannot take the input (one warning per process), a gather through
    ``embedding_bag`` (:func:`shape_aware_roi_align_embedding_bag`). The Triton backward adds with atomics,
    so it is not bitwise reproducible. Under ``torch.use_deterministic_algorithms(True)``, when the
    features need a gradient and the masks do not, CUDA takes the ``embedding_bag`` path, whose backward
    is deterministic; when the masks need one, the Triton backward raises PyTorch's nondeterminism error
    naming ``shape_aware_roi_align_backward`` (a warning with ``warn_only=True``), as the
    ``embedding_bag`` path's mask gradient (``F.interpolate``'s CUDA backward) would too.

    Args:
        input: ``Tensor[B, C, H, W]`` features, in any memory layout. Both paths use channels-last input
            in place and copy any other to channels-last.
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
    rois, masks, size = validate_arguments(input, boxes, masks, output_size, spatial_scale)
    if input.device.type == "cuda":
        kernels = _triton_kernels(input)
        if kernels is not None and not _deterministic_route(input, masks):
            # The kernels read a tile of channels at a time: from NCHW maps that is one strided load
            # per channel, slower than copying the map to channels-last first (ours on NCHW against
            # channels-last features in docs/benchmarks/ops_cuda.md).
            return kernels.shape_aware_roi_align_rois(
                input.contiguous(memory_format=torch.channels_last),
                rois,
                masks,
                size,
                spatial_scale,
                sampling_ratio,
                aligned,
            )
        if input.dtype == torch.bfloat16:
            # This path fails for bfloat16 on CUDA (embedding_bag with per-sample weights): float32 it is.
            out = _embedding_bag(input.float(), rois, masks, size, spatial_scale, sampling_ratio, aligned)
            return out.to(torch.bfloat16)
    return _embedding_bag(input, rois, masks, size, spatial_scale, sampling_ratio, aligned)


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
    if not (isinstance(spatial_scale, (int, float)) and math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(f"spatial_scale must be a positive finite number, got {spatial_scale!r}")
    rois = convert_to_rois(boxes, input)
    if masks is not None:
        if not isinstance(masks, Tensor) or masks.dim() != 3 or min(masks.shape[1:], default=0) < 1:
            raise ValueError(f"masks must be a Tensor[K, Hp, Wp] with Hp, Wp >= 1, got {_describe(masks)}")
        if masks.shape[0] != rois.shape[0]:
            raise ValueError(
                f"masks holds {masks.shape[0]} maps for {rois.shape[0]} boxes; it needs one per box"
            )
        if masks.device != input.device:
            raise ValueError(f"masks is on {masks.device}, input on {input.device}")
    return rois, masks, size


_fallback_warned = False


def _triton_kernels(input: Tensor) -> ModuleType | None:
    """:mod:`mrrcnn.ops.triton_kernels` if it can pool from CUDA ``input``, else None with one warning per
    process naming the reason."""
    global _fallback_warned
    try:
        from . import triton_kernels
    except ImportError as error:
        reason = f"Triton cannot be imported ({error})"
    else:
        reason = triton_kernels.unusable_reason(input)
        if reason is None:
            return triton_kernels
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"shape_aware_roi_align: {reason}; using the slower embedding_bag path on {input.device.type}",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


def _deterministic_route(input: Tensor, masks: Tensor | None) -> bool:
    """Whether deterministic algorithms are requested and only the features need a gradient: the one case
    where the ``embedding_bag`` path's CUDA backward is deterministic and the Triton one is not."""
    return (
        torch.are_deterministic_algorithms_enabled()
        and torch.is_grad_enabled()
        and input.requires_grad
        and not (masks is not None and masks.requires_grad)
    )


def shape_aware_roi_align_embedding_bag(
    input: Tensor,
    boxes: BoxesLike,
    masks: Tensor | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """:func:`shape_aware_roi_align` through ``embedding_bag`` on any device (the CPU path; on CUDA the
    reference the benchmarks compare the kernels with). Channels-last result."""
    rois, masks, size = validate_arguments(input, boxes, masks, output_size, spatial_scale)
    return _embedding_bag(input, rois, masks, size, spatial_scale, sampling_ratio, aligned)


def _embedding_bag(
    input: Tensor,
    rois: Tensor,
    masks: Tensor | None,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """The ``embedding_bag`` formulation on validated arguments (see the module's docstring)."""
    oh, ow = output_size
    k = rois.shape[0]
    batch, channels, height, width = input.shape
    # Geometry in at least float32 (float64 for float64 input), as torchvision computes it in the input's type.
    geometry = torch.promote_types(input.dtype, torch.float32)
    rois = rois.to(geometry)
    if masks is not None:
        masks = masks.to(geometry)
    if k:
        # Batch indices are unchecked off the CPU (see convert_to_rois): a bad one becomes a NaN box on
        # image 0, which pools zeros. Built from scalars: a tensor made from a list would synchronise.
        index = rois[:, :1]
        valid = (index >= 0) & (index < batch) & (index == index.floor())
        rois = torch.cat([torch.where(valid, index, 0.0), torch.where(valid, rois[:, 1:], math.nan)], dim=1)

    groups = _sampling_groups(rois, (oh, ow), spatial_scale, sampling_ratio, aligned)
    indices, weights, bag_sizes, order = [], [], [], []
    for grid, members in groups:
        if members is not None:
            order.append(members)
        group_rois = rois if members is None else rois[members]
        group_masks = masks if members is None or masks is None else masks[members]
        n = group_rois.shape[0]
        bag_sizes.append(torch.full((n * oh * ow,), 4 * grid[0] * grid[1], device=input.device))
        if grid[0] * grid[1] == 0 or n == 0:
            continue
        index, weight = _bag_entries(
            group_rois, group_masks, (height, width), (oh, ow), spatial_scale, grid, aligned
        )
        indices.append(index)
        weights.append(weight)

    sizes = torch.cat(bag_sizes)
    offsets = torch.cumsum(sizes, 0) - sizes
    index = torch.cat(indices) if indices else offsets.new_zeros(0)
    weight = torch.cat(weights).to(input.dtype) if weights else input.new_zeros(0)
    # A view, not a copy, when the input is already channels-last.
    table = input.permute(0, 2, 3, 1).contiguous().view(batch * height * width, channels)
    out = F.embedding_bag(index, table, offsets, mode="sum", per_sample_weights=weight)
    out = out.view(k, oh * ow * channels)
    if order:
        order = torch.cat(order)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(k, device=order.device)
        out = out[inverse]
    return out.view(k, oh, ow, channels).permute(0, 3, 1, 2)


def _sampling_groups(
    rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool
) -> list[tuple[tuple[int, int], Tensor | None]]:
    """Split RoIs by their (gh, gw) sampling grid so each group's entries can be built by broadcasting.

    Returns ``[((gh, gw), members)]`` with ``members`` a ``LongTensor`` of RoI indices, or None for
    "all RoIs, in order" (always the case with a fixed ``sampling_ratio``).
    """
    if sampling_ratio > 0:
        return [((sampling_ratio, sampling_ratio), None)]
    if rois.shape[0] == 0:
        return [((0, 0), None)]
    offset = 0.5 if aligned else 0.0
    roi_w = (rois[:, 3] * spatial_scale - offset) - (rois[:, 1] * spatial_scale - offset)
    roi_h = (rois[:, 4] * spatial_scale - offset) - (rois[:, 2] * spatial_scale - offset)
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    # Boxes with non-finite coordinates get no samples rather than an absurd grid.
    gh = torch.nan_to_num(torch.ceil(roi_h / output_size[0]), nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
    gw = torch.nan_to_num(torch.ceil(roi_w / output_size[1]), nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
    grids = torch.stack([gh, gw], dim=1).long()
    unique, inverse = torch.unique(grids, dim=0, return_inverse=True)
    if unique.shape[0] == 1:
        return [(tuple(unique[0].tolist()), None)]
    members = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=unique.shape[0]).tolist()
    return [(tuple(grid), group) for grid, group in zip(unique.tolist(), torch.split(members, counts))]


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
