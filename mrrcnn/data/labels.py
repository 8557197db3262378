"""Instance label images to a COCO dataset: the annotations of microscopy (stardist, cellpose), where each
instance is one integer of an image the size of its picture and 0 is the background."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import tifffile
from PIL import Image

from .images import IMAGE_SUFFIXES

LABEL_SUFFIXES = (".png", ".tif", ".tiff")
_TIFF = (".tif", ".tiff")
# PIL modes whose pixels read_image takes as they are stored (others become RGB, as read_image makes them).
_PLAIN_MODES = ("L", "RGB", "I;16", "I;16L", "I;16B", "I;16N", "I")
CSV_HEADER = ["image", "label", "class"]


def convert_label_images(
    images_dir: str | Path,
    labels_dir: str | Path,
    out_dir: str | Path,
    split: str = "train",
    classes: str | Path | None = None,
    class_name: str = "object",
    label_suffix: str = "",
) -> dict[str, Any]:
    """Write the images of ``images_dir`` and their instance label images as a COCO dataset, laid out as
    :func:`mrrcnn.data.make_synthetic` lays out its splits: ``out_dir/<split>/<stem>.png`` and
    ``out_dir/annotations/<split>.json``.

    * Pairs: an image (``IMAGE_SUFFIXES``) and the label image (PNG or TIFF) of the same stem, the label
      image's stem ending in ``label_suffix`` (e.g. cellpose's ``_masks``); the two may share a folder.
    * Label images: one 8-, 16- or 32-bit integer per pixel, 0 the background, each other value an
      instance (it may touch others or be in pieces): one annotation each, its mask as compressed RLE.
      Read as stored (TIFF by ``tifffile``), so an image is taken as stored too, without its EXIF turn.
    * Images are written as PNG files that :func:`mrrcnn.data.images.read_image` reads to what the model
      sees, their values unchanged: 8-bit grayscale or RGB (alpha dropped), 16-bit grayscale.
      Normalising intensities stays a setting of training (``data.intensity``), so that new images are
      read as these were.
    * Classes: one, ``class_name``, or from ``classes``, a CSV file with the header ``image,label,class``
      (the image's stem or file name, a label, a class name). Category ids number the CSV's class names in
      alphabetical order from 1, so the train and val splits converted with one CSV share them.

    Returns:
        ``images_dir`` and ``annotation_file`` written, ``num_images``, ``num_instances``, ``categories``
        (id -> name) and ``wide_images``, how many images are 16-bit.

    Raises:
        ValueError: naming the file or the CSV line: unpaired files, an unreadable file, a label image that
            is not of integers or not of its image's size, an image of an unsupported kind, a label without
            a class in the CSV, or a CSV row naming a label that the label image lacks.
    """
    pairs = _pairs(Path(images_dir), Path(labels_dir), label_suffix)
    rows = _read_classes(Path(classes)) if classes is not None else None
    names = (
        sorted({name for by_label in rows.values() for name in by_label.values()}) if rows else [class_name]
    )
    category_ids = {name: index for index, name in enumerate(names, start=1)}
    out = Path(out_dir)
    (out / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations, wide = [], [], 0
    for image_id, (stem, image_path, label_path) in enumerate(pairs, start=1):
        picture, labels = _picture(image_path), read_label_image(label_path)
        (height, width), (picture_height, picture_width) = labels.shape, picture.shape[:2]
        if (height, width) != (picture_height, picture_width):
            raise ValueError(
                f"{label_path} is {width}x{height} (width x height), its image {image_path} "
                f"{picture_width}x{picture_height}: a label image labels the pixels of its image"
            )
        Image.fromarray(picture).save(out / split / f"{stem}.png")
        wide += int(picture.dtype == np.uint16)
        images.append({"id": image_id, "file_name": f"{stem}.png", "height": height, "width": width})
        present = [label for label in np.unique(labels).tolist() if label]
        if rows is None:
            category_of = dict.fromkeys(present, 1)
        else:
            by_label = _rows_of(rows, stem, present, label_path, classes)
            category_of = {label: category_ids[by_label[label]] for label in present}
        annotations.extend(_annotations(labels, image_id, len(annotations) + 1, category_of))
    annotation_file = out / "annotations" / f"{split}.json"
    categories = [{"id": i, "name": name} for name, i in category_ids.items()]
    annotation_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return {
        "images_dir": out / split,
        "annotation_file": annotation_file,
        "num_images": len(images),
        "num_instances": len(annotations),
        "categories": {i: name for name, i in category_ids.items()},
        "wide_images": wide,
    }


def _pairs(images_dir: Path, labels_dir: Path, label_suffix: str) -> list[tuple[str, Path, Path]]:
    """(stem, image, label image) for every image of ``images_dir``, in name order; unpaired files fail."""
    for folder, what in ((images_dir, "images"), (labels_dir, "label images")):
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder (of the {what})")
    labels: dict[str, Path] = {}
    for path in sorted(labels_dir.iterdir()):
        if path.is_file() and path.suffix.lower() in LABEL_SUFFIXES and path.stem.endswith(label_suffix):
            stem = path.stem[: len(path.stem) - len(label_suffix)]
            if stem in labels:
                raise ValueError(f"{labels[stem]} and {path} are both label images of {stem}")
            labels[stem] = path
    images: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        # In one folder with its images (cellpose's layout), a label image is not an image.
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and path not in labels.values():
            if path.stem in images:
                raise ValueError(f"{images[path.stem]} and {path} are both images of {path.stem}")
            images[path.stem] = path
    if not images:
        raise ValueError(f"{images_dir}: no image ({', '.join(IMAGE_SUFFIXES)})")
    unlabelled, unseen = sorted(images.keys() - labels.keys()), sorted(labels.keys() - images.keys())
    if unlabelled or unseen:
        raise ValueError(
            "images and label images pair by stem"
            + (f" (a label image's stem ending in {label_suffix!r})" if label_suffix else "")
            + ": "
            + "; ".join(
                f"{what} {', '.join(stems[:10])}{' ...' if len(stems) > 10 else ''}"
                for what, stems in (
                    (f"no label image in {labels_dir} for", unlabelled),
                    (f"no image in {images_dir} for", unseen),
                )
                if stems
            )
        )
    return [(stem, images[stem], labels[stem]) for stem in sorted(images)]


def _read_pixels(path: Path, what: str, plain_modes: tuple[str, ...] | None) -> np.ndarray:
    """The pixels of ``path`` as stored, without singleton axes: TIFF by tifffile, others by PIL, whose
    modes other than ``plain_modes`` (None: all) become RGB."""
    try:
        if path.suffix.lower() in _TIFF:
            pixels = tifffile.imread(path)
        else:
            with Image.open(path) as pil:
                pixels = np.asarray(
                    pil if plain_modes is None or pil.mode in plain_modes else pil.convert("RGB")
                )
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: cannot read {what}: {err}") from err
    return pixels.squeeze() if pixels.ndim > 2 else pixels


def _picture(path: Path) -> np.ndarray:
    """An image's pixels as :func:`mrrcnn.data.images.read_image` takes them from a PNG file: ``uint8[H, W]``,
    ``uint8[H, W, 3]`` or ``uint16[H, W]``."""
    pixels = _read_pixels(path, "image", _PLAIN_MODES)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.dtype == np.uint8 and (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))):
        return pixels[..., :3] if pixels.ndim == 3 else pixels
    if (
        pixels.ndim == 2
        and pixels.dtype.kind in "ui"
        and pixels.size
        and 0 <= pixels.min()
        and pixels.max() <= 65535
    ):
        return pixels.astype(np.uint16)
    raise ValueError(
        f"{path}: a {'x'.join(map(str, pixels.shape))} image of {pixels.dtype}; convert takes 8-bit "
        "grayscale or RGB(A) and 16-bit grayscale images of integers (split channels and stacks into images "
        "first)"
    )


def read_label_image(path: Path) -> np.ndarray:
    """A label image file's ``[H, W]`` integers >= 0 (PNG by PIL, TIFF by tifffile), as stored."""
    labels = _read_pixels(path, "label image", None)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.ndim != 2 or labels.dtype.kind not in "ui":
        raise ValueError(
            f"{path}: a {'x'.join(map(str, labels.shape))} label image of {labels.dtype}; a label image "
            "holds one integer per pixel (0 the background, each other value one instance)"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path}: label {labels.min()} is negative; labels are 0 (background) and up")
    return labels


def _read_classes(path: Path) -> dict[str, dict[int, str]]:
    """Class names by image stem and label from a CSV file with the header ``image,label,class``."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # the byte-order mark spreadsheets write
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read classes file {path}: {err}") from err
    lines = list(csv.reader(io.StringIO(text)))
    if not lines or [cell.strip() for cell in lines[0]] != CSV_HEADER:
        raise ValueError(f"{path}: its first line must be the header {','.join(CSV_HEADER)}, got {lines[:1]}")
    rows: dict[str, dict[int, str]] = defaultdict(dict)
    for number, line in enumerate(lines[1:], start=2):
        cells = [cell.strip() for cell in line]
        if not any(cells):
            continue
        image, label, name = cells if len(cells) == 3 else ("", "", "")
        if not (image and label.isdigit() and int(label) >= 1 and name):
            raise ValueError(
                f"{path}, line {number}: needs an image, a label >= 1 and a class name, got {line}"
            )
        stem = Path(image).stem if Path(image).suffix.lower() in IMAGE_SUFFIXES else image
        if int(label) in rows[stem]:
            raise ValueError(f"{path}, line {number}: label {label} of image {stem} has a row already")
        rows[stem][int(label)] = name
    if not rows:
        raise ValueError(f"{path}: no rows below the header {','.join(CSV_HEADER)}")
    return dict(rows)


def _rows_of(
    rows: dict[str, dict[int, str]], stem: str, present: list[int], label_path: Path, classes: str | Path
) -> dict[int, str]:
    """The class of each label of one label image; every label needs a row, and every row a label."""
    by_label = rows.get(stem, {})
    missing = [label for label in present if label not in by_label]
    if missing:
        raise ValueError(
            f"{label_path}: label(s) {missing[:10]} have no class in {classes} (rows {stem},LABEL,CLASS)"
        )
    absent = sorted(by_label.keys() - set(present))
    if absent:
        raise ValueError(
            f"{classes}: the rows of image {stem} name label(s) {absent[:10]}, which {label_path} lacks"
        )
    return by_label


def _annotations(
    labels: np.ndarray, image_id: int, first_id: int, category_of: dict[int, int]
) -> list[dict[str, Any]]:
    """One COCO annotation per label of ``labels`` (``[H, W]``, 0 the background), ids from ``first_id``:
    compressed RLE, its box and area."""
    height, width = labels.shape
    flat = labels.ravel()
    # Each label's pixels at once, from one sort, rather than one pass over the image per label.
    order = np.argsort(flat, kind="stable")
    values, starts = np.unique(flat[order], return_index=True)
    mask = np.zeros((height, width), np.uint8, order="F")
    annotations = []
    for label, pixels in zip(values.tolist(), np.split(order, starts[1:])):
        if not label:
            continue
        rows, cols = np.divmod(pixels, width)
        mask[rows, cols] = 1
        rle = mask_util.encode(mask)
        mask[rows, cols] = 0
        annotations.append(
            {
                "id": first_id + len(annotations),
                "image_id": image_id,
                "category_id": category_of[label],
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                "area": float(mask_util.area(rle)),
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return annotations
