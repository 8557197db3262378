"""The exportable Shape-aware RoIAlign (RoIAlign on the fine grid x resized mask, average-pooled) and the
pooler's scripted / traced / ONNX form, against the eager operator."""

import itertools

import pytest
import torch
import torchvision

from mrrcnn.ops import MultiScaleShapeAwareRoIAlign, shape_aware_roi_align
from mrrcnn.ops.exportable import exportable_shape_aware_roi_align, exporting

from .test_poolers import NAMES, fpn_case
from .test_shape_aware_roi_align import random_case


def tiny_and_large_case(dtype, seed=0):
    """Random rois, a few of them under a pixel (the 1-pixel minimum of aligned=False) or off the map."""
    features, rois, masks = random_case(seed, num_boxes=24, size=(13, 17), dtype=dtype)
    rois[:4, 3:] = rois[:4, 1:3] + 0.3
    return features, rois, masks


@pytest.mark.parametrize(
    "dtype, aligned, sampling_ratio",
    list(itertools.product([torch.float64, torch.float32], [False, True], [1, 2, 3])),
)
def test_equals_the_eager_operator(dtype, aligned, sampling_ratio):
    features, rois, masks = tiny_and_large_case(dtype, seed=sampling_ratio)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0, "atol": 1e-12}
    for output_size, m in itertools.product([(7, 7), (3, 5)], [masks, None]):
        expected = shape_aware_roi_align(features, rois, m, output_size, 0.5, sampling_ratio, aligned)
        actual = exportable_shape_aware_roi_align(
            features, rois, m, output_size, 0.5, sampling_ratio, aligned
        )
        assert actual.dtype == dtype
        torch.testing.assert_close(actual, expected, **tol)


def test_scripted_equals_eager():
    features, rois, masks = tiny_and_large_case(torch.float32)
    scripted = torch.jit.script(exportable_shape_aware_roi_align)
    for m in (masks, None):
        expected = exportable_shape_aware_roi_align(features, rois, m, (7, 7), 0.25, 2, False)
        torch.testing.assert_close(
            scripted(features, rois, m, (7, 7), 0.25, 2, False), expected, rtol=0, atol=0
        )


def test_adaptive_sampling_is_refused_with_masks_and_plain_roi_align_without():
    features, rois, masks = tiny_and_large_case(torch.float64)
    for ratio in (0, -1):
        with pytest.raises(ValueError, match=f"sampling_ratio={ratio} \\(adaptive"):
            exportable_shape_aware_roi_align(features, rois, masks, (7, 7), 0.5, ratio)
        expected = torchvision.ops.roi_align(features, rois, (7, 7), 0.5, ratio)
        actual = exportable_shape_aware_roi_align(features, rois, None, (7, 7), 0.5, ratio)
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_exporting_is_true_only_when_scripted_traced_or_exported():
    assert not exporting()
    assert torch.jit.script(exporting)()
    seen = []

    def probe(x):
        seen.append(exporting())
        return x + 1

    torch.jit.trace(probe, torch.ones(1), check_trace=False)
    assert seen and all(seen)


class Pool(torch.nn.Module):
    """The pooler with tensor arguments only (an FPN of four maps, two images), for tracing and ONNX."""

    def __init__(self, image_shapes):
        super().__init__()
        self.pooler = MultiScaleShapeAwareRoIAlign(NAMES, 7, 2)
        self.image_shapes = image_shapes

    def forward(self, f0, f1, f2, f3, boxes0, boxes1, masks):
        features = {"0": f0, "1": f1, "2": f2, "3": f3}
        return self.pooler(features, [boxes0, boxes1], self.image_shapes, masks)


def test_pooler_scripted_and_traced_equal_eager():
    features, boxes, masks, shapes = fpn_case(seed=4)
    masks = torch.cat(masks)
    eager = MultiScaleShapeAwareRoIAlign(NAMES, 7, 2)
    scripted = torch.jit.script(MultiScaleShapeAwareRoIAlign(NAMES, 7, 2))
    single = MultiScaleShapeAwareRoIAlign(["0"], 7, 2)
    single_scripted = torch.jit.script(MultiScaleShapeAwareRoIAlign(["0"], 7, 2))
    for m in (masks, None):
        expected = eager(features, boxes, shapes, m)
        torch.testing.assert_close(scripted(features, boxes, shapes, m), expected, rtol=1e-5, atol=1e-5)
        expected = single(features, boxes, shapes, m)
        torch.testing.assert_close(
            single_scripted(features, boxes, shapes, m), expected, rtol=1e-5, atol=1e-5
        )

    args = (*(features[name] for name in NAMES), *boxes, masks)
    traced = torch.jit.trace(Pool(shapes), args)
    # Another set of boxes through the traced graph: the per-level split is not baked in.
    features, boxes, masks, _ = fpn_case(seed=5)
    masks = torch.cat(masks)
    expected = eager(features, boxes, shapes, masks)
    actual = traced(*(features[name] for name in NAMES), *boxes, masks)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_pooler_in_onnxruntime_equals_eager(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    features, boxes, masks, shapes = fpn_case(seed=6)
    masks = torch.cat(masks)
    names = ["f0", "f1", "f2", "f3", "boxes0", "boxes1", "masks"]
    args = (*(features[name] for name in NAMES), *boxes, masks)
    path = tmp_path / "pool.onnx"
    dynamic = {name: {0: f"n_{name}"} for name in names[4:]}
    torch.onnx.export(
        Pool(shapes), args, path, opset_version=17, dynamo=False, input_names=names, dynamic_axes=dynamic
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    features, boxes, masks, _ = fpn_case(seed=7)
    masks = torch.cat(masks)
    args = (*(features[name] for name in NAMES), *boxes, masks)
    (actual,) = session.run(None, {name: a.numpy() for name, a in zip(names, args)})
    expected = MultiScaleShapeAwareRoIAlign(NAMES, 7, 2)(features, boxes, shapes, masks)
    torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=1e-4, atol=1e-5)

    operators = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"RoiAlign", "Resize", "Mul", "AveragePool"} <= operators
