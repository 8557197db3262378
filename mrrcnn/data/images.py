"""Reading image files as the models see them: RGB in [0, 1], upright as displayed, any bit depth."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..config import DEFAULT_PERCENTILES, INTENSITIES

# The suffixes of the image files that the commands look for in folders.
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
# 16-bit and 32-bit integer modes, and the value that is white in each.
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


def read_image(
    path: str | Path,
    name: str | None = None,
    intensity: str = "full_range",
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> Tensor:
    """Read an image file as ``Tensor[3, H, W]`` float32 RGB in [0, 1], as it is displayed.

    * The EXIF orientation is applied (as detectron2's ``read_image`` and image viewers do), so ``H x W``
      is the displayed size, the one annotation tools show and COCO jsons record.
    * ``intensity="full_range"``: 8-bit values are scaled by 255, 16-bit grayscale (PNG, TIFF) by 65535,
      not clipped at 255; 32-bit integer images are read as 16-bit values.
      ``intensity="percentile"``, as microscopy tools (csbdeep, stardist, cellpose) normalise: each channel
      of each image maps its ``percentiles`` (low, high, in percent) to 0 and 1, clipped to [0, 1], so that
      a 16-bit image of small range (values 0-235, say) fills [0, 1]; a channel without contrast is 0.
    * Palette, grayscale, CMYK and alpha images become RGB (alpha dropped).
    * 32-bit float images, and images above PIL's decompression-bomb limit
      (``PIL.Image.MAX_IMAGE_PIXELS``), are refused.

    Args:
        path: the image file.
        name: how errors name it (default: the path).
        intensity: ``"full_range"`` or ``"percentile"`` (``data.intensity`` of a configuration).
        percentiles: (low, high), ``0 <= low < high <= 100`` (``data.percentiles``).

    Raises:
        ValueError: naming the file: unreadable, truncated, an unsupported mode, or too large; or a bad
            ``intensity`` or ``percentiles``.
    """
    if intensity not in INTENSITIES:
        raise ValueError(f"intensity must be {' or '.join(INTENSITIES)}, got {intensity!r}")
    if not (len(percentiles) == 2 and 0 <= percentiles[0] < percentiles[1] <= 100):
        raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {percentiles!r}")
    name = name or str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as pil:
                pil.load()
                pil = ImageOps.exif_transpose(pil)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise ValueError(
            f"{name}: image is larger than {Image.MAX_IMAGE_PIXELS} pixels (PIL's decompression-bomb limit); "
            "downscale it first"
        ) from err
    except (OSError, SyntaxError) as err:
        # PIL reports some broken PNG chunks as SyntaxError.
        raise ValueError(f"{name}: cannot read image: {err}") from err
    if pil.mode == "F":
        raise ValueError(
            f"{name}: 32-bit float images are not supported; save it with 8 or 16 bits per channel"
        )
    if intensity == "percentile":
        values = np.asarray(pil if pil.mode in _WIDE_MODES else pil.convert("RGB"), dtype=np.float32)
        values = values.reshape(*values.shape[:2], -1)
        low, high = np.percentile(values, percentiles, axis=(0, 1))
        stretched = (values - low) / np.maximum(high - low, np.finfo(np.float32).tiny)
        image = torch.from_numpy(stretched.clip(0, 1).astype(np.float32)).permute(2, 0, 1)
        return image.expand(3, -1, -1).contiguous()
    if pil.mode in _WIDE_MODES:
        gray = np.asarray(pil, dtype=np.float32).clip(0, _WIDE_MODES[pil.mode]) / _WIDE_MODES[pil.mode]
        return torch.from_numpy(np.ascontiguousarray(gray))[None].expand(3, -1, -1).contiguous()
    rgb = np.asarray(pil.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255)


def raw_size(path: str | Path) -> tuple[int, int] | None:
    """The stored (width, height) of an image file before its EXIF orientation, or None if unreadable."""
    try:
        with Image.open(path) as pil:
            return pil.size
    except (OSError, SyntaxError):
        return None
