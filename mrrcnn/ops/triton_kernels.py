"""Fused Triton kernels for Shape-aware RoIAlign on the GPU: forward, and backward to features and masks.

Same semantics as :func:`mrrcnn.ops.shape_aware_roi_align` (torchvision's RoIAlign sampling and border
rule, the mask read bilinearly on the RoI's sample grid with ``align_corners=False``, eq. 4's mean over all
``N`` samples), computed without materialising any per-sample table:

- One program per (RoI, block of ``BLOCK_BINS`` output bins) x block of ``BLOCK_C`` channels. The program
  reads its RoI's row of the sampling geometry (:func:`mrrcnn.ops.geometry.roi_geometry`: corner, bin
  size, sampling grid, validity of its batch index), so RoIs of different grids share one launch and
  nothing is read back to the host.
- Each sample's bilinear taps, weights and mask probability are computed once per bin and reused by the
  whole channel block, which gathers ``[bins, channels]`` tiles: contiguous rows of channels for
  channels-last features (coalesced, vectorised loads), rows of bins for any other layout (read through
  its strides, never copied).
- Arithmetic is in float32 (float64 for float64 input); the output is written in the input's dtype.
- Backward recomputes the samples. The feature gradient is scattered with atomic adds into a float32
  (float64) buffer; the mask gradient ``sum_c grad_out * f_c(sample) / N`` is reduced over the channel
  block and scattered onto the four mask pixels of each sample with atomic adds. Atomics make the
  backward nondeterministic in the last bits.

The launchers (:func:`forward`, :func:`backward`) take validated arguments
and do no autograd: they are the CUDA kernels of the registered operator (:mod:`mrrcnn.ops.library`).
They run on CPU tensors too, under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests
check them without a GPU.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["backward", "forward", "unusable_reason"]

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
def _roi(geometry_ptr, k, SAMPLING: tl.constexpr, DTYPE: tl.constexpr):
    """RoI ``k``'s row of the sampling geometry: its image, first sample corner, bin size and sampling grid,
    and ``norm``, the 1/N of eq. 4 (0 for an invalid RoI, which pools zeros).

    A fixed grid stays a compile-time constant, so that its loops can be unrolled. The columns are those of
    :func:`mrrcnn.ops.geometry.roi_geometry`.
    """
    row = geometry_ptr + k.to(tl.int64) * 8
    image = tl.load(row).to(tl.int64)
    y1 = tl.load(row + 1).to(DTYPE)
    x1 = tl.load(row + 2).to(DTYPE)
    bin_h = tl.load(row + 3).to(DTYPE)
    bin_w = tl.load(row + 4).to(DTYPE)
    valid = tl.load(row + 7).to(DTYPE)
    if SAMPLING > 0:
        gh = SAMPLING
        gw = SAMPLING
        norm = valid / (SAMPLING * SAMPLING)
    else:
        gh = tl.load(row + 5).to(tl.int32)
        gw = tl.load(row + 6).to(tl.int32)
        norm = valid / tl.maximum(gh * gw, 1)
    return image, y1, x1, bin_h, bin_w, gh, gw, norm


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
    input_ptr, geometry_ptr, masks_ptr, out_ptr,
    channels, height, width, s_in_b, s_in_c, s_in_h, s_in_w,
    mask_h, mask_w, s_m_k, s_m_h, s_m_w,
    s_out_k, s_out_c, s_out_h, s_out_w,
    OH: tl.constexpr, OW: tl.constexpr, SAMPLING: tl.constexpr,
    HAS_MASK: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_BINS: tl.constexpr, BLOCK_C: tl.constexpr, DTYPE: tl.constexpr, UNROLL: tl.constexpr,
):  # fmt: skip
    bin_blocks: tl.constexpr = (OH * OW + BLOCK_BINS - 1) // BLOCK_BINS
    k = tl.program_id(0) // bin_blocks
    bins, chans = _tile(tl.program_id(0) % bin_blocks, tl.program_id(1), BLOCK_BINS, BLOCK_C, CHANNELS_LAST)
    ph = bins // OW
    pw = bins % OW
    ok = (bins < OH * OW) & (chans < channels)
    image, y1, x1, bin_h, bin_w, gh, gw, norm = _roi(geometry_ptr, k, SAMPLING, DTYPE)
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
    grad_out_ptr, input_ptr, geometry_ptr, masks_ptr, grad_input_ptr, grad_masks_ptr,
    channels, height, width, s_in_b, s_in_c, s_in_h, s_in_w,
    s_gi_b, s_gi_c, s_gi_h, s_gi_w,
    mask_h, mask_w, s_m_k, s_m_h, s_m_w,
    s_go_k, s_go_c, s_go_h, s_go_w,
    OH: tl.constexpr, OW: tl.constexpr, SAMPLING: tl.constexpr,
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
    image, y1, x1, bin_h, bin_w, gh, gw, norm = _roi(geometry_ptr, k, SAMPLING, DTYPE)
    go_offset = k.to(tl.int64) * s_go_k + _offset(ph, pw, chans, s_go_h, s_go_w, s_go_c, GRAD_UNIT_C)
    # The 1/N of eq. 4 folded into the incoming gradient once; 0 for an invalid RoI: no atomics then.
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


def _device_of(input: Tensor) -> contextlib.AbstractContextManager:
    """Launch on ``input``'s GPU, not the current one (nothing to do for the interpreter's CPU tensors)."""
    return torch.cuda.device(input.device) if input.device.type == "cuda" else contextlib.nullcontext()


def _map_arguments(input: Tensor) -> list[int]:
    """``channels, height, width`` and the four strides of ``input``."""
    return [*input.shape[1:], *input.stride()]


def _mask_arguments(masks: Tensor | None, stand_in: Tensor) -> tuple[Tensor, list[int]]:
    """The masks' tensor and ``Hp, Wp, s_k, s_h, s_w``; without masks, ``stand_in`` (never read) and ones."""
    if masks is None:
        return stand_in, [1, 1, 0, 0, 0]
    return masks, [*masks.shape[1:], *masks.stride()]


