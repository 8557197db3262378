"""COCO evaluation of a model over a dataset split, sharded across processes."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..config import DEFAULT_PERCENTILES
from ..data import CocoDetection, collate_fn
from ..engine.checkpoint import resolve_device
from ..engine.distributed import rank, world_size
from ..inference.predictor import Predictor
from ..inference.results import to_coco_results, write_results
from .coco_eval import DEFAULT_BACKEND, evaluate_split

logger = logging.getLogger(__name__)


def _oracle_target(
    target: dict[str, Any], device: torch.device, oracle_masks: Callable[[dict[str, Any]], Tensor] | None
) -> dict[str, Tensor]:
    """The boxes and (optionally transformed) masks a ground-truth-reading model is given at evaluation."""
    masks = target["masks"] if oracle_masks is None else oracle_masks(target)
    return {
        "boxes": target["boxes"].to(device),
        "labels": target["labels"].to(device),
        "masks": masks.to(device),
    }


def evaluate_model(
    model: nn.Module,
    config: dict[str, Any],
    split: str = "val",
    output_dir: str | Path | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    oracle_masks: Callable[[dict[str, Any]], Tensor] | None = None,
) -> dict[str, float]:
    """COCO box and mask AP of ``model`` on a split, overall and on each instance subset (huddled /
    isolated, touching / separate), and the instance-matching metrics microscopy compares by.

    Under ``torch.distributed`` each process runs every ``world_size``-th image; the predictions are
    gathered and evaluated on rank 0. The model's train/eval mode is restored afterwards.

    Args:
        model: a torchvision-style detection model (or its ``DistributedDataParallel`` wrapper).
        config: the run configuration; reads ``data[split]``, ``data.workers``, ``data.skip_bad``,
            ``data.intensity``, ``data.percentiles`` and ``eval`` (``batch_size``, ``backend``,
            ``mask_threshold``).
        split: a key of ``config["data"]`` holding ``{images, annotations}``.
        output_dir: if given, rank 0 writes ``results_{split}.json`` (COCO results records) and
            ``metrics_{split}.json`` (the metrics, NaN written as null) there.
        progress: show a progress bar (rank 0).
        device: where to run the model (moved there); default: where its parameters are.
        oracle_masks: for a model whose Shape-aware RoIAlign reads the ground truth (the diagnostic
            ``sara_masks`` other than ``"predicted"``, which is then given the targets): a function of each
            image's target (``boxes``, ``labels``, ``masks: UInt8Tensor[N, H, W]``, ``image_id``) returning
            the 0/1 masks the model reads instead (same shape and dtype: the model's transform resizes them
            as uint8), e.g. degraded ones. The metrics are always against the true ground truth.

    Returns:
        :func:`mrrcnn.evaluation.coco_eval.evaluate_split`'s metrics in percent on rank 0, ``{}`` elsewhere.
    """
    data = config["data"].get(split)
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise ValueError(
            f"config data.{split} must be a mapping with 'images' and 'annotations', got {data!r}"
        )
    eval_config = config.get("eval", {})
    # Unwrapped from DDP by the predictor: the wrapper's forward may broadcast buffers, a collective that
    # hangs once shards differ in length.
    predictor = Predictor(model, config, device=resolve_device(device) if device is not None else None)
    oracle = getattr(predictor.model.roi_heads, "sara_masks", "predicted") != "predicted"
    dataset = CocoDetection(
        data["images"],
        data["annotations"],
        skip_bad=config["data"].get("skip_bad", False),
        intensity=config["data"].get("intensity", "full_range"),
        percentiles=config["data"].get("percentiles", DEFAULT_PERCENTILES),
        targets=oracle,
    )
    this_rank, world = rank(), world_size()
    loader = DataLoader(
        Subset(dataset, range(this_rank, len(dataset), world)),
        batch_size=eval_config.get("batch_size", 1),
        num_workers=config["data"].get("workers", 0),
        collate_fn=collate_fn,
    )
    # Closed however the loop ends, so that an error or Ctrl-C is reported on a line of its own.
    with tqdm(loader, desc=f"eval {split}", unit="batch", disable=not progress or this_rank != 0) as batches:
        records, image_ids = _predict_records(predictor, batches, oracle, oracle_masks)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, (records, image_ids))
        if this_rank != 0:
            return {}
        records = [r for shard_records, _ in gathered for r in shard_records]
        image_ids = [i for _, shard_ids in gathered for i in shard_ids]

    _check_evaluable(dataset, data, image_ids, records)
    gt = _evaluated_ground_truth(dataset.coco.dataset, image_ids, data["images"])
    metrics = evaluate_split(
        gt,
        records,
        backend=eval_config.get("backend") or DEFAULT_BACKEND,
        score_threshold=eval_config.get("score_threshold", 0.5),
        touch_distance=eval_config.get("touch_distance", 2),
    )
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_results(records, output_dir / f"results_{split}.json")
        strict = {key: None if math.isnan(value) else value for key, value in metrics.items()}
        (output_dir / f"metrics_{split}.json").write_text(json.dumps(strict, indent=1) + "\n")
    return metrics


def _predict_records(
    predictor: Predictor,
    batches: Iterable[tuple[list[Tensor], list[dict[str, Any]]]],
    oracle: bool,
    oracle_masks: Callable[[dict[str, Any]], Tensor] | None,
) -> tuple[list[dict], list[int]]:
    """COCO results records of ``predictor`` on ``batches`` (given the targets where ``oracle``), and the
    image ids read."""
    records: list[dict] = []
    image_ids: list[int] = []
    for images, targets in batches:
        if not images:  # every image of the batch was unreadable and skipped (data.skip_bad)
            continue
        ids = [target["image_id"] for target in targets]
        oracle_targets = (
            [_oracle_target(t, predictor.device, oracle_masks) for t in targets] if oracle else None
        )
        detections = predictor.predict(images, [f"image {i}" for i in ids], oracle_targets)
        # Records as soon as possible: masks of a whole split would not fit.
        records.extend(to_coco_results(dict(zip(ids, detections))))
        image_ids.extend(ids)
    return records, image_ids


def _check_evaluable(
    dataset: CocoDetection, data: dict[str, str], image_ids: list[int], records: list[dict]
) -> None:
    """Refuse an evaluation without images read (all skipped under ``data.skip_bad``), or of detections
    whose categories the ground truth does not have (a model trained on other categories)."""
    if not image_ids:
        unread = (
            f"none of the {len(dataset)} images of {data['images']} could be read (data.skip_bad skipped "
            "them all; the warnings name each)"
        )
        raise ValueError(
            f"{unread if len(dataset) else data['annotations'] + ' holds no image'}: nothing to evaluate"
        )
    unknown = sorted({record["category_id"] for record in records} - dataset.categories.keys())
    if unknown:
        raise ValueError(
            f"the model predicts category id(s) {unknown}, which {data['annotations']} does not have (its "
            f"category ids: {sorted(dataset.categories)}): the model was trained on other categories than "
            "this ground truth's; evaluate it on data with the category ids it was trained on"
        )


def _evaluated_ground_truth(gt: dict[str, Any], image_ids: list[int], images_dir: str) -> dict[str, Any]:
    """COCO ground truth ``gt`` restricted to the images read (``image_ids``); warns if any was not."""
    if len(image_ids) >= len(gt["images"]):
        return gt
    logger.warning(
        "%d of the %d images of %s could not be read; they are left out of the evaluation",
        len(gt["images"]) - len(image_ids),
        len(gt["images"]),
        images_dir,
    )
    evaluated = set(image_ids)
    return {
        **gt,
        "images": [image for image in gt["images"] if image["id"] in evaluated],
        "annotations": [ann for ann in gt["annotations"] if ann["image_id"] in evaluated],
    }
