import itertools

import pytest
import torch

from mrrcnn.inference.detections import Detections
from mrrcnn.inference.tiling import merge_tiles, tile_windows


def disc(size: int, cx: float, cy: float, r: float) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((x - cx) ** 2 + (y - cy) ** 2) <= r**2


def tile_detections(masks: list[torch.Tensor], scores: list[float], window, size: int) -> Detections:
    """What a perfect model sees of ``masks`` in ``window``: each instance's visible part, in image pixels."""
    x0, y0, x1, y1 = window
    seen = [m[y0:y1, x0:x1] for m in masks]
    keep = [i for i, m in enumerate(seen) if m.any()]
    output = {
        "boxes": torch.stack([_box(seen[i]) for i in keep]) if keep else torch.zeros(0, 4),
        "scores": torch.tensor([scores[i] for i in keep]),
        "labels": torch.ones(len(keep), dtype=torch.int64),
        "masks": torch.stack([seen[i].float() for i in keep])[:, None]
        if keep
        else torch.zeros(0, 1, y1 - y0, x1 - x0),
    }
    return Detections.from_output(output, offset=(x0, y0), image_size=(size, size))


def _box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = mask.nonzero(as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


def test_windows_cover_the_image_evenly():
    assert tile_windows(100, 100, 60, 20) == [
        (0, 0, 60, 60),
        (40, 0, 100, 60),
        (0, 40, 60, 100),
        (40, 40, 100, 100),
    ]
    # Every tile whole, overlaps at least as asked, the image covered.
    windows = tile_windows(50, 1000, 256, 32)
    xs = sorted({(x0, x1) for x0, _, x1, _ in windows})
    assert all(x1 - x0 == 256 for x0, x1 in xs) and xs[0][0] == 0 and xs[-1][1] == 1000
    assert all(a[1] - b[0] >= 32 for a, b in itertools.pairwise(xs))
    assert tile_windows(30, 40, 64, 8) == [(0, 0, 40, 30)]
    with pytest.raises(ValueError, match="larger than its overlap"):
        tile_windows(100, 100, 20, 20)


@pytest.mark.parametrize(
    "centre",
    [(50.0, 30.0), (50.0, 50.0)],
    ids=["across-a-seam", "across-the-corner-of-four-tiles"],
)
def test_an_instance_on_seams_is_reported_once_with_its_whole_mask(centre):
    size = 100
    masks = [disc(size, *centre, 14), disc(size, 15, 80, 6)]
    windows = tile_windows(size, size, 60, 20)
    tiles = [(w, tile_detections(masks, [0.9, 0.6], w, size)) for w in windows]
    merged = merge_tiles(tiles, (size, size))
    assert len(merged) == 2
    assert merged.scores.tolist() == pytest.approx([0.9, 0.6])
    labels = merged.label_image()
    assert torch.equal(torch.from_numpy(labels == 1), masks[0])
    assert torch.equal(torch.from_numpy(labels == 2), masks[1])
    assert merged.boxes[0].tolist() == _box(masks[0]).tolist()


def test_touching_instances_on_a_seam_stay_apart():
    size = 100
    left, right = disc(size, 38, 50, 12), disc(size, 63, 50, 12)
    assert not (left & right).any()
    windows = tile_windows(size, size, 60, 20)
    tiles = [(w, tile_detections([left, right], [0.8, 0.7], w, size)) for w in windows]
    merged = merge_tiles(tiles, (size, size))
    assert len(merged) == 2
    labels = merged.label_image()
    assert torch.equal(torch.from_numpy(labels == 1), left) and torch.equal(
        torch.from_numpy(labels == 2), right
    )


def test_different_categories_are_not_merged():
    size = 100
    mask = disc(size, 50, 50, 14)
    windows = tile_windows(size, size, 60, 20)
    tiles = []
    for k, w in enumerate(windows):
        d = tile_detections([mask], [0.9], w, size)
        d.labels[:] = 1 + k
        tiles.append((w, d))
    merged = merge_tiles(tiles, (size, size))
    assert sorted(merged.labels.tolist()) == [1, 2, 3, 4]
    assert merge_tiles([], (size, size)).image_size == (size, size)
