import numpy as np
import pycocotools.mask as mask_util
import pytest

from mrrcnn.evaluation.touching import touching


def rle(mask: np.ndarray) -> dict:
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def pair(gap: int, size: int = 40) -> list[dict]:
    """Two 10x10 squares side by side with ``gap`` background columns between them."""
    left, right = np.zeros((2, size, size), bool)
    left[10:20, 5:15] = True
    right[10:20, 15 + gap : 25 + gap] = True
    return [rle(left), rle(right)]


@pytest.mark.parametrize(("gap", "touches"), [(0, True), (1, True), (2, True), (3, False)])
def test_a_pair_touches_within_two_pixels(gap, touches):
    assert touching(pair(gap), 2).tolist() == [touches, touches]


def test_distance_is_euclidean_between_pixel_centres():
    a, b = np.zeros((2, 20, 20), bool)
    a[5, 5] = True
    b[7, 7] = True  # centres 2 * sqrt(2) = 2.83 apart: a gap of 1.83
    assert touching([rle(a), rle(b)], 2).tolist() == [True, True]
    assert touching([rle(a), rle(b)], 1).tolist() == [False, False]


def test_overlapping_masks_touch_and_a_third_stays_apart():
    a, b, c = np.zeros((3, 30, 30), bool)
    a[0:10, 0:10] = True
    b[5:15, 5:15] = True
    c[25:30, 25:30] = True
    assert touching([rle(a), rle(b), rle(c)]).tolist() == [True, True, False]
    assert touching([rle(c)]).tolist() == [False]
    assert touching([]).tolist() == []
