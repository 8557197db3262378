import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from mrrcnn.config import CONFIG_DIR, load_config
from mrrcnn.data import CLASSES, convert_label_images, make_synthetic
from mrrcnn.engine.checkpoint import save_checkpoint
from mrrcnn.inference.predict import predict
from mrrcnn.models import build_model

CONFIGS = CONFIG_DIR / "synthetic"
TINY = ["model.min_size=64", "model.max_size=64"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    config = load_config(CONFIGS / "maskrcnn_small.yaml", TINY)
    torch.manual_seed(0)
    model = build_model(**config["model"])
    path = tmp_path_factory.mktemp("run") / "final.pth"
    categories = {i + 1: name for i, name in enumerate(CLASSES)}
    save_checkpoint(
        path, {"model": model.state_dict(), "config": config, "categories": categories, "iteration": 0}
    )
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return Path(make_synthetic(tmp_path_factory.mktemp("data"), 0, 3, image_size=64)["val"]["images_dir"])


def test_predict(weights, images, tmp_path):
    extra = tmp_path / "extra.jpg"
    Image.open(images / "000000.png").convert("RGB").save(extra)
    # An untrained model's detections score about 1 / num_classes: a low threshold keeps some.
    path = predict(
        weights, [images, extra], tmp_path / "out", score_threshold=0.1, device="cpu", progress=False
    )

    assert path == tmp_path / "out" / "predictions.json"
    for name in ("000000", "000001", "000002", "extra"):
        with Image.open(tmp_path / "out" / f"{name}.png") as overlay:
            # 64-pixel images, enlarged 8 times to be readable.
            assert overlay.size == (512, 512)
    dataset = json.loads(path.read_text())
    assert [(i["id"], Path(i["file_name"]).name) for i in dataset["images"]] == [
        (1, "000000.png"),
        (2, "000001.png"),
        (3, "000002.png"),
        (4, "extra.jpg"),
    ]
    assert [c["name"] for c in dataset["categories"]] == list(CLASSES)
    annotations = dataset["annotations"]
    assert annotations and all(a["score"] >= 0.1 for a in annotations)
    assert [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    assert len(coco.getAnnIds()) == len(annotations)
    results = coco.loadRes(
        [{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")} for a in annotations]
    )
    assert [results.anns[i + 1]["area"] for i in range(len(annotations))] == [a["area"] for a in annotations]


def test_predict_names_what_it_skips_in_a_folder(weights, images, tmp_path, caplog):
    folder = tmp_path / "in"
    shutil.copytree(images, folder)
    (folder / "notes.txt").write_text("")
    (folder / "more").mkdir()
    with caplog.at_level(logging.WARNING, logger="mrrcnn"):
        path = predict(weights, [folder], tmp_path / "out", device="cpu", progress=False)
    assert len(json.loads(path.read_text())["images"]) == 3
    assert f"{folder}: skipped more/, notes.txt (not image files by their suffix, .bmp," in caplog.text


@pytest.mark.parametrize("intensity", ["full_range", "percentile"])
def test_predict_reads_images_as_the_model_was_trained(intensity, tmp_path):
    config = load_config(CONFIGS / "maskrcnn_small.yaml", TINY + [f"data.intensity={intensity}"])
    weights = tmp_path / "final.pth"
    save_checkpoint(weights, {"model": build_model(**config["model"]).state_dict(), "config": config})
    dim = np.zeros((64, 64), np.uint16)
    dim[16:48, 16:48] = 235  # a 16-bit microscopy image's small range
    Image.fromarray(dim).save(tmp_path / "dim.png")
    predict(
        weights, [tmp_path / "dim.png"], tmp_path / "out", score_threshold=2, device="cpu", progress=False
    )
    with Image.open(tmp_path / "out" / "dim.png") as drawn:
        assert np.asarray(drawn.convert("L")).max() == (255 if intensity == "percentile" else 1)


def test_predict_threshold_above_every_score(weights, images, tmp_path):
    path = predict(
        weights, [images / "000001.png"], tmp_path, score_threshold=1.01, device="cpu", progress=False
    )
    assert json.loads(path.read_text())["annotations"] == []
    assert (tmp_path / "000001.png").is_file()


def test_predict_bad_inputs(weights, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="broken.png: cannot read image"):
        predict(weights, [broken], tmp_path / "out", device="cpu", progress=False)
    with pytest.raises(ValueError, match="nowhere.png: no such image file or folder"):
        predict(weights, [tmp_path / "nowhere.png"], tmp_path / "out", device="cpu", progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty: folder holds no image"):
        predict(weights, [empty], tmp_path / "out", device="cpu", progress=False)
    shutil.copy(images / "000000.png", empty / "000000.png")
    with pytest.raises(ValueError, match="would both be drawn to 000000.png"):
        predict(weights, [images, empty], tmp_path / "out", device="cpu", progress=False)
    with pytest.raises(ValueError, match="000000.png: its output 000000.png would overwrite it"):
        predict(weights, [empty], empty, device="cpu", progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        predict(weights, [images], tmp_path / "out", batch_size=0, progress=False)


def test_predict_label_images_round_trip_through_convert(weights, images, tmp_path):
    out = tmp_path / "out"
    path = predict(weights, [images], out, score_threshold=0.1, device="cpu", progress=False)
    predicted = json.loads(path.read_text())
    # convert pairs each image with its <stem>_labels.png among the prediction's files.
    converted = convert_label_images(images, out, tmp_path / "coco", label_suffix="_labels")
    coco = json.loads(Path(converted["annotation_file"]).read_text())
    by_image = {}
    for annotation in predicted["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for image in coco["images"]:
        index = int(Path(image["file_name"]).stem) + 1
        # Label k is the k-th detection by descending score; each pixel the highest-scoring one's.
        kept = sorted(by_image.get(index, []), key=lambda a: -a["score"])
        painted = np.zeros((image["height"], image["width"]), np.int64)
        for k in range(len(kept), 0, -1):
            painted[mask_util.decode(kept[k - 1]["segmentation"]).astype(bool)] = k
        regions = {(painted == k).tobytes() for k in range(1, len(kept) + 1) if (painted == k).any()}
        read_back = {
            mask_util.decode(a["segmentation"]).astype(bool).tobytes()
            for a in coco["annotations"]
            if a["image_id"] == image["id"]
        }
        assert regions and read_back == regions
