"""Shape-aware RoIAlign as PyTorch operators: ``torch.ops.mrrcnn.*``, registered through ``torch.library``.

- ``mrrcnn::shape_aware_roi_align(input, rois, masks?, pooled_height, pooled_width, spatial_scale,
  sampling_ratio, aligned) -> Tensor``: the operator (``masks`` None: plain RoIAlign);
- ``mrrcnn::roi_align(input, rois, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned)``:
  the plain form, with torchvision's signature (``torch.ops.torchvision.roi_align``); it decomposes into
  the first;
- ``mrrcnn::_shape_aware_roi_align_backward``: its gradients for the features and the masks (either or
  both, as asked), an op of its own so that autograd, ``torch.compile`` and ``torch.export`` see it.

Each has a CPU kernel (:mod:`mrrcnn.ops.gather`), a CUDA kernel (the Triton kernels of
:mod:`mrrcnn.ops.triton_kernels`, or the gather where Triton cannot run), and a fake kernel that gives the
output's shape, dtype and strides (channels-last) from the inputs alone, which is all tracing needs. The
operators check nothing that needs tensor data: the public :func:`mrrcnn.ops.shape_aware_roi_align`
validates its arguments first (in eager mode), and a RoI whose batch index is not an integer in
``0..B-1`` pools zeros here.
"""

import warnings
from types import ModuleType

import torch
from torch import Tensor

from . import gather
from .geometry import geometry_dtype, roi_geometry


def _geometry(rois: Tensor, input_shape: tuple[int, ...], dtype: torch.dtype, config: tuple) -> Tensor:
    """``roi_geometry`` for features of ``input_shape`` and ``dtype``; ``config = (pooled_height,
    pooled_width, spatial_scale, sampling_ratio, aligned)``."""
    pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned = config
    return roi_geometry(
        rois,
        input_shape[0],
        (pooled_height, pooled_width),
        spatial_scale,
        sampling_ratio,
        aligned,
        geometry_dtype(dtype),
    )


def _channels_last(shape: tuple[int, ...], like: Tensor, dtype: torch.dtype) -> Tensor:
    """An uninitialised ``Tensor[shape]`` (N, C, H, W) with channels-last strides, the kernels' layout."""
    n, c, h, w = shape
    return like.new_empty_strided((n, c, h, w), (c * h * w, 1, w * c, c), dtype=dtype)


