"""Scoring another tool's output (a COCO json, or label images as cellpose and stardist write them)
against a COCO ground truth with the metrics ``mrrcnn eval`` reports, so that numbers can sit side by side."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from ..data.labels import read_label_image
from .coco_eval import DEFAULT_BACKEND, evaluate_split
from .touching import TOUCH_DISTANCE

Predictions = list[dict] | str | Path | Mapping[str | int, str | Path | np.ndarray]


def score(
    ground_truth: str | Path | dict,
    predictions: Predictions,
    score_threshold: float = 0.5,
    touch_distance: int = TOUCH_DISTANCE,
    backend: str | None = None,
) -> dict[str, float]:
    """``mrrcnn eval``'s metrics of ``predictions`` against ``ground_truth``.

    Args:
        ground_truth: a COCO instances json (path or loaded dict).
        predictions: COCO results records, a json of them or a COCO instances json with ``annotations``
            (``score`` 1 where missing); or, by image (its ``file_name``, its stem, or its id), a label
            image (a path, or an integer array ``[H, W]``: 0 background, k instance k), whose instances
            score 1 and take the ground truth's one category.
        score_threshold, touch_distance, backend: as ``eval.score_threshold``, ``eval.touch_distance``,
            ``eval.backend``.

    Returns:
        :func:`mrrcnn.evaluation.coco_eval.evaluate_split`'s metrics (COCO AP and the matching metrics,
        overall, per subset, per category).

    Raises:
        ValueError: naming the file, image or record at fault.
    """
    gt = _json(ground_truth, "ground truth") if not isinstance(ground_truth, dict) else ground_truth
    if isinstance(predictions, Mapping) and "annotations" not in predictions:
        records = _label_records(gt, predictions)
    else:
        records = _json(predictions, "predictions") if isinstance(predictions, (str, Path)) else predictions
        if isinstance(records, dict):
            records = records.get("annotations", [])
        records = [{"score": 1.0, **record} for record in records]
    return evaluate_split(
        gt,
        records,
        backend=backend or DEFAULT_BACKEND,
        score_threshold=score_threshold,
        touch_distance=touch_distance,
    )


def _json(path: str | Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {what} {path}: {e}") from e


def _label_records(gt: dict, label_images: Mapping[str | int, str | Path | np.ndarray]) -> list[dict]:
    """COCO results records of label images keyed by image file name, stem or id."""
    if len(gt["categories"]) != 1:
        raise ValueError(
            f"label images carry no category, and the ground truth has {len(gt['categories'])}: "
            "score a COCO json with category ids instead"
        )
    category = gt["categories"][0]["id"]
    keys = {}
    for image in gt["images"]:
        for key in (image["id"], image["file_name"], Path(image["file_name"]).stem):
            keys[key] = image
    records = []
    for key, labels in label_images.items():
        image = keys.get(key)
        if image is None:
            raise ValueError(
                f"label image for {key!r}: the ground truth has no such image (file name, stem or id)"
            )
        where = str(labels) if isinstance(labels, (str, Path)) else f"the label image of {key!r}"
        pixels = read_label_image(Path(labels)) if isinstance(labels, (str, Path)) else np.asarray(labels)
        if pixels.shape != (image["height"], image["width"]):
            raise ValueError(
                f"{where}: {pixels.shape[1::-1]} pixels, but image {image['file_name']} is "
                f"{image['width']}x{image['height']}"
            )
        for value in np.unique(pixels[pixels > 0]):
            rle = mask_util.encode(np.asfortranarray((pixels == value).astype(np.uint8)))
            records.append(
                {
                    "image_id": image["id"],
                    "category_id": category,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "score": 1.0,
                }
            )
    return records
