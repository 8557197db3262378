"""COCO evaluation backends, pycocotools against faster_coco_eval: time and agreement on one synthetic set.

    python bench/coco_eval.py      # prints the tables and writes docs/benchmarks/coco_eval.md

The set: 480x640 images with 8 instances each of 3 categories (2 pairs placed to overlap, so about half of
them are huddled), elliptic masks as compressed RLE; 50 scored detections per image: 3 jittered copies of
each instance (one in ten with a wrong category) and random false positives. The winner, the faster backend
whose metrics match pycocotools' (the reference) to 1e-6, is what mrrcnn.evaluation.coco_eval.DEFAULT_BACKEND
should be.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
from common import header, machine

from mrrcnn.evaluation.coco_eval import BACKENDS, evaluate, evaluate_split, format_table, split_ground_truth

HEIGHT, WIDTH = 480, 640
INSTANCES, DETECTIONS, CATEGORIES = 8, 50, 3
TASKS = [(evaluate, ("bbox",)), (evaluate, ("segm",)), (evaluate_split, ("bbox", "segm"))]


def random_box(rng: np.random.Generator) -> np.ndarray:
    """xywh with log-uniform sides from 12 to 300 pixels, inside the image."""
    w, h = np.exp(rng.uniform(np.log(12), np.log(300), 2))
    return np.array([rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h), w, h])


def clip(box: np.ndarray) -> np.ndarray:
    x1, y1 = np.clip(box[:2], 0, [WIDTH - 2, HEIGHT - 2])
    x2, y2 = np.clip(box[:2] + box[2:], [x1 + 2, y1 + 2], [WIDTH, HEIGHT])
    return np.array([x1, y1, x2 - x1, y2 - y1])


def ellipse_rles(boxes: list[np.ndarray]) -> list[dict]:
    """Compressed RLE of the ellipse inscribed in each xywh box."""
    masks = np.zeros((HEIGHT, WIDTH, len(boxes)), dtype=np.uint8, order="F")
    for k, (x, y, w, h) in enumerate(boxes):
        x0, y0 = int(x), int(y)
        ys, xs = np.mgrid[y0 : math.ceil(y + h), x0 : math.ceil(x + w)] + 0.5
        inside = ((xs - x - w / 2) / (w / 2)) ** 2 + ((ys - y - h / 2) / (h / 2)) ** 2 <= 1
        masks[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1], k] = inside
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in mask_util.encode(masks)]


def make_case(images: int, seed: int = 0) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    annotations, results = [], []
    for image_id in range(1, images + 1):
        boxes = [random_box(rng) for _ in range(INSTANCES - 2)]
        for first in boxes[:2]:
            shift = rng.uniform(0.1, 0.4, 2) * first[2:] * rng.choice([-1, 1], 2)
            boxes.append(clip(first + np.concatenate([shift, [0, 0]])))
        categories = rng.integers(1, CATEGORIES + 1, INSTANCES)
        det_boxes, det_categories, scores = [], [], []
        for box, category in zip(boxes, categories):
            for copy in range(3):
                det_boxes.append(clip(box + rng.normal(0, 0.08, 4) * np.tile(box[2:], 2)))
                det_categories.append(category if rng.random() > 0.1 else rng.integers(1, CATEGORIES + 1))
                scores.append(rng.uniform(0.5, 1.0) / (1 + copy))
        for _ in range(DETECTIONS - len(det_boxes)):
            det_boxes.append(random_box(rng))
            det_categories.append(rng.integers(1, CATEGORIES + 1))
            scores.append(rng.uniform(0.0, 0.6))
        for box, category, segmentation in zip(boxes, categories, ellipse_rles(boxes)):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": box.tolist(),
                    "area": float(mask_util.area(segmentation)),
                    "segmentation": segmentation,
                    "iscrowd": 0,
                }
            )
        for box, category, score, segmentation in zip(
            det_boxes, det_categories, scores, ellipse_rles(det_boxes)
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": box.tolist(),
                    "score": float(score),
                    "segmentation": segmentation,
                }
            )
    gt = {
        "images": [{"id": i, "height": HEIGHT, "width": WIDTH} for i in range(1, images + 1)],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class {c}"} for c in range(1, CATEGORIES + 1)],
    }
    return gt, results


def max_difference(a: dict[str, float], b: dict[str, float]) -> float:
    """Largest |a - b| over the metrics; infinite where one is NaN (nothing to measure on), the other not."""
    nan = {k for k in a if math.isnan(a[k]) or math.isnan(b[k])}
    if a.keys() != b.keys() or any(not (math.isnan(a[k]) and math.isnan(b[k])) for k in nan):
        return math.inf
    return max((abs(a[k] - b[k]) for k in a.keys() - nan), default=0.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="images in the synthetic set")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median reported)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/benchmarks/coco_eval.md"
    )
    args = parser.parse_args(argv)

    gt, results = make_case(args.images)
    huddled = sum(a["iscrowd"] == 0 for a in split_ground_truth(gt)["huddled"]["annotations"])

    seconds, metrics = {}, {}
    for backend in BACKENDS:
        for task, iou_types in TASKS:
            cell = backend, task.__name__, "+".join(iou_types)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                metrics[cell] = task(gt, results, iou_types=iou_types, backend=backend)
                times.append(time.perf_counter() - start)
            seconds[cell] = statistics.median(times)
            print(*cell, f"{seconds[cell]:.2f} s", file=sys.stderr)

    rows, differences = [], {backend: 0.0 for backend in BACKENDS}
    for (backend, task, iou_types), median in seconds.items():
        reference = ("pycocotools", task, iou_types)
        difference = max_difference(metrics[backend, task, iou_types], metrics[reference])
        differences[backend] = max(differences[backend], difference)
        rows.append(
            f"| {backend} | {task} | {iou_types} | {median:.2f} | {seconds[reference] / median:.2f}x "
            f"| {difference:.1e} |\n"
        )
    timing = (
        "| backend | evaluation | iou types | median s | vs pycocotools | max metric diff to pycocotools |\n"
        "|---|---|---|---:|---:|---:|\n" + "".join(rows)
    )
    split_task = evaluate_split.__name__, "+".join(TASKS[-1][1])
    agreeing = [b for b in BACKENDS if differences[b] <= 1e-6]
    fastest = min(agreeing, key=lambda b: seconds[(b, *split_task)])
    metrics_table = format_table({b: metrics[(b, *split_task)] for b in BACKENDS})

    text = (
        "# COCO evaluation backends: time and agreement\n\n"
        f"{header('coco_eval.py', argv, args.repeats)}\n\n"
        f"Machine: {machine()}; numpy {version('numpy')}, pycocotools {version('pycocotools')}, "
        f"faster-coco-eval {version('faster-coco-eval')}.\n\n"
        f"Set: {args.images} images of {HEIGHT}x{WIDTH}, {len(gt['annotations'])} instances "
        f"({huddled} huddled), {len(results)} detections with masks as compressed RLE "
        "(see the docstring of bench/coco_eval.py). Times include the copies and checks of "
        "mrrcnn.evaluation.coco_eval; `evaluate_split` runs three evaluations (all, huddled, isolated).\n\n"
        + timing
        + f"\nFastest backend agreeing with pycocotools to 1e-6: **{fastest}** "
        "(mrrcnn.evaluation.coco_eval.DEFAULT_BACKEND).\n\n"
        "Metrics of `evaluate_split` (percent) from each backend:\n\n" + metrics_table
    )
    print(timing)
    print(f"fastest agreeing backend: {fastest}\n")
    print(metrics_table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
