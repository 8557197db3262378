"""``docs/RESULTS.md``: every table, verdict and sentence generated from the committed metrics."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import load, plots
from .beyond_report import beyond_section
from .matching_report import matching_section
from .runs import ALPHAS, BENCHMARKS, DIAGNOSED, FIGURES, RUNS, Benchmark
from .sara import DEGRADATIONS, QUALITY_FOLDERS
from .stats import judge, mean_std, seen, verdict

# The paper's R50-FPN rows (COCO val): (AP_b, AP_m).
PAPER = {
    "maskrcnn_finetune": (37.8, 34.2),
    "mrrcnn_no_sara": (38.6, 35.0),
    "mrrcnn": (39.5, 35.4),
    "mrrcnn_cls_only": (38.3, 35.0),
    "mrrcnn_reg_only": (39.1, 35.1),
}
PAPER_ALPHA = {
    0.0: (39.1, 35.1),
    0.1: (39.3, 35.2),
    0.2: (39.3, 35.2),
    0.5: (39.5, 35.4),
    1.0: (39.5, 35.4),
    2.0: (39.5, 35.4),
    5.0: (39.4, 35.3),
    10.0: (39.2, 35.2),
}
COLUMNS = (
    ("bbox/AP", "box AP"),
    ("segm/AP", "mask AP"),
    ("bbox/AP50", "box AP50"),
    ("bbox/AP75", "box AP75"),
    ("huddled/bbox/AP", "huddled box AP"),
    ("huddled/segm/AP", "huddled mask AP"),
    ("isolated/bbox/AP", "isolated box AP"),
    ("isolated/segm/AP", "isolated mask AP"),
)
SARA_KEYS = ("bbox/AP", "huddled/bbox/AP", "isolated/bbox/AP", "segm/AP", "huddled/segm/AP")
# Evaluations of the SARA study beside the trained runs: name -> label.
SARA_EVALS = {
    "mrrcnn_gt_masks": "MR R-CNN, read with ground-truth masks at evaluation",
    "mrrcnn_oracle_predicted_masks": "SARA trained on ground truth, read with predicted masks",
}
Metrics = dict[str, Any]


@dataclass
class Loaded:
    """A benchmark's committed metrics: by evaluation name, one entry per seed (None where missing)."""

    benchmark: Benchmark
    seeds: list[int]
    metrics: dict[str, list[Metrics | None]]

    @classmethod
    def read(cls, benchmark: Benchmark) -> Loaded:
        seeds = load.seeds(benchmark.results)
        names = [*RUNS, *SARA_EVALS, *(f"mrrcnn_alpha{a:g}" for a in ALPHAS), "mask_quality_predicted"]
        names += [
            f"{folder}/{family}{level}"
            for folder in QUALITY_FOLDERS.values()
            for family, levels in DEGRADATIONS.items()
            for level in levels
        ]
        return cls(benchmark, seeds, {n: load.per_seed(benchmark.results, seeds, n) for n in names})

    def delta(self, name: str, reference: str, key: str) -> list[float]:
        return load.differences(self.metrics[name], self.metrics[reference], key)

    def has(self, name: str) -> list[int]:
        """The seeds that have ``name``."""
        return [s for s, m in zip(self.seeds, self.metrics[name]) if m is not None]

    def devices(self) -> set[str]:
        """The machines its evaluations recorded (from seed 2 on: the earlier ones did not record it)."""
        return {m["device"] for ms in self.metrics.values() for m in ms if m and "device" in m}

    def json(self, seed: int, name: str) -> Any:
        path = self.benchmark.results / f"seed{seed}" / name
        return json.loads(path.read_text()) if path.is_file() else None


def metrics_table(data: Loaded, rows: dict[str, str], columns=COLUMNS, paper: bool = True) -> str:
    """One row per evaluation name (label ``rows[name]``): mean ± std over the seeds that have it."""
    head = (
        "| run | seeds |" + (" paper AP_b / AP_m |" if paper else "") + "".join(f" {c} |" for _, c in columns)
    )
    lines = [head, "|---|---|" + ("---|" if paper else "") + "---:|" * len(columns)]
    for name, label in rows.items():
        values = data.metrics[name]
        cells = [mean_std([m.get(k) if m else None for m in values]) for k, _ in columns]
        paper_cell = [f"{PAPER[name][0]} / {PAPER[name][1]}" if name in PAPER else "-"] if paper else []
        lines.append("| " + " | ".join([label, str(len(data.has(name))), *paper_cell, *cells]) + " |")
    return "\n".join(lines) + "\n"


