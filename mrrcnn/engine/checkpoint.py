"""Checkpoint files: written atomically, read back with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` so that a crash or a full disk mid-write leaves the old file intact.

    The state goes to a temporary file in the same directory (a rename is atomic only within one file
    system), is flushed and fsynced, then replaces ``path``. It must hold only what
    ``torch.load(weights_only=True)`` reads back: tensors, dicts, lists, tuples, strings, numbers,
    booleans and ``None``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named by the process id: ranks of several runs may share the directory. A plain open() (unlike
    # mkstemp) gives the usual umask permissions, which the renamed file keeps.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if os.name == "posix":
        # Makes the rename itself durable across a power loss.
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (or any dict saved by ``torch.save``).

    Only tensors and plain containers are unpickled (``weights_only=True``), so a file from an unknown
    source cannot run code. A missing, unreadable, truncated or corrupt file raises ``ValueError``
    naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    except Exception as e:
        # torch.load raises RuntimeError, EOFError, UnpicklingError, ... depending on where a file breaks.
        raise ValueError(
            f"checkpoint {path} is truncated or corrupt, or holds more than tensors and plain containers: {e}"
        ) from e
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state
