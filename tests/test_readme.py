"""The README's commands are the ones the command line has, and its examples read what its commands write."""

import argparse
import inspect
import re
from pathlib import Path

from mrrcnn.cli import build_parser
from mrrcnn.config import CONFIG_DIR
from mrrcnn.engine import demo

README = (CONFIG_DIR.parents[1] / "README.md").read_text()


def test_the_synopsis_shows_every_command():
    synopsis = README.split("## Command line")[1].split("```")[1]
    (commands,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert [line.split()[1] for line in synopsis.strip().splitlines()] == list(commands.choices)


def test_the_export_example_reads_a_checkpoint_that_a_command_shown_writes():
    weights = re.search(r"mrrcnn export --weights (\S+)", README.split("## Export")[1])[1]
    out = inspect.signature(demo.run_demo).parameters["out_dir"].default
    assert "\nmrrcnn demo" in README
    assert weights in {str(Path(out) / folder / "final.pth") for _, folder, _, _ in demo.RUNS}


def test_ci_runs_the_readmes_test_command_in_a_virtual_environment_it_makes():
    command = README.split("The tests:")[1].split("```")[1].removeprefix("bash").strip()
    lines = [line.strip() for line in (CONFIG_DIR.parents[1] / ".ci" / "run").read_text().splitlines()]
    # The command as it is, but that .ci/run stops where it fails (set -e alone does not, in an && list).
    (at,) = (i for i, line in enumerate(lines) if line.removesuffix(" || exit") == command)
    venv = next(i for i, line in enumerate(lines) if " -m venv " in line)
    activate = next(
        i for i, line in enumerate(lines) if line.startswith("source ") and "/bin/activate" in line
    )
    assert venv < activate < at
