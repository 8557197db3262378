"""The model's input transform in ``scale`` mode: every image multiplied by one factor, so that a pixel
keeps one physical size from training to inference, as microscopy tools assume (``model.resize: scale``).

torchvision's ``GeneralizedRCNNTransform`` (``min_max`` mode) resizes each image so that its shorter side is
``min_size``: a whole 1024-pixel image seen by a model trained on 256-pixel tiles is shrunk four times.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes


class ScaleTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` that resizes every image by ``scale`` (bilinear, as torchvision), its
    target's boxes and masks with it; normalisation, batching and postprocessing are torchvision's.

    Args:
        scale: the factor, > 0; 1 leaves images at their size.
        image_mean, image_std: per-channel normalisation, as torchvision's.
        size_divisible: batch padding, as torchvision's.
    """

    def __init__(
        self, scale: float, image_mean: list[float], image_std: list[float], size_divisible: int = 32
    ) -> None:
        if not scale > 0:
            raise ValueError(f"model.scale must be > 0, got {scale!r}")
        super().__init__(1, 1, image_mean, image_std, size_divisible)
        self.scale = float(scale)

    def resize(self, image: Tensor, target: dict[str, Any] | None = None) -> tuple[Tensor, Any]:
        """``image`` (``Tensor[C, H, W]``) times ``scale``: ``Tensor[C, floor(H * scale), floor(W * scale)]``."""
        if self.scale == 1.0:
            return image, target
        size = image.shape[-2:]
        image = F.interpolate(
            image[None],
            scale_factor=self.scale,
            mode="bilinear",
            recompute_scale_factor=True,
            align_corners=False,
        )[0]
        if target is None:
            return image, target
        target["boxes"] = resize_boxes(target["boxes"], size, image.shape[-2:])
        if "masks" in target:
            masks = target["masks"][:, None].float()
            target["masks"] = F.interpolate(masks, size=image.shape[-2:])[:, 0].byte()
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale:g}, mean={self.image_mean}, std={self.image_std})"
