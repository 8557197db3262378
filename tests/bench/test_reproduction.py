"""The reproduction's statistics and mask degradations (bench/reproduction), which its verdicts rest on."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from reproduction.load import differences
from reproduction.sara import degrade
from reproduction.stats import judge, mean_std, seen, t95, verdict


def test_paired_t_test_hand_computed():
    # mean 1.0, sd 0.1, n 3: half-width 4.303 * 0.1 / sqrt(3) = 0.248 < 1.0
    assert judge([0.9, 1.0, 1.1]) == "a gain"
    assert judge([-0.9, -1.0, -1.1]) == "a loss"
    # mean 0.5, sd 0.5, n 2: half-width 12.706 * 0.5 / sqrt(2) = 4.49 > 0.5
    assert judge([0.0, 1.0]) == "not distinguishable from zero"
    # mean 0.2, sd 0.1, n 5: half-width 2.776 * 0.1 / sqrt(5) = 0.124 < 0.2
    assert judge([0.1, 0.2, 0.3, 0.15, 0.25]) == "a gain"
    assert judge([1.0]) is None and judge([]) is None


def test_t_quantiles_and_words():
    assert t95(1) == 12.706 and t95(4) == 2.776 and t95(11) == 2.228 and t95(100) == 2.042
    with pytest.raises(ValueError):
        t95(0)
    assert verdict([0.9, 1.0, 1.1]) == "+1.0 ± 0.1 over 3 seeds, a gain at 95% confidence"
    assert verdict([0.5]) == "0.5 (one seed: no spread to judge it by)"
    assert seen([0.5]) == "higher (one seed)" and seen([]) == "not measured"
    assert mean_std([1.0, None, float("nan"), 3.0]) == "2.0 ± 1.4" and mean_std([]) == "-"


def test_differences_pair_seeds_and_skip_missing():
    runs = [{"AP": 2.0}, None, {"AP": 5.0}, {"AP": None}]
    references = [{"AP": 1.0}, {"AP": 1.0}, {"AP": 4.5}, {"AP": 1.0}]
    assert differences(runs, references, "AP") == [1.0, 0.5]


def test_degradations_hand_computed():
    masks = torch.zeros(1, 7, 7, dtype=torch.uint8)
    masks[0, 2:5, 2:5] = 1
    dilated = degrade(masks, "dilate", 1, key=0)
    assert dilated[0, 1:6, 1:6].all() and dilated.sum() == 25
    eroded = degrade(masks, "erode", 1, key=0)
    assert eroded.sum() == 1 and eroded[0, 3, 3] == 1
    shifted = degrade(masks, "shift", 2, key=0)
    assert shifted.sum() <= 9 and shifted.dtype == torch.uint8
    moved = torch.nonzero(shifted[0]).float().mean(0) - torch.nonzero(masks[0]).float().mean(0)
    assert 1.0 <= float(moved.norm()) <= 3.0
    assert torch.equal(shifted, degrade(masks, "shift", 2, key=0))  # deterministic in the key
    assert degrade(masks[:0], "shift", 2, key=0).shape == (0, 7, 7)


def test_decision_rule_of_the_beyond_study():
    from reproduction.beyond import CANDIDATES, choose

    def gains(box, huddled):
        return {"bbox/AP": box, "huddled/bbox/AP": huddled}

    # Averaged over the benchmarks: others 0.5, ownership 0.75, iterative 0.5.
    both = {
        "synthetic": {"mrrcnn_others": gains([1.0, 1.0], [0.0]), "mrrcnn_ownership": gains([0.5], [0.0]),
                      "mrrcnn_iterative": gains([0.0], [9.0])},
        "uniform": {"mrrcnn_others": gains([0.0], [0.0]), "mrrcnn_ownership": gains([1.0], [0.0]),
                    "mrrcnn_iterative": gains([1.0], [9.0])},
    }  # fmt: skip
    assert choose(both) == "mrrcnn_ownership"
    # Within 0.05 box AP of the best, huddled box AP decides.
    both["uniform"]["mrrcnn_iterative"]["bbox/AP"] = [1.45]
    assert choose(both) == "mrrcnn_iterative"
    assert set(CANDIDATES) == {"mrrcnn_others", "mrrcnn_ownership", "mrrcnn_iterative"}


def test_beyond_constants_are_the_preregistered_plan():
    from reproduction import beyond

    plan = beyond.PREREGISTRATION.read_text()
    selection, confirmation = beyond.SELECTION_SEEDS, beyond.CONFIRMATION_SEEDS
    for label, seeds in (("Selection seeds", selection), ("Confirmation seeds", confirmation)):
        main, hard = (", ".join(map(str, seeds[b])) for b in ("synthetic", "uniform"))
        assert f"main {main}; harder {hard}" in " ".join(plan.split(label, 1)[1].split()[:20])
    assert f">= +{beyond.GOAL_BOX_AP} box AP" in plan and f"within {beyond.TIE_AP} AP" in plan
    for run in beyond.CANDIDATES:
        assert f"`{run.removeprefix('mrrcnn_')}`" in plan


def test_beyond_report_from_partial_and_complete_results(tmp_path, monkeypatch):
    import json

    from reproduction import beyond, beyond_report, runs

    monkeypatch.setattr(runs, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(beyond_report, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(beyond_report, "COST", tmp_path / "cost.json")
    gain = {
        beyond.BASELINE: 0.0,
        beyond.OWN: 0.1,
        "mrrcnn_others": 1.5,
        "mrrcnn_ownership": 1.0,
        "mrrcnn_iterative": 0.2,
    }

    def write(name, seed, run, bump):
        folder = beyond.STUDY_BENCHMARKS[name].results / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        metrics = {k: 60.0 + gain[run] + bump + 0.01 * seed for k in beyond.METRICS}
        (folder / f"{run}.json").write_text(json.dumps(metrics))
        (folder / f"{run}_read_masks.json").write_text(
            json.dumps({"mask_iou/all": 0.7, "mask_iou/huddled": 0.6})
        )

    quality = {"panels": {"own true mask": [("shift", 0.5, 61.0, 50.0), ("shift", 0.8, 64.0, 55.0)]}}
    write("synthetic", 0, beyond.OWN, 0.0)
    assert "decision rule has not been applied" in beyond_report.beyond_section(quality)
    for name, seeds in beyond.SELECTION_SEEDS.items():
        for seed in seeds:
            for run in beyond.VARIANTS:
                write(name, seed, run, 0.1 * (seed % 2) * (run != beyond.BASELINE))
    (tmp_path / "cost.json").write_text(
        json.dumps({"others": {"training_step": {"seconds": 1, "vs_own": 1.3}}})
    )
    text = beyond_report.beyond_section(quality)
    assert "The rule chooses **others**" in text and "Not reached yet" in text
    assert text.count("Confirmation seeds with every run in: none yet") == 2
    confirmation = [(n, s) for n, seeds in beyond.CONFIRMATION_SEEDS.items() for s in seeds]
    for name, seed in confirmation:
        for run in (beyond.BASELINE, beyond.OWN, "mrrcnn_others"):
            write(name, seed, run, 0.05 * (seed % 2) * (run != beyond.BASELINE))
        text = beyond_report.beyond_section(quality)
        if (name, seed) == confirmation[0]:
            # One benchmark's first seed: its tables, each benchmark named on its own, no verdict yet.
            assert f"Confirmation seeds with every run in: {seed} (registered:" in text
            assert text.count("Confirmation seeds with every run in: none yet") == 1
        if (name, seed) != confirmation[-1]:
            assert "Not reached yet: the confirmation seeds are not all in" in text
    assert "is **met**" in text and "1.30x" in text
    assert (tmp_path / "figures" / "beyond_mask_quality.png").is_file()


def test_beyond_seed_with_every_result_in_is_not_trained_again(tmp_path, monkeypatch):
    from reproduction import beyond, runs

    monkeypatch.setattr(runs, "RESULTS", tmp_path / "results")
    benchmark = beyond.STUDY_BENCHMARKS["synthetic"]
    folder = benchmark.results / "seed0"
    folder.mkdir(parents=True)
    names = ["commands.json", "maskrcnn.json", *(f"{run}.json" for run in beyond.VARIANTS)]
    names += [f"{run}_read_masks.json" for run in beyond.VARIANTS if run != beyond.BASELINE]
    for name in names:
        (folder / name).write_text("{}")

    def train_runs(*args):
        raise AssertionError("trained a seed whose results are all in")

    monkeypatch.setattr(beyond, "train_runs", train_runs)
    beyond.run_seed(benchmark, 0, beyond.VARIANTS, tmp_path / "work", "mrrcnn synth")
    (folder / "mrrcnn_iterative_read_masks.json").unlink()
    with pytest.raises(AssertionError, match="trained a seed"):
        beyond.run_seed(benchmark, 0, beyond.VARIANTS, tmp_path / "work", "mrrcnn synth")


def test_train_seconds_of_another_process_are_kept(tmp_path, monkeypatch):
    import json

    from reproduction import beyond, runs

    monkeypatch.setattr(runs, "RESULTS", tmp_path / "results")
    benchmark = beyond.STUDY_BENCHMARKS["synthetic"]
    timing_file = benchmark.results / "seed0" / "train_seconds.json"

    def train_run(run, work, seed):
        if run == "mrrcnn":
            # Another process, training another run of this seed, finished meanwhile.
            timing = json.loads(timing_file.read_text())
            timing_file.write_text(json.dumps({**timing, "mrrcnn_iterative": 7.0}))
        return work / run / "final.pth", run != "mrrcnn_no_sara"

    monkeypatch.setattr(runs, "train_run", train_run)
    runs.train_runs(benchmark, ("mrrcnn_no_sara", "mrrcnn"), 0, tmp_path / "work")
    assert set(json.loads(timing_file.read_text())) == {"maskrcnn", "mrrcnn", "mrrcnn_iterative"}
