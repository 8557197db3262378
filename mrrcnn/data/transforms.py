"""Joint image/target transforms for detection samples, in the style of torchvision's reference scripts.

Resizing and normalisation are left to the model (``GeneralizedRCNNTransform``).
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
