"""Which instances are "huddled": the paper's crowded instances, made measurable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def huddled_xywh(bboxes: Sequence[Sequence[float]], threshold: float = HUDDLE_IOU) -> Tensor:
    """:func:`huddled` of one image's COCO-style boxes, ``[x, y, width, height]`` each."""
    xywh = torch.tensor(bboxes, dtype=torch.float64).reshape(-1, 4)
    return huddled(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1), threshold)


def most_huddled(coco: Any, image_ids: Sequence[int], count: int) -> list[tuple[int, int]]:
    """The ``count`` images with the most huddled instances, as (position in ``image_ids``, how many).

    Args:
        coco: a ``pycocotools.coco.COCO`` index of the annotations (crowd regions are left out).
        image_ids: the images to choose from; among equally huddled ones the first are chosen.
    """
    counts = [
        int(huddled_xywh([a["bbox"] for a in coco.imgToAnns[i] if not a.get("iscrowd", 0)]).sum())
        for i in image_ids
    ]
    chosen = sorted(range(len(image_ids)), key=lambda i: -counts[i])[:count]
    return [(i, counts[i]) for i in chosen]
