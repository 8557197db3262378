import copy
import json
import math
import random

import numpy as np
import pycocotools.mask as mask_util
import pytest

from mrrcnn.evaluation.coco_eval import BACKENDS, evaluate, evaluate_split, format_table, split_ground_truth

SIZE = 100  # square images, pixels


def rle(box: list[float]) -> dict:
    """Compressed RLE of the pixels inside an integer xywh box."""
    x, y, w, h = (int(v) for v in box)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8, order="F")
    mask[y : y + h, x : x + w] = 1
    encoded = mask_util.encode(mask)
    return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}


def ground_truth(boxes: dict[int, list[list[int]]], crowd: tuple[int, ...] = ()) -> dict:
    """Box-shaped instances of category 1 by image id; ``crowd`` lists the annotation ids of crowd regions."""
    annotations = []
    for image_id, image_boxes in boxes.items():
        for box in image_boxes:
            ann_id = len(annotations) + 1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "segmentation": rle(box),
                    "iscrowd": int(ann_id in crowd),
                }
            )
    return {
        "images": [{"id": i, "height": SIZE, "width": SIZE} for i in boxes],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }


def detection(image_id: int, box: list[int], score: float, category_id: int = 1) -> dict:
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": box,
        "score": score,
        "segmentation": rle(box),
    }


def perfect(gt: dict) -> list[dict]:
    return [detection(a["image_id"], a["bbox"], 1.0) for a in gt["annotations"] if not a["iscrowd"]]


def same(a: dict[str, float], b: dict[str, float], tol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or abs(a[k] - b[k]) <= tol for k in a
    )


