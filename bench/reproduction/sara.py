"""The SARA study: Shape-aware RoIAlign fed ground-truth masks, degraded in controlled steps, against the
quality of the masks stage 1 predicts; and a picture of what the refining box head sees."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import box_iou

from mrrcnn.data import CocoDetection, huddled, most_huddled
from mrrcnn.engine.checkpoint import load_model
from mrrcnn.models.roi_heads import ground_truth_masks_in_boxes
from mrrcnn.ops import roi_align, shape_aware_roi_align

from .runs import data_overrides, evaluate

# family: levels in pixels. Shift moves each mask rigidly (a mask of a neighbour's place), dilation
# lets neighbours' pixels in, erosion drops the instance's own border.
DEGRADATIONS = {"shift": (1, 2, 3, 4, 6, 8), "dilate": (1, 2, 3, 4, 6), "erode": (1, 2, 3, 4)}


def degrade(masks: Tensor, family: str, level: int, key: int) -> Tensor:
    """Degraded 0/1 masks ``UInt8Tensor[N, H, W]`` of one image; deterministic in ``key`` (its image id).

    ``shift``: each mask moves ``level`` pixels (rounded) in its own random direction, zeros coming in;
    ``dilate`` / ``erode``: a ``(2 level + 1)``-pixel square structuring element.
    """
    if masks.shape[0] == 0:
        return masks
    binary = masks[:, None].float()
    if family == "dilate":
        return F.max_pool2d(binary, 2 * level + 1, 1, level)[:, 0].to(torch.uint8)
    if family == "erode":
        return (1 - F.max_pool2d(1 - binary, 2 * level + 1, 1, level))[:, 0].to(torch.uint8)
    angles = torch.rand(masks.shape[0], generator=torch.Generator().manual_seed(key)) * 2 * math.pi
    out = torch.zeros_like(masks)
    height, width = masks.shape[1:]
    for mask, target, angle in zip(masks, out, angles.tolist()):
        dx, dy = round(level * math.cos(angle)), round(level * math.sin(angle))
        target[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = mask[
            max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
        ]
    return out


def degrade_target(target: dict[str, Any], family: str, level: int) -> Tensor:
    """:func:`degrade` of a target's ``masks``, keyed by its ``image_id``."""
    return degrade(target["masks"], family, level, target["image_id"])


def _mask_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of paired boolean masks ``[N, H, W]``: ``Tensor[N]`` (1 where both are empty)."""
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _summary(ious: list[Tensor], flags: list[Tensor]) -> dict[str, float]:
    iou, flag = torch.cat(ious), torch.cat(flags)
    return {
        "mask_iou/all": float(iou.mean()),
        "mask_iou/huddled": float(iou[flag].mean()),
        "mask_iou/isolated": float(iou[~flag].mean()),
    }


def degradation_quality(dataset: CocoDetection, family: str, level: int) -> dict[str, float]:
    """Mean IoU of each val instance's degraded ground-truth mask with the true one, overall and by subset."""
    ious, flags = [], []
    for index in range(len(dataset)):
        _, target = dataset[index]
        masks = target["masks"]
        degraded = degrade(masks, family, level, target["image_id"])
        ious.append(_mask_iou(degraded.bool(), masks.bool()))
        flags.append(huddled(target["boxes"]))
    return _summary(ious, flags)


def stage1_model(model: torch.nn.Module) -> GeneralizedRCNN:
    """torchvision's Mask R-CNN made of an MR R-CNN's stage 1 (shared modules, no refining module)."""
    heads = model.roi_heads
    plain = RoIHeads(
        heads.box_roi_pool,
        heads.box_head,
        heads.box_predictor,
        heads.proposal_matcher.high_threshold,
        heads.proposal_matcher.low_threshold,
        heads.fg_bg_sampler.batch_size_per_image,
        heads.fg_bg_sampler.positive_fraction,
        heads.box_coder.weights,
        heads.score_thresh,
        heads.nms_thresh,
        heads.detections_per_img,
        mask_roi_pool=heads.mask_roi_pool,
        mask_head=heads.mask_head,
        mask_predictor=heads.mask_predictor,
    )
    return GeneralizedRCNN(model.backbone, model.rpn, plain, model.transform).eval()