def _grid(k: int, oh: int, ow: int, channels: int, tile: int) -> tuple[tuple[int, int], int, int]:
    """The launch grid, ``BLOCK_BINS`` and ``BLOCK_C`` for ``k`` RoIs of ``oh x ow`` bins."""
    block_bins, block_c = _launch_config(oh * ow, channels, tile)
    return (k * triton.cdiv(oh * ow, block_bins), triton.cdiv(channels, block_c)), block_bins, block_c


def forward(
    input: Tensor, geometry: Tensor, masks: Tensor | None, output_size: tuple[int, int], sampling_ratio: int
) -> Tensor:
    """Shape-aware RoIAlign of ``input: Tensor[B, C, H, W]`` (any strides) at ``geometry: Tensor[K, 8]`` in
    :func:`mrrcnn.ops.geometry.geometry_dtype` of the input, weighted by ``masks: Tensor[K, Hp, Wp]`` (None:
    plain RoIAlign). Returns ``Tensor[K, C, oh, ow]`` in ``input``'s dtype, channels-last when ``input`` is
    (its channel stride is 1), contiguous otherwise. No host synchronisation."""
    (oh, ow), k, channels = output_size, geometry.shape[0], input.shape[1]
    channels_last = _channels_last(input)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(
        (k, channels, oh, ow), dtype=input.dtype, device=input.device, memory_format=memory_format
    )
    if out.numel() == 0:
        return out
    masks = None if masks is None else masks.to(geometry.dtype)
    grid, block_bins, block_c = _grid(k, oh, ow, channels, _FORWARD_TILE)
    unroll = _UNROLLED_SAMPLING if channels_last and sampling_ratio == _UNROLLED_SAMPLING else 1
    mask_tensor, mask_sizes = _mask_arguments(masks, geometry)
    with _device_of(input):
        _forward_kernel[grid](
            input, geometry, mask_tensor, out,
            *_map_arguments(input), *mask_sizes, *out.stride(),
            OH=oh, OW=ow, SAMPLING=max(sampling_ratio, 0), HAS_MASK=masks is not None,
            CHANNELS_LAST=channels_last, BLOCK_BINS=block_bins, BLOCK_C=block_c,
            DTYPE=_tl_dtype(geometry), UNROLL=unroll, num_warps=4,
        )  # fmt: skip
    return out


