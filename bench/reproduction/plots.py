"""The report's figures: AP against alpha, the best-box IoU histograms, and SARA's mask-quality curve."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Metrics = dict[str, Any]


def alpha_figure(
    alphas: dict[float, list[Metrics | None]], paper: dict[float, tuple[float, float]], out: Path
) -> None:
    """Box and mask AP (overall, huddled, isolated; mean over seeds) against alpha, the paper's beside."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    ticks = range(len(alphas))
    for axis, key, paper_index, title in (
        (axes[0], "bbox/AP", 0, "box AP"),
        (axes[1], "segm/AP", 1, "mask AP"),
    ):
        for subset, style in (("", "o-"), ("huddled/", "s--"), ("isolated/", "^:")):
            means = [statistics.mean(r[subset + key] for r in rows if r) for rows in alphas.values()]
            axis.plot(ticks, means, style, label=f"ours, {subset[:-1] or 'all'}")
        twin = axis.twinx()
        twin.plot(
            ticks, [paper[a][paper_index] for a in alphas], "k-.", alpha=0.5, label="paper (COCO, right axis)"
        )
        twin.set_ylabel("paper AP (COCO)")
        axis.set_xticks(ticks, [f"{a:g}" for a in alphas])
        axis.set_xlabel("alpha")
        axis.set_ylabel(f"{title} (synthetic val)")
        axis.set_title(title)
        ours, theirs = axis.get_legend_handles_labels(), twin.get_legend_handles_labels()
        axis.legend(ours[0] + theirs[0], ours[1] + theirs[1], fontsize=7)
    _save(figure, out)


def iou_figure(best_ious: dict[str, dict[str, np.ndarray]], out: Path) -> None:
    """Histograms of each ground-truth instance's best same-class box IoU, by subset and run label."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for axis, subset in zip(axes, ("huddled", "isolated")):
        for label, ious in best_ious[subset].items():
            axis.hist(ious, bins=np.linspace(0, 1, 21), histtype="step", label=label)
        axis.set_title(f"{subset} instances: best same-class box IoU")
        axis.set_xlabel("IoU")
        axis.legend(fontsize=7)
    _save(figure, out)


def quality_figure(
    panels: dict[str, list[tuple[str, float, float, float]]],
    levels: dict[str, dict[str, float]],
    predicted_iou: float,
    out: Path,
) -> None:
    """Box AP and huddled box AP of each oracle fed degraded ground-truth masks, against the masks' IoU.

    Args:
        panels: oracle title -> points (degradation family, mask IoU, box AP, huddled box AP), means over
            seeds; one row of two plots per oracle.
        levels: reference levels drawn as horizontal lines in every plot, label -> {"bbox/AP": ..,
            "huddled/bbox/AP": ..}.
        predicted_iou: mean IoU of stage 1's predicted masks, drawn as a vertical line.
    """
    figure, axes = plt.subplots(len(panels), 2, figsize=(10, 3.8 * len(panels)), squeeze=False)
    for row, (title, points) in zip(axes, panels.items()):
        for axis, column, key, metric in (
            (row[0], 2, "bbox/AP", "box AP"),
            (row[1], 3, "huddled/bbox/AP", "huddled box AP"),
        ):
            for family in dict.fromkeys(p[0] for p in points):
                mine = sorted(p[1:] for p in points if p[0] == family)
                axis.plot(
                    [p[0] for p in mine], [p[column - 1] for p in mine], "o-", label=f"degraded: {family}"
                )
            for (label, values), style in zip(levels.items(), ("k--", "r:", "g-.", "m-.")):
                axis.axhline(values[key], color=style[0], linestyle=style[1:], label=label)
            axis.axvline(predicted_iou, color="grey", linestyle=":", label="quality of predicted masks")
            axis.set_xlabel("mean IoU of the degraded masks with the true ones")
            axis.set_ylabel(f"{metric} (val)")
            axis.set_title(f"{title}: {metric}", fontsize=9)
            axis.legend(fontsize=6)
    _save(figure, out)


def beyond_figure(
    points: dict[str, tuple[float, float, float]],
    level: dict[str, float] | None,
    oracles: dict[str, list[tuple[str, float, float, float]]],
    out: Path,
) -> None:
    """Box AP and huddled box AP of each SARA weighting against the mean IoU of the masks it reads.

    Args:
        points: label -> (mask IoU, box AP, huddled box AP), means over seeds: one marker each.
        level: RM without SARA's ``{"bbox/AP": .., "huddled/bbox/AP": ..}``, a horizontal line (if any).
        oracles: the earlier SARA study's oracles fed degraded true masks, title -> points (degradation
            family, mask IoU, box AP, huddled box AP): faint curves, one per family.
    """
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, column, key, metric in (
        (axes[0], 1, "bbox/AP", "box AP"),
        (axes[1], 2, "huddled/bbox/AP", "huddled box AP"),
    ):
        for (title, curve), colour in zip(oracles.items(), ("tab:grey", "tab:olive")):
            for k, family in enumerate(dict.fromkeys(p[0] for p in curve)):
                mine = sorted(p[1:] for p in curve if p[0] == family)
                label = f"earlier study: SARA on {title}, degraded" if k == 0 else None
                axis.plot([p[0] for p in mine], [p[column] for p in mine], ":", color=colour, label=label)
        if level is not None:
            axis.axhline(level[key], color="k", linestyle="--", label="RM without SARA")
        for label, point in points.items():
            axis.plot(point[0], point[column], "o", markersize=8, label=label)
        axis.set_xlabel("mean IoU of the masks SARA reads (val instances detected)")
        axis.set_ylabel(f"{metric} (val)")
        axis.set_title(f"SARA weightings: {metric}", fontsize=9)
        axis.legend(fontsize=6)
    _save(figure, out)


def _save(figure: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
