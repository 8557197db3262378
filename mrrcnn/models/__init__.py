"""MR R-CNN, its refining RoI heads, and builders for it and its Mask R-CNN control."""

from .builders import (
    MODELS,
    build_model,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet101_fpn,
    maskrcnn_resnext101_32x8d_fpn,
    maskrcnn_small,
    mrrcnn_resnet50_fpn,
    mrrcnn_resnet101_fpn,
    mrrcnn_resnext101_32x8d_fpn,
    mrrcnn_small,
)
from .mask_refining_rcnn import MaskRefiningRCNN
from .roi_heads import MaskRefiningRoIHeads, fuse_scores, refining_classes

__all__ = [
    "MODELS",
    "MaskRefiningRCNN",
    "MaskRefiningRoIHeads",
    "build_model",
    "fuse_scores",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet101_fpn",
    "maskrcnn_resnext101_32x8d_fpn",
    "maskrcnn_small",
    "mrrcnn_resnet50_fpn",
    "mrrcnn_resnet101_fpn",
    "mrrcnn_resnext101_32x8d_fpn",
    "mrrcnn_small",
    "refining_classes",
]
