"""``docs/RESULTS.md``'s "Matching metrics at demo size": MR R-CNN against its equal-compute control by
the metrics microscopy compares by, from the committed metrics of ``bench/demo_matching.py``."""

from __future__ import annotations

import json
from pathlib import Path

from .stats import mean_std, verdict

RESULTS = Path(__file__).resolve().parents[1] / "results" / "demo_matching"
MODELS = {"maskrcnn": "Mask R-CNN", "maskrcnn_finetune": "Mask R-CNN +ft (control)", "mrrcnn": "MR R-CNN"}
KEYS = {
    "matching/0.5/f1": "F1 @ IoU 0.5",
    "matching/0.5/panoptic_quality": "panoptic quality @ 0.5",
    "touching/matching/0.5/f1": "F1 @ 0.5, touching",
    "touching/matching/0.5/panoptic_quality": "panoptic quality @ 0.5, touching",
    "segm/AP": "mask AP (COCO)",
}


def _read() -> dict[int, dict[str, dict]]:
    seeds = {}
    for folder in sorted(RESULTS.glob("seed*"), key=lambda p: int(p.name[4:])):
        runs = {name: json.loads((folder / f"{name}.json").read_text()) for name in MODELS}
        seeds[int(folder.name[4:])] = runs
    return seeds


def matching_section() -> str:
    """The section, or a line saying how to make it when nothing is committed yet."""
    seeds = _read()
    if not seeds:
        return "## Matching metrics at demo size\n\nNot measured yet: `python bench/demo_matching.py`.\n"
    head = "| metric | " + " | ".join(MODELS.values()) + " | MR R-CNN - control (paired by seed) |"
    lines = [head, "|---|" + "---:|" * len(MODELS) + "---|"]
    verdicts = {}
    for key, label in KEYS.items():
        values = {name: [runs[name][key] for runs in seeds.values()] for name in MODELS}
        differences = [m - c for m, c in zip(values["mrrcnn"], values["maskrcnn_finetune"])]
        verdicts[key] = verdict(differences)
        cells = " | ".join(mean_std(v) for v in values.values())
        lines.append(f"| {label} | {cells} | {verdicts[key]} |")
    return f"""## Matching metrics at demo size

Does MR R-CNN's gain over its equal-compute control hold by the metrics stardist and cellpose users
compare by? One `mrrcnn demo` per seed (seeds {", ".join(map(str, seeds))}: 240 + 60 synthetic images of
160 px, `mrrcnn demo --out WORK/seedS --seed S`), scored by `mrrcnn eval`'s matching metrics: detections scoring at
least 0.5 painted into a label image, matched one to one by mask IoU, counts summed over the val images
(docs/method.md, "Matching metrics and the touching split"); touching: instances whose mask comes within
2 px of another's. Percent, mean ± standard deviation over the seeds; the difference is MR R-CNN minus
Mask R-CNN +ft per seed, judged by a two-sided paired t-test at 95%. Committed metrics:
`bench/results/demo_matching/`, made by `python bench/demo_matching.py`.

{chr(10).join(lines)}

In short: matching F1 at IoU 0.5, {verdicts["matching/0.5/f1"]}; panoptic quality,
{verdicts["matching/0.5/panoptic_quality"]}; on touching instances, F1 {verdicts["touching/matching/0.5/f1"]}.
"""
