"""The Triton kernels of Shape-aware RoIAlign against the loop-level reference, torchvision and the CPU path.

They run compiled on CUDA when a GPU is present, and on CPU tensors under Triton's interpreter. The
interpreter is chosen by ``TRITON_INTERPRET=1`` when ``triton.language`` is imported, and then holds for the
whole process, compiled kernels included; so the interpreter cases run in a subprocess of their own
(``test_kernels_under_the_interpreter``), which runs this file again with the variable set. There the
operators' CUDA kernels (Triton, with their routing) are registered as their CPU kernels, so that the
public function runs the kernels on CPU tensors as it does on a GPU.
"""

import itertools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

pytest.importorskip("triton")

from mrrcnn.ops import gather, library, shape_aware_roi_align, triton_kernels
from mrrcnn.ops.geometry import geometry_dtype, roi_geometry
from mrrcnn.ops.reference import shape_aware_roi_align_reference

from .test_shape_aware_roi_align import EDGE_ROIS, random_case

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRETER:
    library.shape_aware_roi_align_op.register_kernel("cpu")(library._forward_cuda)
    library.backward_op.register_kernel("cpu")(library._backward_cuda)


def geometry(features, rois, output_size, scale, sampling_ratio, aligned=False):
    return roi_geometry(
        rois, features.shape[0], output_size, scale, sampling_ratio, aligned, geometry_dtype(features.dtype)
    )


def kernels_forward(features, rois, masks, output_size, scale, sampling_ratio, aligned=False):
    """The forward kernel on ``features`` as they are laid out (the operator copies to channels-last)."""
    g = geometry(features, rois, output_size, scale, sampling_ratio, aligned)
    return triton_kernels.forward(features, g, masks, output_size, sampling_ratio)


@pytest.fixture(params=["interpreter", "cuda"])
def device(request):
    """Where the kernels run: ``cpu`` under the interpreter (in its subprocess only), or ``cuda``."""
    if request.param == "interpreter":
        if not INTERPRETER:
            pytest.skip("runs in the interpreter's subprocess (test_kernels_under_the_interpreter)")
        return "cpu"
    if INTERPRETER or not torch.cuda.is_available():
        pytest.skip("needs CUDA (and compiled kernels)")
    return "cuda"


@pytest.fixture
def deterministic():
    """Restores the deterministic-algorithms setting the test changes."""
    state = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(state[0], warn_only=state[1])


def to(device, *tensors):
    return [t.to(device) if t is not None else None for t in tensors]


# Where a GPU is, every case below runs compiled instead (the GPU host's older Triton cannot interpret them).
@pytest.mark.skipif(
    INTERPRETER or torch.cuda.is_available(), reason="the parent of the interpreter's run, for CPU hosts"
)
def test_kernels_under_the_interpreter():
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "interpreter", __file__],
        check=False,
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize(
    "aligned, sampling_ratio, scale",
    [(False, -1, 0.5), (True, -1, 1.0), (False, 0, 0.25), (True, 2, 0.5), (False, 1, 1.0)],
)
def test_forward_matches_reference(device, aligned, sampling_ratio, scale):
    features, rois, masks = random_case(seed=31 + sampling_ratio, num_boxes=4, scale=scale)
    expected = shape_aware_roi_align_reference(features, rois, masks, (2, 3), scale, sampling_ratio, aligned)
    actual = shape_aware_roi_align(*to(device, features, rois, masks), (2, 3), scale, sampling_ratio, aligned)
    torch.testing.assert_close(actual.cpu(), expected, rtol=0, atol=1e-12)
    # The kernels read NCHW features through their strides too.
    nchw = kernels_forward(*to(device, features, rois, masks), (2, 3), scale, sampling_ratio, aligned)
    torch.testing.assert_close(nchw.cpu(), expected, rtol=0, atol=1e-12)


