import math

import pytest
import torch
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss, project_masks_on_boxes

from mrrcnn.models import fuse_scores, mrrcnn_small, refining_classes
from mrrcnn.models.roi_heads import ground_truth_masks_in_boxes, mask_loss


def test_fuse_scores_hand_computed():
    stage1 = torch.tensor([[1.0, 2.0, -1.0]])
    refined = torch.tensor([[3.0, 0.0, 5.0]])
    # (S^b + alpha * S^r) / (1 + alpha) with alpha = 1: the mean; alpha = 3: [10, 2, 14] / 4.
    assert fuse_scores(stage1, refined, 1.0).tolist() == [[2.0, 1.0, 2.0]]
    assert fuse_scores(stage1, refined, 3.0).tolist() == [[2.5, 0.5, 3.5]]
    assert torch.equal(fuse_scores(stage1, refined, 0.0), stage1)


def test_refining_classes_keep_foreground_and_give_background_its_best_foreground_class():
    labels = torch.tensor([2, 0, 0, 1])
    logits = torch.tensor(
        [
            [9.0, 0.0, 1.0, 5.0],  # foreground RoI of class 2: keeps 2, whatever the logits say
            [9.0, 0.0, 1.0, 5.0],  # background: best foreground class is 3 (background column ignored)
            [0.0, 4.0, 1.0, 2.0],  # background: 1
            [0.0, 0.0, 0.0, 7.0],  # foreground RoI of class 1
        ]
    )
    assert refining_classes(labels, logits).tolist() == [2, 3, 1, 1]


@pytest.fixture(scope="module")
def heads():
    return mrrcnn_small(num_classes=4).roi_heads


def test_assign_refining_targets_hand_computed(heads):
    gt = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0]]),
        "labels": torch.tensor([3, 1]),
    }
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 12.0],  # IoU with gt 0: 100 / 120 = 0.83 -> class 3
            [20.0, 20.0, 30.0, 30.0],  # IoU with gt 1: 100 / 200 = 0.5 -> class 1 (>= 0.5 is foreground)
            [0.0, 0.0, 20.0, 20.0],  # IoU with gt 0: 100 / 400 = 0.25 -> background
            [50.0, 50.0, 60.0, 60.0],  # no overlap -> background
        ]
    )
    matched, labels, targets = heads.assign_refining_targets([boxes], [gt])
    assert labels[0].tolist() == [3, 1, 0, 0]
    assert matched[0][:2].tolist() == [0, 1]
    # Box coder weights (10, 10, 5, 5): dx = 10 * (gt centre x - box centre x) / box width, dh = 5 * log(gt h / box h).
    expected_first = [0.0, 10 * (5.0 - 6.0) / 12.0, 0.0, 5 * math.log(10.0 / 12.0)]
    expected_second = [10 * (30.0 - 25.0) / 10.0, 0.0, 5 * math.log(20.0 / 10.0), 0.0]
    torch.testing.assert_close(targets[0][0], torch.tensor(expected_first))
    torch.testing.assert_close(targets[0][1], torch.tensor(expected_second))


def test_assign_refining_targets_without_ground_truth(heads):
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    _matched, labels, targets = heads.assign_refining_targets([torch.tensor([[0.0, 0.0, 5.0, 5.0]])], [empty])
    assert labels[0].tolist() == [0] and targets[0].shape == (1, 4)


def test_stage1_detections_are_torchvisions_with_their_source_rows(heads):
    g = torch.Generator().manual_seed(0)
    proposals = [
        torch.tensor([[10.0, 10.0, 50.0, 60.0], [30.0, 5.0, 90.0, 40.0], [12.0, 12.0, 52.0, 58.0]])
    ] * 2
    class_logits = torch.randn(6, 4, generator=g) * 3
    box_regression = torch.randn(6, 16, generator=g) * 0.2
    shapes = [(100, 100), (100, 100)]
    boxes, scores, labels, source = heads.stage1_detections(class_logits, box_regression, proposals, shapes)
    expected = RoIHeads.postprocess_detections(heads, class_logits, box_regression, proposals, shapes)
    for ours, theirs in zip((boxes, scores, labels), expected):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
    probabilities = torch.softmax(class_logits, -1)
    for image, (s, lab, src) in enumerate(zip(scores, labels, source)):
        assert ((src >= 3 * image) & (src < 3 * image + 3)).all()
        torch.testing.assert_close(probabilities[src, lab], s, rtol=0, atol=0)


