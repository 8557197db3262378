"""Checkpoints and run folders: checkpoints written atomically and read back with
``torch.load(weights_only=True)``, a lock that keeps two runs out of one folder, and the model a
checkpoint was trained as."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import validate_overridden
from ..models import build_model
from ..models.builders import zero_frozen_batch_norm_eps

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected from each other there.
    fcntl = None


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
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, RuntimeError):
            # torch.save reports a full disk or a failed write as "... inline_container ...".
            raise OSError(
                f"cannot write checkpoint {path} (disk full?); the previous one is kept: {e}"
            ) from e
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


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that a killed :func:`save_checkpoint` left in ``folder``.

    Call it only while holding the folder's :func:`run_lock`: then no live process of ours is writing one.
    Returns the paths removed.
    """
    removed = []
    for tmp in Path(folder).glob(".*.pth.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def run_lock(folder: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on a run folder (``folder/.lock``) for as long as the ``with`` block runs.

    The lock is an advisory ``flock``, which the kernel drops when its process ends, however it ends: a
    run killed with ``kill -9`` leaves no stale lock. The file records who holds it (process id, host,
    start time), so that a second run can name the first. Without ``fcntl`` (Windows) it does nothing.

    Args:
        folder: the run folder, created if needed.
        enabled: False makes it a no-op (the processes of a distributed run other than rank 0).

    Raises:
        ValueError: another process holds the lock; the message names it.
    """
    if not enabled or fcntl is None:
        yield
        return
    path = Path(folder) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            raise ValueError(
                f"{path.parent} is in use by another training run ({file.read().strip() or 'unknown'}); wait "
                "for it to end or choose another train.output_dir"
            ) from None
        file.seek(0)
        file.truncate()
        file.write(
            f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        file.flush()
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available and the CPU otherwise; an unusable device is a ``ValueError``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {str(device)!r} is not a torch device: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but CUDA is not available")
    return device


def load_model(
    weights: str | Path,
    config: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    overrides: Sequence[str] = (),
) -> tuple[nn.Module, dict[str, Any], dict[int, str]]:
    """Build the model a checkpoint was trained as and load its weights, strictly.

    Args:
        weights: an mrrcnn checkpoint (``model``, ``config``, ``categories``).
        config: the run configuration to build from instead of the checkpoint's; its ``model`` section may
            differ in what holds no weights, such as MR R-CNN's ``alpha``.
        device: where to put the model (default: CUDA if available, else the CPU).
        overrides: ``section.key=value`` applied over the configuration used, then validated.

    Returns:
        The model in eval mode on ``device``, the configuration used, and category id -> name.
    """
    device = resolve_device(device)
    checkpoint = load_checkpoint(weights)
    if not isinstance(checkpoint.get("model"), dict):
        raise ValueError(f"{weights}: checkpoint holds no 'model' state_dict")
    source = "the configuration given"
    if config is None:
        config, source = checkpoint.get("config"), f"{weights}: its configuration"
        if not isinstance(config, dict) or "name" not in (config.get("model") or {}):
            raise ValueError(f"{weights}: checkpoint carries no run configuration; give one (--config)")
    config = validate_overridden(config, overrides, source)
    kwargs = dict(config["model"])
    base = kwargs.get("base_weights")
    # The checkpoint holds every weight. A model started from pretrained weights has frozen batch norms,
    # so it is rebuilt from a pretrained state, the checkpoint itself, rather than from its original
    # base (which may be a download, or a file since moved away).
    if kwargs.pop("weights_backbone", None) is not None or base is not None:
        kwargs["base_weights"] = str(weights)
    model = build_model(**kwargs)
    if isinstance(base, str) and base.split(".")[-1] in ("COCO_V1", "DEFAULT"):
        # As the builder did for torchvision's COCO Mask R-CNN.
        zero_frozen_batch_norm_eps(model)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise ValueError(f"{weights}: weights do not fit model {kwargs['name']!r}: {e}") from e
    categories = {int(k): str(v) for k, v in (checkpoint.get("categories") or {}).items()}
    return model.to(device).eval(), config, categories
