"""glibc's allocator told to keep freed memory for reuse, which the ``mrrcnn`` commands do on start.

glibc serves an allocation of 32 MiB or more (and, until it has seen them freed, of 128 KiB or more) with
a fresh ``mmap`` and returns it to the system on ``free``: every such tensor then costs one page fault
per 4 KiB written, again at every training step. RoI heads allocate many of them (the features of
hundreds of RoIs, their gradients, the tables of RoI pooling); measured on the demo's training step,
page faults were 8-9% of the time of both Mask R-CNN and MR R-CNN (``docs/benchmarks/model.md``). Serving
every allocation from the heap and never trimming it removes them, at the cost of a resident set that
stays at its peak instead of shrinking between steps, as with jemalloc or tcmalloc, which PyTorch's own
CPU performance guide recommends for the same reason.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Serve every allocation from glibc's heap and never return freed memory to the system (Linux with
    glibc only; nothing elsewhere, or where the environment already sets glibc's malloc tunables).
    Returns whether it did."""
    if not sys.platform.startswith("linux") or _malloc_set_by_user():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "mallopt"):
        return False
    # mallopt returns 1 on success; the trim threshold is a C int.
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def _malloc_set_by_user() -> bool:
    """Whether the environment sets glibc's malloc (``MALLOC_MMAP_MAX_``, ``MALLOC_ARENA_MAX``, ...)."""
    return "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(
        name.startswith("MALLOC_") for name in os.environ
    )
