"""A direct, loop-by-loop reading of the paper's eqs. 1-5: slow, and the tests' oracle for the fast path.

Geometry is done in Python floats (float64); the arithmetic on features and masks stays in torch so that
autograd through it gives reference gradients too. Conventions are those documented in
:func:`mrrcnn.ops.shape_aware_roi_align`.
"""

from __future__ import annotations

import math

from torch import Tensor


def _bilinear(plane: Tensor, y: float, x: float) -> Tensor:
    """Eq. 1: ``f(a, b) = sum_jk w(a, b, j, k) F(j, k)`` with torchvision's RoIAlign border rule.

    ``plane`` is ``Tensor[C, H, W]``; returns ``Tensor[C]``. A point more than one pixel outside the map
    reads 0; one within a pixel of the border is clamped onto it.
    """
    height, width = plane.shape[-2:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return plane.new_zeros(plane.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * plane[:, y_low, x_low]
        + hy * lx * plane[:, y_low, x_high]
        + ly * hx * plane[:, y_high, x_low]
        + ly * lx * plane[:, y_high, x_high]
    )


def _mask_probability(mask: Tensor, u: float, v: float) -> Tensor:
    """Eqs. 3 and 5: the mask read at relative box position (u, v), half-pixel centred, border-clamped."""
    hp, wp = mask.shape
    y = max(v * hp - 0.5, 0.0)
    x = max(u * wp - 0.5, 0.0)
    y0, x0 = min(int(y), hp - 1), min(int(x), wp - 1)
    y1, x1 = min(y0 + 1, hp - 1), min(x0 + 1, wp - 1)
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * mask[y0, x0]
        + (1 - ly) * lx * mask[y0, x1]
        + ly * (1 - lx) * mask[y1, x0]
        + ly * lx * mask[y1, x1]
    )


def shape_aware_roi_align_reference(
    input: Tensor,
    rois: Tensor,
    masks: Tensor | None,
    output_size: tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Reference Shape-aware RoIAlign. ``rois: Tensor[K, 5]``, ``masks: Tensor[K, Hp, Wp]`` or None.

    Returns ``Tensor[K, C, oh, ow]``: for every bin, eq. 4, the mean over its N samples of the bilinear
    feature (eq. 1) times the bilinear mask probability at the same relative place (eqs. 3, 5).
    """
    oh, ow = output_size
    offset = 0.5 if aligned else 0.0
    out = input.new_zeros((rois.shape[0], input.shape[1], oh, ow))
    for k, (b, bx1, by1, bx2, by2) in enumerate(rois.tolist()):
        x1, y1 = bx1 * spatial_scale - offset, by1 * spatial_scale - offset
        roi_w, roi_h = bx2 * spatial_scale - offset - x1, by2 * spatial_scale - offset - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / oh)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / ow)
        count = max(gh * gw, 1)
        bin_h, bin_w = roi_h / oh, roi_w / ow
        for h in range(oh):
            for w in range(ow):
                total = input.new_zeros(input.shape[1])
                for iy in range(gh):
                    for ix in range(gw):
                        a = y1 + h * bin_h + (iy + 0.5) * bin_h / gh
                        c = x1 + w * bin_w + (ix + 0.5) * bin_w / gw
                        sample = _bilinear(input[int(b)], a, c)
                        if masks is not None:
                            u = (w * gw + ix + 0.5) / (ow * gw)
                            v = (h * gh + iy + 0.5) / (oh * gh)
                            sample = sample * _mask_probability(masks[k], u, v)
                        total = total + sample
                out[k, :, h, w] = total / count
    return out