def test_alpha_must_be_non_negative():
    with pytest.raises(ValueError, match="alpha"):
        mrrcnn_small(num_classes=3, alpha=-1.0)


def test_ground_truth_masks_in_boxes_hand_computed():
    masks = torch.zeros(2, 8, 8, dtype=torch.uint8)
    masks[0, 0:4, 0:4] = 1  # a square in the top-left corner
    masks[1, 4:8, 0:8] = 1  # the bottom half
    target = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [0.0, 4.0, 8.0, 8.0]]), "masks": masks}
    boxes = torch.tensor(
        [
            [0.0, 0.0, 4.0, 4.0],  # exactly instance 0: its mask is all ones in the box
            [0.0, 0.0, 8.0, 8.0],  # IoU 0.25 with 0, 0.5 with 1: instance 1's mask, the bottom half
            [0.0, 0.0, 8.0, 4.0],  # IoU 0.5 with 0, 0 with 1: instance 0's mask, its left half
        ]
    )
    out = ground_truth_masks_in_boxes([boxes], [target], (4, 4))
    # Matched by best IoU, resampled exactly as Mask R-CNN's mask targets are.
    torch.testing.assert_close(out, project_masks_on_boxes(masks, boxes, torch.tensor([0, 1, 0]), 4))
    assert out[1, :2].max() < 0.5 < out[1, 2:].min()  # box 1 reads the bottom half
    empty = {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 8, 8, dtype=torch.uint8)}
    assert ground_truth_masks_in_boxes([boxes], [empty], (3, 2)).shape == (3, 3, 2)

    # "others": 1 minus the union of the other instances' masks, resampled the same way.
    others = ground_truth_masks_in_boxes([boxes], [target], (4, 4), others=True)
    torch.testing.assert_close(
        others, 1 - project_masks_on_boxes(masks.flip(0), boxes, torch.tensor([0, 1, 0]), 4)
    )
    assert ground_truth_masks_in_boxes([boxes], [empty], (3, 2), others=True).eq(1).all()


def test_sara_masks_must_be_known():
    with pytest.raises(ValueError, match="sara_masks must be one of"):
        mrrcnn_small(num_classes=4, sara_masks="truth")


def _mask_loss_inputs(counts: list[int]) -> tuple:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(sum(counts), 3, 14, 14, generator=g, requires_grad=True)
    masks = [(torch.rand(2, 40, 50, generator=g) > 0.5).to(torch.uint8) for _ in counts]
    proposals = [
        torch.tensor([[2.0, 3.0, 30.0, 35.0]]).repeat(n, 1) + torch.rand(n, 4, generator=g) * 5
        for n in counts
    ]
    labels = [torch.tensor([1, 2]) for _ in counts]
    matched = [torch.randint(0, 2, (n,), generator=g) for n in counts]
    return logits, proposals, masks, labels, matched


def test_mask_loss_is_torchvisions_bit_for_bit_with_its_gradient():
    logits, *rest = _mask_loss_inputs([3, 5])
    ours = mask_loss(logits, *rest)
    (grad,) = torch.autograd.grad(ours, logits)
    theirs = maskrcnn_loss(logits, *rest)
    (their_grad,) = torch.autograd.grad(theirs, logits)
    assert torch.equal(ours, theirs) and torch.equal(grad, their_grad)


def test_mask_loss_without_foreground_is_zero_with_zero_gradient():
    logits, *rest = _mask_loss_inputs([0, 0])
    loss = mask_loss(logits, *rest)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == 0.0 and grad.shape == logits.shape and not grad.any()


def test_assign_refining_targets_without_boxes_but_with_ground_truth_says_what_torchvision_says(heads):
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    with pytest.raises(ValueError, match="No proposal boxes available"):
        heads.assign_refining_targets([torch.zeros(0, 4)], [gt])
