"""Multi-process training under ``torchrun``; every helper is a no-op in a plain single process."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def _use_cuda(device: str | None) -> bool:
    return device != "cpu" and torch.cuda.is_available()


def init_distributed(device: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment.

    ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in every
    process it starts, on every node, so multi-node runs need nothing more. The backend is NCCL when CUDA
    is available and ``device`` is not ``"cpu"``, each process then using GPU ``LOCAL_RANK``, and gloo
    otherwise. Nothing happens without those variables (a plain ``python`` launch) or when a process group
    exists already. A run that ``torchrun --max-restarts`` restarted on one node gets store keys of its own
    (:func:`_restart_store`).

    Returns:
        Whether this call created the process group, which its caller then ends with :func:`cleanup`.
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return False
    if _use_cuda(device):
        gpus = torch.cuda.device_count()
        if local_rank() >= gpus:
            raise ValueError(
                f"LOCAL_RANK={local_rank()}, but this node has {gpus} GPU(s): start at most {gpus} "
                "processes per node (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank())
    backend, store = "nccl" if _use_cuda(device) else "gloo", _restart_store()
    if store is None:
        dist.init_process_group(backend)
    else:
        # Given a store, torch is told the rank and world size too.
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    return True


def _restart_store() -> dist.Store | None:
    """The store for the process group of a run that ``torchrun --max-restarts`` restarted on one node, or
    None to let torch make its own.

    torchrun's agent serves one TCP store to every attempt it starts (``TORCHELASTIC_USE_AGENT_STORE``), and
    the keys the previous attempt's process group left there would make this one connect to dead processes
    (gloo: "Connection refused"; seen with PyTorch 2.14, pytorch/pytorch#135712). Each restart gets keys of
    its own. With several agents (nodes) the restart counts differ between nodes: there
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` for torchrun gives every attempt a fresh store instead.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if restart == "0" or not shared or os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    return dist.PrefixStore(f"mrrcnn/restart_{restart}", store)


def cleanup() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_rank() -> int:
    """This process's rank on its node, as ``torchrun`` sets it (0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes files, logs and shows progress (rank 0)."""
    return rank() == 0


def device(kind: str | None = None) -> torch.device:
    """This process's device: GPU ``LOCAL_RANK`` when CUDA is available and ``kind`` is not ``"cpu"``,
    else the CPU."""
    return torch.device("cuda", local_rank()) if _use_cuda(kind) else torch.device("cpu")


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (``obj`` itself in a single process); picklable objects only."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        # Names the device: NCCL would otherwise guess one and warn.
        dist.barrier(device_ids=[local_rank()])
    else:
        dist.barrier()
