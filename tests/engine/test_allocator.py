import os
import subprocess
import sys

import pytest

# Writes a 64 MiB tensor twice; prints whether the setting took, and the page faults of the second write.
SCRIPT = """
import resource, torch
from mrrcnn.engine.allocator import keep_freed_memory
kept = keep_freed_memory()
torch.ones(2**24)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(2**24)
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run(env: dict[str, str]) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    kept, faults = result.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_without_page_faults():
    kept, faults = run({})
    assert kept
    # 64 MiB is 16384 pages of 4 KiB: glibc's default maps them afresh, page by page, on every allocation.
    assert faults < 1000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_malloc_setting_of_the_user_is_left_alone():
    kept, faults = run({"MALLOC_ARENA_MAX": "2"})
    assert not kept
    assert faults > 10000
