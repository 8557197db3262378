import pytest
import torch
import torch.nn.functional as F

from mrrcnn.ops import gather
from mrrcnn.ops.geometry import roi_geometry


def autograd_through_embedding_bag(features, geometry, masks, grad, sampling_ratio):
    """The features' gradient as autograd computes it through the forward's ``embedding_bag``."""
    k, _, oh, ow = grad.shape
    groups = gather._groups(geometry, masks, features.shape[2:], (oh, ow), sampling_ratio)
    bags = gather._bags(groups, oh * ow, k, features.dtype)
    table = gather._rows(features).detach().requires_grad_()
    offsets = torch.cumsum(bags.sizes, 0) - bags.sizes
    out = F.embedding_bag(bags.index, table, offsets, mode="sum", per_sample_weights=bags.weight)
    out.backward(gather._in_group_order(gather._rows(grad), bags, k))
    return table.grad


# 20 RoIs have fewer entries than torch.sort's parallel radix sort takes (32768), 300 more.
@pytest.mark.parametrize("num_boxes", [20, 300])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_features_gradient_is_embedding_bags_own_bit_for_bit(num_boxes, sampling_ratio):
    g = torch.Generator().manual_seed(num_boxes)
    features = torch.randn(2, 8, 24, 30, generator=g).contiguous(memory_format=torch.channels_last)
    xy = torch.rand(num_boxes, 2, generator=g) * torch.tensor([100.0, 80.0])
    wh = torch.rand(num_boxes, 2, generator=g) * 60 + 4
    rois = torch.cat([torch.randint(0, 2, (num_boxes, 1), generator=g).float(), xy, xy + wh], dim=1)
    masks = torch.rand(num_boxes, 14, 14, generator=g)
    grad = torch.randn(num_boxes, 8, 7, 7, generator=g)
    geometry = roi_geometry(rois, 2, (7, 7), 0.25, sampling_ratio, False, torch.float32)

    ours, _ = gather.backward(grad, features, geometry, masks, features.shape, sampling_ratio, True, False)

    expected = autograd_through_embedding_bag(features, geometry, masks, grad, sampling_ratio)
    assert torch.equal(gather._rows(ours), expected)