@torch.library.custom_op("mrrcnn::shape_aware_roi_align", mutates_args=())
def shape_aware_roi_align_op(
    input: Tensor,
    rois: Tensor,
    masks: Tensor | None,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """``Tensor[K, C, pooled_height, pooled_width]``, channels-last: RoIAlign of ``input: Tensor[B, C, H,
    W]`` at ``rois: Tensor[K, 5]``, every sample weighted by ``masks: Tensor[K, Hp, Wp]`` (CPU kernel)."""
    config = (pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned)
    geometry = _geometry(rois, input.shape, input.dtype, config)
    return gather.forward(input, geometry, masks, (pooled_height, pooled_width), sampling_ratio)


@shape_aware_roi_align_op.register_kernel("cuda")
def _forward_cuda(input, rois, masks, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned):
    config = (pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned)
    geometry = _geometry(rois, input.shape, input.dtype, config)
    kernels = triton_kernels(input)
    if kernels is None:
        return _on_cuda_without_bfloat16(
            gather.forward, input, geometry, masks, (pooled_height, pooled_width), sampling_ratio
        )
    # The kernels read a tile of channels at a time: from NCHW maps that is one strided load per channel,
    # slower than copying the map to channels-last first (docs/benchmarks/ops_cuda.md).
    input = input.contiguous(memory_format=torch.channels_last)
    return kernels.forward(input, geometry, masks, (pooled_height, pooled_width), sampling_ratio)


@shape_aware_roi_align_op.register_fake
def _forward_fake(input, rois, masks, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned):
    return _channels_last((rois.shape[0], input.shape[1], pooled_height, pooled_width), input, input.dtype)


@torch.library.custom_op("mrrcnn::_shape_aware_roi_align_backward", mutates_args=())
def backward_op(
    grad: Tensor,
    input: Tensor | None,
    rois: Tensor,
    masks: Tensor | None,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    batch: int,
    channels: int,
    height: int,
    width: int,
    input_grad: bool,
    masks_grad: bool,
) -> tuple[Tensor, Tensor]:
    """The operator's gradients for its output gradient ``grad: Tensor[K, C, oh, ow]``: the features'
    ``Tensor[batch, channels, height, width]`` (channels-last, ``grad``'s dtype) where ``input_grad`` and
    the masks' ``Tensor[K, Hp, Wp]`` (their dtype; it reads ``input``) where ``masks_grad``, each an empty
    ``Tensor[0]`` where not asked for, as aten's ``convolution_backward`` takes an output mask (CPU)."""
    shape = (batch, channels, height, width)
    geometry = _geometry(rois, shape, grad.dtype, (*grad.shape[2:], spatial_scale, sampling_ratio, aligned))
    gradients = gather.backward(grad, input, geometry, masks, shape, sampling_ratio, input_grad, masks_grad)
    return _or_empty(gradients, grad)


@backward_op.register_kernel("cuda")
def _backward_cuda(
    grad, input, rois, masks, spatial_scale, sampling_ratio, aligned, batch, channels, height, width,
    input_grad, masks_grad,
):  # fmt: skip
    shape = (batch, channels, height, width)
    geometry = _geometry(rois, shape, grad.dtype, (*grad.shape[2:], spatial_scale, sampling_ratio, aligned))
    kernels = triton_kernels(grad)
    masks_grad = masks_grad and masks is not None
    # The kernels add with atomics; the gather sums in a fixed order, the deterministic route for the
    # features' gradient. For the masks' there is none: the gather's resizing backward alerts on CUDA too.
    if kernels is None or (torch.are_deterministic_algorithms_enabled() and not masks_grad):
        gradients = _on_cuda_without_bfloat16(
            gather.backward, grad, input, geometry, masks, shape, sampling_ratio, input_grad, masks_grad
        )
        return _or_empty(gradients, grad)
    if masks_grad:
        alert_not_deterministic("shape_aware_roi_align_backward (Triton kernel, atomic adds)")
        input = input.contiguous(memory_format=torch.channels_last)
    gradients = kernels.backward(grad, input, geometry, masks, shape, sampling_ratio, input_grad, masks_grad)
    return _or_empty(gradients, grad)


@backward_op.register_fake
def _backward_fake(
    grad, input, rois, masks, spatial_scale, sampling_ratio, aligned, batch, channels, height, width,
    input_grad, masks_grad,
):  # fmt: skip
    grad_input = _channels_last((batch, channels, height, width), grad, grad.dtype) if input_grad else None
    grad_masks = torch.empty_like(masks, memory_format=torch.contiguous_format) if masks_grad else None
    return _or_empty((grad_input, grad_masks), grad)


def _or_empty(gradients: tuple[Tensor | None, Tensor | None], like: Tensor) -> tuple[Tensor, Tensor]:
    """The gradients with an empty ``Tensor[0]`` for each not computed (an op cannot return None)."""
    return tuple(like.new_empty(0) if g is None else g for g in gradients)


def _setup_context(ctx, inputs, output) -> None:
    input, rois, masks, _, _, spatial_scale, sampling_ratio, aligned = inputs
    # The features are needed only for the masks' gradient.
    masks_grad = masks is not None and ctx.needs_input_grad[2]
    ctx.save_for_backward(input if masks_grad else None, rois, masks)
    ctx.config = (spatial_scale, sampling_ratio, aligned)
    ctx.input_shape = tuple(input.shape)


def _backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
    input, rois, masks = ctx.saved_tensors
    input_grad, masks_grad = ctx.needs_input_grad[0], masks is not None and ctx.needs_input_grad[2]
    grad_input, grad_masks = backward_op(
        grad, input, rois, masks, *ctx.config, *ctx.input_shape, input_grad, masks_grad
    )
    return (
        grad_input if input_grad else None,
        None,
        grad_masks if masks_grad else None,
        None,
        None,
        None,
        None,
        None,
    )


shape_aware_roi_align_op.register_autograd(_backward, setup_context=_setup_context)

torch.library.define(
    "mrrcnn::roi_align",
    "(Tensor input, Tensor rois, SymInt pooled_height, SymInt pooled_width, float spatial_scale, "
    "int sampling_ratio, bool aligned) -> Tensor",
)


@torch.library.impl("mrrcnn::roi_align", "CompositeImplicitAutograd")
def _roi_align(input, rois, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned):
    return shape_aware_roi_align_op(
        input, rois, None, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned
    )


_fallback_warned = False


def triton_kernels(input: Tensor) -> ModuleType | None:
    """:mod:`mrrcnn.ops.triton_kernels` if it can pool from CUDA ``input``, else None with one warning per
    process naming the reason."""
    global _fallback_warned
    try:
        from . import triton_kernels as kernels
    except ImportError as error:
        reason = f"Triton cannot be imported ({error})"
    else:
        reason = kernels.unusable_reason(input)
        if reason is None:
            return kernels
    if not _fallback_warned:
        _fallback_warned = True
        warnings.warn(
            f"shape_aware_roi_align: {reason}; using the slower embedding_bag path on {input.device.type}",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


def _on_cuda_without_bfloat16(kernel, first: Tensor, *args):
    """``kernel(first, *args)``, in float32 where ``first`` is bfloat16: ``embedding_bag`` with per-sample
    weights fails for bfloat16 on CUDA."""
    if first.dtype != torch.bfloat16:
        return kernel(first, *args)
    args = [a.float() if isinstance(a, Tensor) and a.dtype == torch.bfloat16 else a for a in args]
    return kernel(first.float(), *args).to(torch.bfloat16)


def alert_not_deterministic(caller: str) -> None:
    """What PyTorch's own nondeterministic CUDA kernels do under ``torch.use_deterministic_algorithms``:
    raise ``RuntimeError`` naming the operation, or warn with ``warn_only=True``."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = f"{caller} does not have a deterministic implementation, but you set "
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message + "'torch.use_deterministic_algorithms(True, warn_only=True)'.", stacklevel=3)
    else:
        raise RuntimeError(
            message + "'torch.use_deterministic_algorithms(True)'. Turn it off around this operation, use "
            "'warn_only=True', or leave the masks without gradient: the features' gradient then takes a "
            "deterministic route."
        )
