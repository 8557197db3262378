"""A synthetic "huddled instances" benchmark in COCO format, where rectangular RoI features mislead.

Mask R-CNN pools a rectangular RoI: when instances huddle, the box of one holds large parts of its
neighbours, and the pooled features mix them. Shape-aware RoIAlign weights the pooled features by the
instance's own mask. This benchmark is built so that the difference shows:

* The classes (disk, square, triangle, cross, ring) differ by **shape only**. Every instance's colour and
  texture (a flat colour or stripes of two shades of it) are drawn from one distribution shared by all
  classes, so colour says nothing about the class; the model has to tell the outline of one instance
  from the outlines of its neighbours, which is what contaminated RoI features make hard.
* Most instances are drawn in **clusters** of 2-5 of similar size whose centres are 0.2-0.4 sizes
  apart, so their boxes overlap heavily; each instance occludes those drawn before it (in a cluster,
  the larger ones). The others are isolated (placed where their box touches no other box), a control
  group inside the same images.
* An instance is **huddled** when its box has IoU >= 0.3 with the box of another instance of the image
  (:func:`mrrcnn.data.huddle.huddled`); with the default ``crowding`` about half of the instances are.

Masks, boxes and areas describe the **visible** part of each instance. Instances hidden so much that
they could no longer be recognised (visible part under ``MIN_VISIBLE_FRACTION`` of the shape or under
``MIN_VISIBLE_PIXELS``) are removed before the image is painted, so nothing unannotated shows.

Large images (a large-image benchmark) keep the instances of the standard 160-pixel images with
``object_size=160``: shape sizes stay, their number grows with the area. Memory grows with the image and
the instances' bounding squares only, never with their product.

Every image has its own random stream, ``PCG64(SeedSequence(seed, spawn_key=(split, index)))``: the
same seed gives byte-identical files, train and val are independent, and asking for more images keeps
the first ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from numpy.random import PCG64, Generator, SeedSequence
from PIL import Image
from tqdm import tqdm

from .huddle import huddled

CLASSES = ("disk", "square", "triangle", "cross", "ring")
REFERENCE_IMAGE_SIZE = 160
# At REFERENCE_IMAGE_SIZE; sizes scale with the object size (by default the image side), the count with
# the image's area.
SIZE_RANGE = (15.0, 50.0)
INSTANCES_PER_IMAGE = (4, 10)
CLUSTER_SIZES = (2, 5)
# Members of a cluster differ in size by at most this fraction of the cluster's base size: boxes of
# very different sizes overlap without reaching IoU 0.3.
SIZE_JITTER = 0.2
# Each member of a cluster is placed this far (in units of the cluster's base size) from an earlier one:
# near enough that their boxes overlap heavily, far enough that the one below stays recognisable.
CLUSTER_STEP = (0.2, 0.4)
MIN_VISIBLE_FRACTION = 0.4
MIN_VISIBLE_PIXELS = 40
APPEARANCES = ("varied", "uniform")
# Brightness of the outlines of the "uniform" variant, relative to the fill.
OUTLINE_SHADE = 0.35
# Largest distance from the centre to the outline of any class, in units of the instance's size.
EXTENT = 0.6


def make_synthetic(
    out_dir: str | Path,
    num_train: int,
    num_val: int,
    seed: int = 0,
    image_size: int = REFERENCE_IMAGE_SIZE,
    crowding: float = 0.85,
    appearance: str = "varied",
    object_size: int | None = None,
) -> dict[str, Any]:
    """Write the benchmark: ``out_dir/{train,val}/*.png`` and ``out_dir/annotations/{train,val}.json``.

    Annotations are COCO instances: ``segmentation`` a compressed RLE, ``bbox`` [x, y, w, h] and ``area``
    (pixels) of the visible part, ``iscrowd`` 0, ``category_id`` 1..5 in the order of :data:`CLASSES`.

    Args:
        out_dir: output folder; existing files of the same names are overwritten.
        num_train, num_val: number of images per split.
        seed: non-negative integer; the same seed gives byte-identical files.
        image_size: side of the square RGB images in pixels (>= 64); the number of instances per image
            scales with its area, and so do shape sizes unless ``object_size`` is given.
        crowding: expected fraction in [0, 1] of the instances drawn in clusters rather than isolated.
            0 gives no intended overlaps, the default 0.85 about half huddled instances, 1 about 60 %.
        appearance: ``"varied"``: every instance has its own colour and texture, picked to stand out from
            its neighbours; ``"uniform"`` (the harder variant): all instances of an image share one colour
            and texture and each is drawn with a dark 1-pixel outline, so only outlines and occlusions
            separate neighbours, and a rectangle's features mix them most. ``"varied"`` draws exactly
            what it did before this option existed.
        object_size: shapes are sized as in an image of this side in pixels (an integer in
            [64, ``image_size``]), while their number still scales with ``image_size``'s area, so the
            density matches: large images of many instances of the usual size. ``None`` (default): the
            image size. Recorded in the annotations' ``info`` only when given.

    Returns:
        ``{"out_dir": str, "train": {...}, "val": {...}}`` where each split gives ``images_dir``,
        ``annotation_file``, ``num_images``, ``num_instances`` and ``huddled_fraction`` (of its instances).
    """
    if not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(image_size, int) and image_size >= 64):
        raise ValueError(f"image_size must be an integer >= 64, got {image_size!r}")
    if object_size is not None and not (isinstance(object_size, int) and 64 <= object_size <= image_size):
        raise ValueError(
            f"object_size must be an integer in [64, image_size={image_size}], got {object_size!r}"
        )
    if not 0.0 <= crowding <= 1.0:
        raise ValueError(f"crowding must lie in [0, 1], got {crowding!r}")
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")
    for name, count in (("num_train", num_train), ("num_val", num_val)):
        if not (isinstance(count, int) and count >= 0):
            raise ValueError(f"{name} must be a non-negative integer, got {count!r}")

    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"out_dir": str(out_dir)}
    info = {
        "description": "mrrcnn synthetic huddled instances",
        "seed": seed,
        "image_size": image_size,
        "crowding": crowding,
        "appearance": appearance,
    }
    # Only when given: files written without it stay byte-identical to those made before it existed.
    if object_size is not None:
        info["object_size"] = object_size
    with tqdm(total=num_train + num_val, desc="synth", unit="img", disable=None) as progress:
        for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            images_dir = out_dir / split
            images_dir.mkdir(exist_ok=True)
            images, annotations, num_huddled = [], [], 0
            for index in range(count):
                rng = Generator(PCG64(SeedSequence(seed, spawn_key=(split_index, index))))
                pixels, labels, masks = _draw_image(
                    rng, image_size, crowding, appearance, object_size or image_size
                )
                file_name = f"{index:06d}.png"
                Image.fromarray(pixels).save(images_dir / file_name, format="PNG", compress_level=6)
                image_id = index + 1
                images.append(
                    {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
                )
                records, image_huddled = _instance_records(
                    image_id, len(annotations) + 1, labels, masks, image_size
                )
                annotations.extend(records)
                num_huddled += image_huddled
                progress.update()
            annotation_file = out_dir / "annotations" / f"{split}.json"
            coco = {
                "info": info,
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": [
                    {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)
                ],
            }
            annotation_file.write_text(json.dumps(coco, separators=(",", ":")), encoding="utf-8")
            summary[split] = {
                "images_dir": str(images_dir),
                "annotation_file": str(annotation_file),
                "num_images": count,
                "num_instances": len(annotations),
                "huddled_fraction": num_huddled / max(len(annotations), 1),
            }
    return summary


class _Crop(NamedTuple):
    """A bool ``mask`` ``[h, w]`` over the image window whose top-left pixel is row ``y0``, column ``x0``."""

    y0: int
    x0: int
    mask: np.ndarray

    @property
    def window(self) -> tuple[slice, slice]:
        """The rows and columns of the image that ``mask`` covers."""
        height, width = self.mask.shape
        return slice(self.y0, self.y0 + height), slice(self.x0, self.x0 + width)


def _instance_records(
    image_id: int, first_id: int, labels: np.ndarray, masks: list[_Crop], size: int
) -> tuple[list[dict[str, Any]], int]:
    """COCO annotation records of one image's instances, numbered from ``first_id``, and how many are huddled.

    Args:
        labels: ``int[N]`` category ids.
        masks: the ``N`` visible parts, non-empty, in a ``size`` x ``size`` image.
    """
    boxes = np.array([_crop_box(mask) for mask in masks], dtype=np.int64).reshape(-1, 4)
    num_huddled = int(huddled(torch.from_numpy(boxes).double()).sum())
    rles = [_encode(mask, size) for mask in masks]
    records = [
        {
            "id": first_id + i,
            "image_id": image_id,
            "category_id": int(label),
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            "area": int(mask_util.area(rle)),
            "bbox": [int(box[0]), int(box[1]), int(box[2] - box[0]), int(box[3] - box[1])],
            "iscrowd": 0,
        }
        for i, (label, box, rle) in enumerate(zip(labels, boxes, rles))
    ]
    return records, num_huddled


def _crop_box(crop: _Crop) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) pixel-edge box, in image pixels, of a non-empty ``crop``."""
    rows, cols = np.flatnonzero(crop.mask.any(1)), np.flatnonzero(crop.mask.any(0))
    return crop.x0 + cols[0], crop.y0 + rows[0], crop.x0 + cols[-1] + 1, crop.y0 + rows[-1] + 1


def _encode(crop: _Crop, size: int) -> dict[str, Any]:
    """Compressed COCO RLE of ``crop`` in a ``size`` x ``size`` image, without building the whole mask.

    The runs alternate zeros and ones, zeros first, over the pixels in column-major order. The crop's
    columns, with the zero rows above and below it (a ``[size, w]`` strip), are one stretch of that
    order; the columns left and right of it only lengthen the first and the last run of zeros. The counts
    are those ``mask_util.encode`` finds in the whole mask, so the string is the same.
    """
    height, width = crop.mask.shape
    strip = np.zeros((size, width), dtype=bool)
    strip[crop.y0 : crop.y0 + height] = crop.mask
    flat = strip.ravel(order="F")
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], starts, [flat.size]]))
    if flat[0]:
        runs = np.concatenate([[0], runs])
    runs[0] += crop.x0 * size
    after = (size - crop.x0 - width) * size
    if len(runs) % 2:  # the last run counts zeros
        runs[-1] += after
    elif after:
        runs = np.append(runs, after)
    return mask_util.frPyObjects({"size": [size, size], "counts": runs.tolist()}, size, size)


def _draw_image(
    rng: Generator, size: int, crowding: float, appearance: str, object_size: int
) -> tuple[np.ndarray, np.ndarray, list[_Crop]]:
    """Lay out and paint one image, with shapes sized as in an image of ``object_size`` pixels.

    Memory is O(image + the instances' bounding squares): each shape lives in its own window only.

    Returns:
        ``pixels``: uint8 ``[size, size, 3]`` RGB; ``labels``: int64 ``[N]`` category ids (1-based);
        ``masks``: the ``N`` visible parts, disjoint.
    """
    labels, centres, sizes, angles = _layout(rng, size, crowding, object_size)
    # Shapes read their windows of this grid: a crop sees exactly the pixel centres the whole image has.
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    shapes = [_shape_crop(*args, xs, ys) for args in zip(labels, centres, sizes, angles)]
    area = np.array([part.mask.sum() for part in _visible(shapes, size)], dtype=np.int64)
    whole = np.array([shape.mask.sum() for shape in shapes], dtype=np.int64)
    keep = (area >= MIN_VISIBLE_FRACTION * whole) & (area >= MIN_VISIBLE_PIXELS)
    # Removing instances only uncovers the others, so everyone kept still passes the test.
    labels, centres, sizes = labels[keep], centres[keep], sizes[keep]
    shapes = [shape for shape, kept in zip(shapes, keep) if kept]
    visible = _visible(shapes, size)

    pixels = _background(rng, size, xs, ys)
    if appearance == "uniform":
        _paint_uniform(rng, pixels, shapes, visible, xs, ys)
    else:
        _paint_varied(rng, pixels, centres, sizes, visible, xs, ys)
    pixels += rng.normal(0.0, 0.02, pixels.shape)
    pixels = np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    return pixels, labels + 1, visible


def _paint_varied(
    rng: Generator,
    pixels: np.ndarray,
    centres: np.ndarray,
    sizes: np.ndarray,
    visible: list[_Crop],
    xs: np.ndarray,
    ys: np.ndarray,
) -> None:
    """Paint every instance's visible part with its own colour and texture, in place.

    Args:
        pixels: float ``[H, W, 3]`` background, painted over; centres: float ``[N, 2]`` (x, y pixels);
            sizes: float ``[N]`` (pixels); xs, ys: pixel-centre coordinates ``[H, W]``.
    """
    colours = np.empty((len(visible), 3))
    for i, part in enumerate(visible):
        cx, cy = centres[i].astype(int)
        near = np.linalg.norm(centres[:i] - centres[i], axis=1) < EXTENT * (sizes[:i] + sizes[i])
        colours[i] = _pick_colour(rng, np.concatenate([pixels[cy, cx][None], colours[:i][near]]))
        window = part.window
        painted = pixels[window]
        painted[part.mask] = _texture(rng, colours[i], xs[window][part.mask], ys[window][part.mask])


def _paint_uniform(
    rng: Generator,
    pixels: np.ndarray,
    shapes: list[_Crop],
    visible: list[_Crop],
    xs: np.ndarray,
    ys: np.ndarray,
) -> None:
    """Paint every instance with the image's one fill and a dark outline of its whole shape, in place.

    Args:
        pixels: float ``[H, W, 3]`` background, painted over; shapes, visible: whole shapes and their
            visible parts, in the same windows; xs, ys: pixel-centre coordinates ``[H, W]``.
    """
    size = pixels.shape[0]
    colour = _pick_colour(rng, pixels[size // 2, size // 2][None])
    fill = _texture(rng, colour, xs.ravel(), ys.ravel()).reshape(pixels.shape)
    for shape, part in zip(shapes, visible):
        rim = part.mask & _outline(shape.mask)
        painted, shape_fill = pixels[part.window], fill[part.window]
        painted[part.mask] = shape_fill[part.mask]
        painted[rim] = shape_fill[rim] * OUTLINE_SHADE


def _outline(mask: np.ndarray) -> np.ndarray:
    """Bool ``[h, w]``: the pixels of ``mask`` with a 4-neighbour outside it (beyond the edge counts)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def _layout(rng: Generator, size: int, crowding: float, object_size: int) -> tuple[np.ndarray, ...]:
    """Draw the instances in painting order: clusters first, then isolated ones in the space left.

    Positions span the image's ``size``; sizes are those of an image of ``object_size`` pixels, and the
    count is that of such images covering this one's area, ``(size / object_size)**2`` of them, so the
    density of instances stays the same.

    Returns:
        ``labels`` int ``[N]`` (0-based class), ``centres`` float ``[N, 2]`` (x, y pixels), ``sizes``
        float ``[N]`` (pixels) and ``angles`` float ``[N]`` (radians).
    """
    scale = object_size / REFERENCE_IMAGE_SIZE
    # (object_size / REF)**2 instances per object_size image times (size / object_size)**2 images.
    low, high = (max(1, round(n * (size / REFERENCE_IMAGE_SIZE) ** 2)) for n in INSTANCES_PER_IMAGE)
    num_instances = int(rng.integers(low, high + 1))
    left = int(rng.binomial(num_instances, crowding))
    centres, sizes = [], []
    while left >= CLUSTER_SIZES[0]:
        members = min(int(rng.integers(CLUSTER_SIZES[0], CLUSTER_SIZES[1] + 1)), left)
        left -= members
        base = rng.uniform(SIZE_RANGE[0] / (1 - SIZE_JITTER), SIZE_RANGE[1] / (1 + SIZE_JITTER)) * scale
        # Largest first: a smaller instance on top leaves more of the one below visible.
        member_sizes = np.sort(base * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER, members))[::-1]
        points = np.zeros((members, 2))
        for k in range(1, members):
            direction = rng.uniform(0, 2 * math.pi)
            step = rng.uniform(*CLUSTER_STEP) * base
            points[k] = points[rng.integers(0, k)] + step * np.array(
                [math.cos(direction), math.sin(direction)]
            )
        centre = rng.uniform(EXTENT * base, size - EXTENT * base, 2)
        margin = EXTENT * member_sizes[:, None]
        centres.extend(np.clip(centre + points - points.mean(0), margin, size - margin))
        sizes.extend(member_sizes)
    for _ in range(num_instances - len(sizes)):
        d = rng.uniform(*SIZE_RANGE) * scale
        candidates = rng.uniform(EXTENT * d, size - EXTENT * d, (20, 2))
        if sizes:
            # A gap of 2 px keeps isolated instances apart from everything drawn before.
            reach = EXTENT * (np.asarray(sizes) + d) + 2
            apart = (np.abs(candidates[:, None] - np.asarray(centres)[None]) > reach[None, :, None]).any(2)
            candidates = candidates[apart.all(1)]
        if len(candidates):
            centres.append(candidates[0])
            sizes.append(d)
    count = len(sizes)
    labels = rng.integers(0, len(CLASSES), count)
    angles = rng.uniform(0, 2 * math.pi, count)
    return labels, np.asarray(centres).reshape(count, 2), np.asarray(sizes), angles


def _shape(
    label: int, centre: np.ndarray, d: float, angle: float, xs: np.ndarray, ys: np.ndarray
) -> np.ndarray:
    """Bool ``[H, W]`` mask of one whole shape of size ``d`` pixels, rotated by ``angle`` radians."""
    dx, dy = xs - centre[0], ys - centre[1]
    u = math.cos(angle) * dx + math.sin(angle) * dy
    v = -math.sin(angle) * dx + math.cos(angle) * dy
    r2 = u * u + v * v
    name = CLASSES[label]
    if name == "disk":
        return r2 <= (0.5 * d) ** 2
    if name == "ring":
        return (r2 <= (0.5 * d) ** 2) & (r2 >= (0.25 * d) ** 2)
    if name == "square":
        return (np.abs(u) <= 0.4 * d) & (np.abs(v) <= 0.4 * d)
    if name == "cross":
        long, short = np.maximum(np.abs(u), np.abs(v)), np.minimum(np.abs(u), np.abs(v))
        return (long <= 0.5 * d) & (short <= 0.17 * d)
    # Equilateral triangle of circumradius 0.55 d: inside the three edges at the inradius.
    normals = np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    inside = np.cos(normals)[:, None, None] * u + np.sin(normals)[:, None, None] * v <= 0.275 * d
    return inside.all(0)


def _shape_crop(
    label: int, centre: np.ndarray, d: float, angle: float, xs: np.ndarray, ys: np.ndarray
) -> _Crop:
    """One whole shape (see :func:`_shape`) in its bounding square, centre +- ``EXTENT * d`` clipped.

    A margin of 1 pixel keeps a border of background around the shape inside the image, so that its
    outline (:func:`_outline`) is the same as in the whole image.
    """
    size = xs.shape[0]
    x0, y0 = (max(0, math.floor(c - EXTENT * d) - 1) for c in centre)
    x1, y1 = (min(size, math.ceil(c + EXTENT * d) + 1) for c in centre)
    window = slice(y0, y1), slice(x0, x1)
    return _Crop(y0, x0, _shape(label, centre, d, angle, xs[window], ys[window]))


def _visible(shapes: list[_Crop], size: int) -> list[_Crop]:
    """The visible parts of whole ``shapes`` painted in order in a ``size`` x ``size`` image."""
    top = np.full((size, size), -1, dtype=np.int32)  # which shape was painted last at each pixel
    for i, shape in enumerate(shapes):
        top[shape.window][shape.mask] = i
    return [
        _Crop(shape.y0, shape.x0, shape.mask & (top[shape.window] == i)) for i, shape in enumerate(shapes)
    ]


def _background(rng: Generator, size: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Float ``[H, W, 3]`` smooth, low-contrast linear gradient in [0, 1]."""
    start = rng.uniform(0.1, 0.9, 3)
    end = np.clip(start + rng.uniform(-0.25, 0.25, 3), 0.0, 1.0)
    angle = rng.uniform(0, 2 * math.pi)
    t = ((xs - size / 2) * math.cos(angle) + (ys - size / 2) * math.sin(angle)) / (size * math.sqrt(2)) + 0.5
    return start + (end - start) * t[..., None]


def _pick_colour(rng: Generator, avoid: np.ndarray) -> np.ndarray:
    """The one of 8 random RGB colours farthest from the colours ``avoid`` (``[K, 3]``, in [0, 1]).

    The choice only looks at the surroundings, never at the class, so every class keeps the same colour
    distribution; it keeps outlines visible against the background and the neighbours.
    """
    candidates = rng.uniform(0.0, 1.0, (8, 3))
    distance = np.linalg.norm(candidates[:, None] - avoid[None], axis=2).min(1)
    return candidates[np.argmax(distance)]


def _texture(rng: Generator, colour: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Float ``[P, 3]`` fill of the pixels at ``xs``, ``ys`` (``[P]``): flat, or stripes of two shades."""
    if rng.uniform() < 0.5:
        return np.broadcast_to(colour, (len(xs), 3))
    angle, period, shade = rng.uniform(0, math.pi), rng.uniform(4.0, 9.0), rng.uniform(0.5, 0.8)
    stripe = np.floor((xs * math.cos(angle) + ys * math.sin(angle)) / period) % 2
    return colour * (1 - (1 - shade) * stripe)[:, None]
