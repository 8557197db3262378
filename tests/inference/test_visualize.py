import numpy as np
import pytest
import torch
from PIL import Image

from mrrcnn.inference.detections import Detections
from mrrcnn.inference.visualize import auto_scale, draw_detections, draw_label_image, side_by_side

# The colours of instances 1 and 2, and 0.35 of them: their fills over a black image.
RED, BLUE = [255, 38, 38], [38, 101, 255]
RED_FILL, BLUE_FILL = [89, 13, 13], [13, 35, 89]


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


def test_fills_and_outlines_of_touching_instances():
    labels = np.zeros((4, 6), dtype=np.int64)
    labels[:, 0:3], labels[:, 3:6] = 1, 2
    drawn = np.asarray(draw_label_image(torch.zeros(3, 4, 6), labels, ["", ""], scale=1))
    # Outlines where the two meet (columns 2 and 3), not along the picture's border; fills elsewhere.
    expected = np.array([RED_FILL, RED_FILL, RED, BLUE, BLUE_FILL, BLUE_FILL], dtype=np.uint8)
    assert np.array_equal(drawn, np.broadcast_to(expected, (4, 6, 3)))


def test_an_instance_is_outlined_against_the_background_and_the_background_is_left_alone():
    image = torch.full((3, 5, 5), 0.5)
    labels = torch.zeros(5, 5, dtype=torch.int64)
    labels[1:4, 1:4] = 1
    drawn = np.asarray(draw_label_image(image, labels, ["cell"], scale=1))
    ring = np.ones((5, 5), dtype=bool)
    ring[[0, 4]] = ring[:, [0, 4]] = False
    ring[2, 2] = False
    assert (drawn[ring] == RED).all()
    # 0.65 x 128 + 0.35 x (255, 38, 38), rounded.
    assert drawn[2, 2].tolist() == [172, 96, 96]
    assert (drawn[~ring & (labels.numpy() == 0)] == 128).all()


def test_captions_only_where_they_fit():
    image = torch.zeros(3, 40, 60)
    labels = torch.zeros(40, 60, dtype=torch.int64)
    labels[2:32, 2:58] = 1
    labels[35:38, 10:13] = 2
    with_captions = np.asarray(draw_label_image(image, labels, ["disk 0.90", "disk 0.80"], scale=1))
    without = np.asarray(draw_label_image(image, labels, ["", ""], scale=1))
    differs = (with_captions != without).any(2)
    # The first caption is written in its 56 x 30 instance; the second does not fit in 3 x 3 pixels.
    # White text, centred: the rows and columns of the changes are balanced about the box's centre.
    assert (with_captions[differs].min(1) > 200).any()
    assert not differs[32:].any()
    rows, cols = np.nonzero(differs)
    assert abs(rows.min() + rows.max() + 1 - 34) <= 2 and abs(cols.min() + cols.max() + 1 - 60) <= 2
    # Placed in the given boxes when there are some.
    boxes = torch.tensor([[0.0, 0, 60, 40], [10, 35, 13, 38]])
    boxed = np.asarray(draw_label_image(image, np.zeros((40, 60), int), ["disk 0.90", "x"], boxes, scale=1))
    assert (boxed[0, :] == RED).all() and (boxed[:, 59] == RED).all()
    assert (boxed[35, 10:13] == BLUE).all() and (boxed[36, 11] == 0).all()
    assert (boxed[10:30, 10:50].min(2) > 200).any()


def test_small_images_are_enlarged_by_a_whole_factor():
    assert auto_scale(40, 60) == 8  # 512 / 40 = 12.8, capped at 8
    assert auto_scale(100, 700) == 6  # 512 / 100 = 5.12, rounded up
    assert auto_scale(512, 900) == auto_scale(2000, 3000) == 1
    image = torch.rand(3, 4, 6)
    labels = torch.zeros(4, 6, dtype=torch.int64)
    labels[1, 2] = 1
    drawn = np.asarray(draw_label_image(image, labels, ["cell"]))
    assert drawn.shape == (32, 48, 3)
    # Nearest neighbour: each pixel becomes an 8 x 8 block, the instance's pixel an outlined block.
    plain = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(drawn[:8, :8], np.broadcast_to(plain[0, 0], (8, 8, 3)))
    assert (drawn[8, 16:24] == RED).all() and (drawn[9:15, 17:23] != RED).any(2).all()
    assert draw_label_image(image, labels, ["cell"], scale=2.5).size == (15, 10)


