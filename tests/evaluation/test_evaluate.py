import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchvision.ops import FrozenBatchNorm2d

from mrrcnn.config import CONFIG_DIR, load_config
from mrrcnn.data import CLASSES, coco, images, make_synthetic
from mrrcnn.engine.checkpoint import load_model, resolve_device, save_checkpoint
from mrrcnn.evaluation.coco_eval import IOU_TYPES, METRICS, SUBSETS
from mrrcnn.evaluation.evaluate import evaluate_model
from mrrcnn.evaluation.matching import COUNTS, RATIOS, THRESHOLDS
from mrrcnn.models import build_model

CONFIGS = CONFIG_DIR / "synthetic"
MATCHING = [f"{t:g}/{name}" for t in THRESHOLDS for name in (*COUNTS, *RATIOS)]
KEYS = {
    f"{prefix}{iou_type}/{metric}"
    for prefix in ("", *(f"{subset}/" for subset in SUBSETS))
    for iou_type in IOU_TYPES
    for metric in METRICS
} | {
    f"{prefix}matching/{key}"
    for prefix in ("", *(f"{subset}/" for subset in SUBSETS), *(f"category/{name}/" for name in CLASSES))
    for key in MATCHING
}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    data = make_synthetic(tmp_path_factory.mktemp("data"), 2, 3, image_size=64)
    return load_config(
        CONFIGS / "mrrcnn_small.yaml",
        [
            f"data.val.images={data['val']['images_dir']}",
            f"data.val.annotations={data['val']['annotation_file']}",
            "model.base_weights=null",
            "model.min_size=64",
            "model.max_size=64",
            "data.workers=0",
        ],
    )


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return build_model(**config["model"])


def test_evaluate_model(model, config, tmp_path):
    model.train()
    metrics = evaluate_model(model, config, "val", tmp_path / "out", progress=False)
    assert set(metrics) == KEYS
    assert model.training
    records = json.loads((tmp_path / "out" / "results_val.json").read_text())
    # An untrained model still fires (score_thresh 0.05), so the records are exercised.
    assert records and {r["image_id"] for r in records} <= {1, 2, 3}
    assert all("segmentation" in r for r in records)
    written = json.loads((tmp_path / "out" / "metrics_val.json").read_text())
    assert written == {k: None if math.isnan(v) else v for k, v in metrics.items()}


def test_evaluate_model_reads_images_as_the_config_says(model, config, monkeypatch):
    read = []

    def read_image(path, name, intensity, percentiles):
        read.append((intensity, percentiles))
        return images.read_image(path, name, intensity, percentiles)

    monkeypatch.setattr(coco, "read_image", read_image)
    percentile = {**config, "data": {**config["data"], "intensity": "percentile", "percentiles": [2, 98]}}
    evaluate_model(model, percentile, "val", progress=False)
    assert read == [("percentile", (2, 98))] * 3


def test_evaluate_model_bad_split(model, config):
    with pytest.raises(ValueError, match="data.test"):
        evaluate_model(model, config, "test", progress=False)


def test_a_model_of_other_categories_is_named_as_such(model, config, tmp_path):
    gt = json.loads(Path(config["data"]["val"]["annotations"]).read_text())
    shift = {"categories": "id", "annotations": "category_id"}
    for key, field in shift.items():
        for record in gt[key]:
            record[field] += 10
    (tmp_path / "other.json").write_text(json.dumps(gt))
    other = {**config, "data": {**config["data"], "val": {**config["data"]["val"]}}}
    other["data"]["val"]["annotations"] = str(tmp_path / "other.json")
    predicts = r"the model predicts category id\(s\) \[.*\], which .*other.json does not have"
    with pytest.raises(ValueError, match=predicts + r" \(its category ids: \[11, 12, 13, 14, 15\]\)"):
        evaluate_model(model, other, "val", progress=False)


