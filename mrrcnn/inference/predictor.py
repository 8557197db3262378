"""The one way from an image (file or tensor) to its detections, for ``predict``, ``eval``, the demo and
the benchmarks: read as the run was trained, checked, run in eval mode without gradients, whole or in
tiles (merged) when the model sees images at a fixed scale (``model.resize: scale``) and the scaled image
is larger than ``eval.tile_size``."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ..data.images import read_image
from ..engine.checkpoint import load_model
from ..models.transform import ScaleTransform
from .detections import Detections
from .tiling import Window, merge_tiles, tile_windows

logger = logging.getLogger(__name__)

# The smallest side an image may have once the model has resized it: the backbone's coarsest stride.
MIN_RESIZED_SIDE = 32
# What one forward pass holds, for the memory check: backbone and FPN activations, a few hundred bytes per
# model-input pixel for ResNet-FPN, and torchvision's mask probabilities, pasted at the size of the image
# given (float32: 4 bytes a pixel per detection).
_ACTIVATION_BYTES_PER_PIXEL = 512
_MASK_BYTES_PER_PIXEL = 4


class Predictor:
    """Detections of a trained model on images, as its configuration says.

    Args:
        model: a torchvision-style detection model (``MaskRCNN`` or MR R-CNN); a DDP wrapper is unwrapped.
        config: the run's validated configuration: ``data.intensity`` and ``data.percentiles`` (reading),
            ``eval.mask_threshold``, ``eval.batch_size``, ``eval.tile_size`` and ``eval.tile_overlap``.
        categories: category id -> name, for callers that draw or write them.
        device: where to run (moved there); default: where the model's parameters are.
    """

    def __init__(
        self,
        model: nn.Module,
        config: dict[str, Any],
        categories: dict[int, str] | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model.module if isinstance(model, DistributedDataParallel) else model
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        self.config = config
        self.categories = categories or {}
        self.mask_threshold = config["eval"]["mask_threshold"]

    @classmethod
    def from_checkpoint(
        cls,
        weights: str | Path,
        config: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        overrides: Sequence[str] = (),
    ) -> Predictor:
        """The predictor of an mrrcnn checkpoint (its configuration, or ``config``, with ``overrides``)."""
        model, config, categories = load_model(weights, config, device, overrides)
        return cls(model, config, categories)

    def read(self, path: str | Path) -> Tensor:
        """Image file ``path`` as ``Tensor[3, H, W]`` in [0, 1], read as the model was trained to see it."""
        data = self.config["data"]
        return read_image(path, intensity=data["intensity"], percentiles=data["percentiles"])

    def __call__(self, image: Tensor, name: str = "image") -> Detections:
        """Detections of ``image`` (``Tensor[3, H, W]``, RGB in [0, 1]) in its pixels; ``name`` is how errors
        and warnings call it."""
        return self.predict([image], [name])[0]

    def predict(
        self,
        images: Sequence[Tensor],
        names: Sequence[str] | None = None,
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> list[Detections]:
        """Detections of each image (``Tensor[3, H, W]``, RGB in [0, 1]), in input order.

        Images that fit one tile run as one batch; each larger one runs in tiles of ``eval.batch_size``.
        ``targets`` go to the model with the images, for the Shape-aware RoIAlign diagnostic that reads the
        ground truth's masks (``model.sara_masks``); such images are never tiled.
        """
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        for image, name in zip(images, names):
            self._check(image, name, targets is not None)
        whole = [i for i, image in enumerate(images) if not self._tiled(image)]
        results: dict[int, Detections] = {}
        with self._inference():
            if whole:
                inputs = [images[i].to(self.device) for i in whole]
                args = (inputs,) if targets is None else (inputs, [targets[i] for i in whole])
                for i, output in zip(whole, self.model(*args)):
                    self._warn_cap(output, names[i])
                    results[i] = Detections.from_output(
                        output, self.mask_threshold, image_size=images[i].shape[1:]
                    )
            for i in sorted(set(range(len(images))) - set(whole)):
                results[i] = self._predict_tiled(images[i], names[i])
        return [results[i] for i in range(len(images))]

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    @property
    def _scale(self) -> float | None:
        transform = self.model.transform
        return transform.scale if isinstance(transform, ScaleTransform) else None

    def _tiled(self, image: Tensor) -> bool:
        scale = self._scale
        return scale is not None and max(image.shape[1:]) * scale > self.config["eval"]["tile_size"]

    def _tile_windows(self, image: Tensor) -> list[Window]:
        """The tiles of ``image``, in its pixels: ``eval.tile_size`` and ``eval.tile_overlap`` model-input
        pixels divided by the scale."""
        scale, tiles = self._scale, self.config["eval"]
        size = max(1, math.floor(tiles["tile_size"] / scale))
        return tile_windows(*image.shape[1:], size, min(size - 1, math.ceil(tiles["tile_overlap"] / scale)))

    def _predict_tiled(self, image: Tensor, name: str) -> Detections:
        """Detections of ``image`` from those of its tiles, run ``eval.batch_size`` at a time; each tile's
        masks are cropped as it comes, so memory is bounded by the tile, not by the image."""
        windows = self._tile_windows(image)
        batch = self.config["eval"]["batch_size"]
        parts: list[tuple[Window, Detections]] = []
        for start in range(0, len(windows), batch):
            chunk = windows[start : start + batch]
            tiles = [image[:, y0:y1, x0:x1].to(self.device) for x0, y0, x1, y1 in chunk]
            for (x0, y0, x1, y1), output in zip(chunk, self.model(tiles)):
                self._warn_cap(output, f"{name}, tile x {x0}:{x1}, y {y0}:{y1}")
                detections = Detections.from_output(
                    output, self.mask_threshold, offset=(x0, y0), image_size=image.shape[1:]
                )
                parts.append(((x0, y0, x1, y1), detections))
        return merge_tiles(parts, tuple(image.shape[1:]))

    def _warn_cap(self, output: dict[str, Tensor], where: str) -> None:
        cap = self.model.roi_heads.detections_per_img
        if len(output["scores"]) >= cap:
            tiled = self._scale is not None
            logger.warning(
                "%s: %d detections, the cap per %s (model.box_detections_per_img); more may have been "
                "dropped: raise it%s",
                where,
                cap,
                "tile" if tiled else "image",
                " or lower eval.tile_size" if tiled else "",
            )

    def _check(self, image: Tensor, name: str, with_targets: bool) -> None:
        """Refuse an image the backbone cannot see (too small once resized) or whose forward pass would not
        fit in memory, naming the key to change."""
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"{name}: an image is Tensor[3, H, W], got {tuple(image.shape)}")
        height, width = image.shape[1:]
        scale = self._scale
        if scale is None:
            transform = self.model.transform
            factor = min(
                min(transform.min_size) / min(height, width), transform.max_size / max(height, width)
            )
            keys = "model.min_size / model.max_size"
        else:
            factor, keys = scale, "model.scale"
        short = int(min(height, width) * factor)
        if short < MIN_RESIZED_SIDE:
            raise ValueError(
                f"{name}: a {width}x{height} image would be resized to a shorter side of {short} px ({keys}), "
                f"below the {MIN_RESIZED_SIDE} px the backbone needs; crop or pad it, or change {keys}"
            )
        if self._tiled(image) and with_targets:
            raise ValueError(
                f"{name}: the ground-truth mask diagnostic (model.sara_masks) runs on whole images only, and at "
                f"model.scale={scale:g} this {width}x{height} image exceeds eval.tile_size; raise eval.tile_size"
            )
        self._check_memory(height, width, factor, name, keys)

    def _check_memory(self, height: int, width: int, factor: float, name: str, keys: str) -> None:
        tiled = self._scale is not None
        side = self.config["eval"]["tile_size"] if tiled else math.inf
        seen_w, seen_h = int(min(width * factor, side)), int(min(height * factor, side))
        # torchvision pastes every detection's mask at the size of the image it was given (a tile's).
        pasted = (seen_w / factor) * (seen_h / factor)
        cap = self.model.roi_heads.detections_per_img
        need = seen_w * seen_h * _ACTIVATION_BYTES_PER_PIXEL + pasted * _MASK_BYTES_PER_PIXEL * cap
        have = _memory(self.device)
        if need > have:
            change = "eval.tile_size" if tiled else f"{keys}, or predict in tiles (model.resize=scale)"
            raise ValueError(
                f"{name}: this {width}x{height} image is seen as {seen_w}x{seen_h} px per forward pass ({keys}"
                f"{'=' + format(factor, 'g') if tiled else ''}), which would need about {need / 2**30:.1f} GiB, "
                f"more than the {have / 2**30:.1f} GiB of {self.device}; lower model.box_detections_per_img or "
                f"{change}"
            )


def _memory(device: torch.device) -> int:
    """Bytes of memory of ``device``: the GPU's, or the machine's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
