"""What Shape-aware RoIAlign weights a box's samples by: ``model.sara_weighting`` (docs/method.md).

- ``own`` (the paper): the instance's own mask ``P_i``;
- ``others``: ``1 - max_j P_j`` over the *other* instances ``j``: the neighbours suppressed, the
  instance's own shape not used;
- ``ownership``: ``P_i * (1 - max_j P_j)``: the own mask, with what a neighbour claims taken out;
- ``iterative``: the refining mask head's mask on the box (the refining module's, not stage 1's).

The functions here compute the neighbours' part. Every mask covers its own box as Mask R-CNN's do
(``M x M`` cells, a cell's value at its centre); another instance's mask is read at the centres of a
box's cells by bilinear interpolation, zero outside that instance's box. Detections of the same instance
must not suppress each other: ``j`` counts as another instance of box ``i`` when their boxes overlap with
IoU below :data:`SAME_INSTANCE_IOU`, the threshold at which stage 1's NMS calls two boxes one object.
TorchScript- and ONNX-exportable (no data-dependent Python).
"""

import torch
from torch import Tensor
from torchvision.ops import box_iou

WEIGHTINGS = ("own", "others", "ownership", "iterative")
SAME_INSTANCE_IOU = 0.5


def _interpolation(
    start: Tensor, size: Tensor, other_start: Tensor, other_size: Tensor, cells: int
) -> Tensor:
    """``Tensor[N, D, M, M]``: row ``a`` of matrix ``(n, d)`` holds the weights by which the centre of cell
    ``a`` of box ``n`` (along one axis, ``M = cells``) reads the cells of box ``d``'s mask: bilinear, with
    cell centres at ``(k + 0.5) / M`` of the box and zeros beyond its edge cells (``F.grid_sample``'s
    ``align_corners=False``, ``padding_mode="zeros"``).

    Args:
        start, size: ``Tensor[N]``, each box's first coordinate and extent along the axis (pixels).
        other_start, other_size: ``Tensor[D]``, the same for the boxes whose masks are read.
    """
    grid = torch.arange(cells, dtype=start.dtype, device=start.device)
    centres = start[:, None] + (grid + 0.5) * (size[:, None] / cells)
    source = (centres[:, None, :] - other_start[None, :, None]) / other_size.clamp(min=1e-6)[None, :, None]
    source = source * cells - 0.5
    low = torch.floor(source)
    frac = (source - low)[..., None]
    low = low[..., None]
    return (grid == low).to(start.dtype) * (1.0 - frac) + (grid == low + 1.0).to(start.dtype) * frac


def resample_masks(boxes: Tensor, other_boxes: Tensor, other_masks: Tensor) -> Tensor:
    """``Tensor[N, D, M, M]``: every mask of ``other_masks: Tensor[D, M, M]`` (each covering its box of
    ``other_boxes: Tensor[D, 4]``) read at the cell centres of every box of ``boxes: Tensor[N, 4]`` (x1, y1,
    x2, y2 pixels): separable bilinear interpolation, ``rows @ mask @ columns^T``."""
    cells = other_masks.shape[-1]
    rows = _interpolation(
        boxes[:, 1],
        boxes[:, 3] - boxes[:, 1],
        other_boxes[:, 1],
        other_boxes[:, 3] - other_boxes[:, 1],
        cells,
    )
    columns = _interpolation(
        boxes[:, 0],
        boxes[:, 2] - boxes[:, 0],
        other_boxes[:, 0],
        other_boxes[:, 2] - other_boxes[:, 0],
        cells,
    )
    return rows @ other_masks.to(rows.dtype)[None] @ columns.transpose(-1, -2)


def neighbour_claim(
    boxes: Tensor,
    other_boxes: Tensor,
    other_masks: Tensor,
    same_instance_iou: float = SAME_INSTANCE_IOU,
    chunk: int = 16,
) -> Tensor:
    """``Tensor[N, M, M]``: at each cell of each box of ``boxes: Tensor[N, 4]``, the highest probability that
    another instance claims it: ``max_j`` of the masks ``other_masks: Tensor[D, M, M]`` of the boxes
    ``other_boxes: Tensor[D, 4]`` that are other instances (IoU < :data:`SAME_INSTANCE_IOU`), read in the
    box's frame (:func:`resample_masks`); 0 where none reaches. One image's boxes, ``chunk`` at a time
    in eager mode (which bounds the ``[chunk, D, M, M]`` intermediates), in one pass when traced (a loop
    over a number of boxes known only at run time has no traced form). Defaults as arguments: TorchScript
    reads no module-level floats."""
    others = (box_iou(boxes, other_boxes) < same_instance_iou).to(boxes.dtype)
    if not torch.jit.is_scripting() and _traced():
        return _claim(boxes, other_boxes, other_masks, others)
    cells = other_masks.shape[-1]
    chunks: list[Tensor] = [boxes.new_zeros((0, cells, cells))]
    for start in range(0, boxes.shape[0], chunk):
        chunks.append(
            _claim(boxes[start : start + chunk], other_boxes, other_masks, others[start : start + chunk])
        )
    return torch.cat(chunks)


def _claim(boxes: Tensor, other_boxes: Tensor, other_masks: Tensor, others: Tensor) -> Tensor:
    """:func:`neighbour_claim` of ``boxes`` given ``others: Tensor[N, D]`` (1 where ``j`` is another
    instance of box ``i``): a zero claim stands beside the others', so that the max over none is 0."""
    resampled = resample_masks(boxes, other_boxes, other_masks) * others[:, :, None, None]
    none = resampled.new_zeros((resampled.shape[0], 1, resampled.shape[2], resampled.shape[3]))
    return torch.cat([none, resampled], dim=1).amax(dim=1)


@torch.jit.unused
def _traced() -> bool:
    # Not scriptable (torch.compiler, torch.onnx), hence behind torch.jit.unused; TorchScript loops fine.
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
