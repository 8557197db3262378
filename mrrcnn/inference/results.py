"""Model outputs to COCO results records, the json that COCO evaluation and the COCO server read."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch import Tensor


def to_coco_results(predictions: dict[int, dict[str, Tensor]], mask_threshold: float = 0.5) -> list[dict]:
    """Turn torchvision Mask R-CNN eval outputs into COCO results records.

    Args:
        predictions: by COCO ``image_id``, one model output in original image pixels: ``boxes``
            ``FloatTensor[N, 4]`` (x1, y1, x2, y2), ``labels`` ``Int64Tensor[N]`` (COCO ``category_id``),
            ``scores`` ``FloatTensor[N]`` and optionally ``masks`` ``FloatTensor[N, 1, H, W]`` probabilities.
        mask_threshold: a mask pixel is foreground where its probability is above this, as in torchvision's
            references.

    Returns:
        One ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dict per detection, plus
        ``"segmentation"`` (compressed RLE, ``counts`` as ``str``) when the output has masks.
    """
    records = []
    for image_id, output in predictions.items():
        missing = {"boxes", "labels", "scores"} - output.keys()
        if missing:
            raise KeyError(f"predictions for image {image_id} lack {sorted(missing)}")
        boxes = output["boxes"].detach().cpu()
        n = boxes.shape[0]
        if boxes.shape != (n, 4) or output["labels"].shape != (n,) or output["scores"].shape != (n,):
            raise ValueError(
                f"predictions for image {image_id}: boxes {tuple(boxes.shape)}, labels "
                f"{tuple(output['labels'].shape)} and scores {tuple(output['scores'].shape)} do not describe "
                "the same N detections as [N, 4], [N], [N]"
            )
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        labels = output["labels"].tolist()
        scores = output["scores"].tolist()
        image_records = [
            {"image_id": int(image_id), "category_id": label, "bbox": box, "score": score}
            for label, box, score in zip(labels, xywh, scores)
        ]
        if "masks" in output and n > 0:
            masks = output["masks"]
            if masks.dim() != 4 or masks.shape[:2] != (n, 1):
                raise ValueError(
                    f"predictions for image {image_id}: masks {tuple(masks.shape)}, expected [{n}, 1, H, W]"
                )
            binary = (masks[:, 0] > mask_threshold).permute(1, 2, 0).cpu().numpy().astype(np.uint8)
            # pycocotools reads the [H, W, N] buffer column-major, so it must be Fortran-ordered.
            for record, rle in zip(image_records, mask_util.encode(np.asfortranarray(binary))):
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
