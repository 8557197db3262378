"""Run configuration: YAML files under ``configs/``, ``_base_`` inheritance and ``key=value`` overrides.

A configuration has four sections (see ``configs/`` for complete examples):

* ``model``: ``name`` (a key of :data:`mrrcnn.models.MODELS`) and that builder's keyword arguments, such
  as ``num_classes``, ``base_weights``, and for MR R-CNN the ablation switches ``alpha``, ``shape_aware``,
  ``refine_cls``, ``refine_reg``;
* ``data``: ``train`` and ``val`` as ``{images: DIR, annotations: FILE}``, ``hflip``, ``workers``, ``skip_bad``;
* ``train``: the optimisation recipe (see :data:`DEFAULTS`);
* ``eval``: ``batch_size``, ``backend``, ``mask_threshold``.

``_base_: other.yaml`` (relative to the file) loads that file first and merges this one over it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "model": {},
    "data": {"hflip": 0.5, "workers": 2, "skip_bad": False},
    "train": {
        "output_dir": "runs/default",
        "iterations": 1000,
        "batch_size": 2,
        "lr": 0.02,
        "momentum": 0.9,
        "weight_decay": 1.0e-4,
        "warmup_iters": 100,
        "warmup_factor": 0.001,
        "milestones": [],
        "gamma": 0.1,
        "amp": True,
        "checkpoint_every": 500,
        "eval_every": 0,
        "log_every": 20,
        "seed": 0,
    },
    "eval": {"batch_size": 2, "backend": None, "mask_threshold": 0.5},
}
SECTIONS = tuple(DEFAULTS)


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
    ``null``, ``false``)."""
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
        node = config
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {override!r}: {part!r} is not a mapping")
        node[parts[-1]] = value
    return config


def load_config(path: str | Path, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Read ``path`` (following ``_base_``), fill in :data:`DEFAULTS`, then apply ``overrides``."""
    config = apply_overrides(_merge(DEFAULTS, _read(Path(path))), overrides or ())
    unknown = set(config["train"]) - set(DEFAULTS["train"])
    if unknown:
        raise ValueError(
            f"{path}: unknown train key(s) {sorted(unknown)}; known: {sorted(DEFAULTS['train'])}"
        )
    if "name" not in config["model"]:
        raise ValueError(f"{path}: model.name is missing (one of mrrcnn.models.MODELS)")
    return config


def dump_config(config: dict[str, Any]) -> str:
    """The configuration as YAML text, as saved next to a run's checkpoints."""
    return yaml.safe_dump(config, sort_keys=False)
