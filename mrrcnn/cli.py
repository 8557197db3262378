"""The ``mrrcnn`` command: ``synth``, ``convert``, ``train``, ``eval``, ``predict``, ``export`` and ``demo``.

Bad input (a ``ValueError`` or ``OSError`` from the library) ends the command with one line
``mrrcnn <command>: error: ...`` and exit status 2, a diverged training (``FloatingPointError``) likewise
with status 1, Ctrl-C with one line and status 130; ``--debug`` shows the traceback instead. Every command
takes configuration overrides the same way: ``section.key=value`` arguments.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import SECTIONS, load_config
from .data import make_synthetic
from .data.labels import convert_label_images
from .data.synthetic import APPEARANCES
from .engine import distributed
from .engine.checkpoint import load_model
from .engine.demo import run_demo
from .engine.export import DEFAULT_OPSET, FORMATS, OPSETS, export_checkpoint
from .engine.train import train
from .evaluation.coco_eval import SUBSETS, TABLE_MATCHING, format_table
from .evaluation.evaluate import evaluate_model
from .inference.predict import predict


def _synth(args: argparse.Namespace) -> None:
    summary = make_synthetic(
        args.out,
        args.train,
        args.val,
        seed=args.seed,
        image_size=args.image_size,
        crowding=args.crowding,
        appearance=args.appearance,
        object_size=args.object_size,
    )
    for split in ("train", "val"):
        s = summary[split]
        print(
            f"{split}: {s['num_images']} images, {s['num_instances']} instances, "
            f"{100 * s['huddled_fraction']:.1f}% huddled -> {s['images_dir']}, {s['annotation_file']}"
        )


def _convert(args: argparse.Namespace) -> None:
    summary = convert_label_images(
        args.images, args.labels, args.out, args.split, args.classes, args.class_name, args.label_suffix
    )
    classes = f"{len(summary['categories'])} class(es) ({', '.join(summary['categories'].values())})"
    print(
        f"{args.split}: {summary['num_images']} images, {summary['num_instances']} instances of {classes} -> "
        f"{summary['images_dir']}, {summary['annotation_file']}"
    )
    # 16-bit microscopy images rarely fill their range: read as they are, they would be nearly black.
    intensity = " data.intensity=percentile" if summary["wide_images"] else ""
    # Microscopy pixels have one physical size: train and predict at one scale (whole images tiled).
    print(
        f"train on it: mrrcnn train --config CONFIG data.{args.split}.images={summary['images_dir']} "
        f"data.{args.split}.annotations={summary['annotation_file']} "
        f"model.num_classes={max(summary['categories']) + 1} model.resize=scale model.scale=1{intensity}"
    )


def _train(args: argparse.Namespace) -> None:
    final = train(load_config(args.config, args.overrides), resume=args.resume, progress=not args.no_progress)
    # Under torchrun every process returns here; one line is enough.
    if os.environ.get("RANK", "0") == "0":
        print(final)


def _output_folder(out: Path) -> Path:
    """``out``, created, checked before any work: a folder that results can be written to."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; it must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out}: folder is not writable")
    return out


def _eval(args: argparse.Namespace) -> None:
    out = _output_folder(args.out if args.out is not None else Path(args.weights).parent)
    # Under torchrun every process evaluates a shard of the images on its own device.
    created = distributed.init_distributed(args.device)
    try:
        config = load_config(args.config) if args.config is not None else None
        device = distributed.device(args.device) if created else args.device
        model, config, _ = load_model(args.weights, config, device, args.overrides)
        metrics = evaluate_model(model, config, args.split, out, progress=not args.no_progress)
    finally:
        if created:
            distributed.cleanup()
    if not metrics:  # not rank 0
        return
    # One column per instance subset; rows are "{iou_type}/{metric}" and the matching metrics at IoU 0.5
    # (every threshold and category is in the metrics json).
    shown = {k: v for k, v in metrics.items() if not k.startswith("category/")}
    shown = {
        k: v for k, v in shown.items() if "matching/" not in k or k.split("matching/")[1] in TABLE_MATCHING
    }
    columns = {"overall": {k: v for k, v in shown.items() if not k.startswith(SUBSETS)}}
    for subset in SUBSETS:
        prefix = f"{subset}/"
        columns[subset] = {k.removeprefix(prefix): v for k, v in shown.items() if k.startswith(prefix)}
    print(format_table(columns), end="")
    print(f"results and metrics: {out}/results_{args.split}.json, {out}/metrics_{args.split}.json")


def _predict(args: argparse.Namespace) -> None:
    # KEY=VALUE arguments before the options are read as images by argparse: sorted out here.
    overrides = [a for a in args.inputs if _OVERRIDE.match(a)] + args.overrides
    path = predict(
        args.weights,
        [Path(a) for a in args.inputs if not _OVERRIDE.match(a)],
        args.out,
        config=load_config(args.config) if args.config is not None else None,
        score_threshold=args.score_threshold,
        device=args.device,
        batch_size=args.batch_size,
        overrides=overrides,
        progress=not args.no_progress,
    )
    print(path)


