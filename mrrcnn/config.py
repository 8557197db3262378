"""Run configuration: YAML files shipped in ``mrrcnn/configs/``, ``_base_`` inheritance, ``key=value``
overrides, and strict validation of every key.

A configuration has four sections (see ``mrrcnn/configs/`` for complete examples):

* ``model``: ``name`` (a key of :data:`mrrcnn.models.MODELS`) and that builder's keyword arguments, such
  as ``num_classes``, ``base_weights``, and for MR R-CNN the ablation switches ``alpha``, ``shape_aware``,
  ``refine_cls``, ``refine_reg`` and ``sara_weighting`` (:data:`MODEL_KEYS`);
* ``data``: ``train`` and ``val`` as ``{images: DIR, annotations: FILE}``, ``hflip``, ``workers``, ``skip_bad``,
  training crops ``crop_size`` and ``crop_min_area``,
  and how images are read: ``intensity`` and ``percentiles`` (:func:`mrrcnn.data.images.read_image`);
* ``train``: the optimisation recipe;
* ``eval``: ``batch_size``, ``backend``, ``mask_threshold``, ``score_threshold``, ``touch_distance``,
  ``tile_size``, ``tile_overlap``.

:data:`SCHEMA` lists every key of ``data``, ``train`` and ``eval`` with its default and what it accepts.
An unknown key, a value of the wrong type or out of range is a ``ValueError`` naming ``section.key``.

A config is named by a path, or by its name under ``mrrcnn/configs/`` (``coco/mrrcnn_r50_fpn``, with or
without ``.yaml``), as detectron2's ``model_zoo.get_config_file`` does. ``_base_: other.yaml`` (relative to
the file) loads that file first and merges this one over it.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass(frozen=True)
class Key:
    """One configuration key: its default and what it accepts (``rule``, as an error message words it)."""

    default: Any
    accepts: Callable[[Any], bool]
    rule: str


def _int(low: int, high: float = math.inf) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _number(low: float, high: float = math.inf, open_low: bool = False) -> Callable[[Any], bool]:
    def accepts(v: Any) -> bool:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return False
        return (low < v if open_low else low <= v) and v <= high

    return accepts


def _boolean(v: Any) -> bool:
    return isinstance(v, bool)


def _optional(accepts: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or accepts(v)


def _one_of(*choices: Any) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _path(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _split(v: Any) -> bool:
    return v is None or (
        isinstance(v, dict) and v.keys() == {"images", "annotations"} and all(map(_path, v.values()))
    )


def _ints(count: int | None = None, low: int = 1) -> Callable[[Any], bool]:
    def accepts(v: Any) -> bool:
        return isinstance(v, list) and (count is None or len(v) == count) and all(_int(low)(x) for x in v)

    return accepts


def _numbers(count: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) == count and all(_number(-math.inf)(x) for x in v)


def _percentiles(v: Any) -> bool:
    return _numbers(2)(v) and 0 <= v[0] < v[1] <= 100


# How images are read (mrrcnn.data.images.read_image). The default percentiles are csbdeep's and stardist's.
INTENSITIES = ("full_range", "percentile")
DEFAULT_PERCENTILES = (1.0, 99.8)

PROBABILITY = (_number(0.0, 1.0), "a number in [0, 1]")
FRACTION = (_number(0.0, 1.0, open_low=True), "a number in (0, 1]")
COUNT = (_int(1), "an integer >= 1")
SPLIT = (_split, "null or a mapping with exactly 'images' (a folder) and 'annotations' (a json file)")
BOOLEAN = (_boolean, "true or false")

SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "train": Key(None, *SPLIT),
        "val": Key(None, *SPLIT),
        "hflip": Key(0.5, *PROBABILITY),
        "workers": Key(2, _int(0), "an integer >= 0"),
        "skip_bad": Key(False, *BOOLEAN),
        "intensity": Key(
            "full_range",
            _one_of(*INTENSITIES),
            "full_range (8-bit images scaled by 255, 16-bit by 65535) or percentile (each image's "
            "data.percentiles to 0 and 1, as microscopy tools normalise)",
        ),
        "percentiles": Key(list(DEFAULT_PERCENTILES), _percentiles, "[low, high], 0 <= low < high <= 100"),
        "crop_size": Key(
            0, _int(0), "an integer >= 0 (0: off; else training crops of that many image pixels a side)"
        ),
        "crop_min_area": Key(16, _int(0), "an integer >= 0 (pixels a cut instance keeps to stay a target)"),
    },
    "train": {
        "output_dir": Key("runs/default", _path, "a folder path"),
        "iterations": Key(1000, *COUNT),
        "batch_size": Key(2, *COUNT),
        "lr": Key(0.02, _number(0.0), "a finite number >= 0"),
        "momentum": Key(0.9, _number(0.0, 1.0), "a number in [0, 1]"),
        "weight_decay": Key(1.0e-4, _number(0.0), "a finite number >= 0"),
        "warmup_iters": Key(100, _int(0), "an integer >= 0"),
        "warmup_factor": Key(0.001, _number(0.0, 1.0), "a number in [0, 1]"),
        "milestones": Key([], _ints(low=0), "a list of increasing iteration numbers"),
        "gamma": Key(0.1, _number(0.0), "a finite number >= 0"),
        "amp": Key(True, *BOOLEAN),
        "checkpoint_every": Key(500, _int(0), "an integer >= 0 (0: at the end only)"),
        "eval_every": Key(0, _int(0), "an integer >= 0 (0: never during training)"),
        "log_every": Key(20, *COUNT),
        "seed": Key(0, _int(0), "an integer >= 0"),
        "device": Key(None, _optional(_one_of("cpu", "cuda")), "null (CUDA when available), cpu or cuda"),
    },
    "eval": {
        "batch_size": Key(2, *COUNT),
        "backend": Key(
            None, _one_of(None, "pycocotools", "faster_coco_eval"), "null, pycocotools or faster_coco_eval"
        ),
        "mask_threshold": Key(0.5, _number(0.0, 1.0, open_low=True), "a number in (0, 1]"),
        "score_threshold": Key(0.5, *PROBABILITY),
        "touch_distance": Key(2, _int(0), "an integer >= 0 (pixels between two masks that touch)"),
        "tile_size": Key(1024, _int(64), "an integer >= 64 (model-input pixels a side)"),
        "tile_overlap": Key(128, _int(0), "an integer >= 0 (model-input pixels)"),
    },
}
SECTIONS = ("model", *SCHEMA)

# Model keys: what the builders of mrrcnn.models accept, by the family of builders that accepts them.
_THRESHOLD = (_number(0.0, 1.0), "a number in [0, 1]")
_COMMON_MODEL_KEYS = {
    "num_classes": (_optional(_int(2)), "null or an integer >= 2 (largest category id + 1)"),
    "base_weights": (_optional(_path), "null, a checkpoint path or a torchvision weights name"),
    "min_size": (lambda v: _int(1)(v) or (_ints()(v) and bool(v)), "an integer >= 1 or a list of them"),
    "max_size": COUNT,
    "resize": (
        _one_of("min_max", "scale"),
        "min_max (shorter side to min_size, longer at most max_size) or scale (every image times model.scale)",
    ),
    "scale": (_number(0.0, open_low=True), "a finite number > 0"),
    "image_mean": (_numbers(3), "a list of 3 numbers"),
    "image_std": (_numbers(3), "a list of 3 numbers"),
    "rpn_pre_nms_top_n_train": COUNT,
    "rpn_pre_nms_top_n_test": COUNT,
    "rpn_post_nms_top_n_train": COUNT,
    "rpn_post_nms_top_n_test": COUNT,
    "rpn_nms_thresh": _THRESHOLD,
    "rpn_fg_iou_thresh": _THRESHOLD,
    "rpn_bg_iou_thresh": _THRESHOLD,
    "rpn_batch_size_per_image": COUNT,
    "rpn_positive_fraction": FRACTION,
    "rpn_score_thresh": _THRESHOLD,
    "box_score_thresh": _THRESHOLD,
    "box_nms_thresh": _THRESHOLD,
    "box_detections_per_img": COUNT,
    "box_fg_iou_thresh": _THRESHOLD,
    "box_bg_iou_thresh": _THRESHOLD,
    "box_batch_size_per_image": COUNT,
    "box_positive_fraction": FRACTION,
    "bbox_reg_weights": (_optional(_numbers(4)), "null or a list of 4 numbers"),
}
MODEL_KEYS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "all": _COMMON_MODEL_KEYS,
    "mrrcnn": {
        "alpha": (_number(0.0), "a finite number >= 0"),
        "shape_aware": BOOLEAN,
        "refine_cls": BOOLEAN,
        "refine_reg": BOOLEAN,
        "sara_masks": (
            _one_of("predicted", "ground_truth", "ground_truth_others"),
            "predicted, ground_truth or ground_truth_others",
        ),
        "sara_weighting": (
            _one_of("own", "others", "ownership", "iterative"),
            "own, others, ownership or iterative",
        ),
    },
    "fpn": {
        "weights_backbone": (_optional(_path), "null or a torchvision weights name"),
        "trainable_backbone_layers": (_optional(_int(0, 5)), "null or an integer in 0..5"),
    },
    "small": {
        "channels": COUNT,
        "mask_channels": COUNT,
        "representation_size": COUNT,
        "anchor_sizes": (_ints(5), "a list of 5 integers >= 1 (one per FPN level)"),
    },
}


def model_families(name: str) -> list[str]:
    """The groups of :data:`MODEL_KEYS` that the builder ``name`` accepts."""
    return [
        "all",
        *(["mrrcnn"] if name.startswith("mrrcnn") else []),
        "small" if name.endswith("small") else "fpn",
    ]


def resolve_config_path(name: str | Path) -> Path:
    """A config file from its path, or from its name under :data:`CONFIG_DIR` (``coco/mrrcnn_r50_fpn``)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path, CONFIG_DIR / path.with_name(path.name + ".yaml")):
        if candidate.is_file() and CONFIG_DIR in candidate.resolve().parents:
            return candidate
    shipped = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))
    raise ValueError(
        f"config {str(name)!r} is neither a file nor a shipped config; shipped: {', '.join(shipped)}"
    )


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        raise ValueError(f"{path}: _base_ chain loops: {' -> '.join(map(str, chain + (path,)))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ValueError(f"cannot read config {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config is a mapping of sections, got {type(data).__name__}")
    base = data.pop("_base_", None)
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; sections are {list(SECTIONS)}")
    for section, value in data.items():
        if not isinstance(value, dict):
            raise ValueError(f"{path}: section {section!r} must be a mapping, got {type(value).__name__}")
    if base is None:
        return data
    return _merge(_read(path.parent / base, chain + (path,)), data)


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key[.subkey]=value`` overrides; values are parsed as YAML (``1e-3``, ``[1, 2]``,
    ``null``, ``false``). The result is not validated: :func:`validate_config` does that."""
    config = copy.deepcopy(config)
    for override in overrides:
        key, sep, text = override.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise ValueError(f"override {override!r} must look like section.key=value")
        if parts[0] not in SECTIONS:
            raise ValueError(
                f"override {override!r}: unknown section {parts[0]!r}; sections are {list(SECTIONS)}"
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"override {override!r}: value is not valid YAML: {e}") from e
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            # YAML 1.1 reads 1e-3 (no dot) as a string; on a command line it is a number.
            value = float(value)
        node = config
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {override!r}: {part!r} is not a mapping")
        node[parts[-1]] = value
    return config


def _unknown(where: str, key: str, known: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}"
    return ValueError(f"{where}.{key} is not a known key; {hint}")


def _validate_model(model: dict[str, Any]) -> None:
    from .models import MODELS  # imported here: the models import torchvision, configs alone do not

    name = model.get("name")
    if name not in MODELS:
        raise ValueError(f"model.name must be one of {', '.join(MODELS)}, got {name!r}")
    families = model_families(name)
    accepted = {k: v for family in families for k, v in MODEL_KEYS[family].items()}
    for key, value in model.items():
        if key == "name":
            continue
        if key not in accepted:
            owner = next((f for f, keys in MODEL_KEYS.items() if key in keys), None)
            if owner is not None:
                raise ValueError(f"model.{key} does not apply to model {name!r} (only to {owner} models)")
            every = [k for keys in MODEL_KEYS.values() for k in keys]
            close = difflib.get_close_matches(key, every, n=1)
            if close and close[0] not in accepted:
                raise ValueError(
                    f"model.{key} is not a known key; did you mean {close[0]!r}? (it applies to "
                    f"{next(f for f, keys in MODEL_KEYS.items() if close[0] in keys)} models only, not {name!r})"
                )
            raise _unknown("model", key, list(accepted))
        accepts, rule = accepted[key]
        if not accepts(value):
            raise ValueError(f"model.{key} must be {rule}, got {value!r}")
    if model.get("num_classes") is None and name.endswith("small"):
        raise ValueError(f"model.num_classes is required for {name!r} (largest category id + 1)")


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every section's defaults filled in, every key checked.

    Raises:
        ValueError: naming ``section.key``: an unknown section or key, a missing ``model.name``, or a value
            of the wrong type or out of range (with what the key accepts).
    """
    if not isinstance(config, dict):
        raise ValueError(f"a config is a mapping of sections, got {type(config).__name__}")
    unknown = set(config) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {sorted(unknown)}; sections are {list(SECTIONS)}")
    checked: dict[str, Any] = {"model": copy.deepcopy(config.get("model") or {})}
    _validate_model(checked["model"])
    for section, keys in SCHEMA.items():
        given = config.get(section) or {}
        if not isinstance(given, dict):
            raise ValueError(f"section {section!r} must be a mapping, got {type(given).__name__}")
        for key in given:
            if key not in keys:
                raise _unknown(section, key, list(keys))
        checked[section] = {}
        for key, spec in keys.items():
            value = copy.deepcopy(given.get(key, spec.default))
            if not spec.accepts(value):
                raise ValueError(f"{section}.{key} must be {spec.rule}, got {value!r}")
            checked[section][key] = value
    milestones = checked["train"]["milestones"]
    if milestones != sorted(set(milestones)):
        raise ValueError(f"train.milestones must increase, got {milestones!r}")
    if checked["eval"]["tile_size"] <= checked["eval"]["tile_overlap"]:
        raise ValueError(
            f"eval.tile_size ({checked['eval']['tile_size']}) must exceed eval.tile_overlap "
            f"({checked['eval']['tile_overlap']}), so that tiles advance"
        )
    return checked


def validate_overridden(config: dict[str, Any], overrides: Sequence[str], source: str) -> dict[str, Any]:
    """:func:`validate_config` of ``config`` with ``overrides`` applied. An error names the override at
    fault (the first without which the error differs), or else ``source``, where ``config`` came from."""
    overridden = apply_overrides(config, overrides)
    try:
        return validate_config(overridden)
    except ValueError as e:
        for index, override in enumerate(overrides):
            others = [o for i, o in enumerate(overrides) if i != index]
            try:
                validate_config(apply_overrides(config, others))
            except ValueError as without:
                if str(without) == str(e):
                    continue
            raise ValueError(f"override {override!r}: {e}") from e
        raise ValueError(f"{source}: {e}") from e


def load_config(path: str | Path, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Read ``path`` (a file or a shipped config's name, following ``_base_``), apply ``overrides`` and
    validate the result (:func:`validate_overridden`); errors name the file or the override at fault."""
    path = resolve_config_path(path)
    return validate_overridden(_read(path), overrides or (), str(path))


def dump_config(config: dict[str, Any]) -> str:
    """The configuration as YAML text, as saved next to a run's checkpoints."""
    return yaml.safe_dump(config, sort_keys=False)
