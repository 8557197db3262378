"""The committed metrics of a benchmark, read back by seed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def seeds(results: Path) -> list[int]:
    """Seeds with a finished main evaluation (``seed<S>/mrrcnn.json``), in order."""
    return sorted(int(p.name[4:]) for p in results.glob("seed*") if (p / "mrrcnn.json").is_file())


def per_seed(results: Path, seeds: list[int], name: str) -> list[dict[str, Any] | None]:
    """``seed<S>/<name>.json`` of every seed, None where it is missing."""
    paths = [results / f"seed{s}" / f"{name}.json" for s in seeds]
    return [json.loads(p.read_text()) if p.is_file() else None for p in paths]


def differences(
    runs: list[dict[str, Any] | None], references: list[dict[str, Any] | None], key: str
) -> list[float]:
    """Per-seed ``run[key] - reference[key]`` over the seeds where both exist and hold a number."""
    return [
        r[key] - b[key]
        for r, b in zip(runs, references)
        if r is not None and b is not None and r.get(key) is not None and b.get(key) is not None
    ]
