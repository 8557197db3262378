"""COCO-format instance segmentation data in torchvision's detection format, with the bad input named."""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from ..config import DEFAULT_PERCENTILES
from .images import raw_size, read_image

Target = dict[str, Any]


class CocoDetection(Dataset):
    """Images and instance targets of a COCO json, checked record by record.

    Every image and annotation record is validated when the dataset is built; a bad one raises a
    ``ValueError`` naming ``annotation_file`` and the record. With ``skip_bad=True`` each bad record is
    reported by one warning instead and the image it belongs to is left out (a partly annotated image
    would teach the model that the missing instance is background); ``num_skipped_records`` counts them.
    Image files are only read by ``__getitem__``: a missing, unreadable, truncated or wrongly sized file
    raises ``ValueError`` naming the file and the image record, or, with ``skip_bad=True``, warns and
    returns ``None``. Those load-time skips are not counted here: each ``None`` is dropped by
    :func:`collate_fn`, and a training loop that needs the count counts the ``None`` items it receives.

    Crowd annotations (``iscrowd=1``) are validated but left out of the targets, as in torchvision's
    reference scripts; evaluation reads the ground truth from :attr:`coco`, which holds the records kept.

    Args:
        images_dir: folder that the images' ``file_name`` entries are relative to.
        annotation_file: COCO instances json (``images``, ``annotations``, ``categories``).
        transforms: callable ``(image, target) -> (image, target)`` applied to each loaded sample.
        skip_bad: warn about and skip bad records and image files instead of raising.
        intensity, percentiles: how images are read (:func:`mrrcnn.data.images.read_image`).
        targets: ``False``: a sample's target is ``{"image_id"}`` alone, for prediction, where a large
            image's masks decoded at full size per instance would not fit.

    Attributes:
        coco: ``pycocotools.coco.COCO`` over the kept images and their annotations.
        ids: image ids in json order, one per sample.
        categories: category id -> name.
        num_classes: ``max category id + 1``, since labels are the raw category ids and 0 is background.
        num_skipped_records: bad image and annotation records left out at construction.
    """

    def __init__(
        self,
        images_dir: str | Path,
        annotation_file: str | Path,
        transforms: Callable[[Tensor, Target], tuple[Tensor, Target]] | None = None,
        skip_bad: bool = False,
        intensity: str = "full_range",
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        targets: bool = True,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.targets = targets
        self.annotation_file = Path(annotation_file)
        self.transforms = transforms
        self.skip_bad = skip_bad
        self.intensity, self.percentiles = intensity, tuple(percentiles)
        self.num_skipped_records = 0

        dataset = _read_json(self.annotation_file)
        self.categories = _read_categories(dataset["categories"], self.annotation_file)
        self.num_classes = max(self.categories, default=0) + 1

        images, annotations = self._check_records(dataset)
        self.ids = [image["id"] for image in images]
        self.coco = COCO()
        self.coco.dataset = {**dataset, "images": images, "annotations": annotations}
        # createIndex prints progress lines; a library should stay quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Target] | None:
        """Load one sample.

        Returns:
            ``image``: ``Tensor[3, H, W]`` float32 RGB in [0, 1], and ``target`` with ``boxes``
            (``FloatTensor[N, 4]``, x1, y1, x2, y2 in pixels), ``labels`` (``Int64Tensor[N]``, raw
            category ids), ``masks`` (``UInt8Tensor[N, H, W]``, 0/1), ``image_id`` (int), ``area``
            (``FloatTensor[N]``, pixels, from the json) and ``iscrowd`` (``Int64Tensor[N]``, all 0);
            or ``None`` when ``skip_bad`` is set and the image file or a mask could not be loaded.
        """
        record = self.coco.imgs[self.ids[index]]
        try:
            image = self._load_image(record)
            target = self._load_target(record) if self.targets else {"image_id": record["id"]}
        except ValueError as err:
            if not self.skip_bad:
                raise
            warnings.warn(f"skipped: {err}", stacklevel=2)
            return None
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _check_records(self, dataset: dict) -> tuple[list[dict], list[dict]]:
        """Validate the image and annotation records; return those of the images kept, in json order."""
        images: dict[int, dict] = {}
        rejected: set[int] = set()
        for index, image in enumerate(dataset["images"]):
            problem = _image_problem(image, images)
            if problem is None:
                images[image["id"]] = image
                continue
            self._reject(f"image record #{index} ({_image_name(image)}): {problem}")
            if _is_int(image.get("id")):
                rejected.add(image["id"])
        dropped = set(rejected)
        annotations: list[dict] = []
        annotation_ids: set[int] = set()
        for index, ann in enumerate(dataset["annotations"]):
            if isinstance(ann, dict) and _is_int(ann.get("image_id")) and ann["image_id"] in rejected:
                # Goes with its image record, which was reported already.
                continue
            problem = _annotation_problem(ann, images, self.categories, annotation_ids)
            if problem is None:
                annotations.append(ann)
                annotation_ids.add(ann["id"])
                continue
            self._reject(f"annotation record #{index} ({_annotation_name(ann)}): {problem}")
            if _is_int(ann.get("image_id")):
                dropped.add(ann["image_id"])
        return (
            [image for image_id, image in images.items() if image_id not in dropped],
            [ann for ann in annotations if ann["image_id"] not in dropped],
        )

    def _reject(self, message: str) -> None:
        if not self.skip_bad:
            raise ValueError(f"{self.annotation_file}: {message}")
        self.num_skipped_records += 1
        warnings.warn(f"{self.annotation_file}: skipped {message}", stacklevel=4)

    def _load_image(self, record: dict) -> Tensor:
        path = self.images_dir / record["file_name"]
        name = f"{path} (image id={record['id']} in {self.annotation_file})"
        image = read_image(path, name, self.intensity, self.percentiles)
        height, width = image.shape[1:]
        if (width, height) != (record["width"], record["height"]):
            stored = raw_size(path)
            why = " (as displayed, its EXIF orientation applied)" if stored != (width, height) else ""
            if stored == (record["width"], record["height"]):
                why += "; the json has the stored size: annotate the image as displayed"
            raise ValueError(
                f"{name}: image is {width}x{height} (width x height), the json says "
                f"{record['width']}x{record['height']}{why}"
            )
        return image

    def _load_target(self, record: dict) -> Target:
        height, width = record["height"], record["width"]
        anns = [ann for ann in self.coco.imgToAnns[record["id"]] if not ann["iscrowd"]]
        masks = np.empty((len(anns), height, width), dtype=np.uint8)
        for i, ann in enumerate(anns):
            where = f"{self.annotation_file}: annotation id={ann['id']} (image id={record['id']})"
            try:
                masks[i] = mask_util.decode(self.coco.annToRLE(ann))
            except ValueError as err:
                # A compressed RLE string is only decoded here: checking them all up front costs too much.
                raise ValueError(f"{where}: cannot decode segmentation: {err}") from err
            if not masks[i].any():
                raise ValueError(f"{where}: its segmentation covers no pixel of the {width}x{height} image")
        boxes = torch.tensor([ann["bbox"] for ann in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        return {
            "boxes": boxes,
            "labels": torch.tensor([ann["category_id"] for ann in anns], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": record["id"],
            "area": torch.tensor([ann["area"] for ann in anns], dtype=torch.float32),
            "iscrowd": torch.zeros(len(anns), dtype=torch.int64),
        }


def collate_fn(
    batch: list[tuple[Tensor, Target] | None],
) -> tuple[tuple[Tensor, ...], tuple[Target, ...]]:
    """Batch detection samples as a tuple of images and a tuple of targets, dropping ``None`` samples.

    Images keep their own sizes (``Tensor[3, H_i, W_i]``); the model batches them.
    """
    samples = [sample for sample in batch if sample is not None]
    return tuple(s[0] for s in samples), tuple(s[1] for s in samples)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid JSON file: {err}") from err
    keys = ("images", "annotations", "categories")
    missing = [key for key in keys if not (isinstance(dataset, dict) and isinstance(dataset.get(key), list))]
    if missing:
        raise ValueError(f"{path}: a COCO instances json is an object with {keys} lists; lacks {missing}")
    return dataset


def _read_categories(records: list, path: Path) -> dict[int, str]:
    categories: dict[int, str] = {}
    for index, cat in enumerate(records):
        cat_id = cat.get("id") if isinstance(cat, dict) else None
        # Id 0 is the background label of torchvision's detection models.
        if not _is_int(cat_id) or cat_id < 1 or cat_id in categories or not isinstance(cat.get("name"), str):
            raise ValueError(
                f"{path}: category record #{index} ({cat!r}): needs a unique integer 'id' >= 1 and a 'name'"
            )
        categories[cat_id] = cat["name"]
    return categories


def _image_problem(image: Any, images: dict[int, dict]) -> str | None:
    if not isinstance(image, dict):
        return f"expected an object, got {type(image).__name__}"
    if not _is_int(image.get("id")):
        return f"'id' must be an integer, got {image.get('id')!r}"
    if image["id"] in images:
        return "duplicate image id"
    if not isinstance(image.get("file_name"), str) or not image["file_name"]:
        return f"'file_name' must be a non-empty string, got {image.get('file_name')!r}"
    for key in ("height", "width"):
        if not _is_int(image.get(key)) or image[key] < 1:
            return f"'{key}' must be a positive integer, got {image.get(key)!r}"
    return None


def _annotation_problem(
    ann: Any, images: dict[int, dict], categories: dict[int, str], seen_ids: set[Any]
) -> str | None:
    if not isinstance(ann, dict):
        return f"expected an object, got {type(ann).__name__}"
    if not _is_int(ann.get("id")):
        return f"'id' must be an integer, got {ann.get('id')!r}"
    if ann["id"] in seen_ids:
        return "duplicate annotation id"
    image = images.get(ann.get("image_id")) if _is_int(ann.get("image_id")) else None
    if image is None:
        return f"image_id {ann.get('image_id')!r} is not a (valid) image record of the file"
    if not _is_int(ann.get("category_id")) or ann["category_id"] not in categories:
        return f"category_id {ann.get('category_id')!r} is not in 'categories'"
    if ann.get("iscrowd") not in (0, 1):
        return f"'iscrowd' must be 0 or 1, got {ann.get('iscrowd')!r}"
    if not _is_number(ann.get("area")) or ann["area"] < 0:
        return f"'area' must be a finite number >= 0, got {ann.get('area')!r}"
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"'bbox' must be 4 finite numbers [x, y, width, height], got {bbox!r}"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"'bbox' {bbox!r} has a width or height <= 0"
    if x >= image["width"] or y >= image["height"] or x + w <= 0 or y + h <= 0:
        return f"'bbox' {bbox!r} lies outside the {image['width']}x{image['height']} image"
    return _segmentation_problem(ann.get("segmentation"), image)


def _segmentation_problem(segm: Any, image: dict) -> str | None:
    if isinstance(segm, list):
        if not segm:
            return "'segmentation' is an empty polygon list"
        for i, polygon in enumerate(segm):
            if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
                return f"'segmentation' polygon {i} is not a list of finite numbers"
            if len(polygon) < 6 or len(polygon) % 2:
                return f"'segmentation' polygon {i} has {len(polygon)} coordinates, needs an even number >= 6"
        xs = [v for polygon in segm for v in polygon[0::2]]
        ys = [v for polygon in segm for v in polygon[1::2]]
        if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= image["width"] or min(ys) >= image["height"]:
            return (
                f"'segmentation' polygons lie entirely outside the {image['width']}x{image['height']} image"
            )
        return None
    if not isinstance(segm, dict):
        return f"'segmentation' must be a polygon list or an RLE object, got {type(segm).__name__}"
    size, counts = segm.get("size"), segm.get("counts")
    if size != [image["height"], image["width"]]:
        return f"RLE 'size' {size!r} is not the image's [height, width] [{image['height']}, {image['width']}]"
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != size[0] * size[1]:
            return "uncompressed RLE 'counts' must be integers >= 0 summing to height * width"
    elif not isinstance(counts, str):
        return f"RLE 'counts' must be a list (uncompressed) or a string (compressed), got {type(counts).__name__}"
    return None


def _image_name(image: Any) -> str:
    if not isinstance(image, dict):
        return "not an object"
    return f"image id={image.get('id')!r}, file_name={image.get('file_name')!r}"


def _annotation_name(ann: Any) -> str:
    if not isinstance(ann, dict):
        return "not an object"
    return f"annotation id={ann.get('id')!r}, image id={ann.get('image_id')!r}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
