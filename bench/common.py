"""What the benchmark scripts share: the machine's description, timing, peak memory, the report's header."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import torch


def machine(device: str = "cpu") -> str:
    """The CPU model, cores and torch threads; the GPU's name for ``device="cuda"``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} torch threads"
    return f"{torch.cuda.get_device_name()} (host: {text})" if device == "cuda" else text


def header(script: str, argv: list[str] | None, repeats: int) -> str:
    """``Made by `python bench/SCRIPT args` on DATE ...``: the command, the date, the versions and the load."""
    args = sys.argv[1:] if argv is None else argv
    return (
        f"Made by `{' '.join(['python', f'bench/{script}', *args])}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with Python {platform.python_version()}, torch "
        f"{torch.__version__}; median of {repeats} runs; load average at the start "
        f"{os.getloadavg()[0]:.2f} (1 min, on {os.cpu_count()} CPUs: other work slows the timings)."
    )


def median_seconds(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up (CUDA synchronised)."""
    return median_seconds_side_by_side({None: fn}, device, repeats)[None]


def median_seconds_side_by_side(
    fns: dict[Any, Callable[[], object]], device: str, repeats: int
) -> dict[Any, float]:
    """:func:`median_seconds` of each of ``fns``, timed in turns (one run of each per round), so that a
    change in the machine's load during the measurement falls on all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[Any, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def track_allocations_exactly() -> None:
    """Make glibc map (and unmap) every allocation of 64 KiB or more on its own, so that the resident set
    follows tensors exactly. It costs page faults: call it after the timings, before :func:`peak_extra_mib`."""
    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn: Callable[[], object], device: str) -> float:
    """Peak memory above what was allocated before ``fn()``, its result included (MiB).

    CUDA: the caching allocator's peak. CPU (Linux): the process's peak resident set, reset before the call.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    # glibc hands freed memory back to the system, so that reusing it shows in the resident set again;
    # writing 5 to clear_refs resets the process's peak resident set (VmHWM) to the current one.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def write_report(out: Path, text: str) -> None:
    """Write a benchmark's markdown, noting when there was no GPU to add CUDA rows."""
    if not torch.cuda.is_available():
        text += "\nNo GPU on this machine: no CUDA rows.\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """This repository at ``revision``, checked out in a temporary git worktree, removed afterwards."""
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], cwd=ROOT, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)


def table_rows(markdown: str, keys: int) -> dict[tuple[str, ...], list[str]]:
    """The data rows of the markdown tables in ``markdown``: their first ``keys`` cells -> the rest."""
    rows = {}
    lines = markdown.splitlines()
    for line, following in zip(lines, [*lines[1:], ""]):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        header = following.startswith("|---")
        if line.startswith("|") and len(cells) > keys and not header and not set(cells[0]) <= {"-", ":"}:
            rows[tuple(cells[:keys])] = cells[keys:]
    return rows


def around_baseline(
    revision: str | None, script: str, args: list[str], keys: int, measure: Callable[[], T]
) -> tuple[T, dict[tuple[str, ...], list[str]]]:
    """``measure()``, and with a ``revision`` the rows of ``script``'s report on the package as of it
    (:func:`at_revision`, ``keys`` cells a key), made once before ``measure`` and once after: each row's
    first cell, its time, is the mean of the two, so that the machine drifting faster or slower over the
    run weighs on both sides alike."""
    if revision is None:
        return measure(), {}
    first = table_rows(at_revision(revision, script, args), keys)
    result = measure()
    second = table_rows(at_revision(revision, script, args), keys)
    rows = {}
    for key, (before, *rest) in first.items():
        if key in second:
            decimals = len(before.partition(".")[2])
            rows[key] = [f"{(float(before) + float(second[key][0])) / 2:.{decimals}f}", *rest]
    return result, rows


def speedup(before: float, now: float) -> str:
    """How a time compares with the same cell before, in words: ``1.15x faster`` or ``1.28x slower``."""
    return f"{before / now:.2f}x faster" if now <= before else f"{now / before:.2f}x slower"


def at_revision(revision: str, script: str, args: list[str]) -> str:
    """The report this checkout's ``bench/<script>`` writes with ``args`` when it runs on the package as of
    ``revision`` (``PYTHONPATH`` a worktree of it): a before and after in one session, on one machine."""
    with worktree(revision) as tree, tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "report.md"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / script), *args, "--out", str(out)], env=env, check=True
        )
        return out.read_text()