# Two overlapping instances (IoU 1/3: huddled) and one far from them (isolated).
HUDDLE = {1: [[0, 0, 20, 20], [10, 0, 20, 20], [60, 60, 30, 30]]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_and_empty(backend, tmp_path):
    gt = ground_truth({1: [[0, 0, 20, 20], [50, 50, 40, 40]], 2: [[0, 0, 99, 99]]})
    metrics = evaluate(gt, perfect(gt), backend=backend)
    for iou_type in ("bbox", "segm"):
        for metric in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert metrics[f"{iou_type}/{metric}"] == pytest.approx(100)
    path = tmp_path / "results.json"
    path.write_text("[]")
    assert evaluate(gt, path, backend=backend) == {k: 0.0 for k in metrics}


@pytest.mark.parametrize("backend", BACKENDS)
def test_known_ap(backend):
    # IoU 290 / 500 = 0.58: a true positive at the IoU thresholds 0.5 and 0.55 only, 2 of 10.
    gt = ground_truth({1: [[0, 0, 10, 50]]})
    metrics = evaluate(gt, [detection(1, [0, 0, 10, 29], 0.9)], backend=backend)
    for iou_type in ("bbox", "segm"):
        assert metrics[f"{iou_type}/AP"] == pytest.approx(20)
        assert metrics[f"{iou_type}/AP50"] == pytest.approx(100)
        assert metrics[f"{iou_type}/AP75"] == 0
        assert metrics[f"{iou_type}/APs"] == pytest.approx(20)
        assert math.isnan(metrics[f"{iou_type}/APm"]) and math.isnan(metrics[f"{iou_type}/APl"])


def random_case(seed: int = 0) -> tuple[dict, list[dict]]:
    rng = random.Random(seed)

    def box() -> list[int]:
        w, h = rng.randint(4, 60), rng.randint(4, 60)
        return [rng.randint(0, SIZE - w), rng.randint(0, SIZE - h), w, h]

    gt = ground_truth({i: [box() for _ in range(rng.randint(0, 6))] for i in range(1, 9)}, crowd=(3,))
    results = []
    for ann in gt["annotations"]:
        for _ in range(rng.randint(0, 3)):
            x, y, w, h = ann["bbox"]
            dx, dy = rng.randint(-3, 3), rng.randint(-3, 3)
            jittered = [
                max(x + dx, 0),
                max(y + dy, 0),
                max(w + rng.randint(-4, 4), 1),
                max(h + rng.randint(-4, 4), 1),
            ]
            results.append(detection(ann["image_id"], jittered, rng.random(), rng.choice([1, 1, 1, 2])))
    results += [detection(rng.randint(1, 8), box(), rng.random(), rng.choice([1, 2])) for _ in range(20)]
    return gt, results


def test_backends_agree():
    gt, results = random_case()
    gt_before, results_before = copy.deepcopy(gt), copy.deepcopy(results)
    reference, faster = (evaluate_split(gt, results, backend=b) for b in BACKENDS)
    assert 0 < reference["segm/AP"] < 100 and 0 < reference["huddled/bbox/AP"] < 100
    assert same(reference, faster)
    assert gt == gt_before and results == results_before


def test_split_ground_truth():
    gt = ground_truth(HUDDLE | {2: [[0, 0, 20, 20], [0, 0, 25, 25]]}, crowd=(4,))
    gt_before = copy.deepcopy(gt)
    split = split_ground_truth(gt)
    # Image 2's crowd region would make its other box huddled if it counted: it does not.
    assert [a["iscrowd"] for a in split["huddled"]["annotations"]] == [0, 0, 1, 1, 1]
    assert [a["iscrowd"] for a in split["isolated"]["annotations"]] == [1, 1, 0, 1, 0]
    assert gt == gt_before


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_metrics(backend):
    gt = ground_truth(HUDDLE)
    huddled_dets = [detection(1, box, 0.9) for box in HUDDLE[1][:2]]
    isolated_det = [detection(1, HUDDLE[1][2], 0.5)]

    only_isolated = evaluate_split(gt, isolated_det, iou_types=("bbox",), backend=backend)
    assert only_isolated["isolated/bbox/AP"] == pytest.approx(100)
    assert only_isolated["huddled/bbox/AP"] == 0

    # Higher-scored detections of the other subset would pull AP down if they were false positives.
    both = evaluate_split(gt, huddled_dets + isolated_det, backend=backend)
    reversed_scores = [{**d, "score": 1 - d["score"]} for d in huddled_dets + isolated_det]
    both_reversed = evaluate_split(gt, reversed_scores, backend=backend)
    for metrics in (both, both_reversed):
        for subset in ("huddled", "isolated"):
            for iou_type in ("bbox", "segm"):
                assert metrics[f"{subset}/{iou_type}/AP"] == pytest.approx(100)

    # Overall, a high-scored false positive on an isolated-only image does count.
    extra = evaluate_split(gt, reversed_scores + [detection(1, [40, 0, 10, 10], 1.0)], backend=backend)
    assert extra["bbox/AP"] < 100 and extra["huddled/bbox/AP"] < 100


def test_bad_input(tmp_path):
    gt = ground_truth(HUDDLE)
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}]))
    with pytest.raises(ValueError, match=r"results\.json: record 0 has image_id 7, not an image of"):
        evaluate(gt, path, iou_types=("bbox",))
    other = [{"image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 1], "score": 1.0}]
    with pytest.raises(
        ValueError, match=r"category_id 9, not a category of the ground truth \(its ids: \[1, 2\]\)"
    ):
        evaluate(gt, other, iou_types=("bbox",))
    with pytest.raises(ValueError, match=r"record 0 needs .*segmentation"):
        evaluate(gt, path)
    with pytest.raises(ValueError, match="backend"):
        evaluate(gt, [], backend="detectron2")
    with pytest.raises(ValueError, match="iou_types"):
        evaluate(gt, [], iou_types="bbox")
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps({"images": [], "annotations": [{"id": 1}], "categories": []}))
    with pytest.raises(ValueError, match=r"gt\.json: annotation 0 needs"):
        evaluate(gt_path, [])


def test_format_table():
    table = format_table(
        {"Mask R-CNN": {"segm/AP": 30.04, "huddled/segm/AP": math.nan}, "MR R-CNN": {"segm/AP": 31.96}}
    )
    assert table.splitlines() == [
        "| metric | Mask R-CNN | MR R-CNN |",
        "|---|---:|---:|",
        "| segm/AP | 30.0 | 32.0 |",
        "| huddled/segm/AP | - | - |",
    ]
