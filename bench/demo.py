"""``mrrcnn demo`` with its defaults, timed stage by stage, and its table; optionally against a revision.

    python bench/demo.py                      # writes docs/benchmarks/demo.md
    python bench/demo.py --baseline 45f0856   # the same demo at that revision first, in a git worktree
    python bench/demo.py --seeds 0 1 2        # the demo at three seeds (each revision's mean AP too)

Each demo runs in a process of its own (``python -m mrrcnn demo --no-progress``, from the revision's source
for the baseline) into a temporary folder; its log's stage lines give the time of each stage, its
``results.md`` the AP of its three rows. Then the demo's Mask R-CNN trained for a few iterations with
data loaded in the training process and by one loader process (``data.workers`` 0 and 1), twice each in
turns: the time, and whether the weights are the same. Run it alone on the machine: the demo's time is
what users wait.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from common import ROOT, header, machine, worktree, write_report

# Log line that starts a stage -> the stage's name in the table.
STAGES = {
    "[1/6] synthetic data": "data",
    "[2-3/6] Mask R-CNN: training": "Mask R-CNN (600 it)",
    "[2-3/6] Mask R-CNN +ft: training": "control fine-tune (200 it)",
    "[2-3/6] MR R-CNN: training": "MR R-CNN fine-tune (200 it)",
    "[4/6] evaluating": "evaluation",
    "[5/6] results": "table and figure",
}
ROWS = ("bbox/AP", "segm/AP", "huddled/bbox/AP", "huddled/segm/AP")


def run_demo(source: Path, out: Path, seed: int) -> tuple[dict[str, float], float, dict[str, list[str]]]:
    """The demo with ``--seed seed`` from ``source``'s package into ``out``: seconds per stage, total minutes
    as it logs them, and the table's rows of :data:`ROWS` (a value per model)."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    log = subprocess.run(
        [sys.executable, "-m", "mrrcnn", "demo", "--out", str(out), "--no-progress", "--seed", str(seed)],
        env=env,
        cwd=out.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    starts = []
    for line in log.splitlines():
        for marker, stage in STAGES.items():
            if marker in line:
                starts.append((stage, datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")))
    end = datetime.strptime(
        [line for line in log.splitlines() if "done in" in line][-1][:23], "%Y-%m-%d %H:%M:%S,%f"
    )
    times = {
        stage: ((starts[k + 1][1] if k + 1 < len(starts) else end) - start).total_seconds()
        for k, (stage, start) in enumerate(starts)
    }
    minutes = float(re.search(r"done in ([0-9.]+) minutes", log).group(1))
    table = {}
    for line in (out / "results.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ROWS:
            table[cells[0]] = cells[1:]
    return times, minutes, table


def loader_processes(data: Path, folder: Path, iterations: int = 120) -> list[tuple[int, float, str]]:
    """``(data.workers, seconds, weights' digest)`` of the demo's Mask R-CNN trained ``iterations`` on
    ``data`` with 0 and 1 loader processes, twice each, in turns."""
    from mrrcnn.config import load_config
    from mrrcnn.engine.train import train

    rows = []
    for k, workers in enumerate((1, 0, 1, 0)):
        overrides = [
            f"data.train.images={data / 'train'}",
            f"data.train.annotations={data / 'annotations/train.json'}",
            f"data.workers={workers}",
            f"train.iterations={iterations}",
            f"train.output_dir={folder / f'workers{k}'}",
            "train.checkpoint_every=0",
        ]
        started = time.perf_counter()
        final = train(load_config("synthetic/maskrcnn_small", overrides), progress=False)
        seconds = time.perf_counter() - started
        state = torch.load(final, weights_only=True)["model"]
        digest = hashlib.sha256(b"".join(v.contiguous().numpy().tobytes() for v in state.values()))
        rows.append((workers, seconds, digest.hexdigest()[:12]))
    return rows


def ap_table(runs: dict, seeds: list[int]) -> str:
    """The AP rows of every run, then (more than one seed) each revision's mean over its seeds."""
    text = "| revision | seed | metric | Mask R-CNN | Mask R-CNN +ft | MR R-CNN |\n|---|---:|---|---:|---:|---:|\n"
    text += "".join(
        f"| {rev} | {seed} | {row} | {' | '.join(table.get(row, ['-'] * 3))} |\n"
        for (rev, seed), (_, _, table) in runs.items()
        for row in ROWS
    )
    if len(seeds) > 1:
        for rev in dict.fromkeys(rev for rev, _ in runs):
            for row in ROWS:
                values = [[float(v) for v in runs[rev, seed][2][row]] for seed in seeds]
                means = " | ".join(f"{sum(column) / len(seeds):.1f}" for column in zip(*values))
                text += f"| {rev} | mean | {row} | {means} |\n"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a git revision to run the demo at first, for comparison")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="the demo's --seed, one run each")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/demo.md")
    args = parser.parse_args(argv)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            if args.baseline:
                with worktree(args.baseline) as tree:
                    runs[f"`{args.baseline}`", seed] = run_demo(tree, Path(folder) / f"baseline{seed}", seed)
            runs[f"`{head.stdout.strip()}` (this one)", seed] = run_demo(
                ROOT, Path(folder) / f"demo{seed}", seed
            )
        loaders = loader_processes(Path(folder) / f"demo{args.seeds[0]}" / "data", Path(folder))
    time_table = "| revision | seed | " + " | ".join(STAGES.values()) + " | total (as logged) |\n"
    time_table += "|---|---:|" + "---:|" * (len(STAGES) + 1) + "\n"
    time_table += "".join(
        f"| {rev} | {seed} | "
        + " | ".join(f"{times.get(s, 0):.0f} s" for s in STAGES.values())
        + f" | {minutes:.1f} min |\n"
        for (rev, seed), (times, minutes, _) in runs.items()
    )
    loader_table = "| data.workers | seconds (120 iterations) | weights |\n|---:|---:|---|\n" + "".join(
        f"| {w} | {s:.1f} | `{d}` |\n" for w, s, d in loaders
    )
    text = (
        "# `mrrcnn demo` on the CPU: how long it takes, and its table\n\n"
        f"{header('demo.py', argv, 1)}\n\n- cpu: {machine('cpu')}\n\n"
        "The demo with its defaults (240 + 60 synthetic images of 160 px) at each seed, each in a process of "
        "its own, the baseline's first; seconds per stage from its log, the total as it logs it, and its "
        "table's AP (COCO, %).\n\n"
        + time_table
        + "\n"
        + ap_table(runs, args.seeds)
        + "\nThe demo's Mask R-CNN (`synthetic/maskrcnn_small`, its data) trained 120 iterations with data "
        "loaded in the training process (`data.workers` 0, the synthetic configs' setting) and by one loader "
        "process (1), in turns; the weights' digest shows whether they differ:\n\n" + loader_table
    )
    print(text)
    write_report(args.out, text)


if __name__ == "__main__":
    main()
