"""COCO evaluation of a model over a dataset split, sharded across processes, and loading a trained model."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torchvision.models.detection._utils import overwrite_eps
from tqdm import tqdm

from ..config import apply_overrides
from ..data import CocoDetection, collate_fn
from ..models import build_model
from .checkpoint import load_checkpoint
from .coco_eval import DEFAULT_BACKEND, evaluate_split
from .distributed import rank, world_size
from .results import to_coco_results, write_results

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available and the CPU otherwise; an unusable device is a ``ValueError``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {str(device)!r} is not a torch device: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but CUDA is not available")
    return device


def load_model(
    weights: str | Path,
    config: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    overrides: Sequence[str] = (),
) -> tuple[nn.Module, dict[str, Any], dict[int, str]]:
    """Build the model a checkpoint was trained as and load its weights, strictly.

    Args:
        weights: an mrrcnn checkpoint (``model``, ``config``, ``categories``).
        config: the run configuration to build from instead of the checkpoint's; its ``model`` section may
            differ in what holds no weights, such as MR R-CNN's ``alpha``.
        device: where to put the model (default: CUDA if available, else the CPU).
        overrides: ``section.key=value`` applied over the configuration used.

    Returns:
        The model in eval mode on ``device``, the configuration used, and category id -> name.
    """
    device = resolve_device(device)
    checkpoint = load_checkpoint(weights)
    if not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"{weights}: checkpoint holds no 'model' state_dict")
    if config is None:
        config = checkpoint.get("config")
        if not isinstance(config, dict) or "name" not in config.get("model", {}):
            raise ValueError(f"{weights}: checkpoint carries no run configuration; give one (--config)")
    config = apply_overrides(config, overrides)
    kwargs = dict(config["model"])
    base = kwargs.get("base_weights")
    # The checkpoint holds every weight. A model started from pretrained weights has frozen batch norms,
    # so it is rebuilt from a pretrained state, the checkpoint itself, rather than from its original
    # base (which may be a download, or a file since moved away).
    if kwargs.pop("weights_backbone", None) is not None or base is not None:
        kwargs["base_weights"] = str(weights)
    model = build_model(**kwargs)
    if isinstance(base, str) and base.split(".")[-1] in ("COCO_V1", "DEFAULT"):
        # As the builder did for torchvision's COCO Mask R-CNN, trained with a zero-eps frozen batch norm.
        overwrite_eps(model, 0.0)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise ValueError(f"{weights}: weights do not fit model {kwargs['name']!r}: {e}") from e
    categories = {int(k): str(v) for k, v in (checkpoint.get("categories") or {}).items()}
    return model.to(device).eval(), config, categories


def evaluate_model(
    model: nn.Module,
    config: dict[str, Any],
    split: str = "val",
    output_dir: str | Path | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """COCO box and mask AP of ``model`` on a split, overall and on huddled / isolated instances.

    Under ``torch.distributed`` each process runs every ``world_size``-th image; the predictions are
    gathered and evaluated on rank 0. The model's train/eval mode is restored afterwards.

    Args:
        model: a torchvision-style detection model (or its ``DistributedDataParallel`` wrapper).
        config: the run configuration; reads ``data[split]``, ``data.workers``, ``data.skip_bad`` and
            ``eval`` (``batch_size``, ``backend``, ``mask_threshold``).
        split: a key of ``config["data"]`` holding ``{images, annotations}``.
        output_dir: if given, rank 0 writes ``results_{split}.json`` (COCO results records) and
            ``metrics_{split}.json`` (the metrics, NaN written as null) there.
        progress: show a progress bar (rank 0).
        device: where to run the model (moved there); default: where its parameters are.

    Returns:
        :func:`mrrcnn.engine.coco_eval.evaluate_split`'s metrics in percent on rank 0, ``{}`` elsewhere.
    """
    data = config["data"].get(split)
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise ValueError(
            f"config data.{split} must be a mapping with 'images' and 'annotations', got {data!r}"
        )
    eval_config = config.get("eval", {})
    dataset = CocoDetection(
        data["images"], data["annotations"], skip_bad=config["data"].get("skip_bad", False)
    )
    this_rank, world = rank(), world_size()
    loader = DataLoader(
        Subset(dataset, range(this_rank, len(dataset), world)),
        batch_size=eval_config.get("batch_size", 1),
        num_workers=config["data"].get("workers", 0),
        collate_fn=collate_fn,
    )
    # The wrapper's forward may broadcast buffers, a collective that hangs once shards differ in length.
    if isinstance(model, DistributedDataParallel):
        model = model.module
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    mask_threshold = eval_config.get("mask_threshold", 0.5)

    was_training = model.training
    model.eval()
    records: list[dict] = []
    image_ids: list[int] = []
    try:
        with torch.no_grad():
            for images, targets in tqdm(
                loader, desc=f"eval {split}", unit="batch", disable=not progress or this_rank != 0
            ):
                if not images:  # every image of the batch was unreadable and skipped (data.skip_bad)
                    continue
                outputs = model([image.to(device, non_blocking=True) for image in images])
                # Records as soon as possible: full-image mask probabilities of a whole split would not fit.
                ids = [target["image_id"] for target in targets]
                records.extend(to_coco_results(dict(zip(ids, outputs)), mask_threshold))
                image_ids.extend(ids)
    finally:
        model.train(was_training)

    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, (records, image_ids))
        if this_rank != 0:
            return {}
        records = [r for shard_records, _ in gathered for r in shard_records]
        image_ids = [i for _, shard_ids in gathered for i in shard_ids]

    gt = dataset.coco.dataset
    if len(image_ids) < len(gt["images"]):
        logger.warning(
            "%d of the %d images of %s could not be read; they are left out of the evaluation",
            len(gt["images"]) - len(image_ids),
            len(gt["images"]),
            data["images"],
        )
        evaluated = set(image_ids)
        gt = {
            **gt,
            "images": [image for image in gt["images"] if image["id"] in evaluated],
            "annotations": [ann for ann in gt["annotations"] if ann["image_id"] in evaluated],
        }
    metrics = evaluate_split(gt, records, backend=eval_config.get("backend") or DEFAULT_BACKEND)
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_results(records, output_dir / f"results_{split}.json")
        strict = {key: None if math.isnan(value) else value for key, value in metrics.items()}
        (output_dir / f"metrics_{split}.json").write_text(json.dumps(strict, indent=1) + "\n")
    return metrics