@torch.no_grad()
def predicted_quality(weights: Path, work: Path) -> dict[str, float]:
    """How good the masks SARA reads are: :func:`detected_mask_quality` of stage 1's detections."""
    model, config, _ = load_model(weights, overrides=data_overrides(work))
    dataset = CocoDetection(config["data"]["val"]["images"], config["data"]["val"]["annotations"])
    return detected_mask_quality(stage1_model(model), dataset)


@torch.no_grad()
def detected_mask_quality(detector: Callable[[list[Tensor]], list[dict]], dataset: CocoDetection) -> dict:
    """For each instance of ``dataset`` that ``detector`` (images -> torchvision detections, masks pasted)
    detects (a detection of any class with box IoU >= 0.5), the IoU of the best-overlapping detection's
    mask, at 0.5, with the instance's; mean overall and by subset, and the share of instances detected."""
    ious, flags, found, total = [], [], 0, 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        output = detector([image])[0]
        total += len(target["boxes"])
        if len(output["boxes"]) == 0 or len(target["boxes"]) == 0:
            continue
        overlap, best = box_iou(target["boxes"], output["boxes"]).max(dim=1)
        hit = overlap >= 0.5
        found += int(hit.sum())
        predicted = output["masks"][best[hit], 0] >= 0.5
        ious.append(_mask_iou(predicted, target["masks"][hit].bool()))
        flags.append(huddled(target["boxes"])[hit])
    return {**_summary(ious, flags), "detected_fraction": found / max(total, 1)}


# Oracle run -> folder of its degraded-mask evaluations.
QUALITY_FOLDERS = {"mrrcnn_oracle": "quality", "mrrcnn_oracle_others": "quality_others"}


def run_sara_study(weights: dict[str, Path], results: Path, work: Path) -> None:
    """Every evaluation of the SARA study for one seed, each cached as a JSON under ``results``:
    the predicted-mask model read with ground-truth masks, the oracle read with predicted masks, each
    oracle on degraded ground truth at every level of :data:`DEGRADATIONS` (the "others" oracle removes
    the degraded masks of the neighbours), and stage 1's mask quality."""
    evaluate(weights["mrrcnn"], results / "mrrcnn_gt_masks.json", work, sara_masks="ground_truth")
    evaluate(
        weights["mrrcnn_oracle"], results / "mrrcnn_oracle_predicted_masks.json", work, sara_masks="predicted"
    )
    dataset = CocoDetection(work / "data" / "val", work / "data" / "annotations" / "val.json")
    # The degraded masks' IoU depends on the degradation only: measured once for both oracles.
    quality = cache(partial(degradation_quality, dataset))
    steps = [(family, level) for family, levels in DEGRADATIONS.items() for level in levels]
    for run, folder in QUALITY_FOLDERS.items():
        if run not in weights:
            continue
        for family, level in steps:
            out = results / folder / f"{family}{level}.json"
            if out.is_file():
                continue
            hurt = partial(degrade_target, family=family, level=level)
            metrics = evaluate(weights[run], out, work, oracle_masks=hurt)
            out.write_text(json.dumps({**metrics, **quality(family, level)}, indent=1))
    out = results / "mask_quality_predicted.json"
    if not out.is_file():
        out.write_text(json.dumps(predicted_quality(weights["mrrcnn"], work), indent=1))


def _features(model: torch.nn.Module, image: Tensor, target: dict[str, Any]) -> tuple[dict, Tensor, dict]:
    """The FPN maps of one image, the image as the model sees it, and its target in that frame."""
    images, targets = model.transform(
        [image], [{k: v for k, v in target.items() if k in ("boxes", "labels", "masks")}]
    )
    return model.backbone(images.tensors), images.tensors[0], targets[0]


