"""Drawing predictions: coloured masks, boxes and labels over the image, and figures side by side."""

from __future__ import annotations

import colorsys

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

# Golden-ratio hue steps: neighbouring instances, the point of the huddled benchmark, get distinct colours.
_HUE_STEP = 0.618033988749895


def _colour(index: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((index * _HUE_STEP) % 1.0, 0.85, 1.0)
    return round(255 * r), round(255 * g), round(255 * b)


def draw_predictions(
    image: Tensor,
    prediction: dict[str, Tensor],
    categories: dict[int, str],
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    scale: float = 1.0,
) -> Image.Image:
    """The image with each confident detection's mask, box and ``"class score"`` label, one colour each.

    Args:
        image: ``Tensor[3, H, W]``, RGB in [0, 1].
        prediction: a torchvision detection output in the image's pixels: ``boxes`` ``Tensor[N, 4]``
            (x1, y1, x2, y2), ``labels`` ``Int64Tensor[N]``, ``scores`` ``Tensor[N]`` and optionally
            ``masks`` ``Tensor[N, 1, H, W]`` probabilities.
        categories: category id -> name; an id not in it is shown as its number.
        score_threshold: detections scoring below this are not drawn.
        mask_threshold: a mask pixel is drawn where its probability is above this.
        scale: enlarge the picture by this factor first, so that labels stay legible on small images.

    Returns:
        An RGB image of ``round(scale * W)`` x ``round(scale * H)`` pixels.
    """
    keep = (prediction["scores"] >= score_threshold).cpu()
    boxes = prediction["boxes"].detach().cpu()[keep]
    image = image.detach().cpu()
    masks = prediction["masks"].detach().cpu()[keep] if "masks" in prediction else None
    if scale != 1.0:
        size = (round(scale * image.shape[1]), round(scale * image.shape[2]))
        boxes = boxes * torch.tensor([size[1] / image.shape[2], size[0] / image.shape[1]]).repeat(2)
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        if masks is not None and len(masks):
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    canvas = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    if not len(boxes):
        return to_pil_image(canvas)
    colours = [_colour(i) for i in range(len(boxes))]
    if masks is not None:
        canvas = draw_segmentation_masks(canvas, masks[:, 0] > mask_threshold, alpha=0.45, colors=colours)
    labels = [
        f"{categories.get(int(label), int(label))} {float(score):.2f}"
        for label, score in zip(prediction["labels"].cpu()[keep], prediction["scores"].cpu()[keep])
    ]
    # Black text on a box-coloured patch stays legible over any mask or background.
    canvas = draw_bounding_boxes(
        canvas, boxes, labels=labels, colors=colours, width=1, label_colors="black", fill_labels=True
    )
    return to_pil_image(canvas)


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
