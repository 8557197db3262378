import json

import numpy as np
import pytest
import torch
from PIL import Image

from mrrcnn.data import CocoDetection, Compose, RandomCrop, RandomHorizontalFlip
from mrrcnn.data.images import read_image


def _sample():
    image = torch.arange(2 * 3 * 6, dtype=torch.float32).reshape(2, 3, 6)
    masks = torch.zeros(2, 3, 6, dtype=torch.uint8)
    masks[0, 0, 0:2] = 1
    masks[1, 1:3, 3] = 1
    target = {
        "boxes": torch.tensor([[0.0, 0, 2, 1], [3.0, 1, 4, 3]]),
        "masks": masks,
        "labels": torch.tensor([1, 2]),
    }
    return image, target


def test_flip_is_exact():
    image, target = _sample()
    flipped, out = RandomHorizontalFlip(p=1.0)(image, target)
    assert torch.equal(flipped, image[:, :, [5, 4, 3, 2, 1, 0]])
    assert out["boxes"].tolist() == [[4, 0, 6, 1], [2, 1, 3, 3]]
    expected = torch.zeros(2, 3, 6, dtype=torch.uint8)
    expected[0, 0, 4:6] = 1
    expected[1, 1:3, 2] = 1
    assert torch.equal(out["masks"], expected)
    assert out["labels"] is target["labels"]
    assert target["boxes"].tolist() == [[0, 0, 2, 1], [3, 1, 4, 3]]  # the input is left alone


def test_flip_of_empty_target():
    image = torch.zeros(3, 4, 5)
    target = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 4, 5, dtype=torch.uint8)}
    _, out = RandomHorizontalFlip(p=1.0)(image, target)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 4, 5)


def test_never_flip():
    image, target = _sample()
    out_image, out_target = RandomHorizontalFlip(p=0.0)(image, target)
    assert out_image is image and out_target is target


def test_flips_follow_the_torch_seed():
    image, target = _sample()
    flip = Compose([RandomHorizontalFlip(0.5)])

    def draws():
        return [flip(image, target)[1]["boxes"][0, 0].item() for _ in range(20)]

    torch.manual_seed(0)
    first = draws()
    torch.manual_seed(0)
    assert draws() == first
    assert set(first) == {0.0, 4.0}


def test_compose_applies_in_order():
    calls = []

    def step(name):
        def apply(image, target):
            calls.append(name)
            return image + 1, {**target, name: image.sum().item()}

        return apply

    image, target = Compose([step("a"), step("b")])(torch.zeros(1, 2, 2), {})
    assert calls == ["a", "b"]
    assert torch.equal(image, torch.full((1, 2, 2), 2.0))
    assert target == {"a": 0.0, "b": 4.0}


def _cropped_at(crop, image, target, left):
    """``crop(image, target)`` under the first seed whose window starts at column ``left`` (the image's
    values are their column numbers)."""
    for seed in range(100):
        torch.manual_seed(seed)
        out_image, out_target = crop(image, target)
        if out_image[0, 0, 0] == left:
            return out_image, out_target
    raise AssertionError(f"no seed below 100 crops at column {left}")


def _instances():
    """Five instances of a 4 x 6 image; a 4 x 4 window at column 2 misses A, cuts B and C, holds D and E."""
    masks = torch.zeros(5, 4, 6, dtype=torch.uint8)
    masks[0, 0:2, 0:2] = 1  # A: outside
    masks[1, 0:4, 1:4] = 1  # B: 8 of its 12 pixels inside
    masks[2, 3, 1:3] = 1  # C: 1 of its 2 pixels inside
    masks[3, 1:3, 4:6] = 1  # D: inside
    masks[4, 0, 5] = 1  # E: inside, a single pixel
    return {
        "boxes": torch.tensor([[0.0, 0, 2, 2], [1, 0, 4, 4], [1, 3, 3, 4], [4, 1, 6, 3], [5, 0, 6, 1]]),
        "masks": masks,
        "labels": torch.tensor([1, 2, 3, 4, 5]),
        "image_id": 7,
        "area": torch.tensor([4.0, 12, 2, 4.5, 1]),
        "iscrowd": torch.zeros(5, dtype=torch.int64),
    }


