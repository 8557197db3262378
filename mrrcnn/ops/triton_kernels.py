"""Fused Triton kernels for Shape-aware RoIAlign on the GPU: forward, and backward to features and masks.

Same semantics as :func:`mrrcnn.ops.shape_aware_roi_align` (torchvision's RoIAlign sampling and border
rule, the mask read bilinearly on the RoI's sample grid with ``align_corners=False``, eq. 4's mean over all
``N`` samples), computed without materialising any per-sample table:

- One program per (RoI, block of ``BLOCK_BINS`` output bins) x block of ``BLOCK_C`` channels. The RoI's
  geometry, its sampling grid ``(gh, gw)`` (fixed, or ``ceil(roi / bins)`` per RoI) and the validity of its
  batch index are worked out in the program: RoIs of different grids share one launch, and nothing is
  read back to the host.
- Each sample's bilinear taps, weights and mask probability are computed once per bin and reused by the
  whole channel block, which gathers ``[bins, channels]`` tiles: contiguous rows of channels for
  channels-last features (coalesced, vectorised loads), rows of bins for any other layout (read through
  its strides, never copied).
- Arithmetic is in float32 (float64 for float64 input); the output is written in the input's dtype.
- Backward recomputes the samples. The feature gradient is scattered with atomic adds into a float32
  (float64) buffer; the mask gradient ``sum_c grad_out * f_c(sample) / N`` is reduced over the channel
  block and scattered onto the four mask pixels of each sample with atomic adds. Atomics make the
  backward nondeterministic in the last bits; it alerts under ``torch.use_deterministic_algorithms``.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import triton
import triton.language as tl
from torch import Tensor

from .shape_aware_roi_align import BoxesLike, validate_arguments

__all__ = ["shape_aware_roi_align_rois", "shape_aware_roi_align_triton"]

# Elements of a program's [bins, channels] tile (see _launch_config); untuned on hardware so far.
_FORWARD_TILE = 1024
_BACKWARD_TILE = 512
# The forward's sample loops are unrolled for a fixed sampling ratio of 2 on channels-last features, so
# that a bin's 16 gathers are in flight at once (94 instead of 72 registers). Not for other layouts,
# whose unvectorised gathers would then spill, nor in the backward, whose atomics need many registers.
_UNROLLED_SAMPLING = 2


@triton.jit
def _tile(bin_block, c_block, BLOCK_BINS: tl.constexpr, BLOCK_C: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """Bin and channel indices of the program's tile, shaped to broadcast to ``[bins, channels]`` when the
    channels are contiguous in memory (the fast axis of the tile), else to ``[channels, bins]``."""
    bins = bin_block * BLOCK_BINS + tl.arange(0, BLOCK_BINS)
    chans = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    if CHANNELS_LAST:
        bins2 = bins[:, None]
        chans2 = chans[None, :]
    else:
        bins2 = bins[None, :]
        chans2 = chans[:, None]
    return bins2, chans2


@triton.jit
def _roi(
    rois_ptr,
    k,
    batch,
    spatial_scale,
    OH: tl.constexpr,
    OW: tl.constexpr,
    SAMPLING: tl.constexpr,
    ALIGNED: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """RoI ``k``'s image, first sample corner, bin size and sampling grid, in torchvision's operation order,
    and ``norm``: the 1/N of eq. 4, or 0 when the batch index is not an integer in ``0..batch-1``.

    A fixed grid stays a compile-time constant, so that its loops can be unrolled. A non-finite adaptive
    grid is empty, as on the CPU path.
    """
    row = rois_ptr + k * 5
    index = tl.load(row).to(DTYPE)
    x1 = tl.load(row + 1).to(DTYPE) * spatial_scale
    y1 = tl.load(row + 2).to(DTYPE) * spatial_scale
    x2 = tl.load(row + 3).to(DTYPE) * spatial_scale
    y2 = tl.load(row + 4).to(DTYPE) * spatial_scale
    if ALIGNED:
        x1 -= 0.5
        y1 -= 0.5
        x2 -= 0.5
        y2 -= 0.5
    roi_w = x2 - x1
    roi_h = y2 - y1
    if not ALIGNED:
        roi_w = tl.maximum(roi_w, 1.0)
        roi_h = tl.maximum(roi_h, 1.0)
    valid = (index >= 0) & (index < batch) & (index == tl.floor(index))
    if SAMPLING > 0:
        gh = SAMPLING
        gw = SAMPLING
        norm = valid.to(DTYPE) / (SAMPLING * SAMPLING)
    else:
        gh = tl.where(valid, _adaptive_grid(roi_h / OH), 0)
        gw = tl.where(valid, _adaptive_grid(roi_w / OW), 0)
        norm = valid.to(DTYPE) / tl.maximum(gh * gw, 1)
    image = tl.where(valid, index, 0).to(tl.int64)
    return image, y1, x1, roi_h / OH, roi_w / OW, gh, gw, norm


@triton.jit
def _adaptive_grid(bin_size):
    """``ceil(bin_size)`` samples, 0 for NaN, infinite or non-positive sizes (no undefined conversion)."""
    grid = tl.ceil(bin_size)
    return tl.where((grid > 0) & (grid < 2147483647.0), grid, 0.0).to(tl.int32)


@triton.jit
def _feature_taps(start, bin_size, bins, i, grid, size):
    """Low/high pixel and weight of sample ``i`` of ``grid`` along one axis of each bin, with the border rule.

    A sample further than one pixel outside the map gets zero weights; within a pixel, the border pixel.
    """
    coord = start + bins.to(start.dtype) * bin_size + (i + 0.5) * bin_size / grid
    inside = (coord >= -1.0) & (coord <= size)
    coord = tl.where(inside, tl.maximum(coord, 0.0), 0.0)
    low = tl.minimum(coord.to(tl.int32), size - 1)
    frac = tl.where(inside & (low < size - 1), coord - low.to(coord.dtype), 0.0)
    high = tl.minimum(low + 1, size - 1)
    return low, high, tl.where(inside, 1.0 - frac, 0.0), frac


@triton.jit
def _mask_taps(index, scale, size):
    """Low/high mask pixel and weight for sample ``index`` of the RoI's sample grid along one axis: bilinear
    resizing with ``align_corners=False`` (source ``scale * (index + 0.5) - 0.5``, clamped to the border)."""
    src = tl.maximum(scale * (index.to(scale.dtype) + 0.5) - 0.5, 0.0)
    low = tl.minimum(src.to(tl.int32), size - 1)
    high = tl.minimum(low + 1, size - 1)
    lam = src - low.to(src.dtype)
    return low, high, 1.0 - lam, lam


@triton.jit
def _offset(y, x, chans, s_h, s_w, s_c, UNIT_C: tl.constexpr):
    if UNIT_C:
        # A unit channel stride known at compile time lets the compiler vectorise the accesses.
        return y * s_h + x * s_w + chans
    else:
        return y * s_h + x * s_w + chans * s_c


@triton.jit
def _mask_scales(
    mask_h, mask_w, gh, gw, OH: tl.constexpr, OW: tl.constexpr, SAMPLING: tl.constexpr, DTYPE: tl.constexpr
):
    """Mask pixels per sample along each axis, as ``F.interpolate`` computes them (``in / out``)."""
    # tl.cast, not .to: Triton passes an int argument equal to 1 as a constant, which has no .to.
    mask_h = tl.cast(mask_h, DTYPE)
    mask_w = tl.cast(mask_w, DTYPE)
    if SAMPLING > 0:
        scale_my = mask_h / (OH * SAMPLING)
        scale_mx = mask_w / (OW * SAMPLING)
    else:
        # An empty grid samples nothing: any finite scale does.
        scale_my = mask_h / (OH * tl.maximum(gh, 1))
        scale_mx = mask_w / (OW * tl.maximum(gw, 1))
    return scale_my, scale_mx


@triton.jit
def _bilinear(ptr, ty, tx, chans, strides, ok, UNIT_C: tl.constexpr, DTYPE: tl.constexpr):
    """Eq. 1 at one sample of each bin: the four taps ``ty x tx`` (pixels and weights along y and x, from
    :func:`_feature_taps` or :func:`_mask_taps`) read through ``strides = (s_h, s_w, s_c)`` and summed."""
    y_lo, y_hi, wy_lo, wy_hi = ty
    x_lo, x_hi, wx_lo, wx_hi = tx
    s_h, s_w, s_c = strides
    ll = tl.load(ptr + _offset(y_lo, x_lo, chans, s_h, s_w, s_c, UNIT_C), mask=ok, other=0.0).to(DTYPE)
    lh = tl.load(ptr + _offset(y_lo, x_hi, chans, s_h, s_w, s_c, UNIT_C), mask=ok, other=0.0).to(DTYPE)
    hl = tl.load(ptr + _offset(y_hi, x_lo, chans, s_h, s_w, s_c, UNIT_C), mask=ok, other=0.0).to(DTYPE)
    hh = tl.load(ptr + _offset(y_hi, x_hi, chans, s_h, s_w, s_c, UNIT_C), mask=ok, other=0.0).to(DTYPE)
    return wy_lo * (wx_lo * ll + wx_hi * lh) + wy_hi * (wx_lo * hl + wx_hi * hh)


@triton.jit
def _splat(ptr, ty, tx, chans, strides, value, ok, UNIT_C: tl.constexpr):
    """The transpose of :func:`_bilinear`: atomically add ``value`` times each tap's weight to its pixel
    (zero contributions skipped)."""
    y_lo, y_hi, wy_lo, wy_hi = ty
    x_lo, x_hi, wx_lo, wx_hi = tx
    s_h, s_w, s_c = strides
    _atomic_add(ptr + _offset(y_lo, x_lo, chans, s_h, s_w, s_c, UNIT_C), value * (wy_lo * wx_lo), ok)
    _atomic_add(ptr + _offset(y_lo, x_hi, chans, s_h, s_w, s_c, UNIT_C), value * (wy_lo * wx_hi), ok)
    _atomic_add(ptr + _offset(y_hi, x_lo, chans, s_h, s_w, s_c, UNIT_C), value * (wy_hi * wx_lo), ok)
    _atomic_add(ptr + _offset(y_hi, x_hi, chans, s_h, s_w, s_c, UNIT_C), value * (wy_hi * wx_hi), ok)


@triton.jit
def _atomic_add(ptr, value, ok):
    tl.atomic_add(ptr, value, mask=ok & (value != 0), sem="relaxed")


@triton.jit
def _forward_kernel(
    input_ptr, rois_ptr, masks_ptr, out_ptr,
    batch, channels, height, width, s_in_b, s_in_c, s_in_h, s_in_w,
    mask_h, mask_w, s_m_k, s_m_h, s_m_w,
    s_out_k, s_out_c, s_out_h, s_out_w,
    spatial_scale,
    OH: tl.constexpr, OW: tl.constexpr, SAMPLING: tl.constexpr, ALIGNED: tl.constexpr,
    HAS_MASK: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_BINS: tl.constexpr, BLOCK_C: tl.constexpr, DTYPE: tl.constexpr, UNROLL: tl.constexpr,
):  # fmt: skip
    bin_blocks: tl.constexpr = (OH * OW + BLOCK_BINS - 1) // BLOCK_BINS
    k = tl.program_id(0) // bin_blocks
    bins, chans = _tile(tl.program_id(0) % bin_blocks, tl.program_id(1), BLOCK_BINS, BLOCK_C, CHANNELS_LAST)
    ph = bins // OW
    pw = bins % OW
    ok = (bins < OH * OW) & (chans < channels)
    image, y1, x1, bin_h, bin_w, gh, gw, norm = _roi(
        rois_ptr, k, batch, spatial_scale, OH, OW, SAMPLING, ALIGNED, DTYPE
    )
    features = input_ptr + image * s_in_b
    in_strides = (s_in_h, s_in_w, s_in_c)
    mask = masks_ptr + k.to(tl.int64) * s_m_k
    mask_strides = (s_m_h, s_m_w, 0)
    scale_my, scale_mx = _mask_scales(mask_h, mask_w, gh, gw, OH, OW, SAMPLING, DTYPE)
    bin_ok = bins < OH * OW

    acc = tl.zeros([BLOCK_BINS, BLOCK_C] if CHANNELS_LAST else [BLOCK_C, BLOCK_BINS], DTYPE)
    for iy in tl.range(gh, loop_unroll_factor=UNROLL):
        ty = _feature_taps(y1, bin_h, ph, iy, gh, height)
        mty = _mask_taps(ph * gh + iy, scale_my, mask_h)
        for ix in tl.range(gw, loop_unroll_factor=UNROLL):
            tx = _feature_taps(x1, bin_w, pw, ix, gw, width)
            value = _bilinear(features, ty, tx, chans, in_strides, ok, CHANNELS_LAST, DTYPE)
            if HAS_MASK:
                # Eqs. 3 and 5: one probability per bin, shared by the channel block.
                mtx = _mask_taps(pw * gw + ix, scale_mx, mask_w)
                value *= _bilinear(mask, mty, mtx, 0, mask_strides, bin_ok, False, DTYPE)
            acc += value
    out = acc * norm
    # The output is allocated channels-last exactly when the input is.
    out_offset = _offset(ph, pw, chans, s_out_h, s_out_w, s_out_c, CHANNELS_LAST)
    tl.store(out_ptr + k.to(tl.int64) * s_out_k + out_offset, out.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _backward_kernel(
    grad_out_ptr, input_ptr, rois_ptr, masks_ptr, grad_input_ptr, grad_masks_ptr,
    batch, channels, height, width, s_in_b, s_in_c, s_in_h, s_in_w,
    s_gi_b, s_gi_c, s_gi_h, s_gi_w,
    mask_h, mask_w, s_m_k, s_m_h, s_m_w,
    s_go_k, s_go_c, s_go_h, s_go_w,
    spatial_scale,
    OH: tl.constexpr, OW: tl.constexpr, SAMPLING: tl.constexpr, ALIGNED: tl.constexpr,
    HAS_MASK: tl.constexpr, FEATURE_GRAD: tl.constexpr, MASK_GRAD: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    GRAD_UNIT_C: tl.constexpr,
    BLOCK_BINS: tl.constexpr, BLOCK_C: tl.constexpr, DTYPE: tl.constexpr,
):  # fmt: skip
    bin_blocks: tl.constexpr = (OH * OW + BLOCK_BINS - 1) // BLOCK_BINS
    channel_axis: tl.constexpr = 1 if CHANNELS_LAST else 0
    k = tl.program_id(0) // bin_blocks
    bins, chans = _tile(tl.program_id(0) % bin_blocks, tl.program_id(1), BLOCK_BINS, BLOCK_C, CHANNELS_LAST)
    ph = bins // OW
    pw = bins % OW
    bin_ok = bins < OH * OW
    ok = bin_ok & (chans < channels)
    image, y1, x1, bin_h, bin_w, gh, gw, norm = _roi(
        rois_ptr, k, batch, spatial_scale, OH, OW, SAMPLING, ALIGNED, DTYPE
    )
    go_offset = k.to(tl.int64) * s_go_k + _offset(ph, pw, chans, s_go_h, s_go_w, s_go_c, GRAD_UNIT_C)
    # The 1/N of eq. 4 folded into the incoming gradient once; 0 for a bad batch index: no atomics then.
    grad = tl.load(grad_out_ptr + go_offset, mask=ok, other=0.0).to(DTYPE) * norm
    features = input_ptr + image * s_in_b
    in_strides = (s_in_h, s_in_w, s_in_c)
    grad_features = grad_input_ptr + image * s_gi_b
    gi_strides = (s_gi_h, s_gi_w, s_gi_c)
    mask = masks_ptr + k.to(tl.int64) * s_m_k
    mask_strides = (s_m_h, s_m_w, 0)
    grad_mask = grad_masks_ptr + k.to(tl.int64) * mask_h * mask_w
    grad_mask_strides = (mask_w, 1, 0)
    scale_my, scale_mx = _mask_scales(mask_h, mask_w, gh, gw, OH, OW, SAMPLING, DTYPE)

    for iy in range(gh):
        ty = _feature_taps(y1, bin_h, ph, iy, gh, height)
        mty = _mask_taps(ph * gh + iy, scale_my, mask_h)
        for ix in range(gw):
            tx = _feature_taps(x1, bin_w, pw, ix, gw, width)
            mtx = _mask_taps(pw * gw + ix, scale_mx, mask_w)
            if FEATURE_GRAD:
                g = grad
                if HAS_MASK:
                    g = g * _bilinear(mask, mty, mtx, 0, mask_strides, bin_ok, False, DTYPE)
                _splat(grad_features, ty, tx, chans, gi_strides, g, ok, CHANNELS_LAST)
            if MASK_GRAD:
                value = _bilinear(features, ty, tx, chans, in_strides, ok, CHANNELS_LAST, DTYPE)
                # d out / d p(sample), this channel block's share: summed across blocks by the atomics.
                grad_p = tl.sum(grad * value, axis=channel_axis, keep_dims=True)
                _splat(grad_mask, mty, mtx, 0, grad_mask_strides, grad_p, bin_ok, False)


def _launch_config(bins: int, channels: int, tile: int) -> tuple[int, int]:
    """``(BLOCK_BINS, BLOCK_C)``: the power-of-two bin block that pads ``bins`` least (the larger on a tie),
    and a channel block (16 to 128) making tiles of about ``tile`` elements.

    With 4 warps, tiles of 1024 keep the forward at 72-94 registers a thread; the backward's atomics each
    need their own 64-bit address, so it takes tiles of 512 to stay at 64-128 (ptxas for sm_90).
    """
    candidates = [b for b in (4, 8, 16) if b < 2 * bins] or [4]
    block_bins = min(candidates, key=lambda b: (-(-bins // b) * b, -b))
    block_c = min(max(16, tile // block_bins), 128, max(16, triton.next_power_of_2(channels)))
    return block_bins, block_c


def _channels_last(input: Tensor) -> bool:
    return input.shape[1] > 1 and input.stride(1) == 1


def _compute_dtype(input: Tensor) -> tuple[torch.dtype, tl.dtype]:
    return (torch.float64, tl.float64) if input.dtype == torch.float64 else (torch.float32, tl.float32)


def _device_of(input: Tensor) -> contextlib.AbstractContextManager:
    """Launch on ``input``'s GPU, not the current one (nothing to do for the interpreter's CPU tensors)."""
    return torch.cuda.device(input.device) if input.device.type == "cuda" else contextlib.nullcontext()


def _map_arguments(input: Tensor) -> list[int]:
    """``batch, channels, height, width`` and the four strides of ``input``."""
    return [*input.shape, *input.stride()]


def _mask_arguments(masks: Tensor | None, stand_in: Tensor) -> tuple[Tensor, list[int]]:
    """The masks' tensor and ``Hp, Wp, s_k, s_h, s_w``; without masks, ``stand_in`` (never read) and ones."""
    if masks is None:
        return stand_in, [1, 1, 0, 0, 0]
    return masks, [*masks.shape[1:], *masks.stride()]