def delta_table(data: Loaded, rows: dict[str, str], reference: str, columns=COLUMNS) -> str:
    """Per-seed differences from ``reference``, mean ± std, one row per evaluation name."""
    lines = ["| run | seeds |" + "".join(f" {c} |" for _, c in columns), "|---|---|" + "---:|" * len(columns)]
    for name, label in rows.items():
        cells = [mean_std(data.delta(name, reference, k)) for k, _ in columns]
        lines.append(
            "| " + " | ".join([label, str(len(data.delta(name, reference, columns[0][0]))), *cells]) + " |"
        )
    return "\n".join(lines) + "\n"


def paper_gain(index: int, run: str, reference: str) -> str:
    return f"{PAPER[run][index] - PAPER[reference][index]:+.1f}"


def labels(*names: str) -> dict[str, str]:
    return {name: RUNS[name][1] for name in names}


def setup_section(main: Loaded, hard: Loaded) -> str:
    commands = {s: main.json(s, "commands.json") or {} for s in main.seeds}
    first = {run: next((s for s in main.seeds if run in commands[s]), None) for run in RUNS}
    listed = "\n".join(
        f"- {RUNS[run][1]} (seed {seed}): `{commands[seed][run]}`"
        for run, seed in first.items()
        if seed is not None
    )
    base = commands[main.seeds[0]]
    hard_data = hard.json(hard.seeds[0], "commands.json")["data"] if hard.seeds else "(not run yet)"
    return f"""## Setup

The benchmark (`mrrcnn synth`, `mrrcnn/data/synthetic.py`): 160-pixel images of shapes that differ by
outline only (same colour and texture distribution for every class), most of them in overlapping clusters;
an instance is *huddled* when its box has IoU >= 0.3 with another's, *isolated* otherwise. Huddled and
isolated AP are computed by marking the other subset as crowd (ignored) regions
(`mrrcnn/evaluation/coco_eval.py`). The harder variant (section "Does SARA help, and when?") gives all
instances of an image one colour and texture, separated by dark 1-pixel outlines only, and draws every
instance in a cluster.

Per seed, one Mask R-CNN (`maskrcnn_small`: a ResNet-10-FPN) trains from scratch; from that checkpoint every
other row fine-tunes for the same number of iterations with the same recipe (paper 4.1 in miniature:
10x lower learning rate, one step decay). The **control** fine-tunes the Mask R-CNN itself, so that
"fine-tuned longer" and "has a refining module" are not confused: the paper compares with the Mask R-CNN it
started from. The commands, from the repository root, after the data (`{base["data"]}`; the harder
variant: `{hard_data}`), with `DATA="{base["$DATA"]}"`:

{listed}

`python bench/reproduce.py --seeds {" ".join(map(str, main.seeds))}` runs them all, then the evaluations below
(`--benchmark uniform` the harder variant); `--runs all` adds Table 4's ablations.
"""


def table3_section(main: Loaded) -> str:
    gain = {k: main.delta("mrrcnn", "maskrcnn_finetune", k) for k, _ in COLUMNS}
    sara = {k: main.delta("mrrcnn", "mrrcnn_no_sara", k) for k, _ in COLUMNS}
    return f"""## Table 3: does the refining module help, and does SARA?

{metrics_table(main, labels("maskrcnn", "maskrcnn_finetune", "mrrcnn_no_sara", "mrrcnn"))}
Differences from the control, per seed, then averaged:

{delta_table(main, labels("mrrcnn_no_sara", "mrrcnn"), "maskrcnn_finetune")}
- MR R-CNN over the control, box AP: {verdict(gain["bbox/AP"])}; mask AP: {verdict(gain["segm/AP"])}.
- On huddled instances, box AP: {verdict(gain["huddled/bbox/AP"])}; mask AP: {verdict(gain["huddled/segm/AP"])}.
- On isolated instances, box AP: {verdict(gain["isolated/bbox/AP"])}; mask AP: {verdict(gain["isolated/segm/AP"])}.
- SARA (MR R-CNN over RM without SARA), box AP: {verdict(sara["bbox/AP"])}; mask AP: {verdict(sara["segm/AP"])};
  huddled box AP: {verdict(sara["huddled/bbox/AP"])}.
"""


