import numpy as np
import pytest
import torch
from PIL import Image

from mrrcnn.inference.visualize import draw_predictions, side_by_side


def prediction() -> dict[str, torch.Tensor]:
    """A confident detection in the top-left corner and a doubtful one in the bottom-right."""
    masks = torch.zeros(2, 1, 40, 60)
    masks[0, 0, 5:15, 5:25] = 0.9
    masks[1, 0, 25:35, 35:55] = 0.9
    return {
        "boxes": torch.tensor([[5.0, 5.0, 25.0, 15.0], [35.0, 25.0, 55.0, 35.0]]),
        "labels": torch.tensor([1, 7]),
        "scores": torch.tensor([0.9, 0.3]),
        "masks": masks,
    }


def test_draw_predictions():
    image = torch.full((3, 40, 60), 0.5)
    drawn = np.asarray(draw_predictions(image, prediction(), {1: "disk"}, score_threshold=0.5))
    plain = np.full((40, 60, 3), 128, dtype=np.uint8)
    assert drawn.shape == (40, 60, 3)
    # Inside the confident mask (below its label) the colour changes; the doubtful detection is not drawn.
    assert (drawn[12, 10] != plain[12, 10]).any()
    assert np.array_equal(drawn[24:, 30:], plain[24:, 30:])

    both = np.asarray(draw_predictions(image, prediction(), {1: "disk"}, score_threshold=0.1))
    assert (both[32, 45] != plain[32, 45]).any()


def test_draw_predictions_scale_and_empty():
    image = torch.rand(3, 40, 60)
    assert draw_predictions(image, prediction(), {}, scale=2.5).size == (150, 100)
    none = {k: v[:0] for k, v in prediction().items()}
    expected = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(draw_predictions(image, none, {})), expected)
    no_masks = {k: v for k, v in prediction().items() if k != "masks"}
    assert draw_predictions(image, no_masks, {}).size == (60, 40)


def test_side_by_side():
    images = [Image.new("RGB", (30, 20), "red"), Image.new("RGB", (10, 40), "blue"), Image.new("L", (5, 5))]
    grid = side_by_side(images, ["a", "b", "c"], columns=2)
    one_row = side_by_side(images, ["a", "b", "c"])
    assert grid.mode == "RGB"
    assert grid.width == 2 * one_row.width // 3 and grid.height > one_row.height
    assert np.asarray(grid).reshape(-1, 3).tolist().count([255, 0, 0]) == 30 * 20
    with pytest.raises(ValueError, match="one title per image, got 3 images, 1 titles"):
        side_by_side(images, ["a"])