def test_unit_sizes(device):
    # Triton passes int arguments equal to 1 as constants: one image, one channel, one-pixel-wide masks.
    g = torch.Generator().manual_seed(8)
    features = torch.randn(1, 1, 5, 6, generator=g, dtype=torch.float64)
    rois = torch.tensor([[0, 1.0, 0.5, 9.0, 8.0], [0, -2.0, 3.0, 4.0, 11.0]], dtype=torch.float64)
    for mask_size in [(1, 1), (1, 4), (3, 1)]:
        masks = torch.rand(2, *mask_size, generator=g, dtype=torch.float64)
        expected = shape_aware_roi_align_reference(features, rois, masks, (2, 3), 0.5, -1, False)
        actual = kernels_forward(*to(device, features, rois, masks), (2, 3), 0.5, -1)
        torch.testing.assert_close(actual.cpu(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["NCHW", "channels_last", "strided"])
@pytest.mark.parametrize("sampling_ratio, aligned", [(-1, False), (2, True)])
def test_gradients_match_reference(device, layout, sampling_ratio, aligned):
    features, rois, masks = random_case(seed=5, num_boxes=4)
    grad = torch.linspace(-1, 1, 4 * 3 * 2 * 3, dtype=features.dtype).view(4, 3, 2, 3)
    f, m = features.clone().requires_grad_(), masks.clone().requires_grad_()
    shape_aware_roi_align_reference(f, rois, m, (2, 3), 0.5, sampling_ratio, aligned).backward(grad)

    if layout == "channels_last":
        ours = features.contiguous(memory_format=torch.channels_last).to(device)
    elif layout == "strided":
        wide = torch.zeros(*features.shape[:3], features.shape[3] * 2, dtype=features.dtype, device=device)
        wide[..., ::2] = features.to(device)
        ours = wide[..., ::2]
    else:
        ours = features.to(device)
    g = geometry(ours, rois.to(device), (2, 3), 0.5, sampling_ratio, aligned)
    for grad_layout in (grad, grad.contiguous(memory_format=torch.channels_last)):
        grad_input, grad_masks = triton_kernels.backward(
            grad_layout.to(device), ours, g, masks.to(device), tuple(ours.shape), sampling_ratio, True, True
        )
        torch.testing.assert_close(grad_input.cpu(), f.grad, rtol=0, atol=1e-12)
        torch.testing.assert_close(grad_masks.cpu(), m.grad, rtol=0, atol=1e-12)
    # And through the operator, whose autograd calls the backward operator.
    f2, m2 = ours.detach().requires_grad_(), masks.to(device).requires_grad_()
    shape_aware_roi_align(f2, rois.to(device), m2, (2, 3), 0.5, sampling_ratio, aligned).backward(
        grad.to(device)
    )
    torch.testing.assert_close(f2.grad.cpu(), f.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(m2.grad.cpu(), m.grad, rtol=0, atol=1e-12)


def test_gradient_for_one_input_only(device):
    features, rois, masks = to(device, *random_case(seed=6, num_boxes=3))
    masks = masks.transpose(1, 2).contiguous().transpose(1, 2)  # read through its strides too
    both = features.clone().requires_grad_(), masks.clone().requires_grad_()
    shape_aware_roi_align(both[0], rois, both[1], (2, 3), 0.5, 2).sum().backward()
    f = features.clone().requires_grad_()
    shape_aware_roi_align(f, rois, masks, (2, 3), 0.5, 2).sum().backward()
    m = masks.clone().requires_grad_()
    shape_aware_roi_align(features, rois, m, (2, 3), 0.5, 2).sum().backward()
    torch.testing.assert_close(f.grad, both[0].grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(m.grad, both[1].grad, rtol=0, atol=1e-12)


def test_gradcheck_float64(device):
    features, rois, masks = random_case(seed=11, batch=2, channels=2, size=(6, 7), num_boxes=3)
    features, rois, masks = to(device, features, rois, masks.clamp(0.1, 0.9))
    features.requires_grad_()
    masks.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f, m: shape_aware_roi_align(f, rois, m, (2, 3), 0.5, -1, True),
        (features, masks),
        fast_mode=True,
        # On a GPU the backward's atomic adds sum in any order: the two runs gradcheck compares differ
        # by float64 rounding.
        nondet_tol=1e-12,
    )


@pytest.mark.parametrize("aligned, sampling_ratio", itertools.product([False, True], [-1, 2]))
def test_no_masks_equal_torchvision_roi_align(device, aligned, sampling_ratio):
    features, rois, _ = random_case(seed=7, num_boxes=6, size=(12, 14), dtype=torch.float32)
    expected = torchvision.ops.roi_align(features, rois, (3, 3), 0.5, sampling_ratio, aligned)
    actual = shape_aware_roi_align(*to(device, features, rois), None, (3, 3), 0.5, sampling_ratio, aligned)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-5, atol=1e-6)


def test_list_of_boxes_equals_tensor_form(device):
    features, rois, masks = random_case(seed=3, num_boxes=5)
    order = torch.argsort(rois[:, 0], stable=True)
    features, rois, masks = to(device, features, rois[order], masks[order])
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(features.shape[0])]
    from_list = shape_aware_roi_align(features, per_image, masks, 2, 0.5, 2)
    torch.testing.assert_close(from_list, shape_aware_roi_align(features, rois, masks, 2, 0.5, 2))


