"""One image's detections with masks kept as binary crops, so that a large image's masks take the memory
of the instances, not of the image per instance (torchvision's ``Tensor[N, 1, H, W]``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch import Tensor


@dataclass
class Detections:
    """Detections of one image, in its pixels.

    Attributes:
        boxes: ``Tensor[N, 4]`` (x1, y1, x2, y2) pixels, float32.
        scores: ``Tensor[N]``.
        labels: ``Int64Tensor[N]`` category ids.
        masks: ``N`` ``BoolTensor[h_i, w_i]`` crops, the instance's pixels; ``None`` for a model without masks.
        origins: ``Int64Tensor[N, 2]`` (x0, y0), the image pixel of each crop's top-left corner.
        image_size: (height, width) of the image.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: list[Tensor] | None
    origins: Tensor
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, image_size: tuple[int, int], with_masks: bool = True) -> Detections:
        """No detection in an image of ``image_size`` (height, width)."""
        return cls(
            torch.zeros(0, 4),
            torch.zeros(0),
            torch.zeros(0, dtype=torch.int64),
            [] if with_masks else None,
            torch.zeros(0, 2, dtype=torch.int64),
            image_size,
        )

    @classmethod
    def from_output(
        cls,
        output: dict[str, Tensor],
        mask_threshold: float = 0.5,
        offset: tuple[int, int] = (0, 0),
        image_size: tuple[int, int] | None = None,
    ) -> Detections:
        """From a torchvision detection output of an image (or of a tile of one).

        Args:
            output: ``boxes`` ``Tensor[N, 4]``, ``scores``, ``labels`` and optionally ``masks``
                ``Tensor[N, 1, h, w]`` probabilities, in the pixels of the image the model saw.
            mask_threshold: a mask pixel is the instance's where its probability is above this.
            offset: (x, y) of the seen image's top-left pixel in the image the detections are of (a tile's
                position), added to boxes and crop origins.
            image_size: (height, width) of the image the detections are of (default: the masks' size; required
                without masks).
        """
        output = {key: value.detach().cpu() for key, value in output.items()}
        probabilities = output.get("masks")
        if image_size is None:
            if probabilities is None:
                raise ValueError("Detections.from_output needs image_size for an output without masks")
            image_size = tuple(probabilities.shape[-2:])
        shift = torch.tensor(offset, dtype=torch.int64)
        masks, origins = None, torch.zeros(len(output["scores"]), 2, dtype=torch.int64)
        if probabilities is not None:
            masks = []
            binaries = probabilities[:, 0] > mask_threshold
            # Each mask's occupied rows and columns in two reductions for all: per mask they cost more.
            any_rows, any_cols = binaries.any(2), binaries.any(1)
            for index, binary in enumerate(binaries):
                rows, cols = any_rows[index].nonzero()[:, 0], any_cols[index].nonzero()[:, 0]
                if len(rows):
                    masks.append(binary[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].clone())
                    origins[index] = torch.stack([cols[0], rows[0]])
                else:
                    masks.append(torch.zeros(0, 0, dtype=torch.bool))
        return cls(
            output["boxes"].float() + shift.repeat(2).float(),
            output["scores"].float(),
            output["labels"].to(torch.int64),
            masks,
            origins + shift,
            (int(image_size[0]), int(image_size[1])),
        )

    def select(self, index: Tensor) -> Detections:
        """The detections at ``index`` (``BoolTensor[N]`` or ``Int64Tensor[K]``), in its order."""
        index = index.nonzero()[:, 0] if index.dtype == torch.bool else index
        masks = None if self.masks is None else [self.masks[int(i)] for i in index]
        return Detections(
            self.boxes[index],
            self.scores[index],
            self.labels[index],
            masks,
            self.origins[index],
            self.image_size,
        )

    def areas(self) -> Tensor:
        """``Tensor[N]``: mask pixels, or box areas (px^2) for detections without masks."""
        if self.masks is None:
            return (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        return torch.tensor([float(mask.sum()) for mask in self.masks])

    def rles(self) -> list[dict]:
        """Each mask as a compressed COCO RLE of the whole image, built from its crop's runs alone."""
        if self.masks is None:
            raise ValueError("these detections have no masks")
        height, width = self.image_size
        return [
            crop_rle(mask.numpy(), x0, y0, height, width)
            for mask, (x0, y0) in zip(self.masks, self.origins.tolist())
        ]

    def label_image(self) -> np.ndarray:
        """``int32[H, W]``: 0 background, ``k`` the ``k``-th detection by descending score; each pixel is the
        highest-scoring detection's that covers it (what stardist and cellpose write)."""
        if self.masks is None:
            raise ValueError("these detections have no masks, so no label image")
        labels = np.zeros(self.image_size, dtype=np.int32)
        order = torch.argsort(self.scores, descending=True, stable=True).tolist()
        # Painted from the lowest score up, so that the highest-scoring instance is painted last.
        for rank in range(len(order) - 1, -1, -1):
            mask, (x0, y0) = self.masks[order[rank]].numpy(), self.origins[order[rank]].tolist()
            window = labels[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
            window[mask] = rank + 1
        return labels


def crop_rle(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict:
    """The compressed COCO RLE of ``crop`` (bool ``[h, w]``) placed at (``x0``, ``y0``) in a ``height`` x
    ``width`` image, computed from the crop's columns alone (never the image's size in memory but one
    ``[height, w]`` strip)."""
    counts = _runs(crop, x0, y0, height, width)
    return mask_util.frPyObjects({"counts": counts, "size": [height, width]}, height, width)


def _runs(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> list[int]:
    """Uncompressed COCO RLE counts (column-major runs, starting with background) of ``crop`` placed at
    (``x0``, ``y0``) in a ``height`` x ``width`` image."""
    h, w = crop.shape
    if not crop.any():
        return [height * width]
    strip = np.zeros((height, w), dtype=bool)
    strip[y0 : y0 + h] = crop
    flat = strip.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        runs.insert(0, 0)
    runs[0] += x0 * height
    trailing = (width - x0 - w) * height
    if flat[-1]:
        runs.append(trailing)
    else:
        runs[-1] += trailing
    return runs
