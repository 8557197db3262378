"""FPN multi-level pooling with (Shape-aware) RoIAlign, mirroring ``torchvision.ops.MultiScaleRoIAlign``."""

import math

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from .exportable import exportable_shape_aware_roi_align, exporting
from .shape_aware_roi_align import shape_aware_roi_align


def level_scales(features: list[Tensor], image_shapes: list[tuple[int, int]]) -> list[float]:
    """Each feature map's scale relative to the largest image, rounded to a power of two as torchvision
    rounds it (``Tensor[B, C, H_l, W_l]`` maps of an FPN, images as (height, width))."""
    if len(image_shapes) == 0:
        raise ValueError("image_shapes is empty: pooling needs the size of at least one image")
    height = 0
    for shape in image_shapes:
        height = max(height, shape[0])
    return [2.0 ** round(log2(feature.shape[-2] / height)) for feature in features]


def log2(x: float) -> float:
    """``math.log2``, which TorchScript lacks; exact enough for what is rounded (a ratio of feature and
    image sizes is never within rounding of an odd power of sqrt(2))."""
    return math.log(x) / math.log(2.0)


def merge_levels(levels: Tensor, pooled: list[Tensor]) -> Tensor:
    """``Tensor[K, C, oh, ow]`` whose row ``k`` is row ``k`` of the RoIs of level ``levels[k]`` in
    ``pooled`` (one ``Tensor[K_l, C, oh, ow]`` per level, its RoIs in order), by scatter rather than
    ``result[index] = ...``: the in-place indexed copy does not trace to ONNX."""
    first = pooled[0]
    result = first.new_zeros((levels.shape[0], first.shape[1], first.shape[2], first.shape[3]))
    for level, level_pooled in enumerate(pooled):
        index = torch.where(levels == level)[0].view(-1, 1, 1, 1).expand_as(level_pooled)
        result = result.scatter(0, index, level_pooled.to(result.dtype))
    return result


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """One ``Tensor[L_i, 4]`` per image to ``Tensor[K, 5]`` rows (image index, x1, y1, x2, y2)."""
    rois = [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rois)


class MultiScaleShapeAwareRoIAlign(MultiScaleRoIAlign):
    """``torchvision.ops.MultiScaleRoIAlign`` that also takes one mask per box.

    Same arguments, same FPN level mapping (canonical scale 224 at level 4, eq. 1 of the FPN paper), same
    ``aligned=False`` RoIAlign; each box is pooled from its level by :func:`shape_aware_roi_align`, with its
    mask when masks are given and as plain RoIAlign when they are not. Scripted, traced or exported to
    ONNX it pools with :func:`~mrrcnn.ops.exportable.exportable_shape_aware_roi_align` instead (the same
    numbers, from operators those formats have).
    """

    def forward(  # type: ignore[override]
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
        masks: Tensor | None = None,
    ) -> Tensor:
        """Pool ``Tensor[K, C, oh, ow]`` features for the ``K = sum L_i`` boxes.

        Args:
            x: feature maps ``Tensor[B, C, H_l, W_l]`` by name; those in ``featmap_names`` are used.
            boxes: one ``Tensor[L_i, 4]`` (x1, y1, x2, y2) per image, in the image's (resized) pixels.
            image_shapes: (height, width) of each image, to infer every level's scale.
            masks: None or ``Tensor[K, Hp, Wp]``: instance probabilities, each covering its box. In eager
                mode also one ``Tensor[L_i, Hp, Wp]`` per image.
        """
        features: list[Tensor] = []
        for name, feature in x.items():
            if name in self.featmap_names:
                features.append(feature)
        scales, mapper = self._levels(features, image_shapes)
        if exporting():
            return self._exportable_pool(features, boxes, masks, scales, mapper)
        return self._eager_pool(features, boxes, masks, scales, mapper)

    def _levels(
        self, features: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[list[float], LevelMapper]:
        """Every level's scale and the box-to-level mapper, inferred on the first call and kept."""
        scales, mapper = self.scales, self.map_levels
        if scales is None or mapper is None:
            scales = level_scales(features, image_shapes)
            mapper = LevelMapper(
                # Rounded: the scales are powers of two, but log(x) / log(2) may miss an integer by an ulp.
                # (int() because TorchScript's round returns a float.)
                int(round(-log2(scales[0]))),  # noqa: RUF046
                int(round(-log2(scales[-1]))),  # noqa: RUF046
                canonical_scale=self.canonical_scale,
                canonical_level=self.canonical_level,
            )
            self.scales, self.map_levels = scales, mapper
            return scales, mapper
        return scales, mapper

    @torch.jit.unused
    def _eager_pool(
        self,
        features: list[Tensor],
        boxes: list[Tensor],
        masks: Tensor | list[Tensor] | None,
        scales: list[float],
        mapper: LevelMapper,
    ) -> Tensor:
        """Pooling by the fast :func:`shape_aware_roi_align`, in place into a channels-last result."""
        if isinstance(masks, (list, tuple)):
            if len(masks) != len(boxes):
                raise ValueError(f"masks: {len(masks)} per-image tensors for {len(boxes)} images of boxes")
            masks = torch.cat(list(masks)) if masks else None
        rois = boxes_to_rois(boxes)
        if masks is not None and masks.shape[0] != rois.shape[0]:
            raise ValueError(
                f"masks holds {masks.shape[0]} maps for {rois.shape[0]} boxes; it needs one per box"
            )
        pool = {"output_size": self.output_size, "sampling_ratio": self.sampling_ratio}
        if len(features) == 1:
            return shape_aware_roi_align(features[0], rois, masks, spatial_scale=scales[0], **pool)

        levels = mapper(boxes)
        first = features[0]
        result = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size)).contiguous(
            memory_format=torch.channels_last
        )
        for level, (feature, scale) in enumerate(zip(features, scales)):
            in_level = torch.where(levels == level)[0]
            level_masks = None if masks is None else masks[in_level]
            pooled = shape_aware_roi_align(feature, rois[in_level], level_masks, spatial_scale=scale, **pool)
            # Under autocast levels may come out in different dtypes.
            result[in_level] = pooled.to(result.dtype)
        return result

    def _exportable_pool(
        self,
        features: list[Tensor],
        boxes: list[Tensor],
        masks: Tensor | None,
        scales: list[float],
        mapper: LevelMapper,
    ) -> Tensor:
        """Pooling by :func:`exportable_shape_aware_roi_align`, levels merged by scatter."""
        rois = boxes_to_rois(boxes)
        if len(features) == 1:
            return exportable_shape_aware_roi_align(
                features[0], rois, masks, self.output_size, scales[0], self.sampling_ratio
            )
        levels = mapper(boxes)
        pooled: list[Tensor] = []
        for level, feature in enumerate(features):
            in_level = torch.where(levels == level)[0]
            level_masks = None if masks is None else masks[in_level]
            pooled.append(
                exportable_shape_aware_roi_align(
                    feature, rois[in_level], level_masks, self.output_size, scales[level], self.sampling_ratio
                )
            )
        return merge_levels(levels, pooled)
