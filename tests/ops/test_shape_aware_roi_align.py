import itertools

import pytest
import torch
import torchvision

from mrrcnn.ops import ShapeAwareRoIAlign, roi_align, shape_aware_roi_align
from mrrcnn.ops.reference import shape_aware_roi_align_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_case(seed, batch=2, channels=3, size=(11, 14), num_boxes=5, scale=0.5, dtype=torch.float64):
    """Features, rois (some spilling over the border) and masks for a random case."""
    g = torch.Generator().manual_seed(seed)
    height, width = size
    features = torch.randn(batch, channels, height, width, generator=g, dtype=dtype)
    extent = torch.tensor([width, height], dtype=dtype) / scale
    xy = torch.rand(num_boxes, 2, generator=g, dtype=dtype) * extent * 1.2 - 0.1 * extent
    wh = torch.rand(num_boxes, 2, generator=g, dtype=dtype) * extent * 0.6
    index = torch.randint(0, batch, (num_boxes, 1), generator=g).to(dtype)
    rois = torch.cat([index, xy, xy + wh], dim=1)
    masks = torch.rand(num_boxes, 5, 6, generator=g, dtype=dtype)
    return features, rois, masks


@pytest.mark.parametrize(
    "aligned, sampling_ratio, scale, output_size",
    list(itertools.product([False, True], [-1, 0, 1, 2], [1.0, 0.5, 0.25], [(2, 3)]))
    + [(False, 2, 0.5, (4, 4))],
)
def test_fast_path_matches_reference(aligned, sampling_ratio, scale, output_size):
    features, rois, masks = random_case(seed=hash((aligned, sampling_ratio, scale)) % 1000, scale=scale)
    expected = shape_aware_roi_align_reference(
        features, rois, masks, output_size, scale, sampling_ratio, aligned
    )
    actual = shape_aware_roi_align(features, rois, masks, output_size, scale, sampling_ratio, aligned)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_list_of_boxes_equals_tensor_form():
    features, rois, masks = random_case(seed=3, num_boxes=6)
    order = torch.argsort(rois[:, 0], stable=True)
    rois, masks = rois[order], masks[order]
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(features.shape[0])]
    from_list = shape_aware_roi_align(features, per_image, masks, 3, 0.5, 2)
    from_tensor = shape_aware_roi_align(features, rois, masks, 3, 0.5, 2)
    torch.testing.assert_close(from_list, from_tensor, rtol=0, atol=0)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_ones_masks_equal_torchvision_roi_align(aligned, sampling_ratio, dtype):
    features, rois, masks = random_case(seed=7, num_boxes=12, size=(20, 24), dtype=dtype)
    expected = torchvision.ops.roi_align(features, rois, (7, 7), 0.5, sampling_ratio, aligned)
    ones = shape_aware_roi_align(features, rois, torch.ones_like(masks), (7, 7), 0.5, sampling_ratio, aligned)
    plain = roi_align(features, rois, (7, 7), 0.5, sampling_ratio, aligned)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(ones, expected, **tol)
    torch.testing.assert_close(plain, expected, **tol)


def test_hand_computed_value():
    # One 2x2 box on a 4x4 ramp, one bin, one sample at its centre (2, 2): the feature there is 2*4+2 = 10.
    # The mask [[0, 1]] read at the box centre (u = v = 0.5 -> pixel (0.5, 0)) is 0.5: output 5.
    features = torch.arange(16.0).view(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]])
    masks = torch.tensor([[[0.0, 1.0]]])
    out = shape_aware_roi_align(features, rois, masks, 1, 1.0, 1)
    assert out.item() == pytest.approx(5.0)
    # Two samples per axis: features at (1.5, 1.5), (1.5, 2.5), (2.5, 1.5), (2.5, 2.5) are 7.5, 8.5, 11.5, 12.5;
    # the mask at u = 0.25 and 0.75 reads 0 and 1 (clamped to the border), so the mean is (8.5 + 12.5) / 4.
    out = shape_aware_roi_align(features, rois, masks, 1, 1.0, 2)
    assert out.item() == pytest.approx((8.5 + 12.5) / 4)


def test_gradcheck_features_and_masks():
    features, rois, masks = random_case(seed=11, batch=2, channels=2, size=(6, 7), num_boxes=3)
    features.requires_grad_()
    # Keep masks away from the kinks of the clamp: gradcheck needs a smooth neighbourhood.
    masks = masks.clamp(0.1, 0.9).requires_grad_()
    for sampling_ratio, aligned in [(2, False), (-1, True)]:
        assert torch.autograd.gradcheck(
            lambda f, m, sampling_ratio=sampling_ratio, aligned=aligned: shape_aware_roi_align(
                f, rois, m, (2, 3), 0.5, sampling_ratio, aligned
            ),
            (features, masks),
        )


