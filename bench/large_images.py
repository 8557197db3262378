"""Whole large images at the training scale: tiled inference against predicting each tile alone, and its
time and memory against the image's area.

    python bench/large_images.py                 # writes docs/benchmarks/large_images.md
    python bench/large_images.py --iterations 50 # a quick check of the script (models too short to mean much)

Data: ``mrrcnn synth`` images of 512 px (training, 24) and 2048 px (evaluation, 2) with the shapes of its 160-px
images (``--object-size 160``), hundreds of touching instances each. Models: the small Mask R-CNN from
scratch and MR R-CNN fine-tuned from it, trained on random 256-px crops (``data.crop_size=256``) in
``model.resize=scale`` mode at ``model.scale=1``, so a whole image is seen at the training scale.

Accuracy: each 2048-px evaluation image predicted whole (``eval.tile_size`` 512 model-input pixels,
``eval.tile_overlap`` 64, tiles merged), against the same model on each 256-px tile of the image alone (its
instances cut by the tile's edges, as is its ground truth) and against the ground truth: matching recall
and F1 at IoU 0.5 (score >= ``eval.score_threshold``), mask AP; seam duplicates (pairs of kept whole-image
detections with mask IoU > 0.5); tiles that reached the detection cap.

Cost: one image of 1, 4 and 16 MP (a 4096-px image is the 2048-px one mirrored to four), each model, each
in a process of its own: wall seconds per megapixel, and the process's peak resident memory against its
resident memory before the prediction (model and image loaded).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from common import ROOT, header, machine, write_report

from mrrcnn.evaluation import score
from mrrcnn.inference.detections import Detections
from mrrcnn.inference.predictor import Predictor
from mrrcnn.inference.results import to_coco_results

MODELS = (("Mask R-CNN", "maskrcnn", "maskrcnn_small"), ("MR R-CNN", "mrrcnn", "mrrcnn_small"))
# Model-input pixels: a tile holds ~70 instances of these images, well under the cap below.
TILING = ["eval.tile_size=512", "eval.tile_overlap=64", "model.box_detections_per_img=300"]
SCALE = ["model.resize=scale", "model.scale=1"]
ALONE_TILE = 256
SIZES_MP = {1: 1024, 4: 2048, 16: 4096}


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mrrcnn", *args, "--no-progress"], check=True, cwd=ROOT)


def _data(work: Path) -> dict[str, Path]:
    """Training images of 512 px and evaluation images of 2048 px, made once."""
    splits = {
        "train": (work / "train_data", "512", ["--train", "24", "--val", "0"]),
        "val": (work / "val_data", "2048", ["--train", "0", "--val", "2"]),
    }
    for folder, size, counts in splits.values():
        if not (folder / "annotations").is_dir():
            _run("synth", str(folder), *counts, "--image-size", size, "--object-size", "160", "--seed", "0")
    return {"train": splits["train"][0], "val": splits["val"][0]}


def _train(work: Path, data: dict[str, Path], iterations: int) -> dict[str, Path]:
    """The two models' final checkpoints, trained once (MR R-CNN fine-tuned from the Mask R-CNN)."""
    common = [
        f"data.train.images={data['train'] / 'train'}",
        f"data.train.annotations={data['train'] / 'annotations' / 'train.json'}",
        f"data.val.images={data['val'] / 'val'}",
        f"data.val.annotations={data['val'] / 'annotations' / 'val.json'}",
        "data.crop_size=256",
        *SCALE,
        *TILING,
        "train.seed=0",
    ]
    weights = {}
    for title, folder, config in MODELS:
        out = work / folder
        length = iterations if folder == "maskrcnn" else iterations // 3
        base = [] if folder == "maskrcnn" else [f"model.base_weights={work / 'maskrcnn' / 'final.pth'}"]
        milestones = f"train.milestones=[{int(0.8 * length)}]"
        if not (out / "final.pth").is_file():
            _run(
                "train",
                "--config",
                f"synthetic/{config}",
                *common,
                *base,
                f"train.output_dir={out}",
                f"train.iterations={length}",
                milestones,
                f"train.warmup_iters={min(100, length // 4)}",
            )
        weights[title] = out / "final.pth"
    return weights


