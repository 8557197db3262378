import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from mrrcnn.inference.detections import Detections


def output(masks: torch.Tensor, scores: list[float]) -> dict[str, torch.Tensor]:
    n = len(scores)
    return {
        "boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0]] * n),
        "scores": torch.tensor(scores),
        "labels": torch.arange(1, n + 1),
        "masks": masks[:, None],
    }


def test_crops_and_rles_equal_the_full_masks():
    g = torch.Generator().manual_seed(0)
    probabilities = torch.rand(5, 9, 7, generator=g) ** 3
    probabilities[3] = 0  # an empty mask
    probabilities[4] = 1  # a full one
    detections = Detections.from_output(output(probabilities, [0.9, 0.8, 0.7, 0.6, 0.5]), 0.5)
    assert detections.image_size == (9, 7)
    assert detections.masks[3].shape == (0, 0)
    full = (probabilities > 0.5).numpy()
    for rle, mask in zip(detections.rles(), full):
        assert np.array_equal(mask_util.decode(rle), mask)
    assert detections.areas().tolist() == [float(m.sum()) for m in full]


def test_offset_places_crops_in_the_image():
    masks = torch.zeros(1, 4, 4)
    masks[0, 1:3, 2] = 1
    detections = Detections.from_output(output(masks, [0.9]), offset=(10, 20), image_size=(30, 40))
    assert detections.origins.tolist() == [[12, 21]]
    assert detections.boxes.tolist() == [[10.0, 20.0, 14.0, 24.0]]
    decoded = mask_util.decode(detections.rles()[0])
    assert decoded.shape == (30, 40) and decoded.sum() == 2 and decoded[21:23, 12].all()


def test_label_image_highest_score_wins():
    masks = torch.zeros(3, 5, 5)
    masks[0, 0:3, 0:3] = 1  # score 0.5
    masks[1, 2:5, 2:5] = 1  # score 0.9: wins the shared pixel (2, 2)
    masks[2, 4, 0] = 1  # score 0.7
    labels = Detections.from_output(output(masks, [0.5, 0.9, 0.7])).label_image()
    expected = np.zeros((5, 5), dtype=np.int32)
    expected[0:3, 0:3] = 3
    expected[2:5, 2:5] = 1
    expected[4, 0] = 2
    assert np.array_equal(labels, expected)


def test_select_and_no_masks():
    masks = torch.ones(2, 3, 3)
    detections = Detections.from_output(output(masks, [0.9, 0.1]))
    kept = detections.select(detections.scores > 0.5)
    assert len(kept) == 1 and kept.labels.tolist() == [1] and len(kept.masks) == 1
    plain = {k: v for k, v in output(masks, [0.9, 0.1]).items() if k != "masks"}
    with pytest.raises(ValueError, match="image_size"):
        Detections.from_output(plain)
    boxes_only = Detections.from_output(plain, image_size=(3, 3))
    assert boxes_only.masks is None and boxes_only.areas().tolist() == [16.0, 16.0]
    with pytest.raises(ValueError, match="no masks"):
        boxes_only.label_image()