def test_no_boxes(device):
    features = torch.randn(2, 4, 8, 8, device=device, requires_grad=True)
    masks = torch.zeros(0, 3, 3, device=device, requires_grad=True)
    out = shape_aware_roi_align(features, torch.zeros(0, 5, device=device), masks, (7, 7), 1.0, -1)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert features.grad is not None and not features.grad.any()
    assert masks.grad is not None and masks.grad.shape == (0, 3, 3)
    empty = shape_aware_roi_align(features, [torch.zeros(0, 4, device=device)], None, 2)
    assert empty.shape == (0, 4, 2, 2)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on NaN and infinite boxes
def test_boxes_outside_zero_size_and_non_finite(device):
    features = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    rois = torch.tensor(EDGE_ROIS, dtype=torch.float64)
    masks = torch.rand(5, 4, 4, dtype=torch.float64)
    for aligned, sampling_ratio in [(False, -1), (True, 2)]:
        out = kernels_forward(*to(device, features, rois, masks), (3, 3), 1.0, sampling_ratio, aligned)
        expected = shape_aware_roi_align_reference(
            features, rois, masks, (3, 3), 1.0, sampling_ratio, aligned
        )
        torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-12)
        assert not out[:2].any()
    non_finite = torch.tensor([[0, float("nan"), 0.0, 3.0, 3.0], [0, 0.0, 0.0, float("inf"), 3.0]])
    for sampling_ratio in (-1, 2):
        out = kernels_forward(*to(device, features, non_finite), None, (2, 2), 1.0, sampling_ratio)
        assert not out.isnan().any()


@pytest.mark.parametrize("index", [2.0, -1.0, 0.5])
def test_bad_batch_index_pools_zeros(device, index):
    # What the kernels do with indices that nothing checked (the public op checks them on the CPU only).
    features = torch.randn(2, 3, 6, 6, device=device, requires_grad=True)
    rois = torch.tensor([[index, 0.0, 0.0, 4.0, 4.0], [1.0, 0.0, 0.0, 4.0, 4.0]], device=device)
    for sampling_ratio in (-1, 2):
        features.grad = None
        out = torch.ops.mrrcnn.shape_aware_roi_align(features, rois, None, 2, 2, 1.0, sampling_ratio, False)
        assert not out[0].any() and out[1].any()
        out.sum().backward()
        torch.testing.assert_close(features.grad[0], torch.zeros_like(features.grad[0]))


