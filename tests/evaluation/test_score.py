import json

import numpy as np
import pycocotools.mask as mask_util
import pytest

from mrrcnn.evaluation import score
from mrrcnn.evaluation.coco_eval import evaluate_split


def rle(mask: np.ndarray) -> dict:
    encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def box(mask: np.ndarray) -> list[float]:
    return mask_util.toBbox(mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))).tolist()


def squares(size: int, step: int, side: int, count: int) -> list[np.ndarray]:
    """``count`` squares of ``side`` px in rows, ``step`` px apart, in a ``size`` px image."""
    masks = []
    per_row = size // step
    for k in range(count):
        mask = np.zeros((size, size), bool)
        y, x = (k // per_row) * step, (k % per_row) * step
        mask[y : y + side, x : x + side] = True
        masks.append(mask)
    return masks


def ground_truth(masks: list[np.ndarray], size: int) -> dict:
    return {
        "images": [{"id": 1, "file_name": "cells.png", "width": size, "height": size}],
        "categories": [{"id": 1, "name": "nucleus"}],
        "annotations": [
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": rle(mask),
                "area": float(mask.sum()),
                "bbox": box(mask),
                "iscrowd": 0,
            }
            for k, mask in enumerate(masks)
        ],
    }


def test_a_crowded_image_is_not_cut_at_100_detections():
    masks = squares(160, 10, 8, 150)
    gt = ground_truth(masks, 160)
    results = [{"image_id": 1, "category_id": 1, "segmentation": rle(m), "score": 0.9} for m in masks]
    metrics = evaluate_split(gt, results, iou_types=("segm",))
    assert metrics["segm/AP"] == pytest.approx(100.0)
    assert metrics["matching/0.5/tp"] == 150 and metrics["matching/0.5/f1"] == pytest.approx(100.0)


def test_touching_split_and_matching_on_it():
    # Two squares 1 px apart (touching) and one far away (separate); the far one is missed, a false
    # positive lies on the background.
    a, b, c, background = np.zeros((4, 40, 40), bool)
    a[2:8, 2:8] = True
    b[2:8, 9:15] = True
    c[30:36, 30:36] = True
    background[20:24, 2:6] = True
    gt = ground_truth([a, b, c], 40)
    results = [
        {"image_id": 1, "category_id": 1, "segmentation": rle(m), "bbox": box(m), "score": s}
        for m, s in ((a, 0.9), (b, 0.8), (background, 0.7), (c, 0.3))
    ]
    metrics = evaluate_split(gt, results, score_threshold=0.5)
    assert (metrics["matching/0.5/tp"], metrics["matching/0.5/fp"], metrics["matching/0.5/fn"]) == (2, 1, 1)
    assert (metrics["touching/matching/0.5/tp"], metrics["touching/matching/0.5/fn"]) == (2, 0)
    assert (metrics["separate/matching/0.5/tp"], metrics["separate/matching/0.5/fn"]) == (0, 1)
    # The background detection overlaps no instance: a false positive of every subset.
    assert metrics["touching/matching/0.5/fp"] == metrics["separate/matching/0.5/fp"] == 1
    assert metrics["category/nucleus/matching/0.5/recall"] == pytest.approx(100 * 2 / 3)
    assert metrics["touching/segm/AP"] > metrics["separate/segm/AP"]
    # The box-IoU split calls all three isolated: touching round objects barely overlap by box.
    assert metrics["isolated/matching/0.5/fn"] == 1 and metrics["huddled/matching/0.5/tp"] == 0


def test_score_label_images_and_coco_json(tmp_path):
    masks = squares(64, 16, 12, 12)
    gt = ground_truth(masks, 64)
    labels = np.zeros((64, 64), np.uint16)
    for k, mask in enumerate(masks[:10], start=1):
        labels[mask] = k
    from PIL import Image

    Image.fromarray(labels).save(tmp_path / "cells_masks.png")
    by_array = score(gt, {"cells.png": labels})
    by_file = score(gt, {"cells": tmp_path / "cells_masks.png"})
    assert by_array["matching/0.5/tp"] == by_file["matching/0.5/tp"] == 10
    assert by_array["matching/0.5/fn"] == 2 and by_array["matching/0.5/recall"] == pytest.approx(
        100 * 10 / 12
    )
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    # Another tool's COCO instances json (no scores): its annotations score 1.
    assert score(tmp_path / "gt.json", gt)["matching/0.9/f1"] == pytest.approx(100.0)


def test_score_names_bad_input(tmp_path):
    gt = ground_truth(squares(32, 16, 8, 2), 32)
    with pytest.raises(ValueError, match="'other.png': the ground truth has no such image"):
        score(gt, {"other.png": np.zeros((32, 32), np.int32)})
    with pytest.raises(
        ValueError, match=r"the label image of 'cells.png': \(16, 8\) pixels, but image cells.png is 32x32"
    ):
        score(gt, {"cells.png": np.zeros((8, 16), np.int32)})
    with pytest.raises(ValueError, match="cannot read predictions"):
        score(gt, tmp_path / "missing.json")
