"""``docs/RESULTS.md``'s "Beyond the paper": the pre-registered SARA-weighting study, from its committed
metrics (``bench/results/beyond[_uniform]/``), its plan and the git history that dates the plan."""

from __future__ import annotations

import json
import statistics
import subprocess
from typing import Any

from . import load, plots
from .beyond import (
    BASELINE,
    CANDIDATES,
    CONFIRMATION_SEEDS,
    GOAL_BOX_AP,
    METRICS,
    OWN,
    PREREGISTRATION,
    SELECTION_SEEDS,
    STUDY_BENCHMARKS,
    VARIANTS,
    choose,
    selection_gains,
)
from .runs import FIGURES, ROOT
from .stats import judge, mean_std

COST = ROOT / "bench" / "results" / "beyond" / "cost.json"
COST_NAMES = {
    BASELINE: "no SARA",
    OWN: "own (MR R-CNN)",
    **{r: r.removeprefix("mrrcnn_") for r in CANDIDATES},
}
LABELS = {
    BASELINE: "RM without SARA",
    OWN: "own (the paper)",
    **{r: r.removeprefix("mrrcnn_") for r in CANDIDATES},
}


def _first_commit(path: str) -> str:
    """``hash (date)`` of the first commit that added a file matching ``path`` (a git pathspec), or "not
    committed yet"."""
    log = subprocess.run(
        [
            "git",
            "log",
            "--diff-filter=A",
            "--reverse",
            "--format=%h (%cd)",
            "--date=format:%Y-%m-%d %H:%M",
            "--",
            path,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")[0]
    return f"`{log.split(' ', 1)[0]}` {log.split(' ', 1)[1]}" if log else "not committed yet"


def _metrics(name: str, seeds: tuple[int, ...], run: str) -> list[dict[str, Any] | None]:
    return load.per_seed(STUDY_BENCHMARKS[name].results, list(seeds), run)


def _present(name: str, seeds: tuple[int, ...], runs: tuple[str, ...]) -> tuple[int, ...]:
    """The seeds of ``seeds`` at which every run of ``runs`` has its metrics."""
    return tuple(s for s in seeds if all(_metrics(name, (s,), r)[0] for r in runs))


def _paired(name: str, seeds: tuple[int, ...], run: str, reference: str, metric: str) -> list[float]:
    return load.differences(_metrics(name, seeds, run), _metrics(name, seeds, reference), metric)


def _cell(differences: list[float]) -> str:
    word = judge(differences)
    short = {"a gain": "gain", "a loss": "loss", "not distinguishable from zero": "n.s."}.get(
        word, "one seed"
    )
    return f"{mean_std(differences)} ({short})" if differences else "-"


def _read_iou(name: str, seeds: tuple[int, ...], run: str, subset: str = "all") -> float | None:
    found = [m for m in load.per_seed(STUDY_BENCHMARKS[name].results, list(seeds), f"{run}_read_masks") if m]
    return statistics.mean(m[f"mask_iou/{subset}"] for m in found) if found else None


def results_table(name: str, seeds: tuple[int, ...], runs: tuple[str, ...]) -> str:
    """Per run: AP means over ``seeds``, the IoU of the masks its SARA reads, its cost against own."""
    cost = json.loads(COST.read_text()) if COST.is_file() else {}
    head = (
        "| run | seeds | box AP | huddled box AP | mask AP | huddled mask AP | read masks' IoU (huddled) | "
        "training step vs own | inference vs own |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        metrics = _metrics(name, seeds, run)
        iou, huddled = _read_iou(name, seeds, run), _read_iou(name, seeds, run, "huddled")
        costs = cost.get(COST_NAMES[run], {})
        lines.append(
            f"| {LABELS[run]} | {sum(m is not None for m in metrics)} | "
            + " | ".join(mean_std([m[k] if m else None for m in metrics]) for k in METRICS)
            + f" | {'-' if iou is None else f'{iou:.3f} ({huddled:.3f})'} | "
            + " | ".join(
                f"{costs[t]['vs_own']:.2f}x" if t in costs else "-" for t in ("training_step", "inference")
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def differences_table(name: str, seeds: tuple[int, ...], runs: tuple[str, ...]) -> str:
    """Every run's paired differences over RM without SARA and over own, with the t-test's word."""
    lines = [
        "| comparison (paired by seed) | seeds | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---:|" * len(METRICS),
    ]
    for run in runs:
        for reference in (BASELINE, OWN):
            if run in (reference, BASELINE):
                continue
            cells = [_cell(_paired(name, seeds, run, reference, k)) for k in METRICS]
            count = len(_paired(name, seeds, run, reference, "bbox/AP"))
            lines.append(f"| {LABELS[run]} - {LABELS[reference]} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def goal(name: str, seeds: tuple[int, ...], run: str) -> tuple[bool, str]:
    """Whether ``run`` meets the registered goal on ``seeds`` of benchmark ``name``, and why (or why not)."""
    box, huddled, mask = (
        _paired(name, seeds, run, BASELINE, k) for k in ("bbox/AP", "huddled/bbox/AP", "segm/AP")
    )
    if len(box) < 2:
        return False, "fewer than two seeds"
    checks = {
        f"box AP +{GOAL_BOX_AP} or more": statistics.mean(box) >= GOAL_BOX_AP,
        "significant": judge(box) == "a gain",
        "as much on huddled instances": statistics.mean(huddled) >= statistics.mean(box),
        "no mask-AP loss": judge(mask) != "a loss",
    }
    failed = [k for k, ok in checks.items() if not ok]
    summary = f"box AP {statistics.mean(box):+.1f}, huddled {statistics.mean(huddled):+.1f}, mask {statistics.mean(mask):+.1f}"
    return not failed, summary + ("" if not failed else f"; not met: {', '.join(failed)}")


def beyond_section(quality: dict[str, Any]) -> str:
    """The section, with the figure; ``quality`` is the SARA study's mask-quality numbers (its oracle curves)."""
    plan = PREREGISTRATION.read_text().split("\n", 2)[2].strip()
    quoted = "\n".join(f"> {line}" if line else ">" for line in plan.splitlines())
    blocks, selected = [], {}
    for name in STUDY_BENCHMARKS:
        seeds = _present(name, SELECTION_SEEDS[name], VARIANTS)
        selected[name] = seeds
        blocks.append(
            f"#### {STUDY_BENCHMARKS[name].title.capitalize()}\n\n"
            + _seeds_in("Selection", seeds, SELECTION_SEEDS[name])
            + (
                results_table(name, seeds, VARIANTS) + "\n" + differences_table(name, seeds, VARIANTS)
                if seeds
                else ""
            )
        )
    gains = selection_gains(STUDY_BENCHMARKS)
    if gains is None:
        choice = "Not every selection seed is in yet: the decision rule has not been applied."
        confirmation = "Not run yet (it follows the choice)."
        verdict = "Not reached yet."
    else:
        chosen = choose(gains)
        scores = {
            run: statistics.mean(statistics.mean(gains[b][run]["bbox/AP"]) for b in gains)
            for run in CANDIDATES
        }
        choice = (
            "Mean box-AP gain over RM without SARA, averaged over the two benchmarks' selection seeds: "
            + ", ".join(f"{LABELS[r]} {s:+.2f}" for r, s in scores.items())
            + f". The rule chooses **{LABELS[chosen]}**."
        )
        confirmation, verdict = _confirmation(chosen, selected)
    _figure(quality, selected["synthetic"])
    return f"""## Beyond the paper: a shape-aware pooling that pays with predicted masks?

Whether a SARA weighting that uses the other instances' predicted masks, or the refining module's masks,
makes shape-aware pooling pay with the masks the model predicts (`model.sara_weighting`,
`docs/method.md`). Run as a trial: the plan below was committed in {_first_commit("docs/preregistration")},
before the study's first result ({_first_commit(":(glob)bench/results/beyond*/seed*/mrrcnn*.json")}); every run of it is in
`bench/results/beyond[_uniform]/` and reported here, chosen by the rule below and confirmed on seeds not
used to choose (`python bench/reproduce.py --study beyond [--benchmark uniform] [--confirm]`).

### The plan, as registered

{quoted}

### Selection seeds

{chr(10).join(blocks)}
### The choice

{choice}

### Confirmation seeds

{confirmation}

### Verdict

{verdict}

![box AP against the quality of the masks each variant reads](figures/beyond_mask_quality.png)
"""


def _seeds_in(label: str, seeds: tuple[int, ...], registered: tuple[int, ...]) -> str:
    return (
        f"{label} seeds with every run in: {', '.join(map(str, seeds)) or 'none yet'} "
        f"(registered: {', '.join(map(str, registered))}).\n\n"
    )


def _confirmation(chosen: str, selected: dict[str, tuple[int, ...]]) -> tuple[str, str]:
    """Per benchmark, the tables of the confirmation seeds in so far; the verdict on the registered goal
    once every registered confirmation seed of both benchmarks is in."""
    runs = (BASELINE, OWN, chosen)
    text, lines, met, complete = [], [], True, True
    for name, registered in CONFIRMATION_SEEDS.items():
        seeds = _present(name, registered, runs)
        complete = complete and seeds == registered
        title = STUDY_BENCHMARKS[name].title
        text.append(f"#### {title.capitalize()}\n\n" + _seeds_in("Confirmation", seeds, registered))
        if seeds:
            text.append(results_table(name, seeds, runs) + "\n" + differences_table(name, seeds, runs) + "\n")
        for label, group in (("selection", selected[name]), ("confirmation", seeds)):
            ok, why = goal(name, group, chosen)
            met = met and ok
            lines.append(f"- {title}, {label} seeds ({len(group)}): {'met' if ok else 'not met'} ({why}).")
    if not complete:
        return "".join(text).strip(), "Not reached yet: the confirmation seeds are not all in."
    verdict = (
        f"The registered goal for {LABELS[chosen]} (>= +{GOAL_BOX_AP} box AP over RM without SARA, "
        "significant on both benchmarks, on the selection and on the confirmation seeds; as much on huddled "
        "instances; no mask-AP loss) is **" + ("met" if met else "not met") + "**:\n\n" + "\n".join(lines)
    )
    return "".join(text).strip(), verdict


def _figure(quality: dict[str, Any], seeds: tuple[int, ...]) -> None:
    """Each variant's box AP and huddled box AP (main benchmark) against its read masks' IoU, beside RM
    without SARA and the earlier study's oracle curves."""
    points = {}
    for run in (OWN, *CANDIDATES):
        iou = _read_iou("synthetic", seeds, run)
        metrics = [m for m in _metrics("synthetic", seeds, run) if m]
        if iou is not None and metrics:
            points[LABELS[run]] = (
                iou,
                *(statistics.mean(m[k] for m in metrics) for k in ("bbox/AP", "huddled/bbox/AP")),
            )
    baseline = [m for m in _metrics("synthetic", seeds, BASELINE) if m]
    level = (
        {k: statistics.mean(m[k] for m in baseline) for k in ("bbox/AP", "huddled/bbox/AP")}
        if baseline
        else None
    )
    plots.beyond_figure(points, level, quality.get("panels", {}), FIGURES / "beyond_mask_quality.png")