def table4_section(main: Loaded) -> str:
    rows = labels("maskrcnn_finetune", "mrrcnn_cls_only", "mrrcnn_reg_only", "mrrcnn")
    return f"""## Table 4: classification or regression?

{metrics_table(main, rows)}
{delta_table(main, labels("mrrcnn_cls_only", "mrrcnn_reg_only", "mrrcnn"), "maskrcnn_finetune")}"""


def alpha_section(main: Loaded) -> str:
    keys = (
        "bbox/AP",
        "segm/AP",
        "huddled/bbox/AP",
        "huddled/segm/AP",
        "isolated/bbox/AP",
        "isolated/segm/AP",
    )
    rows = []
    for a in ALPHAS:
        cells = [
            mean_std([m.get(k) if m else None for m in main.metrics[f"mrrcnn_alpha{a:g}"]]) for k in keys
        ]
        rows.append(f"| {a:g} | {PAPER_ALPHA[a][0]} / {PAPER_ALPHA[a][1]} | " + " | ".join(cells) + " |")
    plots.alpha_figure(
        {a: main.metrics[f"mrrcnn_alpha{a:g}"] for a in ALPHAS}, PAPER_ALPHA, FIGURES / "alpha.png"
    )
    return f"""## Table 5: alpha, without retraining

| alpha | paper AP_b / AP_m | box AP | mask AP | huddled box AP | huddled mask AP | isolated box AP | isolated mask AP |
|---:|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

![AP against alpha](figures/alpha.png)
"""


def diagnostics(data: Loaded, runs: tuple[str, ...]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (subset, run): the best same-class IoUs and confusion summed over seeds, from ``*_diagnostics.json``."""
    out = {}
    for run in runs:
        found = [d for d in (data.json(s, f"{run}_diagnostics.json") for s in data.seeds) if d]
        if not found:
            continue
        for subset in ("huddled", "isolated"):
            ious = np.concatenate([d[subset]["best_iou"] for d in found])
            confusion = np.sum([d[subset]["confusion"] for d in found], axis=0)
            detected, right = confusion[1:, 1:].sum(), np.trace(confusion[1:, 1:])
            out[subset, run] = {
                "ious": ious,
                "iou50": 100 * np.mean(ious >= 0.5),
                "iou75": 100 * np.mean(ious >= 0.75),
                "iou": np.mean(ious),
                "found": 100 * detected / confusion[1:].sum(),
                "confused": 100 * (detected - right) / max(detected, 1),
            }
    return out


def why_section(main: Loaded, diag: dict[tuple[str, str], dict[str, Any]]) -> str:
    rows = [
        f"| {subset} | {RUNS[run][1]} | {len(d['ious'])} | {d['iou50']:.1f} | {d['iou75']:.1f} | {d['iou']:.3f} | "
        f"{d['found']:.1f} | {d['confused']:.1f} |"
        for (subset, run), d in diag.items()
    ]
    best = {
        s: {RUNS[r][1]: d["ious"] for (s2, r), d in diag.items() if s2 == s} for s in ("huddled", "isolated")
    }
    plots.iou_figure(best, FIGURES / "iou.png")
    return f"""## Why: classes and boxes of huddled instances

For every ground-truth instance of val, summed over seeds: *found* is the share with a detection of any
class whose box has IoU >= 0.5 with it, *confused* the share of those whose highest-scoring such detection
has another class; *IoU* is the best box IoU among detections of the instance's own class.

| instances | run | count | IoU >= 0.5 (%) | IoU >= 0.75 (%) | mean IoU | found (%) | confused (%) |
|---|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(sorted(rows))}

![IoU of the best same-class box](figures/iou.png)

## Mask R-CNN (control) against MR R-CNN on the most huddled val images (paper Fig. 5)

Seed 0; detections scoring 0.5 or more.