def _tiles_alone(gt: dict, predictor: Predictor, images_dir: Path) -> tuple[dict, list[dict]]:
    """Each evaluation image cut into ``ALONE_TILE``-px tiles, each tile predicted alone: the tiles' ground
    truth (instances cut by the tile edges) and the predictions' COCO results."""
    tiles_gt = {"images": [], "annotations": [], "categories": gt["categories"]}
    records: list[dict] = []
    for image_record in gt["images"]:
        image = predictor.read(images_dir / image_record["file_name"])
        masks = [
            (a, mask_util.decode(a["segmentation"]))
            for a in gt["annotations"]
            if a["image_id"] == image_record["id"]
        ]
        for y in range(0, image.shape[1], ALONE_TILE):
            for x in range(0, image.shape[2], ALONE_TILE):
                tile_id = len(tiles_gt["images"]) + 1
                crop = image[:, y : y + ALONE_TILE, x : x + ALONE_TILE]
                height, width = crop.shape[1:]
                tiles_gt["images"].append(
                    {"id": tile_id, "width": width, "height": height, "file_name": f"{tile_id}"}
                )
                for annotation, mask in masks:
                    cut = np.asfortranarray(mask[y : y + height, x : x + width])
                    if cut.any():
                        rle = mask_util.encode(cut)
                        bbox = mask_util.toBbox(rle).tolist()
                        rle["counts"] = rle["counts"].decode("ascii")
                        tiles_gt["annotations"].append(
                            {
                                "id": len(tiles_gt["annotations"]) + 1,
                                "image_id": tile_id,
                                "category_id": annotation["category_id"],
                                "segmentation": rle,
                                "area": float(cut.sum()),
                                "bbox": bbox,
                                "iscrowd": 0,
                            }
                        )
                records.extend(to_coco_results({tile_id: predictor(crop)}))
    return tiles_gt, records


def _duplicates(detections: Detections, threshold: float) -> int:
    """Pairs of ``detections`` scoring at least ``threshold`` whose masks have IoU > 0.5."""
    kept = detections.select(detections.scores >= threshold)
    rles = kept.rles()
    if len(rles) < 2:
        return 0
    iou = mask_util.iou(rles, rles, [0] * len(rles))
    return int((np.triu(iou, 1) > 0.5).sum())


class _CapCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "the cap per" in record.getMessage()


def _accuracy(weights: dict[str, Path], data: dict[str, Path]) -> list[dict]:
    gt_path = data["val"] / "annotations" / "val.json"
    gt = json.loads(gt_path.read_text())
    rows = []
    for title, path in weights.items():
        predictor = Predictor.from_checkpoint(path, overrides=SCALE + TILING)
        threshold = predictor.config["eval"]["score_threshold"]
        counter = _CapCounter()
        logging.getLogger("mrrcnn").addHandler(counter)
        records, duplicates, seconds = [], 0, 0.0
        for image_record in gt["images"]:
            image = predictor.read(data["val"] / "val" / image_record["file_name"])
            start = time.perf_counter()
            detections = predictor(image, image_record["file_name"])
            seconds += time.perf_counter() - start
            duplicates += _duplicates(detections, threshold)
            records.extend(to_coco_results({image_record["id"]: detections}))
        logging.getLogger("mrrcnn").removeHandler(counter)
        whole = score(gt, records, score_threshold=threshold)
        tiles_gt, tile_records = _tiles_alone(gt, predictor, data["val"] / "val")
        alone = score(tiles_gt, tile_records, score_threshold=threshold)
        for name, metrics in (
            ("whole image, tiled and merged", whole),
            (f"each {ALONE_TILE}-px tile alone", alone),
        ):
            rows.append(
                {
                    "model": title,
                    "prediction": name,
                    **_summary(metrics),
                    "duplicates": duplicates if name.startswith("whole") else None,
                    "capped": counter.count if name.startswith("whole") else None,
                }
            )
        rows[-2]["seconds"] = seconds
    return rows


