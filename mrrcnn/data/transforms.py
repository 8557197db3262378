"""Joint image/target transforms for detection samples, in the style of torchvision's reference scripts.

Resizing and normalisation are left to the model (``GeneralizedRCNNTransform``). Intensities are
normalised (``data.intensity``) when the dataset reads the whole image, before these transforms: a crop is
cut from the normalised image, not normalised on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Target = dict[str, Any]


class Compose:
    """Apply transforms ``(image, target) -> (image, target)`` one after the other."""

    def __init__(self, transforms: list[Callable[[Tensor, Target], tuple[Tensor, Target]]]) -> None:
        self.transforms = transforms

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target


class RandomHorizontalFlip:
    """Mirror the image, its boxes and its masks left to right with probability ``p``.

    The draw uses ``torch.rand``, so it follows ``torch.manual_seed`` (and the per-worker seeds of a
    ``DataLoader``).

    Args:
        p: probability of flipping.
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        """Flip ``image`` (``Tensor[C, H, W]``) and ``target``.

        ``target["boxes"]`` (``Tensor[N, 4]``, x1, y1, x2, y2 in pixels) becomes
        (W - x2, y1, W - x1, y2) and ``target["masks"]`` (``Tensor[N, H, W]``) is mirrored; other
        entries are kept. The input target is not modified.
        """
        if torch.rand(1).item() >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        if "boxes" in target:
            boxes = target["boxes"]
            target["boxes"] = torch.stack(
                [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1
            )
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target


class RandomCrop:
    """Cut a random ``size`` x ``size`` window out of the image, its masks and its boxes.

    Large images (microscopy tiles of thousands of pixels) train on windows of the pixels they have,
    rather than being shrunk to the model's input size. Along a side shorter than ``size`` the image is
    kept whole, not padded: padding would add pixels that no real image has. An image no larger than
    ``size`` either way comes back as it is.

    The window's corner is drawn by ``torch.randint``, so it follows ``torch.manual_seed`` (and the
    per-worker seeds of a ``DataLoader``).

    Args:
        size: the window's side, in image pixels (>= 1).
        min_area: mask pixels that an instance cut by the window's edge must keep to stay a target;
            smaller fragments are dropped. An instance the window holds whole stays, however small.

    Raises:
        ValueError: ``size`` below 1 or ``min_area`` below 0.
    """

    def __init__(self, size: int, min_area: int = 16) -> None:
        if size < 1:
            raise ValueError(f"RandomCrop size must be an integer >= 1, got {size}")
        if min_area < 0:
            raise ValueError(f"RandomCrop min_area must be an integer >= 0, got {min_area}")
        self.size, self.min_area = size, min_area

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        """Crop ``image`` (``Tensor[C, H, W]``) and ``target`` to one window.

        ``target["masks"]`` (``UInt8Tensor[N, H, W]``, 0/1) is required; ``target["boxes"]``
        (``Tensor[N, 4]``, x1, y1, x2, y2 in pixels) and ``target["area"]`` (``Tensor[N]``, pixels) are
        optional. Instances with no pixel in the window, and fragments below ``min_area``, are dropped
        from every per-instance entry (each tensor with one row per instance: ``labels``, ``iscrowd``,
        ...). A cut instance's box becomes the tight box of its visible pixels, edges exclusive as
        pycocotools' ``bbox`` (a lone pixel at column x spans x to x + 1), and its area their count; an
        instance the window holds whole keeps its entries, its box moved with the window. Other entries
        (``image_id``) are kept. The target may end up without instances: boxes ``[0, 4]``, masks
        ``[0, h, w]``. The input target is not modified.

        Raises:
            ValueError: the target has no ``masks``.
        """
        if "masks" not in target:
            raise ValueError("RandomCrop needs the instances' masks, target['masks']; the target has none")
        height, width = image.shape[-2:]
        crop_h, crop_w = min(self.size, height), min(self.size, width)
        top = int(torch.randint(height - crop_h + 1, (1,)))
        left = int(torch.randint(width - crop_w + 1, (1,)))
        if (crop_h, crop_w) == (height, width):
            return image, target
        masks = target["masks"]
        window = masks[:, top : top + crop_h, left : left + crop_w]
        visible = window.flatten(1).sum(1, dtype=torch.int64)
        whole = visible == masks.flatten(1).sum(1, dtype=torch.int64)
        keep = (visible > 0) & (whole | (visible >= self.min_area))
        count = len(masks)
        target = {
            key: value[keep] if isinstance(value, Tensor) and value.ndim and len(value) == count else value
            for key, value in target.items()
        }
        target["masks"] = window[keep]
        cut = ~whole[keep]
        if "boxes" in target:
            target["boxes"] = _window_boxes(target["boxes"], target["masks"], cut, left, top)
        if "area" in target:
            area = target["area"].clone()
            area[cut] = visible[keep][cut].to(area.dtype)
            target["area"] = area
        # A copy, not a view: a view would carry the whole image's storage out of a DataLoader worker.
        return image[..., top : top + crop_h, left : left + crop_w].clone(), target


def _window_boxes(boxes: Tensor, masks: Tensor, cut: Tensor, left: int, top: int) -> Tensor:
    """Boxes (``Tensor[N, 4]``, x1, y1, x2, y2) in a window whose corner is (``left``, ``top``) of the
    image: moved with it and clipped to it, those of ``cut`` instances (``BoolTensor[N]``) remade from their
    ``masks`` (``UInt8Tensor[N, h, w]``, each with a pixel)."""
    height, width = masks.shape[-2:]
    moved = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
    moved[:, 0::2] = moved[:, 0::2].clamp(0, width)
    moved[:, 1::2] = moved[:, 1::2].clamp(0, height)
    moved[cut] = _mask_boxes(masks[cut]).to(boxes.dtype)
    return moved


def _mask_boxes(masks: Tensor) -> Tensor:
    """The tight pixel-edge boxes (``Int64Tensor[N, 4]``, x1, y1, x2, y2, x2 and y2 exclusive) of masks
    (``Tensor[N, H, W]``) that each have a pixel."""
    rows, cols = masks.any(2).to(torch.uint8), masks.any(1).to(torch.uint8)
    first_row, first_col = rows.argmax(1), cols.argmax(1)
    end_row = rows.shape[1] - rows.flip(1).argmax(1)
    end_col = cols.shape[1] - cols.flip(1).argmax(1)
    return torch.stack([first_col, first_row, end_col, end_row], 1)
