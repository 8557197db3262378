"""FPN multi-level pooling with (Shape-aware) RoIAlign, mirroring ``torchvision.ops.MultiScaleRoIAlign``."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from .shape_aware_roi_align import shape_aware_roi_align


def level_scales(features: list[Tensor], image_shapes: list[tuple[int, int]]) -> list[float]:
    """Each feature map's scale relative to the largest image, rounded to a power of two as torchvision
    rounds it (``Tensor[B, C, H_l, W_l]`` maps of an FPN, images as (height, width))."""
    if not image_shapes:
        raise ValueError("image_shapes is empty: pooling needs the size of at least one image")
    height = max(shape[0] for shape in image_shapes)
    return [2.0 ** round(math.log2(feature.shape[-2] / height)) for feature in features]


class MultiScaleShapeAwareRoIAlign(MultiScaleRoIAlign):
    """``torchvision.ops.MultiScaleRoIAlign`` that also takes one mask per box.

    Same arguments, same FPN level mapping (canonical scale 224 at level 4, eq. 1 of the FPN paper), same
    ``aligned=False`` RoIAlign; each box is pooled from its level by :func:`shape_aware_roi_align`, with its
    mask when masks are given and as plain RoIAlign when they are not.
    """

    def forward(  # type: ignore[override]
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
        masks: Tensor | list[Tensor] | None = None,
    ) -> Tensor:
        """Pool ``Tensor[K, C, oh, ow]`` features for the ``K = sum L_i`` boxes.

        Args:
            x: feature maps ``Tensor[B, C, H_l, W_l]`` by name; those in ``featmap_names`` are used.
            boxes: one ``Tensor[L_i, 4]`` (x1, y1, x2, y2) per image, in the image's (resized) pixels.
            image_shapes: (height, width) of each image, to infer every level's scale.
            masks: None, ``Tensor[K, Hp, Wp]`` or one ``Tensor[L_i, Hp, Wp]`` per image: instance
                probabilities, each covering its box.
        """
        features = [v for k, v in x.items() if k in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self.scales = level_scales(features, image_shapes)
            self.map_levels = LevelMapper(
                int(-math.log2(self.scales[0])),
                int(-math.log2(self.scales[-1])),
                canonical_scale=self.canonical_scale,
                canonical_level=self.canonical_level,
            )
        if isinstance(masks, (list, tuple)):
            if len(masks) != len(boxes):
                raise ValueError(f"masks: {len(masks)} per-image tensors for {len(boxes)} images of boxes")
            masks = torch.cat(list(masks)) if masks else None
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        if masks is not None and masks.shape[0] != rois.shape[0]:
            raise ValueError(
                f"masks holds {masks.shape[0]} maps for {rois.shape[0]} boxes; it needs one per box"
            )
        pool = {"output_size": self.output_size, "sampling_ratio": self.sampling_ratio}
        if len(features) == 1:
            return shape_aware_roi_align(features[0], rois, masks, spatial_scale=self.scales[0], **pool)

        levels = self.map_levels(boxes)
        first = features[0]
        result = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size)).contiguous(
            memory_format=torch.channels_last
        )
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            in_level = torch.where(levels == level)[0]
            level_masks = None if masks is None else masks[in_level]
            pooled = shape_aware_roi_align(feature, rois[in_level], level_masks, spatial_scale=scale, **pool)
            # Under autocast levels may come out in different dtypes.
            result[in_level] = pooled.to(result.dtype)
        return result