def _export(args: argparse.Namespace) -> None:
    result = export_checkpoint(
        args.weights,
        args.out,
        args.format,
        image_size=args.image_size,
        opset=args.opset,
        check=args.check,
        overrides=args.overrides,
    )
    alpha = "" if result.alpha is None else f", alpha {result.alpha:g}"
    print(
        f"{result.path}: {result.format}{alpha}; one image Tensor[3, H, W] (RGB in [0, 1]) -> boxes, labels, "
        "scores, masks"
    )
    for c in result.checks:
        print(
            f"check {c['image']}: {c['detections']} detections agree with PyTorch (boxes within "
            f"{c['max_box_error_px']:.2g} px, {c['max_box_error_relative']:.2g} of their size; scores within "
            f"{c['max_score_error']:.2g}; mask IoU >= {c['min_mask_iou']:.4f})"
        )


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


CONFIG_HELP = "a YAML file, or a shipped config by name, e.g. synthetic/mrrcnn_small or coco/mrrcnn_r50_fpn"
_OVERRIDE = re.compile(rf"^({'|'.join(SECTIONS)})\.[^=]+=")


def _defaults(function: Callable) -> dict[str, Any]:
    """The default values of ``function``'s parameters: the library's defaults are the command's."""
    return {name: p.default for name, p in inspect.signature(function).parameters.items()}