def backward(
    grad: Tensor,
    input: Tensor | None,
    geometry: Tensor,
    masks: Tensor | None,
    input_shape: tuple[int, int, int, int],
    sampling_ratio: int,
    input_grad: bool,
    masks_grad: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """The gradients of :func:`forward` for ``grad: Tensor[K, C, oh, ow]`` (any strides), in one launch:
    for the features where ``input_grad`` (``Tensor[input_shape]``, channels-last like a channels-last
    ``input``, in ``grad``'s dtype) and for ``masks`` where ``masks_grad`` (their dtype; it reads
    ``input``), None where not asked for. Both are summed with atomic adds in float32 (float64)."""
    masks_grad = masks_grad and masks is not None
    masks_dtype = None if masks is None else masks.dtype
    grad_input = grad_masks = None
    if input_grad:
        grad_input = torch.zeros(input_shape, dtype=geometry.dtype, device=grad.device)
        if input is None or _channels_last(input):
            grad_input = grad_input.contiguous(memory_format=torch.channels_last)
    if masks_grad:
        grad_masks = torch.zeros(masks.shape, dtype=geometry.dtype, device=masks.device)
        masks = masks.to(geometry.dtype)
    # Where the features are not read (their own gradient only), the buffer stands in for them.
    features = input if masks_grad else grad_input
    if features is not None:
        _launch_backward(grad, features, geometry, masks, sampling_ratio, grad_input, grad_masks)
    return (
        None if grad_input is None else grad_input.to(grad.dtype),
        None if grad_masks is None else grad_masks.to(masks_dtype),
    )


def _launch_backward(
    grad: Tensor,
    input: Tensor,
    geometry: Tensor,
    masks: Tensor | None,
    sampling_ratio: int,
    grad_input: Tensor | None,
    grad_masks: Tensor | None,
) -> None:
    """Add the gradients into ``grad_input`` (features' layout, channels-last when ``input`` is) and
    ``grad_masks`` (contiguous), whichever is given; ``input`` is read only for the masks' gradient."""
    k, channels, oh, ow = grad.shape
    if grad.numel() == 0:
        return
    grid, block_bins, block_c = _grid(k, oh, ow, channels, _BACKWARD_TILE)
    mask_tensor, mask_sizes = _mask_arguments(masks, geometry)
    channels_last = _channels_last(input)
    # Unused pointers still need a tensor: the input stands in, never written.
    gi = input if grad_input is None else grad_input
    with _device_of(input):
        _backward_kernel[grid](
            grad, input, geometry, mask_tensor, gi, input if grad_masks is None else grad_masks,
            *_map_arguments(input), *gi.stride(), *mask_sizes, *grad.stride(),
            OH=oh, OW=ow, SAMPLING=max(sampling_ratio, 0),
            HAS_MASK=masks is not None, FEATURE_GRAD=grad_input is not None, MASK_GRAD=grad_masks is not None,
            CHANNELS_LAST=channels_last, GRAD_UNIT_C=channels_last and grad.stride(1) == 1,
            BLOCK_BINS=block_bins, BLOCK_C=block_c, DTYPE=_tl_dtype(geometry), num_warps=4,
        )  # fmt: skip


def _tl_dtype(geometry: Tensor) -> tl.dtype:
    return tl.float64 if geometry.dtype == torch.float64 else tl.float32


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
