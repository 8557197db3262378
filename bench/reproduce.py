"""The paper's Tables 3, 4 and 5 in miniature, on the synthetic huddled benchmark, with an equal-compute control.

    python bench/reproduce.py --seeds 0          # train, evaluate, and write docs/RESULTS.md
    python bench/reproduce.py --seeds 0 1        # a second seed; seed 0's finished steps are skipped
    python bench/reproduce.py --report-only      # rewrite docs/RESULTS.md from bench/results/reproduce

Per seed: a Mask R-CNN (``configs/synthetic/maskrcnn_small.yaml``) trains from scratch; from that one
checkpoint, for the same number of iterations and with the same recipe, five runs fine-tune: (a) the Mask
R-CNN itself, the equal-compute control the paper lacks, (b) the refining module without SARA, (c) MR
R-CNN, (d) classification-only and (e) regression-only refinement. Every run is evaluated on val (COCO AP
overall and on huddled / isolated instances), (c) also at every alpha of Table 5 without retraining.

Resumable at every step: a finished training (``final.pth``) or evaluation (its metrics JSON) is skipped,
an interrupted training resumes exactly from its ``last.pth``. Checkpoints and data live under ``--work``
(not committed); metrics and diagnostics go to ``bench/results/reproduce/seed<S>/`` (committed), from
which :func:`report` writes ``docs/RESULTS.md`` and its figures. The data are the same for every seed
(``--data-seed``); the seed changes initialisation, sampling and augmentation.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import machine
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from mrrcnn.config import load_config
from mrrcnn.data import CocoDetection, huddled, make_synthetic, most_huddled
from mrrcnn.engine.evaluate import evaluate_model, load_model
from mrrcnn.engine.train import train
from mrrcnn.engine.visualize import draw_predictions, side_by_side

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("reproduce")
CONFIGS = ROOT / "configs" / "synthetic"
RESULTS = ROOT / "bench" / "results" / "reproduce"
FIGURES = ROOT / "docs" / "figures"
# run name: (config file, label in the tables); every run but the first fine-tunes from the first.
RUNS = {
    "maskrcnn": ("maskrcnn_small.yaml", "Mask R-CNN (base, not fine-tuned)"),
    "maskrcnn_finetune": ("maskrcnn_small_finetune.yaml", "Mask R-CNN + same fine-tune (control)"),
    "mrrcnn_no_sara": ("mrrcnn_small_no_sara.yaml", "RM without SARA"),
    "mrrcnn": ("mrrcnn_small.yaml", "MR R-CNN (RM + SARA)"),
    "mrrcnn_cls_only": ("mrrcnn_small_cls_only.yaml", "MR R-CNN, CLS only"),
    "mrrcnn_reg_only": ("mrrcnn_small_reg_only.yaml", "MR R-CNN, REG only"),
}
ALPHAS = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
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
# Two-sided 95% quantiles of Student's t by degrees of freedom (a table constant, not a measurement).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
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


def data_overrides(work: Path) -> list[str]:
    data = work / "data"
    return [
        f"data.train.images={data / 'train'}",
        f"data.train.annotations={data / 'annotations/train.json'}",
        f"data.val.images={data / 'val'}",
        f"data.val.annotations={data / 'annotations/val.json'}",
    ]


def run_overrides(run: str, work: Path, seed: int) -> list[str]:
    """The ``key=value`` overrides that turn a run's config file into this seed's run."""
    overrides = [f"train.output_dir={work / f'seed{seed}' / run}", f"train.seed={seed}"]
    if run != "maskrcnn":
        overrides.append(f"model.base_weights={work / f'seed{seed}' / 'maskrcnn' / 'final.pth'}")
    return data_overrides(work) + overrides


def command(run: str, work: Path, seed: int) -> str:
    """The command line that trains this run on its own, from the repository root (data overrides as ``$DATA``)."""
    overrides = run_overrides(run, work, seed)[len(data_overrides(work)) :]
    return " ".join(
        ["mrrcnn train --config", str((CONFIGS / RUNS[run][0]).relative_to(ROOT)), "$DATA", *overrides]
    )


def train_run(run: str, work: Path, seed: int) -> tuple[Path, bool]:
    """Train (or resume) one run unless it has finished; its ``final.pth``, and whether this call trained."""
    config = load_config(CONFIGS / RUNS[run][0], run_overrides(run, work, seed))
    output = Path(config["train"]["output_dir"])
    if (output / "final.pth").is_file():
        logger.info("seed %d %s: trained already", seed, run)
        return output / "final.pth", False
    resume = (output / "last.pth").is_file()
    logger.info(
        "seed %d %s: %s (%s)", seed, run, "resuming" if resume else "training", command(run, work, seed)
    )
    return train(config, resume=resume, progress=sys.stderr.isatty()), True


def evaluate(weights: Path, out: Path, work: Path, alpha: float | None = None) -> dict[str, float]:
    """Metrics of a checkpoint on val (MR R-CNN at ``alpha`` if given), cached in ``out``."""
    if out.is_file():
        return json.loads(out.read_text())
    model, config, _ = load_model(weights, overrides=data_overrides(work))
    if alpha is not None:
        model.roi_heads.alpha = alpha
    started = time.perf_counter()
    # COCO results records beside the checkpoint, for the diagnostics; only the metrics are committed.
    metrics = evaluate_model(model, config, "val", weights.parent if alpha is None else None, progress=False)
    metrics["eval_seconds"] = time.perf_counter() - started
    # No ground truth in a size range gives NaN: stored as null.
    metrics = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    return metrics


def diagnose(results_file: Path, gt_file: Path) -> dict[str, Any]:
    """Why AP moves: per ground-truth instance, huddled or isolated, (1) the class of the highest-scoring
    detection whose box has IoU >= 0.5 with it (confusion between classes), (2) the best box IoU among the
    detections of its own class (localisation)."""
    gt = COCO(str(gt_file))
    detections: dict[int, list[dict]] = {}
    for record in json.loads(results_file.read_text()):
        detections.setdefault(record["image_id"], []).append(record)
    out: dict[str, Any] = {
        subset: {"confusion": [[0] * 6 for _ in range(6)], "best_iou": []}
        for subset in ("huddled", "isolated")
    }
    for image_id in gt.getImgIds():
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        if not anns:
            continue
        gt_boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64)
        gt_boxes[:, 2:] += gt_boxes[:, :2]
        is_huddled = huddled(gt_boxes)
        dets = detections.get(image_id, [])
        det_boxes = torch.tensor([d["bbox"] for d in dets], dtype=torch.float64).reshape(-1, 4)
        det_boxes[:, 2:] += det_boxes[:, :2]
        scores = torch.tensor([d["score"] for d in dets])
        labels = torch.tensor([d["category_id"] for d in dets], dtype=torch.int64)
        iou = box_iou(gt_boxes, det_boxes)
        for k, ann in enumerate(anns):
            subset = out["huddled" if is_huddled[k] else "isolated"]
            overlapping = torch.where(iou[k] >= 0.5)[0]
            predicted = int(labels[overlapping[scores[overlapping].argmax()]]) if len(overlapping) else 0
            subset["confusion"][ann["category_id"]][predicted] += 1
            same = labels == ann["category_id"]
            subset["best_iou"].append(float(iou[k][same].max()) if same.any() else 0.0)
    return out


def figure_fig5(weights: dict[str, Path], work: Path, out: Path, count: int = 4) -> None:
    """The control against MR R-CNN on the val images with the most huddled instances (paper Fig. 5)."""
    dataset = CocoDetection(work / "data" / "val", work / "data" / "annotations" / "val.json")
    models = {title: load_model(path, overrides=data_overrides(work))[0] for title, path in weights.items()}
    pictures, titles = [], []
    with torch.no_grad():
        for index, num_huddled in most_huddled(dataset.coco, dataset.ids, count):
            image, target = dataset[index]
            truth = {
                **target,
                "scores": torch.ones(len(target["labels"])),
                "masks": target["masks"][:, None].float(),
            }
            pictures.append(draw_predictions(image, truth, dataset.categories, scale=3.0))
            titles.append(f"ground truth ({num_huddled} huddled)")
            for title, model in models.items():
                pictures.append(draw_predictions(image, model([image])[0], dataset.categories, scale=3.0))
                titles.append(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    side_by_side(pictures, titles, columns=1 + len(models)).save(out)


def run_seed(seed: int, work: Path, data_command: str) -> None:
    results = RESULTS / f"seed{seed}"
    results.mkdir(parents=True, exist_ok=True)
    timing_file = results / "train_seconds.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    weights = {}
    for run in RUNS:
        started = time.perf_counter()
        weights[run], trained = train_run(run, work, seed)
        if trained:
            # Summed over sessions when a training was interrupted and resumed.
            timing[run] = timing.get(run, 0.0) + time.perf_counter() - started
            timing_file.write_text(json.dumps(timing, indent=1))
    for run, path in weights.items():
        logger.info("seed %d %s: evaluating", seed, run)
        evaluate(path, results / f"{run}.json", work)
    for alpha in ALPHAS:
        evaluate(weights["mrrcnn"], results / f"mrrcnn_alpha{alpha:g}.json", work, alpha=alpha)
    for run in ("maskrcnn_finetune", "mrrcnn_no_sara", "mrrcnn"):
        out = results / f"{run}_diagnostics.json"
        if not out.is_file():
            diagnosis = diagnose(weights[run].parent / "results_val.json", work / "data/annotations/val.json")
            out.write_text(json.dumps(diagnosis))
    commands = {run: command(run, work, seed) for run in RUNS}
    commands["$DATA"] = " ".join(data_overrides(work))
    commands["data"] = data_command
    (results / "commands.json").write_text(json.dumps(commands, indent=1))
    if seed == 0 and not (FIGURES / "fig5_huddled.png").is_file():
        figure_fig5(
            {"Mask R-CNN + same fine-tune": weights["maskrcnn_finetune"], "MR R-CNN": weights["mrrcnn"]},
            work,
            FIGURES / "fig5_huddled.png",
        )


def _load(seed_dir: Path, name: str) -> dict[str, float] | None:
    path = seed_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _stat(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def report(out: Path = ROOT / "docs" / "RESULTS.md") -> None:
    """Write ``docs/RESULTS.md`` and its figures from the committed metrics of every seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted(int(p.name[4:]) for p in RESULTS.glob("seed*") if (p / "mrrcnn.json").is_file())
    if not seeds:
        raise SystemExit(f"no results under {RESULTS}: run bench/reproduce.py first")
    metrics = {run: [_load(RESULTS / f"seed{s}", run) for s in seeds] for run in RUNS}
    alphas = {a: [_load(RESULTS / f"seed{s}", f"mrrcnn_alpha{a:g}") for s in seeds] for a in ALPHAS}

    def cell(rows: list[dict | None], key: str) -> str:
        return _stat([r.get(key) if r else None for r in rows])

    def delta(run: str, key: str, reference: str = "maskrcnn_finetune") -> list[float]:
        return [m[key] - r[key] for m, r in zip(metrics[run], metrics[reference]) if m and r]

    header = "| run | paper AP_b / AP_m | " + " | ".join(name for _, name in COLUMNS) + " |\n"
    header += "|---|---|" + "---:|" * len(COLUMNS) + "\n"

    def table(runs: list[str]) -> str:
        lines = []
        for run in runs:
            paper = PAPER.get(run)
            paper_text = f"{paper[0]} / {paper[1]}" if paper else "-"
            lines.append(
                f"| {RUNS[run][1]} | {paper_text} | "
                + " | ".join(cell(metrics[run], k) for k, _ in COLUMNS)
                + " |"
            )
        return header + "\n".join(lines) + "\n"

    def delta_table(runs: list[str]) -> str:
        text = (
            "| run | " + " | ".join(name for _, name in COLUMNS) + " |\n|---|" + "---:|" * len(COLUMNS) + "\n"
        )
        for run in runs:
            text += f"| {RUNS[run][1]} | " + " | ".join(_stat(delta(run, k)) for k, _ in COLUMNS) + " |\n"
        return text

    FIGURES.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, key, paper_index, title in (
        (axes[0], "bbox/AP", 0, "box AP"),
        (axes[1], "segm/AP", 1, "mask AP"),
    ):
        for subset, style in (("", "o-"), ("huddled/", "s--"), ("isolated/", "^:")):
            means = [statistics.mean(r[subset + key] for r in alphas[a] if r) for a in ALPHAS]
            axis.plot(range(len(ALPHAS)), means, style, label=f"ours, {subset[:-1] or 'all'}")
        twin = axis.twinx()
        twin.plot(
            range(len(ALPHAS)),
            [PAPER_ALPHA[a][paper_index] for a in ALPHAS],
            "k-.",
            alpha=0.5,
            label="paper (COCO, right axis)",
        )
        twin.set_ylabel("paper AP (COCO)")
        axis.set_xticks(range(len(ALPHAS)), [f"{a:g}" for a in ALPHAS])
        axis.set_xlabel("alpha")
        axis.set_ylabel(f"{title} (synthetic val)")
        axis.set_title(title)
        lines = axis.get_legend_handles_labels()
        extra = twin.get_legend_handles_labels()
        axis.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=7)
    figure.tight_layout()
    figure.savefig(FIGURES / "alpha.png", dpi=120)
    plt.close(figure)

    diagnostics = {
        run: [
            json.loads((RESULTS / f"seed{s}" / f"{run}_diagnostics.json").read_text())
            for s in seeds
            if (RESULTS / f"seed{s}" / f"{run}_diagnostics.json").is_file()
        ]
        for run in ("maskrcnn_finetune", "mrrcnn_no_sara", "mrrcnn")
    }
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    diag_rows, diag = [], {}
    for axis, subset in zip(axes, ("huddled", "isolated")):
        for run, runs in diagnostics.items():
            ious = np.concatenate([d[subset]["best_iou"] for d in runs])
            axis.hist(ious, bins=np.linspace(0, 1, 21), histtype="step", label=RUNS[run][1])
            confusion = np.sum([d[subset]["confusion"] for d in runs], axis=0)
            found = confusion[1:, 1:].sum()
            right = np.trace(confusion[1:, 1:])
            diag[subset, run] = {
                "iou75": 100 * np.mean(ious >= 0.75),
                "iou": np.mean(ious),
                "confused": 100 * (found - right) / max(found, 1),
            }
            diag_rows.append(
                f"| {subset} | {RUNS[run][1]} | {len(ious)} | {100 * np.mean(ious >= 0.5):.1f} | "
                f"{diag[subset, run]['iou75']:.1f} | {diag[subset, run]['iou']:.3f} | "
                f"{100 * found / confusion[1:].sum():.1f} | {diag[subset, run]['confused']:.1f} |"
            )
        axis.set_title(f"{subset} instances: best same-class box IoU")
        axis.set_xlabel("IoU")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(FIGURES / "iou.png", dpi=120)
    plt.close(figure)

    commands = json.loads((RESULTS / f"seed{seeds[0]}" / "commands.json").read_text())
    seconds = {run: [m["eval_seconds"] for m in metrics[run] if m] for run in RUNS}
    timings = [json.loads((RESULTS / f"seed{s}" / "train_seconds.json").read_text()) for s in seeds]
    train_seconds = {run: [t[run] for t in timings if run in t] for run in RUNS}
    alpha_seconds = [sum(a[i]["eval_seconds"] for a in alphas.values() if a[i]) for i in range(len(seeds))]
    seed_minutes = [
        sum(t.values()) + sum(m[i]["eval_seconds"] for m in metrics.values() if m[i]) + alpha_seconds[i]
        for i, t in enumerate(timings)
    ]
    gain = {k: delta("mrrcnn", k) for k, _ in COLUMNS}
    sara = {k: delta("mrrcnn", k, "mrrcnn_no_sara") for k, _ in COLUMNS}

    def judge(values: list[float]) -> str | None:
        """ "a gain", "a loss" or "not distinguishable from zero" by a two-sided t-test at 95%; None for one seed."""
        if len(values) < 2:
            return None
        mean, spread = statistics.mean(values), statistics.stdev(values)
        bound = T95.get(len(values) - 1, 1.96) * spread / math.sqrt(len(values))
        return "a gain" if mean > bound else "a loss" if mean < -bound else "not distinguishable from zero"

    def verdict(values: list[float]) -> str:
        """The mean paired difference, and whether a two-sided t-test at 95% tells it from zero."""
        if judge(values) is None:
            return f"{_stat(values)} (one seed: no spread to judge it by)"
        return (
            f"{statistics.mean(values):+.1f} ± {statistics.stdev(values):.1f} over {len(values)} seeds, "
            f"{judge(values)} at 95% confidence"
        )

    def seen(values: list[float]) -> str:
        """How a difference reads: the test's word with several seeds, the sign alone with one."""
        word = judge(values)
        if word is not None:
            return word
        return "higher (one seed)" if statistics.mean(values) > 0 else "not higher (one seed)"

    def paper_gain(index: int, run: str, reference: str) -> str:
        return f"{PAPER[run][index] - PAPER[reference][index]:+.1f}"

    reg_vs_cls = {k: delta("mrrcnn_reg_only", k, "mrrcnn_cls_only") for k, _ in COLUMNS}
    huddled_excess = [h - i for h, i in zip(gain["huddled/bbox/AP"], gain["isolated/bbox/AP"])]
    best_alpha = max(ALPHAS, key=lambda a: statistics.mean(r["bbox/AP"] for r in alphas[a] if r))
    with_sara, without_sara = diag["huddled", "mrrcnn"], diag["huddled", "mrrcnn_no_sara"]
    control = diag["huddled", "maskrcnn_finetune"]

    text = f"""# Tables 3-5 in miniature: MR R-CNN on the synthetic huddled benchmark

Written by `python bench/reproduce.py` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC) from the metrics in
`bench/results/reproduce/` of seeds {", ".join(map(str, seeds))} ({len(seeds)} seed{"s" if len(seeds) > 1 else ""});
nothing here is typed by hand. Machine: {machine()}, torch {torch.__version__}.
Every number is COCO AP in percent on the synthetic val set (mean ± standard deviation over seeds when
there are several). The paper's numbers are R50-FPN on COCO val2017: a different data set and scale, put
beside ours only to show which claim each row tests.

## Setup

The benchmark (`mrrcnn synth`, `mrrcnn/data/synthetic.py`): 160-pixel images of shapes that differ by
outline only (same colour and texture distribution for every class), most of them in overlapping clusters;
an instance is *huddled* when its box has IoU >= 0.3 with another's, *isolated* otherwise. Huddled and
isolated AP are computed by marking the other subset as crowd (ignored) regions
(`mrrcnn/engine/coco_eval.py`).

Per seed, one Mask R-CNN (`maskrcnn_small`: a ResNet-10-FPN) trains from scratch; from that checkpoint every
other row fine-tunes for the same number of iterations with the same recipe (paper 4.1 in miniature:
10x lower learning rate, one step decay). The **control** fine-tunes the Mask R-CNN itself, so that
"fine-tuned longer" and "has a refining module" are not confused: the paper compares with the Mask R-CNN it
started from. The commands of seed {seeds[0]}, from the repository root, after the data
(`{commands["data"]}`), with `DATA="{commands["$DATA"]}"`:

{chr(10).join(f"- {RUNS[run][1]}: `{commands[run]}`" for run in RUNS)}

`python bench/reproduce.py --seeds {" ".join(map(str, seeds))}` runs them all, then the evaluations below.

## Table 3: does the refining module help, and does SARA?

{table(["maskrcnn", "maskrcnn_finetune", "mrrcnn_no_sara", "mrrcnn"])}
Differences from the control, per seed, then averaged:

{delta_table(["mrrcnn_no_sara", "mrrcnn"])}
- MR R-CNN over the control, box AP: {verdict(gain["bbox/AP"])}; mask AP: {verdict(gain["segm/AP"])}.
- On huddled instances, box AP: {verdict(gain["huddled/bbox/AP"])}; mask AP: {verdict(gain["huddled/segm/AP"])}.
- On isolated instances, box AP: {verdict(gain["isolated/bbox/AP"])}; mask AP: {verdict(gain["isolated/segm/AP"])}.
- SARA (MR R-CNN over RM without SARA), box AP: {verdict(sara["bbox/AP"])}; mask AP: {verdict(sara["segm/AP"])};
  huddled box AP: {verdict(sara["huddled/bbox/AP"])}.

## Table 4: classification or regression?

{table(["maskrcnn_finetune", "mrrcnn_cls_only", "mrrcnn_reg_only", "mrrcnn"])}
{delta_table(["mrrcnn_cls_only", "mrrcnn_reg_only", "mrrcnn"])}
## Table 5: alpha, without retraining

| alpha | paper AP_b / AP_m | box AP | mask AP | huddled box AP | huddled mask AP | isolated box AP | isolated mask AP |
|---:|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(f"| {a:g} | {PAPER_ALPHA[a][0]} / {PAPER_ALPHA[a][1]} | " + " | ".join(cell(alphas[a], k) for k in ("bbox/AP", "segm/AP", "huddled/bbox/AP", "huddled/segm/AP", "isolated/bbox/AP", "isolated/segm/AP")) + " |" for a in ALPHAS)}

![AP against alpha](figures/alpha.png)

## Why: classes and boxes of huddled instances

For every ground-truth instance of val, summed over seeds: *found* is the share with a detection of any
class whose box has IoU >= 0.5 with it, *confused* the share of those whose highest-scoring such detection
has another class; *IoU* is the best box IoU among detections of the instance's own class.

| instances | run | count | IoU >= 0.5 (%) | IoU >= 0.75 (%) | mean IoU | found (%) | confused (%) |
|---|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(diag_rows)}

![IoU of the best same-class box](figures/iou.png)

## Mask R-CNN (control) against MR R-CNN on the most huddled val images (paper Fig. 5)

Seed 0; detections scoring 0.5 or more.

![control vs MR R-CNN](figures/fig5_huddled.png)

## Reading: what the numbers say about the paper's claims

Written by the script from the differences above; a verdict needs two or more seeds.

- **The refining module helps** (paper: {paper_gain(0, "mrrcnn", "maskrcnn_finetune")} box /
  {paper_gain(1, "mrrcnn", "maskrcnn_finetune")} mask AP over Mask R-CNN). Over the equal-compute control,
  box AP is {seen(gain["bbox/AP"])} and mask AP {seen(gain["segm/AP"])}.
- **SARA helps** (paper: {paper_gain(0, "mrrcnn", "mrrcnn_no_sara")} box / {paper_gain(1, "mrrcnn", "mrrcnn_no_sara")}
  mask AP over RM without SARA). Here box AP is {seen(sara["bbox/AP"])}, mask AP {seen(sara["segm/AP"])},
  huddled box AP {seen(sara["huddled/bbox/AP"])}. On huddled instances, where the mask weighting should
  show, {with_sara["iou75"]:.1f}% get a same-class box with IoU >= 0.75 with SARA against
  {without_sara["iou75"]:.1f}% without (control {control["iou75"]:.1f}%), and {with_sara["confused"]:.1f}% of the
  found ones are given another class against {without_sara["confused"]:.1f}% (control {control["confused"]:.1f}%):
  SARA gives {"tighter" if with_sara["iou75"] > without_sara["iou75"] else "no tighter"} boxes and
  {"fewer" if with_sara["confused"] < without_sara["confused"] else "no fewer"} neighbour-class mistakes than
  plain RoIAlign here.
- **Mostly through regression** (paper: REG only {PAPER["mrrcnn_reg_only"][0]} against CLS only
  {PAPER["mrrcnn_cls_only"][0]} box AP). REG only against CLS only, box AP: {verdict(reg_vs_cls["bbox/AP"])};
  mask AP: {verdict(reg_vs_cls["segm/AP"])}.
- **Most on huddled instances.** The module's box-AP gain on huddled minus that on isolated instances:
  {verdict(huddled_excess)}.
- **alpha in [0.5, 2] is best** (paper, Table 5). The best box AP here is at alpha = {best_alpha:g}.

What would test the claims better than this miniature: more seeds (the differences are a point or two,
the spread between seeds is of that order); a base Mask R-CNN trained to convergence, so that fine-tuning
gains come from the module and not from more training (the control measures that share here); COCO itself
with `configs/coco/` (torchvision's pretrained Mask R-CNN, 4 GPUs, 9k iterations); and a synthetic variant
whose neighbours are harder to tell apart by outline, so that classification of huddled instances has more
room to improve.

## What it took

Training minutes per run on this machine, mean over seeds: {", ".join(f"{RUNS[r][1]} {statistics.mean(v) / 60:.1f}" for r, v in train_seconds.items() if v)};
a whole seed (six trainings, {len(RUNS) + len(ALPHAS)} evaluations): {_stat([t / 60 for t in seed_minutes])} minutes.
A training that was interrupted (a session ended) and resumed counts only the session that finished it.
Seconds per evaluation of the val images: {", ".join(f"{RUNS[r][1]} {statistics.mean(v):.0f}" for r, v in seconds.items() if v)}.
The speed and memory of the refining module at COCO scale are in `docs/benchmarks/model.md`.
"""
    out.write_text(text)
    logger.info("wrote %s", out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, default=Path("runs/reproduce"), help="data and checkpoints")
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="only rewrite docs/RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.report_only:
        data_command = (
            f"mrrcnn synth {args.work / 'data'} --train {args.train_images} --val {args.val_images} "
            f"--seed {args.data_seed}"
        )
        if not (args.work / "data" / "annotations" / "val.json").is_file():
            make_synthetic(args.work / "data", args.train_images, args.val_images, seed=args.data_seed)
        for seed in args.seeds:
            run_seed(seed, args.work, data_command)
            report()
    else:
        report()


if __name__ == "__main__":
    main()
