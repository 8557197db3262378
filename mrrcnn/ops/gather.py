"""Shape-aware RoIAlign (paper eqs. 1-5) as one sparse, linear map of the features: the CPU kernels.

For fixed RoIs and masks the operator is linear in the features: every output bin is a weighted sum of the
(at most) ``4 * N`` feature pixels that its ``N`` bilinear samples touch, each weight being ``bilinear
coefficient * mask probability at the sample / N``. We build those (pixel, weight) tables by broadcasting
over the sampling geometry (:mod:`mrrcnn.ops.geometry`) and let ``embedding_bag`` do the arithmetic over
channels-last feature rows:

- forward: ``embedding_bag(pixels, features, bins, weights)``, a fused gather and weighted sum;
- feature gradient: the transposed map, the same entries sorted by pixel and summed by another
  ``embedding_bag`` over the rows of the output gradient: the sums of ``embedding_bag``'s own dense
  backward in its order, so equal to it bit for bit, faster, and deterministic;
- mask gradient: ``sum_c grad_c * f_c(tap)`` for every entry (``embedding_bag``'s per-sample-weight
  backward), times its bilinear coefficient, summed over each sample's four taps and carried back through
  the bilinear resizing that placed the mask on the sample grid; both gradients from one set of tables.

These run on any device; they are the CPU kernels of the registered operator (:mod:`mrrcnn.ops.library`)
and its CUDA fallback where the Triton kernels cannot run.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import BIN_H, BIN_W, GRID_H, GRID_W, IMAGE, VALID, X1, Y1


class _Group(NamedTuple):
    """The table entries of the RoIs ``members`` (None: all RoIs, in order), which share the sampling grid
    ``(gh, gw)``, laid out ``[n, oh, ow, gh, 2 (y tap), gw, 2 (x tap)]``: ``index`` into the ``[B * H * W,
    C]`` feature rows, ``taps`` the bilinear coefficients divided by ``N`` (0 for invalid RoIs), ``prob``
    the mask probability at each sample (``[n, oh, ow, gh, 1, gw, 1]``, None without masks)."""

    grid: tuple[int, int]
    members: Tensor | None
    index: Tensor
    taps: Tensor
    prob: Tensor | None

    @property
    def weight(self) -> Tensor:
        return self.taps if self.prob is None else self.taps * self.prob


def _axis_samples(start: Tensor, bin_size: Tensor, bins: int, grid: int, size: int) -> tuple[Tensor, Tensor]:
    """Bilinear taps of the sample coordinates along one axis, with torchvision's RoIAlign border rule.

    Args:
        start, bin_size: ``Tensor[K]``, the RoI's first coordinate and bin size in feature-map pixels.
        bins: output bins along the axis; grid: samples per bin along the axis; size: map size (pixels).

    Returns:
        ``index: LongTensor[K, bins, grid, 2]`` (low and high pixel) and ``weight: Tensor[K, bins, grid, 2]``.
        A sample further than one pixel outside the map gets zero weight; one within a pixel of the border
        reads the border pixel, as in torchvision.
    """
    step = torch.arange(bins, dtype=start.dtype, device=start.device).view(1, bins, 1)
    offset = torch.arange(grid, dtype=start.dtype, device=start.device).view(1, 1, grid) + 0.5
    # Same operation order as torchvision's kernel, so all-ones masks reproduce it to the last bit or so.
    bin_size = bin_size.view(-1, 1, 1)
    coord = start.view(-1, 1, 1) + step * bin_size + offset * bin_size / grid
    inside = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    # Clamped on both sides so that NaN or huge coordinates still give valid (zero-weight) indices.
    low = coord.long().clamp(0, size - 1)
    zero = torch.zeros_like(coord)
    frac = torch.where(inside & (low < size - 1), coord - low, zero)
    index = torch.stack([low, (low + 1).clamp(max=size - 1)], dim=-1)
    weight = torch.stack([torch.where(inside, 1.0 - frac, zero), frac], dim=-1)
    return index, weight


def _group(
    geometry: Tensor,
    masks: Tensor | None,
    map_size: tuple[int, int],
    output_size: tuple[int, int],
    grid: tuple[int, int],
    members: Tensor | None,
) -> _Group:
    """The :class:`_Group` of the RoIs ``members`` of ``geometry: Tensor[K, 8]`` (``masks: Tensor[K, Hp,
    Wp]`` or None), which all sample on ``grid``; no entries for an empty grid."""
    if members is not None:
        geometry = geometry[members]
        masks = None if masks is None else masks[members]
    height, width = map_size
    (oh, ow), (gh, gw), k = output_size, grid, geometry.shape[0]
    if gh * gw == 0:
        empty = geometry.new_zeros(0)
        return _Group(grid, members, empty.long(), empty, None)
    y_index, y_weight = _axis_samples(geometry[:, Y1], geometry[:, BIN_H], oh, gh, height)
    x_index, x_weight = _axis_samples(geometry[:, X1], geometry[:, BIN_W], ow, gw, width)
    rows = geometry[:, IMAGE].long().view(k, 1, 1, 1) * height + y_index
    index = rows.view(k, oh, 1, gh, 2, 1, 1) * width + x_index.view(k, 1, ow, 1, 1, gw, 2)
    # Validity (0 or 1) on the small factor: the same products as on the table, bit for bit.
    y_weight = y_weight * geometry[:, VALID].view(k, 1, 1, 1)
    taps = y_weight.view(k, oh, 1, gh, 2, 1, 1) * (x_weight.view(k, 1, ow, 1, 1, gw, 2) / (gh * gw))
    prob = None
    if masks is not None:
        # The sample at relative position (u, v) of its box reads the mask at (u * Wp - 0.5, v * Hp - 0.5):
        # exactly bilinear resizing of the mask to the (oh * gh, ow * gw) grid of samples.
        prob = F.interpolate(masks[:, None], size=(oh * gh, ow * gw), mode="bilinear", align_corners=False)
        prob = prob.view(k, oh, gh, ow, gw).permute(0, 1, 3, 2, 4).reshape(k, oh, ow, gh, 1, gw, 1)
    return _Group(grid, members, index, taps, prob)


def _groups(
    geometry: Tensor,
    masks: Tensor | None,
    map_size: tuple[int, int],
    output_size: tuple[int, int],
    sampling_ratio: int,
) -> list[_Group]:
    """Every RoI's entries, RoIs split by sampling grid so that each group is built by broadcasting: one
    group for a fixed ``sampling_ratio``, one per distinct adaptive grid otherwise. Masks are read in the
    geometry's dtype."""
    if masks is not None:
        masks = masks.to(geometry.dtype)
    if sampling_ratio > 0:
        return [_group(geometry, masks, map_size, output_size, (sampling_ratio, sampling_ratio), None)]
    grids = geometry[:, [GRID_H, GRID_W]].long()
    unique, inverse = torch.unique(grids, dim=0, return_inverse=True)
    if unique.shape[0] <= 1:
        grid = tuple(unique[0].tolist()) if unique.shape[0] else (0, 0)
        return [_group(geometry, masks, map_size, output_size, grid, None)]
    members = torch.split(torch.argsort(inverse, stable=True), torch.bincount(inverse).tolist())
    return [
        _group(geometry, masks, map_size, output_size, tuple(grid), group)
        for grid, group in zip(unique.tolist(), members)
    ]


