"""Which instances are "huddled": the paper's crowded instances, made measurable."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

HUDDLE_IOU = 0.3


def huddled(boxes: Tensor, threshold: float = HUDDLE_IOU) -> Tensor:
    """Mark instances whose box overlaps another instance's box of the same image by IoU >= ``threshold``.

    Args:
        boxes: ``Tensor[N, 4]`` (x1, y1, x2, y2) of one image's instances (crowd regions left out).

    Returns:
        ``BoolTensor[N]``; the rest of the instances are "isolated".
    """
    if boxes.shape[0] < 2:
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    iou = box_iou(boxes, boxes)
    iou.fill_diagonal_(0)
    return (iou >= threshold).any(dim=1)