class _ShapeAwareRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        input: Tensor,
        rois: Tensor,
        masks: Tensor | None,
        output_size: tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
    ) -> Tensor:
        oh, ow = output_size
        k, channels = rois.shape[0], input.shape[1]
        channels_last = _channels_last(input)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(
            (k, channels, oh, ow), dtype=input.dtype, device=input.device, memory_format=memory_format
        )
        ctx.save_for_backward(input, rois, masks)
        ctx.config = (output_size, spatial_scale, sampling_ratio, aligned)
        if out.numel() == 0:
            return out
        block_bins, block_c = _launch_config(oh * ow, channels, _FORWARD_TILE)
        unroll = _UNROLLED_SAMPLING if channels_last and sampling_ratio == _UNROLLED_SAMPLING else 1
        grid = (k * triton.cdiv(oh * ow, block_bins), triton.cdiv(channels, block_c))
        mask_tensor, mask_sizes = _mask_arguments(masks, rois)
        with _device_of(input):
            _forward_kernel[grid](
                input, rois, mask_tensor, out,
                *_map_arguments(input), *mask_sizes, *out.stride(), spatial_scale,
                OH=oh, OW=ow, SAMPLING=max(sampling_ratio, 0), ALIGNED=aligned, HAS_MASK=masks is not None,
                CHANNELS_LAST=channels_last, BLOCK_BINS=block_bins, BLOCK_C=block_c,
                DTYPE=_compute_dtype(input)[1], UNROLL=unroll, num_warps=4,
            )  # fmt: skip
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        input, rois, masks = ctx.saved_tensors
        (oh, ow), spatial_scale, sampling_ratio, aligned = ctx.config
        feature_grad, mask_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        _alert_not_deterministic("shape_aware_roi_align_backward (Triton kernel, atomic adds)")
        dtype, tl_dtype = _compute_dtype(input)
        channels_last = _channels_last(input)
        # Channels-last like the input whenever the kernel writes it with unit channel stride.
        layout = torch.channels_last if channels_last else torch.preserve_format
        grad_input = torch.zeros_like(input, dtype=dtype, memory_format=layout) if feature_grad else None
        grad_masks = torch.zeros(masks.shape, dtype=dtype, device=masks.device) if mask_grad else None
        k, channels = rois.shape[0], input.shape[1]
        if grad_out.numel() and (feature_grad or mask_grad):
            block_bins, block_c = _launch_config(oh * ow, channels, _BACKWARD_TILE)
            grid = (k * triton.cdiv(oh * ow, block_bins), triton.cdiv(channels, block_c))
            mask_tensor, mask_sizes = _mask_arguments(masks, rois)
            # Unused pointers still need a tensor: the input stands in, never written.
            gi = grad_input if feature_grad else input
            with _device_of(input):
                _backward_kernel[grid](
                    grad_out, input, rois, mask_tensor, gi, grad_masks if mask_grad else input,
                    *_map_arguments(input), *gi.stride(), *mask_sizes, *grad_out.stride(), spatial_scale,
                    OH=oh, OW=ow, SAMPLING=max(sampling_ratio, 0), ALIGNED=aligned,
                    HAS_MASK=masks is not None, FEATURE_GRAD=feature_grad, MASK_GRAD=mask_grad,
                    CHANNELS_LAST=channels_last, GRAD_UNIT_C=channels_last and grad_out.stride(1) == 1,
                    BLOCK_BINS=block_bins, BLOCK_C=block_c, DTYPE=tl_dtype, num_warps=4,
                )  # fmt: skip
        if grad_input is not None and grad_input.dtype != input.dtype:
            grad_input = grad_input.to(input.dtype)
        return grad_input, None, grad_masks, None, None, None, None