class _Bags(NamedTuple):
    """All groups' entries as the bags of one ``embedding_bag``: a bag per output bin (``K * oh * ow`` in
    group order) of ``sizes`` entries; ``order`` the RoIs in group order and ``size`` None, or (one group)
    ``order`` None (the RoIs' own) and ``size`` every bag's size."""

    index: Tensor
    weight: Tensor
    sizes: Tensor
    order: Tensor | None
    size: int | None


def _bags(groups: list[_Group], bins: int, num_rois: int, dtype: torch.dtype) -> _Bags:
    """``groups`` as one set of bags; weights in ``dtype``."""
    if len(groups) == 1:
        (group,) = groups
        size = 4 * group.grid[0] * group.grid[1]
        sizes = torch.full((num_rois * bins,), size, device=group.index.device)
        return _Bags(group.index.view(-1), group.weight.reshape(-1).to(dtype), sizes, None, size)
    sizes = [torch.full((g.members.shape[0] * bins,), 4 * g.grid[0] * g.grid[1]) for g in groups]
    order = torch.cat([g.members for g in groups])
    index = torch.cat([g.index.reshape(-1) for g in groups])
    weight = torch.cat([g.weight.reshape(-1) for g in groups]).to(dtype)
    return _Bags(index, weight, torch.cat(sizes).to(index.device), order, None)


