import numpy as np
import pycocotools.mask as mask_util
import pytest

from mrrcnn.evaluation.matching import THRESHOLDS, MatchCounts, label_iou, match, paint


def metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, dict[str, float]]:
    counts = MatchCounts()
    counts.add(label_iou(true, pred))
    return counts.metrics()


def labels(*boxes: tuple[int, int, int, int], size: int = 8) -> np.ndarray:
    """A label image with instance k the rows y0:y1, columns x0:x1 of ``boxes[k - 1]``."""
    image = np.zeros((size, size), np.int32)
    for k, (x0, y0, x1, y1) in enumerate(boxes, start=1):
        image[y0:y1, x0:x1] = k
    return image


def test_no_detections():
    m = metrics(labels((0, 0, 2, 2), (4, 4, 6, 6)), labels())["0.5"]
    assert (m["tp"], m["fp"], m["fn"]) == (0, 0, 2)
    assert all(
        m[k] == 0.0
        for k in ("precision", "recall", "accuracy", "f1", "mean_matched_score", "panoptic_quality")
    )


def test_no_ground_truth():
    m = metrics(labels(), labels((0, 0, 2, 2), (4, 4, 6, 6)))["0.9"]
    assert (m["tp"], m["fp"], m["fn"]) == (0, 2, 0) and m["precision"] == 0.0 and m["f1"] == 0.0
    empty = metrics(labels(), labels())["0.5"]
    assert (empty["tp"], empty["fp"], empty["fn"], empty["f1"]) == (0, 0, 0, 0.0)


def test_a_perfect_match():
    truth = labels((0, 0, 2, 2), (4, 4, 7, 6))
    for m in metrics(truth, truth).values():
        assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)
        assert all(
            m[k] == 1.0
            for k in ("precision", "recall", "accuracy", "f1", "mean_matched_score", "panoptic_quality")
        )


def test_one_split_instance():
    # A 4x4 instance predicted as two 4x2 halves: each has IoU exactly 0.5 with it.
    result = metrics(labels((0, 0, 4, 4)), labels((0, 0, 2, 4), (2, 0, 4, 4)))
    at_half = result["0.5"]
    assert (at_half["tp"], at_half["fp"], at_half["fn"]) == (1, 1, 0)
    assert at_half["precision"] == 0.5 and at_half["recall"] == 1.0 and at_half["accuracy"] == 0.5
    assert at_half["f1"] == pytest.approx(2 / 3) and at_half["mean_matched_score"] == 0.5
    assert at_half["panoptic_quality"] == pytest.approx(0.5 / (1 + 0.5))
    above = result["0.55"]
    assert (above["tp"], above["fp"], above["fn"], above["panoptic_quality"]) == (0, 2, 1, 0.0)


def test_one_merged_pair():
    m = metrics(labels((0, 0, 2, 4), (2, 0, 4, 4)), labels((0, 0, 4, 4)))["0.5"]
    assert (m["tp"], m["fp"], m["fn"]) == (1, 0, 1) and m["recall"] == 0.5 and m["precision"] == 1.0


def test_duplicates_count_once():
    truth = labels((0, 0, 3, 3))
    iou = np.ones((1, 2))  # two detections of the one instance, both exact
    counts = MatchCounts()
    counts.add(iou)
    m = counts.metrics()["0.9"]
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0) and m["mean_matched_score"] == 1.0
    assert metrics(truth, truth)["0.9"]["tp"] == 1


def test_iou_exactly_at_a_threshold_matches():
    # 3 of 4 pixels: IoU 0.75.
    result = metrics(labels((0, 0, 2, 2)), labels((0, 0, 2, 1), (0, 1, 1, 2)) > 0)
    assert result["0.75"]["tp"] == 1 and result["0.8"]["tp"] == 0
    assert [f"{t:g}" for t in THRESHOLDS] == list(result)


def test_the_assignment_is_optimal_not_greedy():
    # Greedy by IoU would pair truth 0 with prediction 0 (0.6) and leave truth 1 unmatched.
    iou = np.array([[0.6, 0.55], [0.58, 0.0]])
    rows, cols = match(iou, 0.5)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]


def test_counts_sum_over_images_before_ratios():
    counts = MatchCounts()
    counts.add(np.array([[1.0]]))
    counts.add(np.zeros((3, 0)))
    m = counts.metrics()["0.5"]
    assert (m["tp"], m["fn"], m["recall"]) == (1, 3, 0.25)


def rle(mask: np.ndarray) -> dict:
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_painting_keeps_the_highest_score_per_pixel():
    low, high, hidden = np.zeros((3, 6, 6), bool)
    low[0:4, 0:4] = True
    high[2:6, 2:6] = True
    hidden[3, 3] = True  # under the highest-scoring one: vanishes
    painted, kept = paint([rle(low), rle(high), rle(hidden)], [0.5, 0.9, 0.7], (6, 6))
    assert kept == [1, 0]
    assert np.array_equal(mask_util.decode(painted[0]).astype(bool), high)
    assert np.array_equal(mask_util.decode(painted[1]).astype(bool), low & ~high)


def random_labels(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    image = np.zeros((size, size), np.int32)
    for k in range(1, rng.integers(0, 12) + 1):
        x, y = rng.integers(0, size - 4, 2)
        w, h = rng.integers(3, 16, 2)
        image[y : y + h, x : x + w] = k
    _, relabelled = np.unique(image, return_inverse=True)
    return relabelled.reshape(image.shape).astype(np.int32)


def test_equals_stardist_matching_dataset():
    matching = pytest.importorskip(
        "stardist.matching",
        reason="stardist is not in the test extra (it pulls numba, llvmlite, scikit-image and matplotlib): "
        "pip install stardist to run this check",
    )
    rng = np.random.default_rng(0)
    truths = [random_labels(rng) for _ in range(8)]
    # Predictions: each truth shifted by a pixel or two, with instances dropped and others added.
    preds = [
        np.roll(t, tuple(rng.integers(-2, 3, 2)), (0, 1)) if rng.uniform() < 0.8 else random_labels(rng)
        for t in truths
    ]
    counts = MatchCounts()
    for truth, pred in zip(truths, preds):
        counts.add(label_iou(truth, pred))
    ours = counts.metrics()
    for threshold in THRESHOLDS:
        theirs = matching.matching_dataset(
            truths, preds, thresh=threshold, by_image=False, show_progress=False
        )
        mine = ours[f"{threshold:g}"]
        for name in ("tp", "fp", "fn"):
            assert mine[name] == getattr(theirs, name)
        for name in ("precision", "recall", "accuracy", "f1", "mean_matched_score", "panoptic_quality"):
            # stardist sums matched IoU as mean_true_score * n_true: equal to float rounding.
            assert mine[name] == pytest.approx(getattr(theirs, name), rel=1e-6)