def _alert_not_deterministic(caller: str) -> None:
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
            "'warn_only=True', or leave the masks without gradient so that CUDA takes the deterministic "
            "embedding_bag path."
        )


def unusable_reason(input: Tensor) -> str | None:
    """Why the kernels cannot pool from ``input`` (offsets within one image must fit in int32), or None."""
    _, channels, height, width = input.shape
    strides = input.stride()[1:]
    largest = sum((size - 1) * stride for size, stride in zip((channels, height, width), strides))
    if max(largest, channels * height * width) >= 2**31:
        return (
            f"one image of the features spans {max(largest, channels * height * width)} elements (over 2**31)"
        )
    return None


def shape_aware_roi_align_rois(
    input: Tensor,
    rois: Tensor,
    masks: Tensor | None,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """The kernels on already validated arguments: ``rois: Tensor[K, 5]``, ``masks: Tensor[K, Hp, Wp]`` or
    None, ``output_size: (oh, ow)``. Returns ``Tensor[K, C, oh, ow]`` in ``input``'s dtype, channels-last
    when ``input`` is (its channel stride is 1), contiguous otherwise. No host synchronisation."""
    dtype, _ = _compute_dtype(input)
    if masks is not None:
        masks = masks.to(dtype)
    if dtype == torch.float64 and spatial_scale != 1.0:
        # Triton passes Python floats as float32: scale the boxes here so float64 geometry stays float64.
        rois = rois.to(dtype)
        rois = torch.cat([rois[:, :1], rois[:, 1:] * spatial_scale], dim=1)
        spatial_scale = 1.0
    # A float, so that the kernels do not specialise on an int scale (an int 1 becomes a constant).
    return _ShapeAwareRoIAlign.apply(
        input, rois.contiguous(), masks, output_size, float(spatial_scale), sampling_ratio, aligned
    )


def shape_aware_roi_align_triton(
    input: Tensor,
    boxes: BoxesLike,
    masks: Tensor | None,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """:func:`mrrcnn.ops.shape_aware_roi_align` through the Triton kernels, whatever the device.

    Same arguments and result (``Tensor[K, C, oh, ow]`` in ``input``'s dtype, differentiable with respect to
    ``input`` and ``masks``, not ``boxes``), except the memory format: channels-last when ``input`` is,
    contiguous otherwise. CPU tensors run only under Triton's interpreter (``TRITON_INTERPRET=1``).
    On CUDA, boxes' batch indices are not checked on the host (that would synchronise): a RoI whose index
    is not an integer in ``0..B-1`` pools zeros. The backward uses atomic adds: under
    ``torch.use_deterministic_algorithms(True)`` it raises (or warns, with ``warn_only=True``).
    """
    rois, masks, size = validate_arguments(input, boxes, masks, output_size, spatial_scale)
    reason = unusable_reason(input)
    if reason is not None:
        raise ValueError(f"input: {reason}")
    return shape_aware_roi_align_rois(input, rois, masks, size, spatial_scale, sampling_ratio, aligned)
