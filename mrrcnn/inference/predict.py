"""The ``predict`` command: image files to overlays, instance label images and a COCO json."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ..data.images import IMAGE_SUFFIXES
from .detections import Detections
from .labels import write_label_image
from .predictor import Predictor
from .results import to_coco_results, write_results
from .visualize import draw_detections

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


def predict(
    weights: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    config: dict[str, Any] | None = None,
    score_threshold: float | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 2,
    overrides: Sequence[str] = (),
    progress: bool = True,
) -> Path:
    """Run a trained model on image files, each whole at the scale training saw (in tiles if it is large).

    Writes, for each image, ``out_dir/<stem>.png``, the image with its detections drawn, and
    ``out_dir/<stem>_labels.png``, the instance label image (16-bit; ``_labels.tif``, 32-bit, past 65535
    instances): 0 background, ``k`` the ``k``-th detection by descending score, each pixel the
    highest-scoring detection's covering it; and ``out_dir/predictions.json``, a COCO instances dict:
    ``images`` (ids 1..N in input order, ``file_name`` the path as found, ``width``, ``height``),
    ``categories`` (the checkpoint's, else the ids found) and ``annotations``, the detections scoring at
    least ``score_threshold``: ``id``, ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] pixels, ``score``,
    ``segmentation`` (compressed RLE), ``area`` (mask pixels; box area for a model without masks), ``iscrowd`` 0.

    Args:
        weights: an mrrcnn checkpoint.
        inputs: image files and folders (their images, by suffix, in name order).
        out_dir: output folder, created if needed.
        config: run configuration to build the model from instead of the checkpoint's; images are read
            as its ``data.intensity`` and ``data.percentiles`` say, as in training.
        score_threshold: the least score of a detection kept (default: the config's ``eval.score_threshold``).
        device: where to run (default: CUDA if available, else the CPU).
        batch_size: images per forward pass.
        overrides: ``section.key=value`` over the configuration, e.g. ``model.alpha=0.5``.
        progress: show a progress bar.

    Returns:
        The path of ``predictions.json``.
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if score_threshold is not None and not (
        isinstance(score_threshold, (int, float)) and math.isfinite(score_threshold)
    ):
        raise ValueError(f"score_threshold must be a finite number, got {score_threshold!r}")
    files = _image_files(inputs)
    out_dir = Path(out_dir)
    for path in files:
        for written in (f"{path.stem}.png", f"{path.stem}_labels.png", f"{path.stem}_labels.tif"):
            if (out_dir / written).resolve() == path.resolve():
                raise ValueError(
                    f"{path}: its output {written} would overwrite it; choose another output folder"
                )
    predictor = Predictor.from_checkpoint(weights, config, device, overrides)
    if score_threshold is None:
        score_threshold = predictor.config["eval"]["score_threshold"]
    out_dir.mkdir(parents=True, exist_ok=True)

    images: list[dict] = []
    annotations: list[dict] = []
    with tqdm(total=len(files), desc="predict", unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            paths = files[start : start + batch_size]
            pictures = [predictor.read(path) for path in paths]
            found = predictor.predict(pictures, [str(path) for path in paths])
            for image_id, path, image, detections in zip(
                range(start + 1, len(files) + 1), paths, pictures, found
            ):
                kept = detections.select(detections.scores >= score_threshold)
                # By descending score, so that label k of the label image is the k-th annotation.
                kept = kept.select(torch.argsort(kept.scores, descending=True, stable=True))
                _write_pictures(out_dir / path.stem, image, kept, predictor.categories)
                annotations.extend(_annotations(image_id, kept, len(annotations) + 1))
                images.append(
                    {
                        "id": image_id,
                        "file_name": str(path),
                        "width": image.shape[2],
                        "height": image.shape[1],
                    }
                )
            bar.update(len(paths))
    categories = predictor.categories or {
        label: str(label) for label in sorted({a["category_id"] for a in annotations})
    }
    dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_id, "name": name} for cat_id, name in sorted(categories.items())],
    }
    path = out_dir / "predictions.json"
    write_results(dataset, path)
    logger.info("%d detections on %d images -> %s", len(annotations), len(images), out_dir)
    return path


def _write_pictures(stem: Path, image: Tensor, detections: Detections, categories: dict[int, str]) -> None:
    """``<stem>.png``, the overlay, and for a model with masks ``<stem>_labels.png`` (or ``.tif``)."""
    draw_detections(image, detections, categories).save(f"{stem}.png")
    if detections.masks is not None:
        write_label_image(detections.label_image(), stem)


def _annotations(image_id: int, detections: Detections, first_id: int) -> list[dict[str, Any]]:
    """COCO annotation records (ids from ``first_id``) of one image's detections.

    ``area`` is the mask's pixel count, or the box's area for a model without masks.
    """
    records = to_coco_results({image_id: detections})
    return [
        {"id": first_id + k, **record, "area": float(area), "iscrowd": 0}
        for k, (record, area) in enumerate(zip(records, detections.areas().tolist()))
    ]
