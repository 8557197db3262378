"""``mrrcnn demo`` at the study's five seeds, scored by the matching metrics microscopy compares by.

    python bench/demo_matching.py                       # trains what is not trained yet, then evaluates
    python bench/demo_matching.py --work runs/demo_seeds --seeds 0 1 2 3 4

Each seed runs ``python -m mrrcnn demo --out WORK/seed{S} --seed S`` (the demo skips the trainings whose
``final.pth`` exists, so a second call only evaluates); each model's ``metrics_val.json`` is committed to
``bench/results/demo_matching/seed{S}/{run}.json``, and ``bench/reproduction/markdown.py`` puts the table
into docs/RESULTS.md ("Matching metrics at demo size").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "demo_matching"
# The demo's run folders (mrrcnn.engine.demo.RUNS).
FOLDERS = ("maskrcnn", "maskrcnn_finetune", "mrrcnn")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "demo_seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args(argv)
    for seed in args.seeds:
        out = args.work / f"seed{seed}"
        command = [
            sys.executable,
            "-m",
            "mrrcnn",
            "demo",
            "--out",
            str(out),
            "--seed",
            str(seed),
            "--no-progress",
        ]
        subprocess.run(command, check=True, cwd=ROOT)
        target = RESULTS / f"seed{seed}"
        target.mkdir(parents=True, exist_ok=True)
        for folder in FOLDERS:
            metrics = json.loads((out / folder / "metrics_val.json").read_text())
            metrics["command"] = " ".join(["python -m mrrcnn", *command[3:]])
            (target / f"{folder}.json").write_text(json.dumps(metrics, indent=1) + "\n")
        print(f"seed {seed}: {target}")


if __name__ == "__main__":
    main()