@torch.no_grad()
def figure_sara_features(weights: Path, work: Path, out: Path, count: int = 4) -> None:
    """For ``count`` huddled val instances: the crop, stage 1's predicted mask and the ground truth in the
    box frame, the image pooled by RoIAlign and by SaRoIAlign with each mask (56x56, to see what gets
    mixed in), and the channel norm of the refining box head's 7x7 input with each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, _, _ = load_model(weights, overrides=data_overrides(work))
    heads = model.roi_heads
    dataset = CocoDetection(work / "data" / "val", work / "data" / "annotations" / "val.json")
    rows = []
    for index, _ in most_huddled(dataset.coco, dataset.ids, count):
        image, target = dataset[index]
        features, seen, target = _features(model, image, target)
        flags = huddled(target["boxes"])
        k = int(flags.float().argmax())
        box, label = target["boxes"][k : k + 1], target["labels"][k : k + 1]
        features = {name: f.contiguous(memory_format=torch.channels_last) for name, f in features.items()}
        _, predicted = heads._stage1_masks(features, [box], label, [seen.shape[-2:]])
        truth = ground_truth_masks_in_boxes([box], [target], predicted.shape[-2:])
        roi = torch.cat([box.new_zeros(1, 1), box], dim=1)
        pooled = {
            name: shape_aware_roi_align(seen[None], roi, mask, 56, 1.0, 2)[0]
            for name, mask in (
                ("RoIAlign", None),
                ("SaRoIAlign, predicted", predicted),
                ("SaRoIAlign, truth", truth),
            )
        }
        norms = {
            name: heads.refine_box_roi_pool(features, [box], [seen.shape[-2:]], mask)[0].norm(dim=0)
            for name, mask in (
                ("RoIAlign", None),
                ("SaRoIAlign, predicted", predicted),
                ("SaRoIAlign, truth", truth),
            )
        }
        crop = roi_align(
            seen[None], torch.cat([roi[:, :1], _grown(box, seen.shape[-2:])], dim=1), 56, 1.0, 2
        )[0]
        rows.append((crop, predicted[0], truth[0], pooled, norms))
    columns = [
        "box, 1.5x",
        "predicted mask",
        "ground-truth mask",
        *(f"image, {n}" for n in pooled),
        *(f"features, {n}" for n in norms),
    ]
    figure, axes = plt.subplots(
        len(rows), len(columns), figsize=(1.6 * len(columns), 1.7 * len(rows)), squeeze=False
    )
    for axes_row, (crop, predicted, truth, pooled, norms) in zip(axes, rows):
        top = max(float(n.max()) for n in norms.values())
        pictures = [
            crop.permute(1, 2, 0),
            predicted,
            truth,
            *(p.permute(1, 2, 0) for p in pooled.values()),
            *norms.values(),
        ]
        for column, (axis, picture) in enumerate(zip(axes_row, pictures)):
            is_norm = column >= 3 + len(pooled)
            axis.imshow(
                picture.clamp(0, 1) if picture.dim() == 3 else picture,
                cmap="viridis" if picture.dim() == 2 else None,
                vmin=0,
                vmax=top if is_norm else 1,
            )
            axis.set_xticks([])
            axis.set_yticks([])
    for axis, title in zip(axes[0], columns):
        axis.set_title(title, fontsize=7)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def _grown(box: Tensor, size: tuple[int, int], factor: float = 1.5) -> Tensor:
    """``box`` (``Tensor[1, 4]``) grown ``factor`` times about its centre, to show its neighbourhood."""
    centre, half = (box[:, :2] + box[:, 2:]) / 2, (box[:, 2:] - box[:, :2]) * factor / 2
    return torch.cat([centre - half, centre + half], dim=1)
