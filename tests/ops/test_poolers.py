import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from mrrcnn.ops import MultiScaleShapeAwareRoIAlign, shape_aware_roi_align

NAMES = ["0", "1", "2", "3"]


def fpn_case(seed=0, image=256, channels=6):
    g = torch.Generator().manual_seed(seed)
    features = {
        name: torch.randn(2, channels, image // 4 // 2**i, image // 4 // 2**i, generator=g)
        for i, name in enumerate(NAMES)
    }
    features["pool"] = torch.randn(2, channels, 4, 4, generator=g)  # not in featmap_names: ignored
    boxes = []
    for n in (5, 3):
        xy = torch.rand(n, 2, generator=g) * image * 0.7
        wh = torch.rand(n, 2, generator=g) * image * 0.6 + 2
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=image)], dim=1))
    masks = [torch.rand(len(b), 14, 14, generator=g) for b in boxes]
    return features, boxes, masks, [(image, image)] * 2


def test_without_masks_equals_torchvision():
    features, boxes, _, shapes = fpn_case()
    expected = MultiScaleRoIAlign(NAMES, 7, 2)(features, boxes, shapes)
    actual = MultiScaleShapeAwareRoIAlign(NAMES, 7, 2)(features, boxes, shapes)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_masks_follow_their_boxes_to_their_levels():
    features, boxes, masks, shapes = fpn_case(seed=1)
    pooler = MultiScaleShapeAwareRoIAlign(NAMES, (7, 7), 2)
    from_list = pooler(features, boxes, shapes, masks)
    from_tensor = pooler(features, boxes, shapes, torch.cat(masks))
    torch.testing.assert_close(from_list, from_tensor, rtol=0, atol=0)

    levels = pooler.map_levels(boxes)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    all_masks = torch.cat(masks)
    for k in range(rois.shape[0]):
        level = int(levels[k])
        expected = shape_aware_roi_align(
            features[NAMES[level]], rois[k : k + 1], all_masks[k : k + 1], 7, pooler.scales[level], 2
        )
        torch.testing.assert_close(from_list[k : k + 1], expected, rtol=0, atol=0)


def test_single_level_and_gradients():
    features, boxes, masks, shapes = fpn_case(seed=2)
    single = {"0": features["0"].requires_grad_()}
    masks = [m.requires_grad_() for m in masks]
    out = MultiScaleShapeAwareRoIAlign(["0"], 5, -1)(single, boxes, shapes, masks)
    assert out.shape == (8, 6, 5, 5)
    out.sum().backward()
    assert single["0"].grad.abs().sum() > 0 and all(m.grad.abs().sum() > 0 for m in masks)


def test_multi_level_gradients_reach_every_level():
    features, boxes, masks, shapes = fpn_case(seed=3)
    for name in NAMES:
        features[name].requires_grad_()
    out = MultiScaleShapeAwareRoIAlign(NAMES, 7, 2)(features, boxes, shapes, masks)
    out.sum().backward()
    levels = MultiScaleShapeAwareRoIAlign(NAMES, 7, 2)
    levels(features, boxes, shapes)
    used = set(levels.map_levels(boxes).tolist())
    for i, name in enumerate(NAMES):
        assert (features[name].grad.abs().sum() > 0) == (i in used)


def test_mask_count_mismatch():
    features, boxes, masks, shapes = fpn_case()
    pooler = MultiScaleShapeAwareRoIAlign(NAMES, 7, 2)
    with pytest.raises(ValueError, match="masks"):
        pooler(features, boxes, shapes, masks[:1])
    with pytest.raises(ValueError, match="masks holds 5 maps for 8 boxes"):
        pooler(features, boxes, shapes, masks[0])
