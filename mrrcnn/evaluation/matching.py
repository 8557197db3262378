"""Instance matching, the metrics microscopy compares segmentations by: stardist's ``matching`` and
``matching_dataset``, cellpose's ``metrics``, the Data Science Bowl 2018 and the NeurIPS 2022 cell
segmentation challenge (docs/method.md, "Matching metrics and the touching split").

Per image, ground-truth and predicted instances are matched one to one by mask IoU (optimal assignment);
a pair matches at threshold ``t`` when its IoU is at least ``t``. Counts are summed over images before any
ratio is taken, as stardist's ``matching_dataset(by_image=False)`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pycocotools.mask as mask_util
from scipy.optimize import linear_sum_assignment

from ..inference.detections import crop_rle

# stardist's and cellpose's default thresholds; 0.5 first: above it a match is unique.
THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))
# stardist's names, in its order.
COUNTS = ("tp", "fp", "fn")
RATIOS = ("precision", "recall", "accuracy", "f1", "mean_matched_score", "panoptic_quality")


@dataclass
class MatchCounts:
    """Matching counts at each threshold, summed over the images added.

    Attributes:
        thresholds: the IoU thresholds.
        tp, fp, fn: per threshold, matched pairs, unmatched predictions, unmatched ground-truth instances.
        matched_iou: per threshold, the sum of the matched pairs' IoU.
    """

    thresholds: Sequence[float] = THRESHOLDS
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    matched_iou: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.tp, self.fp, self.fn = (np.zeros(len(self.thresholds), np.int64) for _ in range(3))
        self.matched_iou = np.zeros(len(self.thresholds))

    def add(self, iou: np.ndarray, in_subset: np.ndarray | None = None) -> None:
        """Add one image's matching, from the IoU of its ground truth (rows) and predictions (columns).

        With ``in_subset`` (``bool[T]``, the ground-truth instances of a subset) only those count: pairs
        of other instances are left out, and an unmatched prediction is a false positive when the instance
        it overlaps most is in the subset, or it overlaps none.
        """
        n_true, n_pred = iou.shape
        owner = iou.argmax(0) if n_true else np.zeros(n_pred, np.int64)
        owned = (
            np.ones(n_pred, bool) if in_subset is None else (iou.max(0, initial=0) == 0) | in_subset[owner]
        )
        wanted = np.ones(n_true, bool) if in_subset is None else in_subset
        for k, threshold in enumerate(self.thresholds):
            rows, cols = match(iou, threshold)
            counted = wanted[rows]
            unmatched = np.ones(n_pred, bool)
            unmatched[cols] = False
            self.tp[k] += int(counted.sum())
            self.fp[k] += int((unmatched & owned).sum())
            self.fn[k] += int(wanted.sum() - counted.sum())
            self.matched_iou[k] += float(iou[rows[counted], cols[counted]].sum())

    def metrics(self) -> dict[str, dict[str, float]]:
        """By threshold (``"0.5"``, ...), stardist's metrics: ``tp``, ``fp``, ``fn`` (counts) and
        ``precision``, ``recall``, ``accuracy``, ``f1``, ``mean_matched_score``, ``panoptic_quality``
        (fractions in [0, 1]; 0 where the denominator is 0, as stardist)."""
        result = {}
        for k, threshold in enumerate(self.thresholds):
            tp, fp, fn, iou = int(self.tp[k]), int(self.fp[k]), int(self.fn[k]), float(self.matched_iou[k])
            result[f"{threshold:g}"] = {
                "tp": tp,
                "fp": fp,
                "fn": fn,
                "precision": _ratio(tp, tp + fp),
                "recall": _ratio(tp, tp + fn),
                "accuracy": _ratio(tp, tp + fp + fn),
                "f1": _ratio(2 * tp, 2 * tp + fp + fn),
                "mean_matched_score": _ratio(iou, tp),
                "panoptic_quality": _ratio(iou, tp + fp / 2 + fn / 2),
            }
        return result


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0


def match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pairs an optimal one-to-one assignment matches at ``threshold``.

    As stardist: the assignment maximises the number of pairs with IoU >= ``threshold``, then (a tie-break
    smaller than one pair) their IoU; a pair counts when its IoU is at least ``threshold``.

    Args:
        iou: ``float[T, P]``, IoU of T ground-truth and P predicted instances.
    """
    if min(iou.shape) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cost = -(iou >= threshold).astype(float) - iou / (2 * min(iou.shape))
    rows, cols = linear_sum_assignment(cost)
    ok = iou[rows, cols] >= threshold
    return rows[ok], cols[ok]


def rle_iou(true: list[dict], pred: list[dict]) -> np.ndarray:
    """``float[T, P]`` mask IoU of COCO RLEs of one image (none a crowd region)."""
    if not true or not pred:
        return np.zeros((len(true), len(pred)))
    return np.asarray(mask_util.iou(true, pred, [0] * len(pred)), dtype=float).reshape(len(true), len(pred))


def label_iou(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``float[T, P]`` IoU of the instances of two label images (0 background; instances in order of
    their labels), from their joint histogram, as stardist computes it."""
    if true.shape != pred.shape:
        raise ValueError(f"label images of different sizes: {true.shape} and {pred.shape}")
    true_ids, true_flat = np.unique(true, return_inverse=True)
    pred_ids, pred_flat = np.unique(pred, return_inverse=True)
    overlap = np.zeros((len(true_ids), len(pred_ids)), np.int64)
    np.add.at(overlap, (true_flat.ravel(), pred_flat.ravel()), 1)
    union = overlap.sum(1, keepdims=True) + overlap.sum(0, keepdims=True) - overlap
    iou = overlap / np.maximum(union, 1)
    return iou[true_ids != 0][:, pred_ids != 0]


def paint(rles: list[dict], scores: Sequence[float], size: tuple[int, int]) -> tuple[list[dict], list[int]]:
    """The instances of ``rles`` as the label image ``mrrcnn predict`` writes shows them: each pixel the
    highest-scoring instance's covering it (ties: the earlier). Returns their RLEs, by descending score,
    leaving out those painted over entirely, and their indices into ``rles``.

    One ``int32[H, W]`` canvas; each mask is decoded on its own, so a large image's hundreds of instances
    never sit in memory at once.
    """
    order = sorted(range(len(rles)), key=lambda i: (-scores[i], i))
    canvas = np.zeros(size, np.int32)
    for rank in range(len(order) - 1, -1, -1):
        canvas[mask_util.decode(rles[order[rank]]).astype(bool)] = rank + 1
    painted, kept = [], []
    for rank, index in enumerate(order, start=1):
        # What is left of an instance lies inside its own box.
        x, y, w, h = (int(v) for v in np.ceil(mask_util.toBbox(rles[index])))
        crop = canvas[y : y + h + 1, x : x + w + 1] == rank
        if crop.any():
            painted.append(crop_rle(crop, x, y, *size))
            kept.append(index)
    return painted, kept