def _summary(metrics: dict) -> dict[str, float]:
    """Recall and F1 at IoU 0.5, and mask AP, from :func:`mrrcnn.evaluation.score`'s metrics."""
    return {
        "recall": metrics["matching/0.5/recall"],
        "f1": metrics["matching/0.5/f1"],
        "mask_ap": metrics["segm/AP"],
    }


def _measure(weights: Path, megapixels: int, data: dict[str, Path]) -> dict[str, float]:
    """In a process of its own: seconds and resident memory of predicting one image of ``megapixels`` MP."""
    out = subprocess.run(
        [sys.executable, __file__, "--measure", str(weights), str(megapixels), str(data["val"])],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _measure_here(weights: Path, megapixels: int, val: Path) -> None:
    predictor = Predictor.from_checkpoint(weights, overrides=SCALE + TILING)
    image = predictor.read(min((val / "val").iterdir()))
    side = SIZES_MP[megapixels]
    while image.shape[1] < side:
        image = torch.cat([image, image.flip(1)], 1)
        image = torch.cat([image, image.flip(2)], 2)
    image = image[:, :side, :side].contiguous()
    predictor(image[:, :256, :256])  # warm-up: first-call allocations are not the image's
    # Resets the peak (VmHWM) to the current resident set: the peak measured is the prediction's.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _status_mib("VmRSS")
    start = time.perf_counter()
    detections = predictor(image)
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "before_mib": before,
                "peak_mib": peak,
                "detections": len(detections),
                "image_mib": image.numel() * 4 / 2**20,
            }
        )
    )


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024


def _report(argv: list[str], accuracy: list[dict], cost: list[dict]) -> str:
    def cell(value: float | None, digits: int = 1) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    lines = [
        "# Large images: whole-image tiled inference\n",
        header("large_images.py", argv, 1),
        "",
        f"- cpu: {machine()}",
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
        "| model | prediction | recall@0.5 (%) | F1@0.5 (%) | mask AP (%) | seam duplicates | tiles at the cap |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in accuracy:
        dup = "" if row["duplicates"] is None else str(row["duplicates"])
        capped = "" if row["capped"] is None else str(row["capped"])
        lines.append(
            f"| {row['model']} | {row['prediction']} | {cell(row['recall'])} | {cell(row['f1'])} | "
            f"{row['mask_ap']:.1f} | {dup} | {capped} |"
        )
    lines += [
        "",
        "| model | image | seconds | seconds / MP | detections | image (MiB) | resident before (MiB) | peak resident (MiB) | peak - before (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in cost:
        side = SIZES_MP[row["megapixels"]]
        lines.append(
            f"| {row['model']} | {side}x{side} ({row['megapixels']} MP) | {row['seconds']:.1f} | "
            f"{row['seconds'] / (side * side / 1e6):.2f} | {row['detections']} | {row['image_mib']:.0f} | "
            f"{row['before_mib']:.0f} | {row['peak_mib']:.0f} | {row['peak_mib'] - row['before_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / ".cache" / "large_images")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "large_images.md")
    parser.add_argument(
        "--iterations", type=int, default=600, help="Mask R-CNN's; MR R-CNN fine-tunes a third"
    )
    parser.add_argument("--measure", nargs=3, metavar=("WEIGHTS", "MP", "VAL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        _measure_here(Path(args.measure[0]), int(args.measure[1]), Path(args.measure[2]))
        return
    data = _data(args.work)
    weights = _train(args.work, data, args.iterations)
    accuracy = _accuracy(weights, data)
    cost = [
        {"model": title, "megapixels": mp, **_measure(path, mp, data)}
        for mp in SIZES_MP
        for title, path in weights.items()
    ]
    text = _report(sys.argv[1:] if argv is None else argv, accuracy, cost)
    print(text)
    write_report(args.out, text)


if __name__ == "__main__":
    main()
