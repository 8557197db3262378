"""COCO AP of detection results, overall and on huddled / isolated instances.

Two backends give the same numbers: pycocotools (the reference) and faster_coco_eval (its C++ port).
``DEFAULT_BACKEND`` is the faster of the two, chosen by bench/coco_eval.py, see docs/benchmarks/coco_eval.md.

The huddled / isolated split measures the paper's claim that mask refining helps crowded instances. In
each split the instances of the other subset become crowd regions (``iscrowd=1``): this is the only
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
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faster_coco_eval
import pycocotools.coco
import pycocotools.cocoeval

from mrrcnn.data.huddle import huddled_xywh

logger = logging.getLogger(__name__)

BACKENDS = ("pycocotools", "faster_coco_eval")
DEFAULT_BACKEND = "faster_coco_eval"
IOU_TYPES = ("bbox", "segm")
# The first six entries of COCOeval.stats, in order.
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SUBSETS = ("huddled", "isolated")


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
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.debug("%s %s:\n%s", backend, iou_type, printed.getvalue())
    return [float(s) for s in coco_eval.stats[: len(METRICS)]]


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


def split_ground_truth(gt: dict) -> dict[str, dict]:
    """Copies of ``gt`` that each evaluate only the huddled or only the isolated instances.

    An image's non-crowd instances are huddled when :func:`mrrcnn.data.huddle.huddled` says so of their
    boxes, isolated otherwise; each copy marks the other subset ``iscrowd=1`` (see the module docstring).
    Crowd regions of ``gt`` stay crowd regions in both. ``gt`` is left unchanged.

    Returns:
        ``{"huddled": gt_huddled, "isolated": gt_isolated}``.
    """
    by_image = defaultdict(list)
    for i, ann in enumerate(gt["annotations"]):
        if not ann.get("iscrowd", 0):
            by_image[ann["image_id"]].append(i)
    in_subset = {"huddled": set(), "isolated": set()}
    for indices in by_image.values():
        flags = huddled_xywh([gt["annotations"][i]["bbox"] for i in indices])
        for i, flag in zip(indices, flags.tolist()):
            in_subset["huddled" if flag else "isolated"].add(i)
    return {
        subset: {
            **gt,
            "annotations": [
                {**ann, "iscrowd": 1} if i in in_subset[other] else ann
                for i, ann in enumerate(gt["annotations"])
            ],
        }
        for subset, other in zip(SUBSETS, reversed(SUBSETS))
    }


def evaluate_split(
    gt: str | Path | dict,
    results: list[dict] | str | Path,
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = DEFAULT_BACKEND,
) -> dict[str, float]:
    """:func:`evaluate`'s metrics, plus the same on huddled and on isolated instances only.

    Arguments as for :func:`evaluate`.

    Returns:
        :func:`evaluate`'s keys, then ``"huddled/{iou_type}/{metric}"`` and ``"isolated/{iou_type}/{metric}"``
        (percent; NaN where the subset has no instance to measure on).
    """
    _check_args(iou_types, backend)
    gt = _load_gt(gt, iou_types)
    results = _load_results(results, gt, iou_types)
    metrics = _evaluate(gt, results, iou_types, backend)
    for subset, subset_gt in split_ground_truth(gt).items():
        for key, value in _evaluate(subset_gt, results, iou_types, backend).items():
            metrics[f"{subset}/{key}"] = value
    return metrics


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