![control vs MR R-CNN](figures/fig5_huddled.png)
"""


def sara_comparisons(data: Loaded) -> dict[str, dict[str, list[float]]]:
    """The SARA study's paired differences, per comparison and metric key."""
    pairs = {
        "SARA (predicted masks) - no SARA": ("mrrcnn", "mrrcnn_no_sara"),
        "SARA on ground truth (trained and read) - no SARA": ("mrrcnn_oracle", "mrrcnn_no_sara"),
        "SARA on 1 - the others' ground truth (trained and read) - no SARA": (
            "mrrcnn_oracle_others",
            "mrrcnn_no_sara",
        ),
        "SARA on ground truth - SARA (predicted masks)": ("mrrcnn_oracle", "mrrcnn"),
        "MR R-CNN read with ground truth - read with its predicted masks": ("mrrcnn_gt_masks", "mrrcnn"),
        "SARA trained on ground truth, read with predicted masks - no SARA": (
            "mrrcnn_oracle_predicted_masks",
            "mrrcnn_no_sara",
        ),
    }
    return {name: {k: data.delta(a, b, k) for k in SARA_KEYS} for name, (a, b) in pairs.items()}


def comparison_table(comparisons: dict[str, dict[str, list[float]]]) -> str:
    head = "| comparison (paired by seed) | seeds |" + "".join(f" {k} |" for k in SARA_KEYS)
    lines = [head, "|---|---|" + "---:|" * len(SARA_KEYS)]
    for name, by_key in comparisons.items():
        cells = [f"{mean_std(v)} ({_word(v)})" for v in by_key.values()]
        lines.append(f"| {name} | {len(by_key['bbox/AP'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _word(values: list[float]) -> str:
    word = judge(values)
    return (
        {"a gain": "gain", "a loss": "loss", "not distinguishable from zero": "n.s."}.get(word, "1 seed")
        if values
        else "-"
    )


ORACLES = {"mrrcnn_oracle": "own true mask", "mrrcnn_oracle_others": "1 - the others' true masks"}


def quality_section(main: Loaded) -> tuple[str, dict[str, Any]]:
    """The mask-quality table and figure; returns the text and the numbers the conclusion needs."""
    seeds = main.has("mrrcnn_oracle")
    predicted = [m for m in main.metrics["mask_quality_predicted"] if m]
    if not seeds or not predicted:
        return "The mask-quality curve needs the oracle runs: not run yet.\n", {}

    # Reference levels over the seeds the oracle has, so that lines and curves are paired.
    def mean_over_oracle_seeds(name: str) -> dict[str, float]:
        return {
            k: statistics.mean(m[k] for s, m in zip(main.seeds, main.metrics[name]) if m and s in seeds)
            for k in SARA_KEYS
        }

    means = {
        name: mean_over_oracle_seeds(name)
        for name in ("mrrcnn_no_sara", "mrrcnn", *ORACLES)
        if main.has(name)
    }
    panels, rows = {}, []
    for family, levels in DEGRADATIONS.items():
        for level in levels:
            cells, iou = [], None
            for run, title in ORACLES.items():
                found = [m for m in main.metrics[f"{QUALITY_FOLDERS[run]}/{family}{level}"] if m]
                if not found:
                    cells.append("- | -")
                    continue
                iou, box, hud = (
                    statistics.mean(m[k] for m in found)
                    for k in ("mask_iou/all", "bbox/AP", "huddled/bbox/AP")
                )
                panels.setdefault(f"SARA on {title}", []).append((family, iou, box, hud))
                cells.append(f"{box:.1f} | {hud:.1f}")
            if iou is not None:
                rows.append(f"| {family} {level} px | {iou:.3f} | " + " | ".join(cells) + " |")
    truth = " | ".join(
        f"{means[r]['bbox/AP']:.1f} | {means[r]['huddled/bbox/AP']:.1f}" if r in means else "- | -"
        for r in ORACLES
    )
    predicted_iou = statistics.mean(m["mask_iou/all"] for m in predicted)
    predicted_huddled = statistics.mean(m["mask_iou/huddled"] for m in predicted)
    plots.quality_figure(
        panels,
        {
            "no SARA": means["mrrcnn_no_sara"],
            "SARA, predicted masks": means["mrrcnn"],
            **{f"SARA, {t}, undegraded": means[r] for r, t in ORACLES.items() if r in means},
        },
        predicted_iou,
        FIGURES / "sara_mask_quality.png",
    )
    text = f"""Each oracle is evaluated with the true masks degraded (shifted, dilated, eroded), each step labelled by
the mean IoU of the degraded masks with the true ones over all val instances (seeds {", ".join(map(str, seeds))}; the
reference levels are means over the same seeds: no SARA {means["mrrcnn_no_sara"]["bbox/AP"]:.1f} box /
{means["mrrcnn_no_sara"]["huddled/bbox/AP"]:.1f} huddled box AP, SARA with predicted masks {means["mrrcnn"]["bbox/AP"]:.1f} /
{means["mrrcnn"]["huddled/bbox/AP"]:.1f}). Stage 1's own masks reach a mean IoU of {predicted_iou:.3f}
({predicted_huddled:.3f} on huddled instances) on the val instances it detects (`mask_quality_predicted.json`:
the best-overlapping detection's mask, pasted, at 0.5). An oracle trained on true masks and read with
degraded ones is not a model trained on such masks; and a shifted true mask keeps the true outline, which
predicted masks of the same IoU do not: the curves bound what masks of a given quality can give.

| degradation | mean mask IoU | own mask: box AP | own mask: huddled box AP | others removed: box AP | others removed: huddled box AP |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}
| none (true masks) | 1.000 | {truth} |

![AP against the quality of SARA's masks](figures/sara_mask_quality.png)
"""
    return text, {"panels": panels, "means": means, "predicted_iou": predicted_iou}


def hard_section(hard: Loaded) -> tuple[str, dict[str, dict[str, list[float]]]]:
    if not hard.seeds:
        return "Not run yet.\n", {}
    rows = labels(
        "maskrcnn", "maskrcnn_finetune", "mrrcnn_no_sara", "mrrcnn", "mrrcnn_oracle", "mrrcnn_oracle_others"
    )
    rows = {k: v for k, v in rows.items() if hard.has(k)}
    comparisons = sara_comparisons(hard)
    comparisons = {k: v for k, v in comparisons.items() if v["bbox/AP"]}
    gain = {k: hard.delta("mrrcnn", "maskrcnn_finetune", k) for k in SARA_KEYS}
    predicted = [m for m in hard.metrics["mask_quality_predicted"] if m]
    quality = (
        f"Stage 1's masks here: mean IoU {statistics.mean(m['mask_iou/all'] for m in predicted):.3f} "
        f"({statistics.mean(m['mask_iou/huddled'] for m in predicted):.3f} on huddled instances), measured as in "
        "section 3.\n"
        if predicted
        else ""
    )
    text = f"""{metrics_table(hard, rows, paper=False)}
{comparison_table({"MR R-CNN - control": gain, **comparisons})}
{quality}"""
    return text, comparisons


def sara_section(main: Loaded, hard: Loaded, quality: str, numbers: dict[str, Any]) -> str:
    """The SARA study; ``quality``, ``numbers``: :func:`quality_section`'s text and numbers."""
    comparisons = sara_comparisons(main)
    hard_text, hard_sara = hard_section(hard)
    oracle_rows = labels("mrrcnn_no_sara", "mrrcnn", "mrrcnn_oracle", "mrrcnn_oracle_others")
    oracle_rows.update(SARA_EVALS)
    features = "![RoIAlign and SaRoIAlign of huddled instances](figures/sara_features.png)"
    return f"""## Does SARA help, and when?

SARA is the paper's namesake (+0.9 box AP over the refining module without it, Table 3). Five experiments
ask whether it helps here, and under which masks. Every comparison is paired by seed (the same base Mask
R-CNN), judged by a two-sided paired t-test at 95% ("n.s.": not distinguishable from zero).

### 1. SARA with predicted masks, over every seed

{comparison_table({k: comparisons[k] for k in list(comparisons)[:1]})}
### 2. The oracle: SARA fed ground-truth masks

`model.sara_masks: ground_truth` (a diagnostic, `docs/method.md`) gives Shape-aware RoIAlign each box's
best-IoU ground-truth mask, resampled into the box as Mask R-CNN's mask targets are, in training and at
evaluation. It tells whether shape-aware pooling *can* help on this data, whatever stage 1 predicts. It
is an upper bound with a leak: here the class *is* the outline, so a true mask in the box frame shows the
refining head the class and the instance's extent, besides clean features. The second oracle,
`sara_masks: ground_truth_others`, weights by 1 minus the union of the *other* instances' true masks: the
neighbours' pixels are removed (what the paper says SARA is for), the instance's own shape is not shown
(except where it borders a neighbour).

{metrics_table(main, oracle_rows, columns=[(k, k) for k in SARA_KEYS], paper=False)}
{comparison_table(comparisons)}
### 3. How good must the masks be?

{quality}
### 4. A harder variant: one appearance per image, outlines only, more crowding

{hard_text}
### 5. What the refining box head sees

Most huddled val instances of seed {main.has("mrrcnn_oracle")[0] if main.has("mrrcnn_oracle") else "-"}: the
image and the refining box head's input pooled over the instance's box by RoIAlign and by SaRoIAlign with
stage 1's mask and with the ground truth (`bench/reproduction/sara.py:figure_sara_features`).

{features}

### Conclusion

{conclusion(comparisons, numbers, hard_sara)}
"""


def conclusion(
    comparisons: dict[str, dict[str, list[float]]],
    quality: dict[str, Any],
    hard: dict[str, dict[str, list[float]]],
) -> str:
    """Plain-language answer, every clause chosen by the numbers."""
    predicted = comparisons["SARA (predicted masks) - no SARA"]
    oracle = comparisons["SARA on ground truth (trained and read) - no SARA"]
    gt_read = comparisons["MR R-CNN read with ground truth - read with its predicted masks"]
    lines = [f"- With stage 1's predicted masks, SARA over no SARA: {_effect(predicted)}."]
    others = comparisons["SARA on 1 - the others' ground truth (trained and read) - no SARA"]
    if oracle["bbox/AP"]:
        helps = any(w in seen(oracle[k]) for k in ("bbox/AP", "huddled/bbox/AP") for w in ("gain", "higher"))
        lines.append(
            f"- With ground-truth masks in training and evaluation, over no SARA: {_effect(oracle)}: "
            + (
                "shape-aware pooling *can* help on this data when the masks are right (an upper bound that"
                " also shows the head each instance's true outline)."
                if helps
                else "shape-aware pooling shows no gain here even with perfect masks."
            )
        )
        lines.append(
            f"- The predicted-mask model given ground-truth masks at evaluation only: {_effect(gt_read)}."
        )
    else:
        lines.append("- The oracle (ground-truth masks) has not been run yet.")
    if others["bbox/AP"]:
        lines.append(
            f"- With only the neighbours removed (1 - the other instances' true masks), over no SARA: "
            f"{_effect(others)}."
        )
    if quality:
        lines.append(_quality_sentence(quality))
    hard_predicted = hard.get("SARA (predicted masks) - no SARA")
    hard_oracle = hard.get("SARA on ground truth (trained and read) - no SARA")
    if hard_predicted:
        lines.append(
            f"- On the harder variant, SARA with predicted masks over no SARA: {_effect(hard_predicted)}"
            + (f"; with ground-truth masks: {_effect(hard_oracle)}." if hard_oracle else ".")
        )
    if oracle["bbox/AP"] and quality:
        lines.append(f"- **In short**: {_in_short(predicted, oracle, quality)}")
    return "\n".join(lines)


def _in_short(
    predicted: dict[str, list[float]], oracle: dict[str, list[float]], quality: dict[str, Any]
) -> str:
    """One sentence for a user deciding on ``shape_aware``, every clause chosen by the numbers."""
    oracle_helps = statistics.mean(oracle["bbox/AP"]) > 0 and judge(oracle["bbox/AP"]) != "a loss"
    predicted_helps = judge(predicted["bbox/AP"]) == "a gain"
    if not oracle_helps:
        return "SARA gives nothing here even with true masks: keep `shape_aware: false` on data like this."
    iou = quality["predicted_iou"]
    if predicted_helps:
        return f"SARA helps with stage 1's own masks (mean IoU {iou:.2f}) and more with better ones: keep it."
    masks_gain = judge(predicted["segm/AP"]) == "a gain"
    with_predicted = (
        f"they add no box AP and a small mask AP gain ({mean_std(predicted['segm/AP'])}), so "
        "`shape_aware: true` is worth keeping for the masks, not for the boxes"
        if masks_gain
        else "`shape_aware: true` buys nothing here"
    )
    floor = quality["means"]["mrrcnn_no_sara"]["bbox/AP"]
    others = quality["panels"].get(f"SARA on {ORACLES['mrrcnn_oracle_others']}", [])
    others_robust = any(i <= iou and box > floor for _, i, box, _ in others)
    return (
        "shape-aware pooling works as the paper means it when the masks are right, but it is only as good as "
        f"the masks it reads: stage 1's (mean IoU {iou:.2f}) are at the quality where its box-AP gain is "
        f"gone; {with_predicted}. The curves suggest it pays only with masks "
        "clearly better than that (a stronger or longer-trained stage 1); this miniature cannot say how much "
        "better on COCO."
        + (
            " Removing the neighbours instead of weighting by the instance's own mask degrades more gently: "
            "that oracle still gains with true masks degraded to stage 1's quality, a variant (1 - the other "
            "detections' predicted masks) worth a run of its own: it was run as `others` in 'Beyond the paper'."
            if others_robust
            else ""
        )
    )


def _effect(differences: dict[str, list[float]]) -> str:
    """``box AP <word> (m ± s), huddled box AP <word> (m ± s), mask AP ..., huddled mask AP ...``."""
    return ", ".join(
        f"{name} {seen(differences[key])} ({mean_std(differences[key])})"
        for key, name in (
            ("bbox/AP", "box AP"),
            ("huddled/bbox/AP", "huddled box AP"),
            ("segm/AP", "mask AP"),
            ("huddled/segm/AP", "huddled mask AP"),
        )
    )


def _quality_sentence(quality: dict[str, Any]) -> str:
    """Down to which mask quality each oracle's degradation curves stay above the no-SARA level."""
    floor = quality["means"]["mrrcnn_no_sara"]["bbox/AP"]
    parts = []
    for title, points in quality["panels"].items():
        lowest = {}
        for family, iou, box, _ in points:
            if box > floor:
                lowest[family] = min(lowest.get(family, 1.0), iou)
        parts.append(f"{title}, " + ", ".join(f"{f} {v:.2f}" for f, v in lowest.items()))
    return (
        f"- Read with degraded true masks, the oracles stay above the no-SARA box AP ({floor:.1f}) down to "
        f"these mean mask IoUs: {'; '.join(parts)}. Stage 1's masks have mean IoU "
        f"{quality['predicted_iou']:.2f}."
    )


def reading_section(main: Loaded, diag: dict[tuple[str, str], dict[str, Any]]) -> str:
    gain = {k: main.delta("mrrcnn", "maskrcnn_finetune", k) for k, _ in COLUMNS}
    sara = {k: main.delta("mrrcnn", "mrrcnn_no_sara", k) for k, _ in COLUMNS}
    reg_vs_cls = {k: main.delta("mrrcnn_reg_only", "mrrcnn_cls_only", k) for k, _ in COLUMNS}
    excess = [h - i for h, i in zip(gain["huddled/bbox/AP"], gain["isolated/bbox/AP"])]
    best_alpha = max(
        ALPHAS, key=lambda a: statistics.mean(r["bbox/AP"] for r in main.metrics[f"mrrcnn_alpha{a:g}"] if r)
    )
    with_sara, without, control = (
        diag["huddled", r] for r in ("mrrcnn", "mrrcnn_no_sara", "maskrcnn_finetune")
    )
    return f"""## Reading: what the numbers say about the paper's claims

Written by the script from the differences above; a verdict needs two or more seeds.

- **The refining module helps** (paper: {paper_gain(0, "mrrcnn", "maskrcnn_finetune")} box /
  {paper_gain(1, "mrrcnn", "maskrcnn_finetune")} mask AP over Mask R-CNN). Over the equal-compute control,
  box AP is {seen(gain["bbox/AP"])} and mask AP {seen(gain["segm/AP"])}.
- **SARA helps** (paper: {paper_gain(0, "mrrcnn", "mrrcnn_no_sara")} box / {paper_gain(1, "mrrcnn", "mrrcnn_no_sara")}
  mask AP over RM without SARA). Here box AP is {seen(sara["bbox/AP"])}, mask AP {seen(sara["segm/AP"])},
  huddled box AP {seen(sara["huddled/bbox/AP"])}. On huddled instances, {with_sara["iou75"]:.1f}% get a
  same-class box with IoU >= 0.75 with SARA against {without["iou75"]:.1f}% without (control
  {control["iou75"]:.1f}%), and {with_sara["confused"]:.1f}% of the found ones are given another class against
  {without["confused"]:.1f}% (control {control["confused"]:.1f}%). When it helps, and what it
  would take: "Does SARA help, and when?" above (its "In short").
- **Mostly through regression** (paper: REG only {PAPER["mrrcnn_reg_only"][0]} against CLS only
  {PAPER["mrrcnn_cls_only"][0]} box AP). REG only against CLS only, box AP: {verdict(reg_vs_cls["bbox/AP"])};
  mask AP: {verdict(reg_vs_cls["segm/AP"])}.
- **Most on huddled instances.** The module's box-AP gain on huddled minus that on isolated instances:
  {verdict(excess)}.
- **alpha in [0.5, 2] is best** (paper, Table 5). The best box AP here is at alpha = {best_alpha:g}.

What would test the claims better than this miniature: a base Mask R-CNN trained to convergence, so that
fine-tuning gains come from the module and not from more training (the control measures that share here),
and COCO itself with `mrrcnn/configs/coco/` (torchvision's pretrained Mask R-CNN, 4 GPUs, 9k iterations).
"""


def cost_section(data: Loaded) -> str:
    timings = [data.json(s, "train_seconds.json") or {} for s in data.seeds]
    minutes = {run: [t[run] / 60 for t in timings if run in t] for run in RUNS}
    evals = {run: [m["eval_seconds"] for m in data.metrics[run] if m] for run in RUNS}
    return f"""## What it took

Training minutes per run on this machine, mean over the seeds that trained it in one session or
several (a training resumed after its session ended counts only the sessions that ran it):
{", ".join(f"{RUNS[r][1]} {statistics.mean(v):.1f}" for r, v in minutes.items() if v)}.
Seconds per evaluation of the val images: {", ".join(f"{RUNS[r][1]} {statistics.mean(v):.0f}" for r, v in evals.items() if v)}.
The speed and memory of the refining module at COCO scale are in `docs/benchmarks/model.md`.
"""


def report(out: Path) -> None:
    """Write ``out`` (``docs/RESULTS.md``) and its figures from the committed metrics of every seed."""
    main, hard = Loaded.read(BENCHMARKS["synthetic"]), Loaded.read(BENCHMARKS["uniform"])
    if not main.seeds:
        raise SystemExit(f"no results under {main.benchmark.results}: run bench/reproduce.py first")
    diag = diagnostics(main, DIAGNOSED)
    quality, numbers = quality_section(main)
    text = f"""# Tables 3-5 in miniature, and does SARA help? MR R-CNN on the synthetic huddled benchmark

Written by `python bench/reproduce.py` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC) from the metrics in
`bench/results/reproduce/` (seeds {", ".join(map(str, main.seeds))}) and `bench/results/reproduce_uniform/`
(seeds {", ".join(map(str, hard.seeds)) or "none yet"}); nothing here is typed by hand. Machine, as the
evaluations record it from seed 2 on: {"; ".join(sorted(main.devices() | hard.devices())) or "-"}; this
report: torch {torch.__version__}. Every number is COCO AP in percent on the synthetic val set (mean ± standard
deviation over the seeds that have it). The paper's numbers are R50-FPN on COCO val2017: a different data
set and scale, put beside ours only to show which claim each row tests.

{setup_section(main, hard)}
{table3_section(main)}
{table4_section(main)}
{alpha_section(main)}
{why_section(main, diag)}
{sara_section(main, hard, quality, numbers)}
{reading_section(main, diag)}
{beyond_section(numbers)}
{matching_section()}
{cost_section(main)}"""
    out.write_text(text)