def test_bad_label_images():
    image = torch.zeros(3, 4, 6)
    with pytest.raises(ValueError, match=r"labels must be \[H, W\] = \[4, 6\] like the image, got \[6, 4\]"):
        draw_label_image(image, np.zeros((6, 4), int), [])
    with pytest.raises(
        ValueError, match=r"labels must be 0 \(background\) to 1 \(one per caption\), got 2..2"
    ):
        draw_label_image(image, np.full((4, 6), 2), ["a"])
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\] with N = 1 captions, got \[2, 4\]"):
        draw_label_image(image, np.zeros((4, 6), int), ["a"], torch.zeros(2, 4))
    with pytest.raises(ValueError, match="scale must be a positive number or None"):
        draw_label_image(image, np.zeros((4, 6), int), [], scale=0)


def draw_predictions(image, output, categories, score_threshold=0.5, scale=None):
    """What callers draw: the detections of a torchvision output scoring at least ``score_threshold``."""
    detections = Detections.from_output(output, image_size=tuple(image.shape[1:]))
    return draw_detections(image, detections.select(detections.scores >= score_threshold), categories, scale)


def test_draw_detections():
    image = torch.full((3, 40, 60), 0.5)
    drawn = np.asarray(draw_predictions(image, prediction(), {1: "disk"}, score_threshold=0.5, scale=1))
    assert drawn.shape == (40, 60, 3)
    # The confident mask is filled and outlined; the doubtful detection is not drawn.
    assert drawn[5, 10].tolist() == RED
    assert np.array_equal(drawn[24:, 30:], np.full((16, 30, 3), 128))
    both = np.asarray(draw_predictions(image, prediction(), {1: "disk"}, score_threshold=0.1, scale=1))
    assert both[25, 45].tolist() == BLUE


def test_each_pixel_shows_the_highest_scoring_detection_over_it():
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 0:6, 0:6] = masks[1, 0, 2:8, 2:8] = 1.0
    lower_first = {
        "boxes": torch.tensor([[0.0, 0, 6, 6], [2, 2, 8, 8]]),
        "labels": torch.tensor([1, 1]),
        "scores": torch.tensor([0.6, 0.9]),
        "masks": masks,
    }
    drawn = np.asarray(draw_predictions(torch.zeros(3, 8, 8), lower_first, {}, scale=1))
    # The overlap (rows and columns 2-5) is the second, higher-scoring detection's (coloured first, by
    # descending score); the first is cut along it, so its outline runs there.
    assert drawn[4, 4].tolist() == RED_FILL
    assert drawn[1, 1].tolist() == BLUE_FILL and drawn[1, 2].tolist() == BLUE


def test_draw_detections_scale_and_empty():
    image = torch.rand(3, 40, 60)
    assert draw_predictions(image, prediction(), {}, scale=2.5).size == (150, 100)
    assert draw_predictions(image, prediction(), {}).size == (480, 320)
    none = {k: v[:0] for k, v in prediction().items()}
    plain = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(draw_predictions(image, none, {}, scale=1)), plain)
    assert np.array_equal(np.asarray(draw_predictions(image, none, {})), plain.repeat(8, 0).repeat(8, 1))


def test_a_model_without_masks_has_its_boxes_drawn():
    no_masks = {k: v for k, v in prediction().items() if k != "masks"}
    drawn = np.asarray(draw_predictions(torch.zeros(3, 40, 60), no_masks, {}, scale=1))
    assert (drawn[5, 5:25] == RED).all() and (drawn[14, 5:25] == RED).all()
    assert (drawn[5:15, 24] == RED).all() and (drawn[10, 10] == 0).all()


def test_side_by_side():
    images = [Image.new("RGB", (30, 20), "red"), Image.new("RGB", (10, 40), "blue"), Image.new("L", (5, 5))]
    grid = side_by_side(images, ["a", "b", "c"], columns=2)
    one_row = side_by_side(images, ["a", "b", "c"])
    assert grid.mode == "RGB"
    assert grid.width == 2 * one_row.width // 3 and grid.height > one_row.height
    assert np.asarray(grid).reshape(-1, 3).tolist().count([255, 0, 0]) == 30 * 20
    with pytest.raises(ValueError, match="one title per image, got 3 images, 1 titles"):
        side_by_side(images, ["a"])
