"""The SARA weightings beyond the paper: hand-computed examples, the same-instance rule, the model."""

import pytest
import torch
import torch.nn.functional as F

from mrrcnn.config import CONFIG_DIR, load_config
from mrrcnn.models import mrrcnn_small
from mrrcnn.models.sara_weights import WEIGHTINGS, neighbour_claim, resample_masks

from .test_mask_refining_rcnn import (
    REFINING_LOSSES,
    SMALL,
    TORCHVISION_LOSSES,
    images_and_targets,
    train_losses,
)

# Box A and box B overlap on A's right half (IoU 1/3: two instances); 2 x 2 masks, so a cell is 2 px wide.
BOX_A = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
BOX_B = torch.tensor([[2.0, 0.0, 6.0, 4.0]])
MASK_A = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])
MASK_B = torch.tensor([[[1.0, 0.5], [1.0, 0.5]]])


def test_hand_computed_claim_others_and_ownership():
    # A's cell centres, x = 1 and 3, fall in B at x = -1 (outside: 0) and x = 1, B's first cell centre
    # (B's left column, 1.0); y is the same in both boxes. So B claims A's right column.
    claim = neighbour_claim(BOX_A, BOX_B, MASK_B)
    torch.testing.assert_close(claim, torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]))
    others = 1 - claim
    torch.testing.assert_close(others * MASK_A, torch.tensor([[[0.2, 0.0], [0.6, 0.0]]]))
    # The other way round: B's cell centres x = 3 and 5 are A's cell coordinates 3 / 4 * 2 - 0.5 = 1 (A's
    # right column) and 2, a whole cell beyond A's last centre, where both bilinear taps are outside: 0.
    torch.testing.assert_close(
        neighbour_claim(BOX_B, BOX_A, MASK_A), torch.tensor([[[0.4, 0.0], [0.8, 0.0]]])
    )
    # Half a cell beyond the last centre, on A's edge, reads half of the edge cell: box C's first centre
    # is at x = 4.
    box_c = torch.tensor([[3.0, 0.0, 7.0, 4.0]])
    torch.testing.assert_close(
        neighbour_claim(box_c, BOX_A, MASK_A), torch.tensor([[[0.2, 0.0], [0.4, 0.0]]])
    )


def test_resampling_is_bilinear_with_zeros_outside_the_other_box():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[3.0, 5.0, 30.0, 22.0], [10.0, 0.0, 18.0, 40.0]], dtype=torch.float64)
    others = torch.tensor(
        [[0.0, 2.0, 20.0, 30.0], [12.0, 8.0, 44.0, 20.0], [5.0, 5.0, 6.0, 6.0]], dtype=torch.float64
    )
    masks = torch.rand(3, 7, 7, generator=g, dtype=torch.float64)
    ours = resample_masks(boxes, others, masks)
    for n, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        centres = (torch.arange(7, dtype=torch.float64) + 0.5) / 7
        xs, ys = x1 + centres * (x2 - x1), y1 + centres * (y2 - y1)
        for d, (ox1, oy1, ox2, oy2) in enumerate(others.tolist()):
            gx, gy = (xs - ox1) / (ox2 - ox1) * 2 - 1, (ys - oy1) / (oy2 - oy1) * 2 - 1
            grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
            expected = F.grid_sample(masks[d][None, None], grid, padding_mode="zeros", align_corners=False)
            torch.testing.assert_close(ours[n, d], expected[0, 0], rtol=0, atol=1e-12)


def test_detections_of_the_same_instance_do_not_suppress_each_other():
    # IoU 16 / 18 with box A: the same object detected twice (say, as two classes).
    duplicate = torch.tensor([[0.0, 0.0, 4.0, 4.5]])
    assert not neighbour_claim(BOX_A, duplicate, torch.ones(1, 2, 2)).any()
    # Among several, only the other instance counts; the box itself (IoU 1) never does.
    boxes = torch.cat([BOX_A, duplicate, BOX_B])
    masks = torch.cat([MASK_A, torch.ones(1, 2, 2), MASK_B])
    claim = neighbour_claim(BOX_A, boxes, masks)
    torch.testing.assert_close(claim, neighbour_claim(BOX_A, BOX_B, MASK_B))
    assert not neighbour_claim(BOX_A, BOX_A, MASK_A).any()
    assert neighbour_claim(BOX_A, BOX_A[:0], MASK_A[:0]).shape == (1, 2, 2)


def test_chunks_give_the_same_claims():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(40, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 30 + 1], dim=1)
    masks = torch.rand(40, 5, 5, generator=g)
    torch.testing.assert_close(
        neighbour_claim(boxes, boxes, masks, chunk=7), neighbour_claim(boxes, boxes, masks, chunk=64)
    )


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_each_weighting_trains_and_predicts(weighting):
    model = mrrcnn_small(**SMALL, sara_weighting=weighting)
    losses = train_losses(model)
    assert set(losses) == TORCHVISION_LOSSES | REFINING_LOSSES
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images_and_targets()[0])
    assert all(set(o) == {"boxes", "labels", "scores", "masks"} for o in out)


def test_weightings_differ_only_in_what_the_refining_box_head_reads():
    images = images_and_targets()[0]
    outputs = {}
    for weighting in WEIGHTINGS:
        torch.manual_seed(0)
        model = mrrcnn_small(**SMALL, sara_weighting=weighting).eval()
        # A refining box head that reads its input, so that its weights show in the scores.
        torch.nn.init.normal_(model.roi_heads.refine_box_predictor.cls_score.weight, std=0.5)
        torch.nn.init.normal_(model.roi_heads.mask_flow.weight, std=0.01)
        with torch.no_grad():
            outputs[weighting] = model(images)
    for weighting in WEIGHTINGS[1:]:
        assert not torch.equal(outputs[weighting][0]["scores"], outputs["own"][0]["scores"]), weighting


def test_weighting_needs_sara_on_predicted_masks():
    with pytest.raises(ValueError, match="shape_aware=True"):
        mrrcnn_small(**SMALL, sara_weighting="others", shape_aware=False)
    with pytest.raises(ValueError, match="sara_masks='predicted'"):
        mrrcnn_small(**SMALL, sara_weighting="ownership", sara_masks="ground_truth")
    with pytest.raises(ValueError, match="sara_weighting must be one of"):
        mrrcnn_small(**SMALL, sara_weighting="neighbours")


def test_config_key_is_validated():
    path = CONFIG_DIR / "synthetic/mrrcnn_small.yaml"
    assert load_config(path, ["model.sara_weighting=others"])["model"]["sara_weighting"] == "others"
    with pytest.raises(ValueError, match="model.sara_weighting must be own, others, ownership or iterative"):
        load_config(path, ["model.sara_weighting=neighbours"])
    with pytest.raises(ValueError, match="only to mrrcnn models"):
        load_config(CONFIG_DIR / "synthetic/maskrcnn_small.yaml", ["model.sara_weighting=others"])
