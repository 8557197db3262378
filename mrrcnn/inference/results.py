"""Detections to COCO results records, the json that COCO evaluation and the COCO server read."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import torch

from .detections import Detections


def to_coco_results(predictions: dict[int, Detections]) -> list[dict]:
    """COCO results records of detections.

    Args:
        predictions: by COCO ``image_id``, that image's :class:`~mrrcnn.inference.detections.Detections`.

    Returns:
        One ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dict per detection, plus
        ``"segmentation"`` (compressed RLE, ``counts`` as ``str``) when the detections have masks.
    """
    records = []
    for image_id, detections in predictions.items():
        boxes = detections.boxes
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        image_records = [
            {"image_id": int(image_id), "category_id": label, "bbox": box, "score": score}
            for label, box, score in zip(detections.labels.tolist(), xywh, detections.scores.tolist())
        ]
        if detections.masks is not None:
            for record, rle in zip(image_records, detections.rles()):
                record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        records.extend(image_records)
    return records


def write_results(records: list[dict], path: str | Path) -> None:
    """Write results records as json to ``path``, atomically: readers see the old file or the whole new one.

    The temporary file sits in the same directory so that ``os.replace`` never crosses file systems.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x") as f:
            json.dump(records, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
