"""What the reproduction trains and evaluates, per benchmark and seed; every step resumable and cached.

A finished training (``final.pth``) or evaluation (its metrics JSON) is skipped, an interrupted training
resumes exactly from its ``last.pth``. Checkpoints and data live under the work folder (not committed);
metrics go to ``bench/results/<benchmark>/seed<S>/`` (committed).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import machine
from filelock import FileLock
from torch import Tensor

from mrrcnn.config import CONFIG_DIR, load_config
from mrrcnn.data import make_synthetic
from mrrcnn.engine.checkpoint import load_model
from mrrcnn.engine.train import train
from mrrcnn.evaluation.evaluate import evaluate_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
FIGURES = ROOT / "docs" / "figures"
CONFIGS = CONFIG_DIR / "synthetic"
logger = logging.getLogger("reproduce")

# run name: (config file under CONFIGS, label in the tables); every run but the first fine-tunes from it.
RUNS = {
    "maskrcnn": ("maskrcnn_small.yaml", "Mask R-CNN (base, not fine-tuned)"),
    "maskrcnn_finetune": ("maskrcnn_small_finetune.yaml", "Mask R-CNN + same fine-tune (control)"),
    "mrrcnn_no_sara": ("mrrcnn_small_no_sara.yaml", "RM without SARA"),
    "mrrcnn": ("mrrcnn_small.yaml", "MR R-CNN (RM + SARA)"),
    "mrrcnn_oracle": ("mrrcnn_small_oracle.yaml", "SARA on ground-truth masks (diagnostic)"),
    "mrrcnn_oracle_others": (
        "mrrcnn_small_oracle_others.yaml",
        "SARA on 1 - other instances' masks (diagnostic)",
    ),
    "mrrcnn_cls_only": ("mrrcnn_small_cls_only.yaml", "MR R-CNN, CLS only"),
    "mrrcnn_reg_only": ("mrrcnn_small_reg_only.yaml", "MR R-CNN, REG only"),
    # Beyond the paper (bench/reproduction/beyond.py): SARA weighted otherwise than by the own mask.
    "mrrcnn_others": ("mrrcnn_small_others.yaml", "SARA by 1 - the others' masks (others)"),
    "mrrcnn_ownership": ("mrrcnn_small_ownership.yaml", "SARA by own x (1 - others) (ownership)"),
    "mrrcnn_iterative": ("mrrcnn_small_iterative.yaml", "SARA by the refined mask (iterative)"),
}
# Trained first: Table 3's rows and the oracle; the ablations of Table 4 after, when asked for.
CORE_RUNS = (
    "maskrcnn",
    "maskrcnn_finetune",
    "mrrcnn_no_sara",
    "mrrcnn",
    "mrrcnn_oracle",
    "mrrcnn_oracle_others",
)
ALPHAS = (0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
# The runs whose val detections are diagnosed (boxes found, classes confused) and reported.
DIAGNOSED = ("maskrcnn_finetune", "mrrcnn_no_sara", "mrrcnn", "mrrcnn_oracle", "mrrcnn_oracle_others")


@dataclass(frozen=True)
class Benchmark:
    """A synthetic benchmark: its data (``make_synthetic`` arguments) and, for a ``study``, where its
    results go (``bench/results/<study>[_<name>]``) and its data and checkpoints (``runs/...`` alike)."""

    name: str
    title: str
    synth: dict[str, Any] = field(default_factory=dict)
    study: str = "reproduce"

    @property
    def results(self) -> Path:
        return RESULTS / (self.study if self.name == "synthetic" else f"{self.study}_{self.name}")

    @property
    def default_work(self) -> Path:
        return Path("runs") / self.results.name

    def synth_flags(self) -> str:
        """The ``mrrcnn synth`` options that make this benchmark's data."""
        return "".join(f" --{key.replace('_', '-')} {value}" for key, value in self.synth.items())


BENCHMARKS = {
    "synthetic": Benchmark("synthetic", "the synthetic huddled benchmark"),
    "uniform": Benchmark(
        "uniform",
        "the harder variant: one colour and texture per image, outlines only, more crowding",
        {"appearance": "uniform", "crowding": 1.0},
    ),
}


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
    """The command line that trains this run on its own (data overrides as ``$DATA``)."""
    overrides = run_overrides(run, work, seed)[len(data_overrides(work)) :]
    return " ".join(["mrrcnn train --config", f"synthetic/{Path(RUNS[run][0]).stem}", "$DATA", *overrides])


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


def evaluate(
    weights: Path,
    out: Path,
    work: Path,
    alpha: float | None = None,
    sara_masks: str | None = None,
    oracle_masks: Callable[[dict[str, Any]], Tensor] | None = None,
    records: bool = False,
) -> dict[str, Any]:
    """Metrics of a checkpoint on val, cached in ``out``: MR R-CNN at ``alpha`` and with Shape-aware
    RoIAlign reading ``sara_masks`` (``oracle_masks`` applied to the ground truth) if given; with
    ``records``, COCO results records beside the checkpoint (for the diagnostics; not committed)."""
    if out.is_file():
        return json.loads(out.read_text())
    model, config, _ = load_model(weights, overrides=data_overrides(work))
    if alpha is not None:
        model.roi_heads.alpha = alpha
    if sara_masks is not None:
        model.roi_heads.sara_masks = sara_masks
    started = time.perf_counter()
    metrics = evaluate_model(
        model, config, "val", weights.parent if records else None, progress=False, oracle_masks=oracle_masks
    )
    metrics["eval_seconds"] = time.perf_counter() - started
    metrics["device"] = machine()
    # No ground truth in a size range gives NaN: stored as null.
    metrics = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    return metrics


def make_data(benchmark: Benchmark, work: Path, train_images: int, val_images: int, data_seed: int) -> str:
    """Write the benchmark's data under ``work/data`` unless it is there; the command that does the same."""
    if not (work / "data" / "annotations" / "val.json").is_file():
        make_synthetic(work / "data", train_images, val_images, seed=data_seed, **benchmark.synth)
    return (
        f"mrrcnn synth {work / 'data'} --train {train_images} --val {val_images} --seed {data_seed}"
        f"{benchmark.synth_flags()}"
    )


def train_runs(benchmark: Benchmark, runs: tuple[str, ...], seed: int, work: Path) -> dict[str, Path]:
    """Train this seed's ``runs`` (and the base they start from); their ``final.pth`` by run name.

    Training time is added to ``train_seconds.json`` only for runs trained by this call (summed over
    sessions when a training was interrupted and resumed). The file is re-read under a lock for each
    addition, so that processes training other runs of the same seed at once keep each other's times."""
    results = benchmark.results / f"seed{seed}"
    results.mkdir(parents=True, exist_ok=True)
    timing_file = results / "train_seconds.json"
    weights = {}
    for run in ("maskrcnn", *(r for r in runs if r != "maskrcnn")):
        started = time.perf_counter()
        weights[run], trained = train_run(run, work, seed)
        if trained:
            with FileLock(timing_file.with_suffix(".lock")):
                timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
                timing[run] = timing.get(run, 0.0) + time.perf_counter() - started
                timing_file.write_text(json.dumps(timing, indent=1))
    return weights


def write_commands(
    benchmark: Benchmark, runs: tuple[str, ...], seed: int, work: Path, data_command: str
) -> None:
    commands = {run: command(run, work, seed) for run in runs}
    commands["$DATA"] = " ".join(data_overrides(work))
    commands["data"] = data_command
    path = benchmark.results / f"seed{seed}" / "commands.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**previous, **commands}, indent=1))
