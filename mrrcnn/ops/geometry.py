"""Where RoIAlign samples: each RoI's image, first sample corner, bin size and sampling grid.

The one place that turns boxes into sampling geometry, for both implementations of Shape-aware RoIAlign:
the gather (:mod:`mrrcnn.ops.gather`, the CPU kernel and the CUDA fallback) builds its tables from it and
the Triton kernels (:mod:`mrrcnn.ops.triton_kernels`) read one row of it per RoI. The rules are
torchvision's RoIAlign's, in its order of operations (so that all-ones masks reproduce it to the last bit
or so): the half-pixel shift of ``aligned=True``, the minimum RoI side of 1 pixel when ``aligned=False``,
and the adaptive grid ``ceil(roi_size / output_size)`` when ``sampling_ratio <= 0``.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The columns of roi_geometry's rows.
IMAGE, Y1, X1, BIN_H, BIN_W, GRID_H, GRID_W, VALID = range(8)
# An adaptive grid this large or larger (or not finite) samples nothing: int32 indices in the kernels.
MAX_GRID = 2.0**31


def geometry_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sampling is computed in: float32, or float64 for float64 features (as torchvision)."""
    return torch.promote_types(dtype, torch.float32)


def roi_geometry(
    rois: Tensor,
    batch: int,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    dtype: torch.dtype,
) -> Tensor:
    """The sampling geometry of each RoI, ``Tensor[K, 8]`` in ``dtype``, its columns:

    ``IMAGE`` (the batch index, 0 where invalid), ``Y1, X1`` (the RoI's corner in feature-map pixels),
    ``BIN_H, BIN_W`` (bin size, feature-map pixels), ``GRID_H, GRID_W`` (samples per bin along each axis),
    ``VALID`` (1, or 0 where the batch index is not an integer in ``0..batch-1``: such a RoI pools zeros).

    Args:
        rois: ``Tensor[K, 5]`` rows (batch index, x1, y1, x2, y2) in image pixels.
        batch: the feature map's batch size; output_size: (oh, ow) bins.
        spatial_scale: feature-map pixels per image pixel; sampling_ratio: samples per bin along each axis,
            ``<= 0`` for the adaptive grid (0 samples for a non-finite or huge box, and for invalid RoIs).
    """
    rois = rois.to(dtype)
    index = rois[:, 0]
    # (x1, y1, x2, y2) in feature-map pixels; subtracting a zero offset would change no bit.
    corners = rois[:, 1:] * spatial_scale
    if aligned:
        corners = corners - 0.5
    size = corners[:, 2:] - corners[:, :2]
    if not aligned:
        size = size.clamp(min=1.0)
    bin_h, bin_w = size[:, 1] / output_size[0], size[:, 0] / output_size[1]
    valid = (index >= 0) & (index < batch) & (index == index.floor())
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(index, float(sampling_ratio))
    else:
        grid_h, grid_w = _adaptive_grid(torch.stack([bin_h, bin_w], dim=1), valid[:, None]).unbind(1)
    image = torch.where(valid, index, 0.0)
    return torch.stack(
        [image, corners[:, 1], corners[:, 0], bin_h, bin_w, grid_h, grid_w, valid.to(dtype)], dim=1
    )


def _adaptive_grid(bin_size: Tensor, valid: Tensor) -> Tensor:
    """``ceil(bin_size)`` samples, 0 for invalid RoIs and NaN, infinite, non-positive or huge sizes."""
    grid = torch.ceil(bin_size)
    return torch.where(valid & (grid > 0) & (grid < MAX_GRID), grid, 0.0)
