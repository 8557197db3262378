"""The end-to-end demo: synthetic huddled data, Mask R-CNN from scratch, MR R-CNN fine-tuned from it, compared."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from PIL.Image import Image

from ..config import CONFIG_DIR, load_config
from ..data import CocoDetection, make_synthetic, most_huddled
from ..evaluation.coco_eval import format_table
from ..evaluation.evaluate import evaluate_model
from ..inference.predictor import Predictor
from ..inference.visualize import draw_detections, side_by_side
from .train import train

logger = logging.getLogger(__name__)

CONFIGS = CONFIG_DIR / "synthetic"
# (column title, run folder under the demo's, config file under CONFIGS, folder of the run it starts from)
RUNS = (
    ("Mask R-CNN", "maskrcnn", "maskrcnn_small.yaml", None),
    # The equal-compute control: Mask R-CNN fine-tuned exactly as long as MR R-CNN is.
    ("Mask R-CNN +ft", "maskrcnn_finetune", "maskrcnn_small_finetune.yaml", "maskrcnn"),
    ("MR R-CNN", "mrrcnn", "mrrcnn_small.yaml", "maskrcnn"),
)
# The figure compares the method with its equal-compute control.
FIGURE_MODELS = ("Mask R-CNN +ft", "MR R-CNN")
# The least score of a detection that the figure draws.
DRAWN_SCORE = 0.5
# The comparison's rows: COCO AP overall, then on huddled and isolated instances; the matching F1 and
# panoptic quality at IoU 0.5 (score >= eval.score_threshold), overall and on touching instances.
TABLE_KEYS = tuple(
    f"{subset}{iou_type}/{metric}"
    for subset in ("", "huddled/", "isolated/")
    for iou_type in ("bbox", "segm")
    for metric in ("AP", "AP50", "AP75")
) + tuple(
    f"{subset}matching/0.5/{metric}" for subset in ("", "touching/") for metric in ("f1", "panoptic_quality")
)


def _run_config(
    name: str, out_dir: Path, data: dict[str, Any], iterations: int, seed: int, base: Path | None
) -> dict[str, Any]:
    """A synthetic config with the demo's data, output folder, base weights and iterations.

    Learning-rate milestones keep their place relative to the run's length.
    """
    config = load_config(CONFIGS / name)
    config["data"]["train"] = {
        "images": data["train"]["images_dir"],
        "annotations": data["train"]["annotation_file"],
    }
    config["data"]["val"] = {
        "images": data["val"]["images_dir"],
        "annotations": data["val"]["annotation_file"],
    }
    if base is not None:
        config["model"]["base_weights"] = str(base)
    train_config = config["train"]
    train_config["milestones"] = [
        m * iterations // train_config["iterations"] for m in train_config["milestones"]
    ]
    train_config.update(output_dir=str(out_dir), iterations=iterations, seed=seed)
    return config


def run_demo(
    out_dir: str | Path = "runs/demo",
    train_images: int = 240,
    val_images: int = 60,
    iterations: int = 600,
    finetune_iterations: int = 200,
    seed: int = 0,
    image_size: int = 160,
    comparison_images: int = 3,
    progress: bool = True,
) -> dict[str, Any]:
    """Show MR R-CNN against Mask R-CNN on the synthetic huddled benchmark, from nothing.

    1. ``make_synthetic`` writes ``train_images`` + ``val_images`` images to ``out_dir/data``;
    2. ``maskrcnn_small`` trains from scratch for ``iterations`` (``out_dir/maskrcnn``);
    3. from it, ``mrrcnn_small`` (``out_dir/mrrcnn``) and, as the equal-compute control, ``maskrcnn_small``
       (``out_dir/maskrcnn_finetune``) are fine-tuned for ``finetune_iterations`` with the same recipe;
    4. all three are evaluated on val;
    5. their AP table is printed and written to ``out_dir/results.md``;
    6. ``out_dir/comparison.png`` shows the control's and MR R-CNN's predictions on the
       ``comparison_images`` val images with the most huddled instances, one row per image.

    A run whose ``final.pth`` exists already is not trained again, unless the run it starts from was.
    Everything runs on CUDA when available, else on the CPU.

    Returns:
        ``metrics`` (by model title, as :func:`mrrcnn.evaluation.coco_eval.evaluate_split` returns them),
        ``table`` (markdown), and the paths ``results``, ``comparison`` and ``weights`` (by model title).
    """
    for name, value in (
        ("train_images", train_images),
        ("val_images", val_images),
        ("iterations", iterations),
        ("finetune_iterations", finetune_iterations),
        ("comparison_images", comparison_images),
    ):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for _, _, name, _ in RUNS:
        if not (CONFIGS / name).is_file():
            raise ValueError(
                f"demo config {CONFIGS / name} is missing: the mrrcnn installation is incomplete"
            )
    started = time.perf_counter()
    out_dir = Path(out_dir)
    logger.info(
        "[1/6] synthetic data: %d train + %d val images -> %s", train_images, val_images, out_dir / "data"
    )
    data = make_synthetic(out_dir / "data", train_images, val_images, seed=seed, image_size=image_size)
    for split in ("train", "val"):
        logger.info(
            "%s: %d instances, %.0f%% huddled",
            split,
            data[split]["num_instances"],
            100 * data[split]["huddled_fraction"],
        )

    weights = _train_runs(out_dir, data, iterations, finetune_iterations, seed, progress)

    logger.info("[4/6] evaluating on val")
    predictors, metrics, blind = {}, {}, []
    for title, folder, _, _ in RUNS:
        predictors[title] = Predictor.from_checkpoint(weights[title])
        metrics[title] = evaluate_model(
            predictors[title].model, predictors[title].config, "val", out_dir / folder, progress=progress
        )
        records = json.loads((out_dir / folder / "results_val.json").read_text())
        if not any(record["score"] >= DRAWN_SCORE for record in records):
            blind.append(title)

    logger.info("[5/6] results")
    table = format_table({title: {key: m[key] for key in TABLE_KEYS} for title, m in metrics.items()})
    if blind:
        table += (
            f"\n{', '.join(blind)} detected nothing (no detection scoring {DRAWN_SCORE} or more on the val "
            f"images): {iterations} + {finetune_iterations} iterations on {train_images} images are too few "
            "to train a detector, and these numbers mean nothing. The defaults (mrrcnn demo) train enough.\n"
        )
    results = out_dir / "results.md"
    results.write_text(
        f"# MR R-CNN vs Mask R-CNN, synthetic huddled benchmark\n\n"
        f"{train_images} train / {val_images} val images of {image_size} px, seed {seed}; Mask R-CNN trained "
        f"{iterations} iterations from scratch; from it, MR R-CNN and (the equal-compute control, +ft) Mask "
        f"R-CNN fine-tuned {finetune_iterations} more with the same recipe. COCO AP (%), overall and on "
        f"huddled / isolated instances; matching F1 and panoptic quality (%) at IoU 0.5, overall and on "
        f"touching instances (masks within 2 px of another's).\n\n{table}"
    )
    print(table, end="")

    comparison = out_dir / "comparison.png"
    logger.info("[6/6] comparison on the most huddled val images -> %s", comparison)
    _comparison_figure(predictors, data["val"], comparison_images, blind).save(comparison)
    logger.info("done in %.1f minutes: %s, %s", (time.perf_counter() - started) / 60, results, comparison)
    return {
        "metrics": metrics,
        "table": table,
        "results": results,
        "comparison": comparison,
        "weights": weights,
    }


def _train_runs(
    out_dir: Path, data: dict[str, Any], iterations: int, finetune_iterations: int, seed: int, progress: bool
) -> dict[str, Path]:
    """Train (or find already trained) each of ``RUNS``; their ``final.pth`` by column title."""
    weights: dict[str, Path] = {}
    trained: set[str] = set()
    for title, folder, config_name, start in RUNS:
        length = iterations if start is None else finetune_iterations
        base = None if start is None else out_dir / start / "final.pth"
        config = _run_config(config_name, out_dir / folder, data, length, seed, base)
        final = out_dir / folder / "final.pth"
        # A fine-tuned run is stale once the run it started from was trained again.
        if final.is_file() and start not in trained:
            logger.info("[2-3/6] %s: %s exists, not training again", title, final)
        else:
            logger.info("[2-3/6] %s: training %s for %d iterations", title, config["model"]["name"], length)
            final = train(config, progress=progress)
            trained.add(folder)
        weights[title] = final
    return weights


def _comparison_figure(
    predictors: dict[str, Predictor], val: dict[str, Any], num_images: int, blind: list[str]
) -> Image:
    """``FIGURE_MODELS``' predictions side by side on the ``num_images`` most huddled images of ``val``; a
    picture without detections says so, and of the ``blind`` models (none on any val image) why.

    ``val`` is the split's entry of :func:`mrrcnn.data.make_synthetic`'s result.
    """
    dataset = CocoDetection(val["images_dir"], val["annotation_file"], targets=False)
    pictures, titles = [], []
    for index, num_huddled in most_huddled(dataset.coco, dataset.ids, num_images):
        image, _ = dataset[index]
        file_name = dataset.coco.imgs[dataset.ids[index]]["file_name"]
        for title in FIGURE_MODELS:
            detections = predictors[title](image, file_name)
            kept = detections.select(detections.scores >= DRAWN_SCORE)
            pictures.append(draw_detections(image, kept, dataset.categories, scale=3.0))
            empty = "" if len(kept) else "; nothing detected"
            why = " (too little training to mean anything)" if empty and title in blind else ""
            titles.append(f"{title}: {file_name} ({num_huddled} huddled){empty}{why}")
    return side_by_side(pictures, titles, columns=len(FIGURE_MODELS))