def _add_synth(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """The ``synth`` subcommand."""
    p = commands.add_parser(
        "synth", parents=parents, help="write the synthetic huddled-instance benchmark (COCO format)"
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
        "--object-size",
        type=int,
        default=synth["object_size"],
        metavar="PX",
        help="size shapes as in an image of this side, as many as keep its density: large images of "
        "many usual-size instances (default: the image size)",
    )
    p.add_argument(
        "--crowding",
        type=float,
        default=synth["crowding"],
        metavar="F",
        help="expected fraction of instances drawn in clusters (default: %(default)s)",
    )
    p.add_argument(
        "--appearance",
        choices=APPEARANCES,
        default=synth["appearance"],
        help="varied: each instance its own colour and texture; uniform (harder): one colour and texture "
        "per image, instances separated by outlines only (default: %(default)s)",
    )
    p.set_defaults(func=_synth)


def _add_convert(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """The ``convert`` subcommand."""
    p = commands.add_parser(
        "convert",
        parents=parents,
        help="instance label images (microscopy) to a COCO dataset",
        epilog="A label image holds one integer per pixel: 0 the background, each other value one instance. "
        "Its stem is its image's (plus --label-suffix). Images are written as PNG with their values "
        "unchanged; train 16-bit images of small range with data.intensity=percentile.",
    )
    p.add_argument("images", type=Path, metavar="IMAGES", help="folder of the images")
    p.add_argument("labels", type=Path, metavar="LABELS", help="folder of the label images (PNG or TIFF)")
    p.add_argument(
        "out", type=Path, metavar="OUT", help="output folder: OUT/SPLIT/ and OUT/annotations/SPLIT.json"
    )
    convert = _defaults(convert_label_images)
    p.add_argument(
        "--split", default=convert["split"], help="name of the split written (default: %(default)s)"
    )
    p.add_argument(
        "--classes",
        type=Path,
        metavar="CSV",
        help="a class per label: CSV with the header image,label,class (default: one class, --class-name)",
    )
    p.add_argument(
        "--class-name",
        default=convert["class_name"],
        help="the one class without --classes (default: %(default)s)",
    )
    p.add_argument(
        "--label-suffix",
        default=convert["label_suffix"],
        metavar="SUFFIX",
        help="how a label image's stem ends, e.g. _masks for cellpose's img_masks.png (default: none)",
    )
    p.set_defaults(func=_convert)


def _add_train(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """The ``train`` subcommand."""
    p = commands.add_parser(
        "train",
        parents=parents,
        help="train a model (also under torchrun)",
        epilog="Multi-GPU: torchrun --nproc_per_node=N -m mrrcnn train --config FILE",
    )
    p.add_argument("--config", required=True, help=CONFIG_HELP)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.set_defaults(func=_train)


def _add_eval(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """The ``eval`` subcommand."""
    p = commands.add_parser("eval", parents=parents, help="COCO AP of a checkpoint")
    p.add_argument("--weights", required=True, type=Path, help="checkpoint (.pth)")
    p.add_argument("--config", help=f"{CONFIG_HELP} (default: the one the checkpoint carries)")
    p.add_argument("--split", default="val", help="data split of the config (default: %(default)s)")
    p.add_argument("--out", type=Path, help="folder for results/metrics json (default: the checkpoint's)")
    p.set_defaults(func=_eval)


def _add_predict(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """The ``predict`` subcommand."""
    p = commands.add_parser("predict", parents=parents, help="draw and save a checkpoint's detections")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR|KEY=VALUE",
        help="image files or folders, and config overrides such as model.alpha=0.5",
    )
    p.add_argument("--weights", required=True, type=Path, help="checkpoint (.pth)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--config", help=f"{CONFIG_HELP} (default: the one the checkpoint carries)")
    p.add_argument(
        "--score-threshold",
        type=float,
        help="least score kept (default: the config's eval.score_threshold, 0.5 unless changed)",
    )
    p.add_argument("--batch-size", type=int, default=2, help="images per forward pass (default: %(default)s)")
    p.set_defaults(func=_predict, overrides=[])


def _add_export(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """The ``export`` subcommand."""
    p = commands.add_parser(
        "export",
        parents=parents,
        help="write a checkpoint as an ExportedProgram, ONNX or TorchScript (one image per call)",
        epilog="The exported model takes one image Tensor[3, H, W] (RGB in [0, 1], any size) and returns "
        "boxes, labels, scores and masks as the model does in eval mode. exported-program and the ONNX "
        "formats bake model.alpha in (give model.alpha=X to export another); TorchScript keeps it settable "
        "(model.roi_heads.alpha). An exported program loads with torch.export.load after import mrrcnn.ops. "
        "Read its images as the model was trained on them: mrrcnn.data.images.read_image(path, "
        "intensity=..., percentiles=...) with the checkpoint's data.intensity and data.percentiles.",
    )
    p.add_argument("--weights", required=True, type=Path, help="checkpoint (.pth)")
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="exported-program (torch.export, a .pt2), onnx (torch.onnx's dynamo exporter), and the legacy "
        "torchscript (torch.jit) and onnx-legacy (the TorchScript-based ONNX exporter), which torch deprecates",
    )
    p.add_argument("--out", required=True, type=Path, help="file to write, e.g. model.pt2 or model.onnx")
    p.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="example image the traced formats are made with (default: the model's min_size x max_size)",
    )
    opsets = ", ".join(f"{f} {low}..{high} (default {DEFAULT_OPSET[f]})" for f, (low, high) in OPSETS.items())
    p.add_argument("--opset", type=int, help=f"ONNX opset: {opsets}")
    p.add_argument(
        "--check",
        action="store_true",
        help="run the exported file (torch.export.load, onnxruntime or torch.jit.load) on sample images and "
        "compare it with PyTorch before writing it",
    )
    p.set_defaults(func=_export)


def _add_demo(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """The ``demo`` subcommand."""
    p = commands.add_parser(
        "demo", parents=parents, help="synthetic data, Mask R-CNN vs MR R-CNN, table and figure"
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


def _overrides(example: str) -> argparse.ArgumentParser:
    """The ``KEY=VALUE`` arguments of a command, with an example of overrides that matter to it."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. {example}")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand; each sets ``func`` to the function that runs it."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")

    parser = argparse.ArgumentParser(prog="mrrcnn", description="Mask Refining R-CNN on torchvision.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, parents in (
        (_add_synth, [common]),
        (_add_convert, [common]),
        (_add_train, [common, _overrides("train.lr=0.01 train.iterations=5000")]),
        (_add_eval, [common, device, _overrides("model.alpha=2 eval.mask_threshold=0.4")]),
        (_add_predict, [common, device]),
        (_add_export, [common, _overrides("model.alpha=0.5 model.box_score_thresh=0.3")]),
        (_add_demo, [common]),
    ):
        add(commands, parents)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments, with ``KEY=VALUE`` overrides taken from anywhere among them (argparse alone takes
    them only where its positional argument stands)."""
    args, extras = parser.parse_known_args(argv)
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        args.command
    ]
    unknown = [a for a in extras if not _OVERRIDE.match(a)]
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    overrides = [a for a in extras if _OVERRIDE.match(a)]
    if overrides and not hasattr(args, "overrides"):
        command.error(f"{args.command} reads no configuration, so takes no override: {' '.join(overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mrrcnn`` with ``argv`` (default: the process's arguments); returns the exit status."""
    parser = build_parser()
    args = _parse(parser, argv)
    # Under torchrun only rank 0 reports progress at INFO.
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.debug:
        logging.getLogger(__package__).setLevel(logging.DEBUG)
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        # Checkpoints are written atomically: the last one written is whole.
        print(f"mrrcnn {args.command}: interrupted; nothing written is damaged", file=sys.stderr)
        return 130
    except (ValueError, OSError, FloatingPointError) as e:
        if args.debug:
            raise
        # One line, even for messages that quote multi-line text (YAML errors, state_dict key lists).
        print(f"mrrcnn {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        # A diverged training (FloatingPointError) is a failure of the run rather than of its input.
        return 1 if isinstance(e, FloatingPointError) else 2
    return 0