def test_gradients_match_reference():
    features, rois, masks = random_case(seed=5, num_boxes=4)
    grads = []
    for fn in (shape_aware_roi_align, shape_aware_roi_align_reference):
        f, m = features.clone().requires_grad_(), masks.clone().requires_grad_()
        out = fn(f, rois, m, (2, 3), 0.5, -1, False)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        grads.append((f.grad, m.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-12)


def test_no_boxes():
    features = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = shape_aware_roi_align(features, torch.zeros(0, 5), torch.zeros(0, 3, 3), (7, 7), 1.0, -1)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert features.grad is not None and not features.grad.any()
    assert shape_aware_roi_align(features, [torch.zeros(0, 4)], None, 2, 1.0, 2).shape == (0, 4, 2, 2)


# Boxes on an 8x8 map (spatial scale 1): the first two pool zeros.
EDGE_ROIS = [
    [0, -20.0, -20.0, -10.0, -10.0],  # wholly outside: zeros
    [0, 100.0, 2.0, 120.0, 6.0],  # wholly outside on the right
    [0, -3.0, -3.0, 4.0, 4.0],  # partly outside
    [0, 6.0, 6.0, 12.0, 12.0],  # partly outside on the far side
    [0, 3.0, 3.0, 3.0, 3.0],  # zero size
]


def test_boxes_outside_and_zero_size():
    features = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    rois = torch.tensor(EDGE_ROIS, dtype=torch.float64)
    masks = torch.rand(5, 4, 4, dtype=torch.float64)
    for aligned, sampling_ratio in itertools.product([False, True], [-1, 2]):
        out = shape_aware_roi_align(features, rois, masks, (3, 3), 1.0, sampling_ratio, aligned)
        expected = shape_aware_roi_align_reference(
            features, rois, masks, (3, 3), 1.0, sampling_ratio, aligned
        )
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
        assert not out[:2].any()
        plain = torchvision.ops.roi_align(features, rois, (3, 3), 1.0, sampling_ratio, aligned)
        torch.testing.assert_close(roi_align(features, rois, (3, 3), 1.0, sampling_ratio, aligned), plain)


def test_non_finite_boxes_give_zeros_not_errors():
    features = torch.randn(1, 2, 5, 5)
    rois = torch.tensor([[0, float("nan"), 0.0, 3.0, 3.0], [0, 0.0, 0.0, float("inf"), 3.0]])
    out = shape_aware_roi_align(features, rois, None, 2, 1.0, 2)
    assert out.shape == (2, 2, 2, 2)


@pytest.mark.parametrize("layout", ["channels_last", "non_contiguous"])
def test_memory_layouts(layout):
    features, rois, masks = random_case(seed=2, channels=4)
    expected = shape_aware_roi_align(features, rois, masks, 3, 0.5, 2)
    if layout == "channels_last":
        other = features.contiguous(memory_format=torch.channels_last)
    else:
        wide = torch.zeros(*features.shape[:3], features.shape[3] * 2, dtype=features.dtype)
        wide[..., ::2] = features
        other = wide[..., ::2]
        assert not other.is_contiguous()
    torch.testing.assert_close(shape_aware_roi_align(other, rois, masks, 3, 0.5, 2), expected, rtol=0, atol=0)
    non_contiguous_masks = masks.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(
        shape_aware_roi_align(features, rois, non_contiguous_masks, 3, 0.5, 2), expected, rtol=0, atol=0
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes_and_devices(device, dtype):
    features, rois, masks = random_case(seed=4, channels=8, dtype=torch.float32)
    expected = shape_aware_roi_align(features, rois, masks, 4, 0.5, 2)
    f = features.to(device, dtype).requires_grad_()
    m = masks.to(device, dtype).requires_grad_()
    out = shape_aware_roi_align(f, rois.to(device), m, 4, 0.5, 2)
    assert out.dtype == dtype and out.device.type == device
    tol = {"rtol": 0, "atol": 2e-6} if dtype == torch.float32 else {"rtol": 0.05, "atol": 0.05}
    torch.testing.assert_close(out.float().cpu(), expected, **tol)
    out.float().sum().backward()
    assert f.grad.dtype == dtype and m.grad.dtype == dtype


def test_module_form():
    features, rois, masks = random_case(seed=9)
    module = ShapeAwareRoIAlign((2, 2), 0.5, 2, aligned=True)
    assert "aligned=True" in repr(module)
    torch.testing.assert_close(
        module(features, rois, masks), shape_aware_roi_align(features, rois, masks, 2, 0.5, 2, True)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input": torch.randn(3, 8, 8)}, "input"),
        ({"input": torch.zeros(1, 2, 8, 8, dtype=torch.long)}, "input"),
        ({"boxes": torch.zeros(2, 4)}, "boxes"),
        ({"boxes": [torch.zeros(2, 5)]}, r"boxes\[0\]"),
        ({"boxes": [torch.zeros(1, 4)] * 3}, "boxes"),
        ({"boxes": torch.tensor([[2.0, 0, 0, 4, 4], [0.0, 0, 0, 4, 4]])}, "batch index 2"),
        ({"boxes": torch.tensor([[-1.0, 0, 0, 4, 4], [0.0, 0, 0, 4, 4]])}, "batch index -1"),
        ({"masks": torch.ones(3, 4, 4)}, "masks holds 3 maps for 2 boxes"),
        ({"masks": torch.ones(2, 4)}, "masks"),
        ({"masks": torch.ones(2, 0, 4)}, "masks"),
        ({"output_size": 0}, "output_size"),
        ({"output_size": (2, 2, 2)}, "output_size"),
        ({"spatial_scale": 0.0}, "spatial_scale"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, match):
    args = {
        "input": torch.randn(2, 2, 8, 8),
        "boxes": torch.tensor([[0.0, 0, 0, 4, 4], [1.0, 1, 1, 5, 5]]),
        "masks": torch.ones(2, 4, 4),
        "output_size": 2,
        "spatial_scale": 1.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        shape_aware_roi_align(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    features, rois, masks = random_case(seed=21, num_boxes=30, size=(30, 40), dtype=torch.float64)
    for sampling_ratio, aligned in [(2, False), (-1, True)]:
        cpu = shape_aware_roi_align(features, rois, masks, 7, 0.5, sampling_ratio, aligned)
        gpu = shape_aware_roi_align(
            features.cuda(), rois.cuda(), masks.cuda(), 7, 0.5, sampling_ratio, aligned
        )
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-10)
