"""COCO AP of detection results, overall and on huddled / isolated and touching / separate instances;
with masks, the instance-matching metrics (:mod:`mrrcnn.evaluation.matching`) too.

Two backends give the same numbers: pycocotools (the reference) and faster_coco_eval (its C++ port).
``DEFAULT_BACKEND`` is the faster of the two, chosen by bench/coco_eval.py, see docs/benchmarks/coco_eval.md.

The huddled / isolated split measures the paper's claim that mask refining helps crowded instances; the
touching / separate split (:mod:`mrrcnn.evaluation.touching`) the crowding of round objects. In each split
the instances of the other subset become crowd regions (``iscrowd=1``): this is the only
"ignore" both backends honour (their ``_prepare`` overwrites any ``ignore`` key with ``iscrowd``), and
crowd semantics is what the split needs: a detection that matches no regular instance but lies on a crowd
region (intersection over the detection's own area at the IoU threshold) is ignored, neither a true nor a
false positive, however many detections do so. One lenience follows: a poorly localised detection of an
isolated instance that lies inside a huddled instance's box (or mask, for segm) is ignored rather than
counted as a false positive in the isolated split, and symmetrically.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import faster_coco_eval
import numpy as np
import pycocotools.coco
import pycocotools.cocoeval
import pycocotools.mask as mask_util

from mrrcnn.data.huddle import huddled_xywh

from .matching import COUNTS, MatchCounts, paint, rle_iou
from .touching import TOUCH_DISTANCE, touching

logger = logging.getLogger(__name__)

BACKENDS = ("pycocotools", "faster_coco_eval")
DEFAULT_BACKEND = "faster_coco_eval"
IOU_TYPES = ("bbox", "segm")
# The first six entries of COCOeval.stats, in order.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# Instance subsets by crowding: box IoU with another instance (the paper's huddling), and mask contact.
SUBSETS = ("huddled", "isolated", "touching", "separate")
# The matching metrics a printed table shows (at IoU 0.5: "matching/0.5/f1", ...).
TABLE_MATCHING = ("0.5/precision", "0.5/recall", "0.5/f1", "0.5/panoptic_quality")


def _load_json(source: str | Path | Any, what: str) -> tuple[Any, str]:
    """``source`` itself, or what the json file it names holds, and a name for error messages."""
    if not isinstance(source, (str, Path)):
        return source, f"the {what} given in memory"
    try:
        with open(source) as f:
            return json.load(f), str(source)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {what} {source}: {e}") from e


def _load_gt(gt: str | Path | dict, iou_types: Sequence[str]) -> dict:
    gt, name = _load_json(gt, "ground truth")
    if not isinstance(gt, dict):
        raise TypeError(f"{name} is not a COCO ground truth: it holds a {type(gt).__name__}, not a dict")
    if not {"images", "annotations", "categories"} <= gt.keys():
        raise ValueError(f"{name} is not a COCO ground truth: it needs 'images', 'annotations', 'categories'")
    needed = {"id", "image_id", "category_id", "bbox", "area"} | (
        {"segmentation"} if "segm" in iou_types else set()
    )
    for i, ann in enumerate(gt["annotations"]):
        if not isinstance(ann, dict) or not needed <= ann.keys():
            raise ValueError(f"{name}: annotation {i} needs {sorted(needed)} to evaluate {list(iou_types)}")
    return gt


def _load_results(results: list[dict] | str | Path, gt: dict, iou_types: Sequence[str]) -> list[dict]:
    results, name = _load_json(results, "results")
    if not isinstance(results, list):
        raise TypeError(f"{name} is not a list of COCO results records but a {type(results).__name__}")
    image_ids = {image["id"] for image in gt["images"]}
    category_ids = {category["id"] for category in gt["categories"]}
    needed = {"image_id", "category_id", "score"} | {"segmentation" if t == "segm" else t for t in iou_types}
    for i, record in enumerate(results):
        if not isinstance(record, dict) or not needed <= record.keys():
            raise ValueError(f"{name}: record {i} needs {sorted(needed)} to evaluate {list(iou_types)}")
        if record["image_id"] not in image_ids:
            raise ValueError(
                f"{name}: record {i} has image_id {record['image_id']}, not an image of the ground truth"
            )
        if record["category_id"] not in category_ids:
            raise ValueError(
                f"{name}: record {i} has category_id {record['category_id']}, not a category of the ground "
                f"truth (its ids: {sorted(category_ids)}): the results are of other categories than the ground "
                "truth's"
            )
    return results


def _coco_stats(gt: dict, results: list[dict], iou_type: str, backend: str) -> list[float]:
    """``COCOeval.stats[:6]`` of one evaluation (fractions, -1 where no ground truth counts)."""
    if backend == "pycocotools":
        make_coco, make_eval = pycocotools.coco.COCO, pycocotools.cocoeval.COCOeval
    else:
        make_coco = faster_coco_eval.COCO
        make_eval = functools.partial(faster_coco_eval.COCOeval_faster, print_function=logger.debug)

    # Both backends write into the dicts they are given (RLE of polygons, "ignore", result "id"/"area"):
    # shallow copies keep the caller's intact.
    gt = {**gt, "annotations": [dict(ann) for ann in gt["annotations"]]}
    # Without "bbox", loadRes takes a detection's area (for APs/m/l) from its mask, as for segm it should.
    drop = "bbox" if iou_type == "segm" else None
    results = [{k: v for k, v in record.items() if k != drop} for record in results]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        coco_gt = make_coco()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            # pycocotools' loadRes fails on an empty list.
            coco_dt = make_coco()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        coco_eval = make_eval(coco_gt, coco_dt, iou_type)
        # COCO's 100 detections an image would cut a crowded image's hundreds of instances short.
        per_image = Counter(record["image_id"] for record in results)
        coco_eval.params.maxDets = [1, 10, max(100, *per_image.values(), 0)]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.debug("%s %s:\n%s", backend, iou_type, printed.getvalue())
    return _stats(coco_eval.eval["precision"])


def _stats(precision: np.ndarray) -> list[float]:
    """AP, AP50, AP75, APs, APm, APl from ``COCOeval.eval["precision"]`` (``[iou, recall, category, area,
    max detections]``) at the largest number of detections, as ``COCOeval.summarize`` computes them at 100
    (-1 where no ground truth counts)."""

    def mean(values: np.ndarray) -> float:
        values = values[values > -1]
        return float(values.mean()) if values.size else -1.0

    at_most = precision[..., -1]
    return [
        mean(at_most[:, :, :, 0]),
        mean(at_most[0, :, :, 0]),
        mean(at_most[5, :, :, 0]),
        *(mean(at_most[:, :, :, area]) for area in (1, 2, 3)),
    ]


def _evaluate(gt: dict, results: list[dict], iou_types: Sequence[str], backend: str) -> dict[str, float]:
    metrics = {}
    for iou_type in iou_types:
        for metric, stat in zip(METRICS, _coco_stats(gt, results, iou_type, backend)):
            metrics[f"{iou_type}/{metric}"] = 100 * stat if stat >= 0 else math.nan
    return metrics


def _check_args(iou_types: Sequence[str], backend: str) -> None:
    if isinstance(iou_types, str) or not iou_types or not set(iou_types) <= set(IOU_TYPES):
        raise ValueError(f"iou_types must be a non-empty sequence of {IOU_TYPES}, got {iou_types!r}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO evaluation backend {backend!r}, expected one of {BACKENDS}")


def evaluate(
    gt: str | Path | dict,
    results: list[dict] | str | Path,
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = DEFAULT_BACKEND,
) -> dict[str, float]:
    """COCO AP of ``results`` against ``gt``.

    Args:
        gt: COCO ground truth, as a json path or its loaded dict (left unchanged).
        results: COCO results records (see :func:`mrrcnn.inference.results.to_coco_results`) or a json path to
            them; may be empty.
        iou_types: any of ``"bbox"`` and ``"segm"``.
        backend: ``"pycocotools"`` or ``"faster_coco_eval"``.

    Returns:
        ``"{iou_type}/{metric}"`` for metric in AP, AP50, AP75, APs, APm, APl, in percent (0-100); NaN
        where the ground truth has no instance to measure on (COCO's -1), e.g. APs without small instances.
    """
    _check_args(iou_types, backend)
    gt = _load_gt(gt, iou_types)
    return _evaluate(gt, _load_results(results, gt, iou_types), iou_types, backend)


def _rle(ann: dict, image: dict) -> dict:
    """An annotation's segmentation as a COCO RLE (polygons merged, uncompressed RLE compressed)."""
    segmentation, height, width = ann["segmentation"], image["height"], image["width"]
    if isinstance(segmentation, list):
        return mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_util.frPyObjects(segmentation, height, width)
    return segmentation


def subset_flags(gt: dict, touch_distance: int = TOUCH_DISTANCE) -> dict[str, list[bool]]:
    """For each subset of :data:`SUBSETS`, whether each annotation of ``gt`` (in order) belongs to it.

    An image's non-crowd instances are huddled when :func:`mrrcnn.data.huddle.huddled` says so of their
    boxes, isolated otherwise; touching when their mask comes within ``touch_distance`` pixels of
    another's (:func:`mrrcnn.evaluation.touching.touching`), separate otherwise. Crowd regions are in none.
    """
    images = {image["id"]: image for image in gt["images"]}
    by_image = defaultdict(list)
    for i, ann in enumerate(gt["annotations"]):
        if not ann.get("iscrowd", 0):
            by_image[ann["image_id"]].append(i)
    flags = {subset: [False] * len(gt["annotations"]) for subset in SUBSETS}
    for image_id, indices in by_image.items():
        anns = [gt["annotations"][i] for i in indices]
        is_huddled = huddled_xywh([ann["bbox"] for ann in anns]).tolist()
        is_touching = touching([_rle(ann, images[image_id]) for ann in anns], touch_distance).tolist()
        for i, huddles, touches in zip(indices, is_huddled, is_touching):
            flags["huddled" if huddles else "isolated"][i] = True
            flags["touching" if touches else "separate"][i] = True
    return flags


def split_ground_truth(gt: dict, touch_distance: int = TOUCH_DISTANCE) -> dict[str, dict]:
    """Copies of ``gt`` that each evaluate only the instances of one subset of :data:`SUBSETS` (see
    :func:`subset_flags`); each copy marks the other instances ``iscrowd=1`` (see the module docstring).
    Crowd regions of ``gt`` stay crowd regions in all. ``gt`` is left unchanged.

    Returns:
        ``{"huddled": gt_huddled, "isolated": ..., "touching": ..., "separate": ...}``.
    """
    flags = subset_flags(gt, touch_distance)
    return {
        subset: {
            **gt,
            "annotations": [
                ann if ann.get("iscrowd", 0) or flags[subset][i] else {**ann, "iscrowd": 1}
                for i, ann in enumerate(gt["annotations"])
            ],
        }
        for subset in SUBSETS
    }


def evaluate_split(
    gt: str | Path | dict,
    results: list[dict] | str | Path,
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = DEFAULT_BACKEND,
    score_threshold: float = 0.5,
    touch_distance: int = TOUCH_DISTANCE,
) -> dict[str, float]:
    """:func:`evaluate`'s metrics, plus the same on each subset of :data:`SUBSETS`, and (with masks) the
    instance-matching metrics overall, per subset and per category.

    Args:
        gt, results, iou_types, backend: as for :func:`evaluate`.
        score_threshold: the least score of a result the matching metrics count.
        touch_distance: the gap in pixels within which two masks touch.

    Returns:
        :func:`evaluate`'s keys, then ``"{subset}/{iou_type}/{metric}"`` (percent; NaN where the subset has
        no instance to measure on), and with ``"segm"``: ``"matching/{t}/{name}"``,
        ``"{subset}/matching/{t}/{name}"`` and ``"category/{category name}/matching/{t}/{name}"`` for
        IoU thresholds ``t`` in 0.5, 0.55, ..., 0.9 and stardist's names (:func:`matching_metrics`).
    """
    _check_args(iou_types, backend)
    gt = _load_gt(gt, iou_types)
    results = _load_results(results, gt, iou_types)
    metrics = _evaluate(gt, results, iou_types, backend)
    for subset, subset_gt in split_ground_truth(gt, touch_distance).items():
        for key, value in _evaluate(subset_gt, results, iou_types, backend).items():
            metrics[f"{subset}/{key}"] = value
    if "segm" in iou_types:
        metrics.update(matching_metrics(gt, results, score_threshold, touch_distance))
    return metrics


def matching_metrics(
    gt: dict, results: list[dict], score_threshold: float = 0.5, touch_distance: int = TOUCH_DISTANCE
) -> dict[str, float]:
    """stardist's matching metrics of ``results`` (with segmentations) against ``gt``, summed over images.

    Results scoring at least ``score_threshold`` are painted into each image's label image, each pixel the
    highest-scoring result's (:func:`mrrcnn.evaluation.matching.paint`), as ``mrrcnn predict`` writes it,
    and matched one to one by mask IoU with the non-crowd instances (crowd regions are left out). Within a
    category only its instances and results are matched. On a subset, matches of instances outside it are
    left out, and an unmatched result counts as a false positive of the subset of the instance it overlaps
    most (of every subset if it overlaps none).

    Returns:
        ``"matching/{t}/{name}"``, ``"{subset}/matching/{t}/{name}"``, ``"category/{category name}/matching/
        {t}/{name}"``: ``tp``, ``fp``, ``fn`` (counts) and ``precision``, ``recall``, ``accuracy``, ``f1``,
        ``mean_matched_score``, ``panoptic_quality`` in percent.
    """
    names = {category["id"]: category["name"] for category in gt["categories"]}
    overall = MatchCounts()
    subsets = {subset: MatchCounts() for subset in SUBSETS}
    categories = {cat_id: MatchCounts() for cat_id in names}
    flags = subset_flags(gt, touch_distance)
    for image, truth, found in _per_image(gt, results, score_threshold):
        iou = rle_iou([t["rle"] for t in truth], [f["rle"] for f in found])
        overall.add(iou)
        for subset, counts in subsets.items():
            counts.add(iou, np.array([flags[subset][t["index"]] for t in truth], dtype=bool))
        for cat_id, counts in categories.items():
            rows = [k for k, t in enumerate(truth) if t["category_id"] == cat_id]
            cols = [k for k, f in enumerate(found) if f["category_id"] == cat_id]
            counts.add(iou[np.ix_(rows, cols)])
    metrics = _flat("matching", overall)
    for subset, counts in subsets.items():
        metrics.update(_flat(f"{subset}/matching", counts))
    for cat_id, counts in categories.items():
        metrics.update(_flat(f"category/{names[cat_id]}/matching", counts))
    return metrics


def _per_image(gt: dict, results: list[dict], score_threshold: float) -> Iterator[tuple[dict, list, list]]:
    """Each image, its non-crowd instances (``index`` into ``gt["annotations"]``, ``category_id``,
    ``rle``) and its results above the threshold as painted (``category_id``, ``rle``)."""
    truth, found = defaultdict(list), defaultdict(list)
    images = {image["id"]: image for image in gt["images"]}
    for index, ann in enumerate(gt["annotations"]):
        if not ann.get("iscrowd", 0):
            rle = _rle(ann, images[ann["image_id"]])
            truth[ann["image_id"]].append({"index": index, "category_id": ann["category_id"], "rle": rle})
    for record in results:
        if record["score"] >= score_threshold:
            found[record["image_id"]].append(record)
    for image_id, image in images.items():
        kept = found.get(image_id, [])
        rles = [_rle(record, image) for record in kept]
        painted, order = paint(rles, [record["score"] for record in kept], (image["height"], image["width"]))
        yield (
            image,
            truth.get(image_id, []),
            [{"category_id": kept[i]["category_id"], "rle": rle} for i, rle in zip(order, painted)],
        )


def _flat(prefix: str, counts: MatchCounts) -> dict[str, float]:
    return {
        f"{prefix}/{threshold}/{name}": value if name in COUNTS else 100 * value
        for threshold, values in counts.metrics().items()
        for name, value in values.items()
    }


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """A markdown table of several runs' metrics side by side.

    Args:
        metrics: by run name (a column), metrics as :func:`evaluate_split` returns them (the rows, in order
            of first appearance); a run without a metric, or with NaN, shows "-".

    Returns:
        The table, one line per metric, values with one decimal.
    """
    names = list(metrics)
    rows = list(dict.fromkeys(key for run in metrics.values() for key in run))
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key in rows:
        values = [metrics[name].get(key, math.nan) for name in names]
        lines.append(f"| {key} | " + " | ".join("-" if math.isnan(v) else f"{v:.1f}" for v in values) + " |")
    return "\n".join(lines) + "\n"
