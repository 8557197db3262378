"""torchvision's detection code made traceable by ``torch.export``, for the time of an export only.

``torch.export`` records one graph for every input: Python branches on tensor data or on symbolic sizes
either guard the graph to the example input or fail. Five of torchvision's functions stand in the way of
exporting its Mask R-CNN (pytorch/vision#9321, #9462), and so of ours; while :func:`traceable_detection`
is active they are replaced by equivalents without such branches:

- ``torchvision.ops.boxes.batched_nms`` chooses per-class NMS or the coordinate offset trick by the
  number of boxes, and returns early for none: :func:`batched_nms` always offsets (one NMS call, in
  float64 but for ONNX);
- the transform's ``_resize_image_and_masks`` picks the scale with Python's ``min`` over the image
  sides: :func:`resize_image` uses ``torch.sym_min`` (no guard on portrait or landscape);
- its ``batch_images`` pads the batch to a multiple of 32 with ``int(math.ceil(...))``, which fixes the
  size: :func:`batch_images` pads with symbolic arithmetic;
- ``BoxCoder.decode`` reshapes only when there are boxes: :func:`decode` reshapes statically;
- ``paste_masks_in_image`` loops over the detections in Python: :func:`paste_masks` pastes them all at
  once, bilinear resizing written as ``rows @ mask @ columns^T`` (it is separable), with the source indices
  ``F.interpolate`` computes.

And torchvision's fake kernel of ``torchvision::nms`` says NMS keeps at least 2 boxes (the default of the
deprecated ``create_unbacked_symint``), which an exported model then asserts at run time: an image with
0 or 1 detections would fail. :func:`traceable_detection` registers one that allows any count (for
tracing only: the kernel that computes NMS is torchvision's).

The replacements compute what torchvision's functions do, to float rounding (tested), and are used by
``mrrcnn export`` only: eager code runs torchvision's own, so eager outputs are unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.models.detection.transform as detection_transform
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import expand_boxes
from torchvision.ops import boxes as box_ops
from torchvision.ops import nms


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """``torchvision.ops.batched_nms`` by the coordinate offset trick alone: boxes of different ``idxs``
    are moved apart by more than any box is wide, so that one NMS never lets them suppress each other.

    In float64, where the moved boxes stay exact (91 classes of a 1333-pixel image move them by up to
    121,000 pixels, where float32 resolves 1/128 of a pixel: enough to tip a near-threshold suppression
    against torchvision's per-class NMS); in float32 for ONNX, whose NonMaxSuppression takes no other."""
    dtype = boxes.dtype if torch.onnx.is_in_onnx_export() else torch.float64
    boxes = boxes.to(dtype)
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores.to(dtype), iou_threshold)


def resize_image(
    image: Tensor,
    self_min_size: int,
    self_max_size: int,
    target: dict[str, Tensor] | None = None,
    fixed_size: tuple[int, int] | None = None,
) -> tuple[Tensor, dict[str, Tensor] | None]:
    """The transform's ``_resize_image_and_masks`` for an image without target: the shorter side to
    ``self_min_size``, the longer at most ``self_max_size``, the scale by ``torch.sym_min``."""
    if target is not None or fixed_size is not None:
        return _ORIGINALS["resize"](image, self_min_size, self_max_size, target, fixed_size)
    height, width = image.shape[-2:]
    scale = torch.sym_min(
        self_min_size / torch.sym_min(height, width), self_max_size / torch.sym_max(height, width)
    )
    resized = F.interpolate(
        image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )
    return resized[0], None


def batch_images(self: Any, images: list[Tensor], size_divisible: int = 32) -> Tensor:
    """``GeneralizedRCNNTransform.batch_images`` for one image: ``Tensor[1, C, H', W']``, the image padded
    with zeros at the bottom and right to the next multiples of ``size_divisible``."""
    if len(images) != 1:
        return _ORIGINALS["batch"](self, images, size_divisible)
    height, width = images[0].shape[-2:]
    pad_height = (height + size_divisible - 1) // size_divisible * size_divisible - height
    pad_width = (width + size_divisible - 1) // size_divisible * size_divisible - width
    return F.pad(images[0], (0, pad_width, 0, pad_height))[None]


