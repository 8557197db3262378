"""The ``mrrcnn`` command: ``synth``, ``train``, ``eval``, ``predict`` and ``demo``.

Bad input (a ``ValueError`` or ``OSError`` from the library) ends the command with one line
``mrrcnn <command>: error: ...`` and exit status 2, a diverged training (``FloatingPointError``) likewise
with status 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import load_config
from .data import make_synthetic
from .engine import distributed
from .engine.coco_eval import SUBSETS, format_table
from .engine.demo import run_demo
from .engine.evaluate import evaluate_model, load_model
from .engine.predict import predict
from .engine.train import train


def _synth(args: argparse.Namespace) -> None:
    summary = make_synthetic(args.out, args.train, args.val, args.seed, args.image_size, args.crowding)
    for split in ("train", "val"):
        s = summary[split]
        print(
            f"{split}: {s['num_images']} images, {s['num_instances']} instances, "
            f"{100 * s['huddled_fraction']:.1f}% huddled -> {s['images_dir']}, {s['annotation_file']}"
        )


def _train(args: argparse.Namespace) -> None:
    final = train(load_config(args.config, args.overrides), resume=args.resume, progress=not args.no_progress)
    # Under torchrun every process returns here; one line is enough.
    if os.environ.get("RANK", "0") == "0":
        print(final)


def _eval(args: argparse.Namespace) -> None:
    # Under torchrun every process evaluates a shard of the images on its own GPU.
    created = distributed.init_distributed()
    try:
        config = load_config(args.config) if args.config is not None else None
        device = distributed.device() if created else args.device
        model, config, _ = load_model(args.weights, config, device, args.overrides)
        out = args.out if args.out is not None else Path(args.weights).parent
        metrics = evaluate_model(model, config, args.split, out, progress=not args.no_progress)
    finally:
        if created:
            distributed.cleanup()
    if not metrics:  # not rank 0
        return
    # One column per instance subset; rows are "{iou_type}/{metric}".
    columns = {"overall": {k: v for k, v in metrics.items() if not k.startswith(SUBSETS)}}
    for subset in SUBSETS:
        prefix = f"{subset}/"
        columns[subset] = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
    print(format_table(columns), end="")
    print(f"results and metrics: {out}/results_{args.split}.json, {out}/metrics_{args.split}.json")


def _predict(args: argparse.Namespace) -> None:
    path = predict(
        args.weights,
        args.inputs,
        args.out,
        config=load_config(args.config) if args.config is not None else None,
        score_threshold=args.score_threshold,
        device=args.device,
        batch_size=args.batch_size,
        overrides=args.overrides,
        progress=not args.no_progress,
    )
    print(path)


def _demo(args: argparse.Namespace) -> None:
    result = run_demo(
        args.out,
        train_images=args.train_images,
        val_images=args.val_images,
        iterations=args.iterations,
        finetune_iterations=args.finetune_iterations,
        seed=args.seed,
        image_size=args.image_size,
        comparison_images=args.comparison_images,
        progress=not args.no_progress,
    )
    print(f"table: {result['results']}\ncomparison: {result['comparison']}")


def _defaults(function: Callable) -> dict[str, Any]:
    """The default values of ``function``'s parameters: the library's defaults are the command's."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand; each sets ``func`` to the function that runs it."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.lr=0.01 model.alpha=0.5",
    )

    parser = argparse.ArgumentParser(prog="mrrcnn", description="Mask Refining R-CNN on torchvision.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "synth", parents=[common], help="write the synthetic huddled-instance benchmark (COCO format)"
    )
    p.add_argument("out", type=Path, metavar="OUT", help="output folder")
    p.add_argument("--train", type=int, default=1000, help="training images (default: %(default)s)")
    p.add_argument("--val", type=int, default=200, help="validation images (default: %(default)s)")
    synth = _defaults(make_synthetic)
    p.add_argument("--seed", type=int, default=synth["seed"], help="random seed (default: %(default)s)")
    p.add_argument(
        "--image-size",
        type=int,
        default=synth["image_size"],
        metavar="PX",
        help="image side (default: %(default)s)",
    )
    p.add_argument(
        "--crowding",
        type=float,
        default=synth["crowding"],
        metavar="F",
        help="expected fraction of instances drawn in clusters (default: %(default)s)",
    )
    p.set_defaults(func=_synth)

    p = commands.add_parser(
        "train",
        parents=[common, overrides],
        help="train a model (also under torchrun)",
        epilog="Multi-GPU: torchrun --nproc_per_node=N -m mrrcnn train --config FILE",
    )
    p.add_argument("--config", required=True, type=Path, help="YAML config, see configs/")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.set_defaults(func=_train)

    p = commands.add_parser("eval", parents=[common, device, overrides], help="COCO AP of a checkpoint")
    p.add_argument("--weights", required=True, type=Path, help="checkpoint (.pth)")
    p.add_argument("--config", type=Path, help="YAML config (default: the one the checkpoint carries)")
    p.add_argument("--split", default="val", help="data split of the config (default: %(default)s)")
    p.add_argument("--out", type=Path, help="folder for results/metrics json (default: the checkpoint's)")
    p.set_defaults(func=_eval)

    p = commands.add_parser(
        "predict", parents=[common, device], help="draw and save a checkpoint's detections"
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument("--weights", required=True, type=Path, help="checkpoint (.pth)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--config", type=Path, help="YAML config (default: the one the checkpoint carries)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, repeatable, e.g. --set model.alpha=0.5",
    )
    p.add_argument(
        "--score-threshold", type=float, default=0.5, help="least score drawn (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default: %(default)s)")
    p.set_defaults(func=_predict)

    p = commands.add_parser(
        "demo", parents=[common], help="synthetic data, Mask R-CNN vs MR R-CNN, table and figure"
    )
    demo = _defaults(run_demo)
    p.add_argument(
        "--out", type=Path, default=Path(demo["out_dir"]), help="output folder (default: %(default)s)"
    )
    for option, parameter, what in (
        ("--train-images", "train_images", "synthetic training images"),
        ("--val-images", "val_images", "synthetic validation images"),
        ("--image-size", "image_size", "image side in pixels"),
        ("--iterations", "iterations", "Mask R-CNN training iterations"),
        ("--finetune-iterations", "finetune_iterations", "MR R-CNN fine-tuning iterations"),
        ("--comparison-images", "comparison_images", "val images in comparison.png"),
        ("--seed", "seed", "seed of the data and of training"),
    ):
        p.add_argument(
            option, type=int, default=demo[parameter], metavar="N", help=f"{what} (default: %(default)s)"
        )
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mrrcnn`` with ``argv`` (default: the process's arguments); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Under torchrun only rank 0 reports progress at INFO.
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.debug:
        logging.getLogger(__package__).setLevel(logging.DEBUG)
    try:
        args.func(args)
    except (ValueError, OSError, FloatingPointError) as e:
        if args.debug:
            raise
        # One line, even for messages that quote multi-line text (YAML errors, state_dict key lists).
        print(f"mrrcnn {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        # A diverged training (FloatingPointError) is a failure of the run rather than of its input.
        return 1 if isinstance(e, FloatingPointError) else 2
    return 0
