"""Beyond the paper: SARA weighted by the other instances' predicted masks, or by better masks, as a trial.

The plan is ``docs/preregistration/beyond_the_paper.md``, committed before the first result; the constants
here are that plan, and :func:`choose` its decision rule. ``python bench/reproduce.py --study beyond``
trains and evaluates the selection seeds; ``--confirm`` the confirmation seeds of the chosen variant,
once every selection seed is in. Every step is resumable and cached, as in the reproduction
(``bench/reproduction/runs.py``); metrics go to ``bench/results/beyond[_uniform]/seed<S>/``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
from torch import Tensor, nn

from mrrcnn.data import CocoDetection
from mrrcnn.engine.checkpoint import load_model

from .runs import BENCHMARKS, ROOT, Benchmark, data_overrides, evaluate, logger, train_runs, write_commands
from .sara import detected_mask_quality, stage1_model

STUDY = "beyond"
PREREGISTRATION = ROOT / "docs" / "preregistration" / "beyond_the_paper.md"
BASELINE, OWN = "mrrcnn_no_sara", "mrrcnn"
CANDIDATES = ("mrrcnn_others", "mrrcnn_ownership", "mrrcnn_iterative")
VARIANTS = (BASELINE, OWN, *CANDIDATES)
SELECTION_SEEDS = {"synthetic": (0, 1, 2, 3, 4), "uniform": (0, 1, 2)}
CONFIRMATION_SEEDS = {"synthetic": (5, 6, 7), "uniform": (3, 4, 5)}
METRICS = ("bbox/AP", "huddled/bbox/AP", "segm/AP", "huddled/segm/AP")
GOAL_BOX_AP = 0.9
TIE_AP = 0.05
STUDY_BENCHMARKS = {name: Benchmark(b.name, b.title, b.synth, study=STUDY) for name, b in BENCHMARKS.items()}


def choose(gains: dict[str, dict[str, dict[str, list[float]]]]) -> str:
    """The decision rule: ``gains[benchmark][run][metric]`` are the per-seed differences over RM without
    SARA on the selection seeds; the candidate with the largest mean box-AP gain averaged over the
    benchmarks, ties (within :data:`TIE_AP`) broken by huddled box AP."""

    def score(run: str, metric: str) -> float:
        return statistics.mean(statistics.mean(gains[b][run][metric]) for b in gains)

    best = max(score(run, "bbox/AP") for run in CANDIDATES)
    tied = [run for run in CANDIDATES if best - score(run, "bbox/AP") <= TIE_AP]
    return max(tied, key=lambda run: score(run, "huddled/bbox/AP"))


class IterativeMasks(nn.Module):
    """An MR R-CNN's stage-1 detections with the masks ``sara_weighting="iterative"`` reads (the refining
    mask head's on the stage-1 boxes), pasted into the image: torchvision's detection output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        model, heads = self.model, self.model.roi_heads
        original_sizes = [image.shape[-2:] for image in images]
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        features = {k: v.contiguous(memory_format=torch.channels_last) for k, v in features.items()}
        refining_input, _, scores = heads.stage1_predict(features, proposals, batch.image_sizes)
        masks = heads._sara_masks(features, refining_input, batch.image_sizes, None, None)
        counts = [b.shape[0] for b in refining_input.boxes]
        detections = [
            {"boxes": b, "labels": c, "scores": s, "masks": m[:, None]}
            for b, c, s, m in zip(
                refining_input.boxes,
                refining_input.classes.split(counts),
                scores.split(counts),
                masks.split(counts),
            )
        ]
        return model.transform.postprocess(detections, batch.image_sizes, original_sizes)


@torch.no_grad()
def read_mask_quality(weights: Path, work: Path) -> dict[str, float]:
    """The mean IoU of the masks a variant's SARA reads (the SARA study's section-3 measure): stage 1's
    masks, or for ``iterative`` the refining mask head's on stage 1's boxes."""
    model, config, _ = load_model(weights, overrides=data_overrides(work))
    iterative = getattr(model.roi_heads, "sara_weighting", "own") == "iterative"
    detector = IterativeMasks(model).eval() if iterative else stage1_model(model)
    dataset = CocoDetection(config["data"]["val"]["images"], config["data"]["val"]["annotations"])
    return detected_mask_quality(detector, dataset)


def run_seed(benchmark: Benchmark, seed: int, runs: tuple[str, ...], work: Path, data_command: str) -> None:
    """Train and evaluate one seed's ``runs`` (and their base), with the quality of the masks each SARA
    variant reads; every step skipped when its output exists, the whole seed when all its results are in
    (so a machine without its checkpoints does not train it again)."""
    results = benchmark.results / f"seed{seed}"
    outputs = ["commands.json", *(f"{run}.json" for run in ("maskrcnn", *runs))]
    outputs += [f"{run}_read_masks.json" for run in runs if run in (OWN, *CANDIDATES)]
    if all((results / name).is_file() for name in outputs):
        logger.info("seed %d: every result in %s, skipped", seed, results)
        return
    weights = train_runs(benchmark, runs, seed, work)
    for run, path in weights.items():
        evaluate(path, results / f"{run}.json", work)
        out = results / f"{run}_read_masks.json"
        if run in (OWN, *CANDIDATES) and not out.is_file():
            out.write_text(json.dumps(read_mask_quality(path, work), indent=1))
    write_commands(benchmark, tuple(weights), seed, work, data_command)


def selection_gains(benchmarks: dict[str, Benchmark]) -> dict[str, dict[str, dict[str, list[float]]]] | None:
    """Every candidate's per-seed differences over RM without SARA on each benchmark's selection seeds,
    or None while a selection seed is missing."""
    gains: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, benchmark in benchmarks.items():
        gains[name] = {run: {metric: [] for metric in METRICS} for run in CANDIDATES}
        for seed in SELECTION_SEEDS[name]:
            paths = {
                run: benchmark.results / f"seed{seed}" / f"{run}.json" for run in (BASELINE, *CANDIDATES)
            }
            if not all(p.is_file() for p in paths.values()):
                return None
            metrics = {run: json.loads(p.read_text()) for run, p in paths.items()}
            for run in CANDIDATES:
                for metric in METRICS:
                    gains[name][run][metric].append(metrics[run][metric] - metrics[BASELINE][metric])
    return gains
