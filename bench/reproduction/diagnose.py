"""Why AP moves: per ground-truth instance, the class and the box it gets; and the paper's Fig. 5 in miniature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from mrrcnn.data import CocoDetection, huddled, most_huddled
from mrrcnn.inference.detections import Detections
from mrrcnn.inference.predictor import Predictor
from mrrcnn.inference.visualize import draw_detections, side_by_side

from .runs import data_overrides


def diagnose(results_file: Path, gt_file: Path) -> dict[str, Any]:
    """Why AP moves: per ground-truth instance, huddled or isolated, (1) the class of the highest-scoring
    detection whose box has IoU >= 0.5 with it (confusion between classes), (2) the best box IoU among the
    detections of its own class (localisation)."""
    gt = COCO(str(gt_file))
    detections: dict[int, list[dict]] = {}
    for record in json.loads(results_file.read_text()):
        detections.setdefault(record["image_id"], []).append(record)
    out: dict[str, Any] = {
        subset: {"confusion": [[0] * 6 for _ in range(6)], "best_iou": []}
        for subset in ("huddled", "isolated")
    }
    for image_id in gt.getImgIds():
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        if not anns:
            continue
        gt_boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64)
        gt_boxes[:, 2:] += gt_boxes[:, :2]
        is_huddled = huddled(gt_boxes)
        dets = detections.get(image_id, [])
        det_boxes = torch.tensor([d["bbox"] for d in dets], dtype=torch.float64).reshape(-1, 4)
        det_boxes[:, 2:] += det_boxes[:, :2]
        scores = torch.tensor([d["score"] for d in dets])
        labels = torch.tensor([d["category_id"] for d in dets], dtype=torch.int64)
        iou = box_iou(gt_boxes, det_boxes)
        for k, ann in enumerate(anns):
            subset = out["huddled" if is_huddled[k] else "isolated"]
            overlapping = torch.where(iou[k] >= 0.5)[0]
            predicted = int(labels[overlapping[scores[overlapping].argmax()]]) if len(overlapping) else 0
            subset["confusion"][ann["category_id"]][predicted] += 1
            same = labels == ann["category_id"]
            subset["best_iou"].append(float(iou[k][same].max()) if same.any() else 0.0)
    return out


def figure_fig5(weights: dict[str, Path], work: Path, out: Path, count: int = 4) -> None:
    """The control against MR R-CNN on the val images with the most huddled instances (paper Fig. 5)."""
    dataset = CocoDetection(work / "data" / "val", work / "data" / "annotations" / "val.json")
    predictors = {
        title: Predictor.from_checkpoint(path, overrides=data_overrides(work))
        for title, path in weights.items()
    }
    pictures, titles = [], []
    for index, num_huddled in most_huddled(dataset.coco, dataset.ids, count):
        image, target = dataset[index]
        truth = {
            **target,
            "scores": torch.ones(len(target["labels"])),
            "masks": target["masks"][:, None].float(),
        }
        pictures.append(draw_detections(image, Detections.from_output(truth), dataset.categories, scale=3.0))
        titles.append(f"ground truth ({num_huddled} huddled)")
        for title, predictor in predictors.items():
            pictures.append(draw_detections(image, predictor(image), dataset.categories, scale=3.0))
            titles.append(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    side_by_side(pictures, titles, columns=1 + len(predictors)).save(out)
