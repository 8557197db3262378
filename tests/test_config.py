from pathlib import Path

import pytest
import yaml

from mrrcnn.config import (
    CONFIG_DIR,
    SCHEMA,
    apply_overrides,
    load_config,
    resolve_config_path,
    validate_config,
)
from mrrcnn.evaluation.coco_eval import BACKENDS
from mrrcnn.models import MODELS

SHIPPED = sorted(CONFIG_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_is_valid(path):
    config = load_config(path)
    assert config["model"]["name"] in MODELS
    assert set(config) == {"model", *SCHEMA}


def test_configs_resolve_by_name_with_or_without_suffix_and_by_path(tmp_path, monkeypatch):
    expected = CONFIG_DIR / "coco" / "mrrcnn_r50_fpn.yaml"
    assert resolve_config_path("coco/mrrcnn_r50_fpn") == expected
    assert resolve_config_path("coco/mrrcnn_r50_fpn.yaml") == expected
    own = tmp_path / "mine.yaml"
    own.write_text("_base_: " + str(expected) + "\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("mine.yaml") == Path("mine.yaml")
    assert load_config("mine.yaml") == load_config("coco/mrrcnn_r50_fpn")
    with pytest.raises(
        ValueError,
        match=r"'coco/nope' is neither a file nor a shipped config; shipped: .*coco/mrrcnn_r50_fpn",
    ):
        resolve_config_path("coco/nope")
    with pytest.raises(ValueError, match="neither a file nor a shipped config"):
        resolve_config_path("../config.py")


@pytest.mark.parametrize(
    "override, message",
    [
        # The cases: typos and bad values in every section are named, never ignored.
        ("model.alhpa=2", "model.alhpa is not a known key; did you mean 'alpha'?"),
        ("data.skipbad=true", "data.skipbad is not a known key; did you mean 'skip_bad'?"),
        ("eval.mask_threshold=5", r"eval.mask_threshold must be a number in \(0, 1\], got 5"),
        ("train.amp=maybe", "train.amp must be true or false, got 'maybe'"),
        ("model.min_size=abc", "model.min_size must be an integer >= 1 or a list of them, got 'abc'"),
        ("model.min_size=-5", "model.min_size must be an integer >= 1 or a list of them, got -5"),
        ("model.alpha=abc", "model.alpha must be a finite number >= 0, got 'abc'"),
        ("model.alpha=-1", "model.alpha must be a finite number >= 0, got -1"),
        ("model.alpha=.nan", "model.alpha must be a finite number >= 0, got nan"),
        ("train.output_dir=null", "train.output_dir must be a folder path, got None"),
        ("model.sara_masks=truth", "model.sara_masks must be predicted, ground_truth or ground_truth_others"),
        ("eval.backend=coco", "eval.backend must be null, pycocotools or faster_coco_eval"),
        ("eval.nope=1", "eval.nope is not a known key; known keys: backend, batch_size, mask_threshold"),
        ("data.crop_size=-1", r"data.crop_size must be an integer >= 0 \(0: off"),
        ("data.crop_min_area=1.5", r"data.crop_min_area must be an integer >= 0"),
        ("eval.tile_size=32", r"eval.tile_size must be an integer >= 64"),
        ("eval.tile_overlap=-8", r"eval.tile_overlap must be an integer >= 0"),
        ("eval.score_threshold=2", r"eval.score_threshold must be a number in \[0, 1\]"),
        ("eval.touch_distance=-1", r"eval.touch_distance must be an integer >= 0"),
        ("model.scale=-2", "model.scale must be a finite number > 0, got -2"),
        ("model.resize=fixed", "model.resize must be min_max .* or scale"),
        ("data.train={images: a}", "data.train must be null or a mapping with exactly 'images'"),
        ("train.milestones=[5, 2]", r"train.milestones must increase, got \[5, 2\]"),
        ("train.iterations=0", "train.iterations must be an integer >= 1, got 0"),
        ("data.intensity=log", "data.intensity must be full_range .* or percentile .*, got 'log'"),
        ("data.percentiles=[99, 1]", r"data.percentiles must be \[low, high\], 0 <= low < high <= 100"),
        ("data.percentiles=[1, 101]", r"data.percentiles must be \[low, high\]"),
        (
            "model.trainable_backbone_layers=3",
            "model.trainable_backbone_layers does not apply to model 'mrrcnn_small'",
        ),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("synthetic/mrrcnn_small", [override])


def test_an_error_names_the_override_at_fault_or_else_the_file(tmp_path):
    with pytest.raises(ValueError) as error:
        load_config("synthetic/maskrcnn_small", ["train.lr=0.1", "train.lrr=1"])
    assert str(error.value) == "override 'train.lrr=1': train.lrr is not a known key; did you mean 'lr'?"
    path = tmp_path / "mine.yaml"
    path.write_text("model: {name: maskrcnn_small, num_classes: 3}\ntrain: {lrr: 1}\n")
    with pytest.raises(ValueError, match=rf"^{path}: train.lrr is not a known key"):
        load_config(path, ["train.lr=0.1"])
    # An override that makes a key of the file wrong is the one named.
    with pytest.raises(
        ValueError, match=r"^override 'model.name=maskrcnn_small': model.alpha does not apply"
    ):
        load_config("synthetic/mrrcnn_small", ["model.name=maskrcnn_small"])


def test_mask_rcnn_models_refuse_mr_rcnn_keys():
    with pytest.raises(
        ValueError, match=r"model.alpha does not apply to model 'maskrcnn_small' \(only to mrrcnn"
    ):
        load_config("synthetic/maskrcnn_small", ["model.alpha=-1"])


def test_defaults_fill_every_section_and_the_model_needs_a_name():
    config = validate_config({"model": {"name": "maskrcnn_small", "num_classes": 3}})
    assert config["train"] == {key: spec.default for key, spec in SCHEMA["train"].items()}
    with pytest.raises(ValueError, match="model.name must be one of"):
        validate_config({"model": {}})
    with pytest.raises(ValueError, match="model.num_classes is required for 'maskrcnn_small'"):
        validate_config({"model": {"name": "maskrcnn_small"}})
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['trian'\]"):
        validate_config({"model": {"name": "maskrcnn_small", "num_classes": 3}, "trian": {}})


def test_eval_backends_are_the_evaluators():
    for backend in BACKENDS:
        validate_config({"model": {"name": "maskrcnn_small", "num_classes": 3}, "eval": {"backend": backend}})


def test_overrides_read_yaml_values_and_scientific_notation():
    config = apply_overrides({}, ["train.lr=1e-3", "train.milestones=[1, 2]", "model.base_weights=null"])
    assert config == {"train": {"lr": 0.001, "milestones": [1, 2]}, "model": {"base_weights": None}}
    assert apply_overrides({}, ["data.train.images=x"]) == {"data": {"train": {"images": "x"}}}
    assert apply_overrides({}, ["train.output_dir=1e3x"])["train"]["output_dir"] == "1e3x"


def test_override_syntax_errors():
    with pytest.raises(ValueError, match="must look like section.key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ValueError, match="unknown section 'trian'"):
        apply_overrides({}, ["trian.lr=1"])


def test_base_chain_and_file_errors(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("_base_: b.yaml\n")
    b.write_text("_base_: a.yaml\n")
    with pytest.raises(ValueError, match="_base_ chain loops"):
        load_config(a)
    a.write_text(yaml.safe_dump({"model": {"name": "maskrcnn_small", "num_classes": 3}, "optim": {}}))
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['optim'\]"):
        load_config(a)
    a.write_text("model: [1, 2")
    with pytest.raises(ValueError, match="is not valid YAML"):
        load_config(a)
