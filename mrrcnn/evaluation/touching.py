"""Which instances touch another: the crowding that matters for round objects such as nuclei, whose boxes
overlap little even when their masks meet (so box-IoU "huddling" misses them).

The gap between two masks is the Euclidean distance between their closest pixel centres minus one: 0 for
masks with pixels side by side, 1 with one background pixel between them, and so on. An instance touches
when its gap to another instance's mask is at most ``distance`` pixels (overlapping masks touch).
"""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
from scipy.ndimage import distance_transform_edt

TOUCH_DISTANCE = 2


def touching(rles: list[dict], distance: int = TOUCH_DISTANCE) -> np.ndarray:
    """``bool[N]``: whether each of one image's instances comes within ``distance`` pixels of another's mask.

    Args:
        rles: the instances' COCO RLEs (one image).
        distance: the largest gap, in pixels, at which two masks touch.

    Only pairs whose boxes, grown by ``distance + 1``, overlap are compared, each on the window of its two
    boxes: the work follows the instances, not the image's area.
    """
    count = len(rles)
    result = np.zeros(count, dtype=bool)
    if count < 2:
        return result
    boxes = np.asarray(mask_util.toBbox(rles), dtype=np.int64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    reach = distance + 1
    crops = [_crop(rle, box) for rle, box in zip(rles, boxes)]
    near = (boxes[:, None, 0] - reach < boxes[None, :, 2]) & (boxes[None, :, 0] - reach < boxes[:, None, 2])
    near &= (boxes[:, None, 1] - reach < boxes[None, :, 3]) & (boxes[None, :, 1] - reach < boxes[:, None, 3])
    for i, j in zip(*np.nonzero(np.triu(near, 1))):
        if result[i] and result[j]:
            continue
        if _gap(crops[i], boxes[i], crops[j], boxes[j]) <= distance:
            result[i] = result[j] = True
    return result


def _crop(rle: dict, box: np.ndarray) -> np.ndarray:
    """The mask of ``rle`` within its box (x1, y1, x2, y2)."""
    return mask_util.decode(rle)[box[1] : box[3], box[0] : box[2]].astype(bool)


def _gap(a: np.ndarray, box_a: np.ndarray, b: np.ndarray, box_b: np.ndarray) -> float:
    """Distance between the closest pixel centres of two masks, minus one (negative if they overlap)."""
    x0, y0 = min(box_a[0], box_b[0]), min(box_a[1], box_b[1])
    x1, y1 = max(box_a[2], box_b[2]), max(box_a[3], box_b[3])
    window_a = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    window_b = np.zeros_like(window_a)
    window_a[box_a[1] - y0 : box_a[3] - y0, box_a[0] - x0 : box_a[2] - x0] = a
    window_b[box_b[1] - y0 : box_b[3] - y0, box_b[0] - x0 : box_b[2] - x0] = b
    if not (window_a.any() and window_b.any()):
        return np.inf
    if (window_a & window_b).any():
        return -1.0
    return float(distance_transform_edt(~window_a)[window_b].min()) - 1.0
