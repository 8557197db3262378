"""Tiles of a large image and the merging of their detections into the image's.

An instance on a seam is seen by two (or four) overlapping tiles: whole in one, cut in the other, or cut
in both. Two detections of different tiles are the same instance when they have the same category and
their masks agree where both tiles see: mask IoU at least ``iou_threshold`` within the intersection of
the two tiles. The same instance's detections are joined (transitively, across any number of tiles) into
one: the union of the masks and of the boxes, the highest score. docs/method.md ("Tiled inference") says
why this rule, against NMS over tiles, keeping the tile that holds the centre, and SAHI's merging.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from torchvision.ops import box_iou

from .detections import Detections

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels, x1 and y1 exclusive


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` pixels covering ``length`` pixels, neighbours overlapping by at least
    ``overlap``, spread evenly so that every tile is whole (none is a sliver at the far edge)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[Window]:
    """Windows of at most ``tile`` x ``tile`` pixels covering a ``height`` x ``width`` image, overlapping by at
    least ``overlap`` pixels, in row-major order.

    Raises:
        ValueError: ``tile`` not larger than ``overlap``.
    """
    if tile <= overlap:
        raise ValueError(f"a tile ({tile} px) must be larger than its overlap ({overlap} px)")
    return [
        (x, y, min(x + tile, width), min(y + tile, height))
        for y in _starts(height, tile, overlap)
        for x in _starts(width, tile, overlap)
    ]


def merge_tiles(
    tiles: list[tuple[Window, Detections]], image_size: tuple[int, int], iou_threshold: float = 0.5
) -> Detections:
    """One image's detections from those of its tiles (in image pixels), each seam instance once.

    Args:
        tiles: each tile's window and its detections, boxes and crops in image pixels.
        image_size: (height, width) of the image.
        iou_threshold: least mask IoU, within two tiles' intersection, of one instance's two detections.

    Returns:
        The detections, sorted by descending score.
    """
    parts = [detections for _, detections in tiles]
    if not parts:
        return Detections.empty(image_size)
    with_masks = parts[0].masks is not None
    tile_of = torch.cat([torch.full((len(d),), i) for i, d in enumerate(parts)])
    joined = Detections(
        torch.cat([d.boxes for d in parts]),
        torch.cat([d.scores for d in parts]),
        torch.cat([d.labels for d in parts]),
        [m for d in parts for m in d.masks] if with_masks else None,
        torch.cat([d.origins for d in parts]),
        image_size,
    )
    windows = [window for window, _ in tiles]
    groups = _same_instances(joined, tile_of, windows, iou_threshold)
    merged = [_union(joined, group) for group in groups]
    if not merged:
        return Detections.empty(image_size, with_masks)
    result = Detections(
        torch.stack([m[0] for m in merged]),
        torch.stack([m[1] for m in merged]),
        torch.stack([m[2] for m in merged]),
        [m[3] for m in merged] if with_masks else None,
        torch.stack([m[4] for m in merged]),
        image_size,
    )
    return result.select(torch.argsort(result.scores, descending=True, stable=True))


def _same_instances(
    joined: Detections, tile_of: Tensor, windows: list[Window], iou_threshold: float
) -> list[list[int]]:
    """Groups of indices into ``joined`` that are one instance (union-find over matching pairs)."""
    parent = list(range(len(joined)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Only neighbouring tiles share pixels, and only their detections there can be one instance: work stays
    # proportional to the detections near seams, not to the square of the image's.
    for a, b in itertools.combinations(range(len(windows)), 2):
        shared = _intersection(windows[a], windows[b])
        if shared is None:
            continue
        near = [_in_window(joined.boxes, tile_of == t, shared) for t in (a, b)]
        if not (len(near[0]) and len(near[1])):
            continue
        pairs = (box_iou(joined.boxes[near[0]], joined.boxes[near[1]]) > 0) & (
            joined.labels[near[0]][:, None] == joined.labels[near[1]][None, :]
        )
        for i, j in pairs.nonzero().tolist():
            i, j = int(near[0][i]), int(near[1][j])
            if _iou_within(joined, i, j, shared) >= iou_threshold:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(joined)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _in_window(boxes: Tensor, among: Tensor, window: Window) -> Tensor:
    """Indices of the boxes, ``among`` (``BoolTensor[N]``) them, that overlap ``window``."""
    x0, y0, x1, y1 = window
    inside = (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)
    return (inside & among).nonzero()[:, 0]


def _intersection(a: Window, b: Window) -> Window | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _iou_within(joined: Detections, i: int, j: int, window: Window) -> float:
    """IoU of detections ``i`` and ``j`` within ``window``: their masks', or without masks their boxes'."""
    if joined.masks is None:
        clip = torch.tensor(window, dtype=torch.float32)
        boxes = joined.boxes[[i, j]].clone()
        boxes[:, :2] = boxes[:, :2].max(clip[:2])
        boxes[:, 2:] = boxes[:, 2:].min(clip[2:])
        return float(box_iou(boxes[:1], boxes[1:])[0, 0])
    a, b = _window_of(joined, i, window), _window_of(joined, j, window)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def _window_of(joined: Detections, index: int, window: Window) -> Tensor:
    """Detection ``index``'s mask within ``window``: ``BoolTensor[y1 - y0, x1 - x0]``."""
    x0, y0, x1, y1 = window
    canvas = torch.zeros(y1 - y0, x1 - x0, dtype=torch.bool)
    mask, (mx, my) = joined.masks[index], joined.origins[index].tolist()
    h, w = mask.shape
    cx0, cy0, cx1, cy1 = max(mx, x0), max(my, y0), min(mx + w, x1), min(my + h, y1)
    if cx0 < cx1 and cy0 < cy1:
        canvas[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = mask[cy0 - my : cy1 - my, cx0 - mx : cx1 - mx]
    return canvas


def _union(joined: Detections, group: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
    """Box, score, label, mask crop and crop origin of one instance seen as the detections ``group``."""
    boxes = joined.boxes[group]
    box = torch.cat([boxes[:, :2].min(0).values, boxes[:, 2:].max(0).values])
    score, label = joined.scores[group].max(), joined.labels[group[0]]
    if joined.masks is None or len(group) == 1:
        mask = None if joined.masks is None else joined.masks[group[0]]
        return box, score, label, mask, joined.origins[group[0]]
    present = [i for i in group if joined.masks[i].numel()]
    if not present:
        return box, score, label, joined.masks[group[0]], joined.origins[group[0]]
    x0 = min(int(joined.origins[i, 0]) for i in present)
    y0 = min(int(joined.origins[i, 1]) for i in present)
    x1 = max(int(joined.origins[i, 0]) + joined.masks[i].shape[1] for i in present)
    y1 = max(int(joined.origins[i, 1]) + joined.masks[i].shape[0] for i in present)
    mask = torch.zeros(y1 - y0, x1 - x0, dtype=torch.bool)
    for i in present:
        (mx, my), crop = joined.origins[i].tolist(), joined.masks[i]
        mask[my - y0 : my - y0 + crop.shape[0], mx - x0 : mx - x0 + crop.shape[1]] |= crop
    return box, score, label, mask, torch.tensor([x0, y0])