def _shard(rank: int, world: int, init: str, state: dict, config: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = build_model(**config["model"])
        model.load_state_dict(state)
        metrics = evaluate_model(model, config, "val", progress=False)
        torch.save(metrics, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_evaluate_model_distributed(model, config, tmp_path):
    """Two processes, each evaluating a shard, give rank 0 the single-process metrics and others {}."""
    expected = evaluate_model(model, config, "val", progress=False)
    out = str(tmp_path / "metrics")
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_shard, args=(2, init, model.state_dict(), config, out), nprocs=2)
    got = torch.load(f"{out}.0", weights_only=True)
    assert got.keys() == expected.keys()
    assert all(
        math.isclose(got[k], expected[k]) or math.isnan(got[k]) == math.isnan(expected[k]) for k in got
    )
    assert torch.load(f"{out}.1", weights_only=True) == {}


def test_load_model(model, config, tmp_path):
    # The base weights are read when the model is trained, not when its checkpoint is loaded.
    saved = {**config, "model": {**config["model"], "base_weights": str(tmp_path / "moved_away.pth")}}
    path = tmp_path / "final.pth"
    save_checkpoint(
        path, {"model": model.state_dict(), "config": saved, "categories": {1: "disk"}, "iteration": 3}
    )

    loaded, used, categories = load_model(path, device="cpu", overrides=["model.alpha=0.5"])
    assert not loaded.training
    assert loaded.roi_heads.alpha == 0.5
    assert used["model"]["alpha"] == 0.5
    assert categories == {1: "disk"}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    given = {**config, "model": {**config["model"], "alpha": 0.0}}
    loaded, used, _ = load_model(path, given, device="cpu")
    assert loaded.roi_heads.alpha == 0.0 and used is not saved


def test_load_model_errors(model, config, tmp_path):
    with pytest.raises(ValueError, match="missing.pth"):
        load_model(tmp_path / "missing.pth", device="cpu")

    bare = tmp_path / "bare.pth"
    save_checkpoint(bare, {"model": model.state_dict()})
    with pytest.raises(ValueError, match=r"bare.pth: checkpoint carries no run configuration.*--config"):
        load_model(bare, device="cpu")

    refining = ("alpha", "shape_aware", "refine_cls", "refine_reg", "sara_masks")
    control = {k: v for k, v in config["model"].items() if k not in refining}
    with pytest.raises(ValueError, match="bare.pth: weights do not fit model 'maskrcnn_small'"):
        load_model(bare, {**config, "model": {**control, "name": "maskrcnn_small"}}, device="cpu")
    with pytest.raises(ValueError, match="model.alpha does not apply to model 'maskrcnn_small'"):
        load_model(bare, {**config, "model": {**config["model"], "name": "maskrcnn_small"}}, device="cpu")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'gpu0' is not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' was asked for, but CUDA is not available"):
            resolve_device("cuda")


def test_load_model_from_pretrained_base(tmp_path):
    """A fine-tuned torchvision COCO model loads without its base: frozen batch norms, zero eps."""
    plain = build_model("maskrcnn_resnet50_fpn", num_classes=2).state_dict()
    frozen_state = tmp_path / "frozen.pth"
    torch.save({k: v for k, v in plain.items() if not k.endswith("num_batches_tracked")}, frozen_state)
    model = build_model("maskrcnn_resnet50_fpn", num_classes=2, base_weights=str(frozen_state))
    config = {"model": {"name": "maskrcnn_resnet50_fpn", "num_classes": 2, "base_weights": "COCO_V1"}}
    path = tmp_path / "final.pth"
    save_checkpoint(path, {"model": model.state_dict(), "config": config})

    loaded, _, categories = load_model(path, device="cpu")
    assert categories == {}
    frozen = [m for m in loaded.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(m.eps == 0.0 for m in frozen)


def test_a_ground_truth_reading_model_is_given_the_targets(model, config):
    seen = []

    def oracle(target):
        seen.append(target["image_id"])
        return target["masks"]

    model.roi_heads.sara_masks = "ground_truth"
    try:
        metrics = evaluate_model(model, config, "val", progress=False, oracle_masks=oracle)
    finally:
        model.roi_heads.sara_masks = "predicted"
    assert set(metrics) == KEYS and sorted(seen) == [1, 2, 3]
