"""The paper's Tables 3, 4 and 5 in miniature, with an equal-compute control, and whether SARA helps.

    python bench/reproduce.py --seeds 0                      # train, evaluate, write docs/RESULTS.md
    python bench/reproduce.py --seeds 2 3 4                  # more seeds; finished steps are skipped
    python bench/reproduce.py --benchmark uniform --seeds 0  # the harder variant
    python bench/reproduce.py --report-only                  # rewrite docs/RESULTS.md from bench/results
    python bench/reproduce.py --study beyond [--benchmark uniform] [--confirm]   # beyond the paper

Per seed: a Mask R-CNN (``synthetic/maskrcnn_small``) trains from scratch; from that one checkpoint, for
the same number of iterations and with the same recipe, runs fine-tune: the Mask R-CNN itself (the
equal-compute control the paper lacks), the refining module without SARA, MR R-CNN, and SARA fed
ground-truth masks (the oracles of the SARA study: the instance's own mask, and 1 minus the others'); with
``--runs all`` also classification-only and regression-only refinement (Table 4). Every run is evaluated
on val (COCO AP overall and on huddled / isolated instances), MR R-CNN also at every alpha of Table 5
without retraining, and the oracle with degraded masks (``bench/reproduction/sara.py``).

Resumable at every step (``bench/reproduction/runs.py``); checkpoints and data live under ``--work``,
metrics under ``bench/results/`` (committed), from which the report writes ``docs/RESULTS.md`` and its
figures. The data are the same for every seed (``--data-seed``); the seed changes initialisation,
sampling and augmentation.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from reproduction import beyond
from reproduction.diagnose import diagnose, figure_fig5
from reproduction.markdown import report
from reproduction.runs import (
    ALPHAS,
    BENCHMARKS,
    CORE_RUNS,
    DIAGNOSED,
    FIGURES,
    ROOT,
    RUNS,
    Benchmark,
    evaluate,
    make_data,
    train_runs,
    write_commands,
)
from reproduction.sara import figure_sara_features, run_sara_study


def run_seed(benchmark: Benchmark, seed: int, work: Path, runs: tuple[str, ...], data_command: str) -> None:
    """Train, evaluate and diagnose one seed's runs; every step skipped when its output exists."""
    weights = train_runs(benchmark, runs, seed, work)
    results = benchmark.results / f"seed{seed}"
    for run, path in weights.items():
        evaluate(path, results / f"{run}.json", work, records=True)
    if benchmark.name == "synthetic":
        for alpha in ALPHAS:
            evaluate(weights["mrrcnn"], results / f"mrrcnn_alpha{alpha:g}.json", work, alpha=alpha)
    if "mrrcnn_oracle" in weights:
        run_sara_study(weights, results, work)
    for run in DIAGNOSED:
        out = results / f"{run}_diagnostics.json"
        if run in weights and not out.is_file():
            out.write_text(
                json.dumps(
                    diagnose(weights[run].parent / "results_val.json", work / "data/annotations/val.json")
                )
            )
    write_commands(benchmark, tuple(weights), seed, work, data_command)
    if benchmark.name != "synthetic":
        return
    if seed == 0 and not (FIGURES / "fig5_huddled.png").is_file():
        control = {"Mask R-CNN + same fine-tune": weights["maskrcnn_finetune"], "MR R-CNN": weights["mrrcnn"]}
        figure_fig5(control, work, FIGURES / "fig5_huddled.png")
    if "mrrcnn_oracle" in weights and not (FIGURES / "sara_features.png").is_file():
        figure_sara_features(weights["mrrcnn"], work, FIGURES / "sara_features.png")


def study_plan(study: str, benchmark: str, confirm: bool, seeds: list[int] | None, runs: str):
    """The study's benchmark, seeds and runs: the reproduction's from the arguments, the pre-registered
    ones for ``beyond`` (``confirm``: its confirmation seeds, for the variant its decision rule chose)."""
    if study == "reproduce":
        return BENCHMARKS[benchmark], seeds or [0], CORE_RUNS if runs == "core" else tuple(RUNS)
    if not confirm:
        return (
            beyond.STUDY_BENCHMARKS[benchmark],
            seeds or list(beyond.SELECTION_SEEDS[benchmark]),
            beyond.VARIANTS,
        )
    gains = beyond.selection_gains(beyond.STUDY_BENCHMARKS)
    if gains is None:
        raise SystemExit("--confirm: not every selection seed of both benchmarks is in yet")
    chosen = beyond.choose(gains)
    logging.getLogger("reproduce").info("the decision rule chose %s", chosen)
    return (
        beyond.STUDY_BENCHMARKS[benchmark],
        seeds or list(beyond.CONFIRMATION_SEEDS[benchmark]),
        (beyond.BASELINE, beyond.OWN, chosen),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", choices=BENCHMARKS, default="synthetic")
    parser.add_argument(
        "--study",
        choices=("reproduce", "beyond"),
        default="reproduce",
        help="reproduce: the paper's tables and the SARA study; beyond: the pre-registered SARA weightings "
        "(docs/preregistration/beyond_the_paper.md), its selection seeds by default",
    )
    parser.add_argument(
        "--confirm", action="store_true", help="--study beyond: the chosen variant's confirmation seeds"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0, or the study's registered seeds")
    parser.add_argument(
        "--runs", choices=("core", "all"), default="core", help="core: Table 3 and the oracle"
    )
    parser.add_argument("--work", type=Path, help="data and checkpoints (default: runs/<study>[_BENCHMARK])")
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--report-only", action="store_true", help="only rewrite docs/RESULTS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.report_only:
        benchmark, seeds, runs = study_plan(args.study, args.benchmark, args.confirm, args.seeds, args.runs)
        work = args.work or benchmark.default_work
        data_command = make_data(benchmark, work, args.train_images, args.val_images, args.data_seed)
        for seed in seeds:
            if args.study == "beyond":
                beyond.run_seed(benchmark, seed, runs, work, data_command)
            else:
                run_seed(benchmark, seed, work, runs, data_command)
            report(ROOT / "docs" / "RESULTS.md")
    report(ROOT / "docs" / "RESULTS.md")


if __name__ == "__main__":
    main()
