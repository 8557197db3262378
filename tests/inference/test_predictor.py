import logging

import pytest
import torch

from mrrcnn.config import load_config
from mrrcnn.inference import predictor as predictor_module
from mrrcnn.inference.predictor import Predictor
from mrrcnn.models import build_model


def make_predictor(*overrides: str) -> Predictor:
    config = load_config(
        "synthetic/maskrcnn_small", ["model.resize=scale", "model.box_score_thresh=0.0", *overrides]
    )
    torch.manual_seed(0)
    return Predictor(build_model(**config["model"]), config, {1: "shape"})


def same(a, b) -> bool:
    order_a = torch.argsort(a.scores, descending=True, stable=True)
    order_b = torch.argsort(b.scores, descending=True, stable=True)
    a, b = a.select(order_a), b.select(order_b)
    return (
        torch.allclose(a.boxes, b.boxes)
        and torch.equal(a.scores, b.scores)
        and torch.equal(a.labels, b.labels)
        and all(torch.equal(x, y) for x, y in zip(a.masks, b.masks))
        and torch.equal(a.origins, b.origins)
    )


def test_tiled_equals_untiled_where_the_image_fits_one_tile():
    predictor = make_predictor()
    image = torch.rand(3, 120, 150, generator=torch.Generator().manual_seed(1))
    whole = predictor(image)
    assert len(whole) > 0
    with predictor._inference():
        tiled = predictor._predict_tiled(image, "image")
    assert same(whole, tiled)
    # The model is left in the mode it was in.
    assert predictor.model.training


def test_large_images_run_in_tiles_with_the_cap_per_tile(caplog):
    predictor = make_predictor("eval.tile_size=128", "eval.tile_overlap=32", "model.box_detections_per_img=3")
    image = torch.rand(3, 200, 300, generator=torch.Generator().manual_seed(2))
    assert len(predictor._tile_windows(image)) == 6
    with caplog.at_level(logging.WARNING):
        detections = predictor(image, "big.png")
    assert detections.image_size == (200, 300)
    # Up to the cap in each of the six tiles: more than one image's cap, and every tile's cap was reported.
    assert 3 < len(detections) <= 18
    warned = [r.getMessage() for r in caplog.records if "cap per tile" in r.getMessage()]
    assert len(warned) == 6 and "big.png, tile x 0:128, y 0:128" in warned[0]
    assert "eval.tile_size" in warned[0]


def test_scale_multiplies_the_tile_in_image_pixels():
    predictor = make_predictor("model.scale=2", "eval.tile_size=128", "eval.tile_overlap=32")
    windows = predictor._tile_windows(torch.zeros(3, 100, 100))
    assert windows == [(0, 0, 64, 64), (36, 0, 100, 64), (0, 36, 64, 100), (36, 36, 100, 100)]


def test_bad_images_are_refused_naming_the_key(monkeypatch):
    predictor = make_predictor("model.scale=0.25")
    with pytest.raises(
        ValueError,
        match=r"tiny.png: a 100x90 image would be resized to a shorter side of 22 px \(model.scale\)",
    ):
        predictor(torch.zeros(3, 90, 100), "tiny.png")
    with pytest.raises(ValueError, match=r"Tensor\[3, H, W\]"):
        predictor(torch.zeros(1, 90, 100), "grey.png")
    monkeypatch.setattr(predictor_module, "_memory", lambda device: 2**20)
    with pytest.raises(
        ValueError, match=r"huge.png: this 4000x4000 image is seen as 1000x1000 px .* or eval.tile_size"
    ):
        predictor(torch.zeros(3, 4000, 4000), "huge.png")


def test_ground_truth_diagnostic_runs_on_whole_images_only():
    predictor = make_predictor("eval.tile_size=64", "eval.tile_overlap=16")
    target = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 100, 100),
    }
    with pytest.raises(ValueError, match="whole images only"):
        predictor.predict([torch.zeros(3, 100, 100)], ["cells.png"], [target])
