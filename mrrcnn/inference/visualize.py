"""Drawing instances as microscopy viewers show them (translucent fills, thin outlines, small images
enlarged, captions only where they fit), and figures side by side."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .detections import Detections

# Golden-ratio hue steps: neighbouring instances, the point of the huddled benchmark, get distinct colours.
_HUE_STEP = 0.618033988749895
# Translucent enough that the cell under a fill stays visible, as napari's label layers draw them.
FILL_ALPHA = 0.35
# Automatic enlargement: the shorter side reaches this many pixels, by a whole factor of at most MAX_SCALE.
MIN_SIDE = 512
MAX_SCALE = 8


def _colour(index: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((index * _HUE_STEP) % 1.0, 0.85, 1.0)
    return round(255 * r), round(255 * g), round(255 * b)


def auto_scale(height: int, width: int) -> int:
    """The whole factor that enlarges a ``height`` x ``width`` image until its shorter side is at least
    :data:`MIN_SIDE` pixels, at most :data:`MAX_SCALE`; 1 for images that large already."""
    return max(1, min(MAX_SCALE, math.ceil(MIN_SIDE / min(height, width))))


def draw_label_image(
    image: Tensor,
    labels: Tensor | np.ndarray,
    captions: list[str],
    boxes: Tensor | None = None,
    scale: float | None = None,
) -> Image.Image:
    """The image with each instance of ``labels`` as a translucent fill and a 1-pixel outline of its colour.

    The picture is enlarged first, by nearest neighbour so that pixels stay square and fills stay on
    them; outlines are drawn at the enlarged size, so they stay thin beside the instances. An outline
    pixel is one of an instance whose 4-neighbour (within the picture) is not of that instance. Captions
    are white on a black edge, centred in the instance's box, and drawn only where they fit inside it: on
    hundreds of small instances none is drawn rather than a pile of unreadable ones.

    Args:
        image: ``Tensor[3, H, W]``, RGB in [0, 1].
        labels: integers ``[H, W]``: 0 the background, k the pixels of instance k.
        captions: one per instance, that of instance k at index k - 1 ("" for none).
        boxes: ``Tensor[N, 4]`` (x1, y1, x2, y2, image pixels), one per caption, drawn as outlines in the
            instances' colours (for a model without masks); the captions are placed in them. Without
            boxes, captions are placed in the boxes of the instances' pixels.
        scale: enlarge by this factor (> 0); None: by :func:`auto_scale`.

    Returns:
        An RGB image of ``round(scale * W)`` x ``round(scale * H)`` pixels.

    Raises:
        ValueError: ``labels`` not of the image's size or with a label above ``len(captions)``, boxes not
            one per caption, or a ``scale`` that is not a positive number.
    """
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    height, width = image.shape[-2:]
    _check(labels, (height, width), captions, boxes, scale)
    factor = auto_scale(height, width) if scale is None else scale
    size = (round(factor * height), round(factor * width))
    rows, cols = _nearest(height, size[0]), _nearest(width, size[1])
    big = labels[rows][:, cols]
    pixels = image.detach().cpu().clamp(0, 1).mul(255)[:, rows][:, :, cols].permute(1, 2, 0)
    palette = torch.tensor([(0, 0, 0)] + [_colour(i) for i in range(len(captions))], dtype=torch.float32)
    inside = big > 0
    pixels[inside] = (1 - FILL_ALPHA) * pixels[inside] + FILL_ALPHA * palette[big[inside]]
    edge = _outline(big)
    pixels[edge] = palette[big[edge]]
    picture = Image.fromarray(pixels.round().to(torch.uint8).contiguous().numpy())
    stretch = torch.tensor([size[1] / width, size[0] / height]).repeat(2)
    if boxes is not None:
        boxes = boxes.detach().cpu().float() * stretch
        draw = ImageDraw.Draw(picture)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().tolist()):
            # PIL's rectangle includes its far corner; the box's x2, y2 are exclusive.
            draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=_colour(k))
    else:
        boxes = _label_boxes(labels, len(captions)) * stretch
    _caption(picture, captions, boxes)
    return picture


def _check(
    labels: Tensor,
    size: tuple[int, int],
    captions: list[str],
    boxes: Tensor | None,
    scale: float | None,
) -> None:
    if tuple(labels.shape) != size:
        raise ValueError(f"labels must be [H, W] = {list(size)} like the image, got {list(labels.shape)}")
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) <= len(captions):
        raise ValueError(
            f"labels must be 0 (background) to {len(captions)} (one per caption), got "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    if boxes is not None and tuple(boxes.shape) != (len(captions), 4):
        raise ValueError(f"boxes must be [N, 4] with N = {len(captions)} captions, got {list(boxes.shape)}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number or None (automatic), got {scale!r}")


def _nearest(length: int, size: int) -> Tensor:
    """For each of ``size`` enlarged pixels, the source pixel (of ``length``) its centre falls in."""
    return ((torch.arange(size) + 0.5) * (length / size)).long().clamp(max=length - 1)


def _outline(labels: Tensor) -> Tensor:
    """``BoolTensor[H, W]``: instance pixels (``labels`` > 0) with a 4-neighbour of another label."""
    edge = torch.zeros_like(labels, dtype=torch.bool)
    vertical, horizontal = labels[1:] != labels[:-1], labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge & (labels > 0)


def _label_boxes(labels: Tensor, count: int) -> Tensor:
    """``Tensor[count, 4]``: the pixel-edge box (x1, y1, x2, y2) of each label 1..count; an absent label
    gets an empty box (x2 < x1)."""
    height, width = labels.shape
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    flat = labels.flatten()

    def reduce(values: Tensor, how: str, start: int) -> Tensor:
        out = torch.full((count + 1,), start, dtype=torch.int64)
        return out.scatter_reduce_(0, flat, values.flatten(), how)[1:]

    x1, y1 = reduce(cols, "amin", width), reduce(rows, "amin", height)
    x2, y2 = reduce(cols, "amax", -1) + 1, reduce(rows, "amax", -1) + 1
    return torch.stack([x1, y1, x2, y2], 1).float()


def _caption(picture: Image.Image, captions: list[str], boxes: Tensor) -> None:
    """Write each caption centred in its box (picture pixels) where the text fits inside the box."""
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for caption, (x1, y1, x2, y2) in zip(captions, boxes.tolist()):
        if not caption:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font, stroke_width=1)
        if right - left > x2 - x1 or bottom - top > y2 - y1:
            continue
        at = ((x1 + x2 - right - left) / 2, (y1 + y2 - bottom - top) / 2)
        draw.text(at, caption, fill="white", font=font, stroke_width=1, stroke_fill="black")


def draw_detections(
    image: Tensor, detections: Detections, categories: dict[int, str], scale: float | None = None
) -> Image.Image:
    """The image with each detection drawn by :func:`draw_label_image`, captioned ``"class score"``: its
    mask, each pixel the highest-scoring detection's covering it, or its box for a model without masks.

    Args:
        image: ``Tensor[3, H, W]``, RGB in [0, 1].
        detections: the image's detections (select the confident ones first).
        categories: category id -> name; an id not in it is shown as its number.
        scale: enlarge by this factor; None: by :func:`auto_scale`.

    Returns:
        An RGB image of ``round(scale * W)`` x ``round(scale * H)`` pixels; instances coloured by
        descending score.
    """
    detections = detections.select(torch.argsort(detections.scores, descending=True, stable=True))
    captions = [
        f"{categories.get(int(label), int(label))} {float(score):.2f}"
        for label, score in zip(detections.labels, detections.scores)
    ]
    if detections.masks is None:
        labels = torch.zeros(image.shape[-2:], dtype=torch.int64)
        return draw_label_image(image, labels, captions, detections.boxes, scale)
    return draw_label_image(image, detections.label_image(), captions, scale=scale)


def side_by_side(images: list[Image.Image], titles: list[str], columns: int | None = None) -> Image.Image:
    """Tile images in a grid, left to right then top to bottom, each under its title.

    Args:
        images: the pictures; each cell is as large as the largest, pictures sit in its top-left corner.
        titles: one line of text per picture.
        columns: cells per row (default: all in one row).

    Returns:
        An RGB image on a white background.
    """
    if len(images) != len(titles) or not images:
        raise ValueError(
            f"side_by_side needs one title per image, got {len(images)} images, {len(titles)} titles"
        )
    columns = columns or len(images)
    rows = -(-len(images) // columns)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_height = max(draw.textbbox((0, 0), title)[3] for title in titles) + 6
    cell_w = max(image.width for image in images) + 8
    cell_h = max(image.height for image in images) + title_height + 8
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for index, (image, title) in enumerate(zip(images, titles)):
        x, y = (index % columns) * cell_w + 4, (index // columns) * cell_h + 4
        draw.text((x, y), title, fill="black")
        grid.paste(image.convert("RGB"), (x, y + title_height))
    return grid