def test_output_layout_follows_input(device):
    features, rois, masks = to(device, *random_case(seed=2, channels=4, dtype=torch.float32))
    channels_last = features.contiguous(memory_format=torch.channels_last)
    out = kernels_forward(channels_last, rois, masks, (2, 2), 0.5, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert kernels_forward(features, rois, masks, (2, 2), 0.5, 2).is_contiguous()
    # The operator always gives channels-last, as its fake kernel says.
    assert shape_aware_roi_align(features, rois, masks, 2, 0.5, 2).is_contiguous(
        memory_format=torch.channels_last
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_against_float32(device, dtype):
    features, rois, masks = random_case(seed=4, channels=8, num_boxes=3, dtype=torch.float32)
    grads = []
    for run_dtype in (torch.float32, dtype):
        f = features.to(device, run_dtype).detach().requires_grad_()
        m = masks.to(device, run_dtype).detach().requires_grad_()
        out = shape_aware_roi_align(f, rois.to(device), m, 2, 0.5, 2)
        assert out.dtype == run_dtype
        out.float().sum().backward()
        assert f.grad.dtype == run_dtype and m.grad.dtype == run_dtype
        grads.append((out.float().cpu(), f.grad.float().cpu(), m.grad.float().cpu()))
    for full, half in zip(*grads):
        torch.testing.assert_close(half, full, rtol=0.02, atol=0.05)


@pytest.mark.usefixtures("deterministic")
def test_deterministic_mode(device):
    # The features' gradient takes the gather (fixed summation order); the masks' has no deterministic
    # route and alerts as PyTorch's own nondeterministic kernels do.
    features, rois, masks = to(device, *random_case(seed=12, num_boxes=4, dtype=torch.float32))
    torch.use_deterministic_algorithms(True)
    f = features.clone().requires_grad_()
    shape_aware_roi_align(f, rois, masks, 2, 0.5, 2).sum().backward()
    g = geometry(features, rois, (2, 2), 0.5, 2)
    expected, _ = gather.backward(
        torch.ones(4, 3, 2, 2, device=device), None, g, masks, tuple(features.shape), 2, True, False
    )
    assert torch.equal(f.grad, expected)
    m = masks.clone().requires_grad_()
    out = shape_aware_roi_align(features, rois, m, 2, 0.5, 2)  # the forward is deterministic
    with pytest.raises(RuntimeError, match="shape_aware_roi_align_backward"):
        out.sum().backward()
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = shape_aware_roi_align(features, rois, m, 2, 0.5, 2)
    with pytest.warns(UserWarning, match="shape_aware_roi_align_backward"):
        out.sum().backward()


# Host-side logic: no kernel runs, so these need neither a GPU nor the interpreter.


@pytest.mark.skipif(INTERPRETER, reason="host-side logic, tested in the parent process")
def test_missing_triton_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "mrrcnn.ops.triton_kernels", None)  # makes the import fail
    monkeypatch.delattr(sys.modules["mrrcnn.ops"], "triton_kernels", raising=False)
    monkeypatch.setattr(library, "_fallback_warned", False)
    features = torch.randn(1, 2, 4, 4)
    with pytest.warns(RuntimeWarning, match="Triton cannot be imported"):
        assert library.triton_kernels(features) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert library.triton_kernels(features) is None


@pytest.mark.skipif(INTERPRETER, reason="host-side logic, tested in the parent process")
def test_unusable_reason_for_int32_offsets():
    assert triton_kernels.unusable_reason(torch.empty(4, 256, 200, 336, device="meta")) is None
    assert "2**31" in triton_kernels.unusable_reason(torch.empty(1, 2**12, 2**10, 2**9, device="meta"))


@pytest.mark.skipif(INTERPRETER, reason="host-side logic, tested in the parent process")
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_embedding_bag_path_pools_zeros_for_bad_batch_index(sampling_ratio):
    # The CPU kernel's (and CUDA fallback's) behaviour for indices that nothing checked.
    features = torch.randn(2, 3, 6, 6, requires_grad=True)
    rois = torch.tensor([[2.0, 0, 0, 4, 4], [-1.0, 0, 0, 4, 4], [0.5, 0, 0, 4, 4], [1.0, 0, 0, 4, 4]])
    out = torch.ops.mrrcnn.shape_aware_roi_align(features, rois, None, 2, 2, 1.0, sampling_ratio, False)
    assert not out[:3].any()
    expected = torchvision.ops.roi_align(features, rois[3:], (2, 2), 1.0, sampling_ratio, False)
    torch.testing.assert_close(out[3:], expected)
    out.sum().backward()
    assert not features.grad[0].any()


@pytest.mark.skipif(INTERPRETER or not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dispatch_uses_the_kernels_and_matches_embedding_bag():
    features, rois, masks = to(
        "cuda", *random_case(seed=21, num_boxes=30, size=(30, 40), dtype=torch.float32)
    )
    assert library.triton_kernels(features) is triton_kernels
    assert not features.is_contiguous(memory_format=torch.channels_last)
    for sampling_ratio, aligned in [(2, False), (-1, True)]:
        ours = shape_aware_roi_align(features, rois, masks, 7, 0.5, sampling_ratio, aligned)
        g = geometry(features, rois, (7, 7), 0.5, sampling_ratio, aligned)
        embedding_bag = gather.forward(features, g, masks, (7, 7), sampling_ratio)
        # Float32 sums of up to 16 samples in another order.
        torch.testing.assert_close(ours, embedding_bag, rtol=1e-5, atol=1e-5)
        # NCHW features are pooled from a channels-last copy, the kernels' fast layout.
        assert ours.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(INTERPRETER or not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_embedding_bag_fallback_handles_bfloat16(monkeypatch):
    monkeypatch.setattr(library, "triton_kernels", lambda input: None)
    features, rois, masks = random_case(seed=4, channels=8, dtype=torch.float32)
    expected = shape_aware_roi_align(features, rois, masks, 4, 0.5, 2)
    f = features.to("cuda", torch.bfloat16).requires_grad_()
    m = masks.to("cuda", torch.bfloat16).requires_grad_()
    out = shape_aware_roi_align(f, rois.cuda(), m, 4, 0.5, 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float().cpu(), expected, rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert f.grad.dtype == torch.bfloat16 and m.grad.dtype == torch.bfloat16
