"""Shape-aware RoIAlign written with operators that TorchScript and ONNX have, for exported models.

For a fixed ``sampling_ratio = s`` the ``s x s`` samples of every bin of RoIAlign are exactly the bin
centres of RoIAlign on the ``s`` times finer grid ``(oh * s, ow * s)`` with one sample per cell, and the
mask value each sample reads (docs/method.md, eq. 5) is the mask resized bilinearly to that grid
(``align_corners=False``). So

    SaRoIAlign(F, B, P) = AvgPool_s(RoIAlign_{oh*s x ow*s, 1 sample}(F, B) * Resize_{oh*s x ow*s}(P))

which is ONNX ``RoiAlign``, ``Resize``, ``Mul`` and ``AveragePool`` (``torchvision.ops.roi_align``,
``F.interpolate``, ``*`` and ``F.avg_pool2d`` in PyTorch and TorchScript). Eager code keeps the faster
:func:`~mrrcnn.ops.shape_aware_roi_align`; the model switches to this form only while it is scripted,
traced or exported (:func:`exporting`).

An adaptive ``sampling_ratio <= 0`` gives every RoI its own grid, ``ceil(roi_size / output_size)``,
so the fine grid (and the mask's resized size) would depend on each box: it has no such form and is
refused. Without masks it is plain RoIAlign, which TorchScript and ONNX support with any sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align as torchvision_roi_align


@torch.jit.unused
def _tracing_or_onnx_export() -> bool:
    # Not scriptable (torch.onnx), hence behind torch.jit.unused; only reached outside TorchScript.
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def exporting() -> bool:
    """True while the model is being scripted (and when it runs as TorchScript), traced or exported to
    ONNX: then RoI pooling takes the exportable form, otherwise the faster eager one."""
    if torch.jit.is_scripting():
        return True
    return _tracing_or_onnx_export()


def exportable_shape_aware_roi_align(
    input: Tensor,
    rois: Tensor,
    masks: Tensor | None,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool = False,
) -> Tensor:
    """:func:`~mrrcnn.ops.shape_aware_roi_align` as RoIAlign on the fine grid x resized mask, average-pooled.

    Args:
        input: ``Tensor[B, C, H, W]`` features.
        rois: ``Tensor[K, 5]`` rows (batch index, x1, y1, x2, y2) in image coordinates.
        masks: ``Tensor[K, Hp, Wp]`` probabilities, each covering its box, or None (plain RoIAlign).
        output_size: (oh, ow) bins.
        spatial_scale: feature-map pixels per image pixel.
        sampling_ratio: samples per bin along each axis; must be > 0 when ``masks`` is given.
        aligned: shift box coordinates by -0.5 pixel.

    Returns:
        ``Tensor[K, C, oh, ow]``, equal to ``shape_aware_roi_align`` to float rounding.
    """
    if masks is None:
        return torchvision_roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
    if sampling_ratio <= 0:
        raise ValueError(
            f"Shape-aware RoIAlign with sampling_ratio={sampling_ratio} (adaptive: a sampling grid per box) "
            "has no exportable form; use a fixed sampling_ratio > 0"
        )
    fine = [output_size[0] * sampling_ratio, output_size[1] * sampling_ratio]
    # One sample at the centre of each fine cell: the s x s samples of every coarse bin.
    samples = torchvision_roi_align(input, rois, fine, spatial_scale, 1, aligned)
    weights = F.interpolate(masks[:, None].to(samples.dtype), size=fine, mode="bilinear", align_corners=False)
    # The mean over all s * s samples of a bin (eq. 4 divides by N, not by the mask's sum).
    return F.avg_pool2d(samples * weights, kernel_size=sampling_ratio, stride=sampling_ratio)
