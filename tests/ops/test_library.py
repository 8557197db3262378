"""Shape-aware RoIAlign as a PyTorch 2 operator: registration, opcheck, torch.compile and torch.export."""

import shutil

import pytest
import torch

from mrrcnn.ops import roi_align, shape_aware_roi_align

from .test_shape_aware_roi_align import random_case


def opcheck_cases():
    """(name, args of torch.ops.mrrcnn.shape_aware_roi_align) over the layouts, dtypes and sizes the
    operator's tests use."""
    features, rois, masks = random_case(seed=1, num_boxes=4)
    wide = torch.zeros(*features.shape[:3], features.shape[3] * 2, dtype=features.dtype)
    wide[..., ::2] = features
    config = (2, 3, 0.5, 2, False)
    yield "NCHW", (features, rois, masks, *config)
    yield "channels_last", (features.contiguous(memory_format=torch.channels_last), rois, masks, *config)
    yield (
        "non_contiguous",
        (wide[..., ::2], rois, masks.transpose(1, 2).contiguous().transpose(1, 2), *config),
    )
    yield "no_boxes", (features, rois[:0], masks[:0], *config)
    yield "masks_none", (features, rois, None, *config)
    yield "adaptive_aligned", (features, rois, masks, 2, 3, 0.5, -1, True)
    yield "float32", (features.float(), rois.float(), masks.float(), *config)
    yield "bfloat16", (features.bfloat16(), rois.float(), masks.bfloat16(), *config)


@pytest.mark.parametrize("name, args", list(opcheck_cases()), ids=[n for n, _ in opcheck_cases()])
def test_opcheck(name, args):
    features, rois, masks, *config = args
    # The schema, fake kernel, autograd registration and AOT dispatch, with gradients for both inputs.
    args = (features.requires_grad_(), rois, None if masks is None else masks.requires_grad_(), *config)
    torch.library.opcheck(torch.ops.mrrcnn.shape_aware_roi_align.default, args)


def test_plain_form_is_registered_and_equals_the_operator_without_masks():
    features, rois, _ = random_case(seed=2, num_boxes=3)
    plain = torch.ops.mrrcnn.roi_align(features, rois, 2, 2, 0.5, 2, False)
    torch.testing.assert_close(plain, roi_align(features, rois, 2, 0.5, 2), rtol=0, atol=0)
    torch.library.opcheck(
        torch.ops.mrrcnn.roi_align.default, (features.requires_grad_(), rois, 2, 2, 0.5, 2, False)
    )


@pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None,
    reason="torch.compile on the CPU (inductor) needs a C++ compiler",
)
def test_compile_fullgraph_forward_and_backward_equal_eager():
    features, rois, masks = random_case(seed=3, num_boxes=5, dtype=torch.float32)

    def pool(f, m):
        return shape_aware_roi_align(f, rois, m, (2, 3), 0.5, 2).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(pool, fullgraph=True)
    results = []
    for fn in (pool, compiled):
        f, m = features.clone().requires_grad_(), masks.clone().requires_grad_()
        out = fn(f, m)
        out.backward()
        results.append((out, f.grad, m.grad))
    for eager, ours in zip(*results):
        torch.testing.assert_close(ours, eager, rtol=1e-5, atol=1e-6)


def test_export_of_a_module_calling_the_operator():
    class Pool(torch.nn.Module):
        def forward(self, features, boxes, masks):
            return shape_aware_roi_align(features, [boxes], masks, 7, 0.25, 2)

    features = torch.randn(1, 4, 20, 24)
    boxes = torch.tensor([[4.0, 4.0, 40.0, 60.0], [0.0, 8.0, 90.0, 70.0]])
    masks = torch.rand(2, 14, 14)
    boxes_dim = torch.export.Dim("boxes")
    program = torch.export.export(
        Pool(),
        (features, boxes, masks),
        dynamic_shapes=({2: torch.export.Dim("h"), 3: torch.export.Dim("w")}, {0: boxes_dim}, {0: boxes_dim}),
    )
    assert any(node.target is torch.ops.mrrcnn.shape_aware_roi_align.default for node in program.graph.nodes)
    more = torch.cat([boxes, boxes + 3.0])
    other = torch.randn(1, 4, 30, 28), more, torch.rand(4, 14, 14)
    torch.testing.assert_close(program.module()(*other), Pool()(*other), rtol=0, atol=0)
