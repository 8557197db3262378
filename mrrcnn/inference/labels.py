"""Instance label images, the output microscopy tools (cellpose, stardist, napari) read and write: one
integer per pixel, 0 the background and k the pixels of instance k."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

# The largest label a 16-bit PNG holds; beyond it the labels go to a 32-bit TIFF.
PNG_MAX_LABEL = 65535
_UINT32_MAX = 2**32 - 1


def write_label_image(labels: np.ndarray, stem: Path) -> Path:
    """Write ``labels`` next to ``stem`` as ``<stem>_labels.png`` (16-bit grayscale) or, with a label above
    65535, ``<stem>_labels.tif`` (32-bit, by tifffile), the files that ``mrrcnn convert --label-suffix
    _labels`` reads back.

    The file is written to a temporary name in the same folder and then renamed, so that a crash leaves no
    half-written label image. A label image of the other suffix from an earlier run with the same stem is
    removed, so that the folder holds one label image per stem (as ``mrrcnn convert`` requires).

    Args:
        labels: ``int[H, W]``, 0 the background and 1..N the instances (at most 2**32 - 1).
        stem: the path of the file without its suffix (``out/img001``); its folder must exist.

    Returns:
        The path written.

    Raises:
        ValueError: ``labels`` is not a non-empty 2-D array of integers in [0, 2**32 - 1].
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not labels.size or labels.dtype.kind not in "ui":
        raise ValueError(
            f"labels must be a non-empty 2-D integer array [H, W], got {labels.dtype} of shape {labels.shape}"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > _UINT32_MAX:
        raise ValueError(f"labels must be in [0, {_UINT32_MAX}] (0 the background), got {low}..{high}")
    stem = Path(stem)
    png, tif = (stem.with_name(f"{stem.name}_labels{suffix}") for suffix in (".png", ".tif"))
    path, stale = (png, tif) if high <= PNG_MAX_LABEL else (tif, png)
    # Named by the process id, as checkpoints are: processes writing into one folder do not collide.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if path is png:
            Image.fromarray(labels.astype(np.uint16)).save(tmp, format="PNG")
        else:
            tifffile.imwrite(tmp, labels.astype(np.uint32))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    stale.unlink(missing_ok=True)
    return path