def _rows(tensor: Tensor) -> Tensor:
    """``Tensor[N, C, H, W]`` as ``[N * H * W, C]`` contiguous channels-last rows (a view when it is
    channels-last, a copy otherwise: ``embedding_bag`` is slower on strided rows)."""
    return tensor.permute(0, 2, 3, 1).contiguous().view(-1, tensor.shape[1])


def _in_group_order(rows: Tensor, bags: _Bags, num_rois: int) -> Tensor:
    """Per-bin rows ``[K * oh * ow, C]`` of RoIs in their order, rearranged into the bags' group order."""
    if bags.order is None:
        return rows
    return rows.view(num_rois, -1)[bags.order].view(rows.shape)


def forward(
    input: Tensor, geometry: Tensor, masks: Tensor | None, output_size: tuple[int, int], sampling_ratio: int
) -> Tensor:
    """Shape-aware RoIAlign of ``input: Tensor[B, C, H, W]`` (any layout; channels-last is read in place)
    at ``geometry: Tensor[K, 8]`` (:func:`mrrcnn.ops.geometry.roi_geometry`), weighted by ``masks:
    Tensor[K, Hp, Wp]`` (None: plain RoIAlign). Returns ``Tensor[K, C, oh, ow]``, channels-last."""
    (oh, ow), k, channels = output_size, geometry.shape[0], input.shape[1]
    if k == 0:
        return _channels_last_empty(input, (0, channels, oh, ow))
    groups = _groups(geometry, masks, tuple(input.shape[2:]), output_size, sampling_ratio)
    bags = _bags(groups, oh * ow, k, input.dtype)
    offsets = torch.cumsum(bags.sizes, 0) - bags.sizes
    out = F.embedding_bag(bags.index, _rows(input), offsets, mode="sum", per_sample_weights=bags.weight)
    out = out.view(k, oh * ow * channels)
    if bags.order is not None:
        inverse = torch.empty_like(bags.order)
        inverse[bags.order] = torch.arange(k, device=inverse.device)
        out = out[inverse]
    return out.view(k, oh, ow, channels).permute(0, 3, 1, 2)


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
    """The gradients of :func:`forward` for its output gradient ``grad: Tensor[K, C, oh, ow]``: for the
    features (``input_grad``; ``Tensor[input_shape]``, channels-last) and for ``masks: Tensor[K, Hp, Wp]``
    (``masks_grad``; it needs ``input``), in ``grad``'s and the masks' dtypes, None where not asked for.

    Both from one set of tables: the features' gradient sums the entries sorted by feature pixel from the
    rows of ``grad`` with ``embedding_bag``; the masks' takes ``sum_c grad_c * f_c`` at every entry
    (``embedding_bag``'s per-sample-weight backward) times the entry's bilinear coefficient, sums it over
    each sample's four taps and carries it back through the resizing of the mask onto the sample grid.
    """
    batch, channels, height, width = input_shape
    k, _, oh, ow = grad.shape
    masks_grad = masks_grad and masks is not None
    groups = _groups(geometry, masks, (height, width), (oh, ow), sampling_ratio) if k else []
    if not any(g.index.numel() for g in groups):
        grad_input = _channels_last_empty(grad, input_shape, zero=True) if input_grad else None
        return grad_input, torch.zeros_like(
            masks, memory_format=torch.contiguous_format
        ) if masks_grad else None
    bags = _bags(groups, oh * ow, k, geometry.dtype)
    rows = _in_group_order(_rows(grad).to(geometry.dtype), bags, k)
    grad_input = grad_masks = None
    if input_grad:
        grad_input = _features_gradient(rows, bags, batch * height * width).to(grad.dtype)
        grad_input = grad_input.view(batch, height, width, channels).permute(0, 3, 1, 2)
    if masks_grad:
        grad_masks = _masks_gradient(
            rows, _rows(input).to(geometry.dtype), bags, groups, masks.shape, (oh, ow)
        )
        grad_masks = grad_masks.to(masks.dtype)
    return grad_input, grad_masks


