"""Inference on image files: an overlay picture per image and the detections as a COCO json."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pycocotools.mask as mask_util
import torch
from torch import Tensor
from tqdm import tqdm

from ..data.images import IMAGE_SUFFIXES, read_image
from ..engine.checkpoint import load_model
from .results import to_coco_results
from .visualize import draw_predictions

logger = logging.getLogger(__name__)


def _image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The files named in ``inputs`` and the images (by suffix) inside the folders named, sorted; one
    warning per folder names what else it holds, which is skipped."""
    files: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ValueError(f"{entry}: folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
            skipped = sorted(
                f"{p.name}/" if p.is_dir() else p.name for p in entry.iterdir() if p not in found
            )
            if skipped:
                logger.warning(
                    "%s: skipped %s (not image files by their suffix, %s; folders are not searched)",
                    entry,
                    ", ".join(skipped),
                    ", ".join(IMAGE_SUFFIXES),
                )
        elif entry.is_file():
            files.append(entry)
        else:
            raise ValueError(f"{entry}: no such image file or folder")
    if not files:
        raise ValueError("no input images given")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems:
            raise ValueError(f"{stems[path.stem]} and {path} would both be drawn to {path.stem}.png")
        stems[path.stem] = path
    return files


# The smallest side an image may have once the model has resized it: the backbone's coarsest stride.
MIN_RESIZED_SIDE = 32


def _check_size(model: torch.nn.Module, image: Tensor, path: Path) -> None:
    """Refuse an image that the model's resizing would shrink below :data:`MIN_RESIZED_SIDE` pixels."""
    height, width = image.shape[1:]
    transform = model.transform
    scale = min(min(transform.min_size) / min(height, width), transform.max_size / max(height, width))
    short = int(min(height, width) * scale)
    if short < MIN_RESIZED_SIDE:
        raise ValueError(
            f"{path}: a {width}x{height} image would be resized to a shorter side of {short} px (model "
            f"max_size {transform.max_size}), below the {MIN_RESIZED_SIDE} px the backbone needs; "
            "crop or pad it"
        )


def predict(
    weights: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    config: dict[str, Any] | None = None,
    score_threshold: float = 0.5,
    device: str | torch.device | None = None,
    batch_size: int = 2,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> Path:
    """Run a trained model on image files.

    Writes ``out_dir/<stem>.png``, each image with its detections drawn, and ``out_dir/predictions.json``,
    a COCO instances dict: ``images`` (ids 1..N in input order, ``file_name`` the path as found,
    ``width``, ``height``), ``categories`` (the checkpoint's, else the ids found) and ``annotations``, the
    detections scoring at least ``score_threshold``: ``id``, ``image_id``, ``category_id``, ``bbox``
    [x, y, w, h] pixels, ``score``, ``segmentation`` (compressed RLE), ``area`` (mask pixels; box area for a
    model without masks), ``iscrowd`` 0.

    Args:
        weights: an mrrcnn checkpoint.
        inputs: image files and folders (their images, by suffix, in name order).
        out_dir: output folder, created if needed.
        config: run configuration to build the model from instead of the checkpoint's; images are read
            as its ``data.intensity`` and ``data.percentiles`` say, as in training.
        score_threshold: the least score of a detection kept.
        device: where to run (default: CUDA if available, else the CPU).
        batch_size: images per forward pass.
        overrides: ``section.key=value`` over the configuration, e.g. ``model.alpha=0.5``.
        progress: show a progress bar.

    Returns:
        The path of ``predictions.json``.
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(score_threshold, (int, float)) and math.isfinite(score_threshold)):
        raise ValueError(f"score_threshold must be a finite number, got {score_threshold!r}")
    files = _image_files(inputs)
    out_dir = Path(out_dir)
    for path in files:
        if (out_dir / f"{path.stem}.png").resolve() == path.resolve():
            raise ValueError(f"{path}: its drawing would overwrite it; choose another output folder")
    model, config, categories = load_model(weights, config, device, overrides)
    device = next(model.parameters()).device
    mask_threshold = config.get("eval", {}).get("mask_threshold", 0.5)
    # As the model was trained: read as data.intensity says.
    reading = {"intensity": config["data"]["intensity"], "percentiles": config["data"]["percentiles"]}
    out_dir.mkdir(parents=True, exist_ok=True)

    images: list[dict] = []
    annotations: list[dict] = []
    with tqdm(total=len(files), desc="predict", unit="img", disable=not progress) as bar, torch.no_grad():
        for start in range(0, len(files), batch_size):
            batch = [
                (start + k + 1, path, read_image(path, **reading))
                for k, path in enumerate(files[start : start + batch_size])
            ]
            for _, path, image in batch:
                _check_size(model, image, path)
            outputs = model([image.to(device) for _, _, image in batch])
            for (image_id, path, image), output in zip(batch, outputs):
                output = {key: value.cpu() for key, value in output.items()}
                draw_predictions(image, output, categories, score_threshold, mask_threshold).save(
                    out_dir / f"{path.stem}.png"
                )
                keep = output["scores"] >= score_threshold
                kept = {key: value[keep] for key, value in output.items()}
                annotations.extend(_annotations(image_id, kept, mask_threshold, len(annotations) + 1))
                images.append(
                    {
                        "id": image_id,
                        "file_name": str(path),
                        "width": image.shape[2],
                        "height": image.shape[1],
                    }
                )
            bar.update(len(batch))
    cats = categories or {label: str(label) for label in sorted({a["category_id"] for a in annotations})}
    dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_id, "name": name} for cat_id, name in sorted(cats.items())],
    }
    path = out_dir / "predictions.json"
    path.write_text(json.dumps(dataset))
    logger.info("%d detections on %d images -> %s", len(annotations), len(images), out_dir)
    return path


def _annotations(
    image_id: int, output: dict[str, Tensor], mask_threshold: float, first_id: int
) -> list[dict[str, Any]]:
    """COCO annotation records (ids from ``first_id``) of one image's detections ``output`` (on the CPU).

    ``area`` is the mask's pixel count, or the box's area for a model without masks.
    """
    annotations = []
    for record in to_coco_results({image_id: output}, mask_threshold):
        if "segmentation" in record:
            area = float(mask_util.area(record["segmentation"]))
        else:
            area = record["bbox"][2] * record["bbox"][3]
        annotations.append({"id": first_id + len(annotations), **record, "area": area, "iscrowd": 0})
    return annotations