def test_crop_keeps_the_visible_part_of_cut_instances():
    image = torch.arange(6.0).expand(1, 4, 6)
    target = _instances()
    cropped, out = _cropped_at(RandomCrop(4, min_area=3), image, target, left=2)
    assert torch.equal(cropped, image[:, :, 2:6])
    # A has no pixel in the window and C keeps 1 pixel of 2, below min_area: both are dropped.
    assert out["labels"].tolist() == [2, 4, 5]
    assert out["iscrowd"].tolist() == [0, 0, 0]
    assert torch.equal(out["masks"], target["masks"][[1, 3, 4], :, 2:6])
    # B's box is remade from its 8 visible pixels; D and E, held whole, keep their boxes, moved 2 left,
    # and their areas (D's 4.5 from the json, not its 4 pixels); E stays though below min_area.
    assert out["boxes"].tolist() == [[0, 0, 2, 4], [2, 1, 4, 3], [3, 0, 4, 1]]
    assert out["area"].tolist() == [8, 4.5, 1]
    assert out["image_id"] == 7
    assert target["labels"].tolist() == [1, 2, 3, 4, 5] and target["masks"].shape == (5, 4, 6)


def test_crop_boxes_are_tight_pixel_edge_boxes_of_the_cut_masks():
    image = torch.arange(6.0).expand(1, 4, 6)
    masks = torch.zeros(1, 4, 6, dtype=torch.uint8)
    masks[0, 1, 1] = masks[0, 2, 3] = masks[0, 3, 4] = 1
    target = {"boxes": torch.tensor([[1.0, 1, 5, 4]]), "masks": masks}
    _, out = _cropped_at(RandomCrop(4, min_area=0), image, target, left=2)
    # The pixels left are at columns 1 and 2 and rows 2 and 3 of the window.
    assert out["boxes"].tolist() == [[1, 2, 3, 4]]


def test_crop_may_leave_no_instance():
    image = torch.arange(6.0).expand(1, 4, 6)
    # A alone, which lies outside the window.
    target = {k: v[[0]] if isinstance(v, torch.Tensor) else v for k, v in _instances().items()}
    _, out = _cropped_at(RandomCrop(4), image, target, left=2)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 4, 4)
    assert out["labels"].shape == out["area"].shape == out["iscrowd"].shape == (0,)
    none = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 4, 6, dtype=torch.uint8)}
    _, out = RandomCrop(4)(image, none)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 4, 4)


def test_a_side_shorter_than_the_crop_is_kept_whole():
    image = torch.rand(3, 3, 10)
    target = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 3, 10, dtype=torch.uint8)}
    cropped, out = RandomCrop(5)(image, target)
    assert cropped.shape == (3, 3, 5) and out["masks"].shape == (0, 3, 5)
    small_image, small_target = RandomCrop(10)(image, target)
    assert small_image is image and small_target is target


def test_crops_follow_the_torch_seed():
    image = torch.arange(6.0).expand(1, 4, 6)
    crop = RandomCrop(4)

    def draws():
        return [crop(image, _instances())[0][0, 0, 0].item() for _ in range(30)]

    torch.manual_seed(0)
    first = draws()
    torch.manual_seed(0)
    assert draws() == first
    assert set(first) == {0.0, 1.0, 2.0}


def test_crop_errors():
    with pytest.raises(ValueError, match="RandomCrop size must be an integer >= 1, got 0"):
        RandomCrop(0)
    with pytest.raises(ValueError, match="RandomCrop min_area must be an integer >= 0, got -1"):
        RandomCrop(4, min_area=-1)
    with pytest.raises(ValueError, match=r"needs the instances' masks, target\['masks'\]"):
        RandomCrop(4)(torch.zeros(1, 4, 6), {"boxes": torch.zeros(0, 4)})


def test_crops_of_a_normalised_image_are_cut_from_the_whole_normalised_image(tmp_path):
    # Intensities are normalised when the whole image is read, before the crop: a crop of a dim corner
    # stays dim rather than being stretched to [0, 1] by its own percentiles.
    rows, cols = np.mgrid[0:40, 0:40]
    Image.fromarray((rows * 1000 + cols * 10).astype(np.uint16)).save(tmp_path / "a.png")
    (tmp_path / "a.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 40}],
                "annotations": [],
                "categories": [{"id": 1, "name": "cell"}],
            }
        )
    )
    whole = read_image(tmp_path / "a.png", intensity="percentile")
    dataset = CocoDetection(tmp_path, tmp_path / "a.json", RandomCrop(16), intensity="percentile")
    torch.manual_seed(0)
    for _ in range(5):
        crop = dataset[0][0]
        windows = [whole[:, y : y + 16, x : x + 16] for y in range(25) for x in range(25)]
        assert any(torch.equal(crop, window) for window in windows)
        # A window spans about 15/39 of the image's range; normalised on its own it would span [0, 1].
        assert float(crop.max() - crop.min()) < 0.5