def decode(self: Any, rel_codes: Tensor, boxes: list[Tensor]) -> Tensor:
    """``BoxCoder.decode`` of ``rel_codes: Tensor[N, 4 k]`` (as every caller passes them) at the ``N`` boxes
    of ``boxes`` (one ``Tensor[N_i, 4]`` per image): ``Tensor[N, k, 4]``, also for ``N = 0``."""
    reference = torch.cat(boxes, dim=0)
    decoded = self.decode_single(rel_codes, reference)
    return decoded.reshape(reference.shape[0], decoded.shape[-1] // 4, 4)


def _paste_weights(start: Tensor, length: Tensor, size: int, cells: int) -> Tensor:
    """``Tensor[D, size, cells]``: the bilinear weights by which image pixel ``p`` (along one axis) reads
    the ``cells`` of a mask resized to ``length`` pixels from pixel ``start`` on (zero outside), with
    ``F.interpolate``'s ``align_corners=False`` source index ``max(cells / length * (p - start + 0.5) -
    0.5, 0)``."""
    scale = cells / length.to(torch.float32)
    offset = torch.arange(size, device=start.device)[None, :] - start[:, None]
    inside = ((offset >= 0) & (offset < length[:, None])).to(torch.float32)
    source = (scale[:, None] * (offset.to(torch.float32) + 0.5) - 0.5).clamp(min=0)
    low = source.to(torch.int64)
    fraction = source - low.to(torch.float32)
    high = torch.where(low < cells - 1, low + 1, low)
    grid = torch.arange(cells, device=start.device)
    weights = (grid == low[..., None]).to(torch.float32) * (1 - fraction)[..., None]
    weights = weights + (grid == high[..., None]).to(torch.float32) * fraction[..., None]
    return weights * inside[..., None]


def paste_masks(masks: Tensor, boxes: Tensor, img_shape: tuple[int, int], padding: int = 1) -> Tensor:
    """torchvision's ``paste_masks_in_image`` without its loop: ``masks: Tensor[D, 1, M, M]`` (each
    covering its box of ``boxes: Tensor[D, 4]``) pasted into ``Tensor[D, 1, H, W]`` images of
    ``img_shape``, each padded by ``padding`` zeros and resized to its (integer, 1 pixel more) box."""
    cells = masks.shape[-1] + 2 * padding
    padded = F.pad(masks, (padding,) * 4)[:, 0].to(torch.float32)
    boxes = expand_boxes(boxes, cells / masks.shape[-1]).to(torch.int64)
    width = (boxes[:, 2] - boxes[:, 0] + 1).clamp(min=1)
    height = (boxes[:, 3] - boxes[:, 1] + 1).clamp(min=1)
    rows = _paste_weights(boxes[:, 1], height, img_shape[0], cells)
    columns = _paste_weights(boxes[:, 0], width, img_shape[1], cells)
    return (rows @ padded @ columns.transpose(1, 2))[:, None].to(masks.dtype)


def _nms_fake(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """The fake kernel of ``torchvision::nms``: ``Int64Tensor[K]``, ``K`` from 0 to the number of boxes."""
    torch._check(dets.dim() == 2 and dets.size(1) == 4, lambda: "boxes should be a Tensor[N, 4]")
    torch._check(scores.dim() == 1 and scores.size(0) == dets.size(0), lambda: "scores should be a Tensor[N]")
    kept = torch.library.get_ctx().new_dynamic_size()
    torch._check(kept <= dets.size(0))
    return dets.new_empty(kept, dtype=torch.long)


_ORIGINALS: dict[str, Any] = {}


@contextlib.contextmanager
def traceable_detection() -> Iterator[None]:
    """Replace torchvision's five functions (see the module's docstring) while the block runs, and register
    the fake kernel of ``torchvision::nms`` that allows any number of kept boxes (it stays registered)."""
    torch.library.register_fake("torchvision::nms", _nms_fake)
    places = {
        "nms": (box_ops, "batched_nms", batched_nms),
        "resize": (detection_transform, "_resize_image_and_masks", resize_image),
        "batch": (detection_transform.GeneralizedRCNNTransform, "batch_images", batch_images),
        "decode": (BoxCoder, "decode", decode),
        "paste": (detection_transform, "paste_masks_in_image", paste_masks),
    }
    for key, (module, name, _) in places.items():
        _ORIGINALS[key] = getattr(module, name)
    try:
        for module, name, replacement in places.values():
            setattr(module, name, replacement)
        yield
    finally:
        for key, (module, name, _) in places.items():
            setattr(module, name, _ORIGINALS[key])