def _features_gradient(rows: Tensor, bags: _Bags, num_pixels: int) -> Tensor:
    """``[num_pixels, C]``: every feature pixel's sum of ``weight * rows[bin]`` over the entries reading it."""
    # torch.sort's default order, which embedding_bag's dense backward sums in: the gradient is autograd's
    # through the forward's embedding_bag to the last bit, and training follows the same trajectory (below
    # 32768 entries the default is not the stable order). int32 keys sort faster in the same order.
    pixels, by_pixel = torch.sort(bags.index.int())
    offsets = torch.searchsorted(pixels, torch.arange(num_pixels, device=rows.device, dtype=torch.int32))
    weight = bags.weight[by_pixel]
    if bags.size is not None:
        bins = by_pixel // bags.size
    else:
        bins = torch.repeat_interleave(torch.arange(rows.shape[0], device=rows.device), bags.sizes)[by_pixel]
    return F.embedding_bag(bins, rows, offsets.long(), mode="sum", per_sample_weights=weight)


def _masks_gradient(
    rows: Tensor,
    table: Tensor,
    bags: _Bags,
    groups: list[_Group],
    masks_shape: torch.Size,
    output_size: tuple[int, int],
) -> Tensor:
    """``Tensor[masks_shape]``: the gradient for the masks, from the output gradient's per-bin ``rows``
    and the features' ``table`` of rows (both in the geometry's dtype)."""
    (oh, ow), device = output_size, rows.device
    offsets = torch.cumsum(bags.sizes, 0) - bags.sizes
    bag_of_entry = torch.repeat_interleave(torch.arange(bags.sizes.shape[0], device=device), bags.sizes)
    per_entry = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        rows, table, bags.index, offsets, bag_of_entry, 0
    )
    grad_masks = torch.zeros(masks_shape, dtype=rows.dtype, device=device)
    start = 0
    for group in groups:
        (gh, gw), size = group.grid, group.taps.numel()
        if size == 0:
            continue
        n = group.taps.shape[0]
        per_sample = (per_entry[start : start + size].view(group.taps.shape) * group.taps).sum((4, 6))
        start += size
        per_sample = per_sample.permute(0, 1, 3, 2, 4).reshape(n, 1, oh * gh, ow * gw)
        grad_group = torch.ops.aten.upsample_bilinear2d_backward(
            per_sample, [oh * gh, ow * gw], [n, 1, *masks_shape[1:]], False
        )[:, 0]
        if group.members is None:
            return grad_group
        grad_masks[group.members] = grad_group
    return grad_masks


def _channels_last_empty(like: Tensor, shape: tuple[int, int, int, int], zero: bool = False) -> Tensor:
    """A ``Tensor[shape]`` with channels-last strides, empty or zero-filled, like ``like``."""
    out = like.new_zeros(shape) if zero else like.new_empty(shape)
    return out.contiguous(memory_format=torch.channels_last)
